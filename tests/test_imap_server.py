"""
The IMAP server's edges, without sockets: StringTransport in, bytes out,
on the memory store, with task.Clock for time.
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
from twisted_mailhub.store.interfaces import INBOX
from twisted_mailhub.store.memory import MemoryStore

MESSAGE = b"From: bob@localhost\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nhello\r\n"


class ServerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        accounts.add("quote", 'se"c\\ret')
        self.store = MemoryStore()
        self.hub = Hub(self.clock, {"max-message-size": 1000}, accounts, self.store, self.mktemp(), "mail.test")
        self.hub._tls = object()  # never used: no STARTTLS here
        imap.install(self.hub)

    def connect(self, host="127.0.0.1"):
        server = IMAPServer(self.hub, "imap")
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 4321))
        server.makeConnection(transport)
        self.addCleanup(server.connectionLost, None)
        return server, transport

    def talk(self, server, transport, data: bytes) -> bytes:
        transport.clear()
        server.dataReceived(data)
        return transport.value()

    def logged_in(self, select=True):
        server, transport = self.connect()
        self.assertIn(b"a OK", self.talk(server, transport, b"a login alice secret\r\n"))
        if select:
            self.assertIn(b"b OK [READ-WRITE]", self.talk(server, transport, b"b select inbox\r\n"))
        return server, transport

    def test_a_login_that_fails_for_a_fault_of_the_hub_says_so_without_pythons_words(self):
        # An account whose password cannot be UTF-8 (before AccountBook.add
        # refused one, --user alice:p<0xe9> from a Latin-1 shell made it):
        # LOGIN answered "BAD Server error: 'utf-8' codec can't encode
        # character '\udce9' ...".
        from twisted_mailhub.accounts import Account

        self.hub.accounts._accounts["eve@localhost"] = Account("eve", "localhost", password="p\udce9")
        server, transport = self.connect()
        reply = self.talk(server, transport, b"a login eve p\xc3\xa9\r\n")
        self.assertEqual(reply, b"a BAD [SERVERBUG] LOGIN failed; see the server log\r\n")
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1)
        self.assertIn(b"b OK", self.talk(server, transport, b"b login alice secret\r\n"))

    def test_replies_to_what_one_read_brought_leave_in_one_send_without_a_reactor_turn(self):
        # A Twisted TCP connection over a loopback socket, on a reactor
        # never run: what reaches the peer was sent without waiting for a turn.
        import socket

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactor

        with socket.create_server(("127.0.0.1", 0)) as listener:
            peer = socket.create_connection(listener.getsockname(), timeout=5)
            ours, _ = listener.accept()
        self.addCleanup(peer.close)
        ours.setblocking(False)
        sends = []

        class Counting:
            def __getattr__(self, name):
                return getattr(ours, name)

            def send(self, data):
                sends.append(bytes(data))
                return ours.send(data)

        server = IMAPServer(self.hub, "imap")
        conn = tcp.Server(Counting(), server, ("127.0.0.1", 4000), None, 1, MemoryReactor())
        self.addCleanup(ours.close)
        server.makeConnection(conn)
        self.addCleanup(server.connectionLost, None)
        self.assertEqual(len(sends), 1)
        self.assertTrue(sends[0].startswith(b"* OK"))
        server.dataReceived(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc NOOP\r\n")
        self.assertEqual(len(sends), 2)  # three replies, one send(2)
        received = b""
        while b"c OK" not in received:
            received += peer.recv(65536)
        self.assertIn(b"a OK", received)
        self.assertIn(b"b OK [READ-WRITE]", received)
        self.assertFalse(conn._tempDataBuffer or conn.dataBuffer)  # nothing left for the reactor

    def test_literal_plus_needs_no_continuation(self):
        server, transport = self.connect()
        out = self.talk(server, transport, b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n")
        self.assertNotIn(b"+ ", out)
        self.assertIn(b"a OK LOGIN succeeded", out)

    def test_refused_commands_literal_plus_octets_are_skipped_not_run(self):
        # RFC 7888 §4: the octets of {n+} are the command's data even when
        # the command is refused before reading them (wrong state, unknown).
        server, transport = self.connect()
        out = self.talk(server, transport, b"b APPEND INBOX {10+}\r\nx NOOP\r\nab\r\nc FOO {4+}\r\nab\r\n (\\Seen) {8+}\r\ny NOOP\r\n\r\n")
        self.assertEqual(out, b"b BAD APPEND not allowed now: log in first\r\nc BAD unknown command FOO: try CAPABILITY\r\n")
        server, transport = self.logged_in(select=False)
        out = self.talk(server, transport, b"e FETCH 1 {10+}\r\nz NOOP\r\nab\r\nf NOOP\r\n")
        self.assertEqual(out, b"e BAD FETCH not allowed now: select a mailbox first\r\nf OK NOOP completed\r\n")

    def test_quoted_password_with_escapes(self):
        server, transport = self.connect()
        out = self.talk(server, transport, b'a login "quote" "se\\"c\\\\ret"\r\n')
        self.assertIn(b"a OK LOGIN succeeded", out)

    def test_synchronizing_literal_gets_a_continuation(self):
        server, transport = self.connect()
        self.assertTrue(self.talk(server, transport, b"a LOGIN {5}\r\n").startswith(b"+ "))
        self.assertTrue(self.talk(server, transport, b"alice {6}\r\n").startswith(b"+ "))
        self.assertIn(b"a OK", self.talk(server, transport, b"secret\r\n"))

    def test_negative_and_malformed_literal_sizes_are_bad(self):
        server, transport = self.connect()
        for size in (b"-1", b"1e9", b"", b"0x10", b"99999999999999999999999"):
            out = self.talk(server, transport, b"a LOGIN {" + size + b"}\r\n")
            self.assertTrue(out.startswith(b"a BAD malformed literal size") or out.startswith(b"a NO [TOOBIG]"), out)
        self.assertIn(b"a OK", self.talk(server, transport, b"a login alice secret\r\n"))

    def test_a_non_synchronizing_literal_of_a_size_not_taken_closes_without_running_its_octets(self):
        # RFC 7888 §4: the octets of {N+} are on their way; when the hub will
        # not read them (size unreadable, of more than 20 digits, or over the
        # limit) it says BYE and closes: "x NOOP" is literal data, never run.
        huge = b"9" * 25
        cases = [
            (False, b"a LOGIN {" + huge + b"+}\r\n"),
            (False, b"a LOGIN {-1+}\r\n"),
            (False, b"a LOGIN {abc+}\r\n"),
            (False, b"a AUTHENTICATE PLAIN {" + huge + b"+}\r\n"),
            (False, b"a LOGIN {5+}\r\nalice {" + huge + b"+}\r\n"),
            (False, b"c FOO {4+}\r\nab\r\n (x) {" + huge + b"+}\r\n"),
            (False, b"c FOO {4+}\r\nab\r\n (x) {1-+}\r\n"),
            (True, b"a APPEND INBOX {" + huge + b"+}\r\n"),
            (True, b"a APPEND INBOX ~{" + huge + b"+}\r\n"),
            (True, b"a APPEND INBOX (\\Seen) {1001+}\r\n"),
            (True, b"a APPEND INBOX CATENATE (TEXT {" + huge + b"+}\r\n"),
            (True, b"a SEARCH TEXT {3+}\r\nabc TEXT {" + huge + b"+}\r\n"),
            (True, b"a ID (\"name\" {" + huge + b"+}\r\n"),
        ]
        for logged_in, command in cases:
            server, transport = self.logged_in() if logged_in else self.connect()
            out = self.talk(server, transport, command + b"x NOOP\r\n")
            self.assertIn(b"* BYE ", out, command)
            self.assertNotIn(b"x OK", out, command)
            self.assertTrue(transport.disconnecting, command)
            self.assertNotIn(b"99999", out)  # the size is described, not echoed
        server, transport = self.connect()
        out = self.talk(server, transport, b"a LOGIN {" + huge + b"+}\r\n")
        self.assertEqual(out, b"* BYE literal size of more than 20 digits is over the limit of 8192\r\n")

    def test_a_synchronizing_literal_of_more_than_20_digits_is_too_big_and_the_session_goes_on(self):
        server, transport = self.logged_in(select=False)
        for command in (b"a APPEND INBOX {%s}\r\n", b"a APPEND INBOX ~{%s}\r\n", b"a LOGIN {%s}\r\n"):
            out = self.talk(server, transport, command % (b"1" * 30))
            self.assertEqual(out, b"a NO [TOOBIG] literal size of more than 20 digits is over the limit of %d\r\n" % (8192 if b"LOGIN" in command else 1000))
        self.assertIn(b"b OK", self.talk(server, transport, b"b NOOP\r\n"))

    def test_a_literal_size_may_have_leading_zeros(self):
        # RFC 3501 §9: number = 1*DIGIT; 0...05 is five, even past 20 digits.
        server, transport = self.connect()
        out = self.talk(server, transport, b"a LOGIN {%s5+}\r\nalice {06+}\r\nsecret\r\n" % (b"0" * 30))
        self.assertEqual(out, b"a OK LOGIN succeeded\r\n")

    def test_a_malformed_literal_size_is_shown_without_its_control_characters(self):
        server, transport = self.connect()
        out = self.talk(server, transport, b"a LOGIN {1\x1b[2J}\r\n")
        self.assertEqual(out, b"a BAD malformed literal size {1^[[2J}: expected {N} or {N+} with N >= 0\r\n")

    def test_literal_octets_pipelined_behind_a_slow_login_are_not_run_as_commands(self):
        # A failed LOGIN is answered late (login throttle); what came after
        # it waits, literals and all: "ab" and "x NOOP" are APPEND's octets.
        server, transport = self.connect()
        transport.clear()
        server.dataReceived(
            b"a LOGIN alice wrong\r\nb APPEND INBOX {10+}\r\nx NOOP\r\nab\r\nc NOOP\r\n"
            b"d LOGIN alice secret\r\ne APPEND INBOX {10+}\r\ny NOOP\r\nab\r\nf NOOP\r\n"
        )
        self.clock.advance(30)
        out = transport.value()
        self.assertNotIn(b"ab BAD", out)
        self.assertNotIn(b"x OK", out)
        self.assertIn(b"b BAD APPEND not allowed now", out)
        self.assertIn(b"c OK NOOP", out)
        self.assertIn(b"e OK [APPENDUID", out)
        self.assertTrue(out.endswith(b"f OK NOOP completed\r\n"), out)
        out = self.talk(server, transport, b"g SELECT INBOX\r\nh FETCH 1 BODY.PEEK[]\r\n")
        self.assertIn(b"BODY[] {10}\r\ny NOOP\r\nab)", out)

    def test_plaintext_login_needs_tls_from_untrusted_address(self):
        server, transport = self.connect(host="192.0.2.7")
        self.assertIn(b"LOGINDISABLED", transport.value())
        self.assertNotIn(b"AUTH=PLAIN", transport.value())
        out = self.talk(server, transport, b"a login alice secret\r\n")
        self.assertTrue(out.startswith(b"a NO [PRIVACYREQUIRED]"), out)
        out = self.talk(server, transport, b"b authenticate plain\r\n")
        self.assertTrue(out.startswith(b"b NO [PRIVACYREQUIRED]"), out)

    def test_append_limit_is_checked_before_reading(self):
        server, transport = self.logged_in(select=False)
        out = self.talk(server, transport, b"a append INBOX {1001}\r\n")
        self.assertEqual(out, b"a NO [TOOBIG] literal of 1001 octets is over the limit of 1000\r\n")
        out = self.talk(server, transport, b"b append INBOX {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
        self.assertIn(b"b OK [APPENDUID", out)
        self.assertEqual(self.store.account("alice@localhost").folder(INBOX).read(1), MESSAGE)

    def test_idle_ends_only_on_done_and_reports_delivery_at_once(self):
        server, transport = self.logged_in()
        self.assertTrue(self.talk(server, transport, b"c idle\r\n").startswith(b"+ idling"))
        self.assertEqual(self.talk(server, transport, b"c noop\r\n"), b"* BAD expected DONE to end IDLE\r\n")
        transport.clear()
        self.store.deliver("alice@localhost", MESSAGE)
        self.assertEqual(transport.value(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(self.talk(server, transport, b"DONE\r\n"), b"c OK IDLE terminated\r\n")

    def test_envelope_and_bodystructure_fetched_again_are_answered_without_reading_the_message(self):
        server, transport = self.logged_in()
        self.store.deliver("alice@localhost", MESSAGE)
        self.store.deliver("alice@localhost", b"Subject: other\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
        folder = self.store.account("alice@localhost").folder(INBOX)
        reads = []
        real = folder.read
        self.patch(folder, "read", lambda uid: (reads.append(uid), real(uid))[1])
        first = self.talk(server, transport, b"f1 FETCH 1:2 (ENVELOPE BODYSTRUCTURE BODY)\r\n")
        self.assertEqual(reads, [1, 2])
        self.assertIn(b'"=?utf-8?b?R3LDvMOfZQ==?="', first)  # downgraded (RFC 6857)
        self.assertIn(b'"MIXED"', first)
        again = self.talk(server, transport, b"f2 FETCH 1:2 (ENVELOPE BODYSTRUCTURE BODY)\r\n")
        self.assertEqual(reads, [1, 2])  # not read again
        self.assertEqual(again, first.replace(b"* 2 EXISTS\r\n* 2 RECENT\r\n", b"").replace(b"f1 ", b"f2 "))
        # A session that enabled UTF8=ACCEPT sees the header undowngraded: its own entries.
        self.assertIn(b"OK", self.talk(server, transport, b"e ENABLE UTF8=ACCEPT\r\n"))
        utf8 = self.talk(server, transport, b"f3 FETCH 1 (ENVELOPE)\r\n")
        self.assertEqual(reads, [1, 2, 1])
        self.assertNotIn(b"=?utf-8?", utf8)

    def test_a_costly_messages_body_and_envelope_after_its_bodystructure_are_answered_without_reading_or_parsing_it_again(self):
        from twisted.internet import defer

        from twisted_mailhub.imap import fetch

        # (the parsing thread: run when the test says)
        jobs = []

        def in_thread(function, *args):
            d = defer.Deferred()
            jobs.append((d, function, args))
            return d

        def fetched(command: bytes) -> bytes:
            transport.clear()
            server.dataReceived(command)
            while jobs:
                d, function, args = jobs.pop(0)
                d.callback(function(*args))
            return transport.value()

        self.patch(fetch, "in_thread", in_thread)
        server, transport = self.logged_in()
        parts = b"".join(b"--b\r\n\r\npart %d\r\n" % i for i in range(70))  # (over PARSE_OFF_REACTOR_PARTS)
        self.store.deliver("alice@localhost", b"Subject: many\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n")
        folder = self.store.account("alice@localhost").folder(INBOX)
        reads = []
        real = folder.read
        self.patch(folder, "read", lambda uid: (reads.append(uid), real(uid))[1])
        self.assertIn(b'"MIXED"', fetched(b"f1 FETCH 1 (BODYSTRUCTURE)\r\n"))
        self.assertEqual(reads, [1])
        body = fetched(b"f2 FETCH 1 (BODY)\r\n")
        self.assertIn(b'* 1 FETCH (BODY (("TEXT" "PLAIN"', body)
        self.assertEqual(reads, [1])  # (before: read and parsed again for BODY)
        self.assertIn(b'"many"', fetched(b"f3 FETCH 1 (ENVELOPE)\r\n"))
        self.assertEqual(reads, [1])

    def test_envelopes_of_a_big_folder_fetched_again_are_answered_without_reading_a_message(self):
        # FETCH 1:* (ENVELOPE) of a folder bigger than 2,048 messages (the
        # cache's old size) read and parsed every message every time.
        server, transport = self.logged_in()
        for n in range(3000):
            self.store.deliver("alice@localhost", b"From: bob@localhost\r\nSubject: number %d\r\n\r\nhi\r\n" % n)
        first = self.talk(server, transport, b"f1 FETCH 1:* (ENVELOPE)\r\n")
        self.assertEqual(first.count(b" FETCH (ENVELOPE ("), 3000)
        folder = self.store.account("alice@localhost").folder(INBOX)
        reads = []
        real = folder.read
        self.patch(folder, "read", lambda uid: (reads.append(uid), real(uid))[1])
        again = self.talk(server, transport, b"f2 FETCH 1:* (ENVELOPE)\r\n")
        self.assertEqual(reads, [])
        self.assertEqual(again.split(b"\r\n")[-100:], first.replace(b"f1 ", b"f2 ").split(b"\r\n")[-100:])
        self.assertTrue(again.endswith(b'* 3000 FETCH (ENVELOPE (NIL "number 2999" ((NIL NIL "bob" "localhost")) ((NIL NIL "bob" "localhost")) ((NIL NIL "bob" "localhost")) NIL NIL NIL NIL NIL))\r\nf2 OK FETCH completed\r\n'), again[-300:])

    def test_the_structure_cache_is_bounded_in_octets(self):
        from twisted_mailhub.imap import fetch

        self.patch(fetch, "_structures", {})
        self.patch(fetch, "_structure_bytes", [0])
        self.patch(fetch, "STRUCTURE_CACHE_BYTES", 10000)
        self.patch(fetch, "STRUCTURE_ENTRY_COST", 0)
        for n in range(20):
            fetch._remember((n,), b"x" * 1000)
        self.assertEqual(sorted(fetch._structures), [(n,) for n in range(10, 20)])  # the oldest went first
        self.assertEqual(fetch._structure_bytes[0], sum(len(v) for v in fetch._structures.values()))
        fetch._remember(("huge",), b"x" * 5000)  # (over a quarter of it: not kept)
        self.assertNotIn(("huge",), fetch._structures)
        self.assertLessEqual(fetch._structure_bytes[0], 10000)

    def test_search_with_a_literal_string(self):
        server, transport = self.logged_in()
        self.store.deliver("alice@localhost", MESSAGE)
        self.store.deliver("alice@localhost", b"Subject: other\r\n\r\nx\r\n")
        out = self.talk(server, transport, b"s search charset utf-8 subject {6}\r\n")
        self.assertEqual(out, b"* 2 EXISTS\r\n* 2 RECENT\r\n+ Ready for 6 octets of text\r\n")
        out = self.talk(server, transport, "grüß".encode() + b"\r\n")
        self.assertIn(b"* SEARCH 1\r\n", out)
        self.assertIn(b"s OK SEARCH completed", out)

    def test_expunge_by_another_session_waits_until_fetch_is_done(self):
        a, ta = self.logged_in()
        folder = self.store.account("alice@localhost").folder(INBOX)
        for _ in range(3):
            self.store.deliver("alice@localhost", MESSAGE)
        self.talk(a, ta, b"n noop\r\n")
        folder.expunge([1])
        out = self.talk(a, ta, b"f fetch 3 (uid)\r\n")
        self.assertEqual(out, b"* 3 FETCH (UID 3)\r\nf OK FETCH completed\r\n")
        out = self.talk(a, ta, b"g noop\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\ng OK NOOP completed\r\n")
        out = self.talk(a, ta, b"h fetch 1:* (uid)\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 2)\r\n* 2 FETCH (UID 3)\r\nh OK FETCH completed\r\n")

    def test_commands_wait_while_a_fetch_is_streaming(self):
        server, transport = self.logged_in()
        for _ in range(3):
            self.store.deliver("alice@localhost", b"x" * 200_000)
        self.talk(server, transport, b"n noop\r\n")
        # a transport that says "full" after the first write
        writes = []

        def write(data):
            writes.append(data)
            if len(writes) == 1:
                transport.producer.pauseProducing()

        transport.write = write
        server.dataReceived(b"f fetch 1:* (body.peek[])\r\ng noop\r\n")
        self.assertEqual(len(writes), 1)
        self.assertFalse(any(b"g OK" in w for w in writes))
        transport.producer.resumeProducing()
        out = b"".join(writes)
        self.assertEqual(out.count(b" FETCH (BODY[] {200000}"), 3)
        self.assertLess(out.index(b"f OK FETCH completed"), out.index(b"g OK NOOP completed"))

    def test_pipelined_literal_waits_whole_while_a_fetch_streams(self):
        server, transport = self.logged_in()
        self.store.deliver("alice@localhost", b"y" * 300_000)
        self.talk(server, transport, b"n noop\r\n")
        writes = []

        def write(data):
            writes.append(data)
            if len(writes) == 1:
                transport.producer.pauseProducing()

        transport.write = write
        appended = b"Subject: a\r\n\r\nline one\r\nline two\r\n"
        server.dataReceived(b"f fetch 1 (body.peek[])\r\ng append INBOX {%d+}\r\n%s\r\nh noop\r\n" % (len(appended), appended))
        transport.producer.resumeProducing()
        out = b"".join(writes)
        self.assertIn(b"g OK [APPENDUID", out)
        self.assertIn(b"h OK NOOP completed", out)
        self.assertNotIn(b"BAD", out)
        self.assertEqual(self.store.account("alice@localhost").folder(INBOX).read(2), appended)

    def test_wrong_state_and_unknown_commands(self):
        server, transport = self.connect()
        self.assertEqual(self.talk(server, transport, b"a fetch 1 flags\r\n"), b"a BAD FETCH not allowed now: log in first\r\n")
        self.assertEqual(self.talk(server, transport, b"b xyzzy\r\n"), b"b BAD unknown command XYZZY: try CAPABILITY\r\n")
        self.talk(server, transport, b"c login alice secret\r\n")
        self.assertEqual(self.talk(server, transport, b"d login alice secret\r\n"), b"d BAD LOGIN not allowed now: only before login\r\n")
        self.assertEqual(self.talk(server, transport, b"e store 1 +flags (\\Seen)\r\n"), b"e BAD STORE not allowed now: select a mailbox first\r\n")

    def test_examine_is_read_only(self):
        server, transport = self.logged_in(select=False)
        self.store.deliver("alice@localhost", MESSAGE)
        self.assertIn(b"e OK [READ-ONLY]", self.talk(server, transport, b"e examine inbox\r\n"))
        out = self.talk(server, transport, b"f fetch 1 (body[text])\r\n")
        self.assertNotIn(b"\\Seen", out)
        self.assertTrue(self.talk(server, transport, b"g store 1 +flags (\\Deleted)\r\n").startswith(b"g NO [READ-ONLY]"))
