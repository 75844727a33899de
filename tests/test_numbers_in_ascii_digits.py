"""
A number a client types (a POP3 message number or TOP's line count, an
FTP PORT or EPRT port, an IMAP SEARCH LARGER/SMALLER size) is ASCII
digits (RFC 1939 §3 "msg", RFC 959 §4.1.2 <number>, RFC 2428 §2 "the TCP
port number ... in base 10", RFC 3501 §9 number). Python's C{int()} also
reads "0_1", "+2" and " 3": such arguments were taken as those numbers
(POP3 "DELE 0_1" deleted message 1). They are refused now, with the
reply each protocol gives to a number it cannot use, as FTP's REST
already was.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket

import pytest


def _mail(hub, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        for n in range(1, count + 1):
            s.sendmail("a@example.org", ["bob@localhost"], b"Subject: m%d\r\n\r\n%s\r\n" % (n, b"line\r\n" * 20))


@pytest.fixture
def two_messages(hub):
    _mail(hub, 2)
    return hub


@pytest.mark.parametrize("command", ["DELE 0_1", "DELE +1", "LIST +2", "RETR +1", "UIDL 0_2", "TOP +1 0", "TOP 1 1_0", "TOP 1 +3"])
def test_a_pop3_number_that_is_not_ascii_digits_is_refused(two_messages, command):
    pop = poplib.POP3("127.0.0.1", two_messages.ports["pop3"], timeout=10)
    try:
        pop.user("bob")
        pop.pass_("hungry")
        pop._putcmd(command)
        reply = pop._getline()[0]
        assert reply.startswith(b"-ERR"), reply
        assert pop.stat() == (2, pop.stat()[1])  # nothing deleted
        pop.quit()
    finally:
        pop.close()
    again = poplib.POP3("127.0.0.1", two_messages.ports["pop3"], timeout=10)
    again.user("bob")
    again.pass_("hungry")
    assert again.stat()[0] == 2
    again.quit()


def test_pop3_numbers_in_ascii_digits_still_work(two_messages):
    pop = poplib.POP3("127.0.0.1", two_messages.ports["pop3"], timeout=10)
    pop.user("bob")
    pop.pass_("hungry")
    assert pop.list(2).startswith(b"+OK 2 ")
    assert len(pop.top(1, 3)[1]) < 20
    assert pop.dele(1).startswith(b"+OK")
    pop.quit()


def _ftp_reply(hub, command: str) -> str:
    with socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=10) as s:
        f = s.makefile("rb")
        lines = [f.readline()]
        for line in (b"USER alice", b"PASS secret", command.encode("ascii")):
            s.sendall(line + b"\r\n")
            lines.append(f.readline())
        s.sendall(b"QUIT\r\n")
        return lines[-1].decode("ascii")


@pytest.mark.parametrize("command", [
    "PORT 127,0,0,1,1_9,1",
    "PORT 127,0,0,+1,200,1",
    "PORT 12x7,0,0,1,200,1",
    "EPRT |1|127.0.0.1|5_0000|",
    "EPRT |1|127.0.0.1|+50000|",
    "EPRT |1|127.0.0.1| 50000|",
])
def test_an_ftp_port_that_is_not_ascii_digits_is_refused(hub, command):
    reply = _ftp_reply(hub, command)
    assert reply.startswith("501 "), reply


@pytest.mark.parametrize("command", ["PORT 127,0,0,1,200,1", "PORT 127, 0, 0, 1, 200, 1", "EPRT |1|127.0.0.1|51201|"])
def test_ftp_ports_in_ascii_digits_still_work(hub, command):
    reply = _ftp_reply(hub, command)
    assert reply.startswith("200 "), reply


@pytest.mark.parametrize("key", ["LARGER 1_0", "LARGER +1", "SMALLER 0_5000"])
def test_an_imap_search_size_that_is_not_ascii_digits_is_bad(two_messages, key):
    imap = imaplib.IMAP4("127.0.0.1", two_messages.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        with pytest.raises(imaplib.IMAP4.error, match="wants a number"):
            imap.search(None, key)
        assert imap.search(None, "LARGER 10")[1] == [b"1 2"]
    finally:
        imap.logout()
