"""
IMAP end to end, what a compliance tester checks (issue 9's numbered items
and issue 8's IMAP items): the real hub, spoken to over a raw socket (to see
the exact responses) and with imaplib/imapclient.
"""

from __future__ import annotations

import re
import smtplib

from tests.test_e2e_imap import Raw, login

PLAIN = b"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: lunch\r\n\r\nAt noon?\r\n"


def raw_login(hub, user=b"alice", password=b"secret") -> Raw:
    r = Raw(hub.ports["imap"])
    assert r.cmd(b"l", b"LOGIN " + user + b" " + password)[-1].startswith(b"l OK")
    return r


def raw_append(r: Raw, folder: bytes, message: bytes, tag: bytes = b"ap") -> int:
    r.send(tag + b" APPEND " + folder + b" {%d+}\r\n" % len(message) + message + b"\r\n")
    reply = r.until_tag(tag)[-1]
    m = re.search(rb"APPENDUID (\d+) (\d+)", reply)
    assert m, reply
    return int(m.group(2))


def untagged(lines: list[bytes], pattern: bytes) -> list[bytes]:
    return [line for line in lines if re.match(pattern, line)]


def multipart(content_type: bytes, extra_header: bytes = b"") -> bytes:
    return (
        b"From: a@localhost\r\nSubject: parts\r\nMIME-Version: 1.0\r\n" + content_type + b"\r\n" + extra_header + b"\r\n"
        b"preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsecond part\r\n--b1--\r\n"
    )


# -- 1. \Recent (RFC 3501 §2.3.2) ---------------------------------------------------


