"""The client round trip: encrypt a plain image with the owner's key and classify it with the model."""

from __future__ import annotations

import numpy as np
import pytest

from lcrypt import Key
from lcrypt.format import Manifest, decode_shard, sample_key, sample_key_salt
from lcrypt.images import read_image
from tests.test_loader import make_dataset


def test_predict_encrypts_like_the_pipeline_and_classifies(tmp_path, capsys):
    from training.checkpoint import load_checkpoint
    from training.predict import PredictError, classify, encrypt_for, load_model, run
    from training.train import run as train

    data, key = make_dataset(tmp_path, scheme="pe", per_class={"train": 8, "test": 2})
    out = tmp_path / "runs" / "pe-tiny"
    assert train(["--data", str(data), "--out", str(out.parent), "--name", out.name, "--model", "convmixer",
                  "--width", "16", "--depth", "2", "--kernel", "3", "--epochs", "2", "--batch-size", "4",
                  "--quiet"]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    rel = "test/green/green_001.png"
    plain = read_image(tmp_path / "src" / rel)[None]
    enc = encrypt_for(ckpt, plain, key)
    # the client's ciphertext is the very sample the pipeline published for that image
    m = Manifest.load(data)
    want = sample_key(rel, sample_key_salt(key))
    published = {k: img for e in m.shards_for("test") for k, img, _ in decode_shard(data / e.path)}
    assert np.array_equal(enc[0], published[want])
    probs, idx = classify(load_model(ckpt), enc, top=3)
    assert probs.shape == (1, 3) and np.all(np.diff(probs[0]) <= 0) and sorted(idx[0]) == [0, 1, 2]
    assert run(["--checkpoint", str(out / "checkpoint.pt"), "--key", str(tmp_path / "alice.key"),
                str(tmp_path / "src" / rel)]) == 0
    assert "green_001.png" in capsys.readouterr().out
    with pytest.raises(PredictError, match="not one this model was trained with"):
        encrypt_for(ckpt, plain, Key.generate("mallory"))
