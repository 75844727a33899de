"""
An SMTP connection's record keeps what was said as it came, and a
message as its count, and makes them C:/S: lines only when someone reads
or watches it (L{twisted_mailhub.smtp.record.MailRecord}). What it shows
must be exactly what a record transcribed as it went shows (a
L{SessionRecord} fed through a L{Transcriber}, as before): the same
events, sequence numbers, times, texts, counts, and the same events told
to a watcher that comes at any point; and no password is ever kept raw.
"""

from __future__ import annotations

import pytest

from twisted_mailhub.smtp.record import MailRecord
from twisted_mailhub.transcript import SessionEvents, SessionRecord, Transcriber

from tests.record_helpers import start_watching

SECRETS = (b"c2VjcmV0", b"YWxpY2UAYWxpY2UAc2VjcmV0", b"hunter2", b"s3cret")

BODY = b"From: a@b\r\nTo: alice@localhost\r\nSubject: x\r\n\r\n" + b"x" * 70 + b"\r\n" + b"..a stuffed dot\r\n" + b"last\r\n"

HELLO = [
    ("s", b"220 mail.test ESMTP\r\n"),
    ("c", b"EHLO client.test\r\n"),
    ("s", b"250-mail.test Hello client.test [127.0.0.1]\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 HELP\r\n"),
]


