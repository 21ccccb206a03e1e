"""Train a classifier on an encrypted lcrypt dataset, on one CPU, one GPU or many (torchrun DDP).

    torchrun --nproc_per_node=N -m training.train --data DIR/manifest.json --model convmixer [...]
    lcrypt train --data DIR --model resnet18 --adapt pe [...]        (one process; = python -m training.train)

Read as timm's train.py: :func:`train` checks and sets up (arguments -> dataset -> model -> run folder and
``--resume`` checkpoint -> process group -> shards and the folder's lock -> loaders -> optimiser,
schedule, EMA, DDP), then each epoch calls :func:`train_one_epoch` (encrypted-domain augmentation from
the manifest's scheme properties, bf16 autocast on CUDA, clipping, EMA) and :func:`validate` (the
encrypted test split) and checkpoints, and the run ends with a summary. The parts live in
:mod:`training.args` (flags and their checks), :mod:`training.data`, :mod:`training.models` (lcrypt's
models and any timm model), :mod:`training.runs` (which folder a run writes), :mod:`training.optim`,
:mod:`training.checkpoint` (loaded with ``weights_only=True``), :mod:`training.distributed`,
:mod:`training.outdir` (metrics, curves, summary) and :mod:`training.estimate` (the CPU warning).

Each run writes into its own folder ``OUT/<date-time>-<scheme>-<model>`` (or ``OUT/<--name>``), never
into another run's; ``--resume`` continues one (:mod:`training.runs`). In it: ``checkpoint.pt``,
``run.json`` (run id, command, dataset, model), ``metrics.jsonl`` (epoch lines and ``"event": "step"``
lines every ``--log-every`` steps, each with the run id), ``metrics.csv``, ``curves.png``, TensorBoard
events with ``--tensorboard``, and ``summary.json`` (top-1, images/s, wall, device).

Determinism: the data order is a function of (seed, epoch) (:mod:`loaders.plan`), augmentation draws
from generators seeded by (seed, global step, rank), so ``--resume`` continues exactly where a run
stopped.

Refusals are one line on stderr (``training.train: error: ...``) and exit status 2, and whatever can be
checked is checked before anything is created: numbers and model name, the model on the dataset's image
size, the dataset (manifest, splits, enough samples for a batch, every shard present with its manifest
byte size), the run folder and a ``--resume`` checkpoint (same key ids, scheme and parameters, image
shape, classes and model architecture as this run). While a run uses its folder it holds a lock there
(``.lcrypt-train.lock``: pid, host, start time), so a second run into it is refused, naming the first.
Under torchrun every rank runs the checks and the ranks agree on the outcome, so all stop together, with
rank 0 printing the error; a shard found damaged while reading (short, altered, bad tar, an image of
another size, a label outside the classes) stops its rank with a one-line error naming the shard, and
torchrun then stops the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import torch
from torch import nn

from training import errors
from training.args import build_parser, check_arguments, model_config, model_options
from training.checkpoint import (CHECKPOINT, CheckpointError, Position, check_resume, checkpoint_state,
                                 load_resume, restore, run_identity, save_checkpoint)
from training.data import READ_ERRORS, Loaders, create_loaders, open_dataset, scheme_info
from training.distributed import (Process, all_reduce_sum, finish, launched, peer_lost, replica_digests,
                                  setup_distributed, sync_buffers)
from training.errors import TrainError, warn
from training.models import architecture, check_input, create_model, patch_mismatch
from training.optim import create_ema, create_optimizer, create_scheduler
from training.owners import (OwnerModel, OwnerPlan, build_owner_model, check_resume_owners, no_route,
                             plan_owners)
from training.outdir import MetricsLog, Throughput, summarize, write_summary
from training.estimate import cpu_estimate
from training.runs import RunPlan, RunRecord, claim_folder, plan_run, run_config


@dataclasses.dataclass
class Training:
    """What a run trains and how (the pieces timm's train.py keeps as locals of its main)."""

    model: nn.Module  # the parameters: what is checkpointed, evaluated and digested
    forward: nn.Module  # the model as training calls it: DDP and/or torch.compile around ``model``
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: Any  # timm's ModelEmaV2, or None
    augment: Any  # loaders.augment.EncryptedAugment
    criterion: nn.Module
    amp: bool  # bf16 autocast (CUDA only)
    channels_last: bool
    after_step: Callable[[int], None] | None = None  # told the steps taken so far (the CPU estimate)
    route: Callable[[dict], tuple] = no_route  # batch -> the model's extra inputs (owner adapters)

    @property
    def evaluated(self) -> nn.Module:
        """The weights evaluated: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


# -- the run ------------------------------------------------------------------------------------------
def run(argv: Sequence[str] | None = None, prog: str = "python -m training.train") -> int:
    """Train; a refusal is one line on stderr and exit status 2, with nothing created before it."""
    errors.PROG[0] = prog.removeprefix("python -m ")
    args = build_parser(__doc__.split("\n\n")[0], prog).parse_args(argv)
    try:
        return train(args, argv)
    except TrainError as exc:
        exc.report(launched()[0])
        return 2


def train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Check everything that can be refused before anything is created, lock the run folder, train."""
    check_arguments(args)
    manifest, base = open_dataset(args, world=launched()[1])
    info = scheme_info(manifest)
    owners = plan_owners(args, manifest, launched()[1])
    identity = run_identity(manifest, info, sorted(o.key_id for o in manifest.owners), model_config(args))
    identity["owners"] = owners.record()
    model = build_model(args, manifest, info)
    try:
        model = build_owner_model(model, owners)
    except (ValueError, RuntimeError) as exc:
        raise TrainError(f"--owner-adapters with --model {args.model}: {exc}") from None
    arch = architecture(args.model, args.adapt, args.adapt_block, **model_options(args))
    config = run_config(identity, {**arch, **owners.config()})
    plan = plan_run(args, config)
    ckpt = None
    if plan.checkpoint is not None:
        try:
            ckpt = load_resume(plan.checkpoint)
            check_resume(ckpt, str(plan.checkpoint), manifest, arch)
        except CheckpointError as exc:
            raise TrainError(str(exc)) from None
        if why := check_resume_owners(ckpt, str(plan.checkpoint), owners):
            raise TrainError(why)
        if ckpt["loader"]["epoch"] >= args.epochs:
            if launched()[0] == 0:
                print(f"run {plan.folder} has trained {ckpt['loader']['epoch']} epochs: nothing to do for "
                      f"--epochs {args.epochs} (a larger --epochs continues it)", flush=True)
            return 0
    proc = setup_distributed(args.device)
    folder, lock = claim_folder(args, manifest, base, plan, proc)
    try:
        return train_locked(args, argv, identity, config, model, ckpt, proc, folder, plan, owners, manifest)
    except READ_ERRORS as exc:  # a shard found damaged while reading: this rank stops, naming it
        from loaders.dataset import loader_error_message

        raise TrainError(loader_error_message(exc), all_ranks=False) from None
    except RuntimeError as exc:
        if proc.world > 1 and peer_lost(exc):  # another rank stopped (its own error says why)
            raise TrainError(f"rank {proc.rank} stopped: another rank ended in the middle of a collective "
                             "operation; its own error says why", all_ranks=False) from None
        raise
    finally:
        lock.release()


def build_model(args: argparse.Namespace, manifest, info: dict[str, Any]) -> nn.Module:
    """The model (lcrypt's or timm's, optional adaptation network), initialised from ``--seed`` and
    refused unless it takes the dataset's image size; a warning when its patches miss the cipher's
    blocks."""
    torch.manual_seed(args.seed)
    size, block = manifest.image_shape[0], info.get("block_size")
    try:
        model = create_model(args.model, manifest.num_classes, size, block, adapt=args.adapt,
                             adapt_block=args.adapt_block, **model_options(args))
        check_input(model, size)
    except ValueError as exc:
        raise TrainError(f"cannot build --model {args.model}: {exc}") from None
    if (why := patch_mismatch(model, block)) and launched()[0] == 0:
        warn(f"--model {args.model}: {why}")
    return model


def train_locked(args: argparse.Namespace, argv: Sequence[str] | None, identity: dict[str, Any],
                 config: dict[str, Any], model: nn.Module, ckpt: dict | None, proc: Process, folder: Path,
                 plan: RunPlan, owners: OwnerPlan, manifest) -> int:
    """The run itself, once every check passed and its folder is locked."""
    if proc.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_setup = time.perf_counter()
    record = RunRecord(folder, config, args, argv, proc.is_main)
    metrics = MetricsLog(folder, record.run_id, proc.is_main, args.tensorboard, record.write_once)
    data = create_loaders(args, proc, identity["key_ids"], owners.read)
    t, pos = setup_training(args, identity, model, ckpt, proc, data.steps_per_epoch)
    t.route = owners.router(manifest, proc.device)
    if plan.resumed:
        metrics.resume(pos.epoch, pos.global_step)
    if proc.device.type == "cpu" and proc.is_main:
        t.after_step = cpu_estimate(args, identity, data.steps_per_epoch, model_options(args)).after_step
    setup_s = time.perf_counter() - t_setup
    if proc.is_main and not args.quiet:
        print(f"training {args.model}{'+' + args.adapt if args.adapt != 'none' else ''} on "
              f"{identity['dataset']} ({identity['scheme']} {identity['scheme_params']}, keys "
              f"{identity['key_ids']}) | owners: {owners.describe()} | {proc.world} x {proc.device.type} | "
              f"{data.train_ds.num_samples} "
              f"train samples, {data.steps_per_epoch} steps/epoch x {args.epochs} | "
              f"augment: {', '.join(t.augment.describe()) or 'none'} | run {record.run_id}: {folder}",
              flush=True)

    def save(at: Position) -> None:
        if proc.is_main:
            record.write_once()
            loader = {**data.train_ds.state_dict(at.step), "epoch": at.epoch, "batch_size": args.batch_size}
            state = checkpoint_state(t.model, t.optimizer, t.scheduler, t.ema, loader, at.global_step,
                                     identity, args)
            save_checkpoint(folder / CHECKPOINT, state)

    speed = Throughput()
    stopped = train_epochs(args, t, data, pos, proc, speed, save, metrics, folder)
    wall = speed.wall()
    sync_buffers(t.model)
    digests = replica_digests(t.model, proc.world)
    if proc.is_main and not stopped:
        cuda = proc.device.type == "cuda"
        last = metrics.epochs[-1] if metrics.epochs else {}
        summary = summarize(
            last, identity, {"run": record.run_id, "run_dir": str(folder)}, epochs=args.epochs,
            steps=pos.global_step, images_per_s=speed.per_s, train_s=speed.seconds,
            wall_s=wall, setup_s=setup_s, world=proc.world, param_digests=digests,
            device=torch.cuda.get_device_name(proc.device) if cuda else f"cpu ({os.cpu_count()} cores)",
            checkpoint=str(folder / CHECKPOINT), date=_dt.date.today().isoformat(),
            command=" ".join(sys.argv) if argv is None else " ".join(argv))
        write_summary(folder, summary, folder / CHECKPOINT)
    metrics.close()
    finish()
    return 0


def setup_training(args: argparse.Namespace, identity: dict[str, Any], model: nn.Module, ckpt: dict | None,
                   proc: Process, steps_per_epoch: int) -> tuple[Training, Position]:
    """Model on its device, optimiser, schedule, EMA, the checkpoint's state (``--resume``), then DDP,
    compilation, augmentation and loss; returns them with the position to start from."""
    from timm.loss import SoftTargetCrossEntropy

    from loaders.augment import AugmentConfig, EncryptedAugment

    cuda = proc.device.type == "cuda"
    model = model.to(proc.device)
    channels_last = args.memory_format == "channels_last" or (cuda and args.memory_format == "auto")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, args)
    scheduler = create_scheduler(optimizer, args, steps_per_epoch)
    ema = create_ema(model, args)
    pos = Position()
    if ckpt is not None:
        try:
            pos = restore(ckpt, args.resume, model, optimizer, scheduler, ema, proc.world, args.batch_size)
        except CheckpointError as exc:
            raise TrainError(str(exc)) from None
    forward = model
    if proc.world > 1:
        forward = nn.parallel.DistributedDataParallel(  # an owner absent from a batch: its adapter unused
            model, device_ids=[proc.local] if cuda else None,
            find_unused_parameters=isinstance(model, OwnerModel))
    if args.compile:
        forward = torch.compile(forward)
    augment = EncryptedAugment(identity["scheme_info"], len(identity["class_names"]), AugmentConfig(
        flips=not args.no_flip, translate=args.translate, mixup=args.mixup, cutmix=args.cutmix,
        label_smoothing=args.label_smoothing))
    return Training(model, forward, optimizer, scheduler, ema, augment, SoftTargetCrossEntropy(),
                    amp=cuda and not args.no_amp, channels_last=channels_last), pos


