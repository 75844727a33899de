# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: N hub processes sharing the listening sockets and the store.

One Twisted process uses one core. With C{--workers N} (C{auto}: one per
core) the process C{twistd} starts becomes a supervisor:

 - It binds every listener in C{privilegedStartService}, exactly as one hub
   does (same errors, same exit status, C{--uid/--gid} after binding), and
   never accepts on them itself.
 - It starts N worker processes (C{python -m twisted_mailhub.workers}
   with the same hub options), handing each its bound sockets as inherited
   file descriptors (C{spawnProcess} C{childFDs}); each worker adopts them
   (C{reactor.adoptStreamPort}). Both ways the brief offered, each for
   what it is good at: the sockets are bound in this one process (with
   privileges, before C{--uid}; one place reports a bind error; C{tcp:0}
   gives every worker the same port). Every worker accepts on the one
   socket of a listener, and a new connection goes to the worker with
   the fewest open (L{twisted_mailhub.accepts}: a table in shared
   memory the supervisor makes and hands down too): neither the first
   worker to wake (32 clients at once: 3 to 1) nor a hash of the
   addresses (C{SO_REUSEPORT}: as uneven as 11 to 21) spreads them
   evenly. While a worker is being restarted, the others accept.
 - It logs C{mailhub ready {ports}} once every worker is ready; a worker's
   log lines come to it over a pipe and are logged with C{worker N} as
   their system.
 - SIGHUP is passed on to every worker (each reloads its accounts and
   certificate); on SIGTERM or SIGINT the supervisor stops every worker
   (SIGTERM, then SIGKILL after L{STOP_GRACE} seconds) and then exits as
   one hub would, removing its pidfile. A signal to the whole process
   group reaches every process directly too: each stops once
   (L{StopSignals}). A worker that dies is logged with
   its status and started again (after L{RESTART_DELAY} seconds if it
   died within L{QUICK_DEATH} seconds of its start). A worker that exits
   before the hub was ever ready ends the start: the supervisor stops
   the others and exits with status 1.

The log. A worker makes its log lines as the supervisor's log shows
them. When the supervisor logs to standard output (C{-n}, C{--logfile=-})
the worker writes them there itself, on a descriptor it is handed, in
writes of whole lines that no other process's write cuts
(L{twisted_mailhub.logobserver.whole_lines_writer}); otherwise (a
rotated C{--logfile}, C{--logger}, C{--syslog}) they go over the bus.

The bus. Each worker writes lines to the supervisor on its descriptor 3
(C{T}: a log line as it is to be written; C{L}: a log event, when the
supervisor logs through C{--logger} or C{--syslog}; C{R}: ready; C{B}: a
notice for the other workers) and
reads the notices of the others on its standard input, which the
supervisor closes when it goes (a worker whose supervisor is gone stops).
Notices: a folder one worker changed (the others' IDLE sessions look at
once, see L{twisted_mailhub.store.shared}), a failed or successful login
(the throttle counts every worker's failures), a queued message (the
worker that runs the queue takes it), and session events while a console
watches (every worker's sessions on every worker's console).

What is shared, and what is not, is in the README (C{--workers}).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import LogLevel, Logger, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.threadable import isInIOThread

from twisted_mailhub import sighup
from twisted_mailhub.logobserver import OffersLogObserver

log = Logger()

# (the outbound queue under --workers: WorkerLink.adopt_queued) Seconds
# between two looks for messages no notice handed on, and how old such a
# message must be to be taken up: far longer than any durable write.
ADOPT_EVERY = 10.0
ADOPT_AFTER = 60.0

ENV = "MAILHUB_WORKER"  # JSON: {"index": i, "count": N, "fds": {listener: fd}}
FIRST_FD = 4
# Listeners served by worker 0 alone: the web face keeps browser sessions
# in memory (a login must find its session on the next request).
ONE_WORKER_LISTENERS = frozenset({"web", "webs"})
WATCH_CHECK = 0.25  # seconds between worker 0's looks at whether a console is open
_LINE_KINDS = frozenset({"C", "S"})
STOP_GRACE = 10.0  # seconds a worker has to stop before SIGKILL
RESTART_DELAY = 1.0
QUICK_DEATH = 5.0
_LOG_ESCAPES = re.compile(r"\\\\|\\n")
ASK_TIMEOUT = 5.0  # seconds the supervisor waits for the workers' answers
# A worker's group commit lets a batch wait up to this many seconds for
# more writes while another batch is on its way (store/durable.GATHER_MAX).
GATHER_MAX = 0.002
NOTICE_GAP = 0.02  # seconds between two folder notices of one worker (WorkerLink.folder_changed)
LOG_DELAY = 0.05  # seconds a worker's log lines wait for company on the bus


def worker_count(text: str | int | None) -> int:
    """
    C{--workers}: a number of processes (1 = no workers, one process), or
    C{auto} for one per core.

    @raise ValueError: neither a positive number nor C{auto}.
    """
    if text is None or text == "":
        return 1
    if isinstance(text, int):
        count = text
    elif str(text).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    else:
        try:
            count = int(str(text).strip())
        except ValueError:
            count = 0  # not a number: the one message below, never int()'s words
    if count < 1:
        raise ValueError("wants a number of processes, 1 or more, or auto")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    most = max(8, 4 * cores)
    if count > most:
        # A typo (--workers 1000) started a thousand 60 MB processes.
        raise ValueError(f"wants at most {most} here ({cores} core{'s' if cores != 1 else ''}: more processes than 4 per core only take memory), or auto")
    return count


def worker_cpu(index: int, count: int, allowed: set[int] | None = None) -> int | None:
    """
    The core worker C{index} of C{count} keeps (L{pin_to_cpu}): the
    C{index}th of the cores this process may use (C{allowed}; default:
    its affinity, as C{taskset} or a cgroup left it), when every worker
    can have one of its own; else None (the system places them).
    """
    if allowed is None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        allowed = os.sched_getaffinity(0)
    cores = sorted(allowed)
    if count < 2 or count > len(cores) or not 0 <= index < count:
        return None
    return cores[index]


