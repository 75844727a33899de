"""
A real PostgreSQL server for the tests: Debian's C{postgresql} binaries,
C{initdb} into a fresh temp folder and C{pg_ctl start} on a free loopback
port, stopped (and the folder removed) when the test session ends.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as the unprivileged C{postgres} user Debian's package creates (or
C{nobody}); its folder is made theirs.

Each test that wants a clean slate asks L{PostgresServer.create_database}
for its own database (a copy of C{template1}, about 0.1 s) rather than a
whole server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

SUPERUSER = "mailhub"


def find_bindir() -> str | None:
    """
    The folder holding C{initdb} and C{pg_ctl}: the newest
    C{/usr/lib/postgresql/*/bin} (Debian keeps them off C{PATH}), else
    wherever C{PATH} has them; L{None} when PostgreSQL is not installed.
    """

    def version(path: str) -> tuple:
        name = path.split(os.sep)[-2]
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: version(os.path.dirname(p)))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """
    One throw-away PostgreSQL cluster listening on 127.0.0.1:C{port} only
    (no Unix socket outside its own folder), superuser L{SUPERUSER} with
    C{trust} authentication on loopback.
    """

    def __init__(self, bindir: str, settings: dict[str, str] | None = None):
        self.bindir = bindir
        self.settings = dict(settings or {})
        self.port = 0
        self.folder = ""
        self._user: pwd.struct_passwd | None = None

    @property
    def data(self) -> str:
        return os.path.join(self.folder, "data")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bindir, args[0]), *args[1:]]
        kwargs: dict = {}
        if self._user is not None:
            user = self._user
            kwargs["user"] = user.pw_uid
            kwargs["group"] = user.pw_gid
            kwargs["extra_groups"] = []
        return subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=check,
            cwd=self.folder, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, **kwargs,
        )

    def start(self) -> "PostgresServer":
        """
        initdb and start; raises L{RuntimeError} with PostgreSQL's own
        words when either fails.
        """
        self.folder = tempfile.mkdtemp(prefix="mailhub-pg-")
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        result = self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync", check=False)
        if result.returncode:
            raise RuntimeError("initdb failed:\n" + result.stdout)
        for attempt in range(5):
            self.port = free_port()
            result = self._pg_ctl_start()
            if result.returncode == 0:
                return self
        with open(os.path.join(self.folder, "log"), errors="replace") as f:
            raise RuntimeError("pg_ctl start failed:\n" + result.stdout + f.read()[-3000:])

    def _pg_ctl_start(self) -> subprocess.CompletedProcess:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self.folder,
            "max_connections": "200",
            **self.settings,
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        return self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", os.path.join(self.folder, "log"), "-o", opts, check=False)

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for database C{dbname}."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (C{mode}: C{fast} or C{immediate})."""
        if self.port:
            self._run("pg_ctl", "stop", "-w", "-D", self.data, "-m", mode, check=False)

    def restart(self) -> None:
        """Stop and start again on the same port and data (a database restart)."""
        self.stop()
        result = self._pg_ctl_start()
        if result.returncode:
            raise RuntimeError("pg_ctl start failed:\n" + result.stdout)

    def remove(self) -> None:
        self.stop("immediate")
        self.port = 0
        shutil.rmtree(self.folder, ignore_errors=True)
