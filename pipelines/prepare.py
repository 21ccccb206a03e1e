"""`lcrypt prepare`: raw image dataset -> per-owner encrypted WebDataset shards + manifest (Apache Beam).

    lcrypt prepare --source SPEC --scheme NAME [--param k=v ...] --keys OWNERS --out DIR
                   [--jpeg-quality Q] [--shard-size N] [--size S] [beam options ...]
    python -m pipelines.prepare ...   (the same)

Unknown flags are Beam PipelineOptions (``--runner``, ``--direct_num_workers``,
``--direct_running_mode multi_processing``, Dataflow's ``--project``, ``--region``,
``--temp_location``...). With no ``--runner`` (or ``--runner DirectRunner``) the pipeline runs on the
Python direct runner's engine (the FnApiRunner) chosen explicitly: since Beam 2.68 ``DirectRunner``
first tries the Prism binary, a download that fails offline.

The chain: ReadRecords (raw records, batched by BatchElements) -> EncryptChunk (decode by lcrypt.images' rules,
encrypt per owner in one vectorised call, encode; rejects to errors.jsonl) -> count per (split, owner)
-> AssignShards (salted key mod shard count) -> GroupByKey -> WriteShard (labels to indices, sorted,
atomic) -> Finalize (errors.jsonl, reject-rate check, index.parquet, manifest.json, _info.json). Class
names the source does not declare are gathered beside the encryption, never before it: waiting for
them would hold every raw record in the runner.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from lcrypt import shards
from lcrypt.keys import Key, KeyFileError

DEFAULT_SHARD_SIZE = 5000


class PrepareError(ValueError):
    """A problem found before any work starts (bad options, keys, source); the message says what to do."""


# -- arguments ----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="dataset: a folder, .tar/.tar.gz, cifar-10-python.tar.gz, "
                   ".parquet or WebDataset shards; prefix KIND: (imagefolder, tar, cifar, parquet, wds) to force")
    p.add_argument("--scheme", required=True, help="encryption scheme (see `lcrypt schemes`)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="scheme parameter, repeatable")
    p.add_argument("--keys", required=True, help="one owner's key file, or an owners JSON file "
                   '{"owner": {"key": "owner.key", "match": ["train/cat/*", ...]}, ...}')
    p.add_argument("--out", required=True, help="output dataset folder (local or gs://...)")
    p.add_argument("--name", help="dataset name recorded in the manifest (default: the output folder's name)")
    p.add_argument("--jpeg-quality", type=int, help="store JPEG at this quality (JPEG-compatible schemes only)")
    p.add_argument("--jpeg-subsampling", default="444", choices=("444", "422", "420"),
                   help="JPEG chroma subsampling (default 444); the scheme's block size must align with its MCU")
    p.add_argument("--encoding", choices=("png", "npy"), default="png",
                   help="lossless image encoding when no --jpeg-quality (default png: smaller, and timm reads it)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard, about")
    p.add_argument("--max-shard-mb", type=float, default=128,
                   help="split further so no shard exceeds about this many MiB (default 128)")
    p.add_argument("--size", help="resize (cover, bicubic) and centre-crop every image to S or HxW")
    p.add_argument("--split", default="train", help="split name for sources without split folders")
    p.add_argument("--image-column", help="Parquet: image column (default image)")
    p.add_argument("--label-column", help="Parquet: label column (default label)")
    p.add_argument("--owner-column", help="Parquet: column whose value the owners' match patterns test")
    p.add_argument("--max-reject-rate", type=float, default=0.01,
                   help="fail when more than this fraction of records is rejected (default 0.01)")
    p.add_argument("--isolate-decoders", action=argparse.BooleanOptionalAction, default=True,
                   help="decode in a forked subprocess, so an image that crashes a decoder is rejected instead "
                   "of killing the job (default on; --no-isolate-decoders saves the process hop)")
    p.add_argument("--chunk", type=int, default=256, help="records per batch (BatchElements) encrypted in one call "
                   "(default 256)")
    p.add_argument("--read-parts", type=int, help="read a single archive as this many parallel parts "
                   "(default: --direct_num_workers, or 1; on Dataflow about the number of worker cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_command(subparsers) -> None:
    """The `lcrypt prepare` plugin (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("prepare", help="encrypt a raw image dataset into WebDataset shards (Apache Beam)",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=lambda args: run_args(args, list(getattr(args, "extra", []) or [])), accepts_extra=True)


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise PrepareError(f"--param {pair!r}: write NAME=VALUE, e.g. --param block_size=16")
        out[k] = v
    return out


# -- owners -------------------------------------------------------------------------------------------
def load_owners(spec: str) -> tuple[dict[str, Key], list[tuple[str, list[str]]], str | None]:
    """``(keys by owner, [(owner, globs)], owner column)`` from a key file or an owners file."""
    path = Path(spec)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepareError(f"--keys {spec}: not found; create a key with `lcrypt keygen --owner NAME --out {spec}`")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PrepareError(f"--keys {spec}: neither a key file nor an owners JSON file")
    if isinstance(body, dict) and body.get("format", "").startswith("lcrypt-key"):
        key = Key.load(path)
        shards.check_owner(key.owner)
        return {key.owner: key}, [], None
    column = None
    if isinstance(body, dict) and "owners" in body:
        column = body.get("column")
        body = body["owners"]
    if not isinstance(body, dict) or not body:
        raise PrepareError(f"--keys {spec}: an owners file maps owner names to {{\"key\": ..., \"match\": [...]}}")
    keys, globs = {}, []
    for name, entry in body.items():
        try:
            shards.check_owner(name)
        except ValueError as exc:
            raise PrepareError(f"--keys {spec}: {exc}") from None
        if not isinstance(entry, dict) or "key" not in entry or not entry.get("match"):
            raise PrepareError(f"--keys {spec}: owner {name!r} needs \"key\" (a key file) and \"match\" (patterns)")
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
    """A Pipeline on the requested runner; the Python direct engine (never Prism) for DirectRunner."""
    import apache_beam as beam

    if is_local_runner(options):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


# -- pipeline construction ------------------------------------------------------------------------------
def build(p, source, config, class_names: list[str] | None, scheme_info: dict) -> None:
    """Add the prepare chain to pipeline ``p`` (separate from running it, so it can be built for Dataflow)."""
    import apache_beam as beam

    from pipelines.sources import FIELDS, ReadRecords
    from pipelines.transforms import (AssignShardsFn, ClassNamesFn, EncryptChunkFn, FinalizeFn, WriteShardFn, add_pairs,
                                      dead_letter_reads, dead_letter_rows)

    chunks = p | "ReadRecords" >> ReadRecords(source, config.chunk, config.read_parts)
    ci = FIELDS.index("class_name")
    le = FIELDS.index("layout_error")
    if class_names is not None:
        names = p | "DeclaredClasses" >> beam.Create([class_names])
    else:
        # One combine (partial sets in the read stage, one merge): a Distinct + ToList chain cost two more stages.
        names = (chunks
                 | "ClassNamesOfChunk" >> beam.Map(lambda ch: {t[ci] for t in ch if t[ci] and not t[le]})
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
               | "WriteShards" >> beam.ParDo(WriteShardFn(config.out, config.encoding), beam.pvalue.AsSingleton(names)))
    _ = (p | "Once" >> beam.Create([None])
         | "Finalize" >> beam.ParDo(FinalizeFn(config, scheme_info), beam.pvalue.AsList(written),
                                    beam.pvalue.AsList(rejected), beam.pvalue.AsDict(read_counts),
                                    beam.pvalue.AsSingleton(names)))


# -- the command ------------------------------------------------------------------------------------------
def plan(args: argparse.Namespace):
    """Validate options, keys and source before any work (run_args then checks --out); returns (source,
    config, declared class names, scheme info)."""
    from lcrypt.datasets import decode_record, source_class_names
    from lcrypt.images import ImageRejected, parse_size
    from lcrypt.schemes import get_scheme
    from pipelines.sources import open_source
    from pipelines.transforms import PrepareConfig

    try:
        scheme = get_scheme(args.scheme, **parse_params(args.param))
    except (TypeError, ValueError) as exc:
        raise PrepareError(str(exc)) from None
    encoding = "jpeg" if args.jpeg_quality is not None else args.encoding
    if encoding == "jpeg":
        if not 1 <= args.jpeg_quality <= 100:
            raise PrepareError(f"--jpeg-quality {args.jpeg_quality}: choose 1..100")
        if args.jpeg_subsampling not in scheme.info.jpeg_subsamplings:
            ok = ", ".join(scheme.info.jpeg_subsamplings)
            raise PrepareError(
                f"scheme {scheme.info.name} {scheme.params} is not JPEG-compatible with chroma subsampling "
                f"{args.jpeg_subsampling} ({'compatible with: ' + ok if ok else 'it is not JPEG-compatible at all'}); "
                "JPEG would destroy the ciphertext's structure. Drop --jpeg-quality for lossless PNG, or use "
                "--scheme etc with a block size that is a multiple of the JPEG MCU (8 for 444, 16 for 422/420)")
    if args.shard_size < 1:
        raise PrepareError("--shard-size must be at least 1")
    try:
        keys, globs, column = load_owners(args.keys)
    except KeyFileError as exc:
        raise PrepareError(str(exc)) from None
    try:
        size = parse_size(args.size)
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    try:
        source = open_source(args.source, split=args.split, image_column=args.image_column,
                             label_column=args.label_column, group_column=args.owner_column or column)
    except (FileNotFoundError, ValueError) as exc:
        raise PrepareError(f"--source {args.source}: {exc}") from None
    # Probe: the first decodable image fixes the dataset's size when --size is not given.
    shape = None
    if size is None:
        for i, rec in enumerate(iter(source)):
            try:
                shape = decode_record(rec).shape[:2]
                break
            except ImageRejected:
                if i >= 1000:
                    break
        if shape is None:
            raise PrepareError(f"--source {args.source}: no decodable image among the first records")
    h, w = size or shape
    try:
        scheme.encrypt(__import__("numpy").zeros((1, h, w, 3), "uint8"), next(iter(keys.values())))
    except ValueError as exc:
        raise PrepareError(f"scheme {args.scheme} cannot encrypt {h}x{w} images: {exc}") from None
    declared = source.class_names()
    if declared is None and source.kind == "cifar":
        declared = source_class_names(source)
    name = args.name or Path(str(args.out).rstrip("/")).name or "dataset"
    config = PrepareConfig(
        out=str(args.out), name=name, scheme=scheme.info.name, scheme_params=dict(scheme.params), keys=keys,
        owner_globs=globs, encoding=encoding, jpeg_quality=args.jpeg_quality,
        jpeg_subsampling=args.jpeg_subsampling, shard_size=args.shard_size,
        max_shard_bytes=int(args.max_shard_mb * 2**20), size=size,
        expect=None if size else shape, image_shape=[h, w, 3], max_reject_rate=args.max_reject_rate,
        source_info=source.describe(), class_names=declared,
        chunk=args.chunk, read_parts=args.read_parts or 1, isolate_decoders=args.isolate_decoders)
    return source, config, declared, scheme.info.as_dict(h, w)


def _check_out(out: str, overwrite: bool) -> None:
    """Refuse to write into a folder that holds anything (a dataset: unless --overwrite, which deletes
    only what an earlier prepare wrote). The same rules for a local folder and a gs:// prefix."""
    from pipelines import outdir

    if not outdir.is_remote(out) and os.path.exists(out) and not os.path.isdir(out):
        raise PrepareError(f"--out {out} is a file; give a folder")
    try:
        files = outdir.list_files(out)
    except ValueError as exc:  # Beam has no file system for the scheme (e.g. gs:// without apache-beam[gcp])
        raise PrepareError(f"--out {out}: {exc}") from None
    if not files:
        return
    if outdir.MANIFEST_NAME not in files and not overwrite:
        raise PrepareError(f"--out {out} exists and is not empty; choose a new folder (or --overwrite)")
    if not overwrite:
        raise PrepareError(f"--out {out} already holds a dataset; pass --overwrite to replace it")
    outdir.delete(out, outdir.previous_run(files))


def _watch_progress(progress_dir: str, stop: threading.Event, quiet: bool) -> None:
    """Live progress: sum the counters each worker drops in DIR/.progress (local runs only)."""
    from tqdm import tqdm

    bar = tqdm(desc="prepare", unit="img", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True,
               mininterval=0.5)
    shown = 0
    while not stop.wait(0.5):
        total, rej = 0, 0
        try:
            for f in os.listdir(progress_dir):
                if f.endswith(".json"):
                    with open(os.path.join(progress_dir, f)) as fh:
                        d = json.load(fh)
                    total, rej = total + d["read"], rej + d["rejected"]
        except (OSError, ValueError, KeyError):
            continue
        if total > shown:
            bar.update(total - shown)
            shown = total
            bar.set_postfix(rejected=rej)
    bar.close()


def quiet_beam_logging() -> None:
    """Keep two of Beam's local log lines off the user's terminal: the import-time warning about
    BigQuery client libraries (prepare never uses BigQuery), and the runner's ERROR record with a
    traceback of a DoFn's exception, which Beam then re-raises to :func:`run_args` (that reports it:
    a one-line error for a failed reject-rate check, the full traceback for anything else)."""
    import logging

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's note when the decoder subprocess forks
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    root.addFilter(lambda record: not record.getMessage().startswith("apitools not found"))
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)


