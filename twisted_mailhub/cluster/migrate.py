# -*- test-case-name: tests.test_migrate -*-
"""
C{mailhub-admin migrate --from DATA --to postgresql:DSN}: move a hub's
data folder into PostgreSQL so that its clients go on as before.

What is copied, and what stays the same:

 - every account's Maildir++ folders (C{DATA/mail/<domain>/<localpart>/}):
   each folder's UIDVALIDITY and UIDNEXT, each message's UID, bytes,
   system flags, keywords, internal date, C{\\Recent}, its modseq
   (CONDSTORE; the folder's HIGHESTMODSEQ never below the old hub's) and
   its POP3 UIDL (the Maildir base name), and the IMAP subscriptions;
   an IMAP or POP3 client needs no resync;
 - the FTP/SFTP files (C{DATA/ftp/}: homes and C{public}), as large
   objects in the C{ftp_node} tree (L{twisted_mailhub.ftp.pgfs});
 - the outbound queue (C{DATA/queue/}), recipients' state included;
 - with C{--accounts FILE}, the accounts of an accounts file into
   C{user_account} (for C{--auth postgresql:DSN});
 - with C{--keys-to NEWDATA} (once per hub), the hub's identity, which
   lives in files, not in the database: the SSH host keys (C{DATA/ssh/}:
   clients' C{known_hosts} stay valid), the DKIM keys (C{DATA/dkim/}: the
   published DNS records stay right) and the TLS certificate
   (C{DATA/tls/}). Without it, the command says which folders to copy
   where. A file already in NEWDATA with other content is left alone and
   named (a hub's identity is never overwritten silently).

An account that already has mail in the database is left alone (said in
the output), so a second run copies only what the first did not. Stop the
hub first: what arrives during the copy would not be copied.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from twisted_mailhub.cluster import schema
from twisted_mailhub.cluster.database import connect, driver, reason
from twisted_mailhub.store.interfaces import INBOX, StoreError


def _accounts_in(mail_root: str) -> list[str]:
    """The addresses with a Maildir under C{mail_root} (C{DATA/mail})."""
    found = []
    if not os.path.isdir(mail_root):
        return found
    for domain in sorted(os.listdir(mail_root)):
        domain_path = os.path.join(mail_root, domain)
        if domain.startswith(".") or not os.path.isdir(domain_path):
            continue
        for local in sorted(os.listdir(domain_path)):
            if os.path.isdir(os.path.join(domain_path, local, "cur")) or os.path.isdir(os.path.join(domain_path, local)):
                found.append(f"{local}@{domain}")
    return found


def copy_account(conn: Any, store: Any, address: str) -> tuple[int, int] | None:
    """
    Copy one account's folders, messages and subscriptions in one
    transaction. Returns (folders, messages), or L{None} when the account
    already has messages in the database (nothing is changed then).
    """
    from twisted_mailhub.store.base import downgraded_size_text, split_flags

    account = store.account(address)
    with conn.transaction():
        row = conn.execute("SELECT id FROM account WHERE address = %s", (address,)).fetchone()
        if row is not None:
            held = conn.execute(
                "SELECT count(*) FROM mailbox_message JOIN mailbox ON mailbox.id = mailbox_id WHERE account_id = %s", (row[0],)
            ).fetchone()[0]
            if held:
                return None
            # Made empty by a hub start (INBOX only): replaced by the copy.
            conn.execute("DELETE FROM mailbox WHERE account_id = %s", (row[0],))
            conn.execute("DELETE FROM subscription WHERE account_id = %s", (row[0],))
            account_id = row[0]
        else:
            account_id = conn.execute("INSERT INTO account (address) VALUES (%s) RETURNING id", (address,)).fetchone()[0]
        folders = messages = 0
        top_validity = 0
        for name in account.folders():
            folder = account.folder(name)
            infos = folder.messages()
            recent = set(folder.recent())
            modseqs = {info.uid: max(1, folder.modseq(info.uid)) for info in infos}
            # The folder's HIGHESTMODSEQ, not just its messages' highest: a
            # Maildir folder shows at least the time it was read, and a
            # client keeps what it was shown; a lower value on the new hub
            # would hide the changes made there from its CHANGEDSINCE
            # (RFC 7162 §3.1.2.1: it never goes down while UIDVALIDITY stays).
            highest = max([getattr(folder, "highest_modseq", 0), *modseqs.values()])
            uid_next = max([folder.uid_next] + [info.uid + 1 for info in infos])
            mailbox_id = conn.execute(
                "INSERT INTO mailbox (account_id, name, uid_validity, uid_next, highest_modseq) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (account_id, name, folder.uid_validity, uid_next, highest),
            ).fetchone()[0]
            top_validity = max(top_validity, folder.uid_validity)
            for info in infos:
                body = folder.read(info.uid)
                message_id = conn.execute(
                    "INSERT INTO message (size, body) VALUES (%s, %s) RETURNING id", (len(body), body)
                ).fetchone()[0]
                system, keywords = split_flags(info.flags)
                shown = downgraded_size_text(body)  # (the size a session without UTF8 is sent)
                conn.execute(
                    "INSERT INTO mailbox_message (mailbox_id, uid, message_id, key, flags, keywords, recent, internal_date, modseq, size, shown_size)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (mailbox_id, info.uid, message_id, info.key, sorted(system), sorted(keywords), info.uid in recent, info.internal_date,
                     modseqs[info.uid], len(body), int(shown) if shown else None),
                )
                messages += 1
            folders += 1
        for name in account.subscriptions():
            conn.execute(
                "INSERT INTO subscription (account_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (account_id, name)
            )
        if top_validity:
            # New folders made later get a UIDVALIDITY above every copied one.
            conn.execute("CREATE SEQUENCE IF NOT EXISTS mailhub_uid_validity")
            conn.execute("SELECT setval('mailhub_uid_validity', GREATEST(nextval('mailhub_uid_validity'), %s))", (top_validity,))
    return folders, messages


def copy_queue(conn: Any, directory: str) -> int:
    """Copy the disk queue's messages into C{queue_message}; how many."""
    import json

    import attr

    from twisted_mailhub.queue.storage import scan

    if not os.path.isdir(directory):
        return 0
    copied = 0
    for entry in scan(directory):
        with open(os.path.join(directory, entry.id + ".msg"), "rb") as f:
            body = f.read()
        row = conn.execute(
            "INSERT INTO queue_message (id, envelope, body, created, next_attempt) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING RETURNING 1",
            (entry.id, json.dumps(attr.asdict(entry)), body, entry.created, entry.next_attempt),
        ).fetchone()
        copied += row is not None
    return copied


