# -*- test-case-name: tests.test_ftp_units,tests.test_e2e_ftp -*-
"""
The FTP data channel: one data connection per transfer, passive or active.

Rules (everything that changes the channel's state lives here):

  state               event                    next state
  ------------------  -----------------------  ------------------
  IDLE                passive()                PASSIVE_LISTENING
  IDLE                active()                 ACTIVE_READY
  PASSIVE_LISTENING   client connects          PASSIVE_CONNECTED
  PASSIVE_LISTENING   open()                   CONNECTING
  PASSIVE_CONNECTED   open()                   TRANSFERRING
  ACTIVE_READY        open()                   CONNECTING
  CONNECTING          connected (TLS started)  TRANSFERRING
  CONNECTING          timeout / refused        IDLE (open() fails: 425)
  TRANSFERRING        finished / failed        IDLE
  any                 abort() / reset()        IDLE

Theory of operation. The control channel (L{twisted_mailhub.ftp.server})
asks for a passive port (PASV/EPSV) or gives the client's address
(PORT/EPRT); a transfer command then calls L{DataChannel.open}, which fires
with a connected L{DataConnection} once the client connected to us (passive)
or we connected to it (active). Passive connections from any address other
than the control peer's are dropped (port stealing, RFC 2577 §5). Active
connections are made from C{data_port} (RFC 959 §3.2: L-1) with
SO_REUSEADDR so consecutive transfers can reuse it; if it cannot be bound
(another process holds it), the log says so and an ephemeral port is used.

With PROT P (RFC 4217 §9) the data connection starts TLS as the server on
either side. A binary download of a regular file over plain TCP goes
through C{os.sendfile}, at once and then driven by the reactor's write
readiness, so neither the reactor nor Python copies the bytes and no call
blocks for the length of the file; everything else goes through a pull
producer in large chunks. When the last byte is in the socket the data
connection is closed in the same turn and 226 follows at once.

Passive data connections through a balancer (C{--passive-ports
haproxy:LO-HI}): HAProxy forwards the passive range to the hub, so a data
connection comes from the balancer, not from the client. Each must then
come from C{--proxy-from} and begin with a PROXY header
(L{twisted_mailhub.proxyheader}) whose source is the control connection's
client: that is the port-stealing check here. The listener stays open
until such a connection arrives (others, and ones whose header names
someone else, are closed); the transfer then runs over the header's
wrapper, so it never sees the header's octets.

Passive ports. Each PASV/EPSV opens one listening socket, bound to a port
picked at random by us (from C{--passive-ports}, or else from the OS's
ephemeral range), not to port 0: every finished data connection leaves a
TIME_WAIT socket on our side, and a host that has served a few thousand
transfers a minute makes the kernel's own search for a free port cost
0.3-1.4 ms per PASV, more than the rest of an FTP session.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import random
import socket
from typing import Any

from twisted.internet import defer, error, main, protocol, tcp
from twisted.internet.interfaces import IHandshakeListener, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python import failure
from twisted.protocols import policies
from zope.interface import implementer

from twisted_mailhub.ftp.vfs import FileSystemUnavailable, FileSystemUnavailableWrite
from twisted_mailhub.lines import MIN_TRANSFER_RATE

log = Logger()

CHUNK = 256 * 1024
EARLY_LIMIT = 1024 * 1024  # bytes taken on a data connection before its command
# The slowest an upload may arrive on average, in octets per second, once
# it has run for --ftp-data-timeout (as an IMAP literal's and a web body's,
# 32 kbit/s): past that, octets that come slower no longer keep the data
# connection alive, so a client trickling an octet every few seconds is cut
# off instead of holding the transfer and the file for ever.
UPLOAD_RATE = MIN_TRANSFER_RATE
SENDFILE_SLICE = 8 * 1024 * 1024
SENDFILE_BUDGET = 64 * 1024 * 1024  # per reactor turn, so others get a go
PASSIVE_TRIES = 200  # ports tried for one PASV before giving up
_random = random.SystemRandom()  # passive ports are not to be guessed


def ephemeral_ports() -> range:
    """
    The ports the OS hands out for port 0 (Linux's ip_local_port_range),
    where a passive port is looked for when no range was configured.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(max(low, 1024), max(high, 1024) + 1)


EPHEMERAL_PORTS = ephemeral_ports()


def port_candidates(ports: range, tries: int = PASSIVE_TRIES):
    """
    Up to C{tries} different ports of C{ports} in random order, drawn one
    at a time as they are needed (usually one is): no list of 28,000 ports
    is built and shuffled for each PASV.
    """
    n = len(ports)
    if n <= 16:
        order = list(ports)
        _random.shuffle(order)
        yield from order
        return
    seen: set[int] = set()
    while len(seen) < min(tries, n):
        port = ports[_random.randrange(n)]
        if port not in seen:
            seen.add(port)
            yield port


class DataState(enum.Enum):
    IDLE = "idle"
    PASSIVE_LISTENING = "passive-listening"
    PASSIVE_CONNECTED = "passive-connected"
    ACTIVE_READY = "active-ready"
    CONNECTING = "connecting"
    TRANSFERRING = "transferring"


class TransferAborted(Exception):
    """ABOR, or the control connection went away."""


def _reset(reason: Any) -> bool:
    """
    Did the TCP connection end with C{reason} other than by a close (a
    FIN): a reset (the client died, or gave up), which Twisted's TCP
    transport reports as C{ConnectionLost}? Never the end of a file.
    """
    return not reason.check(error.ConnectionDone)


class TransferFailed(Exception):
    """
    The data connection could not be made, or broke before the transfer
    was complete. Its text is a clause that names the data connection at
    most once and reads as the reply's words after the code (capitalized:
    C{425 Cannot open the data connection to ::1 port 40000.}, C{426 The
    data connection broke; transfer aborted.}).
    """


def _cut_short(reason: Any) -> TransferFailed:
    """
    Why a download ended before its last octet: the client closed the data
    connection (a FIN: it gave the transfer up) or it broke (a reset).
    """
    if _reset(reason):
        return TransferFailed("the data connection broke")
    return TransferFailed("the client closed the data connection before the end")


class TransferWriteError(TransferFailed):
    """The file being received could not be written (disk full...)."""


def _seconds(count: float) -> str:
    """C{count} seconds in words: C{"1 second"}, C{"2.5 seconds"}."""
    return f"{count:g} second" + ("" if count == 1 else "s")


def same_host(a: str, b: str) -> bool:
    """
    Are C{a} and C{b} the same address (IPv4-mapped IPv6 and scope ids
    seen through)?
    """
    if a == b:
        return True

    def norm(h):
        try:
            ip = ipaddress.ip_address(h.split("%", 1)[0])
        except ValueError:
            return h
        if ip.version == 6 and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    return norm(a) == norm(b)


def to_crlf(data: bytes, held: bytes) -> tuple[bytes, bytes]:
    """
    TYPE A on the way out (RFC 959 §3.1.1.1): every line end becomes CRLF.
    A trailing CR is held back until the next chunk shows what follows it.
    """
    data = held + data
    held = b""
    if data.endswith(b"\r"):
        data, held = data[:-1], b"\r"
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), held


