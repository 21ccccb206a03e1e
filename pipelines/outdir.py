"""The ``--out`` folder of ``prepare`` on any Beam file system (local paths, gs:// or s3:// object stores):
what is in it, whose it is, and writing into it.

An object store has no folders: a "folder" is a key prefix, it never "exists", deleting its name
deletes nothing, and ``*`` stops at ``/``. Every path operation of the pipeline goes through here so that
it takes one of two forms, local (``os``) or Beam's ``FileSystems``, and the object-store form is the
one tests/object_store.py checks.

Whose files are whose (:func:`classify`): ``prepare`` owns exactly the files an earlier run wrote: the
shards its manifest lists, ``manifest.json``, ``index.parquet``, ``_info.json``, ``errors.jsonl``, the run
marker (:data:`LOCK_NAME`), its scratch folder (:data:`FRAGMENTS`) and the temporary files of its atomic
writes. A run that did not finish leaves its marker behind; then every file named like a shard
(``{split}/{owner}-{index:06d}.tar``) is that run's too. Everything else, and every symbolic link, is the
user's: ``--overwrite`` refuses to touch a folder holding any of it, and deletes nothing. The run
lock and its marker: pipelines/runlock.py.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

from lcrypt.format import (ERRORS_NAME, FRAGMENTS_NAME, INDEX_NAME, LOCK_NAME, MANIFEST_NAME, SHARD_RE, TIMM_INFO_NAME,
                           Manifest, ManifestError, atomic_write)

FRAGMENTS = FRAGMENTS_NAME  # encoded images between encryption and shard writing; removed at the end
SCRATCH = (FRAGMENTS + "/", ".progress/")  # scratch folders (.progress: where older versions kept progress)
OWN_FILES = (MANIFEST_NAME, INDEX_NAME, TIMM_INFO_NAME, ERRORS_NAME, LOCK_NAME)
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # lcrypt.format.atomic_write's temp names
_BEAM_TMP = re.compile(r"^(?P<name>.+)\.tmp-[0-9a-f]{32}$")  # write_atomic's temp names (object stores)


class OutError(RuntimeError):
    """``--out`` cannot be used as asked (busy, holds the user's files, not writable); one line."""


class WriteFailed(OSError):
    """Writing under ``--out`` failed (disk full, read-only, permissions); the message names the path."""

    def __init__(self, message: str):
        super().__init__(message)

    def __reduce__(self):  # pickled back from the decoder subprocess and Beam workers by its message
        return WriteFailed, (str(self),)

    def __str__(self) -> str:
        return self.args[0]


def is_remote(path: str) -> bool:
    return "://" in path


def join(out: str, *parts: str) -> str:
    return FileSystems.join(out, *parts) if is_remote(out) else os.path.join(out, *parts)


# -- what is in --out ---------------------------------------------------------------------------
def survey(out: str) -> tuple[list[str], list[str]]:
    """``(files, links)`` under ``out`` as sorted POSIX paths relative to it. Local folders are walked
    without following symbolic links, which are listed in ``links`` (an object store has none)."""
    if is_remote(out):
        base = out.rstrip("/") + "/"
        found = FileSystems.match([base + "**"])[0].metadata_list
        return sorted(m.path[len(base):] for m in found if not m.path.endswith("/")), []
    files, links = [], []
    if not os.path.lexists(out):
        return files, links
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(out, rel)) as it:
            for e in it:
                r = posixpath.join(rel, e.name) if rel else e.name
                if e.is_symlink():
                    links.append(r)
                elif e.is_dir():
                    stack.append(r)
                else:
                    files.append(r)
    return sorted(files), sorted(links)


def list_files(out: str) -> list[str]:
    """Every file under ``out`` (symbolic links included, not followed), sorted ([] when there is none)."""
    files, links = survey(out)
    return sorted(files + links)


def _temp_target(rel: str) -> str | None:
    """The file a temporary file of an atomic write was going to become, or None."""
    folder, base = posixpath.split(rel)
    m = _ATOMIC_TMP.match(base) or _BEAM_TMP.match(base)
    return posixpath.join(folder, m["name"]) if m else None


def classify(files: list[str], listed: set[str], unfinished: bool) -> tuple[list[str], list[str]]:
    """``(ours, foreign)``: which files an earlier ``prepare`` wrote (see the module docstring).

    ``listed``: the shard paths of the earlier manifest; ``unfinished``: its run marker was left behind.
    """
    def ours(rel: str) -> bool:
        if rel in OWN_FILES or rel in listed or rel.startswith(SCRATCH):
            return True
        if unfinished and SHARD_RE.match(rel):
            return True
        target = _temp_target(rel)
        return target is not None and target != rel and ours(target)

    mine = [r for r in files if ours(r)]
    return mine, [r for r in files if not ours(r)]


def delete(out: str, rels: list[str]) -> None:
    """Delete these files under ``out`` (then, locally, the folders they leave empty)."""
    if not rels:
        return
    if is_remote(out):
        FileSystems.delete([join(out, r) for r in rels])
        return
    for r in rels:
        os.remove(os.path.join(out, r))
    for d in sorted({posixpath.dirname(r) for r in rels if "/" in r}, key=len, reverse=True):
        try:
            os.rmdir(os.path.join(out, d))
        except OSError:
            pass  # not empty: it holds something that is not ours


def remove_scratch(out: str) -> None:
    """Delete the scratch fragments and temporary files a run leaves when it stops early."""
    files, _ = survey(out)
    delete(out, [r for r in files if r.startswith(SCRATCH) or _temp_target(r)])
    if not is_remote(out):
        shutil.rmtree(os.path.join(out, FRAGMENTS), ignore_errors=True)


def remove_fragments(out: str) -> None:
    """Delete the scratch fragments (the job's encrypted images before they were grouped into shards)."""
    if is_remote(out):
        delete(out, [r for r in list_files(out) if r.startswith(FRAGMENTS + "/")])
    else:
        shutil.rmtree(os.path.join(out, FRAGMENTS), ignore_errors=True)


# -- writing ------------------------------------------------------------------------------------
def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Local: temp file (+ fsync) + rename. Other file systems: Beam create to a temp name + rename.

    ``durable=False`` skips the fsync, for the pipeline's own scratch files (fragments): they are
    rewritten by a retried bundle and deleted at the end, so a crash can only lose work, never leave
    a half-written file under the final name. Any failure is a :class:`WriteFailed` naming the path.
    """
    try:
        if not is_remote(path):
            if durable:
                atomic_write(path, data)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.remove(tmp)
                raise
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}") from None


def open_read(path: str):
    return FileSystems.open(path, compression_type="uncompressed") if is_remote(path) else open(path, "rb")


def load_manifest(out: str) -> Manifest:
    """The manifest ``prepare`` wrote to ``out``, on any file system."""
    if not is_remote(out):
        return Manifest.load(out)
    path = join(out, MANIFEST_NAME)
    if not FileSystems.exists(path):
        raise ManifestError(f"{path} not found")
    with open_read(path) as f:
        return Manifest.from_dict(json.loads(f.read()))


def read_text(path: str) -> str | None:
    """A small file's text, or None when it does not exist or cannot be read."""
    try:
        with open_read(path) as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
