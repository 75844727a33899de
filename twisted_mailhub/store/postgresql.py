# -*- test-case-name: tests.test_store -*-
"""
The mail store in PostgreSQL (C{--store postgresql:DSN}): several hubs on
one database serve the same accounts. The tables are described in
L{twisted_mailhub.store.pgschema}.

Rules:

 - A write is acknowledged only after its transaction has committed with
   C{synchronous_commit = on}: a delivery's C{250}, APPEND's C{OK} and
   its UID come after C{COMMIT}.
 - UIDs and modseqs are taken inside the writing transaction with one
   C{UPDATE mailbox ... RETURNING}; the row lock orders writers of one
   mailbox, so its modseqs commit in ascending order on every hub.
 - Every change writes a C{mailbox_change} row and a C{NOTIFY}; each hub
   reads the journal after a notification (or, while its C{LISTEN}
   connection is down, at every C{refresh}) and tells its own listeners
   once per modseq.
 - A database that cannot be reached gives L{StoreUnavailable} (a
   L{StoreError}): the protocols answer with a temporary error, never a
   success.
 - Each folder object keeps a cache of its messages (UID, key, flags,
   size, date; the C{message} id and modseq), loaded by its first
   C{messages()} and kept current by the journal, so C{SELECT} and
   C{FETCH 1:* (FLAGS)} read no rows once it is warm; C{messages()} costs
   one look at the mailbox row's C{highest_modseq}. A hub keeps the caches
   of the last L{KEEP_FOLDERS} folders read.
 - Message bytes go through L{IMessageBlobs} (C{bytea} today). A FETCH
   walking up a folder reads the next small messages in the same round
   trip; L{PostgresFolder.open} reads a big one in L{CHUNK} slices.
 - A group commit is one round trip: libpq's pipeline mode sends the
   bytes, one statement per mailbox and a Sync together, and the
   statements before a Sync commit as one transaction.

How psycopg meets the reactor: L{IFolder}'s reads and flag changes are
synchronous calls, so they run on one connection in the reactor thread
(a few hundred microseconds on loopback). The protocols' busiest ones do
not: IMAP STORE, EXPUNGE, CLOSE and MOVE's expunge, SELECT, EXAMINE and
STATUS, a POP3 login and QUIT, and the web's and the API's flag changes,
deletions, folder opening and folder counts run their statements on the
L{MetaConnection}, one worker thread with its own connection, in the
order asked (L{PostgresFolder.set_flags_later}, L{expunge_later},
L{PostgresAccount.select_later}, L{counts_later},
L{PostgresStore.lock_maildrop_later}); the reactor applies the outcome
to the cache and answers after COMMIT. Message bytes are not read
there by the protocols: a search (IMAP SEARCH, SORT, THREAD, a live
search's new messages, the web's and the API's), a whole big message for
FETCH BODYSTRUCTURE or the web, and the bodies of IMAP FETCH (and
NOTIFY's), POP3 RETR and TOP and CATENATE's URLs
(L{twisted_mailhub.offload.DetachedBodies}) read their bytes in the hub's
parsing threads through a L{BlobReader}, on L{ReadConnections} of their
own. Deliveries, APPEND and COPY,
which wait for a disk flush, go to the group commit (L{GroupCommitter}):
while a batch commits, new writes queue and the next batch takes all of
them in one transaction (as L{twisted_mailhub.store.durable} does for
Maildir). Its connections run in libpq's non-blocking pipeline mode,
driven by the reactor like any socket, with prepared statements: no
thread, so no lock, no hand-over between threads and no contention for
the GIL with the reactor (bench/cluster.py, 32 SMTP clients: the hub's
CPU per message fell from ~220-250 to ~160-210 µs against the worker
threads used before, PostgreSQL's from ~50-60 to ~40-55). Only making a
connection blocks, and it happens in a thread. The C{LISTEN} connection
is read by the reactor too (L{ChangeListener}). The asyncio
reactor would let psycopg's async connections run in the reactor thread,
but it changes the reactor under every other listener.
"""

from __future__ import annotations

import collections
import io
import itertools
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from array import array
from typing import Any, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_mailhub.store import pgcache, pgschema, pgtimeouts
from twisted_mailhub.store.blobs import ByteaBlobs, IMessageBlobs
from twisted_mailhub.store.pgcache import FolderCache, flag_set
from twisted_mailhub.store.pgtimeouts import NoAnswer, connection_options, watchdog
from twisted_mailhub.store.base import (
    DELIMITER,
    Listeners,
    apply_flags,
    downgraded_size_text,
    normalize_folder_name,
    renamed_subscriptions,
    split_flags,
)
from twisted_mailhub.store.interfaces import (
    INBOX,
    SEEN,
    FolderChange,
    FolderExists,
    IMailAccount,
    IMailStore,
    IModSeqFolder,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
    StoreUnavailable,
)

log = Logger()
# psycopg logs "error ignored terminating <psycopg.Pipeline ...>" (an
# object's repr, on stderr) when a group commit's connection is lost; the
# failed writes are already told in one line each (store/outage.py).
logging.getLogger("psycopg").addFilter(lambda record: not str(record.msg).startswith("error ignored terminating"))

# Most writes one group-commit transaction takes.
BATCH_MOST = 256
# Connections for writes (the group commit's). The second takes a batch
# only when GATHER messages wait or the first batch is slow: more writers
# make smaller batches and cost more CPU per message (bench/cluster.py,
# 32 clients: 1 writer 13 messages per commit, 2 writers 7-8, 4 writers 5;
# 2 writers with GATHER 13, and the best rate of the three on 2 busy cores).
WRITERS = 2
# While a batch commits, the next starts at once only when this many
# messages wait, or when the first has taken SLOW_BATCH seconds.
GATHER = 32
SLOW_BATCH = 0.02
# Slice of a message read at a time by open().
CHUNK = 256 * 1024
# A FETCH walking up a folder reads the next messages with the one it asks
# for: at most this many, this many octets in all, none bigger than this.
READ_AHEAD_MOST = 256
READ_AHEAD_BYTES = 4 * 1024 * 1024
READ_AHEAD_ONE = 256 * 1024
# Most octets of a message's header that BlobReader.head reads ahead for one.
HEAD_MOST = 16384
# Idle read connections (ReadConnections) kept for the next search.
KEEP_READERS = 4
# A cached folder this many modseqs behind, with nobody listening, is read
# again rather than caught up from the journal.
RELOAD_GAP = 5000
# Folders whose caches a hub keeps while no session has them open: at most
# this many, holding at most this many messages in all.
KEEP_FOLDERS = 64
KEEP_MESSAGES = 1_000_000
# While the LISTEN connection is down, a folder's watchers
# (watch_changes: IDLE) are called this often (seconds), so they look.
DEAF_POLL = 0.5


def libpq_dsn(dsn: str) -> str:
    """
    The libpq connection string (C{str}) for the DSN part of an option
    such as C{--store postgresql:DSN}. A user who writes the URL alone
    (C{--store postgresql://mailhub@db/mailhub}, C{--to postgresql://...})
    leaves C{//mailhub@db/mailhub} after the C{postgresql:} prefix: that is
    given back as the URL it was. Anything else is returned unchanged
    (C{host=... dbname=...}, or a full C{postgresql://} URL).
    """
    return "postgresql:" + dsn if dsn.startswith("//") else dsn


def _connect(dsn: str, application_name: str = "mailhub") -> Any:
    try:
        import psycopg
    except ImportError:
        raise SystemExit("mailhub: --store postgresql needs the PostgreSQL driver: python3 -m pip install 'twisted-mailhub[postgresql]' (psycopg 3)")

    try:
        # (connect_timeout, TCP keepalives, tcp_user_timeout: pgtimeouts)
        conn = psycopg.connect(libpq_dsn(dsn), autocommit=True, **connection_options(libpq_dsn(dsn), application_name))
    except psycopg.Error as e:
        raise StoreUnavailable(f"cannot reach the mail database: {_reason(e)}") from None
    # Acknowledged means committed to disk on the server (RFC 5321 §6.1).
    conn.execute("SET synchronous_commit = on")
    return conn


def _reason(e: BaseException) -> str:
    """The first line of a driver error, or an error's words (L{errorwords.error_words}: no Twisted or Python text)."""
    from twisted_mailhub.errorwords import error_words

    text = error_words(e).strip().splitlines()
    return text[0] if text else "an error with no description"


def _is_connection_error(e: BaseException) -> bool:
    import psycopg

    return isinstance(e, (psycopg.OperationalError, NoAnswer)) or (
        isinstance(e, psycopg.Error) and getattr(e, "sqlstate", None) and str(e.sqlstate).startswith(("08", "57P"))
    )


class Database:
    """
    The reactor thread's connection: C{run(function)} calls
    C{function(conn)}, reconnecting once if the connection was lost before,
    and turns a database it cannot reach into L{StoreUnavailable}. A call
    the database does not answer in L{pgtimeouts.CALL_DEADLINE} s counts
    as a lost connection (L{pgtimeouts.Watchdog}).
    """

    def __init__(self, dsn: str, application_name: str = "mailhub"):
        self.dsn = dsn
        self.application_name = application_name
        self._conn: Any = None

    def connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.dsn, self.application_name)
        return self._conn

    def run(self, function, *args, deadline: Any = "call") -> Any:
        """
        C{function(conn, *args)} on this connection, once more on a new one
        if it was lost or did not answer in C{deadline} seconds
        (L{pgtimeouts.CALL_DEADLINE} unless given; L{None}: no limit, for
        a schema migration that may wait for another hub's).

        @raise StoreUnavailable: the database cannot be reached, twice.
        """
        import psycopg

        if deadline == "call":
            deadline = pgtimeouts.CALL_DEADLINE
        for attempt in (1, 2):
            conn = self.connection()
            try:
                if deadline is None:
                    return function(conn, *args)
                return watchdog.call(conn, deadline, function, *args)
            except (psycopg.Error, NoAnswer) as e:
                if not _is_connection_error(e):
                    raise
                # Lost (a restarted server, a broken network): try once on a
                # new connection. The calls made here are idempotent or
                # harmless to repeat (a flag change, an expunge, a copy).
                self.close()
                if attempt == 2:
                    raise StoreUnavailable(f"lost the mail database: {_reason(e)}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


class ReadConnections:
    """
    Connections for reading message bytes in worker threads
    (L{BlobReader}: a search's reads), never used by the reactor thread:
    each call takes an idle one (or makes one, in that thread), and gives
    it back after. At most L{KEEP_READERS} idle ones are kept.
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, function, *args) -> Any:
        """
        (in a worker thread) C{function(conn, *args)} on a read connection,
        once more on a new one if the first was lost.

        @raise StoreUnavailable: the database cannot be reached, or the
            store is closing.
        """
        import psycopg

        for attempt in (1, 2):
            conn = self._take()
            try:
                # (a database that does not answer: cut past the deadline)
                result = watchdog.call(conn, pgtimeouts.CALL_DEADLINE, function, *args)
            except (psycopg.Error, NoAnswer) as e:
                if not _is_connection_error(e):
                    self._give(conn)
                    raise
                try:
                    conn.close()
                except Exception:
                    pass
                # The idle ones went with it (a restart, a failover,
                # pg_terminate_backend), unknown to the driver until used:
                # the second try is on a new connection, not another
                # dead one (which answered "unavailable" with the
                # database back).
                self._drop_idle()
                if attempt == 2:
                    raise StoreUnavailable(f"lost the mail database: {_reason(e)}") from None
                continue
            except BaseException:
                conn.close()
                raise
            self._give(conn)
            return result
        raise AssertionError("unreachable")

    def _take(self) -> Any:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the mail store is closing")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return _connect(self.dsn, "mailhub read")

    def _give(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < KEEP_READERS:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        """Close the idle connections (those in use are given back or closed by their thread)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.close()
            except Exception:
                pass

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self._closed = True
        self._drop_idle()


class MetaConnection:
    """
    The connection on which the reactor's metadata writes and reads run
    instead of its own (L{PostgresFolder.set_flags_later},
    L{PostgresFolder.expunge_later}, L{PostgresAccount.select_later}): one
    worker thread, so the calls run, and their L{Deferred}s fire in the
    reactor, in the order they were asked, and the reactor never waits for
    the database meanwhile. A database that cannot be reached fails the
    Deferred with L{StoreUnavailable} (as L{Database.run} raises it).
    """

    def __init__(self, dsn: str, reactor: Any):
        self.db = Database(dsn, "mailhub meta")
        self.reactor = reactor
        self._pool: ThreadPool | None = None
        self._closed = False

    def run(self, function, *args, on: Database | None = None) -> defer.Deferred:
        """
        A L{Deferred} of C{function(conn, *args)}, called in the worker
        thread on this connection (or on C{on}'s, which the reactor then
        must not use), reconnecting once, as L{Database.run}. C{function}
        must touch no folder object: only the connection and values it was
        given.
        """
        if self._closed:
            return defer.fail(StoreUnavailable("the mail store is closing"))
        if self._pool is None:
            pool = ThreadPool(1, 1, "mailhub-postgresql-meta")
            # (daemon: a process whose reactor never stops still ends)
            pool.threadFactory = lambda *a, **k: threading.Thread(*a, daemon=True, **k)
            pool.start()
            self._pool = pool
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self._pool, (on or self.db).run, function, *args)

    def close(self) -> None:
        """Close the connection after the calls already asked; later calls fail."""
        self._closed = True
        if self._pool is not None:
            self._pool.callInThread(self.db.close)
            self._pool.stop()
            self._pool = None
        else:
            self.db.close()


