# -*- test-case-name: tests.test_proxy_header -*-
"""
The PROXY protocol (HAProxy's, versions 1 and 2) in front of a listener:
a listener described C{haproxy:tcp:25} expects every connection to begin
with the balancer's header naming the client, and everything of the hub
then takes the client's address from it: the per-address connection
limits, the login throttle, C{--trusted-networks}, SPF and DMARC, the
Received line, the log's C{client=}, the session record and the console,
the FTP data connection check, SSH and the web.

One place: L{ProxyHeaderFactory} is the outermost factory of such a
listener. It reads the header I{before} any other part of the hub sees
the connection, then builds the listener's own protocol with the
client's address and gives it a transport (L{ProxiedConnection}) whose
C{getPeer}/C{getHost} are the header's. Twisted's own C{haproxy:}
wrapper (C{twisted.protocols.haproxy}) connects the wrapped protocol at
once and changes C{getPeer} only when the header has come: a protocol
that reads its peer when connected (SMTP's C{client_ip}, the session
record) and the factory's C{buildProtocol(addr)} (connection limits) kept
the balancer's address.

Only a balancer may name a client: a peer outside C{--proxy-from}
(default L{BALANCERS}: loopback and the private networks, where a balancer
in front of the hub sits) is closed before a byte is read, so a client
that reaches the hub around the balancer cannot claim to be 127.0.0.1
(C{--trusted-networks}) or anyone else (Dovecot's
C{haproxy_trusted_networks}).

A connection whose header is missing, malformed or not complete within
L{HEADER_TIMEOUT} seconds is closed without a word (as Dovecot and
Postfix's C{smtpd_upstream_proxy_protocol} do: the peer is no balancer
speaking the protocol). A header of C{PROXY UNKNOWN} (v1) or a v2
C{LOCAL} command (HAProxy's own health checks) keeps the socket's
addresses. The header's bytes themselves are parsed by Twisted's parsers.

"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.logger import Logger
from twisted.protocols import policies

# Twisted's parsers of the two header forms (twisted.protocols.haproxy's
# own modules; its public API is only the endpoint wrapper).
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

log = Logger()

PREFIX = "haproxy:"

#: Who may send a PROXY header without C{--proxy-from}: loopback and the
#: private networks (RFC 1918, RFC 4193), where balancers are.
BALANCERS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"

#: Seconds a connection may take to send its whole header. HAProxy sends
#: it with its first packet; Postfix waits 5 s (smtpd_upstream_proxy_timeout).
HEADER_TIMEOUT = 10.0

#: The longest v1 header (107 octets with its CRLF) and a v2 header's
#: 16 octets + its address block; more octets without a header end: closed.
_V1_MAX = 107
_V2_SIGNATURE = V2Parser.PREFIX  # 12 octets
_V1_SIGNATURE = b"PROXY "


def split(description: str) -> tuple[bool, str]:
    """
    C{(True, inner)} for a listener description C{haproxy:INNER} (any
    case), else C{(False, description)}.
    """
    if description[: len(PREFIX)].lower() == PREFIX:
        return True, description[len(PREFIX) :]
    return False, description


def problem(description: str) -> str | None:
    """
    Why a C{haproxy:} description cannot be served, or L{None}: the header
    comes before any TLS octet, so the TLS must be the listener's own
    (C{--imaps haproxy:tcp:993}), not an C{ssl:} endpoint, which would
    start TLS before the header could be read.
    """
    proxied, inner = split(description)
    if proxied and inner.split(":", 1)[0].lower() == "ssl":
        return "behind haproxy: the header comes before TLS: use haproxy:tcp:PORT (an implicit-TLS listener such as --imaps stays TLS)"
    if proxied and split(inner)[0]:
        return "haproxy: is given twice"
    return None


class ProxyHeaderFactory(protocol.Factory):
    """
    The outermost factory of a C{haproxy:} listener: each connection is a
    L{ProxiedConnection} that reads the PROXY header, then asks
    C{wrapped.buildProtocol} with the client's address.

    @ivar wrapped: the listener's own factory (limits, record, TLS...).
    @ivar reactor: for the header's deadline.
    @ivar name: the listener's name, for the log.
    @ivar balancers: the peers that may send a header (a container of
        address strings: L{twisted_mailhub.hub.TrustedNetworks}); L{None}:
        any peer.
    """

    noisy = False

    def __init__(self, wrapped: Any, reactor: Any, name: str, balancers: Any = None, timeout: float = HEADER_TIMEOUT):
        self.wrapped = wrapped
        self.reactor = reactor
        self.name = name
        self.balancers = balancers
        self.timeout = timeout

    def logPrefix(self) -> str:
        return self.name

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> "ProxiedConnection":
        return ProxiedConnection(self)

    # (ProtocolWrapper registers its connections with a WrappingFactory;
    # nothing here keeps a list of them.)
    def registerProtocol(self, p: Any) -> None:
        pass

    def unregisterProtocol(self, p: Any) -> None:
        pass


def _own(interface: Any, inner: Any) -> bool:
    """
    Whether C{inner}'s class implements C{interface} itself. Not
    C{providedBy}: a wrapper inside (TLS, C{policies.ProtocolWrapper})
    copies its transport's interfaces onto itself without the methods,
    which its C{__getattr__} then finds on this very transport.
    """
    return interface.implementedBy(type(inner))


class ProxiedConnection(policies.ProtocolWrapper):
    """
    One connection of a C{haproxy:} listener: until its header is read, a
    protocol of its own (nothing else of the hub has seen it); then the
    transport of the listener's protocol, with the header's addresses.

    It claims C{IHalfCloseableProtocol} and C{IHandshakeListener} only
    when the listener's protocol's class implements them (L{_own}): a TLS
    or other wrapper inside copies this transport's interfaces, and a
    half-close then went round between the two ("maximum recursion depth
    exceeded" for every implicit-TLS listener at an HAProxy health check).
    """

    wrappedProtocol: Any = None
    _peer: Any = None
    _host: Any = None
    _refused = False

    def __init__(self, factory: ProxyHeaderFactory):
        self.factory = factory
        self._buffer = b""
        self._deadline: Any = None

    def logPrefix(self) -> str:
        inner = self.wrappedProtocol
        if inner is not None and hasattr(inner, "logPrefix"):
            return inner.logPrefix()
        return self.factory.name

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        protocol.Protocol.makeConnection(self, transport)
        balancers = self.factory.balancers
        host = getattr(transport.getPeer(), "host", None)
        if balancers is not None and host is not None and host not in balancers:
            # (a UNIX socket's peer has no host: its permissions decide)
            self._refuse("not a balancer (--proxy-from)")
            return
        self._deadline = self.factory.reactor.callLater(self.factory.timeout, self._too_slow)

    # -- the header --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        inner = self.wrappedProtocol
        if inner is not None:
            inner.dataReceived(data)
            return
        if self._refused:
            return
        buffer = self._buffer = self._buffer + data
        try:
            info, rest = self._parse(buffer)
            if info is None:
                return
            source, destination = checked(info.source), checked(info.destination)
        except (InvalidProxyHeader, ValueError, UnicodeError, KeyError, IndexError):
            # (Twisted's parsers let a word that is no port or no ASCII
            # through as ValueError/UnicodeDecodeError.)
            self._refuse("its PROXY header is malformed")
            return
        self._buffer = b""
        self._connected(source, destination, rest)

    def _parse(self, buffer: bytes) -> tuple[Any, bytes]:
        """
        The header and what follows it, C{(None, b"")} while incomplete.

        @raise InvalidProxyHeader: not a PROXY header, or a malformed one.
        """
        if buffer.startswith(_V2_SIGNATURE[: len(buffer)]) and len(buffer) < 16:
            return None, b""  # a v2 header, or a v1 one, not yet told apart
        if buffer.startswith(_V2_SIGNATURE):
            if buffer[12] & 0xF0 != 0x20:
                raise InvalidProxyHeader()
            size = 16 + int.from_bytes(buffer[14:16], "big")
            if len(buffer) < size:
                return None, b""
            info, _ = V2Parser().feed(buffer[:size])
            return info, buffer[size:]
        if not _V1_SIGNATURE.startswith(buffer[:6]):
            raise InvalidProxyHeader()
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) >= _V1_MAX:
                raise InvalidProxyHeader()
            return None, b""
        if end + 2 > _V1_MAX:
            raise InvalidProxyHeader()
        line = buffer[:end]
        if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
            # (the spec's bare form, which Twisted's parser refuses)
            return ProxyInfo(line, None, None), buffer[end + 2 :]
        return V1Parser.parse(line), buffer[end + 2 :]

    def _connected(self, source: Any, destination: Any, rest: bytes) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        transport = self.transport
        self._peer = source if source is not None else transport.getPeer()
        self._host = destination if destination is not None else transport.getHost()
        inner = self.factory.wrapped.buildProtocol(self._peer)
        if inner is None:
            transport.loseConnection()
            return
        self.wrappedProtocol = inner
        for interface in (IHalfCloseableProtocol, IHandshakeListener):
            if _own(interface, inner):
                alsoProvides(self, interface)
        inner.makeConnection(self)
        if rest and not self.disconnecting and self.wrappedProtocol is not None:
            # A protocol that started TLS as it was connected (an FTP data
            # connection under PROT P) has a TLS layer outside this
            # wrapper now: what came after the header (the client's TLS
            # hello, sent as soon as it connected) goes through it.
            receiver = getattr(transport, "protocol", None)
            if receiver is None or receiver is self:
                inner.dataReceived(rest)
            else:
                receiver.dataReceived(rest)

    def _refuse(self, why: str) -> None:
        peer = self.transport.getPeer()
        log.info(
            "{name}: closed a connection from {host}: {why} (a haproxy: listener)",
            name=self.factory.name, host=getattr(peer, "host", "?"), why=why,
        )
        self._buffer = b""
        self._refused = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.transport.abortConnection() if hasattr(self.transport, "abortConnection") else self.transport.loseConnection()

    def _too_slow(self) -> None:
        self._deadline = None
        if self.wrappedProtocol is None:
            self._refuse(f"no PROXY header within {self.factory.timeout:g} s")

    # -- the listener's protocol's transport ----------------------------------

    def getPeer(self) -> Any:
        return self._peer if self._peer is not None else self.transport.getPeer()

    def getHost(self) -> Any:
        return self._host if self._host is not None else self.transport.getHost()

    def socket_host(self) -> Any:
        """This end of the socket itself (the header's destination is the balancer's)."""
        return self.transport.getHost()

    def readConnectionLost(self) -> None:
        inner = self.wrappedProtocol
        if inner is not None and _own(IHalfCloseableProtocol, inner):
            inner.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        inner = self.wrappedProtocol
        if inner is not None and _own(IHalfCloseableProtocol, inner):
            inner.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        # TLS started on this connection (STARTTLS, FTP's PROT P data
        # connection) sits outside this wrapper: the protocol inside is
        # told of the finished handshake through it.
        inner = self.wrappedProtocol
        if inner is not None and _own(IHandshakeListener, inner):
            inner.handshakeCompleted()

    def connectionLost(self, reason: Any) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        inner = self.wrappedProtocol
        self.wrappedProtocol = None
        if inner is not None:
            inner.connectionLost(reason)


def checked(address: Any) -> Any:
    """
    A header's address as the hub's own addresses are: an IP address in
    its usual text (C{::1}, not C{0:0:0:0:0:0:0:1}; C{::ffff:1.2.3.4} as
    C{1.2.3.4}) and a port from 0 to 65535; L{None} (no address: UNKNOWN, LOCAL) and UNIX addresses as
    they are.

    @raise ValueError: no IP address, or no port.
    """
    host = getattr(address, "host", None)
    if host is None:
        return address
    ip = ipaddress.ip_address(host)
    if not 0 <= address.port <= 65535:
        raise ValueError(address.port)
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        # an IPv4 client of a dual-stack balancer: its IPv4 address, as
        # the hub's own dual-stack listeners show it (hub.ListenerFactory)
        return IPv4Address(address.type, str(mapped), address.port)
    text = str(ip)
    if text == host:
        return address
    return type(address)(address.type, text, address.port)


def socket_host(transport: Any) -> Any:
    """
    The address of this end of C{transport}'s socket: C{getHost()}, except
    behind a C{haproxy:} listener, whose C{getHost()} is the address the
    client reached on the balancer. FTP binds its passive data listener
    here (data connections come straight to the hub). Looks through
    wrappers (TLS, transcript).
    """
    seen = 0
    layer = transport
    while layer is not None and seen < 8:
        if isinstance(layer, ProxiedConnection):
            return layer.socket_host()
        layer = layer.__dict__.get("transport") if hasattr(layer, "__dict__") else None
        seen += 1
    return transport.getHost()
