"""`make demo`'s last lines suggest training commands that lcrypt.usage generates from the demo's manifest
(the same as a release's card and the README print), and timm reads the demo's dataset with them."""

from __future__ import annotations

import contextlib
import io

import pytest

from lcrypt.format import Manifest, decode_shard
from lcrypt.usage import lcrypt_train_command, timm_augmentation_table, timm_command
from tests.test_release_consumers import check_timm_reads, parse_timm_command
from tests.test_train import ROOT


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipelines.demo import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--out", str(out), "--train", "8", "--test", "2"]) == 0
    lines = printed.getvalue().splitlines()
    return {"out": out, "lines": lines, "manifest": Manifest.load(out / "encrypted")}


def test_demo_prints_the_generated_commands(demo):
    m, data, runs = demo["manifest"], str(demo["out"] / "encrypted"), str(demo["out"] / "runs")
    printed = [line.strip() for line in demo["lines"]]
    assert timm_command(m, data, output=runs) in printed
    assert lcrypt_train_command(m, data, runs) in printed
    assert "--num-classes 6 --input-size 3 64 64" in timm_command(m, data)  # the demo's 6 photos, 64 px


def test_timm_reads_the_demo_dataset_as_the_demo_prints(demo, monkeypatch):
    line = next(x.strip() for x in demo["lines"] if "train.py" in x and "--dataset" in x)
    a = parse_timm_command(line)
    m = demo["manifest"]
    want = {}
    for e in m.shards:
        if e.split == a.val_split:
            for key, image, label in decode_shard(demo["out"] / "encrypted" / e.path):
                want[key] = (label, image, e.split, e.owner)
    monkeypatch.chdir(demo["out"])
    check_timm_reads(a, m, want, a.val_split, training=False)


def test_readme_prints_the_generated_commands_and_augmentation_table(demo):
    """The README shows `make demo`'s commands (build/demo) and the timm augmentation table as
    lcrypt.usage generates them from the demo's manifest and the schemes' SchemeInfo."""
    readme = (ROOT / "README.md").read_text()
    m = demo["manifest"]
    timm = timm_command(m, "build/demo/encrypted", output="build/demo/runs")
    assert timm in readme and readme.count("train.py --") == readme.count(timm)  # no other timm command
    assert lcrypt_train_command(m, "build/demo/encrypted", "build/demo/runs") in readme
    assert "\n".join(timm_augmentation_table()) in readme
