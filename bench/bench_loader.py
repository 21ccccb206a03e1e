"""Loader throughput: images/s of one worker over CIFAR-10 JPEG and PNG shards vs an in-memory array.

    python bench/bench_loader.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--limit 20000]

Makes (once, with the real `prepare` pipeline) plain CIFAR-10 as lossless PNG shards and as JPEG
(quality 90, 4:4:4) shards, then times, in one process (= one DataLoader worker's work):

* ``array``    batches sliced from an in-memory uint8 numpy array (the floor: no I/O, no decoding);
* ``tar only`` the shard reader alone (lcrypt.shards.iter_samples: tar members -> samples);
* ``loader``   the full ShardDataset stage chain (read, member check, shuffle buffer, safe decode, batch);
* ``2 workers`` the same through torch's DataLoader with 2 worker processes (total, both cores).

Target from the issue: >= 20,000 img/s per core for 32x32 JPEG.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--work", default="/tmp/lcrypt-bench-loader")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    import torch

    from lcrypt import Key, shards
    from lcrypt.manifest import Manifest
    from lcrypt.table import format_table
    from loaders.dataset import make_loader, open_bytes, resolve_shard
    from pipelines.prepare import run as prepare

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    key = work / "owner.key"
    if not key.exists():
        Key.generate("owner").save(key)
    variants = {"png": [], "jpeg": ["--jpeg-quality", "90"]}
    rows = []
    for enc, extra in variants.items():
        data = work / enc
        if not (data / "manifest.json").exists():
            assert prepare(["--source", args.source, "--scheme", "plain", "--keys", str(key), "--out", str(data),
                            "--quiet", "--overwrite", *extra]) == 0
        m = Manifest.load(data)
        split = "test"  # 10,000 images in 2 shards; the same code path as train
        n = m.num_samples(split)
        blobs = [open_bytes(resolve_shard(str(data), e.path)) for e in m.shards_for(split)]
        arr = np.stack([img for e in m.shards_for(split) for _, img, _ in shards.read_shard(data / e.path)])
        labels = np.zeros(len(arr), dtype=np.int64)

        def from_array():
            perm = np.random.default_rng(0).permutation(len(arr))
            k = 0
            for s in range(0, len(arr) - args.batch + 1, args.batch):
                idx = perm[s:s + args.batch]
                b = {"image": torch.from_numpy(arr[idx]), "label": torch.from_numpy(labels[idx])}
                k += len(b["label"])
            return k

        def tar_only():
            return sum(1 for blob in blobs for _ in shards.iter_samples(io.BytesIO(blob)))

        def loader(workers: int):
            def go():
                dl, ds = make_loader(data, split, args.batch, num_workers=workers, buffer=1000)
                return sum(len(b["label"]) for b in dl)
            return go

        r_arr, r_tar, r_load = timed(from_array), timed(tar_only), timed(loader(0))
        r_two = timed(loader(2), repeat=2)
        mb = sum(len(b) for b in blobs) / n
        rows.append([enc, n, f"{mb:,.0f}", round(r_arr), round(r_tar), round(r_load), round(r_two),
                     f"{r_load / r_arr:.3f}"])
    print(format_table(rows, ["shards", "images", "bytes/img", "array img/s", "tar only img/s",
                              "loader 1 proc img/s", "loader 2 workers img/s", "loader / array"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
