# -*- test-case-name: tests.test_store -*-
"""
What a mail store promises. Protocol adapters (SMTP delivery, POP3, IMAP)
only ever call these; the Maildir backend is one implementation, the memory
backend another, a plugin may add a third.

Theory of operation:

 - A store holds one L{IMailAccount} per address; an account holds folders
   (L{IFolder}); C{INBOX} always exists and is where delivery goes.
 - Messages are bytes exactly as they will be sent to a client: CRLF line
   ends, dot-unstuffed. Their size is their length in octets on the wire.
 - Each message in a folder has a UID: ascending, never reused while the
   folder's C{uid_validity} stays the same (RFC 3501 §2.3.1.1).
 - Anything that writes (deliver, append, copy) returns a L{Deferred} that
   fires only once the data is durable where it will be read from.
 - Changes made through one folder object, or by delivery, are announced to
   every listener of that folder, so a second session (IMAP IDLE, another
   POP3 client) sees them.
"""

from __future__ import annotations

import errno
from typing import Any, BinaryIO, Callable, Iterable, Sequence

import attr
from zope.interface import Attribute, Interface

# The five system flags the store keeps (RFC 3501 §2.3.2); anything else in
# a flag set is a keyword.
SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
SYSTEM_FLAGS = (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT)

INBOX = "INBOX"


class StoreError(Exception):
    """A store operation could not be done; the message says why."""


class NoSuchFolder(StoreError):
    pass


class FolderExists(StoreError):
    pass


class BadFolderName(StoreError):
    pass


class NoSuchMessage(StoreError):
    pass


class InsufficientStorage(StoreError):
    """
    The disk (or the account's disk quota) is full: nothing was stored.
    Protocols answer it as a temporary failure: SMTP C{452 4.3.1}
    (RFC 3463), IMAP C{NO [UNAVAILABLE]} (RFC 5530 §3), POP3
    C{-ERR [SYS/TEMP]} (RFC 3206 §4), FTP C{452}. An account's quota
    (L{is_quota}) is C{552 5.2.2}, C{NO [OVERQUOTA]}, FTP C{552}.
    """


class NotWritable(StoreError):
    """
    The hub may not write where the store keeps this (permission denied:
    a folder restored from a backup with other owners; a read-only file
    system): nothing was changed, and nothing will be until an
    administrator changes the owners or the mount. What is there is
    still read. Protocols answer it as a refusal the client cannot cure
    by retrying: IMAP C{NO [NOPERM]} (RFC 5530 §3), POP3
    C{-ERR [SYS/PERM]} (RFC 3206 §4), FTP C{550} (RFC 959), SMTP
    C{450 4.2.0} (RFC 3463 X.2.0: the mail waits in the sender's queue).
    """


class StoreUnavailable(StoreError):
    """
    The store cannot be reached now (its database is down or restarting):
    nothing was done. Protocols answer it as a temporary failure: SMTP
    C{451 4.3.0}, IMAP C{NO [UNAVAILABLE]} (RFC 5530 §3), POP3
    C{-ERR [SYS/TEMP]} (RFC 3206 §4).
    """


_NO_SPACE_ERRNOS = frozenset(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e is not None)


def is_out_of_space(error: BaseException) -> bool:
    """True for L{InsufficientStorage} and for C{OSError} ENOSPC / EDQUOT."""
    if isinstance(error, InsufficientStorage):
        return True
    return isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS


_NOT_WRITABLE_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.EROFS))


def is_not_writable(error: BaseException) -> bool:
    """
    True for L{NotWritable} and for C{OSError} EACCES, EPERM, EROFS (the
    hub may not write there), also when it is the C{__cause__} of a
    L{StoreError}.
    """
    if isinstance(error, NotWritable):
        return True
    if isinstance(error, StoreError) and isinstance(error.__cause__, OSError):
        error = error.__cause__
    return isinstance(error, OSError) and error.errno in _NOT_WRITABLE_ERRNOS


