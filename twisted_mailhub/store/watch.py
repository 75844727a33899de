# -*- test-case-name: tests.test_store_watch,tests.test_e2e_imap_notify -*-
"""
A change signal for folders on disk: call back soon after a directory
changes, whoever changed it (another C{--workers} process, a program that
drops a file into a Maildir, the admin's C{mv}), instead of looking every
half second.

Rules:

 - L{ChangeSignal}C{(reactor, paths, callback, interval)}: C{callback()}
   runs once in the reactor turn after an event in one of C{paths}
   (directories; events inside them, not below); the events read
   meanwhile give no further call (L{GATHER}). C{stop()} ends it.
 - Linux: one inotify descriptor per process
   (L{twisted.internet.inotify.INotify}) carries every watch; a directory
   watched by several signals is watched once. Twisted closes the whole
   descriptor when any watched directory is deleted (C{IN_DELETE_SELF});
   a new one is made then, the remaining directories watched again and
   every signal called once (what changed meanwhile is looked at).
 - Elsewhere, or when the kernel refuses a watch (the per-user limits
   C{fs.inotify.max_user_watches} / C{max_user_instances}), or a path is
   not a directory, the signal falls back to calling back every
   C{interval} seconds, as before: never slower than the poll it
   replaces.
 - C{names}: when given, only events on entries whose name passes
   C{names(basename)} count (the account directory holds index files that
   change with every delivery; only the folders and the subscriptions
   file matter there). C{more=(paths, names)} adds directories with
   their own filter (IDLE: the folder's C{new/} and C{cur/}, all
   entries, and the account's directory, folder entries only).
 - Stores with no directories push instead (L{StoreSignal}): a folder
   or account that has C{watch_changes(callback)} /
   C{unwatch_changes(callback)} calls back itself when something its
   listeners cannot tell happened (the folder deleted or renamed; the
   PostgreSQL store also every half second while its C{LISTEN}
   connection is down, the memory store never needs to). L{change_signal}
   picks: inotify for directories, else the store's push, else the poll.
 - The callback must be cheap when nothing changed (a folder's
   C{refresh()} is two stat calls) and must not raise; what it raises is
   logged.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from twisted.internet import task
from twisted.logger import Logger
from twisted.python.filepath import FilePath

log = Logger()

# Seconds the events after a first one are gathered for one call (0: the
# events read in one reactor turn give one call; a longer wait would add
# its length to every notice).
GATHER = 0.0


def _inotify_module() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        from twisted.internet import inotify
    except Exception:  # no ctypes/libc inotify: poll
        return None
    return inotify


class _Watcher:
    """The process's inotify descriptor and which signals want which directory."""

    def __init__(self, reactor: Any, module: Any):
        self.reactor = reactor
        self.module = module
        # "The directory's entries changed": a file written and renamed in
        # (Maildir's tmp -> new/cur), renamed (flags), removed.
        self.mask = module.IN_CREATE | module.IN_DELETE | module.IN_MOVED_FROM | module.IN_MOVED_TO | module.IN_CLOSE_WRITE | module.IN_ATTRIB | module.IN_MOVE_SELF
        self.subscribers: dict[bytes, set[ChangeSignal]] = {}
        self.notifier: Any = None

    def _open(self) -> Any:
        if self.notifier is None:
            watcher = self
            base = self.module.INotify

            class _Descriptor(base):
                def connectionLost(self, reason: Any) -> None:
                    base.connectionLost(self, reason)
                    watcher._lost(self)

            notifier = _Descriptor(self.reactor)
            notifier.startReading()
            self.notifier = notifier
        return self.notifier

    def add(self, path: bytes, signal: "ChangeSignal") -> bool:
        """Watch C{path} for C{signal}; False when the kernel will not (the caller polls)."""
        try:
            notifier = self._open()
            if path not in self.subscribers:
                notifier.watch(FilePath(path), self.mask, callbacks=[self._event])
        except Exception as e:  # INotifyError (limits, not a directory), OSError
            log.debug("no inotify watch on {path}: {error}", path=path, error=e)
            return False
        self.subscribers.setdefault(path, set()).add(signal)
        return True

    def remove(self, path: bytes, signal: "ChangeSignal") -> None:
        subscribers = self.subscribers.get(path)
        if not subscribers:
            return
        subscribers.discard(signal)
        if subscribers:
            return
        del self.subscribers[path]
        if self.notifier is not None:
            try:
                self.notifier.ignore(FilePath(path))
            except Exception:  # KeyError, INotifyError: gone with its directory
                pass

    def _event(self, watch: Any, filepath: Any, mask: int) -> None:
        path = watch.path.path
        for signal in list(self.subscribers.get(path, ())):
            signal._event(path, filepath.basename())

    def _lost(self, notifier: Any) -> None:
        """Twisted closed the descriptor (a watched directory was deleted): make another."""
        if notifier is not self.notifier:
            return
        self.notifier = None
        before, self.subscribers = self.subscribers, {}
        everyone = set()
        for path, signals in before.items():
            for signal in signals:
                everyone.add(signal)
                if not signal.running:
                    continue
                if not os.path.isdir(path) or not self.add(path, signal):
                    signal._fallback()
        for signal in everyone:
            signal._event(None)


