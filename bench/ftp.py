"""
FTP benchmark: the hub beside pyftpdlib, on loopback, in the same run.

    python3 bench/ftp.py [--size-mb 1024] [--clients 100] [--idle 500]

Measures, for each server:
  - single-stream RETR and STOR MB/s of one SIZE-MB file (passive, binary;
    the client reads into a reused buffer and sends with sendfile, so the
    client is not what is measured);
  - 100 concurrent clients (threads) each logging in and RETR-ing 1 MiB:
    aggregate MB/s over the wall time of the whole batch;
  - server RSS growth per idle logged-in control connection (IDLE of them).
Prints one table and the ratios hub / pyftpdlib. MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import ftplib
import json
import os
import re
import socket
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
             "--ftp", "tcp:0:interface=127.0.0.1", "--ftp-max-per-ip", "0", "--ftp-idle-timeout", "3600"]
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


def concurrent_retr(server: Server, clients: int, name: str, size: int) -> float:
    errors = []
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
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024, help="single-stream file size in MiB")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is kept")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)

    work = tempfile.mkdtemp(prefix="ftpbench-")
    big = os.path.join(work, "big.bin")
    make_file(big, args.size_mb * 1024 * 1024)
    small = os.urandom(1024 * 1024)
    results: dict[str, dict[str, float]] = {}
    servers = [Hub(os.path.join(work, "hub")), Pyftpdlib(os.path.join(work, "pyftpdlib"))]
    try:
        for server in servers:
            os.link(big, os.path.join(server.home, "big.bin"))
            with open(os.path.join(server.home, "small.bin"), "wb") as f:
                f.write(small)
        for server in servers:
            results[server.name] = {"idle_bytes_per_conn": idle_rss(server, args.idle)}
            retr_speed(server, "big.bin")  # warm the page cache
        # Each measurement alternates between the servers, --repeat times,
        # and keeps each one's best: the machine's load changes by the minute.
        for i in range(args.repeat):
            for server in servers:
                r = results[server.name]
                r["retr_MBps"] = max(r.get("retr_MBps", 0), retr_speed(server, "big.bin"))
                r["stor_MBps"] = max(r.get("stor_MBps", 0), stor_speed(server, big, "up.bin"))
                os.remove(os.path.join(server.home, "up.bin"))
                r["concurrent_retr_MBps"] = max(
                    r.get("concurrent_retr_MBps", 0), concurrent_retr(server, args.clients, "small.bin", len(small))
                )
    finally:
        for server in servers:
            server.stop()
        subprocess.run(["rm", "-rf", work])

    hub, ref = results["mailhub"], results["pyftpdlib"]
    print(f"loadavg {os.getloadavg()}; file {args.size_mb} MiB; {args.clients} clients x 1 MiB; {args.idle} idle")
    print(f"{'metric':28} {'mailhub':>12} {'pyftpdlib':>12} {'ratio':>7}")
    for key in ("retr_MBps", "stor_MBps", "concurrent_retr_MBps", "idle_bytes_per_conn"):
        ratio = hub[key] / ref[key] if ref[key] else float("nan")
        print(f"{key:28} {hub[key]:12.0f} {ref[key]:12.0f} {ratio:7.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
