"""A training run's data: the dataset checked before ``--out`` is touched, then its loaders.

Checked up front, on every rank: the manifest, the splits the run reads, enough samples for one batch
per process, and every shard of those splits present with its manifest byte size (one stat each). What
only reading finds (a short, altered or foreign shard) stops the rank that reads it, naming the shard.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from lcrypt.format import ShardFormatError
from training.args import splits_read
from training.distributed import Process
from training.errors import TrainError

READ_ERRORS = (ShardFormatError, OSError)  # a damaged or vanished shard (also re-raised by a worker)


class Loaders(NamedTuple):
    """Batches of the training split and of the test split (None with ``--test-split none``), each with
    its dataset (``set_epoch``, ``state_dict``), and this rank's steps per epoch (equal on every rank)."""

    train: Any
    train_ds: Any
    test: Any
    test_ds: Any
    steps_per_epoch: int


def open_dataset(args: argparse.Namespace, world: int):
    """``(manifest, base folder)`` of ``--data``, with the splits this run reads and enough samples."""
    from lcrypt.format import ManifestError
    from loaders.dataset import load_manifest
    from loaders.plan import kept_per_rank

    try:
        manifest, base = load_manifest(args.data)
    except (ManifestError, OSError, ValueError) as exc:
        raise TrainError(f"cannot read the dataset --data {args.data}: {exc}") from None
    for split in splits_read(args):
        if split not in manifest.splits or not manifest.shards_for(split):
            raise TrainError(f"the dataset {args.data} has no split {split!r} (splits: "
                             f"{', '.join(manifest.splits) or 'none'}); choose one with --train-split / "
                             "--test-split ('none' skips evaluation)")
    n = manifest.num_samples(args.train_split)
    if kept_per_rank(n, world, args.batch_size) == 0:
        raise TrainError(f"{n} training samples give no batch of {args.batch_size} per process on {world} "
                         "processes; lower --batch-size")
    return manifest, base


def scheme_info(manifest) -> dict[str, Any]:
    """The scheme's properties (block size, allowed augmentations) as the manifest records them."""
    return manifest.scheme_info or manifest.scheme_object().info.as_dict(*manifest.image_shape[:2])


def shard_problem(manifest, base: str, splits: list[str]) -> str | None:
    """The first problem :func:`loaders.dataset.check_shards` finds (with how many more), or None."""
    from loaders.dataset import check_shards

    problems = check_shards(manifest, base, splits)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more shard problems)" if len(problems) > 1 else ""
    return problems[0] + more


def create_loaders(args: argparse.Namespace, proc: Process, key_ids: list[str], owner: str | None = None
                   ) -> Loaders:
    """Streaming loaders planned per rank, or with ``--gpu-resident`` the splits held on the device;
    ``owner``: that owner's shards only (``--owners NAME``)."""
    from loaders.gpu import GPUResident
    from loaders.torch_dataset import make_loader

    rank, world, device = proc.rank, proc.world, proc.device
    test = None
    if args.gpu_resident:
        train = GPUResident.from_manifest(args.data, args.train_split, args.batch_size, device=device,
                                          rank=rank, world=world, seed=args.seed, expect_key_ids=key_ids,
                                          owner=owner)
        if args.test_split != "none":
            test = GPUResident.from_manifest(args.data, args.test_split, 1024, device=device, rank=rank,
                                             world=world, shuffle=False, drop_last=False, cover_all=True,
                                             owner=owner)
        return Loaders(train, train, test, test, len(train))
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    common = dict(rank=rank, world=world, num_workers=workers, pin_memory=device.type == "cuda",
                  verify_sha256=args.verify_sha256, expect_key_ids=key_ids, owner=owner)
    train_loader, train_ds = make_loader(args.data, args.train_split, args.batch_size, seed=args.seed,
                                         buffer=args.shuffle_buffer, **common)
    test_loader = test_ds = None
    if args.test_split != "none":
        test_loader, test_ds = make_loader(args.data, args.test_split, max(256, args.batch_size),
                                           shuffle=False, drop_last=False, cover_all=True, **common)
    return Loaders(train_loader, train_ds, test_loader, test_ds, len(train_ds))
