"""Fault injection on the source readers: every file of a source comes out as a record, placed by the
documented rule or rejected with its reason (read = accepted + rejected); nothing is dropped silently."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from lcrypt import Key
from lcrypt.format import Manifest, ShardWriter, write_tar
from lcrypt.images import ImageRejected
from lcrypt.sources import iter_records, open_source
from lcrypt.sources.base import Record, classes_from_names, decode_record, owners_of
from lcrypt.sources.parquet import parquet_split
from lcrypt.storage import LocalStorage
from lcrypt.tarstream import TarFormatError, TarSpecial, iter_members
from tests.test_datasets import make_images, make_parquet, png_bytes

SCHEME = ["--scheme", "etc", "--param", "block_size=8"]


def write_pngs(folder: Path, n: int, seed: int = 0) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(make_images(n, seed=seed)):
        out.append(png_bytes(img))
        (folder / f"{i}.png").write_bytes(out[-1])
    return out


def outcome(records) -> tuple[Counter, list[str], dict[str, str]]:
    """(accepted records per split, class names of the accepted, {rejected source id: reason}), every
    record decoded through decode_record as the pipeline does."""
    splits, names, rejected = Counter(), set(), {}
    for r in records:
        try:
            decode_record(r)
        except ImageRejected as exc:
            rejected[r.source_id] = exc.reason
            assert str(exc) == r.layout_error or not r.layout_error  # the detail travels unchanged
            continue
        splits[r.split] += 1
        names.add(r.class_name)
    return splits, classes_from_names(names), rejected


def make_flat(root: Path) -> Path:
    """flat/cat/*.png (5), flat/cat/extra/*.png (3), flat/dog/*.png (4), and a hidden file."""
    write_pngs(root / "cat", 5)
    write_pngs(root / "cat" / "extra", 3, seed=1)
    write_pngs(root / "dog", 4, seed=2)
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root


def tar_of(folder: Path, path: Path, top: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(folder.rglob("*")):
            tf.add(p, arcname=f"{top}{p.relative_to(folder).as_posix()}", recursive=False)
    return path


# -- 1. one per-file tree rule -------------------------------------------------------------------------
def test_tree_rule_places_or_rejects_every_file_the_same_in_folders_and_tars(tmp_path):
    flat = make_flat(tmp_path / "flat")
    for source in (open_source(str(flat)), open_source(str(tar_of(flat, tmp_path / "flat.tar.gz")))):
        records = list(source)
        splits, classes, rejected = outcome(records)
        assert len(records) == 13 == sum(splits.values()) + len(rejected)
        assert splits == {"train": 9} and classes == ["cat", "dog"]  # not {'cat': 5, 'train': 20}
        assert rejected == {**{f"cat/extra/{i}.png": "layout" for i in range(3)}, "dog/.DS_Store": "hidden"}
        extra = next(r for r in records if r.source_id == "cat/extra/0.png")
        assert extra.layout_error.startswith("layout: 'extra' is a folder inside class folder 'cat'")
        assert "<split>/<class>/<file>" in extra.layout_error and not extra.class_name and not extra.split

    tree = tmp_path / "tree"
    write_pngs(tree / "cifar10" / "train" / "cat", 2)
    write_pngs(tree / "cifar10" / "val" / "dog", 2)
    write_pngs(tree / "cifar10" / "test", 1)  # a file directly in a split folder
    (tree / "cifar10" / "test" / ".hidden").mkdir()
    (tree / "cifar10" / "test" / ".hidden" / "x.png").write_bytes(b"x")
    (tree / "README.txt").write_text("hello")  # a file at the top
    splits, classes, rejected = outcome(open_source(str(tree)))
    assert splits == {"train": 2, "val": 2} and classes == ["cat", "dog"]  # one top folder; split names kept
    assert rejected == {"cifar10/test/0.png": "layout", "cifar10/test/.hidden/x.png": "hidden",
                        "README.txt": "layout"}

    # explicit layouts: a class literally named "test"; splits with any name
    named = tmp_path / "named"
    write_pngs(named / "test", 2)
    write_pngs(named / "cat", 1)
    assert outcome(open_source(str(named)))[2] == {"test/0.png": "layout", "test/1.png": "layout"}
    splits, classes, rejected = outcome(open_source(str(named), layout="class"))
    assert splits == {"train": 3} and classes == ["cat", "test"] and not rejected
    folds = tmp_path / "folds"
    write_pngs(folds / "fold1" / "cat", 2)
    write_pngs(folds / "fold2" / "dog", 1)
    assert outcome(open_source(str(folds)))[2] == dict.fromkeys(
        ["fold1/cat/0.png", "fold1/cat/1.png", "fold2/dog/0.png"], "layout")
    assert outcome(open_source(str(folds), layout="split"))[:2] == ({"fold1": 2, "fold2": 1}, ["cat", "dog"])
    with pytest.raises(ValueError, match="layout 'sideways'"):
        open_source(str(folds), layout="sideways")


# -- 2. Parquet split names -----------------------------------------------------------------------------
def test_parquet_splits_follow_hugging_face_file_names(tmp_path):
    files = {"default/train/0000.parquet": "train", "default/test/0000.parquet": "test",
             "data/cifar10-test-00000-of-00001.parquet": "test",
             "data/random-00000-of-00001.parquet": "random",
             "data/dev_a.parquet": "validation", "data/val2017.parquet": "validation",
             "data/contest.parquet": "all"}  # "test" inside a word is no keyword: the default split
    for rel in files:
        make_parquet(tmp_path / "pq" / rel, n=2)
    source = open_source(str(tmp_path / "pq"), split="all")
    assert source.kind == "parquet" and dict(source.file_splits()) == files
    records = list(source)
    assert len(records) == 2 * len(files)
    assert all(r.split == files[r.source_id.split("#")[0]] for r in records)
    assert Counter(r.split for r in records) == {"train": 2, "test": 4, "random": 2, "validation": 4,
                                                  "all": 2}
    assert [parquet_split(f"{k}.parquet", "x") for k in ("training", "valid", "evaluation", "testing")] == [
        "train", "validation", "test", "test"]
    one = open_source(str(tmp_path / "pq" / "default" / "test" / "0000.parquet"))
    assert one.file_splits() == [("0000.parquet", "train")]  # a folder outside the source says nothing
    assert open_source(str(make_flat(tmp_path / "flat"))).file_splits() == []


# -- 3. tar links ---------------------------------------------------------------------------------------
def add_member(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               target: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_linked_tar(path: Path) -> Path:
    """train/{cat,dog}/*.png (10 each), plus a hard link and a symbolic link, and folder entries."""
    with tarfile.open(path, "w") as tf:
        for cls, seed in (("cat", 0), ("dog", 1)):
            add_member(tf, f"train/{cls}", kind=tarfile.DIRTYPE)
            for i, img in enumerate(make_images(10, seed=seed)):
                add_member(tf, f"train/{cls}/{i}.png", png_bytes(img))
        add_member(tf, "train/dog/hard.png", kind=tarfile.LNKTYPE, target="train/dog/0.png")
        add_member(tf, "train/cat/soft.png", kind=tarfile.SYMTYPE, target="../dog/1.png")
    return path


def test_tar_links_are_reported_never_dropped(tmp_path):
    path = make_linked_tar(tmp_path / "links.tar")
    source = open_source(str(path))
    records = list(source)
    splits, classes, rejected = outcome(records)
    assert len(records) == 22 == sum(splits.values()) + len(rejected)
    assert splits == {"train": 20} and classes == ["cat", "dog"]
    assert rejected == {"train/dog/hard.png": "link", "train/cat/soft.png": "link"}
    details = {r.source_id: r.layout_error for r in records if r.layout_error}
    assert "hard link to 'train/dog/0.png'" in details["train/dog/hard.png"]
    assert "symbolic link to '../dog/1.png'" in details["train/cat/soft.png"]
    # links count in the part indexing: parallel parts still read every member exactly once
    for parts in (2, 3, 5):
        got = [r.source_id for u in source.units(parts=parts) for r in source.read_unit(u)]
        assert sorted(got) == sorted(r.source_id for r in records)

    with open(path, "rb") as f:  # lcrypt shards never hold links: by default a link is an error
        with pytest.raises(TarFormatError, match="'train/dog/hard.png' is a hard link"):
            list(iter_members(f))
    with open(path, "rb") as f:
        specials = [(n, m) for n, m in iter_members(f, links="yield")
                    if isinstance(m, TarSpecial)]
    assert specials == [("train/dog/hard.png", TarSpecial("hard link", "train/dog/0.png")),
                        ("train/cat/soft.png", TarSpecial("symbolic link", "../dog/1.png"))]

    # long link targets (GNU 'K' and pax linkpath records) and other special members (a FIFO)
    far = "train/dog/" + "d" * 120 + ".png"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        with tarfile.open(tmp_path / f"special-{fmt}.tar", "w", format=fmt) as tf:
            add_member(tf, "train/cat/far.png", kind=tarfile.SYMTYPE, target=far)
            add_member(tf, "train/cat/pipe", kind=tarfile.FIFOTYPE)
            add_member(tf, "train/cat/0.png", png_bytes(make_images(1)[0]))
        records = list(open_source(str(tmp_path / f"special-{fmt}.tar")))
        assert outcome(records)[2] == {"train/cat/far.png": "link", "train/cat/pipe": "unreadable"}
        assert f"symbolic link to {far!r}" in records[0].layout_error
        assert "is a FIFO" in records[1].layout_error

    # WebDataset source: the sample with a link member is rejected, the others read
    writer = ShardWriter("png")
    members = writer.members([(f"s{i}", i, writer.encode(img))
                              for i, img in enumerate(make_images(3, seed=4))])
    (tmp_path / "wds" / "train").mkdir(parents=True)
    with tarfile.open(tmp_path / "wds" / "train" / "a-000000.tar", "w") as tf:
        for name, data in members[:4]:
            add_member(tf, name, data)
        add_member(tf, "s2.cls", b"2")
        add_member(tf, "s2.png", kind=tarfile.SYMTYPE, target="s0.png")
    records = list(open_source(str(tmp_path / "wds")))
    splits, classes, rejected = outcome(records)
    assert len(records) == 3 and splits == {"train": 2} and rejected == {"train/a-000000.tar#s2": "link"}
    assert "'s2.png' is a symbolic link to 's0.png'" in records[2].layout_error


# -- 4. symlinked folders, loops, unreadable files ------------------------------------------------------
def test_symlinked_folders_are_followed_loops_refused_unreadable_files_rejected(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_pngs(elsewhere / "train" / "cat", 3)
    src = tmp_path / "src"
    write_pngs(src / "test" / "cat", 2, seed=1)
    (src / "train").symlink_to(elsewhere / "train", target_is_directory=True)
    (src / "test" / "cat" / "broken.png").symlink_to(tmp_path / "nothing-here.png")
    # no links followed
    assert LocalStorage().list_files(src) == ["test/cat/0.png", "test/cat/1.png", "test/cat/broken.png"]
    listed = ["test/cat/0.png", "test/cat/1.png", "test/cat/broken.png", "train/cat/0.png", "train/cat/1.png",
              "train/cat/2.png"]
    assert LocalStorage().list_files(src, follow_links=True) == listed
    from pipelines.beamstorage import BEAM, pipeline_storage

    assert pipeline_storage(str(src)).list_files(str(src), follow_links=True) == listed
    for source in (open_source(str(src)), open_source(str(src), remote=BEAM)):
        records = list(source)
        splits, classes, rejected = outcome(records)
        assert len(records) == 6 and splits == {"train": 3, "test": 2} and classes == ["cat"]
        assert rejected == {"test/cat/broken.png": "unreadable"}
        assert "broken symbolic link" in records[2].layout_error
    if os.geteuid() != 0:  # root reads any file: the permission case needs an ordinary user
        (src / "test" / "cat" / "0.png").chmod(0)
        assert outcome(open_source(str(src)))[2] == {"test/cat/broken.png": "unreadable",
                                                       "test/cat/0.png": "unreadable"}

    (elsewhere / "train" / "cat" / "again").symlink_to(elsewhere / "train", target_is_directory=True)
    with pytest.raises(ValueError, match="folder 'train/cat/again' links back to"):
        LocalStorage().list_files(src, follow_links=True)
    with pytest.raises(ValueError, match="links back to"):
        list(iter_records(str(src)))


# -- 5. labels outside the class list -------------------------------------------------------------------
def test_labels_outside_the_class_list_are_rejected(tmp_path):
    imgs = make_images(4, seed=3)
    writer = ShardWriter("png")
    members = writer.members([(f"s{i}", lab, writer.encode(img))
                              for i, (img, lab) in enumerate(zip(imgs, [3, 99, -1, 0]))])
    wds = tmp_path / "wds"
    (wds / "train").mkdir(parents=True)
    write_tar(wds / "train" / "a-000000.tar", members)
    undeclared = list(open_source(str(wds)))
    (wds / "_info.json").write_text(json.dumps({"class_names": [f"c{i}" for i in range(10)]}))
    declared = list(open_source(str(wds)))
    splits, classes, rejected = outcome(declared)
    assert splits == {"train": 2}
    assert rejected == {"train/a-000000.tar#s1": "label", "train/a-000000.tar#s2": "label"}
    assert [r.label for r in declared if not r.layout_error] == [3, 0]
    assert "label 99 is outside the 10 declared classes" in declared[1].layout_error
    splits, classes, rejected = outcome(undeclared)  # without names: 99 is a class, -1 is not
    assert splits == {"train": 3} and rejected == {"train/a-000000.tar#s2": "label"}
    assert classes == [str(i) for i in range(100)] and "negative" in undeclared[2].layout_error

    import pyarrow as pa
    import pyarrow.parquet as pq

    make_parquet(tmp_path / "named.parquet", n=3)  # declares three class names
    table = pq.read_table(tmp_path / "named.parquet")
    table = table.set_column(1, "label", pa.array([1, 7, None], pa.int64()))
    pq.write_table(table, tmp_path / "named.parquet")
    records = list(open_source(str(tmp_path / "named.parquet")))
    assert outcome(records)[2] == {"named.parquet#1": "label", "named.parquet#2": "label"}
    assert "label 7 is outside the 3 declared classes" in records[1].layout_error
    pq.write_table(table.replace_schema_metadata({}).set_column(1, "label", pa.array([2, -1, 0])),
                   tmp_path / "plain.parquet")
    splits, classes, rejected = outcome(open_source(str(tmp_path / "plain.parquet")))
    assert splits == {"train": 2} and classes == ["0", "1", "2"] and rejected == {"plain.parquet#1": "label"}


# -- 6. overlapping owner globs -------------------------------------------------------------------------
def test_owners_of_lists_every_matching_owner_in_file_order(tmp_path):
    write_pngs(tmp_path / "src" / "cifar10" / "train" / "cat", 1)
    write_pngs(tmp_path / "src" / "cifar10" / "test" / "dog", 1)
    cat, dog = list(open_source(str(tmp_path / "src")))[::-1]
    owners = [("b", ["*/cat/*"]), ("a", ["train/*"]), ("c", ["test/*", "*/dog/*"])]
    assert owners_of(cat, owners) == ["b", "a"] and owners_of(dog, owners) == ["c"]
    assert owners_of(cat, [("c", ["test/*"])]) == []
    grouped = Record("x.parquet#0", "train", "0", b"", group="site-A")
    assert owners_of(grouped, [("a", ["site-*"]), ("b", ["*-A"]), ("c", ["x*"])]) == ["a", "b"]


# -- end to end: what prepare writes -----------------------------------------------------------------------
def prepare(tmp_path: Path, source: Path) -> tuple[Manifest, list[dict]]:
    from pipelines.prepare import run

    Key.generate("solo").save(tmp_path / "solo.key")
    assert run(["--source", str(source), *SCHEME, "--keys", str(tmp_path / "solo.key"), "--out",
                str(tmp_path / "out"), "--max-reject-rate", "1", "--quiet"]) == 0
    m = Manifest.load(tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sum(s["read"] for s in m.stats) == sum(s["written"] for s in m.stats) + len(rows)
    return m, rows


def test_prepare_writes_the_tree_rule_and_lists_its_rejections(tmp_path):
    m, rows = prepare(tmp_path, make_flat(tmp_path / "flat"))
    assert {s.split for s in m.shards} == {"train"} and sum(s.count for s in m.shards) == 9
    assert m.class_names == ["cat", "dog"]
    assert {r["source"]: r["reason"] for r in rows} == {
        **{f"cat/extra/{i}.png": "layout" for i in range(3)}, "dog/.DS_Store": "hidden"}


def test_prepare_lists_tar_links_in_errors(tmp_path):
    m, rows = prepare(tmp_path, make_linked_tar(tmp_path / "links.tar"))
    assert {s.split for s in m.shards} == {"train"} and sum(s.count for s in m.shards) == 20
    assert m.class_names == ["cat", "dog"]
    assert {r["source"]: r["reason"] for r in rows} == {"train/dog/hard.png": "link",
                                                        "train/cat/soft.png": "link"}
