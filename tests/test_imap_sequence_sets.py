"""
Sequence sets (RFC 3501 §9: seq-range = seq-number ":" seq-number, and a
seq-number may be "*"): C{*:*} is the last message, for every command that
takes a set. Clients send C{UID FETCH *:* (UID)} to learn the highest UID.
"""

from __future__ import annotations

import imaplib
import smtplib

import pytest


def test_star_colon_star_is_the_last_message_in_every_command(hub):
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        for n in range(3):
            s.sendmail("carol@example.org", ["alice@localhost"], f"Subject: m{n}\r\n\r\nhi\r\n".encode())
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select("INBOX")
        assert imap.uid("FETCH", "*:*", "(UID)") == ("OK", [b"3 (UID 3)"])
        assert imap.fetch("*:*", "(UID)") == ("OK", [b"3 (UID 3)"])
        assert imap.uid("SEARCH", None, "UID", "*:*") == ("OK", [b"3"])
        assert imap.search(None, "*:*,1") == ("OK", [b"1 3"])
        assert imap.store("*:*", "+FLAGS", "(\\Flagged)") == ("OK", [b"3 (FLAGS (\\Flagged \\Recent))"])
        typ, data = imap.copy("*:*", "Archive")
        assert typ == "OK" and b"[COPYUID" in data[0] and data[0].split()[2:4] == [b"3", b"1]"]
        assert imap.uid("MOVE", "*:*", "Trash")[0] == "OK"
        assert imap.uid("SEARCH", None, "ALL") == ("OK", [b"1 2"])
        with pytest.raises(imaplib.IMAP4.error, match=r"Bad message number \"\*:\*:\*\""):
            imap.fetch("*:*:*", "(UID)")
    finally:
        imap.logout()
