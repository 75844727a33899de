"""
Several real hubs on one real PostgreSQL database (C{--store
postgresql:DSN}), spoken to with real clients: what one hub stores the
others serve, UIDs stay unique and dense however the deliveries are spread,
and nothing acknowledged is lost when a hub is killed.
"""

from __future__ import annotations

import imaplib
import poplib
import re
import smtplib
import threading
import time

import psycopg
import pytest

from tests.test_e2e_imap import Raw, append, login

MESSAGE = b"From: Bob <bob@localhost>\r\nTo: alice@localhost\r\nSubject: lunch\r\n\r\nAt noon?\r\n"


@pytest.fixture
def start_cluster(start_hub, pg_dsn):
    """C{start_cluster(n)}: n hubs on one new database; returns them."""

    def start(n: int, *args: str):
        return [start_hub("--store", f"postgresql:{pg_dsn}", *args) for _ in range(n)]

    return start


def uids_in_inbox(dsn: str, address: str = "alice@localhost") -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [
            uid
            for (uid,) in conn.execute(
                "SELECT uid FROM mailbox_message JOIN mailbox ON mailbox.id = mailbox_id"
                " JOIN account ON account.id = account_id WHERE address = %s AND name = 'INBOX' ORDER BY uid",
                (address,),
            )
        ]


def test_mail_delivered_on_one_hub_is_read_over_imap_and_pop3_on_another(start_cluster):
    a, b = start_cluster(2)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    c = login(b)
    typ, data = c.select("INBOX")
    assert data == [b"1"]
    typ, data = c.uid("FETCH", "1", "(BODY.PEEK[] FLAGS)")
    assert data[0][1].endswith(MESSAGE)
    c.logout()
    p = poplib.POP3("127.0.0.1", a.ports["pop3"])
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 1
    assert b"\r\n".join(p.retr(1)[1]).endswith(MESSAGE.rstrip(b"\r\n"))
    p.quit()


def test_idle_on_hub_b_hears_of_a_delivery_on_hub_a_within_a_second(start_cluster):
    a, b = start_cluster(2)
    r = Raw(b.ports["imap"])
    r.cmd(b"a", b"login alice secret")
    r.cmd(b"b", b"select INBOX")
    r.send(b"c idle\r\n")
    assert r.line().startswith(b"+")
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    sent = time.monotonic()
    line = r.line()
    while not line.endswith(b"EXISTS"):
        line = r.line()
    delay = time.monotonic() - sent
    assert line == b"* 1 EXISTS"
    assert delay < 1.0, delay
    r.send(b"DONE\r\n")
    assert r.until_tag(b"c")[-1].startswith(b"c OK")
    r.close()


def test_flag_change_on_hub_a_reaches_a_session_on_hub_b(start_cluster):
    a, b = start_cluster(2)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    watcher = Raw(b.ports["imap"])
    watcher.cmd(b"a", b"login alice secret")
    watcher.cmd(b"b", b"select INBOX")
    c = login(a)
    c.select("INBOX")
    c.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
    c.logout()
    deadline = time.monotonic() + 5
    seen = []
    while time.monotonic() < deadline:
        seen += watcher.cmd(b"n", b"noop")
        if any(b"FETCH" in line and b"\\Flagged" in line for line in seen):
            break
    assert any(re.match(rb"\* 1 FETCH \(.*\\Flagged", line) for line in seen), seen
    watcher.close()


def test_32_smtp_clients_over_3_hubs_get_unique_dense_uids(start_cluster, pg_dsn):
    hubs = start_cluster(3)
    per_client = 600 // 32 + 1
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            hub = hubs[n % 3]
            with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=60) as s:
                for i in range(per_client):
                    s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE + b"%d/%d\r\n" % (n, i))
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors, errors[:3]
    total = 32 * per_client
    assert uids_in_inbox(pg_dsn) == list(range(1, total + 1))


def test_kill_9_of_a_hub_loses_no_acknowledged_message(start_cluster, pg_dsn):
    a, b = start_cluster(2)
    acknowledged = []
    stop = threading.Event()

    def sender() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=30) as s:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE + b"n=%d\r\n" % i)
                    acknowledged.append(i)
        except (smtplib.SMTPException, OSError):
            pass  # the hub died under us

    senders = [threading.Thread(target=sender) for _ in range(4)]
    for t in senders:
        t.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    a.kill()
    stop.set()
    for t in senders:
        t.join(30)
    c = login(b)
    typ, data = c.select("INBOX")
    stored = int(data[0])
    c.logout()
    assert stored >= len(acknowledged) > 0


