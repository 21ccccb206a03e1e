"""`etc`: Encryption-then-Compression images (Chuman, Sirichotedumrong & Kiya 2019), as used by
MaungMaung & Kiya 2022 with isotropic networks (Sec. II-B, Fig. 2).

An X×Y RGB image is divided into non-overlapping B×B blocks (B = 16 by default), then:

1. block scrambling: permute the blocks with key K1;
2. block rotation and inversion: each block takes one of the 8 symmetries of the square (4 rotations
   × optional flip; all eight, unlike a public port that draws four) with key K2;
3. block negative-positive transform, eq. (1): ``p' = p ⊕ (2^L − 1)`` on every pixel of the block when
   ``r(i) = 1`` (P = 0.5), one bit per block shared by the three colour components (K3);
4. colour shuffle per block: one of the 6 permutations of (R, G, B) (K4) — a true permutation, not
   the in-place swap of some ports that duplicates a channel.

Steps 2-4 are keyed by the block's position after scrambling. All four steps are a fixed
rearrangement of bytes plus an XOR, so they run as one gather and one XOR per batch. Key space
``N_B! · 8^N_B · 2^N_B · 6^N_B`` for N_B blocks. JPEG: the image stays compressible because every
step keeps pixels inside their block; it is JPEG-compatible when B is a multiple of the MCU
(8 for 4:4:4, 16 for 4:2:0 and 4:2:2). Normalised with mean = std = 0.5, step 3 is an exact sign
flip (the paper's eq. 7). Server-side geometric augmentation would move blocks away from their
position-keyed transforms, so only mixup and (block-aligned) CutMix are declared.
"""

from __future__ import annotations

import math

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import (COLOR_PERMUTATIONS, IndexMap, Scheme, SchemeInfo, block_index,
                                 dihedral_maps, jpeg_subsamplings_for, log2_factorial)


class EtC(Scheme):
    name = "etc"
    PARAMS = {"block_size": 16}

    @property
    def info(self) -> SchemeInfo:
        b = self.params["block_size"]
        per_block = math.log2(8) + 1 + math.log2(6)
        return SchemeInfo(
            name=self.name, paper="MaungMaung & Kiya 2022 Sec. II-B; Chuman et al. 2019",
            summary=f"{b}x{b} blocks: scramble, rotate/flip (8), negative-positive, colour shuffle (6)",
            block_size=b, invertible=True, lossless=True, jpeg_subsamplings=jpeg_subsamplings_for(b),
            key_space=lambda h, w: log2_factorial((h // b) * (w // b)) + (h // b) * (w // b) * per_block,
            augmentations=("mixup", "cutmix"), aug_grid=b,
            steps=("block-scramble", "block-rotation", "block-negative-positive", "block-colour-shuffle"),
            key_form="block-variants",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        h, w, c = shape
        b = self.params["block_size"]
        blk = block_index(h, w, b, c)
        nb = blk.shape[0]
        m = IndexMap(shape)
        g = np.empty(h * w * c, dtype=np.intp)

        g[blk] = blk[key.permutation(self.derivation("K1-scramble", shape), nb)]            # step 1
        m.gather(g.copy())

        variant = key.integers(self.derivation("K2-rotate-invert", shape), nb, 8)           # step 2
        pix = dihedral_maps(b)[variant]                                                     # (nb, b*b)
        g[blk] = np.take_along_axis(blk, (pix[:, :, None] * c + np.arange(c)).reshape(nb, -1), axis=1)
        m.gather(g.copy())

        negpos = key.bits(self.derivation("K3-negpos", shape), nb).astype(np.uint8) * 255   # step 3
        mask = np.empty(h * w * c, dtype=np.uint8)
        mask[blk] = negpos[:, None]
        m.xor(mask)

        perm = COLOR_PERMUTATIONS[key.integers(self.derivation("K4-color", shape), nb, 6)]  # step 4
        offs = (np.arange(b * b)[None, :, None] * c + perm[:, None, :]).reshape(nb, -1)
        g[blk] = np.take_along_axis(blk, offs, axis=1)
        return m.gather(g)
