# -*- test-case-name: tests.test_maildir_half_made -*-
"""
A Maildir folder an older version left half made (cur/ without new/ or
tmp/, no UID list) is read as it is when nothing can be written (a full
disk, a read-only file system): its UIDVALIDITY and UIDs kept in memory,
as Dovecot keeps an index it cannot write; the first write with room
repairs it with the UIDs it showed (store/maildir.py: _unrepaired,
_repair). Here a full disk is made by refusing every write under the
store's folder with ENOSPC; tests/test_e2e_disk_full.py does it for real.
"""

from __future__ import annotations

import builtins
import errno
import os
import time

from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_mailhub.store.interfaces import InsufficientStorage, StoreUnavailable
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import UIDLIST, MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles

from tests.thread_helpers import HeldThread

OLD = b"Subject: left by an older version\r\n\r\nstill here\r\n"
OLDER = b"Subject: older still\r\n\r\nfirst\r\n"


class HalfMadeFolderTests(unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.full = False
        self.store = self.open_store()
        account = self.store.account("alice@example.org")
        self.path = account._folder_path("Old")
        os.makedirs(os.path.join(self.path, "cur"))
        # (no new/, no tmp/, no UID list)
        for when, name, data in ((1600000100, "1600000100.M2P1Q2.old", OLD), (1600000000, "1600000000.M1P1Q1.old", OLDER)):
            path = os.path.join(self.path, "cur", f"{name},S={len(data)}:2,S")
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, (when, when))
        self.refuse_writes()

    def open_store(self):
        store = MaildirStore(self.root, hostname="test")  # (its group commit on the reactor: tests yield)
        store.small_files = SmallFiles(run=lambda function, *args: defer.maybeDeferred(function, *args))
        return store

    def refuse_writes(self) -> None:
        """While C{self.full}: every write under the store's folder fails with ENOSPC."""
        root = self.root
        real_makedirs, real_open, real_os_open = os.makedirs, builtins.open, os.open

        def refused(path) -> bool:
            if self.full == "files":  # (a tmpfs out of blocks: a directory is still made)
                return os.path.basename(str(path)).startswith("mailhub-")
            return self.full and str(path).startswith(root)

        def makedirs(path, *args, **kwargs):
            if refused(path) and self.full != "files" and not os.path.isdir(path):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_makedirs(path, *args, **kwargs)

        def open_(path, mode="r", *args, **kwargs):
            if refused(path) and any(c in mode for c in "wax+"):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_open(path, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if refused(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_os_open(path, flags, *args, **kwargs)

        self.patch(os, "makedirs", makedirs)
        self.patch(builtins, "open", open_)
        self.patch(os, "open", os_open)

    def folder(self, store=None):
        return (store or self.store).account("alice@example.org").folder("Old")

    def test_a_folder_with_cur_only_and_no_list_is_read_as_it_is_when_nothing_can_be_written(self):
        self.full = True
        folder = self.folder()  # (before: InsufficientStorage, so SELECT, STATUS, POP3 and the web failed)
        self.assertIsNone(folder.unsettled())
        self.assertGreater(folder.uid_validity, 0)
        # UIDs in order of arrival, as a load numbers found files.
        self.assertEqual([(m.uid, m.size) for m in folder.messages()], [(1, len(OLDER)), (2, len(OLD))])
        self.assertEqual(folder.read(2), OLD)
        self.assertEqual(sorted(os.listdir(self.path)), ["cur"])  # nothing written

    @defer.inlineCallbacks
    def test_the_first_write_with_room_repairs_it_with_the_uidvalidity_and_uids_shown(self):
        self.full = True
        folder = self.folder()
        shown = folder.uid_validity
        self.full = False
        uid = yield folder.append(b"Subject: new\r\n\r\nafter\r\n")
        self.assertEqual(uid, 3)
        self.assertEqual(sorted(n for n in os.listdir(self.path) if n in ("cur", "new", "tmp", UIDLIST)), sorted(["cur", "new", "tmp", UIDLIST]))
        with open(os.path.join(self.path, UIDLIST), encoding="utf-8") as f:
            header = f.readline().split()
        self.assertEqual(int(header[2]), shown)
        # A later load reads the same UIDs under the same UIDVALIDITY.
        again = self.folder(self.open_store())
        self.assertEqual(again.uid_validity, shown)
        self.assertEqual([m.uid for m in again.messages()], [1, 2, 3])
        self.assertEqual(again.read(1), OLDER)

    def test_a_write_while_the_disk_is_still_full_fails_and_writes_nothing(self):
        self.full = True
        folder = self.folder()
        self.failureResultOf(folder.append(b"Subject: new\r\n\r\nx\r\n"), InsufficientStorage)
        self.failureResultOf(folder.deliver(b"Subject: new\r\n\r\nx\r\n"), InsufficientStorage)
        self.assertRaises(InsufficientStorage, folder.expunge, [1])
        self.assertEqual(sorted(os.listdir(self.path)), ["cur"])
        self.assertEqual([m.uid for m in folder.messages()], [1, 2])

    def test_system_flags_are_renames_and_change_on_a_full_disk_keywords_need_the_list(self):
        self.full = True
        folder = self.folder()
        folder.set_flags([1], ["\\Flagged"], "add")
        self.assertIn("\\Flagged", folder.info(1).flags)
        self.assertTrue(any(n.endswith(":2,FS") for n in os.listdir(os.path.join(self.path, "cur"))))
        self.assertRaises(InsufficientStorage, folder.set_flags, [1], ["$Important"], "add")

    def test_an_open_with_room_again_repairs_it(self):
        self.full = True
        folder = self.folder()
        shown = folder.uid_validity
        self.full = False
        self.assertIsNone(folder.unsettled())  # (SELECT, STATUS, a POP3 login ask this)
        with open(os.path.join(self.path, UIDLIST), encoding="utf-8") as f:
            self.assertEqual(int(f.readline().split()[2]), shown)

    def test_a_new_load_before_the_repair_shows_a_new_uidvalidity(self):
        self.full = True
        first = self.folder().uid_validity
        later = time.time() + 5
        self.patch(time, "time", lambda: later)
        again = self.folder(self.open_store())
        # (its UIDs were never kept: a client must not trust those it was shown)
        self.assertGreater(again.uid_validity, first)

    def test_a_folder_being_made_is_never_left_half_made(self):
        # Its directories can be made, its UID list cannot: CREATE fails
        # and leaves nothing (a folder read as it is is for what an older
        # version left, never for one being made).
        self.full = "files"
        account = self.store.account("alice@example.org")
        self.assertRaises(InsufficientStorage, account.create_folder, "Fresh")
        self.assertFalse(os.path.exists(account._folder_path("Fresh")))


class HalfMadeFolderUnderWorkersTests(HalfMadeFolderTests):
    """
    Under --workers (shared.ENABLED), each process reads the half-made
    folder as it is on a full disk and shows the same UIDVALIDITY and
    UIDs; the first write with room repairs it under the folder's lock,
    and another process's write then takes that list (store/maildir.py:
    _agreed_uid_validity, _repair_shared). Two MaildirStore objects stand
    for two worker processes (their folder locks are flocks on their own
    descriptors, which exclude each other as two processes' would). Every
    test of HalfMadeFolderTests runs here too.
    """

    def setUp(self):
        from twisted_mailhub.store import shared

        self.patch(shared, "ENABLED", True)
        super().setUp()

    def test_two_workers_read_it_on_a_full_disk_with_the_same_uidvalidity_and_uids(self):
        self.full = True
        one = self.folder()  # (before: InsufficientStorage at the load)
        two = self.folder(self.open_store())
        self.assertEqual(one.uid_validity, two.uid_validity)
        self.assertEqual([(m.uid, m.key) for m in one.messages()], [(m.uid, m.key) for m in two.messages()])
        self.assertEqual([m.uid for m in two.messages()], [1, 2])
        self.assertEqual(sorted(os.listdir(self.path)), ["cur"])  # (not even the lock file)
        # The UIDVALIDITY names a second the folder had not changed by.
        self.assertGreater(one.uid_validity, int(os.stat(os.path.join(self.path, "cur")).st_ctime))

    @defer.inlineCallbacks
    def test_one_worker_repairs_it_and_the_other_takes_its_list_without_a_uid_twice(self):
        self.full = True
        one = self.folder()
        two = self.folder(self.open_store())
        self.full = False
        self.assertEqual((yield one.append(b"Subject: one\r\n\r\nfrom one\r\n")), 3)
        uid = yield two.append(b"Subject: two\r\n\r\nfrom two\r\n")
        self.assertEqual(uid, 4)
        self.assertEqual([m.uid for m in two.messages()], [1, 2, 3, 4])
        with open(os.path.join(self.path, UIDLIST), encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(int(lines[0].split()[2]), one.uid_validity)
        self.assertEqual(sorted(int(line.split()[0]) for line in lines[1:]), [1, 2, 3, 4])

    def test_a_load_in_the_second_the_folder_changed_waits_for_the_next_one(self):
        # A file renamed (another process set a flag) in second T: a load
        # then must not give UIDVALIDITY T, or T+1 before T+1 has begun,
        # since a load a moment later in that second, after one more
        # change, could give the same with other files.
        self.full = True
        cur = os.path.join(self.path, "cur")
        name = sorted(os.listdir(cur))[0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.replace(":2,S", ":2,FS")))
        changed = int(os.stat(cur).st_ctime)
        clock = [changed + 0.5]
        slept = []

        def sleep(seconds):
            slept.append(seconds)
            clock[0] += seconds

        self.patch(time, "time", lambda: clock[0])
        self.patch(time, "sleep", sleep)
        folder = self.folder()
        self.assertEqual(folder.uid_validity, changed + 1)
        self.assertEqual(slept, [0.5])  # (to the next second, once)
        self.assertEqual([m.uid for m in folder.messages()], [1, 2])

    def running_hub_store(self):
        """A store as a running hub has it: its reactor turns (a L{task.Clock}), its thread's jobs held (L{HeldThread})."""
        self.clock = task.Clock()
        self.clock.running = True
        self.held = HeldThread()
        self.held.jobs = []
        store = MaildirStore(self.root, GroupCommitWriter(self.clock), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=self.held.thread)
        return store

    def changed_this_second(self) -> tuple[str, int]:
        """A file of the folder renamed (another process set a flag): (cur/, the second of that change)."""
        cur = os.path.join(self.path, "cur")
        name = sorted(os.listdir(cur))[0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.replace(":2,S", ":2,FS")))
        return cur, int(os.stat(cur).st_ctime)

    def test_in_a_running_hub_a_load_in_the_second_the_folder_changed_does_not_sleep_in_the_reactor(self):
        self.full = True
        _, changed = self.changed_this_second()
        clock = [changed + 0.5]
        self.patch(time, "time", lambda: clock[0])
        self.patch(time, "sleep", lambda seconds: self.fail(f"slept {seconds} s in the reactor"))
        store = self.running_hub_store()
        folder = self.folder(store)  # (before: time.sleep(0.5) here, every session of the hub waiting)
        self.assertEqual(folder.uid_validity, changed + 1)
        self.assertEqual([m.uid for m in folder.messages()], [1, 2])
        # Nothing shows its UIDs, and no write starts, before the files
        # are listed again in the second it names (off the reactor).
        waiting = folder.unsettled()
        self.assertNoResult(waiting)
        write = folder.append(b"Subject: new\r\n\r\nx\r\n")
        self.assertNoResult(write)
        clock[0] = changed + 1.02
        self.clock.advance(0.52)
        self.assertNoResult(waiting)  # (listed again in the thread: its job held)
        self.held.run_jobs()
        self.successResultOf(waiting)
        self.assertIsNone(folder.unsettled())
        self.failureResultOf(write, InsufficientStorage)  # (the disk is still full: as before)
        self.assertIs(self.folder(store), folder)
        # Another process's load now shows the same UIDVALIDITY and UIDs.
        two = self.folder(self.open_store())
        self.assertEqual((two.uid_validity, [(m.uid, m.key) for m in two.messages()]), (folder.uid_validity, [(m.uid, m.key) for m in folder.messages()]))

    def test_in_a_running_hub_a_message_that_comes_before_that_second_begins_has_the_load_refused_for_now(self):
        self.full = True
        cur, changed = self.changed_this_second()
        clock = [changed + 0.5]
        self.patch(time, "time", lambda: clock[0])
        self.patch(time, "sleep", lambda seconds: self.fail(f"slept {seconds} s in the reactor"))
        store = self.running_hub_store()
        folder = self.folder(store)
        waiting = folder.unsettled()
        # Another MDA drops a message in, still in the second of the change:
        # a process loading later shows the same UIDVALIDITY with 3 UIDs.
        self.full = False
        with open(os.path.join(cur, "1600000200.M3P1Q3.mda:2,"), "wb") as f:
            f.write(OLD)
        self.full = True
        clock[0] = changed + 1.02
        self.clock.advance(0.52)
        self.held.run_jobs()
        self.failureResultOf(waiting, StoreUnavailable)  # (IMAP NO [UNAVAILABLE]: try again)
        self.assertIsNot(self.folder(store), folder)  # (opened afresh)

    def test_a_load_that_sees_a_change_in_the_second_its_uidvalidity_names_is_refused_for_now(self):
        self.full = True
        cur = os.path.join(self.path, "cur")
        changed = int(os.stat(cur).st_ctime)
        # The folder changes while it is listed, in the very second chosen.
        real_listdir = os.listdir

        def listdir(path):
            names = real_listdir(path)
            if path == cur and names and not listdir.done:
                listdir.done = True
                self.patch(time, "time", lambda: float(changed + 5))
                os.utime(cur)
                os.rename(os.path.join(cur, names[0]), os.path.join(cur, names[0] + "T"))
                self.patch(os, "stat", lambda p, *a, _real=os.stat, **k: _stat_at(_real(p, *a, **k), changed + 5) if p == cur else _real(p, *a, **k))
            return names

        listdir.done = False
        self.patch(time, "time", lambda: float(changed + 4))
        self.patch(time, "sleep", lambda s: None)
        self.patch(os, "listdir", listdir)
        self.assertRaises(StoreUnavailable, self.folder)


def _stat_at(st, ctime):
    """C{st} with its ctime set to C{ctime} (seconds)."""
    fields = list(st)
    fields[9] = int(ctime)
    return os.stat_result(fields, {"st_ctime": float(ctime), "st_mtime_ns": st.st_mtime_ns, "st_ctime_ns": int(ctime) * 10**9, "st_atime_ns": st.st_atime_ns})


class FolderTheHubMayNotWriteTests(unittest.TestCase):
    """
    A folder the hub may not write (EACCES: restored from a backup with
    other owners; EROFS: tests/test_e2e_read_only_store.py does a real
    read-only mount) is read as it is, one log line says why nothing in
    it can be changed, and a write fails with L{NotWritable} (IMAP
    NO [NOPERM], POP3 -ERR [SYS/PERM]).
    """

    def setUp(self):
        HalfMadeFolderTests.setUp(self)

    open_store = HalfMadeFolderTests.open_store
    folder = HalfMadeFolderTests.folder

    def refuse_writes(self) -> None:
        HalfMadeFolderTests.refuse_writes(self)
        real = os.open, builtins.open, os.makedirs

        def as_eacces(function):
            def call(*args, **kwargs):
                try:
                    return function(*args, **kwargs)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        raise OSError(errno.EACCES, "Permission denied", e.filename) from None
                    raise
            return call

        self.patch(os, "open", as_eacces(os.open))
        self.patch(builtins, "open", as_eacces(builtins.open))
        self.patch(os, "makedirs", as_eacces(os.makedirs))
        del real

    def test_a_half_made_folder_the_hub_may_not_write_is_read_and_its_writes_are_not_writable(self):
        from twisted.logger import globalLogPublisher

        from twisted_mailhub.store.interfaces import NotWritable

        said = []
        globalLogPublisher.addObserver(said.append)
        self.addCleanup(globalLogPublisher.removeObserver, said.append)
        self.full = True
        folder = self.folder()  # (before: PermissionError at the load)
        self.assertEqual([m.uid for m in folder.messages()], [1, 2])
        self.assertEqual(folder.read(1), OLDER)
        lines = [e["log_format"] for e in said if "may not write" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1, lines)
        self.failureResultOf(folder.append(b"Subject: new\r\n\r\nx\r\n"), NotWritable)
        self.assertRaises(NotWritable, folder.expunge, [1])
        self.assertEqual(sorted(os.listdir(self.path)), ["cur"])

    def test_a_whole_folder_the_hub_may_not_write_is_said_once_at_its_load(self):
        from twisted.logger import globalLogPublisher

        said = []
        globalLogPublisher.addObserver(said.append)
        self.addCleanup(globalLogPublisher.removeObserver, said.append)
        folder = self.folder()  # (made whole: the hub may write it)
        self.assertEqual([e for e in said if "may not write" in e.get("log_format", "")], [])
        real_access = os.access
        self.patch(os, "access", lambda path, mode, *a, **k: False if path == self.path and mode == os.W_OK else real_access(path, mode, *a, **k))
        self.folder(self.open_store())
        lines = [e for e in said if "may not write" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["why"], "permission denied")
        del folder


class RepairOffTheReactorTests(HeldThread, unittest.TestCase):
    """
    The one-time repair of a folder read as it is (store/maildir.py:
    _write_repair) flushes its UIDVALIDITY counter, its UID list and the
    folder's directory in a worker thread (SmallFiles), not in the
    reactor, and the write that needed it starts only once that flush is
    done: the repair is durable before the write that depends on it.
    Before, its three fsyncs (and new/'s) ran in the reactor.
    """

    def setUp(self):
        import threading

        self.jobs: list[tuple] = []
        self.events: list[tuple] = []
        self.in_thread = False
        HalfMadeFolderTests.setUp(self)
        real_fsync, real_os_open = os.fsync, os.open
        main = threading.main_thread()

        def where() -> str:
            return "thread" if self.in_thread or threading.current_thread() is not main else "reactor"

        def fsync(fd):
            self.events.append((where(), "fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
            return real_fsync(fd)

        def os_open(path, flags, *args, **kwargs):
            if str(path).startswith(os.path.join(self.path, "tmp") + os.sep) and flags & os.O_CREAT:
                self.events.append((where(), "write", "message"))
            return real_os_open(path, flags, *args, **kwargs)

        self.patch(os, "fsync", fsync)
        self.patch(os, "open", os_open)

    refuse_writes = HalfMadeFolderTests.refuse_writes
    folder = HalfMadeFolderTests.folder

    def open_store(self):
        store = MaildirStore(self.root, hostname="test")
        store.small_files = SmallFiles(run=self.thread, fsync=lambda fd: os.fsync(fd))  # (os.fsync as patched now)
        return store

    @defer.inlineCallbacks
    def test_the_repair_is_flushed_off_the_reactor_before_the_write_that_needs_it(self):
        self.full = True
        folder = self.folder()
        shown = folder.uid_validity
        self.full = False
        self.events.clear()
        d = folder.append(b"Subject: new\r\n\r\nafter\r\n")
        # Nothing flushed in the reactor, and the message not begun.
        self.assertEqual([e for e in self.events if e[0] == "reactor" and e[1] == "fsync"], [])
        self.assertNotIn(("reactor", "write", "message"), self.events)
        self.assertNoResult(d)
        self.run_jobs()
        uid = yield d
        self.assertEqual(uid, 3)
        flushed = [e[2] for e in self.events if e[1] == "fsync"]
        for name in (UIDLIST, "mailhub-uidvalidity", os.path.basename(self.path)):
            self.assertIn(name, flushed)
        first_write = self.events.index(next(e for e in self.events if e[1] == "write"))
        self.assertEqual(
            sorted({e[2] for e in self.events[:first_write] if e[1] == "fsync"}),
            sorted([UIDLIST, "mailhub-uidvalidity", os.path.basename(self.path), os.path.basename(os.path.dirname(self.path))]),
            self.events,
        )
        self.assertEqual([e for e in self.events if e[0] == "reactor" and e[1] == "fsync"], [])
        with open(os.path.join(self.path, UIDLIST), encoding="utf-8") as f:
            self.assertEqual(int(f.readline().split()[2]), shown)

    def test_a_failed_flush_of_the_repair_fails_the_write_and_writes_no_message(self):
        self.full = True
        folder = self.folder()
        self.full = False
        d = folder.append(b"Subject: new\r\n\r\nafter\r\n")
        patched = os.fsync

        def fsync(fd):
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == UIDLIST:
                raise OSError(errno.EIO, "Input/output error")
            return patched(fd)

        self.patch(os, "fsync", fsync)
        self.run_jobs()
        self.failureResultOf(d)
        self.assertNotIn("write", [e[1] for e in self.events])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])


class RepairTakenFromAnotherWorkerTests(RepairOffTheReactorTests):
    """
    Under --workers: worker one repairs the folder and its flush is still
    on its way (its UNFLUSHED marker is there); worker two, writing next,
    takes that list and must not begin its write before the list is
    durable: it flushes it too, off its reactor, and waits.
    """

    def setUp(self):
        from twisted_mailhub.store import shared

        self.patch(shared, "ENABLED", True)
        super().setUp()

    @defer.inlineCallbacks
    def test_the_second_worker_waits_for_the_list_the_first_has_not_flushed(self):
        self.full = True
        one = self.folder()
        two = self.folder(self.open_store())
        self.full = False
        first = one.append(b"Subject: one\r\n\r\nfrom one\r\n")
        self.assertNoResult(first)  # (its flush held: the list is not durable yet)
        self.assertTrue(os.path.exists(os.path.join(self.path, UIDLIST)))
        self.events.clear()
        second = two.append(b"Subject: two\r\n\r\nfrom two\r\n")
        from twisted.internet import reactor, task

        yield task.deferLater(reactor, 0.2, lambda: None)  # (the group commit's turns)
        # Before: worker two wrote its message meanwhile (and could tell its
        # UID before the list's name was on disk).
        self.assertNotIn("write", [e[1] for e in self.events])
        self.assertNoResult(second)
        self.run_jobs()
        self.assertEqual(sorted([(yield first), (yield second)]), [3, 4])
        first_write = self.events.index(next(e for e in self.events if e[1] == "write"))
        self.assertIn(UIDLIST, [e[2] for e in self.events[:first_write] if e[1] == "fsync"])
