"""
An SMTP connection records its own session (no wrapper between the socket
and the protocol, smtp/record.py): against a real hub, the C:/S: lines are
what the client sent and was sent, a message as its summary, the AUTH
secret masked, with the TLS handshake, the login and the end as events;
a session nobody watched shows the same on the console, live and exported.
"""

from __future__ import annotations

import base64
import re
import smtplib

from tests.hubprocess import client_context
from tests.smtp_helpers import RawSMTP

MESSAGE = b"Subject: recorded\r\n\r\nnot in the log\r\n..a stuffed dot\r\n"
# What the transcript shows of it: lines and octets as sent, before the "." line.
SUMMARY = "[message: %d lines, %d octets]" % (MESSAGE.count(b"\n"), len(MESSAGE))


def _session(hub, cid: str) -> list[str]:
    """The transcript lines of session C{cid}, without the id, once it has closed."""
    hub.wait_for_log(re.escape(cid) + r" closed")
    return [m.group(1) for m in re.finditer(re.escape(cid) + r" (.*)", hub.log)]


def _message(c: RawSMTP) -> list[tuple[str, str]]:
    """One message, one command a round trip; (what was sent, the reply) each ("": the message)."""
    said = []
    for line in (b"EHLO client.test", b"MAIL FROM:<judy@jbc.test>", b"RCPT TO:<alice@localhost>", b"DATA"):
        said.append((line.decode(), c.command(line).decode()))
    c.send(MESSAGE + b".\r\n")
    said.append(("", c.reply().decode()))
    return said


def _ending(c: RawSMTP) -> list[tuple[str, str]]:
    """A command with a control byte, RSET and QUIT; (what was sent, the reply) each."""
    return [(line.decode(), c.command(line).decode()) for line in (b"NOOP \x1b[31m", b"RSET", b"QUIT")]


def _expected(greeting: str, said: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The C:/S: lines of L{_message} and L{_ending} as the transcript shows them."""
    shown = [("S", greeting)]
    for sent, reply in said:
        if sent:
            shown.append(("C", sent.replace("\x1b", "\\x1b")))
        else:
            shown += [("C", SUMMARY), ("C", ".")]
        shown += [("S", line) for line in reply.split("\r\n")]
    return shown


def test_an_smtp_session_is_recorded_line_for_line_with_its_message_summarised(start_hub):
    hub = start_hub("--transcript")
    c = RawSMTP(hub.ports["smtp"])
    said = _message(c) + _ending(c)
    c.close()
    m = hub.wait_for_log(r"(smtp#\d+) C: EHLO client\.test")
    lines = _session(hub, m.group(1))
    assert re.fullmatch(r"connected from 127\.0\.0\.1:\d+", lines[0])
    assert lines[1:] == [f"{who}: {text}" for who, text in _expected(c.greeting.decode(), said)] + ["closed"]
    assert said[4][1].startswith("250 2.0.0 Ok: queued as") and said[-1][1].startswith("221")
    assert "not in the log" not in hub.log and "stuffed" not in hub.log


def test_starttls_auth_and_a_message_are_recorded_with_the_handshake_and_the_secret_masked(start_hub):
    hub = start_hub("--transcript")
    secret = base64.b64encode(b"\0alice\0secret").decode()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15) as c:
        c.ehlo("tls.example")
        c.starttls(context=client_context())
        c.ehlo("tls.example")
        assert c.docmd("AUTH", "PLAIN " + secret)[0] == 235
        c.sendmail("alice@localhost", ["alice@localhost"], MESSAGE)
    m = hub.wait_for_log(r"(smtp#\d+) C: AUTH PLAIN \*\*\*\*")
    lines = _session(hub, m.group(1))
    i = lines.index("S: 220 2.0.0 Ready to start TLS")
    assert lines[i + 1].startswith("tls: TLSv1.")
    assert lines[i + 2] == "C: ehlo tls.example"
    j = lines.index("C: AUTH PLAIN ****")
    assert lines[j + 1 : j + 3] == ["login: alice@localhost", "S: 235 2.7.0 Authentication successful"]
    # (smtplib stuffs the line that starts with a dot once more: one octet more)
    assert "C: [message: %d lines, %d octets]" % (MESSAGE.count(b"\n"), len(MESSAGE) + 1) in lines
    assert secret not in hub.log and "not in the log" not in hub.log


def test_an_smtp_session_nobody_watched_shows_the_same_on_the_console_live_and_exported(start_hub):
    # No --transcript: nobody watches the session's lines while it runs, so
    # its record keeps the bytes (and the message as its count) and makes
    # them lines when the console asks.
    from tests.web_helpers import WatchedSession

    hub = start_hub()
    c = RawSMTP(hub.ports["smtp"])
    said = _message(c)
    watched = WatchedSession(hub, "smtp")
    said += _ending(c)
    watched.until_closed()
    c.close()
    labels = {"C": "C:", "S": "S:", "end": "--"}
    expected = [(labels[who], text) for who, text in _expected(c.greeting.decode(), said)] + [("--", "closed")]
    labels["start"] = "--"
    text, page = watched.assert_exported_as_streamed(expected, labels)
    assert "not in the log" not in text and "stuffed" not in page
