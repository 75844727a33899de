# -*- test-case-name: tests.test_e2e_smtp -*-
"""
End-to-end: the real C{twistd -n mailhub} spoken to with smtplib, raw
sockets, swaks and curl; results checked in the Maildirs on disk.

One hub serves the whole module (each test marks its mail with its own
token), so the module stays fast.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import shutil
import smtplib
import subprocess
import uuid
from email.message import EmailMessage

import pytest

from tests.hubprocess import HubProcess, client_context
from tests.rawclient import piped
from tests.smtp_helpers import RawSMTP, stored_with, strip_trace

MAX_SIZE = 200_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubProcess(str(tmp_path_factory.mktemp("smtp-hub")), ["--max-message-size", str(MAX_SIZE), "--max-recipients", "3"])
    h.start()
    yield h
    h.stop()


def token() -> bytes:
    return uuid.uuid4().hex.encode("ascii")


def test_greeting_names_host_and_esmtp(hub):
    s = RawSMTP(hub.ports["smtp"])
    assert s.greeting == b"220 mail.test ESMTP"
    assert s.command(b"QUIT") == b"221 2.0.0 Bye"
    assert s.closed_by_server()


def test_telnet_style_session_with_bare_lf_delivers(hub):
    """Typed by hand with nc: lowercase, `MAIL FROM: <x>`, bare LF, a lone '.'."""
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    assert s.command(b"helo student.example", b"\n") == b"250 mail.test"
    assert s.command(b"mail from: <student@example.org>", b"\n") == b"250 2.1.0 Ok"
    assert s.command(b"rcpt to: bob", b"\n") == b"250 2.1.5 Ok"
    r = s.command(b"data", b"\n")
    assert r.startswith(b"354 ")
    s.send(b"Subject: by hand " + t + b"\nFrom: student@example.org\n\nHello Bob.\n..leading dot\n.\n")
    r = s.reply()
    assert r.startswith(b"250 2.0.0 Ok: queued as "), r
    # A second message in the same connection.
    assert s.command(b"mail from: student@example.org", b"\n") == b"250 2.1.0 Ok"
    assert s.command(b"rcpt to: <alice@localhost>", b"\n") == b"250 2.1.5 Ok"
    assert s.command(b"data", b"\n").startswith(b"354")
    s.send(b"Subject: second " + t + b"\n\nagain\n.\n")
    assert s.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert s.command(b"quit", b"\n") == b"221 2.0.0 Bye"
    [message] = stored_with(hub, "bob@localhost", t)
    assert message.startswith(b"Return-Path: <student@example.org>\r\nReceived: from student.example (localhost [127.0.0.1])\r\n\tby mail.test with SMTP id ")
    assert b"\r\n\tfor <bob@localhost>; " in message
    # Stored with CRLF line ends, dot-unstuffed.
    assert strip_trace(message) == b"Subject: by hand " + t + b"\r\nFrom: student@example.org\r\n\r\nHello Bob.\r\n.leading dot\r\n"
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert len(stored_with(hub, "alice@localhost", b"second " + t)) == 1


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["nc", "crlf"])
def test_session_piped_in_whole_and_half_closed_is_answered_in_full(hub, line_end):
    """
    `printf 'helo me\\n...quit\\n' | nc -N host 8025`: the whole session in
    one go, then the client shuts down its sending side. Every command is
    answered (the 250 comes after the disk flush) and the message stored.
    """
    t = token()
    session = [b"helo me", b"mail from: <student@example.org>", b"rcpt to: <bob@localhost>", b"data",
               b"Subject: piped " + t, b"", b"hello", b".", b"quit"]
    received = piped(hub, "smtp", line_end.join(session) + line_end)
    replies = received.split(b"\r\n")
    assert [r[:3] for r in replies if r] == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], received
    assert len(stored_with(hub, "bob@localhost", b"piped " + t)) == 1


def test_postmaster_is_always_accepted(hub):
    """RFC 5321 §4.5.1: mail to postmaster (any case, with or without the domain) is accepted; it goes to the first account."""
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    assert s.command(b"HELO me").startswith(b"250")
    assert s.command(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert s.command(b"RCPT TO:<Postmaster>") == b"250 2.1.5 Ok"
    assert s.command(b"RCPT TO:<POSTMASTER@localhost>") == b"250 2.1.5 Ok"
    assert s.command(b"RCPT TO:<nobody@localhost>").startswith(b"550 5.1.1")
    assert s.command(b"DATA").startswith(b"354")
    s.send(b"Subject: for the postmaster " + t + b"\r\n\r\nhi\r\n.\r\n")
    assert s.reply().startswith(b"250 2.0.0")
    # Both recipients are the same mailbox: one copy.
    assert len(stored_with(hub, "alice@localhost", b"postmaster " + t)) == 1


def test_message_cut_off_by_the_client_closing_is_not_stored(hub):
    t = token()
    piped(hub, "smtp", b"helo me\r\nmail from: <a@example.org>\r\nrcpt to: <bob@localhost>\r\ndata\r\nSubject: cut " + t + b"\r\n\r\nno end")
    assert stored_with(hub, "bob@localhost", b"cut " + t) == []


def test_multipart_mime_with_base64_attachment_arrives_byte_exact(hub):
    t = token().decode()
    attachment = os.urandom(50_000)
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "alice@localhost"
    msg["To"] = "bob@localhost"
    msg["Subject"] = f"report {t}"
    msg.set_content("See the attachment.\n.\nA line with only a dot above.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    sent = msg.as_bytes()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.sendmail("alice@localhost", ["bob@localhost"], sent)
    [message] = stored_with(hub, "bob@localhost", t.encode())
    assert strip_trace(message) == sent
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    [part] = list(parsed.iter_attachments())
    assert part.get_content() == attachment


def test_multi_recipient_delivery_gives_each_their_own_trace(hub):
    t = token()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        refused = c.sendmail("sender@example.org", ["alice@localhost", "BOB@LOCALHOST", "bob@localhost"], b"Subject: " + t + b"\r\n\r\nfor two\r\n")
    assert refused == {}
    [for_alice] = stored_with(hub, "alice@localhost", t)
    [for_bob] = stored_with(hub, "bob@localhost", t)  # once, though named twice
    assert b"for <alice@localhost>" in for_alice and b"for <bob@localhost>" in for_bob
    assert strip_trace(for_alice) == strip_trace(for_bob) == b"Subject: " + t + b"\r\n\r\nfor two\r\n"


def test_unknown_user_gets_550_and_session_goes_on(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO client.example")
    assert s.command(b"MAIL FROM:<a@example.org>") == b"250 2.1.0 Ok"
    r = s.command(b"RCPT TO:<nobody@localhost>")
    assert r.startswith(b"550 5.1.1 <nobody@localhost>"), r
    assert s.command(b"DATA") == b"503 5.5.1 Error: need RCPT command"
    assert s.command(b"RCPT TO:<alice@localhost>") == b"250 2.1.5 Ok"
    assert s.command(b"NOOP") == b"250 2.0.0 Ok"


def test_relay_denied_without_auth_and_allowed_with_auth(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO client.example")
    s.command(b"MAIL FROM:<a@example.org>")
    assert s.command(b"RCPT TO:<victim@example.com>") == b"554 5.7.1 <victim@example.com>: Relay access denied"
    assert s.command(b"RCPT TO:<alice@localhost>") == b"250 2.1.5 Ok"
    s.close()
    # Authenticated (CRAM-MD5 works without TLS): foreign recipients go to
    # the outbound queue. (RSET: nothing is queued, nothing leaves.)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.ehlo()
        assert "CRAM-MD5" in c.esmtp_features["auth"] and "PLAIN" not in c.esmtp_features["auth"]
        code, _ = c.login("alice", "secret")
        assert code == 235
        c.mail("alice@localhost")
        assert c.rcpt("friend@example.com") == (250, b"2.1.5 Ok")
        c.rset()


def test_submission_starttls_then_auth_plain(hub):
    t = token()
    s = RawSMTP(hub.ports["submission"])
    ehlo = s.command(b"EHLO laptop")
    assert b"250-STARTTLS" in ehlo and b"250-AUTH CRAM-MD5\r\n" in ehlo
    assert s.command(b"MAIL FROM:<alice@localhost>") == b"530 5.7.0 Authentication required; AUTH first (after STARTTLS)"
    assert s.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret")).startswith(b"538 5.7.11")
    s.starttls()
    ehlo = s.command(b"EHLO laptop")
    assert b"STARTTLS" not in ehlo and b"250-AUTH PLAIN LOGIN CRAM-MD5" in ehlo
    assert s.command(b"MAIL FROM:<alice@localhost>") == b"530 5.7.0 Authentication required; AUTH first"
    assert s.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong")) == b"535 5.7.8 Error: authentication failed"
    assert s.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret")) == b"235 2.7.0 Authentication successful"
    assert s.command(b"MAIL FROM:<alice@localhost>") == b"250 2.1.0 Ok"
    assert s.command(b"RCPT TO:<bob@localhost>") == b"250 2.1.5 Ok"
    assert s.command(b"DATA").startswith(b"354")
    s.send(b"Subject: submitted " + t + b"\r\n\r\nNo Date, no Message-ID.\r\n.\r\n")
    assert s.reply().startswith(b"250 2.0.0 Ok: queued as")
    [message] = stored_with(hub, "bob@localhost", t)
    assert b"\r\n\tby mail.test with ESMTPSA id " in message
    headers = strip_trace(message).split(b"\r\n\r\n")[0]
    assert b"\r\nDate: " in b"\r\n" + headers and b"\r\nMessage-ID: <" in b"\r\n" + headers


def test_submission_auth_login_via_smtplib_starttls(hub):
    t = token()
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as c:
        c.starttls(context=client_context())
        c.ehlo()
        c.user, c.password = "bob", "hungry"
        code, _ = c.auth("LOGIN", c.auth_login)
        assert code == 235
        c.sendmail("bob@localhost", ["alice@localhost"], b"Message-ID: <keep-" + t + b"@x>\r\nSubject: s\r\n\r\nhi\r\n")
    [message] = stored_with(hub, "alice@localhost", t)
    assert message.count(b"Message-ID:") == 1  # the client's is kept, none added


def test_implicit_tls_on_smtps(hub):
    t = token()
    with smtplib.SMTP_SSL("127.0.0.1", hub.ports["smtps"], context=client_context()) as c:
        c.ehlo()
        assert "starttls" not in c.esmtp_features
        # (it said "AUTH first (after STARTTLS)" on a connection that is
        # TLS from its first octet and offers no STARTTLS; breaker2)
        assert c.docmd("MAIL FROM:<bob@localhost>") == (530, b"5.7.0 Authentication required; AUTH first")
        c.login("bob@localhost", "hungry")
        c.sendmail("bob@localhost", ["alice@localhost"], b"Subject: over tls " + t + b"\r\n\r\nsecret stuff\r\n")
    [message] = stored_with(hub, "alice@localhost", t)
    assert b" with ESMTPSA id " in message


SMUGGLING_VARIANTS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"]


@pytest.mark.parametrize("variant", SMUGGLING_VARIANTS, ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF"])
def test_smuggling_end_of_data_variants_are_refused_in_crlf_session(hub, variant):
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO relay.example")
    s.command(b"MAIL FROM:<a@example.org>")
    s.command(b"RCPT TO:<alice@localhost>")
    assert s.command(b"DATA").startswith(b"354")
    smuggled = b"MAIL FROM:<admin@localhost>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: smuggled " + t + b"\r\n\r\nevil\r\n"
    s.send(b"Subject: carrier " + t + b"\r\n\r\nhello" + variant + smuggled + b".\r\nNOOP\r\n")
    r = s.reply()
    assert r.startswith(b"550 5.5.2"), r
    assert s.reply() == b"250 2.0.0 Ok"  # the NOOP: nothing in between
    assert stored_with(hub, "alice@localhost", t) == []
    assert stored_with(hub, "bob@localhost", t) == []
    # The session goes on and a clean message still goes through.
    s.command(b"MAIL FROM:<a@example.org>")
    s.command(b"RCPT TO:<alice@localhost>")
    s.command(b"DATA")
    s.send(b"Subject: clean " + t + b"\r\n\r\nok\r\n.\r\n")
    assert s.reply().startswith(b"250 2.0.0 Ok: queued as")
    assert len(stored_with(hub, "alice@localhost", t)) == 1


def test_bare_lf_session_still_finishes_with_lf_dot_lf(hub):
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"helo nc", b"\n")
    s.command(b"mail from:<a@example.org>", b"\n")
    s.command(b"rcpt to:<alice@localhost>", b"\n")
    s.command(b"data", b"\n")
    s.send(b"Subject: nc " + t + b"\n\ntyped\n.\n")
    assert s.reply().startswith(b"250 2.0.0 Ok: queued as")
    [message] = stored_with(hub, "alice@localhost", t)
    assert strip_trace(message) == b"Subject: nc " + t + b"\r\n\r\ntyped\r\n"


def test_commands_pipelined_after_starttls_are_discarded(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO client")
    # CVE-2011-0411: a man in the middle appends commands to STARTTLS.
    s.send(b"STARTTLS\r\nMAIL FROM:<attacker@example.org>\r\nRCPT TO:<alice@localhost>\r\n")
    assert s.reply() == b"220 2.0.0 Ready to start TLS"
    assert s.pending == b""
    s.sock = client_context().wrap_socket(s.sock, server_hostname="localhost")
    assert s.command(b"EHLO client").startswith(b"250-mail.test")
    # Had MAIL run, this would be a 250.
    assert s.command(b"RCPT TO:<alice@localhost>") == b"503 5.5.1 Error: need MAIL command"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)")
def test_swaks_sends_mail(hub):
    t = token().decode()
    out = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(hub.ports["submission"]), "--tls",
         "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "secret",
         "--from", "alice@localhost", "--to", "bob@localhost", "--header", f"Subject: swaks {t}", "--body", "from swaks"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [message] = stored_with(hub, "bob@localhost", t.encode())
    assert b"from swaks" in message


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sends_mail(hub, tmp_path):
    t = token()
    body = tmp_path / "mail.txt"
    body.write_bytes(b"From: alice@localhost\r\nTo: bob@localhost\r\nSubject: curl " + t + b"\r\n\r\nsent with curl\r\n")
    out = subprocess.run(
        ["curl", "-sS", f"smtp://127.0.0.1:{hub.ports['smtp']}", "--mail-from", "alice@localhost",
         "--mail-rcpt", "bob@localhost", "--upload-file", str(body)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [message] = stored_with(hub, "bob@localhost", t)
    assert strip_trace(message) == body.read_bytes()


def test_pipelined_commands_in_one_packet_are_answered_in_order(hub):
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    assert b"250-PIPELINING" in s.command(b"EHLO fast.example")
    s.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<ghost@localhost>\r\n"
        b"RCPT TO:<bob@localhost>\r\nDATA\r\n"
    )
    replies = [s.reply() for _ in range(5)]
    assert [r[:9] for r in replies] == [b"250 2.1.0", b"250 2.1.5", b"550 5.1.1", b"250 2.1.5", b"354 End d"]
    # End of data and the next transaction in one packet (RFC 2920 §3.1).
    s.send(b"Subject: " + t + b"\r\n\r\nx\r\n.\r\nMAIL FROM:<b@example.org>\r\nRCPT TO:<bob@localhost>\r\nRSET\r\nNOOP\r\n")
    replies = [s.reply() for _ in range(5)]
    assert replies[0].startswith(b"250 2.0.0 Ok: queued as"), replies
    assert replies[1:] == [b"250 2.1.0 Ok", b"250 2.1.5 Ok", b"250 2.0.0 Ok", b"250 2.0.0 Ok"]
    assert len(stored_with(hub, "alice@localhost", t)) == 1 and len(stored_with(hub, "bob@localhost", t)) == 1


def test_size_limit_at_mail_and_after_data(hub):
    t = token()
    s = RawSMTP(hub.ports["smtp"])
    assert f"250-SIZE {MAX_SIZE}".encode() in s.command(b"EHLO big.example")
    assert s.command(b"MAIL FROM:<a@example.org> SIZE=%d BODY=8BITMIME" % (MAX_SIZE + 1)) == b"552 5.3.4 Message size exceeds fixed limit"
    assert s.command(b"MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME") == b"250 2.1.0 Ok"
    s.command(b"RCPT TO:<alice@localhost>")
    s.command(b"DATA")
    line = b"x" * 998 + b"\r\n"
    s.send(b"Subject: big " + t + b"\r\n\r\n" + line * (MAX_SIZE // 1000 + 50) + b".\r\n")
    assert s.reply() == b"552 5.3.4 Error: message too big for this hub"
    assert s.command(b"NOOP") == b"250 2.0.0 Ok"
    assert stored_with(hub, "alice@localhost", b"big " + t) == []


def test_too_many_recipients(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO x")
    s.command(b"MAIL FROM:<a@example.org>")
    for _ in range(3):
        assert s.command(b"RCPT TO:<alice@localhost>") == b"250 2.1.5 Ok"
    assert s.command(b"RCPT TO:<bob@localhost>") == b"452 4.5.3 Error: too many recipients"


def test_line_length_limit_and_endless_line(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO x")
    s.send(b"NOOP " + b"a" * 1_000_000)
    assert s.reply() == b"500 5.5.2 Error: line too long"
    s.send(b"b" * 100_000 + b"\r\n")  # the rest of that line is dropped
    assert s.command(b"NOOP") == b"250 2.0.0 Ok"


def test_malformed_and_non_ascii_commands_get_500_and_server_goes_on(hub):
    s = RawSMTP(hub.ports["smtp"])
    s.command(b"EHLO x")
    # A UTF-8 address without SMTPUTF8 (RFC 6531): 553 5.6.7, as Postfix says.
    assert s.command("MAIL FROM:<jürgen@example.org>".encode()).startswith(b"553 5.6.7")
    assert s.command("NOOP jürgen".encode()).startswith(b"500 5.5.2")
    assert s.command(b"\xff\xfe\x00\x01").startswith(b"500 5.5.2")
    assert s.command(b"").startswith(b"500 5.5.2")
    assert s.command(b"FROB nicate").startswith(b"500 5.5.2 Error: command 'FROB' not recognized")
    assert s.command(b"MAIL TO:<a@b>") == b"501 5.5.4 Syntax: MAIL FROM:<address>"
    assert s.command(b"MAIL FROM:<a@example.org> FOO=1") == b"555 5.5.4 Unsupported option: FOO"
    assert s.command(b"RCPT TO:<a@b>") == b"503 5.5.1 Error: need MAIL command"
    assert s.command(b"DATA") == b"503 5.5.1 Error: need MAIL command"
    assert s.command(b"AUTH FOO") .startswith(b"504 5.5.4")
    assert s.command(b"AUTH CRAM-MD5").startswith(b"334 ")
    assert s.command(b"not base64!!") .startswith(b"501 5.5.2")
    assert s.command(b"VRFY bob") .startswith(b"252 2.0.0")
    help_reply = s.command(b"help")
    assert help_reply.startswith(b"214 2.0.0 Commands:") and b"STARTTLS" in help_reply
    assert s.command(b"MAIL FROM:<>") == b"250 2.1.0 Ok"  # the null sender
    # And a fresh connection still works.
    assert RawSMTP(hub.ports["smtp"]).command(b"NOOP") == b"250 2.0.0 Ok"


def test_a_message_with_a_3_mb_line_is_refused_and_every_stored_message_can_be_read_with_poplib(hub):
    # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its
    # CRLF. Stored, such a message could not be read: poplib refuses a
    # RETR line over 2048 octets ("line too long").
    import poplib

    t = token()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as c:
        c.ehlo()
        del c.esmtp_features["size"]  # sent whole, as a client that ignores SIZE (the limit here is 200 KB)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("a@example.org", ["alice@localhost"], b"Subject: one line " + t + b"\r\n\r\n" + b"w" * 3_000_000 + b"\r\n")
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error == b"5.5.2 Error: message refused: a line of it is longer than 1000 octets with its line end (RFC 5321 4.5.3.1.6)"
        # The session goes on.
        c.sendmail("a@example.org", ["alice@localhost"], b"Subject: short lines " + t + b"\r\n\r\n" + b"w" * 998 + b"\r\n")
    [message] = stored_with(hub, "alice@localhost", t)
    assert b"Subject: short lines " in message
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    try:
        pop.user("alice@localhost")
        pop.pass_("secret")
        count, _ = pop.stat()
        assert count >= 1
        for n in range(1, count + 1):
            pop.retr(n)
    finally:
        pop.quit()
