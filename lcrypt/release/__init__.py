"""Releases: a prepared dataset published as a signed, versioned folder that other tools read as it is.

``lcrypt release DATASET --version X.Y.Z --license SPDX --keys KEYS --out TARGET`` writes
``TARGET/X.Y.Z/``: the manifest's shards, manifest.json, index.parquet and _info.json, copied and checked,
plus a Hugging Face dataset card (README.md, :mod:`~lcrypt.release.card`), Croissant metadata
(croissant.json, :mod:`~lcrypt.release.croissant`), SHA256SUMS, preview.png, rejections.json (counts
by reason; errors.jsonl, which names source files, is never published), keys.pub.json, release.json
and one signature per owner whose key is given (:mod:`lcrypt.signatures`). Versions and the changelog:
:mod:`~lcrypt.release.versions`; making it appear complete or not at all: :mod:`~lcrypt.release.build`;
the commands a user trains with, generated from the manifest: :mod:`~lcrypt.release.usage`.
docs/releases.md describes the layout, the signed statement and what a signature proves.
"""

from lcrypt.release.build import ReleaseResult, ReleaseSpec, make_release
from lcrypt.release.usage import datasets_snippet, lcrypt_train_command, timm_command, timm_train_args

__all__ = ["ReleaseResult", "ReleaseSpec", "datasets_snippet", "lcrypt_train_command", "make_release",
           "timm_command", "timm_train_args"]
