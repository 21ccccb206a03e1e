"""Where datasets are read from: local paths, or any fsspec URL (``gs://``, ``s3://``, ``memory://``...).

One definition for the library side: raw sources (:mod:`lcrypt.datasets`), manifests and indexes,
``lcrypt verify`` and the loaders. A URL needs fsspec and the plugin of its scheme (gcsfs, s3fs); a
``file://`` URL is a local path. The Beam pipeline writes through Beam's own file systems instead
(``pipelines/outdir.py``): Dataflow workers have those, training machines need not have Beam.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import IO


def is_url(path: str | os.PathLike) -> bool:
    """True for a remote URL; local paths and ``file://`` URLs are read with the standard library."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local(path: str | os.PathLike) -> Path:
    return Path(str(path).removeprefix("file://"))


def _fs(url: str):
    """``(fsspec file system, its path for url)``; a clear error when the scheme's plugin is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        raise OSError(f"cannot open {url}: {exc} (install fsspec's plugin for {scheme}://, e.g. gcsfs for gs://"
                      ", s3fs for s3://)") from None


def open_file(path: str | os.PathLike) -> IO[bytes]:
    if is_url(path):
        fs, p = _fs(str(path))
        return fs.open(p, "rb")
    return open(local(path), "rb")


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_file(path) as f:
        return f.read()


def exists(path: str | os.PathLike) -> bool:
    if is_url(path):
        fs, p = _fs(str(path))
        return fs.exists(p)
    return local(path).exists()


def isdir(path: str | os.PathLike) -> bool:
    if is_url(path):
        fs, p = _fs(str(path))
        return fs.isdir(p)
    return local(path).is_dir()


def walk(root: str | os.PathLike) -> list[str]:
    """Every regular file under ``root`` as a POSIX path relative to it, sorted."""
    if is_url(root):
        fs, p = _fs(str(root))
        base = p.rstrip("/") + "/"
        return sorted(f[len(base):] for f in fs.find(p) if f.startswith(base))
    out = []
    for d, dirs, files in os.walk(local(root)):
        rel = os.path.relpath(d, local(root))
        out += [f if rel == "." else posixpath.join(Path(rel).as_posix(), f) for f in files]
    return sorted(out)


def join(root: str | os.PathLike, rel: str) -> str:
    """``rel`` (POSIX) under ``root``: a URL stays a URL."""
    text = str(root)
    return f"{text.rstrip('/')}/{rel}" if "://" in text else os.path.join(text, rel)
