"""Does key-based conversion help training? A small ViT on CIFAR-10, CPU, side by side in one run.

    python bench/convert_finetune.py [--source ../shared/datasets/cifar10-jpeg.tar.gz] [--per-half 5000]

Two disjoint halves A and B of a random sample of the train split; a ViT (patch 4, width 64, depth 4)
is pretrained on plain A; then, with the same fine-tuning budget on B (``--finetune-epochs``):

* converted: the pretrained model converted with the owner's key (``blockwise``, block 4, block
  scrambling) and fine-tuned on encrypted B, evaluated on the encrypted test images;
* scratch: the same ViT from random weights trained on encrypted B;
* plain fine-tuning: the pretrained model fine-tuned on plain B, evaluated on plain test images;

and, without fine-tuning, the converted model on encrypted test images (equal to the pretrained model
on plain ones) and the unconverted pretrained model on encrypted images. No augmentation (a flip or a
shift would move values across the key's blocks). Prints a markdown table for docs/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int, seed: int) -> float:
    """AdamW with a cosine schedule; returns seconds spent."""
    import torch

    from loaders.augment import normalize

    t0 = time.time()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(normalize(torch.from_numpy(x[idx]))),
                                                     torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return time.time() - t0


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    from loaders.augment import normalize

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(normalize(torch.from_numpy(x[i:i + 500]))).argmax(1)
                          for i in range(0, len(x), 500)])
    return float((pred.numpy() == y).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    p.add_argument("--source", default=str(here.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    p.add_argument("--per-half", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from lcrypt import Key, get_scheme
    from lcrypt.sources import load_arrays
    from training.convert import convert_model
    from training.models import create_model

    torch.set_num_threads(args.threads)
    t0 = time.time()
    x_all, y_all, _ = load_arrays(args.source, "train")
    x_test, y_test, _ = load_arrays(args.source, "test")
    rng = np.random.default_rng(args.seed)
    pick = rng.permutation(len(x_all))[:2 * args.per_half]
    a, b = pick[:args.per_half], pick[args.per_half:]
    t = rng.permutation(len(x_test))[:args.test]
    xa, ya, xb, yb = x_all[a], y_all[a], x_all[b], y_all[b]
    xt, yt = x_test[t], y_test[t]
    print(f"data: {len(xa)} + {len(xb)} train, {len(xt)} test ({time.time() - t0:.0f} s)", flush=True)

    key = Key.generate("bench-owner")
    scheme = get_scheme("blockwise", block_size=4, scramble=True)
    xb_enc, xt_enc = scheme.encrypt(xb, key), scheme.encrypt(xt, key)

    def vit(seed: int):
        torch.manual_seed(seed)
        return create_model("vit", 10, 32, None, width=64, depth=4, patch=4)

    ft = dict(epochs=args.finetune_epochs, lr=5e-4, batch=args.batch_size)
    pre = vit(args.seed)
    secs = train(pre, xa, ya, args.pretrain_epochs, 1e-3, args.batch_size, args.seed)
    rows = [("pretrained on plain A (no fine-tuning), plain test", "—", accuracy(pre, xt, yt), secs)]
    rows.append(("pretrained, unconverted, on encrypted test", "—", accuracy(pre, xt_enc, yt), 0.0))
    conv = convert_model(pre, key, scheme, (32, 32, 3))
    rows.append(("converted (no fine-tuning), encrypted test", "—", accuracy(conv, xt_enc, yt), 0.0))
    print(*rows, sep="\n", flush=True)
    arms = [("converted, fine-tuned on encrypted B", conv, xb_enc, xt_enc),
            ("from scratch on encrypted B", vit(args.seed + 1), xb_enc, xt_enc),
            ("pretrained, fine-tuned on plain B (plain test)", pre, xb, xt)]
    for name, model, xtr, xte in arms:
        secs = train(model, xtr, yb, seed=args.seed + 7, **ft)
        rows.append((name, f"{args.finetune_epochs} epochs", accuracy(model, xte, yt), secs))
        print(rows[-1], flush=True)
    print(f"\n`python bench/convert_finetune.py --per-half {args.per_half} --test {args.test} "
          f"--pretrain-epochs {args.pretrain_epochs} --finetune-epochs {args.finetune_epochs}` "
          f"({time.time() - t0:.0f} s, "
          f"{args.threads} threads)\n")
    print("| model | fine-tuning on B | top-1 (test) | train s |\n|---|---|---|---|")
    for name, budget, acc, s in rows:
        print(f"| {name} | {budget} | {acc:.3f} | {s:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
