# -*- test-case-name: tests.test_smtp_group_commit,tests.test_store_durability -*-
"""
Durable file writes with group commit.

Rules: a write is acknowledged (its Deferred fires) only after the file's
data is on disk, it has been renamed into place, and the directory that
holds it is fsynced (tmp -> flush data -> rename -> fsync dir). A file is
renamed only once its data is on disk, so whatever a crash leaves in the
final place is complete. A write may carry a L{Record}: a line appended
to a log file (the Maildir UID list) that must be on disk before the
write is acknowledged; it is appended before the flush and flushed with
it, so it costs no flush of its own per message. Everything that touches
the disk runs in a worker thread, never in the reactor.

Theory of operation: writes queue up while batches are on their way to disk;
when one is done, what queued meanwhile becomes the next batch.
A write that finds a batch free to start starts it at the end of the
reactor's current turn, not at once: the writes of the other events of
that turn (32 clients' messages ending in one poll) join it, instead of
the first going alone and the rest waiting for its flush. A lone write
waits no longer than that turn. A batch runs in four phases:

 1. write every file to its tmp name and append every record (one
    C{write} per log file; a failed append is cut back to where it began,
    so no partial line is left for the next append to be glued onto);
 2. flush (L{choose_flush}, per batch): when other programs have much
    unsynced data (a neighbour writing logs, a database, a backup), only
    the batch's own files: writeback of all of them is started
    (sync_file_range on Linux), then each file is fsynced and each log
    file fdatasynced on a small thread pool, concurrently, so that the
    filesystem merges their journal commits, and up to four batches are
    on their way at once; on a quiet system, one syncfs(2) of the
    filesystem, which then costs about our own data in one commit and
    far less CPU than a fsync per file (two such batches on their way at
    once, so that one's directory fsync overlaps the other's syncfs);
 3. rename each file whose data and record are on disk into place (the
    point of no return);
 4. fsync each directory once; if that fails the renamed files are taken
    back out, so that a failed write never stays where it would be read.

In a batch flushed by syncfs, a message is written as an unnamed file
(O_TMPFILE, see L{UNNAMED}): phase 1 gives it no name in tmp/, phase 3
links it to its final name instead of a rename, and phase 4 is a second
syncfs (the directory entries and the linked files' inodes). A crash
before phase 3 leaves nothing anywhere, not even in tmp/. In the group
commit (L{GroupCommitWriter}) that second syncfs is any syncfs begun
after the links (they are numbered, L{_begin_flush}): the thread gives
the batch back after phase 3 (L{Committed}) and the next batch's flush
of its data serves it; when no batch is on its way or queued to start,
a thread runs one for it alone (L{_flush_owed}). Its writes are
acknowledged only when such a syncfs has ended well; if it fails, their
names are taken away again and they fail.

So 32 concurrent deliveries share a few journal commits rather than
paying 32, and nothing is acknowledged before it is safe. Either way the
cost of a batch is the hub's own data: a neighbour's gigabytes of dirty
pages are never flushed with it (syncfs, which writes back every dirty
page of the filesystem, is used only while there are few of them).
"""

from __future__ import annotations

import collections
import ctypes
from errno import EIO
import os
import queue
import sys
import threading
import time
from typing import Any, Callable

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


@attr.s(auto_attribs=True, eq=False)
class Record:
    """
    A line to append to the log file C{path} (UTF-8 bytes ending in LF),
    durable together with the write that carries it. C{lock} is held by
    every writer of that file (the appends here, the rewrites of its
    owner), so that an append never goes to a file that is being replaced.
    """

    path: str
    line: bytes
    lock: Any  # threading.Lock
    # Called in the batch's thread with C{lock} held, just before the lines
    # are appended, with every record of the batch that shares this one's
    # file and lock and whose write reached its tmp file: it may fill in
    # their C{line}s (under --workers the Maildir numbers the batch's
    # messages there, one look at the folder's shared counter per batch).
    prepare: Callable[[list["Record"]], None] | None = None
    subject: Any = None  # what C{prepare} reads (the Maildir's entry)


