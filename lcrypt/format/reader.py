"""Reading shards: members grouped into samples, lcrypt's sample rule, and the loaders' in-memory fast path.

A shard is a tar whose members are grouped into samples the WebDataset way (:func:`group_members`:
consecutive members sharing a key, the member name up to its first dot). lcrypt's sample rule
(:func:`make_sample`, the one definition every reader applies): a sample is exactly one ``.cls``
member and one image member (``.png``, ``.npy`` or ``.jpg``); any other member (``.pyd``,
``.pickle``, ``.json``...) is refused naming the shard and member, never decoded.

The loaders read a shard held in memory (:func:`read_samples`): an uncompressed tar of plain headers,
as lcrypt writes it, is walked in memory with every header checksum checked at once by numpy; anything
else goes through the general streaming reader (:func:`lcrypt.tarstream.iter_members`), with the same
result. A sample travels as a :data:`Sample` tuple and is decoded only in its batch
(:func:`lcrypt.format.batch.decode_samples`).
"""

from __future__ import annotations

import io
import os
from typing import IO, Iterable, Iterator

import numpy as np

from lcrypt.format.codecs import ShardFormatError, decode_label, decode_member
from lcrypt.format.manifest import ShardEntry
from lcrypt.format.names import IMAGE_EXTS, LABEL_EXT
from lcrypt.tarstream import (COMPRESSED_MAGIC, REGULAR_TYPES, TAR_BLOCK, TarFormatError, iter_members,
                              tar_number)

Sample = tuple[str, bytes, str, bytes, str]
"""One sample as the loaders carry it: ``(key, .cls bytes, image extension, image bytes, shard url)``.

A plain tuple, not a dict or an object per sample: on small images the per-sample Python work, not the
pixels, is what limits a loader worker."""


