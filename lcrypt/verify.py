"""`lcrypt verify DIR`: re-hash every shard and check it against the manifest and the index.

Checks, each reported with the shard (and sample) it concerns, so the user knows exactly what is wrong:
the manifest loads; every listed shard exists, has the recorded size and sha256; every shard parses as
the lcrypt shard format (two members per sample, keys sorted, .cls decodes); its sample count and
sample keys equal the index rows for that shard; labels are in range; index.parquet is readable and has
its columns; per-owner and per-split counts add up; ``errors.jsonl`` exists when the manifest's stats
record rejected records, and holds one line for each. The folder holds nothing else: at its root only
manifest.json, index.parquet, _info.json, errors.jsonl and the manifest's split folders, in a split
folder only the manifest's shards; any other file is flagged (a shard left from another run, a stray
file). A ``.lcrypt-prepare.lock`` at the root means a `prepare` run did not finish there (or is still
running), as do its scratch folders (``.fragments/``: one problem per folder) and temporary ``.*.tmp``
files. ``--decode`` also decodes every image and checks its shape against the manifest (slower).

A release (a folder `lcrypt release` wrote: it holds SHA256SUMS or release.json) is checked as a dataset
whose root may also hold the release's files and ``signatures/*.sig`` but never errors.jsonl (its
rejections.json must count the manifest's rejections), and then by :func:`lcrypt.signatures.check_release`:
every file against SHA256SUMS, every signature, and the shipped public keys against the ones given with
``--public-keys FILE`` / ``--key-id OWNER=ID``. The report says who signed what, against which key.

:func:`publish_problems` is the part of these checks `lcrypt release` runs on a dataset before it reads
the shards (whose sha256 it checks while copying them): what can go wrong after `prepare` wrote the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import posixpath
import sys
from collections import defaultdict
from lcrypt.format import (ERRORS_NAME, FRAGMENTS_NAME, IMAGE_EXT, INDEX_COLUMNS, INDEX_NAME, LOCK_NAME,
                           MANIFEST_NAME, REJECTIONS_NAME, RELEASE_FILES, RELEASE_INFO_NAME, SIGNATURES_DIR,
                           SUMS_NAME, TIMM_INFO_NAME, Manifest, ManifestError, ShardFormatError,
                           count_problem, decode_label, decode_member, group_members, make_sample,
                           parse_shard_path, read_index, shard_members)
from lcrypt.signatures import SIG_EXT, check_release, trusted_ids
from lcrypt.storage import Storage, join, storage_for

SCRATCH = (FRAGMENTS_NAME,)  # prepare's scratch folders, removed at its end
ROOT_FILES = (MANIFEST_NAME, INDEX_NAME, TIMM_INFO_NAME, ERRORS_NAME)
UNFINISHED = "a prepare run did not finish here (or is still running)"


@dataclasses.dataclass
class Report:
    """What :func:`check` found: ``problems`` (empty: intact), ``totals`` checked, ``notes`` (a release:
    who signed what, against which key)."""

    problems: list[str]
    totals: dict
    notes: list[str] = dataclasses.field(default_factory=list)
    release: bool = False


def is_release(directory: str, store: Storage) -> bool:
    """A folder `lcrypt release` wrote (it holds SHA256SUMS or release.json)."""
    return store.exists(join(directory, SUMS_NAME)) or store.exists(join(directory, RELEASE_INFO_NAME))


def verify(directory: str | os.PathLike, decode: bool = False) -> tuple[list[str], dict]:
    """``(problems, totals)``: every problem found (empty when the dataset is intact) and counts checked."""
    report = check(directory, decode)
    return report.problems, report.totals


def check(directory: str | os.PathLike, decode: bool = False, trusted: dict[str, str] | None = None
          ) -> Report:
    """Every check of a dataset folder, and of a release when it is one (``trusted``: owner -> key id)."""
    directory = str(directory)
    problems: list[str] = []
    totals = {"shards": 0, "samples": 0, "bytes": 0}
    store = storage_for(directory)
    release = is_release(directory, store)
    if store.exists(join(directory, LOCK_NAME)):
        problems.append(f"{LOCK_NAME}: {UNFINISHED}; if none is running, run the same `lcrypt prepare` "
                        "command again with --overwrite")
    try:
        m = Manifest.load(directory, store)
    except ManifestError as exc:
        return Report(problems + [str(exc)], totals, release=release)
    index = _read_index(directory, problems)
    by_shard: dict[str, list] = defaultdict(list)
    for row in index:
        by_shard[row["shard"]].append(row)
    listed = {s.path for s in m.shards}
    for extra in sorted(set(by_shard) - listed):
        problems.append(f"index.parquet lists {len(by_shard[extra])} samples in shard {extra}, "
                        "which the manifest does not list")
    expected_ext = IMAGE_EXT.get(m.encoding)
    h, w = m.image_shape[:2]
    for entry in m.shards:
        path = join(directory, entry.path)
        totals["shards"] += 1
        if not store.exists(path):
            problems.append(f"{entry.path}: missing (the manifest lists it with {entry.count} samples); "
                            "re-run `lcrypt prepare` or restore the file")
            continue
        data = store.read_bytes(path)
        totals["bytes"] += len(data)
        if len(data) != entry.bytes:
            problems.append(f"{entry.path}: {len(data)} bytes on disk, the manifest says {entry.bytes} "
                            "(truncated or replaced)")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            problems.append(f"{entry.path}: sha256 {digest[:16]}… differs from the manifest's "
                            f"{entry.sha256[:16]}… (the file was modified or corrupted)")
        try:
            split, owner, _ = parse_shard_path(entry.path)
            if (split, owner) != (entry.split, entry.owner):
                problems.append(f"{entry.path}: name says split {split} owner {owner}, the manifest says "
                                f"{entry.split} {entry.owner}")
        except ValueError as exc:
            problems.append(str(exc))
        keys = []
        try:
            for key, parts in group_members(shard_members(data), entry.path):
                keys.append(key)
                try:
                    _, label_bytes, ext, image, _ = make_sample(key, parts, entry.path)
                except ShardFormatError as exc:  # not one label and one image: name it, read the rest
                    problems.append(str(exc))
                    continue
                if ext != expected_ext:
                    problems.append(f"{entry.path}: sample {key} holds a .{ext} image, but the manifest's "
                                    f"encoding {m.encoding!r} stores .{expected_ext} images")
                    continue
                label = decode_label(label_bytes)
                if not 0 <= label < max(1, m.num_classes):
                    problems.append(f"{entry.path}: sample {key} has label {label}, outside "
                                    f"0..{m.num_classes - 1}")
                if decode:
                    img = decode_member(f"{key}.{ext}", image)
                    if img.shape != (h, w, 3):
                        problems.append(f"{entry.path}: sample {key} decodes to {img.shape}, expected "
                                        f"{(h, w, 3)}")
        except ValueError as exc:  # ShardFormatError included
            problems.append(f"{entry.path}: not a readable lcrypt shard: {exc}")
            continue
        totals["samples"] += len(keys)
        if problem := count_problem(entry, len(keys)):
            problems.append(f"{entry.path}: {problem}")
        if keys != sorted(keys):
            problems.append(f"{entry.path}: samples are not sorted by key (not written by lcrypt prepare?)")
        rows = by_shard.get(entry.path, [])
        idx_keys = sorted(r["key"] for r in rows)
        if index and idx_keys != sorted(keys):
            missing = sorted(set(idx_keys) - set(keys))
            extra = sorted(set(keys) - set(idx_keys))
            absent = ": " + ", ".join(missing[:3]) if missing else ""
            unindexed = ": " + ", ".join(extra[:3]) if extra else ""
            problems.append(f"{entry.path}: sample keys differ from index.parquet ({len(missing)} indexed "
                            f"but absent{absent}; {len(extra)} present but not indexed{unindexed})")
    problems += _stray_files(store.list_files(directory), listed, set(m.splits), release)
    problems += _check_rejections(directory, m, store) if release else _check_errors_file(directory, m, store)
    problems += _count_problems(m)
    if not release:
        return Report(problems, totals)
    found = check_release(directory, store, m, trusted)
    return Report(problems + found.problems, totals, found.notes, True)


def publish_problems(directory: str, m: Manifest, store: Storage) -> list[str]:
    """What `lcrypt release` checks before it copies a dataset: no unfinished run, nothing stray, the
    rejections recorded, counts that add up, and an index whose rows per shard are the manifest's counts
    (every shard's size and sha256 are checked as it is copied)."""
    problems = []
    if store.exists(join(directory, LOCK_NAME)):
        problems.append(f"{LOCK_NAME}: {UNFINISHED}")
    problems += _stray_files(store.list_files(directory), {s.path for s in m.shards}, set(m.splits),
                             is_release(directory, store))
    problems += _check_errors_file(directory, m, store)
    problems += _count_problems(m)
    table = _index_table(directory, problems)
    if table is None:
        return problems
    per_shard = {r["values"]: r["counts"] for r in table.column("shard").value_counts().to_pylist()}
    for entry in m.shards:
        if (n := per_shard.pop(entry.path, 0)) != entry.count:
            problems.append(f"{INDEX_NAME}: lists {n} samples of {entry.path}, the manifest {entry.count}")
    problems += [f"{INDEX_NAME} lists {n} samples in shard {p}, which the manifest does not list"
                 for p, n in sorted(per_shard.items())]
    return problems


def _count_problems(m: Manifest) -> list[str]:
    """Per-owner and per-split counts of the manifest against its shards."""
    problems = []
    for o in m.owners:
        for split, n in o.counts.items():
            have = sum(s.count for s in m.shards if s.owner == o.name and s.split == split)
            if have != n:
                problems.append(f"owner {o.name} split {split}: manifest counts {n}, its shards hold {have}")
    for split, n in m.splits.items():
        have = sum(s.count for s in m.shards if s.split == split)
        if have != n:
            problems.append(f"split {split}: manifest counts {n}, its shards hold {have}")
    return problems


def _read_index(directory: str, problems: list[str]) -> list[dict]:
    """index.parquet's rows, or [] with the reason appended to ``problems`` (never a raw pyarrow error)."""
    table = _index_table(directory, problems)
    return [] if table is None else table.to_pylist()


def _index_table(directory: str, problems: list[str]):
    """index.parquet as a pyarrow Table with its columns, or None with the reason appended to ``problems``."""
    try:
        table = read_index(directory)
    except ManifestError as exc:
        problems.append(f"{INDEX_NAME}: {exc}")
        return None
    except Exception as exc:  # pyarrow raises its own types (ArrowInvalid, OSError...) for a damaged file
        problems.append(f"{INDEX_NAME}: not a readable Parquet file ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}); restore it or re-run `lcrypt prepare`")
        return None
    missing = [c for c in INDEX_COLUMNS if c not in table.column_names]
    if missing:
        problems.append(f"{INDEX_NAME}: lacks the column(s) {', '.join(missing)} (not written by lcrypt "
                        "prepare?)")
        return None
    return table


def _stray_files(files: list[str], listed: set[str], splits: set[str], release: bool = False) -> list[str]:
    """One problem per file that is not part of the dataset (prepare's scratch files: one per folder); a
    release may also hold its own files and signatures (errors.jsonl there is check_release's problem)."""
    problems, scratch = [], defaultdict(int)
    root = ROOT_FILES + (LOCK_NAME,) + (RELEASE_FILES if release else ())
    for rel in files:
        top, _, rest = rel.partition("/")
        name = posixpath.basename(rel)
        if rel in listed or (not rest and rel in root):
            continue
        if release and top == SIGNATURES_DIR and "/" not in rest and rest.endswith(SIG_EXT):
            continue
        if top in SCRATCH:
            scratch[top] += 1
        elif name.startswith(".") and name.endswith(".tmp"):
            problems.append(f"{rel}: temporary file of a write that did not finish ({UNFINISHED}?); "
                            "delete it once no prepare runs here")
        elif not rest:
            problems.append(f"{rel}: stray file at the dataset root (a dataset holds only "
                            f"{', '.join(ROOT_FILES)} and its split folders); move it out of the dataset")
        elif "/" not in rest and rest.endswith(".tar"):
            problems.append(f"{rel}: shard file not listed in the manifest (left from another run?)")
        elif top in splits:
            problems.append(f"{rel}: stray file in split folder {top}/ (not a shard of the manifest); move "
                            "it out of the dataset")
        else:
            problems.append(f"{rel}: stray file in {top}/, which is not a split of the manifest; move it out "
                            "of the dataset")
    for top, n in sorted(scratch.items()):
        problems.append(f"{top}/: {n} scratch file(s): {UNFINISHED}; if none is running, rebuild the "
                        "dataset with `lcrypt prepare`")
    return problems


def _check_errors_file(directory: str, m: Manifest, store: Storage) -> list[str]:
    """errors.jsonl must exist when the stats record rejections, with one line per rejected record."""
    rejected = sum(int(s.get("rejected", 0)) for s in m.stats if isinstance(s, dict))
    path = join(directory, ERRORS_NAME)
    if not store.exists(path):
        if rejected:
            return [f"{ERRORS_NAME}: missing, but the manifest's stats record {rejected} rejected record(s); "
                    "it names each and its reason: restore it or re-run `lcrypt prepare`"]
        return []
    lines = [line for line in store.read_bytes(path).splitlines() if line.strip()]
    if len(lines) != rejected:
        return [f"{ERRORS_NAME}: {len(lines)} line(s), but the manifest's stats record {rejected} rejected "
                "record(s) (the file was edited, truncated or comes from another run)"]
    return []


def _check_rejections(directory: str, m: Manifest, store: Storage) -> list[str]:
    """A release publishes rejections.json (counts by reason) instead of errors.jsonl: its total must be
    the manifest's rejected count."""
    rejected = sum(int(s.get("rejected", 0)) for s in m.stats if isinstance(s, dict))
    try:
        total = json.loads(store.read_bytes(join(directory, REJECTIONS_NAME)))["total"]
    except FileNotFoundError:
        return [f"{REJECTIONS_NAME}: missing; a release counts its rejected records there"]
    except (ValueError, TypeError, KeyError):
        return [f"{REJECTIONS_NAME}: not a rejections file lcrypt release wrote"]
    if total != rejected:
        return [f"{REJECTIONS_NAME}: counts {total} rejected record(s), the manifest's stats {rejected}"]
    return []


def cmd_verify(args: argparse.Namespace) -> int:
    from lcrypt.table import format_table

    trust = args.public_keys or args.key_id
    try:
        trusted = trusted_ids(_read_local(args.public_keys) if args.public_keys else None, args.key_id or [],
                              f"--public-keys {args.public_keys}")
    except (ValueError, OSError) as exc:
        print(f"lcrypt verify: error: {exc}", file=sys.stderr)
        return 2
    report = check(args.dir, decode=args.decode, trusted=trusted)
    if trust and not report.release:
        print(f"lcrypt verify: error: {args.dir} is not a release (no {SUMS_NAME}): --public-keys and "
              "--key-id check release signatures", file=sys.stderr)
        return 2
    problems, totals = report.problems, report.totals
    print(format_table([[totals["shards"], totals["samples"], totals["bytes"], len(problems)]],
                       ["shards", "samples", "bytes", "problems"]))
    for note in report.notes:
        print(note)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"lcrypt verify: {args.dir} has {len(problems)} problem(s)", file=sys.stderr)
        return 1
    what = "every file matches SHA256SUMS and every signature" if report.release else ""
    print(f"OK {args.dir}: every shard matches the manifest and the index" + (f"; {what}" if what else ""))
    return 0


def _read_local(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError(f"--public-keys {path}: {exc.strerror or exc}") from None


def add_command(subparsers) -> None:
    """The `lcrypt verify` plugin."""
    p = subparsers.add_parser("verify", help="re-hash every file of a prepared dataset or a release and "
                              "check it")
    p.add_argument("dir", help="dataset folder made by `lcrypt prepare`, or a release made by `lcrypt "
                   "release` (a local path or an fsspec URL: gs://...)")
    p.add_argument("--decode", action="store_true", help="also decode every image and check its shape")
    p.add_argument("--public-keys", metavar="FILE", help="a release: the keys.pub.json the owners published "
                   "elsewhere; each signature's key must be theirs")
    p.add_argument("--key-id", action="append", metavar="OWNER=ID", help="a release: the key id OWNER "
                   "published (repeatable); OWNER must have signed with that key")
    p.set_defaults(func=cmd_verify)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lcrypt-verify")
    sub = parser.add_subparsers(dest="command", required=True)
    add_command(sub)
    args = parser.parse_args(["verify", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
