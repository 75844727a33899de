"""
SFTP login grace time (issue 8 item 26's kind, as sshd's LoginGraceTime):
a client that never logs in is disconnected however busy it keeps the
line; with task.Clock, and on the real hub with a raw socket and paramiko.
"""

from __future__ import annotations

import io
import socket
import time

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.sftp.keys import load_host_keys
from twisted_mailhub.sftp.ssh import MailhubSSHFactory, SFTPSettings
from twisted_mailhub.store.memory import MemoryStore


class LoginGraceTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        data = self.mktemp()
        self.hub = Hub(self.clock, {}, AccountBook(["localhost"]), MemoryStore(), data, "mail.test")
        settings = SFTPSettings(self.hub, max_handles=8, max_packet=65536, idle_timeout=600, login_timeout=120)
        self.factory = MailhubSSHFactory(settings, load_host_keys(data))

    def connect(self):
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2222))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 2222))
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, None)
        return proto, transport

    def test_client_trickling_its_handshake_is_disconnected_at_the_grace_time(self):
        proto, transport = self.connect()
        for byte in b"SSH-2.0-slow\r\n" + b"\x00" * 10:
            self.clock.advance(10)  # inside the 600 s idle limit every time
            proto.dataReceived(bytes([byte]))
        self.assertIn(b"not logged in after 120 seconds", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_logged_in_client_is_not_held_to_the_grace_time(self):
        proto, transport = self.connect()
        proto.avatar = object()  # what userauth sets on success
        proto.logoutFunction = lambda: None
        self.clock.advance(121)
        self.assertNotIn(b"not logged in", transport.value())
        self.assertFalse(transport.disconnecting)


def test_sftp_client_that_does_not_log_in_is_cut_off_and_one_that_did_stays(start_hub):
    paramiko = pytest.importorskip("paramiko")
    hub = start_hub("--sftp-login-timeout", "4")  # time enough for paramiko to log in on a busy machine
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="alice", password="secret", allow_agent=False, look_for_keys=False, timeout=20)
    s = socket.create_connection(("127.0.0.1", hub.ports["sftp"]), timeout=20)
    start = time.monotonic()
    out = b""
    for byte in b"SSH-2.0-trickle\r\n" + b"\x00" * 200:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        s.settimeout(0.2)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    assert b"not logged in after 4 seconds" in out
    assert 3.5 < time.monotonic() - start < 20
    sftp = client.open_sftp()  # logged in before the grace time ran out: still served
    sftp.putfo(io.BytesIO(b"still here\n"), "after.txt")
    assert "after.txt" in sftp.listdir(".")
    client.close()


class TrickledPacketTests(unittest.TestCase):
    """
    Octets of one SSH packet trickled a few every few seconds are not
    activity: the idle timer runs on from the last whole packet.
    """

    def setUp(self):
        LoginGraceTests.setUp(self)

    connect = LoginGraceTests.connect

    def test_a_packet_trickled_an_octet_at_a_time_does_not_hold_the_connection_past_the_idle_time(self):
        proto, transport = self.connect()
        proto.avatar = object()  # logged in: the grace time is not what ends it
        proto.logoutFunction = lambda: None
        # The first block of a 1024-octet packet (length 1020, padding 4),
        # then its body an octet at a time.
        proto.dataReceived(b"SSH-2.0-slow\r\n" + b"\x00\x00\x03\xfc\x04" + b"\x14\x00\x00")
        for _ in range(70):  # 700 s, one octet of a packet every 10 s
            if transport.disconnecting:
                break
            self.clock.advance(10)
            proto.dataReceived(b"\x00")
        self.assertIn(b"idle timeout", transport.value())
        self.assertTrue(transport.disconnecting)
