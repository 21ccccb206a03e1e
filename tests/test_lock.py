"""lcrypt.lock: one holder at a time, named to the one refused; what a dead holder left is reported."""

from __future__ import annotations

import json
import os

import pytest

from lcrypt.lock import FileLock, LockBusy


def test_a_second_holder_is_refused_naming_the_first_and_the_file_goes_with_release(tmp_path):
    path = tmp_path / "x.lock"
    first = FileLock(path)
    assert first.acquire() is None  # no earlier holder
    first.write_holder(command="test")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(LockBusy, match=f"pid {os.getpid()} on host"):
        FileLock(path).acquire()
    first.release()
    assert not path.exists()
    again = FileLock(path)
    assert again.acquire() is None
    again.release()


def test_a_file_left_by_a_dead_holder_is_taken_over_and_its_content_returned(tmp_path):
    path = tmp_path / "x.lock"
    path.write_text('{"pid": 1, "host": "h", "started": "t"}')  # a holder that died (no flock on it)
    lock = FileLock(path)
    assert json.loads(lock.acquire())["pid"] == 1
    lock.release(remove=False)
    assert path.exists()
    path.write_text("")  # killed before it wrote who it was
    assert FileLock(path).acquire() == "{}"

