"""
Numbers typed with digits other than ASCII's ("²", "١", "５": Python's
C{str.isdigit} says yes to all of them, C{int} refuses "²") are syntax
errors the client is told about, never a server error.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import urllib.error
import urllib.request

import pytest

from tests.web_helpers import WebClient


def smtp_reply(sock: socket.socket, line: str) -> bytes:
    sock.sendall(line.encode("utf-8") + b"\r\n")
    return sock.recv(4096)


@pytest.mark.parametrize("digits", ["²", "١", "５"])
def test_smtp_mail_size_in_non_ascii_digits_is_a_501(hub, digits):
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as sock:
        sock.recv(1024)
        smtp_reply(sock, "EHLO client.example")
        assert smtp_reply(sock, f"MAIL FROM:<a@example.org> SIZE={digits}").startswith(b"501 5.5.4 Syntax: SIZE=<octets>")
        assert smtp_reply(sock, "MAIL FROM:<a@example.org> SIZE=10").startswith(b"250 ")
    assert "Traceback" not in hub.log


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/message/%C2%B2",
        "/api/v1/accounts/me/folders/INBOX/messages/%C2%B2",
        "/api/v1/accounts/me/folders/INBOX/messages/1/parts/%C2%B2",
        "/api/v1/accounts/me/folders/INBOX/wait?timeout=0&after_uid=%C2%B2",
    ],
)
def test_api_ids_in_non_ascii_digits_are_a_400(hub, path):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        s.sendmail("carol@example.org", ["alice@localhost"], b"Subject: one\r\n\r\nhi\r\n")
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}{path}",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert "Traceback" not in hub.log


def test_webmail_pages_in_non_ascii_digits_are_not_found_or_a_400(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        s.sendmail("carol@example.org", ["alice@localhost"], b"Subject: one\r\n\r\nhi\r\n")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    for path in ("/mail/INBOX/%C2%B2", "/mail/INBOX/1/part/%C2%B2", "/mail/INBOX/%C2%B2/anatomy"):
        assert browser.get(path).status == 404, path
    # (int() would read '²' as 2: a page number is ASCII digits or refused,
    # with the parameter named, as every numeric parameter of the web face)
    listing = browser.get("/mail/INBOX?page=%C2%B2")
    assert listing.status == 400 and "page wants a whole number from 1 to 1" in listing.text
    assert "page 1 of 1" in browser.get("/mail/INBOX?page=1").text
    assert "Traceback" not in hub.log
