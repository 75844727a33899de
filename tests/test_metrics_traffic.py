"""
/metrics, the rest of issue 14's list: octets in and out per listener,
SFTP transfers and octets, and SMTP refusals by reason; parsed with
prometheus_client's parser while a test speaks to the real hub.
"""

from __future__ import annotations

import io
import socket

import pytest

from tests.test_metrics import scrape, value
from twisted_mailhub.metrics import rejection_reason


def smtp_session(hub, lines: list[bytes]) -> tuple[int, int]:
    """Send each line, read its reply; returns (octets sent, octets received)."""
    s = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=20)
    received = len(s.recv(4096))
    sent = 0
    for line in lines:
        s.sendall(line + b"\r\n")
        sent += len(line) + 2
        reply = b""
        while not reply.endswith(b"\r\n") or reply.split(b"\r\n")[-2][3:4] == b"-":
            reply += s.recv(4096)
        received += len(reply)
    s.close()
    return sent, received


def test_octets_per_listener_and_smtp_refusals_by_reason_are_counted(start_hub):
    hub = start_hub("--quota", "1k", "--max-message-size", "100000")
    before = scrape(hub)
    sent, received = smtp_session(
        hub,
        [
            b"EHLO client.test",
            b"MAIL FROM:<judy@jbc.test> SIZE=999999999",  # too big
            b"MAIL FROM judy@jbc.test",  # syntax
            b"MAIL FROM:<judy@jbc.test>",
            b"RCPT TO:<nobody@localhost>",  # unknown user
            b"RCPT TO:<someone@elsewhere.test>",  # relay denied
            b"RSET",
            b"MAIL FROM:<judy@jbc.test>",
            b"RCPT TO:<alice@localhost>",
            b"DATA",
            b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 2 + b".",  # quota (1k), in lines of at most 1000 octets
            b"QUIT",
        ],
    )
    after = scrape(hub)

    def moved(reason):
        return value(after, "mailhub_rejections_total", listener="smtp", reason=reason) - value(before, "mailhub_rejections_total", listener="smtp", reason=reason)

    assert {r: moved(r) for r in ("too_big", "syntax", "unknown_user", "relay_denied", "quota")} == {
        "too_big": 1, "syntax": 1, "unknown_user": 1, "relay_denied": 1, "quota": 1,
    }
    got_in = value(after, "mailhub_listener_octets_total", listener="smtp", direction="received") - value(before, "mailhub_listener_octets_total", listener="smtp", direction="received")
    got_out = value(after, "mailhub_listener_octets_total", listener="smtp", direction="sent") - value(before, "mailhub_listener_octets_total", listener="smtp", direction="sent")
    assert got_in == sent
    assert got_out == received
    # The scrapes themselves went over the web listener.
    assert value(after, "mailhub_listener_octets_total", listener="web", direction="sent") > 0


def test_sftp_transfers_and_octets_are_counted(hub):
    paramiko = pytest.importorskip("paramiko")
    before = scrape(hub)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="alice", password="secret", allow_agent=False, look_for_keys=False, timeout=20)
    sftp = client.open_sftp()
    sftp.putfo(io.BytesIO(b"u" * 5000), "up.bin")
    back = io.BytesIO()
    sftp.getfo("up.bin", back)
    client.close()
    assert back.getvalue() == b"u" * 5000
    after = scrape(hub)
    for direction in ("upload", "download"):
        assert value(after, "mailhub_sftp_transfers_total", direction=direction) - value(before, "mailhub_sftp_transfers_total", direction=direction) == 1
        assert value(after, "mailhub_sftp_octets_total", direction=direction) - value(before, "mailhub_sftp_octets_total", direction=direction) == 5000
    assert value(after, "mailhub_listener_octets_total", listener="sftp", direction="received") > 5000


def test_rejection_reasons_come_from_the_enhanced_status_code():
    assert rejection_reason(550, "5.7.1 Message refused: it fails DMARC and x.test asks receivers to reject") == "dmarc"
    assert rejection_reason(554, "5.7.1 <a@b.test>: Relay access denied") == "relay_denied"
    assert rejection_reason(552, "5.2.2 <a@localhost>: Mailbox full") == "quota"
    assert rejection_reason(503, "5.5.1 Error: need MAIL command") is None
    assert rejection_reason(250, "2.0.0 Ok") is None
