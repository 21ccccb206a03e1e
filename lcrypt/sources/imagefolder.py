"""``imagefolder``: a folder of class folders, each file placed by the tree rule (:mod:`.base`).

Class names are the sorted folder names (as torchvision's ImageFolder), so labels are stable. Symlinked
folders are followed (a link back to a folder above it is an error: a loop). A file that cannot be
opened (a broken link, no permission) is a rejected record (reason ``unreadable``), not a failed job.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

from lcrypt.sources.base import Probe, Record, TreeSource, tree_layout, tree_record
from lcrypt.storage import is_remote, join, local_path

UNIT_FILES = 512  # files read as one unit (one Beam element)


@dataclasses.dataclass
class ImageFolderSource(TreeSource):
    kind = "imagefolder"

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        return probe.isdir  # any folder no other kind claims

    def units(self, parts: int = 1) -> list[tuple]:
        files = self.store.list_files(self.path, follow_links=True)
        return [tuple(files[i:i + UNIT_FILES]) for i in range(0, len(files), UNIT_FILES)]

    def read_unit(self, unit: Sequence[str]) -> Iterator[Record]:
        for rel in unit:  # a file the rule rejects is not read
            data, problem = (b"", "") if tree_layout(rel, self.split, self.layout)[2] else self._read(rel)
            yield tree_record(rel, data, self.split, self.layout, problem)

    def sample_records(self, n: int) -> Iterator[Record]:
        """Files evenly spaced over the sorted tree: an odd image that sorts first does not decide."""
        files = [f for unit in self.units() for f in unit]
        step = max(1, len(files) // n)
        for rel in files[::step]:
            yield from self.read_unit((rel,))

    def _read(self, rel: str) -> tuple[bytes, str]:
        """``(bytes, "")`` of a tree file, or ``(b"", "unreadable: why")`` for one that cannot be opened."""
        path = join(self.path, rel)
        try:
            with self.store.open(path) as f:
                return f.read(), ""
        except OSError as exc:
            if is_remote(path):
                if not isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise  # an object store's passing failure: the runner retries the read
            elif os.path.islink(local_path(path)) and not os.path.exists(local_path(path)):
                return b"", f"unreadable: broken symbolic link to {os.readlink(local_path(path))!r}"
            return b"", f"unreadable: cannot open the file ({exc.strerror or exc})"