@attr.s(auto_attribs=True)
class PendingWrite:
    tmp_path: str
    final_path: str
    data: bytes | Callable[[int], None]  # bytes, or a function that writes to an fd
    deferred: defer.Deferred = attr.ib(factory=defer.Deferred)
    record: Record | None = None
    # Moves tmp_path to final_path in phase 3 instead of os.rename, in the
    # worker thread (the Maildir store notes the directory's mtime around
    # its own rename there, so its next look needs no listing).
    rename: Callable[[str, str], None] | None = None
    arrived: Callable[[], Any] | None = None
    group: Any = None  # writes renamed into place all together or not at all (write_group)
    result: Any = None  # what the Deferred fires with (None: final_path)
    # Called with the error (an exception or a Failure) of a write that did
    # not happen, before its Deferred fails: the owner's bookkeeping; what
    # it returns is what the Deferred fails with (the same error, or the
    # owner's word for it). One callback less per write than an errback.
    failed: Callable[[Any], Any] | None = None
    # final_path is a name nobody has (a Maildir's unique name): the write
    # may be an unnamed file linked there (UNNAMED), which cannot replace
    # a file as a rename does.
    fresh: bool = False


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create_file(path: str, data, directory_fd: int | None = None) -> int:
    """
    Create C{path} with C{data}; returns its open descriptor. With
    C{directory_fd} (a descriptor of C{path}'s directory) the file is made
    there with no name (O_TMPFILE) and C{path} only names it in errors:
    L{_link} gives it its final name.
    """
    if directory_fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o600)
    else:
        fd = os.open(".", os.O_WRONLY | _O_TMPFILE | _O_CLOEXEC, 0o600, dir_fd=directory_fd)
    try:
        if callable(data):
            data(fd)
        else:
            written = os.write(fd, data)  # (all of it, but for a short write)
            if written < len(data):
                _write_all(fd, memoryview(data)[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_lines(path: str, data: bytes, sync: bool = False) -> int | None:
    """
    Append C{data} to C{path} in one go. If the write fails part way
    (ENOSPC, EDQUOT, EIO) the file is cut back to its old length before
    the error is raised, so no partial line stays behind. With C{sync}
    the data is fdatasynced and None returned; otherwise the open
    descriptor is returned for the caller to flush and close.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _O_CLOEXEC)
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
        except BaseException:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
        if sync:
            _fdatasync(fd)
    except BaseException:
        os.close(fd)
        raise
    if sync:
        os.close(fd)
        return None
    return fd


_fdatasync = getattr(os, "fdatasync", os.fsync)


# Unnamed files (Linux 3.11 O_TMPFILE, where the filesystem has it): a
# message written to tmp/ with no name, given its final name by linkat(2)
# once its data is on disk. That spares a name in tmp/ made and taken out
# again and a rename (two directories changed, the filesystem's rename
# lock) per message. Used in a batch flushed by syncfs(2) (L{choose_flush})
# for a write of bytes to a fresh name (L{PendingWrite.fresh}: a link does
# not replace a file) with no rename of its own: its phase 4 is then a
# second syncfs instead of a directory fsync, because a linked file's
# inode changed too (its link count, 0 -> 1), and a directory fsync does
# not write that inode everywhere (ext4 without a journal writes only the
# directory's blocks and inode).
UNNAMED = True
_O_TMPFILE = getattr(os, "O_TMPFILE", 0) if sys.platform.startswith("linux") else 0
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_FOLLOW = 0x400
_AT_FDCWD = -100
# Directories (tmp/ paths) whose filesystem refused an unnamed file or its
# link: written there with a tmp/ name and renamed from then on.
_unnamed_refused: set[str] = set()


def _find_linkat() -> Callable[..., int] | None:
    """libc's linkat(2), or None."""
    if not _O_TMPFILE:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).linkat
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_linkat = _find_linkat()
# How an open unnamed file is linked: by its descriptor (AT_EMPTY_PATH:
# Linux 6.10 for anyone, before it only with CAP_DAC_READ_SEARCH), else
# through /proc/self/fd (AT_SYMLINK_FOLLOW); the first refused is not
# asked again.
_link_by_descriptor = True


def _link(fd: int, directory_fd: int, name: str, path: str) -> None:
    """
    Give the unnamed file open as C{fd} the name C{name} in the directory
    open as C{directory_fd} (C{path}: that name in full, for errors).
    Raises OSError (EEXIST: the name is taken; ENOENT or EPERM from both
    ways: linking unnamed files is not allowed here).
    """
    global _link_by_descriptor
    target = name.encode("utf-8", "surrogateescape")
    if _link_by_descriptor:
        if _linkat(fd, b"", directory_fd, target, _AT_EMPTY_PATH) == 0:  # type: ignore[misc]
            return
        errno = ctypes.get_errno()
        if errno not in (1, 2):  # EPERM, ENOENT: the other way may do
            raise OSError(errno, os.strerror(errno), path)
        _link_by_descriptor = False
    if _linkat(_AT_FDCWD, b"/proc/self/fd/%d" % fd, directory_fd, target, _AT_SYMLINK_FOLLOW) != 0:  # type: ignore[misc]
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), path)


