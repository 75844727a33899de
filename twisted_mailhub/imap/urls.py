# -*- test-case-name: tests.test_e2e_imap_append -*-
"""
IMAP URLs (RFC 5092) as CATENATE (RFC 4469 §5) uses them: a message, or
a section of one, in one of the logged-in user's own mailboxes.

Rules:

 - Forms taken: C{imap://[user@]host[:port]/mailbox[;UIDVALIDITY=n]/;UID=n
   [/;SECTION=s][/;PARTIAL=o[.l]]}, the same from C{/mailbox} on (an
   absolute path on this server), and C{;UID=n...} alone, relative to the
   selected mailbox (RFC 3986 §5.2 against the selected mailbox's URL).
   Parameter names are case-insensitive; the mailbox is %-escaped UTF-8
   (RFC 5092 §3.3, §9).
 - Only this user's mailboxes on this server: a C{user} other than the
   login's name or local part, a host that is not this hub's name or a
   loopback name, URLAUTH (RFC 4467), a wrong UIDVALIDITY, a missing message
   or a section that does not exist all raise L{BadURL}, which the command
   answers C{NO [BADURL url]} (RFC 4469 §6).
 - Reading a URL never sets C{\\Seen} (it is a BODY.PEEK, RFC 5092 §6).
 - A C{;SECTION=} of a message costly to take apart (thousands of MIME
   parts, over 1 MiB: L{twisted_mailhub.imap.fetch.costly_to_parse}) is
   cut out in a parsing thread, as FETCH's sections are; the reactor
   serves every other client meanwhile.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.mail import imap4

from twisted_mailhub.imap.fetch import STREAM_OVER, costly_to_parse, parse_fetch_items, section_bytes
from twisted_mailhub.imap.message import Part
from twisted_mailhub.imap.wire import mailbox_name
from twisted_mailhub.offload import DetachedBodies, in_thread, read_in_thread
from twisted_mailhub.store.interfaces import NoSuchMessage, StoreError

_LOOPBACK = {"localhost", "127.0.0.1", "[::1]", "::1"}


class BadURL(Exception):
    """The URL cannot be read here; C{url} is the text as sent (bytes), C{why} says why."""

    def __init__(self, url: bytes, why: str):
        Exception.__init__(self, why)
        self.url = url
        self.why = why


class ImapURL:
    """A parsed IMAP URL: C{mailbox} (None: the selected one), C{uidvalidity}, C{uid}, C{section} (bytes), C{partial} ((offset, length or None) or None)."""

    def __init__(self) -> None:
        self.mailbox: str | None = None
        self.uidvalidity: int | None = None
        self.uid = 0
        self.section = b""
        self.partial: tuple[int, int | None] | None = None


def parse_url(raw: bytes, user: str | None, hostnames: set[str]) -> ImapURL:
    """
    An IMAP URL for CATENATE. C{user} is the login address; C{hostnames}
    the names that mean this server. Raises L{BadURL}.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadURL(raw, "an IMAP URL is ASCII (RFC 5092 section 9)") from None
    url = ImapURL()
    if text[:7].lower() == "imap://":
        authority, slash, path = text[7:].partition("/")
        if not slash:
            raise BadURL(raw, "the URL names no mailbox")
        who, at, host = authority.rpartition("@")
        if at:
            name = unquote_to_bytes(who.split(";", 1)[0]).decode("utf-8", "replace")
            local = (user or "").partition("@")[0]
            if name.lower() not in {(user or "").lower(), local.lower()}:
                raise BadURL(raw, "a URL may only name the logged-in user's own mailboxes")
            if ";" in who:
                raise BadURL(raw, "URLAUTH and AUTH= in URLs are not supported")
        host = host.lower()
        if host.startswith("["):
            host = host.partition("]")[0] + "]"
        else:
            host = host.partition(":")[0]
        if host not in hostnames and host not in _LOOPBACK:
            raise BadURL(raw, "the URL names another server")
        text = "/" + path
    if text.startswith("/"):
        mailbox, sep, rest = text[1:].partition("/;")
        if not sep:
            raise BadURL(raw, "the URL names no message (/;UID=n)")
        mailbox, _, validity = mailbox.partition(";")
        if validity:
            m = re.fullmatch(r"(?i)UIDVALIDITY=(\d{1,10})", validity)
            if not m:
                raise BadURL(raw, "bad ;UIDVALIDITY=")
            url.uidvalidity = int(m.group(1))
        try:
            url.mailbox = unquote_to_bytes(mailbox).decode("utf-8")
        except UnicodeDecodeError:
            raise BadURL(raw, "the mailbox name in a URL is %-escaped UTF-8") from None
        text = ";" + rest
    elif not text[:1] == ";":
        raise BadURL(raw, "not an IMAP URL")
    pos = 0
    seen: set[str] = set()
    for part in text.split("/"):
        m = re.fullmatch(r";([A-Za-z]+)=(.*)", part)
        if not m:
            raise BadURL(raw, "bad URL part " + repr_free(part))
        key, value = m.group(1).upper(), unquote_to_bytes(m.group(2))
        if key in seen or key not in ("UID", "SECTION", "PARTIAL", "URLAUTH", "EXPIRE"):
            raise BadURL(raw, "unexpected ;" + key + "=")
        seen.add(key)
        if key == "UID":
            if pos != 0 or not re.fullmatch(rb"[1-9]\d{0,9}", value):
                raise BadURL(raw, ";UID= wants a number and comes first")
            url.uid = int(value)
        elif key == "SECTION":
            url.section = value
        elif key == "PARTIAL":
            m2 = re.fullmatch(rb"(\d{1,10})(?:\.([1-9]\d{0,9}))?", value)
            if not m2:
                raise BadURL(raw, ";PARTIAL= wants offset[.length]")
            url.partial = (int(m2.group(1)), int(m2.group(2)) if m2.group(2) else None)
        else:
            raise BadURL(raw, "URLAUTH (RFC 4467) is not supported")
        pos += 1
    if not url.uid:
        raise BadURL(raw, "the URL names no message (;UID=n)")
    return url


