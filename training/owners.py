"""Many owners' keys in one model: which owners a run trains on, and one input layer per owner.

``--owners all`` pools every owner's samples into one model (each owner's ciphertexts are another input
domain the model must learn at once); ``--owners NAME`` reads that owner's shards only;
``--owner-adapters`` gives each owner its own input layer in front of one shared body, and
``--add-owner NAME --init-from CKPT`` later adds one owner's input layer to such a model, training only
it, on that owner's shards, with the body frozen. A checkpoint records owner -> key id -> adapter
(``owners`` in it), so ``training.predict`` picks the adapter from the key's id.

Why a per-owner first layer can absorb a key: a key is a fixed reparametrisation of the input. A
block-wise cipher that applies the same pixel shuffle P and sign flips S (negative-positive, an exact
sign flip after normalising with mean = std = 0.5) in every M×M block maps each flattened block x to
x' = S·P·x. A patch embedding with patch = block computes E·x per block; the layer E' = E·Pᵀ·S gives
E'·x' = E·Pᵀ·S·S·P·x = E·x (S² = I, PᵀP = I), so the shared body sees exactly the plain features: the
key is absorbed *exactly* (MaungMaung & Kiya 2022, sec. III-C).
A ViT's per-owner position embedding also absorbs a permutation of whole blocks (block scrambling)
exactly, since positions are then only relabelled. Everywhere else the per-owner layer can only
*learn* an approximation: EtC's per-block rotation, flip and colour shuffle differ from block to block
(one shared patch embedding cannot undo them), block scrambling under ConvMixer (no position embedding:
the body's convolutions see the blocks moved), PE's per-pixel signs (a pattern that does not repeat
with the patch), LE's nibble flips (not linear in the pixel value), and any patch that is not one
block. The adaptation networks (``--adapt pe|block``) are per-owner as a whole: a small non-linear
network per owner, learned.

Routing is vectorised, with no Python loop over samples: per-owner patch convolutions run as one batched
matrix product of each sample's patches with its owner's weights (index_select over the stacked weights);
any other per-owner layer (the adaptation networks, with their batch norms) runs once per owner on its
samples, the batch grouped by owner once (one sort, one gather, one scatter).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from lcrypt.keys import Key
from training.errors import TrainError

ALL = "all"


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--owners", default=ALL, help="all: every owner's shards pooled into one model (the default); or one "
      "owner's name: that owner's shards only (train and test)")
    a("--owner-adapters", action="store_true", help="one input layer per owner (ConvMixer/ViT: patch "
      "embedding, ViT also position embedding; with --adapt: the adaptation network) before one shared "
      "body; batches mix owners")
    a("--add-owner", metavar="NAME", help="add owner NAME to the --owner-adapters model of --init-from: "
      "train only its new input layer on its shards, the body frozen")
    a("--init-from", metavar="CKPT", help="the checkpoint --add-owner starts from")


@dataclasses.dataclass
class OwnerPlan:
    """What a run does with the dataset's owners; ``owners`` is what the checkpoint records."""

    mode: str  # "all", "one", "adapters" or "add"
    owners: list[dict[str, Any]]  # [{"name", "key_id", "adapter": index or None}]
    read: str | None = None  # the one owner whose shards are read; None: every owner's
    base: dict[str, Any] | None = None  # --init-from's checkpoint (mode "add")

    @property
    def adapters(self) -> int:
        return sum(o["adapter"] is not None for o in self.owners)

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "owners": self.owners}

    def config(self) -> dict[str, Any]:
        """What tells this run's configuration from a pooled one's (``--resume auto``)."""
        return {} if self.mode == ALL else {"owners": self.mode, "read": self.read,
                                            "adapters": self.adapters}

    def describe(self) -> str:
        names = ", ".join(o["name"] for o in self.owners)
        if self.mode == ALL:
            return f"all, pooled ({names})"
        if self.mode == "one":
            return f"{self.read} only"
        if self.mode == "adapters":
            return f"adapters ({names})"
        return f"add {self.read} (adapter {self.adapters - 1}), body frozen"

    def router(self, manifest, device: torch.device) -> Callable[[dict], tuple]:
        """``batch -> extra forward arguments``: the adapter index of each sample, from its owner index
        in ``manifest`` (one lookup, vectorised); nothing when the model has no adapters."""
        if not self.adapters:
            return no_route
        by_key = {o["key_id"]: o["adapter"] for o in self.owners if o["adapter"] is not None}
        lut = torch.tensor([by_key.get(o.key_id, -1) for o in manifest.owners], device=device)
        return lambda batch: (lut[batch["owner"].to(device, non_blocking=True)],)