def is_quota(error: BaseException) -> bool:
    """
    True when C{error} is the hub's quota of an account (L{quota.QuotaExceeded},
    L{filequota.FileQuotaExceeded}): the user's limit, which a protocol
    says as such (IMAP C{NO [OVERQUOTA]}, RFC 9051 §7.1; SMTP C{552 5.2.2};
    FTP C{552}). False for a full disk (ENOSPC, or the OS's own EDQUOT):
    the server's trouble, said as a temporary one (IMAP C{NO [UNAVAILABLE]},
    SMTP C{452 4.3.1}, FTP C{452}, POP3 C{[SYS/TEMP]}).
    """
    return bool(getattr(error, "is_quota", False))


def storage_error(error: BaseException) -> BaseException:
    """
    C{error} as the store reports it: ENOSPC / EDQUOT become
    L{InsufficientStorage}; EACCES, EPERM, EROFS become L{NotWritable}.
    """
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        new: StoreError = InsufficientStorage("Insufficient system storage")
        new.__cause__ = error
        return new
    if isinstance(error, OSError) and error.errno in _NOT_WRITABLE_ERRNOS:
        new = NotWritable(not_writable_reason(error))
        new.__cause__ = error
        return new
    return error


def not_writable_reason(error: BaseException) -> str:
    """
    Why the hub may not write (words for a log line or a reply, no path):
    C{a read-only file system} or C{permission denied}.
    """
    if isinstance(error, NotWritable) and error.args:
        return str(error.args[0])
    cause = error.__cause__ if isinstance(error, StoreError) and isinstance(error.__cause__, OSError) else error
    if isinstance(cause, OSError) and cause.errno == errno.EROFS:
        return "a read-only file system"
    return "permission denied"


@attr.s(auto_attribs=True, frozen=True, slots=True)
class MessageInfo:
    """
    What a folder knows of a message without reading it.

    @ivar uid: its UID in the folder.
    @ivar key: a name for it that never changes while it exists (the Maildir
        base name); POP3 UIDL uses it.
    @ivar flags: system flags and keywords.
    @ivar size: length in octets as sent to a client.
    @ivar internal_date: when it arrived, seconds since the epoch.
    """

    uid: int
    key: str
    flags: frozenset[str]
    size: int
    internal_date: float


@attr.s(auto_attribs=True, frozen=True)
class FolderChange:
    """
    What changed in a folder, as told to its listeners.

    @ivar added: UIDs of new messages.
    @ivar flags: UIDs whose flags changed.
    @ivar expunged: UIDs that are gone.
    @ivar origin: the object that made the change (a session may ignore its
        own changes), or L{None} for delivery and outside changes.
    """

    added: tuple[int, ...] = ()
    flags: tuple[int, ...] = ()
    expunged: tuple[int, ...] = ()
    origin: Any = None


class IFolder(Interface):
    """
    One folder of one account: an ordered list of messages with UIDs.
    """

    name = Attribute("The folder's name as the user sees it, '/' separated, e.g. 'Work/Projects'.")
    uid_validity = Attribute(
        "UIDVALIDITY: an int that changes only if UIDs were lost, and is greater than"
        " any value an earlier folder of the same name had (RFC 3501 §2.3.1.1)."
    )
    uid_next = Attribute("The UID the next message will get.")

    def messages() -> Sequence[MessageInfo]:
        """
        The messages now in the folder, in ascending UID order. Picks up
        messages that arrived since the last call.
        """

    def refresh() -> None:
        """
        Pick up messages that arrived, vanished or changed flags by other
        means (another program writing the Maildir); listeners hear of
        them. Cheap when nothing changed (the Maildir: two C{stat} calls).
        """

    def info(uid: int) -> MessageInfo:
        """
        The current L{MessageInfo} of one message; L{NoSuchMessage} if gone.
        """

    def read(uid: int) -> bytes:
        """
        The whole message; L{NoSuchMessage} if it is gone.
        """

    def open(uid: int) -> BinaryIO:
        """
        The message as a binary file open for reading (for large messages and
        zero-copy sending); the caller closes it.
        """

    def path(uid: int) -> str | None:
        """
        The file that holds the message, for C{sendfile}, or L{None} when
        the backend does not keep messages in files.
        """

    def append(message: bytes, flags: Iterable[str] = (), internal_date: float | None = None) -> Any:
        """
        Add a message. Returns a L{Deferred} that fires with its UID once it
        is durable.
        """

    def set_flags(uids: Iterable[int], flags: Iterable[str], mode: str = "replace", origin: Any = None) -> dict[int, frozenset[str]]:
        """
        Change flags of messages: C{mode} is C{"replace"}, C{"add"} or
        C{"remove"}. Returns the new flags of each message that still exists.
        """

    def expunge(uids: Iterable[int], origin: Any = None) -> list[int]:
        """
        Remove messages for good. Returns the UIDs removed, ascending.
        The removal is made durable by L{flush}.
        """

    def flush() -> Any:
        """
        Make every change so far (expunges, flag changes) durable. Returns a
        L{Deferred} that fires once it is; a protocol that acknowledges a
        removal (POP3 QUIT, IMAP EXPUNGE) waits for it.
        """

    def copy_to(uids: Iterable[int], destination: "IFolder") -> Any:
        """
        Copy messages, with their flags and internal dates, into
        C{destination}. Returns a L{Deferred} firing with a list of
        (source UID, new UID) pairs once the copies are durable.
        """

    def take_new() -> list[int]:
        """
        Mark every message no session has been told of yet as told (Maildir:
        move it from C{new/} to C{cur/}); return their UIDs, ascending. The
        session that takes them reports them as IMAP C{\\Recent} (RFC 3501
        §2.3.2): delivered, appended and copied messages alike.
        """

    def recent() -> list[int]:
        """
        The UIDs L{take_new} would return, without taking them (IMAP
        EXAMINE and STATUS RECENT).
        """

    def add_listener(listener: Callable[[FolderChange], None]) -> None:
        """
        Call C{listener} with a L{FolderChange} whenever this folder changes.
        """

    def remove_listener(listener: Callable[[FolderChange], None]) -> None:
        """
        Stop calling C{listener}.
        """


