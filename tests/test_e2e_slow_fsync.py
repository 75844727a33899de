# -*- test-case-name: tests.test_e2e_slow_fsync -*-
"""
A slow disk does not stall the hub: with every fsync taking 0.6 s (a
sitecustomize.py on the hub's PYTHONPATH wraps os.fsync and os.fdatasync),
a message another program drops into a Maildir is found by one IMAP
session's NOOP while another session's NOOP is answered at once: the
flush of its UID (store/maildir.py: _hold_found) runs in a worker thread,
and the message is told (EXISTS) only once it is done.
"""

from __future__ import annotations

import imaplib
import os
import threading
import time

SITECUSTOMIZE = '''
import os, time
_fsync, _fdatasync = os.fsync, os.fdatasync
_delay = float(os.environ.get("MAILHUB_TEST_FSYNC_DELAY", "0"))
def _slow(real):
    def flush(fd):
        time.sleep(_delay)
        return real(fd)
    return flush
if _delay:
    os.fsync, os.fdatasync = _slow(_fsync), _slow(_fdatasync)
'''

DELAY = 0.6


def test_a_slow_flush_of_a_found_message_does_not_hold_other_sessions(start_hub, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    hub = start_hub(env={"PYTHONPATH": str(faults), "MAILHUB_TEST_FSYNC_DELAY": str(DELAY)})
    finder = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    finder.login("alice", "secret")
    finder.select("INBOX")
    other = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    other.login("bob", "hungry")
    other.select("INBOX")
    maildir = hub.maildir("alice@localhost")
    message = b"Subject: dropped in\r\n\r\nby another program\r\n"
    with open(os.path.join(maildir, "new", f"1700000000.M1P1Q1.mda,S={len(message)}"), "wb") as f:
        f.write(message)
    found = threading.Thread(target=finder.noop)
    found.start()
    time.sleep(0.1)  # (its NOOP first: it finds the file and asks for the flush)
    started = time.monotonic()
    other.noop()
    held = time.monotonic() - started
    found.join(30)
    # (before: the found message's two flushes ran in the reactor, and this
    # NOOP of another account waited for them: about 3 s at 1 s a flush)
    assert held < DELAY * 0.6, held
    # Told once its UID is durable (a second or two here): EXISTS.
    deadline = time.monotonic() + 20
    while b"1" not in finder.untagged_responses.get("EXISTS", []) and time.monotonic() < deadline:
        finder.noop()
        time.sleep(0.2)
    assert b"1" in finder.untagged_responses.get("EXISTS", []), finder.untagged_responses
    typ, data = finder.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"dropped in" in data[0][1], data
    finder.logout()
    other.logout()


def test_under_workers_a_slow_flush_of_a_found_message_holds_no_session_and_every_worker_tells_one_uid(start_hub, tmp_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    hub = start_hub("--workers", "2", env={"PYTHONPATH": str(faults), "MAILHUB_TEST_FSYNC_DELAY": str(DELAY)})
    # Several sessions each: the workers share the connections.
    finders, others = [], []
    for sessions, (user, password) in ((finders, ("alice", "secret")), (others, ("bob", "hungry"))):
        for _ in range(4):
            c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            c.login(user, password)
            c.select("INBOX")
            sessions.append(c)
    maildir = hub.maildir("alice@localhost")
    message = b"Subject: dropped in\n\nby another program, with bare LF line ends\n"
    name = f"1700000000.M1P1Q1.mda,S={len(message)}"
    with open(os.path.join(maildir, "cur", name), "wb") as f:
        f.write(message)
    looks = [threading.Thread(target=c.noop) for c in finders]
    for t in looks:
        t.start()
    time.sleep(0.1)  # (their NOOPs first: a worker finds the file and asks for the flushes)
    held = []
    for c in others:
        started = time.monotonic()
        c.noop()
        held.append(time.monotonic() - started)
    for t in looks:
        t.join(30)
    # (before: the finding worker fsynced mailhub-unchecked, its directory
    # and the UID list in its reactor, and bob's sessions on it waited)
    assert max(held) < DELAY * 0.6, held
    crlf = message.replace(b"\n", b"\r\n")
    told = set()
    deadline = time.monotonic() + 30
    for c in finders:
        while b"1" not in c.untagged_responses.get("EXISTS", []) and time.monotonic() < deadline:
            c.noop()
            time.sleep(0.2)
        assert b"1" in c.untagged_responses.get("EXISTS", []), c.untagged_responses
        typ, data = c.fetch("1", "(UID RFC822.SIZE BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == crlf, data
        told.add(data[0][0].split(b" BODY")[0])
    assert len(told) == 1, told  # one UID, one size, on every worker
    with open(os.path.join(maildir, "mailhub-uidlist"), encoding="utf-8") as f:
        assert sum(1 for line in f if name in line) == 1  # numbered once
    for c in finders + others:
        c.logout()
