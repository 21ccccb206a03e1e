"""Folding a block-wise key into a model's first layers: the algebra behind ``convert-model``.

A scheme folds when, for a fixed image shape, its effective key (``c[t] = p[src[t]] ^ mask[t]``) is
a block permutation σ followed by one in-block transform shared by every block: a value permutation
P and a negative-positive S (XOR with 255 on fixed in-block positions). :func:`block_key` finds σ, P
and S from any scheme's gather and XOR, or says in one line why there are none (EtC's per-block
rotations, signs and colour orders differ from block to block; a keystream XOR is not 255 − v).

Normalised inputs x̂ = (x/255 − m_c)/s_c (per colour c). For cipher position t holding plain in-block
value u = src[t] (or its negative), the plain input is affine in the cipher input:
``x̂_u = a_t·ĉ_t + d_t`` with ``a_t = ±s_{c(t)}/s_{c(u)}`` (− where flipped) and
``d_t = (flip_t·(1 − 2·m_{c(t)}) + m_{c(t)} − m_{c(u)})/s_{c(u)}``. A linear patch embedding
``y = W·x̂ + b`` on plain blocks is therefore ``y = W'·ĉ + b'`` on cipher blocks with
``W'[:, t] = a_t·W[:, src[t]]`` and ``b' = b + Σ_t W[:, src[t]]·d_t`` (Kiya et al. 2022: E' = E·Pᵀ·S).
Under mean = std = 0.5 every a_t is ±1 and every d_t is 0: columns are only moved and negated, so
the converted model computes the same sums in another order. Under [0, 1] scaling (mean 0, std 1)
a flip needs ``d_t = 1``, the bias correction. σ moves the position-embedding rows of a ViT whose
patch is the block (prefix tokens such as the class token stay).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lcrypt.schemes.base import block_index
from lcrypt.schemes.blockwise import BlockKey


class NotFoldable(ValueError):
    """A scheme/key whose effect is not one in-block transform shared by all blocks (one-line reason)."""


def block_key(src: np.ndarray, mask: np.ndarray, shape: tuple[int, int, int], block: int) -> BlockKey:
    """σ, P and S of an effective key over the bytes of images of ``shape``, or :class:`NotFoldable`."""
    h, w, c = shape
    if h % block or w % block:
        raise NotFoldable(f"a {h}x{w} image is not a whole number of {block}x{block} blocks")
    blk = block_index(h, w, block, c)
    nb, n = blk.shape
    owner = np.empty(h * w * c, dtype=np.intp)
    offset = np.empty(h * w * c, dtype=np.intp)
    owner[blk] = np.arange(nb)[:, None]
    offset[blk] = np.arange(n)[None, :]
    s = np.asarray(src)[blk]
    from_block, at = owner[s], offset[s]
    if not np.all(from_block == from_block[:, :1]):
        raise NotFoldable("values of one cipher block come from several plain blocks (not block-wise)")
    if not np.all(at == at[:1]):
        raise NotFoldable("the in-block rearrangement differs from block to block (per-block variants "
                          "cannot fold into one shared patch embedding)")
    m = np.asarray(mask)[blk]
    if not np.all((m == 0) | (m == 255)):
        raise NotFoldable("values are XORed with bytes other than 255 (not a negative-positive flip, "
                          "not affine in the pixel values)")
    if not np.all(m == m[:1]):
        raise NotFoldable("the negative-positive pattern differs from block to block")
    return BlockKey(block, from_block[:, 0].copy(), at[0].copy(), m[0] == 255)


def _per_position(values: float | Sequence[float], channels: int, n: int) -> np.ndarray:
    v = np.broadcast_to(np.asarray(values, dtype=np.float64).reshape(-1), (channels,))
    return v[np.arange(n) % channels]


def fold_patch_embedding(weight: np.ndarray, bias: np.ndarray | None, key: BlockKey,
                         mean: float | Sequence[float] = 0.5, std: float | Sequence[float] = 0.5,
                         inverse: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W', b')`` of a patch embedding (a ``(D, C, B, B)`` convolution with stride B) for cipher
    blocks; ``inverse=True`` takes a converted ``(W', b')`` back to plain blocks (for re-keying).

    A bias is needed when a flip moves it (``d`` non-zero); then ``bias=None`` is refused."""
    d_out, c, kh, kw = weight.shape
    if (kh, kw) != (key.block, key.block):
        raise NotFoldable(f"patch size {kh}x{kw} is not the block size {key.block}")
    n = c * kh * kw
    flat = np.asarray(weight, dtype=np.float64).transpose(0, 2, 3, 1).reshape(d_out, n)   # (row, col, colour)
    m, s = _per_position(mean, c, n), _per_position(std, c, n)
    u = key.src
    sign = np.where(key.flip, -1.0, 1.0)
    a = sign * s / s[u]
    d = (key.flip * (1.0 - 2.0 * m) + m - m[u]) / s[u]
    if inverse:
        plain = np.empty_like(flat)
        plain[:, u] = flat / a
        out, shift = plain, -(plain[:, u] @ d)
    else:
        out, shift = flat[:, u] * a, flat[:, u] @ d
    if np.any(d != 0) and bias is None:
        raise NotFoldable("this normalisation moves the bias, and the patch embedding has none")
    new_bias = None if bias is None else np.asarray(bias, dtype=np.float64) + shift
    return out.reshape(d_out, kh, kw, c).transpose(0, 3, 1, 2), new_bias


def fold_positions(pos: np.ndarray, key: BlockKey, inverse: bool = False) -> np.ndarray:
    """A ViT's position embedding ``(T, D)`` for scrambled blocks: row ``prefix + q`` takes row
    ``prefix + σ(q)``; the first ``T − N_B`` rows (class and register tokens) stay."""
    nb = len(key.blocks)
    prefix = pos.shape[0] - nb
    if prefix < 0:
        raise NotFoldable(f"the position embedding has {pos.shape[0]} rows, fewer than the {nb} blocks")
    out = np.array(pos, copy=True)
    if inverse:
        out[prefix + key.blocks] = pos[prefix:]
    else:
        out[prefix:] = pos[prefix + key.blocks]
    return out
