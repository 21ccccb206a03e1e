"""Key recovery from a converted model: what publishing a key-converted model leaks.

Converting a model for a block-wise key (:mod:`lcrypt.folding`) only moves and negates the patch
embedding's input columns (``W'[:, t] = ±W[:, src[t]]`` under mean = std = 0.5) and moves the
position-embedding rows (``pos'[q] = pos[σ(q)]``). Whoever holds the weights it was converted from
matches them: each converted column to the public column it equals up to sign gives P and S, each
position row to the public row it equals gives σ — the whole key, from one published model, without
a single image. Matching is by cosine similarity (largest |cos| per column, largest cos per row), so a
per-channel normalisation that also scales columns is matched as well.

The consequence: converting a *publicly available* pretrained model publishes the key to anyone who
downloads both; converting a privately trained one does not leak it this way (matched against other
weights, the columns and rows pair at random). Two attacks measure both cases: ``model-conversion``
(the adversary holds the very public weights) and ``model-conversion-private`` (it holds only public
weights of another model of the same architecture). The public weights here are a ViT's patch and
position embeddings drawn like timm's initialisation (normal, std 0.02), standing in for a published
checkpoint: the matching uses nothing but that the converted tensors are copies of them.
"""

from __future__ import annotations

import numpy as np

from lcrypt.attacks.base import Attack, Outcome, Target
from lcrypt.attacks.known_plaintext import KeyEstimate
from lcrypt.schemes.base import SchemeInfo
from lcrypt.schemes.blockwise import BlockKey

FOLDABLE_STEPS = {"block-scramble", "pixel-shuffle-in-block", "value-shuffle-in-block",
                  "value-negative-positive-in-block"}
"""Steps that keep the key one in-block transform shared by all blocks (plus a block permutation)."""
WIDTH = 192  # a ViT-Tiny's embedding width


def _unit_columns(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), 1e-12)


def recover_block_key(public: dict[str, np.ndarray], converted: dict[str, np.ndarray], num_blocks: int,
                      prefix: int = 1) -> BlockKey:
    """σ, P and S from a model's public weights and the weights converted from them.

    Both dicts hold ``patch`` (D, C, B, B) and optionally ``pos`` (``prefix`` + ``num_blocks``, D), the
    class token first; without ``pos`` (a ConvMixer) σ is the identity."""
    d, c, b, _ = public["patch"].shape
    flat = lambda w: np.asarray(w, np.float64).transpose(0, 2, 3, 1).reshape(d, -1)   # noqa: E731
    cos = _unit_columns(flat(converted["patch"])).T @ _unit_columns(flat(public["patch"]))   # (t, u)
    src = np.abs(cos).argmax(axis=1)
    flip = cos[np.arange(len(src)), src] < 0
    if public.get("pos") is None or converted.get("pos") is None:
        return BlockKey(b, np.arange(num_blocks), src, flip)
    pos = np.asarray(public["pos"], np.float64)[prefix:]
    pos2 = np.asarray(converted["pos"], np.float64)[prefix:]
    blocks = (_unit_columns(pos2.T).T @ _unit_columns(pos.T)).argmax(axis=1)                # (q, r)
    return BlockKey(b, blocks, src, flip)


def public_vit(shape: tuple[int, int, int], block: int, seed: int) -> dict[str, np.ndarray]:
    """A ViT's patch embedding, bias and position embedding (class token first), drawn as timm does."""
    rng = np.random.default_rng(seed)
    nb = (shape[0] // block) * (shape[1] // block)
    return {"patch": rng.normal(0, 0.02, (WIDTH, shape[2], block, block)), "bias": np.zeros(WIDTH),
            "pos": rng.normal(0, 0.02, (1 + nb, WIDTH))}


def applies_to(info: SchemeInfo) -> bool:
    folds = bool(info.steps) and set(info.steps) <= FOLDABLE_STEPS
    return bool(info.block_size) and info.key_form == "byte-gather-xor" and folds


def _run(target: Target, private: bool) -> Outcome:
    if target.owner_convert is None:
        return Outcome(skipped="no converted model given (the owner's key does not fold into a model)")
    shape = tuple(target.cipher.shape[1:])
    b = target.scheme.info.block_size
    public = public_vit(shape, b, seed=0)
    converted = target.owner_convert(public)
    nb = (shape[0] // b) * (shape[1] // b)
    m = recover_block_key(public_vit(shape, b, seed=1) if private else public, converted, nb).index_map(shape)
    est = KeyEstimate("model-conversion", shape, m.src, m.mask)
    notes = {"method": "weight matching", "pairs": 0,
             "weights": "another model's (private)" if private else "the very public weights"}
    return Outcome(reconstruction=est.decrypt(target.cipher), key=est, notes=notes)


MODEL_CONVERSION = Attack(
    "model-conversion", "public-model",
    "match a converted ViT's patch-embedding columns and position rows to the public weights it came from",
    applies_to=applies_to, run=lambda t: _run(t, private=False))
MODEL_CONVERSION_PRIVATE = Attack(
    "model-conversion-private", "public-model",
    "the same matching against public weights of another model (the owner's model was private)",
    applies_to=applies_to, run=lambda t: _run(t, private=True))