class BlobReader:
    """
    The bytes of some messages (by position in the list it was made
    with), for a worker thread that searches them
    (L{twisted_mailhub.imap.search.match_in_thread}): read on the store's
    L{ReadConnections}, never the reactor's, the next small messages in
    the same round trip (more each time, as L{PostgresFolder.read} does).
    Its message ids and sizes were taken in the reactor; it touches no
    folder object.
    """

    def __init__(self, store: "PostgresStore", ids: list[int | None], sizes: list[int]):
        self._store = store
        self._ids = ids
        self._sizes = sizes
        self._bodies: dict[int, bytes] = {}
        self._heads: dict[int, bytes] = {}
        self._ahead = {"body": 4, "head": 4}

    def present(self, n: int) -> bool:
        """Was message C{n} in the folder when its id was taken?"""
        return self._ids[n] is not None

    def raw(self, n: int, size: int = 0) -> bytes:
        """
        The whole message C{n} (a big one in L{CHUNK} slices; C{size}, a
        hint for a file, is not needed: its size was taken with its id).

        @raise NoSuchMessage: it is gone (expunged everywhere meanwhile).
        @raise StoreUnavailable: the database cannot be reached.
        """
        body = self._bodies.pop(n, None)
        if body is not None:
            return body
        blobs = self._store.blobs
        if self._sizes[n] > READ_AHEAD_ONE:
            chunks = []
            at = 0
            while True:
                chunk = self._store.readers.run(blobs.read, self._ids[n], at, CHUNK)
                if chunk is None:
                    raise NoSuchMessage(n)
                if not chunk:
                    break
                chunks.append(chunk)
                at += len(chunk)
            return b"".join(chunks)
        return self._fetch(n, self._bodies, "body", lambda conn, ids: blobs.get(conn, ids), READ_AHEAD_ONE)

    def held(self, n: int) -> bytes | None:
        """
        (in the reactor) The whole message C{n} when an earlier round trip
        already read it ahead (L{raw}), and forgets it; else L{None}. No
        database call: a client that reads message after message (POP3
        RETR, IMAP FETCH 1:* BODY[]) takes a thread hop per round trip,
        not per message.
        """
        return self._bodies.pop(n, None)

    def size(self, n: int) -> int:
        """Message C{n}'s size in octets, as taken with its id."""
        return self._sizes[n]

    def slice(self, n: int, at: int, length: int) -> bytes:
        """
        (in a worker thread) Octets C{at} to C{at + length} of message C{n}
        (fewer at its end), one round trip: a big message sent as the
        client takes it, never held whole.

        @raise NoSuchMessage: it is gone.
        @raise StoreUnavailable: the database cannot be reached.
        """
        chunk = self._store.readers.run(self._store.blobs.read, self._ids[n], at, length)
        if chunk is None:
            raise NoSuchMessage(n)
        return chunk

    def head(self, n: int, length: int) -> bytes:
        """
        The first C{length} octets of message C{n} (all of a shorter one).

        @raise NoSuchMessage: it is gone.
        @raise StoreUnavailable: the database cannot be reached.
        """
        body = self._bodies.get(n)
        if body is not None:
            return body[:length]
        head = self._heads.pop(n, None)
        if head is not None:
            return head
        blobs = self._store.blobs
        return self._fetch(n, self._heads, "head", lambda conn, ids: blobs.heads(conn, ids, length), None)

    def _fetch(self, n: int, kept: dict[int, bytes], kind: str, get, one_most: int | None) -> bytes:
        skipped = [m for m in kept if m < n]
        for m in skipped:
            del kept[m]
        if skipped:
            self._ahead[kind] = 4  # (read ahead of messages the search did not want)
        wanted = {self._ids[n]: n}
        budget = READ_AHEAD_BYTES
        for m in range(n + 1, min(n + self._ahead[kind], len(self._ids))):
            blob = self._ids[m]
            if blob is None or m in kept:
                continue
            size = self._sizes[m] if one_most is not None else min(self._sizes[m], HEAD_MOST)
            if (one_most is not None and size > one_most) or size > budget:
                break
            budget -= size
            wanted[blob] = m
        self._ahead[kind] = min(self._ahead[kind] * 4, READ_AHEAD_MOST)
        got = self._store.readers.run(get, list(wanted))
        if self._ids[n] not in got:
            raise NoSuchMessage(n)
        for blob, data in got.items():
            if wanted[blob] != n:
                kept[wanted[blob]] = data
        return got[self._ids[n]]


def _bump(conn: Any, mailbox_id: int, kind: str, uids: list[int], uid_count: int = 0) -> tuple[int, int]:
    """
    In a transaction: take C{uid_count} UIDs and one modseq of a mailbox and
    journal the change. Returns (first UID, modseq); L{NoSuchFolder} if the
    mailbox is gone.
    """
    row = conn.execute(
        "UPDATE mailbox SET uid_next = uid_next + %s, highest_modseq = highest_modseq + 1"
        " WHERE id = %s RETURNING uid_next - %s, highest_modseq",
        (uid_count, mailbox_id, uid_count),
    ).fetchone()
    if row is None:
        raise NoSuchFolder("the folder was deleted")
    first, modseq = row
    if uid_count:
        uids = list(range(first, first + uid_count))
    conn.execute(
        "INSERT INTO mailbox_change (mailbox_id, modseq, kind, uids) VALUES (%s, %s, %s, %s)",
        (mailbox_id, modseq, kind, uids),
    )
    conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"{mailbox_id} {modseq}"))
    return first, modseq


# One mailbox's share of a group commit, in one statement: take the UIDs
# and a modseq (the row lock orders writers of the mailbox), place the
# messages (their bytes were queued just before by IMessageBlobs.put),
# journal the change and queue its NOTIFY. No row comes back if the
# mailbox is gone, or (for a delivery) if it is no longer the INBOX.
# Parameters (text): $1 the mailbox id, $2 "t" for a delivery to the
# INBOX, $3 how many messages, then one text per column: $4 message ids
# and $8 dates and $9 sizes joined by commas, $5 keys, $6 flags and
# $7 keywords (each space-separated) joined by newlines, $10 the sizes as
# downgraded (empty for the same as stored) joined by commas.
_ADD_TO_MAILBOX = f"""
WITH b AS (
    UPDATE mailbox SET uid_next = uid_next + $3::int4, highest_modseq = highest_modseq + 1
    WHERE id = $1::int8 AND (NOT $2::bool OR name = 'INBOX')
    RETURNING uid_next - $3::int4 AS first, highest_modseq AS modseq
), w AS (
    SELECT * FROM unnest(
        string_to_array($4::text, ',')::bigint[], string_to_array($5::text, E'\\n'), string_to_array($6::text, E'\\n'),
        string_to_array($7::text, E'\\n'), string_to_array($8::text, ',')::float8[], string_to_array($9::text, ',')::int4[],
        string_to_array($10::text, ',', '')::int4[]
    ) WITH ORDINALITY AS w(message_id, key, flags, keywords, internal_date, size, shown_size, n)
), placed AS (
    INSERT INTO mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, internal_date, modseq, size, shown_size)
    SELECT $1::int8, b.first + w.n - 1, w.message_id, w.key, coalesce(string_to_array(w.flags, ' '), '{{}}'),
           coalesce(string_to_array(w.keywords, ' '), '{{}}'), w.internal_date, b.modseq, w.size, w.shown_size
    FROM b, w
), journal AS (
    INSERT INTO mailbox_change (mailbox_id, modseq, kind, uids)
    SELECT $1::int8, b.modseq, 'added', ARRAY(SELECT generate_series(b.first, b.first + $3::int4 - 1)) FROM b
)
SELECT b.first, b.modseq, pg_notify('{pgschema.CHANNEL}', $1::int8::text || ' ' || b.modseq) FROM b
"""


# A message's key (POP3 UIDL, RFC 1939 §7: 1-70 characters 0x21-0x7E):
# 20 random hex digits drawn once per process, then a counter. Unique
# across hubs without a random draw (a system call) per message.
_KEY_PREFIX = uuid.uuid4().hex[:20]
_key_numbers = itertools.count(1)


def new_key() -> str:
    """A key no other message of any hub has."""
    return f"{_KEY_PREFIX}{next(_key_numbers):x}"


class PendingWrite:
    """One message waiting for a group commit."""

    __slots__ = ("address", "mailbox_id", "message", "flags", "keywords", "internal_date", "key", "deferred")

    def __init__(self, address, mailbox_id, message, flags, keywords, internal_date, key):
        self.address = address
        self.mailbox_id = mailbox_id
        self.message = message
        self.flags = flags
        self.keywords = keywords
        self.internal_date = internal_date
        self.key = key
        self.deferred: defer.Deferred = defer.Deferred()

    def row(self, uid: int, message_id: int) -> tuple:
        """Its cache row once placed: (UID, key, flags, size, date, message id)."""
        return uid, self.key, flag_set(" ".join(self.flags + self.keywords)), len(self.message), self.internal_date, message_id


class _InboxMoved(Exception):
    """A cached INBOX id is no longer the INBOX (it was renamed)."""


