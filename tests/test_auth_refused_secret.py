# -*- test-case-name: tests.test_auth_refused_secret -*-
"""
A student types AUTH before STARTTLS/STLS, is refused, and pastes the
base64 password anyway (found by the new-user pass of stop 12): the hub's
reply does not echo it and the transcript (log, console) masks it.
"""

from __future__ import annotations

import base64
import re
import socket

from tests.smtp_helpers import RawSMTP
from twisted_mailhub.transcript import SessionEvents, Transcriber

SECRET = base64.b64encode(b"correct horse battery").decode()  # no '=': one plain word


def _lines(record) -> list[str]:
    return [f"{kind}: {text}" for _, _, kind, text in record.events if kind in ("C", "S")]


def _transcribed(protocol: str, exchange: list[tuple[str, bytes]]) -> list[str]:
    bus = SessionEvents()
    record = bus.start(protocol, ("127.0.0.1", 4000), ("127.0.0.1", 25))
    t = Transcriber(record.id, record)
    for side, data in exchange:
        (t.client_bytes if side == "C" else t.server_bytes)(data)
    return _lines(record)


def test_the_word_sent_after_a_refused_smtp_auth_is_masked_and_a_command_is_not():
    assert _transcribed(
        "smtp",
        [
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"538 5.7.11 Encryption required\r\n"),
            ("C", SECRET.encode() + b"\r\n"),
            ("S", b"500 5.5.2 Error: command not recognized\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"538 5.7.11 Encryption required\r\n"),
            ("C", b"QUIT\r\n"),
            ("S", b"221 2.0.0 Bye\r\n"),
        ],
    ) == [
        "C: AUTH LOGIN",
        "S: 538 5.7.11 Encryption required",
        "C: **** (after a refused AUTH)",
        "S: 500 5.5.2 Error: command not recognized",
        "C: AUTH LOGIN",
        "S: 538 5.7.11 Encryption required",
        "C: QUIT",
        "S: 221 2.0.0 Bye",
    ]


def test_after_a_successful_auth_the_next_line_is_recorded_as_sent():
    assert _transcribed(
        "pop3",
        [
            ("C", b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"),
            ("S", b"+OK logged in\r\n"),
            ("C", b"STAT\r\n"),
            ("S", b"+OK 0 0\r\n"),
        ],
    ) == ["C: AUTH PLAIN ****", "S: +OK logged in", "C: STAT", "S: +OK 0 0"]


def test_a_refused_imap_authenticate_masks_the_word_sent_after_it():
    assert _transcribed(
        "imap",
        [
            ("C", b"a1 AUTHENTICATE PLAIN\r\n"),
            ("S", b"a1 NO [PRIVACYREQUIRED] use STARTTLS first\r\n"),
            ("C", SECRET.encode() + b"\r\n"),
            ("S", SECRET.encode() + b" BAD no command after the tag\r\n"),
            ("C", b"a2 NOOP\r\n"),
            ("S", b"a2 OK NOOP completed\r\n"),
        ],
    )[2:] == [
        "C: **** (after a refused AUTH)",
        "S: **** BAD no command after the tag",  # its echo as a tag too
        "C: a2 NOOP",
        "S: a2 OK NOOP completed",
    ]


def test_smtp_after_a_refused_auth_the_pasted_password_is_not_echoed_or_logged(start_hub):
    hub = start_hub("--transcript")
    s = RawSMTP(hub.ports["submission"])
    assert s.command(b"EHLO student").startswith(b"250")
    assert s.command(b"AUTH LOGIN").startswith(b"538 5.7.11")
    reply = s.command(SECRET.encode())
    assert reply.startswith(b"500 5.5.2") and SECRET.encode() not in reply
    # A typo later, not after AUTH, is still shown to help the student.
    assert b"'HEOL'" in s.command(b"HEOL x")
    assert s.command(b"QUIT").startswith(b"221")
    hub.wait_for_log(r"C: \*\*\*\* \(after a refused AUTH\)")
    hub.wait_for_log(r"S: 221 ")
    assert SECRET not in hub.log


def test_pop3_after_a_refused_auth_the_pasted_password_is_not_echoed_or_logged(start_hub):
    hub = start_hub("--transcript")
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=15) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        c.sendall(b"AUTH GSSAPI\r\n")  # a mechanism it does not offer: refused
        assert f.readline().startswith(b"-ERR")
        c.sendall(SECRET.encode() + b"\r\n")
        reply = f.readline()
        assert reply.startswith(b"-ERR") and SECRET.encode() not in reply
        c.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
    hub.wait_for_log(r"C: \*\*\*\* \(after a refused AUTH\)")
    assert SECRET not in hub.log
    assert not re.search(r"Traceback", hub.log)


USER64 = base64.b64encode(b"alice@localhost").decode().rstrip("=")


