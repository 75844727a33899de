# -*- test-case-name: tests.test_imap_search -*-
"""
IMAP SEARCH (RFC 3501 §6.4.4): search keys compiled into a predicate over
the folder's index, reading message files only for the keys that need them.

Theory of operation: L{compile_search} turns the parsed key list (Twisted's
C{parseNestedParens}) into one Python function. Keys on flags, size, dates,
UIDs and sequence numbers look only at L{MessageInfo}. Header keys (FROM,
TO, SUBJECT, HEADER ...) read only a message's header, at most
C{HEADER_READ} octets of the file, and remember the lowered value per
folder and UID (L{HeaderCache}), so a second SEARCH FROM does not touch the
disk; BODY and TEXT read the whole message. Matching is case-insensitive
substring matching on the octets (RFC 3501: "substring"), after decoding
RFC 2047 encoded words in headers.
"""

from __future__ import annotations

import bisect
import calendar
import email.errors
import email.header
import email.utils
import os
import re
import stat
import time
import weakref
from array import array
from typing import Any, Callable, Iterable, Iterator

from twisted.internet import defer
from twisted.mail import imap4
from twisted.mail.imap4 import IllegalClientResponse, MessageSet
from twisted.logger import Logger

from twisted_mailhub.heap import after_walk
from twisted_mailhub.imap.address import searchable
from twisted_mailhub.imap.condstore import has_modseqs
from twisted_mailhub.imap.message import has_broken_base64_word, split_header
from twisted_mailhub.imap.wire import LITERAL as _LITERAL
from twisted_mailhub.imap.wire import client_text, is_field_name, sequence_set, shown
from twisted_mailhub.offload import in_thread
from twisted_mailhub.store.interfaces import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, NoSuchMessage, StoreUnavailable

log = Logger()

HEADER_READ = 16384
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_DATE = re.compile(rb'"?(\d{1,2})-([A-Za-z]{3})-(\d{4})"?\Z')
_FOLD = re.compile(rb"\r?\n[ \t]+")
_FIELD: dict[str, re.Pattern[bytes]] = {}


class BadSearch(IllegalClientResponse):
    pass


def parse_date(value: bytes) -> tuple[int, int, int]:
    """
    An IMAP date (RFC 3501 §9 C{date}), C{1-Feb-1994}, optionally quoted,
    as (year, month, day).

    @raise BadSearch: the form is wrong or the day is not one of the
        calendar (C{31-Feb-2026}, C{29-Feb-2025}).
    """
    m = _DATE.match(value)
    if m is None or m.group(2).decode("ascii").lower() not in _MONTHS:
        raise BadSearch("bad date " + shown(value, 30) + ": expected e.g. 1-Feb-1994")
    day, month, year = int(m.group(1)), _MONTHS[m.group(2).decode("ascii").lower()], int(m.group(3))
    if not 1 <= year <= 9999 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise BadSearch("bad date " + shown(value, 30) + ": not a day of the calendar")
    return year, month, day


def _day(timestamp: float) -> tuple[int, int, int]:
    t = time.localtime(timestamp)
    return t.tm_year, t.tm_mon, t.tm_mday


# The sent day of a message whose Date: field is missing or unreadable.
# RFC 3501 §6.4.4 and RFC 9051 §6.4.4 are silent (RFC 5256 §2.2's
# INTERNALDATE rule is for SORT, which follows it); Dovecot (2.3.19,
# checked) takes such a message as sent at its time 0, 1-Jan-1970, for
# SENTBEFORE/SENTON/SENTSINCE, and so does the hub.
NO_SENT_DAY = (1970, 1, 1)


def _sent_day(candidate: "Candidate") -> tuple[int, int, int]:
    """
    The day of C{candidate}'s Date: field as written (its time and zone
    disregarded, RFC 3501 §6.4.4), or L{NO_SENT_DAY} without a readable one.
    """
    value = candidate.header_value("date")
    if not value:
        return NO_SENT_DAY
    try:
        parsed = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return NO_SENT_DAY
    return parsed.year, parsed.month, parsed.day


def _decode_words(value: bytes) -> bytes:
    if b"=?" not in value:
        return value
    text = value.decode("ascii", "replace")
    if has_broken_base64_word(text):
        return value  # (searched as sent, as below)
    try:
        text = str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value  # (an encoded word with broken base64: searched as sent)
    return text.encode("utf-8", "replace")


class FieldValues:
    """
    One field's searchable values in one folder, by UID: the UIDs
    ascending in an C{array('I')} and beside them the number of each
    one's value in C{distinct}, the values kept once each (the same
    sender on thousands of messages is kept once). The numbers take 1
    octet a message while there are at most 256 distinct values, then 2,
    then 4: SEARCH FROM over 100,000 messages from a few senders keeps
    0.5 MB, where a list beside the UIDs kept 1.2 and a dict of UID to
    value 20. SEARCH asks in UID order, so the row after the last one
    found is tried first.
    """

    __slots__ = ("uids", "numbers", "distinct", "_known", "next")

    def __init__(self) -> None:
        self.uids = array("I")
        self.numbers = array("B")
        self.distinct: list[bytes] = []
        self._known: dict[bytes, int] = {}  # the first distinct values and their numbers, to share
        self.next = 0  # the row after the one found last

    def __len__(self) -> int:
        return len(self.uids)

    def get(self, uid: int) -> bytes | None:
        """The value kept for C{uid}, or None."""
        uids = self.uids
        i = self.next
        if i >= len(uids) or uids[i] != uid:
            i = bisect.bisect_left(uids, uid)
            if i >= len(uids) or uids[i] != uid:
                return None
        self.next = i + 1
        return self.distinct[self.numbers[i]]

    def items(self) -> Iterator[tuple[int, bytes]]:
        """Every C{(uid, value)} kept, UIDs ascending."""
        return zip(self.uids, map(self.distinct.__getitem__, self.numbers))

    def put(self, uid: int, value: bytes) -> None:
        """Keep C{value} for C{uid} (not yet kept)."""
        known = self._known
        number = known.get(value)
        if number is None:
            distinct = self.distinct
            number = len(distinct)
            distinct.append(value)
            if len(known) < 65536:
                known[value] = number
            if number == 256 or number == 65536:
                # (past what the numbers' octets hold: the next size up)
                self.numbers = array("H" if number == 256 else "I", self.numbers)
        uids = self.uids
        if not uids or uid > uids[-1]:
            uids.append(uid)
            self.numbers.append(number)
        else:
            i = bisect.bisect_left(uids, uid)
            uids.insert(i, uid)
            self.numbers.insert(i, number)


