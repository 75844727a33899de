# -*- test-case-name: tests.test_store_write_group -*-
"""
The group commit's write groups (L{GroupCommitWriter.write_group}, for
MULTIAPPEND): a group is renamed into place whole or not at all, and is
never split between batches.
"""

from __future__ import annotations

import os

from twisted_mailhub.store import durable
from twisted_mailhub.store.durable import GroupCommitWriter, PendingWrite


def maildir(tmp_path):
    for sub in ("tmp", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_one_failed_write_of_a_group_keeps_the_whole_group_out_of_place(tmp_path):
    root = maildir(tmp_path)
    group = object()
    batch = [
        PendingWrite(str(root / "tmp" / "alone"), str(root / "cur" / "alone"), b"not in the group\r\n"),
        PendingWrite(str(root / "tmp" / "g0"), str(root / "cur" / "g0"), b"first\r\n", group=group),
        PendingWrite(str(root / "missing" / "g1"), str(root / "cur" / "g1"), b"cannot be written", group=group),
        PendingWrite(str(root / "tmp" / "g2"), str(root / "cur" / "g2"), b"third\r\n", group=group),
    ]
    outcome = durable._commit_batch(batch)
    assert outcome[0] is None
    assert all(isinstance(error, FileNotFoundError) for error in outcome[1:]), outcome
    assert os.listdir(root / "cur") == ["alone"] and os.listdir(root / "tmp") == []


def test_a_group_is_never_split_between_batches(tmp_path, monkeypatch):
    batches = []

    class Threads:
        def run(self, function, args, on_result):
            batch, flush = args[:2]
            batches.append([os.path.basename(item.final_path) for item in batch])
            # never done: what queues meanwhile waits

    monkeypatch.setattr(durable, "choose_flush", lambda: "files")  # two batches may be on their way

    class Reactor:
        def callLater(self, delay, function, *args):
            function(*args)  # batches start at once here

    writer = GroupCommitWriter(Reactor(), max_batch=2, in_flight=2, threads=Threads())
    root = str(tmp_path)
    writer.write(root + "/t", root + "/lone", b"x")
    writer.write_group([(root + f"/t{i}", root + f"/g{i}", b"x", None) for i in range(3)])
    # the lone write started a batch at once; the group, larger than
    # max_batch, went whole into the second
    assert batches == [["lone"], ["g0", "g1", "g2"]]
