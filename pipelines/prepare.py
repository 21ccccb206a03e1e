"""`lcrypt prepare`: raw image dataset -> per-owner encrypted WebDataset shards + manifest (Apache Beam).

    lcrypt prepare --source SPEC --scheme NAME [--param k=v ...] --keys OWNERS --out DIR
                   [--jpeg-quality Q] [--shard-size N] [--size S] [beam options ...]
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

The chain: ReadRecords (raw records, batched by BatchElements) -> EncryptChunk (decode by lcrypt.images'
rules, encrypt per owner in one vectorised call, encode; rejects to errors.jsonl) -> count per (split, owner)
-> AssignShards (salted key mod shard count) -> GroupByKey -> WriteShard (labels to indices, sorted,
atomic) -> Finalize (errors.jsonl, reject-rate check, index.parquet, manifest.json, _info.json). Class
names the source does not declare are gathered beside the encryption, never before it: waiting for
them would hold every raw record in the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from lcrypt.format import check_owner
from lcrypt.keys import Key, KeyFileError
from pipelines import progress
from pipelines.options import (PrepareError, add_arguments, check_beam_args, check_numbers, dask_wanted,
                               load_dask, parse_params)

def add_command(subparsers) -> None:
    """The `lcrypt prepare` plugin (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("prepare",
                              help="encrypt a raw image dataset into WebDataset shards (Apache Beam)",
                              description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(p)
    p.set_defaults(func=lambda args: run_args(args, list(getattr(args, "extra", []) or [])),
                   accepts_extra=True)


# -- owners -------------------------------------------------------------------------------------------
def load_owners(spec: str) -> tuple[dict[str, Key], list[tuple[str, list[str]]], str | None]:
    """``(keys by owner, [(owner, globs)], owner column)`` from a key file or an owners file."""
    path = Path(spec)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepareError(f"--keys {spec}: not found; "
                           f"create a key with `lcrypt keygen --owner NAME --out {spec}`")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PrepareError(f"--keys {spec}: neither a key file nor an owners JSON file")
    if isinstance(body, dict) and body.get("format", "").startswith("lcrypt-key"):
        key = Key.load(path)
        check_owner(key.owner)
        return {key.owner: key}, [], None
    column = None
    if isinstance(body, dict) and "owners" in body:
        column = body.get("column")
        body = body["owners"]
    if not isinstance(body, dict) or not body:
        raise PrepareError(f"--keys {spec}: an owners file maps owner names "
                           f"to {{\"key\": ..., \"match\": [...]}}")
    keys, globs = {}, []
    for name, entry in body.items():
        try:
            check_owner(name)
        except ValueError as exc:
            raise PrepareError(f"--keys {spec}: {exc}") from None
        if not isinstance(entry, dict) or "key" not in entry or not entry.get("match"):
            raise PrepareError(f"--keys {spec}: owner {name!r} needs \"key\" (a key file) "
                               "and \"match\" (patterns)")
        match = entry["match"] if isinstance(entry["match"], list) else [entry["match"]]
        kpath = Path(entry["key"])
        keys[name] = Key.load(kpath if kpath.is_absolute() else path.parent / kpath, owner=name)
        globs.append((name, [str(m) for m in match]))
    return keys, globs, column


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
def build(p, source, config, class_names: list[str] | None, scheme_info: dict) -> None:
    """Add the prepare chain to pipeline ``p`` (separate from running it, so it can be built for Dataflow)."""
    import apache_beam as beam

    from pipelines.sources import ReadRecords
    from pipelines.encrypt import EncryptChunkFn, dead_letter_reads, dead_letter_rows
    from pipelines.transforms import (AssignShardsFn, ClassNamesFn, FinalizeFn, WriteShardFn, add_pairs,
                                     chunk_classes)

    chunks = p | "ReadRecords" >> ReadRecords(source, config.chunk, config.read_parts)
    if class_names is not None:
        names = p | "DeclaredClasses" >> beam.Create([class_names])
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
           .with_outputs("rejected", "read", main="samples")
           .with_exception_handling(threshold=1.0))
    samples, rejected, read, bad = out["samples"], out["rejected"], out["read"], out["bad"]
    rejected = ((rejected, bad | "DeadLetterRows" >> beam.FlatMap(dead_letter_rows))
                | "AllRejected" >> beam.Flatten())
    read_counts = ((read, bad | "DeadLetterReads" >> beam.FlatMap(dead_letter_reads))
                   | "AllRead" >> beam.Flatten() | "ReadPerGroup" >> beam.CombinePerKey(sum))
    totals = (samples | "CountSamples" >> beam.Map(lambda kv: (kv[0], (len(kv[1]), sum(r[4] for r in kv[1]))))
              | "TotalsPerGroup" >> beam.CombinePerKey(add_pairs))
    written = (samples
               | "AssignShards" >> beam.ParDo(AssignShardsFn(config.shard_size, config.max_shard_bytes),
                                              beam.pvalue.AsDict(totals))
               | "GroupShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShardFn(config.out, config.encoding),
                                             beam.pvalue.AsSingleton(names)))
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(FinalizeFn(config, scheme_info), beam.pvalue.AsList(written),
                                    beam.pvalue.AsList(rejected), beam.pvalue.AsDict(read_counts),
                                    beam.pvalue.AsSingleton(names)))


