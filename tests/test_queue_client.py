"""
The outbound ESMTP client, spoken to by a scripted server over a
StringTransport: what it sends, and the outcome it records per recipient.
"""

from __future__ import annotations

import base64

from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.internet import error, task
from twisted.trial import unittest

from twisted_mailhub.queue.client import DONE, SENDING, WAITING, Job, RelayClient, dot_stuff

EHLO_REPLY = b"250-mx.b.test\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
PIPELINING = b"250-mx.b.test\r\n250-SIZE 1000\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def job(qid="q1", sender="alice@a.test", recipients=("bob@b.test",), message=b"Subject: x\r\n\r\nhi\r\n"):
    return Job(qid, sender, list(recipients), message)


class Session:
    """A client on a StringTransport; C{reply} feeds a server line, C{sent} takes what the client wrote."""

    def __init__(self, jobs, **kw):
        self.clock = task.Clock()
        self.client = RelayClient(jobs, "mx.b.test[127.0.0.1]:25", "mx.a.test", reactor=self.clock, **kw)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def reply(self, data: bytes) -> None:
        self.client.dataReceived(data)

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def greet(self, ehlo=EHLO_REPLY):
        self.reply(b"220 mx.b.test ESMTP\r\n")
        assert self.sent() == b"EHLO mx.a.test\r\n"
        self.reply(ehlo)


