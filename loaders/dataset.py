"""Streaming, resumable, rank-disjoint reading of a published lcrypt dataset (shards + manifest).

The format comes from :mod:`lcrypt.format`; this module only decides which
samples each rank and worker reads (:mod:`loaders.plan`), in which order, and batches them. Stages, in
the webdataset manner, each a small generator::

    pieces of shards (plan) -> read_shard (samples via lcrypt.format.read_samples, members checked,
        shard checked against its manifest entry) -> shuffle_buffer (seeded per epoch, rank and worker)
        -> skip (resume) -> batch -> decode (image size and label range checked against the manifest)

A sample travels as a :data:`lcrypt.format.Sample` tuple ``(key, label bytes, ext, image bytes, url)``
and is decoded only once its batch is complete, by :func:`lcrypt.format.decode_samples`, straight into
one ``(B, H, W, 3)`` array: on 32x32 images the per-sample Python work, not the pixels, is what limits
a worker (bench/bench_loader.py).

Safety: members are decoded only by lcrypt.format's decoders (PNG, NPY without pickle, JPEG by
simplejpeg); a sample holding any other member (``.pyd``, ``.pickle``, ``.pth``...) is refused
with :class:`~lcrypt.format.ShardFormatError` naming the shard and member. Shard paths come from the
manifest and must match lcrypt's shard-name rule (relative, no scheme), so no ``pipe:`` URL or absolute
path from a manifest is ever opened.

Every shard read is checked against its manifest entry, whatever part of it is used: its byte size,
its sample count (and its sha256 with ``verify_sha256``); a missing, short or altered shard, a tar
error, an image whose header gives another size than the manifest's ``image_shape`` (refused before it
is decoded) or a label outside the manifest's classes is a ShardFormatError naming the shard (and the
sample), never a silently shorter epoch. :func:`check_shards` does the cheap part (present, right size)
for whole splits before training starts. Batches are uint8 ``(B, H, W, 3)`` tensors: normalisation and
augmentation run where the model runs (:mod:`loaders.augment`), which keeps the workers' output small.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
from typing import Any, Iterator, Sequence

import numpy as np

from lcrypt.format import (Manifest, Sample, ShardEntry, ShardFormatError, count_problem, dataset_folder,
                           decode_samples, parse_shard_path, read_samples)
from lcrypt.keys import LEGACY_KEY_ID_HEX_DIGITS
from lcrypt.storage import join, storage_for
from loaders import plan as planning

DEFAULT_BUFFER = 2000


class KeyMismatchError(ValueError):
    """The dataset's owners' key ids are not the ones the model was trained with."""


def check_key_ids(manifest: Manifest, expected: Sequence[str] | None, what: str = "the model") -> None:
    """Refuse a dataset encrypted under keys other than ``expected`` (a model is useless across keys).

    Both sides are ids recorded from manifests, compared as recorded: a dataset and a checkpoint written
    before key ids were public-key fingerprints both hold legacy ids (16 hex digits) and still match.
    Telling that a legacy id and a new one name the same key needs the key itself (``Key.has_id``), which
    training never holds; the error says when that is the likely cause.
    """
    if expected is None:
        return
    have = sorted(o.key_id for o in manifest.owners)
    if sorted(expected) != have:
        kinds = {len(k) == LEGACY_KEY_ID_HEX_DIGITS for k in [*have, *expected]}
        legacy = (" (one side records legacy key ids, written by an older lcrypt: the same key may have "
                  "prepared both)" if len(kinds) == 2 else "")
        raise KeyMismatchError(
            f"dataset {manifest.name!r} is encrypted with key ids {have}, but {what} was trained on key ids "
            f"{sorted(expected)}{legacy}: a model learned under one owner's key does not work on another's; "
            "use the dataset prepared with the same key, or train a new model on this one")


def resolve_shard(base: str, rel: str) -> str:
    """Local path or fsspec URL of a shard; refuses names outside lcrypt's shard-name rule."""
    parse_shard_path(rel)  # ValueError for '..', absolute paths, 'pipe:' and anything else
    if base.startswith("pipe:"):
        raise ValueError("pipe: URLs are never opened (they run a shell command); give a path or fsspec URL")
    return join(base, rel)


def load_manifest(path: str | os.PathLike) -> tuple[Manifest, str]:
    """``(manifest, base folder)`` from a manifest.json path or the dataset folder (local or fsspec)."""
    return Manifest.load(path), dataset_folder(path)


def _damaged(url: str, entry: ShardEntry, what: str) -> ShardFormatError:
    """A ShardFormatError naming the shard, with what to do next."""
    folder = url[:-len(entry.path)].rstrip("/\\") or "."
    return ShardFormatError(f"{url}: {what}; the dataset folder is damaged or was changed after "
                                   f"`lcrypt prepare` (run `lcrypt verify {folder}`)")


