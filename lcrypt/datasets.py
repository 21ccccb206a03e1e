"""Readers of every raw dataset format lcrypt accepts: one definition each, pure Python (no Beam).

A source yields :class:`Record` objects (source id, split, class name, encoded image bytes) and never
decodes pixels itself; :func:`decode_record` does that under :mod:`lcrypt.images`' rules. The Beam
pipeline (``pipelines/sources.py``) wraps the same readers, passing its own file system, so a format
is parsed in exactly one place.

Source specs (``--source``), ``KIND:PATH`` or a bare path whose kind is detected:

=============  =======================================================================================
imagefolder    a directory of class folders, each file placed by the tree rule below. Class names =
               sorted folder names (as torchvision's ImageFolder), so labels are stable. Symlinked
               folders are followed (a link back to a folder above it is an error: a loop).
tar            the same tree inside a .tar / .tar.gz / .tgz archive, streamed without unpacking, under
               the same rule. Links and other special members are rejected (reason ``link``), never
               skipped. Detected from the suffix.
cifar          CIFAR-10 / CIFAR-100 python archives (``cifar-10-python.tar.gz``), read with a
               restricted unpickler that only rebuilds dicts, lists, strings and numpy arrays.
parquet        a .parquet file or a folder of them with an image column (bytes, or Hugging Face's
               ``{bytes, path}`` struct; ``image=``) and an int label column (``label=``); split by the
               Parquet split rule below; class names from the Hugging Face ClassLabel metadata when
               present.
wds            WebDataset shards (a .tar, a folder of them, or an lcrypt dataset folder): samples with
               one image member (.jpg/.jpeg/.png/.webp/.npy) and a .cls label; split from the folder
               of the shard or the lcrypt manifest; class names from the manifest or ``_info.json``.
=============  =======================================================================================

Tree rule (imagefolder and tar; decided per file from its path inside the source, so an archive is
streamed once). Split folder names are the Hugging Face split keywords (:data:`SPLIT_NAMES`: train,
training, validation, valid, val, dev, test, testing, eval, evaluation); a split keeps its folder's
own name (torchvision's convention). With ``layout="auto"`` (the default):

- ``<split>/<class>/<file>`` -> (split, class);
- ``<top>/<split>/<class>/<file>``, one top folder that is not a split name above the split folders
  (e.g. ``cifar10/train/cat/1.jpg``) -> (split, class);
- ``<class>/<file>``, the class not a split name -> (``split=``, default "train"; class);
- anything else is rejected (reason ``layout``) saying what is wrong: a folder inside a class folder,
  a file directly in a split folder or at the top, a path too deep. A path part starting with "."
  (hidden files and folders) is rejected with reason ``hidden``: it is never a class or a split.

``layout="class"``: every file is ``<class>/<file>`` in the ``split=`` split (a class may then be
named "test"); ``layout="split"``: every file is ``<split>/<class>/<file>``, any split name.

Parquet split rule, the subset of Hugging Face ``datasets``' data-files patterns (``data_files.py``:
``SPLIT_KEYWORDS``, ``KEYWORDS_IN_DIR_NAME_BASE_PATTERNS``, ``SPLIT_PATTERN_SHARDED``,
``KEYWORDS_IN_FILENAME_BASE_PATTERNS``) that places a file, tried in this order on its path inside the
source: a folder named by a split keyword, or holding one delimited by ``[-._ 0-9]``
(``default/train/0000.parquet``, ``data/test/x.parquet``); a file ``<split>-NNNNN-of-NNNNN.*`` with
``<split>`` a plain word, which is kept as is (``random-00000-of-00003`` -> random); a keyword delimited
by ``[-._ 0-9]`` in the file name (``cifar10-test-00000-of-00001.parquet`` -> test). A keyword maps to
Hugging Face's canonical split: train/training -> train; validation/valid/val/dev -> validation;
test/testing/eval/evaluation -> test. Any other file is in the ``split=`` split.
:meth:`Source.file_splits` lists where each file went.

Labels: when a source declares its class names (CIFAR, Parquet with metadata, wds with a manifest) the
label is the index into that list, and a label outside it is rejected (reason ``label``, naming the
value and the class count); otherwise class names are sorted distinct names, and names that are all
decimal integers become ``["0", ..., str(max)]`` so integer labels keep their values (a negative
integer label is rejected: it has no such place). A null label is rejected.

Rejections travel with the record (``Record.layout_error`` = ``"<reason>: <detail>"``, reason one of
:data:`REJECT_REASONS`) and :func:`decode_record` raises them as ``ImageRejected(reason, detail)``, so
the pipeline lists them in errors.jsonl: records read = accepted + rejected, nothing dropped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import io
import json
import os
import pickle
import posixpath
import re
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from lcrypt import storage

KINDS = ("imagefolder", "tar", "cifar", "parquet", "wds")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "npy")
UNIT_FILES = 512  # files of a folder tree read as one unit (one Beam element)
DEFAULT_SPLIT = "train"
LAYOUTS = ("auto", "class", "split")
REJECT_REASONS = ("layout", "hidden", "label", "link", "unreadable")  # the reasons of Record.layout_error
# Hugging Face datasets' SPLIT_KEYWORDS (data_files.py): canonical split -> the names that mean it
SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
SPLIT_NAMES = tuple(k for names in SPLIT_KEYWORDS.values() for k in names)
CANONICAL_SPLIT = {k: split for split, names in SPLIT_KEYWORDS.items() for k in names}


@dataclasses.dataclass
class Record:
    """One source image, not yet decoded. ``source_id`` is unique within the source and never published."""

    source_id: str
    split: str
    class_name: str
    data: bytes
    ext: str = ""  # "" = an encoded image file; "npy"; or "rgb8:HxW" for raw HWC uint8 pixels
    label: int = -1  # index into the source's declared class names, -1 when resolved by name later
    group: str | None = None  # value of the owner column (Parquet) used by owner matching
    layout_error: str = ""  # "<reason>: <detail>" when the record is rejected (later, never dropped)


# -- file systems -------------------------------------------------------------------------------
class LocalFS:
    """The file system a :class:`Source` reads through by default: :mod:`lcrypt.storage` (local paths and
    fsspec URLs). The Beam pipeline passes its own (pipelines/sources.py: BeamFS)."""

    open = staticmethod(storage.open_file)
    isdir = staticmethod(storage.isdir)
    exists = staticmethod(storage.exists)
    walk = staticmethod(functools.partial(storage.walk, follow_links=True))
    join = staticmethod(storage.join)


# -- source specs -------------------------------------------------------------------------------
@dataclasses.dataclass
class Source:
    """A parsed ``--source``: its kind, path and reader options; lists its read units and reads them."""

    kind: str
    path: str
    split: str = DEFAULT_SPLIT  # the split of single-split trees and of wds shards not in a split folder
    image_column: str = "image"
    label_column: str = "label"
    group_column: str | None = None
    layout: str = "auto"  # the tree rule of imagefolder and tar sources: "auto", "class" or "split"
    fs: Any = dataclasses.field(default_factory=LocalFS, repr=False, compare=False)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.layout != "auto" and self.kind not in ("imagefolder", "tar"):
            raise ValueError(f"layout {self.layout!r} applies to imagefolder and tar sources, "
                             f"not {self.kind}")

    @classmethod
    def parse(cls, spec: str, fs: Any = None, **options: Any) -> "Source":
        """``KIND:PATH`` or a bare path (kind detected from the suffix or folder contents)."""
        fs = fs or LocalFS()
        kind, path = None, spec
        head, sep, rest = spec.partition(":")
        if sep and head in KINDS:
            kind, path = head, rest
        if not fs.exists(path):
            raise FileNotFoundError(f"source {path!r} does not exist")
        if kind is None:
            kind = detect_kind(path, fs)
        options = {k: v for k, v in options.items() if v is not None}
        return cls(kind=kind, path=path, fs=fs, **options)

    # units: independent pieces the pipeline reads in parallel, listed in a deterministic order
    def units(self, parts: int = 1) -> list[tuple]:
        """Read units: file lists for folder trees; ``(file, part, parts)`` for archives and shard files.

        A source of one archive is read as ``parts`` units that each stream the whole archive but keep
        every ``parts``-th record, so several workers decode and encrypt it in parallel without shipping
        raw records between them (streaming CIFAR's 20 MB archive costs ~0.8 s; its work ~10x that).
        """
        if self.kind == "imagefolder":
            files = self.fs.walk(self.path)
            return [tuple(files[i:i + UNIT_FILES]) for i in range(0, len(files), UNIT_FILES)]
        files = self._files(".parquet" if self.kind == "parquet" else ".tar") if self.kind in ("parquet", "wds") \
            else [""]
        per_file = max(1, -(-parts // max(1, len(files))))
        return [(f, i, per_file) for f in files for i in range(per_file)]

    def _files(self, suffix: str) -> list[str]:
        if not self.fs.isdir(self.path):
            return [""]
        return [f for f in self.fs.walk(self.path) if f.endswith(suffix)]

    def _full(self, rel: str) -> str:
        return self.fs.join(self.path, rel) if rel else self.path

    def read_unit(self, unit: Sequence) -> Iterator[Record]:
        """Records of one unit from :meth:`units`, in a deterministic order."""
        if self.kind == "imagefolder":
            for rel in unit:  # a file the rule rejects is not read
                data, problem = (b"", "") if tree_layout(rel, self.split, self.layout)[2] else self._read(rel)
                yield tree_record(rel, data, self.split, self.layout, problem)
            return
        rel, part, parts = unit if len(unit) == 3 else (unit[0], 0, 1)
        keep = None if parts == 1 else (lambda i: i % parts == part)
        if self.kind == "tar":  # the parser steps over other parts' members without copying them
            with self.fs.open(self.path) as f:
                yield from iter_tar_tree(f, self.split, keep, self.layout)
            return
        for i, r in enumerate(self._read_file(rel)):
            if keep is None or keep(i):
                yield r

    def _read(self, rel: str) -> tuple[bytes, str]:
        """``(bytes, "")`` of a tree file, or ``(b"", "unreadable: why")`` for one that cannot be opened (a
        broken link, no permission): a rejected record, not a failed job."""
        path = self._full(rel)
        try:
            with self.fs.open(path) as f:
                return f.read(), ""
        except OSError as exc:
            if storage.is_url(path) and not isinstance(exc, (FileNotFoundError, PermissionError)):
                raise  # an object store's passing failure: the runner retries the read
            if not storage.is_url(path) and os.path.islink(path) and not os.path.exists(path):
                return b"", f"unreadable: broken symbolic link to {os.readlink(path)!r}"
            return b"", f"unreadable: cannot open the file ({exc.strerror or exc})"

    def _read_file(self, rel: str) -> Iterator[Record]:
        if self.kind == "cifar":
            with self.fs.open(self.path) as f:
                yield from iter_cifar(f)
        elif self.kind == "parquet":
            with self.fs.open(self._full(rel)) as f:
                yield from iter_parquet(f, self._name(rel), self.image_column, self.label_column,
                                        self.group_column, self.split, self.class_names())
        elif self.kind == "wds":
            with self.fs.open(self._full(rel)) as f:
                yield from iter_wds(f, self._name(rel), self._file_split(rel), self.class_names())
        else:
            raise ValueError(f"unknown source kind {self.kind!r}")

    def _name(self, rel: str) -> str:
        """A file's name inside the source: its relative path, or its own name for a one-file source."""
        return rel or posixpath.basename(self.path.rstrip("/"))

    def _file_split(self, rel: str) -> str:
        """The split of a Parquet file (the Parquet split rule) or a wds shard (its folder's name)."""
        if self.kind == "parquet":
            return parquet_split(self._name(rel), self.split)
        d = posixpath.dirname(rel)
        return posixpath.basename(d) if d else self.split

    def file_splits(self) -> list[tuple[str, str]]:
        """``(file inside the source, split)`` of each Parquet file or wds shard; [] for other kinds."""
        if self.kind not in ("parquet", "wds"):
            return []
        return [(self._name(rel), self._file_split(rel))
                for rel in self._files(".parquet" if self.kind == "parquet" else ".tar")]

    def __iter__(self) -> Iterator[Record]:
        for unit in self.units():
            yield from self.read_unit(unit)

    def class_names(self) -> list[str] | None:
        """Class names the source declares (index = label), or None when they come from the records."""
        if self.kind == "cifar":
            return None  # declared inside the archive; records carry label + name
        if self.kind == "parquet":
            return _parquet_class_names(self, self.label_column)
        if self.kind == "wds" and self.fs.isdir(self.path):
            for name in ("manifest.json", "_info.json"):
                p = self.fs.join(self.path, name)
                if self.fs.exists(p):
                    with self.fs.open(p) as f:
                        names = json.load(f).get("class_names")
                    if names:
                        return list(names)
        return None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source: kind and options, not its path or file names."""
        d = {"kind": self.kind}
        if self.kind in ("imagefolder", "tar"):
            d.update(layout=self.layout)
        if self.kind == "parquet":
            d.update(image_column=self.image_column, label_column=self.label_column)
        return d


def detect_kind(path: str, fs: Any = None) -> str:
    fs = fs or LocalFS()
    name = posixpath.basename(path.rstrip("/")).lower()
    if name.startswith(("cifar-10-python", "cifar-100-python")):
        return "cifar"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if fs.isdir(path):
        files = fs.walk(path)
        if files and all(f.endswith(".parquet") for f in files if not posixpath.basename(f).startswith((".", "_"))):
            return "parquet"
        if any(f == "manifest.json" for f in files) or (files and all(
                f.endswith((".tar", ".json", ".parquet", ".jsonl")) for f in files)):
            return "wds"
        return "imagefolder"
    raise ValueError(f"cannot tell the format of source {path!r}; prefix it with one of "
                     f"{', '.join(k + ':' for k in KINDS)}")


def classes_from_names(names: Iterable[str]) -> list[str]:
    """The stable class list for sources that name classes per record (see the module docstring)."""
    names = sorted(set(n for n in names if n))
    if names and all(n.isdigit() for n in names):
        return [str(i) for i in range(max(int(n) for n in names) + 1)]
    return names


# -- folder trees (directories and tar archives) --------------------------------------------------
_EXPECTED = {
    "auto": "expected <class>/<file>, or <split>/<class>/<file> below at most one top folder, <split> one of "
            + ", ".join(SPLIT_NAMES) + " (or choose the layout: 'class' or 'split')",
    "class": "expected <class>/<file> (layout 'class')",
    "split": "expected <split>/<class>/<file> (layout 'split')",
}


def tree_layout(rel: str, default_split: str, layout: str = "auto") -> tuple[str, str, str]:
    """(split, class, rejection) of a file path relative to the tree root, by the module's tree rule.

    The rejection is "" or ``"<reason>: <detail>"`` (reason ``hidden`` or ``layout``); split and class
    are "" when it is not.
    """
    parts = [p for p in rel.split("/") if p and p != "."]
    hidden = next((p for p in parts if p.startswith(".")), None)
    if hidden is not None:
        return "", "", f"hidden: {hidden!r} starts with '.'; hidden files and folders are not read"
    n = len(parts)
    if layout == "class" and n == 2:
        return default_split, parts[0], ""
    if layout == "split" and n == 3:
        return parts[0], parts[1], ""
    if layout == "auto":
        named = [p in SPLIT_NAMES for p in parts[:-1]]
        if n == 2 and not named[0]:
            return default_split, parts[0], ""
        if n == 3 and named[0]:
            return parts[0], parts[1], ""
        if n == 4 and named[1] and not named[0]:
            return parts[1], parts[2], ""
    return "", "", f"layout: {_layout_problem(parts, layout)}; {_EXPECTED[layout]}"


def _layout_problem(parts: list[str], layout: str) -> str:
    """What is wrong with a path the tree rule does not place (the start of its rejection's detail)."""
    if len(parts) == 1:
        return "file is at the top of the source, not inside a class folder"
    if layout == "class":
        split_at = None
    elif layout == "split":
        split_at = 0
    else:
        split_at = next((i for i, p in enumerate(parts[:-1]) if p in SPLIT_NAMES), None)
        if split_at is not None and split_at > 1:
            return (f"split folder {parts[split_at]!r} is {split_at} folders down; at most one top folder "
                    "may sit above the split folders")
    if split_at is None:  # the first folder is the class
        return (f"{parts[1]!r} is a folder inside class folder {parts[0]!r}" +
                (f" (if {parts[0]!r} is a split, choose layout 'split')" if layout == "auto" else ""))
    where = f" (inside top folder {parts[0]!r})" if split_at == 1 else ""
    if len(parts) == split_at + 2:
        return (f"file is directly in split folder {parts[split_at]!r}{where}, not inside a class folder" +
                (f" (if {parts[split_at]!r} is a class, choose layout 'class')" if layout == "auto" else ""))
    return (f"{parts[split_at + 2]!r} is a folder inside class folder {parts[split_at + 1]!r} "
            f"of split {parts[split_at]!r}{where}")


def layout_path(source_id: str) -> str:
    """The ``split/class/file`` part of a tree path, which owner globs are also matched against."""
    parts = [p for p in source_id.split("/") if p]
    return "/".join(parts[-3:])


def tree_record(rel: str, data: bytes, default_split: str, layout: str = "auto", problem: str = "") -> Record:
    """The record of a tree file; ``problem`` (``"<reason>: <detail>"``) rejects it where its path is fine."""
    split, cls, err = tree_layout(rel, default_split, layout)
    err = err or problem
    return Record(source_id=rel, split=split, class_name=cls, data=b"" if err else data, layout_error=err)


def iter_tar_tree(fileobj: IO[bytes], default_split: str = DEFAULT_SPLIT,
                  keep: Callable[[int], bool] | None = None, layout: str = "auto") -> Iterator[Record]:
    """Records of an ImageFolder tree inside a (compressed) tar stream, in archive order, unpacked never
    (``keep(i)``: only the i-th files it accepts, see lcrypt.tarstream.iter_members). A link or other
    special member is a rejected record (reason ``link`` or ``unreadable``): only regular files are read."""
    from lcrypt.tarstream import TarSpecial, iter_members

    for name, data in iter_members(fileobj, keep, links="yield"):
        rel = name.removeprefix("./")
        if isinstance(data, TarSpecial):
            yield tree_record(rel, b"", default_split, layout, _special_problem(data, rel))
        else:
            yield tree_record(rel, data, default_split, layout)


def _special_problem(member: Any, name: str) -> str:
    """The rejection of a tar link or other special member (a lcrypt.tarstream.TarSpecial)."""
    if member.is_link:
        return (f"link: {member.describe(name)}; only regular files are read (archive the file itself: "
                "tar --hard-dereference for hard links, --dereference for symbolic ones)")
    return f"unreadable: {member.describe(name)}; only regular files are read"


# -- CIFAR python archives ----------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds only what the CIFAR batches hold (dicts, lists, bytes, str, numbers, numpy arrays)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # bytes under protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}: not a CIFAR archive "
                                         "(only numpy arrays are rebuilt)")
        return super().find_class(module, name)


def _load_cifar_batch(data: bytes) -> dict:
    d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def iter_cifar(fileobj: IO[bytes]) -> Iterator[Record]:
    """Records of ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (labels + declared names)."""
    batches: dict[str, bytes] = {}
    meta = None
    from lcrypt.tarstream import iter_members

    for name, data in iter_members(fileobj):
        base = posixpath.basename(name)
        if base.startswith(("data_batch", "test_batch")) or base in ("train", "test"):
            batches[base] = data
        elif base in ("batches.meta", "meta"):
            meta = _load_cifar_batch(data)
    if meta is None or not batches:
        raise ValueError("not a CIFAR python archive: no batches.meta/meta or no data batches inside")
    names_key = "label_names" if "label_names" in meta else "fine_label_names"
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    for base in sorted(batches):
        d = _load_cifar_batch(batches.pop(base))
        labels = d.get("labels", d.get("fine_labels"))
        pixels = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        split = "test" if base.startswith("test") else "train"
        for i, (px, lab) in enumerate(zip(pixels, labels)):
            name, lab, problem = label_fields(int(lab), names)
            yield Record(source_id=f"{base}/{i}", split=split, class_name=name, label=lab,
                         data=b"" if problem else np.ascontiguousarray(px).tobytes(), ext="rgb8:32x32",
                         layout_error=problem)


def cifar_class_names(records_meta: Sequence[str]) -> list[str]:
    return list(records_meta)


# -- Parquet (Hugging Face layout) -----------------------------------------------------------------
def _parquet_class_names(source: Source, label_column: str) -> list[str] | None:
    import pyarrow.parquet as pq

    first = source.units()[0][0]
    with source.fs.open(source._full(first)) as f:
        meta = pq.read_schema(f).metadata or {}
    hf = meta.get(b"huggingface")
    if not hf:
        return None
    try:
        info = json.loads(hf)
        feat = info.get("info", {}).get("features", info.get("features", {}))[label_column]
        return [str(n) for n in feat["names"]]
    except (KeyError, TypeError, ValueError):
        return None


_KEYWORD_RE = re.compile(r"(?:^|(?<=[-._ 0-9]))(" + "|".join(sorted(SPLIT_NAMES, key=len, reverse=True))
                         + r")(?=[-._ 0-9]|$)")  # a split keyword delimited as Hugging Face's patterns do
_SHARDED_RE = re.compile(r"^([A-Za-z0-9_]+)-[0-9]{5}-of-[0-9]{5}")  # HF's SPLIT_PATTERN_SHARDED


def parquet_split(rel: str, default: str) -> str:
    """The split of a Parquet file by its path inside the source (the module's Parquet split rule)."""
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


def label_fields(value: Any, class_names: Sequence[str] | None) -> tuple[str, int, str]:
    """``(class name, label, rejection)`` of a record's label value by the module's label rule.

    An integer is an index into the declared class names (outside them: rejected), or without them a
    class name of its own that must be >= 0; a string is a class name (one of the declared ones, when
    there are). The label is -1 where the class name decides it later; the rejection is "" or
    ``"label: <detail>"``.
    """
    if value is None:
        return "", -1, "label: the label is null: a record needs a label"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = int(value)
        if class_names:
            if 0 <= value < len(class_names):
                return class_names[value], value, ""
            return "", -1, (f"label: label {value} is outside the {len(class_names)} declared classes "
                            f"(0..{len(class_names) - 1})")
        if value < 0:
            return "", -1, (f"label: label {value} is negative; without declared class names an integer "
                            "label is a class index >= 0")
        return str(value), -1, ""
    name = str(value)
    if class_names and name not in class_names:
        return "", -1, f"label: {name!r} is not one of the {len(class_names)} declared class names"
    return name, list(class_names).index(name) if class_names else -1, ""


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


# -- WebDataset shards ------------------------------------------------------------------------------
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
                         layout_error=_special_problem(special[1], f"{key}.{special[0]}"))
            continue
        if len(found) != 1 or cls is None:
            yield Record(source_id=sid, split=split, class_name="", data=b"",
                         layout_error=f"layout: sample has image members {found} and "
                                      f"{'a' if cls is not None else 'no'} .cls member; expected one image and a .cls")
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