class HeaderCache:
    """
    Lowered, unfolded, decoded header values per folder and field
    (L{FieldValues}, by UID).
    """

    _folders: "weakref.WeakKeyDictionary[Any, dict[str, FieldValues]]" = weakref.WeakKeyDictionary()
    limit = 200_000  # values kept per field and folder

    @classmethod
    def of(cls, folder: Any) -> dict[str, FieldValues]:
        try:
            return cls._folders.setdefault(folder, {})
        except TypeError:
            return {}


class Candidate:
    """
    One message as SEARCH sees it; reads the file only when asked.
    """

    __slots__ = ("seq", "info", "recent", "_folder", "_cache", "_header", "_raw")

    def __init__(self, seq: int, info: Any, recent: bool, folder: Any, cache: dict):
        self.seq = seq
        self.info = info
        self.recent = recent
        self._folder = folder
        self._cache = cache
        self._header: bytes | None = None
        self._raw: bytes | None = None

    def modseq(self) -> int:
        return self._folder.modseq(self.info.uid)

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._folder.read(self.info.uid)
        return self._raw

    def header(self) -> bytes:
        if self._header is None:
            if self._raw is not None:
                self._header = split_header(self._raw)[0]
            else:
                path = self._folder.path(self.info.uid)
                if path is None:
                    self._header = split_header(self.raw())[0]
                else:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        # renamed by a flag change elsewhere: the store finds it
                        self._header = split_header(self.raw())[0]
                        return self._header
                    try:
                        head = os.read(fd, HEADER_READ)
                    finally:
                        os.close(fd)
                    header, body = split_header(head)
                    self._header = header if body or len(head) < HEADER_READ else split_header(self.raw())[0]
        return self._header

    def header_value(self, name: str) -> bytes:
        """All values of field C{name}, lowered and joined; b'' if none."""
        per_field = self._cache.get(name)
        if per_field is None:
            per_field = self._cache[name] = FieldValues()
        uid = self.info.uid
        # (FieldValues.get's first try, written out: asked of every message)
        i = per_field.next
        uids = per_field.uids
        if i < len(uids) and uids[i] == uid:
            per_field.next = i + 1
            return per_field.distinct[per_field.numbers[i]]
        value = per_field.get(uid)
        if value is None:
            pattern = _FIELD.get(name)
            if pattern is None:
                pattern = _FIELD[name] = re.compile(rb"(?im)^" + re.escape(name.encode("ascii")) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)")
            values = [_decode_words(_FOLD.sub(b" ", v).strip()) for v in pattern.findall(self.header())]
            value = b"\n".join(values).lower()
            if len(per_field) < HeaderCache.limit:
                per_field.put(uid, value)
        return value


Predicate = Callable[[Candidate], bool]

# Keys whose predicate may read a message's file (its header or all of it).
READING_KEYS = frozenset(
    (b"BODY", b"TEXT", b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"HEADER", b"SENTBEFORE", b"SENTON", b"SENTSINCE")
)


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)


class _Moved(Exception):
    """A message's file was renamed (a flag change) after its path was taken."""


class FileReader:
    """
    (for a worker thread) Message files by position in a list of paths
    taken in the reactor (a Maildir folder's C{paths}). A file renamed
    since (a flag change elsewhere) raises L{_Moved}: the reactor looks
    again.
    """

    def __init__(self, paths: list[str | None]):
        self._paths = paths

    def present(self, n: int) -> bool:
        """Had message C{n} a file when the paths were taken?"""
        return self._paths[n] is not None

    def _open(self, n: int) -> int:
        # O_NONBLOCK: a listed file another program replaced by a FIFO
        # would hold this thread in open(2) for ever (and with it every
        # later search and big read); it is no message (NoSuchMessage),
        # as the scan says of one it finds (store/maildir.py).
        try:
            fd = os.open(self._paths[n], os.O_RDONLY | _O_NONBLOCK | _O_NOCTTY)
        except FileNotFoundError:
            raise _Moved() from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NoSuchMessage(n)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def raw(self, n: int, size: int = 0) -> bytes:
        """The whole file of message C{n} (C{size}: its size as the store knows it, a hint for the read)."""
        fd = self._open(n)
        try:
            chunks = []
            want = max(size + 1, 65536)
            while True:
                chunk = os.read(fd, want)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def head(self, n: int, length: int) -> bytes:
        """The first C{length} octets of message C{n}'s file."""
        fd = self._open(n)
        try:
            return os.read(fd, length)
        finally:
            os.close(fd)


def detached_reader(folder: Any, uids: list[int]) -> Any:
    """
    Something a worker thread reads messages C{uids} of C{folder} with,
    by their position in C{uids} (C{present(n)}, C{raw(n, size)}, C{head(n,
    length)}), made in the reactor from what the store gives: a
    L{FileReader} of a Maildir's paths, or the store's own
    (C{folder.detached_reader}: PostgreSQL's reads on connections of its
    own; C{folder.held_reader}: the memory store's bytes, immutable). None
    for a store that has none of these.
    """
    paths_of = getattr(folder, "paths", None)
    if paths_of is not None:
        return FileReader(paths_of(uids))
    make = getattr(folder, "detached_reader", None) or getattr(folder, "held_reader", None)
    return make(uids) if make is not None else None


