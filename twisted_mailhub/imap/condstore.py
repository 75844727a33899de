# -*- test-case-name: tests.test_e2e_imap_condstore -*-
"""
CONDSTORE and QRESYNC (RFC 7162): everything the two extensions add, in
one place. The store keeps a mod-sequence per message
(L{IModSeqFolder}); this module shows it.

Rules:

 - Advertised (after login) only when the account's folders provide
   L{IModSeqFolder}; the memory and Maildir stores do.
 - A session becomes CONDSTORE-aware (§3.1) with ENABLE CONDSTORE or
   QRESYNC, SELECT/EXAMINE (CONDSTORE), FETCH MODSEQ or CHANGEDSINCE, STORE
   UNCHANGEDSINCE, SEARCH MODSEQ or STATUS HIGHESTMODSEQ. From then on every
   FETCH response with FLAGS carries MODSEQ, solicited or not.
 - SELECT and EXAMINE always send C{[HIGHESTMODSEQ n]} where modseqs exist.
 - FETCH (CHANGEDSINCE n) answers only messages whose modseq is above n;
   with VANISHED (UID FETCH, QRESYNC enabled) it first sends
   C{VANISHED (EARLIER)} for the UIDs of the set that no longer exist.
 - STORE (UNCHANGEDSINCE n) leaves a message whose modseq is above n as it
   is and names it in C{OK [MODIFIED set]}.
 - With QRESYNC enabled, expunges are told as C{VANISHED uids}, and
   SELECT (QRESYNC (uidvalidity modseq [known-uids])) sends, when the
   UIDVALIDITY matches, C{VANISHED (EARLIER)} and the FETCHes of what
   changed since. The store keeps no record of expunged UIDs, so VANISHED
   (EARLIER) names every UID below UIDNEXT the client may know that does not
   exist now: a superset, as §3.2.5.1 allows.
 - Selecting a mailbox while one is selected sends C{OK [CLOSED]} first
   (§7).
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.mail import imap4

from twisted_mailhub.store.interfaces import IModSeqFolder, NoSuchMessage

CAPABILITIES = (b"CONDSTORE", b"QRESYNC")


def has_modseqs(folder: Any) -> bool:
    return IModSeqFolder.providedBy(folder)


def uid_set_text(uids: Iterable[int]) -> bytes:
    """Ascending numbers as an IMAP sequence set: C{1:3,7,9:10}."""
    return uid_runs_text(sorted(set(uids)))


def uid_runs_text(uids: Iterable[int]) -> bytes:
    """
    Numbers as a uid-set in the order given, each run that rises by one
    written as a range: C{[4, 5, 6, 2, 9, 10]} is C{4:6,2,9:10}. For the
    two sets of C{COPYUID}, whose members correspond pairwise "in the same
    order" (RFC 4315 §3), so neither set may be sorted on its own.
    """
    out: list[bytes] = []
    start = prev = None
    for n in uids:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
            start = prev = n
    if start is not None:
        out.append(b"%d" % start if start == prev else b"%d:%d" % (start, prev))
    return b",".join(out)


def modseq_value(token: Any, what: str) -> int:
    """A mod-sequence value from the wire (RFC 7162 §7: 1*DIGIT, < 2**63)."""
    if not isinstance(token, bytes) or not token.isdigit() or len(token) > 19:
        raise imap4.IllegalClientResponse(what + " wants a number")
    value = int(token)
    if value >= 2**63:
        raise imap4.IllegalClientResponse(what + " is too large")
    return value


def split_modifiers(text: bytes) -> tuple[bytes, list]:
    """
    FETCH's item list and what follows it in parentheses (RFC 4466
    fetch-modifiers), e.g. C{(FLAGS) (CHANGEDSINCE 5)} -> C{(FLAGS)} and
    C{[b"CHANGEDSINCE", b"5"]}.
    """
    text = text.strip()
    if text.startswith(b"("):
        depth = 0
        in_section = 0
        for i, c in enumerate(text):
            if c == ord("["):
                in_section += 1
            elif c == ord("]"):
                in_section -= 1
            elif in_section:
                continue
            elif c == ord("("):
                depth += 1
            elif c == ord(")"):
                depth -= 1
                if depth == 0:
                    head, rest = text[: i + 1], text[i + 1 :]
                    break
        else:
            return text, []
    else:
        # One fetch-att without parentheses (RFC 9051 §6.4.5): it ends at
        # the first space outside a section, which may hold spaces itself
        # (BODY[HEADER.FIELDS (SUBJECT FROM)]; cut at its first space, it
        # was refused as bad FETCH modifiers).
        in_section = 0
        for i, c in enumerate(text):
            if c == ord("["):
                in_section += 1
            elif c == ord("]"):
                in_section -= 1
            elif c == ord(" ") and not in_section:
                head, rest = text[:i], text[i + 1 :]
                break
        else:
            head, rest = text, b""
    rest = rest.strip()
    if not rest:
        return head, []
    if not (rest.startswith(b"(") and rest.endswith(b")")):
        raise imap4.IllegalClientResponse("FETCH modifiers go in parentheses, e.g. (CHANGEDSINCE 12345)")
    try:
        return head, imap4.parseNestedParens(rest[1:-1])
    except Exception:
        raise imap4.IllegalClientResponse("bad FETCH modifiers: unbalanced parentheses or quotes") from None


class CondStoreCommands:
    """ENABLE and the CONDSTORE/QRESYNC parts of SELECT, mixed into the server."""

    enabled: frozenset = frozenset()
    _condstore_seen = False

    @property
    def condstore(self) -> bool:
        """Does this session get MODSEQ in its FETCH responses (§3.1)?"""
        return self._condstore_seen or b"CONDSTORE" in self.enabled or b"QRESYNC" in self.enabled

    @property
    def qresync(self) -> bool:
        return b"QRESYNC" in self.enabled

    def condstore_used(self) -> None:
        self._condstore_seen = True

    def modseq_offered(self) -> bool:
        try:
            return self.state != "unauth" and has_modseqs(self._store().folder("INBOX"))
        except Exception:
            return False

    def do_ENABLE(self, tag, args=None):
        """
        ENABLE (RFC 5161): CONDSTORE and QRESYNC where modseqs exist, and
        the session modes of L{twisted_mailhub.imap.rev2} (IMAP4rev2,
        UTF8=ACCEPT).
        """
        words = (args or b"").upper().split()
        if not words:
            self.sendBadResponse(tag, b"ENABLE wants capability names, e.g. ENABLE QRESYNC")
            return
        offered = set(CAPABILITIES) if self.modseq_offered() else set()
        modes = self.enable_offered()
        fresh = [w for w in dict.fromkeys(words) if (w in offered or w in modes) and w not in self.enabled]
        # (QRESYNC implies CONDSTORE, §3.2.3: the condstore property says so.)
        self.enabled = frozenset(self.enabled | set(fresh))
        self.enabled_now(fresh)
        self.sendUntaggedResponse(b"ENABLED" + b"".join(b" " + modes.get(w, w) for w in fresh))
        self.sendPositiveResponse(tag, b"ENABLE completed")

    auth_ENABLE = select_ENABLE = (do_ENABLE, imap4.IMAP4Server.arg_line)

    def select_parameters(self, params: Any) -> tuple[bool, tuple | None]:
        """
        SELECT/EXAMINE parameters (RFC 4466): (CONDSTORE) and (QRESYNC
        (uidvalidity modseq [known-uids [seq-match]])). Returns (condstore,
        qresync tuple or None); raises L{imap4.IllegalClientResponse}.
        """
        if params is None:
            return False, None
        if not isinstance(params, list):
            raise imap4.IllegalClientResponse("SELECT parameters go in parentheses, e.g. (CONDSTORE)")
        condstore = False
        qresync = None
        i = 0
        while i < len(params):
            word = params[i]
            name = word.upper() if isinstance(word, bytes) else b""
            if name == b"CONDSTORE" and self.modseq_offered():
                condstore = True
                i += 1
            elif name == b"QRESYNC" and self.qresync:
                if i + 1 >= len(params) or not isinstance(params[i + 1], list) or len(params[i + 1]) < 2:
                    raise imap4.IllegalClientResponse("QRESYNC wants (uidvalidity modseq [known-uids])")
                given = params[i + 1]
                validity = modseq_value(given[0], "QRESYNC's UIDVALIDITY")
                since = modseq_value(given[1], "QRESYNC's modseq")
                known = None
                if len(given) > 2 and isinstance(given[2], bytes):
                    try:
                        known = imap4.parseIdList(given[2])
                    except Exception:
                        raise imap4.IllegalClientResponse("QRESYNC's known UIDs are not a UID set") from None
                qresync = (validity, since, known)
                condstore = True
                i += 2
            elif name == b"QRESYNC":
                raise imap4.IllegalClientResponse("QRESYNC must be enabled first: ENABLE QRESYNC")
            else:
                raise imap4.IllegalClientResponse("unknown SELECT parameter: use CONDSTORE or QRESYNC")
        return condstore, qresync

    def qresync_lines(self, view: Any, qresync: tuple) -> list[bytes]:
        """What a QRESYNC SELECT sends after the usual responses."""
        validity, since, known = qresync
        folder = view.folder
        if validity != folder.uid_validity:
            return []  # the client's cache is void: it does a full resync
        last = folder.uid_next - 1
        existing = set(view.uids)
        if known is None:
            wanted = set(range(1, last + 1))
        else:
            wanted = set()
            for lo, hi in known.ranges:
                lo = last if lo is None else lo
                hi = last if hi is None else hi
                wanted.update(range(min(lo, hi), min(max(lo, hi), last) + 1))
        gone = [u for u in wanted if u not in existing]
        lines = []
        if gone:
            lines.append(b"* VANISHED (EARLIER) " + uid_set_text(gone) + b"\r\n")
        for seq, uid in enumerate(view.uids, 1):
            if uid not in wanted:
                continue
            try:
                modseq = folder.modseq(uid)
                if modseq > since:
                    flags = flags_of(folder, uid, view)
                    lines.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, flags, modseq))
            except NoSuchMessage:
                continue
        return lines


def flags_of(folder: Any, uid: int, view: Any) -> bytes:
    from twisted_mailhub.imap.wire import flags_text

    return flags_text(folder.info(uid).flags, uid in view.recent)


def vanished_earlier(view: Any, messages: imap4.MessageSet) -> bytes:
    """C{* VANISHED (EARLIER) ...} for the UIDs of a set that do not exist."""
    last = view.folder.uid_next - 1
    existing = set(view.uids)
    gone = []
    for lo, hi in messages.ranges:
        lo = last if lo is None else lo
        hi = last if hi is None else hi
        lo, hi = min(lo, hi), min(max(lo, hi), last)
        gone.extend(u for u in range(lo, hi + 1) if u not in existing)
    return b"* VANISHED (EARLIER) " + uid_set_text(gone) + b"\r\n" if gone else b""
