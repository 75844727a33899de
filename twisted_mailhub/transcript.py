# -*- test-case-name: tests.test_transcript -*-
"""
Session events: every session on every listener as data, and the
C{--transcript} log made from them.

Design rule 9: a protocol emits its session once, as events; the transcript
log, the live console and metrics all read the same events.

Theory of operation:

 - L{SessionEvents} (one per hub, C{hub.events}) keeps the recent sessions
   in bounded memory: at most C{max_sessions} L{SessionRecord}s (the oldest
   closed ones go first) of at most C{max_lines} events each (the oldest
   lines go first, counted in C{dropped}).
 - An event is a tuple C{(seq, time, kind, text)}: C{kind} is C{"start"},
   C{"C"} (client line), C{"S"} (server line), C{"tls"} (the session is
   encrypted from here; text: version and cipher), C{"login"} (text: the
   account), C{"data"} (an FTP data connection, text: who connected to
   whom, bytes, duration), C{"end"}.
 - Watchers (L{SessionEvents.subscribe}) are called with each new event
   they asked for: all, all but the lines (a session list), or one
   session's. With no watcher, an event costs one tuple appended to a deque.
 - L{TranscriptFactory} wraps a listener's factory; its protocol turns the
   bytes of a connection into masked C{C:}/C{S:} lines with L{Transcriber}.

Secrets are masked: passwords (POP3/FTP C{PASS}, IMAP C{LOGIN}), SASL
responses (anything the client sends while an AUTH/AUTHENTICATE exchange is
open, and the initial response on the AUTH line). The body of an SMTP DATA
is summarised in one line rather than kept.
"""

from __future__ import annotations

import itertools
from itertools import repeat
import re
import time
from collections import OrderedDict, deque
from typing import Any, Callable

from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.protocols import policies

from twisted_mailhub.lines import send_now
from twisted_mailhub.logobserver import QuickLogger
from zope.interface import implementer

# --transcript logs a line per command and reply: the Logger without its
# per-call level scan (logobserver.QuickLogger).
log = QuickLogger(namespace="mailhub.transcript")

_ids = itertools.count(1)

# (Any run of blanks between words, before the first too: the protocols
# split their lines so, and a password must be masked however typed.)
_AUTH = re.compile(rb"^[ \t]*(?:(\S+)[ \t]+)?(AUTH|AUTHENTICATE)\b", re.I)
_AUTH_INITIAL = re.compile(rb"^([ \t]*(?:\S+[ \t]+)?(?:AUTH|AUTHENTICATE)[ \t]+\S+)[ \t]+\S.*", re.I)
# After a refused AUTH/AUTHENTICATE (_in_sasl is this until the client's
# next line): a line of one base64 word that is no command of the protocol
# is the credential the client sent without reading the refusal.
_REFUSED = "refused"
_ECHOED = "echoed"  # a word masked so: the next server line may start with it
_FOLLOWING = "following"  # a word masked so and answered: one more may follow (AUTH LOGIN's password)
_TAGGED_REFUSAL = re.compile(rb"^\S+ (?:NO|BAD)\b")
_BASE64_WORD = re.compile(rb"^[ \t]*[A-Za-z0-9+/]{4,}={0,2}[ \t]*$")
# SMTP (RFC 5321, and the older or rarer ones a student finds in a book:
# TURN, SEND, SOML, SAML of RFC 821, ATRN of RFC 2645, VERB, ONEX, XCLIENT,
# XFORWARD of Sendmail and Postfix) and POP3 (RFC 1939, 2449, 6856; LAST
# and RPOP of RFC 1460/1081) command words: never taken for a credential.
_COMMAND_WORDS = frozenset(
    b"HELO EHLO LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH ETRN "
    b"TURN ATRN SEND SOML SAML VERB ONEX XCLIENT XFORWARD "
    b"USER PASS APOP STAT LIST RETR DELE TOP UIDL CAPA STLS UTF8 LANG LAST RPOP".split()
)


# POP3 (RFC 1939) and FTP (RFC 959, 2228, 2389, 2428, 3659) commands: a
# line of one of them right after USER is the next command, not a password.
_AFTER_USER_COMMANDS = _COMMAND_WORDS | frozenset(
    b"ACCT CWD CDUP SMNT REIN PORT PASV EPRT EPSV TYPE STRU MODE STOR STOU APPE ALLO REST RNFR RNTO "
    b"ABOR RMD MKD PWD NLST SITE SYST FEAT OPTS PBSZ PROT CCC MDTM SIZE MLST MLSD MFMT "
    b"XPWD XCWD XCUP XMKD XRMD".split()
)
_USER = re.compile(rb"^[ \t]*USER\b", re.I)
_SHORT_LOGIN = re.compile(rb"^[ \t]*\S+[ \t]+LOGIN[ \t]+[^ \t{}]+[ \t]*$", re.I)


def _looks_like_a_password(bare: bytes) -> bool:
    """
    Whether C{bare}, a POP3 or FTP client line right after C{USER}, is one
    word that is no command: the password typed alone, as at a
    C{Password:} prompt (a slip of people typing by hand), which the
    console and C{--transcript} must not show.
    """
    word = bare.strip()
    return bool(word) and len(word.split()) == 1 and word.upper() not in _AFTER_USER_COMMANDS


def looks_like_a_secret(bare: bytes, following: bool = False) -> bool:
    """
    Whether C{bare}, a client line right after a refused AUTH (or right
    after such a line), is one base64 word (RFC 4648 §4 alphabet, 4
    characters or more) that is not a command of SMTP, POP3 or FTP: a SASL
    response (RFC 4954 §4, RFC 5034 §4) sent to a server that had already
    said no (or, in FTP, whatever follows a refused RFC 2228 AUTH): a
    command word (L{is_command_word}: "TURN") is never one. AUTH LOGIN's are two lines, the user name and the password:
    the SMTP and POP3 servers and the transcript hide every such line in a
    row, not only the first. C{following}: a line after one hidden so,
    which must be 8 characters or more (a base64 name or password of 4
    octets or more), so that a short typo ("FROB") is shown again.
    """
    word = bare.strip()
    return _BASE64_WORD.match(bare) is not None and not is_command_word(word) and (not following or len(word) >= 8)


def is_command_word(word: bytes | str) -> bool:
    """
    Whether C{word} (a line's first word, any case) is a command of SMTP,
    POP3 or FTP, however old or rare (C{TURN}, C{LAST}, C{XCUP}): typed
    right after a refused AUTH it is a command, never taken for a
    credential and hidden.
    """
    if isinstance(word, str):
        word = word.encode("utf-8", "surrogateescape")
    return word.strip().upper() in _AFTER_USER_COMMANDS



_PASS = re.compile(rb"^([ \t]*PASS)\b.*", re.I)
_LOGIN = re.compile(rb"^([ \t]*\S+[ \t]+(?:UID[ \t]+)?LOGIN[ \t]+\S+)[ \t].*", re.I)
# An IMAP LOGIN whose user name is a literal: the password is on the line
# that follows the literal.
_LOGIN_LITERAL = re.compile(rb"^[ \t]*\S+[ \t]+LOGIN[ \t]+~?\{\d{1,20}\+?\}$", re.I)
# An IMAP line that ends in a literal's size (RFC 3501 §4.3, LITERAL+ RFC 7888, literal8 RFC 3516).
_IMAP_LITERAL = re.compile(rb"~?\{(\d{1,20})(\+?)\}$")
# The octets of an over-long IMAP line kept to find a literal at its end
# ("~{" 20 digits "+}\r").
_TAIL_KEPT = 26
# Control bytes other than tab are shown as \xNN, never raw.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

