# -*- test-case-name: tests.test_lines -*-
"""
The line engine: how the hub's line protocols (SMTP, POP3, FTP) read
commands, in one place.

Each protocol owns a L{LineEngine}, feeds it what the transport delivers and
answers the lines it is handed; everything about I{getting} lines is here:

 ====================  =====================================================
 rule                  what the engine does
 ====================  =====================================================
 framing               A line ends at LF; a CR before it is dropped and
                       remembered (L{LineEngine.crlf}), so CRLF clients and
                       people typing in nc both work. Lines are cut out of
                       one buffer by index: a packet of many pipelined
                       commands is not copied once per command.
 over-long lines       A line longer than C{max_line} octets is dropped as
                       it arrives (never buffered whole) and answered once,
                       in its turn, by C{owner.line_too_long()}; the session
                       goes on with the next line.
 order                 One line at a time. A handler that returns a
                       L{Deferred} holds back every later line until it
                       fires, so pipelined commands are answered in the
                       order they were sent (RFC 2920, RFC 2449).
 urgent lines          With C{urgent(line)} given (FTP: ABOR, STAT, QUIT,
                       RFC 959 §4.1.3), such a line is handled at once even
                       while an earlier command waits.
 raw input             L{LineEngine.start_raw} hands all input to a handler
                       instead of framing it (SMTP DATA) until the handler
                       says where its part ended.
 handler errors        An exception, or a failed Deferred, is answered by
                       C{owner.command_failed()} and logged once with its
                       traceback, unless the owner knew it (a full disk:
                       one line of its own); the session goes on.
 back-pressure         The engine is the transport's streaming producer:
                       while the client does not read its replies, no
                       further line is handled; while lines wait (behind a
                       slow command or an unread reply) past C{max_held}
                       octets, the transport stops reading.
 half-close            When the client shuts down its sending side
                       (C{printf ... | nc -N}), an unfinished last line
                       counts as a line, every line is answered, then
                       C{owner.input_ended()} (default: close).
 timeouts              idle: no input at all for C{idle_timeout} seconds;
                       line: one line took longer than C{line_timeout} to
                       arrive (a client trickling a byte at a time); login:
                       C{login_timeout} seconds after the start without
                       L{LineEngine.logged_in}; raw: raw input took longer
                       than its own limit. Each calls
                       C{owner.timed_out(kind)}, which answers and closes.
 replies               L{LineEngine.write} sends a reply at once (one
                       C{send}, no reactor turn) when nothing waits before
                       it on a plain TCP connection; replies to pipelined
                       lines are gathered and sent together when the
                       batch is done (L{send_now}, L{flush_now}). With
                       C{gather=True} (an owner that writes only through
                       the engine) they are gathered in the engine and
                       leave in one L{send_now}, without a pass through
                       the transport's buffer and its two C{epoll_ctl}.
 discarding            L{LineEngine.discard_pending} drops what is buffered
                       (after STARTTLS, STLS, AUTH TLS: CVE-2011-0411).
 quoting               L{quote} is how any reply shows the client's input:
                       control characters visible (C{^H}), never raw;
                       L{control_note} says that the line had one.
 ====================  =====================================================

What the owner provides: C{line_received(line: bytes)} returning L{None} or
a L{Deferred}; C{line_too_long()}; C{command_failed(failure)} (returning
True for a failure it answered and logged itself, e.g. a full disk: then no
traceback is logged);
C{timed_out(kind: str)}; optionally C{input_ended()} and
C{output_resumed()} (called when a client that stopped reading reads
again). The owner declares L{IHalfCloseableProtocol} and passes
C{readConnectionLost}/C{writeConnectionLost} on.
"""

from __future__ import annotations

import _socket
import collections
import re
from typing import Any, Callable

from twisted.internet import abstract, defer, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

# A Telnet command (RFC 854): IAC IAC (a data octet 255), an option's
# negotiation IAC WILL/WONT/DO/DONT OPTION, a subnegotiation IAC SB ...
# IAC SE, or one of the other commands IAC SE..GA (240-249: IP and DM,
# which ftplib and curl send before ABOR; AYT, EC...). An IAC before any
# other octet is no Telnet command and stays, with that octet, as data: a
# name in Latin-1 whose 255 ("y" with diaeresis) comes from a client that
# does not double it loses no letter ("MKD x\xffa" made "/x").
_TELNET_COMMAND = re.compile(rb"\xff(?:\xff|[\xfb-\xfe].?|\xfa.*?\xff\xf0|[\xf0-\xf9])", re.S)


