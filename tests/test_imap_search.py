"""
SEARCH keys compiled into predicates, on the memory store.
"""

import calendar

import pytest
from twisted.mail.imap4 import parseNestedParens

from twisted_mailhub.imap.search import BadSearch, Candidate, FieldValues, HeaderCache, compile_search
from twisted_mailhub.store.memory import MemoryFolder

MESSAGES = [
    (b"From: Ann <ann@a.org>\r\nTo: bob@b.org\r\nSubject: budget 2026\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nnumbers inside\r\n", ["\\Seen"], (2026, 11, 2)),
    (b"From: bob@b.org\r\nSubject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\nDate: Sun, 1 Mar 2020 09:00:00 +0000\r\nX-Tag:  folded\r\n value\r\n\r\nold " + b"x" * 3000 + b"\r\n", ["\\Flagged", "$Work"], (2020, 3, 1)),
    (b"Subject: no sender\r\n\r\nshort\r\n", [], (2026, 11, 20)),
]


@pytest.fixture
def folder():
    f = MemoryFolder("INBOX")
    for raw, flags, (y, m, d) in MESSAGES:
        f.append(raw, flags, calendar.timegm((y, m, d, 12, 0, 0)))
    return f


def search(folder, text: bytes, recent=frozenset()) -> list[int]:
    infos = folder.messages()
    predicate = compile_search(parseNestedParens(text), len(infos), infos[-1].uid)
    cache = HeaderCache.of(folder)
    return [seq for seq, info in enumerate(infos, 1) if predicate(Candidate(seq, info, info.uid in recent, folder, cache))]


@pytest.mark.parametrize(
    "keys, expected",
    [
        (b"ALL", [1, 2, 3]),
        (b"FROM ann", [1]),
        (b'FROM "B.ORG"', [2]),
        (b"TO bob", [1]),
        (b'SUBJECT "r\xc3\xa9sum\xc3\xa9"', [2]),
        (b"HEADER X-Tag \"folded value\"", [2]),
        (b'HEADER X-Tag ""', [2]),
        (b"BODY numbers", [1]),
        (b"TEXT budget", [1]),
        (b"SEEN", [1]),
        (b"UNSEEN", [2, 3]),
        (b"FLAGGED KEYWORD $work", [2]),
        (b"UNKEYWORD $Work", [1, 3]),
        (b"NOT FLAGGED", [1, 3]),
        (b"OR SEEN FLAGGED", [1, 2]),
        (b"(OR SEEN FLAGGED) NOT FROM ann", [2]),
        (b"LARGER 1000", [2]),
        (b"SMALLER 100", [3]),
        (b"SINCE 1-Jan-2021", [1, 3]),
        (b"BEFORE 2-Nov-2026", [2]),
        (b"ON 20-Nov-2026", [3]),
        (b"SENTBEFORE 1-Jan-2021", [2, 3]),  # (3 has no Date: sent 1-Jan-1970, as Dovecot reads it)
        (b"SENTSINCE 1-Jan-2021", [1]),
        (b"2:*", [2, 3]),
        (b"UID 1,3", [1, 3]),
        (b"UID *", [3]),
    ],
)
def test_search_keys(folder, keys, expected):
    assert search(folder, keys) == expected


def test_recent_and_new(folder):
    assert search(folder, b"RECENT", recent={1, 3}) == [1, 3]
    assert search(folder, b"NEW", recent={1, 3}) == [3]
    assert search(folder, b"OLD", recent={1, 3}) == [2]


@pytest.mark.parametrize("keys", [b"FROM", b"BEFORE yesterday", b"LARGER big", b"FROBNICATE", b"OR SEEN", b"NOT"])
def test_bad_search_keys(folder, keys):
    with pytest.raises(BadSearch):
        search(folder, keys)


@pytest.mark.parametrize("keys", [b"OR " * 3000 + b"ALL " * 3001, b"NOT " * 3000 + b"ALL", b"(NOT " * 150 + b"ALL" + b")" * 150])
def test_search_keys_nested_too_deep_are_bad_search_not_a_recursion_error(folder, keys):
    # 3,000 nested ORs raised RecursionError: "BAD [SERVERBUG]" and a traceback.
    with pytest.raises(BadSearch, match="nested too deep"):
        search(folder, keys)


def test_search_keys_nested_a_hundred_deep_still_work(folder):
    assert search(folder, b"NOT " * 100 + b"ALL") == [1, 2, 3]
    assert search(folder, b"OR " * 50 + b"SEEN " * 51) == [1]


def test_header_values_are_kept_per_uid_in_any_order_and_shared_when_equal():
    values = FieldValues()
    for uid in (5, 9, 2, 7):
        values.put(uid, b"sender %d" % (uid % 2))
    assert [values.get(uid) for uid in (2, 5, 7, 9)] == [b"sender 0", b"sender 1", b"sender 1", b"sender 1"]
    assert values.get(3) is None and values.get(10) is None
    assert len(values) == 4
    assert values.get(5) is values.get(9)  # equal values kept once


def test_a_second_search_reads_no_file(folder, monkeypatch):
    assert search(folder, b"FROM ann") == [1]
    monkeypatch.setattr(folder, "read", lambda uid: pytest.fail("a message was read again"))
    monkeypatch.setattr(folder, "path", lambda uid: pytest.fail("a message was read again"))
    assert search(folder, b"FROM ann") == [1]
    assert search(folder, b"FROM a.org") == [1]
