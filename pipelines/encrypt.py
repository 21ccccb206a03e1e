"""Decode, encrypt and encode chunks of records (the work of ``prepare``), with rejections and decoder
isolation.

A chunk (records of one read unit, pipelines/sources.py) is decoded by lcrypt.images' rules, encrypted per
owner in one vectorised call, encoded, and written to one fragment file under ``--out/.fragments``; only
references to the encoded images travel on through Beam. Records that break a rule are rejected one by
one, with their reason. With ``isolate_decoders`` the chunk runs in a forked subprocess, so a decoder that
crashes its process costs a retry, not the job; a chunk that fails as a whole is redone one record at a
time. A chunk's result is saved beside its fragment, so a resumed run takes it instead of encrypting the
chunk again (pipelines/journal.py).

Records are skipped before they are decoded when the run adds to a dataset that holds them already
(``--append``, ``--retry-failed``: a record's sample key under any of the dataset's owners is in its
index), and when a resumed run has kept the complete shard they belong to. With the dataset's class names
fixed (``--append``), a record of a class the dataset does not have is rejected (``new_class``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Iterator, Tuple

import apache_beam as beam
import numpy as np

from lcrypt.format import (FRAGMENTS_NAME, check_split, encode_image, sample_key, sample_key_salt,
                           shard_of)
from lcrypt.images import ImageRejected
from lcrypt.keys import Key
from lcrypt.sources.base import Record, decode_record, owners_of
from lcrypt.storage import join
from pipelines import journal, outdir
from pipelines.config import NO_OWNER, NO_SPLIT, PrepareConfig
from pipelines.grow import read_base_index

Group = tuple[str, str]  # (split, owner)


@dataclasses.dataclass
class ChunkResult:
    """What one chunk gives: ``groups`` ``[((split, owner), [sample ref, ...]), ...]``, the ``rejected``
    rows, the records ``read`` and ``skipped`` (already in the dataset) per group, and the ``fragments``
    its refs point into ({name: [bytes, sha256]})."""

    groups: list = dataclasses.field(default_factory=list)
    rejected: list = dataclasses.field(default_factory=list)
    read: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    fragments: dict = dataclasses.field(default_factory=dict)

    def add(self, other: "ChunkResult") -> None:
        self.groups += other.groups
        self.rejected += other.rejected
        for mine, theirs in ((self.read, other.read), (self.skipped, other.skipped)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        self.fragments.update(other.fragments)

    def to_json(self) -> dict:
        return {"groups": [[s, o, [list(r) for r in refs]] for (s, o), refs in self.groups],
                "rejected": self.rejected, "read": [[s, o, n] for (s, o), n in self.read.items()],
                "skipped": [[s, o, n] for (s, o), n in self.skipped.items()], "fragments": self.fragments}

    @classmethod
    def from_json(cls, body: dict) -> "ChunkResult":
        return cls(groups=[((s, o), [tuple(r) for r in refs]) for s, o, refs in body["groups"]],
                   rejected=body["rejected"], read={(s, o): n for s, o, n in body["read"]},
                   skipped={(s, o): n for s, o, n in body["skipped"]}, fragments=body["fragments"])


@beam.typehints.with_output_types(Any, rejected=dict, read=tuple, skipped=Tuple[Any, int])
class EncryptChunkFn(beam.DoFn):
    """A chunk of records -> encrypted encoded samples grouped by (split, owner), plus rejections.

    Outputs: main ``((split, owner), [(key, label, fragment, offset, length), ...])``, the label an index
    when the source declares its class names, else the record's class name (WriteShardFn turns it into
    an index once every name is known: so this step never waits for a pass over the whole dataset,
    and the raw records never leave the fused read stage); ``rejected`` dicts
    ``{source, split, owner, reason, detail}``; ``read`` ``((split, owner), n)``; ``skipped``, the same
    for records the dataset holds already (not read: the run does not account for them). Bad records (corrupt,
    wrong mode, no owner...) are rejected one by one. With ``isolate_decoders`` the chunk is decoded in a
    forked subprocess, so a decoder that crashes its process (a segfault in a C library) costs a
    retry, not the job; a chunk that fails as a whole, in the subprocess or not, is redone one record at
    a time and the record that fails alone is rejected with the reason. (Beam's own ``use_subprocess``
    does the same per element, but sleeps a fixed second per DoFn at teardown, which costs a small
    job much of its time.) ``with_exception_handling`` stays as the backstop (prepare.build).
    """

    def __init__(self, config: PrepareConfig):
        self.config = config

    def setup(self):
        from lcrypt.schemes import get_scheme

        c = self.config
        self.scheme = get_scheme(c.scheme, **c.scheme_params)
        self.salts = {name: sample_key_salt(k) for name, k in c.keys.items()}
        self.single_owner = next(iter(c.keys)) if not c.owner_globs else None
        self.done = {"read": 0, "written": 0, "rejected": 0}
        self.progress_path = (os.path.join(c.progress_dir, f"{uuid.uuid4().hex}.json")
                              if c.progress_dir else None)
        self.last_report = 0.0
        self.pool = None
        self.known = (frozenset(read_base_index(c.base_dir, ["key"]).column("key").to_pylist())
                      if c.base_dir else frozenset())
        self.base_salts = [self.salts[o] for o in c.base_owners]

    def process(self, chunk):
        c = self.config
        name = fragment_name(chunk)
        saved = journal.load_chunk(c.out, name) if c.reuse_chunks else None
        if saved is not None:
            result = self._without_kept(ChunkResult.from_json(saved))
        else:
            new, result = self._skip_known(chunk)
            if new:
                result.add(self._attempt(new))
            if c.resume_plan is None:  # after counting, chunks skip kept records: not a whole chunk's result
                journal.save_chunk(c.out, name, result.to_json())
        yield from result.groups
        for row in result.rejected:
            yield beam.pvalue.TaggedOutput("rejected", row)
        for k, n in result.read.items():
            yield beam.pvalue.TaggedOutput("read", (k, n))
        for k, n in result.skipped.items():
            yield beam.pvalue.TaggedOutput("skipped", (k, n))
        self._progress(sum(result.read.values()) + sum(result.skipped.values()), len(result.rejected))

    def teardown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    # -- isolation and retries ---------------------------------------------------------------------
    def _attempt(self, chunk: list) -> ChunkResult:
        """The chunk's result; if it fails as a whole, each record's, rejecting those that fail alone."""
        try:
            return self._in_subprocess(chunk) if self.config.isolate_decoders else self.encrypt_chunk(chunk)
        except outdir.WriteFailed:
            raise  # the output, not the record, failed: stop the job (retrying records would reject them all)
        except Exception as exc:  # a crashed decoder process (BrokenProcessPool) or an escaped bug
            if len(chunk) == 1:
                exc = self._again_alone(chunk, exc)
                if isinstance(exc, ChunkResult):
                    return exc
                r = chunk[0]
                split, owner = self._split_owner(r)
                kind = type(exc).__name__
                reason = ("decoder_crashed: the process decoding this record died"
                          if kind == "BrokenProcessPool" else f"failed: {kind}")
                return ChunkResult(rejected=[{"source": r.source_id, "split": split, "owner": owner,
                                              "reason": reason, "detail": str(exc)[:500]}],
                                   read={(split, owner): 1})
        result = ChunkResult()
        for r in chunk:
            result.add(self._attempt([r]))
        return result

    def _again_alone(self, chunk: list, exc: Exception) -> ChunkResult | Exception:
        """A record whose decoder process died is decoded in a fresh one up to CRASH_RETRIES more times
        before it is rejected: a process forked from a runner's gRPC threads can die for reasons of its
        own (an abseil mutex caught mid-operation at fork), not the record's."""
        for _ in range(CRASH_RETRIES if self.config.isolate_decoders else 0):
            if type(exc).__name__ != "BrokenProcessPool":
                break
            try:
                return self._in_subprocess(chunk)
            except outdir.WriteFailed:
                raise
            except Exception as again:
                exc = again
        return exc

    def _in_subprocess(self, chunk: list) -> ChunkResult:
        import concurrent.futures
        import multiprocessing

        if self.pool is None:  # forked: inherits this DoFn set up, nothing is pickled but the chunk
            self.pool = concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork"), initializer=_adopt, initargs=(self,))
        try:
            return self.pool.submit(_encrypt_in_subprocess, chunk).result()
        except concurrent.futures.process.BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            raise

    # -- the work ---------------------------------------------------------------------------------
    def _split_owner(self, r: Record) -> tuple[str, str]:
        return self._assign(r)[:2]

    def _assign(self, r: Record) -> tuple[str, str, ImageRejected | None]:
        """``(split, owner, why it has none)``: the owner whose globs match the record. No owner, or
        several under ``--owner-overlap error``, leaves it ownerless, rejected with the reason."""
        split = r.split or NO_SPLIT
        if self.single_owner:
            return split, self.single_owner, None
        found = owners_of(r, self.config.owner_globs)
        if not found:
            return split, NO_OWNER, ImageRejected("no_owner", "no owner's match globs cover this record")
        if len(found) > 1 and self.config.owner_overlap == "error":
            return split, NO_OWNER, ImageRejected(
                "owner_conflict", f"matched by the globs of owners {' and '.join(found)}; make the owners' "
                "\"match\" patterns disjoint, or pass --owner-overlap first to give it to the first listed")
        return split, found[0], None

    # -- what is skipped before decoding ----------------------------------------------------------
    def _skip_known(self, chunk: list[Record]) -> tuple[list[Record], ChunkResult]:
        """``(the chunk's records the dataset this run adds to lacks, a result counting those it holds)``:
        a record is known by its sample key under one of the dataset's owners. Done here, before the
        chunk goes to the decoder process, so the known records are neither shipped nor decoded."""
        if not self.known:
            return chunk, ChunkResult()
        new, skipped = [], defaultdict(int)
        for r in chunk:
            if any(sample_key(r.source_id, s) in self.known for s in self.base_salts):
                skipped[self._split_owner(r)] += 1
            else:
                new.append(r)
        return new, ChunkResult(skipped=dict(skipped))

    def _kept(self, r: Record, split: str, owner: str) -> bool:
        """A resumed run kept the complete shard this record belongs to (a record rejected before is
        read again: its rejection must be written again)."""
        plan = self.config.resume_plan.get((split, owner)) if self.config.resume_plan else None
        if not plan or not plan[2] or r.source_id in self.config.resume_rejected:
            return False
        first, shards, kept = plan
        return first + shard_of(sample_key(r.source_id, self.salts[owner]), shards) in kept

    def _without_kept(self, result: ChunkResult) -> ChunkResult:
        """A saved chunk result without the refs of shards a resumed run kept (they are read, not written)."""
        plan = self.config.resume_plan
        if not plan:
            return result
        groups = []
        for group, refs in result.groups:
            first, shards, kept = plan.get(group, (0, 0, frozenset()))
            left = [r for r in refs if first + shard_of(r[0], shards) not in kept] if kept else refs
            if left:
                groups.append((group, left))
        return dataclasses.replace(result, groups=groups)

    def encrypt_chunk(self, chunk: list[Record]) -> ChunkResult:
        """Decode (lcrypt.images' rules), encrypt per owner in one vectorised call, encode, and write the
        encoded images to one fragment file; returns refs to them, the rejected rows and the reads."""
        c = self.config
        index = {n: i for i, n in enumerate(c.class_names)} if c.class_names is not None else None
        read: dict[Group, int] = defaultdict(int)
        groups: dict[Group, list] = defaultdict(list)
        rejected = []
        for r in chunk:
            split, owner, no_owner = self._assign(r)
            read[(split, owner)] += 1
            if no_owner is None and self._kept(r, split, owner):
                continue
            try:
                if r.layout_error:
                    decode_record(r)  # the record's own reason (layout, label, link...) comes first
                if no_owner is not None:
                    raise no_owner
                if split != NO_SPLIT:
                    check_split(split)
                image = decode_record(r, size=c.size, expect=c.expect)
                label = label_of(r, index, c.fixed_classes)
            except (ImageRejected, ValueError, KeyError) as exc:
                reason = exc.reason if isinstance(exc, ImageRejected) else f"invalid: {exc}"
                rejected.append({"source": r.source_id, "split": split, "owner": owner, "reason": str(reason),
                                 "detail": str(exc)})
                continue
            groups[(split, owner)].append((r.source_id, label, image))
        out, fragments = [], {}
        if groups:
            # The encoded images go to one fragment file per chunk; only (key, label, where) travel through
            # Beam. Shipping the bytes through the shuffle cost seconds, and multi_processing's data plane
            # dropped elements once a bundle's output passed ~2 GB (224x224 PNG), caught by Finalize's check.
            name = fragment_name(chunk)
            blob, offset = [], 0
            for (split, owner), items in sorted(groups.items()):
                images = encrypt_batch(self.scheme, [im for _, _, im in items], c.keys[owner])
                salt = self.salts[owner]
                refs = []
                for (sid, label, _), img in zip(items, images):
                    data = encode_image(img, c.encoding, c.jpeg_quality, c.jpeg_subsampling)
                    refs.append((sample_key(sid, salt), label, name, offset, len(data)))
                    blob.append(data)
                    offset += len(data)
                out.append(((split, owner), refs))
            data = b"".join(blob)
            outdir.write_atomic(join(c.out, FRAGMENTS_NAME, name), data, durable=False)
            fragments[name] = [len(data), hashlib.sha256(data).hexdigest()]
        return ChunkResult(out, rejected, dict(read), {}, fragments)

    def _progress(self, n_read: int, n_rejected: int) -> None:
        self.done["read"] += n_read
        self.done["rejected"] += n_rejected
        now = time.monotonic()
        if self.progress_path and now - self.last_report > 0.3:
            self.last_report = now
            try:
                tmp = self.progress_path + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(self.done, f)
                os.replace(tmp, self.progress_path)
            except OSError:
                pass  # progress is best effort; the summary at the end is exact

    def finish_bundle(self):
        self.last_report = 0.0
        self._progress(0, 0)


