"""Run folders: each training run writes into its own folder under ``--out``, never into another run's.

* A new run's folder is ``OUT/<YYYYmmdd-HHMMSS>-<scheme>-<model>[-<adapt>]`` (``-2``, ``-3``, ... when
  that name is taken), or ``OUT/<--name>``, which must not exist yet or be empty.
* ``--resume RUN`` (a run folder, or the checkpoint in one) continues that run, in its folder.
* ``--resume auto`` continues the newest run under ``OUT`` of the same dataset (name, scheme, parameters,
  key ids, image shape, classes) and the same model architecture that has a checkpoint, as its
  ``run.json`` records them; with ``--name``, the run ``OUT/NAME`` (from its checkpoint, or from the
  start when it has none yet). When there is none, a new run starts: re-running a job's command with
  ``--resume auto`` after a preemption continues it.
* ``run.json``, written with the run's first metrics line or checkpoint, holds the run id, the folder's
  name, the start time, the command, the dataset and the model. A resumed run keeps its run id.

Only rank 0 picks and writes the folder; under torchrun the other ranks learn its path from rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

from training.args import splits_read
from training.checkpoint import CHECKPOINT, PLAIN_TYPES
from training.data import shard_problem
from training.distributed import Process, agree, broadcast_object, stop_together
from training.errors import TrainError
from training.outdir import LOCK, OutLock

RUN_RECORD = "run.json"


@dataclasses.dataclass
class RunPlan:
    """Where this run writes: ``folder`` (None: a new run, its name ``name`` + the time, chosen by rank 0
    when it starts), the checkpoint it continues from (None: from the start) and whether it continues an
    existing run (which keeps its run id)."""

    folder: Path | None
    name: str
    checkpoint: Path | None = None
    resumed: bool = False


def run_config(identity: dict[str, Any], architecture: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs "the same configuration" for ``--resume auto`` (as JSON would hold it)."""
    config = {"dataset": identity["dataset"], "scheme": identity["scheme"],
              "scheme_params": identity["scheme_params"], "key_ids": identity["key_ids"],
              "image_shape": identity["image_shape"], "class_names": identity["class_names"],
              "architecture": architecture}
    return json.loads(json.dumps(config, sort_keys=True))


def plan_run(args: argparse.Namespace, config: dict[str, Any]) -> RunPlan:
    """The folder this run writes into and the checkpoint it continues from; refused in one line when
    it would write over another run. Reads only: nothing is created."""
    out = Path(args.out)
    if args.resume not in (None, "auto"):
        given = Path(args.resume)
        ckpt = given / CHECKPOINT if given.is_dir() else given
        if not ckpt.is_file():
            raise TrainError(f"--resume {args.resume}: no such checkpoint (give a run folder that holds "
                             f"{CHECKPOINT}, the checkpoint itself, or --resume auto)")
        return RunPlan(ckpt.parent, ckpt.parent.name, ckpt, resumed=True)
    if args.name:
        folder = out / args.name
        if args.resume == "auto" and holds_run(folder):
            ckpt = folder / CHECKPOINT
            if not ckpt.is_file():  # stopped before its first checkpoint: start it again
                check_same_config(folder, config)
            return RunPlan(folder, args.name, ckpt if ckpt.is_file() else None, resumed=True)
        if holds_run(folder):
            raise TrainError(f"--name {args.name}: {folder} already holds a run; continue it with --resume "
                             f"auto --name {args.name} (or --resume {folder}), or give another --name")
        if foreign := [p.name for p in entries(folder) if p.name != LOCK]:
            raise TrainError(f"--name {args.name}: {folder} exists and holds files that are not a training "
                             f"run ({', '.join(sorted(foreign)[:3])}); give another --name")
        return RunPlan(folder, args.name)
    if args.resume == "auto" and (newest := newest_run(out, config)) is not None:
        return RunPlan(newest, newest.name, newest / CHECKPOINT, resumed=True)
    return RunPlan(None, default_name(config))


def entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def holds_run(folder: Path) -> bool:
    return (folder / RUN_RECORD).is_file() or (folder / CHECKPOINT).is_file()


