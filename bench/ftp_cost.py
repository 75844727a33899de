"""
FTP cost per session and per idle connection: the hub of this tree beside
the hub of another tree (an older commit) and pyftpdlib, in the same run.

    python3 bench/ftp_cost.py [--old DIR] [--sessions 1000] [--idle 300]
                              [--rounds 3] [--tracemalloc] [--no-pyftpdlib]

    # the tree of a commit, beside this one:
    git worktree add --detach /tmp/ftp-old 4e4ea9c
    python3 bench/ftp_cost.py --old /tmp/ftp-old
    python3 bench/ftp_cost.py --old /tmp/ftp-old --callgrind 100

For each server, in alternating rounds (A B C, C B A, ...):
  - CPU per session: SESSIONS sessions one after another from one client
    (connect, USER, PASS, TYPE I, PASV, RETR of a 64 KiB file, QUIT), the
    server's user + system CPU from /proc divided by SESSIONS. The client's
    CPU is not counted, so a busy machine changes the figure far less than
    a rate;
  - memory per idle connection: IDLE control connections logged in and
    left idle, the server's RSS growth divided by IDLE; with
    C{--tracemalloc} (hubs only) also the Python objects they hold, from
    C{tracemalloc} in the hub (exact, unlike RSS, which grows by pages and
    arenas).
Medians over the rounds. The hubs run as in bench/ftp.py (C{twistd -n
mailhub}, every other listener off, logging to a file), with the web
console's session recording on as by default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from cpu import cpu_seconds  # noqa: E402
from ftp import PYFTPDLIB_SERVER, rss_kb  # noqa: E402
from arguments import source_tree  # noqa: E402

# Run in the hub's process before twistd: on SIGUSR2, write the Python
# memory tracemalloc traces now to the file named in the environment.
HUB_MAIN = r"""
import os, signal, sys
out = os.environ.get("FTPCOST_TRACE")
if out:
    import tracemalloc
    tracemalloc.start(1)
    def dump(signum, frame):
        with open(out + ".tmp", "w") as f:
            f.write(str(tracemalloc.get_traced_memory()[0]))
        os.rename(out + ".tmp", out)
    signal.signal(signal.SIGUSR2, dump)
