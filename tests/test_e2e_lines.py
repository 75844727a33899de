"""
End-to-end: what the line engine's rules look like to a person with telnet
or nc, on every line protocol of the real hub (SMTP, POP3, FTP): time
limits, piped sessions, and how replies quote what was typed.
"""

from __future__ import annotations

import socket
import time

import pytest


def connect(hub, listener: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=20)
    s.settimeout(20)
    return s


def read_until_closed(s: socket.socket, limit: float = 20) -> bytes:
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


def piped(hub, listener: str, session: bytes) -> bytes:
    """`printf SESSION | nc -N 127.0.0.1 PORT`: send all, shut down the sending side, read to the end."""
    s = connect(hub, listener)
    s.sendall(session)
    s.shutdown(socket.SHUT_WR)
    with s:
        return read_until_closed(s)


# -- FTP time limits (issue 8 item 26) -----------------------------------------------


@pytest.fixture
def quick_ftp(start_hub):
    return start_hub("--ftp-login-timeout", "3", "--ftp-command-timeout", "1")


def test_ftp_client_that_never_logs_in_is_cut_off_at_the_login_timeout(quick_ftp):
    s = connect(quick_ftp, "ftp")
    start = time.monotonic()
    s.recv(1024)  # 220
    s.sendall(b"NOOP\r\n")
    out = read_until_closed(s)
    assert b"200" in out
    assert b"421 Not logged in after 3 seconds" in out
    assert 2.5 < time.monotonic() - start < 15


def test_ftp_client_trickling_a_command_line_is_cut_off(quick_ftp):
    s = connect(quick_ftp, "ftp")
    s.recv(1024)
    out = b""
    for byte in b"USER alice":
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.3)
    out = read_until_closed(s)
    assert b"421 A command line took over 1 seconds" in out
    assert b"331" not in out


def test_ftp_idle_timeout_defaults_to_300_seconds():
    from twisted_mailhub.ftp import component

    defaults = {row[0]: row[2] for row in component.option_parameters}
    assert defaults["ftp-idle-timeout"] == 300
    assert defaults["ftp-login-timeout"] == 300
    assert defaults["ftp-command-timeout"] == 120


# -- piped sessions ------------------------------------------------------------------


def test_ftp_session_piped_with_nc_is_answered_in_full(hub):
    out = piped(hub, "ftp", b"USER alice\r\nPASS secret\r\nPWD\r\nSYST\r\nQUIT")
    codes = [line[:3] for line in out.split(b"\r\n") if line]
    assert codes == [b"220", b"331", b"230", b"257", b"215", b"221"]
