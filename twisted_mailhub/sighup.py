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

The first code of the hub C{twistd} runs is its dropin,
C{twisted/plugins/mailhub.py}, imported while C{twistd} reads its command
line; it imports the package, which holds. What runs before that is not
the hub's: Python's own start (about 20 ms) and C{twistd}'s import of
Twisted (C{twisted.scripts.twistd}: the logger, failures, Deferreds,
C{pdb}; about 0.1 s, 0.8 s measured on a loaded machine). A SIGHUP then
still ends a hub. A launcher covers it by starting the hub with SIGHUP
I{blocked} (L{blocked}: the signal mask is kept across C{fork} and
C{exec}): a SIGHUP sent meanwhile waits, pending, and L{hold} unblocks it
into the holding handler, so it is noted and the reload done once the
hub runs. The test kit (L{twisted_mailhub.testing.Mailhub}) starts hubs
so, and a C{--workers} supervisor its workers. Ignoring SIGHUP instead
(C{nohup}, SIG_IGN, kept by L{hold}) keeps the hub alive but drops that
SIGHUP. Or do not signal at all: C{mailhub-admin reload} asks through the
control socket, and the shipped systemd unit reloads that way.

SIGUSR1 (twistd's "reopen the log file") ends a process by default too,
and twistd installs its handler only once it opens the log, after the
hub's modules are imported. L{hold} holds it as well, with a stand-in
that reads as "no handler" (false) to twistd's and the hub log
observer's C{if not signal.getsignal(SIGUSR1)}, so they still install
theirs; a SIGUSR1 before then is dropped (the log file is opened after
it anyway).

This module imports nothing but L{signal} and L{contextlib}: it is imported
while the hub is still starting, and must cost nothing.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Callable, Iterator

# SIGHUPs noted while held, not yet handed to a handler.
_noted = 0


def _note(signum: int, frame: Any) -> None:
    global _noted
    _noted += 1


class _LogReopenStandIn:
    """
    SIGUSR1's handler while the hub starts: the signal does not end the
    process, and is dropped. False as a truth value, so that twistd's
    C{if not signal.getsignal(signal.SIGUSR1)} still installs its log
    rotation in its place.
    """

    def __call__(self, signum: int, frame: Any) -> None:
        pass

    def __bool__(self) -> bool:
        return False


_stand_in = _LogReopenStandIn()
# The signals a hub holds while it starts, and a launcher blocks (L{blocked}).
HELD = frozenset(getattr(signal, name) for name in ("SIGHUP", "SIGUSR1") if hasattr(signal, name))


def hold() -> bool:
    """
    From now on, a SIGHUP to this process is noted instead of ending it
    (until L{release}), and a SIGUSR1 dropped (see the module's words).
    Only a default action is replaced: a handler someone installed, or an
    inherited SIG_IGN (C{nohup}), is kept. Then both are unblocked: a
    SIGHUP that came while a launcher kept them blocked (L{blocked}) is
    noted now.

    @return: whether SIGHUP is held now (False off the main thread, on a
        system without SIGHUP, or when someone else's handler is in place).
    """
    if not hasattr(signal, "SIGHUP"):
        return False
    try:
        if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
            signal.signal(signal.SIGUSR1, _stand_in)
        if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
            signal.signal(signal.SIGHUP, _note)
        holding = signal.getsignal(signal.SIGHUP) is _note
    except ValueError:  # not the main thread
        return False
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
    return holding


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """
    SIGHUP and SIGUSR1 blocked in the calling thread meanwhile: a process
    started inside (C{subprocess}, C{reactor.spawnProcess}) inherits the
    mask across C{exec}, so either signal sent to it before its own code
    runs waits, pending, until L{hold} takes it, instead of ending it.
    Signals to this process meanwhile wait too, and come when it ends.
    """
    if not HELD or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
