"""
ESEARCH return options, ESORT and live contexts (RFC 4731, RFC 5267
CONTEXT=SEARCH and ESORT, RFC 9394 PARTIAL) end to end: the real hub,
imaplib and raw sockets, a second session making the changes.
"""

from __future__ import annotations

import re

from tests.test_e2e_imap import login
from tests.test_e2e_imap_extensions import CONVERSATION
from tests.test_e2e_imap_rfc import raw_append, raw_login


def note(subject: str) -> bytes:
    return f"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def esearch(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"* ESEARCH")]


def fill(r, count: int) -> list[int]:
    """count messages, the even-numbered ones \\Seen; their UIDs."""
    uids = [raw_append(r, b"INBOX", note(f"n{i}")) for i in range(1, count + 1)]
    r.cmd(b"s", b"SELECT INBOX")
    r.cmd(b"f2", b"STORE " + b",".join(b"%d" % n for n in range(2, count + 1, 2)) + b" +FLAGS.SILENT (\\Seen)")
    return uids


# -- return options (RFC 4731, RFC 9394) --------------------------------------------


def test_search_return_min_max_count_and_partial_windows(hub):
    r = raw_login(hub)
    fill(r, 10)
    assert esearch(r.cmd(b"a", b"SEARCH RETURN (MIN MAX COUNT) UNSEEN")) == [b'* ESEARCH (TAG "a") MIN 1 MAX 9 COUNT 5']
    assert esearch(r.cmd(b"b", b"SEARCH RETURN (PARTIAL 1:3) ALL")) == [b'* ESEARCH (TAG "b") PARTIAL (1:3 1:3)']
    # from the end, the ends in either order
    assert esearch(r.cmd(b"c", b"SEARCH RETURN (PARTIAL -1:-3) ALL")) == [b'* ESEARCH (TAG "c") PARTIAL (-1:-3 8:10)']
    assert esearch(r.cmd(b"d", b"SEARCH RETURN (PARTIAL 3:2 COUNT) UNSEEN")) == [b'* ESEARCH (TAG "d") COUNT 5 PARTIAL (2:3 3,5)']
    assert esearch(r.cmd(b"e", b"UID SEARCH RETURN (PARTIAL 20:30) ALL")) == [b'* ESEARCH (TAG "e") UID PARTIAL (20:30 NIL)']
    assert esearch(r.cmd(b"g", b"SEARCH RETURN () SEEN")) == [b'* ESEARCH (TAG "g") ALL 2,4,6,8,10']
    for bad in (b"(PARTIAL 1:3 ALL)", b"(PARTIAL 0:3)", b"(PARTIAL -1:3)", b"(PARTIAL)", b"(PARTIAL x)", b"(NEWEST)"):
        assert r.cmd(b"x", b"SEARCH RETURN " + bad + b" ALL")[-1].startswith(b"x BAD "), bad
    r.close()


def test_imaplib_reads_a_partial_uid_search(hub):
    c = login(hub)
    for i in range(5):
        c.append("INBOX", None, None, note(f"m{i}"))
    c.select("INBOX")
    assert b"PARTIAL" in c.capability()[1][0].split()
    typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(PARTIAL", "-1:-2)", "ALL")
    assert typ == "OK"
    responses = c.untagged_responses.pop("ESEARCH")
    assert responses[-1].endswith(b"UID PARTIAL (-1:-2 4:5)"), responses
    c.logout()