Event = tuple  # (seq: int, time: float, kind: str, text: str)
# POP3 commands whose +OK answer carries a message (RFC 1939 §7), as split.
_MESSAGE_COMMANDS = ([b"RETR"], [b"TOP"])
# POP3 lines of a command and a message number ("RETR 12"), which no mask
# touches; and those that are all RETR (whose +OK answer carries a message).
_POP3_NUMBERED = re.compile(rb"(?:(?:RETR|DELE|LIST|UIDL) [0-9]{1,20}\r?\n)+", re.I)


def _all_retrs(data: bytes) -> bool:
    """
    Whether C{data} is whole lines C{RETR <number>} (any case, CRLF or
    LF), found with a few passes in C (a regular expression that ignores
    case is slower).
    """
    upper = data.upper()
    n = upper.count(b"\n")
    return (
        upper.startswith(b"RETR ")
        and upper.count(b"RETR ") == n
        and upper.count(b"\nRETR ") == n - 1
        and upper.replace(b"RETR ", b"").replace(b"\r\n", b"").replace(b"\n", b"").isdigit()
    )

_NUMBERED = {word: word[:4].upper() == b"RETR" for word in (b"RETR", b"DELE", b"LIST", b"UIDL", b"retr", b"dele", b"list", b"uidl")}
_LINE_KINDS = frozenset({"C", "S"})

# A DATA command line (RFC 5321 section 4.1.1.4), in any case: in a read
# that goes on past it, what follows may be the message itself, sent before
# the server's 354 (a whole session pasted into nc, or piped in with printf:
# the README's way for a class). SMTP's records hold that back until the
# DATA's reply (Transcriber and smtp.record.MailRecord).
_DATA_LINE = re.compile(rb"(?im)^data[ \t]*\r?\n")
# At most this much of what came after a DATA line is held back until the
# DATA's reply; past it, it is recorded as it came (read as command lines).
HELD_MOST = 1024 * 1024


def after_data_line(data: bytes) -> int | None:
    """
    Where what follows the first DATA command line of C{data} (a read of
    several lines) starts, when something does; else None.
    """
    found = _DATA_LINE.search(data)
    if found is None or found.end() >= len(data):
        return None
    return found.end()


def final_reply_lines(data: bytes) -> list[int]:
    """The offsets just past each final reply line (C{250 ...}, not C{250-...}) of C{data}, server octets of SMTP."""
    ends = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            return ends
        if data[pos + 3:pos + 4] in (b" ", b"\r", b"\n"):
            ends.append(end + 1)
        pos = end + 1


def next_connection_id(protocol: str) -> str:
    return f"{protocol}#{next(_ids)}"


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def line_text(line: bytes) -> str:
    """
    A line of a session (bytes, no line end) as it is shown: UTF-8, other
    octets as C{\\xff}, control characters other than tab as C{\\x1b}.
    """
    text = line.decode("utf-8", "backslashreplace")
    return _visible(text) if _CONTROL.search(text) else text


class SessionRecord:
    """
    One session's facts and its recent events.

    @ivar id: the connection id, e.g. C{smtp#12}.
    @ivar protocol: the listener's name (C{smtp}, C{pop3s}, C{relay}, ...).
    @ivar client: C{(host, port)} of the client.
    @ivar server: C{(host, port)} of the hub's end.
    @ivar account: the address that logged in, C{""} before.
    @ivar tls: C{"TLSv1.3 TLS_AES_256_GCM_SHA384"} once encrypted, else C{""}.
    @ivar started: seconds since the epoch; C{ended} too, or L{None} while open.

    How the events are kept, for the cost of a session nobody reads: with
    no watcher of its lines, a line is kept as it came (bytes) and a POP3
    answer that carries a message (RETR, TOP) as one entry of its facts
    (L{ANSWER_ENTRY}) instead of its three lines; they are made the events
    L{events} shows only when someone reads them.
    """

    __slots__ = ("bus", "id", "protocol", "client", "server", "account", "tls", "started", "ended", "_events", "_made", "_seq")

    def __init__(self, bus: "SessionEvents", id: str, protocol: str, client: tuple, server: tuple):
        self.bus = bus
        self.id = id
        self.protocol = protocol
        self.client = client
        self.server = server
        self.account = ""
        self.tls = ""
        self.started = bus.clock()
        self.ended: float | None = None
        # Entries: events (seq, time, kind, text), text bytes while not yet
        # made text; and answers (seq, time, status, lines, octets), which
        # are the three events seq, seq + 1 and seq + 2.
        self._events = self._new_events()
        # Events recorded in all (the last one's seq), and how many of them
        # the entries showed when last made text (L{events}).
        self._seq = 0
        self._made = 0

    def _new_events(self):
        """Where the entries are kept (a kind of record keeps them its own way)."""
        return deque(maxlen=self.bus.max_lines)

    @property
    def events(self) -> deque:
        """
        The kept events, oldest first: C{(seq, time, kind, text)} tuples
        (at most the bus's C{max_lines}).
        """
        if self._made != self._seq:
            self._make_events()
        return self._events

    @property
    def dropped(self) -> int:
        """How many old events were let go (the bus's C{max_lines})."""
        return self._seq - len(self.events)

    def _make_events(self) -> None:
        # Entries recorded as bytes or as an answer's facts become the
        # events they stand for, in place (the deque stays the same one).
        events = self._events
        made: list = []
        add = made.append
        for e in events:
            if len(e) == 4:
                add(e if e[3].__class__ is str else (e[0], e[1], e[2], line_text(e[3])))
            else:
                seq, when, status, lines, octets = e
                add((seq, when, "S", line_text(status)))
                add((seq + 1, when, "S", f"[message: {lines} lines, {octets} octets]"))
                add((seq + 2, when, "S", "."))
        events.clear()
        events.extend(made)  # (the deque keeps the last max_lines)
        self._made = self._seq

    def add(self, kind: str, text: str) -> None:
        """Record one event and tell the watchers."""
        seq = self._seq = self._seq + 1
        bus = self.bus
        event = (seq, bus.clock(), kind, text)
        self._events.append(event)
        if bus.watchers or bus.list_watchers or bus.session_watchers:
            bus.tell(self, event)

    def add_line(self, kind: str, line: bytes) -> None:
        """
        Record a C:/S: line (bytes, no line end). With a watcher of lines
        it is made text and published at once, as L{add} does; with none,
        it is kept as bytes and made text only if someone reads it
        (L{events}): a session nobody watches costs a tuple per line.
        """
        bus = self.bus
        if bus.watchers or (bus.session_watchers and self.id in bus.session_watchers):
            self.add(kind, line_text(line))
            return
        seq = self._seq = self._seq + 1
        self._events.append((seq, bus.clock(), kind, line))

    def add_lines(self, kind: str, lines: list[bytes]) -> None:
        """
        Record several C:/S: lines at once (bytes, no line ends), as
        L{add_line} does each: with nobody watching, in one C{extend} of
        the deque (an untagged FETCH of every message is hundreds of lines).
        """
        bus = self.bus
        if bus.watchers or (bus.session_watchers and self.id in bus.session_watchers):
            for line in lines:
                self.add(kind, line_text(line))
            return
        events = self._events
        n = len(lines)
        if n > events.maxlen:
            # Only the last max_lines can be kept.
            self._seq += n - events.maxlen
            lines = lines[n - events.maxlen :]
            n = events.maxlen
        seq = self._seq
        events.extend(zip(range(seq + 1, seq + n + 1), repeat(bus.clock()), repeat(kind), lines))
        self._seq = seq + n

    def add_answer(self, status: bytes, lines: int, octets: int) -> None:
        """
        Record the server's answer that carries a message (POP3 RETR,
        TOP: the status line C{status}, no line end, then C{lines} lines
        of C{octets} octets) as its three S: lines: C{status}, C{[message:
        N lines, M octets]} and C{.}. With nobody watching, in one entry
        of its facts (see the class), made text when read.
        """
        bus = self.bus
        if bus.watchers or (bus.session_watchers and self.id in bus.session_watchers):
            self.add_lines("S", (status, b"[message: %d lines, %d octets]" % (lines, octets), b"."))
            return
        seq = self._seq
        self._seq = seq + 3
        self._events.append((seq + 1, bus.clock(), status, lines, octets))

    def logged_in(self, account: str) -> None:
        if self.bus.account_name is not None:
            account = self.bus.account_name(account) or account
        self.account = account
        self.add("login", account)

    def encrypted(self, description: str) -> None:
        self.tls = description or "TLS"
        self.add("tls", self.tls)

    def closed(self) -> None:
        if self.ended is None:
            self.ended = self.bus.clock()
            self.add("end", "closed")
            self.bus.closed(self)

    @property
    def state(self) -> str:
        return "open" if self.ended is None else "closed"

    def summary(self) -> dict[str, Any]:
        """The session's facts as a JSON-able dict (the console's list row)."""
        end = self.ended if self.ended is not None else self.bus.clock()
        return {
            "id": self.id,
            "protocol": self.protocol,
            "client": f"{self.client[0]}:{self.client[1]}",
            "server": f"{self.server[0]}:{self.server[1]}",
            "account": self.account,
            "tls": self.tls,
            "started": self.started,
            "duration": round(end - self.started, 3),
            "state": self.state,
            "lines": self._seq,
        }


