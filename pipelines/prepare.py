"""`lcrypt prepare`: raw image dataset -> per-owner encrypted WebDataset shards + manifest (Apache Beam).

    lcrypt prepare --source SPEC --scheme NAME [--param k=v ...] --keys OWNERS --out DIR
                   [--jpeg-quality Q] [--shard-size N] [--size S]
                   [--overwrite | --append | --resume | --retry-failed] [beam options ...]
    python -m pipelines.prepare ...   (the same)

Unknown flags are Beam PipelineOptions (``--runner``, ``--direct_num_workers``,
``--direct_running_mode multi_processing``, Dataflow's ``--project``, ``--region``,
``--temp_location``...). With no ``--runner`` (or ``--runner DirectRunner``) the pipeline runs on the
Python direct runner's engine (the FnApiRunner) chosen explicitly: since Beam 2.68 ``DirectRunner``
first tries the Prism binary, a download that fails offline. ``--runner dask`` runs on a dask.distributed
cluster (pipelines/daskrunner.py: Beam's DaskRunner with its data-losing translation fixed): a local one
of worker processes started here and closed at the end (also on error or Ctrl-C), or the user's at
``--dask_client_address``, checked reachable before ``--out`` is claimed. Workers elsewhere need the
source and ``--out`` at the same paths (shared storage) and non-daemonic processes for
``--isolate-decoders``; keys travel inside the job, so key files stay on this machine; live progress
through local files only runs where the workers share this machine (the summary is exact everywhere).

The chain: ReadRecords (raw records, in chunks per read unit) -> EncryptChunk (decode by lcrypt.images'
rules, encrypt per owner in one vectorised call, encode; rejects to errors.jsonl) -> count per (split, owner)
-> Journal (the shard counts, saved for a resume) -> AssignShards (salted key mod shard count) ->
GroupByKey -> WriteShard (labels to indices, sorted, atomic) -> Finalize (errors.jsonl, checks,
index.parquet, manifest.json, _info.json). Class names the source does not declare are gathered beside
the encryption, never before it: waiting for them would hold every raw record in the runner.

What a run does with ``--out``: a new dataset (none there), ``--overwrite`` (replace one prepare wrote),
``--append`` (encrypt only the source's records the dataset lacks, by sample key, into new shards; its
shards stay byte-identical, so a release of it is a new MINOR version), ``--retry-failed`` (re-read only
the records errors.jsonl lists, after the user fixed them, and add those that now pass as --append does),
``--resume`` (finish an interrupted run: complete shards are kept and their records skipped before
decoding; the result is byte-identical to an uninterrupted run). The last three refuse, in one line and
writing nothing, a scheme, parameters or encoding other than the dataset's (the interrupted run's).
Adding: pipelines/grow.py; the run state a resume reads: pipelines/journal.py; planning: pipelines/plan.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Sequence

from pipelines import progress
from pipelines.options import PrepareError, add_arguments, check_beam_args, dask_wanted, load_dask, run_mode

if TYPE_CHECKING:  # imported when a run starts: it imports Beam, whose import-time warning is quieted first
    from pipelines.plan import Planned

def add_command(subparsers) -> None:
    """The `lcrypt prepare` plugin (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("prepare",
                              help="encrypt a raw image dataset into WebDataset shards (Apache Beam)",
                              description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    p.set_defaults(func=lambda args: run_args(args, list(getattr(args, "extra", []) or [])),
                   accepts_extra=True)


# -- runner ---------------------------------------------------------------------------------------------
def is_local_runner(options) -> bool:
    """DirectRunner (the default): the workers are processes of this machine."""
    from apache_beam.options.pipeline_options import StandardOptions

    return options.view_as(StandardOptions).runner in (None, "DirectRunner", "direct", "FnApiRunner")


def make_pipeline(options):
    """A Pipeline on the requested runner; the Python direct engine (never Prism) for DirectRunner, and
    lcrypt's fixed DaskRunner for ``--runner dask`` (pipelines/daskrunner.py)."""
    import apache_beam as beam

    if is_local_runner(options):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    if dask_wanted(options):
        from pipelines.daskrunner import LcryptDaskRunner

        return beam.Pipeline(runner=LcryptDaskRunner(), options=options)
    return beam.Pipeline(options=options)


# -- pipeline construction ------------------------------------------------------------------------------
def build(p, planned: Planned, kept: list | None = None) -> None:
    """Add the prepare chain to pipeline ``p`` (separate from running it, so it can be built for Dataflow);
    ``kept``: the shards a resumed run keeps, as WriteShards gives them."""
    import apache_beam as beam

    from pipelines.sources import ReadRecords
    from pipelines.encrypt import EncryptChunkFn, dead_letter_reads, dead_letter_rows
    from pipelines.transforms import (AssignShardsFn, ClassNamesFn, FinalizeFn, JournalFn, WriteShardFn,
                                      add_pairs, chunk_classes)

    config = planned.config
    chunks = p | "ReadRecords" >> ReadRecords(planned.source, config.chunk, units=planned.units,
                                              keep=planned.keep)
    if planned.declared is not None:
        names = p | "DeclaredClasses" >> beam.Create([planned.declared])
    else:
        # One combine (partial sets in the read stage, one merge): a Distinct + ToList chain cost two
        # more stages.
        names = (chunks | "ChunkClasses" >> beam.Map(chunk_classes)
                 | "AllClasses" >> beam.CombineGlobally(ClassNamesFn()))
    # Per-record rejections, decoder isolation and per-record retries of a failed chunk happen inside
    # EncryptChunkFn; Beam's dead-letter output is the backstop for anything that still escapes a chunk.
    # threshold=1.0: the reject-rate check is per record, in Finalize (--max-reject-rate).
    out = (chunks
           | "EncryptChunks" >> beam.ParDo(EncryptChunkFn(config))
           .with_outputs("rejected", "read", "skipped", main="samples")
           .with_exception_handling(threshold=1.0))
    samples, rejected, read, bad = out["samples"], out["rejected"], out["read"], out["bad"]
    rejected = ((rejected, bad | "DeadLetterRows" >> beam.FlatMap(dead_letter_rows))
                | "AllRejected" >> beam.Flatten())
    read_counts = ((read, bad | "DeadLetterReads" >> beam.FlatMap(dead_letter_reads))
                   | "AllRead" >> beam.Flatten() | "ReadPerGroup" >> beam.CombinePerKey(sum))
    skipped = out["skipped"] | "SkippedPerGroup" >> beam.CombinePerKey(sum)
    totals = (samples | "CountSamples" >> beam.Map(lambda kv: (kv[0], (len(kv[1]), sum(r[4] for r in kv[1]))))
              | "TotalsPerGroup" >> beam.CombinePerKey(add_pairs))
    # The shard counts are saved before the first shard is written: AssignShards waits for them.
    counted = (p | "AfterCounting" >> beam.Create([None])
               | "Journal" >> beam.ParDo(JournalFn(config), beam.pvalue.AsDict(totals),
                                         beam.pvalue.AsDict(read_counts), beam.pvalue.AsList(rejected)))
    written = (samples
               | "AssignShards" >> beam.ParDo(AssignShardsFn(config), beam.pvalue.AsSingleton(counted))
               | "GroupShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShardFn(config.out, config.encoding),
                                             beam.pvalue.AsSingleton(names)))
    if kept:
        written = (written, p | "KeptShards" >> beam.Create(kept)) | "AllShards" >> beam.Flatten()
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(FinalizeFn(config, planned.scheme_info), beam.pvalue.AsList(written),
                                    beam.pvalue.AsList(rejected), beam.pvalue.AsDict(read_counts),
                                    beam.pvalue.AsDict(skipped), beam.pvalue.AsSingleton(names),
                                    beam.pvalue.AsSingleton(counted)))


