# -*- test-case-name: tests.test_broken_encoded_words -*-
"""
One message whose header has an RFC 2047 encoded word with broken base64
(C{Subject: =?utf-8?B?!!!notbase64?=}), which anyone can send to port 25
(found by the breaker of stop 16): the webmail's folder page was a 500 and
IMAP SEARCH SUBJECT/FROM, SORT and THREAD of the whole folder answered
C{BAD [SERVERBUG]} (the standard library raises C{HeaderParseError}, not a
C{ValueError}). The value is now shown, searched and sorted as sent.
"""

from __future__ import annotations

import imaplib
import smtplib

from tests.web_helpers import WebClient

BROKEN = b"Subject: =?utf-8?B?!!!notbase64?= lunch\r\nFrom: =?utf-8?B?%%%?= <eve@example.org>\r\n\r\nhello\r\n"
FINE = b"Subject: fine\r\nFrom: carol@example.org\r\n\r\nhello\r\n"


def test_a_broken_encoded_word_breaks_no_folder_page_search_or_sort(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15) as s:
        s.sendmail("eve@example.org", ["alice@localhost"], BROKEN)
        s.sendmail("carol@example.org", ["alice@localhost"], FINE)
    hub.wait_for_message(to="alice@localhost", subject="fine")

    web = WebClient(hub)
    web.login("alice", "secret")
    page = web.get("/mail/INBOX")
    assert page.status == 200
    assert "=?utf-8?B?!!!notbase64?= lunch" in page.text and "fine" in page.text

    i = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=15)
    try:
        i.login("alice", "secret")
        i.select("INBOX")
        assert i.search(None, "SUBJECT", "lunch") == ("OK", [b"1"])
        assert i.search(None, "FROM", "eve") == ("OK", [b"1"])
        assert i.search(None, "SUBJECT", "fine") == ("OK", [b"2"])
        typ, data = i._simple_command("SORT", "(SUBJECT)", "UTF-8", "ALL")
        assert typ == "OK" and i.response("SORT")[1] == [b"1 2"]
        typ, data = i._simple_command("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL")
        assert typ == "OK"
    finally:
        i.logout()
    assert "Traceback" not in hub.log
