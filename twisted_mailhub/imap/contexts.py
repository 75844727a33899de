# -*- test-case-name: tests.test_e2e_imap_contexts -*-
"""
Search results as ESEARCH data (RFC 4731), sorted (ESORT, RFC 5267 §3),
windowed (PARTIAL, RFC 9394) and kept live (CONTEXT=SEARCH, RFC 5267 §4).

Rules:

 - C{SEARCH RETURN (...)} and C{SORT RETURN (...)} take MIN, MAX, COUNT,
   ALL, PARTIAL, UPDATE and CONTEXT. No option, or only UPDATE/CONTEXT,
   means ALL. PARTIAL and ALL together are BAD (RFC 9394 §3.1).
 - For SEARCH the results are in ascending order; for SORT in sort order:
   MIN and MAX are then the first and last message of the sorted result,
   and ALL is written in that order, a range C{a:b} standing for a run of
   consecutive numbers going up (a < b) or down (a > b) (RFC 5267 §3.2).
 - C{PARTIAL m:n} returns the m-th to n-th result (1-based); C{PARTIAL
   -m:-n} counts from the last result (-1). The two ends may come in either
   order. No result in the window gives C{PARTIAL (m:n NIL)}.
 - CONTEXT is a hint and changes nothing.
 - UPDATE keeps the search live while the mailbox stays selected: when a
   message starts or stops matching (a delivery, a flag change by anyone, an
   expunge), an unsolicited C{* ESEARCH (TAG "t") [UID] ...} tells it:
   REMOVEFROM (0 set) and ADDTO (0 set) for a SEARCH; for a SORT, ADDTO
   gives each message's new 1-based position (C{ADDTO (2 17 7 18)}). When
   MIN, MAX or COUNT were asked for, their new values come along.
   Updates are sent where other untagged updates are: before a command,
   before its tagged reply, and at once during IDLE; a new message only
   after its EXISTS. An expunged message leaves a UID context with
   REMOVEFROM after its EXPUNGE/VANISHED; a context of sequence numbers
   learns it from the EXPUNGE alone (its number is gone).
 - CONTEXT=SORT (RFC 5267 §4): a live SORT's ADDTO gives each new
   member its position in the sorted result (pairs in ascending order, so
   a client inserting them one after the other gets the order a new SORT
   gives); REMOVEFROM uses position 0 (the client finds the message).
   Sort keys never change once a message is stored, so only membership
   moves a message. A PARTIAL result is not kept live (C{NO [NOUPDATE]}).
 - At most L{MAX_CONTEXTS} live contexts per session; past that the search
   is answered and C{* NO [NOUPDATE "tag"]} says it will not be updated. A
   tag in use by a live context may not start another (BAD).
 - CANCELUPDATE "tag" ... ends contexts; a tag with no live context is BAD.
   Selecting another mailbox, CLOSE and UNSELECT end them all.
"""

from __future__ import annotations

from typing import Any

from twisted.mail import imap4

from twisted_mailhub.imap.condstore import uid_set_text
from twisted_mailhub.imap.message import quote
from twisted.logger import Logger

from twisted_mailhub.imap.search import BadSearch, Candidate, HeaderCache, match_each_in_thread, reads_detached
from twisted_mailhub.imap.wire import client_text, shown
from twisted_mailhub.store.interfaces import NoSuchMessage, StoreUnavailable

log = Logger()

CAPABILITIES = (b"CONTEXT=SEARCH", b"CONTEXT=SORT", b"ESORT", b"PARTIAL")
MAX_CONTEXTS = 10
_OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT", b"PARTIAL", b"UPDATE", b"CONTEXT")
_MAX_POSITION = 2**32 - 1


class ReturnOptions:
    """
    What a RETURN (...) list asked for. C{partial} is (first, last) with
    1 <= first <= last positions, negative for positions from the end.
    """

    __slots__ = ("min", "max", "all", "count", "partial", "update")

    def __init__(self) -> None:
        self.min = self.max = self.all = self.count = self.update = False
        self.partial: tuple[int, int] | None = None

    @property
    def lists(self) -> bool:
        """Whether the results themselves (ALL or PARTIAL) are returned."""
        return self.all or self.partial is not None


