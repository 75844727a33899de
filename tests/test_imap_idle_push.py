# -*- test-case-name: tests.test_imap_idle_push -*-
"""
IDLE and NOTIFY on a store with no directories to watch (memory here; the
PostgreSQL store in tests/test_e2e_pg_imap_push.py): the store pushes what
its listeners cannot tell (store/watch.StoreSignal), so nothing looks
every half second. StringTransport in, bytes out, task.Clock for time.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted_mailhub import imap
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.imap.server import IMAPServer
from twisted_mailhub.store.memory import MemoryStore


class MemoryPushTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        self.store = MemoryStore()
        self.hub = Hub(self.clock, {}, accounts, self.store, self.mktemp(), "mail.test")
        self.hub._tls = object()  # never used: no STARTTLS here
        imap.install(self.hub)

    def session(self):
        server = IMAPServer(self.hub, "imap")
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        server.makeConnection(transport)
        self.addCleanup(server.connectionLost, None)
        self.assertIn(b"a OK", self.talk(server, transport, b"a login alice secret\r\n"))
        return server, transport

    def soon(self) -> list:
        """The timed calls due within a second (the session deadlines are minutes away)."""
        return [call for call in self.clock.getDelayedCalls() if call.getTime() - self.clock.seconds() <= 1]

    def talk(self, server, transport, data: bytes) -> bytes:
        transport.clear()
        server.dataReceived(data)
        return transport.value()

    def test_idle_on_a_folder_another_session_deletes_says_bye_at_once_with_no_poll(self):
        idler, idle_out = self.session()
        other, other_out = self.session()
        self.talk(other, other_out, b"c create Work\r\n")
        self.assertIn(b"s OK [READ-WRITE]", self.talk(idler, idle_out, b"s select Work\r\n"))
        self.assertTrue(self.talk(idler, idle_out, b"i idle\r\n").startswith(b"+ idling"))
        self.assertEqual(self.soon(), [])  # nothing looks every half second
        idle_out.clear()
        self.assertIn(b"d OK", self.talk(other, other_out, b"d delete Work\r\n"))
        # told without any time passing
        self.assertEqual(idle_out.value(), b"* BYE [UNAVAILABLE] selected mailbox Work was deleted or renamed; reconnect\r\n")
        self.assertTrue(idle_out.disconnecting)

    def test_notify_tells_a_mailbox_made_by_another_session_at_once_with_no_poll(self):
        watcher, watch_out = self.session()
        other, other_out = self.session()
        self.assertIn(b"n OK", self.talk(watcher, watch_out, b"n notify set (personal (MailboxName SubscriptionChange))\r\n"))
        self.assertEqual(self.soon(), [])
        watch_out.clear()
        self.talk(other, other_out, b"c create Plans\r\n")
        self.assertEqual(watch_out.value(), b'* LIST () "/" "Plans"\r\n')
        watch_out.clear()
        self.talk(other, other_out, b"s subscribe Plans\r\n")
        self.assertEqual(watch_out.value(), b'* LIST (\\Subscribed) "/" "Plans"\r\n')
