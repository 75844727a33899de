"""
IMAP4rev2 (RFC 9051) beside IMAP4rev1, and SEARCHRES (RFC 5182, part of
rev2's base): the real hub over a raw socket and imaplib.
"""

from __future__ import annotations

import imaplib

from tests.test_e2e_imap_rfc import PLAIN, raw_append, raw_login, untagged


def message(subject: bytes) -> bytes:
    return b"From: bob@localhost\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"


def rev2_login(hub):
    r = raw_login(hub)
    assert r.cmd(b"e", b"ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2", b"e OK ENABLE completed"]
    return r


def test_capability_advertises_rev2_beside_rev1_and_its_base_extensions(hub):
    r = raw_login(hub)
    caps = r.cmd(b"c", b"CAPABILITY")[0].split()
    for name in [b"IMAP4rev1", b"IMAP4rev2", b"ENABLE", b"NAMESPACE", b"UNSELECT", b"UIDPLUS", b"ESEARCH", b"SEARCHRES", b"IDLE", b"SASL-IR",
                 b"LIST-EXTENDED", b"LIST-STATUS", b"MOVE", b"LITERAL+", b"BINARY", b"SPECIAL-USE", b"STATUS=SIZE"]:
        assert name in caps, name
    r.close()


def test_rev2_session_sees_no_recent_flag_or_response(hub):
    r = rev2_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    selected = r.cmd(b"s", b"SELECT INBOX")
    assert not untagged(selected, rb"\* \d+ RECENT"), selected
    assert b"* 1 EXISTS" in selected
    assert r.cmd(b"f", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())"
    # a message arriving while selected: EXISTS, no RECENT
    other = raw_login(hub)
    raw_append(other, b"INBOX", PLAIN)
    other.close()
    noop = r.cmd(b"n", b"NOOP")
    assert b"* 2 EXISTS" in noop and not untagged(noop, rb"\* \d+ RECENT"), noop
    assert r.cmd(b"t", b"STATUS Sent (RECENT)")[-1].startswith(b"t BAD unknown STATUS item")
    r.close()


def test_rev2_select_returns_a_list_response_with_the_mailbox_name(hub):
    # RFC 9051 §6.3.2: SELECT and EXAMINE MUST return LIST with the name.
    r = rev2_login(hub)
    r.cmd(b"c", "CREATE Café".encode())
    assert b'* LIST () "/" "INBOX"' in r.cmd(b"s", b"SELECT inbox")
    assert '* LIST () "/" "Café"'.encode() in r.cmd(b"x", "EXAMINE Café".encode())
    r.close()


def test_rev2_status_recent_refusal_does_not_offer_recent(hub):
    r = rev2_login(hub)
    bad = r.cmd(b"t", b"STATUS INBOX (RECENT)")[-1]
    assert bad.startswith(b"t BAD unknown STATUS item") and b"RECENT" not in bad.split(b"use", 1)[1], bad
    r.close()


def test_rev1_session_still_gets_recent(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    assert b"* 1 RECENT" in r.cmd(b"s", b"SELECT INBOX")
    r.close()


def test_rev2_search_answers_esearch(hub):
    r = rev2_login(hub)
    for subject in (b"a", b"b", b"a"):
        raw_append(r, b"INBOX", message(subject))
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"x", b"SEARCH SUBJECT a") == [b'* ESEARCH (TAG "x") ALL 1,3', b"x OK SEARCH completed"]
    assert r.cmd(b"y", b"UID SEARCH SUBJECT zzz") == [b'* ESEARCH (TAG "y") UID', b"y OK SEARCH completed"]
    assert r.cmd(b"z", b"SEARCH RETURN (COUNT) ALL")[0] == b'* ESEARCH (TAG "z") COUNT 3'
    r.close()


def test_rev2_names_are_utf8_and_missing_parents_nonexistent(hub):
    r = rev2_login(hub)
    assert r.cmd(b"c", 'CREATE "Bücher/Neu"'.encode())[-1].startswith(b"c OK")
    lines = r.cmd(b"l", 'LIST "" "B*"'.encode())
    assert lines[:-1] == ['* LIST (\\HasChildren) "/" "Bücher"'.encode(), '* LIST (\\HasNoChildren) "/" "Bücher/Neu"'.encode()], lines
    r.cmd(b"d", 'DELETE "Bücher"'.encode())
    assert '* LIST (\\NonExistent \\HasChildren) "/" "Bücher"'.encode() in r.cmd(b"m", 'LIST "" "Bücher"'.encode())
    # LSUB is still accepted
    assert r.cmd(b"u", b'LSUB "" "*"')[-1].startswith(b"u OK")
    r.close()


