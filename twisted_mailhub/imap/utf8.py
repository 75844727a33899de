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
 - Limits: the header of the top-level message is downgraded, not the
   headers of MIME parts; RFC822.SIZE stays the stored size (the index
   answers it without reading the message), so for such a message it
   differs from the length of the downgraded BODY[].
"""

from __future__ import annotations

import email.header
import email.utils

from twisted_mailhub.imap.message import split_header

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


def downgrade(raw: bytes) -> bytes:
    """
    The message as a session without UTF8=ACCEPT sees it: C{raw} itself
    when its header is ASCII, else with the header downgraded (see the
    module's rules).
    """
    end = raw.find(b"\r\n\r\n")
    if (raw if end < 0 else raw[:end]).isascii():
        return raw  # the usual case: one scan of the header, no copy of the message
    header, body = split_header(raw)
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
        else:
            name = b"Downgraded-" + name.strip()
            new = encoded_words(text, len(name) + 2)
        out.append(name + b": " + new + b"\r\n")
    return b"".join(out) + body


class Utf8Session:
    """The session's side of UTF8=ACCEPT (set by ENABLE: L{twisted_mailhub.imap.rev2}), mixed into the server."""

    utf8_accept = False  # ENABLE UTF8=ACCEPT sets it

    def message_view(self, raw: bytes) -> bytes:
        """A message's octets as this session may see them (the module's rules)."""
        if self.utf8_accept:
            return raw
        return downgrade(raw)
