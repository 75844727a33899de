"""
Shared fixtures: C{hub} starts the real C{twistd -n mailhub} on loopback
with a temp data directory and stops it after the test.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.hubprocess import HubProcess

# A suite started under nohup (or any launcher that ignores SIGHUP) would
# hand the ignored SIGHUP to every hub it starts (an ignored signal stays
# ignored across fork and exec), and the SIGHUP tests would test nohup.
# The hubs of the suite start as from a login shell: SIGHUP at its default.
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """
    Run every test in its own temp directory, so nothing a test writes by a
    relative path (trial's mktemp, twistd's pid and log files) lands in the
    checkout.
    """
    monkeypatch.chdir(tmp_path)
    yield
    if os.environ.get("MAILHUB_KEEP_LOGS"):
        _keep_log_files(tmp_path)


def _keep_log_files(folder) -> None:
    """
    Under C{MAILHUB_KEEP_LOGS}, keep the log files hubs wrote in a test's
    temp folder themselves (C{twistd --logfile}, a daemon's C{twistd.log}
    and its rotated files): the hunt for tracebacks reads them too.
    """
    from twisted_mailhub.testing import keep_log

    for path in sorted(folder.rglob("*.log*")):
        if not path.is_file() or not re.fullmatch(r".*\.log(\.\d+)?", path.name) or len(path.relative_to(folder).parts) > 3:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "twisted_mailhub" in text or "Log opened" in text:
            keep_log(f"---- {path.relative_to(folder)} ----\n{text}")


@pytest.fixture
def start_hub(tmp_path):
    """
    A factory: C{start_hub(*args, users=..., data=...)} starts a hub and
    returns its L{HubProcess}; every hub it started is stopped afterwards.
    """
    started: list[HubProcess] = []

    def start(*args: str, users=("alice:secret", "bob:hungry"), data: str | None = None, env=None) -> HubProcess:
        data_dir = data or str(tmp_path / f"hub{len(started)}")
        os.makedirs(data_dir, exist_ok=True)
        hub = HubProcess(data_dir, list(args), env=env, users=users)
        started.append(hub)
        return hub.start()

    yield start
    for hub in started:
        hub.stop()


@pytest.fixture
def hub(start_hub):
    """A hub with the default listeners and the accounts alice:secret, bob:hungry on localhost."""
    return start_hub()


@pytest.fixture(scope="session")
def postgresql():
    """
    A real PostgreSQL server (L{tests.pgserver.PostgresServer}) for the whole
    test session. Without PostgreSQL installed the test is skipped, saying
    so, except under CI (C{CI} set), where it fails: CI installs it.
    """
    from tests.pgserver import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql): initdb not found"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # fsync off: these tests check what the hub acknowledges after a hub
    # crash (kill -9), never a crash of PostgreSQL itself, and the machine's
    # disk is shared; the benchmark (bench/cluster.py) runs with fsync on.
    server = PostgresServer(bindir, {"fsync": "off", "full_page_writes": "off"}).start()
    yield server
    server.remove()


@pytest.fixture
def pg_dsn(postgresql):
    """The DSN of a new empty database on the session's PostgreSQL server."""
    return postgresql.create_database()
