"""`ahmad-diffusion`: Ahmad & Shin's learnable pixel-based encryption with diffusion (eq. 2-4).

With ``s_i`` the logistic-map keystream (eq. 1, 3; :mod:`lcrypt.schemes.chaos`) and ``k_i`` a uniform
binary key, each cipher value is chained on its left neighbour in the same row, eq. (4):

    c(x,y) = p(x,y) ⊕ c(x−1,y)                               if k_i = 0
    c(x,y) = s_i ⊕ ((p(x,y) + s_i) mod 256) ⊕ c(x−1,y)        if k_i = 1   (eq. 2)

``ratio=1.0`` is "Proposed 100%" (eq. 4 as it stands). ``ratio=0.5`` is "Proposed 50%": the k_i = 0
branch becomes the identity ``c = p`` (so only the key-selected half is substituted and chained).
Choices written down: every value of every colour channel is one "pixel" with its own k_i and s_i;
the chain runs along x (columns) inside each row and channel; ``c(−1, y)`` is a key-derived byte per
(row, channel). Encryption is a segmented prefix-XOR in log2(W) vectorised steps (see ``_Chain``);
decryption needs no scan at all because c(x−1, y) is known. Key space: μ, d_0 (2 × 52 bits) plus 3n key bits.
The chain makes every value depend on its row's past, so only mixup and CutMix are declared.
"""

from __future__ import annotations

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import Scheme, SchemeInfo
from lcrypt.schemes.chaos import logistic_keystream
from lcrypt.schemes.cpbe import CHAOS_KEY_BITS


class _Chain:
    """The eq. (4) chain for one image shape, as a segmented prefix-XOR along each row.

    With ``u = s ⊕ ((p + s) mod 256)`` where k = 1 and ``u = p`` where k = 0, eq. (4) unrolls to
    ``c_x = u_z ⊕ … ⊕ u_x`` from the start z of x's segment: segments start at the row's first value
    (whose chain input is the IV) and, for ``ratio=0.5``, at every identity value (k = 0, c = p).
    The segments depend on the key only, so the scan runs as log2(W) whole-array steps
    (Hillis-Steele) with precomputed masks instead of a Python loop over columns.
    """

    def __init__(self, s: np.ndarray, k: np.ndarray, iv: np.ndarray, full: bool):
        self.s, self.k, self.iv, self.full = s, k, iv, full   # s, k: (H, W, C); iv: (H, C)
        self.kmask = k.astype(np.uint8) * np.uint8(255)       # bit blends: np.where is 10x slower here
        h, w, c = s.shape
        self.start_iv = np.zeros((h, w, c), dtype=np.uint8)   # XORed into the first value of a row
        self.start_iv[:, 0] = np.where(k[:, 0] | full, iv, 0)
        starts = np.zeros((h, w, c), dtype=bool) if full else ~k
        starts[:, 0] = True
        self.steps = []                                       # (distance, mask) per scan step
        d = 1
        while d < w:
            self.steps.append((d, np.where(starts[:, d:], 0, 255).astype(np.uint8)))
            starts = starts.copy()
            starts[:, d:] |= starts[:, :-d]
            d *= 2

    def forward(self, p: np.ndarray) -> np.ndarray:
        sub = self.s ^ (p + self.s)                           # eq. (2) without the chain term
        v = p ^ ((sub ^ p) & self.kmask) ^ self.start_iv      # u = sub where k = 1, else p
        for d, mask in self.steps:
            v[:, :, d:] ^= v[:, :, :-d] & mask
        return v

    def inverse(self, c: np.ndarray) -> np.ndarray:
        iv = np.broadcast_to(self.iv[None, :, None], (c.shape[0], c.shape[1], 1, c.shape[3]))
        prev = np.concatenate([iv, c[:, :, :-1]], axis=2)
        t = c ^ prev
        unsub = (t ^ self.s) - self.s                         # invert eq. (2): p = (t ⊕ s) − s
        other = t if self.full else c
        return other ^ ((unsub ^ other) & self.kmask)


class AhmadDiffusion(Scheme):
    name = "ahmad-diffusion"
    PARAMS = {"ratio": 1.0}
    ALLOWED = {"ratio": (0.5, 1.0)}

    @property
    def info(self) -> SchemeInfo:
        ratio = self.params["ratio"]
        return SchemeInfo(
            name=self.name, paper="Ahmad & Shin, eq. (1)-(4)",
            summary=f"logistic-map substitution chained on the previous cipher pixel ({ratio:.0%} variant)",
            block_size=None, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: CHAOS_KEY_BITS + 3 * h * w,
            augmentations=("mixup", "cutmix"), aug_grid=1,
            steps=("keystream-substitution", "chained-diffusion"),
            key_form="row-chain" if ratio == 1.0 else "row-chain-partial",
        )

    def build(self, key: Key, shape: tuple[int, int, int]) -> _Chain:
        h, w, c = shape
        n = h * w * c
        s = logistic_keystream(key, self.derivation("logistic", shape), n).reshape(shape)
        k = key.bits(self.derivation("select", shape), n).reshape(shape)
        iv = key.stream(self.derivation("iv", shape), h * c).reshape(h, c)
        return _Chain(s, k, iv, full=self.params["ratio"] == 1.0)
