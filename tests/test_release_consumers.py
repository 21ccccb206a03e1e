"""A release is read, as it is and with the commands its card prints, by lcrypt's loader and trainer, by
Hugging Face `datasets` (class names, per-owner configs), by plain `webdataset`, by timm's WebDataset
reader and loader, and by `mlcroissant` (croissant.json valid, records readable offline). Each reader
must see exactly the stored samples: the same keys, labels and pixels."""

from __future__ import annotations

import argparse
import json
import re
import shlex

import numpy as np
import pytest

from lcrypt.format import Manifest, decode_shard, read_index
from lcrypt.verify import check
from tests.test_release import lcrypt, make_two_owner_dataset, tree
from tests.test_train import MODEL


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    ds = make_two_owner_dataset(tmp_path_factory.mktemp("consumers"))
    assert lcrypt(["release", str(ds["data"]), "--version", "1.0.0", "--license", "CC-BY-4.0", "--keys",
                   str(ds["owners"]), "--out", str(ds["root"] / "releases")]) == 0
    folder = ds["root"] / "releases" / "1.0.0"
    m = Manifest.load(folder)
    stored = {}  # key -> (label, image, split, owner)
    for e in m.shards:
        for key, image, label in decode_shard(folder / e.path):
            stored[key] = (label, image, e.split, e.owner)
    return {"folder": folder, "manifest": m, "stored": stored, "card": (folder / "README.md").read_text()}