class SessionEvents:
    """
    The session-event bus of one hub.

    @param max_sessions: most sessions kept (open ones are never dropped).
    @param max_lines: most events kept per session.
    @param clock: a function returning seconds since the epoch.
    """

    def __init__(self, max_sessions: int = 1000, max_lines: int = 5000, clock: Callable[[], float] = time.time):
        self.max_sessions = max_sessions
        self.max_lines = max_lines
        self.clock = clock
        self.records: OrderedDict[str, SessionRecord] = OrderedDict()
        # Does anyone read sessions (--transcript, the console)? Sessions
        # the hub starts itself (outbound relay) are recorded only then.
        self.recording = False
        # Called with every event / with events other than C:/S: lines /
        # with the events of one session.
        self.watchers: list[Callable[[SessionRecord, Event], None]] = []
        self.list_watchers: list[Callable[[SessionRecord, Event], None]] = []
        self.session_watchers: dict[str, list[Callable[[SessionRecord, Event], None]]] = {}
        # Turns a login name into the account's address (a bare "alice"
        # into "alice@example.org"); set by the hub.
        self.account_name: Callable[[str], str | None] | None = None
        self._closed = 0

    def start(self, protocol: str, client: tuple = ("?", 0), server: tuple = ("?", 0), id: str | None = None, kind: type | None = None) -> SessionRecord:
        """A new session; its C{start} event names the two ends. C{kind}: a subclass of L{SessionRecord} to make."""
        record = (kind or SessionRecord)(self, id or next_connection_id(protocol), protocol, client, server)
        self.records[record.id] = record
        if len(self.records) > self.max_sessions:
            self._forget()
        record.add("start", f"{client[0]}:{client[1]} -> {server[0]}:{server[1]}")
        return record

    def _forget(self) -> None:
        # The oldest closed sessions go first; usually the very oldest is
        # closed, so no copy of the (up to max_sessions) keys per session.
        records = self.records
        while len(records) > self.max_sessions:
            for key, record in records.items():
                if record.ended is not None:
                    del records[key]
                    break
            else:
                return  # every session kept is still open

    def closed(self, record: SessionRecord) -> None:
        if len(self.records) > self.max_sessions:
            self._forget()

    def get(self, id: str) -> SessionRecord | None:
        return self.records.get(id)

    def sessions(self) -> list[SessionRecord]:
        """Every kept session, oldest first."""
        return list(self.records.values())

    def subscribe(self, watcher: Callable[[SessionRecord, Event], None], session: str | None = None, lines: bool = True) -> None:
        """
        Call C{watcher(record, event)} for each new event: of every session,
        or only of C{session}; with C{lines=False} (a session list), for
        every event but C{C:}/C{S:} lines.
        """
        if session is not None:
            self.session_watchers.setdefault(session, []).append(watcher)
        elif lines:
            self.watchers.append(watcher)
        else:
            self.list_watchers.append(watcher)

    def unsubscribe(self, watcher: Callable[[SessionRecord, Event], None]) -> None:
        for group in [self.watchers, self.list_watchers, *self.session_watchers.values()]:
            while watcher in group:
                group.remove(watcher)
        for key in [k for k, v in self.session_watchers.items() if not v]:
            del self.session_watchers[key]

    def tell(self, record: SessionRecord, event: Event) -> None:
        """
        Hand one new event of C{record} to each watcher that asked for it:
        every watcher of all events, the session lists' watchers (an event
        other than a C:/S: line), and the watchers of that one session. Each
        kind pays only for what it asked for: a session list is not called
        for every line of every session. Every kind of record calls this
        (L{SessionRecord.add}, L{twisted_mailhub.ftp.record.ControlRecord}),
        usually only when C{watchers}, C{list_watchers} or
        C{session_watchers} is not empty.
        """
        if self.watchers:
            self.publish(self.watchers, record, event)
        if self.list_watchers and event[2] not in _LINE_KINDS:
            self.publish(self.list_watchers, record, event)
        if self.session_watchers:
            watching = self.session_watchers.get(record.id)
            if watching:
                self.publish(watching, record, event)

    def publish(self, watchers: list, record: SessionRecord, event: Event) -> None:
        for watcher in list(watchers):
            try:
                watcher(record, event)
            except Exception:
                log.failure("a session-event watcher failed; dropped")
                self.unsubscribe(watcher)


