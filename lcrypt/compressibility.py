"""File sizes of a dataset under JPEG and lossless PNG, plain vs encrypted (the EtC paper's Table IV).

JPEG is simplejpeg (libjpeg-turbo) at the given qualities with 4:2:0 chroma subsampling, the common
default and the setting the EtC block size of 16 is aligned to; PNG is Pillow's zlib at its default
level. Images are encrypted in batches (one gather per batch) and encoded one by one, as a data owner
would store them. simplejpeg is imported lazily: it comes with lcrypt's ``pipeline``/``train`` extras.
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np

SUBSAMPLING = "420"


def jpeg_bytes(images: np.ndarray, quality: int, subsampling: str = SUBSAMPLING) -> int:
    """Total bytes of every image encoded as JPEG."""
    import simplejpeg

    return sum(len(simplejpeg.encode_jpeg(np.ascontiguousarray(im), quality=quality, colorspace="RGB",
                                          colorsubsampling=subsampling)) for im in images)


def png_bytes(images: np.ndarray) -> int:
    """Total bytes of every image encoded as lossless PNG (Pillow, default zlib level)."""
    from PIL import Image

    total = 0
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        total += buf.tell()
    return total


def file_sizes(images: np.ndarray, qualities: Iterable[int] = (85, 80), png_every: int = 1,
               batch: int = 2048) -> dict[str, float]:
    """``{"raw", "jpeg_q85", "jpeg_q80", "png"}`` in bytes for ``images`` (already encrypted or plain).

    ``png_every`` > 1 encodes every k-th image as PNG and scales the total by k (PNG via Pillow is
    ~100× slower than simplejpeg); the report states when it sampled.
    """
    out = {"raw": float(images.size)}
    starts = range(0, len(images), batch)
    for q in qualities:
        out[f"jpeg_q{q}"] = float(sum(jpeg_bytes(images[i:i + batch], q) for i in starts))
    sample = images[::png_every]
    out["png"] = float(png_bytes(sample)) * len(images) / max(len(sample), 1)
    return out
