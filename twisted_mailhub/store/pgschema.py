# -*- test-case-name: tests.test_pgstore -*-
"""
The PostgreSQL schema of the hub, its version, and how a database is
brought up to it. One place for every table the PostgreSQL parts use (the
mail store today; the queue, FTP files and accounts share the numbering).

The tables, in the words of the mail store (RFC 3501 §2.3):

 - C{account}: one row per address (lower case).
 - C{mailbox}: one folder of one account, with its UID counters:
   C{uid_validity}, C{uid_next} and C{highest_modseq}. A delivery takes its
   UIDs with one C{UPDATE mailbox SET uid_next = uid_next + n ... RETURNING},
   so two hubs can never hand out the same UID: the row lock orders them.
 - C{message}: the bytes of a message, never changed after insert
   (C{body} is stored uncompressed out of line, so a slice of a big message
   is read without reading it all). Copies in several folders share it.
 - C{mailbox_message}: a message placed in a folder, keyed by
   (mailbox, uid), with its system flags, keywords, C{\\Recent}, the
   C{key} POP3 UIDL shows (RFC 1939 §7) and its size (a copy of
   C{message.size}: a message never changes, and SELECT of a big folder
   then reads this one table, not a join over every message), and
   C{shown_size}: the size of what a session without UTF8 is sent when the
   downgrade of an 8-bit header changes it (NULL: the same as C{size}).
 - C{mailbox_change}: the change journal, one row per (mailbox, modseq):
   which UIDs were added, changed flags or were expunged. Other hubs read it
   after a C{NOTIFY mailhub_changes} to tell their sessions. Entries older
   than C{--journal-retention} are pruned (L{twisted_mailhub.store.pgjournal}).
 - C{subscription}: IMAP LSUB names (RFC 3501 §6.3.6).

C{mailhub_schema} holds the version. A hub creates the tables in an empty
database and upgrades an older schema at start; it refuses a newer one.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 3

# The channel every change is announced on; the payload is
# "<mailbox id> <modseq>" or "<mailbox id> gone".
CHANNEL = "mailhub_changes"

# Upgrades: MIGRATIONS[n] takes a database from version n to n + 1
# (version 0 is an empty database).
MIGRATIONS: dict[int, str] = {
    0: """
CREATE TABLE account (
    id          bigserial PRIMARY KEY,
    address     text NOT NULL UNIQUE            -- localpart@domain, lower case
);

CREATE TABLE mailbox (
    id              bigserial PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES account ON DELETE CASCADE,
    name            text NOT NULL,              -- 'INBOX', 'Work/Projects'
    uid_validity    bigint NOT NULL,
    uid_next        bigint NOT NULL DEFAULT 1,
    highest_modseq  bigint NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);

CREATE TABLE message (
    id          bigserial PRIMARY KEY,
    size        integer NOT NULL,               -- octets as sent to a client
    body        bytea NOT NULL                  -- CRLF line ends, dot-unstuffed
);
-- Out of line and uncompressed: substring() of a big message reads only
-- the pages it needs (streaming a 25 MB FETCH in slices).
ALTER TABLE message ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE TABLE mailbox_message (
    mailbox_id      bigint NOT NULL REFERENCES mailbox ON DELETE CASCADE,
    uid             bigint NOT NULL,
    message_id      bigint NOT NULL REFERENCES message,
    key             text NOT NULL,              -- POP3 UIDL, Maildir base name
    flags           text[] NOT NULL DEFAULT '{}',   -- system flags: \\Seen ...
    keywords        text[] NOT NULL DEFAULT '{}',   -- $Label, ...
    recent          boolean NOT NULL DEFAULT true,  -- no session has seen it yet
    internal_date   double precision NOT NULL,      -- seconds since the epoch
    modseq          bigint NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX mailbox_message_message ON mailbox_message (message_id);
CREATE INDEX mailbox_message_recent ON mailbox_message (mailbox_id) WHERE recent;

CREATE TABLE mailbox_change (
    mailbox_id  bigint NOT NULL REFERENCES mailbox ON DELETE CASCADE,
    modseq      bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('added', 'flags', 'expunged')),
    uids        bigint[] NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailbox_id, modseq)
);

