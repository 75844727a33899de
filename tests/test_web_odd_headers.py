"""
Webmail pages of messages whose header fields carry 8-bit octets that are
not UTF-8 (RFC 6532 allows UTF-8 there; older mailers send Latin-1 or
garbage): the standard library's compat32 C{get} gives such a field as an
C{email.header.Header} object, not a str, and the pages must read it as
text. One such message used to make the whole folder's page a 500.
"""

from __future__ import annotations

import smtplib

from tests.web_helpers import WebClient

BAD_CHARSET = (
    b"From: a@example.org\r\nTo: alice@localhost\r\nSubject: bad charset\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="\xff\xfe"\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n'
)

BAD_PARTS = (
    b"From: a@example.org\r\nTo: alice@localhost\r\nSubject: bad parts\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/related; boundary="Q"\r\n\r\n'
    b"--Q\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see <img src=\"cid:x\"></p>\r\n"
    b"--Q\r\nContent-Type: image/png\r\nContent-ID: <x\xe9>\r\n"
    b"Content-Disposition: attachment\xe9; filename=\"caf\xe9.png\"\r\nContent-Transfer-Encoding: base\xe964\r\n\r\nAAAA\r\n"
    b"--Q--\r\n"
)


def test_a_folder_page_lists_a_message_whose_content_type_has_8bit_octets(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("a@example.org", ["alice@localhost"], b"From: a@example.org\r\nSubject: fine\r\n\r\nfine\r\n")
        smtp.sendmail("a@example.org", ["alice@localhost"], BAD_CHARSET)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = browser.get("/mail/INBOX")
    assert listing.status == 200, listing.text
    assert "bad charset" in listing.text and "fine" in listing.text
    page = browser.get("/mail/INBOX/2")
    assert page.status == 200 and "hello" in page.text


def test_a_message_whose_part_fields_have_8bit_octets_is_read_and_taken_apart(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("a@example.org", ["alice@localhost"], BAD_PARTS)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    assert "bad parts" in browser.get("/mail/INBOX").text
    page = browser.get("/mail/INBOX/1")
    assert page.status == 200 and "see" in page.text
    anatomy = browser.get("/mail/INBOX/1/anatomy")
    assert anatomy.status == 200
    assert "base\ufffd64" in anatomy.text or "baseé64" in anatomy.text
    for text in (page.text, anatomy.text):
        assert "Traceback" not in text and "Header object" not in text
