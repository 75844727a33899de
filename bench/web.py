#!/usr/bin/env python3
"""
Benchmark of the web face (issue 10's speed goals):

 1. the message-list page of a 100,000-message folder (goal: < 150 ms);
 2. opening one 1 MB message with an attachment (goal: < 100 ms);
 3. SMTP with 32 clients and 1 KB messages with the live console open and
    watching, against no one watching, in the same run (goal: within 10%).

    python3 bench/web.py                       # everything, full size
    python3 bench/web.py --folder 20000 --smtp-messages 2000 --rounds 2

Times 1 and 2 are the client's round trip on loopback (HTTP request to last
byte), median of several requests after one warm-up (the first look at a
folder builds its UID list). SMTP rounds alternate unwatched / watched
(ABBA..., after one warm-up round) so a machine that gets busier mid-run does not favour one side;
each figure is the median of its rounds. The watcher is a WebSocket on the
console's session list (as a teacher's projector), read as it arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import smtplib
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from smtp_pop3 import cpu_seconds, smtp_run  # noqa: E402

from tests.hubprocess import HubProcess  # noqa: E402
from tests.web_helpers import LiveSocket, WebClient  # noqa: E402


def fill_folder(data_dir: str, count: int) -> None:
    """C{count} small messages straight into alice's Maildir cur/, as an outside MDA would."""
    cur = os.path.join(data_dir, "mail", "localhost", "alice", "cur")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(data_dir, "mail", "localhost", "alice", sub), exist_ok=True)
    now = int(time.time()) - count
    for n in range(count):
        body = (
            f"From: Sender {n} <sender{n}@example.org>\r\nTo: alice@localhost\r\n"
            f"Subject: message number {n}\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\nbody {n}\r\n"
        ).encode()
        name = f"{now + n}.M{n}P1Q{n}.bench,S={len(body)}:2,{'S' if n % 3 else ''}"
        with open(os.path.join(cur, name), "wb") as f:
            f.write(body)


def big_message(size: int) -> bytes:
    attachment = base64.encodebytes(os.urandom(size * 3 // 4 - 4096)).replace(b"\n", b"\r\n")
    return (
        b"From: carol@example.org\r\nTo: alice@localhost\r\nSubject: one megabyte\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
        + b"the report is attached\r\n" * 100
        + b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="report.bin"\r\n\r\n' + attachment + b"--b--\r\n"
    )


def timed_get(client: WebClient, path: str, times: int) -> list[float]:
    client.get(path)  # warm-up
    out = []
    for _ in range(times):
        started = time.perf_counter()
        response = client.get(path)
        out.append(time.perf_counter() - started)
        if response.status != 200:
            raise SystemExit(f"FAIL: GET {path} answered {response.status}")
    return out


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms (best {min(values) * 1000:.1f}, worst {max(values) * 1000:.1f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=int, default=100_000, help="messages in the listed folder")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="octets of the opened message")
    parser.add_argument("--requests", type=int, default=7)
    parser.add_argument("--smtp-messages", type=int, default=4000, help="messages per SMTP round")
    parser.add_argument("--rounds", type=int, default=3, help="SMTP rounds of each kind")
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="bench-web-")
    started = time.perf_counter()
    fill_folder(data, args.folder)
    print(f"filled a {args.folder}-message folder in {time.perf_counter() - started:.1f} s", flush=True)
    hub = HubProcess(data, ["--no-ftp", "--no-pop3s", "--no-imaps", "--no-smtps", "--max-connections-per-ip", "0"]).start(timeout=120)
    try:
        client = WebClient(hub)
        client.login("alice", "secret")
        started = time.perf_counter()
        first = client.get("/mail/INBOX")
        print(f"first look at the folder (UID list built): {(time.perf_counter() - started) * 1000:.0f} ms", flush=True)
        assert f"message number {args.folder - 1}" in first.text, "newest message not on page 1"
        print(f"1. message list, page 1 of a {args.folder}-message folder: {ms(timed_get(client, '/mail/INBOX', args.requests))}", flush=True)
        print(f"   page 1000 (older messages):                          {ms(timed_get(client, '/mail/INBOX?page=1000', args.requests))}", flush=True)

        with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=60) as smtp:
            smtp.sendmail("carol@example.org", ["alice@localhost"], big_message(args.size))
        uid = args.folder + 1
        print(f"2. open one {args.size // 1024} KB message with an attachment:        {ms(timed_get(client, f'/mail/INBOX/{uid}', args.requests))}", flush=True)
        print(f"   its anatomy:                                        {ms(timed_get(client, f'/mail/INBOX/{uid}/anatomy', args.requests))}", flush=True)

        teacher = WebClient(hub)
        teacher.login("alice", "secret")
        rates: dict[str, list[float]] = {"unwatched": [], "watched": []}
        cpu: dict[str, list[float]] = {"unwatched": [], "watched": []}
        asyncio.run(smtp_run(hub.ports["smtp"], b"bob@localhost", 32, args.smtp_messages, 1024))  # warm-up, not counted
        for round_number in range(args.rounds):
            # ABBA: neither side always runs second on a machine that warms up
            order = ("unwatched", "watched") if round_number % 2 == 0 else ("watched", "unwatched")
            for kind in order:
                watcher = None
                updates = [0]
                if kind == "watched":
                    watcher = LiveSocket(teacher)
                    assert watcher.accepted

                    def drain(w=watcher):
                        try:
                            while True:
                                updates[0] += len(w.receive(timeout=3600))
                        except Exception:
                            pass

                    threading.Thread(target=drain, daemon=True).start()
                cpu_before = cpu_seconds(hub.process.pid)
                elapsed, accepted = asyncio.run(smtp_run(hub.ports["smtp"], b"bob@localhost", 32, args.smtp_messages, 1024))
                cpu[kind].append((cpu_seconds(hub.process.pid) - cpu_before) / len(accepted))
                if len(accepted) != args.smtp_messages:
                    raise SystemExit("FAIL: messages refused")
                rates[kind].append(len(accepted) / elapsed)
                if watcher is not None:
                    watcher.close()
                print(f"   SMTP round {kind:9}: {len(accepted) / elapsed:7.0f} messages/s, hub CPU {cpu[kind][-1] * 1e6:.0f} us/message" + (f" ({updates[0]} console updates received)" if watcher else ""), flush=True)
        plain, watched = statistics.median(rates["unwatched"]), statistics.median(rates["watched"])
        print(f"3. SMTP, 32 clients, 1 KB: unwatched {plain:.0f} msg/s, console watching {watched:.0f} msg/s ({(watched / plain - 1) * 100:+.1f}%)", flush=True)
        cpu_plain, cpu_watched = statistics.median(cpu["unwatched"]), statistics.median(cpu["watched"])
        print(f"   hub CPU per message: unwatched {cpu_plain * 1e6:.0f} us, watching {cpu_watched * 1e6:.0f} us ({(cpu_watched / cpu_plain - 1) * 100:+.1f}%)", flush=True)
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
