"""
What a real C{twistd mailhub} loads: code for a part the hub was not
started with (the PostgreSQL store, accounts and throttle) is not
imported, so it costs no memory (issue 13: the IMAP server's memory
against Dovecot's). The hub is asked after it served a session: a file
named in C{MAILHUB_TEST_MODULES} gets the names of its modules when it
is sent SIGUSR2 (a C{sitecustomize} on its path writes them).
"""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import time

import pytest

SITECUSTOMIZE = """\
import os, signal, sys

def _write_modules(*_ignored, path=os.environ.get("MAILHUB_TEST_MODULES")):
    with open(path + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.replace(path + ".tmp", path)

if os.environ.get("MAILHUB_TEST_MODULES"):
    signal.signal(signal.SIGUSR2, _write_modules)
"""


def _wait_for(path, hub, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline and hub.process.poll() is None, hub.log
        time.sleep(0.05)


@pytest.fixture
def modules_of(start_hub, tmp_path):
    """C{modules_of(*args)}: the modules a hub started with C{args} had loaded when it exited, after a mail was delivered and searched over IMAP."""

    def run(*args: str) -> set[str]:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        listing = tmp_path / "modules.txt"
        hub = start_hub(*args, env={"PYTHONPATH": str(site), "MAILHUB_TEST_MODULES": str(listing)})
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
            smtp.sendmail("carol@example.org", ["alice@localhost"], b"From: carol@example.org\r\nSubject: hi\r\n\r\nbody\r\n")
        with imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=30) as imap:
            imap.login("alice", "secret")
            imap.select("INBOX")
            assert imap.search(None, "FROM", "carol") == ("OK", [b"1"])
        os.kill(hub.process.pid, signal.SIGUSR2)
        _wait_for(listing, hub)
        return set(listing.read_text().split())

    return run


def test_a_hub_without_postgresql_imports_none_of_its_code(modules_of):
    loaded = modules_of()
    assert "twisted_mailhub.imap.search" in loaded  # (the listing is the hub's)
    postgres = sorted(
        name
        for name in loaded
        if name.startswith(("psycopg", "twisted_mailhub.cluster.", "twisted_mailhub.store.postgresql", "twisted_mailhub.store.pgcache", "twisted_mailhub.store.pgschema"))
    )
    assert postgres == []


def test_a_hub_without_a_web_listener_imports_no_prometheus_client(modules_of):
    # /metrics is served only on the web listeners: with both turned off
    # nobody can read a counter, so the library (about 1.1 MB) is not loaded.
    loaded = modules_of("--no-web", "--no-webs")
    assert "twisted_mailhub.imap.search" in loaded  # (the listing is the hub's)
    assert sorted(name for name in loaded if name.startswith("prometheus_client")) == []


def test_a_hub_with_a_web_listener_imports_prometheus_client(modules_of):
    # The other side: where /metrics can be asked for, the counters exist.
    loaded = modules_of("--no-webs")
    assert "prometheus_client" in loaded


def test_a_hub_without_metrics_serves_every_protocol_that_counts(start_hub):
    # Every part that counts for /metrics (FTP transfers, SMTP refusals,
    # logins, connection limits) goes on without counters.
    import ftplib
    import io
    import poplib

    hub = start_hub("--no-web", "--no-webs", "--max-connections", "50")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail("carol@example.org")
        assert smtp.rcpt("nobody@localhost")[0] == 550
        assert smtp.rcpt("alice@localhost")[0] == 250
        assert smtp.data(b"Subject: hi\r\n\r\nbody\r\n")[0] == 250
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    pop.user("alice")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong")
    pop.quit()
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", hub.ports["ftp"], timeout=30)
    ftp.login("alice", "secret")
    ftp.storbinary("STOR notes.txt", io.BytesIO(b"tea for two\n"))
    got = io.BytesIO()
    assert ftp.retrbinary("RETR notes.txt", got.write).startswith("226")
    assert got.getvalue() == b"tea for two\n"
    ftp.quit()
    assert hub.process.poll() is None
    assert "Traceback" not in hub.log


def test_a_hub_without_a_web_listener_loads_no_web_face(modules_of):
    # No browser can reach the webmail or the console: their code is not
    # loaded, and sessions are not recorded for a console. (The JSON API's
    # module is read for the command line's options; it mounts nothing.)
    loaded = modules_of("--no-web", "--no-webs")
    assert "twisted_mailhub.imap.search" in loaded  # (the listing is the hub's)
    face = ("twisted_mailhub.web.site", "twisted_mailhub.web.console", "twisted_mailhub.web.mail", "twisted_mailhub.web.sanitize", "twisted_mailhub.web.avatar")
    assert sorted(name for name in loaded if name.startswith(face)) == []
