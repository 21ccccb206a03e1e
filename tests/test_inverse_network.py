"""The inverse-network attack learns what a scheme leaks independently of the key, on windows of
large images."""

from __future__ import annotations

import numpy as np

from lcrypt import Key, get_scheme
from lcrypt.attacks.inverse_network import inverse_network_attack
from lcrypt.metrics import ssim
from tests.test_attacks import smooth_images


def _leak(name: str, train: np.ndarray, target: np.ndarray, owner: Key) -> tuple[float, float]:
    """(median SSIM of the reconstructions, how much of it is about *their own* image): the second is the
    SSIM against the right target minus against another target, ~0 when the output ignores the cipher."""
    scheme = get_scheme(name)
    adversary = [Key(bytes([k + 1]) * 32, "adversary") for k in range(4)]
    recon = inverse_network_attack(train, lambda a, k: scheme.encrypt(a, adversary[k]),
                                   scheme.encrypt(target, owner), steps=120, threads=1, crop=32)
    assert recon.shape == target.shape and recon.dtype == np.uint8
    right = ssim(recon, target)
    return float(np.median(right)), float(np.median(right - ssim(recon, np.roll(target, 1, axis=0))))


def test_inverse_network_undoes_a_leaky_scheme_on_windows_of_large_images(rng, fixed_key):
    train, target = smooth_images(48, 96, rng), smooth_images(4, 96, rng)   # 96x96, trained on 32x32 windows
    cpbe_ssim, cpbe_leak = _leak("cpbe", train, target, fixed_key)         # half the values in the clear
    cat_ssim, cat_leak = _leak("catmap", train, target, fixed_key)         # a conventional cipher
    assert cpbe_ssim > 0.4 and cpbe_leak > 0.2, (cpbe_ssim, cpbe_leak)
    assert abs(cat_leak) < 0.1 and cpbe_ssim > cat_ssim + 0.2, (cat_ssim, cat_leak)
