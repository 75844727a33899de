"""
The mail store: interfaces and backends (C{--store NAME}).
"""

from __future__ import annotations

from twisted.plugin import getPlugins

from twisted_mailhub.store.interfaces import IMailStoreFactory


def store_factories() -> dict[str, IMailStoreFactory]:
    """
    Every store backend found as a plugin, built-in ones included.
    """
    from twisted_mailhub import plugins

    return {factory.name: factory for factory in getPlugins(IMailStoreFactory, plugins)}
