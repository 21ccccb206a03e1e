"""Decode, encrypt and encode chunks of records (the work of ``prepare``), with rejections and decoder
isolation.

A chunk (records batched by BatchElements) is decoded by lcrypt.images' rules, encrypted per owner in one
vectorised call, encoded, and written to one fragment file under ``--out/.fragments``; only references to
the encoded images travel on through Beam. Records that break a rule are rejected one by one, with their
reason. With ``isolate_decoders`` the chunk runs in a forked subprocess, so a decoder that crashes its
process costs a retry, not the job; a chunk that fails as a whole is redone one record at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, Iterator

import apache_beam as beam
import numpy as np

from lcrypt.format import FRAGMENTS_NAME, check_split, encode_image, sample_key, sample_key_salt
from lcrypt.images import ImageRejected
from lcrypt.keys import Key
from lcrypt.sources.base import Record, decode_record, owners_of
from lcrypt.storage import join
from pipelines import outdir
from pipelines.config import NO_OWNER, NO_SPLIT, PrepareConfig


ChunkResult = tuple[list, list, dict]
"""What one chunk gives: ``[((split, owner), [sample ref, ...]), ...]``, rejected rows, reads per group."""


@beam.typehints.with_output_types(Any, rejected=dict, read=tuple)
class EncryptChunkFn(beam.DoFn):
    """A chunk of records -> encrypted encoded samples grouped by (split, owner), plus rejections.

    Outputs: main ``((split, owner), [(key, label, fragment, offset, length), ...])``, the label an index
    when the source declares its class names, else the record's class name (WriteShardFn turns it into
    an index once every name is known: so this step never waits for a pass over the whole dataset,
    and the raw records never leave the fused read stage); ``rejected`` dicts
    ``{source, split, owner, reason, detail}``; ``read`` ``((split, owner), n)``. Bad records (corrupt,
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

    def process(self, chunk):
        groups, rejected, read = self._attempt(chunk)
        yield from groups
        for row in rejected:
            yield beam.pvalue.TaggedOutput("rejected", row)
        for k, n in read.items():
            yield beam.pvalue.TaggedOutput("read", (k, n))
        self._progress(sum(read.values()), len(rejected))

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
                r = chunk[0]
                split, owner = self._split_owner(r)
                kind = type(exc).__name__
                reason = ("decoder_crashed: the process decoding this record died"
                          if kind == "BrokenProcessPool" else f"failed: {kind}")
                return [], [{"source": r.source_id, "split": split, "owner": owner, "reason": reason,
                             "detail": str(exc)[:500]}], {(split, owner): 1}
        groups, rejected, read = [], [], defaultdict(int)
        for r in chunk:
            g, rj, rd = self._attempt([r])
            groups += g
            rejected += rj
            for k, n in rd.items():
                read[k] += n
        return groups, rejected, dict(read)

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

    def encrypt_chunk(self, chunk: list[Record]) -> ChunkResult:
        """Decode (lcrypt.images' rules), encrypt per owner in one vectorised call, encode, and write the
        encoded images to one fragment file; returns refs to them, the rejected rows and the reads."""
        c = self.config
        index = {n: i for i, n in enumerate(c.class_names)} if c.class_names is not None else None
        read: dict[tuple[str, str], int] = defaultdict(int)
        groups: dict[tuple[str, str], list] = defaultdict(list)
        rejected = []
        for r in chunk:
            split, owner, no_owner = self._assign(r)
            read[(split, owner)] += 1
            try:
                if r.layout_error:
                    decode_record(r)  # the record's own reason (layout, label, link...) comes first
                if no_owner is not None:
                    raise no_owner
                if split != NO_SPLIT:
                    check_split(split)
                image = decode_record(r, size=c.size, expect=c.expect)
                label = label_of(r, index)
            except (ImageRejected, ValueError, KeyError) as exc:
                reason = exc.reason if isinstance(exc, ImageRejected) else f"invalid: {exc}"
                rejected.append({"source": r.source_id, "split": split, "owner": owner, "reason": str(reason),
                                 "detail": str(exc)})
                continue
            groups[(split, owner)].append((r.source_id, label, image))
        out = []
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
            outdir.write_atomic(join(c.out, FRAGMENTS_NAME, name), b"".join(blob), durable=False)
        return out, rejected, dict(read)

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


LARGE_IMAGE_BYTES = 1 << 16  # 64 KiB: 148x148 RGB; CIFAR (3 KB) batches, Imagenette (147 KB) does not


def encrypt_batch(scheme, images: list[np.ndarray], key: Key) -> list[np.ndarray] | np.ndarray:
    """Encrypt same-size images: one vectorised call over a stacked batch for small images; one call per
    image for large ones, where the call overhead is nothing and stacking would copy every image once
    more (the scheme's gather already writes a new array)."""
    if images[0].nbytes < LARGE_IMAGE_BYTES:
        return scheme.encrypt(np.stack(images), key)
    return [scheme.encrypt(im[None], key)[0] for im in images]


def label_of(r: Record, index: dict[str, int] | None) -> int | str:
    """The record's label: its index under the declared class names, else its class name (resolved later)."""
    if index is None:
        if not r.class_name:
            raise ImageRejected("no_class", "the record has no class name (its folder) to label it with")
        return r.class_name
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
