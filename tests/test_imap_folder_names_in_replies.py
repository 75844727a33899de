"""
An IMAP error that names a folder names it as the client spells it
(modified UTF-7, RFC 3501 §5.1.3), not with its non-ASCII letters as "?".
"""

from __future__ import annotations

import imaplib


def test_no_and_already_exists_name_a_non_ascii_folder_in_modified_utf7(hub):
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        assert imap.select('"&ZeVnLIqe-"') == ("NO", [b"[NONEXISTENT] no such mailbox: &ZeVnLIqe-"])  # 日本語
        assert imap.create('"&AOk-t&AOk-"')[0] == "OK"  # été
        typ, data = imap.create('"&AOk-t&AOk-"')
        assert (typ, data) == ("NO", [b"[ALREADYEXISTS] mailbox exists: &AOk-t&AOk-"])
    finally:
        imap.logout()
