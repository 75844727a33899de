"""
Delivery status notifications (RFC 3461) at their edges: the parameters
as the SMTP session reads them (StringTransport), kept in the queue, passed
on by the relay client, and used by the relay (task.Clock, a scripted
delivery) and the DSN it writes (RFC 3464).
"""

from __future__ import annotations

import email
import email.policy
import json
import os

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from tests.test_queue import MESSAGE, FakeRelay, QueueCase, SyncWriter
from tests.test_queue_client import Session as ClientSession, job
from tests.test_smtp_server import Relay as HeldRelay
from tests.test_smtp_server import connect, cram_md5_login, hub, said  # noqa: F401 - hub is a fixture
from twisted_mailhub.queue.dsn import build_dsn
from twisted_mailhub.queue.storage import DELIVERED, FAILED, QueuedMessage, QueueStorage, Recipient, make_entry
from twisted_mailhub.smtp.dsn import (
    DSNSyntaxError,
    orcpt_for_wire,
    parse_envid,
    parse_notify,
    parse_orcpt,
    xtext_decode,
    xtext_encode,
)

# -- the parameters --------------------------------------------------------------


def test_notify_keywords_and_their_errors():
    assert parse_notify("never") == "NEVER"
    assert parse_notify("success,Failure,DELAY") == "SUCCESS,FAILURE,DELAY"
    for bad, words in [
        ("NEVER,SUCCESS", "NEVER cannot be combined"),
        ("FAILURE,FAILURE", "names a keyword twice"),
        ("", "must be NEVER, or SUCCESS"),
        ("SOMETIMES", "must be NEVER, or SUCCESS"),
        ("SUCCESS,", "must be NEVER, or SUCCESS"),
    ]:
        with pytest.raises(DSNSyntaxError, match=words):
            parse_notify(bad)


def test_xtext_round_trip_and_bad_xtext():
    assert xtext_decode("a+2Bb+3Dc", "ENVID") == "a+b=c"
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    with pytest.raises(DSNSyntaxError, match=r"'\+' must be followed by two hex digits"):
        xtext_decode("a+zz", "ENVID")
    with pytest.raises(DSNSyntaxError, match=r"'=' must be written \+3D"):
        xtext_decode("a=b", "ENVID")
    with pytest.raises(DSNSyntaxError, match="control or non-ASCII"):
        xtext_decode("a+0Ab", "ENVID")


def test_envid_and_orcpt_length_limits():
    assert parse_envid("x" * 100) == "x" * 100
    with pytest.raises(DSNSyntaxError, match="ENVID is 101 characters long; at most 100"):
        parse_envid("x" * 101)
    address = "rfc822;" + "b" * 480 + "@b.test"
    assert len(address) <= 500 and parse_orcpt(address) == address
    with pytest.raises(DSNSyntaxError, match="ORCPT is 501 characters long; at most 500"):
        parse_orcpt("rfc822;" + "b" * 487 + "@b.test")


def test_orcpt_forms_rfc822_and_utf8():
    assert parse_orcpt("RFC822;bob+2Bdesk@b.test") == "rfc822;bob+desk@b.test"
    assert orcpt_for_wire("rfc822;bob+desk@b.test") == "rfc822;bob+2Bdesk@b.test"
    # RFC 6533 §3: utf-8-addr-xtext always, utf-8-addr-unitext with SMTPUTF8.
    assert parse_orcpt("utf-8;j\\x{FC}rgen@b.test") == "utf-8;jürgen@b.test"
    assert parse_orcpt("utf-8;jürgen@b.test", utf8=True) == "utf-8;jürgen@b.test"
    with pytest.raises(DSNSyntaxError, match="give SMTPUTF8 in MAIL"):
        parse_orcpt("utf-8;jürgen@b.test")
    assert orcpt_for_wire("utf-8;jürgen@b.test") == "utf-8;j\\x{FC}rgen@b.test"
    with pytest.raises(DSNSyntaxError, match="addr-type;address"):
        parse_orcpt("bob@b.test")
    with pytest.raises(DSNSyntaxError, match="must be a mailbox"):
        parse_orcpt("rfc822;nobody")


# -- the SMTP session -----------------------------------------------------------


