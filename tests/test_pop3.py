"""
Unit tests for the POP3 component: the state machine and its edges, over
StringTransport with a memory store and a Clock.
"""

import base64
import hashlib
import hmac
import io
import os
import re

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub import pop3
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.store.interfaces import INBOX, SEEN
from twisted_mailhub.store import wireform
from twisted_mailhub.store.maildir import MaildirStore
from twisted_mailhub.store.memory import MemoryStore

TRUSTED = IPv4Address("TCP", "127.0.0.1", 40000)
UNTRUSTED = IPv4Address("TCP", "192.0.2.7", 40000)


class PausingTransport(StringTransport):
    """A transport whose buffer is 'full' after every write."""

    def write(self, data):
        StringTransport.write(self, data)
        if self.producer is not None:
            self.producer.pauseProducing()


class POP3TestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("bob", "hungry")
        accounts.add("alice", "secret")
        self.store = MemoryStore()
        options = {"trusted-networks": "127.0.0.0/8", "pop3-idle-timeout": 600}
        self.hub = Hub(self.clock, options, accounts, self.store, "/nonexistent", "mail.test")
        pop3.install(self.hub)
        self.inbox = self.store.account("bob@localhost").folder(INBOX)

    def put(self, *messages):
        for m in messages:
            self.successResultOf(self.inbox.append(m))

    def connect(self, peer=TRUSTED, transport=None):
        proto = pop3.POP3Factory(self.hub).buildProtocol(peer)
        proto.factory.protocol_name = "pop3"
        proto.callLater = self.clock.callLater
        transport = transport or StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        self.addCleanup(self._drop, proto)
        return proto, transport

    def _drop(self, proto):
        if not proto._closed:
            proto.connectionLost(None)

    def say(self, proto, transport, data):
        transport.clear()
        proto.dataReceived(data)
        return transport.value()

    def login(self, peer=TRUSTED):
        proto, t = self.connect(peer)
        self.assertEqual(self.say(proto, t, b"user bob\r\npass hungry\r\n")[:4], b"+OK ")
        self.assertIs(proto.state, pop3.State.TRANSACTION)
        t.clear()
        return proto, t


