"""
The PostgreSQL store's in-memory folder (store/pgcache.py), without a
database: built from the packed columns of one summary row, then kept in
UID order, its message ids beside the right rows, as rows come and go.
"""

import struct

import pytest

from twisted_mailhub.store.interfaces import SEEN, NoSuchMessage
from twisted_mailhub.store.pgcache import FolderCache


def packed(code, values):
    return b"".join(struct.pack(">" + code, v) for v in values) or None


def summary(rows):
    """The columns L{FolderCache.from_summary} takes, as PostgreSQL sends them."""
    return (
        len(rows),
        packed("q", [r[0] for r in rows]),
        "\n".join(r[1] for r in rows) if rows else None,
        packed("q", [r[2] for r in rows]),
        packed("d", [r[3] for r in rows]),
        packed("q", [r[4] for r in rows]),
        packed("q", [r[5] for r in rows]),
        "\n".join(r[6] for r in rows) if rows else None,
    )


ROWS = [
    # uid, key, size, date, message id, modseq, flags
    (1, "k1", 100, 1.5, 11, 3, ""),
    (2, "k2", 200, 2.5, 12, 4, "\\Seen"),
    (5, "k5", 500, 5.5, 15, 9, "\\Seen \\Flagged $Label"),
    (4_000_000_000, "kbig", 7, 6.25, 2**40, 2**35, "$Work"),
]


def test_the_summary_columns_become_rows_with_their_flags_sizes_dates_and_message_ids():
    cache = FolderCache.from_summary(summary(ROWS))
    assert list(cache.uids) == [1, 2, 5, 4_000_000_000]
    infos = cache.all_infos()
    assert [(i.uid, i.key, set(i.flags), i.size, i.internal_date) for i in infos] == [
        (1, "k1", set(), 100, 1.5),
        (2, "k2", {SEEN}, 200, 2.5),
        (5, "k5", {SEEN, "\\Flagged", "$Label"}, 500, 5.5),
        (4_000_000_000, "kbig", {"$Work"}, 7, 6.25),
    ]
    assert cache.message_of(4_000_000_000) == (2**40, 7)
    assert list(cache.modseqs) == [3, 4, 9, 2**35]
    assert cache.first_unseen() == 1
    assert cache.keywords_in_use() == {"$Label", "$Work"}


def test_an_empty_summary_is_an_empty_folder():
    cache = FolderCache.from_summary(summary([]))
    assert len(cache) == 0 and cache.all_infos() == [] and cache.first_unseen() == 0


def test_columns_of_different_lengths_are_refused():
    columns = list(summary(ROWS))
    columns[3] = packed("q", [1, 2, 3])
    with pytest.raises(ValueError):
        FolderCache.from_summary(tuple(columns))


def test_a_row_added_below_the_top_keeps_the_uid_order_and_its_message_id():
    cache = FolderCache.from_summary(summary(ROWS))
    assert cache.put(3, "k3", frozenset({SEEN}), 300, 3.5, 13, 10)
    assert list(cache.uids) == [1, 2, 3, 5, 4_000_000_000]
    assert [cache.message_of(u)[0] for u in cache.uids] == [11, 12, 13, 15, 2**40]
    assert cache.info_of(3).key == "k3"


def test_an_older_row_never_replaces_a_newer_one():
    cache = FolderCache.from_summary(summary(ROWS))
    assert not cache.put(5, "k5", frozenset(), 500, 5.5, 15, 8)
    assert set(cache.info_of(5).flags) == {SEEN, "\\Flagged", "$Label"}
    assert cache.put(5, "k5", frozenset({"$Other"}), 500, 5.5, 15, 12)
    assert set(cache.info_of(5).flags) == {"$Other"}
    assert cache.keywords_in_use() == {"$Other", "$Work"}


@pytest.mark.parametrize("gone", [[2, 5], list(range(2, 200, 2))])
def test_dropped_rows_take_their_message_ids_with_them(gone):
    rows = [(u, f"k{u}", u, float(u), 1000 + u, 1, "") for u in range(1, 201)]
    cache = FolderCache.from_summary(summary(rows))
    assert cache.drop(gone + [9999])
    kept = [u for u in range(1, 201) if u not in gone]
    assert list(cache.uids) == kept
    assert [cache.message_of(u) for u in kept] == [(1000 + u, u) for u in kept]
    with pytest.raises(NoSuchMessage):
        cache.info_of(gone[0])
    assert not cache.drop([9999])


def test_a_walk_up_the_folder_finds_each_row_and_what_follows():
    cache = FolderCache.from_summary(summary(ROWS))
    assert [cache.info_of(u).uid for u in (1, 2, 5, 4_000_000_000, 2)] == [1, 2, 5, 4_000_000_000, 2]
    assert list(cache.following(2)) == [(5, 15, 500), (4_000_000_000, 2**40, 7)]
    assert list(cache.following(3)) == [(5, 15, 500), (4_000_000_000, 2**40, 7)]
    with pytest.raises(NoSuchMessage):
        cache.info_of(3)


def test_a_walk_from_the_first_row_makes_every_info_at_once_and_later_changes_show():
    cache = FolderCache.from_summary(summary(ROWS))
    assert cache.infos is None
    assert cache.info_of(1).key == "k1"
    assert cache.infos is not None and None not in cache.infos
    assert [i.uid for i in cache.all_infos()] == [1, 2, 5, 4_000_000_000]
    cache.put(3, "k3", frozenset({SEEN}), 300, 3.5, 13, 10)
    cache.put(2, "k2", frozenset({"$New"}), 200, 2.5, 12, 11)
    assert [(i.uid, set(i.flags)) for i in cache.all_infos()] == [
        (1, set()), (2, {"$New"}), (3, {SEEN}), (5, {SEEN, "\\Flagged", "$Label"}), (4_000_000_000, {"$Work"})
    ]
    assert cache.info_of(3).size == 300
