"""`le`: Tanaka's learnable image encryption (ICCE-TW 2018, Sec. III).

Steps for an 8-bit RGB image, block size M (M = 4 in the paper):

1. divide the image into M×M blocks;
2. split each block into its upper 4-bit and lower 4-bit images: a 6-channel block of
   2·M²·3 = 96 nibbles;
3. reverse the intensities (v → 15 − v, i.e. v ⊕ 15) at key-selected nibble positions;
4. shuffle the 96 nibbles with one key-selected permutation;
5. restore an ordinary image: the first M²·3 shuffled nibbles become the upper halves and the rest
   the lower halves of the block's bytes (as the author's public code does), so the ciphertext is a
   plain 3-channel uint8 image of the same size.

The reversal mask and the shuffle are shared by every block and every image (Sirichotedumrong et
al. 2019, Sec. 3.4: "the pixels in each block are shuffled with the same pattern"). Key space, their
eq. (5): ``96! · 2^96`` for M = 4, in general ``(2·M²·3)! · 2^(2·M²·3)``. Nibble order inside a
block: all upper nibbles (pixel-major, channel fastest), then all lower nibbles — a labelling choice
that only renames key positions. Because every block is transformed alike, whole-block moves
(translate or flip the block grid) keep the key's pattern aligned; moves inside a block do not.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, Scheme, SchemeInfo, block_index, log2_factorial


def nibble_blocks(shape: tuple[int, int, int], block: int) -> np.ndarray:
    """Nibble positions of each block, (num_blocks, 2·M²·C): upper nibbles, then lower nibbles."""
    h, w, c = shape
    blk = block_index(h, w, block, c)
    return np.concatenate([blk, h * w * c + blk], axis=1)


class LE(Scheme):
    name = "le"
    PARAMS = {"block_size": 4}

    @property
    def info(self) -> SchemeInfo:
        m = self.params["block_size"]
        n = 2 * m * m * 3
        return SchemeInfo(
            name=self.name, paper="Tanaka 2018, Sec. III; key space per Sirichotedumrong 2019 eq. (5)",
            summary=f"{m}x{m} blocks, {n} nibbles: key-selected reversal + one shared shuffle",
            block_size=m, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: log2_factorial(n) + n,
            augmentations=("hflip", "vflip", "translate", "mixup", "cutmix"), aug_grid=m,
            steps=("nibble-reversal", "nibble-shuffle"), key_form="nibble-gather-xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        local = nibble_blocks(shape, self.params["block_size"])      # steps 1-2
        n = local.shape[1]
        reverse = key.bits(self.derivation("reverse", shape), n).astype(np.uint8) * 15
        shuffle = key.permutation(self.derivation("shuffle", shape), n)
        m = IndexMap(shape, nibbles=True)
        mask = np.zeros(m.size, dtype=np.uint8)
        mask[local] = reverse                                         # step 3 (same in every block)
        g = np.empty(m.size, dtype=np.intp)
        g[local] = local[:, shuffle]                                  # step 4 (same in every block)
        return m.xor(mask).gather(g)                                  # step 5 happens on output
