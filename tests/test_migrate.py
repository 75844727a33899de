"""
C{mailhub-admin migrate --from DATA --to postgresql:DSN}: a hub's Maildir
data moved into PostgreSQL, then served by a hub on PostgreSQL to the same
clients without a resync: the same UIDVALIDITY, UIDs, flags, keywords,
subscriptions, POP3 UIDLs and FTP files.
"""

from __future__ import annotations

import imaplib
import io
import os
import poplib
import re
import smtplib
import subprocess
import sys

from tests.hubprocess import ROOT
from tests.test_e2e_ftp import login as ftp_login
from tests.test_e2e_ftp import retr


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT),
    )


def imap_state(hub) -> dict:
    """What an IMAP client keeps between sessions, per folder."""
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    state = {"lsub": sorted(c.lsub()[1])}
    for folder in ("INBOX", "Work"):
        c.select(folder, readonly=True)
        validity = c.response("UIDVALIDITY")[1]
        uidnext = c.status(folder, "(UIDNEXT)")[1]
        typ, data = c.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[])")
        messages = sorted(
            # (\Recent belongs to a session, not to the message: left out)
            (int(re.search(rb"UID (\d+)", meta).group(1)), sorted(set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).split()) - {b"\\Recent"}), body)
            for meta, body in (item for item in data if isinstance(item, tuple))
        )
        state[folder] = (validity, uidnext, messages)
    c.logout()
    return state


def pop3_uidls(hub) -> list[bytes]:
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("alice")
    p.pass_("secret")
    uidls = p.uidl()[1]
    p.quit()
    return uidls


