# -*- test-case-name: tests.test_e2e_headerless -*-
"""
The textbook DATA, typed without headers (issue 8 item 8): the hub puts
the empty line that separates header and body after its trace headers,
so every reader finds the text as body.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import poplib
import smtplib

from tests.smtp_helpers import RawSMTP

TEXT = b"Hello Me\r\nThis is an email message from me\r\n"


def test_message_typed_without_headers_is_all_body_for_imap_and_pop3(hub):
    smtp = RawSMTP(hub.ports["smtp"])
    for line in (b"HELO me", b"MAIL FROM:<judy@jbc.test>", b"RCPT TO:<alice@localhost>"):
        assert smtp.command(line).startswith(b"250")
    assert smtp.command(b"DATA").startswith(b"354")
    assert smtp.command(TEXT + b".").startswith(b"250")
    smtp.command(b"QUIT")

    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    imap.select("INBOX")
    _, data = imap.fetch("1", "(BODY[TEXT] BODY[HEADER])")
    text, header = data[0][1], data[1][1]
    assert text == TEXT
    assert header.startswith(b"Return-Path: <judy@jbc.test>\r\nReceived: ") and header.endswith(b"\r\n\r\n")
    assert imap.search(None, "BODY", '"Hello Me"') == ("OK", [b"1"])
    imap.logout()

    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("alice")
    pop.pass_("secret")
    _, lines, _ = pop.top(1, 0)
    assert b"Hello Me" not in lines and lines[-1] == b""
    _, lines, _ = pop.retr(1)
    assert lines[-2:] == [b"Hello Me", b"This is an email message from me"]
    pop.quit()


def test_submission_without_headers_gets_from_date_and_message_id(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.ehlo("laptop")
        if smtp.has_extn("starttls"):
            from tests.hubprocess import client_context

            smtp.starttls(context=client_context())
            smtp.ehlo("laptop")
        smtp.login("alice", "secret")
        smtp.sendmail("alice@localhost", ["bob@localhost"], TEXT)
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("bob")
    pop.pass_("hungry")
    _, lines, _ = pop.retr(1)
    pop.quit()
    message = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
    assert message["From"] == "alice@localhost"
    assert message["Date"] is not None and message["Message-ID"].startswith("<")
    assert lines[-2:] == [b"Hello Me", b"This is an email message from me"]
    assert lines[lines.index(b"") + 1] == b"Hello Me"  # all body
