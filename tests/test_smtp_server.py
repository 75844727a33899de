# -*- test-case-name: tests.test_smtp_server -*-
"""
The SMTP protocol's edges without sockets: StringTransport for the wire,
task.Clock for time, a memory store or a hand-fired Deferred for delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import base64

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.filters import Reject, Rewrite
from twisted_mailhub.hub import Hub
from twisted_mailhub.smtp import component
from twisted_mailhub.smtp.delivery import Session, add_submission_headers
from twisted_mailhub.smtp.server import MAX_LINE, MailhubSMTPFactory
from twisted_mailhub.store.memory import MemoryStore


class HeldStore:
    """A store whose deliveries wait until the test fires them."""

    def __init__(self):
        self.pending = []

    def deliver(self, address, message):
        d = defer.Deferred()
        self.pending.append((address, message, d))
        return d


class Relay:
    def __init__(self):
        self.calls = []

    def enqueue(self, sender, recipients, message):
        d = defer.Deferred()
        self.calls.append((sender, recipients, message, d))
        return d


@pytest.fixture
def hub(tmp_path):
    clock = task.Clock()
    accounts = AccountBook(["localhost"])
    accounts.add("alice", "secret")
    accounts.add("bob", "hungry")
    h = Hub(clock, {"max-message-size": 10_000}, accounts, MemoryStore(), str(tmp_path), "mail.test")
    component.install(h)
    return h


def connect(hub, listener="smtp", require_auth=False, **settings):
    factory = MailhubSMTPFactory(hub, listener, require_auth=require_auth, settings=settings)
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=None)
    transport.getPeer = lambda: type("Peer", (), {"host": "192.0.2.7", "port": 4000})()
    proto.makeConnection(transport)
    assert transport.value() == b"220 mail.test ESMTP\r\n"
    transport.clear()
    return proto, transport


def said(transport) -> list[bytes]:
    out = transport.value().split(b"\r\n")
    transport.clear()
    return [line for line in out if line]


def test_idle_timeout_is_five_minutes_then_421(hub):
    proto, transport = connect(hub)
    hub.reactor.advance(299)
    assert not transport.disconnecting
    proto.dataReceived(b"NOOP\r\n")
    hub.reactor.advance(299)
    assert not transport.disconnecting
    hub.reactor.advance(2)
    assert said(transport)[-1] == b"421 4.4.2 mail.test Error: timeout exceeded"
    assert transport.disconnecting


def test_client_trickling_a_command_is_cut_off(hub):
    proto, transport = connect(hub, command_timeout=120)
    for byte in b"EHLO " + b"x" * 20:
        proto.dataReceived(bytes([byte]))
        hub.reactor.advance(10)  # never idle long enough for the idle timeout
        if transport.disconnecting:
            break
    assert transport.disconnecting
    assert said(transport) == [b"421 4.4.2 mail.test Error: command took too long to send"]


def test_submission_client_that_never_authenticates_is_dropped(hub):
    proto, transport = connect(hub, "submission", require_auth=True, login_timeout=60)
    for _ in range(5):
        proto.dataReceived(b"NOOP\r\n")
        hub.reactor.advance(15)
    assert transport.disconnecting
    assert said(transport)[-1] == b"421 4.7.0 mail.test Error: too long without authentication"


def test_endless_line_is_discarded_as_it_arrives(hub):
    proto, transport = connect(hub)
    for _ in range(50):
        proto.dataReceived(b"y" * 100_000)
        assert len(proto.lines._buf) <= MAX_LINE
    proto.dataReceived(b"tail\r\nNOOP\r\n")
    assert said(transport) == [b"500 5.5.2 Error: line too long", b"250 2.0.0 Ok"]


def test_excess_of_an_oversized_message_is_not_kept(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
    transport.clear()
    for _ in range(100):
        proto.dataReceived(b"z" * 998 + b"\r\n")
        assert len(proto._data) < 12_000
    proto.dataReceived(b".\r\nNOOP\r\n")
    assert said(transport) == [b"552 5.3.4 Error: message too big for this hub", b"250 2.0.0 Ok"]
    assert hub.store.account("alice@localhost").folder("INBOX").messages() == []


LONG_LINE_REFUSAL = b"550 5.5.2 Error: message refused: a line of it is longer than 1000 octets with its line end (RFC 5321 4.5.3.1.6)"


def send_data(proto, transport, end=b"\r\n"):
    proto.dataReceived(b"EHLO x" + end + b"MAIL FROM:<a@example.org>" + end + b"RCPT TO:<alice@localhost>" + end + b"DATA" + end)
    transport.clear()


@pytest.mark.parametrize("end", [b"\r\n", b"\n"], ids=["CRLF", "bare LF (nc)"])
def test_a_text_line_of_998_octets_is_stored_and_one_of_999_refused_after_data(hub, end):
    # RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF.
    proto, transport = connect(hub)
    send_data(proto, transport, end)
    proto.dataReceived(b"Subject: s" + end + end + b"a" * 998 + end + b"." + end)
    assert said(transport)[0].startswith(b"250 2.0.0 Ok: queued as ")
    proto.dataReceived(b"MAIL FROM:<a@example.org>" + end + b"RCPT TO:<alice@localhost>" + end + b"DATA" + end)
    transport.clear()
    proto.dataReceived(b"Subject: s" + end + end + b"a" * 999 + end + b"." + end + b"NOOP" + end)
    assert said(transport) == [LONG_LINE_REFUSAL, b"250 2.0.0 Ok"]
    folder = hub.store.account("alice@localhost").folder("INBOX")
    [info] = folder.messages()  # the first only
    assert folder.read(info.uid).endswith(b"\r\n" + b"a" * 998 + b"\r\n")


def test_an_endless_data_line_is_not_kept_and_the_message_is_refused_at_its_end(hub):
    hub.max_message_size = 10_000_000
    proto, transport = connect(hub)
    send_data(proto, transport)
    proto.dataReceived(b"Subject: one line\r\n\r\n")
    for _ in range(100):  # 3 MB in one line
        proto.dataReceived(b"q" * 30_000)
        assert len(proto._data) < 2_000
    proto.dataReceived(b"\r\nmore\r\n.\r\nNOOP\r\n")
    assert said(transport) == [LONG_LINE_REFUSAL, b"250 2.0.0 Ok"]
    assert hub.store.account("alice@localhost").folder("INBOX").messages() == []


def test_a_long_line_is_found_however_the_input_is_split(hub):
    import random

    rng = random.Random(5321)
    hub.max_message_size = 10_000_000
    proto, transport = connect(hub)
    send_data(proto, transport)
    stored = 0
    for _ in range(300):
        lines = [b"t" * rng.choice([0, 1, 76, 499, 500, 501, 997, 998, 999, 1000, 2500]) for _ in range(rng.randint(1, 8))]
        message = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
        cuts = sorted(rng.sample(range(1, len(message)), min(len(message) - 1, rng.randint(0, 6))))
        for a, b in zip([0] + cuts, cuts + [len(message)]):
            proto.dataReceived(message[a:b])
        [reply] = said(transport)
        if max(map(len, lines)) > 998:
            assert reply == LONG_LINE_REFUSAL, lines
        else:
            assert reply.startswith(b"250 2.0.0 Ok: queued as "), lines
            stored += 1
        proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
        transport.clear()
    assert len(hub.store.account("alice@localhost").folder("INBOX").messages()) == stored > 50


# Messages as a client sends them after DATA (CRLF session), each ending in
# CRLF "." CRLF: what the hub answers and stores must not depend on how the
# reads cut them (a whole message in one read takes a shorter way).
ONE_READ_MESSAGES = {
    "plain": b"Subject: s\r\n\r\nbody\r\n.\r\n",
    "dot-stuffed lines": b"Subject: s\r\n\r\n..one dot\r\n...two dots\r\n.x\r\n.\r\n",
    "a first line that starts with a dot": b".Subject: s\r\n\r\nbody\r\n.\r\n",
    "a bare LF": b"Subject: s\r\n\r\nsmuggled\n.\nMAIL FROM:<x@y>\r\n.\r\n",
    "a bare CR": b"Subject: s\r\n\r\nbare\rCR\r\n.\r\n",
    "a CR before the line end": b"Subject: s\r\n\r\nx\r\r\n.\r\n",
    "a line of 999 octets": b"Subject: s\r\n\r\n" + b"a" * 999 + b"\r\n.\r\n",
    "a line of 998 octets": b"Subject: s\r\n\r\n" + b"a" * 998 + b"\r\n.\r\n",
    "over the size limit": b"Subject: s\r\n\r\n" + (b"b" * 98 + b"\r\n") * 101 + b".\r\n",
    "just under it": b"Subject: s\r\n\r\n" + (b"b" * 98 + b"\r\n") * 99 + b".\r\n",
    "a line of one dot first": b".\r\n",
}


def _after_trace(stored: bytes) -> bytes:
    """A stored copy without its Return-Path and Received fields (they hold the queue id and the time)."""
    i = stored.index(b"\r\n", stored.index(b"\r\n\tfor <") + 2)
    return stored[i + 2 :]


@pytest.mark.parametrize("name", list(ONE_READ_MESSAGES))
def test_a_message_in_one_read_is_answered_and_stored_as_in_pieces(hub, name):
    message = ONE_READ_MESSAGES[name]
    outcomes = []
    for cut in (None, 1, len(message) // 2, len(message) - 2):
        proto, transport = connect(hub)
        send_data(proto, transport)
        pieces = [message] if cut is None else [message[:cut], message[cut:]]
        for piece in pieces:
            proto.dataReceived(piece)
        proto.dataReceived(b"NOOP\r\n")
        replies = [reply.split(b" as ")[0] for reply in said(transport)]  # (queue ids differ)
        folder = hub.store.account("alice@localhost").folder("INBOX")
        stored = [_after_trace(folder.read(info.uid)) for info in folder.messages()]
        folder.expunge([info.uid for info in folder.messages()])
        outcomes.append((replies, stored))
    assert outcomes[0] == outcomes[1] == outcomes[2] == outcomes[3]
    if name == "dot-stuffed lines":
        assert outcomes[0][1] == [b"Subject: s\r\n\r\n.one dot\r\n..two dots\r\nx\r\n"]
    if name in ("a bare LF", "a bare CR", "a CR before the line end", "a line of 999 octets", "over the size limit"):
        assert outcomes[0][0][0].startswith((b"550", b"552")) and outcomes[0][1] == []
    else:
        assert outcomes[0][0][0] == b"250 2.0.0 Ok: queued" and len(outcomes[0][1]) == 1


def test_end_of_data_split_across_packets(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
    transport.clear()
    for piece in (b"Subject: s\r\n\r\nbody\r", b"\n", b".", b"\r", b"\n"):
        proto.dataReceived(piece)
    [reply] = said(transport)
    assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    folder = hub.store.account("alice@localhost").folder("INBOX")
    [info] = folder.messages()
    assert folder.read(info.uid).endswith(b"\r\nSubject: s\r\n\r\nbody\r\n")


def test_empty_message(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n.\r\n")
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    folder = hub.store.account("alice@localhost").folder("INBOX")
    [info] = folder.messages()
    assert folder.read(info.uid).startswith(b"Return-Path: <>\r\nReceived: from x (unknown [192.0.2.7])")


def test_250_only_after_the_store_says_durable_and_later_input_waits(hub):
    hub.store = store = HeldStore()
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    transport.clear()
    proto.dataReceived(b"hi\r\n.\r\nNOOP\r\n")
    assert transport.value() == b""  # neither the 250 nor the NOOP's reply yet
    assert [a for a, _, _ in store.pending] == ["alice@localhost", "bob@localhost"]
    store.pending[0][2].callback("k1")
    assert transport.value() == b""
    store.pending[1][2].callback("k2")
    lines = said(transport)
    assert lines[0].startswith(b"250 2.0.0 Ok: queued as ") and lines[1:] == [b"250 2.0.0 Ok"]


def test_store_failure_is_451_and_the_session_goes_on(hub):
    hub.store = store = HeldStore()
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nhi\r\n.\r\n")
    transport.clear()
    store.pending[0][2].errback(OSError("disk full"))
    assert said(transport) == [b"451 4.3.0 Error: local error in processing; message not stored"]
    proto.dataReceived(b"NOOP\r\n")
    assert said(transport) == [b"250 2.0.0 Ok"]


class SlowFilter:
    name = "slow"

    def __init__(self):
        self.waiting = []

    def rcpt_to(self, envelope, recipient):
        d = defer.Deferred()
        self.waiting.append((recipient, d))
        return d

    def end_of_data(self, envelope, message):
        if b"forbidden" in message:
            return Reject(550, "5.7.1 Not that")
        return Rewrite(b"X-Seen: yes\r\n" + message)


def test_pipelined_replies_stay_in_order_while_a_filter_answers_later(hub):
    """Twisted #8126/#8128: later commands must not overtake a pending one."""
    slow = SlowFilter()
    hub.filters = [slow]
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\n")
    transport.clear()
    proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert said(transport) == [b"250 2.1.0 Ok"]
    assert [r for r, _ in slow.waiting] == ["alice@localhost"]
    slow.waiting[0][1].callback(Reject(550, "5.7.1 alice is on holiday"))
    assert said(transport) == [b"550 5.7.1 alice is on holiday"]
    slow.waiting[1][1].callback(None)
    assert said(transport) == [b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"]
    proto.dataReceived(b"Subject: x\r\n\r\nfine\r\n.\r\n")
    assert said(transport)[0].startswith(b"250 2.0.0 Ok: queued as")
    folder = hub.store.account("bob@localhost").folder("INBOX")
    [info] = folder.messages()
    assert b"\r\nX-Seen: yes\r\nSubject: x\r\n" in folder.read(info.uid)
    assert hub.store.account("alice@localhost").folder("INBOX").messages() == []


def cram_md5_login(proto, transport, user=b"alice", password=b"secret"):
    proto.dataReceived(b"AUTH CRAM-MD5\r\n")
    challenge = base64.b64decode(said(transport)[0][4:])
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest().encode()
    proto.dataReceived(base64.b64encode(user + b" " + digest) + b"\r\n")
    return said(transport)


def test_cram_md5_works_without_tls_and_plain_does_not(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\n")
    ehlo = said(transport)
    assert b"250-AUTH CRAM-MD5" in ehlo and not any(b"PLAIN" in line for line in ehlo)
    proto.dataReceived(b"AUTH LOGIN\r\n")
    assert said(transport)[0].startswith(b"538 5.7.11")
    assert cram_md5_login(proto, transport) == [b"235 2.7.0 Authentication successful"]
    proto.dataReceived(b"AUTH CRAM-MD5\r\n")
    assert said(transport) == [b"503 5.5.1 Error: already authenticated"]


def test_authenticated_relay_goes_to_the_queue_and_250_waits_for_it(hub):
    hub.relay = relay = Relay()
    proto, transport = connect(hub, "submission", require_auth=True)
    proto.dataReceived(b"EHLO laptop\r\n")
    transport.clear()
    cram_md5_login(proto, transport)
    proto.dataReceived(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<pen.pal@example.com>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n")
    assert said(transport) == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.1.5 Ok", b"354 End data with <CR><LF>.<CR><LF>"]
    proto.dataReceived(b"Subject: hello\r\n\r\nfrom alice\r\n.\r\n")
    [(sender, recipients, message, d)] = relay.calls
    assert sender == "alice@localhost" and recipients == ["pen.pal@example.com"]
    assert message.startswith(b"Received: from laptop (unknown [192.0.2.7])\r\n\tby mail.test with ESMTPA id ")
    assert b"for <" not in message  # no Bcc leaks into relayed copies
    assert b"\r\nMessage-ID: <" in message and b"\r\nDate: " in message
    assert transport.value() == b""
    d.callback("Q123")
    assert said(transport)[0].startswith(b"250 2.0.0 Ok: queued as ")


def test_authenticated_foreign_recipient_without_a_queue_is_refused(hub):
    hub.relay = None
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\n")
    transport.clear()
    cram_md5_login(proto, transport)
    proto.dataReceived(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<b@example.com>\r\n")
    assert said(transport)[-1] == b"550 5.7.1 <b@example.com>: Relaying is not enabled on this hub"


def test_unauthenticated_foreign_recipient_never_reaches_the_queue(hub):
    hub.relay = Relay()
    proto, transport = connect(hub)
    proto.dataReceived(b"HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert said(transport)[-1] == b"554 5.7.1 <b@example.com>: Relay access denied"


def test_submission_headers_are_added_only_when_missing():
    assert add_submission_headers(b"Date: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", "h") == b"Date: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n"
    added = add_submission_headers(b"Subject: s\r\n\r\nDate: in the body\r\n", "h")
    assert added.startswith(b"Date: ") and b"\r\nMessage-ID: <" in added and added.endswith(b"@h>\r\nSubject: s\r\n\r\nDate: in the body\r\n")


@pytest.mark.parametrize(
    "esmtp,tls,auth,expected",
    [(False, False, None, "SMTP"), (True, False, None, "ESMTP"), (True, True, None, "ESMTPS"), (True, False, "a@b", "ESMTPA"), (True, True, "a@b", "ESMTPSA")],
)
def test_received_header_names_the_protocol(esmtp, tls, auth, expected):
    header = Session("helo.example", "::1", "mail.test", esmtp, tls, auth).received("ID1", "bob@localhost")
    assert header.startswith(b"Received: from helo.example (localhost [IPv6:::1])\r\n\tby mail.test with %s id ID1\r\n\tfor <bob@localhost>; " % expected.encode())
    assert header.endswith(b"\r\n")


def test_a_handler_bug_costs_one_reply_not_the_connection(hub, monkeypatch):
    proto, transport = connect(hub)

    def broken(rest):
        raise RuntimeError("bug")

    monkeypatch.setattr(proto, "smtp_NOOP", broken)
    proto.dataReceived(b"NOOP\r\nRSET\r\n")
    assert said(transport) == [b"451 4.3.0 Error: local error in processing", b"250 2.0.0 Ok"]
    assert not transport.disconnecting


def test_plain_with_a_foreign_authorization_identity_is_refused(hub):
    proto, transport = connect(hub)
    proto.startedTLS = True  # as if after STARTTLS
    proto.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0secret") + b"\r\n")
    assert said(transport) == [b"535 5.7.8 Error: authentication failed (authorization identity not allowed)"]
    proto.dataReceived(b"AUTH PLAIN\r\n")
    assert said(transport) == [b"334 "]
    proto.dataReceived(base64.b64encode(b"alice\0alice\0secret") + b"\r\n")
    assert said(transport) == [b"235 2.7.0 Authentication successful"]


def test_an_auth_response_line_too_long_ends_the_auth_command(hub):
    # RFC 4954 §6: 500 5.5.6; the next command is a command again, not read
    # as the SASL exchange's next response.
    proto, transport = connect(hub)
    proto.startedTLS = True  # as if after STARTTLS
    proto.dataReceived(b"AUTH PLAIN\r\n")
    assert said(transport) == [b"334 "]
    proto.dataReceived(b"A" * (MAX_LINE + 100) + b"\r\nNOOP\r\n")
    assert said(transport) == [b"500 5.5.6 Authentication Exchange line is too long", b"250 2.0.0 Ok"]
    assert not proto.authenticated


def test_a_packet_of_many_pipelined_commands_is_answered_in_full(hub):
    proto, transport = connect(hub)
    proto.dataReceived(b"NOOP\r\n" * 20_000 + b"RSET\r\nNOO")
    lines = said(transport)
    assert len(lines) == 20_001 and lines[-1] == b"250 2.0.0 Ok"
    assert proto.lines._buf[proto.lines._pos :] == b"NOO"
    proto.dataReceived(b"P\r\n")
    assert said(transport) == [b"250 2.0.0 Ok"]


def test_without_a_certificate_starttls_is_neither_offered_nor_crashes(hub, monkeypatch):
    def no_certificate(self):
        raise OSError("cannot write DATA/tls")

    monkeypatch.setattr(Hub, "tls", property(no_certificate))
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\n")
    assert not any(b"STARTTLS" in line for line in said(transport))
    proto.dataReceived(b"STARTTLS\r\nNOOP\r\n")
    assert said(transport) == [b"454 4.7.0 TLS not available", b"250 2.0.0 Ok"]


def test_failed_logins_are_answered_later_and_later_and_hold_back_pipelined_input(hub):
    proto, transport = connect(hub)
    for attempt in range(1, 4):
        assert cram_md5_login(proto, transport, password=b"wrong") == []
        proto.dataReceived(b"NOOP\r\n")  # pipelined behind the pending AUTH
        assert transport.value() == b""
        hub.reactor.advance(0.1 * attempt - 0.01)
        assert transport.value() == b""
        hub.reactor.advance(0.01)
        assert said(transport) == [b"535 5.7.8 Error: authentication failed", b"250 2.0.0 Ok"]
    # The right password still works at once.
    assert cram_md5_login(proto, transport) == [b"235 2.7.0 Authentication successful"]


def test_hand_typed_variants_of_mail_and_rcpt(hub):
    proto, transport = connect(hub)
    proto.dataReceived(
        b"helo  me\r\nmail\tfrom:<a@example.org>\r\nrset\r\nMail From : <a@example.org>\r\nrset\r\n"
        b"MAIL FROM:<a@example.org>SIZE=10\r\nrcpt to:<@relay.example:bob@localhost>\r\nrcpt to: alice\r\n"
    )
    assert said(transport) == [
        b"250 mail.test",
        b"250 2.1.0 Ok",
        b"250 2.0.0 Ok",
        b"250 2.1.0 Ok",  # "From : <...>", spaces around the colon
        b"250 2.0.0 Ok",
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"250 2.1.5 Ok",
    ]
    assert [r.address for r in proto.recipients] == ["bob@localhost", "alice@localhost"]


def test_random_input_never_breaks_the_session(hub):
    """Garbage, half commands and stray dots in any chunking: every reply
    is a well-formed SMTP reply and the session still answers NOOP."""
    import random

    rng = random.Random(5321)
    pieces = [
        b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<alice@localhost>\r\n", b"DATA\r\n", b".\r\n",
        b"\r\n", b"\n", b"\r", b".", b"..\r\n", b"AUTH CRAM-MD5\r\n", b"AUTH PLAIN\r\n", b"*\r\n",
        b"\xff\xfe", b"\x00", b"EHLO x\r\n", b"HELO\r\n", b"RSET\r\n", b"MAIL FROM:<\r\n", b"RCPT TO:<>\r\n",
        b"VRFY\r\n", b"x" * 5000, b"SIZE=99999999999\r\n", b"=\r\n", b"AAAA\r\n", b"STARTTLS\r\n",
    ]
    for _ in range(200):
        proto, transport = connect(hub)
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        i = 0
        while i < len(stream):
            n = rng.randint(1, 64)
            proto.dataReceived(stream[i : i + n])
            i += n
        # Leave any DATA or SASL exchange, then the session must answer.
        proto.dataReceived(b"\r\n.\r\n*\r\nRSET\r\nNOOP\r\n")
        replies = said(transport)
        assert all(line[:3].isdigit() and line[3:4] in (b" ", b"-") for line in replies), replies
        assert not any(line.startswith(b"451") for line in replies), replies  # no handler failed
        assert replies[-1] == b"250 2.0.0 Ok", replies[-5:]
        assert not transport.disconnecting


def test_filters_see_submission_headers_already_added(hub):
    seen = []

    class Signer:
        name = "signer"

        def end_of_data(self, envelope, message):
            seen.append((envelope.authenticated, message))

    hub.filters = [Signer()]
    proto, transport = connect(hub, "submission", require_auth=True)
    proto.dataReceived(b"EHLO laptop\r\n")
    transport.clear()
    cram_md5_login(proto, transport)
    proto.dataReceived(b"MAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n")
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as")
    [(who, message)] = seen
    assert who == "alice@localhost"
    assert message.startswith(b"From: <alice@localhost>\r\nDate: ") and b"\r\nMessage-ID: <" in message and message.endswith(b"\r\nSubject: s\r\n\r\nb\r\n")


def test_a_filter_cannot_fake_success_or_break_the_reply_format(hub):
    class Sloppy:
        name = "sloppy"

        def mail_from(self, envelope):
            return Reject(250, "5.7.1 looks\r\nlike\r\n250 success")

    hub.filters = [Sloppy()]
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO x\r\n")
    transport.clear()
    proto.dataReceived(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n")
    assert said(transport) == [b"550 5.7.1 looks like 250 success", b"250 2.0.0 Ok"]
    proto.dataReceived(b"RCPT TO:<alice@localhost>\r\n")
    assert said(transport) == [b"503 5.5.1 Error: need MAIL command"]


@pytest.mark.parametrize(
    "command, reply, stored_for",
    [
        # The common form (read without the expression), and its neighbours
        # that take the general way: each answered as RFC 5321 §4.1.2 reads it.
        (b"RCPT TO:<bob@localhost>", b"250 2.1.5 Ok", "bob@localhost"),
        (b"RCPT TO:< bob@localhost >", b"250 2.1.5 Ok", "bob@localhost"),
        (b"RCPT TO:<@relay.example:bob@localhost>", b"250 2.1.5 Ok", "bob@localhost"),
        (b"rcpt to: <bob@localhost>", b"250 2.1.5 Ok", "bob@localhost"),
        (b"RCPT TO:bob@localhost", b"250 2.1.5 Ok", "bob@localhost"),
        (b"RCPT TO:<bob@localhost> NOTIFY=NEVER", b"250 2.1.5 Ok", "bob@localhost"),  # RFC 3461
        (b"RCPT TO:<bob@localhost> XTRACE=1", b"555 5.5.4 Unsupported option: XTRACE", None),
        (b"RCPT TO:<bob<x@localhost>", b"501 5.5.4 Syntax: RCPT TO:<address>", None),
        (b"RCPT TO:<bob@localhost>>", b"555 5.5.4 Unsupported option: >", None),
        (b"RCPT TO:<>", b"553 5.1.3 <>: Recipient address rejected: bad address syntax", None),
    ],
)
def test_each_form_of_a_path_is_answered_and_delivered_as_written(hub, command, reply, stored_for):
    proto, transport = connect(hub)
    proto.dataReceived(b"EHLO me\r\n")
    transport.clear()
    proto.dataReceived(b"MAIL FROM:<judy@jbc.test>\r\n")
    assert said(transport) == [b"250 2.1.0 Ok"]
    proto.dataReceived(command + b"\r\n")
    assert said(transport) == [reply]
    proto.dataReceived(b"RCPT TO:<alice@localhost>\r\nDATA\r\n")
    proto.dataReceived(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
    assert said(transport)[-1].startswith(b"250 2.0.0 Ok: queued as ")
    for address in ("alice@localhost", "bob@localhost"):
        messages = hub.store.account(address).folder("INBOX").messages()
        expected = 1 if address in ("alice@localhost", stored_for) else 0
        assert len(messages) == expected, address


def _trace_lines(hub) -> list[bytes]:
    """The Received: line of each message in alice's INBOX, unfolded, oldest first, without its date."""
    folder = hub.store.account("alice@localhost").folder("INBOX")
    out = []
    for info in folder.messages():
        message = folder.read(info.uid)
        start = message.index(b"Received: ")
        field = message[start : message.index(b"\r\n", message.index(b"; ", start))]
        out.append(field.replace(b"\r\n\t", b" ").rsplit(b"; ", 1)[0])
    return out


def test_each_message_of_a_connection_is_traced_as_its_session_was_when_it_was_sent(hub):
    # A connection keeps one Session (with its trace line's head) from
    # message to message only while nothing in it changes: a new EHLO or
    # HELO name, STARTTLS, AUTH, SMTPUTF8 each show in the next message's
    # Received: line (RFC 5321 §4.4, RFC 3848, RFC 6531 §3.7.3).
    proto, transport = connect(hub)
    message = b"MAIL FROM:<a@example.org>%s\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\n"
    proto.dataReceived(b"EHLO one.example\r\n" + message % b"")
    proto.dataReceived(message % b"")
    proto.dataReceived(b"EHLO two.example\r\n" + message % b"")
    proto.dataReceived(message % b" SMTPUTF8")
    proto.dataReceived(b"HELO three.example\r\n" + message % b"")
    proto.startedTLS = True  # as if after STARTTLS
    proto.dataReceived(b"EHLO four.example\r\n" + message % b"")
    proto.dataReceived(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n" + message % b"")
    assert [line for line in said(transport) if line.startswith(b"250 2.0.0")] == [b"250 2.0.0 Ok: queued as " + line.split(b"id ")[1].split(b" ")[0] for line in _trace_lines(hub)]
    assert [line.split(b" id ")[0] + b" " + line.split(b" id ")[1].split(b" ", 1)[1] for line in _trace_lines(hub)] == [
        b"Received: from one.example (unknown [192.0.2.7]) by mail.test with ESMTP for <alice@localhost>",
        b"Received: from one.example (unknown [192.0.2.7]) by mail.test with ESMTP for <alice@localhost>",
        b"Received: from two.example (unknown [192.0.2.7]) by mail.test with ESMTP for <alice@localhost>",
        b"Received: from two.example (unknown [192.0.2.7]) by mail.test with UTF8SMTP for <alice@localhost>",
        b"Received: from three.example (unknown [192.0.2.7]) by mail.test with SMTP for <alice@localhost>",
        b"Received: from four.example (unknown [192.0.2.7]) by mail.test with ESMTPS for <alice@localhost>",
        b"Received: from four.example (unknown [192.0.2.7]) by mail.test with ESMTPSA for <alice@localhost>",
    ]


@pytest.mark.parametrize(
    "line,reply",
    [
        (b"NOOP   ", b"250 2.0.0 Ok"),
        (b"  NOOP", b"250 2.0.0 Ok"),
        (b"noop\tx ", b"250 2.0.0 Ok"),
        (b"RSET \t ", b"250 2.0.0 Ok"),
        (b"RSET x", b"501 5.5.4 Syntax: RSET"),
        (b"VRFY   bob@localhost  ", b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"),
        (b"   ", b"500 5.5.2 Error: bad syntax (empty command)"),
        (b"NO\x00OP", b"500 5.5.2 Error: bad syntax (the line contained a control character: ^@, a NUL)"),
        (b"FROB x", b"500 5.5.2 Error: command 'FROB' not recognized; try HELP"),
    ],
)
def test_a_command_line_s_blanks_and_case_are_read_as_rfc_5321_reads_them(hub, line, reply):
    # RFC 5321 §4.1.1: verbs in any case; blanks around the line and
    # between the verb and its argument are not part of either. Sent in a
    # read of its own (the usual way, taken without the line loop) and
    # after another line in one read (pipelined): the same reply.
    proto, transport = connect(hub)
    proto.dataReceived(line + b"\r\n")
    alone = said(transport)
    proto.dataReceived(b"NOOP\r\n" + line + b"\r\n")
    assert said(transport) == [b"250 2.0.0 Ok"] + alone
    assert alone == [reply]


def test_after_an_auth_the_next_unknown_command_is_not_echoed_in_either_path(hub):
    # The line after a refused AUTH may be a pasted password: not echoed,
    # whether it comes in a read of its own or behind the AUTH.
    proto, transport = connect(hub)
    proto.dataReceived(b"AUTH PLAIN\r\n")
    proto.dataReceived(b"c2VjcmV0\r\n")
    proto.dataReceived(b"AUTH PLAIN\r\nc2VjcmV0\r\nFROB\r\n")
    assert said(transport) == [
        b"538 5.7.11 Encryption required for requested authentication mechanism; use STARTTLS first",
        b"500 5.5.2 Error: command not recognized (not shown: after AUTH it may be a password); try HELP",
        b"538 5.7.11 Encryption required for requested authentication mechanism; use STARTTLS first",
        b"500 5.5.2 Error: command not recognized (not shown: after AUTH it may be a password); try HELP",
        b"500 5.5.2 Error: command 'FROB' not recognized; try HELP",
    ]
