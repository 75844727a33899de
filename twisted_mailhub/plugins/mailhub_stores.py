"""
The built-in store backends, registered as plugins exactly as a third-party
backend would be.
"""

import os

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_mailhub.store.interfaces import IMailStoreFactory


@implementer(IPlugin, IMailStoreFactory)
class _Maildir:
    name = "maildir"
    description = "Maildir++ under DATA/mail/<domain>/<localpart>/ (default)"

    def make_store(self, data_dir, reactor):
        from twisted_mailhub.store.durable import GroupCommitWriter
        from twisted_mailhub.store.maildir import MaildirStore

        # Its tmp/ leftovers are cleaned by the hub (store.clean_tmp: at
        # start, then hourly; tap.py), as the FTP file system's.
        return MaildirStore(os.path.join(data_dir, "mail"), GroupCommitWriter(reactor))


@implementer(IPlugin, IMailStoreFactory)
class _Memory:
    name = "memory"
    description = "in memory; everything is lost at exit (tests, demos)"

    def make_store(self, data_dir, reactor):
        from twisted_mailhub.store.memory import MemoryStore

        return MemoryStore()


maildir = _Maildir()
memory = _Memory()
