"""What the shard format calls things: owners, splits, shard paths, sample keys and member extensions.

A dataset folder holds one shard per (split, owner, index)::

    {split}/{owner}-{index:06d}.tar          e.g. train/hospital-a-000003.tar

Owner and split names go into those paths, so they are letters, digits, '-' and '_' only (no dots, no
slashes). A sample's key is opaque: the first 20 hex digits of HMAC-SHA256 of the record's source id
under a salt derived from the owner's key (:func:`sample_key`), so no source file name (which can
identify a person) reaches a shard, and nobody without the key can test a guessed file name against it.
The shard a sample goes to is a function of its key alone (:func:`shard_of`), which is what makes the
pipeline's output independent of how the runner bundles the work.

A sample's members are ``<key>.cls`` (:data:`LABEL_EXT`) and ``<key>.<ext>`` with ``ext`` the image
extension of the dataset's encoding (:data:`IMAGE_EXT`: png, npy or jpg).
"""

from __future__ import annotations

import hashlib
import hmac
import re

ENCODINGS = ("png", "npy", "jpeg")
IMAGE_EXT = {"png": "png", "npy": "npy", "jpeg": "jpg"}  # encoding -> member extension
IMAGE_EXTS = frozenset(IMAGE_EXT.values())  # the image members a shard may hold: png, npy, jpg
LABEL_EXT = "cls"
KEY_HEX_DIGITS = 20  # 80 bits: collision odds ~ n^2 / 2^81, negligible for any real dataset
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9_-]*)/(?P<owner>[A-Za-z0-9][A-Za-z0-9_-]*)"
                      r"-(?P<index>\d{6})\.tar$")


def check_owner(owner: str) -> str:
    """Owner names go into shard file names: letters, digits, '-' and '_' only (no dots, no slashes)."""
    if not isinstance(owner, str) or not OWNER_RE.match(owner):
        raise ValueError(f"owner name {owner!r} is not allowed: use 1-64 letters, digits, '-' or '_', "
                         "starting with a letter or digit")
    return owner


def check_split(split: str) -> str:
    """Split names are folder names of the dataset: the same characters as owner names."""
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ValueError(f"split name {split!r} is not allowed: use 1-64 letters, digits, '-' or '_'")
    return split


def shard_path(split: str, owner: str, index: int) -> str:
    """Relative path of a shard: ``{split}/{owner}-{index:06d}.tar`` (POSIX separators)."""
    return f"{check_split(split)}/{check_owner(owner)}-{int(index):06d}.tar"


def parse_shard_path(path: str) -> tuple[str, str, int]:
    """``(split, owner, index)`` of a relative shard path, or ValueError."""
    m = SHARD_RE.match(path)
    if not m:
        raise ValueError(f"{path!r} is not an lcrypt shard path ({{split}}/{{owner}}-{{index:06d}}.tar)")
    return m["split"], m["owner"], int(m["index"])


def sample_key_salt(key) -> bytes:
    """The per-owner salt of sample keys, derived from the owner's :class:`lcrypt.Key` (never the secret)."""
    return key.derive("lcrypt/sample-key-salt/v1")


def sample_key(source_id: str, salt: bytes) -> str:
    """Opaque, deterministic sample key: 20 hex digits of HMAC-SHA256(salt, source id)."""
    return hmac.new(salt, source_id.encode("utf-8"), hashlib.sha256).hexdigest()[:KEY_HEX_DIGITS]


def shard_of(key: str, num_shards: int) -> int:
    """The shard a sample key belongs to among ``num_shards``: a uniform function of the (salted) key."""
    return int(key[:15], 16) % num_shards


def num_shards_for(count: int, shard_size: int) -> int:
    """How many shards hold ``count`` samples at about ``shard_size`` per shard (at least one)."""
    return max(1, -(-count // shard_size))