def group_members(members: Iterable[tuple[str, bytes]], url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample: consecutive members sharing a key (folder + basename up to its
    first dot) form one sample. A key that reappears later, a repeated extension inside one sample or a
    member without extension is a ShardFormatError; extensions are lower-cased."""
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
                raise ShardFormatError(f"{url}: sample key {member_key!r} appears twice (members not "
                                       "grouped)")
            seen.add(member_key)
            key, parts = member_key, {}
        ext = ext.lower()
        if ext in parts:
            raise ShardFormatError(f"{url}: sample {key!r} has two .{ext} members")
        parts[ext] = body
    if key is not None:
        yield key, parts


def make_sample(key: str, parts: dict[str, bytes], url: str = "") -> Sample:
    """The :data:`Sample` of one sample's members, or a ShardFormatError saying how they break the rule:
    exactly one ``.cls`` and one image member (``.png``, ``.npy`` or ``.jpg``), nothing else."""
    if len(parts) == 2 and LABEL_EXT in parts:
        for ext, body in parts.items():
            if ext in IMAGE_EXTS:
                return key, parts[LABEL_EXT], ext, body, url
    extra = sorted(e for e in parts if e != LABEL_EXT and e not in IMAGE_EXTS)
    if extra:
        raise ShardFormatError(
            f"{url}: sample {key!r} holds member(s) .{', .'.join(extra)} which lcrypt shards never contain; "
            "refusing it (pickles and other types are never decoded). Re-create the dataset with "
            "`lcrypt prepare`")
    if LABEL_EXT not in parts:
        raise ShardFormatError(f"{url}: sample {key!r} has no .cls member")
    raise ShardFormatError(f"{url}: sample {key!r} has {len(parts) - 1} image members "
                           f"({sorted(parts)}); expected one")


def read_samples(data: bytes, url: str = "") -> Iterator[Sample]:
    """The samples of a shard held in memory, each checked by :func:`make_sample`; nothing is decoded.

    ``url`` names the shard in errors.
    """
    for key, parts in group_members(shard_members(data), url):
        yield make_sample(key, parts, url)


def shard_members(data: bytes) -> Iterable[tuple[str, bytes]]:
    """``(name, bytes)`` of every member of a shard held in memory, in order.

    Why not the streaming reader alone: on small images its per-member file reads and per-header byte
    sums cost more than decoding the image, so lcrypt's own tars take :func:`_plain_tar_members`.
    """
    data = bytes(data)  # no copy for bytes; the fast path needs bytes' methods
    members = _plain_tar_members(data)
    if members is None:  # compressed, pax/GNU names, damaged...: the general streaming reader decides
        return _tar_members(io.BytesIO(data))
    return members


def decode_shard(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, int]]:
    """``(key, image, label)`` of every sample of a local shard, decoded one by one.

    Streams the file through the general tar reader and decodes each image on its own, so it never
    holds the whole shard and shares no code with the loaders' fast path: the reference to check that
    path against, and the simple way to look at a shard's contents.
    """
    url = str(path)
    with open(path, "rb") as f:
        for key, parts in group_members(_tar_members(f), url):
            _, label, ext, image, _ = make_sample(key, parts, url)
            yield key, decode_member(f"{key}.{ext}", image), decode_label(label)


def count_problem(entry: ShardEntry, found: int) -> str | None:
    """What is wrong when a shard holds another number of samples than its manifest entry says, or None.

    A shard's count is checked against the manifest wherever a whole shard is read, so a short or
    padded shard is found, never a silently shorter epoch.
    """
    if found == entry.count:
        return None
    return f"the shard holds {found} samples, the manifest says {entry.count}"


def _tar_members(f: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """:func:`iter_members` of a shard: a tar that is not well formed is not a shard (ShardFormatError)."""
    try:
        yield from iter_members(f)
    except TarFormatError as exc:
        raise ShardFormatError(str(exc)) from None


def _plain_tar_members(data: bytes) -> list[tuple[str, bytes]] | None:
    """``(name, bytes)`` of every member of an uncompressed tar of plain headers, all checksums checked.

    The fast path of :func:`read_samples` for shards as lcrypt writes them: it walks the headers in
    memory and checks all their checksums at once with numpy (:func:`_check_header_sums`) instead of a
    Python byte sum per header. Returns None, leaving the decision to :func:`iter_members`, for
    anything else: compressed data, pax/GNU headers, a ustar prefix, non-regular members, base-256
    sizes, a header that does not parse, truncation. A checksum mismatch raises as iter_members does.
    """
    if data.startswith(COMPRESSED_MAGIC):
        return None
    n, off = len(data), 0
    members: list[tuple[str, bytes]] = []
    headers: list[int] = []
    while off + TAR_BLOCK <= n:
        if data[off] == 0:  # no name: the end-of-archive block, or something for the general reader
            if data.count(0, off, off + TAR_BLOCK) == TAR_BLOCK:
                break
            return None
        if data[off + 156] not in REGULAR_TYPES or data[off + 345] or data[off + 124] & 0x80:
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
    lcrypt, GNU tar and Python's tarfile write it); any other form is parsed by :func:`tar_number`.
    """
    n = len(data)
    blocks = np.frombuffer(data, dtype=np.uint8, count=n - n % TAR_BLOCK).reshape(-1, TAR_BLOCK)
    block = blocks[np.asarray(headers) // TAR_BLOCK]
    field = block[:, 148:156]
    computed = block.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 8 * ord(" ")
    digits = field[:, :6].astype(np.int64) - ord("0")
    usual = ((digits >= 0) & (digits < 8)).all(axis=1) & (field[:, 6] == 0)
    stored = digits @ _OCTAL_6
    try:
        for i in np.flatnonzero(~usual):
            stored[i] = tar_number(field[i].tobytes())
    except TarFormatError as exc:
        raise ShardFormatError(str(exc)) from None
    if not np.array_equal(computed, stored):
        raise ShardFormatError("tar header checksum mismatch: the archive is corrupt")
