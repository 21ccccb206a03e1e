"""Train a classifier on an encrypted lcrypt dataset, on one CPU, one GPU or many (torchrun DDP).

    torchrun --nproc_per_node=N -m training.train --data DIR/manifest.json --model convmixer [...]
    python -m training.train --data DIR --model resnet18 --adapt pe [...]          (one process)

One file, read top to bottom: arguments -> process group -> data (streaming shards planned per rank, or
GPU-resident) -> model (timm, optional adaptation network, channels_last, DDP, optional compile) ->
optimiser and per-step schedule -> loop (encrypted-domain augmentation from the manifest's scheme
properties, bf16 autocast on CUDA, clipping, EMA) -> per-epoch evaluation on the encrypted test split
-> checkpoints (loaded with ``weights_only=True``) -> summary.

Determinism: the data order is a function of (seed, epoch) (:mod:`loaders.plan`), augmentation draws
from generators seeded by (seed, global step, rank), so ``--resume`` continues exactly where a run
stopped. Outputs in ``--out``: ``checkpoint.pt``, ``metrics.jsonl`` (one JSON object per epoch, plus
``"event": "step"`` lines every ``--log-every`` steps), ``summary.json`` (top-1, images/s, wall, device).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


# -- arguments ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--data", required=True, help="dataset folder or its manifest.json (local or fsspec URL)")
    a("--out", default="runs/train", help="folder for checkpoint, metrics and summary (default runs/train)")
    a("--train-split", default="train")
    a("--test-split", default="test", help="evaluated after each epoch; 'none' to skip")
    a("--model", default="convmixer", help="convmixer, vit or resnet18")
    a("--adapt", default="none", choices=("none", "pe", "block"), help="adaptation network in front")
    a("--width", type=int, help="ConvMixer/ViT embedding width")
    a("--depth", type=int, help="ConvMixer/ViT depth")
    a("--patch", type=int, help="patch size (ViT default: the scheme's block size)")
    a("--kernel", type=int, help="ConvMixer depthwise kernel size")
    a("--depthwise", choices=("direct", "fft", "triton"), help="ConvMixer depthwise convolutions: PyTorch's (direct, "
      "the default), FFT products, or a Triton kernel for channels_last on CUDA (same weights and result; see "
      "bench/bench_depthwise.py for which is faster)")
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
    a("--workers", type=int, default=None, help="DataLoader workers per process (default 4 on CUDA, 0 on CPU)")
    a("--shuffle-buffer", type=int, default=2000)
    a("--verify-sha256", action="store_true", help="check every shard against the manifest's sha256")
    a("--seed", type=int, default=0)
    a("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0 = end of each epoch only)")
    a("--resume", help="checkpoint to continue from ('auto' = OUT/checkpoint.pt if it exists)")
    a("--stop-after-steps", type=int, default=0, help="checkpoint and stop at this global step (preemption test)")
    a("--trace-samples", action="store_true", help="write the sample keys of each step per rank (checks)")
    a("--log-every", type=int, default=50)
    a("--device", default="auto", help="auto, cpu, cuda")
    a("--quiet", action="store_true", help="no progress bar")
    return p


# -- process group ------------------------------------------------------------------------------------
def setup_distributed(device_arg: str) -> tuple[int, int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=_dt.timedelta(minutes=10))
    return rank, world, local, device


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# -- schedule -----------------------------------------------------------------------------------------
def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total``."""
    t = step / max(1, total)
    if kind == "triangular":  # ConvMixer paper: 0 -> peak at 2/5, -> peak/20 at 4/5, -> 0
        pts = [(0.0, 0.0), (0.4, 1.0), (0.8, 0.05), (1.0, 0.0)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if t <= x1:
                return y0 + (y1 - y0) * (t - x0) / (x1 - x0)
        return 0.0
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# -- checkpoints --------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save of plain types and tensors only (so weights_only=True can load it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Checkpoints are data, never code: weights_only=True refuses pickled objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def sync_buffers(*models: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), as DDP does before each forward.

    After the last step each rank's BN running stats come from its own batches; evaluation and the
    final replicas must use one model.
    """
    if dist.is_initialized():
        for m in models:
            for b in m.buffers():
                dist.broadcast(b, 0)


def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -- data ---------------------------------------------------------------------------------------------
def build_data(args, manifest_path: str, rank: int, world: int, device: torch.device, key_ids):
    from loaders.dataset import make_loader
    from loaders.gpu import GPUResident

    test = None
    if args.gpu_resident:
        train = GPUResident.from_manifest(manifest_path, args.train_split, args.batch_size, device=device,
                                          rank=rank, world=world, seed=args.seed, expect_key_ids=key_ids)
        if args.test_split != "none":
            test = GPUResident.from_manifest(manifest_path, args.test_split, 1024, device=device, rank=rank,
                                             world=world, shuffle=False, drop_last=False, cover_all=True)
        return train, train, test, test
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    common = dict(rank=rank, world=world, num_workers=workers, pin_memory=device.type == "cuda",
                  verify_sha256=args.verify_sha256, expect_key_ids=key_ids)
    train_loader, train_ds = make_loader(manifest_path, args.train_split, args.batch_size, seed=args.seed,
                                         buffer=args.shuffle_buffer, **common)
    test_loader = test_ds = None
    if args.test_split != "none":
        test_loader, test_ds = make_loader(manifest_path, args.test_split, max(256, args.batch_size),
                                           shuffle=False, drop_last=False, cover_all=True, **common)
    return train_loader, train_ds, test_loader, test_ds


@torch.no_grad()
def evaluate(model: nn.Module, loader, ds, device: torch.device, amp: bool, channels_last: bool) -> dict:
    from loaders.augment import normalize

    model.eval()
    ds.set_epoch(0)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    loss = torch.zeros((), device=device, dtype=torch.float64)
    n = 0
    for batch in loader:
        x = normalize(batch["image"].to(device, non_blocking=True), channels_last)
        y = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    c, l, total = all_reduce_sum([correct.item(), loss.item(), n], device)
    model.train()
    return {"top1": 100.0 * c / max(1, total), "loss": l / max(1, total), "count": int(total)}


# -- main ---------------------------------------------------------------------------------------------
def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lcrypt.table import format_table
    from loaders.augment import AugmentConfig, EncryptedAugment, normalize
    from loaders.dataset import KeyMismatchError, check_key_ids, load_manifest
    from training.models import create_model

    rank, world, local, device = setup_distributed(args.device)
    is_main = rank == 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest, _ = load_manifest(args.data)
    key_ids = sorted(o.key_id for o in manifest.owners)
    ckpt = None
    resume = args.resume
    if resume == "auto":
        resume = str(out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
    if resume:
        ckpt = load_checkpoint(resume)
        try:
            check_key_ids(manifest, ckpt["key_ids"], f"checkpoint {resume}")
        except KeyMismatchError as exc:
            print(f"training.train: error: {exc}", file=sys.stderr)
            return 2
    torch.manual_seed(args.seed)
    cuda = device.type == "cuda"
    amp = cuda and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    t_setup = time.perf_counter()
    train_loader, train_ds, test_loader, test_ds = build_data(args, args.data, rank, world, device, key_ids)
    steps_per_epoch = len(train_ds)
    if steps_per_epoch == 0:
        print(f"training.train: error: {train_ds.num_samples} training samples give no batch of "
              f"{args.batch_size} per process on {world} processes; lower --batch-size", file=sys.stderr)
        return 2
    total_steps = steps_per_epoch * args.epochs
    info = manifest.scheme_info or manifest.scheme_object().info.as_dict(*manifest.image_shape[:2])
    block = info.get("block_size")
    model_kw = {k: getattr(args, k) for k in ("width", "depth", "patch", "kernel", "depthwise")}
    model = create_model(args.model, manifest.num_classes, manifest.image_shape[0], block, adapt=args.adapt,
                         **model_kw).to(device)
    channels_last = args.memory_format == "channels_last" or (cuda and args.memory_format == "auto")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw = model
    from timm.optim import param_groups_weight_decay

    groups = param_groups_weight_decay(raw, args.weight_decay)
    if args.opt == "adamw":
        opt = torch.optim.AdamW(groups, lr=args.lr)
    else:
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=True)
    warmup = int(args.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(args.sched, s, total_steps, warmup))
    ema = None
    if args.ema > 0:
        from timm.utils import ModelEmaV2

        ema = ModelEmaV2(raw, decay=args.ema)
    epoch, step_in_epoch, global_step = 0, 0, 0
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.module.load_state_dict(ckpt["ema"])
        pos = ckpt["loader"]
        epoch, step_in_epoch, global_step = pos["epoch"], pos["step"], ckpt["global_step"]
        if pos.get("world") != world or pos.get("batch_size", args.batch_size) != args.batch_size:
            print(f"training.train: warning: resuming with world {world} / batch {args.batch_size} "
                  f"(checkpoint: {pos.get('world')} / {pos.get('batch_size')}): the epoch's remaining "
                  "samples are re-planned", file=sys.stderr)
    fwd = model
    if world > 1:
        fwd = nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    if args.compile:
        fwd = torch.compile(fwd)
    augment = EncryptedAugment(info, manifest.num_classes, AugmentConfig(
        flips=not args.no_flip, translate=args.translate, mixup=args.mixup, cutmix=args.cutmix,
        label_smoothing=args.label_smoothing))
    from timm.loss import SoftTargetCrossEntropy

    criterion = SoftTargetCrossEntropy()
    gen = torch.Generator(device=device)
    setup_s = time.perf_counter() - t_setup

    def log_line(obj: dict) -> None:
        if is_main:
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(obj, sort_keys=True) + "\n")

    def state(epoch_: int, step_: int) -> dict[str, Any]:
        return {"model": raw.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "loader": {**train_ds.state_dict(step_), "epoch": epoch_, "batch_size": args.batch_size},
                "global_step": global_step, "epochs": args.epochs,
                "model_config": {"name": args.model, "adapt": args.adapt,
                                 **{k: v for k, v in model_kw.items() if v is not None}},
                "scheme": manifest.scheme, "scheme_params": manifest.scheme_params, "scheme_info": info,
                "key_ids": key_ids, "class_names": manifest.class_names, "image_shape": manifest.image_shape,
                "dataset": manifest.name, "args": {k: v for k, v in vars(args).items()
                                                   if isinstance(v, (str, int, float, bool, type(None)))}}

    def checkpoint(epoch_: int, step_: int) -> None:
        if is_main:
            save_checkpoint(out / CHECKPOINT, state(epoch_, step_))

    if is_main and not args.quiet:
        print(f"training {args.model}{'+' + args.adapt if args.adapt != 'none' else ''} on {manifest.name} "
              f"({manifest.scheme} {manifest.scheme_params}, keys {key_ids}) | {world} x {device.type} | "
              f"{train_ds.num_samples} train samples, {steps_per_epoch} steps/epoch x {args.epochs} | "
              f"augment: {', '.join(augment.describe()) or 'none'}", flush=True)
    trace = open(out / f"samples-rank{rank}.jsonl", "a") if args.trace_samples else None
    results: list[dict] = []
    train_time, train_images = 0.0, 0
    t_start = time.perf_counter()
    stopped = False
    fwd.train()
    while epoch < args.epochs and not stopped:
        train_ds.set_epoch(epoch, step_in_epoch)
        bar = None
        if is_main and not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{args.epochs}",
                       dynamic_ncols=True, leave=False)
        loss_sum = torch.zeros((), device=device)
        n_steps = 0
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for batch in train_loader:
            x = normalize(batch["image"].to(device, non_blocking=True), channels_last=channels_last)
            y = batch["label"].to(device, non_blocking=True)
            gen.manual_seed((args.seed * 1_000_003 + global_step) * 1009 + rank)
            x, target = augment(x, y, gen, np_seed=(args.seed, global_step, rank))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = fwd(x)
            loss = criterion(logits.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(raw.parameters(), args.clip_grad)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(raw)
            loss_sum += loss.detach()
            n_steps += 1
            global_step += 1
            step_in_epoch += 1
            train_images += len(y) * world
            if trace is not None:
                keys = batch["key"] if "key" in batch else batch["index"].tolist()
                trace.write(json.dumps({"epoch": epoch, "step": step_in_epoch - 1, "keys": keys}) + "\n")
            if bar is not None:
                bar.update(1)
                if global_step % args.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if global_step % args.log_every == 0:
                log_line({"event": "step", "step": global_step, "epoch": epoch, "loss": float(loss.item()),
                          "lr": sched.get_last_lr()[0]})
            if args.ckpt_every and global_step % args.ckpt_every == 0:
                checkpoint(epoch, step_in_epoch)
            if args.stop_after_steps and global_step >= args.stop_after_steps:
                stopped = True
                break
        if cuda:
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if stopped and step_in_epoch < steps_per_epoch:
            checkpoint(epoch, step_in_epoch)
            break
        mean_loss = all_reduce_sum([loss_sum.item(), n_steps], device)
        row = {"event": "epoch", "epoch": epoch + 1, "step": global_step,
               "train_loss": mean_loss[0] / max(1, mean_loss[1]), "lr": sched.get_last_lr()[0],
               "images_per_s": train_images / max(train_time, 1e-9), "wall_s": time.perf_counter() - t_start}
        sync_buffers(raw, *([ema.module] if ema is not None else []))
        if test_loader is not None:
            ev = evaluate(ema.module if ema is not None else raw, test_loader, test_ds, device, amp, channels_last)
            row.update(test_top1=ev["top1"], test_loss=ev["loss"], test_count=ev["count"])
        results.append(row)
        log_line(row)
        if is_main and not args.quiet:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        epoch, step_in_epoch = epoch + 1, 0
        checkpoint(epoch, 0)
    if trace is not None:
        trace.close()
    wall = time.perf_counter() - t_start
    sync_buffers(raw)
    digests = [param_digest(raw)]
    if dist.is_initialized():
        gathered: list = [None] * world
        dist.all_gather_object(gathered, digests[0])
        digests = gathered
    if is_main and not stopped:
        last = results[-1] if results else {}
        dev_name = torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)"
        summary = {"top1": last.get("test_top1"), "test_loss": last.get("test_loss"),
                   "train_loss": last.get("train_loss"), "epochs": args.epochs, "steps": global_step,
                   "images_per_s": train_images / max(train_time, 1e-9), "train_s": train_time,
                   "wall_s": wall, "setup_s": setup_s, "device": dev_name, "world": world,
                   "model": state(epoch, 0)["model_config"], "scheme": manifest.scheme,
                   "scheme_params": manifest.scheme_params, "key_ids": key_ids, "dataset": manifest.name,
                   "param_digests": digests, "checkpoint": str(out / CHECKPOINT),
                   "command": " ".join(sys.argv) if argv is None else " ".join(argv),
                   "date": _dt.date.today().isoformat()}
        (out / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        if True:  # the summary table is printed even with --quiet
            print(format_table([[manifest.scheme, summary["model"]["name"], args.epochs, global_step,
                                 f"{summary['top1']:.2f}" if summary["top1"] is not None else "-",
                                 round(summary["images_per_s"]), round(wall, 1), dev_name]],
                               ["scheme", "model", "epochs", "steps", "top-1 %", "images/s", "wall s", "device"]))
            print(f"checkpoint: {out / CHECKPOINT}; summary: {out / SUMMARY}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
