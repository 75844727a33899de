#!/usr/bin/env python3
"""
Benchmark: SMTP messages/s into the hub with C{--workers N} against the
same hub as one process, in the same run (durable: each 250 comes after
the message and its UID are fsynced).

    python3 bench/workers.py                       # 32 clients, 1 KB, --workers 2 vs 1
    python3 bench/workers.py --workers 2 --messages 4000 --rounds 3
    python3 bench/workers.py --no-pipelining       # one command per round trip
    python3 bench/workers.py --client asyncio      # the Python client instead of bench/smtpload.c
    python3 bench/workers.py --log-ab              # and --workers N logging through Twisted's observer (the old log relay)
    python3 bench/workers.py --pin-ab              # and --workers N --no-pin-workers (no core of its own per worker)
    python3 bench/workers.py --settle 60           # before each round, sync and wait (up to 60 s) for a quiet disk and CPUs

Both hubs get the same load from the same client: C{bench/smtpload.c}
(compiled here with C{cc}; C{--client asyncio}: an asyncio client in this
process) with C connections, each sending MAIL/RCPT/DATA pipelined (or,
with C{--no-pipelining}, one command per round trip, as smtplib does) and
then the message, all to one mailbox (so the workers share one folder's UID
list: the case that needs the cross-process lock). Rounds alternate
between the two hubs; the median is reported, with the hub's CPU time per
message (every process of the hub: supervisor and workers, user +
system, from /proc) and how the connections were spread over the
workers (and, from the hub's control socket while a round runs, how
many of the client's connections each worker has). Every accepted
message is then looked for on disk, and the
folder's UIDs must be 1..N with no duplicate: a missing, damaged or
doubly numbered message fails the run.

The client runs on the same machine: on 2 cores, the hub's workers
compete with it (and with anything else running) for the CPU. That is why
the default client is a small C program: about 20 µs of CPU per message
pipelined (nearly all of it the kernel's loopback TCP, which is charged
to the sender), against 50-70 µs for the asyncio client, so that it does
not take the second core from the workers. Each round prints the
client's CPU per message too, and each hub process's split between its
reactor thread and its other threads (the group commit's flushes), its
context switches per message (voluntary: a thread waited, for the GIL, a
lock or the disk; preempted: another wanted its core), and
how much dirty data the system had: above 64 MB (the neighbours writing)
the hub fsyncs each file instead of one syncfs per batch, which changes
the CPU per message a lot.

Each round also says what the group commit did (from the control
socket's C{status}): writes a batch, syncfs calls a message, of those
the ones for a batch's links alone (no next batch's flush served them),
and the batches fsynced file by file.

With C{--settle SECONDS}, before each round (of every hub alike):
C{sync()}, then a wait (at most SECONDS) until the disk creates files at
its quiet cost again and at least C{--idle} of the CPUs are idle
(bench/quiet_disk.py: on this ext4 without a journal, files created in the
30 s after many deletions, the neighbours' included, cost 10x the kernel
CPU, and such a round says nothing about the hub); the round's line says
what the disk and CPUs were like when it began.

At the end it says whether the comparison was fair: for each hub, the
cores it kept busy, the µs per message it and the client waited for a
core while runnable (/proc/PID/schedstat: a starved client or hub shows
there, not in CPU time), and the flush mode of its rounds (a comparison
across a change of mode is flagged). The hubs' data folders are removed
at the end (C{--keep} keeps them).

Each round also says where all the cores' time went, in µs a message
(/proc/stat, and every process on the machine looked at before and after
the round): the hub, the client, the kernel's writeback threads (a
syncfs hands the writing of dirty pages to the flusher kworkers: the
hub's flush, charged to no process of it), other kernel threads (e.g.
ext4's kworkers that convert written extents), this script, the other
processes (the neighbours), busy time no process seen after the round
was charged with, and idle time (of which waiting for I/O); and, at the end,
the medians of each part per hub. A core the hub did not use shows there,
with what used it instead.

At the end the script predicts each hub's rate from the CPU it used,
for 2, 3 and 4 cores given to the hub alone: one process cannot go
faster than its reactor thread (one core), N workers than the cores
their CPU per message fills. On this 2-core machine, shared with the
client and whatever else runs, the measured ratio is bounded by that:
one process uses a core and part of the second, so two workers can at
best fill the part that was left.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.quiet_disk import settle  # noqa: E402
from bench.twisted_log import twisted_log_hub  # noqa: E402
from bench.arguments import folder  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402
from twisted_mailhub.store.durable import QUIET_DIRTY_BYTES  # noqa: E402


def make_body(size: int) -> bytes:
    head = b"From: bench@example.org\r\nTo: bob@localhost\r\nSubject: benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOP.\r\n"
    body = head
    while len(body) + len(line) <= size - 20:
        body += line
    return body


async def _reply(reader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed")
        if line[3:4] != b"-":
            return line


async def _client(port: int, rcpt: bytes, body: bytes, ids: list[int], pipelining: bool) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await _reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await _reply(reader)
    commands = [b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<" + rcpt + b">\r\n", b"DATA\r\n"]
    accepted = []
    for n in ids:
        if pipelining:
            writer.write(b"".join(commands))
            codes = [(await _reply(reader))[:3] for _ in commands]
        else:
            codes = []
            for command in commands:
                writer.write(command)
                codes.append((await _reply(reader))[:3])
        if codes != [b"250", b"250", b"354"]:
            raise RuntimeError(f"envelope refused: {codes}")
        writer.write(b"X-Bench-Id: %d\r\n" % n + body + b".\r\n")
        r = await _reply(reader)
        if not r.startswith(b"250"):
            raise RuntimeError(f"message {n} refused: {r!r}")
        accepted.append(n)
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()
    return accepted


async def smtp_run(port: int, rcpt: bytes, clients: int, count: int, size: int, pipelining: bool) -> tuple[float, list[int]]:
    body = make_body(size)
    shares = [list(range(count))[i::clients] for i in range(clients)]
    start = time.perf_counter()
    results = await asyncio.gather(*(_client(port, rcpt, body, share, pipelining) for share in shares if share))
    return time.perf_counter() - start, [n for r in results for n in r]


_ID = re.compile(rb"\r\nX-Bench-Id: (\d+)\r\n|^X-Bench-Id: (\d+)\r\n", re.M)


def verify(maildir: str, accepted: list[int]) -> None:
    """Every accepted message on disk, once, and the UIDs 1..N."""
    found = set()
    for path in glob.glob(os.path.join(maildir, "new", "*")) + glob.glob(os.path.join(maildir, "cur", "*")):
        with open(path, "rb") as f:
            m = _ID.search(f.read())
        if m:
            found.add(int(m.group(1) or m.group(2)))
    missing = sorted(set(accepted) - found)
    if missing:
        raise SystemExit(f"FAIL: {len(missing)} accepted messages not on disk in {maildir} (e.g. {missing[:5]})")
    with open(os.path.join(maildir, "mailhub-uidlist"), encoding="utf-8") as f:
        uids = [int(line.split(" ", 1)[0]) for line in f.read().splitlines()[1:]]
    if sorted(uids) != list(range(1, len(accepted) + 1)):
        raise SystemExit(f"FAIL: the UIDs of {maildir} are not 1..{len(accepted)} once each")


def build_client(work: str) -> str | None:
    """bench/smtpload.c compiled into C{work}; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    program = os.path.join(work, "smtpload")
    subprocess.run([cc, "-O2", "-o", program, os.path.join(ROOT, "bench", "smtpload.c")], check=True)
    return program