def repr_free(text: str) -> str:
    return '"' + "".join(c if 32 <= ord(c) < 127 else "?" for c in text[:40]) + '"'


def read_url(server: Any, raw: bytes) -> bytes | defer.Deferred:
    """
    The octets an IMAP URL names, read for the session C{server} (an
    L{twisted_mailhub.imap.server.IMAPServer}). Raises L{BadURL}. A
    C{;SECTION=} of a message L{costly_to_parse} is cut out in a parsing
    thread (L{twisted_mailhub.offload}), as FETCH does: then a L{Deferred}
    that fires with the octets or fails with L{BadURL}.
    """
    data, url = _message_of(server, raw)
    if isinstance(data, defer.Deferred):
        # A big message in a file: read in the thread, cut out there too.
        return data.addCallback(lambda whole: url_octets(raw, whole, url))
    if url.section and costly_to_parse(data):
        return in_thread(url_octets, raw, data, url)
    return url_octets(raw, data, url)


def _message_of(server: Any, raw: bytes) -> tuple[bytes | defer.Deferred, ImapURL]:
    """
    (the whole message the URL C{raw} names, the parsed URL): the store's
    part, in the reactor; one of L{STREAM_OVER} octets or more that the
    store keeps in a file is opened here and read in a parsing thread
    (then a L{Deferred} of its octets).
    """
    user = getattr(server.account, "address", None)
    url = parse_url(raw, user, {server.hub.hostname.lower()})
    if url.mailbox is None:
        if server.selected is None:
            raise BadURL(raw, "a relative URL needs a selected mailbox")
        folder = server.selected.folder
    else:
        try:
            folder = server._store().folder(mailbox_name(url.mailbox, utf8=True))
        except (StoreError, imap4.IllegalMailboxEncoding, OSError):
            raise BadURL(raw, "no such mailbox") from None
    if url.uidvalidity is not None and url.uidvalidity != folder.uid_validity:
        raise BadURL(raw, "the mailbox's UIDVALIDITY is not the URL's")
    try:
        if folder.info(url.uid).size >= STREAM_OVER or DetachedBodies.possible(folder):
            # (Maildir's big file; any PostgreSQL blob, read on the store's
            # own connections: the reactor never waits for the database)
            waited = read_in_thread(folder, url.uid, in_thread)
            if waited is not None:
                return waited.addErrback(_gone, raw), url
        return folder.read(url.uid), url
    except (NoSuchMessage, StoreError, OSError):
        raise BadURL(raw, "no such message") from None


def _gone(reason: Any, raw: bytes) -> Any:
    """A message read in a thread was gone: L{BadURL}, as when it is found gone here (a database lost stays L{StoreUnavailable})."""
    if reason.check(NoSuchMessage):
        raise BadURL(raw, "no such message")
    return reason


def url_octets(raw: bytes, data: bytes, url: ImapURL) -> bytes:
    """
    The section and partial range of the message C{data} that C{url}
    (sent as C{raw}) names. Touches nothing but its arguments: it may run
    in a parsing thread. Raises L{BadURL}.
    """
    if url.section:
        try:
            item = parse_fetch_items(b"BODY.PEEK[" + url.section + b"]")[0]
        except imap4.IllegalClientResponse:
            raise BadURL(raw, "bad ;SECTION=") from None
        part = Part(data)
        if item.numbers:
            try:
                part.find(item.numbers)
            except KeyError:
                raise BadURL(raw, "the message has no such section") from None
        data = section_bytes(part, item)
    if url.partial is not None:
        offset, length = url.partial
        data = data[offset:] if length is None else data[offset : offset + length]
    return data
