"""The source registry: every raw dataset kind lcrypt reads, one module per kind, pure Python (no Beam).

A source yields :class:`~lcrypt.sources.base.Record` objects (source id, split, class name, encoded image
bytes) and never decodes pixels itself; :func:`~lcrypt.sources.base.decode_record` does that under
:mod:`lcrypt.images`' rules. The Beam pipeline reads the same sources through its own storage
(``open_source(spec, remote=...)``), so a format is parsed in exactly one place.

Source specs (``--source``), ``KIND:PATH`` or a bare path whose kind is detected:

=============  ===============  ==================================================================
imagefolder    imagefolder.py   a folder of class folders, placed by the tree rule (base.py)
tar            tar.py           the same tree inside a .tar / .tar.gz / .tgz archive, streamed
cifar          cifar.py         CIFAR-10 / CIFAR-100 python archives (``cifar-10-python.tar.gz``)
parquet        parquet.py       .parquet files with image and label columns (Hugging Face layout)
wds            wds.py           WebDataset shards: a .tar, a folder of them, or an lcrypt dataset
=============  ===============  ==================================================================

A new kind is one module with a :class:`~lcrypt.sources.base.Source` subclass, passed to
:func:`register`. Detection asks each kind's ``detect`` in reverse order of registration, so a kind
registered later is asked first, and imagefolder, which takes any folder, is asked last.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from lcrypt.sources.base import (Probe, Record, Source, TreeSource, check_layout, classes_from_names,
                                 decode_record)
from lcrypt.sources.cifar import CifarSource
from lcrypt.sources.imagefolder import ImageFolderSource
from lcrypt.sources.parquet import ParquetSource
from lcrypt.sources.tar import TarSource
from lcrypt.sources.wds import WdsSource
from lcrypt.storage import Storage, storage_for

KINDS: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Add a source kind under ``cls.kind`` (usable as a class decorator); a name is registered once."""
    if not cls.kind or ":" in cls.kind:
        raise ValueError(f"source kind {cls.kind!r}: give the class a name without ':' in its `kind`")
    if cls.kind in KINDS:
        raise ValueError(f"source kind {cls.kind!r} is already registered")
    KINDS[cls.kind] = cls
    return cls


for _cls in (ImageFolderSource, WdsSource, ParquetSource, TarSource, CifarSource):  # detection: last first
    register(_cls)


def get_source_kind(kind: str) -> type[Source]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; choose one of: {', '.join(KINDS)}") from None


def detect_kind(path: str, store: Storage | None = None) -> str:
    """The kind of a bare source path, from its name or the files in it."""
    probe = Probe(path, store or storage_for(path))
    for kind, cls in reversed(KINDS.items()):
        if cls.detect(probe):
            return kind
    raise ValueError(f"cannot tell the format of source {path!r}; prefix it with one of "
                     f"{', '.join(k + ':' for k in KINDS)}")


def open_source(spec: str, remote: Storage | None = None, **options: Any) -> Source:
    """The source of ``KIND:PATH`` or a bare path (kind detected), read through the storage of its path
    (``remote``: the storage for remote paths, default fsspec). Options a kind does not take are left
    unused (the CLI passes every reader option to any kind), except a layout other than "auto", which
    only the kinds placed by the tree rule take."""
    kind, path = None, spec
    head, sep, rest = spec.partition(":")
    if sep and head in KINDS:
        kind, path = head, rest
    store = storage_for(path, remote)
    if not store.exists(path):
        raise FileNotFoundError(f"source {path!r} does not exist")
    cls = get_source_kind(kind or detect_kind(path, store))
    options = {k: v for k, v in options.items() if v is not None}
    if not issubclass(cls, TreeSource) and options.get("layout", "auto") != "auto":
        check_layout(options["layout"])
        trees = " and ".join(k for k, c in KINDS.items() if issubclass(c, TreeSource))
        raise ValueError(f"layout {options['layout']!r} applies to {trees} sources, not {cls.kind}")
    taken = cls.option_names()
    return cls(path=path, store=store, **{k: v for k, v in options.items() if k in taken})


def iter_records(spec: str | Source, **options: Any) -> Iterator[Record]:
    """Every record of a source, in a deterministic order."""
    return iter(spec if isinstance(spec, Source) else open_source(spec, **options))


def load_arrays(spec: str | Source, split: str, limit: int | None = None,
                size: int | tuple[int, int] | None = None,
                **options: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one split of a source into ``(images (N, H, W, 3) uint8, labels int64, class_names)``.

    For attacks, tests and small experiments; the pipeline is the way to prepare a whole dataset.
    Records the rules reject raise (here nothing is skipped silently either). ``limit`` keeps the
    first ``limit`` records of the split in source order.
    """
    from lcrypt.images import parse_size

    source = spec if isinstance(spec, Source) else open_source(spec, **options)
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
    names = declared or classes_from_names(all_names)
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([r.label if r.label >= 0 else index[r.class_name] for r in recs], dtype=np.int64)
    return np.stack(images), labels, names


__all__ = ["KINDS", "get_source_kind", "detect_kind", "iter_records", "load_arrays", "open_source",
           "register"]
