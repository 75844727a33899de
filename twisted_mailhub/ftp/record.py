# -*- test-case-name: tests.test_session_record,tests.test_ftp_session_record -*-
"""
The session record of an FTP control connection: a
L{twisted_mailhub.transcript.SessionRecord} that keeps what was said as it
came and makes it the C{(seq, time, kind, text)} events of every record
only when someone reads them or watches it.

Why: every FTP control connection is recorded while the console is on
(the default), and most are never looked at. Turning each read and each
reply into masked C:/S: lines (a L{Transcriber}) as they happen cost
a short session (login, a download, QUIT) ~85k instructions of ~1.8M
(bench/ftp_cost.py --callgrind), and an idle connection kept the
Transcriber besides (~0.3 KB).

How: C{client_bytes} and C{server_bytes} take the connection's bytes.
While nobody watches this session's lines, a read or a reply is kept as
it came, with its time, and an event (login, tls, data, end) as its kind
and text: no Transcriber exists yet. When someone reads the record
(L{events}, L{dropped}, L{summary}), a watcher is to be told of an event,
or the kept entries pass C{max_lines}, the kept bytes are played through
the session's Transcriber in order, each line with its own time (no
watcher is told of them: they happened before it watched), and become
events as any record's. From then on, a watched session is transcribed
as it goes, exactly as before. When the kept entries pass C{max_lines}
and the oldest would only be made to be let go (a long session nobody
watches), those whose events need no Transcriber state to count are let
go unmade, their events counted (L{ControlRecord._let_go}): a long
session costs no more per message than a short one.

Secrets are never kept raw: a read that holds C{PASS}, C{AUTH} or
C{LOGIN} (any case) is transcribed at once, masked by the Transcriber's
own rules, unless it is one whole C{PASS} line, which is kept with the
password already replaced by C{****} (what the Transcriber makes of it,
and makes again of the masked line). So is every read or reply while the
Transcriber is inside an exchange (a SASL response after AUTH, a line in
parts, a message after a 354): kept bytes are only ever whole lines that
need no state to be read.

How the events are kept once made (the compact form of the last round):
C{_events} is a list of entries, oldest first, and C{_times} an
C{array('d')} of their times (no float object each); a made entry is a
C:/S: line nobody has read yet, as bytes after its kind's letter
(C{b"C" + line}), or C{(kind, text)} for any other event. Entries not yet
made (from index C{_raw}) are a read or a reply as it came (bytes; the
sign of its time tells which: a read's is positive, a reply's negative)
or an event's C{(kind, text)}. Sequence numbers are not stored: made entries
are consecutive, the last one is C{_seq}. Past C{max_lines} entries the
oldest go, a few hundred at a time (a list is cut at its front in one
step); L{events} shows the last C{max_lines} and C{dropped} counts the
rest, as for any record.

Watchers are told of each event by the bus's one fan-out
(L{twisted_mailhub.transcript.SessionEvents.tell}), as for any record; a
line someone watches is made text at once, as any record does.
"""

from __future__ import annotations

import re
from array import array
from math import copysign
from itertools import repeat

from twisted_mailhub.transcript import _PASS, SessionRecord, Transcriber, line_text

# Entries past max_lines are let go this many at a time (at least).
_SLACK = 256
_LETTER = {"C": b"C", "S": b"S"}
_KIND = {67: "C", 83: "S"}  # b"C"[0], b"S"[0]
# A read that may hold a secret by the Transcriber's rules: PASS, AUTH or
# LOGIN in any case (and a few harmless words besides, e.g. "loss": those
# take the slower way). One search in C, no copy of the read.
_MAYBE_SECRET = re.compile(rb"[PpAaLl][AaUuOo][SsTtGg][SsHhIi]").search


# _plain_lines of short reads and replies lately let go whose count is the
# same whether read or sent (a client sends the same command lines, and the
# server the same replies, message after message): a look-up, not the
# counts, and no need of the entry's sign. At most _KNOWN_MOST.
_LINES: dict = {}
# _plain_lines of those seen once, as a read and as a reply (at most
# _KNOWN_MOST of each): a second sighting puts one in _LINES.
_READ_LINES: dict = {}
_REPLY_LINES: dict = {}
_KNOWN_MOST = 1024
_SAFE_LONGEST = 256