def reads_detached(folder: Any) -> bool:
    """Can L{detached_reader} read C{folder}'s messages in a worker thread?"""
    return any(getattr(folder, name, None) is not None for name in ("paths", "detached_reader", "held_reader"))


def _reads_here(folder: Any, uids: list[int]) -> bool:
    """
    Is matching messages C{uids} of C{folder} in the reactor the better
    choice: a store whose messages no thread can read, or one that holds
    them in memory and says these are few and small (C{reads_here}:
    L{MemoryFolder<twisted_mailhub.store.memory.MemoryFolder>}).
    """
    if not reads_detached(folder):
        return True
    here = getattr(folder, "reads_here", None)
    return here is not None and here(uids)


class DetachedCandidate(Candidate):
    """
    A L{Candidate} that a worker thread can match: its row and its
    MODSEQ were taken in the reactor, and it reads its bytes only through
    C{reader} (L{detached_reader}: at position C{n}), never the store's
    objects, which the reactor changes meanwhile.
    """

    __slots__ = ("_reader", "_n", "_modseq")

    def __init__(self, seq: int, info: Any, recent: bool, reader: Any, n: int, modseq: int, cache: dict):
        Candidate.__init__(self, seq, info, recent, None, cache)
        self._reader = reader
        self._n = n
        self._modseq = modseq

    def modseq(self) -> int:
        return self._modseq

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self._reader.raw(self._n, self.info.size)
        return self._raw

    def header(self) -> bytes:
        if self._header is None:
            if self._raw is not None:
                self._header = split_header(self._raw)[0]
            else:
                head = self._reader.head(self._n, HEADER_READ)
                header, body = split_header(head)
                self._header = header if body or len(head) < HEADER_READ else split_header(self.raw())[0]
        return self._header


def reads_messages(query: list) -> bool:
    """Does the parsed key list C{query} name a key that may read a message's file (L{READING_KEYS})?"""
    return any(reads_messages(t) if isinstance(t, list) else (isinstance(t, bytes) and t.upper() in READING_KEYS) for t in query)


_FIELD_OF_KEY = {b"FROM": "from", b"TO": "to", b"CC": "cc", b"BCC": "bcc", b"SUBJECT": "subject", b"SENTBEFORE": "date", b"SENTON": "date", b"SENTSINCE": "date"}


def _fields_read(query: list, fields: set[str]) -> bool:
    """Add to C{fields} the header fields C{query}'s keys read; False if a key reads whole messages (BODY, TEXT)."""
    tokens = list(query)
    for n, t in enumerate(tokens):
        if isinstance(t, list):
            if not _fields_read(t, fields):
                return False
        elif isinstance(t, bytes):
            key = t.upper()
            if key in (b"BODY", b"TEXT"):
                return False
            if key in _FIELD_OF_KEY:
                fields.add(_FIELD_OF_KEY[key])
            elif key == b"HEADER" and n + 1 < len(tokens) and isinstance(tokens[n + 1], bytes):
                fields.add(tokens[n + 1].decode("ascii", "replace").lower())
    return True


def must_read(folder: Any, query: list, uids: list[int]) -> bool:
    """
    Would matching C{query} (parsed keys) against C{uids} of C{folder}
    read message files: a key that reads whole messages, or a header key
    whose field the L{HeaderCache} does not hold for every one of
    C{uids}? (A word taken for a key only sends the search to a thread.)
    """
    if not reads_messages(query):
        return False
    fields: set[str] = set()
    if not _fields_read(query, fields):
        return True
    return not fields_cached(folder, fields, uids)


def fields_cached(folder: Any, fields: Iterable[str], uids: list[int]) -> bool:
    """Does the L{HeaderCache} of C{folder} hold each of C{fields} (lowered field names) for every one of C{uids}?"""
    cache = HeaderCache.of(folder)
    wanted = None
    for name in fields:
        values = cache.get(name)
        if values is None or len(values) < len(uids):
            return False
        if len(values) == len(uids) and _same_numbers(values.uids, uids):
            continue  # (the common case: every message of the folder, compared in C)
        if wanted is None:
            wanted = set(uids)
        if not wanted.issubset(values.uids):
            return False
    return True


def _same_numbers(kept: array, uids: Any) -> bool:
    """Does C{kept} (an C{array('I')}) hold the numbers of C{uids} (an array or list), in that order?"""
    if isinstance(uids, array):
        return kept == uids
    return kept.tolist() == uids


def _copy_values(values: FieldValues) -> FieldValues:
    copy = FieldValues()
    copy.uids = array("I", values.uids)
    copy.numbers = array(values.numbers.typecode, values.numbers)
    copy.distinct = list(values.distinct)
    copy._known = dict(values._known)
    return copy


def _values_of(values: FieldValues, uids: list[int]) -> FieldValues:
    """A new L{FieldValues} with those of C{values} for C{uids} (ascending) alone."""
    some = FieldValues()
    for uid in uids:
        value = values.get(uid)
        if value is not None:
            some.put(uid, value)
    return some


def _walk_detached(predicates: list, entries: list, reader: Any, cache: dict, fields: tuple = ()) -> tuple[list[tuple[int, int]], list[int], int]:
    """
    (in a worker thread) For each of C{entries} that one of C{predicates}
    takes: its index and which take it (a bit each, 1 for the first);
    the indexes of those whose file moved (to be tried again in the
    reactor); and the highest MODSEQ among those taken. The header
    C{fields} of those taken are put in C{cache} too.
    """
    found: list[tuple[int, int]] = []
    moved: list[int] = []
    top = 0
    for n, (seq, info, recent, at, modseq) in enumerate(entries):
        try:
            candidate = DetachedCandidate(seq, info, recent, reader, at, modseq, cache)
            mask = 0
            for bit, predicate in enumerate(predicates):
                if predicate(candidate):
                    mask |= 1 << bit
            if mask:
                for name in fields:
                    candidate.header_value(name)
                found.append((n, mask))
                if modseq > top:
                    top = modseq
        except _Moved:
            moved.append(n)
        except (NoSuchMessage, FileNotFoundError):
            continue
    return found, moved, top


