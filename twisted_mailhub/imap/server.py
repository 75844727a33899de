# -*- test-case-name: tests.test_imap_server -*-
"""
The IMAP4rev1 server: Twisted's L{imap4.IMAP4Server} for the command line,
literals, LOGIN, AUTHENTICATE and STARTTLS, and our own handlers for
everything that touches mail, working on the store directly.

States (RFC 3501 §3), kept in Twisted's C{state} attribute, which also picks
the command table (C{unauth_LOGIN}, C{select_FETCH}, ...):

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED
    AUTHENTICATED --SELECT/EXAMINE--> SELECTED --CLOSE/UNSELECT--> AUTHENTICATED
    any --LOGOUT--> LOGOUT

and C{parseState} says how the next line is read: C{command}, C{pending}
(the rest of a command after a literal) or C{idle} (RFC 2177: only C{DONE}
ends it).

Theory of operation:

 - The selected folder is seen through a L{SelectedFolder}: the session's
   own list of UIDs, whose positions are the message sequence numbers.
   Changes made by others (delivery, another session, an outside program
   found by a directory scan) arrive through the folder's listener and wait
   in the view; they are told to the client as untagged C{EXPUNGE},
   C{EXISTS} and C{FETCH (FLAGS)} just before a command's tagged reply, at
   once while IDLE, and never C{EXPUNGE} during FETCH, STORE or SEARCH
   (RFC 3501 §7.4.1), so sequence numbers never shift under the client.
 - Responses to FETCH are written by L{ResponseStream}, a push producer, so
   a FETCH of 100,000 messages goes out at the speed of the socket without
   holding them all in memory; commands that arrive meanwhile wait,
   unread, until it is done.
 - Every literal size is checked before a single octet of it is read:
   malformed or negative sizes (GHSA-2qrf-pqgx-qh9v) are C{BAD}, and sizes
   over the limit (C{--max-message-size} for APPEND, a few KiB for anything
   else and before login) are refused; a non-synchronizing literal
   (LITERAL+, RFC 7888) that is too large ends the connection, since its
   octets are already on their way.
"""

from __future__ import annotations

import bisect
import calendar
import re
import time
from typing import Any, Iterator

from twisted.cred.credentials import CramMD5Credentials
from twisted.internet import defer, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.protocols import basic
from zope.interface import implementer

from twisted_mailhub.hub import is_secure
from twisted_mailhub.imap.message import Part, quote
from twisted_mailhub.imap.search import BadSearch, Candidate, HeaderCache, compile_search
from twisted_mailhub.store.base import DELIMITER
from twisted_mailhub.store.interfaces import (
    INBOX,
    SEEN,
    SYSTEM_FLAGS,
    BadFolderName,
    FolderExists,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
)
from twisted_mailhub.store.maildir import crlf

log = Logger()

# RFC 6154 special-use folders, made at first login.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}

# Literals before login, and literals that are not APPEND's message.
SMALL_LITERAL = 8192
MAX_LINE = 65536
IDLE_POLL = 0.5  # seconds between cheap looks at new/ and cur/ while IDLE

_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\.)*)"')
_UNESCAPE = re.compile(rb"\\(.)")
_LITERAL = re.compile(rb"\{([^{}]*)\}\Z")
_LITERAL_SIZE = re.compile(rb"\A(\d{1,20})(\+?)\Z")
_MONTH_NAMES = [calendar.month_abbr[i] for i in range(13)]
_MONTH_NUMBERS = {m.lower(): i for i, m in enumerate(_MONTH_NAMES) if m}
# Commands whose untagged EXPUNGE would shift sequence numbers under the
# client (RFC 3501 §7.4.1).
_NO_EXPUNGE_DURING = {b"FETCH", b"STORE", b"SEARCH"}


class BadSequence(imap4.IllegalClientResponse):
    pass


def internal_date_text(timestamp: float) -> bytes:
    t = time.gmtime(timestamp)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTH_NAMES[t.tm_mon].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )


def parse_internal_date(text: bytes) -> float:
    """An APPEND date-time, C{"17-Jul-1996 02:44:25 -0700"}, in seconds."""
    m = re.match(rb'\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\s*\Z', text)
    if not m or m.group(2).decode().lower() not in _MONTH_NUMBERS:
        raise imap4.IllegalClientResponse('bad date-time: expected e.g. "17-Jul-1996 02:44:25 -0700"')
    day, month, year = int(m.group(1)), _MONTH_NUMBERS[m.group(2).decode().lower()], int(m.group(3))
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    offset = (int(m.group(8)) * 60 + int(m.group(9))) * 60 * (1 if m.group(7) == b"+" else -1)
    return calendar.timegm((year, month, day, hh, mm, ss)) - offset


_flag_text: dict[tuple[frozenset, bool], bytes] = {}


def flags_text(flags: frozenset, recent: bool = False) -> bytes:
    key = (flags, recent)
    text = _flag_text.get(key)
    if text is None:
        words = sorted(f.encode("utf-8") for f in flags)
        if recent:
            words.append(b"\\Recent")
        text = b"(" + b" ".join(words) + b")"
        if len(_flag_text) < 10_000:
            _flag_text[key] = text
    return text


def mailbox_name(raw: bytes | str) -> str:
    """A mailbox name from the wire (modified UTF-7, RFC 3501 §5.1.3)."""
    if isinstance(raw, str):
        raw = raw.encode("ascii", "replace")
    try:
        name = raw.decode("imap4-utf-7")
    except (UnicodeDecodeError, ValueError):
        raise imap4.IllegalMailboxEncoding(raw.decode("ascii", "replace")) from None
    if name.upper() == INBOX:
        return INBOX
    if name.startswith(DELIMITER) or ".." in name.split(DELIMITER) or name.startswith("~"):
        raise BadFolderName(f"bad mailbox name {name!r}: no absolute names, no '..'")
    return name


def list_pattern(wildcard: str) -> re.Pattern[str]:
    """
    LIST's pattern as a regular expression over whole names: C{*} matches
    anything, C{%} anything but the delimiter (RFC 3501 §6.3.8).
    """
    out = []
    for piece in re.split(r"([*%])", wildcard):
        if piece == "*":
            out.append(".*")
        elif piece == "%":
            out.append("[^" + re.escape(DELIMITER) + "]*")
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out) + r"\Z", re.S)


def wire_name(name: str) -> bytes:
    encoded = name.encode("imap4-utf-7")
    return quote(encoded)


# -- FETCH items (RFC 3501 §6.4.5) ------------------------------------------


