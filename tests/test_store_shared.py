# -*- test-case-name: tests.test_store_shared -*-
"""
One Maildir folder written by two processes (C{--workers N},
twisted_mailhub/store/shared.py): two store objects on one directory stand
for two workers here, each with its own index and its own lock file
descriptor (C{flock} locks belong to an open file, so they exclude each
other as two processes' would).
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store import durable, shared
from twisted_mailhub.store.interfaces import INBOX, NoSuchFolder
from twisted_mailhub.store.maildir import UIDLIST, MaildirStore

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"
ADDRESS = "alice@example.org"


class SharedFolderTests(unittest.TestCase):
    def setUp(self):
        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.root = self.mktemp()
        self.a = MaildirStore(self.root, hostname="a").account(ADDRESS).folder(INBOX)
        self.b = MaildirStore(self.root, hostname="b").account(ADDRESS).folder(INBOX)

    def test_a_folder_says_when_it_gets_its_first_listener_and_loses_its_last(self):
        told = []
        self.patch(shared, "watching", lambda folders, directory: told.append((folders, directory)))
        self.patch(shared, "_listened", 0)
        first, second = (lambda change: None), (lambda change: None)
        self.a.add_listener(first)
        self.a.add_listener(second)
        self.b.add_listener(first)
        self.assertEqual(told, [(1, self.a.directory), (2, self.b.directory)])
        self.a.remove_listener(first)
        self.assertEqual(len(told), 2)  # (a still has one)
        self.a.remove_listener(second)
        self.b.remove_listener(first)
        self.b.remove_listener(first)  # (not there: nothing to tell)
        self.assertEqual(told[2:], [(1, None), (0, None)])

    def listed(self):
        with open(os.path.join(self.a.directory, UIDLIST), encoding="utf-8") as f:
            return sorted(int(line.split(" ", 1)[0]) for line in f.read().splitlines()[1:])

    @defer.inlineCallbacks
    def test_two_workers_delivering_at_once_give_distinct_dense_uids(self):
        keys = yield defer.gatherResults([(self.a if n % 2 else self.b).deliver(MESSAGE) for n in range(20)])
        self.assertEqual(self.listed(), list(range(1, 21)))
        for folder in (self.a, self.b):
            seen = {info.key: info.uid for info in folder.messages()}
            self.assertEqual(sorted(seen), sorted(keys))
            self.assertEqual(sorted(seen.values()), list(range(1, 21)))
        # Both see each message under the same UID.
        self.assertEqual({i.key: i.uid for i in self.a.messages()}, {i.key: i.uid for i in self.b.messages()})

    @defer.inlineCallbacks
    def test_a_message_whose_line_came_before_its_file_keeps_its_uid(self):
        yield self.a.deliver(MESSAGE)
        # Worker b has reserved UID 2 and appended its line; its file is
        # not in new/ yet when a looks.
        name = "1700000000.M1P99Q1.b,S=%d" % len(MESSAGE)
        uid = self.b._next_uid()
        with open(os.path.join(self.b.directory, UIDLIST), "a", encoding="utf-8") as f:
            f.write(f"{uid} {name} {len(MESSAGE)} 1700000000\n")
        self.assertEqual([i.uid for i in self.a.messages()], [1])
        with open(os.path.join(self.a.directory, "new", name), "wb") as f:
            f.write(MESSAGE)
        self.a._dir_mtimes = None  # (the same clock tick: recently_changed covers it in a hub)
        self.assertEqual([(i.uid, i.key) for i in self.a.messages()], [(1, self.a.messages()[0].key), (uid, name)])
        self.assertEqual(uid, 2)
        self.assertEqual(self.listed(), [1, 2])

    @defer.inlineCallbacks
    def test_a_rewrite_keeps_the_lines_of_messages_still_being_written_elsewhere(self):
        yield self.a.deliver(MESSAGE)
        yield self.a.deliver(MESSAGE)
        name = "1700000000.M1P99Q2.b,S=%d" % len(MESSAGE)
        uid = self.b._next_uid()
        with open(os.path.join(self.b.directory, UIDLIST), "a", encoding="utf-8") as f:
            f.write(f"{uid} {name} {len(MESSAGE)} 1700000000\n")
        self.a.expunge([1])
        self.a._write_uidlist()  # (as when dead lines outnumber the messages)
        self.assertEqual(self.listed(), [2, uid])

    @defer.inlineCallbacks
    def test_a_keyword_set_by_another_worker_is_seen(self):
        yield self.a.deliver(MESSAGE)
        self.assertEqual([sorted(i.flags) for i in self.b.messages()], [[]])
        self.b.set_flags([1], ["$Work"], "add")
        self.a._dir_mtimes = None
        self.assertEqual([sorted(i.flags) for i in self.a.messages()], [["$Work"]])

    @defer.inlineCallbacks
    def test_arrivals_of_one_batch_take_the_shared_modseq_counter_once_and_are_told_with_their_modseqs(self):
        takes = []
        take_numbers = shared.FolderLock.take_numbers

        def counted(lock, uid_floor, modseq_floor, count):
            takes.append(count)
            return take_numbers(lock, uid_floor, modseq_floor, count)

        self.patch(shared.FolderLock, "take_numbers", counted)
        # syncfs: one batch at a time. With per-file fsyncs (chosen when the
        # machine has > 64 MB dirty, as a busy test run does) batches run
        # side by side, and one that arrives after a later-numbered one
        # takes a new modseq for all its messages together (_bump_now):
        # allowed (RFC 7162 §3.1), but not this test's subject.
        self.patch(durable, "choose_flush", lambda: "syncfs")
        heard = []
        self.a.add_listener(lambda change: heard.extend((uid, self.a.modseq(uid)) for uid in change.added))
        yield defer.gatherResults([self.a.deliver(MESSAGE) for _ in range(10)])
        uids = [uid for uid, _ in heard]
        values = [value for _, value in heard]
        self.assertEqual(sorted(uids), list(range(1, 11)))
        # Each its own modseq, told with it (RFC 7162 §3.1.4), one take of
        # the counter per batch, and the other worker reads the same ones.
        self.assertEqual(len(set(values)), 10)
        self.assertEqual(sum(takes), 10)
        self.assertLessEqual(len(takes), self.a.writer.batches)
        with open(os.path.join(self.a.directory, shared.LOCK_FILE), "rb") as f:
            self.assertEqual(int(f.read().split()[1]), max(values))
        self.b.messages()
        self.a.messages()
        self.assertEqual({uid: self.b.modseq(uid) for uid in uids}, {uid: self.a.modseq(uid) for uid in uids})

    @defer.inlineCallbacks
    def test_a_batch_of_deliveries_is_numbered_in_the_group_commit_with_one_look_at_the_shared_counter(self):
        import threading

        takes = []
        locked_in_reactor = []
        take_numbers = shared.FolderLock.take_numbers
        enter = shared.FolderLock.__enter__

        def counted(lock, uid_floor, modseq_floor, count):
            takes.append((count, threading.current_thread() is threading.main_thread()))
            return take_numbers(lock, uid_floor, modseq_floor, count)

        def watched(lock):
            if threading.current_thread() is threading.main_thread():
                locked_in_reactor.append(lock.path)
            return enter(lock)

        self.patch(shared.FolderLock, "take_numbers", counted)
        self.patch(durable, "choose_flush", lambda: "syncfs")  # (as above)
        yield self.b.deliver(MESSAGE)
        # a catches up with b's message now: a look at the folder takes its
        # lock in the reactor by design, and one made during the batch (a
        # change signal from b's file arriving late on a busy machine)
        # is not what this test is about.
        self.a.messages()
        takes.clear()
        self.patch(shared.FolderLock, "__enter__", watched)
        keys = yield defer.gatherResults([self.a.deliver(MESSAGE) for _ in range(10)])
        # UIDs 2..11 after b's 1, each once, and the reactor took none of
        # them, nor their modseqs, nor the folder's lock at all: the
        # batch's thread did, one take of both counters per batch.
        self.assertEqual(locked_in_reactor, [])
        self.assertEqual(self.listed(), list(range(1, 12)))
        self.assertEqual(sorted(info.uid for info in self.a.messages() if info.key in keys), list(range(2, 12)))
        self.assertEqual(sum(count for count, _ in takes), 10)
        self.assertEqual([in_reactor for _, in_reactor in takes if in_reactor], [])
        self.assertLessEqual(len(takes), self.a.writer.batches)

    def modseq_lines(self):
        from twisted_mailhub.store.maildir import MODSEQ_LOG

        with open(os.path.join(self.a.directory, MODSEQ_LOG), "rb") as f:
            return f.read().splitlines()

    @defer.inlineCallbacks
    def test_a_modseq_logged_before_its_file_came_is_the_one_the_other_worker_takes(self):
        yield self.a.deliver(MESSAGE)
        self.b.messages()
        # Worker b numbered UID 2 in its group commit (UID line, modseq
        # line) and is still flushing: its file is not in new/ yet.
        name = "1700000000.M1P99Q3.b,S=%d" % len(MESSAGE)
        with self.b._uidlist_lock:
            uid, value = self.b._uidlist_lock.take_numbers(self.b.uid_next, self.b.highest_modseq + 1, 1)
            with open(os.path.join(self.b.directory, UIDLIST), "a", encoding="utf-8") as f:
                f.write(f"{uid} {name} {len(MESSAGE)} 1700000000\n")
            self.b._append_own_modseqs(b"%d %d\n" % (uid, value))
        self.assertEqual([i.uid for i in self.a.messages()], [1])
        with open(os.path.join(self.a.directory, "new", name), "wb") as f:
            f.write(MESSAGE)
        before = len(self.modseq_lines())
        self.a._dir_mtimes = None
        self.assertEqual([i.uid for i in self.a.messages()], [1, 2])
        # a takes b's value for it: no second value, no line of its own.
        self.assertEqual(self.a.modseq(uid), value)
        self.assertEqual(len(self.modseq_lines()), before)

    @defer.inlineCallbacks
    def test_an_arrival_whose_modseq_is_below_one_its_worker_showed_meanwhile_gets_a_new_one(self):
        number = type(self.a)._number_records
        shown = []

        def meanwhile(folder, records):
            number(folder, records)
            # While the batch flushes, a flag change elsewhere took a higher
            # modseq from the counter and this worker read it (a session
            # may have been shown it as HIGHESTMODSEQ).
            value = folder._uidlist_lock.take_modseq(folder.highest_modseq + 1)
            shown.append(value)
            folder.highest_modseq = value

        self.patch(type(self.a), "_number_records", meanwhile)
        heard = []
        self.a.add_listener(lambda change: heard.extend((uid, self.a.modseq(uid)) for uid in change.added))
        yield self.a.deliver(MESSAGE)
        [(uid, value)] = heard
        self.assertGreater(value, shown[0])
        self.b.messages()
        self.assertEqual(self.b.modseq(uid), value)

    @defer.inlineCallbacks
    def test_a_delivery_that_fails_before_its_line_leaves_no_gap_in_the_uids(self):
        from twisted_mailhub.store import durable

        create = durable._create_file
        calls = []

        def second_fails(path, data, *unnamed_in):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device", path)
            return create(path, data, *unnamed_in)

        self.patch(durable, "_create_file", second_fails)
        results = yield defer.DeferredList([self.a.deliver(MESSAGE) for _ in range(3)], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        # The two stored messages are 1 and 2, as every worker sees them.
        self.assertEqual(self.listed(), [1, 2])
        self.assertEqual(sorted(info.uid for info in self.b.messages()), [1, 2])


class ListMadeAgainElsewhereTests(unittest.TestCase):
    """A UID list one worker made again is not shown by another before it is durable."""

    def setUp(self):
        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.root = self.mktemp()

    def worker(self):
        """A store as one worker has it, whose flushes run when the test says (their fsyncs recorded)."""
        from tests.test_small_files_durable import Journal
        from twisted_mailhub.store.smallfiles import SmallFiles

        journal = Journal()
        store = MaildirStore(self.root, hostname="w")
        store.small_files = SmallFiles(fsync=journal.fsync, run=journal.run)
        return store.account(ADDRESS), journal

    def test_a_list_another_worker_made_again_and_has_not_flushed_is_flushed_here_before_it_is_shown(self):
        a, a_journal = self.worker()
        a.create_folder("Lost")
        a_journal.run_jobs()
        directory = os.path.realpath(os.path.join(a.path, ".Lost"))
        with open(os.path.join(directory, "new", "1.outside"), "wb") as f:
            f.write(MESSAGE)
        os.unlink(os.path.join(directory, UIDLIST))
        a._folders.pop("Lost")  # (as a fresh worker finds it)
        made = a.folder("Lost")
        self.assertIsNotNone(made.unsettled())
        b, b_journal = self.worker()
        seen = b.folder("Lost")
        self.assertEqual(seen.uid_validity, made.uid_validity)
        waiting = seen.unsettled()
        self.assertIsNotNone(waiting, "another worker's list shown before it is durable")
        self.assertNoResult(waiting)
        b_journal.run_jobs()
        self.assertIn(os.path.join(directory, UIDLIST), b_journal.flushed())
        self.successResultOf(waiting)
        self.assertIsNone(seen.unsettled())
        # Once the maker's own flush is done, a later load has nothing to wait for.
        a_journal.run_jobs()
        a_journal.run_jobs()  # (the marker's removal: after the flush)
        c, _ = self.worker()
        self.assertIsNone(c.folder("Lost").unsettled())

    def test_a_marker_from_an_earlier_boot_is_removed_without_a_flush(self):
        from twisted_mailhub.store.maildir import UNFLUSHED

        a, a_journal = self.worker()
        a.create_folder("Old")
        a_journal.run_jobs()
        a_journal.run_jobs()
        directory = os.path.join(a.path, ".Old")
        with open(os.path.join(directory, UNFLUSHED), "w") as f:
            f.write("1 another-boot\n")
        b, b_journal = self.worker()
        self.assertIsNone(b.folder("Old").unsettled())
        self.assertFalse(os.path.exists(os.path.join(directory, UNFLUSHED)))


class FoundElsewhereTests(unittest.TestCase):
    """
    Under --workers, a file another program put into a Maildir is numbered
    by the worker that finds it (the folder's shared counter), its line
    flushed in a worker thread, never in the reactor, and no worker shows
    it (or numbers it again) before that line is durable.
    """

    def setUp(self):
        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.root = self.mktemp()

    worker = ListMadeAgainElsewhereTests.worker

    def put_in(self, directory: str, name: str, data: bytes = MESSAGE, sub: str = "cur") -> str:
        path = os.path.join(directory, sub, f"{name},S={len(data)}")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_a_found_files_line_is_flushed_in_a_thread_and_no_worker_shows_it_before(self):
        from tests.test_small_files_durable import Journal

        a, a_journal = self.worker()
        b, b_journal = self.worker()
        fa, fb = a.folder(INBOX), b.folder(INBOX)
        a_journal.run_jobs()
        b_journal.run_jobs()
        bare = b"Subject: bare LF\n\nbody\n"
        self.put_in(fa.directory, "1700000000.M1P1Q1.mda")
        bare_path = self.put_in(fa.directory, "1700000001.M2P1Q2.mda", bare)
        in_reactor = []
        record = lambda fd: in_reactor.append(os.readlink(f"/proc/self/fd/{fd}"))  # noqa: E731
        self.patch(os, "fsync", record)
        self.patch(os, "fdatasync", record)
        waiting = fa.unsettled()  # (a looks: finds both)
        self.assertEqual(in_reactor, [])  # (before: mailhub-unchecked, its directory and the list, here)
        self.assertIsNotNone(waiting, "found messages told before their UIDs are durable")
        self.assertEqual(fa.messages(), [])
        # The other worker looks meanwhile: it neither shows them nor numbers them itself.
        fb._dir_mtimes = None
        self.assertEqual(fb.messages(), [])
        self.assertEqual(in_reactor, [])
        self.patch(os, "fsync", Journal.real_fsync)  # (the jobs are "the thread")
        a_journal.run_jobs()
        b_journal.run_jobs()
        self.patch(os, "fsync", record)
        self.successResultOf(waiting)
        self.assertIn(os.path.join(os.path.realpath(fa.directory), UIDLIST), a_journal.flushed())
        crlf = len(bare) + 3
        told = [(i.uid, i.key, i.size) for i in fa.messages()]
        self.assertEqual([(uid, size) for uid, _, size in told], [(1, len(MESSAGE)), (2, crlf)])
        self.assertEqual([(i.uid, i.key, i.size) for i in fb.messages()], told)
        with open(bare_path, "rb") as f:
            self.assertEqual(f.read(), bare.replace(b"\n", b"\r\n"))
        with open(os.path.join(fa.directory, UIDLIST), encoding="utf-8") as f:
            self.assertEqual(sorted(int(line.split()[0]) for line in f.read().splitlines()[1:]), [1, 2])  # (one line each)
        self.assertEqual(in_reactor, [])
        self.assertFalse(os.path.exists(os.path.join(fa.directory, "mailhub-uidlist.claims")))

    def test_a_worker_that_loads_a_folder_while_another_flushes_found_lines_flushes_the_list_itself_first(self):
        a, a_journal = self.worker()
        fa = a.folder(INBOX)
        a_journal.run_jobs()
        self.put_in(fa.directory, "1700000000.M1P1Q1.mda")
        self.assertIsNotNone(fa.unsettled())
        # a checks nothing (its S= is right), appends its line after the
        # unchecked file's flush: run up to the line's append, not its flush.
        function, args, d = a_journal.jobs.pop(0)
        d.callback(function(*args))
        self.assertTrue(a_journal.jobs, "the line's flush is not on its way")
        b, b_journal = self.worker()
        fb = b.folder(INBOX)  # (a cold load: reads a's line, finds the file)
        waiting = fb.unsettled()
        self.assertIsNotNone(waiting, "a line not durable yet is shown by a worker that loads the folder")
        b_journal.run_jobs()
        self.assertIn(os.path.join(os.path.realpath(fb.directory), UIDLIST), b_journal.flushed())
        self.successResultOf(waiting)
        self.assertEqual([i.uid for i in fb.messages()], [1])
        a_journal.run_jobs()
        self.assertEqual([i.uid for i in fa.messages()], [1])


class FolderMadeAgainTests(unittest.TestCase):
    """
    A folder one worker deleted and made again is noticed by another
    worker that has it open: its old object is done with (NoSuchFolder:
    IMAP ends a session that has it selected with BYE), and the account
    opens the new folder with the new UIDVALIDITY; no UID of the old
    UIDVALIDITY is ever given for the new folder (RFC 3501 §2.3.1.1).
    """

    def setUp(self):
        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.root = self.mktemp()
        self.a = MaildirStore(self.root, hostname="a").account(ADDRESS)
        self.b = MaildirStore(self.root, hostname="b").account(ADDRESS)

    @defer.inlineCallbacks
    def test_a_folder_deleted_and_made_again_by_one_worker_is_seen_anew_by_the_other(self):
        self.a.create_folder("Box")
        for _ in range(2):
            yield self.a.folder("Box").append(MESSAGE)
        old = self.b.folder("Box")
        self.assertEqual([i.uid for i in old.messages()], [1, 2])
        before = old.uid_validity
        self.a.delete_folder("Box")
        made = self.a.create_folder("Box")
        yield made.append(b"Subject: new\r\n\r\nthe new folder's\r\n")
        self.assertGreater(made.uid_validity, before)
        old._dir_mtimes = None  # (the same clock tick: recently_changed covers it in a hub)
        with self.assertRaises(NoSuchFolder):
            old.messages()  # (before: UID 1 of the new folder under the old UIDVALIDITY)
        with self.assertRaises(NoSuchFolder):
            old.refresh()  # (and from then on)
        fresh = self.b.folder("Box")
        self.assertIsNot(fresh, old)
        self.assertEqual(fresh.uid_validity, made.uid_validity)
        self.assertEqual([(i.uid, i.key) for i in fresh.messages()], [(i.uid, i.key) for i in made.messages()])

    @defer.inlineCallbacks
    def test_an_open_folder_made_again_elsewhere_is_opened_afresh_by_the_account(self):
        self.a.create_folder("Box")
        yield self.a.folder("Box").append(MESSAGE)
        old = self.b.folder("Box")
        old.messages()
        self.a.delete_folder("Box")
        made = self.a.create_folder("Box")
        old._dir_mtimes = None
        fresh = self.b.folder("Box")  # (a SELECT or STATUS through worker b)
        self.assertIsNot(fresh, old)
        self.assertEqual(fresh.uid_validity, made.uid_validity)
        self.assertEqual(fresh.messages(), [])


class InboxMadeAgainTests(unittest.TestCase):
    def setUp(self):
        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.root = self.mktemp()
        self.a = MaildirStore(self.root, hostname="a").account(ADDRESS)
        self.b = MaildirStore(self.root, hostname="b").account(ADDRESS)

    @defer.inlineCallbacks
    def test_an_inbox_whose_list_another_worker_made_again_is_opened_afresh(self):
        yield self.a.folder(INBOX).deliver(MESSAGE)
        old = self.b.folder(INBOX)
        self.assertEqual(len(old.messages()), 1)
        # Worker a loses the list and makes it again (a new UIDVALIDITY).
        os.unlink(os.path.join(self.a.path, UIDLIST))
        self.a._folders.clear()
        made = self.a.folder(INBOX)
        yield made.unsettled()
        self.assertNotEqual(made.uid_validity, old.uid_validity)
        old._dir_mtimes = None
        with self.assertRaises(NoSuchFolder):
            old.messages()
        fresh = self.b.folder(INBOX)  # (before: the old object, NoSuchFolder for ever)
        self.assertIsNot(fresh, old)
        self.assertEqual(fresh.uid_validity, made.uid_validity)
        self.assertEqual(len(fresh.messages()), 1)


class SharedRewriteTests(unittest.TestCase):
    """Under --workers too, a UID list rewritten whole is flushed in a worker thread, never in the reactor."""

    def setUp(self):
        from twisted_mailhub.store import maildir
        from twisted_mailhub.store.smallfiles import SmallFiles

        self.patch(shared, "ENABLED", True)
        self.patch(shared, "announce", None)
        self.patch(maildir, "EXTRA_LINES_SLACK", 0)
        self.root = self.mktemp()
        self.jobs = []

        def run(function, *args):
            d = defer.Deferred()
            self.jobs.append((d, function, args))
            return d

        stores = [MaildirStore(self.root, hostname=name) for name in ("a", "b")]
        for store in stores:
            store.small_files = SmallFiles(run=run)
        self.a, self.b = (store.account(ADDRESS).folder(INBOX) for store in stores)

    def run_jobs(self):
        while self.jobs:
            d, function, args = self.jobs.pop(0)
            d.callback(function(*args))

    @defer.inlineCallbacks
    def test_a_rewrite_by_one_worker_is_flushed_off_the_reactor_and_read_by_the_other(self):
        self.run_jobs()  # (each folder's new UID list, made at its load)
        for _ in range(3):
            yield self.a.deliver(MESSAGE)
        self.run_jobs()
        uids = [i.uid for i in self.a.messages()]
        self.assertEqual([i.uid for i in self.b.messages()], uids)
        in_reactor = []
        record = lambda fd: in_reactor.append(os.readlink(f"/proc/self/fd/{fd}"))  # noqa: E731
        self.patch(os, "fsync", record)
        self.patch(os, "fdatasync", record)
        self.a.set_flags(uids, ["$One"], "add")
        self.a.set_flags(uids, ["$Two"], "add")  # (6 lines more than messages: over the slack)
        self.assertEqual(in_reactor, [])  # (it made 1 before: the new list)
        self.assertTrue(self.jobs, "no rewrite asked for")
        self.run_jobs()
        self.assertEqual(in_reactor, [])
        with open(os.path.join(self.a.directory, UIDLIST), encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 4, lines)  # the header and one line each
        self.b._dir_mtimes = None
        self.b.refresh()
        self.assertEqual([sorted(i.flags) for i in self.b.messages()], [["$One", "$Two"]] * 3)
