"""What a ``prepare`` run keeps in ``--out`` so that ``--resume`` can finish it after an interruption
(Ctrl-C, a kill, a lost machine) with a result byte-identical to an uninterrupted run.

``OUT/.lcrypt-run/`` (:data:`pipelines.outdir.RUN_STATE`), removed when the run finishes:

- ``journal.json``, written before any work: the run's mode and everything that decides its output
  (:func:`fingerprint`: scheme, parameters, encoding, image size, shard size, owners and key ids, the
  source's kind, options and files). A resume computes the same from its own command and refuses,
  naming the first difference, when they differ. Also how many parts an archive was read as: a resume
  reads it the same way (on any machine), so it meets the same chunks.
- ``totals.json``, written once every record is counted and before the first shard is written: per
  (split, owner) the records read, the samples, their bytes, the shard count, and the ids of the records
  rejected. The shard count fixes each shard's samples (a sample's shard is its key mod the count), so a
  resume keeps every complete shard and skips its records before decoding them; the records rejected are
  read again (their rows go to errors.jsonl), and the counts must come out the same.
- ``base/``: for ``--append`` and ``--retry-failed``, the dataset's manifest.json, index.parquet and
  errors.jsonl as they were before the run, which the run adds to (a resume reads them from here: the
  run may have replaced the ones in ``--out`` already).

Each chunk's result (sample refs, rejections, reads) is saved beside its encoded images in
``OUT/.fragments/`` (:func:`save_chunk`), under the name of the chunk's source ids, so a run killed while
encrypting need not encrypt those chunks again: chunks are cut per read unit (pipelines/sources.py), so
the same source gives the same chunks. A result whose fragments are not intact is ignored and the chunk
encrypted again. Ctrl-C removes the fragments but keeps the run state; a failure (disk full, reject rate)
removes both, and the run starts over with ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from lcrypt.format import (FRAGMENTS_NAME, IMAGE_EXT, SHARD_RE, ShardEntry, decode_label, group_members,
                           make_sample, shard_members, shard_of, shard_path)
from lcrypt.sources.base import FileSource, Source
from lcrypt.storage import join
from pipelines import outdir
from pipelines.beamstorage import pipeline_storage
from pipelines.config import PrepareConfig
from pipelines.grow import Base
from pipelines.options import PrepareError

JOURNAL = "journal.json"
TOTALS = "totals.json"
BASE = "base"

Plan = dict[tuple[str, str], tuple[int, int]]
"""(split, owner) -> (index of its first shard in this run, number of shards this run writes)."""


def state_path(out: str, *parts: str) -> str:
    return join(out, outdir.RUN_STATE, *parts)


def write_json(path: str, body: Any, durable: bool = True) -> None:
    outdir.write_atomic(path, (json.dumps(body, sort_keys=True, indent=1) + "\n").encode(), durable)


def read_json(path: str) -> Any | None:
    """The JSON at ``path``, or None when it is missing or unreadable (a write a crash cut short)."""
    store = pipeline_storage(path)
    try:
        return json.loads(store.read_bytes(path)) if store.exists(path) else None
    except (OSError, ValueError):
        return None


def remove(out: str) -> None:
    """Delete the run state (the run finished, or failed and starts over)."""
    path = join(out, outdir.RUN_STATE)
    pipeline_storage(path).delete_folder(path)


def start(config: PrepareConfig, fingerprint: dict, base: Base | None, saved: dict | None,
          restart: bool = False) -> list[tuple]:
    """Make the run state ready once --out is claimed. A new run: save the dataset it adds to and its
    journal. A resume: keep the complete shards (returns their rows, as WriteShardFn gives them) and
    delete the other shard files of the interrupted run; take the saved chunk results. ``restart``: a
    resume of a run that stopped before its journal; what it left goes, and it starts over."""
    out = config.out
    if saved is not None:
        if read_json(state_path(out, JOURNAL)) != saved:
            raise PrepareError(f"--resume: the run state in --out {out} changed while this run started; run "
                               "the command again")
        listed = {s.path for s in base.manifest.shards} if base else set()
        totals = Totals.load(out)
        rows: list[tuple] = []
        if totals is not None:
            rows, config.resume_plan, doomed = kept_shards(out, totals, config.encoding, listed)
            config.resume_rejected = totals.rejected
        else:
            doomed = [f for f in outdir.survey(out)[0] if SHARD_RE.match(f) and f not in listed]
        outdir.delete(out, doomed)
        config.reuse_chunks = True
        return rows
    try:
        if restart:
            listed = {s.path for s in base.manifest.shards} | set(base.files) if base else set()
            ours, _ = outdir.classify(outdir.survey(out)[0], listed, unfinished=True)
            outdir.delete(out, [f for f in ours if f not in listed and f != outdir.LOCK_NAME])
        remove(out)
        if base is not None:
            flag = "--" + config.mode.replace("_", "-")
            if Base.load(out, flag).digest != base.digest:
                raise PrepareError(f"{flag}: the dataset in --out {out} changed while this run started; run "
                                   "the command again")
            base.save(state_path(out, BASE))
        write_json(state_path(out, JOURNAL), {"options": fingerprint, "read_parts": config.read_parts})
    except BaseException:
        remove(out)
        raise
    return []


# -- the journal: what decides the output ---------------------------------------------------------------
def source_identity(source: Source, units: list) -> Any:
    """What a resume compares to tell that the source is the same: each file and its size for a source
    read file by file (archives, Parquet, shards); the list of files for a tree (its read units)."""
    if isinstance(source, FileSource):
        return [[source.name(f), source.store.size(source.full(f))] for f in source.files()]
    listing = json.dumps([list(u) for u in units]).encode("utf-8", "surrogateescape")
    return {"units": len(units), "sha256": hashlib.sha256(listing).hexdigest()}


def fingerprint(config: PrepareConfig, source: Source, units: list, base_digest: str | None) -> dict:
    """Everything that decides a run's output, as JSON (the journal's body)."""
    c = config
    body = {"mode": c.mode, "name": c.name, "scheme": c.scheme, "scheme_params": c.scheme_params,
            "encoding": c.encoding, "jpeg_quality": c.jpeg_quality, "jpeg_subsampling": c.jpeg_subsampling,
            "size": c.size, "image_shape": c.image_shape, "shard_size": c.shard_size,
            "max_shard_bytes": c.max_shard_bytes, "key_ids": {o: k.key_id for o, k in sorted(c.keys.items())},
            "owner_globs": c.owner_globs, "owner_overlap": c.owner_overlap, "class_names": c.class_names,
            "source": c.source_info, "split": source.split, "source_files": source_identity(source, units),
            "dataset": base_digest}
    return json.loads(json.dumps(body))


def mismatch(saved: dict, now: dict) -> str | None:
    """The first difference between the interrupted run's fingerprint and this command's, in words."""
    for name in sorted(set(saved) | set(now)):
        if saved.get(name) != now.get(name):
            if name in ("source_files", "dataset"):
                what = "source's files" if name == "source_files" else "dataset it adds to"
                return f"the {what} differ from the interrupted run's"

            def short(v: Any) -> str:
                text = json.dumps(v)
                return text if len(text) <= 60 else text[:57] + "..."
            return f"{name} was {short(saved.get(name))} in the interrupted run, {short(now.get(name))} now"
    return None


# -- totals: written before the first shard ------------------------------------------------------------
def save_totals(out: str, plan: dict, totals: dict, read: dict, rejected_ids: list[str]) -> None:
    groups = [{"split": s, "owner": o, "first": plan[(s, o)][0], "shards": plan[(s, o)][1],
               "samples": totals[(s, o)][0], "bytes": totals[(s, o)][1]} for s, o in sorted(plan)]
    reads = [{"split": s, "owner": o, "read": n} for (s, o), n in sorted(read.items())]
    write_json(state_path(out, TOTALS), {"groups": groups, "read": reads, "rejected": sorted(rejected_ids)})


@dataclasses.dataclass
class Totals:
    """totals.json: the shard plan, the samples and reads per (split, owner), the rejected ids."""

    plan: Plan
    samples: dict[tuple[str, str], int]
    read: dict[tuple[str, str], int]
    rejected: frozenset

    @classmethod
    def load(cls, out: str) -> "Totals | None":
        body = read_json(state_path(out, TOTALS))
        if body is None:
            return None
        groups = {(g["split"], g["owner"]): g for g in body["groups"]}
        return cls(plan={k: (g["first"], g["shards"]) for k, g in groups.items()},
                   samples={k: g["samples"] for k, g in groups.items()},
                   read={(r["split"], r["owner"]): r["read"] for r in body["read"]},
                   rejected=frozenset(body["rejected"]))


def check_shard(data: bytes, path: str, first: int, shards: int, idx: int, ext: str
                ) -> tuple[list[str], list[int]] | None:
    """``(keys, labels)`` of a shard a resume can keep: it parses, its samples are sorted, each holds one
    label and one image of the dataset's type, and every key belongs to this shard; else None."""
    keys, labels = [], []
    try:
        for key, parts in group_members(shard_members(data), path):
            _, label_bytes, got, _, _ = make_sample(key, parts, path)
            if got != ext:
                return None
            keys.append(key)
            labels.append(decode_label(label_bytes))
    except ValueError:  # ShardFormatError included
        return None
    if not keys or any(a >= b for a, b in zip(keys, keys[1:])):
        return None
    if any(first + shard_of(k, shards) != idx for k in keys):
        return None
    return keys, labels


