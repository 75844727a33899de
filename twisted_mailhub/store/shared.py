# -*- test-case-name: tests.test_store_shared,tests.test_workers -*-
"""
One Maildir shared by several hub processes (C{--workers N}).

With one process, a folder's UIDs come from a counter in memory and the
UID list is only ever written by that process. With several, each
process keeps its own index of a folder, so what the UIDs depend on is
made safe across processes here; L{twisted_mailhub.store.maildir} calls
in at a few points only when L{ENABLED} is set (a single hub pays
nothing).

Rules:

 - Every writer of a folder's UID list holds L{FolderLock}: the
   process's own thread lock, then an exclusive C{flock(2)} on
   C{mailhub-uidlist.lock} beside the list. The group commit's appends,
   the rewrites (expunge, keywords) and the appends of a scan all take
   it, so an append never goes to a list that another process is
   replacing.
 - The lock file also holds the folder's next UID (ASCII digits), read and
   raised under the lock for every UID given (L{FolderLock.take_uid}):
   two processes delivering into one folder at once get distinct UIDs,
   with no gap between them. A delivered or appended message gets its
   UID in the group commit's thread, under the lock, when its line is
   appended (C{Record.prepare}): one look at the counter for the
   batch, none in the reactor, and a write that failed before its line
   took no UID. The counter is never synced: a UID whose
   line never reached the disk was never told to anyone, and the
   list's own lines (synced with the message) set the floor at the next
   load.
 - A process learns of the other processes' messages from the UID list:
   their line is appended (phase 1 of the group commit) before their file
   is renamed into C{new/} or C{cur/} (phase 3), so a file that a scan
   finds and the index does not know is looked up in the lines appended
   since this process last read the list (L{catch_up}) before it is
   taken for a file dropped in by another program (which gets a new UID).
   Lines whose file is not there yet are kept until it is. A file
   dropped in that a process numbered and whose line it is flushing in
   a worker thread is claimed by it (store/maildir.py: C{CLAIMS}): the
   others leave it alone until then (neither numbered again nor shown).
 - A rewrite of the list by one process keeps every line another process
   appended that it does not know (their messages still being written).
 - A Maildir directory's mtime is kept by the kernel at the resolution of
   its clock tick, so two changes within a tick can show one mtime: a
   folder whose C{new/} or C{cur/} changed in the last
   L{RECENT_NS} is looked at again even when its mtime is the one seen.
 - Mod-sequences (RFC 7162) come from a second counter in the same lock
   file (L{FolderLock.take_modseq}), taken and logged under the lock: no
   two changes share one, and they grow in the order of the log (the
   arrivals of one group commit take consecutive values in one go, with
   their UIDs, in the batch's thread: L{FolderLock.take_numbers}, their
   lines logged in the same hold, before their files are renamed). A
   process reads the lines the others appended to the modseq log
   (L{modseq_log_tail}) whenever it looks at the folder, and takes their
   values for those messages instead of giving the change a new one; a
   value logged for a message it does not know yet waits for its file.
   An arrival whose value is not above every modseq its own process gave
   or read meanwhile (one a session may have been shown as HIGHESTMODSEQ)
   gets a new one when it arrives.
 - IMAP's C{\\Recent} (RFC 3501 §2.3.2: one session sees a message as
   recent) is claimed once across the processes: a message in C{new/} by
   the rename that moves it to C{cur/} (only one rename succeeds); one a
   process put straight into C{cur/} (APPEND, COPY, MOVE; a file another
   program dropped there) by its UID in C{mailhub-recent} beside the
   list, offered by that process (L{offer_recent}) and taken out by the
   first process whose session claims it (L{claim_recent}), under the
   lock.
 - Changes a process makes (a delivery, flags, an expunge) are announced
   to the others (L{announce}, wired to the workers' bus by
   L{twisted_mailhub.workers}); a process that has the folder open with
   listeners (IMAP IDLE, a selected folder) looks again at once. Only a
   process with listeners can make anything of a notice, so each says
   how many of its folders have some (L{watching}) and the others
   announce nothing while none does (under steady delivery a notice every
   20 ms cost the relaying supervisor and the reading worker a wake-up
   each for nothing). A folder that gets its first listener is looked at
   once more (L{watching}'s C{directory}): a change another process made
   before it saw the listener, and so announced to no one, is found then.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import weakref
from typing import Any, Callable

from twisted.logger import Logger

from twisted_mailhub.store.base import Listeners

log = Logger()

# Set by the worker processes of --workers N (twisted_mailhub.workers).
ENABLED = False
LOCK_FILE = "mailhub-uidlist.lock"
# errno values of a lock file that cannot be made or written: a full disk
# or quota, a read-only file system, a folder the hub may not write.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
RECENT_NS = 100_000_000  # ns: a directory changed this recently is listed again (a few clock ticks)

# Called with a folder's directory after this process changed it; set by
# the workers' bus.
announce: Callable[[str], None] | None = None

# Called with how many open folders of this process have listeners now,
# each time a folder gets its first listener (with its directory) or
# loses its last (with None); set by the workers' bus.
watching: Callable[[int, str | None], None] | None = None
_listened = 0  # open folders of this process that have listeners

# Open folders of this process, by directory (for notices from the others).
_open: "weakref.WeakValueDictionary[str, Any]" = weakref.WeakValueDictionary()
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FolderLock:
    """
    The lock every writer of one folder's UID list holds, across threads
    and processes; reentrant within a thread. Used as a context manager
    (C{with lock:}), as C{threading.Lock} is.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, LOCK_FILE)
        self._thread = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        # Why the lock file could not be made (a full disk, a read-only
        # or foreign-owned folder), or None: the folder is then only
        # read (a half-made one, store/maildir.py _unrepaired) and the
        # lock is this process's thread lock alone. No process has written
        # the folder's list then (each writer makes the file first), and
        # the file is tried again at each hold: a writer holds it for real
        # or fails (L{require}).
        self.missing: OSError | None = None

    def __enter__(self) -> "FolderLock":
        self._thread.acquire()
        try:
            if self._depth == 0:
                if self._fd is None:
                    self._open()
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        self._depth += 1
        return self

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o600)
            self.missing = None
        except OSError as e:
            if e.errno not in UNWRITABLE:
                raise
            try:
                # (there but not writable: its flock still excludes)
                self._fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                self._fd = None
            self.missing = e

    def require(self) -> None:
        """
        Raises the C{OSError} that keeps the lock file from being made or
        written (L{missing}): call with the lock held, before a write that
        needs the folder's counters.
        """
        if self.missing is not None:
            if self._fd is not None and self._depth == 1:
                # (a file opened read-only: tried again for writing)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
                self._open()
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
            if self.missing is not None:
                raise self.missing

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread.release()

    def _counters(self) -> tuple[int, int]:
        """(next UID, highest modseq given) as the lock file holds them."""
        if self._fd is None:
            return 0, 0
        fields = os.pread(self._fd, 64, 0).split()
        uid = int(fields[0]) if fields and fields[0].isdigit() else 0
        modseq = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        return uid, modseq

    def _counter(self) -> int:
        return self._counters()[0]

    def _write(self, uid: int, modseq: int) -> None:
        self.require()
        # Same length or longer each time (both only grow): no stale tail.
        os.pwrite(self._fd, b"%d %d\n" % (uid, modseq), 0)

    def take_uid(self, floor: int, count: int = 1) -> int:
        """
        The next UID of the folder, at least C{floor} (this process's own
        UIDNEXT), and the counter raised past it; with C{count}, that many
        consecutive UIDs, the first returned (the messages of one group
        commit). Takes the lock.
        """
        with self:
            uid, modseq = self._counters()
            uid = max(uid, floor)
            self._write(uid + count, modseq)
            return uid

    def take_modseq(self, floor: int, count: int = 1) -> int:
        """
        A new mod-sequence for a change in the folder (RFC 7162): above
        every one any process gave in it, and at least C{floor}. With
        C{count}, that many consecutive values, the first returned (the
        arrivals of one group commit: one look at the counter for all).
        Takes the lock; call with it held while the change is logged, so
        that the log's order is the values' order.
        """
        with self:
            uid, modseq = self._counters()
            modseq = max(modseq + 1, floor)
            self._write(uid, modseq + count - 1)
            return modseq

    def take_numbers(self, uid_floor: int, modseq_floor: int, count: int) -> tuple[int, int]:
        """
        L{take_uid} and L{take_modseq} for C{count} arrivals (the messages
        of one group commit) in one read and one write of the counters:
        (first UID, first mod-sequence), each of C{count} consecutive
        values. Takes the lock; call with it held while the arrivals'
        lines are appended, so that the logs' order is the values' order.
        """
        with self:
            uid, modseq = self._counters()
            uid = max(uid, uid_floor)
            modseq = max(modseq + 1, modseq_floor)
            self._write(uid + count, modseq + count - 1)
            return uid, modseq

    def uid_next(self, floor: int) -> int:
        """The folder's UIDNEXT as every process has given UIDs so far."""
        with self:
            return max(self._counter(), floor)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


