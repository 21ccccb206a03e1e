"""Key-based model conversion: serve a plain-trained ViT or ConvMixer on encrypted images, exactly.

    lcrypt convert-model --key owner.key --scheme blockwise --param block_size=4 \\
        --checkpoint plain.pt --out enc.pt
    lcrypt convert-model --key owner.key --to-key other.key --checkpoint enc.pt --out other.pt

For a block-wise key that is one in-block transform shared by all blocks (:mod:`lcrypt.folding`), the
model that sees cipher blocks is the plain model with its patch embedding's input columns moved and
negated (and, for the ViT, its position-embedding rows moved by the block scrambling; the class token
stays), so nothing is retrained (Kiya et al. 2022, arXiv 2207.05366; Iijima & Kiya 2022, arXiv
2207.11939 for ConvMixer, whose stem is the patch embedding). What cannot fold is refused in one line:
a scheme whose blocks differ (``etc``), a patch size that is not the block size, block scrambling on a
ConvMixer (no position embedding; its depthwise convolutions mix neighbouring patches), a model with
an adaptation network. ``--to-key`` re-keys: the model is unfolded with the recorded owner's key and
folded with the new one. Before writing, the converted model is run on random images against the
plain one; the largest logit difference is in the summary, and a conversion that is not exact is not
written.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SUPPORTED = {"vit": ("patch_embed.proj", "pos_embed"), "convmixer": ("stem.0", None)}
"""Model name -> (its patch-embedding convolution, its position embedding or None)."""
TOLERANCE = 1e-4
HALF = (0.5, 0.5, 0.5)


def scheme_block_key(scheme, key, image_shape: Sequence[int], model: str, patch: int):
    """σ, P and S of ``scheme`` under ``key`` for ``model`` with ``patch``, or a one-line NotFoldable."""
    from lcrypt.folding import NotFoldable, block_key
    from lcrypt.schemes.base import IndexMap

    b = scheme.info.block_size
    if not b:
        raise NotFoldable(f"scheme {scheme.name!r} is not block-wise: a model absorbs only a key that is "
                          "the same in every block (try --scheme blockwise)")
    if b != patch:
        raise NotFoldable(f"block size {b} is not the {model}'s patch size {patch}: a patch embedding "
                          f"absorbs a block-wise key only when patch = block; use --param block_size={patch}")
    shape = tuple(int(v) for v in image_shape)
    t = scheme._transform(key, shape)
    if not isinstance(t, IndexMap) or t.nibbles:
        raise NotFoldable(f"scheme {scheme.name!r} is not a gather and negative-positive of whole values")
    try:
        bk = block_key(t.src, t.mask, shape, b)
    except NotFoldable as exc:
        raise NotFoldable(f"scheme {scheme.name!r} cannot be folded into a model: {exc}") from None
    if model == "convmixer" and bk.scrambles:
        raise NotFoldable("a ConvMixer cannot absorb block scrambling (no position embedding; its depthwise "
                          "convolutions mix neighbouring patches): use --param scramble=false")
    return bk


def fold_state(state: dict[str, Any], model: str, bk, mean=HALF, std=HALF, inverse: bool = False
               ) -> dict[str, Any]:
    """A copy of a model's state dict folded for cipher blocks (``inverse``: back to plain ones)."""
    import torch

    from lcrypt.folding import fold_patch_embedding, fold_positions

    conv, pos = SUPPORTED[model]
    out = dict(state)
    w = state[f"{conv}.weight"]
    b = state.get(f"{conv}.bias")
    nw, nb = fold_patch_embedding(w.double().numpy(), None if b is None else b.double().numpy(), bk,
                                  mean, std, inverse=inverse)
    out[f"{conv}.weight"] = torch.from_numpy(nw).to(w.dtype).contiguous()
    if b is not None:
        out[f"{conv}.bias"] = torch.from_numpy(nb).to(b.dtype)
    if pos is not None and bk.scrambles:
        p = state[pos]
        out[pos] = torch.from_numpy(fold_positions(p[0].numpy(), bk, inverse=inverse)).to(p.dtype)[None]
    return out


def patch_size(state: dict[str, Any], model: str) -> int:
    w = state[f"{SUPPORTED[model][0]}.weight"]
    return int(w.shape[-1])


