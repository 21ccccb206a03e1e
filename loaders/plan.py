"""Per-rank, per-worker planning of one epoch from the manifest's per-shard sample counts.

Why plan instead of letting each rank take whole shards (webdataset's ``split_by_node``): with uneven
shards the ranks then see different numbers of batches, and DDP hangs in the all-reduce of the rank
that has one batch more (webdataset's ``resampled`` workaround draws shards with replacement and
leaves some unseen). Following mosaicml-streaming, we plan at sample granularity instead:

1. training keeps ``K`` samples per rank, ``K = N // world`` rounded down to whole batches (or not, with
   ``drop_last=False``); the ``D = N - world * K`` others sit out this epoch. Which ones is decided
   once per epoch, in a fixed coordinate (the N samples of the shards concatenated in manifest order):
   one cyclic window ``[a_e, a_e + D)`` (mod N) with ``a_e = a_0 + e * D``, ``a_0`` drawn from the seed
   (0 when not shuffling). The windows of consecutive epochs follow each other round the dataset;
2. the epoch's shard order is a permutation seeded by ``(seed, epoch)`` (identity when not shuffling);
   the kept samples of each shard (up to two pieces when the window cuts it) are laid out in that order
   into one sequence of ``world * K`` samples;
3. rank r takes the contiguous range ``[r*K, (r+1)*K)`` of it (training), or a near-equal split of all N
   samples (evaluation, ``cover_all=True``: nothing is dropped); a range may start or end inside a shard;
4. the rank's range is cut into ``B`` batches (equal for every rank: that is what keeps DDP in step), and
   the batches are dealt to the DataLoader workers in contiguous blocks; torch's DataLoader takes
   batches from workers round robin, so output step ``k`` is worker ``k % W``'s next batch.

Guarantee: every sample is trained on at least once in any two consecutive epochs. Whenever a rank has
at least one batch, ``D < world * batch <= world * K``, so ``D < N / 2`` and two consecutive windows
never overlap; over ``ceil(N / D)`` epochs the windows cover the dataset once, so no sample sits out
two epochs in a row and none is skipped more often than ``ceil(D * E / N)`` times in E epochs. Dropping
the tail of each rank's range instead (as webdataset and a plain ``N // world`` split do) drops the
same samples every epoch when there are few shards, since a shard's samples are always read in file
order.

Everything here is a pure function of integers (counts, seed, epoch, rank, world, workers, batch), so a
resumed run recomputes the same plan and skips the steps it already took (:func:`consumed_batches`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Piece:
    """Samples ``[start, stop)`` (positions inside the shard, in file order) of shard ``shard``."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    pieces: tuple[Piece, ...]  # what this worker reads, in order
    num_samples: int
    num_batches: int
    first_batch: int  # index of its first batch within the rank's batch sequence


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    epoch: int
    rank: int
    world: int
    batch_size: int
    shard_order: tuple[int, ...]
    dropped: tuple[int, int]  # (start, length) of the cyclic window of samples left out (manifest order)
    rank_start: int  # position of the rank's range in the epoch's sequence of kept samples
    num_samples: int  # samples this rank yields this epoch
    num_batches: int  # equal on every rank when cover_all is False
    workers: tuple[WorkerPlan, ...]


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's shard order: a permutation seeded by (seed, epoch), the same on every rank."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([int(seed), int(epoch), 0x5A4D]).permutation(num_shards)


def rank_range(total: int, rank: int, world: int, cover_all: bool = False) -> tuple[int, int]:
    """``[start, stop)`` of rank's slice of ``total`` samples: equal sizes, or a cover of all of them."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    if cover_all:
        base, extra = divmod(total, world)
        start = rank * base + min(rank, extra)
        return start, start + base + (rank < extra)
    per = total // world
    return rank * per, (rank + 1) * per


def kept_per_rank(total: int, world: int, batch_size: int, drop_last: bool = True) -> int:
    """Samples each rank trains on per epoch: ``total // world``, in whole batches when ``drop_last``."""
    per = total // world
    return per - per % batch_size if drop_last else per


def drop_window(total: int, dropped: int, seed: int, epoch: int, shuffle: bool = True) -> tuple[int, int]:
    """``(start, length)`` of the epoch's cyclic window of left-out samples (see the module docstring)."""
    if dropped <= 0 or total <= 0:
        return 0, 0
    base = int(np.random.default_rng([int(seed), 0xD809]).integers(total)) if shuffle else 0
    return (base + int(epoch) * dropped) % total, min(dropped, total)


