# -*- test-case-name: tests.test_small_files_durable -*-
"""
Small state made durable before it is acknowledged, off the reactor, in
batches: files replaced whole (an account's IMAP subscriptions) and
directory entries (a folder made, removed or renamed, an FTP directory).

Rules:

 - A directory entry is changed in the reactor, as before (mkdir, rename,
   rmtree: every reader sees it at once); only its flush waits.
   L{SmallFiles.sync_directories} fsyncs each directory named, once per
   batch, in a worker thread.
 - A file written in the reactor without a flush (a new folder's UID list
   and the account's UIDVALIDITY counter, both new or replaced by
   rename) is fsynced by L{SmallFiles.sync_files}, before the directories.
 - A file replaced whole (L{SmallFiles.replace}) is written in the worker
   thread: a temporary file beside it, fsync, rename, then its directory
   fsynced; a crash leaves the old text or the new one, never an empty
   file. Until that batch is done, L{SmallFiles.pending} gives the text
   asked for, so a reader in the same process sees the change at once.
 - A file removed (L{SmallFiles.remove}: a record that a change is under
   way, such as a RENAME's) goes last in its batch, after every other
   file and directory of it is durable, and its directory is fsynced again.
 - One batch is on its way at a time; whatever is asked meanwhile goes with
   the next one (a file asked for twice is written once, with its last
   text; a directory named twice is fsynced once). Each request's
   L{Deferred} fires with None once its batch is durable, or fails with the
   batch's first C{OSError} (and no later file of that batch is written).
 - The caller replies to its client only after that (design rule 6:
   durable before acknowledged).

What is not here, and why (the other files the hub writes besides
messages): a message, a UID list's new line, and the modseq log go through
the group commit (L{twisted_mailhub.store.durable}); a UID list rewritten
whole, the lines of files another program put in and C{mailhub-unchecked}
before them are flushed through here too (L{SmallFiles.in_thread},
L{SmallFiles.sync_files}; store/maildir.py, under --workers too); the accounts file, DKIM and SSH host keys, and
queue files are written tmp + fsync + rename + directory fsync by their own
modules; flags in file names and keywords appended to the UID list are
not synced (the Maildir trade for flag changes); C{mailhub-index}, the POP3
wire-form cache and the quota count (C{mailhub-quota}) are caches,
recomputed when missing or stale.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer, threads
from twisted.python.failure import Failure

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class SmallFiles:
    """
    Group commit for small state (see the module's rules).

    @param reactor: the reactor whose thread pool does the writing (the
        global one when None).
    @param fsync: called with a file descriptor to flush it (C{os.fsync});
        tests pass a recorder.
    @param run: C{run(function, *args)} returns a L{Deferred} of
        C{function(*args)} called off the reactor; tests pass their own.
    """

    def __init__(self, reactor: Any = None, fsync: Callable[[int], None] | None = None, run: Callable[..., defer.Deferred] | None = None):
        self._reactor = reactor
        self.fsync = fsync or os.fsync
        self._run = run
        self._files: dict[str, bytes] = {}  # asked for, not on their way yet
        self._directories: dict[str, None] = {}
        self._synced: dict[str, None] = {}  # files to fsync, written already
        self._removed: dict[str, None] = {}  # files to remove once the rest is durable
        self._waiting: list[defer.Deferred] = []
        self._writing: dict[str, bytes] = {}  # files of the batch on its way
        self._flying: list[defer.Deferred] | None = None  # that batch's waiters

    def pending(self, path: str) -> bytes | None:
        """The text a L{replace} of C{path} asked for and not yet durable, else None."""
        data = self._files.get(path)
        return self._writing.get(path) if data is None else data

    def replace(self, path: str, data: bytes) -> defer.Deferred:
        """Replace the file at C{path} with C{data}, durably (tmp, fsync, rename, directory fsync)."""
        self._files[path] = data
        return self._wait()

    def remove(self, path: str) -> defer.Deferred:
        """Remove the file at C{path} once everything else of its batch is durable, then fsync its directory."""
        self._removed[path] = None
        return self._wait()

    def sync_directories(self, paths: list[str]) -> defer.Deferred:
        """Make the entries of each directory in C{paths} durable (one fsync each per batch)."""
        for path in paths:
            self._directories[path] = None
        return self._wait()

    def sync_files(self, files: list[str], directories: list[str]) -> defer.Deferred:
        """Fsync each file in C{files} (already written), then each directory in C{directories} and those of the files."""
        for path in files:
            self._synced[path] = None
        return self.sync_directories(list(directories) + [os.path.dirname(path) or "." for path in files])

    def settled(self) -> defer.Deferred:
        """Fires (with None, never failing) once everything asked for so far is done."""
        if self._files or self._directories or self._removed:
            d = self._wait()
        elif self._flying is not None:
            d = defer.Deferred()
            self._flying.append(d)
        else:
            return defer.succeed(None)
        return d.addErrback(lambda _: None)

    def _wait(self) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        if self._flying is None:
            self._start()
        return d

    def _start(self) -> None:
        files, synced, directories, waiting = self._files, list(self._synced), list(self._directories), self._waiting
        removed = list(self._removed)
        self._files, self._synced, self._directories, self._waiting, self._removed = {}, {}, {}, [], {}
        self._writing, self._flying = files, waiting
        d = self._in_thread(self._commit, files, directories, synced, removed)

        def done(result: Any) -> None:
            self._writing, self._flying = {}, None
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)
            if self._waiting:
                self._start()

        d.addBoth(done)

    def in_thread(self, function: Callable[..., Any], *args: Any) -> defer.Deferred:
        """
        A L{Deferred} of C{function(*args)} called in the reactor's thread
        pool (or at once when no reactor turns; the C{run} given, in tests):
        for a flush of its own that a caller makes off the reactor
        (store/maildir.py: a UID list rewritten whole).
        """
        return self._in_thread(function, *args)

    def _in_thread(self, function: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._run is not None:
            return defer.maybeDeferred(self._run, function, *args)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        if not getattr(reactor, "running", False):
            # No reactor turning (a script such as mailhub-admin, a unit
            # test): nobody waits on it, and a thread's result would never
            # be delivered; the flush is made at once.
            return defer.maybeDeferred(function, *args)
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    def _commit(self, files: dict[str, bytes], directories: list[str], synced: list[str] = (), removed: list[str] = ()) -> None:
        """In a worker thread: write the files, fsync those written already, then fsync each directory once; then the removals."""
        order = dict.fromkeys(directories)
        for path, data in files.items():
            write_durably(path, data, self.fsync)
            order[os.path.dirname(path) or "."] = None
        for path in synced:
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                continue  # replaced or removed since: its successor was flushed where it was written
            try:
                self.fsync(fd)
            finally:
                os.close(fd)
        self._sync_directories(order)
        if removed:
            # Last, once all the above is on disk: no crash can keep the
            # removal and lose what it was waiting for.
            for path in removed:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            self._sync_directories(dict.fromkeys(os.path.dirname(path) or "." for path in removed))

    def _sync_directories(self, order: dict[str, None]) -> None:
        for directory in order:
            try:
                fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed since (its parent, named too, keeps that)
            try:
                self.fsync(fd)
            finally:
                os.close(fd)


def write_temporary(path: str, data: bytes, fsync: Callable[[int], None] = os.fsync) -> str:
    """
    C{data} written to a temporary file beside C{path} (named after this
    process, so that each worker of C{--workers} has its own) and fsynced;
    returns its name, for the caller to rename into place. Raises
    C{OSError}; the temporary file is then removed.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return tmp


def write_durably(path: str, data: bytes, fsync: Callable[[int], None] = os.fsync) -> None:
    """
    Replace C{path} with C{data}: a temporary file beside it
    (L{write_temporary}), written, fsynced, renamed over C{path}. The
    directory is not fsynced here. Raises C{OSError}; the old file then
    stays.
    """
    tmp = write_temporary(path, data, fsync)
    try:
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
