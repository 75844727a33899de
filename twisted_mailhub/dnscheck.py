# -*- test-case-name: tests.test_dnscheck -*-
"""
The DNS records a local domain needs for its mail to be delivered and
accepted, checked from the command line (C{mailhub-admin check}, issue 14).

For each local domain that can have public records (a dot in it, not
C{localhost}), with dnspython against C{--dns-server HOST:PORT} or the
system's resolvers:

 =========  ================================================================
 record     what fails
 =========  ================================================================
 MX         none (other servers then try the domain's address, RFC 5321
            §5.1), or none naming this hub's C{--hostname}
 SPF        no C{v=spf1} TXT record, or more than one (RFC 7208 §4.5: a
            permerror, as bad as none)
 DKIM       for each key in C{DATA/dkim/<domain>/}: no TXT record at
            C{<selector>._domainkey.<domain>}, or one whose C{p=} is not
            that key's (RFC 6376 §3.6.1): signatures would fail
 DMARC      no C{v=DMARC1} TXT record at C{_dmarc.<domain>}, or one
            without a valid C{p=} (RFC 7489 §6.3)
 =========  ================================================================

Every problem is one line that says what to publish (the records
C{mailhub-admin dkim show} prints). A DNS server that does not answer is
a problem too, said as such; nothing is retried for long (a few seconds per
question).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable

TIMEOUT = 3.0  # seconds per question
LIFETIME = 6.0  # seconds per name, retries included


def resolver_for(server: str | None) -> Any:
    """
    A dnspython resolver asking C{server} (C{"HOST:PORT"}, or C{"HOST"} for
    port 53), or the system's resolvers when C{server} is L{None}.
    """
    import dns.resolver

    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        from twisted_mailhub.queue.mx import parse_host_port

        host, port = parse_host_port(server, 53, address_only=True)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.timeout = TIMEOUT
    resolver.lifetime = LIFETIME
    return resolver


class _Unanswered(Exception):
    """The DNS server did not answer (timeout, refusal, broken reply)."""


def _lookup(resolver: Any, name: str, kind: str) -> list[Any]:
    """The records of C{kind} at C{name}; C{[]} when there are none."""
    import dns.exception
    import dns.resolver

    try:
        return list(resolver.resolve(name, kind, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.NoNameservers as e:
        raise _Unanswered(f"no DNS server answered for {name} {kind} (SERVFAIL or refused)") from e
    except dns.exception.Timeout as e:
        raise _Unanswered(f"the DNS server did not answer for {name} {kind} within {LIFETIME:g} s") from e
    except dns.exception.DNSException as e:
        raise _Unanswered(f"cannot look up {name} {kind}: {e.__class__.__name__}") from e


def _texts(resolver: Any, name: str) -> list[str]:
    """Each TXT record at C{name} as one string (its character-strings joined, RFC 7208 §3.3)."""
    return [b"".join(r.strings).decode("utf-8", "replace") for r in _lookup(resolver, name, "TXT")]


def _tags(record: str) -> dict[str, str]:
    """C{"v=DKIM1; k=rsa; p=..."} as {"v": "DKIM1", ...} (RFC 6376 §3.2 tag-list)."""
    tags = {}
    for part in record.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags[key.strip().lower()] = re.sub(r"\s+", "", value)
    return tags


def local_keys(data_dir: str, domain: str) -> list[tuple[str, str]]:
    """(selector, record) of every DKIM public key in C{DATA/dkim/<domain>/}."""
    from twisted_mailhub.mailauth.keys import domain_dir

    folder = domain_dir(data_dir, domain)
    found = []
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".pub"))
    except OSError:
        return []
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="ascii") as f:
                found.append((name[: -len(".pub")], f.read().strip()))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def check_domain(domain: str, resolver: Any, hostname: str, data_dir: str) -> list[str]:
    """
    What would fail for C{domain}'s mail, one line each (C{[]}: all good).
    """
    try:
        return _check(domain, resolver, hostname, data_dir)
    except _Unanswered as e:
        return [f"dns: {domain}: {e}"]


def _check(domain: str, resolver: Any, hostname: str, data_dir: str) -> list[str]:
    problems = []
    hub = hostname.lower().rstrip(".")
    mx = sorted((r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in _lookup(resolver, domain, "MX"))
    if not mx:
        problems.append(f"dns: {domain} has no MX record: other servers cannot find where its mail goes; publish {domain}. IN MX 10 {hub}.")
    elif hub not in [host for _, host in mx]:
        shown = ", ".join(host for _, host in mx)
        problems.append(f"dns: {domain}'s MX names {shown}, not this hub ({hub}): mail for {domain} goes elsewhere")
    spf = [t for t in _texts(resolver, domain) if t.lower().startswith("v=spf1")]
    if not spf:
        problems.append(f'dns: {domain} has no SPF record: big providers refuse or junk its mail; publish {domain}. IN TXT "v=spf1 mx a:{hub} ~all"')
    elif len(spf) > 1:
        problems.append(f"dns: {domain} has {len(spf)} SPF records: RFC 7208 §4.5 makes that a permerror; keep one")
    for selector, record in local_keys(data_dir, domain):
        name = f"{selector}._domainkey.{domain}"
        want = _tags(record).get("p", "")
        published = [t for t in _texts(resolver, name) if "p=" in t]
        if not published:
            problems.append(f"dns: {name} has no DKIM record: signatures with selector {selector} fail; publish what mailhub-admin dkim show prints")
        elif not any(_tags(t).get("p", "") == want for t in published):
            problems.append(f"dns: {name} does not hold the key in DATA/dkim/{domain}/{selector}.pub: signatures fail; publish what mailhub-admin dkim show prints")
    dmarc = [t for t in _texts(resolver, f"_dmarc.{domain}") if t.lower().startswith("v=dmarc1")]
    if not dmarc:
        problems.append(f'dns: {domain} has no DMARC record: bulk senders need one; publish _dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@{domain}"')
    elif _tags(dmarc[0]).get("p", "").lower() not in ("none", "quarantine", "reject"):
        problems.append(f"dns: _dmarc.{domain} has no valid p= (none, quarantine or reject): RFC 7489 §6.3 ignores such a record")
    return problems


def check_domains(domains: Iterable[str], server: str | None, hostname: str, data_dir: str) -> list[str]:
    """L{check_domain} for each domain that can have public records."""
    from twisted_mailhub.mailauth.keys import signs_for

    public = [d for d in dict.fromkeys(d.lower().rstrip(".") for d in domains) if signs_for(d)]
    if not public:
        return []
    resolver = resolver_for(server)
    problems = []
    for domain in public:
        problems.extend(check_domain(domain, resolver, hostname, data_dir))
    return problems
