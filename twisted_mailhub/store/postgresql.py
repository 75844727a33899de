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

How psycopg meets the reactor: L{IFolder}'s reads and flag changes are
synchronous calls, so they run on one connection in the reactor thread
(a few hundred microseconds on loopback). Deliveries, APPEND and COPY,
which wait for a disk flush, run in a small pool of worker threads with a
connection each (Twisted's C{adbapi} model, without its one-call-one-
transaction limit): while the workers are busy, new writes queue and the
next free worker commits all of them in one transaction (group commit, as
L{twisted_mailhub.store.durable} does for Maildir). A thread that sleeps
on the C{LISTEN} connection hands notifications to the reactor. The
asyncio reactor would let psycopg's async connections run in the reactor
thread, but it changes the reactor under every other listener and still
needs threads for the synchronous interface; the thread pool does not.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
import weakref
from typing import Any, Iterable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from twisted_mailhub.store import pgschema
from twisted_mailhub.store.base import (
    DELIMITER,
    Listeners,
    apply_flags,
    normalize_folder_name,
    split_flags,
)
from twisted_mailhub.store.interfaces import (
    INBOX,
    FolderChange,
    FolderExists,
    IFolder,
    IMailAccount,
    IMailStore,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
    StoreError,
    StoreUnavailable,
)

log = Logger()

# Most writes one group-commit transaction takes.
BATCH_MOST = 256
# Worker threads (and connections) for writes.
WRITERS = 4
# Slice of a message read at a time by open().
CHUNK = 256 * 1024


def _connect(dsn: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise SystemExit("mailhub: --store postgresql needs the PostgreSQL driver: python3 -m pip install 'twisted-mailhub[postgresql]' (psycopg 3)")

    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        raise StoreUnavailable(f"cannot reach the mail database: {_reason(e)}") from None
    # Acknowledged means committed to disk on the server (RFC 5321 §6.1).
    conn.execute("SET synchronous_commit = on")
    return conn


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _is_connection_error(e: BaseException) -> bool:
    import psycopg

    return isinstance(e, psycopg.OperationalError) or (
        isinstance(e, psycopg.Error) and getattr(e, "sqlstate", None) and str(e.sqlstate).startswith(("08", "57P"))
    )


class Database:
    """
    The reactor thread's connection: C{run(function)} calls
    C{function(conn)}, reconnecting once if the connection was lost before,
    and turns a database it cannot reach into L{StoreUnavailable}.
    """

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: Any = None

    def connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self.dsn)
        return self._conn

    def run(self, function, *args) -> Any:
        import psycopg

        for attempt in (1, 2):
            conn = self.connection()
            try:
                return function(conn, *args)
            except psycopg.Error as e:
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


