# -*- test-case-name: tests.test_cluster -*-
"""
Accounts in a PostgreSQL table (C{--auth postgresql:DSN}), seen by every
hub on the database at once.

The table is C{user_account (address, password, quota)}
(L{twisted_mailhub.cluster.schema}); C{password} is what an accounts file
line holds after the C{:}: a plain password or an scrypt hash
(L{twisted_mailhub.accounts.hash_password}). Adding a user is one
C{INSERT} or C{mailhub-admin user add --auth postgresql:DSN ADDRESS}.

How a hub keeps up: L{PostgresAccountBook} is an
L{twisted_mailhub.accounts.AccountBook} (so the realm, SMTP's RCPT check,
quotas and every checker read it unchanged), filled from the table at
start. A thread LISTENs on C{mailhub_accounts}, which the table's trigger
NOTIFYs on every change, and reads the table again; a name the book does
not know is looked up in the table before it is refused, so an account
added a moment ago on another hub logs in even before the notice arrives.
Accounts given with C{--user} or an accounts file stay beside the table's.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable

from twisted.cred import credentials as _credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from twisted_mailhub.accounts import Account, AccountBook, AccountChecker, hash_password
from twisted_mailhub.cluster import schema
from twisted_mailhub.cluster.database import Database, listen_forever
from twisted_mailhub.store.interfaces import StoreError

log = Logger(namespace="mailhub.accounts")

# How long a name missing from the table is not asked about again (a
# spray of unknown RCPT TO names must not become a spray of queries).
MISS_MEMORY = 2.0


def read_accounts(conn: Any) -> list[tuple[str, str, int | None]]:
    """Every row of C{user_account}: (address, password, quota)."""
    return conn.execute("SELECT address, password, quota FROM user_account ORDER BY lower(address)").fetchall()


def find_account(conn: Any, address: str) -> tuple[str, str, int | None] | None:
    """The row for C{address} (any case), or L{None}."""
    return conn.execute(
        "SELECT address, password, quota FROM user_account WHERE lower(address) = lower(%s)", (address,)
    ).fetchone()


def insert_account(conn: Any, address: str, password: str, quota: int | None = None) -> bool:
    """Add a row; L{False} if the address has one already."""
    row = conn.execute(
        "INSERT INTO user_account (address, password, quota) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (address, password, quota),
    ).fetchone()
    return row is not None


def update_password(conn: Any, address: str, password: str) -> bool:
    """Change a row's password; L{False} if there is no such account."""
    return conn.execute(
        "UPDATE user_account SET password = %s WHERE lower(address) = lower(%s)", (password, address)
    ).rowcount > 0


def delete_account(conn: Any, address: str) -> bool:
    """Remove a row; L{False} if there was none."""
    return conn.execute("DELETE FROM user_account WHERE lower(address) = lower(%s)", (address,)).rowcount > 0


class AccountExists(Exception):
    """The address has a row in C{user_account} already."""