def _envelope(body: bytes, qid: bytes = b"6921A3F0ABCD00001") -> list:
    return [
        ("c", b"MAIL FROM:<judy@jbc.test>\r\n"),
        ("s", b"250 2.1.0 Ok\r\n"),
        ("c", b"RCPT TO:<alice@localhost>\r\n"),
        ("s", b"250 2.1.5 Ok\r\n"),
        ("c", b"DATA\r\n"),
        ("s", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        ("c", body),
        ("s", b"250 2.0.0 Ok: queued as " + qid + b"\r\n"),
    ]


QUIT = [("c", b"QUIT\r\n"), ("s", b"221 2.0.0 Bye\r\n"), ("end",)]

SESSIONS = {
    "one message a read, one command a round trip": HELLO + _envelope(BODY + b".\r\n") + _envelope(b"Subject: two\r\n\r\nhi\r\n.\r\n") + QUIT,
    "a message in pieces, cut inside lines and inside the end mark": HELLO
    + [
        ("c", b"MAIL FROM:<>\r\n"),
        ("s", b"250 2.1.0 Ok\r\n"),
        ("c", b"RCPT TO:<alice@localhost>\r\n"),
        ("s", b"250 2.1.5 Ok\r\n"),
        ("c", b"DATA\r\n"),
        ("s", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        ("c", BODY[:10]),
        ("c", BODY[10:50]),
        ("c", BODY[50:] + b"\r\n."),
        ("c", b"\r"),
        ("c", b"\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00002\r\n"),
    ]
    + QUIT,
    "an empty message, and one whose first line is a dot": HELLO
    + _envelope(b".\r\n")
    + _envelope(b".x\r\n..\r\n.\r\n"),
    "pipelined: the envelope in one read, the next command after the end mark": HELLO
    + [
        ("c", b"MAIL FROM:<judy@jbc.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"),
        ("s", b"250 2.1.0 Ok\r\n"),
        ("s", b"250 2.1.5 Ok\r\n"),
        ("s", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        ("c", BODY + b".\r\nRSET\r\nNOOP\r\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00003\r\n"),
        ("s", b"250 2.0.0 Ok\r\n"),
        ("s", b"250 2.0.0 Ok\r\n"),
    ]
    + QUIT,
    "a queue id with 354 in it, and replies gathered in one write": HELLO
    + _envelope(b"hi\r\n.\r\n", qid=b"69213540354000A1")
    + [("c", b"NOOP\r\nRSET\r\n"), ("s", b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n")],
    "AUTH PLAIN with its initial response, then AUTH LOGIN step by step": HELLO
    + [
        ("tls", "TLSv1.3 TLS_AES_256_GCM_SHA384"),
        ("c", b"AUTH PLAIN YWxpY2UAYWxpY2UAc2VjcmV0\r\n"),
        ("login", "alice@localhost"),
        ("s", b"235 2.7.0 Authentication successful\r\n"),
        ("c", b"auth login\r\n"),
        ("s", b"334 VXNlcm5hbWU6\r\n"),
        ("c", b"YWxpY2U=\r\n"),
        ("s", b"334 UGFzc3dvcmQ6\r\n"),
        ("c", b"c2VjcmV0\r\n"),
        ("s", b"503 5.5.1 Error: already authenticated\r\n"),
    ]
    + _envelope(b"hi\r\n.\r\n")
    + QUIT,
    "a refused AUTH, then the password pasted anyway, then a command": HELLO
    + [
        ("c", b"AUTH LOGIN\r\n"),
        ("s", b"538 5.7.11 Encryption required for requested authentication mechanism; use STARTTLS first\r\n"),
        ("c", b"c2VjcmV0\r\n"),
        ("s", b"500 5.5.2 Error: command not recognized (not shown: after AUTH it may be a password); try HELP\r\n"),
        ("c", b"AUTH PLAIN\r\n"),
        ("s", b"538 5.7.11 Encryption required\r\n"),
        ("c", b"NOOP\r\n"),
        ("s", b"250 2.0.0 Ok\r\n"),
    ]
    + QUIT,
    "PASS and LOGIN words, control bytes, not UTF-8, an over-long line": HELLO
    + [
        ("c", b"PASS hunter2\r\n"),
        ("s", b"500 5.5.2 Error: command 'PASS' not recognized; try HELP\r\n"),
        ("c", b"a1 LOGIN alice s3cret\r\n"),
        ("s", b"500 5.5.2 Error: command 'a1' not recognized; try HELP\r\n"),
        ("c", b"HELO \x1b[31mred\r\n"),
        ("s", b"501 5.5.4 Syntax: HELO hostname (control character \\x1b)\r\n"),
        ("c", b"MAIL FROM:<caf\xe9@x>\r\n"),
        ("c", b"X" * 5000),
        ("c", b"Y" * 10 + b"\r\n"),
        ("s", b"500 5.5.2 Error: line too long\r\n"),
    ]
    + QUIT,
    "typed by hand with bare LF line ends": [
        ("s", b"220 mail.test ESMTP\r\n"),
        ("c", b"helo me\n"),
        ("s", b"250 mail.test\r\n"),
        ("c", b"mail from:<a@b>\n"),
        ("s", b"250 2.1.0 Ok\r\n"),
        ("c", b"rcpt to:<alice@localhost>\n"),
        ("s", b"250 2.1.5 Ok\r\n"),
        ("c", b"data\n"),
        ("s", b"354 End data with a line holding only a dot (.)\r\n"),
        ("c", b"Hello\n"),
        ("c", b"there\n.\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00004\r\n"),
        ("c", b"quit\n"),
        ("s", b"221 2.0.0 Bye\r\n"),
    ],
    "a bare LF dot line inside a CRLF message": HELLO + _envelope(b"a\r\n.\nb\r\n.\r\n"),
    "typed: a bare LF dot line in a CRLF session is message text, to a CRLF dot": HELLO
    + _envelope(b"Subject: x\r\n\r\nhi\n")[:-1]
    + [
        ("c", b".\n"),
        ("c", b"QUIT\r\n"),
        ("c", b"y" * 5000),
        ("c", b"\n"),
        ("c", b".\r\n"),
        ("c", b"z" * 5000 + b"\r"),
        ("c", b"\n.\r\n"),
        ("s", b"550 5.5.2 Error: message refused: bare <CR> or <LF> in data (lines must end with <CR><LF>)\r\n"),
    ]
    + QUIT,
    "a whole session piped in one read": [
        ("s", b"220 mail.test ESMTP\r\n"),
        ("c", b"helo me\nmail from:<a@b>\nrcpt to:<alice@localhost>\ndata\nHello\n.\nquit\n"),
        ("s", b"250 mail.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"),
        ("s", b"354 End data with a line holding only a dot (.)\r\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00005\r\n"),
        ("s", b"221 2.0.0 Bye\r\n"),
        ("end",),
    ],
    "two messages piped in one read": [
        ("s", b"220 mail.test ESMTP\r\n"),
        ("c", b"helo me\r\nmail from:<a@b>\r\nrcpt to:<alice@localhost>\r\ndata\r\nHello\r\n.\r\nmail from:<a@b>\r\nrcpt to:<alice@localhost>\r\ndata\r\nAgain\r\n.\r\nquit\r\n"),
        ("s", b"250 mail.test\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"),
        ("s", b"354 End data with a line holding only a dot (.)\r\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00005\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with a line holding only a dot (.)\r\n"),
        ("s", b"250 2.0.0 Ok: queued as 6921A3F0ABCD00006\r\n"),
        ("s", b"221 2.0.0 Bye\r\n"),
        ("end",),
    ],
    "a message cut off by a timeout, and one by a hang-up": HELLO
    + _envelope(b"x" * 5000)[:-1]
    + [("c", b"\r\nmore\r\n"), ("s", b"421 4.4.2 mail.test Error: message took too long to send\r\n"), ("c", b"late\r\n.\r\n"), ("end",)],
    "a hang-up inside a message": HELLO + _envelope(b"a line\r\nhalf a li")[:-1] + [("end",)],
}


class StepClock:
    """A clock that moves only between the steps of a session: every event of one step has its time."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _pair(max_lines: int = 5000, reads: str = "client_bytes"):
    """
    The SMTP record and a record transcribed as it goes, each on a bus of
    its own with its own clock. C{reads}: how the SMTP record is given the
    client's reads: C{client_bytes}, or C{reader} (the closure the SMTP
    connection reads through, L{MailRecord.reader}); C{writer}: the reader,
    and the replies through the closure the connection writes them
    through (L{MailRecord.writer}), not C{server_bytes}.
    """
    made = []
    for kind in (MailRecord, SessionRecord):
        clock = StepClock()
        bus = SessionEvents(max_lines=max_lines, clock=clock)
        record = bus.start("smtp", ("127.0.0.1", 40000), ("127.0.0.1", 25), id="smtp#7", kind=kind)
        if kind is MailRecord:
            taken = []
            feed = {
                "c": record.client_bytes if reads == "client_bytes" else record.reader(taken.append),
                "s": record.writer(taken.append) if reads == "writer" else record.server_bytes,
            }
        else:
            transcriber = Transcriber(record.id, record)
            feed = {"c": transcriber.client_bytes, "s": transcriber.server_bytes}
        made.append((bus, clock, record, feed))
    return made


def _play(step, record, feed) -> None:
    what = step[0]
    if what in ("c", "s"):
        if step[1]:
            feed[what](step[1])
        if what == "c" and isinstance(record, MailRecord):
            _as_the_connection_reads_it(record, step[1])
    elif what == "login":
        record.logged_in(step[1])
    elif what == "tls":
        record.encrypted(step[1])
    elif what == "end":
        record.closed()


def _as_the_connection_reads_it(record: MailRecord, data: bytes) -> None:
    """What the SMTP connection tells the record of a read that is a whole message (MailhubSMTP._whole_message)."""
    size = len(data) - 3
    segment = data[:size]
    pairs = segment.count(b"\r\n")
    if data[-5:] == b"\r\n.\r\n" and data.find(b"\r\n.\r\n") == size - 2 and data[:1] != b"." and segment.count(b"\r") == segment.count(b"\n") == pairs:
        record.message_read(pairs, size)


def _kept_raw(record: MailRecord) -> bytes:
    """Every octet the SMTP record holds, however kept."""
    out = []
    for entry in record._events:
        for part in entry if isinstance(entry, tuple) else (entry,):
            out.append(part if isinstance(part, bytes) else str(part).encode())
    out.append(record._unfinished)
    return b"|".join(out)


def _same(lazy: MailRecord, eager: SessionRecord) -> None:
    assert list(lazy.events) == list(eager.events)
    assert lazy.dropped == eager.dropped
    assert lazy.summary() == eager.summary()


@pytest.mark.parametrize("reads", ["client_bytes", "reader", "writer"])
@pytest.mark.parametrize("name", list(SESSIONS))
def test_an_smtp_session_nobody_watched_reads_exactly_as_one_transcribed_as_it_went(name, reads):
    (_, lazy_clock, lazy, lazy_feed), (_, eager_clock, eager, eager_feed) = _pair(reads=reads)
    for step in SESSIONS[name]:
        lazy_clock.now += 0.125
        eager_clock.now += 0.125
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
        assert not any(secret in _kept_raw(lazy) for secret in SECRETS)
    _same(lazy, eager)
    assert not any(secret in _kept_raw(lazy) for secret in SECRETS)


def test_a_message_nobody_watched_is_kept_as_its_count_not_its_text():
    (_, _, lazy, feed), _ = _pair()
    for step in HELLO + _envelope(BODY + b".\r\n")[:-1]:
        _play(step, lazy, feed)
    assert b"stuffed" not in _kept_raw(lazy)
    assert [text for _, _, kind, text in lazy.events][-3:] == ["354 End data with <CR><LF>.<CR><LF>", "[message: %d lines, %d octets]" % (BODY.count(b"\n"), len(BODY)), "."]


@pytest.mark.parametrize("reads", ["client_bytes", "reader", "writer"])
@pytest.mark.parametrize("name", list(SESSIONS))
@pytest.mark.parametrize("how", ["all", "list", "session", "read"])
def test_a_watcher_or_reader_coming_at_any_step_sees_exactly_what_it_saw_before(name, how, reads):
    steps = SESSIONS[name]
    for cut in range(len(steps) + 1):
        (lazy_bus, lazy_clock, lazy, lazy_feed), (eager_bus, eager_clock, eager, eager_feed) = _pair(reads=reads)
        told = {"lazy": [], "eager": []}
        for n, step in enumerate(steps + [("c", b"")]):
            lazy_clock.now += 0.125
            eager_clock.now += 0.125
            if n == cut:
                for key, bus, record in (("lazy", lazy_bus, lazy), ("eager", eager_bus, eager)):
                    start_watching(how, bus, record, told[key])
            _play(step, lazy, lazy_feed)
            _play(step, eager, eager_feed)
        assert told["lazy"] == told["eager"], f"watching from step {cut}"
        _same(lazy, eager)


@pytest.mark.parametrize("reads", ["client_bytes", "writer"])
def test_a_long_session_nobody_reads_keeps_its_last_events_as_one_transcribed_as_it_went(reads):
    (_, lazy_clock, lazy, lazy_feed), (_, eager_clock, eager, eager_feed) = _pair(max_lines=5, reads=reads)
    steps = HELLO + _envelope(BODY + b".\r\n") * 150 + QUIT
    for step in steps:
        lazy_clock.now += 0.125
        eager_clock.now += 0.125
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
        assert len(lazy._events) <= 5 + 256 + 1
    _same(lazy, eager)
    assert lazy.dropped == lazy.summary()["lines"] - 5


@pytest.mark.parametrize("name", list(SESSIONS))
def test_the_reader_hands_each_read_on_whole_and_in_order(name):
    # MailRecord.reader is the SMTP connection's dataReceived: every read
    # goes on to the line engine as it came, once each, in order.
    clock = StepClock()
    bus = SessionEvents(max_lines=5000, clock=clock)
    record = bus.start("smtp", ("127.0.0.1", 40000), ("127.0.0.1", 25), id="smtp#7", kind=MailRecord)
    taken = []
    read = record.reader(taken.append)
    reads = [step[1] for step in SESSIONS[name] if step[0] == "c" and step[1]]
    for data in reads:
        read(data)
    assert taken == reads


@pytest.mark.parametrize("name", list(SESSIONS))
def test_the_writer_hands_each_reply_on_whole_and_in_order_after_the_reads(name):
    # MailRecord.writer is how the SMTP connection writes its replies:
    # every reply goes on to the line engine as it came, once each, in
    # order with the reads the reader handed on.
    clock = StepClock()
    bus = SessionEvents(max_lines=5000, clock=clock)
    record = bus.start("smtp", ("127.0.0.1", 40000), ("127.0.0.1", 25), id="smtp#7", kind=MailRecord)
    taken = []
    feed = {"c": record.reader(taken.append), "s": record.writer(taken.append)}
    said = [step[1] for step in SESSIONS[name] if step[0] in ("c", "s") and step[1]]
    for step in SESSIONS[name]:
        if step[0] in ("c", "s") and step[1]:
            feed[step[0]](step[1])
    assert taken == said


class _CountingTranscriber(Transcriber):
    """A Transcriber that counts the reads and replies it is given."""

    calls = 0

    def client_bytes(self, data: bytes) -> None:
        type(self).calls += 1
        Transcriber.client_bytes(self, data)

    def server_bytes(self, data: bytes) -> None:
        type(self).calls += 1
        Transcriber.server_bytes(self, data)


@pytest.mark.parametrize("reads", ["client_bytes", "reader", "writer"])
def test_a_long_session_nobody_watches_costs_no_transcriber_per_message(reads, monkeypatch):
    # Past max_lines + 256 kept entries (about 650 messages at 5,000
    # lines) the record used to play every kept entry through the
    # Transcriber, 257 at a time, though nobody watched: a long session
    # cost more per message than a short one. 1,000 messages now give it
    # nothing; a reader then sees what a record transcribed as it went shows.
    import twisted_mailhub.ftp.record

    monkeypatch.setattr(_CountingTranscriber, "calls", 0)
    monkeypatch.setattr(twisted_mailhub.ftp.record, "Transcriber", _CountingTranscriber)
    (_, lazy_clock, lazy, lazy_feed), (_, eager_clock, eager, eager_feed) = _pair(reads=reads)
    steps = HELLO + _envelope(BODY + b".\r\n") * 1000
    for step in steps:
        lazy_clock.now += 0.125
        eager_clock.now += 0.125
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
        assert len(lazy._events) <= 5000 + 256 + 1
    assert _CountingTranscriber.calls == 0
    _same(lazy, eager)
    assert lazy.dropped == eager.dropped > 0


@pytest.mark.parametrize("reads", ["client_bytes", "writer"])
@pytest.mark.parametrize("name", list(SESSIONS))
@pytest.mark.parametrize("how", ["all", "session", "read"])
def test_a_long_session_a_watcher_joins_late_sees_what_it_saw_before(name, how, reads, monkeypatch):
    # Every session of SESSIONS (but its end) eight times over, on a bus
    # that keeps 7 lines with a slack of 4 (not 256): the kept entries are
    # let go unmade (or made, where the Transcriber has state) many times
    # over, and a watcher or a reader that comes at any step is told and
    # shown exactly what a record transcribed as it went tells and shows.
    import twisted_mailhub.ftp.record
    import twisted_mailhub.smtp.record

    monkeypatch.setattr(twisted_mailhub.ftp.record, "_SLACK", 4)
    monkeypatch.setattr(twisted_mailhub.smtp.record, "_SLACK", 4)
    steps = [step for step in SESSIONS[name] if step[0] != "end"] * 8 + [("end",)]
    for cut in range(0, len(steps) + 1, 5):
        (lazy_bus, lazy_clock, lazy, lazy_feed), (eager_bus, eager_clock, eager, eager_feed) = _pair(max_lines=7, reads=reads)
        told = {"lazy": [], "eager": []}
        for n, step in enumerate(steps):
            lazy_clock.now += 0.125
            eager_clock.now += 0.125
            if n == cut:
                for key, bus, record in (("lazy", lazy_bus, lazy), ("eager", eager_bus, eager)):
                    start_watching(how, bus, record, told[key])
            _play(step, lazy, lazy_feed)
            _play(step, eager, eager_feed)
            assert len(lazy._events) <= 7 + 4 + 16  # (lines made together are trimmed together)
        assert told["lazy"] == told["eager"], f"watching from step {cut}"
        _same(lazy, eager)


def test_a_bare_lf_dot_line_in_a_crlf_session_is_counted_as_message_text():
    """RFC 5321 4.1.1.4: after "354 End data with <CR><LF>.<CR><LF>" only CRLF "." CRLF ends the message, as the hub reads it."""
    for record, feed in ((r, f) for _bus, _clock, r, f in _pair()):
        for step in SESSIONS["typed: a bare LF dot line in a CRLF session is message text, to a CRLF dot"]:
            _play(step, record, feed)
        said = [text for _seq, _when, kind, text in record.events if kind == "C"]
        assert said[-4:] == ["DATA", "[message: 8 lines, 10031 octets]", ".", "QUIT"], said
