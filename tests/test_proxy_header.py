"""
L{twisted_mailhub.proxyheader}: a C{haproxy:} listener reads the PROXY
header (v1 text, v2 binary) before the listener's own factory and protocol
see the connection, so both see the client's address from the start;
a connection with no header, a bad one or one too slow is closed and never
reaches them. StringTransport and task.Clock; the real HAProxy in front of
a real hub is C{tests/test_haproxy_client_address.py}.
"""

from __future__ import annotations

import socket
import struct

import pytest
from twisted.internet import protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from zope.interface import implementer

from twisted_mailhub import proxyheader
from twisted_mailhub.optionvalues import listener


class Seen(protocol.Protocol):
    """Records what its factory was asked with and what it sees when connected."""

    def __init__(self, asked):
        self.asked = asked
        self.received = b""
        self.lost = False

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


class Listener(protocol.Factory):
    def __init__(self):
        self.built = []

    def buildProtocol(self, addr):
        p = Seen(addr)
        self.built.append(p)
        return p


BALANCER = IPv4Address("TCP", "10.0.0.2", 40000)
HUB = IPv4Address("TCP", "10.0.0.11", 25)


def connect(timeout=proxyheader.HEADER_TIMEOUT, balancers=None, peer=BALANCER):
    clock, inner = Clock(), Listener()
    factory = proxyheader.ProxyHeaderFactory(inner, clock, "smtp", balancers, timeout=timeout)
    transport = StringTransport(hostAddress=HUB, peerAddress=peer)
    connection = factory.buildProtocol(BALANCER)
    connection.makeConnection(transport)
    return clock, inner, connection, transport


def v2(source: str, destination: str, sport: int, dport: int, command: int = 1) -> bytes:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    packed = socket.inet_pton(family, source) + socket.inet_pton(family, destination) + struct.pack("!HH", sport, dport)
    kind = 0x21 if family == socket.AF_INET6 else 0x11
    return proxyheader._V2_SIGNATURE + bytes([0x20 | command, kind]) + struct.pack("!H", len(packed)) + packed


def test_the_listener_protocol_sees_the_client_address_of_a_v1_header_from_its_first_moment():
    clock, inner, connection, transport = connect()
    assert inner.built == [] and transport.value() == b""  # nothing greets the balancer before the header
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 25\r\nEHLO client\r\n")
    [seen] = inner.built
    assert seen.asked == IPv4Address("TCP", "203.0.113.7", 51000)  # the factory (limits) is asked with it
    assert seen.peer == IPv4Address("TCP", "203.0.113.7", 51000)
    assert seen.host == IPv4Address("TCP", "192.0.2.1", 25)
    assert seen.received == b"EHLO client\r\n"
    assert transport.value() == b"220 hello\r\n"
    assert not clock.getDelayedCalls()


def test_a_v2_header_in_pieces_with_data_after_it_gives_the_client_address_and_the_data():
    clock, inner, connection, transport = connect()
    header = v2("2001:db8::7", "2001:db8::1", 51000, 143)
    for i in range(len(header)):
        connection.dataReceived(header[i : i + 1])
    assert len(inner.built) == 1
    connection.dataReceived(b"a1 CAPABILITY\r\n")
    [seen] = inner.built
    assert seen.peer == IPv6Address("TCP", "2001:db8::7", 51000)
    assert seen.received == b"a1 CAPABILITY\r\n"


def test_a_v1_header_byte_by_byte_is_read_whole():
    clock, inner, connection, transport = connect()
    for byte in b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 110\r\nUSER alice\r\n":
        connection.dataReceived(bytes([byte]))
    [seen] = inner.built
    assert seen.peer.host == "2001:db8::7" and seen.received == b"USER alice\r\n"


def test_an_ipv6_address_written_out_in_full_is_seen_in_its_usual_form():
    # (so --trusted-networks, the per-address limits and the log name one client one way)
    clock, inner, connection, transport = connect()
    connection.dataReceived(b"PROXY TCP6 0:0:0:0:0:0:0:1 0:0:0:0:0:0:0:1 51000 25\r\n")
    assert inner.built[0].peer == IPv6Address("TCP", "::1", 51000)


