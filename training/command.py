"""``lcrypt train``: the `lcrypt` subcommand that runs :mod:`training.train` in this process.

Declared in pyproject's ``lcrypt.commands`` entry points; lcrypt itself never imports training. Every
argument after ``train`` goes to training.train's own parser unchanged, so ``lcrypt train ARGS`` is
``python -m training.train ARGS`` (its ``--help`` too), and loading the plugin imports neither torch
nor timm: ``lcrypt keygen`` stays fast.
"""

from __future__ import annotations

import argparse


def add_command(subparsers) -> None:
    """The `lcrypt train` plugin."""
    p = subparsers.add_parser("train", add_help=False,
                              help="train a classifier on an encrypted dataset (python -m training.train; "
                              "`lcrypt train --help` for its options)")
    p.set_defaults(func=run_args, accepts_extra=True)


def run_args(args: argparse.Namespace) -> int:
    from training.train import run

    return run(list(getattr(args, "extra", []) or []), prog="lcrypt train")
