"""Live progress of a local ``prepare`` run: each worker drops its counters in a local folder and a
thread of the driver sums them into a progress bar. Best effort; the summary at the end is exact."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading

PREFIX = "lcrypt-progress-"


def folder() -> str:
    """A fresh local folder for live progress, after removing those of runs that died (their pid is
    gone): a killed run cannot remove its own."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if name.startswith(PREFIX):
            pid = name[len(PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def watch(progress_dir: str, stop: threading.Event, quiet: bool) -> None:
    """Sum the counters the workers drop in ``progress_dir`` into a bar until ``stop`` is set."""
    from tqdm import tqdm

    bar = tqdm(desc="prepare", unit="img", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True,
               mininterval=0.5)
    shown = 0
    while not stop.wait(0.5):
        total, rej = 0, 0
        try:
            for f in os.listdir(progress_dir):
                if f.endswith(".json"):
                    with open(os.path.join(progress_dir, f)) as fh:
                        d = json.load(fh)
                    total, rej = total + d["read"], rej + d["rejected"]
        except (OSError, ValueError, KeyError):
            continue
        if total > shown:
            bar.update(total - shown)
            shown = total
            bar.set_postfix(rejected=rej)
    bar.close()