_watchers: dict[int, _Watcher] = {}


def _watcher(reactor: Any) -> _Watcher | None:
    module = _inotify_module()
    if module is None:
        return None
    watcher = _watchers.get(id(reactor))
    if watcher is None or watcher.reactor is not reactor:
        watcher = _watchers[id(reactor)] = _Watcher(reactor, module)
    return watcher


class _Signal:
    """What both change signals share: C{callback()} called while running, a failure logged, never raised."""

    running: bool
    callback: Callable[[], None]

    def _call_back(self) -> None:
        if not self.running:
            return
        try:
            self.callback()
        except Exception:
            log.failure("a change signal's callback failed")


class ChangeSignal(_Signal):
    """
    Calls C{callback()} soon after a directory of C{paths} changes (see the
    module's rules); C{polling} says whether it fell back to looking every
    C{interval} seconds.
    """

    def __init__(self, reactor: Any, paths: list[str], callback: Callable[[], None], interval: float, names: Callable[[bytes], bool] | None = None, more: tuple[list[str], Callable[[bytes], bool]] | None = None):
        self.reactor = reactor
        self.callback = callback
        self.interval = interval
        # path -> which entries count there (None: all)
        self.filters: dict[bytes, Callable[[bytes], bool] | None] = {os.fsencode(p): names for p in paths}
        if more is not None:
            for p in more[0]:
                self.filters.setdefault(os.fsencode(p), more[1])
        self.paths = list(self.filters)
        self.running = True
        self._call: Any = None
        self._poller: Any = None
        watcher = _watcher(reactor)
        self._watcher = watcher
        if watcher is None or not self.paths or not all(watcher.add(path, self) for path in self.paths):
            self._fallback()

    @property
    def polling(self) -> bool:
        return self._poller is not None

    def _fallback(self) -> None:
        if self._poller is not None or not self.running:
            return
        self._poller = task.LoopingCall(self._fire)
        self._poller.clock = self.reactor
        self._poller.start(self.interval, now=False)

    def _event(self, path: bytes | None, name: bytes | None = None) -> None:
        if not self.running or self._call is not None:
            return
        names = self.filters.get(path) if path is not None else None
        if names is not None and name is not None and not names(name):
            return
        self._call = self.reactor.callLater(GATHER, self._fire)

    def _fire(self) -> None:
        self._call = None
        self._call_back()

    def stop(self) -> None:
        """No more calls."""
        if not self.running:
            return
        self.running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._watcher is not None:
            for path in self.paths:
                self._watcher.remove(path, self)


class StoreSignal(_Signal):
    """
    Calls C{callback()} when C{source} (a folder or account of a store
    with no directories: PostgreSQL, memory) says it changed in a way its
    listeners do not tell; the same face as L{ChangeSignal}.
    """

    polling = False

    def __init__(self, source: Any, callback: Callable[[], None]):
        self.source = source
        self.callback = callback
        self.running = True
        source.watch_changes(self._fire)

    def _fire(self) -> None:
        self._call_back()

    def stop(self) -> None:
        """No more calls."""
        if self.running:
            self.running = False
            self.source.unwatch_changes(self._fire)


def change_signal(reactor: Any, source: Any, paths: list[str], callback: Callable[[], None], interval: float, **options: Any) -> Any:
    """
    What tells of C{source}'s changes made outside this session: inotify
    on C{paths} (L{ChangeSignal}); where there are none, the store's own
    push (L{StoreSignal}) if it has one; else a look every C{interval}
    seconds.
    """
    if not paths and hasattr(source, "watch_changes"):
        return StoreSignal(source, callback)
    return ChangeSignal(reactor, paths, callback, interval, **options)


def folder_paths(folder: Any) -> list[str]:
    """The directories whose changes are a folder's changes (Maildir: C{new/} and C{cur/}); [] when the store has none."""
    directory = getattr(folder, "directory", None)
    if not isinstance(directory, str):
        return []
    return [os.path.join(directory, "new"), os.path.join(directory, "cur")]


def account_paths(account: Any) -> list[str]:
    """The directory whose entries are an account's folders and subscriptions (Maildir++: the account's root); [] when none."""
    path = getattr(account, "path", None)
    return [path] if isinstance(path, str) and os.path.isdir(path) else []