def telnet_text(line: bytes) -> bytes:
    """
    A command line without its Telnet commands (RFC 854): what a
    C{telnet} client adds when the student presses Ctrl-C (IAC IP, IAC DO
    TIMING-MARK) or an FTP client sends before ABOR (IAC IP IAC DM) is not
    part of the command, and a doubled IAC is one octet 255 (RFC 2640
    §3.1). FTP's control connection is Telnet (RFC 959 §4), so its
    commands go wherever they are; SMTP, POP3 and IMAP command lines, and
    the base64 lines of their SASL exchanges, lose only the ones in front
    (L{telnet_prefix_text}). Never for message text (SMTP DATA, BDAT) or an
    IMAP literal, where octet 255 is data.
    """
    if line.find(b"\xff") < 0:
        return line
    return _TELNET_COMMAND.sub(lambda m: b"\xff" if m.group() == b"\xff\xff" else b"", line)


def telnet_prefix_text(line: bytes) -> bytes:
    """
    A SMTP, POP3 or IMAP command line (or SASL response line) without the
    Telnet commands in front of it: what a C{telnet} client sends when the
    student presses Ctrl-C (IAC IP, IAC DO TIMING-MARK) comes before the
    next line's text. These protocols are not Telnet (FTP is: L{telnet_text});
    an IAC inside the line stays, so the line is refused as not ASCII or
    UTF-8 instead of losing octets: taken out there, C{USER al<IAC NOP>ice}
    logged in as alice and C{RCPT TO:<bo<IAC NOP>b@...>} went to bob, a
    name other software on the way (a filter, a proxy, a log) never saw.
    """
    while line[:1] == b"\xff" and line[1:2] != b"\xff":
        m = _TELNET_COMMAND.match(line)
        if m is None:
            break  # IAC before an octet that is no Telnet command: data (refused as not ASCII/UTF-8)
        line = line[m.end() :]
    return line


log = Logger()

#: The slowest a transfer of octets (an IMAP literal, a web request body,
#: an FTP upload) may flow on average once it has had its protocol's time
#: limit, in octets per second: 4 KiB/s, 32 kbit/s. Slower, it no longer
#: holds the connection (a client trickling an octet every few seconds).
MIN_TRANSFER_RATE = 4096.0

__all__ = ["LineEngine", "TOO_LONG", "quote", "control_note", "has_control", "send_now", "flush_now", "telnet_text", "telnet_prefix_text"]


class _TooLong:
    """The place of a line that was too long to keep."""

    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG = _TooLong()

# -- quoting the client's input ------------------------------------------------

# C0 controls, DEL, C1 controls, and bytes that were not UTF-8 (decoded
# with surrogateescape).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")

_NAMES = {
    0x00: "a NUL",
    0x07: "a bell",
    0x08: "a backspace",
    0x09: "a tab",
    0x0A: "a line feed",
    0x0D: "a carriage return",
    0x1B: "an escape",
    0x7F: "a delete",
}


def _show(m: re.Match) -> str:
    c = ord(m.group())
    if c < 0x20:
        return "^" + chr(c + 0x40)
    if c == 0x7F:
        return "^?"
    if c >= 0xDC80:
        return f"<{c - 0xDC00:02X}>"  # an octet that was not UTF-8
    return f"<U+{c:04X}>"


def _text(data: str | bytes) -> str:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data).decode("utf-8", "surrogateescape")
    return data


def quote(data: str | bytes, limit: int = 64, ascii: bool = False) -> str:
    """
    C{data} (what the client sent: bytes, or text decoded with
    C{surrogateescape}) as a reply may show it: control characters in caret
    notation (a backspace is C{^H}, DEL C{^?}), C1 controls as C{<U+0085>},
    octets that are not UTF-8 as C{<FF>}; with C{ascii=True} other non-ASCII
    characters become C{?} (for protocols whose replies are ASCII). At most
    C{limit} characters of the input are shown, then C{...}. Never raises.
    """
    text = _text(data)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    text = _CONTROL.sub(_show, text)
    if ascii:
        text = _NON_ASCII.sub("?", text)
    return text + "..." if cut else text