def quiet_beam_logging() -> None:
    """Keep two of Beam's local log lines off the user's terminal: the import-time warning about
    BigQuery client libraries (prepare never uses BigQuery), and the runner's ERROR record with a
    traceback of a DoFn's exception, which Beam then re-raises to :func:`run_args` (that reports it:
    one line for the failures it knows, the full traceback for anything else)."""
    import logging

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's note when the decoder subprocess forks
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root.addFilter(lambda record: not record.getMessage().startswith("apitools not found"))
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)


def known_failure(exc: BaseException) -> str | None:
    """The one line to print for a failure prepare knows (reject rate, a write that failed), else None.

    In-process runners re-raise the DoFn's exception; others pass its text on, so the text is searched.
    """
    from pipelines.checks import RejectRateExceeded, ResumeMismatch
    from pipelines.outdir import WriteFailed
    from pipelines.sources import SourceUnreadable

    if "distributed" in sys.modules:  # a dask run: an unreachable cluster, workers that all died
        from pipelines.daskrunner import failure_line

        line = failure_line(exc)
        if line:
            return line
    for cls in (RejectRateExceeded, ResumeMismatch, WriteFailed, SourceUnreadable):
        text = str(exc)
        if isinstance(exc, cls):
            return text.split(" [while running")[0]
        tag = f"{cls.__name__}: "
        if tag in text:
            line = next(ln for ln in text.splitlines() if tag in ln)
            return line.split(tag, 1)[1].split(" [while running")[0]
    return None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the run stops cleanly (Beam may re-raise it wrapped in its own error)."""


def _on_signal(signum, frame):
    _SIGNALLED.set()
    raise Interrupted()


_SIGNALLED = threading.Event()


def run_args(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    quiet_beam_logging()
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    from pipelines import journal, outdir
    from pipelines.plan import plan
    from pipelines.runlock import claim_out

    cleanup = contextlib.ExitStack()  # a local dask cluster, closed on every way out
    workers = None
    try:
        parser = argparse.ArgumentParser(allow_abbrev=False)
        add_arguments(parser)
        load_dask(beam_args)
        check_beam_args(beam_args, parser)
        mode = run_mode(args)
        options = PipelineOptions(list(beam_args))
        local_workers = options.view_as(DirectOptions).direct_num_workers or os.cpu_count() or 1
        if dask_wanted(options):
            from pipelines.daskrunner import DaskClusterError, cluster

            try:
                workers = cleanup.enter_context(cluster(options, local_workers))
            except DaskClusterError as exc:
                raise PrepareError(str(exc)) from None
            if workers.daemonic and args.isolate_decoders:
                raise PrepareError(
                    f"the dask workers at {workers.address} are daemonic processes, which cannot fork the "
                    "decoder subprocess of --isolate-decoders; start them with "
                    "DASK_DISTRIBUTED__WORKER__DAEMON=False, or pass --no-isolate-decoders")
        parts = args.read_parts or max(1, workers.threads if workers else local_workers)
        planned = plan(args, mode, parts)
        lock = claim_out(args.out, mode, planned.config.mode)
        try:
            kept = journal.start(planned.config, planned.fingerprint, planned.base, planned.saved,
                                 planned.restart)
        except BaseException:
            lock.abandon()
            raise
    except (PrepareError, outdir.OutError, outdir.WriteFailed) as exc:
        cleanup.close()
        print(f"lcrypt prepare: error: {exc}", file=sys.stderr)
        return 2
    config = planned.config
    planned.kept = len(kept)
    t0 = time.perf_counter()
    stop = threading.Event()
    watcher = None
    if workers and not workers.local and not args.quiet:
        print(f"lcrypt prepare: running on the dask cluster at {workers.address}; live progress is the "
              "cluster's dashboard (its workers may not share this machine's files)", file=sys.stderr)
    if is_local_runner(options) or (workers and workers.local):
        # workers on this machine drop their counters in a local folder
        config.progress_dir = progress.folder()
        watcher = threading.Thread(target=progress.watch, args=(config.progress_dir, stop, args.quiet),
                                   daemon=True)
        watcher.start()
    in_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM)
    handlers = {sig: signal.signal(sig, _on_signal) for sig in signals} if in_main else {}
    _SIGNALLED.clear()
    finished = False
    try:
        p = make_pipeline(options)
        build(p, planned, kept)
        p.run().wait_until_finish()
        journal.remove(config.out)
        finished = True
    except (KeyboardInterrupt, Exception) as exc:
        if isinstance(exc, KeyboardInterrupt) or _SIGNALLED.is_set():
            print(f"lcrypt prepare: interrupted: {stopped(planned)}", file=sys.stderr)
            return 130
        line = known_failure(exc)
        failed(planned)
        if line is None:
            raise
        print(f"lcrypt prepare: error: {line}; {stopped(planned, failed=True)}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        stop.set()
        if watcher:
            watcher.join()
        if config.progress_dir:
            shutil.rmtree(config.progress_dir, ignore_errors=True)
        if not finished:
            outdir.remove_scratch(config.out)
        lock.release(finished or (planned.base is not None and planned.rolled_back))
        cleanup.close()
    return summarize(args, planned, time.perf_counter() - t0)


def failed(planned: Planned) -> None:
    """After a failure (not an interruption): a run that added to a dataset puts it back as it was; any
    other leaves its complete shards and its marker (``--overwrite`` starts over). No resume either way."""
    from pipelines import journal

    try:
        if planned.base is not None:
            planned.base.rollback(planned.config.out)
            planned.rolled_back = True
        journal.remove(planned.config.out)
    except OSError:
        pass  # the line says what is left


def stopped(planned: Planned, failed: bool = False) -> str:
    """What a run that stopped leaves in --out, in words."""
    from pipelines.runlock import left_behind

    out = planned.config.out
    if planned.base is not None:
        if planned.rolled_back:
            return f"the dataset in --out {out} is as it was"
        return left_behind(out, {s.path for s in planned.base.manifest.shards}, not failed)
    return left_behind(out, resumable=not failed)


def summarize(args: argparse.Namespace, planned: Planned, wall: float) -> int:
    """The summary table of a finished run (and the warnings a user should see)."""
    from lcrypt.format import ERRORS_NAME, Manifest
    from lcrypt.storage import join
    from lcrypt.table import format_table
    from pipelines.beamstorage import pipeline_storage

    config = planned.config
    m = Manifest.load(config.out, pipeline_storage(config.out))
    rows = [[s["split"], s["owner"], s["read"], s["written"], s["rejected"], s["bytes"], s["written"] / wall]
            for s in m.stats]
    tot = [sum(r[i] for r in rows) for i in range(2, 6)]
    rows.append(["all", "", *tot, tot[1] / wall])
    print(format_table(rows, ["split", "owner", "read", "written", "rejected", "bytes", "images/s"]))
    print(f"{len(m.shards)} shards, scheme {m.scheme} {m.scheme_params}, encoding {m.encoding}"
          f"{' q' + str(m.jpeg_quality) if m.jpeg_quality else ''}, {config.size_note}, {wall:.1f} s wall; "
          f"owners: {', '.join(f'{o.name} (key {o.key_id})' for o in m.owners)}")
    if planned.base is not None:
        print(grown(m.runs[-1]))
    if planned.saved is not None or planned.restart:
        print(f"resumed: kept {planned.kept} complete shard(s) of the interrupted run" if not planned.restart
              else "resumed: the interrupted run had stopped before it recorded its options; it ran again")
    if config.file_splits:
        print("split of each source file: " + ", ".join(f"{f} -> {s}" for f, s in config.file_splits))
    if tot[2]:
        print(f"rejected records and reasons: {join(config.out, ERRORS_NAME)}")
    for o in m.owners:
        if not o.counts:
            print(f"warning: owner {o.name} has no records: no record matched its \"match\" patterns in "
                  f"{args.keys}; check them against the source's paths (split/class/file)")
    print(f"check it with: lcrypt verify {config.out}")
    return 0


def grown(run: dict) -> str:
    """What a run that added to a dataset did, in one line (the table above is the whole dataset's)."""
    added = ", ".join(f"{split} {n:,}" for split, n in run["added"].items()) or "nothing"
    joined = f"; new owner(s): {', '.join(run['new_owners'])}" if run["new_owners"] else ""
    if run["mode"] == "retry-failed":
        gone = run["errors"] - run["rejected"]  # every other listed record was read again
        missing = f"; {gone:,} listed record(s) not in the source (errors.jsonl keeps them)" if gone else ""
        return (f"retry-failed: {run['read']:,} listed record(s) read again: {run['written']:,} now written "
                f"({added}), {run['rejected']:,} still fail (errors.jsonl keeps them){missing}{joined}")
    return (f"append: {run['read'] + run['skipped']:,} records read, {run['skipped']:,} already in the "
            f"dataset (skipped before decoding), {run['written']:,} added in {len(run['shards'])} new "
            f"shard(s) ({added}), {run['rejected']:,} rejected; {run['resolved']:,} earlier rejection(s) now "
            f"written; errors.jsonl lists {run['errors']:,} record(s){joined}")


def construct(argv: Sequence[str]):
    """Plan and build the pipeline for ``argv`` without running it (used to check Dataflow options)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare")
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    from pipelines.plan import plan

    planned = plan(args)
    p = make_pipeline(PipelineOptions(list(beam_args)))
    build(p, planned)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Parse known args, hand the rest to Beam (the wordcount way), run, print the summary."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_args(args, beam_args)


if __name__ == "__main__":
    sys.exit(run())
