# -*- test-case-name: tests.test_imap_searchres_dollar -*-
"""
SEARCHRES (RFC 5182) as a client may write it: C{$} as the set of the
UID key (C{UID $}, the grammar's C{sequence-set =/ "$"}) in SEARCH, UID
SEARCH and SORT; C{$} among the keys of a SEARCH that SAVEs is the result
saved before it (§2.1), for the answer as for the new result; SAVE with
MIN or MAX keeps only those messages (§2.4).
"""

from __future__ import annotations

import re

from tests.test_e2e_imap_rfc import raw_append, raw_login


def _setup(hub):
    r = raw_login(hub)
    for n in range(6):
        subject = b"pick" if n in (0, 2) else b"other"
        raw_append(r, b"INBOX", b"Subject: %s %d\r\n\r\nbody\r\n" % (subject, n))
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    assert r.cmd(b"v", b"SEARCH RETURN (SAVE) SUBJECT pick")[-1].startswith(b"v OK")  # UIDs 1, 3
    return r


def _uids_of_fetch(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for m in (re.search(rb"UID (\d+)", line) for line in lines if b" FETCH " in line) if m]


def test_uid_dollar_is_the_saved_result_in_search_uid_search_and_sort(hub):
    r = _setup(hub)
    assert r.cmd(b"a", b"SEARCH UID $") == [b"* SEARCH 1 3", b"a OK SEARCH completed"]
    assert r.cmd(b"b", b"UID SEARCH UID $ SUBJECT 2") == [b"* SEARCH 3", b"b OK SEARCH completed"]
    assert r.cmd(b"c", b"UID SORT (REVERSE ARRIVAL) UTF-8 UID $")[:-1] == [b"* SORT 3 1"]
    assert r.cmd(b"d", b'SEARCH SUBJECT "UID $"') == [b"* SEARCH", b"d OK SEARCH completed"]
    r.close()


def test_a_saving_search_reads_dollar_as_the_result_saved_before_it(hub):
    r = _setup(hub)
    reply = r.cmd(b"a", b"SEARCH RETURN (SAVE COUNT) NOT $")
    assert reply[0] == b'* ESEARCH (TAG "a") COUNT 4', reply
    assert _uids_of_fetch(r.cmd(b"f", b"FETCH $ UID")) == [2, 4, 5, 6]
    r.close()


def test_save_with_min_or_max_keeps_only_those_messages(hub):
    r = _setup(hub)
    assert r.cmd(b"a", b"SEARCH RETURN (SAVE MIN) $")[0] == b'* ESEARCH (TAG "a") MIN 1'
    assert _uids_of_fetch(r.cmd(b"f", b"FETCH $ UID")) == [1]
    assert r.cmd(b"b", b"SEARCH RETURN (SAVE) ALL")[-1].startswith(b"b OK")
    assert r.cmd(b"c", b"UID SEARCH RETURN (SAVE MIN MAX) SUBJECT other")[0] == b'* ESEARCH (TAG "c") UID MIN 2 MAX 6'
    assert _uids_of_fetch(r.cmd(b"f", b"FETCH $ UID")) == [2, 6]
    assert r.cmd(b"d", b"SEARCH RETURN (SAVE MAX COUNT) SUBJECT other")[0] == b'* ESEARCH (TAG "d") MAX 6 COUNT 4'
    assert _uids_of_fetch(r.cmd(b"f", b"FETCH $ UID")) == [2, 4, 5, 6]
    r.close()


def test_a_saving_search_whose_keys_do_not_read_says_why_and_empties_the_result(hub):
    r = _setup(hub)
    reply = r.cmd(b"a", b"SEARCH RETURN (SAVE) NOSUCHKEY")
    assert reply[-1].startswith(b"a BAD") and b"RETURN option" not in reply[-1], reply
    assert _uids_of_fetch(r.cmd(b"f", b"FETCH $ UID")) == []
    r.close()
