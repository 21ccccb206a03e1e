"""Encrypting and decrypting image files by hand (`lcrypt encrypt` / `lcrypt decrypt`): which files, where
their outputs go, and the mark an encrypted PNG carries.

``encrypt`` / ``decrypt`` rules:

- Inputs are files, or folders read recursively (every regular file: a file that is not an image is
  skipped with its reason, never ignored). Images are decoded by :mod:`lcrypt.images`' rules, as
  ``lcrypt prepare`` does; a file that breaks one, or whose size the scheme refuses (block schemes need
  multiples of the block size, ``catmap`` square images), is skipped with the rule and the run exits 1
  after writing the others. Outputs keep their path relative to the input folder, as lossless PNG.
- Each output is written to a temporary name and renamed, so no output is ever half-written.
- ``--out`` may not be an input folder or lie inside one (paths compared after resolving symlinks), no
  output may resolve to an input file, and no existing file is ever overwritten: choose a new ``--out``
  or remove the old output first. These are checked before anything is written.
- ``encrypt`` writes a PNG text chunk ``lcrypt`` holding JSON ``{"format": "lcrypt-image/1", "state":
  "encrypted", "scheme", "params" (as the scheme normalises them), "key_id", "owner"}`` (the public key
  fingerprint, never the secret), and refuses an input that carries it (no double encryption).
- ``decrypt`` refuses, before writing anything, an input whose chunk names another scheme, other
  parameters or another key than those given. An input without the chunk (an image taken out of a shard,
  a JPEG) cannot be checked: it is refused unless ``--allow-unmarked`` is given, and then decrypted with
  the scheme, parameters and key given and marked "unchecked" in the summary. Decrypted PNGs carry no
  chunk, so they are never mistaken for ciphertexts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lcrypt.errors import UserError
from lcrypt.images import ALLOWED_FORMATS, decode_image
from lcrypt.keys import Key
from lcrypt.schemes import Scheme

MARK_KEYWORD = "lcrypt"  # the PNG text chunk `lcrypt encrypt` writes
MARK_FORMAT = "lcrypt-image/1"


def list_files(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """``(file, path relative to its input)`` for files named directly and every file under the folders named.

    Every regular file is listed, not only those with an image suffix: the decoding rules decide, so a
    file that is not an image is reported with its reason rather than left out unnoticed.
    """
    files: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += [(f, f.relative_to(p)) for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.is_file():
            files.append((p, Path(p.name)))
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError(f"no files found in {', '.join(inputs)}")
    return files


def plan_outputs(inputs: Sequence[str], out: Path) -> list[tuple[Path, Path]]:
    """``(input, output PNG)`` pairs, refusing any ``--out`` that could overwrite an input or any file.

    Checked before anything is written (see the module docstring for the rule).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    out_real = out.resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if Path(item).is_dir() and (out_real == folder or folder in out_real.parents):
            raise UserError(f"--out {out} is (or is inside) the input folder {item}: the outputs could "
                            "overwrite the inputs and be read as inputs next time; choose an --out outside "
                            "the input folders")
    pairs = [(src, out / rel.with_suffix(".png")) for src, rel in list_files(inputs)]
    sources = {src.resolve(): src for src, _ in pairs}
    targets: dict[Path, Path] = {}
    existing = []
    for src, dst in pairs:
        real = dst.resolve()
        if real in sources:
            raise UserError(f"{src} would be written to {dst}, overwriting the input {sources[real]}; "
                            "choose an --out folder that holds no inputs")
        if real in targets:
            raise UserError(f"{targets[real]} and {src} would both write {dst}; rename one, or convert them "
                            "into separate --out folders")
        targets[real] = src
        if dst.exists() or dst.is_symlink():
            existing.append(dst)
    if existing:
        raise UserError(f"{existing[0]} already exists{more(existing)}: lcrypt never overwrites a file; "
                        "choose a new --out folder or remove the old output first")
    return pairs


