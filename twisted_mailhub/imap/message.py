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
import functools
import re
import urllib.parse
from typing import Iterable

from twisted_mailhub.imap.address import GroupEnd, GroupStart, parse_address_list

_header_parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_FOLD = re.compile(r"\r?\n(?=[ \t])")


# An RFC 2047 "B" encoded word and what its payload may be (RFC 2047 §4.1:
# the base64 alphabet of RFC 2045 §6.8, padding at the end).
_B_WORD = re.compile(r"=\?[^?\s]+\?[Bb]\?([^?\s]*)\?=")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def has_broken_base64_word(value: str) -> bool:
    """
    Whether header text C{value} holds a "B" encoded word whose payload has
    characters base64 has not (C{=?utf-8?B?%%%?=}). The standard decoder
    skips them and makes such a word "" (or a part of it), where one with
    bad padding raises: callers keep both kinds as sent.
    """
    return "?=" in value and any(not _BASE64.fullmatch(m.group(1)) for m in _B_WORD.finditer(value))


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


_LITERAL_ONLY = re.compile(rb"[\r\n\x7f-\xff]")


def quote(value: bytes | str | None) -> bytes:
    """
    An IMAP string: NIL, a quoted string, or a literal when it holds CR,
    LF or 8-bit octets (RFC 3501 §4.3).
    """
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    # (one search in C: a walk over the octets in Python was a fifth of
    # FETCH 1:* (ENVELOPE)'s time)
    if len(value) > 1000 or _LITERAL_ONLY.search(value) is not None:
        return b"{%d}\r\n" % len(value) + value
    if b"\\" in value or b'"' in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def header_text(value: str | None) -> str | None:
    """A header value unfolded into one line (RFC 5322 §2.2.3)."""
    if value is None:
        return None
    return _FOLD.sub("", str(value)).strip()


# How deep multiparts and encapsulated messages are taken apart (Dovecot's
# limit too); a part deeper than that is one opaque body.
MAX_NESTING = 100
# The MIME parts of one message taken apart at most (the default of
# Dovecot's message parser, MESSAGE_PARSER_DEFAULT_MAX_TOTAL_MIME_PARTS,
# beside its 100 levels). Lines starting "--" are counted, a bound from
# above of the parts, before anything is parsed (bytes.count: ~1 ms a
# MB): a message with more is one opaque body under its header. A
# 100,000-part message (~2 MB) held a parsing thread ~17 s. The web's
# pages (web/message.py) apply the same rule.
MAX_PARTS = 10000


# A header field's first line as the standard library's parser takes it
# (email.feedparser.headerRE, without its "From " and continuation cases).
_FIELD_LINE = re.compile(r"[\041-\071\073-\176]*:")


def _header_fields(header: bytes) -> list[tuple[str, str]] | None:
    """
    The fields of C{header} (octets up to and with the empty line) as
    (name, value as written), exactly as the standard library's header
    parser with the compat32 policy gives them (C{raw_items()}: 8-bit
    octets surrogate-escaped, folded lines kept with their CRLF, the last
    CRLF dropped), made without it (it was a third of FETCH 1:*
    (ENVELOPE)'s time); None for a header it must read itself: bare CR or
    LF line ends, a first line that is a continuation or a "From " line,
    or a line that is no field (which ends the header there).
    """
    if header.count(b"\n") != header.count(b"\r\n") or header.count(b"\r") != header.count(b"\n"):
        return None
    text = header.decode("ascii", "surrogateescape")
    lines = text.split("\r\n")
    # (the header ends with the empty line: "...\r\n\r\n", or is just "\r\n")
    if len(lines) < 2 or lines[-1] != "" or lines[-2] != "":
        return None
    del lines[-2:]
    fields: list[tuple[str, str]] = []
    match = _FIELD_LINE.match
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                return None
            name, value = fields[-1]
            fields[-1] = (name, value + "\r\n" + line)
            continue
        if line.startswith("From ") or match(line) is None:
            return None
        name, _, value = line.partition(":")
        if not name:
            return None
        fields.append((name, value.lstrip(" \t")))
    return fields