def test_rev2_keywords_like_forwarded_are_kept(hub):
    r = rev2_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"s", b"SELECT INBOX")
    stored = r.cmd(b"k", b"STORE 1 +FLAGS ($Forwarded $Junk $MDNSent)")
    assert b"* 1 FETCH (FLAGS ($Forwarded $Junk $MDNSent))" in stored, stored
    r.close()


def test_searchres_saves_a_result_for_later_commands(hub):
    r = raw_login(hub)
    for subject in (b"keep", b"drop", b"keep"):
        raw_append(r, b"INBOX", message(subject))
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"a", b"SEARCH RETURN (SAVE) SUBJECT keep") == [b"a OK SEARCH completed (result saved)"]
    fetched = r.cmd(b"b", b"FETCH $ (FLAGS)")
    assert [line.split(b" FETCH")[0] for line in fetched[:-1]] == [b"* 1", b"* 3"], fetched
    assert r.cmd(b"c", b"STORE $ +FLAGS.SILENT (\\Flagged)")[-1].startswith(b"c OK")
    assert r.cmd(b"d", b"SEARCH FLAGGED")[0] == b"* SEARCH 1 3"
    assert r.cmd(b"e", b"SEARCH NOT $")[0] == b"* SEARCH 2"
    assert r.cmd(b"f", b"UID SEARCH RETURN (SAVE MIN) SUBJECT drop")[0] == b'* ESEARCH (TAG "f") UID MIN 2'
    moved = r.cmd(b"g", b"MOVE $ Trash")
    assert moved[-1].startswith(b"g OK") and b"* 2 EXPUNGE" in moved, moved
    # the saved message is gone: $ is empty and commands on it do nothing
    assert r.cmd(b"h", b"FETCH $ FLAGS") == [b"h OK FETCH completed"]
    r.close()


def test_searchres_is_empty_after_a_new_select(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"s", b"SELECT INBOX")
    r.cmd(b"a", b"SEARCH RETURN (SAVE) ALL")
    r.cmd(b"t", b"SELECT INBOX")
    assert r.cmd(b"b", b"UID FETCH $ FLAGS") == [b"b OK FETCH completed"]
    r.close()


def test_imaplib_enables_rev2_and_searches(hub):
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    assert "IMAP4REV2" in c.capabilities
    typ, data = c.enable("IMAP4rev2")
    assert typ == "OK", data
    c.append("INBOX", None, None, PLAIN)
    c.select("INBOX")
    typ, data = c._simple_command("SEARCH", "ALL")
    assert typ == "OK"
    assert c._untagged_response(typ, data, "ESEARCH")[1][0].endswith(b"ALL 1")
    c.logout()


