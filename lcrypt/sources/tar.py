"""``tar``: the imagefolder tree inside a .tar / .tar.gz / .tgz archive, streamed without unpacking, under
the same tree rule (:mod:`.base`). Links and other special members are rejected (reason ``link`` or
``unreadable``), never skipped. Detected from the suffix."""

from __future__ import annotations

import dataclasses
from typing import IO, Callable, Iterator

from lcrypt.sources.base import (DEFAULT_SPLIT, FileSource, Probe, Record, TreeSource, special_problem,
                                 tree_record)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclasses.dataclass
class TarSource(TreeSource, FileSource):
    kind = "tar"

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        return probe.name.endswith(TAR_SUFFIXES)

    def read_file(self, rel: str, keep: Callable[[int], bool] | None) -> Iterator[Record]:
        with self.store.open(self.path) as f:  # the parser steps over other parts' members without copying
            yield from iter_tar_tree(f, self.split, keep, self.layout)


def iter_tar_tree(fileobj: IO[bytes], default_split: str = DEFAULT_SPLIT,
                  keep: Callable[[int], bool] | None = None, layout: str = "auto") -> Iterator[Record]:
    """Records of an ImageFolder tree inside a (compressed) tar stream, in archive order, unpacked never
    (``keep(i)``: only the i-th files it accepts, see lcrypt.tarstream.iter_members). A link or other
    special member is a rejected record (reason ``link`` or ``unreadable``): only regular files are read."""
    from lcrypt.tarstream import TarSpecial, iter_members

    for name, data in iter_members(fileobj, keep, links="yield"):
        rel = name.removeprefix("./")
        if isinstance(data, TarSpecial):
            yield tree_record(rel, b"", default_split, layout, special_problem(data, rel))
        else:
            yield tree_record(rel, data, default_split, layout)
