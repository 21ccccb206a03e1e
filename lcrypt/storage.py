"""Where lcrypt reads and writes files: one protocol, :class:`Storage`, over local paths and remote URLs.

One rule says what is remote (:func:`is_remote`): a URL other than ``file://``; a ``file://`` URL is a
local path everywhere. :func:`storage_for` picks the storage of a path: :class:`LocalStorage` for a
local path; for a remote one, the storage the caller names, else :class:`FsspecStorage` (any fsspec URL:
``gs://``, ``s3://``, ``memory://``...; it needs fsspec and the plugin of the scheme, gcsfs, s3fs). The
Beam pipeline names Beam's own file systems (``pipelines/beamstorage.py``), which Dataflow workers have;
training machines need not have Beam. Raw sources (:mod:`lcrypt.sources`), manifests and indexes,
``lcrypt verify``, the loaders and prepare's ``--out`` all go through this protocol.

Listings are sorted POSIX paths relative to the folder listed. An object store has no folders: a
"folder" is a key prefix, it is a folder while some object is under it, and it has no symbolic links.
"""

from __future__ import annotations

import abc
import os
import tempfile
import shutil
import uuid
from pathlib import Path
from typing import IO


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL other than ``file://`` (which is a local path)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    """The file-system path of a local path or ``file://`` URL."""
    return str(path).removeprefix("file://")


def join(root: str | os.PathLike, *parts: str) -> str:
    """POSIX ``parts`` under ``root``: a URL joins with "/" and stays a URL; a local path as the OS does."""
    text = str(root)
    return "/".join([text.rstrip("/"), *parts]) if "://" in text else os.path.join(text, *parts)


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


class Storage(abc.ABC):
    """What lcrypt needs of a file system; :func:`storage_for` gives the one for a path.

    ``open`` raises FileNotFoundError for a missing file on every storage, so callers can tell a
    missing file from a failing store.
    """

    @abc.abstractmethod
    def open(self, path: str) -> IO[bytes]:
        """The file, opened for reading bytes."""

    def read_bytes(self, path: str) -> bytes:
        with self.open(path) as f:
            return f.read()

    @abc.abstractmethod
    def exists(self, path: str) -> bool:
        """A file or a folder is there."""

    @abc.abstractmethod
    def isdir(self, path: str) -> bool:
        """A folder (on an object store: a prefix some object has, that is not itself an object)."""

    @abc.abstractmethod
    def size(self, path: str) -> int:
        """Bytes of the file (FileNotFoundError when there is none)."""

    @abc.abstractmethod
    def list_files(self, folder: str, follow_links: bool = False) -> list[str]:
        """Every file under ``folder`` ([] when it is no folder); see :meth:`LocalStorage.list_files`."""

    def list_links(self, folder: str) -> list[str]:
        """Every symbolic link under ``folder``, not followed (an object store has none)."""
        return []

    @abc.abstractmethod
    def write_atomic(self, path: str, data: bytes, durable: bool = True) -> None:
        """Write the whole file or nothing: a temporary name, then a rename over ``path``.

        ``durable=False`` may skip flushing to disk, for scratch files a crash may lose but never leave
        half-written under their final name.
        """

    @abc.abstractmethod
    def delete(self, folder: str, rels: list[str]) -> None:
        """Delete these files under ``folder``, then the folders under it they leave empty."""

    @abc.abstractmethod
    def delete_folder(self, path: str) -> None:
        """Delete a folder and everything under it; nothing when it is not there."""


