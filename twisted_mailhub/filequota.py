# -*- test-case-name: tests.test_filequota -*-
"""
Files count against an account's quota too (issue 14): what FTP and SFTP
upload into the account's home is added to its mail (L{twisted_mailhub.quota}).

Rules:

 - One limit per account (C{--quota}, C{;quota=} in the accounts file) for
   its messages and its files together. L{register_files} gives
   L{Quotas} a way to count the files, on either file system (on disk,
   L{tree_size}; in PostgreSQL, L{twisted_mailhub.ftp.pgfs}'s C{usage}):
   every file under the home, hidden partial uploads too: an interrupted
   upload kept for a resume is stored, and not counting it let five
   interrupted 90 KB uploads keep 450 KB under a 100 KB quota. A partial
   upload beside the file it will replace counts by its growth only
   (L{partial_growth}).
 - An upload is written through a L{QuotaWriter}: an octet that would take
   the account past its limit (after a fresh count, so freed space is
   seen) is not written; the upload fails with L{FileQuotaExceeded}, its
   partial file is removed at once (the upload rules of
   L{twisted_mailhub.ftp.vfs}: nothing under the file's name), and any
   later write or close fails the same way. FTP answers C{552} (RFC 959
   §4.2, "exceeded storage allocation"), SFTP C{SSH_FX_FAILURE} "quota
   exceeded".
 - A complete upload adds its octets to the account's count (and may send
   the 90% warning, as a delivery does).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import defer
from twisted.python import failure
from twisted.logger import Logger

from twisted_mailhub.quota import format_size

log = Logger()


class FileQuotaExceeded(OSError):
    """
    An upload would take C{address} past its quota: an C{OSError} with
    C{errno.EDQUOT}, as a disk quota would give, carrying the hub's words
    (C{reason}) for a reply.
    """

    is_quota = True  # (store.interfaces.is_quota: the user's limit, not a full disk)

    def __init__(self, address: str, usage: int, limit: int):
        self.reason = f"quota exceeded: {address} uses {format_size(usage)} of its {format_size(limit)}"
        OSError.__init__(self, errno.EDQUOT, self.reason)
        self.address = address
        self.usage = usage
        self.limit = limit


def partial_growth(size: int, replaced: int | None) -> int:
    """
    What a partial upload of C{size} octets counts: all of it, or, beside a
    file of C{replaced} octets it will take the place of once complete (an
    APPE or a REST resume on a copy of it, or a STOR over it), only what it
    grows that file (the file is counted on its own, so the pair counts as
    the larger of the two). The one rule both file systems count by.
    """
    return size if replaced is None else max(0, size - replaced)


def tree_size(root: str) -> int:
    """
    Octets of every regular file under C{root} (the disk file system),
    hidden partial uploads included, each by L{partial_growth}.
    """
    from twisted_mailhub.ftp.vfs import PARTIAL_SUFFIX, is_partial_name

    total = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        sizes: dict[str, int] = {}
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
        for name, size in sizes.items():
            if is_partial_name(name):
                final = name[1 : -len(PARTIAL_SUFFIX)]
                size = partial_growth(size, None if is_partial_name(final) else sizes.get(final))
            total += size
    return total


def off_reactor(function: Any) -> Any:
    """A L{Deferred} of C{function()} called in the reactor's thread pool; at once when no reactor turns (a script, a unit test)."""
    from twisted.internet import defer, reactor, threads

    if not getattr(reactor, "running", False):
        return defer.maybeDeferred(function)
    return threads.deferToThread(function)


def register_files(hub: Any, filesystem: Any) -> None:
    """
    Let the hub's quotas count C{filesystem}'s files of each account: a
    file system that counts them itself (C{usage(account)} -> octets: the
    PostgreSQL one), or one with C{home(account)}, a folder on disk
    (L{tree_size}). No quotas: nothing to do.
    """
    quotas = getattr(hub, "quotas", None)
    usage = getattr(filesystem, "usage", None)
    home = getattr(filesystem, "home", None)
    if quotas is None or (usage is None and home is None):
        return
    if usage is None:
        def usage(account):
            return tree_size(home(account))

        def file_home(address: str) -> str | None:
            account = hub.accounts.find(address)
            return home(account) if account is not None else None

        quotas.file_home = file_home

    def file_usage(address: str) -> int:
        account = hub.accounts.find(address)
        return usage(account) if account is not None else 0

    quotas.file_usage = file_usage


def _size_of(final: str | None, part: str | None) -> int:
    """The size of C{final}, the file an upload written under C{part} will replace; 0 if none."""
    if not final or final == part:
        return 0
    try:
        return os.stat(final).st_size
    except (OSError, TypeError, ValueError):
        return 0


