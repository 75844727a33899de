"""
The hub's own log observer (twisted_mailhub.logobserver): the same lines
as Twisted's text observer, gathered per reactor turn; what twistd logs to
by default (-n standard output, --logfile, SIGUSR1 rotation), and what it
leaves to Twisted (--logger, --syslog).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time

import pytest
from twisted.internet import task
from twisted.logger import Logger, LogLevel, LogPublisher, textFileLogObserver
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from tests.hubprocess import ROOT, listener_names
from twisted_mailhub.logobserver import ClassicLines, HubLogObserver, LineBuffer, OffersLogObserver, for_twistd, whole_lines_writer


class FakeReactor(task.Clock):
    """A clock that says it runs, and runs callFromThread's calls when told."""

    running = True

    def __init__(self):
        task.Clock.__init__(self)
        self.from_threads = []
        self.triggers = []

    def callFromThread(self, f, *args):
        self.from_threads.append((f, args))

    def turn(self, seconds: float = 0) -> None:
        """What the reactor does next: the calls from threads, then the timed calls due."""
        calls, self.from_threads = self.from_threads, []
        for f, args in calls:
            f(*args)
        self.advance(seconds)

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f))


def _events() -> list[dict]:
    """Events of every shape the hub and Twisted log."""
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    now = 1764460000.25
    base = {"log_time": now, "log_namespace": "twisted_mailhub.smtp.delivery", "log_level": LogLevel.info}
    return [
        dict(base, log_format="{delivered}", delivered="delivered 1A2B from=<a@b> to=<c@localhost> size=10 stored=maildir:c@localhost/INBOX/x client=127.0.0.1"),
        dict(base, log_format="{n:>5} {word!r} {d[k]} {o.real}", n=3, word="w", d={"k": "v"}, o=2),
        dict(base, log_format="{f()} called", f=lambda: "a function"),
        dict(base, log_format="{missing} field"),
        dict(base, log_format="positional {0}"),
        dict(base, log_format=b"bytes {x}", x=1),
        dict(base, log_format="two\nlines\nhere"),
        dict(base, log_format="with system", log_system="worker 1"),
        dict(base, log_format="system not text", log_system=7),
        dict(base, log_format="no time", log_time=None),
        {"log_format": "nothing but a format"},
        dict(base, log_format=None),
        dict(base, log_format=""),
        dict(base, log_format="it failed: {why}", why="zero", log_failure=failure),
        dict(base, log_format=None, log_failure=failure),
        dict(base, log_format="ünïcödé {x}", x="ß", log_time=now + 1.5),
        dict(base, log_format="stamp again", log_time=now + 0.7),
    ]


def _twisted_text(events: list[dict]) -> bytes:
    out = io.BytesIO()
    observer = textFileLogObserver(out)
    for event in events:
        observer(dict(event))
    return out.getvalue()


def _hub_text(events: list[dict], system: str | None = None) -> bytes:
    out = io.BytesIO()
    observer = HubLogObserver(LineBuffer(out.write), ClassicLines(system=system))
    for event in events:
        observer(dict(event))
    return out.getvalue()


def test_lines_are_exactly_twisteds_text_observer_lines():
    expected = _twisted_text(_events())
    assert b"Traceback" in expected and b"Unable to format event" in expected  # the test covers them
    assert _hub_text(_events()) == expected


def test_a_quick_loggers_info_event_is_twisteds_loggers_and_reads_as_its_line():
    from twisted_mailhub.logobserver import QuickLogger

    seen = []
    events = []
    for kind in (Logger, QuickLogger):
        logger = kind(namespace="twisted_mailhub.smtp.delivery", source="a source", observer=events.append)
        logger.info("{delivered}", delivered="delivered 1A2B from=<a@b> to=<c@localhost> size=10")
        event = events.pop()
        assert event["log_logger"] is logger
        seen.append({key: value for key, value in event.items() if key not in ("log_logger", "log_time")})
    assert seen[0] == seen[1]
    assert seen[1]["log_level"] is LogLevel.info and seen[1]["log_source"] == "a source"


