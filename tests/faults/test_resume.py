"""Fault suite, `prepare --resume`: a run killed (SIGKILL) or interrupted (SIGINT) in any phase is finished
by `--resume` into the very bytes an uninterrupted run writes; complete shards are kept and their records
not decoded again; a resume with other options, another source or other counts is refused in one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lcrypt import Key
from lcrypt.format import read_samples
from lcrypt.verify import verify
from pipelines import outdir
from pipelines.prepare import run
from tests.faults.test_prepare import PHASES, ROOT, SCHEME, _big_tar, _wait_for, one_line_error, snapshot
from tests.test_golden_dataset import outputs

N = 3000  # records of the archive (tests/faults/test_prepare.py's _big_tar)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """The kill test's archive and key, and the dataset an uninterrupted run makes of them."""
    root = tmp_path_factory.mktemp("faults-resume")
    _big_tar(root / "big.tar.gz", n=N)
    Key.generate("alice").save(root / "alice.key")
    argv = ["--source", str(root / "big.tar.gz"), *SCHEME, "--keys", str(root / "alice.key"),
            "--shard-size", "100", "--chunk", "32", "--quiet"]
    assert run(argv + ["--out", str(root / "reference" / "out")]) == 0
    return {"root": root, "argv": argv, "reference": outputs(root / "reference" / "out")}


def _start(big: dict, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipelines.prepare", *big["argv"], "--out", str(out)]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count_decodes(monkeypatch) -> list[str]:
    """The source ids the encryption step decodes in this process (run with --no-isolate-decoders)."""
    import pipelines.encrypt as encrypt

    seen: list[str] = []
    real = encrypt.decode_record

    def counting(record, **kw):
        seen.append(record.source_id)
        return real(record, **kw)

    monkeypatch.setattr(encrypt, "decode_record", counting)
    return seen


def _shard_samples(out: Path) -> int:
    return sum(sum(1 for _ in read_samples(p.read_bytes())) for p in out.glob("*/*.tar"))


def _finished_like_the_reference(big: dict, out: Path) -> None:
    assert outputs(out) == big["reference"]  # every file's bytes; manifest.json without `created`
    assert sorted(p.name for p in out.iterdir()) == ["_info.json", "errors.jsonl", "index.parquet",
                                                      "manifest.json", "train"]  # no marker, state, scratch
    assert verify(out)[0] == []


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_run_killed_in_any_phase_is_resumed_into_the_same_bytes(big, tmp_path, monkeypatch, phase):
    out = tmp_path / "out"  # the same folder name as the reference: the dataset's name is the folder's
    proc = _start(big, out)
    _wait_for(proc, phase, out)
    proc.kill()
    proc.communicate(timeout=60)
    chunks_done = len(list((out / outdir.FRAGMENTS).glob("*.json")))
    kept = _shard_samples(out)  # shards under their final names are complete (written atomically)
    decoded = _count_decodes(monkeypatch)
    assert run(big["argv"] + ["--out", str(out), "--resume", "--no-isolate-decoders"]) == 0
    _finished_like_the_reference(big, out)
    # a chunk whose result was saved is not decoded again (chunks hold at most 32 records, 28 at least)
    assert len(decoded) <= N - kept and len(decoded) <= N - 28 * chunks_done
    if phase == "writing shards":  # every record was encrypted before the first shard: nothing is decoded
        assert decoded == [] and kept > 0


@pytest.mark.slow
def test_after_ctrl_c_only_the_records_of_incomplete_shards_are_decoded_again(big, tmp_path, monkeypatch):
    out = tmp_path / "out"
    proc = _start(big, out)
    _wait_for(proc, "writing shards", out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in one_line_error(err)
    assert not (out / outdir.FRAGMENTS).exists()  # Ctrl-C removes the scratch: the chunks are gone
    kept = _shard_samples(out)
    assert 0 < kept < N
    decoded = _count_decodes(monkeypatch)
    assert run(big["argv"] + ["--out", str(out), "--resume", "--no-isolate-decoders"]) == 0
    _finished_like_the_reference(big, out)
    assert len(decoded) == N - kept == len(set(decoded))  # the kept shards' records were skipped undecoded


@pytest.mark.slow
def test_a_resume_with_other_options_another_source_or_other_counts_is_refused(big, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _start(big, out)  # an interrupted run: its counts saved, its first shards written
    _wait_for(proc, "writing shards", out)
    proc.kill()
    proc.communicate(timeout=60)
    before = snapshot(out)
    other = big["root"] / "other.tar.gz"
    _big_tar(other, n=N - 1)
    cases = [(["--shard-size", "50"], "shard_size was 100 in the interrupted run, 50 now"),
             (["--jpeg-quality", "90"], "encoding was \"png\""),
             (["--scheme", "le"], "scheme was \"etc\" in the interrupted run, \"le\" now"),
             (["--param", "block_size=16"], "scheme_params was {\"block_size\": 8} in the interrupted run, "
                                            "{\"block_size\": 16} now"),
             (["--source", str(other)], "source's files differ")]
    for extra, expect in cases:
        assert run(big["argv"] + ["--out", str(out), "--resume", *extra]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert line.startswith("lcrypt prepare: error: --resume:") and expect in line, line
        assert snapshot(out) == before
    # a source that changed where its files' names and sizes do not show it: the counts tell
    totals = out / outdir.RUN_STATE / "totals.json"
    body = json.loads(totals.read_text())
    body["read"][0]["read"] += 1
    totals.write_text(json.dumps(body))
    assert run(big["argv"] + ["--out", str(out), "--resume"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"{N + 1} records were counted" in line and "--overwrite" in line, line
    assert not (out / "manifest.json").exists() and (out / outdir.LOCK_NAME).exists()


def test_resume_needs_an_unfinished_run(big, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(big["argv"] + ["--out", str(out), "--resume"]) == 2
    assert "holds no unfinished prepare run" in one_line_error(capsys.readouterr().err)
    assert not out.exists()
