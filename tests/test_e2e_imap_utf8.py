"""
UTF8=ACCEPT (RFC 6855) end to end: an SMTPUTF8 message delivered over
SMTP, then read over IMAP by a session that enabled UTF8=ACCEPT (the
header as sent) and by one that did not (a downgraded header: no raw
8-bit); UTF-8 mailbox names; APPEND's UTF8 data item. The real hub,
smtplib, imaplib and a raw socket.
"""

from __future__ import annotations

import imaplib
import re
import smtplib

from tests.test_e2e_imap_rfc import raw_login
from twisted_mailhub.imap.utf8 import downgrade

SMTPUTF8_MESSAGE = (
    "From: Jöran Grüße <jöran@exämple.test>\r\nTo: alice@localhost, Ann <ann@bücher.example>\r\n"
    "Subject: Grüße aus München\r\nX-Note: spät\r\nMessage-ID: <m1@exämple.test>\r\n\r\nHallo!\r\n"
).encode("utf-8")


def deliver(hub) -> None:
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    assert s.sendmail("jöran@exämple.test", ["alice@localhost"], SMTPUTF8_MESSAGE, mail_options=["SMTPUTF8"]) == {}
    s.quit()


def fetch_literal(r, tag: bytes, command: bytes) -> tuple[bytes, list[bytes]]:
    """(the octets of the first literal of the reply, every line)."""
    r.send(tag + b" " + command + b"\r\n")
    text = b""
    lines = []
    while True:
        line = r.line()
        lines.append(line)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:
            n = int(m.group(1))
            while len(r.buf) < n:
                r.buf += r.sock.recv(65536)
            text, r.buf = (text or r.buf[:n]), r.buf[n:]
            continue
        if line.startswith(tag + b" "):
            return text, lines


def test_capability_and_enable_utf8_accept(hub):
    r = raw_login(hub)
    assert b"UTF8=ACCEPT" in r.cmd(b"c", b"CAPABILITY")[0].split()
    assert r.cmd(b"e", b"ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT", b"e OK ENABLE completed"]
    assert r.cmd(b"f", b"ENABLE UTF8=ACCEPT") == [b"* ENABLED", b"f OK ENABLE completed"], "enabled once"
    r.close()


def test_utf8_session_gets_the_smtputf8_header_as_sent(hub):
    deliver(hub)
    r = raw_login(hub)
    r.cmd(b"e", b"ENABLE UTF8=ACCEPT")
    r.cmd(b"s", b"EXAMINE INBOX")
    header, _ = fetch_literal(r, b"h", b"FETCH 1 BODY.PEEK[HEADER]")
    assert header.endswith(SMTPUTF8_MESSAGE[: SMTPUTF8_MESSAGE.index(b"\r\n\r\n") + 4]), header
    r.close()


def test_legacy_session_gets_a_downgraded_header_and_envelope_without_raw_8bit(hub):
    deliver(hub)
    r = raw_login(hub)
    r.cmd(b"s", b"EXAMINE INBOX")
    header, _ = fetch_literal(r, b"h", b"FETCH 1 BODY.PEEK[HEADER]")
    assert header.isascii(), header
    assert b"Subject: =?utf-8?" in header and b"Downgraded-X-Note: =?utf-8?" in header
    assert b"Ann <ann@xn--bcher-kva.example>" in header  # IDNA A-label for a UTF-8 domain
    assert b" :;" in header  # a UTF-8 local part: an empty group named by the encoded address
    whole, _ = fetch_literal(r, b"b", b"FETCH 1 BODY.PEEK[]")
    assert whole.isascii() and whole.endswith(b"\r\n\r\nHallo!\r\n")
    lines = r.cmd(b"v", b"FETCH 1 ENVELOPE")
    assert all(line.isascii() for line in lines), lines
    assert b'"=?utf-8?' in lines[0], lines
    r.close()


def test_imaplib_utf8_mode_creates_and_lists_utf8_mailbox_names(hub):
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    typ, data = c.enable("UTF8=ACCEPT")
    assert typ == "OK", data
    assert c.create('"Grüße & Co"')[0] == "OK"
    typ, listing = c.list('""', '"Gr*"')
    assert listing == ['(\\HasNoChildren) "/" "Grüße & Co"'.encode("utf-8")], listing
    c.logout()
    # a session without UTF8=ACCEPT sees the same mailbox in modified UTF-7
    r = raw_login(hub)
    assert r.cmd(b"l", b'LIST "" "Gr*"')[0] == b'* LIST (\\HasNoChildren) "/" "Gr&APwA3w-e &- Co"'
    r.close()


