# -*- test-case-name: tests.test_heap -*-
"""
Giving the C heap's free pages back to the system.

glibc keeps what Python frees through C{malloc} (every object over 512
octets: a file read, a joined response, an index column) in its heap for
the next allocation, and returns it to the system only from the heap's
top. After work that walks a big folder (loading it, a FETCH or SEARCH
over 100,000 messages) tens of MB would stay counted in the hub's RSS
until the process ends; L{give_back_memory} returns them
(C{malloc_trim(3)}), at about a millisecond a call, so it is called
after such work only (L{after_walk}).
"""

from __future__ import annotations

import ctypes
from typing import Any

# Messages a command must have walked for its end to give memory back.
WALK = 10_000

_trim: Any = None


def give_back_memory() -> bool:
    """
    Return the C heap's free pages to the system (glibc's malloc_trim(3)).
    Returns False where there is no glibc (nothing is done).
    """
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim is False:
        return False
    _trim(0)
    return True


def after_walk(messages: int) -> bool:
    """
    A command has walked C{messages} messages: give memory back when they
    were at least L{WALK} (a FETCH 1:* of 100,000 messages leaves about
    7 MB of response buffers in the heap). True if it was given back.
    """
    return messages >= WALK and give_back_memory()


M_ARENA_MAX = -8  # glibc's mallopt(3) parameter number


def one_arena() -> bool:
    """
    Let every thread allocate from glibc's main arena
    (C{mallopt(M_ARENA_MAX, 1)}), for threads started after the call.
    A thread of its own arena had its heap shrunk and faulted in again for
    each large buffer: a PostgreSQL search's reads of 20,000 messages in
    a parsing thread (libpq's results of a few MB, 8 KB bodies) cost the
    hub 430-580 ms of CPU, 290-340 ms in the main arena, about what the
    same reads cost in the reactor (bench/reactor_stall.py --store
    postgresql). The GIL already lets one thread at a time allocate for
    Python objects, so one arena adds little waiting. Returns False where
    there is no glibc (nothing is done).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, 1))
