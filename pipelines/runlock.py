"""The run lock of ``prepare`` on ``--out``, and making ``--out`` ready for a run.

``prepare`` holds an exclusive ``flock`` on ``OUT/.lcrypt-prepare.lock`` for the whole run (for an object
store, on a file of this machine's temp folder named after the URL, and the marker is written into the
store too); the file names the holder (pid, host, start time), so a second run refuses naming it. A
successful run removes the file; a run that fails or is killed leaves it as the marker of an unfinished
run, which tells ``--overwrite`` that the shard-named files beside it are that run's (pipelines/outdir.py:
whose files are whose).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from lcrypt.format import SHARD_RE
from lcrypt.lock import FileLock, LockBusy, describe_holder
from lcrypt.format import Manifest
from lcrypt.storage import is_remote, join, local_path
from pipelines import outdir
from pipelines.beamstorage import pipeline_storage
from pipelines.options import PrepareError
from pipelines.outdir import LOCK_NAME, OutError, WriteFailed


class RunLock:
    """The exclusive lock of one ``prepare`` run on ``--out`` (see the module docstring).

    :meth:`acquire` refuses in one line naming the running holder; :attr:`previous` is the marker an
    earlier run left (None when there was none); :meth:`claim` writes this run's marker; :meth:`release`
    removes it after a finished run, or leaves it as the marker of an unfinished one.
    """

    def __init__(self, out: str):
        self.out = out
        self.remote = is_remote(out)
        self.local = local_path(out)  # the folder on this machine (a local --out)
        self.store = pipeline_storage(out)
        self.marker = join(out, LOCK_NAME)
        if self.remote:
            digest = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:24]
            folder = os.path.join(tempfile.gettempdir(), "lcrypt-locks")
            os.makedirs(folder, exist_ok=True)
            self.lock = FileLock(os.path.join(folder, f"{digest}.lock"))
        else:
            self.lock = FileLock(local_path(self.marker))
        self.previous: str | None = None
        self.created_out = False

    def acquire(self) -> "RunLock":
        if not self.remote:
            if os.path.lexists(self.local) and not os.path.isdir(self.local):
                raise OutError(f"--out {self.out} is a file; give a folder")
            if not os.path.isdir(self.local):
                try:
                    os.makedirs(self.local)
                except OSError as exc:
                    raise OutError(f"--out {self.out}: cannot create the folder ({exc.strerror}); "
                                   "choose a folder you can write to") from None
                self.created_out = True
        try:
            previous = self.lock.acquire()
        except LockBusy as exc:
            raise OutError(f"--out {self.out} is in use by another lcrypt prepare ({exc.holder}); wait for "
                           "it to finish or choose another folder") from None
        except OSError as exc:
            self._undo_out()
            raise OutError(f"--out {self.out} is not writable ({exc.strerror}); choose a folder you can "
                           "write to, or fix its permissions") from None
        if self.remote:
            previous = self._read_marker() if self.store.exists(self.marker) else None
        self.previous = previous
        return self

    def claim(self, mode: str = "prepare") -> None:
        """Write this run's marker: who holds the folder, so a second run can name it, and what the run
        does (its mode: what a resume starts over with when the run stopped before its journal)."""
        try:
            body = self.lock.write_holder(command="lcrypt prepare", mode=mode)
        except OSError as exc:
            raise WriteFailed(f"cannot write {self.lock.path}: {exc.strerror}") from None
        if self.remote:
            outdir.write_atomic(self.marker, body)

    def release(self, finished: bool) -> None:
        """Unlock; a finished run also removes its marker (an unfinished one leaves it behind)."""
        if finished and self.remote:
            self.store.delete(self.out, [LOCK_NAME])
        self.lock.release(remove=finished or self.remote)

    def abandon(self) -> None:
        """Release a lock taken for a run that was refused before it started: leave no trace of it."""
        self.lock.release(remove=self.remote or self.previous is None)
        self._undo_out()

    def _read_marker(self) -> str | None:
        """The text of the marker an earlier run left in the store, or None when it cannot be read."""
        try:
            return self.store.read_bytes(self.marker).decode("utf-8", "replace")
        except (OSError, ValueError):
            return None

    def _undo_out(self) -> None:
        if self.created_out:
            try:
                os.rmdir(self.local)
            except OSError:
                pass
            self.created_out = False


def claim_out(out: str, mode: str = "prepare", run_mode: str = "prepare"):
    """Lock ``out`` for this run and make it ready: empty, or (``--overwrite``) emptied of exactly what
    an earlier prepare wrote. Refuses, deleting nothing, when it holds anything else (outdir's rules).
    ``--append`` / ``--retry-failed`` need a finished dataset there, ``--resume`` an unfinished run; both
    keep everything (a resume drops only the temporary files of writes the interruption cut short).
    ``run_mode``: what the run does (a resume: what it resumes), written into the marker."""
    try:
        lock = RunLock(out).acquire()
    except ValueError as exc:  # Beam has no file system for the scheme (e.g. gs:// without apache-beam[gcp])
        raise PrepareError(f"--out {out}: {exc}") from None
    try:
        files, links = outdir.survey(out)
        files = [f for f in files if f != outdir.LOCK_NAME]
        unfinished = lock.previous is not None
        holder = describe_holder(lock.previous)
        if mode == "resume":
            if not unfinished:
                raise PrepareError(f"--resume: --out {out} holds no unfinished prepare run: nothing to "
                                   "resume")
            outdir.delete(out, [f for f in files if outdir.temp_target(f)])
        elif mode in ("append", "retry_failed"):
            flag = "--" + mode.replace("_", "-")
            if unfinished:
                raise PrepareError(f"{flag}: --out {out} holds a prepare run that did not finish ({holder}); "
                                   "finish it first: run its command with --resume")
            if outdir.MANIFEST_NAME not in files:
                raise PrepareError(f"{flag}: --out {out} holds no dataset; run without {flag} to prepare one")
        elif files or links or unfinished:
            if mode != "overwrite":
                if outdir.MANIFEST_NAME in files:
                    raise PrepareError(f"--out {out} already holds a dataset; pass --overwrite to replace "
                                       "it, or --append to add to it")
                if unfinished:
                    raise PrepareError(f"--out {out} holds a prepare run that did not finish ({holder}); "
                                       "pass --resume to finish it, or --overwrite to start over")
                raise PrepareError(f"--out {out} exists and is not empty; choose a new folder")
            listed: set[str] = set()
            if outdir.MANIFEST_NAME in files:
                try:
                    listed = {s.path for s in Manifest.load(out, pipeline_storage(out)).shards}
                except (ValueError, OSError):
                    pass  # a damaged manifest lists nothing; its shards count as ours only after a marker
            ours, foreign = outdir.classify(files, listed, unfinished)
            foreign = sorted(foreign + links)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise PrepareError(f"--out {out} holds {len(foreign)} file(s) an earlier prepare did not "
                                   f"write ({shown}); --overwrite deletes only prepare's own files, so "
                                   "nothing was deleted: move them away or choose another folder")
            outdir.delete(out, ours)
        lock.claim(run_mode)
    except BaseException:
        lock.abandon()
        raise
    return lock


def check_apart(out: str, source: str) -> None:
    """Refuse an --out inside the source, equal to it, or holding it: the shards would land among the
    images (and the next run would read them as images), or --overwrite would reach the source."""
    def norm(p: str) -> str:
        return p.rstrip("/") if is_remote(p) else os.path.realpath(local_path(p))

    o, s = norm(out), norm(source)
    if is_remote(out) != is_remote(source):
        return
    sep = "/" if is_remote(out) else os.sep
    if o == s or o.startswith(s + sep):
        raise PrepareError(f"--out {out} is inside --source {source}: the shards would land among the "
                           "source's images; choose an output folder outside the source")
    if s.startswith(o + sep):
        raise PrepareError(f"--source {source} is inside --out {out}: choose an output folder that does not "
                           "hold the source")


def left_behind(out: str, listed: set[str] = frozenset(), resumable: bool = True) -> str:
    """What an unfinished run leaves in ``out``, in words (for the one line an interruption prints);
    ``listed``: the shards of the dataset the run added to."""
    try:
        files, _ = outdir.survey(out)
    except (OSError, ValueError):
        return f"--out {out} could not be listed"
    n = sum(1 for f in files if SHARD_RE.match(f) and f not in listed)
    then = ("run the same command with --resume to finish it, or with --overwrite to start over" if resumable
            else "run the same command with --overwrite to start over")
    if listed:
        return (f"--out {out} holds its dataset and {n} new complete shard(s) of a run that did not finish "
                "adding to it; run the same command with --resume to finish it")
    return f"--out {out} holds {n} complete shard(s) of an unfinished run and no manifest; {then}"
