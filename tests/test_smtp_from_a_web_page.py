"""
A web page cannot send mail through the hub's SMTP listener: a form that
a page posts to the SMTP port (the "HTML form protocol attack") sends an
HTTP request whose body is SMTP commands; the hub closes the session at
the request line, before any of them. In Chromium (Selenium) and over a
raw socket.
"""

from __future__ import annotations

import imaplib
import socket
import time

import pytest

from tests.test_api_browser import browser  # noqa: F401 (the fixture; skips, or fails in CI, without chromium)
from tests.web_helpers import serve_page
from twisted_mailhub.testing import Mailhub

SMTP_IN_A_FORM = (
    "EHLO attacker.example\r\nMAIL FROM:<boss@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n"
    "Subject: pay this invoice\r\n\r\nsent by a web page\r\n.\r\nQUIT\r\n"
)


@pytest.fixture(scope="module")
def hub():
    with Mailhub(accounts=["alice:secret"]) as running:
        yield running


def inbox_subjects(hub) -> list[str]:
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    try:
        imap.login("alice@localhost", "secret")
        imap.select("INBOX")
        _, found = imap.search(None, "ALL")
        subjects = []
        for n in found[0].split():
            _, data = imap.fetch(n, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects.append(data[0][1].decode().strip())
        return subjects
    finally:
        imap.logout()


def test_an_http_request_line_closes_the_smtp_session_before_its_body(hub):
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as s:
        assert s.recv(200).startswith(b"220 ")
        body = SMTP_IN_A_FORM.encode()
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while True:
            got = s.recv(4096)
            if not got:
                break
            answer += got
    assert answer.startswith(b"421 4.7.0 ") and b"HTTP request" in answer and answer.count(b"\r\n") == 1, answer
    assert inbox_subjects(hub) == []
    # A person who types a word like GET by mistake is only told so.
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as s:
        s.recv(200)
        s.sendall(b"GET mail\r\nNOOP\r\n")
        time.sleep(0.5)
        replies = s.recv(4096)
    assert replies.startswith(b"500 5.5.2 Error: command 'GET' not recognized") and b"\r\n250 " in replies, replies


def test_a_web_pages_form_posted_to_the_smtp_port_sends_no_mail(hub, browser):  # noqa: F811
    page = (
        "<!doctype html><title>cute cats</title>"
        '<iframe name="out"></iframe>'
        f'<form id="f" method="post" enctype="text/plain" target="out" action="http://127.0.0.1:{hub.ports["smtp"]}/">'
        f"<textarea name=\"x\">{SMTP_IN_A_FORM}</textarea></form>"
        '<script>window.onload = function () { document.getElementById("f").submit(); document.title = "sent"; };</script>'
    ).encode()

    server = serve_page(page)
    try:
        browser.get(f"http://localhost:{server.server_address[1]}/")
        assert browser.title == "sent"
        time.sleep(3)  # the form's POST (into the frame), answered or not
    finally:
        server.shutdown()
        server.server_close()
    assert "pay this invoice" not in " ".join(inbox_subjects(hub))
    assert inbox_subjects(hub) == []
