"""Decoding a batch of samples (:data:`~lcrypt.format.reader.Sample`) into one uint8 array: the loaders'
hot path.

One call per batch, so the decoders write straight into one preallocated ``(B, H, W, 3)`` array: JPEG via
simplejpeg's ``buffer=``, lcrypt-layout PNG via one inflate per image and one vectorised copy; anything
else goes through :func:`~lcrypt.format.codecs.decode_member` one image at a time. Every error names the
shard and the member it concerns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lcrypt.format.codecs import (ShardFormatError, check_header_size, decode_labels, decode_member,
                                  expected_hw, png_raw_rows)
from lcrypt.format.names import LABEL_EXT
from lcrypt.format.reader import Sample


def decode_samples(samples: list[Sample], shape: Sequence[int] | None = None, num_classes: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (B, H, W, 3), labels int64 (B,))`` of a batch of samples, decoded safely.

    Every image must have the batch's first image's shape; anything else is a ShardFormatError naming
    the shard and member. The loaders pass the manifest's ``shape`` (``image_shape``; each image's
    header is checked against it before the image is decoded) and ``num_classes`` (every label must
    lie in ``0..num_classes-1``): a sample outside either is refused naming its shard and sample key.
    """
    if not samples:
        raise ValueError("decode_samples needs at least one sample")
    labels = _sample_labels(samples)
    if num_classes is not None:
        _check_label_range(samples, labels, int(num_classes))
    expect = expected_hw(shape)
    ext = samples[0][2]
    fast = _BATCH_DECODERS.get(ext)
    if fast is not None and all(s[2] == ext for s in samples):
        images = fast(samples, expect)
    else:
        images = _stack_checked(samples, [_decode_one(s, expect) for s in samples])
    return images, labels


def _check_label_range(samples: list[Sample], labels: np.ndarray, num_classes: int) -> None:
    """Every label in ``0..num_classes-1``, else a ShardFormatError naming the shard and sample key."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        key, _, _, _, url = samples[bad[0]]
        raise ShardFormatError(f"{url + ': ' if url else ''}sample {key}: class index {labels[bad[0]]} is "
                               f"outside 0..{num_classes - 1} (the manifest has {num_classes} classes); the "
                               "shard or the manifest was altered: run `lcrypt verify` on the dataset folder")


def _sample_labels(samples: list[Sample]) -> np.ndarray:
    """:func:`decode_labels` of the samples; on failure, name the shard and member that failed."""
    try:
        return decode_labels([s[1] for s in samples])
    except ShardFormatError:
        for key, label, _, _, url in samples:
            try:
                decode_labels([label])
            except ShardFormatError as exc:
                raise ShardFormatError(f"{url + ': ' if url else ''}{key}.{LABEL_EXT}: {exc}") from None
        raise


def _member_error(sample: Sample, what: object) -> ShardFormatError:
    """A ShardFormatError that names the shard and image member of ``sample``."""
    key, _, ext, _, url = sample
    return ShardFormatError(f"{url + ': ' if url else ''}{key}.{ext}: {what}")


def _decode_one(sample: Sample, expect: tuple[int, int] | None = None) -> np.ndarray:
    """One sample's image by :func:`decode_member` (whose errors name the member), plus the shard."""
    key, _, ext, data, url = sample
    try:
        return decode_member(f"{key}.{ext}", data, expect)
    except ShardFormatError as exc:
        if not url:
            raise
        raise ShardFormatError(f"{url}: {exc}") from exc


def _stack_checked(samples: list[Sample], images: list[np.ndarray]) -> np.ndarray:
    """``np.stack`` after checking every image has the first one's shape (else name the odd member)."""
    shape = images[0].shape
    for sample, image in zip(samples, images):
        if image.shape != shape:
            raise _member_error(sample, f"image is {image.shape}, but this batch's images are {shape}")
    return np.stack(images)


