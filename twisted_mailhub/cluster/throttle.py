# -*- test-case-name: tests.test_cluster -*-
"""
The login throttle's counters shared by every hub on one database
(L{twisted_mailhub.login}): a password guesser who spreads his tries over
the hubs behind a load balancer is slowed as if he used one.

The counters are rows of C{login_failure} (key, failures in a row, time of
the last one), changed with one C{INSERT ... ON CONFLICT} per failure, in
the reactor thread (a fraction of a millisecond on loopback; a failed login
is answered seconds later anyway). While the database cannot be reached,
this hub counts on its own, as a hub without PostgreSQL does.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from twisted_mailhub.cluster import schema, shared_throttle_dsn
from twisted_mailhub.cluster.database import Database
from twisted_mailhub.login import LoginThrottle
from twisted_mailhub.store.interfaces import StoreError

log = Logger(namespace="mailhub.login")

_COUNT = (
    "INSERT INTO login_failure AS f (key, failures, last_at) VALUES (%s, 1, %s)"
    " ON CONFLICT (key) DO UPDATE SET"
    "  failures = CASE WHEN f.last_at < %s THEN 1 ELSE f.failures + 1 END,"
    "  last_at = EXCLUDED.last_at"
    " RETURNING failures"
)


def _key(kind: str, value: str) -> str:
    return f"{kind} {value}"


class SharedLoginThrottle(LoginThrottle):
    """
    A L{LoginThrottle} whose counters are rows in PostgreSQL (see the
    module docstring); the same delays, for every hub on the database.
    """

    def __init__(self, dsn: str, clock: Any, **kwargs: Any):
        LoginThrottle.__init__(self, clock, **kwargs)
        self.db = Database(dsn, clock, what="the throttle database")
        schema.ready(self.db)
        self._down = False
        self._failures_seen = 0

    def failed(self, address: str, username: str) -> float:
        now = self.clock.seconds()
        keys = (_key("ip", address), _key("user", username.lower()))

        def count(conn):
            with conn.transaction():
                worst = 0
                for key in keys:
                    worst = max(worst, conn.execute(_COUNT, (key, now, now - self.forget_after)).fetchone()[0])
                return worst

        try:
            worst = self.db.run_here(count)
        except StoreError as e:
            if not self._down:
                log.warn("login throttle: counting on this hub alone ({why})", why=str(e))
                self._down = True
            return LoginThrottle.failed(self, address, username)
        self._down = False
        self._failures_seen += 1
        if self._failures_seen % 1000 == 0:
            # Forget the old rows now and then (bounded table under a spray).
            self._forget_old(now)
        return min(self.cap, self.step * worst)

    def _forget_old(self, now: float) -> None:
        try:
            self.db.run_here(lambda conn: conn.execute("DELETE FROM login_failure WHERE last_at < %s", (now - self.forget_after,)))
        except StoreError:
            pass

    def succeeded(self, address: str, username: str) -> None:
        LoginThrottle.succeeded(self, address, username)
        keys = [_key("ip", address), _key("user", username.lower())]
        try:
            self.db.run_here(lambda conn: conn.execute("DELETE FROM login_failure WHERE key = ANY(%s)", (keys,)))
        except StoreError:
            pass


def shared_throttle(options: Any, reactor: Any) -> SharedLoginThrottle | None:
    """
    The shared throttle when the store or the accounts are in PostgreSQL
    (C{--store postgresql:DSN}, else C{--auth postgresql:DSN}:
    L{twisted_mailhub.cluster.shared_throttle_dsn}), else L{None} (each
    hub counts on its own).
    """
    dsn = shared_throttle_dsn(options)
    return None if dsn is None else SharedLoginThrottle(dsn, reactor)
