"""
What the PostgreSQL store promises beyond the shared store contract
(tests/test_store.py runs that contract on it too): its schema version,
streamed big messages, two stores on one database, an unreachable database.
"""

import psycopg
import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.pgserver import free_port
from zope.interface.verify import verifyObject

from twisted_mailhub.store import pgschema
from twisted_mailhub.store.blobs import ByteaBlobs, IMessageBlobs
from twisted_mailhub.store.interfaces import INBOX, SEEN, StoreError
from twisted_mailhub.store.postgresql import PostgresStore, StoreUnavailable

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"


@defer.inlineCallbacks
def until(condition, seconds=10.0):
    """Turn the reactor (0.01 s at a time) until C{condition()} is true; fail after C{seconds}."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        yield task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"not true after {seconds} s: {condition}")


@pytest.fixture
def _postgresql_dsn(request, pg_dsn):
    request.instance.dsn = pg_dsn


@pytest.mark.usefixtures("_postgresql_dsn")
class PostgresStoreTests(unittest.TestCase):
    def store(self, **kwargs):
        store = PostgresStore(self.dsn, **kwargs)
        self.addCleanup(store.close)
        return store

    def test_a_new_database_gets_the_schema_and_its_version(self):
        self.store()
        with psycopg.connect(self.dsn) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
            tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        self.assertTrue({"account", "mailbox", "message", "mailbox_message", "mailbox_change", "subscription"} <= tables)

    def test_a_newer_schema_is_refused_at_start(self):
        self.store()
        with psycopg.connect(self.dsn) as conn:
            conn.execute("UPDATE mailhub_schema SET version = %s", (pgschema.SCHEMA_VERSION + 1,))
        with self.assertRaises(pgschema.SchemaError) as e:
            PostgresStore(self.dsn)
        self.assertIn("upgrade the hub", str(e.exception))

    def test_an_empty_database_is_refused_when_not_told_to_create(self):
        with self.assertRaises(pgschema.SchemaError) as e:
            PostgresStore(self.dsn, create=False)
        self.assertIn("mailhub-admin db upgrade", str(e.exception))

    def test_a_version_1_database_is_upgraded_and_each_placed_message_gets_its_size(self):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            pgschema.migrate(conn, "mailhub_schema", pgschema.MIGRATIONS, 1, "")
            conn.execute("INSERT INTO account (address) VALUES ('alice@example.org')")
            conn.execute("INSERT INTO mailbox (account_id, name, uid_validity, uid_next, highest_modseq) SELECT id, 'INBOX', 7, 2, 1 FROM account")
            conn.execute("INSERT INTO message (id, size, body) VALUES (5, %s, %s)", (len(MESSAGE), MESSAGE))
            conn.execute(
                "INSERT INTO mailbox_message (mailbox_id, uid, message_id, key, internal_date, modseq) SELECT id, 1, 5, 'k1', 0, 1 FROM mailbox"
            )
        folder = self.store().account("alice@example.org").folder(INBOX)
        with psycopg.connect(self.dsn) as conn:
            self.assertEqual(pgschema.schema_version(conn), pgschema.SCHEMA_VERSION)
        self.assertEqual([(i.uid, i.key, i.size) for i in folder.messages()], [(1, "k1", len(MESSAGE))])
        self.assertEqual(folder.read(1), MESSAGE)

    @defer.inlineCallbacks
    def test_a_folder_read_cold_shows_every_message_as_it_was_written(self):
        writer = self.store().account("alice@example.org").folder(INBOX)
        flag_sets = [[], [SEEN], ["\\Flagged", "$Label"], ["$Work", "$Home"], [SEEN, "\\Answered", "\\Deleted", "\\Draft"]]
        for n in range(50):
            yield writer.append(MESSAGE + b"x" * n, flag_sets[n % len(flag_sets)], internal_date=1_700_000_000.25 + n)
        writer.expunge([3, 4])
        written = writer.messages()
        # Another store (another hub) reads the folder from the database.
        cold = self.store().account("alice@example.org").folder(INBOX)
        got = cold.messages()
        self.assertEqual(
            [(i.uid, i.key, set(i.flags), i.size, i.internal_date) for i in got],
            [(i.uid, i.key, set(i.flags), i.size, i.internal_date) for i in written],
        )
        self.assertEqual(len(got), 48)
        by_uid = {i.uid: i for i in got}
        self.assertEqual(set(by_uid[2].flags), {SEEN})
        self.assertEqual(set(by_uid[8].flags), {"\\Flagged", "$Label"})
        uids, first_unseen, keywords = cold.selection()
        self.assertEqual((list(uids), first_unseen, keywords), ([i.uid for i in written], 1, {"$Label", "$Work", "$Home"}))
        uids, sizes, keys = cold.listing()
        self.assertEqual(list(zip(uids, sizes, keys)), [(i.uid, i.size, i.key) for i in written])
        self.assertEqual(cold.read(50), MESSAGE + b"x" * 49)

    @defer.inlineCallbacks
    def test_an_empty_folder_read_cold_is_empty(self):
        self.store().account("alice@example.org")
        folder = self.store().account("alice@example.org").folder(INBOX)
        self.assertEqual(folder.messages(), [])
        self.assertEqual([list(c) for c in folder.listing()], [[], [], []])
        uid = yield folder.append(MESSAGE, [SEEN])
        self.assertEqual([(i.uid, i.flags) for i in folder.messages()], [(uid, {SEEN})])

    @defer.inlineCallbacks
    def test_writes_queued_behind_a_committing_batch_share_the_next_transaction(self):
        folder = self.store().account("alice@example.org").folder(INBOX)
        yield folder.append(MESSAGE)  # the connection is made
        # The first starts a batch; the ten after it queue behind it and
        # go out together once it has committed.
        first = folder.append(MESSAGE)
        rest = [folder.append(MESSAGE) for _ in range(10)]
        uids = yield defer.gatherResults([first] + rest)
        self.assertEqual(uids, list(range(2, 13)))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            transactions = conn.execute("SELECT uid, xmin::text FROM mailbox_message ORDER BY uid").fetchall()
        by_uid = dict(transactions)
        self.assertNotEqual(by_uid[2], by_uid[3])
        self.assertEqual({by_uid[u] for u in range(3, 13)}, {by_uid[3]})

    @defer.inlineCallbacks
    def test_a_write_sent_after_the_server_closed_the_connection_is_sent_again_on_a_new_one(self):
        store = self.store()
        folder = store.account("alice@example.org").folder(INBOX)
        yield folder.append(MESSAGE)
        # The server ends every connection of the group commit (as a
        # restart does) while they sit idle; the reactor has not run since.
        backends = [slot.pgconn.backend_pid for slot in store.committer.slots if slot.conn is not None]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for pid in backends:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it has ended
        uid = yield folder.append(MESSAGE)
        self.assertEqual(uid, 2)
        self.assertEqual([i.uid for i in folder.messages()], [1, 2])

    @defer.inlineCallbacks
    def test_message_keys_are_unique_and_fit_a_pop3_uidl(self):
        a, b = self.store(), self.store()
        yield defer.gatherResults([a.deliver("alice@example.org", MESSAGE) for _ in range(5)] + [b.deliver("alice@example.org", MESSAGE) for _ in range(5)])
        folder = a.account("alice@example.org").folder(INBOX)
        yield folder.append(MESSAGE)
        keys = [i.key for i in folder.messages()]
        self.assertEqual(len(set(keys)), 11)
        for key in keys:
            # RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E.
            self.assertRegex(key, r"^[0-9a-f]{21,70}$")

    @defer.inlineCallbacks
    def test_a_big_message_is_read_in_slices_byte_exact(self):
        folder = self.store().account("alice@example.org").folder(INBOX)
        big = b"Subject: big\r\n\r\n" + bytes(range(256)) * (3 * 1024 * 1024 // 256) + b"\r\n"
        uid = yield folder.append(big)
        with folder.open(uid) as f:
            first = f.read(100)
            rest = f.read()
        self.assertEqual(first + rest, big)
        self.assertEqual(folder.info(uid).size, len(big))

    @defer.inlineCallbacks
    def test_two_stores_on_one_database_never_give_the_same_uid(self):
        a, b = self.store(), self.store()
        results = yield defer.gatherResults(
            [a.deliver("alice@example.org", MESSAGE) for _ in range(20)] + [b.deliver("alice@example.org", MESSAGE) for _ in range(20)]
        )
        self.assertEqual(len(set(results)), 40)
        uids = [i.uid for i in a.account("alice@example.org").folder(INBOX).messages()]
        self.assertEqual(uids, list(range(1, 41)))

    @defer.inlineCallbacks
    def test_a_change_through_one_store_is_announced_to_the_other(self):
        a, b = self.store(), self.store()
        b.start()
        folder_b = b.account("alice@example.org").folder(INBOX)
        heard = defer.Deferred()
        folder_b.add_listener(lambda change: heard.called or heard.callback(change))
        folder_a = a.account("alice@example.org").folder(INBOX)
        uid = yield folder_a.append(MESSAGE)
        change = yield heard
        self.assertEqual(change.added, (uid,))
        flagged = defer.Deferred()
        folder_b.add_listener(lambda change: change.flags and not flagged.called and flagged.callback(change))
        folder_a.set_flags([uid], [SEEN], "add")
        change = yield flagged
        self.assertEqual(change.flags, (uid,))
        self.assertEqual(folder_b.info(uid).flags, {SEEN})

    @defer.inlineCallbacks
    def test_a_listen_connection_the_server_ends_is_made_again_and_what_changed_meanwhile_is_told(self):
        a, b = self.store(), self.store()
        b.start()
        folder_b = b.account("alice@example.org").folder(INBOX)
        folder_b.messages()
        heard = []
        folder_b.add_listener(heard.append)
        yield until(lambda: b.listening)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (b._listener.pgconn.backend_pid,))
        yield until(lambda: not b.listening)
        uid = yield a.account("alice@example.org").folder(INBOX).append(MESSAGE)
        yield until(lambda: b.listening and heard)
        self.assertEqual([change.added for change in heard], [(uid,)])

    @defer.inlineCallbacks
    def test_a_cached_folder_follows_appends_flag_changes_and_expunges_made_through_another_store(self):
        a, b = self.store(), self.store()
        folder_a = a.account("alice@example.org").folder(INBOX)
        first = yield folder_a.append(MESSAGE)
        folder_b = b.account("alice@example.org").folder(INBOX)
        self.assertEqual([i.uid for i in folder_b.messages()], [first])
        self.assertEqual(folder_b.cached, 1)
        second = yield folder_a.append(MESSAGE + b"2\r\n", ["$Label"])
        folder_a.set_flags([first], [SEEN], "add")
        third = yield folder_a.append(MESSAGE)
        folder_a.expunge([third])
        infos = folder_b.messages()
        self.assertEqual([(i.uid, i.flags, i.size) for i in infos], [(first, {SEEN}, len(MESSAGE)), (second, {"$Label"}, len(MESSAGE) + 3)])
        self.assertEqual(folder_b.info(first).flags, {SEEN})
        self.assertEqual(folder_b.read(second), MESSAGE + b"2\r\n")

    @defer.inlineCallbacks
    def test_a_listener_hears_of_another_stores_append_before_a_later_one_made_here(self):
        a, b = self.store(), self.store()
        folder_a = a.account("alice@example.org").folder(INBOX)
        folder_b = b.account("alice@example.org").folder(INBOX)
        folder_b.messages()
        heard = []
        folder_b.add_listener(lambda change: heard.append(change.added))
        there = yield folder_a.append(MESSAGE)
        here = yield folder_b.append(MESSAGE)
        self.assertEqual(heard, [(there,), (here,)])
        self.assertEqual([i.uid for i in folder_b.messages()], [there, here])

    @defer.inlineCallbacks
    def test_the_selection_follows_the_cache(self):
        folder = self.store().account("alice@example.org").folder(INBOX)
        a = yield folder.append(MESSAGE, [SEEN])
        b = yield folder.append(MESSAGE, ["$Work"])
        uids, first_unseen, keywords = folder.selection()
        self.assertEqual((list(uids), first_unseen, keywords), ([a, b], b, {"$Work"}))
        folder.set_flags([b], [SEEN, "$Home"], "replace")
        c = yield folder.append(MESSAGE)
        uids, first_unseen, keywords = folder.selection()
        self.assertEqual((list(uids), first_unseen, keywords), ([a, b, c], c, {"$Home"}))

    @defer.inlineCallbacks
    def test_a_walk_up_the_folder_reads_every_body_exactly(self):
        folder = self.store().account("alice@example.org").folder(INBOX)
        bodies = [MESSAGE + b"%d\r\n" % n * (n % 7 + 1) for n in range(300)]
        uids = yield defer.gatherResults([folder.append(body) for body in bodies])
        folder.messages()
        folder.expunge(uids[100:110])
        kept = [(u, b) for u, b in zip(uids, bodies) if u not in uids[100:110]]
        self.assertEqual([folder.read(u) for u, _ in kept], [b for _, b in kept])

    @defer.inlineCallbacks
    def test_copies_share_one_message_row_and_the_last_expunge_drops_it(self):
        account = self.store().account("alice@example.org")
        inbox = account.folder(INBOX)
        work = account.create_folder("Work")
        uid = yield inbox.append(MESSAGE)
        [(_, copied)] = yield inbox.copy_to([uid], work)

        def messages():
            with psycopg.connect(self.dsn) as conn:
                return conn.execute("SELECT count(*) FROM message").fetchone()[0]

        self.assertEqual(messages(), 1)
        inbox.expunge([uid])
        self.assertEqual(work.read(copied), MESSAGE)
        self.assertEqual(messages(), 1)
        work.expunge([copied])
        self.assertEqual(messages(), 0)


class RecordingBlobs(ByteaBlobs):
    """The bytea blobs, noting each call: what a second backend would see."""

    def __init__(self):
        self.calls: list[tuple] = []

    def put(self, ids, bodies):
        self.calls.append(("put", len(bodies), sum(len(b) for b in bodies)))
        return ByteaBlobs.put(self, ids, bodies)

    def get(self, conn, ids):
        self.calls.append(("get", len(ids)))
        return ByteaBlobs.get(self, conn, ids)

    def read(self, conn, blob, offset, length):
        self.calls.append(("read", offset, length))
        return ByteaBlobs.read(self, conn, blob, offset, length)

    def drop(self, conn, ids):
        self.calls.append(("drop", len(ids)))
        return ByteaBlobs.drop(self, conn, ids)


class FailingOnceBlobs(ByteaBlobs):
    """The bytea blobs, whose first write is a statement the database refuses."""

    def __init__(self):
        self.failed = False

    def put(self, ids, bodies):
        if not self.failed:
            self.failed = True
            return "INSERT INTO message (id, size, body) SELECT $1::int8, 1 / 0, ''", [str(ids[0])]
        return ByteaBlobs.put(self, ids, bodies)


@pytest.mark.usefixtures("_postgresql_dsn")
class BlobInterfaceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_batch_the_database_refuses_is_rolled_back_whole_and_the_next_one_commits(self):
        store = PostgresStore(self.dsn, blobs=FailingOnceBlobs())
        self.addCleanup(store.close)
        folder = store.account("alice@example.org").folder(INBOX)
        with self.assertRaises(StoreError) as e:
            yield folder.append(MESSAGE)
        self.assertNotIsInstance(e.exception, StoreUnavailable)  # not a temporary outage
        self.assertIn("refused the message: division by zero", str(e.exception))
        # Nothing of it stayed: no message, no UID taken, no journal entry.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.assertEqual(conn.execute("SELECT count(*) FROM message").fetchone()[0], 0)
            self.assertEqual(conn.execute("SELECT count(*) FROM mailbox_change").fetchone()[0], 0)
        uid = yield folder.append(MESSAGE)
        self.assertEqual(uid, 1)
        self.assertEqual(folder.read(uid), MESSAGE)

    def test_the_bytea_blobs_provide_the_interface(self):
        self.assertTrue(verifyObject(IMessageBlobs, ByteaBlobs()))

    @defer.inlineCallbacks
    def test_message_bytes_go_through_the_blobs_the_store_is_given(self):
        blobs = RecordingBlobs()
        store = PostgresStore(self.dsn, blobs=blobs)
        self.addCleanup(store.close)
        yield defer.gatherResults([store.deliver("alice@example.org", MESSAGE) for _ in range(3)])
        self.assertEqual(sum(c[1] for c in blobs.calls if c[0] == "put"), 3)
        self.assertEqual(sum(c[2] for c in blobs.calls if c[0] == "put"), 3 * len(MESSAGE))
        folder = store.account("alice@example.org").folder(INBOX)
        first = folder.messages()[0].uid
        blobs.calls.clear()
        self.assertEqual(folder.read(first), MESSAGE)
        self.assertEqual(blobs.calls, [("get", 1)])
        blobs.calls.clear()
        with folder.open(first) as f:
            self.assertEqual(f.read(), MESSAGE)
        self.assertEqual(blobs.calls[0], ("read", 0, len(MESSAGE)))
        blobs.calls.clear()
        folder.expunge([first])
        self.assertEqual(blobs.calls, [("drop", 1)])


class UnreachableDatabaseTests(unittest.TestCase):
    def test_a_database_that_cannot_be_reached_is_a_temporary_error(self):
        dsn = f"postgresql://mailhub@127.0.0.1:{free_port()}/mailhub"
        with self.assertRaises(StoreUnavailable) as e:
            PostgresStore(dsn)
        self.assertIn("cannot reach the mail database", str(e.exception))


def test_a_bare_postgresql_url_after_the_prefix_is_given_back_as_the_url():
    # --store postgresql://mailhub@db/mailhub leaves "//mailhub@db/mailhub"
    # after the "postgresql:" prefix: libpq must get the URL back.
    from twisted_mailhub.store.postgresql import libpq_dsn

    assert libpq_dsn("//mailhub@db.example.org/mailhub") == "postgresql://mailhub@db.example.org/mailhub"
    assert libpq_dsn("postgresql://mailhub@db/mailhub") == "postgresql://mailhub@db/mailhub"
    assert libpq_dsn("host=127.0.0.1 port=5432 dbname=mailhub") == "host=127.0.0.1 port=5432 dbname=mailhub"


def test_hubs_starting_together_on_an_empty_database_make_the_schema_once(pg_dsn):
    # Two --workers (or two hubs) starting at once: each looks for the
    # schema (check()), then upgrades under the lock; the one that waited
    # must see the tables the other made, not create them again
    # (DuplicateTable "mailhub_schema" was seen in CI).
    import threading

    from twisted_mailhub.store.postgresql import libpq_dsn

    connections = [psycopg.connect(libpq_dsn(pg_dsn), autocommit=True) for _ in range(4)]
    for conn in connections:
        assert pgschema.schema_version(conn) == 0  # each backend has looked, as check() does
    start, errors = threading.Barrier(len(connections)), []

    def upgrade(conn):
        start.wait()
        try:
            pgschema.check(conn)
        except Exception as e:  # the failure under test
            errors.append(e)

    threads = [threading.Thread(target=upgrade, args=(c,)) for c in connections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    for conn in connections:
        assert pgschema.schema_version(conn) == pgschema.SCHEMA_VERSION
        conn.close()