def shard_size(url: str) -> int | None:
    """Bytes of the shard file at ``url`` (local or fsspec), or None when there is none."""
    try:
        return storage_for(url).size(url)
    except FileNotFoundError:
        return None


def check_shards(manifest: Manifest, base: str, splits: Sequence[str]) -> list[str]:
    """Problems with the shards of ``splits``: missing, or not the manifest's byte size (no reading).

    Cheap (one stat per shard), so training runs it on every rank before the first step: a damaged
    dataset then stops the run at once, on all ranks, instead of one rank in the middle of an epoch.
    """
    problems = []
    for split in splits:
        for entry in manifest.shards_for(split):
            url = resolve_shard(base, entry.path)
            size = shard_size(url)
            if size is None:
                problems.append(str(_damaged(url, entry, "the shard is missing")))
            elif size != entry.bytes:
                problems.append(str(_damaged(url, entry, f"the shard is {size} bytes, the manifest says "
                                                         f"{entry.bytes}")))
    return problems


def read_shard(url: str, entry: ShardEntry, verify_sha256: bool = False) -> list[Sample]:
    """All samples of one shard (members checked, nothing decoded), checked against its manifest entry.

    Why the whole shard even when a plan uses a piece of it: the shard is read whole anyway, and only
    counting all its samples tells a short or padded shard from a good one.
    """
    try:
        data = storage_for(url).read_bytes(url)
    except FileNotFoundError:
        raise _damaged(url, entry, "the shard is missing") from None
    except OSError as exc:
        raise ShardFormatError(f"{url}: cannot read the shard: {exc}") from None
    if len(data) != entry.bytes:
        raise _damaged(url, entry, f"the shard is {len(data)} bytes, the manifest says {entry.bytes}")
    if verify_sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise _damaged(url, entry, f"sha256 {digest} does not match the manifest's {entry.sha256}")
    try:
        samples = list(read_samples(data, url))
    except ShardFormatError as exc:  # tar-level errors do not know the shard: name it
        if str(exc).startswith(url):
            raise
        raise ShardFormatError(f"{url}: {exc}") from None
    if problem := count_problem(entry, len(samples)):
        raise _damaged(url, entry, problem)
    return samples


def loader_error_message(exc: BaseException) -> str:
    """The one-line message of an error raised in a DataLoader worker (torch re-raises it with the
    worker's traceback in its text: "Caught X in DataLoader worker process N. Original Traceback...")."""
    text = str(exc)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        name, sep, message = last.partition(": ")
        return message if sep and " " not in name else last
    return text


def shuffle_buffer(samples: Iterator[Any], size: int, rng: np.random.Generator | None,
                   total: int | None = None) -> Iterator[Any]:
    """webdataset's reservoir shuffle, with an explicit generator so a resumed epoch replays it exactly.

    ``total`` (the number of samples the stream will yield, when known) only lets the slot draws come
    from numpy in blocks instead of one ``rng.integers`` call per sample; the draws, and so the order,
    are identical either way (:func:`_slot_draws`).
    """
    if rng is None or size <= 1:
        yield from samples
        return
    buf: list[Any] = []
    draws = _slot_draws(rng, size, None if total is None else total - size)
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = next(draws)
        buf[j], s = s, buf[j]
        yield s
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


def _slot_draws(rng: np.random.Generator, size: int, count: int | None, block: int = 4096) -> Iterator[int]:
    """``rng.integers(size)`` once per call of next(), drawn ``block`` at a time but never beyond ``count``.

    numpy's Generator gives the same values, and leaves the same state, for ``integers(n, size=k)`` as
    for k calls of ``integers(n)`` (tests/test_loader.py checks it), so blocks change nothing as long
    as no draw is made that the one-by-one loop would not make: the final permutation of the buffer
    must start from the same state. Past ``count`` (or without one) it draws one at a time.
    """
    left = max(0, count or 0)
    while left:
        chunk = rng.integers(size, size=min(block, left)).tolist()
        left -= len(chunk)
        yield from chunk
    while True:
        yield int(rng.integers(size))


def decode_batch(samples: list[Sample], shape: Sequence[int] | None = None,
                 num_classes: int | None = None) -> dict[str, Any]:
    """Decode a batch's samples with lcrypt.format (safe decoders only) into uint8 images and labels;
    ``shape`` and ``num_classes`` are the manifest's (image size and label range checked)."""
    import torch

    images, labels = decode_samples(samples, shape, num_classes)
    return {"image": torch.from_numpy(images), "label": torch.from_numpy(labels),
            "key": [s[0] for s in samples]}