def from_crlf(data: bytes, held: bytes) -> tuple[bytes, bytes]:
    """
    TYPE A on the way in: CRLF becomes the local LF.
    """
    data = held + data
    held = b""
    if data.endswith(b"\r"):
        data, held = data[:-1], b"\r"
    return data.replace(b"\r\n", b"\n"), held


@implementer(IReadDescriptor, IWriteDescriptor)
class _SendfileWriter:
    """
    Registered with the reactor for write readiness on the data socket
    while the TCP transport itself stands aside; each turn moves at most
    L{SENDFILE_BUDGET} bytes with C{os.sendfile}.

    It watches the socket for reading too (the transport does not, while
    it stands aside): a client that closes its side of the data connection
    before the end, even only half (a FIN, the socket kept open and no
    longer read), has given the download up (RFC 959 §3.4: in stream mode
    the sender ends the data). The download then fails at once, not at the
    data timeout. Octets the client sends on a download are dropped.
    """

    def __init__(self, connection: "DataConnection", reader: Any):
        self.connection = connection
        self.reader = reader
        self.sock_fd = connection.transport.getHandle().fileno()
        # The connection the slow-reader watch (pace.py) judges while this
        # writer stands in for it with the reactor.
        self.paced_transport = connection.transport
        self.file_fd = reader.fileno()
        self.offset = reader.offset
        self.sent = 0

    def fileno(self) -> int:
        return self.sock_fd

    def logPrefix(self) -> str:
        return "ftp-data-sendfile"

    def doWrite(self):
        budget = SENDFILE_BUDGET
        while budget > 0:
            try:
                n = os.sendfile(self.sock_fd, self.file_fd, self.offset, SENDFILE_SLICE)
            except BlockingIOError:
                break
            except OSError as e:
                return e
            if n == 0:
                self.connection._sendfile_done(self)
                return None
            self.offset += n
            self.sent += n
            budget -= n
        self.connection.resetTimeout()
        return None

    def doRead(self):
        try:
            data = os.read(self.sock_fd, 65536)
        except BlockingIOError:
            return None
        except OSError as e:
            return e
        if not data:
            return main.CONNECTION_DONE
        return None

    def connectionLost(self, reason):
        self.connection._sendfile_failed(self, reason)


