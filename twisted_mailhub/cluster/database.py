# -*- test-case-name: tests.test_cluster -*-
"""
psycopg connections for the cluster parts (accounts, queue, FTP files,
throttle), in the same model as the mail store: work that may wait goes to
a small thread pool, each thread with its own connection; a short read the
reactor cannot do without (an account lookup) may run in the calling
thread on its own connection.

A connection lost between calls (a restarted server) is opened again once;
a database that cannot be reached gives L{StoreUnavailable}, which every
protocol answers as a temporary failure (SMTP 451 4.3.0, IMAP NO
[UNAVAILABLE], POP3 -ERR [SYS/TEMP]).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from twisted_mailhub.store import pgtimeouts
from twisted_mailhub.store.interfaces import StoreUnavailable
from twisted_mailhub.store.pgtimeouts import NoAnswer, connection_options, watchdog
from twisted_mailhub.store.postgresql import libpq_dsn


def driver() -> Any:
    """
    The psycopg module; L{SystemExit} with the install command when the
    driver is missing (it is an optional dependency).
    """
    try:
        import psycopg
    except ImportError:
        raise SystemExit(
            "mailhub: PostgreSQL needs its driver: python3 -m pip install 'twisted-mailhub[postgresql]' (psycopg 3)"
        ) from None
    return psycopg


def reason(e: BaseException) -> str:
    """The first line of a driver error, for a log line or a reply."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def is_connection_error(e: BaseException) -> bool:
    """Was C{e} a lost or refused connection (worth one more try)?"""
    psycopg = driver()
    return isinstance(e, (psycopg.OperationalError, NoAnswer)) or (
        isinstance(e, psycopg.Error) and str(getattr(e, "sqlstate", "") or "").startswith(("08", "57P"))
    )


def connect(dsn: str, what: str = "the database") -> Any:
    """
    An autocommit connection with C{synchronous_commit} on (what is
    acknowledged is on the server's disk), TCP keepalives and
    C{tcp_user_timeout} (L{pgtimeouts.connection_options});
    L{StoreUnavailable} when it cannot be opened.
    """
    psycopg = driver()
    try:
        conn = psycopg.connect(libpq_dsn(dsn), autocommit=True, **connection_options(libpq_dsn(dsn), _application_name(what)))
    except psycopg.Error as e:
        raise StoreUnavailable(f"cannot reach {what}: {reason(e)}") from None
    conn.execute("SET synchronous_commit = on")
    return conn


def _application_name(what: str) -> str:
    """C{"mailhub queue"} for "the queue database": a connection's name in C{pg_stat_activity}."""
    return "mailhub " + what.removeprefix("the ").removesuffix(" database")


class Database:
    """
    The connections of one cluster part to the database at C{dsn}.

    L{run} calls C{function(conn, *args)} in a worker thread and returns a
    Deferred of its result; L{run_here} calls it in the calling thread on
    that thread's own connection. C{conn} is in autocommit mode: a function
    that needs a transaction opens one (C{with conn.transaction():}).
    Functions must be safe to call twice: after a lost connection the call
    is made once more on a new one.
    """

    def __init__(self, dsn: str, reactor: Any = None, workers: int = 2, what: str = "the database"):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.dsn = dsn
        self.reactor = reactor
        self.what = what
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._workers = workers
        self._pool: ThreadPool | None = None

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            if conn is not None:
                self._let_go(conn)
            conn = connect(self.dsn, self.what)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _forget(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            self._let_go(conn)
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass

    def _let_go(self, conn: Any) -> None:
        """No longer hold C{conn} for L{close} (it is closed or being closed): one outage, one connection kept, not one more each time."""
        with self._all_lock:
            try:
                self._all.remove(conn)
            except ValueError:
                pass

    def run_here(self, function: Callable[..., Any], *args: Any, deadline: Any = "call") -> Any:
        """
        C{function(conn, *args)} in this thread; L{StoreUnavailable} when
        the database cannot be reached twice in a row. A call it does not
        answer in C{deadline} seconds (L{pgtimeouts.CALL_DEADLINE} unless
        given; L{None}: no limit, for a migration) counts as a lost
        connection (L{pgtimeouts.Watchdog}).
        """
        psycopg = driver()
        if deadline == "call":
            deadline = pgtimeouts.CALL_DEADLINE
        for attempt in (1, 2):
            conn = self._connection()
            try:
                if deadline is None:
                    return function(conn, *args)
                return watchdog.call(conn, deadline, function, *args)
            except (psycopg.Error, NoAnswer) as e:
                if not is_connection_error(e):
                    raise
                self._forget()
                if attempt == 2:
                    raise StoreUnavailable(f"lost {self.what}: {reason(e)}") from None
        raise AssertionError("unreachable")

    def run(self, function: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        C{function(conn, *args)} in a worker thread; a Deferred of its
        result (failing with L{StoreUnavailable} as L{run_here} does).
        """
        if self._pool is None:
            self._pool = ThreadPool(1, self._workers, name=f"mailhub-pg-{self.what}")
            self._pool.start()
            self.reactor.addSystemEventTrigger("after", "shutdown", self.close)
            # (a thread waiting on a frozen database does not hold the shutdown)
            watchdog.hurry_at_shutdown(self.reactor)
        return threads.deferToThreadPool(self.reactor, self._pool, self.run_here, function, *args)

    def close(self) -> None:
        """Stop the worker threads and close every connection."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._local = threading.local()


def listen_forever(dsn: str, channel: str, on_notice: Callable[[Any], None], on_connect: Callable[[Any], None], stopping: threading.Event, log: Any) -> None:
    """
    The body of a thread that LISTENs on C{channel}: calls
    C{on_connect(conn)} after each (re)connection (to catch up on what was
    missed), then C{on_notice(conn)} for every burst of notifications, in
    this thread, until C{stopping} is set. A lost connection is opened
    again after a second, and so is one that does not answer a
    C{SELECT 1} sent every L{pgtimeouts.LISTEN_PING} s within
    L{pgtimeouts.CALL_DEADLINE} s (a frozen server: its kernel answers
    TCP keepalives, so nothing else finds it).
    """
    import time

    psycopg = driver()
    down = False
    while not stopping.is_set():
        conn = None
        try:
            conn = psycopg.connect(libpq_dsn(dsn), autocommit=True, **connection_options(libpq_dsn(dsn), "mailhub listen"))
            conn.execute(f"LISTEN {channel}")
            if down:
                log.info("{channel}: listening again", channel=channel)
                down = False
            on_connect(conn)
            pinged = time.monotonic()
            while not stopping.is_set():
                if any(True for _ in conn.notifies(timeout=0.5, stop_after=1)):
                    # Drain the burst: one reload for many notices.
                    for _ in conn.notifies(timeout=0.01):
                        pass
                    on_notice(conn)
                if time.monotonic() - pinged >= pgtimeouts.LISTEN_PING:
                    watchdog.call(conn, pgtimeouts.CALL_DEADLINE, lambda c: c.execute("SELECT 1"))
                    pinged = time.monotonic()
        except (psycopg.Error, NoAnswer) as e:
            if not down:
                log.warn("{channel}: lost the database ({why}); trying again every second", channel=channel, why=reason(e))
                down = True
            stopping.wait(1.0)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
