"""The picture a user looks at first: plain images beside their ciphertext under every scheme."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from lcrypt.storage import atomic_write
from lcrypt.keys import Key
from lcrypt.schemes import get_scheme, list_schemes

CELL = 96
LABEL_HEIGHT = 14


def center_crop_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic) and crop the centre square, so every scheme fits."""
    im = Image.fromarray(image)
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def preview_grid(images: np.ndarray, key: Key, schemes: Sequence[str] | None = None) -> np.ndarray:
    """A (rows = images, columns = plain + each scheme) RGB grid with a title over each column.

    ``images`` is (N, H, W, 3) uint8 with H = W a multiple of 16, so every scheme's default block
    size fits. Cells are upscaled with nearest-neighbour so block structure stays visible.
    """
    schemes = [s for s in (schemes or list_schemes()) if s != "plain"]
    columns = [("plain", images)] + [(name, get_scheme(name).encrypt(images, key)) for name in schemes]
    n = images.shape[0]
    grid = np.full((LABEL_HEIGHT + n * (CELL + 2), len(columns) * (CELL + 2), 3), 255, dtype=np.uint8)
    for j, (_, batch) in enumerate(columns):
        for i in range(n):
            cell = np.asarray(Image.fromarray(batch[i]).resize((CELL, CELL), Image.NEAREST))
            y, x = LABEL_HEIGHT + i * (CELL + 2), j * (CELL + 2)
            grid[y:y + CELL, x:x + CELL] = cell
    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    for j, (name, _) in enumerate(columns):
        draw.text((j * (CELL + 2) + 2, 1), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def sample_grid(images: np.ndarray, columns: int = 8, cell: int = CELL) -> np.ndarray:
    """(N, H, W, 3) uint8 images tiled ``columns`` to a row on white, each enlarged by an integer factor
    (nearest neighbour, so block structure stays visible) to about ``cell`` pixels."""
    n, h, w, _ = images.shape
    scale = max(1, cell // max(h, w))
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    rows, cols = -(-n // columns), min(n, columns)
    bh, bw = h * scale + 2, w * scale + 2
    grid = np.full((rows * bh, cols * bw, 3), 255, dtype=np.uint8)
    for i in range(n):
        y, x = (i // columns) * bh, (i % columns) * bw
        grid[y:y + bh - 2, x:x + bw - 2] = big[i]
    return grid


def save_png(image: np.ndarray, path: str | Path, text: Mapping[str, str] | None = None) -> Path:
    """Write an RGB uint8 array as a PNG with optional text chunks (creating the parent folder).

    Written to a temporary name and renamed, so a crash or a full disk never leaves a half-written PNG.
    """
    path = Path(path)
    atomic_write(path, png_bytes(image, text))
    return path


def png_bytes(image: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """An RGB uint8 array as PNG file bytes, with optional text chunks."""
    info = PngInfo()
    for keyword, value in (text or {}).items():
        info.add_text(keyword, value)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
