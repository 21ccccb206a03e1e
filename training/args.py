"""``training.train``'s flags and the checks they pass before anything is read or created.

The model and adaptation choices come from :mod:`training.models` (its registries, and timm's names) and
the depthwise ones from :mod:`training.depthwise`, so the parser, the error lines and the builders name
the same things. ``lcrypt train`` passes its arguments to the same parser (:mod:`training.command`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
from typing import Any

import torch

from training.depthwise import CHOICES as DEPTHWISE_CHOICES
from training.errors import TrainError
from training.owners import add_arguments as owner_arguments
from training.models import (ARCHITECTURE_FIELDS, OPTIONS, known_model, list_adaptations, list_models,
                             unknown_model)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def build_parser(description: str, prog: str = "python -m training.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    a = p.add_argument
    a("--data", required=True, help="dataset folder or its manifest.json (local or fsspec URL)")
    a("--out", default="runs", help="folder of the runs: each run writes into its own folder OUT/NAME "
      "(checkpoint, metrics, curves, summary; default runs)")
    a("--name", help="the run's folder name (default DATE-TIME-SCHEME-MODEL); a name that already holds "
      "a run is refused unless --resume auto continues it")
    a("--train-split", default="train")
    a("--test-split", default="test", help="evaluated after each epoch; 'none' to skip")
    a("--model", default="convmixer", help=f"{', '.join(list_models())} (lcrypt's), or any timm model name, "
      "e.g. mobilenetv3_small_050 (built for the dataset's classes and image size, no pretrained weights)")
    a("--adapt", default="none", choices=list_adaptations(), help="adaptation network in front")
    a("--adapt-block", type=int, help="block size of --adapt block (default: the scheme's; needed for a "
      "scheme without blocks, e.g. 4 for catmap as in Tanaka 2018)")
    a("--width", type=int, help="ConvMixer/ViT embedding width")
    a("--depth", type=int, help="ConvMixer/ViT depth")
    a("--patch", type=int, help="patch size (ViT default: the scheme's block size)")
    a("--kernel", type=int, help="ConvMixer depthwise kernel size")
    a("--depthwise", choices=DEPTHWISE_CHOICES, help="ConvMixer depthwise convolutions: PyTorch's (direct, "
      "the default), FFT products, or a Triton kernel for channels_last on CUDA (same weights and result; "
      "see bench/bench_depthwise.py for which is faster)")
    a("--epochs", type=int, default=10)
    a("--batch-size", type=int, default=128, help="per process")
    a("--opt", default="adamw", choices=("adamw", "sgd"))
    a("--lr", type=float, default=1e-2)
    a("--weight-decay", type=float, default=1e-2)
    a("--momentum", type=float, default=0.9)
    a("--sched", default="cosine", choices=("cosine", "triangular", "constant"),
      help="per-step schedule: warm-up + cosine, or the ConvMixer paper's triangular one")
    a("--warmup-epochs", type=float, default=1.0)
    a("--label-smoothing", type=float, default=0.1)
    a("--mixup", type=float, default=0.0, help="mixup alpha (0 = off); used only if the scheme allows it")
    a("--cutmix", type=float, default=0.0, help="CutMix alpha (0 = off); boxes aligned to the scheme's grid")
    a("--translate", type=int, default=4, help="max shift in pixels, rounded to whole cells (0 = off)")
    a("--no-flip", action="store_true", help="no horizontal flips")
    a("--clip-grad", type=float, default=0.0, help="clip the gradient norm to this (0 = off)")
    a("--ema", type=float, default=0.0, help="EMA decay of the weights evaluated (0 = off), e.g. 0.999")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--no-amp", action="store_true", help="no bf16 autocast on CUDA (float32 with TF32 matmuls)")
    a("--memory-format", default="auto", choices=("auto", "channels_last", "contiguous"),
      help="activation layout (auto: channels_last on CUDA, contiguous on CPU)")
    a("--gpu-resident", action="store_true", help="read the splits once and keep them on the device")
    a("--workers", type=int, default=None,
      help="DataLoader workers per process (default 4 on CUDA, 0 on CPU)")
    a("--shuffle-buffer", type=int, default=2000)
    a("--verify-sha256", action="store_true", help="check every shard against the manifest's sha256")
    a("--seed", type=int, default=0)
    a("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0 = end of each epoch only)")
    a("--resume", help="continue a run: its folder (or the checkpoint.pt in it), or 'auto': the newest run "
      "under --out of the same dataset and model that has a checkpoint (with --name: that run), else a "
      "new run")
    a("--stop-after-steps", type=int, default=0,
      help="checkpoint and stop at this global step (preemption test)")
    a("--trace-samples", action="store_true", help="write the sample keys of each step per rank (checks)")
    a("--log-every", type=int, default=50)
    a("--tensorboard", action="store_true", help="also write TensorBoard events into the run folder "
      "(needs the tensorboard package)")
    a("--device", default="auto", help="auto, cpu, cuda")
    a("--quiet", action="store_true", help="no progress bar")
    owner_arguments(p)
    return p


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers in range, a known model and a usable device, before anything is read or created."""
    rules = [("--epochs", args.epochs, args.epochs >= 1, "at least 1"),
             ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
             ("--lr", args.lr, args.lr > 0, "a positive number"),
             ("--weight-decay", args.weight_decay, args.weight_decay >= 0, ">= 0"),
             ("--momentum", args.momentum, 0 <= args.momentum < 1, "in [0, 1)"),
             ("--warmup-epochs", args.warmup_epochs, args.warmup_epochs >= 0, ">= 0"),
             ("--label-smoothing", args.label_smoothing, 0 <= args.label_smoothing < 1, "in [0, 1)"),
             ("--mixup", args.mixup, args.mixup >= 0, ">= 0"),
             ("--cutmix", args.cutmix, args.cutmix >= 0, ">= 0"),
             ("--translate", args.translate, args.translate >= 0, ">= 0"),
             ("--clip-grad", args.clip_grad, args.clip_grad >= 0, ">= 0"),
             ("--ema", args.ema, 0 <= args.ema < 1, "in [0, 1)"),
             ("--shuffle-buffer", args.shuffle_buffer, args.shuffle_buffer >= 0, ">= 0"),
             ("--seed", args.seed, args.seed >= 0, ">= 0"),
             ("--ckpt-every", args.ckpt_every, args.ckpt_every >= 0, ">= 0 (0 = end of each epoch only)"),
             ("--stop-after-steps", args.stop_after_steps, args.stop_after_steps >= 0, ">= 0 (0 = never)"),
             ("--log-every", args.log_every, args.log_every >= 1, "at least 1")]
    if args.workers is not None:
        rules.append(("--workers", args.workers, args.workers >= 0, ">= 0"))
    rules += [(f"--{k.replace('_', '-')}", getattr(args, k), getattr(args, k) >= 1, "at least 1")
              for k in (*ARCHITECTURE_FIELDS, "adapt_block") if getattr(args, k) is not None]
    for flag, value, ok, rule in rules:
        if not ok or not math.isfinite(value):
            raise TrainError(f"{flag} {value} is out of range: it must be {rule}")
    if not known_model(args.model):
        raise TrainError(str(unknown_model(args.model, "--model")))
    if args.name is not None and not (NAME.fullmatch(args.name) and len(args.name) <= 200):
        raise TrainError(f"--name {args.name!r} is not a folder name: use letters, digits and . _ + - "
                         "(a letter or digit first, no '/')")
    if args.name is not None and args.resume not in (None, "auto"):
        raise TrainError("--name and --resume PATH both name the run's folder: give one (or --resume auto "
                         "--name NAME)")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise TrainError("--tensorboard needs the tensorboard package, which is not installed: "
                         "pip install tensorboard (or train without --tensorboard)")
    if not (args.device in ("auto", "cpu") or args.device.startswith("cuda")):
        raise TrainError(f"unknown --device {args.device!r}; choose auto, cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {args.device} asked for, but this machine has no usable CUDA device; "
                         "use --device cpu (or auto)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flags :func:`training.models.create_model` takes (None: the model's default)."""
    return {k: getattr(args, k) for k in OPTIONS}


def splits_read(args: argparse.Namespace) -> list[str]:
    """The splits this run reads: the training split, and the test split unless it is 'none'."""
    return [args.train_split] + ([args.test_split] if args.test_split != "none" else [])


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model as a checkpoint and the summary record it: name, adaptation and the options given."""
    given = {**model_options(args), "adapt_block": args.adapt_block}
    return {"name": args.model, "adapt": args.adapt, **{k: v for k, v in given.items() if v is not None}}
