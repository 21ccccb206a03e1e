"""The per-block variants a block scheme may apply (rotation/flip × sign × colour order), shared by the
one-pair block recovery (:mod:`lcrypt.attacks.known_plaintext`) and the jigsaw solver."""

from __future__ import annotations

import numpy as np

from lcrypt.schemes.base import COLOR_PERMUTATIONS, SchemeInfo, dihedral_maps


def variant_flags(info: SchemeInfo) -> dict[str, bool]:
    """Which per-block variants a scheme's declared steps include, as :func:`block_variants` takes them."""
    return {"rotations": "block-rotation" in info.steps, "negpos": "block-negative-positive" in info.steps,
            "colors": "block-colour-shuffle" in info.steps}


def block_variants(block: int, rotations: bool = True, negpos: bool = True,
                   colors: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Byte gathers + XORs of every per-block variant: returns (V, b·b·3) offsets and (V,) sign masks.

    Variant 0 is the identity; the order is rotation/flip, then colour order, then sign.
    """
    pix = dihedral_maps(block) if rotations else np.arange(block * block)[None]
    perms = COLOR_PERMUTATIONS if colors else COLOR_PERMUTATIONS[:1]
    signs = (0, 255) if negpos else (0,)
    offs, masks = [], []
    for d in pix:
        for perm in perms:
            for s in signs:
                offs.append((d[:, None] * 3 + perm[None, :]).ravel())
                masks.append(s)
    return np.array(offs), np.array(masks, dtype=np.uint8)
