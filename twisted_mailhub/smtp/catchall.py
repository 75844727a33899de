# -*- test-case-name: tests.test_catchall -*-
"""
C{--catch-all ADDRESS}: the development mail-catcher mode (as Mailpit and
MailHog work). Every SMTP listener accepts any recipient at any domain and
stores the message in the account C{ADDRESS}; nothing is ever relayed,
not even for an authenticated session. Recipients that are accounts of
the hub still get their own mail.

Each caught copy starts with C{Delivered-To: <ADDRESS>} and
C{X-Original-To: <recipient as given>} (the headers Postfix writes), so a
test can tell who the mail was for; the C{Received:} header's C{for}
clause names the original recipient too.

The routing itself is L{twisted_mailhub.smtp.delivery.RecipientPolicy},
which reads C{hub.catch_all}; this component only sets it.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python import usage

log = Logger()

option_parameters = [
    ["catch-all", None, None, "Account that receives mail for every recipient that is not an account, at any domain; nothing is relayed (a development mail catcher)."],
]


def install(hub: Any) -> None:
    address = hub.options.get("catch-all")
    hub.catch_all = None
    if not address:
        return
    account = hub.accounts.find(address)
    if account is None:
        raise usage.UsageError(f"--catch-all {address}: no such account (add it with --user ADDRESS:PASSWORD)")
    hub.catch_all = account
    log.info("catch-all: mail for any address that is not an account goes to {address}; nothing is relayed", address=account.address)