def c_run(program: str, body_path: str, port: int, rcpt: bytes, clients: int, count: int, pipelining: bool, waited: list[float] | None = None, spread: Any = None) -> tuple[float, list[int], float]:
    """
    One round with the C client: (seconds, the ids of the messages
    accepted, the client's CPU seconds). Any refusal ends the run. With
    C{waited}, the seconds the client waited for a core while it could
    run are appended to it (its /proc/self/schedstat). With C{spread}
    (a L{ConnectionSpread}), how the client's connections are spread
    over the hub's workers is noted while it runs.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(
            [program, "127.0.0.1", str(port), str(clients), str(count), rcpt.decode(), body_path, "1" if pipelining else "0"],
            stdout=out,
            stderr=err,
        )
        if spread is not None:
            # still running, asked without reaping it (poll() would reap it,
            # and wait4 below, for the client's CPU, would find no child)
            spread.look(clients, lambda: os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        said, complaint = out.read().strip(), err.read().strip()
    words = said.split()
    if process.returncode != 0 or len(words) < 4 or int(words[1]) != count:
        raise SystemExit(f"FAIL: the client exited with {process.returncode}: {complaint or said}")
    if waited is not None:
        waited.append(float(words[5]) if len(words) > 5 and words[4] == "waited" else 0.0)
    return float(words[3]), list(range(count)), usage.ru_utime + usage.ru_stime


class ConnectionSpread:
    """
    How a round's client connections are spread over the workers of a
    C{--workers} hub, from its control socket (C{status}: each worker's
    open connections), once they are all open.
    """

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.rounds: list[list[int]] = []

    def look(self, clients: int, running: Any, timeout: float = 3.0, every: float = 0.05) -> None:
        # (every look costs the supervisor and each worker a status: a few,
        # not one per 10 ms, so that the round's CPU is the hub's work)
        from twisted_mailhub import control

        deadline = time.monotonic() + timeout
        counts: list[int] = []
        time.sleep(every)
        while running() and time.monotonic() < deadline:
            try:
                answer = control.ask(self.data_dir, "status", timeout=1.0) or {}
            except OSError:
                answer = {}
            counts = [int(w.get("connections_open") or 0) for w in answer.get("workers", [])]
            if sum(counts) >= clients:
                break
            time.sleep(every)
        self.rounds.append(counts)

    def text(self) -> str:
        return ", ".join("/".join(str(n) for n in counts) or "?" for counts in self.rounds)


def commit_counts(data_dir: str) -> dict:
    """
    The hub's group commit so far (every process's, from the control
    socket's C{status}: store/durable.STATS): batches, writes, syncfs
    calls, and of those the ones for links alone. Empty if it cannot say.
    """
    from twisted_mailhub import control

    try:
        answer = control.ask(data_dir, "status", timeout=2.0) or {}
    except OSError:
        return {}
    return dict(answer.get("group_commit") or {})


def dirty_megabytes() -> float:
    """
    The system's dirty and under-writeback page cache in MB: above
    durable.QUIET_DIRTY_BYTES (the neighbours are writing) the hub fsyncs
    each file, below it one syncfs per batch, and CPU per message differs
    a lot between the two.
    """
    total = 0
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith((b"Dirty:", b"Writeback:")):
                    total += int(line.split()[1])
    except OSError:
        return 0.0
    return total / 1024


def thread_split(pid: int) -> tuple[float, float]:
    """CPU seconds of C{pid}'s main (reactor) thread and of its other threads."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == pid:
            main += used
        else:
            other += used
    return main, other


