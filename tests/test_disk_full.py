# -*- test-case-name: tests.test_disk_full -*-
"""
A full disk as each protocol shows it (issue 8 items 14 and 15): SMTP
answers C{452 4.3.1 Insufficient system storage} and keeps no copy of a
message it did not accept; IMAP APPEND/COPY answer C{NO [UNAVAILABLE]} (a
full disk is not the user's quota, C{[OVERQUOTA]}, RFC 9051 §7.1) and
a COPY leaves its destination as it was; one log line, no traceback.
"""

from __future__ import annotations

import errno

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.smtp import component
from twisted_mailhub.smtp.server import MailhubSMTPFactory
from twisted_mailhub.store.interfaces import INBOX, InsufficientStorage
from twisted_mailhub.store.memory import MemoryStore


class RoomForOneCopy(MemoryStore):
    """A memory store whose disk fills up after C{room} messages."""

    def __init__(self, room=1, error=None):
        MemoryStore.__init__(self)
        self.room = room
        self.error = error or InsufficientStorage("Insufficient system storage")

    def deliver(self, address, message):
        if self.room <= 0:
            return defer.fail(self.error)
        self.room -= 1
        return MemoryStore.deliver(self, address, message)


@pytest.fixture
def events():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def make_hub(tmp_path, store):
    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    accounts.add("bob", "hungry")
    h = Hub(task.Clock(), {"max-message-size": 10_000}, accounts, store, str(tmp_path), "mail.test")
    component.install(h)
    return h


def smtp_session(hub, *lines):
    proto = MailhubSMTPFactory(hub, "smtp").buildProtocol(None)
    transport = StringTransport()
    transport.getPeer = lambda: type("Peer", (), {"host": "192.0.2.7", "port": 4000})()
    proto.makeConnection(transport)
    for line in lines:
        proto.dataReceived(line + b"\r\n")
    return [line for line in transport.value().split(b"\r\n") if line]


MAIL = (b"EHLO me", b"MAIL FROM:<judy@jbc.test>", b"RCPT TO:<alice@localhost>", b"RCPT TO:<bob@localhost>", b"DATA", b"Subject: x", b"", b"hello", b".")


def test_disk_full_answers_452_insufficient_system_storage(tmp_path, events):
    hub = make_hub(tmp_path, RoomForOneCopy(room=0))
    replies = smtp_session(hub, *MAIL)
    assert replies[-1] == b"452 4.3.1 Insufficient system storage"
    failures = [e for e in events if e.get("log_failure") is not None]
    assert failures == []
    assert len([e for e in events if "storage" in formatEvent(e).lower()]) == 1


def test_oserror_enospc_from_the_store_is_the_same_452(tmp_path, events):
    hub = make_hub(tmp_path, RoomForOneCopy(room=0, error=OSError(errno.ENOSPC, "No space left on device")))
    assert smtp_session(hub, *MAIL)[-1] == b"452 4.3.1 Insufficient system storage"
    assert [e for e in events if e.get("log_failure") is not None] == []


def test_room_for_one_copy_of_two_keeps_no_copy_with_the_452(tmp_path):
    store = RoomForOneCopy(room=1)
    hub = make_hub(tmp_path, store)
    replies = smtp_session(hub, *MAIL)
    assert replies[-1] == b"452 4.3.1 Insufficient system storage"
    for address in ("alice@localhost", "bob@localhost"):
        assert store.account(address).folder(INBOX).messages() == []
    # The client's retry, once there is room, stores exactly one copy each.
    store.room = 2
    assert smtp_session(hub, *MAIL)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    for address in ("alice@localhost", "bob@localhost"):
        assert len(store.account(address).folder(INBOX).messages()) == 1
