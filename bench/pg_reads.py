"""
The cost of reading message bodies over the PostgreSQL store: POP3 RETR
and IMAP FETCH BODY[] rates and the hub's CPU per message, on a private
PostgreSQL (tests/pgserver.py) whose database is filled with COPY before
the hub starts (bench/reactor_stall.py's messages: about 8 KB, CRLF).

    python3 bench/pg_reads.py --messages 5000 --rounds 3

Each round: RETR of every message one at a time (one POP3 session), then
FETCH 1:* (BODY.PEEK[]) in one command, then FETCH n (BODY.PEEK[]) of
--singles messages one command at a time (one IMAP session). Run it
from two trees in turn (old, new, old, new ...) to compare them: the hub
it starts runs the tree this script was imported from.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from bench.reactor_stall import fill_postgresql, search_message  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402


def timed(pid: int, action) -> tuple[float, float]:
    """(wall seconds, hub CPU seconds) of C{action()}."""
    cpu = cpu_seconds(pid)
    began = time.perf_counter()
    action()
    return time.perf_counter() - began, cpu_seconds(pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--singles", type=int, default=1000, help="FETCH n BODY.PEEK[] commands, one at a time, per round")
    options = parser.parse_args()
    from tests.pgserver import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("needs PostgreSQL installed (initdb not found)")
    count = options.messages
    expected = [search_message(i) for i in range(count)]
    data = tempfile.mkdtemp(prefix="pg-reads-", dir=os.environ.get("TMPDIR", "/tmp"))
    server = PostgresServer(bindir).start()
    try:
        dsn = server.create_database()
        fill_postgresql(dsn, count)
        hub = HubProcess(os.path.join(data, "hub"), ["--no-ftp", "--no-smtp", "--store", f"postgresql:{dsn}"]).start()
        try:
            pid = hub.process.pid
            results: dict[str, list[tuple[float, float]]] = {"RETR": [], "FETCH 1:*": [], "FETCH n": []}
            for _ in range(options.rounds):
                p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=120)
                p.user("alice")
                p.pass_("secret")

                def retr_all() -> None:
                    for n in range(1, count + 1):
                        lines = p.retr(n)[1]
                        if n % 997 == 1:
                            assert b"".join(line + b"\r\n" for line in lines) == expected[n - 1]

                results["RETR"].append(timed(pid, retr_all))
                p.quit()
                c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=120)
                c.login("alice", "secret")
                c.select("INBOX", readonly=True)

                def fetch_all() -> None:
                    typ, got = c.fetch("1:*", "(BODY.PEEK[])")
                    assert typ == "OK"
                    bodies = [item[1] for item in got if isinstance(item, tuple)]
                    assert bodies == expected

                def fetch_each() -> None:
                    for n in range(1, options.singles + 1):
                        typ, got = c.fetch(str(n * 7 % count + 1), "(BODY.PEEK[])")
                        assert typ == "OK" and got[0][1] == expected[n * 7 % count]

                results["FETCH 1:*"].append(timed(pid, fetch_all))
                results["FETCH n"].append(timed(pid, fetch_each))
                c.logout()
            for name, runs in results.items():
                n = count if name != "FETCH n" else options.singles
                rates = [n / wall for wall, _ in runs]
                cpus = [cpu * 1e6 / n for _, cpu in runs]
                print(f"{name:10} {n} messages x {len(runs)} rounds: median {statistics.median(rates):.0f} msg/s "
                      f"({', '.join(f'{r:.0f}' for r in rates)}); hub CPU median {statistics.median(cpus):.0f} us/msg "
                      f"({', '.join(f'{c:.0f}' for c in cpus)})", flush=True)
        finally:
            hub.stop()
    finally:
        server.remove()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
