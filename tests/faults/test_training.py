"""Fault injection for the loaders and training: each test reproduces one case the fault-injection round
found and asserts the rule: a one-line error (no traceback), a non-zero exit, nothing created (``--out``
absent when it was absent before) and files that existed before byte-identical after.

Datasets are made by the real `prepare` pipeline (tests/test_loader.py make_dataset) and then damaged
the way a user or a disk would: a shard deleted, truncated or edited, the manifest edited.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lcrypt import Key
from lcrypt.format import (Manifest, ShardFormatError, decode_samples, decode_shard, encode_image, encode_png,
                           tar_bytes)
from lcrypt.tarstream import iter_members
from loaders import plan as planning
from loaders.dataset import ShardDataset
from loaders.gpu import GPUResident
from tests.test_loader import make_dataset
from tests.test_train import ROOT, run_dir, torchrun

MODEL = ["--model", "convmixer", "--width", "16", "--depth", "2", "--kernel", "3", "--seed", "7", "--quiet"]
FAST = [*MODEL, "--batch-size", "4", "--epochs", "1", "--test-split", "none"]


# -- helpers --------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes, or None when the folder does not exist."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(rc: int, err: str, prog: str = "training.train", match: str = "") -> str:
    """Assert a one-line refusal; returns the line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def train(capsys, *argv: str) -> tuple[int, str]:
    from training.train import run

    rc = run([str(a) for a in argv])
    return rc, capsys.readouterr().err


def largest_shard(data: Path, split: str = "train"):
    return max(Manifest.load(data).shards_for(split), key=lambda e: e.count)


def set_shard(data: Path, rel: str, raw: bytes) -> None:
    """Write a shard's bytes and put its new size and sha256 in the manifest: only its content is wrong."""
    import hashlib

    (data / rel).write_bytes(raw)
    m = Manifest.load(data)
    entry = next(e for e in m.shards if e.path == rel)
    entry.bytes, entry.sha256 = len(raw), hashlib.sha256(raw).hexdigest()
    m.save(data)


def edit_members(data: Path, edit) -> tuple[str, list[str]]:
    """Pass the largest train shard's members through ``edit``; returns the shard path and its keys."""
    entry = largest_shard(data)
    with open(data / entry.path, "rb") as f:
        members = list(iter_members(f))
    set_shard(data, entry.path, tar_bytes(edit(members)))
    return entry.path, [n.split(".")[0] for n, _ in members if n.endswith(".cls")]


def png_of_size(h: int, w: int) -> bytes:
    """A valid PNG in lcrypt's layout of an h x w black image, made without holding its pixels."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + tag + body + zlib.crc32(tag + body).to_bytes(4, "big")

    comp = zlib.compressobj(6)
    row = bytes(3 * w + 1)
    idat = b"".join([comp.compress(row) for _ in range(h)] + [comp.flush()])
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def prepare(src: Path, key_file: Path, out: Path, scheme: str, *params: str) -> Path:
    """Run the real pipeline on an image tree with an existing key file."""
    from pipelines.prepare import run

    assert run(["--source", str(src), "--scheme", scheme, *params, "--keys", str(key_file), "--out", str(out),
                "--shard-size", "7", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 training samples (3 classes, 16x16, PE) in uneven shards of about 7, 6 test samples."""
    root = tmp_path_factory.mktemp("faults-training")
    path, key = make_dataset(root, per_class={"train": 8, "test": 2})
    return {"root": root, "data": path, "key": key}


@pytest.fixture(scope="module")
def trained(data):
    """One real training run on ``data`` (its checkpoint is what --resume and predict tests use)."""
    from training.train import run

    out = data["root"] / "runs"
    assert run([str(a) for a in ["--data", data["data"], "--out", out, *FAST]]) == 0
    return run_dir(out)


