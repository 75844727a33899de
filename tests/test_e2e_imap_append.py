"""
APPEND's extensions end to end: MULTIAPPEND (RFC 3502), CATENATE (RFC
4469) with IMAP URLs (RFC 5092) and binary literals (RFC 3516 §4.4), against
the real hub with imapclient and a raw socket.
"""

from __future__ import annotations

import datetime
import re

from tests.test_e2e_imap_rfc import PLAIN, raw_append, raw_login


def message(n: int, pad: int = 0) -> bytes:
    return b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: note %d\r\n\r\nbody %d%s\r\n" % (n, n, b"x" * pad)


def count(r, folder: bytes = b"INBOX") -> int:
    line = r.cmd(b"st", b"STATUS " + folder + b" (MESSAGES)")[0]
    return int(re.search(rb"MESSAGES (\d+)", line).group(1))


def test_capability_advertises_multiappend_and_catenate(hub):
    r = raw_login(hub)
    caps = r.cmd(b"c", b"CAPABILITY")[0].split()
    assert b"MULTIAPPEND" in caps and b"CATENATE" in caps
    r.close()


def test_imapclient_multiappend_stores_all_with_one_uid_set(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    reply = client.multiappend("INBOX", [message(1), {"msg": message(2), "flags": [b"\\Seen", b"$Label"], "date": when}, message(3)])
    typ, data = reply
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1:3\] APPEND completed", data[-1]), reply
    client.select_folder("INBOX")
    fetched = client.fetch([1, 2, 3], ["FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert [fetched[n][b"BODY[HEADER.FIELDS (SUBJECT)]"].strip() for n in (1, 2, 3)] == [b"Subject: note %d" % n for n in (1, 2, 3)]
    assert set(fetched[2][b"FLAGS"]) - {b"\\Recent"} == {b"\\Seen", b"$Label"}
    assert fetched[2][b"INTERNALDATE"].astimezone(datetime.timezone.utc) == when
    client.logout()


def test_multiappend_with_one_bad_message_appends_nothing(hub):
    r = raw_login(hub)
    first, second = message(1), message(2)
    r.send(b"m APPEND INBOX {%d}\r\n" % len(first))
    assert r.line().startswith(b"+ ")
    r.send(first + b' (\\Seen) "31-Foo-2024 00:00:00 +0000" {%d}\r\n' % len(second))
    assert r.line().startswith(b"+ ")
    r.send(second + b"\r\n")
    reply = r.until_tag(b"m")
    assert reply[-1].startswith(b"m BAD bad date-time"), reply
    assert count(r) == 0
    r.close()


def test_multiappend_over_quota_appends_nothing(start_hub, tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("carol@localhost;quota=4k:pw\n")
    hub = start_hub("--auth", f"file:{accounts}", users=())
    r = raw_login(hub, b"carol@localhost", b"pw")
    small, big = message(1, 1500), message(2, 1500)
    # each alone would fit; together they would not
    r.send(b"m APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(small), small, len(big), big, len(small), small))
    reply = r.until_tag(b"m")[-1]
    assert reply.startswith(b"m NO [OVERQUOTA]") and b"nothing appended" in reply, reply
    assert count(r) == 0
    assert raw_append(r, b"INBOX", small) == 1
    r.close()


def test_catenate_joins_a_url_section_and_text(hub):
    r = raw_login(hub)
    original = b"From: bob@localhost\r\nSubject: draft\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\npart one\r\n--b1\r\nContent-Type: text/plain\r\n\r\npart two\r\n--b1--\r\n"
    uid = raw_append(r, b"Drafts", original)
    validity = re.search(rb"UIDVALIDITY (\d+)", r.cmd(b"v", b"STATUS Drafts (UIDVALIDITY)")[0]).group(1)
    text = b"\r\nNew text, then part two:\r\n"
    url = b"/Drafts;UIDVALIDITY=%s/;UID=%d/;SECTION=HEADER" % (validity, uid)
    r.send(b'c APPEND INBOX (\\Draft) CATENATE (URL "%s" TEXT {%d+}\r\n%s URL "imap://alice@localhost/Drafts/;uid=%d/;section=2") URL\r\n' % (url, len(text), text, uid))
    assert r.until_tag(b"c")[-1].startswith(b"c BAD"), "a URL outside CATENATE's list is a syntax error"
    r.send(b'c APPEND INBOX (\\Draft) CATENATE (URL "%s" TEXT {%d+}\r\n%s URL "imap://alice@localhost/Drafts/;uid=%d/;section=2")\r\n' % (url, len(text), text, uid))
    reply = r.until_tag(b"c")[-1]
    assert re.match(rb"c OK \[APPENDUID \d+ 1\]", reply), reply
    r.cmd(b"s", b"SELECT INBOX")
    lines = r.cmd(b"f", b"FETCH 1 (FLAGS BODY.PEEK[])")
    joined = b"\r\n".join(lines)
    header = original[: original.index(b"\r\n\r\n") + 4]
    assert header + text + b"part two" in joined, joined
    assert b"\\Draft" in lines[0]
    # relative to the selected mailbox
    r.cmd(b"s2", b"SELECT Drafts")
    r.send(b'd APPEND Trash CATENATE (URL ";UID=%d/;SECTION=1")\r\n' % uid)
    assert r.until_tag(b"d")[-1].startswith(b"d OK [APPENDUID")
    r.cmd(b"t", b"EXAMINE Trash")
    assert b"part one" in b"\r\n".join(r.cmd(b"g", b"FETCH 1 BODY.PEEK[]"))
    r.close()


def test_catenate_refuses_urls_it_cannot_read_with_badurl(hub):
    r = raw_login(hub)
    uid = raw_append(r, b"INBOX", PLAIN)
    for url in [
        b"imap://bob@localhost/INBOX/;UID=%d" % uid,  # another user's mailbox
        b"/INBOX;UIDVALIDITY=1/;UID=%d" % uid,  # a stale UIDVALIDITY
        b"/INBOX/;UID=%d" % (uid + 5),  # no such message
        b"/Nowhere/;UID=1",
        b"imap://alice@mail.example.org/INBOX/;UID=1",  # another server
        b";UID=1",  # relative, nothing selected
        b"/INBOX/;UID=1/;SECTION=7",
    ]:
        r.send(b'b APPEND INBOX CATENATE (URL "%s" TEXT {2+}\r\nhi)\r\n' % url)
        reply = r.until_tag(b"b")[-1]
        assert reply.startswith(b"b NO [BADURL " + url.replace(b'"', b"") + b"]"), (url, reply)
    assert count(r) == 1
    r.close()


def test_catenate_result_over_the_size_limit_is_toobig(start_hub):
    hub = start_hub("--max-message-size", "1000")
    r = raw_login(hub)
    part = b"x" * 600
    r.send(b"t APPEND INBOX CATENATE (TEXT {600+}\r\n%s TEXT {600+}\r\n%s)\r\n" % (part, part))
    assert r.until_tag(b"t")[-1].startswith(b"t NO [TOOBIG]")
    assert count(r) == 0
    r.close()


def test_literal8_append_keeps_8bit_and_refuses_nul_with_unknown_cte(hub):
    r = raw_login(hub)
    eight_bit = b"Subject: caf\xc3\xa9\r\nContent-Transfer-Encoding: binary\r\n\r\nna\xefve\r\n"
    r.send(b"a APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(eight_bit), eight_bit))
    assert r.until_tag(b"a")[-1].startswith(b"a OK [APPENDUID")
    with_nul = b"Subject: x\r\n\r\nzero\x00byte\r\n"
    r.send(b"b APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(with_nul), with_nul))
    assert r.until_tag(b"b")[-1].startswith(b"b NO [UNKNOWN-CTE]")
    r.send(b"c APPEND INBOX {%d+}\r\n%s\r\n" % (len(with_nul), with_nul))
    assert r.until_tag(b"c")[-1].startswith(b"c BAD NUL in a literal")
    assert count(r) == 1
    r.cmd(b"u", b"ENABLE UTF8=ACCEPT")  # else the 8-bit Subject comes downgraded (imap/utf8.py)
    r.cmd(b"s", b"SELECT INBOX")
    assert eight_bit in b"\r\n".join(r.cmd(b"f", b"FETCH 1 BODY.PEEK[]")) + b"\r\n"
    r.close()


# -- empty messages: refused as Dovecot refuses them ("NO Can't save a zero byte message") --


def test_append_of_an_empty_literal_is_refused_and_stores_nothing(hub):
    r = raw_login(hub)
    r.send(b"e APPEND INBOX {0}\r\n")
    assert r.line().startswith(b"+ ")
    r.send(b"\r\n")
    reply = r.until_tag(b"e")[-1]
    assert reply.startswith(b"e NO ") and b"empty message" in reply, reply
    r.send(b"e2 APPEND INBOX {0+}\r\n\r\n")
    assert r.until_tag(b"e2")[-1].startswith(b"e2 NO "), "non-synchronising literal"
    assert count(r) == 0
    assert r.cmd(b"n", b"NOOP")[-1].startswith(b"n OK")  # the session goes on
    r.close()


def test_multiappend_with_one_empty_message_appends_nothing(hub):
    r = raw_login(hub)
    first = message(1)
    r.send(b"m APPEND INBOX {%d+}\r\n%s {0+}\r\n\r\n" % (len(first), first))
    reply = r.until_tag(b"m")[-1]
    assert reply.startswith(b"m NO ") and b"nothing appended" in reply, reply
    assert count(r) == 0
    r.close()


def test_catenate_that_adds_up_to_no_octets_is_refused(hub):
    r = raw_login(hub)
    r.send(b"c APPEND INBOX CATENATE (TEXT {0+}\r\n)\r\n")
    reply = r.until_tag(b"c")[-1]
    assert reply.startswith(b"c NO ") and b"empty message" in reply, reply
    assert count(r) == 0
    r.close()


def test_smtp_data_with_no_content_is_stored_with_its_trace_header_not_empty(hub):
    import smtplib

    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as smtp:
        smtp.sendmail("bob@localhost", ["alice@localhost"], b"")
    r = raw_login(hub)
    r.cmd(b"s", b"SELECT INBOX")
    fetched = r.cmd(b"f", b"FETCH 1 (RFC822.SIZE BODY.PEEK[HEADER])")
    size = int(re.search(rb"RFC822.SIZE (\d+)", fetched[0]).group(1))
    assert size > 0 and b"Received: " in b"\r\n".join(fetched)
    r.close()


# -- a MULTIAPPEND that fails midway is never seen (RFC 3502 §3) ------------------------

from tests.test_e2e_disk_full import Filler, small_disk  # noqa: E402,F401 (the fixture)


def test_multiappend_failing_midway_on_a_full_disk_is_never_seen_by_another_session(small_disk, start_hub):
    import os

    hub = start_hub(data=small_disk)
    watcher, writer = raw_login(hub), raw_login(hub)
    watcher.cmd(b"s", b"SELECT INBOX")
    watcher.send(b"i IDLE\r\n")
    assert watcher.line().startswith(b"+ ")
    filler = Filler(small_disk)
    filler.fill()
    filler.leave(300_000)
    small, big = message(1, 20_000), message(2, 600_000)
    # the first and last fit in what is left, the second does not
    writer.send(b"m APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(small), small, len(big), big, len(small), small))
    reply = writer.until_tag(b"m")[-1]
    assert reply == b"m NO [UNAVAILABLE] APPEND failed: the server's disk is full; try again later; nothing appended", reply
    watcher.send(b"DONE\r\n")
    seen = watcher.until_tag(b"i")
    assert seen == [b"i OK IDLE terminated"], seen  # no EXISTS, no EXPUNGE, ever
    os.unlink(filler.path)
    assert count(writer) == 0
    maildir = hub.maildir("alice@localhost")
    assert os.listdir(os.path.join(maildir, "cur")) == [] and os.listdir(os.path.join(maildir, "tmp")) == []
    # with room again the same set goes in whole
    writer.send(b"m2 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(small), small, len(small), small))
    assert re.match(rb"m2 OK \[APPENDUID \d+ \d+:\d+\]", writer.until_tag(b"m2")[-1])
    assert count(writer) == 2
    watcher.close()
    writer.close()


def test_copy_failing_midway_on_a_full_disk_is_never_seen_in_the_destination(small_disk, start_hub):
    import os

    hub = start_hub(data=small_disk)
    writer, watcher = raw_login(hub), raw_login(hub)
    for n, pad in ((1, 20_000), (2, 600_000), (3, 20_000)):
        raw_append(writer, b"INBOX", message(n, pad))
    writer.cmd(b"c", b"CREATE Kept")
    watcher.cmd(b"s", b"SELECT Kept")
    watcher.send(b"i IDLE\r\n")
    assert watcher.line().startswith(b"+ ")
    filler = Filler(small_disk)
    filler.fill()
    filler.leave(300_000)
    writer.cmd(b"s", b"SELECT INBOX")
    reply = writer.cmd(b"k", b"COPY 1:3 Kept")[-1]
    assert reply == b"k NO [UNAVAILABLE] COPY failed: the server's disk is full; try again later; nothing was copied", reply
    watcher.send(b"DONE\r\n")
    assert watcher.until_tag(b"i") == [b"i OK IDLE terminated"]  # no EXISTS, no EXPUNGE
    os.unlink(filler.path)
    assert count(writer, b"Kept") == 0
    assert os.listdir(os.path.join(hub.maildir("alice@localhost"), ".Kept", "cur")) == []
    watcher.close()
    writer.close()
