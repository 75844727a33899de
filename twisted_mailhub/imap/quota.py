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

from twisted.internet import defer
from twisted.mail import imap4

from twisted_mailhub.imap.wire import arg_astring
from twisted_mailhub.store.interfaces import StoreError

ROOT = b'""'


class QuotaCommands:
    """GETQUOTAROOT, GETQUOTA and SETQUOTA, mixed into the IMAP server."""

    def _quota_of_account(self):
        """
        A L{Deferred} of (used KiB, limit KiB) of the logged-in account, or
        None without a limit (the files on disk are counted in a worker
        thread: L{twisted_mailhub.quota.Quotas.reported_later}).
        """
        quotas = getattr(self.hub, "quotas", None)
        address = getattr(self.account, "address", None)
        if quotas is None or address is None:
            return defer.succeed(None)
        limit = quotas.limit(address)
        if limit is None:
            return defer.succeed(None)
        return quotas.reported_later(address).addCallback(lambda used: ((used + 1023) // 1024, limit // 1024))

    def _with_quota(self, tag, command: bytes, answer) -> None:
        """C{answer(quota)} once it is counted; this session reads no further command meanwhile, the others are served."""
        self._hold_input()

        def failed(reason):
            if self.transport is None or self.transport.disconnecting:
                return
            self._command_failed(reason.value, tag, command)  # (as a command's exception: NO [UNAVAILABLE], [SERVERBUG] and a log line)

        def answered(quota):
            if self.transport is None or self.transport.disconnecting:
                return
            answer(quota)

        d = self._quota_of_account().addCallbacks(answered, failed)
        d.addBoth(lambda _: self._release_input())

    def _send_quota(self, quota) -> None:
        used, limit = quota
        self.sendUntaggedResponse(b"QUOTA " + ROOT + b" (STORAGE %d %d)" % (used, limit))

    def do_GETQUOTAROOT(self, tag, name):
        try:
            self._folder(name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            return self._folder_error(tag, e)
        # the name as the client gave it (modified UTF-7), quoted
        encoded = b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

        def answer(quota):
            if quota is None:
                self.sendUntaggedResponse(b"QUOTAROOT " + encoded)
            else:
                self.sendUntaggedResponse(b"QUOTAROOT " + encoded + b" " + ROOT)
                self._send_quota(quota)
            self.sendPositiveResponse(tag, b"GETQUOTAROOT completed")

        self._with_quota(tag, b"GETQUOTAROOT", answer)

    auth_GETQUOTAROOT = select_GETQUOTAROOT = (do_GETQUOTAROOT, arg_astring)

    def do_GETQUOTA(self, tag, root):
        def answer(quota):
            if root != b"" or quota is None:
                return self.sendNegativeResponse(tag, b"[NONEXISTENT] no such quota root: this account's root is \"\"" if quota else b"[NONEXISTENT] this account has no quota")
            self._send_quota(quota)
            self.sendPositiveResponse(tag, b"GETQUOTA completed")

        self._with_quota(tag, b"GETQUOTA", answer)

    auth_GETQUOTA = select_GETQUOTA = (do_GETQUOTA, arg_astring)

    def do_SETQUOTA(self, tag, line=None):
        self.sendNegativeResponse(tag, b"[NOPERM] quotas are set by the administrator (--quota, the accounts file)")

    auth_SETQUOTA = select_SETQUOTA = (do_SETQUOTA, imap4.IMAP4Server.arg_line)
