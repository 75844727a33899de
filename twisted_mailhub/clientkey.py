# -*- test-case-name: tests.test_clientkey -*-
"""
Which client a connection comes from, for everything the hub counts or
allows per client address: the per-address connection limits
(C{--max-connections-per-ip}, C{--ftp-max-per-ip}), the failed-login
throttle (every protocol, the web login and the API, shared by workers and
by hubs on one PostgreSQL), and the web console's "sessions from your
address".

An IPv4 address is one client. An IPv6 host is not one address: a site
is given at least a /64 per link (RFC 4291 §2.5.4, RFC 6177), and a host
picks any of its 2**64 addresses, a new temporary one as often as it
likes (RFC 8981). Counting IPv6 per address let one host open
C{--max-connections-per-ip} connections from each of them, and guess
passwords with a fresh, unthrottled address each time. So an IPv6
address counts as its network of C{--ipv6-prefix} bits (default 64;
C{128} counts each address apart, C{48} a whole site): the key is that
network, written C{2001:db8:1:2::/64}.

Log lines and replies keep showing the full address; only the counting
uses the key. The prefix is set once per process from the options
(L{configure}, called by the hub); IPv4-mapped IPv6 addresses arrive
here already as IPv4 (C{hub.ListenerFactory}, C{proxyheader}).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from twisted.python import usage

__all__ = ["DEFAULT_PREFIX", "client_key", "configure", "prefix_length"]

DEFAULT_PREFIX = 64

_prefix = DEFAULT_PREFIX


def prefix_length(value: str) -> int:
    """
    The coerce of C{--ipv6-prefix}: a whole number of bits from 1 to 128.

    @raise usage.UsageError: anything else, naming the option and the value.
    """
    from twisted_mailhub.optionvalues import shown

    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 3 or not 1 <= int(text) <= 128:
        raise usage.UsageError(
            f"--ipv6-prefix wants the bits of an IPv6 network that count as one client, 1 to 128 (64: a /64), not {shown(str(value))}"
        )
    return int(text)


prefix_length.coerceDoc = ""  # type: ignore[attr-defined]


def configure(prefix: int) -> None:
    """
    Count IPv6 clients by their network of C{prefix} bits (1-128) from
    now on, in this process.

    @raise ValueError: C{prefix} is outside 1-128.
    """
    global _prefix
    if not 1 <= int(prefix) <= 128:
        raise ValueError(f"an IPv6 prefix is 1 to 128 bits, not {prefix}")
    if int(prefix) != _prefix:
        _prefix = int(prefix)
        _ipv6_key.cache_clear()


def client_key(host: str) -> str:
    """
    The key of client address C{host} (a textual IP address, as
    C{getPeer().host} gives it) for per-client counts: C{host} itself for
    IPv4 (and for anything that is not an IP address, e.g. a UNIX socket's
    empty host), the C{--ipv6-prefix} network for IPv6, e.g.
    C{2001:db8:1:2::/64} for C{2001:db8:1:2:a:b:c:d}. A scope id
    (C{fe80::1%eth0}) is kept apart: link-local networks of two links are
    not the same clients.
    """
    if ":" not in host:
        return host
    return _ipv6_key(host, _prefix)


@lru_cache(maxsize=4096)
def _ipv6_key(host: str, prefix: int) -> str:
    address, percent, scope = host.partition("%")
    try:
        network = ipaddress.IPv6Network((address, prefix), strict=False)
    except ValueError:
        return host
    mapped = ipaddress.IPv6Address(address).ipv4_mapped
    if mapped is not None:
        return str(mapped)  # an IPv4 client (not every one in ::ffff:0:0/96 at once)
    return f"{network}{percent}{scope}" if percent else str(network)
