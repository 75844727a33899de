"""
The hub's PostgreSQL connections on a real server: what each is opened
with (TCP keepalives, C{tcp_user_timeout}) and what the cluster parts
(L{twisted_mailhub.cluster.database.Database}) hold after outages.
"""

from __future__ import annotations

import os
import poplib
import signal
import smtplib
import socket
import threading
import time

import psycopg
import pytest

from twisted_mailhub.cluster.database import Database


def drop_every_connection(dsn: str) -> int:
    """pg_terminate_backend of every other session on C{dsn}'s database (an outage as a restart gives it); how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def sessions(dsn: str) -> int:
    """The other sessions open on C{dsn}'s database now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_a_cluster_part_holds_one_connection_per_thread_after_several_outages(pg_dsn):
    database = Database(pg_dsn, workers=2, what="the test database")
    turns = [threading.Event() for _ in range(6)]
    answered: list[int] = []

    def one() -> int:
        return database.run_here(lambda conn: conn.execute("SELECT 1").fetchone()[0])

    def worker() -> None:
        # (a long-lived worker thread with its own connection, as Database.run's are)
        for turn in turns:
            turn.wait(30)
            answered.append(one())

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for turn in turns[:-1]:
            assert one() == 1
            turn.set()
            while len(answered) < turns.index(turn) + 1:
                thread.join(0.01)
            assert drop_every_connection(pg_dsn) == 2  # (an outage: a restart, a failover)
        assert one() == 1  # (each time on a new connection)
        turns[-1].set()
        thread.join(30)
        assert answered == [1] * 6
        # Before: every connection ever opened was kept, the closed ones
        # too: 12 here, 10 of them lost in the 5 outages.
        held = list(database._all)
        assert len(held) == 2, held
        assert not any(conn.closed for conn in held)
    finally:
        for turn in turns:
            turn.set()
        thread.join(30)
        database.close()
    assert database._all == []
    assert sessions(pg_dsn) == 0


# -- time limits (store/pgtimeouts.py) ------------------------------------------

SITECUSTOMIZE = """
import os
if os.environ.get("MAILHUB_TEST_PG_DEADLINE"):
    from twisted_mailhub.store import pgtimeouts
    pgtimeouts.CALL_DEADLINE = float(os.environ["MAILHUB_TEST_PG_DEADLINE"])
if os.environ.get("MAILHUB_TEST_PG_LISTEN_PING"):
    from twisted_mailhub.store import pgtimeouts
    pgtimeouts.LISTEN_PING = float(os.environ["MAILHUB_TEST_PG_LISTEN_PING"])
"""
DEADLINE = 2.0


def test_every_kind_of_connection_is_opened_with_keepalives_and_a_user_timeout(pg_dsn):
    from twisted_mailhub.cluster.database import connect
    from twisted_mailhub.store.postgresql import ChangeListener, _connect

    # the store's (reactor, POP3 locks, reads, group commit), its LISTEN one, the cluster parts'
    conns = [_connect(pg_dsn), ChangeListener._connect(pg_dsn), connect(pg_dsn, "the queue database")]
    try:
        for conn in conns:
            s = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                # Before: connect_timeout alone; a frozen host held a read for many minutes.
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000
            finally:
                s.close()
    finally:
        for conn in conns:
            conn.close()


@pytest.fixture
def deadline_hub(start_hub, pg_dsn, tmp_path):
    """A hub on a new PostgreSQL database whose calls on it are cut after L{DEADLINE} s."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp", env={"PYTHONPATH": str(faults), "MAILHUB_TEST_PG_DEADLINE": str(DEADLINE)})


@pytest.fixture
def two_pinging_hubs(start_hub, pg_dsn, tmp_path):
    """Two hubs on one new database whose LISTEN connections ping every 0.5 s, unanswered after L{DEADLINE} s."""
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(faults), "MAILHUB_TEST_PG_DEADLINE": str(DEADLINE), "MAILHUB_TEST_PG_LISTEN_PING": "0.5"}
    return [start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp", env=env) for _ in range(2)]


def big(n: int) -> bytes:
    """A message over READ_AHEAD_ONE (read alone, in slices) and under POP3's one-write limit."""
    return f"From: bob@localhost\r\nSubject: big {n}\r\n\r\n".encode() + b"a line of the big message\r\n" * 12000