class AuthorizationTests(POP3TestCase):
    def test_client_that_never_logs_in_is_cut_off_even_if_it_keeps_talking(self):
        proto, t = self.connect()
        for _ in range(5):
            self.clock.advance(59)
            self.assertEqual(self.say(proto, t, b"noop\r\n"), b"+OK\r\n")
        t.clear()
        self.clock.advance(10)
        self.assertEqual(t.value(), b"-ERR [AUTH] too long without logging in, closing\r\n")
        self.assertTrue(t.disconnecting)

    def test_login_timer_does_not_touch_a_logged_in_session(self):
        proto, t = self.login()
        self.clock.advance(400)
        self.assertFalse(t.disconnecting)

    def test_banner_carries_a_fresh_apop_timestamp_each_connection(self):
        seen = set()
        for _ in range(3):
            _, t = self.connect()
            m = re.match(rb"^\+OK mail\.test POP3 ready (<\d+\.[\d.a-f]+@mail\.test>)\r\n$", t.value())
            self.assertIsNotNone(m, t.value())
            seen.add(m.group(1))
        self.assertEqual(len(seen), 3)

    def test_textbook_lowercase_session(self):
        self.put(b"Subject: one\r\n\r\nhello\r\n")
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"user bob\r\n"), b"+OK now send PASS for bob\r\n")
        self.assertEqual(self.say(proto, t, b"pass hungry\r\n"), b"+OK bob@localhost has 1 message (23 octets)\r\n")
        self.assertEqual(self.say(proto, t, b"list\r\n"), b"+OK 1 message (23 octets)\r\n1 23\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 23 octets\r\nSubject: one\r\n\r\nhello\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"quit\r\n"), b"+OK mail.test POP3 server signing off (0 messages deleted)\r\n")
        self.assertTrue(t.disconnecting)

    def test_bare_lf_lines_and_extra_spaces_work(self):
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"USER   bob\npass hungry\nstat\n"), b"+OK now send PASS for bob\r\n+OK bob@localhost has 0 messages (0 octets)\r\n+OK 0 0\r\n")

    def test_wrong_password_is_an_auth_error_and_login_can_be_retried(self):
        proto, t = self.connect()
        self.say(proto, t, b"user bob\r\npass wrong\r\n")
        self.clock.advance(10)  # the throttle holds the answer back
        self.assertTrue(t.value().endswith(b"-ERR [AUTH] authentication failed\r\n"))
        self.assertIs(proto.state, pop3.State.AUTHORIZATION)
        self.assertEqual(self.say(proto, t, b"user bob\r\npass hungry\r\n")[-40:], b"+OK bob@localhost has 0 messages (0 octets)\r\n"[-40:])

    def test_pipelined_commands_wait_for_a_held_back_login(self):
        proto, t = self.connect()
        out = self.say(proto, t, b"user bob\r\npass wrong\r\nuser bob\r\npass hungry\r\nstat\r\n")
        # The failure is held back by the throttle; nothing after it runs yet.
        self.assertEqual(out, b"+OK now send PASS for bob\r\n")
        self.clock.advance(10)
        self.assertEqual(
            t.value(),
            b"+OK now send PASS for bob\r\n-ERR [AUTH] authentication failed\r\n+OK now send PASS for bob\r\n"
            b"+OK bob@localhost has 0 messages (0 octets)\r\n+OK 0 0\r\n",
        )

    def test_user_pass_refused_from_untrusted_network_without_tls(self):
        proto, t = self.connect(UNTRUSTED)
        out = self.say(proto, t, b"user bob\r\npass hungry\r\n")
        self.assertEqual(out.count(b"-ERR [AUTH] plaintext login needs TLS on this connection: use STLS or APOP\r\n"), 2)
        self.assertIs(proto.state, pop3.State.AUTHORIZATION)
        self.assertNotIn(b"\r\nUSER\r\n", self.say(proto, t, b"capa\r\n"))

    def test_apop_works_from_untrusted_network(self):
        proto, t = self.connect(UNTRUSTED)
        digest = hashlib.md5(proto.magic + b"hungry").hexdigest().encode()
        self.assertEqual(self.say(proto, t, b"apop bob " + digest + b"\r\n"), b"+OK bob@localhost has 0 messages (0 octets)\r\n")

    def test_apop_digest_of_another_connection_fails(self):
        first, _ = self.connect(UNTRUSTED)
        digest = hashlib.md5(first.magic + b"hungry").hexdigest().encode()
        proto, t = self.connect(UNTRUSTED)
        self.say(proto, t, b"APOP bob " + digest + b"\r\n")
        self.clock.advance(10)
        self.assertEqual(t.value(), b"-ERR [AUTH] authentication failed\r\n")

    def test_capa_lists_exactly_what_works(self):
        proto, t = self.connect()
        caps = self.say(proto, t, b"CAPA\r\n").split(b"\r\n")
        self.assertEqual(caps[0][:3], b"+OK")
        self.assertEqual(caps[-2:], [b".", b""])
        names = [c.split()[0] for c in caps[1:-2]]
        self.assertEqual(sorted(names), sorted([b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"USER", b"SASL", b"IMPLEMENTATION", b"UTF8"]))
        self.assertIn(b"SASL PLAIN CRAM-MD5", caps)
        for bogus in (b"CELERITY", b"AUSPEX", b"POTENCE", b"STLS"):
            self.assertNotIn(bogus, names)  # no startTLS on a StringTransport

    def test_commands_before_login_say_what_is_expected(self):
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"stat\r\n"), b"-ERR log in first (USER and PASS, or APOP); STAT comes after login\r\n")
        self.assertEqual(self.say(proto, t, b"pass hungry\r\n"), b"-ERR send USER first, then PASS\r\n")
        self.assertEqual(self.say(proto, t, b"apop bob\r\n"), b"-ERR APOP needs a name and a digest: APOP name md5hex(timestamp+password)\r\n")

    def test_unknown_and_garbage_commands_get_err_and_session_goes_on(self):
        proto, t = self.connect()
        # (not 0xFF 0xFE 0x00: that is a Telnet command, IAC DONT BINARY,
        # taken out of the line as a telnet client's, lines.telnet_text)
        out = self.say(proto, t, b"FROB x\r\n\xfe\x80\x00\r\n\r\nnoop\r\n")
        lines = out.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"-ERR unknown command 'FROB'"))
        self.assertTrue(lines[1].startswith(b"-ERR unknown command"))
        self.assertTrue(lines[2].startswith(b"-ERR empty command"))
        self.assertEqual(lines[3], b"+OK")

    def test_over_long_line_is_refused_and_never_buffered_whole(self):
        proto, t = self.connect()
        t.clear()
        for _ in range(100):
            proto.dataReceived(b"x" * 1000)
            self.assertLessEqual(len(proto.lines._buf), proto.max_line_length)
        # Answered once, as soon as the line is too long (the same rule as
        # SMTP and FTP: the line engine's); the rest of it is dropped.
        self.assertEqual(t.value(), b"-ERR command line too long (at most 1024 octets)\r\n")
        self.assertEqual(self.say(proto, t, b"yyy\r\nnoop\r\n"), b"+OK\r\n")

    def test_idle_client_is_logged_out_without_update(self):
        self.put(b"a\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"dele 1\r\n"), b"+OK message 1 deleted\r\n")
        t.clear()
        self.clock.advance(599)
        self.assertFalse(t.disconnecting)
        self.clock.advance(2)
        self.assertEqual(t.value(), b"-ERR autologout: idle for 600 seconds, closing\r\n")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(len(self.inbox.messages()), 1)

    def test_client_that_stops_reading_is_cut_off_without_a_reply(self):
        self.put(b"x\r\n" * 1000)
        transport = PausingTransport(peerAddress=TRUSTED)
        proto, t = self.connect(transport=transport)
        proto.one_write_limit = 100
        for line in (b"user bob\r\n", b"pass hungry\r\n", b"retr 1\r\n"):
            proto.resumeProducing()
            proto.dataReceived(line)
        self.assertIsNotNone(proto._outgoing)  # stuck mid-message
        t.clear()
        self.clock.advance(601)
        self.assertEqual(t.value(), b"")  # no -ERR inside the message
        self.assertTrue(t.disconnecting)
        self.assertIsNone(proto._outgoing)

    def _stuck_mid_message(self):
        """A session whose RETR of a big message waits for a client that stopped reading: (protocol, transport, what its Deferred gave)."""
        self.put(b"x\r\n" * 1000)
        transport = PausingTransport(peerAddress=TRUSTED)
        proto, t = self.connect(transport=transport)
        proto.one_write_limit = 100
        for line in (b"user bob\r\n", b"pass hungry\r\n", b"retr 1\r\n", b"noop\r\n"):
            proto.resumeProducing()
            proto.dataReceived(line)
        self.assertIsNotNone(proto._outgoing)
        fired = []
        proto._sending.addBoth(fired.append)
        t.clear()
        return proto, t, fired

    def test_a_retr_cut_at_the_idle_limit_fires_its_deferred_and_answers_nothing_more(self):
        proto, t, fired = self._stuck_mid_message()
        self.clock.advance(601)
        # Before: the RETR's Deferred never fired (its waiters waited for ever).
        self.assertEqual(fired, [None])
        self.assertTrue(t.disconnecting)
        self.assertEqual(t.value(), b"")  # (the NOOP behind it is not answered)

    def test_a_retr_whose_client_went_away_fires_its_deferred(self):
        proto, t, fired = self._stuck_mid_message()
        proto.connectionLost(None)
        self.assertEqual(fired, [None])
        self.assertIsNone(proto._outgoing)
        self.assertEqual(t.value(), b"")

    def test_stls_unavailable_without_tls_transport_and_refused_after_login(self):
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"stls\r\n"), b"-ERR STLS is not available here\r\n")
        self.say(proto, t, b"user bob\r\npass hungry\r\n")
        self.assertEqual(self.say(proto, t, b"stls\r\n"), b"-ERR STLS is only allowed before login (RFC 2595)\r\n")
        self.assertEqual(self.say(proto, t, b"user bob\r\n"), b"-ERR already logged in\r\n")


