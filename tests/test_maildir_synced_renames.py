# -*- test-case-name: tests.test_maildir_synced_renames -*-
"""
Where the Maildir store rewrites a file in place and says it is durable
(sync), the rename is made durable too: its directory is fsynced after
it. The UID list rewritten where it is written (a folder without the
account's SmallFiles, as a script opens it) and the account's UIDVALIDITY
counter were fsynced as files, but their renames were not: after a crash
the old file could come back, and the lines appended to the new one
(new messages' UIDs) with it lost.
"""

from __future__ import annotations

import os

from twisted.internet import task
from twisted.trial import unittest

from twisted_mailhub.store import maildir
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import UIDLIST, UIDVALIDITY_FILE, MaildirFolder


class SyncedRenameTests(unittest.TestCase):
    def setUp(self):
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src, dst, *args, **kwargs):
            self.events.append(("replace", os.path.abspath(dst)))
            real_replace(src, dst, *args, **kwargs)

        self.patch(os, "fsync", fsync)
        self.patch(os, "replace", replace)

    def assert_rename_flushed(self, path: str) -> None:
        renamed = self.events.index(("replace", path))
        self.assertIn(("fsync", os.path.dirname(path)), self.events[renamed + 1 :], self.events)

    def test_a_uid_list_written_in_place_has_its_rename_flushed(self):
        account = os.path.abspath(self.mktemp())
        path = os.path.join(account, ".Sent")
        os.makedirs(path)
        folder = MaildirFolder("Sent", path, GroupCommitWriter(task.Clock()), "test", os.path.join(account, UIDVALIDITY_FILE))
        del self.events[:]
        folder._write_uidlist()  # (a rewrite without SmallFiles: _rewrite_uidlist, a script's store)
        self.assert_rename_flushed(os.path.join(path, UIDLIST))

    def test_the_uidvalidity_counter_has_its_rename_flushed(self):
        account = os.path.abspath(self.mktemp())
        os.makedirs(account)
        counter = os.path.join(account, UIDVALIDITY_FILE)
        maildir._remember_uid_validity(counter, 1700000000, sync=True)
        self.assert_rename_flushed(counter)

    def test_a_file_made_crlf_in_place_has_its_rename_flushed(self):
        # The reactor's fallback check (_check) and a script's store
        # (_register without SmallFiles) make one file CRLF at a time.
        folder = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(folder, sub))
        path = os.path.join(folder, "cur", "1700000000.M1P1Q1.mda,S=9:2,S")
        with open(path, "wb") as f:
            f.write(b"a\nb\nc\n")
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            self.events.append(("replace", os.path.abspath(dst)))
            real_rename(src, dst, *args, **kwargs)

        self.patch(os, "rename", rename)
        self.assertEqual(maildir._to_crlf_in_place(path)[0], 9)
        self.assert_rename_flushed(path)
