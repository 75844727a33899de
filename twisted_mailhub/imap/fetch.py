# -*- test-case-name: tests.test_imap_message -*-
"""
FETCH and STORE (RFC 3501 §6.4.5, §6.4.6): parsing the data items, and
writing the responses.

Rules:

 - A FETCH that asks only for UID, FLAGS, RFC822.SIZE and INTERNALDATE is
   answered from the folder's index, without opening a message file; any
   other item reads the message once, and structure (ENVELOPE,
   BODYSTRUCTURE, sections) is parsed only then (L{message.Part}). The
   ENVELOPE, BODYSTRUCTURE and BODY of the last L{STRUCTURE_CACHE}
   messages asked for are remembered for every session (per folder,
   message key and UTF-8 view), so asking again reads nothing.
 - Responses are written by L{ResponseStream}, a push producer, so a FETCH
   of 100,000 messages goes out at the speed of the socket without holding
   them all in memory; commands that arrive meanwhile wait, unread.
 - A non-PEEK body section sets C{\\Seen} (unless the folder was opened
   with EXAMINE) and the response then carries the new FLAGS.
 - STORE answers with the new flags of each message unless C{.SILENT}.
"""

from __future__ import annotations

import itertools
import re
import weakref
from typing import Any, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.mail import imap4
from zope.interface import implementer

from twisted_mailhub.heap import after_walk
from twisted_mailhub.imap import contexts
from twisted_mailhub.imap.binary import UnknownCTE, binary_field
from twisted_mailhub.imap.condstore import has_modseqs, modseq_value, split_modifiers, uid_set_text, vanished_earlier
from twisted_mailhub.imap.message import Part
from twisted_mailhub.imap.utf8 import shown_sizes
from twisted_mailhub.imap.view import SelectedFolder
from twisted_mailhub.offload import DetachedBodies, in_thread, read_in_thread
from twisted_mailhub.imap.wire import client_flags, client_text, flags_text, internal_date_text, is_field_name, shown
from twisted_mailhub.store.base import set_flags_later
from twisted_mailhub.store.interfaces import SEEN, NoSuchMessage, StoreError, StoreUnavailable

log = Logger()

# A BODY[] / RFC822 of a message this big (octets) is read and sent in
# slices of STREAM_SLICE rather than read whole.
STREAM_OVER = 1024 * 1024
STREAM_SLICE = 256 * 1024

# ENVELOPE, BODYSTRUCTURE and BODY of recently fetched messages: a stored
# message never changes, and reading and parsing it costs ~100 µs (Dovecot
# keeps these in its index cache). Shared by every session; bounded, the
# oldest entry goes first.
# (Entries: 2,048 were fewer than a big folder's messages, and FETCH 1:*
# (ENVELOPE) of 20,000 read and parsed every message every time.)
STRUCTURE_CACHE = 100000
# ...and at most this many octets of them in all, each counted with
# STRUCTURE_ENTRY_COST for its key and the dict's slot (a BODYSTRUCTURE of
# a 10,000-part message is about 1 MB: 2,048 of them were 2 GB).
STRUCTURE_CACHE_BYTES = 32 * 1024 * 1024
STRUCTURE_ENTRY_COST = 200
_STRUCTURE_KINDS = frozenset({b"ENVELOPE", b"BODYSTRUCTURE", b"BODY"})
_structures: dict[tuple, bytes] = {}
_structure_bytes = [0]
_folder_tokens: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()
_next_token = itertools.count(1)


def _folder_token(folder: Any) -> int | None:
    """A number for C{folder} never given to another folder object (None: not cacheable)."""
    try:
        token = _folder_tokens.get(folder)
        if token is None:
            token = _folder_tokens[folder] = next(_next_token)
        return token
    except TypeError:
        return None


def _remember(key: tuple, value: bytes) -> None:
    """Keep C{value} for C{key} (the oldest entries go while there are more than L{STRUCTURE_CACHE} or their octets are over L{STRUCTURE_CACHE_BYTES})."""
    cost = len(value) + STRUCTURE_ENTRY_COST
    if cost > STRUCTURE_CACHE_BYTES // 4:
        return
    old = _structures.pop(key, None)
    if old is not None:
        _structure_bytes[0] -= len(old) + STRUCTURE_ENTRY_COST
    while _structures and (len(_structures) >= STRUCTURE_CACHE or _structure_bytes[0] + cost > STRUCTURE_CACHE_BYTES):
        _structure_bytes[0] -= len(_structures.pop(next(iter(_structures)))) + STRUCTURE_ENTRY_COST
    _structures[key] = value
    _structure_bytes[0] += cost


def _structure_siblings(items: "list[FetchItem]") -> "list[FetchItem]":
    """
    C{items} and, when one of them asks for a structure (ENVELOPE,
    BODYSTRUCTURE, BODY), the others of those three: made from the same
    parse of the message (the parse is the cost: 0.7 s of CPU for 43 MB)
    and kept for the next FETCH that asks for them.
    """
    kinds = {item.kind for item in items}
    if not kinds & _STRUCTURE_KINDS:
        return items
    return items + [FetchItem(kind) for kind in (b"ENVELOPE", b"BODYSTRUCTURE", b"BODY") if kind not in kinds]


