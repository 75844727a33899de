# -*- test-case-name: tests.test_store -*-
"""
Durable file writes with group commit.

Rules: a write is acknowledged (its Deferred fires) only after the file's
data is on disk, it has been renamed into place, and the directory that
holds it is fsynced (tmp -> flush data -> rename -> fsync dir). A file is
renamed only once its data is on disk, so whatever a crash leaves in the
final place is complete. Everything that touches the disk runs in a worker
thread, never in the reactor.

Theory of operation: writes queue up while one batch is on its way to disk;
when that batch is done, everything queued meanwhile becomes the next batch.
A lone write is not delayed: it starts a batch at once, and its data is
flushed with fsync. A batch of several files on Linux is flushed with one
syncfs(2) of their filesystem (one journal commit for all of them, where
per-file fsyncs cost one commit each or, run concurrently, a convoy of
threads); elsewhere their fsyncs run concurrently so that the commits
merge. Each directory is fsynced once per batch. So 32 concurrent
deliveries cost a few disk flushes rather than 32, and nothing is
acknowledged before it is safe. syncfs also flushes other programs' dirty
data on the same filesystem: a busy shared disk makes batches slower, not
less safe.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Callable

import attr
from twisted.internet import defer, threads
from twisted.logger import Logger

log = Logger()


@attr.s(auto_attribs=True)
class PendingWrite:
    tmp_path: str
    final_path: str
    data: bytes | Callable[[int], None]  # bytes, or a function that writes to an fd
    deferred: defer.Deferred = attr.ib(factory=defer.Deferred)


def _write_file(path: str, data, sync: bool = True) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if callable(data):
            data(fd)
        else:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return fd


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) (Linux 2.6.39; reports writeback errors since 5.8)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _find_syncfs()


def _sync_filesystem(path: str) -> None:
    """Flush everything of the filesystem that holds C{path} to disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}", path)
    finally:
        os.close(fd)


_pool: Any = None


def _fsync_pool():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mailhub-fsync")
    return _pool


def _discard(item: PendingWrite) -> None:
    try:
        os.unlink(item.tmp_path)
    except OSError:
        pass


def _commit_with_syncfs(batch: list[PendingWrite]) -> list[BaseException | None]:
    """
    Write every file of the batch, flush their filesystems once each with
    syncfs, then rename them into place.
    """
    outcome: list[BaseException | None] = [None] * len(batch)
    devices: dict[int, str] = {}  # filesystem -> a directory on it
    device_of: dict[str, int] = {}  # tmp directory -> filesystem
    for i, item in enumerate(batch):
        try:
            _write_file(item.tmp_path, item.data, sync=False)
            directory = os.path.dirname(item.tmp_path) or "."
            if directory not in device_of:
                device_of[directory] = os.stat(directory).st_dev
                devices.setdefault(device_of[directory], directory)
        except BaseException as e:  # noqa: B036 - reported to the caller
            outcome[i] = e
            _discard(item)
    failed: dict[int, OSError] = {}
    for device, directory in devices.items():
        try:
            _sync_filesystem(directory)
        except OSError as e:
            failed[device] = e
    for i, item in enumerate(batch):
        if outcome[i] is not None:
            continue
        try:
            error = failed.get(device_of[os.path.dirname(item.tmp_path) or "."])
            if error is not None:
                raise error
            os.rename(item.tmp_path, item.final_path)
        except BaseException as e:  # noqa: B036 - reported to the caller
            outcome[i] = e
            _discard(item)
    return outcome


def _commit_batch(batch: list[PendingWrite]) -> list[BaseException | None]:
    """
    Runs in a worker thread: write, flush and rename every file of the
    batch, then fsync each directory once. Returns one error (or None) per
    write.
    """
    if len(batch) > 1 and _syncfs is not None:
        outcome = _commit_with_syncfs(batch)
    else:
        outcome = _commit_with_fsync(batch)
    directories: set[str] = set()
    for i, item in enumerate(batch):
        if outcome[i] is None:
            directories.add(os.path.dirname(item.final_path))
    for directory in directories:
        try:
            fsync_directory(directory)
        except OSError as e:
            for i, item in enumerate(batch):
                if outcome[i] is None and os.path.dirname(item.final_path) == directory:
                    outcome[i] = e
    return outcome


def _commit_with_fsync(batch: list[PendingWrite]) -> list[BaseException | None]:
    """
    Write, fsync and rename each file; several at the same time, so that
    the filesystem merges their journal commits.
    """
    outcome: list[BaseException | None] = [None] * len(batch)

    def one(i: int) -> None:
        item = batch[i]
        try:
            _write_file(item.tmp_path, item.data)
            os.rename(item.tmp_path, item.final_path)
        except BaseException as e:  # noqa: B036 - reported to the caller
            outcome[i] = e
            _discard(item)

    if len(batch) > 1:
        list(_fsync_pool().map(one, range(len(batch))))
    else:
        one(0)
    return outcome


class GroupCommitWriter:
    """
    Writes files durably, batching the flushes of concurrent writes.
    """

    def __init__(self, reactor: Any = None, max_batch: int = 256):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.max_batch = max_batch
        self._queue: list[PendingWrite] = []
        self._busy = False
        self.batches = 0  # for tests and benchmarks: how many flushes ran

    def write(self, tmp_path: str, final_path: str, data) -> defer.Deferred:
        """
        Write C{data} (bytes, or a callable taking an fd) to C{tmp_path},
        then move it to C{final_path}. The Deferred fires with C{final_path}
        once the file and its directory entry are on disk.
        """
        item = PendingWrite(tmp_path, final_path, data)
        self._queue.append(item)
        if not self._busy:
            self._next_batch()
        return item.deferred

    def _next_batch(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        self.batches += 1
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), _commit_batch, batch)

        def done(outcome):
            for item, error in zip(batch, outcome):
                if error is None:
                    item.deferred.callback(item.final_path)
                else:
                    item.deferred.errback(error)

        def crashed(reason):
            for item in batch:
                if not item.deferred.called:
                    item.deferred.errback(reason)

        d.addCallbacks(done, crashed)
        d.addBoth(lambda _: self._next_batch())
