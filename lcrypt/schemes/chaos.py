"""The logistic-map keystream shared by Ahmad & Shin's schemes (`cpbe`, `ahmad-diffusion`).

Eq. (1): ``d_i = μ · d_{i−1} · (1 − d_{i−1})``, chaotic for μ ∈ [3.57, 4]; eq. (3):
``s_i = ((d_i / 2) · 10^14) mod 256``. μ and d_0 are the secret; here both come from an HKDF sub-key.

Choices written down: μ is drawn from [3.9, 4.0) (the papers allow [3.57, 4], whose low end has
periodic windows and a Lyapunov exponent near zero), d_0 from (0.01, 0.99), and the first 1,000
iterates are discarded as transient. The map runs in IEEE-754 double precision one step at a time,
which is bit-reproducible on every platform; it is computed once per (key, image shape) and cached by
the scheme, so the sequential loop is not on the per-image path.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key

BURN_IN = 1000


def logistic_sequence(mu: float, d0: float, n: int, burn_in: int = BURN_IN) -> np.ndarray:
    """``n`` iterates of the logistic map (eq. 1) after ``burn_in`` discarded ones."""
    d = d0
    for _ in range(burn_in):
        d = mu * d * (1.0 - d)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        d = mu * d * (1.0 - d)
        out[i] = d
    return out


def keystream_bytes(d: np.ndarray) -> np.ndarray:
    """Eq. (3): ``s_i = floor((d_i / 2) · 10^14) mod 256``."""
    return (np.floor(d / 2.0 * 1e14) % 256).astype(np.uint8)


def logistic_keystream(key: Key, info: str, n: int) -> np.ndarray:
    """``n`` keystream bytes from a logistic map whose μ and d_0 derive from ``key`` and ``info``."""
    u = key.unit_floats(info + "|mu,d0", 2)
    mu = 3.9 + 0.1 * u[0]
    d0 = 0.01 + 0.98 * u[1]
    return keystream_bytes(logistic_sequence(mu, d0, n))