def test_appended_message_is_recent_for_the_first_session_only(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(a, b"INBOX", PLAIN)
    status = b.cmd(b"s", b'STATUS INBOX (RECENT MESSAGES)')
    assert b'* STATUS "INBOX" (RECENT 1 MESSAGES 1)' in status
    examined = b.cmd(b"e", b"EXAMINE INBOX")
    assert b"* 1 RECENT" in examined  # EXAMINE shows it but does not take it
    selected = a.cmd(b"x", b"SELECT INBOX")
    assert b"* 1 RECENT" in selected
    assert a.cmd(b"f", b"FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))"
    assert b"* SEARCH 1" in a.cmd(b"r", b"SEARCH RECENT")
    assert b"* SEARCH 1" in a.cmd(b"n", b"SEARCH NEW")
    assert b"* SEARCH" in a.cmd(b"o", b"SEARCH OLD")[0] and b"* SEARCH 1" not in a.cmd(b"o2", b"SEARCH OLD")
    again = b.cmd(b"y", b"SELECT INBOX")
    assert b"* 0 RECENT" in again
    assert b"* SEARCH" == b.cmd(b"r", b"SEARCH RECENT")[0]
    assert b"* SEARCH 1" in b.cmd(b"o", b"SEARCH OLD")
    a.close()
    b.close()


def test_copy_into_a_selected_folder_announces_exists_and_recent(hub):
    a, b = raw_login(hub), raw_login(hub)
    a.cmd(b"c", b"CREATE Target")
    assert b"* 0 RECENT" in a.cmd(b"s", b"SELECT Target")
    raw_append(b, b"INBOX", PLAIN)
    b.cmd(b"s", b"SELECT INBOX")
    assert b.cmd(b"c", b"COPY 1 Target")[-1].startswith(b"c OK [COPYUID ")
    noop = a.cmd(b"n", b"NOOP")
    assert noop[:2] == [b"* 1 EXISTS", b"* 1 RECENT"], noop
    assert b"* SEARCH 1" in a.cmd(b"r", b"SEARCH RECENT")
    a.close()
    b.close()


def test_delivered_mail_is_recent_once(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], PLAIN)
    a = raw_login(hub)
    assert b"* 1 RECENT" in a.cmd(b"s", b"SELECT INBOX")
    a.close()
    a = raw_login(hub)
    assert b"* 0 RECENT" in a.cmd(b"s", b"SELECT INBOX")
    a.close()


# -- 2 and issue 8 item 21: MIME header parameters -------------------------------------


def test_folded_boundary_parameter_splits_the_parts(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", multipart(b'Content-Type: multipart/mixed;\r\n\tboundary="b1"'))
    raw_append(r, b"INBOX", multipart(b"Content-Type: multipart/mixed; (a comment)\r\n boundary*0=b;\r\n boundary*1=1"))
    r.cmd(b"s", b"SELECT INBOX")
    for seq in (b"1", b"2"):
        first = r.cmd(b"a", b"FETCH " + seq + b" BODY.PEEK[1]")
        assert first[1] == b"first part)", first
        second = r.cmd(b"b", b"FETCH " + seq + b" BODY.PEEK[2]")
        assert second[1] == b"second part)", second
        structure = r.cmd(b"c", b"FETCH " + seq + b" BODYSTRUCTURE")[0]
        assert structure.count(b'("TEXT" "PLAIN"') == 2, structure
    r.close()


def test_rfc2231_filename_is_given_as_sent(hub):
    r = raw_login(hub)
    disposition = b"Content-Disposition: attachment; filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n"
    continued = b"Content-Disposition: attachment;\r\n filename*0*=UTF-8''%C3%A9t; filename*1*=%C3%A9.txt\r\n"
    for header in (disposition, continued):
        message = (
            b"From: a@localhost\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--b1\r\nContent-Type: application/octet-stream; name*=UTF-8''%C3%A9t%C3%A9.txt\r\n" + header + b"\r\nAAAA\r\n--b1--\r\n"
        )
        raw_append(r, b"INBOX", message)
    r.cmd(b"s", b"EXAMINE INBOX")
    for seq in (b"1", b"2"):
        structure = r.cmd(b"b", b"FETCH " + seq + b" BODYSTRUCTURE")[0]
        assert b'("ATTACHMENT" ("FILENAME*" "UTF-8\'\'%C3%A9t%C3%A9.txt"))' in structure, structure
        assert b'("NAME*" "UTF-8\'\'%C3%A9t%C3%A9.txt")' in structure, structure
        assert b"%C3%83" not in structure
    r.close()


# -- 3. UIDVALIDITY ---------------------------------------------------------------


def test_uidvalidity_of_a_recreated_folder_is_greater(hub):
    r = raw_login(hub)
    seen = []
    for i in range(3):  # all within a second or two
        r.cmd(b"c", b"CREATE Again")
        reply = r.cmd(b"a", b"APPEND Again {%d+}\r\n" % len(PLAIN) + PLAIN)[-1]
        m = re.search(rb"APPENDUID (\d+) (\d+)", reply)
        seen.append((int(m.group(1)), int(m.group(2))))
        r.cmd(b"d", b"DELETE Again")
    validities = [v for v, _ in seen]
    assert validities == sorted(set(validities)), seen
    r.close()


# -- 4. FLAGS and PERMANENTFLAGS with keywords -------------------------------------------


def test_a_new_keyword_is_announced_in_flags_before_it_is_seen(hub):
    a, b = raw_login(hub), raw_login(hub)
    raw_append(a, b"INBOX", PLAIN)
    selected = a.cmd(b"s", b"SELECT INBOX")
    assert b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)] flags and keywords are kept" in selected
    b.cmd(b"s", b"SELECT INBOX")
    stored = a.cmd(b"t", b"STORE 1 +FLAGS ($Label1)")
    assert stored[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1)", stored
    assert stored[1].startswith(b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label1 \\*)]")
    assert b"$Label1" in stored[2] and b"FETCH" in stored[2]
    other = b.cmd(b"n", b"NOOP")
    assert other[0].startswith(b"* FLAGS (") and b"$Label1" in other[0], other
    assert b"FETCH" in other[2] and b"$Label1" in other[2]
    again = a.cmd(b"t2", b"STORE 1 +FLAGS ($Label1)")
    assert not untagged(again, rb"\* FLAGS"), again  # nothing new to announce
    a.close()
    b.close()


# -- 5 and 6. SEARCH arguments and addresses ---------------------------------------------


def test_search_takes_nil_quoted_and_literal_strings(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", b"From: a@localhost\r\nSubject: NIL and more\r\n\r\nx\r\n")
    raw_append(r, b"INBOX", "From: a@localhost\r\nSubject: Grüße\r\n\r\nx\r\n".encode())
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"a", b"SEARCH SUBJECT NIL") == [b"* SEARCH 1", b"a OK SEARCH completed"]
    assert r.cmd(b"b", b'SEARCH SUBJECT "nil and"')[0] == b"* SEARCH 1"
    assert r.cmd(b"c", b"SEARCH CHARSET UTF-8 SUBJECT {4+}\r\n\xc3\xbc\xc3\x9f")[0] == b"* SEARCH 2"
    assert r.cmd(b"d", b'SEARCH HEADER Subject ""')[0] == b"* SEARCH 1 2"
    assert r.cmd(b"e", b"SEARCH OR (SUBJECT NIL) (KEYWORD NIL)")[0] == b"* SEARCH 1"
    assert r.cmd(b"f", b"SEARCH NOT FROM NIL")[0] == b"* SEARCH 1 2"
    r.close()


