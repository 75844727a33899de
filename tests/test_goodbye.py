"""
What open connections hear when the hub stops (twisted_mailhub/goodbye.py):
each protocol's own "shutting down, come back later" before the close, not a
bare EOF or a reset.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time

import paramiko
from twisted.internet import protocol as twisted_protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from tests.hubprocess import client_context
from twisted_mailhub import goodbye


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def _connect(port: int, tls: bool = False) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls:
        sock = client_context().wrap_socket(sock, server_hostname="localhost")
    return sock


def _say(sock: socket.socket, lines: bytes, until: bytes) -> bytes:
    """Send C{lines}; read until the answers hold C{until}."""
    sock.sendall(lines)
    got = b""
    while until not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return got


def test_a_stopping_hub_tells_every_open_session_in_its_protocols_words(start_hub):
    hub = start_hub()
    smtp = _connect(hub.ports["smtp"])
    hostname = smtp.recv(4096).split()[1].decode()  # 220 HOST ESMTP
    # in the middle of DATA: the client must learn the message was not taken
    _say(smtp, b"EHLO client\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n", b"\r\n354 ")
    smtp.sendall(b"Subject: half\r\n\r\nnot finished\r\n")
    pop3s = _connect(hub.ports["pop3s"], tls=True)
    pop3s.recv(4096)
    _say(pop3s, b"USER alice\r\n", b"\r\n")
    _say(pop3s, b"PASS secret\r\n", b"\r\n")
    imap = _connect(hub.ports["imap"])
    imap.recv(4096)
    _say(imap, b"a LOGIN alice secret\r\nb SELECT INBOX\r\n", b"b OK")
    _say(imap, b"c IDLE\r\n", b"+ ")
    ftp = _connect(hub.ports["ftp"])
    ftp.recv(4096)
    _say(ftp, b"USER alice\r\n", b"\r\n")
    _say(ftp, b"PASS secret\r\n", b"230")
    ssh = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    ssh.connect(username="alice", password="secret")
    sftp = paramiko.SFTPClient.from_transport(ssh)
    sftp.listdir(".")

    assert hub.stop(signal.SIGTERM, remove_data=False) in (0, -signal.SIGTERM)  # (twistd ends by the signal)

    assert _read_to_eof(smtp) == f"421 4.3.2 {hostname} Service shutting down, closing transmission channel; try again later\r\n".encode()
    assert _read_to_eof(pop3s) == b"-ERR [SYS/TEMP] the server is shutting down; try again later\r\n"
    assert _read_to_eof(imap) == b"* BYE [UNAVAILABLE] the server is shutting down; try again later\r\n"
    assert _read_to_eof(ftp) == b"421 Service not available, closing control connection: the server is shutting down; try again later.\r\n"
    deadline = time.monotonic() + 10
    while ssh.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not ssh.is_active()  # the SSH DISCONNECT came (RFC 4253 §11.1)
    assert "told 5 client connection(s) to come back later" in hub.log
    assert "Traceback" not in hub.log
    # the half-sent message was never acknowledged, and is not stored
    inbox = os.path.join(hub.maildir("alice@localhost"), "new")
    assert not os.path.isdir(inbox) or os.listdir(inbox) == []
    for sock in (smtp, pop3s, imap, ftp):
        sock.close()
    sftp.close()


def test_a_client_that_reads_nothing_does_not_hold_the_stop_up(start_hub):
    hub = start_hub()
    # Fill the way back: IMAP answers this client will never read.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", hub.ports["smtp"]))
    stuck.recv(4096)
    stuck.setblocking(False)
    try:
        while True:  # until neither way takes more: the hub's answers are not read
            stuck.send(b"NOOP\r\n" * 1000)
    except BlockingIOError:
        pass
    started = time.monotonic()
    assert hub.stop(signal.SIGTERM, remove_data=False) in (0, -signal.SIGTERM)  # (twistd ends by the signal)
    assert time.monotonic() - started < 8  # the goodbye waits at most goodbye.WAIT (1 s)
    stuck.close()


class _Wrapper(ProtocolWrapper):
    pass


def test_the_goodbye_is_said_by_the_protocol_under_every_wrapper():
    from twisted.mail import imap4

    inner = imap4.IMAP4Server()
    factory = WrappingFactory(twisted_protocol.Factory())
    outer = _Wrapper(factory, _Wrapper(factory, inner))
    assert goodbye.innermost(outer) is inner
    assert goodbye.goodbye_line(inner, "mail.test") == b"* BYE [UNAVAILABLE] the server is shutting down; try again later\r\n"


def test_protocols_without_a_goodbye_line_are_closed_as_before():
    from twisted.web.http import HTTPChannel

    assert goodbye.goodbye_line(HTTPChannel(), "mail.test") is None
    assert goodbye.goodbye_line(twisted_protocol.Protocol(), "mail.test") is None


def test_the_smtp_goodbye_names_the_host_and_never_shows_a_repr():
    from twisted.mail import smtp

    line = goodbye.goodbye_line(smtp.ESMTP(), "mail.test")
    assert line == b"421 4.3.2 mail.test Service shutting down, closing transmission channel; try again later\r\n"
    transport = StringTransport()
    server = smtp.ESMTP()
    server.makeConnection(transport)
    transport.clear()
    assert goodbye._tell(server, "mail.test") is True
    assert transport.value() == line and transport.disconnecting
