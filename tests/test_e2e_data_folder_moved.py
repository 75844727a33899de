"""
The data folder moved or removed under a running hub (an admin's mv, a
restore into place while it runs): every client gets a temporary error
it retries later, /healthz says what is wrong, and the log says it in
one line each, with the path: no traceback, no Python repr.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import urllib.error
import urllib.request

import pytest


def pop3_login_refused(hub, user: str, password: str) -> bytes:
    """The -ERR line a POP3 login of C{user} gets (it must not succeed)."""
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    pop.user(user)
    with pytest.raises(poplib.error_proto) as told:
        pop.pass_(password)
    pop.quit()
    return told.value.args[0]


def test_a_data_folder_moved_away_under_the_hub_is_a_temporary_error_said_in_one_line(start_hub):
    hub = start_hub()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("judy@jbc.test", ["alice@localhost"], b"Subject: before\r\n\r\nhello\r\n")
    os.rename(hub.data_dir, hub.data_dir + "-moved")
    try:
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("judy@jbc.test", ["alice@localhost"], b"Subject: after\r\n\r\nhello\r\n")
        assert refused.value.smtp_code == 451
        assert pop3_login_refused(hub, "alice", "secret").startswith(b"-ERR [SYS/TEMP]")
        imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=30)
        imap.login("alice", "secret")
        answer = imap.select("INBOX")
        imap.logout()
        assert answer == ("NO", [b"[NONEXISTENT] no such mailbox: INBOX no longer exists"])
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/healthz", timeout=30)
        assert health.value.code == 503
        assert health.value.read() == b"the data folder takes no write (No such file or directory)\n"
        missing = os.path.join(hub.data_dir, "mail", "localhost")
        hub.wait_for_log(r"message not stored: No such file or directory \(" + missing)
        hub.wait_for_log(r"POP3 login for alice failed: INBOX no longer exists")
        # An account not opened before the move: no new folder is made at
        # the old place (its mail would be split between two folders).
        assert pop3_login_refused(hub, "bob", "hungry").startswith(b"-ERR [SYS/TEMP]")
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("judy@jbc.test", ["bob@localhost"], b"Subject: after\r\n\r\nhello\r\n")
        assert refused.value.smtp_code == 451
        import ftplib

        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=30)
        with pytest.raises(ftplib.error_perm) as ftp_told:
            ftp.login("bob", "hungry")
        ftp.close()
        assert str(ftp_told.value) == "530 Login failed for a server problem, not your password; try again later."
        hub.wait_for_log(r"FTP login for bob failed: the data folder is gone")
        assert not os.path.exists(hub.data_dir), os.listdir(hub.data_dir)
        hub.wait_for_log(r"POP3 login for bob failed: the data folder is gone \(moved or removed while the hub runs\) \(" + hub.data_dir + r"\)")
        assert "Traceback" not in hub.log and "b'alice'" not in hub.log and "b'bob'" not in hub.log, hub.log
    finally:
        if not os.path.exists(hub.data_dir):
            os.rename(hub.data_dir + "-moved", hub.data_dir)