class SASLTests(POP3TestCase):
    def test_auth_plain_with_initial_response(self):
        proto, t = self.connect()
        token = base64.b64encode(b"\0bob\0hungry")
        self.assertEqual(self.say(proto, t, b"auth plain " + token + b"\r\n"), b"+OK bob@localhost has 0 messages (0 octets)\r\n")

    def test_auth_plain_with_continuation_and_pipelined_stat(self):
        proto, t = self.connect()
        out = self.say(proto, t, b"AUTH PLAIN\r\n" + base64.b64encode(b"bob\0bob\0hungry") + b"\r\nSTAT\r\n")
        self.assertEqual(out, b"+ \r\n+OK bob@localhost has 0 messages (0 octets)\r\n+OK 0 0\r\n")

    def test_auth_cancelled_bad_base64_and_foreign_authzid(self):
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"AUTH PLAIN\r\n*\r\n"), b"+ \r\n-ERR authentication cancelled\r\n")
        self.assertEqual(self.say(proto, t, b"AUTH PLAIN !!!\r\n"), b"-ERR SASL response is not valid base64\r\n")
        token = base64.b64encode(b"alice\0bob\0hungry")
        self.assertTrue(self.say(proto, t, b"AUTH PLAIN " + token + b"\r\n").startswith(b"-ERR [AUTH] AUTH PLAIN wants"))
        self.assertTrue(self.say(proto, t, b"AUTH DIGEST-MD5\r\n").startswith(b"-ERR unsupported SASL mechanism 'DIGEST-MD5'"))
        self.assertIs(proto.state, pop3.State.AUTHORIZATION)
        self.assertEqual(self.say(proto, t, b"noop\r\n"), b"+OK\r\n")

    def test_auth_plain_refused_untrusted_but_cram_md5_works(self):
        proto, t = self.connect(UNTRUSTED)
        self.assertIn(b"\r\nSASL CRAM-MD5\r\n", self.say(proto, t, b"capa\r\n"))
        self.assertEqual(self.say(proto, t, b"auth\r\n"), b"+OK SASL mechanisms follow\r\nCRAM-MD5\r\n.\r\n")
        token = base64.b64encode(b"\0bob\0hungry")
        self.assertTrue(self.say(proto, t, b"AUTH PLAIN " + token + b"\r\n").startswith(b"-ERR [AUTH] AUTH PLAIN needs TLS"))
        challenge = base64.b64decode(self.say(proto, t, b"AUTH CRAM-MD5\r\n")[2:])
        digest = hmac.new(b"hungry", challenge, hashlib.md5).hexdigest().encode()
        out = self.say(proto, t, base64.b64encode(b"bob " + digest) + b"\r\n")
        self.assertEqual(out, b"+OK bob@localhost has 0 messages (0 octets)\r\n")

    def test_wrong_cram_md5_digest_fails(self):
        proto, t = self.connect()
        self.say(proto, t, b"AUTH CRAM-MD5\r\n")
        self.say(proto, t, base64.b64encode(b"bob " + b"0" * 32) + b"\r\n")
        self.clock.advance(10)
        self.assertEqual(t.value(), b"-ERR [AUTH] authentication failed\r\n")


class MaildropLockTests(POP3TestCase):
    def test_second_session_gets_in_use_until_the_first_drops(self):
        first, _ = self.login()
        second, t = self.connect()
        out = self.say(second, t, b"user bob\r\npass hungry\r\n")
        self.assertTrue(out.endswith(b"-ERR [IN-USE] maildrop of bob@localhost is in use by another session\r\n"), out)
        self.assertIs(second.state, pop3.State.AUTHORIZATION)
        first.connectionLost(None)
        out = self.say(second, t, b"user bob\r\npass hungry\r\n")
        self.assertEqual(out, b"+OK now send PASS for bob\r\n+OK bob@localhost has 0 messages (0 octets)\r\n")
        self.assertIs(second.state, pop3.State.TRANSACTION)

    def test_lock_released_at_quit(self):
        first, t1 = self.login()
        self.say(first, t1, b"quit\r\n")
        second, _ = self.login()
        self.assertIs(second.state, pop3.State.TRANSACTION)

    def test_login_finishing_after_the_client_left_releases_the_lock(self):
        proto, t = self.connect()
        self.say(proto, t, b"user bob\r\npass wrong\r\n")
        proto.connectionLost(None)
        self.clock.advance(10)
        other, _ = self.login()
        self.assertIs(other.state, pop3.State.TRANSACTION)


