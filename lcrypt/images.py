"""Decoding and normalising images by rule: every image entering lcrypt goes through here.

Rules (each either converts by the rule stated, or rejects with :class:`ImageRejected` naming it):

- channels (:func:`to_rgb`): RGB passes through; grayscale (L, 1-bit, or C=1) is replicated to three
  equal channels (lossless, reversible); RGBA / LA is accepted only when fully opaque (alpha = 255
  everywhere) and the alpha is dropped; any transparency is refused, because compositing on a
  background would be a silent guess.
- palette (P, PA): expanded through its palette to RGB(A), then the channel rule (so a palette with a
  transparent entry in use is refused).
- 16-bit (I;16*, 48/64-bit PNG): reduced to 8 bits by keeping the high byte (``v >> 8``), the same
  rule Pillow applies to 16-bit RGB PNGs; 32-bit integer and float images are refused.
- CMYK, YCbCr, LAB and other colour spaces are refused: converting them without the image's ICC
  profile is a guess. Convert with a colour-managed tool first.
- EXIF orientation is applied (the pixels are rotated/flipped upright, as viewers show them).
- multi-frame images (animated GIF/WebP/APNG, multi-page TIFF) are refused rather than picking a frame.
- decompression bombs: images over ``max_pixels`` (default 64 Mpx) are refused before decoding.
- corrupt or truncated files and non-images are refused with the decoder's message.
- size: with ``size=(H, W)`` an image of another size is resized to cover H×W (aspect kept, Pillow
  bicubic) and centre-cropped; an image already H×W is untouched (bit-exact). With ``expect=(H, W)``
  (no resizing wanted) an image of another size is refused, naming both sizes and ``--size``.

JPEGs take a fast path through simplejpeg (libjpeg-turbo, ~10x faster than Pillow on 32×32 images);
JPEGs with EXIF data, and CMYK/YCCK JPEGs, go through Pillow so the rules above apply unchanged.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 64 * 1024 * 1024
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageRejected(ValueError):
    """An input image that breaks a rule of this module; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Apply the channel rule to (H, W), (H, W, C) or (N, H, W, C) uint8 arrays."""
    if images.ndim == 2:
        images = images[..., None]
    c = images.shape[-1]
    if c == 3:
        return images
    if c in (2, 4):
        if not np.all(images[..., -1] == 255):
            raise ImageRejected("transparent",
                                "image has transparent pixels (alpha < 255): lcrypt refuses to "
                                "guess a background; flatten it onto a background of your choice first")
        images = images[..., :-1]
        c -= 1
    if c == 3:
        return images
    if c == 1:
        return np.repeat(images, 3, axis=-1)
    raise ImageRejected("channels", f"images must have 1, 2, 3 or 4 channels, got {c}")


def parse_size(text: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"32"`` -> (32, 32); ``"32x48"`` (H x W) -> (32, 48); None passes through."""
    if text is None or isinstance(text, tuple):
        return text
    if isinstance(text, int):
        return (text, text)
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
        if len(parts) == 1:
            parts *= 2
        h, w = parts
        if h < 1 or w < 1:
            raise ValueError
        return (h, w)
    except ValueError:
        raise ValueError(f"--size {text!r}: give one number (square) or HxW, e.g. 32 or 224x224") from None


def resize_cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (bicubic) so the image covers ``size`` = (H, W) with its aspect kept, then centre-crop."""
    h, w = size
    ih, iw = image.shape[:2]
    if (ih, iw) == (h, w):
        return image
    scale = max(h / ih, w / iw)
    nh, nw = max(h, round(ih * scale)), max(w, round(iw * scale))
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - h) // 2, (nw - w) // 2
    return np.asarray(im)[top:top + h, left:left + w]


def _fit(image: np.ndarray, size: tuple[int, int] | None, expect: tuple[int, int] | None) -> np.ndarray:
    if size is not None:
        return np.ascontiguousarray(resize_cover(image, size))
    if expect is not None and image.shape[:2] != tuple(expect):
        raise ImageRejected("wrong_size",
                            f"image is {image.shape[0]}x{image.shape[1]} (HxW), the dataset is "
                            f"{expect[0]}x{expect[1]}; "
                            "pass --size to resize and crop every image to one size")
    return image


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """simplejpeg for plain YCbCr/gray JPEGs without EXIF; None when Pillow must handle it."""
    import simplejpeg

    if b"Exif\x00\x00" in data[:65536]:
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ImageRejected("corrupt", f"not a decodable JPEG ({exc})") from None
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None  # CMYK / YCCK: let the Pillow path apply the colour-space rule
    if h * w > MAX_PIXELS:
        return None  # the Pillow path states the bomb rule with the configured limit
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError as exc:
        raise ImageRejected("corrupt", f"JPEG is corrupt or truncated ({exc})") from None


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGBA"))
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(im)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise ImageRejected("unsupported_mode", "32-bit integer image with values outside 0..65535; "
                                "convert it to 8-bit RGB first")
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    raise ImageRejected("unsupported_mode", f"image mode {mode} is not converted automatically (CMYK and "
                        "other colour spaces need the image's ICC profile, float images a scaling choice); "
                        "convert it to 8-bit RGB first")


def decode_image(data: bytes, size: tuple[int, int] | None = None, expect: tuple[int, int] | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 under this module's rules, or raise ImageRejected."""
    if not data:
        raise ImageRejected("empty", "the file is empty")
    if data[:2] == b"\xff\xd8" and max_pixels >= MAX_PIXELS:
        arr = _decode_jpeg_fast(data)
        if arr is not None:
            return _fit(arr, size, expect)
    try:
        # The size check below states the bomb rule; Pillow's warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        with im:
            if im.width * im.height > max_pixels:
                raise ImageRejected("decompression_bomb",
                                    f"image claims {im.width}x{im.height} pixels, over the "
                                    f"limit of {max_pixels:,}; refused before decoding")
            if getattr(im, "n_frames", 1) > 1:
                raise ImageRejected("multi_frame",
                                    f"{im.format} with {im.n_frames} frames; extract the frame "
                                    "you want first")
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _pil_to_array(im)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("not_an_image", f"not a recognised image ({', '.join(ALLOWED_FORMATS)}); "
                            f"starts with {data[:8]!r}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("corrupt", f"corrupt or truncated image ({exc})") from None
    return _fit(np.ascontiguousarray(to_rgb(arr)), size, expect)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8 under this module's rules (EXIF orientation applied)."""
    try:
        return decode_image(Path(path).read_bytes(), size=size)
    except ImageRejected as exc:
        raise ImageRejected(exc.reason, f"{path}: {exc}") from None