def copy_data(data, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(data["data"], out)
    return out


# -- 1. every sample is trained on: what is dropped moves each epoch ---------------------------------
CASES = [([111], 1, 2, 16), ([40, 40, 31], 2, 2, 8), ([100, 100, 100, 100, 103], 2, 4, 32), ([5], 3, 1, 1),
         ([1] * 7, 3, 2, 2), ([7, 3, 10, 1, 9], 2, 3, 4), ([13, 2], 1, 1, 8), ([9, 9], 2, 1, 5)]


@pytest.mark.parametrize("counts,world,workers,batch", CASES)
def test_plan_drops_a_moving_window_so_every_sample_is_seen_within_two_epochs(counts, world, workers, batch):
    every = {(s, i) for s, n in enumerate(counts) for i in range(n)}
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for seed in (0, 1):
        seen_by_epoch, dropped_by_epoch = [], []
        for epoch in range(6):
            plans = [planning.plan_epoch(counts, batch, r, world, workers, seed=seed, epoch=epoch)
                     for r in range(world)]
            assert len({p.num_batches for p in plans}) == 1 and plans[0].num_batches >= 1  # DDP stays in step
            seen = []
            for p in plans:
                assert p.num_samples == p.num_batches * batch == sum(w.num_samples for w in p.workers)
                seen += [(pc.shard, i) for w in p.workers for pc in w.pieces
                         for i in range(pc.start, pc.stop)]
            assert len(seen) == len(set(seen))  # ranks and workers disjoint
            dropped = every - set(seen)
            assert len(dropped) == sum(counts) - world * plans[0].num_samples < world * batch
            # the dropped samples are exactly the plan's window, in manifest order
            mask = planning.window_mask(sum(counts), plans[0].dropped)
            assert {(s, i) for s, i in dropped} == {(s, i) for s, i in every if mask[offsets[s] + i]}
            seen_by_epoch.append(set(seen))
            dropped_by_epoch.append(dropped)
            again = planning.plan_epoch(counts, batch, world - 1, world, workers, seed=seed, epoch=epoch)
            assert again == plans[-1]  # a pure function: a resumed run plans the same epoch
        for a, b in zip(seen_by_epoch, seen_by_epoch[1:]):
            assert a | b == every  # every sample trained on within any two consecutive epochs
        if dropped_by_epoch[0]:
            assert dropped_by_epoch[0] != dropped_by_epoch[1]  # the drop moves
            assert not dropped_by_epoch[0] & dropped_by_epoch[1]
    cover = [planning.plan_epoch(counts, batch, r, world, workers, shuffle=False, drop_last=False,
                                 cover_all=True) for r in range(world)]
    assert sum(p.num_samples for p in cover) == sum(counts)  # evaluation drops nothing


def test_shard_dataset_trains_on_every_key_within_two_epochs(data):
    """The reproduction: few shards, batches that do not divide the rank's share; read the real shards."""
    m = Manifest.load(data["data"])
    keys = {k for e in m.shards_for("train") for k, _, _ in decode_shard(data["data"] / e.path)}
    assert len(keys) == 24
    per_epoch = []
    for epoch in range(3):
        ranks = []
        for rank in range(2):
            ds = ShardDataset(data["data"], "train", 5, rank=rank, world=2, num_workers=2, seed=3)
            ds.set_epoch(epoch)
            batches = [b["key"] for b in ds]
            assert len(batches) == len(ds) == 2  # 12 per rank, 2 batches of 5: 4 samples sit out per epoch
            ranks.append({k for b in batches for k in b})
        assert not ranks[0] & ranks[1] and len(ranks[0] | ranks[1]) == 20
        per_epoch.append(ranks[0] | ranks[1])
    assert per_epoch[0] | per_epoch[1] == keys and per_epoch[1] | per_epoch[2] == keys
    assert len({frozenset(keys - e) for e in per_epoch}) == 3  # a different 4 left out each epoch


def test_gpu_resident_mode_leaves_out_the_same_moving_window():
    """GPU-resident mode drew a fresh permutation per epoch, so its left-out tail was random: a sample could
    sit out several epochs running. It now leaves out the plan's window too."""
    n, world, batch = 23, 2, 4
    images, labels = torch.zeros(n, 2, 2, 3, dtype=torch.uint8), torch.arange(n)
    seen = []
    for epoch in range(4):
        ranks = [GPUResident(images, labels, batch, device="cpu", rank=r, world=world, seed=5)
                 for r in range(world)]
        idx = []
        for r in ranks:
            r.set_epoch(epoch)
            got = torch.cat([b["index"] for b in r]).tolist()
            assert len(got) == len(r) * batch == 8
            idx.append(set(got))
        assert not idx[0] & idx[1]
        seen.append(idx[0] | idx[1])
    for a, b in zip(seen, seen[1:]):
        assert a | b == set(range(n))


# -- 2. a deleted shard or an edited manifest count stops the whole run, on every rank ---------------
def test_deleted_shard_is_refused_before_anything_is_created(data, tmp_path, capsys):
    bad = copy_data(data, tmp_path)
    gone = largest_shard(bad)
    (bad / gone.path).unlink()
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", bad, "--out", out, *FAST)
    refused(rc, err, match=rf"{re.escape(gone.path)}: the shard is missing; .*`lcrypt verify "
                           rf"{re.escape(str(bad))}`")
    assert snapshot(out) is None


def test_manifest_count_that_disagrees_with_its_shard_stops_training(data, tmp_path, capsys):
    bad = copy_data(data, tmp_path)
    manifest = json.loads((bad / "manifest.json").read_text())
    entry = max((s for s in manifest["shards"] if s["split"] == "train"), key=lambda s: s["count"])
    entry["count"] -= 1  # the shard itself is intact: only its count was edited
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", bad, "--out", out, *FAST)
    refused(rc, err, match=rf"{re.escape(entry['path'])}: the shard holds {entry['count'] + 1} samples, "
                           rf"the manifest says {entry['count']}")
    assert snapshot(out) is None


def rank_tracebacks(err: str) -> list[str]:
    """Lines of a traceback printed by the training ranks (torchrun's own launcher traceback aside)."""
    ours = re.compile(r"(training|loaders)/\w+\.py")
    return [line for line in err.splitlines()
            if (line.startswith("[rank") and "Traceback" in line) or ours.search(line)]


@pytest.mark.slow
def test_torchrun_deleted_shard_stops_every_rank_with_one_line(data, tmp_path):
    bad = copy_data(data, tmp_path)
    gone = largest_shard(bad)
    (bad / gone.path).unlink()
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = torchrun(bad, out, "--epochs", "1", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("training.train: error:")]
    assert proc.returncode != 0 and time.monotonic() - t0 < 120
    assert len(errors) == 1 and f"{gone.path}: the shard is missing" in errors[0], proc.stderr[-3000:]
    assert not rank_tracebacks(proc.stderr), proc.stderr[-3000:]
    assert snapshot(out) is None


@pytest.mark.slow
def test_torchrun_edited_manifest_count_stops_the_run_without_hanging(data, tmp_path):
    bad = copy_data(data, tmp_path)
    manifest = json.loads((bad / "manifest.json").read_text())
    for entry in manifest["shards"]:  # every train shard: whichever pieces a rank reads, it meets one
        if entry["split"] == "train":
            entry["count"] += 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    proc = torchrun(bad, out, "--epochs", "1", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("training.train: error:")]
    assert proc.returncode != 0, proc.stderr[-3000:]
    shard_error = r"train/\S+\.tar: the shard holds \d+ samples, the manifest says \d+"
    assert any(re.search(shard_error, e) for e in errors), proc.stderr[-3000:]
    assert all("the manifest says" in e or "another rank ended" in e for e in errors), errors
    assert not rank_tracebacks(proc.stderr), proc.stderr[-3000:]
    assert snapshot(out) is None  # failed in the first epoch: nothing was written, the lock is gone


# -- 3. one-line errors for training and predict -------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["--adapt", "block"], r"--adapt block needs a block size and the scheme has none: give --adapt-block"),
    (["--name", "a/b"], r"--name 'a/b' is not a folder name"),
    (["--epochs", "0"], r"--epochs 0 is out of range: it must be at least 1"),
    (["--batch-size", "0"], r"--batch-size 0 is out of range"),
    (["--log-every", "0"], r"--log-every 0 is out of range"),
    (["--batch-size", "1000"], r"24 training samples give no batch of 1000"),
    (["--test-split", "val"], r"has no split 'val'"),
])
def test_bad_arguments_are_one_line_and_create_nothing(data, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", data["data"], "--out", out, *FAST, *args)
    refused(rc, err, match=match)
    assert snapshot(out) is None


@pytest.mark.parametrize("args, match", [
    (["--model", "nope"], r"unknown --model 'nope': neither lcrypt's \(convmixer, resnet18, vit\) nor a timm "
                          r"model; no close match"),
    (["--model", "mobilenetv3_small"], r"unknown --model 'mobilenetv3_small': .*close matches: "
                                       r"mobilenetv3_small_\d+, "),
    (["--model", "inception_v3"], r"cannot build --model inception_v3: it cannot take the dataset's 16x16 "
                                  r"images: "),
    (["--model", "resnet10t", "--width", "8"], r"--width does not apply to resnet10t \(a timm model's size "
                                               r"comes with its name"),
    (["--model", "resnet10t", "--patch", "4"], r"--patch does not apply to resnet10t: it has no patch size"),
    (["--model", "resnet18", "--kernel", "3"], r"--kernel does not apply to resnet18 \(it takes no model"),
])
def test_bad_models_are_one_line_and_create_nothing(data, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", data["data"], "--out", out, "--batch-size", "4", "--quiet", *args)
    refused(rc, err, match=match)
    assert snapshot(out) is None


def test_dataset_without_a_test_split_is_refused_when_evaluation_is_asked(tmp_path, capsys):
    train_only, _ = make_dataset(tmp_path, per_class={"train": 4})
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", train_only, "--out", out, *MODEL, "--batch-size", "4")
    refused(rc, err, match=r"has no split 'test' \(splits: train\); .*'none' skips evaluation")
    assert snapshot(out) is None
    rc, _ = train(capsys, "--data", train_only, "--out", out, *FAST)  # FAST: --test-split none
    assert rc == 0 and len(list(out.iterdir())) == 1


def test_missing_data_is_one_line_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", tmp_path / "nowhere", "--out", out, *FAST)
    refused(rc, err, match=r"cannot read the dataset --data .*nowhere.*not found")
    assert snapshot(out) is None


def test_label_outside_the_classes_names_shard_and_sample(data, tmp_path, capsys):
    for label in (b"3", b"-1"):  # the manifest has 3 classes
        bad = copy_data(data, tmp_path / label.decode())
        rel, keys = edit_members(bad, lambda ms: [(n, label if i == 2 else b) for i, (n, b) in enumerate(ms)])
        ds = ShardDataset(bad, "train", 4, shuffle=False)
        match = rf"{re.escape(rel)}: sample {keys[1]}: class index {int(label)} is outside 0..2"
        with pytest.raises(ShardFormatError, match=match):
            list(ds)
        out = tmp_path / f"out{label.decode()}"
        rc, err = train(capsys, "--data", bad, "--out", out, *FAST)
        refused(rc, err, match=rf"{re.escape(rel)}: sample {keys[1]}: class index {int(label)}")
        assert snapshot(out) is None


def _bad_checksum(raw: bytes) -> bytes:
    header = bytearray(raw)
    header[TAR_SECOND_HEADER] ^= 0x01  # a letter of the second member's name: its checksum no longer adds up
    return bytes(header)


TAR_SECOND_HEADER = 512 + 512  # first member (a .cls of a few bytes): header + one data block


@pytest.mark.parametrize("damage, match", [(_bad_checksum, "tar header checksum mismatch"),
                                           (lambda raw: raw[:1500], "tar archive is truncated")])
def test_tar_errors_name_the_shard(data, tmp_path, capsys, damage, match):
    bad = copy_data(data, tmp_path)
    entry = largest_shard(bad)
    set_shard(bad, entry.path, damage((bad / entry.path).read_bytes()))  # manifest size and sha256 agree
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", bad, "--out", out, *FAST)
    refused(rc, err, match=rf"{re.escape(str(bad / entry.path))}: .*{match}")
    assert snapshot(out) is None


def test_huge_image_in_a_small_dataset_is_refused_from_its_header(data, tmp_path, capsys):
    big = png_of_size(8000, 8000)  # 186 KB on disk, 192 MB of pixels
    bad = copy_data(data, tmp_path)
    rel, keys = edit_members(bad, lambda ms: [(n, big if i == 3 else b) for i, (n, b) in enumerate(ms)])
    out = tmp_path / "out"
    rc, err = train(capsys, "--data", bad, "--out", out, *FAST)
    refused(rc, err, match=rf"{re.escape(rel)}: {keys[1]}\.png: PNG header says 8000x8000 \(W x H\), but the "
                           r"dataset's images are 16x16")
    assert snapshot(out) is None
    small = encode_png(np.zeros((16, 16, 3), np.uint8))
    records = [("a", b"0", "png", small, "u"), ("b", b"1", "png", big, "u")]
    tracemalloc.start()
    with pytest.raises(ShardFormatError, match="u: b.png: PNG header says 8000x8000"):
        decode_samples(records, (16, 16, 3))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # nothing was inflated


def test_jpeg_and_npy_of_another_size_are_refused_from_their_header():
    rng = np.random.default_rng(0)
    for enc, ext, kind in [("jpeg", "jpg", "JPEG"), ("npy", "npy", "NPY"), ("png", "png", "PNG")]:
        def blob(h, w):
            return encode_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), enc, 90)

        for odd in (0, 2):  # first of the batch, and inside it
            records = [(f"k{i}", b"1", ext, blob(64, 48) if i == odd else blob(16, 16), "u")
                       for i in range(3)]
            with pytest.raises(ShardFormatError, match=rf"u: k{odd}\.{ext}: {kind} header says 48x64"):
                decode_samples(records, (16, 16, 3))
            good = [r for i, r in enumerate(records) if i != odd]
            assert decode_samples(good, (16, 16, 3))[0].shape == (2, 16, 16, 3)


