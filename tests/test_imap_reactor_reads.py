# -*- test-case-name: tests.test_imap_reactor_reads -*-
"""
IMAP FETCH of the structure, envelope or a part of a big Maildir message
(1 MB or more: fetch.STREAM_OVER) reads its file in a parsing thread,
not in the reactor: a 46 MB message's first BODYSTRUCTURE was read whole
in the reactor before its parse went to the thread, and every other
client waited for the read.
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.test_small_files_durable import Journal
from twisted_mailhub import imap
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.imap import fetch, urls
from twisted_mailhub.imap.server import IMAPServer
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import MaildirFolder, MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles

BIG = (
    b"From: a@example.org\r\nSubject: big one\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b"QUJDRA==\r\n" * 150000 + b"--b--\r\n"
)


class ThreadedImapCase(unittest.TestCase):
    """
    An IMAP hub on a Maildir store (fake clocks) whose parsing thread runs
    only when the test says: the work queued for it is in C{self.threads},
    C{self.in_thread} is True while it runs, C{self.ran} counts the runs.
    """

    def make_hub(self, messages: list[bytes]):
        """The hub, with C{messages} in alice's INBOX as another program left them (cur/, seen); returns the folder."""
        self.journal = Journal()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        self.store = MaildirStore(self.mktemp(), GroupCommitWriter(task.Clock()))
        self.store.small_files = SmallFiles(fsync=self.journal.fsync, run=self.journal.run)
        self.hub = Hub(task.Clock(), {"max-message-size": 10_000_000}, accounts, self.store, self.mktemp(), "mail.test")
        self.hub._tls = object()
        imap.install(self.hub)
        folder = self.store.account("alice@localhost").folder("INBOX")
        for n, raw in enumerate(messages):
            with open(os.path.join(folder.directory, "cur", f"{1700000000 + n}.M{n + 1}P1Q1.test,S={len(raw)}:2,S"), "wb") as f:
                f.write(raw)
        folder.unsettled()
        self.journal.run_jobs()
        self.threads: list = []
        self.in_thread = False
        self.ran = 0
        return folder

    def queued(self, function, *args) -> defer.Deferred:
        """A stand-in for C{in_thread}: the call waits in C{self.threads}."""
        d = defer.Deferred()
        self.threads.append((function, args, d))
        return d

    def run_threads(self) -> None:
        self.journal.run_jobs()
        while self.threads:
            function, args, d = self.threads.pop(0)
            self.in_thread = True
            self.ran += 1
            try:
                result = function(*args)
            finally:
                self.in_thread = False
            d.callback(result)

    def talk(self, server, transport, line: bytes, run: bool = True) -> bytes:
        transport.clear()
        server.dataReceived(line)
        while run and (self.threads or self.journal.jobs):
            self.run_threads()
        return transport.value()

    def logged_in(self):
        server = IMAPServer(self.hub, "imap")
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        server.makeConnection(transport)
        self.addCleanup(server.connectionLost, None)
        self.assertIn(b"a OK", self.talk(server, transport, b"a login alice secret\r\n"))
        self.assertIn(b"b OK", self.talk(server, transport, b"b select INBOX\r\n"))
        return server, transport


class FetchReadsTests(ThreadedImapCase):
    def setUp(self):
        self.make_hub([BIG])
        queued = self.queued
        self.patch(fetch, "in_thread", queued)
        self.patch(urls, "in_thread", queued)
        self.reads_in_reactor: list = []
        real_read, real_open = MaildirFolder.read, MaildirFolder.open
        test = self

        def read(folder, uid):
            if not test.in_thread:
                test.reads_in_reactor.append(("read", uid))
            return real_read(folder, uid)

        class Watched:
            def __init__(self, f):
                self.f = f

            def read(self, *args):
                if not test.in_thread and not args:
                    test.reads_in_reactor.append(("open", args))
                return self.f.read(*args)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        self.patch(MaildirFolder, "read", read)
        self.patch(MaildirFolder, "open", lambda folder, uid: Watched(real_open(folder, uid)))

    def test_the_structure_envelope_and_a_part_of_a_big_message_are_read_in_a_parsing_thread(self):
        server, transport = self.logged_in()
        self.assertIn(b'"MIXED"', self.talk(server, transport, b"c FETCH 1 (BODYSTRUCTURE)\r\n"))
        self.assertIn(b"BODY[1] {5}\r\nhello)", self.talk(server, transport, b"d FETCH 1 (BODY.PEEK[1])\r\n"))
        self.assertIn(b'"big one"', self.talk(server, transport, b"e FETCH 1 (ENVELOPE BODY.PEEK[1])\r\n"))
        # (before: each read the whole 1.5 MB file in the reactor)
        self.assertEqual(self.reads_in_reactor, [])

    def test_a_catenate_url_of_a_big_message_is_read_in_a_parsing_thread(self):
        server, transport = self.logged_in()
        reply = self.talk(server, transport, b'f APPEND INBOX CATENATE (URL "/INBOX/;UID=1/;SECTION=1")\r\n')
        self.assertNotIn(b"f NO", reply)
        self.assertNotIn(b"f BAD", reply)
        # (before: the whole message read in the reactor to cut its part out)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(self.ran, 1)
