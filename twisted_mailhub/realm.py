# -*- test-case-name: tests.test_realm -*-
"""
L{MailhubRealm}: one account, one avatar per protocol interface.

The realm knows no protocol. Each protocol module registers a factory for
the interface its Twisted server asks for (C{pop3.IMailbox},
C{imap4.IAccount}, C{ftp.IFTPShell}, ...), and the realm hands it the
L{Account} that logged in. A plugin that adds a listener registers its own
interface the same way.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import implementer

from twisted_mailhub.accounts import Account, AccountBook

# An avatar factory gets the account (None for an anonymous login) and the
# mind the protocol passed to Portal.login; it returns (avatar, logout).
AvatarFactory = Callable[[Account | None, Any], tuple[Any, Callable[[], None]]]


class UnknownInterface(NotImplementedError):
    pass


@implementer(IRealm)
class MailhubRealm:
    def __init__(self, accounts: AccountBook):
        self.accounts = accounts
        self._factories: dict[Any, AvatarFactory] = {}

    def register(self, interface: Any, factory: AvatarFactory) -> None:
        """
        Make C{factory} the maker of avatars for C{interface}.
        """
        self._factories[interface] = factory

    def requestAvatar(self, avatarId, mind, *interfaces):
        account = None
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        if avatarId:
            # Checkers other than ours (plugins via --auth) may return any
            # name; an address we do not know still gets an avatar.
            account = self.accounts.find(avatarId) or Account(*self.accounts.split(avatarId))
        for interface in interfaces:
            factory = self._factories.get(interface)
            if factory is not None:
                made = factory(account, mind)
                if isinstance(made, defer.Deferred):
                    # (a factory that waits for the store: POP3's maildrop)
                    return made.addCallback(lambda pair, i=interface: (i, pair[0], pair[1]))
                avatar, logout = made
                return interface, avatar, logout
        raise UnknownInterface(f"no avatar for {interfaces!r}")
