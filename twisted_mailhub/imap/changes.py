# -*- test-case-name: tests.test_e2e_imap -*-
"""
Commands that remove or copy messages of the selected folder (RFC 3501
§6.4.2, §6.4.3, §6.4.7, §6.4.8; MOVE RFC 6851; UIDPLUS RFC 4315): CLOSE,
EXPUNGE, UID EXPUNGE, COPY, MOVE, and the UID prefix.

Rules:

 - The tagged OK of EXPUNGE, CLOSE and MOVE promises the messages are gone:
   it waits for the folder's flush.
 - COPY answers once the copies are durable, with C{[COPYUID]}; MOVE sends
   the COPYUID as an untagged OK, then the EXPUNGEs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4

from twisted_mailhub.errorwords import error_words, no_room, not_writable_words, out_of_space_code, out_of_space_words
from twisted_mailhub.imap.condstore import uid_runs_text, uid_set_text
from twisted_mailhub.imap.wire import arg_finalastring, client_text, missing_argument, opt_rest
from twisted_mailhub.store.base import expunge_later
from twisted_mailhub.store.interfaces import NoSuchMessage, is_not_writable, is_out_of_space

log = Logger()


class ChangeCommands:
    """CLOSE, EXPUNGE, COPY, MOVE and UID, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def do_CLOSE(self, tag):
        view = self.selected
        if not view.readonly:
            deleted = _deleted(view)
            if deleted:

                def removed(_):
                    if self.selected is view:
                        self._unselect()
                    self._after_flush(view.folder, tag, b"CLOSE completed")

                # (the mailbox stays selected until the expunge is
                # committed: a failure leaves it selected, as before CLOSE)
                return self._in_store_command(expunge_later(view.folder, deleted, origin=self), removed, tag, b"CLOSE")
        self._unselect()
        self.sendPositiveResponse(tag, b"CLOSE completed")

    select_CLOSE = (do_CLOSE,)

    def _expunge(self, uids: list[int], tag: bytes, command: bytes, then) -> defer.Deferred:
        """
        Expunge C{uids} of the selected mailbox (PostgreSQL: in a worker
        thread, store.base.expunge_later); once committed, send their
        EXPUNGE (or VANISHED) responses and call C{then()}, which answers
        C{tag} (and may return a L{Deferred} to wait for). A failure
        answers it NO (NO [UNAVAILABLE] for a lost database). Input waits
        meanwhile; the L{Deferred} returned fires when it is answered.
        """
        view = self.selected

        def removed(gone: list[int]) -> None:
            if self.transport is None or self.selected is not view:
                return
            self.write_lines(self._expunged_lines(view, gone))
            return then()

        return self._in_store_command(expunge_later(view.folder, uids, origin=self), removed, tag, command)

    def _expunged_lines(self, view, gone: list[int]) -> list[bytes]:
        """The EXPUNGE responses (VANISHED with QRESYNC) of UIDs C{gone}, each dropped from C{view}."""
        if self.qresync:
            # RFC 7162 §3.2.10: VANISHED instead of EXPUNGE.
            told = [u for u in gone if view.forget(u)]
            return [b"* VANISHED " + uid_set_text(told) + b"\r\n"] if told else []
        return [b"* %d EXPUNGE\r\n" % view.forget(u) for u in gone if view.seq_of(u)]

    def do_EXPUNGE(self, tag, messages=None, uid=0):
        view = self.selected
        if view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] mailbox was opened with EXAMINE")
            return
        marked = _deleted(view)
        if messages is not None:
            chosen = {u for _, u in view.resolve(messages, True)}
            deleted = [u for u in marked if u in chosen]
        else:
            deleted = marked
        if not deleted:
            return self.sendPositiveResponse(tag, b"EXPUNGE completed")
        self._expunge(deleted, tag, b"EXPUNGE", lambda: self._after_flush(view.folder, tag, b"EXPUNGE completed"))

    def _after_flush(self, folder, tag, text: bytes) -> None:
        """
        Answer C{tag} once the folder's removals are on disk: the OK of
        EXPUNGE, CLOSE or MOVE promises the messages are gone. Input waits
        meanwhile, so replies stay in order.
        """
        self._hold_input()
        d = defer.maybeDeferred(folder.flush)

        def failed(reason):
            log.failure("could not make an expunge durable", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] removal may not have reached the disk")

        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, text), failed)
        d.addBoth(lambda _: self._release_input())

    select_EXPUNGE = (do_EXPUNGE,)

    def do_COPY(self, tag, messages, name, uid=0, move=False):
        view = self.selected
        command = b"MOVE" if move else b"COPY"
        if move and view.readonly:
            self.sendNegativeResponse(tag, b"[READ-ONLY] mailbox was opened with EXAMINE")
            return
        try:
            targets = view.resolve(messages, bool(uid))
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        destination = self._target_folder(tag, name)
        if destination is None:
            return
        uids = [u for _, u in targets]
        self._hold_input()
        copy = getattr(view.folder, "copy_for_move", view.folder.copy_to) if move else view.folder.copy_to
        d = copy(uids, destination)

        def copied(pairs):
            code = b""
            if pairs:
                code = b"[COPYUID %d %s %s] " % (
                    destination.uid_validity,
                    uid_runs_text(s for s, _ in pairs),
                    uid_runs_text(n for _, n in pairs),
                )
            if move and uids and not pairs:
                # Every one was moved or expunged by another session
                # meanwhile (RFC 5530 §3; Dovecot answers the same): its
                # EXPUNGE responses come before this.
                self.sendNegativeResponse(tag, b"[EXPUNGEISSUED] MOVE failed: the messages were moved or expunged by another session meanwhile")
                return
            if move:
                if code:
                    # resp-text needs text after the code (RFC 3501 §9).
                    self.sendUntaggedResponse(b"OK " + code + b"moved")
                return self._expunge(
                    [s for s, _ in pairs], tag, b"MOVE",
                    lambda: view.folder.flush().addCallbacks(
                        lambda _: self.sendPositiveResponse(tag, b"MOVE completed"),
                        lambda _: self.sendNegativeResponse(tag, b"[SERVERBUG] removal may not have reached the disk"),
                    ),
                )
            else:
                self.sendPositiveResponse(tag, code + b"COPY completed")

        def failed(reason):
            if is_out_of_space(reason.value):
                # RFC 5530 §3; the store took back the copies it had made.
                log.warn("{command} not done: {why}", command=command.decode(), why=no_room(reason.value))
                self.sendNegativeResponse(tag, out_of_space_code(reason.value) + b" " + command + b" failed: " + out_of_space_words(reason.value) + b"; nothing was copied")
                return
            if is_not_writable(reason.value):
                log.warn("{command} not done: {why}", command=command.decode(), why=error_words(reason.value))
                self.sendNegativeResponse(tag, b"[NOPERM] " + command + b" failed: " + not_writable_words(reason.value))
                return
            log.failure("{command} failed", reason, command=command.decode())
            self.sendNegativeResponse(tag, b"[SERVERBUG] " + command + b" failed; nothing was removed")

        d.addCallbacks(copied, failed)
        d.addBoth(lambda _: self._release_input())

    select_COPY = (do_COPY, imap4.IMAP4Server.arg_seqset, arg_finalastring)

    def do_MOVE(self, tag, messages, name, uid=0):
        self.do_COPY(tag, messages, name, uid, move=True)

    select_MOVE = (do_MOVE, imap4.IMAP4Server.arg_seqset, arg_finalastring)

    def do_UID(self, tag, command, line):
        command = command.upper()
        if command not in (b"FETCH", b"SEARCH", b"STORE", b"COPY", b"MOVE", b"EXPUNGE", b"SORT", b"THREAD"):
            self.sendBadResponse(tag, b"UID wants FETCH, SEARCH, STORE, COPY, MOVE, EXPUNGE, SORT or THREAD")
            return
        if command == b"EXPUNGE":
            if not line:
                self.sendBadResponse(tag, missing_argument("UID EXPUNGE", 0).encode())
                return
            try:
                messages, rest = self.arg_seqset(line)
            except imap4.IllegalClientResponse as e:
                self.sendBadResponse(tag, b"UID EXPUNGE wants a UID set: " + client_text(str(e)))
                return
            self.do_EXPUNGE(tag, messages, uid=1)
            return
        # "UID FETCH" alone: FETCH's parsers name what is missing, and
        # (while they run, at once) know it came after UID.
        self._uid_command = True
        try:
            self.dispatchCommand(tag, command, line or None, uid=1)
        finally:
            self._uid_command = False

    select_UID = (do_UID, imap4.IMAP4Server.arg_atom, opt_rest)


def _deleted(view: Any) -> list[int]:
    """The UIDs of the view (those the client was told of) flagged \\Deleted, ascending."""
    marked = getattr(view.folder, "deleted_uids", None)
    if marked is not None:
        # From the store's flag column (Maildir): no MessageInfo per message.
        return [u for u in marked() if view.seq_of(u)]
    return [u for u in view.uids if "\\Deleted" in _flags_or_empty(view.folder, u)]


def _flags_or_empty(folder: Any, uid: int) -> frozenset:
    try:
        return folder.info(uid).flags
    except NoSuchMessage:
        return frozenset()