def _sync_links(path: str, watch: "_Watch | None" = None) -> None:
    """Phase 4 for files linked into the directory C{path}: their entries and inodes on disk (one syncfs of its filesystem, through C{watch})."""
    _sync_filesystem(path, watch)


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_sync_file_range() -> Callable[[int], None] | None:
    """
    A function that starts writeback of a file's dirty pages without
    waiting (Linux sync_file_range(2), SYNC_FILE_RANGE_WRITE), or None.
    It only makes the fsyncs that follow overlap; it promises nothing.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    SYNC_FILE_RANGE_WRITE = 2

    def start(fd: int) -> None:
        function(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # errors show in the fsync

    return start


_start_writeback = _find_sync_file_range()


def _find_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux 2.6.39; reports writeback errors since 5.8)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _find_syncfs()


def _sync_filesystem(path: str, watch: "_Watch | None" = None) -> None:
    """
    Flush everything of the filesystem that holds C{path} to disk: a
    syncfs(2) of C{watch}'s descriptor (L{_Watch}: it reports every
    write-back error since its cursor), else of one opened now (which
    reports only errors from now on). Raises OSError.
    """
    if watch is not None:
        if _syncfs(watch.fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}", path)
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}", path)
    finally:
        os.close(fd)


class _Watch:
    """
    An open descriptor of a filesystem for syncfs(2), kept for the next
    flush. Since Linux 5.8 syncfs reports a write-back error of the
    filesystem to each open descriptor whose cursor is older than the
    error (errseq_t: the cursor is set at open() and at each syncfs), and
    to no other: a descriptor opened after the kernel's own write-back (or
    another process's syncfs) met an error never hears of it. So a syncfs
    vouches only for writes made after its descriptor's cursor was last
    set: C{since}, CLOCK_MONOTONIC nanoseconds taken after that open or
    syncfs returned (no earlier than the cursor).
    """

    __slots__ = ("fd", "since")

    def __init__(self, fd: int, since: int):
        self.fd = fd
        self.since = since


_directory_devices: dict[str, int] = {}


class _WatchPool:
    """
    The idle watches (L{_Watch}) of one group commit, per filesystem
    (st_dev), the oldest cursor first. A batch takes one before its first
    write (L{take_for}) and gives it back after its flushes, once its
    links' numbers are read; they are never closed (per filesystem, as
    many as batches flushed at once). One pool per L{GroupCommitWriter}:
    a syncfs through a watch serves the links of its own writer's batches
    only, so another writer must not use up the watch that is older than
    them.
    """

    def __init__(self) -> None:
        self._idle: dict[int, list[_Watch]] = {}
        self._lock = threading.Lock()

    def take(self, device: int, directory: str) -> _Watch:
        """The idle watch of filesystem C{device} with the oldest cursor, else one opened now on C{directory}."""
        with self._lock:
            idle = self._idle.get(device)
            if idle:
                return idle.pop(0)
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        return _Watch(fd, time.monotonic_ns())

    def take_idle(self, device: int) -> _Watch | None:
        """The idle watch of filesystem C{device} with the oldest cursor, or None (none is opened)."""
        with self._lock:
            idle = self._idle.get(device)
            return idle.pop(0) if idle else None

    def give_back(self, watches: dict[int, _Watch]) -> None:
        """Watches taken (L{take}, L{take_for}), idle again."""
        with self._lock:
            for device, watch in watches.items():
                idle = self._idle.setdefault(device, [])
                idle.append(watch)
                idle.sort(key=lambda w: w.since)

    def take_for(self, batch: list[PendingWrite]) -> dict[int, _Watch]:
        """
        Before a batch's first write: a watch of each filesystem it will
        write to (its files' directories, its records' logs), so that its
        syncfs hears of any write-back error of its data.
        """
        return _take_watches(batch, self)


# The pool of a batch committed without a writer (tests, tools).
_POOL = _WatchPool()


def _take_watches(batch: list[PendingWrite], pool: _WatchPool) -> dict[int, _Watch]:
    """L{_WatchPool.take_for}."""
    watches: dict[int, _Watch] = {}
    seen = set()
    for item in batch:
        directories = [_directory_of(item.tmp_path) or "."]
        if item.record is not None:
            directories.append(os.path.dirname(item.record.path) or ".")
        for directory in directories:
            if directory in seen:
                continue
            seen.add(directory)
            device = _directory_devices.get(directory)
            if device is None:
                try:
                    device = _directory_devices[directory] = os.stat(directory).st_dev
                except OSError:
                    continue  # (the write fails, or its filesystem has no watch: flushed file by file)
            if device not in watches:
                try:
                    watches[device] = pool.take(device, directory)
                except OSError:
                    continue
    return watches


# Every syncfs(2) of this process is numbered, per filesystem (st_dev ->
# the number of the newest one begun). A write whose links were made when
# the newest number was n is durable once a syncfs numbered n + 1 or more
# has ended well: that one began after the links (PostgreSQL's WAL flush
# works so: a flush serves every record written before it began). The
# group commit so lets the syncfs of one batch's data serve the links of
# the batch before it (L{GroupCommitWriter}, L{Committed}).
_flush_numbers: dict[int, int] = {}
_flush_numbers_lock = threading.Lock()


def _begin_flush(device: int) -> int:
    """The number of a syncfs of filesystem C{device} about to begin."""
    with _flush_numbers_lock:
        number = _flush_numbers[device] = _flush_numbers.get(device, 0) + 1
    return number


def _numbered_sync(device: int, path: str, flush: Callable[..., None], flushed: list | None, watch: _Watch | None = None) -> None:
    """
    C{flush(path, watch)} (a syncfs of filesystem C{device}), numbered: its
    (device, number, error or None, since) is added to C{flushed}, C{since}
    the time after which it vouches for writes (L{_Watch}; without a
    watch, now). Raises its OSError.
    """
    number = _begin_flush(device)
    since = watch.since if watch is not None else time.monotonic_ns()
    try:
        if watch is None:
            flush(path)
        else:
            flush(path, watch)
    except OSError as e:
        if flushed is not None:
            flushed.append((device, number, e, since))
        raise
    finally:
        if watch is not None:
            watch.since = time.monotonic_ns()
    if flushed is not None:
        flushed.append((device, number, None, since))


@attr.s(auto_attribs=True, eq=False)
class Committed:
    """
    What a batch's thread returns to L{GroupCommitWriter} when its files
    were linked into place but the syncfs that makes their names durable
    is left to a later one: C{outcome}, one error or None per write (as
    L{_commit_batch} returns it); C{flushed}, the numbered syncfs calls the
    batch made, (device, number, error or None, since) each; C{owed}, per
    filesystem the links still to be flushed: (device, number, directory,
    indexes of the writes, when they were made): a syncfs of that device
    numbered C{number} or more whose descriptor vouches for writes since
    no later than the links (L{_Watch}), ended well, makes them durable;
    one that failed fails them. C{inline}: how many of C{flushed} were the
    batch's own syncfs of its links, run in its thread because no later
    one was coming (L{GroupCommitWriter._leave_links}); C{owed} is then
    empty.
    """

    outcome: list
    flushed: list
    owed: list
    inline: int = 0


def _flush_owed(directories: list[tuple[int, str, int]], pool: _WatchPool | None = None, watches: dict[int, _Watch] | None = None) -> list:
    """
    A thread's job: the syncfs a batch's links are waiting for, one per
    filesystem (C{directories}: (device, a directory on it, when the
    oldest of those links were made)), when no batch's flush of its data
    came to serve them, through the idle watch with the oldest cursor (the
    batch that made the links gave back one older than them): the one in
    C{watches} (taken when this syncfs was asked for, before a batch
    started meanwhile could take it in its thread), else one taken now.
    Every watch goes back to C{pool}. Returns the numbered calls, as
    L{Committed.flushed}.
    """
    pool = pool or _POOL
    watches = dict(watches or {})
    flushed: list = []
    for device, directory, oldest in directories:
        try:
            watch = watches.pop(device, None) or pool.take(device, directory)
        except OSError as e:
            flushed.append((device, _begin_flush(device), e, 0))
            continue
        try:
            if watch.since > oldest:
                # (no descriptor old enough to hear of the links' write-back errors)
                flushed.append((device, _begin_flush(device), OSError(EIO, "syncfs: no descriptor older than the links", directory), watch.since))
                continue
            _numbered_sync(device, directory, _sync_links, flushed, watch)
        except OSError:
            pass  # (in flushed)
        finally:
            pool.give_back({device: watch})
    return flushed


def _take_out(paths: list[str]) -> None:
    """A thread's job: the names of linked files whose flush failed taken away again."""
    for path in paths:
        _discard(path)


# How long a choice of flush (choose_flush) stands: it reads /proc/meminfo.
CHOICE_SECONDS = 0.1

# Above this much dirty data in the system (other programs' writes), a
# whole-filesystem flush would pay for the neighbours: flush our own files.
QUIET_DIRTY_BYTES = 64 * 1024 * 1024


def _dirty_bytes() -> int | None:
    """Dirty + under-writeback page cache of the whole system (Linux), or None."""
    try:
        with open("/proc/meminfo", "rb") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.split(b"\n"):
        if line.startswith((b"Dirty:", b"Writeback:")):
            total += int(line.split()[1]) * 1024
    return total


def choose_flush() -> str:
    """
    C{"syncfs"} when the system is quiet (little dirty data: a syncfs of
    the filesystem then costs about our own data, in one journal commit),
    else C{"files"}: fsync only our own files, so that a neighbour's
    gigabytes of unsynced writes are not flushed with them.
    """
    if _syncfs is None:
        return "files"
    dirty = _dirty_bytes()
    return "syncfs" if dirty is not None and dirty < QUIET_DIRTY_BYTES else "files"


