"""`blockwise`: the block-wise transform with one key for all blocks that a model can absorb
(AprilPyone & Kiya, IEEE TIFS 2021, "pixel shuffling" and "bit flipping"; Kiya, Iijima, MaungMaung &
Kinoshita, arXiv 2207.05366, Sec. 3, with block scrambling for the ViT).

An H×W RGB image is divided into B×B blocks (B = ``block_size``); each block is a vector x of its
L = 3·B² values, laid out pixel by pixel, colour fastest. With one key for every block:

1. block scrambling (``scramble=true``): the blocks move by a key permutation σ — cipher block q holds
   plain block σ(q) (2207.05366, the ViT's patch order, Sec. 3.2);
2. pixel shuffling: the L values of every block are permuted by one key permutation P (colour
   components included, as in AprilPyone & Kiya's pixel shuffling over M×M×C values);
3. negative-positive: the values at key-selected in-block positions (each with P = 0.5) become 255 − v
   (the 8-bit "bit flipping" of every bit), the diagonal ±1 matrix S in normalised form.

Per block x' = S·P·x, so a linear layer E acting on plain blocks acts on cipher blocks as E' = E·Pᵀ·S
(with normalisation mean = std = 0.5, x̂ = 2x/255 − 1 and 255 − x maps to −x̂; under [0, 1] scaling
the flip also moves the bias: see :mod:`lcrypt.folding`), and σ permutes the ViT's position embedding
rows. That is why steps 2-3 use one key for all blocks, and why P and S are drawn independently of the
image size: a converted ConvMixer then serves any size.

Choices written down: the order is scramble, shuffle, flip (the papers list the steps in that order;
scrambling commutes with the shared in-block steps anyway); the flip positions are those of the
cipher block (S acts after P). Key space ``L! · 2^L`` (× ``N_B!`` with scrambling). Values move across
colour components and pixels, so the image is no longer JPEG-friendly; translation by whole blocks
commutes with the transform only without scrambling.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, Scheme, SchemeInfo, block_index, log2_factorial


@dataclasses.dataclass(frozen=True)
class BlockKey:
    """A block-wise key with one in-block transform shared by every block, for a fixed image shape.

    ``blocks[q]``: the plain block that cipher block q holds (raster order over the block grid);
    ``src[t]``: the plain in-block value that cipher in-block value t holds; ``flip[t]``: whether
    cipher value t is 255 − that value. In-block values are ordered (row, column, colour), as
    :func:`lcrypt.schemes.base.block_index` lays them out.
    """

    block: int
    blocks: np.ndarray
    src: np.ndarray
    flip: np.ndarray

    @property
    def scrambles(self) -> bool:
        return not np.array_equal(self.blocks, np.arange(len(self.blocks)))

    def index_map(self, shape: tuple[int, int, int]) -> IndexMap:
        """The whole-image gather and XOR this key makes (c[t] = p[src[t]] ^ mask[t])."""
        h, w, c = shape
        blk = block_index(h, w, self.block, c)
        if len(blk) != len(self.blocks):
            raise ValueError(f"this key is for {len(self.blocks)} blocks, an {h}x{w} image has {len(blk)}")
        g = np.empty(h * w * c, dtype=np.intp)
        g[blk] = blk[self.blocks][:, self.src]
        mask = np.empty(h * w * c, dtype=np.uint8)
        mask[blk] = np.where(self.flip, 255, 0).astype(np.uint8)[None, :]
        return IndexMap(shape).gather(g).xor(mask)


class Blockwise(Scheme):
    name = "blockwise"
    PARAMS = {"block_size": 16, "scramble": True}

    @property
    def info(self) -> SchemeInfo:
        b, scramble = self.params["block_size"], self.params["scramble"]
        n = 3 * b * b
        return SchemeInfo(
            name=self.name, paper="AprilPyone & Kiya 2021; Kiya et al. 2022 (arXiv 2207.05366)",
            summary=f"{b}x{b} blocks: " + ("scramble, " if scramble else "")
                    + "one shared shuffle of the 3·B² values, negative-positive of key-selected values",
            block_size=b, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: (log2_factorial(n) + n
                                    + (log2_factorial((h // b) * (w // b)) if scramble else 0.0)),
            augmentations=("mixup", "cutmix") if scramble else ("translate", "mixup", "cutmix"), aug_grid=b,
            steps=(("block-scramble",) if scramble else ()) + ("value-shuffle-in-block",
                                                               "value-negative-positive-in-block"),
            key_form="byte-gather-xor",
        )

    def block_key(self, key: Key, shape: tuple[int, int, int]) -> BlockKey:
        """The key's σ, P and S for images of ``shape`` (P and S do not depend on the shape)."""
        h, w, c = shape
        b = self.params["block_size"]
        n = c * b * b
        nb = (h // b) * (w // b)
        blocks = (key.permutation(self.derivation("scramble", shape), nb) if self.params["scramble"]
                  else np.arange(nb, dtype=np.intp))
        src = key.permutation(self.derivation("shuffle", (b, b, c)), n)
        flip = key.bits(self.derivation("negpos", (b, b, c)), n)
        return BlockKey(b, blocks, src, flip)

    def build(self, key: Key, shape: tuple[int, int, int]) -> IndexMap:
        return self.block_key(key, shape).index_map(shape)
