"""The CPU warning: when the first steps say an epoch will take more than :data:`EPOCH_BUDGET_S`, say how
long, and which smaller ConvMixer fits.

A training step on a CPU can be thousands of times slower than on a GPU (the paper's ConvMixer-256/8 with
patch 1 on CIFAR-10: hours per epoch on 2 cores), and nothing else would tell the user before the first
epoch ends. The first step warms up; the next :data:`TIMED_STEPS` are timed and extrapolated to the
epoch. A smaller configuration's epoch is that time scaled by its forward FLOPs over the run's model's
(counted by ``torch.utils.flop_counter`` on a meta-device copy, so nothing is computed): an estimate,
since FLOPs are not time, which is why the rung picked must fit with room to spare.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch import nn

from training.errors import warn

EPOCH_BUDGET_S = 600.0
WARMUP_STEPS, TIMED_STEPS = 1, 5
FIT_MARGIN = 0.8  # a suggested configuration's estimate must fit within this share of the budget
# (width, depth, tokens per image side, kernel), largest first: the paper's CIFAR-10 ConvMixer-256/8
# (patch 1 on 32 px) down to the CPU accuracy check's ConvMixer-64/4 (patch 2) and below
LADDER = ((256, 8, 32, 9), (256, 8, 16, 9), (256, 8, 16, 5), (128, 8, 16, 5), (128, 4, 16, 5),
          (64, 4, 16, 3), (64, 4, 8, 3), (32, 4, 8, 3))


def forward_flops(build: Callable[[], nn.Module], image_size: int) -> float:
    """FLOPs of one forward pass of one image through ``build()``'s model, built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        x = torch.zeros(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def ladder(image_size: int) -> list[dict[str, int]]:
    """:data:`LADDER`'s ConvMixer options for this image size (the patch from the tokens per side)."""
    out = []
    for width, depth, tokens, kernel in LADDER:
        patch = max(1, image_size // tokens)
        option = {"width": width, "depth": depth, "patch": patch, "kernel": kernel}
        if image_size % patch == 0 and option not in out:
            out.append(option)
    return out


def minutes(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def suggestion(epoch_s: float, current: float, candidates: list[tuple[str, float]]) -> str:
    """The largest candidate (flags, forward FLOPs) whose scaled epoch fits, in words."""
    budget = minutes(EPOCH_BUDGET_S)
    scaled = [(flags, epoch_s * flops / current) for flags, flops in candidates if flops < current]
    for flags, seconds in scaled:
        if seconds <= FIT_MARGIN * EPOCH_BUDGET_S:
            return (f"a smaller configuration that fits in {budget}: {flags} (about {minutes(seconds)} per "
                    "epoch, scaled by its FLOPs), or a GPU")
    if scaled:
        flags, seconds = scaled[-1]
        return (f"not even the smallest ConvMixer tried fits in {budget} ({flags}: about {minutes(seconds)} "
                "per epoch); train on a GPU")
    return "the model is already smaller than every ConvMixer tried; train on a GPU"


class EpochEstimate:
    """Call :meth:`after_step` after each step a process takes; it warns once, through ``report``, when
    the epoch of ``steps_per_epoch`` steps will take longer than :data:`EPOCH_BUDGET_S`.

    ``build_current()`` builds the run's model, ``build_convmixer(**options)`` a ConvMixer of the same
    classes, image size and adaptation network; both only when the warning is given.
    """

    def __init__(self, steps_per_epoch: int, image_size: int, build_current: Callable[[], nn.Module],
                 build_convmixer: Callable[..., nn.Module], prefix: str, report: Callable[[str], None],
                 clock: Callable[[], float] = time.perf_counter):
        self.steps, self.image_size, self.report, self.clock = steps_per_epoch, image_size, report, clock
        self.build_current, self.build_convmixer, self.prefix = build_current, build_convmixer, prefix
        self.started: float | None = None
        self.done = False

    def after_step(self, steps_taken: int) -> None:
        """``steps_taken``: the steps this process took so far in this session."""
        if self.done:
            return
        if steps_taken == WARMUP_STEPS:
            self.started = self.clock()
            return
        last = min(WARMUP_STEPS + TIMED_STEPS, self.steps)
        if steps_taken < last or self.started is None:
            return
        self.done = True
        per_step = (self.clock() - self.started) / (steps_taken - WARMUP_STEPS)
        epoch_s = per_step * self.steps
        if epoch_s > EPOCH_BUDGET_S:
            self.report(f"one epoch will take about {minutes(epoch_s)} on this CPU ({self.steps} steps of "
                        f"{per_step:.2f} s, timed over steps {WARMUP_STEPS + 1}-{steps_taken}); "
                        f"{self.suggest(epoch_s)}")

    def suggest(self, epoch_s: float) -> str:
        try:
            current = forward_flops(self.build_current, self.image_size)
            candidates = []
            for options in ladder(self.image_size):
                flags = self.prefix + " ".join(f"--{k} {v}" for k, v in options.items())
                candidates.append((flags, forward_flops(lambda: self.build_convmixer(**options),
                                                        self.image_size)))
        except Exception as exc:  # a model that cannot be built or run on the meta device
            return f"no smaller configuration could be estimated ({type(exc).__name__}); consider a GPU"
        return suggestion(epoch_s, current, candidates)


def cpu_estimate(args: argparse.Namespace, identity: dict[str, Any], steps_per_epoch: int,
                 options: dict[str, Any]) -> EpochEstimate:
    """The estimate for this run's model (``options``: its model options) and data."""
    from training.models import create_model

    classes, size = len(identity["class_names"]), identity["image_shape"][0]
    block = identity["scheme_info"].get("block_size")

    def build(name: str, **options: Any) -> nn.Module:
        return create_model(name, classes, size, block, adapt=args.adapt, adapt_block=args.adapt_block,
                            **options)

    prefix = "" if args.model == "convmixer" else "--model convmixer "
    return EpochEstimate(steps_per_epoch, size, lambda: build(args.model, **options),
                         lambda **kw: build("convmixer", **kw), prefix, warn)