class PostgresAccountBook(AccountBook):
    """
    An L{AccountBook} that mirrors the C{user_account} table (see the
    module docstring). L{add} and L{remove} change only this hub's own
    accounts (C{--user}, accounts files); the table is changed with SQL,
    C{mailhub-admin}, or L{add_to_table} and L{remove_from_table} (the web
    API's account writes).
    """

    # a row may get a quota at any time (twisted_mailhub.quota counts always)
    quotas_may_change = True

    def __init__(self, domains: Iterable[str], dsn: str, reactor: Any = None):
        AccountBook.__init__(self, domains)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.dsn = dsn
        self.db = Database(dsn, reactor, what="the accounts database")
        self._local: dict[str, Account] = {}
        self._table: dict[str, Account] = {}
        self._misses: dict[str, float] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        schema.ready(self.db)
        self._install(self.db.run_here(read_accounts))

    # -- keeping up with the table --------------------------------------

    def start(self) -> None:
        """Listen for changes to the table (a daemon thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="mailhub-accounts-listen", daemon=True)
            self._thread.start()
            self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        self._stopping.set()
        self.db.close()

    def _listen(self) -> None:
        def reread(conn):
            rows = read_accounts(conn)
            self.reactor.callFromThread(self._install, rows)

        listen_forever(self.dsn, schema.ACCOUNTS_CHANNEL, reread, reread, self._stopping, log)

    def _account(self, row: tuple[str, str, int | None]) -> Account | None:
        address, password, quota = row
        from twisted_mailhub.accounts import account_name_problem, shown_name

        local, domain = self.split(address)
        why = account_name_problem(local, domain)
        if why is not None:
            # (a row written by hand: mailhub-admin and the API refuse it)
            log.warn("user_account: {address} is not a usable account name ({why}); ignored", address=shown_name(address), why=why)
            return None
        if domain not in self.domains:
            self.domains.append(domain)
        if password.startswith("$scrypt$"):
            return Account(local, domain, password_hash=password, quota=quota)
        return Account(local, domain, password=password, quota=quota)

    def _install(self, rows: list) -> None:
        table = {}
        for row in rows:
            account = self._account(row)
            if account is not None:
                table[self._key(account.localpart, account.domain)] = account
        self._table = table
        self._misses.clear()
        self._accounts = {**table, **self._local}
        self._plain_known = None

    # -- AccountBook ------------------------------------------------------

    def add(self, name: str, password: str, quota: int | None = None) -> Account:
        account = AccountBook.add(self, name, password, quota)
        self._local[self._key(account.localpart, account.domain)] = account
        return account

    def remove(self, name: str) -> Account | None:
        local, domain = self.split(name)
        self._local.pop(self._key(local, domain), None)
        return AccountBook.remove(self, name)

    def add_to_table(self, name: str, password: str) -> defer.Deferred:
        """
        Add a C{user_account} row for C{name} (an address or a bare local
        part) with C{password} as an scrypt hash, as C{mailhub-admin user
        add} does: every hub on the database sees it. A Deferred of the
        L{Account}, here at once; it fails with L{ValueError} for a name
        that is no mailbox, L{AccountExists}, or L{StoreError} when the
        database cannot be reached.
        """
        from twisted_mailhub.accounts import check_account_name

        try:
            # The hub's one rule (accounts.account_name_problem).
            local, domain = check_account_name(name, self.default_domain)
        except ValueError as e:
            return defer.fail(e)
        address = f"{local}@{domain}"

        def insert(conn):
            stored = hash_password(password)  # scrypt: 50 ms of CPU, here in a thread
            return stored if insert_account(conn, address, stored) else None

        def inserted(stored):
            if stored is None:
                raise AccountExists(address)
            account = self._account((address, stored, None))
            key = self._key(account.localpart, account.domain)
            self._table[key] = account
            self._accounts[key] = self._local.get(key, account)
            self._plain_known = None
            self._misses.pop(key, None)
            log.info("accounts: {address} added to the user_account table", address=address)
            return account

        return self.db.run(insert).addCallback(inserted)

    def remove_from_table(self, name: str) -> defer.Deferred:
        """
        Delete C{name}'s C{user_account} row, so it can log in on no hub
        (its mail stays); an account of this hub's own (C{--user}, an
        accounts file) is removed here too. A Deferred of whether there was
        anything to remove; L{StoreError} when the database cannot be
        reached.
        """
        local, domain = self.split(name)
        key = self._key(local, domain)

        def deleted(gone):
            self._table.pop(key, None)
            local_one = self.remove(name)
            if gone:
                log.info("accounts: {address} removed from the user_account table", address=f"{local}@{domain}")
            return bool(gone or local_one)

        return self.db.run(delete_account, f"{local}@{domain}").addCallback(deleted)

    def replace_with(self, other: AccountBook) -> tuple[int, int]:
        if other is self:
            return 0, 0
        return AccountBook.replace_with(self, other)

    def find(self, name: str | bytes) -> Account | None:
        found = AccountBook.find(self, name)
        if found is not None:
            return found
        if isinstance(name, bytes):
            try:
                name = name.decode("utf-8")
            except UnicodeDecodeError:
                return None
        local, domain = self.split(name)
        key = self._key(local, domain)
        now = self.reactor.seconds()
        if now - self._misses.get(key, -MISS_MEMORY) < MISS_MEMORY:
            return None
        try:
            row = self.db.run_here(find_account, f"{local}@{domain}")
        except StoreError as e:
            log.warn("accounts: cannot look up {name}: {why}", name=key, why=str(e))
            return None
        if row is None:
            if len(self._misses) > 10_000:
                self._misses.clear()
            self._misses[key] = now
            return None
        account = self._account(row)
        if account is not None:
            self._table[key] = account
            self._accounts[key] = account
            self._plain_known = None
        return account


@implementer(ICredentialsChecker)
class PostgresAccountsChecker:
    """
    What C{--auth postgresql:DSN} gives: the hub turns it into its
    L{PostgresAccountBook} (L{account_book}); used on its own, it checks
    passwords against the table as L{AccountChecker} does.
    """

    credentialInterfaces = (_credentials.IUsernamePassword, _credentials.IUsernameHashedPassword)

    def __init__(self, dsn: str):
        self.dsn = dsn
        self._book: PostgresAccountBook | None = None

    def account_book(self, domains: Iterable[str], reactor: Any = None) -> PostgresAccountBook:
        """
        The book over the table (made once: a reload reads the table again
        rather than opening another connection).

        @raise AccountsFileError: the database cannot be reached or its
            tables are at another version (one line saying so).
        """
        from twisted_mailhub.accounts import AccountsFileError

        try:
            if self._book is None:
                self._book = PostgresAccountBook(domains, self.dsn, reactor)
            else:
                self._book._install(self._book.db.run_here(read_accounts))
        except (StoreError, schema.SchemaError) as e:
            # one line for the start-up error (tap.makeService prints it)
            raise AccountsFileError(f"postgresql: {e}") from None
        return self._book

    def requestAvatarId(self, credentials):
        return AccountChecker(self.account_book(["localhost"])).requestAvatarId(credentials)
