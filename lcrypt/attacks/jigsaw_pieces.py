"""The pieces of a block puzzle: cutting an image into blocks (under every per-block variant a scheme may
have applied) and putting a grid of them back together. Used by the jigsaw solver
(:mod:`lcrypt.attacks.jigsaw`)."""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.block_variants import block_variants
from lcrypt.schemes.base import block_index

SIDE_OFFSETS = ((0, 1), (1, 0), (0, -1), (-1, 0))
"""(dy, dx) of the neighbour on side r of a piece: right, bottom, left, top; (r + 2) % 4 is the opposite."""


def cut_pieces(image: np.ndarray, block: int, variants: dict[str, bool]) -> tuple[np.ndarray, int]:
    """(nb·V, b, b, 3) float32: every block under every variant (block-major)."""
    h, w, _ = image.shape
    blk = block_index(h, w, block, 3)
    offs, signs = block_variants(block, **variants)
    vals = image.reshape(-1)[blk]                                         # (nb, b·b·3)
    pieces = vals[:, offs] ^ signs[None, :, None]                         # (nb, V, b·b·3)
    return pieces.reshape(-1, block, block, 3).astype(np.float32), len(offs)


def grid_pieces(image: np.ndarray, block: int) -> np.ndarray:
    """(gh·gw, b, b, 3) float32: the blocks of an image in raster order."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    return (image.reshape(gh, block, gw, block, 3).transpose(0, 2, 1, 3, 4)
            .reshape(gh * gw, block, block, 3).astype(np.float32))


def assemble(pieces: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The (gh·b, gw·b, 3) uint8 image of a grid of piece indices."""
    gh, gw = grid.shape
    b = pieces.shape[1]
    return (pieces[grid.ravel()].reshape(gh, gw, b, b, 3).transpose(0, 2, 1, 3, 4)
            .reshape(gh * b, gw * b, 3).astype(np.uint8))