def test_legacy_log_msg_and_err_lines_are_twisteds():
    published: list[dict] = []
    publisher = LogPublisher(published.append)
    legacy = legacy_log.LogPublisher(publisher, publisher)
    legacy.msg("legacy", "message", system="proto,1,127.0.0.1")
    try:
        raise ValueError("legacy failure")
    except ValueError:
        legacy.msg(failure=Failure(), isError=1, why="while testing")
    assert _hub_text(published) == _twisted_text(published)


def test_a_workers_lines_show_its_system():
    events = _events()
    renamed = [dict(e, log_system="worker 3") for e in events]
    assert _hub_text(events, system="worker 3") == _twisted_text(renamed)


def test_time_stamp_is_made_once_per_second():
    lines = ClassicLines()
    first = lines.stamp(1764460000.1)
    assert lines.stamp(1764460000.9) is first
    assert lines.stamp(1764460001.0) != first


def test_lines_of_one_reactor_turn_are_written_at_once():
    writes: list[bytes] = []
    reactor = FakeReactor()
    observer = HubLogObserver(LineBuffer(writes.append, reactor=reactor))
    log = Logger(namespace="test", observer=observer)
    for n in range(5):
        log.info("line {n}", n=n)
    assert writes == []
    reactor.advance(0)
    assert len(writes) == 1
    assert [re.sub(r"^\S+ ", "", line) for line in writes[0].decode().splitlines()] == [f"[test#info] line {n}" for n in range(5)]
    log.info("next turn")
    reactor.advance(0)
    assert len(writes) == 2 and writes[1].endswith(b"[test#info] next turn\n")


def test_lines_are_written_at_once_while_the_reactor_does_not_run():
    writes: list[bytes] = []
    reactor = FakeReactor()
    reactor.running = False
    observer = HubLogObserver(LineBuffer(writes.append, reactor=reactor))
    observer({"log_format": "before the start", "log_time": None})
    observer({"log_format": "and another", "log_time": None})
    assert len(writes) == 2


def test_lines_waiting_when_the_reactor_stops_are_written():
    writes: list[bytes] = []
    reactor = FakeReactor()
    observer = HubLogObserver(LineBuffer(writes.append))
    observer.start(reactor)
    observer({"log_format": "during shutdown", "log_time": None})
    assert writes == []
    [(phase, event, flush)] = reactor.triggers
    assert (phase, event) == ("after", "shutdown")
    flush()
    assert writes == [b"- [-#-] during shutdown\n"]
    reactor.running = False
    observer({"log_format": "Server Shut Down.", "log_time": None})
    assert writes[-1] == b"- [-#-] Server Shut Down.\n"


def test_a_line_from_another_thread_is_written_by_the_reactor():
    writes: list[bytes] = []
    reactor = FakeReactor()
    observer = HubLogObserver(LineBuffer(writes.append, reactor=reactor))
    thread = threading.Thread(target=observer, args=({"log_format": "from a thread", "log_time": None},))
    thread.start()
    thread.join()
    assert writes == [] and len(reactor.from_threads) == 1
    f, args = reactor.from_threads[0]
    f(*args)  # the reactor runs it, then the turn ends
    reactor.advance(0)
    assert writes == [b"- [-#-] from a thread\n"]


def test_a_failing_destination_does_not_stop_the_hub():
    def broken(data):
        raise OSError(28, "No space left on device")

    observer = HubLogObserver(LineBuffer(broken))
    observer({"log_format": "one", "log_time": None})
    observer({"log_format": "two", "log_time": None})
    assert observer.buffer.broken is not None


class _TwistdOptions(dict):
    """twistd's ServerOptions as the plugin's options see it (their parent)."""


class _PluginOptions(dict):
    def __init__(self, **twistd):
        dict.__init__(self)
        self.parent = _TwistdOptions({"logger": None, "syslog": 0, "nodaemon": 0, "logfile": None, "prefix": "twisted"}, **twistd)