# -- the command ------------------------------------------------------------------------------------------
PROBE_IMAGES = 64  # images sampled to find the dataset's size when --size is not given
PROBE_MAJORITY = 0.9  # the sampled images that must share one size for it to be the dataset's


def probe_size(source) -> tuple[tuple[int, int], str]:
    """The dataset's image size from a sample of its images, and a line saying how it was decided.

    Folder trees are sampled evenly across their files, other sources from their first records. One
    size must hold for at least 90 % of the sample: the others are rejected later as ``wrong_size``
    (an odd image that sorts first no longer decides for all); otherwise refuse, listing the sizes.
    """
    from collections import Counter

    from lcrypt.images import ImageRejected
    from lcrypt.sources.base import decode_record

    sizes: Counter = Counter()
    for i, rec in enumerate(source.sample_records(PROBE_IMAGES)):
        if sum(sizes.values()) >= PROBE_IMAGES or i >= 20 * PROBE_IMAGES:
            break
        try:
            sizes[decode_record(rec).shape[:2]] += 1
        except ImageRejected:
            continue
    if not sizes:
        raise PrepareError(f"--source {source.path}: no decodable image among its first records; check the "
                           "source's format (see errors of `lcrypt prepare --max-reject-rate 1`)")
    (h, w), n = sizes.most_common(1)[0]
    total = sum(sizes.values())
    found = ", ".join(f"{a}x{b}: {c}" for (a, b), c in sizes.most_common(5))
    if n < PROBE_MAJORITY * total:
        raise PrepareError(f"--source {source.path}: its images have different sizes ({found} of {total} "
                           "sampled); pass --size S or HxW to resize and crop every image to one size")
    note = (f"image size {h}x{w}: {n} of {total} sampled images"
            + (f" (also {found.split(', ', 1)[1]}; images of another size are rejected, or pass --size)"
               if len(sizes) > 1 else ""))
    return (h, w), note