class GroupCommitter:
    """
    Writes messages in worker threads, several per transaction when they
    queue up. Each L{PendingWrite}'s Deferred fires with its
    (mailbox id, UID, modseq) after COMMIT, or fails with a L{StoreError}.
    """

    def __init__(self, store: "PostgresStore", reactor: Any, width: int = WRITERS):
        self.store = store
        self.reactor = reactor
        self.width = width
        self.pending: list[PendingWrite] = []
        self.in_flight = 0
        self.pool = ThreadPool(0, width, "mailhub-postgresql")
        self.pool.start()
        self._local = threading.local()
        self._connections: list[Any] = []
        self._account_ids: dict[str, int] = {}

    def submit(self, write: PendingWrite) -> defer.Deferred:
        self.pending.append(write)
        self._kick()
        return write.deferred

    def _kick(self) -> None:
        while self.pending and self.in_flight < self.width:
            batch, self.pending = self.pending[:BATCH_MOST], self.pending[BATCH_MOST:]
            self.in_flight += 1
            d = threads.deferToThreadPool(self.reactor, self.pool, self._write_batch, batch)
            d.addBoth(self._done, batch)

    def _done(self, result: Any, batch: list[PendingWrite]) -> None:
        self.in_flight -= 1
        self._kick()
        if isinstance(result, list):
            announced: set[tuple[int, int]] = set()
            for write, outcome in zip(batch, result):
                if isinstance(outcome, Exception):
                    write.deferred.errback(outcome)
                    continue
                mailbox_id, uid, modseq, uids = outcome
                if (mailbox_id, modseq) not in announced:
                    announced.add((mailbox_id, modseq))
                    self.store._announce(mailbox_id, modseq, FolderChange(added=tuple(uids)))
                write.deferred.callback((mailbox_id, uid, modseq))
        else:
            error = result.value
            if not isinstance(error, StoreError):
                log.failure("PostgreSQL write failed", result)
                error = StoreUnavailable(f"the mail database failed: {_reason(error)}")
            for write in batch:
                write.deferred.errback(error)

    # -- in a worker thread ----------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._local.conn = _connect(self.store.dsn)
            self._connections.append(conn)
        return conn

    def _write_batch(self, batch: list[PendingWrite]) -> list:
        import psycopg

        for attempt in (1, 2):
            conn = self._connection()
            committing = False
            try:
                # New accounts are made (and committed) before the batch, so
                # that a cached account id always has its INBOX visible to
                # every connection.
                accounts = {w.address: self._account_id(conn, w.address) for w in batch if w.mailbox_id is None}
                with conn.transaction():
                    result = self._write(conn, batch, accounts)
                    committing = True
                return result
            except psycopg.Error as e:
                if not _is_connection_error(e):
                    raise StoreError(f"the mail database refused the message: {_reason(e)}") from None
                self._local.conn = None
                try:
                    conn.close()
                except Exception:
                    pass
                # A lost COMMIT may have happened: do not write twice.
                if attempt == 2 or committing:
                    raise StoreUnavailable(f"lost the mail database: {_reason(e)}") from None
        raise AssertionError("unreachable")

    def _account_id(self, conn: Any, address: str) -> int:
        key = address.lower()
        found = self._account_ids.get(key)
        if found is None:
            found = self._account_ids[key] = ensure_account(conn, key)
        return found

    def _write(self, conn: Any, batch: list[PendingWrite], accounts: dict[str, int]) -> list:
        # The bytes first, outside the mailbox row lock.
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO message (size, body) VALUES (%s, %b) RETURNING id",
                [(len(w.message), w.message) for w in batch],
                returning=True,
            )
            message_ids = []
            while True:
                message_ids.append(cursor.fetchone()[0])
                if not cursor.nextset():
                    break
        # Then the UIDs, one UPDATE per mailbox, in id order (no deadlocks).
        groups: dict[int, list[int]] = {}
        for i, write in enumerate(batch):
            mailbox_id = write.mailbox_id
            if mailbox_id is None:
                account_id = accounts[write.address]
                row = conn.execute(
                    "SELECT id FROM mailbox WHERE account_id = %s AND name = %s", (account_id, INBOX)
                ).fetchone()
                if row is None:
                    raise StoreError(f"{write.address} has no INBOX")
                mailbox_id = row[0]
            groups.setdefault(mailbox_id, []).append(i)
        result: list = [None] * len(batch)
        rows = []
        orphans = []
        for mailbox_id in sorted(groups):
            members = groups[mailbox_id]
            try:
                first, modseq = _bump(conn, mailbox_id, "added", [], len(members))
            except NoSuchFolder as e:
                for i in members:
                    result[i] = e
                    orphans.append(message_ids[i])
                continue
            uids = list(range(first, first + len(members)))
            for uid, i in zip(uids, members):
                w = batch[i]
                rows.append((mailbox_id, uid, message_ids[i], w.key, w.flags, w.keywords, w.internal_date, modseq))
                result[i] = (mailbox_id, uid, modseq, uids)
        if rows:
            with conn.cursor().copy(
                "COPY mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, internal_date, modseq) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
        if orphans:
            conn.execute("DELETE FROM message WHERE id = ANY(%s)", (orphans,))
        return result

    def close(self) -> None:
        self.pool.stop()
        for conn in self._connections:
            try:
                conn.close()
            except Exception:
                pass
        self._connections = []


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


_INFO = "SELECT uid, key, flags, keywords, size, internal_date FROM mailbox_message JOIN message ON message.id = message_id"


def _info(row) -> MessageInfo:
    uid, key, flags, keywords, size, internal_date = row
    return MessageInfo(uid=uid, key=key, flags=frozenset(flags) | frozenset(keywords), size=size, internal_date=internal_date)


class MessageReader(io.RawIOBase):
    """
    One message's bytes read from the database in slices of L{CHUNK}
    octets: a 25 MB message is never held whole.
    """

    def __init__(self, db: Database, message_id: int, size: int):
        self._db = db
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
        data = self._db.run(
            lambda conn: conn.execute(
                "SELECT substring(body FROM %s FOR %s) FROM message WHERE id = %s", (self._at + 1, want, self._id), binary=True
            ).fetchone()
        )
        if data is None:
            raise NoSuchMessage("the message is gone")
        chunk = data[0]
        buffer[: len(chunk)] = chunk
        self._at += len(chunk)
        return len(chunk)


@implementer(IFolder)
class PostgresFolder:
    """
    One C{mailbox} row. Announces each modseq's change once to its
    listeners, whether it was made here or on another hub.
    """

    def __init__(self, store: "PostgresStore", account: "PostgresAccount", mailbox_id: int, name: str, uid_validity: int, modseq: int):
        self.store = store
        self.account = account
        self.mailbox_id = mailbox_id
        self.name = name
        self.uid_validity = uid_validity
        self.gone = False
        self._listeners = Listeners()
        self._watermark = modseq  # every modseq up to here is announced
        self._announced: set[int] = set()  # and these above it

    def _run(self, function, *args):
        return self.store.db.run(function, *args)

    @property
    def uid_next(self) -> int:
        row = self._run(lambda c: c.execute("SELECT uid_next FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
        if row is None:
            raise NoSuchFolder(self.name)
        return row[0]

    # -- changes ------------------------------------------------------------

    def announce(self, modseq: int, change: FolderChange) -> None:
        if modseq <= self._watermark or modseq in self._announced:
            return
        self._announced.add(modseq)
        self._listeners.notify(change)

    def catch_up(self) -> None:
        """Tell the listeners of every journal entry not yet told."""
        rows = self._run(
            lambda c: c.execute(
                "SELECT modseq, kind, uids FROM mailbox_change WHERE mailbox_id = %s AND modseq > %s ORDER BY modseq",
                (self.mailbox_id, self._watermark),
            ).fetchall()
        )
        for modseq, kind, uids in rows:
            self.announce(modseq, FolderChange(**{kind: tuple(uids)}))
        if rows:
            self._watermark = max(self._watermark, rows[-1][0])
            self._announced = {m for m in self._announced if m > self._watermark}

    def refresh(self) -> None:
        if self.gone:
            raise NoSuchFolder(self.name)
        if not self.store.listening:
            exists = self._run(lambda c: c.execute("SELECT 1 FROM mailbox WHERE id = %s", (self.mailbox_id,)).fetchone())
            if exists is None:
                self.gone = True
                raise NoSuchFolder(self.name)
            self.catch_up()

    def add_listener(self, listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener) -> None:
        self._listeners.remove(listener)

    # -- reading ------------------------------------------------------------

    def messages(self) -> list[MessageInfo]:
        if not self.store.listening:
            self.catch_up()
        rows = self._run(
            lambda c: c.execute(_INFO + " WHERE mailbox_id = %s ORDER BY uid", (self.mailbox_id,)).fetchall()
        )
        return [_info(row) for row in rows]

    def info(self, uid: int) -> MessageInfo:
        row = self._run(lambda c: c.execute(_INFO + " WHERE mailbox_id = %s AND uid = %s", (self.mailbox_id, uid)).fetchone())
        if row is None:
            raise NoSuchMessage(uid)
        return _info(row)

    def read(self, uid: int) -> bytes:
        row = self._run(
            lambda c: c.execute(
                "SELECT body FROM mailbox_message JOIN message ON message.id = message_id WHERE mailbox_id = %s AND uid = %s",
                (self.mailbox_id, uid),
                binary=True,
            ).fetchone()
        )
        if row is None:
            raise NoSuchMessage(uid)
        return bytes(row[0])

    def open(self, uid: int):
        row = self._run(
            lambda c: c.execute(
                "SELECT message_id, size FROM mailbox_message JOIN message ON message.id = message_id WHERE mailbox_id = %s AND uid = %s",
                (self.mailbox_id, uid),
            ).fetchone()
        )
        if row is None:
            raise NoSuchMessage(uid)
        return io.BufferedReader(MessageReader(self.store.db, row[0], row[1]), CHUNK)

    def path(self, uid: int) -> None:
        return None

    # -- writing ------------------------------------------------------------

    def append(self, message: bytes, flags: Iterable[str] = (), internal_date: float | None = None):
        system, keywords = split_flags(flags)
        write = PendingWrite(
            None, self.mailbox_id, bytes(message), sorted(system), sorted(keywords),
            internal_date if internal_date is not None else time.time(), uuid.uuid4().hex,
        )
        return self.store.committer.submit(write).addCallback(lambda result: result[1])

    def set_flags(self, uids, flags, mode="replace", origin=None):
        wanted = sorted(set(uids))
        if not wanted:
            return {}

        def change(conn):
            with conn.transaction():
                rows = conn.execute(
                    "SELECT uid, flags, keywords FROM mailbox_message WHERE mailbox_id = %s AND uid = ANY(%s) ORDER BY uid FOR UPDATE",
                    (self.mailbox_id, wanted),
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
                _, modseq = _bump(conn, self.mailbox_id, "flags", [u[2] for u in updates])
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "UPDATE mailbox_message SET flags = %s, keywords = %s, modseq = "
                        + str(int(modseq))
                        + " WHERE mailbox_id = "
                        + str(int(self.mailbox_id))
                        + " AND uid = %s",
                        updates,
                    )
                return result, modseq, tuple(u[2] for u in updates)

        result, modseq, changed = self._run(change)
        if modseq is not None:
            self.announce(modseq, FolderChange(flags=changed, origin=origin))
        return result

    def expunge(self, uids, origin=None):
        wanted = sorted(set(uids))
        if not wanted:
            return []

        def remove(conn):
            with conn.transaction():
                gone = conn.execute(
                    "DELETE FROM mailbox_message WHERE mailbox_id = %s AND uid = ANY(%s) RETURNING uid, message_id",
                    (self.mailbox_id, wanted),
                ).fetchall()
                if not gone:
                    return [], None
                removed = sorted(uid for uid, _ in gone)
                _, modseq = _bump(conn, self.mailbox_id, "expunged", removed)
                _drop_orphans(conn, [m for _, m in gone])
                return removed, modseq

        removed, modseq = self._run(remove)
        if modseq is not None:
            self.announce(modseq, FolderChange(expunged=tuple(removed), origin=origin))
        return removed

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
                    "SELECT uid, message_id, flags, keywords, internal_date FROM mailbox_message"
                    " WHERE mailbox_id = %s AND uid = ANY(%s) ORDER BY uid",
                    (self.mailbox_id, wanted),
                ).fetchall()
                if not rows:
                    return [], None, ()
                first, modseq = _bump(conn, destination.mailbox_id, "added", [], len(rows))
                pairs = []
                with conn.cursor().copy(
                    "COPY mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, internal_date, modseq) FROM STDIN"
                ) as out:
                    for n, (uid, message_id, flags, keywords, internal_date) in enumerate(rows):
                        out.write_row((destination.mailbox_id, first + n, message_id, uuid.uuid4().hex, flags, keywords, internal_date, modseq))
                        pairs.append((uid, first + n))
                return pairs, modseq, tuple(new for _, new in pairs)

        # A copy shares the message rows: no bytes move, so it is one short
        # transaction on the reactor's connection.
        try:
            pairs, modseq, added = self._run(copy)
        except StoreError as e:
            return defer.fail(e)
        if modseq is not None:
            destination.announce(modseq, FolderChange(added=added))
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


def _drop_orphans(conn: Any, message_ids: list[int]) -> None:
    """Delete message rows no folder refers to any more."""
    if message_ids:
        conn.execute(
            "DELETE FROM message m WHERE m.id = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM mailbox_message mm WHERE mm.message_id = m.id)",
            (list(set(message_ids)),),
        )


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
                        return conn.execute(
                            "INSERT INTO mailbox (account_id, name, uid_validity) VALUES (%s, %s, %s) RETURNING id, uid_validity",
                            (self.account_id, name, new_uid_validity(conn)),
                        ).fetchone()
                except psycopg.errors.UniqueViolation:
                    return None

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
                conn.execute("DELETE FROM subscription WHERE account_id = %s AND name = %s", (self.account_id, name))
                conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"{row[0]} gone"))
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
        self._run(_drop_orphans, messages)
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
                for mailbox_id, _ in rows:
                    conn.execute("SELECT pg_notify(%s, %s)", (pgschema.CHANNEL, f"{mailbox_id} gone"))
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

    def subscriptions(self) -> list[str]:
        rows = self._run(lambda c: c.execute("SELECT name FROM subscription WHERE account_id = %s ORDER BY name", (self.account_id,)).fetchall())
        return [n for (n,) in rows]

    def subscribe(self, name: str) -> None:
        name = normalize_folder_name(name)
        self._run(
            lambda c: c.execute(
                "INSERT INTO subscription (account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (self.account_id, name)
            )
        )

    def unsubscribe(self, name: str) -> None:
        name = normalize_folder_name(name)
        self._run(lambda c: c.execute("DELETE FROM subscription WHERE account_id = %s AND name = %s", (self.account_id, name)))


