# -*- test-case-name: tests.test_pgqueue -*-
"""
The outbound queue in PostgreSQL (C{--queue postgresql}, the default when
the store is PostgreSQL): every hub on the database runs the queue, and
each queued message is sent by exactly one of them at a time.

Rules (everything that changes the C{queue_message} table lives here;
the table is described in L{twisted_mailhub.cluster.schema}):

 - A message is one row: its bytes, its envelope and per-recipient state
   (the same JSON as the disk queue's C{<id>.env}), C{next_attempt}. The
   C{250} that names its queue id is sent after the C{INSERT} committed.
 - A hub takes due messages with one C{UPDATE ... WHERE id IN (SELECT ...
   FOR UPDATE SKIP LOCKED)} that writes a lease (C{leased_by},
   C{lease_until}): hubs claiming at the same moment skip each other's
   rows, and a row under an unexpired lease is not taken, so no two hubs
   send one message at once. The sending hub renews its leases every
   third of L{LEASE} while an attempt lasts. A hub that dies mid-attempt
   leaves its lease to expire; then another hub takes the message, as the
   disk queue's own hub would after a restart.
 - After an attempt the envelope is written back, under the lease, and
   the lease is let go, unless every recipient is final: then the row
   stays leased until the bounce is stored and the row deleted, so no
   other hub bounces it a second time.
 - Retries, lifetime, delay warnings and bounces are the disk queue's
   (L{twisted_mailhub.queue.relay.Relay}); L{PostgresRelay} only changes
   where the messages come from: each hub polls for due messages every
   L{POLL} seconds and right after it queues one.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

import attr
from twisted.internet import defer, task
from twisted.logger import Logger

from twisted_mailhub.cluster import schema
from twisted_mailhub.cluster.database import Database
from twisted_mailhub.queue.relay import Relay
from twisted_mailhub.queue.storage import QueuedMessage

log = Logger(namespace="mailhub.relay")

# Seconds a hub holds a message it is sending; longer than any attempt
# (connect timeout, every MX, a slow peer's DATA).
LEASE = 600.0
# Seconds between two looks for due messages (other hubs' and retries).
POLL = 1.0
# Most messages taken in one claim.
CLAIM_MOST = 50
# Messages a hub holds at once, per outbound connection it may open.
HOLD_PER_CONNECTION = 10


def _envelope(entry: QueuedMessage) -> str:
    return json.dumps(attr.asdict(entry), sort_keys=True)


def _entry(envelope: Any) -> QueuedMessage:
    raw = envelope if isinstance(envelope, (bytes, str)) else json.dumps(envelope)
    return QueuedMessage.from_json(raw.encode("utf-8") if isinstance(raw, str) else raw)


def claim_due(conn: Any, owner: str, lease: float, now: float, most: int) -> list[tuple[str, Any, bytes]]:
    """
    Lease to C{owner} for C{lease} seconds up to C{most} messages due at
    C{now} that no hub holds; their (id, envelope, body). Hubs claiming at
    once skip each other's rows (C{SKIP LOCKED}), so no message is given
    to two of them.
    """
    return conn.execute(
        "UPDATE queue_message SET leased_by = %s, lease_until = now() + make_interval(secs => %s)"
        " WHERE id IN (SELECT id FROM queue_message"
        "   WHERE NOT removed AND next_attempt <= %s AND (lease_until IS NULL OR lease_until < now())"
        "   ORDER BY next_attempt LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING id, envelope, body",
        (owner, lease, now, most),
    ).fetchall()


def renew_leases(conn: Any, owner: str, ids: list[str], lease: float) -> int:
    """
    Extend C{owner}'s lease on the messages C{ids} it is still sending by
    C{lease} seconds from now; how many it still held.
    """
    return conn.execute(
        "UPDATE queue_message SET lease_until = now() + make_interval(secs => %s) WHERE leased_by = %s AND id = ANY(%s)",
        (lease, owner, ids),
    ).rowcount


class PostgresQueueStorage:
    """
    The queue's rows, with the interface of
    L{twisted_mailhub.queue.storage.QueueStorage} (C{add}, C{save},
    C{remove}, C{read_message}) plus L{claim} and L{release} for leases.
    C{read_message} serves the bytes a claim fetched.
    """

    def __init__(self, dsn: str, reactor: Any, owner: str | None = None, lease: float = LEASE):
        self.dsn = dsn
        self.reactor = reactor
        self.db = Database(dsn, reactor, workers=3, what="the queue database")
        schema.ready(self.db)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = lease
        self.directory = f"PostgreSQL ({self.owner})"  # named in log lines
        self._bodies: dict[str, bytes] = {}

    # -- what Relay calls ----------------------------------------------------

    def add(self, entry: QueuedMessage, message: bytes) -> defer.Deferred:
        """Insert a new message; fires with its id once committed."""

        def insert(conn):
            conn.execute(
                "INSERT INTO queue_message (id, envelope, body, created, next_attempt) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (entry.id, _envelope(entry), message, entry.created, entry.next_attempt),
            )
            return entry.id

        return self.db.run(insert)

    def save(self, entry: QueuedMessage) -> defer.Deferred:
        """
        Write back C{entry}'s envelope under our lease, and let the lease
        go unless every recipient is final (see the module docstring). A
        row the administrator removed meanwhile is deleted now.
        """
        keep = entry.finished

        def update(conn):
            row = conn.execute(
                "UPDATE queue_message SET envelope = %s, next_attempt = %s,"
                " leased_by = CASE WHEN %s THEN leased_by END,"
                " lease_until = CASE WHEN %s THEN lease_until END"
                " WHERE id = %s AND leased_by = %s RETURNING removed",
                (_envelope(entry), entry.next_attempt, keep, keep, entry.id, self.owner),
            ).fetchone()
            if row is None:
                log.warn("queue: {qid} was no longer leased by this hub when its outcome was saved", qid=entry.id)
            elif row[0]:
                conn.execute("DELETE FROM queue_message WHERE id = %s", (entry.id,))
                log.info("queue: {qid} removed by the administrator", qid=entry.id)

        return self.db.run(update)

    def remove(self, qid: str) -> None:
        """Delete a message (done with it); a failure is only logged."""
        self._bodies.pop(qid, None)
        d = self.db.run(lambda conn: conn.execute("DELETE FROM queue_message WHERE id = %s AND (leased_by = %s OR leased_by IS NULL)", (qid, self.owner)))
        d.addErrback(lambda f: log.error("queue: {qid} not deleted: {why}", qid=qid, why=f.getErrorMessage()))

    def read_message(self, qid: str) -> bytes:
        try:
            return self._bodies[qid]
        except KeyError:
            raise OSError(f"queue: {qid} is not held by this hub") from None

    def load(self, clean: bool = True) -> list[QueuedMessage]:
        return []

    # -- leases ---------------------------------------------------------------

    def claim(self, now: float, most: int = CLAIM_MOST) -> defer.Deferred:
        """
        Take up to C{most} messages due at C{now} that no hub holds;
        fires with their L{QueuedMessage}s (their bytes kept for
        L{read_message}).
        """

        def taken(rows):
            entries = []
            for qid, envelope, body in rows:
                try:
                    entry = _entry(envelope)
                except (ValueError, TypeError, KeyError) as e:
                    log.error("queue: cannot read the envelope of {qid}: {error}; left in place", qid=qid, error=e)
                    continue
                self._bodies[qid] = bytes(body)
                entries.append(entry)
            return entries

        return self.db.run(claim_due, self.owner, self.lease, now, most).addCallback(taken)

    def forget(self, qid: str) -> None:
        """Drop the bytes of a message this hub is done with for now."""
        self._bodies.pop(qid, None)

    def renew(self, ids: list[str]) -> defer.Deferred:
        """Extend this hub's lease on C{ids} (an attempt still under way)."""
        return self.db.run(renew_leases, self.owner, ids, self.lease)

    def release_all(self) -> defer.Deferred:
        """At shutdown: let go of every unfinished message this hub holds."""
        return self.db.run(
            lambda conn: conn.execute(
                "UPDATE queue_message SET leased_by = NULL, lease_until = NULL"
                " WHERE leased_by = %s AND jsonb_path_exists(envelope, '$.recipients[*] ? (@.state == \"pending\")')",
                (self.owner,),
            )
        )

    def close(self) -> None:
        self.db.close()


