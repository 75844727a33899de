# -*- test-case-name: tests.test_cluster -*-
"""
C{mailhub-admin}'s PostgreSQL commands:

 - C{user add|passwd|remove|list --auth postgresql:DSN}: the accounts in
   the C{user_account} table (every hub on the database sees a change at
   once; no reload signal is needed).
 - C{db upgrade --dsn DSN}: create or migrate every table of the hub (the
   mail store's and the cluster's) to the version this hub needs.
 - C{db version --dsn DSN}: the versions in the database and the ones
   this hub needs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted_mailhub.cluster import accounts as table
from twisted_mailhub.cluster import schema
from twisted_mailhub.cluster.database import connect, driver, reason
from twisted_mailhub.store.interfaces import StoreError

PREFIX = "postgresql:"


class TableError(Exception):
    """A failure to report as one line (exit status 1)."""


def dsn_of(auth: str) -> str:
    """The DSN in C{postgresql:DSN}; L{TableError} for anything else."""
    if not auth.startswith(PREFIX) or not auth[len(PREFIX):].strip():
        raise TableError(f"--auth {auth}: expected postgresql:DSN (a libpq connection string)")
    return auth[len(PREFIX):]


def _connection(dsn: str) -> Any:
    try:
        conn = connect(dsn, "the accounts database")
        schema.check(conn)
    except (StoreError, schema.SchemaError) as e:
        raise TableError(str(e)) from None
    return conn


def user_in_table(args: Any, entry: Any) -> str:
    """
    C{mailhub-admin user add|passwd|remove|list} on the table that
    C{args.auth} names. C{entry(args)} gives the new C{address:password}
    line (as for a file: scrypt unless C{--plain}).
    """
    dsn = dsn_of(args.auth)
    command = args.user_command
    address = getattr(args, "address", None)
    if address is not None and "@" not in address:
        address = f"{address}@{args.domain}"
    psycopg = driver()
    with _connection(dsn) as conn:
        try:
            if command == "list":
                rows = table.read_accounts(conn)
                lines = [
                    f"{a}\t{'scrypt' if p.startswith('$scrypt$') else 'plain'}" + (f"\tquota={q}" if q is not None else "")
                    for a, p, q in rows
                ]
                return "\n".join(lines) if lines else "no accounts in the user_account table"
            if command == "remove":
                if not table.delete_account(conn, address):
                    raise TableError(f"no account {address} in the user_account table")
                return f"removed {address} from the user_account table (its mail stays)"
            password = entry(args, address).partition(":")[2]
            if command == "add":
                quota = _quota(getattr(args, "quota", None))
                if not table.insert_account(conn, address, password, quota):
                    raise TableError(f"{address} already has an account in the user_account table (change its password with: user passwd)")
                return f"added {address} to the user_account table"
            if not table.update_password(conn, address, password):
                raise TableError(f"no account {address} in the user_account table")
            return f"changed the password of {address} in the user_account table"
        except psycopg.Error as e:
            raise TableError(f"the accounts database: {reason(e)}") from None


def accounts_in_table(auth: str) -> list[str]:
    """
    The addresses in the C{user_account} table C{auth} (C{postgresql:DSN})
    names.

    @raise TableError: the database cannot be read (one line).
    """
    psycopg = driver()
    with _connection(dsn_of(auth)) as conn:
        try:
            return [address for address, _password, _quota in table.read_accounts(conn)]
        except psycopg.Error as e:
            raise TableError(f"the accounts database: {reason(e)}") from None


def _quota(text: str | None) -> int | None:
    if text is None:
        return None
    from twisted_mailhub.quota import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise TableError(f"--quota {e}") from None


def db_main(argv: list[str]) -> int:
    """
    C{mailhub-admin db upgrade|version --dsn DSN}; returns the exit status.
    """
    parser = argparse.ArgumentParser(prog="mailhub-admin db", description="The hub's PostgreSQL tables: create or migrate them, or show their versions.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("upgrade", "create or migrate every table to the version this hub needs"), ("version", "show the versions in the database and the ones this hub needs")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--dsn", required=True, help="the database, a libpq connection string (the DSN of --store/--auth postgresql:DSN)")
    args = parser.parse_args(argv)
    # --dsn postgresql:DSN as the hub's options take it, or the bare DSN
    # (which may itself be a postgresql:// URL)
    dsn = args.dsn[len(PREFIX):] if args.dsn.startswith(PREFIX) and not args.dsn.startswith("postgresql://") else args.dsn
    from twisted_mailhub.store import pgschema

    psycopg = driver()
    try:
        with connect(dsn) as conn:
            if args.command == "version":
                print(f"mail store tables: version {pgschema.schema_version(conn)} (this hub needs {pgschema.SCHEMA_VERSION})")
                print(f"cluster tables: version {schema.schema_version(conn)} (this hub needs {schema.SCHEMA_VERSION})")
                return 0
            for label, part in (("mail store tables", pgschema), ("cluster tables", schema)):
                before, after = part.upgrade(conn)
                print(f"{label}: " + (f"version {after}, nothing to do" if before == after else f"version {before} -> {after}"))
    except (StoreError, pgschema.SchemaError, schema.SchemaError) as e:
        print(f"mailhub-admin db: {e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:
        print(f"mailhub-admin db: {reason(e)}", file=sys.stderr)
        return 1
    return 0
