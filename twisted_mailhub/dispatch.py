# -*- test-case-name: tests.test_dispatch -*-
"""
The epoll reactor's event dispatch, at less cost per event.

Every read and write of every connection goes through the reactor's
C{doPoll}: for each ready descriptor Twisted calls
C{log.callWithLogger(selectable, _doReadOrWrite, ...)}, which asks the
selectable for its C{logPrefix()}, copies the current log context, pushes
C{{"system": prefix}} onto the thread's context stack (three levels of
L{twisted.python.context} calls, two thread-local look-ups), and then
C{_doReadOrWrite} -> C{tcp.Connection.doRead} -> C{_dataReceived} ->
C{protocol.dataReceived}. That is about a dozen Python calls per event
before the protocol sees a byte: on a POP3 RETR or an SMTP command sent
one per round trip, a large part of the hub's CPU.

L{install} gives the running L{EPollReactor} instance a C{doIteration}
that does the same work with fewer calls:

  - the log context is pushed once per reactor turn that has events (one
    frame on the thread's context stack), and for each event only that
    frame's value is replaced with a fresh C{{"system": prefix}} copy of
    the context below it: exactly what C{callWithContext} would have
    pushed, without the calls;
  - a plain TCP connection (C{twisted.internet.tcp.Connection}'s own
    C{logPrefix}, C{doRead} and C{_dataReceived}, the hub's accepted
    connections) that is readable is read inline: the same C{recv}, the
    same C{EWOULDBLOCK}/error/end-of-file outcomes, the same
    C{protocol.dataReceived};
  - every other event (a write, a hang-up, a listening port, a pipe, a
    PostgreSQL connection, a selectable of another class) goes through
    Twisted's own C{_doReadOrWrite}, under the same context.

L{install} also gives it, when its loop is C{ReactorBase}'s own, a
C{mainLoop} (L{make_main_loop}) that runs the same turns but calls
C{runUntilCurrent} only when something is due and works out the poll's
wait inline: Twisted calls C{runUntilCurrent}, C{timeout}, two
C{_insertNewDelayedCalls} and a failure handler's C{__enter__}/C{__exit__}
every turn.

What a user can see stays exactly the same: every log line written while
a connection's event is handled carries that connection's system prefix
(C{[SMTPServer,3,127.0.0.1]}, C{[-]} outside events); an exception from a
protocol is logged by C{log.err} under that prefix and the connection is
dropped through the reactor's C{_disconnectSelectable} while the reactor
goes on; an exception out of the disconnection itself is logged with
C{err(system=prefix)} as C{callWithLogger} does; C{KeyboardInterrupt}
raised there propagates; a C{logPrefix} that raises is logged as
C{(buggy logPrefix method)}. C{tests/test_dispatch.py} runs each of
these through both dispatchers and compares the log events.

Only Twisted's own L{EPollReactor} (not a subclass that changed its
dispatch) with Twisted's own log-context tracker is given the cheaper
path; any other reactor keeps Twisted's. The environment variable
C{MAILHUB_DISPATCH=twisted} keeps Twisted's path everywhere (for A/B
benchmarks: C{bench/pop3_retr.py --callgrind}, C{bench/smtp_cpu.py}).
"""

from __future__ import annotations

import os
import sys
from errno import EINTR, EWOULDBLOCK
from typing import Any, Callable

from twisted.internet import base, main, posixbase, tcp
from twisted.python import context, log

from twisted_mailhub.lines import RAW_RECV, SOCKET_COUNTS

try:
    from twisted.internet.epollreactor import EPOLLIN, EPollReactor
except ImportError:  # not Linux
    EPollReactor = None  # type: ignore[assignment,misc]
    EPOLLIN = 1

ILogContext = log.ILogContext
_CONNECTION_DONE = main.CONNECTION_DONE
_CONNECTION_LOST = main.CONNECTION_LOST
_NO_FILEDESC = posixbase._NO_FILEDESC

# What the cheaper path stands in for: if any of these is not Twisted's
# own (a newer Twisted, a test that replaced one), keep Twisted's path.
_TWISTED_DO_POLL = getattr(EPollReactor, "doPoll", None)
_TWISTED_DO_READ_OR_WRITE = posixbase._PollLikeMixin._doReadOrWrite
_TWISTED_CALL_WITH_LOGGER = log.callWithLogger
_TWISTED_CALL_WITH_CONTEXT = log.callWithContext
_TWISTED_MAIN_LOOP = base.ReactorBase.mainLoop
_TWISTED_RUN_UNTIL_CURRENT = base.ReactorBase.runUntilCurrent
_TWISTED_TIMEOUT = base.ReactorBase.timeout
# ReactorBase's state that L{make_main_loop} reads to know a turn has no
# timed or thread calls to run.
_TURN_STATE = ("threadCallQueue", "_newTimedCalls", "_pendingTimedCalls", "_cancellations", "_justStopped", "_started", "running")