# -- decoding ---------------------------------------------------------------------------------------
def decode_record(record: Record, size: tuple[int, int] | None = None,
                  expect: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a record under lcrypt.images' rules, or ImageRejected with the reason."""
    from lcrypt.images import ImageRejected, _fit, decode_image

    if record.layout_error:
        reason, sep, detail = record.layout_error.partition(": ")
        if not sep or reason not in REJECT_REASONS:  # a rejection written without its reason
            reason, detail = "layout", record.layout_error
        raise ImageRejected(reason, detail)
    if record.ext.startswith("rgb8:"):
        h, w = (int(v) for v in record.ext[5:].split("x"))
        return _fit(np.frombuffer(record.data, np.uint8).reshape(h, w, 3), size, expect)
    if record.ext == "npy":
        from lcrypt.format import ShardFormatError, decode_member

        try:
            return _fit(decode_member("x.npy", record.data), size, expect)
        except ShardFormatError as exc:
            raise ImageRejected("corrupt", str(exc)) from None
    return decode_image(record.data, size=size, expect=expect)


def iter_records(spec: str | Source, **options: Any) -> Iterator[Record]:
    """Every record of a source, in a deterministic order."""
    source = spec if isinstance(spec, Source) else Source.parse(spec, **options)
    return iter(source)


def owners_of(record: Record, owners: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """Every owner whose globs match the record (its path, its split/class/file part, or its group), in
    the owners' order: more than one is an overlap the caller must not settle silently."""
    cands = [record.source_id, layout_path(record.source_id)] if record.group is None else [record.group]
    return [name for name, globs in owners if any(fnmatch.fnmatchcase(c, g) for g in globs for c in cands)]


def match_owner(record: Record, owners: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    """The first of :func:`owners_of`, or None (pipelines/transforms.py's call until it takes them all)."""
    found = owners_of(record, owners)
    return found[0] if found else None


def load_arrays(spec: str | Source, split: str, limit: int | None = None, size: int | tuple[int, int] | None = None,
                **options: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one split of a source into ``(images (N, H, W, 3) uint8, labels int64, class_names)``.

    For attacks, tests and small experiments; the pipeline is the way to prepare a whole dataset.
    Records the rules reject raise (here nothing is skipped silently either). ``limit`` keeps the
    first ``limit`` records of the split in source order.
    """
    from lcrypt.images import parse_size

    source = spec if isinstance(spec, Source) else Source.parse(spec, **options)
    size = parse_size(size)
    declared = source.class_names()
    recs: list[Record] = []
    all_names: set[str] = set()
    images = []
    for r in source:
        if not r.layout_error:  # a rejected record names no class (as in the pipeline)
            all_names.add(r.class_name)
        if r.split != split or (limit is not None and len(recs) >= limit):
            continue
        recs.append(r)
        try:
            img = decode_record(r, size=size, expect=images[0].shape[:2] if images and size is None else None)
        except ValueError as exc:
            raise ValueError(f"{r.source_id}: {exc}") from None
        images.append(img)
    if not recs:
        raise ValueError(f"split {split!r} has no records in {source.path}")
    if declared is None and all(r.label >= 0 for r in recs):
        declared = _declared_from_records(source)
    names = declared or classes_from_names(all_names)
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([r.label if r.label >= 0 else index[r.class_name] for r in recs], dtype=np.int64)
    return np.stack(images), labels, names


def _declared_from_records(source: Source) -> list[str] | None:
    if source.kind == "cifar":
        from lcrypt.tarstream import iter_members

        with source.fs.open(source.path) as f:
            for name, data in iter_members(f):
                if posixpath.basename(name) in ("batches.meta", "meta"):
                    meta = _load_cifar_batch(data)
                    key = "label_names" if "label_names" in meta else "fine_label_names"
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]
    return None


def source_class_names(source: Source, records: Iterable[Record] | None = None) -> list[str]:
    """The class list of a whole source (reads it when the names are not declared up front)."""
    declared = source.class_names() or _declared_from_records(source)
    if declared:
        return declared
    records = records if records is not None else source
    return classes_from_names(r.class_name for r in records if not r.layout_error)


Opener = Callable[[str], IO[bytes]]