def test_message_global_part_is_structured_like_message_rfc822(hub):
    inner = "From: Jöran <jöran@exämple.test>\r\nSubject: Grüße\r\n\r\ninner text\r\n".encode("utf-8")
    outer = (
        b"From: bob@localhost\r\nSubject: forwarded\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: message/global\r\n\r\n" + inner + b"\r\n--b1--\r\n"
    )
    r = rev2_login(hub)
    r.cmd(b"u", b"ENABLE UTF8=ACCEPT")
    raw_append(r, b"INBOX", outer)
    r.cmd(b"s", b"EXAMINE INBOX")
    structure = b"\r\n".join(r.cmd(b"b", b"FETCH 1 BODYSTRUCTURE"))
    # like message/rfc822: basic fields, then the inner ENVELOPE (its date NIL), structure, lines
    assert b'("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" %d (NIL ' % len(inner) in structure, structure
    assert structure.count(b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 12 1 ') == 2, structure  # the outer text and the inner one
    lines = r.cmd(b"t", b"FETCH 1 BODY.PEEK[2.1]")
    assert b"inner text" in b"\r\n".join(lines), lines
    r.close()


def test_delete_of_a_noselect_parent_with_children_is_no_haschildren(hub):
    r = rev2_login(hub)
    assert r.cmd(b"c", b"CREATE p/c")[-1].startswith(b"c OK")
    # p exists as a mailbox (CREATE made it): deleting it is allowed and
    # leaves the name as the \Noselect parent of p/c (RFC 9051 §6.3.5).
    assert r.cmd(b"d", b"DELETE p")[-1].startswith(b"d OK")
    assert b'* LIST (\\NonExistent \\HasChildren) "/" "p"' in r.cmd(b"l", b'LIST "" p RETURN (CHILDREN)')
    again = r.cmd(b"d2", b"DELETE p")[-1]
    assert again.startswith(b"d2 NO [HASCHILDREN] "), again
    assert b'"p/c"' in b"\n".join(r.cmd(b"l2", b'LIST "" *'))  # the child is untouched
    assert r.cmd(b"d3", b"DELETE nothing/here")[-1].startswith(b"d3 NO [NONEXISTENT]")
    r.close()


def test_rev1_session_also_gets_haschildren_for_a_noselect_parent(hub):
    r = raw_login(hub)
    r.cmd(b"c", b"CREATE q/c")
    r.cmd(b"d", b"DELETE q")
    assert r.cmd(b"d2", b"DELETE q")[-1].startswith(b"d2 NO [HASCHILDREN] ")
    r.close()


def test_rev2_rename_answers_list_with_oldname_for_each_mailbox_moved(hub):
    r = rev2_login(hub)
    r.cmd(b"c", "CREATE Reisen/Zürich".encode())
    reply = r.cmd(b"r", b"RENAME Reisen Trips")
    assert reply == [
        b'* LIST () "/" "Trips" ("OLDNAME" ("Reisen"))',
        '* LIST () "/" "Trips/Zürich" ("OLDNAME" ("Reisen/Zürich"))'.encode(),
        b"r OK RENAME completed",
    ], reply
    # an IMAP4rev1 session is told nothing new (rev1 has no OLDNAME)
    plain = raw_login(hub)
    assert plain.cmd(b"r", b"RENAME Trips Travel") == [b"r OK RENAME completed"]
    plain.close()
    r.close()


def test_rev2_create_of_a_canonicalised_name_says_oldname(hub):
    r = rev2_login(hub)
    assert r.cmd(b"c", b"CREATE Projects/") == [b'* LIST () "/" "Projects" ("OLDNAME" ("Projects/"))', b"c OK CREATE completed"]
    assert r.cmd(b"c2", b"CREATE Plain") == [b"c2 OK CREATE completed"]
    r.close()


def test_wrong_password_is_authenticationfailed_for_login_and_authenticate(hub):
    import base64

    from tests.test_e2e_imap import Raw

    r = Raw(hub.ports["imap"])
    assert r.cmd(b"l", b"LOGIN alice wrong")[-1].startswith(b"l NO [AUTHENTICATIONFAILED] ")
    ir = base64.b64encode(b"\0alice\0wrong")
    assert r.cmd(b"a", b"AUTHENTICATE PLAIN " + ir)[-1].startswith(b"a NO [AUTHENTICATIONFAILED] ")
    assert r.cmd(b"l2", b"LOGIN alice secret")[-1].startswith(b"l2 OK")
    r.close()


def test_rename_of_a_mailbox_under_itself_is_cannot(hub):
    r = raw_login(hub)
    r.cmd(b"c", b"CREATE foo")
    assert r.cmd(b"r", b"RENAME foo foo/bar")[-1].startswith(b"r NO [CANNOT] ")
    assert b'"foo/bar"' not in b"\n".join(r.cmd(b"l", b'LIST "" *'))
    r.close()


def test_fetch_of_a_message_expunged_by_another_session_says_expungeissued(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(a, b"INBOX", PLAIN)
    raw_append(a, b"INBOX", PLAIN)
    a.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"d", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd(b"x", b"EXPUNGE")
    reply = a.cmd(b"f", b"FETCH 1:2 FLAGS")
    # RFC 9051 §7.1 (Dovecot: "OK [EXPUNGEISSUED] Some messages were already expunged")
    assert reply[-1].startswith(b"f OK [EXPUNGEISSUED] "), reply
    assert b"* 1 EXPUNGE" in a.cmd(b"n", b"NOOP")
    assert a.cmd(b"f2", b"FETCH 1 FLAGS")[-1] == b"f2 OK FETCH completed"
    a.close()
    b.close()
