"""
Requests the web listeners cannot read whole: a request line or header
fields over Twisted's 16384 octets. A search pasted into the webmail's box
travels in the address (about 1,800 CJK characters are 16 KB once
percent-encoded): Twisted closed such a connection without a word, and the
browser showed "didn't send any data". Now the answer is 414 or 431 (RFC
9110 section 15.5.15, RFC 6585 section 5) with a line saying why, in the
hub's layout, or as the API's JSON error under /api/; a request Twisted
cannot parse is a 400 that says so, not an empty one.
"""

from __future__ import annotations

import json
import socket
import urllib.parse

from tests.web_helpers import WebClient


def raw_answer(hub, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", hub.ports["web"]), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def test_a_search_too_long_for_an_address_gets_a_414_page_saying_so(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    assert browser.get("/mail/INBOX?q=" + urllib.parse.quote("日本" * 300)).status == 200
    page = browser.get("/mail/INBOX?q=" + urllib.parse.quote("日本語の文章" * 400))
    assert page.status == 414
    assert "the address is longer than 16384 octets" in page.text and "<main>" in page.text
    # The session and the listener go on.
    assert browser.get("/mail/INBOX").status == 200


def test_an_api_address_too_long_gets_the_apis_json_error(hub):
    answer = raw_answer(hub, b"GET /api/v1/accounts/me/folders?x=" + b"a" * 17000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 ")
    assert json.loads(body)["error"]["code"] == "uri_too_long"


def test_header_fields_too_large_get_a_431_and_an_unreadable_request_a_400_with_words(hub):
    too_many = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(20)) + b"\r\n"
    one_too_long = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: " + b"c" * 17000 + b"\r\n\r\n"
    for request in (too_many, one_too_long):
        answer = raw_answer(hub, request)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert b"header fields are over 16384 octets" in answer
    answer = raw_answer(hub, b"GET / HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"could not be read" in answer
