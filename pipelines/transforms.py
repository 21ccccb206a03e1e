"""The DoFns of ``prepare`` after encryption (pipelines/encrypt.py): class names, shards, the manifest.

Reproducible sharding (the way TFDS's Beam builders do it): ``fileio.WriteToFiles`` decides file
contents by bundling, which depends on the runner and worker count, so instead every sample gets an
opaque key (HMAC of its source id under the owner's salt), the number of shards of each (split, owner)
is ``ceil(count / shard_size)`` from the counted total, the shard is ``key mod num_shards``, and the
samples of a shard are grouped and sorted by key before its tar is written in one go. The manifest,
index and errors.jsonl are written last, sorted, so the whole folder is a function of the input, the
keys and the options (apart from manifest.json's ``created``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import apache_beam as beam
import numpy as np

from lcrypt.format import (ERRORS_NAME, FRAGMENTS_NAME, Manifest, OwnerEntry, ShardEntry, ShardWriter,
                           num_shards_for, shard_of)
from lcrypt.sources.base import Record, classes_from_names
from lcrypt.storage import join
from pipelines import outdir
from pipelines.beamstorage import pipeline_storage
from pipelines.config import PrepareConfig


def chunk_classes(chunk: list[Record]) -> set[str]:
    """The class names of a chunk's records (not rejected for their layout): what AllClasses combines, so
    only names travel to the combine, never the raw records (a runner that does not lift combiners, such
    as dask, would otherwise ship every raw image to one task)."""
    return {r.class_name for r in chunk if r.class_name and not r.layout_error}


class ClassNamesFn(beam.CombineFn):
    """Sets of class names -> the dataset's class list (lcrypt.sources.base.classes_from_names: sorted,
    stable)."""

    def create_accumulator(self) -> set:
        return set()

    def add_input(self, acc: set, names: set[str]) -> set:
        acc.update(names)
        return acc

    def merge_accumulators(self, accs) -> set:
        return set().union(*accs)

    def extract_output(self, acc: set) -> list[str]:
        return classes_from_names(acc)


def add_pairs(pairs) -> tuple[int, int]:
    """Sum (count, bytes) pairs: the combiner of per-group totals."""
    c = b = 0
    for x, y in pairs:
        c, b = c + x, b + y
    return c, b


def num_shards(count: int, nbytes: int, shard_size: int, max_shard_bytes: int) -> int:
    """Shards for a (split, owner): about ``shard_size`` samples each, and at most ~``max_shard_bytes``.

    The byte cap keeps each shard (one grouped element in the pipeline) small enough for any runner's
    data plane: 224x224 PNG shards of 5,000 samples were 750 MB.
    """
    return max(num_shards_for(count, shard_size), -(-nbytes // max_shard_bytes))


class AssignShardsFn(beam.DoFn):
    """Split a group's samples into per-shard lists by ``key mod num_shards`` (from count and bytes)."""

    def __init__(self, shard_size: int, max_shard_bytes: int):
        self.shard_size, self.max_shard_bytes = shard_size, max_shard_bytes

    def process(self, element, totals):
        (split, owner), samples = element
        count, nbytes = totals[(split, owner)]
        n = num_shards(count, nbytes, self.shard_size, self.max_shard_bytes)
        per: dict[int, list] = defaultdict(list)
        for s in samples:
            per[shard_of(s[0], n)].append(s)
        for idx, items in per.items():
            yield (split, owner, idx), items


