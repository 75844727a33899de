"""
IMAP mixed workload (`python3 bench/imap.py --mix`): N client processes
each loop LOGIN, SELECT, FETCH of flags, FETCH of bodies, STORE of flags and
keywords, APPEND, COPY, EXPUNGE, LOGOUT for a fixed time, against the hub
and against Debian's Dovecot run beside it in the same run (a private
configuration on a loopback port, passwd-file userdb, Maildir; stopped by
its PID), both on a mailbox of a few hundred varied messages. Reports
commands/s and per-command latency percentiles, with and without
pipelining; and each server's CPU per command (the hub's process, all of
Dovecot's processes), which a busy machine disturbs far less.

    python3 bench/imap.py --mix                      # 10 clients, 10 s each way
    python3 bench/imap.py --mix --clients 4 --seconds 5 --profile

--profile runs py-spy on the hub during its first run and prints the
functions with the most samples.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402

MESSAGES = 300
NEW = b"From: Bench <bench@example.org>\r\nTo: alice@localhost\r\nSubject: mixed load\r\n\r\n" + b"A line of text.\r\n" * 30


def make_maildir(path: str, count: int) -> None:
    """A few hundred varied messages: sizes, flags, multipart, senders."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    start = int(time.time()) - count
    rng = random.Random(7)
    for i in range(count):
        if i % 5 == 0:
            body = (
                f"From: Sender {i % 7} <s{i % 7}@example.org>\r\nTo: alice@localhost\r\nSubject: parts {i}\r\n"
                f"Message-ID: <{i}@bench>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b{i}\r\n\r\n"
                f"--b{i}\r\nContent-Type: text/plain\r\n\r\nhello {i}\r\n--b{i}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n" + "QUJDRA==\r\n" * rng.randint(10, 400) + f"--b{i}--\r\n"
            ).encode()
        else:
            body = (
                f"From: Sender {i % 7} <s{i % 7}@example.org>\r\nTo: alice@localhost\r\nSubject: message {i}\r\n"
                f"Message-ID: <{i}@bench>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
                + "The quick brown fox jumps over the lazy dog.\r\n" * rng.randint(2, 200)
            ).encode()
        flags = rng.choice(["", "S", "S", "FS", "RS"])
        name = f"{start + i}.M{i}P1Q{i}.bench,S={len(body)}:2,{flags}"
        with open(os.path.join(path, "cur", name), "wb") as f:
            f.write(body)
        os.utime(os.path.join(path, "cur", name), (start + i, start + i))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Dovecot:
    """Debian's dovecot-imapd with a private configuration on a loopback port."""

    def __init__(self, root: str):
        self.root = root
        self.port = free_port()
        home = os.path.join(root, "home", "alice")
        make_maildir(os.path.join(home, "Maildir"), MESSAGES)
        for sub in ("state", "run"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        with open(os.path.join(root, "passwd"), "w") as f:
            f.write(f"alice:{{PLAIN}}secret:65534:65534::{home}\n")
        self.conf = os.path.join(root, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service imap {{
  process_limit = 64
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""
            )
        subprocess.run(["chown", "-R", "65534:65534", os.path.join(root, "home")], check=True)
        os.chmod(root, 0o755)
        self.process = subprocess.Popen(["dovecot", "-F", "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Session:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.n = 0
        self._line()

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2 :]
                m = re.search(rb"\{(\d+)\}$", line)
                if m:  # a literal: take its octets too
                    n = int(m.group(1))
                    while len(self.buf) < n:
                        self.buf += self._recv()
                    line += self.buf[:n]
                    self.buf = self.buf[n:]
                    continue_line = self._line()
                    return line + continue_line
                return line
            self.buf += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(262144)
        if not data:
            raise EOFError
        return data

    def batch(self, commands: list[tuple[str, bytes]], latencies: dict) -> list[bytes]:
        """Send commands together; wait for every tagged reply; record each one's latency."""
        tags = []
        out = []
        for name, text in commands:
            self.n += 1
            tag = b"b%d" % self.n
            tags.append((tag, name))
            out.append(tag + b" " + text + b"\r\n")
        t0 = time.perf_counter()
        self.sock.sendall(b"".join(out))
        replies = []
        for tag, name in tags:
            while True:
                line = self._line()
                if line.startswith(tag + b" "):
                    latencies.setdefault(name, []).append(time.perf_counter() - t0)
                    if not line.startswith(tag + b" OK"):
                        raise RuntimeError(f"{name}: {line!r}")
                    replies.append(line)
                    break
        return replies


def client(port: int, seconds: float, pipeline: bool, seed: int, queue) -> None:
    rng = random.Random(seed)
    latencies: dict[str, list[float]] = {}
    errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            s = Session(port)
            run = (lambda cs: s.batch(cs, latencies)) if pipeline else (lambda cs: [s.batch([c], latencies)[0] for c in cs])
            run([("LOGIN", b"LOGIN alice secret")])
            run([("SELECT", b"SELECT INBOX")])
            picks = ",".join(str(rng.randint(1, MESSAGES)) for _ in range(5)).encode()
            one = rng.randint(1, MESSAGES)
            run(
                [
                    ("FETCH flags", b"FETCH 1:* (UID FLAGS)"),
                    ("FETCH bodies", b"FETCH " + picks + b" (BODY.PEEK[] RFC822.SIZE)"),
                    ("STORE", b"STORE %d +FLAGS (\\Flagged $Bench%d)" % (one, rng.randint(1, 5))),
                    ("STORE", b"STORE %d -FLAGS (\\Flagged)" % one),
                    ("COPY", b"COPY %d Bench" % one),
                ]
            )
            [appended] = run([("APPEND", b"APPEND INBOX (\\Seen) {%d+}\r\n" % len(NEW) + NEW)])
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", appended).group(1))
            run([("STORE", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid), ("EXPUNGE", b"EXPUNGE")])
            run([("LOGOUT", b"LOGOUT")])
            s.sock.close()
        except (RuntimeError, EOFError, OSError):
            errors += 1
    queue.put((latencies, errors))


def measure(port: int, clients: int, seconds: float, pipeline: bool, pid: int = 0) -> dict:
    """Run the clients; with C{pid}, also the CPU seconds that server process (and its children) used."""
    queue = multiprocessing.Queue()
    cpu_before = cpu_seconds(pid, tree=True) if pid else 0.0
    procs = [multiprocessing.Process(target=client, args=(port, seconds, pipeline, i, queue)) for i in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid, tree=True) - cpu_before if pid else 0.0
    merged: dict[str, list[float]] = {}
    errors = 0
    for latencies, e in results:
        errors += e
        for name, values in latencies.items():
            merged.setdefault(name, []).extend(values)
    every = sorted(v for values in merged.values() for v in values)
    return {"commands/s": len(every) / elapsed, "errors": errors, "all": every, "by": merged, "cpu": cpu}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else 0.0


def report(name: str, result: dict) -> None:
    every = result["all"]
    cpu = f"  CPU {result['cpu'] * 1e6 / len(every):5.0f} µs/command" if result.get("cpu") and every else ""
    print(f"{name:28s} {result['commands/s']:8.0f} commands/s  p50 {pct(every, .5):6.1f} ms  p90 {pct(every, .9):6.1f} ms  p99 {pct(every, .99):6.1f} ms  errors {result['errors']}{cpu}")
    for command in sorted(result["by"]):
        values = result["by"][command]
        print(f"    {command:14s} n={len(values):6d}  p50 {pct(values, .5):6.1f} ms  p90 {pct(values, .9):6.1f} ms")


def profile(pid: int, seconds: float) -> subprocess.Popen:
    out = os.path.join(tempfile.gettempdir(), f"hub-profile-{pid}.txt")
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw", "--output", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ), out


def print_profile(path: str, top: int = 15) -> None:
    """Self samples per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"hub profile ({total} samples), most self time:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {frame}")


def main(clients: int, seconds: float, with_profile: bool) -> None:
    if shutil.which("dovecot") is None:
        raise SystemExit("dovecot not found: apt-get install dovecot-imapd")
    print("load:", open("/proc/loadavg").read().strip())
    root = tempfile.mkdtemp(prefix="imapmix-")
    os.chmod(root, 0o755)  # Dovecot's auth and mail processes run as other users
    dovecot = hub = None
    try:
        make_maildir(os.path.join(root, "hub", "mail", "localhost", "alice"), MESSAGES)
        hub = HubProcess(os.path.join(root, "hub"), ["--no-ftp"]).start()
        dovecot = Dovecot(os.path.join(root, "dovecot"))
        for port in (hub.ports["imap"], dovecot.port):
            deadline = time.monotonic() + 20
            while True:  # Dovecot's auth process may still be starting
                try:
                    s = Session(port)
                    s.batch([("LOGIN", b"LOGIN alice secret"), ("CREATE", b"CREATE Bench")], {})
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        for pipeline in (False, True):
            mode = "pipelined" if pipeline else "one at a time"
            spy = None
            if with_profile and not pipeline:
                spy, spy_out = profile(hub.process.pid, seconds)
            report(f"hub, {mode}", measure(hub.ports["imap"], clients, seconds, pipeline, hub.process.pid))
            if spy is not None:
                spy.wait()
            report(f"dovecot, {mode}", measure(dovecot.port, clients, seconds, pipeline, dovecot.process.pid))
            if spy is not None and os.path.exists(spy_out):
                print_profile(spy_out)
    finally:
        if dovecot is not None:
            dovecot.stop()
        if hub is not None:
            hub.stop()
        shutil.rmtree(root, ignore_errors=True)
