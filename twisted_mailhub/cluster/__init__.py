"""
What several hubs on one PostgreSQL database share besides the mail store
(which is L{twisted_mailhub.store.postgresql}): accounts (C{--auth
postgresql:DSN}), the login throttle's counters, the tables' schema and its
version, and the database helper they use.

 - L{twisted_mailhub.cluster.schema}: the tables of this package, the outbound
   queue and the FTP file system, and their version
 - L{twisted_mailhub.cluster.database}: psycopg connections from threads
 - L{twisted_mailhub.cluster.accounts}: accounts in a table
 - L{twisted_mailhub.cluster.throttle}: login failures counted across hubs
"""

import sys
from typing import Any


def table_checkers(checkers: Any) -> list:
    """
    The C{--auth postgresql:DSN} checkers
    (L{twisted_mailhub.cluster.accounts.PostgresAccountsChecker}) among
    C{checkers}, a list of credential checkers. Their module is looked at
    only if it is loaded: the C{--auth postgresql} plugin imports it to
    make one, and a hub without one does not import the PostgreSQL code
    to ask (about 1 MB of memory).
    """
    accounts = sys.modules.get("twisted_mailhub.cluster.accounts")
    if accounts is None:
        return []
    return [c for c in checkers if isinstance(c, accounts.PostgresAccountsChecker)]


def shared_throttle_dsn(options: Any) -> str | None:
    """
    The database whose C{login_failure} table the login throttle counts in
    (L{twisted_mailhub.cluster.throttle}): C{--store postgresql:DSN}'s,
    else the first C{--auth postgresql:DSN}'s; L{None} (each hub counts on
    its own) when neither is given. C{options} is the hub's parsed
    command line (a mapping).
    """
    store = options.get("store") or ""
    dsn = store.partition(":")[2] if store.startswith("postgresql:") else None
    if dsn is None:
        for checker in table_checkers(options.get("credCheckers", [])):
            dsn = checker.dsn
            break
    return dsn or None