# A message is taken apart in a parsing thread (L{twisted_mailhub.offload})
# when it has more than this many lines that may start a MIME boundary
# ("--"), or more than PARSE_OFF_REACTOR_OVER octets: a 3,000-part message
# (320 KB) held the reactor 0.4 s for its BODYSTRUCTURE, every other client
# of the hub waiting. Below that, parsing (well under 10 ms) is cheaper in
# the reactor than the trip to a thread and back.
PARSE_OFF_REACTOR_PARTS = 64
PARSE_OFF_REACTOR_OVER = 1024 * 1024


def costly_to_parse(raw: bytes) -> bool:
    """
    Whether taking C{raw} apart (MIME parts, decoding) may hold the
    reactor for long: many boundary-like lines, or many octets. Counts
    with C{bytes.count}: ~0.2 ms for 320 KB.
    """
    return len(raw) > PARSE_OFF_REACTOR_OVER or raw.count(b"\n--") > PARSE_OFF_REACTOR_PARTS


def _part_field(part: Part, item: "FetchItem") -> Any:
    """
    The FETCH response field for C{item} that needs the message's
    structure: C{b"NAME value"}, or C{(label, octets)} for a literal (see
    L{described}). Raises L{UnknownCTE} for a BINARY of a part that cannot
    be decoded.
    """
    kind = item.kind
    if kind == b"ENVELOPE":
        return b"ENVELOPE " + part.envelope()
    if kind == b"BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + part.bodystructure(True)
    if kind == b"BODY":
        return b"BODY " + part.bodystructure(False)
    if kind == b"RFC822.HEADER":
        return (b"RFC822.HEADER", part.header)
    if kind == b"RFC822.TEXT":
        return (b"RFC822.TEXT", part.body)
    if kind in (b"BINARY", b"BINARY.SIZE"):
        return binary_field(part, item)
    data = section_bytes(part, item)
    if item.partial is not None:
        start, length = item.partial
        data = data[start : start + length]
    return (item.label, data)


def parsed_fields(raw: bytes, items: "list[FetchItem]") -> list:
    """
    The fields of C{items} (L{_part_field}) for the message C{raw}, in
    order: what a parsing thread makes for a message L{costly_to_parse}.
    Touches nothing but C{raw}.
    """
    part = Part(raw)
    return [_part_field(part, item) for item in items]


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
        return (self.kind in (b"SECTION", b"BINARY") and not self.peek) or self.kind in (b"RFC822", b"RFC822.TEXT")


_SIMPLE_ITEMS = {b"MODSEQ", b"UID", b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE", b"BODY", b"RFC822", b"RFC822.HEADER", b"RFC822.TEXT"}
_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}
_ITEM = re.compile(rb"(BODY\.PEEK|BODY|BINARY\.PEEK|BINARY\.SIZE|BINARY)\[([^\]]*)\](?:<(\d+)\.(\d+)>)?|([A-Za-z0-9.]+)", re.I)
_BINARY_SECTION = re.compile(rb"\A\s*((?:[1-9]\d*\.)*[1-9]\d*)?\s*\Z")
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
            raise imap4.IllegalClientResponse("bad FETCH item at " + shown(text[pos:], 20))
        pos = m.end()
        if m.group(5):
            name = m.group(5).upper()
            if name in _MACROS:
                items.extend(FetchItem(n) for n in _MACROS[name])
            elif name in _SIMPLE_ITEMS:
                items.append(FetchItem(name))
            else:
                raise imap4.IllegalClientResponse("unknown FETCH item " + shown(name, 30))
            continue
        if m.group(1).upper().startswith(b"BINARY"):
            items.append(_binary_item(m))  # RFC 3516, imap/binary.py
            continue
        peek = m.group(1).upper() == b"BODY.PEEK"
        s = _SECTION.match(m.group(2).strip())
        if not s:
            raise imap4.IllegalClientResponse("bad section " + shown(b"[" + m.group(2) + b"]", 40))
        numbers = [int(n) for n in s.group(1).split(b".")] if s.group(1) else []
        if any(n < 1 for n in numbers):
            raise imap4.IllegalClientResponse("section numbers start at 1")
        spec = (s.group(2) or b"").upper()
        fields = s.group(3)
        if spec.startswith(b"HEADER.FIELDS"):
            if fields is None or not fields.strip():
                raise imap4.IllegalClientResponse(f"{spec.decode()} wants a list of field names, e.g. (From Subject)")
            field_list = [f.strip(b'"') for f in fields.split()]
            for f in field_list:
                if not is_field_name(f):
                    # Never echoed raw in the FETCH response's label: no
                    # header field could have such a name.
                    raise imap4.IllegalClientResponse(
                        "a header field name is printable US-ASCII without ':' (RFC 5322 section 3.6.8): " + shown(f, 30)
                    )
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


