# -*- test-case-name: tests.test_pg_connections -*-
"""
Time limits on the hub's PostgreSQL connections, so that a database that
stops answering (a frozen host, a network partition, a stopped server
process) gives a temporary error in bounded time instead of a wait of
many minutes.

Two layers:

 - L{connection_options}: what every connection is opened with: a
   C{connect_timeout}, TCP keepalives and C{tcp_user_timeout} (libpq
   parameters; the kernel then ends a connection whose peer is gone:
   unanswered keepalive probes, or data left unacknowledged).
 - L{Watchdog.call}: a call that waits on the server (a read in a parsing
   thread, a metadata look in the reactor) is given a deadline. The
   kernel of a host whose database process is stopped still acknowledges
   every packet, so no TCP timer fires; past the deadline one watchdog
   thread shuts the connection's socket down (C{shutdown(2)}), the waiting
   libpq call sees the connection end and the call raises L{NoAnswer},
   which the callers treat as a lost connection (one more try on a new
   connection, then L{StoreUnavailable}: SMTP 451 4.3.0, IMAP NO
   [UNAVAILABLE], POP3 -ERR [SYS/TEMP]).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

# Seconds to open a connection (libpq connect_timeout: the TCP handshake
# and the start-up exchange together).
CONNECT_TIMEOUT = 5
# TCP keepalive: first probe after this many idle seconds, then one every
# KEEPALIVES_INTERVAL s; KEEPALIVES_COUNT unanswered ones end it.
KEEPALIVES_IDLE = 10
KEEPALIVES_INTERVAL = 5
KEEPALIVES_COUNT = 3
# Seconds that sent data may stay unacknowledged (libpq tcp_user_timeout,
# Linux TCP_USER_TIMEOUT, RFC 5482) before the kernel ends the connection.
USER_TIMEOUT = 30
# Seconds a call may wait on the server before its socket is cut. A read
# of message bytes is at most READ_AHEAD_BYTES (4 MB) or one CHUNK: well
# under a second on a working database.
CALL_DEADLINE = 30.0
# Seconds between two empty queries on a connection that only listens
# (LISTEN): one unanswered in CALL_DEADLINE s ends it, and it is made again.
LISTEN_PING = 10.0
# Seconds a call may wait once the reactor is shutting down (Watchdog.hurry):
# a thread waiting on a frozen database does not hold the shutdown for
# CALL_DEADLINE.
SHUTDOWN_GRACE = 1.0
# How often (seconds) the watchdog looks at the calls in progress: a call
# is cut between its deadline and TICK later.
TICK = 0.5


class NoAnswer(Exception):
    """The database did not answer a call within its deadline; its connection was cut."""


def connection_options(dsn: str, application_name: str = "mailhub") -> dict[str, Any]:
    """
    The libpq parameters (C{dict}, keyword arguments of C{psycopg.connect})
    for a connection to C{dsn} (a libpq string or URL): L{CONNECT_TIMEOUT},
    TCP keepalives, C{tcp_user_timeout} (milliseconds) and an
    C{application_name} (seen in C{pg_stat_activity}). A parameter the DSN
    sets itself is left as the DSN says (a user may tune them there).
    """
    wanted: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE,
        "keepalives_interval": KEEPALIVES_INTERVAL,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": int(USER_TIMEOUT * 1000),
        "application_name": application_name,
    }
    try:
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - a DSN libpq refuses: psycopg.connect says why
        given = {}
    return {name: value for name, value in wanted.items() if name not in given}


class Watchdog:
    """
    Deadlines for calls on psycopg connections, from any thread: L{call}
    runs C{function(conn, *args)}; one daemon thread (started at the first
    call) cuts the socket of a call still running past its deadline.
    """

    def __init__(self, tick: float = TICK):
        self.tick = tick
        self._lock = threading.Lock()
        # id of the call -> [deadline (time.monotonic()), connection, cut?]
        self._calls: dict[int, list] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._hurry = False
        self._reactors: set[int] = set()  # (ids of those that call hurry at their shutdown)

    def call(self, conn: Any, seconds: float, function: Callable[..., Any], *args: Any) -> Any:
        """
        C{function(conn, *args)}, its result or its exception; past
        C{seconds} the connection is cut and L{NoAnswer} raised instead
        (C{conn} is then closed: the caller opens another).

        @raise NoAnswer: the database did not answer in C{seconds}.
        """
        with self._lock:
            self._next += 1
            token = self._next
            if self._hurry:
                seconds = min(seconds, SHUTDOWN_GRACE)
            entry = self._calls[token] = [time.monotonic() + seconds, conn, False]
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="mailhub-postgresql-watchdog", daemon=True)
                self._thread.start()
        try:
            result = function(conn, *args)
        except BaseException:
            with self._lock:
                del self._calls[token]
            if entry[2]:
                _close(conn)
                raise NoAnswer(f"no answer from the database in {seconds:g} s") from None
            raise
        with self._lock:
            del self._calls[token]
        if entry[2]:
            # (answered just as it was cut: the answer stands, the connection goes)
            _close(conn)
        return result

    def hurry(self) -> None:
        """
        (At the reactor's shutdown.) Every call, running or to come, may
        wait at most L{SHUTDOWN_GRACE} more seconds: the reactor's thread
        pools join their threads, and one waiting on a frozen database
        would hold the shutdown for up to its whole deadline.
        """
        with self._lock:
            self._hurry = True
            at_most = time.monotonic() + SHUTDOWN_GRACE
            for entry in self._calls.values():
                entry[0] = min(entry[0], at_most)

    def hurry_at_shutdown(self, reactor: Any) -> None:
        """(In the reactor thread.) Call L{hurry} when C{reactor} begins to shut down (once per reactor)."""
        if id(reactor) in self._reactors:
            return
        self._reactors.add(id(reactor))
        reactor.addSystemEventTrigger("before", "shutdown", self.hurry)

    def after_fork(self) -> None:
        """
        (In a child process just forked: twistd's daemonizing fork comes
        after the store was made.) The watchdog thread did not come with
        the fork: the next call starts one for this process.
        """
        self._lock = threading.Lock()
        self._calls = {}
        self._thread = None
        self._hurry = False

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                for entry in self._calls.values():
                    if not entry[2] and entry[0] <= now:
                        entry[2] = True
                        _cut(entry[1])


def _cut(conn: Any) -> None:
    """Shut the connection's socket down (both ways): the thread blocked on it sees the connection end."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # noqa: BLE001 - closed meanwhile
        return
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - already broken
        pass


# The hub's one watchdog (every store and cluster part shares it).
watchdog = Watchdog()
os.register_at_fork(after_in_child=watchdog.after_fork)