class TransactionTests(POP3TestCase):
    def test_dele_marks_rset_unmarks_quit_removes_and_marks_seen(self):
        self.put(b"one\r\n", b"two\r\n", b"three\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"dele 1\r\n"), b"+OK message 1 deleted\r\n")
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"-ERR message 1 already deleted\r\n")
        self.assertEqual(self.say(proto, t, b"stat\r\n"), b"+OK 2 12\r\n")
        self.assertEqual(self.say(proto, t, b"list\r\n"), b"+OK 2 messages (12 octets)\r\n2 5\r\n3 7\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"rset\r\n"), b"+OK maildrop has 3 messages (17 octets)\r\n")
        self.say(proto, t, b"retr 3\r\ndele 2\r\n")
        self.assertEqual(self.say(proto, t, b"quit\r\n"), b"+OK mail.test POP3 server signing off (1 message deleted)\r\n")
        infos = self.inbox.messages()
        self.assertEqual([self.inbox.read(i.uid) for i in infos], [b"one\r\n", b"three\r\n"])
        self.assertEqual([SEEN in i.flags for i in infos], [False, True])

    def quit_while_deletions_are_made_durable(self):
        """Log in to two messages, DELE 1 and QUIT with the store's flush held: (proto, transport, the flush's Deferred)."""
        from twisted.internet import defer

        self.put(b"one\r\n", b"two\r\n")
        flushed = defer.Deferred()
        self.inbox.flush = lambda: flushed
        proto, t = self.login()
        self.say(proto, t, b"dele 1\r\n")
        self.assertEqual(self.say(proto, t, b"quit\r\n"), b"")
        return proto, t, flushed

    def test_quit_answers_only_once_deletions_are_durable(self):
        proto, t, flushed = self.quit_while_deletions_are_made_durable()
        flushed.callback(None)
        self.assertEqual(t.value(), b"+OK mail.test POP3 server signing off (1 message deleted)\r\n")

    def test_commands_after_quit_are_never_answered_even_while_its_deletions_are_made_durable(self):
        proto, t, flushed = self.quit_while_deletions_are_made_durable()
        self.assertEqual(self.say(proto, t, b"retr 2\r\n"), b"")
        self.assertEqual(self.say(proto, t, b"noop\r\nstat\r\n"), b"")
        flushed.callback(None)
        self.assertEqual(t.value(), b"+OK mail.test POP3 server signing off (1 message deleted)\r\n")
        self.assertEqual(self.say(proto, t, b"noop\r\n"), b"")

    def test_dropped_connection_removes_nothing_and_marks_nothing(self):
        self.put(b"one\r\n")
        proto, t = self.login()
        self.say(proto, t, b"retr 1\r\ndele 1\r\n")
        proto.connectionLost(None)
        [info] = self.inbox.messages()
        self.assertNotIn(SEEN, info.flags)

    def test_opening_the_maildrop_reads_no_message(self):
        self.put(b"one\r\n", b"two\r\n")
        reads = []
        real_read = self.inbox.read
        self.inbox.read = lambda uid: reads.append(uid) or real_read(uid)
        proto, t = self.login()
        self.say(proto, t, b"stat\r\nlist\r\nuidl\r\ndele 1\r\nrset\r\n")
        self.assertEqual(reads, [])
        self.assertEqual(self.say(proto, t, b"retr 2\r\n"), b"+OK 5 octets\r\ntwo\r\n.\r\n")
        self.assertEqual(reads, [self.inbox.messages()[1].uid])

    def test_client_that_does_not_read_stops_being_read(self):
        self.put(b"x" * 100 + b"\r\n")
        transport = PausingTransport(peerAddress=TRUSTED)
        proto, t = self.connect(transport=transport)
        for line in (b"user bob\r\n", b"pass hungry\r\n"):
            proto.resumeProducing()  # the client read the last reply
            proto.dataReceived(line)
        proto.resumeProducing()
        self.assertIs(proto.state, pop3.State.TRANSACTION)
        t.clear()
        proto.dataReceived(b"retr 1\r\n" * 2000)
        # The replies to the first commands went out together (at most
        # 64 KB of them); the transport is full, so the rest wait, and the
        # server stopped reading from the client.
        self.assertLess(t.value().count(b"+OK 102 octets"), 2000)
        self.assertLessEqual(len(t.value()), 64 * 1024 + 120)
        self.assertEqual(t.producerState, "paused")
        for _ in range(2000):
            proto.resumeProducing()
        self.assertEqual(t.value().count(b"+OK 102 octets"), 2000)
        self.assertEqual(t.producerState, "producing")

    def test_tab_separates_arguments_and_password_keeps_its_spaces(self):
        self.hub.accounts.add("carol", "two words ")
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"user\tcarol\r\npass two words \r\n"), b"+OK now send PASS for carol\r\n+OK carol@localhost has 0 messages (0 octets)\r\n")

    def test_pass_without_the_password_says_so_and_keeps_user(self):
        # Before: "-ERR [AUTH] authentication failed", a login attempt
        # with an empty password (which no account has).
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"USER alice\r\nPASS\r\n"), b"+OK now send PASS for alice\r\n-ERR PASS needs the password, e.g. PASS secret\r\n")
        self.assertTrue(self.say(proto, t, b"PASS secret\r\n").startswith(b"+OK alice@localhost has"))

    def test_bad_message_numbers(self):
        self.put(b"one\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr\r\n"), b"-ERR RETR needs one message number, e.g. RETR 1\r\n")
        self.assertEqual(self.say(proto, t, b"retr 2\r\n"), b"-ERR no message 2 (the maildrop has 1 message)\r\n")
        self.assertEqual(self.say(proto, t, b"dele x\r\n"), b"-ERR no message x (the maildrop has 1 message)\r\n")
        self.assertEqual(self.say(proto, t, b"list 0\r\n"), b"-ERR no message 0 (the maildrop has 1 message)\r\n")
        self.assertEqual(self.say(proto, t, b"top 1\r\n"), b"-ERR TOP needs a message number and a line count, e.g. TOP 1 10\r\n")
        self.assertEqual(self.say(proto, t, b"top 1 -1\r\n"), b"-ERR TOP needs a line count of 0 or more, e.g. TOP 1 10\r\n")
        self.assertEqual(self.say(proto, t, b"list 1\r\n"), b"+OK 1 5\r\n")

    def test_retr_byte_stuffs_and_adds_missing_line_end_in_one_write(self):
        message = b".starts with dot\r\nmid\r\n..two dots\r\n.\r\nlast line no crlf"
        self.put(message)
        proto, t = self.login()
        writes = []
        t.write = lambda data: writes.append(data)
        proto.dataReceived(b"retr 1\r\n")
        self.assertEqual(len(writes), 1)
        self.assertEqual(
            writes[0],
            b"+OK %d octets\r\n..starts with dot\r\nmid\r\n...two dots\r\n..\r\nlast line no crlf\r\n.\r\n" % len(message),
        )

    def test_message_with_bare_lf_goes_out_with_crlf(self):
        self.put(b"Subject: x\n\n.a\nb\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n").split(b"\r\n", 1)[1], b"Subject: x\r\n\r\n..a\r\nb\r\n.\r\n")

    def test_top_sends_headers_blank_line_and_n_lines(self):
        self.put(b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"top 1 2\r\n"), b"+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"top 1 0\r\n"), b"+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"top 1 99\r\n"), b"+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n")

    def test_uidl_is_the_store_key(self):
        self.put(b"one\r\n", b"two\r\n")
        keys = [i.key for i in self.inbox.messages()]
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"uidl\r\n"), b"+OK unique-id listing follows\r\n1 %s\r\n2 %s\r\n.\r\n" % (keys[0].encode(), keys[1].encode()))
        self.assertEqual(self.say(proto, t, b"uidl 2\r\n"), b"+OK 2 %s\r\n" % keys[1].encode())

    def test_unusable_key_gets_a_stable_digest_uidl(self):
        self.assertEqual(pop3.uidl_of("abc"), "abc")
        odd = "name with spaces"
        self.assertEqual(pop3.uidl_of(odd), pop3.uidl_of(odd))
        self.assertRegex(pop3.uidl_of(odd), r"^h[0-9a-f]{40}$")
        self.assertRegex(pop3.uidl_of("x" * 71), r"^h[0-9a-f]{40}$")

    def test_large_message_is_sent_as_the_client_reads(self):
        body = b"".join(b".line %d\r\n" % i for i in range(5000))
        self.put(body)
        transport = PausingTransport(peerAddress=TRUSTED)
        proto, t = self.connect(transport=transport)
        proto.one_write_limit = 1000
        proto.dataReceived(b"user bob\r\n")
        proto.resumeProducing()
        proto.dataReceived(b"pass hungry\r\n")
        proto.resumeProducing()
        t.clear()
        proto.dataReceived(b"retr 1\r\nnoop\r\n")
        rounds = 0
        while proto._paused and rounds < 1000:
            rounds += 1
            proto.resumeProducing()
        self.assertGreater(rounds, 2)  # it really went out in pieces
        self.assertEqual(t.value(), b"+OK %d octets\r\n" % len(body) + pop3.stuff(body) + b".\r\n+OK\r\n")


