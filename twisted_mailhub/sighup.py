# -*- test-case-name: tests.test_sighup -*-
"""
SIGHUP from a hub process's first moment.

SIGHUP asks a running hub to read its accounts files and its TLS
certificate again (L{twisted_mailhub.hub.Hub.reload}). The default action
of SIGHUP ends a process, and a hub spends its first second or so
importing and starting before the service that reloads exists: a
C{systemctl reload}, a C{mailhub-admin user add} or a logrotate
C{postrotate} in that second used to end the hub silently.

So every hub process calls L{hold} as the first thing any of its own code
does: C{twistd}'s dropin as soon as C{twistd} picks the C{mailhub}
subcommand (before the hub's modules are imported), a C{--workers} worker
at the top of its module. From then on a SIGHUP is noted, not fatal. The
part that acts on SIGHUP installs its handler with L{release}; a SIGHUP
noted meanwhile is handed to that handler then, once: the reload asked
for while the hub started is done as soon as it can be, not lost.

What no code of the hub can reach: the moment before Python runs it
(Python's own start and C{twistd}'s import of Twisted, about 0.1 s). A
launcher can cover that by starting the hub with SIGHUP ignored (a
disposition of SIG_IGN is kept across C{exec}; L{hold} leaves it so), or
by not signalling at all: C{mailhub-admin reload} asks through the
control socket, and the shipped systemd unit reloads that way.

This module imports nothing but L{signal}: it is imported while the hub
is still starting, and must cost nothing.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

# SIGHUPs noted while held, not yet handed to a handler.
_noted = 0


def _note(signum: int, frame: Any) -> None:
    global _noted
    _noted += 1


def hold() -> bool:
    """
    From now on, a SIGHUP to this process is noted instead of ending it
    (until L{release}). Only SIGHUP's default action is replaced: a handler
    someone installed, or an inherited SIG_IGN (C{nohup}), is kept.

    @return: whether SIGHUP is held now (False off the main thread, on a
        system without SIGHUP, or when someone else's handler is in place).
    """
    if not hasattr(signal, "SIGHUP"):
        return False
    try:
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
            return signal.getsignal(signal.SIGHUP) is _note
        signal.signal(signal.SIGHUP, _note)
    except ValueError:  # not the main thread
        return False
    return True


def held() -> int:
    """How many SIGHUPs were noted while held and not yet handed on."""
    return _noted


def release(handler: Callable[[int, Any], Any]) -> Any:
    """
    Install C{handler} as SIGHUP's handler. If SIGHUPs were noted while
    held, C{handler(SIGHUP, None)} is called once now (several noted
    SIGHUPs ask for the same reload).

    @return: the handler that was in place before (to restore it later;
        while the hub stops, restoring the holding handler keeps a late
        SIGHUP from ending the shutdown).
    @raise ValueError: not called from the main thread (as
        L{signal.signal}).
    """
    global _noted
    previous = signal.signal(signal.SIGHUP, handler)
    # Read after the new handler is in: a SIGHUP from here on reaches it.
    noted, _noted = _noted, 0
    if noted:
        handler(signal.SIGHUP, None)
    return previous
