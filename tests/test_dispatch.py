"""
The hub's cheaper epoll dispatch (twisted_mailhub/dispatch.py) keeps what
Twisted's own does: every log line written while a connection's event is
handled carries its system prefix, a protocol's exception is logged under
that prefix and drops the connection while the reactor goes on, an
exception out of the disconnection is logged, KeyboardInterrupt from there
propagates, a buggy logPrefix is named as such. Each behaviour is run
through a fresh EPollReactor with Twisted's dispatch and with the hub's,
on real loopback sockets, and must come out the same.
"""

from __future__ import annotations

import re
import select
import socket

import pytest
from twisted.internet import error, protocol, tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.selectreactor import SelectReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mailhub import dispatch

DISPATCHERS = ["twisted", "hub"]


class Tattle(protocol.Protocol):
    """
    Acts on words: C{say} logs (legacy C{log.msg}), C{boom} raises
    ValueError, C{interrupt} raises KeyboardInterrupt, C{inner} logs under
    a nested context, C{later} logs from a timed call, C{echo} answers.
    """

    def connectionMade(self):
        self.factory.made.append(self)

    def dataReceived(self, data):
        for word in data.split():
            if word == b"say":
                log.msg("heard say")
            elif word == b"boom":
                raise ValueError("boom")
            elif word == b"interrupt":
                raise KeyboardInterrupt()
            elif word == b"inner":
                log.callWithContext({"system": "inner"}, log.msg, "heard inner")
            elif word == b"later":
                self.factory.reactor.callLater(0, log.msg, "said later")
            elif word == b"echo":
                self.transport.write(b"echo\n")

    def connectionLost(self, reason):
        self.factory.lost.append(reason.type)
        if self.factory.lost_raises is not None:
            raise self.factory.lost_raises


@implementer(IHalfCloseableProtocol)
class HalfClosing(Tattle):
    def readConnectionLost(self):
        self.factory.lost.append("read side")
        self.transport.write(b"bye\n")
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class BuggyPrefixServer(tcp.Server):
    def logPrefix(self):
        raise RuntimeError("no prefix today")


class OwnPrefixServer(tcp.Server):
    def logPrefix(self):
        return "own prefix"


