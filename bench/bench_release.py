"""Benchmark `lcrypt release` of CIFAR-10 against hashing the dataset's files once, side by side.

    .venv/bin/python bench/bench_release.py                 # CIFAR-10 from ../shared, prepared once
    .venv/bin/python bench/bench_release.py --repeat 5 --work /tmp/lcrypt-bench-release

The dataset is prepared once into ``--work`` (``lcrypt prepare --scheme etc --param block_size=8``, PNG,
60,000 samples) and kept for later runs. Each round times, on warm files: (a) sha256 of every file of the
dataset, read one after the other on one thread, and (b) the `lcrypt release` command (signed by the
owner's key) into a fresh target, which is deleted afterwards; the two alternate, and the medians are
compared. Target (issue 16): (b) <= 2 x (a). The release hard-links the shards when the target is on the
dataset's file system (the default here, under ``--work``); a third column times it with the shards
copied and flushed, as to another disk. A first, untimed release warms the imports (pyarrow,
cryptography). Skips cleanly when ../shared/datasets is not beside this checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcrypt import Key  # noqa: E402
from lcrypt.release import build  # noqa: E402
from lcrypt.release.command import add_command  # noqa: E402
from lcrypt.table import format_table  # noqa: E402
from lcrypt.verify import verify  # noqa: E402

ARCHIVE = "cifar10-jpeg.tar.gz"
TARGET_RATIO = 2.0


def prepare_once(shared: Path, work: Path) -> tuple[Path, Path]:
    """``(dataset, key file)``: CIFAR-10 prepared into ``work`` unless an intact one is there."""
    key, data = work / "keys" / "cifar.key", work / "cifar10-etc"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        Key.generate("cifar").save(key)
    if data.exists() and not verify(data)[0]:
        return data, key
    shutil.rmtree(data, ignore_errors=True)
    argv = [sys.executable, "-m", "pipelines.prepare", "--source", str(shared / ARCHIVE), "--scheme", "etc",
            "--param", "block_size=8", "--keys", str(key), "--out", str(data), "--name", "cifar10-etc",
            "--quiet"]
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return data, key


def sha256_once(data: Path) -> tuple[float, int, int]:
    """``(seconds, files, bytes)`` to read and sha256 every file of the dataset once."""
    files = sorted(p for p in data.rglob("*") if p.is_file())
    start = time.perf_counter()
    total = 0
    for p in files:
        blob = p.read_bytes()
        hashlib.sha256(blob).hexdigest()
        total += len(blob)
    return time.perf_counter() - start, len(files), total


def release_once(data: Path, key: Path, target: Path, version: str, copy: bool = False) -> float:
    """Seconds of `lcrypt release` (the command's own function, its output discarded); ``copy``: as if the
    target were on another file system (no hard links)."""
    parser = argparse.ArgumentParser(prog="lcrypt")
    add_command(parser.add_subparsers())
    args = parser.parse_args(["release", str(data), "--version", version, "--license", "MIT", "--keys",
                              str(key), "--out", str(target)])
    no_links = mock.patch.object(build._Out, "link", lambda self, rel, source: None)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), (no_links if copy else contextlib.nullcontext()):
        assert args.func(args) == 0
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--work", default="/tmp/lcrypt-bench-release",
                    help="kept between runs (the prepared set)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shared, work = Path(args.shared), Path(args.work)
    if not (shared / ARCHIVE).exists():
        print(f"skipped: {shared / ARCHIVE} not found (../shared/datasets is not beside this checkout)")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    data, key = prepare_once(shared, work)
    releases = work / "releases"
    shutil.rmtree(releases, ignore_errors=True)
    sha256_once(data)  # page cache
    release_once(data, key, releases, "0.0.1")  # imports
    hashing, linked, copied = [], [], []
    for r in range(args.repeat):
        seconds, files, size = sha256_once(data)
        hashing.append(seconds)
        linked.append(release_once(data, key, releases, f"1.0.{r}"))
        copied.append(release_once(data, key, releases, f"2.0.{r}", copy=True))
        shutil.rmtree(releases / f"1.0.{r}")
        shutil.rmtree(releases / f"2.0.{r}")
    shutil.rmtree(releases, ignore_errors=True)
    h, rel, cp = statistics.median(hashing), statistics.median(linked), statistics.median(copied)
    ratio = rel / h
    print(format_table([[files, f"{size:,}", f"{h:.3f}", f"{rel:.3f}", f"{ratio:.2f}", f"<= {TARGET_RATIO}",
                         "PASS" if ratio <= TARGET_RATIO else "FAIL", f"{cp:.3f} ({cp / h:.2f}x)"]],
                       ["files", "bytes", "sha256 once (s)", "lcrypt release (s)", "ratio", "target", "",
                        "release, shards copied (s)"]))
    print(f"\nmedians of {args.repeat} rounds; sha256: one thread, files read in turn; release: shards "
          f"hard-linked and hashed on up to {min(4, os.cpu_count() or 1)} threads, card, croissant, preview, "
          "signature, fsync of its own files, rename; copied: read, hash, write and fsync every shard")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{_dt.date.today().isoformat()}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
