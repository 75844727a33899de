# -*- test-case-name: tests.test_e2e_imap_append -*-
"""
APPEND (RFC 3501 §6.3.11) with everything that extends it: UIDPLUS's
APPENDUID (RFC 4315), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469), binary
literals (literal8 C{~{n}}, RFC 3516 §4.4) and the UTF8 data item (RFC
6855 §4).

Grammar (RFC 4466 §2.1, with the extensions above)::

    APPEND mailbox 1*( [flag-list] [date-time]
                       ( literal / literal8
                       / CATENATE (1*( URL url / TEXT literal ))
                       / UTF8 (literal8) ) )

Rules:

 - All or nothing (RFC 3502 §3): every message is parsed, and every
   CATENATE URL resolved, before any is stored; then all are written
   together and the tagged OK comes only once every one is durable.
   On a Maildir the set is one group of the group commit
   (C{MaildirFolder.append_many}): no message is renamed into C{cur/},
   indexed or told to a listener unless all were written and flushed,
   so another session (of this process or another) never sees a part
   of a set that failed. Elsewhere (memory, PostgreSQL), and if a
   rename itself fails, those already stored are expunged again and the
   reply is NO.
 - Quotas: the sum of the messages is checked against the account's
   quota before anything is written, so a MULTIAPPEND that would not fit
   stores nothing (C{NO [OVERQUOTA]}).
 - C{OK [APPENDUID uidvalidity uid-set]}: one uid-set for all the
   messages, in the order they were sent.
 - Sizes: every literal is checked against C{--max-message-size} before
   its first octet is read (the server's literal check); a message put
   together by CATENATE that passes it is C{NO [TOOBIG]}.
 - CATENATE: a TEXT part is taken as sent; a URL part is an IMAP URL of
   one of the user's own messages (L{twisted_mailhub.imap.urls}), else
   C{NO [BADURL url]}. A URL's section of a message costly to take apart
   is cut out in a parsing thread; the command's input is held meanwhile.
 - Binary: a literal8 may hold any octet but NUL is refused, as RFC 3516
   §4.4 allows a store that cannot keep binary content to do, with
   C{NO [UNKNOWN-CTE]}; other 8-bit content is stored as sent. A NUL
   in an ordinary literal is a syntax error (BAD).
 - An empty message (C{{0}}, or a CATENATE that adds up to no octets)
   is refused with C{NO}, as Dovecot refuses it ("Can't save a zero
   byte message"); in a MULTIAPPEND that refuses the whole command.
 - UTF8 (RFC 6855 §4): C{UTF8 (~{n})} only after ENABLE UTF8=ACCEPT
   (else BAD); the message is stored as sent.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.mail import imap4

from twisted_mailhub.errorwords import error_words, no_room, not_writable_words, out_of_space_code, out_of_space_words
from twisted_mailhub.imap.arguments import Atom, String, arg_everything
from twisted_mailhub.imap.condstore import uid_set_text
from twisted_mailhub.imap.urls import BadURL, read_url
from twisted_mailhub.imap.wire import client_flags, client_text, parse_internal_date, shown
from twisted_mailhub.store.interfaces import StoreUnavailable, is_not_writable, is_out_of_space
from twisted_mailhub.store.maildir import crlf

log = Logger()


class AppendMessage:
    """One message of an APPEND: C{flags} (str), C{date} (seconds or None) and C{data} (bytes) or C{parts} (CATENATE's ("URL"|"TEXT", bytes))."""

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.date: float | None = None
        self.data: bytes | None = None
        self.parts: list[tuple[str, bytes]] = []
        self.binary = False


def parse_append(tree: list, utf8_enabled: bool) -> tuple[bytes, list[AppendMessage]]:
    """
    (mailbox as sent, messages) from L{arg_everything}'s tree of an
    APPEND. Raises L{imap4.IllegalClientResponse}.
    """
    if not tree or not isinstance(tree[0], bytes):
        raise imap4.IllegalClientResponse("APPEND wants a mailbox name, then a message as a literal")
    mailbox = bytes(tree[0])
    messages: list[AppendMessage] = []
    i = 1
    while i < len(tree):
        message = AppendMessage()
        if isinstance(tree[i], list):
            for flag in tree[i]:
                if not isinstance(flag, Atom):
                    raise imap4.IllegalClientResponse("APPEND's flags are atoms, e.g. (\\Seen $Forwarded)")
            message.flags = client_flags([bytes(flag) for flag in tree[i]], "APPEND")
            i += 1
        if i < len(tree) and isinstance(tree[i], String) and not tree[i].literal:
            message.date = parse_internal_date(bytes(tree[i]))
            i += 1
        if i >= len(tree):
            raise imap4.IllegalClientResponse("APPEND: a message (a literal) must follow its flags and date")
        item = tree[i]
        if isinstance(item, String) and item.literal:
            message.data = bytes(item)
            message.binary = item.literal8
            i += 1
        elif isinstance(item, Atom) and item.upper() == b"CATENATE":
            if i + 1 >= len(tree) or not isinstance(tree[i + 1], list) or not tree[i + 1]:
                raise imap4.IllegalClientResponse("CATENATE wants a list of parts, e.g. CATENATE (URL \"/INBOX/;UID=1\" TEXT {5})")
            message.parts = _catenate_parts(tree[i + 1])
            message.binary = any(getattr(v, "literal8", False) for _, v in message.parts)
            i += 2
        elif isinstance(item, Atom) and item.upper() == b"UTF8":
            if not utf8_enabled:
                raise imap4.IllegalClientResponse("the UTF8 data item needs ENABLE UTF8=ACCEPT first (RFC 6855 section 4)")
            given = tree[i + 1] if i + 1 < len(tree) else None
            if not isinstance(given, list) or len(given) != 1 or not isinstance(given[0], String) or not given[0].literal8:
                raise imap4.IllegalClientResponse("UTF8 wants one literal8 in parentheses: UTF8 (~{n})")
            message.data = bytes(given[0])
            i += 2
        else:
            raise imap4.IllegalClientResponse("APPEND: expected a message literal {n}, ~{n}, CATENATE or UTF8 at " + shown(bytes(item) if isinstance(item, bytes) else b"(...)", 30))
        messages.append(message)
    if not messages:
        raise imap4.IllegalClientResponse("APPEND wants a message as a literal after the mailbox name")
    return mailbox, messages


def _catenate_parts(items: list) -> list[tuple[str, bytes]]:
    parts = []
    if len(items) % 2:
        raise imap4.IllegalClientResponse("CATENATE parts come in pairs: URL url or TEXT literal")
    for kind, value in zip(items[::2], items[1::2]):
        name = kind.upper() if isinstance(kind, Atom) else b""
        if name == b"URL" and isinstance(value, bytes):
            parts.append(("URL", value))
        elif name == b"TEXT" and isinstance(value, String) and value.literal:
            parts.append(("TEXT", value))
        else:
            raise imap4.IllegalClientResponse("CATENATE parts are URL url or TEXT literal")
    return parts


class AppendCommands:
    """APPEND, mixed into L{twisted_mailhub.imap.server.IMAPServer}."""

    def do_APPEND(self, tag, tree):
        try:
            name, messages = parse_append(tree, self.utf8_names)
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, client_text(str(e)))
            return
        folder = self._target_folder(tag, name)
        if folder is None:
            return
        wholes: list = []  # each message's octets, or its pieces (octets or Deferreds)
        waits = []
        for message in messages:
            if not message.parts:
                wholes.append(message.data)
                continue
            pieces: list = []
            for kind, value in message.parts:
                if kind == "TEXT":
                    pieces.append(bytes(value))
                    continue
                try:
                    piece = read_url(self, bytes(value))
                except BadURL as e:
                    self._bad_url(tag, e)
                    return
                if isinstance(piece, defer.Deferred):
                    # (a section of a costly message, cut out in a parsing thread)
                    piece.addCallback(_put, pieces, len(pieces))
                    waits.append(piece)
                pieces.append(piece)
            wholes.append(pieces)
        if not waits:
            self._append_datas(tag, folder, messages, [w if isinstance(w, bytes) else b"".join(w) for w in wholes])
            return
        # The next command is read once this one is answered (in order).
        self._hold_input()
        d = defer.gatherResults(waits, consumeErrors=True)

        def assembled(_):
            self._append_datas(tag, folder, messages, [w if isinstance(w, bytes) else b"".join(w) for w in wholes])

        def failed(reason):
            error = reason.value.subFailure.value if isinstance(reason.value, defer.FirstError) else reason.value
            if isinstance(error, BadURL):
                self._bad_url(tag, error)
                return
            if isinstance(error, StoreUnavailable):
                self._store_unavailable(tag, b"APPEND", error)
                return
            log.failure("APPEND: a CATENATE URL could not be read", reason)
            self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed: a URL's section could not be read; nothing appended")

        d.addCallbacks(assembled, failed)
        d.addErrback(lambda reason: (log.failure("APPEND failed", reason), self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed; nothing appended")))
        d.addBoth(lambda _: self._release_input())

    def _bad_url(self, tag: bytes, e: BadURL) -> None:
        self.sendNegativeResponse(tag, b"[BADURL " + _url_text(e.url) + b"] " + client_text(e.why) + b"; nothing appended")

    def _append_datas(self, tag: bytes, folder: Any, messages: list, wholes: list[bytes]) -> None:
        """The checks (binary, empty, size, quota), then the write of C{messages}, whose octets are C{wholes}."""
        datas = []
        for message, data in zip(messages, wholes):
            if message.binary and b"\0" in data:
                self.sendNegativeResponse(tag, b"[UNKNOWN-CTE] binary content with NUL octets cannot be stored here: send it base64-encoded; nothing appended")
                return
            if not data:
                # Dovecot: "NO Can't save a zero byte message". An empty
                # message has no header (RFC 5322 §3.6 wants From and
                # Date); nothing could read it back as mail.
                self.sendNegativeResponse(tag, b"empty message (0 octets) not stored" + (b"; nothing appended" if len(messages) > 1 else b""))
                return
            if len(data) > self.hub.max_message_size:
                self.sendNegativeResponse(tag, b"[TOOBIG] message of %d octets is over the limit of %d; nothing appended" % (len(data), self.hub.max_message_size))
                return
            datas.append(crlf(data))
        quotas = getattr(self.hub, "quotas", None)
        address = getattr(self.account, "address", None)
        if quotas is not None and address is not None and len(datas) > 1:
            try:
                quotas.check(address, sum(len(d) for d in datas))
            except Exception as e:
                if is_out_of_space(e):
                    self.sendNegativeResponse(tag, out_of_space_code(e) + b" APPEND failed: " + out_of_space_words(e) + b"; nothing appended")
                    return
                raise
        # Replies stay in command order: the next command is read once
        # these messages are on disk.
        self._hold_input()
        if len(datas) > 1 and hasattr(folder, "append_many"):
            # Written as one group: visible to others all at once or not at all.
            d = defer.maybeDeferred(folder.append_many, [(data, message.flags, message.date) for data, message in zip(datas, messages)])
        else:
            writes = [defer.maybeDeferred(folder.append, data, message.flags, message.date) for data, message in zip(datas, messages)]
            d = defer.DeferredList(writes, consumeErrors=True)
        d.addCallback(self._appended, tag, folder)
        d.addErrback(lambda reason: (log.failure("APPEND failed", reason), self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed")))
        d.addBoth(lambda _: self._release_input())

    def _appended(self, results: list, tag: bytes, folder: Any) -> None:
        uids = [value for ok, value in results if ok]
        failures = [value for ok, value in results if not ok]
        if not failures:
            self.sendPositiveResponse(tag, b"[APPENDUID %d %s] APPEND completed" % (folder.uid_validity, uid_set_text(uids) if len(uids) > 1 else b"%d" % uids[0]))
            return
        if uids:
            # All or nothing (RFC 3502 §3): take back what was stored.
            try:
                folder.expunge(uids, origin=None)
            except Exception:
                log.failure("APPEND: taking back {count} stored messages failed", count=len(uids))
        reason = failures[0]
        if is_out_of_space(reason.value):
            # RFC 9051 §7.1: OVERQUOTA for the account's quota, UNAVAILABLE
            # for a full disk (the server's, as CREATE and SELECT say it).
            log.warn("APPEND not stored: {why}", why=no_room(reason.value))
            self.sendNegativeResponse(tag, out_of_space_code(reason.value) + b" APPEND failed: " + out_of_space_words(reason.value) + (b"; message not stored" if len(results) == 1 else b"; nothing appended"))
            return
        if is_not_writable(reason.value):
            # RFC 5530 §3: NOPERM, retrying will not help.
            log.warn("APPEND not stored: {why}", why=error_words(reason.value))
            self.sendNegativeResponse(tag, b"[NOPERM] APPEND failed: " + not_writable_words(reason.value))
            return
        if isinstance(reason.value, StoreUnavailable):
            # RFC 5530 §3: the store is down for now (pgstore lane).
            self.sendNegativeResponse(tag, b"[UNAVAILABLE] APPEND failed: the mail store cannot be reached now, " + (b"message not stored" if len(results) == 1 else b"nothing appended") + b"; try again")
            return
        log.failure("APPEND failed", reason)
        self.sendNegativeResponse(tag, b"[SERVERBUG] APPEND failed: message not stored" if len(results) == 1 else b"[SERVERBUG] APPEND failed: nothing appended")

    auth_APPEND = select_APPEND = (do_APPEND, arg_everything)


def _put(octets: bytes, pieces: list, index: int) -> None:
    """A URL's octets, read in a thread, in their place among a message's pieces."""
    pieces[index] = octets


def _url_text(url: bytes) -> bytes:
    """A URL as the BADURL code shows it (RFC 4469 §6: an astring-like atom), printable ASCII only."""
    text = bytes(c for c in url[:200] if 33 <= c < 127 and c not in b'[]"\\')
    return text or b'""'
