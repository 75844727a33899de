"""
Text attachments sent from the webmail keep their letters for the
recipient: a browser uploads a text file with no charset, and a text part
without one is US-ASCII (RFC 2046 section 4.1.2), so a UTF-8 file must go
out labelled as such; a forward keeps the charset its attachment had.
What is checked is what the recipient's mail program reads over IMAP.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib

from tests.web_helpers import WebClient


def post_compose(browser: WebClient, fields: dict, files=()) -> None:
    """POST the compose form as Chromium does: multipart/form-data, a file part's type without a charset."""
    boundary = "----WebKitFormBoundaryq1w2e3r4t5y6u7i8"
    body = b""
    for name, value in {"csrf": browser.csrf, **fields}.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for filename, kind, data in files:
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'.encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    sent = browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert sent.status == 303, sent.text


def attachments_read_by(hub, user: str, password: str, uid: int) -> dict:
    """{file name: the text a mail program reads} of the attachments of UID C{uid} in C{user}'s INBOX."""
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login(user, password)
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
    finally:
        imap.logout()
    msg = email.message_from_bytes(data[0][1], policy=email.policy.default)
    return {part.get_filename(): part.get_content() for part in msg.iter_attachments()}


def test_a_utf8_text_file_attached_in_the_browser_reads_right_for_the_recipient(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    files = [
        ("notes.txt", "text/plain", "Café crème, 日本\n".encode()),
        ("plain.txt", "text/plain", b"just ascii\n"),
    ]
    post_compose(browser, {"to": "bob@localhost", "subject": "notes", "body": "see the files"}, files)
    seen = attachments_read_by(hub, "bob", "hungry", 1)
    assert seen == {"notes.txt": "Café crème, 日本\n", "plain.txt": "just ascii\n"}


def test_a_forward_keeps_the_charset_of_a_latin1_text_attachment(hub):
    original = (
        b"From: carol@example.org\r\nTo: alice@localhost\r\nSubject: latin\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe file\r\n"
        b'--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Disposition: attachment; filename="menu.txt"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 cr=E8me\r\n--b--\r\n"
    )
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost"], original)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose?forward=INBOX/1")
    post_compose(browser, {"to": "bob@localhost", "subject": "Fwd: latin", "body": "below", "forward-of": "INBOX/1"})
    assert attachments_read_by(hub, "bob", "hungry", 1) == {"menu.txt": "Café crème"}


def test_mime_version_is_only_in_the_top_level_header(hub):
    # RFC 2045 §4: MIME-Version is a field of the message's own header,
    # not of its body parts (Python's email package put one in each part
    # it made).
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    files = [
        ("notes.txt", "text/plain", b"just ascii\n"),
        ("photo.bin", "application/octet-stream", bytes(range(256))),
    ]
    post_compose(browser, {"to": "bob@localhost", "subject": "parts", "body": "see the files"}, files)
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
    finally:
        imap.logout()
    raw = data[0][1]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["MIME-Version"] == "1.0"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain", "application/octet-stream"]
    assert [p.get_all("MIME-Version") for p in parts] == [None, None, None]
    assert raw.count(b"MIME-Version:") == 1


def test_a_saved_message_attached_in_the_browser_is_sent_not_dropped(hub):
    # Chromium uploads a .eml file as message/rfc822. The form parser took
    # that part apart as a message, its payload read as nothing, and the
    # attachment was dropped without a word: the mail went out without it.
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    inner = b"From: carol@example.org\r\nSubject: the minutes\r\nMIME-Version: 1.0\r\n\r\nMinutes of the meeting.\r\n"
    odd = b"--b\r\nContent-Type: text/plain\r\n\r\nodd\r\n--b--\r\n"
    files = [("minutes.eml", "message/rfc822", inner), ("notes.txt", "text/plain", b"just ascii\n"), ("odd.mime", "multipart/mixed", odd)]
    post_compose(browser, {"to": "bob@localhost", "subject": "fwd", "body": "see the files"}, files)
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
    finally:
        imap.logout()
    msg = email.message_from_bytes(data[0][1], policy=email.policy.default)
    attached = {p.get_filename(): p for p in msg.iter_attachments()}
    assert sorted(attached) == ["minutes.eml", "notes.txt", "odd.mime"]
    # (another composite type is sent as octets: never base64 under its own type, RFC 2045 §6.4)
    assert attached["odd.mime"].get_content_type() == "application/octet-stream"
    assert attached["odd.mime"].get_content() == odd
    assert attached["minutes.eml"].get_content_type() == "message/rfc822"
    carried = attached["minutes.eml"].get_content()
    assert carried["Subject"] == "the minutes"
    assert carried.get_content().rstrip("\r\n") == "Minutes of the meeting."
    # RFC 2046 §5.2.1: 7bit or 8bit, not base64; the lines as they were.
    assert attached["minutes.eml"]["Content-Transfer-Encoding"] in ("7bit", "8bit")
    assert inner in data[0][1] and b"\r\r" not in data[0][1]
