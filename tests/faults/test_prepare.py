"""Fault suite, `prepare`: --out rules, the run lock, flags, the size probe, write failures, interruptions.

Every case asserts the rule: a one-line error and a non-zero exit, nothing half-written, every file that
was there before byte-identical after, counts reconciled (read = written + rejected).
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from lcrypt import Key
from lcrypt.format import SHARD_RE, Manifest, read_samples
from lcrypt.verify import verify
from pipelines import outdir
from pipelines.prepare import run
from tests.test_datasets import make_imagefolder, png_bytes

ROOT = Path(__file__).resolve().parents[2]
SCHEME = ["--scheme", "etc", "--param", "block_size=8"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks by their target path), for before/after comparisons."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            out[rel] = b"->" + os.readlink(p).encode()
        elif p.is_file():
            out[rel] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 16x16 ImageFolder tree and one owner's key."""
    root = tmp_path_factory.mktemp("faults-prepare")
    make_imagefolder(root / "src", per_class=3)
    Key.generate("alice").save(root / "alice.key")
    argv = ["--source", str(root / "src"), *SCHEME, "--keys", str(root / "alice.key"), "--shard-size", "4",
            "--quiet"]
    return {"root": root, "argv": argv}


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- 1. --overwrite deletes exactly what prepare wrote ------------------------------------------------
def test_overwrite_never_deletes_the_users_files(small, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(small["argv"] + ["--out", str(out)]) == 0
    capsys.readouterr()
    (out / "backups").mkdir()
    (out / "backups" / "raw-images.tar").write_bytes(b"the user's backup")  # a folder of only .tar files
    before = snapshot(out)
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "backups/raw-images.tar" in line and "nothing was deleted" in line
    assert snapshot(out) == before
    (out / "backups" / "raw-images.tar").unlink()
    (out / "train" / "notes.txt").write_text("the user's, inside a split folder")
    before = snapshot(out)
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 2
    assert "train/notes.txt" in one_line_error(capsys.readouterr().err) and snapshot(out) == before


def test_overwrite_never_follows_a_symlink_out_of_out(small, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert run(small["argv"] + ["--out", str(out)]) == 0
    elsewhere.mkdir()
    (elsewhere / "alice-000000.tar").write_bytes(b"a file outside --out")
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)
    capsys.readouterr()
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 2
    assert "linked" in one_line_error(capsys.readouterr().err)
    assert (elsewhere / "alice-000000.tar").read_bytes() == b"a file outside --out"
    (out / "linked").unlink()
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 0  # only its own files left: replaced
    assert verify(out)[0] == []


def test_overwrite_replaces_a_larger_earlier_dataset_completely(small, tmp_path):
    out = tmp_path / "out"
    assert run(small["argv"] + ["--out", str(out), "--shard-size", "1"]) == 0
    many = {s.path for s in Manifest.load(out).shards}
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 0
    m = Manifest.load(out)
    assert len(m.shards) < len(many) and verify(out)[0] == []  # no old shard left behind
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no marker, scratch or temp file


# -- 3. overlapping owners ---------------------------------------------------------------------------
def test_a_record_two_owners_match_is_rejected_naming_both_unless_first_is_chosen(small, tmp_path, capsys):
    for name in ("bob", "carol"):
        Key.generate(name).save(tmp_path / f"{name}.key")
    owners = {"bob": {"key": "bob.key", "match": ["*/cat/*", "*/dog/*"]},
              "carol": {"key": "carol.key", "match": ["*/cat/*", "*/bird/*"]}}  # cat: both
    (tmp_path / "owners.json").write_text(json.dumps(owners))
    argv = ["--source", str(small["root"] / "src"), *SCHEME, "--keys", str(tmp_path / "owners.json"),
            "--quiet", "--max-reject-rate", "1"]
    assert run(argv + ["--out", str(tmp_path / "strict")]) == 0
    errors = [json.loads(line) for line in (tmp_path / "strict" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 6 and {e["reason"] for e in errors} == {"owner_conflict"}
    assert all("/cat/" in e["source"] and "bob and carol" in e["detail"] for e in errors)
    m = Manifest.load(tmp_path / "strict")
    assert sum(s["read"] for s in m.stats) == 18 == sum(m.splits.values()) + len(errors)
    assert run(argv + ["--out", str(tmp_path / "first"), "--owner-overlap", "first"]) == 0
    m = Manifest.load(tmp_path / "first")
    assert {o.name: sum(o.counts.values()) for o in m.owners} == {"bob": 12, "carol": 6}
    assert (tmp_path / "first" / "errors.jsonl").read_text() == ""


# -- 4. --out and --source apart --------------------------------------------------------------------
@pytest.mark.parametrize("where", ["inside", "equal", "holds the source"])
def test_out_and_source_must_not_overlap(small, tmp_path, capsys, where):
    src = tmp_path / "data" / "src"
    make_imagefolder(src, per_class=1)
    out = {"inside": src / "enc", "equal": src, "holds the source": tmp_path / "data"}[where]
    before = snapshot(tmp_path / "data")
    argv = ["--source", str(src), *SCHEME, "--keys", str(small["root"] / "alice.key"), "--out", str(out)]
    assert run(argv) == 2
    assert "inside" in one_line_error(capsys.readouterr().err)
    assert snapshot(tmp_path / "data") == before and not (src / "enc").exists()


# -- 7. flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,expect", [
    (["--shard_size", "100"], "did you mean --shard-size"),
    (["--shardsize", "100"], "did you mean --shard-size"),
    (["--shard", "100"], "did you mean --shard-size"),  # no silent abbreviations either
    (["--max-shard-mb", "0"], "--max-shard-mb 0.0: must be greater than 0"),
    (["--max-shard-mb", "-5"], "--max-shard-mb -5.0: must be greater than 0"),
    (["--chunk", "0"], "--chunk 0: must be at least 1"),
    (["--max-reject-rate", "-1"], "--max-reject-rate -1.0: must be between 0 and 1"),
    (["--shard-size", "0"], "--shard-size 0: must be at least 1"),
    (["--read-parts", "0"], "--read-parts 0: must be at least 1"),
    (["--jpeg-quality", "0"], "--jpeg-quality 0: must be 1..100"),
])
def test_bad_flags_are_refused_before_any_work(small, tmp_path, capsys, flags, expect):
    out = tmp_path / "out"
    assert run(small["argv"] + ["--out", str(out), *flags]) == 2
    assert expect in one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_the_cli_refuses_typos_too(small, tmp_path, capsys):
    from lcrypt.cli import main

    assert main(["prepare", *small["argv"], "--out", str(tmp_path / "out"), "--shard_size", "100"]) == 2
    assert "did you mean --shard-size" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# -- 8. the size probe ------------------------------------------------------------------------------
def _tree(root: Path, sizes: list[int]) -> None:
    rng = np.random.default_rng(5)
    for i, side in enumerate(sizes):
        path = root / "train" / ("cat", "dog")[i % 2] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


def test_an_odd_first_image_does_not_decide_the_size(small, tmp_path, capsys):
    _tree(tmp_path / "src", [1] + [16] * 115)  # the 1x1 image sorts first
    argv = ["--source", str(tmp_path / "src"), *SCHEME, "--keys", str(small["root"] / "alice.key"),
            "--out", str(tmp_path / "out"), "--quiet"]
    assert run(argv) == 0
    m = Manifest.load(tmp_path / "out")
    assert m.image_shape == [16, 16, 3] and m.splits == {"train": 115}
    assert "image size 16x16" in capsys.readouterr().out
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in errors] == ["wrong_size"]


