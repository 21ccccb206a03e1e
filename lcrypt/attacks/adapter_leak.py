"""What an owner adapter leaks: another owner's key, read off the model's per-owner input layers.

Threat model: the model holder (the server, or anyone the model is shared with) who also holds one
owner's key: a participant, whose own owner's adapter is the reference. The model has one input layer
per owner (``training.train --owner-adapters``) in front of one shared body.

Why it can work: for a cipher that applies the same pixel shuffle P and sign flips S in every M×M block
(``block-shuffle``; negative-positive is a sign flip after normalising), a patch embedding with patch = M
that fits owner o is E_o = E·P_oᵀ·S_o for one E the body expects. Two owners' layers then differ only by a
signed permutation of their input columns: E_b = E_a·Q with Q = S_a·P_a·P_bᵀ·S_b, and Q maps owner b's
ciphertext blocks to owner a's (x'_a = Q·x'_b). Matching the columns of the two layers (:func:`match_columns`)
recovers Q; with owner a's key the participant then decrypts owner b's images
(:func:`to_reference_domain`).
Training only approaches E_b = E_a·Q, so the match is measured, not assumed.

Where it cannot: a per-owner layer shared by every position holds no per-position key (pe's per-pixel
signs, etc's per-block rotations and colour shuffles, block scrambling under ConvMixer), and le's nibble
flips are not linear in the pixel value; there the adapter is a learned approximation and this attack has
no columns to match. Everything works on plain arrays (the weights as numpy), so lcrypt needs no training
code.
"""

from __future__ import annotations

import numpy as np


def match_columns(reference: np.ndarray, adapter: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(perm, sign, score)`` with ``adapter[:, j] ≈ sign[j] · reference[:, perm[j]]``: a signed
    permutation of the input columns of two ``(out, in)`` first-layer weight matrices, matched greedily
    on the absolute correlation of the columns (highest first, each column used once); ``score`` is the
    matched absolute correlation, the confidence of each column."""
    r = reference - reference.mean(0)
    a = adapter - adapter.mean(0)
    r = r / np.maximum(np.linalg.norm(r, axis=0), 1e-12)
    a = a / np.maximum(np.linalg.norm(a, axis=0), 1e-12)
    corr = r.T @ a  # (in_ref, in_adapter)
    d = corr.shape[1]
    order = np.argsort(-np.abs(corr), axis=None)
    perm = np.full(d, -1)
    used_r = np.zeros(corr.shape[0], bool)
    for flat in order:  # greedy assignment: at most in_ref * in_adapter cheap steps, stops when full
        i, j = divmod(int(flat), d)
        if perm[j] < 0 and not used_r[i]:
            perm[j], used_r[i] = i, True
            if (perm >= 0).all():
                break
    cols = np.arange(d)
    return perm, np.sign(corr[perm, cols]).astype(np.int8), np.abs(corr[perm, cols])


def block_columns(weight: np.ndarray) -> np.ndarray:
    """A patch embedding's ``(out, 3, M, M)`` convolution weight as ``(out, M·M·3)`` columns in the
    pixel-major, channel-fastest order of one block of an ``(H, W, 3)`` image."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def to_reference_domain(cipher: np.ndarray, perm: np.ndarray, sign: np.ndarray, block: int) -> np.ndarray:
    """Owner b's uint8 ``(N, H, W, 3)`` ciphertexts moved into the reference owner's cipher domain with
    the recovered signed permutation (block-wise, every block alike): value j of each block goes to
    position ``perm[j]``, inverted (v -> 255 - v) where ``sign[j]`` is negative."""
    n, h, w, c = cipher.shape
    m = block
    blocks = cipher.reshape(n, h // m, m, w // m, m, c).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, h // m, w // m, -1)
    flipped = np.where(sign < 0, 255 - blocks, blocks).astype(np.uint8)
    out = np.empty_like(flipped)
    out[..., perm] = flipped
    return out.reshape(n, h // m, w // m, m, m, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def relative_key_recovered(perm: np.ndarray, sign: np.ndarray, true_perm: np.ndarray,
                           true_sign: np.ndarray) -> float:
    """The share of block positions whose recovered target and sign are both the true relative key's."""
    return float(np.mean((perm == true_perm) & (sign == true_sign)))
