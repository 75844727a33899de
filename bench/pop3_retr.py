#!/usr/bin/env python3
"""
Benchmark: POP3 RETR messages/s on a 10,000-message maildrop, the hub
beside stock Twisted's POP3 server (twisted.mail.pop3.POP3 on
twisted.mail.maildir.MaildirMailbox) serving the same Maildir, and a
private Dovecot (bench/dovecot.py, on its own copy) when it is installed.
Also the cold first login + STAT: the server restarted, its index kept.

    python3 bench/pop3_retr.py                 # hub + stock Twisted with TCP_NODELAY
    python3 bench/pop3_retr.py --stock-nagle   # also stock Twisted as shipped (slow!)
    python3 bench/pop3_retr.py --messages 2000
    python3 bench/pop3_retr.py --messages 10000 --stock-retrs 200   # the figures in the notes
    python3 bench/pop3_retr.py --messages 10000 --rounds 5 --no-stock --tops 0 --sessions 0
        # also the hub and Dovecot taking turns, 5 sessions each: medians
    python3 bench/pop3_retr.py --callgrind 1000   # the hub's instructions per RETR (valgrind)

Reported per server: the rates, and its CPU time per RETR (user + system,
its whole process tree, from schedstat: to 0.1 us), which moves far less than the rates when other
processes load the machine: for the sequential pass (C{cpu us/seq}), the
pipelined one (C{cpu us/pipelined}) and both (C{cpu us/RETR}, the
figure the notes compare). The client is a raw socket: one RETR, then read to the terminating dot,
then the next ("sequential"); and a second pass keeping 16 RETRs in flight
("pipelined", RFC 2449 PIPELINING). Every reply is checked: its
X-Bench-Id header must name the message asked for and its body must be
right, so a fast wrong answer fails the run. Then, in the second session,
C{--tops} TOP commands one at a time, and C{--sessions} connections that
each log in, RETR one message and QUIT. (Stock Twisted needs two
fixes to run at all: its MaildirMailbox opens messages in text mode, and
its RETR turns CRLF into CR CR LF, which the check forgives.) Also timed: the login (opening
the maildrop), UIDL of the whole maildrop, and QUIT (which marks the
retrieved messages seen).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.dovecot import Dovecot  # noqa: E402
from bench.dovecot import available as dovecot_available  # noqa: E402
from bench.smtp_pop3 import cpu_seconds  # noqa: E402
from bench.arguments import folder  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402

STOCK_SERVER = r'''
import sys
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import protocol, reactor
from twisted.mail import maildir, pop3
from zope.interface import implementer
from twisted.cred.portal import IRealm

path, nodelay = sys.argv[1], sys.argv[2] == "nodelay"

class Mailbox(maildir.MaildirMailbox):
    # Stock MaildirMailbox.getMessage opens in text mode, which RETR cannot
    # send on Python 3; everything else is as shipped.
    def getMessage(self, i):
        return open(self.list[i], "rb")


@implementer(IRealm)
class Realm:
    def requestAvatar(self, avatarId, mind, *interfaces):
        return pop3.IMailbox, Mailbox(path.encode()), lambda: None

class Server(pop3.POP3):
    def connectionMade(self):
        if nodelay:
            self.transport.setTcpNoDelay(True)
        pop3.POP3.connectionMade(self)

class Factory(protocol.ServerFactory):
    def buildProtocol(self, addr):
        p = Server()
        p.portal = self.portal
        p.factory = self
        return p

f = Factory()
f.portal = Portal(Realm(), [InMemoryUsernamePasswordDatabaseDontUse(bob=b"hungry")])
port = reactor.listenTCP(0, f, interface="127.0.0.1")
print("PORT", port.getHost().port, flush=True)
reactor.run()
'''

BODY = b"".join(b"Line %04d of the benchmark message, padded to a readable width....\r\n" % i for i in range(14))


def fill(maildir: str, messages: int) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    now = int(time.time())
    for n in range(1, messages + 1):
        data = b"X-Bench-Id: %d\r\nSubject: bench\r\n\r\n" % n + BODY
        name = f"{now}.B{n:06d}.bench,S={len(data)}"
        with open(os.path.join(maildir, "new", name), "wb") as f:
            f.write(data)


class Client:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit("connection closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def cmd(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        return self.line()

    def multi(self) -> bytes:
        # Read a multi-line reply (after its first line) up to CRLF.CRLF.
        start = 0
        while True:
            end = self.buf.find(b"\r\n.\r\n", start)
            if end != -1 or self.buf.startswith(b".\r\n"):
                break
            start = max(0, len(self.buf) - 4)
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit("connection closed")
            self.buf += data
        if self.buf.startswith(b".\r\n"):
            self.buf = self.buf[3:]
            return b""
        body, self.buf = self.buf[: end + 2], self.buf[end + 5 :]
        return body


def check(n: int, first: bytes, body: bytes, stock: bool = False) -> None:
    if stock:
        # Stock Twisted turns every LF into CRLF, so CRLF-stored messages
        # come out with CR CR LF line ends.
        body = body.replace(b"\r\r\n", b"\r\n")
    if not first.startswith(b"+OK") or not body.startswith(b"X-Bench-Id: %d\r\n" % n):
        raise SystemExit(f"RETR {n}: wrong answer {first!r} {body[:40]!r}")
    if not body.endswith(BODY):
        raise SystemExit(f"RETR {n}: body differs")


def run(port: int, messages: int, retrs: int, window: int, stock: bool = False, pid: int | None = None, tops: int = 0) -> dict[str, float]:
    """
    One session: login, STAT, UIDL, C{retrs} RETRs one at a time, then
    (C{window} > 1) again with C{window} in flight, C{tops} TOPs, QUIT.
    With C{pid}, the server's CPU time per RETR (its whole process tree:
    Dovecot runs a process per session) over both RETR passes, and per TOP.
    """
    out: dict[str, float] = {}
    c = Client(port)
    c.cmd(b"USER bob")
    t = time.perf_counter()
    r = c.cmd(b"PASS hungry")
    out["login s"] = time.perf_counter() - t
    if not r.startswith(b"+OK"):
        raise SystemExit(f"login failed: {r!r}")
    t = time.perf_counter()
    if not c.cmd(b"STAT").startswith(b"+OK %d " % messages):
        raise SystemExit("STAT failed")
    out["stat s"] = time.perf_counter() - t
    t = time.perf_counter()
    if not c.cmd(b"UIDL").startswith(b"+OK"):
        raise SystemExit("UIDL failed")
    uids = c.multi().count(b"\r\n")
    out["uidl s"] = time.perf_counter() - t
    if uids != messages:
        raise SystemExit(f"UIDL lists {uids} messages, expected {messages}")
    # Message numbers follow the order the server lists them; the bench ids
    # were written in that order (file names sort by it).
    cpu = start = cpu_fine(pid) if pid else 0.0
    t = time.perf_counter()
    for n in range(1, retrs + 1):
        first = c.cmd(b"RETR %d" % n)
        check(n, first, c.multi(), stock)
    out["sequential/s"] = retrs / (time.perf_counter() - t)
    if pid:
        cpu = cpu_fine(pid)
        out["cpu us/seq"] = (cpu - start) / retrs * 1e6
    if window > 1:
        t = time.perf_counter()
        sent = 1
        for _ in range(min(window, retrs)):
            c.sock.sendall(b"RETR %d\r\n" % sent)
            sent += 1
        for n in range(1, retrs + 1):
            first = c.line()
            check(n, first, c.multi())
            if sent <= retrs:
                c.sock.sendall(b"RETR %d\r\n" % sent)
                sent += 1
        out["pipelined/s"] = retrs / (time.perf_counter() - t)
        if pid:
            out["cpu us/pipelined"] = (cpu_fine(pid) - cpu) / retrs * 1e6
    if pid:
        out["cpu us/RETR"] = (cpu_fine(pid) - start) / (retrs * (2 if window > 1 else 1)) * 1e6
    if tops:
        # TOP n 5 (RFC 1939 §7), one at a time: the header and 5 lines.
        cpu = cpu_seconds(pid, True) if pid else 0.0
        t = time.perf_counter()
        for n in range(1, tops + 1):
            first = c.cmd(b"TOP %d 5" % n)
            top = c.multi()
            if not first.startswith(b"+OK") or not top.startswith(b"X-Bench-Id: %d\r\n" % n) or top.count(b"\r\n") != 8:
                raise SystemExit(f"TOP {n}: wrong answer {first!r} {top[:40]!r}")
        out["TOP/s"] = tops / (time.perf_counter() - t)
        if pid:
            out["cpu us/TOP"] = (cpu_seconds(pid, True) - cpu) / tops * 1e6
    t = time.perf_counter()
    c.cmd(b"QUIT")
    out["quit s"] = time.perf_counter() - t
    c.sock.close()
    return out


def login_stat(port: int, user: bytes, password: bytes, messages: int) -> dict[str, float]:
    """First login + STAT of a session (after a restart: cold), then QUIT."""
    c = Client(port)
    c.cmd(b"USER " + user)
    t = time.perf_counter()
    if not c.cmd(b"PASS " + password).startswith(b"+OK"):
        raise SystemExit("login failed")
    if not c.cmd(b"STAT").startswith(b"+OK %d " % messages):
        raise SystemExit("STAT failed")
    elapsed = time.perf_counter() - t
    c.cmd(b"QUIT")
    c.sock.close()
    return {"login+STAT s": elapsed}


def one_message_sessions(port: int, sessions: int, pid: int | None = None) -> dict[str, float]:
    """
    C{sessions} connections one after another, each: banner, USER, PASS,
    RETR of one message, QUIT (a client that collects what is new). The
    sessions per second and, with C{pid}, the server's CPU time per session.
    """
    cpu = cpu_seconds(pid, True) if pid else 0.0
    t = time.perf_counter()
    for k in range(sessions):
        c = Client(port)
        c.cmd(b"USER bob")
        if not c.cmd(b"PASS hungry").startswith(b"+OK"):
            raise SystemExit("login failed")
        n = k % 100 + 1
        check(n, c.cmd(b"RETR %d" % n), c.multi())
        c.cmd(b"QUIT")
        c.sock.close()
    out = {"sessions/s": sessions / (time.perf_counter() - t)}
    if pid:
        out["cpu us/session"] = (cpu_seconds(pid, True) - cpu) / sessions * 1e6
    return out


def take_turns(servers: list[tuple[str, int, int]], messages: int, window: int, rounds: int) -> None:
    """
    C{rounds} sessions of each server (name, POP3 port, PID) in turn, each
    RETR pass one at a time and C{window} in flight (as L{run}): on a busy
    machine the load then falls on every server alike. Prints each one's
    medians, then the first server's ratio to each other one: rates
    (higher is better) and CPU per RETR.
    """
    import statistics

    keys = ("sequential/s", "pipelined/s", "cpu us/seq", "cpu us/pipelined")
    seen: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name, _, _ in servers}
    for _ in range(rounds):
        for name, port, pid in servers:
            result = run(port, messages, messages, window, pid=pid)
            for k in keys:
                seen[name][k].append(result[k])
    medians = {name: {k: statistics.median(v) for k, v in got.items()} for name, got in seen.items()}
    for name, m in medians.items():
        show(f"{name} (median of {rounds})", m)
    first, ours = servers[0][0], medians[servers[0][0]]
    for name, _, _ in servers[1:]:
        theirs = medians[name]
        print(
            f"{first} / {name}: one RETR at a time {ours['sequential/s'] / theirs['sequential/s']:.2f}x"
            f" (CPU {ours['cpu us/seq']:.1f} vs {theirs['cpu us/seq']:.1f} us),"
            f" {window} in flight {ours['pipelined/s'] / theirs['pipelined/s']:.2f}x"
            f" (CPU {ours['cpu us/pipelined']:.1f} vs {theirs['cpu us/pipelined']:.1f} us)",
            flush=True,
        )


def cpu_fine(pid: int) -> float:
    """
    CPU seconds of process C{pid} and its live descendants, every thread,
    to the nanosecond (/proc/.../schedstat: user and system together),
    plus what reaped children used (in clock ticks): differences of two
    readings around a pass are about 100 times finer than
    L{cpu_seconds}'s 10 ms ticks (1 us per RETR over 10,000). (Linux
    with schedstat, as the rest of these benches assume.)
    """
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except OSError:
            pass  # a thread that just ended
    total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    return total + sum(cpu_fine(k) for k in kids)


def callgrind(work: str, messages: int, window: int, keep: str = "") -> None:
    """
    The hub's user-space instructions per RETR, one at a time and
    C{window} in flight (each message retrieved before in the session),
    and one at a time in a new session ("first": as the sequential pass
    of a bench round), counted by valgrind's callgrind: unlike CPU time,
    the same on a busy machine as on a quiet one (the kernel's share is
    not counted). The hub runs under valgrind (slowly); each pass is
    counted alone (callgrind_control zeroes and dumps the counts). With
    C{keep}, the dumps are copied there for callgrind_annotate.
    """
    import glob

    out = os.path.join(work, "callgrind")
    os.makedirs(out)

    class Counted(HubProcess):
        def command(self):
            return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p"] + HubProcess.command(self)

    hub = Counted(os.path.join(work, "counted"), users=("bob:hungry",))
    hub.start_timeout = 300
    os.makedirs(hub.data_dir)
    fill(hub.maildir("bob@localhost"), messages)
    hub.start()

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(hub.pid)], stdout=subprocess.DEVNULL, check=True)

    try:
        c = Client(hub.ports["pop3"])
        c.cmd(b"USER bob")
        c.cmd(b"PASS hungry")
        for n in range(1, messages + 1):  # the first RETR of each learns its wire form
            check(n, c.cmd(b"RETR %d" % n), c.multi())
        for name in ("one", "pipelined"):
            control("--zero")
            if name == "one":
                for n in range(1, messages + 1):
                    check(n, c.cmd(b"RETR %d" % n), c.multi())
            else:
                sent = 1
                for _ in range(min(window, messages)):
                    c.sock.sendall(b"RETR %d\r\n" % sent)
                    sent += 1
                for n in range(1, messages + 1):
                    check(n, c.line(), c.multi())
                    if sent <= messages:
                        c.sock.sendall(b"RETR %d\r\n" % sent)
                        sent += 1
            control("--dump=" + name)
        c.cmd(b"QUIT")
        # As the bench's sequential pass: each RETR the first of its
        # message in a new session (its file found, then read).
        c = Client(hub.ports["pop3"])
        c.cmd(b"USER bob")
        c.cmd(b"PASS hungry")
        control("--zero")
        for n in range(1, messages + 1):
            check(n, c.cmd(b"RETR %d" % n), c.multi())
        control("--dump=first")
        c.cmd(b"QUIT")
    finally:
        hub.stop()
    for path in sorted(glob.glob(os.path.join(out, "cg.*.*"))):
        with open(path) as f:
            text = f.read()
        trigger = text.split("desc: Trigger: dump ", 1)[1].split("\n", 1)[0] if "Trigger: dump " in text else "?"
        total = int(text.split("\nsummary: ", 1)[1].split("\n", 1)[0])
        print(f"mailhub callgrind        {trigger}: {total / messages:,.0f} instructions per RETR", flush=True)
        if keep and trigger != "?":
            os.makedirs(keep, exist_ok=True)
            shutil.copy(path, os.path.join(keep, f"callgrind.{trigger}"))
            print(f"    kept: callgrind_annotate {os.path.join(keep, f'callgrind.{trigger}')}", flush=True)


def start_stock(maildir: str, nodelay: bool):
    proc = subprocess.Popen(
        [sys.executable, "-c", STOCK_SERVER, maildir, "nodelay" if nodelay else "nagle"],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT"):
        proc.kill()
        raise SystemExit("stock Twisted POP3 did not start")
    return proc, int(line.split()[1])


def show(name: str, result: dict[str, float]) -> None:
    parts = [
        f"{k} {v:.1f}" if k.startswith("cpu us/") and v < 100 else f"{k} {v:,.0f}" if k.endswith("/s") or k.startswith("cpu") else f"{k} {v:.3f}"
        for k, v in result.items()
    ]
    print(f"{name:<24} " + "  ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=16, help="RETRs in flight in the pipelined pass")
    parser.add_argument("--stock-retrs", type=int, default=2000, help="RETRs for stock Twisted with TCP_NODELAY")
    parser.add_argument("--stock-nagle", action="store_true", help="also time stock Twisted without TCP_NODELAY (about 23 RETR/s: 100 RETRs)")
    parser.add_argument("--tops", type=int, default=2000, help="TOP n 5 commands, one at a time, after the RETR passes")
    parser.add_argument("--sessions", type=int, default=300, help="connections of login, one RETR, QUIT")
    parser.add_argument("--dir", type=folder, default=None)
    parser.add_argument("--no-dovecot", action="store_true", help="do not run Dovecot beside the hub")
    parser.add_argument("--no-stock", action="store_true", help="do not run stock Twisted")
    parser.add_argument(
        "--rounds", type=int, default=0,
        help="then N sessions of the hub and of Dovecot taking turns (both running), and their medians",
    )
    parser.add_argument(
        "--callgrind", type=int, default=0, metavar="N",
        help="only count the hub's instructions per RETR under valgrind's callgrind, on N messages (1000 is plenty)",
    )
    parser.add_argument(
        "--callgrind-keep", default="", metavar="DIR",
        help="with --callgrind: keep the dumps in DIR (callgrind.one, callgrind.pipelined) for callgrind_annotate",
    )
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="mailhub-pop3-bench-", dir=args.dir or "/var/tmp")
    if args.callgrind:
        try:
            callgrind(work, args.callgrind, args.window, args.callgrind_keep)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cpus: {os.cpu_count()}; {args.messages} messages of {len(BODY) + 40} octets")
        hub = HubProcess(os.path.join(work, "hub"), users=("bob:hungry",))
        os.makedirs(hub.data_dir)
        fill(hub.maildir("bob@localhost"), args.messages)
        hub.start()
        dovecot = None
        try:
            show("mailhub (first login)", run(hub.ports["pop3"], args.messages, args.messages, args.window, pid=hub.pid))
            # QUIT marked every message seen (renamed into cur/): a second
            # session reads the same maildrop in its steady state.
            show("mailhub (again)", run(hub.ports["pop3"], args.messages, args.messages, args.window, pid=hub.pid, tops=min(args.tops, args.messages)))
            if args.sessions:
                show("mailhub (1 RETR/conn.)", one_message_sessions(hub.ports["pop3"], args.sessions, pid=hub.pid))
            for _ in range(3):
                hub.restart()
                show("mailhub (cold restart)", login_stat(hub.ports["pop3"], b"bob", b"hungry", args.messages))
            if not args.rounds:
                hub.stop()
            if not args.no_dovecot and dovecot_available():
                # Dovecot on its own copy (its files, its index), served as nobody.
                os.chmod(work, 0o755)
                fill(os.path.join(work, "dovecot"), args.messages)
                dovecot = Dovecot(os.path.join(work, "dovecot"), "bob", "hungry").start()
                show("dovecot (first login)", run(dovecot.ports["pop3"], args.messages, args.messages, args.window, pid=dovecot.pid))
                show("dovecot (again)", run(dovecot.ports["pop3"], args.messages, args.messages, args.window, pid=dovecot.pid, tops=min(args.tops, args.messages)))
                if args.sessions:
                    show("dovecot (1 RETR/conn.)", one_message_sessions(dovecot.ports["pop3"], args.sessions, pid=dovecot.pid))
                for _ in range(3):
                    dovecot.restart()
                    show("dovecot (cold restart)", login_stat(dovecot.ports["pop3"], b"bob", b"hungry", args.messages))
                if args.rounds:
                    take_turns(
                        [("mailhub", hub.ports["pop3"], hub.pid), ("dovecot", dovecot.ports["pop3"], dovecot.pid)],
                        args.messages, args.window, args.rounds,
                    )
            elif not args.no_dovecot:
                print("Dovecot is not installed (apt-get install dovecot-pop3d): no Dovecot figures")
        finally:
            hub.stop()
            if dovecot is not None:
                dovecot.stop()
        stock_dir = os.path.join(work, "stock")
        fill(stock_dir, args.messages)
        runs = [] if args.no_stock else [("twisted+nodelay", True, args.stock_retrs)]
        if args.stock_nagle:
            runs.append(("twisted (as shipped)", False, 100))
        for name, nodelay, retrs in runs:
            proc, port = start_stock(stock_dir, nodelay)
            try:
                show(name, run(port, args.messages, retrs, 1, stock=True))
            except SystemExit as e:
                print(f"{name:<24} failed: {e}")
            finally:
                proc.kill()
                proc.wait()
        load = os.getloadavg()
        print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