def parse_partial(token: Any) -> tuple[int, int]:
    """
    A PARTIAL range (RFC 9394 §3.1): C{1:100} or C{-1:-100}, either end
    first, never 0, both of one sign. Returned as (first, last) with
    abs(first) <= abs(last).

    @raise BadSearch: anything else.
    """
    if not isinstance(token, bytes) or token.count(b":") != 1:
        raise BadSearch("PARTIAL wants a range such as 1:100 or -1:-100")
    left, right = token.split(b":")
    try:
        a, b = int(left), int(right)
    except ValueError:
        raise BadSearch("PARTIAL wants a range such as 1:100 or -1:-100") from None
    if a == 0 or b == 0 or (a < 0) != (b < 0) or max(abs(a), abs(b)) > _MAX_POSITION or not left.lstrip(b"-").isdigit() or not right.lstrip(b"-").isdigit():
        raise BadSearch("PARTIAL range ends are both positive or both negative, never 0")
    if abs(a) > abs(b):
        a, b = b, a
    return a, b


def parse_return_options(items: list) -> ReturnOptions:
    """
    The options of C{RETURN (...)} (RFC 4731 §3.1, RFC 5267, RFC 9394).

    @raise BadSearch: an unknown option, a bad PARTIAL range, or PARTIAL
        with ALL.
    """
    options = ReturnOptions()
    i = 0
    while i < len(items):
        word = items[i].upper() if isinstance(items[i], bytes) else b""
        i += 1
        if word not in _OPTIONS:
            raise BadSearch("unknown RETURN option: use MIN, MAX, ALL, COUNT, PARTIAL, UPDATE or CONTEXT")
        if word == b"PARTIAL":
            if i >= len(items):
                raise BadSearch("PARTIAL wants a range such as 1:100 or -1:-100")
            options.partial = parse_partial(items[i])
            i += 1
        elif word == b"UPDATE":
            options.update = True
        elif word != b"CONTEXT":
            setattr(options, word.decode().lower(), True)
    if options.all and options.partial is not None:
        raise BadSearch("RETURN PARTIAL and ALL cannot be combined (RFC 9394)")
    if not (options.min or options.max or options.count or options.lists):
        options.all = True
    return options


def take_partial(modifiers: list) -> tuple[list, tuple[int, int] | None]:
    """
    The FETCH modifiers without C{PARTIAL range} (RFC 9394 §3.3), and the
    range (None without one). The window is taken of the messages the set
    (and CHANGEDSINCE) names, in ascending order.

    @raise BadSearch: a PARTIAL without a good range.
    """
    rest: list = []
    partial = None
    i = 0
    while i < len(modifiers):
        word = modifiers[i]
        if isinstance(word, bytes) and word.upper() == b"PARTIAL":
            if i + 1 >= len(modifiers):
                raise BadSearch("PARTIAL wants a range such as 1:100 or -1:-100")
            partial = parse_partial(modifiers[i + 1])
            i += 2
            continue
        rest.append(word)
        i += 1
    return rest, partial


def window(results: list, partial: tuple[int, int]) -> list:
    """The results at the positions of a PARTIAL range (RFC 9394 §3.1)."""
    first, last = partial
    n = len(results)
    if first > 0:
        return results[first - 1 : last]
    return results[max(n + last, 0) : max(n + first + 1, 0)]


def ordered_set_text(numbers: list[int]) -> bytes:
    """
    Numbers in the given order as a sequence set that keeps it (RFC 5267
    §3.2): runs going up as C{a:b}, runs going down as C{b:a}.
    """
    out: list[bytes] = []
    i, n = 0, len(numbers)
    while i < n:
        j = i
        if i + 1 < n and abs(numbers[i + 1] - numbers[i]) == 1:
            step = numbers[i + 1] - numbers[i]
            while j + 1 < n and numbers[j + 1] - numbers[j] == step:
                j += 1
        out.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(out)


def esearch_response(tag: bytes, uid: bool, options: ReturnOptions, results: list[int], sort: bool, modseq: int = 0) -> bytes:
    """
    The ESEARCH response (RFC 4731 §3.1) for C{results}, message numbers or
    UIDs in result order (ascending for SEARCH, sort order for SORT).
    """
    out = b"* ESEARCH (TAG " + quote(tag) + b")" + (b" UID" if uid else b"")
    if results and options.min:
        out += b" MIN %d" % (results[0] if sort else min(results))
    if results and options.max:
        out += b" MAX %d" % (results[-1] if sort else max(results))
    if options.count:
        out += b" COUNT %d" % len(results)
    if results and options.all:
        out += b" ALL " + (ordered_set_text(results) if sort else uid_set_text(results))
    if options.partial is not None:
        part = window(results, options.partial)
        text = (ordered_set_text(part) if sort else uid_set_text(part)) if part else b"NIL"
        out += b" PARTIAL (%d:%d %s)" % (options.partial[0], options.partial[1], text)
    if results and modseq:
        out += b" MODSEQ %d" % modseq
    return out + b"\r\n"


