"""
Dates and flags a client gives, end to end against the real hub: an IMAP
date-time or date must be a real day and time (RFC 3501 §9 / RFC 9051 §9
C{date-time}, C{date}), and a flag with a backslash must be one of the
system flags (RFC 3501 §2.3.2 / RFC 9051 §2.3.2): anything else is a
tagged BAD that says what is wrong, and nothing is stored or changed.
The same date rules hold where the API and webmail take IMAP search keys.
"""

from __future__ import annotations

import base64
import http.client
import imaplib
import json
import urllib.parse

import pytest

from tests.web_helpers import WebClient

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: dated\r\n\r\nbody\r\n"


def imap(hub) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    client.login("alice", "secret")
    return client


def messages_in_inbox(client: imaplib.IMAP4) -> int:
    typ, data = client.status("INBOX", "(MESSAGES)")
    assert typ == "OK", data
    return int(data[0].split(b"MESSAGES ")[1].rstrip(b")"))


@pytest.mark.parametrize(
    "date_time, complaint",
    [
        ('"31-Feb-2026 10:00:00 +0000"', b'"31-Feb-2026" is not a day of the calendar'),
        ('"29-Feb-2025 10:00:00 +0000"', b'"29-Feb-2025" is not a day of the calendar'),
        ('"31-Apr-2026 10:00:00 +0000"', b'"31-Apr-2026" is not a day of the calendar'),
        ('"00-Jan-2026 10:00:00 +0000"', b'"00-Jan-2026" is not a day of the calendar'),
        ('"01-Jan-0000 10:00:00 +0000"', b'"01-Jan-0000" is not a day of the calendar'),
        ('"10-Mar-2026 25:00:00 +0000"', b'"25:00:00" is not a time of day'),
        ('"10-Mar-2026 10:60:00 +0000"', b'"10:60:00" is not a time of day'),
        ('"10-Mar-2026 10:00:61 +0000"', b'"10:00:61" is not a time of day'),
        ('"10-Mar-2026 10:00:00 +2400"', b'"+2400" is not a time zone'),
        ('"10-Mar-2026 10:00:00 -0060"', b'"-0060" is not a time zone'),
    ],
)
def test_append_with_a_date_time_that_is_not_real_is_bad_and_stores_nothing(hub, date_time, complaint):
    client = imap(hub)
    with pytest.raises(imaplib.IMAP4.error) as caught:
        client.append("INBOX", None, date_time, MESSAGE)
    text = str(caught.value).encode()
    assert b"APPEND command error: BAD" in text and complaint in text, text
    assert messages_in_inbox(client) == 0
    client.logout()


def test_append_on_the_29th_of_february_of_a_leap_year_is_stored_with_that_date(hub):
    client = imap(hub)
    typ, data = client.append("INBOX", None, '"29-Feb-2024 23:59:60 -2359"', MESSAGE)
    assert typ == "OK", data
    client.select("INBOX")
    typ, data = client.fetch("1", "(INTERNALDATE)")
    # 23:59:60 is a leap second: the next minute, 00:00:00 on 1 March, at
    # -2359, which is 23:59:00 on 1 March in UTC
    assert typ == "OK" and b'INTERNALDATE "01-Mar-2024 23:59:00 +0000"' in data[0], data
    client.logout()


@pytest.mark.parametrize("key", ["BEFORE", "SINCE", "ON", "SENTBEFORE", "SENTSINCE", "SENTON"])
def test_search_with_a_date_that_is_not_a_day_is_bad(hub, key):
    client = imap(hub)
    client.append("INBOX", None, None, MESSAGE)
    client.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error) as caught:
        client.search(None, key, "31-Feb-2026")
    text = str(caught.value)
    assert "SEARCH command error: BAD" in text and '"31-Feb-2026": not a day of the calendar' in text, text
    typ, data = client.search(None, key, "28-Feb-2026")
    assert typ == "OK"
    client.logout()


