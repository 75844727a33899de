"""
Hard to break: garbage on every listener gets protocol errors or a closed
connection, never a crashed handler, and the hub keeps serving everyone.
"""

import random
import socket
import ssl
import time
import zlib

import pytest

from tests.hubprocess import client_context

PLAIN = ["smtp", "submission", "pop3", "imap", "ftp"]
IMPLICIT_TLS = ["smtps", "pop3s", "imaps"]

GREETING = {"smtp": b"220", "submission": b"220", "smtps": b"220", "pop3": b"+OK", "pop3s": b"+OK", "imap": b"* OK", "imaps": b"* OK", "ftp": b"220"}


def payloads(seed: int):
    rng = random.Random(seed)
    yield b"\x00\xff\xfe garbage \x80\x81\r\n"
    yield b"A" * 200_000 + b"\r\n"  # over-long line
    yield "ünïcödé command\r\n".encode("utf-8")
    yield b"\r\n\r\n\n\n\r\r"
    yield b"{99999999999999999999}\r\n"  # absurd literal / number
    yield b"a001 LOGIN {-5}\r\n"
    yield b"MAIL FROM:<" + b"x" * 5000 + b">\r\n"
    yield b"PORT 1,2,3,4,5,6\r\nEPRT |9|x|y|\r\n"
    for _ in range(12):
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))


def connect(hub, name):
    sock = socket.create_connection(("127.0.0.1", hub.ports[name]), timeout=5)
    if name in IMPLICIT_TLS:
        sock = client_context().wrap_socket(sock)
    return sock


def greeting(hub, name) -> bytes:
    sock = connect(hub, name)
    try:
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


@pytest.mark.parametrize("name", PLAIN + IMPLICIT_TLS)
def test_garbage_gets_errors_and_the_hub_goes_on(hub, name):
    for i, payload in enumerate(payloads(zlib.crc32(name.encode()))):
        sock = connect(hub, name)
        try:
            sock.sendall(payload)
            # Done sending: the server answers what it got, then closes.
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except (socket.timeout, ConnectionResetError, ssl.SSLError, OSError):
                pass
        finally:
            sock.close()
        # After each piece of garbage, a new client is still greeted.
        assert greeting(hub, name).startswith(GREETING[name]), (name, i)
    log = hub.log
    print(log[-6000:])
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def exchange(hub, name, lines, end=b"\r\n"):
    """Send C{lines} at once, half-close, and return everything the hub said."""
    sock = connect(hub, name)
    sock.sendall(end.join(lines) + end)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    sock.close()
    return received


def test_imap_malformed_commands_get_bad_or_no_not_a_server_error(hub):
    said = exchange(hub, "imap", [
        b"a LOGIN alice secret",
        b"b SELECT INBOX",
        b"c STORE 1 +FLAGS",            # flag list missing
        b"d \xbbX\xfc garbage",          # command name not ASCII
        b"e RENAME Trash " + b"x" * 3000,  # longer than a directory name
        b"f NOOP",
    ])
    assert b"\r\nc BAD " in said, said
    assert b"* BAD command names are ASCII" in said or b"d BAD" in said, said
    assert b"\r\ne NO [CANNOT] mailbox name too long" in said, said
    assert b"\r\nf OK " in said, said
    assert b"SERVERBUG" not in said and b"Server error" not in said
    assert "Traceback" not in hub.log


def test_ftp_name_too_long_is_a_550(hub):
    said = exchange(hub, "ftp", [b"USER alice", b"PASS secret", b"MDTM " + b"x" * 3000, b"NOOP"])
    assert b"\r\n550 " in said, said
    assert said.rstrip().endswith(b"200 NOOP ok.") or b"\r\n200 " in said, said
    assert "Traceback" not in hub.log


def test_connection_limit_per_address_counts_every_listener(start_hub):
    hub = start_hub("--max-connections-per-ip", "3")
    held = [connect(hub, "pop3"), connect(hub, "imap"), connect(hub, "smtp")]
    try:
        for sock in held:
            assert sock.recv(100)  # greeted
        # The fourth, on any listener, is told why and closed.
        assert greeting(hub, "smtp").startswith(b"421 4.7.0 Error: too many connections")
        assert greeting(hub, "pop3").startswith(b"-ERR [SYS/TEMP] too many connections")
        # One leaves; the next is welcome again.
        held.pop().close()
        # The hub counts the connection out when it sees the close.
        deadline = time.monotonic() + 10
        reply = greeting(hub, "pop3")
        while not reply.startswith(b"+OK") and time.monotonic() < deadline:
            reply = greeting(hub, "pop3")
        assert reply.startswith(b"+OK"), reply
    finally:
        for sock in held:
            sock.close()
