"""
How long one IMAP session waits while another opens a Maildir that
another program filled (bare-LF files named with their S=, listed on
trust), on a slow disk: every fsync of the hub sleeps --fsync-delay
seconds (a sitecustomize.py on its PYTHONPATH, as
tests/test_e2e_slow_fsync.py does). Bob sends NOOP after NOOP; alice
logs in, SELECTs her INBOX and asks FETCH 1:* (RFC822.SIZE), which needs
every file made CRLF (copies, one flush for them all, renames; before
stop 18 an fsync per file; syncfs is slowed as fsync is). Reported:
alice's SELECT and FETCH times, and the longest and median wait of bob's
NOOPs meanwhile (milliseconds, wall). Run it from each tree to compare (the hub is the
tree this script is in).

    python3 bench/reactor_stall.py
    python3 bench/reactor_stall.py --count 100 --fsync-delay 0.05 --rounds 3

With --anatomy-mb N: instead, alice views the web Anatomy page of one
message of N MB (bench/imap_structure.py's: a text part and three base64
attachments), --views times, while bob sends NOOP after NOOP; reported
per view: its wall time, the hub's CPU for it, and bob's longest wait.

    python3 bench/reactor_stall.py --anatomy-mb 43 --views 4

With --search-count N: instead, alice's INBOX holds N messages (about 8
KB each, CRLF, one in 100 with the word searched for); she SELECTs it
and runs SEARCH BODY --views times while bob sends NOOP after NOOP;
reported per SEARCH: its wall time, the hub's CPU for it, and bob's
longest and median wait meanwhile.

    python3 bench/reactor_stall.py --search-count 20000 --views 3

With --store postgresql, --search-count's messages are in a PostgreSQL
database instead (a private server started and removed by the script, as
the tests' fixture does; the messages put in with COPY before the hub
starts).

    python3 bench/reactor_stall.py --search-count 20000 --views 3 --store postgresql

With --store memory, they are in the hub's memory store instead (put in
with IMAP APPEND after the hub starts, so fewer make a quick run).

    python3 bench/reactor_stall.py --search-count 5000 --views 3 --store memory
"""

from __future__ import annotations

import argparse
import imaplib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hubprocess import HubProcess  # noqa: E402
from tests.test_e2e_slow_fsync import SITECUSTOMIZE  # noqa: E402  (fsync slowed by MAILHUB_TEST_FSYNC_DELAY)



