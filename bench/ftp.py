"""
FTP benchmark: the hub beside pyftpdlib, on loopback, in the same run.

    python3 bench/ftp.py [--size-mb 1024] [--clients 100] [--idle 500]
                         [--repeat 3] [--only concurrent,retr,stor,idle]

Measures, for each server:
  - single-stream RETR and STOR MB/s of one SIZE-MB file (passive, binary;
    the client reads into a reused buffer and sends with sendfile, so the
    client is not what is measured);
  - 100 concurrent clients (threads) each logging in and RETR-ing 1 MiB:
    aggregate MB/s over the wall time of the whole batch, and the server's
    CPU time per session (user + system, from /proc). The same client code
    runs against both servers; the client (100 Python threads) takes more
    CPU per session than either server, so on a loaded 2-core machine one
    batch varies by +-30%: the servers take turns (ABBA order) and the
    median of the runs is what the ratio uses (the best is shown too);
  - server RSS growth per idle logged-in control connection (IDLE of them).
Prints one table and the ratios hub / pyftpdlib. MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import ftplib
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYFTPDLIB_SERVER = r"""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
import logging
logging.basicConfig(level=logging.ERROR)
home = sys.argv[1]
auth = DummyAuthorizer()
auth.add_user("alice", "secret", home, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.use_sendfile = True
server = FTPServer(("127.0.0.1", 0), FTPHandler)
server.max_cons = 0
server.max_cons_per_ip = 0
print("port", server.socket.getsockname()[1], flush=True)
server.serve_forever(timeout=1, blocking=True, handle_exit=True)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_wait() -> int:
    """
    TCP sockets in TIME_WAIT on this host. Every finished data connection
    leaves one; with tens of thousands the kernel's search for a free port
    (bind to port 0, as pyftpdlib's PASV does) gets slow, so the figure goes
    with the results.
    """
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("tw") + 1])
    return 0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server:
    name = ""
    pid = 0
    port = 0
    home = ""

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Hub(Server):
    """
    The real C{twistd mailhub}, logging to a file: a pipe read by a thread
    in this process would tax the clients being timed (pyftpdlib logs
    nothing).
    """

    name = "mailhub"

    def __init__(self, data: str):
        os.makedirs(data, exist_ok=True)
        logfile = os.path.join(data, "hub.log")
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             f"--logfile={logfile}", "mailhub", "--data", data, "--user", "alice:secret", "--hostname", "bench.test",
             "--ftp", "tcp:0:interface=127.0.0.1", "--ftp-max-per-ip", "0", "--ftp-idle-timeout", "3600",
             "--max-connections", "0", "--max-connections-per-ip", "0"]
            + [f"--no-{name}" for name in self._other_listeners()],
            env=env, cwd=data,
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = open(logfile).read() if os.path.exists(logfile) else ""
            m = re.search(r"mailhub ready (\{.*\})", text)
            if m:
                self.port = json.loads(m.group(1))["ftp"]
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("mailhub did not start")
        self.home = os.path.join(data, "ftp", "localhost", "alice")
        os.makedirs(self.home, exist_ok=True)

    @staticmethod
    def _other_listeners():
        from twisted_mailhub import tap

        return [spec.name for m in tap._components() for spec in getattr(m, "listeners", []) if spec.name != "ftp"]


