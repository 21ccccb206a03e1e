"""A dataset folder's files: what they are called, and the error when one is missing or malformed. Each
is written with :func:`lcrypt.storage.atomic_write`, so a crash never leaves a file that looks complete.

A published lcrypt dataset folder holds::

    manifest.json     the manifest (:class:`lcrypt.format.Manifest`, format "lcrypt-dataset/1")
    index.parquet     one row per sample: key, shard, label, owner, split (:mod:`lcrypt.format.index`)
    _info.json        the same sample counts in the form timm's WebDataset reader loads (``{"name",
                      "splits": {split: {"name", "num_samples", "filenames", "shard_lengths"}}}``), so
                      ``timm train.py --dataset wds/NAME --data-dir DIR --train-split train`` runs on it
    errors.jsonl      one line per rejected source record: {"source", "split", "owner", "reason"}
    .lcrypt-prepare.lock, .fragments/   only while `lcrypt prepare` runs (left behind: it did not finish)
    {split}/{owner}-{index:06d}.tar   the shards (:mod:`lcrypt.format.names`)

A release (``lcrypt release``, :mod:`lcrypt.release`; layout in docs/releases.md) is such a folder without
errors.jsonl (it names source files), plus README.md (the dataset card), croissant.json, SHA256SUMS,
preview.png, rejections.json (rejections counted by reason), keys.pub.json, release.json and
signatures/{owner}.sig (:mod:`lcrypt.signatures`).
"""

from __future__ import annotations

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.parquet"
TIMM_INFO_NAME = "_info.json"
ERRORS_NAME = "errors.jsonl"
LOCK_NAME = ".lcrypt-prepare.lock"  # a prepare run's lock; left behind, it marks a run that did not finish
FRAGMENTS_NAME = ".fragments"  # prepare's scratch folder (encoded images before they are grouped into shards)

# A release's own files (beside manifest.json, index.parquet, _info.json and the shards).
CARD_NAME = "README.md"
CROISSANT_NAME = "croissant.json"
SUMS_NAME = "SHA256SUMS"
PREVIEW_NAME = "preview.png"
REJECTIONS_NAME = "rejections.json"
PUBLIC_KEYS_NAME = "keys.pub.json"
RELEASE_INFO_NAME = "release.json"
SIGNATURES_DIR = "signatures"
RELEASE_FILES = (CARD_NAME, CROISSANT_NAME, SUMS_NAME, PREVIEW_NAME, REJECTIONS_NAME, PUBLIC_KEYS_NAME,
                 RELEASE_INFO_NAME)


class ManifestError(ValueError):
    """manifest.json (or index.parquet) is missing, malformed or of another format version."""