from twisted.scripts.twistd import run
run()
"""


class Server:
    name = ""
    port = 0
    home = ""
    process: subprocess.Popen
    trace = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def traced(self) -> int | None:
        """Bytes of Python objects the hub holds now (C{--tracemalloc})."""
        if not self.trace:
            return None
        if os.path.exists(self.trace):
            os.remove(self.trace)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.trace):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no tracemalloc answer")
            time.sleep(0.01)
        with open(self.trace) as f:
            return int(f.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Hub(Server):
    def __init__(self, name: str, root: str, data: str, trace: bool, callgrind: str = ""):
        self.name = name
        os.makedirs(data)
        logfile = os.path.join(data, "hub.log")
        env = dict(os.environ, PYTHONPATH=root)
        if trace:
            self.trace = os.path.join(data, "traced")
            env["FTPCOST_TRACE"] = self.trace
        others = subprocess.run(
            [sys.executable, "-c", "from twisted_mailhub import tap; print(' '.join(s.name for m in tap._components() for s in getattr(m, 'listeners', []) if s.name != 'ftp'))"],
            env=env, cwd=data, capture_output=True, text=True, check=True,
        ).stdout.split()
        command = [sys.executable, "-c", HUB_MAIN, "-n", "--pidfile=", f"--logfile={logfile}", "mailhub", "--data", data,
                   "--user", "alice:secret", "--hostname", "bench.test", "--ftp", "tcp:0:interface=127.0.0.1",
                   "--ftp-max-per-ip", "0", "--ftp-idle-timeout", "3600"] + [f"--no-{n}" for n in others]
        if "max-connections-per-ip" in subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "mailhub", "--help"],
            env=env, cwd=data, capture_output=True, text=True,
        ).stdout:
            command += ["--max-connections", "0", "--max-connections-per-ip", "0"]
        if callgrind:
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind}/cg.%p"] + command
        self.process = subprocess.Popen(command, env=env, cwd=data, stderr=subprocess.DEVNULL if callgrind else None)
        deadline = time.monotonic() + (600 if callgrind else 60)
        while True:
            text = open(logfile).read() if os.path.exists(logfile) else ""
            m = re.search(r"mailhub ready (\{.*\})", text)
            if m:
                self.port = json.loads(m.group(1))["ftp"]
                break
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{text[-3000:]}")
            time.sleep(0.05)
        self.home = os.path.join(data, "ftp", "localhost", "alice")
        os.makedirs(self.home, exist_ok=True)


class Pyftpdlib(Server):
    name = "pyftpdlib"

    def __init__(self, home: str):
        self.home = home
        os.makedirs(home)
        self.process = subprocess.Popen([sys.executable, "-c", PYFTPDLIB_SERVER, home], stdout=subprocess.PIPE, text=True)
        self.port = int(re.search(r"port (\d+)", self.process.stdout.readline()).group(1))


class Control:
    """A raw control connection: one command, one reply (single-line replies)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.fp = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> bytes:
        line = self.fp.readline()
        while line[3:4] == b"-":
            code = line[:3]
            line = self.fp.readline()
            while not line.startswith(code + b" "):
                line = self.fp.readline()
        return line

    def ask(self, command: bytes, want: bytes) -> bytes:
        self.sock.sendall(command + b"\r\n")
        line = self.reply()
        if not line.startswith(want):
            raise RuntimeError(f"{command!r}: {line!r}")
        return line

    def login(self) -> None:
        self.ask(b"USER alice", b"331")
        self.ask(b"PASS secret", b"230")

    def close(self) -> None:
        self.fp.close()
        self.sock.close()


def one_session(port: int, size: int, buf: bytearray) -> None:
    c = Control(port)
    c.login()
    c.ask(b"TYPE I", b"200")
    line = c.ask(b"PASV", b"227")
    h = [int(x) for x in re.search(rb"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", line).groups()]
    data = socket.create_connection(("127.0.0.1", h[4] * 256 + h[5]), timeout=60)
    c.sock.sendall(b"RETR small.bin\r\n")
    got = 0
    while True:
        n = data.recv_into(buf)
        if not n:
            break
        got += n
    data.close()
    first = c.reply()
    if not first.startswith(b"150") and not first.startswith(b"125"):
        raise RuntimeError(f"RETR: {first!r}")
    done = c.reply()
    if not done.startswith(b"226") or got != size:
        raise RuntimeError(f"RETR: {done!r}, {got} of {size} octets")
    c.ask(b"QUIT", b"221")
    c.close()


def cpu_per_session(server: Server, sessions: int, size: int) -> float:
    """Milliseconds of the server's CPU per session."""
    buf = bytearray(256 * 1024)
    before = cpu_seconds(server.pid)
    for _ in range(sessions):
        one_session(server.port, size, buf)
    time.sleep(0.2)  # the last connection's close
    return (cpu_seconds(server.pid) - before) * 1e3 / sessions


def idle_cost(server: Server, count: int) -> tuple[float, float | None]:
    """RSS growth and traced Python memory, bytes per idle logged-in control connection."""
    time.sleep(0.3)
    rss_before, traced_before = rss_kb(server.pid), server.traced()
    held = []
    for _ in range(count):
        c = Control(server.port)
        c.login()
        held.append(c)
    time.sleep(0.5)
    rss_after, traced_after = rss_kb(server.pid), server.traced()
    for c in held:
        c.close()
    time.sleep(0.5)
    traced = None if traced_before is None else (traced_after - traced_before) / count
    return (rss_after - rss_before) * 1024 / count, traced