def test_twistd_gets_the_hub_observer_on_standard_output_with_n(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    observer = for_twistd(_PluginOptions(nodaemon=1), FakeReactor())
    assert observer is not None and observer.logfile is None
    observer.buffer.reactor.running = False
    observer({"log_format": "to stdout", "log_time": None})
    assert out.getvalue() == "- [-#-] to stdout\n"


def test_twistd_gets_the_hub_observer_on_its_logfile(tmp_path):
    path = tmp_path / "hub.log"
    observer = for_twistd(_PluginOptions(logfile=str(path)), FakeReactor())
    assert observer is not None and observer.logfile.path == str(path)
    observer.buffer.reactor.running = False
    observer({"log_format": "to the file", "log_time": None})
    assert path.read_text() == "- [-#-] to the file\n"


@pytest.mark.parametrize("twistd_options", [{"logger": "some.module.observer"}, {"syslog": 1}, {"logfile": "-"}])
def test_twistd_keeps_its_own_observer_for_logger_syslog_and_a_daemon_on_stdout(twistd_options):
    assert for_twistd(_PluginOptions(**twistd_options), FakeReactor()) is None


def test_without_twistd_there_is_no_observer():
    assert for_twistd({"data": "x"}) is None


def test_the_application_is_given_the_observer_as_its_component():
    from twisted.application import service
    from twisted.logger import ILogObserver

    class Top(OffersLogObserver, service.Service):
        pass

    top = Top()
    top.log_observer = HubLogObserver(LineBuffer(io.BytesIO().write))
    application = service.Application("mailhub")
    top.setServiceParent(application)
    assert application.getComponent(ILogObserver) is top.log_observer
    assert top.parent is service.IServiceCollection(application)


# -- the real twistd ----------------------------------------------------------


def _start_twistd(tmp_path, *twistd_args: str, hub_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, dict]:
    args = list(hub_args)
    for name in listener_names():
        args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", *twistd_args,
        "mailhub", "--data", str(tmp_path / "d"), "--user", "alice:secret", *args,
    ]
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    return process, {}


def _wait_for(path, pattern: str, timeout: float = 30.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pattern!r} not in {path}:\n{text[-3000:]}")
        time.sleep(0.02)


