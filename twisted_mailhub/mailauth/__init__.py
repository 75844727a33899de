# -*- test-case-name: tests.test_mailauth -*-
"""
Mail that other servers accept, and what this hub learns of mail from
outside: DKIM signing of submitted mail (L{signing}), SPF/DKIM/DMARC
results on incoming mail (L{checks}), the keys and the DNS records to
publish (L{keys}).

A hub component with no listener of its own: it puts two built-in
delivery filters around the C{--filter} ones, the checks first (so every
filter can read their results) and the signer last (so nothing rewrites
a signed message).

C{mailhub-admin dkim show --data DIR} prints the DNS records each local
domain should publish.
"""

from __future__ import annotations

import sys

from twisted.logger import Logger
from twisted.python import usage

log = Logger()

listeners: list = []

option_parameters = [
    ["dkim-selector", None, None, "DKIM selector for new keys (default: the newest in DATA/dkim/<domain>/, else mhYYYYMM)."],
    ["sender-check-timeout", None, 10, "Seconds for the SPF, DKIM and DMARC checks of one incoming message (then temperror).", float],
]

option_flags = [
    ["no-dkim", None, "Do not DKIM-sign mail that logged-in accounts submit."],
    ["no-sender-checks", None, "Do not check SPF, DKIM and DMARC on mail from outside (no Authentication-Results header)."],
    ["dmarc-reject", None, "Refuse (550 5.7.1) mail from outside that fails DMARC when its domain publishes p=reject."],
]


def check_options(options) -> None:
    from twisted_mailhub.mailauth.keys import check_selector

    if options.get("dkim-selector"):
        try:
            check_selector(options["dkim-selector"])
        except ValueError as e:
            raise usage.UsageError(str(e))
    if options.get("sender-check-timeout") is not None and not 0 < float(options["sender-check-timeout"]) <= 300:
        raise usage.UsageError("--sender-check-timeout must be more than 0 and at most 300 seconds")


class MailauthPool:
    """
    The threads that sign and check (dkimpy and pyspf block on DNS and
    compute RSA in Python): at most C{size} at once, started with the
    reactor and stopped at shutdown.
    """

    def __init__(self, reactor, size: int = 4):
        from twisted.python.threadpool import ThreadPool

        self.pool = ThreadPool(0, size, name="mailauth")
        reactor.callWhenRunning(self.pool.start)
        reactor.addSystemEventTrigger("during", "shutdown", self.pool.stop)


def local_domains(hub) -> list[str]:
    return list(hub.accounts.domains)


def install(hub) -> None:
    from twisted_mailhub.mailauth import checks, keys, signing

    options = hub.options
    sign = not options.get("no-dkim")
    check = not options.get("no-sender-checks")
    if not (sign or check):
        return
    pool = MailauthPool(hub.reactor).pool
    if check:
        from twisted_mailhub.queue.mx import parse_host_port

        server = options.get("dns-server")
        deadline = float(options.get("sender-check-timeout") or checks.DEADLINE)
        dns_server = parse_host_port(server, 53, address_only=True) if server else None
        hub.filters.insert(0, checks.InboundChecks(hub, pool, bool(options.get("dmarc-reject")), deadline, dns_server))
    if sign:
        found = {}
        for domain in local_domains(hub):
            if keys.signs_for(domain):
                found[domain] = keys.load_or_create(hub.data_dir, domain, options.get("dkim-selector"))
        if found:
            for domain, pair in found.items():
                log.info(
                    "dkim: signing mail from {domain} with selectors {selectors}",
                    domain=domain, selectors=", ".join(k.selector for k in pair),
                )
            hub.filters.append(signing.DKIMSigner(found, hub.reactor, pool))


def main(argv: list[str] | None = None) -> int:
    """
    C{mailhub-admin dkim show|make --data DIR [--hostname H] [--domain D
    ...]}: print the TXT records to publish for each domain that has keys.
    C{show} only reads (a domain without keys is an error: the hub makes
    them at start); C{make} first makes the keys of each C{--domain} that
    has none (before the hub's first start, e.g. to publish DNS first).
    Exit status 1 when a domain has no keys (show) or none is found.
    """
    import argparse
    import os
    import socket

    from twisted_mailhub.mailauth import keys

    parser = argparse.ArgumentParser(prog="mailhub-admin dkim", description="DKIM keys and the DNS records to publish.")
    parser.add_argument("action", choices=["show", "make"], help="show: print each domain's DNS TXT records (DKIM, suggested SPF and DMARC); make: make missing keys first")
    parser.add_argument("--data", default="mailhub-data", help="the hub's data folder (default: ./mailhub-data)")
    parser.add_argument("--hostname", default=socket.getfqdn(), help="the hub's name, for the suggested SPF record")
    parser.add_argument("--domain", action="append", default=[], help="a local domain (default: every domain with keys)")
    parser.add_argument("--dkim-selector", default=None)
    args = parser.parse_args(argv)
    domains = args.domain
    if not domains:
        try:
            domains = sorted(os.listdir(os.path.join(args.data, "dkim")))
        except FileNotFoundError:
            domains = []
    if not domains:
        print(f"no DKIM keys in {os.path.join(args.data, 'dkim')}: start the hub with a --domain, or name one with --domain", file=sys.stderr)
        return 1
    missing = 0
    for domain in domains:
        if not keys.usable_name(domain):
            # The hub's own --domain rule (accounts.usable_domain): the name
            # is a folder under DATA/dkim, and "../../etc" wrote keys there.
            from twisted_mailhub.lines import quote

            print(f"; {quote(domain, 200)}: not a domain name (want e.g. example.org)", file=sys.stderr)
            missing += 1
            continue
        if not keys.signs_for(domain):
            print(f"; {domain}: no DNS can be published for it, so it has no keys", file=sys.stderr)
            continue
        if args.action == "show" and keys.existing_selector(args.data, domain) is None:
            print(f"; {domain}: no DKIM keys in {keys.domain_dir(args.data, domain)} (the hub makes them at start; 'make' makes them now)", file=sys.stderr)
            missing += 1
            continue
        pair = keys.load_or_create(args.data, domain, args.dkim_selector)
        print(f"; {domain}")
        sys.stdout.write(keys.zone_lines(keys.dns_records(domain, pair, args.hostname)))
    return 1 if missing else 0