class IModSeqFolder(IFolder):
    """
    A folder that keeps a mod-sequence per message (RFC 7162 CONDSTORE and
    QRESYNC): every append, flag change and expunge takes a new value, and
    values never go backwards, across restarts too. IMAP advertises
    CONDSTORE and QRESYNC only on a store whose folders provide this.
    """

    highest_modseq = Attribute("HIGHESTMODSEQ: the highest mod-sequence given in this folder (an int >= 1).")

    def modseq(uid: int) -> int:
        """
        The mod-sequence of a message's last change (>= 1); L{NoSuchMessage}
        if it is gone.
        """


class IMailAccount(Interface):
    """
    The folders of one address.
    """

    address = Attribute("The account's address, localpart@domain.")

    def folder(name: str) -> IFolder:
        """
        The folder called C{name} (C{INBOX} case-insensitively); raises
        L{NoSuchFolder}.
        """

    def folders() -> list[str]:
        """
        Every folder's name, INBOX first.
        """

    def create_folder(name: str) -> IFolder:
        """
        Make a folder (and any missing parents); L{FolderExists} if it is
        there, L{BadFolderName} for names that cannot be stored.
        """

    def delete_folder(name: str) -> None:
        """
        Remove a folder and its messages (not INBOX).
        """

    def rename_folder(old: str, new: str) -> Any:
        """
        Rename a folder and its children. Raises L{NoSuchFolder},
        L{FolderExists} or L{BadFolderName}; returns None once done, or a
        L{Deferred} that fires once done (or fails with those errors).
        """

    def subscriptions() -> list[str]:
        """
        Subscribed folder names (IMAP LSUB).
        """

    def subscribe(name: str) -> None:
        pass

    def unsubscribe(name: str) -> None:
        pass


class IMailStore(Interface):
    """
    All mail of the hub.
    """

    def account(address: str) -> IMailAccount:
        """
        The folders of C{address}, created on first use.
        """

    def deliver(address: str, message: bytes) -> Any:
        """
        Put C{message} into the INBOX of C{address}. Returns a L{Deferred}
        that fires with the message's key once it is durable there.
        """


class IMailStoreFactory(Interface):
    """
    A store backend, found with L{twisted.plugin.getPlugins} in
    L{twisted_mailhub.plugins}; C{--store NAME} picks one.
    """

    name = Attribute("The name given to --store, e.g. 'maildir'.")
    description = Attribute("One line for --help.")

    def make_store(data_dir: str, reactor: Any) -> IMailStore:
        """
        Build the store, keeping its files under C{data_dir}.
        """
