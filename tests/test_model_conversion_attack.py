"""What a converted model leaks: its key, to whoever holds the weights it was converted from; nothing
to whoever holds only another model's."""

from __future__ import annotations

import numpy as np
import pytest

from lcrypt import Key, get_scheme
from lcrypt.attacks import Target, attacks_for
from lcrypt.attacks.model_conversion import (MODEL_CONVERSION, MODEL_CONVERSION_PRIVATE, applies_to,
                                             recover_block_key)

KEY = Key(b"\x33" * 32, "owner")


def test_applies_to_the_schemes_whose_key_folds_into_a_model():
    assert applies_to(get_scheme("blockwise").info) and applies_to(get_scheme("block-shuffle").info)
    for name in ("etc", "pe", "le", "plain", "catmap", "ele", "cpbe"):
        assert not applies_to(get_scheme(name).info), name
    assert MODEL_CONVERSION in attacks_for(get_scheme("blockwise").info)


@pytest.mark.parametrize("name,params", [("vit", {"block_size": 4}),
                                         ("convmixer", {"block_size": 4, "scramble": False})])
def test_public_weights_give_back_the_whole_key_and_other_weights_nothing(name, params):
    """Against a torch model converted by training.convert (not the attack's own folding)."""
    from tests.test_convert import plain_model
    from training.convert import convert_model

    scheme = get_scheme("blockwise", **params)
    model = plain_model(name, steps=2)
    converted = convert_model(model, KEY, scheme, (32, 32, 3))
    conv, pos = {"vit": ("patch_embed.proj.weight", "pos_embed"), "convmixer": ("stem.0.weight", None)}[name]

    def weights(m):
        sd = m.state_dict()
        return {"patch": sd[conv].double().numpy(), "pos": sd[pos][0].double().numpy() if pos else None}

    truth = scheme.block_key(KEY, (32, 32, 3))
    got = recover_block_key(weights(model), weights(converted), 64)
    assert np.array_equal(got.src, truth.src) and np.array_equal(got.flip, truth.flip)
    assert np.array_equal(got.blocks, truth.blocks)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(got.index_map((32, 32, 3)).inverse(scheme.encrypt(images, KEY)), images)
    other = recover_block_key(weights(plain_model(name, steps=2, seed=5)), weights(converted), 64)
    assert np.mean(other.src == truth.src) < 0.1


def test_both_attacks_run_from_a_target_and_the_report_says_what_it_means(tmp_path):
    from lcrypt.evaluate.measure import measure_scheme
    from lcrypt.evaluate.render import write_report
    from lcrypt.attacks import Budget

    scheme = get_scheme("blockwise", block_size=8)
    plain = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    res, _ = measure_scheme(scheme, plain, plain[:2], KEY, Budget(itn_steps=0))
    public, private = res["model"]["model-conversion"], res["model"]["model-conversion-private"]
    assert public["key_fraction"] == 1.0 and public["exact"] == 1.0
    assert private["key_fraction"] < 0.05 and private["exact"] == 0.0
    # without an owner's conversion the attack says why it did not run
    out = MODEL_CONVERSION_PRIVATE.run(Target(scheme, scheme.encrypt(plain, KEY), plain[:0], lambda a: a))
    assert out.skipped and "no converted model" in out.skipped
    data = {"date": "d", "machine": "m", "seconds": 1.0, "datasets": [
        {"name": "t", "slug": "t", "split": "test", "shape": [32, 32, 3], "attack_images": 4,
         "results": [res]}]}
    text = write_report(tmp_path, data, "lcrypt evaluate", None)
    assert "publicly available pretrained model publishes the key" in text
    assert "| `blockwise` | the very public weights | 100.0% |" in text
