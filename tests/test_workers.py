"""
C{--workers N}: the real C{twistd mailhub --workers 2}, checked for every
guarantee one process gives (twisted_mailhub/workers.py,
twisted_mailhub/store/shared.py).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import signal
import smtplib
import socket
import threading
import time
import urllib.parse

import pytest

from twisted_mailhub.workers import worker_count


def _send_many(hub, connections: int, each: int, to: str = "alice@localhost") -> list[BaseException]:
    """
    C{connections} SMTP clients sending at once, C{each} messages apiece,
    half of them connected to each worker; returns the errors.
    """
    clients = []
    for c in range(connections):
        with only_worker(hub, c % 2):
            clients.append(smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30))
    errors: list[BaseException] = []
    start = threading.Barrier(connections)

    def client(c: int, s: smtplib.SMTP) -> None:
        try:
            start.wait(10)
            for i in range(each):
                s.sendmail("sender@example.org", [to], f"Subject: m {c}-{i}\r\n\r\nbody {c}-{i}\r\n")
            s.quit()
        except BaseException as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c, s)) for c, s in enumerate(clients)]
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
    assert _send_many(hub, connections, each) == []
    total = connections * each
    # Both processes delivered, at once ...
    deadline = time.monotonic() + 10
    while len(delivering := re.findall(r"\[worker (\d)\] delivered ", hub.log)) < total and time.monotonic() < deadline:
        time.sleep(0.02)  # (their log lines come through the supervisor)
    assert len(delivering) == total and delivering.count("0") and delivering.count("1")
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


# -- which worker serves a client ------------------------------------------------


def _worker_pids(hub) -> dict[int, int]:
    """The live pid of each worker, from the supervisor's log."""
    pids: dict[int, int] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", hub.log):
        pids[int(index)] = int(pid)
    return pids


@contextlib.contextmanager
def only_worker(hub, index: int):
    """
    While inside, only worker C{index} accepts connections (the others are
    stopped with SIGSTOP): a client connected and greeted inside is that
    worker's for the rest of its session.
    """
    others = [pid for i, pid in _worker_pids(hub).items() if i != index]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def test_pop3_in_use_holds_across_workers(start_hub):
    hub = start_hub("--workers", "2")
    with only_worker(hub, 0):
        first = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        first.user("alice")
        first.pass_("secret")
    try:
        with only_worker(hub, 1):
            second = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        second.user("alice")
        with pytest.raises(poplib.error_proto) as refused:
            second.pass_("secret")
        assert refused.value.args[0].startswith(b"-ERR [IN-USE]")
        second.close()
    finally:
        first.quit()
    # Once the first session is over, the other worker lets alice in.
    with only_worker(hub, 1):
        third = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    third.user("alice")
    assert third.pass_("secret").startswith(b"+OK")
    third.quit()


def _read_until(sock, marker: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_idle_on_one_worker_hears_of_a_delivery_through_the_other_at_once(start_hub):
    hub = start_hub("--workers", "2")
    with only_worker(hub, 0):
        idle = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10)
        _read_until(idle, b"\r\n", 10)
    idle.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
    _read_until(idle, b"+ idling", 10)
    with only_worker(hub, 1):
        smtp = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10)
    delays = []
    try:
        for n in range(1, 6):
            smtp.sendmail("sender@example.org", ["alice@localhost"], f"Subject: {n}\r\n\r\nhi\r\n")
            sent = time.monotonic()
            _read_until(idle, b"* %d EXISTS\r\n" % n, 10)
            delays.append(time.monotonic() - sent)
    finally:
        smtp.quit()
        idle.sendall(b"DONE\r\nz LOGOUT\r\n")
        idle.close()
    assert f"[worker 1] delivered" in hub.log
    # Told at once, not found by IDLE's look every 0.5 s.
    assert max(delays) < 0.25, delays


