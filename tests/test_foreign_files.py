"""
What other programs leave in the hub's data folder: a FIFO, a device or a
file named with non-ASCII digits in a Maildir or an FTP home. The hub is
one process, so a file it opens must never make it wait: a FIFO's open(2)
waits for a writer, and every session of every protocol would wait too.
Each test checks what a client sees and that the hub still answers.
"""

from __future__ import annotations

import ftplib
import imaplib
import io
import json
import os
import poplib
import smtplib
import urllib.request
import base64

import pytest


def deliver(hub, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        s.sendmail("carol@example.org", ["alice@localhost"], f"Subject: {subject}\r\n\r\nhello\r\n".encode())


def smtp_still_answers(hub) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
        assert s.noop()[0] == 250


def inbox_subjects(hub) -> list[bytes]:
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        typ, _ = imap.select("INBOX")
        assert typ == "OK"
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        return sorted(part[1].strip() for part in data if isinstance(part, tuple))
    finally:
        imap.logout()


def test_a_fifo_left_in_a_maildir_is_no_message_and_does_not_stop_the_hub(hub):
    deliver(hub, "before")
    new = os.path.join(hub.maildir("alice@localhost"), "new")
    os.mkfifo(os.path.join(new, "1700000000.M1P1.elsewhere"))
    deliver(hub, "after")
    assert inbox_subjects(hub) == [b"Subject: after", b"Subject: before"]
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    try:
        pop.user("alice")
        pop.pass_("secret")
        assert pop.stat()[0] == 2
    finally:
        pop.quit()
    smtp_still_answers(hub)
    hub.wait_for_log(r"1700000000\.M1P1\.elsewhere: not a regular file")


def test_a_maildir_file_named_with_non_ascii_digits_is_a_message(hub):
    deliver(hub, "ours")
    new = os.path.join(hub.maildir("alice@localhost"), "new")
    with open(os.path.join(new, "²5.M2P2.elsewhere"), "wb") as f:
        f.write(b"Subject: dropped in\r\n\r\nhi\r\n")
    assert inbox_subjects(hub) == [b"Subject: dropped in", b"Subject: ours"]


@pytest.fixture
def home_with_a_fifo(hub):
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    os.makedirs(home, exist_ok=True)
    os.mkfifo(os.path.join(home, "pipe"))
    with open(os.path.join(home, "file.txt"), "wb") as f:
        f.write(b"plain file\n")
    return home


def test_ftp_retr_of_a_fifo_is_550_and_the_hub_goes_on(hub, home_with_a_fifo):
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    try:
        ftp.login("alice", "secret")
        with pytest.raises(ftplib.error_perm, match=r"^550 .*pipe: not a regular file"):
            ftp.retrbinary("RETR pipe", io.BytesIO().write)
        got = io.BytesIO()
        ftp.retrbinary("RETR file.txt", got.write)
        assert got.getvalue() == b"plain file\n"
    finally:
        ftp.quit()
    smtp_still_answers(hub)


def test_ftp_mlsd_types_a_fifo_as_os_unix_fifo_not_a_file_in_the_facts_selected(hub, home_with_a_fifo):
    # RFC 3659 §7.5.1: a pipe is no file a client could fetch; §7.9: the
    # facts OPTS MLST selects are the ones MLSD shows.
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    try:
        ftp.login("alice", "secret")
        facts = dict(ftp.mlsd())
        assert facts["pipe"]["type"] == "OS.unix=fifo" and "size" not in facts["pipe"]
        assert facts["pipe"]["perm"] == "df"
        assert facts["file.txt"]["type"] == "file" and facts["file.txt"]["size"] == "11"
        assert set(facts["file.txt"]) == {"type", "size", "modify", "perm"}
        # ftplib's mlsd(facts=...) sends OPTS MLST type;size; first.
        chosen = dict(ftp.mlsd(facts=["type", "size"]))
        assert chosen == {"pipe": {"type": "OS.unix=fifo"}, "file.txt": {"type": "file", "size": "11"}}
    finally:
        ftp.quit()
    smtp_still_answers(hub)


def test_the_api_download_of_a_fifo_is_refused_and_the_hub_goes_on(hub, home_with_a_fifo):
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/files/pipe",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert 400 <= caught.value.code < 500
    assert b"not a regular file" in caught.value.read()
    smtp_still_answers(hub)


def test_a_maildir_file_whose_shown_size_has_non_ascii_digits_is_fetched(hub):
    # ",D=" in a base name is the hub's own field (the size as downgraded);
    # one another program wrote with "²" in it is no size: the file's is used.
    deliver(hub, "ours")
    cur = os.path.join(hub.maildir("alice@localhost"), "cur")
    with open(os.path.join(cur, "1700000001.M9P9.elsewhere,D=²:2,S"), "wb") as f:
        f.write(b"Subject: odd size\r\n\r\nx\r\n")
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select("INBOX")
        typ, data = imap.fetch("1:*", "(RFC822.SIZE)")
        assert typ == "OK"
        assert data == [f"1 (RFC822.SIZE {len(received_copy(hub))})".encode(), b"2 (RFC822.SIZE 24)"]
    finally:
        imap.logout()


def received_copy(hub) -> bytes:
    new = os.path.join(hub.maildir("alice@localhost"), "new")
    cur = os.path.join(hub.maildir("alice@localhost"), "cur")
    for d in (new, cur):
        for name in os.listdir(d):
            if "elsewhere" not in name:
                with open(os.path.join(d, name), "rb") as f:
                    return f.read()
    raise AssertionError("the delivered copy is not in the Maildir")


def sftp_session(hub):
    paramiko = pytest.importorskip("paramiko")
    transport = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    transport.connect(username="alice", password="secret")
    return transport, paramiko.SFTPClient.from_transport(transport)


@pytest.mark.parametrize("name", ["two\nlines.txt", "crlf\r\n226 Transfer complete.txt", "esc\x1b[31mred.txt", "back\x08space", "del\x7f"])
def test_sftp_refuses_names_with_control_characters_as_ftp_does(hub, name):
    transport, sftp = sftp_session(hub)
    try:
        sftp.mkdir("ok")
        with sftp.open("plain.txt", "w") as f:
            f.write(b"x")
        for attempt in (lambda: sftp.open(name, "w"), lambda: sftp.mkdir(name), lambda: sftp.rename("plain.txt", name), lambda: sftp.rename("ok", "ok/" + name)):
            with pytest.raises(OSError, match="control characters are not allowed"):
                attempt()
        assert sorted(sftp.listdir()) == ["ok", "plain.txt"]
    finally:
        transport.close()


def test_a_name_with_control_characters_made_by_another_program_is_listed_by_no_door(hub):
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    os.makedirs(home, exist_ok=True)
    for name in ("plain.txt", "x\r\n226 fake reply", "y\n-rw-r--r-- 1 ftp ftp 9 Jan 01 2020 fake.txt", "esc\x1b[2J"):
        with open(os.path.join(home, name), "wb") as f:
            f.write(b"x")
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    try:
        ftp.login("alice", "secret")
        assert ftp.nlst() == ["plain.txt"]
        listed: list[str] = []
        ftp.retrlines("LIST", listed.append)
        assert len(listed) == 1 and listed[0].endswith(" plain.txt")
        listed = []
        ftp.retrlines("MLSD", listed.append)
        assert len(listed) == 1 and listed[0].endswith("; plain.txt")
        status = ftp.sendcmd("STAT /").splitlines()
        assert len(status) == 3 and status[1].endswith(" plain.txt") and status[2] == "213 End of status."
        assert ftp.sendcmd("NOOP").startswith("200")
    finally:
        ftp.quit()
    transport, sftp = sftp_session(hub)
    try:
        assert sftp.listdir() == ["plain.txt"]
    finally:
        transport.close()
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/files",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert [entry["name"] for entry in json.load(answer)["entries"]] == ["plain.txt"]


def test_a_user_cannot_name_a_file_as_an_upload_in_progress(hub):
    # .NAME.mailhub-part is how an upload in progress is kept: hidden from
    # listings and removed after 36 hours. A file a user named so vanished.
    hidden = ".notes.txt.mailhub-part"
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=10)
    try:
        ftp.login("alice", "secret")
        ftp.storbinary("STOR notes.txt", io.BytesIO(b"kept"))
        for attempt in (
            lambda: ftp.storbinary(f"STOR {hidden}", io.BytesIO(b"user data")),
            lambda: ftp.mkd(".dir.mailhub-part"),
            lambda: (ftp.sendcmd("RNFR notes.txt"), ftp.sendcmd(f"RNTO {hidden}")),
        ):
            with pytest.raises(ftplib.error_perm, match=r"^550 .*names of the form \.NAME\.mailhub-part are the server's own"):
                attempt()
        assert ftp.nlst() == ["notes.txt"]
    finally:
        ftp.quit()
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    assert sorted(os.listdir(home)) == ["notes.txt"]
    transport, sftp = sftp_session(hub)
    try:
        with pytest.raises(OSError, match="are the server's own"):
            sftp.open(hidden, "w")
    finally:
        transport.close()
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/files/{hidden}",
        data=b"user data", method="PUT",
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert 400 <= caught.value.code < 500
    assert sorted(os.listdir(home)) == ["notes.txt"]


