"""A streaming tar reader: the one parser of tar archives in lcrypt, for raw sources and for shards.

Raw sources (an ImageFolder tree packed as .tar/.tar.gz, CIFAR's python archive, WebDataset shards) and
lcrypt's own shards are all tar streams, often compressed and often remote, read once from start to end.
:func:`iter_members` gives ``(name, bytes)`` for every regular file in archive order without unpacking
anything: plain ustar, GNU long names and pax headers; gzip (multi-member too), bzip2 and xz detected
from the first bytes (:func:`open_decompressed`). Header checksums are verified and truncation is an
error. Links, devices and FIFOs are never skipped silently: they are an error or, when the reader asks,
given as :class:`TarSpecial` so it can report them. Any archive that is not well formed raises
:class:`TarFormatError` naming what is wrong.
"""

from __future__ import annotations

import io
import zlib
from typing import IO, Callable, Iterator, NamedTuple

TAR_BLOCK = 512
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz
REGULAR_TYPES = frozenset(b"0\x007")  # tar typeflags of regular files (ustar "0", old "\0", contiguous "7")
_SKIPPED = (b"5", b"D", b"V", b"g")  # folders (ustar, GNU dump-dir), a volume label, global pax header
_SPECIAL_KINDS = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device",
                  b"6": "FIFO"}
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # POSIX: no data blocks follow these, whatever "size" says


class TarFormatError(ValueError):
    """A tar stream that is not a well-formed archive (checksum, truncation, a link where files are read)."""


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


def iter_members(fileobj: IO[bytes], keep: Callable[[int], bool] | None = None,
                 links: str = "error") -> Iterator[tuple[str, bytes | TarSpecial]]:
    """``(name, bytes)`` of each regular file in a tar stream (plain, gzip, bzip2 or xz), in order.

    A small streaming ustar/GNU/pax parser; ``tarfile``'s stream mode costs several times more per
    member, which dominates on archives of small images. Folders are skipped (they are not files);
    checksums are verified; truncation is an error. Links and other special members (devices, FIFOs,
    types this parser does not know) are never skipped silently: ``links="error"`` (the default: lcrypt
    shards never contain them) raises TarFormatError naming the member; ``links="yield"`` gives
    ``(name, TarSpecial)`` in place of the bytes, for a reader that reports it.
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
                raise TarFormatError("tar archive is truncated inside a header")
            return
        stored = tar_number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError("tar header checksum mismatch: the archive is corrupt")
        size = tar_number(header[124:136])
        kind = header[156:157]
        if pax.get("size"):
            size = int(pax["size"])
        if kind in _NO_DATA:
            size = 0
        meta = kind in (b"L", b"K", b"x")
        if not meta and kind not in _SKIPPED:  # a file: regular or special, counted alike
            index += 1
            special = None if header[156] in REGULAR_TYPES else _special_member(header, kind, pax, long_link)
            if special is not None and links == "error":
                name = _member_name(header, pax, long_name)
                raise TarFormatError(f"tar member {special.describe(name)}; only regular files are read "
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


def tar_number(field: bytes) -> int:
    """A numeric header field: octal ASCII (NUL- or space-terminated), or GNU base-256 for big values."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"tar header field {bytes(field)!r} is not an octal number: the archive is "
                             "corrupt") from None


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarFormatError(f"tar archive is truncated inside {what}")
    return data


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


# -- decompression -------------------------------------------------------------------------------
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