def with_quota(shell: Any, hub: Any, account: Any) -> Any:
    """
    C{shell} with every upload written through a L{QuotaWriter}, when the
    hub has quotas and C{account} is an account (not anonymous).
    """
    quotas = getattr(hub, "quotas", None)
    if quotas is None or account is None or getattr(shell, "readonly", False):
        return shell
    from zope.interface import alsoProvides, providedBy

    proxy = QuotaShell(shell, quotas, account.address)
    alsoProvides(proxy, *providedBy(shell))
    return proxy


class QuotaShell:
    """A shell whose C{openForWriting}/C{openForWritingAt} writers count octets."""

    def __init__(self, shell: Any, quotas: Any, address: str):
        self._shell = shell
        self._quotas = quotas
        self._address = address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shell, name)

    def _wrap(self, opened: defer.Deferred) -> defer.Deferred:
        def counted(writer):
            counting = QuotaWriter(writer, self._quotas, self._address)
            # What it starts with counts before any write: opened past the
            # file's end (SFTP SETSTAT size, a truncate) the file grows there.
            counting.admit_start()
            return counting

        return opened.addCallback(counted)

    def openForWriting(self, path):
        return self._wrap(defer.maybeDeferred(self._shell.openForWriting, path))

    def _freeing(self, method: str, *args: Any) -> defer.Deferred:
        """The shell's C{method}, which may free space: then the count is made again when next asked."""

        def done(result):
            self._quotas.forget(self._address)
            return result

        return defer.maybeDeferred(getattr(self._shell, method), *args).addCallback(done)

    def removeFile(self, path):
        return self._freeing("removeFile", path)

    def removeDirectory(self, path):
        return self._freeing("removeDirectory", path)

    def rename(self, fromPath, toPath):
        # (over an existing file: that file's octets are freed)
        return self._freeing("rename", fromPath, toPath)

    def openForWritingAt(self, path, offset, append):
        quotas, address = self._quotas, self._address
        if quotas.over(address):
            # Full already: refuse before a data connection is made.
            limit = quotas.limit(address) or 0
            return defer.fail(FileQuotaExceeded(address, quotas.usage(address), limit))
        return self._wrap(defer.maybeDeferred(self._shell.openForWritingAt, path, offset, append))