RECENT_FILE = "mailhub-recent"


def _recent_path(lock: FolderLock) -> str:
    return os.path.join(os.path.dirname(lock.path), RECENT_FILE)


def _read_recent(path: str) -> list[int]:
    try:
        with open(path, "rb") as f:
            return [int(word) for word in f.read().split() if word.isdigit()]
    except FileNotFoundError:
        return []


def offer_recent(lock: FolderLock, uids: list[int]) -> None:
    """
    Offer C{uids} (messages this process put into C{cur/}) as C{\\Recent}
    to the first session of any process that claims them. Takes C{lock}.
    A failure to write is logged: those messages are then recent to no
    session, which is all it costs.
    """
    if not uids:
        return
    with lock:
        try:
            fd = os.open(_recent_path(lock), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"".join(b"%d\n" % uid for uid in uids))
            finally:
                os.close(fd)
        except OSError as e:
            log.warn("{path}: \\Recent not offered ({error})", path=_recent_path(lock), error=e.strerror)


def claim_recent(lock: FolderLock, known: Callable[[int], bool], pending: set[int], take: bool = True) -> list[int]:
    """
    The offered UIDs (L{offer_recent}) of the messages this process knows
    (C{known(uid)}), ascending; with C{take}, taken out of the offer so no
    other process's session sees them as recent too. UIDs of messages
    this process does not know are left in the offer if C{pending} holds
    them (listed by another process, file still being written), else
    dropped (expunged meanwhile). Takes C{lock}.
    """
    path = _recent_path(lock)
    with lock:
        offered = _read_recent(path)
        if not offered:
            return []
        claimed = sorted({uid for uid in offered if known(uid)})
        if take:
            left = [uid for uid in offered if not known(uid) and uid in pending]
            try:
                if left:
                    with open(path, "wb") as f:
                        f.write(b"".join(b"%d\n" % uid for uid in left))
                else:
                    os.unlink(path)
            except OSError as e:
                log.warn("{path}: claimed \\Recent not taken out ({error})", path=path, error=e.strerror)
        return claimed


