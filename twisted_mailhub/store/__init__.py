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


def split_store_spec(spec: str) -> tuple[str, str]:
    """
    C{--store NAME[:ARGUMENT]} as (name, argument): C{postgresql:DSN} gives
    C{("postgresql", DSN)}, C{maildir} gives C{("maildir", "")}.
    """
    name, _, argument = spec.partition(":")
    return name, argument


def make_store(spec: str, data_dir: str, reactor):
    """
    Build the store C{--store spec} names. A backend that takes an argument
    (C{postgresql:DSN}) has C{takes_argument = True} and gets it as
    C{make_store(data_dir, reactor, argument)}.
    """
    name, argument = split_store_spec(spec)
    factory = store_factories()[name]
    if getattr(factory, "takes_argument", False):
        return factory.make_store(data_dir, reactor, argument)
    return factory.make_store(data_dir, reactor)
