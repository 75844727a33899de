"""
IMAP over a message anyone can send that is costly to take apart (thousands
of MIME parts): its BODYSTRUCTURE, BODY and parts are made while every
other client of the hub is still answered, and they are what they were.
"""

from __future__ import annotations

import imaplib
import re
import threading
import time

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from tests.test_web_big_messages import many_parts, send
from twisted_mailhub.imap.fetch import ResponseStream, parse_fetch_items
from twisted_mailhub.imap.message import Part


def answered_meanwhile(hub, command):
    """
    Run C{command(imap)} (alice's session, INBOX selected) in a thread
    while bob's IMAP client sends NOOP after NOOP; returns (its result, its
    seconds, the slowest NOOP's seconds).
    """
    alice = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=120)
    alice.login("alice", "secret")
    alice.select("INBOX")
    answered = noops_while(hub, lambda: command(alice))
    alice.logout()
    return answered


def noops_while(hub, work):
    """
    Run C{work()} in a thread while bob's imaplib session sends NOOP after
    NOOP; returns (its result, its seconds, the slowest NOOP's seconds).
    """
    bob = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=120)
    bob.login("bob", "hungry")
    result = {}

    def run():
        started = time.monotonic()
        result["answer"] = work()
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=run)
    worker.start()
    slowest = 0.0
    while worker.is_alive():
        started = time.monotonic()
        assert bob.noop()[0] == "OK"
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.005)
    worker.join()
    bob.logout()
    return result["answer"], result["seconds"], slowest


@pytest.mark.parametrize("item", ["BODYSTRUCTURE", "BODY", "BODY.PEEK[2999]"])
def test_another_client_is_answered_while_imap_takes_a_3000_part_message_apart(hub, item):
    send(hub, many_parts(3000))
    hub.wait_for_message(to="alice@localhost", subject="many parts", timeout=30)
    (status, data), seconds, slowest = answered_meanwhile(hub, lambda imap: imap.uid("FETCH", "1", f"({item})"))
    assert status == "OK", data
    if item == "BODY.PEEK[2999]":
        assert data[0][1] == b"abc"
    else:
        text = data[0].decode() if isinstance(data[0], bytes) else data[0][0].decode()
        assert text.count('("APPLICATION" "OCTET-STREAM"') == 3000
        assert '"MIXED"' in text
        # The boundary and the dispositions are extension data: BODYSTRUCTURE only.
        assert ('"BOUNDARY" "zz"' in text and '"f2999.bin"' in text) == (item == "BODYSTRUCTURE")
    # Bob's NOOPs were answered while the structure was made, not after it.
    assert slowest < max(seconds / 4, 0.05), (slowest, seconds)


def test_a_costly_message_among_small_ones_keeps_every_response_in_order(hub):
    small = b"From: a@example.net\r\nTo: alice@localhost\r\nSubject: small %d\r\n\r\nhello\r\n"
    send(hub, small % 1)
    send(hub, many_parts(3000))
    send(hub, small % 3)
    hub.wait_for_message(to="alice@localhost", subject="small 3", timeout=30)
    imap = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=120)
    imap.login("alice", "secret")
    imap.select("INBOX")
    status, data = imap.fetch("1:3", "(UID BODY.PEEK[1] ENVELOPE)")
    assert status == "OK"
    responses = [d for d in data if isinstance(d, tuple)]
    assert [int(re.match(rb"(\d+) ", r[0]).group(1)) for r in responses] == [1, 2, 3]
    assert [r[1] for r in responses] == [b"hello\r\n", b"abc", b"hello\r\n"]
    assert b'"small 3"' in responses[2][0] or b'"small 3"' in data[-1]
    # And the same again, from the structure the hub remembers.
    status, data = imap.fetch("2", "(BODYSTRUCTURE)")
    assert status == "OK" and data[0].count(b'("APPLICATION" "OCTET-STREAM"') == 3000
    imap.logout()


def test_a_100000_part_message_is_shown_as_one_opaque_body_and_its_octets_are_all_there(hub):
    # Past MAX_PARTS (10,000, Dovecot's bound) the parts are not taken
    # apart: before, this message held a parsing thread ~17 s.
    parts = b"".join(b"--zz\r\n\r\n%d\r\n" % i for i in range(100_000))
    raw = (
        b"From: a@example.net\r\nTo: alice@localhost\r\nSubject: 100000 parts\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n" + parts + b"--zz--\r\n"
    )
    send(hub, raw)
    hub.wait_for_message(to="alice@localhost", subject="100000 parts", timeout=30)
    (status, data), seconds, slowest = answered_meanwhile(hub, lambda imap: imap.fetch("1", "(BODYSTRUCTURE BODY.PEEK[1] BODY.PEEK[TEXT])"))
    assert status == "OK", data
    head = data[0][0]
    assert b'BODYSTRUCTURE ("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" %d ' % len(parts + b"--zz--\r\n") in head, head[:300]
    assert data[0][1] == parts + b"--zz--\r\n"  # BODY[1]: the whole body, as sent
    assert data[1][1] == parts + b"--zz--\r\n"  # BODY[TEXT]
    assert seconds < 10, seconds


def test_the_thread_makes_what_the_reactor_would():
    from twisted_mailhub.imap.fetch import costly_to_parse, parsed_fields

    raw = many_parts(100)
    assert costly_to_parse(raw) and not costly_to_parse(many_parts(10))
    items = parse_fetch_items(b"(ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[99] BODY.PEEK[50.MIME] BINARY.PEEK[7] BODY.PEEK[TEXT]<0.10>)")
    part = Part(raw)
    fields = parsed_fields(raw, items)
    assert fields[0] == b"ENVELOPE " + part.envelope()
    assert fields[1] == b"BODYSTRUCTURE " + part.bodystructure(True)
    assert fields[2] == b"BODY " + part.bodystructure(False)
    assert fields[3] == (b"BODY[99]", b"abc")
    assert fields[4][1].startswith(b"Content-Type: application/octet-stream\r\n")
    assert fields[6] == (b"BODY[TEXT]<0>", b"--zz\r\nCont")


def test_a_response_stream_writes_nothing_after_a_deferred_piece_until_it_fires():
    transport = StringTransport()
    later: defer.Deferred = defer.Deferred()
    done = []

    def pieces():
        yield b"* 1 FETCH (UID 1)\r\n"
        holder = []
        later.addCallback(holder.append)
        yield later
        yield b"* 2 FETCH (UID %d)\r\n" % holder[0]
        yield b"* 3 FETCH (UID 3)\r\n"

    stream = ResponseStream(transport, pieces(), lambda: done.append(True))
    stream.start()
    assert transport.value() == b"* 1 FETCH (UID 1)\r\n" and not done
    stream.pauseProducing()
    stream.resumeProducing()  # the transport's resume must not step past the piece awaited
    assert transport.value() == b"* 1 FETCH (UID 1)\r\n" and not done
    later.callback(2)
    assert transport.value() == b"* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\n* 3 FETCH (UID 3)\r\n"
    assert done == [True] and transport.producer is None


def test_a_response_stream_stopped_while_it_waits_writes_no_more():
    transport = StringTransport()
    later: defer.Deferred = defer.Deferred()
    done = []
    stream = ResponseStream(transport, iter([b"a", later, b"b"]), lambda: done.append(True))
    stream.start()
    stream.stopProducing()  # the connection was lost
    later.callback(None)
    assert transport.value() == b"a" and not done
