"""The shard format: one definition, imported by the writer (pipelines) and the reader (loaders).

A published lcrypt dataset is a folder of WebDataset tar shards plus ``manifest.json`` (see
:mod:`lcrypt.manifest`). Each shard holds the samples of ONE owner and ONE split::

    {split}/{owner}-{index:06d}.tar          e.g. train/hospital-a-000003.tar

A sample is exactly two tar members that share a key (WebDataset convention: the key is the member
name up to its first dot)::

    <key>.cls    the class index as ASCII decimal, e.g. b"7"   (timm / webdataset read it as is)
    <key>.png    lossless PNG of the encrypted (H, W, 3) uint8 image      (encoding "png"), or
    <key>.npy    numpy .npy of the same array, read with allow_pickle=False (encoding "npy"), or
    <key>.jpg    baseline JPEG written by simplejpeg                         (encoding "jpeg")

Each extra member costs a 512-byte header plus padding to 512 bytes, which dominates on 3 KB images,
so a sample carries nothing else (no ``.json``, no file name). The key is opaque: the first 20 hex
digits of HMAC-SHA256 of the record's source id under a salt derived from the owner's key
(:func:`sample_key`), so no source file name (which can identify a person) reaches a shard, and
nobody without the key can test a guessed file name against it.

Tars are written deterministically (:func:`write_tar`): plain ustar headers with mtime 0, uid/gid 0,
empty user/group names, mode 0444, members in the order given (the pipeline sorts samples by key), the
archive padded like GNU/Python tar, written to a temporary name and renamed, so equal content gives
byte-equal files and a crash never leaves a shard that looks complete.

Decoding is safe by construction (:func:`decode_image`): only PNG (lcrypt's own layout by zlib with
CRC and size checks, any other PNG by Pillow's PNG plugin only), NPY (``allow_pickle=False``, uint8
(H, W, 3) only) and JPEG (simplejpeg) are accepted; any other member type raises
:class:`ShardFormatError`. Nothing is ever unpickled. The loaders read shards held in memory as
:data:`Record` tuples (:func:`iter_records`) and decode a whole batch into one array
(:func:`decode_records`).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import struct
import tempfile
import zlib
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

FORMAT_VERSION = 1
ENCODINGS = ("png", "npy", "jpeg")
IMAGE_EXT = {"png": "png", "npy": "npy", "jpeg": "jpg"}  # encoding -> member extension
EXT_ENCODING = {v: k for k, v in IMAGE_EXT.items()}
LABEL_EXT = "cls"
KEY_HEX_DIGITS = 20  # 80 bits: collision odds ~ n^2 / 2^81, negligible for any real dataset
MAX_DECODE_PIXELS = 64 * 1024 * 1024  # refuse larger images inside shards (decompression bombs)
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9_-]*)/(?P<owner>[A-Za-z0-9][A-Za-z0-9_-]*)-(?P<index>\d{6})\.tar$")
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # what GNU tar and Python's tarfile pad archives to
PNG_COMPRESS_LEVEL = 6  # zlib level; PNG filter "none" (block-scrambled rows gain little from filters)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ShardFormatError(ValueError):
    """A shard member that is not part of the lcrypt format (wrong type, malformed, oversized)."""


# -- names ---------------------------------------------------------------------------------------
def check_owner(owner: str) -> str:
    """Owner names go into shard file names: letters, digits, '-' and '_' only (no dots, no slashes)."""
    if not isinstance(owner, str) or not OWNER_RE.match(owner):
        raise ValueError(f"owner name {owner!r} is not allowed: use 1-64 letters, digits, '-' or '_', "
                         "starting with a letter or digit")
    return owner


def check_split(split: str) -> str:
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ValueError(f"split name {split!r} is not allowed: use 1-64 letters, digits, '-' or '_'")
    return split


def shard_path(split: str, owner: str, index: int) -> str:
    """Relative path of a shard: ``{split}/{owner}-{index:06d}.tar`` (POSIX separators)."""
    return f"{check_split(split)}/{check_owner(owner)}-{int(index):06d}.tar"


def parse_shard_path(path: str) -> tuple[str, str, int]:
    """``(split, owner, index)`` of a relative shard path, or ValueError."""
    m = SHARD_RE.match(path)
    if not m:
        raise ValueError(f"{path!r} is not an lcrypt shard path ({{split}}/{{owner}}-{{index:06d}}.tar)")
    return m["split"], m["owner"], int(m["index"])


def sample_key_salt(key) -> bytes:
    """The per-owner salt of sample keys, derived from the owner's :class:`lcrypt.Key` (never the secret)."""
    return key.derive("lcrypt/sample-key-salt/v1")