class Pyftpdlib(Server):
    name = "pyftpdlib"

    def __init__(self, home: str):
        self.home = home
        os.makedirs(home, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", PYFTPDLIB_SERVER, home], stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        line = self.process.stdout.readline()
        self.port = int(re.search(r"port (\d+)", line).group(1))


def login(server: Server) -> ftplib.FTP:
    f = ftplib.FTP(timeout=120)
    f.connect("127.0.0.1", server.port)
    f.login("alice", "secret")
    f.voidcmd("TYPE I")
    return f


def drain(conn: socket.socket, buf: bytearray) -> int:
    """Read a data connection to its end into a reused buffer; the count."""
    total = 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            return total
        total += n


def retr_speed(server: Server, name: str) -> float:
    f = login(server)
    start = time.perf_counter()
    conn = f.transfercmd(f"RETR {name}")
    total = drain(conn, bytearray(4 * 1024 * 1024))
    conn.close()
    f.voidresp()
    elapsed = time.perf_counter() - start
    f.quit()
    return total / elapsed / 1e6


def stor_speed(server: Server, source: str, name: str) -> float:
    f = login(server)
    size = os.path.getsize(source)
    start = time.perf_counter()
    conn = f.transfercmd(f"STOR {name}")
    with open(source, "rb") as fp:
        conn.sendfile(fp)
    conn.close()
    f.voidresp()  # the hub answers 226 only once the file is fsynced
    elapsed = time.perf_counter() - start
    f.quit()
    got = os.path.getsize(os.path.join(server.home, name))
    assert got == size, (got, size)
    return size / elapsed / 1e6


def _retr_threads(server: Server, clients: int, name: str, size: int, start, errors: list) -> None:
    """C{clients} threads, each one session: login, RETR C{name}, QUIT."""
    barrier = threading.Barrier(clients + 1)

    def one():
        try:
            barrier.wait()
            f = login(server)
            conn = f.transfercmd(f"RETR {name}")
            got = drain(conn, bytearray(256 * 1024))
            conn.close()
            f.voidresp()
            f.quit()
            if got != size:
                errors.append(f"short read {got}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    start()
    barrier.wait()
    for t in threads:
        t.join()


def _retr_process(server, clients, name, size, ready, go, out):
    errors: list = []

    def start():
        ready.release()
        go.wait()

    _retr_threads(server, clients, name, size, start, errors)
    out.put(errors)


def concurrent_retr(server: Server, clients: int, name: str, size: int, procs: int = 1) -> float:
    """
    Aggregate MB/s of C{clients} simultaneous sessions, run by C{procs}
    client processes (threads in each): from the moment all are ready to
    the end of the last one.
    """
    if procs <= 1:
        errors: list = []
        times = []
        _retr_threads(server, clients, name, size, lambda: times.append(time.perf_counter()), errors)
        elapsed = time.perf_counter() - times[0]
    else:
        ctx = multiprocessing.get_context("fork")
        ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        shares = [clients // procs + (i < clients % procs) for i in range(procs)]
        workers = [ctx.Process(target=_retr_process, args=(server, n, name, size, ready, go, out)) for n in shares]
        for w in workers:
            w.start()
        for _ in workers:
            ready.acquire()
        start = time.perf_counter()
        go.set()
        errors = [e for _ in workers for e in out.get()]
        elapsed = time.perf_counter() - start
        for w in workers:
            w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[:3]}")
    return clients * size / elapsed / 1e6


def idle_rss(server: Server, count: int) -> float:
    before = rss_kb(server.pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        fp = s.makefile("rb")
        fp.readline()
        s.sendall(b"USER alice\r\n")
        fp.readline()
        s.sendall(b"PASS secret\r\n")
        line = fp.readline()
        assert line.startswith(b"230"), line
        socks.append((s, fp))
    time.sleep(0.5)
    after = rss_kb(server.pid)
    for s, fp in socks:
        fp.close()
        s.close()
    return (after - before) * 1024 / count


def make_file(path: str, size: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    chunk = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


PARTS = ("idle", "retr", "stor", "concurrent")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024, help="single-stream file size in MiB")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement, servers alternating")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client processes sharing the concurrent sessions (1: threads in this one)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)}")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--only takes {','.join(PARTS)}")
    sys.path.insert(0, ROOT)

    work = tempfile.mkdtemp(prefix="ftpbench-")
    big = os.path.join(work, "big.bin")
    if parts & {"retr", "stor"}:
        make_file(big, args.size_mb * 1024 * 1024)
    small = os.urandom(1024 * 1024)
    results: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    servers = [Hub(os.path.join(work, "hub")), Pyftpdlib(os.path.join(work, "pyftpdlib"))]
    tw_before = time_wait()
    try:
        for server in servers:
            results[server.name] = {}
            runs[server.name] = {"concurrent": [], "cpu": []}
            if os.path.exists(big):
                os.link(big, os.path.join(server.home, "big.bin"))
            with open(os.path.join(server.home, "small.bin"), "wb") as f:
                f.write(small)
        for server in servers:
            if "idle" in parts:
                results[server.name]["idle_bytes_per_conn"] = idle_rss(server, args.idle)
            if "retr" in parts:
                retr_speed(server, "big.bin")  # warm the page cache
            if "concurrent" in parts:
                concurrent_retr(server, args.clients, "small.bin", len(small), args.client_procs)  # warm up
        # One measurement at a time (a concurrent batch right after a 1 GB
        # STOR shares the machine with its writeback), each alternating
        # between the servers (ABBA...), --repeat times: the machine's load
        # changes by the minute.
        for part in ("retr", "stor", "concurrent"):
            if part not in parts:
                continue
            for i in range(args.repeat):
                for server in servers if i % 2 == 0 else servers[::-1]:
                    r = results[server.name]
                    if part == "retr":
                        r["retr_MBps"] = max(r.get("retr_MBps", 0), retr_speed(server, "big.bin"))
                    elif part == "stor":
                        r["stor_MBps"] = max(r.get("stor_MBps", 0), stor_speed(server, big, "up.bin"))
                        os.remove(os.path.join(server.home, "up.bin"))
                    else:
                        before = cpu_seconds(server.pid)
                        rate = concurrent_retr(server, args.clients, "small.bin", len(small), args.client_procs)
                        runs[server.name]["cpu"].append(cpu_seconds(server.pid) - before)
                        runs[server.name]["concurrent"].append(rate)
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["rm", "-rf", work])

    for name, r in results.items():
        if "concurrent" in parts:
            r["concurrent_retr_MBps"] = statistics.median(runs[name]["concurrent"])
            r["concurrent_best_MBps"] = max(runs[name]["concurrent"])
            r["concurrent_cpu_ms_per_session"] = sum(runs[name]["cpu"]) * 1e3 / (args.clients * args.repeat)
    hub, ref = results["mailhub"], results["pyftpdlib"]
    print(f"loadavg {os.getloadavg()}; file {args.size_mb} MiB; {args.clients} clients x 1 MiB in {args.client_procs} client processes; {args.idle} idle; {args.repeat} runs")
    print(f"TIME_WAIT sockets on this host: {tw_before} before, {time_wait()} after")
    print(f"{'metric':30} {'mailhub':>12} {'pyftpdlib':>12} {'ratio':>7}")
    for key in hub:
        ratio = hub[key] / ref[key] if ref[key] else float("nan")
        print(f"{key:30} {hub[key]:12.2f} {ref[key]:12.2f} {ratio:7.2f}")
    if "concurrent" in parts:
        for name in runs:
            print(f"{name} concurrent runs MB/s: {' '.join(f'{x:.0f}' for x in runs[name]['concurrent'])}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