def test_address_search_matches_the_parsed_address(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", b"From: <user-from (comment)@ (comment) domain.org>\r\nTo: Friends: a@x.org, \"B\r\n b\" <b@y.org>;\r\nSubject: s\r\n\r\nx\r\n")
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"a", b"SEARCH FROM user-from@domain.org")[0] == b"* SEARCH 1"
    assert r.cmd(b"b", b"SEARCH TO b@y.org")[0] == b"* SEARCH 1"
    assert r.cmd(b"c", b"SEARCH FROM comment")[0] == b"* SEARCH 1"  # still the raw text too
    assert r.cmd(b"d", b"SEARCH FROM other@domain.org")[0] == b"* SEARCH"
    r.close()


# -- 7. ENVELOPE ----------------------------------------------------------------------------


def test_envelope_groups_empty_sender_and_source_routes(hub):
    r = raw_login(hub)
    raw_append(
        r,
        b"INBOX",
        b"From: Alice <alice@localhost>\r\nSender:\r\nReply-To: \r\n"
        b"To: Friends: a@x.org, B <b@y.org>;, <@relay.org:c@z.org>\r\nCc: Nobody:;\r\nBcc: nodomain\r\n"
        b"Subject: env\r\n\r\nx\r\n",
    )
    r.cmd(b"s", b"SELECT INBOX")
    envelope = r.cmd(b"e", b"FETCH 1 ENVELOPE")[0]
    alice = b'(("Alice" NIL "alice" "localhost"))'
    assert b'"env" ' + alice + b" " + alice + b" " + alice + b" " in envelope, envelope
    assert (
        b'((NIL NIL "Friends" NIL)(NIL NIL "a" "x.org")("B" NIL "b" "y.org")(NIL NIL NIL NIL)(NIL "@relay.org" "c" "z.org"))'
        in envelope
    ), envelope
    assert b'((NIL NIL "Nobody" NIL)(NIL NIL NIL NIL))' in envelope
    assert b'((NIL NIL "nodomain" ""))' in envelope
    r.close()


# -- 8, 10 and issue 8 item 20: LIST and LSUB ---------------------------------------------------


def test_lsub_with_percent_shows_the_unsubscribed_parent_as_noselect(hub):
    r = raw_login(hub)
    r.cmd(b"c", b"CREATE prefix/a/b")
    r.cmd(b"s", b"SUBSCRIBE prefix/a/b")
    assert r.cmd(b"l", b'LSUB "" prefix/%') == [b'* LSUB (\\Noselect) "/" "prefix/a"', b"l OK LSUB completed"]
    assert r.cmd(b"m", b'LSUB "" prefix/*')[0] == b'* LSUB () "/" "prefix/a/b"'
    r.close()


def test_list_with_a_pattern_that_is_not_modified_utf7_matches_nothing(hub):
    r = raw_login(hub)
    reply = r.cmd(b"l", b'LIST "" "&Jjo"')
    assert len(reply) == 1 and reply[0].startswith(b"l OK"), reply
    assert r.cmd(b"c", b'CREATE "&Jjo"')[-1].startswith(b"c NO [CANNOT]")
    r.close()


def test_deleting_a_folder_with_children_leaves_it_noselect(hub):
    r = raw_login(hub)
    r.cmd(b"c", b"CREATE P/child")
    assert r.cmd(b"d", b"DELETE P")[-1] == b"d OK DELETE completed"
    listing = r.cmd(b"l", b'LIST "" "%"')
    assert b'* LIST (\\Noselect \\HasChildren) "/" "P"' in listing, listing
    assert b'* LIST (\\HasNoChildren) "/" "P/child"' in r.cmd(b"m", b'LIST "" "P/%"')
    assert r.cmd(b"s", b"SELECT P")[-1].startswith(b"s NO [NONEXISTENT]")
    r.close()


# -- 9. MOVE's COPYUID ---------------------------------------------------------------------