def sample_key(source_id: str, salt: bytes) -> str:
    """Opaque, deterministic sample key: 20 hex digits of HMAC-SHA256(salt, source id)."""
    return hmac.new(salt, source_id.encode("utf-8"), hashlib.sha256).hexdigest()[:KEY_HEX_DIGITS]


def shard_of(key: str, num_shards: int) -> int:
    """The shard a sample key belongs to among ``num_shards``: a uniform function of the (salted) key."""
    return int(key[:15], 16) % num_shards


def num_shards_for(count: int, shard_size: int) -> int:
    """How many shards hold ``count`` samples at about ``shard_size`` per shard (at least one)."""
    return max(1, -(-count // shard_size))


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

    Why not Pillow: on 32x32 images its per-call overhead made PNG ~3x slower than this (measured in
    bench/bench_prepare.py); the bytes are an ordinary PNG any decoder (Pillow, timm) reads.
    """
    h, w, _ = image.shape
    raw = np.zeros((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 1:] = image.reshape(h, w * 3)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _png_chunk(b"IEND", b""))


def encode_label(label: int) -> bytes:
    return str(int(label)).encode("ascii")


def encode_sample(key: str, image: np.ndarray, label: int, encoding: str, jpeg_quality: int | None = None,
                  jpeg_subsampling: str = "444") -> list[tuple[str, bytes]]:
    """The tar members of one sample: ``[(key.cls, label), (key.<ext>, image)]``."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    return [(f"{key}.{LABEL_EXT}", encode_label(label)),
            (f"{key}.{IMAGE_EXT[encoding]}", encode_image(image, encoding, jpeg_quality, jpeg_subsampling))]


# -- safe decoding -------------------------------------------------------------------------------
def member_ext(name: str) -> str:
    """The WebDataset extension of a member name: everything after the first dot of its basename."""
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[1].lower() if "." in base else ""


def decode_image(name: str, data: bytes, shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode an image member to (H, W, 3) uint8 by its extension; refuses anything not PNG/NPY/JPEG.

    ``shape`` (the manifest's ``image_shape``, ``(H, W[, 3])``): the size in the image's header (PNG
    IHDR, JPEG frame header, NPY header) must be that one, checked before any pixel is decoded, so a
    huge image inside a dataset of small ones costs nothing but its header.
    """
    ext = member_ext(name)
    expect = _expected_hw(shape)
    try:
        if ext == "png":
            return _decode_png(data, expect)
        if ext == "npy":
            return _decode_npy(data, expect)
        if ext in ("jpg", "jpeg"):
            import simplejpeg

            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            _check_header_size("JPEG", h, w, expect)
            if h * w > MAX_DECODE_PIXELS:
                raise ShardFormatError(f"JPEG of {w}x{h} exceeds {MAX_DECODE_PIXELS} pixels")
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ShardFormatError as exc:
        raise ShardFormatError(f"{name}: {exc}") from None
    except Exception as exc:  # malformed payloads: say which member and why, never crash obscurely
        raise ShardFormatError(f"{name}: cannot decode .{ext} image: {exc}") from exc
    raise ShardFormatError(f"{name}: member type .{ext} is not an lcrypt image (only .png, .npy, .jpg "
                           "are decoded; pickles and other types are refused)")


def _expected_hw(shape: Sequence[int] | None) -> tuple[int, int] | None:
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _check_header_size(kind: str, h: int, w: int, expect: tuple[int, int] | None) -> None:
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
    _check_header_size("NPY", shape[0], shape[1], expect)
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ShardFormatError(f".npy holds {arr.dtype} {arr.shape}, expected (H, W, 3) uint8")
    return arr


def _decode_png(data: bytes, expect: tuple[int, int] | None = None) -> np.ndarray:
    """A PNG: lcrypt's own layout by zlib directly (:func:`_png_raw_rows`), anything else by Pillow."""
    raw = _png_raw_rows(data, expect)
    if raw is not None:
        h, w, rows = raw
        pixels = np.frombuffer(rows, dtype=np.uint8).reshape(h, 3 * w + 1)
        if not pixels[:, 0].any():
            return pixels[:, 1:].reshape(h, w, 3).copy()
    return _decode_png_pillow(data, expect)


_IEND_CHUNK = _png_chunk(b"IEND", b"")
_PNG_IHDR_HEAD = _PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR"


def _png_raw_rows(data: bytes, expect: tuple[int, int] | None = None) -> tuple[int, int, bytes] | None:
    """``(H, W, rows)``: the inflated rows (filter byte + 3W bytes each) of a PNG in encode_png's layout.

    Why: Pillow's per-image overhead (plugin lookup, file object, decoder set-up) is most of the cost
    of a 32x32 PNG; the layout lcrypt writes (8-bit RGB, no interlace, IHDR + one IDAT + IEND) needs
    only a CRC check and one bounded ``inflate``. Returns None for any other valid-looking layout
    (ancillary chunks, several IDATs, palette...) so the caller falls back to Pillow; raises
    ShardFormatError for what is lcrypt's layout but damaged (CRC, zlib stream, size), so a broken
    image is never decoded silently. Rows with filters other than 0 are the caller's to check.
    ``expect`` ``(H, W)``: any PNG whose IHDR says another size is refused before anything is inflated.
    """
    if len(data) < 57 or not data.startswith(_PNG_IHDR_HEAD):
        return None
    w, h, depth, color, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    _check_header_size("PNG", h, w, expect)
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
        _check_header_size("PNG", im.height, im.width, expect)
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


def image_member(sample: dict) -> tuple[str, bytes]:
    """The (extension, bytes) of a sample's one image member, or ShardFormatError."""
    found = [(ext, sample[ext]) for ext in ("png", "npy", "jpg", "jpeg") if ext in sample]
    if len(found) != 1:
        raise ShardFormatError(f"sample {sample.get('__key__')!r} has {len(found)} image members "
                               f"({sorted(k for k in sample if not k.startswith('__'))}); expected one")
    return found[0]


def decode_sample(sample: dict) -> tuple[np.ndarray, int]:
    """(image, label) of a raw sample dict from :func:`iter_samples`."""
    ext, data = image_member(sample)
    if LABEL_EXT not in sample:
        raise ShardFormatError(f"sample {sample.get('__key__')!r} has no .cls member")
    return decode_image(f"{sample['__key__']}.{ext}", data), decode_label(sample[LABEL_EXT])


# -- batch decoding (the loaders' hot path) -------------------------------------------------------
Record = tuple[str, bytes, str, bytes, str]
"""One sample as the loaders carry it: ``(key, .cls bytes, image extension, image bytes, shard url)``.

A plain tuple, not a dict per sample: at 32x32 the per-sample Python work, not the pixels, is the cost
(see :func:`iter_records`)."""

IMAGE_EXTS = frozenset(EXT_ENCODING)  # the image members a shard may hold: png, npy, jpg


def decode_records(records: list[Record], shape: Sequence[int] | None = None, num_classes: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (B, H, W, 3), labels int64 (B,))`` of a batch of records, decoded safely.

    One call per batch so the decoders write straight into one preallocated batch array (JPEG via
    simplejpeg's ``buffer=``, lcrypt-layout PNG via one inflate per image and one vectorised copy);
    other members go through :func:`decode_image` one by one. Every image must have the batch's
    first image's shape; anything else is a ShardFormatError naming the shard and member.

    The loaders pass the manifest's ``shape`` (``image_shape``; each image's header is checked against
    it before the image is decoded) and ``num_classes`` (every label must lie in ``0..num_classes-1``):
    a record outside either is refused naming its shard and sample key.
    """
    if not records:
        raise ValueError("decode_records needs at least one record")
    labels = _record_labels(records)
    if num_classes is not None:
        _check_label_range(records, labels, int(num_classes))
    expect = _expected_hw(shape)
    ext = records[0][2]
    fast = _BATCH_DECODERS.get(ext)
    if fast is not None and all(r[2] == ext for r in records):
        images = fast(records, expect)
    else:
        images = _stack_checked(records, [_decode_record(r, expect) for r in records])
    return images, labels


def _check_label_range(records: list[Record], labels: np.ndarray, num_classes: int) -> None:
    """Every label in ``0..num_classes-1``, else a ShardFormatError naming the shard and sample key."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        key, _, _, _, url = records[bad[0]]
        raise ShardFormatError(f"{url + ': ' if url else ''}sample {key}: class index {labels[bad[0]]} is "
                               f"outside 0..{num_classes - 1} (the manifest has {num_classes} classes); the "
                               "shard or the manifest was altered: run `lcrypt verify` on the dataset folder")


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


def _record_labels(records: list[Record]) -> np.ndarray:
    """:func:`decode_labels` of the records; on failure, name the shard and member that failed."""
    try:
        return decode_labels([r[1] for r in records])
    except ShardFormatError:
        for key, label, _, _, url in records:
            try:
                decode_labels([label])
            except ShardFormatError as exc:
                raise ShardFormatError(f"{url + ': ' if url else ''}{key}.{LABEL_EXT}: {exc}") from None
        raise


def _member_error(record: Record, what: object) -> ShardFormatError:
    """A ShardFormatError that names the shard and member of ``record``."""
    key, _, ext, _, url = record
    return ShardFormatError(f"{url + ': ' if url else ''}{key}.{ext}: {what}")


def _decode_record(record: Record, expect: tuple[int, int] | None = None) -> np.ndarray:
    """One record's image by :func:`decode_image` (whose errors name the member), plus the shard."""
    key, _, ext, data, url = record
    try:
        return decode_image(f"{key}.{ext}", data, expect)
    except ShardFormatError as exc:
        if not url:
            raise
        raise ShardFormatError(f"{url}: {exc}") from exc


def _stack_checked(records: list[Record], images: list[np.ndarray]) -> np.ndarray:
    """``np.stack`` after checking every image has the first one's shape (else name the odd member)."""
    shape = images[0].shape
    for record, image in zip(records, images):
        if image.shape != shape:
            raise _member_error(record, f"image is {image.shape}, but this batch's images are {shape}")
    return np.stack(images)


def _decode_jpeg_batch(records: list[Record], expect: tuple[int, int] | None = None) -> np.ndarray:
    """JPEGs decoded by simplejpeg straight into one ``(B, H, W, 3)`` array.

    The first image goes through :func:`decode_image` (header read, pixel limit); the others decode
    into their slot of the batch, whose fixed size also bounds what a hostile header can make
    libjpeg-turbo write (a larger image fails: "buffer is too small"; a smaller one is refused below).
    With ``expect``, the first image's header must give that size, so the buffer is the dataset's size.
    """
    import simplejpeg

    first = _decode_record(records[0], expect)
    out = np.empty((len(records), *first.shape), dtype=np.uint8)
    out[0] = first
    decode = simplejpeg.decode_jpeg
    for i in range(1, len(records)):
        try:
            got = decode(records[i][3], "RGB", buffer=out[i])
        except Exception as exc:  # libjpeg-turbo's ValueError for damaged data or a larger image
            _refuse_jpeg_of_other_size(records[i], expect)  # "wrong size" rather than libjpeg's words
            raise _member_error(records[i], f"cannot decode .jpg image: {exc}") from exc
        if got.shape != first.shape:
            raise _member_error(records[i], f"image is {got.shape}, but this batch's images are {first.shape}")
        if i == 1 and not np.shares_memory(got, out):  # simplejpeg must honour buffer=; never assume it
            raise RuntimeError("simplejpeg.decode_jpeg ignored buffer=; this simplejpeg is not supported")
    return out


def _refuse_jpeg_of_other_size(record: Record, expect: tuple[int, int] | None) -> None:
    """A ShardFormatError naming ``record`` when its JPEG header gives a size other than ``expect``."""
    import simplejpeg

    if expect is None:
        return
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(record[3])
    except Exception:  # no readable header: the caller reports the decoder's error
        return
    try:
        _check_header_size("JPEG", h, w, expect)
    except ShardFormatError as exc:
        raise _member_error(record, exc) from None


def _decode_png_batch(records: list[Record], expect: tuple[int, int] | None = None) -> np.ndarray:
    """PNGs of lcrypt's layout inflated one by one, then copied into one batch array in one numpy op.

    Images in another layout, or whose rows use PNG filters, go through Pillow (:func:`decode_image`).
    """
    raws: list[tuple[int, int, bytes] | None] = []
    for record in records:
        try:
            raws.append(_png_raw_rows(record[3], expect))
        except ShardFormatError as exc:
            raise _member_error(record, exc) from exc
    fast = [i for i, raw in enumerate(raws) if raw is not None]
    if not fast:  # no PNG of lcrypt's layout at all
        return _stack_checked(records, [_decode_record(r, expect) for r in records])
    h, w, _ = raws[fast[0]]
    for i in fast:
        if raws[i][:2] != (h, w):
            raise _member_error(records[i], f"image is {raws[i][:2]} (H, W), but this batch's images are "
                                            f"{(h, w)}")
    out = np.empty((len(records), h, w, 3), dtype=np.uint8)
    rows = np.frombuffer(b"".join(raws[i][2] for i in fast), dtype=np.uint8).reshape(len(fast), h, 3 * w + 1)
    out[fast if len(fast) < len(records) else slice(None)] = rows[:, :, 1:].reshape(len(fast), h, w, 3)
    filtered = {fast[j] for j in np.flatnonzero(rows[:, :, 0].any(axis=1))}
    for i, raw in enumerate(raws):
        if raw is None or i in filtered:  # a valid PNG lcrypt did not write: Pillow decodes it
            image = _decode_record(records[i], expect)
            if image.shape != out.shape[1:]:
                raise _member_error(records[i], f"image is {image.shape}, but this batch's images are "
                                                f"{out.shape[1:]}")
            out[i] = image
    return out


_BATCH_DECODERS = {"jpg": _decode_jpeg_batch, "png": _decode_png_batch}


# -- deterministic tar writing -------------------------------------------------------------------
def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode("ascii") + b"\0"


def _header_template() -> bytes:
    h = bytearray(TAR_BLOCK)
    h[100:108] = _octal(0o444, 8)  # mode
    h[108:116] = _octal(0, 8)  # uid
    h[116:124] = _octal(0, 8)  # gid
    h[136:148] = _octal(0, 12)  # mtime
    h[148:156] = b" " * 8  # checksum placeholder (counted as spaces)
    h[156:157] = b"0"  # regular file
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = _octal(0, 8)  # devmajor
    h[337:345] = _octal(0, 8)  # devminor
    return bytes(h)


_TEMPLATE = _header_template()
_TEMPLATE_SUM = sum(_TEMPLATE)


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file with every variable field fixed (mtime 0, uid/gid 0, mode 0444).

    Built from a precomputed template (only name, size and checksum vary): writing headers with
    ``tarfile`` cost more than encoding the 1 KB images themselves.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long for a plain ustar header: {name!r}")
    size_field = b"%011o\0" % size
    if len(size_field) != 12:
        raise ValueError(f"tar member {name!r} is too large ({size} bytes) for a ustar header")
    chksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)  # the template's name and size fields are zero
    return b"".join((raw, bytes(100 - len(raw)), _TEMPLATE[100:124], size_field, _TEMPLATE[136:148],
                     b"%06o\0 " % chksum, _TEMPLATE[156:]))


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A complete tar archive of ``members`` in the given order, padded to a 10 KiB record."""
    parts: list[bytes] = []
    size = 0
    for name, data in members:
        parts.append(tar_header(name, len(data)))
        parts.append(data)
        pad = -len(data) % TAR_BLOCK
        if pad:
            parts.append(b"\0" * pad)
        size += TAR_BLOCK + len(data) + pad
    size += 2 * TAR_BLOCK
    parts.append(b"\0" * (2 * TAR_BLOCK + (-size % TAR_RECORD)))
    return b"".join(parts)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Atomically write a deterministic tar; returns ``(bytes, sha256 hex)`` of what was written."""
    data = tar_bytes(members)
    atomic_write(path, data)
    return len(data), hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file, streamed."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


# -- streaming reading ---------------------------------------------------------------------------
def open_decompressed(fileobj: IO[bytes]) -> IO[bytes]:
    """``fileobj`` itself, or a decompressing reader when it starts with a gzip/bzip2/xz magic number."""
    head = fileobj.peek(6)[:6] if hasattr(fileobj, "peek") else None
    if head is None:
        fileobj = io.BufferedReader(fileobj) if isinstance(fileobj, io.RawIOBase) else _Peekable(fileobj)
        head = fileobj.peek(6)[:6]
    if head[:2] == b"\x1f\x8b":
        return _BufferedStream(_gunzip_chunks(fileobj))
    if head[:3] == b"BZh":
        import bz2

        return bz2.BZ2File(fileobj, mode="rb")
    if head[:6] == b"\xfd7zXZ\x00":
        import lzma

        return lzma.LZMAFile(fileobj, mode="rb")
    return fileobj


def _gunzip_chunks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-member) gzip stream."""
    d = zlib.decompressobj(wbits=31)
    while True:
        raw = f.read(size)
        if not raw:
            break
        while raw:
            out = d.decompress(raw)
            if out:
                yield out
            if d.eof:
                raw = d.unused_data
                d = zlib.decompressobj(wbits=31)
            else:
                raw = b""
    tail = d.flush()
    if tail:
        yield tail


class _BufferedStream:
    """read(n) over an iterator of byte blocks: one slice per call instead of GzipFile's per-call overhead."""

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks, self._buf, self._pos = blocks, b"", 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            rest = self._buf[self._pos:] + b"".join(self._blocks)
            self._buf, self._pos = b"", 0
            return rest
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos:end]
            self._pos = end
            return out
        parts, have = [self._buf[self._pos:]], len(self._buf) - self._pos
        for block in self._blocks:
            parts.append(block)
            have += len(block)
            if have >= n:
                break
        joined = b"".join(parts)
        self._buf, self._pos = joined, min(n, len(joined))
        return joined[:n]


