"""
Webmail on a full disk: mail that arrived (and was given its UID) before
the disk filled is still read. The first page of a browser session makes
the special-use folders (as an IMAP login does); on a full disk that fails
half way (a folder's directories made, its UIDVALIDITY not written), and
every folder page was a 507, where IMAP and POP3 read the same mail. Now
the page lists what exists, a folder that cannot be read now without its
counts (the log says why), and the folders are made on a later page, once
there is room.
"""

from __future__ import annotations

import base64
import smtplib
import urllib.request

from tests.test_e2e_disk_full import Filler, small_disk  # noqa: F401 (a fixture)
from tests.web_helpers import WebClient


def test_mail_that_came_before_the_disk_filled_is_read_on_the_web(small_disk, start_hub):  # noqa: F811
    hub = start_hub(data=small_disk)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("carol@example.org", ["alice@localhost"], b"From: carol@example.org\r\nSubject: before the disk filled\r\n\r\nstill here\r\n")
    # The INBOX read once (its UIDs given and durable), as any mail program does.
    request = urllib.request.Request(f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/folders/INBOX/messages")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"alice@localhost:secret").decode())
    assert urllib.request.urlopen(request, timeout=10).status == 200
    filler = Filler(small_disk)
    filler.fill()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = browser.get("/mail/INBOX")
    assert listing.status == 200, listing.text
    assert "before the disk filled" in listing.text and "Trash" not in listing.text
    page = browser.get("/mail/INBOX/1")
    assert page.status == 200 and "still here" in page.text
    assert "special-use folders not made now: the disk is full" in hub.log
    # Room again: a later page makes them.
    filler.leave(512 * 1024)
    assert "Trash" in browser.get("/mail/INBOX").text
