# -*- test-case-name: tests.test_e2e_read_only_store -*-
"""
The real hub with a Maildir it may not write (here a read-only bind
mount of alice's Maildir, as a backup restored read-only; a folder with
other owners is EACCES, tests/test_maildir_half_made.py): every folder is
read as it is (a whole one, and one an older version left half made),
the log says once per folder why nothing in it can be changed, and
every write gets its protocol's refusal that retrying will not cure:
IMAP NO [NOPERM] (RFC 5530 §3), POP3 -ERR [SYS/PERM] (RFC 3206 §4),
SMTP 450 4.2.0; no traceback, and the session goes on.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess

import pytest


@pytest.fixture
def read_only():
    """C{make(path)}: bind-mounts C{path} read-only on itself; unmounted afterwards. Needs root."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail("no mount(8)")
        pytest.skip("a read-only bind mount needs root and mount(8)")
    mounted = []

    def make(path: str) -> None:
        subprocess.run(["mount", "--bind", path, path], check=True)
        mounted.append(path)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], capture_output=True)


def test_a_maildir_the_hub_may_not_write_is_read_and_every_write_is_refused_as_permanent(start_hub, read_only):
    hub = start_hub()
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10)
    s.sendmail("x@ext.test", ["alice@localhost"], b"Subject: kept\r\n\r\nbody\r\n")
    s.quit()
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    assert imap.create("Whole")[0] == "OK"
    assert imap.append("Whole", None, None, b"Subject: whole\r\n\r\nw\r\n")[0] == "OK"
    imap.logout()
    inbox = hub.maildir("alice@localhost")
    half = os.path.join(inbox, ".Half", "cur")
    os.makedirs(half)
    old = b"Subject: left by an older version\r\n\r\nhalf\r\n"
    with open(os.path.join(half, f"1600000000.M1P1Q1.old,S={len(old)}:2,S"), "wb") as f:
        f.write(old)
    hub.stop(remove_data=False)
    read_only(inbox)
    hub.start()
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    for name, subject in (("INBOX", b"kept"), ("Whole", b"whole"), ("Half", b"left by an older version")):
        # Read as it is (before: Half was NO [UNAVAILABLE] at SELECT).
        got = imap.select(name)
        assert got == ("OK", [b"1"]), (name, got, hub.log[-3000:])
        typ, data = imap.fetch("1", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"Subject: " + subject in data[0][1], data
        # Every write: NO [NOPERM] (before: BAD [SERVERBUG] ... see the server log).
        for command, args in (("STORE", ("1", "+FLAGS", "(\\Flagged)")), ("STORE", ("1", "+FLAGS", "(Junk)"))):
            typ, data = getattr(imap, command.lower())(*args)
            assert typ == "NO" and data[0].startswith(b"[NOPERM] STORE failed: the server may not write this mailbox (a read-only file system)"), (name, data)
        typ, data = imap.append(name, None, None, b"Subject: new\r\n\r\nn\r\n")
        assert typ == "NO" and data[0].startswith(b"[NOPERM] APPEND failed: the server may not write this mailbox"), data
        typ, data = imap.copy("1", name)
        assert typ == "NO" and data[0].startswith(b"[NOPERM]"), data
        assert imap.noop()[0] == "OK"
    typ, data = imap.create("Fresh")
    assert typ == "NO" and data[0].startswith(b"[NOPERM]"), data
    imap.logout()
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("alice")
    pop.pass_("secret")
    assert pop.stat()[0] == 1
    pop.dele(1)
    with pytest.raises(poplib.error_proto) as refused:
        pop.quit()
    assert refused.value.args[0].startswith(b"-ERR [SYS/PERM] some deleted messages not removed: 1: the server may not write this mailbox (a read-only file system)"), refused.value
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        s.sendmail("x@ext.test", ["alice@localhost"], b"Subject: two\r\n\r\nbody\r\n")
    assert refused.value.smtp_code == 450 and refused.value.smtp_error.startswith(b"4.2.0 Mailbox unavailable: the server may not write it (a read-only file system)"), refused.value
    s.quit()
    # The JSON API: 403 with the reason (before: 500 and a traceback).
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        hub.api("alice", "PUT", "/accounts/me/folders/INBOX/messages/1/flags", {"flags": ["\\Flagged"]})
    assert refused.value.code == 403 and "may not write this mailbox (a read-only file system)" in str(refused.value), refused.value
    log = hub.log
    assert "Traceback" not in log
    for folder in ("alice:", "alice/.Whole:", "alice/.Half:"):
        assert sum(1 for line in log.splitlines() if folder + " the hub may not write this folder" in line) == 1, (folder, log[-3000:])
    assert len(os.listdir(os.path.join(inbox, "cur")) + os.listdir(os.path.join(inbox, "new"))) == 1  # (nothing removed or added)
