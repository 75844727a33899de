"""
FETCH 1:* (ENVELOPE) on a big folder (20,000 messages by default), the
hub beside Dovecot in the same run: each server's folder is written as
bench/imap.py writes it (an outside MDA's files in cur/), a session
SELECTs it (the first index), then FETCH 1:* (ENVELOPE) is timed in
rounds that alternate between the two servers: the first ("cold": no
envelope known yet) and the later ones ("warm"), wall seconds and the
server's CPU seconds (all its processes). With --py-spy FILE the hub's
first (cold) and second (warm) fetch are recorded (collapsed stacks of
the thread holding the GIL).

    python3 bench/imap_envelope.py
    python3 bench/imap_envelope.py --count 20000 --rounds 5 --no-dovecot
    python3 bench/imap_envelope.py --py-spy /tmp/envelope.txt --no-dovecot
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from bench.dovecot import Dovecot  # noqa: E402
from bench.dovecot import available as dovecot_available  # noqa: E402
from bench.imap import Client, make_maildir  # noqa: E402
from bench.arguments import file_to_write  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5, help="FETCH rounds per server after the cold one")
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--py-spy", type=file_to_write, default=None, metavar="FILE")
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="imap-envelope-", dir=os.environ.get("TMPDIR", "/tmp"))
    servers = {}
    try:
        make_maildir(os.path.join(data, "mail", "localhost", "alice"), args.count)
        hub = HubProcess(data, ["--no-ftp"]).start()
        servers["mailhub"] = (hub, lambda: hub.ports["imap"], lambda: cpu_seconds(hub.process.pid))
        if not args.no_dovecot and dovecot_available():
            os.chmod(data, 0o755)
            make_maildir(os.path.join(data, "dovecot"), args.count)
            dovecot = Dovecot(os.path.join(data, "dovecot"), "alice", "secret").start()
            servers["dovecot"] = (dovecot, lambda: dovecot.ports["imap"], lambda: cpu_seconds(dovecot.pid, tree=True))
        clients = {}
        for name, (_, port, _) in servers.items():
            c = Client(port())
            c.cmd("LOGIN alice secret")
            t = time.perf_counter()
            c.cmd("SELECT INBOX")
            print(f"{name}: first SELECT {time.perf_counter() - t:.2f} s")
            clients[name] = c
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        spy = None
        for r in range(args.rounds + 1):
            for name, (_, _, cpu) in servers.items():
                if name == "mailhub" and args.py_spy and r == 0:
                    spy = subprocess.Popen(["py-spy", "record", "--gil", "-r", "200", "-f", "raw", "-o", args.py_spy, "--pid", str(hub.process.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1)
                before = cpu()
                wall, out = clients[name].timed("FETCH 1:* (ENVELOPE)")
                results[name].append((wall, cpu() - before))
                assert out.count(b" FETCH (ENVELOPE (") == args.count, name
                if name == "mailhub" and spy is not None and r == 1:
                    spy.terminate()
                    spy.wait()
                    spy = None
        for name, rounds in results.items():
            cold, warm = rounds[0], rounds[1:]
            print(f"{name}: FETCH 1:* (ENVELOPE) of {args.count}: cold {cold[0]:.2f} s wall, {cold[1]:.2f} s CPU; "
                  f"warm (median of {len(warm)}) {statistics.median(w for w, _ in warm):.2f} s wall, {statistics.median(c for _, c in warm):.2f} s CPU")
    finally:
        for name, (server, _, _) in servers.items():
            server.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
