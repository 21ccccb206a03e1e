"""The `lcrypt` command: keys, schemes, trying a scheme by hand, and the plugin subcommands.

Core subcommands live here; `prepare` (pipelines), `verify` and `evaluate` are plugins declared in
pyproject's ``lcrypt.commands`` entry points, so lcrypt never imports the packages that depend on it.
Every subcommand ends with a summary table and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import numpy as np

from lcrypt import __version__
from lcrypt.images import read_image
from lcrypt.keys import Key, KeyFileError
from lcrypt.preview import center_crop_square, preview_grid, save_png
from lcrypt.schemes import get_scheme, list_schemes
from lcrypt.table import format_table

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


# -- helpers ---------------------------------------------------------------------------------
def parse_params(pairs: Sequence[str] | None) -> dict[str, str]:
    """``["block_size=16", "color_shuffle=true"]`` -> dict; the scheme coerces and validates types."""
    params = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UserError(f"--param {pair!r} must look like name=value (e.g. --param block_size=16)")
        params[name.strip()] = value.strip()
    return params


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named directly, or found (recursively, sorted) in the folders named."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"input {item} does not exist")
    if not files:
        raise UserError("no images found in the inputs (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return files


# -- commands --------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    key = Key.generate(args.owner)
    path = key.save(args.out)
    print(format_table([[key.owner, key.key_id, str(path), "0600"]], ["owner", "key_id", "file", "mode"]))
    print("Keep this file secret and backed up: without it nobody, you included, can decrypt.")
    return 0


def cmd_schemes(args: argparse.Namespace) -> int:
    infos = [get_scheme(name).info for name in list_schemes()]
    if args.json:
        print(json.dumps([dict(i.as_dict(32, 32), **{"key_space_bits_224x224":
                                                     round(i.key_space_bits(224, 224), 1)}) for i in infos],
                         indent=2))
        return 0
    rows = [[i.name, i.block_size or "-", "yes" if i.invertible else "no", "yes" if i.lossless else "no",
             "/".join(i.jpeg_subsamplings) or "no", round(i.key_space_bits(32, 32)),
             round(i.key_space_bits(224, 224)), ",".join(i.augmentations), i.aug_grid, i.summary]
            for i in infos]
    print(format_table(rows, ["scheme", "block", "invertible", "lossless", "jpeg", "key bits 32²",
                              "key bits 224²", "server-side augmentations", "grid", "what"]))
    print("\nImages are uint8 RGB (N, H, W, 3) in and out. Key bits count the key space as the papers do;"
          " every scheme's keys derive from the owner's 256-bit key.")
    return 0


def _convert(args: argparse.Namespace, direction: str) -> int:
    scheme = get_scheme(args.scheme, **parse_params(args.param))
    key = Key.load(args.key)
    files = collect_images(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, names = [], set()
    for f in files:
        image = read_image(f)
        result = getattr(scheme, direction)(image[None], key)[0]
        target = out / (f.stem + ".png")
        if target.name in names:
            raise UserError(f"two inputs would both write {target}; encrypt them into separate --out folders")
        names.add(target.name)
        save_png(result, target)
        rows.append([f.name, f"{image.shape[0]}x{image.shape[1]}", str(target)])
    seconds = time.perf_counter() - start
    print(format_table(rows, ["input", "size", "output (lossless PNG)"]))
    print(f"\n{direction}ed {len(files)} image(s) with {args.scheme} {scheme.params or ''} under key "
          f"{key.key_id} ({key.owner}) in {seconds:.2f} s")
    if direction == "decrypt" and any(f.suffix.lower() in (".jpg", ".jpeg") for f in files):
        print("note: some inputs were JPEG: a lossy ciphertext decrypts only approximately")
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    return _convert(args, "encrypt")


def cmd_decrypt(args: argparse.Namespace) -> int:
    return _convert(args, "decrypt")


def cmd_preview(args: argparse.Namespace) -> int:
    key = Key.load(args.key) if args.key else Key.generate("preview")
    files = collect_images(args.inputs)[: args.limit]
    images = np.stack([center_crop_square(read_image(f), args.size) for f in files])
    schemes = args.schemes.split(",") if args.schemes else None
    grid = preview_grid(images, key, schemes)
    save_png(grid, args.out)
    shown = ["plain"] + [s for s in (schemes or list_schemes()) if s != "plain"]
    print(format_table([[len(files), f"{args.size}x{args.size}", len(shown), str(args.out),
                         key.key_id + ("" if args.key else " (throw-away)")]],
                       ["images", "size", "columns", "grid", "key"]))
    return 0


# -- parser ----------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction, name: str, func, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG/JPEG/...)")
    p.add_argument("--scheme", required=True, choices=list_schemes())
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="scheme parameter, repeatable")
    p.add_argument("--key", required=True, help="owner key file (from `lcrypt keygen`)")
    p.add_argument("--out", required=True, help="output folder for lossless PNGs")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcrypt", description="Learnable image encryption for private training data.")
    parser.add_argument("--version", action="version", version=f"lcrypt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("keygen", help="create a new owner key file (mode 0600)")
    p.add_argument("--owner", required=True, help="the data owner's name (recorded, not secret)")
    p.add_argument("--out", required=True, help="key file to create; never overwritten")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("schemes", help="list every scheme with its properties")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_schemes)

    _add_convert(sub, "encrypt", cmd_encrypt, "encrypt images with a scheme and key (PNG out)")
    _add_convert(sub, "decrypt", cmd_decrypt, "decrypt images encrypted by `lcrypt encrypt`")

    p = sub.add_parser("preview", help="grid of plain vs encrypted images for every scheme")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--key", help="owner key file; a throw-away key is used when omitted")
    p.add_argument("--schemes", help="comma-separated scheme names (default: all)")
    p.add_argument("--size", type=int, default=64, help="square size; a multiple of 16 (default 64)")
    p.add_argument("--limit", type=int, default=6, help="at most this many images (default 6)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=cmd_preview)

    for ep in sorted(entry_points(group="lcrypt.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as exc:  # an optional part (e.g. apache-beam) is not installed
            p = sub.add_parser(ep.name, help=f"(unavailable: {type(exc).__name__})", add_help=False)
            p.set_defaults(func=_unavailable(ep.name, exc))
    return parser


def _unavailable(name: str, exc: Exception):
    def run(args: argparse.Namespace) -> int:
        raise UserError(f"`lcrypt {name}` could not load ({type(exc).__name__}: {exc}); "
                        "install the extras with `pip install -e '.[dev]'`")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error("unrecognized arguments: " + " ".join(extra))
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except (UserError, KeyFileError, ValueError, FileNotFoundError) as exc:
        print(f"lcrypt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
