# -*- test-case-name: tests.test_queue_admin -*-
"""
The queue's admin command and the hub's side of it.

C{python -m twisted_mailhub.queue [--data DIR] list|flush|remove ID}
(also installed as C{mailhub-queue}):

 - C{list} reads the envelope files; the hub saves them after every
   attempt, so what it shows is current to the last attempt.
 - C{flush} (retry everything now) and C{remove ID} must not race the
   running hub, which holds the queue's state in memory. The hub holds an
   exclusive C{flock} on C{DATA/queue/lock} while it runs. If the lock is
   free, no hub is running and the command edits the files itself (under
   the lock). If a hub holds it, the command drops a request file into
   C{DATA/queue/control/} and the hub, which looks there once a second,
   carries it out and writes the answer beside it.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from twisted_mailhub.queue.schedule import format_duration
from twisted_mailhub.errorwords import error_words
from twisted_mailhub.queue.storage import DELIVERED, FAILED, PENDING, scan

log = Logger(namespace="mailhub.relay")

LOCK = "lock"
CONTROL = "control"


def take_lock(directory: str) -> int | None:
    """
    The queue's lock as an fd, or L{None} when someone else holds it.
    """
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp%d" % os.getpid()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def carry_out(relay: Any, request: str) -> str:
    """
    One admin request against a running relay; the answer for the user.
    """
    words = request.split()
    if words == ["flush"]:
        return f"flushing {relay.flush()} message(s)"
    if len(words) == 2 and words[0] == "remove":
        if relay.remove(words[1]):
            return f"removed {words[1]}"
        return f"no message {words[1]} in the queue"
    return f"unknown request {request!r} (expected flush or remove ID)"


class QueueControl(service.Service):
    """
    Holds the queue lock and answers admin requests while the hub runs.
    """

    name = "queue-control"
    interval = 1.0

    def __init__(self, relay: Any, directory: str, reactor: Any):
        self.relay = relay
        self.directory = directory
        self.control = os.path.join(directory, CONTROL)
        self.reactor = reactor
        self._lock: int | None = None
        self._poll: task.LoopingCall | None = None

    def startService(self):
        service.Service.startService(self)
        self._lock = take_lock(self.directory)
        self.relay.owns_queue = self._lock is not None
        if self._lock is None and getattr(self.relay, "worker_mode", False):
            log.info("queue: run by another worker of this hub (--workers)")
        elif self._lock is None:
            log.error("queue: {dir} is locked by another process; two hubs on one queue would send mail twice", dir=self.directory)
        os.makedirs(self.control, exist_ok=True)
        self._poll = task.LoopingCall(self.poll)
        self._poll.clock = self.reactor
        self._poll.start(self.interval, now=True)

    def stopService(self):
        service.Service.stopService(self)
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def poll(self) -> None:
        if self._lock is None:
            return  # the process holding the lock answers
        try:
            names = sorted(n for n in os.listdir(self.control) if n.endswith(".req"))
        except OSError:
            return
        for name in names:
            path = os.path.join(self.control, name)
            try:
                with open(path, encoding="utf-8") as f:
                    request = f.read().strip()
                os.unlink(path)
            except OSError:
                continue
            answer = carry_out(self.relay, request)
            log.info("queue: admin request {request!r}: {answer}", request=request, answer=answer)
            try:
                _write_atomically(path[:-4] + ".done", answer.encode("utf-8"))
            except OSError as e:
                log.error("queue: cannot answer {name}: {error}", name=name, error=error_words(e))


# -- the command -------------------------------------------------------------


def list_queue(directory: str, out=None, now: float | None = None) -> int:
    out = sys.stdout if out is None else out  # (the one of the moment, not the one at import)
    now = time.time() if now is None else now
    entries = scan(directory) if os.path.isdir(directory) else []
    if not entries:
        out.write("queue is empty\n")
        return 0
    for e in entries:
        out.write(format_entry(e, now))
    out.write(f"{len(entries)} message(s)\n")
    return 0


def format_entry(e: Any, now: float, holder: str | None = None) -> str:
    """
    One queued message as C{list} shows it: a line for the message, one per
    recipient; C{holder} names the hub sending it now (PostgreSQL queue).
    """
    age = format_duration(max(0, int(now - e.created)))
    due = "now" if e.next_attempt <= now else "in " + format_duration(max(1, int(e.next_attempt - now)))
    if holder:
        due = f"being sent by {holder}"
    dsn = "".join(f"  {name}={value}" for name, value in (("RET", e.ret), ("ENVID", e.envid)) if value)
    lines = [f"{e.id}  {e.size} octets  from <{e.sender}>{dsn}  queued {age} ago, {e.attempts} attempt(s), next {due}\n"]
    for r in e.recipients:
        mark = {PENDING: "pending", DELIVERED: "delivered", FAILED: "failed"}.get(r.state, r.state)
        said = r.last_reply + (" (its time in the queue ran out)" if r.expired else "")
        asked = f" NOTIFY={r.notify}" if r.notify else ""  # RFC 3461 §4.1
        lines.append(f"    <{r.address}>{asked} {mark}" + (f": {said}" if said else "") + "\n")
    return "".join(lines)


def _offline(directory: str, request: str) -> str:
    """
    Carry out a request on the files, no hub running (we hold the lock).
    """
    words = request.split()
    if words[0] == "flush":
        entries = scan(directory)
        for e in entries:
            e.next_attempt = 0
            _write_atomically(os.path.join(directory, e.id + ".env"), e.to_json())
        return f"{len(entries)} message(s) will be tried as soon as the hub starts"
    qid = words[1]
    if not os.path.exists(os.path.join(directory, qid + ".env")):
        return f"no message {qid} in the queue"
    for suffix in (".env", ".msg"):
        try:
            os.unlink(os.path.join(directory, qid + suffix))
        except FileNotFoundError:
            pass
    return f"removed {qid}"


def request(directory: str, text: str, timeout: float = 10.0) -> tuple[bool, str]:
    """
    Carry out C{text} (C{flush} or C{remove ID}): through the running hub,
    or on the files when none runs. Returns (ok, answer).
    """
    fd = take_lock(directory)
    if fd is not None:
        try:
            return True, _offline(directory, text)
        finally:
            os.close(fd)
    control = os.path.join(directory, CONTROL)
    os.makedirs(control, exist_ok=True)
    base = os.path.join(control, f"{time.time_ns()}-{os.getpid()}")
    _write_atomically(base + ".req", text.encode("utf-8"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(base + ".done", encoding="utf-8") as f:
                answer = f.read()
            os.unlink(base + ".done")
            return True, answer
        except FileNotFoundError:
            time.sleep(0.05)
    try:
        os.unlink(base + ".req")
    except FileNotFoundError:
        pass
    return False, "the hub holds the queue but did not answer in time"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """
    The queue command (C{mailhub-admin queue}, C{mailhub-queue}, C{python
    -m twisted_mailhub.queue}): C{argv} after the program's name, C{prog}
    the name its usage and errors give (by default the one it was run as).
    Returns the exit status.
    """
    if prog is None:
        prog = "mailhub-queue" if os.path.basename(sys.argv[0] or "") == "mailhub-queue" else "python -m twisted_mailhub.queue"
    from twisted_mailhub.errorwords import run_command_line_tool

    return run_command_line_tool(prog, _main, argv, prog)


def _main(argv: list[str] | None, prog: str) -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show and manage the outbound mail queue of a mailhub (running or not).",
    )
    data_help = "the hub's --data directory (default: ./mailhub-data)"
    queue_help = "postgresql:DSN: the queue in that PostgreSQL database (the hubs' --queue postgresql, or --store postgresql:DSN) instead of the files under --data"
    parser.add_argument("--data", default="mailhub-data", help=data_help)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="show queued messages and each recipient's state")
    flush = sub.add_parser("flush", help="try every queued message now")
    remove = sub.add_parser("remove", help="delete a queued message, no bounce")
    remove.add_argument("id", help="queue id, as shown by list")
    parser.add_argument("--queue", default=None, help=queue_help)
    # Also after the command ("queue list --data DIR"), as every other
    # mailhub-admin command takes them: that was "unrecognized arguments".
    for command in (listing, flush, remove):
        command.add_argument("--data", default=argparse.SUPPRESS, help=data_help)
        command.add_argument("--queue", default=argparse.SUPPRESS, help=queue_help)
    args = parser.parse_args(argv)
    if args.queue:
        from twisted_mailhub.queue.pgqueue import main as table_main
        from twisted_mailhub.queue.component import queue_dsn

        try:
            dsn = queue_dsn(args.queue, None)
        except ValueError as e:  # one line, like the hub's own option errors
            print(e, file=sys.stderr)
            return 2
        if dsn is None:
            print(f"--queue {args.queue}: expected postgresql:DSN here", file=sys.stderr)
            return 2
        return table_main(dsn, args.command, getattr(args, "id", None))
    directory = os.path.join(os.path.abspath(args.data), "queue")
    if not os.path.isdir(directory):
        # "queue is empty" for a mistyped --data told a wrong thing.
        print(f"no queue at {directory} (is --data the hub's data folder?)", file=sys.stderr)
        return 1
    if args.command == "list":
        return list_queue(directory)
    ok, answer = request(directory, "flush" if args.command == "flush" else f"remove {args.id}")
    print(answer)
    return 0 if ok and not answer.startswith(("no message", "unknown")) else 1