class _Peekable:
    """A minimal peek() for file objects that lack one (e.g. some remote file systems)."""

    def __init__(self, f: IO[bytes]):
        self._f, self._head = f, b""

    def peek(self, n: int) -> bytes:
        if len(self._head) < n:
            self._head += self._f.read(n - len(self._head))
        return self._head

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            head, self._head = self._head, b""
            return head + self._f.read()
        if len(self._head) >= n:
            out, self._head = self._head[:n], self._head[n:]
            return out
        head, self._head = self._head, b""
        return head + self._f.read(n - len(head))


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for big values
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ShardFormatError(f"tar header field {bytes(field)!r} is not an octal number: the archive is corrupt"
                               ) from None


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ShardFormatError(f"tar archive is truncated inside {what}")
    return data


class TarSpecial(NamedTuple):
    """A tar member that is not a regular file or a folder, given by :func:`iter_members` with
    ``links="yield"`` in place of the member's bytes: what it is and, for a link, what it points to."""

    kind: str  # "hard link", "symbolic link", "character device", "block device", "FIFO", or another type
    target: str = ""  # a link's target path ("" for the other kinds)

    @property
    def is_link(self) -> bool:
        return self.kind in ("hard link", "symbolic link")

    def describe(self, name: str) -> str:
        """One line naming the member and what it is, e.g. "'a.jpg' is a hard link to 'b.jpg'"."""
        return f"{name!r} is a {self.kind}" + (f" to {self.target!r}" if self.target else "")


