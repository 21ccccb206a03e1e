"""Benchmark `lcrypt prepare` end to end against the plain loop and the decode+encode floor, side by side.

    .venv/bin/python bench/bench_prepare.py                      # CIFAR-10 and Imagenette from ../shared
    .venv/bin/python bench/bench_prepare.py --datasets cifar10 --quick

Each prepare run is a fresh `python -m pipelines.prepare` process timed from outside, so Beam's
start-up is included. Modes: the default in-process engine (one core), `--direct_running_mode
multi_processing` with 1 and 2 workers, and `multi_threading` with 2. Sizes: bytes on disk per sample
next to the image payload, and plain vs EtC totals at JPEG q85 (the EtC paper's Table IV compares these).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baseline_loop import floor, plain_loop, read_members  # noqa: E402

from lcrypt import Key  # noqa: E402
from lcrypt.format import Manifest, decode_member, encode_image  # noqa: E402
from lcrypt.table import format_table  # noqa: E402
from lcrypt.tarstream import iter_members  # noqa: E402

DATASETS = {
    "cifar10": ("cifar10-jpeg.tar.gz", 8),
    "imagenette": ("imagenette-224.tar.gz", 16),
}
MODES = {
    "1 core (in-process)": [],
    "multi_processing x1": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "1"],
    "multi_processing x2": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
    "multi_threading x2": ["--direct_running_mode", "multi_threading", "--direct_num_workers", "2"],
}


def prepare(archive: Path, out: Path, key: Path, scheme: str, block: int, encoding: str,
            mode: list[str]) -> dict:
    argv = [sys.executable, "-m", "pipelines.prepare", "--source", str(archive), "--scheme", scheme, "--keys",
            str(key), "--out", str(out), "--quiet", "--shard-size", "5000", *mode]
    if scheme != "plain":
        argv += ["--param", f"block_size={block}"]
    argv += ["--jpeg-quality", "85"] if encoding == "jpeg" else ["--encoding", "png"]
    t = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    m = Manifest.load(out)
    n = sum(s.count for s in m.shards)
    disk = sum(s.bytes for s in m.shards)
    payload = 0
    for s in m.shards:
        with open(out / s.path, "rb") as f:
            payload += sum(len(d) for name, d in iter_members(f) if not name.endswith(".cls"))
    return {"wall": wall, "n": n, "disk": disk, "payload": payload}


def encoding_costs(members: list[tuple[str, bytes]], block: int) -> list[list]:
    """Per-image encode/decode rate and size of each member encoding, on EtC ciphertexts of real images."""
    import numpy as np
    import simplejpeg
    from PIL import Image

    from lcrypt import get_scheme

    imgs = np.stack([simplejpeg.decode_jpeg(d, colorspace="RGB") for _, d in members])
    enc = get_scheme("etc", block_size=block).encrypt(imgs, Key(bytes(range(32)), "bench"))

    def pil_png(im):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        return buf.getvalue()

    ways = {"png (lcrypt zlib writer)": ("png", lambda im: encode_image(im, "png")),
            "png (Pillow, default)": ("png", pil_png),
            "npy": ("npy", lambda im: encode_image(im, "npy")),
            "jpeg q85 (simplejpeg)": ("jpg", lambda im: encode_image(im, "jpeg", 85))}
    rows = []
    for label, (ext, fn) in ways.items():
        t = time.perf_counter()
        blobs = [fn(im) for im in enc]
        te = time.perf_counter() - t
        t = time.perf_counter()
        for b in blobs:
            decode_member(f"k.{ext}", b)
        td = time.perf_counter() - t
        size = sum(len(b) for b in blobs) / len(blobs)
        tar = sum(512 + len(b) + (-len(b) % 512) + 1024 for b in blobs) / len(blobs)
        rows.append([label, round(len(enc) / te), round(len(enc) / td), round(size), round(tar)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--datasets", default="cifar10,imagenette")
    ap.add_argument("--quick", action="store_true", help="skip multi_processing x1 and the lossless baseline")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--encodings-only", action="store_true",
                    help="only compare member encodings (5,000 CIFAR)")
    args = ap.parse_args()
    if args.encodings_only:
        members = read_members(str(Path(args.shared) / DATASETS["cifar10"][0]), 5000)
        print(format_table(encoding_costs(members, 8), ["encoding (EtC CIFAR-10 ciphertexts)", "encode/s",
                                                        "decode/s", "bytes", "tar bytes/sample incl. .cls"]))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Key(bytes(range(32)), "bench").save(tmp / "bench.key")
        for name in args.datasets.split(","):
            fname, block = DATASETS[name]
            archive = Path(args.shared) / fname
            members = read_members(str(archive))
            n = len(members)
            for enc in ("jpeg", "png"):
                f = floor(members, enc)
                results.append({"dataset": name, "what": f"floor: decode+encode ({enc})", "n": n, "wall": f})
            del members
            for enc in (("jpeg",) if args.quick else ("jpeg", "png")):
                d = tmp / f"loop-{name}-{enc}"
                d.mkdir()
                s, cnt, size = plain_loop(str(archive), str(d), "etc", {"block_size": block}, enc)
                results.append({"dataset": name, "what": f"plain loop + ShardWriter, EtC {enc}", "n": cnt,
                                "wall": s, "disk": size})
            for enc in ("jpeg", "png"):
                for mode, flags in MODES.items():
                    if args.quick and mode == "multi_processing x1":
                        continue
                    r = prepare(archive, tmp / f"p-{name}-{enc}-{len(results)}", tmp / "bench.key", "etc",
                                block, enc, flags)
                    results.append({"dataset": name, "what": f"prepare EtC {enc}, {mode}", **r})
                    print(name, enc, mode, f"{r['n'] / r['wall']:,.0f} images/s", os.getloadavg(), flush=True)
            r = prepare(archive, tmp / f"p-{name}-plain", tmp / "bench.key", "plain", block, "jpeg", [])
            results.append({"dataset": name, "what": "prepare plain jpeg, 1 core (in-process)", **r})
    rows = []
    for r in results:
        rows.append([r["dataset"], r["what"], r["n"], round(r["wall"], 2), round(r["n"] / r["wall"]),
                     round(r["disk"] / r["n"]) if r.get("disk") else "",
                     round(r["payload"] / r["n"]) if r.get("payload") else ""])
    print(format_table(rows, ["dataset", "run", "images", "wall s", "images/s", "disk B/sample",
                              "payload B/sample"]))
    print()

    def rate(ds, what):
        r = next((r for r in results if r["dataset"] == ds and r["what"] == what), None)
        return r["n"] / r["wall"] if r else float("nan")

    ratio_rows = []
    for ds in args.datasets.split(","):
        for enc in ("jpeg", "png"):
            one = rate(ds, f"prepare EtC {enc}, 1 core (in-process)")
            loop = rate(ds, f"plain loop + ShardWriter, EtC {enc}")
            floor_rate = rate(ds, f"floor: decode+encode ({enc})")
            ratio_rows.append([ds, enc, round(one / loop, 2), round(floor_rate / loop, 2),
                               round(rate(ds, f"prepare EtC {enc}, multi_processing x2") /
                                     rate(ds, f"prepare EtC {enc}, multi_processing x1"), 2),
                               round(rate(ds, f"prepare EtC {enc}, multi_processing x2") / one, 2),
                               round(rate(ds, f"prepare EtC {enc}, multi_threading x2") / one, 2)])
    # "floor / plain loop" bounds "1 core / plain loop": no pipeline on one core beats decode + encode alone
    print(format_table(ratio_rows, ["dataset", "encoding", "1 core / plain loop", "floor / plain loop",
                                    "mp x2 / mp x1", "mp x2 / 1 core", "threads x2 / 1 core"]))
    sizes = []
    for ds in args.datasets.split(","):
        for what in ("prepare plain jpeg, 1 core (in-process)", "prepare EtC jpeg, 1 core (in-process)"):
            r = next(r for r in results if r["dataset"] == ds and r["what"] == what)
            sizes.append([ds, what.split(",")[0].replace("prepare ", ""), r["n"],
                          round(r["payload"] / 1e6, 1), round(r["disk"] / 1e6, 1)])
    print()
    print(format_table(sizes, ["dataset", "output (q85)", "images", "JPEG payload MB", "shards on disk MB"]))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
