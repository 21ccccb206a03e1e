"""`lcrypt evaluate` end to end on a small ImageFolder tree it makes itself."""

import json

import numpy as np
import pytest
from PIL import Image

from lcrypt.cli import main
from lcrypt.evaluate import accuracy_for, accuracy_from_results


@pytest.fixture
def tiny_dataset(tmp_path, rng):
    y, x = np.mgrid[:32, :32]
    for split, n in (("train", 70), ("test", 6)):
        for i in range(n):
            d = tmp_path / "data" / split / f"c{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.stack([(x * 7 + i * 11) % 256, (y * 5 + i * 3) % 256, (x + y) * 4 % 256], -1)
            img = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return tmp_path / "data"


def test_evaluate_writes_an_honest_report(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    results = tmp_path / "results.md"
    results.write_text("| scheme | dataset | top-1 accuracy |\n|---|---|---|\n| `pe` | data | 91.2% |\n"
                       "| `etc` | imagenette | 77.7% |\n")
    rc = main(["evaluate", "--data", str(tiny_dataset), "--schemes", "plain,pe,etc", "--out", str(out),
               "--limit", "6", "--known", "70", "--itn-steps", "0", "--jigsaw-images", "1",
               "--jigsaw-restarts", "1", "--png-every", "1", "--results", str(results)])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "Ciphertext-only" in report and "LPIPS is **not** reported" in report
    assert "| `pe` |" in report and "| 91.2% |" in report and "not measured yet" in report
    assert "77.7" not in report                                  # another dataset's accuracy is not quoted
    assert (out / "figures" / "data.png").stat().st_size > 1000
    data = json.loads((out / "results.json").read_text())
    by = {r["scheme"]: r for r in data["datasets"][0]["results"]}
    assert by["pe"]["kpa"]["known-plaintext"]["ssim"] == pytest.approx(1.0)
    assert by["pe"]["kpa"]["known-plaintext"]["key_fraction"] == 1.0
    assert by["etc"]["coa"]["jigsaw"]["images"] == 1
    sizes = data["datasets"][0]["compress"]["sizes"]
    assert data["datasets"][0]["compress"]["images"] == 76
    assert sizes["pe"]["jpeg_q85"] > sizes["plain"]["jpeg_q85"]
    assert "best COA" in capsys.readouterr().out

    # accuracy lands in docs/results.md later: rewrite the report from results.json, attacks not re-run
    results.write_text("| scheme | dataset | top-1 % |\n|---|---|---|\n| pe | data | 83.45 |\n")
    again = tmp_path / "again"
    assert main(["evaluate", "--rerender", str(out / "results.json"), "--out", str(again),
                 "--results", str(results)]) == 0
    rewritten = (again / "report.md").read_text()
    assert "| 83.45% |" in rewritten and "91.2%" not in rewritten
    assert rewritten.split("\n")[2] == report.split("\n")[2]            # the same "Produced by" line
    assert (again / "figures" / "data.png").read_bytes() == (out / "figures" / "data.png").read_bytes()
    assert main(["evaluate", "--out", str(again)]) == 2 and "--rerender" in capsys.readouterr().err


def test_accuracy_parser_ignores_other_tables(tmp_path):
    p = tmp_path / "r.md"
    p.write_text("| a | b |\n|---|---|\n| pe | x |\n\n| scheme | val acc |\n|--|--|\n| etc | 90.1 |\n")
    assert accuracy_from_results(p) == [{"scheme": "etc", "text": "90.1", "scope": ""}]
    assert accuracy_from_results(tmp_path / "missing.md") == []


def test_accuracy_is_quoted_from_results_md_tables_for_their_dataset_only(tmp_path):
    """docs/results.md's layout: a CIFAR-10 title, sections, 'top-1 %' columns, 'etc (block 16)' cells."""
    p = tmp_path / "results.md"
    p.write_text("# Results: training on encrypted CIFAR-10\n\n## GPU (one H100)\n\n"
                 "| scheme | model | top-1 % |\n|---|---|---|\n| plain | ConvMixer | 78.38 |\n"
                 "| etc (block 16) | ConvMixer | 74.72 |\n| le (block 4) | block adaptation | not yet run |\n\n"
                 "## CPU accuracy check (2 cores)\n\n| scheme | top-1 % | ratio |\n|---|---|---|\n"
                 "| etc (block 16) | 64.94 | 0.98 |\n")
    rows = accuracy_from_results(p)
    assert accuracy_for(rows, "cifar10-jpeg.tar.gz") == {
        "plain": "78.38% (ConvMixer, GPU)", "etc": "74.72% (ConvMixer, GPU); 64.94% (CPU accuracy check)"}
    assert accuracy_for(rows, "imagenette-224.tar.gz") == {}