_REGULAR = (b"0", b"\0", b"7")
_SKIPPED = (b"5", b"D", b"V", b"g")  # folders (ustar, GNU dump-dir), a volume label, global pax header
_SPECIAL_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
                  b"6": "FIFO"}
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # POSIX: no data blocks follow these, whatever "size" says


def iter_members(fileobj: IO[bytes], keep: Callable[[int], bool] | None = None,
                 links: str = "error") -> Iterator[tuple[str, bytes | TarSpecial]]:
    """``(name, bytes)`` of each regular file in a tar stream (plain, gzip, bzip2 or xz), in order.

    A small streaming ustar/GNU/pax parser: on archives of 1 KB files it is ~5x faster than
    ``tarfile``'s stream mode, which dominated reading CIFAR-sized archives. Folders are skipped (they
    are not files); checksums are verified; truncation is an error. Links and other special members
    (devices, FIFOs, types this parser does not know) are never skipped silently: ``links="error"``
    (the default: lcrypt shards never contain them) raises ShardFormatError naming the member;
    ``links="yield"`` gives ``(name, TarSpecial)`` in place of the bytes, for a reader that reports it.
    ``keep(i)`` (i counts regular files and special members from 0) selects members: the others are
    stepped over without being copied out, which is what a reader of one part of a shared archive
    wants; counting special members too keeps the parts a partition of the archive.
    """
    if links not in ("error", "yield"):
        raise ValueError(f"links={links!r}: choose 'error' or 'yield'")
    f = open_decompressed(fileobj)
    long_name: str | None = None
    long_link: str | None = None
    pax: dict[str, str] = {}
    index = -1
    while True:
        header = f.read(TAR_BLOCK)
        if len(header) < TAR_BLOCK or header.count(0) == TAR_BLOCK:
            if header and header.count(0) != len(header):
                raise ShardFormatError("tar archive is truncated inside a header")
            return
        stored = _tar_number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise ShardFormatError("tar header checksum mismatch: the archive is corrupt")
        size = _tar_number(header[124:136])
        kind = header[156:157]
        if pax.get("size"):
            size = int(pax["size"])
        if kind in _NO_DATA:
            size = 0
        meta = kind in (b"L", b"K", b"x")
        if not meta and kind not in _SKIPPED:  # a file: regular or special, counted alike
            index += 1
            special = None if kind in _REGULAR else _special_member(header, kind, pax, long_link)
            if special is not None and links == "error":
                name = _member_name(header, pax, long_name)
                raise ShardFormatError(f"tar member {special.describe(name)}; only regular files are read "
                                       "(lcrypt shards never contain links or special files)")
            if keep is not None and not keep(index):
                if size:
                    _read_exact(f, size + -size % TAR_BLOCK, "a member")
                long_name, long_link, pax = None, None, {}
                continue
        data = _read_exact(f, size, "a member") if size else b""
        pad = -size % TAR_BLOCK
        if pad:
            _read_exact(f, pad, "padding")
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"K":
            long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":
            pax = _parse_pax(data)
            continue
        if kind not in _SKIPPED:
            yield _member_name(header, pax, long_name), (data if special is None else special)
        long_name, long_link, pax = None, None, {}


