# -*- test-case-name: tests.test_accepts,tests.test_workers -*-
"""
C{--workers N}: new connections go to the worker that has the fewest.

Every worker accepts on the same listening socket (the supervisor binds
it once and hands it to each). The kernel wakes every worker for a new
connection and any of them may take it; left to that, whichever woke
first took most of a burst. Spread by a hash instead (one socket per
worker in an C{SO_REUSEPORT} group, as before), 32 clients connecting at
once were split as unevenly as 11 to 21 (8 trials: 15/17, 11/21, 12/20,
15/17, 14/18, 12/20, 13/19, 13/19): with each worker kept on a core of
its own, the one with 21 clients ran its core flat while the other's
waited, and the rate was that of the busier core.

Rules:

 - A table in memory shared by the supervisor and the workers (a
   C{memfd}, or an unlinked file, made by the supervisor and inherited)
   has one slot per worker: how many connections it has open, and whether
   it is now leaving new connections to the others. Each worker writes
   only its own slot (aligned 8-octet words: a reader sees the old or the
   new value), set to 0 when it starts. The slot also holds how many
   folders the worker's sessions listen to (L{ConnectionTable.listening}):
   the other workers send it their folder notices only while some do.
 - When a listening socket is readable, a worker accepts only while no
   other worker has fewer connections than it has, one connection at a
   time, looking at the table again after each. A worker that has more
   stops reading the socket, says so in its slot, and looks at the table
   every L{LOOK_AGAIN} seconds: once it has no more than the others it
   reads it again. A worker that is not reading is passed over by the
   others unless it has more than L{AHEAD} fewer: two workers must not
   both wait for the other (short connections, one after another, were
   held up so: 4,000 -> 1,700 a second).
 - A worker that stopped reading for L{GRACE} seconds reads the socket
   again whatever the table says, and takes the next connection if one
   is waiting then: a worker that cannot accept (stopped, busy, gone)
   delays a new connection by at most L{GRACE}, never refuses it. (Its
   count stays in the table as it left it; a worker started again
   writes 0.)
 - Counted are the connections of the listeners every worker serves (not
   the web face, which worker 0 serves alone), from the moment the
   transport is made to its C{connectionLost}: nothing is added to a
   connection's reads and writes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
from typing import Any

# Seconds a worker that has more connections than another leaves a new
# connection to the others before it takes it itself, and how often it
# looks at the table meanwhile (to read the socket again as soon as it
# has no more than the others).
GRACE = 0.005
LOOK_AGAIN = 0.0005
# A worker that is itself leaving new connections to the others is passed
# over while it has at most this many fewer than the one looking: whoever
# is reading the socket then takes what comes (two workers each waiting
# for the other held up short connections: 4,000 -> 1,700 a second).
AHEAD = 2
# Octets per worker's slot: a cache line of its own (its count is written
# at every accept and close; the others only read it).
SLOT = 64
_WORDS = SLOT // 8


def make_table(count: int, directory: str | None = None) -> int:
    """
    The supervisor's shared table for C{count} workers: an open descriptor
    of C{count} zeroed slots (a Linux C{memfd}, else an unlinked temporary
    file in C{directory}), to be inherited by every worker.
    """
    size = max(1, count) * SLOT
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mailhub-connections", getattr(os, "MFD_CLOEXEC", 0))
    else:
        made = tempfile.TemporaryFile(dir=directory)
        fd = os.dup(made.fileno())
        made.close()
    os.ftruncate(fd, size)
    return fd


class ConnectionTable:
    """
    One worker's view of the shared table (L{make_table}): its own count,
    written as it changes, and the others', read when it may accept.

    @param fd: the table's descriptor (inherited from the supervisor).
    @param index: this worker's slot, 0 .. C{count} - 1.
    @param count: how many workers (slots).
    @param reactor: what times the looks at the table (L{LOOK_AGAIN}, L{GRACE}).
    """

    def __init__(self, fd: int, index: int, count: int, reactor: Any):
        if not 0 <= index < count:
            raise ValueError(f"worker {index} has no slot in a table of {count}")
        self.index = index
        self.count = count
        self.reactor = reactor
        self._map = mmap.mmap(fd, count * SLOT)
        self._words = (ctypes.c_int64 * (count * _WORDS)).from_buffer(self._map)
        self._mine = index * _WORDS
        self._others = [i * _WORDS for i in range(count) if i != index]
        self.open = 0
        self.gated = 0  # this worker's listeners now leaving connections to the others
        self._words[self._mine] = 0
        self._words[self._mine + 1] = 0
        self._words[self._mine + 2] = 0

    def counts(self) -> list[int]:
        """Every worker's open connections as the table has them, by index."""
        return [self._words[i * _WORDS] for i in range(self.count)]

    def opened(self) -> None:
        self.open += 1
        self._words[self._mine] = self.open

    def closed(self) -> None:
        self.open -= 1
        self._words[self._mine] = self.open

    def fewest(self) -> bool:
        """
        Whether this worker may take a new connection: no other worker
        that is reading its sockets has fewer connections open, nor one
        that is not (it waits, L{LOOK_AGAIN}) more than L{AHEAD} fewer.
        """
        words, mine = self._words, self.open
        for offset in self._others:
            theirs = words[offset]
            if theirs < mine and (not words[offset + 1] or theirs + AHEAD < mine):
                return False
        return True

    def listening(self, folders: int) -> None:
        """
        How many folders this worker's sessions now listen to (IDLE, a
        selected mailbox, NOTIFY: L{twisted_mailhub.store.shared}).
        """
        self._words[self._mine + 2] = folders

    def others_listening(self) -> bool:
        """Whether a session of another worker listens to some folder (L{listening})."""
        words = self._words
        for offset in self._others:
            if words[offset + 2]:
                return True
        return False

    def waiting(self, change: int) -> None:
        """One more (+1) or one less (-1) of this worker's listeners leaves new connections to the others."""
        self.gated += change
        self._words[self._mine + 1] = self.gated

    def gate(self, port: Any) -> None:
        """
        Make the listening C{port} (a C{tcp.Port} or C{unix.Port}, as
        C{reactor.adoptStreamPort} returns it) count its connections here
        and accept only by the rules of this module.
        """
        table = self
        kind = port.transport

        class Counted(kind):  # type: ignore[misc, valid-type]
            __doc__ = kind.__doc__

            def __init__(self, *args: Any, **kwargs: Any):
                kind.__init__(self, *args, **kwargs)
                table.opened()

            def connectionLost(self, reason: Any) -> None:
                try:
                    kind.connectionLost(self, reason)
                finally:
                    table.closed()

        Counted.__name__ = Counted.__qualname__ = kind.__name__
        port.transport = Counted
        accept = port.doRead
        reactor = table.reactor
        # state: the pending look at the table, when this port stopped
        # reading, and whether the next connection is this worker's whatever
        # the table says (it waited GRACE).
        state: dict[str, Any] = {"call": None, "since": 0.0, "take_next": False}

        def look() -> None:
            state["call"] = None
            if not port.connected or port.disconnecting:
                table.waiting(-1)
                return
            if table.fewest():
                table.waiting(-1)
                port.startReading()
            elif reactor.seconds() - state["since"] >= GRACE:
                table.waiting(-1)
                state["take_next"] = True
                port.startReading()
            else:
                state["call"] = reactor.callLater(LOOK_AGAIN, look)

        def doRead() -> None:
            take_next, state["take_next"] = state["take_next"], False
            while True:
                if not (take_next or table.fewest()):
                    port.stopReading()
                    state["since"] = reactor.seconds()
                    if state["call"] is None:
                        table.waiting(+1)
                        state["call"] = reactor.callLater(LOOK_AGAIN, look)
                    return
                take_next = False
                before = port.sessionno
                port.numberAccepts = 1  # (one at a time: the table is looked at again before the next)
                accept()
                if port.sessionno == before or not port.connected:
                    return  # none waiting (or refused, or the port closed)

        port.doRead = doRead

        def stopped(result: Any) -> Any:
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()
                table.waiting(-1)
            state["call"] = None
            return result

        stop = port.stopListening

        def stopListening() -> Any:
            return stopped(stop())

        port.stopListening = port.loseConnection = stopListening
