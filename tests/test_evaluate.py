"""`lcrypt evaluate` end to end on a small ImageFolder tree it makes itself."""

import json

import numpy as np
import pytest
from PIL import Image

from lcrypt.cli import main
from lcrypt.evaluate import accuracy_from_results


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
    results.write_text("| scheme | dataset | top-1 accuracy |\n|---|---|---|\n| `pe` | cifar10 | 91.2% |\n")
    rc = main(["evaluate", "--data", str(tiny_dataset), "--schemes", "plain,pe,etc", "--out", str(out),
               "--limit", "6", "--known", "70", "--itn-steps", "0", "--jigsaw-images", "1",
               "--jigsaw-restarts", "1", "--png-every", "1", "--results", str(results)])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "Ciphertext-only" in report and "LPIPS is **not** reported" in report
    assert "| `pe` |" in report and "91.2% (cifar10)" in report and "not measured yet" in report
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


def test_accuracy_parser_ignores_other_tables(tmp_path):
    p = tmp_path / "r.md"
    p.write_text("| a | b |\n|---|---|\n| pe | x |\n\n| scheme | val acc |\n|--|--|\n| etc | 90.1 |\n")
    assert accuracy_from_results(p) == {"etc": "90.1"}
    assert accuracy_from_results(tmp_path / "missing.md") == {}
