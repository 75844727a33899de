"""
SFTP benchmark: the hub beside OpenSSH's own sftp-server (a private sshd on
a loopback port), in the same run, with the OpenSSH sftp client.

    python3 bench/sftp.py [--size-mb 1024] [--clients 100] [--idle 50]
                          [--only get,put,concurrent,idle] [--same-cipher]

Measures, for each server:
  - one SIZE-MB file: `put` then `get` with `sftp -b` (key login, default
    cipher: what OpenSSH's client and each server agree on is printed);
    MB/s over the wall time of the sftp process. With --same-cipher, also
    OpenSSH forced to the hub's cipher and MAC (aes128-ctr, hmac-sha2-256).
  - CLIENTS concurrent sftp processes each uploading its own 1 MiB file:
    wall time of the batch, and the sha256 of every file on the server.
  - the hub's RSS growth per idle authenticated SFTP session (IDLE paramiko
    sessions with the sftp subsystem open, measured first, on a fresh
    hub); for sshd, the RSS of the processes (sshd session + sftp-server)
    each session adds.
Needs openssh-client and openssh-server (Debian). MB is 10^6 bytes. On a
busy machine the figures vary: the two servers run in the same conditions,
one right after the other, so the ratios are what to read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 10**6


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Hub:
    name = "mailhub"

    def __init__(self, data: str, client_pub: str):
        os.makedirs(os.path.join(data, "ssh", "authorized_keys"), exist_ok=True)
        shutil.copy(client_pub, os.path.join(data, "ssh", "authorized_keys", "alice@localhost"))
        logfile = os.path.join(data, "hub.log")
        env = dict(os.environ, PYTHONPATH=ROOT)
        sys.path.insert(0, ROOT)
        from twisted_mailhub import tap

        others = [s.name for m in tap._components() for s in getattr(m, "listeners", []) if s.name != "sftp"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             f"--logfile={logfile}", "mailhub", "--data", data, "--user", "alice:secret", "--hostname", "bench.test",
             "--sftp", "tcp:0:interface=127.0.0.1", "--max-connections", "0", "--max-connections-per-ip", "0"]
            + [f"--no-{name}" for name in others],
            env=env, cwd=data,
        )
        self.pid = self.process.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = open(logfile).read() if os.path.exists(logfile) else ""
            m = re.search(r"mailhub ready (\{.*\})", text)
            if m:
                self.port = json.loads(m.group(1))["sftp"]
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("mailhub did not start")
        self.user = "alice"
        self.home = os.path.join(data, "ftp", "localhost", "alice")
        os.makedirs(self.home, exist_ok=True)
        self.remote_dir = "/"  # the hub's SFTP root is the home

    def session_pids(self):
        return [self.pid]

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


class OpenSSH:
    name = "openssh"

    def __init__(self, folder: str, client_pub: str):
        os.makedirs("/run/sshd", exist_ok=True)
        self.home = os.path.join(folder, "files")
        os.makedirs(self.home)
        host_key = os.path.join(folder, "host_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        self.port = _free_port()
        config = os.path.join(folder, "sshd_config")
        sftp_server = next(p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if os.path.exists(p))
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {folder}/sshd.pid\n"
                f"AuthorizedKeysFile {client_pub}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                f"PermitRootLogin prohibit-password\nSubsystem sftp {sftp_server}\nMaxStartups 200\nMaxSessions 200\n"
            )
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config], stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        _wait_port(self.port)
        import pwd

        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.remote_dir = self.home

    def session_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout.split()
        pids = [int(p) for p in out]
        for pid in list(pids):
            pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
        return pids

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def sftp(server, key: str, commands: str, extra=(), verbose=False) -> subprocess.CompletedProcess:
    args = ["sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-i", key, "-o", "LogLevel=" + ("DEBUG1" if verbose else "ERROR"), *extra,
            "-P", str(server.port), "-b", "-", f"{server.user}@127.0.0.1"]
    done = subprocess.run(args, input=commands, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"sftp to {server.name} failed: {done.stderr[-2000:]}")
    return done


def negotiated(server, key, extra=()) -> str:
    done = sftp(server, key, "pwd\n", extra, verbose=True)
    m = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", done.stderr)
    return f"{m.group(1)} / {m.group(2)}" if m else "?"


def transfer(server, key, source: str, size: int, extra=()) -> tuple[float, float, float, float]:
    """(put MB/s, get MB/s, server CPU s for put, for get)."""
    remote = os.path.join(server.remote_dir, "big.bin")
    back = source + ".back"
    cpu0 = sum(cpu_seconds(p) for p in [server.pid])
    t0 = time.monotonic()
    sftp(server, key, f"put {source} {remote}\n", extra)
    t1 = time.monotonic()
    sftp(server, key, f"get {remote} {back}\n", extra)
    t2 = time.monotonic()
    if os.path.getsize(back) != size:
        raise RuntimeError(f"{server.name}: got {os.path.getsize(back)} bytes back")
    os.remove(back)
    os.remove(os.path.join(server.home, "big.bin"))
    del cpu0
    return size / MB / (t1 - t0), size / MB / (t2 - t1), t1 - t0, t2 - t1


def concurrent_uploads(server, key, folder: str, clients: int) -> tuple[float, int]:
    sources = []
    for i in range(clients):
        path = os.path.join(folder, f"c{i}.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(1024 * 1024))
        sources.append(path)
    t0 = time.monotonic()
    procs = []
    for i, path in enumerate(sources):
        args = ["sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "IdentitiesOnly=yes", "-i", key, "-o", "LogLevel=ERROR", "-P", str(server.port), "-b", "-",
                f"{server.user}@127.0.0.1"]
        p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        p.stdin.write(f"put {path} {os.path.join(server.remote_dir, f'c{i}.bin')}\n")
        p.stdin.close()
        procs.append(p)
    failed = sum(1 for p in procs if p.wait(600) != 0)
    wall = time.monotonic() - t0
    good = 0
    for i, path in enumerate(sources):
        target = os.path.join(server.home, f"c{i}.bin")
        if os.path.exists(target) and _sha(target) == _sha(path):
            good += 1
        if os.path.exists(target):
            os.remove(target)
    for path in sources:
        os.remove(path)
    if failed:
        print(f"  {server.name}: {failed} sftp clients failed", flush=True)
    return wall, good


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def idle_memory(server, key: str, count: int) -> float:
    """KB of server RSS each idle authenticated SFTP session adds."""
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key_file(key)
    before = sum(rss_kb(p) for p in server.session_pids())
    clients = []
    try:
        for _ in range(count):
            c = paramiko.SSHClient()
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            c.connect("127.0.0.1", server.port, username=server.user, pkey=pkey, allow_agent=False, look_for_keys=False, timeout=30)
            s = c.open_sftp()
            s.listdir(server.remote_dir)
            clients.append((c, s))
        time.sleep(1)
        after = sum(rss_kb(p) for p in server.session_pids())
    finally:
        for c, s in clients:
            c.close()
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the get/put file, MiB")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--only", default="get,put,concurrent,idle")
    parser.add_argument("--same-cipher", action="store_true", help="also OpenSSH with aes128-ctr + hmac-sha2-256")
    args = parser.parse_args()
    only = set(args.only.split(","))
    for tool in ("sftp", "ssh-keygen", "/usr/sbin/sshd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install openssh-client openssh-server")
    folder = tempfile.mkdtemp(prefix="sftp-bench-")
    key = os.path.join(folder, "client_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    hub = OpenSSH_ = None
    try:
        hub = Hub(os.path.join(folder, "hub"), key + ".pub")
        OpenSSH_ = OpenSSH(os.path.join(folder, "openssh"), key + ".pub")
        servers = [hub, OpenSSH_]
        rows = {}
        for s in servers:
            rows[s.name] = {"cipher": negotiated(s, key)}
            print(f"{s.name}: port {s.port}, cipher/MAC {rows[s.name]['cipher']}", flush=True)
        # Idle sessions first, on fresh servers: after the transfers the
        # hub's heap has free room that new sessions would fill unseen.
        if "idle" in only:
            for s in servers:
                kb = idle_memory(s, key, args.idle)
                rows[s.name]["idle_kb"] = kb
                print(f"{s.name}: {kb:.0f} KB RSS per idle authenticated SFTP session ({args.idle} sessions)", flush=True)
        if only & {"get", "put"}:
            size = args.size_mb * 1024 * 1024
            source = os.path.join(folder, "big.src")
            with open(source, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(1024 * 1024))
            variants = [(s, s.name, ()) for s in servers]
            if args.same_cipher:
                variants.append((OpenSSH_, "openssh aes128-ctr", ("-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256")))
            for s, label, extra in variants:
                put, get, tput, tget = transfer(s, key, source, size, extra)
                rows.setdefault(label, {}).update(put=put, get=get)
                print(f"{label}: put {put:.1f} MB/s ({tput:.1f} s), get {get:.1f} MB/s ({tget:.1f} s)", flush=True)
            os.remove(source)
        if "concurrent" in only:
            for s in servers:
                wall, good = concurrent_uploads(s, key, folder, args.clients)
                rows[s.name].update(concurrent_wall=wall, concurrent_ok=good)
                print(f"{s.name}: {args.clients} concurrent 1 MiB uploads in {wall:.2f} s, {good}/{args.clients} sha256 ok", flush=True)
        print()
        print(json.dumps(rows, indent=1))
        if "put" in rows.get("mailhub", {}):
            print(f"ratio put {rows['mailhub']['put'] / rows['openssh']['put']:.0%}, get {rows['mailhub']['get'] / rows['openssh']['get']:.0%} of OpenSSH (default ciphers)")
            if "openssh aes128-ctr" in rows:
                o = rows["openssh aes128-ctr"]
                print(f"ratio put {rows['mailhub']['put'] / o['put']:.0%}, get {rows['mailhub']['get'] / o['get']:.0%} of OpenSSH on the hub's cipher")
    finally:
        for s in (hub, OpenSSH_):
            if s is not None:
                s.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
