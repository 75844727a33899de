#!/usr/bin/env python3
"""
Benchmark: hubs on PostgreSQL (C{--store postgresql:DSN}), with the
Maildir store measured beside them in the same run.

    python3 bench/cluster.py                 # everything
    python3 bench/cluster.py --quick         # fewer messages, a 20,000-message mailbox
    python3 bench/cluster.py --only smtp,store,idle,fetch
    python3 bench/cluster.py --quick --only smtp --rounds 3
    python3 bench/cluster.py --quick --only smtp --client smtp-source --pin

Parts:

 - smtp: 32 SMTP clients sending 1 KB messages (pipelined envelope, as
   bench/smtp_pop3.py) to one hub on Maildir, one hub on PostgreSQL, and
   two hubs on the same database (clients split between them). Durable in
   every case: Maildir fsyncs; PostgreSQL runs with C{fsync = on} and the
   hub with C{synchronous_commit = on}. Reported: messages/s, and the CPU
   seconds the hubs and PostgreSQL used per second of run (how much spare
   CPU PostgreSQL had). C{--client smtp-source} drives the load with
   Postfix's C load generator (/usr/sbin/smtp-source: one command at a
   time, little CPU of its own) instead of this script's asyncio client
   (pipelined envelope, 60-80 µs of Python CPU per message). C{--pin}
   gives each hub a CPU of its own (taskset: hub i on CPU i) and puts
   PostgreSQL and the client on the last CPU, so that one hub never shares
   its core with them; with two hubs on two cores the second hub shares
   its core with PostgreSQL and the client (all a 2-core machine allows).
 - store: the store alone, without SMTP: C{--clients} loops in one
   process deliver 1 KB messages straight through
   C{PostgresStore.deliver} (group commit, fsync on). Reported: messages/s
   and that process's CPU per message: the store's share of a hub's.
 - idle: the delay from a message's C{250} on hub A to C{* n EXISTS} in an
   IMAP IDLE session on hub B: median and 99th percentile.
 - fetch: a mailbox of 100,000 messages put into the database directly,
   then over IMAP: C{SELECT} + C{FETCH 1:* (UID FLAGS RFC822.SIZE)}, and
   C{FETCH n:m BODY[]} messages/s.

PostgreSQL is Debian's, started for the run by tests/pgserver.py into a
temp folder (as the postgres user when root) and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from arguments import names_of  # noqa: E402
from smtp_pop3 import cpu_seconds, smtp_run  # noqa: E402

from tests.hubprocess import HubProcess  # noqa: E402
from tests.pgserver import PostgresServer, find_bindir  # noqa: E402


class PostgresCPU:
    """
    CPU used by one PostgreSQL server's processes (its postmaster and the
    postmaster's children), read from /proc: other servers on the machine
    (other benchmarks, tests) are not counted.
    """

    def __init__(self, server: PostgresServer):
        self.server = server

    def _postmaster(self) -> int:
        with open(os.path.join(self.server.data, "postmaster.pid")) as f:
            return int(f.readline())

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """pid -> (what it is: "backend" for a client's connection, else its title, CPU seconds so far)."""
        postmaster = self._postmaster()
        found: dict[int, tuple[str, float]] = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(pid) != postmaster and int(fields[1]) != postmaster:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError, ValueError):
                continue
            kind = "backend" if "127.0.0.1(" in title else ("postmaster" if int(pid) == postmaster else title.replace("postgres: ", ""))
            found[int(pid)] = (kind, cpu_seconds(int(pid)))
        return found

    @staticmethod
    def used(before: dict, after: dict) -> tuple[float, float, float]:
        """(all, client backends, the busiest backend) CPU seconds between two snapshots."""
        total = backends = busiest = 0.0
        for pid, (kind, cpu) in after.items():
            spent = cpu - before.get(pid, (kind, 0.0))[1]
            total += spent
            if kind == "backend":
                backends += spent
                busiest = max(busiest, spent)
        return total, backends, busiest


