"""`lcrypt verify` finds and names each kind of damage to a prepared dataset."""

from __future__ import annotations

import shutil

import pytest

from lcrypt.format import Manifest, write_tar
from lcrypt.tarstream import iter_members
from lcrypt.verify import main as verify_main
from lcrypt.verify import verify
from pipelines.prepare import run
from tests.test_datasets import make_imagefolder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from lcrypt import Key

    root = tmp_path_factory.mktemp("verify")
    make_imagefolder(root / "src", per_class=3)
    Key.generate("owner").save(root / "k.key")
    assert run(["--source", str(root / "src"), "--scheme", "block-shuffle", "--keys", str(root / "k.key"),
                "--shard-size", "4", "--quiet", "--out", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture
def copy(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path / "ds")
    return tmp_path / "ds"


def test_intact_dataset_passes(prepared, capsys):
    assert verify(prepared, decode=True)[0] == []
    assert verify_main([str(prepared)]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_flipped_byte_is_named(copy, capsys):
    entry = Manifest.load(copy).shards[1]
    path = copy / entry.path
    data = bytearray(path.read_bytes())
    data[1500] ^= 0x01  # inside the first image payload
    path.write_bytes(bytes(data))
    problems, _ = verify(copy)
    assert any(entry.path in p and "sha256" in p for p in problems)
    assert verify_main([str(copy)]) == 1
    assert entry.path in capsys.readouterr().err


def test_a_missing_shard_is_named(copy):
    entry = Manifest.load(copy).shards[0]
    (copy / entry.path).unlink()
    problems, _ = verify(copy)
    assert problems == [f"{entry.path}: missing (the manifest lists it with {entry.count} samples); "
                        "re-run `lcrypt prepare` or restore the file"]


def test_a_truncated_shard_and_a_stray_shard_are_named(copy):
    m = Manifest.load(copy)
    entry = m.shards[0]
    data = (copy / entry.path).read_bytes()
    (copy / entry.path).write_bytes(data[:1200])
    shutil.copy(copy / m.shards[1].path, copy / "train" / "owner-000099.tar")
    problems, _ = verify(copy)
    text = "\n".join(problems)
    assert f"{entry.path}: 1200 bytes on disk" in text and "truncated" in text
    assert "train/owner-000099.tar: shard file not listed" in text


def test_swapped_shards_disagree_with_the_index(copy):
    m = Manifest.load(copy)
    a, b = [s for s in m.shards if s.split == "train"][:2]
    da, db = (copy / a.path).read_bytes(), (copy / b.path).read_bytes()
    (copy / a.path).write_bytes(db)
    (copy / b.path).write_bytes(da)
    problems, _ = verify(copy)
    assert any(a.path in p and "index.parquet" in p for p in problems)


def test_a_sample_that_breaks_the_sample_rule_is_named_and_the_rest_is_read(copy):
    m = Manifest.load(copy)
    entry = m.shards[0]
    with open(copy / entry.path, "rb") as f:
        members = list(iter_members(f))
    key = members[0][0].split(".")[0]
    odd = members[:2] + [(f"{key}.json", b"{}")] + members[2:]
    entry.bytes, entry.sha256 = write_tar(copy / entry.path, odd)
    m.save(copy)
    problems, totals = verify(copy)
    assert problems == [f"{entry.path}: sample {key!r} holds member(s) .json which lcrypt shards never "
                        "contain; refusing it (pickles and other types are never decoded). Re-create the "
                        "dataset with `lcrypt prepare`"]
    assert totals["samples"] == sum(s.count for s in m.shards)  # every sample counted, the odd one too


def test_not_a_dataset_folder(tmp_path):
    problems, _ = verify(tmp_path)
    assert len(problems) == 1 and "not found" in problems[0]
