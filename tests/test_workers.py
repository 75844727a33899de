"""
C{--workers N}: the real C{twistd mailhub --workers 2}, checked for every
guarantee one process gives (twisted_mailhub/workers.py,
twisted_mailhub/store/shared.py).
"""

from __future__ import annotations

import imaplib
import os
import re
import signal
import smtplib
import threading
import time

import pytest

from twisted_mailhub.workers import worker_count


def _send_many(port: int, connections: int, each: int, to: str = "alice@localhost") -> list[BaseException]:
    """C{connections} SMTP clients at once, C{each} messages apiece; the errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(connections)

    def client(c: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                start.wait(10)
                for i in range(each):
                    s.sendmail("sender@example.org", [to], f"Subject: m {c}-{i}\r\n\r\nbody {c}-{i}\r\n")
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def _listed_uids(maildir: str) -> list[int]:
    with open(os.path.join(maildir, "mailhub-uidlist"), encoding="utf-8") as f:
        return [int(line.split(" ", 1)[0]) for line in f.read().splitlines()[1:]]


def _imap_uids(port: int) -> list[int]:
    m = imaplib.IMAP4("127.0.0.1", port)
    try:
        m.login("alice", "secret")
        m.select("INBOX")
        return [int(u) for u in m.uid("SEARCH", None, "ALL")[1][0].split()]
    finally:
        m.logout()


def test_workers_option_takes_a_count_or_auto():
    assert worker_count("3") == 3
    assert worker_count(None) == 1
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError):
            worker_count(bad)


def test_bad_workers_value_is_one_usage_line(start_hub):
    from twisted_mailhub.testing import MailhubStartError

    with pytest.raises(MailhubStartError) as caught:
        start_hub("--workers", "none")
    assert "--workers none" in caught.value.log
    assert "Traceback" not in caught.value.log


def test_concurrent_delivery_through_two_workers_gives_unique_dense_uids(start_hub):
    hub = start_hub("--workers", "2")
    connections, each = 16, 8
    assert _send_many(hub.ports["smtp"], connections, each) == []
    total = connections * each
    # Both processes delivered (the listening socket is shared) ...
    delivering = set(re.findall(r"\[worker (\d)\] delivered ", hub.log))
    assert delivering == {"0", "1"}, hub.log[-3000:]
    # ... and every message has its own UID, with no gap: 1..N.
    listed = _listed_uids(hub.maildir("alice@localhost"))
    assert sorted(listed) == list(range(1, total + 1))
    # Every IMAP session, whichever worker it reaches, sees the same.
    for _ in range(4):
        assert _imap_uids(hub.ports["imap"]) == list(range(1, total + 1))


def test_sigterm_stops_every_worker_and_the_hub_ends_as_one_process_does(start_hub):
    hub = start_hub("--workers", "2")
    pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", hub.log)]
    assert len(pids) == 2
    # As one process: twistd shuts down, then ends by the signal it got.
    assert hub.stop(signal.SIGTERM, remove_data=False) == -signal.SIGTERM
    assert "Server Shut Down." in hub.log
    assert len(re.findall(r"worker \d \(pid \d+\) stopped", hub.log)) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Traceback" not in hub.log