def readers(dsn: str) -> list[int]:
    """The backends of the hub's read connections (ReadConnections): the sessions whose last query read message bytes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT substring(body %'"
        )]


def server_processes(postgresql) -> list[int]:
    """The postmaster and every process it started."""
    with open(os.path.join(postgresql.data, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    children = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return [postmaster, *children]


def pop(hub, user: str = "alice", password: str = "secret") -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=40)
    p.user(user)
    p.pass_(password)
    return p


def retr_in_a_thread(p: poplib.POP3, n: int) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        began = time.monotonic()
        try:
            result["lines"] = p.retr(n)[1]
        except poplib.error_proto as e:
            result["error"] = e.args[0]
        except OSError as e:  # (before: the client's own time limit)
            result["error"] = b"no answer: " + repr(e).encode()
        result["wall"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def noops_while(p: poplib.POP3, thread: threading.Thread) -> list[float]:
    waits = []
    while thread.is_alive():
        began = time.monotonic()
        assert p.noop().startswith(b"+OK")
        waits.append(time.monotonic() - began)
        thread.join(0.1)
    return waits


def fill_big(hub, count: int) -> list[bytes]:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as s:
        sent = [big(n) for n in range(count)]
        for m in sent:
            s.sendmail("bob@localhost", ["alice@localhost"], m)
    return sent


def test_a_read_on_a_frozen_database_backend_is_made_again_on_a_new_connection(deadline_hub, pg_dsn):
    hub = deadline_hub
    sent = fill_big(hub, 3)
    alice, bob = pop(hub), pop(hub, "bob", "hungry")
    assert b"".join(line + b"\r\n" for line in alice.retr(1)[1]).endswith(sent[0])  # (after Return-Path and Received)
    (reader,) = readers(pg_dsn)
    os.kill(reader, signal.SIGSTOP)  # (its kernel still ACKs: no TCP timer fires)
    try:
        thread, result = retr_in_a_thread(alice, 2)
        waits = noops_while(bob, thread)
        thread.join()
    finally:
        os.kill(reader, signal.SIGCONT)
    # Before: no answer (the client's 40 s limit); the parsing thread held.
    assert "error" not in result, result
    assert b"".join(line + b"\r\n" for line in result["lines"]).endswith(sent[1])
    assert DEADLINE <= result["wall"] < DEADLINE + 6, result
    assert waits and max(waits) < 1.0, waits  # (another session answered meanwhile)
    assert alice.quit().startswith(b"+OK")
    bob.quit()


def test_a_read_on_a_frozen_database_is_answered_sys_temp_and_the_session_goes_on(deadline_hub, pg_dsn, postgresql):
    hub = deadline_hub
    sent = fill_big(hub, 3)
    alice, bob = pop(hub), pop(hub, "bob", "hungry")
    assert b"".join(line + b"\r\n" for line in alice.retr(1)[1]).endswith(sent[0])  # (after Return-Path and Received)
    frozen = server_processes(postgresql)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        thread, result = retr_in_a_thread(alice, 2)
        waits = noops_while(bob, thread)
        thread.join()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # Before: no answer; now the deadline, then a new connection that
    # cannot be opened (connect_timeout, 5 s).
    assert result.get("error", "").startswith(b"-ERR [SYS/TEMP]"), result
    assert result["wall"] < DEADLINE + 10, result
    assert waits and max(waits) < 1.0, waits
    # The database is back: the same session goes on.
    assert b"".join(line + b"\r\n" for line in alice.retr(2)[1]).endswith(sent[1])
    assert alice.quit().startswith(b"+OK")
    bob.quit()
    assert "Traceback" not in hub.log


def stop_while_a_retr_waits(hub, pg_dsn: str) -> tuple[int, float]:
    """
    Stop C{hub} while a POP3 RETR waits on its frozen (SIGSTOP) read
    backend: (twistd's exit code, the seconds C{hub.stop()} took).
    """
    fill_big(hub, 2)
    alice = pop(hub)
    alice.retr(1)
    (reader,) = readers(pg_dsn)
    os.kill(reader, signal.SIGSTOP)
    try:
        thread, _ = retr_in_a_thread(alice, 2)
        time.sleep(0.3)  # (the RETR is in the parsing thread, waiting)
        began = time.monotonic()
        code = hub.stop()
        stopped_in = time.monotonic() - began
        thread.join(30)
    finally:
        os.kill(reader, signal.SIGCONT)
    return code, stopped_in


def test_the_hub_stops_in_bounded_time_while_a_read_waits_on_a_frozen_backend(deadline_hub, pg_dsn):
    hub = deadline_hub
    code, stopped_in = stop_while_a_retr_waits(hub, pg_dsn)
    # Before: the reactor's shutdown joined the waiting thread; the hub
    # was killed (SIGKILL) after 15 s.
    assert code != -signal.SIGKILL, code
    assert stopped_in < DEADLINE + 6, stopped_in


def test_a_delivery_on_a_frozen_commit_connection_gets_451_in_bounded_time_and_the_next_is_stored(deadline_hub, pg_dsn):
    hub = deadline_hub
    fill_big(hub, 1)  # (the group commit's connection is made)
    frozen = writers(pg_dsn)
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=40) as s:
            s.mail("bob@localhost")
            s.rcpt("alice@localhost")
            began = time.monotonic()
            try:
                code, text = s.data(big(1))
            except (smtplib.SMTPDataError, OSError) as e:  # (before: no answer in the client's 40 s)
                code, text = getattr(e, "smtp_code", 0), repr(e).encode()
            wall = time.monotonic() - began
            # Before: no answer (the batch waited on the frozen backend for ever).
            assert code == 451, (code, text)
            assert wall < DEADLINE + 4, wall
            # The next message goes on a new connection, the frozen one given up.
            s.mail("bob@localhost")
            s.rcpt("alice@localhost")
            code, text = s.data(big(2))
            assert code == 250, (code, text)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    p = pop(hub)
    assert any(b"Subject: big 2" in b"\r\n".join(p.retr(n)[1]) for n in range(1, p.stat()[0] + 1))
    p.quit()


def writers(dsn: str) -> list[int]:
    """The backends of the hub's group commit connections (their last statement placed messages)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%INSERT INTO mailbox_message%'"
        )]