class MaildirRetrTests(POP3TestCase):
    """RETR from a Maildir: the message file read directly, whatever another program does to it."""

    def setUp(self):
        POP3TestCase.setUp(self)
        import tempfile

        from twisted_mailhub.store.maildir import MaildirStore

        root = self.root = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, root, True)
        self.store = MaildirStore(root)
        self.hub.store = self.store
        pop3.install(self.hub)
        self.maildir = self.store.account_path("bob@localhost")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)

    def drop_in(self, name, data):
        with open(os.path.join(self.maildir, "new", name), "wb") as f:
            f.write(data)

    def test_retr_reads_the_file_as_it_is_when_another_program_renamed_or_removed_it(self):
        self.drop_in("1700000000.M1P1.host,S=20", b"Subject: a\r\n\r\n.one\r\n")
        self.drop_in("1700000001.M1P1.host,S=20", b"Subject: b\r\n\r\ntwo!\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 20 octets\r\nSubject: a\r\n\r\n..one\r\n.\r\n")
        # Another program marks it seen (new/ -> cur/ with :2,S): still there.
        os.rename(
            os.path.join(self.maildir, "new", "1700000000.M1P1.host,S=20"),
            os.path.join(self.maildir, "cur", "1700000000.M1P1.host,S=20:2,S"),
        )
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 20 octets\r\nSubject: a\r\n\r\n..one\r\n.\r\n")
        os.unlink(os.path.join(self.maildir, "new", "1700000001.M1P1.host,S=20"))
        self.assertEqual(self.say(proto, t, b"retr 2\r\n"), b"-ERR [SYS/TEMP] message 2 was removed by another session\r\n")
        self.assertEqual(self.say(proto, t, b"stat\r\n"), b"+OK 2 40\r\n")


    def test_retr_sends_the_whole_file_when_another_program_made_it_longer_than_the_index_says(self):
        self.drop_in("1700000000.M1P1.host,S=5", b"one\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 5 octets\r\none\r\n.\r\n")
        tail = b"x" * (3 << 20) + b"\r\n"  # more than one read's worth
        with open(os.path.join(self.maildir, "new", "1700000000.M1P1.host,S=5"), "ab") as f:
            f.write(tail)
        answer = self.say(proto, t, b"retr 1\r\n")
        self.assertTrue(answer.endswith(b"\r\none\r\n" + tail + b".\r\n"), answer[:40])

    def test_message_after_message_the_files_are_found_a_batch_at_a_time(self):
        for n in range(20):
            self.drop_in("17000000%02d.M1P1.host,S=5" % n, b"m%02d\r\n" % n)
        inbox = self.store.account("bob@localhost").folder(INBOX)
        asked = []
        real = inbox.paths
        inbox.paths = lambda uids: asked.append(len(uids)) or real(uids)
        proto, t = self.login()
        for n in range(1, 21):
            self.assertEqual(self.say(proto, t, b"retr %d\r\n" % n), b"+OK 5 octets\r\nm%02d\r\n.\r\n" % (n - 1))
        # 4 first, then twice as many each time the client goes on.
        self.assertEqual(asked, [4, 8, 8])
        # Found before: not asked again; a jump asks for 4 again.
        self.say(proto, t, b"retr 3\r\n")
        self.assertEqual(asked, [4, 8, 8])
        proto2, t2 = proto, t
        self.say(proto2, t2, b"quit\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 10\r\n"), b"+OK 5 octets\r\nm09\r\n.\r\n")
        self.assertEqual(asked, [4, 8, 8, 4])

    def test_a_session_on_a_maildir_never_asks_for_the_list_of_message_objects(self):
        self.drop_in("1700000000.M1P1.host,S=5", b"one\r\n")
        self.drop_in("1700000001.M1P1.host,S=5", b"two\r\n")
        inbox = self.store.account("bob@localhost").folder(INBOX)
        asked = []
        real = inbox.messages
        inbox.messages = lambda: asked.append(1) or real()
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"stat\r\nlist 2\r\nretr 2\r\n"), b"+OK 2 10\r\n+OK 2 5\r\n+OK 5 octets\r\ntwo\r\n.\r\n")
        self.assertEqual(
            self.say(proto, t, b"uidl\r\n"),
            b"+OK unique-id listing follows\r\n1 1700000000.M1P1.host,S=5\r\n2 1700000001.M1P1.host,S=5\r\n.\r\n",
        )
        self.assertEqual(asked, [])


    def test_a_message_stored_in_wire_form_is_sent_as_it_is_and_never_scanned_again(self):
        message = b"Subject: a\r\n\r\nbody. no dot starts a line\r\n"
        name = "1700000000.M1P1.host,S=%d" % len(message)
        self.drop_in(name, message)
        scans = []
        real = wireform.wire_lines
        self.patch(wireform, "wire_lines", lambda data: scans.append(data) or real(data))
        expected = b"+OK %d octets\r\n" % len(message) + message + b".\r\n"
        for _ in range(2):
            proto, t = self.login()
            self.assertEqual(self.say(proto, t, b"retr 1\r\nretr 1\r\n"), expected * 2)
            self.assertEqual(self.say(proto, t, b"quit\r\n")[:4], b"+OK ")
            # The next session is another process, with the facts on disk.
            self.store = self.hub.store = MaildirStore(self.root)
        self.assertEqual(scans, [message])
        self.assertTrue(os.path.exists(os.path.join(self.maildir, wireform.FILE)))

    def test_top_of_a_message_stored_in_wire_form_is_its_first_lines_as_stored(self):
        message = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2 .x\r\nl3\r\n"
        self.drop_in("1700000000.M1P1.host,S=%d" % len(message), message)
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"top 1 2\r\n"), b"+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\nl1\r\nl2 .x\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"top 1 0\r\n"), b"+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\n.\r\n")
        self.assertEqual(self.say(proto, t, b"top 1 99\r\n"), b"+OK top of message follows\r\n" + message + b".\r\n")
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK %d octets\r\n" % len(message) + message + b".\r\n")

    def test_a_session_leaves_no_descriptor_open_after_quit_or_a_dropped_connection(self):
        self.drop_in("1700000000.M1P1.host,S=5", b"one\r\n")
        before = sorted(os.listdir("/proc/self/fd"))
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\nquit\r\n"), b"+OK 5 octets\r\none\r\n.\r\n+OK mail.test POP3 server signing off (0 messages deleted)\r\n")
        self.assertEqual(sorted(os.listdir("/proc/self/fd")), before)
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 5 octets\r\none\r\n.\r\n")
        proto.connectionLost(None)
        self.assertEqual(sorted(os.listdir("/proc/self/fd")), before)

    def test_a_message_that_needs_stuffing_is_stuffed_every_time(self):
        self.drop_in("1700000000.M1P1.host,S=23", b"Subject: a\r\n\r\n.one\r\n.\r\n")
        expected = b"+OK 23 octets\r\nSubject: a\r\n\r\n..one\r\n..\r\n.\r\n"
        for _ in range(2):
            proto, t = self.login()
            self.assertEqual(self.say(proto, t, b"retr 1\r\nretr 1\r\n"), expected * 2)
            self.assertEqual(self.say(proto, t, b"quit\r\n")[:4], b"+OK ")
            self.store = self.hub.store = MaildirStore(self.root)

    def test_a_message_rewritten_by_hand_to_another_length_is_checked_again(self):
        name = "1700000000.M1P1.host,S=19"
        self.drop_in(name, b"Subject: a\r\n\r\none\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 19 octets\r\nSubject: a\r\n\r\none\r\n.\r\n")
        self.say(proto, t, b"quit\r\n")
        # QUIT marked it seen: it is in cur/ now.
        with open(os.path.join(self.maildir, "cur", name + ":2,S"), "wb") as f:
            f.write(b"Subject: a\r\n\r\n.one\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK 20 octets\r\nSubject: a\r\n\r\n..one\r\n.\r\n")


    def test_a_file_with_bare_lf_under_an_lf_size_is_listed_and_sent_at_its_size_on_the_wire(self):
        # Another program's file (Courier maildrop: S= counts LF ends).
        message = b"Subject: a\n\nline one\n.dot\n"
        self.drop_in("1700000000.M1P1.host,S=%d" % len(message), message)
        wire = b"Subject: a\r\n\r\nline one\r\n.dot\r\n"
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"list\r\nstat\r\n"), b"+OK 1 message (%d octets)\r\n1 %d\r\n.\r\n+OK 1 %d\r\n" % ((len(wire),) * 3))
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK %d octets\r\n" % len(wire) + wire.replace(b"\n.", b"\n..") + b".\r\n")

    def test_a_bare_cr_is_sent_as_a_line_end_and_counted_so(self):
        message = b"Subject: a\r\n\r\nold\rmac\r\n.x\rend\r\n"
        self.drop_in("1700000000.M1P1.host,S=%d" % len(message), message)
        wire = b"Subject: a\r\n\r\nold\r\nmac\r\n.x\r\nend\r\n"
        for _ in range(2):  # learning it, then from the facts
            proto, t = self.login()
            self.assertEqual(self.say(proto, t, b"list 1\r\n"), b"+OK 1 %d\r\n" % len(wire))
            sent = self.say(proto, t, b"retr 1\r\n")
            self.assertEqual(sent, b"+OK %d octets\r\n" % len(wire) + wire.replace(b"\n.", b"\n..") + b".\r\n")
            self.assertEqual(sent.count(b"\r"), sent.count(b"\r\n"))
            self.assertEqual(self.say(proto, t, b"top 1 1\r\n"), b"+OK top of message follows\r\nSubject: a\r\n\r\nold\r\n.\r\n")
            self.say(proto, t, b"quit\r\n")
            self.store = self.hub.store = MaildirStore(self.root)


    def test_a_dropped_in_file_with_bare_cr_is_made_crlf_on_disk_when_first_found(self):
        name = "1700000000.M1P1.host,S=19"
        self.drop_in(name, b"Subject: a\r\n\r\nx\ry\r\n")
        proto, t = self.login()
        self.assertEqual(self.say(proto, t, b"list 1\r\n"), b"+OK 1 20\r\n")
        with open(os.path.join(self.maildir, "new", name), "rb") as f:
            self.assertEqual(f.read(), b"Subject: a\r\n\r\nx\r\ny\r\n")


