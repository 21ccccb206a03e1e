"""`python -m pipelines.demo --out build/demo`: the main job end to end on a fresh machine, no downloads.

1. Make a small labelled ImageFolder set from the sample photos scikit-image ships inside its wheel
   (astronaut, chelsea the cat, coffee, rocket, hubble, retina): each photo is a class, its images are
   random 64x64 crops at random scales, saved as lossless PNG in train/ and test/. Two deliberately
   broken files (a truncated PNG, a text file) show the dead-letter path.
2. Generate two owners' keys (a pooled dataset is the normal case): hospital-a owns two classes,
   hospital-b the rest.
3. Run `prepare` (EtC, block 16, lossless PNG) on the Python DirectRunner, then `verify`.
4. Decrypt every shard with its owner's key and check it equals the source pixels bit for bit.
5. Write a preview grid of plain vs encrypted samples under every scheme, and end with a summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from lcrypt.format import Manifest

CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina")
MARKER = ".lcrypt-demo"


def synthetic_photos(size: int = 256) -> dict[str, np.ndarray]:
    """Fallback without scikit-image: per class a canvas of one kind of drawn shape (circles, boxes,
    triangles, stripes...); the class folders keep the photo names so the rest of the demo is unchanged."""
    from PIL import ImageDraw

    rng = np.random.default_rng(1)
    photos = {}
    for cls in CLASSES:
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        kind = CLASSES.index(cls)
        for _ in range(40):
            x, y = (int(v) for v in rng.integers(0, size, 2))
            r = int(rng.integers(6, 30))
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if kind == 0:
                d.ellipse([x - r, y - r, x + r, y + r], fill=color)
            elif kind == 1:
                d.rectangle([x - r, y - r, x + r, y + r], fill=color)
            elif kind == 2:
                d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=color)
            elif kind == 3:
                d.line([(x - 3 * r, y), (x + 3 * r, y)], fill=color, width=max(2, r // 3))
            elif kind == 4:
                d.line([(x, y - 3 * r), (x, y + 3 * r)], fill=color, width=max(2, r // 3))
            else:
                d.ellipse([x - r, y - r, x + r, y + r], outline=color, width=3)
        photos[cls] = np.asarray(im)
    return photos


def sample_photos() -> dict[str, np.ndarray]:
    """The RGB photos bundled with scikit-image (read from its package folder, never downloaded);
    drawn shapes when scikit-image is not installed."""
    try:
        import skimage.data
    except ImportError:
        return synthetic_photos()
    folder = Path(skimage.data.__file__).parent
    photos = {}
    for name in CLASSES:
        path = next(folder.glob(f"{name}.*"))
        photos[name] = np.asarray(Image.open(path).convert("RGB"))
    return photos


def random_crops(photo: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` crops of random side (1/4..1/2 of the short side) at random places, resized to ``size``."""
    h, w = photo.shape[:2]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        crop = photo[y:y + side, x:x + side]
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    return out


