# -*- test-case-name: tests.test_pgstore -*-
"""
What a hub keeps in memory of one PostgreSQL folder: its messages as
columns (L{twisted_mailhub.store.table.MessageTable}) plus each one's
C{message} row id, read from the database in one round trip.

Rules:

 - A folder is loaded with one statement (L{SUMMARY}) that answers one row:
   the mailbox's C{highest_modseq} and every column of its messages
   aggregated in UID order, numbers as packed big-endian binary
   (C{int8send}/C{float8send} joined into one C{bytea}), keys and flags as
   one newline-joined text each. Python turns each into an C{array} in one
   call, not 100,000 rows of tuples and objects (bench/cluster.py: a cold
   SELECT + FETCH of 100,000 messages).
 - The mark and the rows come from the same statement, hence the same
   snapshot: a journal entry above the mark is not in the rows; one at or
   below it is.
 - Flags are kept as the table keeps them: system flags as bits (RFC 3501
   §2.3.2), keywords as an interned set number. A folder has a handful of
   distinct flag texts, each parsed once.
 - A row never replaces a newer one (a higher modseq), so applying
   journal entries out of order still ends at the database's state.
"""

from __future__ import annotations

import bisect
import gc
import sys
from array import array
from typing import Any, Iterable, Iterator

from twisted_mailhub.store.interfaces import MessageInfo, NoSuchMessage
from twisted_mailhub.store.table import SUFFIXES, MessageTable, system_bits

# The mark and the columns of one mailbox (parameter: its id); no row if
# the mailbox is gone. Each aggregate is NULL for an empty mailbox.
SUMMARY = """
SELECT m.highest_modseq, s.n, s.uids, s.keys, s.sizes, s.dates, s.ids, s.modseqs, s.flags
FROM mailbox m, LATERAL (
    SELECT count(*) AS n,
           string_agg(int8send(uid), ''::bytea) AS uids,
           string_agg(key, E'\\n') AS keys,
           string_agg(int8send(size::int8), ''::bytea) AS sizes,
           string_agg(float8send(internal_date), ''::bytea) AS dates,
           string_agg(int8send(message_id), ''::bytea) AS ids,
           string_agg(int8send(modseq), ''::bytea) AS modseqs,
           string_agg(array_to_string(flags || keywords, ' '), E'\\n') AS flags
    FROM (SELECT * FROM mailbox_message WHERE mailbox_id = m.id ORDER BY uid) mm
) s
WHERE m.id = %s
"""

# Single rows (parameters: the mailbox id, then whatever the caller adds):
# UID, key, flags and keywords joined by spaces (IMAP flags are atoms), size,
# internal date, message id, modseq.
ROWS = (
    "SELECT uid, key, array_to_string(flags || keywords, ' '), size, internal_date, message_id, modseq"
    " FROM mailbox_message WHERE mailbox_id = %s"
)

_SWAP = sys.byteorder == "little"


def _packed(typecode: str, data: bytes | None) -> array:
    """An array of C{typecode} (8-octet items) from big-endian packed C{data}."""
    column = array(typecode)
    if data:
        column.frombytes(data)
        if _SWAP:
            column.byteswap()
    return column


_flag_sets: dict[str, frozenset[str]] = {}


def flag_set(text: str) -> frozenset[str]:
    """The flag set of a space-separated text, one shared object per distinct set."""
    found = _flag_sets.get(text)
    if found is None:
        found = frozenset(text.split())
        if len(_flag_sets) < 10_000:
            _flag_sets[text] = found
    return found


def _keywords(flags: frozenset[str]) -> frozenset[str]:
    return frozenset(f for f in flags if not f.startswith("\\"))