def window_mask(total: int, window: tuple[int, int]) -> np.ndarray:
    """Boolean ``(total,)``: True for the samples (manifest order) inside the cyclic ``window``."""
    start, length = window
    return (np.arange(total) - start) % max(1, total) < length


def kept_pieces(counts: Sequence[int], window: tuple[int, int]) -> list[list[Piece]]:
    """Per shard, its samples outside the cyclic ``window`` as pieces in file order (up to two each)."""
    total = sum(counts)
    start, length = window
    cuts = [(start, min(start + length, total)), (0, max(0, start + length - total))]
    out, offset = [], 0
    for s, n in enumerate(counts):
        spans = [(0, n)]
        for lo, hi in cuts:
            lo, hi = max(lo - offset, 0), min(hi - offset, n)
            if lo < hi:
                parts = [part for a, b in spans for part in ((a, min(b, lo)), (max(a, hi), b))]
                spans = [(a, b) for a, b in parts if a < b]
        out.append([Piece(s, a, b) for a, b in spans])
        offset += n
    return out


def pieces_of_range(sequence: Sequence[Piece], start: int, stop: int) -> list[Piece]:
    """The pieces that make up ``[start, stop)`` of the concatenation of ``sequence``."""
    out: list[Piece] = []
    pos = 0
    for p in sequence:
        n = len(p)
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            out.append(Piece(p.shard, p.start + lo - pos, p.start + hi - pos))
        pos += n
        if pos >= stop:
            break
    return out


def split_batches(num_batches: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[first, last)`` batch blocks per worker; the first ``B % W`` workers get one more."""
    base, extra = divmod(num_batches, num_workers)
    out, b = [], 0
    for w in range(num_workers):
        n = base + (w < extra)
        out.append((b, b + n))
        b += n
    return out


def plan_epoch(counts: Sequence[int], batch_size: int, rank: int = 0, world: int = 1, num_workers: int = 1,
               seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = True,
               cover_all: bool = False) -> EpochPlan:
    """Plan one epoch for one rank (see the module docstring)."""
    if batch_size < 1 or num_workers < 1 or world < 1:
        raise ValueError("batch_size, num_workers and world must be at least 1")
    counts = [int(c) for c in counts]
    total = sum(counts)
    order = shard_order(len(counts), seed, epoch, shuffle)
    if cover_all:
        window = (0, 0)
        start, stop = rank_range(total, rank, world, cover_all=True)
    else:
        per = kept_per_rank(total, world, batch_size, drop_last)
        window = drop_window(total, total - world * per, seed, epoch, shuffle)
        rank_range(total, rank, world)  # checks the rank
        start, stop = rank * per, (rank + 1) * per
    kept = kept_pieces(counts, window)
    sequence = [p for s in order for p in kept[s]]
    n = stop - start
    num_batches = -(-n // batch_size)
    workers = []
    for first, last in split_batches(num_batches, num_workers):
        lo, hi = start + first * batch_size, min(start + last * batch_size, stop)
        pcs = pieces_of_range(sequence, lo, hi) if hi > lo else []
        workers.append(WorkerPlan(tuple(pcs), max(0, hi - lo), last - first, first))
    return EpochPlan(epoch, rank, world, batch_size, tuple(int(s) for s in order), window, start, n,
                     num_batches, tuple(workers))


def worker_of_step(step: int, num_workers: int) -> int:
    """Which worker's batch the DataLoader returns at output step ``step`` (round robin)."""
    return step % num_workers


def consumed_batches(step: int, worker: int, num_workers: int) -> int:
    """How many of ``worker``'s batches the first ``step`` output steps used (for resuming)."""
    return max(0, -(-(step - worker) // num_workers))


def step_order(plan: EpochPlan) -> list[int]:
    """The rank's batch index (within its range) returned at each output step, for checks and tests."""
    w = len(plan.workers)
    nxt = [wp.first_batch for wp in plan.workers]
    left = [wp.num_batches for wp in plan.workers]
    out = []
    k = 0
    while any(left):
        wi = k % w
        if left[wi]:
            out.append(nxt[wi])
            nxt[wi] += 1
            left[wi] -= 1
        k += 1
    return out
