"""
Every listener of a hub on PostgreSQL while the database restarts, beyond
the command-by-command refusals of tests/test_pg_outage.py: SFTP (sessions
opened before and during the outage, open read and write handles), FTP
transfers already running when the database goes, the web API and the
webmail pages, and the TLS listeners (submission with STARTTLS, smtps,
pop3s, imaps). Each answers with its protocol's temporary failure and a
reason, logs one line per refusal and never a traceback, and works again
once the database is back.
"""

from __future__ import annotations

import base64
import ftplib
import imaplib
import io
import json
import os
import poplib
import smtplib
import ssl
import urllib.error
import urllib.request

import paramiko
import pytest

from tests.hubprocess import client_context
from tests.test_e2e_sftp import paramiko_client
from tests.web_helpers import WebClient

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: hi\r\n\r\nbody\r\n"
UNAVAILABLE = "the file store cannot be reached now; try again later"


def _hub_on(start_hub, pg_dsn):
    return start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")


def _quiet(log: str) -> None:
    assert "Traceback" not in log, log
    assert "Unhandled Error" not in log, log
    assert " at 0x" not in log, log


def test_sftp_while_the_database_is_down_fails_each_request_with_the_reason_and_works_after(start_hub, pg_dsn, postgresql):
    hub = _hub_on(start_hub, pg_dsn)
    client = paramiko_client(hub)
    sftp = client.open_sftp()
    with sftp.open("before.txt", "wb") as f:
        f.write(b"kept")
    reading = sftp.open("before.txt", "rb")
    writing = sftp.open("partial.txt", "wb")
    writing.write(b"a" * 1000)
    writing.flush()
    before = len(hub.log)
    postgresql.stop()
    try:
        attempts = {
            "OPENDIR": lambda: sftp.listdir("."),
            "STAT": lambda: sftp.stat("before.txt"),
            "OPEN": lambda: sftp.putfo(io.BytesIO(b"x" * 100), "during.txt"),
            "READ": lambda: reading.read(),
            "MKDIR": lambda: sftp.mkdir("new"),
            "REMOVE": lambda: sftp.remove("before.txt"),
            "RENAME": lambda: sftp.rename("before.txt", "moved.txt"),
            # paramiko's close() swallows errors: ask for the status itself
            "CLOSE": lambda: sftp._request(paramiko.sftp.CMD_CLOSE, writing.handle),
        }
        for name, attempt in attempts.items():
            with pytest.raises(IOError) as e:
                attempt()
            # SSH_FX_FAILURE with the reason, never the database's address
            assert UNAVAILABLE in str(e.value), (name, e.value)
            assert "127.0.0.1" not in str(e.value) and "port" not in str(e.value), (name, e.value)
        # A session that logs in while the database is down is told the same.
        late = paramiko_client(hub)
        with pytest.raises(IOError, match=UNAVAILABLE):
            late.open_sftp().listdir(".")
        late.close()
    finally:
        postgresql.restart()
    during = hub.log[before:]
    _quiet(during)
    for name in ("OPENDIR", "STAT", "OPEN", "READ", "MKDIR", "REMOVE", "RENAME", "CLOSE"):
        assert any(f"sftp: {name} refused with a temporary error: the store cannot be reached" in line for line in during.splitlines()), (name, during)
    # Back: the same session, and a new one.
    assert sorted(sftp.listdir(".")) == ["before.txt"]  # the upload that failed is not shown
    with sftp.open("before.txt", "rb") as f:
        assert f.read() == b"kept"
    sftp.putfo(io.BytesIO(b"after"), "after.txt")
    client.close()
    again = paramiko_client(hub)
    assert sorted(again.open_sftp().listdir(".")) == ["after.txt", "before.txt"]
    again.close()
    _quiet(hub.log)


def test_ftp_transfers_running_when_the_database_goes_end_451_and_the_files_are_whole_after(start_hub, pg_dsn, postgresql):
    hub = _hub_on(start_hub, pg_dsn)
    big = os.urandom(16 * 1024 * 1024)
    down = ftplib.FTP(timeout=30)
    down.connect("127.0.0.1", hub.ports["ftp"])
    down.login("alice", "secret")
    down.storbinary("STOR big.bin", io.BytesIO(big))
    down.voidcmd("TYPE I")
    retr = down.transfercmd("RETR big.bin")
    retr.settimeout(30)
    received = len(retr.recv(65536))
    up = ftplib.FTP(timeout=30)
    up.connect("127.0.0.1", hub.ports["ftp"])
    up.login("alice", "secret")
    up.voidcmd("TYPE I")
    stor = up.transfercmd("STOR partial.bin")
    stor.sendall(b"x" * (2 * 1024 * 1024))
    before = len(hub.log)
    postgresql.stop()
    try:
        try:
            stor.sendall(b"y" * (2 * 1024 * 1024))
        except OSError:
            pass  # the hub aborted the data connection
        stor.close()
        with pytest.raises(ftplib.error_temp, match=r"^451 STOR: the file store cannot be reached now"):
            up.voidresp()
        try:
            while True:
                chunk = retr.recv(1 << 20)
                if not chunk:
                    break
                received += len(chunk)
        except OSError:
            pass  # reset: a download cut short is never mistaken for a whole file
        retr.close()
        assert received < len(big)
        with pytest.raises(ftplib.error_temp, match=r"^451 RETR: the file store cannot be reached now"):
            down.voidresp()
    finally:
        postgresql.restart()
    during = hub.log[before:]
    _quiet(during)
    assert "ftp: STOR refused with a temporary error" in during and "ftp: RETR refused with a temporary error" in during, during
    assert down.nlst() == ["big.bin"]  # the partial upload is not shown
    got = io.BytesIO()
    down.retrbinary("RETR big.bin", got.write)
    assert got.getvalue() == big
    up.storbinary("STOR partial.bin", io.BytesIO(b"whole"))
    assert sorted(up.nlst()) == ["big.bin", "partial.bin"]
    down.quit()
    up.quit()
    _quiet(hub.log)