def pin_to_cpu(cpu: int) -> None:
    """
    Keep every thread of this process (and those it starts later) on core
    C{cpu}. A worker that shares its core with no other worker keeps its
    caches warm and hands work to its own threads on the same core: with
    32 SMTP clients on 2 cores, 2,769 -> 4,305 msg/s (median of 5
    alternating rounds, bench/workers.py's load, hub CPU per message
    unchanged); the one-process hub gains nothing from it.

    @raise OSError: the system refused (the caller logs and goes on).
    """
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else [0]:
        os.sched_setaffinity(int(tid), {cpu})


def this_worker() -> dict | None:
    """This process's worker description (index, count, fds), or None."""
    text = os.environ.get(ENV)
    return json.loads(text) if text else None


# -- the control socket under --workers ------------------------------------------


def _control_factory(supervisor: "WorkersService") -> Any:
    from twisted_mailhub import control

    class WorkersControlFactory(control.ControlFactory):
        """
        C{DATA/control.sock} of a C{--workers} hub: the supervisor asks
        every worker (L{WorkersService.ask}) and answers for the hub.
        """

        def answer(self, command: str) -> Any:
            if command == "reload":
                return supervisor.ask("reload").addCallback(self._reloaded)
            if command == "status":
                return supervisor.ask("status").addCallback(self._status)
            if command.startswith("account "):  # (the workers' accounts, as reloaded)
                return supervisor.ask(command).addCallback(lambda answers: next(iter(answers.values()), None) or {"ok": False, "error": "no worker answered"})
            return dict(control.UNKNOWN)

        def _reloaded(self, answers: dict) -> dict:
            said = [f"worker {index}: {line}" for index, lines in answers.items() for line in (lines or [])]
            if len(answers) < supervisor.count:
                said.append(f"{supervisor.count - len(answers)} worker(s) did not answer")
            return {"ok": True, "said": said}

        def _status(self, answers: dict) -> dict:
            workers = []
            for index, answer in answers.items():
                if isinstance(answer, dict):
                    workers.append({"index": index, **{k: answer.get(k) for k in ("pid", "uptime", "connections_open", "queue", "accounts", "group_commit")}})
            from twisted_mailhub.hub import bound_at

            listeners = {}
            for name, port in sorted(supervisor.hub_service.bound.items()):
                try:
                    listeners[name] = bound_at(port.getHost())
                except Exception:
                    listeners[name] = 0
            return {
                "ok": True,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - supervisor.started_at, 3),
                "listeners": listeners,
                "connections_open": sum(w["connections_open"] or 0 for w in workers),
                "accounts": max((w["accounts"] or 0 for w in workers), default=0),
                "queue": sum(w["queue"] or 0 for w in workers),
                "group_commit": {key: sum((w["group_commit"] or {}).get(key, 0) for w in workers) for key in {k for w in workers for k in (w["group_commit"] or {})}},
                "workers": workers,
            }

    return WorkersControlFactory(supervisor.hub)


# -- stopping on a signal ------------------------------------------------------


class StopSignals:
    """
    SIGTERM and SIGINT stop this process once, whoever sends them and how
    often: C{timeout} and a shell's Ctrl-C signal the whole process group
    (the supervisor and every worker at once) and the supervisor passes
    SIGTERM on to each worker as well, so a process commonly gets two.

    What Twisted's own handler does wrong here, each seen as a failed
    stop of C{--workers 2} by a process-group SIGTERM: a second signal
    calls C{reactor.stop()} again (a C{ReactorNotRunning} traceback), and
    it logs inside the signal handler, which runs in the main thread
    between any two bytecodes: when that thread was holding the lock of
    a worker's log pipe (L{_BusOut}), the handler waited for it forever
    and the worker was killed after L{STOP_GRACE} seconds.

    The handler here only records the signal and hands everything else
    (the log line, C{reactor.stop()}) to the reactor with
    C{callFromThread} (a list append and a write to the waker's pipe).
    It is installed before the reactor runs (a signal that arrives while
    the process starts is not lost nor fatal: the reactor stops as soon
    as it runs) and given to Twisted as the reactor's C{sigTerm} and
    C{sigInt}, so that Twisted's installation at start keeps it.

    @ivar received: the first signal's number, or L{None}.
    @param on_first: called in the signal handler at the first signal
        (keep it to setting a flag).
    """

    def __init__(self, reactor: Any, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), on_first: Any = None):
        self.reactor = reactor
        self.signals = signals
        self.on_first = on_first
        self.received: int | None = None

    def install(self) -> None:
        """Install (again) as the handler of each signal; main thread only."""
        for signum in self.signals:
            signal.signal(signum, self.handle)
        if signal.SIGTERM in self.signals:
            self.reactor.sigTerm = self.handle
        if signal.SIGINT in self.signals:
            self.reactor.sigInt = self.handle

    def handle(self, signum: int, frame: Any = None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            self.reactor.callFromThread(log.info, "Received {name} again: already shutting down", name=name)
            return
        self.received = signum
        # As Twisted's handler: twistd then ends by this signal.
        self.reactor._exitSignal = signum
        if self.on_first is not None:
            self.on_first()
        self.reactor.callFromThread(log.info, "Received {name}, shutting down.", name=name)
        self.reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        if self.reactor.running and not getattr(self.reactor, "_stopped", False):
            self.reactor.stop()
        elif not self.reactor.running:
            # Still starting: stop as soon as it runs.
            self.reactor.callWhenRunning(self._stop)


# -- the supervisor ----------------------------------------------------------


class _WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's end of one worker process."""

    def __init__(self, supervisor: "WorkersService", index: int):
        self.supervisor = supervisor
        self.index = index
        self.buffers: dict[int, bytes] = {}
        self.ready = False
        # A SIGHUP that came while it was starting, passed on once ready.
        self.hup_pending = False
        self.started = time.monotonic()
        self.ended = defer.Deferred()
        self.pid: int | None = None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self.buffers.get(fd, b"") + data if fd in self.buffers else data
        *lines, rest = buffered.split(b"\n")
        if rest:
            self.buffers[fd] = rest
        else:
            self.buffers.pop(fd, None)
        if fd == 3:
            self._from_bus(lines)
            return
        for line in lines:
            if line.strip():
                # Anything a worker printed outside the log.
                log.info("worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace"), log_system=f"worker {self.index}")

    def _from_bus(self, lines: list[bytes]) -> None:
        """
        The worker's bus lines in order. Its log lines (C{T}, continued by
        lines starting with a tab: a traceback) are made in the worker as
        they are to be written; each run of them is written in one go,
        without looking into them: per message, this relay costs a few
        slices and a list append, not a log event formatted again.
        """
        supervisor = self.supervisor
        text: list[bytes] = []
        for line in lines:
            kind = line[:1]
            if kind == b"T":
                text.append(line[1:])
            elif kind == b"\t":  # (bus lines of every other kind start with a letter)
                text.append(line)
            else:
                if text:
                    supervisor.write_log_lines(text)
                    text = []
                supervisor.from_worker(self, line)
        if text:
            supervisor.write_log_lines(text)

    def send(self, line: bytes) -> None:
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.writeToChild(0, line + b"\n")
            except (OSError, KeyError):
                pass

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)
        self.supervisor.ended(self, reason.value)