def encryption_mark(scheme: Scheme, key: Key) -> dict[str, Any]:
    """What an encrypted PNG records about how it was made: public facts only, never the secret."""
    return {"format": MARK_FORMAT, "state": "encrypted", "scheme": scheme.name, "params": scheme.params,
            "key_id": key.key_id, "owner": key.owner}


def read_mark(path: Path) -> dict[str, Any] | None:
    """The ``lcrypt`` chunk of a PNG (``{}`` when it is damaged), or None when the file has none.

    Only the chunks before the pixel data are read (where `lcrypt encrypt` writes it), not the pixels.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG"]) as im:
                text = im.info.get(MARK_KEYWORD)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # not a PNG: the decoding rules accept or reject it later, with their reason
    if text is None:
        return None
    try:
        mark = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return mark if isinstance(mark, dict) and mark.get("format") == MARK_FORMAT else {}


def describe_mark(mark: dict[str, Any]) -> str:
    """``etc block_size=16 under key 1fc1... (owner o)``, or what is known of a damaged chunk."""
    if not mark:
        return "an unreadable lcrypt chunk"
    params = mark.get("params")
    text = " ".join(f"{k}={v}" for k, v in sorted(params.items())) if isinstance(params, dict) else ""
    return (f"{mark.get('scheme')}{' ' + text if text else ''} under key {mark.get('key_id')} "
            f"(owner {mark.get('owner')})")


def refuse_marks(pairs: list[tuple[Path, Path]], direction: str, scheme: Scheme, key: Key,
                  allow_unmarked: bool) -> list[Path]:
    """Refuse double encryption and mismatched decryption up front; return the unmarked inputs."""
    given = encryption_mark(scheme, key)
    marks = [(src, read_mark(src)) for src, _ in pairs]
    if direction == "encrypt":
        bad = [(src, m) for src, m in marks if m is not None]
        if bad:
            src, m = bad[0]
            raise UserError(f"{src} is already encrypted with {describe_mark(m)}{more(bad)}: lcrypt does "
                            "not encrypt twice; give the plain images, or decrypt these first")
        return []
    # The key by either of its ids: PNGs written before ids were public-key fingerprints hold the legacy id.
    fields = ("scheme", "params")
    bad = [(src, m) for src, m in marks if m is not None
           and (any(m.get(f) != given[f] for f in fields) or not key.has_id(m.get("key_id")))]
    if bad:
        src, m = bad[0]
        raise UserError(f"{src} was encrypted with {describe_mark(m)}, but {describe_mark(given)} was "
                        f"given{more(bad)}; pass the --scheme, --param and --key it was encrypted with")
    unmarked = [src for src, m in marks if m is None and _looks_like_image(src)]
    if unmarked and not allow_unmarked:
        raise UserError(f"{unmarked[0]} carries no lcrypt chunk{more(unmarked)}, so the scheme, parameters "
                        "and key cannot be checked (an image out of a shard, or not written by `lcrypt "
                        "encrypt`); pass --allow-unmarked to decrypt it with those given, unchecked")
    return unmarked


def more(items: Sequence) -> str:
    """What a one-line error says about the other files it applies to."""
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _looks_like_image(path: Path) -> bool:
    """Whether Pillow recognises the file at all (the decoding rules judge the rest, with their reason)."""
    try:
        with Image.open(path, formats=ALLOWED_FORMATS):
            return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def decode_file(path: Path) -> np.ndarray:
    """One image file as (H, W, 3) uint8 by lcrypt.images' rules; ValueError gives the rule it breaks."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"unreadable: {exc.strerror}") from None
    return decode_image(data)


def convert_file(src: Path, scheme: Scheme, direction: str, key: Key) -> tuple[np.ndarray, np.ndarray]:
    """``(image, its encryption or decryption)``; ValueError gives the decoding or the scheme's rule."""
    image = decode_file(src)
    try:
        return image, getattr(scheme, direction)(image[None], key)[0]
    except ValueError as exc:
        raise ValueError(f"{scheme.name}: {exc}") from None