def test_delivery_when_the_database_is_down_gets_451_then_works_again(start_cluster, postgresql):
    [a] = start_cluster(1)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    postgresql.stop()
    try:
        with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
            with pytest.raises(smtplib.SMTPDataError) as e:
                s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
            assert e.value.smtp_code == 451
    finally:
        postgresql.restart()
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    c = login(a)
    typ, data = c.select("INBOX")
    assert data == [b"2"]
    c.logout()


def test_pop3_maildrop_in_use_on_one_hub_is_in_use_on_another(start_cluster):
    a, b = start_cluster(2)
    first = poplib.POP3("127.0.0.1", a.ports["pop3"])
    first.user("alice")
    first.pass_("secret")
    second = poplib.POP3("127.0.0.1", b.ports["pop3"])
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("secret")
    second.quit()
    first.quit()
    third = poplib.POP3("127.0.0.1", b.ports["pop3"])
    third.user("alice")
    assert third.pass_("secret").startswith(b"+OK")
    third.quit()


def test_imap_when_the_database_is_down_says_unavailable_then_works_again(start_cluster, postgresql):
    [a] = start_cluster(1)
    c = login(a)
    c.select("INBOX")
    postgresql.stop()
    try:
        typ, data = c.create("Later")
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        typ, data = c.noop()
        assert typ == "OK", data  # the session goes on
    finally:
        postgresql.restart()
    typ, data = c.create("Later")
    assert typ == "OK", data
    c.logout()


def test_idle_on_hub_b_hears_of_flag_changes_and_expunges_made_on_hub_a_within_a_second(start_cluster):
    a, b = start_cluster(2)
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
        s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE)
    watcher = Raw(b.ports["imap"])
    watcher.cmd(b"a", b"login alice secret")
    watcher.cmd(b"b", b"select INBOX")
    watcher.send(b"c idle\r\n")
    assert watcher.line().startswith(b"+")
    c = login(a)
    c.select("INBOX")

    def heard(pattern: bytes) -> float:
        started = time.monotonic()
        line = watcher.line()
        while not re.match(pattern, line):
            line = watcher.line()
        return time.monotonic() - started

    c.uid("STORE", "1", "+FLAGS", r"(\Flagged)")
    assert heard(rb"\* 1 FETCH \(.*FLAGS \(.*\\Flagged") < 1.0
    c.uid("STORE", "2", "+FLAGS", r"(\Deleted)")
    assert heard(rb"\* 2 FETCH \(.*FLAGS \(.*\\Deleted") < 1.0
    c.expunge()
    assert heard(rb"\* 2 EXPUNGE") < 1.0
    c.logout()
    watcher.send(b"DONE\r\n")
    assert watcher.until_tag(b"c")[-1].startswith(b"c OK")
    watcher.close()


