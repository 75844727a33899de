#!/usr/bin/env python3
"""
Benchmark of the outbound queue in PostgreSQL (C{--queue postgresql}),
with the disk queue measured beside it in the same run: real hubs relay N
messages (submitted by C clients, each 250 only once the message is
durable in the queue) to a receiving hub B (--mx-override); reported is
the rate from the first submission until every message was delivered to B
and checked in its Maildir.

    python3 bench/pgqueue.py            # 400 messages, 8 clients
    python3 bench/pgqueue.py -n 1000 -c 16

Runs: one hub on the disk queue; one hub on the PostgreSQL queue; two hubs
on the same PostgreSQL queue (the clients split between them). PostgreSQL
is Debian's, started in a temp folder with fsync on (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from relay import free_port, submit  # noqa: E402

from tests.hubprocess import HubProcess  # noqa: E402
from tests.pgserver import PostgresServer, find_bindir  # noqa: E402


def check_once(b: HubProcess, n: int, run: str) -> None:
    """Every message of C{run} is in bob's Maildir exactly once."""
    import collections
    import glob

    seen: collections.Counter = collections.Counter()
    for path in glob.glob(os.path.join(b.maildir("bob@b.test"), "new", "*")):
        with open(path, "rb") as f:
            m = re.search(rb"X-Bench-Id: (\S+)", f.read())
        if m and m.group(1).decode().startswith(run + "-"):
            seen[m.group(1).decode()] += 1
    if len(seen) != n or set(seen.values()) != {1}:
        raise SystemExit(f"{run}: {len(seen)} of {n} messages arrived at B, {sum(seen.values()) - len(seen)} twice")


def delivered(hubs: list[HubProcess]) -> int:
    return sum(len(re.findall(r"queue: \S+ done: 1 delivered", h.log)) for h in hubs)


def run(top: str, name: str, senders: int, extra: list[str], b_port: int, b: HubProcess, n: int, clients: int) -> float:
    hubs = []
    try:
        for k in range(senders):
            folder = os.path.join(top, f"{name}{k}")
            os.makedirs(folder)
            args = ["--domain", "a.test", "--hostname", f"mx{k}.a.test", "--mx-override", f"b.test=127.0.0.1:{b_port}", "--retry-schedule", "1h", "--no-smtps", *extra]
            hubs.append(HubProcess(folder, args, users=["alice@a.test:secret"]).start())
        errors: list = []
        threads = [
            threading.Thread(target=submit, args=(hubs[k % senders].ports["submission"], list(range(k, n, clients)), name, errors))
            for k in range(clients)
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"{name}: submission failed: {errors[0]!r}")
        deadline = time.monotonic() + 600
        while delivered(hubs) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: not delivered:\n" + hubs[0].log[-3000:])
            time.sleep(0.01)
        total = time.monotonic() - start
        check_once(b, n, name)
        return total
    finally:
        for h in hubs:
            h.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument("-c", type=int, default=8)
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    top = tempfile.mkdtemp(prefix="pgqueue-bench-")
    server = PostgresServer(bindir).start()
    b = None
    try:
        b_port = free_port()
        os.makedirs(os.path.join(top, "b"))
        b = HubProcess(os.path.join(top, "b"), ["--domain", "b.test", "--hostname", "mx.b.test", "--smtp", f"tcp:{b_port}:interface=127.0.0.1", "--no-smtps"], users=["bob@b.test:hungry"]).start()
        for name, senders, queue in (("disk", 1, ["--queue", "disk"]), ("pg1", 1, None), ("pg2", 2, None)):
            extra = queue if queue else ["--queue", f"postgresql:{server.create_database()}"]
            total = run(top, name, senders, extra, b_port, b, args.n, args.c)
            label = {"disk": "one hub, disk queue", "pg1": "one hub, PostgreSQL queue", "pg2": "two hubs, one PostgreSQL queue"}[name]
            print(f"{label:32s} {args.n} messages, {args.c} clients: {args.n / total:6.0f} msgs/s relayed ({total:.2f} s end to end, each delivered once)")
    finally:
        if b is not None:
            b.stop()
        server.remove()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