def switches(pid: int) -> tuple[int, int]:
    """
    Context switches of C{pid}'s threads so far: (voluntary: it waited for
    something, e.g. the GIL, a lock, the disk; involuntary: preempted).
    """
    voluntary = involuntary = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
        except OSError:
            continue
    return voluntary, involuntary


def runqueue_wait(pid: int) -> float:
    """
    Seconds C{pid}'s threads have waited for a core while they could run
    (/proc/PID/task/*/schedstat, second field): a process that waits long
    is short of CPU, one that waits little and still is slow waits for
    something else (the disk, its clients).
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def hub_pids(hub: HubProcess) -> list[int]:
    """The hub's process and its children (the workers)."""
    pids = [hub.process.pid]
    try:
        with open(f"/proc/{hub.process.pid}/task/{hub.process.pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


# The first line of /proc/stat, in the order of its fields (proc(5)).
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_PF_KTHREAD = 0x00200000  # /proc/PID/stat's flags: a kernel thread (linux/sched.h)


def machine_cpu() -> dict[str, float]:
    """
    Every CPU's time so far, in seconds, by what it did (the first line of
    /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal);
    empty where /proc/stat cannot be read.
    """
    try:
        with open("/proc/stat") as f:
            ticks = [int(n) for n in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {name: value / tick for name, value in zip(_CPU_FIELDS, ticks)}


def every_process() -> dict[int, tuple[str, bool, float]]:
    """
    Every process on the machine now, kernel threads included: pid ->
    (its name, whether it is a kernel thread, CPU seconds so far of all
    its threads, those that ended too, user + system), from
    /proc/PID/stat. Processes that end meanwhile are left out.
    """
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[int, tuple[str, bool, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text[text.rfind(")") + 2 :].split()
        try:
            seen[int(pid)] = (name, bool(int(fields[6]) & _PF_KTHREAD), (int(fields[11]) + int(fields[12])) / tick)
        except (IndexError, ValueError):
            continue
    return seen


# What the cores did during a round, in the order printed.
MACHINE_PARTS = ("hub", "client", "writeback", "kernel", "script", "others", "unseen", "idle")


def machine_split(cpu_before: dict[str, float], cpu_after: dict[str, float], processes_before: dict, processes_after: dict, hub: list[int], client: float) -> dict[str, float]:
    """
    Where every core's time went between two looks (L{machine_cpu},
    L{every_process}), in seconds: C{hub} (the processes C{hub}),
    C{client} (its CPU seconds, given: it has ended by the second look),
    C{writeback} (the kernel's flusher threads, C{kworker/...flush-*}: a
    syncfs hands the writing of dirty pages to them, so that CPU is the
    hub's flush but charged to no process of it), C{kernel} (every other
    kernel thread: other kworkers, e.g. ext4's conversion of written
    extents, ksoftirqd), C{script} (this process), C{others} (every other
    process: the neighbours), C{unseen} (busy time no process seen at
    the second look was charged with: processes that ended between the
    looks, softirq work that interrupted an idle core), C{idle} (idle and
    waiting for I/O); also C{iowait} and C{softirq} (/proc/stat's, the
    latter already inside the parts above), and C{total} (every core's
    time between the looks). Empty if /proc/stat cannot be read.
    """
    if not cpu_before or not cpu_after:
        return {}
    spent = {name: cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in _CPU_FIELDS}
    total = sum(spent.values())
    idle = spent["idle"] + spent["iowait"]
    parts = dict.fromkeys(MACHINE_PARTS, 0.0)
    parts["client"] = client
    hub_pids, me = set(hub), os.getpid()
    for pid, (name, kernel, seconds) in processes_after.items():
        used = seconds - (processes_before[pid][2] if pid in processes_before else 0.0)  # (one started between the looks: all of it)
        if used <= 0:
            continue
        if pid in hub_pids:
            parts["hub"] += used
        elif pid == me:
            parts["script"] += used
        elif kernel:
            parts["writeback" if name.startswith("kworker") and "flush-" in name else "kernel"] += used
        else:
            parts["others"] += used
    parts["idle"] = idle
    parts["unseen"] = max(0.0, total - idle - sum(parts[name] for name in MACHINE_PARTS if name not in ("unseen", "idle")))
    return {**parts, "iowait": spent["iowait"], "softirq": spent["softirq"], "total": total}


def machine_text(parts: dict[str, float], messages: int) -> str:
    """L{machine_split}'s seconds as µs a message, one line."""
    if not parts:
        return "cannot be read (/proc/stat)"
    each = {name: value / messages * 1e6 for name, value in parts.items()}
    return (f"{each['total']:.0f} µs a message of all the cores = hub {each['hub']:.0f} + client {each['client']:.0f}"
            f" + kernel writeback threads {each['writeback']:.0f} + other kernel threads {each['kernel']:.0f} + this script {each['script']:.0f}"
            f" + other processes {each['others']:.0f} + not seen {each['unseen']:.0f} + idle {each['idle']:.0f} (of which waiting for I/O {each['iowait']:.0f});"
            f" softirq {each['softirq']:.0f} (inside those)")


def cpu_seconds(pids: list[int], system_only: bool = False) -> float:
    """CPU seconds (user + system, or system only) of the processes C{pids}."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[12]) + (0 if system_only else int(fields[11]))) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2", help="the worker count to compare with one process (a number or auto)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--messages", type=int, default=3000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--client", choices=("c", "asyncio"), default="c", help="the load generator: bench/smtpload.c (default; built with cc) or the asyncio client in this process")
    parser.add_argument("--hub-arg", action="append", default=[], help="one more option for both hubs (repeatable), e.g. --hub-arg=--no-web")
    parser.add_argument("--dir", type=folder, default=None, help="where to put the data (default: a temp dir under /var/tmp); removed at the end unless --keep")
    parser.add_argument("--keep", action="store_true", help="keep the hubs' data folders (and logs) at the end")
    parser.add_argument("--log-ab", action="store_true", help="a third hub: --workers N logging through Twisted's text observer (twistd --logger: the workers' log events relayed and formatted by the supervisor, as before the hub's own observer)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS", help="before each round: sync, then wait (at most SECONDS) until creating a file costs at most --quiet-us of CPU and --idle of the CPUs are idle (bench/quiet_disk.py, as bench/smtp_pop3.py does); default 0: no wait")
    parser.add_argument("--quiet-us", type=float, default=150.0, metavar="US", help="a quiet disk for --settle: a 1 KB file created for at most US microseconds of CPU")
    parser.add_argument("--idle", type=float, default=0.7, metavar="SHARE", help="a quiet machine for --settle: at least SHARE (0-1) of all CPUs idle over 2 s")
    parser.add_argument("--pin-ab", action="store_true", help="one more hub: --workers N --no-pin-workers (the workers left to the scheduler instead of a core each)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mailhub-bench-workers-", dir=args.dir or "/var/tmp")
    users = ["warmup:x"] + [f"r{r}s{s}:x" for r in range(args.rounds) for s in range(4)]
    hubs = {
        "1 process": HubProcess(os.path.join(work, "one"), list(args.hub_arg), users=users),
        f"--workers {args.workers}": HubProcess(os.path.join(work, "many"), ["--workers", str(args.workers), *args.hub_arg], users=users),
    }
    if args.pin_ab:
        hubs[f"--workers {args.workers}, not pinned"] = HubProcess(os.path.join(work, "many-unpinned"), ["--workers", str(args.workers), "--no-pin-workers", *args.hub_arg], users=users)
    if args.log_ab:
        hubs[f"--workers {args.workers}, Twisted's log"] = twisted_log_hub(os.path.join(work, "many-twisted-log"), ["--workers", str(args.workers), *args.hub_arg], users=users)
    program = build_client(work) if args.client == "c" else None
    if args.client == "c" and program is None:
        print("no C compiler (cc): using the asyncio client")
    body_path = os.path.join(work, "body")
    with open(body_path, "wb") as f:
        f.write(make_body(args.size))
    results: dict[str, list[float]] = {name: [] for name in hubs}
    cpu: dict[str, list[float]] = {name: [] for name in hubs}
    busiest: dict[str, list[float]] = {name: [] for name in hubs}  # µs/msg of the reactor thread that bounds the rate
    supervisor: dict[str, list[float]] = {name: [] for name in hubs}
    # Is the comparison fair? Each round's flush mode, cores the hub kept
    # busy, and µs per message the hub and the client waited for a core.
    flushes: dict[str, list[str]] = {name: [] for name in hubs}
    busy: dict[str, list[float]] = {name: [] for name in hubs}
    hub_waited: dict[str, list[float]] = {name: [] for name in hubs}
    client_waited: dict[str, list[float]] = {name: [] for name in hubs}
    # The group commit: writes per batch and syncfs calls per message.
    per_batch: dict[str, list[float]] = {name: [] for name in hubs}
    syncfs_each: dict[str, list[float]] = {name: [] for name in hubs}
    # Where every core's time went, per round, µs a message (machine_split).
    machines: dict[str, list[dict[str, float]]] = {name: [] for name in hubs}
    # How the client's connections were spread over the workers, per round.
    spreads = {name: ConnectionSpread(hub.data_dir) for name, hub in hubs.items() if "--workers" in hub.args}
    try:
        for hub in hubs.values():
            hub.start()
            asyncio.run(smtp_run(hub.ports["smtp"], b"warmup@localhost", args.clients, 200, args.size, not args.no_pipelining))
        print(f"load: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores; {args.clients} clients, {args.size} octets, "
              f"{args.messages} messages per round, {'no pipelining' if args.no_pipelining else 'pipelined'}")
        for r in range(args.rounds):
            for s, (name, hub) in enumerate(hubs.items()):
                rcpt = f"r{r}s{s}@localhost"
                quiet = ""
                if args.settle > 0:
                    # The same quiet disk and CPUs before every hub's round (bench/quiet_disk.py).
                    cost, share, waited = settle(os.path.join(work, "probe"), args.quiet_us, args.settle, idle=args.idle)
                    quiet = f"; before it: file creation {cost:.0f} µs CPU, CPUs {share:.0%} idle, after {waited:.0f} s{' (NOT quiet: --settle ran out)' if cost > args.quiet_us or share < args.idle else ''}"
                pids = hub_pids(hub)
                commits_before = commit_counts(hub.data_dir)
                before = [cpu_seconds([p]) for p in pids]
                system_before = cpu_seconds(pids, system_only=True)
                split_before = [thread_split(p) for p in pids]
                switched_before = [switches(p) for p in pids]
                dirty_before = dirty_megabytes()
                queued_before = sum(runqueue_wait(p) for p in pids)
                client_queued: list[float] = []
                processes_before = every_process()
                machine_before = machine_cpu()
                if program is not None:
                    elapsed, accepted, client = c_run(program, body_path, hub.ports["smtp"], rcpt.encode(), args.clients, args.messages, not args.no_pipelining, client_queued, spreads.get(name))
                else:
                    client_before = time.process_time()
                    elapsed, accepted = asyncio.run(smtp_run(hub.ports["smtp"], rcpt.encode(), args.clients, args.messages, args.size, not args.no_pipelining))
                    client = time.process_time() - client_before
                machine_after = machine_cpu()
                machine = machine_split(machine_before, machine_after, processes_before, every_process(), pids, client if program is not None else 0.0)  # (the asyncio client is this script)
                each = [cpu_seconds([p]) - b for p, b in zip(pids, before)]
                split = [tuple(a - b for a, b in zip(thread_split(p), sb)) for p, sb in zip(pids, split_before)]
                switched = [tuple(a - b for a, b in zip(switches(p), sb)) for p, sb in zip(pids, switched_before)]
                used = sum(each)
                system = cpu_seconds(pids, system_only=True) - system_before
                queued = sum(runqueue_wait(p) for p in pids) - queued_before
                commits = {k: v - commits_before.get(k, 0) for k, v in commit_counts(hub.data_dir).items()}
                verify(hub.maildir(rcpt), accepted)
                rate = len(accepted) / elapsed
                committed = ""
                if commits.get("batches"):
                    per_batch[name].append(commits["writes"] / commits["batches"])
                    syncfs_each[name].append(commits.get("syncfs", 0) / len(accepted))
                    committed = (f"; group commit: {commits['writes'] / commits['batches']:.1f} writes a batch, {commits.get('syncfs', 0) / len(accepted):.3f} syncfs a message"
                                 f" ({commits.get('links_alone', 0)} for links alone), {commits.get('files_batches', 0)} of {commits['batches']} batches fsynced file by file")
                results[name].append(rate)
                cpu[name].append(used / len(accepted) * 1e6)
                # The reactor thread that bounds the rate: one process's own;
                # with workers, the supervisor's, or the workers' together
                # shared out (a client whose worker is busy waits, the
                # others' clients send on: the load goes where a core is free).
                reactors = [m / len(accepted) * 1e6 for m, _ in split]
                busiest[name].append(reactors[0] if len(reactors) == 1 else max(reactors[0], sum(reactors[1:]) / (len(reactors) - 1)))
                share = ""
                if len(pids) > 1:
                    supervisor[name].append(each[0] / len(accepted) * 1e6)
                    share = " = supervisor " + " + workers ".join(
                        [f"{each[0] / len(accepted) * 1e6:.0f}", " + ".join(f"{e / len(accepted) * 1e6:.0f}" for e in each[1:])])
                threads = ", ".join(f"{m / len(accepted) * 1e6:.0f}+{o / len(accepted) * 1e6:.0f}" for m, o in split)
                waits = ", ".join(f"{v / len(accepted):.2f}/{i / len(accepted):.2f}" for v, i in switched)
                dirty = max(dirty_before, dirty_megabytes())
                flushes[name].append("per-file fsync" if dirty * 2**20 >= QUIET_DIRTY_BYTES else "syncfs")
                busy[name].append(used / elapsed)
                hub_waited[name].append(queued / len(accepted) * 1e6)
                if client_queued:
                    client_waited[name].append(client_queued[0] / len(accepted) * 1e6)
                connections = f", connections per worker {'/'.join(map(str, spreads[name].rounds[-1]))}" if name in spreads and spreads[name].rounds else ""
                print(f"  round {r + 1} {name:>12}: {rate:8.0f} msg/s, {used / len(accepted) * 1e6:5.0f} µs hub CPU/msg{share}{connections}"
                      f" (system {system / len(accepted) * 1e6:.0f}; reactor+other threads per process {threads};"
                      f" context switches voluntary/preempted per process {waits}; waited for a core: hub {queued / len(accepted) * 1e6:.0f}"
                      f"{f', client {client_queued[0] / len(accepted) * 1e6:.0f}' if client_queued else ''}; the client used {client / len(accepted) * 1e6:.0f};"
                      f" dirty {dirty:.0f} MB: {'per-file fsync' if dirty * 2**20 >= QUIET_DIRTY_BYTES else 'syncfs'}{committed}{quiet})")
                print(f"      where the cores went: {machine_text(machine, len(accepted))}")
                if machine:
                    machines[name].append({part: value / len(accepted) * 1e6 for part, value in machine.items()})
        spread = {}
        many = list(hubs.values())[1]
        for index in re.findall(r"\[worker (\d+)\] delivered ", many.log):
            spread[index] = spread.get(index, 0) + 1
    finally:
        for hub in hubs.values():
            hub.stop()
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            # ... and the freed inodes written out: on ext4 without a
            # journal (this machine's /) a new file skips every inode of
            # its group freed in the last 5 s, or 5 min while that inode's
            # table block is unwritten (ialloc.c recently_deleted), a cost
            # of up to hundreds of µs per file that the next benchmark run
            # would pay (measured: 26-370 µs of system time per message).
            os.sync()
    one, other = (statistics.median(v) for v in list(results.values())[:2])
    print()
    for name in hubs:
        of_supervisor = f", of which the supervisor {statistics.median(supervisor[name]):.0f}" if supervisor[name] else ""
        print(f"{name:>12}: median {statistics.median(results[name]):8.0f} msg/s, {statistics.median(cpu[name]):5.0f} µs hub CPU/msg (every process of the hub, user + system){of_supervisor}")
    print(f"ratio: {other / one:.2f}x   (deliveries per worker: {dict(sorted(spread.items()))})")
    for name, seen in spreads.items():
        if seen.rounds:
            print(f"  {name}: the {args.clients} connections per worker, each round: {seen.text()}")
    print()
    print("fair? per hub, medians: cores kept busy (CPU / wall), µs per message waited for a core (runnable, not running) by the hub and by the client, flush modes")
    for name in hubs:
        client_part = f", the client {statistics.median(client_waited[name]):.0f}" if client_waited[name] else ""
        modes = ", ".join(f"{mode} {flushes[name].count(mode)}" for mode in sorted(set(flushes[name])))
        commit = f"; {statistics.median(per_batch[name]):.1f} writes a batch, {statistics.median(syncfs_each[name]):.3f} syncfs a message" if per_batch[name] else ""
        print(f"  {name:>12}: {statistics.median(busy[name]):.2f} cores busy; waited: the hub {statistics.median(hub_waited[name]):.0f}{client_part}; rounds {modes}{commit}")
    if any(machines.values()):
        print()
        print("where the cores went, per hub, medians of each part, µs a message (all the cores' time over the round; the parts' medians need not add up):")
        for name in hubs:
            if machines[name]:
                median = {part: statistics.median(m[part] for m in machines[name]) for part in machines[name][0]}
                print(f"  {name:>12}: {machine_text({k: v / 1e6 for k, v in median.items()}, 1)}")
    if len({mode for modes in flushes.values() for mode in modes}) > 1:
        print("  NOT comparable as it stands: the flush mode changed between rounds (the neighbours' dirty data); compare the rounds of one mode")
    print()
    print("predicted from the CPU each used (the client on other cores): msg/s at most =")
    print("  min(cores / hub CPU per message, 1 / a reactor thread's CPU per message (the workers' mean))")
    for cores in (2, 3, 4):
        rates = [min(cores / statistics.median(cpu[name]), 1 / statistics.median(busiest[name])) * 1e6 for name in hubs]
        print(f"  {cores} cores for the hub: " + ", ".join(f"{name} {rate:.0f}" for name, rate in zip(hubs, rates)) + f"; ratio {rates[1] / rates[0]:.2f}x")


if __name__ == "__main__":
    main()
