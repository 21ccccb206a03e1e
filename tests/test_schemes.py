"""Every scheme: exact inversion, key dependence, determinism, golden vectors, input rules."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from lcrypt import Key, get_scheme, list_schemes
from lcrypt.images import to_rgb

GOLDEN = Path(__file__).parent / "golden" / "schemes.json"
ALL = list_schemes()
# (name, params) variants covering every parameter the schemes take
VARIANTS = [(n, {}) for n in ALL] + [
    ("pe", {"color_shuffle": True}), ("cpbe", {"ratio": 1.0}), ("ahmad-diffusion", {"ratio": 0.5}),
    ("etc", {"block_size": 8}), ("le", {"block_size": 2}), ("ele", {"block_size": 8}),
    ("block-shuffle", {"block_size": 8}), ("blockwise", {"block_size": 4}),
    ("blockwise", {"block_size": 8, "scramble": False}),
]
IDS = [f"{n}{''.join(f'-{k}={v}' for k, v in p.items())}" for n, p in VARIANTS]


def golden_image() -> np.ndarray:
    """A fixed 32x32 RGB image with structure in every channel (no randomness involved)."""
    y, x = np.mgrid[:32, :32]
    return np.stack([(x * 8) % 256, (y * 8) % 256, (x * y + 3 * x) % 256], axis=-1).astype(np.uint8)[None]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_registry_has_the_ten_schemes_in_order():
    assert ALL == ["plain", "le", "block-shuffle", "catmap", "pe", "etc", "ele", "cpbe", "ahmad-diffusion",
                   "blockwise"]
    with pytest.raises(ValueError, match="unknown scheme 'nope'.*choose one of: plain"):
        get_scheme("nope")


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data(), secret=st.binary(min_size=32, max_size=32))
def test_decrypt_inverts_encrypt_bit_for_bit(name, params, data, secret):
    scheme = get_scheme(name, **params)
    grid = scheme.info.block_size or 1
    side = lambda: st.integers(1, 4).map(lambda k: k * max(grid, 4) if grid > 1 else k * 5)  # noqa: E731
    h = data.draw(side())
    w = h if name == "catmap" else data.draw(side())
    n = data.draw(st.integers(1, 3))
    images = data.draw(arrays(np.uint8, (n, h, w, 3)))
    original = images.copy()
    key = Key(secret, "hypothesis")
    cipher = scheme.encrypt(images, key)
    assert cipher.shape == images.shape and cipher.dtype == np.uint8
    assert np.array_equal(scheme.decrypt(cipher, key), original)
    assert np.array_equal(images, original)  # the caller's array is never modified


@pytest.mark.parametrize("name,params", [v for v in VARIANTS if v[0] != "plain"],
                         ids=[i for i, v in zip(IDS, VARIANTS) if v[0] != "plain"])
def test_different_keys_give_different_ciphertexts(name, params, rng):
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    scheme = get_scheme(name, **params)
    a = scheme.encrypt(images, Key(b"\x01" * 32, "a"))
    b = scheme.encrypt(images, Key(b"\x02" * 32, "b"))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, images)
    # and the wrong key does not decrypt
    assert not np.array_equal(scheme.decrypt(a, Key(b"\x02" * 32, "b")), images)


def test_golden_vectors(fixed_key):
    """Ciphertext digests of a fixed image under a fixed key, checked in: any change in a scheme's
    algorithm or key derivation (which would orphan every published dataset) fails here."""
    expected = json.loads(GOLDEN.read_text())
    got = {i: digest(get_scheme(n, **p).encrypt(golden_image(), fixed_key))
           for i, (n, p) in zip(IDS, VARIANTS)}
    assert got == expected


def test_encryption_is_deterministic_across_processes(fixed_key):
    code = (
        "import hashlib, json, sys\n"
        "sys.path.insert(0, %r)\n"
        "from tests.test_schemes import VARIANTS, IDS, golden_image, digest\n"
        "from lcrypt import Key, get_scheme\n"
        "k = Key(bytes(range(32)), 'test-owner')\n"
        "print(json.dumps({i: digest(get_scheme(n, **p).encrypt(golden_image(), k))"
        " for i, (n, p) in zip(IDS, VARIANTS)}))\n"
    ) % str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout
    here = {i: digest(get_scheme(n, **p).encrypt(golden_image(), fixed_key))
            for i, (n, p) in zip(IDS, VARIANTS)}
    assert json.loads(out) == here


def test_batch_encryption_equals_one_by_one(fixed_key, rng):
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for name, params in VARIANTS:
        s = get_scheme(name, **params)
        whole = s.encrypt(images, fixed_key)
        single = np.concatenate([s.encrypt(images[i:i + 1], fixed_key) for i in range(5)])
        assert np.array_equal(whole, single), name


# -- input rules -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["le", "block-shuffle", "etc", "ele", "blockwise"])
def test_sides_not_multiple_of_block_size_are_refused(name, fixed_key):
    with pytest.raises(ValueError, match=r"33x32 is not a multiple of block_size"):
        get_scheme(name).encrypt(np.zeros((1, 33, 32, 3), np.uint8), fixed_key)


@pytest.mark.parametrize("name", ALL)
def test_grayscale_rgba_and_wrong_dtype_are_refused_with_the_rule(name, fixed_key):
    s = get_scheme(name)
    with pytest.raises(ValueError, match=r"grayscale \(C=1\).*lcrypt.images.to_rgb"):
        s.encrypt(np.zeros((1, 32, 32, 1), np.uint8), fixed_key)
    with pytest.raises(ValueError, match=r"RGBA \(C=4\)"):
        s.encrypt(np.zeros((1, 32, 32, 4), np.uint8), fixed_key)
    with pytest.raises(ValueError, match="must be uint8"):
        s.encrypt(np.zeros((1, 32, 32, 3), np.float32), fixed_key)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        s.encrypt(np.zeros((32, 32, 3), np.uint8), fixed_key)


def test_documented_conversion_for_grayscale_and_opaque_rgba(fixed_key):
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(1, 32, 32, 1)
    rgb = to_rgb(gray)
    assert rgb.shape == (1, 32, 32, 3) and np.array_equal(rgb[..., 1], gray[..., 0])
    rgba = np.concatenate([rgb, np.full((1, 32, 32, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(to_rgb(rgba), rgb)
    rgba[0, 0, 0, 3] = 10
    with pytest.raises(ValueError, match="transparent"):
        to_rgb(rgba)


def test_catmap_needs_square_images(fixed_key):
    with pytest.raises(ValueError, match="square images, got 32x48"):
        get_scheme("catmap").encrypt(np.zeros((1, 32, 48, 3), np.uint8), fixed_key)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="has no parameter colour_shuffle"):
        get_scheme("pe", colour_shuffle=True)
    with pytest.raises(ValueError, match=r"ratio=0.3 is not one of \(0.5, 1.0\)"):
        get_scheme("cpbe", ratio=0.3)
    with pytest.raises(ValueError, match="block_size must be a int"):
        get_scheme("etc", block_size="big")
    assert get_scheme("pe", color_shuffle="true").params == {"color_shuffle": True}
    assert get_scheme("etc", block_size="8").info.block_size == 8
