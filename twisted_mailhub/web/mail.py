# -*- test-case-name: tests.test_web_mail -*-
"""
Webmail and the message anatomy: HTTP as a third way into the same
mailboxes as IMAP and POP3 (the same store, so a flag set here is seen
there at once, and the other way round).

Pages (a folder name is one URL segment, percent-encoded):
 - C{/mail/FOLDER?page=N}: folder list with unread/total counts, and 50
   messages a page, newest first, unread in bold.
 - C{/mail/FOLDER/UID}: the message (text; HTML sanitized, remote images
   blocked until asked), its attachments; opening it sets C{\\Seen}.
 - C{/mail/FOLDER/UID/anatomy}: raw source with line numbers, header table
   (RFC 2047 raw and decoded), Received hops, envelope against header,
   MIME tree, each part raw beside decoded.
 - C{/mail/FOLDER/UID/part/N}: one part, decoded (attachments download
   with their decoded names, RFC 6266); C{.../raw}: the whole message.
 - C{POST /mail/FOLDER/UID/action}: move, delete (to Trash), flag.
 - C{/mail/FOLDER/state}: JSON the page polls, so new mail appears
   without a reload.
 - C{/compose}: compose, reply, reply-all, forward; sent through the
   same submission path as SMTP AUTH (relay rules, queue, Sent copy).

Every C{/mail/SEGMENT} is a folder, whatever its name: "compose",
"state", "a/b" (C{a%2Fb}), "100%", "why?", "#1", "été", "&" all have their
own address, and no page of the webmail's own is a word there (compose is
C{/compose}, outside). Below a folder, what follows is its UID (digits) or
"state", which no UID is. C{/mail/compose} of older links and pages still
reaches compose (a 307, which keeps a form's POST) unless the account has
a folder of that name: then it is that folder.
"""

from __future__ import annotations

import base64
import email.errors
import email.policy
import json
import math
import re
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any
from urllib.parse import quote, quote_plus

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.template import tags

from twisted_mailhub.errorwords import error_words
from twisted_mailhub.imap.search import BadSearch, heads_in_thread, search_messages_in_thread
from twisted_mailhub.store.base import expunge_later, set_flags_later
from twisted_mailhub.store.interfaces import FLAGGED, INBOX, SEEN, BadFolderName, FolderExists, NoSuchFolder, NoSuchMessage, StoreError, is_out_of_space
from twisted_mailhub.web import message as msgparse
from twisted_mailhub.web import offload
from twisted_mailhub.web.errors import Refused, refusal
from twisted_mailhub.web.pages import page_bytes, post_form, render_page
from twisted_mailhub.web.sanitize import html_text, sanitize_html
from twisted_mailhub.web.site import client_host, form_value, number_value, redirect, request_secure

log = Logger()

PAGE_SIZE = 50
TRASH = "Trash"
SENT = "Sent"
EMPTIED = ("Trash", "Junk")  # (the folders with an "Empty" button)
SAFE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
# What one page shows of a message of thousands of parts or lines (a few
# hundred KB anyone can send): the rest is a link to the whole source.
MAX_LISTED = 500  # attachments on the message page, rows of the MIME tree
MAX_PART_VIEWS = 100  # parts shown as sent beside decoded on the Anatomy page
# The raw source on the Anatomy page: a page of it at a time, each at most
# this many lines and octets, with a link to the next (?from=N); a page of
# 20,000 lines cost some 220 ms of CPU each view of a 46 MB message.
MAX_SOURCE = 1024 * 1024
MAX_SOURCE_LINES = 5000
# Lines of a big message's source, by its identity (counted once, not at
# every page of it: a count of 46 MB holds the GIL some 11 ms).
_line_counts: dict = {}
_LINE_COUNTS_KEPT = 256


# The compose page (outside /mail/, where every segment is a folder), and
# its address of older pages.
COMPOSE = "/compose"
OLD_COMPOSE = "compose"


def folders_durable(account: Any) -> defer.Deferred:
    """
    Fires once every folder change of C{account} made so far (a folder
    created, deleted, renamed) is on disk: the store's C{durable()} where
    it has one (Maildir: fsyncs off the reactor, L{store.smallfiles}), at
    once where it has none. Fails as C{durable()} does (an C{OSError}, or
    L{InsufficientStorage} for a full disk): the one error path answers it.
    """
    durable = getattr(account, "durable", None)
    return defer.maybeDeferred(durable) if durable is not None else defer.succeed(None)


def folder_url(name: str) -> str:
    return "/mail/" + quote(name, safe="")


def message_url(folder: str, uid: int) -> str:
    return f"{folder_url(folder)}/{uid}"


def _size(octets: int) -> str:
    if octets < 1024:
        return f"{octets} B"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.1f} KB"
    return f"{octets / 1024 / 1024:.1f} MB"


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _whole(text: str) -> bool:
    """
    Is C{text} a whole number in ASCII digits (a UID, a part, a page)?
    C{str.isdigit} alone is also true of "²", which C{int} refuses; and
    C{int} refuses more than 4,300 digits (CPython's limit): more than
    L{MAX_DIGITS} are no whole number here either.
    """
    return text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS


MAX_DIGITS = 12  # (a UID is at most 10: 2**32 - 1)


def _not_found(what: str = "No such message or folder.", back: str | None = None) -> Refused:
    """A 404 for the one error path (raise it)."""
    return Refused(404, what, back=back)


def _forbidden() -> Refused:
    """A form without its session's CSRF token: 403 (raise it)."""
    return Refused(403, FORM_EXPIRED)


FORM_EXPIRED = "The form had expired, or did not come from this site's page: nothing was changed. Reload the page and try again."
# (a browser cannot be given files back: a draft keeps its text only)
_NO_FILES = " Attach the files again: they could not be kept."


def _page_later(request: Any, session: Any, make: Any, *args: Any) -> defer.Deferred:
    """
    Parse and lay out a message's page in a parsing thread: C{make(*args)}
    returns (title, content, layout keywords); the reactor serves every
    other client meanwhile. Returns a Deferred of the page's bytes (for a
    resource to return: L{errors.settle} writes it, or answers a failure).
    """

    def make_page():
        title, content, kwargs = make(*args)
        return page_bytes(title, content, session, **kwargs)

    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    return offload.in_thread(make_page)


def _line_count(raw: bytes, identity: Any) -> int:
    """Lines of C{raw} (the last one counted without its line end), kept for a big message's C{identity} (in a parsing thread)."""
    key = (identity, len(raw)) if identity is not None and len(raw) >= msgparse.PARSE_CACHE_OVER else None
    if key is not None:
        count = _line_counts.get(key)
        if count is not None:
            return count
    count = raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1)
    if key is not None:
        if len(_line_counts) >= _LINE_COUNTS_KEPT:
            _line_counts.pop(next(iter(_line_counts)))
        _line_counts[key] = count
    return count


def _opaque_note(msg: Any, here: str) -> Any:
    """What a page says of a message it does not take apart (L{msgparse.opaque}), or ''."""
    if not msgparse.opaque(msg):
        return ""
    return tags.p(
        f"This message has more than {msgparse.MAX_PARTS:,} parts or parts nested more than {msgparse.MAX_NESTING} deep: "
        "it is not taken apart here. ", tags.a("The whole message", href=here + "/raw"), " has everything.", class_="error",
    )


# A header field line (RFC 5322 §2.2: a name of printable ASCII but ':',
# then ':'), and the field names a person types first in a message.
_FIELD_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_COMMON_FIELDS = frozenset(b"to from cc bcc subject date reply-to sender message-id".split())


def header_ended_early(raw: bytes) -> str | None:
    """
    The first line of message C{raw}'s body when it looks like a header
    field typed without its colon ("To bob@localhost"): its first word is a
    common field name and it holds an address, or a header field line
    ("Subject: hi") follows it before the next empty line. Such a line ended the header section (RFC
    5322 §2.2), and the server put the empty line before it (the hub as
    Postfix: L{twisted_mailhub.smtp.delivery.separate_body}). L{None} for
    any other message. Text, octets that are not UTF-8 as U+FFFD.
    """
    end = 0 if raw.startswith(b"\r\n") else raw.find(b"\r\n\r\n") + 2
    if end < 2 and not raw.startswith(b"\r\n"):
        return None
    body = raw[end + 2 :] if end else raw[2:]
    first, _, rest = body.partition(b"\r\n")
    if not first.strip() or _FIELD_LINE.match(first) or first[:1] in (b" ", b"\t"):
        return None
    word = first.split(None, 1)[0].lower()
    following = rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[:20]
    if (word.rstrip(b".;,") in _COMMON_FIELDS and b"@" in first) or any(_FIELD_LINE.match(line) for line in following):
        return first.decode("utf-8", "replace")
    return None


