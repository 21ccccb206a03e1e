"""Beam's DaskRunner, with the fixes ``prepare`` needs to run on worker processes of a dask cluster.

``apache_beam.runners.dask`` (Beam 2.6x) translates a pipeline into dask bags, but in ways that lose or
mix data as soon as a pipeline uses more than ``Map`` and ``GroupByKey``:

- a DoFn's tagged outputs (``with_outputs``, ``with_exception_handling``) all land in one bag that every
  consumer reads, so a consumer of the main output is handed the other outputs' elements too (the
  ``KeyError: 0`` of a ``lambda kv: kv[0]`` handed a rejection row);
- what a DoFn emits in ``finish_bundle`` is dropped (``BatchElements`` emits its last, often its only,
  batch there: a small job "succeeds" having written nothing);
- a side input is a bag computed again inside every task that reads it (a nested compute on the worker,
  re-running everything upstream, the encryption included);
- only the pipeline's last transform is computed, so a branch that ends elsewhere never runs;
- ``Create`` puts up to 128 elements in one partition, so a handful of read units is read by one worker.

:class:`LcryptDaskRunner` keeps Beam's translation of every other transform and replaces these: a
DoFn's bundle returns ``(tag, value)`` pairs filtered per consumer; outputs are collected after
``finish_bundle`` in fresh receivers per bundle, with a fresh DoFn unpickled per bundle; side inputs
are graph dependencies (computed once, handed to each task whole); every sink of the pipeline is
computed; a small ``Create`` has one element per partition. Its result fails when a task fails (dask
retries a task whose worker died, then raises ``KilledWorker``) and when the cluster has had no worker
for :data:`NO_WORKERS_S` seconds (a scheduler would otherwise wait for workers forever).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import typing as t
from typing import Iterator

from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner, DaskRunnerResult
from apache_beam.runners.dask.overrides import _Create, dask_overrides
from apache_beam.runners.dask.transform_evaluator import (TRANSLATIONS, Flatten, NoOp, OneReceiver,
                                                          get_windowed_value)
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap

NO_WORKERS_S = 60.0  # a cluster without any worker this long fails the job instead of waiting for ever
CONNECT_S = 10  # seconds to reach the scheduler at --dask_client_address


class DaskClusterError(RuntimeError):
    """The dask cluster cannot run the job (unreachable scheduler, no workers left); one line."""


# -- per bundle, on the workers -----------------------------------------------------------------------
def _has_tag(tag, item) -> bool:
    return item[0] == tag


def _value(item):
    return item[1]


def _concat(parts) -> list:
    return [x for part in parts for x in part]


def run_bundle(items, fn_blob: bytes, label: str, window_fn, args, kwargs, side_views, *side_values) -> list:
    """One partition through a fresh copy of the DoFn -> ``[(tag, value), ...]`` (tag None: main)."""
    from apache_beam import DoFn
    from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, _OutputHandler

    receivers = OneReceiver()
    handler = _OutputHandler(window_fn=window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
                             per_element_output_counter=None, output_batch_converter=None,
                             process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [SideInputMap(view, options, [get_windowed_value(v, mapping) for v in values])
                   for (view, options, mapping), values in zip(side_views, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(pickler.loads(fn_blob)), handler, context=DoFnContext(label, state=None),
        side_inputs=side_inputs, input_args=list(args), input_kwargs=kwargs, user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    try:
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(get_windowed_value(item, window_fn))
        invoker.invoke_finish_bundle()
    finally:
        invoker.invoke_teardown()
    out = []
    for v in receivers.values:  # TaggingReceiver: TaggedOutput(tag, wv) for tagged outputs, wv for main
        tag, wv = (v.tag, v.value) if isinstance(v, pvalue.TaggedOutput) else (None, v)
        out.append((tag, wv.value))
    return out


# -- translation ------------------------------------------------------------------------------------------
def _create(applied, bag_kwargs: dict):
    """A small Create (read units, one None) spreads one element per partition over the workers."""
    import dask.bag as db

    items = list(t.cast(_Create, applied.transform).values)
    if bag_kwargs:
        return db.from_sequence(items, **bag_kwargs)
    return db.from_sequence(items, npartitions=max(1, min(len(items), 256)))


@dataclasses.dataclass
class Translator(PipelineVisitor):
    """Beam transforms -> dask bags: one bag per PCollection, ParDo outputs split by tag."""

    bag_kwargs: dict
    pcolls: dict = dataclasses.field(default_factory=dict)  # PCollection -> bag
    nodes: list = dataclasses.field(default_factory=list)  # (applied transform, its own bag)
    consumed: set = dataclasses.field(default_factory=set)  # ids of PCollections something reads

    def visit_transform(self, node) -> None:
        import apache_beam as beam

        inputs = [self.pcolls[i] for i in node.inputs if i in self.pcolls]
        self.consumed.update(id(i) for i in node.inputs)
        self.consumed.update(id(si.pvalue) for si in node.side_inputs)
        cls = node.transform.__class__
        if cls is _Create:
            bag = _create(node, self.bag_kwargs)
        elif cls is beam.ParDo:
            bag = self._pardo(node, inputs[0])
        else:
            op = TRANSLATIONS.get(cls, NoOp)(node, bag_kwargs=self.bag_kwargs)
            if op.__class__.__name__ == "GroupByKey":
                bag = _group_by_key(inputs[0])
            else:
                bag = op.apply(inputs if isinstance(op, Flatten) else (inputs[0] if inputs else None))
        self.nodes.append((node, bag))
        for tag, pc in node.outputs.items():
            if cls is beam.ParDo:
                self.pcolls[pc] = bag.filter(functools.partial(_has_tag, pc.tag)).map(_value)
            elif bag is not None:
                self.pcolls[pc] = bag

    def _pardo(self, node, bag):
        transform = node.transform
        args, kwargs = transform.raw_side_inputs
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        views, values = [], []
        for si in node.side_inputs:
            views.append((type(si), si._view_options(), si._window_mapping_fn))
            # a Delayed of the unoptimised graph: optimised apart (dask's default for to_delayed and for an
            # Item argument) its upstream got new key names and was computed again for every reader
            values.append(self.pcolls[si.pvalue].reduction(list, _concat).to_delayed(optimize_graph=False))
        return bag.map_partitions(run_bundle, pickler.dumps(transform.fn), transform.label, window_fn,
                                  tuple(args), kwargs, views, *values)

    def sinks(self) -> list:
        """The bags of transforms whose outputs nothing reads: computing these runs the whole pipeline."""
        return [bag for node, bag in self.nodes if bag is not None
                and not any(id(pc) in self.consumed for pc in node.outputs.values())]


def _key(item):
    return item[0]


def _grouped(item):
    from apache_beam.runners.dask.transform_evaluator import defenestrate

    k, v = item
    return k, [defenestrate(elm[1]) for elm in v]


def _group_by_key(bag):
    """Beam's GroupByKey translation with the task-based shuffle (the disk one is per process)."""
    return bag.groupby(_key, shuffle="tasks").map(_grouped)