def test_logfile_gets_every_line_and_sigusr1_rotates_it(tmp_path):
    path = tmp_path / "hub.log"
    process, _ = _start_twistd(tmp_path, f"--logfile={path}")
    try:
        ports = json.loads(_wait_for(path, r"mailhub ready (\{.*\})").group(1))
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("judy@example.org", ["alice@localhost"], b"Subject: one\r\n\r\nbefore rotation\r\n")
        _wait_for(path, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[twisted_mailhub\.smtp\.delivery#info\] delivered \w+ from=<judy@example.org> to=<alice@localhost>")
        process.send_signal(signal.SIGUSR1)
        rotated = tmp_path / "hub.log.1"
        deadline = time.monotonic() + 10
        while not rotated.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "delivered" in rotated.read_text()
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("kim@example.org", ["alice@localhost"], b"Subject: two\r\n\r\nafter rotation\r\n")
        _wait_for(path, r"delivered \w+ from=<kim@example.org>")
        assert "kim@example.org" not in rotated.read_text()
        assert "judy@example.org" not in path.read_text()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM  # twistd ends by the signal it got
    assert path.read_text().rstrip("\n").endswith("Server Shut Down.")
    # with --logfile nothing goes to standard output
    assert output == b""


# -- --workers: the log relay ---------------------------------------------------


def test_a_workers_log_lines_wait_for_company_but_go_before_its_next_notice():
    from twisted_mailhub.workers import LOG_DELAY, _BusOut

    read, write = os.pipe()
    os.set_blocking(read, False)
    reactor = FakeReactor()
    out = _BusOut(write)
    out.reactor = reactor
    observer = HubLogObserver(out, ClassicLines(system="worker 1"))
    observer({"log_format": "delivered {n}", "n": 1, "log_time": None})
    reactor.turn()
    with pytest.raises(BlockingIOError):
        os.read(read, 4096)  # alone, it waits
    reactor.turn(LOG_DELAY)
    assert os.read(read, 4096) == b"T- [worker 1] delivered 1\n"
    observer({"log_format": "delivered {n}", "n": 2, "log_time": None})
    out.send(b"R")  # a notice takes the line along, in order
    reactor.turn()
    assert os.read(read, 4096) == b"T- [worker 1] delivered 2\nR\n"
    os.close(read)
    os.close(write)


def test_the_supervisor_writes_a_workers_lines_as_they_are_in_order_with_its_notices():
    from twisted_mailhub.workers import _WorkerProcess

    class Supervisor:
        def __init__(self):
            self.done = []
            out = io.BytesIO()
            self.out = out
            self.log_observer = HubLogObserver(LineBuffer(out.write))

        def write_log_lines(self, lines):
            from twisted_mailhub.workers import WorkersService

            WorkersService.write_log_lines(self, lines)
            self.done.append(("log", self.out.getvalue()))

        def from_worker(self, worker, line):
            self.done.append(("notice", line))

    supervisor = Supervisor()
    worker = _WorkerProcess(supervisor, 1)
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    lines = ClassicLines(system="worker 1")
    first = lines({"log_format": "it failed", "log_failure": failure, "log_time": None})
    second = lines({"log_format": "delivered 2", "log_time": None})
    stream = b"T" + first.encode() + b"B{}\nT" + second.encode() + b"R\n"
    # as the pipe gives it: in pieces cut anywhere
    for at in range(0, len(stream), 7):
        worker.childDataReceived(3, stream[at : at + 7])
    kinds = [kind for n, (kind, _) in enumerate(supervisor.done) if n == 0 or supervisor.done[n - 1][0] != kind]
    assert kinds == ["log", "notice", "log", "notice"]
    assert [line for kind, line in supervisor.done if kind == "notice"] == [b"B{}", b"R"]
    # each notice comes after the lines logged before it
    assert supervisor.done[[kind for kind, _ in supervisor.done].index("notice") - 1][1] == first.encode()
    expected = _twisted_text(
        [{"log_format": "it failed", "log_failure": failure, "log_time": None, "log_system": "worker 1"}, {"log_format": "delivered 2", "log_time": None, "log_system": "worker 1"}]
    )
    assert supervisor.out.getvalue() == expected
    assert b"ZeroDivisionError" in expected and b"\n\t" in expected


def test_a_batch_for_a_shared_output_goes_in_writes_of_whole_lines_within_pipe_buf(monkeypatch):
    import select

    written = []
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(bytes(data)) or len(data))
    lines = [b"%04d %s\n" % (n, b"x" * (n % 300)) for n in range(200)]
    long_line = b"L" * (select.PIPE_BUF + 10) + b"\n"
    write = whole_lines_writer(7)
    write(b"".join(lines[:100]) + long_line + b"".join(lines[100:]))
    assert b"".join(written) == b"".join(lines[:100]) + long_line + b"".join(lines[100:])
    assert all(chunk.endswith(b"\n") for chunk in written)
    # each within PIPE_BUF, but a single longer line alone in its write
    assert [chunk for chunk in written if len(chunk) > select.PIPE_BUF] == [long_line]
    assert len(written) < 20  # (not a write per line)


def test_processes_sharing_a_pipe_through_whole_lines_writers_never_cut_each_others_lines():
    # Two writers (the workers of --workers) and a slow reader: the pipe
    # fills, and a batch bigger than PIPE_BUF written in one write(2)
    # would be interleaved with the other's.
    read, write_end = os.pipe()
    batches = {name: [b"".join(b"%s %03d %04d %s\n" % (name, b, n, b"y" * 90) for n in range(60)) for b in range(40)] for name in (b"A", b"B")}
    got = []

    def reader():
        with os.fdopen(read, "rb", buffering=0) as f:
            while chunk := f.read(512):
                got.append(chunk)

    def writer(name):
        write = whole_lines_writer(write_end)
        for batch in batches[name]:
            write(batch)

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(name,)) for name in batches]
    for t in writers:
        t.start()
    for t in writers:
        t.join(30)
    os.close(write_end)
    r.join(30)
    lines = b"".join(got).split(b"\n")[:-1]
    sent = [line for name in batches for batch in batches[name] for line in batch.split(b"\n")[:-1]]
    assert sorted(lines) == sorted(sent)  # every line whole, none lost
    for name in batches:  # and each writer's in its order
        assert [line for line in lines if line.startswith(name)] == [line for batch in batches[name] for line in batch.split(b"\n")[:-1]]


