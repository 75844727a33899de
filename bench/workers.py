#!/usr/bin/env python3
"""
Benchmark: SMTP messages/s into the hub with C{--workers N} against the
same hub as one process, in the same run (durable: each 250 comes after
the message and its UID are fsynced).

    python3 bench/workers.py                       # 32 clients, 1 KB, --workers 2 vs 1
    python3 bench/workers.py --workers 2 --messages 4000 --rounds 3
    python3 bench/workers.py --no-pipelining       # one command per round trip

Both hubs get the same load from the same client: an asyncio client in
this process, C clients, each sending MAIL/RCPT/DATA pipelined (or, with
C{--no-pipelining}, one command per round trip, as smtplib does) and then
the message, all to one mailbox (so the workers share one folder's UID
list: the case that needs the cross-process lock). Rounds alternate
between the two hubs; the median is reported, with the hub's CPU time per
message (every process of the hub: supervisor and workers, user +
system, from /proc) and how the connections were spread over the
workers. Every accepted message is then looked for on disk, and the
folder's UIDs must be 1..N with no duplicate: a missing, damaged or
doubly numbered message fails the run.

The client runs on the same machine: on 2 cores, the hub's workers
compete with it (and with anything else running) for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import socket
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.hubprocess import HubProcess  # noqa: E402


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


def hub_pids(hub: HubProcess) -> list[int]:
    """The hub's process and its children (the workers)."""
    pids = [hub.process.pid]
    try:
        with open(f"/proc/{hub.process.pid}/task/{hub.process.pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


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
    parser.add_argument("--hub-arg", action="append", default=[], help="one more option for both hubs (repeatable), e.g. --hub-arg=--no-web")
    parser.add_argument("--dir", default=None, help="where to keep the data (default: a temp dir under /var/tmp)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mailhub-bench-workers-", dir=args.dir or "/var/tmp")
    users = ["warmup:x"] + [f"r{r}s{s}:x" for r in range(args.rounds) for s in range(2)]
    hubs = {
        "1 process": HubProcess(os.path.join(work, "one"), list(args.hub_arg), users=users),
        f"--workers {args.workers}": HubProcess(os.path.join(work, "many"), ["--workers", str(args.workers), *args.hub_arg], users=users),
    }
    results: dict[str, list[float]] = {name: [] for name in hubs}
    cpu: dict[str, list[float]] = {name: [] for name in hubs}
    try:
        for hub in hubs.values():
            hub.start()
            asyncio.run(smtp_run(hub.ports["smtp"], b"warmup@localhost", args.clients, 200, args.size, not args.no_pipelining))
        print(f"load: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores; {args.clients} clients, {args.size} octets, "
              f"{args.messages} messages per round, {'no pipelining' if args.no_pipelining else 'pipelined'}")
        for r in range(args.rounds):
            for s, (name, hub) in enumerate(hubs.items()):
                rcpt = f"r{r}s{s}@localhost"
                pids = hub_pids(hub)
                before = [cpu_seconds([p]) for p in pids]
                system_before = cpu_seconds(pids, system_only=True)
                client_before = time.process_time()
                elapsed, accepted = asyncio.run(smtp_run(hub.ports["smtp"], rcpt.encode(), args.clients, args.messages, args.size, not args.no_pipelining))
                client = time.process_time() - client_before
                each = [cpu_seconds([p]) - b for p, b in zip(pids, before)]
                used = sum(each)
                system = cpu_seconds(pids, system_only=True) - system_before
                verify(hub.maildir(rcpt), accepted)
                rate = len(accepted) / elapsed
                results[name].append(rate)
                cpu[name].append(used / len(accepted) * 1e6)
                share = ""
                if len(pids) > 1:
                    share = " = supervisor " + " + workers ".join(
                        [f"{each[0] / len(accepted) * 1e6:.0f}", " + ".join(f"{e / len(accepted) * 1e6:.0f}" for e in each[1:])])
                print(f"  round {r + 1} {name:>12}: {rate:8.0f} msg/s, {used / len(accepted) * 1e6:5.0f} µs hub CPU/msg{share}"
                      f" (system {system / len(accepted) * 1e6:.0f}; the client used {client / len(accepted) * 1e6:.0f})")
        spread = {}
        many = list(hubs.values())[1]
        for index in re.findall(r"\[worker (\d+)\] delivered ", many.log):
            spread[index] = spread.get(index, 0) + 1
    finally:
        for hub in hubs.values():
            hub.stop()
    one, other = (statistics.median(v) for v in results.values())
    print()
    for name in hubs:
        print(f"{name:>12}: median {statistics.median(results[name]):8.0f} msg/s, {statistics.median(cpu[name]):5.0f} µs hub CPU/msg (every process of the hub, user + system)")
    print(f"ratio: {other / one:.2f}x   (deliveries per worker: {dict(sorted(spread.items()))})")


if __name__ == "__main__":
    main()