def has_control(data: str | bytes) -> bool:
    """Whether C{data} holds a control character (or an octet not UTF-8)."""
    return _CONTROL.search(_text(data)) is not None


def control_note(data: str | bytes) -> str:
    """
    C{""}, or a sentence to end a reply with when C{data} held a control
    character, naming the first one: C{" (the line contained a control
    character: ^H, a backspace)"}. Typed in telnet, a backspace reaches the
    server as a byte; the terminal then shows the line as corrected, and
    without this note a correct-looking address would be refused.
    """
    text = _text(data)
    m = _CONTROL.search(text)
    if m is None:
        return ""
    c = ord(m.group())
    if c >= 0xDC80:
        return f" (the line contained an octet that is not UTF-8: {_show(m)})"
    name = _NAMES.get(c)
    return f" (the line contained a control character: {_show(m)}{', ' + name if name else ''})"


# -- sending replies -----------------------------------------------------------
#
# Twisted's TCP transport keeps every write until the reactor's next turn
# finds the socket writable: a reply costs a poll, two epoll_ctl calls and
# the reactor's dispatch on top of its send(2). A line protocol answering
# one command per round trip (smtplib, a POP3 client) pays that on every
# command. Here a reply that nothing waits before goes out at once, in one
# send; what the socket does not take is left to the transport as before,
# so order, back-pressure and error handling stay Twisted's.


def _buffers_known() -> bool:
    """
    Whether this Twisted keeps a TCP connection's unsent output where
    L{send_now} and L{flush_now} look: C{dataBuffer}, C{offset},
    C{_tempDataBuffer} and C{_writeDisconnecting} of
    L{twisted.internet.abstract.FileDescriptor} (Twisted 22 to 25). Some
    are private: if a later Twisted moves them, replies take the
    transport's ordinary C{write} instead of failing.
    """
    fd = abstract.FileDescriptor
    return all(hasattr(fd, name) for name in ("dataBuffer", "offset", "_writeDisconnecting", "doWrite")) and (
        "_tempDataBuffer" in fd.__init__.__code__.co_names
    )


_BUFFERS_KNOWN = _buffers_known()

# The octet counts of each socket class that counts what it moves
# (L{twisted_mailhub.metrics.count_socket} gives a connection's socket such
# a class, whose C{send} and C{recv} add to its counts): a hot path that
# sends or reads itself (a reply sent inline by L{LineEngine.write}, a read
# of the hub's epoll dispatch) uses the socket's own C{RAW_SEND}/C{RAW_RECV}
# and adds to the counts there, a Python call less per system call (eight
# a message sent one command per round trip). C{SOCKET_COUNTS.get(cls)}:
# L{None} for a class that does not count.
SOCKET_COUNTS: dict[type, Any] = {}
RAW_SEND = _socket.socket.send
RAW_RECV = _socket.socket.recv


def _plain_tcp(transport: Any) -> Any:
    """C{transport} if it is a TCP connection without TLS, else L{None}."""
    if _BUFFERS_KNOWN and isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport
    return None


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} (bytes) to C{transport}, sending it now when the
    connection is plain TCP and nothing written before is still waiting:
    one C{send(2)}, no reactor turn. A wrapper that records what is sent
    (the session transcript) is passed through by its own C{send_now};
    TLS, test transports and anything else get C{transport.write(data)}.
    Never raises for a connection that failed: the transport reports
    that, as it does for any write.
    """
    while isinstance(transport, ProtocolWrapper):
        own = getattr(transport, "send_now", None)
        if own is not None:
            return own(data)
        if type(transport).write is not ProtocolWrapper.write:
            break  # a wrapper that changes the bytes (TLS): its own write
        transport = transport.transport
    conn = transport
    if (
        # _plain_tcp, inline: this runs once per reply.
        _BUFFERS_KNOWN
        and isinstance(conn, tcp.Connection)
        and not conn.TLS
        and data
        and conn.connected
        and not conn.disconnecting
        and not conn._writeDisconnecting
        and not conn._tempDataBuffer
        and conn.offset >= len(conn.dataBuffer)
    ):
        try:
            sent = conn.socket.send(data)
        except OSError:
            sent = 0  # full, or broken: the transport's write finds out which
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


def flush_now(transport: Any) -> None:
    """
    Send what is waiting in C{transport}'s buffer now, if it is (or wraps)
    a plain TCP connection that is not closing, instead of on the
    reactor's next turn: replies to a batch of pipelined commands leave in
    one C{send(2)} when the batch is done. Anything the socket does not
    take stays for the reactor.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    conn = transport
    if (
        # Nothing waiting (the common case) is found first.
        _BUFFERS_KNOWN
        and isinstance(conn, tcp.Connection)
        and (conn._tempDataBuffer or conn.offset < len(conn.dataBuffer))
        and not conn.TLS
        and conn.connected
        and not conn.disconnecting
        and not conn._writeDisconnecting
    ):
        # An error is left in place: the connection stays registered for
        # writing, and the reactor's own doWrite reports it as usual.
        conn.doWrite()