CRASH_RETRIES = 2  # fresh decoder processes a record gets after its chunk's and its own first one died
LARGE_IMAGE_BYTES = 1 << 16  # 64 KiB: 148x148 RGB; CIFAR (3 KB) batches, Imagenette (147 KB) does not


def encrypt_batch(scheme, images: list[np.ndarray], key: Key) -> list[np.ndarray] | np.ndarray:
    """Encrypt same-size images: one vectorised call over a stacked batch for small images; one call per
    image for large ones, where the call overhead is nothing and stacking would copy every image once
    more (the scheme's gather already writes a new array)."""
    if images[0].nbytes < LARGE_IMAGE_BYTES:
        return scheme.encrypt(np.stack(images), key)
    return [scheme.encrypt(im[None], key)[0] for im in images]


def label_of(r: Record, index: dict[str, int] | None, fixed: bool = False) -> int | str:
    """The record's label: its index under the declared class names, else its class name (resolved later).

    ``fixed``: the names are a dataset's (``--append``), matched by name, never extended: a new class
    would change what every model trained on the dataset outputs.
    """
    if index is None:
        if not r.class_name:
            raise ImageRejected("no_class", "the record has no class name (its folder) to label it with")
        return r.class_name
    if fixed:
        if r.class_name not in index:
            raise ImageRejected("new_class", f"class {r.class_name!r} is not one of the dataset's "
                                f"{len(index)} classes; --append keeps the dataset's class names (prepare a "
                                "new dataset to add a class)")
        return index[r.class_name]
    return int(r.label) if r.label >= 0 else index[r.class_name]


