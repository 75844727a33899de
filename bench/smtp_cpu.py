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
    python3 bench/smtp_cpu.py --dispatch-ab            # and a hub on Twisted's own epoll dispatch (MAILHUB_DISPATCH=twisted), rounds alternating
    python3 bench/smtp_cpu.py --callgrind 1000 --no-pipelining --dispatch-ab   # instructions per message (valgrind), each hub

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
from bench.arguments import file_to_write, folder  # noqa: E402
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
    parser.add_argument("--dir", type=folder, default="/var/tmp", help="where the hub's data folder goes (default /var/tmp; /dev/shm: tmpfs)")
    parser.add_argument("--py-spy", type=file_to_write, default=None, metavar="FILE", help="record the hub's threads with py-spy (raw stacks, the GIL holder's) during the rounds")
    parser.add_argument("--log-ab", action="store_true", help="also a hub logging through Twisted's text observer and one logging nothing (twistd --logger), rounds alternating; medians of each")
    parser.add_argument(
        "--dispatch-ab", action="store_true",
        help="also a hub on Twisted's own epoll dispatch (MAILHUB_DISPATCH=twisted, see twisted_mailhub/dispatch.py), rounds alternating; medians of each",
    )
    parser.add_argument(
        "--callgrind", type=int, default=0, metavar="N",
        help="only count each hub's user-space instructions per message (all threads) under valgrind's callgrind, on N messages",
    )
    parser.add_argument(
        "--callgrind-keep", default=None, metavar="DIR",
        help="with --callgrind: keep callgrind's output files in DIR (callgrind_annotate DIR/cg0/cg.PID-01 shows where the reactor's instructions go)",
    )
    args = parser.parse_args()

    pipelining = not args.no_pipelining
    if args.callgrind:
        return callgrind(args, pipelining)
    work = tempfile.mkdtemp(prefix="mailhub-cpu-", dir=args.dir)
    names = [f"r{n}" for n in range(args.rounds)]
    users = ["warmup:x"] + [f"{name}:x" for name in names]
    hub = HubProcess(os.path.join(work, "hub"), users=users)
    hubs = {"hub": hub}
    if args.log_ab:
        hubs["Twisted's log"] = twisted_log_hub(os.path.join(work, "twisted-log"), users=users)
        hubs["no log"] = twisted_log_hub(os.path.join(work, "no-log"), logger="bench.twisted_log.nothing", users=users)
    if args.dispatch_ab:
        hubs["Twisted dispatch"] = HubProcess(os.path.join(work, "twisted-dispatch"), env={"MAILHUB_DISPATCH": "twisted"}, users=users)
    ab = args.log_ab or args.dispatch_ab
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
                (f"{label:>16}: " if ab else "") + f"{len(accepted) / elapsed:7.0f} msg/s  all threads {us(user + system):5.0f} (user {us(user):4.0f}, system {us(system):4.0f});"
                f"  reactor thread {us(main_user + main_system):4.0f} (user {us(main_user):4.0f}, system {us(main_system):4.0f});"
                f"  flush threads {us(others):4.0f};  load {load:.1f}",
                flush=True,
            )
        if ab:
            for label in hubs:
                print(f"{label:>16}: median reactor thread {statistics.median(reactor_us[label]):4.0f}, all threads {statistics.median(all_us[label]):4.0f} µs CPU/msg")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        for each in hubs.values():
            each.stop()
        shutil.rmtree(work, ignore_errors=True)


def callgrind(args: argparse.Namespace, pipelining: bool) -> None:
    """
    Each hub's user-space instructions per message (every thread; the
    kernel's share is not counted), under valgrind's callgrind: unlike CPU
    time, the same on a busy machine as on a quiet one. Counted from the
    zeroing after a warm-up to the dump after C{args.callgrind} messages.
    """
    import glob

    work = tempfile.mkdtemp(prefix="mailhub-cpu-callgrind-", dir=args.dir)
    keep = args.callgrind_keep
    kinds = {"hub": {}}
    if args.dispatch_ab:
        kinds["Twisted dispatch"] = {"MAILHUB_DISPATCH": "twisted"}
    print(f"{args.clients} clients, {args.size} octets, {'pipelined envelope' if pipelining else 'no pipelining'}; load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        for n, (label, env) in enumerate(kinds.items()):
            out = os.path.join(keep or work, f"cg{n}")
            os.makedirs(out, exist_ok=True)

            class Counted(HubProcess):
                def command(self, out=out):
                    return ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}/cg.%p"] + HubProcess.command(self)

            hub = Counted(os.path.join(work, f"hub{n}"), env=env, users=["warmup:x", "counted:x"])
            hub.start_timeout = 300
            os.makedirs(hub.data_dir)
            hub.start()
            try:
                asyncio.run(smtp_run(hub.ports["smtp"], b"warmup@localhost", 4, 100, args.size, pipelining))
                subprocess.run(["callgrind_control", "--zero", str(hub.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                _, accepted = asyncio.run(smtp_run(hub.ports["smtp"], b"counted@localhost", args.clients, args.callgrind, args.size, pipelining))
                subprocess.run(["callgrind_control", "--dump=counted", str(hub.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            finally:
                hub.stop()
            total = reactor = 0
            for path in glob.glob(os.path.join(out, "cg.*")):
                with open(path) as f:
                    text = f.read()
                if "Trigger: dump counted" in text:
                    count = int(text.split("\nsummary: ", 1)[1].split("\n", 1)[0])
                    total += count
                    if path.endswith("-01"):  # the first thread: the reactor's
                        reactor += count
            n = max(1, len(accepted))
            print(f"{label:>16}: {reactor / n:,.0f} instructions per message in the reactor thread, {total / n:,.0f} in all ({len(accepted)} messages)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
