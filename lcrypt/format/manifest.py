"""The manifest of a published lcrypt dataset: one schema, written by `prepare`, read by loaders and `verify`.

The files of a dataset folder are listed in :mod:`lcrypt.format.folder`; manifest.json is this module's
:class:`Manifest` (format "lcrypt-dataset/1"). Its fields: ``format``, ``name``, ``lcrypt_version``,
``created`` (UTC time; the only field that differs between two runs on the same input, excluded by
:meth:`Manifest.deterministic_dict`), ``scheme`` (registry name) + ``scheme_params`` (enough for
``lcrypt.get_scheme(scheme, **params)``) + ``scheme_info`` (its SchemeInfo.as_dict at this image size:
augmentations, aug_grid, block size...), ``owners`` (name, public ``key_id`` — never a secret — and
written counts per split), ``splits`` (split -> written count), ``class_names`` (index = label),
``image_shape`` [H, W, 3], ``encoding`` ("png" | "npy" | "jpeg") with ``jpeg_quality`` /
``jpeg_subsampling``, ``shards`` (path relative to the folder, owner, split, count, bytes, sha256),
``stats`` (per split and owner: read, written, rejected) and ``source`` (the reader format and options;
never the source's file names).

``runs``, only once a dataset has grown (``prepare --append`` / ``--retry-failed``; a dataset one
``prepare`` wrote has none, so its manifest is unchanged): what each run added, oldest first, each
``{mode, created, source, read, skipped, written, rejected, resolved, errors, added, new_owners,
shards}`` (``added``: split -> samples; ``shards``: the paths it added; ``resolved``: earlier rejections
it wrote; ``errors``: errors.jsonl's lines after it). The first entry describes the first ``prepare``.

JSON is written with sorted keys and a fixed indent, so equal content gives equal bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from typing import Any, Callable, Iterable, Mapping

from lcrypt.format.folder import INDEX_NAME, MANIFEST_NAME, TIMM_INFO_NAME, ManifestError
from lcrypt.format.index import index_bytes
from lcrypt.storage import Storage, atomic_write, is_remote, join, storage_for

MANIFEST_FORMAT = "lcrypt-dataset/1"


@dataclasses.dataclass
class ShardEntry:
    """One shard as the manifest lists it; ``bytes`` and ``sha256`` let every reader check it is intact."""

    path: str  # relative to the dataset folder, POSIX separators
    owner: str
    split: str
    count: int
    bytes: int
    sha256: str


@dataclasses.dataclass
class OwnerEntry:
    """One data owner: a name and the public id of the key its samples are encrypted under."""

    name: str
    key_id: str  # lcrypt.Key.key_id: fingerprint of the public signing key (16 hex digits: legacy id)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # split -> samples written


@dataclasses.dataclass
class Manifest:
    """manifest.json: what a dataset folder holds and how it was made (fields: the module docstring)."""

    name: str
    scheme: str
    scheme_params: dict[str, Any]
    owners: list[OwnerEntry]
    class_names: list[str]
    image_shape: list[int]
    encoding: str
    shards: list[ShardEntry]
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    scheme_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    jpeg_quality: int | None = None
    jpeg_subsampling: str | None = None
    stats: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    format: str = MANIFEST_FORMAT
    lcrypt_version: str = ""
    created: str = ""

    def __post_init__(self):
        if not self.lcrypt_version:
            from lcrypt import __version__

            self.lcrypt_version = __version__
        self.shards = sorted(self.shards, key=lambda s: s.path)
        self.owners = sorted(self.owners, key=lambda o: o.name)
        if not self.splits:
            self.splits = {}
            for s in self.shards:
                self.splits[s.split] = self.splits.get(s.split, 0) + s.count
        self.splits = dict(sorted(self.splits.items()))

    # -- queries ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shards_for(self, split: str, owner: str | None = None) -> list[ShardEntry]:
        """Shard entries of one split (and optionally one owner), sorted by path."""
        if split not in self.splits:
            raise KeyError(f"split {split!r} not in this dataset (splits: "
                           f"{', '.join(self.splits) or 'none'})")
        return [s for s in self.shards if s.split == split and (owner is None or s.owner == owner)]

    def num_samples(self, split: str, owner: str | None = None) -> int:
        return sum(s.count for s in self.shards_for(split, owner))

    def owner(self, name: str) -> OwnerEntry:
        for o in self.owners:
            if o.name == name:
                return o
        raise KeyError(f"owner {name!r} not in this dataset (owners: "
                       f"{', '.join(o.name for o in self.owners)})")

    def scheme_object(self):
        """The scheme this dataset was encrypted with, rebuilt from the registry."""
        from lcrypt.schemes import get_scheme

        return get_scheme(self.scheme, **self.scheme_params)

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["runs"]:
            del d["runs"]
        return d

    def deterministic_dict(self) -> dict[str, Any]:
        """Everything except the creation times: equal for equal input, key and options."""
        d = self.to_dict()
        d.pop("created")
        for run in d.get("runs", []):
            run.pop("created", None)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        if not isinstance(d, Mapping) or d.get("format") != MANIFEST_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise ManifestError(f"not an {MANIFEST_FORMAT} manifest (format: {got!r})")
        d = dict(d)
        try:
            d["shards"] = [ShardEntry(**s) for s in d["shards"]]
            d["owners"] = [OwnerEntry(**o) for o in d["owners"]]
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - names)
            if unknown:
                raise ManifestError(f"manifest has unknown fields {unknown} (written by a newer lcrypt?)")
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest is missing or has malformed fields: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    def timm_info(self) -> dict[str, Any]:
        """The ``_info.json`` body timm's ReaderWds reads: per split, shard file names and lengths.

        Besides each split (all owners), ``{split}-{owner}`` entries select one owner's shards.
        """
        splits: dict[str, Any] = {}

        def entry(name: str, shards: list[ShardEntry]) -> dict[str, Any]:
            return {"name": name, "num_samples": sum(s.count for s in shards),
                    "filenames": [s.path for s in shards], "shard_lengths": [s.count for s in shards]}

        for split in self.splits:
            splits[split] = entry(split, self.shards_for(split))
            for o in self.owners:
                own = self.shards_for(split, o.name)
                if own and len(self.owners) > 1:
                    splits[f"{split}-{o.name}"] = entry(f"{split}-{o.name}", own)
        return {"name": self.name, "num_classes": self.num_classes, "class_names": self.class_names,
                "splits": splits}

    def save(self, directory: str | os.PathLike, index: Iterable[Mapping[str, Any]] | None = None,
             write: Callable[[str, bytes], None] | None = None) -> str:
        """Write manifest.json and _info.json (and index.parquet when ``index`` rows are given), atomically.

        Written last by the pipeline, after every shard, so a folder with a manifest is complete.
        ``write(path, data)`` replaces the local atomic writer (the pipeline passes one for gs:// etc).
        """
        write = write or atomic_write
        directory = str(directory).rstrip("/")
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if index is not None:
            write(f"{directory}/{INDEX_NAME}", index_bytes(index))
        timm_info = json.dumps(self.timm_info(), indent=1, sort_keys=True) + "\n"
        write(f"{directory}/{TIMM_INFO_NAME}", timm_info.encode())
        write(f"{directory}/{MANIFEST_NAME}", self.to_json().encode())
        return f"{directory}/{MANIFEST_NAME}"

    @classmethod
    def load(cls, path_or_dir: str | os.PathLike, store: Storage | None = None) -> "Manifest":
        """Read a manifest from its file or from the dataset folder holding it (local or a URL), through
        ``store`` (default: the storage of the path, lcrypt.storage.storage_for)."""
        store = store or storage_for(path_or_dir)
        path = manifest_path(path_or_dir, store)
        try:
            body = json.loads(store.read_bytes(path))
        except FileNotFoundError:
            raise ManifestError(f"{path} not found: is this an lcrypt dataset folder (made by "
                                "`lcrypt prepare`)?") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); the dataset folder is damaged") from None
        return cls.from_dict(body)


def manifest_path(path_or_dir: str | os.PathLike, store: Storage | None = None) -> str:
    """The manifest.json of a dataset given as the folder or as the file itself (local or a URL)."""
    text = str(path_or_dir)
    if text.endswith(".json") or (not is_remote(text) and not (store or storage_for(text)).isdir(text)):
        return text
    return join(text, MANIFEST_NAME)


def dataset_folder(path_or_dir: str | os.PathLike) -> str:
    """The folder of a dataset given as the folder or as its manifest.json (local or a URL)."""
    path = manifest_path(path_or_dir)
    return path.rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path) or "."
