#!/usr/bin/env python3
"""
Benchmark: user-space instructions per message of two per-message costs
of the hub's SMTP path, in-process, with no sockets and no disk:

 - C{record}: the session record (twisted_mailhub/smtp/record.py) given
   one message sent one command per round trip as the connection gives
   it: MAIL, RCPT, DATA and the message through the reader, their four
   replies through the writer (or record.server_bytes, where there is no
   writer), the message's count through message_read; a new connection
   every 125 messages, as in bench/smtp_pop3.py's rounds
   (C{--per-connection}: another number, e.g. 2000 for a long session,
   whose record passes max_lines after about 650 messages).
 - C{log}: the delivery log line (twisted_mailhub/smtp/delivery.py
   _log_delivery) through Twisted's LogPublisher to the hub's observer
   (twisted_mailhub/logobserver.py), lines written to /dev/null in
   batches of 64.

    python3 bench/smtp_record_cost.py             # both, under valgrind's callgrind
    python3 bench/smtp_record_cost.py --part log
    python3 bench/smtp_record_cost.py --part record --messages 4000 --per-connection 4000

Each figure is (count for N iterations - count for none) / N, so Python's
start-up and imports are not in it; the loop's own cost is (about 6,000
instructions for C{record}). The tree measured is the one this script is
in; for an A/B, run the copy in the other tree (C{git archive OLD | tar -x
-C DIR}).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_record(n: int, per_connection: int = 125) -> None:
    from twisted_mailhub.smtp.record import MailRecord
    from twisted_mailhub.transcript import SessionEvents

    bus = SessionEvents()
    body = (
        b"X-Bench-Id: 1\r\nFrom: bench@example.org\r\nTo: bob@localhost\r\nSubject: benchmark\r\n\r\n"
        + b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJKLMNOP.\r\n" * 12
        + b".\r\n"
    )
    lines, octets = body.count(b"\n") - 1, len(body) - 3
    reads = (b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<bench0r0@localhost>\r\n", b"DATA\r\n")
    replies = (b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n")
    handed = []
    take = handed.append
    record = None
    for i in range(n):
        if i % per_connection == 0:
            if record is not None:
                record.closed()
            record = bus.start("smtp", ("127.0.0.1", 40000 + i % 20000), ("127.0.0.1", 25), kind=MailRecord)
            reader = record.reader(take)
            writer = getattr(record, "writer", None)
            if writer is not None:
                reply = writer(take)
            else:
                # The connection before MailRecord.writer: record, then write.
                server_bytes = record.server_bytes

                def reply(data, server_bytes=server_bytes):
                    server_bytes(data)
                    take(data)

        for data, answer in zip(reads, replies):
            reader(data)
            reply(answer)
        reader(body)
        record.message_read(lines, octets)
        reply(b"250 2.0.0 Ok: queued as 4XyZ12ab%02d\r\n" % (i % 100))
        handed.clear()


def run_log(n: int) -> None:
    from twisted.logger import LogPublisher

    from twisted_mailhub.logobserver import HubLogObserver, LineBuffer
    from twisted_mailhub.smtp import delivery

    fd = os.open(os.devnull, os.O_WRONLY)

    class Running:
        """A reactor whose turn never ends: lines wait for the flush below."""

        running = True

        def callLater(self, delay, f):
            pass

    buffer = LineBuffer(lambda data: os.write(fd, data), reactor=Running())
    delivery.log.observer = LogPublisher(HubLogObserver(buffer))

    class Hub:
        options = {"store": "maildir"}

    hub = Hub()
    stored = [("bench0r0@localhost", "1701356102.M123P456Q7.mail.test")]
    for _ in range(n):
        delivery._log_delivery(hub, "4XyZ12ab34", "bench@example.org", stored, 1100, "127.0.0.1")
        if len(buffer._waiting) >= 64:
            buffer.flush()
    buffer.flush()


def count(part: str, n: int, per_connection: int = 125) -> int:
    """User-space instructions of this script running C{part} C{n} times, under callgrind."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, os.path.abspath(__file__), "--part", part, "--run", str(n),
         "--per-connection", str(per_connection)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed: {done.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("record", "log", "both"), default="both")
    parser.add_argument("--messages", type=int, default=20000, help="iterations counted")
    parser.add_argument("--per-connection", type=int, default=125, help="messages on one connection (record), default 125")
    parser.add_argument("--run", type=int, default=None, help=argparse.SUPPRESS)  # the counted child
    args = parser.parse_args()
    if args.run is not None:
        sys.path.insert(0, ROOT)
        if args.part == "record":
            run_record(args.run, args.per_connection)
        else:
            run_log(args.run)
        return
    for part in ("record", "log") if args.part == "both" else (args.part,):
        per = (count(part, args.messages, args.per_connection) - count(part, 0)) / args.messages
        print(f"{part:>6}: {per:,.0f} instructions per message ({args.messages} counted)", flush=True)


if __name__ == "__main__":
    main()