def _plain_lines(data: bytes, read: bool) -> int:
    """
    How many C:/S: events the L{Transcriber}, at rest, makes of C{data}, a
    kept read (C{read}) or reply, with no state before or after: whole
    CRLF lines, no secret (L{_MAYBE_SECRET}), as its shortcuts for plain
    protocols (SMTP, FTP) record them. -1: one reply line starting with
    354 (one event, then a message is read); 0: not known without it.
    """
    if data[-2:] != b"\r\n":
        return 0
    n = data.count(b"\n")
    if read:
        if _MAYBE_SECRET(data) is not None:
            return 0
        if n == 1 or n == data.count(b"\r\n") == data.count(b"\r"):
            return n
        return 0
    if n == 1 and data.find(b"\r") == len(data) - 2:
        return -1 if data[:3] == b"354" else 1
    if n == data.count(b"\r\n") == data.count(b"\r") and data[:3] != b"354" and data.find(b"\n354") < 0:
        return n
    return 0


class ControlRecord(SessionRecord):
    """
    One FTP control connection's session record (made by
    C{SessionEvents.start(..., kind=ControlRecord)}): what it shows, tells
    and counts is a L{SessionRecord}'s with a L{Transcriber} fed the
    connection's bytes; only when and how it keeps them differs (see the
    module). The connection hands it every read (L{client_bytes}) and
    every reply (L{server_bytes}).
    """

    __slots__ = ("_times", "_max", "_raw", "_rest", "_transcriber", "_when")

    def __init__(self, bus, id: str, protocol: str, client: tuple, server: tuple):
        self._times = array("d")
        self._max = bus.max_lines
        # Index of the first entry not yet made an event (None: all are).
        self._raw = 0
        # No exchange under way in the Transcriber (or none yet): a whole
        # line may be kept as it came (see _plain).
        self._rest = True
        self._transcriber = None
        # While kept bytes are played through the Transcriber: their time.
        self._when = None
        SessionRecord.__init__(self, bus, id, protocol, client, server)

    def _new_events(self):
        return []  # (a list: cut at its front in one step, see the module)

    # -- the connection's bytes ---------------------------------------------------

    def client_bytes(self, data: bytes) -> None:
        """What the client sent (one read, as it came, not empty)."""
        bus = self.bus
        if not bus.watchers and not bus.session_watchers and self._rest and data[-1:] == b"\n" and _MAYBE_SECRET(data) is None:
            # Whole lines, no secret, nobody watching lines: kept as they
            # came (a client read's time is positive, a reply's negative).
            events = self._events
            if self._raw is None:
                self._raw = len(events)
            events.append(data)
            self._times.append(bus.clock())
            if len(events) > self._max + _SLACK:
                self._full()
            return
        if self._rest and data[-1:] == b"\n" and not self._watched() and data.find(b"\n") == len(data) - 1:
            upper = data.upper()
            if upper.find(b"AUTH") < 0 and upper.find(b"LOGIN") < 0:
                bare = data[:-2] if data[-2:-1] == b"\r" else data[:-1]
                if upper.find(b"PASS", 0, 16) >= 0 and _PASS.match(bare) is not None:
                    # One PASS line: kept masked as the Transcriber masks it
                    # (it makes the same line again of the masked one).
                    data = _PASS.sub(rb"\1 ****", bare) + b"\n"
                self._keep(data, self.bus.clock())
                return
        self._transcribed().client_bytes(data)
        self._rest = self._transcriber.at_rest()

    def server_bytes(self, data: bytes) -> None:
        """What the server sent (one reply or several, as written, not empty)."""
        bus = self.bus
        if not bus.watchers and not bus.session_watchers and self._rest and data[-1:] == b"\n" and data.find(b"354") < 0:
            # (A line that starts with 354 makes the Transcriber read what
            # follows as a message, SMTP's DATA: transcribed at once.)
            self._keep(data, -bus.clock())
            return
        self._transcribed().server_bytes(data)
        self._rest = self._transcriber.at_rest()

    def _watched(self) -> bool:
        """Whether someone is told this session's lines as they come."""
        bus = self.bus
        return bool(bus.watchers or (bus.session_watchers and self.id in bus.session_watchers))

    def _transcribed(self) -> Transcriber:
        """The Transcriber, every kept entry played through it first."""
        if self._raw is not None:
            self._make()
        transcriber = self._transcriber
        if transcriber is None:
            transcriber = self._transcriber = Transcriber(self.id, self)
        return transcriber

    def _keep(self, entry, when: float) -> None:
        """Keep a read (bytes; C{when} positive), a reply (C{when} negative) or an event (C{(kind, text)})."""
        events = self._events
        if self._raw is None:
            self._raw = len(events)
        events.append(entry)
        self._times.append(when)
        if len(events) > self._max + _SLACK:
            self._full()

    def _full(self) -> None:
        """
        The entries passed C{max_lines} + C{_SLACK}: the oldest go. Kept
        entries that would only be made events to be let go at once are
        let go unmade, their events counted (L{_let_go}); the rest are
        made and trimmed as before (a long session nobody watches thus
        costs no Transcriber per entry).
        """
        self._let_go()
        if len(self._events) > self._max + _SLACK:
            self._make()
            self._trim()

    # A kept entry (kind, text) of this kind makes two events (SMTP's
    # message count, see twisted_mailhub.smtp.record); None: none does.
    _PAIR_KIND: object = None

    def _let_go(self) -> None:
        """
        Let the oldest kept entries go unmade while at least C{max_lines}
        kept entries stay after them: each makes at least one event, so
        every event they would make is one a trim drops anyway. Only
        entries whose events the L{Transcriber} makes without any state
        (whole CRLF lines read at rest, no secret; SMTP's 354 go-ahead only
        with its message's count next) go; C{_seq} counts their events, so
        the sequence numbers, L{dropped} and L{summary} are what making
        them would give. The made events before them go too (older still).

        The usual entry, a read or reply seen before whose count does not
        depend on which it is (L{_LINES}), is counted by a look-up in C
        (C{map}); only the others (a message's count, a 354, one not seen
        yet) are looked at one by one (L{_count_one}).
        """
        first = self._raw
        if first is None:
            return
        events = self._events
        stop = len(events) - self._max
        if stop <= first:
            return
        transcriber = self._transcriber
        if transcriber is not None and not transcriber.at_rest():
            return
        chunk = events[first:stop]
        try:
            counts = list(map(_LINES.get, chunk, repeat(0, len(chunk))))
        except TypeError:  # (an event's text that is no key)
            counts = [0] * len(chunk)
        end = len(chunk)
        j = 0
        index = counts.index
        while True:
            try:
                j = index(0, j)  # (0: not known by a look-up)
            except ValueError:
                break
            k = self._count_one(first + j)
            if not k:
                end = j
                break
            if k < 0:
                # A 354 and its message's count after it (L{_count_one}):
                # one event and two.
                if j + 1 >= end:
                    end = j
                    break
                counts[j] = 1
                counts[j + 1] = 2
                j += 2
                continue
            counts[j] = k
            j += 1
        if end == 0:
            return
        i = first + end
        made = sum(counts[:end])
        del events[:i]
        del self._times[:i]
        self._seq += made
        self._raw = 0

    def _count_one(self, i: int) -> int:
        """
        How many events kept entry C{i} makes (L{_let_go}), 0 when it
        cannot go unmade, -1 for a 354 go-ahead with its message's count
        next (three events, the two entries). Counts are remembered
        (L{_READ_LINES}, L{_REPLY_LINES}); one seen again whose count is the
        same as a read and as a reply goes to L{_LINES}.
        """
        events = self._events
        entry = events[i]
        pair = self._PAIR_KIND
        if entry.__class__ is not bytes:
            return 2 if pair is not None and entry[0] is pair else 1
        read = copysign(1.0, self._times[i]) > 0  # (a clock at 0.0 too)
        known = _READ_LINES if read else _REPLY_LINES
        k = known.get(entry)
        if k is None:
            k = _plain_lines(entry, read)
            if len(entry) <= _SAFE_LONGEST:
                if len(known) >= _KNOWN_MOST:
                    known.clear()
                known[entry] = k
        elif k > 0 and _plain_lines(entry, not read) == k:
            # Seen again (not a reply naming a new queue id): counted by
            # a look-up from now on, a read or a reply alike.
            if len(_LINES) >= _KNOWN_MOST:
                _LINES.clear()
            _LINES[entry] = k
        if k < 0:
            # One 354 line (the Transcriber then reads a message): only
            # with the message's count next, which ends it (-1: both).
            after = events[i + 1] if i + 1 < len(events) else None
            if pair is None or after.__class__ is not tuple or after[0] is not pair:
                return 0
        return k

    def _make(self) -> None:
        """Play the kept entries through the Transcriber, in order, each at its own time; nobody is told."""
        first = self._raw
        if first is None:
            return
        kept = self._events[first:]
        times = self._times[first:]
        del self._events[first:]
        del self._times[first:]
        self._raw = None
        if not kept:
            return
        transcriber = self._transcriber
        if transcriber is None:
            transcriber = self._transcriber = Transcriber(self.id, self)
        try:
            for entry, when in zip(kept, times):
                if entry.__class__ is bytes:
                    if copysign(1.0, when) > 0:  # (a clock at 0.0 too)
                        self._when = when
                        transcriber.client_bytes(entry)
                    else:
                        self._when = -when
                        transcriber.server_bytes(entry)
                else:
                    self._when = when
                    self._replayed(entry[0], entry[1])
        finally:
            self._when = None
        self._rest = transcriber.at_rest()

    def _replayed(self, kind: str, text) -> None:
        """One event made from a kept entry (at C{_when}), told to nobody."""
        self._seq += 1
        letter = _LETTER.get(kind)
        self._events.append(letter + text if letter is not None and text.__class__ is bytes else (kind, text if text.__class__ is str else line_text(text)))
        self._times.append(self._when)

    # -- what is read ---------------------------------------------------------

    @property
    def events(self) -> list:
        """The kept events, oldest first: C{(seq, time, kind, text)} tuples (at most the bus's C{max_lines})."""
        if self._raw is not None:
            self._make()
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
        if self._raw is not None:
            self._make()
        return self._seq - min(len(self._events), self._max)

    @dropped.setter
    def dropped(self, value: int) -> None:
        pass  # counted from the entries

    def summary(self) -> dict:
        """As L{SessionRecord.summary} (C{lines}: every event, kept bytes made events first)."""
        if self._raw is not None:
            self._make()
        return SessionRecord.summary(self)

    # -- what is added ----------------------------------------------------------

    def _trim(self) -> None:
        cut = len(self._events) - self._max
        del self._events[:cut]
        del self._times[:cut]

    def add(self, kind: str, text: str) -> None:
        """Record one event and tell the watchers (as L{SessionRecord.add}); kept as it is while nobody would be told."""
        bus = self.bus
        if self._when is not None:
            self._replayed(kind, text)
            return
        if not (bus.watchers or (bus.list_watchers and kind != "C" and kind != "S") or (bus.session_watchers and self.id in bus.session_watchers)):
            self._keep((kind, text), bus.clock())
            return
        if self._raw is not None:
            self._make()
        seq = self._seq = self._seq + 1
        now = bus.clock()
        events = self._events
        events.append((kind, text))
        self._times.append(now)
        if len(events) > self._max + _SLACK:
            self._trim()
        bus.tell(self, (seq, now, kind, text))

    def add_line(self, kind: str, line: bytes) -> None:
        """A C:/S: line (bytes, no line end), from the Transcriber: kept as bytes while nobody watches lines."""
        if self._when is not None:
            self._replayed(kind, line)
            return
        letter = _LETTER.get(kind)
        if letter is None or self._watched():
            self.add(kind, line_text(line))
            return
        if self._raw is not None:
            self._make()
        self._seq += 1
        events = self._events
        events.append(letter + line)
        self._times.append(self.bus.clock())
        if len(events) > self._max + _SLACK:
            self._trim()

    def add_lines(self, kind: str, lines) -> None:
        """Several C:/S: lines at once, as L{add_line} each."""
        if self._when is not None:
            for line in lines:
                self._replayed(kind, line)
            return
        letter = _LETTER.get(kind)
        if letter is None or self._watched():
            for line in lines:
                self.add(kind, line_text(line))
            return
        if self._raw is not None:
            self._make()
        n = len(lines)
        self._seq += n
        events = self._events
        events.extend([letter + line for line in lines])
        self._times.extend(repeat(self.bus.clock(), n))
        if len(events) > self._max + _SLACK:
            self._trim()

    def add_answer(self, status: bytes, *facts) -> None:
        """A POP3 message answer's three S: lines (FTP has none; here for completeness)."""
        summary = facts[0] if len(facts) == 1 else b"[message: %d lines, %d octets]" % tuple(facts)
        self.add_lines("S", [status, summary, b"."])