class _Question:
    """One L{WorkersService.ask}: the answers so far and who is left."""

    def __init__(self, supervisor: "WorkersService", number: int, waiting: list[int]):
        self.supervisor = supervisor
        self.number = number
        self.waiting = set(waiting)
        self.answers: dict[int, Any] = {}
        self.d = defer.Deferred()
        self.timer: Any = None

    def answered(self, index: int, answer: Any, gone: bool = False) -> None:
        if index not in self.waiting:
            return
        self.waiting.discard(index)
        if not gone:
            self.answers[index] = answer
        if not self.waiting:
            self.finish()

    def finish(self) -> None:
        if self.d.called:
            return
        self.supervisor._asked.pop(self.number, None)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.d.callback(dict(sorted(self.answers.items())))


class WorkersService(OffersLogObserver, service.Service):
    """
    The supervisor of C{--workers N}: binds every listener, starts and
    watches N worker processes, and carries the bus between them.

    @param hub_service: the L{twisted_mailhub.hub.HubService} of a hub
        built from the same options; only its binding is used here.
    @param count: how many workers.
    @param argv: the hub's command-line options, for the workers.
    """

    def __init__(self, hub_service: Any, count: int, argv: list[str], cwd: str):
        self.hub_service = hub_service
        self.hub = hub_service.hub
        self.count = count
        self.argv = argv
        self.cwd = cwd
        self.workers: dict[int, _WorkerProcess] = {}
        self.generations: dict[int, int] = {}  # index -> how many times restarted
        self.fds: dict[str, list[int]] = {}  # listener -> its socket for each worker (or one for all)
        self.was_ready = False
        self.stopping = False
        self.failed = False
        self._previous_sighup: Any = None
        self.started_at = time.monotonic()
        self._questions = itertools.count(1)
        self._asked: dict[int, _Question] = {}
        # /metrics: each worker's last counters, and those of workers that
        # ended (so that a restart never makes a sum go back).
        self.metrics_last: dict[int, Any] = {}
        self.metrics_retired: Any = None
        self.control: Any = None
        self.table_fd: int | None = None  # every worker's open connections (twisted_mailhub.accepts)

    def privilegedStartService(self) -> None:
        hub_service = self.hub_service
        hub_service._bind()
        for name, port in hub_service.bound.items():
            port.stopReading()  # the workers accept; this process never does
            # One socket, every worker accepting on it: new connections go
            # to the worker with the fewest (twisted_mailhub.accepts).
            self.fds[name] = [port.fileno()]
        run_as = getattr(self.hub, "run_as", None)
        self.hub.tls  # the certificate is made once, here, before any worker
        if run_as is not None and os.geteuid() == 0:
            from twisted_mailhub.privileges import give_data_to

            give_data_to(self.hub.data_dir, *run_as)
            hub_service.before_the_switch(*run_as)
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        if not self.fds and not self.hub_service._bound:
            self.privilegedStartService()
        service.Service.startService(self)
        reactor = self.hub.reactor
        if self.log_observer is not None:
            # Every worker's lines pass here: one write per LOG_DELAY, not
            # one per turn in which a worker said something.
            self.log_observer.buffer.delay = LOG_DELAY
        self.stop_signals = StopSignals(reactor, on_first=self._signalled)
        try:
            self.stop_signals.install()
        except ValueError:  # not the main thread (a test's reactor)
            pass
        else:
            # Over the handlers Twisted and HubService install at start.
            reactor.callWhenRunning(self.stop_signals.install)
        from twisted_mailhub.control import ControlService

        self.control = ControlService(self.hub, _control_factory(self))
        self.control.startService()
        # (before the workers start: a SIGHUP in between would end this
        # process, SIGHUP's default)
        # (held since this process started: one noted meanwhile is passed
        # on to each worker once it is ready, twisted_mailhub.sighup)
        try:
            self._previous_sighup = sighup.release(self._on_sighup)
        except ValueError:
            self._previous_sighup = None
        from twisted_mailhub import accepts

        if self.table_fd is None:
            self.table_fd = accepts.make_table(self.count, self.hub.data_dir)
        log.info("mailhub: starting {count} worker processes", count=self.count)
        for index in range(self.count):
            self.spawn(index)

    def _signalled(self) -> None:
        # In the signal handler: the workers the same signal reached
        # directly may end before stopService runs; that is this stop,
        # not a failed start or a death to restart from.
        self.stopping = True

    def _on_sighup(self, signum, frame) -> None:
        self.hub.reactor.callFromThread(self.signal_all, signal.SIGHUP)

    def signal_all(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            if signum == signal.SIGHUP and not worker.ready:
                # A worker still starting has no SIGHUP handler yet: the
                # signal would end it (and a start in progress with it).
                # It gets the SIGHUP once it is ready (breaker).
                worker.hup_pending = True
                continue
            try:
                worker.transport.signalProcess(signum)
            except Exception:  # ended meanwhile
                pass
        if signum == signal.SIGHUP:
            log.info("SIGHUP passed on to {n} worker(s)", n=len(self.workers))

    def spawn(self, index: int) -> None:
        reactor = self.hub.reactor
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: "r"}
        inherited = {}
        for offset, (name, fds) in enumerate(sorted(self.fds.items())):
            if index and name in ONE_WORKER_LISTENERS:
                continue
            child_fds[FIRST_FD + offset] = fds[index % len(fds)]
            inherited[name] = FIRST_FD + offset
        env = dict(os.environ)
        generation = self.generations[index] = self.generations.get(index, -1) + 1
        web = any(name in ONE_WORKER_LISTENERS for name in self.fds)
        spec = {"index": index, "count": self.count, "fds": inherited, "generation": generation, "web": web}
        if self.log_observer is not None:
            # The worker makes its log lines as they are to be written
            # (T); with --logger or --syslog it sends log events (L).
            spec["lines"] = True
            if self.log_observer.fd is not None:
                # Standard output: it writes them there itself, whole
                # lines per write (logobserver.whole_lines_writer).
                log_fd = FIRST_FD + len(self.fds)
                child_fds[log_fd] = self.log_observer.fd
                spec["log_fd"] = log_fd
        if self.table_fd is not None:
            table_fd = max(child_fds) + 1
            child_fds[table_fd] = self.table_fd
            spec["table_fd"] = table_fd
        env[ENV] = json.dumps(spec)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        worker = _WorkerProcess(self, index)
        args = [sys.executable, "-m", "twisted_mailhub.workers", *self.argv]
        with sighup.blocked():  # a SIGHUP during its Python start waits for its hold() (fixweb)
            reactor.spawnProcess(worker, sys.executable, args, env=env, path=self.cwd, childFDs=child_fds)
        self.workers[index] = worker
        worker.pid = worker.transport.pid
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def write_log_lines(self, lines: list[bytes]) -> None:
        """Log lines a worker made (without their line feeds), written as they are."""
        observer = self.log_observer
        lines.append(b"")
        if observer is not None:
            observer.write_lines(b"\n".join(lines))
        else:  # (only if the observer went away after the worker started)
            for line in b"\n".join(lines).decode("utf-8", "replace").splitlines():
                log.info("{line}", line=line)

    def from_worker(self, worker: _WorkerProcess, line: bytes) -> None:
        kind, body = line[:1], line[1:]
        if kind == b"B":
            for other in list(self.workers.values()):
                if other is not worker:
                    other.send(line)
        elif kind == b"W":  # for the web face's worker only
            web = self.workers.get(0)
            if web is not None and web is not worker:
                web.send(b"B" + body)
        elif kind == b"L":
            try:
                when, level, namespace, text = body.decode("utf-8", "replace").split(" ", 3)
                when = float(when)
            except ValueError:
                return
            if "\\" in text:
                text = _LOG_ESCAPES.sub(lambda m: "\n" if m.group(0) == "\\n" else "\\", text)
            globalLogPublisher(
                {
                    "log_format": "{log_text}",
                    "log_text": text,
                    "log_level": LogLevel.levelWithName(level) if level in ("debug", "info", "warn", "error", "critical") else LogLevel.info,
                    "log_namespace": namespace,
                    "log_time": when,
                    "log_system": f"worker {worker.index}",
                }
            )
        elif kind == b"A":  # a worker's answer to ask()
            try:
                answer = json.loads(body)
                question = self._asked.get(int(answer["id"]))
            except (ValueError, KeyError, TypeError):
                return
            if question is not None:
                question.answered(worker.index, answer.get("a"))
        elif kind == b"Q":  # a worker asks about every worker (its /metrics)
            try:
                asked = json.loads(body)
            except ValueError:
                return
            self.answer_worker(worker, asked)
        elif kind == b"R":
            worker.ready = True
            worker.started = time.monotonic()
            if worker.hup_pending:
                worker.hup_pending = False
                try:
                    worker.transport.signalProcess(signal.SIGHUP)
                except Exception:  # ended meanwhile
                    pass
            if not self.was_ready and not self.stopping and all(w.ready for w in self.workers.values()) and len(self.workers) == self.count:
                self.was_ready = True
                self.hub_service._ready([True])

    # -- questions to every worker (control socket, /metrics) -------------

    def ask(self, question: str, timeout: float = ASK_TIMEOUT) -> defer.Deferred:
        """
        Ask every live worker C{question} (C{status}, C{reload},
        C{metrics}: L{WorkerLink.answers}); fires with {worker index:
        answer} once each has answered, ended, or C{timeout} seconds
        passed (a worker that did not answer is left out).
        """
        number = next(self._questions)
        asked = self._asked[number] = _Question(self, number, [w.index for w in self.workers.values() if w.ready])
        line = b"B" + json.dumps({"k": "ask", "id": number, "q": question}, separators=(",", ":")).encode("utf-8")
        for worker in list(self.workers.values()):
            if worker.ready:
                worker.send(line)
        asked.timer = self.hub.reactor.callLater(timeout, asked.finish)
        if not asked.waiting:
            asked.finish()
        return asked.d

    def answer_worker(self, worker: _WorkerProcess, asked: dict) -> None:
        """A worker's question about every worker: only C{metrics} (merged)."""

        def reply(answer: Any) -> None:
            worker.send(b"B" + json.dumps({"k": "answer", "id": asked.get("id"), "a": answer}, separators=(",", ":")).encode("utf-8"))

        if asked.get("q") != "metrics":
            reply(None)
            return
        self.merged_metrics().addCallback(reply)

    def merged_metrics(self) -> defer.Deferred:
        """Every worker's C{/metrics} as one exposition (text)."""
        from twisted_mailhub import metrics

        def merge(answers: dict) -> str:
            parsed = {}
            for index, text in answers.items():
                if isinstance(text, str):
                    parsed[index] = self.metrics_last[index] = metrics.parse_exposition(text)
            parts = list(parsed.values())
            if self.metrics_retired is not None:
                parts.append(self.metrics_retired)
            return metrics.format_exposition(metrics.merge_expositions(parts), workers=len(parsed)).decode("utf-8")

        return self.ask("metrics").addCallback(merge)

    def ended(self, worker: _WorkerProcess, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        for question in list(self._asked.values()):
            question.answered(worker.index, None, gone=True)
        last = self.metrics_last.pop(worker.index, None)
        if last is not None:
            from twisted_mailhub import metrics

            # Its counters stay in the sums (as of the last scrape).
            kept = [p for p in (self.metrics_retired, metrics.counters_only(last)) if p is not None]
            self.metrics_retired = metrics.merge_expositions(kept)
        status = getattr(reason, "exitCode", None)
        signum = getattr(reason, "signal", None)
        how = f"signal {signum}" if signum else f"status {status}"
        if self.stopping:
            log.info("worker {index} (pid {pid}) stopped ({how})", index=worker.index, pid=worker.pid, how=how)
            return
        if not self.was_ready:
            # The start failed (its reason is in the worker's log lines):
            # as one hub would, exit 1 with nothing left running.
            log.critical("mailhub: worker {index} exited with {how} before the hub was ready; stopping", index=worker.index, how=how)
            self.failed = self.stopping = True
            _exit_status_on_shutdown(1)
            reactor = self.hub.reactor
            if reactor.running and not getattr(reactor, "_stopped", False):
                reactor.stop()
            return
        quick = time.monotonic() - worker.started < QUICK_DEATH
        log.error(
            "worker {index} died ({how}); starting it again{later}",
            index=worker.index,
            how=how,
            later=f" in {RESTART_DELAY:g} s" if quick else "",
        )
        self.hub.reactor.callLater(RESTART_DELAY if quick else 0, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        if not self.stopping and self.running and index not in self.workers:
            self.spawn(index)

    def stopService(self):
        service.Service.stopService(self)
        self.stopping = True
        if self.control is not None:
            self.control.stopService()
            self.control = None
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        workers = list(self.workers.values())
        for worker in workers:
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                pass
        reactor = self.hub.reactor

        def kill_late():
            for worker in workers:
                if not worker.ended.called:
                    log.warn("worker {index} did not stop in {grace:g} s; killing it", index=worker.index, grace=STOP_GRACE)
                    try:
                        worker.transport.signalProcess("KILL")
                    except Exception:
                        pass

        late = reactor.callLater(STOP_GRACE, kill_late)
        d = defer.DeferredList([w.ended for w in workers])

        def done(_):
            if late.active():
                late.cancel()
            for port in self.hub_service.ports:
                port.stopListening()
            self.hub_service.ports = []
            if self.table_fd is not None:
                os.close(self.table_fd)
                self.table_fd = None

        return d.addBoth(done)


def _exit_status_on_shutdown(status: int) -> None:
    """
    End the process with C{status} once twistd has shut down (its pidfile
    removed): twistd itself always exits 0 after a reactor stop.
    """
    import atexit

    atexit.register(os._exit, status)


# -- a worker ----------------------------------------------------------------


class _BusOut:
    """
    A worker's lines to the supervisor (descriptor 3), from any thread:
    gathered and written once per reactor turn (a busy worker logs a line
    per delivery; one write for many keeps the supervisor's share small).
    Log lines alone wait up to L{LOG_DELAY} seconds for company; any other
    line takes them along at the end of its turn, in order.
    """

    def __init__(self, fd: int = 3):
        self.fd = fd
        # Reentrant: anything that logs from a signal handler runs in the
        # main thread, maybe while that thread is inside send() or flush().
        self.lock = threading.RLock()
        self.broken = False
        self.flushing = False
        self.waiting: list[bytes] = []
        self.soon = False  # a flush at the end of this turn is on its way
        self.later = False  # a flush in LOG_DELAY seconds is on its way
        self.reactor: Any = None  # set once the worker's reactor is made
        # The worker's own log lines when it writes them to the hub's
        # standard output itself (a LineBuffer): written before any bus
        # line, so that what it logged before a notice or its ready is
        # in the log before the supervisor acts on that.
        self.log_buffer: Any = None

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self._queue(kind + body + b"\n", urgent=True)

    def add(self, line: str) -> None:
        """A log line (ending in a line feed) as it is to be written (C{T})."""
        self._queue(b"T" + line.encode("utf-8", "backslashreplace"), urgent=False)

    def _queue(self, data: bytes, urgent: bool) -> None:
        if self.broken:
            return
        with self.lock:
            self.waiting.append(data)
            if urgent:
                scheduled, self.soon = self.soon, True
            else:
                scheduled, self.later = self.soon or self.later, True
        reactor = self.reactor
        if reactor is None or not reactor.running:
            self.flush()
        elif scheduled:
            return
        elif not isInIOThread():
            reactor.callFromThread(self._schedule, urgent)
        else:
            self._schedule(urgent)

    def _schedule(self, urgent: bool) -> None:
        reactor = self.reactor
        if reactor is None or not reactor.running:
            self.flush()
        else:
            reactor.callLater(0 if urgent else LOG_DELAY, self.flush)

    def flush(self) -> None:
        if self.log_buffer is not None:
            self.log_buffer.flush()
        with self.lock:
            if self.flushing:
                # Reentered (a signal handler while this thread writes):
                # never between the octets of a line; the next flush
                # takes what waits.
                return
            self.flushing = True
            self.soon = self.later = False
            data, self.waiting = b"".join(self.waiting), []
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                self.broken = True
            finally:
                self.flushing = False

    def log_observer(self, event: dict) -> None:
        """
        A log event for a supervisor that logs through C{--logger} or
        C{--syslog} (C{L}): it publishes it again as an event.
        """
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text = f"{text}\n{failure.getTraceback()}"
            except Exception:
                pass
        level = event.get("log_level", LogLevel.info)
        # L<time> <level> <namespace> <text, \\ and LF escaped>: cheaper
        # than JSON on both ends.
        self.send(
            b"L",
            f"{event.get('log_time') or time.time():.6f} {getattr(level, 'name', 'info')} {event.get('log_namespace', '-')} "
            f"{text.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}".encode("utf-8", "replace"),
        )


class _BusIn(LineOnlyReceiver):
    """A worker's end of the notices from the other workers (standard input)."""

    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, link: "WorkerLink"):
        self.link = link

    def lineReceived(self, line: bytes) -> None:
        if line[:1] != b"B":
            return
        try:
            notice = json.loads(line[1:])
        except ValueError:
            return
        try:
            self.link.received(notice)
        except Exception:
            log.failure("a notice from another worker failed")

    def connectionLost(self, reason=None) -> None:
        # The supervisor is gone: nothing would restart or stop us.
        from twisted.internet import reactor

        if reactor.running:
            log.warn("the supervisor is gone; this worker stops")
            reactor.stop()


class WorkerLink:
    """
    What ties one worker to the supervisor and the other workers: the
    notices it sends and what it does with theirs.
    """

    def __init__(self, hub: Any, index: int, count: int, out: _BusOut, generation: int = 0):
        self.hub = hub
        self.index = index
        self.count = count
        self.out = out
        self.generation = generation
        self._changed: set[str] = set()
        self._notice: Any = None  # the pending call of _send_folders
        self._noticed = float("-inf")  # when the last folder notice left
        self.started = time.monotonic()
        self._numbers = itertools.count(1)
        self._waiting: dict[int, defer.Deferred] = {}
        # The shared table (accepts.ConnectionTable), where each worker says
        # whether its sessions listen to folders; None: notices always go.
        self.table: Any = None

    def broadcast(self, notice: dict) -> None:
        self.out.send(b"B", json.dumps(notice, separators=(",", ":")).encode("utf-8"))

    # -- questions from the supervisor, and to it -----------------------------

    def answers(self, question: str) -> Any:
        """
        This worker's answer to the supervisor's C{question}: C{status}
        (L{twisted_mailhub.control.status}), C{reload} (what
        L{Hub.reload} said), C{metrics} (this worker's exposition).
        """
        from twisted_mailhub import control

        hub = self.hub
        if question == "status":
            return control.status(hub, self.started)
        if question == "reload":
            return hub.reload()
        if question == "metrics":
            return hub.metrics.exposition().decode("utf-8") if hub.metrics is not None else None
        if question.startswith("account "):
            return control.account(hub, question[len("account ") :])
        return None

    def on_ask(self, notice: dict) -> None:
        try:
            answer = self.answers(str(notice.get("q")))
        except Exception:
            log.failure("question {q} from the supervisor", q=notice.get("q"))
            answer = None
        self.out.send(b"A", json.dumps({"id": notice.get("id"), "a": answer}, separators=(",", ":")).encode("utf-8"))

    def ask_supervisor(self, question: str) -> defer.Deferred:
        """What the supervisor answers about every worker (C{metrics})."""
        number = next(self._numbers)
        d = self._waiting[number] = defer.Deferred()
        self.out.send(b"Q", json.dumps({"id": number, "q": question}, separators=(",", ":")).encode("utf-8"))
        return d

    def on_answer(self, notice: dict) -> None:
        d = self._waiting.pop(notice.get("id"), None)
        if d is not None:
            d.callback(notice.get("a"))

    def received(self, notice: dict) -> None:
        kind = notice.get("k")
        handler = getattr(self, "on_" + str(kind), None)
        if handler is not None:
            handler(notice)

    # -- folders ---------------------------------------------------------

    def folder_changed(self, directory: str) -> None:
        """
        This worker changed a folder: the others hear of it at the end of
        this reactor turn, once per folder however many changes it had,
        and at most once per L{NOTICE_GAP} seconds: under steady
        delivery a notice per group commit cost every process a wake-up
        and a relayed line, and an IDLE session on another worker hears
        of a Maildir's new files from inotify anyway (store/watch.py;
        the notice is what tells it where inotify is refused). None is
        sent while no other worker listens to any folder (L{watching}).
        """
        if self.table is not None and not self.table.others_listening():
            return
        self._changed.add(directory)
        if self._notice is None:
            reactor = self.hub.reactor
            self._notice = reactor.callLater(max(0.0, self._noticed + NOTICE_GAP - reactor.seconds()), self._send_folders)

    def _send_folders(self) -> None:
        self._notice = None
        self._noticed = self.hub.reactor.seconds()
        changed, self._changed = self._changed, set()
        if changed:
            self.broadcast({"k": "folders", "d": sorted(changed)})

    def watching(self, folders: int, directory: str | None) -> None:
        """
        This worker's sessions now listen to C{folders} folders (IDLE, a
        selected mailbox, NOTIFY): the others send folder notices only
        while some worker's do (the shared table). C{directory}: a folder
        that just got its first listener, looked at once more at the end
        of this turn: a change another worker made before it could see
        the listener was announced to no one.
        """
        if self.table is not None:
            self.table.listening(folders)
        if directory is not None:
            from twisted_mailhub.store import shared

            self.hub.reactor.callLater(0, shared.changed_elsewhere, directory)

    def on_folders(self, notice: dict) -> None:
        from twisted_mailhub.store import shared

        for directory in notice["d"]:
            shared.changed_elsewhere(str(directory))

    # -- the login throttle ---------------------------------------------------

    def share_throttle(self) -> None:
        """
        Every worker counts every worker's failed logins: a failure or a
        success here is told to the others, which count it too (the
        answer is held where the login was tried).
        """
        throttle = self.hub.throttle
        self._failed, self._succeeded = throttle.failed, throttle.succeeded

        def failed(address: str, username: str) -> float:
            self.broadcast({"k": "login", "ok": 0, "a": address, "u": username})
            return self._failed(address, username)

        def succeeded(address: str, username: str) -> None:
            self.broadcast({"k": "login", "ok": 1, "a": address, "u": username})
            return self._succeeded(address, username)

        throttle.failed, throttle.succeeded = failed, succeeded

    def on_login(self, notice: dict) -> None:
        (self._succeeded if notice.get("ok") else self._failed)(str(notice["a"]), str(notice["u"]))

    # -- the outbound queue ---------------------------------------------------

    def share_queue(self) -> None:
        """
        One worker runs the queue (the one holding its lock, as between
        two hubs); a message another worker queues is handed to it by its
        queue id once its files are durable.
        """
        relay = getattr(self.hub, "relay", None)
        if relay is None:
            return
        relay.worker_mode = True
        enqueue = relay.enqueue

        def handed_on(qid):
            if not relay.owns_queue:
                relay.entries.pop(qid, None)  # the runner has it now
                self.broadcast({"k": "queued", "id": qid})
            return qid

        relay.enqueue = lambda *a, **kw: enqueue(*a, **kw).addCallback(handed_on)
        # A worker that dies between its message's durable write and the
        # notice that hands it on (kill -9, the OOM killer) leaves it in
        # the folder unknown to the runner until the runner restarts: the
        # message, and a success DSN owed in its envelope, waited for
        # that. The runner looks for such files now and then.
        from twisted.internet import task

        self._adopting = False
        self._adopt_loop = task.LoopingCall(self.adopt_queued)
        self._adopt_loop.clock = self.hub.reactor
        self.hub.reactor.callWhenRunning(self._adopt_loop.start, ADOPT_EVERY, now=False)

    def adopt_queued(self) -> defer.Deferred | None:
        """
        (The worker running the queue) Take up messages in the queue's
        folder that no notice handed on: those queued more than
        L{ADOPT_AFTER} seconds ago (a write on its way is never taken
        twice) and not known yet. Their envelopes are read in a thread.
        Returns the Deferred of the look, or None when there is none.
        """
        relay = getattr(self.hub, "relay", None)
        if relay is None or not relay.owns_queue or not relay.running or self._adopting:
            return None
        directory = relay.storage.directory
        known = set(relay.entries)
        oldest = relay.now() - ADOPT_AFTER

        def look() -> list:
            from twisted_mailhub.queue.storage import QueuedMessage

            names = set(os.listdir(directory))
            found = []
            for name in names:
                if not name.endswith(".env") or name[:-4] in known or name[:-4] + ".msg" not in names:
                    continue
                try:
                    with open(os.path.join(directory, name), "rb") as f:
                        entry = QueuedMessage.from_json(f.read())
                except (OSError, ValueError, TypeError, KeyError):
                    continue  # (gone, or unreadable: the load says so at a restart)
                if entry.created <= oldest:
                    found.append(entry)
            return found

        def adopt(found: list) -> None:
            taken = 0
            for entry in sorted(found, key=lambda e: (e.created, e.id)):
                if entry.id in relay.entries or not os.path.exists(os.path.join(directory, entry.id + ".env")):
                    continue  # (handed on, or sent and removed, meanwhile)
                relay.entries[entry.id] = entry
                taken += 1
                log.info("queue: {qid} taken up from the queue's folder: the worker that queued it did not hand it on", qid=entry.id)
            if taken:
                relay._reschedule()

        def done(result: Any) -> Any:
            self._adopting = False
            return result

        self._adopting = True
        from twisted.internet import threads

        d = threads.deferToThread(look).addCallback(adopt)
        def failed(reason: Any) -> None:
            from twisted_mailhub.errorwords import error_words

            # (the C library's words and the path, never Python's "[Errno n] ...")
            log.warn("queue: the queue's folder not looked at ({error})", error=error_words(reason.value))

        d.addErrback(failed)
        return d.addBoth(done)

    def on_queued(self, notice: dict) -> None:
        from twisted_mailhub.queue.storage import QueuedMessage

        relay = getattr(self.hub, "relay", None)
        qid = str(notice["id"])
        if relay is None or not relay.owns_queue or not relay.running or qid in relay.entries:
            return
        if "/" in qid or qid.startswith("."):
            return
        try:
            with open(os.path.join(relay.storage.directory, qid + ".env"), "rb") as f:
                entry = QueuedMessage.from_json(f.read())
        except (OSError, ValueError, TypeError, KeyError) as e:
            from twisted_mailhub.errorwords import error_words

            log.error("queue: {qid} from another worker cannot be read: {error}", qid=qid, error=error_words(e))
            return
        relay.entries[qid] = entry
        relay._reschedule()

    # -- session events (the console, --transcript) ----------------------------

    def share_sessions(self) -> None:
        """
        While the hub records sessions for its web console, the session
        events of workers 1..N-1 are sent to worker 0 (which alone serves
        the web face), in one notice per reactor turn, and kept there as
        if they were its own: its console lists every worker's sessions.
        A session's C{C:}/C{S:} lines are sent only while someone has the
        console open (worker 0 says when: L{WATCH_CHECK}); the rest
        (start, login, TLS, data connections, end) always. The transcript
        log (--transcript) shows each session once: the worker that has it
        logs it.
        """
        from twisted_mailhub import transcript

        events = self.hub.events
        self.remote: set[str] = set()
        self._outgoing: list = []
        # Connection ids unique across workers (and a worker's restarts).
        first = 1 + self.index + self.count * 1_000_000 * int(self.generation)
        transcript._ids = itertools.count(first, self.count)
        self.watched = False
        if self.index == 0:
            if transcript.log_event in events.watchers:
                events.unsubscribe(transcript.log_event)
                remote = self.remote
                events.subscribe(lambda record, event: None if record.id in remote else transcript.log_event(record, event))
            if self.web:
                from twisted.internet import task

                self._said = 0.0
                self._watch = task.LoopingCall(self._check_watchers)
                self._watch.clock = self.hub.reactor
                self.hub.reactor.callWhenRunning(self._watch.start, WATCH_CHECK, now=True)
        elif self.web:
            # Sessions' starts, logins and ends only, while nobody watches:
            # a C:/S: line then costs this worker nothing (on_watch).
            events.subscribe(self._forward, lines=False)

    def _check_watchers(self) -> None:
        events = self.hub.events
        watched = bool(events.list_watchers or events.session_watchers)
        now = self.hub.reactor.seconds()
        # Said again now and then: a worker started since must hear it.
        if watched != self.watched or (watched and now - self._said > 2.0):
            self.watched = watched
            self._said = now
            self.broadcast({"k": "watch", "on": watched})

    def on_watch(self, notice: dict) -> None:
        watched = bool(notice.get("on"))
        if watched != self.watched and self.index and self.web:
            events = self.hub.events
            events.unsubscribe(self._forward)
            events.subscribe(self._forward, lines=watched)
        self.watched = watched

    def _forward(self, record: Any, event: tuple) -> None:
        _, when, kind, text = event
        if kind in _LINE_KINDS and not self.watched or record.id in self.remote or not self.hub.events.recording:
            return
        if not self._outgoing:
            self.hub.reactor.callLater(0, self._send_sessions)
        item = [record.id, kind, text, when]
        if kind == "start":
            item.append([record.protocol, list(record.client), list(record.server)])
        self._outgoing.append(item)

    def _send_sessions(self) -> None:
        items, self._outgoing = self._outgoing, []
        if items:
            self.out.send(b"W", json.dumps({"k": "sessions", "e": items}, separators=(",", ":")).encode("utf-8"))

    def on_sessions(self, notice: dict) -> None:
        events = self.hub.events
        for item in notice["e"]:
            id, kind, text = item[0], item[1], item[2]
            record = events.get(id)
            if record is None:
                protocol, client, server = item[4] if len(item) > 4 else (id.split("#", 1)[0], ["?", 0], ["?", 0])
                self.remote.add(id)
                record = events.start(protocol, tuple(client), tuple(server), id=id)
                if kind == "start":
                    continue
            if id not in self.remote:
                continue
            if kind == "login":
                record.account = text
                record.add("login", text)
            elif kind == "tls":
                record.encrypted(text)
            elif kind == "end":
                record.closed()
                if len(self.remote) > 2 * events.max_sessions:
                    self.remote = {i for i in self.remote if i in events.records}
            else:
                record.add(kind, text)


def _adopt(reactor: Any, fds: dict[str, int], table: Any = None):
    """
    C{hub.adopt(name, endpoint, factory)} for a worker: listen on the
    socket the supervisor bound for listener C{name}; one every worker
    serves accepts by the rules of C{table}
    (L{twisted_mailhub.accepts.ConnectionTable}), if given.
    """
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.protocols.tls import TLSMemoryBIOFactory

    def adopt(name: str, endpoint: Any, factory: Any) -> defer.Deferred:
        fd = fds.get(name)
        if fd is None:
            return endpoint.listen(factory)
        if isinstance(endpoint, SSL4ServerEndpoint):
            factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, factory)
        os.set_blocking(fd, False)  # (adoptStreamPort expects it)
        probe = socket.socket(fileno=os.dup(fd))
        address_family = probe.family
        probe.close()
        d = defer.execute(reactor.adoptStreamPort, fd, address_family, factory)
        if table is not None and name not in ONE_WORKER_LISTENERS:
            d.addCallback(lambda port: (table.gate(port), port)[1])
        return d

    return adopt


