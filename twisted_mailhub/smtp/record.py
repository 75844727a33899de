# -*- test-case-name: tests.test_smtp_lazy_record,tests.test_smtp_session_record -*-
"""
The session record of an SMTP connection: an FTP control connection's
record (L{twisted_mailhub.ftp.record.ControlRecord}: what was said is
kept as it came and made the C{(seq, time, kind, text)} events of every
record only when someone reads them or watches it) that also keeps a
message (DATA) as its two summary lines without a L{Transcriber}.

Why: every SMTP connection is recorded while the console is on (the
default), and almost none is looked at. Made into masked C:/S: lines as
they came, the eight reads and replies of a message sent one command per
round trip (MAIL, RCPT, DATA, the message and their replies) cost the
reactor ~8 us of Python a message in the L{Transcriber}, and the wrapper
that fed it (L{twisted_mailhub.transcript.TranscriptProtocol}, a call
more per read and per reply) about as much again: ~17 of the ~85 us of
the hub's own SMTP work a message (in-process, 32 connections, 1 KB).
The SMTP connection now hands its bytes to this record itself
(L{twisted_mailhub.smtp.server.MailhubSMTP.records_own_session}).

How a message is kept: a reply kept as it came that is one line starting
with C{354} (RFC 5321 §4.3.2, the go-ahead for DATA) starts a message:
the client's next bytes are counted (L{_MessageLines}, a C{bytes.count}
per chunk, as the L{Transcriber} counts them) up to the C{.} line that
ends it, and the message is kept as one entry, its summary: made events,
it is the two C: lines the L{Transcriber} makes of a message
(C{[message: N lines, M octets]} and C{.}), with the time of the read
that ended it. What came after the C{.} in that read (a pipelined next
command) is a read of its own. When the kept entries are made events
while a message is still coming, the count so far goes to the
L{Transcriber}, which goes on with it exactly as if it had counted from
the start. Nothing of a message is ever kept, only its count.

Secrets: as in the FTP record, a read that may hold AUTH, PASS or LOGIN
(any case) is transcribed at once, masked by the L{Transcriber}'s rules,
and so is everything while it is inside an exchange (a SASL response
after AUTH; the line after a refused AUTH, which may be a pasted
password): kept bytes are only ever whole lines that need no state to be
read.
"""

from __future__ import annotations

from twisted_mailhub.ftp.record import _MAYBE_SECRET, _SLACK, ControlRecord
from twisted_mailhub.transcript import HELD_MOST, _MessageLines, after_data_line, final_reply_lines, go_ahead_lines

# The kind of a kept entry that is a message's count, (lines, octets) (made:
# two C: lines, as _MessageLines.summary() and "."); and the message being
# counted after a kept 354 before any of it came.
_MESSAGE = object()
_STARTED = object()

# Reads lately found to hold no secret by the Transcriber's rules
# (_MAYBE_SECRET): a client sends the same command lines message after
# message (its MAIL FROM, DATA), and a look in a set costs a tenth of the
# search. Only short reads, at most _SAFE_MOST of them (then it starts over).
_SAFE: set = set()
_SAFE_MOST = 1024
_SAFE_LONGEST = 256


def _no_secret(data: bytes) -> bool:
    """Whether C{data}, a read not in L{_SAFE}, holds no secret by the Transcriber's rules (remembered if so)."""
    if _MAYBE_SECRET(data) is not None:
        return False
    if len(data) <= _SAFE_LONGEST:
        if len(_SAFE) >= _SAFE_MOST:
            _SAFE.clear()
        _SAFE.add(data)
    return True


