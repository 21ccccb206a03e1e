"""The `lcrypt` command: keys, schemes, trying a scheme by hand, and the plugin subcommands.

Core subcommands live here; `prepare` (pipelines), `verify`, `release` and `evaluate` are plugins declared in
pyproject's ``lcrypt.commands`` entry points, so lcrypt never imports the packages that depend on it.
Every subcommand ends with a summary table and returns an exit code: 0 done, 1 done but some inputs were
skipped (each named with its reason), 2 refused (one line on stderr naming the file or flag and the
rule; nothing written), 141 stdout was closed early (``lcrypt schemes --json | head -1``: the rest of
the output is dropped quietly, as a command killed by SIGPIPE would).

``encrypt`` / ``decrypt`` follow the rules of :mod:`lcrypt.imagefiles`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

import numpy as np

from lcrypt import __version__
from lcrypt.errors import UserError
from lcrypt.keys import Key, KeyFileError
from lcrypt.preview import center_crop_square, preview_grid, save_png
from lcrypt.schemes import get_scheme, list_schemes
from lcrypt.format import check_owner
from lcrypt.imagefiles import (MARK_KEYWORD, convert_file, decode_file, describe_mark, encryption_mark,
                               list_files, more, plan_outputs, refuse_marks)
from lcrypt.table import format_table

EXIT_SKIPPED, EXIT_REFUSED, EXIT_BROKEN_PIPE = 1, 2, 141


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


# -- commands --------------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        check_owner(args.owner)
    except ValueError as exc:
        raise UserError(f"--owner: {exc} (owner names go into shard file names)") from None
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
    out = Path(args.out)
    pairs = plan_outputs(args.inputs, out)
    unmarked = set(refuse_marks(pairs, direction, scheme, key, getattr(args, "allow_unmarked", False)))
    mark = json.dumps(encryption_mark(scheme, key), sort_keys=True) if direction == "encrypt" else None
    start = time.perf_counter()
    rows, skipped, written = [], [], 0
    for src, dst in pairs:
        try:
            image, result = convert_file(src, scheme, direction, key)
        except ValueError as exc:  # lcrypt.images' rules (ImageRejected), or the scheme's size rule
            skipped.append((src, str(exc)))
            rows.append([str(src), "-", f"skipped: {exc}"])
            continue
        try:
            save_png(result, dst, text={MARK_KEYWORD: mark} if mark else None)
        except OSError as exc:
            raise UserError(f"writing {dst}: {exc.strerror or exc}; {written} image(s) were written to {out} "
                            "before it (each complete)") from None
        written += 1
        note = " (unchecked: no lcrypt chunk)" if src in unmarked else ""
        rows.append([str(src), f"{image.shape[0]}x{image.shape[1]}", f"{dst}{note}"])
    seconds = time.perf_counter() - start
    print(format_table(rows, ["input", "size", "output (lossless PNG)"]))
    print(f"\n{direction}ed {written} image(s) with {describe_mark(encryption_mark(scheme, key))} in "
          f"{seconds:.2f} s" + (f"; skipped {len(skipped)} (not written)" if skipped else ""))
    if unmarked:
        print(f"note: {len(unmarked)} input(s) carried no lcrypt chunk: decrypted with the scheme, "
              "parameters and key given, unchecked; if they look like noise, one of those is not what they "
              "were encrypted with")
    if direction == "decrypt" and any(src.suffix.lower() in (".jpg", ".jpeg") for src, _ in pairs):
        print("note: some inputs were JPEG: a lossy ciphertext decrypts only approximately")
    return _report_skipped(args.command, skipped, len(pairs))


def _report_skipped(command: str, skipped: list[tuple[Path, str]], total: int) -> int:
    """One stderr line per skipped input, then the count; exit 1 when anything was skipped."""
    for src, reason in skipped:
        print(f"lcrypt {command}: skipped {src}: {reason}", file=sys.stderr)
    if not skipped:
        return 0
    print(f"lcrypt {command}: error: {len(skipped)} of {total} input(s) skipped (listed above); fix or "
          "remove them and run again", file=sys.stderr)
    return EXIT_SKIPPED


def cmd_encrypt(args: argparse.Namespace) -> int:
    return _convert(args, "encrypt")


def cmd_decrypt(args: argparse.Namespace) -> int:
    return _convert(args, "decrypt")


def cmd_preview(args: argparse.Namespace) -> int:
    if args.size < 1 or args.limit < 1:
        raise UserError(f"--size {args.size} and --limit {args.limit} must both be at least 1")
    names = args.schemes.split(",") if args.schemes else list_schemes()
    for name in names:
        block = get_scheme(name).info.block_size
        if block and args.size % block:
            raise UserError(f"--size {args.size} is not a multiple of {name}'s block size {block}; "
                            "choose a multiple of 16 (every scheme's default block fits)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the grid is a PNG; give a file name ending in .png")
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} already exists: lcrypt never overwrites a file; choose another name "
                        "or remove it first")
    key = Key.load(args.key) if args.key else Key.generate("preview")
    files = [src for src, _ in list_files(args.inputs)]
    images, skipped = [], []
    for src in files:
        if len(images) == args.limit:
            break
        try:
            images.append(center_crop_square(decode_file(src), args.size))
        except ValueError as exc:
            skipped.append((src, str(exc)))
    if not images:
        raise UserError(f"no usable image in the inputs ({skipped[0][0]}: {skipped[0][1]}"
                        f"{more(skipped)})")
    grid = preview_grid(np.stack(images), key, names)
    save_png(grid, out)
    shown = ["plain"] + [s for s in names if s != "plain"]
    print(format_table([[len(images), f"{args.size}x{args.size}", len(shown), str(out),
                         key.key_id + ("" if args.key else " (throw-away)")]],
                       ["images", "size", "columns", "grid", "key"]))
    return _report_skipped(args.command, skipped, len(images) + len(skipped))


# -- parser ----------------------------------------------------------------------------------
def _add_convert(sub: argparse._SubParsersAction, name: str, func, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG/JPEG/...)")
    p.add_argument("--scheme", required=True, choices=list_schemes())
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="scheme parameter, repeatable")
    p.add_argument("--key", required=True, help="owner key file (from `lcrypt keygen`)")
    p.add_argument("--out", required=True, help="output folder for lossless PNGs (outside the input folders; "
                   "existing files are never overwritten)")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcrypt",
                                     description="Learnable image encryption for private training data.")
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
    p = _add_convert(sub, "decrypt", cmd_decrypt, "decrypt images encrypted by `lcrypt encrypt`")
    p.add_argument("--allow-unmarked", action="store_true",
                   help="also decrypt images without lcrypt's chunk (e.g. out of a shard), unchecked")

    p = sub.add_parser("preview", help="grid of plain vs encrypted images for every scheme")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--key", help="owner key file; a throw-away key is used when omitted")
    p.add_argument("--schemes", help="comma-separated scheme names (default: all)")
    p.add_argument("--size", type=int, default=64, help="square size; a multiple of 16 (default 64)")
    p.add_argument("--limit", type=int, default=6, help="at most this many images (default 6)")
    p.add_argument("--out", required=True, help="PNG file to create; never overwritten")
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
    try:
        try:
            return _run(argv)
        finally:  # a closed pipe shows here (also after --help), not at exit where it prints a traceback
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error("unrecognized arguments: " + " ".join(extra))
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except (UserError, KeyFileError, ValueError) as exc:
        return _error(args.command, str(exc))
    except OSError as exc:  # e.g. a missing folder, permission denied, disk full: name the file
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(args.command, f"{where}{exc.strerror or exc}")


def _error(command: str, message: str) -> int:
    """One line on stderr, whatever the message holds."""
    print(f"lcrypt {command}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return EXIT_REFUSED


def _stdout_to_devnull() -> None:
    """The reader went away (``| head``): drop the rest of the output quietly, as a SIGPIPE'd command does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout is not a real file (a program replaced it)
        pass


if __name__ == "__main__":
    sys.exit(main())
