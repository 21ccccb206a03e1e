"""Faults of the `lcrypt` command: refused in one line (nothing written, inputs untouched), or counted.

Every case goes through ``lcrypt.cli.main`` as a user types it; the closed-pipe case also runs a real
subprocess, because only a real pipe closes the way ``| head -1`` does.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lcrypt import Key, get_scheme
from lcrypt.format import Manifest, encode_png
from lcrypt.cli import main
from lcrypt.imagefiles import MARK_KEYWORD
from tests.test_datasets import make_imagefolder

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: equal snapshots mean nothing was written or changed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, code: int, *needles: str) -> str:
    """Assert exit 2 with exactly one stderr line holding every needle, and no traceback."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("lcrypt "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def work(tmp_path, rng):
    """Three 32x32 plain PNGs in ``plain/``, their ciphertexts under key ``k1`` in ``enc/``, two keys."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(plain / f"img{i}.png")
    k1, k2 = Key.generate("alice"), Key.generate("bob")
    k1.save(tmp_path / "k1.key")
    k2.save(tmp_path / "k2.key")
    assert main(["encrypt", "--scheme", "etc", "--key", str(tmp_path / "k1.key"), str(plain),
                 "--out", str(tmp_path / "enc")]) == 0
    return tmp_path


def convert(direction: str, work: Path, inputs: Path | list[Path], out: Path, *extra: str,
            scheme: str = "etc", key: str = "k1.key") -> int:
    """`lcrypt encrypt|decrypt` with a key file of ``work``."""
    inputs = [str(i) for i in (inputs if isinstance(inputs, list) else [inputs])]
    return main([direction, "--scheme", scheme, *extra, "--key", str(work / key), *inputs, "--out", str(out)])


# -- 1. decrypt checks what it was encrypted with; --out never overwrites ----------------------------
@pytest.mark.parametrize("extra,key,scheme,given", [
    ((), "k2.key", "etc", "but etc block_size=16 under key {k2} (owner bob) was given"),
    (("--param", "block_size=8"), "k1.key", "etc",
     "but etc block_size=8 under key {k1} (owner alice) was given"),
    ((), "k1.key", "ele", "but ele block_size=4 under key {k1} (owner alice) was given"),
])
def test_decrypt_with_another_key_param_or_scheme_is_refused_naming_both(work, capsys, extra, key, scheme,
                                                                        given):
    capsys.readouterr()
    before = snapshot(work / "enc")
    ids = {"k1": Key.load(work / "k1.key").key_id, "k2": Key.load(work / "k2.key").key_id}
    code = convert("decrypt", work, work / "enc", work / "dec", *extra, scheme=scheme, key=key)
    refused(capsys, code, f"{work / 'enc' / 'img0.png'} was encrypted with etc block_size=16 under key "
            f"{ids['k1']} (owner alice)", given.format(**ids), "(and 2 more)")
    assert not (work / "dec").exists()
    assert snapshot(work / "enc") == before


def test_encrypt_writes_a_public_chunk_and_decrypt_output_carries_none(work, capsys):
    key = Key.load(work / "k1.key")
    with Image.open(work / "enc" / "img0.png") as im:
        mark = json.loads(im.info[MARK_KEYWORD])
    assert mark == {"format": "lcrypt-image/1", "state": "encrypted", "scheme": "etc",
                    "params": get_scheme("etc").params, "key_id": key.key_id, "owner": "alice"}
    assert key._secret.hex() not in json.dumps(mark)
    assert convert("decrypt", work, work / "enc", work / "dec") == 0
    for i in range(3):
        with Image.open(work / "dec" / f"img{i}.png") as im:
            assert MARK_KEYWORD not in im.info
            assert np.array_equal(np.asarray(im), np.asarray(Image.open(work / "plain" / f"img{i}.png")))


def test_encrypting_a_ciphertext_again_is_refused(work, capsys):
    capsys.readouterr()
    before = snapshot(work / "enc")
    refused(capsys, convert("encrypt", work, work / "enc", work / "enc2"),
            "img0.png is already encrypted with etc", "does not encrypt twice")
    assert not (work / "enc2").exists() and snapshot(work / "enc") == before


@pytest.mark.parametrize("out,needle", [(".", "is (or is inside) the input folder"),
                                        ("sub", "is (or is inside) the input folder")])
def test_out_equal_to_or_inside_the_input_folder_is_refused(work, capsys, out, needle):
    capsys.readouterr()
    before = snapshot(work / "enc")
    refused(capsys, convert("decrypt", work, work / "enc", work / "enc" / out), needle)
    assert snapshot(work / "enc") == before


def test_an_output_that_resolves_to_an_input_file_is_refused(work, capsys):
    capsys.readouterr()
    before = snapshot(work / "enc")
    (work / "link").symlink_to(work / "enc")  # another spelling of the same folder
    for name, out in (("img0.png", work / "link"), ("img1.png", work / "enc")):
        refused(capsys, convert("decrypt", work, [work / "enc" / name], out), "overwriting the input")
    assert snapshot(work / "enc") == before


def test_existing_outputs_and_colliding_names_are_refused_before_writing(work, capsys):
    capsys.readouterr()
    out = work / "dec"
    out.mkdir()
    (out / "img1.png").write_bytes(b"the user's own file")
    refused(capsys, convert("decrypt", work, work / "enc", out), f"{out / 'img1.png'} already exists",
            "never overwrites")
    assert snapshot(out) == {"img1.png": b"the user's own file"}
    Image.open(work / "plain" / "img0.png").save(work / "plain" / "img0.bmp")  # both would write img0.png
    refused(capsys, convert("encrypt", work, work / "plain", work / "enc3"), "would both write")
    assert not (work / "enc3").exists()


def test_an_image_without_the_chunk_needs_allow_unmarked_and_is_reported_unchecked(work, capsys):
    key = Key.load(work / "k1.key")
    plain = np.asarray(Image.open(work / "plain" / "img0.png"))
    shard_like = work / "fromshard"
    shard_like.mkdir()
    (shard_like / "x.png").write_bytes(encode_png(get_scheme("etc").encrypt(plain[None], key)[0]))
    capsys.readouterr()
    refused(capsys, convert("decrypt", work, shard_like, work / "dec"), "x.png carries no lcrypt chunk",
            "--allow-unmarked")
    assert not (work / "dec").exists()
    assert convert("decrypt", work, shard_like, work / "dec", "--allow-unmarked") == 0
    out = capsys.readouterr().out
    assert "unchecked" in out and "1 input(s) carried no lcrypt chunk" in out
    assert np.array_equal(np.asarray(Image.open(work / "dec" / "x.png")), plain)


# -- 2. unsupported files are skipped with their rule, counted, and nothing is half-written -----------
def test_encrypt_skips_unsupported_files_with_reasons_and_exits_1(work, capsys, rng):
    src = work / "plain"
    (src / "notes.txt").write_text("not an image")
    (src / "cut.png").write_bytes((src / "img0.png").read_bytes()[:200])  # truncated
    Image.fromarray(rng.integers(0, 256, (33, 32, 3), dtype=np.uint8)).save(src / "odd.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)).save(src / "alpha.png")
    nested = src / "sub"
    nested.mkdir()
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(nested / "gray.png")
    before = snapshot(src)
    capsys.readouterr()
    assert convert("encrypt", work, src, work / "out") == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    skipped = {line.split(" skipped ", 1)[1].split(": ")[0]: line for line in captured.err.splitlines()
               if line.startswith("lcrypt encrypt: skipped ")}
    assert sorted(Path(p).name for p in skipped) == ["alpha.png", "cut.png", "notes.txt", "odd.png"]
    reasons = " ".join(skipped.values())
    assert "not_an_image" in reasons and "corrupt" in reasons and "transparent" in reasons
    assert "not a multiple of block_size 16" in reasons
    assert "4 of 8 input(s) skipped" in captured.err
    assert "encrypted 4 image(s)" in captured.out and "skipped 4 (not written)" in captured.out
    assert sorted(snapshot(work / "out")) == ["img0.png", "img1.png", "img2.png", "sub/gray.png"]
    assert snapshot(src) == before
    assert convert("decrypt", work, work / "out", work / "back") == 0
    gray = np.asarray(Image.open(nested / "gray.png"))
    back = np.asarray(Image.open(work / "back" / "sub" / "gray.png"))
    assert np.array_equal(back, np.stack([gray] * 3, -1))


def test_a_write_failure_midway_leaves_only_complete_files(work, capsys, monkeypatch):
    import lcrypt.storage as storage_module

    calls = []

    def fsync(fd):  # the disk fills up while the second output is written
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "fsync", fsync)
    capsys.readouterr()
    refused(capsys, convert("decrypt", work, work / "enc", work / "dec"), "img1.png",
            "No space left on device", "1 image(s) were written")
    assert sorted(snapshot(work / "dec")) == ["img0.png"]  # no temporary file, no half-written PNG
    assert np.array_equal(np.asarray(Image.open(work / "dec" / "img0.png")),
                          np.asarray(Image.open(work / "plain" / "img0.png")))


# -- 3. verify names every stray or missing file --------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A prepared dataset with one rejected record (so errors.jsonl has one line)."""
    from pipelines.prepare import run

    root = tmp_path_factory.mktemp("faults-verify")
    make_imagefolder(root / "src", per_class=2)
    next((root / "src" / "train").iterdir()).joinpath("notes.txt").write_text("not an image")
    Key.generate("owner").save(root / "k.key")
    assert run(["--source", str(root / "src"), "--scheme", "block-shuffle", "--keys", str(root / "k.key"),
                "--shard-size", "4", "--max-reject-rate", "0.5", "--quiet", "--out", str(root / "out")]) == 0
    assert sum(s["rejected"] for s in Manifest.load(root / "out").stats) == 1
    return root / "out"