def model_kind(ckpt: dict[str, Any], path: str) -> str:
    """The checkpoint's model name when it is one convert-model folds, else a one-line refusal."""
    from lcrypt.folding import NotFoldable

    cfg = ckpt.get("model_config") or {}
    name, adapt = cfg.get("name"), cfg.get("adapt", "none")
    if name not in SUPPORTED:
        raise NotFoldable(f"--checkpoint {path} is a {name!r} model; convert-model folds keys into "
                          f"{' and '.join(SUPPORTED)} models only")
    if adapt not in (None, "", "none"):
        raise NotFoldable(f"--checkpoint {path} has an adaptation network ({adapt!r}) in front of the "
                          "backbone: only a bare vit or convmixer folds a key")
    conv = SUPPORTED[name][0]
    if f"{conv}.weight" not in ckpt["model"]:
        raise NotFoldable(f"--checkpoint {path}: its weights have no {conv} (not a {name} of "
                          "training.models)")
    return name


def convert_checkpoint(ckpt: dict[str, Any], key, scheme, from_key=None, mean=HALF, std=HALF,
                       path: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint serving images encrypted with ``scheme`` under ``key``.

    Without ``from_key`` the checkpoint must be of a plain model; with it, its recorded scheme and key
    are unfolded first (re-keying), and ``from_key`` must be one it records."""
    from lcrypt import get_scheme
    from lcrypt.folding import NotFoldable

    model = model_kind(ckpt, path)
    shape = ckpt["image_shape"]
    patch = patch_size(ckpt["model"], model)
    weights = {k: ckpt[k] for k in ("model", "ema") if ckpt.get(k) is not None}
    if from_key is None:
        if ckpt["scheme"] != "plain":
            raise NotFoldable(f"--checkpoint {path} serves {ckpt['scheme']!r} images; convert-model converts "
                              "plain models: re-key an encrypted one with --to-key")
    else:
        if not any(from_key.has_id(k) for k in ckpt["key_ids"]):
            raise NotFoldable(f"--key {from_key.key_id} is not the key --checkpoint {path} was converted or "
                              f"trained with ({', '.join(ckpt['key_ids'])}); give that owner's key file")
        old = get_scheme(ckpt["scheme"], **ckpt["scheme_params"])
        old_bk = scheme_block_key(old, from_key, shape, model, patch)
        norm = ckpt.get("normalization") or {}
        weights = {k: fold_state(v, model, old_bk, norm.get("mean", mean), norm.get("std", std), inverse=True)
                   for k, v in weights.items()}
    bk = scheme_block_key(scheme, key, shape, model, patch)
    out = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "loader", "global_step")}
    out.update({k: fold_state(v, model, bk, mean, std) for k, v in weights.items()})
    out["model_config"] = {**ckpt["model_config"], "patch": patch}
    out.update(scheme=scheme.name, scheme_params=dict(scheme.params), key_ids=[key.key_id],
               scheme_info=scheme.info.as_dict(*shape[:2]),
               normalization={"mean": [float(v) for v in np.broadcast_to(mean, (3,))],
                              "std": [float(v) for v in np.broadcast_to(std, (3,))]},
               converted_from={"scheme": ckpt["scheme"], "key_ids": list(ckpt.get("key_ids") or [])})
    return out


def logit_gap(plain_ckpt: dict[str, Any], plain_key, new_ckpt: dict[str, Any], new_key, images: int = 2,
              seed: int = 0) -> float:
    """Largest |logit difference| between the source model on its images and the converted model on
    the same images encrypted for it (both in eval mode; random images, mean = std = 0.5)."""
    import torch

    from lcrypt import get_scheme
    from loaders.augment import normalize
    from training.predict import load_model

    shape = tuple(plain_ckpt["image_shape"])
    plain = np.random.default_rng(seed).integers(0, 256, (images, *shape), dtype=np.uint8)
    outs = []
    for ck, key in ((plain_ckpt, plain_key), (new_ckpt, new_key)):
        x = plain if ck["scheme"] == "plain" else get_scheme(ck["scheme"], **ck["scheme_params"]).encrypt(
            plain, key)
        with torch.no_grad():
            outs.append(load_model(ck)(normalize(torch.from_numpy(x))))
    return float((outs[0] - outs[1]).abs().max())


# -- the command ---------------------------------------------------------------------------------
def three(flag: str, values: Sequence[float]) -> tuple[float, float, float]:
    """One value for every colour, or three; a std must be positive."""
    from lcrypt.errors import UserError

    if len(values) not in (1, 3) or (flag == "--std" and min(values) <= 0):
        raise UserError(f"{flag} takes 1 or 3 values{' above 0' if flag == '--std' else ''}, got "
                        f"{' '.join(map(str, values))}")
    return tuple(float(v) for v in np.broadcast_to(values, (3,)))


def run(args: argparse.Namespace) -> int:
    from lcrypt import get_scheme
    from lcrypt.cli import parse_params
    from lcrypt.errors import UserError
    from lcrypt.keys import Key
    from lcrypt.table import format_table
    from training.checkpoint import read_checkpoint, save_checkpoint

    out = Path(args.out)
    if out.exists():
        raise UserError(f"--out {out} already exists: convert-model never overwrites a file; choose another")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    key = Key.load(args.key)
    to_key = Key.load(args.to_key) if args.to_key else None
    ckpt = read_checkpoint(args.checkpoint)
    if to_key is None and not args.scheme:
        raise UserError("give --scheme (e.g. --scheme blockwise --param block_size=16), or --to-key to "
                        "re-key")
    if args.scheme:
        scheme = get_scheme(args.scheme, **parse_params(args.param))
    else:
        scheme = get_scheme(ckpt["scheme"], **{**ckpt["scheme_params"], **parse_params(args.param)})
    mean, std = three("--mean", args.mean), three("--std", args.std)
    if to_key is None:
        new = convert_checkpoint(ckpt, key, scheme, None, mean, std, path=args.checkpoint)
        target, source_key = key, None
    else:
        new = convert_checkpoint(ckpt, to_key, scheme, key, mean, std, path=args.checkpoint)
        target, source_key = to_key, key
    gap = logit_gap(ckpt, source_key, new, target) if mean == HALF and std == HALF else float("nan")
    if gap > TOLERANCE:
        raise UserError(f"the converted model's logits differ from the source's by {gap:.2g} "
                        f"(> {TOLERANCE}); nothing written: report this model and scheme")
    save_checkpoint(out, new)
    cfg = new["model_config"]
    params = ",".join(f"{k}={v}" for k, v in new["scheme_params"].items())
    print(format_table([[cfg["name"], cfg["patch"], f"{new['scheme']}({params})", target.key_id,
                         f"{gap:.1e}", str(out)]],
                       ["model", "patch", "scheme", "key", "max |Δlogit|", "written"]))
    print("Serve it on images encrypted with this key (python -m training.predict --checkpoint "
          f"{out} --key KEY IMAGE...); the key stays with its owner.")
    return 0


def add_command(subparsers: Any) -> None:
    """Register `lcrypt convert-model` (declared in pyproject's lcrypt.commands entry points)."""
    p = subparsers.add_parser("convert-model", help="fold a block-wise key into a trained ViT/ConvMixer",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--key", required=True, help="owner key file (the checkpoint's key when re-keying)")
    p.add_argument("--scheme", help="scheme to convert for (required unless --to-key)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="scheme parameter, repeatable")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by training.train")
    p.add_argument("--out", required=True, help="converted checkpoint to create; never overwritten")
    p.add_argument("--to-key", help="re-key: the new owner's key file")
    p.add_argument("--mean", type=float, nargs="+", default=list(HALF),
                   help="input normalisation mean (1 or 3 values; training uses 0.5)")
    p.add_argument("--std", type=float, nargs="+", default=list(HALF),
                   help="input normalisation std (1 or 3 values; training uses 0.5)")
    p.set_defaults(func=run)


def convert_model(model, key, scheme, image_shape: Sequence[int], mean=HALF, std=HALF):
    """A converted copy of a timm ViT or ConvMixer (Python API; the checkpoint path is convert_checkpoint)."""
    from timm.models.convmixer import ConvMixer
    from timm.models.vision_transformer import VisionTransformer

    from lcrypt.folding import NotFoldable

    kinds = {VisionTransformer: "vit", ConvMixer: "convmixer"}
    kind = next((v for k, v in kinds.items() if isinstance(model, k)), None)
    if kind is None:
        raise NotFoldable(f"a {type(model).__name__} is neither a timm VisionTransformer nor a ConvMixer")
    state = model.state_dict()
    bk = scheme_block_key(scheme, key, image_shape, kind, patch_size(state, kind))
    new = copy.deepcopy(model)
    new.load_state_dict(fold_state(state, kind, bk, mean, std))
    return new
