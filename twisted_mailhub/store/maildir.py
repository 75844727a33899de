# -*- test-case-name: tests.test_store -*-
"""
The Maildir++ store: one Maildir per account at C{DATA/mail/<domain>/<localpart>/}.

Rules (everything that changes the on-disk layout lives in this module):

 - INBOX is the account's top Maildir; folder C{Work/Projects} is the
   Maildir++ sub-folder C{.Work.Projects}. A C{.} or C{%} inside a name part
   is stored as C{%2E} / C{%25} so that names map back one to one.
 - A message file holds the message exactly as a client receives it (CRLF
   line ends), so its size on the wire is its size on disk. Delivered files
   are named C{<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>} (the Maildir unique
   name plus the Maildir++ size); the part before C{:2,} (the base name)
   never changes and is the message's key (POP3 UIDL).
 - Flags are the Maildir info letters after C{:2,}: D Draft, F Flagged,
   R Answered, S Seen, T Deleted. Keywords are kept in the UID list.
 - Each folder has a UID list, C{mailhub-uidlist}: a header line
   C{mailhub-uidlist 1 <uidvalidity> <uidnext>}, then one line per message
   C{<uid> <basename> <size> <internal date> [keyword...]}. New UIDs are
   appended. A keyword change appends the message's line again, not
   synced (a keyword is kept like a flag in a file name, whose rename is
   not synced either): the last line of a message wins. An expunge
   leaves the lines of the removed messages (a line whose file is gone
   is forgotten at load, and still keeps its UID from being given
   again). The list is rewritten (tmp + fsync + rename) once such
   repeated and dead lines outnumber the messages (plus
   L{EXTRA_LINES_SLACK}).
 - In memory a folder is a L{MessageTable}: columns (arrays) in UID
   order, not objects per message.
 - C{mailhub-index} beside it is a cache of the list's parse (marshal:
   the octets of the list it covers and their BLAKE2b digest, UIDNEXT,
   the table's columns for every message listed, where each file was at
   the load that wrote it, and the mod-sequences of the first octets of
   the modseq log with their digest), written after a load that parsed,
   listed or appended at least L{INDEX_MIN_LINES} lines. A cold load uses
   it only if its digest matches the list's first octets, and then
   parses only the lines appended after them; anything else (a rewrite,
   a line changed in place, a crash's NULs, a damaged index) means a full
   parse. It is never synced: the list stays the authority.
 - The index also keeps the mtimes of C{new/} and C{cur/} as they were
   at that load's look, if they had not changed for L{SETTLED} seconds
   before it (so that no later change can share the mtime). A cold load
   lists only a directory whose mtime is not the one kept (as Dovecot
   trusts its index): every file that enters, leaves or is renamed in a
   directory moves its mtime. Lines listed after the index are checked
   by the listing only.
 - A UID is durable before anything tells it to anyone: delivery and
   APPEND reserve the UID, and the group commit appends its line and
   flushes it together with the message (no flush of its own); the
   message is announced (listeners, APPENDUID, SMTP 250) only after.
   A line whose message never arrived (a crash, a failed write) is
   forgotten at the next load; its UID is never given again.
 - A damaged list (a torn last line, a run of NUL bytes that a power cut
   left where an append had not reached the disk, a line that does not
   parse) keeps its good lines and its UIDVALIDITY: messages it no longer
   lists get new UIDs above UIDNEXT, and the list is rewritten clean.
   Only a list that is truly lost (missing, or its header unreadable)
   means UIDs assigned anew with a new UIDVALIDITY.
 - Files that appear in C{new/} or C{cur/} by other means (an outside MDA,
   a restore) get UIDs the next time the folder is looked at; files that
   vanish are reported as expunged.
 - Such a file is listed at its name's C{S=} without being read (as
   Dovecot does: the first index of a big Maildir reads no message), and
   is I{checked} when its size or octets are first needed (a size told,
   a body read): made CRLF in place if another MDA stored bare LFs (its
   size then the size on the wire), and its size as downgraded noted if
   its header is 8-bit. C{mailhub-unchecked} keeps, across restarts, the
   base names not checked yet and what checks found that the list does
   not say (a corrected size, a downgraded size), and is fsynced before
   the list names an unchecked file. A list written before that file
   existed has each entry whose name is not one this hub gives checked
   the same way. A file without C{S=} is read when found.
 - An expunge renames the message's file into C{tmp/} under a name of
   this process (gone from C{new/} and C{cur/} for every reader at once)
   and unlinks it there in a worker thread: freeing a file's blocks can
   wait on the file system's journal, and the reactor does not wait.
 - C{tmp/} is cleaned when the hub starts and every hour
   (L{clean_tmp}): a file that a process of this host left there and
   that process is gone is removed at once (a crash cut its write short;
   it was never acknowledged); anything older than 36 hours is removed
   whoever wrote it (the Maildir convention's limit).
 - Writes that are acknowledged to a client (delivery, APPEND, COPY) go
   through L{GroupCommitWriter}: fsynced before their Deferred fires. Flag
   renames are not fsynced: losing a flag change in a power cut is the
   trade every Maildir server makes.
"""

from __future__ import annotations

import bisect
import errno
import gc
import hashlib
import itertools
import json
import marshal
import os
import re
import socket
import stat
import threading
import time
from array import array
from collections import deque
from functools import partial
from typing import Any, Iterable, Iterator, NamedTuple

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mailhub.errorwords import error_words
from twisted_mailhub.heap import give_back_memory  # (after a big folder's load; tests replace it here)
from twisted_mailhub.store.base import (
    DELIMITER,
    Listeners,
    apply_flags,
    normalize_folder_name,
    renamed_subscriptions,
    split_flags,
)
from twisted_mailhub.store import shared
from twisted_mailhub.store.table import (
    CLEAR_PRESENT,
    IS_NEW,
    IS_PRESENT,
    NEW,
    ODD,
    PRESENT,
    SET_PRESENT,
    SUFFIXES,
    SYSTEM_MASK,
    MessageTable,
    NameColumn,
    Row,
    system_bits,
)
from twisted_mailhub.store.durable import GroupCommitWriter, Record, append_lines, flush_written, fsync_directory
from twisted_mailhub.store.smallfiles import SmallFiles, write_temporary
from twisted_mailhub.store.wireform import WireForms
from twisted_mailhub.store.interfaces import (
    is_not_writable,
    not_writable_reason,
    DELETED,
    DRAFT,
    FLAGGED,
    INBOX,
    SEEN,
    ANSWERED,
    BadFolderName,
    FolderChange,
    FolderExists,
    IFolder,
    IMailAccount,
    IMailStore,
    IModSeqFolder,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
    StoreUnavailable,
    storage_error,
)

log = Logger()

UIDLIST = "mailhub-uidlist"
# The parse of the UID list, cached (see L{_read_index}).
INDEX = "mailhub-index"
INDEX_MIN_LINES = 1000  # UID-list lines parsed at a load that make an index worth writing
EXTRA_LINES_SLACK = 1000  # repeated lines (keyword changes) allowed beyond one per message
_INDEX_VERSION = 3
SETTLED = 1.0  # seconds a directory must have been unchanged before a look for the index to trust its mtime (many clock ticks)
SUBSCRIPTIONS = "subscriptions"
# A RENAME under way: {"old", "new", "pid", "boot"}, written durably before
# its first directory moves and removed with the new subscriptions' flush;
# found at an account's open, the RENAME is finished (MaildirAccount._redo_rename).
RENAMING = "mailhub-renaming"
MODSEQ_LOG = "mailhub-modseq"  # "<uid> <modseq>" per change, last wins (RFC 7162)
MODSEQ_PENDING_MAX = 65536  # --workers: modseqs kept for messages not known yet (MaildirFolder._catch_up_modseqs)
UIDVALIDITY_FILE = "mailhub-uidvalidity"  # the account's highest UIDVALIDITY so far
# Files another program put in, listed with their name's S= on trust and
# not read yet, and what reading them found (see MaildirFolder._check).
UNCHECKED = "mailhub-unchecked"
# A folder DELETE renamed aside, its files being removed (MaildirAccount.delete_folder).
DELETED_PREFIX = "mailhub-deleted."
# --workers: a UID list (and UIDVALIDITY) one process made at a load and
# has not flushed yet, "<pid> <boot id>". Another process that loads the
# folder meanwhile flushes it itself before it tells its UIDs
# (MaildirFolder._settle_unflushed); the maker removes it after its flush.
UNFLUSHED = "mailhub-uidlist.unflushed"
# --workers: files another program put in that one process has numbered
# (shared UIDs) and whose UID-list lines it flushes in a worker thread,
# "<pid> <boot id> <folder object> <base name>" a line. Until that process takes them out
# (after the flush), no other process numbers such a file itself nor
# shows it (its line may be in the list, not durable yet); a process that
# loads the folder meanwhile flushes the list itself before it tells its
# UIDs. Advisory: never synced; lines of a process that is gone count for
# nothing (MaildirFolder._claim_found, _claimed_elsewhere).
CLAIMS = "mailhub-uidlist.claims"
_UNCHECKED_HEADER = "mailhub-unchecked 2\n"
# The last line of a whole mailhub-unchecked (version 2): the file is
# written without a flush (a finding lost is only made again), so a crash
# can leave it empty or cut; without this line it is not trusted, and the
# files another program put in are checked again (a name missing from a
# cut file would otherwise be taken as checked). Version 1 files have none.
_UNCHECKED_END = "end\n"
_UNCHECKED_OLD_HEADER = "mailhub-unchecked 1\n"
# The names this hub gives (unique_name): its own files are CRLF and their
# S= is their size; any other name in a list written before the checks
# were kept is checked once (a bare-LF file listed at its LF size).
_OWN_NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.[^,:]*,S=\d+(?:,D=\d+)?\Z")
SAVE_CHECKS_EVERY = 1000  # single checks between two writes of the unchecked file
_SHOWN_FIELD = re.compile(r",D=[0-9]+")  # (a base name's size as downgraded: _shown_size_field)
_LETTERS = {"D": DRAFT, "F": FLAGGED, "R": ANSWERED, "S": SEEN, "T": DELETED}
_FLAG_LETTER = {flag: letter for letter, flag in _LETTERS.items()}
_counter = itertools.count(1)


def _safe_hostname(name: str) -> str:
    # Maildir spec: '/' and ':' in the host part are written as octal escapes.
    return name.replace("/", "\\057").replace(":", "\\072")


def unique_name(size: int, hostname: str | None = None, now: float | None = None) -> str:
    """
    A new Maildir file name (without info) for a message of C{size} octets.
    """
    now = time.time() if now is None else now
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    host = _safe_hosts.get(hostname) if hostname else None
    if host is None:
        host = _safe_hostname(hostname or socket.gethostname())
        if hostname and len(_safe_hosts) < 64:
            _safe_hosts[hostname] = host
    return f"{sec}.M{usec}P{_pid[0]}Q{next(_counter)}.{host},S={size}"


# Host names as they appear in file names (_safe_hostname), once each.
_safe_hosts: dict[str, str] = {}


# This process's id, asked once (and again in a child after a fork): the
# Maildir name of every message carries it.
_pid = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _shown_size_field(message: bytes) -> str:
    """
    C{",D=<octets>"} for a message whose headers a client without
    UTF8=ACCEPT sees downgraded (RFC 6857): that size, beside C{S=}, so
    RFC822.SIZE needs no read (imap/utf8.py); C{""} for ASCII mail (one
    scan).
    """
    if message.isascii():
        return ""
    from twisted_mailhub.imap.utf8 import shown_size_field  # 8-bit mail only

    return shown_size_field(message)


_EMPTY: frozenset[str] = frozenset()
_flag_sets: dict[str, frozenset[str]] = {}


def parse_info(filename: str) -> tuple[str, frozenset[str]]:
    """
    (base name, system flags) of a Maildir file name. Flag sets are shared
    between messages (a folder of 100,000 messages has a handful of them).
    """
    base, sep, info = filename.partition(":")
    if not sep or not info.startswith("2,"):
        return base, _EMPTY
    flags = _flag_sets.get(info)
    if flags is None:
        flags = _flag_sets[info] = frozenset(_LETTERS[c] for c in info[2:] if c in _LETTERS)
    return base, flags


_names: dict[str, tuple[frozenset[str], bool]] = {}


def split_name(filename: str) -> tuple[str, frozenset[str], bool]:
    """
    (base name, system flags, whether the name is the canonical one for a
    file in C{cur/}: C{<base>:2,<letters in order>}) of a Maildir file name.
    """
    base, sep, info = filename.partition(":")
    if not sep:
        return base, _EMPTY, False
    known = _names.get(info)
    if known is None:
        flags = parse_info(filename)[1]
        known = (flags, ":" + info == info_suffix(flags))
        if len(_names) < 4096:
            _names[info] = known
    return base, known[0], known[1]


_suffixes: dict[frozenset[str], str] = {}


def info_suffix(flags: Iterable[str]) -> str:
    if isinstance(flags, frozenset):
        suffix = _suffixes.get(flags)
        if suffix is None:
            suffix = ":2," + "".join(sorted(_FLAG_LETTER[f] for f in flags if f in _FLAG_LETTER))
            if len(_suffixes) < 4096:
                _suffixes[flags] = suffix
        return suffix
    return ":2," + "".join(sorted(_FLAG_LETTER[f] for f in flags if f in _FLAG_LETTER))


def _size_from_name(base: str) -> int | None:
    """The C{S=} size of a Maildir base name, or None."""
    for part in base.split(",")[1:]:
        if part.startswith("S="):
            digits = part[2:]
            return int(digits) if digits.isascii() and digits.isdigit() else None
    return None


def _date_from_name(base: str) -> float | None:
    head = base.split(".", 1)[0]
    # (str.isdigit() is also true of "²" and other non-ASCII digits, which
    # float() refuses: a file named so by another program is no date)
    return float(head) if head.isascii() and head.isdigit() else None


def encode_folder(name: str) -> str:
    """C{Work/Projects} -> C{.Work.Projects} (the Maildir++ directory name)."""
    parts = [p.replace("%", "%25").replace(".", "%2E") for p in name.split(DELIMITER)]
    return "." + ".".join(parts)


def decode_folder(dirname: str) -> str:
    parts = dirname[1:].split(".")
    return DELIMITER.join(p.replace("%2E", ".").replace("%25", "%") for p in parts)


def _parse_header(line: bytes) -> tuple[int, int] | None:
    """(UIDVALIDITY, UIDNEXT) of a UID list's first line, or None."""
    try:
        words = line.decode("ascii").split()
        if len(words) != 4 or words[0] != UIDLIST:
            return None
        validity, uid_next = int(words[2]), int(words[3])
    except (UnicodeDecodeError, ValueError):
        return None
    return (validity, uid_next) if validity > 0 and uid_next > 0 else None


def _parse_line(line: bytes) -> tuple[int, str, int, float, frozenset[str]] | None:
    """(uid, base name, size, internal date, keywords) of one list line, or None."""
    try:
        fields = line.decode("utf-8").split(" ")
        if len(fields) < 4 or b"\0" in line:
            return None
        uid, base, size, date = int(fields[0]), fields[1], int(fields[2]), float(fields[3])
    except (UnicodeDecodeError, ValueError):
        return None
    if uid <= 0 or size < 0 or not base or "/" in base or any(not k for k in fields[4:]):
        return None
    return uid, base, size, date, frozenset(fields[4:])


def _format_line(uid: int, base: str, size: int, date: float, keywords: Iterable[str]) -> str:
    words = [str(uid), base, str(size), str(int(date))]
    words.extend(sorted(keywords))
    return " ".join(words) + "\n"


_new_row = tuple.__new__


class _IndexState(NamedTuple):
    """
    The UID list as this load left it on disk: its length, its octets (the
    list read, then what the first scan appended: hashed only if the index
    is written), its UIDNEXT, the work done.
    """

    length: int
    chunks: list[bytes]
    uid_next: int
    lines: int  # list lines parsed and files listed at this load


def _digest(data) -> Any:
    """A BLAKE2b hash (128 bits) fed with C{data}: more can be added with update()."""
    return hashlib.blake2b(data, digest_size=16)


class _Index(NamedTuple):
    """What L{_read_index} found good in C{mailhub-index}."""

    length: int  # octets of the UID list it covers
    uid_next: int
    rows: MessageTable  # every message the list names, with its file as last seen
    mtimes: tuple[int, int] | None  # new/ and cur/ when their files were last seen (settled), or None
    modseq_length: int  # octets of the modseq log its modseqs cover; -1: none
    highest_modseq: int


def _read_index(path: str, uidlist: bytes, modlog: bytes) -> _Index | None:
    """
    The index at C{path} if it describes a prefix of C{uidlist} (a BLAKE2b
    digest of exactly the octets it covers: a list rewritten, cut short or
    overwritten by a crash no longer matches, and is parsed in full); None
    otherwise. Its mod-sequences are used only if it describes a prefix of
    the modseq log C{modlog} the same way.
    """
    try:
        with open(path, "rb") as f:
            value = marshal.loads(f.read())
        (version, length, digest, uid_next, mtimes, mod_length, mod_digest, highest,
         uids, names, sizes, dates, bits, kws, modseqs, keyword_sets, odd) = value
        if version != _INDEX_VERSION or not 0 < length <= len(uidlist) or uidlist[length - 1 : length] != b"\n":
            return None
        if _digest(memoryview(uidlist)[:length]).digest() != digest:
            return None
        rows = MessageTable()
        rows.uids.frombytes(uids)
        rows.set_names_text(names, len(rows.uids))
        rows.sizes.frombytes(sizes)
        rows.dates.frombytes(dates)
        rows.bits = bytearray(bits)
        rows.kws.frombytes(kws)
        n = len(rows.uids)
        if any(len(column) != n for column in (rows.sizes, rows.dates, rows.bits, rows.kws)):
            return None
        for words in keyword_sets[1:]:
            rows.keyword_id(frozenset(words))
        if len(rows.keyword_sets) != len(keyword_sets) or (n and max(rows.kws) >= len(keyword_sets)):
            return None
        rows.odd = dict(odd)
        if not (0 <= mod_length <= len(modlog) and _digest(memoryview(modlog)[:mod_length]).digest() == mod_digest):
            mod_length = -1
        if mod_length >= 0:
            rows.modseqs.frombytes(modseqs)
            if len(rows.modseqs) != n:
                return None
        else:
            rows.modseqs = array("Q", [1]) * n
            highest = 0
        rows.by_base = None  # made if asked for
        rows.sort()
        return _Index(length, uid_next, rows, tuple(mtimes) if mtimes else None, mod_length, highest)
    except (OSError, EOFError, ValueError, TypeError, IndexError):
        return None


class _Entry:
    """
    A message being written (its UID reserved, its line on the way to the
    list): what it will be once it arrives.
    """

    __slots__ = ("info", "subdir", "filename", "keywords", "modseq")

    def __init__(self, info: MessageInfo, subdir: str, filename: str, keywords: frozenset[str]):
        self.info = info
        self.subdir = "new" if subdir == "new" else "cur"
        self.filename = filename
        self.keywords = keywords
        self.modseq = 0  # under --workers: given with its UID (MaildirFolder._number_records)


_split_cache: dict[str, tuple[int, bool]] = {}


def _split(filename: str) -> tuple[str, int, bool]:
    """
    (base name, system flag bits, whether the name is the canonical one for
    a file in C{cur/}: C{<base>:2,<letters in order>}) of a Maildir file name.
    """
    base, sep, info = filename.partition(":")
    if not sep:
        return base, 0, False
    known = _split_cache.get(info)
    if known is None:
        system = system_bits(parse_info(filename)[1])
        known = (system, ":" + info == SUFFIXES[system])
        if len(_split_cache) < 4096:
            _split_cache[info] = known
    return base, known[0], known[1]


def _modseq_log_ranges(data: bytes) -> Iterator[tuple[int, int, int]]:
    """
    The whole lines of a modseq log (C{b"UID MODSEQ"} or
    C{b"LOUID:HIUID MODSEQ"}, one per line) as C{(lo_uid, hi_uid, modseq)};
    a torn last line (no newline) and a malformed line are skipped.
    C{lo_uid} 0 is a line that only raises the highest modseq.
    """
    for line in data.split(b"\n")[:-1]:
        fields = line.split()
        if len(fields) != 2:
            continue  # a torn line
        lo, colon, hi = fields[0].partition(b":")
        try:
            lo_uid, value = int(lo), int(fields[1])
            hi_uid = int(hi) if colon else lo_uid
        except ValueError:
            continue
        yield lo_uid, hi_uid, value


