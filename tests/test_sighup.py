"""
SIGHUP from a hub process's first moment (twisted_mailhub.sighup): a
SIGHUP while a hub imports and starts (systemctl reload, mailhub-admin
user add, a logrotate postrotate as the hub starts) is held and acted on
once the hub runs, in a single hub, a --workers supervisor and each worker.
"""

from __future__ import annotations

import json
import os
import poplib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from twisted_mailhub import sighup
from twisted_mailhub.testing import Mailhub, keep_log


def _catches_sighup(pid: int) -> bool:
    """Has process C{pid} a handler for SIGHUP (its SigCgt mask, Linux)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    except OSError:
        pass
    return False


def _has_loaded_tls(pid: int) -> bool:
    """
    Has process C{pid} loaded cryptography's library (the hub's TLS, which
    it imports long before its own SIGHUP handler is installed)?
    """
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "cryptography" in f.read()
    except OSError:
        return False


def _wait_until_it_catches_sighup(hub: Mailhub, pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not _catches_sighup(pid):
        if hub.process is None or hub.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"pid {pid} never caught SIGHUP:\n{hub.log[-3000:]}")
        time.sleep(0.002)


def _start_in_background(hub: Mailhub) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            hub.start()
        except BaseException as e:  # reported by the test
            errors.append(e)

    starting = threading.Thread(target=start)
    starting.start()
    deadline = time.monotonic() + 10
    while hub.process is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert hub.process is not None
    return starting, errors


def _pop3_login(hub: Mailhub, user: str, password: str) -> None:
    pop = poplib.POP3(hub.host, hub.ports["pop3"], timeout=10)
    try:
        pop.user(user)
        assert pop.pass_(password).startswith(b"+OK")
    finally:
        pop.quit()


# -- the holding itself, in this process -------------------------------------------


@pytest.fixture
def sighup_default():
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    previous_usr1 = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.signal(signal.SIGHUP, previous)
    signal.signal(signal.SIGUSR1, previous_usr1)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def test_a_held_sighup_is_noted_and_handed_to_the_handler_once_on_release(sighup_default):
    assert sighup.hold()
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGHUP)
    assert sighup.held() == 2  # still alive: noted, not SIGHUP's default
    calls = []
    sighup.release(lambda signum, frame: calls.append(signum))
    assert calls == [signal.SIGHUP]  # two asked for the same reload
    assert sighup.held() == 0
    os.kill(os.getpid(), signal.SIGHUP)
    assert calls == [signal.SIGHUP, signal.SIGHUP]  # the handler has it from now on


def test_release_without_a_held_sighup_calls_nothing(sighup_default):
    sighup.hold()
    calls = []
    sighup.release(lambda signum, frame: calls.append(signum))
    assert calls == []


def test_hold_keeps_an_inherited_ignore_and_anyone_elses_handler(sighup_default):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    assert not sighup.hold()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN

    def theirs(signum, frame):
        pass

    signal.signal(signal.SIGHUP, theirs)
    assert not sighup.hold()
    assert signal.getsignal(signal.SIGHUP) is theirs


def test_a_sighup_that_came_while_blocked_is_noted_once_held(sighup_default):
    # A launcher starts the hub with SIGHUP blocked (sighup.blocked()): one
    # sent before the hub's code runs waits, pending, for hold().
    with sighup.blocked():
        # to this thread, which blocks it (pytest-xdist runs other threads)
        signal.pthread_kill(threading.get_ident(), signal.SIGHUP)
        assert signal.SIGHUP in signal.sigpending()
        assert sighup.hold()
        assert sighup.held() == 1
    calls = []
    sighup.release(lambda signum, frame: calls.append(signum))
    assert calls == [signal.SIGHUP]


def test_a_held_sigusr1_is_dropped_and_twistds_log_rotation_still_takes_its_place(sighup_default):
    sighup.hold()
    os.kill(os.getpid(), signal.SIGUSR1)  # alive: held, not SIGUSR1's default
    # twistd (and the hub's log observer) install their rotation only "if
    # not signal.getsignal(signal.SIGUSR1)": the stand-in must read as none.
    assert not signal.getsignal(signal.SIGUSR1)


def test_importing_the_package_outside_a_hub_process_leaves_sighup_alone():
    # pytest, mailhub-admin, a library user: SIGHUP keeps its meaning there.
    import subprocess
    import sys

    from twisted_mailhub.testing import PACKAGE_ROOT

    out = subprocess.run(
        [sys.executable, "-c", "import signal, twisted_mailhub.testing; print(signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)"],
        env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "True", out.stderr


# -- real hubs -------------------------------------------------------------------------


def test_a_sighup_while_the_hub_imports_is_acted_on_once_it_runs(tmp_path):
    hub = Mailhub("--no-web", "--no-webs", "--no-sftp", accounts=("alice:secret",), data_dir=str(tmp_path / "data"))
    starting, errors = _start_in_background(hub)
    try:
        _wait_until_it_catches_sighup(hub, hub.pid)
        # Caught long before it listens: this is the start, not the hub's
        # own handler (which it installs after binding).
        assert "listening on" not in hub.log, hub.log
        with open(os.path.join(hub.data_dir, "mailhub-accounts"), "a") as f:
            f.write("carol:added-at-start\n")
        os.kill(hub.pid, signal.SIGHUP)
        starting.join(60)
        assert not errors, errors
        assert hub.process.poll() is None
        hub.wait_for_log(r"a SIGHUP came while the hub started")
        hub.wait_for_log(r"accounts reloaded: 2 accounts")
        _pop3_login(hub, "carol@localhost", "added-at-start")
    finally:
        hub.stop()
        starting.join(30)


def test_sighups_to_the_supervisor_and_to_each_starting_worker_end_nothing(tmp_path):
    # A SIGHUP to the whole process group (a closed terminal, kill -HUP
    # -PGID) reaches every worker directly, also while it imports.
    hub = Mailhub("--workers", "2", "--no-web", "--no-webs", "--no-sftp", accounts=("alice:secret",), data_dir=str(tmp_path / "data"))
    starting, errors = _start_in_background(hub)
    try:
        _wait_until_it_catches_sighup(hub, hub.pid)
        assert "listening on" not in hub.log, hub.log
        os.kill(hub.pid, signal.SIGHUP)  # the supervisor, while it imports
        signalled = set()
        deadline = time.monotonic() + 60
        while len(signalled) < 2 and time.monotonic() < deadline and starting.is_alive():
            for m in re.finditer(r"worker (\d) started \(pid (\d+)\)", hub.log):
                pid = int(m.group(2))
                if pid not in signalled:
                    _wait_until_it_catches_sighup(hub, pid)
                    # Caught while it still imports the hub (the worker's
                    # own handler comes after the TLS set-up).
                    assert not _has_loaded_tls(pid)
                    os.kill(pid, signal.SIGHUP)
                    signalled.add(pid)
            time.sleep(0.002)
        starting.join(60)
        assert not errors, errors
        assert len(signalled) == 2, hub.log[-3000:]
        hub.wait_for_log(r"\[worker 0\] accounts reloaded")
        hub.wait_for_log(r"\[worker 1\] accounts reloaded")
        assert "exited with signal" not in hub.log, hub.log[-3000:]
        _pop3_login(hub, "alice@localhost", "secret")
    finally:
        hub.stop()
        starting.join(30)


def test_sighup_and_sigusr1_sent_as_early_as_possible_never_end_a_hub_the_kit_starts(tmp_path, monkeypatch):
    # Sent the moment the process exists (right after fork and exec, before
    # Python has started): before the hub holds them, even before twistd
    # has imported Twisted. The kit starts it with both blocked, so each
    # waits for the hub's hold and the SIGHUP is acted on once it runs.
    from twisted_mailhub import testing

    real_popen = testing.subprocess.Popen

    def popen_and_signal(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        os.kill(process.pid, signal.SIGHUP)
        os.kill(process.pid, signal.SIGUSR1)
        return process

    monkeypatch.setattr(testing.subprocess, "Popen", popen_and_signal)
    for attempt in range(3):
        hub = Mailhub("--no-web", "--no-webs", "--no-sftp", accounts=("alice:secret",), data_dir=str(tmp_path / f"data{attempt}"))
        try:
            hub.start()  # MailhubStartError "exited with status -1" before
            hub.wait_for_log(r"a SIGHUP came while the hub started")
            hub.wait_for_log(r"accounts reloaded")
            _pop3_login(hub, "alice@localhost", "secret")
        finally:
            hub.stop()


def test_a_worker_signalled_the_moment_it_is_spawned_is_not_ended(tmp_path):
    # A SIGHUP to the process group reaches each worker directly, also in
    # its first milliseconds (Python's start, before its own code): the
    # supervisor spawns workers with SIGHUP blocked, so it waits for them.
    hub = Mailhub("--workers", "2", "--no-web", "--no-webs", "--no-sftp", accounts=("alice:secret",), data_dir=str(tmp_path / "data"))
    starting, errors = _start_in_background(hub)
    try:
        signalled = set()
        deadline = time.monotonic() + 60
        while len(signalled) < 2 and time.monotonic() < deadline and starting.is_alive():
            for m in re.finditer(r"worker (\d) started \(pid (\d+)\)", hub.log):
                pid = int(m.group(2))
                if pid not in signalled:
                    os.kill(pid, signal.SIGHUP)
                    signalled.add(pid)
            time.sleep(0.001)
        starting.join(60)
        assert not errors, errors
        assert len(signalled) == 2, hub.log[-3000:]
        assert "exited with signal" not in hub.log, hub.log[-3000:]
        hub.wait_for_log(r"\[worker 0\] accounts reloaded")
        hub.wait_for_log(r"\[worker 1\] accounts reloaded")
        _pop3_login(hub, "alice@localhost", "secret")
    finally:
        hub.stop()
        starting.join(30)


def _has_loaded_twisted(pid: int) -> bool:
    """Has process C{pid} imported Twisted (zope.interface's C part, which Twisted's first imports load)?"""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "zope_interface" in f.read()
    except OSError:
        return False


def test_python_m_twisted_mailhub_holds_sighup_before_twisted_is_imported(tmp_path):
    # `python3 -m twisted_mailhub ARGS` is twistd ARGS with SIGHUP held
    # from its first line: a SIGHUP while twistd imports Twisted (the
    # time no plugin of the hub has run yet) is acted on once it runs.
    from tests.hubprocess import LISTENERS, ROOT

    data = tmp_path / "data"
    data.mkdir()
    (data / "accounts").write_text("alice:secret\n")
    others = [f"--no-{name}" for name in LISTENERS if name != "pop3"]
    hub = subprocess.Popen(
        [sys.executable, "-m", "twisted_mailhub", "-n", "--pidfile=", "mailhub", "--data", str(data),
         "--auth", f"file:{data / 'accounts'}", "--pop3", "tcp:0:interface=127.0.0.1", *others],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    seen = []
    try:
        deadline = time.monotonic() + 30
        while not _catches_sighup(hub.pid):
            assert hub.poll() is None and time.monotonic() < deadline, hub.stdout.read()
        assert not _has_loaded_twisted(hub.pid)
        with open(data / "accounts", "a") as f:
            f.write("carol:early\n")
        os.kill(hub.pid, signal.SIGHUP)
        port, reloaded = None, False
        for line in hub.stdout:
            seen.append(line)
            m = re.search(r"mailhub ready (\{.*\})", line)
            if m:
                port = json.loads(m.group(1))["pop3"]
            reloaded = reloaded or "accounts reloaded: 2 accounts" in line
            if port is not None and reloaded:
                break
        assert port is not None and reloaded
        pop = poplib.POP3("127.0.0.1", port, timeout=10)
        try:
            pop.user("carol@localhost")
            assert pop.pass_("early").startswith(b"+OK")
        finally:
            pop.quit()
    finally:
        hub.terminate()
        keep_log("".join(seen) + hub.communicate(timeout=30)[0])