def run_args(args: argparse.Namespace, beam_args: Sequence[str]) -> int:
    quiet_beam_logging()
    from apache_beam.options.pipeline_options import PipelineOptions

    from lcrypt.table import format_table
    from pipelines import outdir

    try:
        source, config, declared, scheme_info = plan(args)
        _check_out(args.out, args.overwrite)
    except PrepareError as exc:
        print(f"lcrypt prepare: error: {exc}", file=sys.stderr)
        return 2
    options = PipelineOptions(list(beam_args))
    if not args.read_parts:
        from apache_beam.options.pipeline_options import DirectOptions

        config.read_parts = max(1, options.view_as(DirectOptions).direct_num_workers or os.cpu_count() or 1)
    t0 = time.perf_counter()
    stop = threading.Event()
    watcher = None
    if is_local_runner(options):  # workers on this machine drop their counters in a local folder
        config.progress_dir = tempfile.mkdtemp(prefix="lcrypt-progress-")
        watcher = threading.Thread(target=_watch_progress, args=(config.progress_dir, stop, args.quiet), daemon=True)
        watcher.start()
    try:
        p = make_pipeline(options)
        build(p, source, config, declared, scheme_info)
        result = p.run()
        result.wait_until_finish()
    except Exception as exc:
        msg = str(exc)
        from pipelines.transforms import RejectRateExceeded

        if "RejectRateExceeded" in msg or isinstance(exc, RejectRateExceeded):
            line = next((l for l in msg.splitlines() if "records rejected" in l), msg.splitlines()[-1])
            print(f"lcrypt prepare: error: {line.split('RejectRateExceeded: ')[-1]}", file=sys.stderr)
            return 1
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join()
        if config.progress_dir:
            shutil.rmtree(config.progress_dir, ignore_errors=True)
        outdir.remove_fragments(config.out)  # after a failure (Finalize removes them after a success)
    wall = time.perf_counter() - t0
    m = outdir.load_manifest(config.out)
    rows = [[s["split"], s["owner"], s["read"], s["written"], s["rejected"], s["bytes"], s["written"] / wall]
            for s in m.stats]
    tot = [sum(r[i] for r in rows) for i in range(2, 6)]
    rows.append(["all", "", *tot, tot[1] / wall])
    print(format_table(rows, ["split", "owner", "read", "written", "rejected", "bytes", "images/s"]))
    print(f"{len(m.shards)} shards, scheme {m.scheme} {m.scheme_params}, encoding {m.encoding}"
          f"{' q' + str(m.jpeg_quality) if m.jpeg_quality else ''}, {wall:.1f} s wall; "
          f"owners: {', '.join(f'{o.name} (key {o.key_id})' for o in m.owners)}")
    if tot[2]:
        print(f"rejected records and reasons: {outdir.join(config.out, outdir.ERRORS_NAME)}")
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
    parser = argparse.ArgumentParser(prog="python -m pipelines.prepare", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_args(args, beam_args)


if __name__ == "__main__":
    sys.exit(run())
