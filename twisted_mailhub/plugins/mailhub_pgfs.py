"""
The PostgreSQL FTP/SFTP file system (C{--ftp-filesystem postgresql[:DSN]}),
registered as a plugin exactly as a third-party backend would be.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.ftp.vfs import IFileSystemFactory


@implementer(IPlugin, IFileSystemFactory)
class _PostgreSQL:
    name = "postgresql"
    description = "files in PostgreSQL (postgresql:DSN, or the --store database); shared by every hub on it"
    takes_argument = True

    def make_filesystem(self, data_dir, dsn=""):
        from twisted_mailhub.cluster.schema import SchemaError
        from twisted_mailhub.ftp.pgfs import PostgresFileSystem
        from twisted_mailhub.store.interfaces import StoreError

        try:
            return PostgresFileSystem(dsn)
        except (StoreError, SchemaError) as e:
            raise SystemExit(f"mailhub: --ftp-filesystem postgresql: {e}") from None


postgresql = _PostgreSQL()