class StuffingTests(SynchronousTestCase):
    def test_chunked_stuffing_equals_whole(self):
        message = b".a\r\n\r\n.b\r\nc\rd\r\n" * 50 + b"bare\nlf\n.x\n" + b"end"
        for size in (1, 2, 3, 5, 7, 64):
            out = pop3._Outgoing(io.BytesIO(message))
            out.chunk_size = size
            pieces = []
            while True:
                chunk = out.next_chunk()
                if chunk is None:
                    break
                pieces.append(chunk)
            whole = pop3.stuff(message)
            self.assertEqual(b"".join(pieces), whole + pop3.terminator(whole[-1:]), size)

    def test_terminator(self):
        self.assertEqual(pop3.terminator(b"\n"), b".\r\n")
        self.assertEqual(pop3.terminator(b""), b".\r\n")
        self.assertEqual(pop3.terminator(b"x"), b"\r\n.\r\n")


class InstallTests(POP3TestCase):
    def test_maildrop_provides_twisted_imailbox(self):
        from twisted.mail.pop3 import IMailbox
        from zope.interface.verify import verifyObject

        self.put(b"one\r\n")
        drop = pop3.Maildrop(self.inbox, "bob@localhost")
        self.assertTrue(verifyObject(IMailbox, drop))
        self.assertEqual(drop.listMessages(), [5])
        self.assertEqual(drop.getMessage(0).read(), b"one\r\n")
        self.assertRaises(ValueError, drop.getUidl, 1)

    def test_no_pop3s_leaves_only_the_pop3_listener(self):
        options = {"trusted-networks": "127.0.0.0/8", "pop3": "tcp:0", "pop3s": "tcp:0", "no-pop3s": True}
        hub = Hub(self.clock, options, self.hub.accounts, self.store, "/nonexistent", "mail.test")
        pop3.install(hub)
        self.assertEqual([(name, tls) for name, _, _, tls in hub._listeners], [("pop3", "")])

    def test_capa_names_the_implementation_and_version(self):
        from twisted_mailhub import __version__

        proto, t = self.connect()
        self.assertIn(b"\r\nIMPLEMENTATION twisted-mailhub " + __version__.encode() + b"\r\n", self.say(proto, t, b"capa\r\n"))