def fill(maildir: str, count: int) -> None:
    """C{count} bare-LF messages in C{cur/}, as another MDA leaves them (S= their stored size)."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    start = int(time.time()) - count
    for i in range(count):
        body = (f"From: someone@example.org\nSubject: message {i}\n\n" + "a line of the body, stored with a bare LF\n" * 200).encode()
        name = f"{start + i}.M{i}P1Q{i}.other,S={len(body)}:2,S"
        with open(os.path.join(maildir, "cur", name), "wb") as f:
            f.write(body)


def one_round(count: int, delay: float) -> tuple[float, float, float, float]:
    data = tempfile.mkdtemp(prefix="reactor-stall-", dir=os.environ.get("TMPDIR", "/tmp"))
    faults = os.path.join(data, "faults")
    os.makedirs(faults)
    with open(os.path.join(faults, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    try:
        hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp"], env={"PYTHONPATH": faults, "MAILHUB_TEST_FSYNC_DELAY": str(delay)})
        fill(hub.maildir("alice@localhost"), count)
        hub.start()
        try:
            bob = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            bob.login("bob", "hungry")
            bob.select("INBOX")
            bob.noop()
            waits: list[float] = []
            stop = threading.Event()

            def ping() -> None:
                while not stop.is_set():
                    t = time.perf_counter()
                    bob.noop()
                    waits.append(time.perf_counter() - t)
                    time.sleep(0.01)

            pinger = threading.Thread(target=ping)
            pinger.start()
            time.sleep(0.2)
            alice = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            alice.login("alice", "secret")
            t = time.perf_counter()
            typ, data_ = alice.select("INBOX", readonly=True)
            selected = time.perf_counter() - t
            assert typ == "OK" and data_ == [str(count).encode()], (typ, data_)
            t = time.perf_counter()
            typ, sizes = alice.fetch("1:*", "(RFC822.SIZE)")
            fetched = time.perf_counter() - t
            assert typ == "OK" and len(sizes) == count
            time.sleep(0.2)
            stop.set()
            pinger.join()
            alice.logout()
            bob.logout()
            return selected * 1000, fetched * 1000, max(waits) * 1000, statistics.median(waits) * 1000
        finally:
            hub.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def anatomy_views(mb: int, views: int) -> None:
    from bench.cpu import cpu_seconds
    from bench.imap_structure import big_message
    from tests.web_helpers import WebClient

    data = tempfile.mkdtemp(prefix="reactor-stall-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp", "--max-message-size", str((mb + 8) * 1024 * 1024)]).start()
        try:
            message = big_message(mb)
            m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            m.login("alice", "secret")
            assert m.append("INBOX", None, None, message)[0] == "OK"
            m.logout()
            bob = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            bob.login("bob", "hungry")
            bob.select("INBOX")
            web = WebClient(hub)
            web.login("alice", "secret")
            for n in range(views):
                result = {}

                def view() -> None:
                    t = time.perf_counter()
                    page = web.get("/mail/INBOX/1/anatomy")
                    assert page.status == 200, page.status
                    result["wall"] = time.perf_counter() - t

                before = cpu_seconds(hub.process.pid)
                viewer = threading.Thread(target=view)
                viewer.start()
                longest = 0.0
                while viewer.is_alive():
                    t = time.perf_counter()
                    bob.noop()
                    longest = max(longest, time.perf_counter() - t)
                    time.sleep(0.005)
                viewer.join()
                cpu = cpu_seconds(hub.process.pid) - before
                print(f"Anatomy of a {len(message) / 1e6:.1f} MB message, view {n + 1}: {result['wall'] * 1000:.0f} ms wall, "
                      f"{cpu * 1000:.0f} ms hub CPU; bob's NOOP meanwhile: longest {longest * 1000:.0f} ms", flush=True)
            bob.logout()
        finally:
            hub.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


def search_message(i: int) -> bytes:
    """Message C{i} of --search-count's folder: about 8 KB, CRLF, the word "needle" in one of 100."""
    line = "a line of the body of an ordinary message, nothing to find here\r\n" * 120
    word = "needle" if i % 100 == 7 else "hay"
    return (f"From: someone{i % 50}@example.org\r\nSubject: message {i}\r\n\r\n{line}the {word} word\r\n").encode()


def fill_postgresql(dsn: str, count: int) -> None:
    """alice's INBOX in the mail database at C{dsn} (schema made here) with --search-count's messages, as if delivered."""
    import psycopg

    from twisted_mailhub.store import pgschema
    from twisted_mailhub.store.postgresql import ensure_account

    with psycopg.connect(dsn, autocommit=True) as conn:
        pgschema.check(conn, True)
        account = ensure_account(conn, "alice@localhost")
        mailbox = conn.execute("SELECT id FROM mailbox WHERE account_id = %s AND name = 'INBOX'", (account,)).fetchone()[0]
        start = time.time() - count
        with conn.transaction():
            with conn.cursor().copy("COPY message (id, size, body) FROM STDIN") as copy:
                for i in range(count):
                    body = search_message(i)
                    copy.write_row((i + 1, len(body), body))
            with conn.cursor().copy("COPY mailbox_message (mailbox_id, uid, message_id, key, flags, recent, internal_date, modseq, size) FROM STDIN") as copy:
                for i in range(count):
                    copy.write_row((mailbox, i + 1, i + 1, f"bench{i}", "{\\Seen}", False, start + i, 1, len(search_message(i))))
            conn.execute("SELECT setval('message_id_seq', %s)", (count,))
            conn.execute("UPDATE mailbox SET uid_next = %s, highest_modseq = 1 WHERE id = %s", (count + 1, mailbox))