def test_append_utf8_data_item_needs_enable(hub):
    r = raw_login(hub)
    message = "Subject: Grüße\r\n\r\nhi\r\n".encode("utf-8")
    r.send(b"a APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(message), message))
    assert r.until_tag(b"a")[-1].startswith(b"a BAD the UTF8 data item needs ENABLE UTF8=ACCEPT")
    r.cmd(b"e", b"ENABLE UTF8=ACCEPT")
    r.send(b"b APPEND INBOX (\\Seen) UTF8 (~{%d+}\r\n%s)\r\n" % (len(message), message))
    assert r.until_tag(b"b")[-1].startswith(b"b OK [APPENDUID")
    r.cmd(b"s", b"EXAMINE INBOX")
    header, _ = fetch_literal(r, b"h", b"FETCH 1 BODY.PEEK[HEADER]")
    assert header == "Subject: Grüße\r\n\r\n".encode("utf-8")
    r.close()


def test_an_ascii_message_is_not_changed_by_the_downgrade():
    plain = b"From: a@b.example\r\nSubject: hi\r\n\r\nbody \xe9\r\n"
    assert downgrade(plain) is plain


FORWARD = (
    b"From: a@localhost\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee below \xc3\xa4\r\n"
    b"--XX\r\nContent-Type: message/rfc822\r\n\r\n" + "From: Jöran <j@exämple.test>\r\nSubject: Grüße\r\n\r\nInnen\r\n".encode("utf-8")
    + b"--XX\r\nContent-Type: message/global\r\n\r\n" + "Subject: Übersicht\r\n\r\nglobal\r\n".encode("utf-8")
    + b"--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"r\xc3\xa9sum\xc3\xa9.pdf\"\r\n\r\nPDF\r\n--XX--\r\n"
)


def headers_of(message: bytes) -> list[bytes]:
    """Every header block of a message: the top one and each MIME part's (what the downgrade must leave ASCII)."""
    from twisted_mailhub.imap.message import Part

    out, todo = [], [Part(message)]
    while todo:
        part = todo.pop()
        out.append(part.header)
        todo += part.children + ([part.message] if part.message else [])
    return out


def test_legacy_session_gets_nested_headers_downgraded_and_rfc822_size_of_what_it_gets(hub):
    writer = raw_login(hub)
    writer.cmd(b"e", b"ENABLE UTF8=ACCEPT")
    writer.send(b"a APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(FORWARD), FORWARD))
    assert writer.until_tag(b"a")[-1].startswith(b"a OK")
    deliver(hub)  # and one by SMTPUTF8
    legacy = raw_login(hub)
    legacy.cmd(b"s", b"EXAMINE INBOX")
    for n in (1, 2):
        whole, lines = fetch_literal(legacy, b"f%d" % n, b"FETCH %d (RFC822.SIZE BODY.PEEK[])" % n)
        size = int(re.search(rb"RFC822.SIZE (\d+)", lines[0]).group(1))
        assert size == len(whole), (n, size, len(whole))
        assert all(header.isascii() for header in headers_of(whole)), whole
        # the cheap path (only index columns) says the same
        assert b"RFC822.SIZE %d" % size in legacy.cmd(b"c%d" % n, b"FETCH %d RFC822.SIZE" % n)[0]
    whole, _ = fetch_literal(legacy, b"g", b"FETCH 1 BODY.PEEK[]")
    assert b"Subject: =?utf-8?b?" in whole and b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf" in whole
    assert b"see below \xc3\xa4" in whole  # bodies are never touched
    structure = legacy.cmd(b"b", b"FETCH 1 BODYSTRUCTURE")[0]
    assert b'("FILENAME*" "utf-8\'\'r%C3%A9sum%C3%A9.pdf")' in structure.upper() or b"R%C3%A9SUM%C3%A9.PDF" in structure.upper(), structure
    # a UTF8=ACCEPT session gets the message as stored, and its stored size
    writer.cmd(b"s", b"EXAMINE INBOX")
    whole, lines = fetch_literal(writer, b"h", b"FETCH 1 (RFC822.SIZE BODY.PEEK[])")
    assert whole == FORWARD and b"RFC822.SIZE %d" % len(FORWARD) in lines[0]
    legacy.close()
    writer.close()


def test_search_charset_after_enable_utf8_accept_is_bad_and_utf8_strings_search_without_it(hub):
    # RFC 6855 §3 (with its verified erratum 4029): once UTF8=ACCEPT is
    # enabled a client MUST NOT send SEARCH with a charset, the server
    # SHOULD answer BAD (the labels conflict), and for SORT and THREAD,
    # whose charset is mandatory, BAD for any charset but UTF-8. Before,
    # SEARCH CHARSET UTF-8 and SORT ... US-ASCII were answered OK. A quoted
    # UTF-8 string without CHARSET is what the client sends instead (§3).
    deliver(hub)
    r = raw_login(hub)
    r.cmd(b"s", b"SELECT INBOX")
    before = r.cmd(b"a", b"SEARCH CHARSET UTF-8 SUBJECT M\xc3\xbcnchen")
    assert before[-1].startswith(b"a OK") and b"* SEARCH 1" in before, before  # not enabled yet: allowed
    r.cmd(b"e", b"ENABLE UTF8=ACCEPT")
    for tag, command in (
        (b"b", b"SEARCH CHARSET UTF-8 SUBJECT M\xc3\xbcnchen"),
        (b"c", b"UID SEARCH CHARSET US-ASCII ALL"),
        (b"d", b"SEARCH RETURN (COUNT) CHARSET UTF-8 ALL"),
        (b"f", b"SORT (DATE) US-ASCII ALL"),
        (b"g", b"THREAD REFERENCES ISO-8859-1 ALL"),
    ):
        lines = r.cmd(tag, command)
        assert len(lines) == 1 and lines[0].startswith(tag + b" BAD ") and b"UTF8=ACCEPT" in lines[0], (command, lines)
    assert r.cmd(b"h", b'SEARCH SUBJECT "M\xc3\xbcnchen"') == [b"* SEARCH 1", b"h OK SEARCH completed"]
    assert r.cmd(b"i", b"SORT (DATE) UTF-8 SUBJECT M\xc3\xbcnchen")[0] == b"* SORT 1"
    r.close()
