"""Key-based model conversion: the converted model on encrypted images gives the plain model's logits
on plain images (ViT and ConvMixer, random and trained weights, re-keyed), what cannot fold is refused
in one line, and a converted checkpoint is served by training.predict."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

from lcrypt import Key, get_scheme
from lcrypt.folding import NotFoldable
from loaders.augment import normalize

KEY, OTHER = Key(b"\x11" * 32, "alice"), Key(b"\x22" * 32, "bob")
ARCH = {"vit": {"width": 32, "depth": 2, "patch": 4},
        "convmixer": {"width": 32, "depth": 2, "patch": 4, "kernel": 3}}
PARAMS = {"vit": {"block_size": 4}, "convmixer": {"block_size": 4, "scramble": False}}


def plain_model(name: str, steps: int = 0, seed: int = 0):
    """A small model of training.models; ``steps`` SGD steps on random images make it 'trained'
    (weights no longer at their initial distribution, batch-norm statistics updated)."""
    from training.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, 10, 32, None, **ARCH[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(steps):
        x = normalize(torch.from_numpy(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)))
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(rng.integers(0, 10, 16)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def checkpoint(model, name: str) -> dict:
    return {"model": model.state_dict(), "model_config": {"name": name, "adapt": "none", **ARCH[name]},
            "key_ids": [], "scheme": "plain", "scheme_params": {}, "image_shape": [32, 32, 3],
            "class_names": [f"c{i}" for i in range(10)], "optimizer": {"state": {}}}


def logits(model, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(normalize(torch.from_numpy(images)))


def images(n: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("steps", [0, 5], ids=["random", "trained"])
@pytest.mark.parametrize("name", ["vit", "convmixer"])
def test_converted_model_on_cipher_images_gives_the_plain_logits(name, steps):
    from training.convert import convert_model

    model = plain_model(name, steps)
    scheme = get_scheme("blockwise", **PARAMS[name])
    x = images()
    enc = scheme.encrypt(x, KEY)
    converted = convert_model(model, KEY, scheme, x.shape[1:]).eval()
    want = logits(model, x)
    gap = float((logits(converted, enc) - want).abs().max())
    assert gap <= 1e-4
    # not vacuous: the plain model on cipher images, or the converted one under another key, is far off
    assert float((logits(model, enc) - want).abs().max()) > 100 * max(gap, 1e-7)
    assert float((logits(converted, scheme.encrypt(x, OTHER)) - want).abs().max()) > 100 * max(gap, 1e-7)


def test_vit_scrambling_moves_position_rows_and_leaves_the_class_token():
    from training.convert import convert_model

    model = plain_model("vit")
    scheme = get_scheme("blockwise", block_size=4)
    bk = scheme.block_key(KEY, (32, 32, 3))
    new = convert_model(model, KEY, scheme, (32, 32, 3)).state_dict()
    pos, pos2 = model.state_dict()["pos_embed"][0], new["pos_embed"][0]
    assert torch.equal(pos2[0], pos[0])                                       # class token
    assert torch.equal(pos2[1:], pos[1:][torch.from_numpy(bk.blocks)])
    assert torch.equal(new["cls_token"], model.state_dict()["cls_token"])


@pytest.mark.parametrize("name", ["vit", "convmixer"])
def test_rekeying_moves_a_model_from_one_key_to_another_exactly(name):
    from training.convert import convert_checkpoint
    from training.predict import load_model

    model = plain_model(name, steps=3)
    scheme = get_scheme("blockwise", **PARAMS[name])
    first = convert_checkpoint(checkpoint(model, name), KEY, scheme)
    assert first["key_ids"] == [KEY.key_id] and "optimizer" not in first
    second = convert_checkpoint(first, OTHER, scheme, from_key=KEY)
    assert second["key_ids"] == [OTHER.key_id]
    x = images()
    want = logits(model, x)
    assert float((logits(load_model(second), scheme.encrypt(x, OTHER)) - want).abs().max()) <= 1e-4
    with pytest.raises(NotFoldable, match=f"--key {OTHER.key_id} is not the key"):
        convert_checkpoint(first, KEY, scheme, from_key=OTHER)


@pytest.mark.parametrize("name,scheme,params,why", [
    ("vit", "etc", {"block_size": 4}, "in-block rearrangement differs from block to block"),
    ("vit", "blockwise", {"block_size": 8}, "block size 8 is not the vit's patch size 4"),
    ("vit", "pe", {}, "not block-wise"),
    ("convmixer", "blockwise", {"block_size": 4}, "ConvMixer cannot absorb block scrambling"),
    ("vit", "le", {"block_size": 4}, "not a gather and negative-positive of whole values"),
])
def test_what_cannot_fold_is_refused_in_one_line(name, scheme, params, why):
    from training.convert import convert_checkpoint

    with pytest.raises(NotFoldable, match=why) as exc:
        convert_checkpoint(checkpoint(plain_model(name), name), KEY, get_scheme(scheme, **params))
    assert "\n" not in str(exc.value)


def test_block_shuffle_of_tanaka_folds_too():
    """Any scheme whose key is one shared in-block transform folds (found from its gather, not its name)."""
    from training.convert import convert_model

    model = plain_model("vit", steps=2)
    scheme = get_scheme("block-shuffle", block_size=4)
    x = images()
    converted = convert_model(model, KEY, scheme, x.shape[1:])
    assert float((logits(converted, scheme.encrypt(x, KEY)) - logits(model, x)).abs().max()) <= 1e-4


def lcrypt(argv: list[str]) -> int:
    """`lcrypt ARGV` with the convert-model plugin registered as pyproject declares it."""
    import lcrypt.cli as cli

    real = cli.entry_points

    def entry_points(group: str):
        found = [e for e in real(group=group) if e.name != "convert-model"]
        return found + [EntryPoint("convert-model", "training.convert:add_command", group)]

    cli.entry_points = entry_points
    try:
        return cli.main(argv)
    finally:
        cli.entry_points = real


@pytest.fixture
def files(tmp_path):
    from training.checkpoint import save_checkpoint

    for key, name in ((KEY, "alice"), (OTHER, "bob")):
        key.save(tmp_path / f"{name}.key")
    save_checkpoint(tmp_path / "plain.pt", checkpoint(plain_model("vit", steps=2), "vit"))
    res = plain_model("vit")
    save_checkpoint(tmp_path / "resnet.pt", {**checkpoint(res, "vit"), "model_config": {"name": "resnet18"}})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    return tmp_path


def test_cli_converts_rekeys_and_refuses_bad_input_in_one_line(files, capsys):
    from training.checkpoint import load_checkpoint

    t = files
    base = ["convert-model", "--key", str(t / "alice.key"), "--checkpoint"]
    assert lcrypt([*base, str(t / "plain.pt"), "--scheme", "blockwise", "--param", "block_size=4",
                   "--out", str(t / "enc.pt")]) == 0
    out = capsys.readouterr().out
    assert KEY.key_id in out and "max |Δlogit|" in out
    assert load_checkpoint(t / "enc.pt")["key_ids"] == [KEY.key_id]
    assert lcrypt([*base, str(t / "enc.pt"), "--to-key", str(t / "bob.key"), "--out", str(t / "bob.pt")]) == 0
    assert load_checkpoint(t / "bob.pt")["key_ids"] == [OTHER.key_id]
    capsys.readouterr()
    bad = [
        ([*base, str(t / "bob.pt"), "--to-key", str(t / "alice.key"), "--out", str(t / "x.pt")],
         "is not the key"),
        ([*base, str(t / "resnet.pt"), "--scheme", "blockwise", "--out", str(t / "x.pt")],
         "'resnet18' model; convert-model folds keys into vit and convmixer models only"),
        ([*base, str(t / "junk.pt"), "--scheme", "blockwise", "--out", str(t / "x.pt")], "cannot be loaded"),
        ([*base, str(t / "plain.pt"), "--scheme", "blockwise", "--param", "block_size=16", "--out",
          str(t / "x.pt")], "block size 16 is not the vit's patch size 4"),
        ([*base, str(t / "plain.pt"), "--scheme", "blockwise", "--out", str(t / "enc.pt")], "already exists"),
        ([*base, str(t / "enc.pt"), "--scheme", "blockwise", "--param", "block_size=4", "--out",
          str(t / "x.pt")], "converts plain models"),
    ]
    before = sorted(p.name for p in t.iterdir())
    for argv, why in bad:
        assert lcrypt(argv) == 2, argv
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
    assert sorted(p.name for p in t.iterdir()) == before          # nothing written by a refusal


def test_owner_converts_a_trained_private_model_and_predict_serves_it(tmp_path, capsys):
    """The README flow: train on plain images, convert with the owner's key, serve encrypted queries."""
    from lcrypt.images import read_image
    from tests.test_loader import make_dataset
    from training.checkpoint import load_checkpoint
    from training.predict import classify, encrypt_for, load_model, run as predict
    from training.train import run as train

    data, key = make_dataset(tmp_path, scheme="plain", per_class={"train": 8, "test": 2})
    assert train(["--data", str(data), "--out", str(tmp_path), "--name", "run", "--model", "vit",
                  "--width", "32", "--depth", "1", "--patch", "4", "--epochs", "1", "--batch-size", "4",
                  "--quiet"]) == 0
    plain_ckpt = tmp_path / "run" / "checkpoint.pt"
    assert lcrypt(["convert-model", "--key", str(tmp_path / "alice.key"), "--scheme", "blockwise", "--param",
                   "block_size=4", "--checkpoint", str(plain_ckpt), "--out", str(tmp_path / "enc.pt")]) == 0
    image = tmp_path / "src" / "test" / "green" / "green_001.png"
    plain = read_image(image)[None]
    p_plain, i_plain = classify(load_model(load_checkpoint(plain_ckpt)), plain, top=3)
    enc_ckpt = load_checkpoint(tmp_path / "enc.pt")
    p_enc, i_enc = classify(load_model(enc_ckpt), encrypt_for(enc_ckpt, plain, key), top=3)
    assert np.array_equal(i_plain, i_enc) and np.allclose(p_plain, p_enc, atol=1e-5)
    capsys.readouterr()
    assert predict(["--checkpoint", str(tmp_path / "enc.pt"), "--key", str(tmp_path / "alice.key"),
                    str(image)]) == 0
    assert "green_001.png" in capsys.readouterr().out


def test_blockwise_dataset_is_prepared_and_decrypts_to_the_sources(tmp_path):
    from lcrypt.format import Manifest, decode_shard, sample_key, sample_key_salt
    from lcrypt.images import read_image
    from tests.test_loader import make_dataset

    data, key = make_dataset(tmp_path, scheme="blockwise", params=("--param", "block_size=4"),
                             per_class={"train": 3, "test": 1})
    m = Manifest.load(data)
    assert m.scheme == "blockwise" and m.scheme_params["block_size"] == 4
    scheme = m.scheme_object()
    published = {k: img for e in m.shards_for("train") for k, img, _ in decode_shard(data / e.path)}
    rel = "train/red/red_000.png"
    cipher = published[sample_key(rel, sample_key_salt(key))]
    assert np.array_equal(scheme.decrypt(cipher[None], key)[0], read_image(tmp_path / "src" / rel))