def test_esort_returns_results_in_sort_order(hub):
    r = raw_login(hub)
    for raw in CONVERSATION:
        raw_append(r, b"INBOX", raw)
    r.cmd(b"s", b"SELECT INBOX")
    # plain SORT (DATE) is 6 3 1 2 4 5 (tests/test_e2e_imap_extensions.py)
    assert esearch(r.cmd(b"a", b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")) == [b'* ESEARCH (TAG "a") MIN 6 MAX 5 COUNT 6 ALL 6,3,1:2,4:5']
    # runs going down are written high:low (RFC 5267 section 3.2)
    assert esearch(r.cmd(b"b", b"SORT RETURN (ALL) (REVERSE DATE) UTF-8 ALL")) == [b'* ESEARCH (TAG "b") ALL 5:4,2:1,3,6']
    assert esearch(r.cmd(b"c", b"SORT RETURN (PARTIAL -1:-2) (DATE) UTF-8 ALL")) == [b'* ESEARCH (TAG "c") PARTIAL (-1:-2 4:5)']
    assert esearch(r.cmd(b"d", b"UID SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing-like-it")) == [b'* ESEARCH (TAG "d") UID COUNT 0']
    assert r.cmd(b"e", b"SORT RETURN (BOGUS) (DATE) UTF-8 ALL")[-1].startswith(b"e BAD ")
    # without RETURN, SORT answers as before
    assert r.cmd(b"f", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 6 3 1 2 4 5"
    r.close()


# -- live contexts (RFC 5267 section 4) ---------------------------------------------


def test_search_update_follows_deliveries_flag_changes_and_expunges(hub):
    a, b = raw_login(hub), raw_login(hub)
    uids = fill(a, 4)  # 1 and 3 unseen
    lines = a.cmd(b"U1", b"UID SEARCH RETURN (UPDATE) UNSEEN")
    assert esearch(lines) == [b'* ESEARCH (TAG "U1") UID ALL %d,%d' % (uids[0], uids[2])]
    # a delivery by another session: told after its EXISTS
    new = raw_append(b, b"INBOX", note("new"))
    lines = a.cmd(b"n1", b"NOOP")
    assert lines.index(b"* 5 EXISTS") < lines.index(b'* ESEARCH (TAG "U1") UID ADDTO (0 %d)' % new), lines
    # the session's own flag change takes a message out, before the tagged OK
    lines = a.cmd(b"st", b"UID STORE %d +FLAGS (\\Seen)" % uids[0])
    assert esearch(lines) == [b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 %d)' % uids[0]]
    # another session's change puts it back
    b.cmd(b"bs", b"SELECT INBOX")
    b.cmd(b"b1", b"UID STORE %d -FLAGS (\\Seen)" % uids[0])
    assert esearch(a.cmd(b"n2", b"NOOP")) == [b'* ESEARCH (TAG "U1") UID ADDTO (0 %d)' % uids[0]]
    # an expunge elsewhere: after the EXPUNGE
    b.cmd(b"b2", b"UID STORE %d +FLAGS (\\Deleted)" % uids[2])
    b.cmd(b"b3", b"EXPUNGE")
    lines = a.cmd(b"n3", b"NOOP")
    assert b"* 3 EXPUNGE" in lines
    assert lines.index(b"* 3 EXPUNGE") < lines.index(b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 %d)' % uids[2]), lines
    # while IDLE, at once
    a.send(b"i IDLE\r\n")
    assert a.line().startswith(b"+ ")
    newer = raw_append(b, b"INBOX", note("newer"))
    seen = [a.line()]
    while not seen[-1].startswith(b"* ESEARCH"):
        seen.append(a.line())
    assert seen[0] == b"* 5 EXISTS", seen
    assert seen[-1] == b'* ESEARCH (TAG "U1") UID ADDTO (0 %d)' % newer
    a.send(b"DONE\r\n")
    assert a.until_tag(b"i")[-1].startswith(b"i OK")
    # CANCELUPDATE ends it
    assert a.cmd(b"c", b'CANCELUPDATE "U1"')[-1] == b"c OK CANCELUPDATE completed"
    raw_append(b, b"INBOX", note("unseen but untold"))
    assert esearch(a.cmd(b"n4", b"NOOP")) == []
    assert a.cmd(b"c2", b'CANCELUPDATE "U1"')[-1].startswith(b"c2 BAD ")
    a.close()
    b.close()


def test_sequence_number_context_reports_count_and_min(hub):
    a, b = raw_login(hub), raw_login(hub)
    fill(a, 4)
    assert esearch(a.cmd(b"C1", b"SEARCH RETURN (UPDATE COUNT MIN) SEEN")) == [b'* ESEARCH (TAG "C1") MIN 2 COUNT 2']
    b.cmd(b"bs", b"SELECT INBOX")
    b.cmd(b"b1", b"STORE 1 +FLAGS (\\Seen)")
    assert esearch(a.cmd(b"n", b"NOOP")) == [b'* ESEARCH (TAG "C1") MIN 1 COUNT 3']
    a.close()
    b.close()


def test_esort_update_gives_the_new_message_its_position(hub):
    a, b = raw_login(hub), raw_login(hub)
    first = raw_append(a, b"INBOX", note("alpha"))
    last = raw_append(a, b"INBOX", note("delta"))
    a.cmd(b"s", b"SELECT INBOX")
    lines = a.cmd(b"E1", b"UID SORT RETURN (UPDATE ALL COUNT) (SUBJECT) UTF-8 ALL")
    assert esearch(lines) == [b'* ESEARCH (TAG "E1") UID COUNT 2 ALL %d:%d' % (first, last)]
    middle = raw_append(b, b"INBOX", note("charlie"))
    lines = a.cmd(b"n", b"NOOP")
    assert esearch(lines) == [b'* ESEARCH (TAG "E1") UID ADDTO (2 %d) COUNT 3' % middle], lines
    a.close()
    b.close()


def test_live_contexts_end_with_the_mailbox_and_tags_are_not_reused(hub):
    a, b = raw_login(hub), raw_login(hub)
    fill(a, 2)
    assert a.cmd(b"T1", b"SEARCH RETURN (UPDATE) ALL")[-1].startswith(b"T1 OK")
    assert a.cmd(b"T1", b"SEARCH RETURN (UPDATE) SEEN")[-1].startswith(b"T1 BAD ")
    # past the limit the search is answered but not kept live
    for n in range(2, 11):
        assert a.cmd(b"T%d" % n, b"SEARCH RETURN (UPDATE COUNT) ALL")[-1].startswith(b"T%d OK" % n)
    lines = a.cmd(b"T11", b"SEARCH RETURN (UPDATE COUNT) ALL")
    assert b'* ESEARCH (TAG "T11") COUNT 2' in lines
    assert any(re.match(rb'\* NO \[NOUPDATE "T11"\] ', line) for line in lines), lines
    # another SELECT ends every context
    a.cmd(b"s", b"SELECT INBOX")
    raw_append(b, b"INBOX", note("later"))
    assert esearch(a.cmd(b"n", b"NOOP")) == []
    assert a.cmd(b"c", b'CANCELUPDATE "T1"')[-1].startswith(b"c BAD ")
    a.close()
    b.close()


def test_fetch_partial_modifier_takes_a_window_of_the_set(hub):
    r = raw_login(hub)
    uids = fill(r, 6)
    lines = r.cmd(b"a", b"UID FETCH 1:* (FLAGS) (PARTIAL -1:-2)")
    assert [re.match(rb"\* (\d+) FETCH \(UID (\d+)", line).groups() for line in lines[:-1]] == [(b"5", b"%d" % uids[4]), (b"6", b"%d" % uids[5])], lines
    lines = r.cmd(b"b", b"FETCH 2:* (UID) (PARTIAL 1:2)")
    assert [line.split()[1] for line in lines[:-1]] == [b"2", b"3"], lines
    assert r.cmd(b"c", b"FETCH 1:* (UID) (PARTIAL 0:2)")[-1].startswith(b"c BAD ")
    r.close()


# -- CONTEXT=SORT (RFC 5267 §4): a client applying the updates keeps the sorted list ----


def expand(text: bytes) -> list[int]:
    """An ESORT ALL set in result order: C{5:3,7} is 5 4 3 7 (RFC 5267 §3.2)."""
    out = []
    for piece in text.split(b","):
        a, _, b = piece.partition(b":")
        first, last = int(a), int(b or a)
        out += list(range(first, last + 1)) if first <= last else list(range(first, last - 1, -1))
    return out


def apply_update(model: list[int], line: bytes) -> None:
    """What a CONTEXT=SORT client does with one ESEARCH update (RFC 5267 §4.3)."""
    removed = re.search(rb"REMOVEFROM \((\d+) ([\d:,]+)\)", line)
    if removed:
        gone = set(expand(removed.group(2)))
        model[:] = [u for u in model if u not in gone]
    added = re.search(rb"ADDTO \(([\d ]+)\)", line)
    if added:
        numbers = [int(n) for n in added.group(1).split()]
        for position, uid in zip(numbers[::2], numbers[1::2]):
            assert position >= 1, line  # a sorted context gives real positions
            model.insert(position - 1, uid)


def test_capability_advertises_context_sort(hub):
    r = raw_login(hub)
    caps = r.cmd(b"c", b"CAPABILITY")[0].split()
    assert b"CONTEXT=SORT" in caps and b"CONTEXT=SEARCH" in caps and b"ESORT" in caps
    r.close()


def test_sort_update_applied_by_the_client_matches_a_fresh_sort_after_every_change(hub):
    a, b = raw_login(hub), raw_login(hub)
    for subject in ["mike", "bravo", "oscar", "delta"]:
        raw_append(a, b"INBOX", note(subject))
    a.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"s", b"SELECT INBOX")
    query = b"(REVERSE SUBJECT) UTF-8 UNSEEN"
    lines = a.cmd(b"S1", b"UID SORT RETURN (UPDATE ALL) " + query)
    model = expand(re.search(rb"ALL ([\d:,]+)", esearch(lines)[0]).group(1))

    def fresh() -> list[int]:
        line = esearch(a.cmd(b"chk", b"UID SORT RETURN (ALL) " + query))[0]
        m = re.search(rb"ALL ([\d:,]+)", line)
        return expand(m.group(1)) if m else []

    changes = [
        # several new messages at once, landing at different positions
        lambda: b.send(b"m APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n" % tuple(x for s in ("alpha", "zulu", "kilo") for x in (len(note(s)), note(s)))) or b.until_tag(b"m"),
        lambda: b.cmd(b"f1", b"UID STORE 2,3 +FLAGS (\\Seen)"),  # leave the context
        lambda: b.cmd(b"f2", b"UID STORE 2 -FLAGS (\\Seen)"),  # and come back
        lambda: (b.cmd(b"d", b"UID STORE 1 +FLAGS.SILENT (\\Deleted)"), b.cmd(b"x", b"EXPUNGE")),
        lambda: raw_append(b, b"INBOX", note("lima")),
    ]
    for change in changes:
        change()
        for line in esearch(a.cmd(b"n", b"NOOP")):
            assert line.startswith(b'* ESEARCH (TAG "S1") UID'), line
            apply_update(model, line)
        assert model == fresh(), (model, fresh())
    a.close()
    b.close()


def test_sort_update_with_partial_is_answered_but_not_kept_live(hub):
    # RFC 5267 §4.1 lets a server decline updates: NOUPDATE, not a wrong window.
    r = raw_login(hub)
    fill(r, 3)
    lines = r.cmd(b"p", b"SORT RETURN (UPDATE PARTIAL 1:2) (SUBJECT) UTF-8 ALL")
    assert lines[-1].startswith(b"p OK"), lines
    assert b'* NO [NOUPDATE "p"]' in b"\n".join(lines) and esearch(lines), lines
    assert r.cmd(b"c", b'CANCELUPDATE "p"')[-1].startswith(b"c BAD"), "no live context with that tag"
    r.close()
