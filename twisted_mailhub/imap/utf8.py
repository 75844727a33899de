# -*- test-case-name: tests.test_e2e_imap_utf8 -*-
"""
UTF8=ACCEPT (RFC 6855): internationalized mail (SMTPUTF8, RFC 6531) for the
clients that say they take it, and a downgraded view for the others.

Rules:

 - C{ENABLE UTF8=ACCEPT} (RFC 6855 §3) turns the session's mailbox names
   into UTF-8 both ways (no modified UTF-7: C{&} is just an ampersand)
   and allows APPEND's C{UTF8 (~{n})} data item (§4,
   L{twisted_mailhub.imap.append}). C{ENABLE IMAP4rev2} does the same for
   mailbox names (RFC 9051 §5.1).
 - A message whose header holds 8-bit octets (UTF-8 headers of SMTPUTF8
   mail) is given as stored only to a session that enabled UTF8=ACCEPT.
   Every other session gets it downgraded (RFC 6857 §3, the parts that
   apply to a header): an unstructured field's value becomes RFC 2047
   encoded-words; in an address field a display name becomes an
   encoded-word, a UTF-8 domain its IDNA A-label, and an address whose
   local part is UTF-8 an empty group named by the encoded address
   (C{=?utf-8?b?...?= :;}); any other field is renamed
   C{Downgraded-Name:} with its value encoded. ENVELOPE, BODY[HEADER...],
   RFC822.HEADER and BODY[] are all built from that view, so no quoted
   string or header ever carries raw 8-bit to such a client.
 - Every header is downgraded: the message's, each MIME part's and
   each encapsulated message's (message/rfc822 and message/global),
   at any depth up to L{MAX_DEPTH}; in Content-Type and
   Content-Disposition a UTF-8 parameter value becomes an RFC 2231 one
   (C{filename*=utf-8''%..}) rather than a renamed field, so the part
   keeps its type and name. Bodies are never touched.
 - RFC822.SIZE is the length of what the session gets: a message the
   downgrade changes is stored (Maildir) with that length in its name
   (C{,D=n} beside C{S=n}, L{shown_size_field}), so FETCH 1:* RFC822.SIZE
   still reads no message; L{shown_sizes} keeps them per folder. Such a
   message is never streamed raw to a session without UTF8=ACCEPT.
 - The PostgreSQL and memory stores keep that size in the message's row
   or record (C{downgraded_sizes()}); PostgreSQL rows stored before schema
   version 3 have none and count the stored size.
"""

from __future__ import annotations

import email.header
import email.utils
import re
import urllib.parse
import weakref
from typing import Any

from twisted_mailhub.imap.message import parameter_value, parse_parameters, split_header
from twisted_mailhub.store.interfaces import StoreError

