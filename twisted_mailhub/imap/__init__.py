# -*- test-case-name: tests.test_e2e_imap -*-
"""
The IMAP4rev1 component: listeners C{imap} (STARTTLS) and C{imaps}
(implicit TLS), and the realm's C{imap4.IAccount} avatar onto the store.

The avatar is only a holder of the account's L{IMailAccount}: the server
(L{twisted_mailhub.imap.server}) works on the store directly. At the first
login of an account its RFC 6154 special-use folders (Sent, Drafts, Trash,
Junk, Archive) are created and subscribed.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet import protocol
from twisted.mail import imap4
from zope.interface import implementer

from twisted_mailhub.hub import ListenerSpec
from twisted_mailhub.store.interfaces import INBOX, FolderExists, StoreError

listeners = [
    ListenerSpec("imap", "tcp:8143", "IMAP4 endpoint (STARTTLS)."),
    ListenerSpec("imaps", "tcp:8993", "IMAP4 over implicit TLS endpoint.", tls="implicit"),
]

# Time limits: login, command line, idle (twisted_mailhub.imap.deadlines).
from twisted_mailhub.imap.deadlines import check_options, option_parameters  # noqa: E402,F401


@implementer(imap4.IAccount)
class IMAPAvatar:
    """
    What a login gives the IMAP server: the account's folders in the store.
    The server calls the store itself; Twisted's IAccount methods are not
    used.
    """

    def __init__(self, store_account: Any, address: str | None = None):
        self.store_account = store_account
        self.address = address


def prepare_account(store_account: Any) -> None:
    """
    Special-use folders (RFC 6154) and INBOX's subscription, on first login.
    """
    from twisted_mailhub.imap.mailboxes import SPECIAL_USE

    existing = set(store_account.folders())
    made = []
    for name in SPECIAL_USE:
        if name not in existing:
            try:
                store_account.create_folder(name)
                made.append(name)
            except FolderExists:
                pass
    if made:
        subscribed = set(store_account.subscriptions())
        for name in [INBOX] + made:
            if name not in subscribed:
                store_account.subscribe(name)


class IMAPFactory(protocol.ServerFactory):
    def __init__(self, hub: Any, name: str):
        self.hub = hub
        self.name = name

    def buildProtocol(self, addr):
        from twisted_mailhub.imap.server import IMAPServer

        p = IMAPServer(self.hub, self.name)
        p.factory = self
        return p


def install(hub: Any) -> None:
    # Accounts already prepared by this process: a login does not list the
    # account's folders again (a listing and a stat per folder).
    prepared: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def avatar(account, mind):
        store_account = hub.store.account(account.address)
        try:
            if store_account not in prepared:
                prepare_account(store_account)
                try:
                    prepared.add(store_account)
                except TypeError:
                    pass  # an account object that takes no weak reference: prepared each time
        except (StoreError, OSError):
            pass  # the session still works; LIST shows what exists
        return IMAPAvatar(store_account, account.address), lambda: None

    hub.realm.register(imap4.IAccount, avatar)
    hub.listen_each(listeners, lambda spec: IMAPFactory(hub, spec.name))