class GroupCommitter:
    """
    Writes messages several per transaction when they queue up, each
    transaction one round trip, without a thread: the reactor drives up to
    C{width} connections in libpq's pipeline mode (non-blocking). A batch
    is sent as the blob statement, one statement per mailbox and a Sync:
    the statements between two Syncs run as one implicit transaction,
    committed at the Sync (PostgreSQL protocol, "Pipelining"), so a
    failing statement rolls the whole batch back. The reply is read when
    the connection's socket is readable, and the next batch goes out in
    the same call. Each L{PendingWrite}'s Deferred fires with its (mailbox
    id, UID, modseq) after COMMIT, or fails with a L{StoreError}.

    Only making a connection blocks, so it happens in a thread; new
    accounts and fresh message ids (1,024 at a time) are read on the
    reactor's own connection.
    """

    def __init__(self, store: "PostgresStore", reactor: Any, width: int = WRITERS):
        self.store = store
        self.reactor = reactor
        self.width = width
        self.pending: list[PendingWrite] = []
        self.slots = [CommitConnection(self) for _ in range(width)]
        self._timer: Any = None
        self._pool: ThreadPool | None = None
        self._account_ids: dict[str, int] = {}
        self._inbox_ids: dict[str, int] = {}
        self._ids: list[int] = []
        self._closed = False

    def submit(self, write: PendingWrite) -> defer.Deferred:
        self.pending.append(write)
        self._kick()
        return write.deferred

    def _take(self, now: float) -> list[PendingWrite] | None:
        """
        The next batch for a free connection, or None: nothing waits, or a
        batch is committing and the next should gather behind it (fewer,
        bigger transactions) unless that one is slow (a big message, a busy
        disk) or GATHER messages wait.
        """
        if not self.pending:
            return None
        started = [slot.started for slot in self.slots if slot.batch is not None]
        if started and len(self.pending) < GATHER and min(started) + SLOW_BATCH > now:
            return None
        batch, self.pending = self.pending[:BATCH_MOST], self.pending[BATCH_MOST:]
        return batch

    def _kick(self) -> None:
        """Give what waits to the free connections, as far as L{_take} allows."""
        if self._closed:
            return
        for slot in self.slots:
            if slot.batch is not None:
                continue
            now = time.monotonic()
            batch = self._take(now)
            if batch is None:
                if self.pending and (self._timer is None or not self._timer.active()):
                    started = [s.started for s in self.slots if s.batch is not None]
                    if started:
                        self._timer = self.reactor.callLater(max(min(started) + SLOW_BATCH - now, 0.001), self._kick)
                return
            slot.start(batch, now)

    def _done(self, result: Any, batch: list[PendingWrite]) -> None:
        """A batch's outcome: a list (one (mailbox id, UID, modseq, message id) or exception per write), or a Failure."""
        if isinstance(result, list):
            added: dict[tuple[int, int], list] = {}
            for write, outcome in zip(batch, result):
                if not isinstance(outcome, Exception):
                    added.setdefault(outcome[:3:2], []).append((write, outcome[1], outcome[3]))
            for (mailbox_id, modseq), placed in added.items():
                self.store._added_here(mailbox_id, modseq, placed)
            for write, outcome in zip(batch, result):
                if isinstance(outcome, Exception):
                    write.deferred.errback(outcome)
                else:
                    write.deferred.callback(outcome[:3])
        else:
            error = result.value
            if not isinstance(error, StoreError):
                log.failure("PostgreSQL write failed", result)
                error = StoreUnavailable(f"the mail database failed: {_reason(error)}")
            for write in batch:
                write.deferred.errback(error)

    def _again(self, writes: list[PendingWrite]) -> None:
        """Send these writes again, ahead of what waits (a deadlock rolled them back; their INBOX moved)."""
        self.pending[:0] = writes

    # -- what a batch needs before it is sent (the reactor's connection) ----

    def _message_ids(self, count: int) -> list[int]:
        """C{count} new C{message} ids, taken from the sequence 1,024 at a time."""
        if len(self._ids) < count:
            rows = self.store.db.run(
                lambda c: c.execute("SELECT nextval('message_id_seq') FROM generate_series(1, %s)", (max(count, 1024),)).fetchall()
            )
            self._ids.extend(r[0] for r in rows)
        taken, self._ids = self._ids[:count], self._ids[count:]
        return taken

    def _inbox_id(self, address: str) -> int:
        """
        The INBOX id of C{address}'s account, which is made (and committed)
        first if new, so that a cached id always has its INBOX visible to
        every connection.
        """
        found = self._inbox_ids.get(address)
        if found is None:
            account_id = self._account_ids.get(address)
            if account_id is None:
                account_id = self._account_ids[address] = self.store.db.run(ensure_account, address)
            row = self.store.db.run(
                lambda c: c.execute("SELECT id FROM mailbox WHERE account_id = %s AND name = %s", (account_id, INBOX)).fetchone()
            )
            if row is None:
                raise StoreError(f"{address} has no INBOX")
            found = self._inbox_ids[address] = row[0]
        return found

    def statements(self, batch: list[PendingWrite]) -> tuple[list, list]:
        """
        What a batch sends: (statements, mailboxes). Each statement is
        (SQL, parameters, what its reply means: None, or the (mailbox id,
        is the INBOX, indexes of its writes, message ids) it places);
        mailboxes in id order (so that two hubs never deadlock).
        """
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, write in enumerate(batch):
            if write.mailbox_id is None:
                groups.setdefault((self._inbox_id(write.address.lower()), True), []).append(i)
            else:
                groups.setdefault((write.mailbox_id, False), []).append(i)
        ids = self._message_ids(len(batch))
        statements: list = [self.store.blobs.put(ids, [w.message for w in batch]) + (None,)]
        for mailbox_id, inbox in sorted(groups):
            members = groups[mailbox_id, inbox]
            writes = [batch[i] for i in members]
            # Columns as one text each (one value to send, not a list):
            # keys and flags have no newline, numbers no comma.
            params = [
                str(mailbox_id), "t" if inbox else "f", str(len(members)),
                ",".join([str(ids[i]) for i in members]),
                "\n".join([w.key for w in writes]),
                "\n".join([" ".join(w.flags) for w in writes]),
                "\n".join([" ".join(w.keywords) for w in writes]),
                ",".join([repr(w.internal_date) for w in writes]),
                ",".join([str(len(w.message)) for w in writes]),
                ",".join([downgraded_size_text(w.message) for w in writes]),
            ]
            statements.append((_ADD_TO_MAILBOX, params, (mailbox_id, inbox, members, [ids[i] for i in members])))
        return statements, ids

    def outcome(self, batch: list[PendingWrite], statements: list, replies: list) -> list:
        """
        Each write's outcome from the replies of a committed batch (one
        row each per mailbox statement, none if its mailbox is gone or no
        longer the INBOX): (mailbox id, UID, modseq, message id), or
        L{NoSuchFolder}. Deliveries whose INBOX was renamed meanwhile are
        sent again (their INBOX looked up again) and left out: None.
        """
        result: list = [None] * len(batch)
        orphans: list[int] = []
        again: list[int] = []
        for (_, _, placing), row in zip(statements, replies):
            if placing is None:
                continue
            mailbox_id, inbox, members, ids = placing
            if row is None:
                orphans.extend(ids)
                for i in members:
                    if inbox:
                        self._inbox_ids.pop(batch[i].address.lower(), None)
                        again.append(i)
                    else:
                        result[i] = NoSuchFolder("the folder was deleted")
                continue
            first, modseq = row
            for n, (i, message_id) in enumerate(zip(members, ids)):
                result[i] = (mailbox_id, first + n, modseq, message_id)
        if orphans:
            try:
                self.store.db.run(self.store.blobs.drop, orphans)
            except StoreError:
                pass  # bytes no folder shows: harmless until the next expunge
        if again:
            self._again([batch[i] for i in again])
        return result

    def connect(self) -> defer.Deferred:
        """A new connection for the group commit, made in a thread (it blocks)."""
        if self._pool is None:
            self._pool = ThreadPool(0, 1, "mailhub-postgresql-connect")
            self._pool.start()
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self._pool, _connect, self.store.dsn, "mailhub commit")

    def close(self) -> None:
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for slot in self.slots:
            slot.close()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None


_statement_numbers = itertools.count(1)


