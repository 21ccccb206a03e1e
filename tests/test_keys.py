"""Key files, HKDF sub-keys, and the rule that the secret never shows."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle

import pytest

from lcrypt import Key, KeyFileError, get_scheme
from lcrypt.cli import main
from lcrypt.keys import hkdf_sha256, key_id_of, verify_signature


def secret_forms(key: Key) -> list[str]:
    s = key._secret
    return [s.hex(), base64.b64encode(s).decode(), repr(s)]


def test_hkdf_matches_rfc5869_test_case_1():
    okm = hkdf_sha256(bytes([0x0B] * 22), bytes(range(0xF0, 0xFA)), 42, salt=bytes(range(0x0D)))
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")


def test_generate_save_load_roundtrip(tmp_path):
    key = Key.generate("hospital-a")
    path = key.save(tmp_path / "a.key")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = Key.load(path, owner="hospital-a")
    assert loaded == key and loaded.key_id == key.key_id and len(key.key_id) == 32
    body = json.loads(path.read_text())
    assert set(body) == {"format", "owner", "key_id", "created", "secret"}
    assert Key.generate("x") != Key.generate("x")  # fresh randomness every time


def test_refuses_to_overwrite(tmp_path):
    Key.generate("a").save(tmp_path / "k")
    with pytest.raises(KeyFileError, match="never overwrites"):
        Key.generate("b").save(tmp_path / "k")


def test_refuses_files_others_can_read_and_says_how_to_fix(tmp_path):
    path = Key.generate("a").save(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"readable by others \(mode 644\).*chmod 600"):
        Key.load(path)


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t[: len(t) // 2], "not valid JSON"),
    (lambda t: "[]", "not an lcrypt-key/1 file"),
    (lambda t: t.replace('"owner"', '"ownr"'), "lacks the field"),
    (lambda t: json.dumps(dict(json.loads(t), secret=json.loads(t)["secret"][:-8])), "secret"),
    (lambda t: json.dumps(dict(json.loads(t), key_id="0" * 16)), "does not match the secret"),
])
def test_malformed_and_truncated_files_give_clear_errors(tmp_path, mutate, message):
    key = Key.generate("a")
    path = key.save(tmp_path / "k")
    path.write_text(mutate(path.read_text()))
    with pytest.raises(KeyFileError, match=message) as err:
        Key.load(path)
    assert not any(s in str(err.value) for s in secret_forms(key))


def test_wrong_owner_is_refused(tmp_path):
    path = Key.generate("hospital-a").save(tmp_path / "k")
    with pytest.raises(KeyFileError, match="belongs to owner 'hospital-a', not 'hospital-b'"):
        Key.load(path, owner="hospital-b")


def test_secret_never_in_repr_logs_or_errors(tmp_path, caplog, capsys):
    key = Key.generate("a")
    forms = secret_forms(key)
    logging.getLogger("test").warning("using %s / %r", key, key)
    texts = [repr(key), str(key), f"{key}", caplog.text]
    for bad in (lambda: get_scheme("etc").encrypt(__import__("numpy").zeros((1, 33, 32, 3), "uint8"), key),):
        with pytest.raises(ValueError) as err:
            bad()
        texts.append(str(err.value))
    path = tmp_path / "a.key"
    assert main(["keygen", "--owner", "a", "--out", str(path)]) == 0
    assert main(["keygen", "--owner", "a", "--out", str(path)]) == 2
    written = Key.load(path)
    captured = capsys.readouterr()
    texts.append(captured.out + captured.err)
    forms += secret_forms(written)
    assert written.key_id in texts[-1]
    for text in texts:
        assert not any(f in text for f in forms)


def test_subkeys_are_separated_and_reproducible():
    key = Key(bytes(range(32)), "a")
    assert key.derive("etc|a") != key.derive("etc|b")
    assert key.stream("x", 64).tobytes() == Key(bytes(range(32)), "other-owner").stream("x", 64).tobytes()
    assert sorted(key.permutation("p", 100).tolist()) == list(range(100))
    bits = key.bits("b", 100_000)
    assert 0.49 < bits.mean() < 0.51
    assert key.bits("b", 10, p=1.0).all()


def test_keys_pickle_for_beam_workers_without_changing():
    key = Key.generate("a")
    assert pickle.loads(pickle.dumps(key)) == key


def test_key_id_is_the_fingerprint_of_the_public_signing_key():
    key = Key(bytes(range(32)), "a")
    assert key.key_id == key_id_of(key.public_key) and len(key.public_key) == 32
    assert key.key_id != key_id_of(Key(bytes(range(1, 33)), "a").public_key)
    message = b"release statement"
    signature = key.sign(message)
    assert verify_signature(key.public_key, message, signature)
    assert not verify_signature(key.public_key, message + b"!", signature)
    assert not verify_signature(Key.generate("b").public_key, message, signature)
    assert key.derive("lcrypt/signing-key/ed25519/v1") not in (key.public_key, key.key_id.encode())


def test_a_key_file_recording_the_legacy_key_id_still_loads(tmp_path):
    key = Key.generate("a")
    path = key.save(tmp_path / "k")
    body = json.loads(path.read_text())
    path.write_text(json.dumps(dict(body, key_id=key.legacy_key_id)))
    loaded = Key.load(path)
    assert loaded == key and loaded.key_id == key.key_id and loaded.key_ids == (key.key_id, key.legacy_key_id)
    assert loaded.has_id(key.legacy_key_id) and not loaded.has_id(Key.generate("a").legacy_key_id)
    assert len(key.legacy_key_id) == 16 and key.legacy_key_id != key.key_id[:16]