def search_body(count: int, searches: int, store: str = "maildir") -> None:
    from bench.cpu import cpu_seconds

    data = tempfile.mkdtemp(prefix="reactor-stall-", dir=os.environ.get("TMPDIR", "/tmp"))
    server = None
    try:
        if store == "postgresql":
            from tests.pgserver import PostgresServer, find_bindir

            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("--store postgresql needs PostgreSQL installed (initdb not found)")
            server = PostgresServer(bindir).start()
            dsn = server.create_database()
            fill_postgresql(dsn, count)
            hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp", "--store", f"postgresql:{dsn}"])
        elif store == "memory":
            hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp", "--store", "memory"])
        else:
            hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp"])
            maildir = hub.maildir("alice@localhost")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(maildir, sub), exist_ok=True)
            start = int(time.time()) - count
            for i in range(count):
                body = search_message(i)
                with open(os.path.join(maildir, "cur", f"{start + i}.M{i}P1Q{i}.bench,S={len(body)}:2,S"), "wb") as f:
                    f.write(body)
        hub.start()
        try:
            if store == "memory":
                filler = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
                filler.login("alice", "secret")
                for i in range(count):
                    assert filler.append("INBOX", "(\\Seen)", None, search_message(i))[0] == "OK"
                filler.logout()
            bob = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            bob.login("bob", "hungry")
            bob.select("INBOX")
            alice = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
            alice.login("alice", "secret")
            typ, data_ = alice.select("INBOX", readonly=True)
            assert typ == "OK" and data_ == [str(count).encode()], (typ, data_)
            for n in range(searches):
                result = {}

                def search() -> None:
                    t = time.perf_counter()
                    typ, found = alice.search(None, "BODY", "needle")
                    result["wall"] = time.perf_counter() - t
                    assert typ == "OK" and len(found[0].split()) == len(range(7, count, 100)), (typ, found)

                before = cpu_seconds(hub.process.pid)
                searcher = threading.Thread(target=search)
                searcher.start()
                waits = []
                while searcher.is_alive():
                    t = time.perf_counter()
                    bob.noop()
                    waits.append(time.perf_counter() - t)
                    time.sleep(0.005)
                searcher.join()
                cpu = cpu_seconds(hub.process.pid) - before
                print(f"SEARCH BODY over {count} messages ({store}), search {n + 1}: {result['wall'] * 1000:.0f} ms wall, {cpu * 1000:.0f} ms hub CPU; "
                      f"bob's NOOP meanwhile ({len(waits)}): longest {max(waits) * 1000:.0f} ms, median {statistics.median(waits) * 1000:.1f} ms", flush=True)
            alice.logout()
            bob.logout()
        finally:
            hub.stop()
    finally:
        if server is not None:
            server.remove()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--fsync-delay", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--anatomy-mb", type=int, default=0)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--search-count", type=int, default=0)
    parser.add_argument("--store", choices=("maildir", "postgresql", "memory"), default="maildir", help="--search-count's store (postgresql: a private server, tests/pgserver.py; memory: filled with APPEND)")
    args = parser.parse_args()
    if args.search_count:
        for _ in range(args.rounds):
            search_body(args.search_count, args.views, args.store)
        return
    if args.anatomy_mb:
        for _ in range(args.rounds):
            anatomy_views(args.anatomy_mb, args.views)
        return
    for _ in range(args.rounds):
        selected, fetched, longest, median = one_round(args.count, args.fsync_delay)
        print(f"{args.count} bare-LF files, fsync {args.fsync_delay * 1000:.0f} ms: alice SELECT {selected:.0f} ms, FETCH 1:* (RFC822.SIZE) {fetched:.0f} ms; "
              f"bob's NOOP meanwhile: longest {longest:.0f} ms, median {median:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
