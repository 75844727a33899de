"""
The hub's PostgreSQL connections on a real server: what each is opened
with (TCP keepalives, C{tcp_user_timeout}) and what the cluster parts
(L{twisted_mailhub.cluster.database.Database}) hold after outages.
"""

from __future__ import annotations

import threading

import psycopg

from twisted_mailhub.cluster.database import Database


def drop_every_connection(dsn: str) -> int:
    """pg_terminate_backend of every other session on C{dsn}'s database (an outage as a restart gives it); how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def sessions(dsn: str) -> int:
    """The other sessions open on C{dsn}'s database now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_a_cluster_part_holds_one_connection_per_thread_after_several_outages(pg_dsn):
    database = Database(pg_dsn, workers=2, what="the test database")
    turns = [threading.Event() for _ in range(6)]
    answered: list[int] = []

    def one() -> int:
        return database.run_here(lambda conn: conn.execute("SELECT 1").fetchone()[0])

    def worker() -> None:
        # (a long-lived worker thread with its own connection, as Database.run's are)
        for turn in turns:
            turn.wait(30)
            answered.append(one())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for turn in turns[:-1]:
            assert one() == 1
            turn.set()
            while len(answered) < turns.index(turn) + 1:
                thread.join(0.01)
            assert drop_every_connection(pg_dsn) == 2  # (an outage: a restart, a failover)
        assert one() == 1  # (each time on a new connection)
        turns[-1].set()
        thread.join(30)
        assert answered == [1] * 6
        # Before: every connection ever opened was kept, the closed ones
        # too: 12 here, 10 of them lost in the 5 outages.
        held = list(database._all)
        assert len(held) == 2, held
        assert not any(conn.closed for conn in held)
    finally:
        for turn in turns:
            turn.set()
        thread.join(30)
        database.close()
    assert database._all == []
    assert sessions(pg_dsn) == 0
