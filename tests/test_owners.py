"""Many owners' keys in one model: owner-aware batches, --owners, --owner-adapters, --add-owner, predict
by the key's adapter, the refusals, and what an adapter leaks (lcrypt.attacks.adapter_leak)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lcrypt import Key, get_scheme
from lcrypt.attacks.adapter_leak import block_columns, match_columns, to_reference_domain
from lcrypt.format import Manifest, decode_shard
from loaders.dataset import ShardDataset
from loaders.gpu import GPUResident
from tests.test_loader import write_color_tree
from training.models import create_model
from training.owners import OwnerModel, RoutedInput, input_layer, owner_model

MODEL = ["--model", "convmixer", "--width", "16", "--depth", "2", "--kernel", "3", "--patch", "2"]
TINY = ["--lr", "0.02", "--warmup-epochs", "0.2", "--seed", "7", "--quiet", "--batch-size", "5",
        "--workers", "0"]
# owners by the last digit of the file name: train 0..19 and test 0..9 per class give each owner samples
SPLITS = {"two": {"alice": ["*[0-4].png"], "bob": ["*[5-9].png"]},
          "three": {"alice": ["*[0-3].png"], "bob": ["*[4-6].png"], "carol": ["*[7-9].png"]}}


def make_owner_dataset(root: Path, name: str, scheme: str = "pe") -> Path:
    """A tiny dataset of several owners (same key files across datasets), by the real pipeline."""
    from pipelines.prepare import run

    if not (root / "src").exists():
        write_color_tree(root / "src", {"train": 20, "test": 10})
    for owner in SPLITS["three"]:
        if not (root / f"{owner}.key").exists():
            Key.generate(owner).save(root / f"{owner}.key")
    (root / f"{name}.json").write_text(json.dumps({o: {"key": f"{o}.key", "match": m}
                                                   for o, m in SPLITS[name].items()}))
    assert run(["--source", str(root / "src"), "--scheme", scheme, "--keys", str(root / f"{name}.json"),
                "--out", str(root / name), "--shard-size", "7", "--quiet"]) == 0
    return root / name


@pytest.fixture(scope="module")
def owners(tmp_path_factory):
    root = tmp_path_factory.mktemp("owners")
    return {"root": root, "two": make_owner_dataset(root, "two"), "three": make_owner_dataset(root, "three")}


def train(data: Path, out: Path, name: str, *extra: str, epochs: int = 2, model: list[str] = MODEL) -> int:
    from training.train import run

    return run(["--data", str(data), "--out", str(out), "--name", name, *model, *TINY,
                "--epochs", str(epochs), *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- loaders --------------------------------------------------------------------------------------
def test_every_batch_carries_each_samples_owner_and_batches_mix_owners(owners):
    data = owners["three"]
    m = Manifest.load(data)
    names = [o.name for o in m.owners]
    owner_of_key = {k: e.owner for e in m.shards_for("train") for k, _, _ in decode_shard(data / e.path)}
    mixed = 0
    for batch in ShardDataset(data, "train", 6, seed=3, buffer=50):
        got = [names[i] for i in batch["owner"].tolist()]
        assert got == [owner_of_key[k] for k in batch["key"]]
        mixed += len(set(got)) > 1
    assert mixed > 0
    resident = GPUResident.from_manifest(data, "train", 6, device="cpu", seed=3)
    seen = torch.cat([b["owner"] for b in resident])
    assert sorted(seen.bincount().tolist()) == sorted(m.num_samples("train", n) for n in names)
    only = GPUResident.from_manifest(data, "train", 6, device="cpu", owner="bob", cover_all=True,
                                     drop_last=False)
    assert set(torch.cat([b["owner"] for b in only]).tolist()) == {names.index("bob")}


# -- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["patch convolutions (stacked weights)", "any layer (grouped by owner)"])
def test_routed_input_gives_each_sample_its_owners_layer_and_gradient(kind):
    torch.manual_seed(0)
    if kind.startswith("patch"):
        layers = [nn.Conv2d(3, 4, 2, stride=2) for _ in range(3)]
    else:
        layers = [nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.BatchNorm2d(4)).eval() for _ in range(3)]
        for m in layers:
            nn.init.normal_(m[1].running_mean)
    routed = RoutedInput(layers, pos_shape=(4, 2, 2))
    assert routed.patchwise() == kind.startswith("patch")
    for p in routed.pos:
        nn.init.normal_(p)
    x, owner = torch.randn(7, 3, 4, 4), torch.tensor([2, 0, 2, 1, 0, 0, 2])
    routed.owner = owner
    out = routed(x)
    want = torch.stack([layers[o](x[i:i + 1])[0] + routed.pos[o] for i, o in enumerate(owner.tolist())])
    torch.testing.assert_close(out, want)
    routed.owner = torch.tensor([0, 0, 2, 2, 0, 0, 2])  # owner 1 absent: its layer learns nothing
    routed(x).sum().backward()
    weights = [m.weight if isinstance(m, nn.Conv2d) else m[0].weight for m in layers]
    assert weights[1].grad is None or not weights[1].grad.any()
    assert weights[0].grad.abs().sum() > 0 and weights[2].grad.abs().sum() > 0


def test_a_per_owner_patch_embedding_absorbs_a_block_shuffle_and_sign_key_exactly():
    """The owners docstring's claim: x' = S·P·x per block, E' = E·Pᵀ·S, the body sees the plain features."""
    torch.manual_seed(1)
    m = 2
    model = owner_model(create_model("convmixer", 3, 8, m, width=8, depth=1, patch=m, kernel=3), 2).eval()
    routed = model.routed
    d = 3 * m * m
    perm, sign = torch.randperm(d), torch.where(torch.rand(d) < 0.5, -1.0, 1.0)
    e = block_columns(routed.layers[0].weight.detach().numpy())  # (out, d), pixel-major channel-fastest
    e_key = torch.from_numpy(e)[:, perm] * sign  # column j of E' = E·Pᵀ·S: the plain value at perm[j]
    with torch.no_grad():
        routed.layers[1].weight.copy_(e_key.reshape(-1, m, m, 3).permute(0, 3, 1, 2))
        routed.layers[1].bias.copy_(routed.layers[0].bias)
    x = torch.randn(5, 3, 8, 8)
    blocks = x.reshape(5, 3, 4, m, 4, m).permute(0, 2, 4, 3, 5, 1).reshape(5, 4, 4, d)
    enc = blocks[..., perm] * sign  # x'_j = s_j · x_perm[j]
    enc = enc.reshape(5, 4, 4, m, m, 3).permute(0, 5, 1, 3, 2, 4).reshape(5, 3, 8, 8)
    plain_out = model(x, torch.zeros(5, dtype=torch.int64))
    torch.testing.assert_close(model(enc, torch.ones(5, dtype=torch.int64)), plain_out)
    assert not torch.allclose(model(enc, torch.zeros(5, dtype=torch.int64)), plain_out, atol=1e-3)


