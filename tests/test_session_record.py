"""
A session record keeps its last C{max_lines} events and counts the older
ones as dropped, however they were added (one event, one line, several
lines), before and after it first fills up: the FTP control connection's
record (L{twisted_mailhub.ftp.record.ControlRecord}, a list until full)
exactly as every other (a deque).
"""

from __future__ import annotations

import pytest

from twisted_mailhub.ftp.record import ControlRecord
from twisted_mailhub.transcript import SessionEvents, SessionRecord

KINDS = pytest.mark.parametrize("kind", [SessionRecord, ControlRecord])


def _record(max_lines: int, kind=ControlRecord):
    bus = SessionEvents(max_lines=max_lines, clock=lambda: 1000.0)
    return bus.start("ftp", ("127.0.0.1", 40000), ("127.0.0.1", 2121), id="ftp#1", kind=kind)


def _shown(record) -> list[tuple[int, str, str]]:
    return [(seq, kind, text) for seq, _, kind, text in record.events]


@KINDS
def test_a_session_under_its_limit_keeps_every_event_in_order(kind):
    record = _record(10, kind)
    record.add_line("C", b"USER alice")
    record.add_line("S", b"331 Password required for alice.")
    record.add_lines("C", [b"PASS ****", b"SYST"])
    assert _shown(record) == [
        (1, "start", "127.0.0.1:40000 -> 127.0.0.1:2121"),
        (2, "C", "USER alice"),
        (3, "S", "331 Password required for alice."),
        (4, "C", "PASS ****"),
        (5, "C", "SYST"),
    ]
    assert record.dropped == 0
    assert record.summary()["lines"] == 5


@KINDS
def test_a_full_session_lets_its_oldest_events_go_one_at_a_time(kind):
    record = _record(3, kind)
    for n in range(5):
        record.add_line("C", b"NOOP %d" % n)
    record.add("login", "alice@localhost")
    assert _shown(record) == [(5, "C", "NOOP 3"), (6, "C", "NOOP 4"), (7, "login", "alice@localhost")]
    assert record.dropped == 4
    assert record.summary()["lines"] == 7


@KINDS
def test_lines_added_together_past_the_limit_keep_only_the_last(kind):
    record = _record(4, kind)
    record.add_line("C", b"LIST")
    record.add_lines("S", [b"line %d" % n for n in range(6)])
    assert _shown(record) == [(5, "S", "line 2"), (6, "S", "line 3"), (7, "S", "line 4"), (8, "S", "line 5")]
    assert record.dropped == 4


@KINDS
def test_events_read_before_and_after_the_record_fills_show_control_bytes_visibly(kind):
    record = _record(3, kind)
    record.add_line("C", b"CWD a\x1bb")
    assert _shown(record)[-1] == (2, "C", "CWD a\\x1bb")
    record.add_line("C", b"MKD \x00x")
    record.add_line("C", b"PWD")
    assert _shown(record) == [(2, "C", "CWD a\\x1bb"), (3, "C", "MKD \\x00x"), (4, "C", "PWD")]
    assert record.dropped == 1


@KINDS
def test_a_watcher_of_lines_sees_each_event_once_across_the_limit(kind):
    bus = SessionEvents(max_lines=2, clock=lambda: 1000.0)
    seen = []
    bus.subscribe(lambda record, event: seen.append((event[0], event[2], event[3])))
    record = bus.start("ftp", ("127.0.0.1", 40000), ("127.0.0.1", 2121), id="ftp#2", kind=kind)
    record.add_line("C", b"USER alice")
    record.add_lines("S", [b"331 Password required for alice."])
    record.closed()
    assert seen == [
        (1, "start", "127.0.0.1:40000 -> 127.0.0.1:2121"),
        (2, "C", "USER alice"),
        (3, "S", "331 Password required for alice."),
        (4, "end", "closed"),
    ]
    assert [e[0] for e in record.events] == [3, 4]
    assert record.dropped == 2


@KINDS
def test_a_long_session_keeps_its_last_events_and_counts_every_other(kind):
    record = _record(5, kind)
    for n in range(700):
        if n % 100 == 0:
            record.add("data", f"transfer {n}")
        elif n % 7 == 0:
            record.add_lines("S", [b"%d-a" % n, b"%d-b" % n])
        else:
            record.add_line("C", b"NOOP %d" % n)
    shown = _shown(record)
    assert len(shown) == 5
    assert [seq for seq, _, _ in shown] == list(range(record.summary()["lines"] - 4, record.summary()["lines"] + 1))
    assert shown[-1] == (record.summary()["lines"], "C", "NOOP 699")
    assert record.dropped == record.summary()["lines"] - 5


@KINDS
def test_a_watcher_of_one_session_is_told_its_lines_as_text(kind):
    bus = SessionEvents(max_lines=10, clock=lambda: 1000.0)
    seen = []
    record = bus.start("ftp", ("127.0.0.1", 40000), ("127.0.0.1", 2121), id="ftp#3", kind=kind)
    bus.subscribe(lambda r, event: seen.append(event[1:]), session="ftp#3")
    record.add_line("C", b"RETR \x07x")
    record.add_lines("S", [b"150 here", b"226 done"])
    assert seen == [(1000.0, "C", "RETR \\x07x"), (1000.0, "S", "150 here"), (1000.0, "S", "226 done")]
    assert _shown(record)[1:] == [(2, "C", "RETR \\x07x"), (3, "S", "150 here"), (4, "S", "226 done")]


@KINDS
def test_each_kind_of_watcher_is_told_only_what_it_asked_for_through_the_bus(kind):
    # One fan-out for every kind of record (SessionEvents.tell): all events
    # to a watcher of all, no C:/S: lines to a session list, one session's
    # events to its watcher; a watcher that fails is dropped, the rest go on.
    told = []

    class Bus(SessionEvents):
        def tell(self, record, event):
            told.append(event[0])
            SessionEvents.tell(self, record, event)

    bus = Bus(max_lines=10, clock=lambda: 1000.0)
    every, listed, mine, other = [], [], [], []
    bus.subscribe(lambda r, e: every.append(e[2]))
    bus.subscribe(lambda r, e: listed.append(e[2]), lines=False)
    bus.subscribe(lambda r, e: mine.append(e[2]), session="ftp#4")
    bus.subscribe(lambda r, e: other.append(e[2]), session="ftp#5")

    def broken(r, e):
        raise ValueError("a watcher's own fault")

    bus.subscribe(broken)
    record = bus.start("ftp", ("127.0.0.1", 40000), ("127.0.0.1", 2121), id="ftp#4", kind=kind)
    record.add_line("C", b"USER alice")
    record.add_lines("S", [b"331 Password required for alice."])
    record.logged_in("alice@localhost")
    record.add("data", "open: 127.0.0.1:40001 -> 127.0.0.1:2120 (passive mode)")
    record.closed()
    kinds = ["start", "C", "S", "login", "data", "end"]
    assert told == [1, 2, 3, 4, 5, 6]
    assert every == kinds and mine == kinds
    assert listed == ["start", "login", "data", "end"]
    assert other == []
    assert broken not in bus.watchers