def _binary_item(m: re.Match) -> FetchItem:
    """BINARY[...]<partial>, BINARY.PEEK[...] or BINARY.SIZE[...] (RFC 3516 §4.1): part numbers only."""
    name = m.group(1).upper()
    s = _BINARY_SECTION.match(m.group(2))
    if not s:
        raise imap4.IllegalClientResponse(name.decode() + " takes part numbers only, e.g. BINARY[1.2] (RFC 3516)")
    numbers = [int(n) for n in s.group(1).split(b".")] if s.group(1) else []
    section = b".".join(b"%d" % n for n in numbers)
    if name == b"BINARY.SIZE":
        if m.group(3) is not None:
            raise imap4.IllegalClientResponse("BINARY.SIZE takes no <partial>")
        return FetchItem(b"BINARY.SIZE", numbers, label=b"BINARY.SIZE[" + section + b"]")
    partial = None
    label = b"BINARY[" + section + b"]"
    if m.group(3) is not None:
        partial = (int(m.group(3)), int(m.group(4)))
        label += b"<%d>" % partial[0]
    return FetchItem(b"BINARY", numbers, partial=partial, peek=name == b"BINARY.PEEK", label=label)


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



def _summary_of(info_of):
    """C{summary(uid)} -> (flags, size, internal date) for a store that has only C{info(uid)}."""

    def summary(uid: int) -> tuple[frozenset, int, float]:
        info = info_of(uid)
        return info.flags, info.size, info.internal_date

    return summary


class _Summary:
    """What FETCH reads of a message from the store's columns (flags, size, internal date): a L{MessageInfo} without its key."""

    __slots__ = ("flags", "size", "internal_date")

    def __init__(self, flags: frozenset, size: int, internal_date: float):
        self.flags = flags
        self.size = size
        self.internal_date = internal_date


def described(seq: int, fields: list) -> tuple[bytes, list[bytes] | None] | bytes:
    """
    The untagged FETCH response of message C{seq} (RFC 3501 §7.4.2) made
    of C{fields}: each an item's octets (C{b"UID 4"}), or a literal as
    (its label, its octets). Returns (the response, the lines the session
    transcript records of it: what L{transcript.Transcriber.server_bytes}
    would make of the octets, without reading them again), or the octets
    alone when a field holds a line end of its own (a literal inside an
    ENVELOPE or BINARY[]): the transcript reads those.
    """
    if len(fields) == 1 and type(fields[0]) is tuple:
        # (FETCH n BODY[] alone: the commonest of these)
        label, data = fields[0]
        n = len(data)
        line = b"* %d FETCH (%s {%d}" % (seq, label, n)
        return b"".join((line, b"\r\n", data, b")\r\n")), [line, b"[literal: %d octets]" % n, b")"] if n else [line, b")"]
    parts: list[bytes] = []
    lines: list[bytes] = []
    line = b"* %d FETCH (" % seq
    plain = True
    for n, field in enumerate(fields):
        if n:
            line += b" "
        if type(field) is tuple:
            label, data = field
            size = len(data)
            line += b"%s {%d}" % (label, size)
            parts += (line, b"\r\n", data)
            lines.append(line)
            if size:
                lines.append(b"[literal: %d octets]" % size)
            line = b""
        else:
            if plain and b"\n" in field:
                plain = False
            line += field
    line += b")"
    parts += (line, b"\r\n")
    data = b"".join(parts)
    if not plain:
        return data
    lines.append(line)
    return data, lines


@implementer(IPushProducer)
class ResponseStream:
    """
    Writes the pieces of a long response as fast as the transport takes
    them, pausing when it says so. A piece is octets, or (octets, their
    transcript lines) for whole responses described by L{described}, or a
    L{Deferred}: what came before it is written, and the next piece is
    asked for once it has fired (a message being parsed in a thread: the
    reactor serves others meanwhile, and the responses keep their order).
    """

    chunk = 256 * 1024

    def __init__(self, transport: Any, pieces: Iterator[bytes], finished: Any):
        self.transport = transport
        self.pieces = pieces
        self.finished = finished
        self.paused = False
        self.running = False
        self.stopped = False
        self.waiting: Any = None  # the Deferred piece not fired yet
        self.record = getattr(transport, "record_responses", None)

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._run()

    def _run(self) -> None:
        if self.running or self.waiting is not None:
            return
        self.running = True
        try:
            buffered: list[bytes] = []
            # The transcript lines of what is buffered, while every piece
            # came with them (None once one came without: its bytes are
            # then read by the transcript, as any write is).
            described: list[bytes] | None = []
            size = 0
            for piece in self.pieces:
                if isinstance(piece, defer.Deferred):
                    if buffered:
                        self._write(b"".join(buffered), described)
                    self.waiting = piece
                    piece.addBoth(self._fired)
                    return
                if type(piece) is tuple:
                    piece, lines = piece
                    if described is not None:
                        described += lines
                else:
                    described = None
                buffered.append(piece)
                size += len(piece)
                if size >= self.chunk:
                    self._write(b"".join(buffered), described)
                    buffered, size, described = [], 0, []
                    if self.paused or self.stopped:
                        return
            if buffered:
                self._write(b"".join(buffered), described)
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

    def _fired(self, result: Any) -> None:
        """The awaited piece fired (its generator holds the result): go on."""
        self.waiting = None
        if not self.paused and not self.stopped:
            self._run()

    def _write(self, data: bytes, described: list[bytes] | None) -> None:
        """C{data}, recorded by the session transcript from C{described} when it can (L{transcript.TranscriptProtocol.record_responses})."""
        transport = self.transport
        if described is not None and self.record is not None:
            transport = self.record(described) or transport
        transport.write(data)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.stopped:
            self._run()

    def stopProducing(self) -> None:
        self.stopped = True


