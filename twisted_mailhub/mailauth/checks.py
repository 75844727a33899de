# -*- test-case-name: tests.test_mailauth -*-
"""
Inbound sender authentication: SPF (RFC 7208), DKIM (RFC 6376) and DMARC
(RFC 7489), recorded in an C{Authentication-Results:} header (RFC 8601).

Which mail: what arrives without a login from an address outside
C{--trusted-networks} (mail from outside, on the MX listener). A
logged-in account's mail is this hub's own and is signed, not checked.

Libraries: C{pyspf} evaluates SPF (the reference implementation, kept by
its RFC's co-author); C{dkimpy} verifies DKIM; C{authheaders} (by dkimpy's
maintainers) does DMARC's policy lookup and alignment with the public
suffix list it ships, and writes the header with C{authres}. None of it is
our own parsing or crypto.

They look up DNS with dnspython, blocking, so the checks run on a small
thread pool (L{MailauthPool}), never in the reactor. Every lookup has a
time limit (L{lookup_timeout}); SPF has RFC 7208 §4.6.4's limit of 10
lookups and 60% of the time; DKIM verifies the first signature only; the
whole check has a deadline (C{--sender-check-timeout}) after which every
result is C{temperror} and the message goes on. A DNS failure is a
C{temperror}, never a stuck session.

Results reach the filters after this one (C{Envelope.authentication}),
and with C{--dmarc-reject} a message that fails DMARC of a domain whose
policy is C{p=reject} is refused with C{550 5.7.1} (RFC 7489 §6.6.3).

An C{Authentication-Results:} field that claims this hub's name and came
with the message is removed first (RFC 8601 §5: it can only be forged).
"""

from __future__ import annotations

import functools
from typing import Any

import attr
from twisted.internet import threads
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.filters import Envelope, IDeliveryFilter, Reject, Rewrite

log = Logger()

DEADLINE = 10.0  # seconds for every check of one message (--sender-check-timeout)


def lookup_timeout(deadline: float) -> float:
    """Seconds for one DNS query: a third of the deadline, at most 3."""
    return min(3.0, deadline / 3)


def configure_dns(server: tuple[str, int] | None, deadline: float = DEADLINE) -> None:
    """
    Point dnspython's default resolver (used by pyspf, dkimpy and
    authheaders) at C{server} (host, port), or the system's resolvers when
    None, with this module's time limits.
    """
    import dns.resolver

    if server is not None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    else:
        try:
            resolver = dns.resolver.Resolver()
        except Exception:  # no /etc/resolv.conf: every lookup is a temperror
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = []
    resolver.timeout = lookup_timeout(deadline) / 2
    resolver.lifetime = lookup_timeout(deadline)
    dns.resolver.default_resolver = resolver


@functools.lru_cache(maxsize=1)
def _public_suffix_list():
    import importlib.resources

    from authheaders import dmarc_lookup

    try:
        from authheaders.findpsl import location  # a file path, where installed
    except ModuleNotFoundError:
        ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
        with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as f:
            return dmarc_lookup.PublicSuffixList(f)
    with open(location, encoding="utf-8") as f:
        return dmarc_lookup.PublicSuffixList(f)


def organizational_domain(domain: str) -> str:
    """
    RFC 7489 §3.2's organizational domain, from the public suffix list that
    authheaders ships, parsed once per process.
    """
    return _public_suffix_list().get_public_suffix(domain)


def _parse_public_suffix_list_once() -> None:
    # authheaders parses its 10,000-rule public suffix list again for every
    # lookup (twice a message: 60 ms of CPU); give it the list parsed once.
    import authheaders
    from authheaders import dmarc_lookup

    dmarc_lookup.get_org_domain = organizational_domain
    authheaders.get_org_domain = organizational_domain


