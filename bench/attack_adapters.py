"""What owner adapters leak (lcrypt.attacks.adapter_leak), measured on a small trained model (CPU).

    python bench/attack_adapters.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--epochs 3]

Two owners (file names ``*[02468].jpg`` / ``*[13579].jpg``) of a CIFAR-10 subset are encrypted with
``block-shuffle`` (M = 4: one pixel shuffle shared by every block, the case a per-owner patch embedding
absorbs exactly) by the real `prepare` pipeline; ConvMixer-64/4 with patch 4 = block trains with
``--owner-adapters`` (bench/accuracy_cpu.py's recipe otherwise). Owner k0 is the attacker (a participant:
the model and its own key); the attack matches the columns of k1's patch embedding against k0's,
moves k1's test ciphertexts into k0's domain and decrypts them with k0's key. Prints the share of the
relative key recovered, and the SSIM / PSNR of the recovered images against the plain ones, as the
security report's row; the same for a model right after initialisation (the attack's floor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy_cpu import recipe  # noqa: E402
from bench.owners_cpu import OWNERS, subset  # noqa: E402

BLOCK = 4


def true_relative_key(scheme, key_ref, key_b, shape) -> np.ndarray:
    """Where each value of a k1 cipher block sits in the k0 cipher block: encrypt an image whose block
    values are all distinct (block-shuffle moves values, never changes them) under both keys."""
    m = BLOCK
    d = m * m * 3
    idx = np.tile(np.arange(d, dtype=np.uint8).reshape(m, m, 3), (shape[0] // m, shape[1] // m, 1))[None]
    a = scheme.encrypt(idx, key_ref)[0, :m, :m].reshape(-1)
    b = scheme.encrypt(idx, key_b)[0, :m, :m].reshape(-1)
    return np.argsort(a)[b]


def attack(weights: dict, scheme, keys, plain: np.ndarray) -> dict:
    from lcrypt.attacks.adapter_leak import (block_columns, match_columns, relative_key_recovered,
                                             to_reference_domain)
    from lcrypt.metrics import psnr, ssim

    ref, tgt = (block_columns(weights[f"net.stem.0.layers.{i}.weight"].numpy()) for i in (0, 1))
    perm, sign, score = match_columns(ref, tgt)
    truth = true_relative_key(scheme, keys[0], keys[1], plain.shape[1:3])
    recovered = to_reference_domain(scheme.encrypt(plain, keys[1]), perm, sign, BLOCK)
    images = scheme.decrypt(recovered, keys[0])
    s, p = ssim(images, plain), psnr(images, plain)
    return {"key_recovered": relative_key_recovered(perm, sign, truth, np.ones_like(sign)),
            "median_ssim": float(np.median(s)), "mean_ssim": float(np.mean(s)),
            "median_psnr": float(np.median(p)), "mean_score": float(score.mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--work", default="/tmp/lcrypt-adapter-leak")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    from lcrypt import Key, get_scheme
    from lcrypt.images import decode_image
    from pipelines.prepare import run as prepare
    from training.train import run as train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    subset(Path(args.source), work / "src", {"train": args.train_per_class, "test": 10})
    for k in OWNERS["two"]:
        if not (work / f"{k}.key").exists():
            Key.generate(k).save(work / f"{k}.key")
    (work / "two.json").write_text(json.dumps({o: {"key": f"{o}.key", "match": m}
                                               for o, m in OWNERS["two"].items()}))
    data = work / "data"
    if not (data / "manifest.json").exists():
        rc = prepare(["--source", str(work / "src"), "--scheme", "block-shuffle", "--param",
                      f"block_size={BLOCK}", "--keys", str(work / "two.json"), "--out", str(data), "--quiet"])
        if rc:
            return rc
    flags = recipe(epochs=args.epochs)
    flags[flags.index("--patch") + 1] = str(BLOCK)
    ckpt = work / "runs" / "adapters" / "checkpoint.pt"
    if not ckpt.exists():
        rc = train(["--data", str(data), "--out", str(work / "runs"), "--name", "adapters", *flags,
                    "--owner-adapters"])
        if rc:
            return rc
    scheme = get_scheme("block-shuffle", block_size=BLOCK)
    keys = [Key.load(work / f"{k}.key") for k in OWNERS["two"]]
    plain = np.stack([decode_image(f.read_bytes()) for f in sorted((work / "src/test").rglob("*.jpg"))])
    trained = torch.load(ckpt, weights_only=True)
    from training.models import create_model
    from training.owners import owner_model

    torch.manual_seed(0)
    model = create_model("convmixer", 10, 32, BLOCK, width=64, depth=4, patch=BLOCK, kernel=3)
    init = owner_model(model, 2)
    rows = {"trained": attack(trained["model"], scheme, keys, plain),
            "at initialisation": attack(init.state_dict(), scheme, keys, plain)}
    rows["trained"]["top1"] = json.loads((ckpt.parent / "summary.json").read_text())["top1"]
    print(json.dumps(rows, indent=1))
    for name, r in rows.items():
        print(f"| `block-shuffle` | adapter-leak ({name}) | model + one owner's key | "
              f"{r['median_ssim']:.2f} | {r['mean_ssim']:.2f} | {r['median_psnr']:.1f} | "
              f"relative key recovered {r['key_recovered']:.1%}, {len(plain)} images of the other owner |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
