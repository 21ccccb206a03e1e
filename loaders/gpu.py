"""GPU-resident mode: read a split's shards once, keep the uint8 images on the device, batch there.

Why: a small model such as a CIFAR ResNet-18 trains on a GPU faster than per-image tar streaming and
decoding on CPU can feed it (docs/benchmarks.md, "Training on GPU"), and CIFAR-10 is only 184 MB as
uint8 (Imagenette at 224 about 1.4 GB). The airbench recipe: the whole dataset lives on the GPU and an
epoch is an index permutation. Every rank holds all images and draws the same permutation, seeded by
(seed, epoch), then takes its own equal slice, so ranks stay disjoint and in step (same batch count)
exactly as in :mod:`loaders.plan`; resuming skips whole steps of the same permutation.

What is left out to keep batches equal is :mod:`loaders.plan`'s cyclic window (manifest order), not the
permutation's tail: a fresh permutation's tail is a random set each epoch, so a sample could still sit
out several epochs running (probability ``(D/N)^k`` for k epochs); the window gives the plan's
guarantee, every sample trained on at least once in any two consecutive epochs.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from lcrypt.format import ShardFormatError, decode_samples
from loaders import plan as planning
from loaders.dataset import check_key_ids, load_manifest, owner_index, read_shard, resolve_shard


def read_split(manifest: str | os.PathLike, split: str, owner: str | None = None, threads: int = 8,
               expect_key_ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All ``(images uint8 (N, H, W, 3), labels int64, keys)`` of a split, in manifest shard order."""
    m, base = load_manifest(manifest)
    check_key_ids(m, expect_key_ids)
    entries = m.shards_for(split, owner)

    def one(entry) -> tuple[np.ndarray, np.ndarray, list[str]]:
        url = resolve_shard(base, entry.path)
        samples = read_shard(url, entry)  # checked as the streaming loader checks it (count included)
        if not samples:
            raise ShardFormatError(f"{url}: holds no samples")
        images, labels = decode_samples(samples, m.image_shape, m.num_classes or None)
        return images, labels, [s[0] for s in samples]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        parts = list(pool.map(one, entries))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [k for p in parts for k in p[2]])


def split_owners(manifest: str | os.PathLike, split: str, owner: str | None = None) -> np.ndarray:
    """Each sample's owner index (int64, :func:`loaders.dataset.owner_index`) in :func:`read_split`'s
    order: the shards' owners repeated by their (checked) counts."""
    m, _ = load_manifest(manifest)
    entries = m.shards_for(split, owner)
    return np.repeat(np.asarray(owner_index(m, entries), dtype=np.int64), [e.count for e in entries])


class GPUResident:
    """Batches ``{"image": uint8 (B, H, W, 3), "label": int64, "owner": int64}`` from device memory, per
    rank (``owner`` when given)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, batch_size: int,
                 device: str | torch.device = "cuda", rank: int = 0, world: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, cover_all: bool = False,
                 owners: np.ndarray | torch.Tensor | None = None):
        self.images = torch.as_tensor(images).to(device, non_blocking=True)
        self.labels = torch.as_tensor(labels).to(device, non_blocking=True)
        self.owners = None if owners is None else torch.as_tensor(owners).to(device, non_blocking=True)
        self.batch_size, self.rank, self.world = int(batch_size), int(rank), int(world)
        self.shuffle, self.seed, self.drop_last, self.cover_all = shuffle, int(seed), drop_last, cover_all
        self.epoch, self.start_step = 0, 0

    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike, split: str, batch_size: int, **kwargs: Any
                      ) -> "GPUResident":
        expect, owner = kwargs.pop("expect_key_ids", None), kwargs.pop("owner", None)
        images, labels, _ = read_split(manifest, split, owner, expect_key_ids=expect)
        return cls(images, labels, batch_size, owners=split_owners(manifest, split, owner), **kwargs)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for an epoch: the plan's drop window left out, the rest in one
        seeded permutation, sliced by rank."""
        epoch = self.epoch if epoch is None else epoch
        n = self.num_samples
        if self.cover_all:
            kept, (lo, hi) = torch.arange(n), planning.rank_range(n, self.rank, self.world, cover_all=True)
        else:
            planning.rank_range(n, self.rank, self.world)  # checks the rank
            per = planning.kept_per_rank(n, self.world, self.batch_size, self.drop_last)
            window = planning.drop_window(n, n - self.world * per, self.seed, epoch, self.shuffle)
            kept = torch.from_numpy(np.flatnonzero(~planning.window_mask(n, window)))
            lo, hi = self.rank * per, (self.rank + 1) * per
        if self.shuffle:
            seed = np.random.SeedSequence([self.seed, epoch, 0x6A7]).generate_state(1)[0]
            kept = kept[torch.randperm(len(kept), generator=torch.Generator().manual_seed(int(seed)))]
        return kept[lo:hi].to(self.images.device)

    def __len__(self) -> int:
        return -(-len(self.indices()) // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def state_dict(self, steps_done: int) -> dict[str, int]:
        return {"epoch": self.epoch, "step": int(steps_done), "sample": int(steps_done) * self.batch_size,
                "num_workers": 0, "world": self.world}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        idx = self.indices()
        for s in range(self.start_step * self.batch_size, len(idx), self.batch_size):
            take = idx[s:s + self.batch_size]
            batch = {"image": self.images[take], "label": self.labels[take], "index": take}
            if self.owners is not None:
                batch["owner"] = self.owners[take]
            yield batch
