"""What every scheme shares: its declared properties, input rules, and the index-map engine.

Every byte-wise learnable scheme of the papers uses *one key for the whole dataset*, so for a given
image shape its effect is a fixed rearrangement of the H·W·C bytes (or of the 2·H·W·C nibbles, for
Tanaka's LE) followed by a fixed XOR mask. :class:`IndexMap` holds that pair, built once per (key,
shape) from composable steps, and applies it to a whole batch as one gather plus one XOR — no Python
loop over pixels or blocks, and decryption is the exact inverse gather.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import numpy as np

from lcrypt.keys import Key

AUGMENTATIONS = ("hflip", "vflip", "translate", "mixup", "cutmix")
JPEG_MCU = {"444": 8, "422": 16, "420": 16}  # square-block alignment needed per chroma subsampling

STEPS = {
    "block-scramble": "whole blocks move to other positions",
    "block-rotation": "each block is rotated or flipped (one of the 8 symmetries of a square)",
    "block-negative-positive": "every value of a block becomes v or 255 - v, one choice per block",
    "block-colour-shuffle": "the colour components are permuted, one order per block",
    "pixel-negative-positive": "each value becomes v or 255 - v, one choice per value",
    "pixel-colour-shuffle": "the colour components are permuted, one order per pixel",
    "pixel-shuffle-in-block": "pixels move inside every block, by one permutation shared by all blocks",
    "value-shuffle-in-block": "the 3·B·B values of every block (colour components too) move by one "
                              "permutation shared by all blocks",
    "value-negative-positive-in-block": "the values at key-selected positions inside every block become "
                                        "255 - v, the same positions in every block",
    "nibble-reversal": "key-selected 4-bit halves of the values become 15 - v",
    "nibble-shuffle": "the 4-bit halves of a block's values are shuffled",
    "keystream-xor": "values are XORed with a key-derived keystream",
    "keystream-substitution": "values are substituted with a keystream byte s: s ^ ((p + s) mod 256)",
    "image-permutation": "pixels move across the whole image",
    "chained-diffusion": "each value depends on the cipher values before it",
}
"""What a scheme may declare it does (``SchemeInfo.steps``): the attacks decide from these whether they
apply (a jigsaw solver needs whole blocks moved and nothing inside them changed but its variants)."""

KEY_FORMS = {
    "xor": "c = p ^ m: every value keeps its place and is XORed with a fixed mask",
    "pixel-colour-xor": "each pixel keeps its place; its colour components are permuted and XORed with 0 "
                        "or 255",
    "block-variants": "whole blocks move, each under one rotation/flip, sign and colour order (as the steps "
                      "say)",
    "byte-gather-xor": "c[t] = p[src[t]] ^ m[t] over the bytes",
    "nibble-gather-xor": "c[t] = p[src[t]] ^ m[t] over the 4-bit halves of the bytes",
    "byte-gather-cumsum": "c = cumsum(p[src] + m) mod 256 in raster order: a first difference undoes the "
                          "chain",
    "row-chain": "c_x = f_x(p_x) ^ c_(x-1) along each row, f_x the identity or a keystream substitution",
    "row-chain-partial": "as row-chain, but where f_x is the identity c_x = p_x, outside the chain",
}
"""The structure of a scheme's effective key for a fixed key and image shape (``SchemeInfo.key_form``):
what a known-plaintext attack recovers, and so how it recovers it. None when it is none of these."""


@dataclasses.dataclass(frozen=True)
class SchemeInfo:
    """A scheme's properties, declared once; the CLI, pipeline, loader and report all read these."""

    name: str
    paper: str
    summary: str
    block_size: int | None
    invertible: bool
    lossless: bool
    jpeg_subsamplings: tuple[str, ...]  # JPEG-compatible under these chroma subsamplings; () = not
    key_space: Callable[[int, int], float]  # (height, width) -> log2 of the key space, as the paper counts
    augmentations: tuple[str, ...]  # server-side augmentations that keep the key's pattern aligned
    aug_grid: int  # geometric augmentations move whole cells of this many pixels (block size or 1)
    steps: tuple[str, ...]  # what it does, from STEPS; () = changes nothing (the identity)
    key_form: str | None  # its effective key's structure, from KEY_FORMS; None = none of them
    channels: int = 3

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"scheme {self.name!r} declares unknown steps {unknown}; "
                             f"steps are: {', '.join(STEPS)}")
        if self.key_form is not None and self.key_form not in KEY_FORMS:
            raise ValueError(f"scheme {self.name!r} declares unknown key_form {self.key_form!r}; "
                             f"key forms are: {', '.join(KEY_FORMS)} (or None)")

    @property
    def jpeg_compatible(self) -> bool:
        return bool(self.jpeg_subsamplings)

    def key_space_bits(self, height: int, width: int) -> float:
        return float(self.key_space(height, width))

    def as_dict(self, height: int = 32, width: int = 32) -> dict[str, Any]:
        """Plain-data view for `lcrypt schemes --json` and manifests."""
        return {
            "name": self.name, "paper": self.paper, "summary": self.summary,
            "block_size": self.block_size, "channels_in": self.channels, "channels_out": self.channels,
            "output_shape": "same as input (N, H, W, 3) uint8",
            "invertible": self.invertible, "lossless": self.lossless,
            "jpeg_compatible": self.jpeg_compatible, "jpeg_subsamplings": list(self.jpeg_subsamplings),
            f"key_space_bits_{height}x{width}": round(self.key_space_bits(height, width), 1),
            "augmentations": list(self.augmentations), "aug_grid": self.aug_grid,
        }


