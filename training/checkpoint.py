"""Training checkpoints: what one holds, how it is saved and loaded, and what ``--resume`` checks.

A checkpoint is data, never code: a dict of tensors and plain types written by ``torch.save`` and read
with ``weights_only=True``, which refuses pickled objects. It holds

* the training state: ``model``, ``optimizer``, ``scheduler`` and ``ema`` state dicts (``ema`` is None
  without ``--ema``), ``loader`` (the data position: epoch, step and sample of the epoch, workers, world
  and batch size), ``global_step`` and ``epochs``;
* what the model was trained on (:func:`run_identity`): ``model_config``, ``scheme``, ``scheme_params``,
  ``scheme_info``, ``key_ids``, ``class_names``, ``image_shape`` and ``dataset``; and ``args``, the run's
  flags.

``training.predict`` needs :data:`MODEL_FIELDS`, ``--resume`` :data:`RESUME_FIELDS`. A run continues
only the same run: :func:`check_resume` refuses a checkpoint of another dataset (keys, scheme, image
shape, classes) or another architecture in one line naming the first field that differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from training.errors import first_line, warn

CHECKPOINT = "checkpoint.pt"
MODEL_FIELDS = ("model", "model_config", "key_ids", "scheme", "scheme_params", "image_shape", "class_names")
RESUME_FIELDS = (*MODEL_FIELDS, "optimizer", "scheduler", "loader", "global_step")
PLAIN_TYPES = (str, int, float, bool, type(None))
NEW_RUN = "or start a new run (without --resume)"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not one training.train wrote, or of another run
    (one-line message)."""


@dataclasses.dataclass
class Position:
    """Where training stands: the epoch, the steps done in it, and the steps done in all."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save of plain types and tensors only (so weights_only=True can load it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Checkpoints are data, never code: weights_only=True refuses pickled objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | os.PathLike, fields: Sequence[str] = MODEL_FIELDS) -> dict[str, Any]:
    """:func:`load_checkpoint`, refusing in one line a missing file or one without ``fields``."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (give a checkpoint.pt written by "
                              "training.train)")
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # torch.load's errors (zip, pickle, weights_only) span many types and lines
        why = first_line(exc)
        if why.startswith("Weights only load failed"):  # torch goes on to suggest weights_only=False: never
            why = ("not a file of tensors and plain types as torch.save writes them (pickled objects are "
                   "never loaded)")
        raise CheckpointError(f"{path} cannot be loaded as a training checkpoint: {why}") from None
    missing = [k for k in fields if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training.train checkpoint (no {', '.join(missing)})")
    return ckpt


def run_identity(manifest, info: dict[str, Any], key_ids: list[str], model_config: dict[str, Any]
                 ) -> dict[str, Any]:
    """What a checkpoint records about the model and the data it was trained on."""
    return {"model_config": model_config, "scheme": manifest.scheme, "scheme_params": manifest.scheme_params,
            "scheme_info": info, "key_ids": key_ids, "class_names": manifest.class_names,
            "image_shape": manifest.image_shape, "dataset": manifest.name}


def checkpoint_state(model: nn.Module, optimizer, scheduler, ema, loader: dict[str, Any], global_step: int,
                     identity: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint of a run at ``loader``'s position (tensors and plain types only)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
            "loader": loader, "global_step": global_step, "epochs": args.epochs, **identity,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, PLAIN_TYPES)}}


def load_resume(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint ``--resume`` continues from (:mod:`training.runs` finds it); refused in one line
    when it cannot be read or lacks the training state."""
    try:
        return read_checkpoint(path, RESUME_FIELDS)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {exc}") from None


def check_same_data(ckpt: dict, path: str, manifest, todo: str = "use a dataset of the same scheme, "
                    "parameters, image shape and classes") -> None:
    """Refuse ``manifest`` unless its scheme, parameters, image shape and classes are the checkpoint's
    (its keys may differ: ``--add-owner`` brings a new one)."""
    data_fields = [("scheme", ckpt["scheme"], manifest.scheme),
                   ("scheme parameters", ckpt["scheme_params"], manifest.scheme_params),
                   ("image shape", list(ckpt["image_shape"]), list(manifest.image_shape)),
                   ("class count", len(ckpt["class_names"]), manifest.num_classes),
                   ("class names", list(ckpt["class_names"]), list(manifest.class_names))]
    for field, theirs, ours in data_fields:
        if theirs != ours:
            raise CheckpointError(f"checkpoint {path} was trained on data with {field} {theirs!r}, but "
                                  f"--data {manifest.name!r} has {ours!r}; {todo}")


def check_resume(ckpt: dict, path: str, manifest, architecture: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint on another dataset or another model: name the first field that
    differs, both values, and what to do."""
    from loaders.dataset import KeyMismatchError, check_key_ids
    from training.models import architecture as arch_of

    try:
        check_key_ids(manifest, ckpt["key_ids"], f"checkpoint {path}")
    except KeyMismatchError as exc:
        raise CheckpointError(str(exc)) from None
    check_same_data(ckpt, path, manifest, f"resume on the dataset the checkpoint was trained on, {NEW_RUN}")
    cfg = dict(ckpt["model_config"])
    try:
        theirs = arch_of(cfg.pop("name"), cfg.pop("adapt", "none"), cfg.pop("adapt_block", None), **cfg)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unusable model_config: {exc}") from None
    for field in ("name", "adapt", *sorted(set(theirs) | set(architecture) - {"name", "adapt"})):
        if theirs.get(field) != architecture.get(field):
            flag = "--model" if field == "name" else f"--{field.replace('_', '-')}"
            want, have = theirs.get(field), architecture.get(field)
            raise CheckpointError(f"checkpoint {path} is a model with {flag} {want}, but this run asks for "
                                  f"{flag} {have}; resume with the checkpoint's {flag} {want}, {NEW_RUN}")


def restore(ckpt: dict, resume: str, model: nn.Module, optimizer, scheduler, ema, world: int,
            batch_size: int) -> Position:
    """Load a checked checkpoint's state into this run's model, optimiser, schedule and EMA; returns
    where to continue. Another world or batch size is allowed: the epoch's remaining samples are
    re-planned (a warning says so)."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"--resume {resume}: the checkpoint does not fit this run's model or "
                              f"optimiser ({first_line(exc)}); resume with the checkpoint's settings, "
                              f"{NEW_RUN}") from None
    pos = ckpt["loader"]
    if pos.get("world") != world or pos.get("batch_size", batch_size) != batch_size:
        warn(f"resuming with world {world} / batch {batch_size} (checkpoint: {pos.get('world')} / "
             f"{pos.get('batch_size')}): the epoch's remaining samples are re-planned")
    return Position(pos["epoch"], pos["step"], ckpt["global_step"])