MATCH_SLICE = 1024
"""How many messages L{match_in_thread} gives its thread at a time."""

FEW = 64
"""At most this many messages (a live search's new ones) are matched with the header cache's values of theirs alone."""

MATCH_SLICE_OCTETS = 16 * 1024 * 1024
"""And how many octets of them at most (the thread pool is shared: L{twisted_mailhub.offload})."""


def match_in_thread(
    folder: Any, predicate: Predicate, uids: list[int], recent: Any, by_modseq: bool, fields: tuple = (), wanted: Callable[[], bool] | None = None
) -> defer.Deferred | None:
    """
    Match C{predicate} against messages C{uids} (ascending, sequence
    numbers from 1) of C{folder} in a worker thread
    (L{twisted_mailhub.offload.in_thread}): the messages are read
    (L{detached_reader}: Maildir's files, PostgreSQL's blobs on the
    store's read connections) and matched there, so a SEARCH BODY over
    20,000 messages no longer holds every other session. Only the rows,
    paths or message ids and MODSEQs are taken in the reactor. The
    L{HeaderCache} values are copied for the thread and kept afterwards
    if no other search added to them meanwhile; the header C{fields}
    (lowered names: SORT's keys) of the messages found are read there too.
    C{wanted}: asked before each slice after the first; once it says
    False (the client went away) no further slice is read, and what was
    found so far is the answer (nobody reads it).

    @return: a L{Deferred} firing with C{(found, top)}: the matching
        C{(seq, uid)} pairs ascending and the highest MODSEQ among them
        (0 without C{by_modseq}); or None when they are better matched in
        the reactor (L{_reads_here}: a store whose messages no thread can
        read, or a few small messages held in memory): the caller's own
        L{Candidate}s are used there. It fails with the store's L{StoreUnavailable} if the
        database cannot be reached.
    """
    waited = match_each_in_thread(folder, [predicate], uids, None, recent, by_modseq, fields, wanted)
    if waited is None:
        return None
    return waited.addCallback(lambda outcome: ([(seq, u) for seq, u, _ in outcome[0]], outcome[1]))


def match_each_in_thread(
    folder: Any,
    predicates: list,
    uids: list[int],
    seqs: list[int] | None,
    recent: Any,
    by_modseq: bool,
    fields: tuple = (),
    wanted: Callable[[], bool] | None = None,
) -> defer.Deferred | None:
    """
    L{match_in_thread} for several C{predicates} at once (each message is
    read once): messages C{uids} (ascending) of C{folder}, their sequence
    numbers C{seqs} (None: 1, 2, ...); C{wanted} as there.

    @return: a L{Deferred} firing with C{(found, top)}: C{(seq, uid,
        mask)} ascending for each message one of C{predicates} takes
        (C{mask}: a bit for each that takes it, 1 for the first), and the
        highest MODSEQ among them; or None (see L{match_in_thread}).
    """
    if _reads_here(folder, uids):
        return None
    info_of = getattr(folder, "row", None) or folder.info
    shared = HeaderCache.of(folder)
    before = {name: len(values) for name, values in shared.items()}
    few = len(uids) <= FEW
    if few:
        # (a live search's new messages, the API wait's: the values of
        # these alone, not copies of the folder's whole cache, which cost
        # milliseconds of the reactor for 100,000 messages)
        private = {name: _values_of(values, uids) for name, values in shared.items()}
    else:
        private = {name: _copy_values(values) for name, values in shared.items()}
    fields = tuple(fields)
    found_all: list[tuple[int, int, int]] = []
    tops = [0]
    walked = [0]

    def entries_from(start: int) -> tuple[list, Any, int]:
        # One slice of the messages at a time: what the thread needs of
        # them, and a whole 100,000-message folder's at once left the
        # server's memory some 5 MB higher after it. A slice ends early
        # at MATCH_SLICE_OCTETS, so a search of big messages gives the
        # shared thread pool back to others between slices.
        end = min(start + MATCH_SLICE, len(uids))
        octets = 0
        entries = []
        chunk: list[int] = []
        infos = []
        for i in range(start, end):
            u = uids[i]
            try:
                info = info_of(u)
            except NoSuchMessage:
                info = None
            chunk.append(u)
            infos.append(info)
            if info is not None:
                octets += info.size
                if octets > MATCH_SLICE_OCTETS:
                    break
        reader = detached_reader(folder, chunk)
        for n, (u, info) in enumerate(zip(chunk, infos)):
            if info is None or not reader.present(n):
                continue
            seq = seqs[start + n] if seqs is not None else start + n + 1
            try:
                entries.append((seq, info, u in recent, n, folder.modseq(u) if by_modseq else 0))
            except NoSuchMessage:
                continue
        return entries, reader, start + len(chunk)

    def matched(outcome, entries: list, following: int):
        found, moved, top = outcome
        tops[0] = max(tops[0], top)
        walked[0] += len(entries)
        found_all.extend((entries[n][0], entries[n][1].uid, mask) for n, mask in found)
        # renamed meanwhile: the store finds them (in the reactor, few)
        for n in moved:
            seq, info, is_recent, _at, _modseq = entries[n]
            try:
                candidate = Candidate(seq, info, is_recent, folder, shared)
                mask = 0
                for bit, predicate in enumerate(predicates):
                    if predicate(candidate):
                        mask |= 1 << bit
                if mask:
                    found_all.append((seq, info.uid, mask))
                    if by_modseq:
                        tops[0] = max(tops[0], candidate.modseq())
            except (NoSuchMessage, FileNotFoundError):
                continue
        if following < len(uids):
            if wanted is not None and not wanted():
                # (the client went away: the rest is not read for nobody,
                # and the partial look is kept out of the shared cache)
                found_all.sort()
                return found_all, tops[0]
            return walk(following)
        for name, values in private.items():
            if few:
                kept = shared.setdefault(name, FieldValues())
                for u, value in values.items():
                    if len(kept) >= HeaderCache.limit:
                        break
                    if kept.get(u) is None:
                        kept.put(u, value)
            elif len(shared.get(name, ())) == before.get(name, 0) and len(values) <= HeaderCache.limit:
                shared[name] = values
        found_all.sort()
        after_walk(walked[0])
        return found_all, tops[0]

    def walk(start: int) -> defer.Deferred:
        try:
            entries, reader, following = entries_from(start)
        except Exception:
            return defer.fail()
        return in_thread(_walk_detached, predicates, entries, reader, private, fields).addCallback(matched, entries, following)

    return walk(0)


