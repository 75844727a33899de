# -*- test-case-name: tests.test_imap_big_messages -*-
"""
The hub's threads for taking messages apart.

The standard library's C{email} parser needs seconds for a message of
thousands of MIME parts (a few hundred KB anyone can send). Run in the
reactor, that stopped every client of every protocol meanwhile; so the
webmail pages, the Anatomy page and the JSON API (L{twisted_mailhub.web})
and IMAP's FETCH of such a message's structure or parts
(L{twisted_mailhub.imap.fetch}) parse it in one of these threads, and the
reactor goes on.

The pool is small and shared by every protocol (L{THREADS} threads): a
burst of requests for such messages waits its turn here, and never takes
the reactor's shared pool, where the stores' group commits (fsync) run.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

THREADS = 2  # at most this many messages are parsed at once

_pool: ThreadPool | None = None


class _DaemonPool(ThreadPool):
    """
    A L{ThreadPool} of daemon threads. The hub stops it at the reactor's
    shutdown; a process whose reactor never shuts down (a test run, a
    program using the package's parts) still ends instead of waiting for
    these threads forever.
    """

    threadFactory = staticmethod(functools.partial(threading.Thread, daemon=True))


def _shared_pool(reactor: Any) -> ThreadPool:
    global _pool
    if _pool is None or _pool.joined:
        pool = _DaemonPool(minthreads=0, maxthreads=THREADS, name="mailhub-parse")
        pool.start()
        reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
        _pool = pool
    return _pool


def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """
    Call C{function(*args, **kwargs)} in one of the parsing threads; a
    L{Deferred} fires in the reactor with its result (or its exception as a
    failure). C{function} must not touch the store, a request or a
    transport: only bytes and objects no one else uses meanwhile.
    """
    from twisted.internet import reactor

    return threads.deferToThreadPool(reactor, _shared_pool(reactor), function, *args, **kwargs)


def read_in_thread(folder: Any, uid: int, run: Callable[..., defer.Deferred] | None = None) -> defer.Deferred | None:
    """
    A L{Deferred} of the whole stored message C{uid} of C{folder}
    (bytes), read in one of these threads where the store lets a thread
    read it: a Maildir file is opened here and read there; a PostgreSQL
    message is read there on the store's own read connections
    (C{folder.detached_reader}), not on the reactor's. None for a store
    that allows neither (memory: the bytes are at hand). C{run}: what
    runs a call in a thread (default L{in_thread}; a caller's own name
    for it, which tests replace).

    @raise NoSuchMessage: (here, or as the Deferred's failure) the
        message is gone.
    """
    path = getattr(folder, "path", None)
    if path is not None and path(uid) is not None:
        f = folder.open(uid)

        def whole() -> bytes:
            with f:
                return f.read()

        return (run or in_thread)(whole)
    make = getattr(folder, "detached_reader", None)
    if make is None:
        return None
    reader = make([uid])
    if not reader.present(0):
        from twisted_mailhub.store.interfaces import NoSuchMessage

        raise NoSuchMessage(uid)
    return (run or in_thread)(reader.raw, 0)


class DetachedBodies:
    """
    Whole messages of a folder read in a parsing thread on the store's own
    read connections (C{folder.detached_reader}: PostgreSQL's
    L{BlobReader<twisted_mailhub.store.postgresql.BlobReader>}), for a
    session that reads them one after another: POP3 RETR/TOP, IMAP FETCH
    BODY[]. The reactor never waits for the database: it takes only the
    message ids and sizes (from the folder's cache), L{WINDOW} messages at
    a time, and each round trip, which also reads the next small messages
    (4, 16, 64, then 256 at most, 4 MB at most), runs in a thread.

    C{uids}: the session's messages by position (a POP3 maildrop's list,
    a FETCH's targets); positions are what the methods take.
    """

    WINDOW = 1024  # messages whose ids one reader is made with

    def __init__(self, folder: Any, uids: Any, run: Callable[..., defer.Deferred] | None = None):
        self.folder = folder
        self.uids = uids
        self.run = run or in_thread
        self._reader: Any = None
        self._start = self._end = 0

    @staticmethod
    def possible(folder: Any) -> bool:
        """Can C{folder}'s messages be read this way (a store with C{detached_reader})?"""
        return getattr(folder, "detached_reader", None) is not None

    def _at(self, i: int) -> tuple[Any, int]:
        if not self._start <= i < self._end or self._reader is None:
            end = min(i + self.WINDOW, len(self.uids))
            self._reader = self.folder.detached_reader(list(self.uids[i:end]))
            self._start, self._end = i, end
        n = i - self._start
        if not self._reader.present(n):
            from twisted_mailhub.store.interfaces import NoSuchMessage

            raise NoSuchMessage(self.uids[i])
        return self._reader, n

    def whole(self, i: int) -> bytes | defer.Deferred:
        """
        The whole message at position C{i}: its bytes when an earlier read
        brought them, else a L{Deferred} of them (read in a thread).

        @raise NoSuchMessage: (here or as the Deferred's failure) it is gone.
        @raise StoreUnavailable: (as the Deferred's failure) the database
            cannot be reached.
        """
        reader, n = self._at(i)
        data = reader.held(n)
        if data is not None:
            return data
        return self.run(reader.raw, n)

    def forget_read_ahead(self) -> None:
        """
        Let go of the messages read ahead and not yet taken (up to
        L{READ_AHEAD_BYTES<twisted_mailhub.store.postgresql.READ_AHEAD_BYTES>},
        4 MB): the reader goes, and the next read makes a new one (from
        the folder's cache: no database call in the reactor). For a
        session that stopped reading message after message.
        """
        self._reader = None
        self._start = self._end = 0

    def size(self, i: int) -> int:
        """The size in octets of the message at position C{i} (L{NoSuchMessage} if gone)."""
        reader, n = self._at(i)
        return reader.size(n)

    def slice(self, i: int, at: int, length: int) -> defer.Deferred:
        """A L{Deferred} of octets C{at} to C{at + length} of the message at position C{i}, read in a thread."""
        reader, n = self._at(i)
        return self.run(reader.slice, n, at, length)

    def reader(self, i: int) -> "SliceFile":
        """
        A file of the message at position C{i} whose C{read(n)} returns a
        L{Deferred} of its next octets (L{slice}), C{b""} at its end:
        a big message sent as the client takes it (POP3 RETR).
        """
        return SliceFile(self, i)

    def thread_file(self, i: int) -> "ThreadFile":
        """
        A file of the message at position C{i} to read in a worker
        thread only (its C{read(n)} is a database round trip): POP3 TOP
        of a big message reads its first lines there.
        """
        reader, n = self._at(i)
        return ThreadFile(reader, n)


class SliceFile:
    """One message of L{DetachedBodies} read in slices, each in a thread: C{read(n)} gives a Deferred of octets, or C{b""} at the end."""

    def __init__(self, bodies: DetachedBodies, i: int):
        self.bodies, self.i = bodies, i
        self.at = 0
        self.size = bodies.size(i)

    def read(self, n: int) -> bytes | defer.Deferred:
        """
        A L{Deferred} of the next octets (at most C{n}, fewer at the end),
        read in a thread; C{b""} (not a Deferred) once C{size} octets were
        read. One read at a time: the next starts where this one ends.
        The Deferred fails with L{NoSuchMessage} (the message was removed
        meanwhile) or L{StoreUnavailable} (the database is lost).
        """
        want = min(n, self.size - self.at)
        if want <= 0:
            return b""

        def got(chunk: bytes) -> bytes:
            self.at += len(chunk)
            return chunk

        return self.bodies.slice(self.i, self.at, want).addCallback(got)

    def close(self) -> None:
        """No more is read: L{read} gives C{b""} from now on (nothing to let go: no descriptor is held)."""
        self.size = self.at


class ThreadFile:
    """One message of a BlobReader, read in slices by blocking calls: for a worker thread only."""

    def __init__(self, reader: Any, n: int):
        self.reader, self.n = reader, n
        self.at = 0
        self.size = reader.size(n)

    def read(self, length: int = -1) -> bytes:
        """
        (in a worker thread) The next C{length} octets (all the rest for
        -1; fewer at the end, C{b""} past it), one database round trip.

        @raise NoSuchMessage: the message was removed meanwhile.
        @raise StoreUnavailable: the database cannot be reached.
        """
        want = self.size - self.at if length < 0 else min(length, self.size - self.at)
        if want <= 0:
            return b""
        chunk = self.reader.slice(self.n, self.at, want)
        self.at += len(chunk)
        return chunk

    def __enter__(self) -> "ThreadFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