def log_event(record: SessionRecord, event: Event) -> None:
    """
    The C{--transcript} watcher: each event as a log line with the
    connection id (C{smtp#3 C: EHLO x}).
    """
    _, _, kind, text = event
    if kind in ("C", "S"):
        log.info("{cid} {who}: {line}", cid=record.id, who=kind, line=text)
    elif kind == "start":
        log.info("{cid} connected from {host}:{port}", cid=record.id, host=record.client[0], port=record.client[1])
    elif kind == "end":
        log.info("{cid} closed", cid=record.id)
    else:
        log.info("{cid} {kind}: {text}", cid=record.id, kind=kind, text=text)


class Transcriber:
    """
    Turns the bytes of one session into masked C:/S: lines: events of
    C{record} when given, else log lines.

    Made to cost little, because every session on the hub goes through
    one when the console or C{--transcript} is on: input is cut into
    lines by index, never copied line by line; the lines of a message
    (SMTP DATA from the client, a POP3 RETR or TOP answer from the
    server) are counted with C{bytes.count} in whole chunks and become one
    summary line; the octets of an IMAP literal (a FETCH body, an APPEND
    message, a string sent as a literal: RFC 3501 §4.3) are skipped by
    their count and become one C{[literal: N octets]} line; a line is
    turned into text only when someone reads it
    (L{SessionRecord.add_line}).
    """

    def __init__(self, connection_id: str, record: SessionRecord | None = None):
        self.connection_id = connection_id
        self.record = record
        self._client = b""
        self._server = b""
        # The start of an over-long client line was shown: what follows
        # up to its LF is the rest of it, not a line of its own.
        self._overlong = False
        self._overlong_tag = b""  # (IMAP) the over-long line's tag
        self._overlong_tail = b""  # (IMAP) its last octets so far: a literal's {N}
        self._in_sasl: bool | str = False  # True in a SASL exchange; _REFUSED, _ECHOED after a refused one
        self._echo = b""
        # The client is sending a message (SMTP DATA) up to a "." line.
        self._in_data: _MessageLines | None = None
        # The server is sending a message (POP3 RETR/TOP) up to a "." line.
        self._out_data: _MessageLines | None = None
        # POP3: for each command not yet answered, whether its +OK starts a
        # message (RETR, TOP), in order (RFC 2449 pipelining).
        protocol = record.protocol if record is not None else connection_id.partition("#")[0]
        self._pop3: deque | None = deque(maxlen=256) if protocol in ("pop3", "pop3s") else None
        # IMAP literals: octets still to skip in each direction (and the
        # literal's size, for its summary line), and a client's
        # synchronizing literal announced but not yet accepted by a "+".
        self._imap = protocol.startswith("imap")
        self._in_literal = self._in_literal_size = 0
        self._out_literal = self._out_literal_size = 0
        self._client_sync = 0
        self._client_sync_tag = b""
        self._login_rest = False
        # POP3 and FTP: the last client line was USER (_client_line).
        self._user_protocol = protocol in ("pop3", "pop3s", "ftp")
        self._after_user = False
        # Where the protocol's bytes go past the recorder (set by
        # TranscriptProtocol), for record_message.
        self.past: Any = None
        # Recorded, and neither POP3 nor IMAP (SMTP, FTP...): whole CRLF
        # lines may take the shortcuts of client_bytes and server_bytes.
        self._plain = record is not None and self._pop3 is None and not self._imap
        # The record's bus, for the shortcuts that record a line inline.
        self._bus = record.bus if record is not None else None
        # Whether a line may be appended to the record's events inline when
        # nobody watches (a SessionRecord's deque; not a record that keeps
        # its events otherwise, as FTP's ControlRecord does).
        self._inline = type(record) is SessionRecord
        if record is not None:
            self._emit = record.add_line  # one call less per line
        # SMTP: what a client sent after a DATA line before the server
        # answered it, and the final replies still to come up to DATA's
        # (see after_data_line; _hold).
        self._smtp = protocol in ("smtp", "submission", "smtps")
        self._held: bytes | None = None
        self._held_replies = 0
        if not self._smtp:
            # Nothing is ever held: no call more per read and per reply.
            self.client_bytes = self._transcribe_client  # type: ignore[method-assign]
            self.server_bytes = self._transcribe_server  # type: ignore[method-assign]

    def at_rest(self) -> bool:
        """
        Whether the bytes so far leave no exchange under way: no line in
        parts either way, no SASL response, IMAP literal or message
        expected. Whole lines given next are then read the same whenever
        they are given (L{twisted_mailhub.ftp.record.ControlRecord} keeps
        such lines and gives them later).
        """
        return not (
            self._client or self._server or self._overlong or self._in_sasl or self._login_rest or self._in_data or self._out_data
            or self._in_literal or self._out_literal or self._client_sync or self._held is not None
        )

    def _emit(self, who: str, line: bytes) -> None:
        if self.record is not None:
            self.record.add_line(who, line)
        else:
            log.info("{cid} {who}: {line}", cid=self.connection_id, who=who, line=line_text(line))

    # -- the client's side ----------------------------------------------------

    def client_bytes(self, data: bytes) -> None:
        if self._smtp:
            if self._held is not None:
                self._held += data
                if len(self._held) > HELD_MOST:
                    self._release()
                return
            if self._in_data is None and data.find(b"\n") != len(data) - 1 and (at := after_data_line(self._client + data)) is not None:
                # A DATA line with more after it (a session pasted whole,
                # the client not waiting for the 354: RFC 5321 4.1.1.4):
                # the rest waits for the DATA's reply (server_bytes).
                data = self._client + data
                self._client = b""
                self._held_replies += data.count(b"\n", 0, at)  # (+ a reply owed before it: see the message's end below)
                self._transcribe_client(data[:at])
                self._held = data[at:]
                return
        self._transcribe_client(data)

    def _release(self) -> None:
        """Transcribe what was held back after a DATA line: after a 354 it is the message (counted), else command lines."""
        held, self._held = self._held, None
        if held:
            self._transcribe_client(held)

    def _transcribe_client(self, data: bytes) -> None:
        if self._overlong:
            end = data.find(b"\n")
            if end < 0:
                if self._imap:
                    self._overlong_tail = (self._overlong_tail + data)[-_TAIL_KEPT:]
                return
            self._overlong = False
            if self._imap:
                # An IMAP line ending in a literal ({N} or {N+}): its
                # octets come next, not lines (RFC 3501 §4.3).
                self._client_literal(self._overlong_tag + b" " + (self._overlong_tail + data[:end])[-_TAIL_KEPT:])
            data = data[end + 1:]
            if not data:
                return
        pending = self._pop3
        if pending is not None and data.find(b"\n") == len(data) - 1 and not (self._client or self._in_sasl or self._login_rest):
            # One POP3 line; the commonest, "RETR 12", without a mask or an
            # expression (as _client_line would record it).
            bare = data[:-2] if data[-2:-1] == b"\r" else data[:-1]
            word, _, number = bare.partition(b" ")
            if number.isdigit():
                message = _NUMBERED.get(word)
                if message is None:
                    message = _NUMBERED.get(word.upper())
                if message is not None:
                    pending.append(message)
                    bus = self._bus
                    if bus is not None and not (bus.watchers or bus.session_watchers):
                        # What add_line does with nobody watching, inline.
                        record = self.record
                        seq = record._seq = record._seq + 1
                        record._events.append((seq, bus.clock(), "C", bare))
                    else:
                        self._emit("C", bare)
                    return
            self._client_line(data[:-1])
            return
        if (
            pending is not None
            and data[-1:] == b"\n"
            and not (self._client or self._in_sasl or self._login_rest)
            and ((retrs := _all_retrs(data)) or _POP3_NUMBERED.fullmatch(data) is not None)
        ):
            # A pipelined batch of POP3 lines of a command and a message
            # number ("RETR 12"): no mask applies, so they are recorded in
            # one step, each with whether its answer carries a message.
            if retrs:
                pending.extend(repeat(True, data.count(b"\n")))
            else:
                pending.extend(line[:4].upper() == b"RETR" for line in data.splitlines())
            if data.find(b"\r") >= 0:
                data = data.replace(b"\r\n", b"\n")
            if self.record is not None:
                self.record.add_lines("C", data[:-1].split(b"\n"))
            else:
                for line in data[:-1].split(b"\n"):
                    self._emit("C", line)
            return
        if 0 <= data.find(b"\n") == len(data) - 1 and not (self._client or self._in_data or self._in_literal):
            # The common case: one whole command line.
            if self._plain and not (self._in_sasl or self._login_rest or self._after_user) and data[-2:-1] == b"\r":
                # Of a protocol that is neither POP3 nor IMAP (SMTP), with no
                # secret to mask: as _client_line records it, one call less.
                upper = data.upper()
                if upper.find(b"AUTH") < 0 and upper.find(b"PASS") < 0 and upper.find(b"LOGIN") < 0 and upper.find(b"USER", 0, 12) < 0:
                    bus = self._bus
                    if not self._inline or bus.watchers or bus.session_watchers:
                        self.record.add_line("C", data[:-2])
                    else:
                        # What add_line does with nobody watching, inline.
                        record = self.record
                        seq = record._seq = record._seq + 1
                        record._events.append((seq, bus.clock(), "C", data[:-2]))
                    return
            self._client_line(data[:-1])
            return
        if (
            self._plain
            and not (self._client or self._in_data or self._in_sasl or self._login_rest or self._after_user)
            and data[-2:] == b"\r\n"
            and data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
        ):
            # Whole CRLF command lines sent together (an SMTP envelope,
            # RFC 2920) of a protocol that is neither POP3 nor IMAP: with
            # no secret to mask in them, they are recorded in one go, as
            # _client_line would record each.
            upper = data.upper()
            if upper.find(b"AUTH") < 0 and upper.find(b"PASS") < 0 and upper.find(b"LOGIN") < 0 and upper.find(b"USER") < 0:
                self.record.add_lines("C", data[:-2].split(b"\r\n"))
                return
        if self._client:
            data = self._client + data
            self._client = b""
        pos, end = 0, len(data)
        while pos < end:
            if self._in_literal:
                take = min(self._in_literal, end - pos)
                self._in_literal -= take
                pos += take
                if self._in_literal:
                    return
                self._emit("C", b"[literal: %d octets]" % self._in_literal_size)
                continue
            if self._in_data:
                pos, self._client = self._in_data.take(data, pos)
                if not self._in_data.ended:
                    return
                if self.record is not None:
                    self.record.add_lines("C", (self._in_data.summary(), b"."))
                else:
                    self._emit("C", self._in_data.summary())
                    self._emit("C", b".")
                self._in_data = None
                if self._smtp and pos < end:
                    # What follows the message may be another one pasted
                    # with it: read as a read of its own (client_bytes'
                    # hold), the message's own reply still owed.
                    self._held_replies = 1
                    self.client_bytes(data[pos:])
                    if self._held is None:
                        self._held_replies = 0
                    return
                continue
            i = data.find(b"\n", pos)
            if i < 0:
                break
            self._client_line(data[pos:i])
            pos = i + 1
        if pos < end:
            rest = data[pos:] if pos else data
            if len(rest) > 4096:
                self._overlong_line(rest[:80])
                if self._imap:
                    self._overlong_tail = rest[-_TAIL_KEPT:]
                rest = b""
            self._client = rest

    def _overlong_line(self, start: bytes) -> None:
        """
        A client line past 4096 octets with no LF yet (the server drops
        it: lines.py): shown by its first octets, masked as the whole line
        would be (a password, a SASL response), with a note; the rest of
        it, up to its LF, is skipped (L{_transcribe_client}).
        """
        self._overlong = True
        if self._imap:
            self._overlong_tag = start.split(b" ", 1)[0]
            self._overlong_tail = b""
        emit = self._emit

        def noted(who: bytes, line: bytes) -> None:
            emit(who, line + (b"" if line.endswith(b"...") else b"...") + b" [over-long line]")

        self._emit = noted  # type: ignore[method-assign]
        try:
            self._client_line(start)
        finally:
            del self._emit

    def _client_line(self, line: bytes) -> None:
        # One CR is the line end's; another one is the line's (shown as
        # \x0d: the server refuses such a line for it).
        bare = line[:-1] if line[-1:] == b"\r" else line
        pending = self._pop3
        if pending is not None and not (self._in_sasl or self._login_rest):
            # A POP3 line of a pipelined batch, "RETR 12": no mask, no
            # expression.
            word, _, number = bare.partition(b" ")
            if number.isdigit():
                message = _NUMBERED.get(word.upper())
                if message is not None:
                    pending.append(message)
                    self._emit("C", bare)
                    return
        if self._in_sasl:
            state = self._in_sasl
            if state is True:
                if not is_command_word(bare):
                    self._emit("C", b"**** (SASL response)")
                    return
                # A command word ("QUIT", "LAST") is no SASL response: sent
                # pipelined behind the AUTH before its answer, it is shown.
                self._emit("C", bare)
                return
            # The line after a refused AUTH: a client (or a student typing
            # by hand) that did not read the refusal sends its credentials
            # anyway; one word that is no command is masked as they would be,
            # and so is its echo as an IMAP tag in the reply (_server_line).
            self._in_sasl = False
            if state in (_REFUSED, _ECHOED, _FOLLOWING) and looks_like_a_secret(bare, following=state is not _REFUSED):
                self._echo = bare.strip() + b" "
                self._in_sasl = _ECHOED
                self._emit("C", b"**** (after a refused AUTH)")
                return
        if self._after_user:
            self._after_user = False
            if _looks_like_a_password(bare):
                self._emit("C", b"**** (after LOGIN without a password: it may be the password)" if self._imap else b"**** (after USER: it may be the password)")
                return
        if self._login_rest:
            # The rest of a LOGIN after its user name's literal (breaker).
            self._login_rest = False
            self._emit("C", b" ****" if bare.strip() else bare)
            if self._imap:
                self._client_literal(line)
            return
        # The masks look for AUTH, PASS and LOGIN: a line that holds none
        # of them needs no regular expression. (find, not "in": bytes'
        # "in" first tries its operand as an int and builds a TypeError,
        # about 1,800 instructions each time.)
        upper = bare.upper()
        if upper.find(b"AUTH") >= 0 and _AUTH.match(bare):
            self._in_sasl = True
            bare = _AUTH_INITIAL.sub(rb"\1 ****", bare)
        elif upper.find(b"PASS", 0, 16) >= 0 and _PASS.match(bare):
            bare = _PASS.sub(rb"\1 ****", bare)
        elif upper.find(b"LOGIN") >= 0:
            if _LOGIN.match(bare):
                bare = _LOGIN.sub(rb"\1 ****", bare)
            elif self._imap and _LOGIN_LITERAL.match(bare):
                self._login_rest = True
        elif self._user_protocol and upper.find(b"USER", 0, 12) >= 0 and _USER.match(bare):
            self._after_user = True
        if self._imap and upper.find(b"LOGIN") >= 0 and _SHORT_LOGIN.match(bare):
            # "a1 LOGIN bob": the password may come alone on the next line
            # (the server answers it untagged, imap/server.py).
            self._after_user = True
        if self._pop3 is not None:
            self._pop3.append(upper.split(None, 1)[:1] in _MESSAGE_COMMANDS)
        self._emit("C", bare)
        if self._imap:
            self._client_literal(line)

    def _client_literal(self, line: bytes) -> None:
        """
        An IMAP client line (unmasked) that ends in C{{N+}}: the next N
        octets are a literal; one that ends in C{{N}}: they are once the
        server says C{+} (a client that sends another line first did not
        wait, and its literal is read as lines).
        """
        self._client_sync = 0
        bare = line.rstrip(b"\r")
        if bare[-1:] != b"}":
            return
        m = _IMAP_LITERAL.search(bare)
        if m is None:
            return
        n = int(m.group(1))
        if m.group(2):
            self._in_literal = self._in_literal_size = n
        else:
            self._client_sync = n
            self._client_sync_tag = bare.split(b" ", 1)[0] + b" "

    # -- the server's side ------------------------------------------------------

    def server_bytes(self, data: bytes) -> None:
        if self._held is not None:
            # Up to the DATA's own reply, then what the client sent after
            # the DATA line, then the rest.
            for end in final_reply_lines(data):
                self._held_replies -= 1
                if self._held_replies <= 0:
                    self._transcribe_server(data[:end])
                    self._release()
                    if end < len(data):
                        self.server_bytes(data[end:])
                    return
        self._transcribe_server(data)

    def _transcribe_server(self, data: bytes) -> None:
        if self._plain and not (self._server or self._in_sasl):
            last = len(data) - 1
            if data.find(b"\n") == last and data.find(b"\r") == last - 1:
                # One CRLF reply line, no other CR or LF in it (SMTP's, one
                # per command without pipelining): as the shortcut below
                # records it, with add_line inline when nobody watches.
                bus = self._bus
                if not self._inline or bus.watchers or bus.session_watchers:
                    self.record.add_line("S", data[:-2])
                else:
                    record = self.record
                    seq = record._seq = record._seq + 1
                    record._events.append((seq, bus.clock(), "S", data[:-2]))
                if data.startswith(b"354"):
                    self._in_data = go_ahead_lines(data)  # SMTP's go-ahead for DATA (RFC 5321 §4.2.2)
                return
        if (
            self._plain
            and not (self._server or self._in_sasl)
            and data[-2:] == b"\r\n"
            and data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
        ):
            # Whole CRLF reply lines of a protocol that is neither POP3 nor
            # IMAP (SMTP's replies to a pipelined envelope, FTP's): recorded
            # in one go, as _server_line would record each.
            if data.find(b"\n") == len(data) - 1:
                self.record.add_line("S", data[:-2])
                if data.startswith(b"354"):
                    self._in_data = go_ahead_lines(data)  # SMTP's go-ahead for DATA (RFC 5321 §4.2.2)
                return
            lines = data[:-2].split(b"\r\n")
            self.record.add_lines("S", lines)
            if data.find(b"354") >= 0:
                for line in lines:
                    if line.startswith(b"354"):
                        self._in_data = go_ahead_lines(line)
            return
        if (
            self._imap
            and self.record is not None
            and not (self._server or self._out_literal or self._in_sasl or self._client_sync)
            and data[-2:] == b"\r\n"
            and data.find(b"}\r\n") < 0
        ):
            # IMAP responses with no literal and no state to follow (an
            # untagged FETCH per message): the lines in one go.
            n = data.count(b"\n")
            if n == data.count(b"\r\n"):
                if n == 1:
                    self.record.add_line("S", data[:-2])
                else:
                    self.record.add_lines("S", data[:-2].split(b"\r\n"))
                return
        if self._server:
            data = self._server + data
            self._server = b""
        pos, end = 0, len(data)
        while pos < end:
            if self._out_literal:
                take = min(self._out_literal, end - pos)
                self._out_literal -= take
                pos += take
                if self._out_literal:
                    return
                self._emit("S", b"[literal: %d octets]" % self._out_literal_size)
                continue
            if self._out_data:
                pos, self._server = self._out_data.take(data, pos)
                if not self._out_data.ended:
                    return
                self._emit("S", self._out_data.summary())
                self._emit("S", b".")
                self._out_data = None
                continue
            i = data.find(b"\n", pos)
            if i < 0:
                break
            self._server_line(data[pos:i])
            pos = i + 1
        if pos < end:
            self._server = data[pos:] if pos else data

    def record_message(self, status: bytes, lines: int, octets: int) -> Any:
        """
        L{server_message}, for L{TranscriptProtocol.record_message}: the
        transport to write the answer to past the recorder (C{past}; True
        when there is none), or L{None} when it was not recorded.
        """
        pending = self._pop3
        if self._server or self._out_data is not None or not pending or not pending[0]:
            return None
        # What _server_line does for a status line that starts a message.
        pending.popleft()
        self._in_sasl = False
        bus = self._bus
        if bus is None:
            for line in (status, b"[message: %d lines, %d octets]" % (lines, octets), b"."):
                self._emit("S", line)
        elif bus.watchers or bus.session_watchers:
            self.record.add_answer(status, lines, octets)
        else:
            # What add_answer does with nobody watching, inline: the
            # commonest answer (one per RETR) in one entry.
            record = self.record
            seq = record._seq
            record._seq = seq + 3
            record._events.append((seq + 1, bus.clock(), status, lines, octets))
        past = self.past
        return True if past is None else past

    def record_reply(self, data: bytes) -> Any:
        """L{server_bytes}, for L{TranscriptProtocol.record_reply}: returns C{past}."""
        self.server_bytes(data)
        return self.past

    def server_message(self, status: bytes, lines: int, octets: int) -> bool:
        """
        Record a POP3 RETR or TOP answer from its facts instead of its
        bytes: the status line C{status} (no line end), then C{lines} lines
        and C{octets} octets of message that need no byte-stuffing, then
        ".": the events L{server_bytes} would make of it, without a scan of
        the message. Returns False, recording nothing, when it cannot (the
        reply would not start a line, or its command was not RETR or TOP):
        then the bytes go through L{server_bytes}.
        """
        return self.record_message(status, lines, octets) is not None

    def server_responses(self, lines: list[bytes]) -> bool:
        """
        Record IMAP responses written whole from the lines their server
        made of them (C{lines}: no line ends; a literal as its head line,
        C{[literal: N octets]} unless N is 0, and the rest of its line):
        the events L{server_bytes} would make of their bytes, without a
        scan of them (a FETCH of bodies). Returns False, recording nothing,
        when it cannot (the bytes would not start a line, or an exchange
        is open that reads the server's lines): then the bytes go through
        L{server_bytes}.
        """
        if not self._imap or self.record is None or self._server or self._out_literal or self._in_sasl or self._client_sync:
            return False
        self.record.add_lines("S", lines)
        return True

    def _server_line(self, line: bytes) -> None:
        bare = line[:-1] if line[-1:] == b"\r" else line
        if bare[-1:] == b"\r":
            bare = bare.rstrip(b"\r")
        if bare.startswith(b"354") and self._pop3 is None and not self._imap:
            # SMTP's go-ahead for DATA (RFC 5321 §4.2.2); in POP3 a UIDL or
            # LIST line of message 354, in IMAP a reply to the tag "354".
            self._in_data = go_ahead_lines(bare)
        if self._in_sasl is _ECHOED:
            # (still after the refusal: AUTH LOGIN's second line may follow)
            self._in_sasl = _FOLLOWING
            if bare.startswith(self._echo):
                bare = b"**** " + bare[len(self._echo) :]
        if self._in_sasl and not (bare.startswith(b"334") or bare.startswith(b"+ ") or bare == b"+"):
            # The exchange is over: refused (4xx/5xx, -ERR, NO/BAD) leaves a
            # mark for the client's next line (_client_line), success none.
            if self._in_sasl is not _REFUSED and self._in_sasl is not _FOLLOWING:
                refused = bare[:1] in (b"4", b"5", b"-") or _TAGGED_REFUSAL.match(bare) is not None
                self._in_sasl = _REFUSED if refused else False
        if self._pop3 is not None and bare[:1] in (b"+", b"-") and bare[:2] != b"+ " and bare != b"+":
            # A status line (RFC 1939 §3): the answer to the oldest command.
            message = self._pop3.popleft() if self._pop3 else False
            if message and bare.startswith(b"+OK"):
                self._out_data = _MessageLines()
        self._emit("S", bare)
        if self._imap:
            if self._client_sync:
                if bare[:1] == b"+":
                    # The server accepts the client's synchronizing literal.
                    self._in_literal = self._in_literal_size = self._client_sync
                    self._client_sync = 0
                elif bare.startswith(self._client_sync_tag):
                    self._client_sync = 0  # refused: no literal follows
            if bare[-1:] == b"}":
                m = _IMAP_LITERAL.search(bare)
                if m is not None:
                    self._out_literal = self._out_literal_size = int(m.group(1))


