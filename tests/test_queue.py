"""
The outbound queue: its files, the retry schedule, DSNs, and the relay's
decisions (retry, bounce, expire, warn), driven with task.Clock and a
fake delivery so that days of retries take no time.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import tempfile

from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_mailhub.queue.client import DONE, Outcome
from twisted_mailhub.queue.dsn import build_dsn, original_headers, status_of
from twisted_mailhub.queue.mx import Hop, RouteError
from twisted_mailhub.queue.relay import Relay
from twisted_mailhub.queue.schedule import RetrySchedule, format_duration, parse_duration
from twisted_mailhub.queue.storage import DELIVERED, FAILED, PENDING, QueueStorage, Recipient, make_entry

MESSAGE = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: lunch?\r\n\r\nAt noon.\r\n.dot line\r\n"


class SyncWriter:
    """GroupCommitWriter's contract, done at once (no threads under task.Clock)."""

    def write(self, tmp_path, final_path, data):
        with open(tmp_path, "wb") as f:
            f.write(data)
        os.rename(tmp_path, final_path)
        return defer.succeed(final_path)


def temp_dir(case: unittest.TestCase) -> str:
    path = tempfile.mkdtemp(prefix="mailhub-queue-")
    case.addCleanup(shutil.rmtree, path, True)
    return os.path.join(path, "queue")


class ScheduleTests(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration("90s"), 90)
        self.assertEqual(parse_duration("5m"), 300)
        self.assertEqual(parse_duration("4h"), 14400)
        self.assertEqual(parse_duration("5D"), 432000)
        self.assertEqual(parse_duration("0.5s"), 0.5)
        self.assertRaises(ValueError, parse_duration, "soon")
        self.assertEqual(format_duration(432000), "5d")
        self.assertEqual(format_duration(90), "90s")

    def test_default_schedule_is_five_minutes_then_every_half_hour(self):
        schedule = RetrySchedule.parse("5m,30m")
        self.assertEqual([schedule.delay(n) for n in (1, 2, 3, 10)], [300, 1800, 1800, 1800])
        self.assertEqual(str(schedule), "5m,30m")
        self.assertRaises(ValueError, RetrySchedule.parse, "")
        self.assertRaises(ValueError, RetrySchedule.parse, "0s")


class StorageTests(unittest.TestCase):
    def setUp(self):
        self.dir = temp_dir(self)
        self.storage = QueueStorage(self.dir, writer=SyncWriter())

    @defer.inlineCallbacks
    def test_message_and_state_survive_a_reload(self):
        entry = make_entry("alice@a.test", ["bob@b.test", "carol@c.test"], len(MESSAGE), now=1000)
        qid = yield self.storage.add(entry, MESSAGE)
        entry.recipients[0].state = DELIVERED
        entry.recipients[0].code = 250
        yield self.storage.save(entry)
        [loaded] = QueueStorage(self.dir, writer=SyncWriter()).load()
        self.assertEqual(loaded.id, qid)
        self.assertEqual(loaded, entry)
        self.assertEqual([r.address for r in loaded.pending], ["carol@c.test"])
        self.assertEqual(self.storage.read_message(qid), MESSAGE)

    def test_add_fires_only_when_both_files_are_durable(self):
        class HeldWriter(SyncWriter):
            def __init__(self):
                self.held = []

            def write(self, tmp_path, final_path, data):
                d = defer.Deferred()
                self.held.append((d, final_path))
                return d

        writer = HeldWriter()
        storage = QueueStorage(temp_dir(self), writer=writer)
        d = storage.add(make_entry("alice@a.test", ["bob@b.test"], len(MESSAGE)), MESSAGE)
        self.assertEqual([os.path.basename(p)[-4:] for _, p in writer.held], [".msg", ".env"])
        writer.held[0][0].callback(None)
        self.assertNoResult(d)  # the message alone is not queued yet
        writer.held[1][0].callback(None)
        self.assertTrue(self.successResultOf(d))

    def test_load_removes_what_a_crash_left(self):
        with open(os.path.join(self.dir, "abc.msg"), "wb") as f:
            f.write(MESSAGE)  # never committed: no envelope
        with open(os.path.join(self.dir, "def.env.tmp1-1"), "wb") as f:
            f.write(b"{")
        self.assertEqual(self.storage.load(), [])
        self.assertEqual(sorted(os.listdir(self.dir)), [])

    @defer.inlineCallbacks
    def test_remove_deletes_both_files(self):
        entry = make_entry("", ["x@b.test"], 3, now=1)
        yield self.storage.add(entry, b"abc")
        self.storage.remove(entry.id)
        self.assertEqual(os.listdir(self.dir), [])

    @defer.inlineCallbacks
    def test_real_writer_fsyncs_before_the_deferred_fires(self):
        storage = QueueStorage(temp_dir(self))
        entry = make_entry("alice@a.test", ["bob@b.test"], len(MESSAGE))
        qid = yield storage.add(entry, MESSAGE)
        self.assertTrue(os.path.exists(os.path.join(storage.directory, qid + ".env")))
        self.assertEqual(storage.read_message(qid), MESSAGE)


