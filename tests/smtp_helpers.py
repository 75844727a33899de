"""
Helpers for the SMTP end-to-end tests: a raw-socket SMTP session that
reads whole replies, and a look into the Maildirs on disk.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import ssl

from tests.hubprocess import client_context


class RawSMTP:
    """
    A client that sends exactly the bytes it is given and reads replies as
    the server sends them (several lines of one multi-line reply together).
    """

    def __init__(self, port: int, host: str = "127.0.0.1", tls: bool = False, timeout: float = 15):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            self.sock = client_context().wrap_socket(self.sock, server_hostname="localhost")
        self.pending = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete reply (all its lines), without the final CRLF."""
        while True:
            m = re.search(rb"(?m)^\d{3} [^\n]*\n", self.pending)
            if m:
                text, self.pending = self.pending[: m.end()], self.pending[m.end() :]
                return text.rstrip(b"\r\n")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"server closed; had {self.pending!r}")
            self.pending += chunk

    def command(self, line: bytes, end: bytes = b"\r\n") -> bytes:
        self.send(line + end)
        return self.reply()

    def starttls(self) -> bytes:
        r = self.command(b"STARTTLS")
        assert r.startswith(b"220"), r
        self.sock = client_context().wrap_socket(self.sock, server_hostname="localhost")
        return r

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def stored(hub, address: str) -> list[bytes]:
    """Every message in the account's Maildir (new/ and cur/), oldest first."""
    root = hub.maildir(address)
    files = glob.glob(os.path.join(root, "new", "*")) + glob.glob(os.path.join(root, "cur", "*"))
    files.sort(key=os.path.getmtime)
    out = []
    for path in files:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def stored_with(hub, address: str, token: bytes) -> list[bytes]:
    """The stored messages of C{address} that contain C{token}."""
    return [m for m in stored(hub, address) if token in m]


def strip_trace(message: bytes) -> bytes:
    """The message without the Return-Path/Received lines the hub put on top."""
    lines = message.split(b"\r\n")
    i = 0
    while i < len(lines) and (
        lines[i].startswith(b"Return-Path:") or lines[i].startswith(b"Received:") or lines[i].startswith(b"\t")
    ):
        i += 1
    return b"\r\n".join(lines[i:])