def _header_end_note(raw: bytes) -> Any:
    """What the Anatomy says of a header that ended early (L{header_ended_early}), or ''."""
    line = header_ended_early(raw)
    if line is None:
        return ""
    return tags.p(
        "The header ends before the line ", tags.code(msgparse.visible(line[:120])), ": it is no header field (a field is a name, a colon, "
        "then the value: RFC 5322 §2.2), so the header section ended there. The empty line that ends a header was missing before it, "
        "and the server that took the message put one there, as Postfix does, so that line and every line after it (header "
        "fields typed later, too) are the body.",
        class_="note",
    )


def _attached(msg: Any) -> list[Any]:
    """The attachments of a parsed message (L{msgparse.is_attachment}), at most L{MAX_LISTED}."""
    return [p for p in msgparse.parts(msg) if msgparse.is_attachment(p)][:MAX_LISTED]


def _attachments_of(raw: bytes) -> list[tuple[str, str, bytes]]:
    """
    The attachments of message C{raw} as (file name, content type, decoded
    bytes), for a forward (in a parsing thread). A text part's type keeps
    its charset (C{text/plain; charset=iso-8859-1}): without it the
    forwarded octets would be read as US-ASCII (RFC 2046 section 4.1.2).
    """
    found = []
    for n, p in enumerate(_attached(msgparse.parse(raw)), 1):
        kind = p.get_content_type()
        charset = p.get_content_charset() if kind.startswith("text/") else None
        if charset and _CHARSET_NAME.fullmatch(charset):
            kind += f"; charset={charset}"
        found.append((msgparse.filename(p) or f"part-{n}", kind, p.get_payload(decode=True) or b""))
    return found


_CHARSET_NAME = re.compile(r"[A-Za-z0-9!#$%&'+\-^_`{}~.]{1,40}")  # an RFC 2978 charset name: a token


def attachment_type(kind: str, data: bytes) -> tuple[str, str, dict[str, str]]:
    """
    (main type, subtype, parameters) for an attachment of content type
    C{kind} (C{text/plain}, or with a C{; charset=NAME} parameter) and
    octets C{data}. A text file a browser uploads comes with no charset
    (browsers send none), and a text part without one is US-ASCII (RFC
    2046 section 4.1.2): a text file that is UTF-8 and not ASCII is
    labelled C{charset=utf-8}, so that the recipient's mail program shows
    its letters, not mojibake; one in another charset, which the hub
    cannot tell, is left without.
    """
    kind, _, rest = (kind or "application/octet-stream").partition(";")
    maintype, _, subtype = kind.strip().lower().partition("/")
    params: dict[str, str] = {}
    charset = rest.strip().partition("=")[2].strip().strip('"') if rest.strip().lower().startswith("charset=") else ""
    if maintype == "text":
        if charset and _CHARSET_NAME.fullmatch(charset):
            params["charset"] = charset
        elif not data.isascii():
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                params["charset"] = "utf-8"
    return maintype or "application", subtype or "octet-stream", params


def quoted_of(msg: Any) -> str:
    """
    The text a reply quotes and a forward carries of parsed message
    C{msg}: its first text/plain part that is no attachment, else the plain
    text of its first text/html one (HTML-only mail: L{html_text}), else ''.
    """
    html_part = None
    for p in msgparse.parts(msg):
        if p.is_multipart() or msgparse.is_attachment(p):
            continue
        kind = p.get_content_type()
        if kind == "text/plain":
            return msgparse.text_of(p)
        if kind == "text/html" and html_part is None:
            html_part = p
    return html_text(msgparse.text_of(html_part)) if html_part is not None else ""


def _part_of(raw: bytes, index: int) -> tuple[Any, bytes] | None:
    """Part C{index} (in walk order) of a message and its decoded bytes; None for none or a multipart (in a parsing thread)."""
    all_parts = msgparse.parts(msgparse.parse(raw))
    if index >= len(all_parts) or all_parts[index].is_multipart():
        return None
    p = all_parts[index]
    return p, p.get_payload(decode=True) or b""


class Mail(resource.Resource):
    """C{/mail}: everything below needs a signed-in user; it sees only its own account."""

    def __init__(self, face: Any):
        resource.Resource.__init__(self)
        self.face = face

    def getChildWithDefault(self, path, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            return _Redirect("/login?next=" + quote(request.uri.decode("utf-8", "replace"), safe="/"))
        name = path.decode("utf-8", "replace")
        if name == "":
            return _Redirect(folder_url(INBOX))
        return FolderPages(self.face, session, name)

    def render(self, request):
        """
        C{/mail} itself (the navigation bar's "Mail" link, no trailing
        slash): the same as C{/mail/}, INBOX, or the login page first.
        """
        return self.getChildWithDefault(b"", request).render(request)


class _Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, location: str):
        resource.Resource.__init__(self)
        self.location = location

    def render(self, request):
        return redirect(request, self.location)