class _MessageLines:
    """
    Counts the lines of a message going by (SMTP DATA, a POP3 RETR) up to
    the "." line that ends it, a chunk at a time, with C{bytes.find} and
    C{bytes.count}: no Python work per line.

    C{crlf}: only a "." line between CRLFs ends it (the SMTP server said
    "354 End data with <CR><LF>.<CR><LF>": a session whose commands end in
    CRLF, where a bare LF "." line is message text, RFC 5321 §4.1.1.4 and
    CVE-2023-51764), so the count ends where the server's reading does.
    Otherwise a "." line ended by LF or CRLF after any line end does.
    """

    __slots__ = ("lines", "octets", "ended", "_mid_line", "crlf", "_after_crlf", "_last_cr")

    # A line of a message longer than this is counted and let go, not kept.
    LONGEST = 4096

    def __init__(self, crlf: bool = False):
        self.lines = 0
        self.octets = 0
        self.ended = False
        self._mid_line = False
        self.crlf = crlf
        # (crlf only) whether the line end before the next line start was
        # a CRLF (the DATA command's is), and whether a long line let go
        # ended in a CR.
        self._after_crlf = True
        self._last_cr = False

    def take(self, data: bytes, pos: int) -> tuple[int, bytes]:
        """
        Count C{data[pos:]} (C{pos} at a line start, unless the last chunk
        ended inside a line too long to keep). Returns where the session
        goes on after the "." line (L{ended} is then set), or C{len(data)}
        and the unfinished last line, to be given again with the next chunk.
        """
        end = len(data)
        if self._mid_line:
            i = data.find(b"\n", pos)
            if i < 0:
                self.octets += end - pos
                self._last_cr = data[-1:] == b"\r"
                return end, b""
            self.lines += 1
            self.octets += i + 1 - pos
            self._mid_line = False
            self._after_crlf = data[i - 1] == 13 if i > pos else self._last_cr
            pos = i + 1
        if self.crlf:
            stop = _end_of_crlf_message(data, pos, self._after_crlf)
        else:
            stop = _end_of_message(data, pos)
        if stop is not None:
            start, after = stop
            self.lines += data.count(b"\n", pos, start)
            self.octets += start - pos
            self.ended = True
            return after, b""
        last = data.rfind(b"\n", pos)
        if last >= 0:
            self.lines += data.count(b"\n", pos, last + 1)
            self.octets += last + 1 - pos
            self._after_crlf = last > pos and data[last - 1] == 13
            pos = last + 1
        if end - pos > self.LONGEST:
            self.octets += end - pos
            self._mid_line = True
            self._last_cr = data[-1:] == b"\r"
            return end, b""
        return end, data[pos:] if pos < end else b""

    def summary(self) -> bytes:
        return b"[message: %d lines, %d octets]" % (self.lines, self.octets)


