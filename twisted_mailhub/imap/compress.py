# -*- test-case-name: tests.test_e2e_imap_compress -*-
"""
COMPRESS=DEFLATE (RFC 4978): the IMAP connection compressed both ways.

Rules:

 - COMPRESS DEFLATE is taken after login (authenticated or selected
   state). Its tagged OK is the last thing sent in the clear; every octet
   after it, both ways, is a raw DEFLATE stream (RFC 1951: no zlib header,
   C{wbits=-15}). Whatever the client pipelined after the COMPRESS line is
   already compressed and is inflated before it is read.
 - The server ends each burst of output with a sync flush (C{Z_SYNC_FLUSH},
   RFC 4978 §4): a burst is everything written in one turn of the reactor,
   or 64 KiB, whichever comes first, so a long FETCH streams as it is
   made and an untagged update during IDLE reaches the client at once.
 - A second COMPRESS is refused with C{NO [COMPRESSIONACTIVE]} (RFC 5530
   §3); another mechanism than DEFLATE is C{BAD}.
 - TLS (STARTTLS, before login) stays below: the compression layer sits
   between TLS and the session (the transcript keeps seeing plain lines).
 - Inflating is bounded: input is inflated in steps of C{STEP} octets and
   not at all while the session has paused reading, so a small compressed
   packet cannot become an unbounded buffer. A stream that does not
   inflate ends the connection with C{* BYE}.

Theory of operation: L{start_compression} puts a L{DeflateLayer} under the
outermost protocol of the connection (the transcript wrapper, or the
session itself), the way Twisted's C{startTLS} puts its TLS protocol in:
the connection delivers to the layer, which inflates and passes on; the
protocol writes to the layer, which deflates and writes on.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import directlyProvides, providedBy

log = Logger()

CAPABILITIES = (b"COMPRESS=DEFLATE",)
STEP = 64 * 1024  # octets inflated at a time, and output deflated before a flush


class DeflateLayer(policies.ProtocolWrapper):
    """
    Raw DEFLATE between a connection (C{transport}: TCP, or TLS over it)
    and the protocol above it (C{wrappedProtocol}).

    @ivar octets_in: compressed octets received.
    @ivar octets_out: compressed octets sent.
    """

    def __init__(self, wrapped: Any, transport: Any, clock: IReactorTime):
        # Not ProtocolWrapper.__init__: no factory keeps count of these.
        self.wrappedProtocol = wrapped
        self.transport = transport
        self.clock = clock
        self.connected = True
        self.disconnecting = False
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        self._unflushed = 0
        self._flush_call: Any = None
        self._pending = b""  # compressed input not yet inflated (while paused)
        self._paused = False
        self._broken = False
        self.octets_in = 0
        self.octets_out = 0
        directlyProvides(self, providedBy(transport))

    def logPrefix(self) -> str:
        return "deflate"

    # -- output -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data or self._broken:
            return
        out = self._deflate.compress(data)
        self._unflushed += len(data)
        if out:
            self._send(out)
        if self._unflushed >= STEP:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def flush(self) -> None:
        """End the burst: everything written so far reaches the client (Z_SYNC_FLUSH)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._unflushed and not self._broken:
            self._unflushed = 0
            self._send(self._deflate.flush(zlib.Z_SYNC_FLUSH))

    def _send(self, out: bytes) -> None:
        self.octets_out += len(out)
        self.transport.write(out)

    def loseConnection(self) -> None:
        self.flush()
        self.disconnecting = True
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.octets_in += len(data)
        self._pending += data
        self._drain()

    def inflate(self, data: bytes) -> bytes:
        """
        Inflate octets that arrived before the layer was in (pipelined after
        COMPRESS); the rest of them waits for the next read.
        """
        self.octets_in += len(data)
        self._pending += data
        plain = self._inflate_step()
        if self._pending:
            self.clock.callLater(0, self._drain)
        return plain

    def _inflate_step(self) -> bytes:
        if self._broken or not self._pending:
            return b""
        try:
            plain = self._inflate.decompress(self._pending, STEP)
        except zlib.error as e:
            self._corrupt(e)
            return b""
        self._pending = self._inflate.unconsumed_tail
        return plain

    def _drain(self) -> None:
        while self._pending and not self._paused and not self._broken:
            plain = self._inflate_step()
            if plain:
                # (without output zlib has taken all the input: the loop ends)
                self.wrappedProtocol.dataReceived(plain)

    def _corrupt(self, error: Exception) -> None:
        self._broken = True
        self._pending = b""
        log.info("COMPRESS: the client's DEFLATE stream is corrupt ({error}); closing", error=str(error))
        # The BYE itself can only be sent compressed: that is the stream the client reads.
        try:
            self.transport.write(self._deflate.compress(b"* BYE compressed stream is corrupt\r\n") + self._deflate.flush(zlib.Z_SYNC_FLUSH))
        except zlib.error:
            pass
        self.transport.loseConnection()

    # -- flow control: the session pausing its reading pauses inflating too --------

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()
        self._drain()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        self.connected = False
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self.wrappedProtocol.connectionLost(reason)

    def readConnectionLost(self) -> None:
        handler = getattr(self.wrappedProtocol, "readConnectionLost", None)
        if handler is not None:
            handler()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        handler = getattr(self.wrappedProtocol, "writeConnectionLost", None)
        if handler is not None:
            handler()