def copy_accounts_file(conn: Any, path: str, domain: str) -> tuple[int, int]:
    """Copy an accounts file into C{user_account}: (added, already there)."""
    from twisted_mailhub.accounts import AccountBook
    from twisted_mailhub.cluster.accounts import insert_account

    book = AccountBook([domain])
    book.load_file(path)
    added = there = 0
    for account in book:
        password = account.password_hash or account.password or ""
        if insert_account(conn, account.address, password, account.quota):
            added += 1
        else:
            there += 1
    return added, there


# The folders of a data folder that hold the hub's identity.
IDENTITY = (
    ("ssh", "SSH host keys"),
    ("dkim", "DKIM keys"),
    ("tls", "TLS certificate and key"),
)


def identity_files(data: str) -> list[str]:
    """The files under C{data}'s identity folders (L{IDENTITY}), relative to C{data}."""
    found = []
    for folder, _ in IDENTITY:
        top = os.path.join(data, folder)
        for root, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                found.append(os.path.relpath(os.path.join(root, name), data))
    return found


def copy_identity(data: str, target: str) -> tuple[list[str], list[str]]:
    """
    Copy the identity files of C{data} into the data folder C{target}
    (made if missing), keeping their modes (private keys stay 0600) and
    making each folder 0700. Returns (copied or already the same, left
    alone because C{target} has a different file there).
    """
    import filecmp
    import shutil

    copied, kept = [], []
    for relative in identity_files(data):
        source, destination = os.path.join(data, relative), os.path.join(target, relative)
        folder = os.path.dirname(destination)
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        if os.path.exists(destination):
            (copied if filecmp.cmp(source, destination, shallow=False) else kept).append(relative)
            continue
        shutil.copy2(source, destination)
        copied.append(relative)
    return copied, kept