def _member_name(header: bytes, pax: dict[str, str], long_name: str | None) -> str:
    """A member's path: pax ``path``, else a GNU long name, else the ustar prefix + name fields."""
    name = pax.get("path") or long_name
    if name is None:
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if prefix:
                name = f"{prefix}/{name}"
    return name


def _special_member(header: bytes, kind: bytes, pax: dict[str, str], long_link: str | None) -> TarSpecial:
    """What a non-regular member is; a link's target from pax ``linkpath``, a GNU long link or the header."""
    name = _SPECIAL_KINDS.get(kind, f"member of tar type {kind.decode('latin-1')!r} (not a regular file)")
    target = ""
    if kind in (b"1", b"2"):
        target = pax.get("linkpath") or long_link or header[157:257].split(b"\0", 1)[0].decode(
            "utf-8", "surrogateescape")
    return TarSpecial(name, target)


def _parse_pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        key, _, value = data[sp + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def iter_samples(fileobj: IO[bytes], url: str = "") -> Iterator[dict]:
    """WebDataset-style samples ``{"__key__", "__url__", ext: bytes, ...}`` from a tar stream.

    Consecutive members sharing a key (directory + basename up to the first dot) form one sample.
    A key that reappears later or a repeated extension inside one sample is a format error.
    """
    for key, parts in _group_members(iter_members(fileobj), url):
        yield {"__key__": key, "__url__": url, **parts}


def _group_members(members: Iterable[tuple[str, bytes]], url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample: the WebDataset grouping rule of :func:`iter_samples` and
    :func:`iter_records` (consecutive members sharing a key; a key that reappears or a repeated
    extension is a format error; extensions lower-cased)."""
    seen: set[str] = set()
    key, parts = None, {}
    for name, body in members:
        folder, _, base = name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot:
            raise ShardFormatError(f"{url}: member {name!r} has no extension")
        member_key = f"{folder}/{stem}" if folder else stem
        if member_key != key:
            if key is not None:
                yield key, parts
            if member_key in seen:
                raise ShardFormatError(f"{url}: sample key {member_key!r} appears twice (members not grouped)")
            seen.add(member_key)
            key, parts = member_key, {}
        ext = ext.lower()
        if ext in parts:
            raise ShardFormatError(f"{url}: sample {key!r} has two .{ext} members")
        parts[ext] = body
    if key is not None:
        yield key, parts


# -- fast in-memory reading (the loaders' hot path) ----------------------------------------------
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_REGULAR_TYPES = frozenset(b"0\x007")  # tar typeflags of regular files


def iter_records(data: bytes, url: str = "") -> Iterator[Record]:
    """The samples of a shard held in memory as :data:`Record` tuples, members checked once per sample.

    The same grouping rules as :func:`iter_samples` (:func:`_group_members`), plus lcrypt's sample
    rule: exactly one ``.cls`` and one image member (``.png``, ``.npy`` or ``.jpg``). Any other member (``.pyd``,
    ``.pickle``, ``.json``...) is refused with a ShardFormatError naming the shard and member; nothing
    is decoded here. Why not iter_samples: on 32x32 JPEGs its per-member file reads and per-header
    byte sums cost more than decoding the image.
    """
    data = bytes(data)  # no copy for bytes; the fast path needs bytes' methods
    members = _plain_tar_members(data)
    if members is None:  # compressed, pax/GNU names, damaged...: the general streaming reader decides
        members = iter_members(io.BytesIO(data))
    for key, parts in _group_members(members, url):
        yield _make_record(key, parts, url)


def _make_record(key: str, parts: dict[str, bytes], url: str) -> Record:
    """The record of one sample's members, or a ShardFormatError saying what is wrong with them."""
    if len(parts) == 2 and LABEL_EXT in parts:
        for ext, body in parts.items():
            if ext in IMAGE_EXTS:
                return key, parts[LABEL_EXT], ext, body, url
    extra = sorted(e for e in parts if e != LABEL_EXT and e not in IMAGE_EXTS)
    if extra:
        raise ShardFormatError(
            f"{url}: sample {key!r} holds member(s) .{', .'.join(extra)} which lcrypt shards never contain; "
            "refusing it (pickles and other types are never decoded). Re-create the dataset with `lcrypt prepare`")
    if LABEL_EXT not in parts:
        raise ShardFormatError(f"{url}: sample {key!r} has no .cls member")
    raise ShardFormatError(f"{url}: sample {key!r} has {len(parts) - 1} image members "
                           f"({sorted(parts)}); expected one")


def _plain_tar_members(data: bytes) -> list[tuple[str, bytes]] | None:
    """``(name, bytes)`` of every member of an uncompressed tar of plain headers, all checksums checked.

    The fast path of :func:`iter_records` for shards as :func:`tar_bytes` writes them: it walks the
    headers in memory and checks all their checksums at once with numpy (:func:`_check_header_sums`)
    instead of a Python byte sum per header. Returns None, leaving the decision to
    :func:`iter_members`, for anything else: compressed data, pax/GNU headers, a ustar prefix,
    non-regular members, base-256 sizes, a header that does not parse, truncation. A checksum
    mismatch raises as iter_members does.
    """
    if data.startswith(_COMPRESSED_MAGIC):
        return None
    n, off = len(data), 0
    members: list[tuple[str, bytes]] = []
    headers: list[int] = []
    while off + TAR_BLOCK <= n:
        if data[off] == 0:  # no name: the end-of-archive block, or something for the general reader
            if data.count(0, off, off + TAR_BLOCK) == TAR_BLOCK:
                break
            return None
        if data[off + 156] not in _REGULAR_TYPES or data[off + 345] or data[off + 124] & 0x80:
            return None
        try:
            size = int(data[off + 124:off + 136].partition(b"\0")[0] or b"0", 8)
        except ValueError:
            return None
        name_end = data.find(0, off, off + 100)
        name = data[off:off + 100 if name_end < 0 else name_end].decode("utf-8", "surrogateescape")
        start = off + TAR_BLOCK
        off = start + size + (-size % TAR_BLOCK)
        if size < 0 or off > n:
            return None
        headers.append(start - TAR_BLOCK)
        members.append((name, data[start:start + size]))
    else:
        if data.count(0, off) != n - off:  # a partial, non-zero last block: iter_members says "truncated"
            return None
    if headers:
        _check_header_sums(data, headers)
    return members


_OCTAL_6 = 8 ** np.arange(5, -1, -1)


def _check_header_sums(data: bytes, headers: list[int]) -> None:
    """Verify the checksum of every tar header at ``headers`` (byte offsets) in a few numpy operations.

    The stored checksum is read vectorised when it has the usual form (six octal digits, NUL, as
    lcrypt, GNU tar and Python's tarfile write it); any other form is parsed by :func:`_tar_number`.
    """
    n = len(data)
    blocks = np.frombuffer(data, dtype=np.uint8, count=n - n % TAR_BLOCK).reshape(-1, TAR_BLOCK)
    block = blocks[np.asarray(headers) // TAR_BLOCK]
    field = block[:, 148:156]
    computed = block.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    digits = field[:, :6].astype(np.int64) - ord("0")
    usual = ((digits >= 0) & (digits < 8)).all(axis=1) & (field[:, 6] == 0)
    stored = digits @ _OCTAL_6
    for i in np.flatnonzero(~usual):
        stored[i] = _tar_number(field[i].tobytes())
    if not np.array_equal(computed, stored):
        raise ShardFormatError("tar header checksum mismatch: the archive is corrupt")


def read_shard(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(key, image, label)`` of every sample of a local shard, decoded safely."""
    with open(path, "rb") as f:
        for sample in iter_samples(f, url=str(path)):
            image, label = decode_sample(sample)
            yield sample["__key__"], image, label
