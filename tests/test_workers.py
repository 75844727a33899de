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

from tests.hubprocess import HubProcess
from twisted_mailhub.workers import worker_count


def _send_many(hub, connections: int, each: int, to: str = "alice@localhost") -> list[BaseException]:
    """
    C{connections} SMTP clients sending at once, C{each} messages apiece
    (the kernel spreads them over the workers); returns the errors.
    """
    clients = [smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) for _ in range(connections)]
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
        with pytest.raises(ValueError, match="wants a number of processes"):
            worker_count(bad)


def test_bad_workers_value_is_one_usage_line(start_hub):
    from twisted_mailhub.testing import MailhubStartError

    with pytest.raises(MailhubStartError) as caught:
        start_hub("--workers", "none")
    assert "--workers none: wants a number of processes" in caught.value.log
    assert "invalid literal" not in caught.value.log
    assert "Traceback" not in caught.value.log


def test_concurrent_delivery_through_two_workers_gives_unique_dense_uids(start_hub):
    hub = start_hub("--workers", "2")
    connections, each = 16, 8
    assert _send_many(hub, connections, each) == []
    total = connections * each
    # Both processes delivered, at once. Their log lines reach the hub's
    # log through the supervisor, a little after the 250s: count them as
    # they come (a regular expression repeated 128 times backtracks for
    # minutes on a log that is still short of lines).
    deadline = time.monotonic() + 10
    while len(delivering := re.findall(r"\[worker (\d)\] delivered ", hub.log)) < total and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(delivering) == total and delivering.count("0") and delivering.count("1")
    # ... and every message has its own UID, with no gap: 1..N.
    listed = _listed_uids(hub.maildir("alice@localhost"))
    assert sorted(listed) == list(range(1, total + 1))
    # Every IMAP session, whichever worker it reaches, sees the same.
    for _ in range(4):
        assert _imap_uids(hub.ports["imap"]) == list(range(1, total + 1))


def _connections_per_worker(hub) -> list[int]:
    """Each worker's open connections, as C{mailhub-admin status} lists them."""
    from tests.test_control import mailhub_admin

    status = mailhub_admin("status", "--data", hub.data_dir)
    return [int(n) for n in re.findall(r"^  worker \d: pid \d+, up \d+ s, (\d+) connections open", status.stdout, re.M)]


def test_clients_connecting_at_once_are_split_evenly_over_the_workers(start_hub):
    # Bursts of 32 clients: 16 on each worker, give or take one or two
    # (twisted_mailhub/accepts.py). A hash of the addresses (SO_REUSEPORT)
    # split them as unevenly as 11 to 21: within two in 4 bursts of 5 about
    # one time in ten. (A worker that gets no core for 5 ms on a loaded
    # machine may leave one burst a little uneven: 4 of 5 are asked.)
    hub = start_hub("--workers", "2")
    splits = []
    for burst in range(5):
        clients = [socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) for _ in range(32)]
        try:
            for client in clients:
                assert client.recv(1000).startswith(b"220 ")
            counts = _connections_per_worker(hub)
            assert len(counts) == 2 and sum(counts) == 32, counts
            splits.append(sorted(counts))
        finally:
            for client in clients:
                client.close()
        # (each worker has seen its clients go before the next burst)
        deadline = time.monotonic() + 10
        while _connections_per_worker(hub) != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sum(high - low <= 2 for low, high in splits) >= 4, splits


