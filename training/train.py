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

Refusals are one line on stderr (``training.train: error: ...``) and exit status 2, and whatever can be
checked is checked before ``--out`` is touched: numbers and model name, the dataset (manifest, splits,
enough samples for a batch, every shard present with its manifest byte size), the model configuration
and a ``--resume`` checkpoint (same key ids, scheme and parameters, image shape, classes and model
architecture as this run). While a run uses ``--out`` it holds a lock there (``.lcrypt-train.lock``:
pid, host, start time), so a second run into the same folder is refused, naming the first. Under
torchrun every rank runs the checks and the ranks agree on the outcome, so all stop together, with
rank 0 printing the error; a shard found damaged while reading (short, altered, bad tar, an image of
another size, a label outside the classes) stops its rank with a one-line error naming the shard, and
torchrun then stops the others.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
LOCK = ".lcrypt-train.lock"


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


def first_line(exc: BaseException) -> str:
    """An exception's first line (torch's load and state-dict errors run over many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not one training.train wrote (one-line message)."""


MODEL_FIELDS = ("model", "model_config", "key_ids", "scheme", "scheme_params", "image_shape", "class_names")
RESUME_FIELDS = (*MODEL_FIELDS, "optimizer", "scheduler", "loader", "global_step")


def read_checkpoint(path: str | os.PathLike, fields: Sequence[str] = MODEL_FIELDS) -> dict[str, Any]:
    """:func:`load_checkpoint`, refusing in one line a missing file or one without ``fields``."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (give a checkpoint.pt written by "
                              "training.train)")
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # torch.load's errors (zip, pickle, weights_only) span many types and lines
        why = first_line(exc)
        if why.startswith("Weights only load failed"):  # torch goes on to suggest weights_only=False: never
            why = ("not a file of tensors and plain types as torch.save writes them (pickled objects are "
                   "never loaded)")
        raise CheckpointError(f"{path} cannot be loaded as a training checkpoint: {why}") from None
    missing = [k for k in fields if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training.train checkpoint (no {', '.join(missing)})")
    return ckpt


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


# -- checks before any output -------------------------------------------------------------------------
class TrainError(Exception):
    """A refusal printed as one line (``training.train: error: ...``), exit status 2.

    ``all_ranks``: every rank reaches it alike (arguments, dataset, checkpoint, the ``--out`` lock, checks
    the ranks agreed on), so only rank 0 prints it; otherwise only the rank that hit it knows it.
    """

    def __init__(self, message: str, all_ranks: bool = True):
        super().__init__(message)
        self.all_ranks, self.reported = all_ranks, False

    def report(self, rank: int) -> None:
        """Print the one line (once, and on rank 0 only when every rank has the same error)."""
        if not self.reported and (rank == 0 or not self.all_ranks):
            print(f"training.train: error: {self}", file=sys.stderr, flush=True)
        self.reported = True


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers in range and a known model, before anything is read or created."""
    from training.models import list_models

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
    rules += [(f"--{k}", getattr(args, k), getattr(args, k) >= 1, "at least 1")
              for k in ("width", "depth", "patch", "kernel") if getattr(args, k) is not None]
    for flag, value, ok, rule in rules:
        if not ok or not math.isfinite(value):
            raise TrainError(f"{flag} {value} is out of range: it must be {rule}")
    if args.model not in list_models():
        raise TrainError(f"unknown --model {args.model!r}; choose one of {', '.join(list_models())}")
    if not (args.device in ("auto", "cpu") or args.device.startswith("cuda")):
        raise TrainError(f"unknown --device {args.device!r}; choose auto, cpu or cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {args.device} asked for, but this machine has no usable CUDA device; "
                         "use --device cpu (or auto)")


def open_dataset(args: argparse.Namespace, world: int):
    """``(manifest, base folder)`` of ``--data``, with the splits this run reads and enough samples."""
    from lcrypt.format import ManifestError
    from loaders.dataset import load_manifest
    from loaders.plan import kept_per_rank

    try:
        manifest, base = load_manifest(args.data)
    except (ManifestError, OSError, ValueError) as exc:
        raise TrainError(f"cannot read the dataset --data {args.data}: {exc}") from None
    for split in [args.train_split] + ([args.test_split] if args.test_split != "none" else []):
        if split not in manifest.splits or not manifest.shards_for(split):
            raise TrainError(f"the dataset {args.data} has no split {split!r} (splits: "
                             f"{', '.join(manifest.splits) or 'none'}); choose one with --train-split / "
                             "--test-split ('none' skips evaluation)")
    n = manifest.num_samples(args.train_split)
    if kept_per_rank(n, world, args.batch_size) == 0:
        raise TrainError(f"{n} training samples give no batch of {args.batch_size} per process on {world} "
                         "processes; lower --batch-size")
    return manifest, base