def strip_own_results(message: bytes, authserv_id: str) -> bytes:
    """
    C{message} without C{Authentication-Results:} fields whose authserv-id
    is C{authserv_id} (case-insensitive), RFC 8601 §5.
    """
    head, sep, body = message.partition(b"\r\n\r\n")
    if b"authentication-results" not in head.lower():
        return message
    own = authserv_id.lower().encode("ascii", "replace")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name, colon, value = line.partition(b":")
        dropping = bool(colon) and name.strip().lower() == b"authentication-results" and value.strip().lower().split(b";")[0].strip() == own
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


@attr.s(auto_attribs=True, frozen=True)
class Outcome:
    """
    What the checks found.

    @ivar header: the C{Authentication-Results:} field, CRLF-terminated.
    @ivar results: method -> result, e.g. C{{"spf": "pass", "dkim": "none",
        "dmarc": "fail"}}.
    @ivar dmarc_policy: the From domain's DMARC C{p=} (C{"reject"}...) or "".
    @ivar from_domain: the C{From:} domain DMARC evaluated, or "".
    """

    header: bytes
    results: dict
    dmarc_policy: str = ""
    from_domain: str = ""


def evaluate(message: bytes, ip: str, mail_from: str, helo: str, authserv_id: str, deadline: float = DEADLINE) -> Outcome:
    """
    Run SPF, DKIM and DMARC on one message (blocking: call it in a thread).

    @param ip: the SMTP client's address.
    @param mail_from: the reverse path (C{""} for C{<>}: RFC 7208 §2.4 then
        checks C{postmaster@<helo>}).
    @param deadline: seconds for everything; SPF gets 60% of it.
    """
    import spf
    from authheaders import SPFAuthenticationResult, check_dmarc

    _parse_public_suffix_list_once()
    from authres import AuthenticationResultsHeader

    identity = mail_from or f"postmaster@{helo}"
    try:
        spf_result, _why = spf.check2(ip, identity, helo or "unknown", timeout=lookup_timeout(deadline), querytime=deadline * 0.6)
    except Exception as e:  # pyspf raises only for broken input; record, don't fail the mail
        log.info("spf: {ip} {identity}: {why}", ip=ip, identity=identity, why=str(e))
        spf_result = "temperror"
    spf_obj = SPFAuthenticationResult(result=spf_result, smtp_mailfrom=identity, smtp_helo=helo or None)

    dkim_obj = _check_dkim(message, lookup_timeout(deadline))
    from authheaders import DMARCAuthenticationResult

    from twisted_mailhub.mailauth.signing import header_from_domain

    if header_from_domain(message) is None:
        # No From: domain, so no DMARC policy to look up (RFC 7489 §3.1
        # aligns with it): "none". authheaders failed on it with Python's
        # own words (an unbound local variable) and the result was
        # temperror, which says "try again later".
        dmarc_obj = DMARCAuthenticationResult(result="none")
    else:
        try:
            dmarc_obj = check_dmarc(message, spf_obj, dkim_obj)
        except Exception as e:
            log.info("dmarc: {why}", why=str(e))
            dmarc_obj = DMARCAuthenticationResult(result="temperror")
    header = str(AuthenticationResultsHeader(authserv_id=authserv_id, results=[spf_obj, dkim_obj, dmarc_obj]))
    results = {"spf": spf_obj.result, "dkim": dkim_obj.result, "dmarc": dmarc_obj.result}
    return Outcome(
        header=_fold(header).encode("utf-8") + b"\r\n",
        results=results,
        dmarc_policy=str(getattr(dmarc_obj, "policy", "") or ""),
        from_domain=str(getattr(dmarc_obj, "header_from", "") or ""),
    )


