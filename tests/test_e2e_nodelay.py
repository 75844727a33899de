"""
TCP_NODELAY on every connection the real hub accepts, on every listener.

Without it a reply written in two pieces (or in two turns of the reactor)
waits for the client's ACK of the first piece, which the client delays
by 40-200 ms (Nagle's algorithm and delayed ACK). The test looks at the
hub's own end of each connection: it copies the hub's socket with
C{pidfd_getfd(2)} (Linux 5.6, the right to ptrace the hub: the test's own
child) and asks it. Where that system call is not allowed the test is
skipped, saying so, except under CI (C{CI} set), where it fails.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import ssl

import pytest

from tests.hubprocess import client_context
from twisted_mailhub import testing

_PIDFD_GETFD = 438  # the same number on every Linux architecture


def _hub_socket_nodelay(pid: int, client: tuple) -> int | None:
    """
    TCP_NODELAY (0 or 1) of the hub's socket whose peer is C{client}
    ((host, port)), or L{None} if the hub has no such socket.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue  # closed meanwhile
            fd = libc.syscall(_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                code = ctypes.get_errno()
                if code == errno.EBADF:
                    continue  # closed meanwhile
                raise OSError(code, os.strerror(code))
            with socket.socket(fileno=fd) as copy:
                if copy.family not in (socket.AF_INET, socket.AF_INET6) or copy.type != socket.SOCK_STREAM:
                    continue
                try:
                    peer = copy.getpeername()[:2]
                except OSError:
                    continue  # a listening socket
                if peer == client:
                    return copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        os.close(pidfd)
    return None


def _first_octets(name: str, tls: str, port: int) -> tuple[socket.socket, tuple]:
    """Connect to listener C{name} and read its first reply (so the hub has accepted)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = sock.getsockname()[:2]
    if tls == "implicit":
        sock = client_context().wrap_socket(sock)
    if name in ("web", "webs"):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert sock.recv(100), f"{name} closed the connection"
    return sock, client


def test_every_listener_sets_tcp_nodelay_on_each_accepted_connection(start_hub):
    hub = start_hub()
    listeners = testing.listener_names(None)
    assert {"smtp", "imap", "imaps", "pop3", "web", "ftp", "sftp"} <= {name for name, _ in listeners}
    seen = {}
    for name, tls in listeners:
        sock, client = _first_octets(name, tls, hub.ports[name])
        try:
            seen[name] = _hub_socket_nodelay(hub.process.pid, client)
        except OSError as e:
            message = f"pidfd_getfd(2) is not allowed here ({e.strerror}): cannot look at the hub's sockets"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        finally:
            sock.close()
    assert seen == {name: 1 for name, _ in listeners}
