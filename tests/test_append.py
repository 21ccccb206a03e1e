"""`prepare --append` and `--retry-failed`: only records the dataset lacks are decoded and encrypted, into
new shards numbered after the dataset's; its shards stay byte-identical; the result holds what one prepare
of everything holds; new owners join, new classes are rejected; errors.jsonl loses the lines of records
that now pass; a run that would change how the dataset was made is refused in one line, changing nothing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lcrypt import Key, get_scheme
from lcrypt.format import Manifest, decode_shard, parse_shard_path, read_index, read_samples
from lcrypt.verify import verify
from pipelines.prepare import run
from tests.faults.test_prepare import one_line_error, snapshot
from tests.test_datasets import make_imagefolder, make_images, png_bytes
from tests.test_golden_dataset import outputs

SCHEME = ["--scheme", "etc", "--param", "block_size=8"]
BROKEN = ("train/cat/broken.png", "test/dog/cut.png")  # rejected by the first prepare


def _new(rel: str) -> bool:
    return rel.rsplit("_", 1)[-1] in ("000.png", "001.png", "002.png")  # one per class and split


def _count_decodes(monkeypatch) -> list[str]:
    import pipelines.encrypt as encrypt

    seen: list[str] = []
    real = encrypt.decode_record
    monkeypatch.setattr(encrypt, "decode_record", lambda r, **kw: seen.append(r.source_id) or real(r, **kw))
    return seen


def _samples(out: Path) -> dict[str, tuple[bytes, bytes]]:
    """key -> (label member, image member) over every shard of a dataset."""
    m = Manifest.load(out)
    return {s[0]: (s[1], s[3]) for e in m.shards for s in read_samples((out / e.path).read_bytes())}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """A dataset of 18 images (+2 broken) by two owners, and a source with 6 more: prepared, then grown."""
    root = tmp_path_factory.mktemp("append")
    truth = make_imagefolder(root / "all", per_class=4)
    (root / "all" / BROKEN[0]).write_bytes(b"not an image")
    good = (root / "all" / "test/dog/img_011.png").read_bytes()
    (root / "all" / BROKEN[1]).write_bytes(good[: len(good) // 2])
    shutil.copytree(root / "all", root / "old")
    for rel in filter(_new, truth):
        (root / "old" / rel).unlink()
    keys = {n: Key.generate(n) for n in ("alice", "bob", "carol")}
    for n, k in keys.items():
        k.save(root / f"{n}.key")
    owners = {"alice": {"key": "alice.key", "match": ["train/*"]},
              "bob": {"key": "bob.key", "match": ["test/*"]}}
    (root / "owners.json").write_text(json.dumps(owners))
    argv = [*SCHEME, "--keys", str(root / "owners.json"), "--shard-size", "4", "--max-reject-rate", "0.2",
            "--quiet"]
    assert run(argv + ["--source", str(root / "old"), "--out", str(root / "base" / "pets")]) == 0
    assert run(argv + ["--source", str(root / "all"), "--out", str(root / "whole" / "pets")]) == 0
    shutil.copytree(root / "base", root / "grown")
    with pytest.MonkeyPatch.context() as mp:
        decoded = _count_decodes(mp)
        assert run(argv + ["--source", str(root / "all"), "--out", str(root / "grown" / "pets"), "--append",
                           "--no-isolate-decoders"]) == 0
    return {"root": root, "truth": truth, "keys": keys, "argv": argv, "decoded": decoded,
            **{name: root / name / "pets" for name in ("base", "grown", "whole")}}


def _copy(ds: dict, tmp_path: Path) -> Path:
    out = tmp_path / "pets"
    shutil.copytree(ds["base"], out)
    return out


def test_append_encrypts_only_the_new_records_into_new_shards(ds):
    base, grown = snapshot(ds["base"]), snapshot(ds["grown"])
    new_ids = sorted(filter(_new, ds["truth"]))
    assert sorted(ds["decoded"]) == sorted(new_ids + list(BROKEN))  # the rejected two are read again
    old_shards = [rel for rel in base if rel.endswith(".tar")]
    assert all(grown[rel] == base[rel] for rel in old_shards)  # the dataset's shards, byte for byte
    added = sorted(rel for rel in grown if rel.endswith(".tar") and rel not in base)
    for split, owner in {parse_shard_path(rel)[:2] for rel in added}:
        had = [parse_shard_path(r)[2] for r in old_shards if parse_shard_path(r)[:2] == (split, owner)]
        got = sorted(parse_shard_path(r)[2] for r in added if parse_shard_path(r)[:2] == (split, owner))
        assert got == list(range(max(had) + 1, max(had) + 1 + len(got)))  # indices continue
    assert verify(ds["grown"])[0] == []
    m = Manifest.load(ds["grown"])
    first, last = m.runs
    assert first["mode"] == "prepare" and first["written"] == 18 and first["shards"] == old_shards
    assert (last["mode"], last["skipped"], last["written"], last["rejected"], last["shards"]) == \
        ("append", 18, 6, 2, added)
    assert last["added"] == {"test": 3, "train": 3} and last["new_owners"] == []
    scheme = get_scheme(m.scheme, **m.scheme_params)
    owner_of = {"train": "alice", "test": "bob"}
    seen = 0
    for rel in added:
        split, owner, _ = parse_shard_path(rel)
        for _, image, label in decode_shard(ds["grown"] / rel):
            plain = scheme.decrypt(image[None], ds["keys"][owner])[0]
            match = [r for r in new_ids if r.startswith(split) and np.array_equal(ds["truth"][r][0], plain)]
            assert len(match) == 1 and owner_of[split] == owner
            assert m.class_names[label] == ds["truth"][match[0]][1]
            seen += 1
    assert seen == 6


def test_prepare_then_append_holds_what_one_prepare_of_everything_holds(ds):
    grown, whole = Manifest.load(ds["grown"]), Manifest.load(ds["whole"])
    assert _samples(ds["grown"]) == _samples(ds["whole"])
    assert grown.class_names == whole.class_names and grown.splits == whole.splits
    owners = [[(o.name, o.key_id, o.counts) for o in m.owners] for m in (grown, whole)]
    assert owners[0] == owners[1]
    drop = lambda stats: [{k: v for k, v in s.items() if k != "bytes"} for s in stats]  # noqa: E731
    assert drop(grown.stats) == drop(whole.stats)  # read = written + rejected per split and owner
    assert (ds["grown"] / "errors.jsonl").read_bytes() == (ds["whole"] / "errors.jsonl").read_bytes()
    rows = read_index(ds["grown"]).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(_samples(ds["whole"]))


def test_a_new_owner_joins_a_new_class_is_rejected_and_a_fixed_record_loses_its_line(ds, tmp_path, capsys):
    root = ds["root"]
    src = tmp_path / "src"
    shutil.copytree(root / "all", src)
    (src / BROKEN[0]).write_bytes(png_bytes(make_images(1, seed=9)[0]))  # fixed
    (src / "validation" / "cat").mkdir(parents=True)
    (src / "validation" / "cat" / "v.png").write_bytes(png_bytes(make_images(1, seed=7)[0]))  # carol's
    (src / "train" / "emu").mkdir()
    (src / "train" / "emu" / "e.png").write_bytes(png_bytes(make_images(1, seed=8)[0]))  # a new class
    owners = json.loads((root / "owners.json").read_text())
    owners = {n: {**o, "key": str(root / o["key"])} for n, o in owners.items()}
    owners["carol"] = {"key": str(root / "carol.key"), "match": ["validation/*"]}
    (tmp_path / "owners.json").write_text(json.dumps(owners))
    out = _copy(ds, tmp_path)
    argv = [*SCHEME, "--keys", str(tmp_path / "owners.json"), "--shard-size", "4", "--quiet",
            "--source", str(src), "--out", str(out), "--append"]
    before = snapshot(out)
    assert run(argv) == 1  # 1 of the 8 records new to the dataset is rejected: over the default 1 %
    line = one_line_error(capsys.readouterr().err)
    assert "new_class 1" in line and "the dataset is unchanged" in line and "train/emu/e.png" in line
    assert snapshot(out) == before  # the new shards are gone, the marker too
    assert run(argv + ["--max-reject-rate", "0.2"]) == 0
    assert "1 earlier rejection(s) now written" in capsys.readouterr().out
    m = Manifest.load(out)
    assert [(o.name, o.counts) for o in m.owners][2] == ("carol", {"validation": 1})
    assert m.owner("carol").key_id == ds["keys"]["carol"].key_id and m.runs[-1]["new_owners"] == ["carol"]
    assert m.class_names == ["bird", "cat", "dog"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["source"], e["reason"]) for e in errors] == [(BROKEN[1], "corrupt"),
                                                            ("train/emu/e.png", "new_class")]
    assert m.runs[-1]["resolved"] == 1 and m.runs[-1]["errors"] == 2
    assert verify(out)[0] == []


def test_retry_failed_reads_only_the_listed_files_and_keeps_what_still_fails(ds, tmp_path, monkeypatch):
    from lcrypt.sources.imagefolder import ImageFolderSource

    src = tmp_path / "src"
    shutil.copytree(ds["root"] / "old", src)
    (src / BROKEN[0]).write_bytes(png_bytes(make_images(1, seed=9)[0]))  # fixed; BROKEN[1] still cut
    opened: list[str] = []
    real = ImageFolderSource._read
    monkeypatch.setattr(ImageFolderSource, "_read", lambda self, rel: opened.append(rel) or real(self, rel))
    out = _copy(ds, tmp_path)
    before = snapshot(out)
    assert run(ds["argv"] + ["--source", str(src), "--out", str(out), "--retry-failed"]) == 0
    assert sorted(opened) == sorted(BROKEN)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["source"] for e in errors] == [BROKEN[1]]
    m = Manifest.load(out)
    assert (m.runs[-1]["mode"], m.runs[-1]["read"], m.runs[-1]["written"], m.runs[-1]["rejected"]) == \
        ("retry-failed", 2, 1, 1)
    assert sum(s["rejected"] for s in m.stats) == 1 and m.splits == {"test": 9, "train": 10}
    assert all(snapshot(out)[rel] == data for rel, data in before.items() if rel.endswith(".tar"))
    assert verify(out)[0] == []


def test_retry_failed_on_an_archive_decodes_only_the_listed_records(ds, tmp_path, monkeypatch, capsys):
    """The stream is read whole; the other records are dropped before decoding."""
    tree = ds["root"] / "old"
    fixed = {BROKEN[0]: png_bytes(make_images(1, seed=9)[0])}
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tf:
        for p in sorted(p for p in tree.rglob("*") if p.is_file()):
            rel = p.relative_to(tree).as_posix()
            data = fixed.get(rel, p.read_bytes())
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    decoded = _count_decodes(monkeypatch)
    out = _copy(ds, tmp_path)
    assert run(ds["argv"] + ["--source", str(tmp_path / "src.tar.gz"), "--out", str(out), "--retry-failed",
                             "--no-isolate-decoders"]) == 0
    assert sorted(decoded) == sorted(BROKEN)
    out_line = capsys.readouterr().out
    assert "retry-failed: 2 listed record(s) read again: 1 now written" in out_line
    assert "1 still fail" in out_line
    assert verify(out)[0] == []


@pytest.mark.parametrize("extra,expect", [
    (["--param", "block_size=4"], "scheme etc {'block_size': 4} differs from the dataset's (etc"),
    (["--jpeg-quality", "90"], "encoding jpeg differs from the dataset's (png)"),
    (["--encoding", "npy"], "encoding npy differs"),
    (["--size", "32"], "--size 32x32 differs from the dataset's image size 16x16"),
    (["--name", "other"], "--name other differs from the dataset's (pets)"),
    (["--keys", "alice.key"], "--keys has no key for the dataset's owner bob"),
    (["--keys", "swapped.json"], "owner bob's key"),
    (["--source", "big"], "--source's images are 32x32"),
    (["--scheme", "le"], "scheme le {'block_size': 8} differs from the dataset's (etc"),
    (["--retry-failed", "--param", "block_size=4"], "scheme etc {'block_size': 4} differs"),
    (["--retry-failed", "--scheme", "block-shuffle"], "scheme block-shuffle {'block_size': 8} differs"),
    (["--retry-failed", "--jpeg-quality", "90"], "encoding jpeg differs from the dataset's (png)"),
])
def test_an_append_or_retry_that_would_change_how_the_dataset_was_made_is_refused(ds, tmp_path, capsys,
                                                                                   extra, expect):
    root = ds["root"]
    owners = json.loads((root / "owners.json").read_text())
    Key.generate("bob").save(tmp_path / "other-bob.key")  # bob, but not the key the dataset was made with
    owners["bob"]["key"] = str(tmp_path / "other-bob.key")
    owners["alice"]["key"] = str(root / "alice.key")
    (tmp_path / "swapped.json").write_text(json.dumps(owners))
    make_imagefolder(tmp_path / "big", per_class=1, size=32)
    where = {"alice.key": root / "alice.key", "swapped.json": tmp_path / "swapped.json",
             "big": tmp_path / "big"}
    extra = [str(where.get(x, x)) for x in extra]
    out = _copy(ds, tmp_path)
    before = snapshot(out)
    flag = "--retry-failed" if "--retry-failed" in extra else "--append"
    argv = ds["argv"] + ["--source", str(root / "all"), "--out", str(out), flag] + \
        [x for x in extra if x != flag]
    assert run(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"lcrypt prepare: error: {flag}:") and expect in line, line
    assert snapshot(out) == before


def test_misused_flags_are_one_line_and_change_nothing(ds, tmp_path, capsys):
    out = _copy(ds, tmp_path)
    before = snapshot(out)
    src = ["--source", str(ds["root"] / "all")]
    cases = [(["--out", str(out), "--append", "--resume"], "--append and --resume cannot be combined"),
             (["--out", str(out), "--append", "--overwrite"], "--overwrite and --append cannot be combined"),
             (["--out", str(out), "--retry-failed", "--append"],
              "--append and --retry-failed cannot be combined"),
             (["--out", str(out), "--resume"], "holds no unfinished prepare run"),
             (["--out", str(out)], "already holds a dataset; pass --overwrite to replace it, or --append"),
             (["--out", str(tmp_path / "none"), "--append"], "holds no dataset (no manifest.json)"),
             (["--out", str(tmp_path / "none"), "--retry-failed"], "holds no dataset (no manifest.json)")]
    for extra, expect in cases:
        assert run(ds["argv"] + src + extra) == 2
        line = one_line_error(capsys.readouterr().err)
        assert expect in line, line
        assert snapshot(out) == before and not (tmp_path / "none").exists()
    (out / ".lcrypt-prepare.lock").write_text("{}")  # a run that did not finish
    assert run(ds["argv"] + src + ["--out", str(out), "--append"]) == 2
    assert "did not finish" in one_line_error(capsys.readouterr().err)


def test_an_interrupted_append_is_resumed_into_the_same_bytes(ds, tmp_path, monkeypatch, capsys):
    """Ctrl-C once the append's first new shard is written; --resume finishes it as one run would."""
    from pipelines import outdir

    out = _copy(ds, tmp_path)
    real = outdir.write_atomic

    def interrupt_after_a_shard(path, data, durable=True):
        real(path, data, durable)
        if str(path).endswith(".tar"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(outdir, "write_atomic", interrupt_after_a_shard)
    argv = ds["argv"] + ["--source", str(ds["root"] / "all"), "--out", str(out)]
    assert run(argv + ["--append"]) == 130
    assert "--resume" in one_line_error(capsys.readouterr().err)
    assert (out / ".lcrypt-prepare.lock").exists() and verify(out)[0]  # unfinished, and it says so
    monkeypatch.setattr(outdir, "write_atomic", real)
    assert run(argv + ["--resume"]) == 0
    assert re.search(r"^resumed: kept [1-9]\d* complete shard\(s\) of the interrupted run$",
                     capsys.readouterr().out, re.M)
    assert outputs(out) == outputs(ds["grown"])
    assert verify(out)[0] == []


def test_append_to_a_dataset_recording_legacy_key_ids_keeps_them(ds, tmp_path):
    """A dataset prepared before key ids became public-key fingerprints: the same keys still append."""
    out = _copy(ds, tmp_path)
    m = Manifest.load(out)
    for o in m.owners:
        o.key_id = ds["keys"][o.name].legacy_key_id
    (out / "manifest.json").write_text(m.to_json())
    assert run(ds["argv"] + ["--source", str(ds["root"] / "all"), "--out", str(out), "--append"]) == 0
    grown = Manifest.load(out)
    assert [(o.name, o.key_id) for o in grown.owners] == [(n, ds["keys"][n].legacy_key_id)
                                                          for n in ("alice", "bob")]
    assert _samples(out) == _samples(ds["grown"])  # sample keys derive from the secret, not the id
    assert verify(out)[0] == []


def test_the_release_after_an_append_or_a_retry_is_a_minor_version_naming_what_was_added(ds, tmp_path,
                                                                                          capsys):
    from tests.test_release import lcrypt, tree

    target = tmp_path / "rel"

    def release(data: Path, version: str) -> int:
        return lcrypt(["release", str(data), "--version", version, "--license", "CC-BY-4.0", "--unsigned",
                       "--out", str(target)])

    def change(version: str) -> str:
        return json.loads((target / version / "release.json").read_text())["changelog"][-1]["change"]

    assert release(ds["base"], "1.0.0") == 0
    capsys.readouterr()
    before = tree(target)
    for version, expect in [("1.0.1", "the data was added"), ("1.0.0", "already exists"),
                            ("0.9.0", "must be greater")]:  # a patch, the same, an older version
        assert release(ds["grown"], version) == 2
        line = one_line_error(capsys.readouterr().err)
        assert expect in line and (version != "1.0.1" or "needs version 1.1.0 or greater" in line), line
        assert tree(target) == before
    assert release(ds["grown"], "1.1.0") == 0
    assert change("1.1.0") == "added test +3 (bob +3); train +3 (alice +3); by prepare --append +6"
    assert "- 1.1.0 (" in (target / "1.1.0" / "README.md").read_text()
    # --retry-failed that wrote a record the user fixed: the same rule
    src, out = tmp_path / "src", tmp_path / "retried" / "pets"
    shutil.copytree(ds["root"] / "all", src)
    (src / BROKEN[0]).write_bytes(png_bytes(make_images(1, seed=9)[0]))
    shutil.copytree(ds["grown"], out)
    assert run(ds["argv"] + ["--source", str(src), "--out", str(out), "--retry-failed"]) == 0
    capsys.readouterr()
    assert release(out, "1.1.1") == 2
    assert "needs version 1.2.0 or greater" in one_line_error(capsys.readouterr().err)
    assert release(out, "1.2.0") == 0
    assert change("1.2.0") == "added train +1 (alice +1); by prepare --retry-failed +1"
    assert [c["version"] for c in json.loads((target / "1.2.0" / "release.json").read_text())["changelog"]] \
        == ["1.0.0", "1.1.0", "1.2.0"]
