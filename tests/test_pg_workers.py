"""
The PostgreSQL parts under C{--workers 2}: the real C{twistd mailhub
--workers 2 --store postgresql:DSN} (accounts, queue and FTP files in the
same database), each guarantee checked through each worker.
"""

from __future__ import annotations

import ftplib
import io
import poplib
import re
import socket
import time

import psycopg
import pytest

from tests.test_e2e_relay import Collector
from tests.test_metrics import scrape, value
from tests.test_workers import _imap_uids, _send_many, on_worker, pop3_client, smtp_client


def _ftp_client(hub):
    def connect(timeout):
        client = ftplib.FTP(timeout=timeout)
        client.connect("127.0.0.1", hub.ports["ftp"])
        return client

    return connect


def test_two_workers_on_postgresql_deliver_serve_lock_and_send_each_message_once(start_hub, pg_dsn):
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    peer = Collector(refuse={"later@c.test": "451 4.3.0 not now"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = controller_mod.Controller(peer, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        hub = start_hub(
            "--workers", "2", "--store", f"postgresql:{pg_dsn}", "--auth", f"postgresql:{pg_dsn}",
            "--ftp-filesystem", "postgresql", "--mx-override", f"c.test=127.0.0.1:{port}",
        )
        assert "queue: in PostgreSQL" in hub.log
        # Delivery: 8 clients x 4 messages spread over both workers; UIDs
        # unique and dense; both workers delivered.
        assert _send_many(hub, 8, 4) == []
        with psycopg.connect(pg_dsn) as conn:
            uids = [u for (u,) in conn.execute(
                "SELECT uid FROM mailbox_message JOIN mailbox ON mailbox.id = mailbox_id WHERE name = 'INBOX' ORDER BY uid"
            )]
        assert uids == list(range(1, 33))
        deadline = time.monotonic() + 10
        while len(delivered := re.findall(r"\[worker (\d)\] delivered ", hub.log)) < 32 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert delivered.count("0") and delivered.count("1"), delivered
        # IMAP: every session, whichever worker, sees the 32.
        for _ in range(4):
            assert _imap_uids(hub.ports["imap"]) == list(range(1, 33))
        # POP3 [IN-USE] across the workers (the advisory lock).
        first = on_worker(hub, 0, pop3_client(hub))
        first.user("alice")
        first.pass_("secret")
        try:
            second = on_worker(hub, 1, pop3_client(hub))
            second.user("alice")
            with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
                second.pass_("secret")
            second.close()
        finally:
            first.quit()
        # FTP: a file stored through one worker is read through the other.
        up = on_worker(hub, 0, _ftp_client(hub))
        up.login("alice", "secret")
        up.storbinary("STOR shared.txt", io.BytesIO(b"from worker 0"))
        up.quit()
        down = on_worker(hub, 1, _ftp_client(hub))
        down.login("alice", "secret")
        got = io.BytesIO()
        down.retrbinary("RETR shared.txt", got.write)
        down.quit()
        assert got.getvalue() == b"from worker 0"
        # /metrics (the workers' pages merged): the queue counted once,
        # from the table, not once per worker.
        with on_worker(hub, 1, smtp_client(hub, "submission")) as client:
            client.login("alice", "secret")
            client.sendmail("alice@localhost", ["later@c.test"], "Subject: later\r\n\r\nbody\r\n")
        hub.wait_for_log(r"to c\.test via .*451")  # tried once; back in the table
        assert value(scrape(hub), "mailhub_queue_messages") == 1
        # The queue: mail submitted through either worker is sent once.
        for n in range(6):
            with on_worker(hub, n % 2, smtp_client(hub, "submission")) as client:
                client.login("alice", "secret")
                client.sendmail("alice@localhost", [f"carol{n}@c.test"], f"Subject: out {n}\r\n\r\nbody {n}\r\n")
        deadline = time.monotonic() + 20
        while len(peer.envelopes) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        with psycopg.connect(pg_dsn) as conn:
            deadline = time.monotonic() + 10
            while conn.execute("SELECT count(*) FROM queue_message").fetchone()[0] > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert conn.execute("SELECT count(*) FROM queue_message").fetchone()[0] == 1  # only the refused one
    finally:
        controller.stop()
    assert sorted(rcpts[0] for _, rcpts, _ in peer.envelopes) == [f"carol{n}@c.test" for n in range(6)]
    assert "Traceback" not in hub.log