# -- live contexts (RFC 5267 §4) --------------------------------------------------


class SearchContext:
    """
    One live search: its tag, the C{predicate} it matches with, the sort
    C{criteria} (None for SEARCH) and the UIDs in its result, in order.
    """

    def __init__(self, tag: bytes, uid: bool, options: ReturnOptions, predicate: Any, criteria: list | None, results: list[int], reads: bool = True, fields: tuple = ()):
        self.tag = tag
        self.uid = uid
        self.options = options
        self.predicate = predicate
        self.criteria = criteria
        self.results = results
        self.members = set(results)
        self.reads = reads  # may its predicate read a message (BODY, FROM ...), or its order a header field?
        self.fields = fields  # the header fields its order reads (lowered names)


class SearchContexts:
    """
    The live contexts of one session on its selected mailbox (C{view}),
    and the UIDs changed since they were last brought up to date (any
    change, the session's own included: a STORE of \\Seen can take a
    message out of an UNSEEN context).
    """

    def __init__(self, view: Any, notify: Any):
        self.view = view
        self.notify = notify
        self.contexts: dict[bytes, SearchContext] = {}
        self.dirty: set[int] = set()
        # The messages the contexts that read them (SearchContext.reads)
        # are to look at again: read and matched in a worker thread, one
        # batch at a time (reading); the answers of a batch wait in
        # ready until updates() applies them, oldest first.
        self.unread: set[int] = set()
        self.reading: Any = None
        self.ready: list[tuple[list[int], list[SearchContext], dict[int, int]]] = []
        view.folder.add_listener(self._changed)

    def _changed(self, change: Any) -> None:
        self.dirty.update(change.added)
        self.dirty.update(change.flags)
        self.dirty.update(change.expunged)
        self.notify()  # an IDLE session hears it at once

    def close(self) -> None:
        self.view.folder.remove_listener(self._changed)
        self.contexts.clear()
        self.ready.clear()
        self.unread.clear()

    @property
    def pending(self) -> bool:
        """Is there anything for L{updates} to look at or tell?"""
        return bool(self.dirty or self.ready or (self.unread and self.reading is None))

    def _in_thread(self, context: SearchContext) -> bool:
        return context.reads and reads_detached(self.view.folder)

    def _read_unread(self) -> None:
        """
        Match the L{unread} messages against the contexts that read them,
        in a worker thread (L{match_each_in_thread}: Maildir's files or
        PostgreSQL's blobs are read there, never in the reactor); their
        answers go to L{ready} and the session is told (C{notify}).
        """
        view = self.view
        uids = []
        seqs = []
        for uid in sorted(self.unread):
            seq = view.seq_of(uid)
            if seq:
                uids.append(uid)
                seqs.append(seq)
            else:
                self.dirty.add(uid)  # (expunged since: no read needed)
        self.unread.clear()
        reading = [c for c in self.contexts.values() if self._in_thread(c)]
        if not uids or not reading:
            return
        fields = tuple({f for c in reading for f in c.fields})
        waited = match_each_in_thread(view.folder, [c.predicate for c in reading], uids, seqs, view.recent, False, fields)
        if waited is None:  # (not for this store after all: in the reactor)
            for c in reading:
                c.reads = False
            self.dirty.update(uids)
            return
        self.reading = waited

        def read(outcome) -> None:
            self.reading = None
            masks = {uid: mask for _seq, uid, mask in outcome[0]}
            self.ready.append((uids, reading, masks))
            if self.contexts:
                self.notify()  # (an IDLE session hears it at once)

        def failed(reason) -> None:
            # Looked at again at the next command (not at once: a
            # database that is down would be asked again and again).
            self.reading = None
            self.unread.update(uids)
            if reason.check(StoreUnavailable):
                log.warn("a live search could not read new or changed messages: {why}", why=str(reason.value))
            else:
                log.failure("a live search's look at new or changed messages failed", reason)

        waited.addCallbacks(read, failed)

    def _apply_ready(self, changed: dict) -> None:
        """
        The answers of the worker thread's batches (L{ready}), oldest
        first (a later answer for a message replaces an earlier one),
        into C{changed}.
        """
        view = self.view
        latest: dict[bytes, dict[int, bool]] = {}
        while self.ready:
            uids, reading, masks = self.ready.pop(0)
            for bit, context in enumerate(reading):
                if self.contexts.get(context.tag) is not context:
                    continue  # (cancelled meanwhile)
                now_of = latest.setdefault(context.tag, {})
                for uid in uids:
                    now_of[uid] = bool(masks.get(uid, 0) & (1 << bit))
        for tag, now_of in latest.items():
            context = self.contexts[tag]
            added, removed = changed[tag]
            for uid, now in sorted(now_of.items()):
                seq = view.seq_of(uid)
                now = now and bool(seq)
                if seq and not now:
                    try:
                        view.folder.info(uid)
                    except NoSuchMessage:
                        self.dirty.add(uid)  # expunged, EXPUNGE not sent yet: later
                        continue
                was = uid in context.members
                if now and not was:
                    added.append(uid)
                elif was and not now:
                    removed.append(uid)

    def _matches(self, predicate: Any, uid: int, seq: int, cache: dict) -> bool:
        view = self.view
        candidate = Candidate(seq, view.folder.info(uid), uid in view.recent, view.folder, cache)
        return bool(predicate(candidate))

    def updates(self) -> list[bytes]:
        """
        The ESEARCH updates for what changed since the last call, for the
        messages the client has been told about (see the module's rules).
        """
        if not self.contexts:
            self.dirty.clear()
            self.ready.clear()
            self.unread.clear()
            return []
        if not self.pending:
            return []
        view = self.view
        last = view.uids[-1] if view.uids else 0
        cache = HeaderCache.of(view.folder)
        changed: dict[bytes, tuple[list[int], list[int]]] = {t: ([], []) for t in self.contexts}
        self._apply_ready(changed)  # (older than what is dirty now)
        keep: set[int] = set()
        for uid in sorted(self.dirty):
            seq = view.seq_of(uid)
            if not seq and uid > last:
                try:
                    view.folder.info(uid)
                    keep.add(uid)  # not told yet (no EXISTS): later
                except NoSuchMessage:
                    pass
                continue
            for context in self.contexts.values():
                if seq and self._in_thread(context):
                    self.unread.add(uid)  # read and matched in a worker thread
                    continue
                try:
                    now = bool(seq) and self._matches(context.predicate, uid, seq, cache)
                except NoSuchMessage:
                    keep.add(uid)  # expunged, EXPUNGE not sent yet: later
                    break
                except FileNotFoundError:
                    now = False
                was = uid in context.members
                added, removed = changed[context.tag]
                if now and not was and uid not in added:
                    added.append(uid)
                elif was and not now and uid not in removed:
                    removed.append(uid)
        self.dirty = keep
        if self.unread and self.reading is None:
            self._read_unread()
        out = []
        for tag, (added, removed) in changed.items():
            if added or removed:
                line = self._apply(self.contexts[tag], added, removed)
                if line:
                    out.append(line)
        return out

    def _apply(self, context: SearchContext, added: list[int], removed: list[int]) -> bytes:
        view = self.view
        options = context.options
        before = (self._number(context, context.results[0]) if context.results else None, self._number(context, context.results[-1]) if context.results else None, len(context.results))
        gone = set(removed)
        removed_numbers = [self._number(context, u) for u in removed]
        removed_numbers = [n for n in removed_numbers if n]
        context.results = [u for u in context.results if u not in gone]
        context.members.difference_update(gone)
        pairs: list[tuple[int, int]] = []
        if context.criteria is None:
            context.results = sorted(context.results + added)
            context.members.update(added)
        else:
            from twisted_mailhub.imap.sort import ordered_uids

            context.results = ordered_uids(view, context.results + added, context.criteria)
            context.members.update(added)
            where = {u: i + 1 for i, u in enumerate(context.results)}
            pairs = sorted((where[u], u) for u in added)
        out = b"* ESEARCH (TAG " + quote(context.tag) + b")" + (b" UID" if context.uid else b"")
        wrote = False
        if options.lists:
            if removed_numbers:
                out += b" REMOVEFROM (0 " + uid_set_text(removed_numbers) + b")"
                wrote = True
            if added:
                if context.criteria is None:
                    out += b" ADDTO (0 " + uid_set_text([self._number(context, u) for u in added]) + b")"
                else:
                    out += b" ADDTO (" + b" ".join(b"%d %d" % (p, self._number(context, u)) for p, u in pairs) + b")"
                wrote = True
        numbers = [self._number(context, u) for u in context.results]
        after_min = (numbers[0] if context.criteria is not None else min(numbers)) if numbers else None
        after_max = (numbers[-1] if context.criteria is not None else max(numbers)) if numbers else None
        if options.min and after_min is not None and after_min != before[0]:
            out += b" MIN %d" % after_min
            wrote = True
        if options.max and after_max is not None and after_max != before[1]:
            out += b" MAX %d" % after_max
            wrote = True
        if options.count and len(numbers) != before[2]:
            out += b" COUNT %d" % len(numbers)
            wrote = True
        return out + b"\r\n" if wrote else b""

    def _number(self, context: SearchContext, uid: int) -> int:
        return uid if context.uid else self.view.seq_of(uid)


