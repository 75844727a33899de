# -*- test-case-name: tests.test_e2e_slow_fsync -*-
"""
A slow disk does not stall the hub: with every fsync taking 0.6 s (a
sitecustomize.py on the hub's PYTHONPATH wraps os.fsync, os.fdatasync and
syncfs),
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
    # syncfs(2), which the store finds through ctypes (store/durable.py),
    # is as slow on a slow disk: the same delay.
    import ctypes
    _getitem = ctypes.CDLL.__getitem__
    class _SlowSyncfs:
        def __init__(self, real):
            object.__setattr__(self, "real", real)
        def __call__(self, fd):
            time.sleep(_delay)
            return self.real(fd)
        def __setattr__(self, name, value):
            setattr(self.real, name, value)
    def _getitem_slow(self, name):
        found = _getitem(self, name)
        return _SlowSyncfs(found) if name == "syncfs" else found
    ctypes.CDLL.__getitem__ = _getitem_slow
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


def test_files_listed_on_trust_at_a_load_share_one_flush_for_their_crlf_copies(start_hub, tmp_path):
    # Another MDA left 30 bare-LF files; the folder's load makes each CRLF
    # in a thread before the SELECT is answered. Their copies share one
    # flush (store/maildir.py: _to_crlf_many): with every flush 0.2 s,
    # the SELECT waits for a few flushes, not 30 one after another (6 s).
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    delay, count = 0.2, 30
    hub = start_hub(env={"PYTHONPATH": str(faults), "MAILHUB_TEST_FSYNC_DELAY": str(delay)})
    maildir = hub.maildir("alice@localhost")
    hub.stop(remove_data=False)  # (the files are there before the hub starts, as bench/reactor_stall.py puts them)
    bare = b"From: someone@example.org\nSubject: from another MDA\n\n" + b"a line with a bare LF\n" * 50
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    for i in range(count):
        with open(os.path.join(maildir, "cur", f"{1700000000 + i}.M{i}P1Q{i}.mda,S={len(bare)}:2,S"), "wb") as f:
            f.write(bare)
    hub.start()
    alice = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    alice.login("alice", "secret")
    started = time.monotonic()
    typ, data = alice.select("INBOX")
    waited = time.monotonic() - started
    assert (typ, data) == ("OK", [str(count).encode()])
    # (before: 30 fsyncs of the copies one after another, over 6 s)
    assert waited < count * delay / 2, waited
    crlf = bare.replace(b"\n", b"\r\n")
    typ, data = alice.fetch("1:*", "(RFC822.SIZE)")
    assert typ == "OK" and all(f"RFC822.SIZE {len(crlf)}".encode() in line for line in data), data
    typ, data = alice.fetch(str(count), "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == crlf
    alice.logout()