class _ChunkProducer:
    """
    A pull producer of a file's bytes in large chunks (TLS, TYPE A).
    """

    def __init__(self, connection: "DataConnection", reader: Any, ascii: bool):
        self.connection = connection
        self.reader = reader
        self.ascii = ascii
        self.held = b""
        self.sent = 0
        self.stopped = False

    def resumeProducing(self):
        if self.stopped:
            return
        try:
            chunk = self.reader.read(CHUNK)
        except FileSystemUnavailable as e:
            # The file system's database went away mid-download: the
            # command's temporary error (451), not a traceback.
            self.stopped = True
            self.connection.transport.unregisterProducer()
            self.connection._fail(e)
            self.connection.transport.abortConnection()
            return
        if not chunk:
            self.stopped = True
            if self.held:
                self.connection.transport.write(self.held)
            self.connection.transport.unregisterProducer()
            self.connection._finish_sending()
            return
        if self.ascii:
            chunk, self.held = to_crlf(chunk, self.held)
        self.sent += len(chunk)
        self.connection.resetTimeout()
        self.connection.transport.write(chunk)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        self.stopped = True


@implementer(IHandshakeListener)
class DataConnection(protocol.Protocol, policies.TimeoutMixin):
    """
    One data connection (the DTP of RFC 959). It sends a listing or a file,
    or receives a file, then closes. C{done} fires with the number of bytes
    moved, or fails with L{TransferAborted} / L{TransferFailed}.
    """

    def __init__(self, channel: "DataChannel"):
        self.channel = channel
        self.callLater = channel.reactor.callLater  # TimeoutMixin's clock
        self.done: defer.Deferred | None = None
        self.tls = False
        self._tcp_end: Any = None  # how the TCP connection under TLS ended (_watch_tcp_end)
        self.bytes = 0
        self._writer = None
        self._ascii = False
        self._held = b""
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._sendfile: _SendfileWriter | None = None
        self._producer: _ChunkProducer | None = None
        self._finished = False
        self._lost = False
        self._handshaken = False
        self._received = 0  # octets the client sent on this connection
        self._opened = channel.reactor.seconds()  # (again at connectionMade)
        self._trickling = False  # octets came slower than UPLOAD_RATE and no longer reset the timer

    # -- connection --------------------------------------------------------

    def connectionMade(self):
        self.setTimeout(self.channel.timeout)
        self._opened = self.channel.reactor.seconds()
        self._report_data_connection("open")
        if self.channel.protect:
            # RFC 4217 §9: the FTP server is the TLS server on the data
            # connection whichever side opened it.
            # The transfer starts once the handshake is done: closing a
            # TLS connection before that (an empty listing) breaks it.
            self.transport.startTLS(self.channel.tls, normal=not self.channel.active_mode)
            self.tls = True
            self.channel.pending = self
            self._watch_tcp_end()
            return
        self.channel._connected(self)

    # An active-mode data connection is the hub's own client connection:
    # the slow-reader watch (pace.py) judges it as it does a passive one.
    paced = True
    listener_name = "ftp"  # (for /metrics: no factory of the FTP listener made it)

    def slow_reader(self, seconds: float, octets: int) -> None:
        """
        The client took the download at under 4 KiB/s for C{seconds} while
        more was waiting for it (L{twisted_mailhub.pace}): the transfer
        fails with 426 on the control connection (RFC 959 §4.2) and the
        data connection is aborted; the file is closed.
        """
        log.info(
            "ftp data connection: the client took {octets} octets in {seconds:.0f} s, under {rate} KiB/s; closing",
            octets=octets, seconds=seconds, rate=int(MIN_TRANSFER_RATE) // 1024,
        )
        self._fail(TransferFailed(f"the client read the data at under {int(MIN_TRANSFER_RATE) // 1024} KiB/s for {_seconds(round(seconds))}"))
        self.abort()

    def _watch_tcp_end(self) -> None:
        """
        Keep how the TCP connection under TLS ended (L{_tcp_end}): the TLS
        layer reports a reset and a close without close_notify alike
        (C{ConnectionLost}), and only the second may end a file.
        """
        tls_layer = getattr(self.transport, "protocol", None)
        lost = getattr(tls_layer, "connectionLost", None)
        if lost is None or getattr(tls_layer, "wrappedProtocol", None) is not self:
            return

        def connection_lost(reason):
            self._tcp_end = reason
            return lost(reason)

        tls_layer.connectionLost = connection_lost

    def handshakeCompleted(self):
        self._handshaken = True
        if self.channel.pending is self:
            self.channel.pending = None
        self.channel._connected(self)

    def timeoutConnection(self):
        if self._trickling:
            log.info("ftp data connection slower than {rate} octets/s; closing", rate=int(UPLOAD_RATE))
            self._fail(TransferFailed(f"the data arrived at under {int(UPLOAD_RATE) // 1024} KiB/s for over {_seconds(self.channel.upload_grace)}"))
        else:
            log.info("ftp data connection idle for {t}s; closing", t=self.channel.timeout)
            self._fail(TransferFailed(f"the data connection was idle for {_seconds(self.channel.timeout)}"))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes):
        self._received += len(data)
        elapsed = self.channel.reactor.seconds() - self._opened
        if elapsed <= self.channel.upload_grace or self._received >= elapsed * UPLOAD_RATE:
            self.resetTimeout()
            self._trickling = False
        else:
            self._trickling = True  # (the timer runs on: see timeoutConnection)
        if self._writer is None:
            # Bytes before the STOR that will take them (or junk on a
            # download): kept, but the client is held back past EARLY_LIMIT.
            self._early.append(data)
            self._early_bytes += len(data)
            if self._early_bytes > EARLY_LIMIT:
                self.transport.pauseProducing()
            return
        self._write(data)

    def _write(self, data: bytes):
        if self._ascii:
            data, self._held = from_crlf(data, self._held)
        try:
            self._writer.write(data)
        except FileSystemUnavailableWrite as e:
            # The file system's database went away mid-upload: the
            # command's temporary error (451) and one outage line.
            self._fail(FileSystemUnavailable(str(e)))
            self.transport.abortConnection()
            return
        except OSError as e:
            from twisted_mailhub.ftp.vfs import error_words

            reason = getattr(e, "reason", None)  # the hub's own words (a quota)
            if reason is None:
                log.warn("ftp upload write failed: {error}", error=e.strerror or e.__class__.__name__)
            error = TransferWriteError(reason or error_words(e))
            error.errno = e.errno
            self._fail(error)
            self.transport.abortConnection()
            return
        self.bytes += len(data)

    def _report_data_connection(self, phase: str) -> None:
        """
        A session event for the console (design rule 9): who connected to
        whom, and at the end how many bytes in how long.
        """
        report = self.channel.on_data_connection
        if report is None or self.transport is None:
            return
        if phase == "open":
            # Asked now: a closed socket no longer knows its addresses.
            here, there = self.transport.getHost(), self.transport.getPeer()
            self._ends = (
                f"{getattr(here, 'host', '?')}:{getattr(here, 'port', '?')}",
                f"{getattr(there, 'host', '?')}:{getattr(there, 'port', '?')}",
            )
        server, client = getattr(self, "_ends", ("?", "?"))
        if phase == "open":
            channel = self.channel
            mode = "active mode" if channel.active_mode else "passive mode"
            if channel.protect:
                mode += ", TLS: PROT P"
            elif channel.control_tls:
                # (FTPS whose data goes in the clear: the class should see it)
                mode += ", in the clear: PROT C"
            if channel.active_mode:
                report("data", f"open: server {server} connected to client {client} ({mode})")
            else:
                report("data", f"open: client {client} connected to server {server} ({mode})")
        else:
            seconds = self.channel.reactor.seconds() - self._opened
            report("data", f"closed: server {server}, client {client}, {self.progress()} bytes in {seconds:.3f} s")

    def connectionLost(self, reason):
        self.setTimeout(None)
        self._lost = True
        self._report_data_connection("closed")
        if self._sendfile is not None:
            self._stop_sendfile()
        if self.done is None:
            if self.tls and not self._handshaken:
                self.channel._lost_before_tls(self)
            elif not self._early:
                self.channel._lost_unused(self)
            # else: a small upload that came and went before its STOR was
            # read; receive() still takes it.
            return
        if self.done.called:
            return
        if self._writer is not None:
            if self._held:
                self._writer.write(self._held)
                self._held = b""
            if not self.channel.reactor.running:
                # The hub is stopping: the reactor drops every connection
                # (disconnectAll). That is no end of file, whatever the
                # transport says (a TLS one was taken as one, and the
                # partial upload went in place under its name).
                self.done.errback(TransferFailed("the hub stopped during the upload"))
            elif reason.check(error.ConnectionDone) or (self.tls and not _reset(self._tcp_end or reason)):
                # End of file is the client closing (RFC 959 §3.4, stream
                # mode); over TLS many clients close without close_notify,
                # so a TCP close is one, but not a reset (the client died
                # or gave up: the TLS layer said "lost" for both).
                self.done.callback(self.bytes)
            else:
                self.done.errback(TransferFailed("the data connection broke"))
        elif self._finished:
            self.done.callback(self.bytes)
        else:
            # Over TLS the TCP end tells a FIN from a reset (the TLS
            # layer reports both as "lost").
            self.done.errback(_cut_short(self._tcp_end or reason if self.tls else reason))

    def progress(self) -> int:
        """Bytes moved so far (STAT during a transfer)."""
        if self._sendfile is not None:
            return self._sendfile.sent
        if self._producer is not None:
            return self._producer.sent
        return self.bytes

    def _fail(self, exc: Exception):
        if self.done is not None and not self.done.called:
            self.done.errback(exc)

    # -- what a transfer does ------------------------------------------------

    def send_bytes(self, data: bytes) -> defer.Deferred:
        self.done = defer.Deferred()
        self.bytes = len(data)
        self._finished = True
        self.transport.write(data)
        self.transport.loseConnection()
        return self.done

    def send_file(self, reader: Any, ascii: bool) -> defer.Deferred:
        self.done = defer.Deferred()
        if not ascii and not self.tls and hasattr(reader, "fileno") and _plain_tcp(self.transport):
            self._start_sendfile(reader)
        else:
            self._producer = _ChunkProducer(self, reader, ascii)
            self.transport.registerProducer(self._producer, False)
        return self.done

    def receive(self, writer: Any, ascii: bool) -> defer.Deferred:
        self.done = defer.Deferred()
        self._writer = writer
        self._ascii = ascii
        handle = getattr(self.transport, "getHandle", None)
        if handle is not None and not self.tls:
            # Fewer, larger reads: STOR runs at disk speed, not at 64 KiB a turn.
            self.transport.bufferSize = CHUNK
        early, self._early = self._early, []
        for data in early:
            self._write(data)
        if self._early_bytes > EARLY_LIMIT and not self._lost:
            self.transport.resumeProducing()
        self._early_bytes = 0
        if self._lost and not self.done.called:
            self.done.callback(self.bytes)
        return self.done

    def abort(self):
        self._fail(TransferAborted())
        if self._sendfile is not None:
            self._stop_sendfile()
        if self._producer is not None:
            self._producer.stopProducing()
        if not self._lost:
            self.transport.abortConnection()

    # -- sendfile ------------------------------------------------------------

    def _start_sendfile(self, reader):
        # The transport has nothing buffered (nothing was written yet); it
        # stops watching the socket while the sendfile writer does.
        self.transport.stopReading()
        self.transport.stopWriting()
        writer = self._sendfile = _SendfileWriter(self, reader)
        # Send at once: a fresh socket is writable, and a small file goes
        # in one call and is closed in this turn, without asking the
        # reactor to wake us when we can write. The rest is paced by it.
        why = writer.doWrite()
        if why is not None:
            writer.connectionLost(failure.Failure(why))
        elif self._sendfile is writer:
            self.channel.reactor.addReader(writer)
            self.channel.reactor.addWriter(writer)

    def _stop_sendfile(self):
        writer, self._sendfile = self._sendfile, None
        if writer is not None:
            self.channel.reactor.removeReader(writer)
            self.channel.reactor.removeWriter(writer)
            self.bytes = writer.sent

    def _sendfile_done(self, writer):
        # Everything went through the socket; nothing is left to read
        # either (the client only reads on a download): close now.
        self._stop_sendfile()
        self._finished = True
        close_now(self.transport)

    def _sendfile_failed(self, writer, reason):
        self._sendfile = None
        self.bytes = writer.sent
        self._fail(_cut_short(reason))
        if not self._lost:
            self.transport.startReading()
            self.transport.abortConnection()

    def _finish_sending(self):
        if self._producer is not None:
            self.bytes = self._producer.sent
        self._finished = True
        self.transport.loseConnection()


