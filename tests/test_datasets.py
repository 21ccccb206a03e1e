"""lcrypt.sources: every source kind, made here, reads back to the pixels and labels written."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcrypt.format import ShardWriter, write_tar
from lcrypt.sources import detect_kind, load_arrays, open_source
from lcrypt.sources.base import Record, decode_record, owners_of, tree_layout
from lcrypt.images import ImageRejected

CLASSES = ["bird", "cat", "dog"]


def make_images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_imagefolder(root: Path, per_class: int = 3, splits=("train", "test"), size: int = 16) -> dict:
    """ImageFolder tree of lossless PNGs; returns {relative path: (image, class name)}."""
    truth = {}
    for s, split in enumerate(splits):
        imgs = make_images(per_class * len(CLASSES), seed=s, size=size)
        for i, img in enumerate(imgs):
            cls = CLASSES[i % len(CLASSES)]
            rel = f"{split}/{cls}/img_{i:03d}.png" if split else f"{cls}/img_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(png_bytes(img))
            truth[rel] = (img, cls)
    return truth


def make_tar_tree(path: Path, truth_root: Path, top: str = "data") -> None:
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(truth_root.rglob("*")):
            tf.add(p, arcname=f"{top}/{p.relative_to(truth_root).as_posix()}", recursive=False)


def make_cifar(path: Path, n_train: int = 6, n_test: int = 3) -> dict:
    """A CIFAR-10 python archive (the pickled dict format users download)."""
    truth = {}
    names = [f"class{i}" for i in range(10)]
    with tarfile.open(path, "w:gz") as tf:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            ti = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        add("batches.meta", {b"label_names": [n.encode() for n in names]})
        for base, n, seed in (("data_batch_1", n_train, 1), ("test_batch", n_test, 2)):
            imgs = make_images(n, seed=seed, size=32)
            labels = [(i * 3) % 10 for i in range(n)]
            add(base, {b"data": imgs.transpose(0, 3, 1, 2).reshape(n, -1), b"labels": labels})
            for i in range(n):
                truth[f"{base}/{i}"] = (imgs[i], labels[i])
    return truth


def make_parquet(path: Path, n: int = 6, with_meta: bool = True, groups=None) -> tuple[np.ndarray, list[int]]:
    """Hugging Face layout: image struct {bytes, path} + int label (+ ClassLabel names in metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs = make_images(n, seed=5)
    labels = [i % 3 for i in range(n)]
    cols = {"image": [{"bytes": png_bytes(im), "path": f"secret_name_{i}.png"} for i, im in enumerate(imgs)],
            "label": labels}
    if groups is not None:
        cols["site"] = groups
    table = pa.table(cols)
    if with_meta:
        meta = {"info": {"features": {"image": {"_type": "Image"},
                                      "label": {"_type": "ClassLabel", "names": ["zebra", "ant", "mole"]}}}}
        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=4)
    return imgs, labels


def make_wds(root: Path, n: int = 5) -> tuple[np.ndarray, list[int]]:
    imgs = make_images(n, seed=9)
    labels = [i % 2 for i in range(n)]
    writer = ShardWriter("png")
    members = writer.members([(f"s{i:04d}", lab, writer.encode(im))
                              for i, (im, lab) in enumerate(zip(imgs, labels))])
    (root / "train").mkdir(parents=True, exist_ok=True)
    write_tar(root / "train" / "plain-000000.tar", members)
    return imgs, labels


def test_imagefolder_with_splits(tmp_path):
    truth = make_imagefolder(tmp_path)
    assert detect_kind(str(tmp_path)) == "imagefolder"
    recs = list(open_source(str(tmp_path)))
    assert sorted(r.source_id for r in recs) == sorted(truth)
    for r in recs:
        img, cls = truth[r.source_id]
        assert r.class_name == cls and r.split == r.source_id.split("/")[0]
        assert np.array_equal(decode_record(r), img)
    x, y, names = load_arrays(str(tmp_path), "test")
    assert names == CLASSES and x.shape == (9, 16, 16, 3)
    test = sorted((k, v) for k, v in truth.items() if k.startswith("test/"))
    assert np.array_equal(x, np.stack([v[0] for _, v in test]))
    assert list(y) == [CLASSES.index(v[1]) for _, v in test]


def test_imagefolder_without_splits_uses_the_given_split(tmp_path):
    make_imagefolder(tmp_path, splits=("",))
    x, y, names = load_arrays(open_source(str(tmp_path), split="all"), "all")
    assert len(x) == 9 and names == CLASSES