class _CountedListeners(Listeners):
    """A folder's listeners that tell L{watching} when it gets its first or loses its last."""

    def __init__(self, directory: str):
        Listeners.__init__(self)
        self.directory = directory
        self._counted = False

    def add(self, listener: Callable[[Any], None]) -> None:
        Listeners.add(self, listener)
        if not self._counted:
            self._counted = True
            _listening(+1, self.directory)

    def remove(self, listener: Callable[[Any], None]) -> None:
        Listeners.remove(self, listener)
        if self._counted and not self._listeners:
            self._counted = False
            _listening(-1, None)

    def __del__(self) -> None:
        # A folder dropped while it still had listeners no longer listens.
        if self._counted:
            self._counted = False
            _listening(-1, None)


def _listening(change: int, directory: str | None) -> None:
    global _listened
    _listened += change
    if watching is not None:
        try:
            watching(_listened, directory)
        except Exception:
            log.failure("telling the other workers about listeners")


def opened(folder: Any) -> None:
    """
    Remember an open folder, so that notices from other processes find it,
    and count whether it has listeners (L{watching}).
    """
    _open[folder.directory] = folder
    if type(folder._listeners) is Listeners and not folder._listeners.count():
        folder._listeners = _CountedListeners(folder.directory)


def changed_elsewhere(directory: str) -> None:
    """
    Another process changed the folder at C{directory}: if this process
    has it open with listeners (an IDLE or a selected folder), look at
    it now, so that they hear of it at once. A folder nobody listens to
    is looked at when it is next used, as always.
    """
    folder = _open.get(directory)
    if folder is None or not getattr(folder._listeners, "_listeners", True):
        return
    try:
        folder._scan()
    except Exception as e:  # gone meanwhile, or a read error: the next look tells
        log.debug("notice for {path}: {error}", path=directory, error=e)


