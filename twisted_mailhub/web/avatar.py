# -*- test-case-name: tests.test_web_login -*-
"""
The web face's avatar: what a browser login gets from the realm.

Like every other protocol, the web asks the one portal for an avatar of its
own interface, L{IWebUser}; the realm hands the factory registered here the
L{Account} that logged in. Whether the account is a teacher (C{--teacher
ADDRESS}) is decided here, once, at login.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import attr
from zope.interface import Attribute, Interface, implementer


class IWebUser(Interface):
    """
    A logged-in browser user.
    """

    address = Attribute("The account's address, localpart@domain.")
    is_teacher = Attribute("True for accounts named with --teacher: they see every session.")

    def mail() -> Any:
        """
        The account's L{twisted_mailhub.store.interfaces.IMailAccount}.
        """


@implementer(IWebUser)
@attr.s(auto_attribs=True)
class WebUser:
    """
    The web avatar: an account, its role, and a way to its mail.

    @ivar address: the account's address.
    @ivar is_teacher: sees every session on the hub.
    @ivar store: the hub's mail store.
    """

    address: str
    is_teacher: bool
    store: Any = attr.ib(repr=False, default=None)

    def mail(self) -> Any:
        return self.store.account(self.address)


def teacher_addresses(accounts: Any, names: Iterable[str]) -> frozenset[str]:
    """
    The C{--teacher} names as full lowercase addresses (a bare name gets the
    default domain, as at login).
    """
    found = set()
    for name in names:
        local, domain = accounts.split(name)
        found.add(f"{local}@{domain}".lower())
    return frozenset(found)


def avatar_factory(store: Any, teachers: frozenset[str]) -> Callable[[Any, Any], tuple[WebUser, Callable[[], None]]]:
    """
    The realm factory for L{IWebUser}: C{(account, mind) -> (avatar, logout)}.
    """

    def make(account, mind):
        address = account.address if account is not None else ""
        return WebUser(address, address.lower() in teachers, store), lambda: None

    return make
