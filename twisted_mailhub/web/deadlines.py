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
                chunked) must be complete within C{--web-body-timeout}.
 idle           C{--web-idle-timeout}: no octet at all, between requests
                or within one (Twisted's C{timeOut}).
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

log = Logger()

HEADER_TIMEOUT = 20.0
BODY_TIMEOUT = 120.0
IDLE_TIMEOUT = 120.0
ABORT_AFTER = 15.0

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


class DeadlineChannel(http.HTTPChannel):
    """
    An L{http.HTTPChannel} with a deadline per request: its header fields,
    then its body. C{factory} is a L{DeadlineSite}.
    """

    _deadline: Any = None
    _deadline_kind = ""
    _abort_call: Any = None

    def dataReceived(self, data):
        if self._deadline is None and not self._handlingRequest and data:
            # The first octet of a request: its header fields are now due.
            self._deadline_kind = "header fields"
            self._deadline = self.callLater(self.factory.header_timeout, self._too_slow)
        http.HTTPChannel.dataReceived(self, data)

    def allHeadersReceived(self):
        http.HTTPChannel.allHeadersReceived(self)
        if self._deadline is not None and self._deadline.active():
            self._deadline_kind = "body"
            self._deadline.reset(self.factory.body_timeout)

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
        seconds = self.factory.header_timeout if self._deadline_kind == "header fields" else self.factory.body_timeout
        peer = getattr(self.transport.getPeer(), "host", "?")
        log.info("web: {peer} took over {seconds:g}s to send a request's {kind}, closing", peer=peer, seconds=seconds, kind=self._deadline_kind)
        body = f"408 Request Timeout: the request's {self._deadline_kind} did not arrive within {seconds:g} seconds.\n".encode("ascii")
        self.setTimeout(None)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
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


class DeadlineSite(server.Site):
    """A L{server.Site} whose connections are L{DeadlineChannel}s."""

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT

    def protocol(self):
        return http._GenericHTTPChannelProtocol(DeadlineChannel())