class DSNTests(unittest.TestCase):
    def test_bounce_is_a_multipart_report_with_the_original_headers(self):
        entry = make_entry("alice@a.test", ["bob@b.test", "eve@b.test"], len(MESSAGE), now=1_700_000_000)
        bob = Recipient("bob@b.test", FAILED, 550, "5.1.1 <bob@b.test>: no such user", "mx.b.test[127.0.0.1]:25")
        raw = build_dsn(entry, [bob], MESSAGE, "mx.a.test", 1_700_000_100)
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["To"].addresses[0].addr_spec, "alice@a.test")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        text, status, headers = msg.get_payload()
        self.assertIn("<bob@b.test>: 550 5.1.1", text.get_content())
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        report = status.as_bytes().decode()
        self.assertIn("Reporting-MTA: dns; mx.a.test", report)
        self.assertIn("Final-Recipient: rfc822; bob@b.test", report)
        self.assertIn("Action: failed", report)
        self.assertIn("Status: 5.1.1", report)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 <bob@b.test>: no such user", report)
        self.assertNotIn("eve@b.test", report)
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn(b"Subject: lunch?", raw)
        self.assertNotIn(b"At noon.", raw)  # headers only, not the body

    def test_an_internationalized_bounce_names_its_addresses_as_rfc_6533_says(self):
        # SMTPUTF8 mail (RFC 6531) from jürgen to bjørn: the bounce could
        # not be made at all (ASCII only) and the queue retried it forever.
        original = "Subject: Grüße\r\nFrom: jürgen@a.test\r\n\r\nHallo\r\n".encode()
        entry = make_entry("jürgen@a.test", ["bjørn@exämple.test"], len(original), now=1_700_000_000)
        bjorn = Recipient("bjørn@exämple.test", FAILED, 0, "4.4.7 gave up after 5d in the queue", "")
        raw = build_dsn(entry, [bjorn], original, "mx.a.test", 1_700_000_100)
        msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)  # RFC 6532: UTF-8 header fields
        self.assertEqual(msg["To"].addresses[0].addr_spec, "jürgen@a.test")
        text, status, headers = msg.get_payload()
        self.assertEqual(text.get_content_charset(), "utf-8")
        self.assertIn("<bjørn@exämple.test>: 4.4.7 gave up".encode(), raw)  # the text, in UTF-8 (8bit)
        # RFC 6533 §6.2: a global report, its addresses in UTF-8 as they are.
        self.assertEqual(status.get_content_type(), "message/global-delivery-status")
        self.assertIn("Final-Recipient: utf-8; bjørn@exämple.test\r\n".encode(), raw)
        self.assertEqual(headers.get_content_type(), "message/global-headers")
        self.assertIn("Subject: Grüße".encode(), raw)

    def test_an_ascii_bounce_stays_ascii_with_a_non_ascii_original_header_apart(self):
        entry = make_entry("alice@a.test", ["bob+x=y@b.test"], len(MESSAGE), now=1_700_000_000)
        bob = Recipient("bob+x=y@b.test", FAILED, 550, "5.1.1 nöpe", "mx.b.test[127.0.0.1]:25")
        raw = build_dsn(entry, [bob], MESSAGE, "mx.a.test", 1_700_000_100)
        self.assertTrue(raw.isascii())
        self.assertIn(b"Final-Recipient: rfc822; bob+x=y@b.test", raw)
        self.assertIn(b"charset=us-ascii", raw)
        self.assertIn(b"Content-Type: text/rfc822-headers", raw)

    def test_remote_mta_is_the_host_that_answered_by_name_without_its_port(self):
        entry = make_entry("alice@a.test", ["a@b.test"], len(MESSAGE), now=1_700_000_000)
        answered = [
            Recipient("a@b.test", FAILED, 550, "5.1.1 no", "mx.b.test[192.0.2.1]:25"),
            Recipient("b@b.test", FAILED, 550, "5.1.1 no", "192.0.2.7:2525"),
            Recipient("c@b.test", FAILED, 550, "5.1.1 no", "[::1]:25"),
            Recipient("d@b.test", FAILED, 554, "5.7.1 no", "relay.b.test:587"),
        ]
        report = build_dsn(entry, answered, MESSAGE, "mx.a.test", 1_700_000_100).decode()
        mtas = [line for line in report.split("\r\n") if line.startswith("Remote-MTA:")]
        self.assertEqual(mtas, ["Remote-MTA: dns; mx.b.test", "Remote-MTA: dns; [192.0.2.7]", "Remote-MTA: dns; [IPv6:::1]", "Remote-MTA: dns; relay.b.test"])

    def test_no_remote_mta_when_no_mta_answered(self):
        # RFC 3464 §2.3.5: the MTA that reported; a refused connection has none.
        entry = make_entry("alice@a.test", ["a@b.test"], len(MESSAGE), now=1_700_000_000)
        refused = Recipient("a@b.test", FAILED, -1, "cannot connect to 127.0.0.1:1: Connection refused", "127.0.0.1:1")
        raw = build_dsn(entry, [refused], MESSAGE, "mx.a.test", 1_700_000_100)
        self.assertNotIn(b"Remote-MTA", raw)
        self.assertNotIn(b"(from 127.0.0.1:1)", raw)
        self.assertIn(b"X-Mailhub-Diagnostic: cannot connect to 127.0.0.1:1: Connection refused", raw)

    def test_status_comes_from_the_reply_or_its_class(self):
        self.assertEqual(status_of(Recipient("a@b", code=550, reply="5.7.1 no"), "x"), "5.7.1")
        self.assertEqual(status_of(Recipient("a@b", code=550, reply="no way"), "x"), "5.0.0")
        self.assertEqual(status_of(Recipient("a@b", code=0, reply="gave up"), "4.4.7"), "4.4.7")
        self.assertEqual(original_headers(b"A: 1\nB: 2\n\nbody"), b"A: 1\r\nB: 2\r\n")


