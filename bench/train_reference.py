"""A plain PyTorch loop for bench/accuracy_cpu.py's budget: the check that training.train loses no accuracy.

    .venv/bin/python bench/train_reference.py --data /tmp/lcrypt-accuracy/plain/manifest.json

The same ConvMixer-64/4 (patch 2, kernel 3), AdamW (lr 0.005, weight decay 0.05 on weights only), warm-up
0.2 epoch + cosine per step, label smoothing 0.1, batch 128, 2 epochs, and the same (2p - 255) / 255
normalisation as training.train; written the obvious way instead: a full-permutation shuffle, a pad-4
random crop and a horizontal flip per sample in a Python loop, ``nn.CrossEntropyLoss``. Only the model
comes from this project. Compare its top-1 with accuracy_cpu's plain row (same shards, same budget).
Pixel-wise flips and shifts are what `plain` and `pe` allow; this script does not apply to block schemes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lcrypt.table import format_table  # noqa: E402
from loaders.gpu import read_split  # noqa: E402
from training.models import create_model  # noqa: E402


def as_float(u8) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().mul(2).sub(255).div(255)


def crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Per sample: zero-pad 4 (mid-grey after normalisation), random 32×32 crop, flip with p = 0.5."""
    h, w = x.shape[-2:]
    xp = nn.functional.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (len(x),)), torch.randint(0, 9, (len(x),))
    flip = torch.rand(len(x)) < 0.5
    out = torch.empty_like(x)
    for i in range(len(x)):
        crop = xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="manifest.json of a plain (or pe) CIFAR-10 dataset")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    xtr, ytr, _ = read_split(args.data, "train")
    xte, yte, _ = read_split(args.data, "test")
    x_train, y_train = as_float(xtr), torch.from_numpy(ytr)
    x_test, y_test = as_float(xte), torch.from_numpy(yte)
    cl = torch.channels_last
    model = create_model("convmixer", 10, 32, width=64, depth=4, patch=2, kernel=3).to(memory_format=cl)
    groups = [{"params": [q for q in model.parameters() if q.ndim > 1], "weight_decay": 0.05},
              {"params": [q for q in model.parameters() if q.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=0.005)
    per_epoch = len(x_train) // args.batch_size
    total, warm = per_epoch * args.epochs, int(0.2 * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    rows, t0 = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train))
        for s in range(per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            loss = loss_fn(model(crop_flip(x_train[idx]).contiguous(memory_format=cl)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x_test[i:i + 500].contiguous(memory_format=cl)).argmax(1)
                           == y_test[i:i + 500]).sum().item()
                          for i in range(0, len(x_test), 500))
        rows.append([epoch + 1, f"{100 * correct / len(x_test):.2f}", round(time.perf_counter() - t0)])
    print(format_table(rows, ["epoch", "test top-1 %", "s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
