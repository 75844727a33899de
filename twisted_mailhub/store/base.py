# -*- test-case-name: tests.test_store -*-
"""
What the store backends share: folder-name rules and listener bookkeeping.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from twisted_mailhub.lines import quote
from twisted_mailhub.store.interfaces import (
    INBOX,
    SYSTEM_FLAGS,
    BadFolderName,
    FolderChange,
)

log = Logger()

# The hierarchy delimiter clients see (LIST/NAMESPACE).
DELIMITER = "/"


def normalize_folder_name(name: str) -> str:
    """
    The canonical form of a folder name: C{INBOX} in any case is C{INBOX};
    no empty, C{.} or C{..} parts, no absolute names, no control characters
    (C0, DEL, C1). L{BadFolderName} (its text shows the name as
    L{twisted_mailhub.lines.quote} does) otherwise.
    """
    if not name or name.startswith(DELIMITER) or "\\" in name or "\0" in name:
        raise BadFolderName(f"bad folder name: {quote(name)}")
    name = name.rstrip(DELIMITER)
    parts = name.split(DELIMITER)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in part):
            raise BadFolderName(f"bad folder name: {quote(name)}")
    return DELIMITER.join(parts)


def renamed_subscriptions(subscribed, old: str, new: str) -> tuple[set[str], set[str]]:
    """
    The subscriptions a RENAME of folder C{old} to C{new} changes, as
    (names to unsubscribe, names to subscribe); every store applies it with
    the rename (one rule for IMAP RENAME and any other door).

    A subscription follows its mailbox: the renamed folder's and, as RFC
    9051 §6.3.6 renames the inferior hierarchical names with it, that of
    every subscribed name below it (C{old/x} becomes C{new/x}), so a client
    that shows subscribed folders only (Thunderbird's default) does not
    lose them, and the old names are not left subscribed to nothing.
    Renaming INBOX moves its messages and leaves INBOX in place with its
    inferiors (RFC 9051 §6.3.6): INBOX stays subscribed and the new folder
    is subscribed when INBOX is. (DELETE changes no subscription: RFC 9051
    §6.3.9 and RFC 3501 §6.3.6, as Dovecot does.)

    @param subscribed: the account's subscribed names (normalized).
    @param old: the folder's name before (normalized).
    @param new: its name after (normalized).
    """
    subscribed = set(subscribed)
    if old == INBOX:
        return set(), ({new} if INBOX in subscribed else set())
    below = old + DELIMITER
    gone = {n for n in subscribed if n == old or n.startswith(below)}
    return gone, {new + n[len(old) :] for n in gone}


def split_flags(flags) -> tuple[frozenset[str], frozenset[str]]:
    """
    (system flags, keywords) of a flag set, system flags in canonical case.
    """
    system, keywords = set(), set()
    canonical = {f.lower(): f for f in SYSTEM_FLAGS}
    for flag in flags:
        if flag.startswith("\\"):
            if flag.lower() in canonical:
                system.add(canonical[flag.lower()])
        else:
            keywords.add(flag)
    return frozenset(system), frozenset(keywords)


def downgraded_size_text(message: bytes) -> str:
    """
    The size of C{message} as a session without UTF8 is sent it (its
    8-bit headers downgraded, L{twisted_mailhub.imap.utf8.downgrade}) as
    text, or C{""} when that is its stored size: all ASCII mail (one scan).
    """
    if message.isascii():
        return ""
    from twisted_mailhub.imap.utf8 import downgrade

    shown = downgrade(message)
    return "" if shown == message else str(len(shown))


def apply_flags(current: frozenset[str], flags, mode: str) -> frozenset[str]:
    system, keywords = split_flags(flags)
    given = system | keywords
    if mode == "replace":
        return given
    if mode == "add":
        return current | given
    if mode == "remove":
        return current - given
    raise ValueError(f"flag mode {mode!r}")


def set_flags_later(folder: Any, uids, flags, mode: str = "replace", origin: Any = None) -> defer.Deferred:
    """
    A L{Deferred} of C{folder.set_flags(...)}'s answer (UID -> flags now):
    the store's C{set_flags_later} where it has one (PostgreSQL: the
    transaction runs in a worker thread, so the reactor does not wait for
    the database), else C{set_flags} called now (its error as the
    Deferred's failure). A protocol acknowledges the change when it fires.
    """
    later = getattr(folder, "set_flags_later", None)
    if later is not None:
        return later(uids, flags, mode, origin=origin)
    return defer.maybeDeferred(folder.set_flags, uids, flags, mode, origin=origin)


def expunge_later(folder: Any, uids, origin: Any = None) -> defer.Deferred:
    """
    A L{Deferred} of C{folder.expunge(...)}'s answer (the UIDs removed):
    the store's C{expunge_later} where it has one (PostgreSQL, as
    L{set_flags_later}), else C{expunge} called now.
    """
    later = getattr(folder, "expunge_later", None)
    if later is not None:
        return later(uids, origin=origin)
    return defer.maybeDeferred(folder.expunge, uids, origin=origin)


class Listeners:
    """
    The listeners of one folder. A listener that raises is logged and kept
    out of the way of the others.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[FolderChange], None]] = []

    def count(self) -> int:
        """How many listeners there are."""
        return len(self._listeners)

    def add(self, listener: Callable[[FolderChange], None]) -> None:
        self._listeners.append(listener)

    def remove(self, listener: Callable[[FolderChange], None]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def notify(self, change: FolderChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.failure("folder listener {listener!r} failed", listener=listener)
