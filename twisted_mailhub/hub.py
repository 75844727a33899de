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

import errno
import gc
import ipaddress
import json
import os
import socket
from typing import Any, Iterable

import attr
from twisted.application import service
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints, protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python import failure
from twisted.protocols.tls import TLSMemoryBIOFactory

from twisted_mailhub import clientkey, dispatch, pace, proxyheader
from twisted_mailhub.clientkey import client_key
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.login import ClientPortal, LoginThrottle
from twisted_mailhub.logobserver import OffersLogObserver
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
    port_offset: int | None = None


def moved_endpoint(spec: ListenerSpec, base: int | None) -> str:
    """
    C{spec}'s default endpoint with its port moved to C{base} + the
    protocol's standard port (C{--port-base}): C{spec.port_offset}, or else
    the default port minus 8000 (C{tcp:8025} is SMTP's 25). A default
    outside 8000-8999 with no C{port_offset} is not moved.

    @raise ValueError: the moved port is above 65535.
    """
    if base is None:
        return spec.default
    kind, sep, rest = spec.default.partition(":")
    port_text, _, tail = rest.partition(":")
    if kind not in ("tcp", "tcp6", "ssl") or not port_text.isdigit():
        return spec.default
    offset = spec.port_offset
    if offset is None:
        port = int(port_text)
        if not 8000 <= port < 9000:
            return spec.default
        offset = port - 8000
    moved = base + offset
    if not 0 < moved <= 65535:
        raise ValueError(f"{spec.name} would listen on port {moved}, beyond 65535")
    return f"{kind}:{moved}" + (f":{tail}" if tail else "")


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
    A client is its L{client_key} (an IPv6 host: its /64).
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
        # The listener's connections counter and open gauge (labelled).
        self._counted: tuple | None = None

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        address = getattr(addr, "host", "")
        # Counted per client: an IPv6 host is its /64 (clientkey.py).
        host = client_key(address)
        if not self.limits.admit(host):
            log.info("{name}: refused a connection from {address}: too many connections", name=self.name, address=address)
            if self.metrics is not None:
                self.metrics.refused.labels(self.name).inc()
            family = _PROTOCOL_FAMILY.get(self.name, self.name)
            return _Refusal(_TOO_MANY.get(family, b""))
        built = self.wrapped.buildProtocol(addr)
        if built is None:
            self.limits.release(host)
            return None
        if self.metrics is not None:
            counted = self._counted
            if counted is None:  # (made on first use, as labels() would)
                counted = self._counted = (self.metrics.connections.labels(self.name), self.metrics.open.labels(self.name))
            counted[0].inc()
            counted[1].inc()
        built.connectionLost = _CountedOut(self, host, built.connectionLost)
        return built


class _CountedOut:
    """
    A connection's C{connectionLost} through L{LimitedFactory}: counts it
    out of the limits (and the open gauge) once, then calls the protocol's
    own. A small object (slots), not a closure and its cells: it is kept
    for the connection's life.
    """

    __slots__ = ("factory", "host", "connection_lost")

    def __init__(self, factory: LimitedFactory, host: str, connection_lost: Any):
        self.factory = factory
        self.host = host
        self.connection_lost = connection_lost

    def __call__(self, reason: Any) -> Any:
        factory = self.factory
        if factory is not None:
            self.factory = None
            factory.limits.release(self.host)
            if factory._counted is not None:
                factory._counted[1].dec()
        return self.connection_lost(reason)