class MailRecord(ControlRecord):
    """
    One SMTP connection's session record (made by C{SessionEvents.start(...,
    kind=MailRecord)}): what it shows, tells and counts is a
    L{twisted_mailhub.transcript.SessionRecord}'s with a L{Transcriber}
    fed the connection's bytes (see the module). The connection hands it
    every read (L{client_bytes}) and every reply (L{server_bytes}).
    """

    __slots__ = ("_message", "_unfinished", "_stash", "_stash_time", "_held", "_held_replies", "_go_ahead")

    _PAIR_KIND = _MESSAGE  # a message's count: two C: lines

    def __init__(self, bus, id: str, protocol: str, client: tuple, server: tuple):
        # A message being counted after a kept 354 (None: none; _STARTED:
        # none of it yet; else its _MessageLines), and the unfinished last
        # line of what it was given so far.
        self._message = None
        self._unfinished = b""
        # The kept 354 that started the message (go_ahead_lines: how it ends).
        self._go_ahead = b""
        # The read after a kept 354, and its time, until the connection
        # tells its count (message_read) or anything else is recorded.
        self._stash = None
        self._stash_time = 0.0
        # What a client sent after a DATA line before the server answered
        # it (L{_hold}), recorded once the DATA's reply is: after a 354 it
        # is the message, counted as one; else command lines. And the
        # final reply lines still to come up to the DATA's own.
        self._held: bytes | None = None
        self._held_replies = 0
        ControlRecord.__init__(self, bus, id, protocol, client, server)

    def _hold(self, data: bytes, at: int, when: float | None = None) -> None:
        """
        C{data}, a read whose DATA command line ends at C{at} with more
        after it, the client not having waited for the 354 (RFC 5321
        section 4.1.1.4; RFC 2920 section 3.1 wants DATA last in a group):
        the read up to the DATA line is recorded now, the rest held back
        until the DATA's reply is (L{_replied}), so that a message sent
        with its envelope is shown as its count, after the 354, and never
        as lines of its text (in the console and in C{--transcript}'s log).
        Every line of the read before it is a command with one final reply,
        and C{_held_replies} already counts a reply owed before it (the end
        of a message in the same read, L{_take}).
        """
        owed, self._held_replies = self._held_replies, 0
        self.client_bytes(data[:at], when)
        self._held = data[at:]
        self._held_replies = owed + data.count(b"\n", 0, at)

    def _more_held(self, data: bytes) -> None:
        """A read that came while a DATA's reply is awaited: held with the rest, up to L{HELD_MOST}."""
        self._held += data
        if len(self._held) > HELD_MOST:
            self._release()

    def _release(self) -> None:
        """Record what was held back after a DATA line, as it came."""
        held, self._held = self._held, None
        if held:
            self.client_bytes(held)

    def _replied(self, data: bytes) -> None:
        """
        Record replies C{data} while client bytes are held after a DATA
        line: up to the DATA's own reply (the last of the final reply lines
        counted by L{_hold}), then the held bytes (a message, when that
        reply was a 354), then the rest.
        """
        for end in final_reply_lines(data):
            self._held_replies -= 1
            if self._held_replies <= 0:
                self._server_bytes(data[:end])
                self._release()
                if end < len(data):
                    self.server_bytes(data[end:])
                return
        self._server_bytes(data)

    def closed(self) -> None:
        """As L{ControlRecord.closed}, after what was held back after a DATA line (no reply came) is recorded."""
        if self._held is not None:
            self._release()
        ControlRecord.closed(self)

    def client_bytes(self, data: bytes, when: float | None = None) -> None:
        """What the client sent (one read, as it came, not empty; C{when}: its time, if not now)."""
        if self._held is not None:
            self._more_held(data)
            return
        if self._stash is not None:
            self._count_stashed()
        message = self._message
        if message is None and data.find(b"\n") != len(data) - 1 and self._rest and not self.bus.watchers and not self.bus.session_watchers:
            # (Only while reads are kept: otherwise the Transcriber, which
            # is given them, holds back the same way.)
            at = after_data_line(data)
            if at is not None:
                self._hold(data, at, when)
                return
        if message is None:
            bus = self.bus
            if self._rest and not bus.watchers and not bus.session_watchers and data[-1:] == b"\n" and (data in _SAFE or _no_secret(data)):
                # Whole lines, no secret, nobody watching lines: kept as
                # they came (as ControlRecord.client_bytes keeps them).
                # (_keep, inline: four reads a message.)
                events = self._events
                if self._raw is None:
                    self._raw = len(events)
                events.append(data)
                self._times.append(bus.clock() if when is None else when)
                if len(events) > self._max + _SLACK:
                    self._full()
                return
            ControlRecord.client_bytes(self, data)
            return
        if self._watched():
            # Someone watches lines now: the Transcriber takes over the count.
            self._transcribed().client_bytes(data)
            self._rest = self._transcriber.at_rest()
            return
        if when is None:
            when = self.bus.clock()
        if message is _STARTED:
            if data[-5:] == b"\r\n.\r\n" and data[:1] != b".":
                # The first read of a message, which may be all of it: the
                # connection, which reads it next, may tell its count
                # (message_read) before anything else is recorded; until
                # then it is kept aside, not counted here.
                self._stash = data
                self._stash_time = when
                return
            message = go_ahead_lines(self._go_ahead)
        self._take(message, data, when)

    def reader(self, take):
        """
        A C{dataReceived(data)} for the connection: each read recorded as
        L{client_bytes} records it, then handed to C{take(data)} (the line
        engine). The usual read (whole command lines, no secret, nobody
        watching, no message being counted) is kept here, without a call.
        """
        bus = self.bus
        clock = bus.clock
        # (The record's lists are only ever changed in place.)
        events = self._events
        times = self._times
        most = self._max + _SLACK
        client_bytes = self.client_bytes

        def dataReceived(data: bytes) -> None:
            message = self._message
            if self._held is not None or (message is None and data.find(b"\n") != len(data) - 1 and after_data_line(data) is not None):
                # A DATA line with more after it in one read (a session
                # pasted whole), or a read while its reply is awaited:
                # client_bytes holds it back (_hold).
                client_bytes(data)
                take(data)
                return
            if message is None:
                if (
                    self._stash is None
                    and self._rest
                    and not bus.watchers
                    and not bus.session_watchers
                    and data[-1:] == b"\n"
                    and (data in _SAFE or _no_secret(data))
                ):
                    # client_bytes' kept read (_keep), inline: three a message.
                    if self._raw is None:
                        self._raw = len(events)
                    events.append(data)
                    times.append(clock())
                    if len(events) > most:
                        self._full()
                    take(data)
                    return
            elif (
                message is _STARTED
                and self._stash is None
                and not bus.watchers
                and not bus.session_watchers
                and data[-5:] == b"\r\n.\r\n"
                and data[:1] != b"."
            ):
                # client_bytes' first read of a message, inline: kept
                # aside for message_read.
                self._stash = data
                self._stash_time = clock()
                take(data)
                return
            client_bytes(data)
            take(data)

        return dataReceived

    def writer(self, write):
        """
        A C{write(data)} for the connection's replies: each recorded as
        L{server_bytes} records it, then handed to C{write(data)} (the
        line engine's). The usual reply (one not starting DATA, nobody
        watching) is kept here, without a call.
        """
        bus = self.bus
        clock = bus.clock
        events = self._events
        times = self._times
        most = self._max + _SLACK
        server_bytes = self.server_bytes

        def send(data: bytes) -> None:
            if self._held is not None:
                server_bytes(data)
                write(data)
                return
            if (
                self._stash is None
                and self._rest
                and not bus.watchers
                and not bus.session_watchers
                and data[-1:] == b"\n"
                and data.find(b"354") < 0
            ):
                # server_bytes' kept reply (a reply's time is kept
                # negative), inline: three a message. (One with 354
                # anywhere, a go-ahead for DATA or not, is server_bytes'.)
                if self._raw is None:
                    self._raw = len(events)
                events.append(data)
                times.append(-clock())
                if len(events) > most:
                    self._full()
            else:
                server_bytes(data)
            write(data)

        return send

    def _count_stashed(self) -> None:
        """Count the first read of a message kept aside (no message_read came for it)."""
        data, self._stash = self._stash, None
        when = self._stash_time
        if 0 <= data.find(b"\n.") == len(data) - 4 and data[-2:] == b"\r\n" and data[:1] != b".":
            # The whole message in one read, ending in its CRLF "." CRLF
            # and holding no other line that starts with "." (what most
            # clients send): counted as _MessageLines.take counts it, in
            # one pass; its summary is made when it is read.
            self._message = None
            self._keep((_MESSAGE, (data.count(b"\n") - 1, len(data) - 3)), when)
            return
        self._take(go_ahead_lines(self._go_ahead), data, when, past=True)

    def _take(self, message: _MessageLines, data: bytes, when: float, past: bool = False) -> None:
        """
        Count C{data} (a read at C{when}) as part of C{message}; keep its
        count once it ended. C{past}: the read was kept aside while nobody
        watched, so what came after the message in it is kept as it came
        (whole lines; no secret), as it would have been then: a watcher that
        came since is not told of it.
        """
        self._message = message
        if self._unfinished:
            data = self._unfinished + data
            self._unfinished = b""
        after, self._unfinished = message.take(data, 0)
        if not message.ended:
            return
        self._message = None
        self._keep((_MESSAGE, (message.lines, message.octets)), when)
        if after < len(data):
            rest = data[after:]  # what came after the "." line: a read of its own
            if past and self._rest and rest[-1:] == b"\n" and (rest in _SAFE or _no_secret(rest)):
                self._keep(rest, when)
                return
            # The message's own reply is still owed: a DATA line in the
            # rest (a second message pasted with the first) is answered
            # one reply later (_hold).
            self._held_replies = 1
            self.client_bytes(rest, when)
            if self._held is None:
                self._held_replies = 0

    def message_read(self, lines: int, octets: int) -> None:
        """
        The connection read the read recorded last as a whole message of
        C{lines} lines, C{octets} octets before its "." line, which the
        L{Transcriber} would read so too (CRLF line ends only, the "." line
        last; L{twisted_mailhub.smtp.server.MailhubSMTP._whole_message}):
        kept as its count without counting it again. Anything else (that
        read is not the one aside here, or nothing is) changes nothing.
        """
        data = self._stash
        if data is not None and len(data) == octets + 3:
            self._stash = None
            self._message = None
            # (_keep, inline: one a message)
            events = self._events
            if self._raw is None:
                self._raw = len(events)
            events.append((_MESSAGE, (lines, octets)))
            self._times.append(self._stash_time)
            if len(events) > self._max + _SLACK:
                self._full()

    def add(self, kind: str, text) -> None:
        """As L{ControlRecord.add}, after the first read of a message kept aside is counted."""
        if self._stash is not None:
            self._count_stashed()
        ControlRecord.add(self, kind, text)

    def server_bytes(self, data: bytes) -> None:
        """What the server sent (one reply or several, as written, not empty)."""
        if self._held is not None:
            self._replied(data)
            return
        self._server_bytes(data)

    def _server_bytes(self, data: bytes) -> None:
        """L{server_bytes} with nothing held back after a DATA line."""
        if self._stash is not None:
            self._count_stashed()
        bus = self.bus
        if self._rest and not bus.watchers and not bus.session_watchers and data[-1:] == b"\n":
            if data[:3] != b"354":
                if data.find(b"\n354") < 0:
                    # No line of it starts SMTP's DATA: kept as it came
                    # (a reply's time is kept negative). (_keep, inline:
                    # three replies a message.)
                    events = self._events
                    if self._raw is None:
                        self._raw = len(events)
                    events.append(data)
                    self._times.append(-bus.clock())
                    if len(events) > self._max + _SLACK:
                        self._full()
                    return
            elif self._message is None and data.find(b"\n") == len(data) - 1:
                # The go-ahead for DATA, one line: what the client sends
                # next is counted as a message (see the module). Counted
                # before it is kept: keeping it may make the kept entries
                # events (max_lines), and then the Transcriber counts it.
                self._message = _STARTED
                self._go_ahead = data
                self._keep(data, -bus.clock())
                return
        self._transcribed().server_bytes(data)
        self._rest = self._transcriber.at_rest()

    def _make(self) -> None:
        """Play the kept entries through the Transcriber; a message still coming goes on there."""
        if self._stash is not None:
            self._count_stashed()
        ControlRecord._make(self)
        message = self._message
        if message is not None:
            # The kept 354 was played just now (it is kept whenever a
            # message is counted here): the Transcriber reads a message.
            transcriber = self._transcriber
            transcriber._in_data = go_ahead_lines(self._go_ahead) if message is _STARTED else message
            transcriber._client = self._unfinished
            self._message = None
            self._unfinished = b""
            self._rest = False

    def _replayed(self, kind, text) -> None:
        """One event made from a kept entry; a message's entry is its two C: lines, and ends the Transcriber's message."""
        if kind is _MESSAGE:
            transcriber = self._transcriber
            transcriber._in_data = None
            transcriber._client = b""
            ControlRecord._replayed(self, "C", b"[message: %d lines, %d octets]" % text)
            ControlRecord._replayed(self, "C", b".")
            return
        ControlRecord._replayed(self, kind, text)
