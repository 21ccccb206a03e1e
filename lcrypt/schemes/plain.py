"""`plain`: the identity, so baselines run through exactly the same code path as encrypted data."""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import AUGMENTATIONS, JPEG_MCU, Scheme, SchemeInfo


class _Identity:
    @staticmethod
    def forward(x: np.ndarray) -> np.ndarray:
        return x.copy()

    inverse = forward


class Plain(Scheme):
    name = "plain"

    @property
    def info(self) -> SchemeInfo:
        return SchemeInfo(
            name=self.name, paper="-", summary="identity (no encryption), for baselines",
            block_size=None, invertible=True, lossless=True, jpeg_subsamplings=tuple(JPEG_MCU),
            key_space=lambda h, w: 0.0, augmentations=AUGMENTATIONS, aug_grid=1,
            steps=(), key_form="xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> _Identity:
        return _Identity()
