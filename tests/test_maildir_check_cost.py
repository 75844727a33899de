# -*- test-case-name: tests.test_maildir_check_cost -*-
"""
What checking the files listed on trust (a name's C{S=} size, read later)
costs a large folder: the rows it reads, not every row of the folder.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store.interfaces import INBOX
from twisted_mailhub.store.maildir import MaildirStore

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"


class CountingNames:
    """A table's name column that counts the rows looked at."""

    def __init__(self, names):
        self.names = names
        self.looked = 0

    def __getitem__(self, i):
        self.looked += 1
        return self.names[i]

    def __iter__(self):
        for name in self.names:
            self.looked += 1
            yield name

    def __len__(self):
        return len(self.names)

    def __getattr__(self, name):
        return getattr(self.names, name)


class CheckCostTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_file_found_after_the_load_is_checked_before_it_is_told_without_walking_every_row(self):
        root = self.mktemp()
        folder = MaildirStore(root, hostname="test").account("alice@example.org").folder(INBOX)
        rows = 3000
        for i in range(rows):
            with open(os.path.join(folder.directory, "cur", f"100{i}.M{i}P1.test:2,S"), "wb") as f:
                f.write(MESSAGE)
        self.assertEqual(len(folder.messages()), rows)
        # Another program's delivery, its size in its name (S=): found by a
        # look after the load, it is read (made CRLF) in a worker thread
        # before it is told (store/maildir.py _hold_found), so nothing is
        # left to check when a size is asked.
        name = "200.M1P2.test,S=%d" % len(MESSAGE.replace(b"\r\n", b"\n"))
        with open(os.path.join(folder.directory, "new", name), "wb") as f:
            f.write(MESSAGE.replace(b"\r\n", b"\n"))
        folder.refresh()
        yield folder.unsettled()
        table = folder._table
        counted = []
        check_all = folder._check_all

        def counting_check_all():
            # (the rows the check looks at, not those messages() lists)
            counting = CountingNames(table.names)
            table.names = counting
            try:
                check_all()
            finally:
                table.names = counting.names
                counted.append(counting.looked)

        folder._check_all = counting_check_all
        infos = folder.messages()
        self.assertEqual(counted, [])  # (no walk at all: nothing listed on trust)
        self.assertEqual(infos[-1].size, len(MESSAGE))  # checked: its size as sent (CRLF)
        self.assertEqual(len(infos), rows + 1)
        with open(os.path.join(folder.directory, "new", name), "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
