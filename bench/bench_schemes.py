"""Encryption throughput of every scheme vs the memory-bandwidth floor (``np.copyto``), side by side.

    python bench/bench_schemes.py [--repeat 5]

Batches: 10,000 CIFAR-size (32x32) and 500 Imagenette-size (224x224) random RGB images. Each scheme's
per-(key, shape) plan is built once before timing (a dataset shares it); the figure is the best of
``--repeat`` runs. Targets (issue 2): byte-wise schemes within 10x of the copy, `ahmad-diffusion` and
`catmap` within 40x.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from lcrypt import Key, get_scheme, list_schemes
from lcrypt.table import format_table

SLOW_SCHEMES = {"ahmad-diffusion": 40, "catmap": 40}
BATCHES = {"32x32": (10_000, 32), "224x224": (500, 224)}


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    key = Key(b"\x42" * 32, "bench")
    rng = np.random.default_rng(0)
    rows, failures = [], 0
    for label, (n, side) in BATCHES.items():
        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        dst = np.empty_like(images)
        copy = best_time(lambda: np.copyto(dst, images), args.repeat)
        rows.append([label, "np.copyto", round(n / copy), 1.0, "-", "-"])
        for name in list_schemes():
            scheme = get_scheme(name)
            scheme.encrypt(images[:1], key)                      # build the cached plan
            enc = best_time(lambda: scheme.encrypt(images, key), args.repeat)
            cipher = scheme.encrypt(images, key)
            dec = best_time(lambda: scheme.decrypt(cipher, key), max(1, args.repeat // 2))
            target = SLOW_SCHEMES.get(name, 10)
            ok = enc / copy <= target
            failures += not ok
            rows.append([label, name, round(n / enc), round(enc / copy, 1), round(n / dec),
                         f"<= {target}x {'ok' if ok else 'MISSED'}"])
    print(format_table(rows, ["batch", "scheme", "encrypt img/s", "x copy time", "decrypt img/s", "target"]))
    print(f"\n{platform.processor() or platform.machine()}, numpy {np.__version__}, one process, "
          f"best of {args.repeat}; {failures} target(s) missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
