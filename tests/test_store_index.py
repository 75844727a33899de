# -*- test-case-name: tests.test_store_index -*-
"""
The Maildir index (C{mailhub-index}): a cached parse of the UID list, so
that a cold load of a big folder parses only what was appended since. It
is used only while it describes a prefix of the list byte for byte (a
BLAKE2b digest of exactly those octets); otherwise the list is parsed in full and
the list, not the cache, decides.
"""

from __future__ import annotations

import os
import platform

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store import maildir, table
from twisted_mailhub.store.interfaces import INBOX
from twisted_mailhub.store.maildir import INDEX, UIDLIST, MaildirStore

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"
ADDRESS = "alice@example.org"


class IndexTests(unittest.TestCase):
    def setUp(self):
        # Every load is worth an index here (the hub waits for 1,000 lines).
        self.patch(maildir, "INDEX_MIN_LINES", 1)
        self.parsed = 0
        real = maildir._parse_line

        def counting(line):
            self.parsed += 1
            return real(line)

        self.patch(maildir, "_parse_line", counting)
        self.root = self.mktemp()
        self.folder = self.reopen()
        self.uidlist = os.path.join(self.folder.directory, UIDLIST)
        self.index = os.path.join(self.folder.directory, INDEX)

    def reopen(self):
        self.parsed = 0
        return MaildirStore(self.root, hostname="test").account(ADDRESS).folder(INBOX)

    def state(self, folder):
        # (the list keeps whole seconds; a folder that wrote it, the fraction too)
        return [(i.uid, i.key, sorted(i.flags), i.size, int(i.internal_date)) for i in folder.messages()]

    @defer.inlineCallbacks
    def deliver(self, n):
        for _ in range(n):
            yield self.folder.deliver(MESSAGE)

    @defer.inlineCallbacks
    def test_cold_load_from_the_index_parses_no_line_and_sees_the_same_messages(self):
        yield self.deliver(4)
        uid = self.folder.messages()[1].uid
        self.folder.set_flags([uid], ["\\Seen", "$Later"], "add")
        expected = self.state(self.folder)
        first = self.reopen()  # parses the list, writes the index
        self.assertEqual(self.parsed, 5)  # 4 messages, and the keyword change's line
        self.assertTrue(os.path.exists(self.index))
        second = self.reopen()
        self.assertEqual(self.parsed, 0)
        self.assertEqual(self.state(first), expected)
        self.assertEqual(self.state(second), expected)
        self.assertEqual((second.uid_validity, second.uid_next), (self.folder.uid_validity, self.folder.uid_next))

    @defer.inlineCallbacks
    def test_lines_appended_after_the_index_are_the_only_ones_parsed(self):
        yield self.deliver(3)
        self.reopen()
        self.folder = self.reopen()
        yield self.deliver(2)
        again = self.reopen()
        self.assertEqual(self.parsed, 2)
        self.assertEqual(self.state(again), self.state(self.folder))
        self.assertEqual(len(again.messages()), 5)

    @defer.inlineCallbacks
    def test_a_load_that_parsed_lines_after_the_index_keeps_no_table_of_names(self):
        # (made to parse them; kept, 100,000 names would be about 14 MB)
        yield self.deliver(3)
        self.reopen()
        self.folder = self.reopen()
        yield self.deliver(2)
        again = self.reopen()
        self.assertEqual(self.parsed, 2)
        self.assertIsNone(again._table._by_base)
        self.assertEqual(len(again.messages()), 5)
        self.assertEqual(again._by_base, {i.key: i.uid for i in again.messages()})  # made again when asked

    @defer.inlineCallbacks
    def test_a_list_changed_in_place_is_parsed_in_full_and_wins_over_the_index(self):
        yield self.deliver(3)
        self.reopen()
        with open(self.uidlist, "rb") as f:
            text = f.read()
        # Another program (or a crash) changed a line without changing the
        # length: the index no longer describes these octets.
        last = text.rstrip(b"\n").rsplit(b"\n", 1)[1]
        changed = text.replace(last, b"9" + last[1:])
        with open(self.uidlist, "wb") as f:
            f.write(changed)
        again = self.reopen()
        self.assertEqual(self.parsed, 3)
        self.assertIn(9, [i.uid for i in again.messages()])

    @defer.inlineCallbacks
    def test_an_expunge_leaves_the_list_and_its_index_and_the_message_stays_gone(self):
        yield self.deliver(3)
        self.reopen()
        self.folder = self.reopen()
        with open(self.uidlist, "rb") as f:
            before = f.read()
        gone = self.folder.messages()[0].uid
        self.folder.expunge([gone])
        with open(self.uidlist, "rb") as f:
            self.assertEqual(f.read(), before)  # no rewrite, no flush
        again = self.reopen()
        self.assertEqual(self.parsed, 0)
        self.assertNotIn(gone, [i.uid for i in again.messages()])
        self.assertEqual(self.state(again), self.state(self.folder))

    @defer.inlineCallbacks
    def test_an_index_with_lines_of_expunged_messages_loads_in_uid_order(self):
        yield self.deliver(6)
        uids = [i.uid for i in self.folder.messages()]
        self.folder.expunge(uids[1:3])  # their lines stay in the list
        self.reopen()  # an index with their rows, not present
        sorts = []
        real = table.MessageTable.take
        self.patch(table.MessageTable, "take", lambda rows, keep: (sorts.append(len(keep)), real(rows, keep))[1])
        again = self.reopen()
        self.assertEqual(self.parsed, 0)
        self.assertEqual(sorts, [4])  # only the dead rows taken out, no sort
        self.assertEqual(self.state(again), self.state(self.folder))
        yield again.deliver(MESSAGE)
        self.assertEqual(again.messages()[-1].uid, uids[-1] + 1)

    @defer.inlineCallbacks
    def test_dead_lines_are_compacted_and_expunged_uids_are_never_given_again(self):
        self.patch(maildir, "EXTRA_LINES_SLACK", 1)
        yield self.deliver(6)
        uids = [i.uid for i in self.folder.messages()]
        for uid in uids[:3]:
            self.folder.expunge([uid])
        self.folder.expunge([uids[-1]])  # the highest UID: only the header remembers it now
        yield self.folder.rewritten()  # (flushed in a worker thread)
        with open(self.uidlist, "rb") as f:
            text = f.read()
        self.assertEqual(text.count(b"\n"), 1 + 2)  # rewritten: the header and the two left
        again = self.reopen()
        self.assertEqual([i.uid for i in again.messages()], uids[3:5])
        self.folder = again
        yield self.deliver(1)
        self.assertEqual(self.folder.messages()[-1].uid, uids[-1] + 1)

    @defer.inlineCallbacks
    def test_a_damaged_index_file_is_ignored(self):
        yield self.deliver(3)
        expected = self.state(self.reopen())
        with open(self.index, "r+b") as f:
            f.seek(10)
            f.write(b"\0garbage\xff")
        again = self.reopen()
        self.assertEqual(self.parsed, 3)
        self.assertEqual(self.state(again), expected)

    @defer.inlineCallbacks
    def test_torn_tail_after_the_index_is_dropped_and_indexed_lines_kept(self):
        yield self.deliver(3)
        expected = self.state(self.reopen())
        with open(self.uidlist, "ab") as f:
            f.write(b"4 1700000000.M1P2Qtorn.tes")  # an append cut short
        again = self.reopen()
        self.assertEqual(self.state(again), expected)
        with open(self.uidlist, "rb") as f:
            self.assertNotIn(b"Qtorn.tes", f.read())  # (not Q3.tes: a delivered file may be named ...Q3.test)

    def test_files_indexed_at_the_first_scan_keep_their_uids_from_the_index(self):
        cur = os.path.join(self.folder.directory, "cur")
        for i in range(5):
            with open(os.path.join(cur, f"17000000{i:02d}.M{i}P1Q{i}.mda,S={len(MESSAGE)}:2,S"), "wb") as f:
                f.write(MESSAGE)
        os.unlink(self.uidlist)  # lost: every file is given a UID at the first load
        first = self.reopen()
        self.assertEqual(len(first.messages()), 5)
        again = self.reopen()
        self.assertEqual(self.parsed, 0)
        self.assertEqual(self.state(again), self.state(first))

    @defer.inlineCallbacks
    def test_cold_load_lists_a_message_found_in_both_new_and_cur_once_from_cur(self):
        yield self.deliver(2)
        info = self.folder.messages()[0]
        new = os.path.join(self.folder.directory, "new", info.key)
        with open(new, "rb") as f:
            data = f.read()
        # A copy left in cur/ (an interrupted move by another program)
        with open(os.path.join(self.folder.directory, "cur", info.key + ":2,S"), "wb") as f:
            f.write(data)
        again = self.reopen()
        infos = again.messages()
        self.assertEqual([i.uid for i in infos], [i.uid for i in self.folder.messages()])
        self.assertEqual(again.info(info.uid).flags, {"\\Seen"})


    @defer.inlineCallbacks
    def test_keyword_lines_appended_after_the_index_are_taken_last_line_first(self):
        yield self.deliver(3)
        uid = self.folder.messages()[1].uid
        self.folder.set_flags([uid], ["$One"], "add")
        self.reopen()  # writes the index, which covers the $One line
        self.folder = self.reopen()
        self.folder.set_flags([uid], ["$Two"], "add")
        self.folder.set_flags([uid], ["$One"], "remove")
        expected = self.state(self.folder)
        again = self.reopen()
        self.assertEqual(self.parsed, 2)  # only the two lines after the index
        self.assertEqual(self.state(again), expected)
        self.assertEqual(again.info(uid).flags, {"$Two"})
        self.assertEqual(len(again.messages()), 3)

    @defer.inlineCallbacks
    def test_repeated_keyword_lines_are_compacted_once_they_outnumber_the_messages(self):
        self.patch(maildir, "EXTRA_LINES_SLACK", 4)
        yield self.deliver(2)
        uid = self.folder.messages()[0].uid
        for i in range(6):
            self.folder.set_flags([uid], [f"$K{i}"], "replace")
        with open(self.uidlist, "rb") as f:
            lines = f.read().splitlines()
        # 1 header + 2 messages + at most 2 + 4 repeated lines before the rewrite
        self.assertLessEqual(len(lines), 1 + 2 + 2 + 4)
        again = self.reopen()
        self.assertEqual(again.info(uid).flags, {"$K5"})
        self.assertEqual(self.state(again), self.state(self.folder))

    @defer.inlineCallbacks
    def test_a_torn_keyword_line_loses_only_that_change(self):
        yield self.deliver(2)
        uid = self.folder.messages()[0].uid
        self.folder.set_flags([uid], ["$Kept"], "add")
        expected = self.state(self.folder)
        with open(self.uidlist, "ab") as f:
            f.write(b"%d %s 3" % (uid, self.folder.info(uid).key.encode()))  # a power cut mid-append
        again = self.reopen()
        self.assertEqual(self.state(again), expected)
        self.assertEqual((again.uid_validity, again.uid_next), (self.folder.uid_validity, self.folder.uid_next))

    def test_a_message_listed_under_a_second_uid_keeps_its_first(self):
        with open(self.uidlist, "rb") as f:
            header = f.read()
        name = f"1700000000.M1P1Q1.mda,S={len(MESSAGE)}"
        with open(os.path.join(self.folder.directory, "cur", name + ":2,S"), "wb") as f:
            f.write(MESSAGE)
        with open(self.uidlist, "wb") as f:
            f.write(header + f"1 {name} {len(MESSAGE)} 1700000000\n7 {name} {len(MESSAGE)} 1700000000 $X\n".encode())
        again = self.reopen()
        self.assertEqual([(i.uid, sorted(i.flags)) for i in again.messages()], [(1, ["\\Seen"])])


