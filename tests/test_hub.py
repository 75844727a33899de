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

    def test_nodelay_reaches_the_socket_through_wrappers_and_leaves_unix_sockets_alone(self):
        import socket

        class Connection:
            def __init__(self, sock):
                self.socket = sock

        class Wrapper:
            def __init__(self, transport):
                self.transport = transport

        with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 0)
                set_nodelay(Wrapper(Wrapper(Connection(accepted))))
                self.assertEqual(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        a, b = socket.socketpair()
        with a, b:
            set_nodelay(Wrapper(Connection(a)))  # no TCP_NODELAY on a UNIX socket, and no error
        set_nodelay(StringTransport())  # a test transport has no socket


class BacklogTests(SynchronousTestCase):
    def test_every_tcp_listener_gets_a_backlog_unless_it_names_one(self):
        self.assertEqual(with_backlog("tcp:2121"), "tcp:2121:backlog=128")
        self.assertEqual(with_backlog("tcp:21:backlog=5"), "tcp:21:backlog=5")
        self.assertEqual(with_backlog("unix:/tmp/s"), "unix:/tmp/s")


class ConnectionIdTests(SynchronousTestCase):
    def make_hub(self):
        from twisted.internet import task

        from twisted_mailhub.accounts import AccountBook
        from twisted_mailhub.hub import Hub
        from twisted_mailhub.store.memory import MemoryStore

        return Hub(task.Clock(), {}, AccountBook(["localhost"]), MemoryStore(), "/nonexistent", "mail.test")

    def test_a_transcribed_connection_keeps_the_transcript_id(self):
        from twisted_mailhub.transcript import Transcriber

        class Protocol:
            pass

        wrapper = StringTransport()
        wrapper.transcriber = Transcriber("smtp#41")
        p = Protocol()
        p.transport = wrapper
        self.assertEqual(self.make_hub().connection_made(p, "smtp"), "smtp#41")

    def test_a_plain_connection_gets_a_fresh_id_and_its_own_portal(self):
        class Protocol:
            pass

        hub = self.make_hub()
        a, b = Protocol(), Protocol()
        a.transport, b.transport = StringTransport(), StringTransport()
        ida, idb = hub.connection_made(a, "pop3"), hub.connection_made(b, "pop3")
        self.assertNotEqual(ida, idb)
        self.assertTrue(ida.startswith("pop3#"))
        self.assertIsNot(a.portal, b.portal)


class ConnectionLimitsTests(SynchronousTestCase):
    def test_per_ip_and_total(self):
        from twisted_mailhub.hub import ConnectionLimits

        limits = ConnectionLimits(total=3, per_ip=2)
        self.assertTrue(limits.admit("192.0.2.1"))
        self.assertTrue(limits.admit("192.0.2.1"))
        self.assertFalse(limits.admit("192.0.2.1"))
        self.assertTrue(limits.admit("192.0.2.2"))
        self.assertFalse(limits.admit("192.0.2.3"))  # total reached
        limits.release("192.0.2.1")
        self.assertTrue(limits.admit("192.0.2.3"))
        self.assertEqual(limits.by_ip, {"192.0.2.1": 1, "192.0.2.2": 1, "192.0.2.3": 1})

    def test_limited_factory_releases_when_the_connection_closes(self):
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.address import IPv4Address

        from twisted_mailhub.hub import ConnectionLimits, LimitedFactory

        limits = ConnectionLimits(total=0, per_ip=1)
        factory = LimitedFactory(Factory.forProtocol(Protocol), limits, "pop3")
        addr = IPv4Address("TCP", "192.0.2.1", 1234)
        first = factory.buildProtocol(addr)
        refused = factory.buildProtocol(addr)
        t = StringTransport()
        refused.makeConnection(t)
        self.assertEqual(t.value(), b"-ERR [SYS/TEMP] too many connections from your address\r\n")
        self.assertTrue(t.disconnecting)
        first.connectionLost(None)
        self.assertIsInstance(factory.buildProtocol(addr), Protocol)