def test_predict_refuses_in_one_line(data, trained, tmp_path, capsys):
    from training.predict import run

    image = data["root"] / "src" / "test" / "green" / "green_001.png"
    key = data["root"] / "alice.key"
    assert run(["--checkpoint", str(trained / "checkpoint.pt"), "--key", str(key), str(image)]) == 0
    capsys.readouterr()
    mallory = Key.generate("mallory")
    mallory.save(tmp_path / "mallory.key")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    ckpt, k, img = str(trained / "checkpoint.pt"), str(key), str(image)
    cases = [((tmp_path / "none.pt", k, img), "no such checkpoint file"),
             ((garbage, k, img), "cannot be loaded as a training checkpoint"),
             ((ckpt, k, not_image), r"notes.png: not_an_image: not a recognised image"),
             ((ckpt, k, tmp_path / "absent.png"), r"absent.png: cannot read it \(No such file"),
             ((ckpt, tmp_path / "mallory.key", img), f"key {mallory.key_id} is not one this model was"),
             ((ckpt, tmp_path / "none.key", img), "key file .* not found")]
    for (checkpoint, key_file, image_file), match in cases:
        before = snapshot(tmp_path)
        rc = run(["--checkpoint", str(checkpoint), "--key", str(key_file), str(image_file)])
        refused(rc, capsys.readouterr().err, prog="training.predict", match=match)
        assert snapshot(tmp_path) == before