def reason_words(e: Exception) -> str:
    """
    An exception as a log line's words, never Python's text (no
    C{[Errno 98]}, no class name): an OS error's C{strerror}; Twisted's
    C{CannotListenError} as "cannot listen on HOST port PORT: WHY"; a
    C{ConnectError} (C{ConnectBindError(98, 'Address already in use')},
    C{ConnectionRefusedError}) by the OS's words, not its number.
    """
    if isinstance(e, error.CannotListenError):
        inner = e.socketError
        why = getattr(inner, "strerror", None) or (inner if isinstance(inner, str) else "") or "refused"
        return f"cannot listen on {e.interface or 'every address'} port {e.port}: {why}"
    if isinstance(e, error.ConnectError):
        if e.args and isinstance(e.args[0], str) and e.args[0]:
            return e.args[0]
        if isinstance(e.osError, int):
            return os.strerror(e.osError)
        return " ".join((e.__doc__ or "cannot connect").split()).rstrip(".").lower()
    return getattr(e, "strerror", None) or str(e) or "an unexpected error"


def data_tls_options(control: Any) -> Any:
    """
    TLS options for data connections, from the control channel's.

    TLS 1.2 at most and no session tickets: a TLS 1.3 server sends its
    tickets after the handshake, an uploading client never reads them, and
    its close then becomes a reset that discards the end of the upload in
    our kernel (seen with lftp/GnuTLS). In TLS 1.2 nothing follows the
    handshake.
    """
    from twisted.internet import ssl

    return ssl.CertificateOptions(
        privateKey=control.privateKey,
        certificate=control.certificate,
        extraCertChain=control.extraCertChain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
    )


