# -*- test-case-name: tests.test_ftp_units -*-
"""
The virtual file system FTP users see, and its on-disk backend.

Rules:
  - A file system backend is a plugin (L{IFileSystemFactory}, found in
    C{twisted_mailhub.plugins}); C{--ftp-filesystem NAME} picks one, C{disk}
    is the default. It hands out one L{IMailhubShell} per login: the avatar
    the realm gives C{ftp.IFTPShell}.
  - A shell sees a tree rooted at C{/}: the account's home
    (C{DATA/ftp/<domain>/<localpart>/}, made on first login) or, for an
    anonymous login, C{DATA/ftp/public/} read-only.
  - Paths arrive as lists of segments (Twisted's C{toSegments} already
    refused C{..} above C{/}). Nothing outside the root can be named: a
    segment with a slash or NUL is refused, and every path is resolved
    (symlinks included) and must stay inside the root, else 550
    (L{ftp.PermissionDeniedError}).
  - A read-only shell refuses every change with 550 Permission denied.
  - Writes are made durable before the transfer is acknowledged: the
    writer's C{close()} flushes and fsyncs in a thread so the reactor never
    waits on the disk for the length of a file.
  - A directory made or removed, a file removed and a rename (MKD, RMD,
    DELE, RNTO; SFTP's MKDIR, RMDIR, REMOVE, RENAME; the JSON API's) are
    done at once and answered only once the directory that holds the
    entry is fsynced, in a worker thread, batched with the other
    sessions' (L{twisted_mailhub.store.smallfiles}).
  - Partial uploads are never seen under the file's name. An upload is
    written to a hidden partial file beside it (L{partial_name}:
    C{.NAME.mailhub-part}), left out of listings, and renamed over
    C{NAME} only when complete and on disk (the 226). A write error (disk
    full) removes the partial file at once. An interrupted upload (the
    data or control connection lost, ABOR) keeps it, hidden, so that it
    can be resumed: C{SIZE NAME} then answers the size received so far,
    and C{REST <size>} + C{STOR NAME} continues it (C{APPE NAME} too).
    REST or APPE on a complete file works on a copy of it, which replaces
    it on success. A plain STOR starts the partial afresh.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import shutil
import pwd
import stat as statmod
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.protocols import ftp
from zope.interface import Attribute, Interface, implementer

from twisted_mailhub.store.durable import fsync_directory
from twisted_mailhub.store.smallfiles import SmallFiles

log = Logger()


class IMailhubShell(ftp.IFTPShell):
    """
    L{ftp.IFTPShell} plus what the hub's FTP server adds: restart offsets,
    append, unique names, and a read-only flag.
    """

    readonly = Attribute("True if every change is refused (anonymous).")

    def openForReadingAt(path, offset):
        """
        Like C{openForReading}, starting at byte C{offset} (REST). The
        reader may have C{fileno()}: the server then uses C{os.sendfile}.
        """

    def openForWritingAt(path, offset, append):
        """
        Like C{openForWriting}; write from C{offset} (REST) and truncate
        there, or at the end with C{append} (APPE).
        """

    def uniqueName(path):
        """
        A Deferred firing with segments of a name that does not exist yet,
        next to C{path} (STOU).
        """

    # Optional (callers look them up with getattr; a shell without one
    # cannot keep that attribute):

    def setTimes(path, accessed, modified):
        """
        Set C{path}'s access and modification times (seconds since the
        epoch; C{accessed} may be L{None}: the file system's own choice).
        A Deferred firing with L{None} once the change is durable (SFTP
        SETSTAT, FTP MFMT and SITE UTIME).
        """

    def setPermissions(path, mode):
        """
        Set C{path}'s permission bits from C{mode} (the low 12 bits count).
        A Deferred firing with the mode kept, once durable: see
        L{kept_mode}.
        """


class IFileSystem(Interface):
    def shell_for(account):
        """
        The L{IMailhubShell} for C{account} (an L{Account}), or the
        anonymous read-only one for L{None}.
        """


class IFileSystemFactory(Interface):
    name = Attribute("The name given to --ftp-filesystem.")
    description = Attribute("One line for --help.")

    def make_filesystem(data_dir):
        """
        An L{IFileSystem} keeping its files under C{data_dir}.
        """


def make_filesystem(options: Any, data_dir: str) -> Any:
    """
    The file system C{--ftp-filesystem NAME[:ARGUMENT]} names (one per
    process: FTP and SFTP share it). C{postgresql} without a DSN takes the
    store's (C{--store postgresql:DSN}).
    """
    spec = options.get("ftp-filesystem") or "disk"
    name, _, argument = spec.partition(":")
    if name == "postgresql" and not argument:
        store = options.get("store") or ""
        argument = store.partition(":")[2] if store.startswith("postgresql:") else ""
    key = (name, argument, data_dir)
    if key not in _made:
        factory = filesystem_factories()[name]
        _made[key] = factory.make_filesystem(data_dir, argument) if getattr(factory, "takes_argument", False) else factory.make_filesystem(data_dir)
    return _made[key]


_made: dict[tuple[str, str, str], Any] = {}


def check_filesystem_option(options: Any) -> str | None:
    """What is wrong with C{--ftp-filesystem}, or L{None}."""
    spec = options.get("ftp-filesystem") or "disk"
    name, sep, argument = spec.partition(":")
    found = filesystem_factories()
    if name not in found:
        from twisted_mailhub.optionvalues import shown

        return f"--ftp-filesystem {shown(spec)}: not one of {', '.join(sorted(found))}"
    takes = getattr(found[name], "takes_argument", False)
    if sep and not takes:
        return f"--ftp-filesystem {name}: takes no ':' argument"
    if takes and not argument and not (options.get("store") or "").startswith("postgresql:"):
        return f"--ftp-filesystem {name}: needs {name}:DSN (or --store postgresql:DSN, whose database it then uses)"
    return None


def filesystem_factories() -> dict[str, Any]:
    from twisted.plugin import getPlugins

    from twisted_mailhub import plugins

    return {f.name: f for f in getPlugins(IFileSystemFactory, plugins)}


class FileReader:
    """
    An open file to send: L{ftp.IReadFile} with C{fileno()} for sendfile.
    """

    def __init__(self, f, offset: int):
        self.file = f
        self.offset = offset

    def fileno(self) -> int:
        return self.file.fileno()

    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def read(self, n: int) -> bytes:
        return self.file.read(n)

    def close(self) -> None:
        self.file.close()

    def send(self, consumer):
        from twisted.protocols.basic import FileSender

        d = FileSender().beginFileTransfer(self.file, consumer)
        return d.addBoth(lambda r: (self.close(), r)[1])


PARTIAL_SUFFIX = ".mailhub-part"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def partial_name(name: str) -> str:
    """The hidden name an upload of C{name} is written under until complete."""
    hidden = "." + name + PARTIAL_SUFFIX
    if len(os.fsencode(hidden)) > 255:  # NAME_MAX
        hidden = "." + hashlib.sha256(os.fsencode(name)).hexdigest()[:40] + PARTIAL_SUFFIX
    return hidden


def is_partial_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def partial_name_refused(segments) -> str:
    """
    Why a path naming C{.NAME.mailhub-part} itself is refused: such a name
    is an upload in progress, hidden from listings and removed after
    L{PARTIAL_MAX_AGE}, so a file a user gave that name would vanish.
    """
    shown = "/" + "/".join(segments)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{shown}: names of the form .NAME{PARTIAL_SUFFIX} are the server's own (uploads in progress); choose another"


def is_listed_name(name: str) -> bool:
    """
    Does a listing (FTP LIST/NLST/MLSD/STAT, SFTP, the API) show this name?
    Not a partial upload's, and not one with a control character (made by
    another program): no door of the hub can name it (FTP 501, SFTP and
    the API refuse them), and in an FTP listing or a STAT reply a CR or LF
    would start a line of the name's choosing, an ESC drive the terminal.
    """
    return not is_partial_name(name) and not any(ord(c) < 32 or ord(c) == 127 for c in name)


# A file this big (octets) removed by DELE / SFTP REMOVE is renamed out of
# sight and unlinked in a thread (FileSystem.removeFile).
UNLINK_LATER_OVER = 64 * 1024 * 1024
PARTIAL_MAX_AGE = 36 * 3600  # seconds an interrupted upload is kept for a resume (Maildir tmp/'s limit)


def clean_partials(root: str, now: float | None = None, max_age: float = PARTIAL_MAX_AGE) -> int:
    """
    Remove the hidden partial uploads (C{.NAME.mailhub-part}) under C{root}
    not written to for C{max_age} seconds: an interrupted upload no one
    resumed (the client gave up, the hub was killed) would otherwise stay,
    unseen in every listing, for ever. Returns how many were removed.
    Symbolic links are not followed.
    """
    import time

    now = time.time() if now is None else now
    removed = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if not is_partial_name(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
                if statmod.S_ISREG(st.st_mode) and now - st.st_mtime > max_age:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
    return removed


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class FileWriter:
    """
    A file being received: C{write()} as bytes arrive, C{close()} makes it
    durable (fsync in a thread) and, when it is written under a partial
    name (C{final} given), renames it into place. While a large file
    arrives, the bytes already written are flushed to disk in a thread
    every L{SYNC_EVERY} bytes, so the last fsync (the one the 226 waits
    for) is short. C{fail()} ends a broken upload; C{discard()} one that
    never started. L{ftp.IWriteFile}'s C{receive()} is kept for Twisted's
    own callers.
    """

    SYNC_EVERY = 64 * 1024 * 1024

    def __init__(self, f, path: str, final: str | None = None, fresh: bool = True):
        self.file = f
        self.path = path
        self.final = final
        self.fresh = fresh  # the partial file was made by this upload
        self.written = 0
        self._unsynced = 0
        self._syncing: defer.Deferred | None = None
        # Asked for while the file is open (SFTP FSETSTAT, scp -p): applied
        # at close, after the last byte, so that no later write moves the
        # time, and made durable by the same fsync.
        self.times: tuple[float | None, float] | None = None
        self.mode: int | None = None

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.written += len(data)
        self._unsynced += len(data)
        if self._unsynced >= self.SYNC_EVERY and self._syncing is None:
            self._unsynced = 0
            self._syncing = threads.deferToThread(os.fdatasync, self.file.fileno())
            self._syncing.addErrback(lambda _: None).addBoth(self._synced)

    def _synced(self, _):
        self._syncing = None

    def receive(self):
        return defer.succeed(ftp.FileConsumer(self.file))

    def _after_sync(self, work) -> defer.Deferred:
        # Never close the descriptor under a sync still running.
        pending = self._syncing if self._syncing is not None else defer.succeed(None)
        return pending.addCallback(lambda _: threads.deferToThread(work))

    def close(self) -> defer.Deferred:
        """The upload is complete: on disk, then in place under its name."""

        def durable():
            try:
                try:
                    self.file.flush()
                    self._apply_attributes()
                    os.fsync(self.file.fileno())
                finally:
                    self.file.close()
                if self.final is not None:
                    os.rename(self.path, self.final)
            except OSError as e:
                if e.errno in _NO_SPACE and self.final is not None:
                    _unlink_quietly(self.path)  # it would keep the disk full
                raise
            # A new file's name must survive a crash too.
            fsync_directory(os.path.dirname(self.final or self.path) or ".")

        return self._after_sync(durable)

    def _apply_attributes(self) -> None:
        fd = self.file.fileno()
        if self.mode is not None:
            os.fchmod(fd, kept_mode(self.mode, False))
        if self.times is not None:
            accessed, modified = self.times
            set_file_times(fd, accessed, modified)

    def fail(self, reason) -> defer.Deferred:
        """
        The upload broke. A write error (disk full) removes the partial
        file; an interruption keeps it, on disk, for a REST to resume.
        """
        from twisted_mailhub.ftp.data import TransferWriteError

        error = getattr(reason, "value", reason)
        remove = isinstance(error, TransferWriteError) or getattr(error, "errno", None) in _NO_SPACE

        def end():
            try:
                if not remove:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                try:
                    self.file.close()
                except OSError:
                    pass
                if remove and self.final is not None:
                    _unlink_quietly(self.path)

        return self._after_sync(end)

    def discard(self) -> None:
        """The upload never started (no data connection)."""
        try:
            self.file.close()
        except OSError:
            pass
        if self.fresh and self.final is not None:
            _unlink_quietly(self.path)


class FileActionError(ftp.FTPCmdError):
    """
    C{550} for file-system errors FTP has no name of its own for (a name
    too long, a symlink loop, an I/O error): a reply, not a traceback.
    """

    errorCode = ftp.REQ_ACTN_NOT_TAKEN


class NameNotAllowedError(ftp.FTPCmdError):
    """
    C{553} (RFC 959 §4.2: file name not allowed), for a name a file system
    cannot keep: one that is not UTF-8 (FTP and SFTP pass such names
    through as octets, PEP 383 surrogate escapes) on a file system whose
    names are text, the PostgreSQL one. A permanent refusal with a reason,
    not a temporary C{451} (the client would retry it for ever).
    """

    errorCode = ftp.FILENAME_NOT_ALLOWED


def utf8_name(segment: str) -> bool:
    """Whether C{segment} (a path segment, octets that are not UTF-8 kept as surrogate escapes) is UTF-8 text."""
    try:
        segment.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UTF8 = "the name is not UTF-8, and this file store keeps names in UTF-8; choose another"


def not_utf8_refused(segments) -> str:
    """The path of a name refused as not UTF-8 (L{NameNotAllowedError}'s argument), as the other errors name it."""
    return "/" + "/".join(segments)


class FileSystemUnavailable(ftp.FTPCmdError):
    """
    C{451}, a temporary error (RFC 959 §4.2): the file system's database
    cannot be reached now. C{reason} says why, for the log only; the reply
    does not show it.
    """

    errorCode = ftp.REQ_ACTN_ABRTD_LOCAL_ERR

    def __init__(self, reason: str = ""):
        ftp.FTPCmdError.__init__(self)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason or "the file store cannot be reached"


class FileSystemUnavailableWrite(OSError):
    """
    A write the file system's database could not take now: an C{OSError},
    as FTP's data connection and SFTP's WRITE expect of a failed write.
    C{str()} says why, for the log only; the client is told
    L{FileSystemUnavailable}'s temporary error.
    """


class StorageFullError(ftp.FTPCmdError):
    """C{552}: the account's file quota is full (RFC 959 §4.2, exceeded storage allocation)."""

    errorCode = ftp.EXCEEDED_STORAGE_ALLOC


class DiskFullError(StorageFullError):
    """C{452}: the server's disk is full (RFC 959 §4.2, insufficient storage space; a temporary reply)."""

    errorCode = ftp.REQ_ACTN_ABRTD_INSUFF_STORAGE


_KNOWN_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


# What the other errors mean, in the hub's words: a reply never carries
# the OS's own text (strerror: "Invalid argument" says nothing to a user).
_ERRNO_WORDS = {
    errno.EINVAL: "not possible with these names (a folder cannot go inside itself)",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many symbolic links",
    errno.ENOTEMPTY: "the folder is not empty",
    errno.EXDEV: "cannot move between file systems",
    errno.EBUSY: "in use",
    errno.EROFS: "the file system is read-only",
    errno.EMLINK: "too many links",
    errno.ETXTBSY: "in use",
    errno.ENOSPC: "no space left on the server's disk",
    errno.EDQUOT: "no space left on the server's disk",
}


def set_file_times(target, accessed: float | None, modified: float) -> None:
    """
    C{utime(2)} of C{target} (a path or an open fd), times in seconds since
    the epoch; an C{accessed} of L{None} (FTP MFMT names only the
    modification time) takes C{modified}. Raises C{OSError}.
    """
    os.utime(target, (modified if accessed is None else accessed, modified))


def kept_mode(mode: int, directory: bool) -> int:
    """
    The permission bits a file (or C{directory}) keeps when a client asks
    for C{mode} (SFTP SETSTAT, C{scp -p}): the low 9 bits, with the owner's
    read and write (and a folder's search) bit always on. The files belong
    to the hub: a mode that shut its owner out would make the hub refuse
    its own user's file; set-id and sticky bits mean nothing to it.
    """
    return (mode & 0o777) | (0o700 if directory else 0o600)


def error_words(e: OSError) -> str:
    """An OS error as the hub says it in a reply (never the OS's text)."""
    return _ERRNO_WORDS.get(e.errno, "the server's file system refused it (its log says why)")


def _off_reactor(function: Any) -> defer.Deferred:
    """A Deferred of C{function()} called in the reactor's thread pool; at once when no reactor turns (a script, a unit test)."""
    from twisted.internet import reactor

    if not getattr(reactor, "running", False):
        return defer.maybeDeferred(function)
    return threads.deferToThread(function)


def _fail(e: OSError, segments) -> defer.Deferred:
    path = "/" + "/".join(segments)
    if e.errno in _KNOWN_ERRNOS:
        return ftp.errnoToFailure(e.errno, path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        # (the hub's quota is 552; a full disk, or the OS's own quota, 452)
        return defer.fail(StorageFullError() if getattr(e, "is_quota", False) else DiskFullError())
    if e.errno not in _ERRNO_WORDS:
        log.warn("ftp file system error on {path}: {error}", path=path[:200], error=e.strerror or e.__class__.__name__)
    # Twisted's errnoToFailure would re-raise these as unknown errors.
    shown = path if len(path) <= 80 else path[:77] + "..."
    return defer.fail(FileActionError(f"{shown}: {error_words(e)}"))


def resolved(base: str, parts) -> str:
    """
    C{os.path.realpath(os.path.join(base, *parts))} for a C{base} that is
    a real path already (absolute, normalised, no symlink on it), in far
    fewer steps: only the C{parts} are looked at (C{lstat}, from the first
    down, none past one that is not there), and only a symlink among them,
    or a part that is empty, C{.}, C{..} or holds a C{/}, takes the whole
    C{realpath}. (realpath looks at every component from C{/}: ~13 calls
    of lstat per FTP session, a few percent of its instructions.)
    """
    path = base
    look = True
    for part in parts:
        if not part or part == "." or part == ".." or "/" in part:
            return os.path.realpath(os.path.join(base, *parts))
        path = path + "/" + part if path != "/" else "/" + part
        if look:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                look = False  # not there: what follows cannot be either
                continue
            if statmod.S_ISLNK(mode):
                return os.path.realpath(os.path.join(base, *parts))
    return path


_small_files: SmallFiles | None = None


def _shared_small_files() -> SmallFiles:
    """The directory flushes of every disk shell of the process (batched together)."""
    global _small_files
    if _small_files is None:
        _small_files = SmallFiles()
    return _small_files


@implementer(IMailhubShell)
class DiskShell:
    """
    An L{IMailhubShell} on a directory of the local disk.
    """

    def __init__(self, root: str, readonly: bool = False, real: bool = False, small_files: SmallFiles | None = None):
        # (real: the caller has resolved the root already, see resolved)
        self.root = root if real else os.path.realpath(root)
        self.readonly = readonly
        self.small_files = small_files or _shared_small_files()

    def _durable(self, paths, segments) -> defer.Deferred:
        """
        Fires with None once the entries just changed at C{paths} are on
        disk (their directories fsynced); a failure as L{_fail} gives it.
        """
        d = self.small_files.sync_directories([os.path.dirname(p) for p in paths])

        def failed(reason):
            reason.trap(OSError)
            return _fail(reason.value, segments)

        return d.addErrback(failed)

    # -- paths ----------------------------------------------------------

    def real_path(self, segments, follow: bool = True) -> str:
        """
        The local path of C{segments}; L{ftp.PermissionDeniedError} if it
        (or a symlink on the way) leads outside the root.
        """
        for s in segments:
            if not s or "/" in s or "\0" in s or s in (".", ".."):
                raise ftp.PermissionDeniedError("/" + "/".join(segments))
            if is_partial_name(s):
                raise FileActionError(partial_name_refused(segments))
        root = self.root
        # The parent must resolve inside the root; the last segment too
        # unless it is the thing itself (a dangling link to delete).
        if follow or not segments:
            check = resolved(root, segments)
        else:
            check = os.path.join(resolved(root, segments[:-1]), segments[-1])
        if check != root and not check.startswith(root + os.sep):
            raise ftp.PermissionDeniedError("/" + "/".join(segments))
        return check if follow else os.path.join(root, *segments)

    def _guard(self, segments, follow=True):
        try:
            return self.real_path(segments, follow), None
        except ftp.FTPCmdError as e:
            return None, defer.fail(e)

    def _write_guard(self, segments, follow=True):
        if self.readonly:
            return None, defer.fail(ftp.PermissionDeniedError("/" + "/".join(segments)))
        return self._guard(segments, follow)

    # -- IFTPShell ---------------------------------------------------------

    def makeDirectory(self, path):
        p, err = self._write_guard(path)
        if err:
            return err
        try:
            os.mkdir(p)
        except OSError as e:
            return _fail(e, path)
        return self._durable([p], path)

    def removeDirectory(self, path):
        p, err = self._write_guard(path, follow=False)
        if err:
            return err
        if not path:
            return defer.fail(ftp.PermissionDeniedError("/"))
        try:
            if not os.path.lexists(p):
                # rmdir(2) answers ENOENT: "no such file", not "not a
                # directory" (SFTP's RMDIR: SSH_FX_NO_SUCH_FILE, as OpenSSH).
                return defer.fail(ftp.FileNotFoundError("/" + "/".join(path)))
            if os.path.islink(p) or not os.path.isdir(p):
                return defer.fail(ftp.IsNotADirectoryError("/" + "/".join(path)))
            os.rmdir(p)
        except OSError as e:
            return _fail(e, path)
        return self._durable([p], path)

    def removeFile(self, path):
        p, err = self._write_guard(path, follow=False)
        if err:
            return err
        hidden = None
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                return defer.fail(ftp.IsADirectoryError("/" + "/".join(path)))
            st = os.lstat(p)
            if statmod.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size >= UNLINK_LATER_OVER:
                # A big file: its name goes now (renamed to a hidden
                # partial name beside it: no listing shows it, and one a
                # crash leaves is removed with old partial uploads), its
                # blocks are freed in a thread (an unlink of gigabytes
                # waits on the file system, and held every session).
                hidden = os.path.join(os.path.dirname(p), "." + hashlib.sha256(os.fsencode(f"{p}\0{os.getpid()}\0{time.time_ns()}")).hexdigest()[:40] + PARTIAL_SUFFIX)
                os.rename(p, hidden)
            else:
                os.remove(p)
        except OSError as e:
            return _fail(e, path)
        d = self._durable([p], path)
        if hidden is not None:

            def unlink() -> None:
                _unlink_quietly(hidden)

            def freed(result):
                _off_reactor(unlink).addErrback(lambda reason: log.warn("ftp file system: {path} not removed yet ({error})", path=hidden, error=error_words(reason.value)))
                return result

            d.addBoth(freed)
        return d

    def rename(self, fromPath, toPath):
        a, err = self._write_guard(fromPath, follow=False)
        if err:
            return err
        b, err = self._write_guard(toPath, follow=False)
        if err:
            return err
        if not fromPath or not toPath:
            return defer.fail(ftp.PermissionDeniedError("/"))
        try:
            os.rename(a, b)
        except OSError as e:
            return _fail(e, fromPath)
        return self._durable([a, b], toPath)

    def access(self, path):
        p, err = self._guard(path)
        if err:
            return err
        try:
            if not os.path.exists(p):
                # A missing folder is missing (SFTP's OPENDIR:
                # SSH_FX_NO_SUCH_FILE, as opendir(3) in OpenSSH's server).
                return defer.fail(ftp.FileNotFoundError("/" + "/".join(path)))
            if not os.path.isdir(p):
                return defer.fail(ftp.IsNotADirectoryError("/" + "/".join(path)))
            # Opened, not read: EACCES shows here, and a folder of
            # 20,000 names is not listed in the reactor for a CWD.
            with os.scandir(p):
                pass
        except OSError as e:
            return _fail(e, path)
        return defer.succeed(None)

    def stat(self, path, keys=()):
        p, err = self._guard(path)
        if err:
            return err
        try:
            st = os.stat(p)
        except FileNotFoundError as e:
            # SIZE of a name whose upload was interrupted: where REST resumes.
            try:
                if path and tuple(keys) == ("size",):
                    return defer.succeed([os.stat(os.path.join(os.path.dirname(p), partial_name(path[-1]))).st_size])
            except OSError:
                pass
            return _fail(e, path)
        except OSError as e:
            return _fail(e, path)
        return defer.succeed([self._fact(st, k) for k in keys])

    def list(self, path, keys=()):
        """
        A L{Deferred} of C{[(name, [fact for each of keys])]} for the
        directory C{path} (segments), or of the one entry of a file (FTP
        LIST, NLST, MLSD; SFTP READDIR). The listing and a stat of each
        entry run in the reactor's thread pool (L{_off_reactor}): a folder
        of 20,000 files, or a slow disk, holds no other session. Fails
        with the FTP error of an C{OSError} (L{_fail}).
        """
        p, err = self._guard(path)
        if err:
            return err

        def listing() -> list:
            if not os.path.isdir(p):
                st = os.stat(p)
                return [(path[-1] if path else "/", [self._fact(st, k) for k in keys])]
            names = sorted(n for n in os.listdir(p) if is_listed_name(n))
            out = []
            for name in names:
                try:
                    # Links are shown as what they point to only when that is
                    # inside the root; others are left out of listings.
                    self.real_path(path + [name])
                    st = os.stat(os.path.join(p, name))
                except (OSError, ftp.FTPCmdError):
                    continue
                out.append((name, [self._fact(st, k) for k in keys]))
            return out

        def failed(reason):
            reason.trap(OSError)
            return _fail(reason.value, path)

        return _off_reactor(listing).addErrback(failed)

    def openForReading(self, path):
        return self.openForReadingAt(path, 0)

    def openForWriting(self, path):
        return self.openForWritingAt(path, 0, False)

    # -- IMailhubShell -----------------------------------------------------

    def openForReadingAt(self, path, offset):
        p, err = self._guard(path)
        if err:
            return err
        try:
            if os.path.isdir(p):
                return defer.fail(ftp.IsADirectoryError("/" + "/".join(path)))
            # O_NONBLOCK: open(2) of a FIFO left in a home would wait for a
            # writer and stop every session of the hub; a device never ends.
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                os.close(fd)
                return defer.fail(FileActionError("/" + "/".join(path)[:79] + ": not a regular file (a pipe or a device), so it cannot be sent"))
            os.set_blocking(fd, True)
            f = os.fdopen(fd, "rb", buffering=0)
            if 0 < offset <= st.st_size:
                # Past the end there is nothing to seek to (the transfer
                # refuses it, 554); past 2**63 the seek itself fails.
                f.seek(offset)
        except OSError as e:
            return _fail(e, path)
        return defer.succeed(FileReader(f, offset))

    def openForWritingAt(self, path, offset, append):
        p, err = self._write_guard(path)
        if err:
            return err
        if not path:
            return defer.fail(ftp.IsADirectoryError("/"))
        part = os.path.join(os.path.dirname(p), partial_name(os.path.basename(p)))
        try:
            if os.path.isdir(p):
                return defer.fail(ftp.IsADirectoryError("/" + "/".join(path)))
            resumed = bool(append or offset) and os.path.exists(part)
            # Continue a complete file on a copy: it stays whole until the
            # new version is.
            copy = bool(append or offset) and not resumed and os.path.isfile(p)
        except OSError as e:
            return _fail(e, path)

        def opened() -> FileWriter:
            try:
                if copy:
                    shutil.copyfile(p, part)
                elif not resumed:
                    _unlink_quietly(part)
                if append:
                    f = open(part, "ab")
                elif offset:
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
                    f = os.fdopen(fd, "wb")
                    f.seek(offset)
                    f.truncate(offset)
                else:
                    f = open(part, "wb")
            except OSError as e:
                if e.errno in _NO_SPACE:
                    _unlink_quietly(part)
                raise
            return FileWriter(f, part, final=p, fresh=not resumed)

        if copy:
            # The copy of a whole file (gigabytes, for an APPE) in a
            # thread: the reactor serves every other session meanwhile.
            d = _off_reactor(opened)

            def failed(reason):
                reason.trap(OSError)
                return _fail(reason.value, path)

            return d.addErrback(failed)
        try:
            return defer.succeed(opened())
        except OSError as e:
            return _fail(e, path)

    def uniqueName(self, path):
        if self.readonly:
            return defer.fail(ftp.PermissionDeniedError("/" + "/".join(path)))
        base = path[-1] if path else "file"
        parent = path[:-1]
        for n in range(1, 10000):
            candidate = parent + [f"{base}.{n}"]
            p, err = self._guard(candidate)
            if err:
                return err
            if not os.path.lexists(p):
                return defer.succeed(candidate)
        return defer.fail(ftp.FileExistsError(base))

    # -- times and modes (optional in IMailhubShell) -----------------------

    def _changed_durably(self, path, change) -> defer.Deferred:
        """
        C{change(local_path)} then an fsync of the file (its inode holds
        times and mode), both in a thread: the reactor never waits for the
        disk. Fires with what C{change} returned.
        """
        p, err = self._write_guard(path)
        if err:
            return err
        if not path:
            return defer.fail(ftp.PermissionDeniedError("/"))

        def work():
            result = change(p)
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return result

        def failed(reason):
            reason.trap(OSError)
            return _fail(reason.value, path)

        return threads.deferToThread(work).addErrback(failed)

    def setTimes(self, path, accessed, modified):
        """L{IMailhubShell.setTimes}: C{utime(2)}, then fsync."""
        return self._changed_durably(path, lambda p: set_file_times(p, accessed, modified))

    def setPermissions(self, path, mode):
        """L{IMailhubShell.setPermissions}: C{chmod(2)} to L{kept_mode}, then fsync."""

        def change(p):
            kept = kept_mode(mode, os.path.isdir(p))
            os.chmod(p, kept)
            return kept

        return self._changed_durably(path, change)

    # -- facts ----------------------------------------------------------

    def _fact(self, st: os.stat_result, key: str):
        if key == "size":
            return st.st_size
        if key == "directory":
            return statmod.S_ISDIR(st.st_mode)
        if key == "permissions":
            return st.st_mode
        if key == "hardlinks":
            return st.st_nlink
        if key == "modified":
            return st.st_mtime
        if key == "owner":
            try:
                return pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                return str(st.st_uid)
        if key == "group":
            try:
                return grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                return str(st.st_gid)
        if key == "unique":
            return f"{st.st_dev:x}g{st.st_ino:x}"
        if key == "writable":
            return not self.readonly
        raise ValueError(f"unknown fact {key!r}")


@implementer(IFileSystem)
class DiskFileSystem:
    """
    Homes under C{ROOT/<domain>/<localpart>/}, the public area under
    C{ROOT/public/}.
    """

    def __init__(self, root: str):
        from twisted_mailhub.datafolder import DataFolder

        self.root = root
        self._real_root: str | None = None
        self._data = DataFolder(root)

    def clean_now(self, reactor: Any) -> defer.Deferred:
        """
        L{clean_partials} in a worker thread; one log line when it removed
        any. The FTP component runs it at start and hourly (a
        C{TimerService} of the hub, stopped with it).
        """

        def report(removed):
            if removed:
                log.info("ftp: removed {n} interrupted upload(s) not resumed within 36 h (hidden .NAME.mailhub-part files)", n=removed)

        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), clean_partials, self.root)
        return d.addCallbacks(report, lambda f: log.warn("ftp: cleaning interrupted uploads failed: {error}", error=f.value))

    def home(self, account) -> str:
        return os.path.join(self.root, account.domain.lower(), account.localpart)

    def shell_for(self, account) -> DiskShell:
        if account is None:
            public = os.path.join(self.root, "public")
            if not os.path.isdir(public):
                self._data.check()
                os.makedirs(public, exist_ok=True)
            return DiskShell(public, readonly=True)
        home = self.home(account)
        if not os.path.isdir(home):
            self._data.check()  # (not made again at the old place if it was moved or removed)
            os.makedirs(home, exist_ok=True)
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        # The home's real path from the root's, found once: a login looks
        # only at the domain's folder and the home (see resolved).
        return DiskShell(resolved(self._real_root, (account.domain.lower(), account.localpart)), real=True)


__all__ = [
    "IMailhubShell",
    "IFileSystem",
    "IFileSystemFactory",
    "DiskShell",
    "DiskFileSystem",
    "filesystem_factories",
]