def _decode_jpeg_batch(samples: list[Sample], expect: tuple[int, int] | None = None) -> np.ndarray:
    """JPEGs decoded by simplejpeg straight into one ``(B, H, W, 3)`` array.

    The first image goes through :func:`decode_member` (header read, pixel limit); the others decode
    into their slot of the batch, whose fixed size also bounds what a hostile header can make
    libjpeg-turbo write (a larger image fails: "buffer is too small"; a smaller one is refused below).
    With ``expect``, the first image's header must give that size, so the buffer is the dataset's size.
    """
    import simplejpeg

    first = _decode_one(samples[0], expect)
    out = np.empty((len(samples), *first.shape), dtype=np.uint8)
    out[0] = first
    decode = simplejpeg.decode_jpeg
    for i in range(1, len(samples)):
        try:
            got = decode(samples[i][3], "RGB", buffer=out[i])
        except Exception as exc:  # libjpeg-turbo's ValueError for damaged data or a larger image
            _refuse_jpeg_of_other_size(samples[i], expect)  # "wrong size" rather than libjpeg's words
            raise _member_error(samples[i], f"cannot decode .jpg image: {exc}") from exc
        if got.shape != first.shape:
            raise _member_error(samples[i], f"image is {got.shape}, but this batch's images are "
                                            f"{first.shape}")
        if i == 1 and not np.shares_memory(got, out):  # simplejpeg must honour buffer=; never assume it
            raise RuntimeError("simplejpeg.decode_jpeg ignored buffer=; this simplejpeg is not supported")
    return out


def _refuse_jpeg_of_other_size(sample: Sample, expect: tuple[int, int] | None) -> None:
    """A ShardFormatError naming ``sample`` when its JPEG header gives a size other than ``expect``."""
    import simplejpeg

    if expect is None:
        return
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(sample[3])
    except Exception:  # no readable header: the caller reports the decoder's error
        return
    try:
        check_header_size("JPEG", h, w, expect)
    except ShardFormatError as exc:
        raise _member_error(sample, exc) from None


def _decode_png_batch(samples: list[Sample], expect: tuple[int, int] | None = None) -> np.ndarray:
    """PNGs of lcrypt's layout inflated one by one, then copied into one batch array in one numpy op.

    Images in another layout, or whose rows use PNG filters, go through Pillow (:func:`decode_member`).
    """
    raws: list[tuple[int, int, bytes] | None] = []
    for sample in samples:
        try:
            raws.append(png_raw_rows(sample[3], expect))
        except ShardFormatError as exc:
            raise _member_error(sample, exc) from exc
    fast = [i for i, raw in enumerate(raws) if raw is not None]
    if not fast:  # no PNG of lcrypt's layout at all
        return _stack_checked(samples, [_decode_one(s, expect) for s in samples])
    h, w, _ = raws[fast[0]]
    for i in fast:
        if raws[i][:2] != (h, w):
            raise _member_error(samples[i], f"image is {raws[i][:2]} (H, W), but this batch's images are "
                                            f"{(h, w)}")
    out = np.empty((len(samples), h, w, 3), dtype=np.uint8)
    rows = np.frombuffer(b"".join(raws[i][2] for i in fast), dtype=np.uint8).reshape(len(fast), h, 3 * w + 1)
    out[fast if len(fast) < len(samples) else slice(None)] = rows[:, :, 1:].reshape(len(fast), h, w, 3)
    filtered = {fast[j] for j in np.flatnonzero(rows[:, :, 0].any(axis=1))}
    for i, raw in enumerate(raws):
        if raw is None or i in filtered:  # a valid PNG lcrypt did not write: Pillow decodes it
            image = _decode_one(samples[i], expect)
            if image.shape != out.shape[1:]:
                raise _member_error(samples[i], f"image is {image.shape}, but this batch's images are "
                                                f"{out.shape[1:]}")
            out[i] = image
    return out


_BATCH_DECODERS = {"jpg": _decode_jpeg_batch, "png": _decode_png_batch}