def test_an_ipv4_client_of_a_dual_stack_balancer_is_its_ipv4_address():
    clock, inner, connection, transport = connect()
    connection.dataReceived(v2("::ffff:203.0.113.7", "::ffff:192.0.2.1", 51000, 25))
    assert inner.built[0].peer == IPv4Address("TCP", "203.0.113.7", 51000)


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", "v2 LOCAL"])
def test_a_header_naming_no_client_keeps_the_socket_addresses(header):
    clock, inner, connection, transport = connect()
    connection.dataReceived(v2("127.0.0.1", "127.0.0.1", 1, 2, command=0) if header == "v2 LOCAL" else header)
    [seen] = inner.built
    assert (seen.peer, seen.host) == (BALANCER, HUB)


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client\r\n",  # a client that reached the hub around the balancer
        b"\x16\x03\x01\x02\x00\x01\x00",  # a TLS ClientHello
        b"PROXY TCP4 203.0.113.7\r\n",  # addresses missing
        b"PROXY TCP4 not-an-address 192.0.2.1 51000 25\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 port 25\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 25\r\n",
        b"PROXY TCP4 203.0.113.\xff 192.0.2.1 1 25\r\n",
        b"PROXY TCP4 " + b"1" * 120,  # no end within 107 octets
        b"PROXY SCTP 203.0.113.7 192.0.2.1 1 25\r\n",
        proxyheader._V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    ],
)
def test_a_connection_without_a_good_header_is_closed_and_reaches_nothing(data):
    clock, inner, connection, transport = connect()
    connection.dataReceived(data)
    assert inner.built == []
    assert transport.disconnecting or transport.disconnected
    assert transport.value() == b""  # no reply: the peer is no balancer
    assert not clock.getDelayedCalls()


def test_a_peer_that_is_no_balancer_is_closed_before_its_header_is_read():
    # (a client around the balancer claiming 127.0.0.1, inside --trusted-networks)
    from twisted_mailhub.hub import TrustedNetworks

    outsider = IPv4Address("TCP", "198.51.100.9", 40000)
    clock, inner, connection, transport = connect(balancers=TrustedNetworks(proxyheader.BALANCERS), peer=outsider)
    assert transport.disconnecting or transport.disconnected
    connection.dataReceived(b"PROXY TCP4 127.0.0.1 127.0.0.1 51000 25\r\nEHLO x\r\n")
    assert inner.built == [] and transport.value() == b"" and not clock.getDelayedCalls()


def test_a_balancer_in_the_private_networks_is_believed_by_default():
    from twisted_mailhub.hub import TrustedNetworks

    clock, inner, connection, transport = connect(balancers=TrustedNetworks(proxyheader.BALANCERS))
    connection.dataReceived(b"PROXY TCP4 198.51.100.9 10.0.0.11 51000 25\r\n")
    assert inner.built[0].peer.host == "198.51.100.9"


def test_a_connection_that_sends_no_header_in_time_is_closed():
    clock, inner, connection, transport = connect(timeout=10)
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 ")
    clock.advance(9.9)
    assert not (transport.disconnecting or transport.disconnected)
    clock.advance(0.2)
    assert transport.disconnecting or transport.disconnected
    assert inner.built == []


def test_a_connection_lost_before_its_header_leaves_no_timer_and_reaches_nothing():
    clock, inner, connection, transport = connect()
    connection.connectionLost(None)
    assert inner.built == [] and not clock.getDelayedCalls()


def test_the_listener_protocol_hears_of_the_connection_lost():
    clock, inner, connection, transport = connect()
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 25\r\n")
    connection.connectionLost(None)
    assert inner.built[0].lost


