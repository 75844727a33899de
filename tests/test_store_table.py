# -*- test-case-name: tests.test_store_table -*-
"""
The column table of a folder's messages (L{MessageTable}): rows stay in
UID order however they are added, flags and file names come back as they
were put, and what SELECT asks for is computed over the columns.
"""

from __future__ import annotations

import sys
from unittest import mock

from twisted.trial import unittest

from twisted_mailhub.store.interfaces import FLAGGED, SEEN, MessageInfo
from twisted_mailhub.store import table
from twisted_mailhub.store.table import MessageTable, NameColumn, system_bits


def table_of(*uids):
    table = MessageTable()
    for uid in uids:
        table.add(uid, f"m{uid}", 10 * uid, 1700000000.0 + uid, frozenset(), "cur", f"m{uid}:2,", 0)
    return table


class MessageTableTests(unittest.TestCase):
    def test_rows_added_out_of_order_are_kept_in_uid_order(self):
        table = table_of(5, 2, 9, 7)
        self.assertEqual(list(table.uids), [2, 5, 7, 9])
        self.assertEqual(list(table.names), ["m2", "m5", "m7", "m9"])
        self.assertEqual(list(table.sizes), [20, 50, 70, 90])
        self.assertEqual(table.position(7), 2)
        self.assertEqual(table.position(6), -1)

    def test_flags_and_keywords_come_back_as_given_and_sets_are_shared(self):
        table = table_of(1, 2)
        for i in range(2):
            table.set_file(i, "cur", f"m{i + 1}:2,FS", system_bits({SEEN, FLAGGED}))
            table.set_keywords(i, frozenset({"$Later"}))
        self.assertEqual(table.flags(0), {SEEN, FLAGGED, "$Later"})
        self.assertIs(table.flags(0), table.flags(1))
        self.assertEqual(table.filename(0), "m1:2,FS")
        self.assertEqual(table.info(1), MessageInfo(2, "m2", frozenset({SEEN, FLAGGED, "$Later"}), 20, 1700000002.0))

    def test_a_name_that_is_not_canonical_is_kept_as_it_is(self):
        table = table_of(1)
        table.set_file(0, "new", "m1:2,S", system_bits({SEEN}))
        self.assertEqual((table.subdir(0), table.filename(0)), ("new", "m1:2,S"))
        table.set_file(0, "cur", "m1:2,S", system_bits({SEEN}))
        self.assertEqual(table.odd, {})

    def test_a_changed_row_gets_a_new_info_and_others_keep_theirs(self):
        table = table_of(1, 2)
        kept, old = table.info(0), table.info(1)
        table.set_keywords(1, frozenset({"$X"}))
        self.assertEqual(table.info(0), kept)
        self.assertEqual(table.info(1).flags, {"$X"})
        self.assertEqual(table.summary(1), (frozenset({"$X"}), 20, 1700000002.0))
        self.assertEqual(old.flags, frozenset())

    def test_removing_few_or_many_rows_keeps_the_columns_together(self):
        for gone in ([1, 3], list(range(0, 200, 2))):
            table = table_of(*range(1, 201))
            table.info(5)
            table.remove(gone)
            left = [uid for i, uid in enumerate(range(1, 201)) if i not in gone]
            self.assertEqual(list(table.uids), left)
            self.assertEqual(list(table.names), [f"m{uid}" for uid in left])
            self.assertEqual([table.info(i).size for i in range(len(table))], [10 * uid for uid in left])
            self.assertEqual(table.by_base, {f"m{uid}": uid for uid in left})

    def test_first_unseen_and_keywords_in_use(self):
        table = table_of(1, 2, 3)
        self.assertEqual(table.first_unseen(), 1)
        for i in range(2):
            table.set_file(i, "cur", f"m{i + 1}:2,S", system_bits({SEEN}))
        table.set_keywords(2, frozenset({"$A", "$B"}))
        self.assertEqual(table.first_unseen(), 3)
        self.assertEqual(table.keywords_in_use(), {"$A", "$B"})
        table.set_file(2, "cur", "m3:2,S", system_bits({SEEN}))
        self.assertEqual(table.first_unseen(), 0)


