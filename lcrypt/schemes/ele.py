"""`ele`: extended learnable encryption of Madono, Tanaka, Onishi & Ogawa (AAAI-WS 2020), as
described in MaungMaung & Kiya 2022 (Sec. II-A) and Ahmad & Shin: Tanaka's LE "extended by adding a
block scrambling step and utilizing different block keys for the pixel encryption operation".

Steps, block size M (4 by default): (1) scramble the M×M blocks with one key-selected permutation;
then for the block now at each position, (2) split into 2·M²·3 nibbles, (3) reverse key-selected
nibbles and (4) shuffle them, each block with its *own* reversal mask and shuffle; (5) recombine as in
LE. Key space ``N_B! · ((2·M²·3)! · 2^(2·M²·3))^N_B``. Choice written down: per-block keys are keyed by
the block's position after scrambling, so the whole scheme is one nibble gather plus one XOR.
Position-keyed blocks allow no geometric augmentation; mixup and block-aligned CutMix keep alignment.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, Scheme, SchemeInfo, log2_factorial
from lcrypt.schemes.le import nibble_blocks


class ELE(Scheme):
    name = "ele"
    PARAMS = {"block_size": 4}

    @property
    def info(self) -> SchemeInfo:
        m = self.params["block_size"]
        n = 2 * m * m * 3
        return SchemeInfo(
            name=self.name, paper="Madono et al. 2020 (described in MaungMaung & Kiya 2022, Ahmad & Shin)",
            summary=f"LE on {m}x{m} blocks with block scrambling and a different key per block",
            block_size=m, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: log2_factorial((h // m) * (w // m))
            + (h // m) * (w // m) * (log2_factorial(n) + n),
            augmentations=("mixup", "cutmix"), aug_grid=m,
            steps=("block-scramble", "nibble-reversal", "nibble-shuffle"), key_form="nibble-gather-xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        local = nibble_blocks(shape, self.params["block_size"])      # (nb, n) nibble positions
        nb, n = local.shape
        m = IndexMap(shape, nibbles=True)
        g = np.empty(m.size, dtype=np.intp)
        g[local] = local[key.permutation(self.derivation("scramble", shape), nb)]           # step 1
        m.gather(g.copy())
        mask = np.zeros(m.size, dtype=np.uint8)
        mask[local] = key.bits(self.derivation("reverse", shape), nb * n).reshape(nb, n) * np.uint8(15)
        m.xor(mask)                                                                         # step 3
        shuffles = np.argsort(key.uint64(self.derivation("shuffle", shape), nb * n).reshape(nb, n),
                              axis=1, kind="stable")
        g[local] = np.take_along_axis(local, shuffles, axis=1)                              # step 4
        return m.gather(g)