def test_workers_logging_to_a_logfile_send_their_lines_to_the_supervisor_which_alone_writes_it(tmp_path):
    # A rotated --logfile is written by the supervisor alone (a worker
    # writing it directly would go on writing the old file after a
    # rotation): the workers' lines reach it over the bus.
    path = tmp_path / "hub.log"
    process, _ = _start_twistd(tmp_path, f"--logfile={path}", hub_args=("--workers", "2"))
    try:
        ports = json.loads(_wait_for(path, r"mailhub ready (\{.*\})").group(1))
        for n in range(4):
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
                client.sendmail("judy@example.org", ["alice@localhost"], f"Subject: {n}\r\n\r\nto the file\r\n".encode())
        _wait_for(path, r"(?s)(\[worker \d\] delivered \S+ from=<judy@example.org>.*){4}")
        process.send_signal(signal.SIGUSR1)
        rotated = tmp_path / "hub.log.1"
        deadline = time.monotonic() + 10
        while not rotated.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("kim@example.org", ["alice@localhost"], b"Subject: after\r\n\r\nrotation\r\n")
        _wait_for(path, r"\[worker \d\] delivered \S+ from=<kim@example.org>")
        assert "kim@example.org" not in rotated.read_text()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert output == b""  # nothing on standard output


def test_batched_lines_still_rotate_the_logfile_by_size(tmp_path):
    from twisted.python.logfile import LogFile

    logfile = LogFile.fromFullPath(str(tmp_path / "hub.log"), rotateLength=200)
    reactor = FakeReactor()
    observer = HubLogObserver(LineBuffer(logfile.write, logfile.flush, reactor), logfile=logfile)
    for turn in range(3):
        for n in range(4):
            observer({"log_format": "turn {turn} line {n} " + "x" * 40, "turn": turn, "n": n, "log_time": None})
        reactor.advance(0)
    # a turn's lines stay together, in one file; the next turn's go to a new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.log", "hub.log.1", "hub.log.2"]
    assert [line.split()[3] for line in (tmp_path / "hub.log.2").read_text().splitlines()] == ["0"] * 4
    assert [line.split()[3] for line in (tmp_path / "hub.log").read_text().splitlines()] == ["2"] * 4


def _file_observer(path):
    observer = for_twistd(_PluginOptions(logfile=str(path)), FakeReactor())
    observer.buffer.reactor.running = False  # each line written at once
    return observer


def test_sigusr1_after_logrotate_moved_the_file_away_logs_at_its_name_again(tmp_path):
    # logrotate's default: rename hub.log to hub.log.1, then postrotate
    # sends SIGUSR1. Twisted's rotate found no file to rename and the log
    # went on into the moved file (which logrotate then compresses).
    path = tmp_path / "hub.log"
    observer = _file_observer(path)
    observer({"log_format": "before", "log_time": None})
    os.rename(path, tmp_path / "hub.log.1")
    observer.rotate()
    observer({"log_format": "after", "log_time": None})
    assert path.read_text() == "- [-#-] after\n"
    assert (tmp_path / "hub.log.1").read_text() == "- [-#-] before\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.log", "hub.log.1"]