class ContextCommands:
    """CANCELUPDATE and the live-context bookkeeping, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    _search_contexts: SearchContexts | None = None

    def live_contexts(self) -> SearchContexts | None:
        """The session's live contexts, if any, for the selected mailbox (older ones are ended)."""
        contexts = self._search_contexts
        if contexts is not None and contexts.view is not self.selected:
            contexts.close()
            contexts = self._search_contexts = None
        return contexts

    def start_context(
        self, tag: bytes, uid: bool, options: ReturnOptions, predicate: Any, criteria: list | None, results: list[int], reads: bool = True, fields: tuple = ()
    ) -> bytes:
        """
        Keep a search live (RFC 5267 §4.2). C{reads}: may C{predicate}
        read a message (L{twisted_mailhub.imap.search.reads_messages}),
        or the order header C{fields} (lowered names)? Then a new or
        changed message is read and matched in a worker thread, and its
        update sent when that is done. Returns the untagged NO [NOUPDATE]
        line when it is refused, else b"".
        """
        if options.partial is not None:
            # Which changes would move a window's edges is left undefined
            # (RFC 5267 §4.4, RFC 9394): declined as §4.1 allows, rather
            # than updates the client cannot place.
            return b"* NO [NOUPDATE " + quote(tag) + b"] a PARTIAL result is not kept live: ask for ALL, MIN, MAX or COUNT with UPDATE\r\n"
        contexts = self.live_contexts()
        if contexts is None:
            contexts = self._search_contexts = SearchContexts(self.selected, self.changes_arrived)
        if len(contexts.contexts) >= MAX_CONTEXTS:
            return b"* NO [NOUPDATE " + quote(tag) + b"] at most %d searches are kept live" % MAX_CONTEXTS + b"\r\n"
        contexts.contexts[tag] = SearchContext(tag, uid, options, predicate, criteria, results, reads, fields)
        return b""

    def context_reading(self) -> Any:
        """
        A L{Deferred} that fires when the live searches' look at new or
        changed messages in a worker thread is done, or None if none is
        under way.
        """
        contexts = self.live_contexts()
        return contexts.reading if contexts is not None else None

    def context_tag_in_use(self, tag: bytes) -> bool:
        contexts = self.live_contexts()
        return contexts is not None and tag in contexts.contexts

    def write_context_updates(self) -> None:
        """Send what changed in the live searches (called where untagged updates go)."""
        contexts = self.live_contexts()
        if contexts is not None and contexts.pending:
            lines = contexts.updates()
            if lines:
                self.transport.write(b"".join(lines))

    def end_contexts(self) -> None:
        if self._search_contexts is not None:
            self._search_contexts.close()
            self._search_contexts = None

    def do_CANCELUPDATE(self, tag, line):
        try:
            tags = imap4.parseNestedParens(line)
        except Exception:
            tags = None
        if not tags or not all(isinstance(t, bytes) for t in tags):
            self.sendBadResponse(tag, b'CANCELUPDATE wants the tags of live searches, e.g. CANCELUPDATE "A1"')
            return
        contexts = self.live_contexts()
        unknown = [t for t in tags if contexts is None or t not in contexts.contexts]
        if unknown:
            self.sendBadResponse(tag, b"no live search has the tag " + client_text(shown(unknown[0], 40)))
            return
        for t in tags:
            del contexts.contexts[t]
        self.sendPositiveResponse(tag, b"CANCELUPDATE completed")

    select_CANCELUPDATE = (do_CANCELUPDATE, imap4.IMAP4Server.arg_line)