def test_input_layers_found_and_refused():
    assert input_layer(create_model("convmixer", 3, 16, 4, width=8, depth=1))[0] == "stem.0"
    path, _, pos = input_layer(create_model("vit", 3, 16, 4, width=32, depth=1))
    assert path == "patch_embed.proj" and pos == (32, 4, 4)  # ViT: a per-owner position embedding too
    vit = owner_model(create_model("vit", 3, 16, 4, width=32, depth=1), 2).eval()
    with torch.no_grad():
        vit.routed.layers[1].load_state_dict(vit.routed.layers[0].state_dict())
        x = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
        same = vit(x, torch.tensor([0, 1]))
        vit.routed.pos[1].normal_()  # now only owner 1's position embedding differs
        out = vit(x, torch.tensor([0, 1]))
    assert out.shape == (2, 3) and torch.allclose(same[0], same[1]) and not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[0], same[0])
    assert input_layer(create_model("resnet18", 3, 16, None, adapt="pe"))[0] == "adapter"
    with pytest.raises(ValueError, match="no input layer to specialise"):
        input_layer(create_model("resnet18", 3, 16, None))


# -- training, checkpoints, predict --------------------------------------------------------------
def test_owners_all_and_one_owner_train_and_say_so(owners, tmp_path, capsys):
    assert train(owners["two"], tmp_path, "pooled", "--owners", "all", epochs=1) == 0
    out = capsys.readouterr().out
    assert "all 2, pooled" in out
    s = json.loads((tmp_path / "pooled/summary.json").read_text())
    assert s["owners"]["mode"] == "all" and [o["name"] for o in s["owners"]["owners"]] == ["alice", "bob"]
    assert train(owners["two"], tmp_path, "bob", "--owners", "bob", epochs=1) == 0
    ckpt = torch.load(tmp_path / "bob/checkpoint.pt", weights_only=True)
    m = Manifest.load(owners["two"])
    assert ckpt["owners"] == {"mode": "one", "owners": [{"name": "bob", "key_id": m.owner("bob").key_id,
                                                         "adapter": None}]}
    rows = [json.loads(x) for x in (tmp_path / "bob/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_count"] == m.num_samples("test", "bob") < m.num_samples("test")


@pytest.mark.parametrize("argv,match", [
    (["--owners", "mallory"], "--owners mallory: no such owner in the dataset .* \\(owners: alice, bob\\)"),
    (["--owner-adapters", "--model", "resnet18"], "resnet18: .*no input layer to specialise per owner"),
    (["--owner-adapters", "--mixup", "0.8"], "--mixup/--cutmix"),
    (["--add-owner", "carol"], "go together"),
])
def test_bad_owner_flags_are_one_line_refusals(owners, tmp_path, capsys, argv, match):
    import re

    model = [] if "--model" in argv else MODEL
    assert train(owners["two"], tmp_path, "bad", *argv, epochs=1, model=model) == 2
    assert re.search(match, one_error_line(capsys))
    assert not (tmp_path / "bad").exists()


def test_adapters_predict_by_key_and_add_an_owner_with_the_body_frozen(owners, tmp_path, capsys):
    from training.predict import run as predict

    root = owners["root"]
    assert train(owners["two"], tmp_path, "ad", "--owner-adapters") == 0
    ckpt = torch.load(tmp_path / "ad/checkpoint.pt", weights_only=True)
    assert [(o["name"], o["adapter"]) for o in ckpt["owners"]["owners"]] == [("alice", 0), ("bob", 1)]
    images = [str(p) for p in sorted((root / "src/test/red").glob("*.png"))[:2]]
    capsys.readouterr()
    assert predict(["--checkpoint", str(tmp_path / "ad/checkpoint.pt"), "--key", str(root / "bob.key"),
                    *images]) == 0
    assert "red_000.png" in capsys.readouterr().out
    assert predict(["--checkpoint", str(tmp_path / "ad/checkpoint.pt"), "--key", str(root / "carol.key"),
                    *images]) == 2
    assert "not one this model was trained with (its training owners' keys: alice" in one_error_line(capsys)
    # carol joins later: only her adapter trains, on her shards; everything else stays as it was
    assert train(owners["three"], tmp_path, "add", "--add-owner", "carol", "--init-from",
                 str(tmp_path / "ad/checkpoint.pt")) == 0
    added = torch.load(tmp_path / "add/checkpoint.pt", weights_only=True)
    assert [(o["name"], o["adapter"]) for o in added["owners"]["owners"]] == [
        ("alice", 0), ("bob", 1), ("carol", 2)]
    for k, v in ckpt["model"].items():
        assert torch.equal(added["model"][k], v), k  # the body and the old adapters, batch norms included
    new = {k for k in added["model"] if k not in ckpt["model"]}
    assert new == {"net.stem.0.layers.2.weight", "net.stem.0.layers.2.bias"}
    rows = [json.loads(x) for x in (tmp_path / "add/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_count"] == Manifest.load(owners["three"]).num_samples("test", "carol")
    assert predict(["--checkpoint", str(tmp_path / "add/checkpoint.pt"), "--key", str(root / "carol.key"),
                    *images]) == 0
    capsys.readouterr()
    assert train(owners["three"], tmp_path, "again", "--add-owner", "bob", "--init-from",
                 str(tmp_path / "ad/checkpoint.pt")) == 2
    assert "already has an adapter for owner bob" in one_error_line(capsys)
    assert train(owners["three"], tmp_path, "nope", "--add-owner", "carol", "--init-from",
                 str(tmp_path / "add/checkpoint.pt").replace("add/", "missing/")) == 2
    assert "--init-from" in one_error_line(capsys)


def test_a_model_without_adapters_refuses_another_owners_key_in_predict(owners, tmp_path, capsys):
    from training.predict import run as predict

    assert train(owners["two"], tmp_path, "bob", "--owners", "bob", epochs=1) == 0
    image = str(next((owners["root"] / "src/test/red").glob("*.png")))
    capsys.readouterr()
    assert predict(["--checkpoint", str(tmp_path / "bob/checkpoint.pt"), "--key",
                    str(owners["root"] / "alice.key"), image]) == 2
    assert "not one this model was trained with (its training owners' keys: bob (" in one_error_line(capsys)


# -- what an adapter leaks ------------------------------------------------------------------------
def test_adapter_leak_recovers_a_signed_column_permutation_and_moves_ciphertexts_between_owners():
    rng = np.random.default_rng(0)
    scheme = get_scheme("block-shuffle", block_size=4)
    ka, kb = Key.generate("a"), Key.generate("b")
    plain = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ca, cb = scheme.encrypt(plain, ka), scheme.encrypt(plain, kb)
    idx = np.tile(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), (4, 4, 1))[None]
    truth = np.argsort(scheme.encrypt(idx, ka)[0, :4, :4].reshape(-1))[scheme.encrypt(idx, kb)[0, :4, :4]
                                                                        .reshape(-1)]
    assert np.array_equal(to_reference_domain(cb, truth, np.ones(48, np.int8), 4), ca)
    # layers that fit each owner exactly (E_b = E_a·Q, noise on top): the match finds Q
    e_a = rng.normal(size=(64, 48))
    sign = np.where(rng.random(48) < 0.5, -1, 1)
    e_b = e_a[:, truth] * sign + 0.05 * rng.normal(size=(64, 48))
    perm, got_sign, score = match_columns(e_a, e_b)
    assert np.array_equal(perm, truth) and np.array_equal(got_sign, sign) and score.min() > 0.9
    flipped = np.where(sign.reshape(1, 1, 1, 48) < 0, 255 - cb.reshape(3, 4, 4, 4, 4, 3).transpose(
        0, 1, 3, 2, 4, 5).reshape(3, 4, 4, 48), cb.reshape(3, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5)
        .reshape(3, 4, 4, 48))
    signed_b = flipped.reshape(3, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(3, 16, 16, 3)
    assert np.array_equal(scheme.decrypt(to_reference_domain(signed_b.astype(np.uint8), perm, got_sign, 4),
                                         ka), plain)
    # unrelated layers: no confident match
    assert match_columns(e_a, rng.normal(size=(64, 48)))[2].mean() < 0.5


def test_owner_model_forward_needs_the_owner():
    model = owner_model(create_model("convmixer", 3, 8, 2, width=8, depth=1, patch=2, kernel=3), 2)
    assert isinstance(model, OwnerModel)
    with pytest.raises(RuntimeError, match="model\\(x, owner\\)"):
        model.net(torch.zeros(1, 3, 8, 8))