def test_tar_gz_tree_streams_the_same_records(tmp_path):
    truth = make_imagefolder(tmp_path / "tree")
    make_tar_tree(tmp_path / "ds.tar.gz", tmp_path / "tree")
    src = open_source(str(tmp_path / "ds.tar.gz"))
    assert src.kind == "tar"
    recs = list(src)
    assert sorted(r.source_id for r in recs) == sorted(f"data/{k}" for k in truth)
    for r in recs:
        assert np.array_equal(decode_record(r), truth[r.source_id[5:]][0])
    # parts partition the records exactly
    parts = [list(src.read_unit(u)) for u in src.units(parts=3)]
    assert len(parts) == 3
    assert sorted(r.source_id for p in parts for r in p) == sorted(r.source_id for r in recs)
    for i, part in enumerate(parts):  # part i is every third record from the i-th, in archive order
        assert [(r.source_id, r.data) for r in part] == [(r.source_id, r.data) for r in recs[i::3]]


def test_cifar_python_archive(tmp_path):
    truth = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    src = open_source(str(tmp_path / "cifar-10-python.tar.gz"))
    assert src.kind == "cifar"
    recs = list(src)
    assert len(recs) == len(truth)
    for r in recs:
        img, lab = truth[r.source_id]
        assert r.label == lab and r.class_name == f"class{lab}"
        assert np.array_equal(decode_record(r), img)
    x, y, names = load_arrays(src, "test")
    assert names[0] == "class0" and list(y) == [0, 3, 6]


def test_cifar_archive_with_a_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in (("batches.meta", {b"label_names": [b"a"]}), ("data_batch_1", Evil())):
            data = pickle.dumps(obj)
            ti = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        list(open_source(str(path)))


def test_parquet_hugging_face_layout(tmp_path):
    imgs, labels = make_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    src = open_source(str(tmp_path / "data"))
    assert src.kind == "parquet" and src.class_names() == ["zebra", "ant", "mole"]
    recs = list(src)
    assert [r.split for r in recs] == ["train"] * 6 and [r.label for r in recs] == labels
    assert all("secret_name" not in r.source_id for r in recs)
    x, y, names = load_arrays(src, "train")
    assert np.array_equal(x, imgs) and list(y) == labels and names == ["zebra", "ant", "mole"]


def test_parquet_null_label_is_a_label_rejection_not_a_class(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs = make_images(3, seed=6)
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"image": [png_bytes(im) for im in imgs], "label": [2, None, 0]}), path)
    recs = list(open_source(str(path)))
    assert [r.class_name for r in recs] == ["2", "", "0"]
    assert not recs[0].layout_error
    assert "is null" in recs[1].layout_error and recs[1].source_id == "plain.parquet#1"
    with pytest.raises(ImageRejected, match="^label: column 'label' is null") as exc:
        decode_record(recs[1])
    assert exc.value.reason == "label"


def test_webdataset_shards(tmp_path):
    imgs, labels = make_wds(tmp_path / "wds")
    src = open_source(str(tmp_path / "wds"))
    assert src.kind == "wds"
    x, y, names = load_arrays(src, "train")
    assert np.array_equal(x, imgs) and list(y) == labels and names == ["0", "1"]


def test_layout_and_owner_matching():
    assert tree_layout("cifar10/train/cat/1.jpg", "train") == ("train", "cat", "")
    assert tree_layout("val/cat/1.jpg", "train") == ("val", "cat", "")  # a split keeps its folder's name
    assert tree_layout("cat/1.jpg", "all") == ("all", "cat", "")
    assert tree_layout("README", "train")[2].startswith("layout: file is at the top")
    assert tree_layout("cat/extra/1.jpg", "train")[2].startswith("layout: 'extra' is a folder inside class "
                                                                 "folder 'cat'")
    assert tree_layout("test/1.jpg", "train", layout="class") == ("train", "test", "")
    assert tree_layout("fold1/cat/1.jpg", "train", layout="split") == ("fold1", "cat", "")
    owners = [("a", ["train/cat/*"]), ("b", ["*"])]
    rec = Record("cifar10/train/cat/1.jpg", "train", "cat", b"")
    assert owners_of(rec, owners) == ["a", "b"]  # every match, in the owners' order
    assert owners_of(Record("cifar10/train/dog/1.jpg", "train", "dog", b""), owners) == ["b"]
    assert owners_of(Record("x#1", "train", "c", b"", group="site-A"), [("a", ["site-A"])]) == ["a"]
    assert owners_of(Record("x#1", "train", "c", b"", group="site-B"), [("a", ["site-A"])]) == []


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_source(str(tmp_path / "nothing"))
    (tmp_path / "x.bin").write_bytes(b"1")
    with pytest.raises(ValueError, match="prefix it"):
        open_source(str(tmp_path / "x.bin"))
