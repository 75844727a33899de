"""
What an SFTP session leaves in the hub's log: the hub's own login line,
not Conch's chatter (debug lines with Python reprs, one per SSH window
adjustment, the moduli file on every connection) and not an error for a
client's ordinary logout.
"""

from __future__ import annotations

import time
import urllib.request

import pytest

from twisted.logger import capturedLogs

from tests.test_e2e_sftp import sftp_batch
from twisted_mailhub.sftp import ssh


def sftp_connections_open(hub) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith('mailhub_connections_open{listener="sftp"}'):
            return int(float(line.split()[-1]))
    return 0


def test_an_sftp_session_logs_its_login_and_no_conch_chatter(start_hub, tmp_path):
    hub = start_hub()
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 16 * 1024)  # 4 MiB: several window adjustments
    sftp_batch(hub, f"put {big} big.bin\nls -l\nget big.bin {tmp_path / 'back.bin'}\n")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    hub.wait_for_log(r"sftp login alice from 127\.0\.0\.1")
    deadline = time.monotonic() + 10
    while sftp_connections_open(hub) and time.monotonic() < deadline:
        time.sleep(0.05)  # the hub has yet to read the client's DISCONNECT
    assert sftp_connections_open(hub) == 0
    session = hub.log[hub.log.index("mailhub ready"):]
    lines = [line for line in session.splitlines()[1:] if "/metrics" not in line]
    assert not [line for line in lines if "#debug]" in line or "#error]" in line], session
    assert "b'" not in session and "Got remote error" not in session and "moduli" not in session, session
    assert [line for line in lines if "sftp" in line.lower()] == [line for line in lines if "sftp login alice from 127.0.0.1" in line], session


class _Quiet:
    connection_id = "sftp#7"


def test_a_disconnect_for_another_reason_is_one_line_in_the_hubs_words():
    with capturedLogs() as events:
        ssh.MailhubSSHTransport.receiveError(_Quiet(), 2, b"bad packet \x1b[31m")
        ssh.MailhubSSHTransport.receiveError(_Quiet(), 11, b"disconnected by user")
    from twisted.logger import formatEvent

    said = [formatEvent(e) for e in events]
    assert said == ["sftp#7: the client disconnected: SSH code 2, bad packet ^[[31m"]


def test_refused_channels_are_one_line_each_and_no_traceback(start_hub):
    paramiko = pytest.importorskip("paramiko")
    hub = start_hub()
    t = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    try:
        t.connect(username="alice", password="secret")
        with pytest.raises(paramiko.ChannelException):
            t.open_channel("direct-tcpip", ("127.0.0.1", hub.ports["smtp"]), ("127.0.0.1", 5555), timeout=10)
        sessions = []
        with pytest.raises(paramiko.ChannelException) as refused:
            for _ in range(ssh.MAX_CHANNELS + 1):
                sessions.append(t.open_session(timeout=10))
        assert len(sessions) == ssh.MAX_CHANNELS and refused.value.code == 4  # OPEN_RESOURCE_SHORTAGE
    finally:
        t.close()
    hub.wait_for_log(r"sftp: refused an SSH session beyond 10 on one connection for alice@localhost")
    assert "refused a direct-tcpip channel for alice@localhost" in hub.log
    assert "Traceback" not in hub.log and "#critical]" not in hub.log, hub.log
