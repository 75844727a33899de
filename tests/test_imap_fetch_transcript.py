# -*- test-case-name: tests.test_imap_fetch_transcript -*-
"""
FETCH responses recorded in the session transcript from the lines the
server made of them (imap/fetch.described, transcript.server_responses),
without the transcript reading their octets again: the same events as
when it reads them.
"""

from __future__ import annotations

import imaplib
import re

from twisted.internet.testing import StringTransport

from twisted_mailhub.imap.fetch import ResponseStream, described
from twisted_mailhub.transcript import SessionEvents, Transcriber

BODY = b"Subject: secret plans\r\n\r\nline one\r\nline two\r\n"

# Field lists as FETCH makes them: an item's octets, or (label, literal octets).
CASES = [
    [(b"BODY[]", BODY)],
    [b"UID 7", (b"BODY[]", BODY), b"FLAGS (\\Seen)"],
    [(b"RFC822.HEADER", BODY[:23]), (b"RFC822.TEXT", BODY[25:])],
    [b"UID 9", (b"BODY[TEXT]", b"")],
    [(b"BODY[1.MIME]", b"Content-Type: text/plain\r\n\r\n"), b"RFC822.SIZE 44"],
    [b"UID 3", b"FLAGS ()"],
]


def _session():
    bus = SessionEvents()
    record = bus.start("imap", ("127.0.0.1", 4000), ("127.0.0.1", 143))
    return record, Transcriber(record.id, record)


def _lines(record) -> list[str]:
    return [f"{kind}: {text}" for _, _, kind, text in record.events if kind in ("C", "S")]


def test_described_responses_are_recorded_as_the_transcript_reads_their_octets():
    for n, fields in enumerate(CASES, 1):
        data, lines = described(n, fields)
        read, by_octets = _session()
        by_octets.server_bytes(data + b"a1 OK FETCH completed\r\n")
        told, by_lines = _session()
        assert by_lines.server_responses(lines)
        by_lines.server_bytes(b"a1 OK FETCH completed\r\n")
        assert _lines(told) == _lines(read), fields
        assert not any("secret" in line for line in _lines(told))


def test_a_response_whose_field_holds_a_line_end_is_left_for_the_transcript_to_read():
    # an ENVELOPE with a literal in it: only its octets come back
    data = described(1, [b'ENVELOPE (NIL {3}\r\na\r\n NIL)', (b"BODY[]", BODY)])
    assert isinstance(data, bytes)
    assert data.startswith(b"* 1 FETCH (ENVELOPE (NIL {3}\r\na\r\n NIL) BODY[] {%d}\r\n" % len(BODY))


def test_responses_are_read_as_octets_while_the_client_waits_for_a_go_ahead():
    record, t = _session()
    t.client_bytes(b"a2 APPEND INBOX {10}\r\n")  # the server's "+" is still to come
    assert not t.server_responses([b"* 1 FETCH (FLAGS ())"])
    t.server_bytes(b"+ go ahead\r\n")
    t.client_bytes(b"0123456789\r\n")
    assert _lines(record)[-3:] == ["S: + go ahead", "C: [literal: 10 octets]", "C: "]


class _RecordingTransport(StringTransport):
    """A transport below a transcript: what was written past it, and the lines it was told."""

    def __init__(self, transcriber: Transcriber):
        StringTransport.__init__(self)
        self.transcriber = transcriber
        self.recorded_by_lines = 0

    def write(self, data):
        self.transcriber.server_bytes(data)
        StringTransport.write(self, data)

    def record_responses(self, lines):
        if not self.transcriber.server_responses(lines):
            return None
        self.recorded_by_lines += 1
        below = StringTransport.write

        class Past:
            def write(_, data):
                below(self, data)

        return Past()


def test_a_stream_mixing_described_and_plain_pieces_records_the_same_as_reading_them():
    pieces = [described(1, CASES[0]), b"* 2 FETCH (BINARY[] ~{2}\r\nab)\r\n", described(3, CASES[1])]
    record, t = _session()
    transport = _RecordingTransport(t)
    done = []
    stream = ResponseStream(transport, iter(pieces), lambda: done.append(True))
    stream.chunk = 1  # a write per piece: the described ones go past the reading
    stream.start()
    read, by_octets = _session()
    by_octets.server_bytes(transport.value())
    assert done and transport.recorded_by_lines == 2
    assert _lines(record) == _lines(read)
    assert "S: * 2 FETCH (BINARY[] ~{2}" in _lines(record)


def test_transcript_of_a_real_fetch_of_bodies_shows_each_literal_as_one_line(start_hub):
    hub = start_hub("--transcript")
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    for i in range(3):
        c.append("INBOX", None, None, b"Subject: plan %d\r\n\r\nnot in the log %d\r\n" % (i, i))
    c.select("INBOX")
    typ, data = c.fetch("1:3", "(UID BODY[])")
    assert typ == "OK"
    sizes = [len(part[1]) for part in data if isinstance(part, tuple)]
    assert len(sizes) == 3
    c.logout()
    m = hub.wait_for_log(r"(imap#\d+) S: \S+ OK .*FETCH completed")
    cid = re.escape(m.group(1))
    lines = re.findall(cid + r" S: (.*)", hub.log)
    start = next(i for i, line in enumerate(lines) if line.startswith("* 1 FETCH"))
    # \Seen was set by BODY[]: each response tells the new FLAGS after the literal
    for n, size in enumerate(sizes):
        head, summary, tail = lines[start + 3 * n : start + 3 * n + 3]
        assert re.fullmatch(r"\* %d FETCH \(UID \d+ BODY\[\] \{%d\}" % (n + 1, size), head)
        assert summary == "[literal: %d octets]" % size
        assert tail == " FLAGS (\\Seen \\Recent))"  # (appended in this session: \Recent here)
    assert "not in the log" not in hub.log