def _plain_tcp(transport) -> bool:
    return not getattr(transport, "TLS", False) and isinstance(transport, tcp.Connection)


def close_now(transport) -> None:
    """
    Close a connection that has nothing left to send at once, with the
    orderly shutdown and close that C{loseConnection} would make one
    reactor turn later (it waits for the socket to be writable just to find
    an empty buffer: two epoll changes and a wakeup, and the 226 of a
    download waits for them). Twisted does the same when the write side
    is already shut. Anything with a buffer, a producer or TLS goes
    through C{loseConnection}.
    """
    if (
        type(transport) in (tcp.Server, tcp.Client)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.producer is None
    ):
        transport.stopReading()
        transport.stopWriting()
        transport.connectionLost(failure.Failure(main.CONNECTION_DONE))
        return
    transport.loseConnection()


class _ReuseAddressClient(tcp.Client):
    def createInternetSocket(self):
        s = tcp.Client.createInternetSocket(self)
        # RFC 959's fixed source port, reused transfer after transfer.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s


class _ReuseAddressConnector(tcp.Connector):
    def _makeTransport(self):
        return _ReuseAddressClient(self.host, self.port, self.bindAddress, self, self.reactor)


@implementer(IReadDescriptor)
class _PassiveListener:
    """
    A listening socket for one passive data connection. Not a Twisted
    C{Port}: that logs two lines for every transfer and costs a reactor turn
    to close; this accepts one connection from the control peer, hands it
    to the reactor as a TCP transport, and closes.
    """

    def __init__(self, channel: "DataChannel", host: str, port: int):
        self.channel = channel
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            if port:
                # A port by number may still hold TIME_WAIT sockets of
                # earlier transfers. Not for port 0: the kernel's search
                # for a free port is four times slower with it.
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(2)
            self.socket.setblocking(False)
        except OSError as e:
            self.socket.close()
            raise error.CannotListenError(host, port, e)
        self.port = self.socket.getsockname()[1]
        self.closed = False
        channel.reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self.closed else self.socket.fileno()

    def logPrefix(self) -> str:
        return "ftp-passive"

    def doRead(self):
        try:
            skt, addr = self.socket.accept()
        except OSError:
            return None  # EAGAIN, or out of descriptors: keep listening
        channel = self.channel
        if channel.balancers is not None:
            self._through_balancer(skt, addr)
            return None
        if not same_host(addr[0], channel.peer_host):
            # RFC 2577 §5 (port stealing): only the control peer may connect.
            log.warn("ftp passive data connection from {host} refused (control peer is {peer})", host=addr[0], peer=channel.peer_host)
            skt.close()
            return None
        channel._stop_listening()
        if channel.state is not DataState.PASSIVE_LISTENING and channel.state is not DataState.CONNECTING:
            skt.close()
            return None
        # The accepted socket becomes a Twisted TCP transport as it is (what
        # adoptStreamConnection does after duplicating the descriptor and
        # asking the kernel for both addresses again).
        skt.setblocking(False)
        protocol = DataConnection(channel)
        transport = tcp.Server(skt, protocol, addr, None, addr[1], channel.reactor)
        transport.repstr = f"<DataConnection #{addr[1]} on {self.port}>"
        protocol.makeConnection(transport)
        return None

    def _through_balancer(self, skt, addr):
        """
        A data connection from the balancer: the PROXY header is read
        first (a peer outside C{--proxy-from} is closed at once), then
        L{_BalancedData} checks the client it names.
        """
        from twisted_mailhub.proxyheader import ProxyHeaderFactory

        channel = self.channel
        skt.setblocking(False)
        wrapper = ProxyHeaderFactory(_BalancedData(channel, self), channel.reactor, "ftp data", channel.balancers).buildProtocol(None)
        transport = tcp.Server(skt, wrapper, addr, None, addr[1], channel.reactor)
        transport.repstr = f"<DataConnection #{addr[1]} on {self.port} (balanced)>"
        wrapper.makeConnection(transport)

    def connectionLost(self, reason):
        self.close()

    def close(self):
        if not self.closed:
            self.channel.reactor.removeReader(self)
            self.closed = True
            self.socket.close()


