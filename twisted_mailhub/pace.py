# -*- test-case-name: tests.test_pace -*-
"""
Slow readers: a peer that takes what the hub sends it more slowly than
L{twisted_mailhub.lines.MIN_TRANSFER_RATE} for a whole L{WINDOW} has its
connection closed, on every listener and on the relay's own connections.

The attack (the "slow read" form of slowloris): a client asks for
something big (an FTP RETR or LIST, an IMAP FETCH, a POP3 RETR, a web
download, an SFTP READ) and then reads it a few octets a second, with a
tiny receive window. Each octet it takes lets the hub write one more, so
every "idle" timer that a write resets (the FTP data timeout) never fires,
and one that only input resets is defeated by a NOOP now and then; the
connection, the open file, the session and the hub's send buffer are held
for as long as the client likes. A remote MX that reads the relay's DATA
that way holds a queue slot the same way.

Where the hub notices. Twisted writes into the kernel's send buffer (up
to several MiB on Linux, autotuned) and keeps the rest in the transport
(L{twisted.internet.abstract.FileDescriptor}: C{dataBuffer},
C{_tempDataBuffer}); a pull producer is asked for more only when that is
empty, and C{writeSequence} only appends to it. So what the hub has
written says nothing about what the peer took: the first few MiB go at
once. What the peer took is what its TCP acknowledged: Linux's C{TCP_INFO}
gives it (C{tcpi_bytes_acked}), and C{SIOCOUTQ} the octets the kernel
still holds for the peer. Both count the octets on the wire, TLS
records included, whichever layer wrote them.

The rule, checked every L{TICK} seconds for each TCP connection the
reactor watches (L{SlowReaders.sweep}): while the hub has octets waiting
for the peer (the kernel holds some, or the transport does), count what
the peer acknowledged; once it has waited so for L{WINDOW} seconds, the
peer must have taken C{WINDOW * MIN_TRANSFER_RATE} octets in that time
(240 KiB in 60 s), or the connection is cut: one log line, the protocol's
own word where one can still reach the client (an FTP data connection's
C{426} goes on the control connection; a relay delivery is a temporary
failure, tried again later), and the connection aborted (a peer that
reads nothing cannot be told anything: a reply would queue behind what it
does not read). A connection with nothing waiting is never judged: a
client that is slow to ask is the idle timers' business. An honest client
on a slow link reads at its link's speed; at 4 KiB/s or more it is never
cut.

Cost: one timer per hub, and two system calls per TCP connection each
L{TICK}: a sweep of 2,000 idle connections took 5 ms here (0.05% of a
core at one sweep per 10 s; /tmp/slowread/sweepcost.py of the stop-19
notes).
"""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import termios
from typing import Any, Callable
from weakref import WeakKeyDictionary

from twisted.internet import task, tcp
from twisted.logger import Logger

from twisted_mailhub.lines import MIN_TRANSFER_RATE

log = Logger()

#: Seconds a peer may take less than the floor while the hub waits on it.
WINDOW = 60.0
#: Seconds between two looks at the connections.
TICK = 10.0

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the u64 at octet 120
# (Linux 4.1 and later; tcpi_bytes_received follows it).
_TCP_INFO_SIZE = 256
_BYTES_ACKED = 120