class ShardDataset:
    """Uint8 batches of one split, planned per rank and worker.

    Under torch's DataLoader use :class:`loaders.torch_dataset.TorchShardDataset` (see
    :func:`loaders.torch_dataset.make_loader`). Call :meth:`set_epoch` before each epoch (and with
    ``start_step`` to resume mid-epoch); ``len(ds)`` is the number of batches this rank yields, equal on
    every rank.
    """

    def __init__(self, manifest: str | os.PathLike, split: str = "train", batch_size: int = 128,
                 rank: int = 0, world: int = 1, num_workers: int = 0, shuffle: bool = True, seed: int = 0,
                 buffer: int = DEFAULT_BUFFER, drop_last: bool = True, cover_all: bool = False,
                 owner: str | None = None, verify_sha256: bool = False,
                 expect_key_ids: Sequence[str] | None = None):
        self.manifest, self.base = load_manifest(manifest)
        check_key_ids(self.manifest, expect_key_ids)
        self.split, self.batch_size = split, int(batch_size)
        self.rank, self.world, self.num_workers = int(rank), int(world), max(1, int(num_workers))
        self.shuffle, self.seed, self.buffer = shuffle, int(seed), int(buffer)
        self.drop_last, self.cover_all, self.verify_sha256 = drop_last, cover_all, verify_sha256
        self.entries = self.manifest.shards_for(split, owner)
        if not self.entries:
            raise ValueError(f"split {split!r} has no shards in {self.base}")
        self.urls = [resolve_shard(self.base, e.path) for e in self.entries]
        self.counts = [e.count for e in self.entries]
        self.image_shape = tuple(self.manifest.image_shape)
        self.num_classes = self.manifest.num_classes or None
        self.epoch, self.start_step = 0, 0

    # -- planning -------------------------------------------------------------------------------
    def plan(self, epoch: int | None = None) -> planning.EpochPlan:
        return planning.plan_epoch(self.counts, self.batch_size, self.rank, self.world, self.num_workers,
                                   self.seed, self.epoch if epoch is None else epoch, self.shuffle,
                                   self.drop_last, self.cover_all)

    def __len__(self) -> int:
        return self.plan().num_batches

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (shuffle seed) and the output step to start from (resume)."""
        self.epoch, self.start_step = int(epoch), int(start_step)

    def state_dict(self, steps_done: int) -> dict[str, int]:
        """The loader position a checkpoint stores: epoch, steps and samples this rank consumed."""
        return {"epoch": self.epoch, "step": int(steps_done), "sample": int(steps_done) * self.batch_size,
                "num_workers": self.num_workers, "world": self.world}

    # -- reading --------------------------------------------------------------------------------
    def worker_samples(self, plan: planning.EpochPlan, worker: int) -> Iterator[Sample]:
        """Samples of one worker's pieces, in order, buffer-shuffled when training."""
        wp = plan.workers[worker]

        def raw():
            # consecutive pieces of one shard (a shard the drop window cut in two) share one read
            for shard, pieces in itertools.groupby(wp.pieces, key=lambda p: p.shard):
                samples = read_shard(self.urls[shard], self.entries[shard], self.verify_sha256)
                for piece in pieces:
                    yield from samples[piece.start:piece.stop]

        rng = (np.random.default_rng([self.seed, plan.epoch, plan.rank, worker, 0xB0FF])
               if self.shuffle else None)
        return shuffle_buffer(raw(), self.buffer, rng, total=wp.num_samples)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        if num_workers != self.num_workers:
            raise RuntimeError(f"ShardDataset was planned for {self.num_workers} workers but runs in "
                               f"{num_workers}; pass the same num_workers to ShardDataset and DataLoader")
        plan = self.plan()
        wp = plan.workers[worker]
        skip = planning.consumed_batches(self.start_step, worker, num_workers)
        stream = self.worker_samples(plan, worker)
        # resume: replay the stream (and so its shuffle) without decoding what was consumed
        collections.deque(itertools.islice(stream, min(skip * self.batch_size, wp.num_samples)), maxlen=0)
        done = 0
        while batch := list(itertools.islice(stream, self.batch_size)):
            yield decode_batch(batch, self.image_shape, self.num_classes)
            done += 1
        if done + skip != wp.num_batches and skip <= wp.num_batches:
            raise RuntimeError(f"worker {worker} yielded {done + skip} batches, planned {wp.num_batches}")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        if info is None:
            if self.num_workers != 1:
                # in-process iteration of a multi-worker plan: interleave the workers like DataLoader does
                return self._interleave()
            return self.iter_worker(0, 1)
        # DataLoader always starts its round robin at worker 0; after resuming at step s, the plan's
        # step s belongs to plan worker s % W, so DataLoader worker i plays plan worker (i + s) % W.
        return self.iter_worker((info.id + self.start_step) % info.num_workers, info.num_workers)

    def _interleave(self) -> Iterator[dict[str, Any]]:
        its = [self.iter_worker((w + self.start_step) % self.num_workers, self.num_workers)
               for w in range(self.num_workers)]
        live = set(range(self.num_workers))
        while live:
            for w in range(self.num_workers):
                if w in live:
                    try:
                        yield next(its[w])
                    except StopIteration:
                        live.discard(w)
