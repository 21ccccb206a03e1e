"""``wds``: WebDataset shards (a .tar, a folder of them, or an lcrypt dataset folder): samples with one
image member (.jpg/.jpeg/.png/.webp/.npy) and a .cls label. A shard's split is the name of its folder
(else ``split=``); class names come from the folder's manifest.json or ``_info.json``. A sample with a
link (or other special) member is rejected, never skipped."""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import IO, Iterator

from lcrypt.sources.base import FileSource, Probe, Record, label_fields, special_problem
from lcrypt.storage import join

WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "npy")


@dataclasses.dataclass
class WdsSource(FileSource):
    kind = "wds"
    suffix = ".tar"

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        files = probe.files
        return "manifest.json" in files or (bool(files) and all(
            f.endswith((".tar", ".json", ".parquet", ".jsonl")) for f in files))

    def file_split(self, rel: str) -> str:
        d = posixpath.dirname(rel)
        return posixpath.basename(d) if d else self.split

    def iter_file(self, rel: str) -> Iterator[Record]:
        with self.store.open(self.full(rel)) as f:
            yield from iter_wds(f, self.name(rel), self.file_split(rel), self.class_names())

    def class_names(self) -> list[str] | None:
        if self.store.isdir(self.path):
            for name in ("manifest.json", "_info.json"):
                p = join(self.path, name)
                if self.store.exists(p):
                    names = json.loads(self.store.read_bytes(p)).get("class_names")
                    if names:
                        return list(names)
        return None


def iter_wds(fileobj: IO[bytes], rel: str, split: str, class_names: list[str] | None) -> Iterator[Record]:
    """Records of a WebDataset shard; a sample with a link (or other special) member is rejected."""
    from lcrypt.format import group_members
    from lcrypt.tarstream import TarSpecial, iter_members

    for key, sample in group_members(iter_members(fileobj, links="yield"), rel):
        sid = f"{rel}#{key}"
        special = next(((ext, m) for ext, m in sample.items() if isinstance(m, TarSpecial)), None)
        found = [e for e in WDS_IMAGE_EXTS if e in sample]
        cls = sample.get("cls")
        if special is not None:
            yield Record(source_id=sid, split=split, class_name="", data=b"",
                         layout_error=special_problem(special[1], f"{key}.{special[0]}"))
            continue
        if len(found) != 1 or cls is None:
            yield Record(source_id=sid, split=split, class_name="", data=b"",
                         layout_error=f"layout: sample has image members {found} and "
                                      f"{'a' if cls is not None else 'no'} .cls member; expected one image "
                                      "and a .cls")
            continue
        try:
            lab = int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            yield Record(source_id=sid, split=split, class_name="", data=b"",
                         layout_error=f"label: .cls {cls[:20]!r} is not an integer")
            continue
        name, label, problem = label_fields(lab, class_names)
        yield Record(source_id=sid, split=split, class_name=name, data=b"" if problem else sample[found[0]],
                     ext="npy" if found[0] == "npy" else "", label=label, layout_error=problem)