def test_ehlo_offers_dsn_on_every_listener(hub):
    for listener in ("smtp", "submission", "smtps"):
        proto, transport = connect(hub, listener)
        proto.dataReceived(b"EHLO client.test\r\n")
        assert b"250-DSN" in said(transport)


def _trust_the_test_client(hub):
    # connect() speaks from 192.0.2.7: NOTIFY=SUCCESS counts only from a
    # trusted network or after a login (--dsn-success-from trusted).
    from twisted_mailhub.hub import TrustedNetworks

    hub.trusted = TrustedNetworks("192.0.2.0/24")


def test_dsn_syntax_errors_are_501_with_what_is_wrong_and_the_session_goes_on(hub):
    _trust_the_test_client(hub)
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO client.test\r\n")
    transport.clear()
    cases = [
        (b"MAIL FROM:<x@ext.test> RET=BODY", b"501 5.5.4 Syntax: RET must be FULL or HDRS (RFC 3461 4.3)"),
        (b"MAIL FROM:<x@ext.test> RET=FULL RET=HDRS", b"501 5.5.4 Syntax: RET given twice in MAIL"),
        (b"MAIL FROM:<x@ext.test> SIZE=1 SIZE=2", b"501 5.5.4 Syntax: SIZE given twice in MAIL"),
        (b"MAIL FROM:<x@ext.test> ENVID=" + b"x" * 101, b"501 5.5.4 Syntax: ENVID is 101 characters long; at most 100 are allowed (RFC 3461 4.4)"),
        (b"MAIL FROM:<x@ext.test> ENVID=a+Zb", b"501 5.5.4 Syntax: ENVID is not valid xtext (RFC 3461 4): a '+' must be followed by two hex digits"),
        (b"MAIL FROM:<x@ext.test> NOTIFY=NEVER", b"555 5.5.4 NOTIFY belongs to RCPT, not MAIL (RFC 3461 4)"),
        (b"MAIL FROM:<x@ext.test> RET=HDRS ENVID=QQ+2B1", b"250 2.1.0 Ok"),
        (b"RCPT TO:<alice@localhost> NOTIFY=NEVER,DELAY", b"501 5.5.4 Syntax: NOTIFY=NEVER cannot be combined with other keywords (RFC 3461 4.1)"),
        (b"RCPT TO:<alice@localhost> NOTIFY=DELAY NOTIFY=FAILURE", b"501 5.5.4 Syntax: NOTIFY given twice in RCPT"),
        (b"RCPT TO:<alice@localhost> ORCPT=rfc822;" + b"a" * 500, b"501 5.5.4 Syntax: ORCPT is 507 characters long; at most 500 are allowed (RFC 3461 4.2)"),
        (b"RCPT TO:<alice@localhost> ORCPT=rfc822;a=b@c", b"501 5.5.4 Syntax: ORCPT's address is not valid xtext (RFC 3461 4): '=' must be written +3D"),
        (b"RCPT TO:<alice@localhost> XYZZY=1", b"555 5.5.4 Unsupported option: XYZZY"),
        (b"RCPT TO:<alice@localhost> RET=FULL", b"555 5.5.4 RET belongs to MAIL, not RCPT"),
        (b"RCPT TO:<alice@localhost> NOTIFY=success,failure ORCPT=rfc822;alice@localhost", b"250 2.1.5 Ok"),
        (b"NOOP", b"250 2.0.0 Ok"),
    ]
    for command, reply in cases:
        proto.dataReceived(command + b"\r\n")
        assert said(transport) == [reply], command
    assert proto.dsn_ret == "HDRS" and proto.dsn_envid == "QQ+1"
    [verdict] = proto.recipients
    assert (verdict.notify, verdict.orcpt) == ("SUCCESS,FAILURE", "rfc822;alice@localhost")