# -- the engine ------------------------------------------------------------------

# _in_loop while data_received's shortcut handles the one line at hand
# (true, as while _run handles lines).
_ONE_LINE = "one line"

# gather=True: replies of a batch are sent without waiting for its end
# once they hold more than this many octets.
_GATHER_OCTETS = 64 * 1024


@implementer(IPushProducer)
class LineEngine:
    """
    Reads command lines for one connection's C{owner} (see the module's
    table of rules). C{clock} is the reactor (L{task.Clock} in tests);
    times are in seconds, L{None} or 0 for no limit; sizes in octets.
    """

    # One per connection: slots keep an idle connection small.
    __slots__ = (
        "owner", "clock", "max_line", "max_held", "idle_timeout", "line_timeout", "urgent", "transport",
        "crlf", "busy", "writing_paused", "closed", "input_ended", "_buf", "_pos", "_held", "_discarding",
        "_raw", "_raw_started", "_raw_timeout", "_line_started", "_last_input", "_idle_call", "_login_at",
        "_reading_paused", "_in_loop", "_batch_more", "_gathered", "_sink",
        "_gathered_octets", "_plain",
    )

    def __init__(
        self,
        owner: Any,
        clock: Any,
        *,
        max_line: int = 4096,
        max_held: int = 256 * 1024,
        idle_timeout: float | None = None,
        line_timeout: float | None = None,
        urgent: Callable[[bytes], bool] | None = None,
        gather: bool = False,
    ):
        self.owner = owner
        self.clock = clock
        self.max_line = max_line
        self.max_held = max_held
        self.idle_timeout = idle_timeout
        self.line_timeout = line_timeout
        self.urgent = urgent
        self.transport: Any = None
        #: Whether the line being handled ended in CRLF (L{None}: no line yet).
        self.crlf: bool | None = None
        #: Set while a handler's Deferred has not fired.
        self.busy = False
        #: Set while the client does not read (the transport paused us).
        self.writing_paused = False
        self.closed = False
        self.input_ended = False
        # Unhandled input is _buf[_pos:].
        self._buf = b""
        self._pos = 0
        # Lines framed early (urgent mode): a deque once there is one.
        self._held: Any = ()
        self._discarding = False
        self._raw: Callable | None = None
        self._raw_started = 0.0
        self._raw_timeout: float | None = None
        self._line_started: float | None = None
        self._last_input = 0.0
        # The engine's one timer (a DelayedCall), set for the earlier of
        # the idle and the login deadline (_login_at, a clock time; None
        # once logged in): one per connection, not two, and nothing to
        # cancel at login.
        self._idle_call: Any = None
        self._login_at: float | None = None
        self._reading_paused = False
        self._in_loop = False
        # While handling a line that has complete lines after it (pipelined).
        self._batch_more = False
        # gather=True: replies to a pipelined batch, sent when it is done.
        # Only for an owner whose every write goes through L{write} (and
        # that calls L{discard_pending} before starting TLS): a write
        # straight to the transport would overtake them.
        self._gathered: list[bytes] | None = [] if gather else None
        # Where the gathered replies go: the transport the writes named
        # (L{write}'s C{transport}), L{None} for the engine's own.
        self._sink: Any = None
        self._gathered_octets = 0
        # The transport when it is a plain TCP connection itself (no
        # wrapper; see _plain_tcp): a reply to it is sent inline (write).
        self._plain: Any = None

    # -- the connection ----------------------------------------------------------

    def start(self, transport: Any, login_timeout: float | None = None) -> None:
        """
        Call from C{connectionMade}: become the transport's producer and
        start the idle and login timers.
        """
        self.transport = transport
        self._plain = _plain_tcp(transport)
        transport.registerProducer(self, True)
        now = self._last_input = self.clock.seconds()
        if login_timeout:
            self._login_at = now + login_timeout
        self._set_timer(now)

    def _set_timer(self, now: float) -> None:
        """Set the timer for the earlier of the idle and login deadlines (if any)."""
        when = self._last_input + self.idle_timeout if self.idle_timeout else None
        login_at = self._login_at
        if login_at is not None and (when is None or login_at < when):
            when = login_at
        if when is not None:
            self._idle_call = self.clock.callLater(max(0.0, when - now), self._idle_check)

    def logged_in(self) -> None:
        """The session has logged in: the login deadline no longer applies."""
        self._login_at = None  # (the timer, if set for it, finds it gone)

    def set_idle_timeout(self, seconds: float | None) -> None:
        """A new idle limit, counted from the last input."""
        self.idle_timeout = seconds
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if not self.closed and self.transport is not None:
            self._set_timer(self.clock.seconds())

    def touch(self) -> None:
        """Count now as activity (a data transfer in progress, say)."""
        self._last_input = self.clock.seconds()

    def stop(self) -> None:
        """
        No more input will be handled and no timer runs; the transport is
        left to the caller. Called by L{close} and on C{connectionLost}.
        """
        if self.closed:
            return
        self.closed = True
        self._buf, self._pos = b"", 0
        if self._gathered:
            self._gathered.clear()
        self._held = ()
        self._raw = None
        call = self._idle_call
        if call is not None and call.active():
            call.cancel()
        self._idle_call = self._login_at = None
        if self.transport is not None:
            try:
                self.transport.unregisterProducer()
            except Exception:  # a transport already gone
                pass

    def close(self) -> None:
        """Stop, and close the connection once what was written is sent."""
        self._send_gathered()
        self.stop()
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Stop, and drop the connection now (a client that does not read)."""
        self.stop()
        if self.transport is not None:
            self.transport.abortConnection()

    def connection_lost(self) -> None:
        self.stop()

    def read_connection_lost(self) -> None:
        """
        The client shut down its sending side: an unfinished last line is
        taken as a line, everything is answered, then the owner is told.
        """
        self.input_ended = True
        if self._raw is None and not self._discarding and self._pos < len(self._buf):
            self._buf += b"\r\n" if self.crlf else b"\n"
        self._run()

    def write_connection_lost(self) -> None:
        self.close()

    def write(self, data: bytes, transport: Any = None) -> None:
        """
        Send a reply (bytes). The reply to the last line at hand leaves at
        once (L{send_now}); replies to pipelined lines with more behind
        them wait in the transport and leave together, in one send, when
        the batch is done. C{transport}: the one to write to instead of
        the engine's (one that a wrapper of it writes to, when the wrapper
        has already seen the reply: the session transcript).
        """
        gathered = self._gathered
        in_loop = self._in_loop
        if gathered is not None and in_loop:
            if in_loop is not _ONE_LINE or gathered:
                # Out when the batch is done (the end of _run), in one send,
                # to one transport: a write to another sends what came first.
                if transport is not self._sink:
                    if gathered:
                        self._send_gathered()
                    self._sink = transport
                gathered.append(data)
                held = self._gathered_octets = self._gathered_octets + len(data)
                if held > _GATHER_OCTETS:
                    # Sent now, so that a client that does not read pauses the
                    # batch (back-pressure) before much is held here.
                    self._send_gathered()
                return
            # The reply to the one line at hand (data_received's shortcut):
            # it leaves now, as the end of the batch would send it, without
            # being gathered first.
            if self.closed:
                return
        else:
            if transport is None:
                if self.transport is None:  # before start(): the greeting
                    transport = self.owner.transport
            elif gathered:
                self._send_gathered()  # what was gathered leaves first
            if self._batch_more and in_loop:
                (transport if transport is not None else self.transport).write(data)
                return
            if self._gathered:
                self._send_gathered()
        conn = self._plain
        if (
            # send_now, inline for a plain TCP transport (four replies a
            # message sent one command per round trip): the same checks.
            conn is not None
            and (transport is None or transport is conn)
            and not conn.TLS
            and data
            and conn.connected
            and not conn.disconnecting
            and not conn._writeDisconnecting
            and not conn._tempDataBuffer
            and conn.offset >= len(conn.dataBuffer)
        ):
            sock = conn.socket
            counts = SOCKET_COUNTS.get(sock.__class__)
            try:
                if counts is None:
                    sent = sock.send(data)
                else:
                    sent = RAW_SEND(sock, data)
                    counts.sent += sent
            except OSError:
                sent = 0  # full, or broken: the transport's write finds out which
            if sent < len(data):
                conn.write(data[sent:])
            return
        send_now(transport if transport is not None else self.transport, data)

    def _send_gathered(self) -> None:
        """Send the replies gathered from a pipelined batch, in one piece."""
        gathered = self._gathered
        self._gathered_octets = 0
        if gathered and self.transport is not None and not self.closed:
            data = gathered[0] if len(gathered) == 1 else b"".join(gathered)
            gathered.clear()
            send_now(self._sink or self.transport, data)
        elif gathered:
            gathered.clear()

    def flush(self) -> None:
        """
        Send the replies gathered so far now (C{gather=True}): for an owner
        about to write to the transport itself (a large message streamed
        as the client reads it), so that nothing overtakes them.
        """
        if self._gathered:
            self._send_gathered()

    def discard_pending(self) -> int:
        """
        Drop every buffered line not yet handled (RFC 3207 §4.2, RFC 2595 §4,
        RFC 4217 §15.2: input that came with a STARTTLS must not be run
        inside TLS). Returns how many lines (a partial one too) were dropped.
        """
        # What was answered before leaves first (in the clear, before TLS).
        self._send_gathered()
        rest = self._buf[self._pos :]
        dropped = rest.count(b"\n") + (1 if rest[-1:] not in (b"", b"\n") else 0) + len(self._held)
        self._buf, self._pos = b"", 0
        self._held = ()
        self._discarding = False
        self._line_started = None
        return dropped

    def start_raw(self, handler: Callable[[Any], Any], timeout: float | None = None) -> None:
        """
        From now on, hand input to C{handler(data)} instead of framing it;
        C{data} is bytes or a memoryview valid only during the call. The
        handler returns L{None} while it wants more, or C{(rest, result)}
        when its part has ended: C{rest} (bytes after it) is framed as lines
        again, and C{result} (L{None} or a L{Deferred}) counts as a line
        handler's result. C{timeout}: seconds the raw part may take in all.
        """
        self._raw = handler
        self._raw_timeout = timeout
        self._raw_started = self.clock.seconds()

    # -- input ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Take what the transport delivered, and handle what can be."""
        if self.closed:
            return
        now = self._last_input = self.clock.seconds()
        if self._raw is not None:
            if self._raw_timeout and now - self._raw_started > self._raw_timeout:
                return self.owner.timed_out("raw")
        elif self._line_started is not None and self.line_timeout and now - self._line_started > self.line_timeout:
            return self.owner.timed_out("line")
        if (
            not self._buf
            and 0 <= data.find(b"\n") == len(data) - 1
            and len(data) <= self.max_line + 1
            and not (self.busy or self.writing_paused or self._in_loop or self._held or self._discarding or self._raw is not None)
        ):
            # The common case, one whole command line with nothing before
            # it: handled as _run would, without its loop.
            self._line_started = None
            crlf = self.crlf = data[-2:-1] == b"\r"
            self._in_loop = _ONE_LINE
            try:
                result = self.owner.line_received(data[:-2] if crlf else data[:-1])
            except Exception:
                result = None
                self._failed(Failure())
            finally:
                self._in_loop = False
            if result is not None:
                self._result(result)
            gathered = self._gathered
            if gathered is not None and not (self.busy or self._reading_paused or self.input_ended):
                # What _after_run does in this case: what was gathered
                # leaves now (the reply was sent by write, usually); the
                # owner wrote nothing to the transport itself.
                if gathered:
                    self._send_gathered()
                return
            self._after_run()
            return
        if self._pos:
            self._buf, self._pos = self._buf[self._pos :], 0
        self._buf = self._buf + data if self._buf else data
        if self.busy and self.urgent is not None and self._raw is None:
            self._frame_early()
        self._run()
        if (
            not self._reading_paused
            and not self.closed
            and (self.busy or self.writing_paused)
            and len(self._buf) - self._pos + 256 * len(self._held) > self.max_held
        ):
            self._reading_paused = True
            self.transport.pauseProducing()

    def _next_line(self) -> Any:
        """
        The next complete line from the buffer (without its line end, and
        L{crlf} set), L{TOO_LONG}, or L{None} when none is complete.
        """
        buf, pos = self._buf, self._pos
        if self._discarding:
            i = buf.find(b"\n", pos)
            if i < 0:
                self._buf, self._pos = b"", 0
                return None
            self._discarding = False
            pos = self._pos = i + 1
        i = buf.find(b"\n", pos)
        if i < 0:
            if len(buf) - pos > self.max_line:
                # An endless line is dropped as it comes, never kept whole.
                self._buf, self._pos = b"", 0
                self._discarding = True
                self._line_started = None
                return TOO_LONG
            if self._line_started is None and pos < len(buf):
                self._line_started = self.clock.seconds()
            return None
        self._pos = i + 1
        self._line_started = None
        if i > pos and buf[i - 1] == 13:
            line = buf[pos : i - 1]
            self.crlf = True
        else:
            line = buf[pos:i]
            self.crlf = False
        if len(line) > self.max_line:
            return TOO_LONG
        return line

    def _frame_early(self) -> None:
        """While a command waits: frame complete lines, running urgent ones now."""
        while not self.closed:
            line = self._next_line()
            if line is None:
                break
            if line is not TOO_LONG and self.urgent(line):
                self._dispatch(line, urgent=True)
            else:
                if not self._held:
                    self._held = collections.deque()
                self._held.append((line, self.crlf))

    def _run(self) -> None:
        """Handle buffered input until it runs out or something must wait."""
        if self._in_loop:
            return
        self._in_loop = True
        gather = self._gathered is not None
        line_received = self.owner.line_received
        try:
            while not (self.busy or self.writing_paused or self.closed):
                if self._held:
                    line, self.crlf = self._held.popleft()
                elif self._raw is not None:
                    if self._pos >= len(self._buf):
                        break
                    buf, pos = self._buf, self._pos
                    self._buf, self._pos = b"", 0
                    ended = self._raw(memoryview(buf)[pos:] if pos else buf)
                    if ended is None:
                        continue
                    self._raw = None
                    rest, result = ended
                    if rest:
                        self._buf = rest + self._buf if self._buf else rest
                    self._result(result)
                    continue
                elif self._discarding:
                    line = self._next_line()
                    if line is None:
                        break
                else:
                    # The common case, inline: a complete line within limits.
                    buf, pos = self._buf, self._pos
                    i = buf.find(b"\n", pos)
                    if i < 0 and pos >= len(buf):
                        break  # all handled: nothing to frame
                    if i < 0 or i - pos > self.max_line:
                        line = self._next_line()
                        if line is None:
                            break
                    else:
                        self._pos = i + 1
                        self._line_started = None
                        if i > pos and buf[i - 1] == 13:
                            line = buf[pos : i - 1]
                            self.crlf = True
                        else:
                            line = buf[pos:i]
                            self.crlf = False
                if gather:
                    # Replies are gathered (write): no need to know
                    # whether more lines follow. A plain line is handed
                    # over here, as _dispatch would.
                    if line is not TOO_LONG:
                        try:
                            result = line_received(line)
                        except Exception:
                            self._failed(Failure())
                            continue
                        if result is not None:
                            self._result(result)
                        continue
                else:
                    self._batch_more = bool(self._held) or self._buf.find(b"\n", self._pos) >= 0
                self._dispatch(line)
        finally:
            self._in_loop = False
            self._batch_more = False
            if self._pos and self._pos >= len(self._buf):
                self._buf, self._pos = b"", 0
        self._after_run()

    def _after_run(self) -> None:
        """What follows a batch of lines: send, read again, end."""
        if self.transport is not None and not self.closed:
            # What this batch wrote leaves now, not on the next reactor turn.
            if self._gathered:
                self._send_gathered()
            else:
                transport = self.transport
                if transport is not self._plain or transport._tempDataBuffer or transport.offset < len(transport.dataBuffer):
                    flush_now(transport)  # (on a plain connection only when something waits)
        if self._reading_paused and not self.closed and len(self._buf) - self._pos <= self.max_held // 2:
            self._reading_paused = False
            self.transport.resumeProducing()
        if self.input_ended and not (self.busy or self.closed or self._held) and (
            self._raw is not None or self._pos >= len(self._buf)
        ):
            finished = getattr(self.owner, "input_ended", None)
            if finished is not None:
                finished()
            else:
                self.close()

    def _dispatch(self, line: Any, urgent: bool = False) -> None:
        try:
            if line is TOO_LONG:
                result = self.owner.line_too_long()
            else:
                result = self.owner.line_received(line)
        except Exception:
            self._failed(Failure())
            return
        if result is None:
            return
        if urgent:
            if isinstance(result, defer.Deferred):
                result.addErrback(self._failed)
            return
        self._result(result)

    def _result(self, result: Any) -> None:
        if isinstance(result, defer.Deferred):
            self.busy = True
            # One callback pair, not an errback then a both: one step less
            # of the Deferred's loop for every command that waits.
            result.addCallbacks(self._resume, self._failed_then_resume)

    def _failed(self, reason: Failure) -> None:
        # The owner answers first; a failure it knows (disk full...) it has
        # logged in one line itself, and returns True: no traceback then.
        known = False
        if not self.closed:
            try:
                known = bool(self.owner.command_failed(reason))
            except Exception:
                log.failure("{cid}: error answering a failed command", cid=getattr(self.owner, "connection_id", "?"))
        if not known:
            log.failure("{cid}: error handling a command", reason, cid=getattr(self.owner, "connection_id", "?"))

    def _failed_then_resume(self, reason: Failure) -> None:
        self._failed(reason)
        self._resume()

    def _resume(self, _: Any = None) -> None:
        self.busy = False
        if self.closed:
            return
        if not (self._buf or self._held or self._raw is not None or self._gathered or self._reading_paused or self.input_ended or self.writing_paused):
            # Nothing came while the command waited (a client that waits for
            # each reply): all _run would do is what it does after a batch.
            transport = self.transport
            if transport is not None and (transport is not self._plain or transport._tempDataBuffer or transport.offset < len(transport.dataBuffer)):
                flush_now(transport)  # (on a plain connection only when something waits)
            return
        self._run()

    # -- timers ----------------------------------------------------------------------

    def _idle_check(self) -> None:
        """The timer: the idle or the login deadline (the earlier first; idle on a tie) may have passed."""
        self._idle_call = None
        if self.closed:
            return
        now = self.clock.seconds()
        idle_at = self._last_input + self.idle_timeout if self.idle_timeout else None
        login_at = self._login_at
        if idle_at is not None and idle_at <= now and (login_at is None or idle_at <= login_at):
            self.owner.timed_out("idle")
            if not self.closed and self._idle_call is None and self.idle_timeout:
                # The owner chose to go on (a transfer is running, say):
                # asked again in idle_timeout (or at the login deadline).
                login_at = self._login_at
                when = now + self.idle_timeout
                if login_at is not None and login_at < when:
                    when = login_at
                self._idle_call = self.clock.callLater(max(0.0, when - now), self._idle_check)
            return
        if login_at is not None and login_at <= now:
            self._login_at = None
            self.owner.timed_out("login")
            if self.closed or self._idle_call is not None:
                return
        self._set_timer(now)

    # -- IPushProducer: the transport says whether the client reads ----------------

    def pauseProducing(self) -> None:
        self.writing_paused = True

    def resumeProducing(self) -> None:
        self.writing_paused = False
        if self.closed:
            return
        resumed = getattr(self.owner, "output_resumed", None)
        if resumed is not None:
            resumed()
        self._run()

    def stopProducing(self) -> None:
        self.stop()