def test_the_socket_host_under_a_wrapper_is_the_hub_own_address_not_the_balancer_one():
    from twisted.protocols import policies

    clock, inner, connection, transport = connect()
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 21\r\n")
    outer = policies.ProtocolWrapper(policies.WrappingFactory(Listener()), Seen(None))
    outer.transport = connection  # as TLS or the transcript wrap it
    assert outer.getHost() == IPv4Address("TCP", "192.0.2.1", 21)
    assert proxyheader.socket_host(outer) == HUB


@pytest.mark.parametrize("description", ["haproxy:tcp:25", "HAPROXY:tcp:25:interface=127.0.0.1", "haproxy:tcp6:25", "haproxy:unix:/run/mailhub.sock"])
def test_a_haproxy_listener_description_is_taken(description):
    listener(description)


@pytest.mark.parametrize(
    "description, says",
    [
        ("haproxy:ssl:993", "behind haproxy: the header comes before TLS: use haproxy:tcp:PORT"),
        ("haproxy:haproxy:tcp:25", "haproxy: is given twice"),
        ("haproxy:tcp:70000", "the port is a number from 0 to 65535"),
    ],
)
def test_a_haproxy_listener_description_that_cannot_work_is_refused_in_one_line(description, says):
    with pytest.raises(ValueError) as refused:
        listener(description)
    assert says in str(refused.value) and "\n" not in str(refused.value)


@implementer(IHandshakeListener)
class TLSAtOnce(protocol.Protocol):
    """Starts TLS as soon as it is connected (an FTP data connection under PROT P)."""

    handshakes = 0

    def connectionMade(self):
        self.transport.startTLS(None)
        self.received = b""

    def dataReceived(self, data):
        self.received += data

    def handshakeCompleted(self):
        self.handshakes += 1


class StartsTLS(StringTransport):
    """A transport whose startTLS puts a layer in front of its protocol, as Twisted's TCP does."""

    def startTLS(self, context):
        self.layer = Seen(None)
        self.protocol = self.layer  # what the socket's octets reach from now on


def test_octets_after_the_header_reach_a_tls_layer_the_protocol_started_as_it_was_connected():
    inner = TLSAtOnce()

    class One(protocol.Factory):
        def buildProtocol(self, addr):
            return inner

    factory = proxyheader.ProxyHeaderFactory(One(), Clock(), "ftp data", None)
    transport = StartsTLS(hostAddress=HUB, peerAddress=BALANCER)
    connection = factory.buildProtocol(BALANCER)
    transport.protocol = connection
    connection.makeConnection(transport)
    # The client's TLS hello came in the same packet as the header: it
    # belongs to the TLS layer, not to the protocol as clear text.
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 50000\r\n\x16\x03\x01hello")
    assert transport.layer.received == b"\x16\x03\x01hello"
    assert inner.received == b""
    # The layer tells the wrapper of the finished handshake: the protocol hears it.
    connection.handshakeCompleted()
    assert inner.handshakes == 1


def test_a_balancer_closing_its_side_behind_a_wrapping_listener_ends_the_connection_without_recursion():
    # An implicit-TLS listener's protocol is a wrapper (TLS) that copies its
    # transport's interfaces: the half-close of an HAProxy health check went
    # round between it and the header's wrapper until "maximum recursion
    # depth exceeded", logged as an Unhandled Error for each check.
    from twisted.internet.error import ConnectionDone
    from twisted.protocols import policies
    from twisted.python.failure import Failure

    clock, inner = Clock(), Listener()
    factory = proxyheader.ProxyHeaderFactory(policies.WrappingFactory(inner), clock, "imaps", None)
    transport = StringTransport(hostAddress=HUB, peerAddress=BALANCER)
    connection = factory.buildProtocol(BALANCER)
    connection.makeConnection(transport)
    connection.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 993\r\n")
    [seen] = inner.built
    # What Twisted's TCP transport does when the peer closes its side:
    if IHalfCloseableProtocol.providedBy(connection):
        connection.readConnectionLost()
    else:
        connection.connectionLost(Failure(ConnectionDone()))
    assert seen.lost or transport.disconnecting