class PostgresRelay(Relay):
    """
    L{Relay} on L{PostgresQueueStorage}: C{entries} holds only the messages
    this hub is sending now; the table holds the queue.
    """

    poll_interval = POLL

    def __init__(self, *args: Any, **kwargs: Any):
        Relay.__init__(self, *args, **kwargs)
        self._poll: task.LoopingCall | None = None
        self._wanted = False
        self._claiming = False
        self._db_down = False
        self._renewed = 0.0

    def startService(self):
        from twisted.application import service

        service.Service.startService(self)
        self._poll = task.LoopingCall(self._look)
        self._poll.clock = self.reactor
        self._poll.start(self.poll_interval, now=True)
        log.info("queue: in PostgreSQL, shared with every hub on the database (this hub is {owner})", owner=self.storage.owner)

    def stopService(self):
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        stopped = Relay.stopService(self)

        def release(result):
            d = self.storage.release_all()
            d.addErrback(lambda f: log.warn("queue: leases not let go at stop ({why}); they expire by themselves", why=f.getErrorMessage()))
            d.addBoth(lambda _: self.storage.close())
            return d.addBoth(lambda _: result)

        return defer.maybeDeferred(lambda: stopped).addBoth(release)

    @defer.inlineCallbacks
    def enqueue(self, sender: str, recipients: list[str], message: bytes, ret: str = "", envid: str = "", notify: dict | None = None, delivered=()):
        """
        Queue C{message}; the Deferred fires with the queue id once the row
        is committed. This hub looks for due messages at once, so it
        usually sends what it queued itself. C{ret}, C{envid}, C{notify}:
        the DSN parameters, and C{delivered}, as L{Relay.enqueue} takes them.
        """
        from twisted_mailhub.queue.relay import _bare
        from twisted_mailhub.queue.storage import make_entry

        sender = _bare(sender)
        entry = make_entry(sender, [_bare(r) for r in recipients], len(message), self.now(), ret, envid, notify, delivered)
        yield self.storage.add(entry, message)
        log.info("queue: {qid} queued from <{sender}> to {rcpts} ({size} octets)", qid=entry.id, sender=sender, rcpts=", ".join(f"<{r}>" for r in recipients), size=len(message))
        self._wanted = True
        self._reschedule()
        return entry.id

    def flush(self) -> int:
        self._wanted = True
        self._reschedule()
        return len(self.entries)

    def _set_timer(self) -> None:
        self._rescheduling = False
        if self.running and self._wanted:
            self._wanted = False
            self._look()

    def _look(self) -> None:
        """Claim what is due (one claim at a time) and send it."""
        if not self.running:
            return
        self._renew_if_due()
        if self._claiming:
            self._wanted = True
            return
        most = min(CLAIM_MOST, self.hold_most() - len(self.in_flight))
        if most <= 0:
            return  # busy: the next poll looks again
        self._claiming = True
        self._track(defer.ensureDeferred(self._claim_and_send(most)))

    def _renew_if_due(self) -> None:
        """
        Every third of a lease, extend the leases of the messages still
        being sent, so a long attempt (many MX hosts, a slow peer) never
        lets another hub take the message while it is under way.
        """
        now = self.now()
        if now - self._renewed < self.storage.lease / 3:
            return
        self._renewed = now
        held = sorted(self.in_flight)
        if held:
            d = self.storage.renew(held)
            d.addErrback(lambda f: log.warn("queue: leases not renewed ({why}); trying again later", why=f.getErrorMessage()))

    def queue_summary(self) -> tuple[int, float | None] | None:
        """
        The whole queue, every hub's messages, read from the table now:
        (messages, when the oldest was queued, in seconds since the epoch,
        or L{None} when there is none); L{None} while the database cannot
        be reached (the last look for due messages failed), so a scrape
        never waits for a connection timeout.
        """
        if self._db_down:
            return None
        try:
            count, oldest = self.storage.db.run_here(
                lambda conn: conn.execute("SELECT count(*), min(created) FROM queue_message WHERE NOT removed").fetchone()
            )
        except Exception as e:  # noqa: BLE001 - a metric is left out, never a failed scrape
            log.warn("queue: cannot count the queue for /metrics ({why})", why=str(e) or e.__class__.__name__)
            return None
        return count, oldest

    def hold_most(self) -> int:
        """
        Most messages this hub holds at once: a few per outbound connection
        it may open (C{--relay-connections}), so that the other hubs share
        a backlog rather than one hub taking it all.
        """
        return HOLD_PER_CONNECTION * self.connections.limit

    async def _claim_and_send(self, most: int) -> None:
        try:
            try:
                due = await self.storage.claim(self.now(), most)
            except Exception as e:  # noqa: BLE001 - the database is down: try at the next poll
                if not self._db_down:
                    log.warn("queue: cannot look for due messages ({why}); trying every {poll:g} s", why=str(e) or e.__class__.__name__, poll=self.poll_interval)
                    self._db_down = True
                return
            if self._db_down:
                log.info("queue: the database answers again")
                self._db_down = False
        finally:
            self._claiming = False
        if not due:
            return
        if len(due) >= most:
            self._wanted = True  # more may be waiting
            self._reschedule()
        for entry in due:
            self.entries[entry.id] = entry
            self.in_flight.add(entry.id)
        ready = [e for e in due if not e.finished]
        for entry in due:
            if entry.finished:
                # A hub stopped after the last outcome was saved: finish it.
                self._track(defer.ensureDeferred(self._finish_and_forget(entry)))
        await self._attempt(ready)

    async def _finish_and_forget(self, entry: QueuedMessage) -> None:
        try:
            await self._finish(entry)
        finally:
            self._forget(entry.id)

    async def _settle(self, entry: QueuedMessage, outcomes: dict) -> None:
        try:
            await Relay._settle(self, entry, outcomes)
        finally:
            self._forget(entry.id)

    def _forget(self, qid: str) -> None:
        self.entries.pop(qid, None)
        self.in_flight.discard(qid)
        self.storage.forget(qid)

    def _drop(self, qid: str) -> None:
        self.storage.remove(qid)
        self._forget(qid)
        self._doomed.discard(qid)

    def remove(self, qid: str) -> bool:
        """Removal goes through the table (L{remove_queued}); see admin."""
        return False