def plan(args: argparse.Namespace):
    """Validate options, keys and source before any work (run_args then claims --out); returns (source,
    config, declared class names, scheme info)."""
    from lcrypt.images import parse_size
    from lcrypt.schemes import get_scheme
    from lcrypt.sources import open_source
    from pipelines.beamstorage import BEAM
    from pipelines.runlock import check_apart
    from pipelines.config import PrepareConfig

    check_numbers(args)
    try:
        scheme = get_scheme(args.scheme, **parse_params(args.param))
    except (TypeError, ValueError) as exc:
        raise PrepareError(str(exc)) from None
    encoding = "jpeg" if args.jpeg_quality is not None else args.encoding
    if encoding == "jpeg" and args.jpeg_subsampling not in scheme.info.jpeg_subsamplings:
        ok = ", ".join(scheme.info.jpeg_subsamplings)
        compatible = "compatible with: " + ok if ok else "it is not JPEG-compatible at all"
        raise PrepareError(
            f"scheme {scheme.info.name} {scheme.params} is not JPEG-compatible with chroma subsampling "
            f"{args.jpeg_subsampling} ({compatible}); "
            "JPEG would destroy the ciphertext's structure. Drop --jpeg-quality for lossless PNG, or use "
            "--scheme etc with a block size that is a multiple of the JPEG MCU (8 for 444, 16 for 422/420)")
    try:
        keys, globs, column = load_owners(args.keys)
    except KeyFileError as exc:
        raise PrepareError(str(exc)) from None
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    try:
        source = open_source(args.source, remote=BEAM, split=args.split, image_column=args.image_column,
                             label_column=args.label_column, group_column=args.owner_column or column,
                             layout=args.layout)
        check_apart(str(args.out), source.path)
        shape, size_note = (None, f"image size {size[0]}x{size[1]} (--size)") if size else probe_size(source)
    except (OSError, ValueError) as exc:  # TarFormatError and ShardFormatError are ValueErrors
        if isinstance(exc, PrepareError):
            raise
        raise PrepareError(f"--source {args.source}: {exc}") from None
    h, w = size or shape
    try:
        scheme.encrypt(__import__("numpy").zeros((1, h, w, 3), "uint8"), next(iter(keys.values())))
    except ValueError as exc:
        raise PrepareError(f"scheme {args.scheme} cannot encrypt {h}x{w} images: {exc}") from None
    declared = source.class_names()
    name = args.name or Path(str(args.out).rstrip("/")).name or "dataset"
    config = PrepareConfig(
        out=str(args.out), name=name, scheme=scheme.info.name, scheme_params=dict(scheme.params), keys=keys,
        owner_globs=globs, encoding=encoding, jpeg_quality=args.jpeg_quality,
        jpeg_subsampling=args.jpeg_subsampling, shard_size=args.shard_size,
        max_shard_bytes=int(args.max_shard_mb * 2**20), size=size,
        expect=None if size else shape, image_shape=[h, w, 3], max_reject_rate=args.max_reject_rate,
        source_info=source.describe(), class_names=declared, owner_overlap=args.owner_overlap,
        chunk=args.chunk, read_parts=args.read_parts or 1, isolate_decoders=args.isolate_decoders,
        size_note=size_note, file_splits=source.file_splits())
    return source, config, declared, scheme.info.as_dict(h, w)


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
    from pipelines.outdir import WriteFailed
    from pipelines.sources import SourceUnreadable
    from pipelines.transforms import RejectRateExceeded

    if "distributed" in sys.modules:  # a dask run: an unreachable cluster, workers that all died
        from pipelines.daskrunner import failure_line

        line = failure_line(exc)
        if line:
            return line
    for cls in (RejectRateExceeded, WriteFailed, SourceUnreadable):
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
    from apache_beam.options.pipeline_options import PipelineOptions

    from apache_beam.options.pipeline_options import DirectOptions

    from pipelines import outdir
    from pipelines.runlock import claim_out, left_behind

    cleanup = contextlib.ExitStack()  # a local dask cluster, closed on every way out
    workers = None
    try:
        parser = argparse.ArgumentParser(allow_abbrev=False)
        add_arguments(parser)
        load_dask(beam_args)
        check_beam_args(beam_args, parser)
        source, config, declared, scheme_info = plan(args)
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
        lock = claim_out(args.out, args.overwrite)
    except (PrepareError, outdir.OutError, outdir.WriteFailed) as exc:
        cleanup.close()
        print(f"lcrypt prepare: error: {exc}", file=sys.stderr)
        return 2
    if not args.read_parts:
        config.read_parts = max(1, workers.threads if workers else local_workers)
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
        build(p, source, config, declared, scheme_info)
        p.run().wait_until_finish()
        finished = True
    except (KeyboardInterrupt, Exception) as exc:
        if isinstance(exc, KeyboardInterrupt) or _SIGNALLED.is_set():
            print(f"lcrypt prepare: interrupted: {left_behind(config.out)}", file=sys.stderr)
            return 130
        line = known_failure(exc)
        if line is None:
            raise
        print(f"lcrypt prepare: error: {line}; {left_behind(config.out)}", file=sys.stderr)
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
        lock.release(finished)
        cleanup.close()
    return summarize(args, config, time.perf_counter() - t0)


def summarize(args: argparse.Namespace, config, wall: float) -> int:
    """The summary table of a finished run (and the warnings a user should see)."""
    from lcrypt.format import ERRORS_NAME, Manifest
    from lcrypt.storage import join
    from lcrypt.table import format_table
    from pipelines.beamstorage import pipeline_storage

    m = Manifest.load(config.out, pipeline_storage(config.out))
    rows = [[s["split"], s["owner"], s["read"], s["written"], s["rejected"], s["bytes"], s["written"] / wall]
            for s in m.stats]
    tot = [sum(r[i] for r in rows) for i in range(2, 6)]
    rows.append(["all", "", *tot, tot[1] / wall])
    print(format_table(rows, ["split", "owner", "read", "written", "rejected", "bytes", "images/s"]))
    print(f"{len(m.shards)} shards, scheme {m.scheme} {m.scheme_params}, encoding {m.encoding}"
          f"{' q' + str(m.jpeg_quality) if m.jpeg_quality else ''}, {config.size_note}, {wall:.1f} s wall; "
          f"owners: {', '.join(f'{o.name} (key {o.key_id})' for o in m.owners)}")
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


def construct(argv: Sequence[str]):
    """Plan and build the pipeline for ``argv`` without running it (used to check Dataflow options)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare")
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    source, config, declared, scheme_info = plan(args)
    p = make_pipeline(PipelineOptions(list(beam_args)))
    build(p, source, config, declared, scheme_info)
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