class TrustedDirectoryTests(unittest.TestCase):
    """
    A cold load lists neither C{new/} nor C{cur/} when their mtimes are
    the ones the index saw and had settled (as Dovecot trusts its index);
    any change since (a delivery, a rename or removal by another program)
    moves an mtime, and that directory is listed again.
    """

    def setUp(self):
        self.patch(maildir, "INDEX_MIN_LINES", 1)
        self.listed = []
        real = os.listdir

        def listing(path="."):
            self.listed.append(os.path.basename(path))
            return real(path)

        self.patch(maildir.os, "listdir", listing)
        self.root = self.mktemp()
        self.folder = self.reopen()

    def reopen(self):
        self.listed.clear()
        return MaildirStore(self.root, hostname="test").account(ADDRESS).folder(INBOX)

    def settle(self):
        """Make the directories look unchanged for a minute."""
        for sub in ("new", "cur"):
            path = os.path.join(self.folder.directory, sub)
            then = os.stat(path).st_mtime_ns - 60 * 10**9
            os.utime(path, ns=(then, then))

    def state(self, folder):
        return [(i.uid, i.key, sorted(i.flags), i.size, int(i.internal_date), folder.modseq(i.uid)) for i in folder.messages()]

    @defer.inlineCallbacks
    def fill(self):
        for _ in range(4):
            yield self.folder.deliver(MESSAGE)
        self.folder.take_new()
        uids = [i.uid for i in self.folder.messages()]
        self.folder.set_flags(uids[:1], ["\\Seen", "$Later"], "add")
        yield self.folder.deliver(MESSAGE)  # one left in new/
        self.settle()
        self.reopen()  # lists both, writes the index with their mtimes
        return uids

    @defer.inlineCallbacks
    def test_a_cold_load_of_settled_directories_lists_neither_and_sees_the_same(self):
        yield self.fill()
        expected = self.state(self.folder)
        again = self.reopen()
        self.assertEqual([d for d in self.listed if d in ("new", "cur")], [])
        self.assertEqual(self.state(again), expected)
        self.assertEqual(again.recent(), [expected[-1][0]])
        self.assertEqual(again.path(expected[0][0]), self.folder.path(expected[0][0]))

    @defer.inlineCallbacks
    def test_a_delivery_after_the_index_lists_only_new(self):
        yield self.fill()
        self.folder = self.reopen()
        yield self.folder.deliver(MESSAGE)
        again = self.reopen()
        self.assertEqual([d for d in self.listed if d in ("new", "cur")], ["new"])
        self.assertEqual(self.state(again), self.state(self.folder))

    @defer.inlineCallbacks
    def test_a_rename_by_another_program_after_the_index_is_seen(self):
        uids = yield self.fill()
        path = self.folder.path(uids[1])
        os.rename(path, path + "F")  # <base>:2, -> <base>:2,F: flagged by another program
        again = self.reopen()
        self.assertIn("cur", self.listed)
        self.assertEqual(again.info(uids[1]).flags, {"\\Flagged"})

    @defer.inlineCallbacks
    def test_a_file_removed_by_another_program_after_the_index_is_gone(self):
        uids = yield self.fill()
        os.unlink(self.folder.path(uids[2]))
        again = self.reopen()
        self.assertNotIn(uids[2], [i.uid for i in again.messages()])
        self.assertEqual(len(again.messages()), 4)

    @defer.inlineCallbacks
    def test_directories_changed_just_before_the_index_was_written_are_listed(self):
        for _ in range(2):
            yield self.folder.deliver(MESSAGE)
        self.reopen()  # the index, but new/ changed a moment ago: its mtime is not kept
        self.reopen()
        self.assertEqual(sorted(d for d in self.listed if d in ("new", "cur")), ["cur", "new"])

    @defer.inlineCallbacks
    def test_modseqs_come_from_the_index_and_the_log_after_it(self):
        uids = yield self.fill()
        self.folder = self.reopen()
        self.folder.set_flags([uids[3]], ["$After"], "add")  # a log line after the index
        expected = self.state(self.folder)
        again = self.reopen()
        self.assertEqual(self.state(again), expected)
        self.assertGreater(again.modseq(uids[3]), again.modseq(uids[2]))
        self.assertGreaterEqual(again.highest_modseq, max(m for *_, m in expected))

    def test_a_first_scan_of_many_files_logs_their_modseqs_as_one_run(self):
        cur = os.path.join(self.folder.directory, "cur")
        for i in range(50):
            with open(os.path.join(cur, f"17000000{i:02d}.M{i}P1Q{i}.mda,S={len(MESSAGE)}:2,S"), "wb") as f:
                f.write(MESSAGE)
        found = self.reopen()
        with open(os.path.join(found.directory, maildir.MODSEQ_LOG), "rb") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertEqual({found.modseq(i.uid) for i in found.messages()}, {found.highest_modseq})
        again = self.reopen()
        self.assertEqual(self.state(again), self.state(found))


