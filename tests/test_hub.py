from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_mailhub.hub import TrustedNetworks, is_secure, set_nodelay, with_backlog


class TrustedNetworksTests(SynchronousTestCase):
    def test_membership(self):
        trusted = TrustedNetworks("127.0.0.0/8, ::1/128, 10.1.0.0/16")
        self.assertIn("127.0.0.1", trusted)
        self.assertIn("::1", trusted)
        self.assertIn("::ffff:127.0.0.1", trusted)  # IPv4-mapped, as dual-stack sockets report it
        self.assertIn("10.1.2.3", trusted)
        self.assertNotIn("10.2.0.1", trusted)
        self.assertNotIn("not-an-address", trusted)

    def test_bad_network_is_an_error(self):
        self.assertRaises(ValueError, TrustedNetworks, "banana")


class TransportHelperTests(SynchronousTestCase):
    def test_plain_transport_is_not_secure(self):
        self.assertFalse(is_secure(StringTransport()))

    def test_nodelay_reaches_the_socket_through_wrappers(self):
        calls = []

        class Socketish:
            def setTcpNoDelay(self, on):
                calls.append(on)

        class Wrapper:
            transport = Socketish()

        set_nodelay(Wrapper())
        self.assertEqual(calls, [True])


class BacklogTests(SynchronousTestCase):
    def test_every_tcp_listener_gets_a_backlog_unless_it_names_one(self):
        self.assertEqual(with_backlog("tcp:2121"), "tcp:2121:backlog=128")
        self.assertEqual(with_backlog("tcp:21:backlog=5"), "tcp:21:backlog=5")
        self.assertEqual(with_backlog("unix:/tmp/s"), "unix:/tmp/s")
