# -*- test-case-name: tests.test_store_table -*-
"""
The messages of one Maildir folder in memory, one column per field.

Rules:

 - Rows are kept in ascending UID order; a row's position is its index in
   every column. A folder of 100,000 messages holds a few arrays and its
   base names as one block of octets (L{NameColumn}) instead of several
   Python objects per message: about 80 octets a message instead of 530,
   and a cold load builds the columns from the index file in one read
   each.
 - C{bits} holds, per message, the system flags (RFC 3501 §2.3.2: the
   Maildir info letters D F R S T) and where its file is: in C{new/}
   (L{NEW}), under a name that is not the canonical one (L{ODD}, the
   name then kept in C{odd}), present on disk at the last look
   (L{PRESENT}, used while loading).
 - Keywords are interned: a message holds the number of its keyword set
   in C{keyword_sets} (0: none). A folder has a handful of such sets.
 - Flag sets (system flags and keywords together, as L{MessageInfo}
   gives them) are shared frozensets: one per (system bits, keyword set).
 - A row's L{MessageInfo} is made each time it is asked for and not kept
   (100,000 of them are about 30 MB); what FETCH 1:* needs of every row
   is read from the columns (L{MessageTable.summary}) without one. A
   table that keeps them anyway (C{infos}, filled by its owner: the
   PostgreSQL folder cache) has the row's dropped when the row changes.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from typing import Iterable, NamedTuple

from twisted_mailhub.store.interfaces import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, MessageInfo

# Bits of a row's C{bits} octet.
SYSTEM_BITS = {DRAFT: 1, FLAGGED: 2, ANSWERED: 4, SEEN: 8, DELETED: 16}
SYSTEM_MASK = 31
SEEN_BIT = 8
NEW = 32  # the file is in new/
ODD = 64  # its name is not <base> (new/) or <base>:2,<letters> (cur/)
PRESENT = 128  # its file was found (while loading)

_LETTER_OF_BIT = {1: "D", 2: "F", 4: "R", 8: "S", 16: "T"}
SYSTEM_SETS: list[frozenset[str]] = [
    frozenset(flag for flag, bit in SYSTEM_BITS.items() if value & bit) for value in range(32)
]
SUFFIXES: list[str] = [":2," + "".join(_LETTER_OF_BIT[b] for b in (1, 2, 4, 8, 16) if value & b) for value in range(32)]
# Byte tables for bytes.translate, so that a walk over every row runs in C.
UNSEEN_TABLE = bytes(0 if value & SEEN_BIT else 1 for value in range(256))  # 1: no \Seen
IS_NEW = bytes(1 if value & NEW else 0 for value in range(256))
IS_PRESENT = bytes(1 if value & PRESENT else 0 for value in range(256))
SET_PRESENT = bytes(value | PRESENT for value in range(256))
CLEAR_PRESENT = bytes(value & ~PRESENT for value in range(256))

_EMPTY: frozenset[str] = frozenset()


def system_bits(flags: Iterable[str]) -> int:
    """The L{SYSTEM_BITS} of the system flags in C{flags} (others are ignored)."""
    value = 0
    for flag in flags:
        value |= SYSTEM_BITS.get(flag, 0)
    return value

class Row(NamedTuple):
    """
    A message as SEARCH reads it: a L{MessageInfo} without its key (the
    base name, which only a file's path needs), made in a quarter of the
    time and kept by nobody.
    """

    uid: int
    flags: frozenset[str]
    size: int
    internal_date: float


class NameColumn:
    """
    The base names of a table's rows as one block of octets: each name
    (UTF-8, file-system undecodable octets kept as they are, as
    C{os.fsencode} does) followed by a NUL (which no file name holds),
    and where each row's name starts.
    About 45 octets a name instead of a Python string and a list slot
    (about 100); C{names[i]} makes the string when asked. The starts are
    an C{array('I')} (4 octets a name) while the block is under 4 GiB,
    then C{array('Q')}.

    Names of removed rows stay in the block until they are as many as
    the live ones, then the block is written anew. An index's
    LF-joined names are kept as that one string until a name is first
    asked for (a SELECT needs none).
    """

    __slots__ = ("_blob", "_starts", "_dead", "_ordered", "_text", "_count")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._blob = bytearray()
        self._starts = array("I")
        self._dead = 0  # octets of names no row points to
        self._ordered = True  # the block is the rows' names in row order, nothing else
        self._text: str | None = None  # LF-joined names not yet turned into the block
        self._count = 0
        for name in names:
            self.append(name)

    @classmethod
    def from_text(cls, text: str, count: int) -> "NameColumn":
        """C{count} names joined by LF (as the index keeps them). C{ValueError} if they are not C{count}."""
        if (text.count("\n") + 1 if text else 0) != count:
            raise ValueError("index names do not match its rows")
        column = cls()
        if count:
            column._text, column._count = text, count
        return column

    def _unpack(self) -> None:
        # (the text's starts, if made, are replaced by the block's)
        text, self._text = self._text, None
        # Made at its size, the last NUL with the rest: a bytearray grown
        # by one octet takes an eighth more (0.5 MB for 100,000 names).
        blob = self._blob = bytearray((text + "\n").replace("\n", "\0").encode("utf-8", "surrogateescape"))
        # The starts: 0, then one past each NUL (sums run in C, no loop here).
        ends = itertools.accumulate(map((1).__add__, map(len, blob.split(b"\0")[:-1])))
        self._starts = _start_array(itertools.chain((0,), ends), len(blob))
        self._starts.pop()

    def __len__(self) -> int:
        return self._count if self._text is not None else len(self._starts)

    def _text_starts(self) -> array:
        """(while the names are the index's text) Where each name starts in it, and one past its end: a start more than names."""
        starts = self._starts
        if not starts:
            text = self._text
            ends = itertools.accumulate(map((1).__add__, map(len, text.split("\n"))), initial=0)
            starts = self._starts = _start_array(ends, len(text) + 1)
        return starts

    def __getitem__(self, i: int) -> str:
        text = self._text
        if text is not None:
            # Read from the index's text: made into the block only when a
            # name changes (a SEARCH that asks for paths changes none, and
            # a block beside the text it replaces took 3.8 MB more for
            # 100,000 names while it was made).
            starts = self._text_starts()
            count = self._count
            if i < 0:
                i += count
            if not 0 <= i < count:
                raise IndexError("name index out of range")
            return text[starts[i] : starts[i + 1] - 1]
        start = self._starts[i]
        blob = self._blob
        return blob[start : blob.index(0, start)].decode("utf-8", "surrogateescape")

    def __iter__(self):
        if self._text is not None:
            return iter(self._text.split("\n"))
        if self._ordered:
            return iter(self._blob[:-1].decode("utf-8", "surrogateescape").split("\0") if self._starts else ())
        return map(self.__getitem__, range(len(self._starts)))

    def __repr__(self) -> str:
        return f"NameColumn({list(self)!r})"

    def text(self) -> str:
        """The names joined by LF (as the index keeps them)."""
        if self._text is not None:
            return self._text
        return "\n".join(self)

    def _place(self, name: str) -> int:
        if self._text is not None:
            self._unpack()
        blob = self._blob
        start = len(blob)
        blob += name.encode("utf-8", "surrogateescape")
        blob.append(0)
        return start

    def _wide_enough(self, start: int) -> array:
        starts = self._starts
        if start > _MAX_NARROW and starts.typecode == "I":
            starts = self._starts = array("Q", starts)
        return starts

    def append(self, name: str) -> None:
        start = self._place(name)  # (first: it may make _starts)
        self._wide_enough(start).append(start)

    def insert(self, i: int, name: str) -> None:
        start = self._place(name)
        self._wide_enough(start).insert(i, start)
        if i < len(self._starts) - 1:
            self._ordered = False

    def __delitem__(self, i: int) -> None:
        if self._text is not None:
            self._unpack()
        starts = self._starts
        start = starts[i]
        self._dead += self._blob.index(0, start) + 1 - start
        del starts[i]
        if self._dead > len(self._blob) - self._dead:
            self._compact()
        else:
            self._ordered = False

    def subset(self, keep: list[int]) -> "NameColumn":
        """A new column of the names at C{keep}, in that order."""
        other = NameColumn()
        if self._text is not None:
            self._unpack()
        blob, starts = self._blob, self._starts
        parts = [blob[starts[i] : blob.index(0, starts[i]) + 1] for i in keep]
        other._blob = bytearray(b"".join(parts))
        other._starts = _start_array(itertools.accumulate(map(len, parts), initial=0), len(other._blob))
        other._starts.pop()
        return other

    def _compact(self) -> None:
        fresh = self.subset(range(len(self._starts)))
        self._blob, self._starts, self._dead, self._ordered = fresh._blob, fresh._starts, 0, True


# The largest start an array('I') holds: a block of 4 GiB or more takes array('Q').
_MAX_NARROW = 2**32 - 1


def _start_array(values: Iterable[int], size: int) -> array:
    """The starts C{values} (each below C{size}, the block's octets) as an C{array('I')}, or C{array('Q')} if they need it."""
    return array("I" if size <= _MAX_NARROW else "Q", values)


class MessageTable:
    """
    Rows of (UID, base name, size, internal date, flag bits, keyword set,
    mod-sequence) in ascending UID order.

    @ivar uids: C{array('I')}, ascending.
    @ivar names: the base names (the Maildir unique name, the message's
        key), a L{NameColumn}.
    @ivar infos: None, or per row its L{MessageInfo} or None, when the
        table's owner keeps them (never the Maildir store).
    @ivar sizes: C{array('Q')}, octets.
    @ivar dates: C{array('d')}, seconds since the epoch.
    @ivar bits: C{bytearray}: L{SYSTEM_BITS}, L{NEW}, L{ODD}, L{PRESENT}.
    @ivar kws: C{array('I')}: the row's keyword set, an index into C{keyword_sets}.
    @ivar modseqs: C{array('Q')}: the row's mod-sequence (RFC 7162), 1 if none given.
    @ivar odd: {UID: file name} of the rows with L{ODD}.
    @ivar by_base: {base name: UID}, made the first time it is asked for
        (a cold load that lists no directory needs none).
    """

    def __init__(self) -> None:
        self.uids = array("I")
        self.names = NameColumn()
        self.sizes = array("Q")
        self.dates = array("d")
        self.bits = bytearray()
        self.kws = array("I")
        self.modseqs = array("Q")
        self.odd: dict[int, str] = {}
        self._by_base: dict[str, int] | None = {}
        self.keyword_sets: list[frozenset[str]] = [_EMPTY]
        self._keyword_ids: dict[frozenset[str], int] = {_EMPTY: 0}
        self._flag_sets: dict[int, frozenset[str]] = {}
        self.infos: list[MessageInfo | None] | None = None

    def __len__(self) -> int:
        return len(self.uids)

    def set_names_text(self, text: str, count: int) -> None:
        """The names as one "\\n"-joined string (as an index keeps them). C{ValueError} if they are not C{count}."""
        self.names = NameColumn.from_text(text, count)

    @property
    def by_base(self) -> dict[str, int]:
        found = self._by_base
        if found is None:
            found = self._by_base = dict(zip(self.names, self.uids))
        return found

    @by_base.setter
    def by_base(self, value: dict[str, int] | None) -> None:
        self._by_base = value

    @property
    def by_base_if_made(self) -> dict[str, int] | None:
        """L{by_base} when it is made already (a scan that found new files makes it), else None: never made here."""
        return self._by_base

    # -- finding rows ------------------------------------------------------

    def position(self, uid: int) -> int:
        """The row of C{uid}, or -1."""
        uids = self.uids
        i = bisect.bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            return i
        return -1

    def keyword_id(self, keywords: frozenset[str]) -> int:
        """The number of a keyword set (interned: made the first time)."""
        found = self._keyword_ids.get(keywords)
        if found is None:
            found = self._keyword_ids[keywords] = len(self.keyword_sets)
            self.keyword_sets.append(keywords)
        return found

    def flags(self, i: int) -> frozenset[str]:
        """System flags and keywords of row C{i}, one shared frozenset per combination."""
        key = (self.kws[i] << 5) | (self.bits[i] & SYSTEM_MASK)
        found = self._flag_sets.get(key)
        if found is None:
            keywords = self.keyword_sets[key >> 5]
            system = SYSTEM_SETS[key & SYSTEM_MASK]
            found = self._flag_sets[key] = system | keywords if keywords else system
        return found

    def keywords(self, i: int) -> frozenset[str]:
        return self.keyword_sets[self.kws[i]]

    def info(self, i: int) -> MessageInfo:
        """Row C{i} as a L{MessageInfo}: the kept one if C{infos} has it, else a new one (not kept)."""
        infos = self.infos
        if infos is not None:
            found = infos[i]
            if found is not None:
                return found
        return MessageInfo(self.uids[i], self.names[i], self.flags(i), self.sizes[i], self.dates[i])

    def summary(self, i: int) -> tuple[frozenset[str], int, float]:
        """(flags, size in octets, internal date) of row C{i}: what FETCH 1:* asks of every row, without its name."""
        return self.flags(i), self.sizes[i], self.dates[i]

    def all_infos(self) -> list[MessageInfo]:
        """Every row's L{MessageInfo}, in UID order (a new list)."""
        infos = self.infos
        if infos is not None and None not in infos:
            return list(infos)
        info = self.info
        return [info(i) for i in range(len(self.uids))]

    def subdir(self, i: int) -> str:
        return "new" if self.bits[i] & NEW else "cur"

    def filename(self, i: int) -> str:
        bits = self.bits[i]
        if bits & ODD:
            return self.odd[self.uids[i]]
        if bits & NEW:
            return self.names[i]
        return self.names[i] + SUFFIXES[bits & SYSTEM_MASK]

    # -- changing rows -----------------------------------------------------

    def set_file(self, i: int, subdir: str, filename: str, system: int) -> None:
        """Row C{i}'s file is now C{subdir}/C{filename} with the system flag bits C{system}."""
        uid = self.uids[i]
        bits = (self.bits[i] & PRESENT) | system | (NEW if subdir == "new" else 0)
        canonical = self.names[i] if subdir == "new" else self.names[i] + SUFFIXES[system]
        if filename == canonical:
            self.odd.pop(uid, None)
        else:
            bits |= ODD
            self.odd[uid] = filename
        self.bits[i] = bits
        if self.infos is not None:
            self.infos[i] = None

    def set_keywords(self, i: int, keywords: frozenset[str]) -> None:
        self.kws[i] = self.keyword_id(keywords)
        if self.infos is not None:
            self.infos[i] = None

    def add(self, uid: int, base: str, size: int, date: float, keywords: frozenset[str], subdir: str, filename: str, system: int, modseq: int = 1) -> int:
        """Add a row (in its UID's place); returns its position."""
        uids = self.uids
        if not keywords and not system and subdir == "new" and filename == base and (not uids or uid > uids[-1]):
            # A message just delivered (new/, its plain name, no flags: one
            # per SMTP message): what the general case below does, inline.
            uids.append(uid)
            self.names.append(base)
            self.sizes.append(size)
            self.dates.append(date)
            self.bits.append(NEW)
            self.kws.append(0)  # (keyword set 0 is the empty one)
            self.modseqs.append(modseq)
            if self.infos is not None:
                self.infos.append(None)
            self.odd.pop(uid, None)
            if self._by_base is not None:
                self._by_base[base] = uid
            return len(uids) - 1
        if not uids or uid > uids[-1]:
            i = len(uids)
            uids.append(uid)
            self.names.append(base)
            self.sizes.append(size)
            self.dates.append(date)
            self.bits.append(0)
            self.kws.append(0)
            self.modseqs.append(modseq)
            if self.infos is not None:
                self.infos.append(None)
        else:
            i = bisect.bisect_left(uids, uid)
            uids.insert(i, uid)
            self.names.insert(i, base)
            self.sizes.insert(i, size)
            self.dates.insert(i, date)
            self.bits.insert(i, 0)
            self.kws.insert(i, 0)
            self.modseqs.insert(i, modseq)
            if self.infos is not None:
                self.infos.insert(i, None)
        self.kws[i] = self.keyword_id(keywords)
        self.set_file(i, subdir, filename, system)
        if self._by_base is not None:
            self._by_base[base] = uid
        return i

    def remove(self, positions: Iterable[int]) -> None:
        """Drop the rows at C{positions}."""
        positions = sorted(set(positions), reverse=True)
        if not positions:
            return
        for i in positions:
            if self._by_base is not None:
                self._by_base.pop(self.names[i], None)
            if self.bits[i] & ODD:
                self.odd.pop(self.uids[i], None)
        if len(positions) <= 64:
            columns = [self.uids, self.names, self.sizes, self.dates, self.bits, self.kws, self.modseqs]
            if self.infos is not None:
                columns.append(self.infos)
            for i in positions:
                for column in columns:
                    del column[i]
            return
        gone = set(positions)
        keep = [i for i in range(len(self.uids)) if i not in gone]
        self.take(keep)

    def subset(self, keep: list[int]) -> "MessageTable":
        """A new table of the rows at C{keep}, in that order (keyword sets shared)."""
        other = MessageTable()
        other.uids = array("I", [self.uids[i] for i in keep])
        other.names = self.names.subset(keep)
        other.sizes = array("Q", [self.sizes[i] for i in keep])
        other.dates = array("d", [self.dates[i] for i in keep])
        bits = self.bits
        other.bits = bytearray(bytes(bits[i] for i in keep))
        other.kws = array("I", [self.kws[i] for i in keep])
        other.modseqs = array("Q", [self.modseqs[i] for i in keep])
        kept = set(other.uids) if self.odd else ()
        other.odd = {uid: name for uid, name in self.odd.items() if uid in kept}
        other._by_base = None
        if self.infos is not None:
            other.infos = [self.infos[i] for i in keep]
        other.keyword_sets = self.keyword_sets
        other._keyword_ids = self._keyword_ids
        other._flag_sets = self._flag_sets
        return other

    def take(self, keep: list[int]) -> None:
        """Keep only the rows at C{keep}, in that order."""
        other = self.subset(keep)
        self.uids, self.names, self.sizes, self.dates = other.uids, other.names, other.sizes, other.dates
        self.bits, self.kws, self.modseqs, self.odd, self._by_base = other.bits, other.kws, other.modseqs, other.odd, None
        self.infos = other.infos

    def sort(self) -> None:
        """Put the rows in UID order (after rows were added out of order)."""
        uids = self.uids
        if all(map(operator.lt, uids, itertools.islice(uids, 1, None))):
            return
        order = sorted(range(len(uids)), key=uids.__getitem__)
        self.take(order)

    # -- what SELECT needs -------------------------------------------------

    def first_unseen(self) -> int:
        """The UID of the first row without \\Seen, 0 if none."""
        i = self.bits.translate(UNSEEN_TABLE).find(1)
        return self.uids[i] if i >= 0 else 0

    def keywords_in_use(self) -> frozenset[str]:
        ids = set(self.kws)
        return frozenset(k for i in ids for k in self.keyword_sets[i])
