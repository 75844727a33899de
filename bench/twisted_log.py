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


def twisted_log_hub(*args: Any, **kwargs: Any) -> Any:
    """A L{tests.hubprocess.HubProcess} whose twistd logs through L{observer} (C{--logger})."""
    from tests.hubprocess import HubProcess

    class TwistedLogHub(HubProcess):
        def command(self) -> list[str]:
            line = HubProcess.command(self)
            at = line.index("--pidfile=") + 1
            return line[:at] + ["--logger", "bench.twisted_log.observer"] + line[at:]

    return TwistedLogHub(*args, **kwargs)