# An address list's ENVELOPE structure, kept by its header text: the same
# senders and recipients come again and again in a folder (the parse was
# half of a cold FETCH 1:* (ENVELOPE)); texts up to ADDRESS_CACHE_TEXT
# characters, ADDRESS_CACHE of them (at most ~10 MB with their structures).
ADDRESS_CACHE = 4096
ADDRESS_CACHE_TEXT = 1000


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _address_structure(text: str) -> bytes:
    """The ENVELOPE address structure (RFC 3501 §7.4.2) of the address list C{text}: NIL for none."""
    out = []
    for item in parse_address_list(text):
        if isinstance(item, GroupStart):
            out.append(b"(NIL NIL " + quote(item.name) + b" NIL)")
        elif isinstance(item, GroupEnd):
            out.append(b"(NIL NIL NIL NIL)")
        else:
            out.append(b"(" + b" ".join([quote(item.name), quote(item.route), quote(item.local), quote(item.domain)]) + b")")
    return b"(" + b"".join(out) + b")" if out else b"NIL"


def too_many_parts(raw: bytes) -> bool:
    """Whether C{raw} may hold more than L{MAX_PARTS} MIME parts (more lines that start with C{--})."""
    return raw.count(b"\n--") > MAX_PARTS


class Part:
    """
    One MIME entity of a message, cut from its raw bytes.

    @ivar header: the header octets, with the empty line that ends them.
    @ivar body: the body octets.
    @ivar children: sub-parts of a multipart.
    @ivar message: for message/rfc822 and message/global, the encapsulated message.
    """

    def __init__(self, raw: bytes, default_type: str = "text/plain", depth: int = 0):
        self.raw = raw
        self.depth = depth
        self.header, self.body = split_header(raw)
        # (checked once, at the top: the parts within hold fewer lines)
        opaque = depth == 0 and too_many_parts(raw)
        fields = _header_fields(self.header)
        if fields is None:
            fields = list(_header_parser.parsebytes(self.header).raw_items())
        self._fields = fields  # [(name, value as written)]
        self._by_name: dict[str, list[str]] | None = None
        ctype, self.type_params = parse_parameters(self.get("content-type") or "")
        maintype, _, subtype = ctype.lower().partition("/")
        if not _is_token(maintype) or not _is_token(subtype):
            # Missing or malformed: the default of RFC 2045 §5.2 (or
            # message/rfc822 inside a multipart/digest, RFC 2046 §5.1.5).
            maintype, _, subtype = default_type.partition("/")
        if (depth >= MAX_NESTING or opaque) and (maintype == "multipart" or maintype == "message"):
            # As Dovecot's parser does at its limit (100): what is nested
            # deeper is one opaque part. 3,000 nested message/rfc822 parts
            # raised RecursionError: the connection dropped with no reply.
            maintype, subtype = "application", "octet-stream"
            self.type_params = []
        self.maintype, self.subtype = maintype, subtype
        self._children: list[Part] | None = None
        self._message: Part | None | bool = False  # False: not looked at yet

    # Sub-parts are cut and parsed when first asked for: ENVELOPE and the
    # header sections need only the top header.

    @property
    def children(self) -> "list[Part]":
        """The parts of a multipart (RFC 2046 §5.1), in order; [] for any other type."""
        if self._children is None:
            children: list[Part] = []
            if self.maintype == "multipart":
                boundary = parameter_value(self.type_params, "boundary")
                child_default = "message/rfc822" if self.subtype == "digest" else "text/plain"
                if boundary:
                    children = [Part(p, child_default, self.depth + 1) for p in _split_multipart(self.body, boundary.encode("utf-8", "surrogateescape"))]
            self._children = children
        return self._children

    @property
    def message(self) -> "Part | None":
        """For message/rfc822 and message/global, the encapsulated message; else None."""
        if self._message is False:
            # message/global (RFC 6532 §3.7) is built like message/rfc822
            # (RFC 9051 §7.5.2: both show envelope, structure and lines).
            self._message = Part(self.body, depth=self.depth + 1) if self.maintype == "message" and self.subtype in ("rfc822", "global") else None
        return self._message

    # -- sections (RFC 3501 §6.4.5) ---------------------------------------

    def get(self, name: str) -> str | None:
        """
        The first NAME field's value unfolded, or None. 8-bit octets (an
        RFC 6532 UTF-8 header) come back as the parser read them
        (surrogate-escaped), so L{quote} gives back the very octets:
        compat32's C{get} would turn them into U+FFFD.
        """
        values = self.raw_all(name)
        return header_text(values[0]) if values else None

    def raw_all(self, name: str) -> list[str]:
        """Every NAME field's value as written (str, 8-bit octets surrogate-escaped), in order."""
        by_name = self._by_name
        if by_name is None:
            # (one pass over the fields: ENVELOPE asks for ten names)
            by_name = self._by_name = {}
            for k, v in self._fields:
                by_name.setdefault(k.lower(), []).append(v)
        return by_name.get(name.lower(), [])

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
        """ENVELOPE (RFC 3501 §7.4.2)."""

        def addresses(name: str) -> bytes:
            values = self.raw_all(name)
            if not values:
                return b"NIL"
            text = ", ".join(header_text(v) or "" for v in values)
            return _address_structure(text) if len(text) <= ADDRESS_CACHE_TEXT else _address_structure.__wrapped__(text)

        from_text = addresses("from")
        # An empty or missing Sender or Reply-To is From (RFC 3501 §7.4.2).
        sender = addresses("sender")
        reply_to = addresses("reply-to")
        fields = [
            quote(self.get("date")),
            quote(self.get("subject")),
            from_text,
            sender if sender != b"NIL" else from_text,
            reply_to if reply_to != b"NIL" else from_text,
            addresses("to"),
            addresses("cc"),
            addresses("bcc"),
            quote(self.get("in-reply-to")),
            quote(self.get("message-id")),
        ]
        return b"(" + b" ".join(fields) + b")"

    @staticmethod
    def _param_list(params: list[tuple[str, str]]) -> bytes:
        pairs = []
        for key, value in params:
            pairs += [quote(key.upper()), quote(value)]
        return b"(" + b" ".join(pairs) + b")" if pairs else b"NIL"

    def _params(self) -> bytes:
        return self._param_list(self.type_params)

    def _disposition(self) -> bytes:
        value = self.get("content-disposition")
        if not value:
            return b"NIL"
        kind, params = parse_parameters(value)
        if not kind:
            return b"NIL"
        return b"(" + quote(kind.upper()) + b" " + self._param_list(params) + b")"

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


