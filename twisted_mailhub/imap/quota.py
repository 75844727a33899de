# -*- test-case-name: tests.test_quota -*-
"""
The IMAP QUOTA extension (RFC 9208) over the hub's quotas
(L{twisted_mailhub.quota}).

Rules: advertised (C{QUOTA}, C{QUOTA=RES-STORAGE}) only when the hub has
quotas. Every account has one quota root, C{""}, holding all its folders;
its one resource is STORAGE, in units of 1024 octets (RFC 9208 §5.1),
usage rounded up. An account without a limit has no quota root
(C{* QUOTAROOT INBOX} with none named). Limits are set by the
administrator (C{--quota}, the accounts file), so SETQUOTA is refused and
C{QUOTASET} is not advertised (RFC 9208 §4.1.4).
"""

from __future__ import annotations

from twisted.mail import imap4

from twisted_mailhub.imap.wire import arg_astring
from twisted_mailhub.store.interfaces import StoreError

ROOT = b'""'


class QuotaCommands:
    """GETQUOTAROOT, GETQUOTA and SETQUOTA, mixed into the IMAP server."""

    def _quota_of_account(self):
        """(used KiB, limit KiB) of the logged-in account, or None without a limit."""
        quotas = getattr(self.hub, "quotas", None)
        address = getattr(self.account, "address", None)
        if quotas is None or address is None:
            return None
        limit = quotas.limit(address)
        if limit is None:
            return None
        return (quotas.reported(address) + 1023) // 1024, limit // 1024

    def _send_quota(self, quota) -> None:
        used, limit = quota
        self.sendUntaggedResponse(b"QUOTA " + ROOT + b" (STORAGE %d %d)" % (used, limit))

    def do_GETQUOTAROOT(self, tag, name):
        try:
            self._folder(name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            return self._folder_error(tag, e)
        quota = self._quota_of_account()
        # the name as the client gave it (modified UTF-7), quoted
        encoded = b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        if quota is None:
            self.sendUntaggedResponse(b"QUOTAROOT " + encoded)
        else:
            self.sendUntaggedResponse(b"QUOTAROOT " + encoded + b" " + ROOT)
            self._send_quota(quota)
        self.sendPositiveResponse(tag, b"GETQUOTAROOT completed")

    auth_GETQUOTAROOT = select_GETQUOTAROOT = (do_GETQUOTAROOT, arg_astring)

    def do_GETQUOTA(self, tag, root):
        quota = self._quota_of_account()
        if root != b"" or quota is None:
            return self.sendNegativeResponse(tag, b"[NONEXISTENT] no such quota root: this account's root is \"\"" if quota else b"[NONEXISTENT] this account has no quota")
        self._send_quota(quota)
        self.sendPositiveResponse(tag, b"GETQUOTA completed")

    auth_GETQUOTA = select_GETQUOTA = (do_GETQUOTA, arg_astring)

    def do_SETQUOTA(self, tag, line=None):
        self.sendNegativeResponse(tag, b"[NOPERM] quotas are set by the administrator (--quota, the accounts file)")

    auth_SETQUOTA = select_SETQUOTA = (do_SETQUOTA, imap4.IMAP4Server.arg_line)