class _BalancedData:
    """
    The factory behind a balanced data connection's PROXY header: it is
    asked with the client the header names, and makes the transfer's
    L{DataConnection} only for the control connection's client while the
    channel still waits on this listener (RFC 2577 §5).
    """

    def __init__(self, channel: "DataChannel", listener: _PassiveListener):
        self.channel = channel
        self.listener = listener

    def buildProtocol(self, addr):
        channel = self.channel
        host = getattr(addr, "host", None)
        if host is None or not same_host(host, channel.peer_host):
            log.warn(
                "ftp passive data connection for {host} through the balancer refused (control peer is {peer})",
                host=host or "an unnamed client", peer=channel.peer_host,
            )
            return None
        if channel._port is not self.listener:
            return None  # the channel moved on (a new PASV, ABOR, a timeout)
        channel._stop_listening()
        if channel.state is not DataState.PASSIVE_LISTENING and channel.state is not DataState.CONNECTING:
            return None
        return DataConnection(channel)


class _ActiveFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, channel: "DataChannel", bound: bool):
        self.channel = channel
        self.bound = bound

    def buildProtocol(self, addr):
        return DataConnection(self.channel)

    def clientConnectionFailed(self, connector, reason):
        self.channel._active_failed(reason, self.bound)


class DataChannel:
    """
    The data side of one control connection.
    """

    # One per control connection, idle most of its life: slots keep it small.
    __slots__ = (
        "reactor", "local_host", "peer_host", "data_port", "timeout", "tls", "protect", "control_tls", "on_data_connection",
        "balancers", "state", "active_mode", "connection", "pending", "_port", "_address", "_waiting", "_timer",
        "upload_grace",
    )

    def __init__(self, reactor, local_host: str, peer_host: str, data_port: int, timeout: float, tls=None, balancers=None,
                 upload_grace: float | None = None):
        """
        @param timeout: seconds to wait for a data connection, or on a
            stalled one (C{--ftp-data-timeout}).
        @param upload_grace: seconds an upload may run before its octets
            must average L{UPLOAD_RATE} to keep it alive (L{None}: the
            same as C{timeout}). The hub gives the control connection's
            idle time (C{--ftp-idle-timeout}, 300 s) when that is longer,
            so a student typing a file into nc on the data connection is
            not cut after a minute, while an octet every few seconds
            cannot hold a transfer for ever.
        @param balancers: L{None}: passive data connections come straight
            from the client. Else they come through a balancer in this
            container of addresses (C{--proxy-from}), each with a PROXY
            header naming the client (C{--passive-ports haproxy:LO-HI}).
        """
        self.reactor = reactor
        self.balancers = balancers
        self.local_host = local_host
        self.peer_host = peer_host
        self.data_port = data_port
        self.timeout = timeout
        self.upload_grace = timeout if upload_grace is None else max(timeout, upload_grace)
        self.tls = tls
        self.protect = False
        # The control connection runs over TLS (AUTH TLS, RFC 4217): a data
        # connection is then said to be protected (PROT P) or not (PROT C).
        self.control_tls = False
        # Called with ("data", text) as data connections open and close:
        # the session-event bus sets it (transcript.py); None costs nothing.
        self.on_data_connection = None
        self.state = DataState.IDLE
        self.active_mode = False
        self.connection: DataConnection | None = None
        # A PROT P data connection whose TLS handshake is under way.
        self.pending: DataConnection | None = None
        self._port = None
        self._address: tuple[str, int] | None = None
        self._waiting: defer.Deferred | None = None
        self._timer = None

    def _enter(self, state: DataState):
        self.state = state

    # -- set up --------------------------------------------------------------

    def passive(self, port_range: range | None) -> int:
        """
        Listen for the client (PASV/EPSV); return the port.

        Without C{--passive-ports} the port is picked at random from the
        OS's ephemeral range (L{ephemeral_ports}) and bound by number, not
        with C{bind(port 0)}: on a busy host (thousands of TIME_WAIT
        sockets, which every finished data connection leaves) the kernel's
        search for a free port costs 0.3 ms, and 1.4 ms with SO_REUSEADDR,
        per PASV; a bind by number is a hash lookup (10 microseconds).
        If no tried port is free, the kernel chooses.
        """
        self.reset()
        last = None
        for port in port_candidates(port_range or EPHEMERAL_PORTS):
            try:
                self._port = _PassiveListener(self, self.local_host, port)
                break
            except error.CannotListenError as e:
                last = e
        else:
            if port_range:
                raise last or error.CannotListenError(self.local_host, 0, "no passive port free")
            self._port = _PassiveListener(self, self.local_host, 0)
        self.active_mode = False
        self._enter(DataState.PASSIVE_LISTENING)
        return self._port.port

    def active(self, host: str, port: int) -> None:
        """
        Connect to the client when a transfer starts (PORT/EPRT).
        """
        self.reset()
        self._address = (host, port)
        self.active_mode = True
        self._enter(DataState.ACTIVE_READY)

    @property
    def ready(self) -> bool:
        return self.state in (DataState.PASSIVE_LISTENING, DataState.PASSIVE_CONNECTED, DataState.ACTIVE_READY)

    def open(self) -> defer.Deferred:
        """
        A Deferred firing with the L{DataConnection} for a transfer.
        """
        if self.state is DataState.PASSIVE_CONNECTED:
            self._enter(DataState.TRANSFERRING)
            return defer.succeed(self.connection)
        if not self.ready:
            return defer.fail(TransferFailed("use PORT, PASV, EPRT or EPSV first"))
        waiting = self._waiting = defer.Deferred()
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        active = self.state is DataState.ACTIVE_READY
        self._enter(DataState.CONNECTING)
        if active:
            self._connect(bind=self.data_port > 0)
        return waiting

    def _connect(self, bind: bool):
        """
        Start connecting to the client's PORT/EPRT address. A connection
        that cannot even be started (Twisted raises at once for an address
        it cannot resolve, e.g. an IPv6 scope id no interface has) fails
        the transfer as a refused one does (425), with one log line: no
        traceback, and no timer or Deferred left behind.
        """
        host, port = self._address
        bind_address = (self.local_host, self.data_port) if bind else (self.local_host, 0)
        factory = _ActiveFactory(self, bind)
        try:
            connector = _ReuseAddressConnector(host, port, factory, self.timeout, bind_address, self.reactor)
            connector.connect()
        except Exception as e:
            log.warn("ftp cannot connect to {host} port {port}: {why}", host=host, port=port, why=reason_words(e))
            self._give_up(TransferFailed(f"cannot open the data connection to {host} port {port}"))

    def _active_failed(self, reason, bound):
        if self.state is not DataState.CONNECTING:
            return
        if bound and reason.check(error.ConnectBindError):
            log.warn(
                "ftp cannot send from data port {port} ({why}); using an ephemeral port",
                port=self.data_port,
                why=reason_words(reason.value),
            )
            self._connect(bind=False)
            return
        self._give_up(TransferFailed(f"cannot open the data connection to {self._address[0]} port {self._address[1]}"))

    def _timed_out(self):
        self._timer = None
        self._give_up(TransferFailed(f"no data connection was made within {_seconds(self.timeout)}"))

    def _give_up(self, exc):
        waiting, self._waiting = self._waiting, None
        self.reset()
        if waiting is not None:
            waiting.errback(exc)

    def _connected(self, connection: DataConnection):
        if self.state is not DataState.CONNECTING and self.state is not DataState.PASSIVE_LISTENING:
            # Too late: the wait timed out, or ABOR/PASV/PORT reset us.
            connection.transport.abortConnection()
            return
        self.connection = connection
        if self.state is DataState.CONNECTING:
            self._enter(DataState.TRANSFERRING)
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            waiting, self._waiting = self._waiting, None
            waiting.callback(connection)
        else:
            self._enter(DataState.PASSIVE_CONNECTED)

    def _lost_unused(self, connection: DataConnection):
        """A data connection closed before any transfer used it."""
        if self.connection is connection:
            self.connection = None
            if self.state is DataState.PASSIVE_CONNECTED:
                self._enter(DataState.IDLE)

    def _lost_before_tls(self, connection: DataConnection):
        """
        A PROT P data connection (RFC 4217) closed before its TLS handshake
        ended: the client closed or reset it, or the handshake failed. Its
        listener has already stopped, so no other connection comes: a
        transfer waiting for it fails now (425, RFC 959 §4.2) instead of at
        the data timeout with "not made in time", and an idle channel needs
        a new PASV/EPSV/PORT, as after a plain one closed before its
        transfer (L{_lost_unused}). One that is no longer the channel's
        L{pending} connection (a later PASV, PORT or ABOR reset it) is no
        concern of the present transfer.
        """
        if self.pending is not connection:
            return
        self.pending = None
        if self.state is DataState.CONNECTING:
            log.info("ftp data connection closed before its TLS handshake finished")
            self._give_up(TransferFailed("the data connection closed before its TLS handshake finished"))
        elif self.state is DataState.PASSIVE_LISTENING:
            self._enter(DataState.IDLE)

    def _stop_listening(self):
        port, self._port = self._port, None
        if port is not None:
            port.close()

    # -- tear down -------------------------------------------------------------

    def finished(self):
        """The transfer is over (either way): back to IDLE."""
        self.connection = None
        self._enter(DataState.IDLE)

    def abort(self) -> bool:
        """
        Abort what is under way; True if a transfer or connection was.
        """
        busy = self.state in (DataState.CONNECTING, DataState.TRANSFERRING)
        waiting, self._waiting = self._waiting, None
        connection = self.connection
        self.reset()
        if waiting is not None:
            waiting.errback(TransferAborted())
        if connection is not None:
            connection.abort()
        return busy

    def reset(self):
        self._stop_listening()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        connection, self.connection = self.connection, None
        if connection is not None and connection.done is None and connection.transport is not None:
            connection.transport.loseConnection()
        pending, self.pending = self.pending, None
        if pending is not None and pending.transport is not None:
            pending.transport.abortConnection()  # its handshake would be for nothing
        self._address = None
        self._enter(DataState.IDLE)
