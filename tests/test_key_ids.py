"""Key ids are public-key fingerprints now; what was written under the legacy id (key files, encrypted
PNGs, checkpoints) keeps working with the same key, and nothing accepts another key's legacy id."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lcrypt import Key, get_scheme
from lcrypt.errors import UserError
from lcrypt.format import Manifest, OwnerEntry
from lcrypt.imagefiles import MARK_KEYWORD, encryption_mark, refuse_marks
from lcrypt.preview import save_png


def legacy_mark_png(path, key: Key) -> None:
    """An encrypted PNG as an lcrypt before public-key ids wrote it: the mark records the legacy id."""
    scheme = get_scheme("etc")
    image = scheme.encrypt(np.zeros((1, 32, 32, 3), np.uint8), key)[0]
    mark = dict(encryption_mark(scheme, key), key_id=key.legacy_key_id)
    save_png(image, path, text={MARK_KEYWORD: json.dumps(mark)})


def test_decrypt_accepts_a_mark_with_the_keys_legacy_id_and_refuses_anothers(tmp_path):
    key, other = Key.generate("alice"), Key.generate("alice")
    legacy_mark_png(tmp_path / "a.png", key)
    with Image.open(tmp_path / "a.png") as im:
        assert key.legacy_key_id in im.info[MARK_KEYWORD]
    pairs = [(tmp_path / "a.png", tmp_path / "out" / "a.png")]
    assert refuse_marks(pairs, "decrypt", get_scheme("etc"), key, allow_unmarked=False) == []
    with pytest.raises(UserError, match=f"under key {key.legacy_key_id}"):
        refuse_marks(pairs, "decrypt", get_scheme("etc"), other, allow_unmarked=False)


def test_predict_accepts_a_checkpoint_recording_legacy_key_ids():
    from training.predict import PredictError, encrypt_for

    key = Key.generate("alice")
    ckpt = {"key_ids": [key.legacy_key_id], "scheme": "pe", "scheme_params": {}}
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(encrypt_for(ckpt, images, key), get_scheme("pe").encrypt(images, key))
    with pytest.raises(PredictError, match="not one this model was trained with"):
        encrypt_for(ckpt, images, Key.generate("alice"))


def test_check_key_ids_matches_as_recorded_and_names_a_legacy_mix():
    from loaders.dataset import KeyMismatchError, check_key_ids

    key = Key.generate("alice")
    m = Manifest(name="d", scheme="pe", scheme_params={}, owners=[OwnerEntry("alice", key.legacy_key_id)],
                 class_names=["a"], image_shape=[16, 16, 3], encoding="png", shards=[])
    check_key_ids(m, [key.legacy_key_id])  # an old dataset with an old checkpoint
    with pytest.raises(KeyMismatchError, match="legacy key ids"):
        check_key_ids(m, [key.key_id])
    m.owners[0].key_id = key.key_id
    check_key_ids(m, [key.key_id])
    with pytest.raises(KeyMismatchError) as err:
        check_key_ids(m, [Key.generate("bob").key_id])
    assert "legacy" not in str(err.value)
