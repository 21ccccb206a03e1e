"""Privacy metrics of a reconstruction against its plain image, vectorised over the batch.

* :func:`ssim`: Wang et al. 2004 structural similarity with scikit-image's defaults (7×7 uniform
  window, K1 = 0.01, K2 = 0.03, sample covariance, borders of half a window cropped, mean over the
  three channels) so our figures can be checked against ``skimage.metrics.structural_similarity``.
  The window sums use integral images, so a batch costs a few array passes.
* :func:`psnr`: 10·log10(255² / MSE) per image (inf for identical images).
* :func:`adjacent_correlation`: Pearson correlation of horizontally / vertically / diagonally adjacent
  pixel values, the usual cipher-image statistic (~0.9 for natural images, ~0 for a good cipher).
* :func:`histogram_entropy`: Shannon entropy (bits) of each channel's 256-bin histogram, averaged.

LPIPS (the EtC paper's perceptual score) needs pretrained AlexNet/VGG weights that cannot be fetched
here, so it is not computed: we do not substitute anything that would pass for it.
"""

from __future__ import annotations

import numpy as np

K1, K2 = 0.01, 0.03


def _as_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W, C) or (H, W, C), got {x.shape}")
    return x.astype(np.float64)


def _window_means(x: np.ndarray, win: int) -> np.ndarray:
    """Mean over every full win×win window ("valid" positions) of (N, H, W, C), via integral images."""
    s = np.cumsum(np.cumsum(x, axis=1), axis=2)
    s = np.pad(s, ((0, 0), (1, 0), (1, 0), (0, 0)))
    total = s[:, win:, win:] - s[:, :-win, win:] - s[:, win:, :-win] + s[:, :-win, :-win]
    return total / (win * win)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, win_size: int = 7) -> np.ndarray:
    """Per-image SSIM of two batches (N, H, W, C) (or one image), as scikit-image computes it.

    skimage filters the whole image with a uniform window (reflect padding) and averages the SSIM map
    after cropping ``(win_size - 1) // 2`` pixels on each side: exactly the windows that lie fully
    inside the image, which is what :func:`_window_means` returns.
    """
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if min(x.shape[1:3]) < win_size:
        raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} are smaller than the {win_size}px SSIM window")
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1.0)
    ux, uy = _window_means(x, win_size), _window_means(y, win_size)
    uxx, uyy = _window_means(x * x, win_size), _window_means(y * y, win_size)
    uxy = _window_means(x * y, win_size)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB."""
    x, y = _as_batch(a), _as_batch(b)
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range ** 2 / mse)


_SHIFTS = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1)}


def adjacent_correlation(images: np.ndarray, direction: str = "horizontal") -> np.ndarray:
    """Per-image Pearson correlation of every value with its neighbour in ``direction`` (all channels)."""
    if direction not in _SHIFTS:
        raise ValueError(f"direction must be one of {', '.join(_SHIFTS)}, got {direction!r}")
    x = _as_batch(images)
    dy, dx = _SHIFTS[direction]
    u = x[:, : x.shape[1] - dy, : x.shape[2] - dx].reshape(len(x), -1)
    v = x[:, dy:, dx:].reshape(len(x), -1)
    u = u - u.mean(axis=1, keepdims=True)
    v = v - v.mean(axis=1, keepdims=True)
    den = np.sqrt((u * u).sum(axis=1) * (v * v).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (u * v).sum(axis=1) / np.where(den > 0, den, 1), 0.0)


def histogram_entropy(images: np.ndarray) -> np.ndarray:
    """Per-image Shannon entropy in bits of each channel's 256-bin histogram, averaged over channels
    (8 bits = perfectly flat histogram, what a strong cipher produces)."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c).astype(np.int64)
    offsets = (np.arange(n)[:, None, None] * c + np.arange(c)[None, None, :]) * 256
    counts = np.bincount((flat + offsets).ravel(), minlength=n * c * 256).reshape(n, c, 256)
    p = counts / (h * w)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0.0).sum(axis=2)
    return ent.mean(axis=1)
