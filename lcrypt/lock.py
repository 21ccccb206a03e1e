"""An exclusive lock on a file, naming its holder: how two runs into one output folder are kept apart.

``prepare`` (pipelines/runlock.py) and ``training.train`` each hold one on their output folder for the whole
run. The lock is ``fcntl.flock`` on the file, which the kernel drops when the holder dies, so a killed
run locks nothing; the file holds the holder's pid, host and start time as JSON, so a refused run can
name the one it waits for. Removing the file at the end races with a run that opened it meanwhile:
:meth:`FileLock.acquire` therefore checks, once it holds the lock, that the path still names the inode it
locked, and tries again when it does not.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket


class LockBusy(RuntimeError):
    """Another process holds the lock; ``holder`` says who, in words."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def describe_holder(text: str | None) -> str:
    """'pid 123 on host h, started 2026-...' from a lock file's JSON (or what can be said without it)."""
    try:
        d = json.loads(text or "")
        return f"pid {d['pid']} on host {d['host']}, started {d['started']}"
    except (ValueError, KeyError, TypeError):
        return "its pid and host are not written yet"


class FileLock:
    """``flock`` on ``path``; :meth:`acquire` returns what an earlier holder left in the file (None when
    there was no file), :meth:`write_holder` names this process, :meth:`release` unlocks (and removes)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Lock the file (creating it); LockBusy when another process holds it, OSError when the folder
        cannot be written."""
        while True:
            existed = os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                raise LockBusy(describe_holder(holder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the previous holder removed while we waited
                break
            os.close(fd)
        self.fd = fd
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
        return (text or "{}") if existed else None

    def write_holder(self, **extra: str) -> bytes:
        """Write this process's pid, host and start time (and ``extra``) into the file; returns the bytes."""
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started, **extra},
                          sort_keys=True).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, body, 0)
        os.fsync(self.fd)
        return body

    def release(self, remove: bool = True) -> None:
        """Unlock; ``remove`` deletes the file first (while still holding it: see the module docstring)."""
        if self.fd is None:
            return
        try:
            if remove:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None
