# -*- test-case-name: tests.test_password_after_user -*-
"""
A student types USER, then the password alone on the next line, as at a
"Password:" prompt (found by the breaker of stop 16): POP3 and FTP answered
"unknown command 'HUNGRY'" / "500 'HUNGRY': command not understood", and
the live console (every teacher, and every student behind the same address
until the session logs in) and C{--transcript} showed "C: hungry". Now the
reply does not echo it and the transcript masks it, as after a refused
AUTH (tests/test_auth_refused_secret.py).
"""

from __future__ import annotations

import socket

import pytest

from tests.test_auth_refused_secret import _transcribed

PASSWORD = b"hungry"


@pytest.mark.parametrize("protocol", ["pop3", "ftp"])
def test_the_word_typed_alone_after_user_is_masked_and_a_command_is_not(protocol):
    lines = _transcribed(
        protocol,
        [
            ("C", b"USER bob\r\n"),
            ("S", b"+OK now send PASS for bob\r\n"),
            ("C", PASSWORD + b"\r\n"),
            ("S", b"-ERR unknown command\r\n"),
            ("C", b"USER bob\r\n"),
            ("S", b"+OK now send PASS for bob\r\n"),
            ("C", b"QUIT\r\n"),
            ("S", b"+OK bye\r\n"),
        ],
    )
    assert [line for line in lines if line.startswith("C:")] == ["C: USER bob", "C: **** (after USER: it may be the password)", "C: USER bob", "C: QUIT"]


def test_only_the_line_right_after_user_is_masked():
    lines = _transcribed("ftp", [("C", b"user bob\r\n"), ("C", b"NOOP\r\n"), ("C", b"typo\r\n"), ("C", b"PASS x y\r\n")])
    assert lines == ["C: user bob", "C: NOOP", "C: typo", "C: PASS ****"]


@pytest.mark.parametrize("listener, user_reply, ending", [("pop3", b"+OK", b"-ERR"), ("ftp", b"331", b"500")])
def test_the_password_typed_alone_after_user_is_not_echoed_shown_or_logged(start_hub, listener, user_reply, ending):
    hub = start_hub("--transcript")
    with socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=15) as c:
        f = c.makefile("rb")
        assert f.readline()[:3] in (b"+OK", b"220")
        c.sendall(b"USER bob\r\n")
        assert f.readline().startswith(user_reply)
        c.sendall(PASSWORD + b"\r\n")
        reply = f.readline()
        assert reply.startswith(ending) and PASSWORD.upper() not in reply.upper(), reply
        assert b"after USER it may be the password" in reply
        c.sendall(b"PASS " + PASSWORD + b"\r\n")
        assert f.readline()[:3] in (b"+OK", b"230")
        c.sendall(b"QUIT\r\n")
        f.readline()
    hub.wait_for_log(r"C: \*\*\*\* \(after USER: it may be the password\)")
    assert PASSWORD.decode() not in hub.log.lower()
    # a typo that is no password is still shown, to help the student
    with socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=15) as c:
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"HEOL x\r\n")
        assert b"HEOL" in f.readline()


def test_imap_the_word_after_a_login_without_password_is_masked():
    lines = _transcribed(
        "imap",
        [
            ("C", b"a1 LOGIN bob\r\n"),
            ("S", b"a1 BAD Missing argument\r\n"),
            ("C", PASSWORD + b"\r\n"),
            ("S", b"* BAD a line of one word (not shown)\r\n"),
            ("C", b"a2 LOGIN bob x\r\n"),
            ("C", b"a3\r\n"),
        ],
    )
    assert [line for line in lines if line.startswith("C:")] == [
        "C: a1 LOGIN bob",
        "C: **** (after LOGIN without a password: it may be the password)",
        "C: a2 LOGIN bob ****",
        "C: a3",
    ]


def test_imap_the_password_sent_alone_after_login_is_not_echoed_as_a_tag_shown_or_logged(start_hub):
    hub = start_hub("--transcript")
    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=15) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"* OK")
        c.sendall(b"a1 LOGIN bob\r\n")
        assert f.readline().startswith(b"a1 BAD")
        c.sendall(PASSWORD + b"\r\n")
        reply = f.readline()
        assert reply.startswith(b"* BAD ") and PASSWORD not in reply, reply
        # a one-word line elsewhere is still answered with its tag
        c.sendall(b"a2\r\n")
        assert f.readline() == b"a2 BAD missing command after the tag\r\n"
        c.sendall(b"a3 LOGOUT\r\n")
        assert f.readline().startswith(b"* BYE")
    hub.wait_for_log(r"C: \*\*\*\* \(after LOGIN without a password: it may be the password\)")
    assert PASSWORD.decode() not in hub.log
