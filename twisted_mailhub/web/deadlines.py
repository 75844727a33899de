# -*- test-case-name: tests.test_web_deadlines -*-
"""
Web listener time limits (issue 8 item 26's kind for HTTP): a slowloris
client, one that trickles its headers or never finishes a body, is cut off
instead of holding a connection for ever.

Twisted's L{http.HTTPChannel} has one idle timer (C{timeOut}), reset by
every octet that arrives, so a byte every minute keeps a request open for
ever. Here, on top of it:

 =============  ==========================================================
 limit          rule
 =============  ==========================================================
 headers        The request line and every header field must arrive
                within C{--web-header-timeout} seconds of the request's
                first octet (20 s, as Apache's mod_reqtimeout).
 body           Once the headers are in, the body (Content-Length or
                chunked) must be complete within C{--web-body-timeout},
                or keep arriving at L{BODY_RATE} on average, checked
                each C{--web-body-timeout}.
 idle           C{--web-idle-timeout}: no octet at all, between requests
                or within one (Twisted's C{timeOut}).
 body size      A body over L{max_body} octets (Content-Length, or
                chunks adding up) gets C{413 Content Too Large} (RFC 9110
                §15.5.14) before more of it is read: Twisted keeps a body
                in a temporary file until the request is complete, so
                anyone, logged in or not, could fill the disk with one
                request.
 =============  ==========================================================

A client over a limit gets C{408 Request Timeout} (RFC 9110 §15.5.9) and
the connection is closed; one that does not even read that is dropped
after L{ABORT_AFTER} seconds. A WebSocket takes the connection over from
the channel once its upgrade request is complete, so none of these apply
to it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web import http, server

from twisted_mailhub.lines import MIN_TRANSFER_RATE

log = Logger()

HEADER_TIMEOUT = 20.0
BODY_TIMEOUT = 120.0
IDLE_TIMEOUT = 120.0
ABORT_AFTER = 15.0
MAX_BODY = 64 * 1024 * 1024

option_parameters = [
    ["web-header-timeout", None, HEADER_TIMEOUT, "Seconds a web client may take to send a request's line and header fields.", float],
    ["web-body-timeout", None, BODY_TIMEOUT, "Seconds a web client may take to send a request body, once its header fields are in.", float],
    ["web-idle-timeout", None, IDLE_TIMEOUT, "Seconds a web connection may stay silent (between requests, or within one).", float],
]


def check_options(options: Any) -> None:
    """Each limit is a positive number of seconds; raise C{usage.UsageError} otherwise."""
    from twisted.python import usage

    for row in option_parameters:
        if float(options.get(row[0]) or 0) <= 0:
            raise usage.UsageError(f"--{row[0]} must be a positive number of seconds")


#: The slowest a body may flow on average to be let go on past
#: --web-body-timeout, in octets per second (as an IMAP literal's,
#: L{twisted_mailhub.imap.deadlines.LITERAL_RATE}: 32 kbit/s).
BODY_RATE = MIN_TRANSFER_RATE


def keeping_up(octets: int, seconds: float) -> bool:
    """
    Whether a body of which C{octets} arrived in C{seconds} flows at
    L{BODY_RATE} or faster: past C{--web-body-timeout} it may go on only
    so (a 20 MB attachment on a slow uplink is not cut at 120 s; a client
    trickling a big Content-Length still is).
    """
    return octets >= seconds * BODY_RATE


class DeadlineChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} with a deadline per request: its header fields,
    then its body. C{factory} is a L{DeadlineSite}.
    """

    _deadline: Any = None
    _deadline_kind = ""
    _body_started = 0.0
    _body_octets = 0
    _abort_call: Any = None

    def connectionMade(self):
        http.HTTPChannel.connectionMade(self)
        # The first request is due from the connection's start (as Apache's
        # mod_reqtimeout counts): a client that connects and says nothing,
        # or never finishes the TLS handshake on --webs (whose octets are
        # no request yet), is cut at --web-header-timeout; it was kept for
        # the idle limit (--web-idle-timeout, 120 s).
        self._deadline_kind = "header fields"
        self._deadline = self.callLater(self.factory.header_timeout, self._too_slow)

    def dataReceived(self, data):
        if self._deadline_kind == "body":
            self._body_octets += len(data)
        if self._deadline is None and not self._handlingRequest and data:
            # The first octet of a request: its header fields are now due.
            self._deadline_kind = "header fields"
            self._deadline = self.callLater(self.factory.header_timeout, self._too_slow)
        http.HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self):
        if self.length is not None and self.length > self.factory.max_body:
            self._too_large()
            return
        http.HTTPChannel.allHeadersReceived(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline_kind = "body"
            self._body_started = self._clock_seconds()
            self._body_octets = 0
            self._deadline.reset(self.factory.body_timeout)

    def _clock_seconds(self) -> float:
        """Now, on the clock the deadlines use (the site's reactor)."""
        return self.factory.reactor.seconds()

    def allContentReceived(self):
        self._cancel_deadline()
        http.HTTPChannel.allContentReceived(self)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.disconnecting:
            return
        if self._deadline_kind == "body":
            elapsed = self._clock_seconds() - self._body_started
            if keeping_up(self._body_octets, elapsed):
                # A big body flowing steadily: asked again a limit later.
                self._deadline = self.callLater(self.factory.body_timeout, self._too_slow)
                return
        seconds = self.factory.header_timeout if self._deadline_kind == "header fields" else self.factory.body_timeout
        peer = getattr(self.transport.getPeer(), "host", "?")
        log.info("web: {peer} took over {seconds:g}s to send a request's {kind}, closing", peer=peer, seconds=seconds, kind=self._deadline_kind)
        self._refuse(b"408 Request Timeout", f"408 Request Timeout: the request's {self._deadline_kind} did not arrive within {seconds:g} seconds.\n")

    def _too_large(self) -> None:
        """The request's body is over C{factory.max_body}: 413, read no more of it."""
        if self.transport is None or self.transport.disconnecting:
            return
        self._cancel_deadline()
        peer = getattr(self.transport.getPeer(), "host", "?")
        limit = self.factory.max_body
        log.info("web: {peer} sent a request body over {limit} octets, refused", peer=peer, limit=limit)
        self._refuse(b"413 Content Too Large", f"413 Content Too Large: a request body may be at most {limit} octets ({limit // (1024 * 1024)} MiB); use FTP or SFTP for bigger files.\n")

    def lineLengthExceeded(self, line):
        """
        A request line or header field line over C{MAX_LENGTH} (16384)
        octets: C{414} for the request line (a search pasted into the
        webmail's box goes in the address), C{431} for a header field line
        (RFC 9110 section 15.5.15, RFC 6585 section 5), in the hub's layout,
        where Twisted closed the connection without a word (the browser
        showed "didn't send any data").
        """
        if getattr(self, "_HTTPChannel__first_line", 0):
            words = line.split(b" ", 2)
            if len(words) > 1:
                self._path = words[1].split(b"?", 1)[0]  # (an /api/ address gets its error as JSON)
            log.info("web: {peer} sent a request line over {limit} octets, refused", peer=self._peer(), limit=self.MAX_LENGTH)
            self._refuse(b"414 URI Too Long", f"414 URI Too Long: the address is longer than {self.MAX_LENGTH} octets (a search of fewer words will do).\n")
        else:
            self._too_many_header_octets()

    def _respondToBadRequestAndDisconnect(self):
        """
        Twisted's answer to a request it cannot read (a bare C{400} with no
        text, a blank page): C{431} when the header fields are over
        C{totalHeadersSize} octets, else C{400}, each with a line saying
        why, in the hub's layout.
        """
        if self.refused or self.transport is None or self.transport.disconnecting:
            return
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._too_many_header_octets()
            return
        self._refuse(b"400 Bad Request", "400 Bad Request: the request could not be read (a malformed request line or header field).\n")

    def _too_many_header_octets(self) -> None:
        log.info("web: {peer} sent request header fields over {limit} octets, refused", peer=self._peer(), limit=self.totalHeadersSize)
        self._refuse(
            b"431 Request Header Fields Too Large",
            f"431 Request Header Fields Too Large: the request's header fields are over {self.totalHeadersSize} octets (too many cookies for this site? clear them and log in again).\n",
        )

    def _peer(self) -> str:
        return getattr(self.transport.getPeer(), "host", "?") if self.transport is not None else "?"

    refused = False  # answered and closing: the rest of what arrives is dropped

    def _refuse(self, status: bytes, text: str) -> None:
        from twisted_mailhub.web import errors

        self.refused = True
        # As every other error of the web face (errors.py): JSON under
        # /api/, else a page in the hub's style (a webmail user who attached
        # too much sees a page, not a line of plain text).
        code = int(status.split()[0])
        content_type, body = errors.standalone(getattr(self, "_path", None) or b"", code, text.split(": ", 1)[-1].strip())
        self.setTimeout(None)
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        # Nothing more is read from this client; drop it if it does not
        # read the answer either.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        self.transport.loseConnection()
        self._abort_call = self.callLater(ABORT_AFTER, self.transport.abortConnection)

    def connectionLost(self, reason):
        self._cancel_deadline()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        http.HTTPChannel.connectionLost(self, reason)


def max_body(max_message_size: int) -> int:
    """
    The largest request body the web listeners take, in octets: room for a
    message of C{--max-message-size} sent from the webmail (or its
    attachments base64-encoded), and at least 64 MiB for API uploads.
    """
    return max(2 * max_message_size, MAX_BODY)


class DeadlineSite(server.Site):
    """A L{server.Site} whose connections are L{DeadlineChannel}s."""

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_body = MAX_BODY

    def protocol(self):
        return http._GenericHTTPChannelProtocol(DeadlineChannel())
