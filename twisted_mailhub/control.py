# -*- test-case-name: tests.test_control -*-
"""
The control socket (issue 14): C{DATA/control.sock}, a UNIX socket of mode
0600 through which C{mailhub-admin} asks a running hub to reload or to say
how it is, instead of a signal through a pidfile (which needs the right
pidfile, and says nothing back).

Protocol: one command per line, one JSON object per answer line.

 ==========  ===============================================================
 command     answer
 ==========  ===============================================================
 C{reload}   C{{"ok": true, "said": [lines]}}: what L{Hub.reload} did (the
             accounts files and the certificate read again; sessions stay)
 C{status}   C{{"ok": true, "pid", "uptime", "listeners": {name: port},
             "connections_open", "accounts", "queue"}}
 C{account}  C{account NAME}: C{{"ok": true, "account": "alice@example.org"}}
             for the account NAME names (login name or address, a bare
             name in the hub's domain), C{"account": null} for none;
             C{"sure": false} when other checkers (C{--auth}) may know it
 other       C{{"ok": false, "error": "..."}}
 ==========  ===============================================================

Only the user the hub runs as (and root) can connect: the socket's mode is
0600 and it lives in the data folder. A lock file beside it
(C{control.sock.lock}, Twisted's C{wantPID}) tells a stale socket of a dead
hub from a live one: a second hub on the same data folder logs that the
socket is taken and goes on without one. A lock naming a live process on
whose socket no hub answers came with a copied or restored data folder
(tar keeps the link, and the old pid is now another process): it is
taken over. Under C{--workers} the
supervisor listens and asks every worker
(L{twisted_mailhub.workers.WorkersControlFactory}): C{reload} reloads each
(its lines prefixed C{worker N:}), C{status} adds up their connections and
queues and lists them under C{"workers"} (index, pid, uptime,
connections, queue).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from twisted.protocols import basic

log = Logger()

SOCKET_NAME = "control.sock"

listeners: list = []


def socket_path(data_dir: str) -> str:
    """Where a hub with data folder C{data_dir} listens for control commands."""
    return os.path.join(data_dir, SOCKET_NAME)


class ControlProtocol(basic.LineReceiver):
    """One C{mailhub-admin} connection."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def lineReceived(self, line: bytes) -> None:
        # The command word in any case; an argument (an account's name,
        # UTF-8 allowed) as given.
        verb, _, argument = line.strip().decode("utf-8", "replace").partition(" ")
        command = verb.lower() + (" " + argument.strip() if argument.strip() else "")
        d = defer.maybeDeferred(self.factory.answer, command)
        d.addErrback(lambda f: (log.failure("control command {command}", f, command=command), {"ok": False, "error": "the hub could not answer; see its log"})[1])
        d.addCallback(self._answer)

    def _answer(self, answer: dict) -> None:
        if self.transport is not None and self.transport.connected:
            self.sendLine(json.dumps(answer, sort_keys=True).encode("utf-8"))

    def lineLengthExceeded(self, line):
        self.transport.loseConnection()


def status(hub: Any, started: float) -> dict:
    """What C{status} answers: the hub at a glance."""
    from twisted_mailhub.hub import bound_at

    relay = getattr(hub, "relay", None)
    metrics = getattr(hub, "metrics", None)
    open_now = 0
    if metrics is not None:
        for metric in metrics.open.collect():
            open_now = int(sum(s.value for s in metric.samples))
    return {
        "pid": os.getpid(),
        "uptime": round(time.monotonic() - started, 3),
        "listeners": {name: bound_at(address) for name, address in sorted(hub.listening.items())},
        "connections_open": open_now,
        "accounts": len(hub.accounts),
        "queue": len(getattr(relay, "entries", {}) or {}) if relay is not None else 0,
        "group_commit": _group_commit(),
    }


def _group_commit() -> dict:
    """The durable writes' group commit so far in this process (store/durable.STATS: batches, writes, syncfs calls)."""
    from twisted_mailhub.store import durable

    return dict(durable.STATS)


UNKNOWN = {"ok": False, "error": "unknown command; known: reload, status, account NAME"}


def account(hub: Any, name: str) -> dict:
    """
    The answer to C{account NAME}: which of the hub's accounts C{name}
    names (C{mailhub-admin user key} asks before it authorizes a key).
    """
    found = hub.accounts.find(name) if name else None
    if found is not None:
        return {"ok": True, "account": found.address}
    return {"ok": True, "account": None, "sure": not getattr(hub, "has_other_checkers", False)}


