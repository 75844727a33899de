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


def test_a_from_field_the_email_package_cannot_parse_breaks_no_api_listing(hub):
    # Reply-To: =?utf-8?B?<0xff>?=: its octet, kept by the email package as a
    # lone surrogate, made the JSON text fail to encode (a 500); and From: "\
    # made the standard library's address parser raise IndexError;
    # _safe_header's fallback parsed the field again and raised again: the
    # JSON API's folder listing, the message and the Mailpit list were 500s.
    import json
    import urllib.request

    odd = b'Subject: odd from\r\nFrom: "\\\r\nTo: <<<>>>, "unterminated <x@y>\r\nCc: @@@\r\nReply-To: =?utf-8?B?\xff?=\r\n\r\nhello\r\n'
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15) as s:
        s.sendmail("eve@example.org", ["alice@localhost"], odd)
        s.sendmail("carol@example.org", ["alice@localhost"], FINE)
    hub.wait_for_message(to="alice@localhost", subject="fine")
    base = f"http://127.0.0.1:{hub.ports['web']}/api/v1"
    password = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    password.add_password(None, base, "alice@localhost", "secret")
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(password))

    def get(path):
        request = urllib.request.Request(base + path, headers={"Authorization": "Basic YWxpY2VAbG9jYWxob3N0OnNlY3JldA=="})
        with opener.open(request, timeout=15) as response:
            return json.loads(response.read())

    listing = get("/accounts/me/folders/INBOX/messages")
    assert [m["subject"] for m in listing["messages"]] == ["odd from", "fine"]
    assert get("/accounts/me/folders/INBOX/messages/1")["envelope"]["subject"] == "odd from"
    assert [m["Subject"] for m in get("/messages")["messages"]] == ["fine", "odd from"]
    assert get("/message/1")["Subject"] == "odd from"
    # the octet that is not UTF-8 is U+FFFD, as a decoder shows it
    assert get("/accounts/me/folders/INBOX/messages/1")["envelope"]["reply_to"] == [{"name": "", "address": "=?utf-8?B?\ufffd?="}]
    assert "Traceback" not in hub.log


def test_the_json_api_shows_a_broken_encoded_word_as_the_webmail_does(hub):
    # The webmail shows the field as sent ("=?utf-8?B?!!!notbase64?=
    # lunch": readable, and what the sender put there); the JSON API showed
    # what email.policy.default made of it ("!!!notbase64 lunch"). One
    # subject, one way of showing it; a good encoded word is decoded by both.
    import json
    import urllib.request

    good = b"Subject: =?utf-8?B?w6ljb2xl?= ok\r\nFrom: carol@example.org\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15) as s:
        s.sendmail("eve@example.org", ["alice@localhost"], BROKEN)
        s.sendmail("carol@example.org", ["alice@localhost"], good)
    hub.wait_for_message(to="alice@localhost", subject="ok")
    base = f"http://127.0.0.1:{hub.ports['web']}/api/v1"

    def get(path):
        request = urllib.request.Request(base + path, headers={"Authorization": "Basic YWxpY2VAbG9jYWxob3N0OnNlY3JldA=="})
        with urllib.request.urlopen(request, timeout=15) as response:
            return json.loads(response.read())

    web = WebClient(hub)
    web.login("alice", "secret")
    page = web.get("/mail/INBOX").text
    assert "=?utf-8?B?!!!notbase64?= lunch" in page and "école ok" in page
    as_sent = "=?utf-8?B?!!!notbase64?= lunch"
    assert [m["subject"] for m in get("/accounts/me/folders/INBOX/messages")["messages"]] == [as_sent, "école ok"]
    assert get("/accounts/me/folders/INBOX/messages/1")["envelope"]["subject"] == as_sent
    assert sorted(m["Subject"] for m in get("/messages")["messages"]) == [as_sent, "école ok"]
    assert get("/message/1")["Subject"] == as_sent


def test_an_encoded_word_of_no_base64_characters_is_shown_as_sent_on_the_page_and_in_the_api(hub):
    # "=?utf-8?B?%%%?=": the standard decoder skips characters that are not
    # base64 and so made it "" (Subject "=?utf-8?B?%%%?= soup" read "soup",
    # From "<eve@example.org>" with its name gone), where "!!!notbase64"
    # (bad padding) is kept as sent. Both are broken words: both as sent.
    import json
    import urllib.request

    odd = b"Subject: =?utf-8?B?%%%?= soup\r\nFrom: =?utf-8?B?%%%?= <eve@example.org>\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15) as s:
        s.sendmail("eve@example.org", ["alice@localhost"], odd)
    hub.wait_for_message(to="alice@localhost", subject="soup")
    web = WebClient(hub)
    web.login("alice", "secret")
    page = web.get("/mail/INBOX").text
    assert "=?utf-8?B?%%%?= soup" in page and "=?utf-8?B?%%%?= &lt;eve@example.org&gt;" in page, page
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/folders/INBOX/messages/1",
        headers={"Authorization": "Basic YWxpY2VAbG9jYWxob3N0OnNlY3JldA=="},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        envelope = json.loads(response.read())["envelope"]
    assert envelope["subject"] == "=?utf-8?B?%%%?= soup"
    assert envelope["from"] == [{"name": "=?utf-8?B?%%%?=", "address": "eve@example.org"}]
    # IMAP SEARCH sees the same text (it searched "" for the word).
    i = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=15)
    try:
        i.login("alice", "secret")
        i.select("INBOX")
        assert i.search(None, "SUBJECT", "%%%") == ("OK", [b"1"])
        assert i.search(None, "FROM", "%%%") == ("OK", [b"1"])
    finally:
        i.logout()
