# -*- test-case-name: tests.test_cluster -*-
"""
The PostgreSQL tables several hubs share besides the mail store, and their
version (the mail store's own tables and version are in
L{twisted_mailhub.store.pgschema}; both live in one database and are
brought up together by C{mailhub-admin db upgrade}).

 - C{user_account}: one row per account (C{--auth postgresql:DSN}).
   C{password} holds the plain password or an scrypt hash, exactly as an
   accounts file line does (L{twisted_mailhub.accounts.hash_password});
   C{quota} the account's own storage quota in octets (NULL: the hub's
   C{--quota}). Adding a user is one C{INSERT}; a trigger NOTIFYs
   C{mailhub_accounts} so every hub sees it at once.
 - C{login_failure}: the login throttle's counters (failures in a row per
   client address and per login name), shared by every hub.
 - C{queue_message}: one row per queued outbound message (C{--queue
   postgresql}): its bytes, its envelope with each recipient's state (the
   JSON the Maildir queue keeps in C{<id>.env}), when it is due, and which
   hub holds it (a lease) while it is being sent.
 - C{ftp_node}: the FTP/SFTP file system (C{--ftp-filesystem
   postgresql}): one row per file or folder, keyed by (parent, name); a
   file's bytes are a large object, read and written in chunks. C{mode}
   holds the permission bits a client set (SFTP SETSTAT, FTP SITE CHMOD;
   L{twisted_mailhub.ftp.vfs.kept_mode}), NULL the defaults (files 0644,
   folders 0755); C{modified} the modification time, a folder's moved
   when an entry in it is added, removed or renamed, as on disk. No
   access time is kept (every download would be a write on the database).

C{mailhub_cluster_schema} holds the version. A hub creates the tables in a
database that has none and migrates older ones at its start, as the mail
store does (L{pgschema.migrate}: one transaction under an advisory lock,
so hubs and workers starting together migrate once); C{mailhub-admin db
upgrade} does the same by hand. A newer version than the hub knows is
refused at start, saying to upgrade the hub.
"""

from __future__ import annotations

from typing import Any

from twisted_mailhub.store import pgschema

SCHEMA_VERSION = 2

# NOTIFY channels
ACCOUNTS_CHANNEL = "mailhub_accounts"
QUEUE_CHANNEL = "mailhub_queue"

# Upgrades: MIGRATIONS[n] takes the tables from version n to n + 1
# (version 0: none of them).
MIGRATIONS: dict[int, str] = {
    0: """
CREATE TABLE user_account (
    address     text NOT NULL,                  -- localpart@domain
    password    text NOT NULL,                  -- plain, or $scrypt$... (accounts.py)
    quota       bigint CHECK (quota >= 0)       -- octets; NULL: the hub's --quota
);
CREATE UNIQUE INDEX user_account_address ON user_account (lower(address));

CREATE FUNCTION user_account_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mailhub_accounts', '');
    RETURN NULL;
END $$;
CREATE TRIGGER user_account_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON user_account
    FOR EACH STATEMENT EXECUTE FUNCTION user_account_changed();

CREATE TABLE login_failure (
    key         text PRIMARY KEY,               -- 'ip 192.0.2.1' or 'user alice'
    failures    integer NOT NULL,               -- in a row
    last_at     double precision NOT NULL       -- seconds since the epoch
);

CREATE TABLE queue_message (
    id              text PRIMARY KEY,           -- the queue id a 250 reply names
    envelope        jsonb NOT NULL,             -- sender, recipients and their state
    body            bytea NOT NULL,             -- CRLF, not dot-stuffed
    created         double precision NOT NULL,  -- seconds since the epoch
    next_attempt    double precision NOT NULL,
    leased_by       text,                       -- the hub sending it now
    lease_until     timestamptz,                -- after this, another hub may
    removed         boolean NOT NULL DEFAULT false  -- removed while being sent
);
CREATE INDEX queue_message_due ON queue_message (next_attempt) WHERE NOT removed;

CREATE TABLE ftp_node (
    id          bigserial PRIMARY KEY,
    parent_id   bigint REFERENCES ftp_node ON DELETE CASCADE,  -- NULL: the root
    name        text NOT NULL,                  -- one path segment; '' for the root
    is_folder   boolean NOT NULL,
    size        bigint NOT NULL DEFAULT 0,      -- octets of a file
    modified    double precision NOT NULL,      -- seconds since the epoch
    content     oid,                            -- a file's large object
    UNIQUE NULLS NOT DISTINCT (parent_id, name)
);
""",
    # 2: the permission bits of a file or folder (NULL: 0644 / 0755, what
    # every row had before).
    1: """
ALTER TABLE ftp_node ADD COLUMN mode integer CHECK (mode BETWEEN 0 AND 4095);
""",
}


class SchemaError(Exception):
    """The database's tables are not at a version this hub can use."""


def schema_version(conn: Any) -> int:
    """
    The version of these tables in the database behind C{conn}; 0 when
    they are not there.
    """
    return pgschema.table_version(conn, "mailhub_cluster_schema")


def upgrade(conn: Any) -> tuple[int, int]:
    """
    Bring the tables up to L{SCHEMA_VERSION} in one transaction under an
    advisory lock (hubs starting together do it once; the store's
    L{pgschema.migrate}). Returns (version before, version after);
    L{SchemaError} for a newer version.
    """
    return pgschema.migrate(
        conn,
        "mailhub_cluster_schema",
        MIGRATIONS,
        SCHEMA_VERSION,
        "the database's cluster tables are at version {before}; this hub knows up to {known}: upgrade the hub",
        SchemaError,
    )


def check(conn: Any) -> None:
    """
    At a hub's start: create the tables in a database without them and
    migrate older ones (L{upgrade}: under an advisory lock, so hubs and
    workers starting together migrate once, the others waiting for it);
    raise L{SchemaError}, saying to upgrade the hub, for a newer version
    than L{SCHEMA_VERSION}.
    """
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the database's cluster tables are at version {version}, newer than this hub's {SCHEMA_VERSION}: upgrade the hub"
        )
    upgrade(conn)


def ready(database: Any) -> None:
    """
    L{check} through a L{twisted_mailhub.cluster.database.Database}, once per
    DSN in this process (the accounts, queue and FTP parts all call it).
    """
    if database.dsn in _checked:
        return
    database.run_here(check, deadline=None)  # (no deadline: it may wait for another hub's migration)
    _checked.add(database.dsn)


_checked: set[str] = set()
