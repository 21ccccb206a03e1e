"""Per-rank, per-worker planning of one epoch from the manifest's per-shard sample counts.

Why plan instead of letting each rank take whole shards (webdataset's ``split_by_node``): with uneven
shards the ranks then see different numbers of batches, and DDP hangs in the all-reduce of the rank
that has one batch more (webdataset's ``resampled`` workaround draws shards with replacement and
leaves some unseen). Following mosaicml-streaming, we plan at sample granularity instead:

1. the epoch's shard order is a permutation seeded by ``(seed, epoch)`` (identity when not shuffling);
2. the concatenation of the shards in that order is one global sample sequence of N samples;
3. rank r takes the contiguous range ``[r*S, (r+1)*S)`` of it with ``S = N // world`` (training: at most
   ``world - 1`` samples left out, a different few each epoch), or a near-equal split that covers all N
   (evaluation, ``cover_all=True``); a range may start or end inside a shard;
4. the rank's range is cut into ``B`` batches (equal for every rank: that is what keeps DDP in step), and
   the batches are dealt to the DataLoader workers in contiguous blocks; torch's DataLoader takes
   batches from workers round robin, so output step ``k`` is worker ``k % W``'s next batch.

Everything here is a pure function of integers, so a resumed run recomputes the same plan and skips the
steps it already took (:func:`consumed_batches`).
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
    rank_start: int  # position of the rank's range in the epoch's global sequence
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


def pieces_of_range(counts: Sequence[int], order: Sequence[int], start: int, stop: int) -> list[Piece]:
    """The shard pieces that make up ``[start, stop)`` of the concatenation of ``counts`` in ``order``."""
    out: list[Piece] = []
    pos = 0
    for s in order:
        n = int(counts[s])
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            out.append(Piece(int(s), lo - pos, hi - pos))
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
    start, stop = rank_range(total, rank, world, cover_all)
    n = stop - start
    if drop_last and not cover_all:
        n -= n % batch_size
        stop = start + n
    num_batches = -(-n // batch_size)
    workers = []
    for first, last in split_batches(num_batches, num_workers):
        lo, hi = start + first * batch_size, min(start + last * batch_size, stop)
        pcs = pieces_of_range(counts, order, lo, hi) if hi > lo else []
        workers.append(WorkerPlan(tuple(pcs), max(0, hi - lo), last - first, first))
    return EpochPlan(epoch, rank, world, batch_size, tuple(int(s) for s in order), start, n, num_batches,
                     tuple(workers))


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