@implementer(IFolder, IModSeqFolder)
class MaildirFolder:
    """
    One Maildir: its messages in memory (L{MessageTable}), kept in step
    with the directory.
    """

    # A message's size as a session without UTF8=ACCEPT sees it is kept in
    # its file name (",D=", imap/utf8.shown_size_field), read by shown_sizes.
    shown_sizes_in_names = True

    def __init__(self, name: str, path: str, writer: GroupCommitWriter, hostname: str, validity_path: str | None = None, sync_later: SmallFiles | None = None):
        self.name = name
        # (a folder being made, CREATE: its new files are flushed by
        # sync_later, off the reactor, before the CREATE is answered)
        self._sync_later = sync_later
        # The account's SmallFiles, kept after the load: what a later look
        # or a rewrite of the list flushes goes through it, off the reactor.
        self._flusher = sync_later
        # Flushes of the lines of files a look found (_hold_found,
        # _settle_found), not done yet: (flush, its waiters), for unsettled().
        self._rewriting = False  # a rewrite of the list on its way (_rewrite_uidlist)
        self._rewrite_tries = 0
        self._rewrite_flight: defer.Deferred | None = None
        self._holding: list[tuple[defer.Deferred, list[defer.Deferred]]] = []
        self.creation_flush: defer.Deferred | None = None
        # While a list made or rewritten at this load (creation_flush) is
        # not on disk yet: the Deferreds waiting for it (unsettled()).
        self._settling: list[defer.Deferred] | None = None
        self.validity_path = validity_path
        self._recent: set[int] = set()  # IMAP \Recent, beside what is in new/
        self.directory = path
        self._uidlist_file = os.path.join(path, UIDLIST)
        self.writer = writer
        self.hostname = hostname
        self._listeners = Listeners()
        self._table = MessageTable()
        # Bumped by every change of the messages or their flags: what
        # selection() computed stays good while it is unchanged.
        self._changes = 0
        # (--workers) another process made this folder again: see made_again
        self.made_again_elsewhere = False
        self._counted: tuple[int, int, int] | None = None  # (_changes, messages, unseen): counts()
        self._selection: tuple | None = None
        self._dir_mtimes: tuple[int, int] | None = None
        # Entries of new/ and cur/ found not to be files (a FIFO): logged once.
        self._not_files: set[str] = set()
        # Messages a move of this process has claimed (L{copy_for_move}):
        # UID -> (the file's place before, its claimed name in tmp/).
        self._moving: dict[int, tuple[str, str]] = {}
        # Moves waiting for those claims to end: UID -> Deferreds.
        self._claim_waiters: dict[int, list[defer.Deferred]] = {}
        # Messages being written: UID reserved, line on its way to the list.
        self._pending: dict[str, _Entry] = {}
        # (mtimes before, mtimes after) of each of our own renames into
        # place, made by the group commit's thread (L{_place}).
        self._placed: deque = deque()
        # Modseq log lines of delivered messages not appended yet
        # (_bump_arrived); under --workers, their UIDs.
        self._arrivals: list = []
        # Held by every writer of the UID list (the group commit's worker
        # thread appends to it); under --workers, by every process's
        # (store/shared.py).
        self._shared = shared.ENABLED
        self._claimer = f"{os.getpid()}.{next(_counter)}"  # (this folder object, in L{CLAIMS})
        self._uidlist_lock: Any = threading.Lock()
        # Lines of the list that repeat a message or name one that is gone
        # (see _keywords_changed, _rewrite_uidlist_after_removal).
        self._extra_lines = 0
        self._list_lines = 0  # message lines of the list read at the load
        self._hint = 0  # the row info() found last: FETCH 1:* asks in order
        self._wire_forms: WireForms | None = None  # POP3's cache, made when first asked for
        self._compacting = False  # a compaction of the modseq log on its way (_compact_modseq_log)
        self._modseq_write_lock: Any = None  # (made when first needed: _modseq_lock)
        # Base names listed on trust, not read yet; what checks found
        # (base -> (size, size as downgraded or 0)); see _check.
        self._unchecked: set[str] = set()
        self._kept: dict[str, tuple[int, int]] = {}
        self._checks_unsaved = 0
        self._legacy = False  # a list from before mailhub-unchecked: its outside names get checked
        # (of those, names shaped like the hub's own: only their first
        # 4 KiB are read first, in _check_in_thread's thread)
        self._suspects: set[str] = set()
        self._unchecked_elsewhere: set[str] = set()  # (--workers) read by _reread_unchecked
        self._checked_here: set[str] = set()  # (--workers) names this process checked
        self.uid_validity = 0
        self.uid_next = 1
        # A folder an older version left half made (cur/ without new/ or
        # tmp/, no UID list) is repaired here when it can be written, else
        # read as it is and repaired at its first write (L{_repair}).
        self._unrepaired: OSError | None = None
        # A folder the hub may not write (EACCES, EPERM, EROFS): said once
        # in the log (L{_say_not_writable}); the UIDs in new/ given as
        # \Recent to a session already (L{take_new} cannot move them).
        self._said_not_writable = False
        self._given_in_new: set[int] = set()
        self._repair_flush: defer.Deferred | None = None  # (L{_write_repair}'s, while on its way)
        # (--workers, a folder read as it is) Seconds until the second its
        # UIDVALIDITY names begins, when the load came before it
        # (L{_agreed_uid_validity}); then, until the look that agrees
        # (L{_agree_later}), the writes waiting for it.
        self._agree_in = 0.0
        self._agreeing: list[defer.Deferred] | None = None
        self._refused = False  # (that look refused the load: the account opens the folder afresh)
        for sub in ("cur", "new", "tmp"):
            try:
                os.makedirs(os.path.join(path, sub), exist_ok=True)
            except OSError as e:
                if not self._may_read_unrepaired(e):
                    raise
                self._unrepaired = e
        # The load: the list's rows (self._rows, from the index and the
        # lines after it), their mod-sequences, then the first look at the
        # directories turns the rows whose files are there into the table.
        if self._shared:
            self._uidlist_lock = shared.FolderLock(path)
            self._elsewhere: dict[str, tuple] = {}  # other processes' lines, file not seen yet
            self._list_position = shared.ListPosition()
            # (a file dropped in before this first load is numbered by it,
            # and that catches up with the modseq log: from its start)
            self._modseq_position = shared.ListPosition()
            self._from_log: set[int] = set()  # UIDs whose modseq another process logged (this look)
            # Modseqs another process logged for messages this one does not
            # know yet (their line comes before their file): UID -> value.
            self._modseq_pending: dict[int, int] = {}
            with self._uidlist_lock:
                self._load()
                if self._unrepaired is not None and self._agree_in:
                    self._agree_later(self._agree_in)
                elif self._unrepaired is not None:
                    self._check_agreed()
                elif self._settling is None:
                    self._settle_unflushed()
                self._list_position = shared.ListPosition.now(self._uidlist_path())
                self._modseq_position = shared.ListPosition.now(self._modseq_path())
            shared.opened(self)
        else:
            self._load()
        if self._unrepaired is None and not os.access(self.directory, os.W_OK):
            self._say_not_writable(OSError(errno.EROFS if _read_only_mount(self.directory) else errno.EACCES, "", self.directory))
        if self._unchecked and self._flusher is not None:
            self._check_in_thread()
        if len(self._table) >= INDEX_MIN_LINES:
            give_back_memory()

    def _load(self) -> None:
        modlog = self._read_modseq_log()
        self._load_uidlist(modlog)
        self._apply_modseq_log(modlog)
        del modlog
        self._scan_folder()
        self._after_load_checks()
        if self._extra_lines == 0:  # (not rewritten clean by the load)
            self._extra_lines = max(0, self._list_lines - len(self._table))
        self._write_index()
        self._rows = self._dead = None
        # The {base name: UID} table the load may have made (lines after
        # the index) is a passing one: 100,000 names are about 14 MB. A
        # later look at the directories makes it again if it needs it.
        self._table.by_base = None

    # -- the UID list ---------------------------------------------------

    def _uidlist_path(self) -> str:
        return self._uidlist_file

    def _load_uidlist(self, modlog: bytes) -> None:
        self._rows = MessageTable()
        self._dead: MessageTable | None = None
        self._index_state: _IndexState | None = None
        self._index: _Index | None = None
        self._modseq_covered = -1
        try:
            with open(self._uidlist_path(), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._new_uid_validity_or_read_as_is()
            return
        self._read_unchecked()
        header = _parse_header(data.split(b"\n", 1)[0])
        if header is None:
            log.warn("UID list of {path} unreadable: UIDs assigned anew with a new UIDVALIDITY", path=self.directory)
            self._new_uid_validity_or_read_as_is()
            return
        self.uid_validity, self.uid_next = header
        self._list_lines = data.count(b"\n") - 1
        # The index holds the parse of a prefix of this very list (checked
        # by its digest): only what was appended after it is parsed here.
        start = 0
        index = _read_index(os.path.join(self.directory, INDEX), data, modlog)
        if index is not None:
            start = index.length
            self._rows = index.rows
            self._index = index
            self._modseq_covered = index.modseq_length
            self.uid_next = max(self.uid_next, index.uid_next)
        rows = self._rows
        lines = data[start:].split(b"\n")
        body = lines[1:-1] if start == 0 else lines[:-1]
        # Whatever follows the last LF is a torn append (or NULs).
        dropped = 1 if lines[-1].strip(b"\0") else 0
        damaged = bool(lines[-1])
        by_base: dict[str, int] | None = None
        unsorted = False
        listed_uids: set[int] | None = None  # made when a UID comes out of order
        for raw in body:
            line = raw.strip(b"\0")
            if len(line) != len(raw):
                damaged = True
            parsed = _parse_line(line)
            if parsed is None:
                dropped += 1 if line else 0
                damaged = True
                continue
            uid, base, size, date, keywords = parsed
            i = -1 if unsorted else rows.position(uid)
            if i >= 0 and rows.names[i] == base:
                # The same message under the same UID again: a keyword
                # change, and the last line wins.
                rows.set_keywords(i, keywords)
                continue
            if by_base is None:
                by_base = rows.by_base  # (100,000 names: made only when needed)
            listed = by_base.get(base)
            if listed is not None:
                if listed != uid:
                    # A message listed under a second UID: the first stands.
                    dropped += 1
                    damaged = True
                    continue
                # The same message under the same UID again: a keyword
                # change, and the last line wins.
                rows.set_keywords(rows.uids.index(uid) if unsorted else rows.position(uid), keywords)
                continue
            if rows.uids and uid <= rows.uids[-1]:
                if listed_uids is None:
                    listed_uids = set(rows.uids)
                if uid in listed_uids:
                    # A UID given to two messages: the first stands.
                    dropped += 1
                    damaged = True
                    continue
                unsorted = True
            if listed_uids is not None:
                listed_uids.add(uid)
            rows.uids.append(uid)
            rows.names.append(base)
            rows.sizes.append(size)
            rows.dates.append(date)
            rows.bits.append(0)
            rows.kws.append(rows.keyword_id(keywords) if keywords else 0)
            rows.modseqs.append(1)
            by_base[base] = uid
            if uid >= self.uid_next:
                self.uid_next = uid + 1
        if unsorted:
            rows.sort()
        if damaged:
            log.warn(
                "UID list of {path} was damaged (a torn or zero-filled end, as a crash leaves): "
                "kept {kept} entries and UIDVALIDITY {validity}, dropped {dropped} line(s); "
                "messages no longer listed get new UIDs from {uid_next}",
                path=self.directory,
                kept=len(rows),
                validity=self.uid_validity,
                dropped=dropped,
                uid_next=self.uid_next,
            )
            # Clean before anything is appended to it again (flushed off the
            # reactor when the account's SmallFiles is given: unsettled()).
            later = self._sync_later
            self._write_uidlist_text([self._row_line(rows, i) for i in range(len(rows))], sync=later is None)
            if later is not None:
                self._settle_with(later.sync_files([self._uidlist_path()], [self.directory]))
            self._index = None
        else:
            # Remember the octets the rows describe: the index, if worth writing.
            self._index_state = _IndexState(len(data), [data], self.uid_next, len(body))

    def _write_index(self) -> None:
        """
        Save the rows of the UID list as it is on disk now (the lines
        loaded plus those the first scan appended), with where their files
        were at the first look, to C{mailhub-index}. A cache only: not
        synced; a failure to write it is ignored. The directories' mtimes
        go with it only when they had not changed for a while before the
        look: a later change within the file system's clock tick could
        not be told apart otherwise.
        """
        state, self._index_state = self._index_state, None
        if state is None or state.lines < INDEX_MIN_LINES:
            return
        table, dead = self._table, self._dead
        mtimes = self._look_mtimes
        if mtimes is not None and self._look_time - max(mtimes) / 1e9 < SETTLED:
            mtimes = None
        try:
            bits = table.bits.translate(SET_PRESENT)
            modlog_length, modlog_digest = self._modseq_log_state()
            columns = [table.uids, table.names, table.sizes, table.dates, bits, table.kws, table.modseqs]
            if dead is not None and len(dead):
                dead_bits = dead.bits.translate(CLEAR_PRESENT)
                dead_kws = array("I", [table.keyword_id(dead.keyword_sets[k]) for k in dead.kws])
                dead_columns = [dead.uids, list(dead.names), dead.sizes, dead.dates, dead_bits, dead_kws, dead.modseqs]
                columns[1] = list(table.names)
                columns = [a + b for a, b in zip(columns, dead_columns)]
                # In UID order, so that a load need not sort them.
                order = sorted(range(len(columns[0])), key=columns[0].__getitem__)
                columns = [
                    bytearray(bytes(column[i] for i in order)) if isinstance(column, bytearray)
                    else array(column.typecode, [column[i] for i in order]) if isinstance(column, array)
                    else [column[i] for i in order]
                    for column in columns
                ]
            uids, names, sizes, dates, bits, kws, modseqs = columns
            odd = dict(table.odd)
            if dead is not None:
                odd.update(dead.odd)
            text = marshal.dumps(
                (
                    _INDEX_VERSION,
                    state.length,
                    _digest(b"".join(state.chunks) if len(state.chunks) > 1 else state.chunks[0]).digest(),
                    max(state.uid_next, self.uid_next),
                    mtimes,
                    modlog_length,
                    modlog_digest,
                    self.highest_modseq,
                    uids.tobytes(),
                    names.text() if isinstance(names, NameColumn) else "\n".join(names),
                    sizes.tobytes(),
                    dates.tobytes(),
                    bytes(bits),
                    kws.tobytes(),
                    modseqs.tobytes(),
                    [sorted(k) for k in table.keyword_sets],
                    odd,
                )
            )
            tmp = os.path.join(self.directory, INDEX + ".tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(text)
                os.replace(tmp, os.path.join(self.directory, INDEX))
            except OSError:
                _unlink_quietly(tmp)  # (a full disk: a partial index would keep it full)
                raise
        except (OSError, ValueError) as e:
            log.debug("index of {path} not written: {error}", path=self.directory, error=error_words(e, paths=False))

    def _say_not_writable(self, error: OSError) -> None:
        """
        One log line for a folder the hub may not write (C{error}: EACCES,
        EPERM or EROFS), at its load: it is read as it is, and every
        write to it is refused (L{NotWritable}: IMAP NO [NOPERM], POP3
        -ERR [SYS/PERM], FTP 550).
        """
        if self._said_not_writable:
            return
        self._said_not_writable = True
        log.warn(
            "{path}: the hub may not write this folder ({why}): read as it is; nothing in it can be changed (no delivery, APPEND, flag, EXPUNGE) until its owner or mount lets the hub write",
            path=self.directory, why=not_writable_reason(error),
        )

    def _may_read_unrepaired(self, error: BaseException) -> bool:
        """
        Whether a folder whose load could not write what it lacks (C{error}:
        a full disk or quota, a read-only file system) is read as it is,
        its UIDs kept in memory until a write can repair it (L{_repair}):
        only when the folder is there (its cur/ or new/). Under --workers
        too: see L{_agreed_uid_validity} for how the processes agree.
        """
        error = error.__cause__ if isinstance(error, StoreError) and isinstance(error.__cause__, OSError) else error
        return (
            isinstance(error, OSError)
            and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
            and any(os.path.isdir(os.path.join(self.directory, sub)) for sub in ("cur", "new"))
        )

    def _new_uid_validity_or_read_as_is(self) -> None:
        """
        L{_new_uid_validity}; when its list cannot be written (a full disk,
        a read-only file system), the folder is read without it: its UIDVALIDITY
        and UIDs in memory, as Dovecot keeps an index it cannot write in
        memory, and written, the same, by the first write (L{_repair}).
        After a restart before that, a new UIDVALIDITY is chosen (the clock
        has moved on): a client sees the UIDs it was shown were not kept.
        """
        try:
            self._new_uid_validity()
        except (OSError, StoreError) as e:
            if not self._may_read_unrepaired(e):
                raise
            self._unrepaired = e.__cause__ if isinstance(e, StoreError) and isinstance(e.__cause__, OSError) else e
            self.uid_next = 1
            if self._shared:
                self._agreed_uid_validity()
            self._settling = None
            self.creation_flush = None
            if is_not_writable(self._unrepaired):
                self._said_not_writable = True
                log.warn(
                    "{path}: the hub may not write this folder ({error}): read as it is, UIDVALIDITY {validity} kept in memory; nothing in it can be changed (no delivery, APPEND, flag, EXPUNGE) until its owner or mount lets the hub write",
                    path=self.directory, error=error_words(self._unrepaired), validity=self.uid_validity,
                )
            else:
                log.warn(
                    "{path}: its UID list cannot be written ({error}): read as it is, UIDVALIDITY {validity} kept in memory until a write can repair it",
                    path=self.directory, error=error_words(self._unrepaired), validity=self.uid_validity,
                )

    def _repair_shared(self, quietly: bool) -> None:
        """
        (--workers, under the folder's lock) L{_repair}: the lock file is
        made first (it excludes the other processes from here on). When
        another process repaired the folder meanwhile, its list is taken
        (the same UIDs: L{_agreed_uid_validity}; another UIDVALIDITY ends
        this folder object, L{made_again}) and nothing is written.
        """
        try:
            self._uidlist_lock.require()
            if os.path.exists(self._uidlist_path()):
                self._unrepaired = None
                self._list_position = shared.ListPosition()  # (read whole)
                self._dir_mtimes = None
                self._scan_folder(True)
                # The other worker's list may not be flushed yet (its
                # UNFLUSHED marker): flushed from here too, off the
                # reactor, and the write that needed it waits for that.
                kept, self._sync_later = self._sync_later, self._flusher
                try:
                    self._settle_unflushed()
                finally:
                    self._sync_later = kept
                if self._settling is not None and self.creation_flush is not None:
                    flush = self._repair_flush = self.creation_flush

                    def flushed(result: Any) -> Any:
                        if self._repair_flush is flush:
                            self._repair_flush = None
                        return result

                    flush.addBoth(flushed)
                return
            self._write_repair()
        except (OSError, StoreError) as e:
            if isinstance(e, NoSuchFolder) or not quietly:
                raise storage_error(e) if not isinstance(e, StoreError) else e
            return
        self._list_position = shared.ListPosition.now(self._uidlist_path())
        self._unrepaired = None
        self._dir_mtimes = None
        self._save_unchecked()
        log.info("{path}: repaired (UID list written, UIDVALIDITY {validity})", path=self.directory, validity=self.uid_validity)

    def _agreed_uid_validity(self) -> None:
        """
        (--workers) The UIDVALIDITY of a folder read as it is, chosen so
        that every process that shows it shows the same UIDs: nothing is
        written to agree on, so each numbers the files of its load in the
        same order (arrival, then name), and the UIDVALIDITY is a second
        in which the folder did not change (its directories' ctime before
        it). Two processes whose loads saw different files saw a change
        between them, at or after that second, and the later one finds it
        (L{_check_agreed}). When the folder changed this very second, the
        files must be listed once the second it names has begun: in a
        running hub the load lists them now and L{_agree_later} lists them
        again then, off the reactor (C{_agree_in}: the seconds to wait);
        without a reactor (a script) this waits here, at most a second.
        Files found after the load are not numbered here (another process
        could number them otherwise): they are shown once the folder is
        repaired (L{_repair}).
        """
        changed = self._newest_change()
        now = time.time()
        wait = 0.0
        if self.uid_validity > int(now) and self.uid_validity - now < 2:
            wait = self.uid_validity - now  # (the second it names must begin before the listing)
        elif changed >= self.uid_validity:
            wait = changed + 1 - now if changed + 1 > now else 0
            self.uid_validity = max(self.uid_validity, changed + 1)
        if wait <= 0:
            return
        reactor = getattr(self.writer, "reactor", None)
        if self._flusher is not None and getattr(reactor, "running", False):
            self._agree_in = wait
        else:
            time.sleep(wait)  # (no reactor turns: no other session waits)

    def _newest_change(self) -> int:
        """The second of the newest change to the folder's new/ and cur/ (their directories' ctime); 0 without either."""
        subdirs = [os.path.join(self.directory, sub) for sub in ("new", "cur") if os.path.isdir(os.path.join(self.directory, sub))]
        return int(max((os.stat(d).st_ctime for d in subdirs), default=0))

    def _check_agreed(self) -> None:
        """
        (--workers, after the load of a folder read as it is) Raises a
        temporary L{StoreError} when the folder changed at or after the
        second its UIDVALIDITY names, or that second had not begun: another
        process could show that UIDVALIDITY with other UIDs. The next open
        reads it again.
        """
        if self._newest_change() >= self.uid_validity or time.time() < self.uid_validity:
            # (StoreUnavailable: a temporary refusal, IMAP NO [UNAVAILABLE],
            # POP3 -ERR [SYS/TEMP], the web 503)
            raise StoreUnavailable(f"{self.name} changed while it was read; try again")

    def _agree_later(self, wait: float) -> None:
        """
        (--workers, a folder read as it is, loaded before the second its
        UIDVALIDITY names: L{_agreed_uid_validity}) In C{wait} seconds,
        list new/ and cur/ again in a worker thread: the same messages as
        the load's and no change since that second began
        (L{_check_agreed}), so the UIDs shown agree with every other
        process's. Meanwhile the folder is unsettled (L{unsettled}:
        SELECT, STATUS, a POP3 login and the web wait) and a write waits
        (L{_repaired_then}); the reactor goes on. Otherwise they fail with
        L{StoreUnavailable} (IMAP NO [UNAVAILABLE]), and the account opens
        the folder afresh at its next use (C{_refused}).
        """
        self._agree_in = 0.0
        self._agreeing = waiting = []
        reactor = self.writer.reactor
        directory = self.directory
        listed = set(self._table.names) | {_split(f)[0] for f in self._not_files}

        def look() -> tuple[set[str], int]:
            names: set[str] = set()
            for sub in ("new", "cur"):
                try:
                    names.update(_split(f)[0] for f in os.listdir(os.path.join(directory, sub)) if not f.startswith("."))
                except FileNotFoundError:
                    pass
            return names, self._newest_change()

        def agreed(found: tuple[set[str], int]) -> None:
            names, changed = found
            if names != listed or changed >= self.uid_validity or time.time() < self.uid_validity:
                raise StoreUnavailable(f"{self.name} changed while it was read; try again")

        def done(result: Any) -> Any:
            self._agreeing = None
            if isinstance(result, Failure):
                self._refused = True
                log.info("{path}: changed while it was read as it is: opened again at its next use", path=directory)
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            return result

        # (a hundredth more: the reactor's clock and time.time() agree that the second has begun)
        checked = task.deferLater(reactor, wait + 0.01, self._flusher.in_thread, look).addCallback(agreed).addBoth(done)
        self._hold(checked)
        checked.addErrback(lambda _: None)  # (told to every waiter, and logged once)

    def _write_repair(self) -> None:
        """
        The writes of L{_repair}: new/ and tmp/, the account's UIDVALIDITY
        counter, the UID list. With the store's SmallFiles (a running hub)
        they are flushed in a worker thread, not in the reactor: the
        counter and the list, then the folder's directory; the folder is
        settling meanwhile (L{unsettled}, L{_settle_with}; under --workers
        the other processes are told, L{UNFLUSHED}), and every write that
        depends on it waits for that flush before it starts
        (L{_after_repair}). Without (a script), each is fsynced here.
        Raises C{OSError} or L{StoreError}.
        """
        later = self._flusher
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.directory, sub), exist_ok=True)
        _remember_uid_validity(self.validity_path, max(self.uid_validity, _last_uid_validity(self.validity_path)), sync=later is None)
        self._write_uidlist(sync=later is None)
        if later is None:
            fsync_directory(self.directory)
            return
        flush = later.sync_files([p for p in (self.validity_path, self._uidlist_path()) if p], [self.directory])
        self._repair_flush = flush

        def flushed(result: Any) -> Any:
            if self._repair_flush is flush:
                self._repair_flush = None
            return result

        flush.addBoth(flushed)
        # (_settle_with marks the list for the other workers through the
        # load's SmallFiles, which a loaded folder lets go: lent back here)
        kept, self._sync_later = self._sync_later, later
        try:
            self._settle_with(flush, mark=self._shared)
        finally:
            self._sync_later = kept
        # (the writes that waited were told; this is the one log line)
        flush.addErrback(lambda failure: log.warn("{path}: its repair was not flushed ({error}): the writes that needed it failed", path=self.directory, error=error_words(failure.value)))

    def _after_repair(self, write: Any, *args: Any) -> defer.Deferred | None:
        """
        None when no repair's flush is on its way (L{_write_repair}); else
        a Deferred of C{write(*args)} called once it is done (the repair
        durable before the write that depends on it), or failing with the
        flush's error (and C{write} never called).
        """
        if self._repair_flush is None or self._settling is None:
            return None
        waiter = defer.Deferred()
        self._settling.append(waiter)
        return waiter.addCallback(lambda _: write(*args))

    def _repaired_then(self, write: Any, *args: Any) -> defer.Deferred | None:
        """
        Before a write that needs the folder whole: repair it (L{_repair})
        if it was read as it is. None when the write may go on now; else a
        Deferred failing with the repair's error (L{InsufficientStorage},
        C{OSError}, L{StoreError}), or of C{write(*args)} called once the
        repair's flush is done (L{_after_repair}).
        """
        if self._agreeing is not None:
            # (the processes agree on its UIDs first: under a second)
            agreed = defer.Deferred()
            self._agreeing.append(agreed)
            return agreed.addCallback(lambda _: write(*args))
        if self._unrepaired is not None:
            try:
                self._repair()
            except (OSError, StoreError) as e:
                return defer.fail(e)
        return self._after_repair(write, *args)

    def _repair(self, quietly: bool = False) -> None:
        """
        Write what a folder read as it is lacks (L{_unrepaired}): new/ and
        tmp/, the account's UIDVALIDITY counter and the UID list, with the
        UIDVALIDITY and UIDs already shown, each durable before the write
        that needed it goes on. Raises L{InsufficientStorage} or
        C{OSError} when it still cannot be written (unless C{quietly}:
        then the folder stays read as it is); L{StoreUnavailable} while
        the processes have not agreed on its UIDs yet (L{_agree_later}:
        under a second).
        """
        if self._unrepaired is None:
            return
        if self._agreeing is not None:
            if quietly:
                return
            raise StoreUnavailable(f"{self.name} is being read; try again")
        if self._shared:
            with self._uidlist_lock:
                return self._repair_shared(quietly)
        try:
            self._write_repair()
        except (OSError, StoreError) as e:
            if quietly:
                return
            raise storage_error(e) from e
        self._unrepaired = None
        self._dir_mtimes = None  # (new/ may be new: the next look lists both)
        self._save_unchecked()
        log.info("{path}: repaired (UID list written, UIDVALIDITY {validity})", path=self.directory, validity=self.uid_validity)

    def _new_uid_validity(self) -> None:
        # A lost list must not come back with the UIDVALIDITY it had
        # (RFC 3501 §2.3.1.1): that was given when the list was made, and
        # every later change to new/ or cur/ moved their ctime past it.
        # An empty folder is simply new: the time will do.
        # (a half-made folder may lack new/: L{_unrepaired})
        subdirs = [os.path.join(self.directory, sub) for sub in ("new", "cur") if os.path.isdir(os.path.join(self.directory, sub))]
        latest = 0
        if any(os.listdir(d) for d in subdirs):
            latest = int(max(os.stat(d).st_ctime for d in subdirs)) + 1
        self.uid_validity = max(int(time.time()), latest, self.uid_validity + 1, _last_uid_validity(self.validity_path) + 1)
        later = self._sync_later
        _remember_uid_validity(self.validity_path, self.uid_validity, sync=later is None)
        self.uid_next = 1
        self._write_uidlist(sync=later is None)
        # A new list: its unchecked file says so (none yet, and none of
        # an older list's), so no later load takes it for one from before.
        self._save_unchecked()
        # The list's name must survive a crash: UIDs are appended to it.
        if later is None:
            fsync_directory(self.directory)
        else:
            # A folder being made: the counter, the list and the folder's
            # directory are flushed in a worker thread (three fsyncs in
            # the reactor a CREATE, fifteen at a first login), and the
            # CREATE is answered after them (MaildirAccount.durable).
            self._settle_with(later.sync_files([p for p in (self.validity_path, self._uidlist_path()) if p], [self.directory]))
        if not len(self._table) and not self._pending:
            header = f"{UIDLIST} 1 {self.uid_validity} {self.uid_next}\n".encode("ascii")
            self._index_state = _IndexState(len(header), [header], self.uid_next, 0)

    def _settle_with(self, flush: defer.Deferred, mark: bool = True) -> None:
        """
        The list (and UIDVALIDITY) this load made is on disk once C{flush}
        fires: kept as C{creation_flush} for the account's C{durable()},
        and what L{unsettled} gives until then. Under --workers, with
        C{mark}, the other processes are told too (L{UNFLUSHED}).
        Raises L{StoreError} when the marker cannot be written.
        """
        self.creation_flush = flush
        self._settling = []
        later, marker = self._sync_later, None
        if self._shared and mark and later is not None:
            # (under the folder's lock: no other process loads it before
            # the marker is there)
            marker = os.path.join(self.directory, UNFLUSHED)
            try:
                with open(marker, "w", encoding="ascii") as f:
                    f.write(f"{os.getpid()} {_boot_id()}\n")
            except OSError as e:
                raise storage_error(e) from e

        def done(result: Any) -> Any:
            waiting, self._settling = self._settling or [], None
            for d in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if marker is not None and not isinstance(result, Failure):
                later.remove(marker).addErrback(lambda _: None)  # (a marker left only costs a flush a load)
            return result

        flush.addBoth(done)

    def _settle_unflushed(self) -> None:
        """
        (--workers, at a load, under the folder's lock) When another
        process made this folder's UID list and has not flushed it yet
        (L{UNFLUSHED}), flush it from here too, off the reactor, and tell
        nothing of it before (L{unsettled}): a crash must not take back a
        UIDVALIDITY or UIDs this process showed. A marker from an earlier
        boot names a list read from the disk: it is removed.
        """
        marker = os.path.join(self.directory, UNFLUSHED)
        try:
            with open(marker, encoding="ascii", errors="replace") as f:
                words = f.read().split()
        except FileNotFoundError:
            # Files another process numbered and is flushing the lines of
            # (L{CLAIMS}): those lines may be in the list read here.
            if not self._claimed_elsewhere():
                return
            words = None
        except OSError:
            words = []
        if words is not None and len(words) == 2 and words[1] != _boot_id():
            try:
                os.unlink(marker)
            except OSError:
                pass
            return
        files = [p for p in (self._uidlist_path(), self.validity_path) if p]
        later = self._sync_later
        if later is None:
            for path in files:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_directory(self.directory)
            return
        self._settle_with(later.sync_files(files, [self.directory]), mark=False)

    def unsettled(self) -> defer.Deferred | None:
        """
        None once this folder's UID list and UIDVALIDITY are durable (always,
        but for a while after a load that made the list: a new folder, or a
        list lost or damaged and made again, flushed off the reactor) and
        no file another program put in waits for its line's flush (a look
        is made first: L{_hold_found}, L{_settle_found}); else
        a Deferred that fires then (or fails with the flush's error). Nothing
        that shows or promises its UIDs is told before (design rule 6):
        L{deliver} and L{append} wait for it, IMAP SELECT/EXAMINE/STATUS too.
        """
        if self._unrepaired is not None:
            self._repair(quietly=True)  # (at an open, once there is room again)
        if not self._holding:
            try:
                self._scan()  # (files found now are held until durable: waited for too)
            except (StoreError, OSError):
                pass  # (told by the command that reads the folder)
        if self._settling is None and not self._holding:
            return None
        d = defer.Deferred()
        if self._settling is not None:
            self._settling.append(d)
        if not self._holding:
            return d
        holding = []
        for _, waiters in self._holding:
            waiters.append(defer.Deferred())
            holding.append(waiters[-1])
        if self._settling is not None:
            holding.append(d)
        both = defer.gatherResults(holding, consumeErrors=True)
        both.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return both

    def _after_settled(self, d: defer.Deferred) -> defer.Deferred:
        """C{d}'s result once it fires and the list is durable (L{unsettled})."""
        pending = self.unsettled()
        if pending is None:
            return d
        both = defer.gatherResults([d, pending], consumeErrors=True)
        both.addCallbacks(lambda results: results[0], lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
        return both

    def _row_line(self, table: MessageTable, i: int) -> str:
        return _format_line(table.uids[i], table.names[i], table.sizes[i], table.dates[i], table.keywords(i))

    def _uidlist_line(self, entry: _Entry) -> str:
        info = entry.info
        return _format_line(info.uid, info.key, info.size, info.internal_date, entry.keywords)

    def _write_uidlist(self, sync: bool = True) -> None:
        """
        Rewrite the list from the table (and the UIDs being written), fsynced
        (without C{sync}, the caller flushes it).
        Raises L{InsufficientStorage} or C{OSError}; the old list then stays.
        """
        if self._shared:
            # The group commit's thread numbers messages under this lock:
            # their lines are read with it held (one not numbered yet has
            # no line yet, and gets it in the new list).
            with self._uidlist_lock:
                self._write_uidlist_from_table(sync)
            return
        self._write_uidlist_from_table(sync)

    def _write_uidlist_from_table(self, sync: bool = True) -> None:
        table = self._table
        lines = [(table.uids[i], self._row_line(table, i)) for i in range(len(table))]
        lines.extend((e.info.uid, self._uidlist_line(e)) for e in list(self._pending.values()) if e.info.uid)
        if self._pending:
            lines.sort()
        self._write_uidlist_text([line for _, line in lines], sync)

    def _keywords_changed(self, positions: list[int]) -> None:
        """
        Record new keywords by appending the messages' lines again (the
        loader takes a message's last line), without a flush: like a flag
        rename, a keyword change lost in a power cut is the Maildir trade,
        and a torn tail is dropped at load. (Rewriting and fsyncing the
        whole list on every keyword STORE was the hub's top cost under a
        mixed IMAP load.) The list is rewritten once the repeated lines
        outnumber the messages. Raises as L{_write_uidlist} does.
        """
        self._extra_lines += len(positions)
        if self._extra_lines > len(self._table) + EXTRA_LINES_SLACK and self._rewrite_uidlist():
            return
        data = "".join(self._row_line(self._table, i) for i in positions).encode("utf-8")
        try:
            with self._uidlist_lock:
                os.close(append_lines(self._uidlist_path(), data, sync=False))
        except OSError as e:
            raise storage_error(e) from e

    def _write_uidlist_text(self, lines: list[str], sync: bool = True) -> None:
        tmp = self._uidlist_path() + ".tmp"
        with self._uidlist_lock:
            if self._shared:
                # Other processes' lines for messages still on their way stay.
                shared.catch_up(self, _parse_line)
                lines = shared.merged_lines(self, lines, _format_line)
            text = f"{UIDLIST} 1 {self.uid_validity} {self.uid_next}\n" + "".join(lines)
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                    # Synced: after an expunge this header's UIDNEXT is what
                    # keeps the expunged UIDs from being given again after a
                    # crash.
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, self._uidlist_path())
                if sync:
                    # The name too: appends after this go to the new file,
                    # and must not be lost with a rename a crash undid.
                    fsync_directory(self.directory)
                self._extra_lines = 0
            except OSError as e:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise storage_error(e) from e
            if self._shared:
                self._list_position = shared.ListPosition.now(self._uidlist_path())

    def _rewrite_uidlist(self) -> bool:
        """
        Rewrite the list to drop its repeated and dead lines. With the
        account's L{SmallFiles}: the text is made here, from the table
        (under --workers with the other processes' lines it does not know,
        under the folder's lock), and written to a tmp file,
        fsynced, renamed over the list and its directory fsynced in a
        worker thread (an fsync in the reactor stalls every session), with
        the list's lock held from the check to the directory's flush, so
        no line the group commit appends (and acknowledges) goes to a file
        that is not durably the list. Lines appended after the text was
        made (a stream of deliveries) are carried over after it, under
        that lock; if another process rewrote the list meanwhile, the
        rewrite is made again in the thread, and after a few such tries
        left for the next change (the list is right either way): never in
        the reactor. Without a L{SmallFiles}, rewritten here
        (L{_write_uidlist}). Returns True when
        the list is (or is being) rewritten, False when a rewrite is on
        its way already (the caller appends as usual).
        Raises as L{_write_uidlist} does.
        """
        flusher = self._flusher
        if flusher is None:
            self._write_uidlist()
            return True
        if self._rewriting:
            return False
        table = self._table
        lines = [(table.uids[i], self._row_line(table, i)) for i in range(len(table))]
        path = self._uidlist_path()
        fsync, lock, directory, is_shared = flusher.fsync, self._uidlist_lock, self.directory, self._shared
        try:
            with lock:
                # (the messages on their way read with the lock held, beside
                # the list's size: under --workers a UID is given, and its
                # line appended, in the group commit's thread under it)
                lines.extend((e.info.uid, self._uidlist_line(e)) for e in list(self._pending.values()) if e.info.uid)
                lines.sort()
                texts = [line for _, line in lines]
                if is_shared:
                    # Other processes' lines for messages still on their way stay.
                    shared.catch_up(self, _parse_line)
                    texts = shared.merged_lines(self, texts, _format_line)
                st = os.stat(path)
        except OSError as e:
            raise storage_error(e) from e
        text = (f"{UIDLIST} 1 {self.uid_validity} {self.uid_next}\n" + "".join(texts)).encode("utf-8")
        seen = (st.st_ino, st.st_size)
        extra = self._extra_lines

        def rewrite() -> bool:
            # Synced: after an expunge this header's UIDNEXT is what keeps
            # the expunged UIDs from being given again.
            tmp = write_temporary(path, text, fsync)
            try:
                with lock:
                    now = os.stat(path)
                    if now.st_ino != seen[0] or now.st_size < seen[1]:
                        os.unlink(tmp)  # (another process rewrote it: clean already)
                        return False
                    if now.st_size > seen[1]:
                        # Lines appended since the text was made (the group
                        # commit's new messages, keyword changes) go after
                        # it, as they are: a message's last line wins, and
                        # no appender writes while the lock is held. (Before,
                        # such a rewrite was dropped, and under constant
                        # delivery made in the reactor at the fourth try.)
                        with open(path, "rb") as f:
                            f.seek(seen[1])
                            tail = f.read(now.st_size - seen[1])
                        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                        try:
                            view = memoryview(tail)
                            while view:
                                view = view[os.write(fd, view) :]
                            fsync(fd)
                        finally:
                            os.close(fd)
                    os.replace(tmp, path)
                    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        fsync(fd)
                    finally:
                        os.close(fd)
                    if is_shared:
                        # (the carried lines are read again by catch_up:
                        # other processes' among them are not read yet)
                        self._list_position = shared.ListPosition(os.stat(path).st_ino, len(text))
                return True
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise

        self._rewriting = True

        def done(rewritten: bool) -> None:
            self._rewriting = False
            if rewritten:
                self._extra_lines = max(0, self._extra_lines - extra)
                self._rewrite_tries = 0
                if self._extra_lines > len(self._table) + EXTRA_LINES_SLACK:
                    self._rewrite_again()  # (more came meanwhile)
                return
            # Another process rewrote the list meanwhile (--workers): made
            # again from the table (a keyword change may be in it and
            # nowhere else), in the thread again; after a few tries, left
            # for the next change (the list is right as it is).
            self._rewrite_tries += 1
            self._rewrite_again()

        def failed(reason: Failure) -> None:
            self._rewriting = False
            log.warn("UID list of {path} not rewritten ({error}); it will be at the next change", path=self.directory, error=error_words(reason.value))

        flight = self._rewrite_flight = flusher.in_thread(rewrite)
        flight.addCallbacks(done, failed)

        def landed(_: Any) -> None:
            if self._rewrite_flight is flight:
                self._rewrite_flight = None

        flight.addBoth(landed)
        return True

    def _rewrite_again(self) -> None:
        try:
            if self._rewrite_tries > 3:
                self._rewrite_tries = 0
            else:
                self._rewrite_uidlist()
        except (OSError, StoreError) as e:
            log.warn("UID list of {path} not rewritten ({error}); it will be at the next change", path=self.directory, error=e.__cause__ or e)

    def rewritten(self) -> defer.Deferred:
        """Fires (with None, never failing) once no rewrite of the UID list is on its way (L{_rewrite_uidlist})."""
        flight = self._rewrite_flight
        if flight is None:
            return defer.succeed(None)
        d = defer.Deferred()
        flight.addBoth(lambda _: self.rewritten().chainDeferred(d))
        return d

    def _rewrite_uidlist_after_removal(self, removed: int) -> None:
        """
        After C{removed} messages were removed. Their lines may stay: the
        list is right without the rewrite (the lines of files that are
        gone are forgotten at the next load, and they keep their UIDs from
        being given again), so it is rewritten (tmp + fsync + rename) only
        once such dead lines, with the repeated ones, outnumber the
        messages: an expunge costs no flush of the list. A list that
        cannot be rewritten then (disk full) stays as it is; the removal
        stands.
        """
        self._extra_lines += removed
        if self._extra_lines <= len(self._table) + EXTRA_LINES_SLACK:
            return
        try:
            self._rewrite_uidlist()
        except (OSError, StoreError) as e:
            log.warn("UID list of {path} not rewritten after a removal ({error}); it will be at the next change", path=self.directory, error=e.__cause__ or e)

    def _append_uidlist(self, positions: list[int]) -> None:
        """
        Append the lines of messages found by a scan (put there by another
        program), fsynced, here: only for a folder without the account's
        L{SmallFiles} (a script's; a hub's go through L{_hold_found} and
        L{_settle_found}), and their UIDs are shown to clients right after. The header's UIDNEXT is only a floor;
        loading takes the max of it and the UIDs listed.
        """
        data = "".join(self._row_line(self._table, i) for i in positions).encode("utf-8")
        with self._uidlist_lock:
            append_lines(self._uidlist_path(), data, sync=True)
        self._list_lines += len(positions)
        state = self._index_state
        if state is not None:
            # The first scan of a load: the index covers these lines too.
            state.chunks.append(data)
            self._index_state = _IndexState(state.length + len(data), state.chunks, max(state.uid_next, self.uid_next), state.lines + len(positions))

    # -- keeping the table in step with the directory ---------------------

    def made_again(self, uid_validity: int) -> None:
        """
        (--workers, L{shared.catch_up}) Another process deleted this folder
        and made it again (or made its lost list again): its UID list has
        C{uid_validity}, not ours. This object's UIDs mean nothing for the
        new folder, so it is done with: every later use raises
        L{NoSuchFolder} (IMAP ends a session that has it selected with
        BYE, as for a folder deleted; RFC 3501 §2.3.1.1), and the account
        opens the new folder afresh (L{MaildirAccount.folder}). Raises
        L{NoSuchFolder}.
        """
        if not self.made_again_elsewhere:
            log.info("{path}: made again by another worker (UIDVALIDITY {old} -> {new}); sessions that have it open are ended", path=self.directory, old=self.uid_validity, new=uid_validity)
        self.made_again_elsewhere = True
        raise NoSuchFolder(f"{self.name} was deleted and made again")

    def _mtimes(self) -> tuple[int, int]:
        if self.made_again_elsewhere:
            raise NoSuchFolder(f"{self.name} was deleted and made again")
        try:
            if self._unrepaired is not None:
                return tuple(_mtime_or_zero(os.path.join(self.directory, sub)) for sub in ("new", "cur"))  # type: ignore[return-value]
            return (
                os.stat(os.path.join(self.directory, "new")).st_mtime_ns,
                os.stat(os.path.join(self.directory, "cur")).st_mtime_ns,
            )
        except FileNotFoundError:
            # Deleted or renamed (by another session, or by hand) while
            # someone still holds this folder.
            raise NoSuchFolder(f"{self.name} no longer exists") from None

    def _listdir(self, sub: str) -> list[str]:
        """The names in C{sub} (new/ or cur/); none for one a half-made folder lacks (L{_unrepaired})."""
        try:
            return os.listdir(os.path.join(self.directory, sub))
        except FileNotFoundError:
            if self._unrepaired is None:
                raise
            return []

    def _scan(self, force: bool = False, elsewhere: bool = False) -> None:
        """
        Look at the directories if they changed (C{force}: whatever their
        mtimes say; C{elsewhere}: another process said it changed them).
        """
        if self._shared:
            with self._uidlist_lock:
                self._catch_up_modseqs()
                try:
                    return self._scan_folder(force or elsewhere)
                finally:
                    self._from_log.clear()
        return self._scan_folder(force)

    def _scan_folder(self, force: bool = False) -> None:
        if self._placed:
            self._take_placed()
        mtimes = self._mtimes()
        if not force and mtimes == self._dir_mtimes and not (self._shared and shared.recently_changed(mtimes)):
            return
        first = self._rows is not None
        # Only new/ changed (a delivery): no file entered or left cur/
        # without changing its mtime, so the big listing is not needed.
        if not force and self._dir_mtimes is not None and mtimes[1] == self._dir_mtimes[1]:
            subdirs: tuple[str, ...] = ("new",)
        else:
            subdirs = ("new", "cur")
        self._dir_mtimes = mtimes
        if first:
            # The first look (a cold load): the table straight from the rows.
            self._look_mtimes, self._look_time = mtimes, time.time()
            fresh = self._first_look(mtimes)
            gone: list[int] = []
            flagged: list[int] = []
        else:
            fresh, gone, flagged = self._look_again(subdirs)
        if self._shared:
            if fresh:
                claimed = self._claimed_elsewhere()
                if claimed:
                    kept = [f for f in fresh if f[0] not in claimed]
                    if len(kept) != len(fresh):
                        # Another process numbered them and is flushing their
                        # lines: neither numbered nor shown here before; the
                        # directories are listed again at the next look.
                        fresh = kept
                        self._dir_mtimes = None
                        if first:
                            self._look_mtimes = None  # (nor trusted by the index)
            fresh = self._claim_listed(fresh, flagged)
            if fresh and self._unrepaired is not None and not first:
                fresh = []  # (numbered once repaired: L{_agreed_uid_validity})
        added: list[int] = []
        offered: list[int] = []
        # Files we have never seen: UIDs in order of arrival.
        fresh.sort(key=lambda t: (_date_from_name(t[0]) or 0, t[0]))
        for base, sub, filename in fresh:
            try:
                uid = self._register(base, sub, filename)
            except FileNotFoundError:
                continue  # gone again (moved by another program): next scan
            except NotAMessageFile:
                if filename not in self._not_files:
                    self._not_files.add(filename)
                    log.warn("{path}: not a regular file (a FIFO, device or directory), so not a message; left alone", path=os.path.join(self.directory, sub, filename))
                continue
            added.append(uid)
            if not self._shared:
                self._recent.add(uid)
            elif sub == "cur" and self._unrepaired is None:
                offered.append(uid)  # (one in new/ is claimed by its rename)
        if added and self._unrepaired is not None:
            pass  # (numbered in memory: the repair lists them, L{_repair})
        elif added and self._flusher is not None and not first:
            # Found after the load: held back (in _pending, out of the
            # table) until their lines are flushed off the reactor
            # (L{_hold_found}); told then (under --workers, claimed for
            # this process meanwhile: L{CLAIMS}).
            self._hold_found(added)
            added = []
            offered = []
        if added and first and self._sync_later is not None and self._unrepaired is None:
            # Found at the load: in the table now, their lines flushed off
            # the reactor, and nothing tells them before (unsettled()).
            self._settle_found(added)
            added_now, added = added, []
        else:
            added_now = []
        if added and self._unrepaired is None:
            table = self._table
            if self._checks_unsaved and self._unchecked:
                # Listed on trust: known so before the list names them.
                try:
                    self._save_unchecked(sync=True)
                except OSError:
                    self._check([table.position(uid) for uid in added])  # (read now instead)
            try:
                self._append_uidlist([table.position(uid) for uid in added])
            except OSError as e:
                # Not listed, so not shown: the next look tries again.
                log.warn("UID list of {path}: {n} new message(s) not listed yet ({error})", path=self.directory, n=len(added), error=error_words(e, paths=False))
                table.remove(table.position(uid) for uid in added)
                self._changes += 1
                self._dir_mtimes = None
                added = []
                offered = []
        if offered:
            shared.offer_recent(self._uidlist_lock, offered)
        if gone and not self._shared:  # (under --workers, the remover counted them)
            self._rewrite_uidlist_after_removal(len(gone))
        added += added_now
        if added or gone or flagged:
            self._bump(added + flagged, gone, observed=True)
            self._listeners.notify(
                FolderChange(
                    added=tuple(added),
                    flags=tuple(sorted(flagged)),
                    expunged=tuple(sorted(gone)),
                )
            )

    def _hold_found(self, uids: list[int]) -> None:
        """
        Files another program put in, found by a look after the load
        (C{uids}, just added to the table by L{_register}): taken out of
        the table into C{_pending} (so no look lists them again and no
        reply tells them), and told (the table, \\Recent, listeners) only
        once what names them is durable, all flushed in a worker thread
        by the account's L{SmallFiles}: first C{mailhub-unchecked} if some
        are listed on trust (it must be on disk before the list names
        them), then their lines appended to the UID list. An fsync in the
        reactor stalls every session of the process; L{unsettled} waits
        for it (IMAP SELECT, STATUS, the web face, a POP3 login).
        A flush that fails tells nothing: the next look finds the files
        again. Under --workers they are numbered from the folder's shared
        counter and claimed for this process (L{CLAIMS}) until the flush is
        done: no other process numbers them itself, nor shows them while
        their lines may not be durable.
        """
        table = self._table
        positions = [table.position(uid) for uid in uids]
        entries = []
        for i in positions:
            base = table.names[i]
            filename = table.filename(i)
            info = MessageInfo(table.uids[i], base, _EMPTY, table.sizes[i], table.dates[i])
            entry = _Entry(info, "new" if table.bits[i] & NEW else "cur", filename, _EMPTY)
            entries.append(entry)
            self._pending[base] = entry
            self._recent.discard(info.uid)  # (given when told)
        table.remove(positions)
        self._changes += 1
        flusher = self._flusher
        directory = self.directory
        bases = [entry.info.key for entry in entries]
        if self._shared:
            # (the scan holds the folder's lock) Numbered here: no other
            # process numbers or shows them before their lines are durable.
            self._claim_found(bases)
        trusted = [(entry, f"{directory}/{entry.subdir}/{entry.filename}") for entry in entries if entry.info.key in self._unchecked]

        def check() -> list:
            # (in the thread) Files listed on trust read now, before they
            # are told: made CRLF in place if another MDA stored bare LFs
            # (tmp copies, one flush for them all, renames: off the reactor), their size
            # on the wire found. None for a file not checked now.
            return _to_crlf_many([path for _, path in trusted])  # (one flush for all their copies)

        def checked(found: list) -> defer.Deferred:
            for (entry, _), result in zip(trusted, found):
                base = entry.info.key
                if result is None:
                    continue
                self._unchecked.discard(base)
                if self._shared:
                    self._checked_here.add(base)
                if result is False:
                    continue  # (a FIFO now, or CRLF-clean at its start: told as listed)
                size, shown, _ = result
                downgraded = int(shown[len(",D=") :]) if shown else 0
                if size != entry.info.size or downgraded:
                    info = entry.info
                    entry.info = MessageInfo(info.uid, base, info.flags, size, info.internal_date)
                    self._kept[base] = (size, downgraded)
            if any(entry.info.key in self._unchecked for entry, _ in trusted):
                self._save_unchecked()  # (written here, flushed in the thread)
                return flusher.sync_files([self._unchecked_path()], [])
            if trusted:
                self._save_unchecked()  # (checked: no flush needed, as any check's)
            return defer.succeed(None)

        first = flusher.in_thread(check).addCallback(checked) if trusted else defer.succeed(None)

        def append(_: Any) -> defer.Deferred:
            data = "".join(self._uidlist_line(entry) for entry in entries).encode("utf-8")
            try:
                with self._uidlist_lock:
                    os.close(append_lines(self._uidlist_path(), data, sync=False))
            except OSError as e:
                raise storage_error(e) from e
            self._list_lines += len(entries)
            return flusher.sync_files([self._uidlist_path()], [])

        def told(_: Any) -> None:
            self._unclaim_found(bases)
            added, offered = [], []
            for entry in entries:
                if self._pending.get(entry.info.key) is not entry:
                    continue
                del self._pending[entry.info.key]
                info = entry.info
                self._table.add(info.uid, info.key, info.size, info.internal_date, _EMPTY, entry.subdir, entry.filename, _split(entry.filename)[1])
                if not self._shared:
                    self._recent.add(info.uid)
                elif entry.subdir == "cur":
                    offered.append(info.uid)  # (one in new/ is claimed by its rename)
                added.append(info.uid)
            if offered:
                shared.offer_recent(self._uidlist_lock, offered)
            if added:
                self._changes += 1
                self._bump(added, observed=True)
                self._listeners.notify(FolderChange(added=tuple(added)))
                if self._shared:
                    shared.tell_others(self.directory)  # (they left them alone meanwhile)

        def failed(reason: Failure) -> None:
            self._unclaim_found(bases)
            for entry in entries:
                if self._pending.get(entry.info.key) is entry:
                    del self._pending[entry.info.key]
            self._dir_mtimes = None  # (the next look lists them again)
            log.warn("UID list of {path}: {n} new message(s) not listed yet ({error})", path=self.directory, n=len(entries), error=error_words(reason.value))

        self._hold(first.addCallback(append).addCallbacks(told, failed))

    def _hold(self, flush: defer.Deferred) -> None:
        """Keep C{flush} for L{unsettled} until it fires; its waiters get its result (None or the failure)."""
        waiters: list[defer.Deferred] = []
        pair = (flush, waiters)
        self._holding.append(pair)

        def done(result: Any) -> Any:
            self._holding.remove(pair)
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)
            return result

        flush.addBoth(done)

    def _settle_found(self, uids: list[int]) -> None:
        """
        Files found by the load's first look (C{uids}, in the table): their
        lines appended to the UID list without a flush, then flushed off
        the reactor by the account's L{SmallFiles} (C{mailhub-unchecked}
        first when some are listed on trust: it is on disk before the list
        names them), with the load's own flush if it made one; L{unsettled}
        waits for it (design rule 6).
        """
        table = self._table
        positions = [table.position(uid) for uid in uids]
        data = "".join(self._row_line(table, i) for i in positions).encode("utf-8")
        later = self._sync_later
        path = self._uidlist_path()
        bases = [table.names[i] for i in positions]
        if self._shared:
            self._claim_found(bases)  # (the load holds the folder's lock)

        def append(_: Any) -> defer.Deferred:
            try:
                with self._uidlist_lock:
                    os.close(append_lines(path, data, sync=False))
            except OSError as e:
                raise storage_error(e) from e
            return later.sync_files([path], [])

        if self._checks_unsaved and self._unchecked:
            self._save_unchecked()  # (written here, flushed in the thread)
            flush = later.sync_files([self._unchecked_path()], []).addCallback(append)
        else:
            flush = append(None)
        state = self._index_state
        if state is not None:
            # The index covers these lines (appended now or after the
            # unchecked file's flush; if not, its digest does not match
            # the list and the next load parses it all).
            state.chunks.append(data)
            self._index_state = _IndexState(state.length + len(data), state.chunks, max(state.uid_next, self.uid_next), state.lines + len(positions))
        self._list_lines += len(positions)
        if self._shared:

            def unclaim(result: Any) -> Any:
                self._unclaim_found(bases)
                if not isinstance(result, Failure):
                    shared.tell_others(self.directory)
                return result

            flush.addBoth(unclaim)
        self._hold(flush)
        if self.creation_flush is None:
            self.creation_flush = flush  # (the account's durable() tells a failure)
        else:
            # (the load's own flush is the account's; this one's failure is
            # told to those waiting (unsettled()) and logged, once)
            flush.addErrback(lambda reason: log.warn("UID list of {path}: lines of new messages not flushed ({error})", path=self.directory, error=error_words(reason.value)))

    def _claims(self) -> list[tuple[int, str, str, str]]:
        """(pid, boot id, claimer, base name) of each line of L{CLAIMS}; empty if there is none."""
        try:
            with open(os.path.join(self.directory, CLAIMS), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return []
        claims = []
        for line in text.splitlines():
            words = line.split(" ")
            if len(words) == 4 and words[0].isdigit():
                claims.append((int(words[0]), words[1], words[2], words[3]))
        return claims

    def _write_claims(self, claims: list[tuple[int, str, str, str]]) -> None:
        """L{CLAIMS} made C{claims} (tmp + rename, not synced; removed when empty). Call with the folder's lock held."""
        path = os.path.join(self.directory, CLAIMS)
        try:
            if not claims:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                return
            tmp = os.path.join(self.directory, "tmp", f"{CLAIMS}.{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(f"{pid} {boot} {claimer} {base}\n" for pid, boot, claimer, base in claims))
            os.replace(tmp, path)
        except OSError as e:
            log.warn("{path} not written ({error}): another worker may show found messages before their UIDs are durable", path=path, error=e.strerror or e)

    def _claim_found(self, bases: list[str]) -> None:
        """(--workers, with the folder's lock held) C{bases} numbered by this process, their lines not flushed yet: see L{CLAIMS}."""
        boot, me = _boot_id(), self._claimer
        claims = [c for c in self._claims() if c[1] == boot and (c[2] == me or not _process_is_gone(c[0]))]
        claims.extend((os.getpid(), boot, me, base) for base in bases)
        self._write_claims(claims)

    def _unclaim_found(self, bases: list[str]) -> None:
        """(--workers) C{bases}' lines are durable (or their flush failed): other processes may show them (L{CLAIMS}). Takes the folder's lock."""
        if not self._shared:
            return
        gone, me = set(bases), self._claimer
        with self._uidlist_lock:
            claims = self._claims()
            kept = [c for c in claims if not (c[2] == me and c[3] in gone)]
            if len(kept) != len(claims):
                self._write_claims(kept)

    def _claimed_elsewhere(self) -> set[str]:
        """(--workers, with the folder's lock held) Base names another running process claimed (L{CLAIMS})."""
        claims = self._claims()
        if not claims:
            return set()
        boot, me = _boot_id(), self._claimer
        return {base for pid, b, claimer, base in claims if claimer != me and b == boot and not _process_is_gone(pid)}

    def _first_look(self, mtimes: tuple[int, int]) -> list[tuple[str, str, str]]:
        """
        The table from the rows of the list: those whose files are there.
        A directory whose mtime is the one the index saw (settled) is not
        listed: the index says where each of its files is, as Dovecot
        trusts its own index. Returns (base, subdir, file name) of the
        files the list does not know.
        """
        rows = self._rows
        self._rows = None
        index = self._index
        trusted = set()
        # (Rows listed after the index are not PRESENT: only a listing
        # finds their files, which moved a directory's mtime on arriving.)
        if index is not None and index.mtimes is not None:
            trusted = {sub for sub, old, now in zip(("new", "cur"), index.mtimes, mtimes) if old == now}
        # Rows in a directory listed again are present only if found there.
        if not trusted:
            rows.bits = rows.bits.translate(CLEAR_PRESENT)
        elif trusted == {"cur"}:
            mask = rows.bits.translate(IS_NEW)
            i = mask.find(1)
            while i >= 0:
                rows.bits[i] &= ~PRESENT & 0xFF
                i = mask.find(1, i + 1)
        elif trusted == {"new"}:
            bits = rows.bits
            for i in range(len(bits)):
                if not bits[i] & NEW:
                    bits[i] &= ~PRESENT & 0xFF
        bits = rows.bits
        fresh: dict[str, tuple[str, str, str]] = {}
        listed = 0
        # (a cold load makes 100,000 strings: the cyclic GC would walk
        # them again and again while they are made; none of them is a cycle)
        collecting = gc.isenabled()
        gc.disable()
        try:
            positions = None
            for sub in ("new", "cur"):
                if sub in trusted:
                    continue
                if positions is None:
                    positions = dict(zip(rows.names, range(len(rows.names))))
                in_new = sub == "new"
                for filename in self._listdir(sub):
                    if filename.startswith("."):
                        continue
                    listed += 1
                    base, system, canonical = _split(filename)
                    i = positions.get(base)
                    if i is None:
                        fresh[base] = (base, sub, filename)  # in new/ and cur/: cur/ stands
                        continue
                    if in_new:
                        if bits[i] & PRESENT:
                            continue  # in cur/ too (trusted): cur/ stands
                        canonical = filename == base
                    uid = rows.uids[i]
                    if canonical:
                        bits[i] = PRESENT | system | (NEW if in_new else 0)
                        rows.odd.pop(uid, None)
                    else:
                        bits[i] = PRESENT | system | (NEW if in_new else 0) | ODD
                        rows.odd[uid] = filename
        finally:
            if collecting:
                gc.enable()
        if self._index_state is not None:
            self._index_state = self._index_state._replace(lines=self._index_state.lines + listed)
        if bits.translate(IS_PRESENT).count(1) != len(bits):
            # Listed lines whose files are gone: kept for the index only.
            self._dead = rows.subset([i for i in range(len(bits)) if not bits[i] & PRESENT])
            rows.take([i for i in range(len(bits)) if bits[i] & PRESENT])
        self._table = rows
        self._changes += 1
        return list(fresh.values())

    def _look_again(self, subdirs: tuple[str, ...]) -> tuple[list[tuple[str, str, str]], list[int], list[int]]:
        """
        Follow what changed in C{subdirs} since the last look: renames
        (flag changes by other programs) and vanished files are applied
        to the table. Returns (files not in it yet as (base, subdir,
        file name), UIDs gone, UIDs whose flags changed).
        """
        seen: dict[str, tuple[str, str, int]] = {}
        for sub in subdirs:
            for filename in self._listdir(sub):
                if filename.startswith("."):
                    continue
                base, system, _ = _split(filename)
                seen[base] = (sub, filename, system)
        table = self._table
        gone: list[int] = []
        gone_at: list[int] = []
        flagged: list[int] = []
        bits = table.bits
        if len(subdirs) == 2:
            rows: Iterable[int] = range(len(table))
        else:
            rows = self._in_new()  # (a delivery: not a walk over every row)
        for i in rows:
            in_new = bits[i] & NEW
            where = seen.get(table.names[i])
            if where is None:
                if self._moving and table.uids[i] in self._moving:
                    continue  # (claimed by a move here: expunged by it once copied)
                gone.append(table.uids[i])
                gone_at.append(i)
                continue
            sub, filename, system = where
            if sub != ("new" if in_new else "cur") or filename != table.filename(i):
                before = bits[i] & SYSTEM_MASK
                table.set_file(i, sub, filename, system)
                if system != before:
                    flagged.append(table.uids[i])
        if gone_at:
            table.remove(gone_at)
        if gone or flagged:
            self._changes += 1
        fresh = []
        by_base = table.by_base
        for base, (sub, filename, _) in seen.items():
            if base in by_base or base in self._pending:
                continue
            fresh.append((base, sub, filename))
        return fresh, gone, flagged

    @property
    def _by_base(self) -> dict[str, int]:
        """{base name: UID} of the messages in the table (L{shared.catch_up} reads it)."""
        return self._table.by_base

    def _claim_listed(self, fresh: list[tuple[str, str, str]], flagged: list[int]) -> list[tuple[str, str, str]]:
        """
        Under --workers: files another process wrote get the UID its line
        gives them (L{shared.catch_up}); keywords another process changed
        are taken (added to C{flagged}). Returns the files nobody listed.
        """
        table = self._table
        dead = self._dead
        if dead is not None:
            # (a load) Listed lines whose file is not there yet (another
            # process is still writing it) are kept for when it is.
            by_base = table.by_base
            for i in range(len(dead)):
                base = dead.names[i]
                if base not in by_base and base not in self._pending:
                    self._elsewhere[base] = (dead.uids[i], dead.sizes[i], dead.dates[i], dead.keywords(i))
        keywords = shared.catch_up(self, _parse_line)
        for base, words in keywords.items():
            i = table.position(table.by_base.get(base, 0))
            if i >= 0 and table.keywords(i) != words:
                table.set_keywords(i, words)
                self._changes += 1
                flagged.append(table.uids[i])
        unlisted = []
        claimed_any = False
        for base, sub, filename in fresh:
            listed = self._elsewhere.pop(base, None)
            if listed is None:
                unlisted.append((base, sub, filename))
                continue
            uid, size, date, words = listed
            if not claimed_any and size == _size_from_name(base):
                # (the process that listed it may have listed it on trust)
                self._reread_unchecked()
                claimed_any = True
            if base in self._unchecked_elsewhere:
                self._unchecked.add(base)
            table.add(uid, base, size, date, words, sub, filename, _split(filename)[1])
            self._changes += 1
            value = self._modseq_pending.pop(uid, 0)
            if value:
                # Its writer logged its modseq before its file came: that one.
                table.modseqs[table.position(uid)] = value
                self._from_log.add(uid)
            # (not \Recent here: the process that wrote it offered it, shared.claim_recent)
            self._bump([uid], observed=True)
            self._listeners.notify(FolderChange(added=(uid,)))
        return unlisted

    def _next_uid(self) -> int:
        """A new UID: this process's counter, or under --workers the folder's."""
        if self._shared and self._unrepaired is None:
            uid = self._uidlist_lock.take_uid(self.uid_next)
        else:
            uid = self.uid_next
        self.uid_next = uid + 1
        return uid

    def _register(self, base: str, sub: str, filename: str, date: float | None = None) -> int:
        """
        A file found by a scan (put there by another program, or listed
        nowhere): the next UID; returns it. A name with C{S=} is listed at
        that size without a read and left to L{_check} (another MDA,
        maildrop or Dovecot's LDA, may have stored bare LF line ends and
        given their size there), as Dovecot trusts it until it reads the
        file. A name without one is listed at its size on disk and
        checked the same way, in a worker thread before it is told (with
        the account's L{SmallFiles}); without it (a script's store) it is
        read now: made CRLF in place if it has bare LFs (or bare CRs), so
        that its size on disk is its size on the wire (RFC822.SIZE, POP3
        LIST, what BODY[] sends); and an 8-bit message gets C{,D=} in its
        name, as the hub's own do (L{_shown_size_field}), so RFC822.SIZE
        tells a session without UTF8=ACCEPT the size of what it receives
        (a check keeps that size instead: L{kept_shown_sizes}).
        """
        path = os.path.join(self.directory, sub, filename)
        size = _size_from_name(base)
        if size is not None or self._flusher is not None:
            st = os.stat(path)  # (no open: a FIFO is not waited for)
            if not stat.S_ISREG(st.st_mode):
                raise NotAMessageFile(path)
            if date is None:
                date = st.st_mtime
            if size is None:
                # No S=: listed at its size on disk, and read (made CRLF,
                # its size as downgraded kept) in a worker thread before
                # it is told (_hold_found, _check_in_thread), as one with
                # S= is; it was read whole, and its CRLF copy fsynced, here
                # in the reactor.
                size = st.st_size
            self._unchecked.add(base)
            self._checks_unsaved += 1
        else:
            size, shown, mtime = _to_crlf_in_place(path)
            if date is None:
                date = mtime
            if shown and "," + shown[1:] + "," not in base + ",":
                # (base names never change once given: this one is new to us)
                new_base = base + shown
                new_filename = new_base + filename[len(base) :]
                os.rename(path, os.path.join(self.directory, sub, new_filename))
                base, filename = new_base, new_filename
        system = _split(filename)[1]
        uid = self._next_uid()
        self._table.add(uid, base, size, date, _EMPTY, sub, filename, system)
        self._changes += 1
        return uid

    # -- files listed on trust: checked when first needed -------------------

    def _unchecked_path(self) -> str:
        return os.path.join(self.directory, UNCHECKED)

    def _read_unchecked(self) -> None:
        """
        The unchecked names and kept findings of C{mailhub-unchecked}
        (lines C{? <base>} and C{= <base> <size> <downgraded size>}); a
        list without that file is from before it: L{_legacy}.
        """
        unchecked, kept = set(), {}
        try:
            # Line by line (not the whole text and its split at once: a
            # folder of 100,000 unchecked files, and the heap keeps a peak).
            with open(self._unchecked_path(), "r", encoding="utf-8") as f:
                header = f.readline()
                ended = header == _UNCHECKED_OLD_HEADER  # (version 1: no end line)
                if not ended and header != _UNCHECKED_HEADER:
                    raise ValueError("no header: cut short by a crash")
                for line in f:
                    if line == _UNCHECKED_END:
                        ended = True
                        break
                    words = line.rstrip("\n").split(" ")
                    if len(words) == 2 and words[0] == "?":
                        unchecked.add(words[1])
                    elif len(words) == 4 and words[0] == "=" and words[2].isascii() and words[2].isdigit() and words[3].isascii() and words[3].isdigit():
                        kept[words[1]] = (int(words[2]), int(words[3]))
                if not ended:
                    raise ValueError("no end line: cut short by a crash")
        except FileNotFoundError:
            self._legacy = True
            return
        except (OSError, UnicodeDecodeError, ValueError) as e:
            log.warn("{path} unreadable ({error}): its outside files are checked again", path=self._unchecked_path(), error=error_words(e, paths=False))
            self._legacy = True
            return
        self._unchecked.update(unchecked)
        self._kept.update(kept)

    def _reread_unchecked(self) -> None:
        """Under --workers: the names another process listed on trust (C{_unchecked_elsewhere})."""
        try:
            with open(self._unchecked_path(), "r", encoding="utf-8") as f:
                lines = f.read().split("\n")[1:]
        except (OSError, UnicodeDecodeError):
            return
        self._unchecked_elsewhere = {line[2:] for line in lines if line.startswith("? ")}

    def _save_unchecked(self, sync: bool = False) -> None:
        """
        Write C{mailhub-unchecked} (tmp + rename; with C{sync}, fsynced
        first: before the list names a file listed on trust). Raises
        C{OSError} only with C{sync}; otherwise a failure means only that
        the files are checked again after a restart.
        """
        self._checks_unsaved = 0
        unchecked, kept = self._unchecked, self._kept
        if self._shared:
            # Under --workers every process writes the file: what another
            # wrote stays, but for the files this one checked.
            theirs, their_kept = _parse_unchecked(self._unchecked_path())
            unchecked = unchecked | (theirs - self._checked_here)
            kept = {**their_kept, **kept}
        tmp = os.path.join(self.directory, "tmp", f"{UNCHECKED}.{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                # Line by line through the file's buffer: a folder of 100,000
                # unchecked files would otherwise make 100,000 strings and
                # their join at once, and the heap would keep that peak.
                f.write(_UNCHECKED_HEADER)
                f.writelines(f"? {base}\n" for base in sorted(unchecked))
                f.writelines(f"= {base} {size} {shown}\n" for base, (size, shown) in sorted(kept.items()))
                f.write(_UNCHECKED_END)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self._unchecked_path())
            if sync:
                fsync_directory(self.directory)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if sync:
                raise
            log.info("could not write {path}: {error}", path=self._unchecked_path(), error=e.strerror or e)

    def _after_load_checks(self) -> None:
        """At the end of a load: apply what earlier checks found; a list from before them has its outside names marked unchecked."""
        table = self._table
        if self._kept:
            by_base = table.by_base
            for base, (size, _) in self._kept.items():
                uid = by_base.get(base)
                if uid is not None:
                    table.sizes[table.position(uid)] = size
        if self._legacy:
            self._legacy = False
            match = _OWN_NAME.match
            self._unchecked.update(name for name in table.names if not match(name))
            # A name shaped like the hub's own is not proof: Dovecot's LDA
            # without ,W= (and other MDAs) name bare-LF files the same way.
            # Only after a crash cut the unchecked file (or before it
            # existed), so each such file's first octets are read: one with
            # a bare LF there is checked whole (L{_check}) before its size
            # is told. Its first 4 KiB: a header block of another program
            # is LF-ended from its first line; the hub's own files are CRLF.
            directory, names, bits = self.directory, table.names, table.bits
            if self._flusher is not None:
                # (a running hub: read in the check's worker thread, not
                # here, L{_check_in_thread}; 20,000 files were some 280 ms
                # of the reactor. Listed on trust until then: a row needed
                # before that is checked whole, L{_check})
                suspects = {name for name in names if match(name) and name not in self._kept}
                self._unchecked.update(suspects)
                self._suspects = suspects
            else:
                self._unchecked.update(
                    names[i]
                    for i in range(len(table))
                    if match(names[i]) and names[i] not in self._kept and _bare_lf_at_start(directory + ("/new/" if bits[i] & NEW else "/cur/") + table.filename(i))
                )
            self._save_unchecked()
        elif self._checks_unsaved:
            self._save_unchecked()

    def _check(self, positions: Iterable[int]) -> None:
        """
        Read the files of the table rows C{positions}, listed on trust:
        each made CRLF in place if it is not (L{_to_crlf_in_place}), its
        size in the table made the size on the wire, its size as
        downgraded kept for L{kept_shown_sizes}. Raises nothing for a file
        gone meanwhile (the next look finds that out).
        """
        table = self._table
        for i in positions:
            base = table.names[i]
            if base not in self._unchecked:
                continue
            path = self.directory + ("/new/" if table.bits[i] & NEW else "/cur/") + table.filename(i)
            try:
                size, shown, _ = _to_crlf_in_place(path)
            except FileNotFoundError:
                continue  # renamed or gone: checked when found again
            except NotAMessageFile:
                self._unchecked.discard(base)  # (replaced by a FIFO: nothing to read; told as listed)
                continue
            except OSError as e:
                # (a full disk for its CRLF copy, no permission to read it)
                # told as listed for now; checked again when next needed
                log.warn("{path}: not checked yet ({error}); its size is told as its name gives it", path=path, error=e.strerror or e)
                continue
            self._unchecked.discard(base)
            self._checks_unsaved += 1
            if self._shared:
                self._checked_here.add(base)
            downgraded = int(shown[len(",D=") :]) if shown else 0
            if size != table.sizes[i] or downgraded:
                table.sizes[i] = size
                self._kept[base] = (size, downgraded)
        if not self._unchecked:
            self._unchecked = set()  # (an emptied set keeps its table: 4 MB for 100,000 names)
            self._save_unchecked()
        elif self._checks_unsaved >= SAVE_CHECKS_EVERY:
            self._save_unchecked()

    def _check_in_thread(self) -> None:
        """
        At the end of a load: read every file listed on trust (found by
        this load's first look, or left unchecked by an earlier run: its
        C{mailhub-unchecked}) in a worker thread of the account's
        L{SmallFiles}, as a file found after the load is (L{_hold_found}):
        made CRLF in place if another MDA stored bare LFs (tmp, fsync,
        rename: L{_to_crlf_in_place}), its size on the wire found. A first
        FETCH of sizes, a POP3 LIST or a body read then finds it checked:
        the reactor neither reads a whole message nor waits for an fsync.
        Their copies share one flush (L{_to_crlf_many}), then one fsync
        of each directory. L{unsettled} waits for it (IMAP SELECT/EXAMINE/STATUS, a POP3
        login, the web face). A file the thread could not read (gone,
        renamed by a flag change, no permission) stays listed on trust and
        is checked when first needed, as before (L{_check}).
        """
        table = self._table
        unchecked = self._unchecked
        suspects, self._suspects = self._suspects, set()
        names = table.names
        directory = self.directory
        # (uid, base, path) in the reactor: the thread touches no table.
        trusted = [
            (table.uids[i], names[i], directory + ("/new/" if table.bits[i] & NEW else "/cur/") + table.filename(i))
            for i in range(len(names))
            if names[i] in unchecked
        ]
        if not trusted:
            return

        def check() -> list:
            # A name shaped like the hub's own, marked after a crash cut
            # mailhub-unchecked (L{_after_load_checks}): its first 4 KiB
            # first; only one with a bare LF there is read whole. One
            # found CRLF-clean is told as listed (False, as for a FIFO).
            whole = [base not in suspects or _bare_lf_at_start(path) for _, base, path in trusted]
            # (one flush for every copy: _to_crlf_many)
            found = iter(_to_crlf_many([path for (_, _, path), read in zip(trusted, whole) if read]))
            return [next(found) if read else False for read in whole]

        def checked(found: list) -> None:
            table = self._table
            for (uid, base, _), result in zip(trusted, found):
                if result is None or base not in self._unchecked:
                    continue  # (not read, or checked meanwhile in the reactor)
                i = table.position(uid)
                if i < 0 or table.names[i] != base:
                    continue  # (expunged meanwhile)
                self._unchecked.discard(base)
                self._checks_unsaved += 1
                if self._shared:
                    self._checked_here.add(base)
                if result is False:
                    continue  # (a FIFO now, or CRLF-clean at its start: told as listed)
                size, shown, _ = result
                downgraded = int(shown[len(",D=") :]) if shown else 0
                if size != table.sizes[i] or downgraded:
                    table.sizes[i] = size
                    self._kept[base] = (size, downgraded)
                    self._changes += 1
            # Names of files gone before the load (not in the table) are
            # not kept on trust for ever (as L{_check_all} does).
            gone = {base for base in self._unchecked if base not in self._pending}
            names = table.names
            for i in range(len(names) if gone else 0):
                gone.discard(names[i])
                if not gone:
                    break
            if gone:
                self._unchecked -= gone
                self._checks_unsaved += 1
            if not self._unchecked:
                self._unchecked = set()  # (an emptied set keeps its table)
            if self._checks_unsaved:
                self._save_unchecked()  # (a check's finding needs no flush: lost, it is made again)

        def failed(reason: Failure) -> None:
            log.warn("{path}: files listed on trust not checked yet ({error}); checked when first needed", path=self.directory, error=error_words(reason.value))

        self._hold(self._flusher.in_thread(check).addCallbacks(checked, failed))

    def _check_uid(self, uid: int) -> int:
        """C{uid}'s row (L{_position}), checked first if it is listed on trust."""
        i = self._position(uid)
        if self._unchecked and self._table.names[i] in self._unchecked:
            self._check([i])
        return i

    def _check_all(self) -> None:
        """Check every row listed on trust (before sizes of the whole folder are told)."""
        table = self._table
        unchecked = self._unchecked
        names = table.names
        by_base = table.by_base_if_made
        if by_base is not None:
            # Made already (a scan that found new files makes it): one look-up
            # per name listed on trust, not a walk over every row.
            rows = sorted(table.position(by_base[base]) for base in unchecked if base in by_base)
            self._check(i for i in rows if i >= 0)
            gone = {base for base in self._unchecked if base not in self._pending and base not in by_base}
        else:
            # In the table's order, one name at a time: no list of 100,000
            # positions, and no table.by_base made for this (a dict of every
            # name, kept on the table once made: 14 MB for 100,000 names).
            self._check(i for i in range(len(names)) if names[i] in unchecked)
            # Left: files a check could not read (told as listed until the next
            # need), names not yet numbered (pending), and names of files gone.
            gone = {base for base in self._unchecked if base not in self._pending}
            for i in range(len(names) if gone else 0):
                gone.discard(names[i])
                if not gone:
                    break
        for base in gone:
            self._unchecked.discard(base)
        if self._checks_unsaved:
            self._save_unchecked()

    def kept_shown_sizes(self) -> dict[int, int]:
        """
        UID -> size as downgraded (for a session without UTF8=ACCEPT) of the
        checked files whose name does not carry it (L{_check}); usually
        empty. L{twisted_mailhub.imap.utf8.shown_sizes} adds it to the
        sizes in names.
        """
        kept = [(base, shown) for base, (_, shown) in self._kept.items() if shown]
        if not kept:
            return {}
        by_base = self._table.by_base
        return {by_base[base]: shown for base, shown in kept if base in by_base}

    def _position(self, uid: int) -> int:
        """The table row of C{uid}; L{NoSuchMessage} if there is none."""
        table = self._table
        uids = table.uids
        i = self._hint + 1
        if i < len(uids) and uids[i] == uid:
            self._hint = i
            return i
        i -= 1
        if 0 <= i < len(uids) and uids[i] == uid:
            return i  # (the same again: FETCH asks for its flags, then its file)
        i = table.position(uid)
        if i < 0:
            raise NoSuchMessage(uid)
        self._hint = i
        return i

    # -- IFolder --------------------------------------------------------

    def refresh(self) -> None:
        self._scan()

    def counts(self) -> tuple[int, int]:
        """
        (messages, messages without \\Seen), after a look at the
        directories (two stats when nothing changed); counted again only
        after a change of the messages or their flags (C{_changes}): the
        web face's poll of a folder's state (web/mail.py) costs about
        nothing while nothing changed, not a walk over every message.
        """
        self._scan()
        counted = self._counted
        if counted is not None and counted[0] == self._changes:
            return counted[1], counted[2]
        infos = self.messages()
        unseen = sum(1 for i in infos if SEEN not in i.flags)
        self._counted = (self._changes, len(infos), unseen)
        return len(infos), unseen

    def messages(self):
        self._scan()
        if self._unchecked:
            self._check_all()
        return self._table.all_infos()

    def listing(self) -> tuple[array, array, list[str]]:
        """
        What a POP3 login needs (RFC 1939 §5 STAT, LIST, UIDL), as columns,
        without a L{MessageInfo} per message: (the UIDs ascending, their
        sizes in octets, their keys), new sequences the caller may keep.
        Picks up changes first, as L{messages} does.
        """
        self._scan()
        if self._unchecked:
            self._check_all()
        table = self._table
        return array("I", table.uids), array("Q", table.sizes), list(table.names)

    def selection(self) -> tuple[array, int, frozenset[str]]:
        """
        What an IMAP SELECT tells (RFC 3501 §6.3.1), without a walk in
        Python over every message: (the UIDs ascending, as a new
        C{array('I')} the caller may change; the UID of the first message
        without C{\\\\Seen}, 0 if none; the keywords in use). Picks up
        changes first, as L{messages} does.
        """
        self._scan()
        cached = self._selection
        if cached is None or cached[0] != self._changes:
            table = self._table
            cached = self._selection = (self._changes, table.first_unseen(), table.keywords_in_use())
        return array("I", self._table.uids), cached[1], cached[2]

    def info(self, uid: int) -> MessageInfo:
        return self._table.info(self._check_uid(uid) if self._unchecked else self._position(uid))

    def deleted_uids(self) -> list[int]:
        """
        The UIDs of the messages flagged C{\\Deleted}, ascending (what an
        IMAP EXPUNGE or CLOSE removes), from the flag column: no
        L{MessageInfo} per message. As the table stands: no look first.
        """
        table = self._table
        marks = table.bits.translate(_IS_DELETED)
        found = []
        i = marks.find(1)
        while i >= 0:
            found.append(table.uids[i])
            i = marks.find(1, i + 1)
        return found

    def row(self, uid: int) -> Row:
        """
        C{uid}'s UID, flags, size and internal date (a L{Row}: what SEARCH
        reads of each message, without the key a L{MessageInfo} carries).
        L{NoSuchMessage} if none.
        """
        table = self._table
        i = self._check_uid(uid) if self._unchecked else self._position(uid)
        # (table.row(i), written out: SEARCH asks this of every message)
        flags = table._flag_sets.get((table.kws[i] << 5) | (table.bits[i] & SYSTEM_MASK)) or table.flags(i)
        return _new_row(Row, (uid, flags, table.sizes[i], table.dates[i]))

    def summary(self, uid: int) -> tuple[frozenset[str], int, float]:
        """
        (flags, size in octets, internal date) of C{uid} from the columns,
        without a L{MessageInfo} (what FETCH 1:* of UID FLAGS RFC822.SIZE
        INTERNALDATE needs of each message). L{NoSuchMessage} if none.
        """
        return self._table.summary(self._check_uid(uid) if self._unchecked else self._position(uid))

    def _file(self, uid: int) -> str:
        if self._moving:
            claim = self._moving.get(uid)
            if claim is not None:
                self._position(uid)  # (NoSuchMessage if gone)
                return claim[1]
        table = self._table
        i = self._check_uid(uid) if self._unchecked else self._position(uid)
        return self.directory + ("/new/" if table.bits[i] & NEW else "/cur/") + table.filename(i)

    def open(self, uid: int):
        try:
            return open(self._file(uid), "rb")
        except FileNotFoundError:
            # Renamed by someone else since we last looked: look again.
            self._scan(force=True)
            try:
                return open(self._file(uid), "rb")
            except FileNotFoundError:
                raise NoSuchMessage(uid) from None

    def read(self, uid: int) -> bytes:
        # os-level: open, one read of the size the table knows (one octet
        # more: a short read is the end; a file grown since is read on),
        # close. A file object would add an isatty ioctl, seeks and fstats.
        table = self._table
        i = self._check_uid(uid) if self._unchecked else self._position(uid)
        try:
            if self._moving and uid in self._moving:
                raise FileNotFoundError  # (claimed by a move: read under its claimed name)
            fd = os.open(self.directory + ("/new/" if table.bits[i] & NEW else "/cur/") + table.filename(i), os.O_RDONLY)
        except FileNotFoundError:
            self._scan(force=True)  # renamed by someone else: look again
            try:
                fd = os.open(self._file(uid), os.O_RDONLY)
            except FileNotFoundError:
                raise NoSuchMessage(uid) from None
            size = None
        else:
            size = table.sizes[i]
        try:
            return _read_whole(fd, size)
        finally:
            os.close(fd)

    def path(self, uid: int) -> str:
        return self._file(uid)

    def paths(self, uids: Iterable[int]) -> list[str | None]:
        """
        L{path} of each of C{uids} in one call, L{None} for a UID that is
        not here: for a reader that opens message after message (POP3
        RETR).
        """
        found: list[str | None] = []
        file = self._file
        for uid in uids:
            try:
                found.append(file(uid))
            except NoSuchMessage:
                found.append(None)
        return found

    def wire_forms(self) -> WireForms:
        """Which messages are stored as POP3 sends them (L{twisted_mailhub.store.wireform})."""
        found = self._wire_forms
        if found is None:
            found = self._wire_forms = WireForms(self.directory)
        return found

    def deliver(self, message: bytes) -> defer.Deferred:
        """
        Write a new message into C{new/}; fires with its key when the
        message and its UID are durable. Fails with L{InsufficientStorage}
        when the disk is full, and then nothing was stored.
        """
        waiting = self._repaired_then(self.deliver, message)
        if waiting is not None:
            return waiting
        size = len(message)
        now = time.time()
        base = unique_name(size, self.hostname, now) + _shown_size_field(message)
        if self._shared:
            # _reserve and _record under --workers, inline: the UID comes
            # with the batch (_number_records).
            entry = self._pending[base] = _Entry(MessageInfo(0, base, _EMPTY, size, now), "new", base, _EMPTY)
            record = Record(self._uidlist_file, b"", self._uidlist_lock, prepare=self._number_records, subject=entry)
        else:
            # _reserve and _record for a new message (no flags, no keywords), inline: once per delivery.
            uid = self.uid_next
            self.uid_next = uid + 1
            entry = self._pending[base] = _Entry(MessageInfo(uid, base, _EMPTY, size, now), "new", base, _EMPTY)
            record = Record(self._uidlist_file, f"{uid} {base} {size} {int(now)}\n".encode("utf-8"), self._uidlist_lock)
        directory = self.directory
        d = self.writer.write(
            f"{directory}/tmp/{base}",
            f"{directory}/new/{base}",
            message,
            record,
            arrived=partial(self._arrived, None, entry),
            result=base,
            failed=partial(self._write_failed, entry),
            fresh=True,  # (a unique name)
        )
        return d if self._settling is None else self._after_settled(d)

    def _reserve(self, base: str, sub: str, filename: str, size: int, date: float, keywords: frozenset[str]) -> _Entry:
        """
        The next UID for a message about to be written. Under --workers it
        is 0 until the group commit numbers the message with the others of
        its batch (L{_number_records}).
        """
        _, system = parse_info(filename)
        info = MessageInfo(0 if self._shared else self._next_uid(), base, system | keywords if keywords else system, size, date)
        entry = self._pending[base] = _Entry(info, sub, filename, keywords)
        return entry

    def _record(self, entry: _Entry) -> Record:
        if self._shared:
            return Record(self._uidlist_path(), b"", self._uidlist_lock, prepare=self._number_records, subject=entry)
        return Record(self._uidlist_path(), self._uidlist_line(entry).encode("utf-8"), self._uidlist_lock)

    def _number_records(self, records: list[Record]) -> None:
        """
        Under --workers: UIDs and mod-sequences for the messages of one
        group commit whose files are written (C{records}' entries), in the
        batch's thread with the folder's lock held, just before their
        lines are appended: one look at the folder's shared counters for
        the batch (L{shared.FolderLock.take_numbers}), so they are unique
        and dense across the workers, and their modseq log lines appended
        in the same hold; the reactor takes no lock for the batch
        (L{_write_shared_arrivals}).
        """
        count = len(records)
        first, modseq = self._uidlist_lock.take_numbers(self.uid_next, max(self.highest_modseq + 1, _now_us()), count)
        lines = []
        uid = first
        for record in records:
            entry = record.subject
            info = entry.info
            entry.info = info = MessageInfo(uid, info.key, info.flags, info.size, info.internal_date)
            entry.modseq = modseq
            if entry.keywords:
                record.line = _format_line(uid, info.key, info.size, info.internal_date, entry.keywords).encode("utf-8")
            else:  # (_format_line's line for no keywords, inline: one per delivery)
                record.line = f"{uid} {info.key} {info.size} {int(info.internal_date)}\n".encode("utf-8")
            lines.append(b"%d %d\n" % (uid, modseq))
            uid += 1
            modseq += 1
        if first + count > self.uid_next:
            self.uid_next = first + count
        self._append_own_modseqs(b"".join(lines))

    def _take_placed(self) -> None:
        """
        Our own renames into place (L{_place}) that follow the last look
        with nothing in between move the mtimes we know: nothing to list
        for them. (A file placed but not yet taken in is in C{_pending},
        which a listing skips.)
        """
        while self._placed:
            before, after = self._placed.popleft()
            if before is not None and before == self._dir_mtimes:
                self._dir_mtimes = after

    def _arrived(self, _, entry: _Entry) -> _Entry:
        self._pending.pop(entry.info.key, None)
        if self._placed:
            self._take_placed()
        info = entry.info
        filename = entry.filename
        system = _split(filename)[1] if ":" in filename else 0
        # (under --workers with the modseq its batch gave it, which
        # _write_shared_arrivals keeps unless it came late)
        self._table.add(info.uid, info.key, info.size, info.internal_date, entry.keywords, entry.subdir, filename, system, entry.modseq or 1)
        self._changes += 1
        if not self._shared:
            self._recent.add(info.uid)
        elif entry.subdir == "cur":
            shared.offer_recent(self._uidlist_lock, [info.uid])  # (one in new/ is claimed by its rename)
        self._bump_arrived(info.uid, entry.modseq)
        if self._shared:
            return entry  # its listeners and the other workers hear of it with its batch (_write_shared_arrivals)
        if self._listeners.count():
            self._listeners.notify(FolderChange(added=(info.uid,)))
        return entry

    def _write_failed(self, entry: _Entry, error: Any) -> Any:
        """L{_not_stored} as the writer's C{failed}: C{error} an exception or a Failure."""
        self._pending.pop(entry.info.key, None)
        value = error.value if isinstance(error, Failure) else error
        mapped = storage_error(value)
        return error if mapped is value else mapped

    def _not_stored(self, failure, entry: _Entry):
        # Its UID stays used: its line may be on disk already.
        self._pending.pop(entry.info.key, None)
        error = storage_error(failure.value)
        if error is not failure.value:
            raise error
        return failure

    def append(self, message: bytes, flags: Iterable[str] = (), internal_date: float | None = None):
        waiting = self._repaired_then(self.append, message, flags, internal_date)
        if waiting is not None:
            return waiting
        entry, write = self._append_write(message, flags, internal_date)
        d = self.writer.write(*write[:4], rename=write[4], arrived=write[5])
        d.addCallbacks(lambda _: entry.info.uid, self._not_stored, errbackArgs=(entry,))
        return d if self._settling is None else self._after_settled(d)

    def _append_write(self, message: bytes, flags: Iterable[str], internal_date: float | None) -> tuple[_Entry, tuple]:
        """A message's UID reserved, and its write for the group commit (tmp path, cur/ path, writer, UID line, rename, arrived)."""
        system, keywords = split_flags(flags)
        date = time.time() if internal_date is None else internal_date
        base = unique_name(len(message), self.hostname, now=date if internal_date is not None else None) + _shown_size_field(message)
        filename = base + info_suffix(system)
        entry = self._reserve(base, "cur", filename, len(message), date, keywords)

        def write(fd: int) -> None:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, (date, date))

        return entry, (
            os.path.join(self.directory, "tmp", base), os.path.join(self.directory, "cur", filename), write, self._record(entry),
            None if self._shared else self._place,
            lambda: self._arrived(None, entry),  # with its batch, before any Deferred fires
        )

    def append_many(self, messages: list[tuple[bytes, Iterable[str], float | None]]) -> defer.Deferred:
        """
        MULTIAPPEND (RFC 3502 §3): C{messages} as (octets, flags, internal
        date or None), written as one group
        (L{GroupCommitWriter.write_group}): none reaches C{cur/}, the index
        or a listener unless all are durable, so another session never
        sees a part of a set that failed. Fires with one C{(True, uid)} or
        C{(False, Failure)} per message, as L{defer.DeferredList} does.
        """
        waiting = self._repaired_then(self.append_many, messages)
        if waiting is not None:
            return waiting
        prepared = [self._append_write(message, flags, date) for message, flags, date in messages]
        deferreds = self.writer.write_group([write for _, write in prepared])
        for d, (entry, _) in zip(deferreds, prepared):
            d.addCallbacks(lambda _, entry=entry: entry.info.uid, self._not_stored, errbackArgs=(entry,))
        done = defer.DeferredList(deferreds, consumeErrors=True)
        return done if self._settling is None else self._after_settled(done)

    def _place(self, tmp: str, final: str) -> None:
        """
        The group commit's rename of an appended message (in its worker
        thread), with the directories' mtimes just before and just after:
        L{_arrived} then knows whether the only change since its last look
        was this one, and the next look needs no listing (as
        L{_before_own_change} / L{_after_own_change} do for renames made in
        the reactor).
        """
        try:
            before = self._mtimes()
        except (OSError, StoreError):
            before = None
        os.rename(tmp, final)
        try:
            self._placed.append((before, self._mtimes()))
        except (OSError, StoreError):
            pass

    def _before_own_change(self) -> bool:
        """
        Are the directories as we last saw them? If not, another program
        changed them and our own change must not hide that from the next
        scan.
        """
        if self._placed:
            self._take_placed()
        try:
            return self._mtimes() == self._dir_mtimes
        except OSError:
            return False

    def _after_own_change(self, was_current: bool) -> None:
        if was_current:
            try:
                self._dir_mtimes = self._mtimes()  # our own renames are known
            except OSError:
                pass

    def set_flags(self, uids, flags, mode="replace", origin=None):
        if self._unrepaired is not None:
            # (system flags are renames, which a full disk allows; keywords
            # go in the list, which must be there first)
            self._repair(quietly=not split_flags(flags)[1])
        if self._shared:
            # Under --workers: what other workers changed is taken first,
            # and none of them writes the list until this change is in it.
            with self._uidlist_lock:
                self._take_changes_elsewhere()
                return self._set_flags(uids, flags, mode, origin)
        return self._set_flags(uids, flags, mode, origin)

    def _take_changes_elsewhere(self) -> None:
        """Under --workers: the UID list's news from other workers, now."""
        flagged: list[int] = []
        self._catch_up_modseqs()
        try:
            self._claim_listed([], flagged)
            if flagged:
                self._bump(flagged, observed=True)
                self._listeners.notify(FolderChange(flags=tuple(sorted(flagged))))
        finally:
            self._from_log.clear()

    def _set_flags(self, uids, flags, mode="replace", origin=None):
        result: dict[int, frozenset[str]] = {}
        changed: list[int] = []
        keywords_changed: list[int] = []
        was_current = self._before_own_change()
        table = self._table
        for uid in uids:
            i = table.position(uid)
            if i < 0:
                continue
            old = table.flags(i)
            new = apply_flags(old, flags, mode)
            if new != old:
                system, keywords = split_flags(new)
                bits = system_bits(system)
                filename = table.names[i] + SUFFIXES[bits]
                if table.bits[i] & NEW or table.filename(i) != filename:
                    try:
                        os.rename(os.path.join(self.directory, table.subdir(i), table.filename(i)), os.path.join(self.directory, "cur", filename))
                    except FileNotFoundError:
                        continue
                table.set_file(i, "cur", filename, bits)
                if keywords != table.keywords(i):
                    table.set_keywords(i, frozenset(keywords))
                    keywords_changed.append(i)
                changed.append(uid)
                new = table.flags(i)
            result[uid] = new
        if changed:
            self._changes += 1
            self._bump(changed)
        if keywords_changed:
            self._keywords_changed(keywords_changed)
        self._after_own_change(was_current)
        if result:
            self._listeners.notify(FolderChange(flags=tuple(sorted(result)), origin=origin))
            if self._shared and changed:
                shared.tell_others(self.directory)
        return result

    def expunge(self, uids, origin=None):
        self._repair()  # (the list's new UIDNEXT keeps expunged UIDs from coming back)
        if self._shared:
            with self._uidlist_lock:
                self._take_changes_elsewhere()
                return self._expunge(uids, origin)
        return self._expunge(uids, origin)

    def _expunge(self, uids, origin=None):
        gone = []
        ended: list[int] = []
        at = []
        trash = []
        was_current = self._before_own_change()
        table = self._table
        tmp = os.path.join(self.directory, "tmp")
        for uid in sorted(set(uids)):
            i = table.position(uid)
            if i < 0:
                continue
            # Out of cur/ (or new/) by a rename into tmp/, under a name of
            # this process: gone for every reader at once, as an unlink
            # would be, but without freeing the file's blocks here, which
            # on a journaling file system can wait a millisecond for the
            # journal behind other fsyncs. The unlink follows in a worker
            # thread; after a crash, clean_tmp removes what it left.
            claim = self._moving.pop(uid, None) if self._moving else None
            if claim:
                ended.append(uid)
            path = claim[1] if claim else os.path.join(self.directory, table.subdir(i), table.filename(i))
            away = os.path.join(tmp, unique_name(table.sizes[i], self.hostname))
            try:
                os.rename(path, away)
                trash.append(away)
            except FileNotFoundError:
                pass
            except OSError:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            gone.append(uid)
            at.append(i)
        if trash:
            _unlink_later(self.writer.reactor, trash)
        if ended:
            self._claims_ended(ended)
        if gone:
            table.remove(at)
            self._changes += 1
            self._rewrite_uidlist_after_removal(len(gone))
            self._after_own_change(was_current)
            self._bump([], gone)
            self._listeners.notify(FolderChange(expunged=tuple(gone), origin=origin))
            if self._shared:
                shared.tell_others(self.directory)
        return gone

    def copy_to(self, uids, destination):
        """
        Copy messages to C{destination}; fires with (source UID, new UID)
        pairs once every copy is durable. A message that is gone (expunged,
        or moved by another session, here or in another process) is left
        out. All or nothing (RFC 3501 §6.4.7):
        a Maildir destination takes the copies as one write group
        (L{append_many}), so none appears unless all do; elsewhere, if one
        copy fails (a full disk), the copies made are expunged from
        C{destination} before the failure is passed on.
        """
        sources: list[int] = []
        copies = []
        table = self._table
        # Maildir to Maildir: each source file is opened here and copied in
        # the group commit's thread (a 46 MB COPY was read whole here).
        by_file = isinstance(destination, MaildirFolder)
        try:
            for uid in sorted(set(uids)):
                if table.position(uid) < 0:
                    continue
                try:
                    if by_file:
                        copies.append(self._copy_source(uid))
                    else:
                        info = table.info(table.position(uid))
                        copies.append((self.read(uid), info.flags, info.internal_date))
                except NoSuchMessage:
                    # Expunged (or moved) by another process since this one
                    # looked: not copied, as one expunged here is not.
                    table = self._table
                    continue
                sources.append(uid)
        except BaseException:
            for copy in copies if by_file else ():
                os.close(copy[0])
            raise
        if by_file:
            d = destination._append_copies(copies)
        elif len(copies) > 1 and hasattr(destination, "append_many"):
            # One write group: the copies appear in the destination together
            # or not at all (never EXISTS then EXPUNGE for another session).
            d = destination.append_many(copies)
        else:
            d = defer.DeferredList([destination.append(*copy) for copy in copies], consumeErrors=True)

        def settled(results):
            failures = [value for ok, value in results if not ok]
            if not failures:
                return sorted(zip(sources, (value for _, value in results)))
            made = [value for ok, value in results if ok]
            if made:
                destination.expunge(made)
                return destination.flush().addBoth(lambda _: failures[0])
            return failures[0]

        return d.addCallback(settled)

    def copy_for_move(self, uids, destination):
        """
        L{copy_to} for a move (IMAP MOVE, RFC 6851; webmail's move and
        delete to Trash; RENAME INBOX): each message's file is first
        claimed, by renaming it into C{tmp/} under a claimed name (atomic: of
        two sessions, or two processes under C{--workers}, moving the same
        message at once, one rename wins; for the other the message is
        gone, as if expunged). Only the claimed messages are copied; fires
        with their (source UID, new UID) pairs, ascending, once the copies
        are durable (an empty list if another move took them all). The
        caller expunges the sources next, which removes the claimed files.
        If the copy fails, the claims are given back (the files return to
        their names) and the failure is passed on: nothing is lost. A
        claim a crash left behind is given back by L{clean_tmp}.
        """
        uids = sorted(set(uids))
        busy = [uid for uid in uids if uid in self._moving]
        if busy:
            # Being moved by another session of this process: wait for that
            # move to end, then claim what is still here (its expunge has
            # then told this session's view, so the EXPUNGE responses come
            # before this move's answer).
            waits = [self._claim_ended(uid) for uid in busy]
            return defer.gatherResults(waits).addCallback(lambda _: self.copy_for_move(uids, destination))
        claimed = self._claim(uids)
        if not claimed:
            return defer.succeed([])
        try:
            d = self.copy_to(sorted(claimed), destination)
        except BaseException:
            self._unclaim(claimed)
            raise

        def not_copied(failure: Failure) -> Failure:
            self._unclaim(claimed)
            return failure

        return d.addErrback(not_copied)

    def _claim(self, uids) -> dict[int, tuple[str, str]]:
        """
        Claim the files of C{uids} for a move (L{copy_for_move}): each
        renamed to C{tmp/.moving-<pid>-<file name>}. Returns UID ->
        (former path, claimed path) of those this call claimed; a message
        gone, or claimed already by another move, is left out.
        """
        claimed: dict[int, tuple[str, str]] = {}
        for uid in sorted(set(uids)):
            if uid in self._moving:
                continue  # (another session of this process is moving it)
            for attempt in (0, 1):
                try:
                    path = self._file(uid)
                except NoSuchMessage:
                    break
                away = os.path.join(self.directory, "tmp", f"{MOVING_PREFIX}{_pid[0]}-{os.path.basename(path)}")
                try:
                    os.rename(path, away)
                except FileNotFoundError:
                    if attempt:
                        break
                    # Renamed since (its flags) or claimed by another process:
                    # look again, then try once more.
                    self._scan(force=True)
                    continue
                claimed[uid] = self._moving[uid] = (path, away)
                break
        return claimed

    def _claim_ended(self, uid: int) -> defer.Deferred:
        """A Deferred firing (in a later turn) once the move that claimed C{uid} has expunged it or given it back."""
        d: defer.Deferred = defer.Deferred()
        self._claim_waiters.setdefault(uid, []).append(d)
        return d

    def _claims_ended(self, uids: Iterable[int]) -> None:
        """Wake the moves waiting for the claims of C{uids} (L{_claim_ended}), in a later turn of the reactor."""
        waiting = [d for uid in uids for d in self._claim_waiters.pop(uid, ())]
        if waiting:
            self.writer.reactor.callLater(0, lambda: [d.callback(None) for d in waiting])

    def _unclaim(self, claimed: dict[int, tuple[str, str]]) -> None:
        """Give back the claims of a move whose copy failed: each file back under its former name."""
        for uid, (path, away) in claimed.items():
            if self._moving.get(uid) != (path, away):
                continue  # (expunged meanwhile: the expunge removed it)
            del self._moving[uid]
            try:
                os.rename(away, path)
            except OSError as e:
                log.warn("{path}: a claimed message could not be given back ({error}); clean_tmp will", path=away, error=error_words(e))
        self._claims_ended(claimed)

    def _copy_source(self, uid: int) -> tuple[int, int, str, frozenset[str], float]:
        """
        (a descriptor of C{uid}'s file open for reading, its size in octets,
        its L{_shown_size_field}, its flags, its internal date), for a copy
        made in the group commit's thread (L{_append_copies}); the caller
        closes the descriptor. Checks a file listed on trust first (its
        size then the size on the wire). L{NoSuchMessage} if it is gone.
        """
        try:
            fd = os.open(self._file(uid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._scan(force=True)  # renamed by someone else: look again
            try:
                fd = os.open(self._file(uid), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NoSuchMessage(uid) from None
        table = self._table
        i = self._position(uid)
        base = table.names[i]
        shown = _SHOWN_FIELD.search(base)
        downgraded = self._kept.get(base, (0, 0))[1]
        field = shown.group(0) if shown else (f",D={downgraded}" if downgraded else "")
        return fd, os.fstat(fd).st_size, field, table.flags(i), table.dates[i]

    def _append_copies(self, copies: list[tuple[int, int, str, frozenset[str], float]]) -> defer.Deferred:
        """
        L{append_many} of copies made from open files (L{_copy_source}),
        each copied into its new file in the group commit's thread (no
        octet read in the reactor), as one write group; the descriptors are
        closed once the group is done. Fires as L{append_many} does.
        """
        if self._unrepaired is not None:
            try:
                self._repair()
            except (OSError, StoreError) as e:
                for fd, *_rest in copies:
                    os.close(fd)
                return defer.fail(e)
        called = []
        waiting = self._after_repair(lambda: (called.append(True), self._append_copies(copies))[1])
        if waiting is not None:

            def not_called(failure: Failure) -> Failure:
                if not called:  # (the repair's flush failed: the copies were never written)
                    for fd, *_rest in copies:
                        os.close(fd)
                return failure

            return waiting.addErrback(not_called)
        prepared = []
        for fd, size, field, flags, date in copies:
            system, keywords = split_flags(flags)
            base = unique_name(size, self.hostname, now=date) + field
            filename = base + info_suffix(system)
            entry = self._reserve(base, "cur", filename, size, date, keywords)

            def write(out: int, fd: int = fd, size: int = size, date: float = date) -> None:
                offset = 0
                while offset < size:
                    sent = os.sendfile(out, fd, offset, size - offset)
                    if not sent:
                        raise OSError(errno.EIO, "a message's file is shorter than its size (changed by another program)")
                    offset += sent
                os.utime(out, (date, date))

            prepared.append((entry, (
                os.path.join(self.directory, "tmp", base), os.path.join(self.directory, "cur", filename), write, self._record(entry),
                None if self._shared else self._place,
                lambda entry=entry: self._arrived(None, entry),
            )))
        deferreds = self.writer.write_group([write for _, write in prepared])
        for d, (entry, _) in zip(deferreds, prepared):
            d.addCallbacks(lambda _, entry=entry: entry.info.uid, self._not_stored, errbackArgs=(entry,))
        done = defer.DeferredList(deferreds, consumeErrors=True)

        def closed(result: Any) -> Any:
            for copy in copies:
                try:
                    os.close(copy[0])
                except OSError:
                    pass
            return result

        done.addBoth(closed)
        return done if self._settling is None else self._after_settled(done)

    def flush(self) -> defer.Deferred:
        """
        fsync C{cur/} and C{new/} (in a worker thread), so that unlinks and
        renames made so far survive a power cut.
        """
        directories = [os.path.join(self.directory, sub) for sub in ("cur", "new")]

        def sync() -> None:
            for directory in directories:
                fsync_directory(directory)

        reactor = self.writer.reactor
        # (a repair's flush on its way, L{_write_repair}: waited for first)
        waiting = self._after_repair(lambda: threads.deferToThreadPool(reactor, reactor.getThreadPool(), sync))
        if waiting is not None:
            return waiting
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), sync)

    def _in_new(self) -> list[int]:
        """
        Rows whose files are in C{new/}, as the table says: callers look
        first (L{_scan}), and the table is then in step with the
        directory. No listing, and no table by name.
        """
        mask = self._table.bits.translate(IS_NEW)
        found = []
        i = mask.find(1)
        while i >= 0:
            found.append(i)
            i = mask.find(1, i + 1)
        return found

    def take_new(self) -> list[int]:
        """
        Move every message still in C{new/} to C{cur/} (a session has now
        seen it: Maildir's rule, and IMAP's \\Recent for that session).
        Returns their UIDs, ascending.
        """
        self._scan()
        was_current = self._before_own_change()
        taken = []
        table = self._table
        in_new = self._in_new()
        for n, i in enumerate(in_new):
            system = table.bits[i] & SYSTEM_MASK
            filename = table.names[i] + SUFFIXES[system]
            try:
                os.rename(os.path.join(self.directory, "new", table.filename(i)), os.path.join(self.directory, "cur", filename))
            except FileNotFoundError:
                continue
            except OSError as e:
                if not is_not_writable(e):
                    raise
                # A folder the hub may not write (read as it is): the
                # messages stay in new/, recent to the first session of
                # this process that takes them (a set in memory).
                self._say_not_writable(e)
                given = self._given_in_new
                for j in in_new[n:]:
                    if table.uids[j] not in given:
                        given.add(table.uids[j])
                        taken.append(table.uids[j])
                break
            table.set_file(i, "cur", filename, system)
            taken.append(table.uids[i])
        if taken:
            self._after_own_change(was_current)
        # Appended and copied messages go straight to cur/ but are \Recent
        # all the same (RFC 3501 §2.3.2); under --workers, to the first
        # session of any process (shared.claim_recent).
        taken_set = set(taken)
        if self._shared:
            taken_set.update(self._offered_recent(take=True))
        else:
            taken_set.update(uid for uid in self._recent if table.position(uid) >= 0)
        self._recent = set()
        return sorted(taken_set)

    def _offered_recent(self, take: bool) -> list[int]:
        """Under --workers: the messages offered as \\Recent that this process knows (L{shared.claim_recent})."""
        table = self._table
        pending = {listed[0] for listed in self._elsewhere.values()}
        return shared.claim_recent(self._uidlist_lock, lambda uid: table.position(uid) >= 0, pending, take)

    # -- mod-sequences (RFC 7162) ------------------------------------------
    #
    # Kept in their own log, apart from the UID list: a line per change
    # (C{<uid> <modseq>}, or C{<uid>:<uid> <modseq>} for a run of UIDs
    # changed together, as a first scan gives), appended without fsync
    # (like a flag rename; a change lost in a power cut loses its modseq
    # with it). A new modseq is at least the time in microseconds, and
    # HIGHESTMODSEQ at load is at least the load time, so values never go
    # backwards even when the log's tail is lost. The index keeps the
    # modseqs of the log's first octets (checked by their digest, as the
    # list's), so a cold load parses only what came after.

    def _modseq_path(self) -> str:
        return os.path.join(self.directory, MODSEQ_LOG)

    def _read_modseq_log(self) -> bytes:
        try:
            with open(self._modseq_path(), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        self._modseq_lines = data.count(b"\n")
        self._modseq_size = len(data)
        return data

    def _modseq_log_state(self) -> tuple[int, bytes]:
        """(octets of the log as it is now, their digest) for the index."""
        self._write_arrivals()
        try:
            with open(self._modseq_path(), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        return end, _digest(memoryview(data)[:end]).digest()

    def _apply_modseq_log(self, modlog: bytes) -> None:
        """The log's lines after what the index covered, applied to the rows."""
        rows = self._rows
        top = self._index.highest_modseq if self._index is not None and self._modseq_covered >= 0 else 0
        start = max(self._modseq_covered, 0)
        if self._modseq_covered < 0:
            rows.modseqs = array("Q", [1]) * len(rows)
        modseqs = rows.modseqs
        for lo_uid, hi_uid, value in _modseq_log_ranges(modlog[start:]):
            top = max(top, value)
            if lo_uid <= 0:
                continue
            i = bisect.bisect_left(rows.uids, lo_uid)
            j = bisect.bisect_right(rows.uids, hi_uid, i)
            if j - i == 1:
                modseqs[i] = value
            elif j > i:
                modseqs[i:j] = array("Q", [value]) * (j - i)
        self.highest_modseq = max(top, _now_us())

    def _bump_arrived(self, uid: int, modseq: int = 0) -> None:
        """
        L{_bump} for a message just delivered (row C{uid} just added): its
        mod-sequence is given now; its line in the modseq log is appended
        with those of the other arrivals of the same group commit, once
        the writer has run that batch's callbacks (one append per batch,
        not one per message; L{_write_arrivals}). Under --workers it came
        with its UID (C{modseq}, logged already: L{_number_records}).
        """
        if self._shared:
            # Under --workers a modseq comes from the folder's shared clock,
            # under its lock (store/shared.py): taken once for the batch's
            # arrivals, in the batch's thread (_number_records); they are
            # applied and told once for the batch (_write_shared_arrivals).
            pending = self._arrivals
            later = getattr(self.writer, "after_batch", None)
            if not pending and later is not None:
                later(self._write_arrivals)
            pending.append((uid, modseq))
            if later is None:
                self._write_arrivals()
            return
        self._changes += 1
        value = max(self.highest_modseq + 1, time.time_ns() // 1000)  # (_now_us)
        self.highest_modseq = value
        table = self._table
        uids = table.uids
        i = len(uids) - 1
        if i < 0 or uids[i] != uid:
            i = table.position(uid)
        if i >= 0:
            table.modseqs[i] = value
        pending = self._arrivals
        if not pending:
            later = getattr(self.writer, "after_batch", None)
            if later is None:
                pending.append(f"{uid} {value}\n")
                self._write_arrivals()
                return
            later(self._write_arrivals)
        pending.append(f"{uid} {value}\n")

    def _write_arrivals(self) -> None:
        """Append the modseq lines of arrivals not written yet (L{_bump_arrived})."""
        if self._arrivals:
            if self._shared:
                self._write_shared_arrivals()
                return
            records, self._arrivals = self._arrivals, []
            self._append_modseqs(records, self.highest_modseq)

    def _write_shared_arrivals(self) -> None:
        """
        Under --workers: the arrivals of one group commit (their UIDs and
        modseqs in C{_arrivals}, given and logged in the batch's thread,
        L{_number_records}) take their modseqs in the table, as one
        change; then this process's listeners and the other workers hear
        of them, once for the batch. Runs before any of the batch's
        Deferreds fires (after_batch), and takes no lock unless this
        process has meanwhile given or read a modseq above an arrival's
        (a session may have been shown it as HIGHESTMODSEQ): those get a
        new one, so that nothing shows up below what was shown
        (RFC 7162 §3.1).
        """
        arrivals, self._arrivals = self._arrivals, []
        table = self._table
        shown = self.highest_modseq
        late = []
        top = shown
        pending = self._modseq_pending
        for uid, value in arrivals:
            if pending:
                pending.pop(uid, None)  # (its own line, read before it arrived)
            if value <= shown:
                late.append(uid)  # (_bump_now below replaces the value the row took)
                continue
            # (the row took this value when it arrived: _arrived)
            if value > top:
                top = value
        self.highest_modseq = top
        self._changes += 1
        self._modseq_lines += len(arrivals)
        if late or self._modseq_lines > 2 * len(table) + 1000:
            with self._uidlist_lock:
                self._catch_up_modseqs()  # (a rewrite keeps what the others logged)
                if late:
                    self._bump_now(late)
                else:
                    self._append_modseqs([], self.highest_modseq)  # (compacted)
                self._modseq_position = shared.ListPosition.now(self._modseq_path())
        if self._listeners.count():
            self._listeners.notify(FolderChange(added=tuple(uid for uid, _ in arrivals)))
        shared.tell_others(self.directory)

    def _append_own_modseqs(self, data: bytes) -> None:
        """
        Under --workers, with the folder's lock held (in any thread):
        append C{data} (lines) to the modseq log; the position read so far
        moves past them only when nothing of the others' lies between
        (else the next catch-up reads theirs, and these again, which
        changes nothing).
        """
        try:
            fd = os.open(self._modseq_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, data)
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.warn("modseq log of {path} not written: {error}", path=self.directory, error=e.strerror)
            return
        position = self._modseq_position
        if st.st_ino == position.inode and st.st_size - len(data) == position.offset:
            self._modseq_position = shared.ListPosition(st.st_ino, st.st_size)

    def _catch_up_modseqs(self) -> None:
        """
        Under --workers: the modseqs other processes logged since this one
        last read the log, taken for their messages (L{shared}). Call
        with the folder's lock held.
        """
        data, whole, self._modseq_position = shared.modseq_log_tail(self._modseq_path(), self._modseq_position)
        if not data:
            return
        table = self._table
        uids, modseqs, top = table.uids, table.modseqs, self.highest_modseq
        pending = self._modseq_pending
        for lo_uid, hi_uid, value in _modseq_log_ranges(data):
            top = max(top, value)
            if lo_uid <= 0:
                continue
            i = bisect.bisect_left(uids, lo_uid)
            j = bisect.bisect_right(uids, hi_uid, i)
            if i == j and lo_uid == hi_uid:
                # A message this process does not know yet (another's, its
                # file on its way): its value waits for it (_claim_listed).
                if len(pending) >= MODSEQ_PENDING_MAX:
                    pending.clear()  # (those found later get a new value)
                if value > pending.get(lo_uid, 0):
                    pending[lo_uid] = value
                continue
            for k in range(i, j):
                if value > modseqs[k]:
                    modseqs[k] = value
                    self._from_log.add(uids[k])
        if top > self.highest_modseq:
            self.highest_modseq = top
            self._changes += 1

    def _bump(self, uids: list[int], gone: Iterable[int] = (), observed: bool = False) -> None:
        """
        New modseqs for C{uids} changed (and C{gone} expunged), logged.
        C{observed}: changes this process found rather than made; under
        --workers those another process logged keep its value.
        """
        self._write_arrivals()  # the log stays in the order of the changes
        if self._shared:
            with self._uidlist_lock:
                self._catch_up_modseqs()
                if observed:
                    uids = [uid for uid in uids if uid not in self._from_log]
                    if not uids and not gone:
                        return
                self._bump_now(uids, gone)
                self._modseq_position = shared.ListPosition.now(self._modseq_path())
            return
        self._bump_now(uids, gone)

    def _bump_now(self, uids: list[int], gone: Iterable[int] = ()) -> None:
        self._changes += 1
        value = max(self.highest_modseq + 1, _now_us())
        if self._shared and self._unrepaired is None:
            # (a folder read as it is has no counter to take from: its
            # mod-sequences are this process's clock, as one process's are)
            value = self._uidlist_lock.take_modseq(value)
        self.highest_modseq = value
        table = self._table
        uids = sorted(uids)
        for uid in uids:
            i = table.position(uid)
            if i >= 0:
                table.modseqs[i] = value
        if len(uids) > 1 and uids[-1] - uids[0] == len(uids) - 1:
            records = [f"{uids[0]}:{uids[-1]} {value}\n"]  # a run (a first scan)
        else:
            records = [f"{uid} {value}\n" for uid in uids] or [f"0 {value}\n"]
        self._append_modseqs(records, value)

    def _append_modseqs(self, records: list[str], value: int) -> None:
        """
        Append C{records} to the modseq log (not flushed: a change's
        modseq lost in a crash is the Maildir trade, as a flag rename is);
        once the log holds far more lines than messages, it is compacted
        (L{_compact_modseq_log}).
        """
        table = self._table
        try:
            if records:
                data = "".join(records).encode("ascii")
                # (os-level: no text and buffer objects for one short line;
                # under the log's lock: a compaction carries what was
                # appended before its rename, L{_compact_modseq_log})
                with self._modseq_lock():
                    fd = os.open(self._modseq_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
                    try:
                        os.write(fd, data)
                    finally:
                        os.close(fd)
                self._modseq_lines += len(records)
            if self._modseq_lines > 2 * len(table) + 1000 and not self._compacting:
                self._compact_modseq_log(value)
        except OSError as e:
            # The change itself is made; its modseq then lives until restart.
            log.warn("modseq log of {path} not written: {error}", path=self.directory, error=e.strerror)

    def _modseq_lock(self) -> Any:
        """What every writer of the modseq log holds: the folder's lock under --workers, else the log's own."""
        if self._shared:
            return self._uidlist_lock
        lock = self._modseq_write_lock
        if lock is None:
            lock = self._modseq_write_lock = threading.Lock()
        return lock

    def _compact_modseq_log(self, value: int) -> None:
        """
        Rewrite the modseq log with one line per message whose modseq is
        above 1 and a first line C{0 value} (the highest), crash-safe and
        off the reactor: the text is made here from the table, then in a
        worker thread of the account's L{SmallFiles} written to a tmp
        file and fsynced, and, with the log's lock held, the lines
        appended since the text was made are carried after it and the tmp
        renamed over the log; then the directory is fsynced. A crash
        leaves the old log or the whole new one, never a part (before, the
        log was replaced in the reactor without a flush: a crash could
        leave it empty, and every message's modseq back at 1). If another
        process compacted it meanwhile, this one is dropped. Without a
        L{SmallFiles} (a script), made here.
        """
        table = self._table
        text = (f"0 {value}\n" + "".join(f"{u} {m}\n" for u, m in zip(table.uids, table.modseqs) if m > 1)).encode("ascii")
        lines = text.count(b"\n")
        path = self._modseq_path()
        directory = self.directory
        lock = self._modseq_lock()
        with lock:
            try:
                st = os.stat(path)
                seen: tuple[int, int] | None = (st.st_ino, st.st_size)
            except FileNotFoundError:
                seen = None
        shared_log = self._shared

        def compact() -> int | None:
            tmp = f"{path}.{os.getpid()}.{next(_counter)}.tmp"  # (its own: another worker may compact too)
            try:
                with open(tmp, "wb") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                with lock:
                    try:
                        now = os.stat(path)
                    except FileNotFoundError:
                        now = None
                    if (now is None) != (seen is None) or (now is not None and seen is not None and (now.st_ino != seen[0] or now.st_size < seen[1])):
                        _unlink_quietly(tmp)  # (another process compacted it: clean already)
                        return None
                    tail = b""
                    if now is not None and seen is not None and now.st_size > seen[1]:
                        # Appended since the text was made (not flushed, as
                        # every append: the lines before them are).
                        with open(path, "rb") as f:
                            f.seek(seen[1])
                            tail = f.read(now.st_size - seen[1])
                        with open(tmp, "ab") as f:
                            f.write(tail)
                    os.replace(tmp, path)
                    if shared_log:
                        # (read from the new file's start of the carried lines on)
                        self._modseq_position = shared.ListPosition(os.stat(path).st_ino, len(text))
                fsync_directory(directory)
                return lines + tail.count(b"\n")
            except BaseException:
                _unlink_quietly(tmp)  # (a full disk: no partial log left to keep it full)
                raise

        flusher = self._flusher
        if flusher is None:
            counted = compact()
            if counted is not None:
                self._modseq_lines = counted
            return
        self._compacting = True

        def done(counted: int | None) -> None:
            self._compacting = False
            if counted is not None:
                self._modseq_lines = counted

        def failed(reason: Failure) -> None:
            self._compacting = False
            log.warn("modseq log of {path} not compacted ({error}); it will be later", path=directory, error=error_words(reason.value))

        flusher.in_thread(compact).addCallbacks(done, failed)

    def modseq(self, uid: int) -> int:
        return self._table.modseqs[self._position(uid)]

    def recent(self) -> list[int]:
        """What L{take_new} would return, without moving or taking anything."""
        self._scan()
        table = self._table
        found = {table.uids[i] for i in self._in_new()}
        if self._shared:
            found.update(self._offered_recent(take=False))
        else:
            found.update(uid for uid in self._recent if table.position(uid) >= 0)
        return sorted(found)

    def add_listener(self, listener):
        self._listeners.add(listener)

    def remove_listener(self, listener):
        self._listeners.remove(listener)


_IS_DELETED = bytes(1 if value & system_bits(frozenset({"\\Deleted"})) else 0 for value in range(256))


def _read_whole(fd: int, size: int | None = None) -> bytes:
    """
    Everything in the file open at C{fd}: one read when its size is
    C{size} (octets; when not given, the one fstat gives).
    """
    if size is None:
        size = os.fstat(fd).st_size
    data = os.read(fd, size + 1)  # one octet more than the size: a short read is the end
    if len(data) <= size:
        return data
    chunks = [data]
    while True:
        more = os.read(fd, 1 << 20)
        if not more:
            return b"".join(chunks)
        chunks.append(more)


def _unlink_later(reactor: Any, paths: list[str]) -> defer.Deferred:
    """
    Unlink C{paths} (expunged messages already moved to C{tmp/}) in a
    worker thread; the Deferred fires when done (a failure is logged).
    """

    def unlink() -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), unlink)
    d.addErrback(lambda f: log.warn("expunged files not removed from tmp/ ({error}); clean_tmp will", error=error_words(f.value)))
    return d


def _now_us() -> int:
    # Microseconds: no burst of changes outruns the clock, so a modseq log
    # lost with its tail cannot make values go back after a restart.
    return time.time_ns() // 1000


def _last_uid_validity(path: str | None) -> int:
    """The highest UIDVALIDITY given in the account (0 if none known)."""
    if path is None:
        return 0
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _remember_uid_validity(path: str | None, value: int, sync: bool = True) -> None:
    # RFC 3501 §2.3.1.1: a folder deleted and made again (even within the
    # same second) must not get a UIDVALIDITY it had before. One counter per
    # account, synced before the new folder's UID list names the value
    # (without sync: flushed with that list by the caller, SmallFiles).
    if path is None:
        return
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{value}\n")
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if sync:
            fsync_directory(os.path.dirname(path) or ".")  # (the account's folder: a sub-folder's list is elsewhere)
    except OSError:
        # (a full disk: no empty .tmp is left in the account's folder)
        _unlink_quietly(tmp)
        raise


def _bare_lf_at_start(path: str, octets: int = 4096) -> bool:
    """
    Whether the first C{octets} of the file at C{path} hold an LF not
    after a CR (a message another program wrote with bare LFs). A file
    that cannot be read counts as one (it is checked, and that says why).
    """
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(octets)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return head.count(b"\n") != head.count(b"\r\n")


def _read_only_mount(path: str) -> bool:
    """Whether C{path} is on a file system mounted read-only (statvfs's ST_RDONLY)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _mtime_or_zero(path: str) -> int:
    """C{path}'s mtime in nanoseconds, 0 when it is not there (new/ of a half-made folder)."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _unlink_quietly(path: str) -> None:
    """Remove C{path} if it is there (a temporary file a failed write left); errors are ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


class NotAMessageFile(Exception):
    """An entry of C{new/} or C{cur/} that is not a regular file: no message."""


def _parse_unchecked(path: str) -> tuple[set[str], dict[str, tuple[int, int]]]:
    """(unchecked base names, kept findings) of a C{mailhub-unchecked} file; empty if it is missing or unreadable."""
    unchecked: set[str] = set()
    kept: dict[str, tuple[int, int]] = {}
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return unchecked, kept
    if lines[0] + "\n" == _UNCHECKED_HEADER:
        if lines[-2:] != ["end", ""]:
            return unchecked, kept  # (cut short by a crash: _read_unchecked)
    elif lines[0] + "\n" != _UNCHECKED_OLD_HEADER:
        return unchecked, kept
    for line in lines[1:]:
        words = line.split(" ")
        if len(words) == 2 and words[0] == "?":
            unchecked.add(words[1])
        elif len(words) == 4 and words[0] == "=" and all(w.isascii() and w.isdigit() for w in words[2:]):
            kept[words[1]] = (int(words[2]), int(words[3]))
    return unchecked, kept


def _to_crlf_in_place(path: str) -> tuple[int, str, float]:
    """
    Rewrite a message file with CRLF line ends if it has bare LFs or CRs (tmp +
    rename, keeping its name and mtime); return its size in octets, its
    L{_shown_size_field} and its mtime. L{NotAMessageFile} if C{path} is a
    FIFO, a device or a directory.
    """
    # O_NONBLOCK: open(2) of a FIFO another program left in the Maildir
    # would wait for a writer, and stop every session of the hub with it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAMessageFile(path)
        data = _read_whole(fd, st.st_size)
    finally:
        os.close(fd)
    fixed = crlf(data, bare_cr=True)
    shown = _shown_size_field(fixed)
    if fixed is not data:
        # tmp/ of the same Maildir: never mistaken for a message by a scan.
        folder, name = os.path.split(os.path.dirname(path))[0], os.path.basename(path)
        # (a name of its own: the load's check in a thread and one in the
        # reactor may rewrite the same file at once; each renames a whole copy)
        tmp = os.path.join(folder, "tmp", f"{name}.{os.getpid()}.{next(_counter)}.crlf")
        with open(tmp, "wb") as f:
            f.write(fixed)
            f.flush()
            os.fsync(f.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        if not _still_the_file(path, st):
            # Renamed (a flag another program set), removed or replaced
            # while the copy was made: the copy must not take its name
            # (a removed message would come back, a renamed one twice).
            _unlink_quietly(tmp)
            raise FileNotFoundError(errno.ENOENT, "changed while it was made CRLF", path)
        os.rename(tmp, path)
        # The rename durable before the caller records the finding (a size
        # told, mailhub-unchecked): a crash must not bring the bare-LF file
        # back under a finding that says it was made CRLF.
        fsync_directory(os.path.dirname(path))
    return len(fixed), shown, st.st_mtime


def _still_the_file(path: str, st: os.stat_result) -> bool:
    """
    Whether C{path} is still the file C{st} was taken of (same device,
    inode, size and mtime), just before a CRLF copy is renamed over it:
    a Maildir file another program renamed (a flag), removed (an
    expunge) or rewrote meanwhile is not. Not atomic with the rename
    (nothing is, in POSIX), but it narrows the window from the copy's
    write and flush (seconds, for a batch) to one system call.
    """
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# Files made CRLF together (L{_to_crlf_many}): one flush for their copies,
# and at most this many copies open at once.
CRLF_BATCH = 256


def _to_crlf_many(paths: list[str]) -> list:
    """
    L{_to_crlf_in_place} for many files, in a worker thread: every copy
    that needs writing is written first, then one flush serves them all
    (L{flush_written}: one syncfs, or their fsyncs side by side, as a
    batch of the group commit), then each is renamed over its file (name
    and mtime kept) and each directory fsynced once. A file's finding is
    given only once its copy and its rename are durable, so what the
    caller records from it (a size, the unchecked file) never gets ahead
    of the file. C{CRLF_BATCH} files at a time. Returns, per path,
    C{(size, shown size field, mtime)}; C{False} for a FIFO, device or
    directory (L{NotAMessageFile}); L{None} for a file not checked now
    (gone, unreadable, a full disk for its copy, a failed flush: it keeps
    its old, whole content and is checked when next needed).
    """
    found: list = []
    for start in range(0, len(paths), CRLF_BATCH):
        found.extend(_to_crlf_batch(paths[start : start + CRLF_BATCH]))
    return found


def _to_crlf_batch(paths: list[str]) -> list:
    found: list = [None] * len(paths)
    # (position, tmp path, descriptor, final path, stat, size, shown)
    copies: list[list] = []
    try:
        for i, path in enumerate(paths):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        found[i] = False
                        continue
                    data = _read_whole(fd, st.st_size)
                finally:
                    os.close(fd)
            except OSError:
                continue  # (gone or unreadable: checked when needed)
            fixed = crlf(data, bare_cr=True)
            shown = _shown_size_field(fixed)
            if fixed is data:
                found[i] = (len(fixed), shown, st.st_mtime)  # (CRLF already: nothing to write)
                continue
            del data
            folder, name = os.path.split(os.path.dirname(path))[0], os.path.basename(path)
            tmp = os.path.join(folder, "tmp", f"{name}.{os.getpid()}.{next(_counter)}.crlf")
            try:
                out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except OSError:
                continue
            copies.append([i, tmp, out, path, st, len(fixed), shown])
            try:
                view = memoryview(fixed)
                while view:
                    view = view[os.write(out, view) :]
            except OSError:
                copies[-1][2] = None
                os.close(out)
                _unlink_quietly(tmp)
                copies.pop()
        if not copies:
            return found
        # One flush for every copy (their data on disk before any rename).
        errors = flush_written([c[2] for c in copies], os.path.dirname(copies[0][1]))
        directories: dict[str, list[int]] = {}
        for copy, error in zip(copies, errors):
            i, tmp, out, path, st, size, shown = copy
            os.close(out)
            copy[2] = None
            if error is not None:
                _unlink_quietly(tmp)
                continue
            try:
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                if not _still_the_file(path, st):
                    # (renamed, removed or replaced during the copies and
                    # their flush: as _to_crlf_in_place, left to the next look)
                    _unlink_quietly(tmp)
                    continue
                os.rename(tmp, path)
            except OSError:
                _unlink_quietly(tmp)
                continue
            directories.setdefault(os.path.dirname(path), []).append(i)
            found[i] = (size, shown, st.st_mtime)
        # The renames durable before any finding is given.
        for directory, members in directories.items():
            try:
                fsync_directory(directory)
            except OSError:
                for i in members:
                    found[i] = None  # (old or new, the file is whole: checked again when needed)
        return found
    finally:
        for copy in copies:
            if copy[2] is not None:
                os.close(copy[2])
                _unlink_quietly(copy[1])


_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf(data: bytes, bare_cr: bool = False) -> bytes:
    """
    C{data} with every bare LF made CRLF, and with C{bare_cr} every bare
    CR too (an old Mac mailer's line end, which no client must get alone:
    RFC 5322 §2.3); C{data} itself if it had none.
    """
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and not (bare_cr and data.count(b"\r") != pairs):
        return data
    if bare_cr:
        return _LINE_END.sub(b"\r\n", data)
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _with_flags(info: MessageInfo, flags: frozenset[str]) -> MessageInfo:
    return MessageInfo(info.uid, info.key, flags, info.size, info.internal_date)


@implementer(IMailAccount)
class MaildirAccount:
    """
    One account's Maildir++ folders and subscriptions. CREATE, DELETE and
    RENAME change the directories at once; they and the subscriptions
    file are made durable off the reactor (L{SmallFiles}), and
    L{durable} fires once every change made so far is on disk: a
    protocol replies only then.
    """

    def __init__(self, address: str, path: str, writer: GroupCommitWriter, hostname: str, small_files: SmallFiles | None = None):
        self.address = address
        self.path = path
        self.writer = writer
        self.hostname = hostname
        self.small_files = small_files or SmallFiles(getattr(writer, "reactor", None))
        self._folders: dict[str, MaildirFolder] = {}
        self._lost: list[BaseException] = []  # flushes that failed, not told yet (durable)
        self._rename_over: defer.Deferred | None = None  # fires when the last RENAME asked for is done
        os.makedirs(path, exist_ok=True)
        self._redo_rename()
        self._remove_deleted()

    def _flushed(self, d: defer.Deferred) -> None:
        """Keep a flush's failure for the next L{durable} (logged once)."""

        def failed(reason: Failure) -> None:
            if self._lost:
                return  # (one line until durable() tells it: a failing disk fails every change)
            log.warn("{path}: folder change or subscriptions not made durable ({error})", path=self.path, error=error_words(reason.value))
            self._lost.append(reason.value)

        d.addErrback(failed)

    def _sync_account_directory(self) -> None:
        # Every Maildir++ folder is an entry of the account's directory,
        # as are mailhub-uidvalidity and the subscriptions file.
        self._flushed(self.small_files.sync_directories([self.path]))

    def durable(self) -> defer.Deferred:
        """
        Fires with None once every folder change and subscription change
        made so far is on disk (fsynced), or fails with the C{OSError}
        (L{StoreError} for a full disk) of one that could not be made so.
        """

        def told(_: Any) -> None:
            if self._lost:
                error, self._lost = self._lost[0], []
                raise storage_error(error) if isinstance(error, OSError) else error

        return self.small_files.settled().addCallback(told)

    def _folder_path(self, name: str) -> str:
        if name == INBOX:
            return self.path
        encoded = encode_folder(name)
        if len(encoded.encode("utf-8")) > 255:
            # A Maildir++ folder, its whole hierarchy included, is one
            # directory name: NAME_MAX (255 octets) bounds it.
            raise BadFolderName("mailbox name too long")
        return os.path.join(self.path, encoded)

    def folder(self, name: str) -> MaildirFolder:
        if name == INBOX:  # every delivery: the canonical name, looked up at once
            folder = self._folders.get(INBOX)
            if folder is not None and not folder.made_again_elsewhere and not folder._refused:
                return folder
        name = normalize_folder_name(name)
        folder = self._folders.get(name)
        if folder is not None and folder._refused:
            folder = self._folders.pop(name) and None  # (changed while read as it is: L{MaildirFolder._agree_later})
        if folder is not None and folder._shared:
            # --workers: another worker may have deleted it and made it
            # again (a look reads its list's new header: made_again).
            try:
                folder._scan()
            except NoSuchFolder:
                if folder.made_again_elsewhere:
                    folder = self._folders.pop(name, None) and None
                else:
                    raise
            except (OSError, StoreError):
                pass  # (told by what uses it)
        if folder is None:
            path = self._folder_path(name)
            if name != INBOX and not os.path.isdir(os.path.join(path, "cur")):
                raise NoSuchFolder(name)
            # A list lost or damaged is made again at this load: flushed off
            # the reactor (SmallFiles), told once durable (unsettled()).
            folder = self._folders[name] = MaildirFolder(name, path, self.writer, self.hostname, self._validity_path(), sync_later=self.small_files)
            folder._sync_later = None  # (only its load: a list rewritten later is fsynced where it is written)
            if folder.creation_flush is not None:
                self._flushed(folder.creation_flush)
        return folder

    def _validity_path(self) -> str:
        return os.path.join(self.path, UIDVALIDITY_FILE)

    def folders(self) -> list[str]:
        names = []
        for entry in os.listdir(self.path):
            if entry.startswith(".") and entry not in (".", "..") and os.path.isdir(os.path.join(self.path, entry, "cur")):
                names.append(decode_folder(entry))
        return [INBOX] + sorted(names)

    def create_folder(self, name: str) -> MaildirFolder:
        name = normalize_folder_name(name)
        if name == INBOX or os.path.isdir(os.path.join(self._folder_path(name), "cur")):
            raise FolderExists(name)
        parts = name.split(DELIMITER)
        made: list[str] = []
        try:
            for i in range(1, len(parts)):
                parent = DELIMITER.join(parts[:i])
                if parent != INBOX and not os.path.isdir(os.path.join(self._folder_path(parent), "cur")):
                    self.folder_create_plain(parent)
                    made.append(parent)
            return self.folder_create_plain(name)
        except BaseException:
            # All or nothing: the parents this CREATE made go with it.
            for parent in reversed(made):
                self._unmake(parent)
            raise

    def folder_create_plain(self, name: str) -> MaildirFolder:
        """
        Make the folder C{name} (its parents must be there): all or
        nothing. A failure (C{OSError}, L{StoreError}; a full disk is
        L{InsufficientStorage}) removes what it made: no folder is left
        with directories and no UID list, which only a write could read.
        """
        path = self._folder_path(name)
        existed = os.path.lexists(path)
        try:
            os.makedirs(path, exist_ok=True)
            # Maildir++: a sub-folder holds a 'maildirfolder' marker file.
            open(os.path.join(path, "maildirfolder"), "a").close()
            folder = self._folders[name] = MaildirFolder(name, path, self.writer, self.hostname, self._validity_path(), sync_later=self.small_files)
            if folder._unrepaired is not None:
                # (a folder being made is never read half made: its making fails)
                raise storage_error(folder._unrepaired)
        except BaseException:
            if not existed:
                self._unmake(name)
            raise
        folder._sync_later = None  # (only its making: a list lost later is fsynced where it is written)
        if folder.creation_flush is not None:
            self._flushed(folder.creation_flush)
        self._sync_account_directory()
        return folder

    def _unmake(self, name: str) -> None:
        """Remove the directory of a folder this process was making (a failed CREATE); errors are ignored."""
        import shutil

        self._folders.pop(name, None)
        try:
            shutil.rmtree(self._folder_path(name), ignore_errors=True)
        except (OSError, StoreError):
            pass

    def delete_folder(self, name: str) -> None:
        """
        Delete the folder C{name} (RFC 3501 §6.3.4): its directory is
        renamed aside at once (gone for every reader; the rename is made
        durable with the account's directory, L{durable}), then its files
        are removed in a worker thread: a folder of 100,000 messages is
        100,000 unlinks, which held every session of the process. A
        removal a crash cut short is finished at the account's next open
        (L{_remove_deleted}). Raises L{BadFolderName} for INBOX,
        L{NoSuchFolder}, C{OSError}.
        """
        name = normalize_folder_name(name)
        if name == INBOX:
            raise BadFolderName("INBOX cannot be deleted")
        path = self._folder_path(name)
        if not os.path.isdir(path):
            raise NoSuchFolder(name)
        # (no leading dot: never taken for a Maildir++ folder by folders())
        aside = os.path.join(self.path, f"{DELETED_PREFIX}{os.getpid()}.{next(_counter)}")
        os.rename(path, aside)
        self._folders.pop(name, None)
        self._sync_account_directory()
        self._remove_later([aside])
        # (its subscription stays: L{renamed_subscriptions})

    def _remove_deleted(self) -> None:
        """At the account's open: remove the folders a DELETE renamed aside and a crash (or a stop) left."""
        try:
            left = [os.path.join(self.path, e) for e in os.listdir(self.path) if e.startswith(DELETED_PREFIX)]
        except OSError:
            return
        if left:
            self._remove_later(left)

    def _remove_later(self, paths: list[str]) -> None:
        """Remove the directory trees C{paths} in a worker thread (SmallFiles.in_thread); a failure is logged (the next open tries again)."""
        import shutil

        def remove() -> None:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)

        def failed(reason: Failure) -> None:
            log.warn("{path}: a deleted folder's files not removed yet ({error})", path=self.path, error=error_words(reason.value))

        self.small_files.in_thread(remove).addErrback(failed)

    def _check_rename(self, old: str, new: str) -> None:
        """Raises L{BadFolderName}, L{NoSuchFolder} or L{FolderExists} when C{old} cannot become C{new} (both normalized)."""
        if old == INBOX:
            raise BadFolderName("renaming INBOX is not supported")
        if not os.path.isdir(self._folder_path(old)):
            raise NoSuchFolder(old)
        if new == INBOX or os.path.isdir(self._folder_path(new)):
            raise FolderExists(new)

    def rename_folder(self, old: str, new: str) -> defer.Deferred:
        """
        Rename folder C{old} and its inferiors to C{new}. Raises
        L{BadFolderName}, L{NoSuchFolder} or L{FolderExists} at once;
        else returns a Deferred that fires once the directories have moved
        (L{durable} then says when that is on disk), or fails with the
        same errors (the names changed meanwhile) or a L{StoreError}.

        Crash-safe in steps (each folder of the hierarchy is one
        directory, and the subscriptions file is another step): what the
        RENAME is goes on disk first, written and flushed off the reactor
        (L{SmallFiles.replace}), and the directories move only after
        that; a crash before the last step's flush leaves it there, and
        the next open of the account finishes the RENAME (_redo_rename).
        It is removed in the flush of the new subscriptions and the
        directory, so a RENAME answered leaves none. The account's
        RENAMEs run one after another (one record).
        """
        old, new = normalize_folder_name(old), normalize_folder_name(new)
        self._check_rename(old, new)
        journal = os.path.join(self.path, RENAMING)
        previous, over = self._rename_over, defer.Deferred()
        self._rename_over = over

        def write_record(_: Any) -> defer.Deferred:
            # (again: another session may have changed the names since)
            self._check_rename(old, new)
            record = {"old": old, "new": new, "pid": os.getpid(), "boot": _boot_id()}
            return self.small_files.replace(journal, json.dumps(record).encode("utf-8")).addErrback(not_written)

        def not_written(reason: Failure) -> None:
            error = reason.value
            raise storage_error(error) if isinstance(error, OSError) else error

        def move(_: Any) -> None:
            try:
                self._check_rename(old, new)
                self._move_folders(old, new)
                self._rename_subscriptions(old, new)
            except BaseException:
                # The record must not finish at the next open what was
                # refused (or half done: the next open finishes it then).
                self._sync_account_directory()
                self._flushed(self.small_files.remove(journal))
                raise
            self._sync_account_directory()
            self._flushed(self.small_files.remove(journal))

        def finish(result: Any) -> Any:
            if self._rename_over is over:
                self._rename_over = None
            over.callback(None)
            if isinstance(result, Failure) and isinstance(result.value, OSError):
                result = Failure(storage_error(result.value))
            return result

        d = defer.succeed(None) if previous is None else previous
        d.addCallback(write_record).addCallback(move).addBoth(finish)
        return d

    def _move_folders(self, old: str, new: str) -> None:
        """The directories of C{old} and its inferiors become C{new}'s; missing parents of C{new} are made. A name already moved is left."""
        moves = [n for n in self.folders() if n == old or n.startswith(old + DELIMITER)]
        for name in moves:
            target = new + name[len(old) :]
            if os.path.isdir(self._folder_path(target)):
                continue  # (a redo: moved before the crash)
            os.rename(self._folder_path(name), self._folder_path(target))
            self._folders.pop(name, None)
        parts = new.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if not os.path.isdir(self._folder_path(parent)):
                self.folder_create_plain(parent)

    def _redo_rename(self) -> None:
        """
        Finish a RENAME a crash cut short (its C{mailhub-renaming} left):
        the folders not moved yet are moved, the subscriptions follow, all
        flushed, then the record goes. A record of a process still running
        on this boot is that RENAME under way (--workers: another worker) and
        is left to it. Called at the account's open, before anything reads it.
        """
        journal = os.path.join(self.path, RENAMING)
        try:
            with open(journal, "rb") as f:
                record = json.loads(f.read().decode("utf-8"))
            old, new = normalize_folder_name(record["old"]), normalize_folder_name(record["new"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, StoreError) as e:
            log.warn("{path}: unreadable record of a RENAME under way ({error}); removed", path=journal, error=error_words(e, paths=False))
            self._flushed(self.small_files.remove(journal))
            return
        if record.get("boot") == _boot_id() and not _process_is_gone(int(record.get("pid") or 0)):
            return
        log.info("{path}: finishing the RENAME of {old} to {new} a crash cut short", path=self.path, old=old, new=new)
        try:
            self._move_folders(old, new)
            subscribed = set(self.subscriptions())
            gone, made = renamed_subscriptions(subscribed, old, new)
            if gone or made - subscribed:
                self._write_subscriptions((subscribed - gone) | made)
        except (OSError, StoreError) as e:
            log.warn("{path}: the RENAME of {old} to {new} could not be finished yet ({error})", path=self.path, old=old, new=new, error=error_words(e))
            return
        # Flushed in a worker thread, as a RENAME's own (an fsync in the
        # reactor stalls every session): the account's directory, then the
        # record removed last, once the rest is durable; durable() waits
        # for it, and a login's first reply waits for durable().
        self._sync_account_directory()
        self._flushed(self.small_files.remove(journal))

    def _rename_subscriptions(self, old: str, new: str) -> None:
        """The subscriptions follow the RENAME of C{old} to C{new} (L{renamed_subscriptions})."""
        subscribed = set(self.subscriptions())
        gone, made = renamed_subscriptions(subscribed, old, new)
        if gone or made - subscribed:
            self._write_subscriptions((subscribed - gone) | made)

    def folder_identity(self, name: str) -> tuple | None:
        """
        What stays when a folder is renamed and differs from any other
        folder's, now or later (its directory's inode, and the UIDVALIDITY
        at the head of its UID list: a folder made where one was deleted
        may get the inode back, never the UIDVALIDITY), so NOTIFY can tell
        a RENAME from a DELETE and a CREATE (RFC 5465 §5.4); None when it
        is gone.
        """
        try:
            path = self._folder_path(normalize_folder_name(name))
            inode = os.stat(path).st_ino
        except (OSError, StoreError):
            return None
        try:
            with open(os.path.join(path, UIDLIST), "rb") as f:
                head = f.readline(200).split()
        except OSError:
            head = []
        return (inode, head[2] if len(head) > 2 else b"")

    def _subscriptions_path(self) -> str:
        return os.path.join(self.path, SUBSCRIPTIONS)

    def subscriptions(self) -> list[str]:
        unsynced = self.small_files.pending(self._subscriptions_path())
        if unsynced is not None:
            return [line for line in unsynced.decode("utf-8").split("\n") if line]
        try:
            with open(self._subscriptions_path(), encoding="utf-8") as f:
                return sorted({line.strip() for line in f if line.strip()})
        except FileNotFoundError:
            return []

    def _write_subscriptions(self, names: Iterable[str]) -> None:
        # Replaced whole (a crash leaves the old list or the new one),
        # fsynced with the account's directory in a worker thread
        # (SmallFiles: one fsync in the reactor cost ~10 ms under load);
        # until then this process reads the new list from memory.
        text = "".join(n + "\n" for n in sorted(set(names)))
        self._flushed(self.small_files.replace(self._subscriptions_path(), text.encode("utf-8")))

    def subscribe(self, name: str) -> None:
        self._write_subscriptions(self.subscriptions() + [normalize_folder_name(name)])

    def unsubscribe(self, name: str) -> None:
        name = normalize_folder_name(name)
        self._write_subscriptions(n for n in self.subscriptions() if n != name)


TMP_MAX_AGE = 36 * 3600  # seconds: the Maildir convention's limit for tmp/
# A message's file claimed by a move (L{MaildirFolder.copy_for_move}):
# tmp/.moving-<pid>-<its file name in cur/ or new/>. Out of cur/ and new/,
# so gone for every reader; given back into cur/ by L{clean_tmp} if the
# process that claimed it is gone (a crash between the claim and the
# expunge: the message may then be in both folders, never in none).
MOVING_PREFIX = ".moving-"
_MOVING_NAME = re.compile(r"^\.moving-(\d+)-(.+)$")

_TMP_NAME = re.compile(r"^\d+\.M\d+P(\d+)Q\d+\.(.+?),S=\d+")


def _boot_id() -> str:
    """This boot's id (Linux), or "" where there is none: a process id means something only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_is_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's): not ours to judge
    return False


def clean_tmp(root: str, hostname: str, now: float | None = None, max_age: float = TMP_MAX_AGE) -> tuple[int, int]:
    """
    Remove leftovers from the C{tmp/} folder of every Maildir under
    C{root} (C{DATA/mail}): files written by a process of this host
    (C{hostname}) that no longer runs, and files older than C{max_age}
    seconds. Returns (files of dead processes, old files) removed. A
    message a move claimed (C{tmp/.moving-<pid>-<name>}, L{MOVING_PREFIX})
    is never removed: once its process is gone it goes back into C{cur/}.
    Runs in a worker thread: it lists every Maildir.

    A file named as this hub names its own but owned by another user is
    another program's (an MDA such as Dovecot's LDA, which runs as the
    user, names its files the same way, and its process id may mean
    nothing here: another PID namespace): it is left to the 36-hour rule
    of the Maildir convention, never taken for a dead process's.
    """
    now = time.time() if now is None else now
    host = _safe_hostname(hostname)
    me = os.geteuid()
    dead = old = given_back = 0
    for tmp in _tmp_folders(root):
        try:
            names = os.listdir(tmp)
        except OSError:
            continue
        for name in names:
            path = os.path.join(tmp, name)
            claim = _MOVING_NAME.match(name)
            if claim:
                # A move's claim: never removed; given back once its
                # process is gone (the copy may not have been made).
                try:
                    if os.lstat(path).st_uid == me and _process_is_gone(int(claim.group(1))):
                        os.rename(path, os.path.join(os.path.dirname(tmp), "cur", claim.group(2)))
                        given_back += 1
                except OSError:
                    pass
                continue
            m = _TMP_NAME.match(name)
            try:
                st = os.lstat(path)
                if m and m.group(2) == host and st.st_uid == me and _process_is_gone(int(m.group(1))):
                    os.unlink(path)
                    dead += 1
                elif now - st.st_mtime > max_age:
                    os.unlink(path)
                    old += 1
            except OSError:
                continue  # gone already, or not ours to remove
    if given_back:
        log.info("maildir tmp/: gave back {n} message(s) a stopped process had claimed for a move", n=given_back)
    return dead, old


def _tmp_folders(root: str):
    """The C{tmp/} of every Maildir (INBOX and Maildir++ folders) under C{root}."""
    for domain in _subdirectories(root):
        for account in _subdirectories(domain):
            yield os.path.join(account, "tmp")
            for folder in _subdirectories(account):
                if os.path.basename(folder).startswith("."):
                    yield os.path.join(folder, "tmp")


def _subdirectories(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


@implementer(IMailStore)
class MaildirStore:
    """
    Every account's Maildir under C{root} (C{DATA/mail}).
    """

    def __init__(self, root: str, writer: GroupCommitWriter | None = None, hostname: str | None = None):
        self.root = root
        self.writer = writer or GroupCommitWriter()
        self.hostname = hostname or socket.gethostname()
        self._accounts: dict[str, MaildirAccount] = {}
        # Folder changes and subscriptions of every account, made durable
        # in batches off the reactor.
        self.small_files = SmallFiles(getattr(self.writer, "reactor", None))
        from twisted_mailhub.datafolder import DataFolder

        self._data = DataFolder(root)

    def account_path(self, address: str) -> str:
        local, _, domain = address.rpartition("@")
        for part in (local, domain):
            if not part or part in (".", "..") or "/" in part or "\0" in part:
                raise BadFolderName(f"cannot store mail for {address!r}")
        return os.path.join(self.root, domain.lower(), local.lower())

    def account(self, address: str) -> MaildirAccount:
        key = address.lower()
        account = self._accounts.get(key)
        if account is None:
            self._data.check()  # (not made again at the old place if it was moved or removed)
            account = self._accounts[key] = MaildirAccount(address, self.account_path(address), self.writer, self.hostname, self.small_files)
        return account

    def deliver(self, address: str, message: bytes) -> defer.Deferred:
        return self.account(address).folder(INBOX).deliver(message)

    def clean_tmp(self) -> defer.Deferred:
        """
        L{clean_tmp} of every Maildir, in a worker thread; logs one line
        when it removed anything. Fires with (dead-process files, old files),
        or with L{None} after logging why it failed (the hub runs it at start
        and hourly, tap.py: a failure must not end the later runs).
        """
        reactor = self.writer.reactor

        def report(counts):
            dead, old = counts
            if dead or old:
                log.info(
                    "maildir tmp/: removed {n} leftover file(s): {dead} of processes that are gone, {old} older than 36 h",
                    n=dead + old,
                    dead=dead,
                    old=old,
                )
            return counts

        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), clean_tmp, self.root, self.hostname)
        return d.addCallbacks(report, lambda f: log.warn("maildir tmp/ cleaning failed: {error}", error=f.value))