def outermost_protocol(session: Any) -> Any:
    """
    The protocol the connection delivers to, for C{session}: the session
    itself, or the wrappers above it (the transcript), but never TLS.
    """
    top = session
    while isinstance(top.transport, policies.ProtocolWrapper) and not isinstance(top.transport, (TLSMemoryBIOProtocol, DeflateLayer)):
        top = top.transport
    return top


def start_compression(session: Any, clock: IReactorTime) -> DeflateLayer:
    """
    Put a L{DeflateLayer} under C{session}'s connection: from now on the
    protocols above it read and write plain octets, the wire carries DEFLATE.
    Call it right after the tagged OK of COMPRESS has been written.
    """
    top = outermost_protocol(session)
    below = top.transport
    layer = DeflateLayer(top, below, clock)
    # The connection below now delivers to the layer: a TCP transport through
    # .protocol, or TLS (implicit, or started with STARTTLS) through its
    # .wrappedProtocol.
    if isinstance(below, TLSMemoryBIOProtocol):
        below.wrappedProtocol = layer
    elif getattr(below, "protocol", None) is top:
        below.protocol = layer
    elif isinstance(getattr(below, "protocol", None), TLSMemoryBIOProtocol) and below.protocol.wrappedProtocol is top:
        below.protocol.wrappedProtocol = layer
    # else: a test transport that is fed by hand (it calls the layer).
    top.transport = layer
    return layer


class CompressCommands:
    """COMPRESS, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    compression: DeflateLayer | None = None

    def do_COMPRESS(self, tag, mechanism):
        if self.compression is not None:
            # RFC 4978 §3, RFC 5530 §3
            self.sendNegativeResponse(tag, b"[COMPRESSIONACTIVE] DEFLATE is already active on this connection")
            return
        if mechanism.upper() != b"DEFLATE":
            self.sendBadResponse(tag, b"COMPRESS knows only DEFLATE (RFC 4978)")
            return
        self.sendPositiveResponse(tag, b"DEFLATE active")
        # What the client pipelined after COMPRESS is compressed already.
        pipelined = self.clearLineBuffer()
        self.compression = start_compression(self, self.hub.reactor)
        if pipelined:
            self.dataReceived(self.compression.inflate(pipelined))

    auth_COMPRESS = select_COMPRESS = (do_COMPRESS, imap4.IMAP4Server.arg_atom)
