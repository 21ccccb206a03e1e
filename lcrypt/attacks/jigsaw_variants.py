"""Placing the pieces of a puzzle whose blocks were also rotated/flipped, sign-flipped or colour-shuffled,
each by an unknown variant (full EtC: 8 × 2 × 6 = 96 variants per block). Part of the jigsaw solver
(:mod:`lcrypt.attacks.jigsaw`).

* **group tables** (:class:`Variants`): the variants form a group and MGC is invariant when one variant
  acts on both pieces and their relation, so only the nb identity pieces are scored against all nb·96
  piece-variants; best buddies over variants come from the same tables.
* **greedy** (:func:`place_variants`, Prim-like): each empty slot next to the placed region keeps the
  summed MGC of every piece-variant against its placed neighbours and, per block, its best variant; the
  slot whose best block is most distinct from its second-best block (tie-safe ratio
  ``(D + 1) / (second D + 1)``, to the power of the neighbour count) is filled next, among the slots
  whose best block is a best buddy of a placed neighbour when there are any. First blocks are ranked as
  Paikin & Tal's (best buddies on all sides).
* **refinement** (:func:`refine_variants`): the scrambling-only refinement of
  :mod:`lcrypt.attacks.jigsaw_placement`, where segments keep their pieces' variants and refilled cells
  may take any variant (shifts of ±1 cell and frame-aligned ones), scored by total MGC.

Not done: re-orienting a segment as a whole by one variant, so an image solved as large segments in
different global orientations stays so.
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.block_variants import block_variants
from lcrypt.attacks.jigsaw_pieces import SIDE_OFFSETS, assemble, cut_pieces
from lcrypt.attacks.jigsaw_placement import segment_moves, segments, swap_descent
from lcrypt.attacks.jigsaw_scoring import compatibility, dissimilarities, grid_energy, mgc, side_models, take



class Variants:
    """Relative MGC tables over every variant of every block (the variants form a group).

    Applying one variant ``g`` to two pieces and their relation leaves the MGC unchanged (a
    rotation/flip moves both edges and the side alike, a colour order or sign change acts on both
    gradients and on ``S`` alike), so the cost of piece-variant (j, b) on side r of (i, a) is
    ``rel[side[a, r]][i, j·nv + comp[inv[a], b]]``: only the nb identity pieces need scoring against
    all nb·nv piece-variants. ``comp[a, c]`` is the variant "c, then a"; ``side[a, r]`` is the side of
    the untransformed block that variant ``a`` moves to side r. ``bb[s][i]``: the best buddy of
    identity block i on side s, as ``j·nv + c`` (-1 when none); a buddy of (i, a) on side r is then
    (j, comp[a, c]).
    """

    def __init__(self, pieces: np.ndarray, models: list[dict[str, np.ndarray]], block: int,
                 variants: dict[str, bool]) -> None:
        offs, signs = block_variants(block, **variants)
        nv = self.nv = len(offs)
        nb = self.nb = len(pieces) // nv
        assert not signs[0] and np.array_equal(offs[0], np.arange(offs.shape[1]))
        index = {(o.tobytes(), int(m)): k for k, (o, m) in enumerate(zip(offs, signs))}
        self.comp = np.array([[index[(offs[c][offs[a]].tobytes(), int(signs[a] ^ signs[c]))]
                               for c in range(nv)] for a in range(nv)])
        self.inv = np.argmax(self.comp == 0, axis=1)
        pix = offs[:, ::3] // 3                                   # (nv, b·b) source pixel per output pixel
        yy, xx = np.divmod(np.arange(block * block), block)
        on = [xx == block - 1, yy == block - 1, xx == 0, yy == 0]         # pixels on side r
        self.side = np.array([[next(t for t in range(4) if on[t][pix[a][on[r]]].all()) for r in range(4)]
                              for a in range(nv)])
        ident = [take(m, np.arange(nb) * nv) for m in models]
        self.rel = []
        for r in range(4):
            d = mgc(ident[r], models[(r + 2) % 4]).reshape(nb, nb, nv)
            d[np.arange(nb), np.arange(nb)] = np.inf
            self.rel.append(d.reshape(nb, nb * nv))
        best = np.stack([d.argmin(axis=1) for d in self.rel])             # (4, nb)
        j, c = np.divmod(best, nv)
        opp = (np.arange(4)[:, None] + 2) % 4
        back = best[self.side[c, opp], j]                                 # best of (j, c) on the facing side
        ok = (back // nv == np.arange(nb)[None]) & (self.comp[c, back % nv] == 0)
        self.bb = np.where(ok, best, -1)

    def row(self, piece: int, r: int) -> np.ndarray:
        """(nb·nv,) MGC of every piece-variant on side r of piece-variant ``piece``."""
        i, a = divmod(piece, self.nv)
        return self.rel[self.side[a, r]][i].reshape(self.nb, self.nv)[:, self.comp[self.inv[a]]].ravel()

    def buddy(self, piece: int, r: int) -> int:
        i, a = divmod(piece, self.nv)
        q = int(self.bb[self.side[a, r], i])
        return -1 if q < 0 else (q // self.nv) * self.nv + int(self.comp[a, q % self.nv])

    def starts(self) -> np.ndarray:
        """Blocks ranked as Paikin & Tal's first piece (best buddies on all sides, whose buddies have
        them)."""
        has = self.bb >= 0
        nbb = has.sum(axis=0)
        score = 100.0 * (nbb == 4) + np.where(has, nbb[np.maximum(self.bb, 0) // self.nv], 0).sum(axis=0)
        return np.argsort(-score, kind="stable")


def place_variants(V: Variants, gh: int, gw: int, cells: dict[tuple[int, int], int],
                   fixed_frame: bool) -> np.ndarray:
    """Prim-like greedy over every variant around the piece-variants in ``cells`` ((y, x) -> block·nv + v).

    Each empty slot next to the placed region keeps the summed MGC of every piece-variant against its
    placed neighbours and, per block, its best variant (recomputed only when the slot gains a
    neighbour); the slot whose best block is most distinct from its second-best block is filled next,
    among the slots whose best block is a best buddy of a placed neighbour when there are any (Paikin
    & Tal over variants). ``fixed_frame`` as in :func:`lcrypt.attacks.jigsaw_placement.place`.
    """
    nb, nv = V.nb, V.nv
    if fixed_frame:
        ch, cw, oy, ox = gh, gw, 0, 0
    else:
        ch, cw = 2 * gh - 1, 2 * gw - 1
        oy, ox = gh - 1 - max(y for y, _ in cells), gw - 1 - max(x for _, x in cells)
    placed = -np.ones((ch, cw), dtype=np.int64)                           # piece-variant per canvas cell
    cost: dict[tuple[int, int], np.ndarray] = {}                          # slot -> summed MGC (nb·nv,)
    count: dict[tuple[int, int], int] = {}
    best: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}   # slot -> per block: min, argmin variant
    buddies: dict[tuple[int, int], set[int]] = {}                 # slot -> blocks proposed as best buddies
    free_block = np.ones(nb, bool)
    bbox = [ch, -1, cw, -1]                                               # ymin, ymax, xmin, xmax

    def put(y: int, x: int, piece: int) -> None:
        placed[y, x] = piece
        free_block[piece // nv] = False
        bbox[:] = [min(bbox[0], y), max(bbox[1], y), min(bbox[2], x), max(bbox[3], x)]
        for d in (cost, count, best, buddies):
            d.pop((y, x), None)
        for r, (dy, dx) in enumerate(SIDE_OFFSETS):
            yy, xx = y + dy, x + dx
            if not (0 <= yy < ch and 0 <= xx < cw) or placed[yy, xx] >= 0:
                continue
            cost[(yy, xx)] = cost.get((yy, xx), 0) + V.row(piece, r)     # this piece's side vs every piece
            q = V.buddy(piece, r)
            if q >= 0:
                buddies.setdefault((yy, xx), set()).add(q // nv)
            count[(yy, xx)] = count.get((yy, xx), 0) + 1
            avg = (cost[(yy, xx)] / count[(yy, xx)]).reshape(nb, nv)
            best[(yy, xx)] = (avg.min(axis=1), avg.argmin(axis=1))

    for (y, x), p in cells.items():
        put(y + oy, x + ox, p)
    while free_block.any():
        slots = [s for s in cost if max(bbox[1], s[0]) - min(bbox[0], s[0]) < gh
                 and max(bbox[3], s[1]) - min(bbox[2], s[1]) < gw]
        per_block = np.stack([best[s][0] for s in slots])
        per_block[:, ~free_block] = np.inf
        if free_block.sum() >= 2:
            two = np.partition(per_block, 1, axis=1)[:, :2]
            conf = (two[:, 0] + 1.0) / (two[:, 1] + 1.0)
        else:
            conf = per_block.min(axis=1)
        conf = conf ** np.array([count[s] for s in slots])                # more neighbours, more evidence
        top = per_block.argmin(axis=1)
        pool = np.array([int(t) in buddies.get(s, ()) for s, t in zip(slots, top)])
        if pool.any():
            conf = np.where(pool, conf, np.inf)
        k = int(np.argmin(conf))
        b = int(top[k])
        put(*slots[k], b * nv + int(best[slots[k]][1][b]))
    if fixed_frame:
        return placed
    return placed[bbox[0]:bbox[0] + gh, bbox[2]:bbox[2] + gw].copy()


def refine_variants(grid: np.ndarray, pieces: np.ndarray, models: list[dict[str, np.ndarray]], V: Variants,
                    rounds: int = 4, near: int = 1, keep_min: int = 4) -> tuple[np.ndarray, float]:
    """:func:`lcrypt.attacks.jigsaw_placement.refine` for piece-variants: segments (best-buddy-connected,
    between the pieces as oriented now) keep their pieces' variants; free cells are refilled by
    :func:`place_variants`, so a free piece may take any variant; swaps keep variants."""
    gh, gw = grid.shape
    e = grid_energy(models, grid)
    local = np.arange(gh * gw).reshape(gh, gw)
    for _ in range(rounds):
        D = dissimilarities(pieces[grid.ravel()])                        # the pieces as oriented now
        M, BB = compatibility(D)
        moves = segment_moves(grid, segments(local, BB), near, keep_min)
        if moves is None:
            break
        cands = [place_variants(V, gh, gw, cells, fixed_frame=True) for cells in moves] + [grid]
        best = min(cands, key=lambda g: grid_energy(models, g))
        best = best.ravel()[swap_descent(local, dissimilarities(pieces[best.ravel()]))]
        e2 = grid_energy(models, best)
        if not e2 < e:
            break
        grid, e = best, e2
    return grid, e


def solve_variants(image: np.ndarray, block: int, variants: dict[str, bool],
                   starts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variant greedy + refinement from the ``starts`` best-ranked first blocks
    (:meth:`Variants.starts`); keeps the arrangement with the lowest total MGC. Returns
    ``(reconstruction, grid_blocks, grid_variants)`` (variant indices in :func:`block_variants` order)."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, nv = cut_pieces(image, block, variants)
    nb = gh * gw
    if nb < 2:
        grid = np.zeros((gh, gw), dtype=np.int64)
        return assemble(pieces, grid), grid, grid.copy()
    models = side_models(pieces)
    V = Variants(pieces, models, block, variants)
    best = None
    for s in V.starts()[:max(starts, 1)]:
        grid = place_variants(V, gh, gw, {(0, 0): int(s) * nv}, fixed_frame=False)
        grid, e = refine_variants(grid, pieces, models, V)
        if best is None or e < best[1]:
            best = (grid, e)
    grid = best[0]
    return assemble(pieces, grid), grid // nv, grid % nv
