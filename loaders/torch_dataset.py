"""ShardDataset under torch's DataLoader: the ``IterableDataset`` class and :func:`make_loader`.

The torch side of :mod:`loaders.dataset`, in a module of its own for two reasons: ``loaders.dataset``
imports without torch (lcrypt users may not have it), and DataLoader workers started by a forkserver
receive the dataset pickled, so its class must be importable by name (a class made inside a function
is not).
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import torch.utils.data

from loaders.dataset import ShardDataset


class TorchShardDataset(ShardDataset, torch.utils.data.IterableDataset):
    """:class:`loaders.dataset.ShardDataset`, iterable by ``torch.utils.data.DataLoader``."""


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """DataLoader's ``collate_fn``: batches leave ShardDataset as tensors already.

    Why not torch's default (``default_convert``): it walks every batch recursively, one call per
    sample key, a noticeable share of a worker's time on small images.
    """
    return batch


def make_loader(manifest: str | os.PathLike, split: str, batch_size: int, *, rank: int = 0, world: int = 1,
                num_workers: int = 0, pin_memory: bool = False, **kwargs: Any
                ) -> tuple[torch.utils.data.DataLoader, TorchShardDataset]:
    """``(DataLoader, dataset)`` over :class:`ShardDataset` with batches made inside the workers.

    Workers start from a forkserver, not by forking the training process: under DDP that process
    runs gloo/NCCL and DataLoader threads, and a fork taken while one of them holds a lock can leave
    the child stuck forever, its rank waiting for it and the other ranks in all_reduce. The server
    preloads torch and this module, so a worker does not import them again; workers are still made per
    epoch (not persistent), so each sees :meth:`ShardDataset.set_epoch`.
    """
    ds = TorchShardDataset(manifest, split, batch_size, rank=rank, world=world, num_workers=num_workers,
                           **kwargs)
    context = None
    if num_workers:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "loaders.torch_dataset"])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                         collate_fn=keep_batch, prefetch_factor=4 if num_workers else None,
                                         persistent_workers=False, multiprocessing_context=context)
    return loader, ds
