"""
Issue 14: FTP and SFTP uploads count against the account's quota, with
its mail: FTP 552 with a message, SFTP SSH_FX_FAILURE "quota exceeded",
and the partial upload removed; on the real hub, with its files on disk
and, the same tests again, in PostgreSQL (C{--ftp-filesystem postgresql}).
"""

from __future__ import annotations

import ftplib
import io
import os
import smtplib

import pytest


def home(hub, user="alice"):
    return os.path.join(hub.data_dir, "ftp", "localhost", user)


class DiskFiles:
    """What alice's home on disk holds, hidden partial uploads too."""

    args: tuple[str, ...] = ()

    def __init__(self, hub):
        self.home = home(hub)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.home)) if os.path.isdir(self.home) else []

    def size(self, name: str) -> int | None:
        path = os.path.join(self.home, name)
        return os.path.getsize(path) if os.path.exists(path) else None

    def content(self, name: str) -> bytes:
        with open(os.path.join(self.home, name), "rb") as f:
            return f.read()

    def put(self, name: str, data: bytes) -> None:
        """A file put there by another way than the hub's uploads."""
        os.makedirs(self.home, exist_ok=True)
        with open(os.path.join(self.home, name), "wb") as out:
            out.write(data)


class PostgresFiles:
    """What alice's home in the C{ftp_node} table holds, hidden partial uploads too."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.args = ("--ftp-filesystem", f"postgresql:{dsn}")

    def _rows(self) -> dict[str, tuple[int, int]]:
        import psycopg

        from twisted_mailhub.ftp.pgfs import ensure_path

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            folder = ensure_path(conn, ["localhost", "alice"])
            rows = conn.execute("SELECT name, size, content FROM ftp_node WHERE parent_id = %s", (folder,)).fetchall()
        return {name: (size, oid) for name, size, oid in rows}

    def names(self) -> list[str]:
        return sorted(self._rows())

    def size(self, name: str) -> int | None:
        row = self._rows().get(name)
        return row[0] if row else None

    def content(self, name: str) -> bytes:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return bytes(conn.execute("SELECT lo_get(%s)", (self._rows()[name][1],)).fetchone()[0])

    def put(self, name: str, data: bytes, modified: float | None = None) -> None:
        import time

        import psycopg

        from twisted_mailhub.cluster import schema
        from twisted_mailhub.ftp.pgfs import ensure_path

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            schema.check(conn)  # (the tables a hub makes at its start)
            folder = ensure_path(conn, ["localhost", "alice"])
            conn.execute(
                "INSERT INTO ftp_node (parent_id, name, is_folder, size, modified, content) VALUES (%s, %s, false, %s, %s, lo_from_bytea(0, %s))",
                (folder, name, len(data), time.time() if modified is None else modified, data),
            )


@pytest.fixture(params=["disk", "postgresql"])
def quota_hub(request, start_hub):
    """C{start(*args)}: a hub and its L{DiskFiles} or L{PostgresFiles}."""

    def start(*args):
        if request.param == "disk":
            hub = start_hub(*args)
            return hub, DiskFiles(hub)
        files = PostgresFiles(request.getfixturevalue("pg_dsn"))
        return start_hub(*files.args, *args), files

    return start


def text_of(octets: int) -> bytes:
    """About C{octets} of message body in lines of 78 (RFC 5321 §4.5.3.1.6 allows 1000)."""
    return (b"x" * 76 + b"\r\n") * (octets // 78) + b"x" * (octets % 78) + b"\r\n"


def ftp_login(hub) -> ftplib.FTP:
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    return f


def test_ftp_and_sftp_uploads_stop_at_the_quota_and_leave_no_partial_file(quota_hub):
    paramiko = pytest.importorskip("paramiko")
    hub, files = quota_hub("--quota", "100k")
    f = ftp_login(hub)
    assert f.storbinary("STOR first.bin", io.BytesIO(b"a" * 60_000)).startswith("226")
    with pytest.raises(ftplib.error_perm) as refused:
        f.storbinary("STOR second.bin", io.BytesIO(b"b" * 60_000))
    assert str(refused.value).startswith("552")
    assert "quota exceeded" in str(refused.value) and "100.0 KiB" in str(refused.value)
    assert files.names() == ["first.bin"]  # no second.bin, no hidden part
    assert f.sendcmd("NOOP").startswith("200")  # the session goes on
    f.quit()

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="alice", password="secret", allow_agent=False, look_for_keys=False, timeout=20)
    sftp = client.open_sftp()
    with pytest.raises(IOError) as failed:
        with sftp.open("third.bin", "wb") as upload:
            for _ in range(6):
                upload.write(b"c" * 10_000)
    assert "quota exceeded" in str(failed.value)
    assert files.names() == ["first.bin"]
    sftp.putfo(io.BytesIO(b"d" * 10_000), "small.bin")  # what fits still goes in
    assert sorted(sftp.listdir(".")) == ["first.bin", "small.bin"]
    client.close()

    # Files and mail share one quota: 70 KB of files leave no room for 40 KB of mail.
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
        s.ehlo("client.test")
        s.mail("bob@localhost")
        s.rcpt("alice@localhost")
        code, text = s.data(b"Subject: big\r\n\r\n" + text_of(40_000))
    assert code == 552, text


def test_ftp_upload_when_already_over_quota_is_refused_before_the_transfer(quota_hub):
    hub, files = quota_hub("--quota", "10k")
    files.put("big.bin", b"z" * 20_000)
    f = ftp_login(hub)
    f.set_pasv(True)
    with pytest.raises(ftplib.error_perm) as refused:
        f.storbinary("STOR more.bin", io.BytesIO(b"m"))
    assert str(refused.value).startswith("552 STOR refused: quota exceeded")
    assert files.names() == ["big.bin"]
    f.quit()


def test_interrupted_uploads_kept_for_a_resume_count_against_the_quota(quota_hub):
    # Hidden partial files were not counted: five interrupted 90 KB uploads
    # kept 450 KB on disk under a 100 KB quota (and more, on and on).
    import socket

    hub, files = quota_hub("--quota", "100k")
    kept = 0
    for i in range(5):
        f = ftp_login(hub)
        f.voidcmd("TYPE I")
        conn = f.transfercmd(f"STOR part{i}.bin")
        try:
            conn.sendall(b"x" * 60_000)
        except OSError:
            pass  # the hub stopped it at the quota
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # a reset: the upload is interrupted, its part kept for a resume
        with pytest.raises(ftplib.Error):  # 426 interrupted, or 552 at the quota
            f.getresp()
        f.close()
        kept = sum(files.size(n) for n in files.names())
    assert kept <= 100 * 1024, files.names()
    # A resume of a kept part still works: SIZE is what was received so far.
    f = ftp_login(hub)
    f.voidcmd("TYPE I")
    assert f.size("part0.bin") == 60_000
    f.quit()


def test_an_interrupted_upload_not_resumed_within_36_hours_is_removed_at_start(start_hub, tmp_path):
    # Hidden .NAME.mailhub-part files of uploads no one resumed (the
    # client gave up, the hub was killed) stayed for ever, unseen.
    import time

    data = tmp_path / "data"
    folder = data / "ftp" / "localhost" / "alice" / "sub"
    folder.mkdir(parents=True)
    old = folder / ".old.bin.mailhub-part"
    old.write_bytes(b"o" * 1000)
    two_days = time.time() - 48 * 3600
    os.utime(old, (two_days, two_days))
    fresh = folder / ".fresh.bin.mailhub-part"
    fresh.write_bytes(b"f" * 1000)
    hub = start_hub(data=str(data))
    hub.wait_for_log(r"ftp: removed 1 interrupted upload\(s\) not resumed within 36 h")
    assert sorted(os.listdir(folder)) == [".fresh.bin.mailhub-part"]
    f = ftp_login(hub)
    f.voidcmd("TYPE I")
    assert f.size("sub/fresh.bin") == 1000  # still there for a resume
    f.quit()


def test_an_interrupted_upload_in_postgresql_not_resumed_within_36_hours_is_removed_at_start(start_hub, pg_dsn):
    # Partial rows count against the quota as partial files do: one no one
    # resumed stayed for ever, unseen, and counted.
    import time

    files = PostgresFiles(pg_dsn)
    files.put(".old.bin.mailhub-part", b"o" * 1000, modified=time.time() - 48 * 3600)
    files.put(".fresh.bin.mailhub-part", b"f" * 1000)
    hub = start_hub(*files.args, "--quota", "100k")
    hub.wait_for_log(r"ftp: removed 1 interrupted upload\(s\) not resumed within 36 h")
    assert files.names() == [".fresh.bin.mailhub-part"]
    f = ftp_login(hub)
    f.voidcmd("TYPE I")
    assert f.size("fresh.bin") == 1000  # still there for a resume
    f.quit()
    assert _quota_used_kib(hub) == 1  # the fresh one's 1,000 octets
    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        (objects,) = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    assert objects == 1  # the old one's bytes went with it


def _quota_used_kib(hub) -> int:
    import imaplib
    import re

    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    typ, data = c.getquotaroot("INBOX")
    c.logout()
    return int(re.search(rb"STORAGE (\d+) \d+", b" ".join(d for d in data[1] if isinstance(d, bytes))).group(1))


def _mail_octets(hub) -> int:
    import imaplib
    import re

    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(RFC822.SIZE)")
    c.logout()
    return sum(int(n) for n in re.findall(rb"RFC822\.SIZE (\d+)", b" ".join(data)))


def test_appe_counts_only_what_it_adds_while_and_after_it_runs(quota_hub):
    # APPE continues a copy of the file: the file and its copy were both
    # counted while it ran, so mail that fitted was refused near the quota.
    import socket
    import time

    hub, files = quota_hub("--quota", "100k")
    f = ftp_login(hub)
    assert f.storbinary("STOR a.bin", io.BytesIO(b"a" * 92_500)).startswith("226")  # past 90%: counted afresh from now on
    f.voidcmd("TYPE I")
    conn = f.transfercmd("APPE a.bin")
    conn.sendall(b"b" * 4_000)
    deadline = time.monotonic() + 20
    while (files.size(".a.bin.mailhub-part") or 0) < 92_500:  # the copy it continues
        assert time.monotonic() < deadline, "the APPE made no partial file"
        time.sleep(0.02)
    # 96,500 of files (once the APPE is done), the quota warning and 1,500
    # of mail fit in 100 KiB (102,400)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
        s.ehlo("client.test")
        s.mail("bob@localhost")
        code, text = s.rcpt("alice@localhost")
        assert code == 250, text
        code, text = s.data(b"Subject: fits\r\n\r\n" + text_of(1_500))
        assert code == 250, text
    conn.shutdown(socket.SHUT_WR)
    conn.close()
    assert f.voidresp().startswith("226")
    f.quit()
    assert files.size("a.bin") == 96_500
    assert files.names() == ["a.bin"]
    assert _quota_used_kib(hub) == (96_500 + _mail_octets(hub) + 1023) // 1024


def test_rest_and_stor_over_a_file_counts_its_new_size_not_both(quota_hub):
    hub, files = quota_hub("--quota", "100k")
    f = ftp_login(hub)
    assert f.storbinary("STOR a.bin", io.BytesIO(b"a" * 60_000)).startswith("226")
    # rewrite the last 50,000 octets: the file stays 60,000 long
    assert f.storbinary("STOR a.bin", io.BytesIO(b"b" * 50_000), rest=10_000).startswith("226")
    assert files.content("a.bin") == b"a" * 10_000 + b"b" * 50_000
    assert _quota_used_kib(hub) == (60_000 + 1023) // 1024
    # what still fits goes in; past the quota does not
    assert f.storbinary("STOR a.bin", io.BytesIO(b"c" * 40_000), rest=60_000).startswith("226")
    with pytest.raises(ftplib.error_perm) as refused:
        f.storbinary("APPE a.bin", io.BytesIO(b"d" * 5_000))
    assert str(refused.value).startswith("552") and "quota exceeded" in str(refused.value)
    assert files.size("a.bin") == 100_000
    assert files.names() == ["a.bin"]
    f.quit()


def test_sftp_writes_over_a_file_in_place_or_appended_count_only_its_growth(quota_hub):
    paramiko = pytest.importorskip("paramiko")
    hub, files = quota_hub("--quota", "100k")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="alice", password="secret", allow_agent=False, look_for_keys=False, timeout=20)
    sftp = client.open_sftp()
    sftp.putfo(io.BytesIO(b"a" * 60_000), "a.bin")
    # opened for writing without TRUNC or APPEND (paramiko has no such
    # mode): write over what is there, from offset 0
    from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_WRITE
    from paramiko.sftp_attr import SFTPAttributes
    from paramiko.sftp_file import SFTPFile

    kind, reply = sftp._request(CMD_OPEN, "a.bin", SFTP_FLAG_WRITE, SFTPAttributes())
    assert kind == CMD_HANDLE
    with SFTPFile(sftp, reply.get_binary(), "w") as rewrite:
        for _ in range(6):
            rewrite.write(b"b" * 10_000)
    with sftp.open("a.bin", "a") as more:
        more.write(b"c" * 20_000)
    assert sftp.stat("a.bin").st_size == 80_000
    client.close()
    assert files.content("a.bin") == b"b" * 60_000 + b"c" * 20_000
    assert _quota_used_kib(hub) == (80_000 + 1023) // 1024


def test_while_the_file_database_is_down_mail_is_checked_against_the_files_last_count(start_hub, pg_dsn, postgresql):
    # Counting the files needs PostgreSQL: while it is down, the last count
    # stands (one log line), so mail is neither refused for it nor let past
    # the quota.
    hub = start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}", "--quota", "100k")
    f = ftp_login(hub)
    assert f.storbinary("STOR a.bin", io.BytesIO(b"a" * 60_000)).startswith("226")
    f.quit()
    postgresql.stop()
    try:
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
            s.ehlo("client.test")
            s.mail("bob@localhost")
            assert s.rcpt("alice@localhost")[0] == 250
            code, text = s.data(b"Subject: too big with the files\r\n\r\n" + text_of(50_000))
            assert code == 552, text  # 60,000 of files + 50,000 > 100 KiB
            s.mail("bob@localhost")
            assert s.rcpt("alice@localhost")[0] == 250
            code, text = s.data(b"Subject: fits\r\n\r\n" + text_of(20_000))
            assert code == 250, text
            # bob's files were never counted: a temporary error, not a guess
            s.mail("alice@localhost")
            code, text = s.rcpt("bob@localhost")
            assert code == 451 and text.startswith(b"4.3.0"), text
        hub.wait_for_log(r"quota: the files of alice@localhost not counted now .*; their last count stands")
    finally:
        postgresql.restart()
    assert "Traceback" not in hub.log, hub.log[-6000:]


def test_an_api_file_upload_past_the_quota_is_507_and_leaves_nothing(quota_hub):
    # The JSON API's PUT is one more door to the same file system.
    import base64
    import http.client
    import json

    hub, files = quota_hub("--quota", "100k")

    def put(name: str, size: int):
        connection = http.client.HTTPConnection("127.0.0.1", hub.ports["web"], timeout=20)
        auth = "Basic " + base64.b64encode(b"alice@localhost:secret").decode()
        connection.request("PUT", "/api/v1/accounts/me/files/" + name, body=b"p" * size, headers={"Authorization": auth})
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
        return response.status, body

    assert put("a.bin", 60_000)[0] == 201
    status, body = put("b.bin", 60_000)
    assert status == 507 and "quota exceeded" in body["error"]["message"], body
    assert files.names() == ["a.bin"]  # no b.bin, no hidden part
    assert put("a.bin", 90_000)[0] == 201  # a file replaced counts by its new size only
    assert files.size("a.bin") == 90_000


def test_an_sftp_setstat_that_grows_a_file_past_the_quota_is_refused_and_changes_nothing(quota_hub):
    # SETSTAT size (paramiko's truncate) past the end makes the file that
    # long: it counted only afterwards, and took the account past its quota.
    paramiko = pytest.importorskip("paramiko")
    hub, files = quota_hub("--quota", "100k")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username="alice", password="secret", allow_agent=False, look_for_keys=False, timeout=20)
    sftp = client.open_sftp()
    sftp.putfo(io.BytesIO(b"a" * 10_000), "a.bin")
    with pytest.raises(IOError, match="quota exceeded"):
        sftp.truncate("a.bin", 200_000)
    assert sftp.stat("a.bin").st_size == 10_000
    sftp.truncate("a.bin", 50_000)  # what fits is done
    assert sftp.stat("a.bin").st_size == 50_000
    sftp.putfo(io.BytesIO(b"b" * 40_000), "b.bin")  # and the account can still use the rest
    client.close()
    assert files.names() == ["a.bin", "b.bin"]
    assert _quota_used_kib(hub) == (90_000 + 1023) // 1024
