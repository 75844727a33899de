# -*- test-case-name: tests.test_workers_uidvalidity -*-
"""
C{--workers 2}: a folder deleted and made again through one worker is
noticed by a session of the other worker that has it selected (RFC 3501
§2.3.1.1: its UIDs do not stand for the new folder): that session is
ended with BYE, and a new session on that worker sees the new
UIDVALIDITY and only the new folder's UIDs.
"""

from __future__ import annotations

import re

from tests.test_workers import _read_until
from tests.test_workers_recent import Session


def _uidvalidity(reply: str) -> int:
    return int(re.search(r"UIDVALIDITY (\d+)", reply).group(1))


def test_a_folder_made_again_through_one_worker_ends_the_other_workers_session_that_has_it_selected(start_hub):
    hub = start_hub("--workers", "2")
    maker = Session(hub, 0)
    maker.command("CREATE Box")
    maker.command("APPEND Box", b"Subject: old 1\r\n\r\nold\r\n")
    maker.command("APPEND Box", b"Subject: old 2\r\n\r\nold\r\n")
    watcher = Session(hub, 1)
    selected = watcher.command("SELECT Box")
    old = _uidvalidity(selected)
    assert "* 2 EXISTS" in selected
    maker.command("DELETE Box")
    maker.command("CREATE Box")
    made = _uidvalidity(maker.command("STATUS Box (UIDVALIDITY)"))
    assert made > old
    maker.command("APPEND Box", b"Subject: new\r\n\r\nnew\r\n")
    # Its next command: the selected folder is not the one it was.
    watcher.sock.sendall(b"n1 UID FETCH 1:* (UID)\r\n")
    reply = _read_until(watcher.sock, b"\r\n* BYE", 10) + _read_until(watcher.sock, b"\r\n", 5)
    assert b"* BYE [UNAVAILABLE] selected mailbox Box was deleted or renamed; reconnect" in reply, reply
    assert b"FETCH" not in reply, reply  # (before: the new folder's UID 1 under the old UIDVALIDITY)
    assert watcher.sock.recv(100) == b""  # closed
    again = Session(hub, 1)
    selected = again.command("SELECT Box")
    assert _uidvalidity(selected) == made and "* 1 EXISTS" in selected, selected
    assert "* 1 FETCH (UID 1)" in again.command("UID FETCH 1:* (UID)")
    again.close()
    maker.close()
