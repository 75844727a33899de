"""
The web face's poll of a folder's state (GET /mail/INBOX/state: what an
open folder page asks every 2 s) on a big folder (20,000 messages by
default) with nothing changing, with a real HTTP client against the real
`twistd mailhub`: the hub's CPU milliseconds per poll (bench/cpu.py) and
the wall time, medians of rounds of N polls.

    python3 bench/web_poll.py
    python3 bench/web_poll.py --count 20000 --polls 50 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from bench.imap import make_maildir  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402
from tests.web_helpers import WebClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="web-poll-", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        make_maildir(os.path.join(data, "mail", "localhost", "alice"), args.count)
        hub = HubProcess(data, ["--no-ftp"]).start()
        try:
            web = WebClient(hub)
            web.login("alice", "secret")
            assert web.get("/mail/INBOX").status == 200
            cpu_ms, wall_ms = [], []
            for _ in range(args.rounds):
                before, t = cpu_seconds(hub.process.pid), time.perf_counter()
                for _ in range(args.polls):
                    reply = web.get("/mail/INBOX/state")
                    assert reply.status == 200 and f'"count": {args.count}' in reply.text, reply.text
                wall_ms.append((time.perf_counter() - t) * 1000 / args.polls)
                cpu_ms.append((cpu_seconds(hub.process.pid) - before) * 1000 / args.polls)
            print(f"GET /mail/INBOX/state, {args.count} messages, nothing changing: {statistics.median(cpu_ms):.1f} ms hub CPU a poll, "
                  f"{statistics.median(wall_ms):.1f} ms wall (medians of {args.rounds} rounds of {args.polls})")
        finally:
            hub.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
