"""training.train's run folders and what a run writes there: each run its own folder, run ids, epoch
numbers, metrics.csv, curves.png, TensorBoard events, --resume RUN|auto, --name; the CPU epoch estimate;
`lcrypt train`."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.faults.test_training import refused, snapshot
from tests.test_loader import make_dataset
from tests.test_release import checkout_commands
from tests.test_train import ROOT, run_dir

TINY = ["--model", "convmixer", "--width", "16", "--depth", "2", "--kernel", "3", "--seed", "7", "--quiet",
        "--batch-size", "4", "--lr", "0.02", "--warmup-epochs", "0.2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 training samples (3 classes, 16x16, PE): 6 steps per epoch at batch 4; 6 test samples."""
    root = tmp_path_factory.mktemp("runs")
    path, _ = make_dataset(root, per_class={"train": 8, "test": 2})
    return path


def train(capsys, *argv) -> tuple[int, str, str]:
    from training.train import run

    rc = run([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_each_run_writes_its_own_folder_with_run_id_epochs_csv_and_curves(data, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "runs"
    for _ in range(2):  # the same command twice: two runs, neither over the other
        rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "2", "--log-every", "2")
        assert rc == 0
    folders = sorted(out.iterdir())
    assert len(folders) == 2 and all(re.fullmatch(r"\d{8}-\d{6}-pe-convmixer(-2)?", f.name) for f in folders)
    ids = set()
    for folder in folders:
        record = json.loads((folder / "run.json").read_text())
        rows = lines(folder)
        assert {r["run"] for r in rows} == {record["run"]}  # every line names its run
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["run"] == record["run"] and summary["run_dir"] == str(folder)
        ids.add(record["run"])
        steps = [r for r in rows if r["event"] == "step"]
        epochs = [r for r in rows if r["event"] == "epoch"]
        assert [(r["epoch"], r["step"]) for r in steps] == [(1, 2), (1, 4), (1, 6), (2, 8), (2, 10), (2, 12)]
        assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 6), (2, 12)]  # one numbering for both
        with open(folder / "metrics.csv") as f:
            table = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in table] == [1, 2]
        assert [float(r["test_top1"]) for r in table] == [r["test_top1"] for r in epochs]
        assert {r["run"] for r in table} == {record["run"]}
        with Image.open(folder / "curves.png") as img:
            assert img.format == "PNG" and img.size == (990, 240)
            assert len(img.convert("RGB").getcolors(1 << 16)) > 3  # lines drawn, not a blank canvas
    assert len(ids) == 2


def test_new_folder_names_never_collide():
    from training.runs import new_folder

    now = dt.datetime(2026, 11, 24, 15, 30, 12)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        first = new_folder(out, "le-convmixer", now)
        assert first.name == "20261124-153012-le-convmixer"
        first.mkdir()
        second = new_folder(out, "le-convmixer", now)
        assert second.name == "20261124-153012-le-convmixer-2"


def test_resume_auto_continues_the_newest_run_of_the_same_configuration(data, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "3", "--log-every", "1",
                     "--stop-after-steps", "8")
    assert rc == 0
    stopped = run_dir(out)
    rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--width", "24", "--epochs", "1")
    assert rc == 0  # another model: a run --resume auto must not pick
    # the stopped run had gone on writing after its checkpoint (step 8) before it was killed
    run_id = json.loads((stopped / "run.json").read_text())["run"]
    with open(stopped / "metrics.jsonl", "a") as f:
        for step in (9, 10):
            row = {"event": "step", "epoch": 2, "step": step, "loss": 9.0, "lr": 0.0, "run": run_id}
            f.write(json.dumps(row) + "\n")
    rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "3", "--log-every", "1",
                     "--resume", "auto")
    assert rc == 0 and len(list(out.iterdir())) == 2  # continued in its folder, no third run
    rows = lines(stopped)
    steps = [r["step"] for r in rows if r["event"] == "step"]
    assert steps == list(range(1, 19))  # each step once: the lines after the checkpoint were written again
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [1, 2, 3]
    assert {r["run"] for r in rows} == {run_id} and 9.0 not in {r.get("loss") for r in rows}
    assert json.loads((stopped / "summary.json").read_text())["steps"] == 18
    before = snapshot(out)
    rc, stdout, _ = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "3", "--resume", "auto")
    assert rc == 0 and "has trained 3 epochs: nothing to do" in stdout and snapshot(out) == before
    rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--depth", "3", "--epochs", "1",
                     "--resume", "auto")
    assert rc == 0 and len(list(out.iterdir())) == 3  # no run of that model yet: a new run


