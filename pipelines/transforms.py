"""The DoFns of ``prepare`` after encryption (pipelines/encrypt.py): class names, shards, the manifest.

Reproducible sharding (the way TFDS's Beam builders do it): ``fileio.WriteToFiles`` decides file
contents by bundling, which depends on the runner and worker count, so instead every sample gets an
opaque key (HMAC of its source id under the owner's salt), the number of shards of each (split, owner)
is ``ceil(count / shard_size)`` from the counted total, the shard is ``key mod num_shards``, and the
samples of a shard are grouped and sorted by key before its tar is written in one go. The manifest,
index and errors.jsonl are written last, sorted, so the whole folder is a function of the input, the
keys and the options (apart from manifest.json's ``created``).

The shard counts are saved in the run state (:class:`JournalFn`, pipelines/journal.py) before the first
shard is written: a resumed run keeps the complete shards and writes the others, with the same counts.
A run that adds to a dataset (pipelines/grow.py) numbers its shards after the dataset's own.
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
from pipelines import grow, journal, outdir
from pipelines.beamstorage import pipeline_storage
from pipelines.checks import RejectRateExceeded, ResumeMismatch, check_counts, check_reject_rate, run_stats
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


class JournalFn(beam.DoFn):
    """Once every record is counted: each (split, owner)'s shards (first index and count) with the counts
    (:class:`pipelines.journal.Totals`), saved in the run state before any shard is written (a resumed
    run takes them from there)."""

    def __init__(self, config: PrepareConfig):
        self.config = config

    def process(self, _, totals, read, rejected):
        c = self.config
        if c.resume_plan is not None:
            yield journal.Totals.load(c.out)
            return
        plan = {g: (c.shard_base.get(g, 0), num_shards(count, nbytes, c.shard_size, c.max_shard_bytes))
                for g, (count, nbytes) in totals.items()}
        ids = [r["source"] for r in rejected]
        journal.save_totals(c.out, plan, totals, read, ids)
        yield journal.Totals(plan, {g: t[0] for g, t in totals.items()}, dict(read), frozenset(ids))


class AssignShardsFn(beam.DoFn):
    """Split a group's samples into per-shard lists: shard ``first + key mod count`` (JournalFn's plan).
    A sample of a shard a resumed run kept means the source is not the interrupted run's: refused."""

    def __init__(self, config: PrepareConfig):
        self.kept = {g: kept for g, (_, _, kept) in (config.resume_plan or {}).items()}

    def process(self, element, counted):
        plan = counted.plan
        (split, owner), samples = element
        if (split, owner) not in plan:
            raise ResumeMismatch(f"split {split} owner {owner} has samples now, but had none when the "
                                 "interrupted run counted them: the source or the options are not that "
                                 "run's; start over with --overwrite")
        first, n = plan[(split, owner)]
        kept = self.kept.get((split, owner), frozenset())
        per: dict[int, list] = defaultdict(list)
        for s in samples:
            per[first + shard_of(s[0], n)].append(s)
        for idx, items in per.items():
            if idx in kept:
                raise ResumeMismatch(f"a record of shard {split}/{owner} {idx}, which the resumed run kept "
                                     "complete, passes now but was rejected then: the source changed; start "
                                     "over with --overwrite")
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
    """Runs once after every shard: errors.jsonl, the checks (pipelines/checks.py), index.parquet,
    manifest.json; for a run that adds to a dataset, the dataset's with this run's (pipelines/grow.py)."""

    def __init__(self, config: PrepareConfig, scheme_info: dict):
        self.config, self.scheme_info = config, scheme_info

    def process(self, _, written, rejected, read, skipped, class_names, counted):
        c = self.config
        rejected = sorted(rejected, key=lambda r: (r["split"], r["owner"], r["source"]))
        entries = [ShardEntry(**e) for e, _, _ in written]
        check_counts(counted.samples, counted.read, entries, read)
        if c.mode != "prepare":
            manifest, rows, errors, _ = grow.finish(c, written, rejected, read, skipped)
            self._save(manifest, rows, errors)
            yield manifest.to_dict()
            return
        self._write_errors(rejected)
        stat_rows = run_stats(read, entries, rejected)
        try:
            check_reject_rate(len(rejected), sum(read.values()), c.max_reject_rate, c.out)
        except RejectRateExceeded:
            outdir.remove_fragments(c.out)
            raise
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
        manifest.save(c.out, index=grow.index_rows(written), write=outdir.write_atomic)
        outdir.remove_fragments(c.out)
        yield manifest.to_dict()

    def _write_errors(self, rows: list[dict]) -> None:
        errors = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        outdir.write_atomic(join(self.config.out, ERRORS_NAME), errors.encode())

    def _save(self, manifest: Manifest, rows: list[dict], errors: list[dict]) -> None:
        """A grown dataset's files, the manifest last (errors.jsonl, index.parquet, _info.json, manifest)."""
        self._write_errors(errors)
        manifest.save(self.config.out, index=rows, write=outdir.write_atomic)
        outdir.remove_fragments(self.config.out)
