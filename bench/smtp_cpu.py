#!/usr/bin/env python3
"""
Benchmark: the hub's CPU time per SMTP message, split by thread: the
reactor thread (protocol, delivery, replies: what bounds messages/s on one
core) and the others (the group commit's disk work). The hub alone, no
peers; the same client as bench/smtp_pop3.py.

    python3 bench/smtp_cpu.py                          # 32 clients, 1 KB, pipelined
    python3 bench/smtp_cpu.py --no-pipelining
    python3 bench/smtp_cpu.py --dir /dev/shm           # data on tmpfs: no disk in the figure
    python3 bench/smtp_cpu.py --py-spy /tmp/hub.txt    # where the reactor thread's time goes
    python3 bench/smtp_cpu.py --log-ab                 # and hubs on Twisted's text log observer and on none, rounds alternating

On a machine shared with other work, file creation on a busy ext4 can cost
hundreds of microseconds of kernel CPU per file (its inode allocator), in
the flush threads; with C{--dir} on a tmpfs the figure is the hub's own
work, which moves far less between runs. Each round sends C{--messages}
messages to a fresh recipient; every round is printed (user + system CPU
from /proc, all threads, per accepted message), with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.smtp_pop3 import smtp_run  # noqa: E402
from bench.twisted_log import twisted_log_hub  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402


def thread_ticks(pid: int) -> dict[str, tuple[int, int]]:
    """{thread id: (user ticks, system ticks)} of every live thread of C{pid}."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]), int(fields[12]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024, help="message size in octets")
    parser.add_argument("--messages", type=int, default=2000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pipelining", action="store_true", help="one command per round trip, as smtplib sends")
    parser.add_argument("--dir", default="/var/tmp", help="where the hub's data folder goes (default /var/tmp; /dev/shm: tmpfs)")
    parser.add_argument("--py-spy", default=None, metavar="FILE", help="record the hub's threads with py-spy (raw stacks, the GIL holder's) during the rounds")
    parser.add_argument("--log-ab", action="store_true", help="also a hub logging through Twisted's text observer and one logging nothing (twistd --logger), rounds alternating; medians of each")
    args = parser.parse_args()

    pipelining = not args.no_pipelining
    work = tempfile.mkdtemp(prefix="mailhub-cpu-", dir=args.dir)
    names = [f"r{n}" for n in range(args.rounds)]
    users = ["warmup:x"] + [f"{name}:x" for name in names]
    hub = HubProcess(os.path.join(work, "hub"), users=users)
    hubs = {"hub": hub}
    if args.log_ab:
        hubs["Twisted's log"] = twisted_log_hub(os.path.join(work, "twisted-log"), users=users)
        hubs["no log"] = twisted_log_hub(os.path.join(work, "no-log"), logger="bench.twisted_log.nothing", users=users)
    for each in hubs.values():
        os.makedirs(each.data_dir)
        each.start()
    pid = hub.process.pid
    tick = os.sysconf("SC_CLK_TCK")
    spy = None
    reactor_us: dict[str, list[float]] = {label: [] for label in hubs}
    all_us: dict[str, list[float]] = {label: [] for label in hubs}
    try:
        for each in hubs.values():
            asyncio.run(smtp_run(each.ports["smtp"], b"warmup@localhost", 4, 200, args.size, pipelining))
        if args.py_spy:
            spy = subprocess.Popen(
                ["py-spy", "record", "--threads", "--gil", "-r", "250", "-f", "raw", "-o", args.py_spy, "--pid", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        mode = "pipelined envelope" if pipelining else "no pipelining"
        print(f"{args.clients} clients, {args.size} octets, {mode}, data in {args.dir}; CPU in microseconds per message")
        for name, (label, hub) in ((name, pair) for name in names for pair in hubs.items()):
            pid = hub.process.pid
            load = os.getloadavg()[0]
            before = thread_ticks(pid)
            elapsed, accepted = asyncio.run(
                smtp_run(hub.ports["smtp"], f"{name}@localhost".encode(), args.clients, args.messages, args.size, pipelining)
            )
            after = thread_ticks(pid)
            n = max(1, len(accepted))

            def us(ticks: int) -> float:
                return ticks / tick / n * 1e6

            user = sum(u - before.get(t, (0, 0))[0] for t, (u, s) in after.items())
            system = sum(s - before.get(t, (0, 0))[1] for t, (u, s) in after.items())
            main_user = after[str(pid)][0] - before[str(pid)][0]
            main_system = after[str(pid)][1] - before[str(pid)][1]
            others = user + system - main_user - main_system
            reactor_us[label].append(us(main_user + main_system))
            all_us[label].append(us(user + system))
            print(
                (f"{label:>14}: " if args.log_ab else "") + f"{len(accepted) / elapsed:7.0f} msg/s  all threads {us(user + system):5.0f} (user {us(user):4.0f}, system {us(system):4.0f});"
                f"  reactor thread {us(main_user + main_system):4.0f} (user {us(main_user):4.0f}, system {us(main_system):4.0f});"
                f"  flush threads {us(others):4.0f};  load {load:.1f}",
                flush=True,
            )
        if args.log_ab:
            for label in hubs:
                print(f"{label:>14}: median reactor thread {statistics.median(reactor_us[label]):4.0f}, all threads {statistics.median(all_us[label]):4.0f} µs CPU/msg")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        for each in hubs.values():
            each.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
