# -*- test-case-name: tests.test_components -*-
"""
Listener components as plugins: how the hub finds its protocols.

A component is a plugin providing L{IHubComponent} in
L{twisted_mailhub.plugins}, found with L{twisted.plugin.getPlugins} exactly
as store backends and delivery filters are. The built-in protocols (queue,
SMTP, POP3, IMAP, FTP) are registered in
C{twisted_mailhub/plugins/mailhub_components.py}; a third party adds a
listener by dropping one module into a C{twisted_mailhub/plugins/}
directory on C{sys.path} (see C{etc/example_listener.py}), with no edit of
the hub.

The contract is the one every protocol module already follows:

  - C{listeners}: L{ListenerSpec} rows; each becomes C{--NAME EP} and
    C{--no-NAME};
  - C{option_parameters}, C{option_flags}, C{option_lists}: more options
    (C{usage.Options} rows; C{option_lists} rows C{[name, help]} are
    repeatable options collected into a list);
  - C{check_options(options)} (optional): raise C{usage.UsageError};
  - C{install(hub)}: register avatar factories with C{hub.realm} and call
    C{hub.listen} / C{hub.listen_each} for its listeners.

L{ModuleComponent} turns a module that follows it into a plugin with one
line, importing the module only when the hub needs it.

Components start in a stable order: by C{order} (lower first), then by
C{name}. The built-ins use 10-60 (the queue first, so that SMTP finds
C{hub.relay}); a component with no C{order} gets L{DEFAULT_ORDER}. Two
plugins with the same C{name}: the first in that order wins and the other
is ignored with a log line.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from zope.interface import Attribute, Interface, implementer

log = Logger()

DEFAULT_ORDER = 100


class IHubComponent(Interface):
    """
    One protocol (or other long-running part) of the hub.
    """

    name = Attribute("Short unique name of the component, e.g. 'smtp'.")
    order = Attribute("Start order: an int, lower starts first (built-ins use 5-90; default 100).")
    listeners = Attribute("List of twisted_mailhub.hub.ListenerSpec: the --NAME EP / --no-NAME listeners.")
    option_parameters = Attribute("usage.Options optParameters rows for its other options.")
    option_flags = Attribute("usage.Options optFlags rows.")
    option_lists = Attribute("[name, help] rows: repeatable --name VALUE options, collected in a list.")

    def check_options(options: Any) -> None:
        """
        Validate the parsed options; raise C{usage.UsageError} with one line.
        """

    def install(hub: Any) -> None:
        """
        Register avatar factories with C{hub.realm}, services with
        C{hub.add_service}, and listeners with C{hub.listen_each}.
        """


@implementer(IPlugin, IHubComponent)
class ModuleComponent:
    """
    A component whose contract is a module's top-level names; the module is
    imported on first use, so C{twistd --help} of one component does not
    pay for importing every other.

    @param name: the component's name.
    @param module: the dotted name of the module.
    @param order: its start order.
    """

    def __init__(self, name: str, module: str, order: int = DEFAULT_ORDER):
        self.name = name
        self.module_name = module
        self.order = order

    @property
    def module(self) -> Any:
        return importlib.import_module(self.module_name)

    @property
    def listeners(self) -> list:
        return list(getattr(self.module, "listeners", []))

    @property
    def option_parameters(self) -> list:
        return list(getattr(self.module, "option_parameters", []))

    @property
    def option_flags(self) -> list:
        return list(getattr(self.module, "option_flags", []))

    @property
    def option_lists(self) -> list:
        return list(getattr(self.module, "option_lists", []))

    def check_options(self, options: Any) -> None:
        check = getattr(self.module, "check_options", None)
        if check is not None:
            check(options)

    def install(self, hub: Any) -> None:
        self.module.install(hub)

    def __repr__(self) -> str:
        return f"<ModuleComponent {self.name} {self.module_name} order={self.order}>"


def hub_components() -> list[Any]:
    """
    Every L{IHubComponent} plugin, in start order (C{order}, then C{name});
    of two with the same name, the first is kept.
    """
    from twisted_mailhub import plugins

    found = sorted(
        getPlugins(IHubComponent, plugins),
        key=lambda c: (getattr(c, "order", DEFAULT_ORDER), c.name),
    )
    kept: dict[str, Any] = {}
    for component in found:
        if component.name in kept:
            log.warn("component {name}: a second plugin of that name is ignored ({component!r})", name=component.name, component=component)
            continue
        kept[component.name] = component
    return list(kept.values())


def listener_names(components: list[Any] | None = None) -> list[str]:
    """
    The names of every listener the components offer, in start order.
    """
    if components is None:
        components = hub_components()
    return [spec.name for c in components for spec in getattr(c, "listeners", [])]
