"""Jigsaw solver on the first Imagenette val images: scrambling alone and full EtC (224×224, 16-px blocks).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/bench_jigsaw.py --images 20 --etc-images 4

Scrambling alone: median/min SSIM, median correct-neighbour rate and wall seconds per image (one core
with the variables above). Full EtC: the solver's output is defined up to one global rotation/flip,
colour order and sign, which an oracle picks by SSIM against the plain image, as lcrypt/evaluate.py does.
``--module path/to/jigsaw.py`` measures another version of the solver (for instance the previous one,
``git show <rev>:lcrypt/attacks/jigsaw.py > /tmp/jigsaw_old.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from lcrypt import Key, get_scheme
from lcrypt.attacks.fr import global_variants
from lcrypt.datasets import load_arrays
from lcrypt.metrics import ssim

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenette-224.tar.gz"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--images", type=int, default=20, help="scrambling-only images (the first of val; 0 = skip)")
    p.add_argument("--etc-images", type=int, default=4, help="full-EtC images (the first of val; 0 = skip)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--etc-restarts", type=int, default=1)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--module", help="a jigsaw.py to measure instead of lcrypt.attacks.jigsaw")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.module:
        spec = importlib.util.spec_from_file_location("jigsaw_under_test", args.module)
        J = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(J)
    else:
        from lcrypt.attacks import jigsaw as J
    key = Key(bytes(range(32)), "bench")
    plain = load_arrays(args.data, "val", limit=max(args.images, args.etc_images))[0]
    b = args.block
    gw = plain.shape[2] // b

    if args.images:
        x = plain[:args.images]
        m = J.scramble_only(key, x.shape[1:], b)
        cipher, origin = m.forward(x), J.true_block_positions(m, b)
        ss, nb, ts = [], [], []
        for i in range(len(x)):
            t = time.perf_counter()
            r, g = J.jigsaw_attack(cipher[i:i + 1], b, restarts=args.restarts)
            ts.append(time.perf_counter() - t)
            ss.append(float(ssim(r, x[i:i + 1])[0]))
            nb.append(J.neighbour_accuracy(g[0], origin, gw))
            if args.verbose:
                print(f"  scrambling {i:3d}  ssim {ss[-1]:.3f}  neighbours {nb[-1]:.3f}  {ts[-1]:.2f} s")
        print(f"scrambling only, {len(x)} images: median SSIM {np.median(ss):.3f}  min SSIM {np.min(ss):.3f}  "
              f"median neighbours {np.median(nb):.3f}  mean neighbours {np.mean(nb):.3f}  {np.mean(ts):.2f} s/image")

    if args.etc_images:
        x = plain[:args.etc_images]
        etc = get_scheme("etc", block_size=b)
        cipher, origin = etc.encrypt(x, key), J.true_block_positions(etc._transform(key, x.shape[1:]), b)
        ss, nb, ts = [], [], []
        for i in range(len(x)):
            t = time.perf_counter()
            r, g = J.jigsaw_attack(cipher[i:i + 1], b, True, True, True, restarts=args.etc_restarts)
            ts.append(time.perf_counter() - t)
            cands = [(v[0], gg) for im, gg in J.global_dihedral(r[0], g[0])
                     for v in global_variants(np.ascontiguousarray(im)[None])]
            scores = [float(ssim(v, x[i])[0]) for v, _ in cands]
            k = int(np.argmax(scores))
            ss.append(scores[k])
            nb.append(J.neighbour_accuracy(cands[k][1], origin, gw))
            if args.verbose:
                print(f"  full EtC {i:3d}  ssim {ss[-1]:.3f}  neighbours {nb[-1]:.3f}  {ts[-1]:.2f} s")
        print(f"full EtC, {len(x)} images (oracle global symmetry): median SSIM {np.median(ss):.3f}  "
              f"min SSIM {np.min(ss):.3f}  median neighbours {np.median(nb):.3f}  mean neighbours {np.mean(nb):.3f}  "
              f"{np.mean(ts):.2f} s/image")


if __name__ == "__main__":
    main()
