"""
Start the real C{twistd -n mailhub} for end-to-end tests: a thin layer on
L{twisted_mailhub.testing.Mailhub}, the controller the package ships for
everyone's tests (one implementation of starting, port discovery and
stopping).

Every listener is given C{tcp:0:interface=127.0.0.1} unless the test says
otherwise, and the ports the hub really bound are read from its
C{mailhub ready {...}} log line: no port races, no sleeps.
"""

from __future__ import annotations

import os
import signal
import ssl

from twisted_mailhub import testing
from twisted_mailhub.testing import PACKAGE_ROOT, Mailhub

ROOT = PACKAGE_ROOT


def listener_names(pythonpath: str | None = None) -> list[str]:
    """
    Every listener the registered components offer (built-in and plugin
    ones), as the hub started with C{pythonpath} in front sees them. Each
    gets an ephemeral loopback port unless the test passes its own
    C{--NAME} or C{--no-NAME}, so a new listener needs no edit here and a
    test hub never binds a default port.
    """
    return [name for name, _tls in testing.listener_names(pythonpath)]


# The built-in listeners and any plugin ones on this process's path.
LISTENERS = listener_names()


class HubProcess(Mailhub):
    """
    One running hub on a data folder the test owns. C{ports[name]} is where
    listener C{name} listens; C{log} is everything it printed so far. The
    hub makes its own TLS certificate, as a user's would.
    """

    def __init__(self, data_dir: str, args: list[str] | None = None, env: dict | None = None, users=("alice:secret", "bob:hungry")):
        Mailhub.__init__(self, *(args or []), accounts=users, data_dir=data_dir, env=env, make_certificate=False, accounts_file=False)

    @property
    def args(self) -> list[str]:
        return self.options

    def kill(self) -> None:
        """kill -9: no clean shutdown."""
        self.stop(signal.SIGKILL)

    def restart(self, same_ports: bool = False) -> "HubProcess":
        return Mailhub.restart(self, same_ports=same_ports)

    def maildir(self, address: str) -> str:
        local, _, domain = address.partition("@")
        return os.path.join(self.data_dir, "mail", domain or "localhost", local)


def client_context() -> ssl.SSLContext:
    """A client TLS context that accepts the hub's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
