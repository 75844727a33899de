"""
The COMPRESS=DEFLATE layer (twisted_mailhub.imap.compress) on its own:
StringTransport for the wire, task.Clock for the reactor's turns.
"""

from __future__ import annotations

import random
import zlib

from twisted.internet import protocol, task
from twisted.internet.testing import StringTransport

from twisted_mailhub.imap.compress import STEP, DeflateLayer


class Collector(protocol.Protocol):
    def __init__(self):
        self.received = []
        self.lost = []

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost.append(reason)


def layer():
    transport = StringTransport()
    above = Collector()
    clock = task.Clock()
    return DeflateLayer(above, transport, clock), above, transport, clock


def test_writes_of_one_turn_are_flushed_once_at_its_end():
    deflate, _, transport, clock = layer()
    for n in range(50):
        deflate.write(b"* %d FETCH (FLAGS (\\Seen))\r\n" % n)
    assert transport.value() == b""  # nothing complete before the turn ends
    clock.advance(0)
    wire = transport.value()
    assert wire.endswith(b"\x00\x00\xff\xff")  # one sync flush
    assert wire.count(b"\x00\x00\xff\xff") == 1
    assert zlib.decompressobj(-15).decompress(wire) == b"".join(b"* %d FETCH (FLAGS (\\Seen))\r\n" % n for n in range(50))


def test_a_long_burst_is_flushed_every_step_so_the_transport_can_push_back():
    deflate, _, transport, clock = layer()
    chunk = random.Random(1).randbytes(256 * 1024)  # does not compress
    deflate.write(chunk)
    assert len(transport.value()) > len(chunk) // 2  # flushed without waiting for the turn
    clock.advance(0)
    assert zlib.decompressobj(-15).decompress(transport.value()) == chunk


def test_input_is_inflated_in_steps_and_not_while_paused():
    deflate, above, _, _ = layer()
    plain = b"a" * (5 * STEP)
    packed = zlib.compressobj(9, zlib.DEFLATED, -15)
    wire = packed.compress(plain) + packed.flush(zlib.Z_SYNC_FLUSH)
    deflate.pauseProducing()
    deflate.dataReceived(wire)
    assert above.received == []
    deflate.resumeProducing()
    assert all(len(piece) <= STEP for piece in above.received)
    assert b"".join(above.received) == plain


def test_lose_connection_flushes_what_was_written():
    deflate, _, transport, _ = layer()
    deflate.write(b"* BYE bye\r\n")
    deflate.loseConnection()
    assert zlib.decompressobj(-15).decompress(transport.value()) == b"* BYE bye\r\n"
    assert transport.disconnecting


def test_a_corrupt_stream_is_answered_with_bye_and_closed():
    deflate, above, transport, _ = layer()
    deflate.dataReceived(b"\xff\xff\xff\xffgarbage")
    assert above.received == []
    assert zlib.decompressobj(-15).decompress(transport.value()) == b"* BYE compressed stream is corrupt\r\n"
    assert transport.disconnecting
