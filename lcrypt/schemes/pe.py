"""`pe`: pixel-based encryption of Sirichotedumrong, Maekawa, Kinoshita & Kiya (ICIP 2019).

Steps (Sec. 3.2, Fig. 3), on an X×Y RGB image with n = X·Y pixels:

1. divide the image into pixels;
2. negative-positive transform of every pixel of every colour channel, eq. (1):
   ``p' = p`` if ``r(i) = 0`` else ``p ⊕ (2^L − 1)``, with ``P(r(i)) = 0.5`` and L = 8;
3. (optional, ``color_shuffle=true``) shuffle the three colour components of each pixel with an
   integer in 0..5 drawn per pixel, read through Table 1 (output channel c takes input ``perm[c]``).

Key space, eq. (2)-(4): ``N(n) = 2^{3n} · 6^n`` with the colour shuffle, ``2^{3n}`` without.

Choices written down: one key for the whole dataset (the augmentation paper's setting, so the same
r(i) and shuffle apply at a position in every image; the IEEE Access paper's per-image keys are not
used). Server-side flips and translations keep the scheme learnable (Sec. 3.3, Tables 2-3), so they
are declared as allowed, at pixel granularity.
"""

from __future__ import annotations

import math

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import AUGMENTATIONS, COLOR_PERMUTATIONS, IndexMap, Scheme, SchemeInfo


class PE(Scheme):
    name = "pe"
    PARAMS = {"color_shuffle": False}

    @property
    def info(self) -> SchemeInfo:
        shuffle = self.params["color_shuffle"]
        return SchemeInfo(
            name=self.name, paper="Sirichotedumrong et al. 2019, eq. (1)-(4), Table 1",
            summary="per-pixel per-channel negative-positive (P=0.5)"
                    + (" + per-pixel colour shuffle" if shuffle else ""),
            block_size=None, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: h * w * (3 + (math.log2(6) if shuffle else 0.0)),
            augmentations=AUGMENTATIONS, aug_grid=1,
            steps=("pixel-negative-positive",) + (("pixel-colour-shuffle",) if shuffle else ()),
            key_form="pixel-colour-xor" if shuffle else "xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        h, w, c = shape
        n = h * w
        m = IndexMap(shape)
        m.xor(key.bits(self.derivation("negpos", shape), n * c).astype(np.uint8) * 255)   # step 2
        if self.params["color_shuffle"]:                                                 # step 3
            choice = key.integers(self.derivation("color", shape), n, 6)
            m.gather((np.arange(n)[:, None] * c + COLOR_PERMUTATIONS[choice]).ravel())
        return m