def _each_in_thread(folder: Any, infos: list[Any], here: Callable[[Any], Any], there: Callable[[Any, int, Any], Any], gone: Any) -> defer.Deferred:
    """
    A L{Deferred} of what is read of each message of C{infos}
    (L{MessageInfo}s of C{folder}), in their order: C{there(reader, n,
    info)} in a worker thread, C{reader} the folder's L{detached_reader}
    and C{n} the message's place in C{infos}; C{gone} for a message gone
    meanwhile; C{here(info)}, in the reactor, for a message renamed
    meanwhile (a flag change) and for every message when L{_reads_here}
    (a store whose messages no thread can read; a few small ones held in
    memory). Fails with what making the
    reader raised.
    """
    if not infos or _reads_here(folder, [i.uid for i in infos]):
        return defer.succeed([here(i) for i in infos])
    try:
        reader = detached_reader(folder, [i.uid for i in infos])
    except Exception:
        return defer.fail()
    moved = object()

    def read() -> list:
        out: list = []
        for n, info in enumerate(infos):
            try:
                out.append(there(reader, n, info) if reader.present(n) else gone)
            except _Moved:
                out.append(moved)  # (renamed by a flag change: looked for again here)
            except (NoSuchMessage, FileNotFoundError):
                out.append(gone)
        return out

    return in_thread(read).addCallback(lambda out: [here(i) if h is moved else h for i, h in zip(infos, out)])


def heads_in_thread(folder: Any, infos: list[Any], length: int) -> defer.Deferred:
    """
    A L{Deferred} of the first C{length} octets of each message of
    C{infos} (L{MessageInfo}s of C{folder}), in their order, read in a
    worker thread (L{detached_reader}); None for a message gone
    meanwhile. Few small messages held in memory are read here
    (L{_reads_here}).
    """

    def here(info: Any) -> bytes | None:
        try:
            with folder.open(info.uid) as f:
                return f.read(length)
        except (NoSuchMessage, FileNotFoundError):
            return None

    return _each_in_thread(folder, infos, here, lambda reader, n, info: reader.head(n, length), None)


def headers_in_thread(folder: Any, infos: list[Any]) -> defer.Deferred:
    """
    A L{Deferred} of the header (up to and with its empty line) of each
    message of C{infos} (L{MessageInfo}s of C{folder}), in their order,
    read in a worker thread (L{detached_reader}); C{b""} for a message
    gone meanwhile. Few small messages held in memory are read here
    (L{_reads_here}).
    """
    cache = HeaderCache.of(folder)

    def here(info: Any) -> bytes:
        try:
            return Candidate(0, info, False, folder, cache).header()
        except (NoSuchMessage, FileNotFoundError):
            return b""

    def there(reader: Any, n: int, info: Any) -> bytes:
        return DetachedCandidate(0, info, False, reader, n, 0, {}).header()

    return _each_in_thread(folder, infos, here, there, b"")


def _flag(flag: str, present: bool = True) -> Predicate:
    return lambda c: (flag in c.info.flags) == present


def _keyword(word: bytes, present: bool = True) -> Predicate:
    text = word.decode("utf-8", "replace").lower()
    return lambda c: any(f.lower() == text for f in c.info.flags) == present


def _contains_header(name: str, needle: bytes) -> Predicate:
    needle = needle.lower()
    return lambda c: needle in c.header_value(name)


def _contains_address(name: str, needle: bytes) -> Predicate:
    """
    FROM/TO/CC/BCC: the string in the header as written, or in its
    addresses as parsed (comments and folding gone: C{<a (x)@ (y) b.org>}
    is found by C{a@b.org}).
    """
    needle = needle.lower()
    key = "address:" + name

    def match(c: Candidate) -> bool:
        raw = c.header_value(name)
        if needle in raw:
            return True
        per_field = c._cache.get(key)
        if per_field is None:
            per_field = c._cache[key] = FieldValues()
        parsed = per_field.get(c.info.uid)
        if parsed is None:
            parsed = searchable(raw.decode("utf-8", "replace").replace("\n", ", ")).encode("utf-8")
            if len(per_field) < HeaderCache.limit:
                per_field.put(c.info.uid, parsed)
        return needle in parsed

    return match


def _has_header(name: str) -> Predicate:
    pattern = re.compile(rb"(?im)^" + re.escape(name.encode("ascii")) + rb"[ \t]*:")
    return lambda c: pattern.search(c.header()) is not None


def _msgset(value: bytes, uid: bool, last_seq: int, last_uid: int) -> Predicate:
    try:
        mset: MessageSet = sequence_set(value)
    except Exception:
        raise BadSearch("bad message set " + shown(value, 40) + ": expected e.g. 1:5,7") from None
    last = last_uid if uid else last_seq
    ranges = [(last if lo is None else lo, last if hi is None else hi) for lo, hi in mset.ranges]
    ranges = [(min(lo, hi), max(lo, hi)) for lo, hi in ranges]
    if uid:
        return lambda c: any(lo <= c.info.uid <= hi for lo, hi in ranges)
    return lambda c: any(lo <= c.seq <= hi for lo, hi in ranges)


