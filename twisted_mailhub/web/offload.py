# -*- test-case-name: tests.test_web_big_messages -*-
"""
The web face's parsing threads: the hub's own (L{twisted_mailhub.offload},
shared with IMAP since s12 so that one small pool bounds what parsing
takes, whichever protocol asks).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from twisted_mailhub.offload import THREADS, in_thread, read_in_thread

__all__ = ["THREADS", "in_thread", "read_message", "still_waiting"]


def read_message(folder: Any, uid: int) -> defer.Deferred:
    """
    A Deferred of the stored message C{uid} of C{folder} (bytes), read in a
    parsing thread when the store lets a thread read it
    (L{twisted_mailhub.offload.read_in_thread}: a Maildir file, opened
    here and read there; a PostgreSQL message, on the store's read
    connections): a 46 MB message read in the reactor held every other
    client for its read. The memory store's is taken here. Raises the
    store's L{NoSuchMessage} if it is gone.
    """
    waited = read_in_thread(folder, uid, in_thread)
    if waited is None:
        return defer.succeed(folder.read(uid))
    return waited


def still_waiting(request: Any) -> Callable[[], bool]:
    """
    A function telling whether C{request}'s client still waits for its
    answer: False once its connection is lost (C{request.notifyFinish()}
    fails). A long search in a worker thread
    (L{twisted_mailhub.imap.search.match_in_thread}'s C{wanted}) stops
    reading then.
    """
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))
    return lambda: not gone