def test_name_is_one_run_and_resume_auto_name_continues_it(data, tmp_path, capsys):
    out = tmp_path / "runs"
    rc, _, _ = train(capsys, "--data", data, "--out", out, "--name", "mine", *TINY, "--epochs", "1")
    assert rc == 0 and [p.name for p in out.iterdir()] == ["mine"]
    before = snapshot(out)
    rc, _, err = train(capsys, "--data", data, "--out", out, "--name", "mine", *TINY, "--epochs", "1")
    refused(rc, err, match=r"--name mine: .*mine already holds a run; continue it with --resume auto "
                           r"--name mine")
    assert snapshot(out) == before
    rc, _, _ = train(capsys, "--data", data, "--out", out, "--name", "mine", *TINY, "--epochs", "2",
                     "--resume", "auto")
    assert rc == 0 and torch.load(out / "mine" / "checkpoint.pt", weights_only=True)["loader"]["epoch"] == 2
    (tmp_path / "runs" / "theirs").mkdir()
    (tmp_path / "runs" / "theirs" / "notes.txt").write_text("a user's file")
    before = snapshot(out)
    rc, _, err = train(capsys, "--data", data, "--out", out, "--name", "theirs", *TINY, "--epochs", "1")
    refused(rc, err, match=r"theirs exists and holds files that are not a training run \(notes.txt\)")
    assert snapshot(out) == before


class FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is not a dependency)."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir: str):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_the_run_scalars_or_is_refused_when_absent(data, tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a))
    out = tmp_path / "runs"
    rc, _, err = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "1", "--tensorboard")
    refused(rc, err, match=r"--tensorboard needs the tensorboard package, which is not installed")
    assert not out.exists()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard"
                        else real_find_spec(name, *a))
    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    FakeWriter.made.clear()
    rc, _, _ = train(capsys, "--data", data, "--out", out, *TINY, "--epochs", "2", "--log-every", "3",
                     "--tensorboard")
    assert rc == 0 and len(FakeWriter.made) == 1
    writer = FakeWriter.made[0]
    assert writer.log_dir == str(run_dir(out)) and writer.closed
    epochs = [r for r in lines(run_dir(out)) if r["event"] == "epoch"]
    assert [(s, v) for t, v, s in writer.scalars if t == "test/top1"] == [(r["step"], r["test_top1"])
                                                                          for r in epochs]
    assert [s for t, _, s in writer.scalars if t == "train/loss_step"] == [3, 6, 9, 12]


# -- the CPU estimate -------------------------------------------------------------------------------
def estimate_for(per_step: float, steps: int = 391):
    """An EpochEstimate for the paper's CIFAR-10 ConvMixer-256/8 whose steps take ``per_step`` s."""
    from training.estimate import EpochEstimate
    from training.models import create_model

    now = [0.0]
    warnings: list[str] = []
    est = EpochEstimate(steps, 32, lambda: create_model("convmixer", 10, 32),
                        lambda **kw: create_model("convmixer", 10, 32, **kw), "", warnings.append,
                        clock=lambda: now[0])
    for step in range(1, 10):
        now[0] = step * per_step
        est.after_step(step)
    return warnings


def test_cpu_estimate_warns_with_a_configuration_that_fits():
    warnings = estimate_for(per_step=2.0)  # 391 steps x 2 s: 13 minutes an epoch
    assert len(warnings) == 1
    assert warnings[0].startswith("one epoch will take about 13.0 min on this CPU (391 steps of 2.00 s, "
                                  "timed over steps 2-6)")
    # ConvMixer-256/8 with patch 2 has a quarter of the FLOPs: about 3.3 minutes, within the budget
    assert re.search(r"fits in 10.0 min: --width 256 --depth 8 --patch 2 --kernel 9 \(about 3\.\d min",
                     warnings[0])
    assert estimate_for(per_step=1.0) == []  # 6.5 minutes: no warning
    hours = estimate_for(per_step=28.0)[0]  # the 5 images/s at batch 128: hours an epoch
    assert "about 3.0 h" in hours and "--width 128 --depth 4 --patch 2 --kernel 5" in hours


