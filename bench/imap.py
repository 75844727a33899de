"""
IMAP benchmark: SELECT + FETCH 1:* (UID FLAGS RFC822.SIZE) on big folders,
cold (first SELECT after a restart) and warm, FETCH BODY[] throughput,
SEARCH FROM, and the server's RSS; the same on a private Dovecot
(bench/dovecot.py) in the same run when it is installed. Dovecot's
memory is that of all its processes serving the instance (master, log,
config, anvil, stats, auth, imap; imap-login has exited once the session
is handed over): "server RSS" sums their RSS, so the libraries they share
count once per process; "shared pages once" counts each shared page once
(the stricter comparison: Dovecot's processes share about 20 MB).

    python3 bench/imap.py                 # 10,000 and 100,000 messages
    python3 bench/imap.py --sizes 10000   # just one size
    python3 bench/imap.py --no-dovecot    # the hub alone
    python3 bench/imap.py --mix           # mixed workload beside Dovecot (bench/imap_mix.py)
    python3 bench/imap.py --sizes 20000 --body-only --body-rounds 5   # FETCH BODY[] alone
    python3 bench/imap.py --sizes 20000 --body-only --py-spy /tmp/hub.txt  # where the hub's time goes

The Maildir files are written directly (as an outside MDA would, already
\\Seen, in cur/), then the real `twistd mailhub` is started; the first
SELECT indexes them (reported as "first index"), the hub is restarted, and
the timings after that are what a user sees every day; "next restart" is
one more cold SELECT after another restart, with the directories left
alone since the previous start (as most restarts find them). The client is a raw
socket that reads until the tagged reply, so client parsing is not measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from bench.dovecot import Dovecot  # noqa: E402
from bench.dovecot import available as dovecot_available  # noqa: E402
from bench.dovecot import memory_once_mb  # noqa: E402
from bench.arguments import file_to_write, numbers  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402

SENDERS = ["alice@example.org", "bob@example.net", "carol@example.com", "dave@example.org", "erin@example.net"]


def make_maildir(path: str, count: int) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    start = int(time.time()) - count
    cur = os.path.join(path, "cur")
    for i in range(count):
        body = (
            f"From: Sender {i % 5} <{SENDERS[i % 5]}>\r\n"
            f"To: alice@localhost\r\n"
            f"Subject: message number {i}\r\n"
            f"Message-ID: <{i}@bench>\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"\r\n"
            + "The quick brown fox jumps over the lazy dog.\r\n" * (4 + i % 8)
        ).encode()
        name = f"{start + i}.M{i}P1Q{i}.bench,S={len(body)}:2,S"
        fd = os.open(os.path.join(cur, name), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)
        os.utime(os.path.join(cur, name), (start + i, start + i))


class Client:
    """
    A raw IMAP client that reads until the tagged reply. Linear in the
    size of the reply (a bytearray, and each search starts where the last
    one could not match), so a 20 MB FETCH BODY[] measures the server,
    not the client.
    """

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = bytearray()
        self.n = 0
        self.until(b"\r\n")

    def until(self, end: bytes) -> bytes:
        start = 0
        while True:
            i = self.buf.find(end, start)
            if i >= 0:
                break
            start = max(0, len(self.buf) - len(end) + 1)
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError(bytes(self.buf[-200:]))
            self.buf += data
        i += len(end)
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def cmd(self, text: str) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        # Responses end at "\r\n<tag> "; the buffer starts with the "\r\n"
        # that ended the previous reply, so an untagged-free reply matches too.
        self.buf[:0] = b"\r\n"
        out = self.until(b"\r\n" + tag + b" ")
        rest = self.until(b"\r\n")
        if not rest.startswith(b"OK"):
            raise RuntimeError(f"{text}: {rest!r}")
        return out

    def timed(self, text: str) -> tuple[float, bytes]:
        t = time.perf_counter()
        out = self.cmd(text)
        return time.perf_counter() - t, out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fetch_bodies(c: Client, count: int, rounds: int, cpu, spy=None) -> dict:
    """
    C{rounds} times FETCH 1:n (BODY[]) of n = min(count, 20,000) messages
    on a selected session: the median rate, the best, and the server's
    CPU per message (C{cpu()}: its CPU seconds so far, all its processes).
    C{spy(seconds_hint)} is started before the rounds (py-spy) and its
    result's C{wait()} called after them.
    """
    n_body = min(count, 20000)
    rates, cpus, octets = [], [], 0
    recorder = spy() if spy is not None else None
    for _ in range(rounds):
        before = cpu()
        body_time, out = c.timed(f"fetch 1:{n_body} (BODY[])")
        cpus.append(cpu() - before)
        assert out.count(b" FETCH (") == n_body, out[-300:]
        octets = len(out)
        rates.append(n_body / body_time)
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait()
    rates.sort()
    cpus.sort()
    return {
        "FETCH BODY[] msgs/s": round(rates[len(rates) // 2]),
        "FETCH BODY[] msgs/s, best round": round(rates[-1]),
        "FETCH BODY[] MB/s": round(octets * rates[len(rates) // 2] / n_body / 1e6, 1),
        "FETCH BODY[] server CPU µs/msg": round(cpus[len(cpus) // 2] * 1e6 / n_body, 1),
    }


def measure(port: int, restart, pid, count: int, user: str, once=None, cpu=None, rounds: int = 3, body_only: bool = False, spy=None) -> dict:
    """
    The timings on one server: C{restart()} stops and starts it (its next
    SELECT is cold), C{pid()} gives its RSS (MB; a sum over its processes
    when it has several), C{once()} its memory with each shared page
    counted once (MB), C{cpu()} its CPU seconds so far. C{body_only}: just
    the FETCH BODY[] rounds (L{fetch_bodies}).
    """
    if body_only:
        c = Client(port())
        c.cmd(f"login {user} secret")
        c.cmd("select INBOX")
        c.cmd(f"fetch 1:{min(count, 20000)} (BODY.PEEK[])")  # the files in the page cache, for both servers
        return fetch_bodies(c, count, rounds, cpu, spy)
    c = Client(port())
    c.cmd(f"login {user} secret")
    # the first SELECT ever: no UID list (index) yet, every file gets its UID
    first, _ = c.timed("select INBOX")
    restart()
    c = Client(port())
    c.cmd(f"login {user} secret")
    cold_select, _ = c.timed("select INBOX")
    cold_fetch, out = c.timed("fetch 1:* (UID FLAGS RFC822.SIZE)")
    assert out.count(b" FETCH (") == count, out[-300:]
    c.cmd("unselect")
    warm_select, _ = c.timed("select INBOX")
    warm_fetch, _ = c.timed("fetch 1:* (UID FLAGS RFC822.SIZE)")
    search_cold, out = c.timed("search FROM carol")
    found = len(out.strip().split(b"\r\n")[0].split()) - 2
    search_warm, _ = c.timed("search FROM carol")
    bodies = fetch_bodies(c, count, rounds, cpu, spy)
    rss = pid()
    rss_once = once() if once is not None else rss
    # Restarted again: the index the last start wrote, the directories
    # untouched since (the usual case: the first restart above comes
    # seconds after the files were written).
    restart()
    c = Client(port())
    c.cmd(f"login {user} secret")
    again_select, _ = c.timed("select INBOX")
    return {
        "first index (SELECT, no UID list yet) ms": round(first * 1000),
        "cold SELECT ms": round(cold_select * 1000),
        "cold SELECT, next restart ms": round(again_select * 1000, 1),
        "cold FETCH 1:* ms": round(cold_fetch * 1000),
        "cold SELECT+FETCH ms": round((cold_select + cold_fetch) * 1000),
        "warm SELECT ms": round(warm_select * 1000, 1),
        "warm FETCH 1:* ms": round(warm_fetch * 1000),
        "warm SELECT+FETCH ms": round((warm_select + warm_fetch) * 1000),
        "SEARCH FROM first ms": round(search_cold * 1000),
        "SEARCH FROM again ms": round(search_warm * 1000),
        "SEARCH hits": found,
        **bodies,
        "server RSS MB": round(rss, 1),
        "server memory, shared pages once MB": round(rss_once, 1),
    }


def run(count: int, peer: bool, rounds: int = 3, body_only: bool = False, py_spy: str | None = None) -> dict[str, dict]:
    data = tempfile.mkdtemp(prefix=f"imapbench{count}-")
    results: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        make_maildir(os.path.join(data, "mail", "localhost", "alice"), count)
        made = time.perf_counter() - t
        hub = HubProcess(data, ["--no-ftp"]).start()
        try:
            spy = None
            if py_spy:
                # the thread holding the GIL: the hub's Python work
                spy = lambda: subprocess.Popen(  # noqa: E731
                    ["py-spy", "record", "--gil", "-r", "200", "-f", "raw", "-o", py_spy, "--pid", str(hub.process.pid)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            results["mailhub"] = measure(
                lambda: hub.ports["imap"],
                hub.restart,
                lambda: rss_mb(hub.process.pid),
                count,
                "alice",
                lambda: memory_once_mb([hub.process.pid]),
                cpu=lambda: cpu_seconds(hub.process.pid),
                rounds=rounds,
                body_only=body_only,
                spy=spy,
            )
        finally:
            hub.stop()
        results["mailhub"]["write files s"] = round(made, 2)
        if peer:
            # Dovecot on its own copy of the same messages (its files, its
            # index), served as user nobody: the folder must let it through.
            os.chmod(data, 0o755)
            make_maildir(os.path.join(data, "dovecot"), count)
            dovecot = Dovecot(os.path.join(data, "dovecot"), "alice", "secret").start()
            try:
                results["dovecot"] = measure(
                    lambda: dovecot.ports["imap"],
                    dovecot.restart,
                    dovecot.rss_mb,
                    count,
                    "alice",
                    dovecot.memory_once_mb,
                    cpu=lambda: cpu_seconds(dovecot.pid, tree=True),
                    rounds=rounds,
                    body_only=body_only,
                )
            finally:
                dovecot.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=numbers(","), default="10000,100000")
    parser.add_argument("--no-dovecot", action="store_true", help="do not run Dovecot beside the hub")
    parser.add_argument("--mix", action="store_true", help="the mixed workload beside Dovecot instead")
    parser.add_argument("--clients", type=int, default=10, help="--mix: client processes")
    parser.add_argument("--seconds", type=float, default=10, help="--mix: seconds per server and mode")
    parser.add_argument("--profile", action="store_true", help="--mix: py-spy the hub during its first run")
    parser.add_argument("--body-rounds", type=int, default=3, help="rounds of FETCH BODY[] (the median is shown)")
    parser.add_argument("--body-only", action="store_true", help="only the FETCH BODY[] rounds (no restarts, SEARCH or memory)")
    parser.add_argument("--py-spy", type=file_to_write, default=None, metavar="FILE", help="record the hub with py-spy during its FETCH BODY[] rounds (collapsed stacks)")
    args = parser.parse_args()
    if args.mix:
        from bench.imap_mix import main as mix

        mix(args.clients, args.seconds, args.profile)
        return
    peer = not args.no_dovecot and dovecot_available()
    if not args.no_dovecot and not peer:
        print("Dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d): the hub alone")
    print("load:", open("/proc/loadavg").read().strip())
    for count in args.sizes:
        results = run(count, peer, args.body_rounds, args.body_only, args.py_spy)
        names = list(results)
        print(f"{count} messages".ljust(45) + "".join(f"{name:>12s}" for name in names))
        for key in results["mailhub"]:
            print(f"{key:45s}" + "".join(f"{results[name].get(key, ''):>12}" for name in names))
        print()
    print("load after:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
