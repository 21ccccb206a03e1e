"""Placing the pieces of a puzzle whose blocks were only moved (block scrambling alone, no per-block
variant): a best-buddies greedy, then a refinement of its mistakes. Part of the jigsaw solver
(:mod:`lcrypt.attacks.jigsaw`); :mod:`lcrypt.attacks.jigsaw_variants` reuses its refinement moves.

* **greedy** (:func:`place`): Paikin & Tal ("Solving multiple square jigsaw puzzles with missing pieces",
  CVPR 2015). Start from the piece whose best buddies on all four sides also have four best buddies;
  then repeatedly place, among the empty slots next to the placed region (whose bounding box may not
  outgrow the gh×gw grid), the best-buddy candidate with the highest compatibility averaged over its
  placed neighbours (the best candidate of any kind when no best buddy is left).
* **refinement** (:func:`refine`), up to four rounds, each kept only when it lowers the total MGC of all
  seams: candidates are the largest best-buddy-connected segment moved by every shift of up to ±2
  cells and to each frame-aligned position (cells pushed out of the frame are dropped), and every
  segment of four or more pieces kept where it is; the free cells are refilled by the same greedy,
  and the cheapest candidate is polished by pairwise swaps of pieces (largest predicted gain first,
  each checked exactly). Why: the greedy alone often puts a block of correct rows/columns on the wrong
  side (a torus shift: opposite image borders are often each other's best buddies), which ruins SSIM
  though most seams are right; moving whole segments undoes most of these.
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.jigsaw_pieces import SIDE_OFFSETS, assemble, cut_pieces
from lcrypt.attacks.jigsaw_scoring import compatibility, dissimilarities


def start_pieces(M: list[np.ndarray], BB: list[np.ndarray]) -> np.ndarray:
    """Pieces ranked as Paikin & Tal's first piece: best buddies on all sides, whose buddies have them
    too."""
    n = len(BB[0])
    has = np.stack([b >= 0 for b in BB])
    nbb = has.sum(axis=0)
    score = 100.0 * (nbb == 4)
    for r in range(4):
        j = np.where(has[r], BB[r], 0)
        score = score + np.where(has[r], nbb[j] + M[r][np.arange(n), j], 0.0)
    return np.argsort(-score, kind="stable")


def place(M: list[np.ndarray], BB: list[np.ndarray], gh: int, gw: int,
          cells: dict[tuple[int, int], int], fixed_frame: bool) -> np.ndarray:
    """Best-buddies greedy placement around the pieces in ``cells`` ((y, x) -> piece).

    ``fixed_frame``: ``cells`` are absolute positions in the gh×gw frame; otherwise they are relative
    and the frame is wherever the placed region ends (its bounding box may not outgrow gh×gw).
    """
    n = len(BB[0])
    if fixed_frame:
        ch, cw, oy, ox = gh + 2, gw + 2, 1, 1                             # a border ring never filled
    else:
        ch, cw = 2 * gh - 1, 2 * gw - 1
        ys, xs = [y for y, _ in cells], [x for _, x in cells]
        oy, ox = gh - 1 - max(ys), gw - 1 - max(xs)
    canvas = -np.ones((ch, cw), dtype=np.int64)
    acc = np.zeros((ch, cw, n))                                           # summed compatibility per slot
    cnt = np.zeros((ch, cw), dtype=np.int64)
    buddy = np.zeros((ch, cw, n), dtype=bool)                             # best buddy of a placed neighbour
    free = np.ones(n, dtype=bool)
    allowed = np.zeros((ch, cw), dtype=bool)
    if fixed_frame:
        allowed[1:-1, 1:-1] = True
    bbox = [ch, -1, cw, -1]

    def put(y: int, x: int, p: int) -> None:
        canvas[y, x] = p
        free[p] = False
        bbox[:] = [min(bbox[0], y), max(bbox[1], y), min(bbox[2], x), max(bbox[3], x)]
        for r, (dy, dx) in enumerate(SIDE_OFFSETS):
            yy, xx = y + dy, x + dx
            if 0 <= yy < ch and 0 <= xx < cw:
                acc[yy, xx] += M[r][p]
                cnt[yy, xx] += 1
                if BB[r][p] >= 0:
                    buddy[yy, xx, BB[r][p]] = True

    for (y, x), p in cells.items():
        put(y + oy, x + ox, p)
    while free.any():
        if not fixed_frame:
            allowed[:] = False
            allowed[max(0, bbox[1] - gh + 1):bbox[0] + gh, max(0, bbox[3] - gw + 1):bbox[2] + gw] = True
        open_ = allowed & (canvas < 0)
        ys, xs = np.nonzero(open_ & (cnt > 0))
        if len(ys) == 0:
            ys, xs = np.nonzero(open_)
        cand = np.nonzero(free)[0]
        score = acc[ys, xs][:, cand] / np.maximum(cnt[ys, xs], 1)[:, None]
        pool = buddy[ys, xs][:, cand]
        if pool.any():
            score = np.where(pool, score, -np.inf)
        k, j = divmod(int(np.argmax(score)), len(cand))
        put(int(ys[k]), int(xs[k]), int(cand[j]))
    if fixed_frame:
        return canvas[1:-1, 1:-1].copy()
    return canvas[bbox[0]:bbox[0] + gh, bbox[2]:bbox[2] + gw].copy()


def energy(grid: np.ndarray, D: list[np.ndarray]) -> float:
    """Total dissimilarity of every internal seam of a grid of piece indices."""
    return float(D[0][grid[:, :-1], grid[:, 1:]].sum() + D[1][grid[:-1], grid[1:]].sum())


def segments(grid: np.ndarray, BB: list[np.ndarray]) -> np.ndarray:
    """Label of each cell: cells joined by best-buddy seams share a label (union-find)."""
    gh, gw = grid.shape
    parent = np.arange(gh * gw)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    idx = np.arange(gh * gw).reshape(gh, gw)
    for r, (a, b) in ((0, (idx[:, :-1], idx[:, 1:])), (1, (idx[:-1], idx[1:]))):
        ok = BB[r][grid.ravel()[a.ravel()]] == grid.ravel()[b.ravel()]
        for u, v in zip(a.ravel()[ok], b.ravel()[ok]):
            parent[find(int(u))] = find(int(v))
    return np.array([find(i) for i in range(gh * gw)]).reshape(gh, gw)


def swap_descent(grid: np.ndarray, D: list[np.ndarray], max_swaps: int = 200) -> np.ndarray:
    """Swap two pieces while that lowers the total seam cost (best predicted gain first)."""
    gh, gw = grid.shape
    n = gh * gw
    grid = grid.copy()
    e = energy(grid, D)
    for _ in range(max_swaps):
        cost = np.zeros((gh, gw, n))                          # cost[cell, q]: q in cell vs its neighbours
        cost[:, 1:] += D[0][grid[:, :-1]]
        cost[:, :-1] += D[2][grid[:, 1:]]
        cost[1:] += D[1][grid[:-1]]
        cost[:-1] += D[3][grid[1:]]
        cost = cost.reshape(n, n)
        flat = grid.ravel()
        held = cost[:, flat]                                  # held[a, b]: cell a holding b's piece
        cur = np.diagonal(held)
        delta = held + held.T - cur[:, None] - cur[None, :]   # exact unless a, b are adjacent
        done = True
        for k in np.argsort(delta, axis=None)[:20]:
            a, b = divmod(int(k), n)
            if not delta[a, b] < 0:
                break
            trial = flat.copy()
            trial[a], trial[b] = trial[b], trial[a]
            trial = trial.reshape(gh, gw)
            e2 = energy(trial, D)
            if e2 < e:
                grid, e, done = trial, e2, False
                break
        if done:
            break
    return grid


def segment_moves(grid: np.ndarray, labels: np.ndarray, near: int,
                  keep_min: int) -> list[dict[tuple[int, int], int]] | None:
    """Partial arrangements to re-place the rest around (``(y, x) -> piece`` of ``grid``): the largest
    best-buddy segment shifted by up to ``near`` cells or to each border (cells leaving the frame are
    dropped; a shift that leaves none is skipped), and every segment of ``keep_min`` or more cells kept
    where it is. None when one segment already covers the grid."""
    gh, gw = grid.shape
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.max() == gh * gw:
        return None
    moves = []
    ys, xs = np.nonzero(inv.reshape(gh, gw) == np.argmax(counts))
    shifts = {(dy, dx) for dy in range(-near, near + 1) for dx in range(-near, near + 1)}
    shifts |= {(dy, dx) for dy in (0, -ys.min(), gh - 1 - ys.max())
               for dx in (0, -xs.min(), gw - 1 - xs.max())}
    shifts.discard((0, 0))
    for dy, dx in sorted(shifts):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < gh) & (x2 >= 0) & (x2 < gw)
        if ok.any():
            moves.append({(int(a), int(b)): int(grid[y, x])
                          for a, b, y, x in zip(y2[ok], x2[ok], ys[ok], xs[ok])})
    keep = (counts[inv] >= keep_min).reshape(gh, gw)
    if keep.any() and not keep.all():
        moves.append({(int(y), int(x)): int(grid[y, x]) for y, x in zip(*np.nonzero(keep))})
    return moves


def refine(grid: np.ndarray, D: list[np.ndarray], M: list[np.ndarray], BB: list[np.ndarray],
           rounds: int = 4, near: int = 2, keep_min: int = 4) -> tuple[np.ndarray, float]:
    """Segment moves, refill and swaps (see the module docstring) while they lower the total seam cost;
    returns the grid and its cost."""
    gh, gw = grid.shape
    e = energy(grid, D)
    for _ in range(rounds):
        moves = segment_moves(grid, segments(grid, BB), near, keep_min)
        if moves is None:
            break
        cands = [place(M, BB, gh, gw, cells, fixed_frame=True) for cells in moves] + [grid]
        best = swap_descent(min(cands, key=lambda g: energy(g, D)), D)
        e2 = energy(best, D)
        if not e2 < e:
            break
        grid, e = best, e2
    return grid, e


def solve_translation(image: np.ndarray, block: int,
                      starts: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scrambling alone (no per-block variant): MGC, best-buddies greedy placement (Paikin & Tal) and
    refinement (see the module docstring), from the ``starts`` best-ranked first pieces; keeps the
    arrangement with the lowest total MGC. Returns ``(reconstruction, grid_blocks, grid_variants)``."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, _ = cut_pieces(image, block, dict(rotations=False, negpos=False, colors=False))
    if gh * gw < 2:
        grid = np.zeros((gh, gw), dtype=np.int64)
        return assemble(pieces, grid), grid, np.zeros_like(grid)
    D = dissimilarities(pieces)
    M, BB = compatibility(D)
    best = None
    for s in start_pieces(M, BB)[:max(starts, 1)]:
        grid, e = refine(place(M, BB, gh, gw, {(0, 0): int(s)}, fixed_frame=False), D, M, BB)
        if best is None or e < best[1]:
            best = (grid, e)
    grid = best[0]
    return assemble(pieces, grid), grid, np.zeros_like(grid)
