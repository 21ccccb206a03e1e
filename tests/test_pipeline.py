"""The real `prepare` Beam pipeline on the Python DirectRunner engine, on datasets the tests make."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lcrypt import Key, get_scheme
from lcrypt.format import Manifest, decode_shard, read_index, sample_key, sample_key_salt
from lcrypt.tarstream import iter_members
from lcrypt.verify import verify
from pipelines.prepare import run
from tests.test_datasets import make_cifar, make_imagefolder, make_parquet, make_tar_tree, make_wds

ROOT = Path(__file__).resolve().parents[1]

SCHEME = ["--scheme", "etc", "--param", "block_size=8"]


def tree_files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def same_dataset(a: Path, b: Path) -> None:
    fa, fb = tree_files(a), tree_files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "manifest.json":
            ma, mb = json.loads(fa[name]), json.loads(fb[name])
            assert ma.pop("created") and mb.pop("created")
            assert ma == mb
        else:
            assert fa[name] == fb[name], name


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """Two owners over one ImageFolder tree with two malformed files, prepared once."""
    root = tmp_path_factory.mktemp("pooled")
    truth = make_imagefolder(root / "src", per_class=4)
    (root / "src/train/cat/notes.png").write_bytes(b"not an image at all")
    good = (root / "src/train/dog/img_002.png").read_bytes()
    (root / "src/train/dog/cut.png").write_bytes(good[: len(good) // 2])
    keys = {name: Key.generate(name) for name in ("alice", "bob")}
    for name, k in keys.items():
        k.save(root / f"{name}.key")
    owners = {"alice": {"key": "alice.key", "match": ["*/cat/*", "*/bird/*"]},
              "bob": {"key": "bob.key", "match": ["*"]}}
    (root / "owners.json").write_text(json.dumps(owners))
    argv = ["--source", str(root / "src"), *SCHEME, "--keys", str(root / "owners.json"), "--shard-size", "5",
            "--max-reject-rate", "0.2", "--name", "pooled", "--owner-overlap", "first", "--quiet"]
    assert run(argv + ["--out", str(root / "out")]) == 0
    return {"root": root, "truth": truth, "keys": keys, "argv": argv, "out": root / "out"}


def test_shards_decrypt_to_the_source_pixels_bit_for_bit(pooled):
    m = Manifest.load(pooled["out"])
    scheme = get_scheme(m.scheme, **m.scheme_params)
    by_key = {}
    for rel, (img, cls) in pooled["truth"].items():
        owner = "alice" if f"/{cls}/" in f"/{rel}" and cls in ("cat", "bird") else "bob"
        by_key[sample_key(rel, sample_key_salt(pooled["keys"][owner]))] = (img, cls, owner)
    seen = 0
    for entry in m.shards:
        for key, image, label in decode_shard(pooled["out"] / entry.path):
            img, cls, owner = by_key[key]
            assert entry.owner == owner and m.class_names[label] == cls
            assert not np.array_equal(image, img)  # encrypted on disk
            assert np.array_equal(scheme.decrypt(image[None], pooled["keys"][owner])[0], img)
            seen += 1
    assert seen == len(pooled["truth"]) == 24
    assert {o.name: o.key_id for o in m.owners} == {n: k.key_id for n, k in pooled["keys"].items()}


def test_per_owner_shards_manifest_index_and_verify_agree(pooled):
    out = pooled["out"]
    m = Manifest.load(out)
    groups = {(sp, o) for sp in ("train", "test") for o in ("alice", "bob")}
    assert {(s.split, s.owner) for s in m.shards} == groups
    assert all(Path(s.path).name.startswith(f"{s.owner}-") for s in m.shards)
    assert m.class_names == ["bird", "cat", "dog"] and m.image_shape == [16, 16, 3] and m.encoding == "png"
    idx = read_index(out).to_pylist()
    assert len(idx) == sum(s.count for s in m.shards) == 24
    for s in m.shards:
        keys = [k for k, _, _ in decode_shard(out / s.path)]
        assert keys == sorted(keys) == sorted(r["key"] for r in idx if r["shard"] == s.path)
    problems, totals = verify(out, decode=True)
    assert problems == [] and totals["samples"] == 24
    # no fragments or progress files left
    assert sorted(p.name for p in out.iterdir()) == ["_info.json", "errors.jsonl", "index.parquet",
                                                     "manifest.json", "test", "train"]
    text = json.dumps(m.to_dict()) + (out / "_info.json").read_text()
    assert "img_0" not in text and "secret" not in text  # no source names, no key material


def test_dead_letters_are_accounted_per_split_and_owner(pooled):
    rows = [json.loads(line) for line in (pooled["out"] / "errors.jsonl").read_text().splitlines()]
    assert {(r["source"], r["reason"]) for r in rows} == {("train/cat/notes.png", "not_an_image"),
                                                          ("train/dog/cut.png", "corrupt")}
    m = Manifest.load(pooled["out"])
    for st in m.stats:
        assert st["read"] == st["written"] + st["rejected"]
    by = {(s["split"], s["owner"]): s for s in m.stats}
    assert by[("train", "alice")]["rejected"] == 1 and by[("train", "bob")]["rejected"] == 1
    assert sum(s["read"] for s in m.stats) == 26


def test_rerun_is_byte_identical(pooled, tmp_path):
    assert run(pooled["argv"] + ["--out", str(tmp_path / "again")]) == 0
    same_dataset(pooled["out"], tmp_path / "again")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["multi_processing", "multi_threading"])
def test_two_worker_run_is_byte_identical(pooled, tmp_path, mode):
    argv = pooled["argv"] + ["--out", str(tmp_path / "two"), "--direct_running_mode", mode,
                             "--direct_num_workers", "2"]
    assert run(argv) == 0
    same_dataset(pooled["out"], tmp_path / "two")


def test_command_line_output_is_the_summary_and_clear_messages(pooled, tmp_path):
    """A real `python -m pipelines.prepare` process: an owner whose patterns match nothing is named, a
    failed reject-rate check is one line, and Beam's import warning and DoFn tracebacks stay out."""
    root = pooled["root"]
    Key.generate("carol").save(tmp_path / "carol.key")
    owners = json.loads((root / "owners.json").read_text())
    owners = {n: {**o, "key": str(root / o["key"])} for n, o in owners.items()}
    owners["carol"] = {"key": str(tmp_path / "carol.key"), "match": ["nothing/*"]}
    (tmp_path / "owners.json").write_text(json.dumps(owners))
    argv = list(pooled["argv"])
    argv[argv.index("--keys") + 1] = str(tmp_path / "owners.json")

    def prepare(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.prepare", *argv, *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)

    ok = prepare("--out", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    assert "warning: owner carol has no records" in ok.stdout and "owner alice" not in ok.stdout
    strict = prepare("--out", str(tmp_path / "strict"), "--max-reject-rate", "0.05")
    assert strict.returncode == 1
    assert "over --max-reject-rate" in strict.stderr
    for out in (ok, strict):
        assert "Traceback" not in out.stderr and "apitools" not in out.stderr, out.stderr


def test_reject_rate_over_the_limit_fails_the_job(pooled, tmp_path, capsys):
    argv = [a if a != "0.2" else "0.05" for a in pooled["argv"]]
    assert run(argv + ["--out", str(tmp_path / "strict")]) == 1
    assert "over --max-reject-rate" in capsys.readouterr().err
    assert not (tmp_path / "strict" / "manifest.json").exists()  # an incomplete folder never looks complete
    assert not (tmp_path / "strict" / ".fragments").exists()


def test_a_record_that_kills_its_decoder_is_rejected_and_its_chunk_still_written(tmp_path, monkeypatch):
    """use_subprocess turns a hard crash into a dead letter; the failed chunk is retried record by record."""
    import os
    import signal

    import pipelines.encrypt as encrypt

    truth = make_imagefolder(tmp_path / "src", per_class=2, splits=("train",))
    poison = "train/dog/img_002.png"
    real_decode = encrypt.decode_record

    def decode_or_die(record, **kw):
        if record.source_id == poison:
            os.kill(os.getpid(), signal.SIGKILL)  # what a segfaulting decoder looks like to Beam
        return real_decode(record, **kw)

    monkeypatch.setattr(encrypt, "decode_record", decode_or_die)  # the decoder subprocess is forked
    Key.generate("solo").save(tmp_path / "solo.key")
    argv = ["--source", str(tmp_path / "src"), *SCHEME, "--keys", str(tmp_path / "solo.key"), "--out",
            str(tmp_path / "out"), "--chunk", "3", "--max-reject-rate", "0.5", "--quiet"]
    assert run(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [(r["source"], r["reason"].split(":")[0]) for r in rows] == [(poison, "decoder_crashed")]
    m = Manifest.load(tmp_path / "out")
    assert sum(s.count for s in m.shards) == len(truth) - 1          # the poison's chunk-mates are written
    assert sum(s["read"] for s in m.stats) == len(truth) == sum(s["written"] + s["rejected"] for s in m.stats)


@pytest.mark.parametrize("scheme", [["--scheme", "le"], ["--scheme", "etc", "--param", "block_size=4"]])
def test_jpeg_is_refused_before_any_work_for_incompatible_schemes(pooled, tmp_path, capsys, scheme):
    argv = ["--source", str(pooled["root"] / "src"), *scheme, "--keys", str(pooled["root"] / "alice.key"),
            "--out", str(tmp_path / "j"), "--jpeg-quality", "85"]
    assert run(argv) == 2
    assert "not JPEG-compatible" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def test_cifar_archive_to_npy_then_reshard_as_webdataset_source(tmp_path, fixed_key):
    truth = make_cifar(tmp_path / "cifar-10-python.tar.gz")
    fixed_key.save(tmp_path / "k.key")
    argv = ["--source", str(tmp_path / "cifar-10-python.tar.gz"), "--scheme", "plain", "--keys",
            str(tmp_path / "k.key"), "--encoding", "npy", "--quiet"]
    assert run(argv + ["--out", str(tmp_path / "plain")]) == 0
    m = Manifest.load(tmp_path / "plain")
    assert m.class_names[:2] == ["class0", "class1"] and m.splits == {"test": 3, "train": 6}
    salt = sample_key_salt(fixed_key)
    by_key = {sample_key(sid, salt): v for sid, v in truth.items()}
    for s in m.shards:
        for key, image, label in decode_shard(tmp_path / "plain" / s.path):
            assert np.array_equal(image, by_key[key][0]) and label == by_key[key][1]
    # the published plain dataset is itself a source: re-encrypt it with EtC
    argv = ["--source", f"wds:{tmp_path / 'plain'}", "--scheme", "etc", "--param", "block_size=16",
            "--keys", str(tmp_path / "k.key"), "--quiet", "--out", str(tmp_path / "etc")]
    assert run(argv) == 0
    m2 = Manifest.load(tmp_path / "etc")
    assert m2.class_names == m.class_names and m2.splits == m.splits and verify(tmp_path / "etc")[0] == []


def test_parquet_owner_column_and_jpeg(tmp_path):
    sites = ["A", "B", "A", "B", "A", "C"]
    make_parquet(tmp_path / "pq" / "train-00000-of-00001.parquet", groups=sites)
    for name in ("a", "b"):
        Key.generate(name).save(tmp_path / f"{name}.key")
    (tmp_path / "owners.json").write_text(json.dumps({
        "column": "site",
        "owners": {"a": {"key": "a.key", "match": ["A"]}, "b": {"key": "b.key", "match": ["B"]}}}))
    argv = ["--source", str(tmp_path / "pq"), "--scheme", "etc", "--param", "block_size=16", "--keys",
            str(tmp_path / "owners.json"), "--jpeg-quality", "90", "--max-reject-rate", "0.5", "--quiet",
            "--out", str(tmp_path / "out")]
    assert run(argv) == 0
    m = Manifest.load(tmp_path / "out")
    assert m.encoding == "jpeg" and m.jpeg_quality == 90 and m.class_names == ["zebra", "ant", "mole"]
    assert {o.name: o.counts for o in m.owners} == {"a": {"train": 3}, "b": {"train": 2}}
    rows = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["no_owner"]
    assert verify(tmp_path / "out", decode=True)[0] == []


def test_lcrypt_cli_runs_prepare_and_verify(pooled, tmp_path, capsys):
    from lcrypt.cli import main

    argv = ["prepare", "--source", str(pooled["root"] / "src" / "test"), "--scheme", "pe", "--keys",
            str(pooled["root"] / "bob.key"), "--out", str(tmp_path / "cli"), "--quiet",
            "--runner", "DirectRunner"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "rejected" in out
    assert main(["verify", str(tmp_path / "cli")]) == 0


def test_pipeline_constructs_for_dataflow_without_submitting(pooled):
    from pipelines.prepare import construct

    p = construct(["--source", str(pooled["root"] / "src"), *SCHEME,
                   "--keys", str(pooled["root"] / "alice.key"),
                   "--out", "gs://lcrypt-example-bucket/out", "--runner", "DataflowRunner",
                   "--project", "lcrypt-example", "--region", "europe-west1",
                   "--temp_location", "gs://lcrypt-example-bucket/tmp",
                   "--staging_location", "gs://lcrypt-example-bucket/staging"])
    try:
        assert type(p.runner).__name__ == "DataflowRunner"
        proto = p.to_runner_api()
        names = {t.unique_name for t in proto.components.transforms.values()}
        assert {"ReadRecords", "EncryptChunks", "GroupShards", "WriteShards", "Finalize"} <= names
    finally:
        shutil.rmtree(p.local_tempdir, ignore_errors=True)  # Beam removes it only when a pipeline runs


@pytest.mark.shared_data
def test_shared_cifar10_subset(shared_datasets, tmp_path, fixed_key):
    """Real CIFAR-10 JPEGs (two classes of the test split): EtC + JPEG q85, verify, decrypt close to
    source."""
    from lcrypt.images import decode_image

    src = tmp_path / "cifar-subset.tar"
    kept = {}
    with open(shared_datasets / "cifar10-jpeg.tar.gz", "rb") as f, tarfile.open(src, "w") as out:
        for name, data in iter_members(f):
            if name.startswith(("cifar10/test/airplane/", "cifar10/test/cat/")) and name[-8:-4] < "0100":
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                out.addfile(ti, io.BytesIO(data))
                kept[name] = data
            if len(kept) == 200 or name.startswith("cifar10/train/"):
                break
    assert len(kept) == 200
    fixed_key.save(tmp_path / "k.key")
    argv = ["--source", str(src), "--scheme", "etc", "--param", "block_size=8",
            "--keys", str(tmp_path / "k.key"), "--jpeg-quality", "85", "--quiet",
            "--out", str(tmp_path / "out")]
    assert run(argv) == 0
    m = Manifest.load(tmp_path / "out")
    assert m.splits == {"test": 200} and m.class_names == ["airplane", "cat"]
    assert verify(tmp_path / "out")[0] == []
    salt = sample_key_salt(fixed_key)
    by_key = {sample_key(n, salt): decode_image(d) for n, d in kept.items()}
    scheme = get_scheme("etc", block_size=8)
    errs = []
    for s in m.shards:
        for key, image, _ in decode_shard(tmp_path / "out" / s.path):
            plain = scheme.decrypt(image[None], fixed_key)[0].astype(float)
            errs.append(np.mean((plain - by_key[key]) ** 2))
    psnr = 10 * np.log10(255**2 / np.mean(errs))
    assert len(errs) == 200 and psnr > 30  # q85 re-encoding of the encrypted image, then exact decryption


def test_encrypt_batch_is_the_batched_encryption_for_large_and_small_images():
    from pipelines.encrypt import LARGE_IMAGE_BYTES, encrypt_batch

    scheme, key = get_scheme("etc", block_size=16), Key.generate("o")
    rng = np.random.default_rng(3)
    for side in (32, 160):  # 3 KB batched; 75 KB one call per image
        images = list(rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8))
        assert (images[0].nbytes >= LARGE_IMAGE_BYTES) == (side == 160)
        got = np.stack(list(encrypt_batch(scheme, images, key)))
        assert np.array_equal(got, scheme.encrypt(np.stack(images), key))


def test_source_and_output_on_an_object_store_give_the_same_dataset(pooled, tmp_path, monkeypatch):
    """gs:// has no folders (tests/object_store.py keeps its rules): the job reads a tree and writes its
    dataset there, the result is byte-identical to the local run, and no scratch object is left behind."""
    from tests import object_store

    monkeypatch.setenv(object_store.ROOT_ENV, str(tmp_path / "store"))
    bucket = tmp_path / "store" / "bucket"
    shutil.copytree(pooled["root"] / "src", bucket / "src")
    argv = [a.replace(str(pooled["root"] / "src"), "objstore://bucket/src") for a in pooled["argv"]]
    assert run(argv + ["--out", "objstore://bucket/out"]) == 0
    same_dataset(pooled["out"], bucket / "out")


@pytest.mark.parametrize("store", ["local", "object store"])
def test_out_holding_files_is_refused_and_overwrite_replaces_only_what_prepare_wrote(
        pooled, tmp_path, monkeypatch, capsys, store):
    if store == "local":
        out, folder = str(tmp_path / "out"), tmp_path / "out"
    else:
        from tests import object_store

        monkeypatch.setenv(object_store.ROOT_ENV, str(tmp_path / "store"))
        out, folder = "objstore://bucket/out", tmp_path / "store" / "bucket" / "out"
    (folder / "train").mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's")
    assert run(pooled["argv"] + ["--out", out]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert run(pooled["argv"] + ["--out", out, "--overwrite"]) == 2  # the user's file: nothing is touched
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert tree_files(folder) == {"notes.txt": b"the user's"}
    (folder / "notes.txt").unlink()
    assert run(pooled["argv"] + ["--out", out]) == 0
    assert run(pooled["argv"] + ["--out", out]) == 2
    assert "already holds a dataset; pass --overwrite" in capsys.readouterr().err
    for stray in ("train/bob-000099.tar", "test/README.md"):  # not in the manifest: the user's
        (folder / stray).write_bytes(b"not written by this dataset's prepare")
        before = tree_files(folder)
        assert run(pooled["argv"] + ["--out", out, "--overwrite"]) == 2
        assert stray in capsys.readouterr().err and tree_files(folder) == before
        (folder / stray).unlink()
    (folder / "index.parquet").write_bytes(b"damaged")  # prepare's own file: replaced
    assert run(pooled["argv"] + ["--out", out, "--overwrite"]) == 0
    same_dataset(pooled["out"], folder)


def _source_in(kind: str, folder: Path) -> str:
    """A small source of each kind under ``folder``; returns its --source path relative to it."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "tar.gz":
        make_imagefolder(folder / "tree", per_class=2)
        make_tar_tree(folder / "tree.tar.gz", folder / "tree")
        shutil.rmtree(folder / "tree")
        return "tree.tar.gz"
    if kind == "cifar":
        make_cifar(folder / "cifar-10-python.tar.gz")
        return "cifar-10-python.tar.gz"
    if kind == "parquet":
        make_parquet(folder / "pq" / "train-00000-of-00002.parquet")
        make_parquet(folder / "pq" / "test-00000-of-00001.parquet", n=3)
        return "pq"
    make_wds(folder / "wds", n=7)
    return "wds:wds"


@pytest.mark.parametrize("kind", ["tar.gz", "cifar", "parquet", "wds"])
def test_every_source_kind_reads_from_an_object_store_like_from_disk(kind, tmp_path, monkeypatch, fixed_key):
    """Each reader lists and opens files through Beam: on a gs://-like store it finds the same records."""
    from tests import object_store

    monkeypatch.setenv(object_store.ROOT_ENV, str(tmp_path / "store"))
    rel = _source_in(kind, tmp_path / "store" / "bucket")
    fixed_key.save(tmp_path / "k.key")
    argv = [*SCHEME, "--keys", str(tmp_path / "k.key"), "--shard-size", "4", "--name", kind, "--quiet"]
    local = f"{rel[:4]}{tmp_path / 'store' / 'bucket' / rel[4:]}" if rel.startswith("wds:") else \
        str(tmp_path / "store" / "bucket" / rel)
    assert run(["--source", local, *argv, "--out", str(tmp_path / "out")]) == 0
    remote = f"wds:objstore://bucket/{rel[4:]}" if rel.startswith("wds:") else f"objstore://bucket/{rel}"
    assert run(["--source", remote, *argv, "--out", str(tmp_path / "out2")]) == 0
    m = Manifest.load(tmp_path / "out")
    assert sum(s["read"] for s in m.stats) > 0
    assert sum(s["written"] for s in m.stats) == sum(m.splits.values())
    same_dataset(tmp_path / "out", tmp_path / "out2")
