"""
CPU seconds a server has used, from /proc (Linux), for the benchmarks'
CPU-per-operation figures: far steadier than throughput on a busy machine.

    before = cpu_seconds(pid, tree=True)
    ... work ...
    used = cpu_seconds(pid, tree=True) - before
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    found.append(int(child))
                    found.extend(_children(int(child)))
    except OSError:
        pass  # gone meanwhile
    return found


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """
    User + system CPU seconds of process C{pid} (all its threads). With
    C{tree}, also of its live descendants and of the children each has
    reaped (a Dovecot master: its per-connection processes come and go).
    """
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12])
    if tree:
        ticks += int(fields[13]) + int(fields[14])  # reaped children
        for child in _children(pid):
            try:
                child_fields = _stat(child)
            except OSError:
                continue  # ended meanwhile (its time moves to its parent's)
            ticks += sum(int(v) for v in child_fields[11:15])
    return ticks / _TICK