class NameColumnTests(unittest.TestCase):
    """The base names as one block of octets: they come back as put, whatever was done to the rows."""

    def test_names_come_back_after_appends_inserts_and_deletes(self):
        names = ["1700000000.M1P2Q3.host,S=10", "caf\u00e9", "undecodable\udcff", "b"]
        column = NameColumn(names)
        column.insert(1, "inserted")
        names.insert(1, "inserted")
        del column[0]
        del names[0]
        column.append("last")
        names.append("last")
        self.assertEqual([column[i] for i in range(len(column))], names)
        self.assertEqual(list(column), names)
        self.assertEqual(column.text(), "\n".join(names))

    def test_an_index_text_is_split_only_when_a_name_is_asked_for(self):
        column = NameColumn.from_text("a\nbb\nccc", 3)
        self.assertEqual(len(column), 3)
        self.assertEqual(column.text(), "a\nbb\nccc")
        self.assertEqual(column[2], "ccc")
        column.append("d")
        self.assertEqual(list(column), ["a", "bb", "ccc", "d"])
        self.assertRaises(ValueError, NameColumn.from_text, "a\nb", 3)

    def test_removed_names_are_dropped_from_the_block_once_they_outnumber_the_rest(self):
        column = NameColumn(f"name{i}" for i in range(100))
        size = len(column._blob)
        for _ in range(60):
            del column[0]
        self.assertEqual(list(column), [f"name{i}" for i in range(60, 100)])
        self.assertLess(len(column._blob), size / 2)

    def test_names_read_from_an_index_take_its_text_and_4_octets_a_start(self):
        # SEARCH asks a 100,000-message folder for paths: its names were
        # made into a block beside the index's text (3.8 MB more while it
        # was made, then an eighth more than its octets) with 8-octet
        # starts; they are now read from the text, 4 octets a start.
        names = [f"1700{i:06d}.M{i}P7Q1.mail.test,S=2048" for i in range(10_000)]
        text = "\n".join(names)
        column = NameColumn.from_text(text, len(names))
        self.assertEqual([column[i] for i in (0, 1, 9_998, 9_999, -1, -10_000)], [names[i] for i in (0, 1, 9_998, 9_999, -1, -10_000)])
        self.assertRaises(IndexError, column.__getitem__, 10_000)
        self.assertRaises(IndexError, column.__getitem__, -10_001)
        self.assertEqual(len(column._blob), 0)
        self.assertEqual(column._starts.itemsize, 4)
        self.assertLessEqual(column._starts.buffer_info()[1], len(names) + 1)
        self.assertEqual(list(column), names)
        self.assertEqual(column.text(), text)
        # a name changed: the block, at its size, 4 octets a start
        del column[0]
        self.assertEqual([column[i] for i in (0, 9_998)], [names[1], names[9_999]])
        self.assertEqual(column._starts.itemsize, 4)
        self.assertLessEqual(sys.getsizeof(column._blob), len(text.encode()) + 1 + sys.getsizeof(bytearray()) + 1)
        self.assertEqual(column.subset(range(len(names) - 1))._starts.itemsize, 4)

    def test_names_of_other_scripts_are_read_from_the_text_as_put(self):
        names = ["caf\u00e9", "undecodable\udcff", "\u4e2d\u6587", "b", ""]
        column = NameColumn.from_text("\n".join(names), len(names))
        self.assertEqual([column[i] for i in range(5)], names)

    def test_starts_past_4_gib_are_kept_in_8_octets(self):
        # (the 4 GiB limit made small: a block that large is not made here)
        with mock.patch.object(table, "_MAX_NARROW", 12):
            column = NameColumn(["first", "second"])
            self.assertEqual(column._starts.itemsize, 4)
            column.append("third")  # starts at 13
            column.insert(1, "fourth")
            self.assertEqual(column._starts.itemsize, 8)
            self.assertEqual(list(column), ["first", "fourth", "second", "third"])
            self.assertEqual(column.subset([3, 2, 1, 0])._starts.itemsize, 8)

    def test_a_subset_keeps_the_rows_asked_for_in_that_order(self):
        column = NameColumn(["a", "b", "c", "d"])
        self.assertEqual(list(column.subset([3, 0, 2])), ["d", "a", "c"])
