# -*- test-case-name: tests.test_quota -*-
"""
Storage quotas: C{--quota SIZE} for every account, or C{;quota=SIZE} on an
account's line in an accounts file.

Rules:

 - What counts: the octets of every message in every folder of the account
   (the sizes the store already knows, L{MessageInfo.size}), whatever the
   backend. One implementation, as a wrapper around any L{IMailStore}
   (L{QuotaStore}), so Maildir, memory and PostgreSQL stores all get it.
 - When it is counted: once, the first time an account is asked about;
   then each stored message adds its size and each expunged message, or
   folder deleted, takes its messages' sizes off (L{QuotaFolder.expunge},
   L{QuotaAccount.delete_folder}), so what GETQUOTA reports (RFC 9208
   §4.2) is current after an APPEND, an EXPUNGE, a POP3 DELE or a
   delivery. A file removed or replaced (FTP, SFTP) drops the count
   (L{Quotas.forget}): the next question counts again. What changes
   outside the hub (a Maildir edited by hand) is found when a write would
   pass the limit (the count is then made again) and when the count is
   older than C{RECOUNT} seconds. Nothing walks a mailbox on each delivery.
 - What is refused: a delivery, APPEND, COPY or MOVE that would take the
   account past its limit raises L{QuotaExceeded}, a kind of
   L{InsufficientStorage}: nothing is stored. SMTP answers C{552 5.2.2
   Mailbox full} (RFC 3463 §3.3) at RCPT when the account is already over
   and at the end of DATA otherwise; IMAP C{NO [OVERQUOTA]} (RFC 5530 §3).
 - Files: what the account uploads with FTP or SFTP counts too, against
   the same limit (L{twisted_mailhub.filequota}).
 - A warning: when a write takes an account to 90% of its limit or more,
   it gets one message saying so (again only after it went below 90%).
 - Under C{--workers} (a Maildir shared by several processes) the count
   is kept where every worker reads it, as Maildir++'s C{maildirsize}
   does: C{mailhub-quota} in the account's Maildir, the count and the
   time it was made on the first line, then a C{+octets} line appended
   for each message stored by any worker (L{SharedUsage}). A worker's
   check reads the file (a few hundred octets), so what another worker
   stored a moment ago counts.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
import weakref
from email.utils import formatdate, make_msgid
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import alsoProvides, providedBy

from twisted_mailhub.store.interfaces import InsufficientStorage, StoreUnavailable
from twisted_mailhub.errorwords import error_words

log = Logger()

RECOUNT = 60.0  # seconds a count is trusted when nothing is near the limit
WARN_AT = 0.9

#: The largest quota: 1024 TiB, well inside PostgreSQL's bigint and a float's exact integers.
LARGEST = 1 << 50


def parse_size(text: str) -> int:
    """
    Octets from C{"500M"}, C{"2G"}, C{"1.5GiB"}, C{"100k"} or plain C{"1048576"}
    (binary multiples: 1M is 1,048,576 octets), as every size option reads
    them (L{optionvalues.octets}).

    @raise ValueError: not a size, not more than 0, or more than L{LARGEST};
        its text starts with C{wants} and does not name an option (the
        caller says which: C{--quota}, an accounts file's C{quota=}).
    """
    from twisted_mailhub.optionvalues import octets

    return octets(text, 1, LARGEST)


def format_size(octets: int) -> str:
    """C{1048576} -> C{"1.0 MiB"}, for messages people read."""
    value = float(octets)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class QuotaExceeded(InsufficientStorage):
    """
    The write would take C{address} past its quota: nothing was stored.

    @ivar address: the account.
    @ivar usage: octets it uses now.
    @ivar limit: its quota in octets.
    """

    is_quota = True  # (store.interfaces.is_quota: the user's limit, not a full disk)

    def __init__(self, address: str, usage: int, limit: int, incoming: int = 0):
        InsufficientStorage.__init__(self, f"Mailbox full: {address} uses {format_size(usage)} of {format_size(limit)}")
        # what a protocol's reply says (IMAP: NO [OVERQUOTA] APPEND failed: ...)
        #: how full, without "mailbox full" (a page that says that itself adds this)
        self.detail = f"{format_size(usage)} of its {format_size(limit)} quota used"
        self.reason = f"mailbox full ({self.detail})"
        if incoming > limit:
            self.detail = self.reason = f"the message ({format_size(incoming)}) is larger than the whole quota ({format_size(limit)})"
        self.address = address
        self.usage = usage
        self.limit = limit
        self.incoming = incoming


class Quotas:
    """
    The limits and the counts.

    @param store: the real store (counts read its folders).
    @param default: octets for every account, or None for no limit.
    @param accounts: the hub's L{AccountBook}; an account's own C{quota}
        (octets) wins over C{default}.
    @param clock: seconds, C{time.monotonic} by default.
    """

    def __init__(self, store: Any, default: int | None, accounts: Any, clock=time.monotonic):
        self.store = store
        self.default = default
        self.accounts = accounts
        self.clock = clock
        self._usage: dict[str, tuple[int, float]] = {}
        # Octets of writes that passed the check and are being stored, per
        # account: counted by the next check, so that messages arriving at
        # once cannot all pass on the same free space (breaker).
        self._pending: dict[str, int] = {}
        self._warned: set[str] = set()
        #: Octets of an account's files (FTP/SFTP uploads), set by
        #: L{twisted_mailhub.filequota.register_files}; None: mail only.
        self.file_usage: Any = None
        #: For files on disk: C{file_home(address)}, the folder that
        #: L{twisted_mailhub.filequota.tree_size} walks (L{count_later}
        #: walks it in a worker thread); None otherwise.
        self.file_home: Any = None

    def limit(self, address: str) -> int | None:
        """The account's quota in octets, or None."""
        account = self.accounts.find(address)
        own = getattr(account, "quota", None) if account is not None else None
        return own if own is not None else self.default

    def _shared(self, address: str) -> "SharedUsage | None":
        """The count in the account's Maildir, under --workers; else None."""
        from twisted_mailhub.store import shared

        if not shared.ENABLED or not hasattr(self.store, "account_path"):
            return None
        try:
            return SharedUsage(self.store.account_path(address))
        except Exception:  # a name no Maildir is made for
            return None

    def _mail_octets(self, address: str) -> int:
        """Octets of C{address}'s messages, every folder."""
        account = self.store.account(address)
        total = 0
        for name in account.folders():
            try:
                folder = account.folder(name)
                listing = getattr(folder, "listing", None)
                # (listing: the sizes as one array, no MessageInfo made per
                # message: 20,000 messages summed in about 1 ms, not 20)
                total += sum(listing()[1]) if listing is not None else sum(info.size for info in folder.messages())
            except Exception:  # a folder deleted while counting
                continue
        return total

    def count(self, address: str) -> int:
        """Count C{address}'s octets now (every folder) and remember it."""
        total = self._mail_octets(address)
        usage = self._shared(address)
        if self.file_usage is not None:
            try:
                total += self.file_usage(address)
            except StoreUnavailable as e:
                # The files cannot be counted now (their database is
                # down): the last count stands, with what was stored since
                # (counting the mail alone would let it past the quota).
                # Nothing known yet: a temporary error for the write.
                known = usage.read(float("inf")) if usage is not None else self._usage.get(address, (None,))[0]
                log.warn("quota: the files of {address} not counted now ({why}); their last count stands", address=address, why=str(e))
                if known is None:
                    raise
                return known
        return self._remember(address, total, usage)

    def _remember(self, address: str, total: int, usage: "SharedUsage | None") -> int:
        self._usage[address] = (total, self.clock())
        if usage is not None:
            usage.write(total)
        return total

    def count_later(self, address: str) -> defer.Deferred:
        """
        L{count}, as a L{Deferred} of octets: the files of an account on
        disk (C{file_home}) are walked in the reactor's thread pool
        (L{twisted_mailhub.filequota.tree_size}: a scandir and a stat of
        every file, 20,000 uploads held every session while GETQUOTA
        counted them in the reactor); other counts are made at once.
        """
        home = self.file_home(address) if self.file_home is not None else None
        if home is None:
            return defer.maybeDeferred(self.count, address)
        from twisted_mailhub import filequota

        mail = self._mail_octets(address)
        walked = filequota.off_reactor(lambda: filequota.tree_size(home))
        return walked.addCallback(lambda files: self._remember(address, mail + files, self._shared(address)))

    def reported_later(self, address: str) -> defer.Deferred:
        """L{reported}, as a L{Deferred} of octets (L{count_later})."""
        return self.count_later(address)

    def usage(self, address: str) -> int:
        """Octets C{address} uses (the remembered count while it is fresh)."""
        usage = self._shared(address)
        if usage is not None:
            total = usage.read(RECOUNT)
            return self.count(address) if total is None else total
        known = self._usage.get(address)
        if known is None or self.clock() - known[1] > RECOUNT:
            return self.count(address)
        return known[0]

    def reported(self, address: str) -> int:
        """
        Octets C{address} uses as a user is told them (IMAP GETQUOTA and
        GETQUOTAROOT, RFC 9208 §4.2; SFTP's df): counted now (L{count}),
        so that a removal made by another worker (a store with no shared
        count: PostgreSQL under --workers, or several hubs on one
        database) or by hand in a Maildir is seen at once, not after
        C{RECOUNT} seconds or the next refusal. Each folder's sizes come
        as one array (C{listing}), so a count is cheap; the remembered
        count and the shared one are brought up to date by it.
        """
        return self.count(address)

    def over(self, address: str) -> bool:
        """Whether the account is at or past its limit now (SMTP RCPT)."""
        limit = self.limit(address)
        if limit is None:
            return False
        used = self.usage(address)
        if used >= WARN_AT * limit:
            used = self.count(address)  # near the limit: count what is really there
        return used >= limit

    def check(self, address: str, incoming: int) -> None:
        """
        @raise QuotaExceeded: C{incoming} more octets would pass the limit
            (after counting again, so freed space is seen).
        """
        limit = self.limit(address)
        if limit is None:
            return
        pending = self._pending.get(address, 0)
        if self.usage(address) + pending + incoming > limit:
            used = self.count(address)
            if used + pending + incoming > limit:
                raise QuotaExceeded(address, used + pending, limit, incoming)

    def reserve(self, address: str, incoming: int, write: Any) -> defer.Deferred:
        """
        L{check} C{incoming} octets for C{address}, then run C{write} (a
        Deferred or a value) with them counted as in flight until it ends,
        and L{stored} when it succeeds.

        @raise QuotaExceeded: through the Deferred, when they do not fit.
        """
        try:
            self.check(address, incoming)
        except QuotaExceeded as e:
            return defer.fail(e)
        self._pending[address] = self._pending.get(address, 0) + incoming

        def release(result):
            left = self._pending.get(address, 0) - incoming
            if left > 0:
                self._pending[address] = left
            else:
                self._pending.pop(address, None)
            return result

        def stored(result):
            self.stored(address, incoming)
            return result

        return defer.maybeDeferred(write).addBoth(release).addCallback(stored)

    def remembers(self, address: str) -> bool:
        """Whether a count of C{address} is kept (so a removal must be taken off it)."""
        if self.limit(address) is None:
            return False
        return address in self._usage or self._shared(address) is not None

    def freed(self, address: str, octets: int) -> None:
        """C{octets} of C{address}'s mail were removed (an expunge, a deleted folder)."""
        if octets > 0:
            self._added(address, -octets)

    def forget(self, address: str) -> None:
        """
        Drop C{address}'s count (a file was removed or replaced, its size
        not known here): the next question counts again.
        """
        self._usage.pop(address, None)
        usage = self._shared(address) if self.limit(address) is not None else None
        if usage is not None:
            usage.forget()

    def _added(self, address: str, octets: int) -> None:
        usage = self._shared(address) if self.limit(address) is not None else None
        if usage is not None:
            usage.add(octets)
            return
        known = self._usage.get(address)
        if known is not None:
            self._usage[address] = (max(0, known[0] + octets), known[1])

    def stored(self, address: str, octets: int) -> None:
        """C{octets} were stored for C{address}; warn once at 90%."""
        self._added(address, octets)
        limit = self.limit(address)
        if limit is None:
            return
        used = self.usage(address)
        if used >= WARN_AT * limit:
            if address not in self._warned:
                self._warned.add(address)
                self._warn(address, used, limit)
        else:
            self._warned.discard(address)

    def _warn(self, address: str, used: int, limit: int) -> None:
        domain = address.rpartition("@")[2] or "localhost"
        text = (
            f"From: Mail system <postmaster@{domain}>\r\n"
            f"To: <{address}>\r\n"
            f"Subject: Your mailbox is {int(100 * used / limit)}% full\r\n"
            f"Date: {formatdate(localtime=True)}\r\n"  # its offset, not -0000 (RFC 5322 §3.3)
            f"Message-ID: {make_msgid(domain=domain)}\r\n"
            "Auto-Submitted: auto-generated\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "\r\n"
            f"Your mailbox uses {format_size(used)} of its {format_size(limit)}.\r\n"
            "When it is full, new mail is refused and goes back to its senders.\r\n"
            "Delete or move away messages you no longer need (and empty the Trash).\r\n"
        ).encode("utf-8")
        log.info("quota: {address} uses {used} of {limit}; warning sent", address=address, used=used, limit=limit)
        # Past the quota check on purpose: the warning must arrive.
        d = defer.maybeDeferred(self.store.deliver, address, text)
        d.addCallback(lambda _: self._added(address, len(text)))
        d.addErrback(lambda f: log.info("quota: the warning to {address} was not stored: {why}", address=address, why=error_words(f.value)))


class SharedUsage:
    """
    An account's usage as every process of C{--workers} sees it: the file
    C{mailhub-quota} in its Maildir (first line C{<octets> <unix time of
    the count>}, then one C{+<octets>} line per message stored since and
    one C{-<octets>} line per removal, as Maildir++'s C{maildirsize}),
    read and written under C{flock(2)}.
    """

    NAME = "mailhub-quota"

    def __init__(self, maildir: str):
        self.path = os.path.join(maildir, self.NAME)

    def read(self, fresh_for: float) -> int | None:
        """The usage, or None when there is no count younger than C{fresh_for} s."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            data = os.read(fd, 1 << 20)
        finally:
            os.close(fd)
        lines = data.split(b"\n")
        head = lines[0].split()
        try:
            total, when = int(head[0]), float(head[1])
            total += sum(int(line) for line in lines[1:] if line[:1] in b"+-" and line[1:].isdigit())
        except (IndexError, ValueError):
            return None
        if time.time() - when > fresh_for or len(data) >= 1 << 20:
            return None
        return max(total, 0)

    def write(self, total: int) -> None:
        """A new count (C{total} octets, now)."""
        self._locked(lambda fd: (os.ftruncate(fd, 0), os.pwrite(fd, b"%d %.3f\n" % (total, time.time()), 0)))

    def add(self, octets: int) -> None:
        """C{octets} more stored, or fewer when negative (only counted on top of a count made before)."""
        self._locked(lambda fd: os.fstat(fd).st_size and os.write(fd, b"%+d\n" % octets), append=True)

    def forget(self) -> None:
        """No count any more: the next reader counts again."""
        self._locked(lambda fd: os.ftruncate(fd, 0))

    def _locked(self, action: Any, append: bool = False) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | _CLOEXEC | (os.O_APPEND if append else 0), 0o600)
        except FileNotFoundError:  # no Maildir yet: nothing counted
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            action(fd)
        finally:
            os.close(fd)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _proxy(real: Any, proxy: Any) -> Any:
    alsoProvides(proxy, *providedBy(real))
    return proxy


class _Passing:
    """Everything not defined here goes to the real object."""

    def __init__(self, real: Any):
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class QuotaFolder(_Passing):
    """A folder whose writes are checked against its account's quota."""

    def __init__(self, real: Any, quotas: Quotas, address: str, store: "QuotaStore"):
        _Passing.__init__(self, real)
        self._quotas = quotas
        self._address = address
        self._store = store

    def _checked(self, octets: int, write) -> defer.Deferred:
        return self._quotas.reserve(self._address, octets, write)

    def deliver(self, message: bytes) -> defer.Deferred:
        return self._checked(len(message), lambda: self._real.deliver(message))

    def append(self, message: bytes, *args: Any, **kwargs: Any) -> defer.Deferred:
        return self._checked(len(message), lambda: self._real.append(message, *args, **kwargs))

    def copy_to(self, uids, destination: Any, copy: Any = None) -> defer.Deferred:
        """The real C{copy_to} (or C{copy}, taking the same arguments) once the destination's account has room."""
        uids = list(uids)
        copy = copy or self._real.copy_to
        octets = 0
        for uid in uids:
            try:
                octets += self._real.info(uid).size
            except Exception:
                continue
        target = getattr(destination, "_real", destination)
        address = getattr(destination, "_address", self._address)
        return self._quotas.reserve(address, octets, lambda: copy(uids, target))

    def expunge(self, uids, origin: Any = None) -> list[int]:
        """The real C{expunge}; what it removed is taken off the account's count."""
        uids = list(uids)
        sizes = self._sizes(uids)
        gone = self._real.expunge(uids, origin=origin)
        self._quotas.freed(self._address, sum(sizes.get(uid, 0) for uid in gone or ()))
        return gone

    def expunge_later(self, uids, origin: Any = None) -> defer.Deferred:
        """The real folder's C{expunge_later} (L{store.base.expunge_later}); what it removed is taken off the account's count."""
        from twisted_mailhub.store.base import expunge_later

        uids = list(uids)
        sizes = self._sizes(uids)

        def freed(gone: list[int]) -> list[int]:
            self._quotas.freed(self._address, sum(sizes.get(uid, 0) for uid in gone or ()))
            return gone

        return expunge_later(self._real, uids, origin=origin).addCallback(freed)

    def _sizes(self, uids: list[int]) -> dict[int, int]:
        """UID -> size of those of C{uids} still here, when the account's usage is remembered (else nothing is looked up)."""
        sizes: dict[int, int] = {}
        if self._quotas.remembers(self._address):
            # (nothing remembered: nothing to take off, no size looked up)
            wanted = set(uids)
            if len(wanted) > 16:
                # one walk (one query on PostgreSQL), not one look-up a message
                sizes = {info.uid: info.size for info in self._real.messages() if info.uid in wanted}
            else:
                for uid in wanted:
                    try:
                        sizes[uid] = self._real.info(uid).size
                    except Exception:  # gone already
                        continue
        return sizes

    def copy_for_move(self, uids, destination: Any) -> defer.Deferred:
        """
        C{copy_to} for a MOVE (IMAP MOVE, webmail's move and delete to
        Trash): the originals are expunged next, so within one account
        nothing grows and the quota is not asked (a full mailbox can still
        move its mail to Trash to free space, as with Dovecot).
        """
        move = getattr(self._real, "copy_for_move", self._real.copy_to)  # (Maildir: claims each message first)
        target = getattr(destination, "_real", destination)
        if getattr(destination, "_address", self._address) == self._address:
            return defer.maybeDeferred(move, list(uids), target)
        return self.copy_to(uids, destination, copy=move)


class QuotaAccount(_Passing):
    """An account whose folders are L{QuotaFolder}s."""

    def __init__(self, real: Any, quotas: Quotas, address: str, store: "QuotaStore"):
        _Passing.__init__(self, real)
        self._quotas = quotas
        self._address = address
        self._store = store
        if getattr(real, "select_later", None) is not None:
            self.select_later = self._select_later  # (only where the real account has one)

    def folder(self, name: str) -> Any:
        return self._store._folder(self._real.folder(name), self._address)

    def create_folder(self, name: str) -> Any:
        return self._store._folder(self._real.create_folder(name), self._address)

    def _select_later(self, name: str, readonly: bool = False, **options: Any) -> defer.Deferred:
        """The real account's C{select_later} (PostgreSQL), its folder checked against the quota as L{folder}'s is."""
        return self._real.select_later(name, readonly, **options).addCallback(lambda got: (self._store._folder(got[0], self._address), got[1]))

    def delete_folder(self, name: str) -> None:
        """The real C{delete_folder}; its messages are taken off the account's count."""
        octets = 0
        if self._quotas.remembers(self._address):
            try:
                octets = sum(info.size for info in self._real.folder(name).messages())
            except Exception:  # no such folder: the real one says so
                octets = 0
        self._real.delete_folder(name)
        self._quotas.freed(self._address, octets)


class QuotaStore(_Passing):
    """
    Any L{IMailStore} with quotas: C{deliver}, and the C{append} and
    C{copy_to} of its folders, are checked; everything else is the real
    store's. The same real folder always gets the same wrapper, so
    identity checks (the selected folder, listeners) hold.
    """

    def __init__(self, real: Any, quotas: Quotas):
        _Passing.__init__(self, real)
        _proxy(real, self)
        self.quotas = quotas
        self._folders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._accounts: dict[str, QuotaAccount] = {}

    def _folder(self, real: Any, address: str) -> QuotaFolder:
        wrapped = self._folders.get(real)
        if wrapped is None:
            wrapped = self._folders[real] = _proxy(real, QuotaFolder(real, self.quotas, address, self))
        return wrapped

    def account(self, address: str) -> QuotaAccount:
        real = self._real.account(address)
        wrapped = self._accounts.get(address)
        if wrapped is None or wrapped._real is not real:
            wrapped = self._accounts[address] = _proxy(real, QuotaAccount(real, self.quotas, address, self))
        return wrapped

    def deliver(self, address: str, message: bytes) -> defer.Deferred:
        return self.quotas.reserve(address, len(message), lambda: self._real.deliver(address, message))


# The hub component: no listener; it runs before every other component so
# that each of them gets the store with quotas.
listeners: list = []


def _quota_option(value: str) -> int:
    from twisted_mailhub.optionvalues import size

    return size("quota", 1, LARGEST)(value)


_quota_option.coerceDoc = ""  # type: ignore[attr-defined]
option_parameters = [
    ["quota", None, None, "Storage quota of every account, e.g. 500M or 2G (default: none); an accounts-file line may set its own with address;quota=SIZE:password.", _quota_option],
]


def check_options(options: Any) -> None:
    from twisted.python import usage

    if options.get("quota") is not None and not isinstance(options["quota"], int):
        try:
            parse_size(options["quota"])
        except ValueError as e:
            raise usage.UsageError(f"--quota {e}") from None


def install(hub: Any) -> None:
    """
    Put quotas around C{hub.store} when C{--quota} or any account's own
    quota asks for them (with neither, the store is left as it is: no
    cost at all).
    """
    default = hub.options.get("quota")
    default = parse_size(str(default)) if default else None
    if default is None and not any(getattr(a, "quota", None) for a in hub.accounts):
        # (accounts in a table may get a quota at any time: always count)
        if not getattr(hub.accounts, "quotas_may_change", False):
            return
    hub.quotas = Quotas(hub.store, default, hub.accounts)
    hub.store = QuotaStore(hub.store, hub.quotas)
