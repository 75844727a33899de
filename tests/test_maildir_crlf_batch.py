# -*- test-case-name: tests.test_maildir_crlf_batch -*-
"""
Files another MDA left with bare LFs, listed on trust at a folder's load,
are made CRLF in a worker thread (store/maildir.py: _check_in_thread,
_to_crlf_many): their copies share one flush, as a batch of the group
commit does (one syncfs on a quiet system, else their fsyncs side by
side), not one fsync after another; and a copy is renamed over its file,
and that rename made durable (its directory fsynced), before the check's
finding (the size told, mailhub-unchecked) is recorded.
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_mailhub.store import durable, maildir
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import MaildirFolder, MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles

from tests.thread_helpers import HeldThread

BARE = b"Subject: bare LF\n\nbody\nmore\n"
COUNT = 5


class CRLFBatchTests(HeldThread, unittest.TestCase):
    def setUp(self):
        self.events: list[tuple] = []
        self.jobs: list[tuple] = []
        self.store = MaildirStore(self.mktemp(), GroupCommitWriter(task.Clock()), hostname="test")
        self.store.small_files = SmallFiles(fsync=lambda fd: None, run=self.thread)
        account = self.store.account("alice@example.org")
        inbox = account.folder("INBOX")
        self.run_jobs()
        self.paths = []
        for i in range(COUNT):
            path = os.path.join(os.path.abspath(inbox.directory), "cur", f"170000000{i}.M{i}P1Q{i}.mda,S={len(BARE)}:2,S")
            with open(path, "wb") as f:
                f.write(BARE)
            self.paths.append(path)
        account._folders.clear()
        self.account = account
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src, dst, *a, **kw):
            self.events.append(("rename", os.path.basename(dst)))
            real_rename(src, dst, *a, **kw)

        def syncfs(path, watch=None):
            self.events.append(("syncfs", path))

        self.patch(os, "fsync", fsync)
        self.patch(os, "rename", rename)
        self.patch(durable, "_sync_filesystem", syncfs)
        real_save = MaildirFolder._save_unchecked

        def save_unchecked(folder, sync=False):
            self.events.append(("unchecked saved",))
            return real_save(folder, sync)

        self.patch(MaildirFolder, "_save_unchecked", save_unchecked)

    def load_and_check(self):
        folder = self.account.folder("INBOX")
        del self.events[:]
        self.run_jobs()  # (the load's check, "in the thread")
        self.assertIsNone(folder.unsettled())
        for path in self.paths:
            with open(path, "rb") as f:
                self.assertEqual(f.read(), BARE.replace(b"\n", b"\r\n"))
        self.assertEqual([i.size for i in folder.messages()], [len(BARE) + 4] * COUNT)
        self.assertEqual(folder._unchecked, set())
        return [e for e in self.events if e[0] != "rename" or e[1].endswith(":2,S")]

    def copies_flushed(self, events) -> list[str]:
        return [e[1] for e in events if e[0] == "fsync" and e[1].endswith(".crlf")]

    def test_on_a_quiet_system_the_copies_share_one_syncfs_then_one_fsync_of_their_directory(self):
        self.patch(durable, "choose_flush", lambda: "syncfs")
        events = self.load_and_check()
        cur = os.path.dirname(self.paths[0])
        # (before: an fsync of each copy, one after another, and no fsync
        # of cur/ after the renames)
        self.assertEqual(self.copies_flushed(events), [])
        [syncfs] = [e for e in events if e[0] == "syncfs"]
        self.assertTrue(os.path.isdir(syncfs[1]), syncfs)  # (syncfs(2) of a directory's descriptor)
        kinds = [e[0] for e in events]
        first_rename = kinds.index("rename")
        self.assertLess(kinds.index("syncfs"), first_rename)
        self.assertEqual(kinds.count("rename"), COUNT)
        directory_flush = events.index(("fsync", cur))
        self.assertGreater(directory_flush, len(kinds) - 1 - kinds[::-1].index("rename"))
        self.assertLess(directory_flush, kinds.index("unchecked saved"))

    def test_otherwise_every_copy_is_flushed_before_the_first_rename(self):
        self.patch(durable, "choose_flush", lambda: "files")
        events = self.load_and_check()
        kinds = [e[0] for e in events]
        first_rename = kinds.index("rename")
        flushed = self.copies_flushed(events[:first_rename])
        # (before: fsync, rename, fsync, rename...: one flush waited for at a time)
        self.assertEqual(len(flushed), COUNT)
        self.assertEqual(self.copies_flushed(events[first_rename:]), [])
        cur = os.path.dirname(self.paths[0])
        self.assertLess(events.index(("fsync", cur)), kinds.index("unchecked saved"))

    def test_a_failed_flush_renames_nothing_and_the_files_stay_listed_on_trust(self):
        self.patch(durable, "choose_flush", lambda: "syncfs")

        def broken(path, watch=None):
            raise OSError(5, "Input/output error")

        self.patch(durable, "_sync_filesystem", broken)
        folder = self.account.folder("INBOX")
        self.run_jobs()
        for path in self.paths:
            with open(path, "rb") as f:
                self.assertEqual(f.read(), BARE)  # (whole and untouched)
        self.assertEqual(len(folder._unchecked), COUNT)  # checked when first needed
        tmp = os.path.join(os.path.dirname(os.path.dirname(self.paths[0])), "tmp")
        self.assertEqual([n for n in os.listdir(tmp) if n.endswith(".crlf")], [])

    def test_more_files_than_a_batch_go_in_several_batches(self):
        self.patch(maildir, "CRLF_BATCH", 2)
        self.patch(durable, "choose_flush", lambda: "syncfs")
        events = self.load_and_check()
        # 2 + 2 + 1: a syncfs for each pair, an fsync for the one left
        self.assertEqual(len([e for e in events if e[0] == "syncfs"]), 2)
        self.assertEqual(len(self.copies_flushed(events)), 1)


    def test_a_file_another_program_removes_or_renames_during_the_flush_is_not_brought_back(self):
        # Another program (a second MUA on the Maildir) expunges one file
        # and sets a flag on another (a rename) while the copies are
        # flushed. Before, each copy was renamed to the old name all the
        # same: the expunged message came back, the flagged one was there
        # twice.
        self.patch(durable, "choose_flush", lambda: "syncfs")
        flagged = self.paths[1].replace(":2,S", ":2,FS")

        def meanwhile(path, watch=None):
            os.unlink(self.paths[0])
            os.rename(self.paths[1], flagged)

        self.patch(durable, "_sync_filesystem", meanwhile)
        self.account.folder("INBOX")
        self.run_jobs()
        self.assertFalse(os.path.exists(self.paths[0]))
        self.assertFalse(os.path.exists(self.paths[1]))
        with open(flagged, "rb") as f:
            self.assertEqual(f.read(), BARE)  # (its own, untouched: checked when next needed)
        for path in self.paths[2:]:
            with open(path, "rb") as f:
                self.assertEqual(f.read(), BARE.replace(b"\n", b"\r\n"))
        tmp = os.path.join(os.path.dirname(os.path.dirname(self.paths[0])), "tmp")
        self.assertEqual([n for n in os.listdir(tmp) if n.endswith(".crlf")], [])

    def test_one_file_made_crlf_alone_is_not_brought_back_if_removed_meanwhile(self):
        real_utime = os.utime
        path = self.paths[0]

        def utime(target, *a, **kw):
            if str(target).endswith(".crlf") and os.path.exists(path):
                os.unlink(path)  # (expunged by another program just now)
            return real_utime(target, *a, **kw)

        self.patch(os, "utime", utime)
        with self.assertRaises(FileNotFoundError):
            maildir._to_crlf_in_place(path)
        self.assertFalse(os.path.exists(path))
        tmp = os.path.join(os.path.dirname(os.path.dirname(path)), "tmp")
        self.assertEqual([n for n in os.listdir(tmp) if n.endswith(".crlf")], [])


class CutUncheckedFileTests(unittest.TestCase):
    """
    mailhub-unchecked is written without a flush (a finding lost is made
    again): a crash can leave it empty or cut. A name missing from it must
    not be taken as checked: a file without its end line is not trusted,
    and the files another program put in are checked again.
    """

    def assert_checked_again_after_a_cut(self, name: str) -> None:
        """
        Put a bare-LF file named C{name} in a new store's INBOX/cur, have a
        second store list it on trust and die before its check, then cut
        mailhub-unchecked (to nothing, then to its header line alone) and
        load the folder again: the file must be checked again, told at its
        CRLF size and read with CRLFs.
        """
        jobs: list = []

        def never(function, *args):
            jobs.append(function)  # (the process dies before the check runs)
            return defer.Deferred()

        root = self.mktemp()
        store = MaildirStore(root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.maybeDeferred(f, *a))
        inbox = store.account("alice@example.org").folder("INBOX")
        path = os.path.join(inbox.directory, "cur", name)
        with open(path, "wb") as f:
            f.write(BARE)
        crashed = MaildirStore(root, GroupCommitWriter(task.Clock()), hostname="test")
        crashed.small_files = SmallFiles(fsync=lambda fd: None, run=never)
        crashed.account("alice@example.org").folder("INBOX")  # (lists it on trust, then dies)
        unchecked = os.path.join(inbox.directory, maildir.UNCHECKED)
        with open(unchecked, encoding="utf-8") as f:
            self.assertIn(f"? {os.path.basename(path).split(':')[0]}\n", f.read())
        for cut in (0, len(maildir._UNCHECKED_HEADER)):
            # The crash: the file's rename reached the disk, its data did not (all or part).
            with open(unchecked, "r+b") as f:
                f.truncate(cut)
            with open(path, "wb") as f:
                f.write(BARE)
            after = MaildirStore(root, GroupCommitWriter(task.Clock()), hostname="test")
            after.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.maybeDeferred(f, *a))
            folder = after.account("alice@example.org").folder("INBOX")
            # (before: taken as checked, told at its bare-LF size and read with bare LFs)
            self.assertEqual([m.size for m in folder.messages()], [len(BARE) + 4])
            with open(path, "rb") as f:
                self.assertEqual(f.read(), BARE.replace(b"\n", b"\r\n"))

    def test_a_cut_unchecked_file_has_the_outside_files_checked_again(self):
        # (named as Dovecot's LDA names them: ,W= is the size with CRLFs)
        self.assert_checked_again_after_a_cut(f"1700000000.M1P1Q1.mda,S={len(BARE)},W={len(BARE) + 4}:2,S")

    def test_a_cut_unchecked_file_has_an_outside_file_named_as_the_hubs_own_checked_again(self):
        # Dovecot's LDA without ,W= names a bare-LF file exactly as the hub
        # names its own (time.MnPnQn.host,S=n): such names were trusted
        # after the cut, the file told at its bare-LF size and read as is.
        name = f"1700000000.M1P1Q1.mda,S={len(BARE)}:2,S"
        self.assertTrue(maildir._OWN_NAME.match(name.split(":")[0]))
        self.assert_checked_again_after_a_cut(name)

    def test_an_unreadable_unchecked_file_is_said_in_words_not_as_python_prints_an_error(self):
        from twisted.logger import capturedLogs, formatEvent

        root = self.mktemp()
        store = MaildirStore(root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.maybeDeferred(f, *a))
        inbox = store.account("alice@example.org").folder("INBOX")
        unchecked = os.path.join(inbox.directory, maildir.UNCHECKED)
        if os.path.exists(unchecked):
            os.unlink(unchecked)
        os.mkdir(unchecked)  # (not a file another program could have left: open(2) fails, EISDIR)
        after = MaildirStore(root, GroupCommitWriter(task.Clock()), hostname="test")
        after.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.maybeDeferred(f, *a))
        with capturedLogs() as events:
            after.account("alice@example.org").folder("INBOX")
        said = [formatEvent(e) for e in events if "unreadable" in e.get("log_format", "")]
        self.assertEqual(len(said), 1, said)
        # (before: "[Errno 21] Is a directory: '/.../mailhub-unchecked'")
        self.assertIn("Is a directory", said[0])
        self.assertNotIn("[Errno", said[0])


class CutUncheckedFileReadInTheThreadTests(HeldThread, unittest.TestCase):
    """
    After a crash cut mailhub-unchecked, the first 4 KiB of each file
    named as the hub names its own are read again (a bare LF there: the
    file is checked whole): in the load's check thread
    (L{MaildirFolder._check_in_thread}), not in the reactor, where 20,000
    files were some 280 ms of every other session's wait.
    """

    def setUp(self):
        self.jobs: list[tuple] = []
        self.root = os.path.abspath(self.mktemp())
        store = MaildirStore(self.root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.maybeDeferred(f, *a))
        inbox = store.account("alice@example.org").folder("INBOX")
        self.cur = os.path.abspath(os.path.join(inbox.directory, "cur"))
        self.clean = CLEAN_CRLF = b"Subject: CRLF\r\n\r\nbody\r\n"
        self.names = [f"170000000{i}.M{i}P1Q{i}.mda,S={len(CLEAN_CRLF)}:2,S" for i in range(COUNT)]
        # One more, the hub's shape too, with bare LFs (Dovecot's LDA without ,W=).
        self.bare = f"1700000009.M9P1Q9.mda,S={len(BARE)}:2,S"
        for name in self.names + [self.bare]:
            with open(os.path.join(self.cur, name), "wb") as f:
                f.write(BARE if name == self.bare else CLEAN_CRLF)
        # A load lists them on trust, then the process dies before its check.
        crashed = MaildirStore(self.root, GroupCommitWriter(task.Clock()), hostname="test")
        crashed.small_files = SmallFiles(fsync=lambda fd: None, run=lambda f, *a: defer.Deferred())
        crashed.account("alice@example.org").folder("INBOX")
        # The crash: mailhub-unchecked cut to nothing.
        with open(os.path.join(os.path.dirname(self.cur), maildir.UNCHECKED), "wb"):
            pass
        self.reads: list[tuple[str, bool]] = []
        real_open, real_os_open = open, os.open

        def open_(path, *args, **kwargs):
            if str(path).startswith(self.cur + "/"):
                self.reads.append((os.path.basename(str(path)), self.in_thread))
            return real_open(path, *args, **kwargs)

        def os_open(path, *args, **kwargs):
            if str(path).startswith(self.cur + "/"):
                self.reads.append((os.path.basename(str(path)), self.in_thread))
            return real_os_open(path, *args, **kwargs)

        import builtins

        self.patch(builtins, "open", open_)
        self.patch(os, "open", os_open)

    def test_the_first_4_kib_of_the_hubs_own_names_are_read_in_the_thread_and_a_bare_lf_one_is_checked_whole(self):
        store = MaildirStore(self.root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=self.thread)
        folder = store.account("alice@example.org").folder("INBOX")
        # (before: every file opened here, in the reactor, at the load)
        self.assertEqual([name for name, in_thread in self.reads if not in_thread], [])
        self.assertIsNotNone(folder.unsettled())  # (SELECT, STATUS, a POP3 login wait for the check)
        self.run_jobs()
        self.assertIsNone(folder.unsettled())
        self.assertEqual(sorted({name for name, in_thread in self.reads if in_thread}), sorted(self.names + [self.bare]))
        sizes = {m.key: m.size for m in folder.messages()}
        self.assertEqual([sizes[n.split(":")[0]] for n in self.names], [len(self.clean)] * COUNT)
        self.assertEqual(sizes[self.bare.split(":")[0]], len(BARE) + 4)
        with open(os.path.join(self.cur, self.bare), "rb") as f:
            self.assertEqual(f.read(), BARE.replace(b"\n", b"\r\n"))
        self.assertEqual(folder._unchecked, set())
        # Found clean, they are not listed on trust again after a restart.
        with open(os.path.join(os.path.dirname(self.cur), maildir.UNCHECKED), encoding="utf-8") as f:
            self.assertNotIn("? ", f.read())

    def test_a_row_needed_before_the_thread_has_run_is_checked_whole_here(self):
        store = MaildirStore(self.root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(fsync=lambda fd: None, run=self.thread)
        folder = store.account("alice@example.org").folder("INBOX")
        uid = next(m.uid for m in folder.messages() if m.key == self.bare.split(":")[0])
        self.assertEqual(folder.read(uid), BARE.replace(b"\n", b"\r\n"))
        self.run_jobs()
        self.assertEqual(folder.info(uid).size, len(BARE) + 4)