def go_ahead_lines(reply: bytes) -> _MessageLines:
    """
    The counter of the message an SMTP server's 354 reply C{reply} asks
    for: CRLF-only (L{_MessageLines} C{crlf}) when the reply says the
    message ends with C{<CR><LF>.<CR><LF>}, as the hub's does in a session
    whose commands end in CRLF.
    """
    return _MessageLines(crlf=reply.find(b"<CR><LF>.<CR><LF>") >= 0)


def _end_of_message(data: bytes, pos: int) -> tuple[int, int] | None:
    """
    Where the "." line that ends a message is in C{data[pos:]} (C{pos} at
    a line start): (its start, the index after it), or L{None}.
    """
    if data.startswith(b".\r\n", pos):
        return pos, pos + 3
    if data.startswith(b".\n", pos):
        return pos, pos + 2
    a = data.find(b"\n.\r\n", pos)
    b = data.find(b"\n.\n", pos, a + 3 if a >= 0 else len(data))
    if b >= 0:
        return b + 1, b + 3
    if a >= 0:
        return a + 1, a + 4
    return None


def _end_of_crlf_message(data: bytes, pos: int, after_crlf: bool) -> tuple[int, int] | None:
    """
    L{_end_of_message} where only CRLF "." CRLF ends a message (RFC 5321
    §4.1.1.4); C{after_crlf}: the line end before C{pos} was a CRLF.
    """
    if after_crlf and data.startswith(b".\r\n", pos):
        return pos, pos + 3
    a = data.find(b"\r\n.\r\n", pos)
    if a >= 0:
        return a + 2, a + 5
    return None