# -- the loop -----------------------------------------------------------------------------------------
def train_epochs(args: argparse.Namespace, t: Training, data: Loaders, pos: Position, proc: Process,
                 speed: Throughput, save: Callable[[Position], None], metrics: MetricsLog, folder: Path
                 ) -> bool:
    """Epochs from ``pos`` to ``--epochs``: train, validate, log and checkpoint each; returns whether
    ``--stop-after-steps`` stopped the run."""
    trace = open(folder / f"samples-rank{proc.rank}.jsonl", "a") if args.trace_samples else None
    stopped = False
    t.forward.train()
    while pos.epoch < args.epochs and not stopped:
        loss_sum, n_steps, stopped = train_one_epoch(args, t, data, pos, proc, speed, save, metrics, trace)
        if stopped and pos.step < data.steps_per_epoch:
            save(pos)
            break
        total_loss, total_steps = all_reduce_sum([loss_sum.item(), n_steps], proc.device)
        row = {"event": "epoch", "epoch": pos.epoch + 1, "step": pos.global_step,
               "train_loss": total_loss / max(1, total_steps), "lr": t.scheduler.get_last_lr()[0],
               "images_per_s": speed.per_s, "wall_s": speed.wall()}
        sync_buffers(t.model, *([t.ema.module] if t.ema is not None else []))
        if data.test is not None:
            ev = validate(t.evaluated, data.test, data.test_ds, proc.device, t.amp, t.channels_last, t.route)
            row.update(test_top1=ev["top1"], test_loss=ev["loss"], test_count=ev["count"])
        metrics.write(row)
        if proc.is_main and not args.quiet:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
        pos.epoch, pos.step = pos.epoch + 1, 0
        save(pos)
    if trace is not None:
        trace.close()
    return stopped


