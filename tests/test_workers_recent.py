# -*- test-case-name: tests.test_workers_recent -*-
"""
IMAP C{\\Recent} under C{--workers 2} (RFC 3501 §2.3.2: a message is
recent to one session only), with sessions on each worker of a real hub
(twisted_mailhub/store/shared.py: claim_recent).
"""

from __future__ import annotations

import re

from tests.test_workers import _read_until, imap_socket, on_worker, smtp_client


class Session:
    """A raw IMAP session on one worker, logged in as alice."""

    def __init__(self, hub, worker: int):
        self.sock = on_worker(hub, worker, imap_socket(hub))
        self.n = 0
        self.command("LOGIN alice secret")

    def command(self, text: str, literal: bytes | None = None) -> str:
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        else:
            self.sock.sendall(tag + b" " + text.encode() + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        # (each reply is read to its end: the next starts a line)
        reply = b"\r\n"
        while not re.search(rb"\r\n" + tag + rb" [^\r\n]*\r\n$", reply):
            reply += _read_until(self.sock, b"\r\n", 10)
        assert (b"\r\n" + tag + b" OK") in reply, reply
        return reply.decode()

    def close(self) -> None:
        self.sock.sendall(b"z LOGOUT\r\n")
        self.sock.close()


def _recent(reply: str) -> int:
    return int(re.search(r"\* (\d+) RECENT", reply).group(1))


def test_an_appended_message_is_recent_to_one_session_across_workers(start_hub):
    hub = start_hub("--workers", "2")
    appender = Session(hub, 0)
    appender.command("APPEND INBOX", b"Subject: appended\r\n\r\nhello\r\n")
    # STATUS and EXAMINE look without claiming (RFC 3501 §6.3.2, §6.3.10)
    looker = Session(hub, 1)
    assert "RECENT 1" in looker.command("STATUS INBOX (RECENT)")
    assert _recent(looker.command("EXAMINE INBOX")) == 1
    first = Session(hub, 1)
    assert _recent(first.command("SELECT INBOX")) == 1
    assert "\\Recent" in first.command("FETCH 1 FLAGS")
    # the worker that wrote it had it as recent too: now claimed elsewhere
    second = Session(hub, 0)
    assert _recent(second.command("SELECT INBOX")) == 0
    assert "\\Recent" not in second.command("FETCH 1 FLAGS")
    for session in (appender, looker, first, second):
        session.close()


def test_a_delivered_message_is_recent_to_one_session_across_workers(start_hub):
    hub = start_hub("--workers", "2")
    smtp = on_worker(hub, 0, smtp_client(hub))
    smtp.sendmail("sender@example.org", ["alice@localhost"], "Subject: delivered\r\n\r\nhi\r\n")
    smtp.quit()
    hub.wait_for_log(r"\[worker 0\] delivered")
    first = Session(hub, 1)
    assert _recent(first.command("SELECT INBOX")) == 1
    second = Session(hub, 0)
    assert _recent(second.command("SELECT INBOX")) == 0
    # and the next message is recent to the session that is selected when it comes
    smtp = on_worker(hub, 1, smtp_client(hub))
    smtp.sendmail("sender@example.org", ["alice@localhost"], "Subject: second\r\n\r\nhi\r\n")
    smtp.quit()
    hub.wait_for_log(r"\[worker 1\] delivered")
    told = [_recent(session.command("NOOP")) for session in (first, second)]
    assert (told[0] - 1) + told[1] == 1, told  # one of them claimed the new one
    for session in (first, second):
        session.close()