class QuotaWriter:
    """
    A file-system writer (L{twisted_mailhub.ftp.vfs.FileWriter},
    L{twisted_mailhub.ftp.pgfs.PostgresWriter} or any other) whose writes
    stop at the account's quota; see the module rules. What it asks of the
    writer, when it has it: C{replaced} (octets of the file the upload will
    replace; else found from C{final} on disk), C{tell()} (where the next
    C{write} goes; else its C{file}'s), C{write_at(offset, data)} (SFTP's
    writes at any offset: wrapped too), C{flush()} (else its C{file}'s),
    C{fresh}, C{fail(reason)} (a L{TransferWriteError} removes the partial
    upload) and C{discard()}.

    What counts is what the account will hold once the upload is in
    place: the other files and mail (C{_base}) plus the end of the file
    being written (C{_end}: the octets it starts with, a copy for an APPE
    or a REST resume, plus what is written beyond them). A file it
    replaces (C{_replaced}) and the copy of it are not counted on top
    (L{tree_size}), and octets written over ones already there (an SFTP
    write at an earlier offset) do not grow it.
    """

    def __init__(self, writer: Any, quotas: Any, address: str):
        self._writer = writer
        self._quotas = quotas
        self._address = address
        self._limit = quotas.limit(address)
        # (the file this upload will replace, and where its writing starts)
        replaced = getattr(writer, "replaced", None)
        if replaced is None:
            replaced = _size_of(getattr(writer, "final", None), getattr(writer, "path", None))
        self._replaced = replaced
        self._start = self._tell(0)
        self._end = self._start
        # What the count had of this file before (the file it replaces, or
        # a partial kept for a resume) is not the rest of the account's.
        self._held = max(self._replaced, 0 if getattr(writer, "fresh", True) else self._start)
        self._base = quotas.usage(address) - self._held if self._limit is not None else 0
        self._counted = False
        self.written = 0
        self.failed: FileQuotaExceeded | None = None
        self._ended: defer.Deferred | None = None
        if getattr(writer, "write_at", None) is not None:
            # (an instance attribute: SFTP looks for it to write at offsets)
            self.write_at = self._write_at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # What SFTP FSETSTAT asks of an open upload (its mode and times,
        # applied at close) is the writer's: set here, it was lost.
        if name in ("mode", "times"):
            setattr(self._writer, name, value)
        else:
            object.__setattr__(self, name, value)

    def _tell(self, otherwise: int) -> int:
        """Where the writer's next C{write} goes, or C{otherwise}."""
        tell = getattr(self._writer, "tell", None)
        if tell is None:
            tell = getattr(getattr(self._writer, "file", None), "tell", None)
        if tell is not None:
            try:
                return tell()
            except (OSError, ValueError):
                pass
        return otherwise

    def _flush(self) -> bool:
        """The writer's octets in its file (or row), so a count sees them; False: it cannot."""
        flush = getattr(self._writer, "flush", None)
        if flush is None:
            flush = getattr(getattr(self._writer, "file", None), "flush", None)
        if flush is None:
            return False
        try:
            flush()
        except OSError:
            pass
        return True

    def admit_start(self) -> None:
        """
        The file's size where writing starts, within the quota.

        @raise FileQuotaExceeded: it is past the account's limit (the
            partial upload goes, as at any write).
        """
        self._admit(self._start, b"")

    def write(self, data: bytes) -> None:
        if "a" in getattr(getattr(self._writer, "file", None), "mode", ""):
            position = self._end  # (opened to append: every write goes to the end)
        else:
            position = self._tell(self._start + self.written)
        self._admit(position, data)
        self._writer.write(data)
        self._wrote(data)

    def _write_at(self, offset: int, data: bytes) -> None:
        """SFTP's WRITE at C{offset} (the writer's C{write_at}), within the quota."""
        self._admit(offset, data)
        self._writer.write_at(offset, data)
        self._wrote(data)

    def _wrote(self, data: bytes) -> None:
        self.written += len(data)
        self._end = self._admitted if self._limit is not None else self._start + self.written

    def _admit(self, position: int, data: bytes) -> None:
        """
        Let C{data} be written at C{position}, or stop the upload.

        @raise FileQuotaExceeded: it would take the account past its limit.
        """
        if self.failed is not None:
            raise self.failed
        limit = self._limit
        end = max(self._end, position + len(data)) if limit is not None else 0
        self._admitted = end
        if limit is not None and self._base + end > limit:
            if not self._counted:
                self._counted = True
                # A fresh count (freed space is seen) sees this upload's
                # partial file, flushed first so that it holds all that was
                # written, and the file it replaces: neither is the rest
                # of the account's (L{tree_size} counts the pair as the
                # larger of the two).
                if self._flush():
                    self._base = self._quotas.count(self._address) - max(self._replaced, self._end)
                else:
                    self._base = self._quotas.count(self._address)
            if self._base + end > limit:
                self.failed = FileQuotaExceeded(self._address, self._base + self._end, limit)
                log.info("quota: upload for {address} stopped: {why}", address=self._address, why=self.failed.reason)
                fail = getattr(self._writer, "fail", None)
                if fail is not None:
                    from twisted_mailhub.ftp.data import TransferWriteError

                    # A write error: the partial file goes (ftp/vfs.py rules).
                    self._ended = defer.maybeDeferred(fail, TransferWriteError(self.failed.reason))
                    self._ended.addErrback(lambda _: None)
                raise self.failed

    def _after_end(self) -> defer.Deferred:
        # Fires once the partial file of a stopped upload is gone.
        ended, done = self._ended, defer.Deferred()
        if ended is None:
            done.callback(None)
        else:
            ended.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def close(self) -> defer.Deferred:
        if self.failed is not None:
            failed = self.failed
            return self._after_end().addCallback(lambda _: failure.Failure(failed))

        def counted(result):
            # In place now: the file is C{_end} octets where the count had
            # C{_held} of it (the growth only; less for a shorter rewrite).
            self._quotas.stored(self._address, self._end - self._held)
            return result

        return defer.maybeDeferred(self._writer.close).addCallback(counted)

    def fail(self, reason: Any) -> defer.Deferred:
        if self.failed is not None:
            return self._after_end()  # ended already: the partial file is going
        fail = getattr(self._writer, "fail", None)
        if fail is None:
            return defer.maybeDeferred(self._writer.close)

        def kept(result):
            # An interrupted upload keeps its partial file for a resume:
            # those octets are the account's now (the next upload's check
            # must see them without waiting for a recount).
            # (A writer without a C{path} on disk keeps its partial upload
            # elsewhere: the PostgreSQL one keeps its row.)
            path = getattr(self._writer, "path", None)
            if self.written and (path is None or os.path.exists(path)):
                # (counted beside the file it would replace as its growth: L{partial_growth})
                self._quotas.stored(self._address, max(self._replaced, self._end) - self._held)
            return result

        return defer.maybeDeferred(fail, reason).addCallback(kept)

    def discard(self) -> None:
        if self.failed is None:
            discard = getattr(self._writer, "discard", None)
            if discard is not None:
                discard()
