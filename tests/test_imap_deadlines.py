"""
IMAP time limits (issue 8 item 26): the login deadline, the command-line
limit (literals excepted while they flow) and the idle limits, with
task.Clock and StringTransport; and the same limits on the real hub, with a
raw socket that trickles bytes.
"""

from __future__ import annotations

import socket
import time

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted_mailhub import imap
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.imap.server import IMAPServer
from twisted_mailhub.store.memory import MemoryStore

from tests.rawclient import LineReader, read_until_closed


class DeadlineTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        options = {"max-message-size": 1000, "imap-login-timeout": 300, "imap-command-timeout": 120, "imap-idle-timeout": 1800}
        self.hub = Hub(self.clock, options, accounts, MemoryStore(), self.mktemp(), "mail.test")
        self.hub._tls = object()
        imap.install(self.hub)

    def connect(self):
        server = IMAPServer(self.hub, "imap")
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        server.makeConnection(transport)
        self.addCleanup(server.connectionLost, None)
        return server, transport

    def test_busy_client_that_never_logs_in_is_closed_at_the_login_deadline(self):
        server, transport = self.connect()
        for _ in range(5):  # a NOOP every 59 s keeps the idle limit at bay
            self.clock.advance(59)
            server.dataReceived(b"n NOOP\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(6)
        self.assertIn(b"* BYE not logged in after 300 seconds", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_logged_in_client_is_not_held_to_the_login_deadline(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        self.assertIn(b"a OK", transport.value())
        self.clock.advance(301)
        self.assertNotIn(b"BYE", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_trickled_command_line_is_cut_off(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        for byte in b"b SELECT INBOX":
            server.dataReceived(bytes([byte]))
            self.clock.advance(10)
        self.assertIn(b"* BYE a command line took over 120 seconds to arrive", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_slow_literal_is_not_cut_by_the_command_line_limit(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        server.dataReceived(b"b APPEND INBOX {14}\r\n")
        # 105 s for the literal (within its 120 s), 140 s for the command:
        # the literal's time does not count against the line's.
        for chunk in (b"Subject: ", b"x\r\n", b"\r\n"):
            self.clock.advance(35)
            server.dataReceived(chunk)
        self.clock.advance(35)
        server.dataReceived(b"\r\n")
        self.assertIn(b"b OK", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_a_literal_trickled_an_octet_at_a_time_is_cut_off_at_its_deadline(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        server.dataReceived(b"b APPEND INBOX {500}\r\n")
        for _ in range(23):  # an octet every 5 s: each resets the idle limit
            self.clock.advance(5)
            server.dataReceived(b"x")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(6)
        self.assertIn(b"* BYE a literal of 500 octets took over 120 seconds to arrive; closing the connection", transport.value())
        self.assertNotIn(b"b OK", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_literal_plus_and_a_skipped_one_have_the_deadline_too(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        server.dataReceived(b"b APPEND NoSuchFolder {300+}\r\nxx")
        self.clock.advance(121)
        self.assertIn(b"* BYE a literal of 300 octets took over 120 seconds", transport.value())
        server2, transport2 = self.connect()
        server2.dataReceived(b"a LOGIN alice secret\r\n")
        server2.dataReceived(b"b FROB {30+}\r\nxx")  # refused, its octets skipped
        self.clock.advance(121)
        self.assertIn(b"* BYE a literal of", transport2.value())
        self.assertTrue(transport2.disconnecting)

    def test_a_big_literal_gets_time_in_proportion_to_its_size(self):
        from twisted_mailhub.imap.deadlines import LITERAL_RATE

        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        self.assertEqual(server.deadlines.literal_deadline(10), 120)
        self.assertEqual(server.deadlines.literal_deadline(int(LITERAL_RATE * 1000)), 1000)
        server.dataReceived(b"b APPEND INBOX {14}\r\n")
        server.dataReceived(b"Subject: x\r\n\r\n\r\n")
        self.assertIn(b"b OK", transport.value())
        self.clock.advance(200)  # no timer of the literal is left behind
        self.assertNotIn(b"BYE", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_logged_in_client_is_logged_out_after_the_idle_limit(self):
        server, transport = self.connect()
        server.dataReceived(b"a LOGIN alice secret\r\n")
        self.clock.advance(1799)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertIn(b"* BYE", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_silent_client_before_login_is_closed_after_a_minute(self):
        server, transport = self.connect()
        self.clock.advance(61)
        self.assertIn(b"* BYE", transport.value())
        self.assertTrue(transport.disconnecting)


# -- the real hub ------------------------------------------------------------------


def test_imap_client_sending_noops_without_logging_in_is_cut_off(start_hub):
    hub = start_hub("--imap-login-timeout", "2", "--imap-command-timeout", "1")
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=20)
    start = time.monotonic()
    s.recv(1024)
    out = b""
    while time.monotonic() - start < 10:
        try:
            s.sendall(b"n NOOP\r\n")
        except OSError:
            break
        s.settimeout(0.3)
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            break
        out += chunk
    s.settimeout(5)
    out += read_until_closed(s, 5)
    assert b"n OK" in out
    assert b"* BYE not logged in after 2 seconds" in out
    assert 1.5 < time.monotonic() - start < 10


def test_imap_client_trickling_a_command_line_is_cut_off(start_hub):
    hub = start_hub("--imap-login-timeout", "30", "--imap-command-timeout", "1")
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=20)
    s.recv(1024)
    for byte in b"a LOGIN alice secret":
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.3)
    out = read_until_closed(s)
    assert b"* BYE a command line took over 1 seconds to arrive" in out
    assert b"a OK" not in out


def test_imap_client_trickling_an_append_literal_is_cut_off(start_hub):
    """A logged-in client sending an APPEND literal's octets one every 0.4 s."""
    hub = start_hub("--imap-command-timeout", "2")
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=20)
    r = LineReader()
    r.sock = s
    r.line()
    s.sendall(b"a LOGIN alice secret\r\n")
    while not r.line().startswith(b"a OK"):
        pass
    s.sendall(b"b APPEND INBOX {200}\r\n")
    assert r.line().startswith(b"+ ")
    start = time.monotonic()
    for _ in range(40):  # 16 s if it were let go on
        try:
            s.sendall(b"x")
        except OSError:
            break
        time.sleep(0.4)
    out = r.buf + read_until_closed(s, 5)
    assert b"* BYE a literal of 200 octets took over 2 seconds to arrive; closing the connection" in out
    assert time.monotonic() - start < 8
    # The server goes on, and nothing was stored.
    import imaplib

    m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    m.login("alice", "secret")
    assert m.select("INBOX")[1] == [b"0"]
    m.logout()
