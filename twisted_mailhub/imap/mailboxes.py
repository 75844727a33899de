# -*- test-case-name: tests.test_e2e_imap -*-
"""
Mailbox commands (RFC 3501 §6.3): SELECT, EXAMINE, UNSELECT, CREATE,
DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE and STATUS.

Rules:

 - Names on the wire are modified UTF-7 (L{wire.mailbox_name}); the store
   sees Unicode names with C{/} as the delimiter.
 - A store error becomes a tagged C{NO} with an RFC 5530 response code
   (C{[NONEXISTENT]}, C{[ALREADYEXISTS]}, C{[CANNOT]}, C{[TRYCREATE]} for
   APPEND/COPY/MOVE, C{[SERVERBUG]} otherwise); never a traceback.
 - APPEND lives in L{twisted_mailhub.imap.append}, LIST and LSUB in
   L{twisted_mailhub.imap.listing}.
 - DELETE of a name that is only the parent of other mailboxes
   (\\Noselect) is C{NO [HASCHILDREN]} (RFC 9051 §6.3.5, §7.1); a mailbox
   with children is deleted and its name stays as C{\\Noselect}.
 - IMAP4rev2 sessions get C{* LIST () "/" new ("OLDNAME" (old))} after a
   RENAME (one per mailbox moved) and after a CREATE whose name was
   canonicalised (RFC 9051 §7.3.1).
 - CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE are answered only
   once the change is durable (the store's C{durable()}, fsynced off the
   reactor on Maildir; a committed transaction on PostgreSQL); no further
   command of the session is read meanwhile. A change that could not be
   made durable is C{NO}.
 - A selected folder deleted or renamed elsewhere ends the session with
   C{BYE [UNAVAILABLE]}, as Dovecot does.
 - Subscriptions follow a RENAME (the mailbox's and its inferiors'; the
   new folder of a RENAME INBOX is subscribed when INBOX is); DELETE
   leaves the name subscribed (RFC 9051 §6.3.9):
   L{twisted_mailhub.store.base.renamed_subscriptions}, applied by every
   store.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4

from twisted_mailhub.errorwords import error_words, no_room, not_writable_words, out_of_space_code, out_of_space_words
from twisted_mailhub.imap.condstore import has_modseqs
from twisted_mailhub.imap.listing import SPECIAL_USE  # noqa: F401 (imap/__init__ makes them)
from twisted_mailhub.imap.settling import settled_folder, when_settled
from twisted_mailhub.imap.wire import arg_astring, arg_finalastring, client_text, decode_name, mailbox_name, opt_nested_list, shown, wire_name
from twisted_mailhub.store.base import DELIMITER, normalize_folder_name, renamed_subscriptions
from twisted_mailhub.store.watch import ChangeSignal, account_paths, change_signal, folder_paths
from twisted_mailhub.store.interfaces import (
    DELETED,
    INBOX,
    SEEN,
    BadFolderName,
    FolderExists,
    NoSuchFolder,
    StoreError,
    StoreUnavailable,
    is_not_writable,
    is_out_of_space,
)

log = Logger()


def _folder_entry(name: bytes) -> bool:
    """Is this entry of a Maildir++ account's directory a folder (C{.Name})?"""
    return name.startswith(b".")

# STATUS items (RFC 3501 §6.3.10; SIZE RFC 8438, DELETED RFC 9051, HIGHESTMODSEQ RFC 7162)
STATUS_ITEMS = (b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"SIZE", b"DELETED", b"HIGHESTMODSEQ")


def _named(error: Exception) -> bytes:
    """
    A store error's text, which names a folder, as the client spells the
    name (modified UTF-7, RFC 3501 §5.1.3): "été", not "???".
    """
    return client_text(str(error).encode("imap4-utf-7").decode("ascii"))


