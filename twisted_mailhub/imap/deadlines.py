# -*- test-case-name: tests.test_imap_deadlines -*-
"""
IMAP time limits (issue 8 item 26, the kind SMTP, POP3 and FTP have from
L{twisted_mailhub.lines}): how long a client may hold a connection without
doing what a session is for.

 =============  ==========================================================
 limit          rule
 =============  ==========================================================
 login          C{--imap-login-timeout} seconds after the greeting, a
                session still not authenticated gets C{* BYE} and is
                closed, however busy it keeps the line (a NOOP every
                minute would otherwise hold a connection for ever).
 command line   one command line must arrive within
                C{--imap-command-timeout} seconds of its first octet (a
                client trickling a byte at a time); the octets of a
                literal do not count while they flow (RFC 3501 §4.3: an
                APPEND of a big message may take long), the line around
                it starts again after the literal.
 literal        the octets of a literal must all arrive within
                C{--imap-command-timeout} seconds or one second per
                L{LITERAL_RATE} octets of its size, whichever is longer
                (counted from the moment the hub waits for them: its
                C{+}, or a LITERAL+'s line): a client trickling an
                APPEND an octet at a time gets C{* BYE} and is closed
                instead of holding the connection for ever, while a
                25 MiB message on a 32 kbit/s link still fits.
 idle           no complete command for 60 seconds before login
                (Twisted's C{timeOut}) or C{--imap-idle-timeout} seconds
                after it (C{POSTAUTH_TIMEOUT}; RFC 3501 §5.4: at least 30
                minutes); Twisted's L{TimeoutMixin} keeps it.
 =============  ==========================================================

Time comes from the hub's reactor (C{hub.reactor}), so a
L{twisted.internet.task.Clock} drives every limit in the tests. The server
keeps one L{SessionDeadlines} per connection (C{server.deadlines}), an
object of its own rather than a base class, so that the server's list of
command mixins stays the extensions' business.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from twisted_mailhub.lines import MIN_TRANSFER_RATE

log = Logger()

LOGIN_TIMEOUT = 300.0
COMMAND_TIMEOUT = 120.0
IDLE_TIMEOUT = 1800.0
#: The slowest a literal's octets may flow once its time is over the
#: command-line limit, in octets per second (4 KiB/s: 32 kbit/s).
LITERAL_RATE = MIN_TRANSFER_RATE

option_parameters = [
    ["imap-login-timeout", None, LOGIN_TIMEOUT, "Seconds an IMAP client may take, in all, to log in.", float],
    ["imap-command-timeout", None, COMMAND_TIMEOUT, "Seconds an IMAP client may take to send one command line (a literal's octets excepted while they flow).", float],
    ["imap-idle-timeout", None, IDLE_TIMEOUT, "Seconds a logged-in IMAP client may stay silent (RFC 3501 §5.4: at least 1800).", float],
]


def check_options(options: Any) -> None:
    """Each limit is a positive number of seconds; raise C{usage.UsageError} otherwise."""
    from twisted.python import usage

    for row in option_parameters:
        if float(options.get(row[0]) or 0) <= 0:
            raise usage.UsageError(f"--{row[0]} must be a positive number of seconds")


class SessionDeadlines:
    """
    The time limits of one IMAP connection (C{server}, an
    L{twisted_mailhub.imap.server.IMAPServer}): it calls L{start} once
    connected, L{data_arriving} before and L{data_handled} after each
    chunk it frames, and L{stop} when the connection is gone. The idle
    limits are Twisted's (C{timeOut}, C{POSTAUTH_TIMEOUT}), set here from
    the options.
    """

    def __init__(self, server: Any):
        self.server = server
        options = getattr(server.hub, "options", None) or {}
        self.login_timeout = float(options.get("imap-login-timeout") or LOGIN_TIMEOUT)
        self.command_timeout = float(options.get("imap-command-timeout") or COMMAND_TIMEOUT)
        server.POSTAUTH_TIMEOUT = float(options.get("imap-idle-timeout") or IDLE_TIMEOUT)
        self.clock = server.hub.reactor
        self.closed = False
        self._login_call: Any = None
        self._line_started: float | None = None
        # While a literal's octets flow: the timer for its deadline.
        self._literal_call: Any = None

    def literal_deadline(self, size: int) -> float:
        """Seconds a literal of C{size} octets may take to arrive (see the module's table)."""
        return max(self.command_timeout, size / LITERAL_RATE)

    def start(self) -> None:
        """The greeting is out: the login deadline runs."""
        self._login_call = self.clock.callLater(self.login_timeout, self._login_expired)

    def stop(self) -> None:
        """The connection is gone: no timer stays behind."""
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None
        self.literal_done()

    def literal_done(self) -> None:
        """Line mode again: no literal deadline runs."""
        if self._literal_call is not None and self._literal_call.active():
            self._literal_call.cancel()
        self._literal_call = None

    def literal_started(self) -> None:
        """Raw mode began (the server's C{_pendingLiteral} is set): the literal's deadline runs from now."""
        self.literal_done()
        if self.closed:
            return
        pending = self.server._pendingLiteral
        size = getattr(pending, "size", None)
        if size is None:
            size = getattr(pending, "left", 0)  # (a refused LITERAL+'s octets, skipped)
        size = max(0, size)
        seconds = self.literal_deadline(size)
        self._literal_call = self.clock.callLater(seconds, self._literal_expired, size, seconds)

    def _literal_expired(self, size: int, seconds: float) -> None:
        self._literal_call = None
        server = self.server
        if self.closed or server.line_mode or server.transport is None or server.transport.disconnecting:
            return
        self._close_for(b"a literal of %d octets took over %g seconds to arrive" % (size, seconds), "literal")

    def _login_expired(self) -> None:
        self._login_call = None
        server = self.server
        if server.state == "unauth" and server.transport is not None and not server.transport.disconnecting:
            self._close_for(b"not logged in after %g seconds" % self.login_timeout, "login")

    def _close_for(self, why: bytes, kind: str) -> None:
        server = self.server
        log.info("{cid}: {kind} time limit passed, closing", cid=getattr(server, "connection_id", "imap"), kind=kind)
        self.closed = True
        server.setTimeout(None)
        server.sendLine(b"* BYE " + why + b"; closing the connection")
        server.transport.loseConnection()

    def data_arriving(self, data: bytes) -> bool:
        """
        Octets arrived: False (and the connection closing) when the command
        line they continue has taken too long; True to handle them.
        """
        if self.closed:
            return False
        server = self.server
        if server.line_mode and self._line_started is not None and self.clock.seconds() - self._line_started > self.command_timeout:
            self._close_for(b"a command line took over %g seconds to arrive" % self.command_timeout, "command line")
            return False
        return True

    def data_handled(self, data: bytes) -> None:
        """
        After framing: what is left unframed is the start of the next line;
        a line that just ended (or a literal that just ended) starts its
        clock anew; while a literal flows, no line clock runs.
        """
        if self.closed:
            return
        server = self.server
        buffer = server._buffer if server.line_mode else b""
        tail = buffer[buffer.rfind(b"\n") + 1 :] if buffer else b""
        if not tail:
            self._line_started = None
        elif b"\n" in data or self._line_started is None:
            self._line_started = self.clock.seconds()
