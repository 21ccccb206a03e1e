"""Jigsaw-puzzle solver against block scrambling (EtC, and the scrambling step of ELE).

Block scrambling keeps every block's content, so an attacker can try to re-assemble the puzzle from
edge compatibility alone (Chuman, Kurihara & Kiya, ICASSP 2017, extended to unknown per-block
rotation/inversion, negative-positive transform and colour shuffle).

* **pieces**: every cipher block under every variant the scheme may have applied — 1 for scrambling
  alone; 8 rotations/flips × 2 signs × 6 colour orders = 96 for full EtC.
* **compatibility**: Gallagher's Mahalanobis Gradient Compatibility (MGC, "Jigsaw puzzles with pieces
  of unknown orientation", CVPR 2012). For the side of a piece facing a neighbour, the colour gradients
  across its last two pixel-line pairs give a mean ``μ`` (outermost pair) and a 3×3 covariance ``S``
  (both pairs, plus Gallagher's nine dummy gradients scaled ×4 so flat edges keep ``S`` invertible);
  the gradient across the seam, ``neighbour edge − own edge`` pixel by pixel, is scored by
  ``Σ (g − μ) S⁻¹ (g − μ)ᵀ``, both ways. Expanding the quadratic form turns all n×n pairs into three
  matrix products. It replaces our earlier prediction-based L1 (``|1.5·edge − 0.5·inner − other
  edge|``, both ways): on the first 20 Imagenette val images (224², 16-px blocks; JPEG, so the 8×8 DCT
  grid lies on every seam and raw pixel differences are weak) the true right-hand neighbour is the
  best match of 88% of blocks (62% with the L1), and 95% of best-buddy pairs are true (88%). Dummy
  scale ×1 gave 85%, ×12 87%; adding the gradient across the DCT boundary inside the block (a JPEG
  model of the seam) to ``S`` made it worse (86% vs 87% on the first 60 images).
* **placement, scrambling alone** (:func:`solve_translation`): Paikin & Tal's best-buddies greedy
  ("Solving multiple square jigsaw puzzles with missing pieces", CVPR 2015). Compatibility is
  ``1 − (D + 1) / (second-best D + 1)`` of the side (the +1 makes a tie at zero cost, two flat
  saturated edges, worth nothing instead of everything), averaged both ways; two pieces are best
  buddies when each is the other's best match. Start from the piece whose best buddies on all four
  sides also have four best buddies; then repeatedly place, among the empty slots next to the placed
  region (whose bounding box may not outgrow the gh×gw grid), the best-buddy candidate with the
  highest compatibility averaged over its placed neighbours (the best candidate of any kind when no
  best buddy is left).
* **refinement** (scrambling alone), up to four rounds, each kept only when it lowers the total MGC
  of all seams: candidates are the largest best-buddy-connected segment moved by every shift of up to
  ±2 cells and to each frame-aligned position (cells pushed out of the frame are dropped), and every
  segment of four or more pieces kept where it is; the free cells are refilled by the same greedy,
  and the cheapest candidate is polished by pairwise swaps of pieces (largest predicted gain first,
  each checked exactly). The greedy alone often puts a block of correct rows/columns on the wrong side
  (a torus shift: opposite image borders are often each other's best buddies), which ruins SSIM;
  the moves undo most of these. Greedy alone on the first 20 images: median SSIM 1.00 but 3 images
  below 0.15, mean correct-neighbour rate 0.93; with refinement the worst is 0.68, mean 0.96. More
  first pieces (``starts``, ``restarts``) changed nothing on the first 60 images.
* **placement, per-block variants** (:func:`solve_best`, full EtC): the variants form
  a group and MGC is invariant when one variant acts on both pieces and their relation, so only the
  nb identity pieces are scored against all nb·96 piece-variants (:class:`_Variants`: relative tables,
  variant composition and side maps); best buddies over variants come from the same tables. Prim-like
  greedy (:func:`_place_variants`): each empty slot next to the placed region keeps the summed MGC of
  every piece-variant against its placed neighbours (a gather per new neighbour) and, per block, its
  best variant; the slot whose best block is most distinct from its second-best block (tie-safe
  ratio ``(D + 1) / (second D + 1)``, to the power of the neighbour count) is filled next, among the
  slots whose best block is a best buddy of a placed neighbour when there are any. First blocks are
  ranked as Paikin & Tal's (best buddies on all sides). Then :func:`_refine_variants`, the
  scrambling-only refinement where segments keep their pieces' variants and refilled cells may take
  any variant (shifts of ±1 cell and frame-aligned ones), scored by total MGC.

Measured with ``bench/bench_jigsaw.py`` on the first Imagenette val images (224×224, 16-px blocks,
196 pieces, one core; docs/benchmarks.md has the run beside the earlier L1 solver of 2ab9cb1).
Scrambling alone, first 20 images: median SSIM 1.00, worst 0.68, median correct-neighbour rate 1.00,
mean 0.96, 0.08 s per image with one start; on val images 60–119, which were not used for tuning
(``--offset 60 --images 60``), median SSIM 1.00, mean correct neighbours 0.94, worst SSIM 0.16. Full EtC (96 variants per block; global symmetry
picked by an oracle), first 10 images: median SSIM 0.79, min 0.07, median correct neighbours 0.77,
5 images above 0.8, ~2 s per image (the variant greedy without group tables and refinement, 6200bdc,
gave median 0.53). Images 2, 4 and 6 still fail from the first placements (correct neighbours < 0.3);
images 1 and 5, with ≥ 70% correct neighbours but low SSIM, hold large segments in different global
orientations, which no move here re-orients (not implemented: re-orienting a segment as a whole by
one variant).

The result is defined up to one global symmetry (rotation/flip, colour order, sign) that no edge
criterion fixes; the caller lets an oracle pick it (:func:`global_dihedral` and
:func:`lcrypt.attacks.fr.global_variants`; generous to the attacker, stated in the report).
:func:`scramble_only` builds the EtC variant with steps 2–4 off, from EtC's own step-1 derivation and
the block helpers of :mod:`lcrypt.schemes.base`, for the solver's own test.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, block_index
from lcrypt.schemes.etc import EtC
from lcrypt.attacks.known_plaintext import block_variants

# Gallagher's dummy gradients (they keep S invertible on flat edges), scaled ×4: the regularisation
# that measured best (88% true best matches on the first 20 Imagenette val images; 85% at ×1, 87% at ×12).
_DUMMY = 4.0 * np.array([[0, 0, 0], [1, 1, 1], [-1, -1, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
                         [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=np.float64)
# relation r: the neighbour lies on side r of a piece; (r + 2) % 4 is the opposite side
# added to D and to the second-best D in the compatibility ratio: a tie at zero (two flat, saturated
# edges) then means no confidence rather than full confidence
_EPS = 1.0
_SIDES = ("right", "bottom", "left", "top")
_STEPS = ((0, 1), (1, 0), (0, -1), (-1, 0))


def scramble_only(key: Key, shape: tuple[int, int, int], block: int = 16) -> IndexMap:
    """EtC with only step 1 (block scrambling), keyed exactly as EtC's K1."""
    h, w, c = shape
    blk = block_index(h, w, block, c)
    perm = key.permutation(EtC(block_size=block).derivation("K1-scramble", shape), len(blk))
    g = np.empty(h * w * c, dtype=np.intp)
    g[blk] = blk[perm]
    return IndexMap(shape).gather(g)