class TrustedNetworks:
    """
    The networks from which plaintext logins are allowed without TLS
    (C{--trusted-networks}); never a grant to relay.
    """

    def __init__(self, spec: str):
        from twisted_mailhub.optionvalues import networks

        self.networks = networks(spec)
        # Answers by host string: asked per message (sender checks) and
        # per login, for the same few clients.
        self._known: dict[str, bool] = {}

    def __contains__(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            if len(self._known) >= 4096:
                self._known.clear()
            known = self._known[host] = self._lookup(host)
        return known

    def _lookup(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in n for n in self.networks)


def bound_at(address: Any) -> int | str:
    """
    Where a listener is, as C{mailhub ready}, C{mailhub-admin status} and
    the log show it: the port of an IPv4/IPv6 listener (an C{int}), the
    path of a UNIX-socket listener (a C{str}; a UNIX socket has no port).
    """
    path = getattr(address, "name", None)
    if path is not None and not hasattr(address, "port"):
        return os.fsdecode(path)
    return getattr(address, "port", 0)


def listening_line(address: Any) -> str:
    """C{HOST:PORT} of an IPv4/IPv6 listener (C{[HOST]:PORT} for IPv6), or a UNIX socket's C{unix:PATH}."""
    where = bound_at(address)
    if isinstance(where, str):
        return f"unix:{where}"
    host = getattr(address, "host", "")
    return f"[{host}]:{where}" if ":" in host else f"{host}:{where}"


def ipv4_of_mapped(where: Any) -> Any:
    """
    The L{IPv4Address} behind an IPv4-mapped IPv6 address
    (C{::ffff:a.b.c.d}, RFC 4291 §2.5.5.2: how a dual-stack listener, e.g.
    C{tcp6:25}, sees an IPv4 client), or L{None} for any other address.
    """
    host = getattr(where, "host", None)
    if type(where) is not IPv6Address or not isinstance(host, str) or host[:7].lower() != "::ffff:":
        return None
    try:
        mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
    except ValueError:
        return None
    return None if mapped is None else IPv4Address(where.type, str(mapped), where.port)


def show_ipv4_unmapped(transport: Any) -> None:
    """
    Make C{transport}'s C{getPeer} and C{getHost} answer with the IPv4
    address of an IPv4-mapped one (L{ipv4_of_mapped}), so that every
    protocol shows and checks an IPv4 client of a dual-stack listener as
    the IPv4 client it is: C{Received: ... [192.0.2.1]}, per-address
    limits and login throttle shared with an IPv4 listener, FTP PASV and
    PORT data connections over IPv4. Asks the transport each time (a
    PROXY-protocol wrapper learns its client's address later).
    """
    get_peer, get_host = transport.getPeer, transport.getHost
    transport.getPeer = lambda: ipv4_of_mapped(peer := get_peer()) or peer
    transport.getHost = lambda: ipv4_of_mapped(host := get_host()) or host


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
    TCP_NODELAY on an accepted connection (IPv4 or IPv6; a UNIX socket or
    a test transport is left alone): a reply written in two pieces, or in
    two turns of the reactor, would otherwise wait for the peer's ACK of
    the first, which the peer delays up to 40-200 ms (Nagle's algorithm
    and delayed ACK; stock Twisted POP3 does 23 messages/s because of it).
    Looks through wrappers (TLS, transcript) to the socket.
    """
    while transport is not None:
        sock = getattr(transport, "socket", None)
        if sock is not None:
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
            return
        transport = getattr(transport, "transport", None)


class ListenerFactory(protocol.Factory):
    """
    Wraps a listener's outermost factory: every connection it accepts is
    handed to each of C{hooks} (callables taking the transport) before any
    protocol sees it, whatever the listener speaks (mail, FTP, SSH, web)
    and whether or not it is TLS. The hub gives every listener
    L{set_nodelay} and the byte counter of C{/metrics}
    (L{twisted_mailhub.metrics.count_socket}).
    """

    noisy = False

    def __init__(self, wrapped: Any, *hooks: Any):
        self.wrapped = wrapped
        self.hooks = hooks

    def logPrefix(self):
        return self.wrapped.logPrefix() if hasattr(self.wrapped, "logPrefix") else self.wrapped.__class__.__name__

    def doStart(self):
        self.wrapped.doStart()

    def doStop(self):
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        hooks = self.hooks
        unmapped = ipv4_of_mapped(addr)
        if unmapped is not None:
            # An IPv4 client of a dual-stack listener: every protocol,
            # limit, log line and Received line sees its IPv4 address.
            addr, hooks = unmapped, (*hooks, show_ipv4_unmapped)
        built = self.wrapped.buildProtocol(addr)
        if built is None:
            return None
        make = built.makeConnection

        def makeConnection(transport):
            # The protocol's own method again: nothing of this is kept for
            # the connection's life (~270 octets an idle connection held).
            del built.makeConnection
            for hook in hooks:
                hook(transport)
            return make(transport)

        built.makeConnection = makeConnection
        return built


# The listeners of the web face: webmail, the console, the JSON API,
# /metrics and /healthz (twisted_mailhub.web).
WEB_LISTENERS = ("web", "webs")


def has_web_face(options: Any) -> bool:
    """
    Whether a hub started with C{options} (a mapping of the command line)
    has a web face, and so counts for C{/metrics} and records sessions
    for the console: L{False} only when C{--no-web} and C{--no-webs} turn
    off every web listener. A C{--workers} process other than worker 0
    has no web listener, but is part of worker 0's web face when there is
    one (C{web-face-in-another-worker}, set by
    L{twisted_mailhub.workers.run_worker}).
    """
    if options.get("web-face-in-another-worker"):
        return True
    return not all(options.get(f"no-{name}") for name in WEB_LISTENERS)


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
        # The balancers a haproxy: listener believes (proxyheader.py).
        self.proxy_from = TrustedNetworks(options.get("proxy-from") or proxyheader.BALANCERS)
        self.max_message_size = int(options.get("max-message-size") or 25 * 1024 * 1024)
        self.connection_limits = ConnectionLimits(
            int(options.get("max-connections") or 0), int(options.get("max-connections-per-ip") or 0)
        )
        # Per-client counts take an IPv6 host as its network (clientkey.py).
        clientkey.configure(int(options.get("ipv6-prefix") or clientkey.DEFAULT_PREFIX))
        self.transcript = bool(options.get("transcript"))
        # A peer that reads what it asked for a few octets a second (pace.py).
        window = options.get("slow-transfer-window")
        self.slow_transfer_window = float(60 if window is None else window)
        # Session events (transcript.py): recorded for every listener when
        # --transcript logs them or a component (the web console) reads them.
        self.events = SessionEvents()
        self.record_sessions = self.transcript
        self.events.recording = self.transcript
        if self.transcript:
            self.events.subscribe(log_event)
        self.filters: list[Any] = []
        self.listening: dict[str, Any] = {}
        # Resources other components mount on the web listeners, by path
        # (e.g. "api/v1"); see twisted_mailhub.web.site.
        self.web_resources: dict[str, Any] = {}
        # Counters every part adds to; /metrics and /healthz for operators.
        # Only where a web listener can serve them: a hub without one
        # counts nothing and never imports prometheus_client (about 1.1 MB
        # per hub); every part takes hub.metrics None as "not counted".
        self.metrics: Any = None
        if has_web_face(options):
            from twisted_mailhub.metrics import HealthPage, HubMetrics, MetricsPage

            self.metrics = HubMetrics(self)
            self.web_resources["metrics"] = MetricsPage(self)
            self.web_resources["healthz"] = HealthPage(self)
        self._listeners: list[tuple[str, str, Any, str]] = []
        self._tls: Any = None
        self.services = service.MultiService()
        self.has_other_checkers = bool(list(extra_checkers))
        # (uid, gid) of twistd --uid/--gid: the data folder is given to them
        # before privileges are dropped (see HubService).
        self.run_as: tuple[int, int] | None = None
        # Reads the accounts again (set by tap.makeService): returns a new
        # AccountBook or raises ValueError/OSError with one line of why.
        self.load_accounts: Any = None
        # Under --workers, in a worker process: its link to the supervisor
        # and the others, and adopt(name, endpoint, factory) listening on
        # a socket the supervisor bound (twisted_mailhub.workers).
        self.worker: Any = None
        self.adopt: Any = None

    # -- TLS -------------------------------------------------------------

    @property
    def tls(self):
        """
        The server's TLS options (self-signed certificate made on first use).
        """
        if self._tls is None:
            from twisted_mailhub.tls import ReloadableTLS, drop_unfinished_handshakes

            self._tls = ReloadableTLS(self._load_tls())
            drop_unfinished_handshakes(self.reactor)
        return self._tls

    def _load_tls(self):
        from twisted_mailhub.tls import server_context

        return server_context(self.data_dir, self.hostname, self.options.get("tls-cert"), self.options.get("tls-key"))

    # -- SIGHUP ------------------------------------------------------------

    def reload(self) -> list[str]:
        """
        Read the accounts files and the TLS certificate again (on SIGHUP, or
        C{reload} on the control socket). Sessions are untouched: an added
        account can log in at once, a removed one cannot log in again. A
        file that cannot be read keeps what is in use and logs why.

        @return: the lines logged, one per thing reloaded (or kept).
        """
        said: list[str] = []
        if self.load_accounts is not None:
            try:
                fresh = self.load_accounts()
            except (OSError, ValueError) as e:
                said.append(f"accounts not reloaded, keeping the {len(self.accounts)} in use: {e}")
                log.error("{line}", line=said[-1])
            else:
                added, removed = self.accounts.replace_with(fresh)
                said.append(f"accounts reloaded: {len(self.accounts)} account{'s' if len(self.accounts) != 1 else ''} (+{added} -{removed})")
                log.info("{line}", line=said[-1])
        if self._tls is not None:
            try:
                self._tls.replace(self._load_tls())
            except Exception as e:  # any unreadable or mismatched PEM
                from twisted_mailhub.tls import unusable_reason

                # In words, as at start (OpenSSL's error is a list of tuples).
                said.append(f"TLS certificate not reloaded, keeping the one in use: {unusable_reason(e)}")
                log.error("{line}", line=said[-1])
            else:
                said.append("TLS certificate reloaded")
                log.info("{line}", line=said[-1])
        return said

    # -- per connection ----------------------------------------------------

    def client_portal(self, transport: Any, protocol: str) -> ClientPortal:
        return ClientPortal(self.portal, self.throttle, peer_host(transport), protocol, self.metrics)

    def is_trusted(self, transport: Any) -> bool:
        return peer_host(transport) in self.trusted

    def connection_made(self, protocol: Any, name: str) -> str:
        """
        What every accepted connection needs: a connection id, and its own
        view of the portal as C{protocol.portal} (TCP_NODELAY it has from
        its listener, L{ListenerFactory}).
        """
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
            description = self.options.get(spec.name) or moved_endpoint(spec, self.options.get("port-base"))
            self.listen(spec.name, description, make_factory(spec), tls=spec.tls)

    def add_service(self, svc: service.IService) -> None:
        svc.setServiceParent(self.services)


class HubService(OffersLogObserver, service.MultiService):
    """
    Binds every listener, starts the hub's services, and logs one
    C{mailhub ready} line with the bound ports as JSON (tests read it to
    learn ports chosen with C{tcp:0}).

    Listeners are bound in L{privilegedStartService}, which C{twistd} calls
    before it switches to C{--uid/--gid}, so privileged ports work; the data
    folder is then handed to that user (L{give_data_to}). A listener that
    cannot bind ends the start: one line per failed listener saying which
    option, which endpoint, why and what to do, the listeners already bound
    are closed, nothing else has started, and the process exits with status
    1 (a daemonizing C{twistd} parent then reports failure too).

    SIGHUP reloads the accounts files and the TLS certificate
    (L{Hub.reload}) without touching a session.
    """

    def __init__(self, hub: Hub):
        service.MultiService.__init__(self)
        self.hub = hub
        self.ports: list[Any] = []
        self.bound: dict[str, Any] = {}  # listener name -> its port
        self._bound = False
        self._pending: list[Any] = []
        self._previous_sighup: Any = None
        hub.services.setServiceParent(self)

    def privilegedStartService(self):
        self._bind()
        run_as = getattr(self.hub, "run_as", None)
        if run_as is not None and os.geteuid() == 0:
            from twisted_mailhub.privileges import give_data_to

            self.hub.tls  # made now, while the files may still be written as root
            give_data_to(self.hub.data_dir, *run_as)
            self.before_the_switch(*run_as)
        service.MultiService.privilegedStartService(self)

    def before_the_switch(self, uid: int, gid: int) -> None:
        """
        As root, just before C{twistd} switches to C{--uid/--gid}: what the
        hub will not be able to do as that user is arranged or said now
        (the pidfile's removal; a certificate a reload could not read).
        """
        self._pidfile_removed_by_root(uid, gid)
        self._warn_of_unreadable_tls(uid, gid)

    def _warn_of_unreadable_tls(self, uid: int, gid: int) -> None:
        """
        A C{--tls-cert} or C{--tls-key} the C{--uid} user cannot read (in
        certbot's root-only C{/etc/letsencrypt}) was read now, as root,
        but a reload (SIGHUP, C{mailhub-admin reload}) after a renewal
        would keep the old certificate: said at the start, not two months
        later.
        """
        from twisted_mailhub.privileges import unreadable_for

        for option in ("tls-cert", "tls-key"):
            path = self.hub.options.get(option)
            why = unreadable_for(path, uid, gid) if path else None
            if why is not None:
                log.warn(
                    "--{option} {path}: the hub's user cannot read it ({why}): it was read now, as root, but a reload"
                    " (a renewed certificate) will keep the one in use; give the hub a copy it can read (README: A renewed certificate)",
                    option=option,
                    path=path,
                    why=why,
                )

    def _pidfile_removed_by_root(self, uid: int, gid: int) -> None:
        """
        twistd's C{--pidfile} in a folder the C{--uid} user cannot write
        (C{/run}): twistd would fail to remove it at the end ("No
        permission to delete pid file") and leave it stale, so a root
        helper removes it instead (L{remove_pidfile_at_end}) and twistd is
        told it has none to remove.
        """
        from twisted_mailhub.privileges import remove_pidfile_at_end

        twistd = getattr(self.hub.options, "parent", None)
        pidfile = twistd.get("pidfile") if twistd is not None else None
        try:
            helper = remove_pidfile_at_end(pidfile, uid, gid)
        except OSError as e:
            log.warn("the pidfile {pidfile} will be left behind at the end: no helper to remove it ({why})", pidfile=pidfile, why=e.strerror or e)
            return
        if helper is not None:
            twistd["pidfile"] = ""
            log.info(
                "the pidfile {pidfile} is in a folder the hub's user cannot write: a root helper (pid {helper}) removes it when the hub ends",
                pidfile=pidfile,
                helper=helper,
            )

    def startService(self):
        if not self._bound:  # started without twistd (a .tac, a test)
            self._bind()
        service.MultiService.startService(self)
        # Fewer Python calls per socket event (twisted_mailhub/dispatch.py).
        self._dispatch = dispatch.install(self.hub.reactor)
        self._install_sighup()
        self.hub.reactor.callWhenRunning(self._install_stop_signals)
        # At a stop each client hears its protocol's goodbye (421, BYE...)
        # before its connection closes (twisted_mailhub/goodbye.py).
        self._goodbye = self.hub.reactor.addSystemEventTrigger("before", "shutdown", self._say_goodbye)
        window = getattr(self.hub, "slow_transfer_window", pace.WINDOW)
        if window > 0:
            self._slow_readers = pace.SlowReaders(self.hub.reactor, window=window, tick=min(pace.TICK, window / 4), metrics=getattr(self.hub, "metrics", None))
            self._slow_readers.start()
        if self._pending:
            defer.gatherResults(self._pending, consumeErrors=True).addCallback(self._ready)
        else:
            self._ready([True])

    def _bind(self) -> None:
        self._bound = True
        hub = self.hub
        failures = []
        for name, description, factory, tls in hub._listeners:
            wrapped = factory
            if hub.connection_limits.total or hub.connection_limits.per_ip:
                wrapped = LimitedFactory(wrapped, hub.connection_limits, name, hub.metrics)
            if hub.record_sessions and getattr(factory, "record_sessions", True):
                wrapped = TranscriptFactory(wrapped, name, hub.events)
            if tls == "implicit":
                wrapped = TLSMemoryBIOFactory(hub.tls, False, wrapped)
            # TCP_NODELAY, and octets in and out per listener (/metrics).
            if hub.metrics is None:
                wrapped = ListenerFactory(wrapped, set_nodelay)
            else:
                from twisted_mailhub.metrics import count_socket

                counts = hub.metrics.listener_bytes(name)
                wrapped = ListenerFactory(wrapped, set_nodelay, lambda transport, counts=counts: count_socket(transport, counts))
            # haproxy:INNER: the PROXY header is read before any of the
            # above sees the connection (twisted_mailhub/proxyheader.py).
            proxied, inner = proxyheader.split(description)
            if proxied:
                wrapped = proxyheader.ProxyHeaderFactory(wrapped, hub.reactor, name, hub.proxy_from)
            quiet_factory(wrapped, name)
            try:
                why = proxyheader.problem(description)
                if why is not None:
                    raise ValueError(why)
                endpoint = endpoints.serverFromString(hub.reactor, with_backlog(inner))
            except (ValueError, KeyError, TypeError) as e:
                failures.append((name, cannot_listen_line(name, description, e)))
                continue
            outcome: list[Any] = []
            d = endpoint.listen(wrapped) if hub.adopt is None else hub.adopt(name, endpoint, wrapped)
            d.addBoth(outcome.append)
            if not outcome:
                # An endpoint that binds later (not TCP, SSL or UNIX): its
                # failure can only stop the reactor once it runs.
                waiting = defer.Deferred()
                d.addCallback(lambda _, o=outcome, n=name, desc=description, w=waiting: w.callback(self._late(o[0], n, desc)))
                self._pending.append(waiting)
            elif isinstance(outcome[0], failure.Failure):
                failures.append((name, cannot_listen_line(name, description, outcome[0].value)))
            else:
                self._listening(outcome[0], name, description)
        if failures:
            for name, line in failures:
                log.critical("{line}", line=line)
            for port in self.ports:
                port.stopListening()
            self.ports = []
            raise ListenFailed(", ".join(name for name, _ in failures))

    def _listening(self, port, name, description):
        self.ports.append(port)
        self.bound[name] = port
        address = port.getHost()
        self.hub.listening[name] = address
        log.info("{name} listening on {where} ({description})", name=name, where=listening_line(address), description=description)
        return True

    def _late(self, result, name, description):
        if isinstance(result, failure.Failure):
            log.critical("{line}", line=cannot_listen_line(name, description, result.value))
            self.hub.reactor.callWhenRunning(self.hub.reactor.stop)
            return False
        return self._listening(result, name, description)

    def _ready(self, results):
        if not all(results):
            return
        # What start-up made lives as long as the hub: full collections
        # need not walk it again (they were ~100 ms of a cold SELECT +
        # FETCH 1:* of 100,000 messages; bench/cluster.py --only fetch).
        gc.freeze()
        # What starting freed (imports, key loading) is given back to the system: about 2 MB of RSS.
        from twisted_mailhub.heap import give_back_memory

        self.hub.reactor.callWhenRunning(give_back_memory)
        if self.hub.worker is not None:  # the supervisor says when all are
            self.hub.reactor.callWhenRunning(self.hub.worker.out.send, b"R")
            return
        ports = {name: bound_at(address) for name, address in self.hub.listening.items()}
        # Once the reactor runs (its SIGTERM handler is installed then): a
        # harness that stops the hub as soon as it reads this line gets a
        # clean shutdown, not the default action of the signal.
        self.hub.reactor.callWhenRunning(log.info, "mailhub ready {ports}", ports=json.dumps(ports, sort_keys=True))
        if not len(self.hub.accounts) and not self.hub.has_other_checkers:
            log.warn(
                "no accounts: nobody can log in and mail to local addresses is refused; "
                "add --user ADDRESS:PASSWORD, or --auth file:FILE (mailhub-admin user add)"
            )

    def _install_sighup(self) -> None:
        import signal

        from twisted_mailhub import sighup

        if not hasattr(signal, "SIGHUP"):
            return
        reactor = self.hub.reactor

        def on_sighup(signum, frame):
            reactor.callFromThread(self.hub.reload)

        # Held since the process started (twisted_mailhub.sighup): one
        # that came meanwhile is acted on now.
        if sighup.held():
            log.info("a SIGHUP came while the hub started: reloading once it runs")
        try:
            self._previous_sighup = sighup.release(on_sighup)
        except ValueError:  # not the main thread (a test's reactor)
            self._previous_sighup = None

    def _install_stop_signals(self) -> None:
        """
        SIGTERM and SIGINT stop the hub once: a second one while it shuts
        down (a supervisor and C{timeout} both sending SIGTERM, Ctrl-C
        twice) is logged in a line, where Twisted's own handler would call
        C{reactor.stop()} again and log a C{ReactorNotRunning} traceback.
        Installed once the reactor runs, over Twisted's handlers.
        """
        import signal

        reactor = self.hub.reactor
        stopping: list[str] = []

        def stop() -> None:
            try:
                reactor.stop()
            except Exception:  # ReactorNotRunning: stopped by someone else already
                pass

        def on_signal(signum, frame):
            name = signal.Signals(signum).name
            if stopping:
                reactor.callFromThread(log.info, "Received {name} again: already shutting down", name=name)
                return
            stopping.append(name)
            if hasattr(reactor, "_exitSignal"):
                # As Twisted's handler: twistd then ends by this signal.
                reactor._exitSignal = signum
            reactor.callFromThread(log.info, "Received {name}, shutting down.", name=name)
            reactor.callFromThread(stop)

        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, "shutdown")
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(signum, on_signal)
            except ValueError:  # not the main thread (a test's reactor)
                return

    def _say_goodbye(self) -> Any:
        from twisted_mailhub.goodbye import say_goodbye

        self._goodbye = None  # (fired: not to be removed)
        # The listeners first: the connections waiting in their listen
        # queues are accepted (closing a listening socket resets them: a
        # client that had just connected and sent a command saw
        # "connection reset"), then the ports close, so that the goodbye
        # below reaches every connection there is, those ones too.
        ports, self.ports = self.ports, []
        for port in ports:
            accept_waiting(port)
        for port in ports:
            defer.maybeDeferred(port.stopListening).addErrback(lambda f: log.warn("a listener did not close cleanly at the stop: {why}", why=f.value))
        return say_goodbye(self.hub.reactor, self.hub.hostname)

    def stopService(self):
        import signal

        goodbye, self._goodbye = getattr(self, "_goodbye", None), None
        if goodbye is not None:  # stopped without a reactor shutdown (a test, a .tac)
            self.hub.reactor.removeSystemEventTrigger(goodbye)
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        if getattr(self, "_dispatch", False):
            dispatch.uninstall(self.hub.reactor)
        slow_readers, self._slow_readers = getattr(self, "_slow_readers", None), None
        if slow_readers is not None:
            slow_readers.stop()
        ports, self.ports = self.ports, []
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports], consumeErrors=True)
        d.addBoth(lambda _: service.MultiService.stopService(self))
        return d


def accept_waiting(port: Any, most: int = 10000) -> int:
    """
    Accept the connections waiting in C{port}'s listen queue (the kernel
    has completed their handshakes; the reactor has not taken them yet),
    before the port is closed at a stop: closing a listening socket
    resets every connection still queued, and a client that had just
    connected and sent a command saw "connection reset" where it should
    have had a greeting and the goodbye (L{twisted_mailhub.goodbye}, which
    runs after the listeners stop, tells these too). Returns how many
    rounds of accepting it took (0: nothing waited). Never raises.
    """
    import select

    sock = getattr(port, "socket", None)
    do_read = getattr(port, "doRead", None)
    if sock is None or do_read is None or not getattr(port, "connected", False):
        return 0
    rounds = 0
    try:
        while rounds < most and select.select([sock], [], [], 0)[0]:
            do_read()  # (Twisted's accept loop: each queued connection gets its protocol)
            rounds += 1
    except (OSError, ValueError):
        pass
    return rounds


def quiet_factory(factory: Any, name: str) -> None:
    """
    No object reprs in the log: Twisted logs C{Starting factory <... object
    at 0x...>} for each noisy factory of a listener chain (ours, TLS,
    transcript, limits) and names the listener by its class names; here
    every factory in the chain is quiet and the listener is called C{name}
    (C{smtp starting on 8025}).
    """
    factory.logPrefix = lambda: name
    seen = 0
    while factory is not None and seen < 8:
        factory.noisy = False
        factory = getattr(factory, "wrapped", None) or getattr(factory, "wrappedFactory", None)
        seen += 1


class ListenFailed(Exception):
    """
    Listeners could not bind; each has been logged in one line. C{twistd}
    passes this to a daemonizing parent, which then exits 1; in the
    foreground the process exits 1 with no traceback (the log lines said
    it all).
    """

    def __init__(self, names: str):
        Exception.__init__(self, f"cannot listen for {names} (see the log)")
        _quiet_exit_for(ListenFailed)


def _quiet_exit_for(kind: type) -> None:
    """
    Let an uncaught C{kind} end the process with status 1 and no traceback.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "quiet_for", None) is kind:
        return

    def hook(exc_type, value, tb):
        if not issubclass(exc_type, kind):
            previous(exc_type, value, tb)

    hook.quiet_for = kind  # type: ignore[attr-defined]
    sys.excepthook = hook


# What to do when a listener cannot bind, by errno.
_BIND_ADVICE = {
    errno.EADDRINUSE: (
        "the address is already in use (another program, or another hub, listens there)",
        "stop that program, or give --{name} another endpoint (or every port at once: --port-base), or turn it off with --no-{name}",
    ),
    errno.EACCES: (
        "permission denied (ports below 1024 need privileges)",
        "start as root with twistd --uid/--gid (the hub binds first, then drops privileges), grant CAP_NET_BIND_SERVICE (etc/mailhub.service), or use a port above 1023",
    ),
    errno.EADDRNOTAVAIL: (
        "that address is not one of this machine's",
        "give --{name} an interface= this machine has (e.g. tcp:PORT:interface=127.0.0.1)",
    ),
}


def cannot_listen_line(name: str, description: str, error: BaseException) -> str:
    """
    One line for a listener that could not bind: the option, the endpoint,
    why (from the errno) and what to do. Never a traceback or a repr.
    """
    socket_error = getattr(error, "socketError", error)
    code = getattr(socket_error, "errno", None)
    if code in _BIND_ADVICE:
        why, todo = _BIND_ADVICE[code]
    elif isinstance(error, (ValueError, KeyError, TypeError)):
        why = f"not a listener description ({error})"
        todo = "give --{name} a strports endpoint such as tcp:PORT or tcp:PORT:interface=ADDRESS"
    else:
        why = getattr(socket_error, "strerror", None) or str(error) or error.__class__.__name__
        todo = "check --{name}, or turn it off with --no-{name}"
    return f"mailhub: cannot listen for {name} on {description} (--{name}): {why}; {todo.format(name=name)}"


def default_hostname() -> str:
    return socket.getfqdn() or "localhost"


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
