"""Where a `prepare` run's wall time goes: start-up, EncryptChunks, the GroupByKey hand-over, WriteShards,
Finalize.

    .venv/bin/python bench/prepare_phases.py --key K.key  # CIFAR-10 from ../shared, 2 runs per mode

Each run is a fresh process (so Beam's imports count, as they do for a user) that wraps two DoFns'
``process`` to log the time of their first and last call, then runs ``pipelines.prepare`` in that
process. Modes: the default in-process engine and ``--direct_running_mode multi_threading`` with 2
workers, both of which run every DoFn in this process (``multi_processing`` does not, so it is not
offered). Prints each phase's span in seconds from launch, per run, and which phases could use a
second core. docs/benchmarks.md ("prepare pipeline") reads the two-worker target from this table.
"""

from __future__ import annotations

import time

T0 = time.time()  # before any import: the process's launch, as a user's command sees it

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODES = {"in-process": [], "multi_threading x2": ["--direct_running_mode", "multi_threading",
                                                  "--direct_num_workers", "2"]}
STEPS = ("EncryptChunkFn", "WriteShardFn")


def one_run(argv: list[str]) -> dict:
    """Run prepare here with the DoFns' calls timed; returns {step: [first start, last end]} and the end."""
    from pipelines import prepare, transforms

    spans: dict[str, list[float]] = {}

    def timed(cls):
        inner = cls.process

        def process(self, *args, **kwargs):
            start = time.time()
            yield from inner(self, *args, **kwargs)
            span = spans.setdefault(cls.__name__, [start, start])
            span[0], span[1] = min(span[0], start), max(span[1], time.time())
        cls.process = process

    for name in STEPS:
        timed(getattr(transforms, name))
    rc = prepare.run(argv)
    if rc:
        raise SystemExit(rc)
    return {k: [a - T0, b - T0] for k, (a, b) in spans.items()} | {"end": time.time() - T0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--key", required=True, help="a key file (lcrypt keygen)")
    p.add_argument("--runs", type=int, default=2, help="runs per mode")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, its argv as JSON
    args = p.parse_args(argv)
    if args.one:
        print("PHASES " + json.dumps(one_run(json.loads(args.one))))
        return 0
    from lcrypt.table import format_table

    rows = []
    for mode, extra in MODES.items():
        for r in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                run_argv = ["--source", args.source, "--scheme", "etc", "--param", "block_size=8",
                            "--jpeg-quality", "85", "--keys", args.key, "--out", f"{tmp}/out", "--quiet",
                            "--shard-size", "5000", *extra]
                t = time.time()
                cmd = [sys.executable, __file__, "--key", args.key, "--one", json.dumps(run_argv)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return proc.returncode
                report = next(line for line in proc.stdout.splitlines() if line.startswith("PHASES "))
                ph = json.loads(report[7:])
                total = time.time() - t
                enc, wr = (ph[s] for s in STEPS)
                rows.append([mode, r + 1, f"{enc[0]:.2f}", f"{enc[1] - enc[0]:.2f}", f"{wr[0] - enc[1]:.2f}",
                             f"{wr[1] - wr[0]:.2f}", f"{total - wr[1]:.2f}", f"{total:.2f}"])
    print(format_table(rows, ["mode", "run", "start-up s", "EncryptChunks s", "GroupByKey hand-over s",
                              "WriteShards s", "Finalize + exit s", "total s"]))
    print("Only EncryptChunks and WriteShards can use a second core; the other columns do not scale.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
