"""Interleaved A/B of `lcrypt prepare` between two git revisions on a CIFAR-10 slice; outputs must match.

    .venv/bin/python bench/ab_prepare.py --base main --new HEAD --reps 6

Each revision is exported (``git archive``) to a temporary folder and run as a fresh
``python -m pipelines.prepare`` process with that folder first on the path, so both pay Beam's
start-up. The slice is CIFAR-10's test split from ../shared (10,000 JPEGs) as a tar tree and as an
unpacked folder tree (the tar and imagefolder readers). Runs alternate A B / B A per repetition, so
a machine whose load drifts does not favour one side; the comparison is the per-pair ratio of wall
time and of CPU time (user + system of the run and its subprocesses, steadier on a loaded machine).
Every pair's shards, index, _info.json and errors.jsonl must be byte-identical, else it stops.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcrypt import Key  # noqa: E402
from lcrypt.tarstream import iter_members  # noqa: E402


def make_slice(archive: Path, work: Path) -> dict[str, Path]:
    """CIFAR-10's test split as ``cifar-test.tar`` and as the folder ``folder/test/<class>/<file>``."""
    tar_path, folder = work / "cifar-test.tar", work / "folder"
    with open(archive, "rb") as f, tarfile.open(tar_path, "w") as out:
        for name, data in iter_members(f):
            if not name.startswith("cifar10/test/"):
                continue
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))
            path = folder / name.removeprefix("cifar10/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return {"tar": tar_path, "folder": folder}


def cpu_seconds() -> float:
    """User + system seconds of this process's finished children (and theirs) so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output file but manifest.json (its creation time differs per run)."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="git revision A")
    ap.add_argument("--new", default="HEAD", help="git revision B (default HEAD)")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--kinds", default="tar,folder", help="which copies of the slice to read: tar, folder")
    ap.add_argument("--archive", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = {}
        for side, rev in (("A", args.base), ("B", args.new)):
            trees[side] = work / side
            trees[side].mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True,
                                     check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
                tf.extractall(trees[side], filter="data")
        kinds = args.kinds.split(",")
        sources = {k: v for k, v in make_slice(Path(args.archive), work).items() if k in kinds}
        n = sum(1 for _ in (work / "folder").rglob("*.jpg"))
        Key(bytes(range(32)), "bench").save(work / "bench.key")
        walls: dict[tuple[str, str], list[float]] = {(s, side): [] for s in sources for side in trees}
        cpus: dict[tuple[str, str], list[float]] = {(s, side): [] for s in sources for side in trees}
        for rep in range(args.reps):
            for s, src in sources.items():
                outs = {}
                for side in (["A", "B"] if rep % 2 == 0 else ["B", "A"]):
                    out = outs[side] = work / f"out-{s}-{side}"
                    shutil.rmtree(out, ignore_errors=True)
                    argv = [sys.executable, "-m", "pipelines.prepare", "--source", str(src), "--scheme",
                            "etc", "--param", "block_size=8", "--keys", str(work / "bench.key"), "--out",
                            str(out), "--jpeg-quality", "85", "--name", "ab", "--quiet"]
                    t, used = time.perf_counter(), cpu_seconds()
                    subprocess.run(argv, cwd=trees[side], env={**os.environ, "PYTHONPATH": str(trees[side])},
                                   check=True, stdout=subprocess.DEVNULL)
                    walls[(s, side)].append(time.perf_counter() - t)
                    cpus[(s, side)].append(cpu_seconds() - used)
                    print(f"rep {rep} {s:6} {side}: {n / walls[(s, side)][-1]:6.0f} images/s, "
                          f"{cpus[(s, side)][-1]:.2f} s CPU, load {os.getloadavg()[0]:.1f}", flush=True)
                if digests(outs["A"]) != digests(outs["B"]):
                    raise SystemExit(f"{s}: A and B wrote different datasets")
        for s in sources:
            for what, times in (("wall", walls), ("CPU", cpus)):
                a, b = times[(s, "A")], times[(s, "B")]
                ratios = [x / y for x, y in zip(a, b)]
                geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
                pairs = ", ".join(f"{r:.2f}" for r in ratios)
                print(f"{s} {what}: A median {sorted(a)[len(a) // 2]:.2f} s, B median "
                      f"{sorted(b)[len(b) // 2]:.2f} s; A/B per pair {pairs} (geometric mean {geo:.3f}; "
                      "above 1: B is faster)")
        print(f"{n} images; every pair wrote byte-identical shards, index, _info.json and errors.jsonl")


if __name__ == "__main__":
    main()
