"""
Moving mail within an account takes no room (the originals go), so a
mailbox near its quota can still move a big message to Trash or another
folder to free space: IMAP MOVE, RENAME INBOX, webmail's move and delete.
A COPY still needs the room.
"""

from __future__ import annotations

import imaplib
import re
import smtplib

from tests.web_helpers import WebClient

BIG = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 70  # lines of at most 1000 octets (RFC 5321 §4.5.3.1.6)


def fill(hub) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")  # (the first login makes Trash, Archive...)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        s.sendmail("carol@example.org", ["alice@localhost"], BIG)
    imap.select("INBOX")
    return imap


def test_imap_move_of_a_message_bigger_than_the_room_left_works_and_copy_does_not(start_hub):
    hub = start_hub("--quota", "100K")
    imap = fill(hub)
    try:
        typ, data = imap.uid("COPY", "1", "Archive")
        assert typ == "NO" and b"[OVERQUOTA]" in data[0]
        assert imap.uid("MOVE", "1", "Trash")[0] == "OK"
        imap.select("Trash")
        assert imap.uid("SEARCH", None, "ALL") == ("OK", [b"1"])
        assert imap.rename("INBOX", "Old")[0] == "OK"
    finally:
        imap.logout()


def test_webmail_delete_moves_a_big_message_to_trash_near_the_quota(start_hub):
    hub = start_hub("--quota", "100K")
    fill(hub).logout()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    page = browser.get("/mail/INBOX/1")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    moved = browser.post("/mail/INBOX/1/action", {"action": "delete", "csrf": token})
    assert moved.status == 303, moved.text
    assert "big" in browser.get("/mail/Trash").text
    assert "Traceback" not in hub.log