def flush_written(fds: list[int], path: str) -> list[BaseException | None]:
    """
    One flush for files already written (open descriptors C{fds}, all on
    the filesystem of the directory C{path}), in the calling thread (never the
    reactor's): as a batch of the group commit flushes its data
    (L{choose_flush}). On a quiet system one syncfs(2) of the
    filesystem; else writeback of every file started, then each fsynced
    on the flush pool, concurrently, so that the filesystem merges their
    journal commits. Returns one error (or None) per descriptor. Their
    renames and the fsync of their directories are the caller's.
    """
    if not fds:
        return []
    if len(fds) > 1 and choose_flush() == "syncfs":
        try:
            _sync_filesystem(path)
        except OSError as e:
            return [e] * len(fds)
        return [None] * len(fds)
    if len(fds) > 1 and _start_writeback is not None:
        for fd in fds:
            _start_writeback(fd)

    def run(fd: int) -> BaseException | None:
        try:
            os.fsync(fd)
        except OSError as e:
            return e
        return None

    return list(_fsync_pool().map(run, fds)) if len(fds) > 1 else [run(fds[0])]


FLUSH_THREADS = 32
_pool: Any = None
_pool_lock = threading.Lock()


def _fsync_pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # Threads that wait on the disk, not on the CPU: enough of them
            # that one batch of concurrent deliveries flushes together.
            _pool = ThreadPoolExecutor(max_workers=FLUSH_THREADS, thread_name_prefix="mailhub-fsync")
    return _pool


def _told(item: PendingWrite, error: Any) -> Any:
    """What C{item}'s owner makes of its C{error} (L{PendingWrite.failed}); a failure of its own if that raises."""
    try:
        return item.failed(error)  # type: ignore[misc]
    except BaseException:  # noqa: B036 - reported to the caller
        return Failure()


def _directory_of(path: str) -> str:
    """C{os.path.dirname(path)}, without its general machinery for the usual path (once or twice per write)."""
    i = path.rfind("/")
    if i > 0 and path[i - 1] != "/":
        return path[:i]
    return os.path.dirname(path)


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _commit_batch(batch: list[PendingWrite], flush: str = "files", owing: bool | Callable[[], bool] = False, pool: _WatchPool | None = None) -> Any:
    """
    Runs in a worker thread: the four phases of the module docstring for
    one batch. Returns one error (or None) per write. With C{owing}, the
    syncfs of phase 4 for linked files is left to a later one (the next
    batch's flush of its data, or L{_flush_owed}) and a L{Committed} is
    returned; C{owing} may be a function, asked once the files are linked,
    that says whether to leave it (else it runs here, before the batch
    returns, and L{Committed.inline} counts it). A syncfs goes through a
    descriptor of C{pool}'s (the writer's L{_WatchPool}) taken before the
    batch's first write.
    """
    flushed: list = []
    owed: list = []
    inline = 0
    outcome: list[BaseException | None] = [None] * len(batch)
    fds: list[int | None] = [None] * len(batch)
    logs: dict[tuple[str, int], list[int]] = {}  # (log file, its lock) -> indexes of the writes it carries
    log_fds: dict[tuple[str, int], int] = {}
    # Unnamed files (UNNAMED): which writes are, and the batch's descriptors
    # of their directories (tmp/ and the final ones), opened once a batch.
    unnamed = [False] * len(batch)
    directory_fds: dict[str, int | None] = {}
    # (before the first write: see _Watch)
    pool = pool or _POOL
    watches = pool.take_for(batch) if flush == "syncfs" and _syncfs is not None else {}
    try:
        use_unnamed = UNNAMED and flush == "syncfs" and _syncfs is not None and _linkat is not None
        # 1. data to tmp files, then records to their logs
        for i, item in enumerate(batch):
            try:
                if use_unnamed and item.fresh and item.rename is None and type(item.data) is bytes:
                    fds[i] = _create_unnamed(item, directory_fds)
                    unnamed[i] = fds[i] is not None
                if fds[i] is None:
                    fds[i] = _create_file(item.tmp_path, item.data)
            except BaseException as e:  # noqa: B036 - reported to the caller
                outcome[i] = e
                if not unnamed[i]:
                    _discard(item.tmp_path)
                continue
            if item.record is not None:
                logs.setdefault((item.record.path, id(item.record.lock)), []).append(i)
        for key, members in logs.items():
            first = batch[members[0]].record
            try:
                with first.lock:
                    if first.prepare is not None:
                        first.prepare([batch[i].record for i in members])
                    log_fds[key] = append_lines(first.path, b"".join(batch[i].record.line for i in members))
            except BaseException as e:  # noqa: B036 - reported to the caller
                for i in members:
                    outcome[i] = e
        # 2. flush
        _flush(batch, outcome, fds, logs, log_fds, flush, flushed, watches)
        _fail_groups(batch, outcome)
        # 3. rename (or link) into place
        directories: dict[str, list[int]] = {}
        linked: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            if outcome[i] is None and unnamed[i]:
                try:
                    unnamed[i] = _place_unnamed(item, fds[i], directory_fds)  # type: ignore[arg-type]
                except BaseException as e:  # noqa: B036 - reported to the caller
                    outcome[i] = e
                if unnamed[i]:
                    _close(fds[i])
                    fds[i] = None
                    if outcome[i] is None:
                        linked.setdefault(_directory_of(item.final_path), []).append(i)
                    continue
            _close(fds[i])
            fds[i] = None
            if outcome[i] is not None:
                if not unnamed[i]:
                    _discard(item.tmp_path)
                continue
            try:
                (item.rename or os.rename)(item.tmp_path, item.final_path)
            except BaseException as e:  # noqa: B036 - reported to the caller
                outcome[i] = e
                _discard(item.tmp_path)
                continue
            directories.setdefault(_directory_of(item.final_path), []).append(i)
        # 4. the directory entries
        for directory, members in directories.items():
            try:
                fsync_directory(directory)
            except OSError as e:
                for i in members:
                    outcome[i] = e
                    _discard(batch[i].final_path)
        if linked:
            if owing is True or (owing and owing()):
                owed = _owe_links(linked, directory_fds)
            else:
                begun = len(flushed)
                _sync_linked(batch, outcome, linked, directory_fds, flushed, watches)
                inline = len(flushed) - begun
    finally:
        pool.give_back(watches)  # (after _owe_links read the numbers: a syncfs through them comes after)
        for fd in fds:
            _close(fd)
        for fd in log_fds.values():
            _close(fd)
        for fd in directory_fds.values():
            _close(fd)
    if owing:
        return Committed(outcome, flushed, owed, inline)
    return outcome