def no_route(batch: dict) -> tuple:
    return ()


def plan_owners(args: argparse.Namespace, manifest, world: int) -> OwnerPlan:
    """Check ``--owners``, ``--owner-adapters``, ``--add-owner`` / ``--init-from`` against the dataset
    (one-line refusals); with ``--add-owner`` the model flags become the checkpoint's."""
    names = [o.name for o in manifest.owners]
    every = [{"name": o.name, "key_id": o.key_id, "adapter": None} for o in manifest.owners]
    if (args.add_owner is None) != (args.init_from is None):
        raise TrainError("--add-owner NAME and --init-from CKPT go together: give both (the checkpoint of "
                         "an --owner-adapters run, and the new owner's name)")
    if args.add_owner is not None and (args.owner_adapters or args.owners != ALL):
        raise TrainError("--add-owner trains one new owner's adapter: leave out --owners and "
                         "--owner-adapters")
    wanted = args.add_owner if args.add_owner is not None else args.owners
    if wanted != ALL and wanted not in names:
        flag = "--add-owner" if args.add_owner is not None else "--owners"
        raise TrainError(f"{flag} {wanted}: no such owner in the dataset --data {args.data} (owners: "
                         f"{', '.join(names)}); give one of them" + ("" if args.add_owner else " or all"))
    if (args.owner_adapters or args.add_owner) and (args.mixup > 0 or args.cutmix > 0):
        raise TrainError("--mixup/--cutmix blend two samples, which may be two owners', while each sample "
                         "goes through one owner's adapter: leave them at 0 with owner adapters")
    if args.owner_adapters and args.owners != ALL:
        raise TrainError(f"--owner-adapters gives each owner of the pooled dataset its own input layer: "
                         f"with --owners {args.owners} there is one owner; leave out one of the two")
    if wanted != ALL:
        check_owner_data(args, manifest, wanted, world)
    if args.add_owner is not None:
        return plan_added(args, manifest, wanted)
    if args.owner_adapters:
        return OwnerPlan("adapters", [{**o, "adapter": i} for i, o in enumerate(every)])
    if wanted == ALL:
        return OwnerPlan(ALL, every)
    return OwnerPlan("one", [o for o in every if o["name"] == wanted], read=wanted)


def check_owner_data(args: argparse.Namespace, manifest, name: str, world: int) -> None:
    """Enough of one owner's training samples for a batch per process, and a test split to evaluate."""
    from loaders.plan import kept_per_rank

    n = manifest.num_samples(args.train_split, name)
    if kept_per_rank(n, world, args.batch_size) == 0:
        raise TrainError(f"owner {name} has {n} samples in split {args.train_split!r}: no batch of "
                         f"{args.batch_size} per process on {world} processes; lower --batch-size")
    if args.test_split != "none" and not manifest.shards_for(args.test_split, name):
        raise TrainError(f"owner {name} has no shards in split {args.test_split!r}; choose another "
                         "--test-split ('none' skips evaluation)")


def plan_added(args: argparse.Namespace, manifest, name: str) -> OwnerPlan:
    """``--add-owner``: the base checkpoint's owners plus ``name`` with the next adapter; the run's model
    flags are set to the checkpoint's model."""
    from training.checkpoint import CheckpointError, check_same_data, read_checkpoint

    try:
        base = read_checkpoint(args.init_from)
        check_same_data(base, args.init_from, manifest)
    except CheckpointError as exc:
        raise TrainError(f"--init-from {exc}") from None
    owners = (base.get("owners") or {}).get("owners") or []
    if not any(o["adapter"] is not None for o in owners):
        raise TrainError(f"--init-from {args.init_from} was trained without --owner-adapters: it has no "
                         "per-owner input layers to add one to (train one with --owner-adapters)")
    key_id = manifest.owner(name).key_id
    if any(o["key_id"] == key_id or o["name"] == name for o in owners):
        raise TrainError(f"--add-owner {name}: the model of --init-from {args.init_from} already has an "
                         f"adapter for owner {name} or its key {key_id}")
    cfg = dict(base["model_config"])
    args.model, args.adapt = cfg.pop("name"), cfg.pop("adapt", "none")
    for k in ("adapt_block", "width", "depth", "patch", "kernel", "depthwise"):
        setattr(args, k, cfg.pop(k, None))
    new = {"name": name, "key_id": key_id, "adapter": len(owners)}
    return OwnerPlan("add", [*owners, new], read=name, base=base)


