"""`lcrypt evaluate` end to end on a small ImageFolder tree it makes itself, on the registered schemes and
on toy schemes registered from outside the package."""

import json

import numpy as np
import pytest
from PIL import Image

import lcrypt.schemes
from lcrypt.cli import main
from lcrypt.errors import UserError
from lcrypt.evaluate.accuracy import accuracy_text, read_summaries
from lcrypt.keys import Key
from lcrypt.schemes import Scheme, SchemeInfo, register_scheme
from lcrypt.schemes.base import IndexMap, block_index, log2_factorial


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


def write_summary(path, scheme, params, dataset, top1, **model):
    """A summary.json shaped as training.train writes it (the fields the report reads, and a few more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"top1": top1, "scheme": scheme, "scheme_params": params, "dataset": dataset,
                                "model": {"adapt": "none", **model}, "epochs": 2, "device": "cpu (2 cores)",
                                "images_per_s": 100.0, "steps": 10}))
    return str(path)


def test_evaluate_writes_an_honest_report(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "report"
    runs = tmp_path / "runs"
    summaries = [write_summary(runs / "pe" / "summary.json", "pe", {"color_shuffle": False}, "data-pe",
                               91.2, name="resnet18"),
                 write_summary(runs / "etc" / "summary.json", "etc", {"block_size": 16}, "imagenette-etc",
                               77.7, name="convmixer")]
    rc = main(["evaluate", "--data", str(tiny_dataset), "--schemes", "plain,pe,etc", "--out", str(out),
               "--limit", "6", "--known", "70", "--itn-steps", "0", "--jigsaw-images", "1",
               "--jigsaw-restarts", "1", "--png-every", "1", "--accuracy", *summaries])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "Ciphertext-only" in report and "LPIPS is **not** reported" in report
    assert "| `pe` |" in report and "| 91.20% (resnet18, 2 epochs, cpu (2 cores)) |" in report
    assert "not measured yet" in report
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
    captured = capsys.readouterr()
    assert "best COA" in captured.out
    assert "etc" in captured.err and "imagenette-etc" in captured.err and "not quoted" in captured.err

    # accuracy arrives later: rewrite the report from results.json, attacks not re-run
    later = write_summary(runs / "pe2" / "summary.json", "pe", {}, "data-pe", 83.45, name="resnet18")
    again = tmp_path / "again"
    assert main(["evaluate", "--rerender", str(out / "results.json"), "--out", str(again),
                 "--accuracy", later]) == 0
    rewritten = (again / "report.md").read_text()
    assert "| 83.45% (resnet18, 2 epochs, cpu (2 cores)) |" in rewritten and "91.2" not in rewritten
    assert rewritten.split("\n")[2] == report.split("\n")[2]            # the same "Produced by" line
    assert (again / "figures" / "data.png").read_bytes() == (out / "figures" / "data.png").read_bytes()
    assert main(["evaluate", "--out", str(again)]) == 2 and "--rerender" in capsys.readouterr().err


def test_accuracy_refuses_what_is_not_a_training_summary(tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"scheme": "etc", "top1": 90.1}))               # no dataset, no model
    with pytest.raises(UserError, match="not a training summary"):
        read_summaries([str(p)])
    with pytest.raises(UserError, match="no such file"):
        read_summaries([str(tmp_path / "missing.json")])
    (tmp_path / "results.md").write_text("| scheme | top-1 % |\n|---|---|\n| etc | 90.1 |\n")
    assert main(["evaluate", "--rerender", str(tmp_path / "x.json"), "--accuracy",
                 str(tmp_path / "results.md")]) == 2
    assert "results.md: not JSON" in capsys.readouterr().err


def test_accuracy_is_quoted_for_its_scheme_parameters_and_dataset_only(tmp_path):
    s = read_summaries([
        write_summary(tmp_path / "a" / "summary.json", "plain", {}, "cifar10-plain", 78.38, name="convmixer",
                      width=256, depth=8, patch=1, kernel=9),
        write_summary(tmp_path / "b" / "summary.json", "etc", {"block_size": 16}, "cifar10-etc", 74.72,
                      name="convmixer", width=256, depth=8, patch=1, kernel=9),
        write_summary(tmp_path / "c" / "summary.json", "etc", {"block_size": 16.0}, "CIFAR10_etc", 64.94,
                      name="convmixer", width=64, depth=4, patch=2, kernel=3),
        write_summary(tmp_path / "d" / "summary.json", "etc", {"block_size": 8}, "cifar10-etc8", 50.0,
                      name="convmixer"),
        write_summary(tmp_path / "e" / "summary.json", "le", {}, "cifar10-le", None, name="convmixer"),
        write_summary(tmp_path / "f" / "summary.json", "le", {}, "cifar10-le", 56.14, name="convmixer",
                      adapt="block")])
    etc = {"scheme": "etc", "params": {"block_size": 16}}
    assert accuracy_text(s, "cifar10-jpeg.tar.gz", etc) == (
        "74.72% (convmixer-256/8 p1 k9, 2 epochs, cpu (2 cores)); "
        "64.94% (convmixer-64/4 p2 k3, 2 epochs, cpu (2 cores))")
    assert accuracy_text(s, "cifar10-jpeg.tar.gz", {"scheme": "plain"}).startswith("78.38% (convmixer-256/8")
    assert accuracy_text(s, "cifar10-jpeg.tar.gz", {"scheme": "le"}) == (
        "56.14% (block adaptation + convmixer, 2 epochs, cpu (2 cores))")
    assert accuracy_text(s, "imagenette-224.tar.gz", etc) == "not measured yet"
    assert accuracy_text(None, "cifar10-jpeg.tar.gz", etc) == "—"


# -- schemes registered from outside the package ----------------------------------------------------
class ToyScramble(Scheme):
    """Moves whole 8x8 blocks by one key-selected permutation, and nothing else."""

    name = "toy-scramble"

    @property
    def info(self) -> SchemeInfo:
        return SchemeInfo(name=self.name, paper="-", summary="8x8 block scramble", block_size=8,
                          invertible=True, lossless=True, jpeg_subsamplings=(), aug_grid=8,
                          augmentations=("mixup",),
                          key_space=lambda h, w: log2_factorial((h // 8) * (w // 8)),
                          steps=("block-scramble",), key_form="byte-gather-xor")

    def build(self, key: Key, shape: tuple) -> IndexMap:
        h, w, c = shape
        blk = block_index(h, w, 8, c)
        g = np.empty(h * w * c, dtype=np.intp)
        g[blk] = blk[key.permutation(self.derivation("scramble", shape), len(blk))]
        return IndexMap(shape).gather(g)


class ToyXor(Scheme):
    """XORs every value with a keystream byte."""

    name = "toy-xor"

    @property
    def info(self) -> SchemeInfo:
        return SchemeInfo(name=self.name, paper="-", summary="keystream XOR", block_size=None,
                          invertible=True, lossless=True, jpeg_subsamplings=(), aug_grid=1,
                          augmentations=("mixup",),
                          key_space=lambda h, w: 256.0, steps=("keystream-xor",), key_form="xor")

    def build(self, key: Key, shape: tuple) -> IndexMap:
        return IndexMap(shape).xor(key.stream(self.derivation("stream", shape), int(np.prod(shape))))


@pytest.fixture
def toy_schemes(monkeypatch):
    monkeypatch.setattr(lcrypt.schemes, "_SCHEMES", dict(lcrypt.schemes._SCHEMES))   # restored after the test
    for cls in (ToyScramble, ToyXor):
        register_scheme(cls)
    return [ToyScramble.name, ToyXor.name]


def test_evaluate_runs_the_attacks_that_fit_a_scheme_registered_from_outside(tiny_dataset, tmp_path,
                                                                            toy_schemes):
    out = tmp_path / "report"
    rc = main(["evaluate", "--data", str(tiny_dataset), "--schemes", ",".join(toy_schemes), "--out", str(out),
               "--limit", "6", "--known", "70", "--itn-steps", "0", "--jigsaw-images", "2",
               "--jigsaw-restarts", "1", "--jigsaw-sweep", "--compress-limit", "4", "--png-every", "1"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    by = {r["scheme"]: r for r in data["datasets"][0]["results"]}
    scramble, xor = by["toy-scramble"], by["toy-xor"]
    # declared "block-scramble" alone: a puzzle for the jigsaw solver, and a gather whose key pairs recover
    assert set(scramble["coa"]) == {"none (cipher as is)", "fr", "fr-greedy", "jigsaw"}
    assert set(scramble["kpa"]) == {"known-plaintext"}
    assert scramble["coa"]["jigsaw"]["images"] == 2 and 0 <= scramble["coa"]["jigsaw"]["neighbours"] <= 1
    assert scramble["kpa"]["known-plaintext"]["method"] == "signature"
    assert scramble["kpa"]["known-plaintext"]["key_fraction"] > 0.9
    # declared key form "xor": one known pair, or one blank image, gives the key exactly; no puzzle
    assert set(xor["coa"]) == {"none (cipher as is)", "fr", "fr-greedy"}
    assert set(xor["kpa"]) == {"known-plaintext", "chosen-plaintext"}
    assert xor["kpa"]["known-plaintext"]["exact"] == 1.0 and xor["kpa"]["chosen-plaintext"]["exact"] == 1.0
    assert {s["attack"] for s in scramble["skipped"]} == {"inverse-network"}          # --itn-steps 0, said so
    assert scramble["key_space"]["bits"] == pytest.approx(log2_factorial(16))
    assert set(data["datasets"][0]["compress"]["sizes"]) == {"plain", "toy-scramble", "toy-xor"}
    report = (out / "report.md").read_text()
    assert "| `toy-scramble` | jigsaw | COA |" in report
    assert "| `toy-xor` | chosen-plaintext | KPA/CPA |" in report
    assert "| `toy-scramble` | chosen-plaintext |" not in report and "| `toy-xor` | jigsaw |" not in report
    assert "| `toy-xor` | inverse-network | COA | — | — | — | not run: training steps set to 0 |" in report
    assert (out / "figures" / "data.png").stat().st_size > 1000


def test_a_scheme_declaring_an_unknown_step_is_refused():
    with pytest.raises(ValueError, match="unknown steps.*block-scramble"):
        SchemeInfo(name="x", paper="-", summary="-", block_size=None, invertible=True, lossless=True,
                   jpeg_subsamplings=(), key_space=lambda h, w: 0.0, augmentations=(), aug_grid=1,
                   steps=("block-scrambling",), key_form=None)
    with pytest.raises(ValueError, match="already registered"):
        register_scheme(type("Again", (ToyXor,), {"name": "pe"}))