def test_a_database_restarted_under_load_gives_temporary_errors_then_all_works_and_nothing_acknowledged_is_lost(start_cluster, postgresql, pg_dsn):
    hubs = start_cluster(2)
    acked: set[str] = set()  # Subject of every message a client was told is stored
    errors: dict[str, list[str]] = {"smtp": [], "imap": [], "pop3": []}
    after: dict[str, int] = {"smtp": 0, "imap": 0, "pop3": 0}  # successes since the restart
    restarted = threading.Event()
    imap_in = threading.Event()  # the IMAP client logged in (before the database stops)
    stop = threading.Event()
    broken: list[BaseException] = []

    def ok(kind: str, subject: str | None = None) -> None:
        if subject is not None:
            acked.add(subject)
        if restarted.is_set():
            after[kind] += 1

    def smtp_client(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", hubs[n % 2].ports["smtp"], timeout=30) as s:
                    while not stop.is_set():
                        subject = f"smtp {n}-{i}"
                        i += 1
                        try:
                            s.sendmail("bob@localhost", ["alice@localhost"], MESSAGE.replace(b"lunch", subject.encode()))
                            ok("smtp", subject)
                        except smtplib.SMTPRecipientsRefused as e:
                            errors["smtp"] += [f"{code} {text!r}" for code, text in e.recipients.values()]
                        except smtplib.SMTPResponseException as e:
                            errors["smtp"].append(f"{e.smtp_code} {e.smtp_error!r}")
                            if e.smtp_code == 421:
                                break
            except smtplib.SMTPServerDisconnected:
                errors["smtp"].append("disconnected")
            except BaseException as e:  # reported below
                broken.append(e)
                return

    def imap_client() -> None:
        i = 0
        try:
            c = login(hubs[1])
            imap_in.set()
            while not stop.is_set():
                subject = f"imap {i}"
                i += 1
                typ, data = c.append("INBOX", None, None, MESSAGE.replace(b"lunch", subject.encode()))
                if typ == "OK":
                    ok("imap", subject)
                else:
                    errors["imap"].append(data[0].decode())
                typ, data = c.select("INBOX")
                if typ != "OK":
                    errors["imap"].append(data[0].decode())
            c.logout()
        except BaseException as e:  # reported below
            broken.append(e)

    def pop3_client() -> None:
        try:
            while not stop.is_set():
                p = poplib.POP3("127.0.0.1", hubs[0].ports["pop3"], timeout=30)
                try:
                    p.user("alice")
                    p.pass_("secret")
                    p.stat()
                    ok("pop3")
                except poplib.error_proto as e:
                    errors["pop3"].append(e.args[0].decode())
                p.quit()
        except BaseException as e:  # reported below
            broken.append(e)

    def wait_for(what, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not broken:
            if what():
                return True
            time.sleep(0.02)
        return False

    clients = [threading.Thread(target=smtp_client, args=(n,)) for n in range(4)]
    clients += [threading.Thread(target=imap_client), threading.Thread(target=pop3_client)]
    for t in clients:
        t.start()
    try:
        assert wait_for(lambda: len(acked) >= 20 and imap_in.is_set(), 30), broken
        postgresql.stop()
        try:
            assert wait_for(lambda: all(errors.values()), 20), (errors, broken, hubs[1].log[-3000:])
        finally:
            restarted.set()
            postgresql.restart()
        assert wait_for(lambda: after["smtp"] >= 20 and after["imap"] >= 2 and after["pop3"] >= 2, 30), (after, errors, broken)
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    assert not broken, (broken, hubs[1].log[-3000:])
    # Every refusal was a temporary one (RFC 5321 4xx, RFC 5530 UNAVAILABLE,
    # RFC 3206 SYS/TEMP), and each kind of client saw one.
    assert errors["smtp"] and all(e[:3] in ("451", "421") for e in errors["smtp"]), errors["smtp"]
    assert errors["imap"] and all(e.startswith("[UNAVAILABLE]") for e in errors["imap"]), errors["imap"]
    assert errors["pop3"] and all(e.startswith("-ERR [SYS/TEMP]") for e in errors["pop3"]), errors["pop3"]
    with psycopg.connect(pg_dsn) as conn:
        stored = {
            m.group(1).decode()
            for (head,) in conn.execute("SELECT body FROM message")
            for m in [re.search(rb"Subject: (\w+ [\d-]+)\r\n", bytes(head))]
            if m
        }
    lost = acked - stored
    assert not lost, sorted(lost)[:10]


def test_a_big_message_is_fetched_byte_exact_in_slices(start_cluster):
    [a] = start_cluster(1)
    big = b"Subject: big\r\n\r\n" + b"".join(b"%07d " % n + bytes(range(33, 123)) + b"\r\n" for n in range(40_000))
    c = login(a)
    uid = append(c, message=big)
    c.select("INBOX", readonly=True)
    typ, data = c.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    assert data[0][1] == big
    assert b"RFC822.SIZE %d" % len(big) in data[0][0]
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[]<100.50>)")
    assert data[0][1] == big[100:150]
    assert b"BODY[]<100>" in data[0][0]
    pieces = []
    for start in range(0, len(big), 1 << 20):  # as Thunderbird takes a big message
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[]<%d.%d>)" % (start, 1 << 20))
        pieces.append(data[0][1])
    assert b"".join(pieces) == big
    typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[]<%d.10>)" % (len(big) + 5))
    assert data[0][1] == b""
    c.logout()
