# -*- test-case-name: tests.test_queue -*-
"""
Durations on the command line (C{90s}, C{5m}, C{4h}, C{5d}) and the retry
schedule: C{--retry-schedule 5m,30m} means the first retry 5 minutes after
the first failed attempt, then every 30 minutes (the last step repeats),
the textbook's "try again every half hour".
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.I)


def parse_duration(text: str) -> float:
    """
    Seconds in C{text}: a number with an optional unit s, m, h or d, at
    most a year (L{twisted_mailhub.optionvalues.LONGEST}).

    @raise ValueError: one line showing C{text} as given.
    """
    from twisted_mailhub.optionvalues import LONGEST, shown

    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {shown(str(text))} (expected e.g. 90s, 5m, 4h, 5d)")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not seconds <= LONGEST:  # (a thousand 9s was float infinity)
        raise ValueError(f"{shown(str(text).strip())} is longer than a year (365d), the most a wait or a lifetime may be")
    return seconds


class RetrySchedule:
    """
    How long to wait after each failed attempt.
    """

    def __init__(self, steps: list[float]):
        if not steps or any(s <= 0 for s in steps):
            raise ValueError("a retry schedule needs at least one positive interval")
        self.steps = steps

    @classmethod
    def parse(cls, text: str) -> "RetrySchedule":
        return cls([parse_duration(part) for part in str(text).split(",") if part.strip()])

    def delay(self, failed_attempts: int) -> float:
        """
        The wait after the C{failed_attempts}-th failed attempt (1-based).
        """
        return self.steps[min(max(failed_attempts, 1), len(self.steps)) - 1]

    def __str__(self) -> str:
        return ",".join(format_duration(s) for s in self.steps)


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
