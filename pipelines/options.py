"""The flags of ``lcrypt prepare`` and their checks, all made before any work starts.

Flags ``prepare`` does not define go to Beam as PipelineOptions (``--runner``, ``--direct_num_workers``,
Dataflow's ``--project``...), as in Beam's wordcount. Beam itself only warns about an argument it does
not know and runs on with the defaults, so a typo (``--shard_size 100``) would silently change nothing:
:func:`check_beam_args` refuses any argument that is neither a ``prepare`` flag nor a known Beam option,
naming the closest flag.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Sequence

DEFAULT_SHARD_SIZE = 5000


class PrepareError(ValueError):
    """A problem found before any work starts (bad options, keys, source); the message says what to do."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="dataset: a folder, .tar/.tar.gz, cifar-10-python.tar.gz, .parquet or WebDataset "
                   "shards; prefix KIND: (imagefolder, tar, cifar, parquet, wds) to force")
    p.add_argument("--scheme", required=True, help="encryption scheme (see `lcrypt schemes`)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="scheme parameter, repeatable")
    p.add_argument("--keys", required=True, help="one owner's key file, or an owners JSON file "
                   '{"owner": {"key": "owner.key", "match": ["train/cat/*", ...]}, ...}')
    p.add_argument("--owner-overlap", choices=("error", "first"), default="error",
                   help="a record matched by several owners' patterns: reject it naming the owners "
                   "(error, the default), or give it to the owner listed first in the owners file (first)")
    p.add_argument("--out", required=True, help="output dataset folder (local or gs://...)")
    p.add_argument("--name", help="dataset name recorded in the manifest (default: the output folder's name)")
    p.add_argument("--jpeg-quality", type=int,
                   help="store JPEG at this quality (JPEG-compatible schemes only)")
    p.add_argument("--jpeg-subsampling", default="444", choices=("444", "422", "420"),
                   help="JPEG chroma subsampling (default 444); "
                   "the scheme's block size must align with its MCU")
    p.add_argument("--encoding", choices=("png", "npy"), default="png",
                   help="lossless image encoding when no --jpeg-quality "
                   "(default png: smaller, and timm reads it)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="samples per shard, about")
    p.add_argument("--max-shard-mb", type=float, default=128,
                   help="split further so no shard exceeds about this many MiB (default 128)")
    p.add_argument("--size", help="resize (cover, bicubic) and centre-crop every image to S or HxW")
    p.add_argument("--split", default="train", help="split name for sources without split folders")
    p.add_argument("--layout", choices=("auto", "class", "split"), default="auto",
                   help="folder trees: auto (split folders are recognised by name: train, test, val...), "
                   "class (every file is <class>/<file>) or split (every file is <split>/<class>/<file>)")
    p.add_argument("--image-column", help="Parquet: image column (default image)")
    p.add_argument("--label-column", help="Parquet: label column (default label)")
    p.add_argument("--owner-column", help="Parquet: column whose value the owners' match patterns test")
    p.add_argument("--max-reject-rate", type=float, default=0.01,
                   help="fail when more than this fraction of records is rejected (default 0.01)")
    p.add_argument("--isolate-decoders", action=argparse.BooleanOptionalAction, default=True,
                   help="decode in a forked subprocess, so an image that crashes a decoder is rejected "
                   "instead of killing the job (default on; --no-isolate-decoders saves the process hop)")
    p.add_argument("--chunk", type=int, default=256,
                   help="records per batch (BatchElements) encrypted in one call (default 256)")
    p.add_argument("--read-parts", type=int, help="read a single archive as this many parallel parts "
                   "(default: --direct_num_workers, or 1; on Dataflow about the number of worker cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset an earlier prepare wrote in --out "
                   "(deletes only its files; refuses when --out holds anything else)")
    p.add_argument("--append", action="store_true",
                   help="add the source's records that --out's dataset does not hold yet (by sample key; "
                   "the others are skipped before decoding) in new shards numbered after its own, which "
                   "stay byte-identical; new owners may join, a new class is rejected; the scheme, its "
                   "parameters, the encoding and the image size must be the dataset's; the next `lcrypt "
                   "release` is a new MINOR version")
    p.add_argument("--resume", action="store_true",
                   help="finish the run that was interrupted in --out (Ctrl-C, a kill, a lost machine) with "
                   "the same command and source: complete shards are kept and their records not decoded "
                   "again; the result is byte-identical to an uninterrupted run")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-read only the records --out's errors.jsonl lists (after fixing them) and add "
                   "those that now pass, as --append does; errors.jsonl keeps those that still fail")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


MODES = ("overwrite", "append", "resume", "retry_failed")  # the flags that say what to do with --out


def run_mode(args: argparse.Namespace) -> str:
    """What this run does with ``--out``: "prepare" (a new dataset; "overwrite" replaces one), "append",
    "resume" or "retry_failed"; those flags exclude each other."""
    given = [m for m in MODES if getattr(args, m, False)]
    if len(given) > 1:
        a, b = (f"--{m.replace('_', '-')}" for m in given[:2])
        raise PrepareError(f"{a} and {b} cannot be combined: {a} {MODE_HELP[given[0]]}, {b} "
                           f"{MODE_HELP[given[1]]}; give one of them")
    return given[0] if given else "prepare"


MODE_HELP = {"overwrite": "replaces the dataset", "append": "adds new records to it",
             "resume": "finishes an interrupted run", "retry_failed": "re-reads the records it rejected"}


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise PrepareError(f"--param {pair!r}: write NAME=VALUE, e.g. --param block_size=16")
        out[k] = v
    return out


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag within its range (a zero or negative value would crash or silently misbehave)."""
    rules = [("--shard-size", args.shard_size, args.shard_size >= 1, "at least 1"),
             ("--max-shard-mb", args.max_shard_mb, args.max_shard_mb > 0, "greater than 0"),
             ("--chunk", args.chunk, args.chunk >= 1, "at least 1"),
             ("--max-reject-rate", args.max_reject_rate, 0 <= args.max_reject_rate <= 1, "between 0 and 1"),
             ("--read-parts", args.read_parts, args.read_parts is None or args.read_parts >= 1, "at least 1"),
             ("--jpeg-quality", args.jpeg_quality, args.jpeg_quality is None or 1 <= args.jpeg_quality <= 100,
              "1..100")]
    for flag, value, ok, rule in rules:
        if not ok:
            raise PrepareError(f"{flag} {value}: must be {rule}")


def beam_parser() -> argparse.ArgumentParser:
    """A parser that knows every option of every PipelineOptions class Beam has loaded."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    seen, stack = {}, list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        seen.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        stack += cls.__subclasses__()
    for cls in seen.values():
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # an option two classes both define: the first definition stands, as in Beam
    return parser


def check_beam_args(beam_args: Sequence[str], own: argparse.ArgumentParser) -> None:
    """Refuse any argument that is neither one of ``own``'s flags nor a known Beam pipeline option."""
    beam = beam_parser()
    _, unknown = beam.parse_known_args(list(beam_args))
    if not unknown:
        return
    bad = next((u for u in unknown if u.startswith("-")), unknown[0])
    flag = bad.split("=", 1)[0]
    known = [s for s in [*own._option_string_actions, *beam._option_string_actions] if s.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    hint = (f"; did you mean {close[0]}?" if close
            else "; see `lcrypt prepare --help` (other flags go to Beam)")
    what = "unknown flag" if bad.startswith("-") else "unexpected argument"
    raise PrepareError(f"{what} {bad!r}: neither a prepare flag nor a Beam pipeline option{hint}")


# Beam's own DaskRunner names get lcrypt's too: Beam's loses data (pipelines/daskrunner.py)
DASK_RUNNERS = ("dask", "DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")


def dask_wanted(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return options.view_as(StandardOptions).runner in DASK_RUNNERS


def load_dask(beam_args: Sequence[str]) -> None:
    """Make Beam's dask options (``--dask_client_address``...) known when the arguments mention dask."""
    if any("dask" in a.lower() for a in beam_args):
        try:
            import pipelines.daskrunner  # noqa: F401  (registers DaskOptions)
        except ImportError as exc:
            raise PrepareError(f"--runner dask needs dask.distributed ({exc}); "
                               "install it with: pip install 'lcrypt[dask]'") from None
