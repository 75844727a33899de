"""
An FTP control connection's record keeps what was said as it came and
makes it C:/S: lines only when someone reads or watches it
(L{twisted_mailhub.ftp.record.ControlRecord}). What it shows must be
exactly what a record transcribed as it went shows (a L{SessionRecord}
fed through a L{Transcriber}, as every other protocol's): the same
events, sequence numbers, times, texts, counts, and the same events told
to a watcher that comes in the middle; and no password is ever kept raw.
"""

from __future__ import annotations

import pytest

from twisted_mailhub.ftp.record import ControlRecord
from twisted_mailhub.transcript import SessionEvents, SessionRecord, Transcriber

from tests.record_helpers import start_watching

SECRETS = (b"hunter2", b"s3cret", b"Zm9vYmFy", b"letmein")

LOGIN = [
    ("s", b"220 mail.test FTP server (twisted-mailhub) ready.\r\n"),
    ("c", b"USER alice\r\n"),
    ("s", b"331 Password required for alice.\r\n"),
    ("c", b"PASS hunter2\r\n"),
    ("login", "alice@localhost"),
    ("s", b"230 User alice logged in; your home is /.\r\n"),
]
DOWNLOAD = [
    ("c", b"TYPE I\r\n"),
    ("s", b"200 Type set to I (binary).\r\n"),
    ("c", b"PASV\r\n"),
    ("s", b"227 Entering Passive Mode (127,0,0,1,195,80).\r\n"),
    ("c", b"RETR a.bin\r\n"),
    ("data", "open: client 127.0.0.1:50000 connected to server 127.0.0.1:50000 (passive mode)"),
    ("s", b"150 Opening BINARY mode data connection for a.bin (65536 bytes).\r\n"),
    ("data", "closed: server 127.0.0.1:50000, client 127.0.0.1:50000, 65536 bytes in 0.002 s"),
    ("s", b"226 Transfer complete.\r\n"),
    ("c", b"QUIT\r\n"),
    ("s", b"221 Goodbye.\r\n"),
]

SESSIONS = {
    "login, download, quit": LOGIN + DOWNLOAD,
    "USER and PASS pipelined in one read": [
        ("s", b"220 ready.\r\n"),
        ("c", b"USER alice\r\nPASS s3cret\r\nSYST\r\n"),
        ("s", b"331 Password required for alice.\r\n"),
        ("login", "alice@localhost"),
        ("s", b"230 logged in.\r\n215 UNIX Type: L8\r\n"),
    ],
    "a password in two reads, and in any case": [
        ("c", b"USER alice\r\n"),
        ("c", b""),
        ("s", b""),
        ("c", b"PA"),
        ("c", b"SS hunter2\r\n"),
        ("s", b"530 Login incorrect; try USER again.\r\n"),
        ("c", b"pass letmein\n"),
        ("c", b"  Pass \t s3cret\r\r\n"),
        ("c", b"PASS\r\n"),
        ("s", b"503 Login with USER first.\r\n"),
    ],
    "AUTH TLS then a login": [
        ("s", b"220 ready.\r\n"),
        ("c", b"AUTH TLS\r\n"),
        ("s", b"234 AUTH TLS ok; start the TLS handshake.\r\n"),
        ("tls", "TLSv1.3 TLS_AES_256_GCM_SHA384"),
    ]
    + LOGIN[1:]
    + [("c", b"AUTH PLAIN Zm9vYmFy\r\n"), ("c", b"NOOP\r\n"), ("s", b"503 TLS is already on.\r\n200 NOOP ok.\r\n")],
    "control bytes, not UTF-8, an over-long line, a line of many": [
        ("c", b"CWD \x1b[31mred\r\n"),
        ("s", b"550 CWD \\x1b[31mred: no such directory.\r\n"),
        ("c", b"MKD caf\xe9\r\n"),
        ("c", b"X" * 5000),
        ("c", b"Y" * 10 + b"\r\n"),
        ("s", b"500 Command line too long (at most 4096 octets).\r\n"),
        ("c", b"NOOP\r\nNOOP\r\nHELP\r\n"),
        ("s", b"200 NOOP ok.\r\n200 NOOP ok.\r\n214-The following commands are recognized:\r\n ABOR\r\n214 Help OK.\r\n"),
    ],
    "a reply that starts with 354, and SITE LOGIN": [
        ("s", b"354 odd.\r\n"),
        ("c", b"SITE LOGIN bob letmein\r\n"),
        ("c", b"NOOP\r\n"),
        ("s", b"200 NOOP ok.\r\n"),
    ],
}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 0.125
        return self.now