def maildrop_locker(store: Any):
    """
    POP3's one session per maildrop (RFC 1939 §8) across the workers: an
    exclusive C{flock} on the account's Maildir directory itself, held
    while the session lasts (the kernel lets it go if the worker dies).
    C{lock(address)} returns the function that releases it, or L{None}
    when another session holds it. (It was a file, C{mailhub-pop3.lock},
    which a full disk or a folder the hub may not write kept from being
    made: no login then, though the maildrop can be read. A directory is
    opened read-only and locked all the same.)
    """

    def lock(address: str):
        directory = store.account_path(address)
        if not os.path.isdir(directory):
            os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        released = []

        def unlock() -> None:
            if not released:
                released.append(True)
                os.close(fd)

        return unlock

    return lock


def run_worker(argv: list[str]) -> None:
    """
    One worker: the hub of C{argv} (the options of C{twistd mailhub}) on
    the sockets its supervisor passed, with its log going to the
    supervisor.
    """
    from twisted.logger import globalLogBeginner

    spec = this_worker()
    if spec is None:
        sys.stderr.write("twisted_mailhub.workers is started by twistd mailhub --workers N\n")
        raise SystemExit(2)
    # Ctrl-C reaches the whole process group: the supervisor stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from twisted.internet import reactor

    # SIGTERM stops this worker once, from the first moment (StopSignals).
    stop_signals = StopSignals(reactor, (signal.SIGTERM,))
    stop_signals.install()
    out = _BusOut(3)
    if spec.get("lines"):
        from twisted_mailhub.logobserver import ClassicLines, HubLogObserver, LineBuffer, whole_lines_writer

        # Each line made here, as the supervisor's log shows it; written
        # to the hub's standard output by this process when the
        # supervisor gave it that (log_fd), else sent to the supervisor.
        lines = ClassicLines(system=f"worker {spec['index']}")
        if spec.get("log_fd") is not None:
            out.log_buffer = LineBuffer(whole_lines_writer(int(spec["log_fd"])), delay=LOG_DELAY, where="the hub's standard output")
            observer: Any = HubLogObserver(out.log_buffer, lines)
        else:
            observer = HubLogObserver(out, lines)
    else:
        observer = out.log_observer
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)
    from twisted.application import app
    from twisted.internet import stdio

    out.reactor = reactor
    if out.log_buffer is not None:
        out.log_buffer.reactor = reactor
    reactor.addSystemEventTrigger("after", "shutdown", out.flush)

    from twisted_mailhub import tap
    from twisted_mailhub.store import durable, shared

    durable.GATHER_MAX = GATHER_MAX

    options = tap.Options()
    options.parseOptions(argv)
    if spec["index"]:
        from twisted_mailhub.hub import has_web_face

        # Worker 0's web face shows this worker too (/metrics adds up its
        # counters, the console its sessions): without a web listener of
        # its own, it counts and records when the hub has a web face at all.
        options["web-face-in-another-worker"] = has_web_face(options)
        for name in ONE_WORKER_LISTENERS:
            options[f"no-{name}"] = True
    if not options["no-pin-workers"]:
        cpu = worker_cpu(int(spec["index"]), int(spec["count"]))
        if cpu is not None:
            try:
                pin_to_cpu(cpu)
            except (OSError, AttributeError) as e:
                log.warn("not kept on core {cpu}: {error}", cpu=cpu, error=getattr(e, "strerror", None) or e)
    hub_service = tap.makeService(options)
    if stop_signals.received is not None:
        # Stopped while it started (the longest part is above), before it
        # served anything: nothing to shut down.
        out.flush()
        os._exit(0)
    hub = hub_service.hub
    link = WorkerLink(hub, spec["index"], spec["count"], out, spec.get("generation", 0))
    link.web = bool(spec.get("web"))
    hub.worker = link
    link.share_throttle()
    link.share_queue()
    link.share_sessions()
    store = hub.store
    if getattr(store, "lock_maildrop", None) is None and getattr(store, "account_path", None) is not None:
        store.lock_maildrop = maildrop_locker(store)
    table = None
    if spec.get("table_fd") is not None:
        from twisted_mailhub.accepts import ConnectionTable

        table = ConnectionTable(int(spec["table_fd"]), int(spec["index"]), int(spec["count"]), reactor)
    hub.adopt = _adopt(reactor, {name: int(fd) for name, fd in spec["fds"].items()}, table)
    link.table = table
    # The connection limits are divided between the workers (README).
    limits = hub.connection_limits
    count = max(1, int(spec["count"]))
    limits.total = -(-limits.total // count) if limits.total else 0
    limits.per_ip = -(-limits.per_ip // count) if limits.per_ip else 0
    shared.ENABLED = True
    shared.announce = link.folder_changed
    shared.watching = link.watching
    stdio.StandardIO(_BusIn(link), stdin=0, stdout=1)
    application = service.Application("mailhub-worker")
    hub_service.setServiceParent(application)
    service.IService(application).privilegedStartService()
    app.startApplication(application, False)
    # Over the handler HubService installs once the reactor runs.
    reactor.callWhenRunning(stop_signals.install)
    reactor.run()
    # Stopped: every shutdown trigger has run (deliveries flushed, files
    # closed, the last log lines written). Tearing the interpreter down
    # object by object took half a second of a loaded core per worker
    # for nothing; end here (atexit functions still run).
    import atexit

    out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


if __name__ == "__main__":
    run_worker(sys.argv[1:])
