"""How much a ciphertext-only attack's score depends on the owner's key: the same images, several keys.

    .venv/bin/python bench/attack_key_spread.py --keys 5 --images 30

`lcrypt evaluate` draws one fresh key per run, so its FR figures are one sample. Greedy FR (Chang &
Case) is scored without an oracle for the one global sign/colour order it cannot resolve, so whether
that order comes out right depends on the key; this prints the median SSIM per key for FR and greedy
FR on `pe`, on the first ``--images`` test/val images of ../shared's CIFAR-10 and Imagenette.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lcrypt import Key, get_scheme
from lcrypt.attacks.fr import fr_attack, fr_greedy_attack
from lcrypt.sources import load_arrays
from lcrypt.metrics import ssim
from lcrypt.table import format_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {"cifar10": ("cifar10-jpeg.tar.gz", "test"), "imagenette": ("imagenette-224.tar.gz", "val")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--images", type=int, default=30)
    args = p.parse_args()
    scheme = get_scheme("pe")
    rows = []
    for name, (archive, split) in SETS.items():
        plain = load_arrays(str(args.data / archive), split, limit=args.images)[0]
        per_key = {"fr": [], "fr-greedy": []}
        for k in range(args.keys):
            cipher = scheme.encrypt(plain, Key.generate(f"spread-{k}"))
            per_key["fr"].append(float(np.median(ssim(fr_attack(cipher), plain))))
            greedy = fr_greedy_attack(cipher, 1, color_shuffle=True)
            per_key["fr-greedy"].append(float(np.median(ssim(greedy, plain))))
        for attack, scores in per_key.items():
            rows.append([name, "pe", attack, len(plain), " ".join(f"{s:.2f}" for s in scores),
                         round(min(scores), 2), round(max(scores), 2)])
    print(format_table(rows, ["dataset", "scheme", "attack", "images", "median SSIM per key", "min", "max"]))


if __name__ == "__main__":
    main()