ADDRESS_FIELDS = {b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc", b"return-path", b"delivered-to"}
UNSTRUCTURED_FIELDS = {b"subject", b"comments", b"keywords", b"content-description", b"thread-topic"}


def encoded_words(text: str, name_length: int = 0) -> bytes:
    """C{text} as RFC 2047 encoded-words (ASCII as it is), folded with CRLF SP."""
    if text.isascii():
        return text.encode("ascii")
    encoded = email.header.Header(text, "utf-8", header_name="x" * name_length).encode(linesep="\r\n")
    return encoded.encode("ascii")


def _domain(domain: str) -> str | None:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def downgrade_addresses(value: str) -> bytes:
    """An address field's value with nothing but ASCII (RFC 6857 §3.1)."""
    out = []
    for name, address in email.utils.getaddresses([value]):
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        ascii_domain = _domain(domain) if domain else ""
        if not local.isascii() or ascii_domain is None:
            # RFC 6857 §3.1.10: an address no ASCII form can carry becomes
            # an empty group whose name is the encoded original.
            whole = (name + " <" + address + ">") if name else address
            out.append(encoded_words(whole).replace(b"\r\n ", b" ") + b" :;")
            continue
        shown_address = local + ("@" + ascii_domain if domain else "")
        if name:
            out.append(encoded_words(name).replace(b"\r\n ", b" ") + b" <" + shown_address.encode("ascii") + b">" if not name.isascii() else email.utils.formataddr((name, shown_address)).encode("ascii"))
        else:
            out.append(shown_address.encode("ascii"))
    return b", ".join(out)


def _fields(header: bytes) -> list[bytes]:
    """The header's fields, each with its continuation lines, CRLFs kept."""
    fields: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


MIME_FIELDS = {b"content-type", b"content-disposition"}
MAX_DEPTH = 32  # MIME nesting followed (a message of nested parts past it is left as it is deeper down)


def _parameter(name: str, value: str) -> str:
    """One MIME parameter in ASCII: quoted, or RFC 2231 C{name*=utf-8''%..} for a UTF-8 value (RFC 6857 §3.2)."""
    if name.endswith("*"):
        return name + "=" + value  # already RFC 2231, as sent (ASCII)
    if value.isascii():
        return name + '="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name + "*=utf-8''" + urllib.parse.quote(value, safe="")


def _downgrade_mime(text: str) -> bytes:
    """A Content-Type or Content-Disposition value with UTF-8 parameters as RFC 2231 ones."""
    head, params = parse_parameters(text)
    out = [head.encode("ascii", "replace").replace(b"?", b"")] + [_parameter(name, value).encode("ascii") for name, value in params]
    return b"; ".join(out)


def downgrade_header(header: bytes) -> bytes:
    """One header block (the empty line that ends it included) in ASCII (RFC 6857 §3; see the module's rules)."""
    if header.isascii():
        return header
    out = []
    for field in _fields(header):
        if field.isascii() or field.strip() == b"":
            out.append(field)
            continue
        name, colon, value = field.partition(b":")
        if not colon:
            continue  # not a field at all: dropped, it cannot be shown in ASCII
        text = b" ".join(value.split()).decode("utf-8", "replace")
        key = name.strip().lower()
        if key in ADDRESS_FIELDS:
            new = downgrade_addresses(text)
        elif key in UNSTRUCTURED_FIELDS:
            new = encoded_words(text, len(name) + 2)
        elif key in MIME_FIELDS:
            new = _downgrade_mime(text)
        else:
            name = b"Downgraded-" + name.strip()
            new = encoded_words(text, len(name) + 2)
        out.append(name + b": " + new + b"\r\n")
    return b"".join(out)


def _content_type(header: bytes) -> tuple[str, bytes | None]:
    """(type/subtype in lower case or "", multipart boundary) of one header block."""
    for field in _fields(header):
        name, colon, value = field.partition(b":")
        if colon and name.strip().lower() == b"content-type":
            ctype, params = parse_parameters(b" ".join(value.split()).decode("utf-8", "replace"))
            boundary = parameter_value(params, "boundary")
            return ctype.lower(), boundary.encode("utf-8", "surrogateescape") if boundary else None
    return "", None


def _downgrade_entity(raw: bytes, default_type: str, depth: int) -> bytes:
    """One MIME entity with its header and every nested header downgraded; all other octets kept (C{raw} itself when nothing changes)."""
    if raw.isascii():
        return raw
    header, body = split_header(raw)
    new_header = downgrade_header(header)
    new_body = body
    if depth < MAX_DEPTH and not body.isascii():
        ctype, boundary = _content_type(header)
        ctype = ctype or default_type
        if ctype.startswith("multipart/") and boundary:
            new_body = _downgrade_parts(body, boundary, "message/rfc822" if ctype == "multipart/digest" else "text/plain", depth)
        elif ctype in ("message/rfc822", "message/global"):
            new_body = _downgrade_entity(body, "text/plain", depth + 1)  # the encapsulated message's header too
    if new_header is header and new_body is body:
        return raw
    return new_header + new_body


def _downgrade_parts(body: bytes, boundary: bytes, child_default: str, depth: int) -> bytes:
    """A multipart body with each part downgraded (L{_downgrade_entity}); preamble, delimiters and epilogue kept; C{body} itself when no part changes."""
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    pieces: list[bytes] = []
    changed = False
    start = None  # where the current part begins
    done = 0  # what is in pieces already
    for m in delimiter.finditer(body):
        if start is not None:
            part = body[start : m.start()]
            new = _downgrade_entity(part, child_default, depth + 1)
            changed = changed or new is not part
            pieces += [body[done:start], new]
            done = m.start()
        start = None if m.group(1) else m.end()
        if start is None:
            break
    if start is not None:  # no closing delimiter: the rest is the last part
        part = body[start:]
        new = _downgrade_entity(part, child_default, depth + 1)
        changed = changed or new is not part
        pieces += [body[done:start], new]
        done = len(body)
    if not changed:
        return body
    pieces.append(body[done:])
    return b"".join(pieces)


def downgrade(raw: bytes) -> bytes:
    """
    The message as a session without UTF8=ACCEPT sees it: C{raw} itself
    when it is all ASCII or only its bodies hold 8-bit octets, else with
    every header that holds them downgraded, the top-level one and those
    of MIME parts and encapsulated messages (see the module's rules).
    """
    if raw.isascii():
        return raw  # the usual case: one scan, no copy of the message
    return _downgrade_entity(raw, "text/plain", 0)


def needs_downgrade(raw: bytes) -> bool:
    """Would L{downgrade} change these octets?"""
    return not raw.isascii() and downgrade(raw) != raw


SHOWN_SIZE_FIELD = ",D="  # in a Maildir base name: the size as downgraded (store/maildir.py)
_shown: "weakref.WeakKeyDictionary[Any, tuple[int, dict[int, int]]]" = weakref.WeakKeyDictionary()


def shown_size_field(message: bytes) -> str:
    """
    C{",D=<octets>"} for a message L{downgrade} changes (its size as a
    session without UTF8=ACCEPT sees it, kept in its Maildir name as
    C{S=} keeps the stored size), else C{""}. One scan for ASCII mail.
    """
    if message.isascii():
        return ""
    shown = downgrade(message)
    return "" if shown == message else SHOWN_SIZE_FIELD + str(len(shown))


def _size_in_name(key: str) -> int | None:
    i = key.find(SHOWN_SIZE_FIELD)
    if i < 0:
        return None
    digits = key[i + len(SHOWN_SIZE_FIELD) :].split(",", 1)[0].split(":", 1)[0]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def shown_sizes(folder: Any) -> dict[int, int]:
    """
    UID -> size as a session without UTF8=ACCEPT sees the message, for the
    messages of C{folder} whose name carries it (L{shown_size_field});
    usually empty. Kept per folder and brought up to date from the UIDs
    given since the last look (a message's name never gains the field
    later), so a FETCH pays a dictionary look-up only when there is one.
    Only for a folder that keeps the field in its names
    (C{shown_sizes_in_names}, the Maildir store), or one that keeps the
    sizes in its rows and gives them (C{downgraded_sizes()}: PostgreSQL,
    memory); others give C{{}} and are never asked for anything (the
    PostgreSQL store's C{uid_next} is a query).
    """
    kept = getattr(folder, "downgraded_sizes", None)
    if kept is not None:
        return kept()  # (a store that keeps them in its rows: PostgreSQL, memory)
    if not getattr(folder, "shown_sizes_in_names", False):
        return {}
    listing = getattr(folder, "listing", None)
    uid_next = getattr(folder, "uid_next", None)
    if listing is None or uid_next is None:
        return {}
    known = _shown.get(folder)
    if known is not None and known[0] == uid_next:
        return _with_kept(folder, known[1])
    if known is not None and uid_next - known[0] <= 1000:
        sizes = known[1]
        for uid in range(known[0], uid_next):
            try:
                size = _size_in_name(folder.info(uid).key)
            except (StoreError, OSError):
                continue
            if size is not None:
                sizes[uid] = size
    else:
        uids, _, keys = listing()
        sizes = {}
        for uid, key in zip(uids, keys):
            if SHOWN_SIZE_FIELD in key:
                size = _size_in_name(key)
                if size is not None:
                    sizes[uid] = size
    _shown[folder] = (uid_next, sizes)
    return _with_kept(folder, sizes)


def _with_kept(folder: Any, sizes: dict[int, int]) -> dict[int, int]:
    """C{sizes} and the sizes as downgraded the Maildir store found at a check of a file listed on trust (not in its name)."""
    kept = getattr(folder, "kept_shown_sizes", None)
    extra = kept() if kept is not None else None
    return {**sizes, **extra} if extra else sizes


class Utf8Session:
    """The session's side of UTF8=ACCEPT (set by ENABLE: L{twisted_mailhub.imap.rev2}), mixed into the server."""

    utf8_accept = False  # ENABLE UTF8=ACCEPT sets it

    def message_view(self, raw: bytes) -> bytes:
        """A message's octets as this session may see them (the module's rules)."""
        if self.utf8_accept:
            return raw
        return downgrade(raw)
