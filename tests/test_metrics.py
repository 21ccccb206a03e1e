"""lcrypt.metrics: SSIM agrees with scikit-image; PSNR, correlation and entropy behave as defined."""

import numpy as np
import pytest

from lcrypt.metrics import adjacent_correlation, histogram_entropy, psnr, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")
skimage_data = pytest.importorskip("skimage.data")


def _test_images(rng):
    astro = skimage_data.astronaut()[::4, ::4]                          # 128x128 RGB photograph
    noisy = np.clip(astro + rng.normal(0, 25, astro.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(astro, 3, axis=1)
    inverted = 255 - astro
    return astro, [noisy, shifted, inverted, astro]


def test_ssim_matches_scikit_image(rng):
    ref, others = _test_images(rng)
    ours = ssim(np.stack([ref] * len(others)), np.stack(others))
    theirs = [skimage_metrics.structural_similarity(ref, o, channel_axis=-1, data_range=255) for o in others]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert ours[-1] == pytest.approx(1.0) and ours[2] < 0             # identical image, negative


def test_ssim_matches_on_random_small_batches(rng):
    a = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    theirs = [skimage_metrics.structural_similarity(x, y, channel_axis=-1, data_range=255)
              for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b), theirs, atol=1e-3)


def test_psnr_of_a_known_error():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255 ** 2 / 100))
    assert np.isinf(psnr(a, a)).all()


def test_adjacent_correlation_and_entropy(rng):
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))[None]
    noise = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    assert adjacent_correlation(ramp, "horizontal")[0] > 0.99
    assert abs(adjacent_correlation(noise, "diagonal")[0]) < 0.05
    flat = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    np.testing.assert_allclose(histogram_entropy(flat), [8.0])
    assert histogram_entropy(np.zeros((1, 8, 8, 3), np.uint8))[0] == 0.0
    with pytest.raises(ValueError, match="direction"):
        adjacent_correlation(noise, "sideways")
