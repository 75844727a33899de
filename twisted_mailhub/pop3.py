# -*- test-case-name: tests.test_pop3 -*-
"""
POP3 (RFC 1939) and POP3 over TLS: the C{pop3} listener (STLS, RFC 2595)
and the C{pop3s} listener (implicit TLS, RFC 8314), on Twisted's
L{twisted.mail.pop3.POP3}.

Twisted's server supplies the login plumbing (credentials to the portal,
the APOP challenge, the idle timer); command dispatch and the transaction
commands are ours, because the stock server writes replies in many small
pieces (22 RETR/s against Nagle), turns CRLF into CR CR LF in RETR, lets
commands pipelined behind a slow login run before it is answered, has no
STLS, lets a bad argument (C{DELE x}) raise out of C{dataReceived} and drop
the connection, and advertises CAPA tokens that are not standards
(CELERITY, AUSPEX, POTENCE).

Theory of operation:

 - A session is in one of three named states (RFC 1939 §3):
   L{State.AUTHORIZATION} until a login succeeds, L{State.TRANSACTION}
   while the maildrop is open, L{State.UPDATE} after QUIT. L{COMMANDS} is
   the table of what each state accepts; a command outside it gets an
   C{-ERR} that says what is expected instead.
 - Lines end in CRLF or a bare LF (nc users), commands are case-insensitive
   and arguments may be separated by several spaces. Lines are queued and
   run one at a time, in order: a command that waits (a login, held back by
   the throttle) holds the queue, so pipelined commands (RFC 2449
   PIPELINING) are answered in the order they were sent. The protocol is the
   transport's streaming producer: when the client stops reading, the queue
   stops running, and when the queue is long, reading stops.
 - A line longer than L{MailhubPOP3.max_line_length} is discarded as it
   arrives and answered with C{-ERR}; the session goes on.
 - The maildrop (L{Maildrop}) is a snapshot of the account's INBOX taken at
   login, from the store's index only (no message is read). DELE marks, RSET
   unmarks, QUIT (UPDATE) marks the retrieved messages C{\\Seen} in one batch
   and expunges the marked ones; a dropped connection changes nothing. UIDL
   is the store's message key, so it survives sessions and restarts.
 - One session per maildrop (RFC 1939 §8): the realm refuses a second with
   L{MaildropInUse}, answered C{-ERR [IN-USE]} (RFC 2449 §8.1.1); the lock
   goes at QUIT or when the connection drops.
 - USER/PASS and AUTH PLAIN only over TLS or from C{--trusted-networks}
   (RFC 2595 §2.1); APOP (RFC 1939 §7) and AUTH CRAM-MD5 (RFC 5034)
   anywhere. The APOP timestamp in the banner is new for every connection,
   so a captured digest cannot be replayed. Every login goes through the
   connection's throttled portal. STLS discards whatever the client sent
   after it in the same packet (RFC 2595 §4, CVE-2011-0411).
 - RETR sends the reply line, the byte-stuffed message and the terminating
   dot in one write; a message over L{MailhubPOP3.one_write_limit} is sent
   in chunks as the client reads them.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import enum
import hashlib
import io
import os
import re
import secrets
import sys
import time
from typing import Any, Callable

from twisted.cred import credentials as _credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.mail import pop3 as _pop3
from twisted.mail.pop3 import IMailbox
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_mailhub import __version__
from twisted_mailhub.accounts import challenge_response_offered
from twisted_mailhub.errorwords import error_words, no_room, not_writable_words
from twisted_mailhub.hub import ListenerSpec, is_secure
from twisted_mailhub.offload import DetachedBodies, in_thread
from twisted_mailhub.lines import LineEngine, control_note, has_control, quote, telnet_prefix_text
from twisted_mailhub.store.base import expunge_later, set_flags_later
from twisted_mailhub.store.interfaces import INBOX, SEEN, NoSuchMessage, StoreError, StoreUnavailable, is_not_writable, is_out_of_space
from twisted_mailhub.store.outage import refused
from twisted_mailhub.store.wireform import LENGTH_MASK, LINES_SHIFT, WireForms
from twisted_mailhub.transcript import is_command_word, looks_like_a_secret

log = Logger()

listeners = [
    ListenerSpec("pop3", "tcp:8110", "POP3 listener (STLS, USER/PASS, APOP), strports endpoint."),
    ListenerSpec("pop3s", "tcp:8995", "POP3 over implicit TLS (RFC 8314), plain tcp: endpoint.", tls="implicit"),
]

option_parameters = [
    ["pop3-idle-timeout", None, 600, "Seconds a POP3 client may stay silent before it is logged out (RFC 1939 §3: at least 600).", int],
    ["pop3-login-timeout", None, 300, "Seconds a POP3 client may take, in all, to log in.", int],
    ["pop3-command-timeout", None, 120, "Seconds a POP3 client may take to send one command line.", int],
]


def check_options(options: Any) -> None:
    for name in ("pop3-idle-timeout", "pop3-login-timeout", "pop3-command-timeout"):
        if options[name] <= 0:
            raise usage.UsageError(f"--{name} must be a positive number of seconds")


# -- the maildrop -----------------------------------------------------------


# Commands whose grammar has no argument at all: "STLS junk" is an error,
# not a STLS.
_NO_ARGUMENT = frozenset({"CAPA", "STLS", "STAT", "RSET", "NOOP", "QUIT"})


class MaildropInUse(cred_error.LoginDenied):
    """
    Another session has this maildrop open (RFC 2449 §8.1.1 IN-USE). Not an
    authentication failure: the throttle does not count it.
    """


_O_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = _O_READ | getattr(os, "O_DIRECTORY", 0)
# Files a RETR finds ahead (Maildrop._look_ahead): at first, and at most.
_AHEAD_FIRST = 4
_AHEAD_MOST = 256

_UIDL_OK = re.compile(r"^[\x21-\x7e]{1,70}$")


def uidl_of(key: str) -> str:
    """
    The UIDL of a message with store key C{key}: the key itself when it is a
    valid unique-id (RFC 1939 §7: 1 to 70 characters 0x21-0x7E), otherwise
    a digest of it, equally stable.
    """
    if _UIDL_OK.match(key):
        return key
    return "h" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _read_file(where: tuple[int, str], size: int) -> bytes | None:
    """
    The whole file at C{where} (a directory's descriptor and a name in
    it), in one C{read} of C{size} + 1 octets when it is C{size} octets as
    the index says, or more reads when it was made longer by hand; L{None}
    when it is not there (renamed by another program since the store last
    looked).
    """
    try:
        fd = os.open(where[1], _O_READ, dir_fd=where[0])
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        parts = [data]
        while more := os.read(fd, 1 << 20):
            parts.append(more)
        return b"".join(parts)
    finally:
        os.close(fd)


@implementer(IMailbox)
class Maildrop:
    """
    One POP3 session's view of an INBOX (Twisted's L{IMailbox}: 0-based
    indexes), taken when the session logs in.
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, folder: Any, address: str):
        self.folder = folder
        self.address = address
        # The store's index (and the wire-form facts) only: opening a
        # maildrop reads no message. A
        # store that lists its messages as columns (C{listing()}: UIDs,
        # sizes, keys) makes no object per message for a login.
        listing = getattr(folder, "listing", None)
        if listing is not None:
            # The store's keys: UIDL, and the names of the wire-form facts.
            self.uids, self.sizes, self.keys = listing()
        else:
            infos = folder.messages()
            self.uids = [info.uid for info in infos]
            self.sizes = [info.size for info in infos]
            self.keys = [info.key for info in infos]
        self._uidls: list[str] | None = None
        # Each message's file, found the first time it is read.
        self._paths: dict[int, tuple[int, str]] = {}
        # Descriptors of the directories those files are in, by path.
        self._directories: dict[str, int] = {}
        # How many files the next look finds, if it goes on where the last
        # one ended (_look_ahead).
        self._ahead = _AHEAD_FIRST
        self._ahead_end = -1
        # Which messages need no byte-stuffing (store/wireform.py): the
        # folder's facts, kept across sessions, or this session's own.
        forms = getattr(folder, "wire_forms", None)
        self.wire_forms = forms() if forms is not None else WireForms(None)
        # A message learned (at a RETR) to have bare LF or CR line ends
        # counts as sent (RFC 1939 §11), not as stored. (The Maildir store
        # makes a file another program puts in CRLF when it first finds
        # it; this is for one it had listed before.)
        self.wire_forms.sizes_on_the_wire(self.keys, self.sizes)
        # The facts themselves, for RETR's look-up (lines_of, inline).
        self._facts = self.wire_forms.known
        self.deleted: set[int] = set()
        self.sync_error: BaseException | None = None  # (why the deletions at UPDATE were not made)
        self.retrieved: set[int] = set()
        # A store that reads on connections of its own in a thread
        # (PostgreSQL): RETR and TOP read there, never in the reactor.
        self.detached = DetachedBodies(folder, self.uids) if DetachedBodies.possible(folder) else None
        self.count = len(self.uids)
        self.octets = sum(self.sizes)

    def count_as_downgraded(self) -> None:
        """
        For a session that did not send UTF8 (RFC 6856 §3): each message
        whose header the downgrade changes counts as the octets that
        session is sent (RFC 1939 §11: STAT, LIST and the greeting agree
        with RETR), not as stored. The Maildir store keeps that size in
        the message's name (C{,D=}, L{twisted_mailhub.imap.utf8.shown_sizes},
        cached per folder), so this reads no message; the usual folder
        has none and this costs one look-up. The memory and PostgreSQL
        stores keep it in the message's record / row
        (C{downgraded_sizes()}).
        """
        if not getattr(self.folder, "shown_sizes_in_names", False) and getattr(self.folder, "downgraded_sizes", None) is None:
            return
        from twisted_mailhub.imap.utf8 import shown_sizes

        shown = shown_sizes(self.folder)
        if not shown:
            return
        uids = self.uids
        for uid, size in shown.items():
            i = bisect.bisect_left(uids, uid)
            if i < len(uids) and uids[i] == uid:
                self.sizes[i] = size
        self.octets = sum(self.sizes)

    def __len__(self) -> int:
        """Messages in the maildrop as taken at login, deleted ones too."""
        return len(self.uids)

    @property
    def uidls(self) -> list[str]:
        """Each message's UIDL, made at the first UIDL (the login needs none)."""
        if self._uidls is None:
            self._uidls = [uidl_of(key) for key in self.keys]
        return self._uidls

    def read(self, i: int) -> bytes:
        """
        The whole message C{i} (0-based): from its file with one read when
        the store keeps it in a file (no file object), else from the store.
        Raises L{NoSuchMessage} or C{FileNotFoundError} when it is gone.
        """
        if not 0 <= i < len(self.uids):
            raise ValueError(f"no message {i + 1}")
        where = self._paths.get(i)
        if where is None:
            where = self._look_ahead(i)
            if where is None:
                return self.folder.read(self.uids[i])
        data = _read_file(where, self.sizes[i])
        if data is None:
            # Renamed by another program since the store last looked: the
            # store finds it again (or says it is gone).
            self._paths.pop(i, None)
            return self.folder.read(self.uids[i])
        return data

    def _look_ahead(self, i: int) -> tuple[int, str] | None:
        """
        Find where message C{i}'s file is, and those of the messages after
        it, in one call to the store (C{paths}, where it has one): a client
        that retrieves message after message asks for the next ones soon
        (4 at first, twice as many each time it goes on where the last
        look ended, at most 256; 4 again after a jump). Each is kept as a
        descriptor of its directory (opened once per session: C{cur/},
        C{new/}) and its name there, so each open looks up one name, not
        the whole path. Returns C{i}'s, or L{None} when the store keeps
        it in no file (or it is gone): then the store reads it.
        """
        n = self._ahead if i == self._ahead_end else _AHEAD_FIRST
        end = min(i + n, len(self.uids))
        self._ahead, self._ahead_end = min(2 * n, _AHEAD_MOST), end
        uids = self.uids[i:end]
        folder = self.folder
        paths = folder.paths(uids) if hasattr(folder, "paths") else [folder.path(uid) for uid in uids]
        known, directories = self._paths, self._directories
        for k, path in enumerate(paths, i):
            if path is None:
                continue
            directory, _, name = path.rpartition("/")
            fd = directories.get(directory)
            if fd is None:
                try:
                    fd = directories[directory] = os.open(directory or "/", _O_DIRECTORY)
                except FileNotFoundError:
                    continue  # gone: the store reads (or says so)
            known[k] = (fd, name)
        return known.get(i)

    def wire_message(self, i: int) -> tuple[bytes, int | None]:
        """
        Message C{i} (0-based, in range) for RETR: its bytes (L{read}) and
        its line count when it is stored in wire form, else L{None}
        (L{wire_lines}). Raises as L{read} does.
        """
        where = self._paths.get(i)
        data = None if where is None else _read_file(where, self.sizes[i])
        if data is None:
            data = self.read(i)  # not found ahead yet, or renamed since
        return data, self.lines_of(i, data)

    def lines_of(self, i: int, data: bytes) -> int | None:
        """L{wire_lines} of message C{i}, its facts looked up inline (RETR's common case)."""
        key = self.keys[i]
        fact = self._facts.get(key)
        if fact is not None and fact >= 0 and fact & LENGTH_MASK == len(data):
            return fact >> LINES_SHIFT  # (WireForms.lines_of, inline)
        return self.wire_forms.lines_of(key, data)

    def close(self) -> None:
        """The session is over: forget the files it found, close their directories."""
        self._paths.clear()
        directories, self._directories = self._directories, {}
        for fd in directories.values():
            os.close(fd)

    def wire_lines(self, i: int, data: bytes) -> int | None:
        """
        The line count of message C{i} whose bytes are C{data} when it is
        stored in wire form (no byte-stuffing, CRLF, an ASCII header: sent
        as it is), else L{None}; known from the folder's facts, or learned
        now and kept.
        """
        return self.wire_forms.lines_of(self.keys[i], data)

    def check(self, index: int) -> None:
        if not 0 <= index < len(self.uids):
            raise ValueError(f"no message {index + 1}")

    # -- IMailbox --------------------------------------------------------

    def listMessages(self, i: int | None = None):
        if i is None:
            return [0 if n in self.deleted else size for n, size in enumerate(self.sizes)]
        self.check(i)
        return 0 if i in self.deleted else self.sizes[i]

    def getMessage(self, i: int):
        self.check(i)
        return self.folder.open(self.uids[i])

    def getUidl(self, i: int) -> bytes:
        self.check(i)
        return self.uidls[i].encode("ascii")

    def deleteMessage(self, i: int) -> None:
        self.check(i)
        if i not in self.deleted:
            self.deleted.add(i)
            self.count -= 1
            self.octets -= self.sizes[i]

    def undeleteMessages(self) -> None:
        self.deleted.clear()
        self.count = len(self.uids)
        self.octets = sum(self.sizes)

    def sync(self) -> defer.Deferred:
        """
        The UPDATE state (RFC 1939 §6): mark what was retrieved C{\\Seen} in
        one batch (never clearing it), then expunge what was deleted.
        A L{Deferred} of the indexes that could not be removed, firing
        once the store answered (PostgreSQL: its transactions run in a
        worker thread, L{store.base.set_flags_later}; other stores at
        once).
        """
        keys = self.keys
        self.wire_forms.save(keys[i] for i in range(len(keys)) if i not in self.deleted)
        seen = [self.uids[i] for i in sorted(self.retrieved - self.deleted)]

        def not_seen(reason) -> None:
            e = reason.value
            if not isinstance(e, (OSError, StoreError)):
                return reason
            if is_not_writable(e) or isinstance(e, StoreUnavailable):
                log.warn("POP3 could not mark retrieved messages seen in {address}: {why}", address=self.address, why=error_words(e))
            else:
                log.failure("POP3 could not mark retrieved messages seen in {address}", reason, address=self.address)

        d = set_flags_later(self.folder, seen, [SEEN], "add", origin=self) if seen else defer.succeed(None)
        d.addErrback(not_seen)
        return d.addCallback(lambda _: self._expunge_deleted())

    def _expunge_deleted(self) -> defer.Deferred:
        """L{sync}'s expunge: a L{Deferred} of the indexes of deleted messages still there."""
        if not self.deleted:
            return defer.succeed([])
        uids = {self.uids[i]: i for i in self.deleted}

        def not_removed(reason) -> set:
            e = reason.value
            if not isinstance(e, (OSError, StoreError)):
                return reason
            self.sync_error = e
            if is_out_of_space(e):
                # (a maildrop read as it is, whose UID list a full disk
                # keeps from being written: one line, the client is told)
                log.warn("POP3 could not expunge from {address}: insufficient system storage", address=self.address)
            elif is_not_writable(e) or isinstance(e, StoreUnavailable):
                # (a maildrop the hub may not write: one line; the client
                # is told it is permanent, RFC 3206 §4 SYS/PERM. A database
                # lost meanwhile: one line, and SYS/TEMP.)
                log.warn("POP3 could not expunge from {address}: {why}", address=self.address, why=error_words(e))
            else:
                log.failure("POP3 could not expunge from {address}", reason, address=self.address)
            return set()

        def left(gone) -> list[int]:
            gone = set(gone)
            if all(uid in gone for uid in uids):
                return []
            if self.sync_error is not None:
                return sorted(uids.values())  # (not removed: the store said why)
            # A message someone else removed first is gone all the same.
            present = {info.uid for info in self.folder.messages()}
            return sorted(i for uid, i in uids.items() if uid not in gone and uid in present)

        return expunge_later(self.folder, sorted(uids), origin=self).addCallbacks(list, not_removed).addCallback(left)