class FolderPages(resource.Resource):
    """One folder of the signed-in account, and its messages."""

    isLeaf = True

    def __init__(self, face: Any, session: Any, name: str):
        resource.Resource.__init__(self)
        self.face = face
        self.session = session
        self.name = name

    def _folder(self):
        account = self.session.user.mail()
        folder = account.folder(self.name)
        folder.refresh()
        return account, folder

    def _settling(self, shows: bool = True) -> defer.Deferred | None:
        """
        None when this page may show the account's folders and this one's
        UIDs now; else a Deferred that fires once it may (or fails with the
        store's error, for the one error path). Without C{shows} (a form's
        POST: its answer is a redirect, and each action waits for the
        store's C{durable()} before it changes anything) the folders are
        made and nothing is waited for here:

         - the first page of a session makes the special-use folders (Sent,
           Drafts, Trash, Junk, Archive) as an IMAP login does (a
           webmail-only user has the same folders, and Move something to
           offer), and, as an IMAP login, shows them only once they are
           durable (the store's C{durable()}, design rule 6);
         - a folder whose UID list was made again at this load (lost or
           damaged) is shown once the list is durable (its C{unsettled()},
           as IMAP SELECT waits: imap/settling.py): its UIDs are in every
           message's address.
        """
        account = self.session.user.mail()
        waits = []
        if not getattr(self.session, "folders_prepared", False):
            from twisted_mailhub.imap import prepare_account

            try:
                prepare_account(account)
            except (StoreError, OSError) as e:
                if not is_out_of_space(e):
                    raise  # (an outage is the page's 503, as any other call's)
                # A full disk: as an IMAP login (imap.install's avatar), the
                # page still works and lists what exists (the mail stays
                # readable); the folders are made at a later page.
                log.info("web: {user}: special-use folders not made now: {why}", user=self.session.user.address, why=error_words(e))
            else:
                durable = getattr(account, "durable", None)
                if durable is None:
                    self.session.folders_prepared = True
                elif shows:
                    waits.append(durable().addCallback(lambda _: setattr(self.session, "folders_prepared", True)))
        if not shows:
            return None
        try:
            folder = account.folder(self.name)
        except (NoSuchFolder, BadFolderName):
            folder = None  # (answered by the page itself)
        unsettled = getattr(folder, "unsettled", None)
        pending = unsettled() if unsettled is not None else None
        if pending is not None:
            waits.append(pending)
        if not waits:
            return None
        return defer.gatherResults(waits, consumeErrors=True)

    def render(self, request):
        if self.name == OLD_COMPOSE and not self._exists():
            # An address of older pages, bookmarks and scripts: compose is
            # /compose now; 307 keeps the method and body of a form's POST
            # (RFC 9110 §15.4.8).
            query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
            rest = "/".join(p.decode("utf-8", "replace") for p in request.postpath if p != b"")
            if not rest:
                return redirect(request, COMPOSE + ("?" + query if query else ""), code=307)
        if request.method == b"POST" and not self.face.csrf_ok(request):
            raise _forbidden()  # (before anything is made for the session)
        waiting = self._settling(request.method != b"POST")
        if waiting is not None:
            return waiting.addCallback(lambda _: resource.Resource.render(self, request))
        return resource.Resource.render(self, request)

    def _exists(self) -> bool:
        """Has the signed-in account a folder of this name? (a store that cannot be reached: raised)"""
        try:
            self.session.user.mail().folder(self.name)
        except (NoSuchFolder, BadFolderName):
            return False
        return True

    def render_GET(self, request):
        # (a store that cannot be reached, a full disk, a folder or message
        # that is not there: raised, and answered by the one error path)
        account, folder = self._folder()
        rest = [p.decode("utf-8", "replace") for p in request.postpath if p != b""]
        if not rest:
            return self.listing(request, account, folder)
        if rest == ["state"]:
            return self.state(request, folder)
        uid = self._uid(rest[0])
        info = folder.info(uid)
        what = rest[1:]
        if not what:
            return self.read(request, folder, info)
        if what == ["anatomy"]:
            return self.anatomy(request, folder, info)
        if what == ["raw"]:
            request.setHeader(b"content-type", b"message/rfc822")
            request.setHeader(b"content-disposition", f'attachment; filename="message-{uid}.eml"'.encode("ascii"))
            return offload.read_message(folder, uid)
        if len(what) == 2 and what[0] == "part" and _whole(what[1]):
            return self.part(request, folder, info, int(what[1]))
        raise _not_found("There is no page at this address.", back=folder_url(self.name))

    def _uid(self, text: str) -> int:
        """A message's UID from the address (404 for anything but a UID of this folder's range)."""
        if not _whole(text) or not 0 < int(text) < 2**32:  # RFC 3501 §2.3.1.1: nz-number, 32 bits
            raise _not_found("There is no such message: a message's address ends in its number (its UID).", back=folder_url(self.name))
        return int(text)

    def render_POST(self, request):
        if not self.face.csrf_ok(request):
            raise _forbidden()
        account, folder = self._folder()
        rest = [p.decode("utf-8", "replace") for p in request.postpath if p != b""]
        if rest == ["empty"]:
            return self.empty(request, folder)
        if len(rest) != 2 or rest[1] != "action":
            raise _not_found("There is no form at this address.", back=folder_url(self.name))
        uid = self._uid(rest[0])
        folder.info(uid)
        action = form_value(request, "action")
        back = folder_url(self.name)
        # Each answers once the change is durable (its flush), so a full
        # disk or an outage meanwhile is the one error path's page, never
        # a redirect as if done.
        # (PostgreSQL: the flag change or expunge runs in a worker thread,
        # store.base.set_flags_later / expunge_later)
        if action in ("flag", "unflag"):
            d = set_flags_later(folder, [uid], [FLAGGED], "add" if action == "flag" else "remove", origin=self)
            return d.addCallback(lambda _: folder.flush()).addCallback(lambda _: redirect(request, message_url(self.name, uid)))
        if action in ("unread",):
            d = set_flags_later(folder, [uid], [SEEN], "remove", origin=self)
            return d.addCallback(lambda _: folder.flush()).addCallback(lambda _: redirect(request, back))
        if action in ("delete", "move"):
            target_name = TRASH if action == "delete" else form_value(request, "target")
            if action == "delete" and self.name == TRASH:
                d = expunge_later(folder, [uid], origin=self)
                return d.addCallback(lambda _: folder.flush()).addCallback(lambda _: redirect(request, back))
            try:
                target = account.folder(target_name)
            except NoSuchFolder:
                if target_name != TRASH:
                    raise _not_found("There is no folder of that name to move the message to; nothing was changed.", back=message_url(self.name, uid)) from None
                try:
                    target = account.create_folder(TRASH)
                except FolderExists:  # (made meanwhile by another client)
                    target = account.folder(TRASH)
            # A folder made moments ago (Trash here, or the special-use
            # folders a first visit makes) is on disk before a message is
            # moved into it and taken out of this one (design rule 6).
            d = folders_durable(account).addCallback(lambda _: getattr(folder, "copy_for_move", folder.copy_to)([uid], target))  # (quota.py: a move takes no room)

            def copied(pairs):
                if isinstance(pairs, list) and not pairs:
                    # (gone between the look above and the copy: nothing to move)
                    raise NoSuchMessage(uid)
                return expunge_later(folder, [uid], origin=self).addCallback(lambda _: folder.flush())

            return d.addCallback(copied).addCallback(lambda _: redirect(request, back))
        raise Refused(400, "That form asks for nothing this page does (delete, move, flag, unflag, unread); nothing was changed.", back=message_url(self.name, uid))

    def empty(self, request, folder):
        """
        C{POST /mail/Trash/empty} (or Junk): delete for ever the messages
        the page listed, those below its form's C{below} (the folder's
        UIDNEXT then): what another client moved there since stays.
        Answers once the expunge is durable.
        """
        if self.name not in EMPTIED:
            raise Refused(400, "Only Trash and Junk are emptied at once; nothing was changed.", back=folder_url(self.name))
        if form_value(request, "below") == "":
            raise Refused(400, "That form did not say which messages it listed; nothing was changed. Reload the page and try again.", back=folder_url(self.name))
        # (a UIDNEXT: 1 to 2**32, RFC 3501 §2.3.1.1; more would take what
        # another client moved here since the page was made)
        below = number_value(request, "below", 1, 1, 2**32, clamp=False)
        uids = [i.uid for i in folder.messages() if i.uid < below]
        removed = expunge_later(folder, uids, origin=self) if uids else defer.succeed([])

        def done(_):
            self.session.notice = f"{msgparse.visible(self.name)} emptied: {len(uids)} message{'s' if len(uids) != 1 else ''} deleted for ever."
            return redirect(request, folder_url(self.name))

        return removed.addCallback(lambda _: folder.flush()).addCallback(done)

    # -- pages -------------------------------------------------------------

    def folder_list(self, account):
        rows = []
        for name in account.folders():
            try:
                f = account.folder(name)
                infos = f.messages()
            except (NoSuchFolder, BadFolderName):
                continue  # (deleted meanwhile by another client; anything else: the error path)
            except (StoreError, OSError) as e:
                if not is_out_of_space(e):
                    raise
                # A folder that cannot be read now for a full disk (one half
                # made, whose UIDVALIDITY is still to be written): the page
                # is still shown, that folder without counts.
                log.info("web: {user}: folder {name} not counted: {why}", user=self.session.user.address, name=msgparse.visible(name), why=error_words(e))
                rows.append(tags.li(tags.a(f"{msgparse.visible(name)} (?)", href=folder_url(name)), title="cannot be read now", **{"data-folder": name}))
                continue
            unread = sum(1 for i in infos if SEEN not in i.flags)
            shown = msgparse.visible(name)  # a folder name as any other text of a page
            label = f"{shown} ({unread}/{len(infos)})" if unread else f"{shown} ({len(infos)})"
            rows.append(tags.li(tags.a(label, href=folder_url(name)), class_="unread" if unread else "", **{"data-folder": name}))
        return tags.nav(tags.ul(*rows), tags.p(tags.a("Compose", href=COMPOSE)), class_="folders")

    def listing(self, request, account, folder):
        # ?q=: words, or IMAP search keys, with the engine IMAP SEARCH uses.
        query = form_value(request, "q", "").strip()
        problem = ""
        all_infos = folder.messages()  # (what the page's poll compares: the whole folder's state)
        infos = all_infos
        if query:
            try:
                # (the files are read and matched in a worker thread,
                # no further than the browser waits for the page)
                searched = search_messages_in_thread(folder, query, offload.still_waiting(request))
            except BadSearch as e:
                infos, problem = [], str(e)
            else:
                return searched.addCallback(lambda found: self._listing_page(request, account, folder, query, all_infos, found, problem))
        return self._listing_page(request, account, folder, query, all_infos, infos, problem)

    def _listing_page(self, request, account, folder, query: str, all_infos: list, infos: list, problem: str) -> defer.Deferred:
        """A Deferred of the folder's page of C{infos} (those that match C{query}, or all of C{all_infos}); C{problem}: why the query could not be read."""
        pages = max(1, math.ceil(len(infos) / PAGE_SIZE))
        # A page past the last is the last (also past 12 digits: it was
        # page 1); a page that is no whole number is a 400 saying so.
        page = number_value(request, "page", 1, 1, pages)
        newest_first = infos[::-1][(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        # (each row's header, read in a worker thread: a Maildir file each,
        # or PostgreSQL's on the store's read connections)
        return heads_in_thread(folder, newest_first, msgparse.HEADER_PEEK).addCallback(
            lambda heads: self._listing_rows(request, account, folder, query, all_infos, infos, problem, page, pages, newest_first, heads)
        )

    def _listing_rows(self, request, account, folder, query: str, all_infos: list, infos: list, problem: str, page: int, pages: int, newest_first: list, heads: list) -> bytes:
        """L{_listing_page}'s page, the first octets of each of C{newest_first} in C{heads} (None: expunged meanwhile)."""
        rows = []
        for info, head in zip(newest_first, heads):
            if head is None:
                continue  # (expunged meanwhile by another client)
            s = msgparse.summary(head)
            rows.append(
                tags.tr(
                    tags.td("📎" if s.has_attachment else "", class_="att", title="has attachments" if s.has_attachment else ""),
                    tags.td("★" if FLAGGED in info.flags else ""),
                    tags.td(s.sender),
                    tags.td(tags.a(s.subject, href=message_url(self.name, info.uid))),
                    tags.td(_date(info.internal_date)),
                    tags.td(_size(info.size)),
                    class_="unread" if SEEN not in info.flags else "read",
                    **{"data-uid": str(info.uid)},
                )
            )
        keep = f"&q={quote_plus(query)}" if query else ""
        nav = []
        if page > 1:
            nav.append(tags.a("« newer", href=f"{folder_url(self.name)}?page={page - 1}{keep}"))
        nav.append(f" page {page} of {pages} ")
        if page < pages:
            nav.append(tags.a("older »", href=f"{folder_url(self.name)}?page={page + 1}{keep}"))
        search = tags.form(
            tags.input(type="search", name="q", value=query, placeholder="words, or IMAP search keys: FROM alice UNSEEN", size="40"),
            tags.button("Search", type="submit"),
            method="get", action=folder_url(self.name), class_="search",
        )
        if self.name in EMPTIED and all_infos:
            search = [search, post_form(
                folder_url(self.name) + "/empty", self.session,
                tags.input(type="hidden", name="below", value=str(folder.uid_next)),
                tags.button(f"Empty {msgparse.visible(self.name)}", type="submit"),
                class_="inline empty",
                **{"data-confirm": f"Delete the {len(all_infos)} message{'s' if len(all_infos) != 1 else ''} in {msgparse.visible(self.name)} for ever?"},
            )]
        found = []
        if problem:
            found.append(tags.p(f"That search could not be read: {problem}", class_="error"))
        elif query:
            found.append(tags.p(f"{len(infos)} message{'s match' if len(infos) != 1 else ' matches'} ", tags.code(query), "."))
        content = [
            self.folder_list(account),
            tags.section(
                search,
                *found,
                tags.p(*nav, class_="pager", id="pager"),
                tags.table(
                    tags.thead(tags.tr(tags.th(""), tags.th(""), tags.th("from"), tags.th("subject"), tags.th("date"), tags.th("size"))),
                    tags.tbody(*(rows or [tags.tr(tags.td("No message matches." if query else "No messages in this folder.", colspan="6"), class_="empty")]), id="messages"),
                    class_="messages",
                ),
            ),
        ]
        return render_page(
            request, msgparse.visible(self.name), content, self.session, scripts=["mail.js"],
            data={"page": "folder", "folder": self.name, "uidnext": str(folder.uid_next), "count": str(len(all_infos)), "unseen": str(sum(1 for i in all_infos if SEEN not in i.flags))},
        )

    def state(self, request, folder):
        # Polled every 2 s by each open page (static/mail.js): a store that
        # keeps its counts while nothing changed (counts()) is asked that,
        # not for every message (31 ms of the hub's time a poll for 20,000).
        counts = getattr(folder, "counts", None)
        if counts is not None:
            count, unseen = counts()
        else:
            infos = folder.messages()
            count, unseen = len(infos), sum(1 for i in infos if SEEN not in i.flags)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"uidnext": folder.uid_next, "count": count, "unseen": unseen}).encode()

    def read(self, request, folder, info):
        raw = offload.read_message(folder, info.uid)
        flushed = None
        if SEEN not in info.flags:
            # \Seen for IMAP and POP3 too: the same store.
            flushed = set_flags_later(folder, [info.uid], [SEEN], "add", origin=self).addCallback(lambda _: folder.flush())
        allow_remote = form_value(request, "remote-images") == "1"
        if allow_remote:
            request.setHeader(b"content-security-policy", request.responseHeaders.getRawHeaders(b"content-security-policy")[0].replace(b"img-src 'self' data:", b"img-src 'self' data: https: http:"))
        targets = [n for n in self.session.user.mail().folders() if n != self.name]
        whereabouts, identity = self._whereabouts(folder, info.uid), self._identity(folder, info)
        page = raw.addCallback(lambda raw: _page_later(request, self.session, self._reading, raw, info, allow_remote, targets, whereabouts, identity))
        if flushed is None:
            return page
        # The page once the flag is durable too (a failure of either: the error path's page).
        return defer.gatherResults([page, flushed], consumeErrors=True).addCallback(lambda results: results[0])

    def _whereabouts(self, folder, uid: int):
        """
        The way back from message C{uid} to its folder's page that lists it,
        and to the messages either side (newest first, as the list):
        a C{<p class="whereabouts">}.
        """
        uids = [i.uid for i in folder.messages()]
        newer = [u for u in uids if u > uid]
        older = [u for u in uids if u < uid]
        page = len(newer) // PAGE_SIZE + 1
        back = folder_url(self.name) + (f"?page={page}" if page > 1 else "")
        links = [tags.a(f"« {msgparse.visible(self.name)}", href=back, class_="back")]
        if newer:
            links += [" · ", tags.a("‹ newer", href=message_url(self.name, min(newer)), rel="prev", class_="newer")]
        if older:
            links += [" · ", tags.a("older ›", href=message_url(self.name, max(older)), rel="next", class_="older")]
        return tags.p(*links, class_="whereabouts")

    def _reading(self, raw, info, allow_remote, targets, whereabouts="", identity=None):
        """The message page's title and content (in a parsing thread: no store, no request)."""
        msg = msgparse.parse(raw, identity=identity)
        all_parts = msgparse.parts(msg)
        body, blocked = self._body(msg, all_parts, info.uid, allow_remote)
        env = msgparse.envelope_and_header(msg)
        attachments = []
        more = 0
        for i, p in enumerate(all_parts):
            if not msgparse.is_attachment(p):
                continue
            if len(attachments) == MAX_LISTED:
                more += 1
                continue
            attachments.append(tags.li(tags.a(msgparse.shown_filename(p) or f"part {i}", href=f"{message_url(self.name, info.uid)}/part/{i}", download=msgparse.filename(p) or f"part-{i}"), f" ({msgparse.visible(p.get_content_type())})"))
        if more:
            attachments.append(tags.li(f"and {more} more attachment{'s' if more != 1 else ''} not listed here: ", tags.a("the whole message", href=f"{message_url(self.name, info.uid)}/raw"), " has them all", class_="more"))
        uid = info.uid
        here = message_url(self.name, uid)
        actions = tags.div(
            # (in Trash, Delete removes the message for good: said so)
            post_form(here + "/action", self.session, tags.input(type="hidden", name="action", value="delete"), tags.button("Delete for ever" if self.name == TRASH else "Delete", type="submit"), class_="inline"),
            " ",
            post_form(here + "/action", self.session, tags.input(type="hidden", name="action", value="unread"), tags.button("Mark unread", type="submit"), class_="inline"),
            " ",
            post_form(here + "/action", self.session, tags.input(type="hidden", name="action", value="unflag" if FLAGGED in info.flags else "flag"), tags.button("Unflag" if FLAGGED in info.flags else "Flag", type="submit"), class_="inline"),
            " ",
            # (no Move without a folder to move to)
            post_form(here + "/action", self.session, tags.input(type="hidden", name="action", value="move"), tags.select(*(tags.option(msgparse.visible(n), value=n) for n in targets), name="target", title="move to the folder"), tags.button("Move", type="submit"), class_="inline") if targets else "",
            " ",
            tags.a("Reply", href=f"{COMPOSE}?reply={quote(self.name, safe='')}/{uid}"), " · ",
            tags.a("Reply all", href=f"{COMPOSE}?replyall={quote(self.name, safe='')}/{uid}"), " · ",
            tags.a("Forward", href=f"{COMPOSE}?forward={quote(self.name, safe='')}/{uid}"), " · ",
            tags.a("Anatomy", href=here + "/anatomy"), " · ",
            tags.a("Source", href=here + "/raw"),
            class_="actions",
        )
        content = [
            whereabouts,
            actions,
            tags.dl(
                tags.dt("From"), tags.dd(env["from"]),
                tags.dt("To"), tags.dd(env["to"]),
                *([tags.dt("Cc"), tags.dd(env["cc"])] if env["cc"] else []),
                tags.dt("Date"), tags.dd(msgparse.shown(msgparse.field(msg, "Date")) or f"(none given; received {_date(info.internal_date)})"),
                class_="facts",
            ),
            tags.p(f"{blocked} remote image(s) blocked. ", tags.a("Load them", href=here + "?remote-images=1")) if blocked else "",
            _opaque_note(msg, here),
            body,
            tags.ul(*attachments, class_="attachments") if attachments else "",
        ]
        return msgparse.shown(msgparse.field(msg, "Subject")) or "(no subject)", content, {}

    def _body(self, msg, all_parts, uid, allow_remote):
        html_part = text_part = None
        for p in all_parts:
            if msgparse.is_attachment(p) or p.is_multipart():
                continue
            kind = p.get_content_type()
            if kind == "text/html" and html_part is None:
                html_part = p
            elif kind == "text/plain" and text_part is None:
                text_part = p
        if html_part is not None:
            cids = {}
            for i, p in enumerate(all_parts):
                cid = (msgparse.field(p, "Content-ID") or "").strip().strip("<>")
                if cid and p.get_content_type() in SAFE_IMAGES:
                    cids[cid] = f"{message_url(self.name, uid)}/part/{i}"
            return sanitize_html(msgparse.text_of(html_part), cids.get, allow_remote)
        if text_part is not None:
            return tags.pre(msgparse.text_of(text_part), class_="body-text"), 0
        return tags.p("(no text)"), 0

    def part(self, request, folder, info, index):
        def found(part):
            if part is None:
                raise _not_found(f"This message has no part {index} to download.", back=message_url(self.name, info.uid))
            return self._part_answer(request, index, *part)

        return offload.read_message(folder, info.uid).addCallback(lambda raw: offload.in_thread(_part_of, raw, index)).addCallback(found)

    def _part_answer(self, request, index, p, data):
        kind = p.get_content_type()
        name = msgparse.filename(p) or f"part-{index}"
        if kind in SAFE_IMAGES and form_value(request, "download") != "1":
            request.setHeader(b"content-type", kind.encode("ascii"))
            disposition = "inline"
        else:
            # Anything else (HTML, SVG, scripts...) only as a download.
            request.setHeader(b"content-type", b"application/octet-stream")
            disposition = "attachment"
        ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
        request.setHeader(b"content-disposition", f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}".encode("ascii"))
        return data

    def _identity(self, folder, info) -> tuple:
        """What names this stored message for good (msgparse.parse's cache): account, folder, UIDVALIDITY, UID, key, size."""
        return (self.session.user.address, self.name, getattr(folder, "uid_validity", 0), info.uid, info.key, info.size)

    def anatomy(self, request, folder, info):
        first = number_value(request, "from", 1, 1, 2**31)
        identity = self._identity(folder, info)
        return offload.read_message(folder, info.uid).addCallback(lambda raw: _page_later(request, self.session, self._anatomy, raw, info, identity, first))

    def _anatomy(self, raw, info, identity=None, first=1):
        """
        The Anatomy page's title and content (in a parsing thread: no store,
        no request); the raw source from its line C{first} (1-based), at
        most L{MAX_SOURCE_LINES} lines and L{MAX_SOURCE} octets of it, with
        a link to the next ones.
        """
        msg = msgparse.parse(raw, identity=identity)
        all_lines = _line_count(raw, identity)
        first = min(first, max(all_lines, 1))
        start = 0
        for _ in range(first - 1):
            start = raw.find(b"\n", start) + 1
        window = raw[start : start + MAX_SOURCE]
        lines = window.decode("utf-8", "replace").split("\r\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) > MAX_SOURCE_LINES:
            lines = lines[:MAX_SOURCE_LINES]
        elif start + MAX_SOURCE < len(raw) and len(lines) > 1:
            lines = lines[:-1]  # the last one may be cut in the middle
        last = first + len(lines) - 1
        here = message_url(self.name, info.uid)
        if first == 1:
            source = tags.pre(*(tags.span(msgparse.visible(line), class_="line") for line in lines), class_="source")
        else:
            # (numbered in the page: the style's counter starts at 1, and
            # the page's policy allows no inline style to start it later)
            source = tags.pre(*(tags.span(tags.span(str(n), class_="n"), msgparse.visible(line), class_="line") for n, line in enumerate(lines, first)), class_="source numbered")
        if first > 1 or last < all_lines:
            more = all_lines - last
            links = [f"Lines {first:,} to {last:,} of {all_lines:,}. "]
            if more > 0:
                links += [tags.a(f"{more:,} more line{'s' if more != 1 else ''}", href=f"{here}/anatomy?from={last + 1}#source", class_="next"), " · "]
            if first > 1:
                links += [tags.a("the first lines", href=f"{here}/anatomy#source"), " · "]
            links += [tags.a("the whole source", href=here + "/raw"), " has them all."]
            source = [source, tags.p(*links, class_="more")]
        headers = tags.table(
            tags.thead(tags.tr(tags.th("field"), tags.th("as sent"), tags.th("decoded (RFC 2047)"))),
            tags.tbody(*(tags.tr(tags.td(n), tags.td(tags.code(r)), tags.td(d if d != " ".join(r.split()) else "")) for n, r, d in msgparse.header_rows(msg))),
            class_="headers",
        )
        hops = msgparse.received_hops(msg)
        hop_items = []
        previous = None
        for n, hop in enumerate(hops, 1):
            delay = ""
            if hop["when"] is not None and previous is not None:
                delay = f" (+{(hop['when'] - previous).total_seconds():.0f} s)"
            if hop["when"] is not None:
                previous = hop["when"]
            hop_items.append(tags.li(
                tags.strong(f"hop {n}: "), hop["from"] or "?", " → ", tags.strong(hop["by"] or "?"),
                f" with {hop['with']}" if hop["with"] else "", f" id {hop['id']}" if hop["id"] else "",
                f" for {hop['for']}" if hop["for"] else "", tags.br(), tags.small(hop["time"] + delay),
            ))
        env = msgparse.envelope_and_header(msg)
        envelope = tags.table(
            tags.thead(tags.tr(tags.th(""), tags.th("envelope (SMTP: what the servers used)"), tags.th("header (what the reader sees)"))),
            tags.tbody(
                tags.tr(tags.th("sender"), tags.td(tags.code(env["mail_from"] or "-"), " (MAIL FROM, kept as Return-Path:)"), tags.td(env["from"] or "-", " (From:)")),
                tags.tr(tags.th("recipients"), tags.td(tags.code(env["rcpt_to"] or "-"), " (RCPT TO, from Received: for)"), tags.td((env["to"] or "-") + (f"; Cc: {env['cc']}" if env["cc"] else ""), " (To:/Cc:)")),
            ),
            class_="envelope",
        )
        mime_rows = []
        part_views = []
        all_parts = msgparse.parts(msg)
        for row, p in zip(msgparse.tree(msg), all_parts):
            if row["index"] >= MAX_LISTED:
                mime_rows.append(tags.tr(tags.td(f"and {len(all_parts) - MAX_LISTED} more parts not shown here (the whole source has them)", colspan="5"), class_="more"))
                break
            mime_rows.append(tags.tr(
                tags.td("\u2003" * row["depth"] + row["type"]), tags.td(row["encoding"]), tags.td(row["charset"] or "-"),
                tags.td(_size(row["size"]) if not row["multipart"] else "-"), tags.td(row["filename"] or ""),
            ))
            if row["multipart"] or len(part_views) >= MAX_PART_VIEWS:
                continue
            raw_payload = p.get_payload()
            raw_text = raw_payload if isinstance(raw_payload, str) else ""
            shown_raw = msgparse.visible_lines(raw_text[:8000]) + ("\n[... more]" if len(raw_text) > 8000 else "")
            kind = p.get_content_type()
            url = f"{message_url(self.name, info.uid)}/part/{row['index']}"
            if kind in SAFE_IMAGES:
                decoded_view = tags.img(src=url, alt=row["filename"] or kind, class_="decoded")
            elif kind.startswith("text/"):
                body = msgparse.text_of(p)
                decoded_view = tags.pre(body[:8000] + ("\n[... more]" if len(body) > 8000 else ""))
            else:
                decoded_view = tags.p(tags.a("download the decoded part", href=url + "?download=1"))
            part_views.append(tags.div(
                tags.h3(f"part {row['index']}: {row['type']}", f" — {row['filename']}" if row["filename"] else ""),
                tags.div(
                    tags.div(tags.h4(f"as sent ({row['encoding']})"), tags.pre(shown_raw)),
                    tags.div(tags.h4("decoded"), decoded_view),
                    class_="sidebyside",
                ),
                class_="part",
            ))
        content = [
            tags.p(tags.a("« back to the message", href=message_url(self.name, info.uid))),
            _opaque_note(msg, message_url(self.name, info.uid)),
            tags.h2("Envelope and header"), envelope,
            tags.h2("The path it took (Received:, oldest first)"), tags.ol(*hop_items, class_="hops") if hop_items else tags.p("No Received: lines."),
            tags.h2("Header fields"), headers, _header_end_note(raw),
            tags.h2("MIME tree"),
            tags.table(tags.thead(tags.tr(tags.th("content type"), tags.th("transfer encoding"), tags.th("charset"), tags.th("size as sent"), tags.th("file name"))), tags.tbody(*mime_rows), class_="mime"),
            tags.h2("Parts: as sent and decoded"), *part_views,
            tags.p(f"Only the first {MAX_PART_VIEWS} parts are shown side by side.", class_="more") if len(part_views) >= MAX_PART_VIEWS else "",
            tags.h2(f"Raw source ({all_lines} lines, {info.size} octets)", id="source"), source,
        ]
        return "Anatomy: " + (msgparse.shown(msgparse.field(msg, "Subject")) or "(no subject)"), content, {}


class ComposePage(resource.Resource):
    """C{/compose}: L{Compose} for the signed-in user (the login page first)."""

    isLeaf = True

    def __init__(self, face: Any):
        resource.Resource.__init__(self)
        self.face = face

    def render(self, request):
        session = self.face.session(request)
        if session is None or session.user is None:
            if request.method == b"POST" and not any(p != b"" for p in request.postpath):
                # A message posted with no session (the hub restarted, the
                # session timed out, the user logged out in another tab):
                # the login form, holding what was typed; once logged in
                # it comes back in the compose form, to check and send.
                fields, files = _form_data(request)
                from twisted_mailhub.web.site import login_keeping_draft

                return login_keeping_draft(self.face, request, draft_of(fields), attached=bool(files))
            return redirect(request, "/login?next=" + quote(request.uri.decode("utf-8", "replace"), safe="/"))
        if any(p != b"" for p in request.postpath):
            raise _not_found("There is no page at this address.", back=COMPOSE)
        return Compose(self.face, session).render(request)


#: The compose form's fields a draft keeps across a login (L{draft_of}).
DRAFT_FIELDS = ("to", "cc", "subject", "body", "in-reply-to", "references", "forward-of")


def draft_of(fields: dict[str, str]) -> dict[str, str]:
    """What was typed in a compose form (C{fields}), by L{DRAFT_FIELDS}: nothing else (no token) is carried."""
    return {name: fields[name] for name in DRAFT_FIELDS if fields.get(name)}


def draft_again(face: Any, session: Any, request: Any, draft: dict[str, str], note: str) -> bytes:
    """The compose form of C{session} filled with C{draft}, C{note} above it; nothing is sent until the user presses Send."""
    return Compose(face, session)._again(request, draft, note, code=200)


def _address_field(boxes: list[tuple[str, str]]) -> Any:
    """
    The value of a To or Cc field for (display name, address) pairs, as
    L{Address} objects, so that the policy folds and RFC 2047-encodes each
    name on its own: a string of C{formataddr} results was parsed again
    and refolded, which encoded the comma after a non-ASCII name into an
    encoded-word and so joined the next mailbox to it. A bare local part
    (typed by hand) stays bare; a quoted one is unquoted for L{Address}
    to quote again.
    """
    out = []
    for name, address in boxes:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if len(local) >= 2 and local[0] == local[-1] == '"':
            local = re.sub(r"\\(.)", r"\1", local[1:-1])
        try:
            out.append(Address(name, username=local, domain=domain))
        except (ValueError, email.errors.HeaderParseError):
            return ", ".join(formataddr(box) for box in boxes)
    return out


class Compose(resource.Resource):
    """
    C{/compose}: the form (with reply/forward filled in) and sending,
    through the same submission path as SMTP AUTH.
    """

    isLeaf = True

    def __init__(self, face: Any, session: Any):
        resource.Resource.__init__(self)
        self.face = face
        self.session = session

    def _source(self, ref: str) -> defer.Deferred:
        """
        A Deferred of the stored message C{FOLDER/UID} of the signed-in
        account (read in a parsing thread: L{offload.read_message}). Raises
        L{NoSuchMessage}/L{NoSuchFolder} (a 404 on the error path) when
        there is none, e.g. it was deleted meanwhile.
        """
        folder_name, _, uid = ref.rpartition("/")
        if not _whole(uid) or not 0 < int(uid) < 2**32:
            raise NoSuchMessage(ref)
        return offload.read_message(self.session.user.mail().folder(folder_name), int(uid))

    def render_GET(self, request):
        for mode in ("reply", "replyall", "forward"):
            ref = form_value(request, mode)
            if ref:
                # Taken apart in a parsing thread, as the message page.
                return self._source(ref).addCallback(lambda raw: _page_later(request, self.session, self._answering, mode, raw, ref))
        return render_page(request, "Compose", self.form(), self.session)

    def _answering(self, mode: str, raw: bytes, ref: str = ""):
        """The form filled in to reply to, reply to all or forward C{raw} (C{ref}: FOLDER/UID; in a parsing thread)."""
        to = cc = ""
        reference = references = ""
        forwarded: list[str] = []
        msg = msgparse.parse(raw)
        old_subject = msgparse.decoded(msgparse.field(msg, "Subject"))
        quoted_text = quoted_of(msg)
        if mode == "forward":
            subject = old_subject if old_subject.lower().startswith("fwd:") else f"Fwd: {old_subject}"
            body = "\n\n---------- Forwarded message ----------\n" + f"From: {msgparse.decoded(msgparse.field(msg, 'From'))}\nSubject: {old_subject}\n\n" + quoted_text
            forwarded = [msgparse.shown_filename(p) or p.get_content_type() for p in _attached(msg)]
        else:
            subject = old_subject if old_subject.lower().startswith("re:") else f"Re: {old_subject}"
            me = self.session.user.address.lower()
            # (display name, address) pairs: the form keeps the names, as
            # compose keeps typed ones ('"Doe, John" <john@x>').
            senders = msgparse.mailboxes(msgparse.field(msg, "Reply-To") or msgparse.field(msg, "From") or "")
            recipients = msgparse.mailboxes(", ".join(msgparse.field_all(msg, "To")))
            if senders and all(a.lower() == me for _, a in senders) and recipients:
                # A reply to one's own message (in Sent): to whom it went,
                # as Thunderbird and Gmail do, not back to oneself.
                senders = recipients
            to = msgparse.typed_mailboxes(senders)
            if mode == "replyall":
                others = msgparse.mailboxes(", ".join(msgparse.field_all(msg, "To") + msgparse.field_all(msg, "Cc")))
                cc = msgparse.typed_mailboxes(others, leave_out={me, *(a.lower() for _, a in senders)})
            body = "\n\n" + "\n".join("> " + line for line in quoted_text.splitlines())
            reference = (msgparse.field(msg, "Message-ID") or "").strip()
            # RFC 5322 §3.6.4: the parent's References (else its
            # In-Reply-To), then its Message-ID
            references = " ".join(thread_references(msgparse.field(msg, "References") or msgparse.field(msg, "In-Reply-To") or "", reference))
        return "Compose", self.form(to, cc, subject, body, reference, forward_of=ref if mode == "forward" else "", forwarded=forwarded, references=references), {}

    def form(self, to: str = "", cc: str = "", subject: str = "", body: str = "", reference: str = "", problem: Any = None, forward_of: str = "", forwarded: Any = None, report: bool = False, references: str = ""):
        """
        The compose form with these values (and C{problem}, what stopped
        sending, above it). C{reference}: the Message-ID a reply answers;
        C{references}: its thread, sent as C{References:}. C{forward_of}: the FOLDER/UID of a message
        forwarded, whose attachments go with it (C{forwarded}: their names,
        when known). C{report}: "ask for a delivery report" is ticked
        (the field C{dsn}; RFC 3461 NOTIFY=SUCCESS,FAILURE).
        """
        going = ""
        if forward_of:
            names = ", ".join(forwarded) if forwarded else ""
            going = tags.p(f"The forwarded message's attachments go with it: {names}." if names else "The forwarded message's attachments, if any, go with it.", class_="note", id="forwarded")
        return [
            tags.p(problem, class_="error") if problem else "",
            post_form(
                COMPOSE,
                self.session,
                tags.input(type="hidden", name="in-reply-to", value=reference),
                tags.input(type="hidden", name="references", value=references),
                tags.input(type="hidden", name="forward-of", value=forward_of),
                going,
                tags.label("To ", tags.input(type="text", name="to", value=to, size="60")),
                tags.label("Cc ", tags.input(type="text", name="cc", value=cc, size="60")),
                tags.label("Subject ", tags.input(type="text", name="subject", value=subject, size="60")),
                tags.textarea(body, name="body", rows="16", cols="80"),
                tags.label("Attachment ", tags.input(type="file", name="attachment", multiple="multiple")),
                tags.label(
                    tags.input(type="checkbox", name="dsn", value="yes", **({"checked": "checked"} if report else {})),
                    " Ask for a delivery report (you get a notice when it is delivered, or if it cannot be)",
                    title="RFC 3461 delivery status notification: NOTIFY=SUCCESS,FAILURE for each recipient",
                ),
                tags.button("Send", type="submit"),
                enctype="multipart/form-data",
                class_="compose",
            ),
        ]

    def _again(self, request, fields: dict[str, str], problem: str, code: int = 400):
        """The form again (C{code}) with C{fields} as typed (less what cannot be sent) and C{problem} above it; nothing sent."""
        f = _cleaned(fields)
        reference = f.get("in-reply-to", "")
        if _FORBIDDEN_IN_HEADER.search(reference):
            reference = ""
        forward_of = f.get("forward-of", "") if not _FORBIDDEN_IN_HEADER.search(f.get("forward-of", "")) else ""
        references = " ".join(thread_references(f.get("references", ""), reference)) if reference else ""
        form = self.form(f.get("to", ""), f.get("cc", ""), f.get("subject", ""), f.get("body", "").replace("\r\n", "\n"), reference, problem=problem, forward_of=forward_of, report=f.get("dsn") == "yes", references=references)
        return render_page(request, "Compose", form, self.session, code=code)

    def render_POST(self, request):
        fields, files = _form_data(request)
        token = fields.get("csrf", "")
        if not self.session.csrf_ok(token):
            # (a page of an older session, or of another site: nothing is
            # sent, and what was typed comes back to check and send)
            return self._again(request, fields, "This form had expired (you logged in again since it was made, or it did not come from this site's page): the message was not sent. Check it and press Send." + (_NO_FILES if files else ""), code=403)
        user = self.session.user
        problem = unsendable(fields)
        if problem:
            # Nothing is sent: the form comes back with what was typed,
            # those characters taken out, and says why (RFC 5322).
            return self._again(request, fields, problem)
        # The envelope takes the addresses; the header fields keep the
        # display names as typed ('"Doe, John" <john@x>').
        to_boxes = msgparse.mailboxes(fields.get("to", ""), bare=True)
        cc_boxes = msgparse.mailboxes(fields.get("cc", ""), bare=True)
        to, cc = [a for _, a in to_boxes], [a for _, a in cc_boxes]
        if not to and not cc:
            return self._again(request, fields, "Give at least one recipient.")
        message = EmailMessage(policy=email.policy.SMTP)
        message["From"] = formataddr(("", user.address))
        if to:
            message["To"] = _address_field(to_boxes)
        if cc:
            message["Cc"] = _address_field(cc_boxes)
        message["Subject"] = " ".join(fields.get("subject", "").split())
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = make_msgid(domain=user.address.partition("@")[2] or None)
        reply_to = fields.get("in-reply-to", "").strip()
        if reply_to and not _FORBIDDEN_IN_HEADER.search(reply_to) and "\r" not in reply_to and "\n" not in reply_to:
            message["In-Reply-To"] = reply_to
            message["References"] = " ".join(thread_references(fields.get("references", ""), reply_to))
        message.set_content(fields.get("body", "").replace("\r\n", "\n"))
        forward_of = fields.get("forward-of", "").strip()
        if not forward_of:
            return self._send(request, fields, message, files, to + cc)
        # A forward takes the original's attachments along: read now (it
        # may have gone meanwhile) and taken apart in a parsing thread.
        try:
            original = self._source(forward_of)
        except (NoSuchMessage, NoSuchFolder, BadFolderName):
            return self._again(request, fields, "Not sent: the message you are forwarding is not there any more (another mail program deleted or moved it), so its attachments cannot go with it.", code=404)
        return original.addCallback(lambda raw: offload.in_thread(_attachments_of, raw)).addCallback(lambda found: self._send(request, fields, message, found + files, to + cc))

    def _send(self, request, fields: dict[str, str], message: Any, files: list[tuple[str, str, bytes]], recipients: list[str]):
        """Send C{message} with C{files} attached (name, type, bytes) from the compose form C{fields}; the page it answers with."""
        user = self.session.user
        for name, kind, data in files:
            maintype, subtype, params = attachment_type(kind, data)
            if (maintype, subtype) == ("message", "rfc822"):
                # RFC 2046 §5.2.1: a message/rfc822 body is 7bit or 8bit,
                # never base64 (which mail programs then cannot open):
                # attached as the message it is (compat32 keeps its fields).
                carried = email.message_from_bytes(data, policy=email.policy.compat32)
                message.add_attachment(carried, filename=name)
                continue
            if maintype in ("multipart", "message"):
                # RFC 2045 §6.4: a composite type is never base64, and its
                # octets are not known to be a valid one: sent as octets.
                maintype, subtype, params = "application", "octet-stream", {}
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name, params=params)
        # RFC 2045 §4: MIME-Version belongs to the message's own header;
        # Python's email package puts one in every body part it makes.
        # (An attached message/rfc822 keeps its own: it is inside it.)
        if message.is_multipart():
            for part in message.iter_parts():
                del part["MIME-Version"]
        raw = message.as_bytes()
        limit = int(getattr(self.face.hub, "max_message_size", 0) or 0)
        if limit and len(raw) > limit:
            # As SMTP refuses it (552 5.3.4, RFC 5321 §4.5.3.1.10 and RFC 1870):
            # nothing sent; the form back with what was typed (the files are
            # not kept: a browser cannot be given them back).
            return self._again(
                request, fields,
                f"Not sent: the message with its attachments would be {_size(len(raw))}, and this server takes messages "
                f"of at most {_size(limit)}. Attach smaller files (or share big ones by FTP), and send it again.",
                code=413,
            )
        notify = "SUCCESS,FAILURE" if fields.get("dsn") == "yes" else ""
        d = submit(self.face.hub, user.address, recipients, raw, client_host(request), request_secure(request), notify=notify)

        def sent(refused):
            if refused:
                return render_page(request, "Not sent to everyone", [tags.p("These recipients were refused:"), tags.ul(*(tags.li(f"{a}: {text}") for a, text in refused))], self.session, code=400)
            self.session.notice = f"Sent to {', '.join(recipients)}; a copy is in Sent."
            return redirect(request, folder_url(INBOX))

        def not_copied(reason):
            reason.trap(NotCopied)
            # Sent, but the copy in Sent could not be kept: say both.
            error = reason.value
            said = refusal(request, error.cause)
            lines = [tags.p("The message was sent, but no copy of it could be kept in your Sent folder: ", said.message or "", class_="error", role="alert")]
            if error.refused:
                lines += [tags.p("These recipients were refused:"), tags.ul(*(tags.li(f"{a}: {text}") for a, text in error.refused))]
            return render_page(request, "Sent, not copied", lines, self.session, code=200)

        def failed(reason):
            # Not sent: the form again with what was typed (nothing lost), and
            # why, with the one error path's status and words; a fault of the
            # hub is still the error path's own page.
            said = refusal(request, reason.value)
            if said.code == 500:
                return reason
            # (503 and 507 as SMTP answers them, 451/452: one line in the log, by refusal)
            for name, value in said.headers.items():
                request.setHeader(name, value)
            text = said.message or ("The server's disk is full: the message was not sent. Try again later." if said.code == 507 else "")
            full = _recipients_full_mailbox(reason.value, user.address)
            if full is not None:
                # A recipient's mailbox, not the sender's ("Your mailbox is
                # full" gave bob's figures as alice's): SMTP's 552 5.2.2 at
                # the end of DATA, which names the recipient, sent to no one.
                text = full
            return self._again(request, fields, text.replace("nothing was changed", "the message was not sent"), code=said.code)

        return d.addCallbacks(sent, failed).addErrback(not_copied)