def _reads_inline(kind: type) -> bool:
    """
    Whether a readable selectable of class C{kind} may be read inline: its
    C{logPrefix}, C{doRead} and C{_dataReceived} are exactly
    C{tcp.Connection}'s (the hub's accepted TCP connections, TLS or not:
    TLS is a protocol above the same transport).
    """
    return (
        issubclass(kind, tcp.Connection)
        and kind.logPrefix is tcp.Connection.logPrefix
        and kind.doRead is tcp.Connection.doRead
        and kind._dataReceived is tcp.Connection._dataReceived
    )


def applies_to(reactor: Any) -> bool:
    """
    Whether L{install} would give C{reactor} the cheaper dispatch: it is
    Twisted's L{EPollReactor} with Twisted's own C{doPoll} and
    C{_doReadOrWrite}, C{log.callWithLogger} is Twisted's, and
    C{MAILHUB_DISPATCH} is not C{twisted}.
    """
    if os.environ.get("MAILHUB_DISPATCH", "") == "twisted" or EPollReactor is None:
        return False
    kind = type(reactor)
    return (
        isinstance(reactor, EPollReactor)
        and kind.doPoll is _TWISTED_DO_POLL
        and kind.doIteration is _TWISTED_DO_POLL
        and getattr(reactor.doIteration, "__func__", None) is _TWISTED_DO_POLL
        and kind._doReadOrWrite is _TWISTED_DO_READ_OR_WRITE
        and log.callWithLogger is _TWISTED_CALL_WITH_LOGGER
        and log.callWithContext is _TWISTED_CALL_WITH_CONTEXT
        and type(context.theContextTracker) is context.ThreadedContextTracker
    )


def installed(reactor: Any) -> bool:
    """Whether C{reactor} dispatches through L{make_do_poll}'s C{doIteration}."""
    return getattr(getattr(reactor, "doIteration", None), "mailhub_dispatch", False)


def _turns_inline(reactor: Any) -> bool:
    """
    Whether C{reactor}'s main loop may be L{make_main_loop}'s: its
    C{mainLoop}, C{runUntilCurrent} and C{timeout} are C{ReactorBase}'s own
    (on the class and the instance) and it has the state they keep.
    """
    kind = type(reactor)
    return (
        all(hasattr(reactor, name) for name in _TURN_STATE)
        and hasattr(base, "_topHandler")
        and kind.mainLoop is _TWISTED_MAIN_LOOP
        and kind.runUntilCurrent is _TWISTED_RUN_UNTIL_CURRENT
        and kind.timeout is _TWISTED_TIMEOUT
        and getattr(reactor.mainLoop, "__func__", None) is _TWISTED_MAIN_LOOP
        and getattr(reactor.runUntilCurrent, "__func__", None) is _TWISTED_RUN_UNTIL_CURRENT
        and getattr(reactor.timeout, "__func__", None) is _TWISTED_TIMEOUT
    )


def install(reactor: Any) -> bool:
    """
    Give C{reactor} (the instance, not its class) the cheaper
    C{doIteration} when L{applies_to} it, and the cheaper C{mainLoop}
    (L{make_main_loop}) when its loop is Twisted's too; return whether it
    has the cheaper C{doIteration}. Safe to call again (a second call
    changes nothing). L{uninstall} undoes it. A C{mainLoop} given while
    the reactor already runs is used from its next C{run()}: C{twistd}
    starts the hub's services before it runs the reactor.

    (Never C{vars(reactor)}: in CPython 3.11 that turns the instance's
    inline attribute values into a dict, and every C{reactor.x} after it
    costs about three times as much.)
    """
    if installed(reactor):
        return True
    if not applies_to(reactor):
        return False
    if _turns_inline(reactor):
        reactor.mainLoop = make_main_loop(reactor)
    reactor.doIteration = make_do_poll(reactor)
    return True


def uninstall(reactor: Any) -> None:
    """Give C{reactor} back Twisted's own C{doIteration} and C{mainLoop} (its class's)."""
    if installed(reactor):
        del reactor.doIteration
    if getattr(getattr(reactor, "mainLoop", None), "mailhub_dispatch", False):
        del reactor.mainLoop