def log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


def jpeg_subsamplings_for(block_size: int) -> tuple[str, ...]:
    """Chroma subsamplings whose MCU tiles a block of ``block_size`` exactly."""
    return tuple(s for s, mcu in JPEG_MCU.items() if block_size % mcu == 0)


def check_images(images: np.ndarray, block_size: int | None = None, square: bool = False) -> np.ndarray:
    """Enforce the input rule shared by every scheme, with an error that says how to comply.

    Rule: a uint8 array shaped (N, H, W, 3) (RGB). Grayscale and RGBA are refused rather than guessed:
    convert them with :func:`lcrypt.images.to_rgb`, which documents its conversion. Block schemes
    need H and W to be multiples of the block size: crop or resize first (``lcrypt prepare --size``).
    """
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}; scale to 0..255 and cast first")
    if images.ndim != 4:
        raise ValueError(f"images must be shaped (N, H, W, C), got {images.shape}; "
                         "pass images[None] for a single image")
    n, h, w, c = images.shape
    if c != 3:
        kind = {1: "grayscale", 2: "grayscale+alpha", 4: "RGBA"}.get(c, f"{c}-channel")
        raise ValueError(f"schemes take RGB images (C=3), got {kind} (C={c}); "
                         "convert with lcrypt.images.to_rgb first")
    if block_size and (h % block_size or w % block_size):
        raise ValueError(f"image size {h}x{w} is not a multiple of block_size {block_size}; "
                         "crop or resize to a multiple first (lcrypt prepare --size)")
    if square and h != w:
        raise ValueError(f"this scheme needs square images, got {h}x{w}; crop or resize first")
    return np.ascontiguousarray(images)


def block_index(height: int, width: int, block: int, channels: int = 3) -> np.ndarray:
    """Flat byte positions of each block: shape (num_blocks, block·block·channels), row-major.

    Row ``b`` lists block ``b`` (raster order over the block grid) pixel by pixel, channel fastest,
    so ``x.reshape(N, -1)[:, block_index(...)]`` views a batch as (N, blocks, block²·C).
    """
    bh, bw = height // block, width // block
    by, bx, i, j, c = np.ogrid[:bh, :bw, :block, :block, :channels]
    flat = ((by * block + i) * width + (bx * block + j)) * channels + c
    return flat.reshape(bh * bw, block * block * channels).astype(np.intp)


