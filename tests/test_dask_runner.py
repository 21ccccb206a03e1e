"""`prepare --runner dask` on a real dask.distributed cluster (a scheduler and worker processes that share
nothing with the test but files): the same dataset as the DirectRunner, byte for byte, also when a worker
is killed mid-job; and the failures a user meets in one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lcrypt import Key
from lcrypt.sources.imagefolder import ImageFolderSource
from pipelines.prepare import run
from tests.test_datasets import make_imagefolder

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def digests(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d``; manifest.json's ``created`` (the run's time) set aside."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "manifest.json":
                m = json.loads(data)
                assert m.pop("created")
                data = json.dumps(m, sort_keys=True).encode()
            out[p.relative_to(d).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


class SlowFolder(ImageFolderSource):
    """An ImageFolder read in units of 4 files, each unit slowed down and marked with its worker's pid, so
    a test can kill the worker that is reading. Pickled by reference: the workers import this module."""

    def units(self, parts: int = 1) -> list[tuple]:
        files = [f for unit in super().units() for f in unit]
        return [tuple(files[i:i + 4]) for i in range(0, len(files), 4)]

    def read_unit(self, unit):
        if os.getpid() == self.driver:  # the driver samples image sizes: no tricks there
            yield from super().read_unit(unit)
            return
        Path(self.marks, f"{os.getpid()}-{time.monotonic_ns()}").write_text(str(os.getpid()))
        time.sleep(self.delay)
        if self.die:
            os._exit(1)  # the worker process dies, as under the OOM killer
        if self.hide:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", self.hide)
        yield from super().read_unit(unit)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two owners over an ImageFolder tree with two bad files, and the DirectRunner's dataset of it."""
    root = tmp_path_factory.mktemp("dask")
    make_imagefolder(root / "src", per_class=4)
    (root / "src/train/cat/notes.png").write_bytes(b"not an image at all")
    good = (root / "src/train/dog/img_002.png").read_bytes()
    (root / "src/train/dog/cut.png").write_bytes(good[: len(good) // 2])
    for name in ("alice", "bob"):
        Key.generate(name).save(root / f"{name}.key")
    owners = {"alice": {"key": "alice.key", "match": ["*/cat/*", "*/bird/*"]},
              "bob": {"key": "bob.key", "match": ["*"]}}
    (root / "owners.json").write_text(json.dumps(owners))
    argv = ["--source", str(root / "src"), "--scheme", "etc", "--param", "block_size=8",
            "--keys", str(root / "owners.json"), "--shard-size", "5", "--max-reject-rate", "0.2",
            "--name", "pooled", "--owner-overlap", "first", "--quiet", "--chunk", "4"]
    assert run(argv + ["--out", str(root / "direct")]) == 0
    return {"root": root, "argv": argv, "direct": digests(root / "direct")}


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two worker processes (non-daemonic, so they may fork the decoder subprocess)."""
    with dask.config.set({"distributed.worker.daemon": False}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40) as c:
            yield c


def slow_source(monkeypatch, marks: Path, delay: float = 0.0, die: bool = False, hide: str = "") -> None:
    """Make prepare open the source as a SlowFolder (the driver plans with it; the workers unpickle it)."""
    import lcrypt.sources

    real = lcrypt.sources.open_source

    def open_slow(spec, **kw):
        src = real(spec, **kw)
        src.__class__ = SlowFolder
        src.marks, src.delay, src.die, src.hide, src.driver = str(marks), delay, die, hide, os.getpid()
        return src

    marks.mkdir(exist_ok=True)
    monkeypatch.setattr(lcrypt.sources, "open_source", open_slow)


def test_a_two_worker_cluster_writes_the_direct_runners_dataset_byte_for_byte(data, cluster, tmp_path):
    out = tmp_path / "out"
    assert run(data["argv"] + ["--out", str(out), "--runner", "dask",
                               "--dask_client_address", cluster.scheduler_address]) == 0
    got = digests(out)
    assert got == data["direct"]
    assert {"errors.jsonl", "index.parquet", "manifest.json", "_info.json"} <= set(got)
    assert sum(1 for n in got if n.endswith(".tar")) == 6  # 4 groups of up to 9 samples, --shard-size 5
    assert len((out / "errors.jsonl").read_text().splitlines()) == 2  # the bad records, not lost


def test_a_worker_killed_mid_job_still_gives_the_same_dataset(data, cluster, tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    slow_source(monkeypatch, marks, delay=0.3)
    out, result = tmp_path / "out", {}
    job = threading.Thread(target=lambda: result.update(rc=run(
        data["argv"] + ["--out", str(out), "--runner", "dask",
                        "--dask_client_address", cluster.scheduler_address])))
    job.start()
    deadline = time.monotonic() + 60
    while not any(marks.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = int(next(marks.iterdir()).read_text())
    os.kill(victim, signal.SIGKILL)  # mid-read: its unit and whatever it held are done again elsewhere
    job.join(120)
    assert result.get("rc") == 0
    assert digests(out) == data["direct"]
    pids = {int(m.read_text()) for m in marks.iterdir()}
    assert victim in pids and len(pids) >= 2  # another worker process read after the kill


def test_a_worker_that_cannot_read_the_source_names_itself_and_the_path(data, cluster, tmp_path, monkeypatch,
                                                                       capsys):
    slow_source(monkeypatch, tmp_path / "marks", hide="/mnt/not-mounted-here/src/train/cat/img_001.png")
    out = tmp_path / "out"
    assert run(data["argv"] + ["--out", str(out), "--runner", "dask",
                               "--dask_client_address", cluster.scheduler_address]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dask worker tcp://" in err[0] and "cannot read --source" in err[0]
    assert "No such file" in err[0]
    assert not (out / "manifest.json").exists()


def test_an_unreachable_scheduler_fails_in_seconds_in_one_line(data, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert run(data["argv"] + ["--out", str(tmp_path / "out"), "--runner", "dask",
                               "--dask_client_address", f"tcp://127.0.0.1:{port}",
                               "--dask_connection_timeout", "3"]) == 2  # default 10 s
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--dask_client_address tcp://127.0.0.1:{port}" in err[0]
    assert "dask scheduler" in err[0]
    assert not (tmp_path / "out").exists()  # nothing claimed before the cluster answered


def test_a_job_whose_workers_all_die_fails_and_its_local_cluster_is_gone(data, tmp_path, monkeypatch, capsys):
    psutil = pytest.importorskip("psutil")
    slow_source(monkeypatch, tmp_path / "marks", die=True)

    def workers() -> set[int]:  # dask's worker processes (spawned), not multiprocessing's resource tracker
        found = set()
        for p in psutil.Process().children(recursive=True):
            try:
                if "spawn_main" in " ".join(p.cmdline()):
                    found.add(p.pid)
            except psutil.Error:
                pass
        return found

    before = workers()
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        rc = run(data["argv"] + ["--out", str(tmp_path / "out"), "--runner", "dask",
                                 "--direct_num_workers", "2"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dask workers that ran a task of the job all died" in err[0], err
    assert not (tmp_path / "out/manifest.json").exists()
    deadline = time.monotonic() + 10
    while workers() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers() - before  # no worker process left behind