_SIMPLE: dict[bytes, Predicate] = {
    b"ALL": lambda c: True,
    b"ANSWERED": _flag(ANSWERED),
    b"DELETED": _flag(DELETED),
    b"DRAFT": _flag(DRAFT),
    b"FLAGGED": _flag(FLAGGED),
    b"SEEN": _flag(SEEN),
    b"UNANSWERED": _flag(ANSWERED, False),
    b"UNDELETED": _flag(DELETED, False),
    b"UNDRAFT": _flag(DRAFT, False),
    b"UNFLAGGED": _flag(FLAGGED, False),
    b"UNSEEN": _flag(SEEN, False),
    b"RECENT": lambda c: c.recent,
    b"OLD": lambda c: not c.recent,
    b"NEW": lambda c: c.recent and SEEN not in c.info.flags,
}
_ADDRESS_HEADERS = {b"FROM": "from", b"TO": "to", b"CC": "cc", b"BCC": "bcc"}


def _astrings(tokens: list) -> list:
    # Twisted's parser reads the atom NIL as None; where the grammar wants
    # an astring (every SEARCH argument), NIL is the three letters.
    return [_astrings(t) if isinstance(t, list) else (b"NIL" if t is None else t) for t in tokens]


# How deep NOT, OR and parenthesised lists may nest: far beyond what a
# person or a client writes, and far below Python's recursion limit (3,000
# nested ORs raised RecursionError: "BAD [SERVERBUG]" and a traceback).
MAX_NESTING = 100


def compile_search(keys: list, last_seq: int, last_uid: int, depth: int = 0) -> Predicate:
    """
    One predicate for a whole SEARCH key list (keys are ANDed).

    @raise BadSearch: keys that are not RFC 3501 §6.4.4 search keys, or
        nested more than L{MAX_NESTING} deep.
    """
    if depth > MAX_NESTING:
        raise BadSearch(f"search keys nested too deep (at most {MAX_NESTING} levels of NOT, OR and parentheses)")
    tokens = _astrings(list(keys))
    if not tokens:
        raise BadSearch("SEARCH needs at least one key, e.g. ALL")
    position = [0]

    def take(what: str) -> Any:
        if position[0] >= len(tokens):
            raise BadSearch(f"missing {what}")
        token = tokens[position[0]]
        position[0] += 1
        return token

    def take_string(what: str) -> bytes:
        token = take(what)
        if isinstance(token, list):
            raise BadSearch(f"expected {what}, got a list")
        return token

    def one(level: int = depth) -> Predicate:
        if level > MAX_NESTING:
            raise BadSearch(f"search keys nested too deep (at most {MAX_NESTING} levels of NOT, OR and parentheses)")
        token = take("search key")
        if isinstance(token, list):
            return compile_search(token, last_seq, last_uid, level + 1) if token else (lambda c: True)
        key = token.upper()
        if key in _SIMPLE:
            return _SIMPLE[key]
        if key == b"SUBJECT":
            return _contains_header("subject", take_string("a string after SUBJECT"))
        if key in _ADDRESS_HEADERS:
            return _contains_address(_ADDRESS_HEADERS[key], take_string(f"a string after {key.decode()}"))
        if key == b"HEADER":
            field = take_string("a header field name after HEADER")
            if field and not is_field_name(field):
                raise BadSearch("a header field name is printable US-ASCII without ':' (RFC 5322 section 3.6.8): " + shown(field, 30))
            name = field.decode("ascii").lower()
            value = take_string("a string after HEADER field")
            return _has_header(name) if not value else _contains_header(name, value)
        if key in (b"KEYWORD", b"UNKEYWORD"):
            return _keyword(take_string(f"a keyword after {key.decode()}"), key == b"KEYWORD")
        if key in (b"BODY", b"TEXT"):
            needle = take_string(f"a string after {key.decode()}").lower()
            if key == b"BODY":
                return lambda c: needle in split_header(c.raw())[1].lower()
            return lambda c: needle in c.raw().lower()
        if key in (b"LARGER", b"SMALLER"):
            value = take_string(f"a number after {key.decode()}")
            # RFC 3501 §9 number: ASCII digits (int() would also read
            # "1_0" and "+1")
            if not value.isdigit() or len(value) > 20:
                raise BadSearch(f"{key.decode()} wants a number")
            n = int(value)
            return (lambda c: c.info.size > n) if key == b"LARGER" else (lambda c: c.info.size < n)
        if key in (b"SINCE", b"BEFORE", b"ON"):
            day = parse_date(take_string(f"a date after {key.decode()}"))
            if key == b"SINCE":
                return lambda c: _day(c.info.internal_date) >= day
            if key == b"BEFORE":
                return lambda c: _day(c.info.internal_date) < day
            return lambda c: _day(c.info.internal_date) == day
        if key in (b"SENTSINCE", b"SENTBEFORE", b"SENTON"):
            day = parse_date(take_string(f"a date after {key.decode()}"))
            compare = {b"SENTSINCE": lambda a: a >= day, b"SENTBEFORE": lambda a: a < day, b"SENTON": lambda a: a == day}[key]

            return lambda c: compare(_sent_day(c))
        if key == b"NOT":
            inner = one(level + 1)
            return lambda c: not inner(c)
        if key == b"OR":
            left, right = one(level + 1), one(level + 1)
            return lambda c: left(c) or right(c)
        if key in (b"OLDER", b"YOUNGER"):
            # WITHIN (RFC 5032): internal date at least / at most n seconds ago.
            value = take_string(f"a number of seconds after {key.decode()}")
            if not value.isdigit() or len(value) > 12:
                raise BadSearch(f"{key.decode()} wants a number of seconds")
            edge = time.time() - int(value)
            if key == b"OLDER":
                return lambda c: c.info.internal_date <= edge
            return lambda c: c.info.internal_date >= edge
        if key == b"MODSEQ":
            # RFC 7162 §3.1.5: MODSEQ ["/flags/..." all|shared|priv] n
            value = take_string("a modseq after MODSEQ")
            if not value.isdigit():
                take_string("an entry type after MODSEQ's entry name")
                value = take_string("a modseq after MODSEQ")
            if not value.isdigit() or len(value) > 19:
                raise BadSearch("MODSEQ wants a number")
            least = int(value)
            return lambda c: c.modseq() >= least
        if key == b"UID":
            return _msgset(take_string("a UID set after UID"), True, last_seq, last_uid)
        if key[:1].isdigit() or key[:1] == b"*":
            return _msgset(token, False, last_seq, last_uid)
        raise BadSearch("unknown search key " + shown(token, 30))

    predicates = []
    while position[0] < len(tokens):
        predicates.append(one())
    if len(predicates) == 1:
        return predicates[0]
    return lambda c: all(p(c) for p in predicates)