def make_source(root: Path, per_class: dict[str, int], size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """ImageFolder tree ``root/{split}/{class}/{i}.png``; returns {relative path: pixels}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for cls, photo in sample_photos().items():
        for split, n in per_class.items():
            for i, img in enumerate(random_crops(photo, n, size, rng)):
                rel = f"{split}/{cls}/{cls}_{i:03d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                truth[rel] = img
    good = (root / "train/rocket/rocket_000.png").read_bytes()
    (root / "train/rocket/scan_truncated.png").write_bytes(good[: len(good) // 3])
    (root / "train/coffee/notes.txt").write_text("not an image: lands in errors.jsonl with its reason\n")
    return truth


def next_steps(m: Manifest, dataset: Path, runs: Path) -> list[str]:
    """The demo's last lines: training on the dataset without the keys, with the commands lcrypt.usage
    generates from its manifest (the ones the README and a release's card print)."""
    from lcrypt.usage import lcrypt_train_command, timm_command

    return ["", f"next: train on it without the keys (each run in its own folder under {runs}):",
            f"  {lcrypt_train_command(m, str(dataset), str(runs))}",
            "  or with timm's train.py (from a timm checkout; these flags keep the stored pixels):",
            f"  {timm_command(m, str(dataset), output=str(runs))}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/demo", help="demo folder (recreated; default build/demo)")
    ap.add_argument("--size", type=int, default=64, help="image side, a multiple of 16 (default 64)")
    ap.add_argument("--train", type=int, default=40, help="train images per class (default 40)")
    ap.add_argument("--test", type=int, default=10, help="test images per class (default 10)")
    args, beam_args = ap.parse_known_args(argv)

    from lcrypt import Key, get_scheme, list_schemes
    from lcrypt.format import Manifest, decode_shard, sample_key, sample_key_salt
    from lcrypt.table import format_table
    from lcrypt.verify import verify
    from pipelines.prepare import run as prepare

    out = Path(args.out)
    if out.exists():
        if not (out / MARKER).exists():
            print(f"demo: {out} exists and was not made by the demo; choose another --out", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by python -m pipelines.demo; safe to delete\n")
    t0 = time.perf_counter()

    print(f"[1/5] making a labelled image set from scikit-image's bundled photos in {out / 'source'}")
    truth = make_source(out / "source", {"train": args.train, "test": args.test}, args.size)

    print("[2/5] generating two owners' keys (kept apart from the dataset: never publish keys/)")
    keys = {name: Key.generate(name) for name in ("hospital-a", "hospital-b")}
    (out / "keys").mkdir()
    for name, key in keys.items():
        key.save(out / "keys" / f"{name}.key")
    owners = {"hospital-a": {"key": "hospital-a.key", "match": ["*/astronaut/*", "*/chelsea/*"]},
              "hospital-b": {"key": "hospital-b.key",
                             "match": ["*/coffee/*", "*/rocket/*", "*/hubble_deep_field/*", "*/retina/*"]}}
    (out / "keys" / "owners.json").write_text(json.dumps(owners, indent=1) + "\n")

    print("[3/5] lcrypt prepare (Apache Beam, Python DirectRunner): EtC block 16, lossless PNG shards")
    dataset = out / "encrypted"
    rc = prepare(["--source", str(out / "source"), "--scheme", "etc", "--param", "block_size=16",
                  "--keys", str(out / "keys" / "owners.json"), "--out", str(dataset), "--shard-size", "100",
                  "--max-reject-rate", "0.05", "--name", "lcrypt-demo", *beam_args])
    if rc != 0:
        return rc

    print(f"[4/5] lcrypt verify {dataset} and decrypting every shard with its owner's key")
    problems, totals = verify(dataset, decode=True)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    m = Manifest.load(dataset)
    scheme = get_scheme(m.scheme, **m.scheme_params)
    by_key = {}
    for rel, img in truth.items():
        owner = "hospital-a" if rel.split("/")[1] in ("astronaut", "chelsea") else "hospital-b"
        by_key[sample_key(rel, sample_key_salt(keys[owner]))] = img
    exact = total = 0
    cipher_samples = []
    for entry in m.shards:
        for key, image, _ in decode_shard(dataset / entry.path):
            total += 1
            exact += bool(np.array_equal(scheme.decrypt(image[None], keys[entry.owner])[0], by_key[key]))
            if len(cipher_samples) < 2:
                cipher_samples.append(image)

    print("[5/5] preview grid: plain vs every scheme (what a person sees; a network still learns)")
    picks = np.stack([truth[f"test/{c}/{c}_000.png"] for c in CLASSES])
    from lcrypt.preview import preview_grid, save_png

    grid = preview_grid(picks, keys["hospital-a"], [s for s in list_schemes() if s != "plain"])
    preview = save_png(grid, out / "preview.png")

    errors = (dataset / "errors.jsonl").read_text().splitlines()
    owner_summary = ", ".join(f"{o.name} ({sum(o.counts.values())} images, key {o.key_id})" for o in m.owners)
    rows = [["source images (+ broken files)", f"{len(truth)} (+2)"],
            ["owners", owner_summary],
            ["shards", f"{len(m.shards)} in {', '.join(m.splits)} ({totals['bytes']:,} bytes)"],
            ["rejected (errors.jsonl)", "; ".join(json.loads(e)["reason"] for e in errors) or "none"],
            ["verify", "OK" if not problems else f"{len(problems)} problem(s)"],
            ["decrypts to source, bit for bit", f"{exact} of {total}"],
            ["preview grid", str(preview)],
            ["wall time", f"{time.perf_counter() - t0:.1f} s"]]
    print()
    print(format_table(rows, ["demo", "result"]))
    print("\n".join(next_steps(m, dataset, out / "runs")))
    return 0 if not problems and exact == total == len(truth) else 1


if __name__ == "__main__":
    sys.exit(main())
