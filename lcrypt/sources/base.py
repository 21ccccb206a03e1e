"""What every source kind shares: the :class:`Record` it yields, the :class:`Source` interface, the tree
rule, the label rule, rejections, decoding and owner matching.

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
import posixpath
from typing import Any, Callable, ClassVar, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from lcrypt.storage import Storage, join, storage_for

DEFAULT_SPLIT = "train"
LAYOUTS = ("auto", "class", "split")
REJECT_REASONS = ("layout", "hidden", "label", "link", "unreadable")  # the reasons of Record.layout_error
# Hugging Face datasets' SPLIT_KEYWORDS (data_files.py): canonical split -> the names that mean it
SPLIT_KEYWORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
                  "test": ("test", "testing", "eval", "evaluation")}
SPLIT_NAMES = tuple(k for names in SPLIT_KEYWORDS.values() for k in names)


class Record(NamedTuple):
    """One source image, not yet decoded. ``source_id`` is unique within the source and never published.

    A NamedTuple, so the pipeline ships it between steps as it is: Beam encodes it field by field with
    its schema coder (registered in pipelines/sources.py), never with pickle.
    """

    source_id: str
    split: str
    class_name: str
    data: bytes
    ext: str = ""  # "" = an encoded image file; "npy"; or "rgb8:HxW" for raw HWC uint8 pixels
    label: int = -1  # index into the source's declared class names, -1 when resolved by name later
    group: str | None = None  # value of the owner column (Parquet) used by owner matching
    layout_error: str = ""  # "<reason>: <detail>" when the record is rejected (later, never dropped)


class Probe:
    """What auto-detection looks at for a bare ``--source`` path: its name, whether it is a folder, and
    the files under it (listed once, only when a kind asks)."""

    def __init__(self, path: str, store: Storage):
        self.path, self.store = path, store
        self.name = posixpath.basename(path.rstrip("/")).lower()
        self.isdir = store.isdir(path)
        self._files: list[str] | None = None

    @property
    def files(self) -> list[str]:
        if self._files is None:
            self._files = self.store.list_files(self.path, follow_links=True) if self.isdir else []
        return self._files


@dataclasses.dataclass
class Source:
    """A raw dataset of one kind: lists its read units and reads them into :class:`Record` objects.

    A kind is a subclass registered in :mod:`lcrypt.sources` under :attr:`kind`; its dataclass fields
    other than ``path`` and ``store`` are its reader options. Units are independent pieces the pipeline
    reads in parallel, listed in a deterministic order; records come out of a unit in a deterministic
    order.
    """

    kind: ClassVar[str] = ""
    path: str
    split: str = DEFAULT_SPLIT  # the split of records their source does not place in one
    store: Storage | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.store is None:
            self.store = storage_for(self.path)

    @classmethod
    def detect(cls, probe: Probe) -> bool:
        """Whether a bare path is of this kind (auto-detection; ``KIND:PATH`` names the kind instead)."""
        return False

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("path", "store"))

    def units(self, parts: int = 1) -> list[tuple]:
        """Read units; ``parts``: how many workers should share the reading, as a hint."""
        raise NotImplementedError

    def read_unit(self, unit: Sequence) -> Iterator[Record]:
        """Records of one unit from :meth:`units`."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        for unit in self.units():
            yield from self.read_unit(unit)

    def sample_records(self, n: int) -> Iterator[Record]:
        """About ``n`` or more records spread over the source, for guessing its image size (the caller
        stops when it has enough): by default its first ones."""
        return iter(self)

    def class_names(self) -> list[str] | None:
        """Class names the source declares (index = label), or None when they come from the records."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source: kind and options, not its path or file names."""
        return {"kind": self.kind}

    def file_splits(self) -> list[tuple[str, str]]:
        """``(file inside the source, split)`` where the kind decides a split per file; else []."""
        return []


@dataclasses.dataclass
class FileSource(Source):
    """A source read file by file: one archive, or a folder of files ending in :attr:`suffix`.

    A file is read as ``parts`` units ``(file, part, parts)`` that each stream the whole file but keep
    every ``parts``-th record, so several workers decode and encrypt one archive in parallel without
    shipping raw records between them (streaming is cheap next to decoding and encrypting).
    """

    suffix: ClassVar[str] = ""  # the files of a folder source; "" = the source is always one file

    def files(self) -> list[str]:
        """The source's files as paths inside it; ``[""]`` when the source is the file itself."""
        if not self.suffix or not self.store.isdir(self.path):
            return [""]
        return [f for f in self.store.list_files(self.path, follow_links=True) if f.endswith(self.suffix)]

    def units(self, parts: int = 1) -> list[tuple]:
        files = self.files()
        per_file = max(1, -(-parts // max(1, len(files))))
        return [(f, i, per_file) for f in files for i in range(per_file)]

    def read_unit(self, unit: Sequence) -> Iterator[Record]:
        rel, part, parts = unit
        return self.read_file(rel, None if parts == 1 else (lambda i: i % parts == part))

    def read_file(self, rel: str, keep: Callable[[int], bool] | None) -> Iterator[Record]:
        """The records of one file, only the i-th where ``keep(i)`` (None: all). Reads them all and
        filters; a kind whose parser skips records without copying them overrides this."""
        for i, r in enumerate(self.iter_file(rel)):
            if keep is None or keep(i):
                yield r

    def iter_file(self, rel: str) -> Iterator[Record]:
        """Every record of one file, in a deterministic order."""
        raise NotImplementedError

    def full(self, rel: str) -> str:
        """The path of a file of the source."""
        return join(self.path, rel) if rel else self.path

    def name(self, rel: str) -> str:
        """A file's name inside the source: its relative path, or its own name for a one-file source."""
        return rel or posixpath.basename(self.path.rstrip("/"))

    def file_split(self, rel: str) -> str | None:
        """The split every record of a file is in, when the kind decides it per file; else None."""
        return None

    def file_splits(self) -> list[tuple[str, str]]:
        splits = [(self.name(rel), self.file_split(rel)) for rel in self.files()]
        return [(f, s) for f, s in splits if s is not None]


# -- the tree rule ------------------------------------------------------------------------------------
def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


@dataclasses.dataclass
class TreeSource(Source):
    """A source whose files are placed by the tree rule (its ``layout`` option)."""

    layout: str = "auto"  # "auto", "class" or "split"

    def __post_init__(self):
        super().__post_init__()
        check_layout(self.layout)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layout": self.layout}


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


def special_problem(member: Any, name: str) -> str:
    """The rejection of a tar link or other special member (a lcrypt.tarstream.TarSpecial)."""
    if member.is_link:
        return (f"link: {member.describe(name)}; only regular files are read (archive the file itself: "
                "tar --hard-dereference for hard links, --dereference for symbolic ones)")
    return f"unreadable: {member.describe(name)}; only regular files are read"


# -- labels -------------------------------------------------------------------------------------------
def classes_from_names(names: Iterable[str]) -> list[str]:
    """The stable class list for sources that name classes per record (see the module docstring)."""
    names = sorted(set(n for n in names if n))
    if names and all(n.isdigit() for n in names):
        return [str(i) for i in range(max(int(n) for n in names) + 1)]
    return names


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


# -- decoding and owners --------------------------------------------------------------------------------
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


def owners_of(record: Record, owners: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """Every owner whose globs match the record (its path, its split/class/file part, or its group), in
    the owners' order: more than one is an overlap the caller must not settle silently."""
    cands = [record.source_id, layout_path(record.source_id)] if record.group is None else [record.group]
    return [name for name, globs in owners if any(fnmatch.fnmatchcase(c, g) for g in globs for c in cands)]