def test_sigusr1_after_logrotate_created_a_new_file_writes_into_that_file(tmp_path):
    # logrotate's "create": hub.log renamed, a new empty hub.log made (its
    # own mode), then SIGUSR1: the new file is kept, not renamed to .1.
    path = tmp_path / "hub.log"
    observer = _file_observer(path)
    observer({"log_format": "before", "log_time": None})
    os.rename(path, tmp_path / "hub.log-20261130")
    path.write_text("")
    os.chmod(path, 0o640)
    observer.rotate()
    observer({"log_format": "after", "log_time": None})
    assert path.read_text() == "- [-#-] after\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub.log", "hub.log-20261130"]


def test_a_log_file_removed_by_hand_is_made_again_at_the_next_rotation(tmp_path):
    path = tmp_path / "hub.log"
    observer = _file_observer(path)
    observer({"log_format": "before", "log_time": None})
    os.remove(path)
    observer.rotate()
    observer({"log_format": "after", "log_time": None})
    assert path.read_text() == "- [-#-] after\n"


def test_a_log_file_moved_away_is_left_once_it_reaches_the_rotation_size(tmp_path):
    from twisted_mailhub.logobserver import FollowedLogFile

    path = tmp_path / "hub.log"
    logfile = FollowedLogFile.fromFullPath(str(path), rotateLength=100)
    observer = HubLogObserver(LineBuffer(logfile.write, logfile.flush), logfile=logfile)
    observer({"log_format": "x" * 60, "log_time": None})
    os.rename(path, tmp_path / "moved.log")
    for n in range(3):
        observer({"log_format": f"line {n} " + "y" * 40, "log_time": None})
    # past 100 octets the size rotation finds the file gone and starts hub.log anew
    assert "line 2" in path.read_text()
    assert "line 2" not in (tmp_path / "moved.log").read_text()


def test_logrotate_style_rename_and_sigusr1_keep_the_running_hub_logging_at_its_name(tmp_path):
    path = tmp_path / "hub.log"
    process, _ = _start_twistd(tmp_path, f"--logfile={path}")
    try:
        ports = json.loads(_wait_for(path, r"mailhub ready (\{.*\})").group(1))
        moved = tmp_path / "hub.log.1"
        os.rename(path, moved)  # what logrotate does, then its postrotate:
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("kim@example.org", ["alice@localhost"], b"Subject: after\r\n\r\nlogrotate\r\n")
        _wait_for(path, r"delivered \w+ from=<kim@example.org>")
        assert "kim@example.org" not in moved.read_text()
        assert not (tmp_path / "hub.log.2").exists()
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_a_daemon_logs_to_twistd_log_through_its_start_and_stop(tmp_path):
    pidfile = tmp_path / "hub.pid"
    args = []
    for name in listener_names():
        args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", f"--pidfile={pidfile}",
        "mailhub", "--data", str(tmp_path / "d"), "--user", "alice:secret", *args,
    ]
    started = subprocess.run(command, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, cwd=tmp_path, timeout=60)
    assert started.returncode == 0, started.stdout + started.stderr
    path = tmp_path / "twistd.log"  # twistd's default, in the directory it started in
    try:
        ports = json.loads(_wait_for(path, r"mailhub ready (\{.*\})").group(1))
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("judy@example.org", ["alice@localhost"], b"Subject: daemon\r\n\r\nhello\r\n")
        _wait_for(path, r"\[twisted_mailhub\.smtp\.delivery#info\] delivered \w+ from=<judy@example.org>")
    finally:
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
    _wait_for(path, r"Server Shut Down\.\n$")
    assert "Traceback" not in path.read_text()


