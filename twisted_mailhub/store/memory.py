# -*- test-case-name: tests.test_store -*-
"""
A mail store in memory: for tests and demos (C{--store memory}). Everything
is gone when the process ends; "durable" means "in this dict".

Every change happens in this process, so nothing is looked for: a
folder's listeners hear of its messages at once, and
C{watch_changes(callback)} (L{twisted_mailhub.store.watch.StoreSignal})
is called when a folder is deleted (it is then gone: C{refresh} raises
L{NoSuchFolder}) and, on an account, when its folder list or
subscriptions change. IDLE and NOTIFY need no poll.
"""

from __future__ import annotations

import io
import time
import uuid
from typing import Any, Iterable

from twisted.internet import defer
from zope.interface import implementer

from twisted_mailhub.store.base import (
    DELIMITER,
    Listeners,
    apply_flags,
    downgraded_size_text,
    normalize_folder_name,
    renamed_subscriptions,
    split_flags,
)
from twisted_mailhub.store.interfaces import (
    INBOX,
    FolderChange,
    FolderExists,
    IFolder,
    IMailAccount,
    IMailStore,
    IModSeqFolder,
    MessageInfo,
    NoSuchFolder,
    NoSuchMessage,
)


class _Watchers(set):
    """The callbacks of L{StoreSignal}s on a folder or an account; C{tell()} calls each."""

    def tell(self) -> None:
        for callback in list(self):
            callback()


READ_HERE_MESSAGES = 64
"""A search over at most this many messages (and L{READ_HERE_OCTETS}) is matched in the reactor: cheaper than a thread's round trip."""

READ_HERE_OCTETS = 1024 * 1024
"""...and of at most this many octets in all."""


class HeldMessages:
    """
    The bytes of some messages of a L{MemoryFolder} (by position in the
    list of UIDs it was made with), for a worker thread that searches them
    (L{twisted_mailhub.imap.search.match_in_thread}): the same reader
    shape as a Maildir's L{FileReader<twisted_mailhub.imap.search.FileReader>}
    and PostgreSQL's L{BlobReader<twisted_mailhub.store.postgresql.BlobReader>}.
    The folder keeps each message as one immutable C{bytes}; the reactor
    took the references, and an EXPUNGE meanwhile only drops the
    folder's own, so the thread touches no folder object.
    """

    def __init__(self, bodies: list[bytes | None]):
        self._bodies = bodies

    def present(self, n: int) -> bool:
        """Was message C{n} in the folder when the references were taken?"""
        return self._bodies[n] is not None

    def raw(self, n: int, size: int = 0) -> bytes:
        """The whole message C{n} (C{size}: a hint, not needed here)."""
        body = self._bodies[n]
        if body is None:
            raise NoSuchMessage(n)
        return body

    def head(self, n: int, length: int) -> bytes:
        """The first C{length} octets of message C{n}."""
        return self.raw(n)[:length]


