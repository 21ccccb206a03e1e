"""Adaptation networks put in front of a backbone to undo the structure a cipher imposes.

* :class:`PEAdaptation` — Sirichotedumrong et al. 2019, sec. 3.5 and Fig. 5: pixel-wise encryption
  (negative-positive per pixel, optional colour shuffle) gives each pixel one of 48 patterns, so the
  network only needs a per-pixel map: 1×1 convolutions with M1 = 8 and M2 = 32 feature maps (the paper's
  settings, sec. 4), each followed by batch norm and ReLU, then a 1×1 convolution back to 3 channels so
  any backbone follows unchanged. A 1×1 kernel also keeps it exact under pixel-grid augmentation.
* :class:`BlockAdaptation` — Tanaka 2018, sec. III: an M×M convolution with stride M sees exactly one
  encrypted block (its pixel shuffle and nibble flips are the same in every block), network-in-network
  style 1×1 layers mix its features, and a sub-pixel convolution (Shi et al. 2016: 1×1 conv to 3·M²
  channels + PixelShuffle(M)) restores the original resolution for any backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class PEAdaptation(nn.Module):
    def __init__(self, in_chans: int = 3, m1: int = 8, m2: int = 32, out_chans: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, m1, 1, bias=False), nn.BatchNorm2d(m1), nn.ReLU(inplace=True),
            nn.Conv2d(m1, m2, 1, bias=False), nn.BatchNorm2d(m2), nn.ReLU(inplace=True),
            nn.Conv2d(m2, out_chans, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BlockAdaptation(nn.Module):
    def __init__(self, block_size: int = 4, in_chans: int = 3, width: int | None = None, nin_layers: int = 2,
                 out_chans: int = 3):
        super().__init__()
        m = int(block_size)
        width = width or max(64, 4 * in_chans * m * m)
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, m, stride=m, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        for _ in range(nin_layers):
            layers += [nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(width, out_chans * m * m, 1), nn.PixelShuffle(m)]
        self.block_size = m
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Adapted(nn.Module):
    """``adapter`` then ``backbone``; keeps timm's ``num_classes`` visible for callers."""

    def __init__(self, adapter: nn.Module, backbone: nn.Module):
        super().__init__()
        self.adapter, self.backbone = adapter, backbone
        self.num_classes = getattr(backbone, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))
