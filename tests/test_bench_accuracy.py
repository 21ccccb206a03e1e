"""bench/accuracy_cpu.py end to end on a tiny image tree: a scheme without blocks behind Tanaka's block
adaptation, and summaries the security report quotes in their schemes' rows."""

from __future__ import annotations

import importlib.util
import json

from tests.test_loader import write_color_tree
from tests.test_train import ROOT


def test_accuracy_bench_runs_paired_models_and_the_report_quotes_them(tmp_path, capsys):
    from lcrypt.evaluate.accuracy import accuracy_text, read_summaries

    spec = importlib.util.spec_from_file_location("accuracy_cpu", ROOT / "bench" / "accuracy_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    write_color_tree(tmp_path / "tiny", {"train": 8, "test": 2})
    work = tmp_path / "work"
    assert bench.main(["--source", str(tmp_path / "tiny"), "--work", str(work), "--schemes", "plain,catmap",
                       "--epochs", "1", "--batch-size", "4"]) == 0
    runs = json.loads((work / "accuracy.json").read_text())["runs"]
    assert runs["catmap"]["adapt"] == "block" and runs["plain"]["adapt"] == "none"  # bench.PAIRS
    summaries = read_summaries(sorted(str(p) for p in (work / "runs").glob("*/summary.json")))
    assert {s.dataset for s in summaries} == {"tiny-plain", "tiny-catmap"}
    for scheme, model in (("plain", "(convmixer-64/4 p2 k3,"), ("catmap", "(block adaptation + convmixer")):
        assert model in accuracy_text(summaries, "tiny.tar.gz", {"scheme": scheme, "params": None})
    assert "not measured yet" in accuracy_text(summaries, "tiny.tar.gz", {"scheme": "le", "params": None})
    table = (work / "accuracy.md").read_text().splitlines()
    assert len(table) == 4 and table[3].startswith("| catmap | ConvMixer-64/4 p2 k3 + block adaptation |")
    assert "46.8 / 88.4 = 0.529" in table[3]  # the paper's figures beside ours
