"""
The PostgreSQL store backend (C{--store postgresql:DSN}), registered as a
plugin exactly as a third-party backend would be.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.store.interfaces import IMailStoreFactory


@implementer(IPlugin, IMailStoreFactory)
class _PostgreSQL:
    name = "postgresql"
    description = "PostgreSQL at DSN (postgresql:DSN); several hubs may share one database"
    takes_argument = True

    def make_store(self, data_dir, reactor, dsn=""):
        from twisted_mailhub.store.interfaces import StoreError
        from twisted_mailhub.store.pgschema import SchemaError
        from twisted_mailhub.store.postgresql import PostgresStore

        try:
            store = PostgresStore(dsn, reactor)
        except (StoreError, SchemaError) as e:
            raise SystemExit(f"mailhub: --store postgresql: {e}") from None
        reactor.callWhenRunning(store.start)
        reactor.addSystemEventTrigger("after", "shutdown", store.close)
        return store


postgresql = _PostgreSQL()