class MailboxCommands:
    """Mailbox commands, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def _store(self):
        if self.store_account is None:
            self.store_account = self.account.store_account
        return self.store_account

    def _when_durable(self, tag: bytes, answer: Any) -> None:
        """
        Call C{answer()} (which sends the tagged OK) once the store says
        the change is on disk (C{durable()}, where the store has one); a
        failure is a C{NO} as any store error. Input is held meanwhile,
        so the next command sees the change.
        """
        durable = getattr(self._store(), "durable", None)
        if durable is None:
            answer()
            return
        self._hold_input()
        d = durable()

        def failed(reason):
            self._folder_error(tag, reason.value)

        d.addCallbacks(lambda _: answer(), failed)
        d.addErrback(lambda f: log.failure("IMAP reply after a durable folder change failed", f))
        d.addBoth(lambda _: self._release_input())

    # -- folders ------------------------------------------------------------------

    def _folder_error(self, tag: bytes, error: Exception) -> None:
        if isinstance(error, NoSuchFolder):
            self.sendNegativeResponse(tag, b"[NONEXISTENT] no such mailbox: " + _named(error))
        elif isinstance(error, FolderExists):
            self.sendNegativeResponse(tag, b"[ALREADYEXISTS] mailbox exists: " + _named(error))
        elif isinstance(error, imap4.IllegalMailboxEncoding):
            self.sendNegativeResponse(tag, b"[CANNOT] mailbox names are modified UTF-7 (RFC 3501 section 5.1.3)")
        elif isinstance(error, BadFolderName):
            text = str(error)
            if text.startswith("bad folder name"):
                # The store quotes the name as Python would: say the rule.
                text = "bad mailbox name: no empty, '.' or '..' parts, no leading '.' or '/', no control characters"
            self.sendNegativeResponse(tag, b"[CANNOT] " + client_text(text))
        elif isinstance(error, StoreUnavailable):
            self._store_unavailable(tag, getattr(self, "_command", b"") or b"command", error)
        elif is_not_writable(error):
            log.warn("IMAP folder operation refused: {why}", why=error_words(error))
            self.sendNegativeResponse(tag, b"[NOPERM] " + not_writable_words(error))
        elif is_out_of_space(error):
            # Opening a folder the first time writes its UID list: a full
            # disk is a temporary condition (RFC 5530 §3), one log line.
            log.warn("IMAP folder not opened: {why}", why=no_room(error))
            self.sendNegativeResponse(tag, b"[UNAVAILABLE] " + out_of_space_words(error))
        else:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "the store failed"
            self.sendNegativeResponse(tag, b"[SERVERBUG] " + client_text(reason))
            log.error("IMAP folder operation failed: {error}", error=error_words(error))

    def _folder(self, raw: bytes, settled: bool = False):
        """The folder named C{raw}; with C{settled}, raises L{Settling} while its UID list is not durable (imap/settling.py)."""
        folder = self._store().folder(self.name_from_wire(raw))
        return settled_folder(folder) if settled else folder

    def _target_folder(self, tag: bytes, name: bytes):
        """The folder APPEND/COPY/MOVE write to, or None once told why not."""
        try:
            return self._folder(name)
        except NoSuchFolder:
            # RFC 3501 §6.3.11: TRYCREATE tells the client to CREATE and retry.
            self.sendNegativeResponse(tag, b"[TRYCREATE] no such mailbox: create it first")
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            if is_out_of_space(e):
                # RFC 5530 §3, as APPEND answers a full disk once the folder is open.
                log.warn("IMAP write not done: {why}", why=no_room(e))
                self.sendNegativeResponse(tag, out_of_space_code(e) + b" " + out_of_space_words(e) + b"; nothing stored")
            else:
                self._folder_error(tag, e)
        return None

    @when_settled
    def do_SELECT(self, tag, name, params=None, readonly=0, command=b"SELECT"):
        try:
            condstore, qresync = self.select_parameters(params)
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        if self.selected is not None:
            self._unselect()
            # RFC 7162 §7: the old mailbox is closed before the new one's
            # responses, so a client knows which they belong to.
            self.sendUntaggedResponse(b"OK [CLOSED] previous mailbox closed")
        opener = getattr(self._store(), "select_later", None)
        if opener is not None:
            # PostgreSQL: the folder's rows are read in a worker thread
            # (PostgresAccount.select_later); the session reads no further
            # command meanwhile, other sessions are served.
            try:
                d = opener(self.name_from_wire(name), bool(readonly))
            except imap4.IllegalMailboxEncoding as e:
                self._folder_error(tag, e)
                return
            self._hold_input()

            def opened(got) -> None:
                folder, values = got
                try:
                    view = self.view_class()(self, folder, bool(readonly), values)  # imap/rev2.py
                except StoreError as e:
                    self._folder_error(tag, e)
                    return
                self._selected_now(tag, folder, view, readonly, command, condstore, qresync, values)

            def failed(reason) -> None:
                if self.transport is not None:
                    self._folder_error(tag, reason.value)

            d.addCallbacks(opened, failed)
            d.addErrback(lambda f: log.failure("IMAP {command} reply failed", f, command=command))
            d.addBoth(lambda _: self._release_input())
            return
        try:
            folder = self._folder(name, settled=True)
            view = self.view_class()(self, folder, bool(readonly))  # imap/rev2.py
        except (StoreError, imap4.IllegalMailboxEncoding) as e:
            self._folder_error(tag, e)
            return
        except OSError as e:
            self._folder_error(tag, e)
            return
        self._selected_now(tag, folder, view, readonly, command, condstore, qresync)

    def _selected_now(self, tag, folder, view, readonly, command, condstore, qresync, opened=None) -> None:
        """SELECT's (EXAMINE's) responses and tagged OK for C{view}, now made; C{opened}: its values read in a thread (else asked of the folder)."""
        if self.transport is None:
            view.close()
            return
        first_unseen = view.first_unseen
        lines = view.flag_lines() + [
            b"* %d EXISTS\r\n" % len(view.uids),
        ]
        if not self.rev2:
            lines.append(b"* %d RECENT\r\n" % len(view.recent))  # none in IMAP4rev2
        if first_unseen:
            lines.append(b"* OK [UNSEEN %d] first unseen\r\n" % first_unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uid_validity)
        lines.append(b"* OK [UIDNEXT %d] predicted next UID\r\n" % (opened.uid_next if opened is not None else folder.uid_next))
        if self.rev2:
            # RFC 9051 §6.3.2: SELECT/EXAMINE MUST return a LIST response
            # with the mailbox name (its attributes MAY be left out).
            lines.append(b'* LIST () "' + DELIMITER.encode() + b'" ' + self.name_to_wire(folder.name) + b"\r\n")
        if has_modseqs(folder):
            lines.append(b"* OK [HIGHESTMODSEQ %d] modseqs are kept\r\n" % (opened.highest_modseq if opened is not None else folder.highest_modseq))
            if condstore:
                self.condstore_used()
            if qresync is not None:
                lines.extend(self.qresync_lines(view, qresync))
        self.write_lines(lines)
        self.selected = view
        if self.notifier is not None:
            self.notifier.selection_changed()
        self.state = "select"
        self.sendPositiveResponse(tag, (b"[READ-ONLY] " if readonly else b"[READ-WRITE] ") + command + b" completed")

    auth_SELECT = select_SELECT = (do_SELECT, arg_astring, opt_nested_list, 0, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (do_SELECT, arg_astring, opt_nested_list, 1, b"EXAMINE")

    def _idle_check(self) -> None:
        try:
            self.selected.poll()
        except NoSuchFolder:
            if self._idle_poll is not None and self._idle_poll.running:
                self._idle_poll.stop()
            self._selected_folder_gone()

    def _selected_folder_gone(self) -> None:
        """
        Another session (or someone on the server) deleted or renamed the
        selected folder. Its message numbers mean nothing any more and
        RFC 3501 has no way to say so mid-session, so, like Dovecot, say
        why and disconnect; the client reconnects and sees the new list.
        """
        name = self.selected.folder.name if self.selected is not None else ""
        self._unselect()
        self.sendUntaggedResponse(b"BYE [UNAVAILABLE] selected mailbox " + name.encode("utf-8", "replace") + b" was deleted or renamed; reconnect")
        self.transport.loseConnection()

    def _unselect(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None
            if self.state == "select":
                self.state = "auth"
            if self.notifier is not None:
                self.notifier.selection_changed()

    def idle_signal(self, interval: float) -> Any:
        """
        While IDLE: what tells of changes to the selected folder made
        outside this process, at once (inotify on its C{new/} and C{cur/},
        and on the account's directory for a rename or delete of it; the
        store's own push on PostgreSQL and memory), or by a look every
        C{interval} seconds where the store has no such signal
        (L{twisted_mailhub.store.watch}).
        """
        folder = self.selected.folder
        paths = folder_paths(folder)
        if not paths:
            # PostgreSQL, memory: the store pushes (or polls where it must)
            return change_signal(self.hub.reactor, folder, paths, self._idle_check, interval)
        return ChangeSignal(self.hub.reactor, paths, self._idle_check, interval, more=(account_paths(self._store()), _folder_entry))

    def do_UNSELECT(self, tag):
        self._unselect()
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = (do_UNSELECT,)


    def do_CREATE(self, tag, name):
        try:
            given = self.name_from_wire(name)
            folder_name = given.rstrip(DELIMITER)
            if folder_name == INBOX:
                raise FolderExists(INBOX)
            created = self._store().create_folder(folder_name).name
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return

        def answer():
            if self.rev2 and created != given:
                # RFC 9051 §6.3.4: the name was canonicalised (a trailing
                # delimiter dropped, inbox/ made INBOX/): say which name the
                # mailbox has, with the one given as OLDNAME.
                self.sendUntaggedResponse(self.oldname_list(created, given))
            self.sendPositiveResponse(tag, b"CREATE completed")

        self._when_durable(tag, answer)

    def oldname_list(self, name: str, old: str) -> bytes:
        """C{LIST () "/" name ("OLDNAME" (old))}: RFC 9051 §7.3.1 (and RFC 5465 §5.4 for NOTIFY)."""
        return b'LIST () "' + DELIMITER.encode() + b'" ' + self.name_to_wire(name) + b' ("OLDNAME" (' + self.name_to_wire(old) + b"))"

    def _has_children(self, name: str) -> bool:
        prefix = name + DELIMITER
        try:
            return any(other.startswith(prefix) for other in self._store().folders())
        except (StoreError, OSError):
            return False

    auth_CREATE = select_CREATE = (do_CREATE, arg_finalastring)

    def do_DELETE(self, tag, name):
        try:
            folder_name = self.name_from_wire(name)
            if folder_name == INBOX:
                raise BadFolderName("INBOX cannot be deleted")
            if self.selected is not None and self.selected.folder.name == folder_name:
                self._unselect()
            self._store().delete_folder(folder_name)
        except NoSuchFolder as e:
            if self._has_children(self.name_from_wire(name).rstrip(DELIMITER)):
                # RFC 9051 §6.3.5 (RFC 3501 §6.3.4): a \Noselect name with
                # inferiors cannot be deleted; HASCHILDREN (RFC 9051 §7.1)
                # says why. A mailbox that has children is deleted and its
                # name stays as \Noselect (the alternative §6.3.5 allows).
                self.sendNegativeResponse(tag, b"[HASCHILDREN] " + client_text(self.name_from_wire(name)) + b" is no mailbox (\\Noselect), only the parent of others: delete those first")
                return
            self._folder_error(tag, e)
            return
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self._when_durable(tag, lambda: self.sendPositiveResponse(tag, b"DELETE completed"))

    auth_DELETE = select_DELETE = (do_DELETE, arg_finalastring)

    def do_RENAME(self, tag, old, new):
        try:
            old_name, new_name = self.name_from_wire(old), self.name_from_wire(new)
            if old_name == INBOX and new_name != INBOX:
                self._rename_inbox(tag, new_name)
                return
            if normalize_folder_name(new_name).startswith(normalize_folder_name(old_name) + DELIMITER):
                # Dovecot: "Can't rename mailbox under its own child".
                self.sendNegativeResponse(tag, b"[CANNOT] a mailbox cannot be renamed under itself")
                return
            store = self._store()
            moved = [n for n in store.folders() if n.startswith(old_name + DELIMITER)] if self.rev2 else []
            renaming = store.rename_folder(old_name, new_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return

        def answer():
            if self.rev2:
                # RFC 9051 §7.3.1: the new name with its old one as OLDNAME,
                # for the mailbox and each inferior that moved with it.
                self.sendUntaggedResponse(self.oldname_list(normalize_folder_name(new_name), normalize_folder_name(old_name)))
                for child in moved:
                    self.sendUntaggedResponse(self.oldname_list(normalize_folder_name(new_name) + child[len(old_name):], child))
            self.sendPositiveResponse(tag, b"RENAME completed")

        if not isinstance(renaming, defer.Deferred):
            self._when_durable(tag, answer)
            return
        # (a store whose RENAME first makes a record durable off the
        # reactor, store/maildir.py: the folders move after it)
        self._hold_input()

        def failed(reason):
            self._folder_error(tag, reason.value)

        renaming.addCallbacks(lambda _: self._when_durable(tag, answer), failed)
        renaming.addErrback(lambda f: log.failure("IMAP RENAME's reply failed", f))
        renaming.addBoth(lambda _: self._release_input())

    def _rename_inbox(self, tag: bytes, new_name: str) -> None:
        """
        RFC 3501 §6.3.5: renaming INBOX moves its messages to a new folder
        and leaves INBOX empty. The copies are durable before INBOX loses
        them.
        """
        store = self._store()
        destination = store.create_folder(new_name)
        inbox = store.folder(INBOX)
        uids = [info.uid for info in inbox.messages()]
        self._hold_input()
        d = getattr(inbox, "copy_for_move", inbox.copy_to)(uids, destination)  # (a move: no quota room needed)

        def copied(pairs):
            inbox.expunge([s for s, _ in pairs], origin=None)
            try:
                # INBOX stays subscribed; its messages' new folder is
                # subscribed when it is (renamed_subscriptions).
                for name in sorted(renamed_subscriptions(store.subscriptions(), INBOX, destination.name)[1]):
                    store.subscribe(name)
            except (StoreError, OSError) as e:
                log.warn("RENAME INBOX: {name} not subscribed ({error})", name=destination.name, error=error_words(e, paths=False))
            # (input is held until this answer: _when_durable holds it once more)
            self._when_durable(tag, lambda: self.sendPositiveResponse(tag, b"RENAME completed: INBOX's messages moved, INBOX is empty"))

        def failed(reason):
            log.failure("RENAME INBOX failed", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] RENAME failed; INBOX kept its messages")

        d.addCallbacks(copied, failed)
        d.addBoth(lambda _: self._release_input())

    auth_RENAME = select_RENAME = (do_RENAME, arg_astring, arg_finalastring)

    def do_SUBSCRIBE(self, tag, name, subscribe=1):
        try:
            folder_name = self.name_from_wire(name)
            if subscribe:
                self._store().subscribe(folder_name)
            else:
                self._store().unsubscribe(folder_name)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self._when_durable(tag, lambda: self.sendPositiveResponse(tag, b"SUBSCRIBE completed" if subscribe else b"UNSUBSCRIBE completed"))

    auth_SUBSCRIBE = select_SUBSCRIBE = (do_SUBSCRIBE, arg_finalastring, 1)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (do_SUBSCRIBE, arg_finalastring, 0)

    @when_settled
    def do_STATUS(self, tag, name, items):
        keys = [item.upper() if isinstance(item, bytes) else b"" for item in items]
        try:
            self.check_status_items(keys)
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        opener = getattr(self._store(), "select_later", None)
        if opener is not None:
            # PostgreSQL: the folder is read in a worker thread, as for
            # EXAMINE (nothing changes); the session's input waits.
            try:
                d = opener(self.name_from_wire(name), True)
            except (StoreError, imap4.IllegalMailboxEncoding) as e:
                self._folder_error(tag, e)
                return
            self._hold_input()

            def opened(got) -> None:
                try:
                    response = self.status_response(got[0], keys, got[1])
                except StoreError as e:
                    self._folder_error(tag, e)
                    return
                self.sendUntaggedResponse(response)
                self.sendPositiveResponse(tag, b"STATUS completed")

            def failed(reason) -> None:
                if self.transport is not None:
                    self._folder_error(tag, reason.value)

            d.addCallbacks(opened, failed)
            d.addErrback(lambda f: log.failure("IMAP STATUS reply failed", f))
            d.addBoth(lambda _: self._release_input())
            return
        try:
            response = self.status_response(self._folder(name, settled=True), keys)
        except (StoreError, imap4.IllegalMailboxEncoding, OSError) as e:
            self._folder_error(tag, e)
            return
        self.sendUntaggedResponse(response)
        self.sendPositiveResponse(tag, b"STATUS completed")

    def check_status_items(self, keys: list[bytes]) -> None:
        """
        Raises L{imap4.IllegalClientResponse} for a STATUS item this
        server does not know (RFC 3501 §6.3.10; SIZE: RFC 8438; DELETED:
        RFC 9051 §6.3.11).
        """
        for key in keys:
            if key not in STATUS_ITEMS or (key == b"RECENT" and self.rev2):
                known = [k.decode() for k in STATUS_ITEMS if not (k == b"RECENT" and self.rev2)]
                raise imap4.IllegalClientResponse("unknown STATUS item " + shown(key, 30) + ": use " + " ".join(known))

    def status_response(self, folder, keys: list[bytes], opened=None) -> bytes:
        """
        C{STATUS name (item value ...)} for STATUS and LIST-STATUS (RFC
        5819). C{opened}: what the store read in a worker thread
        (PostgreSQL's L{Opened<twisted_mailhub.store.postgresql.Opened>}:
        \\Recent, UIDNEXT, HIGHESTMODSEQ), else asked of the folder.
        """
        infos = folder.messages()
        out = []
        for key in keys:
            if key == b"MESSAGES":
                value = len(infos)
            elif key == b"RECENT" and not self.rev2:
                recent = set(opened.recent if opened is not None else folder.recent())
                if self.selected is not None and self.selected.folder is folder:
                    recent |= self.selected.recent
                    recent |= self.selected.recent_untold
                value = len(recent)
            elif key == b"UIDNEXT":
                value = opened.uid_next if opened is not None else folder.uid_next
            elif key == b"UIDVALIDITY":
                value = folder.uid_validity
            elif key == b"UNSEEN":
                value = sum(1 for i in infos if SEEN not in i.flags)
            elif key == b"SIZE":
                value = sum(i.size for i in infos)
            elif key == b"DELETED":
                value = sum(1 for i in infos if DELETED in i.flags)
            elif key == b"HIGHESTMODSEQ":
                if not has_modseqs(folder):
                    continue
                value = opened.highest_modseq if opened is not None else folder.highest_modseq
                self.condstore_used()
            else:
                continue
            out.append(key + b" %d" % value)
        return b"STATUS " + self.name_to_wire(folder.name) + b" (" + b" ".join(out) + b")"

    # -- names on the wire: modified UTF-7, or UTF-8 after ENABLE UTF8=ACCEPT ----------

    utf8_names = False

    def name_from_wire(self, raw: bytes | str) -> str:
        """A mailbox name from the wire (L{wire.mailbox_name})."""
        return mailbox_name(raw, self.utf8_names)

    def name_from_wire_pattern(self, raw: bytes) -> str:
        """A LIST reference or pattern (no name checks; may be empty)."""
        return decode_name(raw, self.utf8_names)

    def name_to_wire(self, name: str) -> bytes:
        return wire_name(name, self.utf8_names)

    auth_STATUS = select_STATUS = (do_STATUS, arg_astring, imap4.IMAP4Server.arg_plist)
