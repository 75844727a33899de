# -*- test-case-name: tests.test_pg_quiet_stop -*-
"""
A hub on PostgreSQL (mail store, FTP files, queue) stops with plain log
lines: no Twisted failure text ("Connection to the other side was lost in
a non-clean fashion") for connections the hub closes itself.
"""

from __future__ import annotations

import ftplib
import io
import smtplib

MESSAGE = b"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: lunch\r\n\r\nAt noon?\r\n"


def test_a_hub_on_postgresql_stops_without_twisted_failure_text(start_hub, pg_dsn):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql", "--queue", "postgresql")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=30)
    ftp.login("alice", "secret")
    ftp.storbinary("STOR a.txt", io.BytesIO(b"hello\n"))
    ftp.quit()
    hub.stop()
    log = hub.log
    assert "non-clean fashion" not in log, log[-3000:]
    assert "Connection lost" not in log and "Traceback" not in log, log[-3000:]