# A msg-id as a References field can carry it: printable US-ASCII between
# < and > (RFC 5322 §3.6.4); a control, a blank or a non-ASCII character
# is no part of one.
_MSG_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
# The most message ids a reply's References keeps: the thread's first and
# the latest (RFC 5537 §3.4.4 trims the same way; Thunderbird keeps about
# as many).
_MOST_REFERENCES = 20


def thread_references(references: str, parent: str) -> list[str]:
    """
    The C{References:} ids of a reply (RFC 5322 §3.6.4): the msg-ids of
    C{references} (the parent's own References, or what the compose form
    carried; anything else in it is dropped), then C{parent}, the
    Message-ID it answers, unless it is last already; at most
    L{_MOST_REFERENCES}, the first kept. C{[parent]} when C{references}
    holds none; C{[]} when there is no parent either.
    """
    ids = _MSG_ID.findall(references)
    parent = parent.strip()
    if parent and (not ids or ids[-1] != parent):
        ids.append(parent)
    if len(ids) > _MOST_REFERENCES:
        ids = ids[:1] + ids[-(_MOST_REFERENCES - 1):]
    return ids


def _recipients_full_mailbox(error: BaseException, sender: str) -> str | None:
    """
    What the compose form says when C{error} (a failed L{submit}) is the
    quota of a recipient other than C{sender}: the message fit none of
    its recipients at once (as SMTP's C{552 5.2.2} at the end of DATA) and
    was sent to no one; L{None} for any other error.
    """
    from twisted_mailhub.quota import QuotaExceeded
    from twisted_mailhub.web.errors import _cause

    error = _cause(error)
    if not isinstance(error, QuotaExceeded) or error.address.lower() == sender.lower():
        return None
    if error.incoming > error.limit:
        return f"Not sent: {error.detail} of {error.address}, so it cannot be delivered there; the message was not sent to anyone. Send it without that recipient."
    return (
        f"The mailbox of {error.address} is full ({error.detail}): the message was not sent to anyone. "
        "Send it without that recipient, or later, once its owner has made room."
    )


