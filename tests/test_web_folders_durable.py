"""
The webmail moves a message into a folder, or keeps a copy of what it sent
in Sent, only once the folders made so far are on disk (the store's
C{durable()}, Maildir's fsyncs off the reactor): Delete's Trash and the
special-use folders a first visit makes, Sent made by the first message
sent. Before, the message could be moved into a folder whose directory
was not yet fsynced, and taken out of INBOX: a crash then lost it.
In process (the webmail's site over a StringTransport) on the memory
store, whose account is given a C{durable()} the test fires.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_web_failures import MESSAGE, Browser, Faults, make_face, parse
from twisted_mailhub.web import offload


class Pending(Browser):
    """L{Browser}, but a request is answered when the test lets it: C{send}, then C{answer}."""

    def send(self, path: str, fields: dict) -> StringTransport:
        from urllib.parse import quote

        from twisted.internet import address

        body = "&".join(f"{k}={quote(v)}" for k, v in {"csrf": self.session.csrf, **fields}.items()).encode()
        head = [f"POST {path} HTTP/1.0", "Host: 127.0.0.1", f"Cookie: mailhub_session={self.session.sid}", "Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000))
        self.channel = self.site.buildProtocol(transport.getPeer())
        self.channel.makeConnection(transport)
        self.channel.dataReceived(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.hub.reactor.advance(0)
        return transport

    def answer(self, transport: StringTransport):
        self.hub.reactor.advance(0)
        raw = transport.value()
        self.channel.connectionLost(Failure(ConnectionDone()))
        return parse(raw)


class FoldersDurableFirstTests(SynchronousTestCase):
    def setUp(self):
        self.patch(offload, "in_thread", lambda f, *a, **kw: defer.maybeDeferred(f, *a, **kw))
        self.hub, self.real = make_face(Faults())
        self.account = self.real.account("alice@localhost")
        self.account.folder("INBOX").append(MESSAGE, [])
        self.asked: list[defer.Deferred] = []

        def durable():
            d = defer.Deferred()
            self.asked.append(d)
            return d

        self.account.durable = durable
        self.browser = Pending(self.hub)

    def uids(self, name: str) -> list[int]:
        return [i.uid for i in self.account.folder(name).messages()]

    def test_delete_moves_to_a_trash_just_made_only_once_it_is_on_disk(self):
        self.assertNotIn("Trash", self.account.folders())
        sent = self.browser.send("/mail/INBOX/1/action", {"action": "delete"})
        self.assertEqual(sent.value(), b"", "answered before the folders were on disk")
        self.assertEqual(len(self.asked), 1)
        self.assertIn("Trash", self.account.folders())  # (made: the first visit's special-use folders)
        self.assertEqual((self.uids("INBOX"), self.uids("Trash")), ([1], []))  # nothing moved yet
        self.asked[0].callback(None)
        status, headers, _ = self.browser.answer(sent)
        self.assertEqual((status, headers["location"]), (303, "/mail/INBOX"))
        self.assertEqual((self.uids("INBOX"), len(self.uids("Trash"))), ([], 1))

    def test_a_move_whose_folders_could_not_be_made_durable_changes_nothing_and_says_so(self):
        sent = self.browser.send("/mail/INBOX/1/action", {"action": "move", "target": "Archive"})
        self.asked[0].errback(OSError(28, "No space left on device"))
        status, _, body = self.browser.answer(sent)
        self.assertEqual(status, 507)
        self.assertIn(b"nothing was changed", body)
        self.assertEqual((self.uids("INBOX"), self.uids("Archive")), ([1], []))

    def test_the_first_message_sent_is_kept_in_a_sent_just_made_only_once_it_is_on_disk(self):
        self.assertNotIn("Sent", self.account.folders())
        sent = self.browser.send("/compose", {"to": "alice@localhost", "subject": "note to self", "body": "remember"})
        self.assertEqual(sent.value(), b"", "answered before Sent was on disk")
        self.assertIn("Sent", self.account.folders())
        self.assertEqual(self.uids("Sent"), [])  # (no copy before the folder is durable)
        self.assertEqual(len(self.asked), 1)
        self.asked[0].callback(None)
        status, headers, _ = self.browser.answer(sent)
        self.assertEqual((status, headers["location"]), (303, "/mail/INBOX"))
        self.assertEqual(len(self.uids("Sent")), 1)