def kept_shards(out: str, totals: Totals, encoding: str, listed: set[str]
                ) -> tuple[list[tuple], dict, list[str]]:
    """The complete shards of the interrupted run: ``(rows as WriteShardFn gives them, the resume plan
    {(split, owner): (first, shards, kept indices)}, shard-named files to delete)``. A shard that fails
    :func:`check_shard` is deleted and written again; ``listed``: the dataset's own shards (append),
    never touched."""
    from lcrypt.format import parse_shard_path

    store = pipeline_storage(out)
    ext = IMAGE_EXT[encoding]
    files, _ = outdir.survey(out)
    found = {rel for rel in files if SHARD_RE.match(rel) and rel not in listed}
    rows, kept, doomed = [], {k: set() for k in totals.plan}, []
    for rel in sorted(found):
        split, owner, idx = parse_shard_path(rel)
        first, shards = totals.plan.get((split, owner), (0, 0))
        got = None
        if first <= idx < first + shards:
            data = store.read_bytes(join(out, rel))
            got = check_shard(data, rel, first, shards, idx, ext)
        if got is None:
            doomed.append(rel)
            continue
        keys, labels = got
        entry = ShardEntry(path=shard_path(split, owner, idx), owner=owner, split=split, count=len(keys),
                           bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        rows.append((dataclasses.asdict(entry), "\n".join(keys), np.array(labels, "<i8").tobytes()))
        kept[(split, owner)].add(idx)
    plan = {k: (first, shards, frozenset(kept[k])) for k, (first, shards) in totals.plan.items()}
    return rows, plan, doomed


# -- chunk results -------------------------------------------------------------------------------------
def chunk_path(out: str, fragment: str) -> str:
    return join(out, FRAGMENTS_NAME, fragment.rsplit(".", 1)[0] + ".json")


def save_chunk(out: str, fragment: str, body: dict) -> None:
    """Save a chunk's result (JSON; ``body["fragments"]``: {fragment name: [bytes, sha256]} of the
    fragment files its refs point into) under the chunk's fragment name."""
    write_json(chunk_path(out, fragment), body, durable=False)


def load_chunk(out: str, fragment: str) -> dict | None:
    """The saved result of the chunk whose fragment name is ``fragment``, or None: none saved, or one of
    its fragment files is missing or not what was written (a crash may cut an unsynced file short)."""
    body = read_json(chunk_path(out, fragment))
    if body is None:
        return None
    for name, (size, digest) in body.get("fragments", {}).items():
        path = join(out, FRAGMENTS_NAME, name)
        store = pipeline_storage(path)
        try:
            data = store.read_bytes(path)
        except OSError:
            return None
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            return None
    return body