@implementer(IMailStore)
class PostgresStore:
    """
    All mail of every hub that shares the database at C{dsn} (a libpq
    connection string). L{start} begins listening for other hubs' changes;
    L{close} stops the worker threads and closes the connections.
    """

    def __init__(self, dsn: str, reactor: Any = None, create: bool = True):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.dsn = dsn
        self.reactor = reactor
        self.db = Database(dsn)
        self.locks = Database(dsn)  # holds POP3's advisory locks
        self.db.run(lambda conn: pgschema.check(conn, create))
        self.committer = GroupCommitter(self, reactor)
        self.listening = False
        self._folders: weakref.WeakValueDictionary[int, PostgresFolder] = weakref.WeakValueDictionary()
        self._accounts: dict[str, int] = {}
        self._listener: ChangeListener | None = None

    def start(self) -> None:
        """Listen for changes made by other hubs."""
        if self._listener is None:
            self._listener = ChangeListener(self)
            self._listener.start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self.committer.close()
        self.db.close()
        self.locks.close()

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
                    held.execute("SELECT pg_advisory_unlock(1, hashtext(%s))", (key,))
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
        key = uuid.uuid4().hex
        write = PendingWrite(address, None, bytes(message), [], [], time.time(), key)
        return self.committer.submit(write).addCallback(lambda _: key)

    # -- the folder objects of this hub ---------------------------------

    def _folder(self, account, mailbox_id: int, name: str, uid_validity: int, modseq: int) -> PostgresFolder:
        folder = self._folders.get(mailbox_id)
        if folder is None or folder.gone:
            folder = PostgresFolder(self, account, mailbox_id, name, uid_validity, modseq)
            self._folders[mailbox_id] = folder
        return folder

    def _gone(self, mailbox_id: int) -> None:
        folder = self._folders.pop(mailbox_id, None)
        if folder is not None:
            folder.gone = True

    def _announce(self, mailbox_id: int, modseq: int, change: FolderChange) -> None:
        folder = self._folders.get(mailbox_id)
        if folder is not None:
            folder.announce(modseq, change)

    def _notified(self, payload: str) -> None:
        """A C{NOTIFY} from some hub (this one included)."""
        mailbox, _, what = payload.partition(" ")
        try:
            mailbox_id = int(mailbox)
        except ValueError:
            return
        if what == "gone":
            self._gone(mailbox_id)
            return
        folder = self._folders.get(mailbox_id)
        if folder is None:
            return
        try:
            if int(what) > folder._watermark:
                folder.catch_up()
        except (ValueError, StoreError):
            pass

    def _listening(self, on: bool) -> None:
        self.listening = on
        if on:
            # Notifications may have been missed while the connection was down.
            for folder in list(self._folders.values()):
                try:
                    folder.catch_up()
                except StoreError:
                    pass


class ChangeListener:
    """
    A thread that sits on a C{LISTEN mailhub_changes} connection and hands
    each notification to the reactor; it reconnects when the connection is
    lost (with a pause that grows to 5 s), and the store catches up from the
    journal once it is back.
    """

    def __init__(self, store: PostgresStore):
        self.store = store
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailhub-postgresql-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(3)

    def _run(self) -> None:
        import psycopg

        reactor = self.store.reactor
        pause = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.store.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {pgschema.CHANNEL}")
                    reactor.callFromThread(self.store._listening, True)
                    pause = 0.1
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=0.5):
                            reactor.callFromThread(self.store._notified, notify.payload)
            except psycopg.Error as e:
                log.warn("lost the LISTEN connection to the mail database: {reason}", reason=_reason(e))
            reactor.callFromThread(self.store._listening, False)
            self._stopping.wait(pause)
            pause = min(pause * 2, 5.0)