class ControlFactory(protocol.Factory):
    """The commands of one hub process (L{answer})."""

    protocol = ControlProtocol
    noisy = False

    def __init__(self, hub: Any):
        self.hub = hub
        self.started = time.monotonic()

    def answer(self, command: str) -> dict | defer.Deferred:
        """The answer to C{command} (a dict, or a Deferred of one)."""
        hub = self.hub
        if command == "reload":
            return {"ok": True, "said": hub.reload()}
        if command == "status":
            return {"ok": True, **status(hub, self.started)}
        if command.startswith("account "):
            return account(hub, command[len("account ") :])
        return dict(UNKNOWN)


class ControlService(service.Service):
    """Listens on C{DATA/control.sock} while the hub runs."""

    def __init__(self, hub: Any, factory: ControlFactory | None = None):
        self.hub = hub
        self.factory = factory
        self.port: Any = None

    def startService(self):
        service.Service.startService(self)
        if getattr(self.hub, "worker", None) is not None:
            return  # a worker: the supervisor listens (module docstring)
        path = socket_path(self.hub.data_dir)
        factory = self.factory or ControlFactory(self.hub)

        def listen():
            endpoint = endpoints.UNIXServerEndpoint(self.hub.reactor, path, mode=0o600, wantPID=True)
            return endpoint.listen(factory)

        def listening(port):
            self.port = port
            os.chmod(path, 0o600)  # whatever the umask was
            log.info("control socket {path} (mailhub-admin reload, status)", path=path)

        def taken(reason, again=True):
            error = getattr(reason.value, "socketError", None)
            if isinstance(error, str) and "lock" in error.lower() and again and not answers(path):
                # The lock names a live process, but no hub answers on the
                # socket: the lock came with a copied or restored data
                # folder (tar and rsync keep its symbolic link, which names
                # the old hub's pid), and that pid is now another process
                # or a hub on another folder. Without this the hub ran
                # without its control socket (mailhub-admin status and
                # reload, systemctl reload, failed).
                log.info("control socket {path}: its lock names pid {pid}, but no hub answers there (a copied or restored data folder?): taken over", path=path, pid=_lock_pid(path))
                try:
                    os.unlink(path + ".lock")
                except OSError:
                    pass
                return listen().addCallbacks(listening, taken, errbackArgs=(False,))
            if isinstance(error, str) and "lock" in error.lower():
                # wantPID: another live process holds PATH.lock (Twisted's
                # own words were "Couldn't listen on any:b'PATH': Cannot
                # acquire lock.", a Python repr).
                why = "another running hub on this data folder has it; mailhub-admin status and reload reach that hub, not this one (give each hub its own --data)"
            else:
                why = getattr(reason.value, "strerror", None) or getattr(error, "strerror", None) or str(error or "") or "it cannot be made"
            log.warn("no control socket: {path}: {why}", path=path, why=why)

        listen().addCallbacks(listening, taken)

    def stopService(self):
        service.Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def answers(path: str) -> bool:
    """
    Whether a process listens on the UNIX socket C{path}: a connection is
    taken (True), or refused or there is no socket (False). Any other
    error counts as True (something is there: leave it alone).
    """
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
    return True


def _lock_pid(path: str) -> str:
    """The pid a control socket's lock names (Twisted's FilesystemLock: a symbolic link to it), or '?'."""
    try:
        return os.readlink(path + ".lock")
    except OSError:
        return "?"


def install(hub: Any) -> None:
    hub.add_service(ControlService(hub))


def ask(data_dir_or_path: str, command: str, timeout: float = 10.0) -> dict | None:
    """
    Send C{command} to the hub listening at C{data_dir_or_path} (its data
    folder, or the socket itself) and return its answer; L{None} when no
    hub listens there (no socket, or a stale one).

    @raise OSError: the socket exists but cannot be used (permissions).
    """
    import socket

    path = data_dir_or_path if data_dir_or_path.endswith(".sock") else socket_path(data_dir_or_path)
    if not os.path.exists(path):
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        s.sendall(command.encode("ascii") + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    finally:
        s.close()
    return json.loads(reply) if reply.strip() else None
