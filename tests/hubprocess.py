"""
Start the real C{twistd -n mailhub} for end-to-end tests.

Every listener is given C{tcp:0:interface=127.0.0.1} unless the test says
otherwise, and the ports the hub really bound are read from its
C{mailhub ready {...}} log line: no port races, no sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def listener_names(pythonpath: str | None = None) -> list[str]:
    """
    Every listener the registered components offer (built-in and plugin
    ones), as the hub started with C{pythonpath} in front sees them. Each
    gets an ephemeral loopback port unless the test passes its own
    C{--NAME} or C{--no-NAME}, so a new listener needs no edit here and a
    test hub never binds a default port.
    """
    if not pythonpath:
        from twisted_mailhub.components import listener_names as names

        return names()
    if pythonpath not in _NAMES_BY_PATH:
        env = dict(os.environ, PYTHONPATH=_pythonpath(pythonpath))
        out = subprocess.run(
            [sys.executable, "-c", "from twisted_mailhub.components import listener_names; print(' '.join(listener_names()))"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )
        _NAMES_BY_PATH[pythonpath] = out.stdout.split()
    return _NAMES_BY_PATH[pythonpath]


_NAMES_BY_PATH: dict[str, list[str]] = {}


def _pythonpath(extra: str | None) -> str:
    """
    The hub's PYTHONPATH: this checkout first, then a test's own entries
    (e.g. a directory with third-party plugins), then the inherited one.
    """
    parts = [ROOT, extra, os.environ.get("PYTHONPATH")]
    return os.pathsep.join(p for p in parts if p)

# The built-in listeners and any plugin ones on this process's path.
LISTENERS = listener_names()

_READY = re.compile(r"mailhub ready (\{.*\})")


class HubProcess:
    """
    One running hub. C{ports[name]} is where listener C{name} listens;
    C{log} is everything it printed so far.
    """

    def __init__(self, data_dir: str, args: list[str] | None = None, env: dict | None = None, users=("alice:secret", "bob:hungry")):
        self.data_dir = data_dir
        self.args = list(args or [])
        self.users = list(users)
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self._log: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._log)

    def command(self) -> list[str]:
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mailhub", "--data", self.data_dir]
        given = " ".join(self.args)
        for name in listener_names(self.extra_env.get("PYTHONPATH")):
            if f"--{name} " not in given + " " and f"--{name}=" not in given and f"--no-{name}" not in self.args:
                args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
        if "--hostname" not in given:
            args += ["--hostname", "mail.test"]
        for user in self.users:
            args += ["--user", user]
        return args + self.args

    def start(self, timeout: float = 30) -> "HubProcess":
        env = dict(os.environ)
        env.update(self.extra_env)
        env["PYTHONPATH"] = _pythonpath(self.extra_env.get("PYTHONPATH"))
        self._ready.clear()
        self._said_ready = False
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.data_dir if os.path.isdir(self.data_dir) else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self._said_ready:
            self.stop()
            raise RuntimeError("mailhub did not start:\n" + self.log)
        return self

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self._log.append(line)
            m = _READY.search(line)
            if m:
                self.ports = json.loads(m.group(1))
                self._said_ready = True
                self._ready.set()
        self._ready.set()  # exited: wake start() so it can report

    def wait_for_log(self, pattern: str, timeout: float = 10) -> re.Match:
        """
        Wait until the hub has logged a line matching C{pattern}.
        """
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            m = regex.search(self.log)
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError(f"hub never logged {pattern!r}:\n{self.log[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        """kill -9: no clean shutdown."""
        self.stop(signal.SIGKILL)

    def restart(self) -> "HubProcess":
        self.stop()
        with self._lock:
            self._log.append("---- restart ----\n")
        self.ports = {}
        return self.start()

    def maildir(self, address: str) -> str:
        local, _, domain = address.partition("@")
        return os.path.join(self.data_dir, "mail", domain or "localhost", local)


def client_context() -> ssl.SSLContext:
    """A client TLS context that accepts the hub's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

