# -*- test-case-name: tests.test_small_files_durable -*-
"""
Commands that show a folder's UIDVALIDITY and UIDs (SELECT, EXAMINE,
STATUS, LIST's RETURN (STATUS)) wait until its UID list is durable.

A folder whose UID list was lost or damaged (a crash, a Maildir copied in)
makes it again at its first open in this process, and the store flushes it
off the reactor (the folder's C{unsettled()}, store/maildir.py). A command
that opened such a folder stops before it writes anything
(L{settled_folder} raises L{Settling}); input is held, and the command runs
again from the start once the list is on disk, so nothing it tells a client
can be lost by a crash (design rule 6). A flush that failed is the
command's C{NO}, as any store error.
"""

from __future__ import annotations

import functools
from typing import Any

from twisted.logger import Logger

log = Logger()


class Settling(Exception):
    """The folder just opened has a UID list not durable yet; C{flush} fires once it is."""

    def __init__(self, flush: Any):
        Exception.__init__(self, "UID list not durable yet")
        self.flush = flush


def settled_folder(folder: Any) -> Any:
    """C{folder}, or raises L{Settling} while its UID list is not durable (stores without C{unsettled()}: at once)."""
    unsettled = getattr(folder, "unsettled", None)
    pending = unsettled() if unsettled is not None else None
    if pending is not None:
        raise Settling(pending)
    return folder


def when_settled(handler: Any) -> Any:
    """
    Wrap a command handler C{handler(self, tag, *args)} of
    L{twisted_mailhub.imap.server.IMAPServer}: when it raises L{Settling},
    hold input and run it again once the flush is done (or answer the
    failure with the session's C{_folder_error}). The handler must raise
    before it writes anything: what it did until then is done again.
    """

    @functools.wraps(handler)
    def run(self: Any, tag: bytes, *args: Any, **kw: Any) -> Any:
        try:
            return handler(self, tag, *args, **kw)
        except Settling as e:
            self._hold_input()

            def again(_: Any) -> None:
                run(self, tag, *args, **kw)

            def failed(reason: Any) -> None:
                self._folder_error(tag, reason.value)

            e.flush.addCallbacks(again, failed)
            e.flush.addErrback(lambda f: log.failure("IMAP command after a UID list's flush failed", f))
            e.flush.addBoth(lambda _: self._release_input())
            return None

    return run