# -- the model ----------------------------------------------------------------------------------------
class RoutedInput(nn.Module):
    """One copy of a layer per owner (``pos``: an optional per-owner map added to its output, a ViT's
    per-owner position embedding of the patch tokens); each sample goes through its owner's copy.

    The owner indices come in through ``owner``, set by :class:`OwnerModel` for the length of one
    forward pass, so the layer can sit anywhere inside a timm model whose forward it does not own."""

    def __init__(self, layers: list[nn.Module], pos_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.pos = (nn.ParameterList([nn.Parameter(torch.zeros(pos_shape)) for _ in layers])
                    if pos_shape is not None else None)
        self.pos_shape = pos_shape
        self.owner: torch.Tensor | None = None

    def add(self, layer: nn.Module) -> None:
        self.layers.append(layer)
        if self.pos is not None:
            self.pos.append(nn.Parameter(torch.zeros(self.pos_shape, device=self.pos[0].device)))

    def one(self, index: int, x: torch.Tensor) -> torch.Tensor:
        y = self.layers[index](x)
        return y + self.pos[index] if self.pos is not None else y

    def patchwise(self) -> bool:
        """Whether every owner's layer is a bias-carrying patch convolution (kernel = stride, no padding):
        then :meth:`forward` runs them all as one batched matrix product."""
        return all(type(m) is nn.Conv2d and m.kernel_size == m.stride and m.padding == (0, 0)
                   and m.groups == 1 and m.dilation == (1, 1) and m.bias is not None for m in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        if owner is None:
            raise RuntimeError("an owner-adapter model needs each sample's owner: call it as model(x, owner)")
        if self.patchwise():
            return self.stacked(x, owner)
        counts = torch.bincount(owner, minlength=len(self.layers)).tolist()  # one host sync per batch
        if len(counts) > len(self.layers):
            raise ValueError(f"owner index {len(counts) - 1} has no adapter (adapters: {len(self.layers)})")
        present = [i for i, c in enumerate(counts) if c]
        if len(present) == 1:
            return self.one(present[0], x)
        order = torch.argsort(owner, stable=True)
        parts = x.index_select(0, order).split(counts)
        out = torch.cat([self.one(i, part) for i, part in enumerate(parts) if counts[i]])
        return torch.empty_like(out).index_copy(0, order, out)

    def stacked(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Patch convolutions as one ``baddbmm`` of each sample's patches with its owner's weights
        (index_select over the stacked weights): no regrouping of the batch."""
        n, _, h, w = x.shape
        ph, pw = self.layers[0].stride
        weight = torch.stack([m.weight.flatten(1) for m in self.layers]).index_select(0, owner)
        bias = torch.stack([m.bias for m in self.layers]).index_select(0, owner).unsqueeze(2)
        patches = nn.functional.unfold(x, (ph, pw), stride=(ph, pw))  # (B, C·ph·pw, L)
        out = torch.baddbmm(bias, weight, patches).view(n, -1, h // ph, w // pw)
        if self.pos is not None:
            out = out + torch.stack(list(self.pos)).index_select(0, owner)
        return out.contiguous(memory_format=torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)


class OwnerModel(nn.Module):
    """A model whose input layer (at ``path``) is a :class:`RoutedInput`; ``forward(x, owner)``."""

    def __init__(self, net: nn.Module, path: str):
        super().__init__()
        self.net, self.path = net, path
        self.num_classes = getattr(net, "num_classes", None)
        self.only: int | None = None  # the one adapter trained (``--add-owner``): the rest stays in eval

    @property
    def routed(self) -> RoutedInput:
        return self.net.get_submodule(self.path)

    def forward(self, x: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        routed = self.routed
        routed.owner = owner
        try:
            return self.net(x)
        finally:
            routed.owner = None

    def train(self, mode: bool = True) -> "OwnerModel":
        super().train(mode)
        if self.only is not None:  # a frozen body keeps its batch-norm statistics
            self.net.eval()
            self.routed.layers[self.only].train(mode)
        return self

    def train_only(self, index: int) -> None:
        """Freeze everything but adapter ``index`` (its layer and position map)."""
        self.requires_grad_(False)
        self.routed.layers[index].requires_grad_(True)
        if self.routed.pos is not None:
            self.routed.pos[index].requires_grad_(True)
        self.only = index
        self.train(self.training)


def input_layer(model: nn.Module) -> tuple[str, nn.Module, tuple[int, ...] | None]:
    """``(path, layer, shape of a per-owner position map or None)`` of the layer a key is absorbed by:
    the adaptation network, a timm patch embedding's projection (with the position embedding's shape
    when the model has one), or ConvMixer's stem convolution; ValueError for a model with none."""
    from timm.models.convmixer import ConvMixer

    from training.adaptation import Adapted

    if isinstance(model, Adapted):
        return "adapter", model.adapter, None
    embed = getattr(model, "patch_embed", None)
    if embed is not None and isinstance(getattr(embed, "proj", None), nn.Conv2d):
        grid = getattr(embed, "grid_size", None)
        pos = getattr(model, "pos_embed", None)
        shape = (embed.proj.out_channels, *grid) if pos is not None and grid is not None else None
        return "patch_embed.proj", embed.proj, shape
    if isinstance(model, ConvMixer) and isinstance(model.stem[0], nn.Conv2d):
        return "stem.0", model.stem[0], None
    raise ValueError(f"it has no input layer to specialise per owner ({type(model).__name__}): use "
                     "convmixer, vit or a timm model with a patch embedding, or put an adaptation network "
                     "in front with --adapt pe|block")


def owner_model(model: nn.Module, adapters: int) -> OwnerModel:
    """``model`` with its input layer (:func:`input_layer`) once per owner, each initialised on its own
    (:func:`fresh_copy`): owners' keys are unrelated, so no owner's layer starts from another's, and
    whatever two owners' layers share after training was learned (see lcrypt.attacks.adapter_leak)."""
    path, layer, pos_shape = input_layer(model)
    routed = RoutedInput([layer] + [fresh_copy(layer) for _ in range(adapters - 1)], pos_shape)
    model.set_submodule(path, routed)
    return OwnerModel(model, path)


def fresh_copy(layer: nn.Module) -> nn.Module:
    """A copy of ``layer`` with its parameters initialised anew (a new owner's key owes nothing to
    another owner's layer)."""
    new = copy.deepcopy(layer)
    for m in new.modules():
        if hasattr(m, "reset_parameters"):  # convolutions, linear layers, batch norms (with statistics)
            m.reset_parameters()
    return new


def build_owner_model(model: nn.Module, plan: OwnerPlan) -> nn.Module:
    """The run's model for ``plan``: unchanged without adapters; one input layer per owner; with
    ``--add-owner`` the base checkpoint's weights plus a fresh adapter, all else frozen."""
    if not plan.adapters:
        return model
    if plan.mode != "add":
        return owner_model(model, plan.adapters)
    out = owner_model(model, plan.adapters - 1)
    base = plan.base
    out.load_state_dict(base["ema"] if base.get("ema") is not None else base["model"])
    out.routed.add(fresh_copy(out.routed.layers[0]))
    out.train_only(plan.adapters - 1)
    return out


def check_resume_owners(ckpt: dict, path: str, plan: OwnerPlan) -> str | None:
    """Why ``ckpt`` cannot continue as this run's owners (another selection or other adapters), or None.
    A checkpoint from before owners were recorded pooled every owner."""
    theirs = ckpt.get("owners") or {"mode": ALL, "owners": plan.owners if plan.mode == ALL else []}
    if theirs != plan.record():
        def say(r):
            return f"{r['mode']} ({', '.join(o['name'] for o in r['owners'])})"
        return (f"checkpoint {path} was trained with owners {say(theirs)}, but this run asks for "
                f"{say(plan.record())}; resume with the checkpoint's owner flags, or start a new run")
    return None


def adapter_for(ckpt: dict, key: Key) -> int | None:
    """The adapter of the training owner holding ``key`` (None: the model has no adapters; a checkpoint
    may record a key's new or legacy id); ValueError naming the training owners for any other key."""
    owners = (ckpt.get("owners") or {}).get("owners")
    if owners is None:  # a checkpoint from before owners were recorded: every dataset key
        owners = [{"name": "?", "key_id": k, "adapter": None} for k in ckpt["key_ids"]]
    for o in owners:
        if key.has_id(o["key_id"]):
            return o["adapter"]
    trained = ", ".join(f"{o['name']} ({o['key_id']})" for o in owners)
    raise ValueError(f"key {key.key_id} is not one this model was trained with (its training owners' keys: "
                     f"{trained}); use the key file of one of them")