def callgrind(servers: list, sessions: int, size: int, out: str) -> None:
    """
    The hubs' user-space instructions per session, counted by valgrind's
    callgrind (the kernel's share is not counted): the same on a busy
    machine as on a quiet one.
    """
    import glob

    for server in servers:
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        buf = bytearray(256 * 1024)
        for _ in range(sessions):
            one_session(server.port, size, buf)
        time.sleep(1)  # the last connection's close
        subprocess.run(["callgrind_control", "--dump=sessions", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        for path in glob.glob(os.path.join(out, f"cg.{server.pid}.*")):
            with open(path) as f:
                text = f.read()
            if "Trigger: dump sessions" in text:
                total = int(text.split("\nsummary: ", 1)[1].split("\n", 1)[0])
                print(f"{server.name:12} callgrind: {total / sessions:,.0f} instructions per session", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=source_tree, help="another tree's root (e.g. a worktree of an older commit): its hub runs beside this one")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64 * 1024, help="octets of the file each session RETRs")
    parser.add_argument("--tracemalloc", action="store_true", help="also the hubs' Python memory per idle connection (slows the hubs: CPU figures are then not comparable with runs without)")
    parser.add_argument("--no-pyftpdlib", action="store_true")
    parser.add_argument("--callgrind", type=int, default=0, metavar="N",
                        help="only count the hubs' instructions per session under valgrind's callgrind, over N sessions (100 is plenty)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ftpcost-")
    counted = os.path.join(work, "callgrind") if args.callgrind else ""
    if counted:
        os.makedirs(counted)
    servers: list[Server] = []
    try:
        servers.append(Hub("hub", ROOT, os.path.join(work, "hub"), args.tracemalloc, counted))
        if args.old:
            servers.append(Hub("old hub", os.path.abspath(args.old), os.path.join(work, "old"), args.tracemalloc, counted))
        if counted:
            for server in servers:
                with open(os.path.join(server.home, "small.bin"), "wb") as f:
                    f.write(os.urandom(args.size))
                cpu_per_session(server, 20, args.size)  # warm up
            callgrind(servers, args.callgrind, args.size, counted)
            return
        if not args.no_pyftpdlib:
            servers.append(Pyftpdlib(os.path.join(work, "pyftpdlib")))
        payload = os.urandom(args.size)
        for server in servers:
            with open(os.path.join(server.home, "small.bin"), "wb") as f:
                f.write(payload)
            cpu_per_session(server, 50, args.size)  # warm up
        cpu: dict[str, list[float]] = {s.name: [] for s in servers}
        rss: dict[str, list[float]] = {s.name: [] for s in servers}
        traced: dict[str, list[float]] = {s.name: [] for s in servers}
        for i in range(args.rounds):
            for server in servers if i % 2 == 0 else servers[::-1]:
                cpu[server.name].append(cpu_per_session(server, args.sessions, args.size))
                r, t = idle_cost(server, args.idle)
                rss[server.name].append(r)
                if t is not None:
                    traced[server.name].append(t)
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["rm", "-rf", work])
    print(f"loadavg {os.getloadavg()}; {args.sessions} sessions (RETR {args.size} octets) and {args.idle} idle connections per round; {args.rounds} rounds; tracemalloc {'on' if args.tracemalloc else 'off'}")
    print(f"{'server':12} {'CPU ms/session':>15} {'RSS B/idle conn':>16} {'Python B/idle conn':>19}   (medians; each round)")
    for s in servers:
        t = f"{statistics.median(traced[s.name]):19.0f}" if traced[s.name] else f"{'-':>19}"
        rounds = " ".join(f"{c:.3f}/{r:.0f}" for c, r in zip(cpu[s.name], rss[s.name]))
        print(f"{s.name:12} {statistics.median(cpu[s.name]):15.3f} {statistics.median(rss[s.name]):16.0f} {t}   {rounds}")


if __name__ == "__main__":
    main()
