"""
The CRLF line reader the raw-socket tests share (IMAP, POP3, the fuzzers):
for what a library client will not send; and reading until the server
closes (the timeout tests, a whole session piped in at once).
"""

from __future__ import annotations

import socket
import time


class LineReader:
    """
    Reads CRLF-terminated lines from C{self.sock} (a connected socket),
    keeping what follows the line in C{self.buf}.
    """

    sock = None
    buf = b""

    def line(self) -> bytes:
        """The next line without its CRLF; EOFError(bytes so far) when the server closes."""
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


def piped(hub, listener: str, session: bytes) -> bytes:
    """
    C{printf SESSION | nc -N 127.0.0.1 PORT} to the hub's listener C{listener}:
    send all of C{session} (bytes), shut down the sending side, and return
    all the hub said (bytes) until it closed (as L{read_until_closed}).
    """
    s = socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=20)
    s.sendall(session)
    s.shutdown(socket.SHUT_WR)
    with s:
        return read_until_closed(s)


def read_until_closed(s: socket.socket, limit: float = 20) -> bytes:
    """
    Everything C{s} receives until the server closes the connection (or
    resets it), or C{limit} seconds pass; the bytes, as received.
    """
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        out += chunk
    return out


def trickle(conn: socket.socket, octets: int = 40, every: float = 0.3) -> None:
    """Send C{octets} single octets C{every} seconds apart (a slowloris upload), stopping early when the peer breaks the connection."""
    for _ in range(octets):
        try:
            conn.sendall(b"x")
        except OSError:
            return
        time.sleep(every)