def _owe_links(linked: dict[str, list[int]], directory_fds: dict[str, int | None]) -> list:
    """
    Phase 4 left to a later syncfs (L{Committed.owed}): per filesystem of
    the directories in C{linked}, the number the syncfs that serves them
    must have (the newest begun + 1, read now that the links are made).
    """
    linked_at = time.monotonic_ns()  # (every link made)
    devices: dict[int, tuple[str, list[int]]] = {}
    for directory, members in linked.items():
        device = os.fstat(directory_fds[directory]).st_dev  # type: ignore[arg-type]
        devices.setdefault(device, (directory, []))[1].extend(members)
    return [(device, _flush_numbers.get(device, 0) + 1, directory, members, linked_at) for device, (directory, members) in devices.items()]


def _directory_fd(directory: str, directory_fds: dict[str, int | None]) -> int:
    """The batch's descriptor of C{directory} (opened at its first use in the batch)."""
    fd = directory_fds.get(directory)
    if fd is None:
        fd = directory_fds[directory] = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    return fd


# What open(O_TMPFILE) fails with where the filesystem (or the kernel) has
# no unnamed files: EOPNOTSUPP, EISDIR (a kernel before 3.11 reads the flag
# as O_DIRECTORY), EINVAL.
_NO_UNNAMED = frozenset({95, 21, 22})


def _create_unnamed(item: PendingWrite, directory_fds: dict[str, int | None]) -> int | None:
    """
    Phase 1 for a write as an unnamed file in its tmp/ directory: its open
    descriptor, or None where the filesystem refuses unnamed files (then
    that directory is written with tmp/ names from then on).
    """
    directory = _directory_of(item.tmp_path)
    if directory in _unnamed_refused:
        return None
    directory_fd = _directory_fd(directory, directory_fds)
    try:
        return _create_file(item.tmp_path, item.data, directory_fd)
    except OSError as e:
        if e.errno not in _NO_UNNAMED:
            raise
    _unnamed_refused.add(directory)
    return None


def _place_unnamed(item: PendingWrite, fd: int, directory_fds: dict[str, int | None]) -> bool:
    """
    Phase 3 for an unnamed file whose data is on disk: linked to its final
    name (True). Where linking an unnamed file is not allowed, the data is
    written again under its tmp/ name and fsynced, for the caller to
    rename into place (False), and that tmp/ directory is written with
    names from then on. Raises OSError if neither could be done (then no
    tmp/ name is left).
    """
    final = item.final_path
    directory = _directory_of(final)
    slash = final.rfind("/")
    try:
        _link(fd, _directory_fd(directory, directory_fds), final[slash + 1 :], final)
        return True
    except OSError as e:
        if e.errno not in (1, 2, 18, 95):  # EPERM, ENOENT, EXDEV, EOPNOTSUPP
            raise
    _unnamed_refused.add(_directory_of(item.tmp_path))
    again = _create_file(item.tmp_path, item.data)
    try:
        os.fsync(again)
    except BaseException:
        _discard(item.tmp_path)
        raise
    finally:
        os.close(again)
    return False


def _sync_linked(batch: list[PendingWrite], outcome: list[BaseException | None], linked: dict[str, list[int]], directory_fds: dict[str, int | None], flushed: list | None = None, watches: dict | None = None) -> None:
    """
    Phase 4 for the files linked into place (C{linked}: directory -> the
    writes linked there): one syncfs per filesystem (L{_sync_links},
    through the batch's watch of it, whose cursor is older than the
    links); if it fails, the files it was to make durable are taken back
    out.
    """
    devices: dict[int, list[str]] = {}
    for directory in linked:
        devices.setdefault(os.fstat(directory_fds[directory]).st_dev, []).append(directory)  # type: ignore[arg-type]
    for device, directories in devices.items():
        try:
            _numbered_sync(device, directories[0], _sync_links, flushed, (watches or {}).get(device))
        except OSError as e:
            for directory in directories:
                for i in linked[directory]:
                    outcome[i] = e
                    _discard(batch[i].final_path)


def _fail_groups(batch: list[PendingWrite], outcome: list[BaseException | None]) -> None:
    """Before the renames: every write of a group one of whose writes failed fails with that error (L{GroupCommitWriter.write_group})."""
    failed = {id(item.group): error for item, error in zip(batch, outcome) if error is not None and item.group is not None}
    if failed:
        for i, item in enumerate(batch):
            if outcome[i] is None and item.group is not None and id(item.group) in failed:
                outcome[i] = failed[id(item.group)]


def _flush(batch, outcome, fds, logs, log_fds, flush: str = "files", flushed: list | None = None, watches: dict | None = None) -> None:
    """
    Phase 2: the data of every live write and log on disk, or an error.
    C{flush} C{"files"}: only the batch's own files are flushed:
    writeback of all of them is started first (sync_file_range, where
    there is one), then each is fsynced (fdatasync for the logs) on a
    small thread pool, so that the disk sees them together and the
    filesystem merges their journal commits. C{"syncfs"} (a quiet
    system, see L{choose_flush}): one syncfs(2) per filesystem.
    """
    live = [i for i in range(len(batch)) if outcome[i] is None]
    if flush == "syncfs" and _syncfs is not None and len(live) + len(log_fds) > 1:
        if _flush_filesystems(batch, outcome, fds, logs, log_fds, live, flushed, watches or {}):
            return
    jobs: list[tuple[Callable[[int], None], int, list[int]]] = [(os.fsync, fds[i], [i]) for i in live]
    jobs += [(_fdatasync, fd, logs[key]) for key, fd in log_fds.items()]
    if not jobs:
        return
    if len(jobs) > 1 and _start_writeback is not None:
        for _, fd, _ in jobs:
            _start_writeback(fd)

    def run(job) -> BaseException | None:
        function, fd, _ = job
        try:
            function(fd)
        except BaseException as e:  # noqa: B036 - reported to the caller
            return e
        return None

    results = list(_fsync_pool().map(run, jobs)) if len(jobs) > 1 else [run(jobs[0])]
    for (_, _, members), error in zip(jobs, results):
        if error is not None:
            for i in members:
                outcome[i] = outcome[i] or error


