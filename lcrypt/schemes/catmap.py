"""`catmap`: the combined cat map image cipher, Tanaka 2018's conventional-cipher baseline ([9]).

A conventional chaotic cipher in the permutation-diffusion form of the cat-map image ciphers Tanaka
cites (Chen, Mao & Chui 2004 family). Each of ``ROUNDS`` = 1 round(s) does:

1. confusion: move every pixel of the N×N image by the generalised Arnold cat map
   ``(x, y) → (x + a·y, b·x + (a·b + 1)·y) mod N`` (det = 1, so a bijection), iterated t times, with
   a, b ∈ [1, N) and t ∈ [1, 8] drawn from the key;
2. diffusion: chain the bytes in raster order (channel fastest),
   ``c_i = (c_{i−1} + p_i + s_i) mod 256`` with ``c_{−1} = 0`` and s a keystream byte per position,
   i.e. ``c = cumsum(p + s) mod 256`` — vectorised, and inverted by a first difference.

Tanaka shows it is *not* learnable (CIFAR-10: 0.468 vs 0.884 plain): every pixel depends on all
earlier ones, so adjacent-pixel correlation is ~0. Choices written down: the cat map needs a square
image (a clear error otherwise); the rounds and the diffusion form are ours, the paper gives none.
Key space counted as the map parameters and the keystream: ROUNDS·(2·log2(N−1) + 3) + 8·N²·3 bits
(bounded in practice by the 256-bit owner key).
"""

from __future__ import annotations

import math

import numpy as np

from lcrypt.keys import Key
from lcrypt.schemes.base import Scheme, SchemeInfo, check_images

ROUNDS = 1  # one permutation-diffusion round already leaves ~0 adjacent correlation
MAX_ITERATIONS = 8


def cat_map_gather(n: int, a: int, b: int, iterations: int) -> np.ndarray:
    """Flat pixel gather of the generalised cat map on an n×n torus: ``out = in[g]``."""
    y, x = np.divmod(np.arange(n * n), n)
    step = np.empty(n * n, dtype=np.intp)
    step[((b * x + (a * b + 1) * y) % n) * n + (x + a * y) % n] = y * n + x
    g = np.arange(n * n, dtype=np.intp)
    for _ in range(iterations):
        g = g[step]
    return g


class _Rounds:
    def __init__(self, gathers: list[np.ndarray], streams: list[np.ndarray]):
        self.gathers, self.streams = gathers, streams
        self.inverses = [np.argsort(g) for g in gathers]

    def forward(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1)
        for g, s in zip(self.gathers, self.streams):
            flat = np.cumsum(np.take(flat, g, axis=1) + s, axis=1, dtype=np.uint8)
        return flat.reshape(x.shape)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        flat = y.reshape(y.shape[0], -1)
        for inv, s in zip(self.inverses[::-1], self.streams[::-1]):
            flat = np.take(np.diff(flat, axis=1, prepend=np.uint8(0)) - s, inv, axis=1)
        return flat.reshape(y.shape)


class CatMap(Scheme):
    name = "catmap"

    @property
    def info(self) -> SchemeInfo:
        return SchemeInfo(
            name=self.name, paper="Tanaka 2018 baseline [9] (combined cat map cipher)",
            summary="cat-map pixel permutation + chained diffusion over the whole image (not learnable)",
            block_size=None, invertible=True, lossless=True, jpeg_subsamplings=(),
            key_space=lambda h, w: ROUNDS * (2 * math.log2(max(h - 1, 1)) + math.log2(MAX_ITERATIONS))
            + 8 * h * w * 3,
            augmentations=("mixup", "cutmix"), aug_grid=1,
            steps=("image-permutation", "chained-diffusion"), key_form="byte-gather-cumsum",
        )

    def check(self, images: np.ndarray) -> np.ndarray:
        return check_images(images, square=True)

    def build(self, key: Key, shape: tuple[int, int, int]) -> _Rounds:
        n, _, c = shape
        gathers, streams = [], []
        for r in range(ROUNDS):
            a, b = key.integers(self.derivation(f"round{r}|ab", shape), 2, max(n - 1, 1)) + 1
            t = int(key.integers(self.derivation(f"round{r}|t", shape), 1, MAX_ITERATIONS)[0]) + 1
            pix = cat_map_gather(n, int(a), int(b), t)
            gathers.append((pix[:, None] * c + np.arange(c)).ravel())
            streams.append(key.stream(self.derivation(f"round{r}|diffusion", shape), n * n * c))
        return _Rounds(gathers, streams)
