"""Decoding and normalising images by rule (owned next by the pipeline work; extend, don't fork).

Rule for channels, used everywhere an image enters lcrypt:
- RGB passes through;
- grayscale (L, or C=1) is replicated to three equal channels (lossless and reversible);
- RGBA / LA is accepted only when fully opaque (alpha = 255 everywhere), and the alpha is dropped;
  any transparency is refused, because compositing on a background would be a silent guess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Apply the channel rule to (H, W), (H, W, C) or (N, H, W, C) uint8 arrays."""
    if images.ndim == 2:
        images = images[..., None]
    c = images.shape[-1]
    if c == 3:
        return images
    if c in (2, 4):
        if not np.all(images[..., -1] == 255):
            raise ValueError("image has transparent pixels (alpha < 255): lcrypt refuses to guess a "
                             "background; flatten it onto a background of your choice first")
        images = images[..., :-1]
        c -= 1
    if c == 3:
        return images
    if c == 1:
        return np.repeat(images, 3, axis=-1)
    raise ValueError(f"images must have 1, 2, 3 or 4 channels, got {c}")


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8 under the channel rule (EXIF orientation applied)."""
    from PIL import ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode not in ("RGB", "L", "RGBA", "LA"):
            raise ValueError(f"{path}: unsupported image mode {im.mode}; convert it to RGB first")
        return to_rgb(np.asarray(im))
