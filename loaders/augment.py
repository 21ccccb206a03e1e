"""Encrypted-domain normalisation and augmentation on batches, wherever the model runs (CPU or GPU).

The server never sees plain images, so augmentation happens on ciphertexts (Sirichotedumrong et al.
2019, sec. 3.4). An operation is allowed only if it keeps the key's pattern aligned, which each scheme
declares in its :class:`lcrypt.schemes.base.SchemeInfo` (``augmentations`` and ``aug_grid``, copied into
the manifest as ``scheme_info``): this module reads those two fields and keeps no table of schemes.

* ``hflip`` / ``vflip`` / ``translate`` move whole cells of ``aug_grid`` pixels: with grid 1 (pixel-wise
  schemes such as PE) they are the usual pixel flips and random-crop shifts; with a block grid M they
  reverse / shift the order of M×M blocks and leave each block's content untouched;
* ``mixup`` / ``cutmix`` are timm's :class:`timm.data.Mixup`, with CutMix boxes snapped to the grid so a
  pasted region is made of whole blocks.

Normalisation is ``(2p - 255) / 255`` = ``p / 127.5 - 1`` (mean 0.5, std 0.5 on every channel): Tanaka/EtC's
negative-positive transform ``255 - p`` then becomes exactly ``-x`` (EtC paper, eq. 7), and the zero
padding of shifted images is that transform's fixed point.

Randomness comes from an explicit ``torch.Generator`` (per step, seeded by the caller), so a resumed run
draws the same augmentations it would have drawn.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch


def normalize(images: torch.Tensor, channels_last: bool = False, dtype: torch.dtype = torch.float32
              ) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (mean 0.5, std 0.5 per channel)."""
    # (2p - 255) / 255: the integer part is exact, so 255 - p maps to exactly -x (one rounding, symmetric)
    x = images.permute(0, 3, 1, 2).to(dtype).mul_(2.0).sub_(255.0).div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _cells(x: torch.Tensor, grid: int) -> torch.Tensor:
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not a multiple of the augmentation grid {grid}")
    return x.reshape(b, c, h // grid, grid, w // grid, grid)


def grid_flip(x: torch.Tensor, grid: int, dim: str, p: float, gen: torch.Generator | None) -> torch.Tensor:
    """Flip the order of ``grid``-sized cells along width ('h') or height ('v') with probability p."""
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    cells = _cells(x, grid)
    flipped = cells.flip(4 if dim == "h" else 2).reshape(x.shape)
    return torch.where(mask[:, None, None, None], flipped, x)


def grid_translate(x: torch.Tensor, grid: int, max_shift: int, gen: torch.Generator | None) -> torch.Tensor:
    """Shift each image by a random whole number of cells in [-k, k] per axis, zero (mid-grey) fill.

    ``max_shift`` is in pixels and rounded up to whole cells (at least one cell): the classic CIFAR
    pad-4-and-crop for pixel schemes, a one-block shift for 4×4 block schemes.
    """
    b, c, h, w = x.shape
    k = max(1, -(-max_shift // grid))
    pad = k * grid
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(-k, k + 1, (b,), generator=gen, device=x.device) * grid
    dx = torch.randint(-k, k + 1, (b,), generator=gen, device=x.device) * grid
    rows = (pad + dy)[:, None] + torch.arange(h, device=x.device)[None]
    cols = (pad + dx)[:, None] + torch.arange(w, device=x.device)[None]
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last
                                              if x.is_contiguous(memory_format=torch.channels_last)
                                              and not x.is_contiguous() else torch.contiguous_format)


def _grid_mixup_class():
    from timm.data import Mixup
    from timm.data.mixup import cutmix_bbox_and_lam

    class GridMixup(Mixup):
        """timm's Mixup/CutMix (batch mode) with CutMix boxes snapped to ``grid``-pixel cells."""

        def __init__(self, grid: int = 1, **kwargs: Any):
            super().__init__(**kwargs)
            self.grid = int(grid)

        def _mix_batch(self, x):
            lam, use_cutmix = self._params_per_batch()
            if lam == 1.0:
                return 1.0
            if use_cutmix:
                (yl, yh, xl, xh), _ = cutmix_bbox_and_lam(x.shape, lam, ratio_minmax=self.cutmix_minmax,
                                                         correct_lam=self.correct_lam)
                g, (h, w) = self.grid, x.shape[-2:]
                yl, yh, xl, xh = (int(round(v / g)) * g for v in (yl, yh, xl, xh))
                yh, xh = min(yh, h), min(xh, w)
                if yh > yl and xh > xl:
                    x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
                lam = 1.0 - max(0, yh - yl) * max(0, xh - xl) / float(h * w)
            else:
                x_flipped = x.flip(0).mul_(1.0 - lam)
                x.mul_(lam).add_(x_flipped)
            return lam

    return GridMixup


@dataclasses.dataclass
class AugmentConfig:
    flips: bool = True  # hflip (and vflip only when asked: natural images are rarely upside down)
    vflip: bool = False
    translate: int = 4  # pixels; rounded up to whole cells
    mixup: float = 0.0  # alpha; 0 = off
    cutmix: float = 0.0  # alpha; 0 = off
    mix_prob: float = 1.0
    label_smoothing: float = 0.0


class EncryptedAugment:
    """Augment a normalised batch with what the scheme allows; returns (x, soft targets)."""

    def __init__(self, scheme_info: Mapping[str, Any], num_classes: int, config: AugmentConfig | None = None):
        cfg = config or AugmentConfig()
        allowed = set(scheme_info.get("augmentations", ()))
        self.grid = int(scheme_info.get("aug_grid", 1) or 1)
        self.num_classes = num_classes
        self.label_smoothing = cfg.label_smoothing
        self.hflip = cfg.flips and "hflip" in allowed
        self.vflip = cfg.flips and cfg.vflip and "vflip" in allowed
        self.translate = cfg.translate if "translate" in allowed else 0
        mixup = cfg.mixup if "mixup" in allowed else 0.0
        cutmix = cfg.cutmix if "cutmix" in allowed else 0.0
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = _grid_mixup_class()(grid=self.grid, mixup_alpha=mixup, cutmix_alpha=cutmix,
                                             prob=cfg.mix_prob, label_smoothing=cfg.label_smoothing,
                                             num_classes=num_classes)

    def describe(self) -> list[str]:
        ops = [n for n, on in (("hflip", self.hflip), ("vflip", self.vflip)) if on]
        if self.translate:
            ops.append(f"translate±{max(1, -(-self.translate // self.grid)) * self.grid}px")
        if self.mixup is not None:
            ops.append(f"mixup{self.mixup.mixup_alpha:g}/cutmix{self.mixup.cutmix_alpha:g}")
        return [f"{o} (grid {self.grid})" for o in ops]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None,
                 np_seed: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hflip:
            x = grid_flip(x, self.grid, "h", 0.5, gen)
        if self.vflip:
            x = grid_flip(x, self.grid, "v", 0.5, gen)
        if self.translate:
            x = grid_translate(x, self.grid, self.translate, gen)
        if self.mixup is not None and x.shape[0] % 2 == 0:
            if np_seed is not None:  # timm draws lam from numpy's global generator: pin it per step
                np.random.seed(np.random.SeedSequence(list(np_seed)).generate_state(1)[0])
            return self.mixup(x, y)
        from timm.data.mixup import one_hot

        return x, one_hot(y, self.num_classes, on_value=1.0 - self.label_smoothing
                          + self.label_smoothing / self.num_classes,
                          off_value=self.label_smoothing / self.num_classes)