def _flush_filesystems(batch, outcome, fds, logs, log_fds, live, flushed: list | None = None, watches: dict | None = None) -> bool:
    """
    One syncfs(2) for each filesystem the batch wrote to (numbered, into
    C{flushed}), each through the batch's watch of it (L{_Watch}, taken
    before its writes). False, having flushed nothing, when the batch
    wrote to a filesystem it holds no watch of: its files are then
    flushed one by one.
    """
    watches = watches or {}
    devices: dict[int, str] = {}  # filesystem -> a directory on it
    device_of: dict[int, int] = {}  # write index -> filesystem
    by_directory: dict[str, int] = {}  # a new file is on its directory's filesystem
    for i in live:
        directory = _directory_of(batch[i].tmp_path) or "."
        device = by_directory.get(directory)
        if device is None:
            device = by_directory[directory] = os.fstat(fds[i]).st_dev
        device_of[i] = device
        devices.setdefault(device, directory)
    log_devices = {key: os.fstat(fd).st_dev for key, fd in log_fds.items()}
    for (path, _), device in log_devices.items():
        devices.setdefault(device, os.path.dirname(path) or ".")
    if any(device not in watches for device in devices):
        return False
    failed: dict[int, OSError] = {}
    for device, directory in devices.items():
        try:
            _numbered_sync(device, directory, _sync_filesystem, flushed, watches[device])
        except OSError as e:
            failed[device] = e
    for i in live:
        if device_of[i] in failed:
            outcome[i] = failed[device_of[i]]
    for key, device in log_devices.items():
        if device in failed:
            for i in logs[key]:
                outcome[i] = outcome[i] or failed[device]
    return True


class CommitThreads:
    """
    The group commit's own threads. A batch is handed to an idle one (the
    one idle most recently: its stack and caches are warm, and the others
    sleep on) in a C{queue.SimpleQueue} of its own (one call in C), and
    its outcome comes back with C{reactor.callFromThread}: none of the
    Deferred, log context and thread-pool bookkeeping of
    C{deferToThreadPool} per batch. A thread is started when none is idle
    (at most the batches a writer has on their way at once, C{count}),
    with the first batch; they stop, after the batch they are running,
    when the reactor shuts down.
    """

    def __init__(self, reactor: Any, count: int):
        self.reactor = reactor
        self.count = count
        self._idle: list[Any] = []  # inboxes of idle threads, the most recently idle last
        self._threads: list[tuple[threading.Thread, Any]] = []

    def run(self, function: Callable, args: tuple, on_result: Callable[[Any], None]) -> None:
        """
        Call C{function(*args)} in a commit thread, then C{on_result} in the
        reactor thread with what it returned, or with a L{Failure} of what
        it raised.
        """
        idle = self._idle
        inbox = idle.pop() if idle else self._start()
        inbox.put((function, args, on_result))

    def _start(self) -> Any:
        if not self._threads:
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        inbox = queue.SimpleQueue()
        thread = threading.Thread(target=self._work, args=(inbox,), name=f"mailhub-commit-{len(self._threads)}", daemon=True)
        self._threads.append((thread, inbox))
        thread.start()
        return inbox

    def _work(self, inbox: Any) -> None:
        get, idle, call_back = inbox.get, self._idle, self.reactor.callFromThread
        while True:
            job = get()
            if job is None:
                return
            function, args, on_result = job
            try:
                result = function(*args)
            except BaseException:  # noqa: B036 - reported to the caller
                result = Failure()
            # Idle again before the reactor hears of it: the batch that
            # this outcome lets start finds a thread (a job put meanwhile
            # waits in the inbox).
            idle.append(inbox)
            call_back(on_result, result)
            del job, function, args, on_result, result

    def stop(self) -> None:
        """Let each thread finish its batch and end (the reactor's shutdown)."""
        threads, self._threads = self._threads, []
        self._idle.clear()
        for _, inbox in threads:
            inbox.put(None)
        for thread, _ in threads:
            thread.join()


# Batches on their way to disk at once while the flush is a syncfs(2).
SYNCFS_IN_FLIGHT = 2

# Seconds the batch on its way has flushed before a second syncfs batch
# may start beside it. On a disk (a flush takes milliseconds) the second
# batch then overlaps the first one's directory fsync; where a flush is
# quicker than this (tmpfs, a fast SSD) the next batch waits for the first
# and takes everything queued meanwhile: fewer, larger batches, less CPU
# per message (a batch costs the reactor and the flush thread its own work).
OVERLAP_AFTER = 0.001

# Seconds a batch that could start beside another one on its way waits
# for the reactor to catch up with its input: it starts at the end of a
# turn that queued no new write, or once its first write has waited this
# long, or when no batch is on its way any more (0: at the end of the turn
# its first write came in). A process short of CPU (each --workers
# worker on its core, beside the clients) so pays the cost of a batch
# (a thread hand-off, two flushes, the directory opens) for more writes:
# 16 clients per worker, 6.5 -> 8-9 writes a batch, 5-10% less CPU per
# message. One process, which waits on the disk rather than on the CPU,
# keeps 0 (with 2 ms its rate fell: its batches were already ~15).
# Set by twisted_mailhub.workers.
GATHER_MAX = 0.0

# What the group commits of this process have done (counted in the
# reactor thread), for the control socket's C{status} and
# bench/workers.py: batches (and of them flushed file by file: the
# neighbours had much dirty data), their writes, syncfs calls (of a
# batch's data, or of links), and of those the ones for links alone
# (L{_flush_owed}: no batch's flush came to serve them).
STATS = {"batches": 0, "files_batches": 0, "writes": 0, "syncfs": 0, "links_alone": 0}


