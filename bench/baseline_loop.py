"""The baseline `prepare` is measured against: a plain single-process Python loop.

It does the same work the pipeline does — stream the archive, decode each JPEG, encrypt it, encode it,
write WebDataset shards — the obvious way: one image at a time, tarfile to read, webdataset's
ShardWriter to write. ``floor`` is decode + encode alone (no encryption, no tar), the least any
preparation of these images can cost on one core.

    python bench/baseline_loop.py ../shared/datasets/cifar10-jpeg.tar.gz --encoding jpeg --limit 20000
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time


def read_members(path: str, limit: int | None = None) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(path, "r|*") as tf:
        for info in tf:
            if info.isreg() and info.name.lower().endswith((".jpg", ".jpeg", ".png")):
                out.append((info.name, tf.extractfile(info).read()))
                if limit and len(out) >= limit:
                    break
    return out


def floor(members: list[tuple[str, bytes]], encoding: str, quality: int = 85) -> float:
    """Seconds to decode and re-encode every image (simplejpeg; zlib PNG for lossless), nothing else."""
    import simplejpeg

    from lcrypt.format import encode_png

    t = time.perf_counter()
    for _, data in members:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        if encoding == "jpeg":
            simplejpeg.encode_jpeg(img, quality=quality, colorspace="RGB", colorsubsampling="444")
        else:
            encode_png(img)
    return time.perf_counter() - t


def plain_loop(archive: str, out_dir: str, scheme_name: str, params: dict, encoding: str, quality: int = 85,
               limit: int | None = None, shard_size: int = 5000) -> tuple[float, int, int]:
    """Stream -> decode -> encrypt -> encode -> ShardWriter, one image at a time. Returns (s, n, bytes)."""
    import simplejpeg
    import webdataset as wds
    from PIL import Image

    from lcrypt import Key, get_scheme

    key = Key(bytes(range(32)), "bench")
    scheme = get_scheme(scheme_name, **params)
    classes: dict[str, int] = {}
    t = time.perf_counter()
    n = 0
    pattern = os.path.join(out_dir, "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink, tarfile.open(archive, "r|*") as tf:
        for info in tf:
            if not info.isreg() or not info.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            img = simplejpeg.decode_jpeg(tf.extractfile(info).read(), colorspace="RGB")
            enc = scheme.encrypt(img[None], key)[0]
            label = classes.setdefault(info.name.split("/")[-2], len(classes))
            if encoding == "jpeg":
                jpg = simplejpeg.encode_jpeg(enc, quality=quality, colorspace="RGB", colorsubsampling="444")
                sample = {"__key__": f"{n:08d}", "jpg": jpg, "cls": label}
            else:
                buf = io.BytesIO()
                Image.fromarray(enc).save(buf, format="PNG")
                sample = {"__key__": f"{n:08d}", "png": buf.getvalue(), "cls": label}
            sink.write(sample)
            n += 1
            if limit and n >= limit:
                break
    seconds = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    return seconds, n, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archive")
    ap.add_argument("--encoding", choices=("jpeg", "png"), default="jpeg")
    ap.add_argument("--scheme", default="etc")
    ap.add_argument("--block-size", type=int, default=8)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        s, n, size = plain_loop(args.archive, d, args.scheme, {"block_size": args.block_size}, args.encoding,
                                limit=args.limit)
    members = read_members(args.archive, args.limit)
    f = floor(members, args.encoding)
    print(f"plain loop: {n} images in {s:.1f} s = {n / s:,.0f} images/s, "
          f"{size / n:,.0f} bytes on disk per sample")
    print(f"floor (decode + encode only): {len(members) / f:,.0f} images/s")


if __name__ == "__main__":
    main()