def test_cpu_estimate_says_when_nothing_smaller_fits():
    from training.estimate import suggestion

    assert "--width 8" in suggestion(1000.0, 100.0, [("--width 16", 80.0), ("--width 8", 10.0)])
    assert suggestion(1000.0, 100.0, [("--width 16", 90.0)]).startswith("not even the smallest ConvMixer")
    assert suggestion(1000.0, 100.0, [("--width 512", 400.0)]).startswith("the model is already smaller")


def test_cpu_estimate_warning_reaches_a_real_run(data, tmp_path, capsys, monkeypatch):
    import training.estimate

    monkeypatch.setattr(training.estimate, "EPOCH_BUDGET_S", 0.0)
    rc, _, err = train(capsys, "--data", data, "--out", tmp_path / "runs", *TINY, "--epochs", "1",
                       "--device", "cpu")
    warning = [line for line in err.splitlines() if "warning" in line]
    assert rc == 0 and len(warning) == 1
    assert re.match(r"training.train: warning: one epoch will take about \d+ s on this CPU \(6 steps of ",
                    warning[0]) and "smaller than every ConvMixer tried" in warning[0]


# -- lcrypt train ------------------------------------------------------------------------------------
@pytest.fixture
def lcrypt_commands(monkeypatch):
    """`lcrypt` with the plugins this checkout declares (the installed metadata may be older)."""
    import lcrypt.cli

    eps = checkout_commands()
    assert "train" in [ep.name for ep in eps]
    monkeypatch.setattr(lcrypt.cli, "entry_points", lambda group: eps if group == "lcrypt.commands" else [])
    return lcrypt.cli.main


def test_lcrypt_train_is_training_train(data, tmp_path, capsys, lcrypt_commands):
    out = tmp_path / "runs"
    assert lcrypt_commands(["train", "--data", str(data), "--out", str(out), "--name", "a", *TINY,
                            "--epochs", "1"]) == 0
    assert json.loads((out / "a" / "summary.json").read_text())["top1"] is not None
    capsys.readouterr()
    assert lcrypt_commands(["train", "--data", str(data), "--out", str(out), "--model", "nope"]) == 2
    refused(2, capsys.readouterr().err, prog="lcrypt train", match=r"unknown --model 'nope'")
    with pytest.raises(SystemExit) as exit_:
        lcrypt_commands(["train", "--help"])
    assert exit_.value.code == 0 and "usage: lcrypt train" in capsys.readouterr().out
    # loading the plugin (every `lcrypt` command does) imports neither torch nor timm
    code = ("import sys, argparse; from training.command import add_command; "
            "add_command(argparse.ArgumentParser().add_subparsers()); "
            "assert not {'torch', 'timm'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={"PYTHONPATH": str(ROOT)})


# -- any timm model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "resnet10t"])
def test_timm_models_train_and_predict(data, tmp_path, capsys, name):
    from training.checkpoint import read_checkpoint
    from training.predict import classify, load_model

    out = tmp_path / "runs"
    rc, _, err = train(capsys, "--data", data, "--out", out, "--model", name, "--batch-size", "4",
                       "--epochs", "1", "--quiet")
    assert rc == 0 and "warning" not in err
    folder = run_dir(out)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["model"] == {"name": name, "adapt": "none"} and summary["top1"] is not None
    model = load_model(read_checkpoint(folder / "checkpoint.pt"))  # predict rebuilds the timm model
    probs, idx = classify(model, torch.zeros(2, 16, 16, 3, dtype=torch.uint8).numpy(), top=3)
    assert probs.shape == (2, 3) and sorted(idx[0]) == [0, 1, 2]


def test_patch_embedding_models_are_warned_when_patches_miss_the_blocks():
    from training.models import create_model, patch_mismatch

    def vit(patch: int, **kw):
        return create_model("vit_tiny_patch16_224", 10, 32, 4, patch=patch, **kw)

    assert patch_mismatch(vit(4), 4) is None  # one block per patch: MaungMaung & Kiya's condition
    assert "each patch holds 4 blocks" in patch_mismatch(vit(8), 4)
    assert "patches cut across blocks" in patch_mismatch(vit(16), 12)
    assert "--patch 4 lines them up" in patch_mismatch(vit(16), 4)
    assert patch_mismatch(vit(8), None) is None  # pixel-wise scheme: no blocks to line up
    assert patch_mismatch(vit(8, adapt="block"), 4) is None  # the adaptation network sits in front
    assert patch_mismatch(create_model("convmixer", 10, 32, 4, width=8, depth=1, patch=2), 4) is None
    assert patch_mismatch(create_model("vit", 10, 32, 4, width=64, depth=1), 4) is None  # patch = block
