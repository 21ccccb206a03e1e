"""Where datasets are read from: local paths, or any fsspec URL (``gs://``, ``s3://``, ``memory://``...).

One definition for the library side: raw sources (:mod:`lcrypt.datasets`), manifests and indexes,
``lcrypt verify`` and the loaders. A URL needs fsspec and the plugin of its scheme (gcsfs, s3fs); a
``file://`` URL is a local path. The Beam pipeline writes through Beam's own file systems instead
(``pipelines/outdir.py``): Dataflow workers have those, training machines need not have Beam.
"""

from __future__ import annotations

import os
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


def walk(root: str | os.PathLike, follow_links: bool = False) -> list[str]:
    """Every file under ``root`` as a POSIX path relative to it, sorted ([] when ``root`` is no folder).

    ``follow_links=True`` (what raw sources use: a split folder may be a link to another disk) enters
    symlinked folders and lists files under their path inside ``root``; a link to one of its own
    ancestors would list forever, so it is a ValueError naming it. Without it, symlinked folders are
    not entered (the ``--out`` folder: nothing is ever deleted through a link). A symlink to a file,
    even a broken one, is listed: reading it says what is wrong with it. A folder that cannot be listed
    is a ValueError, never a silent gap.
    """
    if is_url(root):
        fs, p = _fs(str(root))
        base = p.rstrip("/") + "/"
        return sorted(f[len(base):] for f in fs.find(p) if f.startswith(base))
    top = local(root)
    if not top.is_dir():
        return []
    out: list[str] = []
    _walk_into(str(top), "", {os.path.realpath(top)}, follow_links, out)
    return sorted(out)


def _walk_into(folder: str, rel: str, ancestors: set[str], follow_links: bool, out: list[str]) -> None:
    """Append the files under ``folder`` (``rel`` inside the root) to ``out``; ``ancestors``: the real
    paths of the folders from the root down to this one (a link to one of them is a loop)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        raise ValueError(f"cannot list folder {rel or '.'!r}: {exc.strerror or exc}; fix its permissions or "
                         "move it out of the source") from None
    for e in entries:
        path = f"{rel}/{e.name}" if rel else e.name
        if e.is_dir(follow_symlinks=False) or (follow_links and e.is_symlink() and e.is_dir()):
            real = os.path.realpath(e.path)
            if real in ancestors:
                raise ValueError(f"folder {path!r} links back to {real!r}, a folder that contains it: the "
                                 "tree would never end; remove the link or point it elsewhere")
            _walk_into(e.path, path, ancestors | {real}, follow_links, out)
        elif not e.is_symlink() or not e.is_dir():  # files, links to files, broken links
            out.append(path)


def join(root: str | os.PathLike, rel: str) -> str:
    """``rel`` (POSIX) under ``root``: a URL stays a URL."""
    text = str(root)
    return f"{text.rstrip('/')}/{rel}" if "://" in text else os.path.join(text, rel)