class LocalStorage(Storage):
    """Local paths and ``file://`` URLs, with the standard library."""

    def open(self, path: str) -> IO[bytes]:
        return open(local_path(path), "rb")

    def exists(self, path: str) -> bool:
        return os.path.exists(local_path(path))

    def isdir(self, path: str) -> bool:
        return os.path.isdir(local_path(path))

    def size(self, path: str) -> int:
        return os.stat(local_path(path)).st_size

    def list_files(self, folder: str, follow_links: bool = False) -> list[str]:
        """Every file under ``folder``, sorted ([] when ``folder`` is no folder).

        ``follow_links=True`` (what raw sources use: a split folder may be a link to another disk) enters
        symlinked folders and lists files under their path inside ``folder``; a link to one of its own
        ancestors would list forever, so it is a ValueError naming it. Without it, symlinked folders are
        not entered. A symlink to a file, even a broken one, is listed: reading it says what is wrong
        with it. A folder that cannot be listed is a ValueError, never a silent gap.
        """
        files, links = self._scan(folder, follow_links)
        return sorted(files + [rel for rel, is_dir in links if not is_dir])

    def list_links(self, folder: str) -> list[str]:
        return sorted(rel for rel, _ in self._scan(folder, False)[1])

    def _scan(self, folder: str, follow_links: bool) -> tuple[list[str], list[tuple[str, bool]]]:
        """``(files, [(link, points to a folder)])`` under ``folder``: the links it did not enter."""
        top = local_path(folder)
        files: list[str] = []
        links: list[tuple[str, bool]] = []
        if os.path.isdir(top):
            _scan_into(top, "", {os.path.realpath(top)}, follow_links, files, links)
        return files, links

    def write_atomic(self, path: str, data: bytes, durable: bool = True) -> None:
        path = local_path(path)
        if durable:
            atomic_write(path, data)
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def delete(self, folder: str, rels: list[str]) -> None:
        top = local_path(folder)
        for rel in rels:
            os.remove(os.path.join(top, rel))
        for d in sorted({os.path.dirname(r) for r in rels if "/" in r}, key=len, reverse=True):
            try:
                os.rmdir(os.path.join(top, d))
            except OSError:
                pass  # not empty: it holds something else

    def delete_folder(self, path: str) -> None:
        shutil.rmtree(local_path(path), ignore_errors=True)


def _scan_into(folder: str, rel: str, ancestors: set[str], follow_links: bool, files: list[str],
               links: list[tuple[str, bool]]) -> None:
    """Add what is under ``folder`` (``rel`` inside the root) to ``files`` and ``links``; ``ancestors``:
    the real paths of the folders from the root down to this one (a link to one of them is a loop)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        raise ValueError(f"cannot list folder {rel or '.'!r}: {exc.strerror or exc}; fix its permissions or "
                         "move it out of the source") from None
    for e in entries:
        path = f"{rel}/{e.name}" if rel else e.name
        link = e.is_symlink()
        if link and not (follow_links and e.is_dir()):
            links.append((path, e.is_dir()))
        elif e.is_dir(follow_symlinks=False) or link:
            real = os.path.realpath(e.path)
            if real in ancestors:
                raise ValueError(f"folder {path!r} links back to {real!r}, a folder that contains it: the "
                                 "tree would never end; remove the link or point it elsewhere")
            _scan_into(e.path, path, ancestors | {real}, follow_links, files, links)
        else:
            files.append(path)


class FsspecStorage(Storage):
    """Remote URLs through fsspec; a clear error names the plugin to install when a scheme has none."""

    @staticmethod
    def _fs(url: str):
        """``(fsspec file system, its path for url)``."""
        import fsspec

        try:
            return fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            scheme = url.split("://", 1)[0]
            raise OSError(f"cannot open {url}: {exc} (install fsspec's plugin for {scheme}://, e.g. gcsfs "
                          "for gs://, s3fs for s3://)") from None

    def open(self, path: str) -> IO[bytes]:
        fs, p = self._fs(path)
        return fs.open(p, "rb")

    def exists(self, path: str) -> bool:
        fs, p = self._fs(path)
        return fs.exists(p)

    def isdir(self, path: str) -> bool:
        fs, p = self._fs(path)
        return fs.isdir(p)

    def size(self, path: str) -> int:
        fs, p = self._fs(path)
        return int(fs.size(p))

    def list_files(self, folder: str, follow_links: bool = False) -> list[str]:
        fs, p = self._fs(folder)
        base = p.rstrip("/") + "/"
        return sorted(f[len(base):] for f in fs.find(p) if f.startswith(base))

    def write_atomic(self, path: str, data: bytes, durable: bool = True) -> None:
        fs, p = self._fs(path)
        tmp = f"{p}.tmp-{uuid.uuid4().hex}"
        try:
            fs.pipe_file(tmp, data)
            fs.mv(tmp, p)
        except BaseException:
            if fs.exists(tmp):
                fs.rm(tmp)
            raise

    def delete(self, folder: str, rels: list[str]) -> None:
        if rels:
            fs, p = self._fs(folder)
            fs.rm([f"{p.rstrip('/')}/{r}" for r in rels])

    def delete_folder(self, path: str) -> None:
        fs, p = self._fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)


LOCAL = LocalStorage()


def storage_for(path: str | os.PathLike, remote: Storage | None = None) -> Storage:
    """The storage of ``path``: local for a local path, else ``remote`` (default: fsspec)."""
    if not is_remote(path):
        return LOCAL
    return remote or FsspecStorage()
