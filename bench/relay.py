#!/usr/bin/env python3
"""
Benchmark of the outbound queue: two real hubs on loopback, A (a.test)
relaying to B (b.test) with --mx-override.

    python3 bench/relay.py                 # 500 messages, 8 submitting clients
    python3 bench/relay.py -n 2000 -c 16

Two runs:
 - "live": clients submit N messages to A's submission port (AUTH, each
   250 only once the message is fsynced in A's queue) while A relays them
   to B (each 250 from B only once fsynced in bob's Maildir). Reported:
   accepted/s (all 250s from A) and relayed/s (until A logged N "done").
 - "backlog": B is down while the N messages are queued, then B starts and
   the queue is flushed: one connection carries many messages. Reported:
   drain time and messages/s, and how many connections B saw.
Every message is checked for in B's Maildir by its X-Bench-Id.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.hubprocess import HubProcess  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def message(i: int, run: str) -> bytes:
    return (
        f"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: bench {i}\r\nX-Bench-Id: {run}-{i}\r\n\r\n"
        + "The quick brown fox jumps over the lazy dog.\r\n" * 40
    ).encode()


def submit(port: int, ids: list[int], run: str, errors: list) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.login("alice@a.test", "secret")
            for i in ids:
                client.sendmail("alice@a.test", ["bob@b.test"], message(i, run))
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def submit_all(port: int, n: int, clients: int, run: str) -> float:
    errors: list = []
    threads = [threading.Thread(target=submit, args=(port, list(range(k, n, clients)), run, errors)) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"submission failed: {errors[0]!r}")
    return time.monotonic() - start


def wait_done(hub: HubProcess, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(r"queue: \S+ done: 1 delivered", hub.log)) >= n:
            return
        time.sleep(0.01)
    raise SystemExit("relay did not finish:\n" + hub.log[-3000:])


def check(b: HubProcess, n: int, run: str) -> None:
    seen = set()
    for path in glob.glob(os.path.join(b.maildir("bob@b.test"), "new", "*")):
        with open(path, "rb") as f:
            m = re.search(rb"X-Bench-Id: (\S+)", f.read())
        if m and m.group(1).decode().startswith(run + "-"):
            seen.add(m.group(1).decode())
    if len(seen) != n:
        raise SystemExit(f"{run}: {len(seen)} of {n} messages arrived at B")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("-c", type=int, default=8)
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="relay-bench-")
    hubs: list[HubProcess] = []
    try:
        b_port = free_port()
        b_args = ["--domain", "b.test", "--hostname", "mx.b.test", "--smtp", f"tcp:{b_port}:interface=127.0.0.1", "--no-smtps"]
        a_args = ["--domain", "a.test", "--hostname", "mx.a.test", "--mx-override", f"b.test=127.0.0.1:{b_port}", "--retry-schedule", "1h", "--no-smtps"]
        for name in ("a", "b"):
            os.makedirs(os.path.join(top, name))
        b = HubProcess(os.path.join(top, "b"), b_args, users=["bob@b.test:hungry"])
        a = HubProcess(os.path.join(top, "a"), a_args, users=["alice@a.test:secret"])
        hubs += [a, b]
        b.start()
        a.start()

        start = time.monotonic()
        accept = submit_all(a.ports["submission"], args.n, args.c, "live")
        wait_done(a, args.n)
        total = time.monotonic() - start
        check(b, args.n, "live")
        print(f"live:    {args.n} messages, {args.c} clients: accepted {args.n / accept:.0f}/s, relayed {args.n / total:.0f}/s ({total:.2f} s end to end)")

        b.stop()
        a.restart()
        submit_all(a.ports["submission"], args.n, args.c, "backlog")
        # Every message has had its first (failed) attempt.
        while len(re.findall(r"relay \S+ <alice@a.test> to b.test via \(no connection\)", a.log)) < args.n:
            time.sleep(0.05)
        b.args.append("--transcript")
        b.start()
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "twisted_mailhub.queue", "--data", a.data_dir, "flush"], cwd=ROOT, check=True, capture_output=True)
        done_before = len(re.findall(r"queue: \S+ done: 1 delivered", a.log))
        wait_done(a, done_before + args.n)
        drain = time.monotonic() - start
        check(b, args.n, "backlog")
        connections = len(re.findall(r"smtp#\d+ connected from", b.log))
        print(f"backlog: {args.n} messages drained in {drain:.2f} s ({args.n / drain:.0f}/s) over {connections} connection(s) to B")
    finally:
        for hub in hubs:
            hub.stop()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