def read_record(folder: Path) -> dict[str, Any] | None:
    """A run folder's ``run.json``, or None when it has none (or an unreadable one)."""
    try:
        record = json.loads((folder / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_same_config(folder: Path, config: dict[str, Any]) -> None:
    """Refuse to continue a run of another dataset or model (named by the first field that differs)."""
    theirs = (read_record(folder) or {}).get("config")
    if not isinstance(theirs, dict):
        return
    for field in config:
        if theirs.get(field) != config[field]:
            raise TrainError(f"--resume auto --name {folder.name}: that run trains with {field} "
                             f"{theirs.get(field)!r}, this one with {config[field]!r}; give another --name "
                             "for a new run")


def newest_run(out: Path, config: dict[str, Any]) -> Path | None:
    """The most recently started run under ``out`` with this configuration and a checkpoint."""
    found = []
    for folder in entries(out):
        record = read_record(folder)
        if record and record.get("config") == config and (folder / CHECKPOINT).is_file():
            found.append((str(record.get("started", "")), folder.name, folder))
    return max(found)[2] if found else None


def default_name(config: dict[str, Any]) -> str:
    """``<scheme>-<model>[-<adapt>]``; rank 0 puts the start time in front (:func:`new_folder`)."""
    arch = config["architecture"]
    parts = [config["scheme"], arch["name"]] + ([arch["adapt"]] if arch.get("adapt") != "none" else [])
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", "-".join(parts))


def new_folder(out: Path, name: str, now: _dt.datetime | None = None) -> Path:
    """A folder name under ``out`` no run has: the time, then ``name``, then ``-2``, ``-3``, ..."""
    base = f"{(now or _dt.datetime.now()).strftime('%Y%m%d-%H%M%S')}-{name}"
    n = 1
    while (out / (base if n == 1 else f"{base}-{n}")).exists():
        n += 1
    return out / (base if n == 1 else f"{base}-{n}")


class RunRecord:
    """``run.json`` of the run in ``folder``: the resumed run's own, or a new one, written by
    :meth:`write_once` when the run first writes anything else (rank 0 only)."""

    def __init__(self, folder: Path, config: dict[str, Any], args: argparse.Namespace,
                 argv: Sequence[str] | None, enabled: bool):
        self.folder, self.enabled = folder, enabled
        kept = read_record(folder)
        self.written = kept is not None
        self.record = kept or {
            "run": uuid.uuid4().hex[:12], "name": folder.name,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv if argv is None else ["training.train", *argv]),
            "config": config,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, PLAIN_TYPES)}}

    @property
    def run_id(self) -> str:
        return str(self.record["run"])

    def write_once(self) -> None:
        if self.enabled and not self.written:
            from lcrypt.storage import atomic_write

            atomic_write(self.folder / RUN_RECORD, (json.dumps(self.record, indent=1, sort_keys=True) + "\n")
                         .encode())
            self.written = True


def lock_folder(plan: RunPlan, out: Path) -> tuple[Path, OutLock]:
    """Rank 0: create (a new run: under a free name) and lock the run's folder."""
    if plan.folder is not None:
        lock = OutLock(plan.folder)
        lock.acquire()
        return plan.folder, lock
    while True:
        folder = new_folder(out, plan.name)
        lock = OutLock(folder)
        try:
            lock.acquire(new=True)
            return folder, lock
        except FileExistsError:  # another run took the name meanwhile: the next suffix
            continue


def claim_folder(args: argparse.Namespace, manifest, base: str, plan: RunPlan, proc: Process
                 ) -> tuple[Path, OutLock]:
    """Every rank checks the shards, rank 0 creates and locks the run folder and tells the others where
    it is; on a problem all ranks stop."""
    try:
        if problem := agree(shard_problem(manifest, base, splits_read(args))):
            raise TrainError(problem)
        folder, lock, lock_error = plan.folder, None, None
        if proc.is_main:
            try:
                folder, lock = lock_folder(plan, Path(args.out))
            except TrainError as exc:
                lock_error = str(exc)
        if lock_error := agree(lock_error):
            raise TrainError(lock_error)
        folder = Path(broadcast_object(str(folder)))
        folder.mkdir(parents=True, exist_ok=True)  # other ranks: rank 0 made it (or another node did)
    except TrainError as exc:
        stop_together(exc, proc.rank)
        raise
    return folder, lock or OutLock(folder)