class RelayClientTests(unittest.TestCase):
    def test_two_messages_share_one_connection(self):
        a = job("q1", recipients=("bob@b.test", "nobody@b.test"), message=b"Subject: one\r\n\r\n.leading dot\r\n")
        b = job("q2", sender="", recipients=("carol@b.test",), message=b"Subject: two\r\n\r\nbody\r\n")
        s = Session([a, b])
        s.greet()
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> SIZE=%d\r\n" % len(a.message))
        s.reply(b"250 2.1.0 ok\r\n")
        self.assertEqual(s.sent(), b"RCPT TO:<bob@b.test>\r\n")
        s.reply(b"250 2.1.5 ok\r\n")
        self.assertEqual(s.sent(), b"RCPT TO:<nobody@b.test>\r\n")
        s.reply(b"550 5.1.1 <nobody@b.test>: no such user\r\n")
        self.assertEqual(s.sent(), b"DATA\r\n")
        s.reply(b"354 go ahead\r\n")
        self.assertEqual(s.sent(), b"Subject: one\r\n\r\n..leading dot\r\n.\r\n")
        s.reply(b"250 2.0.0 queued as X\r\n")
        self.assertEqual(a.phase, DONE)
        self.assertEqual(a.outcomes["bob@b.test"].code, 250)
        self.assertEqual(a.outcomes["nobody@b.test"].code, 550)
        self.assertTrue(a.outcomes["nobody@b.test"].permanent)
        self.assertEqual(a.outcomes["bob@b.test"].remote, "mx.b.test[127.0.0.1]:25")
        # RSET between messages, then the null sender of the bounce.
        self.assertEqual(s.sent(), b"RSET\r\n")
        s.reply(b"250 ok\r\n")
        self.assertEqual(s.sent(), b"MAIL FROM:<> SIZE=%d\r\n" % len(b.message))
        s.reply(b"250 ok\r\n")
        s.sent()
        s.reply(b"250 ok\r\n")
        self.assertEqual(s.sent(), b"DATA\r\n")
        s.reply(b"354 go\r\n")
        s.sent()
        s.reply(b"451 4.3.0 disk full\r\n")
        self.assertEqual(b.outcomes["carol@b.test"].code, 451)
        self.assertFalse(b.outcomes["carol@b.test"].permanent)
        # No RSET before QUIT.
        self.assertEqual(s.sent(), b"QUIT\r\n")
        s.reply(b"221 bye\r\n")
        s.client.connectionLost(failure.Failure(error.ConnectionDone()))
        self.assertTrue(s.client.done.called)

    def test_pipelined_transactions_take_two_round_trips_each(self):
        a = job("q1", recipients=("bob@b.test", "nobody@b.test"))
        b = job("q2", recipients=("carol@b.test",))
        s = Session([a, b])
        s.greet(PIPELINING)
        size = len(a.message)
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> SIZE=%d\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<nobody@b.test>\r\nDATA\r\n" % size)
        s.reply(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
        self.assertEqual(s.sent(), dot_stuff(a.message))
        s.reply(b"250 2.0.0 queued\r\n")
        self.assertEqual({r: o.code for r, o in a.outcomes.items()}, {"bob@b.test": 250, "nobody@b.test": 550})
        self.assertEqual(s.sent(), b"RSET\r\nMAIL FROM:<alice@a.test> SIZE=%d\r\nRCPT TO:<carol@b.test>\r\nDATA\r\n" % size)
        s.reply(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.reply(b"451 4.3.0 try later\r\n")
        self.assertEqual(b.outcomes["carol@b.test"].code, 451)
        self.assertEqual(s.sent(), b"QUIT\r\n")

    def pipelined_outcomes(self, replies: bytes) -> dict[str, int]:
        """Codes per recipient after one pipelined transaction to bob and eve got C{replies}."""
        j = job(recipients=("bob@b.test", "eve@b.test"))
        s = Session([j])
        s.greet(PIPELINING)
        s.sent()
        s.reply(replies)
        self.assertEqual(s.sent(), b"QUIT\r\n")
        return {r: o.code for r, o in j.outcomes.items()}

    def test_pipelined_mail_refused_counts_for_every_recipient(self):
        codes = self.pipelined_outcomes(b"451 4.7.1 greylisted\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(codes, {"bob@b.test": 451, "eve@b.test": 451})

    def test_pipelined_no_recipient_accepted_then_data_refused(self):
        codes = self.pipelined_outcomes(b"250 ok\r\n550 5.1.1 no bob\r\n452 4.5.3 too many\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(codes, {"bob@b.test": 550, "eve@b.test": 452})

    def test_pipelined_data_accepted_with_no_recipients_sends_an_empty_body(self):
        j = job(recipients=("bob@b.test",))
        s = Session([j])
        s.greet(PIPELINING)
        s.sent()
        s.reply(b"250 ok\r\n550 5.1.1 no bob\r\n354 go anyway\r\n")
        self.assertEqual(s.sent(), b".\r\n")  # not the message
        s.reply(b"554 5.5.1 nothing to deliver\r\n")
        self.assertEqual(j.outcomes["bob@b.test"].code, 550)
        self.assertEqual(s.sent(), b"QUIT\r\n")

    def test_message_over_the_servers_size_limit_is_refused_without_sending(self):
        big = job("q1", message=b"x" * 2000 + b"\r\n")
        small = job("q2")
        s = Session([big, small])
        s.greet()
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> SIZE=%d\r\n" % len(small.message))
        self.assertEqual(big.phase, DONE)
        self.assertEqual(big.outcomes["bob@b.test"].code, 552)
        self.assertIn("5.3.4", big.outcomes["bob@b.test"].reply)

    def test_no_size_parameter_when_the_server_does_not_offer_size(self):
        s = Session([job()])
        s.greet(b"250-mx.b.test\r\n250 8BITMIME\r\n")
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test>\r\n")

    def test_8bit_message_is_announced_when_the_server_offers_8bitmime(self):
        s = Session([job(message="Subject: café\r\n\r\nhi\r\n".encode())])
        s.greet()
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> SIZE=22 BODY=8BITMIME\r\n")

    def test_mail_from_refused_counts_for_every_recipient(self):
        j = job(recipients=("bob@b.test", "eve@b.test"))
        s = Session([j])
        s.greet()
        s.sent()
        s.reply(b"451 4.7.1 greylisted, come back later\r\n")
        self.assertEqual({r: o.code for r, o in j.outcomes.items()}, {"bob@b.test": 451, "eve@b.test": 451})
        self.assertEqual(s.sent(), b"QUIT\r\n")

    def test_connection_lost_during_data_is_a_temporary_failure(self):
        sending, waiting = job("q1"), job("q2")
        s = Session([sending, waiting])
        s.greet()
        s.reply(b"250 ok\r\n")
        s.reply(b"250 ok\r\n")
        s.reply(b"354 go\r\n")
        self.assertEqual(sending.phase, SENDING)
        s.client.connectionLost(failure.Failure(error.ConnectionLost("gone")))
        self.assertEqual(sending.phase, DONE)
        outcome = sending.outcomes["bob@b.test"]
        self.assertEqual(outcome.code, -1)
        self.assertFalse(outcome.permanent or outcome.delivered)
        self.assertIn("lost", outcome.reply)
        # Never tried: the caller may offer it to the next MX.
        self.assertEqual(waiting.phase, WAITING)
        self.assertEqual(waiting.outcomes, {})

    def test_tls_required_but_not_offered_is_temporary(self):
        j = job()
        s = Session([j], require_tls=True, context=object())
        s.greet()
        s.client.connectionLost(failure.Failure(error.ConnectionDone()))
        self.assertEqual(j.phase, WAITING)
        self.assertEqual(s.client.error.code, -1)
        self.assertIn("TLS", s.client.error.reply)

    def test_starttls_when_offered(self):
        s = Session([job()], context=object())
        s.greet(b"250-mx.b.test\r\n250 STARTTLS\r\n")
        self.assertEqual(s.sent(), b"STARTTLS\r\n")

    def test_auth_plain_with_smarthost_credentials_and_transcript_masks_it(self):
        from twisted.logger import globalLogPublisher

        lines = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        s = Session([job()], username=b"alice", secret=b"s3cret", transcript=True)
        s.client._tlsMode = True  # the session is over TLS (STARTTLS done): the password goes only there
        s.greet(b"250-relay.test\r\n250 AUTH PLAIN LOGIN\r\n")
        # authzid, authcid, password (RFC 4616), base64
        self.assertEqual(s.sent(), b"AUTH PLAIN " + base64.b64encode(b"alice\0alice\0s3cret") + b"\r\n")
        s.reply(b"235 2.7.0 ok\r\n")
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test>\r\n")
        text = "\n".join(e.get("line", "") for e in lines if e.get("log_namespace") == "mailhub.transcript")
        self.assertIn("AUTH PLAIN ****", text)
        self.assertNotIn(base64.b64encode(b"alice\0alice\0s3cret").decode(), text)

    def test_smarthost_credentials_are_not_sent_without_tls(self):
        j = job()
        s = Session([j], username=b"alice", secret=b"s3cret")
        s.greet(b"250-relay.test\r\n250 AUTH PLAIN LOGIN\r\n")  # no STARTTLS
        self.assertNotIn(b"AUTH", s.sent())
        # the session's error, which the queue gives the recipients (a temporary one)
        self.assertEqual(s.client.error.code, -1)
        self.assertIn("does not offer STARTTLS: the smarthost password (--smarthost-auth) is sent only over TLS", s.client.error.reply)

    def test_silent_server_times_out_as_a_temporary_failure(self):
        j = job()
        s = Session([j])
        s.greet()
        s.clock.advance(RelayClient.timeout + 1)
        s.client.connectionLost(failure.Failure(error.ConnectionDone()))
        self.assertEqual(j.outcomes["bob@b.test"].code, -1)
        self.assertIn("Timeout", j.outcomes["bob@b.test"].reply)

    def test_garbage_from_the_server_is_a_temporary_failure(self):
        j = job()
        s = Session([j])
        s.reply(b"220 hi\r\n")
        s.sent()
        s.reply(b"HTTP/1.1 400 Bad Request\r\n")
        self.assertTrue(s.transport.disconnecting)
        s.client.connectionLost(failure.Failure(error.ConnectionDone()))
        self.assertEqual(j.phase, WAITING)  # never started: the next MX may take it
        self.assertEqual(s.client.error.code, -1)
        self.assertIn("Invalid response", s.client.error.reply)

    def test_dot_stuffing(self):
        self.assertEqual(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n")
        self.assertEqual(dot_stuff(b"no newline"), b"no newline\r\n.\r\n")


class SMTPUTF8Tests(unittest.TestCase):
    """RFC 6531 §3.2 and §3.4: SMTPUTF8 when the next hop offers it, a DSN-worthy refusal when not."""

    UTF8 = "Subject: Grüße\r\n\r\nhi\r\n".encode("utf-8")

    def test_a_utf8_message_goes_with_smtputf8_when_offered(self):
        j = job(sender="grüße@a.test", recipients=("jöran@b.test",), message=self.UTF8)
        s = Session([j])
        s.greet(b"250-mx.b.test\r\n250-SMTPUTF8\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        self.assertEqual(
            s.sent(),
            "MAIL FROM:<grüße@a.test> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<jöran@b.test>\r\nDATA\r\n".encode("utf-8"),
        )

    def test_without_smtputf8_the_message_is_refused_permanently_not_downgraded(self):
        for sender, recipients, message in (
            ("grüße@a.test", ("bob@b.test",), b"Subject: x\r\n\r\nhi\r\n"),
            ("alice@a.test", ("jöran@b.test",), b"Subject: x\r\n\r\nhi\r\n"),
        ):
            j = job(sender=sender, recipients=recipients, message=message)
            s = Session([j])
            s.greet()
            self.assertEqual(j.phase, DONE)
            outcome = j.outcomes[recipients[0]]
            self.assertTrue(outcome.permanent)
            self.assertEqual(outcome.code, 553)
            self.assertIn("5.6.7", outcome.reply)
            self.assertNotIn(b"MAIL FROM", s.sent())

    def test_an_ascii_message_with_an_8bit_body_needs_no_smtputf8(self):
        j = job(message="Subject: x\r\n\r\nGrüße\r\n".encode("utf-8"))
        s = Session([j])
        s.greet()
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> SIZE=%d BODY=8BITMIME\r\n" % len(j.message))


class SlowRemoteServerTests(unittest.TestCase):
    """
    The DATA payload of a big message goes in pieces, each resetting the
    reply timer, so a remote server taking it at an honest rate is not
    cut at 300 s; one taking it at under 4 KiB/s is cut by the
    slow-reader watch (pace.py) as a temporary failure.
    """

    def _at_data(self, message):
        j = job(message=message)
        s = Session([j])
        s.greet(b"250-mx.b.test\r\n250 8BITMIME\r\n")  # (no SIZE limit)
        s.sent()
        s.reply(b"250 ok\r\n")
        s.reply(b"250 ok\r\n")
        s.sent()
        s.reply(b"354 go\r\n")
        return j, s

    def test_a_big_message_taken_steadily_for_longer_than_the_reply_timer_is_delivered(self):
        message = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 40_000  # 3.1 MiB
        j, s = self._at_data(message)
        sent = s.sent()
        producer = s.transport.producer
        self.assertIsNotNone(producer)  # not written at once
        pieces = 1
        while s.transport.producer is not None:
            # Each 256 KiB piece taken in 290 s (900 octets/s would be cut
            # by the watch; here only the reply timer is under test).
            s.clock.advance(RelayClient.timeout - 10)
            self.assertFalse(s.transport.disconnecting)
            producer.resumeProducing()
            sent += s.sent()
            pieces += 1
        self.assertGreater(pieces * (RelayClient.timeout - 10), RelayClient.timeout * 3)
        self.assertEqual(sent, dot_stuff(message))
        s.reply(b"250 2.0.0 queued\r\n")
        self.assertEqual(j.outcomes["bob@b.test"].code, 250)

    def test_a_remote_server_reading_too_slowly_is_a_temporary_failure_that_names_it(self):
        j, s = self._at_data(b"Subject: x\r\n\r\n" + b"z" * 1_000_000)
        s.client.slow_reader(60.0, 1234)
        self.assertTrue(s.transport.disconnecting)
        s.client.connectionLost(failure.Failure(error.ConnectionAborted()))
        outcome = j.outcomes["bob@b.test"]
        self.assertEqual(outcome.code, -1)
        self.assertFalse(outcome.permanent or outcome.delivered)
        self.assertEqual(outcome.reply, "mx.b.test[127.0.0.1]:25 took the message at under 4 KiB/s for 60 seconds (1234 octets)")