class FakeRelay(Relay):
    """
    A relay whose delivery is a script: C{replies[address]} is a list of
    outcomes, one per attempt (the last repeats); C{sent} records what
    each attempt carried.
    """

    def __init__(self, storage, clock, replies, **kw):
        self.delivered_here: list[tuple[str, bytes]] = []

        def deliver_local(address, message):
            self.delivered_here.append((address, message))
            return defer.succeed("key")

        Relay.__init__(
            self,
            clock,
            storage,
            router=None,
            hostname="mx.a.test",
            deliver_local=deliver_local,
            is_local=lambda a: a.endswith("@a.test"),
            **kw,
        )
        self.replies = replies
        self.hold: defer.Deferred | None = None
        self.sent: list[tuple[str, str, tuple[str, ...]]] = []

    async def _route(self, domain):
        if domain == "nowhere.test":
            return RouteError(550, "5.1.2", "domain nowhere.test does not exist")
        return [Hop("mx." + domain, "127.0.0.1", 25)]

    async def _send(self, hops, jobs, labels):
        if self.hold is not None:
            await self.hold
        for job in jobs:
            self.sent.append((job.id, job.sender, tuple(job.recipients)))
            for r in job.recipients:
                script = self.replies[r]
                code, text = script.pop(0) if len(script) > 1 else script[0]
                job.outcomes[r] = Outcome(code, text, str(hops[0]))
            job.phase = DONE
        return jobs