class OptionsTests(SynchronousTestCase):
    def test_idle_timeout_option(self):
        from twisted.python import usage

        from twisted_mailhub import tap

        options = tap.Options()
        options.parseOptions(["--pop3-idle-timeout", "30"])
        self.assertEqual(options["pop3-idle-timeout"], 30)
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--pop3-idle-timeout", "0"])


class UTF8Tests(POP3TestCase):
    """RFC 6856: the UTF8 command, UTF-8 user names, and headers as stored or downgraded."""

    MESSAGE = "From: Jöran <jöran@localhost>\r\nSubject: Grüße aus Köln\r\nX-Plain: ascii\r\n\r\nHallo, grüß dich\r\n".encode("utf-8")

    def test_capa_offers_utf8_with_user_names(self):
        proto, t = self.connect()
        self.assertIn(b"\r\nUTF8 USER\r\n", self.say(proto, t, b"capa\r\n"))

    def test_a_client_that_sent_utf8_gets_headers_as_stored(self):
        self.put(self.MESSAGE)
        proto, t = self.connect()
        self.assertEqual(self.say(proto, t, b"utf8\r\n"), b"+OK UTF8 enabled: messages are sent with their UTF-8 headers as stored\r\n")
        self.say(proto, t, b"user bob\r\npass hungry\r\n")
        self.assertEqual(self.say(proto, t, b"retr 1\r\n"), b"+OK %d octets\r\n" % len(self.MESSAGE) + self.MESSAGE + b".\r\n")

    def test_a_client_that_did_not_gets_encoded_words_and_never_raw_8bit_in_headers(self):
        self.put(self.MESSAGE)
        proto, t = self.login()
        out = self.say(proto, t, b"retr 1\r\n")
        header, _, body = out.partition(b"\r\n\r\n")
        self.assertTrue(header.isascii(), header)
        self.assertIn(b"X-Plain: ascii", header)
        import email.header

        subject = re.search(rb"Subject: (.*(?:\r\n .*)*)", header).group(1).decode()
        self.assertEqual(str(email.header.make_header(email.header.decode_header(subject))), "Grüße aus Köln")
        self.assertEqual(body, "Hallo, grüß dich\r\n".encode() + b".\r\n")  # the body as it is
        top = self.say(proto, t, b"top 1 0\r\n")
        self.assertTrue(top.isascii(), top)

    def test_utf8_is_only_allowed_before_login(self):
        proto, t = self.login()
        self.assertTrue(self.say(proto, t, b"utf8\r\n").startswith(b"-ERR"))

    def test_a_utf8_user_name_logs_in(self):
        self.hub.accounts.add("jöran", "geheim")
        proto, t = self.connect()
        self.say(proto, t, b"utf8\r\n")
        self.assertEqual(self.say(proto, t, "user jöran\r\n".encode()), "+OK now send PASS for jöran\r\n".encode())
        self.assertEqual(self.say(proto, t, b"pass geheim\r\n"), "+OK jöran@localhost has 0 messages (0 octets)\r\n".encode())


class _GoneAfterFirstSlice:
    """
    A store's detached reader (as PostgreSQL's BlobReader) of one big
    message whose first slice reads and whose next ones find it gone
    (expunged by another session meanwhile), or fail as C{fault} says.
    """

    def __init__(self, data: bytes, fault: BaseException):
        self.data, self.fault = data, fault
        self.slices = 0

    def present(self, n):
        return True

    def size(self, n):
        return len(self.data)

    def held(self, n):
        return None

    def raw(self, n, size=0):
        return self.data

    def slice(self, n, at, length):
        self.slices += 1
        if self.slices > 1:
            raise self.fault
        return self.data[at : at + length]