REAL_GIVE_BACK = maildir.give_back_memory


class MemoryTests(unittest.TestCase):
    """A cold load of a big folder hands the heap pages it no longer needs back."""

    def setUp(self):
        self.trims = []
        self.patch(maildir, "give_back_memory", lambda: self.trims.append(1) or True)
        self.root = self.mktemp()

    def open_cold(self):
        # A new store object: its folders are loaded from disk.
        return MaildirStore(self.root, hostname="test").account(ADDRESS).folder(INBOX)

    @defer.inlineCallbacks
    def test_the_cold_load_of_a_big_folder_gives_memory_back(self):
        self.patch(maildir, "INDEX_MIN_LINES", 3)
        folder = self.open_cold()
        for _ in range(3):
            yield folder.deliver(MESSAGE)
        self.assertEqual(self.trims, [])
        self.assertEqual(len(self.open_cold().messages()), 3)
        self.assertEqual(self.trims, [1])

    @defer.inlineCallbacks
    def test_a_small_folder_is_loaded_without_trimming(self):
        folder = self.open_cold()
        yield folder.deliver(MESSAGE)
        self.open_cold()
        self.assertEqual(self.trims, [])

    def test_giving_memory_back_works_here_or_says_it_cannot(self):
        # glibc here (Debian): True; elsewhere False, and nothing done.
        self.assertIs(REAL_GIVE_BACK(), platform.libc_ver()[0] == "glibc")
