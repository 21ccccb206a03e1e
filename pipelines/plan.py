"""Planning a ``prepare`` run before any work: options, keys, the source, the image size; for a run that
adds to a dataset (``--append``, ``--retry-failed``: pipelines/grow.py) what the dataset fixes, and for
``--resume`` whether this command is the interrupted run's (pipelines/journal.py). Every problem is one
line (PrepareError) and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lcrypt.format import LOCK_NAME, MANIFEST_NAME, check_owner
from lcrypt.keys import Key, KeyFileError
from lcrypt.sources.base import Source
from lcrypt.storage import join
from pipelines import journal
from pipelines.beamstorage import pipeline_storage
from pipelines.config import PrepareConfig
from pipelines.grow import Base, check_compatible
from pipelines.options import PrepareError, check_numbers, parse_params


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



# -- the image size --------------------------------------------------------------------------------------
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



@dataclasses.dataclass
class Planned:
    """A run ready to start: its source and config, the class names known before it, its read units (and
    for --retry-failed the source ids it reads), the dataset it adds to, and its journal."""

    source: Source
    config: PrepareConfig
    declared: list[str] | None
    scheme_info: dict
    units: list
    keep: frozenset | None
    base: Base | None
    fingerprint: dict
    saved: dict | None = None  # --resume: the interrupted run's journal
    restart: bool = False  # --resume of a run that stopped before its journal: it starts over
    rolled_back: bool = False  # a run that added to the dataset failed and put it back as it was
    kept: int = 0  # --resume: complete shards of the interrupted run it kept


def flag_of(mode: str) -> str:
    return "--" + mode.replace("_", "-")


def interrupted_run(out: str) -> tuple[dict | None, str]:
    """``(journal, mode)`` of the run --resume finishes in ``out`` (one line when there is none). A run
    that stopped before it wrote its journal had done nothing to keep: its mode comes from its marker
    and it starts over."""
    store = pipeline_storage(out)
    marker = join(out, LOCK_NAME)
    if not store.exists(marker):
        raise PrepareError(f"--resume: --out {out} holds no unfinished prepare run (no {LOCK_NAME}): nothing "
                           "to resume")
    saved = journal.read_json(journal.state_path(out, journal.JOURNAL))
    if saved is not None:
        return saved, saved["options"]["mode"]
    holder = journal.read_json(marker)
    mode = holder.get("mode") if isinstance(holder, dict) else None
    if mode is None:
        if store.exists(join(out, MANIFEST_NAME)):
            raise PrepareError(f"--resume: the unfinished run in --out {out} stopped before it recorded what "
                               f"it did; the dataset in it is unchanged: delete {marker} and run the command "
                               "again")
        mode = "prepare"
    return None, mode


def base_size(base: Base, size: tuple[int, int] | None, source: Source, mode: str
              ) -> tuple[tuple[int, int] | None, str]:
    """``(the shape expected of each image, how it was decided)`` for a run adding to ``base``: the
    dataset's image size, by --size or, without it, as the source's images have (--retry-failed reads
    a few records, so it takes the dataset's)."""
    bh, bw = base.manifest.image_shape[:2]
    if size:
        if tuple(size) != (bh, bw):
            raise PrepareError(f"{flag_of(mode)}: --size {size[0]}x{size[1]} differs from the dataset's "
                               f"image size {bh}x{bw}; pass --size {bh}x{bw}, or leave it out")
        return None, f"image size {bh}x{bw} (--size)"
    if mode == "retry_failed":
        return (bh, bw), f"image size {bh}x{bw} (the dataset's)"
    shape, note = probe_size(source)
    if shape != (bh, bw):
        raise PrepareError(f"{flag_of(mode)}: --source's images are {shape[0]}x{shape[1]} ({note}), the "
                           f"dataset's {bh}x{bw}; pass --size {bh}x{bw} to resize and crop them to it")
    return shape, note


def retry_units(source: Source, ids: list[str], parts: int) -> list:
    """The read units of --retry-failed: a folder tree's listed files only; any other source is read
    whole (an archive is one stream) and its other records are dropped before decoding."""
    from lcrypt.sources.imagefolder import UNIT_FILES, ImageFolderSource

    if isinstance(source, ImageFolderSource):
        return [tuple(ids[i:i + UNIT_FILES]) for i in range(0, len(ids), UNIT_FILES)]
    return source.units(parts)


def plan(args: argparse.Namespace, mode: str = "prepare", parts: int = 1) -> Planned:
    """Validate options, keys and source before any work (run_args then claims --out); ``parts``: how
    many parts a single archive is read as (a resume takes the interrupted run's)."""
    from lcrypt.images import parse_size
    from lcrypt.schemes import get_scheme
    from lcrypt.sources import open_source
    from pipelines.beamstorage import BEAM
    from pipelines.runlock import check_apart

    check_numbers(args)
    out = str(args.out)
    saved, run_mode = interrupted_run(out) if mode == "resume" else (None, mode)
    if saved and not args.read_parts:  # the interrupted run's read units give the same chunks (journal.py)
        parts = saved.get("read_parts", parts)
    run_mode = "prepare" if run_mode == "overwrite" else run_mode
    base = None
    if run_mode in ("append", "retry_failed"):
        folder = journal.state_path(out, journal.BASE) if saved else out
        base = Base.load(folder, flag_of(mode))
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
        check_apart(out, source.path)
        if base is not None:
            shape, size_note = base_size(base, size, source, run_mode)
        else:
            shape, size_note = ((None, f"image size {size[0]}x{size[1]} (--size)") if size
                                else probe_size(source))
    except (OSError, ValueError) as exc:  # TarFormatError and ShardFormatError are ValueErrors
        if isinstance(exc, PrepareError):
            raise
        raise PrepareError(f"--source {args.source}: {exc}") from None
    h, w = size or shape
    try:
        scheme.encrypt(__import__("numpy").zeros((1, h, w, 3), "uint8"), next(iter(keys.values())))
    except ValueError as exc:
        raise PrepareError(f"scheme {args.scheme} cannot encrypt {h}x{w} images: {exc}") from None
    declared = base.manifest.class_names if base else source.class_names()
    name = args.name or (base.manifest.name if base else Path(out.rstrip("/")).name or "dataset")
    config = PrepareConfig(
        out=out, name=name, scheme=scheme.info.name, scheme_params=dict(scheme.params), keys=keys,
        owner_globs=globs, encoding=encoding, jpeg_quality=args.jpeg_quality,
        jpeg_subsampling=args.jpeg_subsampling, shard_size=args.shard_size,
        max_shard_bytes=int(args.max_shard_mb * 2**20), size=size,
        expect=None if size else shape, image_shape=[h, w, 3], max_reject_rate=args.max_reject_rate,
        source_info=source.describe(), class_names=declared, owner_overlap=args.owner_overlap,
        chunk=args.chunk, read_parts=parts, isolate_decoders=args.isolate_decoders,
        size_note=size_note, file_splits=source.file_splits(), mode=run_mode)
    keep = None
    if base is not None:
        check_compatible(base, config, flag_of(mode))
        config.fixed_classes, config.base_dir = True, journal.state_path(out, journal.BASE)
        config.base_owners, config.shard_base = [o.name for o in base.manifest.owners], base.shard_base()
    if run_mode == "retry_failed":
        ids = sorted({r["source"] for r in base.errors()})
        if not ids:
            raise PrepareError(f"--retry-failed: errors.jsonl in {out} lists no rejected record: nothing to "
                               "retry")
        keep, units = frozenset(ids), retry_units(source, ids, parts)
    else:
        units = source.units(parts)
    fingerprint = journal.fingerprint(config, source, units, base.digest if base else None)
    if saved is not None and (why := journal.mismatch(saved["options"], fingerprint)):
        raise PrepareError(f"--resume: {why}; resume with the interrupted run's command and options, or "
                           "start over with --overwrite")
    return Planned(source, config, declared, scheme.info.as_dict(h, w), units, keep, base, fingerprint, saved,
                   restart=mode == "resume" and saved is None)