@implementer(IFolder, IModSeqFolder)
class MemoryFolder:
    def __init__(self, name: str, clock: Any = None, uid_validity: int | None = None):
        self.name = name
        self.uid_validity = int(time.time()) if uid_validity is None else uid_validity
        self.uid_next = 1
        self._infos: dict[int, MessageInfo] = {}
        self._bodies: dict[int, bytes] = {}
        self._shown: dict[int, int] = {}  # UID -> size as downgraded, where not the stored size
        self._listeners = Listeners()
        self._new: set[int] = set()
        self.highest_modseq = 1
        self._modseqs: dict[int, int] = {}
        self.gone = False
        self._watchers = _Watchers()
        self.watch_changes = self._watchers.add
        self.unwatch_changes = self._watchers.discard

    def _bump(self, uids) -> None:
        self.highest_modseq += 1
        for uid in uids:
            self._modseqs[uid] = self.highest_modseq

    def modseq(self, uid: int) -> int:
        self.info(uid)
        return self._modseqs.get(uid, 1)

    def refresh(self) -> None:
        # Nothing changes behind our back; a deleted folder is gone.
        if self.gone:
            raise NoSuchFolder(self.name)

    def messages(self):
        return [self._infos[uid] for uid in sorted(self._infos)]

    def info(self, uid: int) -> MessageInfo:
        try:
            return self._infos[uid]
        except KeyError:
            raise NoSuchMessage(uid) from None

    def downgraded_sizes(self) -> dict[int, int]:
        """
        UID -> size as a session without UTF8 is sent the message (8-bit
        headers downgraded: RFC 6856 §3, RFC 6855), where that is not the
        stored size; usually empty.
        """
        return self._shown

    def read(self, uid: int) -> bytes:
        try:
            return self._bodies[uid]
        except KeyError:
            raise NoSuchMessage(uid) from None

    def open(self, uid: int):
        return io.BytesIO(self.read(uid))

    def path(self, uid: int) -> None:
        return None

    def held_reader(self, uids: list[int]) -> HeldMessages:
        """
        A L{HeldMessages} of messages C{uids} (by their position in it;
        a UID not in the folder is not L{HeldMessages.present}), for a
        worker thread: a SEARCH BODY over a big folder is matched there,
        not in the reactor, as a Maildir's or PostgreSQL's is
        (twisted_mailhub/imap/search.py).
        """
        bodies = self._bodies
        return HeldMessages([bodies.get(uid) for uid in uids])

    def reads_here(self, uids: list[int]) -> bool:
        """
        Whether a search that reads messages C{uids} is cheaper matched in
        the reactor than in a thread: at most L{READ_HERE_MESSAGES}
        messages of at most L{READ_HERE_OCTETS} in all.
        """
        if len(uids) > READ_HERE_MESSAGES:
            return False
        bodies = self._bodies
        return sum(len(bodies.get(uid, b"")) for uid in uids) <= READ_HERE_OCTETS

    def _add(self, message: bytes, flags, internal_date) -> int:
        uid = self.uid_next
        self.uid_next += 1
        system, keywords = split_flags(flags)
        self._infos[uid] = MessageInfo(
            uid=uid,
            key=uuid.uuid4().hex,
            flags=system | keywords,
            size=len(message),
            internal_date=internal_date if internal_date is not None else time.time(),
        )
        self._bodies[uid] = bytes(message)
        shown = downgraded_size_text(message)
        if shown:
            self._shown[uid] = int(shown)
        self._new.add(uid)
        self._bump([uid])
        return uid

    def append(self, message: bytes, flags: Iterable[str] = (), internal_date: float | None = None):
        uid = self._add(message, flags, internal_date)
        self._listeners.notify(FolderChange(added=(uid,)))
        return defer.succeed(uid)

    def set_flags(self, uids, flags, mode="replace", origin=None):
        result = {}
        for uid in uids:
            info = self._infos.get(uid)
            if info is None:
                continue
            new = apply_flags(info.flags, flags, mode)
            if new != info.flags:
                self._infos[uid] = MessageInfo(info.uid, info.key, new, info.size, info.internal_date)
                self._bump([uid])
            result[uid] = new
        changed = tuple(sorted(result))
        if changed:
            self._listeners.notify(FolderChange(flags=changed, origin=origin))
        return result

    def expunge(self, uids, origin=None):
        gone = sorted(uid for uid in set(uids) if uid in self._infos)
        for uid in gone:
            del self._infos[uid]
            del self._bodies[uid]
            self._modseqs.pop(uid, None)
            self._shown.pop(uid, None)
        if gone:
            self._bump([])
        if gone:
            self._listeners.notify(FolderChange(expunged=tuple(gone), origin=origin))
        return gone

    def copy_to(self, uids, destination):
        pairs = []
        ds = []
        for uid in sorted(set(uids)):
            info = self._infos.get(uid)
            if info is None:
                continue
            d = destination.append(self._bodies[uid], info.flags, info.internal_date)
            d.addCallback(lambda new, uid=uid: pairs.append((uid, new)))
            ds.append(d)
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: pairs)

    def flush(self):
        return defer.succeed(None)

    def take_new(self) -> list[int]:
        """
        Messages no session has seen yet (IMAP \\Recent), now seen.
        """
        taken, self._new = sorted(self._new), set()
        return [uid for uid in taken if uid in self._infos]

    def recent(self) -> list[int]:
        return sorted(uid for uid in self._new if uid in self._infos)

    def add_listener(self, listener):
        self._listeners.add(listener)

    def remove_listener(self, listener):
        self._listeners.remove(listener)