def load_resume(args: argparse.Namespace) -> tuple[dict | None, str | None]:
    """``(checkpoint, path)`` to continue from, or ``(None, None)``; unreadable ones are refused."""
    resume = args.resume
    if resume == "auto":
        auto = Path(args.out) / CHECKPOINT
        resume = str(auto) if auto.exists() else None
    if not resume:
        return None, None
    try:
        return read_checkpoint(resume, RESUME_FIELDS), resume
    except CheckpointError as exc:
        raise TrainError(f"--resume {exc}") from None


def check_resume(ckpt: dict, path: str, manifest, architecture: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint on another dataset or another model: name the first field that
    differs, both values, and what to do."""
    from loaders.dataset import KeyMismatchError, check_key_ids
    from training.models import architecture as arch_of

    try:
        check_key_ids(manifest, ckpt["key_ids"], f"checkpoint {path}")
    except KeyMismatchError as exc:
        raise TrainError(str(exc)) from None
    new_run = "or train from scratch into another --out (without --resume)"
    data_fields = [("scheme", ckpt["scheme"], manifest.scheme),
                   ("scheme parameters", ckpt["scheme_params"], manifest.scheme_params),
                   ("image shape", list(ckpt["image_shape"]), list(manifest.image_shape)),
                   ("class count", len(ckpt["class_names"]), manifest.num_classes),
                   ("class names", list(ckpt["class_names"]), list(manifest.class_names))]
    for field, theirs, ours in data_fields:
        if theirs != ours:
            raise TrainError(f"checkpoint {path} was trained on data with {field} {theirs!r}, but --data "
                             f"{manifest.name!r} has {ours!r}; resume on the dataset the checkpoint was "
                             f"trained on, {new_run}")
    cfg = dict(ckpt["model_config"])
    try:
        theirs = arch_of(cfg.pop("name"), cfg.pop("adapt", "none"), **cfg)
    except (KeyError, ValueError) as exc:
        raise TrainError(f"checkpoint {path} has an unusable model_config: {exc}") from None
    for field in ("name", "adapt", *sorted(set(theirs) | set(architecture) - {"name", "adapt"})):
        if theirs.get(field) != architecture.get(field):
            flag = "--model" if field == "name" else f"--{field}"
            want, have = theirs.get(field), architecture.get(field)
            raise TrainError(f"checkpoint {path} is a model with {flag} {want}, but this run asks for {flag} "
                             f"{have}; resume with the checkpoint's {flag} {want}, {new_run}")


def agree(error: str | None) -> str | None:
    """The lowest rank's error if any rank has one, on every rank (so they all stop, or none does)."""
    if not dist.is_initialized():
        return error
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    return next((e for e in gathered if e), None)


# -- the --out lock -----------------------------------------------------------------------------------
class OutLock:
    """An exclusive lock on ``--out`` (:class:`lcrypt.lock.FileLock` on ``OUT/.lcrypt-train.lock``), so a
    second run into the same folder is refused, naming the first. A killed run's leftover file locks
    nothing: the next run takes it over. The file is removed at the end, also when the run is stopped by
    SIGTERM (what torchrun sends the other ranks when one fails)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out / LOCK
        self.lock = None
        self.made_out = False
        self.previous_handler: Any = None

    def acquire(self) -> None:
        from lcrypt.lock import FileLock, LockBusy

        self.made_out = not self.out.exists()
        self.lock = FileLock(self.path)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
            self.lock.write_holder(command="training.train")
        except LockBusy as exc:
            self.abandon()
            raise TrainError(f"--out {self.out} is in use by another training run ({exc.holder}); wait for it "
                             "to end, or give another --out") from None
        except OSError as exc:
            self.lock.release()
            self.abandon()
            raise TrainError(f"cannot use --out {self.out}: {exc.strerror or exc}") from None
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """Remove the lock file and leave at once (no unwinding through DataLoader or collectives)."""
        self.release()
        os._exit(128 + signum)

    def release(self) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)
            self.previous_handler = None
        if self.lock is not None:
            self.lock.release()
        self.abandon()

    def abandon(self) -> None:
        """Remove ``--out`` again if this run made it and left nothing in it."""
        if self.made_out:
            try:
                self.out.rmdir()
            except OSError:
                pass


# -- main ---------------------------------------------------------------------------------------------
def run(argv: Sequence[str] | None = None) -> int:
    """Train; a refusal is one line on stderr and exit status 2, with nothing created before it."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        return train(args, argv)
    except TrainError as exc:
        exc.report(rank)
        return 2


def train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from loaders.dataset import check_shards
    from training.models import architecture, create_model

    # everything that can be refused is checked before --out is touched
    check_arguments(args)
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    manifest, base = open_dataset(args, world_env)
    key_ids = sorted(o.key_id for o in manifest.owners)
    info = manifest.scheme_info or manifest.scheme_object().info.as_dict(*manifest.image_shape[:2])
    block = info.get("block_size")
    model_kw = {k: getattr(args, k) for k in ("width", "depth", "patch", "kernel", "depthwise")}
    torch.manual_seed(args.seed)
    try:
        model = create_model(args.model, manifest.num_classes, manifest.image_shape[0], block,
                             adapt=args.adapt, **model_kw)
    except ValueError as exc:
        raise TrainError(f"cannot build --model {args.model}: {exc}") from None
    ckpt, resume = load_resume(args)
    if ckpt is not None:
        check_resume(ckpt, resume, manifest, architecture(args.model, args.adapt, **model_kw))

    rank, world, local, device = setup_distributed(args.device)
    is_main = rank == 0
    out = Path(args.out)
    lock = OutLock(out)
    try:
        splits = [args.train_split] + ([args.test_split] if args.test_split != "none" else [])
        problems = check_shards(manifest, base, splits)
        if problems:
            more = f" (and {len(problems) - 1} more shard problems)" if len(problems) > 1 else ""
            problem = problems[0] + more
        else:
            problem = None
        if problem := agree(problem):
            raise TrainError(problem)
        lock_error = None
        if is_main:
            try:
                lock.acquire()
            except TrainError as exc:
                lock_error = str(exc)
        if lock_error := agree(lock_error):
            raise TrainError(lock_error)
        out.mkdir(parents=True, exist_ok=True)  # other ranks: rank 0 made it (or another node did)
    except TrainError as exc:
        if dist.is_initialized():  # every rank is here with the same error: rank 0 says it, all leave
            exc.report(rank)
            dist.barrier()  # (torchrun stops the others as soon as one rank exits)
            dist.destroy_process_group()
        raise exc from None
    try:
        return train_locked(args, argv, manifest, model, ckpt, key_ids, info, model_kw, rank, world, local,
                            device, out)
    except shards_errors() as exc:  # a shard found damaged while reading: this rank stops, naming it
        from loaders.dataset import loader_error_message

        raise TrainError(loader_error_message(exc), all_ranks=False) from None
    except RuntimeError as exc:
        if world > 1 and peer_lost(exc):  # another rank stopped (its own error says why)
            raise TrainError(f"rank {rank} stopped: another rank ended in the middle of a collective "
                             "operation; its own error says why", all_ranks=False) from None
        raise
    finally:
        lock.release()


def peer_lost(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo reports it as a plain
    RuntimeError; newer torch as DistError)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def shards_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or vanished shard raises (also when re-raised by a DataLoader worker)."""
    from lcrypt.format import ShardFormatError

    return ShardFormatError, OSError


def train_locked(args, argv, manifest, model, ckpt, key_ids, info, model_kw, rank, world, local, device, out
                 ) -> int:
    """The run itself, once every check passed and ``--out`` is locked."""
    from lcrypt.table import format_table
    from loaders.augment import AugmentConfig, EncryptedAugment, normalize

    is_main = rank == 0
    cuda = device.type == "cuda"
    amp = cuda and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    t_setup = time.perf_counter()
    train_loader, train_ds, test_loader, test_ds = build_data(args, args.data, rank, world, device, key_ids)
    steps_per_epoch = len(train_ds)
    total_steps = steps_per_epoch * args.epochs
    model = model.to(device)
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
        try:
            raw.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if ema is not None and ckpt.get("ema") is not None:
                ema.module.load_state_dict(ckpt["ema"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainError(f"--resume {args.resume}: the checkpoint does not fit this run's model or "
                             f"optimiser ({first_line(exc)}); resume with the checkpoint's settings, or "
                             "train from scratch into another --out") from None
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