class Maildrops:
    """
    The realm's maker of POP3 avatars, and the lock that keeps one session
    per maildrop (RFC 1939 §8).
    """

    def __init__(self, store: Any):
        self.store = store
        self.in_use: set[str] = set()

    def avatar(self, account: Any, mind: Any) -> Any:
        """(the maildrop, its logout), or a Deferred of them once the INBOX's new UIDs are durable."""
        if account is None:
            raise cred_error.UnauthorizedLogin("POP3 needs an account")
        key = account.address.lower()
        if key in self.in_use:
            raise MaildropInUse(f"maildrop of {account.address} is in use by another session")
        lock_later = getattr(self.store, "lock_maildrop_later", None)
        if lock_later is not None:
            return self._avatar_later(account, key, lock_later)
        # A store shared by several hubs (PostgreSQL) locks across them too.
        lock_elsewhere = getattr(self.store, "lock_maildrop", None)
        unlock = lock_elsewhere(key) if lock_elsewhere is not None else (lambda: None)
        if unlock is None:
            raise MaildropInUse(f"maildrop of {account.address} is in use by a session on another hub")
        try:
            folder = self.store.account(account.address).folder(INBOX)
            # Messages another program put in are told once their UIDs are
            # durable (the store's unsettled(), flushed off the reactor):
            # the maildrop is taken after that.
            unsettled = getattr(folder, "unsettled", None)
            pending = unsettled() if unsettled is not None else None
        except BaseException:
            unlock()
            raise
        self.in_use.add(key)

        def taken(_: Any = None) -> tuple[Maildrop, Callable[[], None]]:
            try:
                return self._avatar(folder, account, key, unlock)
            except BaseException:
                self.in_use.discard(key)
                unlock()
                raise

        if pending is None:
            return taken()

        def not_settled(reason: Any) -> Any:
            self.in_use.discard(key)
            unlock()
            return reason

        return pending.addCallbacks(taken, not_settled)

    def _avatar_later(self, account: Any, key: str, lock_later: Callable[[str], defer.Deferred]) -> defer.Deferred:
        """
        A Deferred of (the maildrop, its logout) for a store that locks and
        reads in a worker thread (PostgreSQL: C{lock_maildrop_later}, then
        the INBOX's rows and downgraded sizes by C{select_later}), so the
        reactor does not wait for the database at a login.
        """
        self.in_use.add(key)
        held: list[Callable[[], None]] = []

        def locked(unlock: Callable[[], None] | None) -> defer.Deferred:
            if unlock is None:
                raise MaildropInUse(f"maildrop of {account.address} is in use by a session on another hub")
            held.append(unlock)
            return self.store.account(account.address).select_later(INBOX, readonly=True, shown=True)

        def failed(reason: Any) -> Any:
            self.in_use.discard(key)
            if held:
                held[0]()
            return reason

        d = lock_later(key).addCallback(locked)
        d.addCallback(lambda got: self._avatar(got[0], account, key, held[0]))
        return d.addErrback(failed)

    def _avatar(self, folder: Any, account: Any, key: str, unlock: Callable[[], None]) -> tuple[Maildrop, Callable[[], None]]:
        drop = Maildrop(folder, account.address)
        released = []

        def logout() -> Any:
            """Give the maildrop back; a L{Deferred} when the store gives its lock back later (PostgreSQL), else None."""
            if not released:
                released.append(True)
                drop.close()
                self.in_use.discard(key)
                return unlock()
            return None

        return drop, logout


