"""Feature reconstruction attacks on negative-positive transforms (Chang & Case, 2020).

**FR attack** (ciphertext-only). A negative-positive step sends a value v to v or 255 − v; folding
every value to ``min(v, 255 − v)`` gives the same result for both, so the fold of the ciphertext equals
the fold of the plain image whatever the key's bits: edges and shapes survive (bright areas come out
dark). When colour components were shuffled per pixel, the three folded values are sorted per pixel
so the result no longer depends on their order either. The fold is displayed as
``255 − min(v, 255 − v) = max(v, 255 − v)`` (the same information, in the orientation where most of a
natural image keeps its brightness); on CIFAR-10 test images this orientation gives the published
median SSIM (≈ 0.31), while the raw fold scores ≈ 0.12 and a ×2 stretch ≈ 0.

**Greedy FR attack** (their variant). For each pixel — or each ``block``×``block`` cell of a block
scheme — try the 2³ sign patterns × 6 colour orders (48 candidates; 8 when the scheme has no colour
shuffle) and keep the one closest to the already-reconstructed left and upper neighbours (the
"smoothest"). Cells are decided anti-diagonal by anti-diagonal (every cell of a diagonal only
depends on the previous one), so a batch costs H/b + W/b − 1 vectorised steps. The result is defined
up to one global choice of signs and colour order that no smoothness criterion can fix; the report
states which global choice it scores (see :func:`resolve_global`).
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.base import Attack, Outcome, changes_the_image
from lcrypt.schemes.base import COLOR_PERMUTATIONS


def fr_attack(ciphertexts: np.ndarray, color_shuffle: bool = False) -> np.ndarray:
    """Fold every value to min(v, 255 − v), shown as 255 − fold; sort the three values per pixel if
    colours were shuffled. (N, H, W, 3) uint8 in, same out; needs no key."""
    c = np.asarray(ciphertexts)
    folded = np.maximum(c, 255 - c)
    if color_shuffle:
        folded = np.sort(folded, axis=-1)
    return folded


def candidate_transforms(color_shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(perms (K, 3), xor masks (K, 3)) of every sign/colour-order combination the greedy attack tries."""
    signs = np.array([[(s >> k) & 1 for k in range(3)] for s in range(8)], dtype=np.uint8) * 255
    perms = COLOR_PERMUTATIONS if color_shuffle else COLOR_PERMUTATIONS[:1]
    p = np.repeat(perms, len(signs), axis=0)
    m = np.tile(signs, (len(perms), 1))
    return p, m


def fr_greedy_attack(ciphertexts: np.ndarray, block: int = 1, color_shuffle: bool = True) -> np.ndarray:
    """Greedy sign/colour-order choice per pixel (block=1) or per block cell, smoothest against the
    left and upper neighbours already decided. (N, H, W, 3) uint8 in, same out."""
    c = np.asarray(ciphertexts)
    n, h, w, _ = c.shape
    if h % block or w % block:
        raise ValueError(f"image {h}x{w} is not a multiple of the cell size {block}")
    gh, gw = h // block, w // block
    cells = c.reshape(n, gh, block, gw, block, 3).transpose(0, 1, 3, 2, 4, 5)      # (n, gh, gw, b, b, 3)
    perms, masks = candidate_transforms(color_shuffle)
    out = np.empty_like(cells)
    for d in range(gh + gw - 1):
        i = np.arange(max(0, d - gw + 1), min(gh, d + 1))
        j = d - i
        x = cells[:, i, j]                                                          # (n, L, b, b, 3)
        cand = np.take(x, perms, axis=-1)                                          # (n, L, b, b, K, 3)
        cand = np.moveaxis(cand, -2, 2) ^ masks[None, None, :, None, None, :]       # (n, L, K, b, b, 3)
        cost = np.zeros(cand.shape[:3])
        up = i > 0
        if up.any():
            ref = out[:, i[up] - 1, j[up]][:, :, -1].astype(np.int32)            # (n, Lu, b, 3) bottom row
            diff = cand[:, up][:, :, :, 0].astype(np.int32) - ref[:, :, None]
            cost[:, up] += np.abs(diff).sum(axis=(-2, -1))
        left = j > 0
        if left.any():
            ref = out[:, i[left], j[left] - 1][:, :, :, -1].astype(np.int32)     # (n, Ll, b, 3) right column
            diff = cand[:, left][:, :, :, :, 0].astype(np.int32) - ref[:, :, None]
            cost[:, left] += np.abs(diff).sum(axis=(-2, -1))
        best = cost.argmin(axis=2)                                                  # (n, L); 0 = as is
        out[:, i, j] = np.take_along_axis(cand, best[:, :, None, None, None, None], axis=2)[:, :, 0]
    return out.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, 3)


def global_variants(images: np.ndarray) -> np.ndarray:
    """The 48 whole-image sign/colour-order variants of a batch: (48, N, H, W, 3)."""
    perms, masks = candidate_transforms(True)
    return np.stack([np.take(images, p, axis=-1) ^ m for p, m in zip(perms, masks)])


def resolve_global(recon: np.ndarray, plain: np.ndarray, score) -> np.ndarray:
    """Per image, the global sign/colour variant of ``recon`` that scores best against ``plain``.

    The greedy attack (and the jigsaw solver) fix every cell relative to its neighbours, leaving one
    global choice a viewer makes at a glance (a negative or a colour-swapped photo is obvious). We let
    an oracle make it, which is generous to the attacker, and say so in the report.
    """
    variants = global_variants(recon)
    scores = np.stack([score(v, plain) for v in variants])                          # (48, N)
    best = scores.argmax(axis=0)
    return variants[best, np.arange(len(plain))]


FR = Attack("fr", "ciphertext-only", "fold v -> min(v, 255-v) (Chang & Case 2020)",
            # key-free and cheap, so tried on every scheme; it only reveals negative-positive steps
            applies_to=changes_the_image,
            run=lambda t: Outcome(fr_attack(t.cipher, "pixel-colour-shuffle" in t.scheme.info.steps)))
FR_GREEDY = Attack("fr-greedy", "ciphertext-only", "48 sign/colour-order candidates, smoothest kept",
                   applies_to=changes_the_image,
                   run=lambda t: Outcome(fr_greedy_attack(t.cipher, 1, color_shuffle=True)))