class FetchItem:
    """
    One FETCH data item: C{kind} is UID, FLAGS, INTERNALDATE, RFC822.SIZE,
    ENVELOPE, BODYSTRUCTURE, BODY (structure without extensions), RFC822,
    RFC822.HEADER, RFC822.TEXT or SECTION (a BODY[...] / BODY.PEEK[...]).
    """

    __slots__ = ("kind", "numbers", "spec", "fields", "partial", "peek", "label")

    def __init__(self, kind: bytes, numbers=(), spec=b"", fields=(), partial=None, peek=True, label=b""):
        self.kind = kind
        self.numbers = tuple(numbers)
        self.spec = spec
        self.fields = tuple(fields)
        self.partial = partial
        self.peek = peek
        self.label = label or kind

    @property
    def sets_seen(self) -> bool:
        return (self.kind == b"SECTION" and not self.peek) or self.kind in (b"RFC822", b"RFC822.TEXT")


_SIMPLE_ITEMS = {b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"}
_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}
_ITEM = re.compile(rb"(BODY\.PEEK|BODY)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?|([A-Za-z0-9.]+)", re.I)
_SECTION = re.compile(rb"\A((?:\d+\.)*\d+)?\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?\s*(?:\((.*)\))?\s*\Z", re.I)


def parse_fetch_items(text: bytes) -> list[FetchItem]:
    text = text.strip()
    if not text:
        raise imap4.IllegalClientResponse("FETCH wants data items after the message set, e.g. (FLAGS UID)")
    if text.startswith(b"("):
        if not text.endswith(b")"):
            raise imap4.IllegalClientResponse("FETCH item list: missing ')'")
        text = text[1:-1]
    items: list[FetchItem] = []
    pos = 0
    while pos < len(text):
        if text[pos : pos + 1] == b" ":
            pos += 1
            continue
        m = _ITEM.match(text, pos)
        if not m:
            raise imap4.IllegalClientResponse(f"bad FETCH item at {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(5):
            name = m.group(5).upper()
            if name in _MACROS:
                items.extend(FetchItem(n) for n in _MACROS[name])
            elif name in _SIMPLE_ITEMS:
                items.append(FetchItem(name))
            else:
                raise imap4.IllegalClientResponse(f"unknown FETCH item {name.decode('ascii', 'replace')}")
            continue
        peek = m.group(1).upper() == b"BODY.PEEK"
        s = _SECTION.match(m.group(2).strip())
        if not s:
            raise imap4.IllegalClientResponse(f"bad section [{m.group(2).decode('ascii', 'replace')}]")
        numbers = [int(n) for n in s.group(1).split(b".")] if s.group(1) else []
        if any(n < 1 for n in numbers):
            raise imap4.IllegalClientResponse("section numbers start at 1")
        spec = (s.group(2) or b"").upper()
        fields = s.group(3)
        if spec.startswith(b"HEADER.FIELDS"):
            if fields is None or not fields.strip():
                raise imap4.IllegalClientResponse(f"{spec.decode()} wants a list of field names, e.g. (From Subject)")
            field_list = [f.strip(b'"') for f in fields.split()]
        elif fields is not None:
            raise imap4.IllegalClientResponse("only HEADER.FIELDS takes a list")
        else:
            field_list = []
        if spec == b"MIME" and not numbers:
            raise imap4.IllegalClientResponse("MIME needs a part number, e.g. BODY[1.MIME]")
        section = b".".join(b"%d" % n for n in numbers)
        if spec:
            section = section + b"." + spec if section else spec
        if field_list:
            section += b" (" + b" ".join(f.upper() for f in field_list) + b")"
        partial = None
        label = b"BODY[" + section + b"]"
        if m.group(3) is not None:
            partial = (int(m.group(3)), int(m.group(4)))
            label += b"<%d>" % partial[0]
        items.append(FetchItem(b"SECTION", numbers, spec, [f.decode("ascii", "replace") for f in field_list], partial, peek, label))
    if not items:
        raise imap4.IllegalClientResponse("FETCH wants data items, e.g. (FLAGS UID)")
    return items


def section_bytes(message: Part, item: FetchItem) -> bytes:
    """The octets of one BODY[section] (before any <partial>)."""
    if not item.numbers:
        target = message
        if item.spec == b"":
            return message.raw
    else:
        try:
            target = message.find(item.numbers)
        except KeyError:
            return b""
        if item.spec == b"":
            return target.body
        if item.spec == b"MIME":
            return target.header
        if target.message is None:
            return b""
        target = target.message
    if item.spec == b"HEADER":
        return target.header
    if item.spec == b"TEXT":
        return target.body
    return target.header_fields(list(item.fields), negate=item.spec.endswith(b".NOT"))


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


# -- the session's view of its selected folder ---------------------------------


class SelectedFolder:
    """
    What one session has been told about its selected folder.
    """

    def __init__(self, session: Any, folder: Any, readonly: bool):
        self.session = session
        self.folder = folder
        self.readonly = readonly
        self.recent: set[int] = set(folder.take_new()) if not readonly else set()
        self.uids = [info.uid for info in folder.messages()]
        self._added: set[int] = set()
        self._flags: set[int] = set()
        self._expunged: set[int] = set()
        folder.add_listener(self._changed)

    def close(self) -> None:
        self.folder.remove_listener(self._changed)

    def _changed(self, change: Any) -> None:
        self._added.update(change.added)
        if change.origin is not self.session:
            self._flags.update(change.flags)
            self._expunged.update(change.expunged)
        self.session.changes_arrived()

    def poll(self) -> None:
        """
        Look for changes made outside this process (two stat calls).
        Raises L{NoSuchFolder} once the folder is gone.
        """
        try:
            self.folder.refresh()
        except NoSuchFolder:
            raise
        except OSError:
            pass

    @property
    def pending(self) -> bool:
        return bool(self._added or self._flags or self._expunged)

    def seq_of(self, uid: int) -> int:
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i + 1
        return 0

    def forget(self, uid: int) -> int:
        """Drop an expunged UID; return the sequence number it had (0 if none)."""
        seq = self.seq_of(uid)
        if seq:
            del self.uids[seq - 1]
            self.recent.discard(uid)
        self._flags.discard(uid)
        self._expunged.discard(uid)
        return seq

    def untagged(self, allow_expunge: bool) -> list[bytes]:
        """The untagged responses that bring the client up to date."""
        out: list[bytes] = []
        if allow_expunge and self._expunged:
            for uid in sorted(self._expunged):
                seq = self.forget(uid)
                if seq:
                    out.append(b"* %d EXPUNGE\r\n" % seq)
        if self._added:
            last = self.uids[-1] if self.uids else 0
            fresh = []
            for uid in sorted(self._added):
                if uid > last:
                    try:
                        self.folder.info(uid)
                    except NoSuchMessage:
                        continue
                    fresh.append(uid)
            self._added.clear()
            if fresh:
                if not self.readonly:
                    self.recent.update(u for u in self.folder.take_new())
                self.uids.extend(fresh)
                out.append(b"* %d EXISTS\r\n" % len(self.uids))
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        if self._flags:
            for uid in sorted(self._flags):
                seq = self.seq_of(uid)
                if not seq:
                    continue
                try:
                    info = self.folder.info(uid)
                except NoSuchMessage:
                    continue
                out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, flags_text(info.flags, uid in self.recent)))
            self._flags.clear()
        return out

    def resolve(self, messages: imap4.MessageSet, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) of every message a set names, ascending."""
        uids = self.uids
        count = len(uids)
        picked: set[int] | None = None
        spans: list[tuple[int, int]] = []
        if uid:
            last = uids[-1] if uids else 0
            for lo, hi in messages.ranges:
                lo = last if lo is None else lo
                hi = last if hi is None else hi
                lo, hi = min(lo, hi), max(lo, hi)
                spans.append((bisect.bisect_left(uids, lo), bisect.bisect_right(uids, hi)))
        else:
            for lo, hi in messages.ranges:
                if count == 0 and (lo is None or hi is None):
                    continue  # "1:*" of an empty folder names nothing
                lo = count if lo is None else lo
                hi = count if hi is None else hi
                lo, hi = min(lo, hi), max(lo, hi)
                if lo < 1 or hi > count:
                    raise BadSequence(f"no message {hi if hi > count else lo}: the folder has {count}")
                spans.append((lo - 1, hi))
        if len(spans) == 1:
            i, j = spans[0]
            return [(k + 1, uids[k]) for k in range(i, j)]
        picked = set()
        for i, j in spans:
            picked.update(range(i, j))
        return [(k + 1, uids[k]) for k in sorted(picked)]


@implementer(IPushProducer)
class ResponseStream:
    """
    Writes the pieces of a long response as fast as the transport takes
    them, pausing when it says so.
    """

    chunk = 256 * 1024

    def __init__(self, transport: Any, pieces: Iterator[bytes], finished: Any):
        self.transport = transport
        self.pieces = pieces
        self.finished = finished
        self.paused = False
        self.running = False
        self.stopped = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._run()

    def _run(self) -> None:
        if self.running:
            return
        self.running = True
        try:
            buffered: list[bytes] = []
            size = 0
            for piece in self.pieces:
                buffered.append(piece)
                size += len(piece)
                if size >= self.chunk:
                    self.transport.write(b"".join(buffered))
                    buffered, size = [], 0
                    if self.paused or self.stopped:
                        return
            if buffered:
                self.transport.write(b"".join(buffered))
        except Exception:
            log.failure("writing a response failed")
            self.stopped = True
            self.transport.loseConnection()
            return
        finally:
            self.running = False
        self.transport.unregisterProducer()
        if not self.stopped:
            self.finished()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.stopped:
            self._run()

    def stopProducing(self) -> None:
        self.stopped = True


class IMAPServer(imap4.IMAP4Server):
    """
    One IMAP connection. C{hub} is the shared L{twisted_mailhub.hub.Hub}.
    """

    IDENT = b"mailhub IMAP4rev1 ready"
    MAX_LENGTH = MAX_LINE
    timeOut = 60
    POSTAUTH_TIMEOUT = 30 * 60

    selected: SelectedFolder | None = None
    store_account: Any = None
    _command: bytes = b""
    _tag: bytes | None = None
    _nonsync: bool = False
    _idle_tag: bytes | None = None
    _idle_poll: Any = None
    _held = 0

    def __init__(self, hub: Any, listener: str):
        self.hub = hub
        self.listener = listener
        host = hub.hostname
        challengers = {b"CRAM-MD5": lambda: CramMD5Credentials(host.encode("idna") if isinstance(host, str) else host)}
        imap4.IMAP4Server.__init__(self, challengers, contextFactory=None)
        self._plain = dict(challengers)
        self._plain[b"PLAIN"] = imap4.PLAINCredentials
        self._plain[b"LOGIN"] = imap4.LOGINCredentials

    # -- arguments ---------------------------------------------------------------

    def arg_astring(self, line, final=False):
        """
        An astring (RFC 3501 §9): Twisted's, but a quoted string may hold
        escaped quotes and backslashes (a password with a C{"} in it).
        """
        stripped = line.strip()
        if stripped[:1] == b'"':
            m = _QUOTED.match(stripped)
            if m is None:
                raise imap4.IllegalClientResponse("unmatched quotes: expected a closing \"")
            rest = stripped[m.end() :]
            if rest[:1] == b" ":
                rest = rest[1:]
            return _UNESCAPE.sub(rb"\1", m.group(1)), rest
        return imap4.IMAP4Server.arg_astring(self, line, final)

    def arg_finalastring(self, line):
        return self.arg_astring(line, final=True)

    # -- connection ------------------------------------------------------------

    def connectionMade(self):
        self.connection_id = self.hub.connection_made(self, self.listener)
        self.secure = is_secure(self.transport)
        if not self.secure:
            self.ctx = self.hub.tls
        if self.secure or self.hub.is_trusted(self.transport):
            # RFC 3501 §6.2.3 / §11.1: plaintext logins only where nobody
            # can listen in: over TLS or from a trusted network.
            self.challengers = dict(self._plain)
        imap4.IMAP4Server.connectionMade(self)

    def connectionLost(self, reason):
        self._end_idle()
        self._unselect()
        imap4.IMAP4Server.connectionLost(self, reason)

    def lineLengthExceeded(self, line):
        self.sendLine(b"* BYE line too long: at most %d octets per line" % self.MAX_LENGTH)
        self.transport.loseConnection()

    def plaintext_allowed(self) -> bool:
        return self.secure or self.startedTLS or self.hub.is_trusted(self.transport)

    def capabilities(self):
        caps: dict[bytes, Any] = {}
        if self.state == "unauth":
            if not self.plaintext_allowed():
                caps[b"LOGINDISABLED"] = None
            if not self.secure and not self.startedTLS and self.ctx is not None and self.canStartTLS:
                caps[b"STARTTLS"] = None
            caps[b"AUTH"] = sorted(self.challengers)
        for name in (b"LITERAL+", b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"ID", b"ENABLE", b"SPECIAL-USE", b"UNSELECT", b"CHILDREN"):
            caps[name] = None
        return caps

    def do_STARTTLS(self, tag):
        if self.secure:
            self.sendNegativeResponse(tag, b"TLS already in use")
            return
        imap4.IMAP4Server.do_STARTTLS(self, tag)
        if self.startedTLS:
            # Whatever came after STARTTLS in the same packet was sent in
            # the clear: a man in the middle may have put it there
            # (CVE-2011-0411, RFC 3501 §6.2.1). It is dropped, not obeyed.
            self.clearLineBuffer()
            self.challengers = dict(self._plain)

    unauth_STARTTLS = (do_STARTTLS,)

    def do_LOGIN(self, tag, user, passwd):
        if not self.plaintext_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] LOGIN is disabled here: STARTTLS first")
            return
        imap4.IMAP4Server.do_LOGIN(self, tag, user, passwd)

    unauth_LOGIN = (do_LOGIN, arg_astring, arg_finalastring)

    def do_AUTHENTICATE(self, tag, args):
        mechanism = args.upper().strip()
        if mechanism in (b"PLAIN", b"LOGIN") and not self.plaintext_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] AUTHENTICATE " + mechanism + b" is disabled here: STARTTLS first")
            return
        if mechanism not in self.challengers:
            self.sendNegativeResponse(tag, b"AUTHENTICATE mechanism not supported: use " + b", ".join(sorted(self.challengers)))
            return
        imap4.IMAP4Server.do_AUTHENTICATE(self, tag, args)

    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_atom)

    # -- reading lines: literal limits, IDLE --------------------------------------

    def lineReceived(self, line):
        if self.blocked is not None:
            self.blocked.append(line)
            return
        if self.parseState == "idle":
            self.resetTimeout()
            self.parse_idle(line)
            return
        if self.parseState == "command":
            parts = line.split(None, 2)
            self._tag = parts[0] if parts else None
            self._command = parts[1].upper() if len(parts) > 1 else b""
            if self._command == b"UID" and len(parts) > 2:
                self._command = parts[2].split(None, 1)[0].upper()
        # A line that ends in {N}: a literal follows (RFC 3501 §4.3). The
        # AUTHENTICATE exchange also reads "pending" lines, but base64.
        if self.parseState == "command" or (self.parseState == "pending" and not isinstance(self._pendingLiteral, defer.Deferred)):
            m = _LITERAL.search(line)
            if m and not self._literal_allowed(line, m):
                return
        imap4.IMAP4Server.lineReceived(self, line)

    def _literal_allowed(self, line: bytes, m: re.Match) -> bool:
        size = _LITERAL_SIZE.match(m.group(1))
        if not size:
            self._abandon_command(b"BAD", b"malformed literal size {" + m.group(1)[:20] + b"}: expected {N} or {N+} with N >= 0")
            return False
        n = int(size.group(1))
        nonsync = bool(size.group(2))
        if self.state == "unauth":
            limit = SMALL_LITERAL
        elif self._command == b"APPEND":
            limit = self.hub.max_message_size
        else:
            limit = SMALL_LITERAL
        if n > limit:
            if nonsync:
                self.sendLine(b"* BYE literal of %d octets is over the limit of %d" % (n, limit))
                self.transport.loseConnection()
                self._abandon_command(None, None)
                return False
            self._abandon_command(b"NO", b"[TOOBIG] literal of %d octets is over the limit of %d" % (n, limit))
            return False
        if nonsync:
            # LITERAL+ (RFC 7888): the octets follow without our "+".
            self._nonsync = True
            try:
                imap4.IMAP4Server.lineReceived(self, line[: m.start()] + b"{%d}" % n)
            finally:
                self._nonsync = False
            return False
        return True

    def _abandon_command(self, state: bytes | None, message: bytes | None) -> None:
        self.parseState = "command"
        self._pendingLiteral = None
        self.setLineMode()
        if state is not None:
            self._respond(state, self._tag or b"*", message)

    def sendContinuationRequest(self, msg=b"Ready for additional command text"):
        if self._nonsync:
            self._nonsync = False
            return
        imap4.IMAP4Server.sendContinuationRequest(self, msg)

    def _stringLiteral(self, size):
        # Twisted's own limit (4096) would refuse a password or search
        # string after the client already sent a LITERAL+; ours is checked
        # before that, in _literal_allowed.
        self._literalStringLimit = SMALL_LITERAL
        return imap4.IMAP4Server._stringLiteral(self, size)

    # -- dispatch, and telling the client about changes ------------------------------

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        if not cmd.isascii() or not tag.isascii():
            # Twisted's lookupCommand decodes the name as ASCII and raises
            # out of lineReceived (an unhandled error) for anything else.
            self.sendBadResponse(tag if tag.isascii() else b"*", b"command names are ASCII (RFC 3501 section 9)")
            return None
        if self.selected is not None and uid is None:
            # Bring the client up to date first, so that the command works
            # on the messages it has been told about (RFC 3501 §5.2).
            try:
                self.selected.poll()
            except NoSuchFolder:
                return self._selected_folder_gone()
            if self.selected.pending:
                for line in self.selected.untagged(cmd.upper() not in _NO_EXPUNGE_DURING and cmd.upper() != b"UID"):
                    self.transport.write(line)
        f = self.lookupCommand(cmd)
        if f:
            try:
                return imap4.IMAP4Server.dispatchCommand(self, tag, cmd, rest, uid)
            except (imap4.IllegalClientResponse, imap4.IllegalOperation, imap4.IllegalMailboxEncoding):
                raise  # Twisted's parse_command answers these
            except Exception:
                # Twisted would answer "* BAD" with no tag and the client
                # would wait for its tagged reply for ever.
                log.failure("IMAP {command} failed", command=cmd)
                self.sendBadResponse(tag, b"[SERVERBUG] " + cmd.upper() + b" failed; see the server log")
                return None
        name = cmd.decode("ascii", "replace").upper()
        known = {state for state in ("unauth", "auth", "select") if getattr(self, f"{state}_{name}", None) is not None}
        if known:
            if self.state == "unauth":
                need = b"log in first"
            elif "select" in known and self.state == "auth":
                need = b"select a mailbox first"
            else:
                need = b"only before login"
            self.sendBadResponse(tag, cmd.upper() + b" not allowed now: " + need)
            return
        self.sendBadResponse(tag, b"unknown command " + cmd[:40] + b": try CAPABILITY")

    def _respond(self, state, tag, message):
        if tag and tag != b"*" and state in (b"OK", b"NO") and self.selected is not None and self.selected.pending:
            allow = self._command not in _NO_EXPUNGE_DURING
            for line in self.selected.untagged(allow):
                self.transport.write(line)
        imap4.IMAP4Server._respond(self, state, tag, message)

    def changes_arrived(self) -> None:
        if self._idle_tag is not None and self.selected is not None:
            for line in self.selected.untagged(True):
                self.transport.write(line)

    def write_lines(self, lines) -> None:
        self.transport.write(b"".join(lines))

    # -- IDLE (RFC 2177) -----------------------------------------------------------

    def do_IDLE(self, tag):
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendContinuationRequest(b"idling: send DONE to end")
        self.changes_arrived()
        if self.selected is not None:
            self._idle_poll = task.LoopingCall(self._idle_check)
            self._idle_poll.clock = self.hub.reactor
            self._idle_poll.start(IDLE_POLL, now=False)

    auth_IDLE = select_IDLE = (do_IDLE,)

    def parse_idle(self, line):
        if line.strip().upper() != b"DONE":
            self.sendUntaggedResponse(b"BAD expected DONE to end IDLE")
            return
        tag = self._idle_tag
        self._end_idle()
        self.parseState = "command"
        self._command = b"IDLE"
        self.sendPositiveResponse(tag, b"IDLE terminated")

    def _end_idle(self) -> None:
        self._idle_tag = None
        if self._idle_poll is not None and self._idle_poll.running:
            self._idle_poll.stop()
        self._idle_poll = None

    # -- simple commands ----------------------------------------------------------

    def do_ID(self, tag, args=None):
        self.sendUntaggedResponse(b'ID ("name" "twisted-mailhub" "vendor" "twisted-mailhub")')
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = auth_ID = select_ID = (do_ID, imap4.IMAP4Server.arg_line)

    def do_ENABLE(self, tag, args=None):
        # No extension here changes behaviour when enabled (RFC 5161 §3.1:
        # an empty ENABLED list is a valid answer).
        self.sendUntaggedResponse(b"ENABLED")
        self.sendPositiveResponse(tag, b"ENABLE completed")

    auth_ENABLE = select_ENABLE = (do_ENABLE, imap4.IMAP4Server.arg_line)

    def do_NAMESPACE(self, tag):
        self.sendUntaggedResponse(b'NAMESPACE (("" "' + DELIMITER.encode() + b'")) NIL NIL')
        self.sendPositiveResponse(tag, b"NAMESPACE completed")

    auth_NAMESPACE = select_NAMESPACE = (do_NAMESPACE,)

    def do_CHECK(self, tag):
        self.sendPositiveResponse(tag, b"CHECK completed")

    select_CHECK = (do_CHECK,)

    def do_NOOP(self, tag):
        self.sendPositiveResponse(tag, b"NOOP completed")

    unauth_NOOP = auth_NOOP = select_NOOP = logout_NOOP = (do_NOOP,)

    def _store(self):
        if self.store_account is None:
            self.store_account = self.account.store_account
        return self.store_account

    # -- folders ------------------------------------------------------------------

    def _folder_error(self, tag: bytes, error: Exception) -> None:
        if isinstance(error, NoSuchFolder):
            self.sendNegativeResponse(tag, b"[NONEXISTENT] no such mailbox: " + str(error).encode("utf-8", "replace"))
        elif isinstance(error, FolderExists):
            self.sendNegativeResponse(tag, b"[ALREADYEXISTS] mailbox exists: " + str(error).encode("utf-8", "replace"))
        elif isinstance(error, (BadFolderName, imap4.IllegalMailboxEncoding)):
            self.sendNegativeResponse(tag, b"[CANNOT] " + str(error).encode("utf-8", "replace"))
        else:
            self.sendNegativeResponse(tag, b"[SERVERBUG] " + str(error).encode("utf-8", "replace"))
            log.error("IMAP folder operation failed: {error!r}", error=error)

    def _folder(self, raw: bytes):
        return self._store().folder(mailbox_name(raw))

    def _target_folder(self, tag: bytes, name: bytes):
        """The folder APPEND/COPY/MOVE write to, or None once told why not."""
        try:
            return self._folder(name)
        except NoSuchFolder:
            # RFC 3501 §6.3.11: TRYCREATE tells the client to CREATE and retry.
            self.sendNegativeResponse(tag, b"[TRYCREATE] no such mailbox: create it first")
        except (StoreError, imap4.IllegalMailboxEncoding) as e:
            self._folder_error(tag, e)
        return None

    def do_SELECT(self, tag, name, readonly=0, command=b"SELECT"):
        self._unselect()
        try:
            folder = self._folder(name)
            view = SelectedFolder(self, folder, bool(readonly))
        except (StoreError, imap4.IllegalMailboxEncoding) as e:
            self._folder_error(tag, e)
            return
        except OSError as e:
            self._folder_error(tag, e)
            return
        keywords: set[str] = set()
        flag_sets: set[frozenset] = set()  # the store shares them: few distinct
        first_unseen = 0
        info_of = folder.info
        for seq, uid in enumerate(view.uids, 1):
            flags = info_of(uid).flags
            if not first_unseen and SEEN not in flags:
                first_unseen = seq
            if flags not in flag_sets:
                flag_sets.add(flags)
                keywords.update(f for f in flags if f not in SYSTEM_FLAGS)
        flag_list = b" ".join([f.encode() for f in SYSTEM_FLAGS] + sorted(k.encode("utf-8") for k in keywords))
        lines = [
            b"* FLAGS (" + flag_list + b")\r\n",
            b"* OK [PERMANENTFLAGS (" + (b"" if readonly else flag_list + b" \\*") + b")] flags and keywords are kept\r\n",
            b"* %d EXISTS\r\n" % len(view.uids),
            b"* %d RECENT\r\n" % len(view.recent),
        ]
        if first_unseen:
            lines.append(b"* OK [UNSEEN %d] first unseen\r\n" % first_unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uid_validity)
        lines.append(b"* OK [UIDNEXT %d] predicted next UID\r\n" % folder.uid_next)
        self.write_lines(lines)
        self.selected = view
        self.state = "select"
        self.sendPositiveResponse(tag, (b"[READ-ONLY] " if readonly else b"[READ-WRITE] ") + command + b" completed")

    auth_SELECT = select_SELECT = (do_SELECT, arg_finalastring, 0, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (do_SELECT, arg_finalastring, 1, b"EXAMINE")

    def _idle_check(self) -> None:
        try:
            self.selected.poll()
        except NoSuchFolder:
            if self._idle_poll is not None and self._idle_poll.running:
                self._idle_poll.stop()
            self._selected_folder_gone()

    def _selected_folder_gone(self) -> None:
        """
        Another session (or someone on the server) deleted or renamed the
        selected folder. Its message numbers mean nothing any more and
        RFC 3501 has no way to say so mid-session, so, like Dovecot, say
        why and disconnect; the client reconnects and sees the new list.
        """
        name = self.selected.folder.name if self.selected is not None else ""
        self._unselect()
        self.sendUntaggedResponse(b"BYE [UNAVAILABLE] selected mailbox " + name.encode("utf-8", "replace") + b" was deleted or renamed; reconnect")
        self.transport.loseConnection()

    def _unselect(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None
            if self.state == "select":
                self.state = "auth"

    def do_UNSELECT(self, tag):
        self._unselect()
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = (do_UNSELECT,)

    def do_CLOSE(self, tag):
        view = self.selected
        if not view.readonly:
            deleted = [uid for uid in view.uids if "\\Deleted" in _flags_or_empty(view.folder, uid)]
            if deleted:
                view.folder.expunge(deleted, origin=self)
                self._unselect()
                return self._after_flush(view.folder, tag, b"CLOSE completed")
        self._unselect()
        self.sendPositiveResponse(tag, b"CLOSE completed")

    select_CLOSE = (do_CLOSE,)

    def do_CREATE(self, tag, name):
        try:
            folder_name = mailbox_name(name).rstrip(DELIMITER)
            if folder_name == INBOX:
                raise FolderExists(INBOX)
            self._store().create_folder(folder_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self.sendPositiveResponse(tag, b"CREATE completed")

    auth_CREATE = select_CREATE = (do_CREATE, arg_finalastring)

    def do_DELETE(self, tag, name):
        try:
            folder_name = mailbox_name(name)
            if folder_name == INBOX:
                raise BadFolderName("INBOX cannot be deleted")
            if self.selected is not None and self.selected.folder.name == folder_name:
                self._unselect()
            self._store().delete_folder(folder_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self.sendPositiveResponse(tag, b"DELETE completed")

    auth_DELETE = select_DELETE = (do_DELETE, arg_finalastring)

    def do_RENAME(self, tag, old, new):
        try:
            old_name, new_name = mailbox_name(old), mailbox_name(new)
            if old_name == INBOX and new_name != INBOX:
                self._rename_inbox(tag, new_name)
                return
            self._store().rename_folder(old_name, new_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self.sendPositiveResponse(tag, b"RENAME completed")

    def _rename_inbox(self, tag: bytes, new_name: str) -> None:
        """
        RFC 3501 §6.3.5: renaming INBOX moves its messages to a new folder
        and leaves INBOX empty. The copies are durable before INBOX loses
        them.
        """
        store = self._store()
        destination = store.create_folder(new_name)
        inbox = store.folder(INBOX)
        uids = [info.uid for info in inbox.messages()]
        self._hold_input()
        d = inbox.copy_to(uids, destination)

        def copied(pairs):
            inbox.expunge([s for s, _ in pairs], origin=None)
            self.sendPositiveResponse(tag, b"RENAME completed: INBOX's messages moved, INBOX is empty")

        def failed(reason):
            log.failure("RENAME INBOX failed", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] RENAME failed; INBOX kept its messages")

        d.addCallbacks(copied, failed)
        d.addBoth(lambda _: self._release_input())

    auth_RENAME = select_RENAME = (do_RENAME, arg_astring, arg_finalastring)

    def do_SUBSCRIBE(self, tag, name, subscribe=1):
        try:
            folder_name = mailbox_name(name)
            if subscribe:
                self._store().subscribe(folder_name)
            else:
                self._store().unsubscribe(folder_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self.sendPositiveResponse(tag, b"SUBSCRIBE completed" if subscribe else b"UNSUBSCRIBE completed")

    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, arg_finalastring, 1)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_SUBSCRIBE, arg_finalastring, 0)

    def do_LIST(self, tag, reference, pattern, subscribed=0, command=b"LIST"):
        try:
            reference_text = reference.decode("imap4-utf-7")
            pattern_text = pattern.decode("imap4-utf-7")
        except (UnicodeDecodeError, ValueError):
            self.sendBadResponse(tag, command + b": mailbox names are modified UTF-7")
            return
        if not pattern_text and not subscribed:
            # RFC 3501 §6.3.8: an empty pattern asks for the delimiter.
            self.sendUntaggedResponse(b'LIST (\\Noselect) "' + DELIMITER.encode() + b'" ""')
            self.sendPositiveResponse(tag, b"LIST completed")
            return
        full = reference_text + pattern_text
        if full[:5].upper() == INBOX and (len(full) == 5 or full[5] in DELIMITER + "%*"):
            full = INBOX + full[5:]
        regex = list_pattern(full)
        store = self._store()
        names = store.folders()
        shown = set(store.subscriptions()) if subscribed else None
        lines = []
        for name in names:
            if shown is not None and name not in shown:
                continue
            if not regex.match(name):
                continue
            has_children = any(other.startswith(name + DELIMITER) for other in names)
            attributes = [b"\\HasChildren" if has_children else b"\\HasNoChildren"]
            special = SPECIAL_USE.get(name)
            if special:
                attributes.append(special.encode())
            lines.append(b"* " + command + b" (" + b" ".join(attributes) + b') "' + DELIMITER.encode() + b'" ' + wire_name(name) + b"\r\n")
        self.write_lines(lines)
        self.sendPositiveResponse(tag, command + b" completed")

    auth_LIST = select_LIST = (do_LIST, arg_astring, arg_finalastring, 0, b"LIST")
    auth_LSUB = select_LSUB = (do_LIST, arg_astring, arg_finalastring, 1, b"LSUB")

    def do_STATUS(self, tag, name, items):
        try:
            folder = self._folder(name)
            infos = folder.messages()
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        out = []
        for item in items:
            key = item.upper() if isinstance(item, bytes) else b""
            if key == b"MESSAGES":
                value = len(infos)
            elif key == b"RECENT":
                value = 0
                if self.selected is not None and self.selected.folder is folder:
                    value = len(self.selected.recent)
            elif key == b"UIDNEXT":
                value = folder.uid_next
            elif key == b"UIDVALIDITY":
                value = folder.uid_validity
            elif key == b"UNSEEN":
                value = sum(1 for i in infos if SEEN not in i.flags)
            else:
                self.sendBadResponse(tag, b"unknown STATUS item " + key[:30] + b": use MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN")
                return
            out.append(key + b" %d" % value)
        self.sendUntaggedResponse(b"STATUS " + wire_name(folder.name) + b" (" + b" ".join(out) + b")")
        self.sendPositiveResponse(tag, b"STATUS completed")

    auth_STATUS = select_STATUS = (do_STATUS, arg_astring, imap4.IMAP4Server.arg_plist)

    # -- APPEND (RFC 3501 §6.3.11, UIDPLUS RFC 4315) ------------------------------------

    def do_APPEND(self, tag, name, flags, date, message):
        folder = self._target_folder(tag, name)
        if folder is None:
            return
        try:
            internal_date = parse_internal_date(date) if date else None
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, str(e).encode())
            return
        data = crlf(message.read())
        flag_names = [f.decode("utf-8", "replace") for f in (flags or []) if isinstance(f, bytes)]
        # Replies stay in command order: the next command is read once this
        # message is on disk.
        self._hold_input()
        d = folder.append(data, [f for f in flag_names if f.lower() != "\\recent"], internal_date)

        def done(uid):
            self.sendPositiveResponse(tag, b"[APPENDUID %d %d] APPEND completed" % (folder.uid_validity, uid))

        def failed(reason):
            log.failure("APPEND failed", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed: message not stored")

        d.addCallbacks(done, failed)
        d.addBoth(lambda _: self._release_input())

    auth_APPEND = select_APPEND = (
        do_APPEND,
        arg_astring,
        imap4.IMAP4Server.opt_plist,
        imap4.IMAP4Server.opt_datetime,
        imap4.IMAP4Server.arg_literal,
    )

    # -- FETCH -----------------------------------------------------------------------

    def do_FETCH(self, tag, messages, query, uid=0):
        view = self.selected
        try:
            items = parse_fetch_items(query)
            targets = view.resolve(messages, bool(uid))
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        if uid and not any(i.kind == b"UID" for i in items):
            items.insert(0, FetchItem(b"UID"))
        sets_seen = not view.readonly and any(i.sets_seen for i in items)
        pieces = self._fetch_responses(view, targets, items, sets_seen)
        self._stream(pieces, lambda: self.sendPositiveResponse(tag, b"FETCH completed"))

    select_FETCH = (do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_line)

    def _fetch_responses(self, view: SelectedFolder, targets, items, sets_seen) -> Iterator[bytes]:
        folder = view.folder
        info_of = folder.info
        recent = view.recent
        kinds = [i.kind for i in items]
        cheap = {b"UID", b"FLAGS", b"RFC822.SIZE", b"INTERNALDATE"}
        if all(k in cheap for k in kinds):
            # The fast path: the index alone (SELECT + FETCH 1:* of 100k).
            for seq, uid in targets:
                try:
                    info = info_of(uid)
                except NoSuchMessage:
                    continue
                fields = []
                for kind in kinds:
                    if kind == b"UID":
                        fields.append(b"UID %d" % uid)
                    elif kind == b"FLAGS":
                        fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
                    elif kind == b"RFC822.SIZE":
                        fields.append(b"RFC822.SIZE %d" % info.size)
                    else:
                        fields.append(b"INTERNALDATE " + internal_date_text(info.internal_date))
                yield b"* %d FETCH (%s)\r\n" % (seq, b" ".join(fields))
            return
        for seq, uid in targets:
            try:
                info = info_of(uid)
                raw = None
                part = None
                flags_changed = False
                if sets_seen and SEEN not in info.flags:
                    folder.set_flags([uid], [SEEN], "add", origin=self)
                    info = info_of(uid)
                    flags_changed = True
                fields = []
                for item in items:
                    kind = item.kind
                    if kind == b"UID":
                        fields.append(b"UID %d" % uid)
                    elif kind == b"FLAGS":
                        fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
                    elif kind == b"RFC822.SIZE":
                        fields.append(b"RFC822.SIZE %d" % info.size)
                    elif kind == b"INTERNALDATE":
                        fields.append(b"INTERNALDATE " + internal_date_text(info.internal_date))
                    else:
                        if raw is None:
                            raw = folder.read(uid)
                        if kind == b"RFC822":
                            fields.append(b"RFC822 " + literal(raw))
                            continue
                        if kind == b"SECTION" and not item.numbers and item.spec == b"" and item.partial is None:
                            fields.append(b"BODY[] " + literal(raw))
                            continue
                        if part is None:
                            part = Part(raw)
                        if kind == b"ENVELOPE":
                            fields.append(b"ENVELOPE " + part.envelope())
                        elif kind == b"BODYSTRUCTURE":
                            fields.append(b"BODYSTRUCTURE " + part.bodystructure(True))
                        elif kind == b"BODY":
                            fields.append(b"BODY " + part.bodystructure(False))
                        elif kind == b"RFC822.HEADER":
                            fields.append(b"RFC822.HEADER " + literal(part.header))
                        elif kind == b"RFC822.TEXT":
                            fields.append(b"RFC822.TEXT " + literal(part.body))
                        else:
                            data = section_bytes(part, item)
                            if item.partial is not None:
                                start, length = item.partial
                                data = data[start : start + length]
                            fields.append(item.label + b" " + literal(data))
                if flags_changed and b"FLAGS" not in [i.kind for i in items]:
                    fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
            except NoSuchMessage:
                continue  # expunged by another session; told at the next chance
            except (OSError, StoreError):
                log.failure("FETCH of UID {uid} in {folder} failed", uid=uid, folder=folder.name)
                continue
            yield b"* %d FETCH (%s)\r\n" % (seq, b" ".join(fields))

    def _stream(self, pieces: Iterator[bytes], finished) -> None:
        self._hold_input()

        def done():
            finished()
            self._release_input()

        ResponseStream(self.transport, pieces, done).start()

    def _hold_input(self) -> None:
        """
        Read no more commands until this one is answered. LineReceiver
        keeps what already arrived in its buffer, unsplit, so a literal in
        a pipelined command is still read as raw octets afterwards (a
        queue of split lines, Twisted's C{blocked}, would cut it at CRLFs).
        """
        self._held += 1
        basic.LineReceiver.pauseProducing(self)

    def _release_input(self) -> None:
        self._held -= 1
        if self._held == 0 and self.transport is not None and not self.transport.disconnecting:
            basic.LineReceiver.resumeProducing(self)

    # -- STORE -----------------------------------------------------------------------

    def do_STORE(self, tag, messages, mode, flags, uid=0):
        view = self.selected
        name = mode.upper()
        silent = name.endswith(b".SILENT")
        if silent:
            name = name[: -len(b".SILENT")]
        how = {b"FLAGS": "replace", b"+FLAGS": "add", b"-FLAGS": "remove"}.get(name)
        if how is None:
            self.sendBadResponse(tag, b"STORE wants FLAGS, +FLAGS or -FLAGS (with .SILENT), then a flag list")
            return
        if view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] mailbox was opened with EXAMINE")
            return
        try:
            targets = view.resolve(messages, bool(uid))
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        names = [f.decode("utf-8", "replace") for f in flags if f.lower() != b"\\recent"]
        seq_of = dict((u, s) for s, u in targets)
        result = view.folder.set_flags([u for _, u in targets], names, how, origin=self)
        lines = []
        if not silent:
            for u in sorted(result):
                if uid:
                    lines.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq_of[u], u, flags_text(result[u], u in view.recent)))
                else:
                    lines.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq_of[u], flags_text(result[u], u in view.recent)))
        self.write_lines(lines)
        self.sendPositiveResponse(tag, b"STORE completed")

    select_STORE = (do_STORE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_flaglist)

    # -- SEARCH ----------------------------------------------------------------------

    def do_SEARCH(self, tag, charset, query, uid=0):
        view = self.selected
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] charset not supported")
            return
        folder = view.folder
        try:
            predicate = compile_search(query, len(view.uids), view.uids[-1] if view.uids else 0)
        except BadSearch as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        cache = HeaderCache.of(folder)
        found = []
        info_of = folder.info
        recent = view.recent
        for seq, u in enumerate(view.uids, 1):
            try:
                candidate = Candidate(seq, info_of(u), u in recent, folder, cache)
                if predicate(candidate):
                    found.append(u if uid else seq)
            except (NoSuchMessage, FileNotFoundError):
                continue
        self.transport.write(b"* SEARCH" + b"".join(b" %d" % n for n in found) + b"\r\n")
        self.sendPositiveResponse(tag, b"SEARCH completed")

    def arg_searchkeys(self, line, _before=b""):
        """
        Search keys, with literals anywhere in them (clients send a
        non-ASCII string as C{{N}}; Twisted's parser wants one line).
        """
        m = _LITERAL.search(line)
        if m is None:
            try:
                return imap4.parseNestedParens(_before + line), b""
            except imap4.IllegalClientResponse:
                raise
            except Exception as e:
                raise imap4.IllegalClientResponse(f"bad search keys: {e}") from None
        head = _before + line[: m.start()]
        d = self._stringLiteral(int(m.group(1).rstrip(b"+")))

        def more(result):
            data, rest = result
            quoted = b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            return self.arg_searchkeys(rest, head + quoted)

        return d.addCallback(more)

    select_SEARCH = (do_SEARCH, imap4.IMAP4Server.opt_charset, arg_searchkeys)

    # -- EXPUNGE, COPY, MOVE --------------------------------------------------------

    def _expunge(self, uids: list[int]) -> list[bytes]:
        view = self.selected
        gone = view.folder.expunge(uids, origin=self)
        return [b"* %d EXPUNGE\r\n" % view.forget(u) for u in gone if view.seq_of(u)]

    def do_EXPUNGE(self, tag, messages=None, uid=0):
        view = self.selected
        if view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] mailbox was opened with EXAMINE")
            return
        candidates = view.uids
        if messages is not None:
            candidates = [u for _, u in view.resolve(messages, True)]
        deleted = [u for u in candidates if "\\Deleted" in _flags_or_empty(view.folder, u)]
        self.write_lines(self._expunge(deleted))
        if not deleted:
            return self.sendPositiveResponse(tag, b"EXPUNGE completed")
        self._after_flush(view.folder, tag, b"EXPUNGE completed")

    def _after_flush(self, folder, tag, text: bytes) -> None:
        """
        Answer C{tag} once the folder's removals are on disk: the OK of
        EXPUNGE, CLOSE or MOVE promises the messages are gone. Input waits
        meanwhile, so replies stay in order.
        """
        self._hold_input()
        d = defer.maybeDeferred(folder.flush)

        def failed(reason):
            log.failure("could not make an expunge durable", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] removal may not have reached the disk")

        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, text), failed)
        d.addBoth(lambda _: self._release_input())

    select_EXPUNGE = (do_EXPUNGE,)

    def do_COPY(self, tag, messages, name, uid=0, move=False):
        view = self.selected
        command = b"MOVE" if move else b"COPY"
        if move and view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] mailbox was opened with EXAMINE")
            return
        try:
            targets = view.resolve(messages, bool(uid))
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, str(e).encode("utf-8", "replace"))
            return
        destination = self._target_folder(tag, name)
        if destination is None:
            return
        uids = [u for _, u in targets]
        self._hold_input()
        d = view.folder.copy_to(uids, destination)

        def copied(pairs):
            code = b""
            if pairs:
                code = b"[COPYUID %d %s %s] " % (
                    destination.uid_validity,
                    b",".join(b"%d" % s for s, _ in pairs),
                    b",".join(b"%d" % n for _, n in pairs),
                )
            if move:
                if code:
                    self.sendUntaggedResponse(b"OK " + code.strip())
                self.write_lines(self._expunge([s for s, _ in pairs]))
                return view.folder.flush().addCallbacks(
                    lambda _: self.sendPositiveResponse(tag, b"MOVE completed"),
                    lambda _: self.sendNegativeResponse(tag, b"[SERVERBUG] removal may not have reached the disk"),
                )
            else:
                self.sendPositiveResponse(tag, code + b"COPY completed")

        def failed(reason):
            log.failure("{command} failed", reason, command=command.decode())
            self.sendNegativeResponse(tag, b"[SERVERBUG] " + command + b" failed; nothing was removed")

        d.addCallbacks(copied, failed)
        d.addBoth(lambda _: self._release_input())

    select_COPY = (do_COPY, imap4.IMAP4Server.arg_seqset, arg_finalastring)

    def do_MOVE(self, tag, messages, name, uid=0):
        self.do_COPY(tag, messages, name, uid, move=True)

    select_MOVE = (do_MOVE, imap4.IMAP4Server.arg_seqset, arg_finalastring)

    def do_UID(self, tag, command, line):
        command = command.upper()
        if command not in (b"FETCH", b"SEARCH", b"STORE", b"COPY", b"MOVE", b"EXPUNGE"):
            self.sendBadResponse(tag, b"UID wants FETCH, SEARCH, STORE, COPY, MOVE or EXPUNGE")
            return
        if command == b"EXPUNGE":
            try:
                messages, rest = self.arg_seqset(line)
            except imap4.IllegalClientResponse as e:
                self.sendBadResponse(tag, b"UID EXPUNGE wants a UID set: " + str(e).encode())
                return
            self.do_EXPUNGE(tag, messages, uid=1)
            return
        self.dispatchCommand(tag, command, line, uid=1)

    select_UID = (do_UID, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_line)


def _flags_or_empty(folder: Any, uid: int) -> frozenset:
    try:
        return folder.info(uid).flags
    except NoSuchMessage:
        return frozenset()


def _argument_required(parser: Any) -> Any:
    """
    Twisted's argument parsers index the rest of the line; when an earlier
    parser used it all up they get L{None} and raise C{TypeError}, which
    Twisted answers as "Server error" with a traceback in the log
    (C{STORE 1 +FLAGS} with no flag list). A missing argument is the
    client's syntax error: C{BAD}.
    """

    def parse(self: Any, line: Any, *args: Any, **kwargs: Any) -> Any:
        if line is None:
            raise imap4.IllegalClientResponse("Missing argument")
        return parser(self, line, *args, **kwargs)

    parse.__name__ = parser.__name__
    parse.__doc__ = parser.__doc__
    return parse


def _guard_command_tables(cls: Any) -> None:
    # The command tables (C{select_STORE = (do_STORE, arg_seqset, ...)}) hold
    # the parser functions themselves, so it is their entries that change.
    for name in dir(cls):
        if not name.startswith(("unauth_", "auth_", "select_", "logout_")):
            continue
        table = getattr(cls, name)
        if not isinstance(table, tuple) or not table:
            continue
        guarded = (table[0],) + tuple(
            _argument_required(p) if callable(p) and getattr(p, "__name__", "").startswith("arg_") else p
            for p in table[1:]
        )
        setattr(cls, name, guarded)


_guard_command_tables(IMAPServer)
