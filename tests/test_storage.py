"""lcrypt.storage's protocol: the local, fsspec and Beam storages give the same answers for the same
files, and ``file://`` is a local path for the library and the pipeline alike."""

from __future__ import annotations

import uuid

import pytest

from lcrypt.storage import FsspecStorage, LocalStorage, is_remote, join, storage_for


@pytest.fixture(params=["local", "fsspec", "beam"])
def where(request, tmp_path, monkeypatch):
    """``(storage, an empty folder on it)`` for each implementation."""
    if request.param == "local":
        yield LocalStorage(), str(tmp_path / "root")
    elif request.param == "fsspec":
        fsspec = pytest.importorskip("fsspec")
        bucket = f"bucket-{uuid.uuid4().hex[:8]}"
        yield FsspecStorage(), f"memory://{bucket}/root"
        fsspec.filesystem("memory").rm(f"/{bucket}", recursive=True)
    else:
        from pipelines.beamstorage import BeamStorage
        from tests import object_store

        monkeypatch.setenv(object_store.ROOT_ENV, str(tmp_path / "store"))
        (tmp_path / "store").mkdir()
        yield BeamStorage(), "objstore://bucket/root"


def test_every_storage_reads_writes_lists_and_deletes_alike(where):
    store, root = where
    assert not store.exists(root) and store.list_files(root) == []
    store.write_atomic(join(root, "a/b/one.bin"), b"1" * 10)
    store.write_atomic(join(root, "a/two.bin"), b"22", durable=False)
    store.write_atomic(join(root, "top.json"), b"{}")
    store.write_atomic(join(root, "top.json"), b"{ }")  # replaced whole
    assert store.list_files(root) == ["a/b/one.bin", "a/two.bin", "top.json"]  # no temporary files left
    assert store.exists(root) and store.isdir(join(root, "a")) and not store.isdir(join(root, "top.json"))
    assert store.size(join(root, "a/b/one.bin")) == 10 and store.read_bytes(join(root, "top.json")) == b"{ }"
    with store.open(join(root, "a/two.bin")) as f:
        assert f.read() == b"22"
    for missing in ("nothing.bin", "a/b/nothing.bin"):
        with pytest.raises(FileNotFoundError):
            store.read_bytes(join(root, missing))
        with pytest.raises(FileNotFoundError):
            store.size(join(root, missing))
    assert store.list_links(root) == []
    store.delete(root, ["a/b/one.bin"])
    assert store.list_files(root) == ["a/two.bin", "top.json"] and not store.exists(join(root, "a/b"))
    store.delete_folder(join(root, "a"))
    store.delete_folder(join(root, "never-made"))
    assert store.list_files(root) == ["top.json"]


def test_file_urls_are_local_paths_everywhere(tmp_path):
    from lcrypt import Key
    from lcrypt.format import Manifest
    from lcrypt.verify import verify
    from pipelines.beamstorage import pipeline_storage
    from pipelines.prepare import run
    from tests.test_datasets import make_imagefolder

    url = f"file://{tmp_path}"
    assert not is_remote(url) and is_remote("gs://bucket/x") and is_remote("memory://x")
    assert isinstance(storage_for(url), LocalStorage) and isinstance(pipeline_storage(url), LocalStorage)
    make_imagefolder(tmp_path / "src", per_class=1)
    Key.generate("solo").save(tmp_path / "solo.key")
    assert run(["--source", f"{url}/src", "--scheme", "etc", "--param", "block_size=8", "--keys",
                str(tmp_path / "solo.key"), "--out", f"{url}/out", "--quiet"]) == 0
    m = Manifest.load(f"{url}/out")
    assert m == Manifest.load(tmp_path / "out") and m.splits == {"test": 3, "train": 3}
    assert verify(f"{url}/out")[0] == [] and not (tmp_path / "out" / ".lcrypt-prepare.lock").exists()
