"""Adding to a dataset: ``prepare --append`` and ``--retry-failed``.

The dataset is taken as the run found it (:class:`Base`, copied into the run state so that a resumed run
adds to the same). Its scheme, parameters, encoding and image size must be this run's; every owner it has
must be given with the same key (key id), so that a record it holds under any of them is recognised by
its sample key and skipped before it is decoded; new owners may join. Its class names stay as they are: a
record of another class is rejected (``new_class``), since a new class would change what every model
trained on the dataset outputs. New samples go into new shards whose indices continue after the
dataset's own, per (split, owner); the dataset's shards are not touched.

The manifest and index.parquet gain the new shards. ``stats`` describe the whole dataset: per split and
owner, written = its shards' samples, rejected = errors.jsonl's lines, read = both. ``errors.jsonl``
keeps the lines of records this run did not read; a record this run read takes its new line in place of
its old one, or loses its line when it is now written. ``runs`` lists what each run added (its first
entry describes the dataset as it was first prepared), for a release's changelog.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections import defaultdict
from typing import Any

from lcrypt.format import (ERRORS_NAME, INDEX_NAME, MANIFEST_NAME, SHARD_RE, TIMM_INFO_NAME, Manifest,
                           ManifestError, OwnerEntry, ShardEntry, parse_shard_path, sample_key,
                           sample_key_salt)
from lcrypt.storage import join
from pipelines import outdir
from pipelines.beamstorage import pipeline_storage
from pipelines.checks import check_new_reject_rate, run_stats
from pipelines.config import PrepareConfig
from pipelines.options import PrepareError

BASE_FILES = (MANIFEST_NAME, INDEX_NAME, ERRORS_NAME, TIMM_INFO_NAME)


@dataclasses.dataclass
class Base:
    """The dataset a run adds to, as it found it: its manifest and the bytes of its own files (those
    it has of :data:`BASE_FILES`)."""

    manifest: Manifest
    files: dict[str, bytes]

    @property
    def digest(self) -> str:
        """One sha256 over the dataset's own files: the same dataset, the same digest."""
        h = hashlib.sha256()
        for name in BASE_FILES:
            h.update(hashlib.sha256(self.files[name]).digest() if name in self.files else b"-")
        return h.hexdigest()

    @classmethod
    def load(cls, folder: str, flag: str) -> "Base":
        """The dataset in ``folder``; one line naming ``flag`` when there is none."""
        store = pipeline_storage(folder)
        files = {}
        for name in BASE_FILES:
            path = join(folder, name)
            try:
                if store.exists(path):
                    files[name] = store.read_bytes(path)
            except OSError as exc:
                raise PrepareError(f"{flag}: cannot read {path} ({exc})") from None
        if MANIFEST_NAME not in files:
            raise PrepareError(f"{flag}: --out {folder} holds no dataset (no {MANIFEST_NAME}); run without "
                               f"{flag} to prepare one")
        try:
            manifest = Manifest.from_dict(json.loads(files[MANIFEST_NAME]))
        except (ValueError, ManifestError) as exc:
            raise PrepareError(f"{flag}: the dataset in {folder} is damaged ({exc}); check it with "
                               "`lcrypt verify`") from None
        return cls(manifest, files)

    def save(self, folder: str) -> None:
        for name, data in self.files.items():
            outdir.write_atomic(join(folder, name), data)

    def errors(self) -> list[dict]:
        return [json.loads(line) for line in self.files.get(ERRORS_NAME, b"").splitlines() if line.strip()]

    def rollback(self, out: str) -> None:
        """Put the dataset in ``out`` back as it was: its own files, and no shard it did not list (the
        run state and the scratch are the caller's)."""
        store = pipeline_storage(out)
        for name in BASE_FILES:
            path = join(out, name)
            if name not in self.files:
                if store.exists(path):
                    store.delete(out, [name])
            elif not store.exists(path) or store.read_bytes(path) != self.files[name]:
                outdir.write_atomic(path, self.files[name])
        listed = {s.path for s in self.manifest.shards}
        outdir.delete(out, [f for f in outdir.survey(out)[0] if SHARD_RE.match(f) and f not in listed])

    def shard_base(self) -> dict[tuple[str, str], int]:
        """(split, owner) -> the index of the first new shard: one past the dataset's last."""
        first: dict[tuple[str, str], int] = {}
        for s in self.manifest.shards:
            split, owner, idx = parse_shard_path(s.path)
            first[(split, owner)] = max(first.get((split, owner), 0), idx + 1)
        return first


def check_compatible(base: Base, config: PrepareConfig, flag: str) -> None:
    """One line naming the first thing this run would do otherwise than the dataset was made."""
    m, c = base.manifest, config

    def differs(what: str, ours: Any, theirs: Any, hint: str) -> None:
        if ours != theirs:
            raise PrepareError(f"{flag}: {what} {ours} differs from the dataset's ({theirs}); {hint}")

    same = "pass the options the dataset was prepared with (see its manifest.json)"
    differs("scheme", f"{c.scheme} {c.scheme_params}", f"{m.scheme} {m.scheme_params}", same)
    differs("encoding", c.encoding, m.encoding, same)
    if m.encoding == "jpeg":
        differs("--jpeg-quality", c.jpeg_quality, m.jpeg_quality, same)
        differs("--jpeg-subsampling", c.jpeg_subsampling, m.jpeg_subsampling, same)
    differs("--name", c.name, m.name, "leave --name out")
    for o in m.owners:
        key = c.keys.get(o.name)
        if key is None:
            raise PrepareError(f"{flag}: --keys has no key for the dataset's owner {o.name}; give every "
                               "owner of the dataset (new owners may join), so its records are recognised")
        if not key.has_id(o.key_id):  # a dataset written before key ids changed records the legacy id
            differs(f"owner {o.name}'s key", key.key_id, o.key_id,
                    "give the key the dataset was encrypted with")