def tcp_progress(sock: Any) -> tuple[int, int] | None:
    """
    What the peer of TCP socket C{sock} has taken: C{(acknowledged,
    queued)}, the octets it acknowledged since the connection began
    (C{tcpi_bytes_acked}) and the octets the kernel still holds for it,
    sent or not (C{SIOCOUTQ}). L{None} where the kernel cannot say (not
    Linux, not TCP, a closed socket).
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        if len(info) < _BYTES_ACKED + 8:
            return None
        (acked,) = struct.unpack_from("=Q", info, _BYTES_ACKED)
        queued = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, queued)
    except (OSError, AttributeError, ValueError):
        return None
    return acked, queued[0]


def held_in_transport(transport: Any) -> int:
    """Octets a Twisted TCP transport holds that the kernel did not take yet."""
    return len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)


def innermost(protocol: Any) -> Any:
    """
    The protocol under every wrapper: PROXY header, TLS, transcript (each
    keeps the one it wraps as C{wrappedProtocol}) and a client endpoint's
    C{_WrappingProtocol} (as C{_wrappedProtocol}: the relay's).
    """
    for _ in range(16):
        inner = getattr(protocol, "wrappedProtocol", None) or getattr(protocol, "_wrappedProtocol", None)
        if inner is None:
            break
        protocol = inner
    return protocol


def _watched(transport: Any) -> bool:
    """
    Is C{transport} a connection whose peer the hub serves: every accepted
    one, and the hub's own client connections whose protocol asks for it
    (C{paced = True}: the relay's, an FTP active data connection); not the
    hub's connections to PostgreSQL.
    """
    if isinstance(transport, tcp.Server):
        return True
    if isinstance(transport, tcp.Client):
        return bool(getattr(innermost(getattr(transport, "protocol", None)), "paced", False))
    return False


class SlowReaders:
    """
    Watches every TCP connection the reactor has for a peer that takes
    octets at under C{rate} for C{window} seconds while the hub has octets
    waiting for it (module docstring), and cuts it off.

    A protocol may say how (a method C{slow_reader(seconds, octets)} on
    its innermost protocol, which must close the connection); by default
    the connection is aborted with one log line.

    @param reactor: an C{IReactorFDSet} and C{IReactorTime} (the sweep
        reads C{getReaders()} and C{getWriters()}).
    @param probe: C{tcp_progress}, or a stand-in in tests: takes the
        socket, returns C{(acknowledged, queued)} octets or L{None}.
    """

    def __init__(self, reactor: Any, window: float = WINDOW, tick: float = TICK, rate: float = MIN_TRANSFER_RATE,
                 probe: Callable[[Any], tuple[int, int] | None] = tcp_progress, metrics: Any = None):
        self.reactor = reactor
        self.metrics = metrics  # L{twisted_mailhub.metrics.HubMetrics}, or None
        self.window = window
        self.tick = tick
        self.rate = rate
        self.probe = probe
        # transport -> (since when the hub waits on it, octets acknowledged then)
        self.waiting: WeakKeyDictionary = WeakKeyDictionary()
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        """Look every C{tick} seconds, from now on."""
        if self._loop is None:
            self._loop = task.LoopingCall(self.sweep)
            self._loop.clock = self.reactor
            self._loop.start(self.tick, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def connections(self) -> set[Any]:
        """The TCP transports to look at: the reactor's, and those a sendfile writer stands in for."""
        found = set()
        readers = getattr(self.reactor, "getReaders", None)
        if readers is None:  # a clock without descriptors (a test's task.Clock): nothing to watch
            return found
        for descriptor in (*readers(), *self.reactor.getWriters()):
            transport = getattr(descriptor, "paced_transport", descriptor)
            if _watched(transport) and transport.connected and not getattr(transport, "disconnected", False):
                found.add(transport)
        return found

    def sweep(self) -> list[Any]:
        """
        Look at each connection once; cut those that kept the hub waiting
        at under the rate for a window. Returns the transports cut.
        """
        now = self.reactor.seconds()
        cut = []
        for transport in self.connections():
            reading = self.probe(getattr(transport, "socket", None))
            if reading is None:
                continue
            acknowledged, queued = reading
            if queued <= 0 and held_in_transport(transport) <= 0:
                self.waiting.pop(transport, None)
                continue
            since, base = self.waiting.setdefault(transport, (now, acknowledged))
            elapsed = now - since
            if elapsed < self.window:
                continue
            taken = acknowledged - base
            if taken >= self.rate * elapsed:
                self.waiting[transport] = (now, acknowledged)
                continue
            self.waiting.pop(transport, None)
            cut.append(transport)
            self.cut_off(transport, elapsed, taken)
        return cut

    def cut_off(self, transport: Any, seconds: float, octets: int) -> None:
        """Close a slow reader's connection, in its protocol's way if it has one."""
        reset_on_close(transport)
        inner = innermost(getattr(transport, "protocol", None))
        if self.metrics is not None:
            self.metrics.slow_transfer(listener_of(inner))
        note_in_session(getattr(transport, "protocol", None), f"[closed: the client took {octets} octets in {seconds:.0f} s while the server had more for it, under {int(self.rate) // 1024} KiB/s]")
        hook = getattr(inner, "slow_reader", None)
        if hook is not None:
            try:
                hook(seconds, octets)
            except Exception:
                log.failure("closing a connection that read too slowly")
            if not getattr(transport, "disconnected", False):
                transport.abortConnection()
            return
        peer = getattr(transport.getPeer(), "host", "?")
        who = getattr(inner, "connection_id", None) or getattr(getattr(inner, "factory", None), "protocol_name", None) or "a connection"
        log.info(
            "{who} from {peer}: the client took {octets} octets in {seconds:.0f} s while the hub had more for it, under {rate} KiB/s; closing",
            who=who, peer=peer, octets=octets, seconds=seconds, rate=int(self.rate) // 1024,
        )
        transport.abortConnection()


def listener_of(protocol: Any) -> str:
    """
    The listener a connection's innermost C{protocol} came from (its
    factory's C{protocol_name}, L{twisted_mailhub.hub.Hub.listen}), or its
    own C{listener_name} (an FTP data connection: C{ftp}; the relay's
    client: C{relay}); else C{other}.
    """
    name = getattr(getattr(protocol, "factory", None), "protocol_name", None)
    if not isinstance(name, str):
        name = getattr(protocol, "listener_name", None)
    return name if isinstance(name, str) else "other"


def note_in_session(protocol: Any, text: str) -> None:
    """
    Put C{text} in the session's record (the live console and its
    transcript, design rule 9) as a bracketed server note, as the relay
    does for its "[connection closed]": the session's C{TranscriptProtocol}
    is found among the wrappers from C{protocol} in. No record (not
    recording, an FTP data connection): nothing.
    """
    for _ in range(16):
        if protocol is None:
            return
        record = getattr(protocol, "record", None)
        if record is not None and callable(getattr(record, "add_line", None)):
            record.add_line("S", text.encode("utf-8"))
            return
        protocol = getattr(protocol, "wrappedProtocol", None) or getattr(protocol, "_wrappedProtocol", None)


def reset_on_close(transport: Any) -> None:
    """
    Make the close of C{transport}'s socket a TCP reset (C{SO_LINGER} on
    with a zero time): a plain close leaves what the kernel still holds
    for the peer (MiBs, for a slow reader) to be sent to it after the
    hub let go, by an orphan socket, at the peer's pace.
    """
    sock = getattr(transport, "socket", None)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass


def too_slow_words(seconds: float, rate: float = MIN_TRANSFER_RATE) -> str:
    """The reason for a reply or log line: C{"the client read at under 4 KiB/s for 60 seconds"}."""
    return f"the client read at under {int(rate) // 1024} KiB/s for {seconds:.0f} seconds"
