"""CPU accuracy check: the same small model and budget on plain, pe, etc and le CIFAR-10
(about 10 min, 2 cores).

    python bench/accuracy_cpu.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--epochs 2]
    # SCHEME:ADAPT puts an adaptation network in front
    python bench/accuracy_cpu.py --schemes plain,le:block,pe:pe

For each scheme: the real `prepare` pipeline (Beam, in-process) encrypts CIFAR-10 with one fresh key into
PNG shards, then `training.train` (one process, streaming loader) trains a ConvMixer-64/4 (patch 2,
kernel ``--kernel``: 3 by default, so the four runs fit in about 10 minutes) for ``--epochs`` epochs
with the augmentations each scheme declares, and evaluates on the encrypted test split. Prints
accuracy and its ratio to plain; the figures go to docs/results.md.
A ranking check, not the papers' numbers: the papers train for 200-300 epochs on GPUs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARAMS = {"plain": [], "pe": [], "etc": ["--param", "block_size=16"], "le": ["--param", "block_size=4"]}


def recipe(kernel: int = 3, epochs: int = 2, batch_size: int = 128) -> list[str]:
    """The check's training flags: ConvMixer-64/4 (patch 2), AdamW, cosine, one process, no workers."""
    return ["--model", "convmixer", "--width", "64", "--depth", "4", "--patch", "2", "--kernel", str(kernel),
            "--epochs", str(epochs), "--batch-size", str(batch_size), "--opt", "adamw", "--lr", "0.005",
            "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "0.2",
            "--memory-format", "channels_last", "--workers", "0", "--quiet"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--work", default="/tmp/lcrypt-accuracy")
    p.add_argument("--schemes", default="plain,pe,etc,le",
                   help="comma-separated SCHEME or SCHEME:ADAPT (pe, block)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3,
                   help="ConvMixer depthwise kernel "
                   "(default 3; the earlier 5 made the four runs take ~17 min)")
    args = p.parse_args(argv)
    from lcrypt import Key
    from lcrypt.table import format_table
    from pipelines.prepare import run as prepare
    from training.train import run as train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    key_path = work / "owner.key"
    if not key_path.exists():
        Key.generate("owner").save(key_path)
    rows, results = [], {}
    t_all = time.perf_counter()
    for run in args.schemes.split(","):
        scheme, _, adapt = run.partition(":")
        data = work / scheme
        t0 = time.perf_counter()
        if not (data / "manifest.json").exists():
            rc = prepare(["--source", args.source, "--scheme", scheme, *PARAMS[scheme],
                          "--keys", str(key_path), "--out", str(data), "--quiet", "--overwrite"])
            if rc:
                return rc
        prep_s = time.perf_counter() - t0
        out = work / f"run-{run.replace(':', '-')}"
        t1 = time.perf_counter()
        rc = train(["--data", str(data / "manifest.json"), "--out", str(out),
                    *recipe(args.kernel, args.epochs, args.batch_size), "--adapt", adapt or "none"])
        if rc:
            return rc
        s = json.loads((out / "summary.json").read_text())
        results[run] = {"top1": s["top1"], "images_per_s": s["images_per_s"], "train_s": s["train_s"],
                           "prepare_s": prep_s, "wall_s": time.perf_counter() - t1}
    plain = results.get("plain", {}).get("top1")
    for run, r in results.items():
        rows.append([run, f"{r['top1']:.2f}", f"{r['top1'] / plain:.3f}" if plain else "-",
                     round(r["images_per_s"]), round(r["train_s"]), round(r["prepare_s"])])
    (work / "accuracy.json").write_text(json.dumps(results, indent=1))
    print(format_table(rows, ["scheme", "top-1 %", "ratio to plain", "train img/s", "train s", "prepare s"]))
    print(f"{time.perf_counter() - t_all:.0f} s wall for {len(results)} schemes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
