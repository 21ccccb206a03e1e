"""Writing shards: one deterministic tar writer and :class:`ShardWriter`, the one way samples become a shard.

A sample is exactly two tar members that share a key (WebDataset convention: the key is the member name
up to its first dot): ``<key>.cls`` then ``<key>.<ext>`` (:mod:`lcrypt.format.codecs`). Each extra
member costs a 512-byte header plus padding to 512 bytes, which dominates on small images, so a sample
carries nothing else (no ``.json``, no file name).

Tars are written deterministically (:func:`tar_bytes`): plain ustar headers with mtime 0, uid/gid 0,
empty user/group names, mode 0444, members in the order given (:class:`ShardWriter` takes samples
sorted by key), the archive padded like GNU/Python tar; files are written to a temporary name and
renamed (:func:`lcrypt.storage.atomic_write`), so equal content gives byte-equal files and a
crash never leaves a shard that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Iterable, Sequence

import numpy as np

from lcrypt.format.codecs import encode_image, encode_label
from lcrypt.storage import atomic_write
from lcrypt.format.manifest import ShardEntry
from lcrypt.format.names import ENCODINGS, IMAGE_EXT, LABEL_EXT, shard_path
from lcrypt.tarstream import TAR_BLOCK

TAR_RECORD = 20 * TAR_BLOCK  # what GNU tar and Python's tarfile pad archives to


@dataclasses.dataclass(frozen=True)
class ShardWriter:
    """Samples ``(key, label, image bytes)``, sorted by key, to a shard's bytes and its manifest entry.

    ``encoding`` names the image members' type; :meth:`encode` turns an image into those bytes with
    the JPEG options given here (the pipeline encodes images earlier, in its workers, and gives this
    writer the bytes).
    """

    encoding: str
    jpeg_quality: int | None = None
    jpeg_subsampling: str = "444"

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")

    def encode(self, image: np.ndarray) -> bytes:
        """The image member's bytes of one (H, W, 3) uint8 image."""
        return encode_image(image, self.encoding, self.jpeg_quality, self.jpeg_subsampling)

    def members(self, samples: Iterable[tuple[str, int, bytes]]) -> list[tuple[str, bytes]]:
        """The tar members of ``samples``, in their order: ``key.cls`` then ``key.<ext>`` for each."""
        ext = IMAGE_EXT[self.encoding]
        members = []
        for key, label, image in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            members.append((f"{key}.{LABEL_EXT}", encode_label(label)))
            members.append((f"{key}.{ext}", image))
        return members

    def shard(self, split: str, owner: str, index: int, samples: Sequence[tuple[str, int, bytes]]
              ) -> tuple[bytes, ShardEntry]:
        """``(tar bytes, manifest entry)`` of shard ``index`` of (split, owner) holding ``samples``.

        The samples must be sorted by key, each key once: that order is what makes a shard a function
        of its content (and what ``lcrypt verify`` checks).
        """
        keys = [s[0] for s in samples]
        if any(a >= b for a, b in zip(keys, keys[1:])):
            raise ValueError("a shard's samples must be sorted by key, each key once")
        data = tar_bytes(self.members(samples))
        entry = ShardEntry(path=shard_path(split, owner, index), owner=owner, split=split, count=len(samples),
                           bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        return data, entry


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

    Built from a precomputed template (only name, size and checksum vary): building headers with
    ``tarfile`` costs more than encoding small images.
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


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Atomically write a deterministic tar; returns ``(bytes, sha256 hex)`` of what was written."""
    data = tar_bytes(members)
    atomic_write(path, data)
    return len(data), hashlib.sha256(data).hexdigest()