def test_api_and_webmail_search_with_a_date_that_is_not_a_day_say_so(hub):
    connection = http.client.HTTPConnection("127.0.0.1", hub.ports["web"], timeout=15)
    query = urllib.parse.quote("SINCE 29-Feb-2025")
    auth = "Basic " + base64.b64encode(b"alice@localhost:secret").decode()
    connection.request("GET", "/api/v1/accounts/me/folders/INBOX/messages?search=" + query, headers={"Authorization": auth})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 400 and body["error"]["code"] == "bad_search", body
    assert "not a day of the calendar" in body["error"]["message"], body
    browser = WebClient(hub)
    browser.login("alice", "secret")
    page = browser.get("/mail/INBOX?q=" + query)
    assert page.status == 200 and "could not be read" in page.text and "not a day of the calendar" in page.text


@pytest.mark.parametrize("flag", ["\\Foo", "\\Seenx", "\\*", "\\"])
def test_append_with_a_flag_that_is_not_a_system_flag_is_bad_and_stores_nothing(hub, flag):
    client = imap(hub)
    with pytest.raises(imaplib.IMAP4.error) as caught:
        client.append("INBOX", f"(\\Seen {flag})", None, MESSAGE)
    text = str(caught.value)
    assert "APPEND command error: BAD" in text and "is not a system flag" in text, text
    assert messages_in_inbox(client) == 0
    client.logout()


def test_append_with_system_flags_in_any_case_and_keywords_keeps_them(hub):
    client = imap(hub)
    typ, data = client.append("INBOX", "(\\SEEN \\flagged $Label \\Recent)", None, MESSAGE)
    assert typ == "OK", data
    client.select("INBOX")
    typ, data = client.fetch("1", "(FLAGS)")
    assert set(data[0].split(b"FLAGS (")[1].rstrip(b"))").split()) == {b"\\Seen", b"\\Flagged", b"$Label", b"\\Recent"}, data
    client.logout()


@pytest.mark.parametrize("mode", ["FLAGS", "+FLAGS", "-FLAGS.SILENT"])
def test_store_with_a_flag_that_is_not_a_system_flag_is_bad_and_changes_nothing(hub, mode):
    client = imap(hub)
    client.append("INBOX", "(\\Seen)", None, MESSAGE)
    client.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error) as caught:
        client.store("1", mode, "(\\Flagged \\Foo)")
    text = str(caught.value)
    assert "STORE command error: BAD" in text and '"\\\\Foo" is not a system flag' in text, text
    typ, data = client.fetch("1", "(FLAGS)")
    assert b"FLAGS (\\Seen" in data[0] and b"\\Flagged" not in data[0], data
    client.logout()


def test_sent_date_searches_read_a_missing_or_unreadable_date_field_as_1_jan_1970(hub):
    # RFC 3501 §6.4.4 / RFC 9051 §6.4.4 say SENT* compare the Date: field
    # and nothing of a message without one (RFC 5256 §2.2's arrival-time
    # rule is SORT's). Dovecot 2.3.19 reads such a message's sent date as
    # 1-Jan-1970 (its time 0): SENTON 1-Jan-1970 and SENTBEFORE any later
    # day find it, SENTSINCE a later day does not. The hub found it never,
    # not even under NOT SENTSINCE; it now answers as Dovecot does.
    client = imap(hub)
    dated = MESSAGE.replace(b"Subject: dated", b"Date: Mon, 1 Jan 2001 10:00:00 +0000\r\nSubject: dated")
    for message in (MESSAGE, dated, MESSAGE.replace(b"Subject: dated", b"Date: not a date at all\r\nSubject: bad date")):
        assert client.append("INBOX", None, '"15-Jun-2020 12:00:00 +0000"', message)[0] == "OK"
    client.select("INBOX")
    assert client.search(None, "SENTON", "1-Jan-1970") == ("OK", [b"1 3"])
    assert client.search(None, "SENTBEFORE", "1-Jan-1971") == ("OK", [b"1 3"])
    assert client.search(None, "SENTBEFORE", "1-Jan-2021") == ("OK", [b"1 2 3"])
    assert client.search(None, "SENTSINCE", "1-Jan-2020") == ("OK", [b""])
    assert client.search(None, "NOT", "SENTSINCE", "1-Jan-2020") == ("OK", [b"1 2 3"])
    assert client.search(None, "SENTON", "1-Jan-2001") == ("OK", [b"2"])
    client.logout()