# What a header field of a message the webmail writes cannot carry (RFC
# 5322 §2.2: printable US-ASCII and white space; RFC 6532 adds UTF-8 text,
# not controls): C0 controls other than tab, CR and LF (white space, which
# is folded), DEL and the C1 controls. A body cannot carry NUL (RFC 5322
# §2.3, RFC 5321 §4.5.2 "text"); other controls are text there.
_FORBIDDEN_IN_HEADER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_FORBIDDEN_IN_BODY = re.compile("\x00")
_FIELDS = (("to", "To", _FORBIDDEN_IN_HEADER), ("cc", "Cc", _FORBIDDEN_IN_HEADER), ("subject", "Subject", _FORBIDDEN_IN_HEADER), ("body", "message text", _FORBIDDEN_IN_BODY))
_CONTROL_NAMES = {0: "NUL", 7: "BEL", 8: "BS", 0x1B: "ESC", 0x7F: "DEL"}


def _control_name(c: str) -> str:
    code = ord(c)
    name = _CONTROL_NAMES.get(code)
    return f"U+{code:04X} ({name})" if name else f"U+{code:04X}"


def unsendable(fields: dict[str, str]) -> str:
    """
    Why the compose form's C{fields} cannot be sent as typed ('' if they
    can): a control character in To, Cc or Subject (RFC 5322 §2.2), or a
    NUL in the message text (RFC 5322 §2.3), or octets that are not
    UTF-8 in any of them (a L{FormFields}' C{not_utf8}). Names the field
    and the characters, e.g. "The Subject has a control character, U+001B
    (ESC), ...".
    """
    found = []
    for key, label, forbidden in _FIELDS:
        chars = sorted(set(forbidden.findall(fields.get(key, ""))))
        if chars:
            names = ", ".join(_control_name(c) for c in chars)
            found.append(f"the {label} has {'a control character' if len(chars) == 1 else 'control characters'}, {names}")
    not_utf8 = [label for key, label, _ in _FIELDS if key in getattr(fields, "not_utf8", ())]
    # (octets not UTF-8 come from a hand-made request or a page of another
    # encoding: what they meant is unknown, so nothing is guessed and sent
    # unseen)
    encoding = (
        f"the {' and the '.join(not_utf8)} came in octets that are not UTF-8, the form's encoding; "
        "they are shown below as \ufffd: correct them and send it again."
    )
    if not found:
        return f"Not sent: {encoding[0].upper() + encoding[1:]}" if not_utf8 else ""
    text = "; ".join(found)
    return (
        f"Not sent: {text[0].upper() + text[1:]}. Mail cannot carry control characters in its header "
        "fields, nor NUL in its text (RFC 5322). They were taken out below: check the message and send it again."
        + (f" Also, {encoding}" if not_utf8 else "")
    )