def _check_dkim(message: bytes, timeout: float):
    import dkim
    from authheaders import DKIMAuthenticationResult

    head = message.split(b"\r\n\r\n", 1)[0].lower()
    if not (head.startswith(b"dkim-signature:") or b"\r\ndkim-signature:" in head):
        return DKIMAuthenticationResult(result="none")
    verifier = dkim.DKIM(message, timeout=timeout)
    try:
        result = "pass" if verifier.verify() else "fail"
    except dkim.DnsTimeoutError:
        result = "temperror"
    except dkim.KeyFormatError:
        result = "permerror"
    except Exception:  # dkimpy raises for malformed signatures: that is a fail
        result = "fail"
    fields = verifier.signature_fields or {}
    return DKIMAuthenticationResult(
        result=result,
        header_d=fields.get(b"d", b"").decode("ascii", "replace") or None,
        header_i=fields.get(b"i", b"").decode("ascii", "replace") or None,
    )


def _fold(header: str) -> str:
    """Fold after each C{;} so no line passes RFC 5322 §2.1.1's 78 characters needlessly."""
    return header.replace("; ", ";\r\n\t")


def temporary_outcome(authserv_id: str) -> Outcome:
    """Every result C{temperror}: the checks ran out of time."""
    text = f"Authentication-Results: {authserv_id};\r\n\tspf=temperror;\r\n\tdkim=temperror;\r\n\tdmarc=temperror\r\n"
    return Outcome(text.encode("utf-8"), {"spf": "temperror", "dkim": "temperror", "dmarc": "temperror"})


@implementer(IPlugin, IDeliveryFilter)
class InboundChecks:
    """
    The built-in checking filter (the first end-of-data filter).
    """

    name = "mail-auth"

    def __init__(self, hub: Any, pool: Any, dmarc_reject: bool = False, deadline: float = DEADLINE, dns_server: Any = False):
        self.hub = hub
        self.pool = pool
        self.dmarc_reject = dmarc_reject
        self.deadline = deadline
        # (host, port) or None (the system's) for L{configure_dns}, done
        # before the first check: a hub that checks nothing never imports
        # dnspython (about 3 MB). False: left as it is.
        self._dns_server = dns_server

    def applies(self, envelope: Envelope) -> bool:
        return self.applies_to_session(envelope.authenticated, envelope.client_address)

    def applies_to_session(self, authenticated: str | None, client_address: str) -> bool:
        """
        Whether mail of a session checks at all: only mail from outside (no
        login, C{client_address} outside C{--trusted-networks}) is checked.
        The SMTP delivery asks this before it makes an L{Envelope}
        (L{twisted_mailhub.smtp.delivery.end_of_data_gates}).
        """
        return not authenticated and client_address not in self.hub.trusted

    def end_of_data(self, envelope: Envelope, message: bytes) -> Any:
        if not self.applies(envelope):
            return None
        if self._dns_server is not False:
            configure_dns(self._dns_server, self.deadline)
            self._dns_server = False
        authserv_id = self.hub.hostname
        message = strip_own_results(message, authserv_id)
        d = threads.deferToThreadPool(
            self.hub.reactor, self.pool, evaluate, message, envelope.client_address, envelope.sender, envelope.helo, authserv_id,
            self.deadline,
        )
        d.addTimeout(self.deadline + 1, self.hub.reactor)
        d.addErrback(lambda f: temporary_outcome(authserv_id))
        return d.addCallback(self._decide, envelope, message)

    def _decide(self, outcome: Outcome, envelope: Envelope, message: bytes):
        if self.dmarc_reject and outcome.results.get("dmarc") == "fail" and outcome.dmarc_policy == "reject":
            log.info(
                "dmarc: refused mail from {sender} at {ip}: {domain} publishes p=reject and the message failed DMARC",
                sender=envelope.sender, ip=envelope.client_address, domain=outcome.from_domain,
            )
            return Reject(550, f"5.7.1 Message refused: it fails DMARC and {outcome.from_domain} asks receivers to reject such mail (RFC 7489 §6.6.3)")
        seen = attr.evolve(envelope, authentication=tuple(sorted(outcome.results.items())))
        return Rewrite(outcome.header + message, envelope=seen)


__all__ = ["InboundChecks", "Outcome", "configure_dns", "evaluate", "strip_own_results"]
