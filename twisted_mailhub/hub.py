# -*- test-case-name: tests.test_hub -*-
"""
The hub: what every listener shares (accounts, portal, store, TLS, limits),
and the service that starts the listeners.

Each protocol is a component (an IHubComponent plugin, see
L{twisted_mailhub.components}) with three things: C{listeners}, rows of L{ListenerSpec} that become
C{--NAME EP} / C{--no-NAME} options; C{option_parameters} and C{option_flags}
for its other options; and C{install(hub)}, which registers its avatar
factories with the realm and calls L{Hub.listen} for its listeners.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Any, Iterable

import attr
from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.login import ClientPortal, LoginThrottle
from twisted_mailhub.metrics import HealthPage, HubMetrics, MetricsPage
from twisted_mailhub.realm import MailhubRealm
from twisted_mailhub.transcript import SessionEvents, TranscriptFactory, log_event, next_connection_id

log = Logger()


@attr.s(auto_attribs=True, frozen=True)
class ListenerSpec:
    """
    One listener a component offers: C{--name EP} and C{--no-name}.

    @ivar tls: C{"implicit"} for a listener that speaks TLS from the first
        byte (the hub wraps the endpoint with its certificate), C{""}
        otherwise.
    """

    name: str
    default: str
    help: str
    tls: str = ""


LISTEN_BACKLOG = 128


def with_backlog(description: str) -> str:
    """
    A TCP listener description with a listen backlog of L{LISTEN_BACKLOG}
    unless it names one: with Twisted's 50, the 51st client connecting at
    once waits a second for its SYN to be retried (100 concurrent FTP
    clients ran at a tenth of their speed).
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


# What a refused connection is told, in each protocol's own words.
_TOO_MANY = {
    "smtp": b"421 4.7.0 Error: too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] too many connections from your address\r\n",
    "imap": b"* BYE [UNAVAILABLE] too many connections from your address\r\n",
    "ftp": b"421 Too many connections from your address.\r\n",
}
_PROTOCOL_FAMILY = {"submission": "smtp", "smtps": "smtp", "pop3s": "pop3", "imaps": "imap"}


class _Refusal(protocol.Protocol):
    def __init__(self, line: bytes):
        self.line = line

    def connectionMade(self):
        self.transport.write(self.line)
        self.transport.loseConnection()


class ConnectionLimits:
    """
    C{--max-connections} and C{--max-connections-per-ip}, over every
    listener together: a client over a limit gets its protocol's "too many
    connections" reply and is closed before any protocol object is made.
    Counting happens in the listener's factory, so it costs nothing once a
    connection is accepted.
    """

    def __init__(self, total: int, per_ip: int):
        self.total = total
        self.per_ip = per_ip
        self.open = 0
        self.by_ip: dict[str, int] = {}

    def admit(self, host: str) -> bool:
        if self.total and self.open >= self.total:
            return False
        if self.per_ip and self.by_ip.get(host, 0) >= self.per_ip:
            return False
        self.open += 1
        self.by_ip[host] = self.by_ip.get(host, 0) + 1
        return True

    def release(self, host: str) -> None:
        self.open -= 1
        left = self.by_ip.get(host, 1) - 1
        if left > 0:
            self.by_ip[host] = left
        else:
            self.by_ip.pop(host, None)


class LimitedFactory(protocol.Factory):
    """
    Wraps a listener's factory: admits or refuses each connection, and
    counts it out again when it closes.
    """

    def __init__(self, wrapped: Any, limits: ConnectionLimits, name: str, metrics: Any = None):
        self.wrapped = wrapped
        self.limits = limits
        self.name = name
        self.metrics = metrics

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "")
        if not self.limits.admit(host):
            log.info("{name}: refused a connection from {host}: too many connections", name=self.name, host=host)
            if self.metrics is not None:
                self.metrics.refused.labels(self.name).inc()
            family = _PROTOCOL_FAMILY.get(self.name, self.name)
            return _Refusal(_TOO_MANY.get(family, b""))
        built = self.wrapped.buildProtocol(addr)
        if built is None:
            self.limits.release(host)
            return None
        connection_lost = built.connectionLost
        released = []
        metrics = self.metrics
        if metrics is not None:
            metrics.connections.labels(self.name).inc()
            metrics.open.labels(self.name).inc()

        def lost(reason, connection_lost=connection_lost):
            if not released:
                released.append(True)
                self.limits.release(host)
                if metrics is not None:
                    metrics.open.labels(self.name).dec()
            return connection_lost(reason)

        built.connectionLost = lost
        return built


