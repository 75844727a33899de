# -*- test-case-name: tests.test_e2e_imap_extensions -*-
"""
SORT and THREAD (RFC 5256): the messages a SEARCH would find, ordered by
criteria, or grouped into conversations.

Rules:

 - The base subject (§2.1) drops encoded-word wrapping, C{Re:}/C{Fwd:}
   prefixes with their C{[blob]}s, a trailing C{(fwd)} and C{[Fwd: ...]}
   wrapping, and compares case-insensitively. A subject that lost a prefix
   marks a reply (used by THREAD=REFERENCES to group roots).
 - The sent date is the Date header in UTC; a missing or broken one is the
   internal date (§2.2). Ties are broken by sequence number (§3).
 - FROM, TO and CC sort on the first address's mailbox (local part).
 - THREAD=ORDEREDSUBJECT: one thread per base subject, ordered by the date
   of its first message; its other messages are children of the first.
 - THREAD=REFERENCES: the algorithm of §3 (Message-ID, References,
   In-Reply-To; dummies for messages not present; roots grouped by base
   subject; siblings sorted by sent date).
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
import re
from typing import Any, Callable

from twisted.logger import Logger
from twisted.mail import imap4

from twisted_mailhub.imap import contexts
from twisted_mailhub.imap.address import Mailbox, parse_address_list
from twisted_mailhub.imap.message import has_broken_base64_word
from twisted_mailhub.imap.search import BadSearch, Candidate, HeaderCache, _astrings, compile_search, fields_cached, match_in_thread, must_read, reads_detached, reads_messages
from twisted_mailhub.imap.wire import client_text
from twisted_mailhub.store.interfaces import NoSuchMessage, StoreUnavailable

log = Logger()

CAPABILITIES = (b"SORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES")
_CRITERIA = {b"ARRIVAL", b"CC", b"DATE", b"FROM", b"SIZE", b"SUBJECT", b"TO"}
_SORT_FIELDS = {b"CC": "cc", b"DATE": "date", b"FROM": "from", b"SUBJECT": "subject", b"TO": "to"}  # the header field each reads
_LEADER = re.compile(r"^(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\[\]]*\]\s*)*:\s*", re.I)
_BLOB = re.compile(r"^\[[^\[\]]*\]\s*")
_TRAILER = re.compile(r"\s*\(fwd\)\s*$", re.I)
_MSGID = re.compile(r"<[^<>\s]+>")


def base_subject(raw: str) -> tuple[str, bool]:
    """(base subject, whether it was a reply or forward) per RFC 5256 §2.1."""
    try:
        if has_broken_base64_word(raw):
            raise email.errors.HeaderParseError("not base64")
        text = str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        text = raw  # (an encoded word with broken base64: sorted as sent)
    text = " ".join(text.split())
    reply = False
    while True:
        before = text
        while True:
            stripped = _TRAILER.sub("", text)
            if stripped == text:
                break
            text, reply = stripped, True
        while True:
            m = _LEADER.match(text)
            if m:
                text, reply = text[m.end() :], True
                continue
            m = _BLOB.match(text)
            if m and text[m.end() :]:
                text = text[m.end() :]
                continue
            break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, reply = text[5:-1].strip(), True
        if text == before:
            break
    return text.lower(), reply


class _Message:
    __slots__ = ("number", "seq", "candidate", "_subject", "_date")

    def __init__(self, number: int, seq: int, candidate: Candidate):
        self.number = number
        self.seq = seq
        self.candidate = candidate
        self._subject = None
        self._date = None

    def header(self, name: str) -> str:
        return self.candidate.header_value(name).decode("utf-8", "replace")

    @property
    def subject(self) -> tuple[str, bool]:
        if self._subject is None:
            self._subject = base_subject(self.header("subject"))
        return self._subject

    @property
    def date(self) -> float:
        if self._date is None:
            value = self.header("date")
            try:
                self._date = email.utils.parsedate_to_datetime(value).timestamp() if value else None
            except (TypeError, ValueError, IndexError, OverflowError):
                self._date = None
            if self._date is None:
                self._date = self.candidate.info.internal_date
        return self._date

    def first_mailbox(self, name: str) -> str:
        for item in parse_address_list(self.header(name)):
            if isinstance(item, Mailbox):
                return item.local.lower()
        return ""


def _key(message: _Message, criterion: bytes) -> Any:
    if criterion == b"ARRIVAL":
        return message.candidate.info.internal_date
    if criterion == b"DATE":
        return message.date
    if criterion == b"SIZE":
        return message.candidate.info.size
    if criterion == b"SUBJECT":
        return message.subject[0]
    return message.first_mailbox(criterion.decode().lower())


def sort_messages(messages: list[_Message], criteria: list[tuple[bytes, bool]]) -> list[_Message]:
    ordered = sorted(messages, key=lambda m: m.seq)  # the final tie-breaker
    for criterion, reverse in reversed(criteria):
        ordered.sort(key=lambda m: _key(m, criterion), reverse=reverse)
    return ordered


def ordered_uids(view: Any, uids: list[int], criteria: list[tuple[bytes, bool]]) -> list[int]:
    """C{uids} of the selected mailbox C{view} in the order of SORT C{criteria} (for live ESORT contexts)."""
    folder = view.folder
    cache = HeaderCache.of(folder)
    messages = []
    for u in uids:
        seq = view.seq_of(u)
        try:
            messages.append(_Message(u, seq, Candidate(seq, folder.info(u), u in view.recent, folder, cache)))
        except NoSuchMessage:
            continue
    return [m.number for m in sort_messages(messages, criteria)]


# -- THREAD ---------------------------------------------------------------------------


class _Node:
    __slots__ = ("message", "parent", "children")

    def __init__(self, message: _Message | None = None):
        self.message = message
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def ancestor_of(self, other: "_Node") -> bool:
        node = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False

    def adopt(self, child: "_Node") -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def date(self) -> float:
        if self.message is not None:
            return self.message.date
        return self.children[0].date() if self.children else 0.0

    def seq(self) -> int:
        if self.message is not None:
            return self.message.seq
        return self.children[0].seq() if self.children else 0


def _sort_level(nodes: list[_Node]) -> None:
    for node in nodes:
        _sort_level(node.children)
        node.children.sort(key=lambda n: (n.date(), n.seq()))


def thread_references(messages: list[_Message]) -> list[_Node]:
    """RFC 5256 §3 THREAD=REFERENCES."""
    table: dict[str, _Node] = {}
    for message in sorted(messages, key=lambda m: m.seq):
        ids = _MSGID.findall(message.header("message-id"))
        own = ids[0] if ids else None
        if own is None or (own in table and table[own].message is not None):
            own = "<unique-%d>" % message.seq  # none, or a duplicate
        node = table.get(own) or _Node()
        node.message = message
        table[own] = node
        references = _MSGID.findall(message.header("references"))
        if not references:
            references = _MSGID.findall(message.header("in-reply-to"))[:1]
        previous = None
        for ref in references:
            current = table.setdefault(ref, _Node())
            if previous is not None and current.parent is None and not current.ancestor_of(previous) and current is not previous:
                previous.adopt(current)
            previous = current
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if previous is not None and previous is not node and not node.ancestor_of(previous):
            previous.adopt(node)
    roots = [n for n in table.values() if n.parent is None]
    roots = _prune(roots, top=True)
    _sort_level(roots)
    roots.sort(key=lambda n: (n.date(), n.seq()))
    # Group the roots by base subject (§3 step 5).
    by_subject: dict[str, _Node] = {}
    merged: list[_Node] = []
    for root in roots:
        head = root.message or (root.children[0].message if root.children else None)
        if head is None:
            merged.append(root)
            continue
        subject, _ = head.subject
        if not subject:
            merged.append(root)
            continue
        other = by_subject.get(subject)
        if other is None:
            by_subject[subject] = root
            merged.append(root)
            continue
        if other.message is None and root.message is None:
            for child in list(root.children):
                other.adopt(child)
        elif other.message is None:
            other.adopt(root)
        elif root.message is not None and root.message.subject[1] and not other.message.subject[1]:
            other.adopt(root)
        else:
            dummy = _Node()
            merged[merged.index(other)] = dummy
            dummy.adopt(other)
            dummy.adopt(root)
            by_subject[subject] = dummy
    _sort_level(merged)
    merged.sort(key=lambda n: (n.date(), n.seq()))
    return merged


def _prune(nodes: list[_Node], top: bool = False) -> list[_Node]:
    out: list[_Node] = []
    for node in nodes:
        node.children = _prune(node.children)
        for child in node.children:
            child.parent = node
        if node.message is None:
            if not node.children:
                continue
            if not top or len(node.children) == 1:
                for child in node.children:
                    child.parent = None
                out.extend(node.children)
                continue
        out.append(node)
    return out


def thread_ordered_subject(messages: list[_Message]) -> list[_Node]:
    """RFC 5256 THREAD=ORDEREDSUBJECT."""
    groups: dict[str, list[_Message]] = {}
    for message in sort_messages(messages, [(b"SUBJECT", False), (b"DATE", False)]):
        groups.setdefault(message.subject[0], []).append(message)
    roots = []
    for group in groups.values():
        root = _Node(group[0])
        for message in group[1:]:
            root.adopt(_Node(message))
        roots.append(root)
    roots.sort(key=lambda n: (n.date(), n.seq()))
    return roots


def thread_text(node: _Node) -> bytes:
    """One thread as RFC 5256 §4 writes it: C{(2 3 (4 5)(6))}."""
    return b"(" + _chain(node) + b")"


def _chain(node: _Node) -> bytes:
    out = [b"%d" % node.message.number] if node.message is not None else []
    while len(node.children) == 1:
        node = node.children[0]
        out.append(b"%d" % node.message.number)
    head = b" ".join(out)
    if node.children:
        branches = b"".join(b"(" + _chain(child) + b")" for child in node.children)
        return head + (b" " if head else b"") + branches
    return head


class SortCommands:
    """SORT and THREAD, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def _matching(self, tag: bytes, charset: bytes, query: list, uid: bool, keep: list | None = None) -> list[_Message] | None:
        """The matching messages; C{keep} (a list) is given the predicate."""
        if charset.upper() not in (b"US-ASCII", b"UTF-8"):
            self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] charset not supported")
            return None
        view = self.selected
        try:
            predicate = compile_search(query, len(view.uids), view.uids[-1] if view.uids else 0)
        except BadSearch as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return None
        if keep is not None:
            keep.append(predicate)
        folder = view.folder
        cache = HeaderCache.of(folder)
        found = []
        for seq, u in enumerate(view.uids, 1):
            try:
                candidate = Candidate(seq, folder.info(u), u in view.recent, folder, cache)
                if predicate(candidate):
                    found.append(_Message(u if uid else seq, seq, candidate))
            except (NoSuchMessage, FileNotFoundError):
                continue
        return found

    def _matching_then(
        self, tag: bytes, charset: bytes, query: list, uid: bool, then: Callable[[list], None], keep: list | None = None, fields: tuple = ()
    ) -> None:
        """
        L{_matching}, then C{then(found)}. Keys that read messages
        (L{must_read}), or header C{fields} (the order's, lowered names)
        the header cache does not hold, over a store that keeps files: the
        files are read in a worker thread (L{match_in_thread}), the fields
        of the messages found too; this session reads no further command
        meanwhile, and the other sessions are served.
        """
        if getattr(self, "utf8_accept", False) and charset.upper() != b"UTF-8":
            # RFC 6855 §3 and its erratum 4029: a mandatory charset other
            # than UTF-8 conflicts with UTF8=ACCEPT: BAD.
            self.sendBadResponse(tag, b"the charset is UTF-8 after ENABLE UTF8=ACCEPT (RFC 6855 section 3)")
            return
        view = self.selected
        folder = view.folder
        reads = must_read(folder, query, view.uids) or not fields_cached(folder, fields, view.uids)
        if reads and reads_detached(folder) and charset.upper() in (b"US-ASCII", b"UTF-8"):
            try:
                predicate = compile_search(query, len(view.uids), view.uids[-1] if view.uids else 0)
            except BadSearch as e:
                self.sendBadResponse(tag, client_text(str(e)))
                return
            if keep is not None:
                keep.append(predicate)
            # (the UIDs as they are now, in the view's own kind: an
            # array('I') copy is 4 octets a message; a list of them, 36)
            waited = match_in_thread(folder, predicate, view.uids[:], view.recent, False, fields, self._still_connected)
            if waited is not None:
                self._hold_input()

                def matched(outcome):
                    if self.transport is None or self.transport.disconnecting or self.selected is not view:
                        return  # (the client went away meanwhile)
                    cache = HeaderCache.of(folder)
                    found = []
                    for seq, u in outcome[0]:
                        try:
                            found.append(_Message(u if uid else seq, seq, Candidate(seq, folder.info(u), u in view.recent, folder, cache)))
                        except NoSuchMessage:
                            continue
                    then(found)

                def failed(reason):
                    if self.transport is None or self.transport.disconnecting:
                        return
                    if reason.check(StoreUnavailable):
                        self._command_failed(reason.value, tag, b"SORT")  # NO [UNAVAILABLE]
                        return
                    log.failure("IMAP SORT or THREAD failed", reason)
                    self.sendBadResponse(tag, b"[SERVERBUG] the search failed; see the server log")

                waited.addCallbacks(matched, failed)
                waited.addBoth(lambda _: self._release_input())
                return
        found = self._matching(tag, charset, query, uid, keep)
        if found is not None:
            then(found)

    def do_SORT(self, tag, program, charset, query, uid=0):
        """SORT (RFC 5256), and with RETURN (...) ESORT (RFC 5267 §3, twisted_mailhub.imap.contexts)."""
        returns, criteria = program
        options = None
        if returns is not None:
            try:
                options = contexts.parse_return_options(returns)
            except BadSearch as e:
                self.sendBadResponse(tag, client_text(str(e)))
                return
            if options.update and self.context_tag_in_use(tag):
                self.sendBadResponse(tag, b"a live search already has this tag: use another, or CANCELUPDATE it")
                return
        if not criteria:
            self.sendBadResponse(tag, b"SORT wants criteria in parentheses, e.g. SORT (DATE) UTF-8 ALL")
            return
        parsed: list[tuple[bytes, bool]] = []
        reverse = False
        for word in criteria:
            word = word.upper() if isinstance(word, bytes) else b""
            if word == b"REVERSE" and not reverse:
                reverse = True
                continue
            if word not in _CRITERIA:
                self.sendBadResponse(tag, b"unknown SORT criterion: use ARRIVAL CC DATE FROM SIZE SUBJECT TO, each may follow REVERSE")
                return
            parsed.append((word, reverse))
            reverse = False
        if reverse:
            self.sendBadResponse(tag, b"REVERSE must come before a criterion")
            return
        keep: list = []
        fields = tuple({_SORT_FIELDS[word] for word, _ in parsed if word in _SORT_FIELDS})
        # (a live SORT reads a new message's sort fields: in a worker thread, contexts.py)
        reads = reads_messages(query) or bool(fields)
        self._matching_then(tag, charset, _astrings(query), bool(uid), lambda found: self._sorted(tag, uid, options, parsed, keep, found, reads, fields), keep, fields)

    def _sorted(self, tag, uid, options, parsed: list, keep: list, found: list, reads: bool = True, fields: tuple = ()) -> None:
        """The SORT (or ESORT) response and tagged OK for the matching messages C{found}."""
        ordered = sort_messages(found, parsed)
        if options is None:
            self.transport.write(b"* SORT" + b"".join(b" %d" % m.number for m in ordered) + b"\r\n")
        else:
            self.transport.write(contexts.esearch_response(tag, bool(uid), options, [m.number for m in ordered], sort=True))
            if options.update:
                uids = [m.candidate.info.uid for m in ordered]
                self.transport.write(self.start_context(tag, bool(uid), options, keep[0], parsed, uids, reads, fields))
        self.sendPositiveResponse(tag, b"SORT completed")

    def do_THREAD(self, tag, algorithm, charset, query, uid=0):
        name = algorithm.upper()
        if name not in (b"ORDEREDSUBJECT", b"REFERENCES"):
            self.sendBadResponse(tag, b"THREAD algorithm: use ORDEREDSUBJECT or REFERENCES")
            return
        def threads(found: list) -> None:
            roots = thread_references(found) if name == b"REFERENCES" else thread_ordered_subject(found)
            self.transport.write(b"* THREAD " + b"".join(thread_text(root) for root in roots) + b"\r\n")
            self.sendPositiveResponse(tag, b"THREAD completed")

        fields = ("message-id", "references", "in-reply-to", "subject", "date") if name == b"REFERENCES" else ("subject", "date")
        self._matching_then(tag, charset, _astrings(query), bool(uid), threads, None, fields)

    def arg_sortkeys(self, line):
        from twisted_mailhub.imap.search import SearchCommands

        return SearchCommands.arg_searchkeys(self, line)

    def arg_sort_program(self, line):
        """C{[RETURN (options)] (criteria)}: ((options or None, criteria), rest)."""
        returns = None
        if line[:7].upper() == b"RETURN ":
            returns, line = imap4.IMAP4Server.arg_plist(self, line[7:].lstrip())
        criteria, rest = imap4.IMAP4Server.arg_plist(self, line)
        return (returns, criteria), rest

    select_SORT = (do_SORT, arg_sort_program, imap4.IMAP4Server.arg_atom, arg_sortkeys)
    select_THREAD = (do_THREAD, imap4.IMAP4Server.arg_atom, imap4.IMAP4Server.arg_atom, arg_sortkeys)