class _TargetUIDs:
    """The UIDs of a FETCH's (seq, uid) targets as a sequence, without a copy (L{DetachedBodies} slices a window of them)."""

    def __init__(self, targets: Any):
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, at: slice) -> list[int]:
        return [uid for _, uid in self.targets[at]]


class FetchCommands:
    """FETCH and STORE, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    # The tagged NO of a FETCH some of whose messages could not be read.
    _fetch_failed: bytes | None = None
    _expunge_issued = False  # a message of the FETCH was expunged by another session (RFC 9051 §7.1)

    def do_FETCH(self, tag, messages, query, uid=0):
        view = self.selected
        try:
            query, modifiers = split_modifiers(query)
            modifiers, partial = contexts.take_partial(modifiers)  # RFC 9394
            items = parse_fetch_items(query)
            targets = view.resolve(messages, bool(uid))
            since, vanished = self._fetch_modifiers(modifiers, bool(uid))
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        if uid and not any(i.kind == b"UID" for i in items):
            items.insert(0, FetchItem(b"UID"))
        kinds = {i.kind for i in items}
        if b"MODSEQ" in kinds or since is not None:
            self.condstore_used()
        if self.condstore and has_modseqs(view.folder) and b"MODSEQ" not in kinds and (b"FLAGS" in kinds or since is not None):
            items.append(FetchItem(b"MODSEQ"))  # RFC 7162 §3.1.4.1
        elif b"MODSEQ" in kinds and not has_modseqs(view.folder):
            self.sendBadResponse(tag, b"this mailbox keeps no MODSEQ")
            return
        if since is not None:
            modseq = view.folder.modseq
            kept = []
            for seq, u in targets:
                try:
                    if modseq(u) > since:
                        kept.append((seq, u))
                except NoSuchMessage:
                    continue
            targets = kept
        if partial is not None:
            targets = contexts.window(targets, partial)
        if vanished:
            self.transport.write(vanished_earlier(view, messages))
        sets_seen = not view.readonly and any(i.sets_seen for i in items)
        pieces = self._fetch_responses(view, targets, items, sets_seen)
        self._unknown_cte = None
        self._fetch_unavailable = self._fetch_failed = None
        walked = len(targets)
        self._expunge_issued = False
        self._stream(pieces, lambda: self._fetch_done(tag, walked))

    def _fetch_done(self, tag: bytes, walked: int = 0) -> None:
        after_walk(walked)  # (the response buffers of FETCH 1:* of a big folder)
        unavailable = getattr(self, "_fetch_unavailable", None)
        if unavailable is not None:
            self._fetch_unavailable = None
            self._store_unavailable(tag, b"FETCH", unavailable)
            return
        if self._fetch_failed is not None:
            self.sendNegativeResponse(tag, self._fetch_failed)
            return
        if self._unknown_cte is not None:
            name = client_text(shown(self._unknown_cte, 30))
            self.sendNegativeResponse(tag, b"[UNKNOWN-CTE] a part's Content-Transfer-Encoding " + name + b" cannot be decoded; use BODY[] for it")
            return
        if self._expunge_issued:
            # RFC 9051 §7.1 (as Dovecot): messages expunged by another
            # session were left out; the client learns which at its NOOP.
            self.sendPositiveResponse(tag, b"[EXPUNGEISSUED] FETCH completed; some messages were expunged meanwhile")
            return
        self.sendPositiveResponse(tag, b"FETCH completed")

    def _fetch_modifiers(self, modifiers: list, uid: bool) -> tuple[int | None, bool]:
        """(CHANGEDSINCE value or None, VANISHED) of FETCH's modifiers (RFC 7162 §3.1.4, §3.2.6)."""
        since = None
        vanished = False
        i = 0
        while i < len(modifiers):
            word = modifiers[i].upper() if isinstance(modifiers[i], bytes) else b""
            if word == b"CHANGEDSINCE" and i + 1 < len(modifiers) and has_modseqs(self.selected.folder):
                since = modseq_value(modifiers[i + 1], "CHANGEDSINCE")
                i += 2
            elif word == b"VANISHED" and self.qresync:
                if not uid:
                    raise imap4.IllegalClientResponse("VANISHED goes with UID FETCH only (RFC 7162 section 3.2.6)")
                vanished = True
                i += 1
            else:
                raise imap4.IllegalClientResponse("unknown FETCH modifier: use CHANGEDSINCE n [VANISHED]")
        if vanished and since is None:
            raise imap4.IllegalClientResponse("VANISHED needs CHANGEDSINCE")
        return since, vanished

    select_FETCH = (do_FETCH, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_line)

    def _fetch_responses(self, view: SelectedFolder, targets, items, sets_seen, offload: bool = True) -> Iterator[bytes]:
        """
        The FETCH responses of C{targets} ((seq, uid) pairs), one piece at
        a time for L{ResponseStream}. With C{offload}, a message
        L{costly_to_parse} whose items need its structure is taken apart
        in a parsing thread: the piece is then a L{Deferred}, and the next
        piece is asked for once it fired.
        """
        folder = view.folder
        info_of = folder.info
        recent = view.recent
        kinds = [i.kind for i in items]
        cheap = {b"UID", b"FLAGS", b"RFC822.SIZE", b"INTERNALDATE", b"MODSEQ"}
        modseq = getattr(folder, "modseq", None)
        if kinds == [b"UID", b"FLAGS"] or kinds == [b"FLAGS"] or kinds == [b"UID", b"FLAGS", b"MODSEQ"]:
            # The commonest (a client's resync): one format per message, and
            # the responses given on in runs of a few hundred.
            with_uid = kinds[0] == b"UID"
            with_modseq = kinds[-1] == b"MODSEQ"
            summary = getattr(folder, "summary", None) or _summary_of(info_of)  # (the columns: no MessageInfo)
            run: list[bytes] = []
            for seq, uid in targets:
                try:
                    flags = summary(uid)[0]
                except NoSuchMessage:
                    self._expunge_issued = True
                    continue
                if with_modseq:
                    run.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, flags_text(flags, uid in recent), modseq(uid)))
                elif with_uid:
                    run.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, flags_text(flags, uid in recent)))
                else:
                    run.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, flags_text(flags, uid in recent)))
                if len(run) == 512:
                    yield b"".join(run)
                    run = []
            if run:
                yield b"".join(run)
            return
        # imap/utf8.py: UID -> size as downgraded, for a session without UTF8=ACCEPT (usually empty)
        try:
            ascii_sizes = shown_sizes(folder) if not self.utf8_accept and b"RFC822.SIZE" in kinds else None
        except StoreUnavailable as e:
            # (PostgreSQL keeps them in its rows) NO [UNAVAILABLE], as for a body
            self._fetch_unavailable = e
            return
        if all(k in cheap for k in kinds):
            # The fast path: the index alone (SELECT + FETCH 1:* of 100k),
            # read from the store's columns where it has them (no
            # MessageInfo made, none kept).
            summary = getattr(folder, "summary", None) or _summary_of(info_of)
            for seq, uid in targets:
                try:
                    flags, size, date = summary(uid)
                except NoSuchMessage:
                    self._expunge_issued = True
                    continue
                fields = []
                for kind in kinds:
                    if kind == b"UID":
                        fields.append(b"UID %d" % uid)
                    elif kind == b"FLAGS":
                        fields.append(b"FLAGS " + flags_text(flags, uid in recent))
                    elif kind == b"RFC822.SIZE":
                        fields.append(b"RFC822.SIZE %d" % (ascii_sizes.get(uid, size) if ascii_sizes else size))
                    elif kind == b"MODSEQ":
                        fields.append(b"MODSEQ (%d)" % modseq(uid))
                    else:
                        fields.append(b"INTERNALDATE " + internal_date_text(date))
                yield b"* %d FETCH (%s)\r\n" % (seq, b" ".join(fields))
            return
        # BODY[] / RFC822 of a big message, with nothing that needs its
        # structure: sent in slices from folder.open(), never held whole.
        whole = {id(i) for i in items if i.kind == b"RFC822" or (i.kind == b"SECTION" and not i.numbers and i.spec == b"")}
        streamable = bool(whole) and all(i.kind in cheap or id(i) in whole for i in items)
        token = _folder_token(folder) if any(k in _STRUCTURE_KINDS for k in kinds) else None
        utf8 = self.utf8_accept
        if streamable and ascii_sizes is None and not self.utf8_accept:
            try:
                ascii_sizes = shown_sizes(folder)  # those are downgraded whole, not streamed
            except StoreUnavailable as e:
                self._fetch_unavailable = e
                return
        # Without ENVELOPE/BODYSTRUCTURE/BODY (whose cache is keyed by the
        # message's key), the columns give flags, size and date: no
        # MessageInfo made per message.
        summary = getattr(folder, "summary", None) if token is None else None
        # A store that reads on connections of its own in a thread
        # (PostgreSQL): the bodies are read there, the next ones with
        # each round trip, never in the reactor (made at the first body).
        detached = offload and DetachedBodies.possible(folder)
        bodies: DetachedBodies | None = None
        for position, (seq, uid) in enumerate(targets):
            if detached and bodies is None:
                bodies = DetachedBodies(folder, _TargetUIDs(targets))
            try:
                if summary is not None:
                    info = _Summary(*summary(uid))
                else:
                    info = info_of(uid)
                raw = None
                part = None
                flags_changed = False
                if sets_seen and SEEN not in info.flags:
                    folder.set_flags([uid], [SEEN], "add", origin=self)
                    info = _Summary(*summary(uid)) if summary is not None else info_of(uid)
                    flags_changed = True
                if streamable and info.size >= STREAM_OVER and not (ascii_sizes and uid in ascii_sizes):
                    yield from self._streamed(folder, seq, uid, info, items, whole, recent, flags_changed, modseq, bodies, position)
                    continue
                ready = None
                if offload:
                    heavy = [
                        item for item in items
                        if item.kind not in cheap and item.kind != b"RFC822" and id(item) not in whole
                        and not (item.kind in _STRUCTURE_KINDS and token is not None and (token, info.key, info.size, item.kind, utf8) in _structures)
                    ]
                    if heavy and any(i.kind != b"ENVELOPE" and i.kind != b"RFC822.HEADER" for i in heavy):
                        raw = yield from self._whole_message(folder, uid, info.size, bodies, position)  # imap/utf8.py
                        if costly_to_parse(raw):
                            outcome: list = []
                            if token is not None:
                                heavy = _structure_siblings(heavy)
                            waited = in_thread(parsed_fields, raw, heavy)
                            waited.addBoth(outcome.append)
                            yield waited
                            if isinstance(outcome[0], Failure):
                                outcome[0].raiseException()
                            ready = {id(item): field for item, field in zip(heavy, outcome[0])}
                            if token is not None:
                                for item in heavy:
                                    if item.kind in _STRUCTURE_KINDS:
                                        _remember((token, info.key, info.size, item.kind, utf8), ready[id(item)][len(item.kind) + 1 :])
                fields: list = []
                for item in items:
                    kind = item.kind
                    if ready is not None and id(item) in ready:
                        fields.append(ready[id(item)])
                        continue
                    if kind == b"UID":
                        fields.append(b"UID %d" % uid)
                    elif kind == b"FLAGS":
                        fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
                    elif kind == b"RFC822.SIZE":
                        fields.append(b"RFC822.SIZE %d" % (ascii_sizes.get(uid, info.size) if ascii_sizes else info.size))
                    elif kind == b"INTERNALDATE":
                        fields.append(b"INTERNALDATE " + internal_date_text(info.internal_date))
                    elif kind == b"MODSEQ":
                        fields.append(b"MODSEQ (%d)" % modseq(uid))
                    else:
                        if kind in _STRUCTURE_KINDS and token is not None:
                            remembered = (token, info.key, info.size, kind, utf8)
                            value = _structures.get(remembered)
                            if value is None:
                                if part is None:
                                    if raw is None:
                                        raw = yield from self._whole_message(folder, uid, info.size, bodies, position)  # imap/utf8.py
                                    part = Part(raw)
                                value = part.envelope() if kind == b"ENVELOPE" else part.bodystructure(kind == b"BODYSTRUCTURE")
                                _remember(remembered, value)
                            fields.append(kind + b" " + value)
                            continue
                        if raw is None:
                            raw = yield from self._whole_message(folder, uid, info.size, bodies, position)  # imap/utf8.py
                        # (a literal: (its label, its octets); see described())
                        if kind == b"RFC822":
                            fields.append((b"RFC822", raw))
                            continue
                        if kind == b"SECTION" and not item.numbers and item.spec == b"" and item.partial is None:
                            fields.append((b"BODY[]", raw))
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
                            fields.append((b"RFC822.HEADER", part.header))
                        elif kind == b"RFC822.TEXT":
                            fields.append((b"RFC822.TEXT", part.body))
                        elif kind in (b"BINARY", b"BINARY.SIZE"):
                            fields.append(binary_field(part, item))
                        else:
                            data = section_bytes(part, item)
                            if item.partial is not None:
                                start, length = item.partial
                                data = data[start : start + length]
                            fields.append((item.label, data))
                if flags_changed and b"FLAGS" not in kinds:
                    fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
                    if self.condstore and modseq is not None and b"MODSEQ" not in kinds:
                        fields.append(b"MODSEQ (%d)" % modseq(uid))
            except NoSuchMessage:
                self._expunge_issued = True  # expunged by another session; told at the next chance
                continue
            except UnknownCTE as e:
                # RFC 3516 §4.3: this message's response is left out and
                # the command ends NO [UNKNOWN-CTE].
                self._unknown_cte = e.name
                continue
            except StoreUnavailable as e:
                # The rest would fail alike: the command ends NO [UNAVAILABLE].
                self._fetch_unavailable = e
                return
            except (OSError, StoreError):
                log.failure("FETCH of UID {uid} in {folder} failed", uid=uid, folder=folder.name)
                # Never OK with a message left out (breaker).
                self._fetch_failed = self._fetch_failed or b"[SERVERBUG] some messages could not be read; see the server log"
                continue
            yield described(seq, fields)


    def _whole_message(self, folder: Any, uid: int, size: int, bodies: DetachedBodies | None = None, position: int = 0):
        """
        (a generator, for C{yield from} in a FETCH's) Message C{uid} of
        C{folder} as this session sees it (L{message_view}). One of
        L{STREAM_OVER} octets or more that the store keeps in a file is
        read in a parsing thread (the Deferred is yielded): a 46 MB
        message's BODYSTRUCTURE, ENVELOPE or part was read whole in the
        reactor first, every other client waiting. With C{bodies} (the
        FETCH's L{DetachedBodies}; C{position}: the message's place in
        it), any message is read in a parsing thread, or taken from what
        the last read there brought.
        """
        if bodies is not None and size < STREAM_OVER:
            got = bodies.whole(position)
            if isinstance(got, defer.Deferred):
                outcome: list = []
                got.addBoth(outcome.append)
                yield got
                if isinstance(outcome[0], Failure):
                    outcome[0].raiseException()
                got = outcome[0]
            return self.message_view(got)
        if size >= STREAM_OVER:
            waited = read_in_thread(folder, uid, in_thread)  # (Maildir's file, PostgreSQL's blob)
            if waited is not None:
                outcome: list = []
                waited.addBoth(outcome.append)
                yield waited
                if isinstance(outcome[0], Failure):
                    outcome[0].raiseException()
                return self.message_view(outcome[0])
        return self.message_view(folder.read(uid))

    def _streamed(self, folder, seq, uid, info, items, whole, recent, flags_changed, modseq, bodies=None, position=0) -> Iterator[bytes]:
        """
        One FETCH response whose BODY[] / RFC822 literals are read from
        C{folder.open(uid)} in slices as the client takes them (a 25 MB
        message is never held whole; pgstore lane). With C{bodies} (a
        L{DetachedBodies}), each slice is read in a parsing thread (the
        Deferred is yielded). A database lost after a literal began: the
        literal is filled (its length was promised) and the FETCH ends
        NO [UNAVAILABLE].
        """
        if bodies is not None:
            yield from self._streamed_detached(seq, uid, info, items, whole, recent, flags_changed, modseq, bodies, position)
            return
        fields = self._streamed_fields(uid, info, items, whole, recent, flags_changed, modseq)
        head = b"* %d FETCH (" % seq + b" ".join(fields)
        yield from self._streamed_literals(folder, uid, items, whole, fields, head)

    def _streamed_fields(self, uid, info, items, whole, recent, flags_changed, modseq) -> list[bytes]:
        """The fields of a streamed FETCH response other than its BODY[] / RFC822 literals."""
        fields = []
        for item in items:
            if id(item) in whole:
                continue
            kind = item.kind
            if kind == b"UID":
                fields.append(b"UID %d" % uid)
            elif kind == b"FLAGS":
                fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
            elif kind == b"RFC822.SIZE":
                fields.append(b"RFC822.SIZE %d" % info.size)
            elif kind == b"INTERNALDATE":
                fields.append(b"INTERNALDATE " + internal_date_text(info.internal_date))
            elif kind == b"MODSEQ":
                fields.append(b"MODSEQ (%d)" % modseq(uid))
        if flags_changed and not any(i.kind == b"FLAGS" for i in items):
            fields.append(b"FLAGS " + flags_text(info.flags, uid in recent))
        return fields

    def _streamed_literals(self, folder, uid, items, whole, fields, head) -> Iterator[bytes]:
        """The literals of L{_streamed} read from C{folder.open(uid)}, after C{head}."""
        for n, item in enumerate(i for i in items if id(i) in whole):
            with folder.open(uid) as f:
                size = f.seek(0, 2)
                start = 0
                if item.partial is not None:
                    # BODY[]<start.length>: a client taking a big message
                    # in pieces reads only each piece (RFC 3501 §6.4.5).
                    start = min(item.partial[0], size)
                    size = min(item.partial[1], size - start)
                f.seek(start)
                label = b"RFC822" if item.kind == b"RFC822" else (item.label if item.partial is not None else b"BODY[]")
                yield head + (b" " if fields or n else b"") + label + b" {%d}\r\n" % size
                head = b""
                left = size
                while left > 0:
                    try:
                        data = f.read(min(STREAM_SLICE, left))
                    except (OSError, StoreError):
                        log.failure("FETCH of UID {uid} in {folder} failed after its literal began", uid=uid, folder=folder.name)
                        data = b""
                    if not data:
                        # Gone or shorter under us: the literal's length
                        # was promised, so it is filled, and the command
                        # ends NO, not OK over a body of blanks (breaker).
                        data = b" " * min(STREAM_SLICE, left)
                        self._fetch_failed = self._fetch_failed or b"[SERVERBUG] a message changed or could not be read while it was sent; fetch it again"
                    left -= len(data)
                    yield data
        yield b")\r\n"

    def _streamed_detached(self, seq, uid, info, items, whole, recent, flags_changed, modseq, bodies, position) -> Iterator[Any]:
        """L{_streamed} for a store read in a thread: each slice is a Deferred yielded, then its octets."""
        folder = bodies.folder
        fields = self._streamed_fields(uid, info, items, whole, recent, flags_changed, modseq)
        head = b"* %d FETCH (" % seq + b" ".join(fields)
        whole_size = bodies.size(position)
        for n, item in enumerate(i for i in items if id(i) in whole):
            size = whole_size
            start = 0
            if item.partial is not None:
                start = min(item.partial[0], size)
                size = min(item.partial[1], size - start)
            label = b"RFC822" if item.kind == b"RFC822" else (item.label if item.partial is not None else b"BODY[]")
            yield head + (b" " if fields or n else b"") + label + b" {%d}\r\n" % size
            head = b""
            at, left = start, size
            while left > 0:
                data = b""
                if getattr(self, "_fetch_unavailable", None) is None:
                    waited = bodies.slice(position, at, min(STREAM_SLICE, left))
                    outcome: list = []
                    waited.addBoth(outcome.append)
                    yield waited
                    if isinstance(outcome[0], Failure):
                        if outcome[0].check(StoreUnavailable):
                            self._fetch_unavailable = outcome[0].value
                        else:
                            if not outcome[0].check(NoSuchMessage):
                                log.failure("FETCH of UID {uid} in {folder} failed after its literal began", outcome[0], uid=uid, folder=folder.name)
                            self._fetch_failed = self._fetch_failed or b"[SERVERBUG] a message changed or could not be read while it was sent; fetch it again"
                    else:
                        data = outcome[0]
                if not data:
                    # (as _streamed: the promised length is filled, and the
                    # command does not end OK)
                    data = b" " * min(STREAM_SLICE, left)
                    if getattr(self, "_fetch_unavailable", None) is None:
                        self._fetch_failed = self._fetch_failed or b"[SERVERBUG] a message changed or could not be read while it was sent; fetch it again"
                else:
                    data = data[:left]
                at += len(data)
                left -= len(data)
                yield data
        yield b")\r\n"

    def do_STORE(self, tag, messages, line, uid=0):
        view = self.selected
        try:
            unchanged_since, mode, flags = self._store_arguments(line)
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
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
            self.sendBadResponse(tag, client_text(str(e)))
            return
        seq_of = dict((u, s) for s, u in targets)
        uids = [u for _, u in targets]
        modified: list[int] = []
        if unchanged_since is not None:
            # RFC 7162 §3.1.3: a message changed since then is left alone.
            self.condstore_used()
            kept = []
            for u in uids:
                try:
                    (modified if view.folder.modseq(u) > unchanged_since else kept).append(u)
                except NoSuchMessage:
                    continue
            uids = kept
        before = {u: view.folder.modseq(u) for u in uids} if silent and self.condstore and has_modseqs(view.folder) else {}

        def stored(result: dict) -> None:
            if self.transport is None or self.selected is not view:
                return  # (the connection or the mailbox went meanwhile)
            lines = []
            if any([view.note_keywords(f) for f in result.values()]):
                lines.extend(view.flag_lines())
            for u in sorted(result):
                prefix = b"* %d FETCH (" % seq_of[u] + (b"UID %d " % u if uid else b"")
                if not silent:
                    lines.append(prefix + b"FLAGS " + flags_text(result[u], u in view.recent) + view.modseq_text(u) + b")\r\n")
                elif before and view.folder.modseq(u) != before[u]:
                    # .SILENT still tells the new MODSEQ (RFC 7162 §3.1.3)
                    lines.append(prefix + view.modseq_text(u).strip() + b")\r\n")
            self.write_lines(lines)
            if modified:
                numbers = modified if uid else [seq_of[u] for u in modified]
                self.sendPositiveResponse(tag, b"[MODIFIED " + uid_set_text(numbers) + b"] conditional STORE failed for some messages")
                return
            self.sendPositiveResponse(tag, b"STORE completed")

        # The tagged OK once the change is committed (PostgreSQL: in a
        # worker thread, store.base.set_flags_later); the session reads no
        # further command meanwhile, other sessions are served.
        self._in_store_command(set_flags_later(view.folder, uids, flags, how, origin=self), stored, tag, b"STORE")

    def _store_arguments(self, line: bytes) -> tuple[int | None, bytes, list]:
        """STORE's [(UNCHANGEDSINCE n)] mode flag-list (RFC 3501 §6.4.6, RFC 7162 §3.1.3); the flags checked by L{client_flags}."""
        line = line.strip()
        unchanged_since = None
        if line.startswith(b"("):
            end = line.find(b")")
            if end < 0:
                raise imap4.IllegalClientResponse("STORE modifiers: missing ')'")
            words = line[1:end].split()
            line = line[end + 1 :].strip()
            if len(words) != 2 or words[0].upper() != b"UNCHANGEDSINCE" or not has_modseqs(self.selected.folder):
                raise imap4.IllegalClientResponse("unknown STORE modifier: use (UNCHANGEDSINCE n)")
            unchanged_since = modseq_value(words[1], "UNCHANGEDSINCE")
        mode, _, rest = line.partition(b" ")
        if not mode or not rest.strip():
            raise imap4.IllegalClientResponse("STORE wants FLAGS, +FLAGS or -FLAGS (with .SILENT), then a flag list")
        flags, extra = imap4.IMAP4Server.arg_flaglist(self, rest.strip())
        if extra.strip():
            raise imap4.IllegalClientResponse("STORE: unexpected text after the flag list")
        return unchanged_since, mode, client_flags(flags, "STORE")

    select_STORE = (do_STORE, imap4.IMAP4Server.arg_seqset, imap4.IMAP4Server.arg_line)
