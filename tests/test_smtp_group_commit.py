# -*- test-case-name: tests.test_smtp_group_commit -*-
"""
The batch flush of store/durable.py that SMTP's messages/s rests on: a
batch is written, flushed once (syncfs on Linux, concurrent fsyncs
elsewhere), renamed into place; a failure costs only the writes it touched
and never leaves a file in its final place.
"""

from __future__ import annotations

import os

import pytest

from twisted_mailhub.store import durable
from twisted_mailhub.store.durable import PendingWrite


@pytest.fixture(params=["syncfs", "fsync"])
def flush(request, monkeypatch):
    if request.param == "syncfs":
        if durable._syncfs is None:
            pytest.skip("no syncfs(2) on this system")
    else:
        monkeypatch.setattr(durable, "_syncfs", None)
    return request.param


def maildir(tmp_path):
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    return tmp_path


def writes(root, n):
    return [PendingWrite(str(root / "tmp" / f"m{i}"), str(root / "new" / f"m{i}"), b"message %d\r\n" % i) for i in range(n)]


def test_a_batch_lands_complete_in_its_final_place(tmp_path, flush):
    root = maildir(tmp_path)
    batch = writes(root, 5)
    batch.append(PendingWrite(str(root / "tmp" / "f"), str(root / "new" / "f"), lambda fd: os.write(fd, b"by fd\r\n")))
    assert durable._commit_batch(batch) == [None] * 6
    assert sorted(os.listdir(root / "new")) == ["f", "m0", "m1", "m2", "m3", "m4"]
    assert (root / "new" / "m3").read_bytes() == b"message 3\r\n"
    assert (root / "new" / "f").read_bytes() == b"by fd\r\n"
    assert os.listdir(root / "tmp") == []


def test_one_failed_write_does_not_fail_the_others(tmp_path, flush):
    root = maildir(tmp_path)
    batch = writes(root, 3)
    batch.insert(1, PendingWrite(str(root / "missing" / "x"), str(root / "new" / "x"), b"lost"))
    outcome = durable._commit_batch(batch)
    assert isinstance(outcome[1], FileNotFoundError)
    assert outcome[:1] + outcome[2:] == [None, None, None]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"]


def test_a_failed_flush_fails_the_batch_and_renames_nothing(tmp_path, monkeypatch):
    if durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")

    def broken_sync(path):
        raise OSError(5, "syncfs: Input/output error", path)

    monkeypatch.setattr(durable, "_sync_filesystem", broken_sync)
    root = maildir(tmp_path)
    outcome = durable._commit_batch(writes(root, 4))
    assert all(isinstance(e, OSError) and e.errno == 5 for e in outcome)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


def test_a_lone_write_is_fsynced_not_syncfsed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "_sync_filesystem", calls.append)
    root = maildir(tmp_path)
    assert durable._commit_batch(writes(root, 1)) == [None]
    assert calls == [] and os.listdir(root / "new") == ["m0"]