class FolderCache(MessageTable):
    """
    The rows of one folder in UID order, as L{MessageTable} columns, plus
    C{message_ids} (C{array('q')}: each row's C{message} id, for its bytes).
    """

    def __init__(self) -> None:
        MessageTable.__init__(self)
        self.message_ids = array("q")
        self._hint = -1  # the row last found by row()

    @classmethod
    def from_summary(cls, row: Any) -> "FolderCache":
        """
        A cache from the columns of a L{SUMMARY} row (everything after its
        mark): count, UIDs, keys, sizes, dates, message ids, modseqs, flags.
        Raises C{ValueError} if the columns do not agree in length.
        """
        count, uids, keys, sizes, dates, ids, modseqs, flags = row
        table = cls()
        if not count:
            return table
        table.uids = array("I", _packed("q", uids))
        table.set_names_text(keys, count)
        table.sizes = _packed("Q", sizes)
        table.dates = _packed("d", dates)
        table.message_ids = _packed("q", ids)
        table.modseqs = _packed("Q", modseqs)
        texts = flags.split("\n")
        if not (len(table.uids) == len(table.sizes) == len(table.dates) == len(table.message_ids) == len(table.modseqs) == len(texts) == count):
            raise ValueError("folder summary columns differ in length")
        bits: dict[str, int] = {}
        kws: dict[str, int] = {}
        for text in set(texts):
            parsed = flag_set(text)
            bits[text] = system_bits(parsed)
            kws[text] = table.keyword_id(_keywords(parsed))
        table.bits = bytearray(map(bits.__getitem__, texts))
        table.kws = array("I", map(kws.__getitem__, texts))
        table.by_base = None  # made when first asked for
        return table

    # -- reading -------------------------------------------------------

    def row(self, uid: int) -> int:
        """
        The position of C{uid}; L{NoSuchMessage} if it is not here. A walk
        up the folder (FETCH 1:*) finds each next row without a search.
        """
        uids = self.uids
        i = self._hint + 1
        if i < len(uids) and uids[i] == uid:
            self._hint = i
            return i
        i = self.position(uid)
        if i < 0:
            raise NoSuchMessage(uid)
        self._hint = i
        return i

    def info_of(self, uid: int) -> MessageInfo:
        """The L{MessageInfo} of C{uid}; L{NoSuchMessage} if it is not here."""
        # row(), written out: FETCH 1:* of 100,000 messages asks this of
        # every one, and a warm FETCH is little else.
        uids = self.uids
        i = self._hint + 1
        if i >= len(uids) or uids[i] != uid:
            i = self.position(uid)
            if i < 0:
                raise NoSuchMessage(uid)
        self._hint = i
        infos = self.infos
        if infos is None:
            if i == 0:
                # A walk from the first row (FETCH 1:*): all of them at once.
                return self.all_infos()[0]
            return self.info(i)
        return infos[i] or self.info(i)

    def all_infos(self) -> list[MessageInfo]:
        """Every row's L{MessageInfo}, in UID order (a new list), made in one pass when none are yet."""
        if self.infos is None and self.uids:
            # One map in C over the columns, the collector held off while
            # 100,000 objects that refer to nothing new are made.
            flags = self.flags
            collecting = gc.isenabled()
            gc.disable()
            try:
                self.infos = list(map(MessageInfo, self.uids, self.names, map(flags, range(len(self.uids))), self.sizes, self.dates))
            finally:
                if collecting:
                    gc.enable()
        return MessageTable.all_infos(self)

    def message_of(self, uid: int) -> tuple[int, int]:
        """(message id, size) of C{uid}; L{NoSuchMessage} if it is not here."""
        i = self.row(uid)
        return self.message_ids[i], self.sizes[i]

    def following(self, uid: int) -> Iterator[tuple[int, int, int]]:
        """(UID, message id, size) of each row above C{uid}, ascending."""
        uids, ids, sizes = self.uids, self.message_ids, self.sizes
        for i in range(bisect.bisect_right(uids, uid), len(uids)):
            yield uids[i], ids[i], sizes[i]

    # -- changing ------------------------------------------------------

    def put(self, uid: int, key: str, flags: frozenset[str], size: int, date: float, message_id: int, modseq: int) -> bool:
        """
        Add or update the row of C{uid} unless a newer one (higher
        C{modseq}) is here already: a row already here takes only the new
        flags and modseq (a message's other fields never change). True if
        the row changed.
        """
        system = system_bits(flags)
        keywords = _keywords(flags)
        i = self.position(uid)
        if i >= 0:
            if self.modseqs[i] > modseq:
                return False
            self.bits[i] = system
            self.modseqs[i] = modseq
            self.set_keywords(i, keywords)
            return True
        i = self.add(uid, key, size, date, keywords, "cur", key + SUFFIXES[system], system, modseq)
        if i == len(self.message_ids):
            self.message_ids.append(message_id)
        else:
            self.message_ids.insert(i, message_id)
        return True

    def drop(self, uids: Iterable[int]) -> bool:
        """Remove the rows of C{uids} (those not here are ignored). True if any went."""
        positions = sorted({i for i in map(self.position, uids) if i >= 0})
        if not positions:
            return False
        if len(positions) <= 64:
            for i in reversed(positions):
                del self.message_ids[i]
        else:
            gone = set(positions)
            self.message_ids = array("q", [m for i, m in enumerate(self.message_ids) if i not in gone])
        self.remove(positions)
        return True