def test_a_workers_log_lines_reach_standard_output_while_the_supervisor_is_stopped(start_hub):
    # Logging to standard output (-n), each worker writes its own lines
    # there: the supervisor is not on a line's way (relaying every
    # worker's lines cost it 3-7 us of CPU per delivered message).
    hub = start_hub("--workers", "2")
    supervisor = hub.process.pid
    os.kill(supervisor, signal.SIGSTOP)
    try:
        for n in range(4):  # (the kernel spreads the connections over both workers)
            with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as client:
                client.sendmail("kim@example.org", ["alice@localhost"], f"Subject: while stopped {n}\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 10
        while len(re.findall(r"\[worker \d\] delivered \S+ from=<kim@example.org>", hub.log)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        # (each line whole, with its time stamp and its worker)
        assert len(re.findall(r"(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[worker \d\] delivered \S+ from=<kim@example.org> to=<alice@localhost>", hub.log)) == 4, hub.log[-3000:]
    finally:
        os.kill(supervisor, signal.SIGCONT)


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
    While inside, only worker C{index} runs (the others are stopped with
    SIGSTOP).
    """
    others = [pid for i, pid in _worker_pids(hub).items() if i != index]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def on_worker(hub, index: int, connect):
    """
    A client of worker C{index}: C{connect(timeout)} makes one and reads
    the greeting. While the others are stopped only worker C{index}
    accepts (the one with fewer connections is waited for at most
    twisted_mailhub.accepts.GRACE); a client that was not greeted in
    time is dropped and another made.
    """
    for _ in range(60):
        with only_worker(hub, index):
            try:
                client = connect(0.5)
            except OSError:  # (socket.timeout too) it went to a stopped worker
                continue
        sock = client.sock if hasattr(client, "sock") else client
        sock.settimeout(10)
        return client
    raise AssertionError(f"no connection reached worker {index}")


def smtp_client(hub, name="smtp"):
    return lambda timeout: smtplib.SMTP("127.0.0.1", hub.ports[name], timeout=timeout)


def pop3_client(hub):
    return lambda timeout: poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=timeout)


def imap_socket(hub):
    def connect(timeout):
        sock = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=timeout)
        try:
            if b"* OK" not in _read_until(sock, b"\r\n", timeout):
                raise OSError("no greeting")
        except OSError:
            sock.close()
            raise
        return sock

    return connect


def test_pop3_in_use_holds_across_workers(start_hub):
    hub = start_hub("--workers", "2")
    first = on_worker(hub, 0, pop3_client(hub))
    first.user("alice")
    first.pass_("secret")
    try:
        second = on_worker(hub, 1, pop3_client(hub))
        second.user("alice")
        with pytest.raises(poplib.error_proto) as refused:
            second.pass_("secret")
        assert refused.value.args[0].startswith(b"-ERR [IN-USE]")
        second.close()
    finally:
        first.quit()
    # Once the first session is over, the other worker lets alice in.
    third = on_worker(hub, 1, pop3_client(hub))
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
    idle = on_worker(hub, 0, imap_socket(hub))
    idle.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
    _read_until(idle, b"+ idling", 10)
    smtp = on_worker(hub, 1, smtp_client(hub))
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
    hub.wait_for_log(r"\[worker 1\] delivered")
    # Told at once, not found by IDLE's look every 0.5 s (4 of 5 within
    # 0.2 s: by that look alone, 1 chance in 11).
    assert sorted(delays)[3] < 0.2, delays


def test_failed_logins_on_one_worker_slow_down_the_other(start_hub):
    hub = start_hub("--workers", "2")
    for _ in range(5):
        client = on_worker(hub, 1, pop3_client(hub))
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong")
        client.close()
    client = on_worker(hub, 0, pop3_client(hub))
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
        client = on_worker(hub, index, pop3_client(hub))
        client.user("carol")
        assert client.pass_("newpass").startswith(b"+OK")
        client.quit()


def test_a_worker_that_dies_is_logged_and_started_again(start_hub):
    hub = start_hub("--workers", "2")
    dead = _worker_pids(hub)[1]
    os.kill(dead, signal.SIGKILL)
    hub.wait_for_log(r"worker 1 died \(signal 9\); starting it again")
    hub.wait_for_log(r"worker 1 started \(pid (?!%d\))\d+\)" % dead)
    hub.wait_for_log(r"\[worker 1\] .*smtp listening on")
    with on_worker(hub, 1, smtp_client(hub)) as s:
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
            with on_worker(hub, n % 2, smtp_client(hub, "submission")) as client:
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
    from tests.web_helpers import LiveSocket, WebClient

    hub = start_hub("--workers", "2", "--teacher", "alice@localhost")
    # A session on worker 1 while nobody watches: listed on worker 0's
    # console (the web face is worker 0's alone), without its lines.
    with on_worker(hub, 1, smtp_client(hub)) as smtp:
        smtp.helo("unwatched.example")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    deadline = time.monotonic() + 10
    # (worker 1's connection ids are even: worker i gives i+1, i+1+N, ...;
    # odd ones are worker 0's, such as the tries on_worker dropped)
    while not (unwatched := _even(re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(unwatched) == 1
    assert "helo unwatched.example" not in browser.get("/console/session/" + urllib.parse.quote(unwatched[0], safe="")).text
    # With the console open, another worker's sessions come line by line.
    listing = LiveSocket(browser)
    try:
        deadline = time.monotonic() + 15
        typed: list[str] = []
        while not typed and time.monotonic() < deadline:
            with on_worker(hub, 1, smtp_client(hub)) as smtp:
                smtp.helo("student.example")
                smtp.sendmail("student@example.org", ["alice@localhost"], "Subject: seen\r\n\r\nhi\r\n")
            for _ in range(40):
                ids = re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text)
                pages = [browser.get("/console/session/" + urllib.parse.quote(id, safe="")).text for id in ids]
                typed = [page for page in pages if "helo student.example" in page and "250 2.0.0" in page]
                if typed:
                    break
                time.sleep(0.05)
    finally:
        listing.close()
    assert typed, "no session of worker 1 on the console with its lines"
    assert "FROM:&lt;student@example.org&gt;" in typed[0]
    assert _even(re.findall(r"Session (smtp#\d+)", typed[0]))


def _even(ids: list[str]) -> list[str]:
    return [id for id in ids if int(id.split("#")[1]) % 2 == 0]


# -- stopped by a signal to the whole process group ---------------------------


class _OwnGroupHub(HubProcess):
    """
    A hub started as the leader of a process group of its own (through
    C{setsid}, which execs in place: the hub's pid is the group's id), so
    that a test can signal the group as C{timeout}, a shell's Ctrl-C or
    C{kill -TERM -- -PGID} do, without signalling pytest.
    """

    def command(self) -> list[str]:
        return ["setsid"] + HubProcess.command(self)


def test_sigterm_to_the_process_group_stops_every_time_cleanly(tmp_path):
    # Each round: SIGTERM twice to the whole group, one shortly after the
    # other (timeout(1) signals the hub, then its group), while SMTP clients are
    # delivering through both workers (their log lines flow to the
    # supervisor as the signals land). Every process gets the signal
    # directly, the workers once more from the supervisor.
    for round in range(3):
        hub = _OwnGroupHub(str(tmp_path / f"group{round}"), ["--workers", "2"])
        try:
            hub.start()
        except BaseException:
            hub.stop()
            raise
        stop = threading.Event()

        def busy(port=hub.ports["smtp"]):
            while not stop.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                        s.sendmail("sender@example.org", ["alice@localhost"], "Subject: busy\r\n\r\nhi\r\n")
                except (OSError, smtplib.SMTPException):
                    return  # the hub went

        clients = [threading.Thread(target=busy) for _ in range(4)]
        for t in clients:
            t.start()
        try:
            assert os.getpgid(hub.process.pid) == hub.process.pid
            hub.wait_for_log(r"\[worker 0\] delivered")
            hub.wait_for_log(r"\[worker 1\] delivered")
            started = time.monotonic()
            os.killpg(hub.process.pid, signal.SIGTERM)
            # (a moment later, or the kernel merges it with the first)
            time.sleep((0.005, 0.02, 0.05)[round])
            os.killpg(hub.process.pid, signal.SIGTERM)
            hub.process.wait(15)
            took = time.monotonic() - started
        finally:
            stop.set()
            status = hub.stop(signal.SIGKILL, remove_data=False)  # (only if it still runs)
            for t in clients:
                t.join(10)
        log = hub.log
        # Ends as one hub stopped by SIGTERM, at once, with both workers.
        assert status == -signal.SIGTERM, log[-3000:]
        assert took < 5, log[-3000:]
        assert "Server Shut Down." in log
        assert len(re.findall(r"worker \d \(pid \d+\) stopped \(status 0\)", log)) == 2, log[-3000:]
        assert "did not stop" not in log
        assert "Traceback" not in log and "ReactorNotRunning" not in log, log[-3000:]
        # One "Received SIGTERM, shutting down." per process; the rest
        # are told as repeats.
        assert len(re.findall(r"\] Received SIGTERM, shutting down\.", log)) == 3, log[-3000:]


def test_a_worker_log_line_sent_from_a_signal_handler_inside_a_flush_does_not_hang():
    # A signal handler runs in the main thread between any two bytecodes,
    # also while that thread is writing the worker's log lines: a line it
    # logs then must neither wait for the lock its own thread holds (the
    # worker hung until killed) nor land inside another line.
    from twisted_mailhub.workers import _BusOut

    read, write = os.pipe()
    out = _BusOut(write)
    done = threading.Event()

    def writer() -> None:
        with out.lock:  # as inside flush()
            out.flushing = True
            out.send(b"L", b"from a handler")  # (no reactor: writes at once)
            out.flushing = False
        out.send(b"L", b"next")
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert done.wait(5), "a line sent inside a flush waited for the flush's own lock"
    os.close(write)
    with os.fdopen(read, "rb") as f:
        assert f.read() == b"Lfrom a handler\nLnext\n"


def test_folder_notices_leave_at_the_end_of_the_turn_then_at_most_once_per_gap():
    # A worker's "this folder changed" notices: the first at once (end of
    # the reactor turn), then under steady delivery at most one per
    # NOTICE_GAP carrying every folder changed meanwhile, none lost.
    import json
    from types import SimpleNamespace

    from twisted.internet import task

    from twisted_mailhub.workers import NOTICE_GAP, WorkerLink

    clock = task.Clock()
    sent = []
    out = SimpleNamespace(send=lambda kind, body: sent.append((kind, json.loads(body))))
    link = WorkerLink(SimpleNamespace(reactor=clock), 1, 2, out)
    link.folder_changed("/mail/a")
    link.folder_changed("/mail/a")
    clock.advance(0)
    assert sent == [(b"B", {"k": "folders", "d": ["/mail/a"]})]
    clock.advance(NOTICE_GAP / 4)
    link.folder_changed("/mail/b")
    link.folder_changed("/mail/a")
    clock.advance(0)
    assert len(sent) == 1
    clock.advance(NOTICE_GAP)
    assert sent[1:] == [(b"B", {"k": "folders", "d": ["/mail/a", "/mail/b"]})]
    clock.advance(1.0)
    link.folder_changed("/mail/c")
    clock.advance(0)
    assert sent[2:] == [(b"B", {"k": "folders", "d": ["/mail/c"]})]


def test_no_folder_notice_is_sent_while_no_other_worker_listens_to_a_folder():
    # Only a worker whose sessions listen to folders (IDLE, a selected
    # mailbox, NOTIFY) can make anything of a notice: with none, a
    # delivery sends nothing; once another worker listens, it is told.
    import json
    import os
    from types import SimpleNamespace

    from twisted.internet import task

    from twisted_mailhub.accepts import ConnectionTable, make_table
    from twisted_mailhub.workers import WorkerLink

    fd = make_table(2)
    try:
        clock = task.Clock()
        sent = []
        out = SimpleNamespace(send=lambda kind, body: sent.append((kind, json.loads(body))))
        link = WorkerLink(SimpleNamespace(reactor=clock), 0, 2, out)
        link.table = ConnectionTable(fd, 0, 2, clock)
        other = WorkerLink(SimpleNamespace(reactor=clock), 1, 2, SimpleNamespace(send=lambda kind, body: None))
        other.table = ConnectionTable(fd, 1, 2, clock)
        link.folder_changed("/mail/a")
        clock.advance(1.0)
        assert sent == []
        other.watching(1, None)
        link.folder_changed("/mail/a")
        clock.advance(0)
        assert sent == [(b"B", {"k": "folders", "d": ["/mail/a"]})]
        other.watching(0, None)
        clock.advance(1.0)
        link.folder_changed("/mail/b")
        clock.advance(1.0)
        assert len(sent) == 1
    finally:
        os.close(fd)


def test_a_folder_that_gets_its_first_listener_is_looked_at_again(monkeypatch):
    # A change another worker made before it could see the listener was
    # announced to no one: the folder is looked at once more, as a notice
    # would have made it.
    from types import SimpleNamespace

    from twisted.internet import task

    from twisted_mailhub.store import shared
    from twisted_mailhub.workers import WorkerLink

    clock = task.Clock()
    looked = []
    monkeypatch.setattr(shared, "changed_elsewhere", looked.append)
    link = WorkerLink(SimpleNamespace(reactor=clock), 1, 2, SimpleNamespace(send=lambda kind, body: None))
    link.watching(1, "/mail/a")
    assert looked == []
    clock.advance(0)
    assert looked == ["/mail/a"]
    link.watching(0, None)
    clock.advance(0)
    assert looked == ["/mail/a"]


# -- /metrics, the control socket, quotas and modseqs across workers ------------


def test_metrics_add_up_every_workers_counters(start_hub):
    from tests.test_metrics import scrape, value

    hub = start_hub("--workers", "2")
    sent = {0: 2, 1: 3}
    for index, count in sent.items():
        with on_worker(hub, index, smtp_client(hub)) as smtp:
            for n in range(count):
                smtp.sendmail("judy@jbc.test", ["alice@localhost"], f"Subject: w{index} {n}\r\n\r\nhello\r\n")
    # A wrong password on worker 1 (the web face, and so /metrics, is worker 0's).
    client = on_worker(hub, 1, pop3_client(hub))
    client.user("alice")
    with pytest.raises(poplib.error_proto):
        client.pass_("wrong")
    client.close()
    deadline = time.monotonic() + 10
    while len(re.findall(r"\[worker \d\] delivered ", hub.log)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    samples = scrape(hub)
    assert value(samples, "mailhub_workers_counted") == 2
    assert value(samples, "mailhub_messages_total", result="accepted", reason="") == 5
    assert value(samples, "mailhub_delivery_durable_seconds_count") == 5
    assert value(samples, "mailhub_logins_total", protocol="pop3", result="failed") == 1
    # on_worker's dropped tries count too: at least one per worker served.
    assert value(samples, "mailhub_connections_accepted_total", listener="smtp") >= 2
    assert value(samples, "mailhub_listener_up", listener="smtp") == 1
    # A worker that dies and is started again: its counts stay in the sums.
    dead = _worker_pids(hub)[1]
    os.kill(dead, signal.SIGKILL)
    hub.wait_for_log(r"worker 1 started \(pid (?!%d\))\d+\)" % dead)
    hub.wait_for_log(r"mailhub: worker 1 .*ready|\[worker 1\] .*imap listening on", timeout=20)
    deadline = time.monotonic() + 10
    while value(samples := scrape(hub), "mailhub_workers_counted") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(samples, "mailhub_messages_total", result="accepted", reason="") == 5
    assert value(samples, "mailhub_logins_total", protocol="pop3", result="failed") == 1


def test_control_socket_under_workers_lists_them_and_reloads_each(start_hub, tmp_path):
    from tests.test_control import mailhub_admin

    data = tmp_path / "data"
    data.mkdir()
    accounts = data / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--workers", "2", "--auth", f"file:{accounts}", users=(), data=str(data))
    pids = _worker_pids(hub)
    status = mailhub_admin("status", "--data", str(data))
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"pid {hub.pid}, up ")
    assert f"  smtp\t{hub.ports['smtp']}" in status.stdout
    for index, pid in pids.items():
        assert re.search(rf"^  worker {index}: pid {pid}, up \d+ s, \d+ connections open, 0 queued$", status.stdout, re.M), status.stdout
    # mailhub-admin user add reloads every worker through the socket.
    added = mailhub_admin("user", "add", "carol@localhost", "--accounts", str(accounts), "--pidfile", str(tmp_path / "none.pid"), "--password-stdin", stdin="tea for two\n")
    assert added.returncode == 0, added.stderr
    assert "worker 0: accounts reloaded: 2 accounts (+1 -0)" in added.stdout
    assert "worker 1: accounts reloaded: 2 accounts (+1 -0)" in added.stdout
    for index in (0, 1):
        client = on_worker(hub, index, pop3_client(hub))
        client.user("carol")
        assert client.pass_("tea for two").startswith(b"+OK")
        client.quit()


def test_quota_counts_what_every_worker_stored(start_hub):
    hub = start_hub("--workers", "2", "--quota", "10k")
    filler = "x" * 70 + "\r\n"
    with on_worker(hub, 0, smtp_client(hub)) as smtp:
        smtp.sendmail("judy@jbc.test", ["alice@localhost"], "Subject: small\r\n\r\nhi\r\n")  # worker 0 counts alice now
    with on_worker(hub, 1, smtp_client(hub)) as smtp:
        smtp.sendmail("judy@jbc.test", ["alice@localhost"], "Subject: big\r\n\r\n" + filler * 80)  # ~5.8 KB
    with on_worker(hub, 0, smtp_client(hub)) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("judy@jbc.test", ["alice@localhost"], "Subject: too much\r\n\r\n" + filler * 60)  # ~4.4 KB
    assert refused.value.smtp_code == 552 and b"5.2.2" in refused.value.smtp_error
    # What was stored is what was accepted: two messages, under 10 KiB.
    maildir = hub.maildir("alice@localhost")
    sizes = [os.path.getsize(p) for sub in ("new", "cur") for p in (os.path.join(maildir, sub, n) for n in os.listdir(os.path.join(maildir, sub)))]
    assert len(sizes) == 2 and sum(sizes) <= 10 * 1024


def _modseqs(data: list) -> dict[int, int]:
    found = {}
    for item in data:
        text = item.decode() if isinstance(item, bytes) else str(item)
        m = re.search(r"UID (\d+).*MODSEQ \((\d+)\)|MODSEQ \((\d+)\).*UID (\d+)", text)
        if m:
            uid, modseq = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            found[int(uid)] = int(modseq)
    return found


def test_modseqs_grow_across_workers_and_every_worker_tells_the_same(start_hub):
    hub = start_hub("--workers", "2")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        for n in range(4):
            smtp.sendmail("judy@jbc.test", ["alice@localhost"], f"Subject: {n}\r\n\r\nhi\r\n")
    sessions = []
    for index in (0, 1):
        m = on_worker(hub, index, lambda timeout: imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=timeout))
        m.login("alice", "secret")
        m._simple_command("ENABLE", "CONDSTORE")
        m.select("INBOX")
        sessions.append(m)
    try:
        given = []
        # Changes made in turn through worker 0 and worker 1, on the same
        # and on different messages.
        for step, (index, uid, flag) in enumerate([(0, 1, "\\Seen"), (1, 1, "\\Flagged"), (1, 2, "\\Seen"), (0, 3, "$Work"), (1, 3, "\\Answered"), (0, 2, "\\Flagged")]):
            typ, data = sessions[index].uid("STORE", str(uid), "+FLAGS", f"({flag})")
            assert typ == "OK", data
            given.append(_modseqs(data)[uid])
        # Each change got a modseq above every one before it, whichever
        # worker made it.
        assert given == sorted(given) and len(set(given)) == len(given), given
        # Both workers tell every message's modseq alike, and HIGHESTMODSEQ.
        seen = []
        for m in sessions:
            m.noop()
            typ, data = m.uid("FETCH", "1:*", "(MODSEQ)")
            seen.append(_modseqs(data))
        assert seen[0] == seen[1], seen
        assert seen[0][1] == given[1] and seen[0][3] == given[4] and seen[0][2] == given[5]
        highest = [int(re.search(rb"HIGHESTMODSEQ (\d+)", m.status("INBOX", "(HIGHESTMODSEQ)")[1][0]).group(1)) for m in sessions]
        assert highest[0] == highest[1] == given[-1], (highest, given)
    finally:
        for m in sessions:
            m.logout()


def test_merged_metrics_sum_counts_and_take_one_reading_of_shared_facts():
    from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from twisted_mailhub.metrics import format_exposition, merge_expositions, parse_exposition

    def worker(accepted: int, free: int, up: int) -> str:
        registry = CollectorRegistry()
        Counter("mailhub_messages", "Messages.", ["result"], registry=registry).labels("accepted").inc(accepted)
        Gauge("mailhub_data_free_bytes", "Free.", registry=registry).set(free)
        Gauge("mailhub_listener_up", "Up.", ["listener"], registry=registry).labels("smtp").set(up)
        return generate_latest(registry).decode()

    merged = format_exposition(merge_expositions([parse_exposition(worker(2, 100, 1)), parse_exposition(worker(3, 90, 0))]), workers=2)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(merged.decode()) for s in f.samples}
    assert samples[("mailhub_messages_total", (("result", "accepted"),))] == 5
    assert samples[("mailhub_data_free_bytes", ())] == 100
    assert samples[("mailhub_listener_up", (("listener", "smtp"),))] == 0  # down in one worker is down
    assert samples[("mailhub_workers_counted", ())] == 2


def test_a_unix_socket_listener_is_shared_by_the_workers(start_hub, tmp_path):
    # A UNIX socket cannot join an SO_REUSEPORT group: it is bound once and
    # every worker accepts on it (found by breaker: the start failed with
    # "Operation not supported").
    path = str(tmp_path / "smtp.sock")
    hub = start_hub("--workers", "2", "--smtp", f"unix:{path}")
    for n in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"HELO unix\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"], replies
        s.sendall(b"Subject: over unix %d\r\n\r\nhi\r\n.\r\nQUIT\r\n" % n)
        assert f.readline().startswith(b"250 ")
        s.close()
    assert len(_imap_uids(hub.ports["imap"])) == 4


def test_a_sighup_while_the_workers_start_does_not_end_the_start(start_hub, tmp_path):
    # Found by breaker: a SIGHUP in the second or so between the workers'
    # spawn and their handlers (mailhub-admin user add, a logrotate
    # postrotate, systemd reload as the hub starts) killed them with
    # SIGHUP's default action, and the supervisor then stopped the start.
    hub = HubProcess(str(tmp_path / "data"), ["--workers", "2"])
    os.makedirs(hub.data_dir)
    errors: list[BaseException] = []

    def start():
        try:
            hub.start()
        except BaseException as e:  # reported below
            errors.append(e)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        deadline = time.monotonic() + 30
        while "worker 1 started" not in hub.log and starting.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(hub.process.pid, signal.SIGHUP)
        starting.join(60)
        assert not errors, errors
        # Each worker reloads once it is ready: the SIGHUP is not lost.
        hub.wait_for_log(r"\[worker 0\] accounts reloaded")
        hub.wait_for_log(r"\[worker 1\] accounts reloaded")
        assert "exited with signal" not in hub.log, hub.log[-3000:]
        assert _imap_uids(hub.ports["imap"]) == []
    finally:
        hub.stop()


def _cores_of(pid: int) -> list[set[int]]:
    """The cores each thread of process C{pid} may run on."""
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


def test_worker_i_of_n_keeps_the_ith_core_when_every_worker_can_have_one():
    from twisted_mailhub.workers import worker_cpu

    assert [worker_cpu(i, 2, {0, 1}) for i in range(2)] == [0, 1]
    assert [worker_cpu(i, 2, {5, 3, 9}) for i in range(2)] == [3, 5]  # (the cores taskset left, in order)
    assert worker_cpu(2, 3, {0, 1}) is None  # more workers than cores: the system places them
    assert worker_cpu(0, 1, {0, 1}) is None


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"), reason="CPU affinity is Linux's (sched_setaffinity, /proc)")
def test_each_worker_and_every_thread_it_starts_keeps_a_core_of_its_own(start_hub):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: workers keep a core of their own only when each can have one")
    hub = start_hub("--workers", "2")
    # Threads the workers start later (the group commit's) stay there too.
    assert _send_many(hub, 4, 2) == []
    pids = _worker_pids(hub)
    for index, pid in pids.items():
        assert _cores_of(pid) and all(allowed == {cores[index]} for allowed in _cores_of(pid)), (index, _cores_of(pid))
    assert _cores_of(hub.pid)[0] == set(cores)  # (the supervisor is not pinned)
    # A worker started again takes its core again.
    os.kill(pids[1], signal.SIGKILL)
    again = int(hub.wait_for_log(r"worker 1 started \(pid (?!%d\))(\d+)\)" % pids[1]).group(1))
    hub.wait_for_log(r"worker 1 started \(pid %d\)[\s\S]*\[worker 1\] .*smtp listening on" % again)
    assert all(allowed == {cores[1]} for allowed in _cores_of(again)), _cores_of(again)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"), reason="CPU affinity is Linux's (sched_setaffinity, /proc)")
def test_no_pin_workers_leaves_the_workers_free_to_move_between_the_cores(start_hub):
    hub = start_hub("--workers", "2", "--no-pin-workers")
    for pid in _worker_pids(hub).values():
        assert all(allowed == os.sched_getaffinity(0) for allowed in _cores_of(pid))
