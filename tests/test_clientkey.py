"""
One IPv6 host has a /64 (2**64 addresses, a new temporary one whenever it
likes: RFC 8981): every per-client thing counts an IPv6 address as its
network of C{--ipv6-prefix} bits (default 64), not as itself
(L{twisted_mailhub.clientkey}): the connection limits of every listener and
FTP's own, the failed-login throttle, the web console's "sessions from your
address". Unit tests for each, and the real hub behind PROXY headers
naming addresses of one /64.
"""

from __future__ import annotations

import imaplib
import socket
import subprocess
import sys
import time

import pytest
from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock

from twisted_mailhub import clientkey
from twisted_mailhub.clientkey import client_key
from twisted_mailhub.hub import ConnectionLimits, LimitedFactory
from twisted_mailhub.login import ClientPortal, LoginThrottle

ONE_HOST = ["2001:db8:1:2::a", "2001:db8:1:2:ffff:1:2:3", "2001:db8:1:2::7e57"]
ANOTHER_HOST = "2001:db8:1:3::a"


@pytest.fixture(autouse=True)
def default_prefix():
    clientkey.configure(clientkey.DEFAULT_PREFIX)
    yield
    clientkey.configure(clientkey.DEFAULT_PREFIX)


def test_an_ipv6_address_is_its_64_and_an_ipv4_one_itself():
    assert {client_key(a) for a in ONE_HOST} == {"2001:db8:1:2::/64"}
    assert client_key(ANOTHER_HOST) == "2001:db8:1:3::/64"
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # not all of IPv4 as one client
    assert client_key("fe80::1%eth0") != client_key("fe80::1%eth1")
    assert client_key("") == ""  # a UNIX socket's peer
    clientkey.configure(128)
    assert client_key(ONE_HOST[0]) == "2001:db8:1:2::a/128"
    clientkey.configure(48)
    assert client_key(ANOTHER_HOST) == client_key(ONE_HOST[0]) == "2001:db8:1::/48"


def test_the_ipv6_prefix_option_takes_1_to_128_bits_and_says_what_it_wants():
    from twisted.python import usage

    from twisted_mailhub.tap import Options

    options = Options()
    options.parseOptions(["--ipv6-prefix", "56"])
    assert options["ipv6-prefix"] == 56
    for bad in ("0", "129", "64.5", "-1", "/64", "1" * 40):
        with pytest.raises(usage.UsageError) as e:
            Options().parseOptions(["--ipv6-prefix", bad])
        assert str(e.value).startswith("--ipv6-prefix wants the bits of an IPv6 network that count as one client, 1 to 128")


class Quiet(protocol.Protocol):
    pass


class Listener(protocol.Factory):
    protocol = Quiet


def test_the_per_address_connection_limit_counts_an_ipv6_host_once():
    factory = LimitedFactory(Listener(), ConnectionLimits(0, 2), "smtp")
    built = [factory.buildProtocol(IPv6Address("TCP", a, 5000)) for a in ONE_HOST]
    assert [type(p).__name__ for p in built] == ["Quiet", "Quiet", "_Refusal"]
    assert type(factory.buildProtocol(IPv6Address("TCP", ANOTHER_HOST, 5000))).__name__ == "Quiet"
    built[0].connectionLost(None)  # one of that host's connections closes
    assert type(factory.buildProtocol(IPv6Address("TCP", ONE_HOST[2], 5001))).__name__ == "Quiet"


def test_the_ftp_per_address_limit_counts_an_ipv6_host_once(tmp_path):
    from twisted_mailhub.ftp.server import MailhubFTPFactory

    class Session:
        def __init__(self, address):
            self.address = address

    factory = MailhubFTPFactory(None, banner="test", max_per_ip=2)
    sessions = [Session(a) for a in ONE_HOST]
    assert [factory.admit(s) for s in sessions] == [True, True, False]
    assert factory.admit(Session(ANOTHER_HOST)) is True
    factory.release(sessions[1])
    assert factory.admit(Session(ONE_HOST[2])) is True


class Refusing:
    """A portal that refuses every login."""

    def login(self, credentials, mind, *interfaces):
        from twisted.cred import error
        from twisted.internet import defer

        return defer.fail(error.UnauthorizedLogin())


def failure_delay(throttle, address, username):
    """How long the throttle holds back the answer to one failed login through a client's portal."""
    from twisted.cred.credentials import UsernamePassword

    before = set(throttle.clock.getDelayedCalls())
    d = ClientPortal(Refusing(), throttle, address, "imap").login(UsernamePassword(username.encode(), b"x"), None)
    d.addErrback(lambda f: None)
    [held] = set(throttle.clock.getDelayedCalls()) - before
    delay = held.getTime() - throttle.clock.seconds()
    throttle.clock.advance(delay)  # answered: the client's next attempt is checked (one at a time)
    return delay


def test_failed_logins_from_one_ipv6_host_are_throttled_together_whatever_address_it_takes():
    throttle = LoginThrottle(Clock(), step=0.1, cap=10)
    # A new address and a new name for each guess: only the host is common.
    delays = [failure_delay(throttle, f"2001:db8:1:2::{n:x}", f"guess{n}") for n in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert failure_delay(throttle, ANOTHER_HOST, "someone") == pytest.approx(0.1)


def test_the_console_shows_a_student_the_anonymous_sessions_of_their_own_ipv6_host():
    from types import SimpleNamespace

    from twisted_mailhub.web.console import can_see

    student = SimpleNamespace(is_teacher=False, address="alice@localhost")
    typed_by_hand = SimpleNamespace(account=None, client=(ONE_HOST[1], 40000))
    assert can_see(student, ONE_HOST[0], typed_by_hand)
    assert not can_see(student, ANOTHER_HOST, typed_by_hand)


# -- the real hub, clients named by PROXY headers -------------------------------------


def proxied(hub, name: str, address: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", hub.ports[name]), timeout=20)
    s.sendall(f"PROXY TCP6 {address} ::1 40000 25\r\n".encode())
    return s


def first_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_hub_limits_and_throttles_an_ipv6_host_by_its_64(start_hub):
    hub = start_hub(
        "--smtp", "haproxy:tcp:0:interface=127.0.0.1",
        "--imap", "haproxy:tcp:0:interface=127.0.0.1",
        "--max-connections-per-ip", "2",
        "--trusted-networks", "127.0.0.0/8,2001:db8::/32",  # plaintext LOGIN from them
    )
    held = [proxied(hub, "smtp", a) for a in ONE_HOST[:2]]
    try:
        assert all(first_line(s).startswith(b"220 ") for s in held)
        third = proxied(hub, "smtp", ONE_HOST[2])
        assert first_line(third) == b"421 4.7.0 Error: too many connections from your address\r\n"
        third.close()
        other = proxied(hub, "smtp", ANOTHER_HOST)
        assert first_line(other).startswith(b"220 ")
        other.close()
    finally:
        for s in held:
            s.close()
    hub.wait_for_log(rf"smtp: refused a connection from {ONE_HOST[2]}: too many connections")
    # Failed IMAP logins, each from a new address of the host and with a
    # new name: the fifth waits for the host's fifth failure (0.5 s).
    for n in range(1, 6):
        s = proxied(hub, "imap", f"2001:db8:1:2::{n:x}")
        try:
            assert first_line(s).startswith(b"* OK")
            started = time.monotonic()
            s.sendall(f"a LOGIN guess{n} wrong\r\n".encode())
            assert first_line(s).startswith(b"a NO")
            waited = time.monotonic() - started
        finally:
            s.close()
    assert waited >= 0.45, waited
