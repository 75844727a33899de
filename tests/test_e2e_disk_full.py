# -*- test-case-name: tests.test_e2e_disk_full -*-
"""
The real hub on a full disk (a small tmpfs as its data folder): every
protocol answers a full disk with its own temporary-failure reply, logs
one line and no traceback, and never keeps a copy it did not acknowledge
(issue 8 items 13-15).
"""

from __future__ import annotations

import contextlib
import errno
import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess

import pytest

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards. Needs root (mount(8))."""
    path = tmp_path / "disk"
    path.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a small tmpfs needs root"
    elif shutil.which("mount") is None:
        why = "no mount(8)"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            why = f"cannot mount a tmpfs here: {done.stderr.strip()}"
    if why:
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(why)
        pytest.skip(why)
    yield str(path)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Filler:
    """Takes the free space of a filesystem, and gives some back."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "filler")

    def fill(self) -> None:
        chunk = b"\0" * 65536
        with open(self.path, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
        # And the last few pages that a 64 KiB write could not take.
        with open(self.path, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass

    def leave(self, free: int) -> None:
        """Give back C{free} octets (rounded to pages)."""
        size = os.path.getsize(self.path)
        os.truncate(self.path, max(0, size - free))


@contextlib.contextmanager
def full_disk(directory: str):
    """
    With the filesystem of C{directory} (a L{small_disk}) full: no free
    block (a L{Filler} takes them) and no free inode (it is remounted
    with as many as are in use); both given back on leaving.
    """
    filler = Filler(directory)
    filler.fill()
    st = os.statvfs(directory)
    subprocess.run(["mount", "-o", f"remount,nr_inodes={st.f_files - st.f_ffree}", directory], check=True)
    try:
        yield filler
    finally:
        subprocess.run(["mount", "-o", "remount,nr_inodes=100000", directory], check=True)
        os.unlink(filler.path)


def message(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def inbox_count(hub, user, password) -> int:
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user(user)
    pop.pass_(password)
    count = pop.stat()[0]
    pop.quit()
    return count


def test_full_disk_gets_each_protocols_temporary_failure_and_keeps_no_unacknowledged_copy(small_disk, start_hub):
    hub = start_hub(data=small_disk, users=("alice:secret", "bob:hungry", "carol:sesame"))
    # Both maildrops exist before the disk fills.
    assert inbox_count(hub, "alice", "secret") == 0
    assert inbox_count(hub, "bob", "hungry") == 0
    filler = Filler(small_disk)
    filler.fill()

    # SMTP, room for no copy: 452 (RFC 3463 X.3.1), the session goes on.
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("judy@jbc.test", ["alice@localhost"], message(20_000))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        assert smtp.noop()[0] == 250

    # POP3: a first login would write the maildrop's UID list; it cannot,
    # so the maildrop is read as it is (empty), its list written later.
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("carol")
    assert pop.pass_("sesame").startswith(b"+OK")
    assert pop.stat() == (0, 0)
    pop.quit()

    # Room for one copy of two: 452 and no copy kept (the retry would duplicate it).
    filler.leave(300_000)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("judy@jbc.test", ["alice@localhost", "bob@localhost"], message(200_000))
        assert refused.value.smtp_code == 452
    assert inbox_count(hub, "alice", "secret") == 0
    assert inbox_count(hub, "bob", "hungry") == 0

    # IMAP APPEND too big for what is left: NO [UNAVAILABLE] (RFC 5530),
    # as CREATE and SELECT say it: a full disk is not the user's quota
    # ([OVERQUOTA], RFC 9051 §7.1).
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    status, data = imap.append("INBOX", None, None, message(600_000))
    assert status == "NO" and data[0] == b"[UNAVAILABLE] APPEND failed: the server's disk is full; try again later; message not stored", data
    assert imap.select("INBOX") == ("OK", [b"0"])
    imap.logout()

    # Room again: the same message goes through, one copy each.
    os.unlink(filler.path)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail("judy@jbc.test", ["alice@localhost", "bob@localhost"], message(200_000))
    assert inbox_count(hub, "alice", "secret") == 1
    assert inbox_count(hub, "bob", "hungry") == 1

    hub.wait_for_log(r"APPEND not stored: insufficient system storage")
    log = hub.log
    assert "Traceback" not in log
    assert log.lower().count("insufficient system storage") == 3, log
    # Nothing half-written left behind.
    assert os.listdir(os.path.join(hub.maildir("alice@localhost"), "tmp")) == []
    assert os.listdir(os.path.join(hub.maildir("alice@localhost"), "cur")) == []


def test_ftp_upload_that_fills_the_disk_leaves_nothing_behind(small_disk, start_hub):
    import ftplib
    import io

    hub = start_hub(data=small_disk)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    ftp.login("alice", "secret")
    home = os.path.join(small_disk, "ftp", "localhost", "alice")
    filler = Filler(small_disk)
    filler.fill()
    filler.leave(500_000)
    free_before = os.statvfs(small_disk).f_bavail
    with pytest.raises(ftplib.error_temp, match="^452"):
        try:
            ftp.storbinary("STOR big.bin", io.BytesIO(b"z" * MiB))
        except (ConnectionResetError, BrokenPipeError):
            # The server closed the data connection at the write error while
            # the client was still sending (a race on a busy machine): the
            # 452 is still waiting on the control connection.
            ftp.voidresp()
    # Neither under its name nor hidden: the space is free again.
    assert ftp.nlst() == []
    assert os.listdir(home) == []
    assert os.statvfs(small_disk).f_bavail == free_before
    # And a file that fits goes through on the same session.
    ftp.storbinary("STOR small.bin", io.BytesIO(b"s" * 1000))
    assert ftp.nlst() == ["small.bin"]
    ftp.quit()


def test_api_upload_that_fills_the_disk_is_a_507_and_leaves_nothing_behind(small_disk, start_hub):
    import json
    import urllib.error
    import urllib.request
    import base64

    hub = start_hub(data=small_disk)
    home = os.path.join(small_disk, "ftp", "localhost", "alice")
    filler = Filler(small_disk)
    filler.fill()
    filler.leave(500_000)
    free_before = os.statvfs(small_disk).f_bavail
    auth = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
    request = urllib.request.Request(f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/files/big.bin", data=b"z" * MiB, method="PUT", headers=auth)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 507
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "insufficient_storage"
    assert "nothing was stored" in error["message"]
    # Neither under its name nor as a hidden partial file: the space is free again.
    assert os.listdir(home) == []
    assert os.statvfs(small_disk).f_bavail == free_before
    # A file that fits goes through.
    small = urllib.request.Request(request.full_url.replace("big.bin", "small.bin"), data=b"s" * 1000, method="PUT", headers=auth)
    with urllib.request.urlopen(small, timeout=30) as reply:
        assert reply.status == 201
    assert os.listdir(home) == ["small.bin"]
    hub.wait_for_log(r"API upload not stored")
    assert "Traceback" not in hub.log


def test_imap_on_a_disk_full_before_a_folder_was_first_opened_reads_it_refuses_writes_and_goes_on(small_disk, start_hub):
    # Opening a folder the first time writes its UID list. On a full disk
    # APPEND got "BAD [SERVERBUG]" with a traceback in the log, COPY and
    # GETQUOTAROOT too; then SELECT was NO [UNAVAILABLE]. Now the folder
    # is read as it is (its list written by the first write with room).
    hub = start_hub(data=small_disk)
    filler = Filler(small_disk)
    filler.fill()
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    status, data = imap.append("INBOX", None, None, b"Subject: x\r\n\r\nhello\r\n")
    assert status == "NO" and data[0].startswith(b"[UNAVAILABLE]") and b"disk is full" in data[0], data
    assert imap.select("INBOX") == ("OK", [b"0"])
    typ, data = imap._simple_command("GETQUOTAROOT", "INBOX")
    assert typ == "OK", data
    assert imap.noop()[0] == "OK"
    # Room again: the same session appends and selects.
    os.unlink(filler.path)
    status, data = imap.append("INBOX", None, None, b"Subject: x\r\n\r\nhello\r\n")
    assert status == "OK", data
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    assert "Traceback" not in hub.log
    assert "Unhandled" not in hub.log


def test_sftp_upload_that_fills_the_disk_leaves_nothing_behind(small_disk, start_hub):
    # After a WRITE failed on the full disk, the client's CLOSE put what
    # had been written (0 bytes here) in place under the file's name.
    paramiko = pytest.importorskip("paramiko")
    hub = start_hub(data=small_disk)
    home = os.path.join(small_disk, "ftp", "localhost", "alice")
    transport = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    transport.connect(username="alice", password="secret")
    sftp = paramiko.SFTPClient.from_transport(transport)
    filler = Filler(small_disk)
    filler.fill()
    filler.leave(500_000)
    free_before = os.statvfs(small_disk).f_bavail
    f = sftp.open("big.bin", "wb")
    f.set_pipelined(False)
    with pytest.raises(OSError) as refused:
        for _ in range(16):
            f.write(b"z" * 65536)
    assert "no space left on the server's disk" in str(refused.value)
    f.close()  # paramiko drops CLOSE's error status; the listing below shows the outcome
    # Neither under its name nor hidden: the space is free again.
    assert sftp.listdir(".") == []
    assert os.listdir(home) == []
    assert os.statvfs(small_disk).f_bavail == free_before
    # And a file that fits goes through on the same session.
    with sftp.open("small.bin", "wb") as g:
        g.write(b"s" * 1000)
    assert sftp.listdir(".") == ["small.bin"]
    transport.close()
    assert "Traceback" not in hub.log


def test_relayed_mail_on_a_full_disk_is_452_and_nothing_stays_in_the_queue(small_disk, start_hub):
    # Queueing for another domain was "451 4.3.0 local error in processing"
    # with a traceback (the write's error came wrapped in a FirstError).
    import ssl

    hub = start_hub("--mx-override", "*=127.0.0.1:9", data=small_disk)
    queue = os.path.join(small_disk, "queue")
    before = sorted(os.listdir(queue))
    filler = Filler(small_disk)
    filler.fill()
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.login("alice", "secret")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@localhost", ["someone@example.test"], message(20_000))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
        assert smtp.noop()[0] == 250
    assert sorted(os.listdir(queue)) == before
    hub.wait_for_log(r"insufficient system storage")
    assert "Traceback" not in hub.log


def test_webmail_compose_on_a_full_disk_says_so_without_a_traceback(small_disk, start_hub):
    # It was a bare "500 The message could not be sent" and a critical
    # traceback in the log.
    from tests.web_helpers import WebClient

    hub = start_hub(data=small_disk)
    browser = WebClient(hub)
    assert browser.login("alice", "secret").status == 303
    browser.get("/compose")
    filler = Filler(small_disk)
    filler.fill()
    page = browser.post("/compose", {"to": "bob@localhost", "subject": "full", "body": "x" * 1000})
    assert page.status == 507
    assert "The server&#x27;s disk is full: the message was not sent" in page.text or "The server's disk is full: the message was not sent" in page.text
    # The form comes back as typed: nothing the writer typed is lost.
    assert 'value="bob@localhost"' in page.text and 'value="full"' in page.text and "x" * 1000 in page.text
    hub.wait_for_log(r"web: POST /compose: insufficient system storage")
    assert "Traceback" not in hub.log


def test_webmail_and_api_on_a_disk_full_before_the_inbox_was_first_opened_read_it(small_disk, start_hub):
    # Opening a folder the first time writes its UID list: /mail/INBOX and
    # the API's folder listing were a 500 page and a critical traceback, then 507.
    import base64
    import json
    import urllib.request

    from tests.web_helpers import WebClient

    hub = start_hub(data=small_disk)
    browser = WebClient(hub)
    assert browser.login("alice", "secret").status == 303
    filler = Filler(small_disk)
    filler.fill()
    # Read as it is (its UID list written by the first write with room):
    # before, a 507 page and a 507 answer.
    page = browser.get("/mail/INBOX")
    assert page.status == 200, page.status
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/folders",
        headers={"Authorization": "Basic " + base64.b64encode(b"bob:hungry").decode()},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert json.loads(reply.read())["folders"][0]["name"] == "INBOX"
    # Room again: both work.
    os.unlink(filler.path)
    assert browser.get("/mail/INBOX").status == 200
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert json.loads(reply.read())["folders"][0]["name"] == "INBOX"
    assert "Traceback" not in hub.log


def test_ftp_mkd_on_a_full_disk_is_452_not_a_quota_552(small_disk, start_hub):
    # RFC 959 §4.2: 452 is "insufficient storage space" (the server's,
    # temporary), 552 "exceeded storage allocation" (the account's quota).
    # MKD on a full disk said 552 while STOR said 452. A directory takes
    # an inode, not a block, on tmpfs: the inodes are what is used up.
    import ftplib

    hub = start_hub(data=small_disk)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    ftp.login("alice", "secret")
    ftp.mkd("room")  # (the account's folder exists before the disk is full)
    st = os.statvfs(small_disk)
    subprocess.run(["mount", "-o", f"remount,nr_inodes={st.f_files - st.f_ffree + 300}", small_disk], check=True)
    taken = os.path.join(small_disk, "inodes")
    os.mkdir(taken)
    n = 0
    try:
        while True:
            open(os.path.join(taken, str(n)), "w").close()
            n += 1
    except OSError as e:
        assert e.errno == errno.ENOSPC
    with pytest.raises(ftplib.error_temp) as refused:
        ftp.mkd("archive")
    assert str(refused.value).startswith("452 "), refused.value
    assert ftp.nlst() == ["room"]
    shutil.rmtree(taken)
    assert ftp.mkd("archive") == "/archive"
    ftp.quit()
    assert "Traceback" not in hub.log


def test_imap_create_on_a_full_disk_leaves_no_half_made_folder(small_disk, start_hub):
    # A CREATE cut by a full disk left the folder's directories without a
    # UID list (listed by LIST; reading it then needed a write) and an
    # empty mailhub-uidvalidity.tmp in the account's folder.
    hub = start_hub(data=small_disk)
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    assert imap.select("INBOX")[0] == "OK"
    account = hub.maildir("alice@localhost")
    before = sorted(os.listdir(account))
    filler = Filler(small_disk)
    filler.fill()
    status, data = imap.create("Projects/2026")
    assert status == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
    assert sorted(os.listdir(account)) == before
    status, listed = imap.list()
    assert status == "OK" and not any(b"Projects" in line for line in listed), listed
    os.unlink(filler.path)
    assert imap.create("Projects/2026")[0] == "OK"
    assert imap.select("Projects/2026") == ("OK", [b"0"])
    imap.logout()
    assert "Traceback" not in hub.log


def test_a_half_made_folder_is_read_on_a_full_disk_and_repaired_at_the_first_write(small_disk, start_hub):
    # Folders an older version left half made: INBOX with cur/ only (no
    # new/, no tmp/, no UID list) and ".Old" the same. On a full disk (no
    # block, no inode: not even new/ can be made) they could not be read,
    # since reading them first wrote their UID list: IMAP answered NO
    # [UNAVAILABLE], POP3 -ERR [SYS/TEMP], the web 507. Dovecot reads such
    # a folder (its index in memory) and writes it later.
    from tests.web_helpers import WebClient

    hub = start_hub(data=small_disk)
    inbox = hub.maildir("alice@localhost")
    message = b"From: old@example.org\r\nSubject: left by an older version\r\n\r\nstill here\r\n"
    for folder in (inbox, os.path.join(inbox, ".Old")):
        os.makedirs(os.path.join(folder, "cur"))
        with open(os.path.join(folder, "cur", f"1600000000.M1P1Q1.old,S={len(message)}:2,S"), "wb") as f:
            f.write(message)
    with full_disk(small_disk):
        imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
        imap.login("alice", "secret")
        assert imap.select("INBOX", readonly=True) == ("OK", [b"1"]), hub.log[-3000:]  # (before: NO [UNAVAILABLE])
        typ, data = imap.fetch("1", "(UID FLAGS BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == message and b"UID 1 " in data[0][0] and b"\\Seen" in data[0][0], data
        validity = imap.response("UIDVALIDITY")
        assert imap.select("Old", readonly=True) == ("OK", [b"1"])
        assert imap.status("Old", "(MESSAGES)") == ("OK", [b'"Old" (MESSAGES 1)'])
        # Read-write too: \Seen and \Flagged are renames, which need no room.
        assert imap.select("Old") == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY[])")
        assert typ == "OK" and data[0][1] == message, data
        assert imap.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        assert pop.stat() == (1, len(message))
        assert b"\r\n".join(pop.retr(1)[1]) + b"\r\n" == message
        # A deletion is a write: refused while the disk is full, the message kept.
        pop.dele(1)
        with pytest.raises(poplib.error_proto) as refused:
            pop.quit()
        assert refused.value.args[0] == b"-ERR [SYS/TEMP] some deleted messages not removed: 1"
        browser = WebClient(hub)
        assert browser.login("alice", "secret").status == 303
        page = browser.get("/mail/INBOX")
        assert page.status == 200 and "left by an older version" in page.text, page.status
        assert not os.path.exists(os.path.join(inbox, "mailhub-uidlist"))  # (nothing could be written)
    # Room again: the first write repairs the folder, with the UIDs shown.
    status, data = imap.append("Old", None, None, b"Subject: new\r\n\r\nafter the repair\r\n")
    assert status == "OK", data
    assert imap.select("Old", readonly=True) == ("OK", [b"2"])
    typ, data = imap.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [d[0].split(b" BODY")[0] for d in data if isinstance(d, tuple)] == [b"1 (UID 1", b"2 (UID 2"], data
    typ, data = imap.fetch("1", "(FLAGS)")
    assert b"\\Flagged" in data[0] and b"\\Seen" in data[0], data
    for folder in (os.path.join(inbox, ".Old"),):
        assert sorted(n for n in os.listdir(folder) if n in ("cur", "new", "tmp", "mailhub-uidlist")) == ["cur", "mailhub-uidlist", "new", "tmp"]
    imap.response("UIDVALIDITY")  # (the Old folder's, dropped)
    assert imap.select("INBOX") == ("OK", [b"1"])
    # The UIDVALIDITY the read showed is the one the repair wrote.
    assert imap.response("UIDVALIDITY")[1][-1] == validity[1][-1], validity
    imap.logout()
    assert "Traceback" not in hub.log


def test_under_workers_a_half_made_folder_is_read_alike_on_a_full_disk_and_repaired_once(small_disk, start_hub):
    # The same under --workers 2: before, every worker failed the load
    # (the folder lock file could not be made): EXAMINE NO [UNAVAILABLE].
    # Now each worker reads it as it is with the same UIDVALIDITY and UIDs,
    # and the first write with room repairs it once.
    hub = start_hub("--workers", "2", data=small_disk)
    inbox = hub.maildir("alice@localhost")
    message = b"From: old@example.org\r\nSubject: left by an older version\r\n\r\nstill here\r\n"
    os.makedirs(os.path.join(inbox, "cur"))
    for n in (1, 2):
        with open(os.path.join(inbox, "cur", f"160000000{n}.M{n}P1Q{n}.old,S={len(message)}:2,S"), "wb") as f:
            f.write(message)
    seen = set()
    with full_disk(small_disk):
        # Several sessions: the kernel spreads them over both workers.
        for _ in range(6):
            imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
            imap.login("alice", "secret")
            assert imap.select("INBOX", readonly=True) == ("OK", [b"2"]), hub.log[-3000:]
            typ, data = imap.fetch("1:*", "(UID)")
            seen.add((imap.response("UIDVALIDITY")[1][-1], tuple(data)))
            assert imap.append("INBOX", None, None, b"Subject: x\r\n\r\ny\r\n")[0] == "NO"
            imap.logout()
        assert len(seen) == 1, seen  # (one UIDVALIDITY, the same UIDs, in every worker)
        pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        assert pop.stat() == (2, 2 * len(message))
        pop.quit()
        assert not os.path.exists(os.path.join(inbox, "mailhub-uidlist"))
    appended = set()
    for n in range(4):
        imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
        imap.login("alice", "secret")
        typ, data = imap.append("INBOX", None, None, b"Subject: new %d\r\n\r\nafter the repair\r\n" % n)
        assert typ == "OK", data
        appended.add(data[0].split(b"APPENDUID ")[1].split(b"]")[0])
        imap.logout()
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("alice", "secret")
    assert imap.select("INBOX", readonly=True) == ("OK", [b"6"])
    validity, uids = list(seen)[0]
    assert imap.response("UIDVALIDITY")[1][-1] == validity
    typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
    assert [d.split(b" ")[2] for d in data] == [b"1", b"2", b"3", b"4", b"5", b"6"], data
    assert appended == {validity + b" %d" % uid for uid in (3, 4, 5, 6)}, appended
    imap.logout()
    assert "Traceback" not in hub.log