# -- the end of the run: the dataset with this run's shards ------------------------------------------
def finish(config: PrepareConfig, written: list, rejected: list[dict], read: dict, skipped: dict
           ) -> tuple[Manifest, list[dict], list[dict], dict]:
    """``(manifest, index rows, errors rows, this run's entry of runs)`` of the dataset after this run.

    The reject rate (--append) is that of the records new to the dataset: those errors.jsonl listed
    were counted when first rejected, and --retry-failed reads only those.
    """
    c = config
    base = Base.load(c.base_dir, f"--{c.mode.replace('_', '-')}")
    m = base.manifest
    new = [ShardEntry(**e) for e, _, _ in written]
    clash = {e.path for e in new} & {s.path for s in m.shards}
    if clash:
        raise RuntimeError(f"new shards would replace the dataset's: {sorted(clash)[:3]}")
    new_rows = index_rows(written)
    rows = read_base_index(c.base_dir).to_pylist() + new_rows
    run_stats(read, new, rejected)
    n_read, n_rej = sum(read.values()), len(rejected)
    old = base.errors()
    errors, resolved = merge_errors(old, rejected, {r["key"] for r in new_rows},
                                    [sample_key_salt(k) for k in c.keys.values()])
    if c.mode == "append":  # records errors.jsonl listed were counted against the rate when first rejected
        listed = {r["source"] for r in old}
        first = [r for r in rejected if r["source"] not in listed]
        check_new_reject_rate(first, n_read - (n_rej - len(first)) - resolved, c.max_reject_rate)
    shards = m.shards + new
    owners = [OwnerEntry(o.name, o.key_id) for o in m.owners]
    had = {o.name for o in m.owners}
    owners += [OwnerEntry(n, k.key_id) for n, k in sorted(c.keys.items()) if n not in had]
    for o in owners:
        for s in shards:
            if s.owner == o.name:
                o.counts[s.split] = o.counts.get(s.split, 0) + s.count
        o.counts = dict(sorted(o.counts.items()))
    added: dict[str, int] = defaultdict(int)
    for e in new:
        added[e.split] += e.count
    run = {"mode": c.mode.replace("_", "-"), "created": now(), "source": c.source_info, "read": n_read,
           "skipped": sum(skipped.values()), "written": sum(added.values()), "rejected": n_rej,
           "resolved": resolved, "errors": len(errors), "added": dict(sorted(added.items())),
           "new_owners": [o.name for o in owners[len(m.owners):]], "shards": sorted(e.path for e in new)}
    manifest = dataclasses.replace(
        m, owners=owners, shards=shards, splits={}, stats=stats_of(shards, errors),
        runs=(m.runs or [first_run(m)]) + [run], lcrypt_version="", created=run["created"])
    return manifest, rows, errors, run


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def merge_errors(old: list[dict], new: list[dict], written_keys: set[str], salts: list[bytes]
                 ) -> tuple[list[dict], int]:
    """``(errors.jsonl's rows after this run, how many of the old rows' records are now written)``.

    A record this run rejected takes its new row in place of any old one; an old row whose record is
    now written (its key under one of the owners is among this run's samples) goes; the others stay.
    """
    again = {r["source"] for r in new}
    kept, resolved = [], 0
    for r in old:
        if r["source"] in again:
            continue
        if any(sample_key(r["source"], s) in written_keys for s in salts):
            resolved += 1
            continue
        kept.append(r)
    return sorted(kept + new, key=lambda r: (r["split"], r["owner"], r["source"])), resolved


def stats_of(shards: list[ShardEntry], errors: list[dict]) -> list[dict]:
    """Per (split, owner): the samples written and their bytes, the records rejected, read = both."""
    stats: dict = defaultdict(lambda: {"read": 0, "written": 0, "rejected": 0, "bytes": 0})
    for s in shards:
        stats[(s.split, s.owner)]["written"] += s.count
        stats[(s.split, s.owner)]["bytes"] += s.bytes
    for r in errors:
        stats[(r["split"], r["owner"])]["rejected"] += 1
    for v in stats.values():
        v["read"] = v["written"] + v["rejected"]
    return [{"split": s, "owner": o, **v} for (s, o), v in sorted(stats.items())]


def first_run(m: Manifest) -> dict:
    """The ``runs`` entry of a dataset's first prepare, from its manifest."""
    rejected = sum(int(s.get("rejected", 0)) for s in m.stats)
    return {"mode": "prepare", "created": m.created, "source": m.source,
            "read": sum(int(s.get("read", 0)) for s in m.stats), "skipped": 0,
            "written": sum(m.splits.values()),
            "rejected": rejected, "resolved": 0, "errors": rejected, "added": dict(m.splits),
            "new_owners": [o.name for o in m.owners], "shards": [s.path for s in m.shards]}


def index_rows(written: list) -> list[dict]:
    """Index rows of WriteShardFn's outputs ``(entry, keys joined by newlines, labels as <i8 bytes)``."""
    import numpy as np

    return [{"key": k, "shard": e["path"], "label": int(lab), "owner": e["owner"], "split": e["split"]}
            for e, keys, labels in written
            for k, lab in zip(keys.split("\n") if keys else [], np.frombuffer(labels, "<i8"))]


def read_base_index(folder: str, columns: list[str] | None = None):
    """index.parquet of the dataset a run adds to (through the pipeline's storage), as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = join(folder, INDEX_NAME)
    return pq.read_table(pa.BufferReader(pipeline_storage(path).read_bytes(path)), columns=columns)
