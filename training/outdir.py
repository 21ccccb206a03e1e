"""A training run's ``--out`` folder: its lock, ``metrics.jsonl`` and ``summary.json``.

Only rank 0 writes here (the checkpoint is :mod:`training.checkpoint`'s). While a run uses ``--out`` it
holds :class:`OutLock`, so a second run into the same folder is refused, naming the first.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from training.errors import TrainError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOCK = ".lcrypt-train.lock"


class OutLock:
    """An exclusive lock on ``--out`` (:class:`lcrypt.lock.FileLock` on ``OUT/.lcrypt-train.lock``), so a
    second run into the same folder is refused, naming the first. A killed run's leftover file locks
    nothing: the next run takes it over. The file is removed at the end, also when the run is stopped by
    SIGTERM (what torchrun sends the other ranks when one fails)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / LOCK
        self.lock = None
        self.made_out = False
        self.previous_handler: Any = None

    def acquire(self) -> None:
        from lcrypt.lock import FileLock, LockBusy

        self.made_out = not self.out.exists()
        self.lock = FileLock(self.path)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            self.lock.write_holder(command="training.train")
        except LockBusy as exc:
            self.abandon()
            raise TrainError(f"--out {self.out} is in use by another training run ({exc.holder}); wait for "
                             "it to end, or give another --out") from None
        except OSError as exc:
            self.lock.release()
            self.abandon()
            raise TrainError(f"cannot use --out {self.out}: {exc.strerror or exc}") from None
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Remove the lock file and leave at once (no unwinding through DataLoader or collectives)."""
        self.release()
        os._exit(128 + signum)

    def release(self) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)
            self.previous_handler = None
        if self.lock is not None:
            self.lock.release()
        self.abandon()

    def abandon(self) -> None:
        """Remove ``--out`` again if this run made it and left nothing in it."""
        if self.made_out:
            try:
                self.out.rmdir()
            except OSError:
                pass


class MetricsLog:
    """``metrics.jsonl``: one JSON object a line, appended (a resumed run continues the file)."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled = out / METRICS, enabled

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")


def write_summary(out: Path, summary: dict[str, Any], checkpoint: Path) -> None:
    """Write ``summary.json`` and print its table (also with --quiet) and where the outputs are."""
    from lcrypt.table import format_table

    (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    top1 = f"{summary['top1']:.2f}" if summary["top1"] is not None else "-"
    row = [summary["scheme"], summary["model"]["name"], summary["epochs"], summary["steps"], top1,
           round(summary["images_per_s"]), round(summary["wall_s"], 1), summary["device"]]
    header = ["scheme", "model", "epochs", "steps", "top-1 %", "images/s", "wall s", "device"]
    print(format_table([row], header))
    print(f"checkpoint: {checkpoint}; summary: {out / SUMMARY}")
