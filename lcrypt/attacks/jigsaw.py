"""Jigsaw-puzzle solver against block scrambling (EtC; any scheme that moves whole blocks and changes
them only by a per-block rotation/flip, sign or colour order).

Block scrambling keeps every block's content, so an attacker can re-assemble the puzzle from edge
compatibility alone (Chuman, Kurihara & Kiya, ICASSP 2017, extended here to unknown per-block
rotation/inversion, negative-positive transform and colour shuffle). The solver, by concern:

* **pieces** (:mod:`lcrypt.attacks.jigsaw_pieces`): every cipher block under every variant the scheme
  may have applied: 1 for scrambling alone; 8 rotations/flips × 2 signs × 6 colour orders = 96 for full
  EtC.
* **scoring** (:mod:`lcrypt.attacks.jigsaw_scoring`): Gallagher's Mahalanobis Gradient Compatibility
  (CVPR 2012) between piece sides, which copes with JPEG's 8×8 DCT grid on every seam, and Paikin &
  Tal's best buddies (CVPR 2015).
* **placement, scrambling alone** (:mod:`lcrypt.attacks.jigsaw_placement`): Paikin & Tal's best-buddies
  greedy, then a refinement that moves whole best-buddy segments, because the greedy often places a
  correct band of rows or columns on the wrong side of the image.
* **placement, per-block variants** (:mod:`lcrypt.attacks.jigsaw_variants`): the same over every
  variant of every block, with group tables so only the identity pieces are scored.

The result is defined up to one global symmetry (rotation/flip, colour order, sign) that no edge
criterion fixes; a viewer picks it at a glance, and ``lcrypt evaluate`` lets an oracle pick it
(:func:`global_symmetries`; generous to the attacker, stated in the report). How well it does, and how
that was measured: docs/security.md and docs/benchmarks.md ("Jigsaw solver").
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.base import Attack, Outcome, Target
from lcrypt.attacks.block_variants import variant_flags
from lcrypt.attacks.fr import global_variants
from lcrypt.attacks.jigsaw_placement import solve_translation
from lcrypt.attacks.jigsaw_variants import solve_variants
from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, SchemeInfo, block_index
from lcrypt.schemes.etc import EtC

PUZZLE_STEPS = frozenset({"block-scramble", "block-rotation", "block-negative-positive",
                          "block-colour-shuffle"})
"""Steps the solver undoes; a scheme that also changes what is inside a block (ELE's nibbles) or keeps
blocks in place is not a puzzle."""


def solve_best(image: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
               colors: bool = False, restarts: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scrambling alone: :func:`solve_translation` from ``restarts`` first pieces. With per-block
    variants: the variant greedy and refinement from the ``restarts`` best-ranked first blocks,
    keeping the lowest total MGC. Returns ``(reconstruction, grid_blocks, grid_variants)``."""
    if not (rotations or negpos or colors):
        return solve_translation(image, block, starts=restarts)
    return solve_variants(image, block, dict(rotations=rotations, negpos=negpos, colors=colors), restarts)


def jigsaw_attack(ciphertexts: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
                  colors: bool = False, restarts: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Solve every image of a batch: ``(reconstructions (N, H, W, 3), placed block ids (N, gh, gw))``."""
    out = [solve_best(im, block, rotations, negpos, colors, restarts) for im in np.asarray(ciphertexts)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


# -- measuring a solution against the truth (known to the evaluator, never to the attacker) ------------
def scramble_only(key: Key, shape: tuple[int, int, int], block: int = 16) -> IndexMap:
    """EtC with only step 1 (block scrambling), keyed exactly as EtC's K1: the solver's easiest puzzle."""
    h, w, c = shape
    blk = block_index(h, w, block, c)
    perm = key.permutation(EtC(block_size=block).derivation("K1-scramble", shape), len(blk))
    g = np.empty(h * w * c, dtype=np.intp)
    g[blk] = blk[perm]
    return IndexMap(shape).gather(g)


def true_block_positions(transform: IndexMap, block: int) -> np.ndarray:
    """Grid position (flat) in the plain image of the content of each cipher block, from a known map."""
    h, w, c = transform.shape
    blk = block_index(h, w, block, c)
    pix = transform.src[blk[:, 0]] // c
    return (pix // w // block) * (w // block) + (pix % w) // block


def neighbour_accuracy(grid: np.ndarray, origin: np.ndarray, gw: int) -> float:
    """Share of horizontally/vertically adjacent pairs in the solved grid that are the same pairs, in
    the same relation, in the plain image (the usual "neighbour comparison" of jigsaw papers)."""
    pos = origin[grid]                                                   # plain flat position per cell
    right = (pos[:, 1:] == pos[:, :-1] + 1) & (pos[:, :-1] % gw != gw - 1)
    down = pos[1:, :] == pos[:-1, :] + gw
    return float((right.sum() + down.sum()) / (right.size + down.size))


def global_dihedral(image: np.ndarray, grid: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8 whole-image rotations/flips of a solved image and its block grid (square images)."""
    out = []
    for t in (False, True):
        im, g = (image.transpose(1, 0, 2), grid.T) if t else (image, grid)
        for k in range(4):
            out.append((np.rot90(im, k), np.rot90(g, k)))
    return out


def global_symmetries(image: np.ndarray, grid: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every ``(image, grid)`` equivalent to one solved with per-block variants: 8 rotations/flips × 48
    sign/colour-order variants of the whole image (:func:`lcrypt.attacks.fr.global_variants`)."""
    return [(v[0], g) for im, g in global_dihedral(image, grid)
            for v in global_variants(np.ascontiguousarray(im)[None])]


# -- the attack, as `lcrypt evaluate` runs it -------------------------------------------------------
def applies_to(info: SchemeInfo) -> bool:
    """Whole blocks move, and nothing inside them changes but the variants the solver tries."""
    return "block-scramble" in info.steps and set(info.steps) <= PUZZLE_STEPS and bool(info.block_size)


def _run(target: Target) -> Outcome:
    info = target.scheme.info
    flags = variant_flags(info)
    n = min(len(target.cipher), target.budget.jigsaw_images)
    recon, grids = jigsaw_attack(target.cipher[:n], info.block_size, **flags,
                                 restarts=target.budget.jigsaw_restarts)
    return Outcome(recon, notes={"images": n}, grids=grids, block=info.block_size,
                   equivalents=global_symmetries if any(flags.values()) else None)


JIGSAW = Attack("jigsaw", "ciphertext-only", "edge-compatibility block puzzle solver",
                applies_to=applies_to, run=_run)
