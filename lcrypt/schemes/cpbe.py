"""`cpbe`: chaotic pixel-based encryption of Ahmad & Shin (2022, arXiv:2203.16780), as described in
their learnable pixel-based encryption paper (Sec. II-III).

CPBE replaces PBE's negative-positive ``p ⊕ 255`` by ``p ⊕ s_i`` with ``s_i`` the logistic-map
keystream of eq. (1) and (3) (see :mod:`lcrypt.schemes.chaos`): in eq. (4)'s notation,
``c = p`` for ``k_i = 0`` and ``c = p ⊕ s_i`` for ``k_i = 1``, where ``k`` is a uniformly distributed
binary key over the pixel values. ``ratio=0.5`` encrypts the key-selected half ("CPBE 50%");
``ratio=1.0`` encrypts every value ("CPBE 100%"). Each value of each colour channel is one "pixel".
Ahmad & Shin note the weakness we keep on purpose: encrypting a blank (zero) image reveals
``k_i · s_i``, i.e. the whole key (chosen-plaintext attack). Key space counted as μ and d_0
(2 × 52 mantissa bits) plus the binary key (3n bits) when ratio = 0.5. Position-specific XOR values
mean geometric augmentations misalign the key; mixup and CutMix keep it aligned.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, Scheme, SchemeInfo
from lcrypt.schemes.chaos import logistic_keystream

CHAOS_KEY_BITS = 2 * 52


class CPBE(Scheme):
    name = "cpbe"
    PARAMS = {"ratio": 0.5}
    ALLOWED = {"ratio": (0.5, 1.0)}

    @property
    def info(self) -> SchemeInfo:
        ratio = self.params["ratio"]
        return SchemeInfo(
            name=self.name, paper="Ahmad & Shin 2022 (CPBE), as described in their eq. (1), (3), (4)",
            summary=f"logistic-map keystream XOR on {ratio:.0%} of the pixel values (key-selected)",
            block_size=None, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: CHAOS_KEY_BITS + (3 * h * w if ratio < 1 else 0),
            augmentations=("mixup", "cutmix"), aug_grid=1,
            steps=("keystream-xor",), key_form="xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        n = int(np.prod(shape))
        s = logistic_keystream(key, self.derivation("logistic", shape), n)
        k = key.bits(self.derivation("select", shape), n, p=self.params["ratio"])
        return IndexMap(shape).xor(np.where(k, s, 0))
