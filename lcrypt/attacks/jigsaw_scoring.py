"""How well two puzzle pieces fit: Gallagher's Mahalanobis Gradient Compatibility (MGC) and Paikin &
Tal's mutual compatibility and best buddies, for the jigsaw solver (:mod:`lcrypt.attacks.jigsaw`).

MGC ("Jigsaw puzzles with pieces of unknown orientation", Gallagher, CVPR 2012): for the side of a piece
facing a neighbour, the colour gradients across its last two pixel-line pairs give a mean ``μ``
(outermost pair) and a 3×3 covariance ``S`` (both pairs, plus Gallagher's nine dummy gradients, scaled
×4, so that flat edges keep ``S`` invertible); the gradient across the seam, ``neighbour edge − own
edge`` pixel by pixel, is scored by ``Σ (g − μ) S⁻¹ (g − μ)ᵀ``, both ways. Expanding the quadratic form
turns all n×n pairs into three matrix products. It predicts the true neighbour far better than raw
pixel differences on JPEG images, whose 8×8 DCT grid lies on every seam (docs/benchmarks.md,
"Jigsaw solver").
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.jigsaw_pieces import grid_pieces

# Gallagher's dummy gradients (they keep S invertible on flat edges), scaled ×4 (the scale that
# predicted true neighbours best; docs/benchmarks.md)
_DUMMY = 4.0 * np.array([[0, 0, 0], [1, 1, 1], [-1, -1, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
                         [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=np.float64)
# added to D and to the second-best D in the compatibility ratio: a tie at zero (two flat, saturated
# edges) then means no confidence rather than full confidence
_EPS = 1.0


def _side_model(pieces: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """MGC terms of side r of every piece, for :func:`mgc`'s matrix-product form.

    With x = the other piece's edge line, u = own edge + μ and A = S⁻¹, the one-way score
    Σ_rows (x − u) A (x − u)ᵀ = <A, xᵀx> − 2 <u A, x> + Σ_rows u A uᵀ.
    """
    b = pieces.shape[1]
    k1, k2 = min(1, b - 1), min(2, b - 1)
    line = {0: lambda k: pieces[:, :, b - 1 - k], 1: lambda k: pieces[:, b - 1 - k],
            2: lambda k: pieces[:, :, k], 3: lambda k: pieces[:, k]}[r]        # k-th line in from side r
    edge, inner, inner2 = (np.asarray(line(k), np.float64) for k in (0, k1, k2))
    n = len(edge)
    grad = edge - inner                                                   # (n, b, 3), pointing outwards
    mu = grad.mean(axis=1)
    dummy = np.broadcast_to(_DUMMY, (n, len(_DUMMY), 3))
    samples = np.concatenate([grad, inner - inner2, dummy], axis=1)
    centred = samples - samples.mean(axis=1, keepdims=True)
    a = np.linalg.inv(centred.transpose(0, 2, 1) @ centred / (samples.shape[1] - 1))
    u = edge + mu[:, None]
    ua = u @ a
    return {"e": edge.reshape(n, -1), "E": (edge.transpose(0, 2, 1) @ edge).reshape(n, 9),
            "A": a.reshape(n, 9), "UA": ua.reshape(n, -1), "c": (ua * u).sum(axis=(1, 2))}


def side_models(pieces: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The MGC terms of the four sides (right, bottom, left, top) of every piece."""
    return [_side_model(pieces, r) for r in range(4)]


def take(model: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    """The terms of the pieces ``idx`` only."""
    return {k: v[idx] for k, v in model.items()}


def _one_way(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    return a["A"] @ o["E"].T - 2.0 * a["UA"] @ o["e"].T + a["c"][:, None]


def mgc(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    """(len a, len o) MGC of every piece side in ``a`` against every facing side in ``o``."""
    return np.maximum(_one_way(a, o) + _one_way(o, a).T, 0.0)


def mgc_pairs(a: dict[str, np.ndarray], o: dict[str, np.ndarray]) -> np.ndarray:
    """MGC of aligned pairs (a[k] against o[k])."""
    def one(p: dict[str, np.ndarray], q: dict[str, np.ndarray]) -> np.ndarray:
        return (p["A"] * q["E"]).sum(1) - 2.0 * (p["UA"] * q["e"]).sum(1) + p["c"]

    return np.maximum(one(a, o) + one(o, a), 0.0)


def dissimilarities(pieces: np.ndarray) -> list[np.ndarray]:
    """D[r][i, j]: MGC of piece j placed on side r of piece i (diagonal = inf)."""
    m = side_models(pieces)
    right, down = mgc(m[0], m[2]), mgc(m[1], m[3])
    np.fill_diagonal(right, np.inf)
    np.fill_diagonal(down, np.inf)
    return [right, down, right.T, down.T]


def seam_cost(image: np.ndarray, block: int) -> float:
    """Total MGC across every internal block seam of an arrangement: what the attacker minimises to
    choose between candidate solutions (it needs no key)."""
    h, w, _ = image.shape
    return grid_energy(side_models(grid_pieces(image, block)), np.arange((h // block) * (w // block))
                       .reshape(h // block, w // block))


def compatibility(D: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Paikin & Tal: mutual compatibility M[r][i, j] and best buddies BB[r][i] (-1 when none).

    Compatibility is ``1 − (D + 1) / (second-best D + 1)`` of the side, averaged both ways; two pieces are
    best buddies when each is the other's best match ("Solving multiple square jigsaw puzzles with
    missing pieces", Paikin & Tal, CVPR 2015).
    """
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


def grid_energy(models: list[dict[str, np.ndarray]], grid: np.ndarray) -> float:
    """Total MGC of every internal seam of a grid of piece indices (into ``models``)."""
    cost = 0.0
    if grid.shape[1] > 1:
        cost += mgc_pairs(take(models[0], grid[:, :-1].ravel()),
                          take(models[2], grid[:, 1:].ravel())).sum()
    if grid.shape[0] > 1:
        cost += mgc_pairs(take(models[1], grid[:-1].ravel()), take(models[3], grid[1:].ravel())).sum()
    return float(cost)
