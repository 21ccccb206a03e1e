"""`block-shuffle`: Tanaka 2018's "naive block-wise pixel shuffle" baseline (Table 1, Fig. 2).

The image is divided into M×M blocks (M = 4, as for LE) and the M² pixels of every block are
rearranged by one key-selected permutation shared by all blocks and images; each pixel keeps its
RGB triple and value. Tanaka shows it trains as well as plain images (0.872 vs 0.884 on CIFAR-10) but
object boundaries stay visible — it is a baseline, not a protection. Key space ``(M²)!``.
Choice written down: pixels move as whole RGB triples (a *pixel* shuffle), not channel by channel.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, Scheme, SchemeInfo, block_index, log2_factorial


class BlockShuffle(Scheme):
    name = "block-shuffle"
    PARAMS = {"block_size": 4}

    @property
    def info(self) -> SchemeInfo:
        m = self.params["block_size"]
        return SchemeInfo(
            name=self.name, paper="Tanaka 2018, naive baseline (Table 1)",
            summary=f"one shared shuffle of the pixels inside every {m}x{m} block",
            block_size=m, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: log2_factorial(m * m),
            augmentations=("hflip", "vflip", "translate", "mixup", "cutmix"), aug_grid=m,
            steps=("pixel-shuffle-in-block",), key_form="byte-gather-xor",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        h, w, c = shape
        m = self.params["block_size"]
        blk = block_index(h, w, m, c)
        pix = key.permutation(self.derivation("shuffle", shape), m * m)
        offsets = (pix[:, None] * c + np.arange(c)).ravel()
        g = np.empty(h * w * c, dtype=np.intp)
        g[blk] = blk[:, offsets]
        return IndexMap(shape).gather(g)
