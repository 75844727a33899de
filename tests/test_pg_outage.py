"""
While PostgreSQL is down, every protocol of a hub on it answers with its
temporary error and logs one clear line per refused request, never a
traceback; when the database is back everything works again.
"""

from __future__ import annotations

import ftplib
import imaplib
import io
import poplib
import smtplib

import pytest

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: hi\r\n\r\nbody\r\n"


def test_while_the_database_is_down_each_protocol_refuses_with_a_temporary_error_and_logs_one_line_no_traceback(start_hub, pg_dsn, postgresql):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    # Sessions that were logged in before the database went.
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    imap.login("alice", "secret")
    imap.select("INBOX")
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    pop.user("alice")
    pop.pass_("secret")
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"])
    ftp.login("alice", "secret")
    ftp.storbinary("STOR before.txt", io.BytesIO(b"kept"))
    before = len(hub.log)
    postgresql.stop()
    try:
        # SMTP: 451 4.3.0, twice.
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
                with pytest.raises(smtplib.SMTPDataError) as e:
                    s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
                assert e.value.smtp_code == 451 and e.value.smtp_error.startswith(b"4.3.0"), e.value
        # IMAP: NO [UNAVAILABLE] for what needs the database; the session goes on.
        for command, args in (("FETCH", ("1", "(BODY[])")), ("STORE", ("1", "+FLAGS", "(\\Flagged)")), ("CREATE", ("Later",))):
            typ, data = imap._simple_command(command, *args)
            assert typ == "NO" and data[-1].startswith(b"[UNAVAILABLE]"), (command, data)
        assert imap.noop()[0] == "OK"
        typ, data = imap.select("INBOX")
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        fresh = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
        typ, data = fresh._simple_command("LOGIN", "bob", "hungry")
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        fresh.logout()
        # POP3: -ERR [SYS/TEMP] for a message body and for a new login.
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            pop.retr(1)
        other = poplib.POP3("127.0.0.1", hub.ports["pop3"])
        other.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            other.pass_("hungry")
        other.quit()
        # FTP: 451, a temporary error, for a listing, an upload, a folder.
        for attempt in (lambda: ftp.nlst(), lambda: ftp.storbinary("STOR during.txt", io.BytesIO(b"x")), lambda: ftp.mkd("new")):
            with pytest.raises(ftplib.error_temp, match=r"^451 "):
                attempt()
        assert ftp.voidcmd("NOOP").startswith("200")
    finally:
        postgresql.restart()
    during = hub.log[before:]
    assert "Traceback" not in during, during
    assert " at 0x" not in during, during
    for words in ("smtp", "imap: FETCH", "imap: STORE", "imap: CREATE", "imap: SELECT", "imap: LOGIN", "pop3: RETR", "pop3: PASS", "ftp: NLST", "ftp: STOR", "ftp: MKD"):
        assert any(words in line and "cannot be reached" in line or words == "smtp" and "message not stored" in line for line in during.splitlines()), (words, during)
    # Back: the same sessions and new ones work.
    assert imap.select("INBOX")[0] == "OK"
    typ, data = imap.fetch("1", "(BODY[])")
    assert typ == "OK" and b"Subject: hi" in data[0][1]
    imap.logout()
    assert b"Subject: hi" in b"\r\n".join(pop.retr(1)[1])
    pop.quit()
    buffer = io.BytesIO()
    ftp.retrbinary("RETR before.txt", buffer.write)
    assert buffer.getvalue() == b"kept"
    ftp.quit()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    assert "Traceback" not in hub.log
