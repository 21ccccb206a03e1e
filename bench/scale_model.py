"""The scale model of `lcrypt prepare`: time and peak worker memory at two sizes of each dataset, on the
DirectRunner in-process and on a dask cluster of two worker processes, side by side in one run.

    .venv/bin/python bench/scale_model.py                    # CIFAR-10 10,000/60,000, Imagenette 2,000/13,394
    .venv/bin/python bench/scale_model.py --datasets cifar10 --json build/scale.json

Each size is a subset spread evenly over the archive's members (every split and class), written as an
uncompressed tar so the read is the same kind at both sizes. Each run is a fresh `python -m
pipelines.prepare` process timed from outside (Beam and the cluster connection included). Peak memory is
the largest resident set, polled every 0.1 s, of one worker: on the DirectRunner the prepare process with
its decoder subprocess; on dask one worker process with its decoder subprocess (a fresh cluster for
each run, so a run starts from fresh processes). What the docs draw from it: memory flat in the
dataset size (bounded by --chunk x image size), time linear (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baseline_loop import read_members  # noqa: E402

from lcrypt import Key  # noqa: E402
from lcrypt.format import Manifest  # noqa: E402
from lcrypt.table import format_table  # noqa: E402

DATASETS = {  # archive, EtC block size, the two sizes
    "cifar10": ("cifar10-jpeg.tar.gz", 8, (10_000, 60_000)),
    "imagenette": ("imagenette-224.tar.gz", 16, (2_000, 13_394)),
}


def subset(members: list[tuple[str, bytes]], n: int, path: Path) -> Path:
    """``n`` members spread evenly over the archive (every split and class), as an uncompressed tar."""
    pick = [members[i * len(members) // n] for i in range(n)]
    with tarfile.open(path, "w") as tf:
        for name, data in pick:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class PeakRSS:
    """Polls the resident set of each watched process plus its children; keeps the largest one."""

    def __init__(self, pids: list[int]):
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        import psutil

        while not self.stop.wait(0.1):
            for p in self.procs:
                try:
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def prepare(tar: Path, out: Path, key: Path, block: int, extra: list[str], workers) -> dict:
    """One prepare run: wall seconds, images, and the peak RSS of one worker (``workers``: their pids, or
    None for the DirectRunner, whose worker is the prepare process itself)."""
    argv = [sys.executable, "-m", "pipelines.prepare", "--source", str(tar), "--scheme", "etc", "--param",
            f"block_size={block}", "--keys", str(key), "--out", str(out), "--quiet", "--jpeg-quality", "85",
            "--shard-size", "5000", *extra]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = PeakRSS(workers or [proc.pid])
    _, err = proc.communicate()
    wall = time.perf_counter() - t
    rss = peak.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err[-3000:]}")
    n = sum(s.count for s in Manifest.load(out).shards)
    return {"wall": wall, "n": n, "peak_rss": rss}


def on_dask(tar: Path, out: Path, key: Path, block: int) -> dict:
    """prepare on a fresh 2-worker cluster (the workers start with nothing in memory)."""
    import dask
    import distributed

    with dask.config.set({"distributed.worker.daemon": False}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        return prepare(tar, out, key, block, ["--runner", "dask", "--dask_client_address",
                                              cluster.scheduler_address], pids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--datasets", default="cifar10,imagenette")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Key(bytes(range(32)), "bench").save(tmp / "bench.key")
        for name in args.datasets.split(","):
            fname, block, sizes = DATASETS[name]
            members = read_members(str(Path(args.shared) / fname))
            for n in sizes:
                tar = subset(members, n, tmp / f"{name}-{n}.tar")
                for label in ("direct (in-process)", "dask, 2 workers"):
                    out = tmp / f"out-{name}-{n}-{len(results)}"
                    if label.startswith("direct"):
                        r = prepare(tar, out, tmp / "bench.key", block, [], None)
                    else:
                        r = on_dask(tar, out, tmp / "bench.key", block)
                    assert r["n"] == n, (name, n, r)
                    results.append({"dataset": name, "size": n, "run": label,
                                    "workers": 2 if label.startswith("dask") else 1, **r})
                    print(results[-1], flush=True)
                tar.unlink()
            del members
    rows = []
    for r in results:
        small = next(x for x in results if x["dataset"] == r["dataset"] and x["run"] == r["run"])
        direct = next(x for x in results if x["dataset"] == r["dataset"] and x["size"] == r["size"])
        rows.append([r["dataset"], f"{r['size']:,}", r["run"], round(r["wall"], 1), round(r["n"] / r["wall"]),
                     round(r["n"] / r["wall"] / r["workers"]), round(r["peak_rss"] / 2**20),
                     f"{r['peak_rss'] / small['peak_rss']:.2f}", f"{r['wall'] / small['wall']:.2f}",
                     f"{direct['wall'] / r['wall']:.2f}"])
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f} at the end")
    print(format_table(rows, ["dataset", "images", "run", "wall s", "img/s", "img/s/worker",
                              "peak MiB/worker", "peak / small", "wall / small", "speed vs direct"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
