"""lcrypt's storage protocol (:mod:`lcrypt.storage`) on Beam's file systems, for the pipeline's remote paths.

Dataflow workers read and write ``gs://`` (or ``s3://``...) through ``apache_beam.io.filesystems``, which
they have without fsspec; local paths stay with :class:`lcrypt.storage.LocalStorage`
(:func:`pipeline_storage`). An object store has no folders: a "folder" is a key prefix, it never
"exists" as an object, deleting its name deletes nothing, and ``*`` stops at ``/`` (so listings match
``**``); tests/object_store.py keeps these rules.
"""

from __future__ import annotations

import errno
import uuid
from typing import IO

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from lcrypt import storage


class BeamStorage(storage.Storage):
    """Remote paths through apache_beam's FileSystems."""

    def open(self, path: str) -> IO[bytes]:
        try:
            return FileSystems.open(path, compression_type="uncompressed")
        except BeamIOError:
            if not FileSystems.exists(path):
                raise FileNotFoundError(errno.ENOENT, "no such object", path) from None
            raise

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path) or self.isdir(path)

    def isdir(self, path: str) -> bool:
        # "**" because "*" stops at "/", and a dataset's files sit below its split and class folders
        return bool(FileSystems.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list) and \
            not FileSystems.exists(path)

    def size(self, path: str) -> int:
        if not FileSystems.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no such object", path)
        return FileSystems.get_filesystem(path).size(path)

    def list_files(self, folder: str, follow_links: bool = False) -> list[str]:
        base = folder.rstrip("/") + "/"
        found = FileSystems.match([base + "**"])[0].metadata_list
        return sorted(m.path[len(base):] for m in found if not m.path.endswith("/"))

    def write_atomic(self, path: str, data: bytes, durable: bool = True) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])

    def delete(self, folder: str, rels: list[str]) -> None:
        if rels:
            FileSystems.delete([storage.join(folder, r) for r in rels])

    def delete_folder(self, path: str) -> None:
        self.delete(path, self.list_files(path))


BEAM = BeamStorage()


def pipeline_storage(path: str) -> storage.Storage:
    """The storage the pipeline reads and writes ``path`` with: local, or Beam's file systems."""
    return storage.storage_for(path, BEAM)
