# -*- test-case-name: tests.test_e2e_imap_binary -*-
"""
BINARY (RFC 3516): FETCH of a part with its content-transfer-encoding
undone. APPEND's literal8 lives in L{twisted_mailhub.imap.append}.

Rules:

 - C{BINARY[section]<partial>}, C{BINARY.PEEK[...]} and
   C{BINARY.SIZE[section]}: the section is part numbers only (C{1.2}), or
   empty for the whole message (RFC 3516 §4.1); HEADER, TEXT or MIME are a
   syntax error (BAD).
 - A part's body is decoded by its Content-Transfer-Encoding: base64 and
   quoted-printable are undone; 7bit, 8bit, binary (and none: 7bit, RFC
   2045 §6.1) are given as they are, as are multipart and message/rfc822
   parts (which only use identity encodings). BINARY[] is the message as
   stored.
 - Any other encoding (x-uuencode, a typo) cannot be decoded: the message's
   FETCH response is left out and the command ends C{NO [UNKNOWN-CTE]}
   (RFC 3516 §4.3).
 - The data goes out as a literal8 (C{~{n}}) when it holds a NUL, else as
   an ordinary literal, which RFC 3516 §4.2 allows. <partial> counts
   decoded octets; BINARY.SIZE is the decoded size.
 - BINARY (not .PEEK) sets C{\\Seen}, as BODY[] does (RFC 3516 §4.1).
"""

from __future__ import annotations

import binascii

from twisted_mailhub.imap.message import Part

IDENTITY = {"", "7bit", "8bit", "binary"}


class UnknownCTE(Exception):
    """A part's Content-Transfer-Encoding cannot be undone here; C{name} is what it says."""

    def __init__(self, name: str):
        Exception.__init__(self, name)
        self.name = name


def decoded_section(message: Part, numbers: tuple[int, ...]) -> bytes:
    """
    The decoded octets of the part C{numbers} names (empty: the whole
    message, as stored). KeyError if there is no such part;
    L{UnknownCTE} if its encoding is not known.
    """
    if not numbers:
        return message.raw
    part = message.find(numbers)
    if part.children or part.message is not None:
        return part.body
    encoding = (part.get("content-transfer-encoding") or "").strip().lower()
    if encoding in IDENTITY:
        return part.body
    if encoding == "base64":
        try:
            return binascii.a2b_base64(part.body)
        except binascii.Error:
            # Broken padding or stray octets: decode what can be decoded,
            # as mail readers do, rather than fail the FETCH.
            cleaned = bytes(c for c in part.body if c in _B64)
            return binascii.a2b_base64(cleaned[: len(cleaned) - len(cleaned) % 4])
    if encoding == "quoted-printable":
        return binascii.a2b_qp(part.body)
    raise UnknownCTE(encoding)


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def binary_literal(data: bytes) -> bytes:
    """C{~{n}} + data when data holds a NUL (literal8), else C{{n}} + data."""
    if b"\0" in data:
        return b"~{%d}\r\n" % len(data) + data
    return b"{%d}\r\n" % len(data) + data


def binary_field(message: Part, item) -> bytes:
    """
    The FETCH response item for a BINARY or BINARY.SIZE L{FetchItem}
    (L{twisted_mailhub.imap.fetch}): C{BINARY[1] {n}...} or
    C{BINARY.SIZE[1] n}. A part that does not exist is empty, as BODY[]
    answers; L{UnknownCTE} as L{decoded_section}.
    """
    try:
        data = decoded_section(message, item.numbers)
    except KeyError:
        data = b""
    if item.kind == b"BINARY.SIZE":
        return item.label + b" %d" % len(data)
    if item.partial is not None:
        start, length = item.partial
        data = data[start : start + length]
    return item.label + b" " + binary_literal(data)