CREATE TABLE subscription (
    account_id  bigint NOT NULL REFERENCES account ON DELETE CASCADE,
    name        text NOT NULL,
    PRIMARY KEY (account_id, name)
);
""",
    # The size beside the flags: loading a folder of 100,000 messages reads
    # mailbox_message alone (bench/cluster.py: the join with message cost
    # about 100 ms of a cold SELECT, and grows with every account's mail).
    1: """
ALTER TABLE mailbox_message ADD COLUMN size integer;
UPDATE mailbox_message mm SET size = m.size FROM message m WHERE m.id = mm.message_id;
ALTER TABLE mailbox_message ALTER COLUMN size SET NOT NULL;
""",
    # The size a session without UTF8 is sent (RFC 6856 §3 for POP3, RFC
    # 6855 for IMAP: the header downgraded, imap/utf8.py) where it differs
    # from C{size}, NULL otherwise; the partial index finds a folder's few
    # such messages without a pass over the rest. (Rows from before keep
    # NULL: the stored size, as they were counted.)
    2: """
ALTER TABLE mailbox_message ADD COLUMN shown_size integer;
CREATE INDEX mailbox_message_shown ON mailbox_message (mailbox_id) WHERE shown_size IS NOT NULL;
""",
}


class SchemaError(Exception):
    """The database's schema is not one this hub can use."""


def table_version(conn: Any, table: str) -> int:
    """
    The version kept in the one-row version table C{table} (C{str}, a
    trusted name such as C{mailhub_schema}) of the database behind C{conn}
    (a psycopg connection); 0 when that table is not there.
    """
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]
    if not exists:
        return 0
    row = conn.execute(f"SELECT version FROM {table}").fetchone()
    return row[0] if row else 0


def migrate(
    conn: Any, table: str, migrations: dict[int, str], known: int, newer: str, error: type[Exception] = SchemaError
) -> tuple[int, int]:
    """
    Bring the database behind C{conn} to version C{known}: run
    C{migrations[v]} (SQL text taking version v to v + 1) for each step it
    has not had, recording the version in the one-row table C{table}, in
    one transaction, under a session advisory lock on C{table}'s name
    taken before that transaction starts (hubs and workers starting
    together do it once). Returns (version before, C{known}).
    Raises C{error} with C{newer} (a format string taking C{before} and
    C{known}) when the database is newer than C{known}.
    """
    # The lock is taken before the transaction starts, not inside it: a
    # backend that looked for the table earlier (check()) keeps a cached
    # "no such table" until its next transaction starts, so a hub that
    # waited inside a transaction for another to create the tables would
    # not see them and create them again (DuplicateTable: two --workers
    # starting on an empty database).
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (table,))
    try:
        if not conn.autocommit:
            conn.commit()
        with conn.transaction():
            before = table_version(conn, table)
            if before > known:
                raise error(newer.format(before=before, known=known))
            if before == 0:
                conn.execute(f"CREATE TABLE {table} (version integer NOT NULL)")
                conn.execute(f"INSERT INTO {table} VALUES (0)")
            for version in range(before, known):
                conn.execute(migrations[version])
            conn.execute(f"UPDATE {table} SET version = %s", (known,))
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (table,))
            if not conn.autocommit:
                conn.commit()
    return before, known


def schema_version(conn: Any) -> int:
    """
    The version of the schema in the database behind C{conn} (a psycopg
    connection); 0 for a database without the hub's tables.
    """
    return table_version(conn, "mailhub_schema")


def upgrade(conn: Any) -> tuple[int, int]:
    """
    Bring the database up to L{SCHEMA_VERSION} (L{migrate}). Returns
    (version before, version after); raises L{SchemaError} for a schema
    newer than this hub knows.
    """
    return migrate(
        conn,
        "mailhub_schema",
        MIGRATIONS,
        SCHEMA_VERSION,
        "the database has schema version {before}; this hub knows up to {known}: upgrade the hub",
    )


def check(conn: Any, create: bool = True) -> None:
    """
    At start: upgrade an empty or older database when C{create}, else
    raise L{SchemaError} unless it is at L{SCHEMA_VERSION}
    (C{mailhub-admin db upgrade} does it by hand).
    """
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION or not create:
        raise SchemaError(
            f"the database has schema version {version}, this hub needs {SCHEMA_VERSION}"
            + (": upgrade the hub" if version > SCHEMA_VERSION else ": run 'mailhub-admin db upgrade'")
        )
    upgrade(conn)
