"""
Plugin package for twisted-mailhub, searched with L{twisted.plugin.getPlugins}.

Like C{twisted/plugins}, any C{twisted_mailhub/plugins/} directory on
C{sys.path} that has no C{__init__.py} of its own is searched too, so a third
party ships a store backend or a delivery filter as one module in such a
directory (see C{etc/example_filter.py}).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
