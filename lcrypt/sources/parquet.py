"""``parquet``: a .parquet file or a folder of them with an image column (bytes, or Hugging Face's
``{bytes, path}`` struct; option ``image_column``) and an int label column (``label_column``); class names
from the Hugging Face ClassLabel metadata when present; ``group_column``: the column owners' match
patterns test.

Split rule, the subset of Hugging Face ``datasets``' data-files patterns (``data_files.py``:
``SPLIT_KEYWORDS``, ``KEYWORDS_IN_DIR_NAME_BASE_PATTERNS``, ``SPLIT_PATTERN_SHARDED``,
``KEYWORDS_IN_FILENAME_BASE_PATTERNS``) that places a file, tried in this order on its path inside the
source: a folder named by a split keyword, or holding one delimited by ``[-._ 0-9]``
(``default/train/0000.parquet``, ``data/test/x.parquet``); a file ``<split>-NNNNN-of-NNNNN.*`` with
``<split>`` a plain word, which is kept as is (``random-00000-of-00003`` -> random); a keyword delimited
by ``[-._ 0-9]`` in the file name (``cifar10-test-00000-of-00001.parquet`` -> test). A keyword maps to
Hugging Face's canonical split: train/training -> train; validation/valid/val/dev -> validation;
test/testing/eval/evaluation -> test. Any other file is in the ``split=`` split.
:meth:`ParquetSource.file_splits` lists where each file went.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import IO, Iterator

from lcrypt.sources.base import SPLIT_KEYWORDS, SPLIT_NAMES, FileSource, Probe, Record, label_fields

CANONICAL_SPLIT = {k: split for split, names in SPLIT_KEYWORDS.items() for k in names}
_KEYWORD_RE = re.compile(r"(?:^|(?<=[-._ 0-9]))(" + "|".join(sorted(SPLIT_NAMES, key=len, reverse=True))
                         + r")(?=[-._ 0-9]|$)")  # a split keyword delimited as Hugging Face's patterns do
_SHARDED_RE = re.compile(r"^([A-Za-z0-9_]+)-[0-9]{5}-of-[0-9]{5}")  # HF's SPLIT_PATTERN_SHARDED


@dataclasses.dataclass
class ParquetSource(FileSource):
    kind = "parquet"
    suffix = ".parquet"
    image_column: str = "image"
    label_column: str = "label"
    group_column: str | None = None

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        if probe.name.endswith(".parquet"):
            return True
        files = probe.files
        return bool(files) and all(f.endswith(".parquet") for f in files
                                   if not f.rsplit("/", 1)[-1].startswith((".", "_")))

    def file_split(self, rel: str) -> str:
        return parquet_split(self.name(rel), self.split)

    def iter_file(self, rel: str) -> Iterator[Record]:
        with self.store.open(self.full(rel)) as f:
            yield from iter_parquet(f, self.name(rel), self.image_column, self.label_column,
                                    self.group_column, self.split, self.class_names())

    def class_names(self) -> list[str] | None:
        """The Hugging Face ClassLabel names of the label column in the first file's metadata."""
        import pyarrow.parquet as pq

        with self.store.open(self.full(self.files()[0])) as f:
            meta = pq.read_schema(f).metadata or {}
        hf = meta.get(b"huggingface")
        if not hf:
            return None
        try:
            info = json.loads(hf)
            feat = info.get("info", {}).get("features", info.get("features", {}))[self.label_column]
            return [str(n) for n in feat["names"]]
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self) -> dict:
        return {**super().describe(), "image_column": self.image_column, "label_column": self.label_column}


def parquet_split(rel: str, default: str) -> str:
    """The split of a Parquet file by its path inside the source (the module's split rule)."""
    *folders, base = rel.split("/")
    for folder in reversed(folders):  # the folder nearest the file decides
        m = _KEYWORD_RE.search(folder)
        if m:
            return CANONICAL_SPLIT[m[1]]
    m = _SHARDED_RE.match(base)
    if m:
        return m[1]
    m = _KEYWORD_RE.search(base)
    return CANONICAL_SPLIT[m[1]] if m else default


def iter_parquet(fileobj: IO[bytes], rel: str, image_column: str, label_column: str, group_column: str | None,
                 default_split: str, class_names: list[str] | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fileobj)
    cols = [image_column, label_column] + ([group_column] if group_column else [])
    missing = [c for c in cols if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{rel}: no column(s) {missing}; columns are {pf.schema_arrow.names} "
                         "(choose with --image-column / --label-column)")
    split = parquet_split(rel, default_split)
    row = 0
    for rg in range(pf.num_row_groups):
        t = pf.read_row_group(rg, columns=cols)
        images = t.column(image_column).to_pylist()
        labels = t.column(label_column).to_pylist()
        groups = t.column(group_column).to_pylist() if group_column else [None] * len(labels)
        for img, lab, grp in zip(images, labels, groups):
            data = img.get("bytes") if isinstance(img, dict) else img
            name, label, problem = label_fields(lab, class_names)
            if problem and lab is None:
                problem = f"label: column {label_column!r} is null: a record needs a label"
            yield Record(source_id=f"{rel}#{row}", split=split, class_name=name,
                         data=b"" if problem else data or b"", label=label, layout_error=problem,
                         group=None if grp is None else str(grp))
            row += 1
