#!/usr/bin/env python3
"""
Benchmark: how long C{twisted_mailhub.testing.Mailhub} takes from C{start()}
to the hub's C{mailhub ready} line (every listener bound), and to stopped.

    python3 bench/startup.py              # 10 rounds
    python3 bench/startup.py --rounds 3

Peers measured in the same run, alternating with the hub:
 - "python -c pass": the floor of any subprocess-based controller.
 - "aiosmtpd Controller": aiosmtpd's in-process SMTP-only controller
   (a thread; start() returns once it answers), when aiosmtpd is installed.
 - the hub with every listener, and with SMTP only (--no-... the rest).
 - where PYTHONDONTWRITEBYTECODE is set and the package has no .pyc files
   (a checkout), the full hub without the kit's bytecode cache (a
   PYTHONPYCACHEPREFIX for the run's hubs), compiling its modules each start.

Reported: median, best and worst wall time in milliseconds, and the median
CPU time (user + system) of the child process over its whole life, which a
loaded machine moves far less than wall time. The target is a median
under 1000 ms for the full hub. On a busy machine the figures move; the
ratio to "python -c pass" moves less.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted_mailhub.testing import Mailhub, bytecode_cache_folder, listener_names  # noqa: E402


def python_floor() -> tuple[float, float]:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t, 0.0


def aiosmtpd_controller() -> tuple[float, float]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    with socket.socket() as probe:  # its readiness check cannot use port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t = time.perf_counter()
    c = Controller(Sink(), hostname="127.0.0.1", port=port)
    c.start()
    started = time.perf_counter()
    c.stop()
    return started - t, time.perf_counter() - started


def hub(*options: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    t = time.perf_counter()
    h = Mailhub(*options, env=env).start()
    started = time.perf_counter()
    h.stop()
    return started - t, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    listener_names()  # the component list is read once per process; not part of a start
    smtp_only = [f"--no-{name}" for name, _tls in listener_names() if name != "smtp"]
    cases = {"python -c pass": python_floor, "mailhub (every listener)": hub, "mailhub (smtp only)": lambda: hub(*smtp_only)}
    if bytecode_cache_folder():
        # PYTHONDONTWRITEBYTECODE is set: the same hub compiling its
        # package at each start, as before the kit's bytecode cache
        cases["mailhub (no bytecode cache)"] = lambda: hub(env={"PYTHONPYCACHEPREFIX": ""})
    try:
        import aiosmtpd  # noqa: F401

        cases["aiosmtpd Controller"] = aiosmtpd_controller
    except ImportError:
        print("(aiosmtpd not installed: no Controller figure)")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            results[name].append(case())
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    print(f"start-up to ready, {args.rounds} rounds (ms): median / best / worst wall; stop median; child CPU median")
    for name, runs in results.items():
        starts = [s * 1000 for s, _ in runs]
        stops = [s * 1000 for _, s in runs]
        print(
            f"  {name:28s} {statistics.median(starts):7.0f} / {min(starts):5.0f} / {max(starts):5.0f}"
            f"   stop {statistics.median(stops):5.0f}   cpu {statistics.median(cpu[name]) * 1000:5.0f}"
        )
    full = statistics.median(s for s, _ in results["mailhub (every listener)"])
    print(f"target: full hub ready in under 1000 ms -> {'met' if full < 1.0 else 'NOT met'} ({full * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
