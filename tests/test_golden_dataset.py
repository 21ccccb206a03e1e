"""The bytes `prepare` writes for a fixed input, key and options, checked in: a change to the shard
format, the manifest, the index or the sharding (which would make published datasets and their
signatures differ) fails here. Regenerate tests/golden/prepare.json only for a deliberate format change:
``LCRYPT_WRITE_GOLDEN=1 pytest tests/test_golden_dataset.py``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcrypt import Key
from lcrypt.format import Manifest
from pipelines.prepare import run

GOLDEN = Path(__file__).parent / "golden" / "prepare.json"
RUNS = {
    "two-owners-png": ["--scheme", "etc", "--param", "block_size=8", "--shard-size", "5",
                       "--max-reject-rate", "0.2"],
    "one-owner-jpeg": ["--scheme", "etc", "--param", "block_size=8", "--jpeg-quality", "85",
                       "--shard-size", "7", "--max-reject-rate", "0.2"],
    "npy-le": ["--scheme", "le", "--encoding", "npy", "--max-reject-rate", "0.2"],
}


def fixed_tree(root: Path) -> None:
    """Deterministic pixels in lossless PNGs (what prepare reads is the pixels, whatever bytes Pillow's
    encoder chose), plus a broken file, so the rejection path is in the golden output too."""
    rng = np.random.default_rng(2026)
    for split, n in (("train", 12), ("test", 4)):
        for cls in ("bird", "cat", "dog"):
            for i in range(n):
                path = root / split / cls / f"{cls}_{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, compress_level=1)
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")


def outputs(out: Path) -> dict[str, str]:
    """sha256 of every file of a dataset folder; manifest.json without its creation time."""
    got = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            rel = p.relative_to(out).as_posix()
            data = p.read_bytes()
            if rel == "manifest.json":
                m = Manifest.from_dict(json.loads(data))
                d = m.deterministic_dict()
                d.pop("lcrypt_version")
                data = json.dumps(d, sort_keys=True).encode()
            got[rel] = hashlib.sha256(data).hexdigest()
    return got


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    fixed_tree(root / "src")
    keys = {"alice": Key(bytes(range(32)), "alice", "2026-01-01T00:00:00+00:00"),
            "bob": Key(bytes(range(32, 64)), "bob", "2026-01-01T00:00:00+00:00")}
    for name, key in keys.items():
        key.save(root / f"{name}.key")
    owners = {"alice": {"key": "alice.key", "match": ["*/cat/*"]},
              "bob": {"key": "bob.key", "match": ["*/bird/*", "*/dog/*"]}}
    (root / "owners.json").write_text(json.dumps(owners))
    got = {}
    for name, flags in RUNS.items():
        keyfile = root / ("owners.json" if name == "two-owners-png" else "alice.key")
        assert run(["--source", str(root / "src"), "--keys", str(keyfile), "--out", str(root / name),
                    "--name", name, "--quiet", *flags]) == 0
        got[name] = outputs(root / name)
    return got


def test_prepare_writes_the_golden_bytes(prepared):
    if os.environ.get("LCRYPT_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps(prepared, indent=1, sort_keys=True) + "\n")
    assert prepared == json.loads(GOLDEN.read_text())