class CommitConnection:
    """
    One connection of the L{GroupCommitter}, in libpq's pipeline mode,
    non-blocking, read and written by the reactor (an C{IReadDescriptor}
    and C{IWriteDescriptor}). It is watched for reading all the time, so a
    server that closes it (a restart) is noticed before the next batch.
    """

    def __init__(self, committer: GroupCommitter):
        self.committer = committer
        self.conn: Any = None  # the psycopg Connection, None until made
        self.pgconn: Any = None
        self.batch: list[PendingWrite] | None = None
        self.started = 0.0
        self._socket: socket.socket | None = None
        self._fd = -1
        self._statements: list = []
        self._replies: list = []
        self._last: Any = None
        self._sent = False
        self._attempt = 0
        self._prepared: dict[str, bytes] = {}
        self._expect: list[bool] = []  # per reply awaited: is it a statement's (else a Parse's)
        self._deadline: Any = None  # the batch's pgtimeouts.CALL_DEADLINE (a reactor call)

    # -- IReadDescriptor / IWriteDescriptor --------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "mailhub-postgresql"

    def doRead(self) -> None:
        import psycopg

        if self.batch is None:
            # Nothing was asked: the server is ending the connection (a
            # restart, an administrator). Make a new one for the next batch.
            self._drop()
            return
        try:
            self.pgconn.consume_input()
            self._collect()
        except psycopg.Error as e:
            self._lost(e)

    def doWrite(self) -> None:
        import psycopg

        try:
            if self.pgconn.flush() == 0:
                self.committer.reactor.removeWriter(self)
                self._sent = True
        except psycopg.Error as e:
            self._lost(e)

    def connectionLost(self, reason) -> None:
        # The reactor "disconnects" every descriptor it watches as it stops
        # (disconnectAll, after crash: no longer running), with Twisted's
        # "lost in a non-clean fashion": nothing was lost, the store closes
        # this connection after the shutdown.
        if not self.committer.reactor.running and self.batch is None:
            self._drop()
            return
        self._lost(reason.value)

    # -- a batch ------------------------------------------------------------

    def start(self, batch: list[PendingWrite], now: float) -> None:
        """Commit C{batch} on this connection, making it first if needed."""
        self.batch, self.started, self._attempt = batch, now, 1
        self._deadline = self.committer.reactor.callLater(pgtimeouts.CALL_DEADLINE, self._no_answer)
        if self.conn is not None and not self._quiet():
            self._drop()
        if self.conn is None:
            self.committer.connect().addCallbacks(self._made, self._not_made)
        else:
            self._send()

    def _no_answer(self) -> None:
        """
        The batch had no answer in L{pgtimeouts.CALL_DEADLINE} s (a frozen
        database host or server process: the kernel still acknowledges, so
        no TCP timer fires): its writes fail with L{StoreUnavailable} (a
        temporary error: whether it committed is unknown, as for a lost
        connection) and the connection goes. One still being made is left
        to its C{connect_timeout}, and the batch given another deadline.
        """
        self._deadline = None
        if self.batch is None:
            return
        if self.conn is None:
            self._deadline = self.committer.reactor.callLater(pgtimeouts.CALL_DEADLINE, self._no_answer)
            return
        self._drop()
        self._finish(Failure(StoreUnavailable(f"the mail database did not answer in {pgtimeouts.CALL_DEADLINE:g} s")))

    def _quiet(self) -> bool:
        """
        Nothing waits to be read: the server has not ended the connection
        since the last batch (the reactor may not have seen it yet). A
        batch sent on an ended connection could not be sent again, as its
        COMMIT might have happened.
        """
        try:
            self._socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # data, or b"" at its end
            return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _made(self, conn: Any) -> None:
        if self.committer._closed:
            conn.close()
            return
        self.conn, self.pgconn = conn, conn.pgconn
        self.pgconn.nonblocking = 1
        self.pgconn.enter_pipeline_mode()
        # The reactor watches a duplicate of the socket: libpq closes its
        # own descriptor when the connection fails, and the reactor must
        # still be able to forget this one.
        self._socket = socket.socket(fileno=os.dup(self.pgconn.socket))
        self._fd = self._socket.fileno()
        self._prepared = {}
        self.committer.reactor.addReader(self)
        if self.batch is not None:
            self._send()

    def _not_made(self, reason) -> None:
        self._finish(reason)

    def _send(self) -> None:
        import psycopg

        batch = self.batch
        try:
            statements, _ = self.committer.statements(batch)
        except BaseException:
            self._finish(Failure())
            return
        self._statements, self._replies, self._last, self._sent = statements, [], None, False
        expect = self._expect = []
        pgconn = self.pgconn
        try:
            for sql, params, _ in statements:
                name = self._prepared.get(sql)
                if name is None:
                    name = self._prepared[sql] = b"mailhub_%d" % next(_statement_numbers)
                    pgconn.send_prepare(name, sql.encode())
                    expect.append(False)  # the Parse's reply, not kept
                values = [p if isinstance(p, bytes) else p.encode() for p in params]
                pgconn.send_query_prepared(name, values, param_formats=[1 if isinstance(p, bytes) else 0 for p in params])
                expect.append(True)
            pgconn.pipeline_sync()
            if pgconn.flush():
                self.committer.reactor.addWriter(self)
            else:
                self._sent = True
        except psycopg.Error as e:
            self._lost(e)

    def _collect(self) -> None:
        """Read the replies that have come (for the one batch in flight); the batch is done at its Sync."""
        import psycopg
        from psycopg import pq

        pgconn = self.pgconn
        while self.batch is not None and not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                # The end of one statement's replies (or a Parse's).
                if not self._expect:
                    raise psycopg.OperationalError("the mail database sent a reply nothing asked for")
                if self._expect.pop(0):
                    self._replies.append(self._last)
                elif self._last is not None and self._last.status == pq.ExecStatus.FATAL_ERROR:
                    self._replies.append(self._last)  # told as the batch's error
                self._last = None
                continue
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                # Its callbacks may send the next batch, even on this
                # connection: its replies are read at the next doRead.
                self._committed()
                return
            if result.status == pq.ExecStatus.FATAL_ERROR and (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").startswith((b"08", b"57P")):
                # The server is ending the connection (a shutdown, an
                # administrator): whether the batch committed is unknown.
                raise psycopg.OperationalError(result.error_message.decode(errors="replace").strip().removeprefix("FATAL:").strip())
            self._last = result

    def _committed(self) -> None:
        """The Sync's reply: the batch committed, or was rolled back whole by its first error."""
        from psycopg import pq

        self._answered()
        batch, statements = self.batch, self._statements
        replies = self._replies
        failed = next((r for r in replies if r is not None and r.status == pq.ExecStatus.FATAL_ERROR), None)
        if failed is not None:
            # A Parse of the batch may have failed with it: prepare afresh
            # (under new names) next time.
            self._prepared = {}
            state = (failed.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            reason = failed.error_message.decode(errors="replace").strip().splitlines()
            reason = reason[0].removeprefix("ERROR:").strip() if reason else state
            if state == "40P01" and self._attempt < 3:
                # A deadlock rolled it back whole: do it again.
                self.batch = None
                self.committer._again(batch)
                self._next()
                return
            if state.startswith(("08", "57P")):
                self._finish(Failure(StoreUnavailable(f"lost the mail database: {reason}")))
            else:
                self._finish(Failure(StoreError(f"the mail database refused the message: {reason}")))
            return
        rows = []
        for (_, _, placing), reply in zip(statements, replies):
            if placing is None:
                rows.append(None)
            elif reply is None or reply.ntuples == 0:
                rows.append(None)
            else:
                rows.append((int(reply.get_value(0, 0)), int(reply.get_value(0, 1))))
        try:
            result = self.committer.outcome(batch, statements, rows)
        except BaseException:
            self._finish(Failure())
            return
        kept = [(w, r) for w, r in zip(batch, result) if r is not None]
        self.batch = None
        # The next batch goes out first: the database flushes it while the
        # replies to this one are made.
        self._next()
        self.committer._done([r for _, r in kept], [w for w, _ in kept])

    def _answered(self) -> None:
        """The batch is over (committed, refused or lost): its deadline goes."""
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _finish(self, result: Any) -> None:
        self._answered()
        batch, self.batch = self.batch, None
        if batch:
            self.committer._done(result, batch)
        self._next()

    def _next(self) -> None:
        self.committer._kick()

    def _lost(self, error: BaseException) -> None:
        """The connection failed: a batch not yet wholly sent is sent again on a new one; one sent may have committed."""
        sent = self._sent
        self._drop()
        if self.batch is None:
            return
        if not sent and self._attempt < 2:
            self._attempt += 1
            self.committer.connect().addCallbacks(self._made, self._not_made)
            return
        self._finish(Failure(StoreUnavailable(f"lost the mail database: {_reason(error)}")))

    def _drop(self) -> None:
        """Forget the connection (closed, or broken)."""
        if self.conn is None:
            return
        reactor = self.committer.reactor
        reactor.removeReader(self)
        reactor.removeWriter(self)
        self._socket.close()
        try:
            self.conn.close()
        except Exception:
            pass
        self.conn = self.pgconn = None
        self._fd = -1

    def close(self) -> None:
        self._answered()
        self._drop()


def ensure_account(conn: Any, address: str) -> int:
    """
    The id of C{address}'s account row, made (with its INBOX) if missing.
    """
    row = conn.execute("SELECT id FROM account WHERE address = %s", (address,)).fetchone()
    if row is not None:
        return row[0]
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO account (address) VALUES (%s) ON CONFLICT (address) DO NOTHING RETURNING id", (address,)
        ).fetchone()
        if row is None:
            return conn.execute("SELECT id FROM account WHERE address = %s", (address,)).fetchone()[0]
        conn.execute(
            "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s)",
            (row[0], INBOX, new_uid_validity(conn)),
        )
        conn.execute("INSERT INTO subscription (account_id, name) VALUES (%s, %s)", (row[0], INBOX))
        return row[0]


def new_uid_validity(conn: Any) -> int:
    """
    A UIDVALIDITY for a new folder: the time, or more, in a 32-bit field,
    above every value given before in this database, so that a folder
    deleted and made again within a second never repeats one (RFC 3501
    §2.3.1.1). (Added by the IMAP lane: one sequence, made on first use.)
    """
    conn.execute("CREATE SEQUENCE IF NOT EXISTS mailhub_uid_validity")
    row = conn.execute(
        "SELECT setval('mailhub_uid_validity', GREATEST(nextval('mailhub_uid_validity'), %s))", (int(time.time()) & 0xFFFFFFFF,)
    ).fetchone()
    return row[0]


class MessageReader(io.RawIOBase):
    """
    One message's bytes read from the database in slices of L{CHUNK}
    octets: a 25 MB message is never held whole.
    """

    def __init__(self, store: "PostgresStore", message_id: int, size: int):
        self._store = store
        self._id = message_id
        self._size = size
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._at, 2: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, buffer) -> int:
        want = min(len(buffer), CHUNK, self._size - self._at)
        if want <= 0:
            return 0
        chunk = self._store.db.run(self._store.blobs.read, self._id, self._at, want)
        if chunk is None:
            raise NoSuchMessage("the message is gone")
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