def test_auth_login_refused_then_both_its_lines_sent_neither_is_echoed_or_logged(start_hub):
    # AUTH LOGIN's exchange is two lines, the user name then the password
    # (each base64). Sent after the refusal, only the first was hidden:
    # the second, the password, came back in "500 5.5.2 Error: command
    # 'Y29ycmVjd...' not recognized" and stood in the transcript and the log.
    hub = start_hub("--transcript")
    s = RawSMTP(hub.ports["submission"])
    assert s.command(b"EHLO student").startswith(b"250")
    assert s.command(b"AUTH LOGIN").startswith(b"538 5.7.11")
    assert s.command(USER64.encode()).startswith(b"500 5.5.2 Error: command not recognized (not shown")
    reply = s.command(SECRET.encode())
    assert reply.startswith(b"500 5.5.2 Error: command not recognized (not shown") and SECRET.encode() not in reply
    assert b"'HEOL'" in s.command(b"HEOL x")  # a typo after a command is shown again
    assert s.command(b"QUIT").startswith(b"221")
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=15) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        c.sendall(b"AUTH GSSAPI\r\n" + USER64.encode() + b"\r\n" + SECRET.encode() + b"\r\n")  # pipelined
        assert f.readline().startswith(b"-ERR")
        assert f.readline().startswith(b"-ERR unknown command (not shown")
        reply = f.readline()
        assert reply.startswith(b"-ERR unknown command (not shown") and SECRET.encode() not in reply
        c.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
    hub.wait_for_log(r"S: \+OK .*\n(.|\n)*S: \+OK ")
    hub.wait_for_log(r"S: 221 ")
    assert SECRET not in hub.log


def test_the_words_sent_after_a_refused_auth_are_masked_pipelined_or_not():
    for pipelined in (False, True):
        exchange = [("C", b"AUTH LOGIN\r\n"), ("S", b"538 5.7.11 Encryption required\r\n")]
        lines = [USER64.encode() + b"\r\n", SECRET.encode() + b"\r\n"]
        replies = [b"500 5.5.2 Error: command not recognized\r\n"] * 2
        if pipelined:
            exchange += [("C", b"".join(lines))] + [("S", r) for r in replies]
        else:
            exchange += [x for pair in zip([("C", l) for l in lines], [("S", r) for r in replies]) for x in pair]
        exchange += [("C", b"QUIT\r\n"), ("S", b"221 2.0.0 Bye\r\n")]
        got = _transcribed("smtp", exchange)
        assert SECRET not in "\n".join(got), (pipelined, got)
        assert got.count("C: **** (after a refused AUTH)") == 2 and "C: QUIT" in got, (pipelined, got)


def test_a_command_word_after_a_refused_auth_is_shown_and_other_words_are_masked():
    got = _transcribed(
        "smtp",
        [
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"538 5.7.11 Encryption required\r\n"),
            ("C", b"TURN\r\n"),
            ("S", b"500 5.5.2 Error: command 'TURN' not recognized; try HELP\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"538 5.7.11 Encryption required\r\n"),
            ("C", b"send\r\n"),
            ("S", b"500 5.5.2 Error: command 'send' not recognized; try HELP\r\n"),
            ("C", b"AUTH LOGIN\r\n"),
            ("S", b"538 5.7.11 Encryption required\r\n"),
            ("C", b"Ym9i\r\n"),  # base64 of "bob": a user name, masked
            ("S", b"500 5.5.2 Error: command not recognized\r\n"),
        ],
    )
    assert "C: TURN" in got and "C: send" in got, got
    assert "Ym9i" not in "\n".join(got) and got.count("C: **** (after a refused AUTH)") == 1, got


def test_turn_typed_after_a_refused_auth_is_echoed_and_logged_as_typed(start_hub):
    import ftplib
    import smtplib

    hub = start_hub("--transcript")
    s = smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=15)
    s.ehlo("student")
    assert s.docmd("AUTH", "LOGIN")[0] == 538
    code, text = s.docmd("TURN")
    assert code == 500 and b"'TURN'" in text, (code, text)
    assert s.docmd("AUTH", "LOGIN")[0] == 538
    code, text = s.docmd(USER64)  # the user name, as AUTH LOGIN's first line: hidden still
    assert code == 500 and USER64.encode() not in text and b"not shown" in text, text
    s.quit()
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=15) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"+OK")
        c.sendall(b"AUTH GSSAPI\r\nLAST\r\nQUIT\r\n")
        assert f.readline().startswith(b"-ERR")
        reply = f.readline()
        assert reply.startswith(b"-ERR unknown command 'LAST'"), reply
        assert f.readline().startswith(b"+OK")
    # FTP: no password follows its AUTH (RFC 2228: TLS), but a client may
    # send one anyway; it was echoed upper-cased in the 500 reply.
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=15)
    for refused in ("AUTH BOGUS", "AUTH"):
        try:
            ftp.sendcmd(refused)
        except ftplib.error_perm as e:
            assert str(e)[:3] in ("504", "501"), e
        try:
            ftp.sendcmd(SECRET)
        except ftplib.error_perm as e:
            reply = str(e)
        assert reply.startswith("500 Command not understood (not shown: after a refused AUTH"), reply
        assert SECRET.upper()[:8] not in reply and SECRET[:8] not in reply
    try:
        ftp.sendcmd("AUTH BOGUS")
    except ftplib.error_perm:
        pass
    assert ftp.sendcmd("NOOP").startswith("200")  # a command after it is a command
    ftp.quit()
    hub.wait_for_log(r"C: TURN")
    hub.wait_for_log(r"C: LAST")
    hub.wait_for_log(r"C: AUTH BOGUS\n.*\n.*C: NOOP")
    hub.wait_for_log(r"S: 221 ")
    assert SECRET not in hub.log and SECRET.upper()[:8] not in hub.log and USER64 not in hub.log
