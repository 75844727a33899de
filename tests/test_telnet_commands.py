"""
Telnet commands (RFC 854) typed from a C{telnet} client into SMTP, POP3
and IMAP: a Ctrl-C sends IAC IP and IAC DO TIMING-MARK in front of the
next command; they are taken out of command lines (as FTP does, RFC 959
§4) and never out of message text (SMTP DATA, an IMAP literal), where
octet 255 is data.
"""

from __future__ import annotations

import base64
import imaplib
import re
import socket
import ssl

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


# The SASL exchange's lines (RFC 4954 §4, RFC 5034 §4, RFC 3501 §6.2.2)
# are typed in the same telnet client: a Ctrl-C before the base64 line
# must not turn it into "not base64".
PLAIN = base64.b64encode(b"\0alice\0secret")


def test_smtp_auth_responses_lose_telnet_commands(hub):
    smtp_end = rb"^\d{3} .*\r\n\Z"
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as plain:
        assert plain.recv(4096).startswith(b"220")
        assert _ask(plain, b"EHLO student.example", smtp_end).startswith(b"250")
        # AUTH wants TLS (538 without it): openssl s_client -starttls smtp.
        assert _ask(plain, b"STARTTLS", smtp_end).startswith(b"220")
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        s = tls.wrap_socket(plain)
        assert _ask(s, b"EHLO student.example", smtp_end).startswith(b"250")
        assert _ask(s, b"AUTH LOGIN", smtp_end).startswith(b"334")
        assert _ask(s, CTRL_C + base64.b64encode(b"alice"), smtp_end).startswith(b"334")
        reply = _ask(s, CTRL_C + base64.b64encode(b"secret"), smtp_end)
        assert reply.startswith(b"235"), reply
        assert _ask(s, b"QUIT", smtp_end).startswith(b"221")


def test_pop3_sasl_responses_lose_telnet_commands(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"+OK")
        assert _ask(s, b"AUTH PLAIN", rb"\r\n\Z").startswith(b"+ ")
        reply = _ask(s, CTRL_C + PLAIN, rb"\r\n\Z")
        assert reply.startswith(b"+OK"), reply
        assert _ask(s, b"STAT", rb"\r\n\Z").startswith(b"+OK 0 0")
        assert _ask(s, b"QUIT", rb"\r\n\Z").startswith(b"+OK")


def test_imap_authenticate_responses_lose_telnet_commands(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"* OK")
        assert _ask(s, b"a1 AUTHENTICATE PLAIN", rb"^\+.*\r\n").startswith(b"+")
        reply = _ask(s, CTRL_C + PLAIN, rb"^a1 .*\r\n")
        assert re.search(rb"^a1 OK", reply, re.M), reply
        assert re.search(rb"^a2 OK", _ask(s, b"a2 LOGOUT", rb"^a2 .*\r\n"), re.M)


def test_a_line_starting_with_octet_255_before_no_telnet_command_is_refused_and_the_session_goes_on(hub):
    """
    IAC followed by an octet that is no Telnet command (a Latin-1 "ÿ"
    typed first, or 255 alone) is data: the line is refused as not
    ASCII/UTF-8 and named, and the next command works. Before, the
    prefix reader found no command and raised: SMTP "451 local error",
    POP3 "-ERR [SYS/TEMP] internal error", IMAP dropped the connection.
    """
    smtp_end = rb"^\d{3} .*\r\n\Z"
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"220")
        for line in (b"\xff NOOP", b"\xff", b"\xffa NOOP"):
            assert _ask(s, line, smtp_end) == b"500 5.5.2 Error: command contains non-ASCII characters\r\n"
        assert _ask(s, b"NOOP", smtp_end).startswith(b"250")
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"+OK")
        reply = _ask(s, b"\xff CAPA", rb"\r\n\Z")
        assert reply.startswith(b"-ERR unknown command '<FF>'"), reply
        assert _ask(s, b"\xff", rb"\r\n\Z").startswith(b"-ERR unknown command '<FF>'")
        assert _ask(s, b"CAPA", rb"^\.\r\n\Z").startswith(b"+OK")
    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as s:
        assert s.recv(4096).startswith(b"* OK")
        reply = _ask(s, b"\xff NOOP", rb"\r\n\Z")
        assert reply.startswith(b'* BAD bad tag "<FF>"'), reply
        assert _ask(s, b"\xff", rb"\r\n\Z").startswith(b'* BAD bad tag "<FF>"')
        assert _ask(s, b"b NOOP", rb"^b .*\r\n\Z").startswith(b"b OK")


def test_telnet_prefix_text_keeps_octet_255_before_no_telnet_command():
    from twisted_mailhub.lines import telnet_prefix_text

    assert telnet_prefix_text(b"\xff NOOP") == b"\xff NOOP"
    assert telnet_prefix_text(b"\xff") == b"\xff"
    assert telnet_prefix_text(CTRL_C + b"\xffa") == b"\xffa"
    assert telnet_prefix_text(CTRL_C + b"QUIT") == b"QUIT"
