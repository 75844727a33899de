"""
A UNIX-socket listener (C{--pop3 unix:PATH}) is shown by its path wherever
the hub says where it listens: the C{mailhub ready} line, the
C{listening on} log line and C{mailhub-admin status} (a UNIX socket has no
port; these said port 0, and the log line showed a Python repr).
"""

from __future__ import annotations

import json
import os
import re
import socket

import pytest

from tests.test_control import mailhub_admin


def _ready_ports(log: str) -> dict:
    return json.loads(re.search(r"mailhub ready (\{.*\})", log).group(1))


def _greeting(path: str) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        return s.makefile("rb").readline()
    finally:
        s.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ready_line_log_and_status_show_a_unix_listener_by_its_path(start_hub, tmp_path, workers):
    path = str(tmp_path / "pop3.sock")
    hub = start_hub("--pop3", f"unix:{path}", "--workers", workers, "--no-web", "--no-webs", "--no-sftp")
    assert _greeting(path).startswith(b"+OK")
    ports = _ready_ports(hub.log)
    assert ports["pop3"] == path
    assert isinstance(ports["imap"], int) and ports["imap"] > 0
    assert hub.ports["pop3"] == path
    assert f"pop3 listening on unix:{path} (unix:{path})" in hub.log
    assert "UNIXAddress" not in hub.log
    status = mailhub_admin("status", "--data", hub.data_dir)
    assert status.returncode == 0, status.stderr
    assert f"  pop3\tunix:{path}\n" in status.stdout
    assert f"  imap\t{hub.ports['imap']}\n" in status.stdout
    assert "\t0\n" not in status.stdout


def test_an_ipv6_listener_is_logged_with_its_address_in_brackets(start_hub):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 on this machine")
    hub = start_hub("--pop3", "tcp6:0:interface=\\:\\:1", "--no-web", "--no-webs", "--no-sftp")
    assert f"pop3 listening on [::1]:{hub.ports['pop3']} " in hub.log
