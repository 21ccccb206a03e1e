"""Jigsaw-puzzle solver against block scrambling (EtC, and the scrambling step of ELE).

Block scrambling keeps every block's content, so an attacker can try to re-assemble the puzzle from
edge compatibility alone (Chuman, Kurihara & Kiya, ICASSP 2017, extended to unknown per-block
rotation/inversion, negative-positive transform and colour shuffle). Ours is a greedy placer:

* **pieces**: every cipher block under every variant the scheme may have applied — 1 for scrambling
  alone; 8 rotations/flips × 2 signs × 6 colour orders = 96 for full EtC;
* **compatibility**: prediction-based L1 dissimilarity across the shared edge, both ways
  (``|2·a_edge − a_inner − b_edge| + |2·b_edge − b_inner − a_edge|`` summed over the edge);
* **placement** (Prim-like): start from one piece at the centre of a (2·gh−1)×(2·gw−1) canvas; each
  empty slot next to the placed region keeps the summed dissimilarity of every piece against its placed
  neighbours (updated incrementally, a vectorised pass over all pieces per new neighbour); the slot
  whose best block is most distinct from its second-best block is filled next; the placed region may
  not outgrow the gh×gw grid.

The result is defined up to one global symmetry (rotation/flip, colour order, sign) that no edge
criterion fixes; :func:`resolve_global_dihedral` lets an oracle pick it (generous to the attacker,
stated in the report). :func:`scramble_only` builds the EtC variant with steps 2–4 off, from EtC's own
step-1 derivation and the block helpers of :mod:`lcrypt.schemes.base`, for the solver's own test.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import IndexMap, block_index
from lcrypt.schemes.etc import EtC
from lcrypt.attacks.known_plaintext import block_variants


def scramble_only(key: Key, shape: tuple[int, int, int], block: int = 16) -> IndexMap:
    """EtC with only step 1 (block scrambling), keyed exactly as EtC's K1."""
    h, w, c = shape
    blk = block_index(h, w, block, c)
    perm = key.permutation(EtC(block_size=block).derivation("K1-scramble", shape), len(blk))
    g = np.empty(h * w * c, dtype=np.intp)
    g[blk] = blk[perm]
    return IndexMap(shape).gather(g)


def _pieces(image: np.ndarray, block: int, variants: dict[str, bool]) -> np.ndarray:
    """(nb·V, b, b, 3) float32: every block under every variant (block-major)."""
    h, w, _ = image.shape
    blk = block_index(h, w, block, 3)
    offs, signs = block_variants(block, **variants)
    vals = image.reshape(-1)[blk]                                         # (nb, b·b·3)
    pieces = vals[:, offs] ^ signs[None, :, None]                         # (nb, V, b·b·3)
    return pieces.reshape(-1, block, block, 3).astype(np.float32), len(offs)