def fragment_name(chunk: list[Record]) -> str:
    """A name fixed by the chunk's content, so a retried bundle rewrites the same fragment."""
    h = hashlib.sha256()
    for r in chunk:
        h.update(r.source_id.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:32] + ".bin"


def _adopt(fn: EncryptChunkFn) -> None:
    """Pool initializer: the forked decoder process keeps the DoFn it was forked with (one per process),
    leaves Ctrl-C to its parent, and dies with it (a SIGKILLed parent would otherwise leave it blocked on
    its pipe forever, holding the source open)."""
    global _SUBPROCESS_FN
    _SUBPROCESS_FN = fn
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch_parent, name="lcrypt-watch-parent", daemon=True).start()


def _encrypt_in_subprocess(chunk: list) -> ChunkResult:
    return _SUBPROCESS_FN.encrypt_chunk(chunk)


_SUBPROCESS_FN: EncryptChunkFn | None = None  # set in the decoder subprocess only


def dead_letter_rows(bad) -> Iterator[dict]:
    """Beam's dead letter ``(chunk, (exc_type, exc, traceback))`` -> one rejection per record of the chunk."""
    chunk, err = bad
    kind = err[0] if isinstance(err, tuple) else type(err)
    if isinstance(kind, type) and issubclass(kind, outdir.WriteFailed):
        message = err[2][-1] if isinstance(err, tuple) else str(err)
        raise outdir.WriteFailed(message.strip().split("WriteFailed: ", 1)[-1])
    reason = f"failed: {kind.__name__}"
    for r in chunk:
        yield {"source": r.source_id, "split": r.split or NO_SPLIT, "owner": NO_OWNER, "reason": reason,
               "detail": str(err[1] if isinstance(err, tuple) else err)[:500]}


def dead_letter_reads(bad) -> Iterator[tuple]:
    for row in dead_letter_rows(bad):
        yield (row["split"], NO_OWNER), 1