def record_read(protocol: Any, record: Any, data: bytes) -> None:
    """
    One read of C{protocol}'s connection (SMTP's, FTP's control
    connection; not empty) into its session C{record}: first, while
    C{protocol._tls_pending} (STARTTLS or AUTH TLS agreed, or an implicit
    TLS listener), the record is told the connection is encrypted once
    the handshake is done (L{tls_description}), so the transcript shows
    where TLS began.
    """
    if protocol._tls_pending:
        description = tls_description(protocol.transport)
        if description:
            protocol._tls_pending = False
            record.encrypted(description)
    record.client_bytes(data)


def tls_description(transport: Any) -> str:
    """
    C{"TLSv1.3 TLS_AES_256_GCM_SHA384"} for a connection whose TLS
    handshake is done, C{""} otherwise.
    """
    while transport is not None:
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                connection = handle()
                version = connection.get_protocol_version_name()
                cipher = connection.get_cipher_name()
            except Exception:
                connection = None
            else:
                if cipher:
                    return f"{version} {cipher}"
        transport = getattr(transport, "transport", None)
    return ""


def record_login(record: SessionRecord, credentials: Any, result: Any) -> None:
    """
    A login succeeded with C{credentials}, the portal answering C{result}
    (C{(interface, avatar, logout)}): the record's C{login} event, naming
    the avatar's address, else the name the client gave.
    """
    name = getattr(credentials, "username", b"") or b""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    avatar = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    address = getattr(avatar, "address", None) or getattr(getattr(avatar, "account", None), "address", None)
    record.logged_in(address if isinstance(address, str) and address else name)