def _cleaned(fields: dict[str, str]) -> dict[str, str]:
    """C{fields} without the characters L{unsendable} names."""
    out = dict(fields)
    for key, _label, forbidden in _FIELDS:
        if key in out:
            out[key] = forbidden.sub("", out[key])
    return out


def _form_parts(body: bytes, boundary: str | None) -> list[bytes] | None:
    """
    The bodies (after each part's header) of the parts of a multipart/
    form-data C{body} (RFC 7578, RFC 2046 §5.1.1 delimiters), octet for
    octet, in order; None when C{boundary} is missing or not found.
    """
    if not boundary:
        return None
    delimiter = b"\r\n--" + boundary.encode("latin-1", "replace")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        return None
    bodies = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        _, found, rest = chunk.partition(b"\r\n\r\n")
        if not found:
            return None
        bodies.append(rest)
    return bodies


def _form_data(request) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """
    A POST's fields and uploaded files (name, type, bytes), read from the
    multipart/form-data body with the email parser (it keeps file names,
    which Twisted's C{request.args} drops).
    """
    content_type = request.getHeader(b"content-type") or b""
    fields = FormFields()
    if not content_type.lower().startswith(b"multipart/form-data"):
        for k, v in request.args.items():
            fields.take(k.decode("utf-8", "replace"), v[0])
        return fields, []
    request.content.seek(0)
    body = request.content.read()
    parsed = email.message_from_bytes(b"Content-Type: " + content_type + b"\r\n\r\n" + body, policy=email.policy.HTTP)
    files = []
    parts = list(parsed.iter_parts())
    raw = _form_parts(body, parsed.get_boundary())
    for n, part in enumerate(parts):
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        if raw is not None and len(raw) == len(parts) and (part.is_multipart() or part.get_content_maintype() in ("message", "multipart")) and str(part.get("content-transfer-encoding", "")).strip().lower() in ("", "7bit", "8bit", "binary"):
            # A file of type message/rfc822 (a saved .eml) or multipart/*:
            # the parser took it apart (get_payload gave None, and it was
            # dropped without a word) or read it as a broken one. Its
            # octets as the browser sent them.
            data = raw[n]
        else:
            data = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            if data:
                files.append((msgparse.filename(part) or "attachment", part.get_content_type(), data))
        else:
            fields.take(name, data)
    return fields, files


