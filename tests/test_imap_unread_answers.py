"""
A client that pipelines IMAP commands and does not read the answers (a
broken or hostile one): the hub stops reading its commands once about
1 MiB of answers wait to be sent (as POP3, SMTP and FTP do), so what it
holds for one connection stays bounded; when the client reads again,
every command is answered, in order.
"""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.hubprocess import client_context

COMMAND = b"a CAPABILITY\r\n"  # ~500 octets of answer for 14 sent
COUNT = 60_000  # ~0.8 MB of commands, ~30 MB of answers


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def read_until(sock, ending: bytes, deadline: float) -> bytes:
    got = bytearray()
    while not got.endswith(ending):
        assert time.monotonic() < deadline, "the answers stopped coming"
        data = sock.recv(1 << 20)
        assert data, "the hub closed the connection"
        got += data
    return bytes(got)


@pytest.mark.parametrize("tls", [False, True], ids=["imap", "imaps"])
def test_a_client_that_does_not_read_its_answers_is_not_read_either(hub, tls):
    port = hub.ports["imaps" if tls else "imap"]
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # (before connecting: the window is set then)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    sock = client_context().wrap_socket(raw) if tls else raw
    try:
        deadline = time.monotonic() + 60
        read_until(sock, b"ready\r\n", deadline)
        sock.sendall(b"l LOGIN alice secret\r\n")
        read_until(sock, b"l OK LOGIN succeeded\r\n", deadline)
        before = rss_kb(hub.pid)
        sock.settimeout(3)
        sent = 0
        payload = COMMAND * COUNT
        try:
            while sent < len(payload):
                sent += sock.send(payload[sent : sent + 65536])
        except (socket.timeout, ssl.SSLWantWriteError, TimeoutError):
            pass  # the hub stopped reading: what we expect
        time.sleep(1)
        grown = rss_kb(hub.pid) - before
        # Without the limit the hub read every command and held every
        # answer: ~30 MB of answers and more for their objects.
        assert grown < 15_000, f"the hub grew by {grown} KB for a client that does not read"
        sock.settimeout(10)
        got = bytearray()
        while sent < len(payload):
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except (socket.timeout, ssl.SSLWantWriteError, TimeoutError):
                pass
            sock.settimeout(0.01)
            try:
                got += sock.recv(1 << 20)
            except (socket.timeout, ssl.SSLWantReadError, TimeoutError):
                pass
            sock.settimeout(10)
        sock.sendall(b"z LOGOUT\r\n")
        got += read_until(sock, b"z OK LOGOUT successful\r\n", time.monotonic() + 60)
        assert got.count(b"a OK CAPABILITY completed\r\n") == COUNT
    finally:
        sock.close()


def test_the_wait_for_a_client_to_read_ends_when_its_connection_is_lost():
    # A connection lost keeps its unsent octets: the look every 50 ms must
    # stop then, not go on for the life of the hub.
    from twisted.internet import abstract, task

    from twisted_mailhub.imap import server

    clock = task.Clock()

    class Unsent(abstract.FileDescriptor):
        def __init__(self):
            abstract.FileDescriptor.__init__(self, reactor=clock)
            self.dataBuffer = b"x" * (2 * server.OUTPUT_HIGH)

    session = server.IMAPServer.__new__(server.IMAPServer)
    session.hub = type("Hub", (), {"reactor": clock})()
    session.transport = Unsent()
    session._output_taken()
    clock.advance(server.OUTPUT_POLL)
    assert len(clock.getDelayedCalls()) == 1  # still waiting for the client
    session._lost = True
    clock.advance(server.OUTPUT_POLL)
    assert clock.getDelayedCalls() == []
