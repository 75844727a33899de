# -*- test-case-name: tests.test_dual_stack -*-
"""
IPv4 clients of a dual-stack listener (C{tcp6:PORT}: one IPv6 socket that
takes IPv4 connections too, which the kernel shows as C{::ffff:a.b.c.d},
RFC 4291 §2.5.5.2) are IPv4 clients to every protocol: their FTP data
connections work in every mode, SMTP names them as IPv4 in its greeting
and C{Received:} line, the log and the limits use the IPv4 address.

The listeners are bound to C{::ffff:127.0.0.1}: an IPv6 socket reachable
only from IPv4 loopback, as C{tcp6:PORT} on C{::} is from everywhere.
"""

from __future__ import annotations

import ftplib
import io
import poplib
import smtplib
import socket

import pytest

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from twisted_mailhub.hub import ListenerFactory, ipv4_of_mapped, show_ipv4_unmapped

MAPPED_LOOPBACK = "tcp6:0:interface=\\:\\:ffff\\:127.0.0.1"


def _dual_stack_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::ffff:127.0.0.1", 0))
        return True
    except OSError:
        return False


needs_dual_stack = pytest.mark.skipif(
    not _dual_stack_works(), reason="this machine has no IPv6 sockets that take IPv4 (IPV6_V6ONLY forced or no IPv6)"
)


def test_a_mapped_address_is_its_ipv4_address_and_others_are_left_alone():
    assert ipv4_of_mapped(IPv6Address("TCP", "::ffff:192.0.2.7", 2525)) == IPv4Address("TCP", "192.0.2.7", 2525)
    assert ipv4_of_mapped(IPv6Address("TCP", "::FFFF:192.0.2.7", 1)) == IPv4Address("TCP", "192.0.2.7", 1)
    assert ipv4_of_mapped(IPv6Address("TCP", "::1", 2525)) is None
    assert ipv4_of_mapped(IPv6Address("TCP", "2001:db8::1", 2525)) is None
    assert ipv4_of_mapped(IPv4Address("TCP", "192.0.2.7", 2525)) is None
    assert ipv4_of_mapped(None) is None


def test_a_listener_hands_its_protocols_the_ipv4_address_of_a_mapped_client():
    seen = {}

    class Recorder:
        def buildProtocol(self, addr):
            seen["addr"] = addr
            proto = type("P", (), {})()
            proto.makeConnection = lambda transport: seen.update(peer=transport.getPeer(), host=transport.getHost())
            return proto

    factory = ListenerFactory(Recorder())
    proto = factory.buildProtocol(IPv6Address("TCP", "::ffff:192.0.2.7", 40000))
    transport = StringTransport(
        hostAddress=IPv6Address("TCP", "::ffff:192.0.2.1", 25), peerAddress=IPv6Address("TCP", "::ffff:192.0.2.7", 40000)
    )
    proto.makeConnection(transport)
    assert seen == {
        "addr": IPv4Address("TCP", "192.0.2.7", 40000),
        "peer": IPv4Address("TCP", "192.0.2.7", 40000),
        "host": IPv4Address("TCP", "192.0.2.1", 25),
    }


def test_a_real_ipv6_client_keeps_its_address():
    transport = StringTransport(
        hostAddress=IPv6Address("TCP", "2001:db8::1", 25), peerAddress=IPv6Address("TCP", "2001:db8::7", 40000)
    )
    show_ipv4_unmapped(transport)
    assert transport.getPeer() == IPv6Address("TCP", "2001:db8::7", 40000)
    assert transport.getHost() == IPv6Address("TCP", "2001:db8::1", 25)


@needs_dual_stack
def test_ftp_data_connections_of_an_ipv4_client_work_in_pasv_port_epsv_and_eprt(start_hub):
    hub = start_hub("--ftp", MAPPED_LOOPBACK, "--no-sftp", "--no-web", "--no-webs")
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.storbinary("STOR four", io.BytesIO(b"over IPv4"))  # PASV: ftplib's choice on IPv4
    assert f.sendcmd("PASV").startswith("227 Entering Passive Mode (127,0,0,1,")
    got = []
    for mode in ("PASV", "PORT", "EPSV", "EPRT"):
        f.set_pasv(mode in ("PASV", "EPSV"))
        f.af = socket.AF_INET6 if mode.startswith("E") else socket.AF_INET  # ftplib: EPSV/EPRT when af is not INET
        if mode == "EPRT":
            # ftplib would send |2|; a client on IPv4 says |1|.
            with socket.create_server(("127.0.0.1", 0)) as listener:
                port = listener.getsockname()[1]
                assert f.sendcmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
                f.putcmd("RETR four")
                assert f.getresp().startswith("150")
                conn, _ = listener.accept()
                with conn:
                    got.append((mode, conn.makefile("rb").read()))
                assert f.voidresp().startswith("226")
            continue
        buf = io.BytesIO()
        f.retrbinary("RETR four", buf.write)
        got.append((mode, buf.getvalue()))
    assert got == [(mode, b"over IPv4") for mode in ("PASV", "PORT", "EPSV", "EPRT")]
    f.quit()
    hub.wait_for_log(r"ftp login alice from 127\.0\.0\.1")  # (the log is read in a thread: wait for it)
    assert "Traceback" not in hub.log


@needs_dual_stack
def test_smtp_names_an_ipv4_client_of_a_dual_stack_listener_by_its_ipv4_address(start_hub):
    hub = start_hub("--smtp", MAPPED_LOOPBACK, "--pop3", MAPPED_LOOPBACK, "--no-sftp", "--no-web", "--no-webs")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], local_hostname="client.example", timeout=30) as s:
        code, text = s.ehlo()
        assert code == 250
        assert text.splitlines()[0].endswith(b"Hello client.example [127.0.0.1]")
        s.sendmail("bob@example.org", ["alice@localhost"], b"Subject: four\r\n\r\nover IPv4\r\n")
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    p.user("alice")
    p.pass_("secret")
    _, lines, _ = p.retr(1)
    p.quit()
    received = b" ".join(line for line in lines[:4] if line.startswith((b"Received:", b"\t", b" ")))
    assert b"from client.example" in received
    assert b"[127.0.0.1]" in received
    assert b"::ffff" not in received.lower()
    hub.wait_for_log(r"pop3 login alice from 127\.0\.0\.1")  # (the log is read in a thread: wait for it)
    assert "client=127.0.0.1" in hub.log
    about_clients = [line for line in hub.log.splitlines() if " login " in line or "client=" in line]
    assert about_clients and not [line for line in about_clients if "::ffff" in line.lower()]


def test_an_ipv4_client_may_name_itself_in_ipv4_mapped_form_in_eprt(hub):
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.storbinary("STOR four", io.BytesIO(b"over IPv4"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        assert f.sendcmd(f"EPRT |2|::ffff:127.0.0.1|{port}|").startswith("200")
        f.putcmd("RETR four")
        assert f.getresp().startswith("150")
        conn, _ = listener.accept()
        with conn:
            assert conn.makefile("rb").read() == b"over IPv4"
        assert f.voidresp().startswith("226")
    f.quit()
