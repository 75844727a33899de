# -*- test-case-name: tests.test_filters -*-
"""
Delivery filters: hooks at MAIL FROM, RCPT TO and end of data, like a milter.

A filter is a plugin providing L{IDeliveryFilter} in
L{twisted_mailhub.plugins}; C{--filter NAME} (repeatable) turns it on. It
implements only the hooks it cares about (as aiosmtpd handlers do); a
missing hook accepts. A hook returns L{None} (accept), a L{Reject}, or at
end of data a L{Rewrite} with new message bytes; it may return a Deferred
of any of those. Filters run in the order given on the command line; the
first L{Reject} wins.
"""

from __future__ import annotations

from typing import Any

import attr
from twisted.plugin import getPlugins
from zope.interface import Attribute, Interface


@attr.s(auto_attribs=True, frozen=True)
class Envelope:
    """
    What the SMTP session has been told so far.

    @ivar sender: the reverse path (C{""} for the null sender C{<>}).
    @ivar recipients: forward paths accepted so far.
    @ivar client_address: the peer's IP address.
    @ivar helo: what the client said in HELO/EHLO.
    @ivar authenticated: the account address if the session logged in.
    @ivar authentication: at end of data, the sender-authentication results
        of the built-in checks as sorted (method, result) pairs, e.g.
        C{(("dkim", "pass"), ("dmarc", "pass"), ("spf", "softfail"))}
        (RFC 8601 result names); empty for mail that was not checked.
    """

    sender: str
    recipients: tuple[str, ...] = ()
    client_address: str = ""
    helo: str = ""
    authenticated: str | None = None
    authentication: tuple[tuple[str, str], ...] = ()


@attr.s(auto_attribs=True, frozen=True)
class Reject:
    """
    Refuse with an SMTP reply, e.g. C{Reject(550, "5.7.1 No thanks")}.
    """

    code: int
    text: str


@attr.s(auto_attribs=True, frozen=True)
class Rewrite:
    """
    Accept, storing C{message} in place of what the client sent. A filter
    that learnt something about the message may also give the
    C{envelope} the filters after it see (the built-in checks add their
    results this way).
    """

    message: bytes
    envelope: Envelope | None = None


class IDeliveryFilter(Interface):
    name = Attribute("The name given to --filter.")

    def mail_from(envelope: Envelope) -> Any:
        """MAIL FROM was given: L{None} or a L{Reject}."""

    def rcpt_to(envelope: Envelope, recipient: str) -> Any:
        """RCPT TO C{recipient}: L{None} or a L{Reject}."""

    def end_of_data(envelope: Envelope, message: bytes) -> Any:
        """The whole message is in: L{None}, a L{Reject} or a L{Rewrite}."""


def filter_plugins() -> dict[str, IDeliveryFilter]:
    from twisted_mailhub import plugins

    return {f.name: f for f in getPlugins(IDeliveryFilter, plugins)}
