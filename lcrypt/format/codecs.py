"""The bytes of a shard's members: images (PNG, NPY, JPEG) and labels, encoded and decoded safely.

``<key>.cls``   the class index as ASCII decimal, e.g. b"7" (timm / webdataset read it as is)
``<key>.png``   lossless PNG of the encrypted (H, W, 3) uint8 image      (encoding "png"), or
``<key>.npy``   numpy .npy of the same array, read with allow_pickle=False (encoding "npy"), or
``<key>.jpg``   baseline JPEG written by simplejpeg                         (encoding "jpeg")

Decoding is safe by construction (:func:`decode_member`): only PNG (lcrypt's own layout by zlib with
CRC and size checks, any other PNG by Pillow's PNG plugin only), NPY (``allow_pickle=False``, uint8
(H, W, 3) only) and JPEG (simplejpeg) are accepted; any other member type raises
:class:`ShardFormatError`. Nothing is ever unpickled. When the caller knows the dataset's image size
(the manifest's ``image_shape``), the size in an image's header is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Sequence

import numpy as np

from lcrypt.format.names import ENCODINGS

MAX_DECODE_PIXELS = 64 * 1024 * 1024  # refuse larger images inside shards (decompression bombs)
PNG_COMPRESS_LEVEL = 6  # zlib level; PNG filter "none" (block-scrambled rows gain little from filters)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ShardFormatError(ValueError):
    """A shard or member that is not the lcrypt format (wrong type, malformed, oversized, wrong count)."""


# -- encoding ------------------------------------------------------------------------------------
def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int | None = None,
                 jpeg_subsampling: str = "444") -> bytes:
    """Bytes of one (H, W, 3) uint8 image in ``encoding`` ("png", "npy" or "jpeg")."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"shards hold (H, W, 3) uint8 images, got {image.dtype} {image.shape}")
    if encoding == "png":
        return encode_png(image)
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return buf.getvalue()
    if encoding == "jpeg":
        import simplejpeg

        if jpeg_quality is None:
            raise ValueError("encoding 'jpeg' needs a jpeg_quality (1-100)")
        return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=int(jpeg_quality),
                                      colorspace="RGB", colorsubsampling=jpeg_subsampling)
    raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def encode_png(image: np.ndarray, level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A standard 8-bit RGB PNG (filter type 0 on every row, one IDAT), built directly with zlib.

    Why not Pillow: on small images its per-call overhead costs more than the compression itself;
    the bytes are an ordinary PNG any decoder (Pillow, timm) reads.
    """
    h, w, _ = image.shape
    raw = np.zeros((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 1:] = image.reshape(h, w * 3)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _png_chunk(b"IEND", b""))


def encode_label(label: int) -> bytes:
    """The ``.cls`` member of a class index: ASCII decimal."""
    return str(int(label)).encode("ascii")


# -- safe decoding -------------------------------------------------------------------------------
def decode_member(name: str, data: bytes, shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode an image member to (H, W, 3) uint8 by its extension; refuses anything not PNG/NPY/JPEG.

    ``shape`` (the manifest's ``image_shape``, ``(H, W[, 3])``): the size in the image's header (PNG
    IHDR, JPEG frame header, NPY header) must be that one, checked before any pixel is decoded, so a
    huge image inside a dataset of small ones costs nothing but its header.
    """
    ext = _member_ext(name)
    expect = expected_hw(shape)
    try:
        if ext == "png":
            return _decode_png(data, expect)
        if ext == "npy":
            return _decode_npy(data, expect)
        if ext in ("jpg", "jpeg"):
            import simplejpeg

            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            check_header_size("JPEG", h, w, expect)
            if h * w > MAX_DECODE_PIXELS:
                raise ShardFormatError(f"JPEG of {w}x{h} exceeds {MAX_DECODE_PIXELS} pixels")
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ShardFormatError as exc:
        raise ShardFormatError(f"{name}: {exc}") from None
    except Exception as exc:  # malformed payloads: say which member and why, never crash obscurely
        raise ShardFormatError(f"{name}: cannot decode .{ext} image: {exc}") from exc
    raise ShardFormatError(f"{name}: member type .{ext} is not an lcrypt image (only .png, .npy, .jpg "
                           "are decoded; pickles and other types are refused)")


def _member_ext(name: str) -> str:
    """The WebDataset extension of a member name: everything after the first dot of its basename."""
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[1].lower() if "." in base else ""


def expected_hw(shape: Sequence[int] | None) -> tuple[int, int] | None:
    """``(H, W)`` of a manifest ``image_shape`` (None: any size)."""
    return None if shape is None else (int(shape[0]), int(shape[1]))


def check_header_size(kind: str, h: int, w: int, expect: tuple[int, int] | None) -> None:
    """Refuse an image whose header size is not the dataset's, before decoding it."""
    if expect is not None and (h, w) != expect:
        raise ShardFormatError(f"{kind} header says {w}x{h} (W x H), but the dataset's images are "
                               f"{expect[1]}x{expect[0]} (manifest image_shape); not decoded")


def _decode_npy(data: bytes, expect: tuple[int, int] | None = None) -> np.ndarray:
    """A ``.npy`` of a (H, W, 3) uint8 array: header checked first, never unpickled."""
    f = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
        raise ShardFormatError(f".npy holds {dtype} {shape}, expected (H, W, 3) uint8")
    check_header_size("NPY", shape[0], shape[1], expect)
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ShardFormatError(f".npy holds {arr.dtype} {arr.shape}, expected (H, W, 3) uint8")
    return arr


def _decode_png(data: bytes, expect: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG: lcrypt's own layout by zlib directly (:func:`png_raw_rows`), anything else by Pillow."""
    raw = png_raw_rows(data, expect)
    if raw is not None:
        h, w, rows = raw
        pixels = np.frombuffer(rows, dtype=np.uint8).reshape(h, 3 * w + 1)
        if not pixels[:, 0].any():
            return pixels[:, 1:].reshape(h, w, 3).copy()
    return _decode_png_pillow(data, expect)


_IEND_CHUNK = _png_chunk(b"IEND", b"")
_PNG_IHDR_HEAD = _PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR"


def png_raw_rows(data: bytes, expect: tuple[int, int] | None = None) -> tuple[int, int, bytes] | None:
    """``(H, W, rows)``: the inflated rows (filter byte + 3W bytes each) of a PNG in encode_png's layout.

    Why: Pillow's per-image overhead (plugin lookup, file object, decoder set-up) is most of the cost
    of a small PNG; the layout lcrypt writes (8-bit RGB, no interlace, IHDR + one IDAT + IEND) needs
    only a CRC check and one bounded ``inflate``. Returns None for any other valid-looking layout
    (ancillary chunks, several IDATs, palette...) so the caller falls back to Pillow; raises
    ShardFormatError for what is lcrypt's layout but damaged (CRC, zlib stream, size), so a broken
    image is never decoded silently. Rows with filters other than 0 are the caller's to check.
    ``expect`` ``(H, W)``: any PNG whose IHDR says another size is refused before anything is inflated.
    """
    if len(data) < 57 or not data.startswith(_PNG_IHDR_HEAD):
        return None
    w, h, depth, color, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    check_header_size("PNG", h, w, expect)
    if (depth, color, compression, filtering, interlace) != (8, 2, 0, 0, 0):
        return None
    size, tag = struct.unpack_from(">I4s", data, 33)
    end = 41 + size
    if tag != b"IDAT" or data[end + 4:] != _IEND_CHUNK:
        return None
    if zlib.crc32(memoryview(data)[12:29]) != struct.unpack_from(">I", data, 29)[0]:
        raise ShardFormatError("PNG IHDR chunk has a bad CRC: the image is damaged")
    if zlib.crc32(memoryview(data)[37:end]) != struct.unpack_from(">I", data, end)[0]:
        raise ShardFormatError("PNG IDAT chunk has a bad CRC: the image is damaged")
    if not 0 < w * h <= MAX_DECODE_PIXELS:
        raise ShardFormatError(f"PNG of {w}x{h} is empty or exceeds {MAX_DECODE_PIXELS} pixels")
    expected = h * (3 * w + 1)
    inflater = zlib.decompressobj()
    try:  # max_length bounds the memory a hostile stream can make us allocate
        raw = inflater.decompress(memoryview(data)[41:end], expected + 1)
    except zlib.error as exc:
        raise ShardFormatError(f"PNG image data is not a valid zlib stream: {exc}") from None
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        raise ShardFormatError(f"PNG image data inflates to {len(raw)}{'' if inflater.eof else '+'} bytes "
                               f"(with trailing data: {bool(inflater.unused_data)}), expected {expected} "
                               f"for {w}x{h}")
    return h, w, raw


def _decode_png_pillow(data: bytes, expect: tuple[int, int] | None = None) -> np.ndarray:
    """Any other PNG (filters, extra chunks...) by Pillow, PNG plugin only; RGB only."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:  # reads the header only
        check_header_size("PNG", im.height, im.width, expect)
        if im.width * im.height > MAX_DECODE_PIXELS:
            raise ShardFormatError(f"PNG of {im.width}x{im.height} exceeds {MAX_DECODE_PIXELS} pixels")
        if im.mode != "RGB":
            raise ShardFormatError(f"PNG mode {im.mode}, expected RGB")
        return np.asarray(im)


def decode_label(data: bytes) -> int:
    """The class index of a ``.cls`` member (ASCII decimal)."""
    try:
        text = data.decode("ascii").strip()
        if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
            raise ValueError
        return int(text)
    except (UnicodeDecodeError, ValueError):
        raise ShardFormatError(f".cls member is not a decimal class index: {data[:20]!r}") from None


def decode_labels(labels: list[bytes]) -> np.ndarray:
    """int64 class indices of ``.cls`` members; plain ASCII digits take ``int()`` directly.

    Anything else (sign, spaces, garbage, very long) goes through :func:`decode_label`, which keeps
    the one definition of what a valid label is and refuses the rest.
    """
    try:
        return np.array([int(b) if len(b) < 19 and b.isdigit() else decode_label(b) for b in labels],
                        dtype=np.int64)
    except OverflowError:
        raise ShardFormatError(".cls member holds a class index too large for int64") from None
