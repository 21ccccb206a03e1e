"""The client side of the papers' test phase: encrypt a plain image with the owner's key, classify it.

    python -m training.predict --checkpoint runs/train/checkpoint.pt --key owner.key IMAGE [IMAGE ...]

The owner keeps the key; the server holds a model trained on ciphertexts. The image is read by
lcrypt's rules, resized/cropped to the training image size, encrypted with the scheme recorded in the
checkpoint, normalised like the training data (mean 0.5, std 0.5) and classified. A key whose id is not
among the checkpoint's training keys is refused: the model would output noise for it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from training.checkpoint import read_checkpoint
from training.errors import first_line


class PredictError(ValueError):
    pass


def load_model(checkpoint: dict):
    """Rebuild the trained model (EMA weights when present) from a weights-only checkpoint."""
    from training.models import create_model

    cfg = dict(checkpoint["model_config"])
    name, adapt = cfg.pop("name"), cfg.pop("adapt", "none")
    info = checkpoint.get("scheme_info") or {}
    model = create_model(name, len(checkpoint["class_names"]), checkpoint["image_shape"][0],
                         info.get("block_size"), adapt=adapt, **cfg)
    try:
        model.load_state_dict(checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"])
    except RuntimeError as exc:  # torch lists every mismatched tensor over many lines
        raise PredictError(f"the checkpoint's weights do not fit its own model_config ({name}): "
                           f"{first_line(exc)}") from None
    return model.eval()


def encrypt_for(checkpoint: dict, images: np.ndarray, key) -> np.ndarray:
    """Encrypt plain uint8 (N, H, W, 3) images as the training data was (scheme + the owner's key)."""
    from lcrypt import get_scheme

    if not any(key.has_id(k) for k in checkpoint["key_ids"]):  # a checkpoint may record legacy key ids
        raise PredictError(f"key {key.key_id} is not one this model was trained with "
                           f"({checkpoint['key_ids']}); use the data owner's key file that encrypted the "
                           "training set")
    return get_scheme(checkpoint["scheme"], **checkpoint["scheme_params"]).encrypt(images, key)


def read_plain(path: str, size: tuple[int, int]) -> np.ndarray:
    """One client image by lcrypt's rules, resized/cropped to ``size``; a PredictError naming it otherwise."""
    from lcrypt.images import ImageRejected, decode_image

    try:
        return decode_image(Path(path).read_bytes(), size=size)
    except ImageRejected as exc:
        raise PredictError(f"{path}: {exc}") from None
    except OSError as exc:
        raise PredictError(f"{path}: cannot read it ({exc.strerror or exc})") from None


@torch.no_grad()
def classify(model, encrypted: np.ndarray, top: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(top-k probabilities, top-k class indices)`` for encrypted uint8 images."""
    from loaders.augment import normalize

    probs = model(normalize(torch.from_numpy(np.ascontiguousarray(encrypted)))).softmax(1)
    p, i = probs.topk(min(top, probs.shape[1]), dim=1)
    return p.numpy(), i.numpy()


def run(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--key", required=True, help="the data owner's key file")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args(argv)
    from lcrypt.keys import Key
    from lcrypt.table import format_table

    if args.top < 1:
        print(f"training.predict: error: --top {args.top} is out of range: it must be at least 1",
              file=sys.stderr)
        return 2
    try:  # every refusal is one line: checkpoint, key, images, then the model itself
        ckpt = read_checkpoint(args.checkpoint)
        key = Key.load(args.key)
        h, w = ckpt["image_shape"][:2]
        plain = np.stack([read_plain(p, (h, w)) for p in args.images])
        enc = encrypt_for(ckpt, plain, key)
        model = load_model(ckpt)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"training.predict: error: {first_line(exc)}", file=sys.stderr)
        return 2
    probs, idx = classify(model, enc, args.top)
    names = ckpt["class_names"]
    rows = [[Path(p).name, *[f"{names[i]} {pr:.2f}" for pr, i in zip(pp, ii)]]
            for p, pp, ii in zip(args.images, probs, idx)]
    print(format_table(rows, ["image", *[f"top-{k + 1}" for k in range(idx.shape[1])]]))
    return 0


if __name__ == "__main__":
    sys.exit(run())