def make_main_loop(reactor: Any) -> Callable[[], None]:
    """
    C{ReactorBase.mainLoop} for C{reactor}, with the same turns: run what
    is due (C{runUntilCurrent}), work out how long the poll may wait
    (C{timeout}), poll (C{doIteration}), every failure of a turn logged as
    "Unexpected error in main loop" and the loop going on. The difference
    is in what a turn costs when nothing is due: Twisted calls
    C{runUntilCurrent} and C{timeout} (and C{_insertNewDelayedCalls} in
    each, and the failure handler's C{__enter__}/C{__exit__}) every turn;
    here C{runUntilCurrent} is called only when it has something to do (a
    call from a thread, a new or due timed call, cancelled calls to sweep,
    the reactor just stopped), and the wait is worked out inline.
    """
    top = base._topHandler
    run_until_current = reactor.runUntilCurrent
    insert_new_delayed_calls = reactor._insertNewDelayedCalls
    exc_info = sys.exc_info
    longest = 2147483  # as ReactorBase.timeout: epoll_wait's milliseconds fit an int

    def main_loop() -> None:
        r = reactor
        while r._started:
            try:
                pending = r._pendingTimedCalls
                if r.threadCallQueue or r._newTimedCalls or r._justStopped or (
                    r._cancellations > 50 and r._cancellations > len(pending) >> 1
                ):
                    run_until_current()
                    now = None
                else:
                    now = r.seconds()
                    if pending and pending[0].time <= now:
                        run_until_current()
                        now = None
                # ReactorBase.timeout
                if r._newTimedCalls:
                    insert_new_delayed_calls()
                pending = r._pendingTimedCalls
                if pending:
                    if now is None:
                        now = r.seconds()
                    wait = max(0, min(longest, pending[0].time - now))
                else:
                    wait = None
                r.doIteration(r.running and wait)
            except BaseException:
                if not top.__exit__(*exc_info()):
                    raise
        base._log.info("Main loop terminated.")

    main_loop.mailhub_dispatch = True  # type: ignore[attr-defined]
    return main_loop


def make_do_poll(reactor: Any) -> Callable[[float | None], None]:
    """
    The cheaper C{doPoll} for C{reactor} (an L{EPollReactor}): the same
    poll, and for each ready descriptor the same outcome as Twisted's
    C{log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd,
    event)}, with the log context pushed once per turn (see the module's
    docstring). C{timeout} is in seconds, L{None} to wait for an event.
    """
    poll = reactor._poller.poll
    selectables = reactor._selectables
    do_read_or_write = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    twisted_do_poll = type(reactor).doPoll.__get__(reactor)
    tracker_kind = context.ThreadedContextTracker
    inline: dict[type, bool] = {}
    exc_info = sys.exc_info
    socket_counts, raw_recv = SOCKET_COUNTS, RAW_RECV

    def do_poll(timeout: float | None) -> None:
        tracker = context.theContextTracker
        if type(tracker) is not tracker_kind:  # someone installed another tracker since
            return twisted_do_poll(timeout)
        if timeout is None:
            timeout = -1  # wait for an event
        try:
            ready = poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == EINTR:
                return None
            raise
        if not ready:
            return None
        # What log.callWithContext copies: the log context below ours
        # (ThreadedContextTracker.getContext, without its two calls).
        try:
            contexts = tracker.storage.ct.contexts
        except AttributeError:
            contexts = tracker.currentContext().contexts
        for below in reversed(contexts):
            if ILogContext in below:
                below = below[ILogContext]
                break
        else:
            below = {}
        frame: dict[Any, Any] = {}
        contexts.append(frame)
        try:
            for fd, event in ready:
                try:
                    selectable = selectables[fd]
                except KeyError:
                    continue
                kind = type(selectable)
                fast = inline.get(kind)
                if fast is None:
                    fast = inline[kind] = _reads_inline(kind)
                try:
                    # tcp.Connection.logPrefix is "return self.logstr".
                    prefix = selectable.logstr if fast else selectable.logPrefix()
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    prefix = "(buggy logPrefix method)"
                    frame[ILogContext] = below
                    log.err(system=prefix)
                ours = below.copy()
                ours["system"] = prefix
                frame[ILogContext] = ours
                try:
                    if fast and event == EPOLLIN:
                        # _doReadOrWrite with tcp.Connection.doRead and
                        # _dataReceived inline: the same outcomes.
                        reading = False
                        try:
                            if selectable.fileno() == -1:
                                why = _NO_FILEDESC
                            else:
                                sock = selectable.socket
                                counts = socket_counts.get(sock.__class__)
                                try:
                                    if counts is None:
                                        data = sock.recv(selectable.bufferSize)
                                    else:
                                        # CountingSocket.recv, inline (lines.SOCKET_COUNTS)
                                        data = raw_recv(sock, selectable.bufferSize)
                                        counts.received += len(data)
                                except OSError as se:
                                    why = None if se.args[0] == EWOULDBLOCK else _CONNECTION_LOST
                                else:
                                    if data:
                                        selectable.protocol.dataReceived(data)
                                        continue
                                    why = _CONNECTION_DONE
                                reading = True
                        except BaseException:
                            why = exc_info()[1]
                            log.err()
                        if why:
                            disconnect(selectable, why, reading)
                    else:
                        do_read_or_write(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    # As callWithLogger: logged outside the event's context.
                    frame[ILogContext] = below
                    log.err(system=prefix)
        finally:
            contexts.pop()
        return None

    do_poll.mailhub_dispatch = True  # type: ignore[attr-defined]
    return do_poll