class Harness:
    """A fresh EPollReactor (Twisted's dispatch or the hub's), a listener, and the log events seen."""

    def __init__(self, which: str, kind: type = Tattle, server: type = tcp.Server):
        self.reactor = EPollReactor()
        if which == "hub":
            assert dispatch.install(self.reactor)
        else:
            assert not dispatch.installed(self.reactor)
        self.factory = protocol.Factory.forProtocol(kind)
        self.factory.made, self.factory.lost, self.factory.lost_raises = [], [], None
        self.factory.reactor = self.reactor

        class Port(tcp.Port):
            transport = server

        self.port = Port(0, self.factory, interface="127.0.0.1", reactor=self.reactor)
        self.port.startListening()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.clients: list[socket.socket] = []

    def _observe(self, event):
        failure = event.get("log_failure") or event.get("failure")
        self.events.append(
            {
                "system": event.get("log_system"),
                "text": None if failure is not None else formatEvent(event),
                "error": None if failure is None else (failure.type.__name__, str(failure.value)),
                "why": event.get("why"),
            }
        )

    def turn(self, until, turns: int = 300) -> None:
        """Run reactor turns (each waits on epoll up to 20 ms) until C{until()}."""
        for _ in range(turns):
            if until():
                return
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.02)
        assert until(), "the reactor never got there"

    def answer(self, client: socket.socket) -> bytes:
        """What the server sends C{client} next, running the reactor until it comes."""
        self.turn(lambda: select.select([client], [], [], 0)[0])
        return client.recv(4096)

    def connect(self) -> socket.socket:
        made = len(self.factory.made)
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=10)
        self.clients.append(client)
        self.turn(lambda: len(self.factory.made) > made)
        return client

    def close(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        for client in self.clients:
            client.close()
        reactor = self.reactor
        self.port.stopListening()
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        self.factory.lost_raises = None
        for selectable in reactor.removeAll():
            selectable.connectionLost(Failure(error.ConnectionDone()))
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor._poller.close()

    def texts(self) -> list[tuple[str | None, str | None]]:
        return [(e["system"], e["text"]) for e in self.events if e["text"] is not None]

    def errors(self) -> list[tuple[str | None, tuple[str, str]]]:
        return [(e["system"], e["error"]) for e in self.events if e["error"] is not None]


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(which: str, **kwargs) -> Harness:
        made.append(Harness(which, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


def reads_to_end(client: socket.socket) -> bytes:
    return b"".join(iter(lambda: client.recv(4096), b""))


@pytest.mark.parametrize("which", DISPATCHERS)
def test_a_log_line_written_while_a_connection_reads_carries_its_system_prefix(harness, which):
    h = harness(which)
    client = h.connect()
    client.sendall(b"say\n")
    h.turn(lambda: h.texts())
    prefix = f"Tattle,{h.factory.made[0].transport.sessionno},127.0.0.1"
    assert h.texts() == [(prefix, "heard say")]


@pytest.mark.parametrize("which", DISPATCHERS)
def test_each_connection_in_one_turn_logs_under_its_own_prefix_and_nested_contexts_still_win(harness, which):
    h = harness(which)
    first, second = h.connect(), h.connect()
    first.sendall(b"say\n")
    second.sendall(b"say inner\n")
    h.turn(lambda: len(h.texts()) == 3)
    one, two = (f"Tattle,{p.transport.sessionno},127.0.0.1" for p in h.factory.made)
    assert sorted(h.texts()) == sorted([(one, "heard say"), (two, "heard say"), ("inner", "heard inner")])


@pytest.mark.parametrize("which", DISPATCHERS)
def test_outside_a_connections_event_the_system_is_a_dash_and_the_context_stack_is_as_before(harness, which):
    h = harness(which)
    stack = list(context.theContextTracker.currentContext().contexts)
    client = h.connect()
    client.sendall(b"later\n")
    h.turn(lambda: h.texts())
    assert h.texts() == [("-", "said later")]
    assert context.theContextTracker.currentContext().contexts == stack


@pytest.mark.parametrize("which", DISPATCHERS)
def test_a_protocol_exception_is_logged_under_its_prefix_and_drops_only_that_connection(harness, which):
    h = harness(which)
    bad, good = h.connect(), h.connect()
    prefix = f"Tattle,{h.factory.made[0].transport.sessionno},127.0.0.1"
    bad.sendall(b"boom\n")
    h.turn(lambda: h.factory.lost)
    assert h.errors() == [(prefix, ("ValueError", "boom"))]
    assert h.factory.lost == [ValueError]
    assert reads_to_end(bad) == b""  # the hub closed it
    # The reactor goes on: the other connection, and a new one, are served.
    good.sendall(b"echo\n")
    assert h.answer(good) == b"echo\n"
    third = h.connect()
    third.sendall(b"say\n")
    h.turn(lambda: h.texts())
    assert h.texts() == [(f"Tattle,{h.factory.made[2].transport.sessionno},127.0.0.1", "heard say")]


@pytest.mark.parametrize("which", DISPATCHERS)
def test_keyboard_interrupt_from_a_protocol_is_logged_and_drops_the_connection_as_twisted_does(harness, which):
    h = harness(which)
    client = h.connect()
    prefix = f"Tattle,{h.factory.made[0].transport.sessionno},127.0.0.1"
    client.sendall(b"interrupt\n")
    h.turn(lambda: h.factory.lost)
    assert h.errors() == [(prefix, ("KeyboardInterrupt", ""))]
    assert h.factory.lost == [KeyboardInterrupt]


@pytest.mark.parametrize("which", DISPATCHERS)
def test_the_peer_closing_gives_connection_done_and_an_exception_there_is_logged_under_the_prefix(harness, which):
    h = harness(which)
    client = h.connect()
    prefix = f"Tattle,{h.factory.made[0].transport.sessionno},127.0.0.1"
    h.factory.lost_raises = RuntimeError("lost badly")
    client.close()
    h.turn(lambda: h.factory.lost)
    assert h.factory.lost == [error.ConnectionDone]
    assert h.errors() == [(prefix, ("RuntimeError", "lost badly"))]
    # and the reactor goes on
    h.factory.lost_raises = None
    other = h.connect()
    other.sendall(b"echo\n")
    assert h.answer(other) == b"echo\n"


@pytest.mark.parametrize("which", DISPATCHERS)
def test_keyboard_interrupt_out_of_a_disconnection_propagates_and_the_context_stack_is_restored(harness, which):
    h = harness(which)
    stack = list(context.theContextTracker.currentContext().contexts)
    client = h.connect()
    h.factory.lost_raises = KeyboardInterrupt()
    client.close()
    with pytest.raises(KeyboardInterrupt):
        h.turn(lambda: False)
    assert context.theContextTracker.currentContext().contexts == stack


@pytest.mark.parametrize("which", DISPATCHERS)
def test_a_half_closing_protocol_hears_the_read_side_end_and_may_still_answer(harness, which):
    h = harness(which, kind=HalfClosing)
    client = h.connect()
    client.shutdown(socket.SHUT_WR)
    assert h.answer(client) == b"bye\n"
    h.turn(lambda: len(h.factory.lost) == 2)
    assert h.factory.lost == ["read side", error.ConnectionDone]
    assert h.answer(client) == b""


@pytest.mark.parametrize("which", DISPATCHERS)
def test_a_buggy_log_prefix_is_logged_and_named_as_such(harness, which):
    h = harness(which, server=BuggyPrefixServer)
    client = h.connect()
    client.sendall(b"say\n")
    h.turn(lambda: h.texts())
    assert h.texts() == [("(buggy logPrefix method)", "heard say")]
    assert h.errors() == [("(buggy logPrefix method)", ("RuntimeError", "no prefix today"))]


@pytest.mark.parametrize("which", DISPATCHERS)
def test_a_transport_with_its_own_log_prefix_is_asked_for_it(harness, which):
    h = harness(which, server=OwnPrefixServer)
    client = h.connect()
    client.sendall(b"say\n")
    h.turn(lambda: h.texts())
    assert h.texts() == [("own prefix", "heard say")]


def scenario(h: Harness) -> list[dict]:
    """Everything above in one run; the log events it made, in order."""
    a, b = h.connect(), h.connect()
    a.sendall(b"say\n")
    h.turn(lambda: len(h.events) >= 1)
    b.sendall(b"inner later\n")
    h.turn(lambda: len(h.events) >= 3)
    a.sendall(b"boom\n")
    h.turn(lambda: len(h.factory.lost) >= 1)
    h.factory.lost_raises = RuntimeError("lost badly")
    b.close()
    h.turn(lambda: len(h.factory.lost) >= 2)
    h.factory.lost_raises = None
    c = h.connect()
    c.sendall(b"interrupt\n")
    h.turn(lambda: len(h.factory.lost) >= 3)
    return list(h.events)


def test_both_dispatchers_log_the_same_events_in_the_same_order(harness):
    twisted_events = scenario(harness("twisted"))
    hub_events = scenario(harness("hub"))
    assert hub_events == twisted_events
    assert [e["system"] for e in hub_events] == [
        "Tattle,0,127.0.0.1",
        "inner",
        "-",
        "Tattle,0,127.0.0.1",
        "Tattle,1,127.0.0.1",
        "Tattle,2,127.0.0.1",
    ]


def test_only_twisteds_own_epoll_reactor_gets_the_cheaper_dispatch(monkeypatch):
    select_reactor = SelectReactor()
    try:
        assert not dispatch.install(select_reactor)
        assert not dispatch.installed(select_reactor)
    finally:
        select_reactor.waker.connectionLost(None)

    class Changed(EPollReactor):
        def doPoll(self, timeout):
            return EPollReactor.doPoll(self, timeout)

        doIteration = doPoll

    for made, patch in ((Changed, None), (EPollReactor, "env"), (EPollReactor, "logger")):
        with monkeypatch.context() as m:
            if patch == "env":
                m.setenv("MAILHUB_DISPATCH", "twisted")
            elif patch == "logger":
                m.setattr(log, "callWithLogger", lambda *a, **k: None)
            reactor = made()
            try:
                assert not dispatch.install(reactor)
                assert type(reactor).doIteration is reactor.doIteration.__func__
            finally:
                reactor._poller.close()
                reactor.waker.connectionLost(None)


def test_install_is_idempotent_and_uninstall_gives_back_twisteds_dispatch():
    reactor = EPollReactor()
    try:
        assert dispatch.install(reactor)
        ours = reactor.doIteration
        assert dispatch.install(reactor) and reactor.doIteration is ours
        dispatch.uninstall(reactor)
        assert not dispatch.installed(reactor)
        assert reactor.doIteration.__func__ is EPollReactor.doPoll
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)


TATTLE_PLUGIN = '''
from twisted.internet import protocol
from twisted.plugin import IPlugin
from twisted.python import log
from zope.interface import implementer

from twisted_mailhub.components import IHubComponent
from twisted_mailhub.hub import ListenerSpec


class Tattle(protocol.Protocol):
    def dataReceived(self, data):
        for word in data.split():
            if word == b"say":
                log.msg("heard say")
            elif word == b"boom":
                raise ValueError("boom")
            elif word == b"echo":
                self.transport.write(b"echo\\r\\n")


@implementer(IPlugin, IHubComponent)
class TattleComponent:
    name = "tattle"
    order = 95
    listeners = [ListenerSpec("tattle", "tcp:8077", "Logs what it hears (a test listener).")]
    option_parameters = []
    option_flags = []
    option_lists = []

    def install(self, hub):
        hub.listen_each(self.listeners, lambda spec: protocol.Factory.forProtocol(Tattle))


tattle = TattleComponent()
'''


def _tattle_session(hub) -> list[str]:
    """Say, boom, then a new connection that says and echoes; the hub's log lines about them."""
    port = hub.ports["tattle"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
        first.sendall(b"say\r\n")
        hub.wait_for_log(r"heard say")
        first.sendall(b"boom\r\n")
        assert reads_to_end(first) == b""  # the hub dropped this connection
    with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
        second.sendall(b"say echo\r\n")
        assert second.recv(100) == b"echo\r\n"  # the hub goes on
        hub.wait_for_log(r"heard say(.|\n)*heard say")
    # SMTP on the same reactor still answers
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as smtp:
        assert smtp.recv(100).startswith(b"220 ")
    lines, inside = [], False
    for line in hub.log.splitlines():
        if line.startswith("\t"):  # a continuation line (a traceback)
            if inside and line.strip():
                lines.append(line)
            continue
        inside = "[Tattle" in line
        if inside:
            lines.append(line.split(" ", 1)[1])  # no time stamp
    return lines


def _without_frames(lines: list[str]) -> list[str]:
    """A traceback's lines without its frames ('File ...' and the code line after)."""
    out, skip = [], False
    for line in lines:
        if line.startswith("\t  File "):
            skip = True
            continue
        if skip:
            skip = False
            continue
        out.append(line)
    return out


def test_a_real_hub_logs_a_listeners_lines_and_errors_under_its_connection_prefix_as_twisted_does(start_hub, tmp_path):
    plugins = tmp_path / "plugins"
    (plugins / "twisted_mailhub" / "plugins").mkdir(parents=True)
    (plugins / "twisted_mailhub" / "plugins" / "tattle_listener.py").write_text(TATTLE_PLUGIN)
    ours = _tattle_session(start_hub(env={"PYTHONPATH": str(plugins)}))
    twisteds = _tattle_session(start_hub(env={"PYTHONPATH": str(plugins), "MAILHUB_DISPATCH": "twisted"}))
    # The same lines; the traceback's frames differ only in naming the
    # dispatcher's own functions (twisted's log.py/posixbase.py/tcp.py or
    # twisted_mailhub/dispatch.py) above the protocol's.
    assert _without_frames(ours) == _without_frames(twisteds)
    # (and so each hub ran the dispatcher it was meant to)
    assert any("twisted_mailhub/dispatch.py" in line for line in ours)
    assert not any("twisted_mailhub/dispatch.py" in line for line in twisteds)
    assert ours[-4:] == twisteds[-4:]  # the protocol's frame, the error, the next line
    prefix = re.escape("[Tattle (TranscriptProtocol)")
    assert len(_without_frames(ours)) == 5, ours
    said, error, traceback, boom, said_again = _without_frames(ours)
    assert re.fullmatch(prefix + r",0,127\.0\.0\.1\] heard say", said)
    assert re.fullmatch(prefix + r",0,127\.0\.0\.1\] Unhandled Error", error)
    assert traceback == "\tTraceback (most recent call last):"
    assert boom == "\tbuiltins.ValueError: boom"
    assert re.fullmatch(prefix + r",1,127\.0\.0\.1\] heard say", said_again)


# The main loop: the same turns, fewer calls per turn.


def _run_loop(which: str, plan) -> tuple[list, list[dict]]:
    """
    Run a fresh EPollReactor's C{run()} (Twisted's loop, or the hub's) on a
    made-up clock that moves by each poll's wait: C{plan(reactor, seen)}
    schedules the work. Returns what happened in order (C{seen}: the
    plan's records and each poll's wait) and the log events.
    """
    reactor = EPollReactor()
    if which == "hub":
        assert dispatch.install(reactor)
        assert getattr(reactor.mainLoop, "mailhub_dispatch", False)
    now = [1000.0]
    reactor.seconds = lambda: now[0]
    seen: list = []
    poll = reactor.doIteration

    def do_iteration(wait):
        seen.append(("wait", wait))
        poll(0)  # nothing to wait for on the made-up clock
        now[0] += 0.25 if wait is None else wait

    reactor.doIteration = do_iteration
    events: list[dict] = []

    def observe(event):
        failure = event.get("log_failure") or event.get("failure")
        events.append({"text": None if failure else formatEvent(event), "error": failure and failure.type.__name__, "namespace": event.get("log_namespace")})

    plan(reactor, seen)
    globalLogPublisher.addObserver(observe)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        globalLogPublisher.removeObserver(observe)
        for reader in list(reactor._internalReaders):
            reactor.removeReader(reader)
            reader.connectionLost(None)
        reactor._poller.close()
    return seen, events


def _timed_work(reactor, seen):
    def record(name):
        seen.append(name)

    def fail():
        raise ValueError("timed call failed")

    reactor.callLater(1.0, record, "after 1 s")
    reactor.callLater(0, record, "at once")
    reactor.callLater(0.5, fail)
    reactor.callLater(2.0, record, "never").cancel()
    for n in range(60):  # enough cancelled calls to be swept from the heap
        reactor.callLater(5.0 + n, record, "never").cancel()
    later = reactor.callLater(1.5, record, "delayed to 3 s")
    reactor.callLater(1.2, later.delay, 1.5)
    reactor.callLater(2.5, lambda: reactor.callLater(0, record, "new at 2.5 s"))
    reactor.callLater(4.0, reactor.stop)
    reactor.addSystemEventTrigger("before", "shutdown", record, "shutdown")
    reactor.callWhenRunning(record, "running")


def test_the_hubs_main_loop_runs_the_same_calls_and_polls_with_the_same_waits_as_twisteds():
    twisted_seen, twisted_events = _run_loop("twisted", _timed_work)
    hub_seen, hub_events = _run_loop("hub", _timed_work)
    assert hub_seen == twisted_seen
    assert hub_events == twisted_events
    calls = [s for s in hub_seen if not isinstance(s, tuple)]
    assert calls == ["running", "at once", "after 1 s", "new at 2.5 s", "delayed to 3 s", "shutdown"]
    assert [e["error"] for e in hub_events if e["error"]] == ["ValueError"]
    assert hub_events[-1]["text"] == "Main loop terminated."
    # Waits are what is left until the next call is due (never a negative one).
    waits = [s[1] for s in hub_seen if isinstance(s, tuple)]
    assert 0.5 in waits and all(w is None or w >= 0 for w in waits)


def test_a_call_from_another_thread_is_run_by_the_hubs_main_loop():
    import threading

    def plan(reactor, seen):
        def from_thread():
            reactor.callFromThread(seen.append, "from a thread")
            reactor.callFromThread(reactor.stop)

        reactor.callWhenRunning(threading.Thread(target=from_thread).start)

    for which in DISPATCHERS:
        seen, events = _run_loop(which, plan)
        assert "from a thread" in seen


def test_an_error_in_a_turn_is_logged_as_unexpected_and_the_hubs_main_loop_goes_on():
    def plan(reactor, seen):
        poll = reactor.doIteration
        failed = []

        def do_iteration(wait):
            if not failed:
                failed.append(1)
                raise RuntimeError("poll broke")
            poll(wait)

        reactor.doIteration = do_iteration
        reactor.callLater(1.0, seen.append, "still running")
        reactor.callLater(2.0, reactor.stop)

    results = {which: _run_loop(which, plan) for which in DISPATCHERS}
    assert results["hub"] == results["twisted"]
    seen, events = results["hub"]
    assert "still running" in seen
    assert [e["text"] for e in events if e["error"] == "RuntimeError"] == [None]
    assert any(e["error"] == "RuntimeError" and e["namespace"] == "twisted.internet.base" for e in events)


def test_a_reactor_whose_loop_is_not_twisteds_keeps_its_own():
    class OwnLoop(EPollReactor):
        def mainLoop(self):
            EPollReactor.mainLoop(self)

    reactor = OwnLoop()
    try:
        assert dispatch.install(reactor)  # the poll still is Twisted's
        assert not getattr(reactor.mainLoop, "mailhub_dispatch", False)
        dispatch.uninstall(reactor)
    finally:
        reactor._poller.close()
        reactor.waker.connectionLost(None)
