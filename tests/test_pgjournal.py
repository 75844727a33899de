"""
The PostgreSQL store's change journal is pruned (C{--journal-retention},
L{twisted_mailhub.store.pgjournal}) by one hub, and a hub or a client that
comes back after its entries went still gets the folder's true state.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import time

import psycopg
import pytest
from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_mailhub.cluster.database import Database
from twisted_mailhub.store.interfaces import INBOX, SEEN
from twisted_mailhub.store.pgjournal import JournalPruner, interval, prune
from twisted_mailhub.store.postgresql import PostgresStore

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: hi\r\n\r\nbody\r\n"


def journal_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM mailbox_change").fetchone()[0]


def age_journal(dsn: str, seconds: float) -> None:
    """Make every journal entry C{seconds} older (as if that time had passed)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE mailbox_change SET at = at - make_interval(secs => %s)", (seconds,))


@pytest.fixture
def _postgresql_dsn(request, pg_dsn):
    request.instance.dsn = pg_dsn


@pytest.mark.usefixtures("_postgresql_dsn")
class JournalTests(unittest.TestCase):
    def store(self):
        store = PostgresStore(self.dsn)
        self.addCleanup(store.close)
        return store

    @defer.inlineCallbacks
    def test_prune_removes_only_entries_older_than_the_retention(self):
        folder = self.store().account("alice@example.org").folder(INBOX)
        for _ in range(3):
            yield folder.append(MESSAGE)
        age_journal(self.dsn, 100)
        yield folder.append(MESSAGE)  # a fresh entry
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.assertEqual(prune(conn, 50), 3)
            self.assertEqual(prune(conn, 50), 0)
        self.assertEqual(journal_rows(self.dsn), 1)

    @defer.inlineCallbacks
    def test_a_listener_behind_the_pruned_journal_is_told_the_whole_difference(self):
        a, b = self.store(), self.store()  # b never LISTENs: it catches up when asked
        folder_a = a.account("alice@example.org").folder(INBOX)
        uids = []
        for _ in range(4):
            uids.append((yield folder_a.append(MESSAGE)))
        folder_b = b.account("alice@example.org").folder(INBOX)
        self.assertEqual([m.uid for m in folder_b.messages()], uids)
        heard = []
        folder_b.add_listener(heard.append)
        # On hub a: one expunged, one flagged, one added; then the journal
        # loses those entries.
        folder_a.expunge([uids[0]])
        folder_a.set_flags([uids[1]], [SEEN], "add")
        new = yield folder_a.append(MESSAGE)
        age_journal(self.dsn, 10)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.assertEqual(prune(conn, 5), 7)  # 4 + 3 changes
        folder_b.catch_up()
        self.assertEqual(len(heard), 1)
        self.assertEqual((heard[0].expunged, heard[0].flags, heard[0].added), ((uids[0],), (uids[1],), (new,)))
        self.assertEqual([m.uid for m in folder_b.messages()], uids[1:] + [new])
        self.assertIn(SEEN, folder_b.info(uids[1]).flags)

    @defer.inlineCallbacks
    def test_a_cached_folder_read_after_its_entries_were_pruned_shows_the_database(self):
        a, b = self.store(), self.store()
        folder_a = a.account("alice@example.org").folder(INBOX)
        first = yield folder_a.append(MESSAGE)
        folder_b = b.account("alice@example.org").folder(INBOX)
        self.assertEqual([m.uid for m in folder_b.messages()], [first])
        folder_a.expunge([first])
        second = yield folder_a.append(MESSAGE)
        age_journal(self.dsn, 10)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            prune(conn, 5)
        self.assertEqual([m.uid for m in folder_b.messages()], [second])

    @defer.inlineCallbacks
    def test_only_one_of_two_pruners_prunes(self):
        clock = task.Clock()
        pruners = []
        for _ in range(2):
            database = Database(self.dsn, workers=1)
            self.addCleanup(database.close)
            pruners.append(JournalPruner(database, 5, clock))
        folder = self.store().account("alice@example.org").folder(INBOX)
        for round_ in range(3):
            yield folder.append(MESSAGE)
            age_journal(self.dsn, 10)
            for pruner in pruners:
                yield pruner.run_once()
        self.assertEqual(sorted(p.pruned for p in pruners), [0, 3])
        self.assertEqual(journal_rows(self.dsn), 0)


def test_pruning_runs_often_enough_for_the_retention():
    assert interval(1) == 1.0
    assert interval(60) == 15.0
    assert interval(86400) == 300.0


def _select(c: imaplib.IMAP4, *args: str) -> list[bytes]:
    typ, data = c._simple_command("SELECT", "INBOX", *args)
    assert typ == "OK", data
    return [line for line in c.untagged_responses.pop("VANISHED", [])] + [
        line for line in c.untagged_responses.pop("FETCH", [])
    ]


def test_one_hub_prunes_and_hubs_and_qresync_clients_back_after_it_see_the_true_mailbox(start_hub, pg_dsn):
    """
    Two hubs with a 1 s retention: one of them prunes; a hub that held the
    folder from before, and a QRESYNC client that knew it at an old
    modseq, both get the folder as it is now.
    """
    a, b = (start_hub("--store", f"postgresql:{pg_dsn}", "--journal-retention", "1") for _ in range(2))
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        for _ in range(3):
            s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    # Hub b reads the folder (its cache stays after the session) and a
    # QRESYNC client remembers where it was.
    c = imaplib.IMAP4("127.0.0.1", b.ports["imap"])
    c.login("alice", "secret")
    c._simple_command("ENABLE", "QRESYNC")
    typ, data = c.select("INBOX")
    validity = int(c.untagged_responses["UIDVALIDITY"][0])
    old_modseq = int(c.untagged_responses["HIGHESTMODSEQ"][0])
    c._simple_command("CLOSE")
    # On hub a: UID 1 expunged, UID 2 flagged, UID 4 delivered.
    d = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
    d.login("alice", "secret")
    d.select("INBOX")
    d.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    d.expunge()
    d.uid("STORE", "2", "+FLAGS.SILENT", "(\\Flagged)")
    d.logout()
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    # The retention passes; one hub (and only one) says it prunes.
    deadline = time.monotonic() + 15
    while journal_rows(pg_dsn) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert journal_rows(pg_dsn) == 0
    pruning = [h for h in (a, b) if "this hub prunes the change journal" in h.log]
    assert len(pruning) == 1, [a.log, b.log]
    # The client comes back to hub b with its old modseq.
    lines = _select(c, f"(QRESYNC ({validity} {old_modseq}))")
    assert b"(EARLIER) 1" in lines, lines
    assert any(re.search(rb"UID 2 FLAGS \([^)]*\\Flagged", line) for line in lines), lines
    assert any(b"UID 4 " in line for line in lines), lines
    typ, data = c.uid("SEARCH", "ALL")
    assert data == [b"2 3 4"]
    c.logout()
    # A new session on hub b sees exactly what hub a has.
    e = imaplib.IMAP4("127.0.0.1", b.ports["imap"])
    e.login("alice", "secret")
    typ, data = e.select("INBOX")
    assert data == [b"3"]
    typ, data = e.uid("FETCH", "1:*", "(FLAGS)")
    assert [re.search(rb"UID (\d+)", line).group(1) for line in data] == [b"2", b"3", b"4"]
    assert b"\\Flagged" in data[0]
    e.logout()
    assert "Traceback" not in a.log + b.log
