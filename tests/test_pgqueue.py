"""
The outbound queue in PostgreSQL (C{--queue postgresql}, the default with
C{--store postgresql:DSN}): real hubs on one real database relay to a
loopback SMTP server (aiosmtpd, through C{--mx-override}); what is checked
is what that server received, the table, and C{mailhub-admin queue}.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from tests.hubprocess import ROOT
from tests.test_e2e_relay import free_port

USERS = ("alice:secret",)


class Sink:
    """
    An SMTP server that answers C{451} to every message while C{refusing},
    and to the first attempt of each message when C{refuse_first}; it
    records every message it accepted with the client's EHLO name.
    """

    def __init__(self, refuse_first: bool = False, pause: float = 0.0):
        self.refuse_first = refuse_first
        self.pause = pause
        self.refusing = False
        self.seen: set[bytes] = set()
        self.accepted: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        if self.pause:
            import asyncio

            await asyncio.sleep(self.pause)
        content = envelope.original_content
        subject = next((line for line in content.split(b"\r\n") if line.startswith(b"Subject: ")), b"")
        with self.lock:
            if self.refusing or (self.refuse_first and subject not in self.seen):
                self.seen.add(subject)
                return "451 4.3.0 try again later"
            self.accepted.append((session.host_name, subject))
        return "250 2.0.0 thanks"


@pytest.fixture
def sink():
    from aiosmtpd.controller import Controller

    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


def submit(hub, subject: str) -> None:
    message = f"From: alice@localhost\r\nTo: carol@far.test\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as client:
        client.login("alice", "secret")
        client.sendmail("alice@localhost", ["carol@far.test"], message)


def queued_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM queue_message").fetchone()[0]


def until(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def queue_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.queue", *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )


def start_pair(start_hub, pg_dsn, port, *args):
    common = ("--store", f"postgresql:{pg_dsn}", "--mx-override", f"far.test=127.0.0.1:{port}", *args)
    a = start_hub(*common, "--hostname", "hub-a.test", users=USERS)
    b = start_hub(*common, "--hostname", "hub-b.test", users=USERS)
    return a, b


def test_two_hubs_running_the_queue_deliver_each_message_exactly_once(start_hub, pg_dsn, sink):
    port, peer = sink
    peer.refuse_first = True  # every message goes back to the table once
    peer.pause = 0.1  # a slow peer: while one hub sends, the other claims
    # one connection each: a hub holds at most 10 messages at once
    a, b = start_pair(start_hub, pg_dsn, port, "--retry-schedule", "1s", "--relay-connections", "1")
    assert "queue: in PostgreSQL" in a.log
    subjects = [f"note {n}" for n in range(20)]
    for n, subject in enumerate(subjects):
        submit(a if n % 2 else b, subject)
    assert until(lambda: len(peer.accepted) >= len(subjects) and queued_rows(pg_dsn) == 0)
    got = sorted(s.decode() for _, s in peer.accepted)
    assert got == sorted(f"Subject: {s}" for s in subjects)  # each once, none twice
    # both hubs took their share of the retries
    assert {host for host, _ in peer.accepted} == {"hub-a.test", "hub-b.test"}


def test_message_queued_on_a_stopped_hub_is_delivered_by_the_other(start_hub, pg_dsn, sink):
    port, peer = sink
    peer.refusing = True
    common = ("--store", f"postgresql:{pg_dsn}", "--mx-override", f"far.test=127.0.0.1:{port}", "--retry-schedule", "1s")
    a = start_hub(*common, "--hostname", "hub-a.test", users=USERS)
    submit(a, "left behind")
    a.wait_for_log(r"relay \S+ <alice@localhost> to far.test via .*451")
    a.stop()
    assert queued_rows(pg_dsn) == 1
    peer.refusing = False
    start_hub(*common, "--hostname", "hub-b.test", users=USERS)
    assert until(lambda: peer.accepted == [("hub-b.test", b"Subject: left behind")])
    assert until(lambda: queued_rows(pg_dsn) == 0)


def test_queue_command_lists_flushes_and_removes_messages_in_the_table(start_hub, pg_dsn, sink):
    port, peer = sink
    peer.refusing = True
    a, _b = start_pair(start_hub, pg_dsn, port, "--retry-schedule", "1h")
    submit(a, "stuck")
    a.wait_for_log(r"relay \S+ <alice@localhost> to far.test via .*451")
    listed = queue_command("--queue", f"postgresql:{pg_dsn}", "list")
    assert listed.returncode == 0, listed.stderr
    assert "<carol@far.test> pending: 451 4.3.0 try again later" in listed.stdout
    assert listed.stdout.endswith("1 message(s)\n")
    qid = listed.stdout.split()[0]
    flushed = queue_command("--queue", f"postgresql:{pg_dsn}", "flush")
    assert flushed.stdout.startswith("flushing 1 message(s)")
    removed = queue_command("--queue", f"postgresql:{pg_dsn}", "remove", qid)
    assert removed.returncode == 0
    assert removed.stdout.startswith(f"removed {qid}")
    assert until(lambda: queued_rows(pg_dsn) == 0)
    assert queue_command("--queue", f"postgresql:{pg_dsn}", "list").stdout == "queue is empty\n"
    missing = queue_command("--queue", f"postgresql:{pg_dsn}", "remove", qid)
    assert missing.returncode == 1 and missing.stdout == f"no message {qid} in the queue\n"
    assert peer.accepted == []


def test_hubs_claiming_at_once_never_get_the_same_message(pg_dsn):
    from twisted_mailhub.cluster import schema
    from twisted_mailhub.queue.pgqueue import _envelope, claim_due
    from twisted_mailhub.queue.storage import make_entry

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn)
        for n in range(300):
            entry = make_entry("a@localhost", ["b@far.test"], 1, now=1000.0 + n)
            entry.id = f"q{n:04d}"
            conn.execute(
                "INSERT INTO queue_message (id, envelope, body, created, next_attempt) VALUES (%s, %s, %s, %s, %s)",
                (entry.id, _envelope(entry), b"x", entry.created, entry.next_attempt),
            )
    taken: dict[str, list[str]] = {"one": [], "two": [], "three": []}

    def hub(owner):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            while True:
                rows = claim_due(conn, owner, 600, 5000.0, 7)
                if not rows:
                    return
                taken[owner].extend(qid for qid, _, _ in rows)

    threads = [threading.Thread(target=hub, args=(owner,)) for owner in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [qid for ids in taken.values() for qid in ids]
    assert sorted(everything) == [f"q{n:04d}" for n in range(300)]  # each once
    with psycopg.connect(pg_dsn) as conn:
        # and a leased message is not due for anyone else
        assert claim_due(conn, "four", 600, 5000.0, 10) == []
        holders = dict(conn.execute("SELECT leased_by, count(*) FROM queue_message GROUP BY leased_by").fetchall())
    assert holders == {owner: len(ids) for owner, ids in taken.items() if ids}


def test_queueing_while_the_database_is_down_gets_451_then_works(start_hub, postgresql, sink):
    port, peer = sink
    dsn = postgresql.create_database()
    a = start_hub("--queue", f"postgresql:{dsn}", "--mx-override", f"far.test=127.0.0.1:{port}", users=USERS)
    postgresql.stop()
    try:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            submit(a, "while down")
        assert refused.value.smtp_code == 451
    finally:
        postgresql.restart()
    submit(a, "after the restart")
    assert until(lambda: [s for _, s in peer.accepted] == [b"Subject: after the restart"])
    assert a.log.count("cannot look for due messages") <= 1  # said once, not every second
    assert "message not stored: cannot reach the queue database" in a.log
    assert "Traceback" not in a.log


def test_a_renewed_lease_keeps_a_message_from_other_hubs(pg_dsn):
    from twisted_mailhub.cluster import schema
    from twisted_mailhub.queue.pgqueue import _envelope, claim_due, renew_leases
    from twisted_mailhub.queue.storage import make_entry

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn)
        for qid in ("long", "stale"):
            entry = make_entry("a@localhost", ["b@far.test"], 1, now=1000.0)
            entry.id = qid
            conn.execute(
                "INSERT INTO queue_message (id, envelope, body, created, next_attempt) VALUES (%s, %s, %s, %s, %s)",
                (qid, _envelope(entry), b"x", 1000.0, 1000.0),
            )
        # hub one takes both with a lease that has run out already ...
        assert sorted(r[0] for r in claim_due(conn, "one", -1, 2000.0, 10)) == ["long", "stale"]
        # ... but is still sending "long" and renews it
        assert renew_leases(conn, "one", ["long"], 600) == 1
        assert [r[0] for r in claim_due(conn, "two", 600, 2000.0, 10)] == ["stale"]
        # a lease another hub holds now is not renewed by the first
        assert renew_leases(conn, "one", ["stale"], 600) == 0


def test_disk_queue_stays_with_a_postgresql_store_when_asked(start_hub, pg_dsn):
    a = start_hub("--store", f"postgresql:{pg_dsn}", "--queue", "disk", users=USERS)
    assert "queue: in PostgreSQL" not in a.log
    assert os.path.isdir(os.path.join(a.data_dir, "queue"))
