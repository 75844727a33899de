# -*- test-case-name: tests.test_queue -*-
"""
The outbound queue on disk, C{DATA/queue/}.

Rules (everything that changes the queue's files lives in this module):

 - A queued message is two files with the same id: C{<id>.msg}, the message
   bytes exactly as they will be sent (CRLF line ends, not dot-stuffed),
   written once; and C{<id>.env}, its envelope and per-recipient state as
   JSON, rewritten whole after every delivery attempt.
 - Every write is tmp -> fsync -> rename -> fsync dir (through
   L{GroupCommitWriter}). A message is queued once both files are on
   disk, and only then is the client told C{250}; a C{.env} without its
   C{.msg} (a crash between the two renames) was never acknowledged and
   is dropped at load, a C{.msg} without C{.env} likewise.
 - A recipient's state moves only forward: C{pending} -> C{delivered} or
   C{failed}. It is saved right after the reply that decided it, so after
   a crash a recipient that already got a 2xx is not sent the message
   again (the window between the peer's 2xx and our fsync is the one every
   MTA has; RFC 5321 §6.1 accepts a rare duplicate over a loss).
 - A message's files are removed only once every recipient is final and
   any bounce it owes has been stored. Orphans from a crash (a C{.msg}
   without C{.env}, stray tmp files) are removed when the queue is loaded.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Iterable

import attr
from twisted.internet import defer
from twisted.logger import Logger

from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.errorwords import error_words
from twisted_mailhub.store.interfaces import storage_error

log = Logger()

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

_counter = itertools.count(1)


@attr.s(auto_attribs=True)
class Recipient:
    """
    One envelope recipient and what has happened to it so far.

    @ivar code: the last SMTP reply code (0 before any attempt; -1 when the
        connection failed before a reply).
    @ivar reply: the last reply text, or why there was none.
    @ivar remote: the MX host that gave the last reply.
    @ivar expired: whether it failed because the message's time in the
        queue ran out (RFC 3463 4.4.7) rather than on a reply; C{code},
        C{reply} and C{remote} then still say the last try.
    @ivar bounced: whether its failure has been reported to the sender
        (a bounce for it is stored), while other recipients of the same
        message may still be pending.
    @ivar notify: its RCPT's C{NOTIFY} (RFC 3461 §4.1) as
        L{twisted_mailhub.smtp.dsn.parse_notify} keeps it (C{"NEVER"},
        C{"SUCCESS,DELAY"}...), C{""} when not given: failures and delays
        are reported, as before DSN was offered.
    @ivar orcpt: its RCPT's C{ORCPT} (RFC 3461 §4.2) decoded,
        C{"rfc822;bob@b.test"}, or C{""}.
    @ivar owed: the success DSN (RFC 3461 §6.2) owed for it and not yet
        stored: C{"delivered"} or C{"relayed"}, else C{""}. Saved with the
        outcome in one write, so a crash before the report is stored
        leaves it owed and it is made after the restart.
    """

    address: str
    state: str = PENDING
    code: int = 0
    reply: str = ""
    remote: str = ""
    attempts: int = 0
    expired: bool = False
    bounced: bool = False
    notify: str = ""
    orcpt: str = ""
    owed: str = ""

    def wants(self, kind: str) -> bool:
        """
        Whether the sender asked to hear of C{kind} (C{"SUCCESS"},
        C{"FAILURE"}, C{"DELAY"}) for this recipient: as its NOTIFY says,
        or, without one, of failures and delays (RFC 3461 §4.1 leaves that
        choice to the MTA; it is what the hub did before it offered DSN).
        """
        if not self.notify:
            return kind != "SUCCESS"
        return kind in self.notify.split(",")

    @property
    def last_reply(self) -> str:
        """The last try as a person reads it: C{451 4.3.0 busy}, or the reason there was no reply."""
        return f"{self.code} {self.reply}" if self.code > 0 else self.reply

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


@attr.s(auto_attribs=True)
class QueuedMessage:
    """
    One queued message: its envelope, its recipients' state and its timing.

    @ivar sender: the envelope sender; C{""} is the null sender C{<>} (a
        bounce), which never gets a bounce itself.
    @ivar created: when it was queued (seconds since the epoch).
    @ivar next_attempt: when it is due for its next delivery attempt.
    @ivar warned: whether the delay warning has been sent.
    @ivar bounced: whether the bounce for its failed recipients is stored
        (so a crash before the files are removed does not bounce twice).
    @ivar ret: the MAIL's C{RET} (RFC 3461 §4.3): C{"FULL"} (a failure
        DSN returns the whole message), C{"HDRS"} or C{""} (its header).
    @ivar envid: the MAIL's C{ENVID} decoded (RFC 3461 §4.4), or C{""}.
    """

    id: str
    sender: str
    recipients: list[Recipient]
    created: float
    next_attempt: float
    size: int
    attempts: int = 0
    warned: bool = False
    bounced: bool = False
    ret: str = ""
    envid: str = ""

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state == PENDING]

    @property
    def finished(self) -> bool:
        return not self.pending

    def to_json(self) -> bytes:
        return json.dumps(attr.asdict(self), indent=1, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> "QueuedMessage":
        raw = json.loads(data.decode("utf-8"))
        raw["recipients"] = [Recipient(**r) for r in raw["recipients"]]
        return cls(**raw)


def new_queue_id(now: float) -> str:
    """
    A queue id: sortable by arrival, unique within this host.
    """
    return "%x%05x%03x" % (int(now), int((now % 1) * 1_000_000), (os.getpid() * 7 + next(_counter)) % 4096)


class QueueStorage:
    """
    The files of the queue directory.
    """

    def __init__(self, directory: str, writer: Any = None, reactor: Any = None):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.writer = writer or GroupCommitWriter(reactor)
        self._tmp = itertools.count(1)

    def _path(self, qid: str, suffix: str) -> str:
        return os.path.join(self.directory, qid + suffix)

    def _tmp_path(self, qid: str, suffix: str) -> str:
        return self._path(qid, f"{suffix}.tmp{os.getpid()}-{next(self._tmp)}")

    def message_path(self, qid: str) -> str:
        return self._path(qid, ".msg")

    def read_message(self, qid: str) -> bytes:
        with open(self.message_path(qid), "rb") as f:
            return f.read()

    @defer.inlineCallbacks
    def add(self, entry: QueuedMessage, message: bytes):
        """
        Store a new message; the Deferred fires once both files are durable.

        Both writes are handed to the writer at once, so under load they
        share one batch (the C{.msg} first). Nothing is acknowledged before
        both are on disk, and an envelope whose message did not make it
        through a crash is dropped at load: it was never acknowledged.
        """
        writes = [
            self.writer.write(self._tmp_path(entry.id, ".msg"), self.message_path(entry.id), message),
            self.save(entry),
        ]
        try:
            yield defer.gatherResults(writes, consumeErrors=True)
        except defer.FirstError as e:
            # Neither half of a refused message stays (a full disk would
            # keep it full), and the caller sees the write's own error: a
            # full disk is InsufficientStorage (SMTP 452 4.3.1), where the
            # FirstError around it was a "451 local error" and a traceback.
            yield defer.gatherResults([w for w in writes if not w.called] or [defer.succeed(None)], consumeErrors=True).addErrback(lambda _: None)
            self.remove(entry.id)
            raise storage_error(e.subFailure.value)
        return entry.id

    def save(self, entry: QueuedMessage) -> defer.Deferred:
        """
        Durably replace the envelope file of C{entry}.
        """
        return self.writer.write(self._tmp_path(entry.id, ".env"), self._path(entry.id, ".env"), entry.to_json())

    def remove(self, qid: str) -> None:
        """
        Remove a message: the envelope first, so that a crash half-way leaves
        an orphan C{.msg} (cleaned up at load), never an envelope without
        its message.
        """
        for suffix in (".env", ".msg"):
            try:
                os.unlink(self._path(qid, suffix))
            except FileNotFoundError:
                pass

    def load(self, clean: bool = True) -> list[QueuedMessage]:
        """
        Every queued message, oldest first; with C{clean}, also cleans up
        what a crash left (only the process holding the queue's lock may).
        """
        return scan(self.directory, clean=clean)


def scan(directory: str, clean: bool = False) -> list[QueuedMessage]:
    """
    The queued messages in C{directory}, oldest first. With C{clean}, also
    remove tmp files and uncommitted messages (never while a hub runs on
    it: they may be writes in progress).
    """
    entries = []
    names = set(os.listdir(directory))
    for name in sorted(names):
        path = os.path.join(directory, name)
        if ".tmp" in name:
            if clean:
                _unlink(path)
        elif name.endswith(".msg") and name[:-4] + ".env" not in names:
            if clean:
                log.info("queue: removing {name}, never committed (no envelope)", name=name)
                _unlink(path)
        elif name.endswith(".env"):
            qid = name[:-4]
            if qid + ".msg" not in names:
                if clean:
                    log.error("queue: {qid} has an envelope but no message; dropped", qid=qid)
                    _unlink(path)
                continue
            try:
                with open(path, "rb") as f:
                    entries.append(QueuedMessage.from_json(f.read()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("queue: cannot read {name}: {error}; left in place", name=name, error=error_words(e))
    entries.sort(key=lambda e: (e.created, e.id))
    return entries


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_entry(
    sender: str,
    recipients: Iterable[str],
    size: int,
    now: float | None = None,
    ret: str = "",
    envid: str = "",
    notify: dict[str, tuple[str, str]] | None = None,
    delivered: Iterable[Recipient] = (),
) -> QueuedMessage:
    """
    A new queue entry. C{ret}, C{envid}: the MAIL's DSN parameters;
    C{notify}: recipient -> (NOTIFY, ORCPT) as the RCPTs gave them (RFC
    3461 §4), for those that had any. C{delivered}: recipients of the
    same message already delivered into maildrops here whose success DSN
    is owed (L{Recipient.owed}); they are added as they are, so the
    report is queued in the same write as the relayed copy, or not at all.
    """
    now = time.time() if now is None else now
    notify = notify or {}
    return QueuedMessage(
        id=new_queue_id(now),
        sender=sender,
        recipients=[Recipient(r, notify=notify.get(r, ("", ""))[0], orcpt=notify.get(r, ("", ""))[1]) for r in recipients] + list(delivered),
        created=now,
        next_attempt=now,
        size=size,
        ret=ret,
        envid=envid,
    )
