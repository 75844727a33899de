"""
Routing: MX preference order, the implicit MX, null MX, DNS errors,
overrides and the smarthost, against a scripted resolver; and one lookup
through a real twisted.names server on loopback.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.trial import unittest

from twisted_mailhub.queue.mx import Hop, RouteError, Router, parse_host_port, parse_override


def rr(name, payload):
    return dns.RRHeader(name=name, type=payload.TYPE, payload=payload)


class ScriptedResolver:
    def __init__(self, mx=None, a=None, aaaa=None, fail=None):
        self.mx = mx or {}
        self.a = a or {}
        self.aaaa = aaaa or {}
        self.fail = fail or {}
        self.asked = []

    def _answer(self, table, name, make):
        self.asked.append(name)
        if name in self.fail:
            return defer.fail(self.fail[name]())
        return defer.succeed(([rr(name, make(v)) for v in table.get(name, [])], [], []))

    def lookupMailExchange(self, name):
        return self._answer(self.mx, name, lambda v: dns.Record_MX(v[0], v[1]))

    def lookupAddress(self, name):
        return self._answer(self.a, name, lambda v: dns.Record_A(v))

    def lookupIPV6Address(self, name):
        return self._answer(self.aaaa, name, lambda v: dns.Record_AAAA(v))


def route(router, domain):
    return router.route(domain)


class RouterTests(unittest.TestCase):
    def test_mx_hosts_in_preference_order_with_their_addresses(self):
        resolver = ScriptedResolver(
            mx={"b.test": [(20, "backup.b.test"), (10, "mx1.b.test")]},
            a={"mx1.b.test": ["192.0.2.1"], "backup.b.test": ["192.0.2.9"]},
            aaaa={"mx1.b.test": ["2001:db8::1"]},
        )
        hops = self.successResultOf(Router(resolver, port=2525).route("b.test"))
        self.assertEqual(
            hops,
            [Hop("mx1.b.test", "192.0.2.1", 2525), Hop("mx1.b.test", "2001:db8::1", 2525), Hop("backup.b.test", "192.0.2.9", 2525)],
        )
        self.assertEqual(str(hops[0]), "mx1.b.test[192.0.2.1]:2525")

    def test_no_mx_falls_back_to_the_domains_address(self):
        resolver = ScriptedResolver(a={"b.test": ["192.0.2.7"]})
        self.assertEqual(self.successResultOf(Router(resolver).route("b.test")), [Hop("b.test", "192.0.2.7", 25)])

    def test_unknown_domain_is_permanent(self):
        resolver = ScriptedResolver(fail={"nowhere.test": lambda: dns_error.DNSNameError("nx")})
        err = self.failureResultOf(Router(resolver).route("nowhere.test"), RouteError).value
        self.assertTrue(err.permanent)
        self.assertEqual(err.status, "5.1.2")

    def test_dns_timeout_is_temporary(self):
        resolver = ScriptedResolver(fail={"b.test": lambda: defer.TimeoutError("slow")})
        err = self.failureResultOf(Router(resolver).route("b.test"), RouteError).value
        self.assertFalse(err.permanent)
        self.assertIn("timeout", err.text)

    def test_null_mx_refuses_mail(self):
        resolver = ScriptedResolver(mx={"b.test": [(0, "")]})
        err = self.failureResultOf(Router(resolver).route("b.test"), RouteError).value
        self.assertEqual((err.code, err.status), (556, "5.1.10"))

    def test_mx_host_without_address_is_temporary(self):
        resolver = ScriptedResolver(mx={"b.test": [(10, "mx.b.test")]})
        err = self.failureResultOf(Router(resolver).route("b.test"), RouteError).value
        self.assertFalse(err.permanent)

    def test_override_and_smarthost_skip_dns(self):
        resolver = ScriptedResolver()
        router = Router(resolver, overrides={"b.test": ("127.0.0.1", 2525), "*": ("10.0.0.1", 25)})
        self.assertEqual(self.successResultOf(router.route("B.Test.")), [Hop("127.0.0.1", "127.0.0.1", 2525)])
        self.assertEqual(self.successResultOf(router.route("c.test")), [Hop("10.0.0.1", "10.0.0.1", 25)])
        smart = Router(resolver, smarthost=("relay.test", 587))
        self.assertEqual(self.successResultOf(smart.route("b.test")), [Hop("relay.test", "relay.test", 587)])
        self.assertEqual(resolver.asked, [])

    def test_option_syntax(self):
        self.assertEqual(parse_host_port("relay.test:587"), ("relay.test", 587))
        self.assertEqual(parse_host_port("[::1]:2525"), ("::1", 2525))
        self.assertEqual(parse_host_port("relay.test", 25), ("relay.test", 25))
        self.assertRaises(ValueError, parse_host_port, "relay.test")
        self.assertRaises(ValueError, parse_host_port, "relay.test:99999")
        self.assertEqual(parse_override("B.test=127.0.0.1:2525"), ("b.test", ("127.0.0.1", 2525)))
        self.assertRaises(ValueError, parse_override, "b.test")


class TestZone:
    """
    A twisted.names authority for one domain from a plain dict, for tests:
    C{{"b.test": [("MX", 10, "mx.b.test")], "mx.b.test": [("A", "127.0.0.1")]}};
    C{("TXT", "v=spf1 -all")} gives a TXT record (long texts split).
    """

    @staticmethod
    def make(domain: str, records: dict):
        from twisted.names import authority

        def payload(spec):
            kind, *args = spec
            if kind == "MX":
                return dns.Record_MX(args[0], args[1].encode())
            if kind == "A":
                return dns.Record_A(args[0])
            if kind == "TXT":
                # RFC 1035 §3.3.14: strings of at most 255 octets each
                text = args[0].encode()
                return dns.Record_TXT(*[text[i:i + 255] for i in range(0, len(text), 255)])
            return dns.Record_AAAA(args[0])

        class Zone(authority.FileAuthority):
            def loadFile(self, filename):
                soa = dns.Record_SOA(mname=b"ns." + domain.encode(), rname=b"root." + domain.encode(), serial=1, refresh=60, retry=60, expire=60, minimum=60)
                self.soa = (domain.encode(), soa)
                self.records = {name.encode(): [payload(r) for r in rs] for name, rs in records.items()}
                self.records.setdefault(domain.encode(), []).append(soa)

        return Zone(None)


def serve_dns(reactor, zones: dict, interface: str = "127.0.0.1"):
    """
    Listen for DNS on a free loopback UDP port with C{zones}
    (domain -> records, see L{TestZone}); returns the port.
    """
    from twisted.names import server

    factory = server.DNSServerFactory(authorities=[TestZone.make(d, r) for d, r in zones.items()])
    return reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface=interface)


class RealDNSServerTests(unittest.TestCase):
    """
    The router through twisted.names' own client and server on loopback.
    """

    @defer.inlineCallbacks
    def test_mx_answer_from_a_loopback_dns_server(self):
        from twisted.internet import reactor
        from twisted.names import client

        port = serve_dns(reactor, {"b.test": {"b.test": [("MX", 10, "mx.b.test")], "mx.b.test": [("A", "127.0.0.1")]}})
        self.addCleanup(port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor, timeout=(2,))
        hops = yield Router(resolver, port=2525).route("b.test")
        self.assertEqual(hops, [Hop("mx.b.test", "127.0.0.1", 2525)])
        try:
            yield Router(resolver).route("nx.b.test")
        except RouteError as e:
            self.assertTrue(e.permanent, e)
        else:
            self.fail("nx.b.test routed")
        for call in reactor.getDelayedCalls():
            if "twisted.names" in getattr(call.func, "__module__", "") + repr(call.func):
                call.cancel()  # the resolver's and server's own timers


def main(argv=None) -> None:
    """
    C{python -m tests.test_queue_mx ZONES_JSON}: run a DNS server for the
    end-to-end tests; prints C{dns ready PORT}, serves until killed.
    """
    import json
    import sys

    from twisted.internet import reactor

    zones = json.loads((argv or sys.argv[1:])[0])
    port = serve_dns(reactor, zones)
    print(f"dns ready {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()


class HopTextTests(unittest.TestCase):
    """How a hop is written in the relay's log lines and the start line."""

    def test_an_ipv6_address_is_written_in_brackets_before_its_port(self):
        self.assertEqual(str(Hop("::1", "::1", 26525)), "[::1]:26525")
        self.assertEqual(str(Hop("2001:db8::1", "2001:db8::1", 25)), "[2001:db8::1]:25")

    def test_an_ipv4_address_and_a_named_host_are_written_as_before(self):
        self.assertEqual(str(Hop("127.0.0.1", "127.0.0.1", 2525)), "127.0.0.1:2525")
        self.assertEqual(str(Hop("mx1.b.test", "2001:db8::1", 25)), "mx1.b.test[2001:db8::1]:25")


class UnencodableDomainTests(unittest.TestCase):
    def test_a_domain_dns_cannot_encode_is_permanent_and_said_in_words(self):
        # Before: "451 4.4.3 DNS lookup of MX localhost\ufffd failed:
        # UnicodeError", retried for the queue's whole lifetime.
        resolver = ScriptedResolver(fail={"localhost\ufffd": lambda: UnicodeError("label empty or too long")})
        err = self.failureResultOf(Router(resolver).route("localhost\ufffd"), RouteError).value
        self.assertTrue(err.permanent)
        self.assertEqual(err.status, "5.1.2")
        self.assertEqual(err.text, "domain localhost\ufffd is not a name DNS can look up")
        self.assertNotIn("UnicodeError", str(err))
