"""
Twisted's own text log observer for a hub under benchmark, to compare with
the hub's (twisted_mailhub.logobserver) in the same run: a hub made by
L{twisted_log_hub} runs C{twistd --logger bench.twisted_log.observer},
which logs exactly as C{twistd -n} did before the hub had its own observer
(and, under C{--workers}, relays each worker's log events as before).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import FileLogObserver, textFileLogObserver


def observer() -> FileLogObserver:
    """What C{twistd -n} logs to by default: Twisted's text observer on standard output."""
    return textFileLogObserver(sys.stdout)


def nothing() -> Any:
    """
    An observer that writes nothing but the C{mailhub ready} line (which
    the bench needs to find the ports): the floor, to tell what logging
    itself costs.
    """
    from zope.interface import provider

    from twisted.logger import ILogObserver, formatEvent

    out = sys.stdout  # (before twistd puts a log in its place)

    @provider(ILogObserver)
    def ready_only(event: dict) -> None:
        if (event.get("log_format") or "").startswith("mailhub ready"):
            out.write(f"- [-] {formatEvent(event)}\n")
            out.flush()

    return ready_only


def twisted_log_hub(*args: Any, logger: str = "bench.twisted_log.observer", **kwargs: Any) -> Any:
    """
    A L{tests.hubprocess.HubProcess} whose twistd logs through C{logger}
    (C{--logger}; by default L{observer}, Twisted's; L{nothing}: no log).
    """
    from tests.hubprocess import HubProcess

    class TwistedLogHub(HubProcess):
        def command(self) -> list[str]:
            line = HubProcess.command(self)
            at = line.index("--pidfile=") + 1
            return line[:at] + ["--logger", logger] + line[at:]

    return TwistedLogHub(*args, **kwargs)
