#!/usr/bin/env python3
"""
Benchmark: CPU per log line, in this process, for the line the hub logs
per delivered message, each way against the way it replaced (same run,
best of C{--repeat}: a busy machine only ever adds time).

    python3 bench/log_cost.py
    python3 bench/log_cost.py --lines 20000 --repeat 9

 - one process: C{Logger.info} through Twisted's C{textFileLogObserver}
   (what C{twistd} used) into a file, against L{QuickLogger} through the
   hub's observer (L{twisted_mailhub.logobserver}), its lines written
   every C{--per-write} lines (one write per reactor turn in the hub);
 - C{--workers}, in a worker: the log event as an C{L} bus line (before)
   against the line made there (C{T});
 - C{--workers}, in the supervisor: an C{L} line published again as an
   event to Twisted's observer (before) against C{T} lines written as
   they are (C{--per-read} lines per read from the pipe).

The whole hub under load: C{bench/smtp_cpu.py --log-ab} and
C{bench/workers.py --log-ab}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.logger import Logger, LogLevel, LogPublisher, globalLogPublisher, textFileLogObserver  # noqa: E402
from twisted.python import threadable  # noqa: E402
from twisted.python.logfile import LogFile  # noqa: E402

from twisted_mailhub import workers  # noqa: E402
from twisted_mailhub.logobserver import ClassicLines, HubLogObserver, LineBuffer, QuickLogger  # noqa: E402

LINE = (
    "delivered 6B0CB3BB147400025 from=<bench@example.org> to=<r0@localhost> size=982 "
    "stored=maildir:r0@localhost/INBOX/1795994555.M168731P5236Q37.mail.test,S=1171 client=127.0.0.1"
)


class _Turns:
    """A reactor that runs: the buffered flush is called every few lines by the loop."""

    running = True

    def __init__(self):
        self.due = None

    def callLater(self, delay, f, *args):
        self.due = f

    def callFromThread(self, f, *args):
        f(*args)

    def turn(self):
        due, self.due = self.due, None
        if due is not None:
            due()


def best(repeat: int, lines: int, run) -> float:
    """Microseconds of CPU per line, the best of C{repeat} runs of C{run(lines)}."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run(lines)
        times.append(time.process_time() - start)
    return min(times) / lines * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20000, help="lines per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs of each; the best is shown")
    parser.add_argument("--per-write", type=int, default=10, help="delivery lines per reactor turn (per write) in one process")
    parser.add_argument("--per-read", type=int, default=8, help="worker lines per read in the supervisor")
    args = parser.parse_args()
    threadable.registerAsIOThread()
    work = tempfile.mkdtemp(prefix="mailhub-log-cost-")
    print(f"load {os.getloadavg()[0]:.1f}; µs of CPU per log line, best of {args.repeat} x {args.lines} lines")
    try:
        # -- one process -------------------------------------------------
        twisted_file = LogFile.fromFullPath(os.path.join(work, "twisted.log"), rotateLength=None)
        twisted_log = Logger(namespace="twisted_mailhub.smtp.delivery", observer=LogPublisher(textFileLogObserver(twisted_file)))
        hub_file = LogFile.fromFullPath(os.path.join(work, "hub.log"), rotateLength=None)
        turns = _Turns()
        hub_log = QuickLogger(namespace="twisted_mailhub.smtp.delivery", observer=LogPublisher(HubLogObserver(LineBuffer(hub_file.write, hub_file.flush, turns))))

        def twisted_lines(n):
            for _ in range(n):
                twisted_log.info("{delivered}", delivered=LINE)

        def hub_lines(n):
            per = args.per_write
            for i in range(n):
                hub_log.info("{delivered}", delivered=LINE)
                if i % per == per - 1:
                    turns.turn()
            turns.turn()

        before, after = best(args.repeat, args.lines, twisted_lines), best(args.repeat, args.lines, hub_lines)
        print(f"one process, a delivery line into a file:  Twisted's Logger + text observer {before:5.2f}   hub's {after:5.2f}  ({before / after:.1f}x)")
        with open(os.path.join(work, "twisted.log"), "rb") as a, open(os.path.join(work, "hub.log"), "rb") as b:
            first_a, first_b = a.readline(), b.readline()
        assert first_a.split(b" ", 1)[1] == first_b.split(b" ", 1)[1], (first_a, first_b)

        # -- a worker ----------------------------------------------------
        def event():
            return {"log_format": "{delivered}", "delivered": LINE, "log_level": LogLevel.info, "log_namespace": "twisted_mailhub.smtp.delivery", "log_time": time.time()}

        def worker_run(make_observer):
            out = workers._BusOut(-1)
            out.reactor = _Turns()
            out.flush = out.waiting.clear  # the pipe's write is the same both ways
            observer = make_observer(out)

            def run(n):
                for i in range(n):
                    observer(event())
                    if i % 10 == 9:
                        out.flush()
                        out.soon = out.later = False

            return run

        before = best(args.repeat, args.lines, worker_run(lambda out: out.log_observer))
        after = best(args.repeat, args.lines, worker_run(lambda out: HubLogObserver(out, ClassicLines(system="worker 0"))))
        print(f"--workers, in the worker (event to bus line): L event {before:5.2f}   T line {after:5.2f}  ({before / after:.1f}x)")

        # -- the supervisor ---------------------------------------------
        class Supervisor:
            write_log_lines = workers.WorkersService.write_log_lines
            from_worker = workers.WorkersService.from_worker
            workers: dict = {}

            def __init__(self, observer):
                self.log_observer = observer

        old_bus = []
        sender = workers._BusOut(-1)
        sender.send = lambda kind, body=b"": old_bus.append(kind + body + b"\n")
        sender.log_observer(event())
        new_bus = b"T" + ClassicLines(system="worker 0")(event()).encode()

        relay_file = LogFile.fromFullPath(os.path.join(work, "relay-twisted.log"), rotateLength=None)
        relay_observer = textFileLogObserver(relay_file)
        globalLogPublisher.addObserver(relay_observer)
        try:
            worker = workers._WorkerProcess(Supervisor(None), 0)
            chunk = old_bus[0] * args.per_read
            before = best(args.repeat, args.lines, lambda n: [worker.childDataReceived(3, chunk) for _ in range(n // args.per_read)])
        finally:
            globalLogPublisher.removeObserver(relay_observer)
        relay_hub_file = LogFile.fromFullPath(os.path.join(work, "relay-hub.log"), rotateLength=None)
        turns = _Turns()
        worker = workers._WorkerProcess(Supervisor(HubLogObserver(LineBuffer(relay_hub_file.write, relay_hub_file.flush, turns, delay=workers.LOG_DELAY))), 0)
        chunk = new_bus * args.per_read

        def new_relay(n):
            for i in range(n // args.per_read):
                worker.childDataReceived(3, chunk)
                if i % 25 == 24:
                    turns.turn()
            turns.turn()

        after = best(args.repeat, args.lines, new_relay)
        print(f"--workers, in the supervisor (per line relayed): L event {before:5.2f}   T line {after:5.2f}  ({before / after:.1f}x)")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
