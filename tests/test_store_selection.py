# -*- test-case-name: tests.test_store_selection -*-
"""
What a Maildir folder hands an IMAP SELECT (L{MaildirFolder.selection}):
the UIDs, the first message without \\Seen and the keywords in use, kept
without walking every message when nothing changed, and always the same
as a walk over L{MaildirFolder.messages} would give.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store.interfaces import INBOX, SEEN
from twisted_mailhub.store.maildir import MaildirStore

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"


def walked(folder):
    infos = folder.messages()
    first = next((i.uid for i in infos if SEEN not in i.flags), 0)
    keywords = {f for i in infos for f in i.flags if not f.startswith("\\")}
    return [i.uid for i in infos], first, keywords


class SelectionTests(unittest.TestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.folder = MaildirStore(self.root, hostname="test").account("alice@example.org").folder(INBOX)

    def selection(self):
        uids, first, keywords = self.folder.selection()
        return list(uids), first, set(keywords)

    @defer.inlineCallbacks
    def test_selection_follows_deliveries_flag_changes_keywords_and_expunges(self):
        self.assertEqual(self.selection(), ([], 0, set()))
        for _ in range(5):
            yield self.folder.deliver(MESSAGE)
        self.assertEqual(self.selection(), walked(self.folder))
        uids = self.selection()[0]
        self.folder.set_flags(uids[:2], ["\\Seen"], "add")
        self.assertEqual(self.selection()[1], uids[2])
        self.folder.set_flags([uids[3]], ["$Later"], "add")
        self.assertEqual(self.selection(), walked(self.folder))
        self.assertEqual(self.selection()[2], {"$Later"})
        self.folder.expunge([uids[2], uids[3]])
        self.assertEqual(self.selection(), walked(self.folder))
        self.assertEqual(self.selection()[2], set())

    @defer.inlineCallbacks
    def test_a_change_made_by_another_program_is_in_the_next_selection(self):
        for _ in range(3):
            yield self.folder.deliver(MESSAGE)
        self.folder.take_new()
        before = self.selection()
        # Another program marks the first message seen (a rename in cur/).
        info = self.folder.messages()[0]
        old = self.folder.path(info.uid)
        os.rename(old, os.path.join(os.path.dirname(old), info.key + ":2,S"))
        os.utime(os.path.dirname(old), ns=(0, 0))  # a different mtime, however fast the rename
        self.assertEqual(before[1], info.uid)
        self.assertEqual(self.selection(), walked(self.folder))
        self.assertEqual(self.selection()[1], self.folder.messages()[1].uid)

    @defer.inlineCallbacks
    def test_the_uids_given_are_the_callers_to_change(self):
        for _ in range(3):
            yield self.folder.deliver(MESSAGE)
        mine = self.folder.selection()[0]
        del mine[0]
        self.assertEqual(len(self.folder.selection()[0]), 3)
