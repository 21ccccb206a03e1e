"""Real `torchrun --nproc_per_node=2` (gloo, CPU) training over tiny shards made by the real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from lcrypt.format import Manifest, decode_shard
from tests.test_loader import make_dataset

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "convmixer", "--width", "16", "--depth", "2", "--kernel", "3", "--lr", "0.02",
         "--warmup-epochs", "0.2", "--seed", "7", "--quiet"]
TINY = [*MODEL, "--batch-size", "5", "--workers", "1"]
TIMEOUT = 120  # a hang (ranks out of step) fails here instead of blocking CI


def torchrun(data: Path, out: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run training under torchrun with 2 CPU ranks; a hang fails the test. ``check``: must exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.train", "--data", str(data / "manifest.json"), "--out", str(out), *TINY, *extra]
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        try:
            out, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.terminate()  # SIGTERM, which torchrun passes on to its ranks (SIGKILL orphans them)
            out, err = p.communicate(timeout=60)
            pytest.fail(f"torchrun hung for {TIMEOUT} s: {' '.join(cmd)}\n{err[-4000:]}")
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def run_dir(out: Path) -> Path:
    """The one run folder under ``out`` (each run writes into its own folder there)."""
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def epochs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir(out) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data, key = make_dataset(root)
    full = root / "full"
    proc = torchrun(data, full, "--epochs", "3", "--trace-samples")
    return {"root": root, "data": data, "key": key, "full": run_dir(full), "out": full, "stdout": proc.stdout}


@pytest.mark.slow
def test_ddp_training_learns_and_replicas_agree(trained):
    rows = epochs(trained["out"])
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert rows[-1]["test_count"] == 18  # both ranks' evaluation shares add up to the whole test split
    summary = json.loads((trained["full"] / "summary.json").read_text())
    assert summary["world"] == 2 and len(summary["param_digests"]) == 2
    assert len(set(summary["param_digests"])) == 1  # identical parameters and buffers on both ranks
    assert summary["top1"] == rows[-1]["test_top1"] and summary["images_per_s"] > 0
    assert "top-1 %" in trained["stdout"]
    ckpt = torch.load(trained["full"] / "checkpoint.pt", weights_only=True)  # data only, no pickled code
    assert ckpt["key_ids"] == [trained["key"].key_id] and ckpt["scheme"] == "pe"
    assert ckpt["loader"]["epoch"] == 3 and ckpt["loader"]["step"] == 0


@pytest.mark.slow
def test_each_sample_once_per_epoch_across_ranks_over_uneven_shards(trained):
    m = Manifest.load(trained["data"])
    counts = [e.count for e in m.shards_for("train")]
    assert len(set(counts)) > 1  # uneven shards: whole-shard splitting would leave the ranks out of step
    keys = sorted(k for e in m.shards_for("train") for k, _, _ in decode_shard(trained["data"] / e.path))
    traces = [[json.loads(line)
               for line in (trained["full"] / f"samples-rank{r}.jsonl").read_text().splitlines()]
              for r in range(2)]
    assert len(traces[0]) == len(traces[1]) == 3 * 6  # same number of steps on each rank: no hang
    for epoch in (1, 2, 3):
        seen = [k for t in traces for row in t if row["epoch"] == epoch for k in row["keys"]]
        assert sorted(seen) == keys
        by_rank = [{k for row in t if row["epoch"] == epoch for k in row["keys"]} for t in traces]
        assert not by_rank[0] & by_rank[1]
    assert max(Counter(k for t in traces for row in t for k in row["keys"]).values()) == 3


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(trained):
    out = trained["root"] / "part"
    torchrun(trained["data"], out, "--epochs", "3", "--stop-after-steps", "8", "--trace-samples")
    part = run_dir(out)
    ckpt = torch.load(part / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 8 and ckpt["loader"]["epoch"] == 1 and ckpt["loader"]["step"] == 2
    assert not (part / "summary.json").exists()
    torchrun(trained["data"], out, "--epochs", "3", "--resume", "auto", "--trace-samples")
    assert run_dir(out) == part  # --resume auto continued the stopped run in its own folder
    full = json.loads((trained["full"] / "summary.json").read_text())
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["steps"] == full["steps"] == 18
    assert resumed["param_digests"] == full["param_digests"]  # bit-identical to the uninterrupted run
    for r in range(2):
        a = (trained["full"] / f"samples-rank{r}.jsonl").read_text().splitlines()
        b = (part / f"samples-rank{r}.jsonl").read_text().splitlines()
        assert a == b  # the same samples in the same steps, none repeated or skipped at the seam


def test_single_process_gpu_resident_mode_and_key_mismatch(tmp_path):
    from training.train import run

    data, key = make_dataset(tmp_path, scheme="le", params=("--param", "block_size=4"),
                             per_class={"train": 8, "test": 2})
    assert run(["--data", str(data), "--out", str(tmp_path / "runs"), "--gpu-resident", "--epochs", "2",
                "--adapt", "block", "--mixup", "0.5", "--cutmix", "1.0", *MODEL, "--batch-size", "4",
                "--ckpt-every", "2"]) == 0
    out = run_dir(tmp_path / "runs")
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 2 * (24 // 4) and s["model"]["adapt"] == "block" and s["world"] == 1
    other, _ = make_dataset(tmp_path / "other", scheme="le", params=("--param", "block_size=4"),
                            per_class={"train": 8, "test": 2}, key_name="bob")
    assert run(["--data", str(other), "--resume", str(out / "checkpoint.pt"), *TINY]) == 2
