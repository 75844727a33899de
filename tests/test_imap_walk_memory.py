# -*- test-case-name: tests.test_imap_walk_memory -*-
"""
What a command over every message of a big folder holds at once (issue
13: the IMAP server's memory against Dovecot's). A FETCH 1:* of 100,000
messages names them as a L{MessageRange} made pair by pair, not a list
of 100,000 (sequence number, UID) pairs; a SEARCH asks whether the
header cache holds a field for every message by comparing the UID
arrays, not through a set of 100,000 numbers. Python's allocator kept
most of the room such short-lived objects took: the hub's RSS stayed
megabytes higher after them. What the header cache keeps is counted
too: a field of a few distinct values takes an octet a message beside
its UIDs.
"""

from __future__ import annotations

import tracemalloc
from array import array

from twisted.mail import imap4

from twisted_mailhub.imap import search
from twisted_mailhub.imap.view import MessageRange, SelectedFolder

COUNT = 100_000


class _Session:
    condstore = False
    qresync = False


class _Folder:
    """A store folder of COUNT messages whose UIDs are 11, 13, 15, ... (an array, as the Maildir store keeps them)."""

    def __init__(self):
        self.uids = array("I", range(11, 11 + 2 * COUNT, 2))

    def take_new(self):
        return []

    def selection(self):
        return array("I", self.uids), 0, frozenset()

    def add_listener(self, listener):
        pass


def _peak(call) -> tuple[object, int]:
    """C{call()}'s result and the most memory it held at once (octets)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fetch_of_every_message_names_them_without_a_list_of_pairs():
    view = SelectedFolder(_Session(), _Folder(), readonly=False)
    targets, peak = _peak(lambda: view.resolve(imap4.MessageSet(1, None), False))
    # (a list of 100,000 pairs: 11 MB; the UIDs copied: 0.4 MB)
    assert peak < 1_000_000
    assert len(targets) == COUNT
    pairs = iter(targets)
    assert next(pairs) == (1, 11)
    assert next(pairs) == (2, 13)
    assert list(targets)[-1] == (COUNT, 11 + 2 * (COUNT - 1))
    assert list(targets) == list(targets)  # (walked again from the start)


def test_a_range_of_messages_is_the_pairs_a_list_would_hold():
    view = SelectedFolder(_Session(), _Folder(), readonly=False)
    by_seq = view.resolve(imap4.MessageSet(5, 8), False)
    assert by_seq == [(5, 19), (6, 21), (7, 23), (8, 25)]
    by_uid = view.resolve(imap4.MessageSet(18, 25), True)
    assert list(by_uid) == [(5, 19), (6, 21), (7, 23), (8, 25)]
    # PARTIAL (RFC 9394) takes slices: from either end, as a list's
    assert list(by_seq[1:3]) == [(6, 21), (7, 23)]
    assert list(by_seq[-2:]) == [(7, 23), (8, 25)]
    assert by_seq[-1] == (8, 25)
    assert list(by_seq[::2]) == [(5, 19), (7, 23)]
    assert list(by_seq[10:20]) == []


def test_the_range_is_the_uids_as_they_were_when_named():
    uids = array("I", [3, 4, 5])
    named = MessageRange(1, uids[0:3])
    uids[1] = 99
    assert list(named) == [(1, 3), (2, 4), (3, 5)]


def test_a_search_asks_the_header_cache_for_every_message_without_a_set_of_them():
    folder = _Folder()
    cache = search.HeaderCache.of(folder)
    for name in ("from", "address:from"):
        values = cache[name] = search.FieldValues()
        for uid in folder.uids:
            values.put(uid, b"carol@example.com")
    uids = array("I", folder.uids)
    cached, peak = _peak(lambda: search.fields_cached(folder, ["from", "address:from"], uids))
    assert cached
    # (a set of 100,000 UIDs: over 4 MB)
    assert peak < 100_000
    # one message not held: not cached
    del cache["from"].uids[-1], cache["from"].numbers[-1]
    assert not search.fields_cached(folder, ["from"], uids)
    # a part of the folder, held: cached
    assert search.fields_cached(folder, ["address:from"], uids[5:10])
    assert search.fields_cached(folder, ["address:from"], list(uids[5:10]))


def test_the_header_cache_keeps_a_few_senders_in_an_octet_a_message():
    senders = [b"%s@example.org" % name for name in (b"alice", b"bob", b"carol", b"dave", b"erin")]
    uids = range(1, COUNT + 1)

    def kept():
        values = search.FieldValues()
        for uid in uids:
            values.put(uid, senders[uid % 5] + b"")  # (a new object each time, as a header read gives it)
        return values

    values = kept()
    assert [values.get(uid) for uid in (1, 2, 3, COUNT)] == [senders[1], senders[2], senders[3], senders[0]]
    assert values.get(COUNT + 1) is None
    # the UIDs (4 octets a message) and the senders' numbers (1): a list
    # of the values beside the UIDs took 8 more
    assert _held(kept) < 6 * COUNT + 100_000


def test_the_header_cache_numbers_take_more_octets_past_256_and_65536_values():
    values = search.FieldValues()
    for uid in range(1, 70_001):
        values.put(uid, b"subject %d" % uid)
    assert values.numbers.itemsize == 4
    assert [values.get(uid) for uid in (1, 256, 257, 65_536, 65_537, 70_000)] == [b"subject %d" % uid for uid in (1, 256, 257, 65_536, 65_537, 70_000)]
    values = search.FieldValues()
    for uid in range(600, 0, -1):  # (each put before the others: inserted)
        values.put(uid, b"subject %d" % (uid % 300))
    assert values.numbers.itemsize == 2
    assert [values.get(uid) for uid in range(1, 601)] == [b"subject %d" % (uid % 300) for uid in range(1, 601)]


def _held(make) -> int:
    """The octets what C{make()} returns still holds once made (traced)."""
    tracemalloc.start()
    try:
        made = make()
        held = tracemalloc.get_traced_memory()[0]
        del made
        return held
    finally:
        tracemalloc.stop()