def test_move_sends_copyuid_with_text(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"s", b"SELECT INBOX")
    moved = r.cmd(b"m", b"MOVE 1 Archive")
    assert re.match(rb"\* OK \[COPYUID \d+ 1 1\] \S", moved[0]), moved
    assert moved[1:] == [b"* 1 EXPUNGE", b"m OK MOVE completed"]
    r.close()


# -- issue 8 items 9 and 18: replies without Python text; every parser answers ---------------------


def test_bad_input_replies_never_show_python_text(hub):
    r = raw_login(hub)
    raw_append(r, b"INBOX", PLAIN)
    r.cmd(b"s", b"SELECT INBOX")
    bad = [
        b"FETCH 1 BODY[]<0.20",
        b"FETCH 1 (FLAGS",
        b"FETCH 1 FOO",
        b"NOOP extra words",
        b"SEARCH SENTON notadate",
        b"SEARCH UID x:y",
        b"STORE 1 +FLAGS",
        b"COPY",
        b"SEARCH CHARSET",
        b"SEARCH",
        b"STATUS INBOX (NOPE\x08)",
        b"CREATE \"a\x08b\"",
        b"SEARCH SUBJECT (a",
        b"APPEND INBOX (\\Seen) \"bad date\" {1+}\r\nx",
        b"UID FROB 1",
        b"EXAMINE",
    ]
    for i, command in enumerate(bad):
        tag = b"t%d" % i
        reply = r.cmd(tag, command)
        last = reply[-1]
        assert re.match(tag + rb" (BAD|NO) ", last), (command, reply)
        for line in reply:
            assert not re.search(rb"b'|b\"|None|Error|Exception|Traceback|\\x", line), (command, line)
            assert not re.search(rb"[\x00-\x1f\x7f]", line), (command, line)
    assert r.cmd(b"ok", b"NOOP")[-1] == b"ok OK NOOP completed"
    assert "Traceback" not in hub.log and "Unhandled Error" not in hub.log
    r.close()


def test_search_charset_with_nothing_after_it_gets_a_tagged_bad(hub):
    r = raw_login(hub)
    r.cmd(b"s", b"SELECT INBOX")
    for i, command in enumerate([b"SEARCH CHARSET", b"SEARCH CHARSET ", b"UID SEARCH CHARSET", b"SEARCH CHARSET UTF-8"]):
        reply = r.cmd(b"t%d" % i, command)
        assert reply[-1].startswith(b"t%d BAD " % i), (command, reply)
    assert "Traceback" not in hub.log and "Unhandled Error" not in hub.log
    r.close()


