# -*- test-case-name: tests.test_session_record,tests.test_ftp_session_record -*-
"""
The session record of an FTP control connection: a
L{twisted_mailhub.transcript.SessionRecord} that keeps its events in a
compact form, made the C{(seq, time, kind, text)} events of every record
only when someone reads them.

Why: an idle FTP control connection lives long and says little: its start,
USER, PASS, the login and a few replies. Kept as every record keeps them
(a deque, about 760 octets however few it holds, and per event a tuple and
a float, about 100 octets besides the line), they were most of what such a
connection costs; thousands of idle clients (a mirror's) add up.

How they are kept: C{_events} is a list of entries, oldest first, and
C{_times} an C{array('d')} of their times (no float object each); an entry
is a C:/S: line nobody has read yet, as bytes after its kind's letter
(C{b"C" + line}), or C{(kind, text)} for any other event. Sequence numbers
are not stored: the entries are consecutive, the last one is C{_seq}. Past
C{max_lines} entries the oldest go, a few hundred at a time (a list is cut
at its front in one step); L{events} shows the last C{max_lines} and
C{dropped} counts the rest, as for any record.

Watchers are told of each event by the bus's one fan-out
(L{twisted_mailhub.transcript.SessionEvents.tell}), as for any record; a
line someone watches is made text at once, as any record does.
"""

from __future__ import annotations

from array import array
from itertools import repeat

from twisted_mailhub.transcript import SessionRecord, line_text

# Entries past max_lines are let go this many at a time (at least).
_SLACK = 256
_LETTER = {"C": b"C", "S": b"S"}
_KIND = {67: "C", 83: "S"}  # b"C"[0], b"S"[0]


class ControlRecord(SessionRecord):
    """
    One FTP control connection's session record (made by
    C{SessionEvents.start(..., kind=ControlRecord)}): what it shows, tells
    and counts is a L{SessionRecord}'s; only how it keeps its events
    differs (see the module).
    """

    __slots__ = ("_times", "_max")

    def __init__(self, bus, id: str, protocol: str, client: tuple, server: tuple):
        self._times = array("d")
        self._max = bus.max_lines
        SessionRecord.__init__(self, bus, id, protocol, client, server)
        self._events = []

    # -- what is read ---------------------------------------------------------

    @property
    def events(self) -> list:
        """The kept events, oldest first: C{(seq, time, kind, text)} tuples (at most the bus's C{max_lines})."""
        entries, times = self._events, self._times
        n = len(entries)
        first = max(0, n - self._max)
        seq = self._seq - n
        shown = []
        add = shown.append
        for i in range(first, n):
            e = entries[i]
            if e.__class__ is bytes:
                add((seq + i + 1, times[i], _KIND[e[0]], line_text(e[1:])))
            else:
                add((seq + i + 1, times[i], e[0], e[1]))
        return shown

    @property
    def dropped(self) -> int:
        """How many old events were let go (the bus's C{max_lines})."""
        return self._seq - min(len(self._events), self._max)

    @dropped.setter
    def dropped(self, value: int) -> None:
        pass  # counted from the entries (a record's own __init__ sets it)

    # -- what is added ----------------------------------------------------------

    def _trim(self) -> None:
        cut = len(self._events) - self._max
        del self._events[:cut]
        del self._times[:cut]

    def add(self, kind: str, text: str) -> None:
        """Record one event and tell the watchers (as L{SessionRecord.add})."""
        seq = self._seq = self._seq + 1
        bus = self.bus
        now = bus.clock()
        events = self._events
        events.append((kind, text))
        self._times.append(now)
        if len(events) > self._max + _SLACK:
            self._trim()
        if bus.watchers or bus.list_watchers or bus.session_watchers:
            bus.tell(self, (seq, now, kind, text))

    def add_line(self, kind: str, line: bytes) -> None:
        """A C:/S: line (bytes, no line end): kept as bytes while nobody watches lines."""
        bus = self.bus
        letter = _LETTER.get(kind)
        if letter is None or bus.watchers or (bus.session_watchers and self.id in bus.session_watchers):
            self.add(kind, line_text(line))
            return
        self._seq += 1
        events = self._events
        events.append(letter + line)
        self._times.append(bus.clock())
        if len(events) > self._max + _SLACK:
            self._trim()

    def add_lines(self, kind: str, lines) -> None:
        """Several C:/S: lines at once, as L{add_line} each."""
        bus = self.bus
        letter = _LETTER.get(kind)
        if letter is None or bus.watchers or (bus.session_watchers and self.id in bus.session_watchers):
            for line in lines:
                self.add(kind, line_text(line))
            return
        n = len(lines)
        self._seq += n
        events = self._events
        events.extend([letter + line for line in lines])
        self._times.extend(repeat(bus.clock(), n))
        if len(events) > self._max + _SLACK:
            self._trim()

    def add_answer(self, status: bytes, *facts) -> None:
        """A POP3 message answer's three S: lines (FTP has none; here for completeness)."""
        summary = facts[0] if len(facts) == 1 else b"[message: %d lines, %d octets]" % tuple(facts)
        self.add_lines("S", [status, summary, b"."])