def train_one_epoch(args: argparse.Namespace, t: Training, data: Loaders, pos: Position, proc: Process,
                    speed: Throughput, save: Callable[[Position], None], metrics: MetricsLog,
                    trace: IO[str] | None) -> tuple[torch.Tensor, int, bool]:
    """The steps of epoch ``pos.epoch`` from step ``pos.step`` (advancing ``pos``); returns the summed
    loss, the steps taken and whether ``--stop-after-steps`` was reached."""
    from loaders.augment import normalize

    device, cuda = proc.device, proc.device.type == "cuda"
    data.train_ds.set_epoch(pos.epoch, pos.step)
    bar = None
    if proc.is_main and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=data.steps_per_epoch, initial=pos.step, desc=f"epoch {pos.epoch + 1}/{args.epochs}",
                   dynamic_ncols=True, leave=False)
    gen = torch.Generator(device=device)  # re-seeded every step: a resumed run draws the same
    loss_sum = torch.zeros((), device=device)
    n_steps, stopped = 0, False
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in data.train:
        x = normalize(batch["image"].to(device, non_blocking=True), channels_last=t.channels_last)
        y = batch["label"].to(device, non_blocking=True)
        gen.manual_seed((args.seed * 1_000_003 + pos.global_step) * 1009 + proc.rank)
        x, target = t.augment(x, y, gen, np_seed=(args.seed, pos.global_step, proc.rank))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
            logits = t.forward(x, *t.route(batch))
        loss = t.criterion(logits.float(), target)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip_grad > 0:
            nn.utils.clip_grad_norm_(t.model.parameters(), args.clip_grad)
        t.optimizer.step()
        t.scheduler.step()
        if t.ema is not None:
            t.ema.update(t.model)
        loss_sum += loss.detach()
        n_steps += 1
        pos.global_step += 1
        pos.step += 1
        speed.images += len(y) * proc.world
        speed.steps += 1
        if t.after_step is not None:
            t.after_step(speed.steps)
        if trace is not None:
            keys = batch["key"] if "key" in batch else batch["index"].tolist()
            trace.write(json.dumps({"epoch": pos.epoch + 1, "step": pos.step - 1, "keys": keys}) + "\n")
        if bar is not None:
            bar.update(1)
            if pos.global_step % args.log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{t.scheduler.get_last_lr()[0]:.2e}")
        if pos.global_step % args.log_every == 0:
            metrics.write({"event": "step", "step": pos.global_step, "epoch": pos.epoch + 1,
                           "loss": float(loss.item()), "lr": t.scheduler.get_last_lr()[0]})
        if args.ckpt_every and pos.global_step % args.ckpt_every == 0:
            save(pos)
        if args.stop_after_steps and pos.global_step >= args.stop_after_steps:
            stopped = True
            break
    if cuda:
        torch.cuda.synchronize()
    speed.seconds += time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return loss_sum, n_steps, stopped


@torch.no_grad()
def validate(model: nn.Module, loader, ds, device: torch.device, amp: bool, channels_last: bool,
             route: Callable[[dict], tuple] = no_route) -> dict[str, Any]:
    """Top-1 and mean loss over the whole test split (each rank its share, summed over the ranks)."""
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
            logits = model(x, *route(batch))
        loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        n += len(y)
    c, total_loss, total = all_reduce_sum([correct.item(), loss.item(), n], device)
    model.train()
    return {"top1": 100.0 * c / max(1, total), "loss": total_loss / max(1, total), "count": int(total)}


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
