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
        if "w" in mode and os.path.basename(str(path)) == base + ".tmp":
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
