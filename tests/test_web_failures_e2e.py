# -*- test-case-name: tests.test_web_failures_e2e -*-
"""
The real hub's web pages on real failures (tests/test_web_failures.py
fails every store call of every route in process): a full disk (a small
tmpfs), a message another mail client deleted meanwhile, addresses that
name nothing. Each is a page in the hub's layout with the right status and
words, never a traceback or a Python repr; and /favicon.ico is served.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
from urllib.parse import quote

from tests.test_e2e_disk_full import Filler, small_disk  # noqa: F401 (a fixture)
from tests.test_web_failures import NEVER_SHOWN
from tests.web_helpers import WebClient

MESSAGE = (
    b"From: Carol <carol@example.org>\r\nTo: alice@localhost\r\nSubject: hello there\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nHi Alice\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nxyz\r\n--b--\r\n"
)


def deliver(hub, count: int = 1) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        for _ in range(count):
            smtp.sendmail("carol@example.org", ["alice@localhost"], MESSAGE)


def signed_in(hub) -> WebClient:
    browser = WebClient(hub)
    assert browser.login("alice", "secret").status == 303
    return browser


def assert_clean_page(response, status: int, words: str) -> None:
    """An error page in the hub's layout: the status, the words, the user's navigation; nothing of Python."""
    assert response.status == status, (response.status, response.text[:3000])
    assert response.header("Content-Type").startswith("text/html"), response.header("Content-Type")
    text = response.text.replace("&#x27;", "'")
    assert f"<h1>{status} " in text and words in text, text[:3000]
    assert 'href="/static/mailhub.css"' in text and "alice@localhost" in text and "Log out" in text
    assert NEVER_SHOWN.search(response.text) is None, response.text[:3000]


def csrf_of(page) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def imap_uids(hub, folder: str) -> list[bytes]:
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select(folder)
        return imap.uid("SEARCH", None, "ALL")[1][0].split()
    finally:
        imap.logout()


def test_webmail_delete_move_and_flag_on_a_full_disk_are_507_pages_that_change_nothing(small_disk, start_hub):
    # Delete and Move were "500 The message could not be moved." in plain
    # text and a critical traceback in the log (compose and the API said 507).
    hub = start_hub(data=small_disk)
    deliver(hub)
    browser = signed_in(hub)
    token = csrf_of(browser.get("/mail/INBOX/1"))
    assert imap_uids(hub, "Archive") == []  # (the first login makes Trash, Archive...)
    filler = Filler(small_disk)
    filler.fill()
    for fields in ({"action": "delete"}, {"action": "move", "target": "Archive"}):
        page = browser.post("/mail/INBOX/1/action", {**fields, "csrf": token})
        assert_clean_page(page, 507, "The server's disk is full")
    assert imap_uids(hub, "INBOX") == [b"1"] and imap_uids(hub, "Trash") == [] and imap_uids(hub, "Archive") == []
    # Room again: the same Delete works.
    filler.leave(10**9)
    assert browser.post("/mail/INBOX/1/action", {"action": "delete", "csrf": token}).status == 303
    assert imap_uids(hub, "INBOX") == [] and len(imap_uids(hub, "Trash")) == 1
    hub.wait_for_log(r"web: POST /mail/INBOX/1/action: insufficient system storage")
    assert "Traceback" not in hub.log


def test_a_message_another_client_deleted_is_a_404_page_on_every_route_of_it(start_hub):
    hub = start_hub()
    deliver(hub, 2)
    browser = signed_in(hub)
    token = csrf_of(browser.get("/mail/INBOX/1"))
    # Another mail program deletes message 1 (IMAP STORE \Deleted, EXPUNGE).
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    imap.select("INBOX")
    imap.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    imap.expunge()
    imap.logout()
    gone = "That message is not here (any more)"
    for path in ("/mail/INBOX/1", "/mail/INBOX/1/anatomy", "/mail/INBOX/1/raw", "/mail/INBOX/1/part/1", "/compose?reply=INBOX/1", "/compose?forward=INBOX/1"):
        assert_clean_page(browser.get(path), 404, gone)
    for fields in ({"action": "delete"}, {"action": "move", "target": "Archive"}, {"action": "flag"}, {"action": "unread"}):
        assert_clean_page(browser.post("/mail/INBOX/1/action", {**fields, "csrf": token}), 404, gone)
    # The page links back to its folder, where message 2 still is.
    page = browser.get("/mail/INBOX/1")
    assert 'href="/mail/INBOX"' in page.text
    assert imap_uids(hub, "INBOX") == [b"2"] and imap_uids(hub, "Trash") == []
    assert "Traceback" not in hub.log


def test_addresses_and_forms_that_name_nothing_are_clear_4xx_pages(start_hub):
    hub = start_hub()
    deliver(hub)
    browser = signed_in(hub)
    token = csrf_of(browser.get("/mail/INBOX/1"))
    pages = {
        "/mail/INBOX/2": "not here",
        "/mail/INBOX/0": "There is no such message",
        "/mail/INBOX/4294967296": "There is no such message",
        "/mail/INBOX/99999999999999999999999999": "There is no such message",
        "/mail/INBOX/x1": "There is no such message",
        "/mail/INBOX/" + "9" * 5000: "There is no such message",  # (int() refuses over 4,300 digits: was a 500)
        "/mail/INBOX/1/part/" + "9" * 5000: "There is no page at this address",
        "/compose?reply=INBOX/" + "9" * 5000: "not here",
        "/mail/INBOX/%C2%B2": "There is no such message",
        "/mail/INBOX/1/part/99": "This message has no part 99",
        "/mail/INBOX/1/part/x": "There is no page at this address",
        "/mail/INBOX/1/nothing": "There is no page at this address",
        "/mail/No%20such": "There is no such folder",
        "/mail/No%20such/1": "There is no such folder",
        "/mail/" + quote("../../etc", safe="") + "/1": "There is no such folder",
        "/mail/%00/1": "There is no such folder",
        "/compose?reply=INBOX/99999999999999999999": "not here",
        "/compose?forward=No%20such/1": "There is no such folder",
        "/console/session/nope": "No such session",
        "/no/such/page": "There is no page at this address",  # (the user's navigation too)
    }
    for path, words in pages.items():
        assert_clean_page(browser.get(path), 404, words)
    assert browser.get("/mail/INBOX?page=" + "9" * 5000).status == 200  # (the last page)
    forms = [
        ("/mail/INBOX/1/action", {"action": "move", "target": "No such"}, 404, "no folder of that name"),
        ("/mail/INBOX/1/action", {"action": "explode"}, 400, "That form asks for nothing this page does"),
        ("/mail/INBOX/7/action", {"action": "delete"}, 404, "not here"),
        ("/mail/INBOX/1/nothing", {"action": "delete"}, 404, "There is no form at this address"),
        ("/mail/INBOX/1/action", {"action": "delete", "csrf": "forged"}, 403, "The form had expired"),
    ]
    for path, fields, status, words in forms:
        assert_clean_page(browser.post(path, {"csrf": token, **fields}), status, words)
    assert imap_uids(hub, "INBOX") == [b"1"]
    assert "Traceback" not in hub.log


def test_favicon_is_served_to_every_page_load_signed_in_or_not(hub):
    browser = WebClient(hub)
    for _ in range(2):
        icon = browser.get("/favicon.ico")
        assert icon.status == 200
        assert icon.header("Content-Type") == "image/vnd.microsoft.icon"
        assert icon.body[:4] == b"\0\0\1\0" and icon.body[22:26] == b"\x89PNG"  # an ICO holding a PNG
        assert "max-age" in icon.header("Cache-Control")
        browser.login("alice", "secret")
    assert '<link rel="icon" href="/favicon.ico"' in browser.get("/mail/INBOX").text
    assert browser.request("HEAD", "/favicon.ico").status == 200


def test_compose_refuses_a_message_over_the_size_limit_as_smtp_does_and_keeps_what_was_typed(start_hub):
    # The webmail sent a 3 MB attachment though --max-message-size said 1 MB
    # (SMTP says 552 for it); the request itself may be up to 64 MiB.
    hub = start_hub("--max-message-size", "1000000")
    browser = signed_in(hub)
    browser.get("/compose")
    boundary = "XyZ"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode() for name, value in (("csrf", browser.csrf), ("to", "bob"), ("subject", "the big file"), ("body", "see attached"))]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + b"z" * 900_000 + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    page = browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert page.status == 413
    assert "Not sent: the message with its attachments would be 1.2 MB, and this server takes messages of at most 976.6 KB" in page.text
    assert 'value="the big file"' in page.text and "see attached" in page.text
    assert NEVER_SHOWN.search(page.text) is None
    assert imap_uids(hub, "Sent") == []
    pop_bob = __import__("poplib").POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop_bob.user("bob")
    pop_bob.pass_("hungry")
    assert pop_bob.stat()[0] == 0
    pop_bob.quit()


def test_forward_takes_the_originals_attachments_along(start_hub):
    # Forward sent the text alone: the attachment (why one forwards) was lost.
    hub = start_hub()
    deliver(hub)
    browser = signed_in(hub)
    form = browser.get("/compose?forward=INBOX/1")
    assert "The forwarded message&#x27;s attachments go with it: a.bin." in form.text or "The forwarded message's attachments go with it: a.bin." in form.text
    assert 'name="forward-of" value="INBOX/1"' in form.text
    sent = browser.post("/compose", {"to": "bob", "subject": "Fwd: hello there", "body": "see below", "forward-of": "INBOX/1"})
    assert sent.status == 303, sent.text
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        arrived = imap.uid("FETCH", "1", "(BODY.PEEK[])")[1][0][1]
    finally:
        imap.logout()
    import email

    message = email.message_from_bytes(arrived)
    files = {p.get_filename(): p.get_payload(decode=True) for p in message.walk() if p.get_filename()}
    assert files == {"a.bin": b"xyz"}
    assert b"see below" in arrived
    # The original gone meanwhile: nothing sent, the form back, and why.
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    imap.select("INBOX")
    imap.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    imap.expunge()
    imap.logout()
    page = browser.post("/compose", {"to": "bob", "subject": "again", "body": "typed text", "forward-of": "INBOX/1"})
    assert page.status == 404 and "the message you are forwarding is not there any more" in page.text and "typed text" in page.text


def test_a_full_quota_is_said_once_on_the_page_and_in_the_log(start_hub):
    # The page said "Your mailbox is full (mailbox full (2.1 KiB of its
    # 3.0 KiB quota used))" and the log "insufficient system storage (...)"
    # around the same words.
    hub = start_hub(users=("alice;quota=3K:secret", "bob:hungry"))
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost"], MESSAGE + (b"x" * 60 + b"\r\n") * 30)
    browser = signed_in(hub)
    browser.get("/compose")
    page = browser.post("/compose", {"to": "bob@localhost", "subject": "long", "body": "y" * 1500})
    text = page.text.replace("&#x27;", "'")
    assert "no copy of it could be kept in your Sent folder" in text, text[:3000]
    assert re.search(r"Your mailbox is full \([\d.]+ KiB of its 3\.0 KiB quota used\)", text), text[:3000]
    assert text.lower().count("mailbox full") == 0 and text.lower().count("mailbox is full") == 1, text[:3000]
    hub.wait_for_log(r"web: POST /compose: insufficient system storage")
    line = [x for x in hub.log.splitlines() if "web: POST /compose:" in x][-1]
    assert line.lower().count("full") == 1, line


def test_the_log_says_a_bare_insufficient_storage_once():
    from twisted_mailhub.errorwords import no_room, said_once
    from twisted_mailhub.quota import QuotaExceeded
    from twisted_mailhub.store.interfaces import InsufficientStorage, storage_error
    import errno

    assert no_room(InsufficientStorage("Insufficient system storage")) == "insufficient system storage"
    assert no_room(storage_error(OSError(errno.ENOSPC, "No space left on device", "/m/tmp/1"))) == "insufficient system storage (the disk is full (/m/tmp/1))"
    assert no_room(QuotaExceeded("a@localhost", 2048, 3072)) == "insufficient system storage (Mailbox full: a@localhost uses 2.0 KiB of 3.0 KiB)"
    assert said_once("cannot write", "Cannot write!") == "cannot write"
    assert said_once("closed", "the data connection was closed") == "the data connection was closed"
    assert said_once("426 Transfer aborted", "the data connection broke") == "426 Transfer aborted (the data connection broke)"


def test_a_message_composed_to_an_account_whose_mailbox_is_full_names_that_account(start_hub):
    # Found by breaker2: alice sent to bob, whose mailbox had no room for
    # the message, and the compose form came back with "Your mailbox is
    # full (2.5 KiB of its 3.0 KiB quota used)": bob's figures, said to be
    # alice's, who then emptied her own Trash for nothing.
    hub = start_hub(users=("alice:secret", "bob;quota=3K:hungry"))
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["bob@localhost"], MESSAGE + (b"x" * 60 + b"\r\n") * 30)
    browser = signed_in(hub)
    browser.get("/compose")
    page = browser.post("/compose", {"to": "bob@localhost", "subject": "long", "body": "y" * 1500})
    text = page.text.replace("&#x27;", "'")
    assert page.status == 507, (page.status, text[:3000])
    assert "Your mailbox" not in text, text[:3000]
    assert re.search(r"The mailbox of bob@localhost is full \([\d.]+ KiB of its 3\.0 KiB quota used\)", text), text[:3000]
    assert "the message was not sent" in text and 'value="bob@localhost"' in text, text[:3000]
    assert imap_uids(hub, "Sent") == []