def migrate(data: str, dsn: str, accounts_file: str | None = None, domain: str = "localhost", say: Callable[[str], None] = print, keys_to: list[str] | None = None) -> None:
    """
    Copy the data folder C{data} into the database at C{dsn} (see the
    module docstring), saying what was done, a line at a time.

    @raise StoreError: the database cannot be reached.
    @raise SchemaError: its tables are at another version.
    """
    from twisted_mailhub.ftp.pgfs import copy_tree
    from twisted_mailhub.store import pgschema
    from twisted_mailhub.store.maildir import MaildirStore

    with connect(dsn, "the database") as conn:
        pgschema.check(conn)
        schema.check(conn)
        if accounts_file:
            added, there = copy_accounts_file(conn, accounts_file, domain)
            say(f"accounts: {added} copied from {accounts_file}" + (f", {there} already in the database" if there else ""))
        store = MaildirStore(os.path.join(data, "mail"))
        total = 0
        for address in _accounts_in(os.path.join(data, "mail")):
            done = copy_account(conn, store, address)
            if done is None:
                say(f"{address}: already has mail in the database; left alone")
                continue
            folders, messages = done
            total += messages
            say(f"{address}: {folders} folder(s), {messages} message(s); UIDs, UIDVALIDITY, flags and UIDLs kept")
        ftp_root = os.path.join(data, "ftp")
        if os.path.isdir(ftp_root):
            folders, files = copy_tree(conn, ftp_root, [])
            say(f"FTP files: {files} file(s) in {folders} folder(s)")
        queued = copy_queue(conn, os.path.join(data, "queue"))
        if queued:
            say(f"queue: {queued} message(s)")
    _identity(data, keys_to or [], say)
    say(f"done: {total} message(s) copied; start the hubs with --store postgresql:DSN --ftp-filesystem postgresql")


def _identity(data: str, targets: list[str], say: Callable[[str], None]) -> None:
    """Copy, or say where to copy, the hub's identity files (L{copy_identity})."""
    present = [(folder, what) for folder, what in IDENTITY if any(f.startswith(folder + os.sep) for f in identity_files(data))]
    if not present:
        return
    named = ", ".join(f"{what} ({os.path.join(data, folder)}/)" for folder, what in present)
    if not targets:
        say(
            f"identity: not in the database: copy {named} into the data folder (--data) of every hub, "
            "so clients see the same SSH host key and certificate and DKIM signatures match the DNS records; "
            "or run again with --keys-to NEWDATA for each hub"
        )
        return
    for target in targets:
        copied, kept = copy_identity(data, target)
        say(f"identity: {len(copied)} file(s) of {named} in {target}")
        for relative in kept:
            say(f"identity: {os.path.join(target, relative)} differs from {os.path.join(data, relative)}; left alone")


def main(argv: list[str]) -> int:
    """C{mailhub-admin migrate --from DATA --to postgresql:DSN}; the exit status."""
    parser = argparse.ArgumentParser(
        prog="mailhub-admin migrate",
        description="Copy a hub's data folder (Maildir store, FTP files, queue) into PostgreSQL with UIDs, UIDVALIDITY, flags and POP3 UIDLs unchanged. Stop the hub first.",
    )
    parser.add_argument("--from", dest="data", required=True, help="the hub's data folder (its --data)")
    parser.add_argument("--to", dest="dsn", required=True, help="postgresql:DSN, the database the hubs will use")
    parser.add_argument("--accounts", default=None, help="also copy this accounts file into the user_account table (for --auth postgresql:DSN)")
    parser.add_argument("--domain", default="localhost", help="the default domain of --accounts, for bare names (default: localhost)")
    parser.add_argument(
        "--keys-to", action="append", default=[], metavar="NEWDATA",
        help="also copy the SSH host keys, DKIM keys and TLS certificate into this new hub's data folder (repeat for each hub)",
    )
    args = parser.parse_args(argv)
    if not args.dsn.startswith("postgresql:") or not args.dsn.partition(":")[2].strip():
        print(f"mailhub-admin migrate: --to {args.dsn}: expected postgresql:DSN", file=sys.stderr)
        return 2
    dsn = args.dsn.partition(":")[2]
    if not os.path.isdir(os.path.join(args.data, "mail")) and not os.path.isdir(os.path.join(args.data, "ftp")):
        print(f"mailhub-admin migrate: {args.data} holds no mail/ or ftp/ folder: not a hub's data folder", file=sys.stderr)
        return 1
    from twisted_mailhub.accounts import AccountsFileError
    from twisted_mailhub.store import pgschema

    psycopg = driver()
    try:
        migrate(args.data, dsn, args.accounts, args.domain, keys_to=args.keys_to)
    except (StoreError, pgschema.SchemaError, schema.SchemaError, AccountsFileError) as e:
        print(f"mailhub-admin migrate: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailhub-admin migrate: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:
        print(f"mailhub-admin migrate: the database: {reason(e)}; what was copied before stays", file=sys.stderr)
        return 1
    return 0
