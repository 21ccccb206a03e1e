"""Loader throughput: images/s of one worker over CIFAR-10 JPEG and PNG shards vs an in-memory array.

    python bench/bench_loader.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--limit 20000]

Makes (once, with the real `prepare` pipeline) plain CIFAR-10 as lossless PNG shards and as JPEG
(quality 90, 4:4:4) shards, then times, in one process (= one DataLoader worker's work):

* ``array``    batches sliced from an in-memory uint8 numpy array (the floor: no I/O, no decoding);
* ``samples``  the loader's shard reader alone (lcrypt.format.read_samples: tar -> checked samples);
* ``tar dicts`` the general streaming reader (lcrypt.tarstream.iter_members grouped by
  lcrypt.format.group_members: one dict per sample);
* ``loader``   the full ShardDataset stage chain (read, member check, shuffle buffer, batch decode);
* ``dict path`` the same stages one sample at a time (streaming reader dicts, the sample rule, one rng
  draw per sample, one decode_member per image, np.stack): the side-by-side baseline;
* ``2 workers`` the loader through torch's DataLoader with 2 worker processes (total, both cores).

Target from the issue: >= 20,000 img/s per core for 32x32 JPEG. Each figure is the best of 3 runs
(loader and dict path: best of 5, run alternately); the machine is shared, so compare columns of one
run (ratios), not runs.
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


def timed_side_by_side(*fns, repeat: int = 5) -> list[float]:
    """Items/s (best of ``repeat``) of each function, run alternately so that load from other
    processes on a shared machine hits all of them alike and their ratio stays meaningful."""
    best = [float("inf")] * len(fns)
    counts = [0] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            counts[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [n / b for n, b in zip(counts, best)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--work", default="/tmp/lcrypt-bench-loader")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    import torch

    from lcrypt import Key
    from lcrypt.format import Manifest, decode_shard, group_members, read_samples
    from lcrypt.storage import storage_for
    from lcrypt.table import format_table
    from lcrypt.tarstream import iter_members
    from loaders.dataset import resolve_shard
    from loaders.torch_dataset import make_loader
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
            assert prepare(["--source", args.source, "--scheme", "plain", "--keys", str(key),
                            "--out", str(data), "--quiet", "--overwrite", *extra]) == 0
        m = Manifest.load(data)
        split = "test"  # 10,000 images in 2 shards; the same code path as train
        n = m.num_samples(split)
        urls = [resolve_shard(str(data), e.path) for e in m.shards_for(split)]
        blobs = [storage_for(url).read_bytes(url) for url in urls]
        arr = np.stack([img for e in m.shards_for(split) for _, img, _ in decode_shard(data / e.path)])
        labels = np.zeros(len(arr), dtype=np.int64)

        def from_array():
            perm = np.random.default_rng(0).permutation(len(arr))
            k = 0
            for s in range(0, len(arr) - args.batch + 1, args.batch):
                idx = perm[s:s + args.batch]
                b = {"image": torch.from_numpy(arr[idx]), "label": torch.from_numpy(labels[idx])}
                k += len(b["label"])
            return k

        def samples():
            return sum(1 for blob in blobs for _ in read_samples(blob))

        def tar_dicts():
            return sum(1 for blob in blobs for _ in group_members(iter_members(io.BytesIO(blob)), ""))

        def loader(workers: int):
            def go():
                dl, ds = make_loader(data, split, args.batch, num_workers=workers, buffer=1000)
                return sum(len(b["label"]) for b in dl)
            return go

        def dict_path():
            return sum(len(b["label"]) for b in dict_path_batches(blobs, args.batch, buffer=1000))

        r_arr, r_rec, r_tar = timed(from_array), timed(samples), timed(tar_dicts)
        r_load, r_dict = timed_side_by_side(loader(0), dict_path)
        r_two = timed(loader(2), repeat=2)
        mb = sum(len(b) for b in blobs) / n
        rows.append([enc, n, f"{mb:,.0f}", round(r_arr), round(r_rec), round(r_tar), round(r_load),
                     round(r_dict), f"{r_load / r_dict:.2f}", round(r_two), f"{r_load / r_arr:.3f}"])
    print(format_table(rows, ["shards", "images", "bytes/img", "array img/s", "samples img/s",
                              "tar dicts img/s", "loader 1 proc img/s", "dict path 1 proc img/s",
                              "loader / dict path", "loader 2 workers img/s", "loader / array"]))
    return 0


def dict_path_batches(blobs, batch: int, buffer: int, seed: int = 0):
    """Batches made one sample at a time (the baseline column).

    Per sample: a dict from the streaming reader, the sample rule (make_sample), one ``rng.integers``
    call in the shuffle buffer, one decode_member (JPEG: header read + allocation) and label parse; per
    batch: np.stack and torch.tensor over a Python list of labels.
    """
    import torch

    from lcrypt.format import decode_label, decode_member, group_members, make_sample
    from lcrypt.tarstream import iter_members
    from loaders.dataset import shuffle_buffer

    def samples():
        for blob in blobs:
            for key, parts in group_members(iter_members(io.BytesIO(blob)), ""):
                yield make_sample(key, parts)

    def decode(sample) -> tuple[np.ndarray, int]:
        key, label, ext, data, _ = sample
        return decode_member(f"{key}.{ext}", data), decode_label(label)

    chunk: list = []
    for sample in shuffle_buffer(samples(), buffer, np.random.default_rng(seed)):
        chunk.append(sample)
        if len(chunk) == batch:
            images, labels = zip(*(decode(s) for s in chunk))
            yield {"image": torch.from_numpy(np.stack(images)),
                   "label": torch.tensor(labels, dtype=torch.int64),
                   "key": [s[0] for s in chunk]}
            chunk = []


if __name__ == "__main__":
    sys.exit(main())