# -- what mailhub-admin queue does on the table ------------------------------------


def list_queued(conn: Any) -> list[tuple[QueuedMessage, str | None]]:
    """Every queued message (oldest first) and the hub sending it now, if any."""
    rows = conn.execute(
        "SELECT envelope, CASE WHEN lease_until > now() THEN leased_by END FROM queue_message"
        " WHERE NOT removed ORDER BY created, id"
    ).fetchall()
    return [(_entry(envelope), holder) for envelope, holder in rows]


def flush_queued(conn: Any) -> int:
    """Make every queued message due now; how many there are."""
    return conn.execute("UPDATE queue_message SET next_attempt = 0 WHERE NOT removed").rowcount


def remove_queued(conn: Any, qid: str) -> str:
    """
    Delete a queued message without a bounce: at once when no hub is
    sending it, else it is marked and deleted when that attempt ends.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT lease_until > now() FROM queue_message WHERE id = %s AND NOT removed FOR UPDATE", (qid,)
        ).fetchone()
        if row is None:
            return f"no message {qid} in the queue"
        if row[0]:
            conn.execute("UPDATE queue_message SET removed = true WHERE id = %s", (qid,))
            return f"removed {qid} (a hub is sending it now; it goes when that attempt ends)"
        conn.execute("DELETE FROM queue_message WHERE id = %s", (qid,))
    return f"removed {qid}"


def main(dsn: str, command: str, qid: str | None = None, out: Any = None) -> int:
    """
    C{mailhub-admin queue --queue postgresql:DSN list|flush|remove ID}.
    """
    import sys

    from twisted_mailhub.cluster.database import connect, reason
    from twisted_mailhub.queue.admin import format_entry
    from twisted_mailhub.store.interfaces import StoreError

    out = out or sys.stdout
    try:
        with connect(dsn, "the queue database") as conn:
            schema.check(conn)
            if command == "list":
                queued = list_queued(conn)
                if not queued:
                    out.write("queue is empty\n")
                    return 0
                now = time.time()
                for entry, holder in queued:
                    out.write(format_entry(entry, now, holder))
                out.write(f"{len(queued)} message(s)\n")
                return 0
            if command == "flush":
                out.write(f"flushing {flush_queued(conn)} message(s): the hubs try them within {POLL:g} s\n")
                return 0
            answer = remove_queued(conn, qid)
            out.write(answer + "\n")
            return 1 if answer.startswith("no message") else 0
    except (StoreError, schema.SchemaError) as e:
        print(f"mailhub-queue: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a psycopg error on the way
        from twisted_mailhub.cluster.database import driver

        if isinstance(e, driver().Error):
            print(f"mailhub-queue: the queue database: {reason(e)}", file=sys.stderr)
            return 1
        raise