def test_an_os_error_in_a_log_line_is_words_never_errno_or_an_exception_repr():
    base = {"log_time": 1764460000.25, "log_namespace": "twisted_mailhub.store.maildir", "log_level": LogLevel.warn}
    full = OSError(28, "No space left on device", "/var/mail/bob/tmp/1")
    events = [
        dict(base, log_format="message for {who} not stored ({error})", who="bob", error=full),
        dict(base, log_format="IMAP folder operation failed: {error!r}", error=OSError(5, "Input/output error")),
        dict(base, log_format="not made durable ({error})", error="[Errno 5] Input/output error"),  # (a getErrorMessage())
    ]
    lines = _hub_text(events).decode().splitlines()
    assert lines[0].endswith("message for bob not stored (the disk is full (/var/mail/bob/tmp/1))"), lines
    assert lines[1].endswith("IMAP folder operation failed: Input/output error"), lines
    assert lines[2].endswith("not made durable (Input/output error)"), lines
    for line in lines:
        assert "Errno" not in line and "OSError" not in line


def test_twisteds_connection_error_texts_in_a_log_line_are_a_plain_sentence():
    # "lost the LISTEN connection to the mail database: Connection to the
    # other side was lost in a non-clean fashion: Connection lost." (a hub
    # on PostgreSQL at its stop); whoever logs it, the line says it plainly.
    from twisted.internet import main

    base = {"log_time": 1764460000.25, "log_namespace": "twisted_mailhub.store.postgresql", "log_level": LogLevel.warn}
    events = [
        dict(base, log_format="lost the LISTEN connection: {reason}", reason=main.CONNECTION_LOST),
        dict(base, log_format="queue: leases not renewed ({why})", why=Failure(main.CONNECTION_LOST).getErrorMessage()),
        dict(base, log_format="peer: {why}", why=str(main.CONNECTION_DONE)),
        dict(base, log_format="data connection: {reason}", reason=Failure(main.CONNECTION_LOST)),
    ]
    lines = _hub_text(events).decode().splitlines()
    assert lines[0].endswith("lost the LISTEN connection: the connection was lost"), lines
    assert lines[1].endswith("queue: leases not renewed (the connection was lost)"), lines
    assert lines[2].endswith("peer: the connection was closed"), lines
    assert lines[3].endswith("data connection: the connection was lost"), lines  # (not "[Failure instance: Traceback ...")
    for line in lines:
        assert "non-clean" not in line and "cleanly" not in line and "Failure" not in line


def test_twisteds_connect_error_texts_in_a_log_line_are_a_plain_sentence():
    # "cannot connect to 127.0.0.1:23999: Connection was refused by other
    # side: 111: Connection refused." (the relay, smarthost down): a
    # ConnectError's str() is its class's docstring, the errno and the OS's
    # words; every kind of it, as an exception or as text, is said plainly.
    import errno

    from twisted.internet import error

    refused = error.getConnectError((errno.ECONNREFUSED, "Connection refused"))
    timed_out = error.getConnectError((errno.ETIMEDOUT, "Connection timed out"))
    other = error.getConnectError((errno.EHOSTUNREACH, "No route to host"))
    base = {"log_time": 1764460000.25, "log_namespace": "twisted_mailhub.queue.relay", "log_level": LogLevel.warn}
    events = [
        dict(base, log_format="relay to {hop}: cannot connect: {why}", hop="127.0.0.1:23999", why=refused),
        dict(base, log_format="relay: {why}", why=Failure(refused).getErrorMessage()),
        dict(base, log_format="relay: {why}", why=timed_out),
        dict(base, log_format="relay: {why}", why=str(timed_out)),
        dict(base, log_format="relay: {why}", why=error.TimeoutError()),
        dict(base, log_format="relay: {why}", why=str(error.TimeoutError())),
        dict(base, log_format="relay: {why}", why=other),
        dict(base, log_format="relay: {why} (then)", why=str(other)),
        dict(base, log_format="relay: {why}", why=error.NoRouteError()),
        dict(base, log_format="relay: {why}", why=error.DNSLookupError("mx.b.test")),
        dict(base, log_format="relay: {why} (then)", why=str(error.DNSLookupError("mx.b.test"))),
    ]
    lines = [line.split("] ", 1)[1] for line in _hub_text(events).decode().splitlines()]
    assert lines == [
        "relay to 127.0.0.1:23999: cannot connect: the connection was refused",
        "relay: the connection was refused",
        "relay: the connection timed out",
        "relay: the connection timed out",
        "relay: no connection within the time allowed",
        "relay: no connection within the time allowed",
        "relay: No route to host",
        "relay: No route to host (then)",
        "relay: No route to host.",  # (NoRouteError's text is the OS's sentence: kept)
        "relay: the host name was not found (mx.b.test)",
        "relay: the host name was not found (mx.b.test) (then)",
    ], lines