class TrustedNetworks:
    """
    The networks from which plaintext logins are allowed without TLS
    (C{--trusted-networks}); never a grant to relay.
    """

    def __init__(self, spec: str):
        self.networks = [ipaddress.ip_network(n.strip(), strict=False) for n in spec.split(",") if n.strip()]

    def __contains__(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in n for n in self.networks)


def peer_host(transport: Any) -> str:
    peer = transport.getPeer()
    return getattr(peer, "host", "")


def is_secure(transport: Any) -> bool:
    """
    Does this connection run over TLS (implicit, or after STARTTLS)?
    Sees through the transcript wrapper.
    """
    while transport is not None:
        if ISSLTransport.providedBy(transport):
            return True
        transport = getattr(transport, "transport", None)
    return False


def set_nodelay(transport: Any) -> None:
    """
    TCP_NODELAY on an accepted connection: replies written in several
    pieces would otherwise wait on Nagle's algorithm and the peer's delayed
    ACK (stock Twisted POP3 does 23 messages/s because of it).
    """
    while transport is not None:
        setter = getattr(transport, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)


class Hub:
    """
    Everything the listeners share. Built by L{twisted_mailhub.tap.makeService}.
    """

    def __init__(
        self,
        reactor: Any,
        options: Any,
        accounts: AccountBook,
        store: Any,
        data_dir: str,
        hostname: str,
        extra_checkers: Iterable[Any] = (),
    ):
        from twisted_mailhub.accounts import AccountChecker

        self.reactor = reactor
        self.options = options
        self.accounts = accounts
        self.store = store
        self.data_dir = data_dir
        self.hostname = hostname
        self.realm = MailhubRealm(accounts)
        self.portal = Portal(self.realm, [AccountChecker(accounts), *extra_checkers])
        self.throttle = LoginThrottle(reactor)
        self.trusted = TrustedNetworks(options.get("trusted-networks") or "127.0.0.0/8,::1/128")
        self.max_message_size = int(options.get("max-message-size") or 25 * 1024 * 1024)
        self.connection_limits = ConnectionLimits(
            int(options.get("max-connections") or 0), int(options.get("max-connections-per-ip") or 0)
        )
        self.transcript = bool(options.get("transcript"))
        # Session events (transcript.py): recorded for every listener when
        # --transcript logs them or a component (the web console) reads them.
        self.events = SessionEvents()
        self.record_sessions = self.transcript
        if self.transcript:
            self.events.subscribe(log_event)
        self.filters: list[Any] = []
        self.listening: dict[str, Any] = {}
        # Resources other components mount on the web listeners, by path
        # (e.g. "api/v1"); see twisted_mailhub.web.site.
        self.web_resources: dict[str, Any] = {}
        # Counters every part adds to; /metrics and /healthz for operators.
        self.metrics = HubMetrics(self)
        self.web_resources["metrics"] = MetricsPage(self)
        self.web_resources["healthz"] = HealthPage(self)
        self._listeners: list[tuple[str, str, Any, str]] = []
        self._tls: Any = None
        self.services = service.MultiService()

    # -- TLS -------------------------------------------------------------

    @property
    def tls(self):
        """
        The server's TLS options (self-signed certificate made on first use).
        """
        if self._tls is None:
            from twisted_mailhub.tls import server_context

            self._tls = server_context(
                self.data_dir, self.hostname, self.options.get("tls-cert"), self.options.get("tls-key")
            )
        return self._tls

    # -- per connection ----------------------------------------------------

    def client_portal(self, transport: Any, protocol: str) -> ClientPortal:
        return ClientPortal(self.portal, self.throttle, peer_host(transport), protocol, self.metrics)

    def is_trusted(self, transport: Any) -> bool:
        return peer_host(transport) in self.trusted

    def connection_made(self, protocol: Any, name: str) -> str:
        """
        What every accepted connection needs: TCP_NODELAY, a connection id,
        and its own view of the portal as C{protocol.portal}.
        """
        set_nodelay(protocol.transport)
        protocol.portal = self.client_portal(protocol.transport, name)
        # Under --transcript the wrapper has named the connection already:
        # one id for the session's log lines and its C:/S: lines.
        transcriber = getattr(protocol.transport, "transcriber", None)
        if transcriber is not None:
            return transcriber.connection_id
        return next_connection_id(name)

    # -- listeners -----------------------------------------------------------

    def listen(self, name: str, description: str, factory: Any, tls: str = "") -> None:
        """
        Listen on strports C{description} with C{factory} once the hub
        starts. With C{tls="implicit"}, every connection is TLS from its
        first byte (RFC 8314).
        """
        factory.protocol_name = name
        self._listeners.append((name, description, factory, tls))

    def listen_each(self, listeners: Iterable[ListenerSpec], make_factory: Any) -> None:
        """
        L{listen} on every one of a component's C{listeners} the command
        line did not turn off (C{--no-NAME}), at C{--NAME} or its default;
        C{make_factory(spec)} makes each listener's factory.
        """
        for spec in listeners:
            if self.options.get(f"no-{spec.name}"):
                continue
            self.listen(spec.name, self.options.get(spec.name) or spec.default, make_factory(spec), tls=spec.tls)

    def add_service(self, svc: service.IService) -> None:
        svc.setServiceParent(self.services)