def _count(partition) -> int:
    return sum(1 for _ in partition)


# -- the runner ---------------------------------------------------------------------------------------------
class LcryptDaskResult(DaskRunnerResult):
    """Waits for every sink; fails on a failed task or a cluster left without workers; closes the client."""

    def wait_until_finish(self, duration=None) -> str:
        import distributed

        try:
            pending, idle_since = list(self.futures), None
            while pending:
                try:
                    done = distributed.wait(pending, timeout=1, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    done = set()
                for f in done:
                    f.result()  # raises the task's error on the client
                pending = [f for f in pending if f not in done]
                workers = self.client.scheduler_info(n_workers=-1).get("workers", {}) if pending else {1: 1}
                idle_since = None if workers else (idle_since or time.monotonic())
                if idle_since and time.monotonic() - idle_since > NO_WORKERS_S:
                    raise DaskClusterError(f"the dask cluster at {self.client.scheduler.address} has had no "
                                           f"worker for {NO_WORKERS_S:.0f} s; start workers, or check "
                                           "why they died (the workers' logs)")
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            self.client.cancel(self.futures)
            raise
        finally:
            self.client.close()
        return self._state


class LcryptDaskRunner(DaskRunner):
    """Beam's DaskRunner with the translation fixed (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask

        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        client = connect(dask_options.pop("address", None), dask_options.pop("timeout", None), **dask_options)
        try:
            pipeline.replace_all(dask_overrides())
            translator = Translator(bag_kwargs)
            pipeline.visit(translator)
            # one Delayed over every sink's count, built from the unoptimised graphs (as the side inputs)
            total = dask.delayed(sum)([bag.reduction(_count, sum).to_delayed(optimize_graph=False)
                                       for bag in translator.sinks()])
            futures = [client.compute(total)]
        except BaseException:
            client.close()
            raise
        return LcryptDaskResult(client, futures)


# -- the cluster ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cluster:
    address: str
    threads: int  # worker threads when the job starts: the default number of read parts
    local: bool  # started by prepare on this machine: workers share its files (live progress)
    daemonic: bool  # some worker is a daemonic process, which cannot fork a decoder subprocess


def _daemonic() -> bool:
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


@contextlib.contextmanager
def cluster(options, n_workers: int) -> Iterator[Cluster]:
    """The user's cluster at ``--dask_client_address`` (checked reachable, in seconds), or a local one of
    ``n_workers`` worker processes started here and closed on the way out, also on error or Ctrl-C."""
    import logging

    import dask
    import distributed

    dask_opts = options.view_as(DaskOptions)
    address = dask_opts.address
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack:
        if address is None:
            os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # the worker processes' INFO lines
            # non-daemonic workers may fork the decoder subprocess (--isolate-decoders); the nanny reads
            # this whenever it (re)starts a worker, so it holds for the cluster's life
            stack.enter_context(dask.config.set({"distributed.worker.daemon": False}))
            local = stack.enter_context(distributed.LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=logging.ERROR))
            dask_opts.address = local.scheduler_address
        with connect(dask_opts.address, dask_opts.timeout) as probe:
            threads = sum(probe.nthreads().values())
            daemonic = any(probe.run(_daemonic).values())
        yield Cluster(dask_opts.address, max(1, threads), address is None, daemonic)


def connect(address: str | None, timeout: int | None, **kwargs):
    """A dask Client of the scheduler at ``address``, or a one-line DaskClusterError within seconds."""
    import distributed

    timeout = timeout or CONNECT_S
    try:
        return distributed.Client(address, timeout=timeout, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise DaskClusterError(
            f"--dask_client_address {address}: no dask scheduler answered within {timeout} s "
            f"({type(exc).__name__}); start one with `dask scheduler` (and workers with `dask worker "
            "ADDRESS`), or drop the flag for a local cluster") from None


def failure_line(exc: BaseException) -> str | None:
    """One line for a cluster failure: no scheduler or no workers left, or a task whose workers all died
    (dask's KilledWorker, after its retries); else None."""
    if isinstance(exc, DaskClusterError):
        return str(exc)
    if type(exc).__name__ != "KilledWorker":
        return None
    last = getattr(getattr(exc, "last_worker", None), "address", "?")
    return (f"the dask workers that ran a task of the job all died (the last: {last}); see the workers' "
            "logs (out of memory? lower --chunk), then run again")
