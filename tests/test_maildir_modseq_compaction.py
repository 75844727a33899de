# -*- test-case-name: tests.test_maildir_modseq_compaction -*-
"""
The modseq log (RFC 7162: a message's mod-sequence, one line per change,
the last wins) is compacted once it holds far more lines than messages.
The compaction is crash-safe and off the reactor (store/maildir.py:
_compact_modseq_log): the text is made from the table, written to a tmp
file and fsynced in a worker thread, the lines appended meanwhile carried
after it, then renamed over the log and the directory fsynced. Before, it
was replaced in the reactor with no flush at all: a crash could leave an
empty log, every message's modseq back at 1 (below what clients were
shown).
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import MODSEQ_LOG, MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles

from tests.thread_helpers import HeldThread

MESSAGE = b"Subject: x\r\n\r\nbody\r\n"


class ModseqCompactionTests(HeldThread, unittest.TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.jobs: list[tuple] = []
        self.events: list[tuple] = []
        self.in_thread = False
        self.store = self.open_store(self.thread)
        account = self.store.account("alice@example.org")
        inbox = account.folder("INBOX")
        self.run_jobs()
        for i in range(3):
            with open(os.path.join(inbox.directory, "cur", f"170000000{i}.M{i}P1Q{i}.test,S={len(MESSAGE)}:2,"), "wb") as f:
                f.write(MESSAGE)
        account._folders.clear()
        self.folder = account.folder("INBOX")
        self.run_jobs()
        self.log = os.path.join(self.folder.directory, MODSEQ_LOG)

    def open_store(self, run):
        store = MaildirStore(self.root, GroupCommitWriter(task.Clock()), hostname="test")
        store.small_files = SmallFiles(run=run)
        return store

    def record(self) -> None:
        real_fsync, real_replace = os.fsync, os.replace
        where = lambda: "thread" if self.in_thread else "reactor"  # noqa: E731

        def fsync(fd):
            self.events.append((where(), "fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src, dst, *args, **kwargs):
            self.events.append((where(), "replace", os.path.basename(dst)))
            real_replace(src, dst, *args, **kwargs)

        self.patch(os, "fsync", fsync)
        self.patch(os, "replace", replace)

    def test_a_compaction_is_flushed_in_a_thread_renamed_whole_and_keeps_what_came_meanwhile(self):
        self.record()
        for flag in range(1010):
            # (each change appends a line; the compaction starts past 2 x 3 + 1000)
            self.folder.set_flags([1 + flag % 3], ["\\Flagged"], "add" if flag % 2 == 0 else "remove")
        # (before: the log replaced here, in the reactor, with no fsync)
        self.assertEqual([e for e in self.events if e[0] == "reactor" and (e[1] == "fsync" or e[2] == MODSEQ_LOG)], [])
        self.assertEqual(len(self.jobs), 1)  # the compaction, on its way
        # Changes while it is on its way are appended, and kept.
        self.folder.set_flags([2], ["\\Seen"], "add")
        late = self.folder.modseq(2)
        self.run_jobs()
        kinds = [(e[1], os.path.basename(e[2])) for e in self.events if e[0] == "thread"]
        tmp_flush = next(i for i, (kind, name) in enumerate(kinds) if kind == "fsync" and name.startswith(MODSEQ_LOG + ".") and name.endswith(".tmp"))
        renamed = kinds.index(("replace", MODSEQ_LOG))
        directory_flush = kinds.index(("fsync", os.path.basename(self.folder.directory)))
        self.assertLess(tmp_flush, renamed)
        self.assertLess(renamed, directory_flush)
        with open(self.log, "rb") as f:
            self.assertLess(f.read().count(b"\n"), 20)  # compacted
        shown = {uid: self.folder.modseq(uid) for uid in (1, 2, 3)}
        self.assertEqual(shown[2], late)
        again = self.open_store(lambda function, *args: defer.maybeDeferred(function, *args)).account("alice@example.org").folder("INBOX")
        self.assertEqual({uid: again.modseq(uid) for uid in (1, 2, 3)}, shown)
        self.assertEqual([n for n in os.listdir(self.folder.directory) if ".tmp" in n], [])