class HubService(service.MultiService):
    """
    Starts every listener, then logs one C{mailhub ready} line with the
    bound ports as JSON (tests read it to learn ports chosen with C{tcp:0}).
    """

    def __init__(self, hub: Hub):
        service.MultiService.__init__(self)
        self.hub = hub
        self.ports: list[Any] = []
        hub.services.setServiceParent(self)

    def startService(self):
        service.MultiService.startService(self)
        hub = self.hub
        starting = []
        for name, description, factory, tls in hub._listeners:
            wrapped = factory
            if hub.connection_limits.total or hub.connection_limits.per_ip:
                wrapped = LimitedFactory(wrapped, hub.connection_limits, name, hub.metrics)
            if hub.record_sessions and getattr(factory, "record_sessions", True):
                wrapped = TranscriptFactory(wrapped, name, hub.events)
            if tls == "implicit":
                wrapped = TLSMemoryBIOFactory(hub.tls, False, wrapped)
            endpoint = endpoints.serverFromString(hub.reactor, with_backlog(description))
            d = endpoint.listen(wrapped)
            d.addCallback(self._listening, name, description)
            d.addErrback(self._failed, name, description)
            starting.append(d)
        defer.gatherResults(starting, consumeErrors=True).addCallback(self._ready)

    def _listening(self, port, name, description):
        self.ports.append(port)
        address = port.getHost()
        self.hub.listening[name] = address
        log.info("{name} listening on {host}:{port} ({description})", name=name, host=address.host, port=address.port, description=description)
        return True

    def _failed(self, reason, name, description):
        log.critical("cannot listen for {name} on {description}: {error}", name=name, description=description, error=reason.getErrorMessage())
        # Listening starts before the reactor runs: stop it once it does, so
        # twistd exits instead of serving half the protocols.
        self.hub.reactor.callWhenRunning(self.hub.reactor.stop)
        return False

    def _ready(self, results):
        if not all(results):
            return
        ports = {name: address.port for name, address in self.hub.listening.items()}
        log.info("mailhub ready {ports}", ports=json.dumps(ports, sort_keys=True))

    def stopService(self):
        ports, self.ports = self.ports, []
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        d.addBoth(lambda _: service.MultiService.stopService(self))
        return d


def default_hostname() -> str:
    return socket.getfqdn() or "localhost"


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
