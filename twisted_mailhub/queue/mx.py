# -*- test-case-name: tests.test_queue_mx -*-
"""
Where mail for a domain goes: the list of hosts to try, in order.

RFC 5321 §5.1: look up the domain's MX records and try them in order of
preference (hosts with equal preference in random order); with no MX
record, the domain itself is the one "implicit MX" (its A/AAAA records).
A null MX (a single MX whose exchange is the root, RFC 7505) or a domain
that does not exist is a permanent failure; a DNS timeout or server
failure is temporary.

Three ways to route, checked in this order:
 - C{--smarthost HOST:PORT}: everything goes to one relay;
 - C{--mx-override DOMAIN=HOST:PORT} (C{*} for every domain): a hosts
   file for mail, for classrooms and tests, no DNS at all;
 - DNS with C{twisted.names}: the system's resolver, or C{--dns-server
   HOST:PORT}. MX hosts are connected to on C{--relay-port} (25).
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import attr
from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error


@attr.s(auto_attribs=True, frozen=True)
class Hop:
    """
    One host to try: C{name} as the MX record (or override) gave it, the
    C{address} to connect to, and the port.
    """

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        """C{127.0.0.1:25}, C{[::1]:25} (RFC 3986 §3.2.2's brackets), or C{mx.example.org[192.0.2.1]:25}."""
        if self.name == self.address:
            return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        return f"{self.name}[{self.address}]:{self.port}"


class RouteError(Exception):
    """
    No host to try. C{permanent} failures bounce; the others are retried.
    """

    def __init__(self, code: int, status: str, text: str):
        Exception.__init__(self, f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def reply(self) -> str:
        return f"{self.status} {self.text}"


def parse_host_port(text: str, default_port: int | None = None, address_only: bool = False) -> tuple[str, int]:
    """
    C{host:port}, C{[v6]:port} or C{host} (with C{default_port}); with
    C{address_only} the host is an IP address (a DNS server).
    L{twisted_mailhub.optionvalues.host_port}: its L{ValueError} says what
    is wrong in one line, for the caller to put the option's name before.
    """
    from twisted_mailhub.optionvalues import host_port

    return host_port(text, default_port, address_only)


def parse_override(text: str) -> tuple[str, tuple[str, int]]:
    """
    C{domain=host:port} (port defaults to 25).
    """
    from twisted_mailhub.accounts import usable_domain
    from twisted_mailhub.optionvalues import shown

    domain, sep, target = text.partition("=")
    domain = domain.strip().lower().rstrip(".")
    if not sep or not (domain == "*" or usable_domain(domain)):
        raise ValueError(f"--mx-override wants DOMAIN=HOST:PORT such as example.org=127.0.0.1:2525, not {shown(text)}")
    try:
        return domain, parse_host_port(target, 25)
    except ValueError as e:
        raise ValueError(f"--mx-override {domain}={e}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Router:
    """
    Turns a recipient domain into the L{Hop}s to try, best first.

    @ivar resolver: a C{twisted.names} resolver (L{IResolver}); made on
        first use when not given.
    """

    def __init__(
        self,
        resolver: Any = None,
        port: int = 25,
        overrides: dict[str, tuple[str, int]] | None = None,
        smarthost: tuple[str, int] | None = None,
        shuffle=random.shuffle,
    ):
        self._resolver = resolver
        self.port = port
        self.overrides = dict(overrides or {})
        self.smarthost = smarthost
        self.shuffle = shuffle

    @property
    def resolver(self):
        if self._resolver is None:
            from twisted.names import client

            self._resolver = client.createResolver()
        return self._resolver

    def fixed(self, domain: str) -> tuple[str, int] | None:
        """
        The smarthost or override for C{domain}, if there is one.
        """
        if self.smarthost is not None:
            return self.smarthost
        domain = domain.lower().rstrip(".")
        return self.overrides.get(domain) or self.overrides.get("*")

    @defer.inlineCallbacks
    def route(self, domain: str):
        """
        A Deferred firing with a non-empty list of L{Hop}s, or failing with
        L{RouteError}.
        """
        fixed = self.fixed(domain)
        if fixed is not None:
            host, port = fixed
            return [Hop(host, host, port)]
        if _is_ip(domain.strip("[]")):
            # An address literal, RFC 5321 §4.1.3: no DNS.
            host = domain.strip("[]")
            return [Hop(host, host, self.port)]
        try:
            answers, _, additional = yield self.resolver.lookupMailExchange(domain)
        except dns_error.DNSNameError:
            raise RouteError(550, "5.1.2", f"domain {domain} does not exist")
        except UnicodeError:
            # The name cannot even be put in a DNS query (a label IDNA
            # refuses, RFC 5890): no retry will find it. (Queued before
            # RCPT refused such domains: delivery.domain_problem.)
            raise RouteError(550, "5.1.2", f"domain {domain} is not a name DNS can look up")
        except Exception as e:  # noqa: BLE001 - any DNS trouble is temporary
            raise RouteError(451, "4.4.3", f"DNS lookup of MX {domain} failed: {_dns_reason(e)}")
        exchanges = [
            (rr.payload.preference, str(rr.payload.name).rstrip("."))
            for rr in answers
            if rr.type == dns.MX and str(rr.name).rstrip(".").lower() == domain.lower().rstrip(".")
        ]
        if len(exchanges) == 1 and exchanges[0][1] == "":
            raise RouteError(556, "5.1.10", f"domain {domain} does not accept mail (null MX, RFC 7505)")
        exchanges = [(p, n) for p, n in exchanges if n]
        if not exchanges:
            # RFC 5321 §5.1: the domain is its own implicit MX.
            hops = yield self._addresses(domain)
            if not hops:
                raise RouteError(550, "5.1.2", f"domain {domain} has no MX and no address record")
            return hops
        by_preference: dict[int, list[str]] = {}
        for preference, name in exchanges:
            by_preference.setdefault(preference, []).append(name)
        hops = []
        glue = _glue(additional)
        for preference in sorted(by_preference):
            names = by_preference[preference]
            self.shuffle(names)
            for name in names:
                hops.extend((yield self._addresses(name, glue)))
        if not hops:
            raise RouteError(451, "4.4.3", f"no MX host of {domain} has an address")
        return hops

    @defer.inlineCallbacks
    def _addresses(self, name: str, glue: dict | None = None):
        if _is_ip(name):
            return [Hop(name, name, self.port)]
        if glue and name.lower() in glue:
            return [Hop(name, a, self.port) for a in glue[name.lower()]]
        found = []
        for lookup, rtype in ((self.resolver.lookupAddress, dns.A), (self.resolver.lookupIPV6Address, dns.AAAA)):
            try:
                answers, _, _ = yield lookup(name)
            except Exception:  # noqa: BLE001 - a host without this record type
                continue
            found.extend(Hop(name, rr.payload.dottedQuad() if rtype == dns.A else _aaaa(rr.payload), self.port) for rr in answers if rr.type == rtype)
        return found


def _aaaa(payload) -> str:
    return str(ipaddress.IPv6Address(payload.address))


def _glue(additional) -> dict[str, list[str]]:
    glue: dict[str, list[str]] = {}
    for rr in additional or ():
        if rr.type == dns.A:
            glue.setdefault(str(rr.name).rstrip(".").lower(), []).append(rr.payload.dottedQuad())
        elif rr.type == dns.AAAA:
            glue.setdefault(str(rr.name).rstrip(".").lower(), []).append(_aaaa(rr.payload))
    return glue


def _dns_reason(e: Exception) -> str:
    if isinstance(e, defer.TimeoutError):
        return "timeout"
    if isinstance(e, dns_error.DNSServerError):
        return "server failure"
    return e.__class__.__name__
