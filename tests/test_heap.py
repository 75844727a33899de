"""
Freed C heap goes back to the system after a walk over a big folder
(L{twisted_mailhub.heap}), so the hub's RSS is what it holds.
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from twisted_mailhub import heap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


glibc = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or not hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim"),
    reason="malloc_trim(3) is glibc's: nothing is given back elsewhere",
)


# Run in a fresh interpreter: what the test process allocated before
# (other tests, pytest's own) would blur the figures.
_SCENARIO = """
from twisted_mailhub import heap

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

# 64 MB in 100 KB blocks (under glibc's mmap threshold: they live in the
# heap), each followed by a small block that stays: the freed ones are
# holes glibc keeps until told.
blocks, kept = [], []
for i in range(640):
    blocks.append(bytes(100_000) + bytes([i % 256]))
    kept.append(bytearray(600))
del blocks
held = rss()
given = heap.give_back_memory()
print(held, rss(), given, len(kept))
"""


@glibc
def test_freed_heap_blocks_stop_counting_in_rss_once_given_back():
    out = subprocess.run([sys.executable, "-c", _SCENARIO], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60).stdout
    held, after, given, kept = out.split()
    assert given == "True" and kept == "640"
    assert int(after) < int(held) - 20_000


def test_a_small_walk_does_not_trim(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "give_back_memory", lambda: calls.append(1) or True)
    assert not heap.after_walk(heap.WALK - 1)
    assert heap.after_walk(heap.WALK)
    assert calls == [1]


ARENAS = r"""
import ctypes, sys, threading
sys.path.insert(0, sys.argv[1])
from twisted_mailhub import heap
if sys.argv[2] == "one":
    assert heap.one_arena()
def work():
    kept = [bytes(300_000) for _ in range(20)]  # (large allocations in a thread)
t = threading.Thread(target=work)
t.start(); t.join()
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(stream))
libc.fclose(ctypes.c_void_p(stream))
print(buf.value.count(b"<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_info(3)")
def test_one_arena_keeps_a_threads_allocations_in_the_main_arena():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    count = {how: int(subprocess.run([sys.executable, "-c", ARENAS, root, how], capture_output=True, text=True, check=True).stdout) for how in ("one", "default")}
    # (the default: the thread took an arena of its own, whose heap glibc
    # shrank and faulted in again for each large buffer)
    assert count == {"one": 1, "default": 2}, count
