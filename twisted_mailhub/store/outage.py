# -*- test-case-name: tests.test_pg_outage -*-
"""
One log line for a request refused because the store (a database) cannot
be reached: what was refused, by which protocol, and why, without a
traceback (the reason is known; a traceback would only bury it). The
reply is each protocol's temporary error: SMTP C{451 4.3.0}, IMAP C{NO
[UNAVAILABLE]} (RFC 5530 §3), POP3 C{-ERR [SYS/TEMP]} (RFC 3206 §4),
FTP C{451} (RFC 959 §4.2).

A busy hub refuses many requests a second while its database is down, so
each protocol logs at most L{BURST} lines per L{WINDOW} seconds; the next
line after a pause says how many were refused without a line.
"""

from __future__ import annotations

import time

from twisted.logger import Logger

log = Logger(namespace="mailhub.outage")

WINDOW = 10.0
BURST = 20

# protocol -> [window start, lines in it, refusals not logged]
_counts: dict[str, list] = {}


def refused(protocol: str, request: str, error: BaseException, clock=time.monotonic) -> None:
    """
    Log that C{protocol} (C{"imap"}) refused C{request} (C{"FETCH"}, a
    command name; never client data) with a temporary error because of
    C{error} (a L{twisted_mailhub.store.interfaces.StoreUnavailable} or
    an C{OSError}-like failure to reach the database).
    """
    now = clock()
    count = _counts.setdefault(protocol, [now, 0, 0])
    if now - count[0] >= WINDOW:
        count[0], count[1] = now, 0
    if count[1] >= BURST:
        count[2] += 1
        return
    count[1] += 1
    unlogged, count[2] = count[2], 0
    log.warn(
        "{protocol}: {request} refused with a temporary error: the store cannot be reached ({why}){more}",
        protocol=protocol, request=request, why=_why(error),
        more=f"; {unlogged} more refused without a line" if unlogged else "",
    )


def unavailable(error: BaseException) -> bool:
    """
    Is C{error} a store or file system that cannot be reached now (its
    database is down or restarting): a temporary failure to answer with
    the protocol's temporary error and L{refused}, never a traceback?
    """
    from twisted_mailhub.ftp.vfs import FileSystemUnavailable, FileSystemUnavailableWrite
    from twisted_mailhub.store.interfaces import StoreUnavailable

    return isinstance(error, (StoreUnavailable, FileSystemUnavailable, FileSystemUnavailableWrite))


def _why(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