def tell_others(directory: str) -> None:
    """Tell the other processes this folder changed (no-op when alone)."""
    if announce is not None:
        announce(directory)


def recently_changed(mtimes: tuple[int, int]) -> bool:
    """Did C{new/} or C{cur/} change within L{RECENT_NS}?"""
    return time.time_ns() - max(mtimes) < RECENT_NS


class ListPosition:
    """
    How far this process has read a folder's UID list: the file (inode)
    and the octet offset of the first line not read yet.
    """

    __slots__ = ("inode", "offset")

    def __init__(self, inode: int = 0, offset: int = 0):
        self.inode = inode
        self.offset = offset

    @classmethod
    def now(cls, path: str) -> "ListPosition":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls()
        return cls(st.st_ino, st.st_size)


def catch_up(folder: Any, parse_line: Callable[[bytes], Any]) -> dict[str, tuple]:
    """
    Read the lines of C{folder}'s UID list that other processes appended
    (or all of it, when another process rewrote it) since this process
    last read it; the lines of messages the folder does not know yet are
    added to C{folder._elsewhere} (base name -> (uid, size, date,
    keywords)), and C{folder.uid_next} is raised past every UID listed.
    Returns the keywords listed for messages the folder knows, by base
    name (keyword changes: a message's line appended again, or a list
    another process rewrote). Call with the folder's lock held. Raises
    L{NoSuchFolder} (through C{folder.made_again}) when the list has
    another UIDVALIDITY: the folder was deleted and made again elsewhere.
    """
    path = folder._uidlist_path()
    position: ListPosition = folder._list_position
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            whole = st.st_ino != position.inode or st.st_size < position.offset
            start = 0 if whole else position.offset
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return {}
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    if whole and lines:
        # The header: a UIDVALIDITY not the one this process tells is a
        # folder another process deleted and made again (or whose list it
        # lost and made again): none of this folder's UIDs stands any more
        # (RFC 3501 §2.3.1.1); the folder says it is gone (made_again).
        words = lines[0].split()
        if len(words) == 4 and words[2].isdigit() and folder.uid_validity and int(words[2]) != folder.uid_validity:
            folder.made_again(int(words[2]))
        lines = lines[1:]
    folder._list_position = ListPosition(st.st_ino, start + end)
    known_keywords: dict[str, frozenset] = {}
    pending, by_base, elsewhere = folder._pending, folder._by_base, folder._elsewhere
    if whole:
        elsewhere.clear()
    for raw in lines:
        parsed = parse_line(raw)
        if parsed is None:
            continue
        uid, base, size, date, keywords = parsed
        if uid >= folder.uid_next:
            folder.uid_next = uid + 1
        if base in by_base:
            # A message it knows: its line again (a keyword change, appended
            # or in a rewrite); the last line wins.
            known_keywords[base] = keywords
            continue
        if base in pending:
            continue
        elsewhere[base] = (uid, size, date, keywords)
    return known_keywords


def modseq_log_tail(path: str, position: ListPosition) -> tuple[bytes, bool, ListPosition]:
    """
    The lines of a folder's modseq log after C{position} (C{whole}: all of
    it, when another process rewrote it), and the position after them.
    Call with the folder's lock held.
    """
    try:
        st = os.stat(path)
        if st.st_ino == position.inode and st.st_size == position.offset:
            return b"", False, position  # (the usual case: one stat)
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            whole = st.st_ino != position.inode or st.st_size < position.offset
            start = 0 if whole else position.offset
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return b"", False, ListPosition()
    end = data.rfind(b"\n") + 1
    return data[:end], whole, ListPosition(st.st_ino, start + end)


def merged_lines(folder: Any, own: list[str], format_line: Callable[..., str]) -> list[str]:
    """
    The lines of a rewrite of C{folder}'s list: C{own} (the messages this
    process knows) and the lines of other processes' messages it has not
    seen yet (their files may still be on the way), in UID order. Call
    with the folder's lock held, after L{catch_up}.
    """
    mine = {int(line.split(" ", 1)[0]) for line in own}
    extra = [
        format_line(uid, base, size, date, keywords)
        for base, (uid, size, date, keywords) in folder._elsewhere.items()
        if uid not in mine
    ]
    if not extra:
        return own
    return sorted(own + extra, key=lambda line: int(line.split(" ", 1)[0]))