class FormFields(dict):
    """
    A posted form's fields, C{{name: text}}. A field whose octets are not
    UTF-8 (what every browser sends, RFC 7578 §5.1.2 / HTML's form
    encoding; a hand-made request may send Latin-1) is kept with U+FFFD in
    their place, and its name is in L{not_utf8}, so that the form can say
    so instead of sending the replacement characters unseen.
    """

    def __init__(self) -> None:
        dict.__init__(self)
        self.not_utf8: set[str] = set()

    def take(self, name: str, octets: bytes) -> None:
        """Keep field C{name} with its C{octets} decoded as UTF-8."""
        try:
            self[name] = octets.decode("utf-8")
        except UnicodeDecodeError:
            self[name] = octets.decode("utf-8", "replace")
            self.not_utf8.add(name)


def submit(hub: Any, sender: str, recipients: list[str], message: bytes, client_ip: str, tls: bool, notify: str = ""):
    """
    Send C{message} from the signed-in C{sender} as an SMTP AUTH client would:
    the same recipient policy (relay only when logged in), the same
    delivery (filters, Received:, store or queue), then a copy in C{Sent}
    marked C{\\Seen}. Fires with the refused recipients as (address, reply).
    C{notify}: every recipient's RFC 3461 C{NOTIFY} (C{"SUCCESS,FAILURE"}
    for "ask for a delivery report"), C{""} for none.
    """
    from twisted_mailhub.smtp.delivery import RecipientPolicy, Session, deliver

    policy = RecipientPolicy(hub)
    verdicts = [policy.check(policy.qualify(a) if hasattr(policy, "qualify") else a, sender) for a in recipients]
    accepted = [v for v in verdicts if v.accepted]
    if notify:
        accepted = [attr.evolve(v, notify=notify) for v in accepted]
    refused = [(a, f"{v.code} {v.text}") for a, v in zip(recipients, verdicts) if not v.accepted]
    if not accepted:
        return defer.succeed(refused)
    session = Session(helo="webmail", client_ip=client_ip, hostname=hub.hostname, esmtp=True, tls=tls, authenticated=sender)
    d = deliver(hub, session, sender, accepted, message)

    def copy_to_sent(_):
        account = hub.store.account(sender)
        try:
            folder = account.folder(SENT)
        except NoSuchFolder:
            folder = account.create_folder(SENT)
        # (a Sent made now is on disk before the copy is said to be kept)
        return folders_durable(account).addCallback(lambda _: folder.append(message, [SEEN]))

    def not_copied(reason):
        raise NotCopied(refused, reason.value)

    return d.addCallback(lambda _: defer.maybeDeferred(copy_to_sent, None).addErrback(not_copied)).addCallback(lambda _: refused)


class NotCopied(Exception):
    """
    L{submit} sent the message, but its copy in C{Sent} failed with
    C{cause}; C{refused} as L{submit} fires with.
    """

    def __init__(self, refused: list[tuple[str, str]], cause: BaseException):
        Exception.__init__(self, "sent, not copied to Sent")
        self.refused = refused
        self.cause = cause


def install(face: Any) -> None:
    face.pages["mail"] = Mail(face)
    face.pages["compose"] = ComposePage(face)
