# -*- test-case-name: tests.test_web_big_messages -*-
"""
The web face's parsing threads: the hub's own (L{twisted_mailhub.offload},
shared with IMAP since s12 so that one small pool bounds what parsing
takes, whichever protocol asks).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from twisted_mailhub.offload import THREADS, in_thread

__all__ = ["THREADS", "in_thread", "read_message"]


def read_message(folder: Any, uid: int) -> defer.Deferred:
    """
    A Deferred of the stored message C{uid} of C{folder} (bytes), read in a
    parsing thread when the store keeps it in a file (Maildir: opened here,
    read there): a 46 MB message read in the reactor held every other
    client for its read. A store without files (memory, PostgreSQL) reads
    it here, as before. Raises the store's L{NoSuchMessage} (here) if it
    is gone.
    """
    path = getattr(folder, "path", None)
    if path is None or path(uid) is None:
        return defer.succeed(folder.read(uid))
    f = folder.open(uid)

    def whole() -> bytes:
        with f:
            return f.read()

    return in_thread(whole)
