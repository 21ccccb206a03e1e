"""How to train on a dataset, as commands generated from its manifest (the card, the demo and the README
print these, so they cannot drift from what the data needs).

timm reads an lcrypt dataset through its WebDataset reader (``--dataset wds/NAME``, which loads
``_info.json``), but its defaults would change the pixels the model sees: ImageNet's mean and std, a
resize to 224 px, random crops and flips that cut the scheme's blocks apart. :func:`timm_train_args`
gives the flags that keep the stored pixels as they are: ``--input-size 3 H W``, ``--crop-pct 1.0`` (no
resize, no crop), ``--no-aug`` and mean = std = 0.5 per channel, the normalisation lcrypt's own trainer
uses. The augmentations a scheme keeps (its ``scheme_info.augmentations``) run in lcrypt's trainer, which
knows the block grid.
"""

from __future__ import annotations

import shlex

from lcrypt.format import IMAGE_EXT, Manifest

TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("validation", "val", "valid", "test", "testing", "dev", "eval", "evaluation")
NORMALISE = ("0.5", "0.5", "0.5")
TIMM_MODEL = "resnet18"
RUNS = "../runs"  # beside the release folder: nothing is written into it


def splits_for_training(m: Manifest) -> tuple[str, str]:
    """``(train split, validation split)``: the named ones when present, else the first split for both."""
    names = list(m.splits)
    train = next((s for s in TRAIN_SPLITS if s in m.splits), names[0] if names else "train")
    val = next((s for s in VAL_SPLITS if s in m.splits and s != train), train)
    return train, val


def timm_train_args(m: Manifest, data_dir: str = ".") -> list[str]:
    """The arguments of timm's train.py (after ``--model``) that read ``m``'s shards as stored."""
    if IMAGE_EXT.get(m.encoding) not in ("png", "jpg"):
        raise ValueError(f"timm's WebDataset reader decodes png/jpg members; this dataset stores "
                         f"{m.encoding}")
    train, val = splits_for_training(m)
    h, w = m.image_shape[:2]
    return ["--dataset", f"wds/{m.name}", "--data-dir", data_dir, "--train-split", train, "--val-split", val,
            "--num-classes", str(m.num_classes), "--input-size", "3", str(h), str(w),
            "--mean", *NORMALISE, "--std", *NORMALISE, "--crop-pct", "1.0", "--no-aug"]


def timm_command(m: Manifest, data_dir: str = ".", model: str = TIMM_MODEL, output: str = RUNS) -> str:
    """``python train.py --model MODEL ...``: timm's training script on ``m`` (one line, shell-quoted);
    its checkpoints go to ``output`` (outside the release folder, which holds only what was released)."""
    return shlex.join(["python", "train.py", "--model", model, *timm_train_args(m, data_dir),
                       "--output", output])


def lcrypt_train_command(m: Manifest, data_dir: str = ".", output: str = RUNS) -> str:
    """lcrypt's trainer on ``m``: it normalises, augments by the scheme's rules and checks every shard."""
    train, val = splits_for_training(m)
    return shlex.join(["python", "-m", "training.train", "--data", data_dir, "--model", "convmixer",
                       "--train-split", train, "--test-split", val if val != train else "none",
                       "--epochs", "10", "--out", f"{output}/{m.name}"])


def datasets_snippet(m: Manifest, data: str | None = None) -> str:
    """Hugging Face ``datasets`` code that loads ``m`` with its class names: from ``data`` (a folder or a
    Hub repo id), by default from the working directory (``load_dataset(".")`` names no dataset)."""
    train, _ = splits_for_training(m)
    image = IMAGE_EXT.get(m.encoding, m.encoding)
    owner = m.owners[0].name if m.owners else "OWNER"
    where = (["import os", "from datasets import load_dataset", "",
              "DATA = os.getcwd()  # this folder (run from it), or its Hugging Face repo id"] if data is None
             else ["from datasets import load_dataset", "", f"DATA = {data!r}"])
    return "\n".join([
        *where,
        f"ds = load_dataset(DATA, split={train!r})",
        f"one = load_dataset(DATA, name={owner!r}, split={train!r})  # one owner's shards",
        'names = ds.features["cls"].names  # class names, index = label',
        f'print(names[ds[0]["cls"]], ds[0][{image!r}])  # label and encrypted image',
    ])