def test_failed_logins_on_one_worker_slow_down_the_other(start_hub):
    hub = start_hub("--workers", "2")
    for _ in range(5):
        with only_worker(hub, 1):
            client = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong")
        client.close()
    with only_worker(hub, 0):
        client = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    client.user("alice")
    started = time.monotonic()
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong")
    held = time.monotonic() - started
    client.close()
    # The sixth failure in a row, counted across workers: 0.6 s, not 0.1 s.
    assert hub.wait_for_log(r"\[worker 0\] pop3 login failed .* \(answer held 0\.6s\)")
    assert held >= 0.5


def test_sighup_reaches_every_worker(start_hub, tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--workers", "2", "--auth", f"file:{accounts}", users=())
    accounts.write_text("alice@localhost:secret\ncarol@localhost:newpass\n")
    hub.process.send_signal(signal.SIGHUP)
    hub.wait_for_log(r"\[worker 0\] accounts reloaded: 2 accounts \(\+1 -0\)")
    hub.wait_for_log(r"\[worker 1\] accounts reloaded: 2 accounts \(\+1 -0\)")
    for index in (0, 1):
        with only_worker(hub, index):
            client = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        client.user("carol")
        assert client.pass_("newpass").startswith(b"+OK")
        client.quit()


def test_a_worker_that_dies_is_logged_and_started_again(start_hub):
    hub = start_hub("--workers", "2")
    dead = _worker_pids(hub)[1]
    os.kill(dead, signal.SIGKILL)
    hub.wait_for_log(r"worker 1 died \(signal 9\); starting it again")
    hub.wait_for_log(r"worker 1 started \(pid (?!%d\))\d+\)" % dead)
    hub.wait_for_log(r"\[worker 1\] .*imap listening on")
    time.sleep(0)  # (the new worker accepts as soon as it listens)
    with only_worker(hub, 1):
        hub.wait_for_log(r"\[worker 1\] .*smtp listening on")
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as s:
            s.sendmail("sender@example.org", ["alice@localhost"], "Subject: after\r\n\r\nback\r\n")
    hub.wait_for_log(r"\[worker 1\] delivered")


def test_mail_queued_through_either_worker_is_sent_once(start_hub):
    from tests.test_e2e_relay import Collector

    controller_mod = pytest.importorskip("aiosmtpd.controller")
    peer = Collector()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = controller_mod.Controller(peer, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        hub = start_hub("--workers", "2", "--mx-override", f"c.test=127.0.0.1:{port}")
        for n in range(6):
            with only_worker(hub, n % 2):
                client = smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10)
            with client:
                client.login("alice", "secret")
                client.sendmail("alice@localhost", [f"carol{n}@c.test"], f"Subject: out {n}\r\n\r\nbody {n}\r\n")
        deadline = time.monotonic() + 20
        while len(peer.envelopes) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # (a second sending would come now)
    finally:
        controller.stop()
    assert sorted(rcpts[0] for _, rcpts, _ in peer.envelopes) == [f"carol{n}@c.test" for n in range(6)]
    # One worker runs the queue; the other hands it what it queued.
    assert len(re.findall(r"queue: run by another worker", hub.log)) == 1
    assert "two hubs on one queue" not in hub.log


def test_the_console_shows_sessions_of_every_worker(start_hub):
    from tests.web_helpers import WebClient

    hub = start_hub("--workers", "2", "--teacher", "alice@localhost")
    # The web face is worker 0's alone; an SMTP session on worker 1 ...
    with only_worker(hub, 1):
        smtp = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10)
    with smtp:
        smtp.helo("student.example")
        smtp.sendmail("student@example.org", ["alice@localhost"], "Subject: seen\r\n\r\nhi\r\n")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    deadline = time.monotonic() + 10
    while True:
        ids = re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text)
        if ids or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # ... is on its console, line by line.
    assert len(ids) == 1
    page = browser.get("/console/session/" + urllib.parse.quote(ids[0], safe="")).text
    assert "helo student.example" in page and "FROM:&lt;student@example.org&gt;" in page
    assert "250 2.0.0" in page