def dihedral_maps(block: int) -> np.ndarray:
    """The 8 symmetries of a square block (4 rotations × optional transpose) as pixel gathers.

    Row ``v`` maps output pixel ``i·block + j`` to its source pixel inside the block, for every
    element of the dihedral group D4 — all eight, not the four that one public EtC port draws.
    """
    grid = np.arange(block * block).reshape(block, block)
    maps = []
    for transpose in (False, True):
        g = grid.T if transpose else grid
        for k in range(4):
            maps.append(np.rot90(g, k).ravel())
    out = np.stack(maps)
    assert len({m.tobytes() for m in out}) == 8
    return out


COLOR_PERMUTATIONS = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
"""Sirichotedumrong et al., Table 1: output channel c takes input channel ``perm[c]`` (true permutations)."""


class IndexMap:
    """A fixed gather plus XOR on the flat bytes (or nibbles) of an image, composed step by step.

    ``out[t] = in[src[t]] ^ mask[t]`` over the L = H·W·C bytes (``nibbles=False``) or over the 2L
    nibbles laid out as [upper nibbles of bytes 0..L-1, lower nibbles of bytes 0..L-1]
    (``nibbles=True``, Tanaka's LE). Steps compose left to right, like the papers' step lists.
    """

    def __init__(self, shape: tuple[int, int, int], nibbles: bool = False):
        self.shape = shape
        self.nibbles = nibbles
        self.size = int(np.prod(shape)) * (2 if nibbles else 1)
        self.src = np.arange(self.size, dtype=np.intp)
        self.mask = np.zeros(self.size, dtype=np.uint8)
        self._inverse: np.ndarray | None = None
        self._identity: bool | None = True
        self._plans: dict[str, tuple[np.ndarray, ...]] = {}   # nibble plans, built on first use

    def gather(self, g: np.ndarray) -> "IndexMap":
        """Then rearrange: new[t] = current[g[t]]."""
        self.src, self.mask = self.src[g], self.mask[g]
        self._inverse = self._identity = None
        self._plans = {}
        return self

    def xor(self, m: np.ndarray) -> "IndexMap":
        """Then XOR each position with ``m`` (255 = negative-positive; 15 on a nibble = 15 - v)."""
        self.mask = self.mask ^ m.astype(np.uint8)
        self._plans = {}
        return self

    @property
    def identity_gather(self) -> bool:
        """True when no step moved anything (XOR-only schemes skip the gather)."""
        if self._identity is None:
            self._identity = bool(np.array_equal(self.src, np.arange(self.size)))
        return self._identity

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.nibbles:
            if "forward" not in self._plans:
                self._plans["forward"] = self._nibble_plan(self.src, self.mask)
            return _apply_nibbles(x, *self._plans["forward"])
        flat = x.reshape(x.shape[0], -1)
        if self.identity_gather:
            return (flat ^ self.mask).reshape(x.shape)
        out = np.take(flat, self.src, axis=1)
        return np.bitwise_xor(out, self.mask, out=out).reshape(x.shape)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        if self._inverse is None:
            self._inverse = np.empty_like(self.src)
            self._inverse[self.src] = np.arange(self.size, dtype=np.intp)
        if self.nibbles:   # in[q] = out[inv[q]] ^ mask[inv[q]]: the same kind of map
            if "inverse" not in self._plans:
                self._plans["inverse"] = self._nibble_plan(self._inverse, self.mask[self._inverse])
            return _apply_nibbles(y, *self._plans["inverse"])
        flat = y.reshape(y.shape[0], -1) ^ self.mask
        return (flat if self.identity_gather else np.take(flat, self._inverse, axis=1)).reshape(y.shape)

    def _nibble_plan(self, src: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per output byte j: the source bytes of its upper and lower nibbles, the shifts that move
        each source nibble into place, and the combined XOR byte. Two byte gathers then replace a
        gather over 2L separate nibbles."""
        half = self.size // 2
        hi_src, lo_src = src[:half], src[half:]
        from_upper_hi, from_upper_lo = hi_src < half, lo_src < half
        return (hi_src % half, np.where(from_upper_hi, 0, 4).astype(np.uint8),
                lo_src % half, np.where(from_upper_lo, 4, 0).astype(np.uint8),
                ((mask[:half] << 4) | mask[half:]).astype(np.uint8))


def _apply_nibbles(x: np.ndarray, hi_src, hi_shift, lo_src, lo_shift, xor) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1)
    hi = np.left_shift(np.take(flat, hi_src, axis=1), hi_shift)
    hi &= 0xF0
    lo = np.right_shift(np.take(flat, lo_src, axis=1), lo_shift)
    lo &= 0x0F
    hi |= lo
    hi ^= xor
    return hi.reshape(x.shape)


class Scheme:
    """A learnable encryption scheme: a pure function of (images, key, parameters).

    Subclasses set ``name`` and ``PARAMS`` (name -> default), implement :meth:`info` and
    :meth:`build` (key, shape) -> an object with ``forward``/``inverse`` on (N, H, W, 3) uint8. The
    built transform is cached per (key, shape): a dataset's images all share it.
    """

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}
    ALLOWED: ClassVar[dict[str, tuple]] = {}  # optional: param -> allowed values
    _CACHE_SIZE = 8

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            known = ", ".join(self.PARAMS) or "none"
            raise ValueError(f"scheme {self.name!r} has no parameter {', '.join(unknown)} "
                             f"(it takes: {known})")
        self.params = {k: _coerce(k, params.get(k, d), d) for k, d in self.PARAMS.items()}
        for k, allowed in self.ALLOWED.items():
            if self.params[k] not in allowed:
                raise ValueError(f"scheme {self.name!r}: {k}={self.params[k]!r} is not one of {allowed}")
        if "block_size" in self.params and self.params["block_size"] < 1:
            raise ValueError(f"scheme {self.name!r}: block_size must be a positive integer")
        self._cache: dict[tuple, Any] = {}

    # -- to implement ------------------------------------------------------------------------
    @property
    def info(self) -> SchemeInfo:
        raise NotImplementedError

    def build(self, key: Key, shape: tuple[int, int, int]) -> Any:
        raise NotImplementedError

    def check(self, images: np.ndarray) -> np.ndarray:
        return check_images(images, self.info.block_size)

    # -- public API ------------------------------------------------------------------------
    def encrypt(self, images: np.ndarray, key: Key) -> np.ndarray:
        """Encrypt a batch (N, H, W, 3) uint8 with ``key``; returns a new array of the same shape."""
        images = self.check(images)
        return self._transform(key, images.shape[1:]).forward(images)

    def decrypt(self, images: np.ndarray, key: Key) -> np.ndarray:
        """Invert :meth:`encrypt` bit for bit."""
        images = self.check(images)
        return self._transform(key, images.shape[1:]).inverse(images)

    def derivation(self, purpose: str, shape: tuple[int, ...]) -> str:
        """The HKDF ``info`` string binding a draw to this scheme, its parameters and the shape."""
        params = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        return f"{self.name}|{params}|{purpose}|{'x'.join(map(str, shape))}"

    def _transform(self, key: Key, shape: tuple[int, int, int]) -> Any:
        cache_key = (key.key_id, key.owner, tuple(shape))
        t = self._cache.get(cache_key)
        if t is None:
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            t = self._cache[cache_key] = self.build(key, tuple(shape))
        return t

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __getstate__(self):
        return {"params": self.params}

    def __setstate__(self, state):
        self.__init__(**state["params"])


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Parameters may arrive as strings from the command line (``--param block_size=16``)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"parameter {name} must be true or false, got {value!r}")
        return bool(value)
    try:
        if isinstance(default, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name} must be a {type(default).__name__}, got {value!r}") from None
    return value
