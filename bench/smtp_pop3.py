#!/usr/bin/env python3
"""
Benchmark: SMTP messages/s into the hub (durable: fsynced in new/ before
250), with aiosmtpd and Postfix beside it in the same run for ratios, and
POP3 RETR messages/s on a 10,000-message maildrop.

    python3 bench/smtp_pop3.py                  # everything
    python3 bench/smtp_pop3.py --quick          # fewer messages
    python3 bench/smtp_pop3.py --no-pipelining  # one command per round trip (smtplib)
    python3 bench/smtp_pop3.py --no-aiosmtpd --no-postfix --no-pop3
    python3 bench/smtp_pop3.py --case 32:1024 --neighbour 2048   # with a neighbour writing
    python3 bench/smtp_pop3.py --case 32:1024 --no-pop3 --py-spy /tmp/hub.txt   # where the hub's time goes
    python3 bench/smtp_pop3.py --client c --case 32:1024 --no-pop3              # bench/smtpload.c: C, pipelined or not
    python3 bench/smtp_pop3.py --client smtp-source --case 32:1024 --no-pop3    # Postfix's C load generator

With C{--neighbour MB} a neighbour process writes beside the servers for
the whole run: C{dd} of MB MiB into a file on the same disk, unsynced,
over and over (as logs, databases and backups do on a real server). A
flush that writes back the whole filesystem (syncfs) pays for the
neighbour's dirty pages; one that flushes only the server's own files
does not.

Before each measured round, of every server alike: sync(), then a wait
(at most C{--settle} seconds) until the disk creates files at its quiet
cost again (bench/quiet_disk.py: on this ext4 without a journal, a file
created in the 30 s after many deletions costs 10x the kernel CPU) and
at least C{--idle} of the CPUs are idle (another process's burst), and
each round starts with the next server in turn. Nothing is deleted until
the run ends. C{--each-round} prints every round with the load and the
disk's cost at its start.

Reported per case: messages/s (median of alternating rounds), the hub's
rate over each aiosmtpd's, and each server's CPU time per message (user +
system, all threads, from /proc), which moves far less than messages/s
when other processes load the machine.

Every SMTP server gets the same load from the same client: an asyncio
client in this process, N connections, each sending MAIL/RCPT/DATA
pipelined (every server advertises PIPELINING) and then the message; with
C{--no-pipelining}, each command waits for its reply before the next is
sent, as Python's smtplib and most scripts send mail. Every accepted
message is then looked for on disk by its X-Bench-Id header; a missing or
wrong one fails the run.

The client is Python too, on the same two cores as the servers: its CPU
per message is printed beside theirs (column "client"), so a reader can
see when it, not a server, sets the pace. With C{--client c} the same
load (X-Bench-Id and all, pipelined or not) comes from bench/smtpload.c,
compiled with cc into the run's folder: an epoll loop in C that takes a
fraction of the asyncio client's CPU. With C{--client smtp-source}
the load comes from Postfix's C load generator instead
(/usr/sbin/smtp-source, in Debian's postfix package: C{-s N -d}, N
sessions each sending message after message; it does not pipeline, so
this is the one-command-per-round-trip mode). It sends the same message
(C{-F}) with no X-Bench-Id: the run checks that as many messages as were
sent are on disk, each intact, and that smtp-source saw every reply it
expected (it stops at the first other reply).

Postfix (bench/postfix.py, when installed) is a private instance: its own
configuration and queue under the run's temp folder, smtpd on a free
loopback port, virtual(8) delivering each recipient to a Maildir; stopped
by its master's PID at the end. Its 250 comes once the message is fsynced
in its queue file; virtual(8) then writes the Maildir copy, fsyncs it and
links it into new/ (two fsyncs per message, no directory fsync). The
hub's 250 means "in the Maildir, durable", so Postfix's rate is timed
until every message is in its Maildir, and its CPU per message counted
(all its processes) to the same point.

aiosmtpd's handler writes a Maildir the safe way, the same as the hub:
tmp/ file, fsync, rename into new/, fsync new/. It runs twice: as the
plain handler most aiosmtpd users write ("aiosmtpd": the write runs in
handle_DATA, like aiosmtpd.handlers.Mailbox plus fsync), and handing each
write to a 32-thread pool so concurrent fsyncs overlap ("aiosmtpd+thr").
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.postfix import Postfix  # noqa: E402
from bench.postfix import available as postfix_available  # noqa: E402
from bench.quiet_disk import settle  # noqa: E402
from bench.arguments import file_to_write, folder, numbers  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402

AIOSMTPD_SERVER = r'''
import asyncio, os, sys, time, socket, itertools
from concurrent.futures import ThreadPoolExecutor
from aiosmtpd.controller import Controller

base = sys.argv[1]
threaded = sys.argv[2] == "threads"
made = set()
pool = ThreadPoolExecutor(max_workers=32)
counter = itertools.count()
host = socket.gethostname()

def write(local, data):
    root = os.path.join(base, local)  # one Maildir per recipient, as the hub
    if root not in made:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        made.add(root)
    name = "%d.%d_%d.%s" % (time.time(), os.getpid(), next(counter), host)
    tmp = os.path.join(root, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(root, "new", name))
    dfd = os.open(os.path.join(root, "new"), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        data = b"Return-Path: <" + envelope.mail_from.encode() + b">\r\n" + envelope.original_content
        local = envelope.rcpt_tos[0].partition("@")[0]
        if threaded:
            await asyncio.get_running_loop().run_in_executor(pool, write, local, data)
        else:
            write(local, data)
        return "250 2.0.0 Ok"

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Handler(), hostname="127.0.0.1", port=port, data_size_limit=50 * 1024 * 1024)
controller.start()
print("PORT", port, flush=True)
sys.stdin.read()
controller.stop()
'''


class SMTPLoad:
    """One client connection sending messages as fast as the server takes them."""

    def __init__(self, port: int, rcpt: bytes, body: bytes, pipelining: bool = True):
        self.port = port
        self.pipelining = pipelining
        self.rcpt = rcpt
        self.body = body

    async def _reply(self, reader) -> bytes:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed")
            if line[3:4] != b"-":
                return line

    async def run(self, ids) -> list[int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await self._reply(reader)
        writer.write(b"EHLO bench.example\r\n")
        await self._reply(reader)
        accepted = []
        commands = [b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<" + self.rcpt + b">\r\n", b"DATA\r\n"]
        envelope = b"".join(commands)
        for n in ids:
            if self.pipelining:
                # RFC 2920: the envelope in one packet, then its three replies.
                writer.write(envelope)
                codes = [(await self._reply(reader))[:3] for _ in range(3)]
            else:
                # As smtplib does: one command, then wait for its reply.
                codes = []
                for command in commands:
                    writer.write(command)
                    codes.append((await self._reply(reader))[:3])
                    if codes[-1] not in (b"250", b"354"):
                        break
            if codes != [b"250", b"250", b"354"]:
                raise RuntimeError(f"envelope refused: {codes}")
            writer.write(b"X-Bench-Id: %d\r\n" % n + self.body + b".\r\n")
            r = await self._reply(reader)
            if r.startswith(b"250"):
                accepted.append(n)
            else:
                raise RuntimeError(f"message {n} refused: {r!r}")
        writer.write(b"QUIT\r\n")
        await self._reply(reader)
        writer.close()
        return accepted


SMTP_SOURCE = "/usr/sbin/smtp-source"


def smtp_source_run(port: int, rcpt: bytes, clients: int, count: int, size: int, work: str) -> tuple[float, list[int], float]:
    """
    Send C{count} messages with Postfix's smtp-source over C{clients}
    sessions kept open (C{-d}), the message of L{make_body} (C{-F}).
    Returns (seconds, C{range(count)} as the accepted ones, smtp-source's
    CPU seconds); raises L{SystemExit} when it reports a failure (it
    stops at the first reply it did not expect).
    """
    message = os.path.join(work, f"smtp-source-{size}.txt")
    if not os.path.exists(message):
        with open(message, "wb") as f:
            f.write(make_body(size).replace(b"\r\n", b"\n"))  # it ends each line with CRLF itself
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(
        [SMTP_SOURCE, "-s", str(clients), "-m", str(count), "-d", "-F", message, "-f", "bench@example.org",
         "-t", rcpt.decode(), "-M", "bench.example", f"127.0.0.1:{port}"],
        capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"FAIL: smtp-source exited {done.returncode}: {(done.stdout + done.stderr)[-500:]}")
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return elapsed, list(range(count)), cpu


def verify_count_on_disk(maildir: str, count: int, size: int) -> None:
    """
    Exactly C{count} messages in the Maildir, each the message sent, intact
    (smtp-source's runs: it ends every message with an empty line of its
    own before the ".").
    """
    paths = glob.glob(os.path.join(maildir, "new", "*"))
    if len(paths) != count:
        raise SystemExit(f"FAIL: {len(paths)} messages on disk in {maildir}, {count} sent")
    head, _, text = make_body(size).partition(b"\r\n\r\n")
    text += b"\r\n"
    sent = head.split(b"\r\n")
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        if b"\r\n" not in data:
            data = data.replace(b"\n", b"\r\n")  # Postfix stores Unix line ends
        got_head, _, got_text = data.partition(b"\r\n\r\n")
        fields = set(got_head.split(b"\r\n"))
        if got_text != text or not all(field in fields for field in sent):
            raise SystemExit(f"FAIL: a message damaged on disk: {path}")


def make_body(size: int) -> bytes:
    head = b"From: bench@example.org\r\nTo: bob@localhost\r\nSubject: benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOP.\r\n"
    body = head
    while len(body) + len(line) <= size - 20:
        body += line
    return body


async def smtp_run(port: int, rcpt: bytes, clients: int, count: int, size: int, pipelining: bool = True) -> tuple[float, list[int]]:
    body = make_body(size)
    ids = list(range(count))
    shares = [ids[i::clients] for i in range(clients)]
    start = time.perf_counter()
    results = await asyncio.gather(*(SMTPLoad(port, rcpt, body, pipelining).run(share) for share in shares if share))
    elapsed = time.perf_counter() - start
    return elapsed, [n for r in results for n in r]


_ID = re.compile(rb"\r\nX-Bench-Id: (\d+)\r\n")


def verify_on_disk(maildir: str, accepted: list[int], size: int) -> None:
    """Every accepted message is in the Maildir, complete."""
    found = {}
    for path in glob.glob(os.path.join(maildir, "new", "*")):
        with open(path, "rb") as f:
            data = f.read()
        if b"\r\n" not in data:
            data = data.replace(b"\n", b"\r\n")  # Postfix stores Unix line ends
        m = _ID.search(data)
        if m:
            found[int(m.group(1))] = data
    missing = [n for n in accepted if n not in found]
    if missing:
        raise SystemExit(f"FAIL: {len(missing)} accepted messages not on disk in {maildir} (e.g. {missing[:5]})")
    head, _, text = make_body(size).partition(b"\r\n\r\n")
    sent = head.split(b"\r\n")

    def intact(data: bytes) -> bool:
        # The body as sent, every header field sent (a server adds its own:
        # Return-Path, Received; Postfix a Message-ID and Date as well).
        got_head, _, got_text = data.partition(b"\r\n\r\n")
        fields = set(got_head.split(b"\r\n"))
        return got_text == text and all(field in fields for field in sent)

    bad = [n for n in accepted if not intact(found[n])]
    if bad:
        raise SystemExit(f"FAIL: {len(bad)} messages damaged on disk in {maildir} (e.g. {bad[:5]})")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """
    User + system CPU time of a process so far (Linux /proc), or 0; with
    C{children}, of its whole tree: every live descendant, and the ones it
    has reaped (Postfix's master and its daemons).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(k, True) for k in kids)
    return ticks / os.sysconf("SC_CLK_TCK")


def clear_maildir(maildir: str) -> None:
    for path in glob.glob(os.path.join(maildir, "new", "*")):
        os.unlink(path)


def start_aiosmtpd(root: str, mode: str):
    proc = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, root, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT"):
        proc.kill()
        raise SystemExit("aiosmtpd did not start")
    return proc, int(line.split()[1])


def pop3_bench(hub: HubProcess, messages: int, retrs: int) -> float:
    """
    Fill bob's maildrop by writing files into new/ directly, then time
    RETR over one POP3 session (a raw client: one command, one reply).
    """
    maildir = hub.maildir("bob@localhost")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    clear_maildir(maildir)
    body = make_body(1024)
    body_lines = body.count(b"\r\n")
    now = int(time.time())
    for n in range(messages):
        with open(os.path.join(maildir, "new", f"{now}.B{n}.bench"), "wb") as f:
            f.write(b"X-Bench-Id: %d\r\n" % n + body)
    sock = socket.create_connection(("127.0.0.1", hub.ports["pop3"]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = sock.makefile("rb")
    f.readline()
    for cmd in (b"USER bob\r\n", b"PASS hungry\r\n"):
        sock.sendall(cmd)
        r = f.readline()
        if not r.startswith(b"+OK"):
            raise SystemExit(f"POP3 login failed: {r!r}")
    sock.sendall(b"STAT\r\n")
    stat = f.readline()
    if int(stat.split()[1]) != messages:
        raise SystemExit(f"POP3 STAT says {stat!r}, expected {messages} messages")
    start = time.perf_counter()
    seen = set()
    for n in range(1, retrs + 1):
        sock.sendall(b"RETR %d\r\n" % n)
        r = f.readline()
        if not r.startswith(b"+OK"):
            raise SystemExit(f"RETR {n}: {r!r}")
        first = f.readline()
        if not first.startswith(b"X-Bench-Id: "):
            raise SystemExit(f"RETR {n}: not a benchmark message: {first!r}")
        seen.add(first)
        lines = 1
        while True:
            line = f.readline()
            if line == b".\r\n":
                break
            if not line:
                raise SystemExit("POP3 connection closed")
            lines += 1
        if lines != body_lines + 1:
            raise SystemExit(f"RETR {n}: {lines} lines, expected {body_lines + 1}")
    elapsed = time.perf_counter() - start
    if len(seen) != retrs:
        raise SystemExit(f"POP3: {retrs} RETRs gave only {len(seen)} different messages")
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return retrs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer messages per case")
    parser.add_argument("--no-pipelining", action="store_true", help="one command per round trip, as smtplib sends (default: the envelope pipelined, RFC 2920)")
    parser.add_argument("--no-aiosmtpd", action="store_true")
    parser.add_argument("--no-postfix", action="store_true", help="do not run Postfix beside the hub")
    parser.add_argument("--no-pop3", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server and case, alternating; the median is reported")
    parser.add_argument("--case", type=numbers(":", 2), action="append", default=None, metavar="CLIENTS:SIZE", help="only this case (repeatable), e.g. 32:1024")
    parser.add_argument("--neighbour", type=int, default=0, metavar="MB", help="a dd writing MB MiB unsynced, over and over, beside the servers")
    parser.add_argument("--py-spy", type=file_to_write, default=None, metavar="FILE", help="record the hub with py-spy during its measured runs: collapsed stacks of the thread holding the GIL (its Python work)")
    parser.add_argument(
        "--settle", type=float, default=60.0, metavar="SECONDS",
        help="before each round: sync, then wait (at most SECONDS) until creating a file costs at most --quiet-us of CPU and --idle of the CPUs are idle (bench/quiet_disk.py); 0: sync and measure only",
    )
    parser.add_argument("--quiet-us", type=float, default=150.0, metavar="US", help="a quiet disk for --settle: a 1 KB file created for at most US microseconds of CPU")
    parser.add_argument("--idle", type=float, default=0.7, metavar="SHARE", help="a quiet machine for --settle: at least SHARE (0-1) of all CPUs idle over 2 s")
    parser.add_argument("--no-settle", action="store_true", help="no sync and no wait between rounds (as before stop 16)")
    parser.add_argument("--each-round", action="store_true", help="print each round as it ends: rate, CPU, load, the disk's file creation cost")
    parser.add_argument("--dir", type=folder, default=None, help="where to keep the data (default: a temp dir on the same disk as /var/tmp)")
    parser.add_argument(
        "--client", choices=("asyncio", "c", "smtp-source"), default="asyncio",
        help="the load generator: this script's asyncio client (default), bench/smtpload.c (C, little CPU), or Postfix's C smtp-source (no pipelining)",
    )
    args = parser.parse_args()
    if args.client == "smtp-source":
        if not os.access(SMTP_SOURCE, os.X_OK):
            raise SystemExit(f"{SMTP_SOURCE} is not installed (apt-get install postfix)")
        args.no_pipelining = True  # smtp-source waits for each reply

    scale = 0.25 if args.quick else 1.0
    cases = [  # (clients, size, messages)
        (1, 1024, int(400 * scale)),
        (32, 1024, int(4000 * scale)),
        (1, 100 * 1024, int(200 * scale)),
        (32, 100 * 1024, int(1600 * scale)),
    ]
    if args.case:
        wanted = set(args.case)
        cases = [c for c in cases if (c[0], c[1]) in wanted]
    pipelining = not args.no_pipelining
    work = tempfile.mkdtemp(prefix="mailhub-bench-", dir=args.dir or "/var/tmp")
    c_client = None
    if args.client == "c":
        from bench.workers import build_client

        c_client = build_client(work)
        if c_client is None:
            raise SystemExit("--client c needs a C compiler (cc)")
    # Every measured run sends to a Maildir of its own, and nothing is
    # deleted until the end: right after mass deletions ext4's inode
    # allocator crawls (recently_deleted()), which would slow whichever
    # server runs next, not the one that deleted.
    recipients = [f"bench{c}r{r}" for c in range(len(cases)) for r in range(args.rounds)]
    hub = HubProcess(os.path.join(work, "hub"), users=["bob:hungry", "warmup:x"] + [f"{name}:x" for name in recipients])
    os.makedirs(hub.data_dir)
    hub.start()
    peers = []  # (name, process, port, maildir)
    postfix = None
    neighbour = None
    spy = None
    try:
        if args.neighbour:
            target = os.path.join(work, "neighbour")
            neighbour = subprocess.Popen(
                ["sh", "-c", f'while :; do dd if=/dev/zero of="$1" bs=1M count={args.neighbour} status=none; done', "sh", target],
                start_new_session=True,  # its own process group: stopped with its dd
            )
            print(f"neighbour: dd of {args.neighbour} MiB, unsynced, over and over (pid {neighbour.pid})")
        if not args.no_aiosmtpd:
            for name, mode in (("aiosmtpd", "plain"), ("aiosmtpd+thr", "threads")):
                root = os.path.join(work, name)
                proc, port = start_aiosmtpd(root, mode)
                peers.append((name, proc, port, root))
        if not args.no_postfix:
            if postfix_available():
                os.chmod(work, 0o755)  # virtual(8) delivers as user postfix, below it
                postfix = Postfix(os.path.join(work, "postfix"), ["warmup"] + recipients).start()
            else:
                print("Postfix is not installed (apt-get install postfix): no Postfix figures")
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cpus: {os.cpu_count()}")
        mode = "pipelined envelope (RFC 2920)" if pipelining else "no pipelining: one command per round trip"
        client = {"smtp-source": "Postfix's smtp-source (C)", "c": "bench/smtpload.c (C)"}.get(args.client, "asyncio (Python, this process)")
        print(f"client: {client}, {mode}; every message fsynced before its 250")
        print(
            f"{'server':<13} {'clients':>7} {'size':>7} {'messages':>8} {'msgs/s':>9} {'hub is':>7} {'cpu us/msg':>9} {'client':>7}"
            f"   (medians of {args.rounds} rounds; cpu: the server's, client: the load generator's, per message)"
        )
        # (name, pid, whole process tree?, port, maildir of a local part, wait until delivered)
        servers = [("mailhub", hub.process.pid, False, hub.ports["smtp"], lambda local: hub.maildir(f"{local}@localhost"), None)]
        servers += [(name, proc.pid, False, port, lambda local, root=root: os.path.join(root, local), None) for name, proc, port, root in peers]
        if postfix is not None:
            # Postfix's 250 means "in the queue, fsynced"; its Maildir
            # delivery follows. Timed, and its CPU counted, until every
            # message is in the Maildir (what the hub's 250 means).
            servers.append(("postfix", postfix.pid, True, postfix.port, postfix.maildir, postfix.wait_delivered))
        if args.py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "--gil", "-r", "200", "-f", "raw", "-o", args.py_spy, "--pid", str(hub.process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        for case, (clients, size, count) in enumerate(cases):
            rates: dict[str, list[float]] = {name: [] for name, *_ in servers}
            # The server's CPU time per message (user + system, all its
            # threads): unlike messages/s it hardly moves with the load that
            # other processes put on the machine.
            cpu: dict[str, list[float]] = {name: [] for name, *_ in servers}
            client_cpu: dict[str, list[float]] = {name: [] for name, *_ in servers}
            # "*": the round began before the disk and the CPUs were quiet (--settle ran out).
            marks: dict[str, list[str]] = {name: [] for name, *_ in servers}
            # Rounds alternate between the servers, and the median counts,
            # so that a burst of load from elsewhere does not decide a ratio.
            # Each round starts with the next server (round r with server r
            # mod n): none always follows the same one (Postfix's queue
            # files, created and deleted, slowed whoever came next).
            for r in range(args.rounds):
                local = f"bench{case}r{r}"
                turn = r % len(servers)
                for name, pid, tree, port, maildir_of, wait_delivered in servers[turn:] + servers[:turn]:
                    asyncio.run(smtp_run(port, b"warmup@localhost", 1, 5, size, pipelining))
                    if wait_delivered is not None:
                        wait_delivered("warmup", 5 * (1 + r + case * args.rounds))
                    disk = ""
                    busy = False
                    if not args.no_settle:
                        # The same quiet disk for every round (bench/quiet_disk.py).
                        cost, share, waited = settle(os.path.join(work, "probe"), args.quiet_us, args.settle, idle=args.idle)
                        disk = f"; file creation {cost:.0f} µs CPU, CPUs {share:.0%} idle, after {waited:.0f} s"
                        busy = cost > args.quiet_us or share < args.idle
                    marks[name].append("*" if busy else "")
                    round_load = os.getloadavg()[0]
                    before = cpu_seconds(pid, tree)
                    started = time.perf_counter()
                    if args.client == "smtp-source":
                        elapsed, accepted, used = smtp_source_run(port, local.encode() + b"@localhost", clients, count, size, work)
                    elif c_client is not None:
                        from bench.workers import c_run

                        body_path = os.path.join(work, f"body-{size}.eml")
                        if not os.path.exists(body_path):
                            with open(body_path, "wb") as f:
                                f.write(make_body(size))
                        elapsed, accepted, used = c_run(c_client, body_path, port, local.encode() + b"@localhost", clients, count, pipelining)
                    else:
                        mine = os.times()
                        elapsed, accepted = asyncio.run(smtp_run(port, local.encode() + b"@localhost", clients, count, size, pipelining))
                        now = os.times()
                        used = now.user + now.system - mine.user - mine.system
                    if wait_delivered is not None:
                        # Timed to the Maildir, as the hub's 250 is.
                        wait_delivered(local, len(accepted))
                        elapsed = time.perf_counter() - started
                    cpu[name].append((cpu_seconds(pid, tree) - before) / max(1, len(accepted)))
                    client_cpu[name].append(used / max(1, len(accepted)))
                    if args.client == "smtp-source":
                        verify_count_on_disk(maildir_of(local), count, size)
                    else:
                        verify_on_disk(maildir_of(local), accepted, size)
                    if len(accepted) != count:
                        raise SystemExit(f"FAIL: {name} accepted {len(accepted)} of {count}")
                    rates[name].append(len(accepted) / elapsed)
                    if args.each_round:
                        print(f"  round {r + 1} {name:<13} {rates[name][-1]:7.0f}/s  cpu {cpu[name][-1] * 1e6:5.0f} µs/msg; load {round_load:.1f}{disk}", flush=True)
            hub_rate = statistics.median(rates["mailhub"])
            for name, *_ in servers:
                rate = statistics.median(rates[name])
                ratio = "" if name == "mailhub" else f"{hub_rate / rate:5.2f}x"
                spread = "/".join(f"{r:.0f}{mark}" for r, mark in zip(rates[name], marks[name]))
                per_message = statistics.median(cpu[name]) * 1e6
                by_client = statistics.median(client_cpu[name]) * 1e6
                print(f"{name:<13} {clients:>7} {size:>7} {count:>8} {rate:>9.0f} {ratio:>7} {per_message:>9.0f} {by_client:>7.0f}   rounds: {spread}", flush=True)
            if any("*" in m for m in marks.values()):
                print("  (*: a round that began before the disk and the CPUs were quiet: --settle ran out; see --each-round)", flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
            spy = None
            print(f"py-spy: the hub's stacks in {args.py_spy}")
        if not args.no_pop3:
            if "pop3" not in hub.ports:
                print("pop3: the hub has no POP3 listener yet; skipped")
            else:
                messages = 10_000
                rate = pop3_bench(hub, messages, int(messages * scale))
                print(f"pop3 RETR on a {messages}-message maildrop: {rate:.0f} msgs/s")
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        if neighbour is not None:
            os.killpg(neighbour.pid, signal.SIGKILL)  # the group this script started
            neighbour.wait()
        hub.stop()
        if postfix is not None:
            postfix.stop()
        for _, proc, _, _ in peers:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