class GroupCommitWriter:
    """
    Writes files durably, batching the flushes of concurrent writes.
    """

    def __init__(self, reactor: Any = None, max_batch: int = 256, in_flight: int = 4, threads: Any = None):
        """
        C{threads}: what runs a batch's disk work off the reactor (a
        L{CommitThreads} of C{in_flight} threads unless given; tests give
        one that runs batches in their own thread).
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.threads = threads if threads is not None else CommitThreads(reactor, in_flight)
        self.max_batch = max_batch
        # Batches on their way to disk at once: they flush only their own
        # files, so one need not wait for another (and a slow flush does
        # not hold up the writes that queue behind it).
        self.in_flight = in_flight
        self._queue: list[PendingWrite] = []
        self._running = 0
        self._flush = "files"
        self._flush_chosen = -1.0  # time.monotonic() of the last choose_flush()
        self._after: list[Callable[[], None]] = []
        self._finishing = False
        self._starting = False  # a _start_batches call is due
        self._last_start = 0.0  # time.monotonic() when the newest batch started
        self._overlap_call: Any = None  # the delayed start of a second syncfs batch
        self._queued_at = 0.0  # time.monotonic() when the oldest queued write came (roughly)
        self._gathered = -1  # the queue's length at the last turn a batch waited for more (GATHER_MAX)
        # Batches on their way, oldest first: [outcome or None, done, crashed].
        self._in_flight: Any = collections.deque()
        # Batches whose links wait for a syncfs (L{Committed}), oldest
        # first: [slot, batch, outcome, owed], and whether a thread runs
        # one for them (L{_flush_owed}).
        self._owing: list[list[Any]] = []
        # The batches (their slots' ids) whose thread flushes their own
        # links now (_leave_links; added in that thread, taken out in the
        # reactor's when it returns): such a batch no longer holds back
        # the next one (_busy).
        self._links_inline: set[int] = set()
        self._watch_pool = _WatchPool()  # (this writer's: see _WatchPool)
        self._flushing = False
        self.batches = 0  # for tests and benchmarks: how many flushes ran

    def after_batch(self, function: Callable[[], None]) -> None:
        """
        Call C{function()} once, after the C{arrived} calls of the batch
        being finished now and before any of its Deferreds fires (called
        at another time: on the reactor's next turn). Work that the writes
        of one batch share is so done once, before anyone hears of them
        (the Maildir's modseq log lines).
        """
        self._after.append(function)
        if not self._finishing and len(self._after) == 1:
            self.reactor.callLater(0, self._run_after)

    def _run_after(self) -> None:
        after, self._after = self._after, []
        for function in after:
            try:
                function()
            except Exception:
                log.failure("after a group commit")

    def write(
        self,
        tmp_path: str,
        final_path: str,
        data,
        record: Record | None = None,
        rename: Callable[[str, str], None] | None = None,
        arrived: Callable[[], Any] | None = None,
        result: Any = None,
        failed: Callable[[Any], Any] | None = None,
        fresh: bool = False,
    ) -> defer.Deferred:
        """
        Write C{data} (bytes, or a callable taking an fd) to C{tmp_path},
        then move it to C{final_path} (with C{rename(tmp, final)} if given,
        in the worker thread; else C{os.rename}). The Deferred fires with
        C{result} (if not L{None}, else C{final_path}) once the file, its
        directory entry and C{record} (if given) are on disk; it fails with the C{OSError} that stopped it,
        and then nothing is left at C{final_path} or C{tmp_path} (the
        record's line may stay: its owner must accept lines whose file
        never came). C{arrived()}, if given, is called once the write is
        durable, with those of the other writes of its batch, before any
        Deferred of the batch fires (the owner's bookkeeping; if it
        raises, the Deferred fails with that). C{failed(error)}, if given,
        is called instead when the write did not happen, just before the
        Deferred fails with what it returns. C{fresh}: no file is at
        C{final_path} (a unique name), so the write may go there as an
        unnamed file and a link (L{UNNAMED}); otherwise it replaces what is
        there, as a rename does.
        """
        item = PendingWrite(tmp_path, final_path, data, record=record, rename=rename, arrived=arrived, result=result, failed=failed, fresh=fresh)
        if not self._queue:
            self._queued_at = time.monotonic()
        self._queue.append(item)
        if not self._starting and self._busy() < self._limit():
            # At the end of this reactor turn, with the writes of its other events.
            self._starting = True
            self.reactor.callLater(0, self._start_batches)
        return item.deferred

    def _start_batches(self) -> None:
        self._starting = False
        if self._gather():
            return
        while self._queue and self._may_start():
            self._next_batch()

    def _gather(self) -> bool:
        """
        Whether the batch that could start now waits a turn for more
        writes (L{GATHER_MAX}): only beside another batch on its way, while
        the last turn queued more and the oldest has not waited too long.
        """
        queued = len(self._queue)
        if not GATHER_MAX or not self._busy() or not queued or queued == self._gathered or time.monotonic() - self._queued_at >= GATHER_MAX:
            self._gathered = -1
            return False
        self._gathered = queued
        self._starting = True
        self.reactor.callLater(0, self._start_batches)
        return True

    def _may_start(self) -> bool:
        """
        Whether a batch may start now: a free place, and beside a syncfs
        batch only once that one has been on its way L{OVERLAP_AFTER}
        seconds (until then a call is due that looks again).
        """
        busy = self._busy()
        if busy == 0:
            return True
        if busy >= self._limit():
            return False
        if self._flush != "syncfs":
            return True
        waited = time.monotonic() - self._last_start
        if waited >= OVERLAP_AFTER:
            return True
        if self._overlap_call is None:
            self._overlap_call = self.reactor.callLater(OVERLAP_AFTER - waited, self._overlap_due)
        return False

    def _overlap_due(self) -> None:
        self._overlap_call = None
        self._start_batches()

    def write_group(self, writes: list[tuple]) -> list[defer.Deferred]:
        """
        L{write} for several files (C{(tmp_path, final_path, data, record[,
        rename[, arrived]])} each) that become visible together: they go to disk in one batch
        and none is renamed into place unless every one was written and
        flushed; otherwise each fails with the first error (MULTIAPPEND,
        RFC 3502 §3). One Deferred per write, in order.
        """
        group = object()
        items = [
            PendingWrite(w[0], w[1], w[2], record=w[3], rename=w[4] if len(w) > 4 else None, arrived=w[5] if len(w) > 5 else None, group=group)
            for w in writes
        ]
        if not self._queue:
            self._queued_at = time.monotonic()
        self._queue.extend(items)
        if not self._starting and self._busy() < self._limit():
            self._starting = True
            self.reactor.callLater(0, self._start_batches)
        return [item.deferred for item in items]

    def _limit(self) -> int:
        # syncfs flushes everything at once, but a batch is two journal
        # commits in a row (its data, then its renames' directories): with
        # a second batch on its way, the one's directory fsync and the
        # other's syncfs overlap instead of waiting in turn (32 clients on
        # a disk, load 8-10: without pipelining 1,303 -> 1,670 msg/s,
        # pipelined 1,350 -> 2,549), once the first has been on its way
        # OVERLAP_AFTER (_may_start).
        return min(SYNCFS_IN_FLIGHT, self.in_flight) if self._flush == "syncfs" else self.in_flight

    def _next_batch(self) -> None:
        if not self._queue:
            return
        now = time.monotonic()
        if now - self._flush_chosen >= CHOICE_SECONDS:
            # Read from /proc in the reactor thread: not for every batch.
            self._flush, self._flush_chosen = choose_flush(), now
        # Share what is queued among the batches that may start now.
        if self._flush == "syncfs":
            # One syncfs flushes whatever is queued: all of it in one batch
            # (a second batch takes what comes meanwhile).
            size = min(self.max_batch, len(self._queue))
        else:
            size = max(1, min(self.max_batch, -(-len(self._queue) // max(1, self._limit() - self._running))))
        while size < len(self._queue) and self._queue[size].group is not None and self._queue[size].group is self._queue[size - 1].group:
            size += 1  # a group stays in one batch (write_group)
        batch, self._queue = self._queue[:size], self._queue[size:]
        if self._queue:
            self._queued_at = now
        self._running += 1
        self._last_start = now
        self.batches += 1
        STATS["batches"] += 1
        STATS["writes"] += len(batch)
        if self._flush != "syncfs":
            STATS["files_batches"] += 1

        def done(outcome):
            # The owners' bookkeeping for every write, then what they share
            # (after_batch), and only then the Deferreds, whose callbacks
            # may tell clients.
            results: list[Any] = []
            self._finishing = True
            try:
                for item, error in zip(batch, outcome):
                    if error is None and item.arrived is not None:
                        try:
                            item.arrived()
                        except BaseException:  # noqa: B036 - reported to the caller
                            error = Failure()
                    results.append(error)
            finally:
                self._finishing = False
                if self._after:
                    self._run_after()
            for item, error in zip(batch, results):
                if error is None:
                    item.deferred.callback(item.final_path if item.result is None else item.result)
                else:
                    item.deferred.errback(error if item.failed is None else _told(item, error))

        def crashed(reason):
            for item in batch:
                if not item.deferred.called:
                    item.deferred.errback(reason if item.failed is None else _told(item, reason))

        # Batches finish in the order they started: one whose flush ended
        # first waits for those before it, so that messages become visible
        # in the order of their UIDs (given in order of arrival): an IMAP
        # session told of UID n never hears of a new message below n.
        slot: list[Any] = [None, done, crashed]
        self._in_flight.append(slot)

        def returned(result):
            # The thread is free. Its batch is done, or its links wait for
            # a syncfs begun after them: the next batch's (of its data),
            # else one of their own (_flush_owed).
            self._running -= 1
            self._links_inline.discard(id(slot))
            if isinstance(result, Committed):
                STATS["links_alone"] += result.inline
                STATS["syncfs"] += len(result.flushed)
                self._heard(result.flushed)
                if result.owed:
                    self._owing.append([slot, batch, result.outcome, result.owed])
                else:
                    slot[0] = result.outcome
            else:
                slot[0] = result  # the outcomes, or the Failure of a crash
            try:
                if not (GATHER_MAX and self._busy() and (self._starting or self._gather())):
                    while self._queue and self._may_start():
                        self._next_batch()
                self._flush_owing()
            finally:
                self._finish_in_order()

        self.threads.run(_commit_batch, (batch, self._flush, lambda: self._leave_links(id(slot)), self._watch_pool), returned)

    def _leave_links(self, key: int) -> bool:
        """
        Asked in a batch's thread once its files are linked: whether the
        syncfs that makes the links durable is left to a later one: yes
        while a write is queued or due to start (its batch's flush of its
        data will serve them) or another batch is on its way. Otherwise
        nothing is coming to serve them, and the thread runs that syncfs
        itself before it returns: no trip through the reactor to a thread
        for it (L{_flush_owed}); the batch then no longer counts as on its
        way for the next one (L{_busy}). Reads the reactor's state from
        the thread: a write queued just after is served by a syncfs of its
        own batch, as ever; one more flush at most.
        """
        if self._queue or self._starting or self._running > 1:
            return True
        self._links_inline.add(key)
        return False

    def _busy(self) -> int:
        """Batches on their way, but for those whose thread only flushes their own links (L{_leave_links})."""
        return self._running - len(self._links_inline)

    def _heard(self, flushed: list) -> None:
        """
        The numbered syncfs calls a thread made (L{Committed.flushed}): the
        batches whose links each served are done, or fail with its error
        (their linked files are then taken away first, in a thread).
        """
        if not flushed or not self._owing:
            return
        for device, number, error, since in flushed:
            for entry in self._owing:
                owed = entry[3]
                for k, (owed_device, wanted, _, members, linked_at) in enumerate(owed):
                    # (began after the links, and, to vouch for them, through
                    # a descriptor that hears of errors since before them)
                    if owed_device == device and wanted <= number and (error is not None or since <= linked_at):
                        del owed[k]
                        if error is not None:
                            entry.append([entry[1][i].final_path for i in members])
                            for i in members:
                                entry[2][i] = entry[2][i] or error
                        break
        still = []
        for entry in self._owing:
            if entry[3]:
                still.append(entry)
                continue
            slot, outcome, paths = entry[0], entry[2], [path for taken in entry[4:] for path in taken]
            if paths:
                self.threads.run(_take_out, (paths,), lambda _, slot=slot, outcome=outcome: self._taken_out(slot, outcome))
            else:
                slot[0] = outcome
        self._owing = still

    def _taken_out(self, slot: list[Any], outcome: list) -> None:
        slot[0] = outcome
        self._finish_in_order()

    def _flush_owing(self) -> None:
        """
        When batches' links wait for a syncfs and no thread is running a
        batch (whose flush would come after them) or one for them, and no
        write waits to be the next batch (about to start: its flush will
        serve them): one for them in a thread (L{_flush_owed}).
        """
        if not self._owing or self._running or self._flushing or self._queue:
            return
        directories: dict[int, list] = {}
        for entry in self._owing:
            for device, _, directory, _, linked_at in entry[3]:
                known = directories.setdefault(device, [directory, linked_at])
                known[1] = min(known[1], linked_at)
        self._flushing = True
        # The oldest idle descriptors, taken now: a batch that starts
        # before the thread runs must not take the one older than the links.
        watches = {device: watch for device in directories for watch in [self._watch_pool.take_idle(device)] if watch is not None}

        def flushed(result):
            self._flushing = False
            if isinstance(result, Failure):  # (not an OSError: those are in the list)
                result = [(device, number, result.value, 0) for device in directories for number in [1 << 62]]
            else:
                STATS["syncfs"] += len(result)
                STATS["links_alone"] += len(result)
            try:
                self._heard(result)
                self._flush_owing()
            finally:
                self._finish_in_order()

        self.threads.run(_flush_owed, ([(device, directory, oldest) for device, (directory, oldest) in directories.items()], self._watch_pool, watches), flushed)

    def _finish_in_order(self) -> None:
        """Finish the oldest batches that are done, oldest first."""
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] is not None:
            result, done, crashed = in_flight.popleft()
            if isinstance(result, Failure):
                crashed(result)
            else:
                done(result)