class WriteShardFn(beam.DoFn):
    """All samples of one shard -> its tar (sorted by key, written atomically) -> (ShardEntry, index rows)."""

    def __init__(self, out: str, encoding: str):
        self.out, self.writer = out, ShardWriter(encoding)

    def process(self, element, class_names):
        (split, owner, idx), lists = element
        index = {n: i for i, n in enumerate(class_names)}
        refs = [r if isinstance(r[1], int) else (r[0], index[r[1]], *r[2:]) for lst in lists for r in lst]
        data_of: dict[str, bytes] = {}
        by_fragment: dict[str, list] = defaultdict(list)
        for r in refs:
            by_fragment[r[2]].append(r)
        for frag, rs in sorted(by_fragment.items()):
            path = join(self.out, FRAGMENTS_NAME, frag)
            with pipeline_storage(path).open(path) as f:
                for key, _, _, offset, length in sorted(rs, key=lambda r: r[3]):
                    f.seek(offset)
                    data_of[key] = f.read(length)
        samples = sorted(((key, label, data_of[key]) for key, label, *_ in refs), key=lambda s: s[0])
        data, entry = self.writer.shard(split, owner, idx, samples)
        outdir.write_atomic(join(self.out, entry.path), data)
        # index rows travel compactly: Beam sizes side inputs by walking them, which cost seconds on 60k dicts
        keys = "\n".join(k for k, _, _ in samples)
        labels = np.array([lab for _, lab, _ in samples], dtype="<i8").tobytes()
        yield dataclasses.asdict(entry), keys, labels


class FinalizeFn(beam.DoFn):
    """Runs once after every shard: errors.jsonl, the reject-rate check, index.parquet, manifest.json."""

    def __init__(self, config: PrepareConfig, scheme_info: dict):
        self.config, self.scheme_info = config, scheme_info

    def process(self, _, written, rejected, read, class_names):
        c = self.config
        rejected = sorted(rejected, key=lambda r: (r["split"], r["owner"], r["source"]))
        errors = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected)
        outdir.write_atomic(join(c.out, ERRORS_NAME), errors.encode())
        entries = [ShardEntry(**e) for e, _, _ in written]
        stats = defaultdict(lambda: {"read": 0, "written": 0, "rejected": 0, "bytes": 0})
        for (split, owner), n in read.items():
            stats[(split, owner)]["read"] += n
        for e in entries:
            stats[(e.split, e.owner)]["written"] += e.count
            stats[(e.split, e.owner)]["bytes"] += e.bytes
        for r in rejected:
            stats[(r["split"], r["owner"])]["rejected"] += 1
        stat_rows = [{"split": s, "owner": o, **v} for (s, o), v in sorted(stats.items())]
        total_read = sum(v["read"] for v in stats.values())
        total_rej = len(rejected)
        for row in stat_rows:
            if row["read"] != row["written"] + row["rejected"]:
                raise RuntimeError(f"accounting error for split {row['split']} owner {row['owner']}: read "
                                   f"{row['read']} != written {row['written']} + rejected {row['rejected']}")
        if total_read and total_rej / total_read > c.max_reject_rate:
            outdir.remove_fragments(c.out)
            raise RejectRateExceeded(
                f"{total_rej} of {total_read} records rejected ({total_rej / total_read:.1%}), over "
                f"--max-reject-rate {c.max_reject_rate:.1%}; see {join(c.out, ERRORS_NAME)} for each record "
                "and reason, fix the source or use --size / raise --max-reject-rate")
        owners = []
        for name, key in sorted(c.keys.items()):
            counts = {e.split: 0 for e in entries if e.owner == name}
            for e in entries:
                if e.owner == name:
                    counts[e.split] += e.count
            owners.append(OwnerEntry(name=name, key_id=key.key_id, counts=dict(sorted(counts.items()))))
        manifest = Manifest(
            name=c.name, scheme=c.scheme, scheme_params=c.scheme_params, owners=owners,
            class_names=list(class_names), image_shape=c.image_shape, encoding=c.encoding, shards=entries,
            scheme_info=self.scheme_info, jpeg_quality=c.jpeg_quality,
            jpeg_subsampling=c.jpeg_subsampling if c.encoding == "jpeg" else None,
            stats=stat_rows, source=c.source_info)
        rows = [{"key": k, "shard": e["path"], "label": int(lab), "owner": e["owner"], "split": e["split"]}
                for e, keys, labels in written
                for k, lab in zip(keys.split("\n") if keys else [], np.frombuffer(labels, "<i8"))]
        manifest.save(c.out, index=rows, write=outdir.write_atomic)
        outdir.remove_fragments(c.out)
        yield manifest.to_dict()


class RejectRateExceeded(RuntimeError):
    """More records were rejected than ``--max-reject-rate`` allows."""