def test_a_log_file_that_cannot_be_opened_again_after_logrotate_goes_on_in_the_moved_file(tmp_path):
    # A hub run as another user (--uid, systemd's User=) cannot create its
    # log file in /var/log again after logrotate moved it (a directory in
    # its place stands for that here: root may create files anywhere).
    # Before: the file was closed, its reopening failed, and no line was
    # ever written again (standard error got "log not written:
    # 'FollowedLogFile' object has no attribute '_file'").
    path = tmp_path / "hub.log"
    process, _ = _start_twistd(tmp_path, f"--logfile={path}")
    try:
        ports = json.loads(_wait_for(path, r"mailhub ready (\{.*\})").group(1))
        moved = tmp_path / "hub.log.1"
        os.rename(path, moved)
        path.mkdir()
        process.send_signal(signal.SIGUSR1)
        _wait_for(moved, r"the log file .*hub\.log could not be opened again after it was moved away \(Is a directory\): the log goes on in the file it was moved to")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("kim@example.org", ["alice@localhost"], b"Subject: after\r\n\r\nlogrotate\r\n")
        _wait_for(moved, r"delivered \w+ from=<kim@example.org>")
        # once the name can be opened, the next SIGUSR1 logs there again
        path.rmdir()
        process.send_signal(signal.SIGUSR1)
        _wait_for(path, r"")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("lee@example.org", ["alice@localhost"], b"Subject: later\r\n\r\nback\r\n")
        _wait_for(path, r"delivered \w+ from=<lee@example.org>")
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert b"log not written" not in out and b"attribute" not in out, out
    assert "Traceback" not in moved.read_text() + path.read_text()


def test_the_line_said_when_the_log_cannot_be_written_is_plain_words_with_the_path():
    def full(data):
        raise OSError(28, "No space left on device")

    buffer = LineBuffer(full, where="/var/log/mailhub.log")
    assert buffer.failure_line(OSError(28, "No space left on device")) == (
        "mailhub: the log cannot be written to /var/log/mailhub.log: the disk is full; log lines are lost until it can be\n"
    )
    assert buffer.failure_line(OSError(5, os.strerror(5))) == (
        "mailhub: the log cannot be written to /var/log/mailhub.log: Input/output error; log lines are lost until it can be\n"
    )


def test_a_hub_logging_to_a_full_disk_says_so_once_in_plain_words_and_goes_on(tmp_path):
    # /dev/full stands for a full disk: every write gets ENOSPC. Before,
    # standard error got Python's text: "log not written: [Errno 28] No
    # space left on device".
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = []
    for name in listener_names():
        args += [f"--{name}", f"tcp:{port}:interface=127.0.0.1" if name == "smtp" else "tcp:0:interface=127.0.0.1"]
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "--logfile=/dev/full",
        "mailhub", "--data", str(tmp_path / "d"), "--user", "alice:secret", *args,
    ]
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                    assert client.sendmail("kim@example.org", ["alice@localhost"], b"Subject: full\r\n\r\nlog\r\n") == {}
                break
            except OSError:
                assert time.monotonic() < deadline, "the hub did not start"
                time.sleep(0.1)
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    text = out.decode("utf-8", "replace")
    assert text.count("mailhub: the log cannot be written to /dev/full: the disk is full; log lines are lost until it can be\n") == 1, text
    assert "Errno" not in text and "Traceback" not in text, text
    assert len(os.listdir(tmp_path / "d" / "mail" / "localhost" / "alice" / "new")) == 1  # the mail went on
