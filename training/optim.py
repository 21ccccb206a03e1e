"""The optimiser, its per-step learning-rate schedule and the EMA of the weights.

The schedule is a function of the global step (:func:`lr_factor`), stepped once per batch, so a resumed
run, which restores the step, continues the same curve.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total``."""
    t = step / max(1, total)
    if kind == "triangular":  # ConvMixer paper: 0 -> peak at 2/5, -> peak/20 at 4/5, -> 0
        pts = [(0.0, 0.0), (0.4, 1.0), (0.8, 0.05), (1.0, 0.0)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if t <= x1:
                return y0 + (y1 - y0) * (t - x0) / (x1 - x0)
        return 0.0
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def create_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD, with no weight decay on biases and norm weights (timm's groups)."""
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(model, args.weight_decay)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)


def create_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int
                     ) -> torch.optim.lr_scheduler.LambdaLR:
    """``--sched`` over ``--epochs`` of ``steps_per_epoch`` steps, ``--warmup-epochs`` of them warm-up."""
    total = steps_per_epoch * args.epochs
    warmup = int(args.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(args.sched, s, total, warmup))


def create_ema(model: nn.Module, args: argparse.Namespace):
    """timm's ModelEmaV2 of ``model`` with decay ``--ema``, or None when ``--ema`` is 0."""
    if args.ema <= 0:
        return None
    from timm.utils import ModelEmaV2

    return ModelEmaV2(model, decay=args.ema)