def test_mixed_sizes_are_refused_listing_them(small, tmp_path, capsys):
    _tree(tmp_path / "src", [16, 32] * 20)
    argv = ["--source", str(tmp_path / "src"), *SCHEME, "--keys", str(small["root"] / "alice.key"),
            "--out", str(tmp_path / "out")]
    assert run(argv) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "16x16: 20" in line and "32x32: 20" in line and "--size" in line
    assert not (tmp_path / "out").exists()


# -- 21.4 the run lock ------------------------------------------------------------------------------
def test_a_second_run_on_a_busy_out_is_refused_naming_the_first(small, tmp_path, capsys):
    from pipelines.runlock import RunLock

    out = tmp_path / "out"
    holder = RunLock(str(out)).acquire()  # another prepare holding --out
    holder.claim()
    try:
        assert run(small["argv"] + ["--out", str(out)]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert "in use by another lcrypt prepare" in line and f"pid {os.getpid()}" in line
        assert sorted(p.name for p in out.iterdir()) == [outdir.LOCK_NAME]
    finally:
        holder.release(finished=True)
    assert run(small["argv"] + ["--out", str(out)]) == 0  # free again


def test_two_concurrent_runs_one_refused_one_complete(small, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.prepare", *small["argv"], "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    refused = next(r for r in results if r[2] == 2)
    assert "in use by another lcrypt prepare" in refused[1] or "already holds a dataset" in refused[1]
    assert verify(out)[0] == []


# -- 21.7 read-only and full outputs ----------------------------------------------------------------
def test_an_unwritable_out_is_found_before_any_work(small, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where --out's parent folder should be")
    assert run(small["argv"] + ["--out", str(blocker / "out")]) == 2
    assert "cannot create the folder" in one_line_error(capsys.readouterr().err)
    ro = Path("/proc/lcrypt-out")  # a read-only file system wherever /proc is mounted
    assert run(small["argv"] + ["--out", str(ro)]) == 2
    assert "--out /proc/lcrypt-out" in one_line_error(capsys.readouterr().err)


def test_a_full_disk_while_writing_shards_is_one_line_and_leaves_no_scratch(small, tmp_path, capsys,
                                                                              monkeypatch):
    from lcrypt.storage import LocalStorage

    real = LocalStorage.write_atomic

    def full(self, path, data, durable=True):
        if str(path).endswith(".tar"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path, data, durable)

    monkeypatch.setattr(LocalStorage, "write_atomic", full)
    out = tmp_path / "out"
    assert run(small["argv"] + ["--out", str(out)]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line and "--overwrite" in line
    left = snapshot(out)
    assert list(left) == [outdir.LOCK_NAME]  # the marker of the unfinished run; no fragments, no temp files
    monkeypatch.setattr(LocalStorage, "write_atomic", real)
    assert run(small["argv"] + ["--out", str(out)]) == 2  # an unfinished run is not silently replaced
    assert "did not finish" in one_line_error(capsys.readouterr().err)
    assert run(small["argv"] + ["--out", str(out), "--overwrite"]) == 0
    assert verify(out)[0] == []


# -- 6. interruptions -------------------------------------------------------------------------------
def _big_tar(path: Path, n: int = 3000, side: int = 16) -> None:
    """A tar.gz ImageFolder of ``n`` small PNGs: enough work to catch a run in each of its phases."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for i in range(n):
            data = png_bytes(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
            info = tarfile.TarInfo(f"train/{('cat', 'dog', 'emu')[i % 3]}/{i:05d}.png")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    found, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


PHASES = {  # what shows that a run is in a phase, from outside
    "reading": lambda out: (out / outdir.LOCK_NAME).exists(),
    "encrypting": lambda out: any((out / outdir.FRAGMENTS).glob("*.bin")),
    "writing shards": lambda out: any(out.glob("*/*.tar")),
}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-kill")
    _big_tar(root / "big.tar.gz")
    Key.generate("alice").save(root / "alice.key")
    return root


def _start(big: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.prepare", "--source", str(big / "big.tar.gz"), *SCHEME,
           "--keys", str(big / "alice.key"), "--out", str(out), "--shard-size", "100", "--chunk", "32",
           "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, phase: str, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not PHASES[phase](out):
        assert proc.poll() is None, f"prepare ended before the {phase} phase: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"prepare never reached the {phase} phase"
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_sigkill_leaves_no_process_no_partial_shard_and_overwrite_recovers(big, tmp_path, phase):
    out = tmp_path / "out"
    proc = _start(big, out)
    _wait_for(proc, phase, out)
    family = _descendants(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)], "a process of the killed run is still running"
    for shard in out.glob("*/*.tar"):  # whatever is under a final name is a whole shard
        assert SHARD_RE.match(shard.relative_to(out).as_posix())
        assert sum(1 for _ in read_samples(shard.read_bytes())) > 0
    assert (out / outdir.LOCK_NAME).exists() and not (out / "manifest.json").exists()
    argv = ["--source", str(big / "big.tar.gz"), *SCHEME, "--keys", str(big / "alice.key"), "--out", str(out),
            "--shard-size", "100", "--quiet"]
    assert run(argv + ["--overwrite"]) == 0
    m = Manifest.load(out)
    assert verify(out)[0] == [] and sum(s["read"] for s in m.stats) == 3000 == sum(m.splits.values())
    # swept by the next run
    assert not list(Path(tempfile.gettempdir()).glob(f"lcrypt-progress-{proc.pid}-*"))


@pytest.mark.slow
def test_sigint_prints_one_line_and_cleans_up(big, tmp_path):
    out = tmp_path / "out"
    proc = _start(big, out)
    _wait_for(proc, "encrypting", out)
    family = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = one_line_error(err)
    assert line.startswith("lcrypt prepare: interrupted:") and "--overwrite" in line
    time.sleep(0.5)
    assert not [p for p in family if _alive(p)]
    assert not (out / outdir.FRAGMENTS).exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"lcrypt-progress-{proc.pid}-*"))