def pin(pid: int, cpu: int) -> None:
    """Keep process C{pid} and all its threads (and the children it forks later) on CPU C{cpu}."""
    import subprocess

    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL)


def start_hubs(n: int, store: str, folder: str, pinned: bool = False) -> list[HubProcess]:
    hubs = []
    for i in range(n):
        data = os.path.join(folder, f"hub{i}-{time.monotonic_ns()}")
        os.makedirs(data)
        hubs.append(HubProcess(data, ["--store", store], users=["alice:secret", "bob:hungry"]).start())
        if pinned:
            pin(hubs[-1].process.pid, i % (os.cpu_count() or 1))
    return hubs


def stored(hubs: list[HubProcess], dsn: str | None) -> int:
    """Messages in alice's INBOX: in the database, or in the (first) hub's Maildir."""
    if dsn:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM mailbox_message").fetchone()[0]
    maildir = hubs[0].maildir("alice@localhost")
    return sum(len(os.listdir(os.path.join(maildir, sub))) for sub in ("new", "cur") if os.path.isdir(os.path.join(maildir, sub)))


def smtp_source_run(hubs: list[HubProcess], clients: int, count: int, cpu: int | None) -> tuple[float, float]:
    """
    Postfix's smtp-source sends C{count} messages of 1 KB over C{clients}
    sessions spread over C{hubs} (one smtp-source per hub), each session
    sending its messages over one connection (-d). Returns (seconds, the
    CPU seconds smtp-source used).
    """
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    runs = []
    for i, hub in enumerate(hubs):
        sessions = clients // len(hubs) + (1 if i < clients % len(hubs) else 0)
        command = [SMTP_SOURCE, "-d", "-s", str(sessions), "-m", str(count // len(hubs)), "-l", "1000",
                   "-f", "bob@localhost", "-t", "alice@localhost", "-M", "localhost", f"127.0.0.1:{hub.ports['smtp']}"]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu)] + command
        runs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for run in runs:
        _, err = run.communicate()
        if run.returncode:
            raise SystemExit(f"smtp-source failed: {err.decode(errors='replace').strip()}")
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


SMTP_SOURCE = "/usr/sbin/smtp-source"


def idle_ticks() -> list[int]:
    """Each CPU's idle + iowait time so far (/proc/stat, in clock ticks)."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                out.append(int(fields[3]) + int(fields[4]))
    return out


def transactions(dsn: str) -> int:
    """The database's transaction counter (each write transaction takes one id)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT txid_current()").fetchone()[0]