@pytest.mark.parametrize("offset", [10**12, 2**63 - 2, 2**64 - 1])
def test_an_sftp_write_far_past_the_end_is_refused_not_a_huge_sparse_file(start_hub, offset):
    # One byte at offset 10**12 made a 1 TB file under a 1 MB quota; near
    # 2**63 the seek failed with a traceback ("local error in processing").
    hub = start_hub("--quota", "1M")
    transport, sftp = sftp_session(hub)
    try:
        f = sftp.open("sparse.bin", "w")
        f.write(b"start")
        f.flush()
        f.seek(offset)
        with pytest.raises(OSError, match=r"would leave \d+ bytes unwritten past the end \(5\); at most 67108864"):
            f.write(b"x")
            f.flush()
        with sftp.open("ok.bin", "w") as g:  # out of order within a window is fine
            g.seek(65536)
            g.write(b"b" * 10)
            g.seek(0)
            g.write(b"a" * 65536)
        assert sftp.stat("ok.bin").st_size == 65546
    finally:
        transport.close()
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    assert all(os.path.getsize(os.path.join(home, n)) < 10**6 for n in os.listdir(home))
    assert "Traceback" not in hub.log


def test_a_message_file_replaced_by_a_fifo_does_not_hold_a_search_thread(hub):
    # Another program replaced a listed message file with a FIFO. A
    # search reads the files in a parsing thread (imap/search.FileReader):
    # its open(2) waited for a writer for ever, so the SEARCH was never
    # answered and the thread was lost to every later search and big read
    # (two such and the hub's parsing threads were all gone).
    deliver(hub, "first")
    deliver(hub, "second")
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        assert imap.select("INBOX")[0] == "OK"
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"first" in data[0][1]
        home = hub.maildir("alice@localhost")
        files = [os.path.join(home, sub, n) for sub in ("cur", "new") for n in os.listdir(os.path.join(home, sub))]
        [path] = [p for p in files if b"Subject: first" in open(p, "rb").read()]
        os.unlink(path)
        os.mkfifo(path)
        for _ in range(3):  # (more searches than parsing threads)
            typ, data = imap.search(None, "BODY", "hello")
            assert (typ, data) == ("OK", [b"2"]), (typ, data)
        assert imap.noop()[0] == "OK"
    finally:
        imap.logout()
    smtp_still_answers(hub)