def test_a_utf8_orcpt_as_utf8_needs_smtputf8_in_mail(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<x@ext.test>\r\n")
    transport.clear()
    proto.dataReceived("RCPT TO:<alice@localhost> ORCPT=utf-8;jürgen@localhost\r\n".encode())
    assert said(transport) == [b"501 5.5.4 Syntax: ORCPT's utf-8 address has non-ASCII characters; write them \\x{HEX} or give SMTPUTF8 in MAIL (RFC 6533 4)"]
    proto.dataReceived(b"RCPT TO:<alice@localhost> ORCPT=utf-8;j\\x{FC}rgen@localhost\r\nRSET\r\nMAIL FROM:<x@ext.test> SMTPUTF8\r\n")
    assert said(transport) == [b"250 2.1.5 Ok", b"250 2.0.0 Ok", b"250 2.1.0 Ok"]
    proto.dataReceived("RCPT TO:<alice@localhost> ORCPT=utf-8;jürgen@localhost\r\n".encode())
    assert said(transport) == [b"250 2.1.5 Ok"]
    assert proto.recipients[0].orcpt == "utf-8;jürgen@localhost"


def test_notify_success_for_a_local_maildrop_gets_a_delivered_dsn(hub):
    _trust_the_test_client(hub)
    proto, transport = connect(hub)
    proto.dataReceived(
        b"EHLO client.test\r\nMAIL FROM:<bob@localhost> RET=FULL ENVID=trip+2B42\r\n"
        b"RCPT TO:<alice@localhost> NOTIFY=SUCCESS ORCPT=rfc822;alice@localhost\r\nDATA\r\n"
        b"Subject: are you there?\r\n\r\nhello\r\n.\r\n"
    )
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    [message] = [hub.store.account("alice@localhost").folder("INBOX").read(i.uid) for i in hub.store.account("alice@localhost").folder("INBOX").messages()]
    assert b"Subject: are you there?" in message
    inbox = hub.store.account("bob@localhost").folder("INBOX")
    [info] = inbox.messages()
    report = email.message_from_bytes(inbox.read(info.uid), policy=email.policy.default)
    assert report["Subject"] == "Successful Mail Delivery Report"
    text, status, returned = report.get_payload()
    status = status.as_string()
    assert "Original-Envelope-Id: trip+42" in status
    assert "Original-Recipient: rfc822; alice@localhost" in status
    assert "Final-Recipient: rfc822; alice@localhost" in status
    assert "Action: delivered" in status and "Status: 2.0.0" in status
    # RET=FULL is for failures; a success returns the header (RFC 3461 §4.3).
    assert returned.get_content_type() == "text/rfc822-headers"


def test_a_delivered_report_that_cannot_be_stored_refuses_the_message_and_keeps_no_copy(hub):
    # The report is durable before the 250, or there is no 250 (and no copy,
    # so the client's retry does not duplicate the message).
    _trust_the_test_client(hub)
    real = hub.store.deliver

    def deliver(address, message):
        if address == "bob@localhost":
            return defer.fail(OSError(5, "Input/output error"))
        return real(address, message)

    hub.store.deliver = deliver
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<bob@localhost>\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS\r\nDATA\r\nhi\r\n.\r\n")
    assert said(transport)[-1] == b"451 4.3.0 The delivery report asked for (NOTIFY=SUCCESS) could not be stored; message not kept, try again later"
    assert hub.store.account("alice@localhost").folder("INBOX").messages() == []
    hub.store.deliver = real
    proto.dataReceived(b"MAIL FROM:<bob@localhost>\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS\r\nDATA\r\nhi\r\n.\r\n")
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    assert len(hub.store.account("alice@localhost").folder("INBOX").messages()) == 1
    assert len(hub.store.account("bob@localhost").folder("INBOX").messages()) == 1


def test_a_delivered_report_goes_in_the_relayed_copys_envelope_never_stored_before_it(hub):
    # A report stored before the relayed copy could not always be taken
    # back when queueing that copy fails (a queue another worker runs, the
    # PostgreSQL queue): the client was told 451 and the sender got a
    # "delivered". The report is now owed in the relayed copy's envelope.
    from twisted_mailhub.queue.storage import DELIVERED

    _trust_the_test_client(hub)
    hub.relay = relay = HeldRelay()
    proto, transport = connect(hub)
    for outcome in ("fails", "works"):
        proto.dataReceived(
            b"EHLO client.test\r\nMAIL FROM:<bob@localhost>\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS ORCPT=rfc822;alice@localhost\r\n"
        )
        # (a relayed recipient: this client may not relay, so its verdict is made by hand)
        proto.recipients.append(attr_evolve(proto.recipients[0], address="pal@example.com", kind="relay", notify="FAILURE", orcpt=""))
        proto.dataReceived(b"DATA\r\nhi\r\n.\r\n")
        sender, rcpts, message, d = relay.calls[-1]
        assert rcpts == ["pal@example.com"]
        [owed] = relay.kwargs[-1]["delivered"]
        assert (owed.address, owed.state, owed.owed, owed.notify, owed.orcpt) == ("alice@localhost", DELIVERED, "delivered", "SUCCESS", "rfc822;alice@localhost")
        # (before: the report was already in bob's INBOX here)
        assert hub.store.account("bob@localhost").folder("INBOX").messages() == []
        if outcome == "fails":
            d.errback(OSError(28, "No space left on device"))
            assert said(transport)[-1].startswith(b"45")
            assert hub.store.account("alice@localhost").folder("INBOX").messages() == []
        else:
            d.callback("Q1")
            assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
            assert len(hub.store.account("alice@localhost").folder("INBOX").messages()) == 1
    assert hub.store.account("bob@localhost").folder("INBOX").messages() == []  # the queue makes it


def attr_evolve(verdict, **changes):
    import attr

    return attr.evolve(verdict, **changes)


def test_notify_success_from_an_untrusted_client_is_not_honoured(hub):
    # Backscatter: anyone on the MX port may forge MAIL FROM. SUCCESS is
    # taken out of NOTIFY (the rest kept); the RCPT reply says so.
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<bob@localhost>\r\n")
    transport.clear()
    proto.dataReceived(b"RCPT TO:<alice@localhost> NOTIFY=SUCCESS,FAILURE\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS\r\n")
    assert said(transport) == [b"250 2.1.5 Ok (NOTIFY=SUCCESS is not honoured for this client: log in to ask for a delivery report)"] * 2
    assert [r.notify for r in proto.recipients] == ["FAILURE", "NEVER"]
    proto.dataReceived(b"DATA\r\nhi\r\n.\r\n")
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    assert hub.store.account("bob@localhost").folder("INBOX").messages() == []
    # The same client after a login is honoured (submission, or AUTH on the MX).
    proto, transport = connect(hub, "submission", require_auth=True)
    proto.dataReceived(b"EHLO laptop\r\n")
    transport.clear()
    cram_md5_login(proto, transport)
    proto.dataReceived(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@localhost> NOTIFY=SUCCESS,FAILURE\r\n")
    assert said(transport) == [b"250 2.1.0 Ok", b"250 2.1.5 Ok"]
    assert proto.recipients[0].notify == "SUCCESS,FAILURE"


def test_dsn_success_from_anyone_and_nobody(hub):
    from twisted_mailhub.hub import TrustedNetworks

    for who, wanted in [("anyone", "SUCCESS"), ("nobody", "NEVER")]:
        hub.trusted = TrustedNetworks("192.0.2.0/24")
        proto, transport = connect(hub, dsn_success_from=who)
        proto.dataReceived(b"EHLO client.test\r\nMAIL FROM:<bob@localhost>\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS\r\n")
        assert proto.recipients[0].notify == wanted, who


def test_without_notify_success_no_dsn_for_a_local_maildrop(hub):
    proto, transport = connect(hub)
    proto.dataReceived(
        b"EHLO client.test\r\nMAIL FROM:<bob@localhost>\r\nRCPT TO:<alice@localhost> NOTIFY=FAILURE\r\nDATA\r\nhi\r\n.\r\n"
        b"MAIL FROM:<>\r\nRCPT TO:<alice@localhost> NOTIFY=SUCCESS\r\nDATA\r\nhi\r\n.\r\n"
    )
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    assert len(hub.store.account("alice@localhost").folder("INBOX").messages()) == 2
    # Neither NOTIFY=FAILURE nor the null sender earns a success DSN.
    assert hub.store.account("bob@localhost").folder("INBOX").messages() == []


def test_relayed_recipients_carry_their_dsn_parameters_into_the_queue(hub):
    hub.relay = relay = HeldRelay()
    proto, transport = connect(hub, "submission", require_auth=True)
    proto.dataReceived(b"EHLO laptop\r\n")
    transport.clear()
    cram_md5_login(proto, transport)
    proto.dataReceived(
        b"MAIL FROM:<alice@localhost> RET=HDRS ENVID=e1\r\nRCPT TO:<pen.pal@example.com> NOTIFY=DELAY,FAILURE ORCPT=rfc822;pal@example.com\r\n"
        b"RCPT TO:<other@example.com>\r\nDATA\r\nSubject: x\r\n\r\ny\r\n.\r\n"
    )
    [call] = relay.calls
    sender, recipients, message, d = call
    assert recipients == ["pen.pal@example.com", "other@example.com"]
    assert relay.kwargs == [{"ret": "HDRS", "envid": "e1", "notify": {"pen.pal@example.com": ("DELAY,FAILURE", "rfc822;pal@example.com"), "other@example.com": ("", "")}}]
    d.callback("Q1")


@pytest.fixture(autouse=True)
def _relay_keeps_kwargs(monkeypatch):
    def enqueue(self, sender, recipients, message, **kwargs):
        self.__dict__.setdefault("kwargs", []).append(kwargs)
        d = defer.Deferred()
        self.calls.append((sender, recipients, message, d))
        return d

    monkeypatch.setattr(HeldRelay, "enqueue", enqueue)


# -- the queue -------------------------------------------------------------------


class QueueTests(QueueCase):
    def enqueue(self, relay, notify, ret="", envid="", recipients=("bob@b.test",)):
        qid = self.successResultOf(relay.enqueue("alice@a.test", list(recipients), MESSAGE, ret=ret, envid=envid, notify=notify))
        self.clock.advance(0)
        return qid

    def test_parameters_survive_a_reload_and_old_envelopes_still_load(self):
        entry = make_entry("alice@a.test", ["bob@b.test"], 3, now=1, ret="FULL", envid="e", notify={"bob@b.test": ("NEVER", "rfc822;b@b.test")})
        self.successResultOf(self.storage.add(entry, b"abc"))
        [loaded] = QueueStorage(self.dir, writer=SyncWriter()).load()
        self.assertEqual(loaded, entry)
        self.assertEqual((loaded.ret, loaded.recipients[0].notify), ("FULL", "NEVER"))
        # An envelope written before DSN was offered has none of the new keys.
        old = json.loads(entry.to_json())
        for key in ("ret", "envid"):
            del old[key]
        for r in old["recipients"]:
            del r["notify"], r["orcpt"]
        back = QueuedMessage.from_json(json.dumps(old).encode())
        self.assertEqual((back.ret, back.envid, back.recipients[0].notify, back.recipients[0].orcpt), ("", "", "", ""))
        self.assertTrue(back.recipients[0].wants("FAILURE") and back.recipients[0].wants("DELAY"))
        self.assertFalse(back.recipients[0].wants("SUCCESS"))

    def test_the_queue_listing_shows_the_parameters(self):
        from twisted_mailhub.queue.admin import format_entry

        entry = make_entry("alice@a.test", ["bob@b.test", "eve@b.test"], 3, now=1, ret="HDRS", envid="e 1", notify={"bob@b.test": ("SUCCESS,DELAY", "")})
        listing = format_entry(entry, 61)
        self.assertIn("from <alice@a.test>  RET=HDRS  ENVID=e 1  queued 1m ago", listing)
        self.assertIn("<bob@b.test> NOTIFY=SUCCESS,DELAY pending", listing)
        self.assertIn("<eve@b.test> pending", listing)

    def test_notify_never_and_notify_without_failure_get_no_bounce(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")], "eve@b.test": [(550, "5.1.1 no")], "dan@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, {"bob@b.test": ("NEVER", ""), "eve@b.test": ("DELAY", "")}, recipients=("bob@b.test", "eve@b.test", "dan@b.test"))
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"Final-Recipient: rfc822; dan@b.test", dsn)
        report = dsn.split(b"text/rfc822-headers")[0]
        self.assertNotIn(b"bob@b.test", report)
        self.assertNotIn(b"eve@b.test", report)
        self.assertEqual(relay.entries, {})

    def test_only_never_gets_no_bounce_at_all(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, {"bob@b.test": ("NEVER", "")})
        self.assertEqual(relay.delivered_here, [])
        self.assertEqual(relay.entries, {})
        self.assertEqual(os.listdir(self.dir), [])

    def test_ret_full_returns_the_whole_message_with_the_envelope_id_and_orcpt(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, {"bob@b.test": ("FAILURE", "rfc822;robert@b.test")}, ret="FULL", envid="id 7")
        [(to, dsn)] = relay.delivered_here
        report = email.message_from_bytes(dsn, policy=email.policy.default)
        _, status, returned = report.get_payload()
        self.assertIn("Original-Envelope-Id: id 7", status.as_string())
        self.assertIn("Original-Recipient: rfc822; robert@b.test\nFinal-Recipient: rfc822; bob@b.test", status.as_string())
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertTrue(dsn.rstrip().endswith(b"--") and b"At noon.\r\n.dot line\r\n" in dsn)

    def test_ret_full_of_a_large_message_returns_its_header_and_says_so(self):
        from twisted_mailhub.queue import dsn as dsn_module

        self.patch(dsn_module, "FULL_RETURN_MOST", len(MESSAGE) - 1)
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, {}, ret="FULL")
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"text/rfc822-headers", dsn)
        self.assertIn(b"only its header is returned", dsn)
        self.assertNotIn(b"At noon.", dsn)

    def test_ret_hdrs_returns_the_header_only(self):
        relay = self.relay({"bob@b.test": [(550, "5.1.1 no")]})
        self.enqueue(relay, {}, ret="HDRS")
        [(to, dsn)] = relay.delivered_here
        self.assertIn(b"text/rfc822-headers", dsn)
        self.assertNotIn(b"At noon.", dsn)

    def test_delay_dsn_once_only_for_those_that_asked_for_delay(self):
        relay = self.relay(
            {"bob@b.test": [(451, "4.3.0 busy")], "eve@b.test": [(451, "4.3.0 busy")], "dan@b.test": [(451, "4.3.0 busy")]},
            delay_warning=600,
            schedule=__import__("twisted_mailhub.queue.schedule", fromlist=["RetrySchedule"]).RetrySchedule([300]),
        )
        self.enqueue(relay, {"bob@b.test": ("DELAY", ""), "eve@b.test": ("FAILURE", "")}, recipients=("bob@b.test", "eve@b.test", "dan@b.test"))
        self.clock.advance(300)
        self.assertEqual(relay.delivered_here, [])
        self.clock.advance(300)
        [(to, warning)] = relay.delivered_here
        self.assertIn(b"Action: delayed", warning)
        self.assertIn(b"Final-Recipient: rfc822; bob@b.test", warning)
        self.assertIn(b"Final-Recipient: rfc822; dan@b.test", warning)  # no NOTIFY: as before
        self.assertNotIn(b"eve@b.test", warning.split(b"text/rfc822-headers")[0])
        self.clock.advance(3000)
        self.assertEqual(len(relay.delivered_here), 1)

    def test_success_is_relayed_when_the_next_hop_has_no_dsn_and_silent_when_it_has(self):
        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")], "eve@b.test": [(250, "2.0.0 ok")]})
        FakeRelay_send = relay._send

        async def send(hops, jobs, labels):
            jobs = await FakeRelay_send(hops, jobs, labels)
            for j in jobs:
                for r, o in list(j.outcomes.items()):
                    j.outcomes[r] = type(o)(o.code, o.reply, o.remote, hop_dsn=(r == "eve@b.test"))
            return jobs

        relay._send = send
        self.enqueue(relay, {"bob@b.test": ("SUCCESS", ""), "eve@b.test": ("SUCCESS", "")}, recipients=("bob@b.test", "eve@b.test"))
        [(to, dsn)] = relay.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Action: relayed", dsn)
        self.assertIn(b"Final-Recipient: rfc822; bob@b.test", dsn)
        self.assertIn(b"Remote-MTA: dns; mx.b.test", dsn)
        self.assertNotIn(b"eve@b.test", dsn.split(b"text/rfc822-headers")[0])

    def test_success_for_a_local_recipient_of_the_queue_is_delivered(self):
        relay = self.relay({})
        self.enqueue(relay, {"carol@a.test": ("SUCCESS", "")}, recipients=("carol@a.test",))
        [(to1, copy), (to2, dsn)] = relay.delivered_here
        self.assertEqual((to1, to2), ("carol@a.test", "alice@a.test"))
        self.assertIn(b"Action: delivered", dsn)

    def test_a_success_report_that_cannot_be_stored_keeps_the_message_until_it_is(self):
        from twisted_mailhub.queue.schedule import RetrySchedule

        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")]}, schedule=RetrySchedule([60]))
        real = relay.deliver_local
        tries = []

        def deliver_local(address, message):
            tries.append(address)
            if len(tries) == 1:
                return defer.fail(OSError(28, "No space left on device"))
            return real(address, message)

        relay.deliver_local = deliver_local
        qid = self.enqueue(relay, {"bob@b.test": ("SUCCESS", "")})
        # Delivered, the report not stored: still owed, on disk, not sent again.
        self.assertEqual(relay.delivered_here, [])
        [entry] = QueueStorage(self.dir, writer=SyncWriter()).load()
        self.assertEqual((entry.id, entry.recipients[0].state, entry.recipients[0].owed), (qid, DELIVERED, "relayed"))
        self.assertEqual(entry.next_attempt, self.clock.seconds() + 60)  # when it is tried again, saved too (PostgreSQL reads it)
        self.clock.advance(60)
        [(to, dsn)] = relay.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Action: relayed", dsn)
        self.assertEqual(len(relay.sent), 1)  # the message went once
        self.assertEqual((relay.entries, os.listdir(self.dir)), ({}, []))

    def test_a_crash_between_the_outcome_and_the_report_does_not_lose_the_report(self):
        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")]})
        hang = defer.Deferred()
        relay.deliver_local = lambda address, message: hang  # the process dies while storing it
        self.addCleanup(lambda: hang.called or hang.errback(OSError("the process is gone")))
        self.enqueue(relay, {"bob@b.test": ("SUCCESS", "")})
        self.assertEqual(len(relay.sent), 1)
        # The restart: a new queue on the same files.
        after = FakeRelay(QueueStorage(self.dir, writer=SyncWriter()), self.clock, {"bob@b.test": [(250, "2.0.0 ok")]})
        after.startService()
        self.addCleanup(after.stopService)
        self.clock.advance(0)
        [(to, dsn)] = after.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Action: relayed", dsn)
        self.assertEqual(after.sent, [])  # the message is not sent again
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_report_owed_in_a_relayed_copys_envelope_is_made_at_its_first_attempt_and_once(self):
        # The SMTP session's success DSN for its local copies rides in the
        # relayed copy's envelope (enqueue's delivered=): made when the
        # queue first takes the message, before a slow next hop answers;
        # that recipient is never sent to.
        from twisted_mailhub.queue.storage import DELIVERED, Recipient

        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")]})
        relay.hold = defer.Deferred()  # the next hop is slow
        owed = Recipient("carol@a.test", DELIVERED, 250, "2.0.0 delivered to maildrop", "mx.a.test", notify="SUCCESS", owed="delivered")
        self.successResultOf(relay.enqueue("alice@a.test", ["bob@b.test"], MESSAGE, notify={"bob@b.test": ("FAILURE", "")}, delivered=[owed]))
        self.clock.advance(0)
        [(to, dsn)] = relay.delivered_here
        self.assertEqual(to, "alice@a.test")
        self.assertIn(b"Action: delivered", dsn)
        self.assertIn(b"Final-Recipient: rfc822; carol@a.test", dsn)
        self.assertEqual(relay.sent, [])  # (still waiting for the next hop)
        relay.hold.callback(None)
        self.clock.advance(0)
        self.assertEqual(relay.sent[0][2], ("bob@b.test",))
        self.assertEqual(len(relay.delivered_here), 1)  # made once
        self.assertEqual(os.listdir(self.dir), [])

    def test_the_null_sender_never_gets_a_dsn(self):
        relay = self.relay({"bob@b.test": [(250, "2.0.0 ok")]})
        self.successResultOf(relay.enqueue("", ["bob@b.test"], MESSAGE, notify={"bob@b.test": ("SUCCESS", "")}))
        self.clock.advance(0)
        self.assertEqual(relay.delivered_here, [])


