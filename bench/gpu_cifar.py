"""GPU runs of the papers' CIFAR-10 rows: loader vs step time, then fixed-budget training per scheme.

    python bench/gpu_cifar.py --source data/cifar10-jpeg.tar.gz --work /tmp/lc --out OUT \
        --runs plain:convmixer,etc:convmixer --budget-s 180 [--throughput]

1. Datasets. The lent GPU machine has no Apache Beam, so this script writes the shards itself with
   lcrypt's own format (:class:`lcrypt.format.ShardWriter`, the writer `lcrypt prepare` uses, and
   :class:`lcrypt.format.Manifest`) — the same files `lcrypt prepare` writes (PNG, one key, 10 shards
   per split), made from ``lcrypt.sources.load_arrays`` and ``scheme.encrypt`` in a process pool. The
   time to make them is reported apart and is not part of any training wall time.
2. ``--throughput``: one ConvMixer-256/8 (patch 1, kernel 9) training step (AdamW, batch 512) timed with
   CUDA events in bf16 (and fp32 with ``--fp32-variants``), channels_last / contiguous, PyTorch's
   depthwise kernels, FFT products (``--depthwise fft``) or the Triton kernel (``--depthwise triton``);
   the fastest is used for the runs. Beside it the GPU-resident loader's time per batch (index +
   normalise + encrypted-domain augmentation): the loader must be < 2% of a step.
3. Each run ``SCHEME:MODEL[:ADAPT]`` launches ``python -m training.train --gpu-resident`` with a number
   of epochs chosen from the measured (or ``--img-per-s``) throughput to fit ``--budget-s`` seconds;
   its summary.json (top-1, images/s, wall) is copied to OUT and a table printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARDS_PER_SPLIT = 10
_STATE: dict = {}


def _write_shard(i: int):
    from lcrypt.format import ShardWriter
    from lcrypt.storage import atomic_write

    s = _STATE
    writer = ShardWriter("png")
    samples = [(s["keys"][j], int(s["labels"][j]), writer.encode(s["images"][j]))
               for j in np.nonzero(s["assign"] == i)[0]]
    data, entry = writer.shard(s["split"], "owner", i, samples)
    atomic_write(Path(s["out"]) / entry.path, data)
    return entry


def build_dataset(arrays: dict, scheme_name: str, params: dict, out: Path, key) -> float:
    """Encrypt every split with ``key`` and write lcrypt shards + manifest; returns seconds."""
    from lcrypt import get_scheme
    from lcrypt.format import Manifest, OwnerEntry, sample_key, sample_key_salt, shard_of, shard_path

    t0 = time.perf_counter()
    scheme = get_scheme(scheme_name, **params)
    salt = sample_key_salt(key)
    entries, counts, rows = [], {}, []
    for split, (images, labels, names) in arrays.items():
        enc = scheme.encrypt(images, key)
        keys = [sample_key(f"{split}/{i}", salt) for i in range(len(images))]
        order = np.argsort(keys)
        _STATE.update(images=enc[order], labels=labels[order], keys=[keys[i] for i in order], split=split,
                      out=str(out), assign=np.array([shard_of(keys[i], SHARDS_PER_SPLIT) for i in order]))
        with get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
            entries += pool.map(_write_shard, range(SHARDS_PER_SPLIT))
        counts[split] = len(images)
        rows += [{"key": k, "shard": shard_path(split, "owner", int(a)), "label": int(label),
                  "owner": "owner", "split": split}
                 for k, a, label in zip(_STATE["keys"], _STATE["assign"], _STATE["labels"])]
    h, w = next(iter(arrays.values()))[0].shape[1:3]
    m = Manifest(name=f"cifar10-{scheme_name}", scheme=scheme.info.name, scheme_params=dict(scheme.params),
                 owners=[OwnerEntry("owner", key.key_id, counts)], class_names=list(names),
                 image_shape=[int(h), int(w), 3], encoding="png", shards=entries,
                 scheme_info=scheme.info.as_dict(h, w),
                 source={"format": "imagefolder-tar", "by": "bench/gpu_cifar.py"})
    m.save(out, index=rows)
    return time.perf_counter() - t0


def throughput(manifest: Path, batch: int = 512, fp32: bool = False) -> dict:
    """ConvMixer-256/8 p1 k9 step time per variant (precision, layout, depthwise) and loader time per
    batch."""
    import torch

    from lcrypt.format import Manifest
    from loaders.augment import AugmentConfig, EncryptedAugment, normalize
    from loaders.gpu import GPUResident
    from training.models import create_model

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    m = Manifest.load(manifest)
    data = GPUResident.from_manifest(manifest, "train", batch, device=dev)
    aug = EncryptedAugment(m.scheme_info, 10, AugmentConfig(translate=4, mixup=0.8, cutmix=1.0,
                                                            label_smoothing=0.1))
    gen = torch.Generator(device=dev)

    def loader_ms(n=200) -> float:
        it = iter(data)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(10):
            b = next(it)
            aug(normalize(b["image"], True), b["label"], gen)
        torch.cuda.synchronize()
        start.record()
        k = 0
        for _ in range(n):
            try:
                b = next(it)
            except StopIteration:
                it = iter(data)
                b = next(it)
            gen.manual_seed(k)
            x, y = aug(normalize(b["image"], True), b["label"], gen)
            k += 1
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / n

    def step_ms(amp: bool, channels_last: bool, depthwise: str = "direct", n=20) -> float:
        model = create_model("convmixer", 10, 32, width=256, depth=8, patch=1, kernel=9,
                             depthwise=depthwise).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = normalize(data.images[:batch], channels_last)
        y = torch.nn.functional.one_hot(data.labels[:batch], 10).float()

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / n)
        return float(np.median(times))

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    lm = loader_ms()
    variants, failed = {}, {}
    # fp32 never won (docs/benchmarks.md): opt-in, saves device time
    for amp in (True, False) if fp32 else (True,):
        for cl, depthwise in ((True, "direct"), (False, "direct"), (False, "fft"), (True, "triton"),
                              (False, "triton")):
            name = f"{'bf16' if amp else 'fp32'}-{'channels_last' if cl else 'contiguous'}-{depthwise}"
            try:
                variants[name] = step_ms(amp, cl, depthwise)
            except Exception as exc:  # a kernel that does not build here must not cost the runs
                failed[name] = repr(exc)[:500]
                print(f"  step {name}: FAILED {failed[name]}", flush=True)
                continue
            print(f"  step {name}: {variants[name]:.1f} ms", flush=True)
    best = min(variants, key=variants.get)
    step = variants[best]
    return {"batch": batch, "loader_ms": lm, "step_ms": variants, "failed": failed, "best": best,
            "img_per_s_best": batch / step * 1e3, "loader_pct_of_best_step": 100 * lm / step,
            "device": torch.cuda.get_device_name(0)}


RECIPES = {  # per model: the training flags (batch per GPU 512; ConvMixer paper's AdamW + triangular)
    "convmixer": ["--model", "convmixer", "--width", "256", "--depth", "8", "--patch", "1", "--kernel", "9",
                  "--opt", "adamw", "--lr", "0.01", "--weight-decay", "0.01", "--sched", "triangular",
                  "--clip-grad", "1.0", "--batch-size", "512", "--mixup", "0.8", "--cutmix", "1.0"],
    "resnet18": ["--model", "resnet18", "--opt", "sgd", "--lr", "0.2", "--weight-decay", "5e-4",
                 "--sched", "cosine", "--warmup-epochs", "1", "--batch-size", "512"],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--source", default="data/cifar10-jpeg.tar.gz")
    p.add_argument("--work", default="/tmp/lc")
    p.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"))
    p.add_argument("--runs", default="plain:convmixer")
    p.add_argument("--budget-s", type=float, default=180,
                   help="training seconds per run (epochs chosen to fit)")
    p.add_argument("--img-per-s", type=str, default="",
                   help="model=img/s throughput to plan epochs, e.g. convmixer=15000")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--fp32-variants", action="store_true",
                   help="--throughput also times float32 (TF32) steps")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--train-flags", default="", help="extra training.train flags when not measuring")
    p.add_argument("--limit", type=int,
                   help="first N images per split, in archive (class) order: a local smoke "
                   "test of the plumbing only, its accuracy means nothing")
    args = p.parse_args(argv)
    from lcrypt import Key
    from lcrypt.sources import load_arrays

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    arrays = {s: load_arrays(args.source, s, limit=args.limit) for s in ("train", "test")}
    n_source = sum(len(a[0]) for a in arrays.values())
    print(f"decoded {n_source} source images in {time.perf_counter() - t0:.1f} s", flush=True)
    key = Key.generate("owner")
    runs = [r.split(":") for r in args.runs.split(",") if r]
    params = {"etc": {"block_size": 16}, "le": {"block_size": 4}}
    made = {}
    for scheme in dict.fromkeys(r[0] for r in runs):
        d = work / scheme
        shutil.rmtree(d, ignore_errors=True)
        made[scheme] = build_dataset(arrays, scheme, params.get(scheme, {}), d, key)
        print(f"shards for {scheme}: {made[scheme]:.1f} s", flush=True)
    rates = {k: float(v) for k, v in (kv.split("=") for kv in args.img_per_s.split(",") if kv)}
    results = []
    if args.throughput:
        tp = throughput(work / runs[0][0] / "manifest.json", fp32=args.fp32_variants)
        (out / "throughput.json").write_text(json.dumps(tp, indent=1))
        print(json.dumps(tp, indent=1), flush=True)
        rates.setdefault("convmixer", tp["img_per_s_best"])
        best = tp["best"]
        prec, layout, depthwise = best.split("-")
        extra = (["--no-amp"] if prec == "fp32" else []) + (
            ["--memory-format", "contiguous"] if layout == "contiguous" else []) + ["--depthwise", depthwise]
    else:
        extra = [f for f in args.train_flags.split() if f]
    for run in runs:
        scheme, model = run[0], run[1]
        adapt = run[2] if len(run) > 2 else "none"
        rate = rates.get(model, 20000.0)
        epochs = max(1, int(args.budget_s * rate / 50000))
        name = f"{scheme}-{model}-{adapt}"
        shutil.rmtree(work / "runs" / name, ignore_errors=True)  # this bench's own earlier run: afresh
        cmd = [sys.executable, "-m", "training.train", "--data", str(work / scheme / "manifest.json"),
               "--out", str(work / "runs"), "--name", name, "--gpu-resident", "--epochs", str(epochs),
               "--adapt", adapt, "--quiet", *RECIPES[model], *(["--compile"] if args.compile else []), *extra]
        t1 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t1
        (out / f"{name}.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:], flush=True)
            results.append([scheme, model, adapt, epochs, "FAILED", "-", round(wall, 1)])
            continue
        summ = json.loads((work / "runs" / name / "summary.json").read_text())
        summ["launch_wall_s"] = wall
        summ["command"] = " ".join(cmd[1:])
        (out / f"{name}.json").write_text(json.dumps(summ, indent=1))
        shutil.copy(work / "runs" / name / "metrics.jsonl", out / f"{name}.metrics.jsonl")
        results.append([scheme, model, adapt, epochs, round(summ["top1"], 2), round(summ["images_per_s"]),
                        round(wall, 1)])
        print(results[-1], flush=True)
    from lcrypt.table import format_table

    print(format_table(results, ["scheme", "model", "adapt", "epochs", "top-1 %", "train img/s",
                                 "launch wall s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
