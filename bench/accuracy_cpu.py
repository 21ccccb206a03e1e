"""CPU accuracy check: every scheme, each with the model its paper pairs it with, one table with the
ratio to plain and the papers' figures beside it (docs/results.md has the run and its duration).

    python bench/accuracy_cpu.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--work DIR]
    python bench/accuracy_cpu.py --limit 500 --epochs 1 --work /tmp/acc-smoke   # the plumbing only
    python bench/accuracy_cpu.py --schemes plain,le:none,le:block             # SCHEME[:ADAPT]

For each scheme: the real `prepare` pipeline (Beam, in-process) encrypts the source with one fresh key
into PNG shards, with the scheme's default parameters, as the dataset ``<source's first word>-<scheme>``
(``cifar10-le``); then `training.train` (one process, streaming loader) trains the same ConvMixer-64/4
(patch 2, kernel ``--kernel``) for ``--epochs`` epochs behind the adaptation network of :data:`PAIRS`,
into ``WORK/runs/<scheme>[-<adapt>]``, and evaluates it on the encrypted test split. So the security
report quotes these runs: ``lcrypt evaluate --rerender results.json --out DIR --accuracy
WORK/runs/*/summary.json`` (the dataset's first word and the scheme's parameters match its rows).
Prints the table (also written to ``WORK/accuracy.md`` and ``WORK/accuracy.json``): top-1, ratio to
plain, and the paper's top-1 over its own plain baseline. A ranking check at a tiny budget, not the
papers' numbers: they train 200-300 epochs on GPUs with larger networks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The adaptation network each paper puts in front of its classifier ("none": the classifier alone).
PAIRS = {
    "plain": "none",
    "pe": "pe",                # Sirichotedumrong et al. 2019: 1x1 adaptation network (M1 = 8, M2 = 32)
    "etc": "none",             # MaungMaung & Kiya 2022: ConvMixer's patch embedding, no adaptation network
    "le": "block",             # Tanaka 2018: block adaptation (M = 4) in front of a PyramidNet
    "block-shuffle": "block",  # Tanaka 2018's baselines go through the same network
    "catmap": "block",         # (the cat map has no blocks: the adaptation uses Tanaka's M = 4)
    "ele": "block",            # Madono et al. 2020 (MaungMaung & Kiya, Table II: "Adaptation + ShakeDrop")
    "cpbe": "none",            # Ahmad & Shin name no adaptation network; the ciphers are pixel-wise
    "ahmad-diffusion": "none",
    "blockwise": "none",       # AprilPyone & Kiya 2021: the classifier on the transformed images
}
ADAPT_BLOCK = 4  # Tanaka 2018's block size, for a scheme without blocks
# (paper's top-1 %, the same paper's plain top-1 %, where) on CIFAR-10; None where the text gives none
PAPERS = {
    "le": (86.3, 88.4, "Tanaka 2018, Table 1"),
    "block-shuffle": (87.2, 88.4, "Tanaka 2018, Table 1"),
    "catmap": (46.8, 88.4, "Tanaka 2018, Table 1"),
    "pe": (86.99, 92.98, "Sirichotedumrong et al. 2019, Table 2 (with adaptation)"),
    "etc": (92.72, 96.07, "MaungMaung & Kiya 2022, Table II (ConvMixer-256/8)"),
    "ele": (83.06, 96.70, "MaungMaung & Kiya 2022, Table II (adaptation + ShakeDrop)"),
    "cpbe": None,             # Ahmad & Shin, Fig. 2: "preserved the model performance"
    "ahmad-diffusion": None,  # Ahmad & Shin, Fig. 2: about 7 points above ELE
}


def small_source(source: str, limit: int, folder: Path) -> Path:
    """An ImageFolder of ``limit`` training and ``limit // 5`` test images spread evenly over the
    source (its classes come one after another), for a quick run of the plumbing."""
    import numpy as np
    from PIL import Image

    from lcrypt.sources import load_arrays

    done = folder.with_name(folder.name + ".done")  # beside the tree: prepare would read it as an image
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for split, n in (("train", limit), ("test", max(10, limit // 5))):
        images, labels, names = load_arrays(source, split)
        for i in np.linspace(0, len(images) - 1, min(n, len(images))).astype(int):
            path = folder / split / names[labels[i]] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(path)
    done.write_text("")
    return folder


def paper_text(scheme: str) -> str:
    paper = PAPERS.get(scheme)
    if paper is None:
        return "—" if scheme not in PAPERS else "not in the text (Fig. 2)"
    top1, plain, _ = paper
    return f"{top1:g} / {plain:g} = {top1 / plain:.3f}"


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
    p.add_argument("--schemes", default=",".join(PAIRS),
                   help="comma-separated SCHEME or SCHEME:ADAPT (none, pe, block); default: every scheme "
                   "with its paper's adaptation network")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3, help="ConvMixer depthwise kernel (default 3)")
    p.add_argument("--limit", type=int, help="LIMIT training and LIMIT/5 test images: a smoke test of the "
                   "plumbing, its accuracy means nothing")
    args = p.parse_args(argv)
    from lcrypt import Key, get_scheme
    from lcrypt.table import format_table
    from pipelines.prepare import run as prepare
    from training.train import run as train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    key_path = work / "owner.key"
    if not key_path.exists():
        Key.generate("owner").save(key_path)
    stem = Path(args.source).name.replace("_", "-").split("-")[0].split(".")[0]  # cifar10-jpeg.tar.gz
    source = args.source
    tag = ""
    if args.limit:
        tag = f"-limit{args.limit}"
        source = str(small_source(args.source, args.limit, work / f"source{tag}"))
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    planned = args.schemes.split(",")
    for n, run in enumerate(planned, 1):
        scheme, _, adapt = run.partition(":")
        adapt = adapt or PAIRS.get(scheme, "none")
        print(f"[{n}/{len(planned)}] {scheme}: prepare, then train {args.epochs} epoch(s) with adaptation "
              f"{adapt} ({time.perf_counter() - t_all:.0f} s so far)", flush=True)
        data = work / f"data{tag}" / scheme
        t0 = time.perf_counter()
        if not (data / "manifest.json").exists():
            rc = prepare(["--source", source, "--scheme", scheme, "--name", f"{stem}-{scheme}",
                          "--keys", str(key_path), "--out", str(data), "--quiet", "--overwrite"])
            if rc:
                return rc
        prep_s = time.perf_counter() - t0
        name = scheme if adapt == "none" else f"{scheme}-{adapt}"
        runs = work / f"runs{tag}"
        shutil.rmtree(runs / name, ignore_errors=True)  # this bench's own earlier run: measured afresh
        blockless = get_scheme(scheme).info.block_size is None
        block = ["--adapt-block", str(ADAPT_BLOCK)] if adapt == "block" and blockless else []
        t1 = time.perf_counter()
        rc = train(["--data", str(data / "manifest.json"), "--out", str(runs), "--name", name,
                    *recipe(args.kernel, args.epochs, args.batch_size), "--adapt", adapt, *block])
        if rc:
            return rc
        s = json.loads((runs / name / "summary.json").read_text())
        model = f"ConvMixer-64/4 p2 k{args.kernel}" + ("" if adapt == "none" else f" + {adapt} adaptation")
        results[run] = {"scheme": scheme, "adapt": adapt, "model": model, "top1": s["top1"],
                        "images_per_s": s["images_per_s"], "train_s": s["train_s"], "prepare_s": prep_s,
                        "wall_s": time.perf_counter() - t1, "summary": str(runs / name / "summary.json")}
    plains = [r["top1"] for r in results.values() if (r["scheme"], r["adapt"]) == ("plain", "none")]
    plain = plains[0] if plains else None
    header = ["scheme", "model", "top-1 %", "ratio to plain", "paper: top-1 / plain", "train img/s",
              "train s", "prepare s"]
    rows = [[r["scheme"], r["model"], f"{r['top1']:.2f}", f"{r['top1'] / plain:.3f}" if plain else "-",
             paper_text(r["scheme"]), round(r["images_per_s"]), round(r["train_s"]), round(r["prepare_s"])]
            for r in results.values()]
    wall = time.perf_counter() - t_all
    (work / "accuracy.json").write_text(json.dumps({"runs": results, "wall_s": wall, "epochs": args.epochs,
                                                    "limit": args.limit}, indent=1))
    markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    markdown += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    (work / "accuracy.md").write_text("\n".join(markdown) + "\n")
    print(format_table(rows, header))
    print(f"{wall:.0f} s wall for {len(results)} runs; summaries: {work / f'runs{tag}'}/*/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
