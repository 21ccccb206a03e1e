"""This process's place in a training run (one process, or one of torchrun's ranks) and what ranks share.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the process group is gloo on CPU and NCCL on
CUDA. Every helper here also works in a single process (no process group), so the training code has one
path. Ranks must stop together: a rank that leaves while the others wait in a collective leaves them
waiting, hence :func:`agree` (every rank learns any rank's error) and :func:`stop_together`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from training.errors import TrainError


@dataclasses.dataclass(frozen=True)
class Process:
    """This process's rank among ``world``, its local rank on the node and its device."""

    rank: int
    world: int
    local: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs and prints."""
        return self.rank == 0


def launched() -> tuple[int, int]:
    """``(rank, world size)`` as torchrun set them (``(0, 1)`` in a plain process), before any setup."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device_arg: str) -> Process:
    """Pick this rank's device and, under torchrun, join the process group."""
    rank, world = launched()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=_dt.timedelta(minutes=10))
    return Process(rank, world, local, device)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """``values`` summed over the ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def agree(error: str | None) -> str | None:
    """The lowest rank's error if any rank has one, on every rank (so they all stop, or none does)."""
    if not dist.is_initialized():
        return error
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    return next((e for e in gathered if e), None)


def stop_together(exc: TrainError, rank: int) -> None:
    """Every rank is here with the same error: rank 0 says it and all leave the process group
    (torchrun stops the others as soon as one rank exits)."""
    if dist.is_initialized():
        exc.report(rank)
        dist.barrier()
        dist.destroy_process_group()


def finish() -> None:
    """Wait for every rank, then leave the process group (no-op in one process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def peer_lost(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo reports it as a plain
    RuntimeError; newer torch as DistError)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def sync_buffers(*models: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does before each forward.

    After the last step each rank's BN running stats come from its own batches; evaluation and the
    final replicas must use one model.
    """
    if dist.is_initialized():
        for m in models:
            for b in m.buffers():
                dist.broadcast(b, 0)


def param_digest(model: nn.Module) -> str:
    """A short sha256 of every parameter and buffer: equal digests, bit-identical models."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def replica_digests(model: nn.Module, world: int) -> list[str]:
    """Every rank's :func:`param_digest`, in rank order (the summary shows the replicas agree)."""
    digest = param_digest(model)
    if not dist.is_initialized():
        return [digest]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, digest)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself in one process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
