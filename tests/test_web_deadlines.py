"""
Web listener time limits (issue 8 item 26's kind): a slowloris client
trickling its header fields, or a body that never ends, gets 408 and is
closed; with task.Clock, and on the real hub with raw sockets.
"""

from __future__ import annotations

import socket
import time

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web import resource

from twisted_mailhub.web.deadlines import DeadlineSite

from tests.rawclient import read_until_closed


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello\n"

    def render_POST(self, request):
        return b"got %d\n" % len(request.content.read())


class DeadlineChannelTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.site = DeadlineSite(Hello(), timeout=120, reactor=self.clock)
        self.site.header_timeout = 20
        self.site.body_timeout = 60

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, None)
        return channel, transport

    def test_trickled_header_fields_get_408_at_the_header_deadline(self):
        channel, transport = self.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            channel.dataReceived(bytes([byte]))
            self.clock.advance(1)  # well inside the idle limit, every time
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertIn(b"header fields did not arrive within 20 seconds", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_big_body_flowing_steadily_goes_on_past_the_body_deadline_and_a_trickled_one_does_not(self):
        from twisted_mailhub.web.deadlines import BODY_RATE

        channel, transport = self.connect()
        size = int(BODY_RATE * 100)  # 100 s at the slowest rate let go on: over the 60 s limit
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(8):  # a little faster than that rate: 80 s
            channel.dataReceived(b"x" * int(BODY_RATE * 12))
            self.clock.advance(10)
        self.assertFalse(transport.disconnecting, transport.value())
        channel.dataReceived(b"x" * (size - 8 * int(BODY_RATE * 12)))
        self.assertIn(b"got %d" % size, transport.value())
        # The same size trickled: cut at the limit, as before.
        channel2, transport2 = self.connect()
        channel2.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nabc" % size)
        for _ in range(6):
            self.clock.advance(10)
            channel2.dataReceived(b"d")
        self.assertIn(b"body did not arrive within 60 seconds", transport2.value())
        self.assertTrue(transport2.disconnecting)

    def test_body_never_finished_gets_408_at_the_body_deadline(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        self.clock.advance(59)
        channel.dataReceived(b"d")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1.5)
        self.assertIn(b"408 Request Timeout", transport.value())
        self.assertIn(b"body did not arrive within 60 seconds", transport.value())

    def test_prompt_requests_on_one_connection_are_answered_and_not_cut(self):
        channel, transport = self.connect()
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.clock.advance(19)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        self.clock.advance(100)
        out = transport.value()
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 4)
        self.assertIn(b"got 3", out)
        self.assertNotIn(b"408", out)
        self.assertFalse(transport.disconnecting)

    def test_client_that_does_not_read_the_408_is_dropped(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HT")
        self.clock.advance(20)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(15)
        self.assertTrue(transport.disconnected)

    def test_a_body_declared_over_the_size_limit_gets_413_and_is_not_read(self):
        # Twisted keeps a body in a temporary file until it is complete:
        # one request of any Content-Length, logged in or not, filled the disk.
        self.site.max_body = 1000
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000000\r\n\r\n" + b"z" * 5000)
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out)
        self.assertIn(b"a request body may be at most 1000 octets", out)
        self.assertNotIn(b"got", out)
        self.assertTrue(transport.disconnecting)

    def test_a_refusal_before_the_request_is_a_page_for_a_browser_and_json_for_the_api(self):
        # A webmail user attaching too much got one line of plain text.
        self.site.max_body = 1000
        for path, kind in ((b"/compose", b"text/html"), (b"/api/v1/accounts/me/files/a", b"application/json")):
            channel, transport = self.connect()
            channel.dataReceived(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            head, _, body = transport.value().partition(b"\r\n\r\n")
            self.assertIn(b"\r\ncontent-type: " + kind, head)
            if kind == b"text/html":
                self.assertIn(b"<h1>413 Too large</h1>", body)
                self.assertIn(b"a request body may be at most 1000 octets (0 MiB); use FTP or SFTP for bigger files.</p>", body)
                self.assertIn(b'href="/static/mailhub.css"', body)
            else:
                import json

                self.assertEqual(json.loads(body)["error"]["status"], 413)
                self.assertEqual(json.loads(body)["error"]["code"], "too_large")

    def test_a_chunked_body_over_the_size_limit_gets_413(self):
        from twisted_mailhub.web.site import WebRequest

        self.site.max_body = 1000
        self.site.requestFactory = WebRequest
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            channel.dataReceived(b"190\r\n" + b"z" * 400 + b"\r\n")
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out)
        self.assertNotIn(b"got", out)
        self.assertTrue(transport.disconnecting)

    def test_a_body_at_the_size_limit_is_taken(self):
        self.site.max_body = 1000
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"z" * 1000)
        self.assertIn(b"got 1000", transport.value())


def test_an_unauthenticated_request_with_a_huge_body_is_refused_before_it_is_read(start_hub):
    hub = start_hub()
    s = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    s.sendall(b"PUT /api/v1/accounts/me/files/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000000\r\n\r\n")
    try:
        s.sendall(b"z" * 65536)
    except OSError:
        pass  # closed already: the answer is waiting
    out = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 413 Content Too Large"), out[:200]
    assert b"a request body may be at most 67108864 octets (64 MiB)" in out
    # A body that fits is still taken (and answered as before: not logged in).
    ok = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    ok.sendall(b"PUT /api/v1/accounts/me/files/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc")
    assert read_until_closed(ok).startswith(b"HTTP/1.1 401")


def test_web_slowloris_headers_and_unfinished_body_are_cut_off(start_hub):
    hub = start_hub("--web-header-timeout", "1", "--web-body-timeout", "1")
    start = time.monotonic()
    slow = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    body = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    body.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nuser=al")
    for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: b\r\n":
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.1)
    out = read_until_closed(slow)
    assert out.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"header fields did not arrive within 1 seconds" in out
    out = read_until_closed(body)
    assert out.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"body did not arrive within 1 seconds" in out
    assert time.monotonic() - start < 15
    # The listener goes on serving prompt clients.
    ok = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert read_until_closed(ok).startswith(b"HTTP/1.1 200")


def test_a_big_body_sent_slowly_but_steadily_is_not_cut_at_the_body_timeout(start_hub):
    # A 16 KiB form on a slow uplink, 1.2 s in all, with --web-body-timeout 1:
    # it was 408 after 1 s; now its time is 1 s per 4 KiB (4 s). (A piece
    # every 0.3 s is 13 KiB/s: at 0.5 s a piece the body came at exactly
    # the 4 KiB/s floor, and a busy machine's late piece was cut.)
    hub = start_hub("--web-body-timeout", "1")
    size = 16384
    s = socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=20)
    s.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % size)
    body = b"username=alice&password=wrong&x=" + b"y" * (size - 32)
    for n in range(4):
        time.sleep(0.3)
        s.sendall(body[n * 4096 : (n + 1) * 4096])
    out = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 ") and not out.startswith(b"HTTP/1.1 408"), out[:300]
