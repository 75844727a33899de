"""
A folder creation cut by a full disk (breaker, stop 17) is all or
nothing: no half made folder (directories without a UID list, which
only a write could read) and no empty C{mailhub-uidvalidity.tmp} is
left, and the same CREATE works once there is room.
"""

from __future__ import annotations

import builtins
import errno
import os

import pytest

from twisted_mailhub.store import maildir
from twisted_mailhub.store.interfaces import INBOX
from twisted_mailhub.store.maildir import UIDLIST, UIDVALIDITY_FILE, MaildirStore


def full_disk_at(monkeypatch, base: str) -> list[str]:
    """Make the store's writes of C{base}.tmp fail as a full disk does: the file is made, its write fails."""
    hit: list[str] = []

    def fake_open(path, mode="r", *args, **kwargs):
        name = os.path.basename(str(path))
        # (base.tmp, or base.<pid>.<n>.tmp: a name of its own)
        if "w" in mode and name.startswith(base + ".") and name.endswith(".tmp"):
            builtins.open(path, "w").close()  # (open(2) needs no block: an empty file is left)
            hit.append(str(path))
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(maildir, "open", fake_open, raising=False)
    return hit


@pytest.mark.parametrize("base", [UIDVALIDITY_FILE, UIDLIST])
@pytest.mark.parametrize("name", ["Sent", "Archive/2026/Nov"])
def test_create_cut_by_a_full_disk_leaves_nothing(tmp_path, monkeypatch, base, name):
    store = MaildirStore(str(tmp_path), hostname="test")
    account = store.account("alice@example.org")
    account.folder(INBOX)
    before = sorted(os.listdir(account.path))
    hit = full_disk_at(monkeypatch, base)
    with pytest.raises(Exception) as raised:
        account.create_folder(name)
    assert hit, "the fault was not reached"
    assert "space" in str(raised.value).lower() or "storage" in str(raised.value).lower()
    assert account.folders() == [INBOX]
    assert sorted(os.listdir(account.path)) == before
    # Room again: the same CREATE works, and a fresh store reads it.
    monkeypatch.undo()
    account.create_folder(name)
    assert name in account.folders()
    again = MaildirStore(str(tmp_path), hostname="test").account("alice@example.org")
    assert name in again.folders()
    assert again.folder(name).uid_validity > 0


@pytest.mark.parametrize("base", [maildir.INDEX, maildir.MODSEQ_LOG])
def test_a_cache_or_log_rewrite_cut_by_a_full_disk_leaves_no_tmp(tmp_path, monkeypatch, base):
    # The same kind: mailhub-index (a cache of the list, megabytes for a
    # big folder) and the modseq log's compaction were written to a .tmp
    # that a full disk left behind, keeping the disk full.
    monkeypatch.setattr(maildir, "INDEX_MIN_LINES", 1)
    store = MaildirStore(str(tmp_path), hostname="test")
    inbox = store.account("alice@example.org").folder(INBOX)
    for n in range(3):
        with open(os.path.join(inbox.directory, "new", f"100{n}.M1P1.test"), "wb") as f:
            f.write(b"Subject: hi\r\n\r\nbody\r\n")
    MaildirStore(str(tmp_path), hostname="test").account("alice@example.org").folder(INBOX)  # (numbers them)
    hit = full_disk_at(monkeypatch, base)
    folder = MaildirStore(str(tmp_path), hostname="test").account("alice@example.org").folder(INBOX)
    if base == maildir.MODSEQ_LOG:
        folder._modseq_lines = 10**6  # (a log long enough to be compacted)
        folder._append_modseqs(["1 2\n"], 2)
    assert hit, "the fault was not reached"
    assert [e for e in os.listdir(folder.directory) if e.endswith(".tmp")] == []
    assert len(folder.messages()) == 3