# -- the SEARCH command ----------------------------------------------------------


# Words that start IMAP search keys (RFC 3501 §6.4.4); a query that starts
# with none of them is taken as TEXT words (what people type in a box).
_KEY_WORDS = frozenset(
    b"ALL ANSWERED BCC BEFORE BODY CC DELETED DRAFT FLAGGED FROM HEADER KEYWORD LARGER NEW NOT OLD ON OR RECENT "
    b"SEEN SENTBEFORE SENTON SENTSINCE SINCE SMALLER SUBJECT TEXT TO UID UNANSWERED UNDELETED UNDRAFT UNFLAGGED "
    b"UNKEYWORD UNSEEN YOUNGER OLDER".split()
)
MAX_QUERY = 4096  # characters of one query from a web form or the API


def compile_query(folder: Any, query: str, words: bool = True) -> Predicate:
    """
    A predicate for C{query}: IMAP search keys (C{FROM alice SUBJECT
    "lunch"}, C{UNSEEN}, C{OR FROM a FROM b}, RFC 3501 §6.4.4) compiled by
    the same engine as IMAP SEARCH, or, with C{words}, plain words, which
    match as C{TEXT} (anywhere in the message): what people type in a
    search box. For the web face (words) and its API (keys only).

    @raise BadSearch: the keys do not parse (too long, open quote, unknown
        key after a known first one...); its text says why.
    """
    query = query.strip()
    if len(query) > MAX_QUERY:
        raise BadSearch(f"a search may be at most {MAX_QUERY} characters")
    raw = query.encode("utf-8")
    first = raw.split(None, 1)[0].upper() if raw else b"ALL"
    if words and first.lstrip(b"(") not in _KEY_WORDS and not first[:1].isdigit() and first[:1] != b"*":
        raw = b"TEXT " + b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    infos = folder.messages()
    try:
        tokens = imap4.parseNestedParens(raw or b"ALL")
        return compile_search(tokens, len(infos), infos[-1].uid if infos else 0)
    except RecursionError:
        raise BadSearch("search keys nested too deeply") from None
    except BadSearch:
        raise
    except (IllegalClientResponse, imap4.MismatchedNesting, imap4.MismatchedQuoting, ValueError, IndexError) as e:
        text = e.args[0] if e.args else "unreadable"
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        raise BadSearch(f"not IMAP search keys (RFC 3501 §6.4.4): {' '.join(str(text).split())[:200]}") from None


def matching(folder: Any, predicate: Predicate | None, infos: list[Any]) -> list[Any]:
    """The L{MessageInfo}s of C{infos} (of C{folder}) that C{predicate} takes (all for None)."""
    if predicate is None:
        return list(infos)
    cache = HeaderCache.of(folder)
    found = []
    for seq, info in enumerate(infos, 1):
        try:
            if predicate(Candidate(seq, info, False, folder, cache)):
                found.append(info)
        except (NoSuchMessage, FileNotFoundError):
            continue
    return found


def search_messages(folder: Any, query: str) -> list[Any]:
    """
    The messages (L{MessageInfo}, in UID order) of C{folder} that match
    C{query} (see L{compile_query}).

    @raise BadSearch: the query does not parse.
    """
    predicate = compile_query(folder, query)
    return matching(folder, predicate, folder.messages())


def matching_in_thread(folder: Any, predicate: Predicate | None, infos: list[Any], wanted: Callable[[], bool] | None = None) -> defer.Deferred:
    """
    L{matching}, as a L{Deferred} of the L{MessageInfo}s of C{infos}
    (ascending UIDs) that C{predicate} takes: the files of a store that
    keeps them are read and matched in a worker thread
    (L{match_in_thread}, C{wanted} as there); other stores are matched
    at once.
    """
    if predicate is None:
        return defer.succeed(list(infos))
    waited = match_in_thread(folder, predicate, [i.uid for i in infos], (), False, (), wanted)
    if waited is None:
        return defer.maybeDeferred(matching, folder, predicate, infos)
    by_uid = {i.uid: i for i in infos}
    return waited.addCallback(lambda outcome: [by_uid[u] for _, u in outcome[0]])


def search_messages_in_thread(folder: Any, query: str, wanted: Callable[[], bool] | None = None) -> defer.Deferred:
    """
    L{search_messages}, its matching in a worker thread
    (L{matching_in_thread}; C{wanted} as L{match_in_thread}'s): a
    L{Deferred} of the matching L{MessageInfo}s in UID order.

    @raise BadSearch: the query does not parse (raised at once).
    """
    predicate = compile_query(folder, query)
    return matching_in_thread(folder, predicate, folder.messages(), wanted)