def _pieces(image: np.ndarray, block: int, variants: dict[str, bool]) -> tuple[np.ndarray, int]:
    """(nb·V, b, b, 3) float32: every block under every variant (block-major)."""
    h, w, _ = image.shape
    blk = block_index(h, w, block, 3)
    offs, signs = block_variants(block, **variants)
    vals = image.reshape(-1)[blk]                                         # (nb, b·b·3)
    pieces = vals[:, offs] ^ signs[None, :, None]                         # (nb, V, b·b·3)
    return pieces.reshape(-1, block, block, 3).astype(np.float32), len(offs)


def _grid_pieces(image: np.ndarray, block: int) -> np.ndarray:
    """(gh·gw, b, b, 3) float32: the blocks of an image in raster order."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    return (image.reshape(gh, block, gw, block, 3).transpose(0, 2, 1, 3, 4)
            .reshape(gh * gw, block, block, 3).astype(np.float32))


def _assemble(pieces: np.ndarray, grid: np.ndarray) -> np.ndarray:
    gh, gw = grid.shape
    b = pieces.shape[1]
    return (pieces[grid.ravel()].reshape(gh, gw, b, b, 3).transpose(0, 2, 1, 3, 4)
            .reshape(gh * b, gw * b, 3).astype(np.uint8))


# -- Mahalanobis gradient compatibility --------------------------------------------------------
def _side_model(pieces: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """MGC terms of side r of every piece, for :func:`_mgc`'s matrix-product form.

    With x = the other piece's edge line, u = own edge + μ and A = S⁻¹, the one-way score
    Σ_rows (x − u) A (x − u)ᵀ = <A, xᵀx> − 2 <u A, x> + Σ_rows u A uᵀ.
    """
    b = pieces.shape[1]
    k1, k2 = min(1, b - 1), min(2, b - 1)
    take = {0: lambda k: pieces[:, :, b - 1 - k], 1: lambda k: pieces[:, b - 1 - k],
            2: lambda k: pieces[:, :, k], 3: lambda k: pieces[:, k]}[r]
    edge, inner, inner2 = (np.asarray(take(k), np.float64) for k in (0, k1, k2))
    n = len(edge)
    grad = edge - inner                                                   # (n, b, 3), pointing outwards
    mu = grad.mean(axis=1)
    samples = np.concatenate([grad, inner - inner2, np.broadcast_to(_DUMMY, (n, len(_DUMMY), 3))], axis=1)
    centred = samples - samples.mean(axis=1, keepdims=True)
    a = np.linalg.inv(centred.transpose(0, 2, 1) @ centred / (samples.shape[1] - 1))
    u = edge + mu[:, None]
    ua = u @ a
    return {"e": edge.reshape(n, -1), "E": (edge.transpose(0, 2, 1) @ edge).reshape(n, 9),
            "A": a.reshape(n, 9), "UA": ua.reshape(n, -1), "c": (ua * u).sum(axis=(1, 2))}


def _models(pieces: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [_side_model(pieces, r) for r in range(4)]


def _take(model: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in model.items()}


def _one_way(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    return a["A"] @ o["E"].T - 2.0 * a["UA"] @ o["e"].T + a["c"][:, None]


def _mgc(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    """(len a, len o) MGC of every piece side in ``a`` against every facing side in ``o``."""
    return np.maximum(_one_way(a, o) + _one_way(o, a).T, 0.0)


def _mgc_pairs(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    """MGC of aligned pairs (a[k] against o[k])."""
    one = lambda p, q: (p["A"] * q["E"]).sum(1) - 2.0 * (p["UA"] * q["e"]).sum(1) + p["c"]
    return np.maximum(one(a, o) + one(o, a), 0.0)


def _dissimilarities(pieces: np.ndarray) -> list[np.ndarray]:
    """D[r][i, j]: MGC of piece j placed on side r of piece i (diagonal = inf)."""
    m = _models(pieces)
    right, down = _mgc(m[0], m[2]), _mgc(m[1], m[3])
    np.fill_diagonal(right, np.inf)
    np.fill_diagonal(down, np.inf)
    return [right, down, right.T, down.T]


def seam_cost(image: np.ndarray, block: int) -> float:
    """Total MGC across every internal block seam of an arrangement: what the attacker minimises to
    choose between candidate solutions (it needs no key)."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    m = _models(_grid_pieces(image, block))
    idx = np.arange(gh * gw).reshape(gh, gw)
    cost = 0.0
    if gw > 1:
        cost += _mgc_pairs(_take(m[0], idx[:, :-1].ravel()), _take(m[2], idx[:, 1:].ravel())).sum()
    if gh > 1:
        cost += _mgc_pairs(_take(m[1], idx[:-1].ravel()), _take(m[3], idx[1:].ravel())).sum()
    return float(cost)