def _edges(pieces: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """side -> (edge, inner neighbour line) flattened per piece, for the prediction dissimilarity."""
    n = len(pieces)
    f = lambda a: np.ascontiguousarray(a).reshape(n, -1)
    return {"top": (f(pieces[:, 0]), f(pieces[:, 1])), "bottom": (f(pieces[:, -1]), f(pieces[:, -2])),
            "left": (f(pieces[:, :, 0]), f(pieces[:, :, 1])), "right": (f(pieces[:, :, -1]), f(pieces[:, :, -2]))}


_OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
_STEP = {"top": (-1, 0), "bottom": (1, 0), "left": (0, -1), "right": (0, 1)}


def _dissimilarity(e: np.ndarray, i: np.ndarray, oe: np.ndarray, oi: np.ndarray) -> np.ndarray:
    """Prediction dissimilarity of one edge (e, inner line i) against many (oe, oi): L1 error of each
    side's half-step extrapolation across the seam, both ways (the best of several we compared on
    Imagenette: 73% of blocks' best right-hand match is the true one, vs 69-71% for full-step
    prediction, plain L1, or Pomeranz's (L_0.3)^q)."""
    return (np.abs(1.5 * e - 0.5 * i - oe).sum(axis=-1) + np.abs(1.5 * oe - 0.5 * oi - e).sum(axis=-1))


def solve_translation(image: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scrambling alone (no per-block variant): Kruskal-style cluster merging (Gallagher, CVPR 2012).

    Every left-right and top-bottom block pair gets a dissimilarity, divided by the second-best
    alternative of both edges (so distinctive matches come first); pairs are taken best first, and two
    clusters merge when the pair's relation places them without overlap inside the gh×gw grid.
    Clusters that never merge are appended in the free cells last.
    """
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, _ = _pieces(image, block, dict(rotations=False, negpos=False, colors=False))
    nb = len(pieces)
    ed = _edges(pieces)
    rel = {}
    for name, a, b in (("right", "right", "left"), ("down", "bottom", "top")):
        e, i = ed[a]
        oe, oi = ed[b]
        d = _dissimilarity(e[:, None], i[:, None], oe[None], oi[None])    # (nb, nb): row left/above col
        np.fill_diagonal(d, np.inf)
        second_row = np.partition(d, 1, axis=1)[:, 1:2]
        second_col = np.partition(d, 1, axis=0)[1:2, :]
        rel[name] = d / (np.minimum(second_row, second_col) + 1e-6)
    step = {"right": (0, 1), "down": (1, 0)}
    order = np.argsort(np.concatenate([rel["right"].ravel(), rel["down"].ravel()]), kind="stable")
    owner = list(range(nb))                                              # cluster id per block
    members = {k: {k: (0, 0)} for k in range(nb)}                        # cluster -> block -> (y, x)
    cellsets = {k: {(0, 0)} for k in range(nb)}
    merges = 0
    for flat in order:
        if merges == nb - 1:
            break
        name = "right" if flat < nb * nb else "down"
        a, b = divmod(int(flat) % (nb * nb), nb)
        ca, cb = owner[a], owner[b]
        if ca == cb:
            continue
        A, B = members[ca], members[cb]
        dy, dx = step[name]
        oy, ox = A[a][0] + dy - B[b][0], A[a][1] + dx - B[b][1]
        moved = {k: (y + oy, x + ox) for k, (y, x) in B.items()}
        cells = cellsets[ca]
        if any(v in cells for v in moved.values()):
            continue
        ys = [y for y, _ in cells] + [y for y, _ in moved.values()]
        xs = [x for _, x in cells] + [x for _, x in moved.values()]
        if max(ys) - min(ys) >= gh or max(xs) - min(xs) >= gw:
            continue
        if len(B) > len(A):                                              # keep the larger dict
            A, B, ca, cb = B, A, cb, ca
            moved = {k: (y - oy, x - ox) for k, (y, x) in B.items()}
        A.update(moved)
        cellsets[ca] = set(A.values())
        del cellsets[cb]
        for k in B:
            owner[k] = ca
        del members[cb]
        merges += 1
    grid = -np.ones((gh, gw), dtype=np.int64)
    clusters = sorted(members.values(), key=len, reverse=True)
    main = clusters[0]
    y0, x0 = min(y for y, _ in main.values()), min(x for _, x in main.values())
    for k, (y, x) in main.items():
        grid[y - y0, x - x0] = k
    rest = [k for c in clusters[1:] for k in sorted(c, key=c.get)]
    grid[grid < 0] = rest
    recon = pieces[grid.ravel()].reshape(gh, gw, block, block, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, 3)
    return recon.astype(np.uint8), grid, np.zeros_like(grid)


def solve(image: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
          colors: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reassemble one scrambled image (H, W, 3) uint8.

    Returns ``(reconstruction, grid_blocks, grid_variants)``: the image, and for every grid cell the
    cipher block index placed there and the variant index used (into :func:`block_variants` order).
    """
    h, w, _ = image.shape
    gh, gw = h // block, w // block
    pieces, nv = _pieces(image, block, dict(rotations=rotations, negpos=negpos, colors=colors))
    nb = gh * gw
    edges = _edges(pieces)
    ch, cw = 2 * gh - 1, 2 * gw - 1
    placed = -np.ones((ch, cw), dtype=np.int64)                           # piece index per canvas cell
    cost = {}                                                             # slot -> summed dissimilarity (P,)
    count = {}
    free_block = np.ones(nb, bool)
    bbox = [gh - 1, gh - 1, gw - 1, gw - 1]                               # ymin, ymax, xmin, xmax

    def place(y: int, x: int, piece: int) -> None:
        placed[y, x] = piece
        free_block[piece // nv] = False
        bbox[:] = [min(bbox[0], y), max(bbox[1], y), min(bbox[2], x), max(bbox[3], x)]
        cost.pop((y, x), None)
        count.pop((y, x), None)
        for side, (dy, dx) in _STEP.items():
            yy, xx = y + dy, x + dx
            if not (0 <= yy < ch and 0 <= xx < cw) or placed[yy, xx] >= 0:
                continue
            e, i = edges[side][0][piece], edges[side][1][piece]           # this piece's edge facing the slot
            oe, oi = edges[_OPPOSITE[side]]                               # every piece's facing edge
            d = _dissimilarity(e, i, oe, oi)
            cost[(yy, xx)] = cost.get((yy, xx), 0) + d
            count[(yy, xx)] = count.get((yy, xx), 0) + 1

    place(gh - 1, gw - 1, seed * nv)
    for _ in range(nb - 1):
        slots = [s for s in cost if max(bbox[1], s[0]) - min(bbox[0], s[0]) < gh
                 and max(bbox[3], s[1]) - min(bbox[2], s[1]) < gw]
        avg = np.stack([cost[s] / count[s] for s in slots]).reshape(len(slots), nb, nv)
        per_block = avg.min(axis=2)
        per_block[:, ~free_block] = np.inf
        if free_block.sum() >= 2:
            two = np.partition(per_block, 1, axis=1)[:, :2]
            conf = (two[:, 0] + 1.0) / (two[:, 1] + 1.0)
        else:
            conf = per_block.min(axis=1)
        conf = conf ** np.array([count[s] for s in slots])                # more neighbours, more evidence
        k = int(np.argmin(conf))
        b = int(per_block[k].argmin())
        v = int(avg[k, b].argmin())
        place(*slots[k], b * nv + v)
    grid = placed[bbox[0]:bbox[0] + gh, bbox[2]:bbox[2] + gw]
    recon = pieces[grid.ravel()].reshape(gh, gw, block, block, 3).transpose(0, 2, 1, 3, 4).reshape(h, w, 3)
    return recon.astype(np.uint8), grid // nv, grid % nv


def seam_cost(image: np.ndarray, block: int) -> float:
    """Total dissimilarity across every internal block seam of an arrangement: what the attacker
    minimises to choose between candidate solutions (it needs no key)."""
    x = image.astype(np.float32)
    cols = np.arange(block, x.shape[1], block)
    rows = np.arange(block, x.shape[0], block)
    cost = _dissimilarity(x[:, cols - 1], x[:, cols - 2], x[:, cols], x[:, cols + 1]).sum() if len(cols) else 0.0
    if len(rows):
        cost += _dissimilarity(x[rows - 1], x[rows - 2], x[rows], x[rows + 1]).sum()
    return float(cost)


def solve_best(image: np.ndarray, block: int, rotations: bool = False, negpos: bool = False,
               colors: bool = False, restarts: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several solutions (cluster merging when there are no per-block variants, greedy placement from
    ``restarts`` seeds), keeping the one with the lowest :func:`seam_cost`."""
    nb = (image.shape[0] // block) * (image.shape[1] // block)
    seeds = np.linspace(0, nb - 1, max(restarts, 1)).astype(int)
    cands = [solve(image, block, rotations, negpos, colors, seed=int(s)) for s in seeds]
    if not (rotations or negpos or colors):
        cands.append(solve_translation(image, block))
    return min(cands, key=lambda c: seam_cost(c[0], block))


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