def code_block(card: str, lang: str, containing: str) -> str:
    """The card's fenced block of ``lang`` that holds ``containing``."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", card, flags=re.S)
    return next(b for b in blocks if containing in b)


def of_split(rel: dict, split: str, owner: str | None = None) -> dict:
    return {k: v for k, v in rel["stored"].items() if v[2] == split and (owner is None or v[3] == owner)}


def test_lcrypt_loader_reads_the_release(rel):
    from loaders.dataset import ShardDataset

    for split in rel["manifest"].splits:
        want = of_split(rel, split)
        ds = ShardDataset(rel["folder"], split, batch_size=len(want), shuffle=False, drop_last=False,
                          verify_sha256=True, expect_key_ids=[o.key_id for o in rel["manifest"].owners])
        (batch,) = list(ds)
        assert sorted(batch["key"]) == sorted(want)
        for key, label, image in zip(batch["key"], batch["label"].tolist(), batch["image"].numpy()):
            assert label == want[key][0] and np.array_equal(image, want[key][1])


def test_training_train_runs_the_cards_command(rel, tmp_path, monkeypatch):
    from training.train import run as train

    argv = shlex.split(code_block(rel["card"], "bash", "training.train"))
    assert argv[:3] == ["python", "-m", "training.train"]
    args = argv[3:]
    args[args.index("--epochs") + 1] = "1"
    args[args.index("--out") + 1] = str(tmp_path / "run")
    before = tree(rel["folder"])
    monkeypatch.chdir(rel["folder"])  # the card says: run from this folder
    assert train([*args, *MODEL, "--batch-size", "4", "--workers", "0"]) == 0
    assert (tmp_path / "run" / "summary.json").exists() and tree(rel["folder"]) == before


def test_datasets_reads_class_names_and_owner_configs_with_the_cards_snippet(rel, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(rel["folder"])
    scope: dict = {}
    exec(code_block(rel["card"], "python", "load_dataset"), scope)  # as printed
    m = rel["manifest"]
    assert scope["names"] == m.class_names
    ds = scope["ds"]
    want = of_split(rel, "train")
    assert sorted(ds["__key__"]) == sorted(want)
    for row in ds:
        label, image, _, _ = want[row["__key__"]]
        assert row["cls"] == label and np.array_equal(np.asarray(row["png"]), image)
    for owner in m.owners:
        one = datasets.load_dataset(scope["DATA"], name=owner.name, split="test")
        assert sorted(one["__key__"]) == sorted(of_split(rel, "test", owner.name))
        assert one.features["cls"].names == m.class_names
    assert scope["one"].num_rows == m.owners[0].counts["train"]


def test_plain_webdataset_reads_the_shards(rel):
    wds = pytest.importorskip("webdataset")
    urls = [str(rel["folder"] / e.path) for e in rel["manifest"].shards]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        seen[sample["__key__"]] = (sample["cls"], sample["png"])
    assert sorted(seen) == sorted(rel["stored"])
    for key, (label, image) in seen.items():
        assert label == rel["stored"][key][0] and np.array_equal(image, rel["stored"][key][1])


def timm_args(card: str) -> argparse.Namespace:
    """The card's timm command, parsed with the flags of timm's train.py it uses (none may be left over)."""
    argv = shlex.split(code_block(card, "bash", "train.py"))
    assert argv[:2] == ["python", "train.py"]
    p = argparse.ArgumentParser()
    for flag in ("--model", "--dataset", "--data-dir", "--train-split", "--val-split", "--output"):
        p.add_argument(flag)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--input-size", type=int, nargs=3)
    p.add_argument("--mean", type=float, nargs=3)
    p.add_argument("--std", type=float, nargs=3)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--no-aug", action="store_true")
    args, unknown = p.parse_known_args(argv[2:])
    assert not unknown, unknown
    return args


@pytest.mark.parametrize("training", [True, False])
def test_timm_reads_the_release_with_the_cards_arguments(rel, monkeypatch, training):
    torch = pytest.importorskip("torch")
    from timm.data import create_dataset, create_loader

    a = timm_args(rel["card"])
    m = rel["manifest"]
    assert a.num_classes == m.num_classes and a.input_size == [3, *m.image_shape[:2]]
    assert a.dataset == f"wds/{m.name}" and a.mean == a.std == [0.5] * 3 and a.crop_pct == 1.0 and a.no_aug
    monkeypatch.chdir(rel["folder"])
    split = a.train_split if training else a.val_split
    want = of_split(rel, split)
    batch = 3 if len(want) % 3 == 0 else 1
    ds = create_dataset(a.dataset, root=a.data_dir, split=split, is_training=training, batch_size=batch)
    loader = create_loader(ds, input_size=tuple(a.input_size), batch_size=batch, is_training=training,
                           no_aug=a.no_aug, mean=tuple(a.mean), std=tuple(a.std), crop_pct=a.crop_pct,
                           num_workers=0, use_prefetcher=False, persistent_workers=False,
                           device=torch.device("cpu"))
    by_pixels = {image.tobytes(): label for label, image, _, _ in want.values()}
    seen = []
    for x, y in loader:
        assert x.shape[1:] == (3, *m.image_shape[:2])
        for xi, yi in zip(x, y.tolist()):
            pixels = np.rint((xi.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).astype(np.uint8)
            assert by_pixels[pixels.tobytes()] == yi  # the stored image, untouched, with its label
            np.testing.assert_allclose(xi.permute(1, 2, 0).numpy(), (pixels / 255.0 - 0.5) / 0.5, atol=1e-6)
            seen.append(pixels.tobytes())
    assert sorted(seen) == sorted(by_pixels)  # every sample once


def test_croissant_is_valid_and_its_records_read_offline(rel, tmp_path, monkeypatch):
    mlc = pytest.importorskip("mlcroissant")
    from etils import epath
    from mlcroissant._src.operation_graph.operations import extract

    # mlcroissant caches extracted archives by their (relative) URL: keep this test's cache its own
    monkeypatch.setattr(extract, "EXTRACT_PATH", epath.Path(tmp_path / "extract"))
    dataset = mlc.Dataset(jsonld=str(rel["folder"] / "croissant.json"))
    assert dataset.metadata.ctx.issues.report() == ""  # no error, no warning
    m, stored = rel["manifest"], rel["stored"]
    names = {r["classes/index"]: r["classes/name"] for r in dataset.records("classes")}
    assert [names[i] for i in range(len(names))] == m.class_names
    index = {r["key"]: r for r in read_index(rel["folder"]).to_pylist()}
    samples = list(dataset.records("samples"))
    assert len(samples) == len(stored) == len(index)
    for r in samples:
        key = r["samples/key"].decode()
        assert r["samples/label"] == stored[key][0] == index[key]["label"]
        assert r["samples/owner"].decode() == stored[key][3]
    images = list(dataset.records("images"))
    assert len(images) == len(stored)
    for r in images:
        assert np.array_equal(np.asarray(r["images/image"]), stored[r["images/key"].decode()][1])
    doc = json.loads((rel["folder"] / "croissant.json").read_text())
    files = {f["name"]: f for f in doc["distribution"] if f["@type"] == "cr:FileObject"}
    assert {e.path: e.sha256 for e in m.shards}.items() <= {k: v["sha256"] for k, v in files.items()}.items()
    assert check(rel["folder"]).problems == []


def test_timm_command_generator_refuses_npy_and_picks_splits():
    from lcrypt.format import OwnerEntry
    from lcrypt.release import timm_train_args
    from lcrypt.release.usage import splits_for_training

    m = Manifest(name="d", scheme="pe", scheme_params={}, owners=[OwnerEntry("a", "0" * 32)],
                 class_names=["x"], image_shape=[8, 8, 3], encoding="npy", shards=[],
                 splits={"train": 3, "validation": 1})
    with pytest.raises(ValueError, match="decodes png/jpg"):
        timm_train_args(m)
    assert splits_for_training(m) == ("train", "validation")
    m.splits = {"only": 4}
    assert splits_for_training(m) == ("only", "only")
    m.encoding = "jpeg"
    args = timm_train_args(m, "/data")
    assert args[args.index("--val-split") + 1] == "only" and args[args.index("--data-dir") + 1] == "/data"


def test_an_npy_release_reads_as_arrays_and_says_timm_cannot(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    mlc = pytest.importorskip("mlcroissant")
    from tests.test_loader import make_dataset

    data, _ = make_dataset(tmp_path, per_class={"train": 2, "test": 1}, params=("--encoding", "npy"))
    assert lcrypt(["release", str(data), "--version", "0.1.0", "--license", "MIT", "--unsigned", "--out",
                   str(tmp_path / "rel")]) == 0
    folder = tmp_path / "rel" / "0.1.0"
    assert "timm: not with this encoding" in (folder / "README.md").read_text()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    ds = datasets.load_dataset(str(folder), split="train")
    stored = {k: (label, image) for e in Manifest.load(folder).shards_for("train")
              for k, image, label in decode_shard(folder / e.path)}
    assert sorted(ds["__key__"]) == sorted(stored)
    for row in ds:
        assert row["cls"] == stored[row["__key__"]][0]
        assert np.array_equal(np.asarray(row["npy"], dtype=np.uint8), stored[row["__key__"]][1])
    doc = mlc.Dataset(jsonld=str(folder / "croissant.json"))
    assert doc.metadata.ctx.issues.report() == ""
    assert len(list(doc.records("samples"))) == sum(Manifest.load(folder).splits.values())