# -- scrambling alone: best-buddies placement and refinement ----------------------------------------
def _compatibility(D: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paikin & Tal: mutual compatibility M[r][i, j] and best buddies BB[r][i] (-1 when none)."""
    n = len(D[0])
    comp = []
    for d in D:
        second = np.partition(d, 1, axis=1)[:, 1:2]
        with np.errstate(invalid="ignore"):
            comp.append(np.where(np.isinf(d), -np.inf, 1.0 - (d + _EPS) / (second + _EPS)))
    M = [(comp[r] + comp[(r + 2) % 4].T) / 2 for r in range(4)]
    best = [d.argmin(axis=1) for d in D]
    BB = [np.where(best[(r + 2) % 4][best[r]] == np.arange(n), best[r], -1) for r in range(4)]
    return M, BB


def _start_pieces(M: list[np.ndarray], BB: list[np.ndarray]) -> np.ndarray:
    """Pieces ranked as Paikin & Tal's first piece: best buddies on all sides, whose buddies have them too."""
    n = len(BB[0])
    has = np.stack([b >= 0 for b in BB])
    nbb = has.sum(axis=0)
    score = 100.0 * (nbb == 4)
    for r in range(4):
        j = np.where(has[r], BB[r], 0)
        score = score + np.where(has[r], nbb[j] + M[r][np.arange(n), j], 0.0)
    return np.argsort(-score, kind="stable")


def _place(M: list[np.ndarray], BB: list[np.ndarray], gh: int, gw: int,
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
        for r, (dy, dx) in enumerate(_STEPS):
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


def _energy(grid: np.ndarray, D: list[np.ndarray]) -> float:
    return float(D[0][grid[:, :-1], grid[:, 1:]].sum() + D[1][grid[:-1], grid[1:]].sum())


def _segments(grid: np.ndarray, BB: list[np.ndarray]) -> np.ndarray:
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


def _swap_descent(grid: np.ndarray, D: list[np.ndarray], max_swaps: int = 200) -> np.ndarray:
    """Swap two pieces while that lowers the total seam cost (best predicted gain first)."""
    gh, gw = grid.shape
    n = gh * gw
    grid = grid.copy()
    e = _energy(grid, D)
    for _ in range(max_swaps):
        cost = np.zeros((gh, gw, n))                                      # cost[cell, q]: q in cell vs its neighbours
        cost[:, 1:] += D[0][grid[:, :-1]]
        cost[:, :-1] += D[2][grid[:, 1:]]
        cost[1:] += D[1][grid[:-1]]
        cost[:-1] += D[3][grid[1:]]
        cost = cost.reshape(n, n)
        flat = grid.ravel()
        held = cost[:, flat]                                              # held[a, b]: cell a holding b's piece
        cur = np.diagonal(held)
        delta = held + held.T - cur[:, None] - cur[None, :]               # exact unless a, b are adjacent
        done = True
        for k in np.argsort(delta, axis=None)[:20]:
            a, b = divmod(int(k), n)
            if not delta[a, b] < 0:
                break
            trial = flat.copy()
            trial[a], trial[b] = trial[b], trial[a]
            trial = trial.reshape(gh, gw)
            e2 = _energy(trial, D)
            if e2 < e:
                grid, e, done = trial, e2, False
                break
        if done:
            break
    return grid


def _segment_moves(grid: np.ndarray, labels: np.ndarray, near: int,
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
    shifts |= {(dy, dx) for dy in (0, -ys.min(), gh - 1 - ys.max()) for dx in (0, -xs.min(), gw - 1 - xs.max())}
    shifts.discard((0, 0))
    for dy, dx in sorted(shifts):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < gh) & (x2 >= 0) & (x2 < gw)
        if ok.any():
            moves.append({(int(a), int(b)): int(grid[y, x]) for a, b, y, x in zip(y2[ok], x2[ok], ys[ok], xs[ok])})
    keep = (counts[inv] >= keep_min).reshape(gh, gw)
    if keep.any() and not keep.all():
        moves.append({(int(y), int(x)): int(grid[y, x]) for y, x in zip(*np.nonzero(keep))})
    return moves


def _refine(grid: np.ndarray, D: list[np.ndarray], M: list[np.ndarray], BB: list[np.ndarray],
            rounds: int = 4, near: int = 2, keep_min: int = 4) -> tuple[np.ndarray, float]:
    gh, gw = grid.shape
    e = _energy(grid, D)
    for _ in range(rounds):
        moves = _segment_moves(grid, _segments(grid, BB), near, keep_min)
        if moves is None:
            break
        cands = [_place(M, BB, gh, gw, cells, fixed_frame=True) for cells in moves] + [grid]
        best = _swap_descent(min(cands, key=lambda g: _energy(g, D)), D)
        e2 = _energy(best, D)
        if not e2 < e:
            break
        grid, e = best, e2
    return grid, e


def solve_translation(image: np.ndarray, block: int, starts: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scrambling alone (no per-block variant): MGC, best-buddies greedy placement (Paikin & Tal) and
    refinement (see the module docstring), from the ``starts`` best-ranked first pieces; keeps the
    arrangement with the lowest total MGC. Returns ``(reconstruction, grid_blocks, grid_variants)``."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, _ = _pieces(image, block, dict(rotations=False, negpos=False, colors=False))
    if gh * gw < 2:
        grid = np.zeros((gh, gw), dtype=np.int64)
        return _assemble(pieces, grid), grid, np.zeros_like(grid)
    D = _dissimilarities(pieces)
    M, BB = _compatibility(D)
    best = None
    for s in _start_pieces(M, BB)[:max(starts, 1)]:
        grid, e = _refine(_place(M, BB, gh, gw, {(0, 0): int(s)}, fixed_frame=False), D, M, BB)
        if best is None or e < best[1]:
            best = (grid, e)
    grid = best[0]
    return _assemble(pieces, grid), grid, np.zeros_like(grid)


# -- per-block variants: greedy placement over every variant, refinement ------------------------------
def _grid_energy(models: list[dict[str, np.ndarray]], grid: np.ndarray) -> float:
    """Total MGC of every internal seam of a grid of piece indices (into ``models``)."""
    cost = 0.0
    if grid.shape[1] > 1:
        cost += _mgc_pairs(_take(models[0], grid[:, :-1].ravel()), _take(models[2], grid[:, 1:].ravel())).sum()
    if grid.shape[0] > 1:
        cost += _mgc_pairs(_take(models[1], grid[:-1].ravel()), _take(models[3], grid[1:].ravel())).sum()
    return float(cost)


class _Variants:
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
        self.comp = np.array([[index[(offs[c][offs[a]].tobytes(), int(signs[a] ^ signs[c]))] for c in range(nv)]
                              for a in range(nv)])
        self.inv = np.argmax(self.comp == 0, axis=1)
        pix = offs[:, ::3] // 3                                           # (nv, b·b) source pixel per output pixel
        yy, xx = np.divmod(np.arange(block * block), block)
        on = [xx == block - 1, yy == block - 1, xx == 0, yy == 0]         # pixels on side r
        self.side = np.array([[next(t for t in range(4) if on[t][pix[a][on[r]]].all()) for r in range(4)]
                              for a in range(nv)])
        ident = [_take(m, np.arange(nb) * nv) for m in models]
        self.rel = []
        for r in range(4):
            d = _mgc(ident[r], models[(r + 2) % 4]).reshape(nb, nb, nv)
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
        """Blocks ranked as Paikin & Tal's first piece (best buddies on all sides, whose buddies have them)."""
        has = self.bb >= 0
        nbb = has.sum(axis=0)
        score = 100.0 * (nbb == 4) + np.where(has, nbb[np.maximum(self.bb, 0) // self.nv], 0).sum(axis=0)
        return np.argsort(-score, kind="stable")


def _place_variants(V: _Variants, gh: int, gw: int, cells: dict[tuple[int, int], int],
                    fixed_frame: bool) -> np.ndarray:
    """Prim-like greedy over every variant around the piece-variants in ``cells`` ((y, x) -> block·nv + v).

    Each empty slot next to the placed region keeps the summed MGC of every piece-variant against its
    placed neighbours and, per block, its best variant (recomputed only when the slot gains a
    neighbour); the slot whose best block is most distinct from its second-best block is filled next,
    among the slots whose best block is a best buddy of a placed neighbour when there are any (Paikin
    & Tal over variants). ``fixed_frame`` as in :func:`_place`.
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
    best: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}       # slot -> per block: min, argmin variant
    buddies: dict[tuple[int, int], set[int]] = {}                         # slot -> blocks proposed as best buddies
    free_block = np.ones(nb, bool)
    bbox = [ch, -1, cw, -1]                                               # ymin, ymax, xmin, xmax

    def put(y: int, x: int, piece: int) -> None:
        placed[y, x] = piece
        free_block[piece // nv] = False
        bbox[:] = [min(bbox[0], y), max(bbox[1], y), min(bbox[2], x), max(bbox[3], x)]
        for d in (cost, count, best, buddies):
            d.pop((y, x), None)
        for r, (dy, dx) in enumerate(_STEPS):
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


def _refine_variants(grid: np.ndarray, pieces: np.ndarray, models: list[dict[str, np.ndarray]], V: _Variants,
                     rounds: int = 4, near: int = 1, keep_min: int = 4) -> tuple[np.ndarray, float]:
    """:func:`_refine` for piece-variants: segments (best-buddy-connected, between the pieces as
    oriented now) keep their pieces' variants; free cells are refilled by :func:`_place_variants`, so
    a free piece may take any variant; swaps keep variants."""
    gh, gw = grid.shape
    e = _grid_energy(models, grid)
    local = np.arange(gh * gw).reshape(gh, gw)
    for _ in range(rounds):
        D = _dissimilarities(pieces[grid.ravel()])                        # the pieces as oriented now
        M, BB = _compatibility(D)
        moves = _segment_moves(grid, _segments(local, BB), near, keep_min)
        if moves is None:
            break
        cands = [_place_variants(V, gh, gw, cells, fixed_frame=True) for cells in moves] + [grid]
        best = min(cands, key=lambda g: _grid_energy(models, g))
        best = best.ravel()[_swap_descent(local, _dissimilarities(pieces[best.ravel()]))]
        e2 = _grid_energy(models, best)
        if not e2 < e:
            break
        grid, e = best, e2
    return grid, e


def _solve_variants(image: np.ndarray, block: int, variants: dict[str, bool],
                    starts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variant greedy + refinement from the ``starts`` best-ranked first blocks
    (:meth:`_Variants.starts`); keeps the arrangement with the lowest total MGC. Returns
    ``(reconstruction, grid_blocks, grid_variants)`` (variant indices in :func:`block_variants` order)."""
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, nv = _pieces(image, block, variants)
    nb = gh * gw
    if nb < 2:
        grid = np.zeros((gh, gw), dtype=np.int64)
        return _assemble(pieces, grid), grid, grid.copy()
    models = _models(pieces)
    V = _Variants(pieces, models, block, variants)
    best = None
    for s in V.starts()[:max(starts, 1)]:
        grid = _place_variants(V, gh, gw, {(0, 0): int(s) * nv}, fixed_frame=False)
        grid, e = _refine_variants(grid, pieces, models, V)
        if best is None or e < best[1]:
            best = (grid, e)
    grid = best[0]
    return _assemble(pieces, grid), grid // nv, grid % nv


def solve_best(image: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
               colors: bool = False, restarts: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scrambling alone: :func:`solve_translation` from ``restarts`` first pieces. With per-block
    variants: the variant greedy and refinement from the ``restarts`` best-ranked first blocks,
    keeping the lowest total MGC."""
    if not (rotations or negpos or colors):
        return solve_translation(image, block, starts=restarts)
    return _solve_variants(image, block, dict(rotations=rotations, negpos=negpos, colors=colors), restarts)


def jigsaw_attack(ciphertexts: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
                  colors: bool = False, restarts: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Solve every image of a batch: ``(reconstructions (N, H, W, 3), placed block ids (N, gh, gw))``."""
    out = [solve_best(im, block, rotations, negpos, colors, restarts) for im in np.asarray(ciphertexts)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


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