class DetachedRetrCutShortTests(POP3TestCase):
    """A big RETR read slice by slice in a thread (offload.DetachedBodies) that cannot go on: the log line says why."""

    def _retr_cut_short(self, fault: BaseException) -> tuple[bytes, StringTransport, list]:
        from twisted.internet import defer
        from twisted.logger import capturedLogs

        from twisted_mailhub.offload import DetachedBodies

        big = b"Subject: big\r\n\r\n" + b"x" * 70 * 4000 + b"\r\n"
        self.put(big)
        proto, t = self.login()
        reader = _GoneAfterFirstSlice(big, fault)
        holder = type("Folder", (), {"detached_reader": lambda self, uids: reader})()
        proto.mbox.detached = DetachedBodies(holder, proto.mbox.uids, run=lambda f, *a: defer.maybeDeferred(f, *a))
        proto.one_write_limit = 1024  # (sent in slices as the client takes them)
        with capturedLogs() as events:
            out = self.say(proto, t, b"retr 1\r\n")
        return out, t, [e.get("log_format", "") for e in events]

    def test_a_message_removed_while_it_is_sent_is_logged_as_removed_not_as_an_outage(self):
        from twisted_mailhub.store.interfaces import NoSuchMessage

        out, t, lines = self._retr_cut_short(NoSuchMessage(1))
        self.assertTrue(out.startswith(b"+OK %d octets\r\n" % (16 + 70 * 4000 + 2)), out[:40])
        self.assertFalse(out.endswith(b"\r\n.\r\n"))  # (no terminator: the client knows it was cut)
        self.assertTrue(t.disconnecting)
        # Before: "... refused with a temporary error: the store cannot be
        # reached (the message could not be read)", with the database well.
        self.assertFalse([line for line in lines if "cannot be reached" in line], lines)
        self.assertTrue([line for line in lines if "removed by another session" in line], lines)

    def test_a_fault_of_ours_while_a_message_is_sent_is_logged_with_its_cause(self):
        out, t, lines = self._retr_cut_short(RuntimeError("a fault of ours"))
        self.assertTrue(t.disconnecting)
        self.assertFalse([line for line in lines if "cannot be reached" in line], lines)
        self.assertTrue([line for line in lines if "could not be read" in line], lines)
        self.flushLoggedErrors(RuntimeError)


class _BlobsInMemory:
    """What PostgreSQL's BlobReader reads through (store.readers.run, store.blobs), from a dict: id -> bytes."""

    def __init__(self, bodies: dict):
        self.bodies = bodies
        self.readers = self
        self.blobs = self
        self.round_trips = 0

    def run(self, function, *args):
        self.round_trips += 1
        return function(None, *args)

    def get(self, conn, ids):
        return {i: self.bodies[i] for i in ids if i in self.bodies}


class DetachedReadAheadTests(POP3TestCase):
    """The messages a RETR read ahead on PostgreSQL (BlobReader) are let go when the session stops reading them."""

    def _session(self, count=8):
        from twisted.internet import defer

        from twisted_mailhub.offload import DetachedBodies
        from twisted_mailhub.store.postgresql import BlobReader

        bodies = {n: b"Subject: %d\r\n\r\n" % n + b"x" * 100_000 + b"\r\n" for n in range(1, count + 1)}
        self.put(*bodies.values())
        self.assertEqual([m.uid for m in self.inbox.messages()], list(bodies))
        proto, t = self.login()
        blobs = _BlobsInMemory(bodies)
        made = []

        def detached_reader(folder, uids):
            # (ids: the UIDs, 1 to count, as the bodies are keyed)
            made.append(BlobReader(blobs, list(uids), [len(bodies[uid]) for uid in uids]))
            return made[-1]

        holder = type("Folder", (), {"detached_reader": detached_reader})()
        proto.mbox.detached = DetachedBodies(holder, proto.mbox.uids, run=lambda f, *a: defer.maybeDeferred(f, *a))
        return proto, t, blobs, made

    @staticmethod
    def held(proto) -> int:
        """Octets of message bodies the session's reader holds, read ahead and not yet sent."""
        reader = proto.mbox.detached._reader
        return sum(len(b) for b in reader._bodies.values()) if reader is not None else 0

    def test_a_session_that_idles_after_a_retr_lets_its_read_ahead_go(self):
        proto, t, blobs, made = self._session()
        self.assertTrue(self.say(proto, t, b"retr 1\r\n").startswith(b"+OK 100016 octets\r\n"))
        self.assertEqual(self.held(proto), 3 * 100_016)  # (messages 2-4, read with 1)
        self.clock.advance(3)  # (read_ahead_kept: 2 s)
        # Before: held until the session ended (the idle limit: 10 minutes).
        self.assertEqual(self.held(proto), 0)
        self.assertTrue(self.say(proto, t, b"retr 2\r\n").startswith(b"+OK 100016 octets\r\nSubject: 2\r\n"))
        self.assertEqual(len(made), 2)  # (a new reader, from the folder's cache)

    def test_a_client_reading_message_after_message_keeps_its_read_ahead(self):
        proto, t, blobs, made = self._session()
        for n in range(1, 9):
            out = self.say(proto, t, b"retr %d\r\n" % n)
            self.assertTrue(out.startswith(b"+OK 100016 octets\r\nSubject: %d\r\n" % n), out[:40])
            self.say(proto, t, b"dele %d\r\n" % n)
            self.clock.advance(proto.read_ahead_kept / 2)
        # 8 messages in 2 round trips (1 + 3 read ahead, then 4 + 12 asked; 4 there)
        self.assertEqual(blobs.round_trips, 2)
        self.assertEqual(len(made), 1)

    def test_a_session_that_ends_lets_its_read_ahead_go(self):
        proto, t, blobs, made = self._session()
        self.say(proto, t, b"retr 1\r\n")
        self.assertGreater(self.held(proto), 0)
        proto.connectionLost(None)
        self.assertEqual(self.held(proto), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
