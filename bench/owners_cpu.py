"""Many owners' keys, one model: one key vs pooled owners vs owner adapters vs each owner alone (CPU).

    python bench/owners_cpu.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--train-per-class 400]
        [--test-per-class 100] [--epochs 2] [--schemes etc,pe,le]

A CIFAR-10 subset (the first ``--train-per-class`` / ``--test-per-class`` images of each class) is
encrypted by the real `prepare` pipeline three times per scheme: under one key; split between two owners
by file name (``*[02468].jpg`` / ``*[13579].jpg``); and between four (the last two digits: tens 0-4 or
5-9, units even or odd). Each dataset is trained with bench/accuracy_cpu.py's recipe (ConvMixer-64/4,
patch 2, kernel 3, AdamW, cosine, batch 128, one process): one key; the owners pooled (``--owners all``);
with ``--owner-adapters``; and each owner alone on its share (``--owners NAME``, top-1 averaged over the
owners, each on its own test share). Prints top-1, training images/s, the adapters' throughput against
pooling and the share of the pooling gap the adapters recover. Runs whose summary exists are kept
(rerun to finish an interrupted grid); results go to WORK/owners.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy_cpu import recipe  # noqa: E402

OWNERS = {"one": {"k0": ["*"]},
          "two": {"k0": ["*[02468].jpg"], "k1": ["*[13579].jpg"]},
          "four": {"k0": ["*[0-4][02468].jpg"], "k1": ["*[0-4][13579].jpg"],
                   "k2": ["*[5-9][02468].jpg"], "k3": ["*[5-9][13579].jpg"]}}


def subset(source: Path, out: Path, per_split: dict[str, int]) -> None:
    """The first ``per_split[split]`` images of each class of the ImageFolder archive, as files."""
    done = out.with_name(out.name + ".done")  # beside the tree: prepare reads every file in it
    if done.exists():
        return
    with tarfile.open(source) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 4 or parts[-3] not in per_split:
                continue
            if int(Path(parts[-1]).stem) < per_split[parts[-3]]:
                dest = out / parts[-3] / parts[-2] / parts[-1]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
    done.write_text("")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--work", default="/tmp/lcrypt-owners")
    p.add_argument("--schemes", default="etc,pe,le")
    p.add_argument("--train-per-class", type=int, default=400)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    from lcrypt import Key
    from lcrypt.table import format_table
    from pipelines.prepare import run as prepare
    from training.train import run as train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    subset(Path(args.source), work / "src", {"train": args.train_per_class, "test": args.test_per_class})
    for k in OWNERS["four"]:
        if not (work / f"{k}.key").exists():
            Key.generate(k).save(work / f"{k}.key")
    for name, owners in OWNERS.items():
        body = {o: {"key": f"{o}.key", "match": m} for o, m in owners.items()}
        (work / f"{name}.json").write_text(json.dumps(body))
    results: dict[str, dict] = {}
    for scheme in args.schemes.split(","):
        for name in OWNERS:
            data = work / f"{scheme}-{name}"
            if not (data / "manifest.json").exists():
                rc = prepare(["--source", str(work / "src"), "--scheme", scheme, "--keys",
                              str(work / f"{name}.json"), "--out", str(data), "--quiet", "--overwrite"])
                if rc:
                    return rc
        runs = [("one key", "one", []), ("2 pooled", "two", ["--owners", "all"]),
                ("2 adapters", "two", ["--owner-adapters"]), ("4 pooled", "four", ["--owners", "all"]),
                ("4 adapters", "four", ["--owner-adapters"])]
        runs += [(f"{n} alone: {o}", n, ["--owners", o]) for n in ("two", "four") for o in OWNERS[n]]
        for label, name, flags in runs:
            run_name = f"{scheme}-{label.replace(' ', '-').replace(':', '')}"
            summary = work / "runs" / run_name / "summary.json"
            if not summary.exists():
                rc = train(["--data", str(work / f"{scheme}-{name}"), "--out", str(work / "runs"), "--name",
                            run_name, *recipe(epochs=args.epochs), *flags])
                if rc:
                    return rc
            s = json.loads(summary.read_text())
            results[f"{scheme}/{label}"] = {"top1": s["top1"], "images_per_s": s["images_per_s"],
                                            "train_s": s["train_s"], "steps": s["steps"]}
            (work / "owners.json").write_text(json.dumps(results, indent=1))
    rows = []
    for scheme in args.schemes.split(","):
        r = {k.split("/", 1)[1]: v for k, v in results.items() if k.startswith(scheme + "/")}
        for n, count in (("2", "two"), ("4", "four")):
            alone = [v["top1"] for k, v in r.items() if k.startswith(f"{count} alone")]
            if not alone:
                continue
            one, pooled, adapt = r["one key"], r[f"{n} pooled"], r[f"{n} adapters"]
            gap = one["top1"] - pooled["top1"]
            recovered = (adapt["top1"] - pooled["top1"]) / gap if abs(gap) >= 0.5 else None
            share = f"{recovered:.0%}" if recovered is not None else "-"
            speed = adapt["images_per_s"] / pooled["images_per_s"]
            rows.append([scheme, n, f"{one['top1']:.2f}", f"{pooled['top1']:.2f}", f"{adapt['top1']:.2f}",
                         f"{sum(alone) / len(alone):.2f}", share, round(one["images_per_s"]),
                         round(pooled["images_per_s"]), round(adapt["images_per_s"]), f"{speed:.2f}"])
    print(format_table(rows, ["scheme", "owners", "one key %", "pooled %", "adapters %", "alone % (mean)",
                              "gap recovered", "one img/s", "pooled img/s", "adapters img/s",
                              "adapters/pooled"]))
    print(f"{time.perf_counter() - t_all:.0f} s wall; {args.train_per_class * 10} training images, "
          f"{args.test_per_class * 10} test images, {args.epochs} epochs per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
