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