def test_imapclient_sees_keywords_and_recent(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    client.append("INBOX", PLAIN)
    info = client.select_folder("INBOX")
    assert info[b"RECENT"] == 1
    client.add_flags([1], ["$Work"])
    assert b"$Work" in client.get_flags([1])[1]
    assert client.search(["KEYWORD", "$Work"]) == [1]
    client.logout()
    c = login(hub)
    c.select("INBOX")
    assert c.response("FLAGS")[1][0].endswith(b"$Work)")
    assert c.response("PERMANENTFLAGS")[1][0].endswith(b"$Work \\*)")
    c.logout()


# -- SASL-IR (RFC 4959) and cancelling AUTHENTICATE ---------------------------------------


def test_authenticate_with_an_initial_response_and_a_cancelled_one(hub):
    import base64

    r = Raw(hub.ports["imap"])
    assert b"SASL-IR" in r.greeting
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ "
    r.send(b"*\r\n")
    assert r.until_tag(b"a") == [b"a BAD AUTHENTICATE cancelled"]
    wrong = base64.b64encode(b"\0alice\0wrong")
    assert r.cmd(b"b", b"AUTHENTICATE PLAIN " + wrong)[-1].startswith(b"b NO")
    right = base64.b64encode(b"\0alice\0secret")
    assert r.cmd(b"c", b"AUTHENTICATE PLAIN " + right)[-1].startswith(b"c OK")
    assert r.cmd(b"d", b"SELECT INBOX")[-1].startswith(b"d OK")
    r.close()


def test_input_quoted_in_a_bad_reply_is_shown_as_octets_never_as_a_python_bytes_literal(hub):
    # Twisted's "Too many arguments for command: b'...'" came through with
    # Python's escapes inside the quotes ("\xe9t\xe9", "X\r..."): a
    # Python repr in a reply. Found by a differential of malformed input
    # against Dovecot (which answers OK to both and goes on). Now shown as
    # every reply shows input: <E9> for an octet that is not UTF-8, ^M for a CR.
    r = raw_login(hub)
    assert r.cmd(b"t", b"NOOP \xe9t\xe9") == [b't BAD Too many arguments for command: "<E9>t<E9>"']
    # (octets that only look like an escape are shown as they came)
    assert r.cmd(b"u", b"NOOP \\x41 it's") == [b'u BAD Too many arguments for command: "\\x41 it\'s"']
    assert r.cmd(b"w", b"NOOP") == [b"w OK NOOP completed"]
    r.close()


def test_a_nul_or_a_bare_cr_in_a_command_line_is_bad_and_named(hub):
    # RFC 9051 §9: no NUL anywhere, no CR or LF but the CRLF ending the
    # line. Before: the CR was a separator ('NOOP<CR>X': 'BAD Too many
    # arguments for command: "X"', the CR not named) and a NUL reached the
    # handler ('SELECT IN<NUL>BOX': 'NO [CANNOT] mailbox names are modified
    # UTF-7'). Dovecot answers BAD ("CR sent without LF", "Invalid
    # characters in atom", "NULs not allowed in strings").
    r = raw_login(hub)
    words = b"BAD a command line holds no NUL, and no CR or LF but the CRLF that ends it (RFC 9051 section 9)"
    assert r.cmd(b"v", b"NOOP\rX") == [b"v " + words + b" (the line contained a control character: ^M, a carriage return)"]
    assert r.cmd(b"w", b"SELECT IN\x00BOX") == [b"w " + words + b" (the line contained a control character: ^@, a NUL)"]
    assert r.cmd(b"x", b'SELECT "IN\x00BOX"')[0].startswith(b"x " + words)
    assert r.cmd(b"y", b"FETCH 1 (FLAGS\nUID)")[0].startswith(b"y " + words)
    # a line that ends in a literal still waits for it (its octets are no command)
    r.send(b"z LOGIN a\x00b {6+}\r\nNOOP\r\n\r\n")
    assert r.until_tag(b"z") == [b"z BAD LOGIN not allowed now: only before login"]
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    r.close()


def test_eight_bit_and_control_octets_of_a_command_are_never_echoed_raw(hub):
    # A header field name with an octet outside printable US-ASCII (RFC
    # 5322 §3.6.8) was echoed raw in the FETCH response's section
    # ("BODY[HEADER.FIELDS (\xff)]"), and SEARCH HEADER with one failed
    # ("BAD [SERVERBUG]", a traceback in the log). Both are BAD now, the
    # name shown as every reply shows input (<FF>, ^A); input quoted in
    # other BAD replies too ("?" was all an 8-bit octet got).
    r = raw_login(hub)
    raw_append(r, b"INBOX", b"Subject: hi\r\nX-Y: z\r\n\r\nbody\r\n")
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    bad_name = b"t BAD a header field name is printable US-ASCII without ':' (RFC 5322 section 3.6.8): "
    assert r.cmd(b"t", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (\xff)])") == [bad_name + b'"<FF>"']
    assert r.cmd(b"t", b"UID FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (X\xff\x01)])") == [bad_name + b'"X<FF>^A"']
    assert r.cmd(b"t", b"SEARCH HEADER \xff x") == [bad_name + b'"<FF>"']
    assert r.cmd(b"t", b"SEARCH HEADER X-\xc3\xa9 x") == [bad_name + b'"X-?"']
    assert r.cmd(b"u", b"FETCH 1 (\xff)") == [b'u BAD bad FETCH item at "<FF>"']
    assert r.cmd(b"u", b"SEARCH \xff") == [b'u BAD unknown search key "<FF>"']
    assert r.cmd(b"u", b"FETCH 1 (BODY.PEEK[\xff])") == [b'u BAD bad section "[<FF>]"']
    # The session goes on, and a right field name still works.
    reply = r.cmd(b"v", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (X-Y)])")
    assert reply[-1] == b"v OK FETCH completed", reply
    assert reply[0] == b"* 1 FETCH (BODY[HEADER.FIELDS (X-Y)] {10}", reply
    assert r.cmd(b"w", b"SEARCH HEADER X-Y z") == [b"* SEARCH 1", b"w OK SEARCH completed"]
    for line in r.cmd(b"x", b"NOOP"):
        assert not re.search(rb"[\x00-\x08\x0e-\x1f\x7f-\xff]", line)
    r.close()
