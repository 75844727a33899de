# -*- test-case-name: tests.test_e2e_imap_rev2 -*-
"""
SEARCHRES (RFC 5182), part of the IMAP4rev2 base (RFC 9051 §6.4.4.1):
C{SEARCH RETURN (SAVE ...)} keeps its result, and C{$} stands for it in a
later command's message set.

Rules:

 - The result is kept as UIDs for the selected mailbox, so a message
   expunged since drops out of it by itself (RFC 5182 §2.1); SELECT,
   EXAMINE, UNSELECT and CLOSE start with an empty one.
 - C{RETURN (SAVE)} alone answers no ESEARCH (§2.4); with other options
   they are answered as usual. A SEARCH with SAVE that fails (BAD) leaves
   the result empty (§2.1).
 - C{$} is read in FETCH, STORE, COPY, MOVE, UID EXPUNGE (as their message
   set) and in SEARCH, SORT and THREAD keys (as C{UID set}), by rewriting
   the command before it runs: C{FETCH $ FLAGS} runs as C{UID FETCH uids
   FLAGS} (so its FETCH responses also carry UID, which RFC 3501 §7.4.2
   allows). An empty result makes a set no message has, so those
   commands act on nothing and answer OK (§2.2).
"""

from __future__ import annotations

import re
from typing import Any

from twisted_mailhub.imap.condstore import uid_set_text

# A UID no message has (RFC 3501 §2.3.1.1: UIDs are 32-bit and nonzero).
NO_UID = b"4294967295"
_SET_COMMANDS = {b"FETCH", b"STORE", b"COPY", b"MOVE", b"EXPUNGE"}
_KEY_COMMANDS = {b"SEARCH", b"SORT", b"THREAD"}
_RETURN = re.compile(rb"\A\s*RETURN\s*\(([^()]*)\)", re.I)
# C{$} (or C{UID $}: the key UID with $ as its set) outside quoted strings.
_DOLLAR = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![^\s(])(?:UID\s+)?\$(?=[\s)]|\Z)', re.I)


def _replace_dollar(text: bytes, replacement: bytes) -> tuple[bytes, bool]:
    """
    Every C{$} outside quoted strings replaced, C{UID $} as C{$} is
    (C{replacement} is C{UID set}); (text, whether any was).
    """
    found = False

    def sub(m: re.Match) -> bytes:
        nonlocal found
        if not m.group(0).startswith(b'"'):
            found = True
            return replacement
        return m.group(0)

    return _DOLLAR.sub(sub, text), found


def _kept(uids: list[int], others: list[bytes]) -> list[int]:
    """
    What C{RETURN (SAVE ...)} keeps of a result (UIDs ascending), RFC 5182
    §2.4: with MIN and/or MAX but neither ALL nor COUNT (nor PARTIAL),
    only those messages; otherwise all of them.
    """
    asked = {o.upper() for o in others}
    if not uids or not asked & {b"MIN", b"MAX"} or asked & {b"ALL", b"COUNT", b"PARTIAL"}:
        return uids
    return sorted({uids[0] if b"MIN" in asked else uids[-1], uids[-1] if b"MAX" in asked else uids[0]})


class SearchResults:
    """SEARCHRES, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    _saved: tuple[Any, list[int]] | None = None

    _saving: tuple[bytes, list[bytes]] | None = None  # (tag, RETURN options but SAVE) of a SEARCH that saves

    def take_saving(self, tag: bytes) -> list[bytes] | None:
        """
        The RETURN options other than SAVE of SEARCH C{tag} if it saves its
        result (RFC 5182), else None; forgotten once asked.
        """
        saving, self._saving = self._saving, None
        return saving[1] if saving is not None and saving[0] == tag else None

    def finish_saving(self, tag: bytes, others: list[bytes] | None, uids: list[int]) -> bool:
        """
        Keep the result C{uids} (ascending) of a SEARCH that saves it
        (C{others}: L{take_saving}'s). True when the SEARCH was answered
        here: C{RETURN (SAVE)} alone answers no ESEARCH (RFC 5182 §2.4).
        """
        if others is None:
            return False
        self.save_result(_kept(uids, others))
        if not others:
            self.sendPositiveResponse(tag, b"SEARCH completed (result saved)")
            return True
        return False

    def saved_uids(self) -> list[int]:
        """The saved result of the selected mailbox's view (empty after a new SELECT)."""
        if self._saved is None or self._saved[0] is not self.selected:
            return []
        return self._saved[1]

    def save_result(self, uids: list[int]) -> None:
        self._saved = (self.selected, list(uids))

    def rewrite_saved(self, tag: bytes, cmd: bytes, rest: bytes, uid: Any) -> tuple[bytes, bytes, Any] | None:
        """
        (cmd, rest, uid) with C{$} replaced by the saved result and a
        SEARCH's SAVE option taken out (after saving), or None when the
        command was answered here (C{SEARCH RETURN (SAVE)} alone). Called
        before a command runs in the selected state.
        """
        name = cmd.upper()
        if name == b"UID":
            sub, _, tail = rest.partition(b" ")
            if sub.upper() == b"EXPUNGE" and tail.strip() == b"$":
                return cmd, b"EXPUNGE " + (uid_set_text(self.saved_uids()) or NO_UID), uid
            return cmd, rest, uid
        if name == b"SEARCH" and self.rev2 and not _RETURN.match(rest):
            # IMAP4rev2 answers SEARCH with ESEARCH, ALL by default (RFC 9051 §6.4.4)
            rest = b"RETURN (ALL) " + rest
        if name == b"SEARCH":
            m = _RETURN.match(rest)
            if m and any(o.upper() == b"SAVE" for o in m.group(1).split()):
                others = [o for o in m.group(1).split() if o.upper() != b"SAVE"]
                # $ among the keys is the result saved before this SEARCH
                # (RFC 5182 §2.1), for the search and for what it returns.
                before = uid_set_text(self.saved_uids()) or NO_UID
                keys, _ = _replace_dollar(rest[m.end() :], b"UID " + before)
                # The SEARCH saves what it finds when it is answered (its
                # matching may run in a worker thread: search.py); one that
                # fails (BAD, NO) leaves the result empty (RFC 5182 §2.1).
                self.save_result([])
                self._saving = (tag, others)
                return cmd, (b"RETURN (" + b" ".join(others) + b")" + keys if others else keys.lstrip()), uid
        if b"$" not in rest:
            return cmd, rest, uid
        saved = self.saved_uids()
        uid_set = uid_set_text(saved) if saved else NO_UID
        if name in _SET_COMMANDS:
            first, _, tail = rest.partition(b" ")
            if first == b"$":
                return cmd, uid_set + (b" " + tail if tail else b""), 1
            return cmd, rest, uid
        if name in _KEY_COMMANDS:
            rewritten, _ = _replace_dollar(rest, b"UID " + uid_set)
            return cmd, rewritten, uid
        return cmd, rest, uid
