# -*- test-case-name: tests.test_pgjournal -*-
"""
Pruning the PostgreSQL store's change journal (C{mailbox_change}, see
L{twisted_mailhub.store.pgschema}) so it does not grow for ever.

What the journal is for, and so what must be kept:

 - A hub tells its sessions of other hubs' changes by reading the journal
   after a C{NOTIFY}, and catches up from it after its C{LISTEN}
   connection was lost. It needs the entries above the modseq it last
   applied (its watermark) for each folder it holds.
 - IMAP clients do not read it: CONDSTORE's C{CHANGEDSINCE} and QRESYNC's
   C{SELECT} (RFC 7162) answer from each message's own modseq and the
   UIDs that exist now (C{VANISHED (EARLIER)} names every UID below
   UIDNEXT that is gone, the superset §3.2.5.1 allows), so a client may
   come back after any time and is never refused.

So entries older than C{--journal-retention} seconds (default a day) are
deleted. The floor of a mailbox is then implicit: the modseqs below its
oldest remaining entry. A hub whose watermark is below the floor (it was
cut off from the database longer than the retention, or held a folder
nobody looked at) finds a modseq missing from what it reads (every change
takes the next modseq and journals it in the same transaction), reads the
folder again and tells its sessions the difference: EXPUNGE/VANISHED,
EXISTS and FETCH FLAGS, as a full resync would
(L{twisted_mailhub.store.postgresql.PostgresFolder._resync}).

One hub prunes for all: every hub on the database tries every
L{interval} seconds to take a session-level advisory lock on its pruning
connection; the one that holds it deletes, the others do nothing until
that hub (or its connection) goes away and releases the lock.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger
from twisted.python import usage

log = Logger(namespace="mailhub.journal")

# Default retention of journal entries, in seconds.
RETENTION = 86400
# The advisory lock (two-int form) the pruning hub holds; POP3's maildrop
# locks use class 1.
LOCK = (2, 1)
# Most rows one DELETE removes (a long backlog goes in several steps
# rather than one long transaction).
BATCH = 50_000

option_parameters = [
    [
        "journal-retention",
        None,
        str(RETENTION),
        "With --store postgresql: seconds of the change journal (mailbox_change) to keep; older entries are "
        "pruned by one hub. A hub cut off from the database longer than this reads its folders again.",
    ],
]


def check_options(options: Any) -> None:
    """C{--journal-retention}: a whole number of seconds, at least 1."""
    try:
        value = int(options.get("journal-retention", RETENTION))
    except (TypeError, ValueError):
        raise usage.UsageError(f"--journal-retention {options.get('journal-retention')}: expected a number of seconds") from None
    if value < 1:
        raise usage.UsageError("--journal-retention: at least 1 second")
    from twisted_mailhub.optionvalues import LONGEST

    if value > LONGEST:
        raise usage.UsageError(f"--journal-retention {value}: at most {LONGEST} seconds (a year)")
    options["journal-retention"] = value


def interval(retention: float) -> float:
    """Seconds between two prunings: a quarter of the retention, 1 s to 5 min."""
    return max(1.0, min(300.0, retention / 4))


def prune(conn: Any, retention: float, most: int = BATCH) -> int:
    """
    Delete up to C{most} journal entries older than C{retention} seconds
    (the oldest first); how many went. C{conn}: an autocommit psycopg
    connection.
    """
    return conn.execute(
        "DELETE FROM mailbox_change WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM mailbox_change WHERE at < now() - make_interval(secs => %s) LIMIT %s))",
        (retention, most),
    ).rowcount


class JournalPruner(service.Service):
    """
    Every L{interval} seconds: become the pruning hub if no other hub is
    (L{LOCK}), and if this one is, L{prune}. C{database}: a
    L{twisted_mailhub.cluster.database.Database} with one worker thread
    (so the connection that holds the lock is the one that prunes).
    """

    def __init__(self, database: Any, retention: float, clock: Any = None):
        self.database = database
        self.retention = retention
        self.clock = clock if clock is not None else database.reactor
        self._holder: Any = None  # the connection holding LOCK
        self._trouble = False
        self._loop: task.LoopingCall | None = None
        self.pruned = 0  # entries this hub deleted

    def startService(self) -> None:
        service.Service.startService(self)
        self._loop = task.LoopingCall(self.run_once)
        self._loop.clock = self.clock
        self._loop.start(interval(self.retention), now=False)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _prune_if_holder(self, conn: Any) -> int | None:
        if conn is not self._holder:
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK).fetchone()[0]:
                return None
            self._holder = conn
            log.info(
                "journal: this hub prunes the change journal for every hub on the database "
                "(entries older than {retention} s, every {every:g} s)",
                retention=self.retention, every=interval(self.retention),
            )
        total = 0
        while True:
            gone = prune(conn, self.retention)
            total += gone
            if gone < BATCH:
                return total

    def run_once(self):
        """One round; a Deferred that never fails (a trouble is logged once)."""
        d = self.database.run(self._prune_if_holder)

        def done(gone):
            if self._trouble:
                log.info("journal: the database is back; pruning again")
                self._trouble = False
            if gone:
                self.pruned += gone
                log.info("journal: pruned {count} change(s) older than {retention} s", count=gone, retention=self.retention)

        def failed(reason):
            if not self._trouble:
                self._trouble = True
                log.warn("journal: cannot prune now ({why}); trying again every {every:g} s", why=str(reason.value), every=interval(self.retention))

        return d.addCallbacks(done, failed)


def install(hub: Any) -> None:
    """With a PostgreSQL store: one L{JournalPruner} on its database."""
    store = hub.store
    if type(store).__name__ != "PostgresStore":
        return
    from twisted_mailhub.cluster.database import Database

    database = Database(store.dsn, hub.reactor, workers=1, what="the mail database")
    hub.add_service(JournalPruner(database, float(hub.options.get("journal-retention", RETENTION))))
