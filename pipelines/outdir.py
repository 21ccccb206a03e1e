"""The ``--out`` folder of ``prepare``: what is in it, whose it is, and writing into it, on any storage
(local paths, or gs:// and s3:// object stores through Beam: pipelines/beamstorage.py).

Whose files are whose (:func:`classify`): ``prepare`` owns exactly the files an earlier run wrote: the
shards its manifest lists, ``manifest.json``, ``index.parquet``, ``_info.json``, ``errors.jsonl``, the run
marker (:data:`LOCK_NAME`), its scratch folder (:data:`FRAGMENTS`), its run state (:data:`RUN_STATE`:
what ``--resume`` needs, pipelines/journal.py) and the temporary files of its atomic writes. A run that
did not finish leaves its marker behind; then every file named like a shard
(``{split}/{owner}-{index:06d}.tar``) is that run's too. Everything else, and every symbolic link, is the
user's: ``--overwrite`` refuses to touch a folder holding any of it, and deletes nothing. The run
lock and its marker: pipelines/runlock.py.
"""

from __future__ import annotations

import posixpath
import re

from lcrypt.format import (ERRORS_NAME, FRAGMENTS_NAME, INDEX_NAME, LOCK_NAME, MANIFEST_NAME, SHARD_RE,
                           TIMM_INFO_NAME)
from lcrypt.storage import join
from pipelines.beamstorage import pipeline_storage

FRAGMENTS = FRAGMENTS_NAME  # encoded images between encryption and shard writing; removed at the end
SCRATCH = (FRAGMENTS + "/",)  # scratch folders
RUN_STATE = ".lcrypt-run"  # what a resume needs (pipelines/journal.py); kept when a run is interrupted
OWN_FILES = (MANIFEST_NAME, INDEX_NAME, TIMM_INFO_NAME, ERRORS_NAME, LOCK_NAME)
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")  # lcrypt.storage.atomic_write's temp names
_OTHER_TMP = re.compile(r"^(?P<name>.+)\.tmp-[0-9a-f]{32}$")  # the other storages' write_atomic temp names


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


# -- what is in --out ---------------------------------------------------------------------------
def survey(out: str) -> tuple[list[str], list[str]]:
    """``(files, links)`` under ``out`` as sorted POSIX paths relative to it: symbolic links are not
    followed, and are listed in ``links`` (an object store has none)."""
    store = pipeline_storage(out)
    links = store.list_links(out)
    shown = set(links)
    return [f for f in store.list_files(out) if f not in shown], links


def temp_target(rel: str) -> str | None:
    """The file a temporary file of an atomic write was going to become, or None."""
    folder, base = posixpath.split(rel)
    m = _ATOMIC_TMP.match(base) or _OTHER_TMP.match(base)
    return posixpath.join(folder, m["name"]) if m else None


def classify(files: list[str], listed: set[str], unfinished: bool) -> tuple[list[str], list[str]]:
    """``(ours, foreign)``: which files an earlier ``prepare`` wrote (see the module docstring).

    ``listed``: the shard paths of the earlier manifest; ``unfinished``: its run marker was left behind.
    """
    def ours(rel: str) -> bool:
        if rel in OWN_FILES or rel in listed or rel.startswith(SCRATCH + (RUN_STATE + "/",)):
            return True
        if unfinished and SHARD_RE.match(rel):
            return True
        target = temp_target(rel)
        return target is not None and target != rel and ours(target)

    mine = [r for r in files if ours(r)]
    return mine, [r for r in files if not ours(r)]


def delete(out: str, rels: list[str]) -> None:
    """Delete these files under ``out`` (then the folders they leave empty)."""
    if rels:
        pipeline_storage(out).delete(out, rels)


def remove_scratch(out: str) -> None:
    """Delete the scratch fragments and temporary files a run leaves when it stops early (its run state
    stays: a resume starts from it)."""
    files, _ = survey(out)
    delete(out, [r for r in files if r.startswith(SCRATCH) or temp_target(r)])
    remove_fragments(out)


def remove_fragments(out: str) -> None:
    """Delete the scratch fragments (the job's encrypted images before they were grouped into shards)."""
    path = join(out, FRAGMENTS)
    pipeline_storage(path).delete_folder(path)


# -- writing ------------------------------------------------------------------------------------
def write_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Write a file under ``--out`` whole or not at all (lcrypt.storage.Storage.write_atomic).

    ``durable=False`` is for the pipeline's own scratch files (fragments): they are rewritten by a
    retried bundle and deleted at the end, so a crash can only lose work, never leave a half-written
    file under the final name. Any failure is a :class:`WriteFailed` naming the path.
    """
    try:
        pipeline_storage(path).write_atomic(path, data, durable)
    except OSError as exc:
        raise WriteFailed(f"cannot write {path}: {exc.strerror or exc}") from None