def _pair(max_lines: int = 5000):
    """The FTP record and the record transcribed as it goes, each on a bus of its own with its own clock."""
    made = []
    for kind in (ControlRecord, SessionRecord):
        bus = SessionEvents(max_lines=max_lines, clock=Clock())
        record = bus.start("ftp", ("127.0.0.1", 40000), ("127.0.0.1", 2121), id="ftp#7", kind=kind)
        if kind is ControlRecord:
            feed = {"c": record.client_bytes, "s": record.server_bytes}
        else:
            transcriber = Transcriber(record.id, record)
            feed = {"c": transcriber.client_bytes, "s": transcriber.server_bytes}
        made.append((bus, record, feed))
    return made


def _play(step, record, feed) -> None:
    what = step[0]
    if what in ("c", "s"):
        feed[what](step[1])
    elif what == "login":
        record.logged_in(step[1])
    elif what == "tls":
        record.encrypted(step[1])
    else:
        record.add(what, step[1])


def _kept_raw(record: ControlRecord) -> bytes:
    """Every octet the FTP record holds, however kept."""
    out = []
    for entry in record._events:
        for part in entry if isinstance(entry, tuple) else (entry,):
            out.append(part if isinstance(part, bytes) else str(part).encode())
    return b"|".join(out)


def _same(lazy: ControlRecord, eager: SessionRecord) -> None:
    assert list(lazy.events) == list(eager.events)
    assert lazy.dropped == eager.dropped
    assert lazy.summary() == eager.summary()


@pytest.mark.parametrize("name", list(SESSIONS))
def test_a_session_nobody_watched_reads_exactly_as_one_transcribed_as_it_went(name):
    (_, lazy, lazy_feed), (_, eager, eager_feed) = _pair()
    for step in SESSIONS[name]:
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
        assert not any(secret in _kept_raw(lazy) for secret in SECRETS)
    lazy.closed()
    eager.closed()
    _same(lazy, eager)
    assert not any(secret in _kept_raw(lazy) for secret in SECRETS)


@pytest.mark.parametrize("name", list(SESSIONS))
@pytest.mark.parametrize("how", ["all", "list", "session", "read"])
def test_a_watcher_or_reader_coming_midway_sees_exactly_what_it_saw_before(name, how):
    (lazy_bus, lazy, lazy_feed), (eager_bus, eager, eager_feed) = _pair()
    told = {"lazy": [], "eager": []}
    steps = SESSIONS[name]
    for n, step in enumerate(steps):
        if n == len(steps) // 2:
            for key, bus, record in (("lazy", lazy_bus, lazy), ("eager", eager_bus, eager)):
                start_watching(how, bus, record, told[key])
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
    lazy.closed()
    eager.closed()
    assert told["lazy"] == told["eager"]
    _same(lazy, eager)


def test_a_long_session_nobody_reads_keeps_its_last_events_as_one_transcribed_as_it_went():
    (_, lazy, lazy_feed), (_, eager, eager_feed) = _pair(max_lines=5)
    steps = LOGIN + [("c", b"NOOP %d\r\n" % n) if n % 2 else ("s", b"200 NOOP ok.\r\n") for n in range(700)] + DOWNLOAD
    for step in steps:
        _play(step, lazy, lazy_feed)
        _play(step, eager, eager_feed)
        assert len(lazy._events) <= 5 + 256 + 1
    _same(lazy, eager)
    assert lazy.dropped == lazy.summary()["lines"] - 5
