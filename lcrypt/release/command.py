"""`lcrypt release DATASET --version X.Y.Z --license SPDX --keys KEYS --out TARGET`: the command.

Declared in pyproject's ``lcrypt.commands`` entry points, like ``verify``. Bad input is one line and exit 2
with nothing written (:mod:`lcrypt.release.build` checks everything first); key files may not lie inside
the dataset folder or the target (a key file must never be published by accident).
"""

from __future__ import annotations

import argparse
import time

from lcrypt.errors import UserError
from lcrypt.keys import Key, load_key_files
from lcrypt.release.build import ReleaseSpec, inside, make_release


def load_signing_keys(specs: list[str] | None, dataset: str, target: str) -> dict[str, Key]:
    """``{owner: key}`` from ``--keys`` (key files or owners files), refusing any file inside the dataset
    folder or the target."""
    keys: dict[str, Key] = {}
    for spec in specs or []:
        for where in (dataset, target):
            if inside(spec, where):
                raise UserError(f"--keys {spec}: a key file inside {where}; keep key files outside what "
                                "is published, then run again")
        for owner, (key, path) in load_key_files(spec).items():
            for where in (dataset, target):
                if inside(str(path), where):
                    raise UserError(f"--keys {spec}: {owner}'s key file {path} is inside {where}; keep key "
                                    "files outside what is published, then run again")
            if owner in keys and keys[owner] != key:
                raise UserError(f"--keys: two different keys for owner {owner!r}")
            keys[owner] = key
    return keys


def cmd_release(args: argparse.Namespace) -> int:
    from lcrypt.table import format_table

    start = time.perf_counter()
    keys = load_signing_keys(args.keys, args.dataset, args.out)
    spec = ReleaseSpec(version=args.version, license=args.license, keys=keys, unsigned=args.unsigned,
                       title=args.title, description=args.description, creator=args.creator,
                       homepage=args.homepage)
    result = make_release(args.dataset, args.out, spec)
    print(format_table([[args.version, result.files, f"{result.bytes:,}", ", ".join(result.signers) or
                         "unsigned", f"{time.perf_counter() - start:.1f}"]],
                       ["version", "files", "bytes", "signed by", "seconds"]))
    print(f"released {result.folder}: {result.change}")
    print(f"check it with: lcrypt verify {result.folder}" + "".join(
        f" --key-id {o}={k.key_id}" for o, k in sorted(keys.items())))
    return 0


def add_command(subparsers) -> None:
    """The `lcrypt release` plugin."""
    p = subparsers.add_parser("release", help="publish a prepared dataset as a signed, versioned release "
                              "(dataset card, Croissant, checksums)")
    p.add_argument("dataset", help="dataset folder made by `lcrypt prepare` (local or an fsspec URL)")
    p.add_argument("--version", required=True, help="semver MAJOR.MINOR.PATCH, greater than every version "
                   "already in --out")
    p.add_argument("--license", help="SPDX id of the data's license (required), e.g. CC-BY-4.0")
    p.add_argument("--keys", action="append", metavar="KEYS", help="an owner's key file or an owners file "
                   "(as for prepare), repeatable; each owner whose key is given signs the release")
    p.add_argument("--unsigned", action="store_true", help="publish without signatures (nobody vouches for "
                   "the release's origin)")
    p.add_argument("--out", required=True, help="release target: TARGET/VERSION/ is created (local folder "
                   "or an fsspec URL); an existing version is never overwritten")
    p.add_argument("--title", help="the card's title (default: the dataset name)")
    p.add_argument("--description", help="a paragraph for the card")
    p.add_argument("--creator", help="who publishes it (default: the owners' names)")
    p.add_argument("--homepage", help="a URL for the card and croissant.json")
    p.set_defaults(func=cmd_release)

