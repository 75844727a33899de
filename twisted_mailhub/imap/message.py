# -*- test-case-name: tests.test_imap_message -*-
"""
The structure of a stored message as IMAP shows it: MIME parts cut out of
the raw bytes, ENVELOPE, BODYSTRUCTURE and body sections (RFC 3501 §6.4.5,
§7.4.2).

Theory of operation: a message is parsed only when a FETCH asks for
structure. L{Part} splits raw bytes at the first empty line into header and
body, reads the header with the C{email} package (only to learn the
Content-* fields), and, for C{multipart/*}, cuts the body at the boundary
lines, so every part keeps its exact original octets: C{BODY[1.2]} returns
what the sender wrote, byte for byte, and sizes in BODYSTRUCTURE are octet
counts of those bytes. C{message/rfc822} parts hold their encapsulated
message as another L{Part}.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from typing import Iterable

_header_parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """
    (header including the empty line that ends it, body).
    """
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    i = raw.find(b"\r\n\r\n")
    if i < 0:
        j = raw.find(b"\n\n")
        if j < 0:
            return raw, b""
        return raw[: j + 2], raw[j + 2 :]
    return raw[: i + 4], raw[i + 4 :]


def quote(value: bytes | str | None) -> bytes:
    """
    An IMAP string: NIL, a quoted string, or a literal when it holds CR,
    LF or 8-bit octets (RFC 3501 §4.3).
    """
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if b"\r" in value or b"\n" in value or len(value) > 1000 or any(c > 126 for c in value):
        return b"{%d}\r\n" % len(value) + value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def header_text(value: str | None) -> str | None:
    """A header value unfolded into one line (RFC 5322 §2.2.3)."""
    if value is None:
        return None
    return _FOLD.sub("", str(value)).strip()


class Part:
    """
    One MIME entity of a message, cut from its raw bytes.

    @ivar header: the header octets, with the empty line that ends them.
    @ivar body: the body octets.
    @ivar children: sub-parts of a multipart.
    @ivar message: for message/rfc822, the encapsulated message.
    """

    def __init__(self, raw: bytes, default_type: str = "text/plain"):
        self.raw = raw
        self.header, self.body = split_header(raw)
        self.fields = _header_parser.parsebytes(self.header)
        if self.fields.get("content-type") is None:
            self.fields.set_default_type(default_type)
        self.maintype = self.fields.get_content_maintype()
        self.subtype = self.fields.get_content_subtype()
        self.children: list[Part] = []
        self.message: Part | None = None
        if self.maintype == "multipart":
            boundary = self.fields.get_param("boundary")
            child_default = "message/rfc822" if self.subtype == "digest" else "text/plain"
            if boundary:
                self.children = [Part(p, child_default) for p in _split_multipart(self.body, str(boundary).encode("utf-8", "surrogateescape"))]
        elif (self.maintype, self.subtype) == ("message", "rfc822"):
            self.message = Part(self.body)

    # -- sections (RFC 3501 §6.4.5) ---------------------------------------

    def get(self, name: str) -> str | None:
        return header_text(self.fields.get(name))

    def find(self, numbers: Iterable[int]) -> "Part":
        """
        The part a section number such as 1.2 names; KeyError if none.
        A non-multipart message has one part, 1: its own body.
        """
        part = self
        first = True
        for n in numbers:
            if not first and part.message is not None:
                part = part.message
            if part.children:
                if not 1 <= n <= len(part.children):
                    raise KeyError(n)
                part = part.children[n - 1]
            elif n != 1:
                raise KeyError(n)
            first = False
        return part

    def header_fields(self, names: list[str], negate: bool = False) -> bytes:
        """
        HEADER.FIELDS / HEADER.FIELDS.NOT: the matching header lines as
        they were written, then an empty line.
        """
        wanted = {n.lower() for n in names}
        out = []
        keep = False
        for line in self.header.splitlines(keepends=True):
            if line in (b"\r\n", b"\n"):
                break
            if line[:1] in (b" ", b"\t"):
                if keep:
                    out.append(line)
                continue
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            keep = (name in wanted) != negate
            if keep:
                out.append(line)
        return b"".join(out) + b"\r\n"

    # -- ENVELOPE and BODYSTRUCTURE (RFC 3501 §7.4.2) -----------------------

    def envelope(self) -> bytes:
        def addresses(name: str, default: str | None = None) -> bytes:
            values = self.fields.get_all(name) or ([] if default is None else self.fields.get_all(default) or [])
            pairs = email.utils.getaddresses([header_text(v) or "" for v in values])
            items = []
            for display, address in pairs:
                if not address and not display:
                    continue
                mailbox, _, host = address.rpartition("@") if "@" in address else (address, "", "")
                items.append(b"(" + b" ".join([quote(display or None), b"NIL", quote(mailbox or None), quote(host or None)]) + b")")
            return b"(" + b"".join(items) + b")" if items else b"NIL"

        fields = [
            quote(self.get("date")),
            quote(self.get("subject")),
            addresses("from"),
            addresses("sender", "from"),
            addresses("reply-to", "from"),
            addresses("to"),
            addresses("cc"),
            addresses("bcc"),
            quote(self.get("in-reply-to")),
            quote(self.get("message-id")),
        ]
        return b"(" + b" ".join(fields) + b")"

    def _params(self) -> bytes:
        params = self.fields.get_params(header="content-type") or []
        pairs = []
        for key, value in params[1:]:
            if isinstance(value, tuple):  # RFC 2231 value: keep it encoded as sent
                value = email.utils.encode_rfc2231(value[2], value[0], value[1])
            pairs += [quote(key.upper()), quote(email.utils.unquote(str(value)))]
        return b"(" + b" ".join(pairs) + b")" if pairs else b"NIL"

    def _disposition(self) -> bytes:
        value = self.fields.get("content-disposition")
        if value is None:
            return b"NIL"
        params = self.fields.get_params(header="content-disposition") or []
        if not params:
            return b"NIL"
        kind = params[0][0]
        rest = []
        for key, val in params[1:]:
            if isinstance(val, tuple):
                val = email.utils.encode_rfc2231(val[2], val[0], val[1])
            rest += [quote(key.upper()), quote(email.utils.unquote(str(val)))]
        return b"(" + quote(kind.upper()) + b" " + (b"(" + b" ".join(rest) + b")" if rest else b"NIL") + b")"

    def _language(self) -> bytes:
        value = self.get("content-language")
        return quote(value) if value else b"NIL"

    def bodystructure(self, extended: bool = True) -> bytes:
        if self.children or self.maintype == "multipart":
            inner = b"".join(c.bodystructure(extended) for c in self.children)
            if not inner:  # a multipart with no parts: show an empty text part
                inner = b'("TEXT" "PLAIN" NIL NIL NIL "7BIT" 0 0)'
            out = inner + b" " + quote(self.subtype.upper())
            if extended:
                out += b" " + b" ".join([self._params(), self._disposition(), self._language(), quote(self.get("content-location"))])
            return b"(" + out + b")"
        encoding = (self.get("content-transfer-encoding") or "7BIT").upper()
        fields = [
            quote(self.maintype.upper()),
            quote(self.subtype.upper()),
            self._params(),
            quote(self.get("content-id")),
            quote(self.get("content-description")),
            quote(encoding),
            b"%d" % len(self.body),
        ]
        if self.message is not None:
            fields += [self.message.envelope(), self.message.bodystructure(extended), b"%d" % _lines(self.body)]
        elif self.maintype == "text":
            fields.append(b"%d" % _lines(self.body))
        if extended:
            fields += [quote(self.get("content-md5")), self._disposition(), self._language(), quote(self.get("content-location"))]
        return b"(" + b" ".join(fields) + b")"


def _lines(body: bytes) -> int:
    return body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """
    The parts of a multipart body (RFC 2046 §5.1.1): the CRLF before a
    boundary line belongs to the boundary; preamble and epilogue are dropped.
    """
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    parts = []
    start = None
    for m in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])  # no closing boundary: the rest is the last part
    return parts