class QueueCase(unittest.TestCase):
    """
    A queue in a temp folder (C{self.storage}, its writes synchronous), a
    clock at 1,700,000,000 s, and C{relay(replies)}: a started L{FakeRelay}
    over them that stops with the test. No tests of its own.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.dir = temp_dir(self)
        self.storage = QueueStorage(self.dir, writer=SyncWriter())

    def relay(self, replies, **kw):
        relay = FakeRelay(self.storage, self.clock, replies, **kw)
        relay.startService()
        self.addCleanup(relay.stopService)
        return relay


class RelayTests(QueueCase):
    def enqueue(self, relay, sender="alice@a.test", recipients=("bob@b.test",)):
        d = relay.enqueue(sender, list(recipients), MESSAGE)
        qid = self.successResultOf(d)
        self.clock.advance(0)
        return qid

    def test_delivered_message_leaves_the_queue(self):
        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")]})
        qid = self.enqueue(relay)
        self.assertEqual(relay.sent, [(qid, "alice@a.test", ("bob@b.test",))])
        self.assertEqual(relay.entries, {})
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(relay.delivered_here, [])

    def test_a_message_file_gone_is_logged_in_words_not_as_python_prints_an_error(self):
        from twisted.logger import capturedLogs, formatEvent

        relay = self.relay({"bob@b.test": [(451, "4.3.0 try later")]}, schedule=RetrySchedule([300]))
        qid = self.enqueue(relay)
        os.unlink(os.path.join(self.dir, qid + ".msg"))  # (removed by hand, a disk fault)
        with capturedLogs() as events:
            self.clock.advance(300)
        [said] = [formatEvent(e) for e in events if "cannot read its message" in e.get("log_format", "")]
        # (before: "[Errno 2] No such file or directory: '/...msg'")
        self.assertIn("No such file or directory", said)
        self.assertNotIn("[Errno", said)
        self.assertIn(qid, relay.entries)  # (kept, tried again later)

    def test_temporary_failure_retries_on_the_schedule(self):
        relay = self.relay({"bob@b.test": [(451, "4.3.0 try later")] * 3 + [(250, "ok")]}, schedule=RetrySchedule([300, 1800]))
        qid = self.enqueue(relay)
        self.assertEqual(len(relay.sent), 1)
        entry = relay.entries[qid]
        self.assertEqual(entry.next_attempt, self.clock.seconds() + 300)
        self.assertEqual([r.code for r in QueueStorage(self.dir, writer=SyncWriter()).load()[0].recipients], [451])
        self.clock.advance(299)
        self.assertEqual(len(relay.sent), 1)
        self.clock.advance(1)
        self.assertEqual(len(relay.sent), 2)
        self.clock.advance(1800)
        self.assertEqual(len(relay.sent), 3)
        self.clock.advance(1800)
        self.assertEqual(len(relay.sent), 4)
        self.assertEqual(relay.entries, {})

    def test_permanent_failure_bounces_to_a_local_sender(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no such user")]})
        qid = self.enqueue(relay)
        [(to, dsn)] = relay.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Action: failed", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 550 5.1.1 no such user", dsn)
        self.assertIn(b"X-Mailhub-Queue-ID: " + qid.encode(), dsn)
        self.assertEqual(relay.entries, {})

    def test_a_recipient_refused_for_good_is_bounced_at_once_while_another_is_retried(self):
        # The 550 for bob waited in the queue until eve's 451s ended (up to
        # --queue-lifetime, five days): the sender heard nothing meanwhile.
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no such user")], "eve@b.test": [(451, "4.3.0 busy"), (250, "ok")]}, schedule=RetrySchedule([300]))
        qid = self.enqueue(relay, recipients=("bob@b.test", "eve@b.test"))
        [(to, dsn)] = relay.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Final-Recipient: rfc822; bob@b.test", dsn)
        self.assertNotIn(b"eve@b.test", dsn.split(b"text/rfc822-headers")[0])
        self.assertIn(qid, relay.entries)
        # A restart does not bounce bob a second time, and eve's 250 ends it quietly.
        relay.stopService()
        again = self.relay({"eve@b.test": [(250, "ok")]})
        self.clock.advance(300)
        self.assertEqual(again.sent, [(qid, "alice@a.test", ("eve@b.test",))])
        self.assertEqual(again.delivered_here, [])
        self.assertEqual(again.entries, {})

    def test_a_recipient_refused_for_good_and_one_that_expires_make_two_bounces(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")], "eve@b.test": [(451, "4.3.0 busy")]}, schedule=RetrySchedule([600]), lifetime=1000)
        self.enqueue(relay, recipients=("bob@b.test", "eve@b.test"))
        self.assertEqual(len(relay.delivered_here), 1)
        self.clock.advance(1000)
        self.assertEqual(len(relay.delivered_here), 2)
        later = relay.delivered_here[1][1]
        self.assertIn(b"Final-Recipient: rfc822; eve@b.test", later)
        self.assertIn(b"Status: 4.4.7", later)
        self.assertNotIn(b"bob@b.test", later.split(b"text/rfc822-headers")[0])
        self.assertEqual(relay.entries, {})

    def test_bounce_for_a_remote_sender_is_queued_from_the_null_sender(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")], "carol@c.test": [(250, "ok")]})
        self.enqueue(relay, sender="carol@c.test")
        # The bounce went out as a new message from <> to carol.
        self.assertEqual(relay.sent[-1][1:], ("", ("carol@c.test",)))
        self.assertEqual(relay.entries, {})

    def test_no_bounce_for_the_null_sender(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, sender="")
        self.assertEqual(len(relay.sent), 1)
        self.assertEqual(relay.delivered_here, [])
        self.assertEqual(relay.entries, {})

    def test_a_recipient_that_got_250_is_not_sent_again(self):
        relay = self.relay({"bob@b.test": [(250, "ok")], "eve@b.test": [(451, "busy"), (250, "ok")]})
        qid = self.enqueue(relay, recipients=("bob@b.test", "eve@b.test"))
        self.assertEqual(relay.sent, [(qid, "alice@a.test", ("bob@b.test", "eve@b.test"))])
        # A restart (new relay on the same files) must remember bob's 250.
        relay.stopService()
        again = self.relay({"bob@b.test": [(250, "ok")], "eve@b.test": [(250, "ok")]})
        self.clock.advance(300)
        self.assertEqual(again.sent, [(qid, "alice@a.test", ("eve@b.test",))])
        self.assertEqual(again.entries, {})

    def test_expiry_bounces_with_4_4_7(self):
        relay = self.relay({"bob@b.test": [(-1, "connection refused")]}, schedule=RetrySchedule([600]), lifetime=1000)
        self.enqueue(relay)
        self.clock.advance(600)
        self.assertEqual(len(relay.sent), 2)
        self.assertEqual(relay.delivered_here, [])
        self.clock.advance(400)  # the last attempt is at the deadline, not after it
        self.assertEqual(len(relay.sent), 3)
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Status: 4.4.7", dsn)
        self.assertIn(b"connection refused", dsn)
        self.assertEqual(relay.entries, {})

    def test_an_expired_message_bounces_naming_the_last_server_and_what_it_said(self):
        # The last try's code, reply and server stay when the time runs out:
        # the bounce says 4.4.7 and who kept answering 451, and why.
        relay = self.relay({"bob@b.test": [(451, "4.3.0 try later")]}, schedule=RetrySchedule([600]), lifetime=1000)
        self.enqueue(relay)
        self.clock.advance(1000)
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Status: 4.4.7", dsn)
        self.assertIn(b"Remote-MTA: dns; mx.b.test", dsn)
        self.assertIn(b"Diagnostic-Code: smtp; 451 4.3.0 try later", dsn)
        self.assertIn(b"<bob@b.test>: 4.4.7 gave up after 1000s in the queue; last try: 451 4.3.0 try later (from mx.b.test[127.0.0.1]:25)", dsn)
        date = email.message_from_bytes(dsn)["Date"]
        self.assertRegex(date, r" [+-]\d{4}$")
        self.assertFalse(date.endswith("-0000"), date)  # the zone's offset, as Received: gives it (RFC 5322 §3.3)

    def test_delay_warning_is_sent_once(self):
        relay = self.relay({"bob@b.test": [(451, "later")]}, schedule=RetrySchedule([60]), delay_warning=100, lifetime=10_000)
        self.enqueue(relay)
        self.clock.advance(60)
        self.assertEqual(relay.delivered_here, [])
        for _ in range(5):
            self.clock.advance(60)
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Action: delayed", dsn)
        self.assertIn(b"Will-Retry-Until:", dsn)
        self.assertEqual(to, "alice@a.test")

    def test_an_internationalized_sender_gets_its_bounce_and_its_delay_warning(self):
        relay = self.relay({"bjørn@b.test": [(451, "later")]}, schedule=RetrySchedule([60]), delay_warning=100, lifetime=300)
        self.enqueue(relay, sender="jürgen@a.test", recipients=("bjørn@b.test",))
        for _ in range(6):
            self.clock.advance(60)
        [(to, warning), (again, bounce)] = relay.delivered_here
        self.assertEqual((to, again), ("jürgen@a.test", "jürgen@a.test"))
        self.assertIn(b"Action: delayed", warning)
        self.assertIn("Final-Recipient: utf-8; bjørn@b.test".encode(), bounce)
        self.assertEqual(relay.entries, {})

    def test_a_bounce_that_cannot_be_made_is_tried_again_on_the_schedule_not_at_once(self):
        # Any failure making or storing a DSN keeps the message and retries
        # later: it used to be retried in a loop as fast as the reactor ran.
        import twisted_mailhub.queue.relay as relay_module

        broken, calls = [True], []

        def build(*args, **kw):
            calls.append(args)
            if broken[0] and len(calls) < 5:  # (5: so that a loop ends)
                raise ValueError("no DSN today")
            return build_dsn(*args, **kw)

        self.patch(relay_module, "build_dsn", build)
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]}, schedule=RetrySchedule([600]))
        qid = self.enqueue(relay)
        for _ in range(50):
            self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(relay.sent), 1)
        self.assertEqual(relay.delivered_here, [])
        self.assertIn(qid, relay.entries)
        self.assertEqual(self.flushLoggedErrors(), [])
        broken[0] = False
        self.clock.advance(600)
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Action: failed", dsn)
        self.assertEqual(relay.entries, {})

    def test_unknown_domain_bounces_without_a_connection(self):
        relay = self.relay({})
        self.enqueue(relay, recipients=("x@nowhere.test",))
        self.assertEqual(relay.sent, [])
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Status: 5.1.2", dsn)

    def test_connections_are_limited_and_the_rest_wait_their_turn(self):
        replies = {f"u@d{n}.test": [(250, "ok")] for n in range(3)}
        relay = self.relay(replies, max_connections=2)
        relay.hold = defer.Deferred()
        for n in range(3):
            self.successResultOf(relay.enqueue("alice@a.test", [f"u@d{n}.test"], MESSAGE))
        self.clock.advance(0)
        self.assertEqual(relay.connections.tokens, 0)
        self.assertEqual(len(relay.connections.waiting), 1)
        relay.hold.callback(None)
        self.clock.advance(0)
        self.assertEqual(len(relay.sent), 3)
        self.assertEqual(relay.entries, {})

    def test_recipients_in_local_domains_are_delivered_here(self):
        relay = self.relay({"bob@b.test": [(250, "ok")]})
        self.enqueue(relay, recipients=("carol@a.test", "bob@b.test"))
        self.assertEqual([a for a, _ in relay.delivered_here], ["carol@a.test"])
        self.assertEqual([rcpts for _, _, rcpts in relay.sent], [("bob@b.test",)])
        self.assertEqual(relay.entries, {})

    def test_more_than_100_recipients_go_in_several_transactions(self):
        rcpts = [f"u{n}@b.test" for n in range(230)]
        relay = self.relay({r: [(250, "ok")] for r in rcpts})
        self.enqueue(relay, recipients=rcpts)
        self.assertEqual([len(r) for _, _, r in relay.sent], [100, 100, 30])
        self.assertEqual([r for _, _, batch in relay.sent for r in batch], rcpts)
        self.assertEqual(relay.entries, {})

    def test_flush_and_remove(self):
        relay = self.relay({"bob@b.test": [(451, "later")]})
        qid = self.enqueue(relay)
        self.assertEqual(relay.flush(), 1)
        self.clock.advance(0)
        self.assertEqual(len(relay.sent), 2)
        self.assertTrue(relay.remove(qid))
        self.assertFalse(relay.remove(qid))
        self.assertEqual(os.listdir(self.dir), [])
        self.clock.advance(3600)
        self.assertEqual(len(relay.sent), 2)

    def test_finished_entry_found_at_start_is_bounced_and_removed(self):
        entry = make_entry("alice@a.test", ["bob@b.test"], len(MESSAGE), now=self.clock.seconds())
        self.successResultOf(self.storage.add(entry, MESSAGE))
        entry.recipients[0].state = FAILED
        entry.recipients[0].code = 550
        self.successResultOf(self.storage.save(entry))
        relay = self.relay({})
        self.assertEqual([a for a, _ in relay.delivered_here], ["alice@a.test"])
        self.assertEqual(relay.sent, [])
        self.assertEqual(os.listdir(self.dir), [])

    def test_bounce_that_cannot_be_stored_is_tried_again_later(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]}, schedule=RetrySchedule([60]))
        failing = [defer.fail(OSError("disk full"))]
        relay.deliver_local = lambda address, message: failing.pop() if failing else defer.succeed(relay.delivered_here.append((address, message)))
        self.enqueue(relay)
        self.assertEqual(len(relay.entries), 1)  # kept: its bounce is owed
        self.assertEqual(relay.delivered_here, [])
        self.clock.advance(60)
        self.assertEqual(len(relay.sent), 1)  # bob is not tried again
        self.assertEqual([a for a, _ in relay.delivered_here], ["alice@a.test"])
        self.assertEqual(relay.entries, {})

    def test_a_local_delivery_that_fails_on_a_full_disk_is_kept_in_words_without_the_servers_path(self):
        relay = self.relay({}, schedule=RetrySchedule([60]))
        relay.deliver_local = lambda address, message: defer.fail(OSError(28, "No space left on device", "/var/mail/carol/tmp/1"))
        self.enqueue(relay, recipients=("carol@a.test",))
        [entry] = QueueStorage(self.dir, writer=SyncWriter()).load()
        # (the reply goes into a delay warning or a bounce: never Python's text or a file of the server)
        self.assertEqual(entry.recipients[0].reply, "4.3.0 local delivery failed: the disk is full")

    def test_entry_that_already_bounced_is_not_bounced_again_at_start(self):
        entry = make_entry("alice@a.test", ["bob@b.test"], len(MESSAGE), now=self.clock.seconds())
        entry.recipients[0].state = FAILED
        entry.bounced = True
        self.successResultOf(self.storage.add(entry, MESSAGE))
        relay = self.relay({})
        self.assertEqual(relay.delivered_here, [])
        self.assertEqual(os.listdir(self.dir), [])

    def test_pending_state_is_written_before_the_next_attempt(self):
        relay = self.relay({"bob@b.test": [(421, "4.4.2 closing")]})
        qid = self.enqueue(relay)
        [entry] = QueueStorage(self.dir, writer=SyncWriter()).load()
        self.assertEqual(entry.id, qid)
        self.assertEqual(entry.recipients[0].state, PENDING)
        self.assertEqual(entry.recipients[0].reply, "4.4.2 closing")
        self.assertEqual(entry.attempts, 1)


class OptionTests(unittest.TestCase):
    def parse(self, *args):
        from twisted_mailhub import tap

        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_relay_options_parse(self):
        from twisted_mailhub.queue.component import _config

        options = self.parse(
            "--mx-override", "b.test=127.0.0.1:2525", "--mx-override", "*=10.0.0.1",
            "--retry-schedule", "1s,2s", "--queue-lifetime", "1h", "--delay-warning", "0", "--relay-port", "2526",
        )
        config = _config(options)
        self.assertEqual(config["overrides"], {"b.test": ("127.0.0.1", 2525), "*": ("10.0.0.1", 25)})
        self.assertEqual(config["schedule"].steps, [1, 2])
        self.assertEqual((config["lifetime"], config["delay_warning"], config["port"]), (3600, 0, 2526))
        defaults = _config(self.parse())
        self.assertEqual((defaults["schedule"].steps, defaults["lifetime"], defaults["delay_warning"]), ([300, 1800], 432000, 14400))
        self.assertIsNone(defaults["smarthost"])

    def test_bad_relay_options_are_usage_errors(self):
        from twisted.python.usage import UsageError

        for args in (
            ["--smarthost-auth", "u:p"],
            ["--smarthost", "relay.test:25", "--smarthost-auth", "nocolon"],
            ["--smarthost", "relay.test:99999"],
            ["--retry-schedule", "often"],
            ["--queue-lifetime", "0"],
            ["--mx-override", "b.test"],
            ["--dns-server", "x:y"],
            ["--relay-connections", "0"],
        ):
            self.assertRaises(UsageError, self.parse, *args)


class StopTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.storage = QueueStorage(temp_dir(self), writer=SyncWriter())

    def test_stop_waits_for_an_attempt_under_way_to_save_its_outcome(self):
        relay = FakeRelay(self.storage, self.clock, {"bob@b.test": [(250, "ok")]})
        relay.hold = defer.Deferred()
        relay.startService()
        self.successResultOf(relay.enqueue("alice@a.test", ["bob@b.test"], MESSAGE))
        self.clock.advance(0)
        stopped = relay.stopService()
        self.assertNoResult(stopped)
        relay.hold.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.storage.load(), [])  # the 250 was recorded, files gone

    def test_stop_gives_up_waiting_after_the_grace_period(self):
        relay = FakeRelay(self.storage, self.clock, {"bob@b.test": [(250, "ok")]}, stop_grace=5)
        relay.hold = defer.Deferred()
        relay.startService()
        self.successResultOf(relay.enqueue("alice@a.test", ["bob@b.test"], MESSAGE))
        self.clock.advance(0)
        stopped = relay.stopService()
        self.clock.advance(5)
        self.successResultOf(stopped)
        self.assertEqual(len(self.storage.load()), 1)  # still queued for next time
        relay.hold.callback(None)


def test_queue_list_of_a_data_folder_without_a_queue_says_so_not_empty(tmp_path, capsys):
    # A mistyped --data answered "queue is empty" and exit 0.
    from twisted_mailhub.queue.admin import main

    assert main(["--data", str(tmp_path / "no-such-data"), "list"]) == 1
    err = capsys.readouterr().err
    assert err == f"no queue at {tmp_path / 'no-such-data' / 'queue'} (is --data the hub's data folder?)\n"
    os.makedirs(tmp_path / "data" / "queue")
    assert main(["--data", str(tmp_path / "data"), "list"]) == 0
    assert capsys.readouterr().err == ""