@implementer(IModSeqFolder)
class PostgresFolder:
    """
    One C{mailbox} row, with a cache of its messages (a
    L{twisted_mailhub.store.pgcache.FolderCache}: UID, key, flags, size,
    date, C{message} id and modseq of each, as columns) that the change
    journal keeps current: C{messages()} and C{info()} read no rows once it
    is loaded, and loading it is one statement.

    The journal drives both the cache and the listeners: every change made
    here is applied and announced at once; a change made by another hub is
    found in the journal (after its C{NOTIFY}, or when C{messages()} sees
    the mailbox's C{highest_modseq} ahead of the cache), its rows read again
    by UID, applied, then announced, once per modseq. Rows read again are
    the truth at that moment (an UID missing from them was expunged: UIDs
    are never reused), and a row never replaces a newer one (its modseq),
    so applying changes out of order still ends at the database's state.
    """

    def __init__(self, store: "PostgresStore", account: "PostgresAccount", mailbox_id: int, name: str, uid_validity: int, modseq: int):
        self.store = store
        self.account = account
        self.mailbox_id = mailbox_id
        self.name = name
        self.uid_validity = uid_validity
        self.gone = False
        self._listeners = Listeners()
        self._watermark = modseq  # every modseq up to here is applied and announced
        self._announced: set[int] = set()  # and these above it
        # The cache: None until first needed.
        self._table: FolderCache | None = None
        self._version = 0  # counts changes to the cache
        self._mark = 0  # highest_modseq when the cache was read
        self._selection: tuple | None = None  # (version, first unseen, keywords)
        # Read-ahead of small bodies for a FETCH that walks the folder.
        self._bodies: dict[int, bytes] = {}
        self._last_read = 0
        self._ahead = 1
        self._shown: tuple[int, dict[int, int]] | None = None  # (last UID asked, downgraded_sizes())
        self._writing = 0  # writes of this folder on the MetaConnection not yet back (_later)
        self._behind = 0  # the highest modseq whose catch-up was put off meanwhile (0: none)
        self._looked = False  # read in a thread this reactor turn (_just_looked)

    def _run(self, function, *args):
        return self.store.db.run(function, *args)

    @property
    def uid_next(self) -> int:
        row = self._run(lambda c: c.execute("SELECT uid_next FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
        if row is None:
            raise NoSuchFolder(self.name)
        return row[0]

    # -- the cache ------------------------------------------------------------

    @property
    def cached(self) -> int:
        """How many messages the cache holds (0 when not loaded)."""
        return len(self._table) if self._table is not None else 0

    def _load(self) -> None:
        # One statement, one snapshot: the mark and the rows agree (a
        # journal entry applied again later changes nothing).
        row = self._run(lambda c: c.execute(pgcache.SUMMARY, (self.mailbox_id,), binary=True).fetchone())
        if row is None:
            self.gone = True
            self._table = FolderCache()
            self._mark = 0
            return
        self._table = FolderCache.from_summary(row[1:])
        self._mark = row[0]
        self._version += 1
        if self._watermark < self._mark:
            # Changes between the folder's making and now: told to nobody
            # yet, and listeners may be waiting for them.
            self.catch_up()

    def _drop(self, uids: Iterable[int]) -> None:
        self._bodies.clear()
        if self._table is not None and self._table.drop(uids):
            self._version += 1

    def _reread(self, uids: list[int]) -> None:
        """Read these UIDs' rows again into the cache (missing ones were expunged)."""
        if self._table is None or not uids:
            return
        rows = self._run(lambda c: c.execute(pgcache.ROWS + " AND uid = ANY(%s)", (self.mailbox_id, uids)).fetchall())
        found = set()
        for uid, key, flags, size, internal_date, message_id, modseq in rows:
            found.add(uid)
            if self._table.put(uid, key, flag_set(flags), size, internal_date, message_id, modseq):
                self._version += 1
        self._drop([u for u in uids if u not in found])

    # -- changes ------------------------------------------------------------

    def announce(self, modseq: int, change: FolderChange) -> None:
        if modseq <= self._watermark or modseq in self._announced:
            return
        self._announced.add(modseq)
        # (every modseq up to the watermark is told: move it up, so a
        # NOTIFY of this change is seen as told, with no journal read)
        while self._watermark + 1 in self._announced:
            self._watermark += 1
            self._announced.discard(self._watermark)
        self._listeners.notify(change)

    def catch_up(self, below: int | None = None) -> None:
        """
        Apply and tell every journal entry not yet applied here (those
        below C{below}). When the journal no longer holds one of them (it
        was pruned: L{twisted_mailhub.store.pgjournal}), the folder is read
        again instead and the difference told (L{_resync}).
        """
        rows = self._run(
            lambda c: c.execute(
                "SELECT modseq, kind, uids FROM mailbox_change WHERE mailbox_id = %s AND modseq > %s AND modseq < %s ORDER BY modseq",
                (self.mailbox_id, self._watermark, below if below is not None else 2**62),
            ).fetchall()
        )
        fresh = [(modseq, kind, uids) for modseq, kind, uids in rows if modseq not in self._announced]
        if self._journal_pruned(rows, fresh, below):
            self._resync()
            return
        if not rows:
            return
        # The rows of every added or changed UID in one read, then the tale
        # in modseq order.
        self._reread(sorted({u for _, kind, uids in fresh if kind != "expunged" for u in uids}))
        for modseq, kind, uids in fresh:
            if kind == "expunged":
                self._drop(uids)
            self.announce(modseq, FolderChange(**{kind: tuple(uids)}))
        self._watermark = max(self._watermark, rows[-1][0])
        self._announced = {m for m in self._announced if m > self._watermark}

    def _journal_pruned(self, rows: list, fresh: list, below: int | None) -> bool:
        """
        Does the journal miss a modseq this folder has not told yet? Every
        change takes the next modseq and journals it in the same
        transaction, and one mailbox's changes commit in modseq order, so
        the untold modseqs up to the last row read (or below C{below}) are
        all in the journal unless pruning took them.
        """
        if below is not None:
            top = below
        elif fresh:
            top = fresh[-1][0]
        elif rows:
            return False
        else:
            row = self._run(lambda c: c.execute("SELECT highest_modseq FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
            if row is None:
                return False
            top = row[0] + 1
        have = {modseq for modseq, _, _ in fresh}
        announced = self._announced
        return any(m not in have and m not in announced for m in range(self._watermark + 1, top))

    def _resync(self) -> None:
        """
        The journal was pruned past this folder's watermark: read it again
        (one statement, as L{_load}) and tell its listeners what differs
        from the cache, as a full resync would (RFC 7162 §3.2.5.1; a
        session is told by EXPUNGE, EXISTS and FETCH FLAGS).
        """
        before = self._table
        row = self._run(lambda c: c.execute(pgcache.SUMMARY, (self.mailbox_id,), binary=True).fetchone())
        if row is None:
            self.gone = True
            self._drop(list(before.uids) if before is not None else [])
            return
        log.info(
            "mailbox {mailbox}: the change journal was pruned past modseq {modseq}; read the folder again",
            mailbox=self.mailbox_id, modseq=self._watermark,
        )
        self._replace(row)

    def _replace(self, row: tuple) -> None:
        """
        Put a L{pgcache.SUMMARY} row (mark first) in place of the cache,
        and tell the listeners what differs from it (added, flags,
        expunged), as a full resync would.
        """
        before = self._table
        self._bodies.clear()
        self._table = table = FolderCache.from_summary(row[1:])
        self._mark = row[0]
        self._version += 1
        self._watermark, self._announced = max(self._watermark, row[0]), {m for m in self._announced if m > row[0]}
        if before is None:
            return
        old = dict(zip(before.uids, before.modseqs))
        now = dict(zip(table.uids, table.modseqs))
        change = FolderChange(
            added=tuple(u for u in table.uids if u not in old),
            flags=tuple(u for u in table.uids if u in old and now[u] != old[u]),
            expunged=tuple(u for u in before.uids if u not in now),
        )
        if change.added or change.flags or change.expunged:
            self._listeners.notify(change)

    def _sync(self) -> None:
        """
        One look at the mailbox row: catch up if another hub changed it
        (its C{NOTIFY} may still be on the way); mark the folder gone if it
        was deleted.
        """
        row = self._run(lambda c: c.execute("SELECT highest_modseq FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
        if row is None:
            self.gone = True
            self._drop(list(self._table.uids) if self._table is not None else [])
            return
        if row[0] - self._watermark > RELOAD_GAP and not self._listeners.count():
            # Far behind and nobody to tell: read it all again.
            self._watermark, self._announced, self._table = row[0], set(), None
            self._load()
        elif row[0] > self._watermark and any(m not in self._announced for m in range(self._watermark + 1, row[0] + 1)):
            if self._writing:
                self._behind = max(self._behind, row[0])  # (after that write: _later)
            else:
                self.catch_up()

    def _opened(self, summary: tuple | None, modseq: int) -> None:
        """
        (in the reactor) What L{PostgresAccount.select_later} read in its
        thread: the folder's C{highest_modseq} then, and a
        L{pgcache.SUMMARY} row when the cache was not loaded or was behind
        it. The cache takes it when that changes nothing told since;
        otherwise (a write of this hub in between) it looks as
        L{messages} does.
        """
        self.store._touch(self)
        if summary is None:
            if self._table is not None and modseq <= self._watermark:
                return  # (the cache was current)
        elif summary[0] >= self._watermark and all(m <= summary[0] for m in self._announced) and not self._writing:
            if self._table is None and self._listeners.count() and summary[0] > self._watermark:
                pass  # (changes nobody was told: the journal tells them, below)
            else:
                self._replace(summary)
                return
        self._cache()

    def refresh(self) -> None:
        if self.gone:
            raise NoSuchFolder(self.name)
        if not self.store.listening:
            self._sync()
            if self.gone:
                raise NoSuchFolder(self.name)

    def add_listener(self, listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener) -> None:
        self._listeners.remove(listener)

    def watch_changes(self, callback) -> None:
        """
        Call C{callback()} when this folder is deleted or renamed, by any
        hub (its C{NOTIFY}), and every L{DEAF_POLL} seconds while the
        C{LISTEN} connection is down (the caller then looks: C{refresh}).
        Its messages' changes reach the listeners anyway. For IDLE
        (L{twisted_mailhub.store.watch.StoreSignal}): no poll.
        """
        self.store._watch(self.mailbox_id, callback)

    def unwatch_changes(self, callback) -> None:
        self.store._unwatch(self.mailbox_id, callback)

    # -- reading ------------------------------------------------------------

    # -- mod-sequences (RFC 7162) --------------------------------------------
    # A modseq shown to a client is the stored one + 1: a folder nothing
    # has changed yet stores 0 and shows 1 (RFC 7162 has no 0), and its
    # first change shows 2.

    @property
    def highest_modseq(self) -> int:
        """HIGHESTMODSEQ: the highest modseq this hub has told its sessions of (after a look for newer)."""
        if self._table is None:
            row = self._run(lambda c: c.execute("SELECT highest_modseq FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
            if row is None:
                raise NoSuchFolder(self.name)
            return row[0] + 1
        self._sync()
        return self.told_modseq()

    def told_modseq(self) -> int:
        """L{highest_modseq} as this hub has told it, without a look at the database."""
        told = self._watermark
        while told + 1 in self._announced:
            told += 1
        return told + 1

    def modseq(self, uid: int) -> int:
        """The modseq of a message's last change; L{NoSuchMessage} if it is gone."""
        if self._table is not None:
            return self._table.modseqs[self._table.row(uid)] + 1
        row = self._run(lambda c: c.execute("SELECT modseq FROM mailbox_message WHERE mailbox_id = %s AND uid = %s", (self.mailbox_id, uid)).fetchone())
        if row is None:
            raise NoSuchMessage(uid)
        return row[0] + 1

    def _cache(self) -> FolderCache:
        """The cache, loaded or caught up (as L{messages} does)."""
        self.store._touch(self)
        if self._table is None:
            self._load()
        elif not self._looked:
            self._sync()
        return self._table if self._table is not None else FolderCache()

    def _just_looked(self) -> None:
        """
        A worker thread has just read this folder's rows and modseq for
        the command being answered (L{PostgresAccount.select_later}): the
        rest of this reactor turn takes the cache as current, with no look
        of its own (L{_sync}) on the reactor's connection.
        """
        if not self._looked:
            self._looked = True
            self.store.reactor.callLater(0, setattr, self, "_looked", False)

    def messages(self) -> list[MessageInfo]:
        if self.gone:
            return []
        return self._cache().all_infos()

    def listing(self) -> tuple[array, array, list[str]]:
        """
        What a POP3 login needs (RFC 1939 §5 STAT, LIST, UIDL), as columns,
        without a L{MessageInfo} per message: (the UIDs ascending, their
        sizes in octets, their keys), new sequences the caller may keep.
        Catches up first, as L{messages} does.
        """
        if self.gone:
            return array("I"), array("Q"), []
        table = self._cache()
        return array("I", table.uids), array("Q", table.sizes), list(table.names)

    def downgraded_sizes(self) -> dict[int, int]:
        """
        UID -> size as a session without UTF8 is sent the message (its
        8-bit headers downgraded: RFC 6856 §3 for POP3's STAT/LIST, RFC
        6855 for IMAP's RFC822.SIZE), for the messages where that is not
        the stored size (C{mailbox_message.shown_size}); usually empty.
        Read through the partial index, then only for UIDs given since the
        last call (a message's row never changes its size); a UID
        expunged since stays in the answer, never asked for.
        """
        if self.gone:
            return {}
        known = self._shown
        table = self._cache()
        last = table.uids[-1] if len(table) else 0
        if known is None or last > known[0]:
            since = known[0] if known is not None else 0
            rows = self._run(
                lambda c: c.execute(
                    "SELECT uid, shown_size FROM mailbox_message WHERE mailbox_id = %s AND shown_size IS NOT NULL AND uid > %s",
                    (self.mailbox_id, since),
                ).fetchall()
            )
            sizes = dict(known[1]) if known is not None else {}
            sizes.update(rows)
            known = self._shown = (last, sizes)
        return known[1]

    def selection(self, look: bool = True) -> tuple[array, int, frozenset[str]]:
        """
        What an IMAP SELECT tells (RFC 3501 §6.3.1), from the cache's
        columns: (the UIDs ascending, as a new C{array('I')} the caller may
        change; the UID of the first message without C{\\Seen}, 0 if none;
        the keywords in use). Catches up first, as L{messages} does, unless
        not C{look} (L{PostgresAccount.select_later} just did, in a thread).
        """
        if self.gone:
            return array("I"), 0, frozenset()
        table = self._cache() if look or self._table is None else self._table
        cached = self._selection
        if cached is None or cached[0] != self._version:
            cached = self._selection = (self._version, table.first_unseen(), table.keywords_in_use())
        return array("I", table.uids), cached[1], cached[2]

    def info(self, uid: int) -> MessageInfo:
        if self._table is not None:
            return self._table.info_of(uid)
        row = self._run(lambda c: c.execute(pgcache.ROWS + " AND uid = %s", (self.mailbox_id, uid)).fetchone())
        if row is None:
            raise NoSuchMessage(uid)
        uid, key, flags, size, internal_date, _, _ = row
        return MessageInfo(uid=uid, key=key, flags=flag_set(flags), size=size, internal_date=internal_date)

    def summary(self, uid: int) -> tuple[frozenset[str], int, float]:
        """
        (flags, size in octets, internal date) of C{uid}, from the cache's
        columns when it is loaded (FETCH 1:* of UID FLAGS RFC822.SIZE
        makes no L{MessageInfo}). L{NoSuchMessage} if none.
        """
        if self._table is not None:
            return self._table.summary(self._table.row(uid))
        info = self.info(uid)
        return info.flags, info.size, info.internal_date

    def _message_id(self, uid: int) -> tuple[int, int]:
        """(message id, size) of a UID; L{NoSuchMessage} if it is gone."""
        if self._table is not None:
            return self._table.message_of(uid)
        row = self._run(
            lambda c: c.execute(
                "SELECT message_id, size FROM mailbox_message WHERE mailbox_id = %s AND uid = %s",
                (self.mailbox_id, uid),
            ).fetchone()
        )
        if row is None:
            raise NoSuchMessage(uid)
        return row[0], row[1]

    def read(self, uid: int) -> bytes:
        body = self._bodies.pop(uid, None)
        if body is not None:
            self._last_read = uid
            return body
        message_id, _ = self._message_id(uid)
        wanted = {message_id: uid}
        if self._table is not None and self._last_read and uid > self._last_read:
            # A walk up the folder (FETCH 1:* BODY[]): read the next small
            # messages in the same round trip, more each time.
            budget = READ_AHEAD_BYTES
            for next_uid, next_id, size in itertools.islice(self._table.following(uid), self._ahead):
                if size > READ_AHEAD_ONE or size > budget:
                    break
                budget -= size
                wanted[next_id] = next_uid
            self._ahead = min(self._ahead * 4, READ_AHEAD_MOST)
        else:
            self._ahead = 4
        bodies = self._run(self.store.blobs.get, list(wanted))
        if message_id not in bodies:
            raise NoSuchMessage(uid)
        self._bodies = {wanted[m]: b for m, b in bodies.items() if m != message_id}
        self._last_read = uid
        return bodies[message_id]

    def detached_reader(self, uids: list[int]) -> BlobReader:
        """
        A L{BlobReader} of messages C{uids} (by their position in it), for
        a worker thread: their message ids and sizes are taken here, from
        the cache (a UID not in the folder is not L{BlobReader.present}).
        A search reads and matches them there, so the reactor does not
        wait for the database (twisted_mailhub/imap/search.py).
        """
        if self._table is None:
            self._cache()
        table = self._table if self._table is not None else FolderCache()
        ids: list[int | None] = []
        sizes: list[int] = []
        for uid in uids:
            try:
                blob, size = table.message_of(uid)
            except NoSuchMessage:
                blob, size = None, 0
            ids.append(blob)
            sizes.append(size)
        return BlobReader(self.store, ids, sizes)

    def open(self, uid: int):
        message_id, size = self._message_id(uid)
        return io.BufferedReader(MessageReader(self.store, message_id, size), CHUNK)

    def path(self, uid: int) -> None:
        return None

    # -- writing ------------------------------------------------------------

    def append(self, message: bytes, flags: Iterable[str] = (), internal_date: float | None = None):
        system, keywords = split_flags(flags)
        write = PendingWrite(
            None, self.mailbox_id, bytes(message), sorted(system), sorted(keywords),
            internal_date if internal_date is not None else time.time(), new_key(),
        )
        return self.store.committer.submit(write).addCallback(lambda result: result[1])

    def added_here(self, modseq: int, rows: list) -> None:
        """Messages this hub just committed with C{modseq}: (UID, key, flags, size, date, message id) each."""

        def apply():
            table = self._table
            if table is not None:
                for uid, key, flags, size, date, message_id in rows:
                    table.put(uid, key, flags, size, date, message_id, modseq)
                self._version += 1

        self._local(modseq, apply, FolderChange(added=tuple(row[0] for row in rows)))

    def _local(self, modseq: int, apply, change: FolderChange) -> None:
        """
        A change committed here with C{modseq}: tell first what other hubs
        committed before it (a session must hear of UID 7 before UID 8),
        then apply and announce it.
        """
        if any(m not in self._announced for m in range(self._watermark + 1, modseq)):
            self.catch_up(below=modseq)
        apply()
        self.announce(modseq, change)

    def _flag_change(self, wanted: list[int], flags, mode: str):
        """
        The transaction of a flag change of UIDs C{wanted} (C{conn} ->
        (UID -> new flags, the modseq taken or None, the UIDs changed)):
        touches no folder object, so it may run in a thread.
        """
        mailbox_id = self.mailbox_id

        def change(conn):
            with conn.transaction():
                rows = conn.execute(
                    "SELECT uid, flags, keywords FROM mailbox_message WHERE mailbox_id = %s AND uid = ANY(%s) ORDER BY uid FOR UPDATE",
                    (mailbox_id, wanted),
                ).fetchall()
                result = {}
                updates = []
                for uid, old_flags, old_keywords in rows:
                    old = frozenset(old_flags) | frozenset(old_keywords)
                    new = apply_flags(old, flags, mode)
                    result[uid] = new
                    if new != old:
                        system, keywords = split_flags(new)
                        updates.append((sorted(system), sorted(keywords), uid))
                if not updates:
                    return result, None, ()
                _, modseq = _bump(conn, mailbox_id, "flags", [u[2] for u in updates])
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "UPDATE mailbox_message SET flags = %s, keywords = %s, modseq = "
                        + str(int(modseq))
                        + " WHERE mailbox_id = "
                        + str(int(mailbox_id))
                        + " AND uid = %s",
                        updates,
                    )
                return result, modseq, tuple(u[2] for u in updates)

        return change

    def _flags_changed(self, outcome: tuple, origin: Any) -> dict[int, frozenset[str]]:
        """(in the reactor) A committed flag change (L{_flag_change}'s outcome): applied to the cache and told."""
        result, modseq, changed = outcome
        if modseq is not None:

            def apply():
                table = self._table
                if table is None:
                    return
                for uid in changed:
                    i = table.position(uid)
                    if i >= 0 and table.put(uid, "", frozenset(result[uid]), 0, 0.0, 0, modseq):
                        self._version += 1

            self._local(modseq, apply, FolderChange(flags=changed, origin=origin))
        return result

    def set_flags(self, uids, flags, mode="replace", origin=None):
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        return self._flags_changed(self._run(self._flag_change(wanted, flags, mode)), origin)

    def set_flags_later(self, uids, flags, mode="replace", origin=None) -> defer.Deferred:
        """
        L{set_flags} with the transaction run on the store's
        L{MetaConnection} (a worker thread), so the reactor does not wait
        for the database: a L{Deferred} of UID -> the message's flags
        now, firing after COMMIT, once the change is in the cache and told
        to the listeners. Fails with L{StoreUnavailable} if the database
        cannot be reached (nothing changed then, or all of it).
        """
        wanted = sorted(set(uids))
        if not wanted:
            return defer.succeed({})
        return self._later(self._flag_change(wanted, flags, mode), lambda outcome: self._flags_changed(outcome, origin))

    def _removal(self, wanted: list[int]):
        """The transaction of an expunge of UIDs C{wanted} (C{conn} -> (UIDs removed, the modseq taken or None)): no folder object touched."""
        mailbox_id = self.mailbox_id
        blobs = self.store.blobs

        def remove(conn):
            with conn.transaction():
                gone = conn.execute(
                    "DELETE FROM mailbox_message WHERE mailbox_id = %s AND uid = ANY(%s) RETURNING uid, message_id",
                    (mailbox_id, wanted),
                ).fetchall()
                if not gone:
                    return [], None
                removed = sorted(uid for uid, _ in gone)
                _, modseq = _bump(conn, mailbox_id, "expunged", removed)
                blobs.drop(conn, [m for _, m in gone])
                return removed, modseq

        return remove

    def _removed(self, outcome: tuple, origin: Any) -> list[int]:
        """(in the reactor) A committed expunge (L{_removal}'s outcome): applied to the cache and told."""
        removed, modseq = outcome
        if modseq is not None:
            self._local(modseq, lambda: self._drop(removed), FolderChange(expunged=tuple(removed), origin=origin))
        return removed

    def expunge(self, uids, origin=None):
        wanted = sorted(set(uids))
        if not wanted:
            return []
        return self._removed(self._run(self._removal(wanted)), origin)

    def expunge_later(self, uids, origin=None) -> defer.Deferred:
        """
        L{expunge} with the transaction run on the store's
        L{MetaConnection}: a L{Deferred} of the UIDs removed (ascending),
        firing after COMMIT, once they are out of the cache and told.
        Fails with L{StoreUnavailable} if the database cannot be reached.
        """
        wanted = sorted(set(uids))
        if not wanted:
            return defer.succeed([])
        return self._later(self._removal(wanted), lambda outcome: self._removed(outcome, origin))

    def _later(self, transaction, then) -> defer.Deferred:
        """
        Run C{transaction(conn)} on the L{MetaConnection}, then
        C{then(outcome)} in the reactor. Meanwhile the folder does not
        catch up from the journal (L{_sync}, a C{NOTIFY}): that would tell
        this change before its own command could, without its origin; it
        catches up once the last such write is back.
        """
        self._writing += 1

        def back(result):
            self._writing -= 1
            return result

        def caught_up(result):
            if not self._writing and self._behind:
                behind, self._behind = self._behind, 0
                # (a NOTIFY of this very change is told already: no read)
                if any(m not in self._announced for m in range(self._watermark + 1, behind + 1)):
                    try:
                        self.catch_up()
                    except StoreError:
                        pass  # caught up at its next read
            return result

        d = self.store.meta.run(transaction)
        d.addBoth(back)
        d.addCallback(then)
        d.addBoth(caught_up)
        return d

    def flush(self):
        # Every change above committed before it returned.
        return defer.succeed(None)

    def copy_to(self, uids, destination):
        if not isinstance(destination, PostgresFolder):
            return self._copy_by_append(uids, destination)
        wanted = sorted(set(uids))

        def copy(conn):
            with conn.transaction():
                rows = conn.execute(
                    "SELECT uid, message_id, flags, keywords, internal_date, size, shown_size FROM mailbox_message"
                    " WHERE mailbox_id = %s AND uid = ANY(%s) ORDER BY uid",
                    (self.mailbox_id, wanted),
                ).fetchall()
                if not rows:
                    return [], None, []
                first, modseq = _bump(conn, destination.mailbox_id, "added", [], len(rows))
                pairs = []
                entries = []
                with conn.cursor().copy(
                    "COPY mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, internal_date, modseq, size, shown_size) FROM STDIN"
                ) as out:
                    for n, (uid, message_id, flags, keywords, internal_date, size, shown_size) in enumerate(rows):
                        key = new_key()
                        out.write_row((destination.mailbox_id, first + n, message_id, key, flags, keywords, internal_date, modseq, size, shown_size))
                        pairs.append((uid, first + n))
                        entries.append((first + n, key, flag_set(" ".join(flags + keywords)), size, internal_date, message_id))
                return pairs, modseq, entries

        # A copy shares the message rows: no bytes move, so it is one short
        # transaction on the reactor's connection.
        try:
            pairs, modseq, entries = self._run(copy)
        except StoreError as e:
            return defer.fail(e)
        if modseq is not None:
            destination.added_here(modseq, entries)
        return defer.succeed(pairs)

    def _copy_by_append(self, uids, destination):
        pairs = []
        ds = []
        for uid in sorted(set(uids)):
            try:
                info = self.info(uid)
            except NoSuchMessage:
                continue
            d = destination.append(self.read(uid), info.flags, info.internal_date)
            d.addCallback(lambda new, uid=uid: pairs.append((uid, new)))
            ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: pairs)

    def take_new(self) -> list[int]:
        rows = self._run(
            lambda c: c.execute(
                "UPDATE mailbox_message SET recent = false WHERE mailbox_id = %s AND recent RETURNING uid", (self.mailbox_id,)
            ).fetchall()
        )
        return sorted(uid for (uid,) in rows)

    def recent(self) -> list[int]:
        rows = self._run(
            lambda c: c.execute("SELECT uid FROM mailbox_message WHERE mailbox_id = %s AND recent", (self.mailbox_id,)).fetchall()
        )
        return sorted(uid for (uid,) in rows)


class Opened:
    """
    What L{PostgresAccount.select_later} read for a SELECT: C{recent}
    (the \\Recent UIDs, ascending), C{selection} (as
    L{PostgresFolder.selection}), C{uid_next} (UIDNEXT) and
    C{highest_modseq} (HIGHESTMODSEQ), so the reply needs no database.
    """

    __slots__ = ("recent", "selection", "uid_next", "highest_modseq")

    def __init__(self, recent: list[int], selection: tuple, uid_next: int, highest_modseq: int):
        self.recent = recent
        self.selection = selection
        self.uid_next = uid_next
        self.highest_modseq = highest_modseq


@implementer(IMailAccount)
class PostgresAccount:
    def __init__(self, store: "PostgresStore", address: str, account_id: int):
        self.store = store
        self.address = address
        self.account_id = account_id

    def _run(self, function, *args):
        return self.store.db.run(function, *args)

    def folder(self, name: str) -> PostgresFolder:
        name = normalize_folder_name(name)
        row = self._run(
            lambda c: c.execute(
                "SELECT id, uid_validity, highest_modseq FROM mailbox WHERE account_id = %s AND name = %s",
                (self.account_id, name),
            ).fetchone()
        )
        if row is None:
            raise NoSuchFolder(name)
        return self.store._folder(self, row[0], name, row[1], row[2])

    def select_later(self, name: str, readonly: bool = False, shown: bool = False) -> defer.Deferred:
        """
        Open folder C{name} for IMAP SELECT (EXAMINE when C{readonly}, RFC
        3501 §6.3.1-2) with its reads on the store's L{MetaConnection} (a
        worker thread), so the reactor does not wait for the database: the
        mailbox row, the cache's rows when this hub has not loaded them or
        they are behind, and the \\Recent messages this session takes
        (SELECT) or sees (EXAMINE). A L{Deferred} of (the folder, an
        L{Opened}). With C{shown}, the sizes of the messages a session
        without UTF8 is sent downgraded are read too
        (L{PostgresFolder.downgraded_sizes}, for a POP3 login). For the
        rest of the reactor turn the folder's calls take its cache as
        current (L{PostgresFolder._just_looked}).

        @raise NoSuchFolder: (as the failure) there is no such folder.
        @raise StoreUnavailable: (as the failure) the database cannot be
            reached.
        """
        name = normalize_folder_name(name)
        account_id = self.account_id
        known = self.store._known_folder(account_id, name)
        known_id = known.mailbox_id if known is not None and known._table is not None else None
        watermark = known._watermark if known_id is not None else -1

        def read(conn):
            row = conn.execute(
                "SELECT id, uid_validity, highest_modseq, uid_next FROM mailbox WHERE account_id = %s AND name = %s", (account_id, name)
            ).fetchone()
            if row is None:
                return None
            summary = None
            if row[0] != known_id or row[2] > watermark:
                summary = conn.execute(pgcache.SUMMARY, (row[0],), binary=True).fetchone()
                if summary is None:
                    return None  # (deleted meanwhile)
            if readonly:
                recent = conn.execute("SELECT uid FROM mailbox_message WHERE mailbox_id = %s AND recent", (row[0],)).fetchall()
            else:
                recent = conn.execute(
                    "UPDATE mailbox_message SET recent = false WHERE mailbox_id = %s AND recent RETURNING uid", (row[0],)
                ).fetchall()
            sizes = None
            if shown:
                sizes = conn.execute(
                    "SELECT uid, shown_size FROM mailbox_message WHERE mailbox_id = %s AND shown_size IS NOT NULL", (row[0],)
                ).fetchall()
            return row, summary, sorted(uid for (uid,) in recent), sizes

        def opened(got):
            if got is None:
                raise NoSuchFolder(name)
            (mailbox_id, uid_validity, modseq, uid_next), summary, recent, sizes = got
            folder = self.store._folder(self, mailbox_id, name, uid_validity, modseq)
            folder._opened(summary, modseq)
            folder._just_looked()
            if sizes is not None and folder._table is not None:
                # (every UID of the cache was there when they were read)
                table = folder._table
                folder._shown = (table.uids[-1] if len(table) else 0, dict(sizes))
            selection = folder.selection(look=False)
            last = selection[0][-1] if len(selection[0]) else 0
            return folder, Opened(recent, selection, max(uid_next, last + 1), folder.told_modseq())

        return self.store.meta.run(read).addCallback(opened)

    def counts_later(self) -> defer.Deferred:
        """
        Each folder's message count and how many lack C{\\Seen}, in one
        query on the store's L{MetaConnection} (a worker thread), so the
        reactor does not wait for the database: a L{Deferred} of a list of
        (name, messages, unseen), INBOX first, then by name (as
        L{folders}). Fails with L{StoreUnavailable} if the database cannot
        be reached.
        """
        account_id = self.account_id

        def count(conn):
            return conn.execute(
                "SELECT m.name, count(mm.uid), count(mm.uid) FILTER (WHERE NOT %s = ANY(mm.flags))"
                " FROM mailbox m LEFT JOIN mailbox_message mm ON mm.mailbox_id = m.id"
                " WHERE m.account_id = %s GROUP BY m.name",
                (SEEN, account_id),
            ).fetchall()

        def ordered(rows):
            found = {name: (name, int(messages), int(unseen)) for name, messages, unseen in rows}
            return [found[INBOX]] * (INBOX in found) + [found[n] for n in sorted(found) if n != INBOX]

        return self.store.meta.run(count).addCallback(ordered)

    def folders(self) -> list[str]:
        rows = self._run(lambda c: c.execute("SELECT name FROM mailbox WHERE account_id = %s", (self.account_id,)).fetchall())
        names = sorted(n for (n,) in rows if n != INBOX)
        return [INBOX] + names

    def create_folder(self, name: str) -> PostgresFolder:
        name = normalize_folder_name(name)
        parts = name.split(DELIMITER)
        import psycopg

        def create(conn):
            with conn.transaction():
                for i in range(1, len(parts)):
                    conn.execute(
                        "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.account_id, DELIMITER.join(parts[:i]), new_uid_validity(conn)),
                    )
                try:
                    with conn.transaction():
                        made = conn.execute(
                            "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s) RETURNING id, uid_validity",
                            (self.account_id, name, new_uid_validity(conn)),
                        ).fetchone()
                except psycopg.errors.UniqueViolation:
                    return None
                self._notify_list_changed(conn)
                return made

        row = self._run(create)
        if row is None:
            raise FolderExists(name)
        return self.store._folder(self, row[0], name, row[1], 0)

    def delete_folder(self, name: str) -> None:
        name = normalize_folder_name(name)
        if name == INBOX:
            raise NoSuchFolder("INBOX cannot be deleted")

        def delete(conn):
            with conn.transaction():
                row = conn.execute(
                    "DELETE FROM mailbox WHERE account_id = %s AND name = %s RETURNING id", (self.account_id, name)
                ).fetchone()
                if row is None:
                    return None
                # (its subscription stays: L{renamed_subscriptions})
                conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"{row[0]} gone"))
                self._notify_list_changed(conn)
                return row[0]

        # The message rows of the folder: collected before the cascade.
        def orphans(conn):
            return [
                m
                for (m,) in conn.execute(
                    "SELECT message_id FROM mailbox_message JOIN mailbox ON mailbox.id = mailbox_id"
                    " WHERE account_id = %s AND name = %s",
                    (self.account_id, name),
                ).fetchall()
            ]

        messages = self._run(orphans)
        mailbox_id = self._run(delete)
        if mailbox_id is None:
            raise NoSuchFolder(name)
        self._run(self.store.blobs.drop, messages)
        self.store._gone(mailbox_id)

    def rename_folder(self, old: str, new: str) -> None:
        old, new = normalize_folder_name(old), normalize_folder_name(new)
        import psycopg

        def rename(conn):
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id, name FROM mailbox WHERE account_id = %s AND (name = %s OR left(name, %s) = %s) FOR UPDATE",
                    (self.account_id, old, len(old) + 1, old + DELIMITER),
                ).fetchall()
                if not rows:
                    return None
                try:
                    with conn.transaction():
                        for mailbox_id, name in rows:
                            conn.execute(
                                "UPDATE mailbox SET name = %s WHERE id = %s", (new + name[len(old):], mailbox_id)
                            )
                except psycopg.errors.UniqueViolation:
                    return False
                parts = new.split(DELIMITER)
                for i in range(1, len(parts)):
                    conn.execute(
                        "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.account_id, DELIMITER.join(parts[:i]), new_uid_validity(conn)),
                    )
                if old == INBOX:
                    # RFC 3501 §6.3.5: renaming INBOX moves its messages and
                    # leaves an empty INBOX behind.
                    conn.execute(
                        "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s)",
                        (self.account_id, INBOX, new_uid_validity(conn)),
                    )
                self._rename_subscriptions(conn, old, new)
                for mailbox_id, _ in rows:
                    conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"{mailbox_id} gone"))
                self._notify_list_changed(conn)
                return [mailbox_id for mailbox_id, _ in rows]

        moved = self._run(rename)
        if moved is None:
            raise NoSuchFolder(old)
        if moved is False:
            raise FolderExists(new)
        # A session that had the old name selected sees it gone, as with
        # Maildir, where the directory moved.
        for mailbox_id in moved:
            self.store._gone(mailbox_id)

    def folder_identity(self, name: str) -> tuple[int, int] | None:
        """
        What a folder keeps across a RENAME, by any hub: its C{mailbox}
        row's id (RENAME changes the row's name only) and UIDVALIDITY; None
        when there is no such folder or the database cannot say. NOTIFY
        tells a rename with it (imap/notify.py: MailboxName with OLDNAME).
        """
        try:
            row = self._run(
                lambda c: c.execute("SELECT id, uid_validity FROM mailbox WHERE account_id = %s AND name = %s", (self.account_id, normalize_folder_name(name))).fetchone()
            )
        except StoreError:
            return None
        return (row[0], row[1]) if row is not None else None

    def folder_identities(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """L{folder_identity} of each of C{names} that exists, in one query ({} when the database cannot say)."""
        if not names:
            return {}
        try:
            rows = self._run(
                lambda c: c.execute(
                    "SELECT name, id, uid_validity FROM mailbox WHERE account_id = %s AND name = ANY(%s)", (self.account_id, [normalize_folder_name(n) for n in names])
                ).fetchall()
            )
        except StoreError:
            return {}
        return {name: (mailbox_id, validity) for name, mailbox_id, validity in rows}

    def subscriptions(self) -> list[str]:
        rows = self._run(lambda c: c.execute("SELECT name FROM subscription WHERE account_id = %s ORDER BY name", (self.account_id,)).fetchall())
        return [n for (n,) in rows]

    def subscribe(self, name: str) -> None:
        name = normalize_folder_name(name)

        def subscribe(conn):
            with conn.transaction():
                conn.execute("INSERT INTO subscription (account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (self.account_id, name))
                self._notify_list_changed(conn)

        self._run(subscribe)

    def unsubscribe(self, name: str) -> None:
        name = normalize_folder_name(name)

        def unsubscribe(conn):
            with conn.transaction():
                conn.execute("DELETE FROM subscription WHERE account_id = %s AND name = %s", (self.account_id, name))
                self._notify_list_changed(conn)

        self._run(unsubscribe)

    def _rename_subscriptions(self, conn, old: str, new: str) -> None:
        """In the RENAME's transaction: the subscriptions move with it (L{renamed_subscriptions})."""
        subscribed = [
            n
            for (n,) in conn.execute(
                "SELECT name FROM subscription WHERE account_id = %s AND (name = %s OR name = %s OR left(name, %s) = %s) FOR UPDATE",
                (self.account_id, INBOX, old, len(old) + 1, old + DELIMITER),
            ).fetchall()
        ]
        gone, made = renamed_subscriptions(subscribed, old, new)
        if gone:
            conn.execute("DELETE FROM subscription WHERE account_id = %s AND name = ANY(%s)", (self.account_id, sorted(gone)))
        for name in sorted(made):
            conn.execute("INSERT INTO subscription (account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (self.account_id, name))

    def _notify_list_changed(self, conn) -> None:
        """In a transaction that changes the mailbox list or the subscriptions: tell every hub at its commit (L{watch_changes})."""
        conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"account {self.account_id}"))

    def watch_changes(self, callback) -> None:
        """
        Call C{callback()} when this account's mailbox list or
        subscriptions change, on any hub (their C{NOTIFY}), and every
        L{DEAF_POLL} seconds while the C{LISTEN} connection is down. For
        NOTIFY's MailboxName and SubscriptionChange
        (L{twisted_mailhub.store.watch.StoreSignal}): no poll.
        """
        self.store._watch(("account", self.account_id), callback)

    def unwatch_changes(self, callback) -> None:
        self.store._unwatch(("account", self.account_id), callback)


@implementer(IMailStore)
class PostgresStore:
    """
    All mail of every hub that shares the database at C{dsn} (a libpq
    connection string). L{start} begins listening for other hubs' changes;
    L{close} stops listening and closes the connections.
    """

    def __init__(self, dsn: str, reactor: Any = None, create: bool = True, blobs: IMessageBlobs | None = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.dsn = dsn
        self.reactor = reactor
        self.db = Database(dsn)
        self.locks = Database(dsn, "mailhub pop3 locks")  # holds POP3's advisory locks
        self.readers = ReadConnections(dsn)  # worker threads' reads (BlobReader)
        self.meta = MetaConnection(dsn, reactor)  # a worker thread's writes for the reactor (set_flags_later ...)
        # (no deadline: a migration may wait for another hub's)
        self.db.run(lambda conn: pgschema.check(conn, create), deadline=None)
        self.blobs: IMessageBlobs = blobs if blobs is not None else ByteaBlobs()
        self.committer = GroupCommitter(self, reactor)
        self.listening = False
        self._folders: weakref.WeakValueDictionary[int, PostgresFolder] = weakref.WeakValueDictionary()
        # The folders last read, kept (with their caches) when no session
        # holds them: most recent last.
        self._kept: collections.OrderedDict[int, PostgresFolder] = collections.OrderedDict()
        self._accounts: dict[str, int] = {}
        self._listener: ChangeListener | None = None
        # watch_changes: mailbox id (or ("account", id)) -> callbacks; and their poll while deaf
        self._watchers: dict[Any, set] = {}
        self._deaf_poll: Any = None

    def start(self) -> None:
        """Listen for changes made by other hubs."""
        watchdog.hurry_at_shutdown(self.reactor)  # (a read waiting on a frozen database does not hold the shutdown)
        if self._listener is None:
            self._listener = ChangeListener(self)
            self._listener.start()

    def close(self) -> None:
        self._watchers.clear()
        self._poll_while_deaf()
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.committer.close()
        self.db.close()
        self.locks.close()
        self.readers.close()
        self.meta.close()

    def lock_maildrop_later(self, address: str) -> defer.Deferred:
        """
        L{lock_maildrop} with the lock taken, and later given back, by the
        L{MetaConnection}'s worker thread on the lock connection (which
        the reactor then does not use): a L{Deferred} of the function that
        releases it, or of L{None} if another hub holds it; it fails with
        L{StoreUnavailable} if the database cannot be reached.
        """
        key = address.lower()
        locks = self.locks

        def lock(conn):
            return conn.execute("SELECT pg_try_advisory_lock(1, hashtext(%s))", (key,)).fetchone()[0], conn

        def taken(got):
            ok, held = got
            if not ok:
                return None

            def unlocked(conn):
                # (a lost lock connection took the lock with it: nothing to give back)
                if conn is held and not held.closed:
                    conn.execute("SELECT pg_advisory_unlock(1, hashtext(%s))", (key,))

            def unlock() -> defer.Deferred:
                # (fires once it is given back: a client that logs in again
                # at once after QUIT's +OK must find it free)
                return self.meta.run(unlocked, on=locks).addErrback(lambda _: None)

            return unlock

        return self.meta.run(lock, on=locks).addCallback(taken)

    def lock_maildrop(self, address: str):
        """
        POP3's one session per maildrop (RFC 1939 §8) across every hub: a
        session-level advisory lock on this hub's lock connection. Returns
        a function that releases it, or L{None} if another hub holds it.
        If the lock connection is lost, PostgreSQL drops its locks with it
        (as it does when a hub dies), and the release does nothing.
        """
        key = address.lower()
        taken = self.locks.run(
            lambda c: c.execute("SELECT pg_try_advisory_lock(1, hashtext(%s))", (key,)).fetchone()[0]
        )
        if not taken:
            return None
        held = self.locks.connection()

        def unlock() -> None:
            if held is self.locks._conn and not held.closed:
                try:
                    # (in the reactor: a database that does not answer is cut, as in Database.run)
                    watchdog.call(held, pgtimeouts.CALL_DEADLINE, lambda c: c.execute("SELECT pg_advisory_unlock(1, hashtext(%s))", (key,)))
                except Exception:
                    self.locks.close()

        return unlock

    def account(self, address: str) -> PostgresAccount:
        key = address.lower()
        account_id = self._accounts.get(key)
        if account_id is None:
            account_id = self._accounts[key] = self.db.run(ensure_account, key)
        return PostgresAccount(self, address, account_id)

    def deliver(self, address: str, message: bytes):
        key = new_key()
        write = PendingWrite(address, None, bytes(message), [], [], time.time(), key)
        return self.committer.submit(write).addCallback(lambda _: key)

    # -- the folder objects of this hub ---------------------------------

    def _folder(self, account, mailbox_id: int, name: str, uid_validity: int, modseq: int) -> PostgresFolder:
        folder = self._folders.get(mailbox_id)
        if folder is None or folder.gone:
            folder = PostgresFolder(self, account, mailbox_id, name, uid_validity, modseq)
            self._folders[mailbox_id] = folder
        return folder

    def _known_folder(self, account_id: int, name: str) -> PostgresFolder | None:
        """This hub's folder object of that account and name, if it has one (no database read)."""
        for folder in list(self._folders.values()):
            if folder.account.account_id == account_id and folder.name == name and not folder.gone:
                return folder
        return None

    def _gone(self, mailbox_id: int) -> None:
        folder = self._folders.pop(mailbox_id, None)
        self._kept.pop(mailbox_id, None)
        if folder is not None:
            folder.gone = True
        self._tell_watchers(self._watchers.get(mailbox_id, ()))

    # -- watch_changes -----------------------------------------------------------

    def _watch(self, key: Any, callback) -> None:
        self._watchers.setdefault(key, set()).add(callback)
        self._poll_while_deaf()

    def _unwatch(self, key: Any, callback) -> None:
        callbacks = self._watchers.get(key)
        if callbacks is not None:
            callbacks.discard(callback)
            if not callbacks:
                del self._watchers[key]
        self._poll_while_deaf()

    def _tell_watchers(self, callbacks) -> None:
        for callback in list(callbacks):
            try:
                callback()
            except Exception:
                log.failure("a folder watcher failed")

    def _tell_every_watcher(self) -> None:
        for callbacks in list(self._watchers.values()):
            self._tell_watchers(callbacks)

    def _poll_while_deaf(self) -> None:
        """Call every watcher each L{DEAF_POLL} seconds while not listening and someone watches; else not."""
        wanted = bool(self._watchers) and not self.listening
        if wanted and self._deaf_poll is None:
            from twisted.internet import task

            self._deaf_poll = task.LoopingCall(self._tell_every_watcher)
            self._deaf_poll.clock = self.reactor
            self._deaf_poll.start(DEAF_POLL, now=False)
        elif not wanted and self._deaf_poll is not None:
            if self._deaf_poll.running:
                self._deaf_poll.stop()
            self._deaf_poll = None

    def _touch(self, folder: PostgresFolder) -> None:
        """Keep C{folder}'s cache (it was just read), dropping the least recent beyond the limits."""
        kept = self._kept
        kept[folder.mailbox_id] = folder
        kept.move_to_end(folder.mailbox_id)
        total = sum(f.cached for f in kept.values())
        while len(kept) > 1 and (len(kept) > KEEP_FOLDERS or total > KEEP_MESSAGES):
            _, dropped = kept.popitem(last=False)
            total -= dropped.cached

    def _added_here(self, mailbox_id: int, modseq: int, placed: list) -> None:
        """A group commit placed messages in a mailbox with C{modseq}: (L{PendingWrite}, UID, message id) each."""
        folder = self._folders.get(mailbox_id)
        if folder is not None:
            try:
                folder.added_here(modseq, [write.row(uid, message_id) for write, uid, message_id in placed])
            except StoreError:
                pass  # caught up at its next read

    def _notified(self, payload: str) -> None:
        """A C{NOTIFY} from some hub (this one included)."""
        mailbox, _, what = payload.partition(" ")
        if mailbox == "account":
            # a mailbox list or the subscriptions changed (PostgresAccount.watch_changes)
            try:
                self._tell_watchers(self._watchers.get(("account", int(what)), ()))
            except ValueError:
                pass
            return
        try:
            mailbox_id = int(mailbox)
        except ValueError:
            return
        if what == "gone":
            self._gone(mailbox_id)
            return
        folder = self._folders.get(mailbox_id)
        # A folder nobody listens to catches up when it is next read.
        if folder is None or not folder._listeners.count():
            return
        try:
            modseq = int(what)
            if modseq <= folder._watermark or modseq in folder._announced:
                return  # told already (a change this hub made)
            if folder._writing:
                folder._behind = max(folder._behind, modseq)  # caught up after that write (PostgresFolder._later)
                return
            folder.catch_up()
        except (ValueError, StoreError):
            pass

    def _listening(self, on: bool) -> None:
        was = self.listening
        self.listening = on
        self._poll_while_deaf()
        if on:
            # Notifications may have been missed while the connection was down.
            for folder in list(self._folders.values()):
                if not folder._listeners.count():
                    continue
                try:
                    folder.catch_up()
                except StoreError:
                    pass
            if not was:
                self._tell_every_watcher()  # (a folder may have gone meanwhile: they look)


class ChangeListener:
    """
    The C{LISTEN mailhub_changes} connection, read by the reactor like any
    socket (no thread: a thread woken at every commit of every hub would
    contend with the reactor for the GIL). Each notification goes to
    L{PostgresStore._notified}. When the connection is lost it is made
    again (in a thread, as making it blocks) after a pause that grows to
    5 s, and the store catches up from the journal once it is back.
    """

    def __init__(self, store: "PostgresStore"):
        self.store = store
        self.conn: Any = None
        self.pgconn: Any = None
        self._socket: socket.socket | None = None
        self._pause = 0.1
        self._stopping = False
        self._retry: Any = None
        self._pool: ThreadPool | None = None
        # Is the server still there? (_ping: the next ping; _pinged: its deadline)
        self._ping_call: Any = None
        self._pinged: Any = None

    def start(self) -> None:
        self._pool = ThreadPool(0, 1, "mailhub-postgresql-listen")
        self._pool.start()
        self._open()

    def stop(self) -> None:
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._drop()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def _open(self) -> None:
        from twisted.internet.threads import deferToThreadPool

        self._retry = None
        if self._stopping or self._pool is None:
            return
        deferToThreadPool(self.store.reactor, self._pool, self._connect, self.store.dsn).addCallbacks(self._opened, self._failed)

    @staticmethod
    def _connect(dsn: str) -> Any:
        """(In a thread.) A connection that listens for every hub's changes."""
        import psycopg

        conn = psycopg.connect(libpq_dsn(dsn), autocommit=True, **connection_options(libpq_dsn(dsn), "mailhub listen"))
        try:
            conn.execute(f"LISTEN {pgschema.CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _opened(self, conn: Any) -> None:
        if self._stopping:
            conn.close()
            return
        self.conn, self.pgconn = conn, conn.pgconn
        self.pgconn.nonblocking = 1
        # A duplicate of the socket for the reactor: libpq closes its own
        # when the connection fails (see CommitConnection).
        self._socket = socket.socket(fileno=os.dup(self.pgconn.socket))
        self.store.reactor.addReader(self)
        self._pause = 0.1
        self._ping_call = self.store.reactor.callLater(pgtimeouts.LISTEN_PING, self._ping)
        self.store._listening(True)
        self.doRead()  # what came while it was handed over

    def _ping(self) -> None:
        """
        Every L{pgtimeouts.LISTEN_PING} s, an empty query: a connection that
        only listens has nothing else to find a frozen server by (its
        kernel answers TCP keepalives). No answer in
        L{pgtimeouts.CALL_DEADLINE} s: L{_no_answer}.
        """
        import psycopg

        self._ping_call = None
        if self.pgconn is None:
            return
        try:
            self.pgconn.send_query(b"")
            self.pgconn.flush()
        except psycopg.Error as e:
            self._drop()
            self._failed(Failure(e))
            return
        self._pinged = self.store.reactor.callLater(pgtimeouts.CALL_DEADLINE, self._no_answer)

    def _no_answer(self) -> None:
        """The ping had no answer: the connection is made again, and the store polls meanwhile (L{PostgresStore._listening})."""
        self._pinged = None
        if self.pgconn is None:
            return
        self._drop()
        self._failed(Failure(NoAnswer(f"no answer from the database in {pgtimeouts.CALL_DEADLINE:g} s")))

    def _ponged(self, pgconn: Any) -> None:
        """(In L{doRead}.) Take the ping's answer if it has all come, and ask again later."""
        while not pgconn.is_busy():
            if pgconn.get_result() is None:
                call, self._pinged = self._pinged, None
                if call.active():
                    call.cancel()
                self._ping_call = self.store.reactor.callLater(pgtimeouts.LISTEN_PING, self._ping)
                return

    def _failed(self, reason) -> None:
        error = reason.value
        log.warn("lost the LISTEN connection to the mail database: {reason}", reason=_reason(error))
        self.store._listening(False)
        if not self._stopping:
            self._retry = self.store.reactor.callLater(self._pause, self._open)
            self._pause = min(self._pause * 2, 5.0)

    # -- IReadDescriptor -------------------------------------------------------

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "mailhub-postgresql-listen"

    def doRead(self) -> None:
        import psycopg

        pgconn = self.pgconn
        try:
            pgconn.consume_input()
            if self._pinged is not None:
                self._ponged(pgconn)
            while True:
                notify = pgconn.notifies()
                if notify is None:
                    break
                self.store._notified(notify.extra.decode())
                if self.pgconn is not pgconn:
                    return  # stopped meanwhile
        except psycopg.Error as e:
            self._drop()
            self._failed(Failure(e))

    def connectionLost(self, reason) -> None:
        self._drop()
        if not self.store.reactor.running:
            # The reactor stopping (disconnectAll, see CommitConnection): no
            # loss to log or to make good; the store closes after it.
            self._stopping = True
            return
        self._failed(reason)

    def _drop(self) -> None:
        for call in (self._ping_call, self._pinged):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._pinged = None
        if self.conn is None:
            return
        self.store.reactor.removeReader(self)
        self._socket.close()
        self._socket = None
        try:
            self.conn.close()
        except Exception:
            pass
        self.conn = self.pgconn = None