# -- byte-stuffing ------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\n\r?\n")


def crlf_lines(data: bytes) -> bytes:
    """
    C{data} with every line end CRLF (RFC 1939 §3): a bare LF or a bare
    CR, as another program may store them, becomes CRLF, so no lone CR
    reaches the client (RFC 5322 §2.3); C{data} itself when it has none.
    Its length is the size RFC 1939 counts (L{wireform.wire_size}).
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return _LINE_END.sub(b"\r\n", data)


def stuff(data: bytes, at_line_start: bool = True) -> bytes:
    """
    C{data} as a POP3 multi-line body (RFC 1939 §3): CRLF line ends (see
    L{crlf_lines}), and a "." doubled where it starts a line.
    C{at_line_start} says whether the data follows a line end (for a
    message sent in chunks).
    """
    data = crlf_lines(data)
    data = data.replace(b"\n.", b"\n..")
    if at_line_start and data[:1] == b".":
        data = b"." + data
    return data


def downgrade(message: bytes) -> bytes:
    """
    C{message} for a session that did not send UTF8 (RFC 6856 §3): the
    same downgraded view (RFC 6857) an IMAP session without UTF8=ACCEPT
    gets (L{twisted_mailhub.imap.utf8.downgrade}: every header holding raw
    UTF-8, the message's and its MIME parts', in ASCII; bodies as they
    are), so both protocols show and count one form. ASCII mail is
    returned as it is after one scan.
    """
    if message.isascii():
        return message
    from twisted_mailhub.imap.utf8 import downgrade as rfc6857  # 8-bit mail only

    return rfc6857(message)


def terminator(last: bytes) -> bytes:
    """The end of a multi-line reply after data whose last octet is C{last}."""
    return b".\r\n" if last in (b"", b"\n") else b"\r\n.\r\n"


def top_of(f: Any, lines: int, chunk: int = 65536) -> bytes:
    """
    The header, the blank line and the first C{lines} body lines of the
    message in file C{f} (RFC 1939 §7 TOP), reading no more than needed.
    """
    buf = b""
    while True:
        data = f.read(chunk)
        buf += data
        m = _HEADER_END.search(buf)
        if m is not None:
            pos = m.end()
            for _ in range(lines):
                nl = buf.find(b"\n", pos)
                if nl == -1:
                    break
                pos = nl + 1
            else:
                return buf[:pos]
        if not data:
            return buf


class _Outgoing:
    """A large message being sent in chunks as the client reads."""

    chunk_size = 256 * 1024

    def __init__(self, f: Any, first: bytes | None = None):
        self.f = f
        self.last = b"\n"
        self.carry = b""
        self.first = first  # (octets already read from C{f})

    def next_chunk(self) -> bytes | defer.Deferred | None:
        """
        The next stuffed chunk, the terminator at the end, then L{None};
        a L{Deferred} of it when C{f.read} gives one (a slice read in a
        thread, L{twisted_mailhub.offload.SliceFile}).
        """
        if self.f is None:
            return None
        if self.first is not None:
            raw, self.first = self.first, None
        else:
            raw = self.f.read(self.chunk_size)
        if isinstance(raw, defer.Deferred):
            return raw.addCallback(self._stuffed)
        return self._stuffed(raw)

    def _stuffed(self, raw: bytes) -> bytes:
        data, self.carry = self.carry + raw, b""
        if not data:
            self.close()
            return terminator(self.last)
        if raw and data.endswith(b"\r"):
            # Keep a CR with the LF that may follow in the next chunk.
            data, self.carry = data[:-1], b"\r"
            if not data:
                return b""
        out = stuff(data, self.last == b"\n")
        self.last = out[-1:]
        return out

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


# -- the protocol -------------------------------------------------------------


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def messages(n: int) -> str:
    """C{1 message}, C{2 messages}: replies read as English to a person typing."""
    return "1 message" if n == 1 else f"{n} messages"



class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


# What each state accepts (RFC 1939 §4-§6, RFC 2449 CAPA, RFC 2595 STLS).
# NOOP is allowed before login too: people typing by hand try it first.
COMMANDS: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"CAPA", "USER", "PASS", "APOP", "STLS", "AUTH", "UTF8", "NOOP", "QUIT"}),
    State.TRANSACTION: frozenset({"CAPA", "STAT", "LIST", "RETR", "TOP", "UIDL", "DELE", "RSET", "NOOP", "QUIT"}),
    State.UPDATE: frozenset(),
}
_KNOWN = frozenset().union(*COMMANDS.values())
# (A module name is found faster than an Enum member: once per command.)
_TRANSACTION = State.TRANSACTION
# TRANSACTION commands that take an argument, by their word as sent.
# TRANSACTION commands that take an argument, by their word as sent
# (upper or lower case; others are made upper): the command's name and its
# handler's.
_WITH_ARGUMENT = {
    sent: (word, sys.intern("pop_" + word))
    for word in ("RETR", "TOP", "DELE", "LIST", "UIDL")
    for sent in (word.encode("ascii"), word.lower().encode("ascii"))
}



@implementer(IPushProducer, IHalfCloseableProtocol)
class MailhubPOP3(_pop3.POP3):
    """
    One POP3 session. Twisted's L{POP3} supplies the login plumbing
    (L{authenticateUserPASS}, L{authenticateUserAPOP}, the idle timer);
    command dispatch, replies and the transaction commands are ours.
    """

    # RFC 2449 §4 allows 255 octets; hand-typed input gets some slack.
    max_line_length = 1024
    # Messages up to this size go out in one write; larger ones in chunks.
    one_write_limit = 1024 * 1024
    # Stop reading from a client that has this many octets of commands
    # waiting (behind a slow command, or while it does not read replies).
    max_held = 4096
    implementation = b"twisted-mailhub " + __version__.encode("ascii")
    # The last command was AUTH: an unknown one now is not echoed.
    _after_auth: bool | str = False  # True right after AUTH; "secret" after a base64 word hidden so
    _after_user = False

    def __init__(self, hub: Any = None):
        self.hub = hub
        self.state = State.AUTHORIZATION
        self.lines: LineEngine | None = None
        self._outgoing: _Outgoing | None = None
        self._sending: defer.Deferred | None = None
        self._closed = False
        self._command_name = ""  # the command being answered, for log lines
        # RFC 6856: the client sent UTF8 and takes UTF-8 headers as stored.
        self.utf8 = False
        self._user: bytes | None = None
        self._record_message: Callable | None = None
        self._record_reply: Callable | None = None
        # Set while AUTH waits for the client's next SASL line.
        self._sasl: Callable[[bytes], Any] | None = None
        if hub is not None:
            self.timeOut = hub.options.get("pop3-idle-timeout") or 600
            self.login_timeout = hub.options.get("pop3-login-timeout") or 300
            self.command_timeout = hub.options.get("pop3-command-timeout") or 120
        else:
            self.timeOut = 600
            self.login_timeout = 300
            self.command_timeout = 120

    # -- connection --------------------------------------------------------

    # APOP and CRAM-MD5 offered (accounts.challenge_response_offered), set at connection
    _challenges = True

    def connectionMade(self):
        if self.hub is not None:
            self.connection_id = self.hub.connection_made(self, getattr(self.factory, "protocol_name", "pop3"))
            hostname = self.hub.hostname
        else:
            self.connection_id = "pop3"
            hostname = "localhost"
        self.hostname = hostname
        # The session transcript's way to record a RETR answer from its facts.
        self._record_message = getattr(self.transport, "record_message", None)
        # And of any other reply, recorded when written (replies to
        # pipelined commands leave together, at the end of the batch).
        self._record_reply = getattr(self.transport, "record_reply", None)
        if self.magic is None:
            self.magic = self.generateMagic()
        clock = self.hub.reactor if self.hub is not None else _reactor()
        self.lines = LineEngine(
            self,
            clock,
            max_line=self.max_line_length,
            max_held=self.max_held,
            idle_timeout=self.timeOut,
            line_timeout=self.command_timeout,
            # Every reply goes through write()/write_message(); a large
            # message streamed to the transport is preceded by a flush().
            gather=True,
        )
        # Input goes straight to the engine (one call less per read) until
        # QUIT enters UPDATE (_enter_update).
        self.dataReceived = self.lines.data_received
        # APOP's timestamp (RFC 1939 §7) only while APOP can log someone in.
        self._challenges = challenge_response_offered(self.hub)
        if self._challenges:
            self.reply_ok(b"%s POP3 ready %s" % (hostname.encode("ascii", "replace"), self.magic))
        else:
            self.reply_ok(b"%s POP3 ready" % hostname.encode("ascii", "replace"))
        # The idle timeout alone would let a client that sends a NOOP every
        # few minutes sit in AUTHORIZATION for ever, holding a connection.
        self.lines.start(self.transport, login_timeout=self.login_timeout)

    def timed_out(self, kind: str) -> None:
        """L{LineEngine} says a time limit passed (idle, line, login)."""
        if self._closed:
            return
        if kind == "login":
            self.reply_err(b"[AUTH] too long without logging in, closing")
        elif self.lines.writing_paused or self._outgoing is not None:
            # The client stopped reading (mid-message, perhaps): nothing more
            # can be said to it, and a graceful close would wait forever.
            self.lines.abort()
            self._stop_sending()
            return
        elif kind == "idle":
            self.reply_err(b"autologout: idle for %d seconds, closing" % self.timeOut)
        else:
            self.reply_err(b"a command line took over %d seconds to arrive, closing" % self.command_timeout)
        self._close()

    def generateMagic(self) -> bytes:
        # RFC 1939 §7: <process-ID.clock@hostname>; the random part makes it
        # unique per connection and unguessable, so a digest cannot be replayed.
        host = getattr(self, "hostname", "localhost")
        return f"<{os.getpid()}.{time.time_ns()}.{secrets.token_hex(6)}@{host}>".encode("ascii", "replace")

    def connectionLost(self, reason=protocol.connectionDone):
        self._closed = True
        if self.lines is not None:
            self.lines.connection_lost()
        self._stop_sending()
        if self._read_ahead_call is not None:
            self._forget_read_ahead()
        # A dropped connection does not enter UPDATE (RFC 1939 §6): nothing
        # deleted, nothing marked; Twisted's connectionLost releases the lock.
        _pop3.POP3.connectionLost(self, reason)

    def _close(self) -> None:
        self.lines.close()
        self._stop_sending()

    def _stop_sending(self) -> None:
        """
        A big message being sent goes no further (the connection is lost
        or cut): its file is closed, and the Deferred its RETR returned
        (L{_sending}) fires, so that nothing waits on it for ever. Called
        once the line engine is stopped: no later command is answered.
        """
        if self._outgoing is not None:
            self._outgoing.close()
            self._outgoing = None
        if self._sending is not None:
            d, self._sending = self._sending, None
            d.callback(None)

    # -- replies -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """
        A reply, sent through the line engine: at once, in one send, or
        with the other replies of a pipelined batch at its end.
        """
        if self.lines is not None:
            record = self._record_reply
            self.lines.write(data, record(data) if record is not None else None)
        else:
            self.transport.write(data)

    def write_message(self, status: bytes, message: bytes, lines: int) -> None:
        """
        A multi-line reply (RETR, TOP) in one write: the status line
        C{status} (no line end), C{message} of C{lines} lines, which needs
        no byte-stuffing and ends in CRLF, and the terminating ".". The
        session transcript records it from these facts, without reading
        the message again.
        """
        record = self._record_message
        self._write_message(status, message, lines, record(status, lines, len(message)) if record is not None else None)

    def _write_message(self, status: bytes, message: bytes, lines: int, past: Any) -> None:
        # write_message once the transcript has recorded the answer (past:
        # where to write it past the recorder) or not (None).
        data = b"".join((status, b"\r\n", message, b".\r\n"))
        if past is None:
            self.write(data)
        elif self.lines is None:
            past.write(data)
        else:
            self.lines.write(data, past)

    def reply_ok(self, text: bytes | str = b"") -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.write(b"+OK " + text + b"\r\n" if text else b"+OK\r\n")

    def reply_err(self, text: bytes | str) -> None:
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.write(b"-ERR " + text + b"\r\n")

    # Twisted's names, for its login callbacks.
    def successResponse(self, message=""):
        self.reply_ok(message if isinstance(message, (bytes, str)) else str(message))

    def failResponse(self, message=b""):
        self.reply_err(message if isinstance(message, (bytes, str)) else str(message))

    # -- input: the line engine's owner -----------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # (connectionMade puts the engine's own in its place until UPDATE.)
        if self.state is not State.UPDATE:
            self.lines.data_received(data)

    def _enter_update(self) -> None:
        """After QUIT (RFC 1939 §6): no further input is handled."""
        self.state = State.UPDATE
        self.__dict__.pop("dataReceived", None)

    # IHalfCloseableProtocol: a session piped in whole (`printf ... | nc -N`)
    # shuts down its sending side after QUIT; everything sent is answered
    # (and a QUIT's deletions made) before the connection closes.
    def readConnectionLost(self):
        self.lines.read_connection_lost()

    def writeConnectionLost(self):
        self.lines.write_connection_lost()

    # IPushProducer, for whoever holds the protocol: the engine is the
    # transport's producer.
    def pauseProducing(self):
        self.lines.pauseProducing()

    def resumeProducing(self):
        self.lines.resumeProducing()

    def stopProducing(self):
        self.lines.stopProducing()
        self._stop_sending()

    @property
    def _paused(self) -> bool:
        return self.lines is not None and self.lines.writing_paused

    def output_resumed(self) -> None:
        """The client reads again: send more of a large message."""
        self._send_more()

    def _send_more(self) -> None:
        # What was answered before goes first (and may pause us).
        self.lines.flush()
        while self._outgoing is not None and not self.lines.writing_paused and not self._reading:
            chunk = self._outgoing.next_chunk()
            if isinstance(chunk, defer.Deferred):
                # (read in a thread: go on when it is here)
                self._reading = True
                chunk.addCallbacks(self._chunk_read, self._chunk_failed)
                return
            if chunk is None:
                self._outgoing = None
                break
            self.transport.write(chunk)
            self.lines.touch()
        if self._outgoing is None and self._sending is not None:
            d, self._sending = self._sending, None
            d.callback(None)

    _reading = False  # a chunk of a big message is being read in a thread

    def _chunk_read(self, chunk: bytes) -> None:
        self._reading = False
        if self._closed or self._outgoing is None:
            return
        self.transport.write(chunk)
        self.lines.touch()
        self._send_more()

    def _chunk_failed(self, reason: Failure) -> None:
        """
        A big message's slice could not be read after its reply line was
        sent: the reply cannot be taken back, so the connection is closed
        (the client sees no terminating dot) with one log line that says
        why: the database lost (L{refused}), the message removed by
        another session meanwhile, or a fault of ours (with its
        traceback, as IMAP's FETCH logs one).
        """
        self._reading = False
        if self._closed:
            return
        if reason.check(StoreUnavailable):
            refused("pop3", "RETR", reason.value)
        elif reason.check(NoSuchMessage):
            log.info("pop3: RETR cut short: the message was removed by another session while it was sent; connection closed")
        else:
            log.failure("pop3: RETR cut short: a slice of the message could not be read; connection closed", reason)
        outgoing, self._outgoing = self._outgoing, None
        if outgoing is not None:
            outgoing.close()
        self.transport.loseConnection()
        if self._sending is not None:
            d, self._sending = self._sending, None
            d.callback(None)

    def line_too_long(self) -> None:
        self._sasl = None
        self.reply_err(b"command line too long (at most %d octets)" % self.max_line_length)

    def command_failed(self, reason: Failure) -> bool:
        if is_out_of_space(reason.value):
            self._storage_full("command", reason.value)
            return True
        if reason.check(StoreUnavailable):
            # RFC 3206 §4: SYS/TEMP, and one log line (store/outage.py).
            refused("pop3", self._command_name or "command", reason.value)
            self.reply_err(b"[SYS/TEMP] the mail store cannot be reached now; try again")
            return True
        self.reply_err(b"[SYS/TEMP] internal error; try again")
        return False

    # -- dispatch -------------------------------------------------------------

    def line_received(self, line: bytes) -> Any:
        if self._sasl is not None:
            handler, self._sasl = self._sasl, None
            # The SASL exchange's base64 line (RFC 5034 §4), typed in the
            # same telnet client as the commands: its Telnet commands go too.
            return handler(telnet_prefix_text(line))
        if self.state is _TRANSACTION:
            # The common case, "RETR 12": straight to its handler.
            word, _, rest = line.partition(b" ")
            command = _WITH_ARGUMENT.get(word) or _WITH_ARGUMENT.get(word.upper())
            if command is not None and (rest.isdigit() or not has_control(rest)):
                self._command_name = command[0]
                return getattr(self, command[1])(rest if rest.isdigit() else rest.strip())
        # Telnet commands (Ctrl-C in telnet: IAC IP, IAC DO TIMING-MARK)
        # are no part of the command (lines.telnet_prefix_text).
        line = telnet_prefix_text(line).lstrip(b" \t")
        word = line.split(None, 1)[0] if line.strip() else b""
        # After the command word and one separator: PASS keeps the rest as
        # sent (a password may hold spaces); others strip it.
        rest = line[len(word) + 1 :]
        command = word.upper()
        if not command:
            self.reply_err(b"empty command; try CAPA for the list of commands")
            return None
        try:
            name = command.decode("ascii")
        except UnicodeDecodeError:
            name = ""
        after_auth, self._after_auth = self._after_auth, name == "AUTH"
        after_user, self._after_user = self._after_user, name == "USER"
        if name not in _KNOWN:
            secret = after_auth and looks_like_a_secret(line, following=after_auth == "secret")
            if secret:
                # One base64 word after another (a user name, then its
                # password): each is hidden, not only the first.
                self._after_auth = "secret"
            if secret or (after_auth is True and not is_command_word(command)):
                # Right after an AUTH that ended (refused, say, before STLS):
                # this may be the password the client sent anyway; not shown.
                self.reply_err(b"unknown command (not shown: after AUTH it may be a password); try CAPA for the list of commands")
                return None
            if after_user:
                # Right after USER: a student who types the password alone,
                # as at a "Password:" prompt; not shown (the console and the
                # log mask it too: transcript.py).
                self.reply_err(f"unknown command (not shown: after USER it may be the password){control_note(command)}; send PASS and the password")
                return None
            self.reply_err(f"unknown command '{quote(command, 40, ascii=True)}'{control_note(command)}; try CAPA for the list of commands")
            return None
        if name not in COMMANDS[self.state]:
            self.reply_err(self._wrong_state(name))
            return None
        if name not in ("USER", "PASS", "AUTH") and has_control(line):
            # RFC 1939 §3: keywords and arguments are printable characters
            # separated by single spaces. A CR or a TAB was taken as a
            # separator ("LIST<CR>1" was LIST 1, "STAT<CR>" STAT) and a NUL
            # reached the handler; SMTP, FTP and IMAP refuse such a line and
            # name the character, and so does POP3 now. (USER and AUTH
            # quote it with the note, test_e2e_lines; a password is the
            # client's own.)
            self.reply_err(f"syntax: {name} takes printable words separated by spaces (RFC 1939 section 3){control_note(line)}")
            return None
        if name in _NO_ARGUMENT and rest.strip():
            # RFC 1939 §5-6, RFC 2449 §5, RFC 2595 §4: these take none.
            self.reply_err(f"syntax: {name} takes no argument")
            return None
        handler = getattr(self, "pop_" + name)
        self._command_name = name
        return handler(rest if name == "PASS" else rest.strip())

    def _storage_full(self, name: str, error: BaseException) -> None:
        # RFC 3206 §4: SYS/TEMP, a problem of the server that may go away.
        log.warn("POP3 {command} failed: {why}", command=name, why=no_room(error))
        if not self._closed:
            self.reply_err(b"[SYS/TEMP] insufficient system storage; try again later")

    def _wrong_state(self, name: str) -> str:
        if self.state is State.AUTHORIZATION:
            return f"log in first (USER and PASS, or APOP); {name} comes after login"
        if name in ("USER", "PASS", "APOP", "AUTH"):
            return "already logged in"
        if name == "STLS":
            return "STLS is only allowed before login (RFC 2595)"
        return f"{name} is not allowed now"

    # -- AUTHORIZATION ---------------------------------------------------------

    def plaintext_allowed(self) -> bool:
        """USER/PASS: over TLS, or from a trusted network (RFC 2595 §2.1)."""
        if is_secure(self.transport):
            return True
        return self.hub is not None and self.hub.is_trusted(self.transport)

    def can_start_tls(self) -> bool:
        return (
            self.hub is not None
            and not is_secure(self.transport)
            and getattr(self.transport, "startTLS", None) is not None
        )

    def capabilities(self) -> list[bytes]:
        """CAPA (RFC 2449): exactly what works on this connection now."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.plaintext_allowed():
                caps.append(b"USER")
            if self.can_start_tls():
                caps.append(b"STLS")
            caps.append(b"SASL " + b" ".join(self.sasl_mechanisms()))
            # RFC 6856 §2: UTF8, and USER when USER/PASS take UTF-8 names.
            caps.append(b"UTF8 USER" if self.plaintext_allowed() else b"UTF8")
        caps.append(b"IMPLEMENTATION " + self.implementation)
        return caps

    def pop_CAPA(self, args: bytes) -> None:
        self.write(
            b"+OK capability list follows\r\n" + b"".join(c + b"\r\n" for c in self.capabilities()) + b".\r\n"
        )

    def pop_STLS(self, args: bytes) -> None:
        if is_secure(self.transport):
            self.reply_err(b"already using TLS")
            return
        if not self.can_start_tls():
            self.reply_err(b"STLS is not available here")
            return
        self.reply_ok(b"begin TLS negotiation")
        # RFC 2595 §4 / CVE-2011-0411: anything the client sent after STLS
        # before the handshake is discarded, never executed over TLS.
        dropped = self.lines.discard_pending()
        if dropped:
            log.info("{cid} discarded {n} command lines pipelined after STLS", cid=self.connection_id, n=dropped)
        self._user = None
        self.transport.startTLS(self.hub.tls)

    def pop_UTF8(self, args: bytes) -> None:
        """RFC 6856 §2: UTF-8 in names and headers from now on."""
        if args:
            self.reply_err(b"UTF8 takes no argument")
            return
        self.utf8 = True
        self.reply_ok(b"UTF8 enabled: messages are sent with their UTF-8 headers as stored")

    def sasl_mechanisms(self) -> list[bytes]:
        """
        SASL mechanisms for AUTH (RFC 5034): PLAIN sends the password, so it
        follows the USER/PASS rule; CRAM-MD5 is a challenge, allowed anywhere.
        """
        return ([b"PLAIN"] if self.plaintext_allowed() else []) + ([b"CRAM-MD5"] if self._challenges else [])

    def _other_ways(self, challenges: bytes = b"use STLS or APOP") -> bytes:
        """How else to log in on this connection, for a refusal's text."""
        if self._challenges:
            return challenges
        return b"use STLS" if self.can_start_tls() else b"this connection offers no other login"

    def pop_AUTH(self, args: bytes) -> defer.Deferred | None:
        words = args.split()
        if not words:
            # Pre-RFC 5034 clients ask for the list this way.
            self.write(b"+OK SASL mechanisms follow\r\n" + b"".join(m + b"\r\n" for m in self.sasl_mechanisms()) + b".\r\n")
            return None
        mechanism, initial = words[0].upper(), (words[1] if len(words) > 1 else None)
        if initial == b"=":
            # RFC 5034 §4: "=" is an initial response of zero length (it was
            # refused as "not valid base64").
            initial = b""
        if mechanism == b"PLAIN" and not self.plaintext_allowed():
            self.reply_err(b"[AUTH] AUTH PLAIN needs TLS on this connection: " + self._other_ways(b"use STLS, APOP or AUTH CRAM-MD5"))
            return None
        if mechanism == b"PLAIN":
            if initial is None:
                self._sasl = self._sasl_plain
                self.write(b"+ \r\n")
                return None
            return self._sasl_plain(initial)
        if mechanism == b"CRAM-MD5" and initial is None and self._challenges:
            creds = _credentials.CramMD5Credentials(self.hostname.encode("ascii", "replace"))
            challenge = creds.getChallenge()
            self._sasl = lambda line: self._sasl_cram(creds, line)
            self.write(b"+ " + base64.b64encode(challenge) + b"\r\n")
            return None
        if mechanism == b"CRAM-MD5" and self._challenges:
            # RFC 5034 §4: an initial response to a mechanism that starts with
            # the server's challenge is refused (it was called unsupported).
            self.reply_err(b"CRAM-MD5 starts with the server's challenge: send AUTH CRAM-MD5 alone")
            return None
        offered = self.sasl_mechanisms()
        self.reply_err(
            f"unsupported SASL mechanism '{quote(words[0], 30, ascii=True)}'{control_note(words[0])}; "
            + ("try one of: " + " ".join(m.decode() for m in offered) if offered else self._other_ways().decode())
        )
        return None

    def _sasl_response(self, line: bytes) -> bytes | None:
        """The decoded client response, or L{None} after an error reply."""
        if line.strip() == b"*":
            self.reply_err(b"authentication cancelled")
            return None
        try:
            return base64.b64decode(line.strip(), validate=True)
        except (binascii.Error, ValueError):
            self.reply_err(b"SASL response is not valid base64")
            return None

    def _sasl_plain(self, line: bytes) -> defer.Deferred | None:
        response = self._sasl_response(line)
        if response is None:
            return None
        parts = response.split(b"\0")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            # RFC 4616: authzid NUL authcid NUL passwd; we act for no one else.
            self.reply_err(b"[AUTH] AUTH PLAIN wants authzid NUL user NUL password, with no other authzid")
            return None
        user, password = parts[1], parts[2]
        return self._login(defer.maybeDeferred(self.authenticateUserPASS, user, password), user)

    def _sasl_cram(self, creds: Any, line: bytes) -> defer.Deferred | None:
        response = self._sasl_response(line)
        if response is None:
            return None
        try:
            creds.setResponse(response)
        except ValueError:
            self.reply_err(b"[AUTH] CRAM-MD5 wants: user hexdigest")
            return None
        d = self.portal.login(creds, None, IMailbox) if self.portal is not None else defer.fail(cred_error.UnauthorizedLogin())
        return self._login(d, creds.username)

    def pop_USER(self, args: bytes) -> None:
        if not self.plaintext_allowed():
            self.reply_err(b"[AUTH] plaintext login needs TLS on this connection: " + self._other_ways())
            return
        if not args:
            self.reply_err(b"USER needs a name, e.g. USER bob")
            return
        self._user = args
        self.reply_ok(f"now send PASS for {quote(args, 64, ascii=not self.utf8)}{control_note(args)}")

    def pop_PASS(self, args: bytes) -> defer.Deferred | None:
        if not self.plaintext_allowed():
            self.reply_err(b"[AUTH] plaintext login needs TLS on this connection: " + self._other_ways())
            return None
        if self._user is None:
            self.reply_err(b"send USER first, then PASS")
            return None
        if not args:
            # RFC 1939 §7: PASS string. No account has an empty password,
            # so this is no login attempt: say what is missing, keep USER.
            self.reply_err(b"PASS needs the password, e.g. PASS secret")
            return None
        user, self._user = self._user, None
        # The password is the rest of the line as sent: it may hold spaces.
        return self._login(defer.maybeDeferred(self.authenticateUserPASS, user, args), user, "PASS")

    def pop_APOP(self, args: bytes) -> defer.Deferred | None:
        if not self._challenges:
            self.reply_err(
                b"[AUTH] APOP is not offered here (no timestamp in the greeting): the passwords are kept hashed; "
                + (b"log in with USER and PASS" if self.plaintext_allowed() else self._other_ways() + b", then USER and PASS")
            )
            return None
        parts = args.split()
        if len(parts) != 2:
            self.reply_err(b"APOP needs a name and a digest: APOP name md5hex(timestamp+password)")
            return None
        user, digest = parts
        return self._login(defer.maybeDeferred(self.authenticateUserAPOP, user, digest), user, "APOP")

    def _login(self, d: defer.Deferred, user: bytes, command: str = "AUTH") -> defer.Deferred:
        def ok(result):
            interface, drop, logout = result
            if self._closed:
                # The client left while the login was in flight.
                logout()
                return
            if not self.utf8:
                try:
                    drop.count_as_downgraded()
                except StoreUnavailable as e:
                    # (the sizes as downgraded are the store's: PostgreSQL
                    # went away since the listing) no session, no lock held
                    logout()
                    refused("pop3", command, e)
                    self.reply_err(b"[SYS/TEMP] the mail store cannot be reached now; try again")
                    return
            self.mbox = drop
            self._onLogout = logout
            self.state = State.TRANSACTION
            self.lines.logged_in()
            self.reply_ok(f"{drop.address} has {messages(drop.count)} ({drop.octets} octets)")

        def failed(reason):
            if self._closed:
                return
            if reason.check(MaildropInUse):
                self.reply_err(b"[IN-USE] " + reason.getErrorMessage().encode("utf-8", "replace"))
            elif reason.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                self.reply_err(b"[AUTH] authentication failed")
            elif is_out_of_space(reason.value):
                self._storage_full("PASS", reason.value)
            elif reason.check(StoreUnavailable):
                refused("pop3", command, reason.value)
                self.reply_err(b"[SYS/TEMP] the mail store cannot be reached now; try again")
            else:
                from twisted_mailhub.store.interfaces import NoSuchFolder

                if isinstance(reason.value, (OSError, NoSuchFolder)):
                    # (the disk or the data folder failed, or the maildrop's
                    # folder went from under the hub: one line, as SMTP says it)
                    log.error("POP3 login for {user} failed: {why}", user=quote(user), why=error_words(reason.value))
                else:
                    log.failure("POP3 login for {user} failed", reason, user=quote(user))
                self.reply_err(b"[SYS/TEMP] login failed for a server problem; try again")

        return d.addCallbacks(ok, failed)

    # -- TRANSACTION -----------------------------------------------------------

    def _number(self, name: str, args: bytes, deleted_ok: bool = False) -> int | None:
        """
        The 0-based index a message-number argument names, or L{None} after
        an error reply that says what was expected.
        """
        words = args.split()
        if len(words) != 1:
            self.reply_err(f"{name} needs one message number, e.g. {name} 1")
            return None
        # ASCII digits only (RFC 1939 §3): int() would also read "0_1"
        # and "+1" (and "DELE 0_1" deleted message 1).
        number = int(words[0]) if words[0].isdigit() and len(words[0]) <= 20 else 0
        drop = self.mbox
        if not 1 <= number <= len(drop):
            shown = quote(words[0], 20, ascii=True)
            self.reply_err(f"no message {shown} (the maildrop has {messages(len(drop))}){control_note(words[0])}")
            return None
        if not deleted_ok and number - 1 in drop.deleted:
            self.reply_err(f"message {number} already deleted")
            return None
        return number - 1

    def pop_STAT(self, args: bytes) -> None:
        self.reply_ok(b"%d %d" % (self.mbox.count, self.mbox.octets))

    def pop_LIST(self, args: bytes) -> None:
        drop = self.mbox
        if args:
            i = self._number("LIST", args)
            if i is not None:
                self.reply_ok(b"%d %d" % (i + 1, drop.sizes[i]))
            return
        lines = [b"+OK %s (%d octets)\r\n" % (messages(drop.count).encode(), drop.octets)]
        deleted = drop.deleted
        lines.extend(b"%d %d\r\n" % (n, size) for n, size in enumerate(drop.sizes, 1) if n - 1 not in deleted)
        lines.append(b".\r\n")
        self.write(b"".join(lines))

    def pop_UIDL(self, args: bytes) -> None:
        drop = self.mbox
        if args:
            i = self._number("UIDL", args)
            if i is not None:
                self.reply_ok(b"%d %s" % (i + 1, drop.uidls[i].encode("ascii")))
            return
        lines = [b"+OK unique-id listing follows\r\n"]
        deleted = drop.deleted
        lines.extend(b"%d %s\r\n" % (n, u.encode("ascii")) for n, u in enumerate(drop.uidls, 1) if n - 1 not in deleted)
        lines.append(b".\r\n")
        self.write(b"".join(lines))

    def _open(self, i: int) -> Any:
        try:
            return self.mbox.getMessage(i)
        except (NoSuchMessage, FileNotFoundError):
            self._gone(i)
            return None

    def _gone(self, i: int) -> None:
        self.reply_err(f"[SYS/TEMP] message {i + 1} was removed by another session")

    def pop_RETR(self, args: bytes) -> defer.Deferred | None:
        drop = self.mbox
        # "RETR 12" of a message not deleted; anything else is answered by _number.
        i = int(args) - 1 if args.isdigit() else -1
        if not 0 <= i < len(drop.uids) or i in drop.deleted:
            i = self._number("RETR", args)
            if i is None:
                return
        size = drop.sizes[i]
        if size <= self.one_write_limit:
            # The common case: one read, one write (the reply line, the
            # byte-stuffed message and the terminator).
            if drop.detached is not None:
                # (PostgreSQL) read in a thread; later commands wait.
                return self._read_detached(i, self._retr_answer)
            try:
                data, lines = drop.wire_message(i)
            except (NoSuchMessage, FileNotFoundError):
                return self._gone(i)
            return self._retr_answer(i, data, lines)
        if drop.detached is not None:
            return self._retr_detached(i, size)
        f = self._open(i)
        if f is None:
            return
        drop.retrieved.add(i)
        head = b"+OK %d octets\r\n" % size
        if not self.utf8:
            start = f.read(65536)
            f.seek(0)
            m = _HEADER_END.search(start)
            if not start[: m.start() if m else len(start)].isascii():
                # Rare: a large message with UTF-8 headers, for a client
                # that did not send UTF8: downgraded whole, in one write.
                size = self.one_write_limit
        if size > self.one_write_limit:
            # Sent as the client reads; later commands wait for the end.
            self.write(head)
            self._outgoing = _Outgoing(f)
            self._sending = defer.Deferred()
            d = self._sending
            self._send_more()
            return d
        with f:
            data = f.read()
        self._retr_whole(data)

    def _read_detached(self, i: int, answer: Callable[..., Any]) -> defer.Deferred | None:
        """
        Message C{i} read in a parsing thread (L{Maildrop.detached}), or
        taken from what the last read brought; then C{answer(i, data)}.
        A Deferred (later commands wait for it) when it was read there.
        Gone: L{_gone}. A database that cannot be reached: the failure,
        answered -ERR [SYS/TEMP] by L{command_failed}.
        """
        try:
            got = self.mbox.detached.whole(i)
        except NoSuchMessage:
            return self._gone(i)
        if not isinstance(got, defer.Deferred):
            self._keep_read_ahead()
            return answer(i, got)

        def read(data: bytes) -> None:
            if not self._closed:
                self._keep_read_ahead()
                answer(i, data)

        def failed(reason: Failure) -> Any:
            if reason.check(NoSuchMessage):
                return self._gone(i)
            return reason

        return got.addCallbacks(read, failed)

    # Seconds the messages read ahead with a RETR (or TOP) are kept for
    # the next one: a client that reads message after message asks within
    # a round trip; one that stopped (or idles) holds no bodies (up to
    # 4 MB) until its session ends.
    read_ahead_kept = 2.0
    _read_ahead_call: Any = None

    def _keep_read_ahead(self) -> None:
        """(Re)start the time L{read_ahead_kept}, after which the read-ahead is let go."""
        call = self._read_ahead_call
        if call is not None and call.active():
            call.reset(self.read_ahead_kept)
        else:
            self._read_ahead_call = self.lines.clock.callLater(self.read_ahead_kept, self._forget_read_ahead)

    def _forget_read_ahead(self) -> None:
        call, self._read_ahead_call = self._read_ahead_call, None
        if call is not None and call.active():
            call.cancel()
        drop = getattr(self, "mbox", None)
        if drop is not None and getattr(drop, "detached", None) is not None:
            drop.detached.forget_read_ahead()

    def _retr_detached(self, i: int, size: int) -> defer.Deferred | None:
        """
        RETR of a big message of a store read in a thread (PostgreSQL):
        sent in slices as the client takes them, each read in a thread
        (L{DetachedBodies.reader}). Its first slice is read before the
        reply line, so a database that cannot be reached is answered
        -ERR [SYS/TEMP]; one lost after the message began closes the
        connection (the reply cannot be taken back; the client sees no
        terminator).
        """
        try:
            f = self.mbox.detached.reader(i)
        except NoSuchMessage:
            return self._gone(i)
        first = f.read(65536)

        def begin(start: bytes) -> Any:
            if self._closed:
                return None
            if not start and size:
                return self._gone(i)
            self.mbox.retrieved.add(i)
            if not self.utf8:
                m = _HEADER_END.search(start)
                if not start[: m.start() if m else len(start)].isascii():
                    # Rare: UTF-8 headers for a client that did not send
                    # UTF8: downgraded whole, in one write.
                    return self._read_detached(i, lambda i, data: self._retr_whole(data))
            self.write(b"+OK %d octets\r\n" % size)
            self._outgoing = _Outgoing(f, start)
            self._sending = defer.Deferred()
            d = self._sending
            self._send_more()
            return d

        def failed(reason: Failure) -> Any:
            if reason.check(NoSuchMessage):
                return self._gone(i)
            return reason

        return first.addCallbacks(begin, failed)

    def _retr_answer(self, i: int, data: bytes, lines: Any = False) -> None:
        """RETR's answer of message C{i} whose bytes are C{data} (C{lines}: L{Maildrop.wire_message}'s, or False: looked up now)."""
        drop = self.mbox
        if lines is False:
            lines = drop.lines_of(i, data)
        drop.retrieved.add(i)
        if lines is not None:
            # Stored as it is sent: no scan, no copy but the one write.
            # (write_message, inline for the commonest answer.)
            status = b"+OK %d octets" % len(data)
            record = self._record_message
            past = record(status, lines, len(data)) if record is not None else None
            if past is not None and self.lines is not None:
                self.lines.write(b"".join((status, b"\r\n", data, b".\r\n")), past)
            else:
                self._write_message(status, data, lines, past)
            return None
        if not self.utf8:
            data = downgrade(data)
        # The octets counted are those sent, before stuffing (RFC 1939 §11).
        data = crlf_lines(data)
        body = stuff(data)
        self.write(b"+OK %d octets\r\n" % len(data) + body + terminator(body[-1:]))
        return None

    def _retr_whole(self, data: bytes) -> None:
        """RETR's answer of a big message held whole (downgraded, CRLF, stuffed): one write."""
        if not self.utf8:
            data = downgrade(data)
        data = crlf_lines(data)
        head = b"+OK %d octets\r\n" % len(data)
        body = stuff(data)
        # One write: the reply line, the message and the terminator.
        self.write(head + body + terminator(body[-1:]))

    def pop_TOP(self, args: bytes) -> None:
        words = args.split()
        if len(words) != 2:
            self.reply_err(b"TOP needs a message number and a line count, e.g. TOP 1 10")
            return
        i = self._number("TOP", words[0])
        if i is None:
            return
        if not words[1].isdigit():
            # ASCII digits only, as for message numbers (_number)
            self.reply_err(b"TOP needs a line count of 0 or more, e.g. TOP 1 10")
            return
        lines = int(words[1])
        drop = self.mbox
        if drop.detached is not None:
            # (PostgreSQL) read in a thread; later commands wait.
            if drop.sizes[i] <= self.one_write_limit:
                return self._read_detached(i, lambda i, data: self._top_answer(i, data, lines))
            try:
                f = drop.detached.thread_file(i)
            except NoSuchMessage:
                return self._gone(i)

            def failed(reason: Failure) -> Any:
                if reason.check(NoSuchMessage):
                    return self._gone(i)
                return reason

            return in_thread(top_of, f, lines).addCallbacks(lambda top: None if self._closed else self._top_write(top), failed)
        if drop.sizes[i] <= self.one_write_limit:
            # One read, as RETR does.
            try:
                data = drop.read(i)
            except (NoSuchMessage, FileNotFoundError):
                return self._gone(i)
            return self._top_answer(i, data, lines)
        f = self._open(i)
        if f is None:
            return
        with f:
            top = top_of(f, lines)
        self._top_write(top)

    def _top_answer(self, i: int, data: bytes, lines: int) -> None:
        """TOP's answer: the first C{lines} body lines of message C{i}, whose bytes are C{data}."""
        if self._closed:
            return
        # Lines as RETR sends them: a bare CR ends one too.
        top = top_of(io.BytesIO(crlf_lines(data)), lines)
        if self.mbox.wire_lines(i, data) is not None:
            # Stored as it is sent: so are its first lines.
            self.write_message(b"+OK top of message follows", top, top.count(b"\n"))
            return
        self._top_write(top)

    def _top_write(self, top: bytes) -> None:
        """TOP's answer of C{top} (the header and first lines, as read): downgraded, stuffed, one write."""
        body = stuff(top if self.utf8 else downgrade(top))
        self.write(b"+OK top of message follows\r\n" + body + terminator(body[-1:]))

    def pop_DELE(self, args: bytes) -> None:
        i = self._number("DELE", args)
        if i is not None:
            self.mbox.deleteMessage(i)
            self.reply_ok(b"message %d deleted" % (i + 1))

    def pop_RSET(self, args: bytes) -> None:
        drop = self.mbox
        drop.undeleteMessages()
        self.reply_ok(f"maildrop has {messages(drop.count)} ({drop.octets} octets)")

    def pop_NOOP(self, args: bytes) -> None:
        self.reply_ok()

    def pop_QUIT(self, args: bytes) -> None:
        if self.state is State.TRANSACTION:
            self._enter_update()
            drop = self.mbox
            outcome: list = []

            def synced(left: list[int]):
                outcome.append(left)
                # The lock goes now, not when the socket closes: a client that
                # reconnects at once must not find its own session in the way
                # (the +OK waits for a lock the store gives back later).
                released = None
                if self._onLogout is not None:
                    released = self._onLogout()
                    self._onLogout = None
                # The +OK promises the deletions happened (RFC 1939 §6): answer
                # only once they are on disk.
                flushed = defer.maybeDeferred(drop.folder.flush) if len(drop.deleted) > len(left) else None
                if isinstance(released, defer.Deferred):
                    return released.addCallback(lambda _: flushed)
                return flushed

            d = drop.sync().addCallback(synced)

            def answer(_):
                left = outcome[0]
                removed = len(drop.deleted) - len(left)
                if left and getattr(drop, "sync_error", None) is not None and is_not_writable(drop.sync_error):
                    # RFC 3206 §4: SYS/PERM, a retry will not help.
                    self.reply_err(b"[SYS/PERM] some deleted messages not removed: %s: %s" % (b" ".join(b"%d" % (i + 1) for i in left), not_writable_words(drop.sync_error)))
                elif left:
                    self.reply_err(b"[SYS/TEMP] some deleted messages not removed: %s" % b" ".join(b"%d" % (i + 1) for i in left))
                else:
                    self.reply_ok(f"{self.hostname} POP3 server signing off ({messages(removed)} deleted)")
                self._close()

            def failed(reason):
                log.failure("POP3 could not make deletions durable for {address}", reason, address=drop.address)
                self.reply_err(b"[SYS/TEMP] deletions may not have reached the disk")
                self._close()

            return d.addCallbacks(answer, failed)
        else:
            self._enter_update()
            self.reply_ok(b"%s POP3 server signing off" % self.hostname.encode("ascii", "replace"))
        self._close()


class POP3Factory(protocol.ServerFactory):
    """Makes a L{MailhubPOP3} per connection, all sharing one hub."""

    noisy = False

    def __init__(self, hub: Any):
        self.hub = hub

    def buildProtocol(self, addr):
        p = MailhubPOP3(self.hub)
        p.factory = self
        return p


def install(hub: Any) -> None:
    maildrops = Maildrops(hub.store)
    hub.pop3_maildrops = maildrops
    hub.realm.register(IMailbox, maildrops.avatar)
    hub.listen_each(listeners, lambda spec: POP3Factory(hub))
