# -*- test-case-name: tests.test_maildir_rename_crash -*-
"""
A Maildir RENAME is several steps (one directory per folder of the
hierarchy, then the subscriptions file): a process killed between any two
leaves the account as it was or, at the next open, finished. Each test
runs the RENAME in a child process that dies (os._exit) at one step, as a
crash would, then opens the account again in this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

import twisted_mailhub

from twisted_mailhub.store.maildir import RENAMING, MaildirStore

ADDRESS = "alice@example.org"

CHILD = textwrap.dedent(
    """
    import os, sys
    from twisted.internet import defer
    from twisted_mailhub.store import maildir
    from twisted_mailhub.store.maildir import MaildirStore
    from twisted_mailhub.store.smallfiles import SmallFiles

    root, crash_at = sys.argv[1], sys.argv[2]
    store = MaildirStore(root, hostname="test")
    # The RENAME's record is written and flushed (SmallFiles' first batch,
    # at once here); no later flush runs: the process dies first.
    batches = []

    def run(function, *args):
        batches.append(function)
        return defer.maybeDeferred(function, *args) if len(batches) == 1 else defer.Deferred()

    store.small_files = SmallFiles(run=run)
    account = store.account("alice@example.org")
    real_rename = os.rename
    renames = []

    def rename(a, b):
        if crash_at == "mid-hierarchy" and renames:
            os._exit(0)
        renames.append(b)
        real_rename(a, b)

    if crash_at == "before-moves":
        maildir.MaildirAccount._move_folders = lambda self, old, new: os._exit(0)
    os.rename = rename
    account.rename_folder("Work", "Done")
    os._exit(0)  # before-subscriptions: moved, nothing flushed, subscriptions as before
    """
)


class RenameCrashTests(unittest.TestCase):
    def setUp(self):
        self.root = self.mktemp()
        account = MaildirStore(self.root, hostname="test").account(ADDRESS)
        for name in ("Work", "Work/2024", "Work/2025", "Other"):
            account.create_folder(name)
        for name in ("INBOX", "Work", "Work/2024", "Other"):
            account.subscribe(name)
        self.account_dir = account.path

    def crash(self, at: str) -> None:
        # (the package the test imports: the checkout's, not an installed one)
        source = os.path.dirname(os.path.dirname(os.path.abspath(twisted_mailhub.__file__)))
        env = dict(os.environ, PYTHONPATH=source + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run([sys.executable, "-c", CHILD, self.root, at], env=env, timeout=60, capture_output=True, text=True)
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        self.assertTrue(os.path.exists(os.path.join(self.account_dir, RENAMING)), "the RENAME's record is on disk")

    def reopened(self):
        return MaildirStore(self.root, hostname="test").account(ADDRESS)

    def assert_renamed(self, account) -> None:
        self.assertEqual(account.folders(), ["INBOX", "Done", "Done/2024", "Done/2025", "Other"])
        self.assertEqual(sorted(account.subscriptions()), ["Done", "Done/2024", "INBOX", "Other"])
        self.assertFalse(os.path.exists(os.path.join(self.account_dir, RENAMING)))

    def test_a_crash_after_the_folders_moved_and_before_the_subscriptions_is_finished_at_the_next_open(self):
        self.crash("before-subscriptions")
        self.assert_renamed(self.reopened())

    def test_a_crash_between_two_folders_of_the_hierarchy_is_finished_at_the_next_open(self):
        self.crash("mid-hierarchy")
        self.assert_renamed(self.reopened())

    def test_a_crash_before_any_folder_moved_is_finished_at_the_next_open(self):
        self.crash("before-moves")
        self.assert_renamed(self.reopened())

    def test_a_finished_rename_leaves_no_record_and_a_running_ones_record_is_left_to_it(self):
        account = self.reopened()
        account.rename_folder("Work", "Done")  # (no reactor: flushed at once)
        self.assert_renamed(account)
        # --workers: another worker's RENAME under way is its own to finish.
        account.rename_folder("Done", "Work")
        record = {"old": "Work", "new": "Elsewhere", "pid": os.getpid(), "boot": open("/proc/sys/kernel/random/boot_id").read().strip()}
        with open(os.path.join(self.account_dir, RENAMING), "w") as f:
            json.dump(record, f)
        self.assertIn("Work", self.reopened().folders())