class RecordingPortal:
    """
    A connection's portal, seen through its session record: a successful
    login becomes a C{login} event.
    """

    def __init__(self, portal: Any, record: SessionRecord):
        self._portal = portal
        self._record = record

    def login(self, credentials: Any, mind: Any, *interfaces: Any):
        d = self._portal.login(credentials, mind, *interfaces)

        def ok(result):
            record_login(self._record, credentials, result)
            return result

        return d.addCallback(ok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._portal, name)


@implementer(IHalfCloseableProtocol)
class TranscriptProtocol(policies.ProtocolWrapper):
    # (declared for the class: alsoProvides on each connection made zope
    # build a new interface specification per connection, ~0.15 ms)
    transcriber: Transcriber
    record: SessionRecord

    def connectionMade(self):
        name = getattr(self.factory, "protocol_name", "conn")
        peer = self.transport.getPeer()
        host = self.transport.getHost()
        self.record = self.factory.events.start(
            name, (getattr(peer, "host", "?"), getattr(peer, "port", 0)), (getattr(host, "host", "?"), getattr(host, "port", 0))
        )
        self.transcriber = Transcriber(self.record.id, self.record)
        self._tls_pending = ISSLTransport.providedBy(self.transport)
        # POP3 looks this up once per connection: the transcriber's own,
        # one call and no lookup through this wrapper per message.
        self.transcriber.past = self.transport
        self.record_message = self.transcriber.record_message
        self.record_reply = self.transcriber.record_reply
        if not self._tls_pending:
            self._plain_input()

    def _plain_input(self) -> None:
        """
        Until TLS starts: each read recorded and handed on by a closure, in
        this wrapper's place, with no look-up through its C{__getattr__}.
        """
        transcribe = self.transcriber.client_bytes
        protocol = self.wrappedProtocol

        def dataReceived(data):
            transcribe(data)
            protocol.dataReceived(data)

        self.dataReceived = dataReceived

    def makeConnection(self, transport):
        policies.ProtocolWrapper.makeConnection(self, transport)
        # A client that pipes a session in and shuts its sending side still
        # gets every answer: the half-close goes to a protocol that takes
        # it; for any other, what is already written is sent, then the
        # connection closes (a plain TCP transport would drop it at once).
        self._half_close = IHalfCloseableProtocol.providedBy(self.wrappedProtocol)
        # The wrapped protocol is connected now: hook its portal and its
        # FTP data channel, so logins and data connections become events.
        data = getattr(self.wrappedProtocol, "data", None)
        if data is not None and hasattr(data, "on_data_connection"):
            data.on_data_connection = self.record.add  # FTP data connections
        portal = getattr(self.wrappedProtocol, "portal", None)
        if portal is not None and not isinstance(portal, RecordingPortal):
            self.wrappedProtocol.portal = RecordingPortal(portal, self.record)

    def startTLS(self, context, *args, **kwargs):
        self.transport.startTLS(context, *args, **kwargs)
        self._tls_pending = True
        self.__dict__.pop("dataReceived", None)  # the method, which looks for the handshake

    def _tls_check(self):
        description = tls_description(self.transport)
        if description:
            self._tls_pending = False
            self.record.encrypted(description)

    def dataReceived(self, data):
        if self._tls_pending:
            self._tls_check()
        self.transcriber.client_bytes(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data):
        self.transcriber.server_bytes(data)
        self.transport.write(data)

    def send_now(self, data):
        """L{twisted_mailhub.lines.send_now} through the transcript."""
        self.transcriber.server_bytes(data)
        send_now(self.transport, data)

    def record_message(self, status: bytes, lines: int, octets: int) -> Any:
        """
        A POP3 RETR or TOP answer about to be written whole, recorded from
        its facts (L{Transcriber.server_message}): returns the transport to
        write its bytes to, past this recorder, or L{None} when they must
        be written through it (L{write}). (L{connectionMade} puts the
        transcriber's own in its place: one call per answer.)
        """
        return self.transport if self.transcriber.server_message(status, lines, octets) else None

    def record_reply(self, data: bytes) -> Any:
        """
        Record C{data} (bytes the protocol is about to send) now, as
        L{write} would, and return the transport to write them to, past
        this recorder: a protocol that gathers its replies and sends them
        together later (POP3) keeps the transcript in the order written.
        """
        self.transcriber.server_bytes(data)
        return self.transport  # (connectionMade puts the transcriber's own in its place)

    def record_responses(self, lines: list[bytes]) -> Any:
        """
        IMAP responses about to be written whole, recorded from their
        lines (L{Transcriber.server_responses}): returns the transport to
        write their bytes to, past this recorder, or L{None} when they
        must be written through it (L{write}).
        """
        return self.transport if self.transcriber.server_responses(lines) else None

    def writeSequence(self, data):
        self.transcriber.server_bytes(b"".join(data))
        policies.ProtocolWrapper.writeSequence(self, data)

    def readConnectionLost(self):
        if self._half_close:
            self.wrappedProtocol.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        if self._half_close:
            self.wrappedProtocol.writeConnectionLost()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.record.closed()
        policies.ProtocolWrapper.connectionLost(self, reason)


class TranscriptFactory(policies.WrappingFactory):
    """
    Wraps a listener's factory so each connection is a session on the
    event bus C{events}.
    """

    protocol = TranscriptProtocol

    def __init__(self, wrapped, protocol_name: str, events: SessionEvents | None = None):
        policies.WrappingFactory.__init__(self, wrapped)
        self.protocol_name = protocol_name
        self.events = events if events is not None else SessionEvents()

    def buildProtocol(self, addr):
        built = self.wrappedFactory.buildProtocol(addr)
        if getattr(built, "records_own_session", False):
            # A protocol that records its session itself, on the same bus
            # (FTP: twisted_mailhub.ftp.server.MailhubFTP), is not wrapped;
            # what its listener refuses (over a connection limit) still is.
            return built
        return self.protocol(self, built)