# -- the relay client --------------------------------------------------------------


class ClientTests(unittest.TestCase):
    def dsn_job(self):
        j = job(recipients=("bob@b.test", "eve@b.test"))
        j.ret, j.envid = "HDRS", "id+1 x"
        j.dsn = {"bob@b.test": ("SUCCESS,FAILURE", "rfc822;robert+x@b.test")}
        return j

    def test_parameters_go_on_when_the_next_hop_offers_dsn(self):
        j = self.dsn_job()
        s = ClientSession([j])
        s.greet(b"250-mx.b.test\r\n250-DSN\r\n250 8BITMIME\r\n")
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test> RET=HDRS ENVID=id+2B1+20x\r\n")
        s.reply(b"250 ok\r\n")
        self.assertEqual(s.sent(), b"RCPT TO:<bob@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;robert+2Bx@b.test\r\n")
        s.reply(b"250 ok\r\n")
        self.assertEqual(s.sent(), b"RCPT TO:<eve@b.test>\r\n")
        s.reply(b"250 ok\r\n")
        self.assertEqual(s.sent(), b"DATA\r\n")
        s.reply(b"354 go\r\n")
        s.sent()
        s.reply(b"250 2.0.0 queued\r\n")
        self.assertTrue(j.outcomes["bob@b.test"].hop_dsn)

    def test_no_parameters_when_the_next_hop_does_not_offer_dsn(self):
        j = self.dsn_job()
        s = ClientSession([j])
        s.greet(b"250-mx.b.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        self.assertEqual(s.sent(), b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<eve@b.test>\r\nDATA\r\n")
        s.reply(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        s.sent()
        s.reply(b"250 2.0.0 queued\r\n")
        self.assertFalse(j.outcomes["bob@b.test"].hop_dsn)


# -- the report --------------------------------------------------------------------


def test_a_report_on_utf8_addresses_is_a_global_one_rfc_6533():
    entry = make_entry("alice@a.test", ["jürgen@b.test"], 3, now=1)
    r = Recipient("jürgen@b.test", FAILED, 550, "5.1.1 no", orcpt="utf-8;jürgen@b.test")
    dsn = build_dsn(entry, [r], MESSAGE, "mx.a.test", 2)
    report = email.message_from_bytes(dsn, policy=email.policy.default)
    _, status, returned = report.get_payload()
    # RFC 6533 §6: message/global-delivery-status with utf-8 addresses as
    # they are (no xtext), the returned header as message/global-headers.
    assert status.get_content_type() == "message/global-delivery-status"
    assert report.get_param("report-type") == "global-delivery-status"  # RFC 6522 §3: the second part's subtype
    assert status["Content-Transfer-Encoding"] == "8bit"
    assert "Original-Recipient: utf-8; jürgen@b.test\r\nFinal-Recipient: utf-8; jürgen@b.test\r\n".encode() in dsn
    assert b"\\x{" not in dsn
    assert returned.get_content_type() == "message/global-headers"
    # Only the ORCPT in UTF-8 is enough; an ASCII recipient stays rfc822.
    bob = Recipient("bob@b.test", FAILED, 550, "5.1.1 no", orcpt="utf-8;bøb@b.test")
    dsn = build_dsn(make_entry("alice@a.test", ["bob@b.test"], 3, now=1), [bob], MESSAGE, "mx.a.test", 2)
    assert b"message/global-delivery-status" in dsn
    assert "Original-Recipient: utf-8; bøb@b.test\r\nFinal-Recipient: rfc822; bob@b.test\r\n".encode() in dsn
    # All ASCII: the plain forms.
    plain = build_dsn(make_entry("alice@a.test", ["bob@b.test"], 3, now=1), [Recipient("bob@b.test", FAILED, 550, "5.1.1 no", orcpt="rfc822;bob@b.test")], MESSAGE, "mx.a.test", 2)
    assert b"Content-Type: message/delivery-status\r\n" in plain and b"text/rfc822-headers" in plain and plain.isascii()
    assert b"report-type=delivery-status;" in plain


def test_relayed_and_delivered_reports_say_so_in_words():
    entry = make_entry("alice@a.test", ["bob@b.test"], 3, now=1)
    r = Recipient("bob@b.test", DELIVERED, 250, "2.0.0 ok", "mx.b.test[127.0.0.1]:25")
    relayed = build_dsn(entry, [r], MESSAGE, "mx.a.test", 2, action="relayed")
    assert b"does not offer delivery status notifications" in relayed and b"Status: 2.0.0" in relayed
    delivered = build_dsn(entry, [r], MESSAGE, "mx.a.test", 2, action="delivered")
    assert b"delivered to the mailboxes" in delivered and b"Action: delivered" in delivered
