"""
Telnet commands (RFC 854) typed from a C{telnet} client into SMTP, POP3
and IMAP: a Ctrl-C sends IAC IP and IAC DO TIMING-MARK in front of the
next command; they are taken out of command lines (as FTP does, RFC 959
§4) and never out of message text (SMTP DATA, an IMAP literal), where
octet 255 is data.
"""

from __future__ import annotations

import imaplib
import re
import socket

CTRL_C = b"\xff\xf4\xff\xfd\x06"  # IAC IP, IAC DO TIMING-MARK


def _ask(sock: socket.socket, line: bytes, done: bytes) -> bytes:
    """Send C{line} and CRLF; read until the reply matches C{done} (a regex of its last line)."""
    sock.sendall(line + b"\r\n")
    data = b""
    while not re.search(done, data, re.M):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def test_smtp_command_lines_lose_telnet_commands_and_message_text_keeps_octet_255(hub):
    smtp_end = rb"^\d{3} .*\r\n\Z"
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"220")
        assert _ask(s, CTRL_C + b"EHLO student.example", smtp_end).startswith(b"250")
        assert _ask(s, CTRL_C + b"MAIL FROM:<student@example.org>", smtp_end).startswith(b"250")
        assert _ask(s, b"RCPT TO:<alice@localhost>", smtp_end).startswith(b"250")
        assert _ask(s, b"DATA", smtp_end).startswith(b"354")
        reply = _ask(s, b"Subject: telnet\r\n\r\nkeep \xff\xf4 this\r\n.", smtp_end)
        assert reply.startswith(b"250"), reply
        assert _ask(s, CTRL_C + b"QUIT", smtp_end).startswith(b"221")
    [message] = hub.messages("alice")
    assert b"keep \xff\xf4 this" in message.raw


def test_pop3_command_lines_lose_telnet_commands(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"+OK")
        assert _ask(s, CTRL_C + b"USER alice", rb"\r\n\Z").startswith(b"+OK")
        assert _ask(s, b"PASS secret", rb"\r\n\Z").startswith(b"+OK")
        assert _ask(s, CTRL_C + b"STAT", rb"\r\n\Z").startswith(b"+OK 0 0")
        assert _ask(s, CTRL_C + b"QUIT", rb"\r\n\Z").startswith(b"+OK")


def test_imap_command_lines_lose_telnet_commands_and_literals_keep_octet_255(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"* OK")
        assert b"\r\na1 OK" in b"\r\n" + _ask(s, CTRL_C + b"a1 LOGIN alice secret", rb"^a1 .*\r\n")
        assert _ask(s, CTRL_C + b"a2 APPEND INBOX {26}", rb"^\+ .*\r\n").startswith(b"+")
        reply = _ask(s, b"Subject: t\r\n\r\nkeep \xff\xf4 this", rb"^a2 .*\r\n")
        assert re.search(rb"^a2 OK", reply, re.M), reply
        assert re.search(rb"^a3 OK", _ask(s, CTRL_C + b"a3 LOGOUT", rb"^a3 .*\r\n"), re.M)
    with imaplib.IMAP4("127.0.0.1", hub.ports["imap"]) as imap:
        imap.login("alice", "secret")
        imap.select("INBOX")
        typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
        assert typ == "OK" and data[0][1] == b"keep \xff\xf4 this"