@pytest.fixture
def ds(dataset, tmp_path):
    import shutil

    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


def problems_of(ds: Path, capsys) -> list[str]:
    """`lcrypt verify` through main: exit 1, one FAIL line per problem, no traceback."""
    capsys.readouterr()
    code = main(["verify", str(ds)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    return [line.removeprefix("FAIL ") for line in err.splitlines() if line.startswith("FAIL ")]


def test_the_intact_dataset_verifies(dataset, capsys):
    assert main(["verify", str(dataset)]) == 0


def test_verify_flags_stray_files_at_the_root_and_in_split_folders(ds, capsys):
    (ds / "notes.txt").write_text("x")
    (ds / "train" / "readme.md").write_text("x")
    (ds / "val").mkdir()
    (ds / "val" / "a.bin").write_bytes(b"x")
    problems = problems_of(ds, capsys)
    assert len(problems) == 3
    assert problems[0].startswith("notes.txt: stray file at the dataset root")
    assert problems[1].startswith("train/readme.md: stray file in split folder train/")
    assert problems[2].startswith("val/a.bin: stray file in val/, which is not a split")


def test_verify_flags_a_missing_or_short_errors_file(ds, capsys):
    (ds / "errors.jsonl").write_text("")
    problems = problems_of(ds, capsys)
    assert len(problems) == 1
    assert problems[0].startswith("errors.jsonl: 0 line(s), but the manifest's stats record 1 rejected")
    (ds / "errors.jsonl").unlink()
    problems = problems_of(ds, capsys)
    assert len(problems) == 1 and problems[0].startswith("errors.jsonl: missing, but the manifest's stats "
                                                         "record 1 rejected record(s)")


def test_verify_names_a_garbage_index(ds, capsys):
    (ds / "index.parquet").write_bytes(b"\x00garbage bytes, not parquet" * 10)
    problems = problems_of(ds, capsys)
    assert len(problems) == 1 and problems[0].startswith("index.parquet: not a readable Parquet file")


def test_verify_says_a_prepare_run_did_not_finish(ds, capsys):
    (ds / ".lcrypt-prepare.lock").write_text("")
    (ds / ".fragments").mkdir()
    for i in range(5):
        (ds / ".fragments" / f"f{i}").write_bytes(b"x")
    (ds / "train" / ".owner-000009.tar.abc123.tmp").write_bytes(b"half a shard")
    problems = problems_of(ds, capsys)
    assert len(problems) == 3  # the scratch files are one problem, not one per file
    assert problems[0].startswith(".lcrypt-prepare.lock: a prepare run did not finish here (or is still "
                                  "running)")
    assert problems[1].startswith("train/.owner-000009.tar.abc123.tmp: temporary file of a write that")
    assert problems[2].startswith(".fragments/: 5 scratch file(s): a prepare run did not finish here")
    (ds / "manifest.json").unlink()  # a run that died before its manifest: the lock is still named
    problems = problems_of(ds, capsys)
    assert problems[0].startswith(".lcrypt-prepare.lock: a prepare run did not finish")
    assert "manifest.json not found" in problems[1]


# -- 4. a closed stdout ends any command quietly ------------------------------------------------------
def test_a_closed_pipe_exits_141_without_a_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "lcrypt.cli", "schemes", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before lcrypt writes, as with `| head -1` on a long output
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == b""


class ClosedStdout:
    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.mark.parametrize("argv", [["schemes"], ["verify", "."]])
def test_every_subcommand_handles_a_closed_stdout(argv, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdout", ClosedStdout())
    assert main(argv) == 141
    assert capsys.readouterr().err == ""


# -- 5. keygen refuses owner names that prepare would refuse -----------------------------------------
@pytest.mark.parametrize("owner", ["../evil", "a/b", ".hidden", "has space", "x" * 65])
def test_keygen_refuses_an_owner_name_shards_cannot_carry(tmp_path, capsys, owner):
    refused(capsys, main(["keygen", "--owner", owner, "--out", str(tmp_path / "k.key")]), repr(owner),
            "letters, digits, '-' or '_'")
    assert not (tmp_path / "k.key").exists()


def test_keygen_into_a_missing_folder_is_one_line(tmp_path, capsys):
    refused(capsys, main(["keygen", "--owner", "a", "--out", str(tmp_path / "no" / "k.key")]),
            str(tmp_path / "no" / "k.key"), "No such file or directory")


# -- preview: the same rules ---------------------------------------------------------------------------
def test_preview_skips_what_is_not_an_image_and_says_so(work, capsys):
    (work / "plain" / "notes.txt").write_text("x")
    out = work / "grid.png"
    capsys.readouterr()
    assert main(["preview", str(work / "plain"), "--size", "32", "--schemes", "etc", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "notes.txt: not_an_image" in captured.err
    assert np.asarray(Image.open(out)).shape[0] == 14 + 3 * 98  # the three images that decode


@pytest.mark.parametrize("args,needle", [
    (["--out", "grid.png"], "already exists"),
    (["--out", "grid.jpg"], "ending in .png"),
    (["--out", "new.png", "--size", "40"], "not a multiple of etc's block size 16"),
    (["--out", "new.png", "--limit", "0"], "must both be at least 1"),
    (["--out", "plain/img0.png"], "already exists"),
])
def test_preview_refusals_write_nothing(work, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(work)
    Path("grid.png").write_bytes(b"mine")
    before = snapshot(work)
    capsys.readouterr()
    refused(capsys, main(["preview", "plain", "--schemes", "etc", *args]), needle)
    assert snapshot(work) == before