# -- MIME parameters (RFC 2045 §5.1, RFC 2231) -----------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")
_SECTION = re.compile(r"(.*?)\*(\d+)(\*?)\Z|(.*?)(\*)\Z")


def _is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


def _split_outside_quotes(text: str) -> list[str]:
    """C{text} cut at C{;} outside quoted strings, comments removed."""
    pieces, current = [], []
    i, n, depth = 0, len(text), 0
    while i < n:
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            current.append(text[i : j + 1])
            i = j
        elif c == "(":
            depth = 1
        elif c == ";":
            pieces.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        end = len(value) - 1 if value.endswith('"') and len(value) > 1 else len(value)
        return re.sub(r"\\(.)", r"\1", value[1:end])
    return value


def parse_parameters(value: str) -> tuple[str, list[tuple[str, str]]]:
    """
    A Content-Type or Content-Disposition value, unfolded, as (the value
    before the first C{;}, [(attribute, value), ...]). Quoted values are
    unquoted, comments dropped. RFC 2231 continuations (C{name*0},
    C{name*1*}, ...) are joined into one parameter: C{name} when no part
    was extended, else C{name*} with the value still %-encoded after its
    C{charset'language'} prefix, as it was sent (Dovecot does the same).
    Attribute names are lowered.
    """
    pieces = _split_outside_quotes(header_text(value) or "")
    head = "".join(pieces[0].split())
    params: list[tuple[str, str]] = []
    sections: dict[str, list[tuple[int, bool, str]]] = {}
    for piece in pieces[1:]:
        attribute, eq, raw = piece.partition("=")
        attribute = attribute.strip().lower()
        if not eq or not attribute:
            continue
        raw = _unquote(raw)
        m = _SECTION.match(attribute)
        if m and m.group(2) is not None:
            name = m.group(1)
            if name not in sections:
                params.append((name, ""))  # its place in the order
            sections.setdefault(name, []).append((int(m.group(2)), bool(m.group(3)), raw))
        else:
            params.append((attribute, raw))
    if sections:
        joined = []
        for name, value in params:
            parts = sections.get(name)
            if parts is None or value:
                joined.append((name, value))
                continue
            parts.sort()
            if any(extended for _, extended, _ in parts):
                text = ""
                for index, extended, piece in parts:
                    if not extended:
                        piece = urllib.parse.quote(piece, safe="")
                        if index == 0:
                            piece = "''" + piece
                    text += piece
                joined.append((name + "*", text))
            else:
                joined.append((name, "".join(piece for _, _, piece in parts)))
        params = joined
    return head, params


def parameter_value(params: list[tuple[str, str]], name: str) -> str | None:
    """The decoded value of one parameter (RFC 2231 %-encoding undone)."""
    for key, value in params:
        if key == name:
            return value
        if key == name + "*":
            charset, _, rest = value.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                return urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
            except LookupError:
                return urllib.parse.unquote(encoded, errors="replace")
    return None