@implementer(IMailAccount)
class MemoryAccount:
    def __init__(self, address: str):
        self.address = address
        self._last_validity = 0
        self._folders: dict[str, MemoryFolder] = {INBOX: self._new_folder(INBOX)}
        self._subscriptions: set[str] = {INBOX}
        self._watchers = _Watchers()  # told of folder list and subscription changes
        self.watch_changes = self._watchers.add
        self.unwatch_changes = self._watchers.discard

    def _new_folder(self, name: str) -> MemoryFolder:
        # Each new folder's UIDVALIDITY is above every earlier one of the
        # account, so a name deleted and made again never repeats one.
        self._last_validity = max(int(time.time()), self._last_validity + 1)
        return MemoryFolder(name, uid_validity=self._last_validity)

    def folder(self, name: str) -> MemoryFolder:
        name = normalize_folder_name(name)
        try:
            return self._folders[name]
        except KeyError:
            raise NoSuchFolder(name) from None

    def folders(self) -> list[str]:
        return [INBOX] + sorted(n for n in self._folders if n != INBOX)

    def create_folder(self, name: str) -> MemoryFolder:
        name = normalize_folder_name(name)
        if name in self._folders:
            raise FolderExists(name)
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent not in self._folders:
                self._folders[parent] = self._new_folder(parent)
        folder = self._folders[name] = self._new_folder(name)
        self._watchers.tell()
        return folder

    def delete_folder(self, name: str) -> None:
        name = normalize_folder_name(name)
        if name == INBOX:
            raise NoSuchFolder("INBOX cannot be deleted")
        if name not in self._folders:
            raise NoSuchFolder(name)
        folder = self._folders.pop(name)
        # (its subscription stays: L{renamed_subscriptions})
        folder.gone = True
        folder._watchers.tell()
        self._watchers.tell()

    def rename_folder(self, old: str, new: str) -> None:
        old, new = normalize_folder_name(old), normalize_folder_name(new)
        if old not in self._folders:
            raise NoSuchFolder(old)
        if new in self._folders:
            raise FolderExists(new)
        for name in [n for n in self._folders if n == old or n.startswith(old + DELIMITER)]:
            folder = self._folders.pop(name)
            folder.name = new + name[len(old) :]
            self._folders[folder.name] = folder
        if old == INBOX:
            # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves
            # an empty INBOX behind.
            self._folders[INBOX] = self._new_folder(INBOX)
        gone, made = renamed_subscriptions(self._subscriptions, old, new)
        self._subscriptions = (self._subscriptions - gone) | made
        self._watchers.tell()

    def folder_identity(self, name: str) -> int | None:
        """The folder object's identity: it moves with a RENAME (see L{MaildirAccount.folder_identity}); None when gone."""
        folder = self._folders.get(name)
        return None if folder is None else id(folder)

    def subscriptions(self) -> list[str]:
        return sorted(self._subscriptions)

    def subscribe(self, name: str) -> None:
        self._subscriptions.add(normalize_folder_name(name))
        self._watchers.tell()

    def unsubscribe(self, name: str) -> None:
        self._subscriptions.discard(normalize_folder_name(name))
        self._watchers.tell()


@implementer(IMailStore)
class MemoryStore:
    def __init__(self) -> None:
        self._accounts: dict[str, MemoryAccount] = {}

    def account(self, address: str) -> MemoryAccount:
        key = address.lower()
        if key not in self._accounts:
            self._accounts[key] = MemoryAccount(address)
        return self._accounts[key]

    def deliver(self, address: str, message: bytes):
        folder = self.account(address).folder(INBOX)
        d = folder.append(message)
        return d.addCallback(lambda uid: folder.info(uid).key)
