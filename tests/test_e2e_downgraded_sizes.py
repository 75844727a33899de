"""
The size a client is told of 8-bit mail is the size of what it is sent, on
every store: a session without UTF8 gets the header downgraded (RFC 6856
§3 for POP3, RFC 6855/6857 for IMAP), so POP3's greeting, STAT and LIST
(RFC 1939 §11) and IMAP's RFC822.SIZE (RFC 3501 §2.3.4) count that; a
UTF8 session is told the stored size. The Maildir store keeps the size in
the file name (,D=: tests/test_e2e_smtputf8.py); the memory and PostgreSQL
stores in the message's record / row. Real hubs, poplib and imaplib.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib

import pytest

MESSAGE = "From: Grüße <grüße@exämple.test>\r\nTo: alice@localhost\r\nSubject: Grüße aus Köln\r\n\r\nHallo!\r\n".encode("utf-8")
PLAIN = b"From: bob@localhost\r\nSubject: plain\r\n\r\nascii\r\n"


@pytest.fixture(params=["memory", "postgresql"])
def store_hub(request, start_hub):
    if request.param == "memory":
        return start_hub("--store", "memory")
    dsn = request.getfixturevalue("pg_dsn")
    return start_hub("--store", f"postgresql:{dsn}")


def _send(hub) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
        s.ehlo("client.example")
        assert s.sendmail("grüße@exämple.test", ["alice@localhost"], MESSAGE, mail_options=["SMTPUTF8"]) == {}
        assert s.sendmail("bob@localhost", ["alice@localhost"], PLAIN) == {}


def _retr_octets(p, n: int) -> tuple[int, int]:
    reply, lines, _ = p.retr(n)
    return int(reply.split()[1]), sum(len(line[1:] if line.startswith(b"..") else line) + 2 for line in lines)


def test_pop3_greeting_stat_and_list_count_what_each_kind_of_session_is_sent(store_hub):
    _send(store_hub)
    told = {}
    for utf8 in (False, True):
        p = poplib.POP3("127.0.0.1", store_hub.ports["pop3"], timeout=20)
        if utf8:
            assert p.utf8().startswith(b"+OK")
        p.user("alice")
        greeting = p.pass_("secret")
        sizes = [int(line.split()[1]) for line in p.list()[1]]
        count, octets = p.stat()
        for n, listed in enumerate(sizes, 1):
            announced, sent = _retr_octets(p, n)
            assert listed == announced == sent, (utf8, n, listed, announced, sent)
        assert count == 2 and octets == sum(sizes) and b"(%d octets)" % octets in greeting
        p.rset()
        p.quit()
        told[utf8] = sizes
    # the encoded-words are longer than the UTF-8 they stand for; ASCII mail is the same for both
    assert told[False][0] > told[True][0] and told[False][1] == told[True][1]


def _sizes_and_bodies(hub, folder: str, utf8: bool) -> list[tuple[int, bytes]]:
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    if utf8:
        c.enable("UTF8=ACCEPT")
    c.select(folder, readonly=True)
    _, sizes = c.fetch("1:*", "(RFC822.SIZE)")
    _, bodies = c.fetch("1:*", "(BODY.PEEK[])")
    c.logout()
    told = [int(re.search(rb"RFC822\.SIZE (\d+)", line).group(1)) for line in sizes]
    return list(zip(told, [part[1] for part in bodies if isinstance(part, tuple)]))


def test_imap_rfc822_size_is_the_size_each_kind_of_session_is_sent_also_after_copy(store_hub):
    _send(store_hub)
    c = imaplib.IMAP4("127.0.0.1", store_hub.ports["imap"])
    c.login("alice", "secret")
    c.create("Kept")
    c.select("INBOX")
    assert c.copy("1:*", "Kept")[0] == "OK"
    c.logout()
    for folder in ("INBOX", "Kept"):
        legacy = _sizes_and_bodies(store_hub, folder, utf8=False)
        assert len(legacy) == 2
        for size, body in legacy:
            assert size == len(body) and body.isascii(), (folder, size, len(body))
        modern = _sizes_and_bodies(store_hub, folder, utf8=True)
        assert modern[0][1].endswith(MESSAGE) and modern[0][0] == len(modern[0][1]) < legacy[0][0]
        assert modern[1] == legacy[1]
