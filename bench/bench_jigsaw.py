"""Jigsaw solver on the first Imagenette val images: scrambling alone and full EtC (224×224, 16-px blocks).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_jigsaw.py \\
        --images 20 --etc-images 10 --module /tmp/jigsaw_old.py

Scrambling alone: median/min SSIM, median correct-neighbour rate and wall seconds per image (one core
with the variables above). Full EtC: the solver's output is defined up to one global rotation/flip,
colour order and sign, which an oracle picks by SSIM against the plain image, as `lcrypt evaluate` does.
``--module path/to/jigsaw.py`` measures another version of the solver beside the current one, in the same
run (for instance the previous one, ``git show <rev>:lcrypt/attacks/jigsaw.py > /tmp/jigsaw_old.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from lcrypt import Key, get_scheme
from lcrypt.attacks.fr import global_variants
from lcrypt.sources import load_arrays
from lcrypt.metrics import ssim
from lcrypt.table import format_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenette-224.tar.gz"


def load_solver(path: str | None):
    """lcrypt.attacks.jigsaw, or another version of it from a file (to compare side by side)."""
    if not path:
        from lcrypt.attacks import jigsaw
        return jigsaw
    spec = importlib.util.spec_from_file_location(f"jigsaw_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(J, plain: np.ndarray, key: Key, b: int, full: bool, restarts: int, verbose: bool) -> list[float]:
    """[median SSIM, min SSIM, median neighbours, mean neighbours, s/image] of one solver on one variant."""
    gw = plain.shape[2] // b
    if full:
        etc = get_scheme("etc", block_size=b)
        cipher = etc.encrypt(plain, key)
        origin = J.true_block_positions(etc._transform(key, plain.shape[1:]), b)
    else:
        m = J.scramble_only(key, plain.shape[1:], b)
        cipher, origin = m.forward(plain), J.true_block_positions(m, b)
    ss, nb, ts = [], [], []
    for i in range(len(plain)):
        t = time.perf_counter()
        r, g = J.jigsaw_attack(cipher[i:i + 1], b, full, full, full, restarts=restarts)
        ts.append(time.perf_counter() - t)
        if full:                                     # the oracle picks the one global symmetry left over
            cands = [(v[0], gg) for im, gg in J.global_dihedral(r[0], g[0])
                     for v in global_variants(np.ascontiguousarray(im)[None])]
        else:
            cands = [(r[0], g[0])]
        scores = [float(ssim(v, plain[i])[0]) for v, _ in cands]
        k = int(np.argmax(scores))
        ss.append(scores[k])
        nb.append(J.neighbour_accuracy(cands[k][1], origin, gw))
        if verbose:
            print(f"  {'full EtC' if full else 'scrambling'} {i:3d}  ssim {ss[-1]:.3f}  "
                  f"neighbours {nb[-1]:.3f}  {ts[-1]:.2f} s", flush=True)
    return [float(np.median(ss)), float(np.min(ss)), float(np.median(nb)), float(np.mean(nb)),
            float(np.mean(ts))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--images", type=int, default=20,
                   help="scrambling-only images (the first of val; 0 = skip)")
    p.add_argument("--etc-images", type=int, default=10, help="full-EtC images (the first of val; 0 = skip)")
    p.add_argument("--offset", type=int, default=0, help="skip this many val images first (held-out images)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--etc-restarts", type=int, default=1)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--module", action="append", default=[],
                   help="another jigsaw.py to measure beside lcrypt.attacks.jigsaw (repeatable)")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    key = Key(bytes(range(32)), "bench")
    limit = args.offset + max(args.images, args.etc_images)
    plain = load_arrays(args.data, "val", limit=limit)[0][args.offset:]
    variants = ((False, args.images, args.restarts), (True, args.etc_images, args.etc_restarts))
    rows = []
    for path in [None, *args.module]:
        J = load_solver(path)
        name = path or "lcrypt.attacks.jigsaw"
        for full, n, restarts in variants:
            if n:
                rows.append([name, "full EtC (oracle symmetry)" if full else "scrambling only", n,
                             *measure(J, plain[:n], key, args.block, full, restarts, args.verbose)])
                print(rows[-1], flush=True)
    for r in rows:                                   # quality and time relative to the current solver
        base = next(b for b in rows if b[1] == r[1])
        r += [r[3] - base[3], r[7] / base[7]]
    print(format_table([[a, b, c, *(round(v, 3) for v in rest)] for a, b, c, *rest in rows],
                       ["solver", "steps undone", "images", "median SSIM", "min SSIM", "median nbrs",
                        "mean nbrs", "s/image", "SSIM - current", "time / current"]))


if __name__ == "__main__":
    main()
