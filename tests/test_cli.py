"""The `lcrypt` command as a user types it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lcrypt import list_schemes
from lcrypt.cli import main


@pytest.fixture
def images(tmp_path, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)).save(folder / "gray.png")
    return folder


def test_schemes_json_lists_every_scheme_with_properties(capsys):
    assert main(["schemes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_schemes()
    etc = rows[[r["name"] for r in rows].index("etc")]
    assert etc["block_size"] == 16 and etc["jpeg_compatible"] and etc["invertible"]
    assert etc["augmentations"] == ["mixup", "cutmix"]


@pytest.mark.parametrize("scheme,params", [("etc", ["block_size=16"]), ("pe", ["color_shuffle=true"]),
                                           ("ahmad-diffusion", ["ratio=0.5"])])
def test_encrypt_then_decrypt_files_round_trips(tmp_path, images, capsys, scheme, params):
    key = tmp_path / "o.key"
    assert main(["keygen", "--owner", "o", "--out", str(key)]) == 0
    extra = [a for p in params for a in ("--param", p)]
    assert main(["encrypt", "--scheme", scheme, *extra, "--key", str(key), str(images),
                 "--out", str(tmp_path / "enc")]) == 0
    assert main(["decrypt", "--scheme", scheme, *extra, "--key", str(key), str(tmp_path / "enc"),
                 "--out", str(tmp_path / "dec")]) == 0
    for src in images.iterdir():
        plain = np.asarray(Image.open(src).convert("RGB"))
        enc = np.asarray(Image.open(tmp_path / "enc" / src.name))
        dec = np.asarray(Image.open(tmp_path / "dec" / src.name))
        assert not np.array_equal(enc, plain)
        assert np.array_equal(dec, plain)
    assert "decrypted 4 image(s)" in capsys.readouterr().out


def test_preview_writes_a_grid_with_a_column_per_scheme(tmp_path, images, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", str(images), "--size", "32", "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] == len(list_schemes()) * 98 and grid.shape[0] == 14 + 4 * 98
    assert "throw-away" in capsys.readouterr().out


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, images, capsys):
    key = tmp_path / "o.key"
    main(["keygen", "--owner", "o", "--out", str(key)])
    capsys.readouterr()
    # a size the scheme refuses skips each image with the rule (exit 1), and writes nothing for it
    assert main(["encrypt", "--scheme", "etc", "--param", "block_size=7", "--key", str(key), str(images),
                 "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("not a multiple of block_size 7") == 4 and "4 of 4 input(s) skipped" in err
    assert not (tmp_path / "x").exists()
    assert main(["encrypt", "--scheme", "etc", "--param", "bogus", "--key", str(key), str(images),
                 "--out", str(tmp_path / "x")]) == 2
    assert "must look like name=value" in capsys.readouterr().err
    assert main(["encrypt", "--scheme", "etc", "--key", str(tmp_path / "missing.key"), str(images),
                 "--out", str(tmp_path / "x")]) == 2
    assert "lcrypt keygen" in capsys.readouterr().err