def smtp_part(label: str, hubs: list[HubProcess], clients: int, count: int, pg: PostgresCPU | None = None, dsn: str | None = None,
              client: str = "asyncio", client_cpu: int | None = None) -> dict:
    """
    C{clients} SMTP clients (spread over C{hubs}) send C{count} 1 KB
    messages. Prints and returns the rate and the CPU per message (µs) of
    each hub, of PostgreSQL (all its processes; its client backends; the
    busiest backend) and of the clients (this process, or smtp-source).
    """
    async def run():
        shares = [count // clients] * clients
        tasks = []
        start = time.perf_counter()
        for i, share in enumerate(shares):
            hub = hubs[i % len(hubs)]
            tasks.append(smtp_run(hub.ports["smtp"], b"alice@localhost", 1, share, 1024))
        results = await asyncio.gather(*tasks)
        per_hub = [sum(len(r[1]) for i, r in enumerate(results) if i % len(hubs) == h) for h in range(len(hubs))]
        return time.perf_counter() - start, per_hub

    idle = idle_ticks()
    hub_cpu = [cpu_seconds(h.process.pid) for h in hubs]
    pg_before = pg.snapshot() if pg else {}
    own_cpu = time.process_time()
    xids = transactions(dsn) if dsn else 0
    if client == "smtp-source":
        # Counted where they land: smtp-source prints no per-message result.
        already = stored(hubs, dsn)
        elapsed, own_cpu = smtp_source_run(hubs, clients, count, client_cpu)
        accepted = stored(hubs, dsn) - already
        per_hub = [accepted // len(hubs)] * len(hubs)  # each hub was sent the same share
    else:
        elapsed, per_hub = asyncio.run(run())
        accepted = sum(per_hub)
        own_cpu = time.process_time() - own_cpu
    hub_cpu = [cpu_seconds(h.process.pid) - c for h, c in zip(hubs, hub_cpu)]
    tick = os.sysconf("SC_CLK_TCK")
    idle = [(b - a) / tick / elapsed for a, b in zip(idle, idle_ticks())]
    pg_all, pg_backends, pg_busiest = PostgresCPU.used(pg_before, pg.snapshot()) if pg else (0.0, 0.0, 0.0)
    commits = transactions(dsn) - xids - 1 if dsn else 0
    rate = accepted / elapsed
    per = 1e6 / max(accepted, 1)
    result = {
        # Each hub's CPU per message it took.
        "rate": rate, "hub_us": [c * 1e6 / max(n, 1) for c, n in zip(hub_cpu, per_hub)], "pg_us": pg_all * per, "pg_backends_us": pg_backends * per,
        "pg_busiest_us": pg_busiest * per, "clients_us": own_cpu * per,
        "cores": (sum(hub_cpu) + pg_all + own_cpu) / elapsed, "idle": sum(idle),
    }
    print(f"  {label:28s} {rate:6.0f} msgs/s  ({accepted} in {elapsed:.2f} s; CPU in cores: hubs {sum(hub_cpu) / elapsed:.2f},"
          f" PostgreSQL {pg_all / elapsed:.2f}, clients {own_cpu / elapsed:.2f}, of {os.cpu_count()}"
          + (f"; {accepted / max(commits, 1):.1f} messages per commit" if dsn else "") + ")", flush=True)
    print(f"  {'':28s} CPU per message: {'hub' if len(hubs) == 1 else 'each hub'} {' / '.join(f'{u:.0f}' for u in result['hub_us'])} µs"
          + (f", PostgreSQL {result['pg_us']:.0f} µs (client backends {result['pg_backends_us']:.0f}, the busiest"
             f" {result['pg_busiest_us']:.0f})" if pg else "")
          + f", clients {result['clients_us']:.0f} µs", flush=True)
    # What nobody used: with other work on the machine this is what tells
    # whether the hubs and PostgreSQL were starved of CPU.
    print(f"  {'':28s} idle CPU during the run: {' + '.join(f'{i:.2f}' for i in idle)} = {sum(idle):.2f} of {len(idle)} cores;"
          f" load average {os.getloadavg()[0]:.1f}", flush=True)
    return result


def predict(one: dict, half: dict, two: dict) -> None:
    """
    What the CPU per message says about two hubs against one. Two hubs
    share nothing but PostgreSQL: each serves half the clients as one hub
    serving half the clients does (C{half}), as long as it has a core to
    itself and PostgreSQL has spare CPU. On a machine with spare cores, then,
    two hubs / one hub = 2 x (one hub, half the clients) / (one hub, all).
    """
    cores = os.cpu_count() or 1
    per_message = one["hub_us"][0] + one["pg_us"] + one["clients_us"]  # µs of CPU, all parts
    ceiling = cores * 1e6 / per_message
    print(f"  CPU per message: one hub {one['hub_us'][0]:.0f} µs" + (f", {half['hub_us'][0]:.0f} µs with half the clients" if half is not one else "") + ";"
          f" each of two hubs {' / '.join(f'{u:.0f}' for u in two['hub_us'])} µs; PostgreSQL {one['pg_us']:.0f} -> {two['pg_us']:.0f} µs"
          f" ({one['pg_busiest_us']:.0f} -> {two['pg_busiest_us']:.0f} in its busiest backend)", flush=True)
    print(f"  this machine: {cores} cores; hub + PostgreSQL + clients = {per_message:.0f} µs of CPU a message, so even with every core"
          f" free no number of hubs passes ~{ceiling:.0f} msgs/s here ({ceiling / one['rate']:.2f}x the one-hub rate)", flush=True)
    pg_cores = 2 * half["rate"] * two["pg_us"] / 1e6
    print(f"  with spare cores (a core per hub, the clients and PostgreSQL their own): two hubs ~ 2 x {half['rate']:.0f} msgs/s"
          f" (one hub with {'half the' if half is not one else 'as many'} clients), PostgreSQL then busy {pg_cores:.2f} cores: predicted two hubs / one hub"
          f" ~{min(2.0, 2 * half['rate'] / one['rate']):.2f}x (measured here {two['rate'] / one['rate']:.2f}x)", flush=True)
    if half is not one:
        print("  (with the same clients spread over two hubs each hub has half the load to batch: see --clients-per-hub)", flush=True)


def store_load(dsn: str, clients: int, count: int) -> None:
    """
    (In a child process: it runs Twisted's reactor.) C{clients} loops
    deliver C{count} messages in all through L{PostgresStore.deliver}, each
    waiting for its last to commit; prints one line.
    """
    from twisted.internet import defer, reactor

    from twisted_mailhub.store.postgresql import PostgresStore

    store = PostgresStore(dsn)
    store.start()
    message = b"From: bench@example.org\r\nTo: alice@localhost\r\nSubject: load\r\n\r\n" + b"x" * 950 + b"\r\n"

    @defer.inlineCallbacks
    def loop(n):
        for _ in range(n):
            yield store.deliver("alice@localhost", message)

    @defer.inlineCallbacks
    def run():
        try:
            yield defer.gatherResults([loop(10) for _ in range(clients)])  # warm: connections, account
            cpu, start = time.process_time(), time.perf_counter()
            yield defer.gatherResults([loop(count // clients) for _ in range(clients)])
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            done = count // clients * clients
            print(f"  the store alone ({clients} delivery loops, no SMTP): {done / elapsed:6.0f} msgs/s,"
                  f" its CPU {cpu / done * 1e6:.0f} µs a message", flush=True)
        finally:
            store.close()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


class IdleClient:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def cmd(self, tag: bytes, text: bytes) -> None:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        while not self.line().startswith(tag + b" "):
            pass


def idle_part(a: HubProcess, b: HubProcess, rounds: int) -> None:
    import smtplib

    c = IdleClient(b.ports["imap"])
    c.cmd(b"a", b"login alice secret")
    c.cmd(b"b", b"select INBOX")
    c.sock.sendall(b"c idle\r\n")
    assert c.line().startswith(b"+")
    delays = []
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"]) as s:
        for i in range(rounds):
            s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: idle %d\r\n\r\nx\r\n" % i)
            sent = time.perf_counter()
            while not c.line().endswith(b"EXISTS"):
                pass
            delays.append(time.perf_counter() - sent)
    c.sock.sendall(b"DONE\r\n")
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(f"  delivery on hub A -> IDLE EXISTS on hub B: median {statistics.median(delays) * 1000:.1f} ms,"
          f" p99 {p99 * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms ({rounds} messages)", flush=True)


def fill_mailbox(dsn: str, count: int) -> None:
    """Put C{count} messages into a fresh account's INBOX with COPY."""
    import psycopg

    from twisted_mailhub.store.postgresql import PostgresStore

    store = PostgresStore(dsn)
    account_id = store.account("carol@localhost").account_id
    store.close()
    body = b"From: bench@example.org\r\nTo: carol@localhost\r\nSubject: stored\r\n\r\n" + b"x" * 900 + b"\r\n"
    with psycopg.connect(dsn) as conn:
        mailbox_id = conn.execute("SELECT id FROM mailbox WHERE account_id = %s AND name = 'INBOX'", (account_id,)).fetchone()[0]
        start = conn.execute("SELECT coalesce(max(id), 0) FROM message").fetchone()[0]
        with conn.cursor().copy("COPY message (id, size, body) FROM STDIN") as copy:
            for i in range(count):
                copy.write_row((start + 1 + i, len(body), body))
        now = time.time()
        with conn.cursor().copy(
            "COPY mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, internal_date, modseq, recent, size) FROM STDIN"
        ) as copy:
            for i in range(count):
                key = uuid.uuid4().hex  # as the hub makes them
                copy.write_row((mailbox_id, i + 1, start + 1 + i, key, ["\\Seen"] if i % 3 else [], [], now, 1, False, len(body)))
        conn.execute("SELECT setval('message_id_seq', %s)", (start + count,))
        conn.execute("UPDATE mailbox SET uid_next = %s, highest_modseq = 1 WHERE id = %s", (count + 1, mailbox_id))
        conn.execute("ANALYZE")


def fetch_part(hub: HubProcess, dsn: str, count: int, bodies: int, pg: PostgresCPU) -> None:
    started = time.perf_counter()
    fill_mailbox(dsn, count)
    print(f"  filled a {count}-message mailbox in {time.perf_counter() - started:.1f} s", flush=True)
    # A raw client (imaplib's parsing of 100,000 responses would be most of
    # the time): it reads to the tagged reply and counts the FETCH lines.
    sock = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=60)
    f = sock.makefile("rb", buffering=1 << 20)
    f.readline()

    def until(tag: bytes, marker: bytes) -> int:
        n = 0
        while True:
            line = f.readline()
            if not line:
                raise EOFError
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), line
                return n
            if marker in line:
                n += 1
            if line.endswith(b"}\r\n"):
                f.read(int(line[line.rindex(b"{") + 1 : -3]))

    sock.sendall(b"a LOGIN carol secret\r\n")
    until(b"a", b"")

    for label in ("first, cache cold", "again, cache warm"):
        hub_cpu, pg_cpu = cpu_seconds(hub.process.pid), pg.snapshot()
        start = time.perf_counter()
        sock.sendall(b"s EXAMINE INBOX\r\n")
        until(b"s", b"EXISTS")
        selected = time.perf_counter()
        select_cpu = cpu_seconds(hub.process.pid)
        sock.sendall(b"f FETCH 1:* (UID FLAGS RFC822.SIZE)\r\n")
        n = until(b"f", b" FETCH (")
        done = time.perf_counter()
        assert n == count, n
        # CPU from /proc, in 10 ms ticks: steadier than the wall time on a
        # busy machine.
        print(f"  SELECT + FETCH 1:* (UID FLAGS RFC822.SIZE) of {count}, {label}: {(done - start) * 1000:.0f} ms"
              f" (SELECT {(selected - start) * 1000:.0f} ms; hub CPU {(cpu_seconds(hub.process.pid) - hub_cpu) * 1000:.0f} ms,"
              f" of it SELECT {(select_cpu - hub_cpu) * 1000:.0f}; PostgreSQL CPU {PostgresCPU.used(pg_cpu, pg.snapshot())[0] * 1000:.0f} ms)", flush=True)
    for _ in range(3):
        hub_cpu = cpu_seconds(hub.process.pid)
        start = time.perf_counter()
        sock.sendall(b"g FETCH 1:%d BODY.PEEK[]\r\n" % bodies)
        got = until(b"g", b" FETCH (")
        elapsed = time.perf_counter() - start
        assert got == bodies, got
        print(f"  FETCH 1:{bodies} BODY.PEEK[]: {bodies / elapsed:.0f} msgs/s, hub CPU {(cpu_seconds(hub.process.pid) - hub_cpu) * 1e6 / bodies:.1f} µs/msg", flush=True)
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", type=names_of("smtp", "store", "idle", "fetch"), default="smtp,store,idle,fetch", help="the parts to run, of smtp,store,idle,fetch")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="SMTP: measure each case this many times")
    parser.add_argument("--clients-per-hub", action="store_true",
                        help="SMTP: two hubs get --clients each (the load grows with the hubs), not --clients between them")
    parser.add_argument("--client", choices=("asyncio", "smtp-source"), default="asyncio",
                        help="SMTP: the load generator: this script's asyncio client (pipelined envelope) or Postfix's smtp-source (C, little CPU)")
    parser.add_argument("--pin", action="store_true",
                        help="SMTP: taskset each hub onto a CPU of its own (hub i on CPU i), PostgreSQL and the client onto the last CPU")
    parser.add_argument("--store-load", metavar="DSN", help=argparse.SUPPRESS)  # the child of the store part
    args = parser.parse_args()
    count = 3200 if args.quick else 20000
    if args.store_load:
        store_load(args.store_load, args.clients, count)
        return
    parts = args.only
    mailbox = 20000 if args.quick else 100000
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    folder = tempfile.mkdtemp(prefix="mailhub-cluster-")
    # Durable: fsync on (PostgreSQL's default), unlike the tests.
    server = PostgresServer(bindir, {"max_connections": "300", "shared_buffers": "256MB"}).start()
    pg = PostgresCPU(server)
    last_cpu = (os.cpu_count() or 1) - 1
    if args.pin:
        # The postmaster's backends are forked later and inherit it.
        pin(pg._postmaster(), last_cpu)
        os.sched_setaffinity(0, {last_cpu})  # the asyncio client
    if args.client == "smtp-source" and not os.access(SMTP_SOURCE, os.X_OK):
        raise SystemExit(f"--client smtp-source: {SMTP_SOURCE} is missing (apt-get install postfix)")
    hubs: list[HubProcess] = []
    try:
        print(f"PostgreSQL on 127.0.0.1:{server.port} (fsync on); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f};"
              f" client {args.client}" + (f"; pinned: hub i on CPU i, PostgreSQL and the client on CPU {last_cpu}" if args.pin else ""))
        if "smtp" in parts:
            print(f"SMTP, {args.clients} clients, 1 KB messages, {count} per case"
                  + (f", {args.rounds} rounds of each (the median round is used below)" if args.rounds > 1 else "") + ":")

            def rounds(label, n, store, pg=None, dsn=None, clients=args.clients):
                running = start_hubs(n, store, folder, args.pin)
                try:
                    results = [smtp_part(label + (f", round {r + 1}" if args.rounds > 1 else ""), running, clients, count, pg, dsn,
                                         args.client, last_cpu if args.pin else None)
                               for r in range(args.rounds)]
                finally:
                    for h in running:
                        h.stop()
                return sorted(results, key=lambda r: r["rate"])[len(results) // 2]

            rounds("one hub, Maildir", 1, "maildir")
            dsn = server.create_database()
            one = rounds("one hub, PostgreSQL", 1, f"postgresql:{dsn}", pg, dsn)
            if args.clients_per_hub:
                half = one  # each of two hubs serves as many clients as the one hub did
            else:
                # What each of two hubs serves: half the clients.
                dsn = server.create_database()
                half = rounds(f"one hub, {args.clients // 2} clients", 1, f"postgresql:{dsn}", pg, dsn, args.clients // 2)
            dsn = server.create_database()
            two = rounds(f"two hubs, one PostgreSQL{f', {2 * args.clients} clients' if args.clients_per_hub else ''}", 2,
                         f"postgresql:{dsn}", pg, dsn, 2 * args.clients if args.clients_per_hub else args.clients)
            print(f"  two hubs / one hub: {two['rate'] / one['rate']:.2f}x")
            predict(one, half, two)
        if "store" in parts:
            import subprocess

            subprocess.run([sys.executable, os.path.abspath(__file__), "--store-load", server.create_database(), "--clients",
                            str(args.clients)] + (["--quick"] if args.quick else []), check=True)
        if "idle" in parts:
            hubs = start_hubs(2, f"postgresql:{server.create_database()}", folder)
            idle_part(hubs[0], hubs[1], 50 if args.quick else 200)
            for h in hubs:
                h.stop()
        if "fetch" in parts:
            dsn = server.create_database()
            hubs = [
                HubProcess(os.path.join(folder, "fetchhub"), ["--store", f"postgresql:{dsn}"], users=["carol:secret"])
            ]
            os.makedirs(hubs[0].data_dir)
            hubs[0].start()
            fetch_part(hubs[0], dsn, mailbox, 5000 if args.quick else 20000, pg)
    finally:
        for h in hubs:
            h.stop()
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)  # the hubs' data folders


if __name__ == "__main__":
    main()