def _api(hub, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1{path}", method=method, data=body,
        headers={"Authorization": "Basic " + base64.b64encode(b"alice@localhost:secret").decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def test_web_api_and_webmail_answer_503_while_the_database_is_down_and_work_after(start_hub, pg_dsn, postgresql):
    hub = _hub_on(start_hub, pg_dsn)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    browser = WebClient(hub)
    assert browser.login("alice@localhost", "secret").status == 303
    assert browser.get("/mail/INBOX/1").status == 200
    reads = ["/accounts/me/folders", "/accounts/me/folders/INBOX/messages", "/accounts/me/folders/INBOX/messages/1", "/accounts/me/files", "/messages"]
    before = len(hub.log)
    postgresql.stop()
    try:
        for path, method, body in [(p, "GET", None) for p in reads] + [
            ("/accounts/me/folders/INBOX/messages/1/flags", "PUT", json.dumps({"flags": ["\\Flagged"]}).encode()),
            ("/accounts/me/files/during.txt", "PUT", b"x"),
        ]:
            status, headers, answer = _api(hub, path, method, body)
            # not 404 "no such folder", 400 or 500: a temporary error
            assert status == 503 and answer["error"]["code"] == "unavailable", (path, status, answer)
            assert "cannot be reached now" in answer["error"]["message"] and headers.get("Retry-After") == "10", (path, answer)
        for page in ("/mail/INBOX", "/mail/INBOX/1"):
            response = browser.get(page)
            assert response.status == 503 and "The mail store cannot be reached now" in response.text, (page, response.status)
    finally:
        postgresql.restart()
    during = hub.log[before:]
    _quiet(during)
    assert "web: API folders refused with a temporary error" in during and "web: mail page GET refused" in during, during
    for path in reads:
        assert _api(hub, path)[0] == 200, path
    assert browser.get("/mail/INBOX/1").status == 200


def test_submission_and_the_tls_listeners_give_their_temporary_errors_while_the_database_is_down(start_hub, pg_dsn, postgresql):
    hub = _hub_on(start_hub, pg_dsn)
    context = client_context()
    before = len(hub.log)
    postgresql.stop()
    try:
        # submission (STARTTLS, AUTH) and smtps: 451 4.3.0 after DATA
        with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as s:
            s.starttls(context=context)
            s.login("bob@localhost", "hungry")
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
            assert e.value.smtp_code == 451 and e.value.smtp_error.startswith(b"4.3.0"), e.value
        with smtplib.SMTP_SSL("127.0.0.1", hub.ports["smtps"], context=context) as s:
            s.login("bob@localhost", "hungry")
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
            assert e.value.smtp_code == 451, e.value
        # pop3s: -ERR [SYS/TEMP] at PASS (the maildrop is in the database)
        pop = poplib.POP3_SSL("127.0.0.1", hub.ports["pop3s"], context=context)
        pop.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            pop.pass_("secret")
        pop.quit()
        # imaps: NO [UNAVAILABLE] for LOGIN
        imap = imaplib.IMAP4_SSL("127.0.0.1", hub.ports["imaps"], ssl_context=context)
        typ, data = imap._simple_command("LOGIN", "alice", "secret")
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        imap.logout()
    finally:
        postgresql.restart()
    _quiet(hub.log[before:])
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as s:
        s.starttls(context=context)
        s.login("bob@localhost", "hungry")
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    imap = imaplib.IMAP4_SSL("127.0.0.1", hub.ports["imaps"], ssl_context=context)
    imap.login("alice", "secret")
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    pop = poplib.POP3_SSL("127.0.0.1", hub.ports["pop3s"], context=context)
    pop.user("alice")
    pop.pass_("secret")
    assert pop.stat()[0] == 1
    pop.quit()
    _quiet(hub.log)
