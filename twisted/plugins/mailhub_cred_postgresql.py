# The strcred checker plugin for --auth postgresql:DSN (accounts in a
# PostgreSQL table); the work is in twisted_mailhub.cluster.accounts.
from zope.interface import implementer

from twisted import plugin
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory


@implementer(ICheckerFactory, plugin.IPlugin)
class PostgresCheckerFactory:
    authType = "postgresql"
    authHelp = (
        "Accounts in the user_account table of a PostgreSQL database "
        "(address, password: plain or an scrypt hash, quota), shared by "
        "every hub on it. Adding a user is one INSERT or mailhub-admin "
        "user add --auth postgresql:DSN ADDRESS."
    )
    argStringFormat = "A libpq connection string (postgresql://user@host:5432/db or host=... dbname=...)."
    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def generateChecker(self, argstring):
        from twisted_mailhub.cluster.accounts import PostgresAccountsChecker

        if not argstring.strip():
            raise ValueError("postgresql needs a connection string: --auth postgresql:DSN")
        return PostgresAccountsChecker(argstring)


postgresql = PostgresCheckerFactory()
