"""A Beam file system with an object store's rules, for running `prepare` against ``objstore://`` paths.

Dataflow users read and write ``gs://`` paths, where there are no directories: a "folder" is a key
prefix, ``exists`` is true only for objects, ``delete`` of a path without a trailing slash deletes the
object of that exact name, ``*`` stops at ``/``. These are GcsFileSystem's rules (apache_beam 2.77,
``io/gcp/gcsfilesystem.py``), and code that only ever ran on local paths gets them wrong. Objects are
kept as files under ``$LCRYPT_OBJECT_STORE_ROOT`` so a test can look at them; the class registers itself
with Beam when this module is imported (in-process runners only: worker processes do not import it).
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
from pathlib import Path

from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem

SCHEME = "objstore"
PREFIX = f"{SCHEME}://"
ROOT_ENV = "LCRYPT_OBJECT_STORE_ROOT"


def root() -> Path:
    return Path(os.environ[ROOT_ENV])


def local(url: str) -> Path:
    if not url.startswith(PREFIX):
        raise ValueError(f"not an {PREFIX} path: {url}")
    return root() / url[len(PREFIX):]


def url_of(path: Path) -> str:
    return PREFIX + path.relative_to(root()).as_posix()


class _Upload(io.BytesIO):
    """Like a GCS upload: the object appears, whole, when the writer is closed."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(self.getvalue())
        super().close()


class ObjectStoreFileSystem(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath.rstrip("/"), *paths)

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # no directories

    def has_dirs(self) -> bool:
        return False

    def _objects(self) -> list[Path]:
        return sorted(p for p in root().rglob("*") if p.is_file())

    def _list(self, dir_or_prefix: str):
        for p in self._objects():
            url = url_of(p)
            if url.startswith(dir_or_prefix):
                st = p.stat()
                yield FileMetadata(url, st.st_size, st.st_mtime)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO):
        raw = _Upload(local(path))
        ct = CompressionTypes.detect_compression_type(path) if compression_type == CompressionTypes.AUTO \
            else compression_type
        return raw if ct == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type=ct)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        p = local(path)
        if not p.is_file():
            raise BeamIOError("Open operation failed", {path: FileNotFoundError(path)})
        raw = io.BufferedReader(io.FileIO(p, "rb"))
        ct = CompressionTypes.detect_compression_type(path) if compression_type == CompressionTypes.AUTO \
            else compression_type
        return raw if ct == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type=ct)

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for src, dst in zip(source_file_names, destination_file_names):
            local(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local(src), local(dst))

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        self.copy(source_file_names, destination_file_names)  # an object store renames by copy + delete
        for src in source_file_names:
            local(src).unlink()

    def exists(self, path: str) -> bool:
        return local(path).is_file()  # a "folder" is only a prefix: it never exists

    def size(self, path: str) -> int:
        return local(path).stat().st_size

    def last_updated(self, path: str) -> float:
        return local(path).stat().st_mtime

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        st = local(path).stat()
        return FileMetadata(path, st.st_size, st.st_mtime)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            if path.endswith("/"):  # a prefix: every object under it
                for m in list(self._list(path)):
                    local(m.path).unlink()
                continue
            matched = self.match([path])[0].metadata_list
            for m in matched:
                local(m.path).unlink()

    def report_lineage(self, path, lineage) -> None:
        pass
