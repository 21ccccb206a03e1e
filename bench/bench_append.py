"""Benchmark `prepare --append` and `prepare --resume` against a full `prepare`, side by side.

    .venv/bin/python bench/bench_append.py                      # CIFAR-10 from ../shared
    .venv/bin/python bench/bench_append.py --repeat 3 --new 0.1 --work /tmp/lcrypt-bench-append
    .venv/bin/python bench/bench_append.py --dataset imagenette --source tree

``--source tree`` extracts the archive into ``--work`` first and reads the ImageFolder tree instead. Every
run is a fresh `python -m pipelines.prepare` process timed from outside (Beam's start-up included), all
with the same options (``--scheme etc``, 8-px blocks on CIFAR-10, 16 on Imagenette; PNG, one key,
``--shard-size``); wall and CPU seconds (the process and its decoder process). Each round times, in turn:

- **full**: `prepare` of the whole archive (CIFAR-10: 60,000 records) into a fresh folder;
- **append**: `prepare --append` of the whole archive to a dataset prepared (untimed) from the archive
  without every 10th record (``--new``): only the new records are decoded and encrypted. The grown
  dataset must verify and hold the same sample keys as the full one;
- **resume**: a full `prepare` killed with SIGKILL once about half its shards are written, then
  `prepare --resume` timed; its output must be byte-identical to the full run's (every file's sha256,
  manifest.json without its creation time).

Targets (issue 16): append <= 0.15 x full, resume <= 0.60 x full. Skips cleanly when ../shared/datasets
is not beside this checkout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lcrypt import Key  # noqa: E402
from lcrypt.format import Manifest, read_index  # noqa: E402
from lcrypt.table import format_table  # noqa: E402
from lcrypt.verify import verify  # noqa: E402
from tests.test_golden_dataset import outputs  # noqa: E402

DATASETS = {"cifar10": ("cifar10-jpeg.tar.gz", 8), "imagenette": ("imagenette-224.tar.gz", 16)}  # EtC block
TARGETS = {"append": 0.15, "resume": 0.60}


def without_every_nth(src: Path, dst: Path, fraction: float) -> int:
    """Write ``dst``: the archive ``src`` without every ``round(1 / fraction)``-th file (the records an
    append then adds); returns how many files it left out."""
    step, left_out, seen = round(1 / fraction), 0, 0
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz", compresslevel=1) as tout:
        for member in tin:
            if member.isfile():
                seen += 1
                if seen % step == 0:
                    left_out += 1
                    continue
                tout.addfile(member, io.BytesIO(tin.extractfile(member).read()))
            else:
                tout.addfile(member)
    return left_out


def tree_without_every_nth(archive: Path, work: Path, fraction: float) -> tuple[Path, Path, int]:
    """``(the archive extracted as an ImageFolder tree, the same tree without every n-th file (hard
    links), how many files that leaves out)`` for ``--source tree``."""
    with tarfile.open(archive, "r:gz") as tf:
        tf.extractall(work / "tree", filter="data")
    (root,) = [p for p in (work / "tree").iterdir() if p.is_dir()]
    step, left_out = round(1 / fraction), 0
    for i, p in enumerate(sorted(p for p in root.rglob("*") if p.is_file()), 1):
        if i % step == 0:
            left_out += 1
            continue
        dst = work / "older-tree" / p.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, dst)
    return root, work / "older-tree", left_out


def command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.prepare", *argv, "--quiet"]


def cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str]) -> tuple[tuple[float, float], str]:
    """``((wall seconds, CPU seconds), stdout)`` of one prepare process (its decoder process included:
    on a shared machine CPU time moves less with the load than wall time)."""
    start, cpu = time.perf_counter(), cpu_of_children()
    done = subprocess.run(command(argv), cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start, cpu_of_children() - cpu
    if done.returncode:
        raise SystemExit(f"prepare failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def killed_halfway(argv: list[str], out: Path, shards: int) -> int:
    """Start a prepare into ``out`` and SIGKILL it once half of its ``shards`` are written (shards appear
    under their final names complete); returns how many were there."""
    proc = subprocess.Popen(command(argv + ["--out", str(out)]), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while (written := len(list(out.glob("*/*.tar")))) < shards // 2:
        if proc.poll() is not None:
            err = proc.stderr.read()[-2000:]
            raise SystemExit(f"prepare ended before half its shards were written: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("prepare never wrote half its shards")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return written


def keys_of(out: Path) -> list[str]:
    return sorted(read_index(out).column("key").to_pylist())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--work", default="/tmp/lcrypt-bench-append", help="emptied first; kept afterwards")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--new", type=float, default=0.1, help="the fraction of records the append adds")
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    ap.add_argument("--source", choices=("tar", "tree"), default="tar",
                    help="read the .tar.gz as it is, or extracted into an ImageFolder tree under --work")
    args = ap.parse_args()
    shared, work = Path(args.shared), Path(args.work)
    archive, block = DATASETS[args.dataset]
    if not (shared / archive).exists():
        print(f"skipped: {shared / archive} not found (../shared/datasets is not beside this checkout)")
        return 0
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    Key.generate("owner").save(work / "owner.key")
    if args.source == "tar":
        source, older = shared / archive, work / "older.tar.gz"
        left_out = without_every_nth(source, older, args.new)
    else:
        source, older, left_out = tree_without_every_nth(shared / archive, work, args.new)
    opts = ["--scheme", "etc", "--param", f"block_size={block}", "--keys", str(work / "owner.key"), "--name",
            args.dataset, "--shard-size", str(args.shard_size)]
    whole = ["--source", str(source), *opts]
    timed(["--source", str(older), *opts, "--out", str(work / "older")])  # the dataset append adds to
    full_s, append_s, resume_s, kills = [], [], [], []
    for r in range(args.repeat):
        full = work / f"full-{r}"
        full_s.append(timed(whole + ["--out", str(full)])[0])
        m = Manifest.load(full)
        shards, records = len(m.shards), sum(int(x["read"]) for x in m.stats)

        grown = work / f"grown-{r}"
        shutil.copytree(work / "older", grown)
        seconds, said = timed(whole + ["--out", str(grown), "--append"])
        append_s.append(seconds)
        assert verify(grown)[0] == [] and keys_of(grown) == keys_of(full), "the grown dataset differs"
        added = next(line for line in said.splitlines() if line.startswith("append:"))

        again = work / f"resumed-{r}"
        at_kill = killed_halfway(whole, again, shards)
        seconds, said = timed(whole + ["--out", str(again), "--resume"])
        resume_s.append(seconds)
        same = outputs(again) == outputs(full)
        assert same, "the resumed dataset is not byte-identical to the full run's"
        kept = next(line for line in said.splitlines() if line.startswith("resumed:"))
        kills.append(f"{at_kill} of {shards} shards on disk at the kill; {kept}")
        for folder in (full, grown, again):
            shutil.rmtree(folder)
    f, a, s = (statistics.median(t for t, _ in x) for x in (full_s, append_s, resume_s))
    fc, ac, sc = (statistics.median(c for _, c in x) for x in (full_s, append_s, resume_s))
    rows = [["full prepare", f"{f:.2f}", "1.00", f"{fc:.2f}", "1.00", "", ""]]
    for name, t, c in (("append", a, ac), ("resume", s, sc)):
        ratio = t / f
        rows.append([f"--{name}", f"{t:.2f}", f"{ratio:.2f}", f"{c:.2f}", f"{c / fc:.2f}",
                     f"<= {TARGETS[name]}", "met" if ratio <= TARGETS[name] else "MISSED"])
    print(format_table(rows, ["run", "wall (s)", "x full", "CPU (s)", "CPU x full", "target", ""]))
    print(f"\nmedians of {args.repeat} round(s); {args.dataset}, source: {args.source} ({source}); "
          f"{records:,} records, {left_out:,} of them new to the append's dataset; {added}")
    print("resume: " + " | ".join(kills) + "; output byte-identical to the full run's")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{_dt.date.today().isoformat()}")
    return 0 if a / f <= TARGETS["append"] and s / f <= TARGETS["resume"] else 1


if __name__ == "__main__":
    sys.exit(main())