# -- 4. two runs into one run folder ---------------------------------------------------------------
RUN_FILES = {"checkpoint.pt", "run.json", "metrics.jsonl", "metrics.csv", "curves.png", "summary.json"}


def test_second_run_into_a_busy_run_folder_is_refused_naming_the_first(data, tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "training.train", "--data", str(data["data"]), "--out", str(out), "--name",
           "busy", *MODEL, "--batch-size", "4", "--epochs", "1000", "--test-split", "none"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / "busy" / ".lcrypt-train.lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        holder = lock.read_bytes()
        assert json.loads(holder)["pid"] == first.pid
        for resume in ([], ["--resume", "auto", "--epochs", "100000"]):  # a new run, or continuing it
            rc, err = train(capsys, "--data", data["data"], "--out", out, "--name", "busy", *FAST, *resume)
            refused(rc, err, match=rf"(the run folder {re.escape(str(out / 'busy'))} is in use by another "
                                   rf"training run \(pid {first.pid} on host \S+, started \d{{4}}-\d\d-\d\dT"
                                   rf"|--name busy: .* already holds a run; continue it with --resume auto)")
        assert lock.read_bytes() == holder  # the holder's record is untouched
        written = {Path(f).name for f in snapshot(out)}  # only the first run writes, only its own files
        assert all(n in RUN_FILES | {".lcrypt-train.lock"} or n.endswith(".tmp") for n in written), written
        assert [p.name for p in out.iterdir()] == ["busy"]
    finally:
        first.send_signal(signal.SIGTERM)
        rc = first.wait(timeout=60)
    assert rc == 128 + signal.SIGTERM and not lock.exists()  # stopped, and its lock file went with it
    ckpt = out / "busy" / "checkpoint.pt"  # absent when the first run was stopped in its first epoch
    step = torch.load(ckpt, weights_only=True)["global_step"] if ckpt.exists() else 0
    rc, err = train(capsys, "--data", data["data"], "--out", out, "--name", "busy", "--resume", "auto", *FAST,
                    "--epochs", "100000", "--stop-after-steps", step + 1)
    assert rc == 0 and not lock.exists()  # the folder is free again: its run continued by one step
    assert torch.load(ckpt, weights_only=True)["global_step"] == step + 1


def test_lock_is_taken_over_from_a_dead_run_and_released(tmp_path):
    from training.errors import TrainError
    from training.outdir import OutLock

    out = tmp_path / "out"
    out.mkdir()
    (out / ".lcrypt-train.lock").write_text('{"pid": 1, "host": "gone", "started": "2020-01-01T00:00:00"}\n')
    a = OutLock(out)
    a.acquire()  # a leftover file from a killed run holds no flock
    assert json.loads((out / ".lcrypt-train.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(TrainError, match=rf"in use by another training run \(pid {os.getpid()}"):
        OutLock(out).acquire()
    a.release()
    assert not (out / ".lcrypt-train.lock").exists() and out.is_dir()  # out existed before: kept
    b = OutLock(tmp_path / "fresh")
    b.acquire()
    b.release()
    assert not (tmp_path / "fresh").exists()  # made by the lock, left empty: removed


@pytest.mark.slow
def test_torchrun_into_a_busy_out_stops_every_rank(data, tmp_path):
    from training.outdir import OutLock

    out = tmp_path / "out"
    lock = OutLock(out / "busy")
    lock.acquire()
    try:
        holder = (out / "busy" / ".lcrypt-train.lock").read_bytes()
        proc = torchrun(data["data"], out, "--epochs", "1", "--name", "busy", check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("training.train: error:")]
        assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
        assert f"is in use by another training run (pid {os.getpid()}" in errors[0]
        assert not rank_tracebacks(proc.stderr), proc.stderr[-3000:]
        assert snapshot(out) == {"busy/.lcrypt-train.lock": holder}
    finally:
        lock.release()


# -- 5. --resume continues only the same run ----------------------------------------------------------
@pytest.fixture(scope="module")
def same_key_datasets(data):
    """The same images and key as ``data``, prepared with another scheme, and with one class fewer."""
    root = data["root"]
    other_scheme = prepare(root / "src", root / "alice.key", root / "etc", "etc", "--param", "block_size=8")
    two = root / "src2"
    shutil.copytree(root / "src", two)
    for split in ("train", "test"):
        shutil.rmtree(two / split / "blue")
    two_classes = prepare(two, root / "alice.key", root / "two", "pe")
    return {"etc": other_scheme, "two": two_classes}


@pytest.mark.parametrize("case, extra, match", [
    ("etc", [], r"trained on data with scheme 'pe', but --data '.*' has 'etc'; resume on the dataset"),
    ("two", [], r"trained on data with class count 3, but --data '.*' has 2"),
    ("same", ["--width", "32"], r"is a model with --width 16, but this run asks for --width 32; resume with "
                                r"the checkpoint's --width 16"),
    ("same", ["--adapt", "pe"], r"--adapt none, but this run asks for --adapt pe"),
    ("same", ["--model", "resnet18"], r"--model convmixer, but this run asks for --model resnet18"),
    ("same", ["--model", "resnet10t"], r"--model convmixer, but this run asks for --model resnet10t"),
])
def test_resume_refuses_another_dataset_or_model(data, trained, same_key_datasets, tmp_path, capsys, case,
                                                 extra, match):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = snapshot(run)
    target = data["data"] if case == "same" else same_key_datasets[case]
    model = MODEL if "--model" not in extra else ["--seed", "7", "--quiet"]  # resnets take no --width
    rc, err = train(capsys, "--data", target, "--out", tmp_path / "runs", *model, "--batch-size", "4",
                    "--test-split", "none", "--epochs", "2", "--resume", run, *extra)
    refused(rc, err, match=match)
    assert snapshot(run) == before and not (tmp_path / "runs").exists()


def test_resume_on_the_same_run_still_continues(data, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    rc, _ = train(capsys, "--data", data["data"], *FAST, "--epochs", "2", "--resume", run)
    assert rc == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["loader"]["epoch"] == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["event"] == "epoch"] == [1, 2]
    assert {r["run"] for r in lines} == {json.loads((run / "run.json").read_text())["run"]}  # one run
