"""A training run's folder (:mod:`training.runs` says which): its lock, ``metrics.jsonl``,
``metrics.csv``, ``curves.png``, TensorBoard events (``--tensorboard``) and ``summary.json``.

Only rank 0 writes here (the checkpoint is :mod:`training.checkpoint`'s). While a run uses its folder it
holds :class:`OutLock`, so a second run into the same folder is refused, naming the first.

``metrics.jsonl`` has one JSON object a line, each with the run id (``run``): ``"event": "epoch"`` after
each epoch (train loss, learning rate, images/s, wall time, test top-1, loss and count) and ``"event":
"step"`` every ``--log-every`` steps (loss, learning rate). ``epoch`` counts from 1 in both (a step line
belongs to the epoch of that number) and ``step`` is the global step. ``metrics.csv`` is the epoch lines
as a table and ``curves.png`` draws them, both rewritten after each epoch. A resumed run first drops the
lines the stopped run wrote after the checkpoint it continues from: they are written again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from training.errors import TrainError


@dataclasses.dataclass
class Throughput:
    """Training steps and images (all ranks) of this process's session, the seconds spent in training
    steps, and the wall clock since the first epoch began."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    def wall(self) -> float:
        return time.perf_counter() - self.started


SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES = "curves.png"
LOCK = ".lcrypt-train.lock"
CSV_FIELDS = ("run", "epoch", "step", "train_loss", "test_loss", "test_top1", "test_count", "lr",
              "images_per_s", "wall_s")


class OutLock:
    """An exclusive lock on a run folder (:class:`lcrypt.lock.FileLock` on ``.lcrypt-train.lock`` in it),
    so a second run into the same folder is refused, naming the first. A killed run's leftover file locks
    nothing: the next run takes it over. The file is removed at the end, also when the run is stopped by
    SIGTERM (what torchrun sends the other ranks when one fails), and so are the folders the run made if
    it left nothing in them."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / LOCK
        self.lock = None
        self.made: list[Path] = []  # the folders acquire created, innermost first
        self.previous_handler: Any = None

    def acquire(self, new: bool = False) -> None:
        """Create the folder (``new``: it must not exist yet, else FileExistsError) and lock it."""
        from lcrypt.lock import FileLock, LockBusy

        made = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=not new)
        except FileExistsError:
            raise
        except OSError as exc:
            self.made = made
            self.abandon()
            raise TrainError(f"cannot use the run folder {self.out}: {exc.strerror or exc}") from None
        self.made = made
        self.lock = FileLock(self.path)
        try:
            self.lock.acquire()
            self.lock.write_holder(command="training.train")
        except LockBusy as exc:
            self.abandon()
            raise TrainError(f"the run folder {self.out} is in use by another training run ({exc.holder}); "
                             "wait for it to end, or start a new run") from None
        except OSError as exc:
            self.lock.release()
            self.abandon()
            raise TrainError(f"cannot use the run folder {self.out}: {exc.strerror or exc}") from None
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
        """Remove the folders this run made (the run folder, ``--out``) again if it left nothing in them."""
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []


class MetricsLog:
    """``metrics.jsonl``, ``metrics.csv``, ``curves.png`` and TensorBoard events of one run (rank 0 writes;
    on other ranks every method does nothing). ``before_write`` is called before anything is written."""

    def __init__(self, folder: Path, run_id: str, enabled: bool, tensorboard: bool = False,
                 before_write: Callable[[], None] | None = None):
        self.folder, self.path, self.run_id, self.enabled = folder, folder / METRICS, run_id, enabled
        self.before_write = before_write or (lambda: None)
        self.epochs: list[dict[str, Any]] = []  # this run's epoch lines, resumed ones included
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(folder))

    def resume(self, epochs_done: int, global_step: int) -> None:
        """Keep the lines up to a checkpoint after ``epochs_done`` epochs and ``global_step`` steps."""
        if not (self.enabled and self.path.is_file()):
            return
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if (r.get("epoch", 0) <= epochs_done if r.get("event") == "epoch"
                                    else r.get("step", 0) <= global_step)]
        if len(kept) < len(rows):
            from lcrypt.storage import atomic_write

            atomic_write(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
        self.epochs = [r for r in kept if r.get("event") == "epoch"]

    def write(self, row: dict[str, Any]) -> None:
        """Append one line (with the run id); after an epoch line, rewrite the table and the curves."""
        if not self.enabled:
            return
        self.before_write()
        row = {"run": self.run_id, **row}
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            self.add_scalars(row)
        if row.get("event") == "epoch":
            from lcrypt.storage import atomic_write
            from training.curves import draw_curves

            self.epochs.append(row)
            text = io.StringIO()
            table = csv.DictWriter(text, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
            table.writeheader()
            table.writerows(self.epochs)
            atomic_write(self.folder / METRICS_CSV, text.getvalue().encode())
            atomic_write(self.folder / CURVES, draw_curves(self.epochs))

    def add_scalars(self, row: dict[str, Any]) -> None:
        step = row["step"]
        if row.get("event") == "step":
            self.tb.add_scalar("train/loss_step", row["loss"], step)
            self.tb.add_scalar("train/lr", row["lr"], step)
            return
        for key, tag in (("train_loss", "train/loss"), ("test_loss", "test/loss"), ("test_top1", "test/top1"),
                         ("images_per_s", "train/images_per_s")):
            if row.get(key) is not None:
                self.tb.add_scalar(tag, row[key], step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def summarize(last: dict[str, Any], identity: dict[str, Any], run: dict[str, Any], **facts: Any
              ) -> dict[str, Any]:
    """``summary.json``: the run's last epoch line, its identity (dataset, scheme, model) and ``facts``
    (epochs, steps, timing, device, digests, checkpoint, command...)."""
    return {"top1": last.get("test_top1"), "test_loss": last.get("test_loss"),
            "train_loss": last.get("train_loss"), **facts, "model": identity["model_config"],
            "scheme": identity["scheme"], "scheme_params": identity["scheme_params"],
            "key_ids": identity["key_ids"], "dataset": identity["dataset"], "owners": identity.get("owners"),
            **run}


def owners_column(owners: dict[str, Any]) -> str:
    """The summary table's owners cell: all (pooled, how many), one owner's name, or the adapters."""
    names = [o["name"] for o in owners["owners"]]
    if owners["mode"] == "all":
        return f"all {len(names)}, pooled"
    if owners["mode"] == "one":
        return names[0]
    return f"{len(names)} adapters" + (f" (+{names[-1]})" if owners["mode"] == "add" else "")


def write_summary(out: Path, summary: dict[str, Any], checkpoint: Path) -> None:
    """Write ``summary.json`` and print its table (also with --quiet) and where the outputs are."""
    from lcrypt.storage import atomic_write
    from lcrypt.table import format_table

    atomic_write(out / SUMMARY, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    top1 = f"{summary['top1']:.2f}" if summary["top1"] is not None else "-"
    owners = summary.get("owners") or {"mode": "all", "owners": []}
    row = [summary["scheme"], summary["model"]["name"], owners_column(owners), summary["epochs"],
           summary["steps"], top1, round(summary["images_per_s"]), round(summary["wall_s"], 1),
           summary["device"]]
    header = ["scheme", "model", "owners", "epochs", "steps", "top-1 %", "images/s", "wall s", "device"]
    print(format_table([row], header))
    print(f"run {summary['run']}: {out} (checkpoint: {checkpoint.name}, metrics.jsonl, metrics.csv, "
          f"curves.png, summary.json)")
