# -*- test-case-name: tests.test_imap_server -*-
"""
The selected-mailbox view (RFC 3501 §5.2, §7.4.1): what one session has
been told about its selected folder, and the untagged responses that bring
it up to date.

Rules:

 - The view's list of UIDs is the session's message sequence numbers; it
   changes only when the client is told (C{EXISTS}, C{EXPUNGE}).
 - Changes made by others (delivery, another session, an outside program
   found by a directory scan) arrive through the folder's listener and wait
   here; L{SelectedFolder.untagged} turns them into C{EXPUNGE}, C{EXISTS},
   C{RECENT} and C{FETCH (FLAGS)} when the server may send them: before a
   command's tagged reply, at once while IDLE, and never C{EXPUNGE} during
   FETCH, STORE or SEARCH, so sequence numbers never shift under the client.
 - A session's own flag changes and expunges are told by the command that
   made them, not again here.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any, Iterator, Sequence

from twisted.mail import imap4

from twisted_mailhub.imap.condstore import has_modseqs, uid_set_text
from twisted_mailhub.imap.wire import BadSequence, flags_text
from twisted_mailhub.store.interfaces import SEEN, SYSTEM_FLAGS, NoSuchFolder, NoSuchMessage, StoreUnavailable

class SelectedFolder:
    """
    What one session has been told about its selected folder.
    """

    def __init__(self, session: Any, folder: Any, readonly: bool, opened: Any = None):
        """
        C{opened}: what the store already read for this SELECT in a worker
        thread (PostgreSQL's L{Opened<twisted_mailhub.store.postgresql.Opened>}:
        the \\Recent UIDs and the selection), so making the view reads
        nothing from the database; None to ask the folder.
        """
        self.session = session
        self.folder = folder
        self.readonly = readonly
        # EXAMINE shows \Recent but leaves it for the next SELECT (RFC 3501
        # §6.3.2: no change to the mailbox's state).
        if opened is not None:
            self.recent: set[int] = set(opened.recent)
        else:
            self.recent = set(folder.take_new() if not readonly else folder.recent())
        # \Recent claimed for messages not told yet (a store that tells its
        # listeners one message after another: PostgreSQL's push); moved to
        # C{recent} with their EXISTS, so RECENT never counts more than told.
        self.recent_untold: set[int] = set()
        self.keywords: set[str] = set()  # as told in the last FLAGS response
        # The sequence numbers: a list of UIDs ascending (an array('I') when
        # the store keeps one: copied in microseconds, 4 octets a message).
        self.uids: Any
        #: the sequence number of the first message without \Seen (0: none)
        self.first_unseen = 0
        selection = getattr(folder, "selection", None)
        if opened is not None or selection is not None:
            self.uids, first_unseen, keywords = opened.selection if opened is not None else selection()
            self.keywords.update(keywords)
            if first_unseen:
                self.first_unseen = self.seq_of(first_unseen)
        else:
            infos = folder.messages()
            self.uids = [info.uid for info in infos]
            flag_sets: set[frozenset] = set()  # the store shares them: few distinct
            for seq, info in enumerate(infos, 1):
                if not self.first_unseen and SEEN not in info.flags:
                    self.first_unseen = seq
                if info.flags not in flag_sets:
                    flag_sets.add(info.flags)
                    self.note_keywords(info.flags)
        self._added: set[int] = set()
        self._flags: set[int] = set()
        self._expunged: set[int] = set()
        folder.add_listener(self._changed)

    def note_keywords(self, flags: frozenset) -> bool:
        """
        Remember the keywords of a flag set; True if one was not yet in a
        FLAGS response (RFC 3501 §7.2.6: the client must hear FLAGS again
        before it sees the new keyword on a message).
        """
        fresh = [f for f in flags if not f.startswith("\\") and f not in self.keywords]
        if fresh:
            self.keywords.update(fresh)
            return True
        return False

    def flag_lines(self) -> list[bytes]:
        """The FLAGS response and PERMANENTFLAGS code for what is known now."""
        flag_list = b" ".join([f.encode() for f in SYSTEM_FLAGS] + sorted(k.encode("utf-8") for k in self.keywords))
        return [
            b"* FLAGS (" + flag_list + b")\r\n",
            # \* : clients may make new keywords (they are kept in the store).
            b"* OK [PERMANENTFLAGS ("
            + (b")] read-only (EXAMINE): flags cannot be changed" if self.readonly else flag_list + b" \\*)] flags and keywords are kept")
            + b"\r\n",
        ]

    def modseq_text(self, uid: int) -> bytes:
        """C{ MODSEQ (n)} for a FETCH response when the session wants it (RFC 7162 §3.1.4)."""
        if getattr(self.session, "condstore", False) and has_modseqs(self.folder):
            try:
                return b" MODSEQ (%d)" % self.folder.modseq(uid)
            except NoSuchMessage:
                return b""
        return b""

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
        except (OSError, StoreUnavailable):
            pass  # looked again at the next command

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
        self.recent_untold.discard(uid)
        self._flags.discard(uid)
        self._expunged.discard(uid)
        return seq

    def untagged(self, allow_expunge: bool) -> list[bytes]:
        """The untagged responses that bring the client up to date."""
        out: list[bytes] = []
        if allow_expunge and self._expunged:
            if getattr(self.session, "qresync", False):
                # RFC 7162 §3.2.10: VANISHED instead of EXPUNGE.
                vanished = [uid for uid in sorted(self._expunged) if self.forget(uid)]
                if vanished:
                    out.append(b"* VANISHED " + uid_set_text(vanished) + b"\r\n")
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
                try:
                    self.recent_untold.update(self.folder.take_new() if not self.readonly else self.folder.recent())
                except StoreUnavailable:
                    pass  # \Recent is told at the next chance; EXISTS now
                if any([self.note_keywords(self.folder.info(u).flags) for u in fresh]):
                    out.extend(self.flag_lines())
                self.uids.extend(fresh)
                told = self.uids[-1]
                now_told = [u for u in self.recent_untold if u <= told]
                self.recent.update(now_told)
                self.recent_untold.difference_update(now_told)
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
                if self.note_keywords(info.flags):
                    out.extend(self.flag_lines())
                out.append(b"* %d FETCH (UID %d FLAGS %s%s)\r\n" % (seq, uid, flags_text(info.flags, uid in self.recent), self.modseq_text(uid)))
            self._flags.clear()
        return out

    def resolve(self, messages: imap4.MessageSet, uid: bool) -> "Sequence[tuple[int, int]]":
        """
        (sequence number, UID) of every message a set names, ascending: a
        list, or for one range of messages (C{1:*}) a L{MessageRange}
        that makes them as they are walked.
        """
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
            # FETCH 1:* of 100,000 names every message: their UIDs copied
            # (as they are now), the pairs made as the walk goes.
            return MessageRange(i + 1, uids[i:j])
        picked = set()
        for i, j in spans:
            picked.update(range(i, j))
        return [(k + 1, uids[k]) for k in sorted(picked)]


class MessageRange:
    """
    The (sequence number, UID) pairs of consecutive messages, the first
    numbered C{first}, their UIDs in C{uids} (an C{array('I')} or a
    list, not changed after): a sequence made pair by pair as it is
    walked, as often as asked. FETCH 1:* of 100,000 messages held a list
    of 100,000 pairs (11 MB of tuples and integers at once), and the
    memory allocator kept most of the room they took after they were
    freed: the server's RSS stayed some 4 MB higher.
    """

    __slots__ = ("first", "uids")

    def __init__(self, first: int, uids: Any):
        self.first = first
        self.uids = uids

    def __len__(self) -> int:
        return len(self.uids)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(itertools.count(self.first), self.uids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            picked = range(len(self.uids))[index]
            if picked.step == 1:
                return MessageRange(self.first + picked.start, self.uids[picked.start : picked.stop])
            return [(self.first + k, self.uids[k]) for k in picked]
        k = range(len(self.uids))[index]  # (IndexError past either end)
        return (self.first + k, self.uids[k])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MessageRange, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"MessageRange({self.first}, {len(self.uids)} messages)"
