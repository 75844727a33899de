# -*- test-case-name: tests.test_bench_quiet_disk -*-
"""
A quiet disk before each measured round of a disk bench, the same for
every server: what one round left behind must not be paid by the next.

Why: the root file system here is ext4 without a journal. Such an ext4
skips every inode freed in the last 30-35 seconds when it allocates a new
one (fs/ext4/ialloc.c, C{recently_deleted()}, checked only without a
journal), one look-up per skipped inode, so after many deletions anywhere
near (another server's queue files, another process's temp folders, the
last run's data) creating a file costs 0.5-1 ms of kernel CPU instead of
50 µs. Measured here (1 KB files, no fsync): 510-955 µs of CPU a file in
the 20 s after 20,000 deletions, 45-80 µs once they aged. A server that
creates a file per message (all of them) loses half its rate or more
when its round falls in such a window, and which round does is chance:
aiosmtpd's rounds went 785-1,614/s in one run. Dirty pages one round
leaves are written back during the next, on another server's account
(the hub's C{syncfs} even waits for them).

The machine is shared too: another process's burst of CPU halves a
server's round as surely (aiosmtpd, one Python thread, went 250-902/s
between rounds of one run with the disk quiet at load 5-8).

So before each round: C{sync()} (what the last round left goes to the
disk now, on nobody's account), then L{probe} the cost of creating a
file and measure the share of the CPUs left idle over C{pause} seconds
(L{idle_share}), again and again, until the file costs at most
C{quiet_us} and at least C{idle} of the CPUs were idle, or C{most}
seconds passed (L{settle}). The probe's files stay until the run ends
(deleting them would be a deletion of its own).
"""

from __future__ import annotations

import os
import time
from typing import Callable

__all__ = ["idle_share", "probe", "settle"]


def probe(folder: str, files: int = 200) -> float:
    """
    The CPU time (user + system, this thread: what the kernel's inode
    allocator costs, plus a few µs of Python) of creating one file of
    1 KB, in microseconds: the mean over C{files} files created in a new
    subfolder of C{folder} (made if missing), written, closed, not synced.

    @raise OSError: the folder or a file could not be made.
    """
    os.makedirs(folder, exist_ok=True)
    here = os.path.join(folder, f"probe-{time.time_ns()}")
    os.mkdir(here)
    data = b"x" * 1024
    start = time.thread_time()
    for n in range(files):
        fd = os.open(os.path.join(here, str(n)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return (time.thread_time() - start) / files * 1e6


def _cpu_times() -> tuple[int, int]:
    """(idle + iowait, all) clock ticks of every CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(n) for n in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def idle_share(seconds: float) -> float:
    """
    The share (0 to 1) of all the CPUs' time that was idle (or waiting
    for I/O) over the next C{seconds} seconds (Linux /proc/stat); 1.0
    where that cannot be read.
    """
    try:
        idle, total = _cpu_times()
        time.sleep(seconds)
        idle2, total2 = _cpu_times()
    except (OSError, ValueError, IndexError):
        time.sleep(seconds)
        return 1.0
    return (idle2 - idle) / max(1, total2 - total)


def settle(
    folder: str,
    quiet_us: float = 150.0,
    most: float = 60.0,
    pause: float = 2.0,
    idle: float = 0.0,
    measure: Callable[[str], float] = probe,
    sync: Callable[[], None] = os.sync,
    clock: Callable[[], float] = time.monotonic,
    idle_over: Callable[[float], float] = idle_share,
) -> tuple[float, float, float]:
    """
    C{sync()}, then C{measure(folder)} (L{probe}) and C{idle_over(pause)}
    (L{idle_share}: it takes C{pause} seconds), again and again, until the
    probe gives at most C{quiet_us} and the idle share is at least
    C{idle}, or C{most} seconds have passed (C{most} 0: measured once,
    no wait).

    @return: (the last probe's µs per file, the last idle share, the
        seconds waited); the caller prints them beside the round, so a
        round that began on a busy disk or machine is seen as such.
    """
    start = clock()
    sync()
    while True:
        cost = measure(folder)
        share = idle_over(pause)
        waited = clock() - start
        if (cost <= quiet_us and share >= idle) or waited + pause > most:
            return cost, share, waited