def test_migrated_hub_serves_the_same_uids_flags_uidls_and_files(start_hub, pg_dsn, tmp_path):
    data = str(tmp_path / "old")
    old = start_hub(data=data)
    with smtplib.SMTP("127.0.0.1", old.ports["smtp"]) as s:
        for n in range(5):
            s.sendmail("bob@localhost", ["alice@localhost"], f"Subject: note {n}\r\n\r\nbody {n}\r\n".encode())
    c = imaplib.IMAP4("127.0.0.1", old.ports["imap"])
    c.login("alice", "secret")
    c.create("Work")
    c.subscribe("Work")
    c.append("Work", r"(\Flagged $Project)", None, b"Subject: filed\r\n\r\nkept\r\n")
    c.select("INBOX")
    c.uid("STORE", "2", "+FLAGS", r"(\Seen $Label1)")
    c.uid("STORE", "4", "+FLAGS", r"(\Answered)")
    c.uid("STORE", "3", "+FLAGS", r"(\Deleted)")
    c.expunge()  # UIDs 1 2 4 5 stay: a gap the copy must keep
    c.logout()
    f = ftp_login(old)
    f.mkd("docs")
    f.storbinary("STOR docs/report.bin", io.BytesIO(bytes(range(256)) * 1000))
    f.quit()
    before, uidls = imap_state(old), pop3_uidls(old)
    assert [uid for uid, _, _ in before["INBOX"][2]] == [1, 2, 4, 5]
    old.stop()

    done = admin("migrate", "--from", data, "--to", f"postgresql:{pg_dsn}")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^alice@localhost: \d+ folder\(s\), 5 message\(s\)", done.stdout, re.M)
    assert "FTP files: 1 file(s)" in done.stdout

    new = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")
    assert imap_state(new) == before
    assert pop3_uidls(new) == uidls
    g = ftp_login(new)
    assert retr(g, "docs/report.bin") == bytes(range(256)) * 1000
    g.quit()
    # new mail goes on from the old UIDNEXT
    with smtplib.SMTP("127.0.0.1", new.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: after\r\n\r\nnew\r\n")
    c = imaplib.IMAP4("127.0.0.1", new.ports["imap"])
    c.login("alice", "secret")
    c.select("INBOX")
    assert c.uid("SEARCH", "ALL")[1] == [b"1 2 4 5 6"]
    c.logout()
    # a second run leaves the copied account alone
    again = admin("migrate", "--from", data, "--to", f"postgresql:{pg_dsn}")
    assert "alice@localhost: already has mail in the database; left alone" in again.stdout


def test_migrate_says_what_is_wrong_in_one_line(tmp_path, pg_dsn):
    missing = admin("migrate", "--from", str(tmp_path / "none"), "--to", f"postgresql:{pg_dsn}")
    assert missing.returncode == 1
    assert "not a hub's data folder" in missing.stderr
    (tmp_path / "d" / "mail").mkdir(parents=True)
    wrong = admin("migrate", "--from", str(tmp_path / "d"), "--to", "mysql:x")
    assert wrong.returncode == 2 and "expected postgresql:DSN" in wrong.stderr
    down = admin("migrate", "--from", str(tmp_path / "d"), "--to", "postgresql:postgresql://x@127.0.0.1:1/none")
    assert down.returncode == 1 and down.stderr.startswith("mailhub-admin migrate: cannot reach the database")
    assert "Traceback" not in down.stderr
    # The URL alone, without the "postgresql:" prefix the hub's options
    # use, is taken as the URL it is (not libpq's 'missing "="').
    bare = admin("migrate", "--from", str(tmp_path / "d"), "--to", "postgresql://x@127.0.0.1:1/none")
    assert bare.returncode == 1 and bare.stderr.startswith("mailhub-admin migrate: cannot reach the database"), bare.stderr
    assert 'missing "="' not in bare.stderr


def condstore_state(hub, folders=("INBOX", "Work")) -> dict:
    """Each folder's HIGHESTMODSEQ as a CONDSTORE client (RFC 7162) keeps it."""
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    c._simple_command("ENABLE", "CONDSTORE")
    highest = {}
    for folder in folders:
        c.select(folder, readonly=True)
        highest[folder] = int(c.response("HIGHESTMODSEQ")[1][0])
    c.logout()
    return highest


def test_migrated_folders_never_show_a_lower_highestmodseq(start_hub, pg_dsn, tmp_path):
    # RFC 7162 §3.1.2.1: a folder's HIGHESTMODSEQ never goes down while its
    # UIDVALIDITY stays. A client that kept the old hub's value asks
    # CHANGEDSINCE it; a lower one on the new hub hid every flag change made
    # there until the count climbed past it (an upgraded hub's resync).
    data = str(tmp_path / "old")
    old = start_hub(data=data)
    with smtplib.SMTP("127.0.0.1", old.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: one\r\n\r\nbody\r\n")
    c = imaplib.IMAP4("127.0.0.1", old.ports["imap"])
    c.login("alice", "secret")
    c.create("Work")
    c.append("Work", None, None, b"Subject: filed\r\n\r\nkept\r\n")
    c.create("Empty")
    c.logout()
    old.stop()
    # A Maildir folder read again shows a HIGHESTMODSEQ of at least the
    # time it was read (its messages keep theirs): what a client saw last.
    again = start_hub(data=data)
    seen = condstore_state(again, ("INBOX", "Work", "Empty"))
    again.stop()

    done = admin("migrate", "--from", data, "--to", f"postgresql:{pg_dsn}")
    assert done.returncode == 0, done.stderr
    new = start_hub("--store", f"postgresql:{pg_dsn}")
    now = condstore_state(new, ("INBOX", "Work", "Empty"))
    for folder in seen:
        assert now[folder] >= seen[folder], (folder, seen[folder], now[folder])
    # the client's resync finds a change made on the new hub
    c = imaplib.IMAP4("127.0.0.1", new.ports["imap"])
    c.login("alice", "secret")
    c._simple_command("ENABLE", "CONDSTORE")
    for folder in ("INBOX", "Work"):
        c.select(folder)
        c.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
        typ, data = c.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {seen[folder]})")
        assert typ == "OK" and any(b"\\Flagged" in item for item in data if item), (folder, data)
    c.logout()