def backends(dsn: str, application_name: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s", (application_name,)
        )]


def test_a_pop3_quit_whose_lock_connection_is_frozen_holds_the_hub_only_until_the_deadline(deadline_hub, pg_dsn):
    hub = deadline_hub
    fill_big(hub, 1)
    alice, bob = pop(hub), pop(hub, "bob", "hungry")
    (locks,) = backends(pg_dsn, "mailhub pop3 locks")
    os.kill(locks, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert alice.quit().startswith(b"+OK")  # (its maildrop lock is let go in the reactor)
        assert bob.noop().startswith(b"+OK")
        # Before: the unlock waited for the frozen backend for ever, and the
        # reactor with it: bob had no answer.
        assert time.monotonic() - began < DEADLINE + 4
    finally:
        os.kill(locks, signal.SIGCONT)
    bob.quit()
    # The lock went with its backend once that ran again: alice logs in.
    deadline = time.monotonic() + 10
    while True:
        try:
            again = pop(hub)
            break
        except poplib.error_proto as e:
            assert b"IN-USE" in e.args[0] and time.monotonic() < deadline, e
            time.sleep(0.2)
    assert again.stat()[0] == 1
    again.quit()


class _SocketConnection:
    """A stand-in for a psycopg connection on one end of a socket pair (pgconn.socket, close())."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pgconn = self
        self.socket = sock.fileno()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_watchdog_cuts_a_call_past_its_deadline_and_leaves_a_quick_one_alone():
    from twisted_mailhub.store.pgtimeouts import NoAnswer, Watchdog

    dog = Watchdog(tick=0.05)
    ours, server = socket.socketpair()
    try:
        conn = _SocketConnection(ours)
        server.sendall(b"answer")
        assert dog.call(conn, 1.0, lambda c: c.sock.recv(10)) == b"answer"
        assert not conn.closed

        def wait_for_an_answer(c):
            got = c.sock.recv(10)  # (the server never answers: b"" once cut)
            raise OSError(f"the connection ended ({got!r})")

        began = time.monotonic()
        with pytest.raises(NoAnswer) as caught:
            dog.call(conn, 0.2, wait_for_an_answer)
        assert 0.2 <= time.monotonic() - began < 1.0
        assert str(caught.value) == "no answer from the database in 0.2 s"
        assert conn.closed  # (the caller makes a new one)
        assert dog._calls == {}
    finally:
        ours.close()
        server.close()


def test_a_call_answered_as_it_is_cut_keeps_its_answer_and_its_connection_goes():
    from twisted_mailhub.store.pgtimeouts import Watchdog

    dog = Watchdog(tick=0.05)
    ours, server = socket.socketpair()
    try:
        conn = _SocketConnection(ours)

        def slow_but_answered(c):
            time.sleep(0.4)  # (past the deadline; the answer was already read)
            return "rows"

        assert dog.call(conn, 0.1, slow_but_answered) == "rows"
        assert conn.closed
        assert server.recv(1) == b""  # (the socket was shut down)
    finally:
        ours.close()
        server.close()


def test_a_process_forked_after_the_watchdog_started_still_cuts_calls():
    # twistd daemonizes (forks) after makeService, where the store's first
    # calls started the watchdog thread; threads do not survive a fork.
    from twisted_mailhub.store.pgtimeouts import NoAnswer, watchdog

    ours, server = socket.socketpair()
    try:
        conn = _SocketConnection(ours)
        server.sendall(b"x")
        assert watchdog.call(conn, 5.0, lambda c: c.sock.recv(1)) == b"x"  # (the thread runs now)
        pid = os.fork()
        if pid == 0:  # the child: a call the server never answers
            code = 1
            try:
                watchdog.call(conn, 0.2, lambda c: c.sock.recv(1) or (_ for _ in ()).throw(OSError("ended")))
            except NoAnswer:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        # (before: the child waited for ever; it is killed after 10 s)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done and os.waitstatus_to_exitcode(status) == 0, "the child's call was not cut"
    finally:
        ours.close()
        server.close()


def test_an_imap_fetch_on_a_frozen_database_is_answered_unavailable_and_the_session_goes_on(deadline_hub, pg_dsn, postgresql):
    import imaplib

    hub = deadline_hub
    sent = fill_big(hub, 2)
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=40)
    c.login("alice", "secret")
    c.select("INBOX")
    typ, data = c.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(sent[0])
    frozen = server_processes(postgresql)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        try:
            typ, data = c.fetch("2", "(BODY.PEEK[])")
        except imaplib.IMAP4.error as e:  # (imaplib raises on NO)
            typ, data = "NO", [str(e).encode()]
        except OSError as e:  # (before: no answer in the client's 40 s)
            typ, data = "none", [repr(e).encode()]
        wall = time.monotonic() - began
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert typ == "NO" and b"[UNAVAILABLE]" in data[0], (typ, data)
    # (the reactor's own call: its deadline, then a new connection that cannot be made in 5 s)
    assert wall < DEADLINE + 10, wall
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(sent[1])
    c.logout()
    assert "Traceback" not in hub.log


def test_a_cluster_call_on_a_frozen_backend_is_made_again_on_a_new_connection(pg_dsn):
    database = Database(pg_dsn, what="the queue database")
    try:
        frozen = database.run_here(lambda conn: conn.info.backend_pid)
        assert backends(pg_dsn, "mailhub queue") == [frozen]  # (its name in pg_stat_activity)
        os.kill(frozen, signal.SIGSTOP)
        try:
            began = time.monotonic()
            again = database.run_here(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0], deadline=0.5)
            wall = time.monotonic() - began
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert again != frozen
        assert 0.5 <= wall < 3, wall
        assert database._all and len(database._all) == 1
    finally:
        database.close()


def test_idle_on_a_hub_whose_listen_backend_is_frozen_still_hears_of_a_delivery_on_another(two_pinging_hubs, pg_dsn):
    from tests.test_e2e_imap import Raw

    a, b = two_pinging_hubs
    r = Raw(b.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    r.cmd(b"b", b"select INBOX")
    r.send(b"c idle\r\n")
    assert r.line().startswith(b"+")
    frozen = backends(pg_dsn, "mailhub listen")
    assert len(frozen) == 2  # (one per hub)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=30) as s:
            s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: while deaf\r\n\r\nhello\r\n")
        sent = time.monotonic()
        r.sock.settimeout(15)
        # Before: the NOTIFY went to a frozen backend, and hub b, its
        # connection alive to the kernel, never heard it (no EXISTS in 15 s).
        line = r.line()
        while not line.endswith(b"EXISTS"):
            line = r.line()
        heard_in = time.monotonic() - sent
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert line == b"* 1 EXISTS"
    assert heard_in < 0.5 + DEADLINE + 4, heard_in
    r.send(b"DONE\r\n")
    assert r.until_tag(b"c")[-1].startswith(b"c OK")
    r.close()
    assert "Traceback" not in b.log


def test_an_account_removed_while_the_accounts_listen_backend_is_frozen_stops_logging_in(start_hub, pg_dsn, tmp_path):
    from twisted_mailhub.accounts import hash_password

    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(faults), "MAILHUB_TEST_PG_DEADLINE": str(DEADLINE), "MAILHUB_TEST_PG_LISTEN_PING": "0.5"}
    hub = start_hub("--auth", f"postgresql:{pg_dsn}", "--no-ftp", users=(), env=env)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO user_account (address, password) VALUES ('dave@localhost', %s)", (hash_password("pw1"),))

    def logs_in() -> bool:
        try:
            pop(hub, "dave", "pw1").quit()
            return True
        except poplib.error_proto:
            return False

    deadline = time.monotonic() + 10
    while not logs_in():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (frozen,) = backends(pg_dsn, "mailhub listen")  # (the accounts' LISTEN: the store is Maildir)
    os.kill(frozen, signal.SIGSTOP)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM user_account WHERE address = 'dave@localhost'")
        removed = time.monotonic()
        # Before: the NOTIFY went to the frozen backend, and dave went on
        # logging in (for as long as the backend stayed frozen).
        while logs_in() and time.monotonic() - removed < 15:
            time.sleep(0.2)
        refused_in = time.monotonic() - removed
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert refused_in < 0.5 + DEADLINE + 5, refused_in


def test_the_hub_stops_at_once_while_a_read_waits_on_a_frozen_backend_with_the_default_deadline(start_hub, pg_dsn):
    # (no sitecustomize: CALL_DEADLINE is its 30 s)
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    code, stopped_in = stop_while_a_retr_waits(hub, pg_dsn)
    # Before: the shutdown waited for the thread, up to the 30 s deadline
    # (the hub was killed with SIGKILL after 15 s).
    assert code != -signal.SIGKILL, code
    assert stopped_in < 5, stopped_in


def test_a_hub_with_its_queue_in_postgresql_stops_at_once_while_the_queues_backend_is_frozen(start_hub, pg_dsn):
    # (a Maildir store: only the cluster part hurries the shutdown)
    hub = start_hub("--queue", f"postgresql:{pg_dsn}", "--no-ftp")
    frozen = []
    deadline = time.monotonic() + 10
    while not frozen and time.monotonic() < deadline:
        frozen = backends(pg_dsn, "mailhub queue")
        time.sleep(0.1)
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # (the queue's next look, every second, now waits in its thread)
        began = time.monotonic()
        code = hub.stop()
        stopped_in = time.monotonic() - began
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # Before: the queue's thread pool was joined with the look waiting up
    # to the 30 s deadline (killed with SIGKILL after 15 s).
    assert code != -signal.SIGKILL, code
    assert stopped_in < 5, stopped_in