class SearchCommands:
    """SEARCH, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def do_SEARCH(self, tag, charset, query, uid=0):
        """
        SEARCH (RFC 3501 §6.4.4); with RETURN (...) ESEARCH (RFC 4731) and
        the options of L{twisted_mailhub.imap.contexts} (PARTIAL, UPDATE).
        """
        from twisted_mailhub.imap import contexts

        view = self.selected
        saving = self.take_saving(tag)  # (RETURN (SAVE ...), RFC 5182: imap/searchres.py)
        try:
            returns, charset, query = _search_options(charset, query)
            options = contexts.parse_return_options(returns) if returns is not None else None
        except BadSearch as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        if options is not None and options.update and self.context_tag_in_use(tag):
            self.sendBadResponse(tag, b"a live search already has this tag: use another, or CANCELUPDATE it")
            return
        if charset is not None and not charset.strip():
            self.sendBadResponse(tag, b"SEARCH CHARSET wants a charset name, e.g. SEARCH CHARSET UTF-8 ALL")
            return
        if charset is not None and getattr(self, "utf8_accept", False):
            # RFC 6855 §3: after ENABLE UTF8=ACCEPT the client MUST NOT
            # label a SEARCH's strings; the server SHOULD answer BAD.
            self.sendBadResponse(tag, b"no CHARSET after ENABLE UTF8=ACCEPT (RFC 6855 section 3): its strings are UTF-8 already; send SEARCH without CHARSET")
            return
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] charset not supported")
            return
        folder = view.folder
        by_modseq = _mentions(query, b"MODSEQ")
        if by_modseq:
            if not has_modseqs(folder):
                self.sendBadResponse(tag, b"this mailbox keeps no MODSEQ")
                return
            self.condstore_used()
        try:
            predicate = compile_search(query, len(view.uids), view.uids[-1] if view.uids else 0)
        except BadSearch as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        if must_read(folder, query, view.uids):
            # The files are read and matched in a worker thread; this
            # session reads no further command until it is answered.
            # (the UIDs as they are now, in the view's own kind: an
            # array('I') copy is 4 octets a message; a list of them, 36)
            waited = match_in_thread(folder, predicate, view.uids[:], view.recent, by_modseq, (), self._still_connected)
            if waited is not None:
                self._hold_input()

                def answer(outcome):
                    pairs, top = outcome
                    if self.transport is None or self.transport.disconnecting or self.selected is not view:
                        return  # (the client went away meanwhile)
                    self._answer_search(tag, uid, options, predicate, pairs, top, saving, reads_messages(query))

                def failed(reason):
                    if self.transport is None or self.transport.disconnecting:
                        return
                    if reason.check(StoreUnavailable):
                        if saving is not None:
                            self.save_result([])  # (a failed SEARCH saves no result: RFC 5182 §2.1)
                        self._command_failed(reason.value, tag, b"SEARCH")  # NO [UNAVAILABLE]
                        return
                    log.failure("IMAP SEARCH failed", reason)
                    self.sendBadResponse(tag, b"[SERVERBUG] SEARCH failed; see the server log")

                waited.addCallbacks(answer, failed)
                waited.addBoth(lambda _: self._release_input())
                return
        cache = HeaderCache.of(folder)
        pairs = []
        # (a store's Row where it has one: no key decoded, nothing kept)
        info_of = getattr(folder, "row", None) or folder.info
        recent = view.recent
        top = 0
        for seq, u in enumerate(view.uids, 1):
            try:
                candidate = Candidate(seq, info_of(u), u in recent, folder, cache)
                if predicate(candidate):
                    pairs.append((seq, u))
                    if by_modseq:
                        top = max(top, candidate.modseq())
            except (NoSuchMessage, FileNotFoundError):
                continue
        after_walk(len(view.uids))  # (the headers read for a big folder)
        self._answer_search(tag, uid, options, predicate, pairs, top, saving, reads_messages(query))

    def _answer_search(self, tag, uid, options, predicate, pairs: list, top: int, saving: list | None = None, reads: bool = True) -> None:
        """
        The SEARCH (or ESEARCH, RFC 4731) response and tagged OK for the
        matching C{(seq, uid)} pairs, ascending; C{top} is their highest
        MODSEQ (0: none asked). C{saving}: the RETURN options but SAVE of
        a SEARCH that saves its result (RFC 5182), kept here.
        """
        from twisted_mailhub.imap import contexts

        if self.finish_saving(tag, saving, [u for _, u in pairs]):
            return

        found = [u if uid else seq for seq, u in pairs]
        if options is None:
            modseq = b" (MODSEQ %d)" % top if top else b""
            self.transport.write(b"* SEARCH" + b"".join(b" %d" % n for n in found) + modseq + b"\r\n")
        else:
            self.transport.write(contexts.esearch_response(tag, bool(uid), options, found, sort=False, modseq=top))
            if options.update:
                self.transport.write(self.start_context(tag, bool(uid), options, predicate, None, [u for _, u in pairs], reads))
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
            except Exception:
                raise imap4.IllegalClientResponse("bad search keys: unbalanced parentheses or quotes") from None
        head = _before + line[: m.start()]
        d = self._stringLiteral(int(m.group(1).rstrip(b"+")))

        def more(result):
            data, rest = result
            quoted = b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            return self.arg_searchkeys(rest, head + quoted)

        return d.addCallback(more)

    select_SEARCH = (do_SEARCH, imap4.IMAP4Server.opt_charset, arg_searchkeys)


# -- ESEARCH (RFC 4731): the RETURN options are read in twisted_mailhub.imap.contexts -----


def _search_options(charset: bytes | None, query: list) -> tuple[list | None, bytes | None, list]:
    """
    (RETURN option list or None, charset, keys) of a SEARCH: C{RETURN
    (...)} comes before C{CHARSET} (RFC 4731 §3), so Twisted's
    C{opt_charset} has not seen the charset then.
    """
    if charset is None and query and isinstance(query[0], bytes) and query[0].upper() == b"RETURN":
        if len(query) < 2 or not isinstance(query[1], list):
            raise BadSearch("RETURN wants a list of options, e.g. RETURN (MIN MAX COUNT)")
        options = query[1]
        query = query[2:]
        if len(query) >= 2 and isinstance(query[0], bytes) and query[0].upper() == b"CHARSET":
            charset = query[1] if isinstance(query[1], bytes) else b""
            query = query[2:]
        return options, charset, query
    return None, charset, query


def _mentions(query: list, word: bytes) -> bool:
    return any(_mentions(t, word) if isinstance(t, list) else (isinstance(t, bytes) and t.upper() == word) for t in query)
