# -*- test-case-name: tests.test_web_mail -*-
"""
Reading a stored message for the web: its summary for a list row, its
parts for reading, and its anatomy (header fields raw and decoded, the
Received chain as hops, envelope against header, the MIME tree).

Messages stay bytes in the store (design rule 5); the C{email} package is
used here only to read their structure.
"""

from __future__ import annotations

import email
import email.policy
import re
import threading
from collections import OrderedDict
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import attr

# (the bounds of IMAP's own parse: one rule for both)
from twisted_mailhub.imap.message import MAX_NESTING, MAX_PARTS, has_broken_base64_word, too_many_parts  # noqa: F401

HEADER_PEEK = 16384  # octets read for a list row: the header, normally


# Characters a page shows as escapes instead of applying them (what the
# reader sees must be what the message says): C0 controls other than tab,
# DEL and the C1 controls as \xNN, as the live console shows control bytes;
# and the bidirectional embeddings, overrides and isolates (Unicode UAX #9:
# LRE RLE PDF LRO RLO, LRI RLI FSI PDI) as \u202e. Applied, those reorder
# the text around them: a file name "invoice<RLO>fdp.exe" reads
# "invoiceexe.pdf", a Subject or From can show a sender it is not.
_HIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def visible(text: str) -> str:
    """
    C{text} as a page shows it: control characters (but tab) as C{\\x1b},
    bidirectional formatting characters as C{\\u202e}, everything else as
    it is (see L{_HIDDEN}).
    """
    return _HIDDEN.sub(_shown, text) if _HIDDEN.search(text) else text


def visible_lines(text: str) -> str:
    """L{visible} for text of several lines: each line break (CRLF or LF) stays a line break."""
    return "\n".join(visible(line) for line in re.split(r"\r?\n", text)) if _HIDDEN.search(text) else text


def without_hidden(text: str) -> str:
    """C{text} with the characters L{visible} would escape left out (for names a browser saves a file under)."""
    return _HIDDEN.sub("", text)


@attr.s(auto_attribs=True, frozen=True)
class Summary:
    """One message list row: sender, subject and date as shown (L{shown}), attachment mark."""

    sender: str
    subject: str
    date: str
    has_attachment: bool


def _as_text(value: Any) -> str:
    """
    A header value as text: octets the parser kept as surrogate escapes
    (8-bit header bytes under compat32) read as UTF-8 (RFC 6532), those
    that are not UTF-8 as U+FFFD.
    """
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def field(msg: Any, name: str) -> str | None:
    """
    The first C{name} header field's value of C{msg} as sent (L{_as_text}:
    8-bit octets read as UTF-8, not the U+FFFD that compat32's C{get} gives
    for them); None when there is none.
    """
    found = field_all(msg, name)
    return found[0] if found else None


def field_all(msg: Any, name: str) -> list[str]:
    """Every C{name} header field's value of C{msg} as sent (L{field}), in order."""
    lower = name.lower()
    return [_as_text(v) for k, v in msg.raw_items() if k.lower() == lower]


def decoded(value: str | None) -> str:
    """
    An RFC 2047 header value decoded to text ('' for none); bad encodings
    stay as sent. Runs of white space are one space; control and
    bidirectional formatting characters are left in (see L{shown}).
    """
    if not value:
        return ""
    value = _as_text(value)
    try:
        if has_broken_base64_word(value):
            # A "B" word with octets no base64 has ("=?utf-8?B?%%%?="): the
            # standard decoder skips them and makes it "" (or a part of it);
            # it is as broken as one with bad padding, which raises below.
            raise HeaderParseError("not base64")
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        # (HeaderParseError: an encoded word whose base64 is broken,
        # "=?utf-8?B?!!!?=", which any sender can put in a Subject)
        text = value
    return " ".join(text.split())


def shown(value: str | None) -> str:
    """A header value as a page shows it: L{decoded}, then L{visible}."""
    return visible(decoded(value))


def summary(head: bytes) -> Summary:
    """The L{Summary} of a message from its first octets (the header)."""
    end = head.find(b"\r\n\r\n")
    header = head if end < 0 else head[: end + 2]
    msg = email.message_from_bytes(header, policy=email.policy.compat32)
    content_type = (field(msg, "Content-Type") or "").lower()
    attachment = "multipart/mixed" in content_type
    return Summary(shown(field(msg, "From")), shown(field(msg, "Subject")) or "(no subject)", shown(field(msg, "Date")), attachment)


# Parsed big messages, kept for the next page of the same message (its
# anatomy, then the message itself, then the anatomy again): the standard
# library's parser takes 1.3 s of CPU for a 43 MB message. Keyed by the
# caller's identity of the stored message (account, folder, UIDVALIDITY,
# UID, base name, size: a stored message never changes) and the policy;
# only messages of PARSE_CACHE_OVER octets or more (smaller ones parse in
# milliseconds); at most PARSE_CACHE_BYTES octets of them in all (a parsed
# message holds about its size; one with 8-bit octets up to four times:
# str of surrogates), the least recently used going first.
PARSE_CACHE_OVER = 1024 * 1024
PARSE_CACHE_BYTES = 64 * 1024 * 1024
_parsed: "OrderedDict[tuple, tuple[Any, int]]" = OrderedDict()
_parsed_bytes = [0]
_parsed_lock = threading.Lock()  # (pages are made in parsing threads)


def parse(raw: bytes, policy: Any = email.policy.compat32, identity: tuple | None = None) -> Any:
    """
    The message's structure (an L{email.message.Message}; compat32 policy
    by default: nothing rewritten). With C{identity} (what names the
    stored message C{raw} is, for good: see L{PARSE_CACHE_OVER}), a big
    message's structure is kept and given again for the same identity:
    the caller must not change it. A message whose parts nest deeper than
    IMAP takes apart (L{MAX_NESTING}, as Dovecot) comes back as its header
    over one opaque body: the standard library walks parts recursively,
    and 3,000 nested message/rfc822 parts were a RecursionError, a 500
    page and a traceback for a message anyone can send. So does a message
    with more than L{MAX_PARTS} lines that may start a part (the parser's
    time grows with the parts: seconds for a few thousand).
    """
    if identity is None or len(raw) < PARSE_CACHE_OVER:
        return _parse(raw, policy)
    key = (identity, len(raw), id(policy))
    with _parsed_lock:
        kept = _parsed.get(key)
        if kept is not None:
            _parsed.move_to_end(key)
            return kept[0]
    msg = _parse(raw, policy)
    cost = len(raw) if raw.isascii() else 4 * len(raw)
    if cost <= PARSE_CACHE_BYTES:
        with _parsed_lock:
            if key not in _parsed:
                while _parsed and _parsed_bytes[0] + cost > PARSE_CACHE_BYTES:
                    _parsed_bytes[0] -= _parsed.popitem(last=False)[1][1]
                _parsed[key] = (msg, cost)
                _parsed_bytes[0] += cost
    return msg


def _parse(raw: bytes, policy: Any) -> Any:
    """L{parse} without the cache."""
    if not too_many_parts(raw):
        try:
            msg = email.message_from_bytes(raw, policy=policy)
            if _nesting_within(msg, MAX_NESTING):
                return msg
        except RecursionError:  # the parser itself, deep enough in a busy stack
            pass
    for blank in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(blank)
        if end >= 0:
            head, body = raw[: end + len(blank)], raw[end + len(blank) :]
            break
    else:
        head, body = raw, b""
    shallow = email.message_from_bytes(head, policy=policy)
    shallow.set_payload(body.decode("ascii", "surrogateescape"))
    shallow.mailhub_opaque = True  # see L{opaque}
    return shallow


def opaque(msg: Any) -> bool:
    """Whether L{parse} left C{msg}'s body whole (too many parts, or nested too deep) instead of taking it apart."""
    return getattr(msg, "mailhub_opaque", False)


def _nesting_within(msg: Any, limit: int) -> bool:
    """Whether no part of C{msg} is nested more than C{limit} deep (looked at without recursion)."""
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > limit:
            return False
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if hasattr(p, "get_payload"))
    return True


def parts(msg: Any) -> list[Any]:
    """Every part in tree order; a part's number in URLs is its index here."""
    return list(msg.walk())


def _sent_filename(part: Any) -> str:
    """A part's decoded file name (RFC 2231 parameters or RFC 2047 words), its last path component, '' if none."""
    name = part.get_filename()
    if not name:
        name = part.get_param("name")
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    name = decoded(name) if name else ""
    return re.split(r"[/\\]", name)[-1]


def filename(part: Any) -> str:
    """
    A part's file name to save it under: decoded (RFC 2231 parameters or
    RFC 2047 words), the last path component, without control or
    bidirectional formatting characters, at most 200 characters; '' if none.
    """
    return without_hidden(_sent_filename(part))[:200]


def shown_filename(part: Any) -> str:
    """A part's file name as a page shows it: its hidden characters visible (L{visible}), at most 200 characters."""
    return visible(_sent_filename(part))[:200]


def is_attachment(part: Any) -> bool:
    if part.is_multipart():
        return False
    disposition = (field(part, "Content-Disposition") or "").lower()
    return disposition.startswith("attachment") or bool(filename(part)) and not part.get_content_type().startswith("text/")


def text_of(part: Any) -> str:
    """A text part decoded with its charset (UTF-8 when unknown, bad bytes replaced)."""
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def header_rows(msg: Any) -> list[tuple[str, str, str]]:
    """
    (name, raw value as sent, decoded value) for each header field, in
    order, as shown (L{visible}); a folded field's line breaks (RFC 5322
    §2.2.3) stay line breaks in the raw value.
    """
    rows = []
    for name, value in msg.raw_items():
        raw = _as_text(value)
        rows.append((visible(name), visible_lines(raw), shown(raw)))
    return rows


_RECEIVED = re.compile(r"from\s+(?P<from>.+?)\s+by\s+(?P<by>\S+)(?P<rest>.*)", re.S | re.I)


def received_hops(msg: Any) -> list[dict[str, str]]:
    """
    The C{Received:} chain, oldest hop first (RFC 5321 §4.4: each relay adds
    its line on top), each with from, by, with, id, for and time.
    """
    hops = []
    for value in reversed(field_all(msg, "Received")):
        text = " ".join(str(value).split())
        stamp = ""
        when = None
        if ";" in text:
            text, _, stamp = text.rpartition(";")
            try:
                when = parsedate_to_datetime(stamp.strip())
            except (TypeError, ValueError):
                when = None
        m = _RECEIVED.search(text)
        text, stamp = visible(text), visible(stamp)
        hop = {"from": "", "by": "", "with": "", "id": "", "for": "", "time": stamp.strip(), "raw": visible(" ".join(str(value).split()))}
        if m:
            hop["from"], hop["by"] = m.group("from"), m.group("by")
            rest = m.group("rest")
            for key in ("with", "id", "for"):
                found = re.search(rf"\b{key}\s+(\S+)", rest, re.I)
                if found:
                    hop[key] = found.group(1)
        hop["when"] = when
        hops.append(hop)
    return hops


def envelope_and_header(msg: Any) -> dict[str, str]:
    """The envelope (Return-Path, the RCPT from Received: for) beside header From/To, as shown (L{visible})."""
    rcpts = []
    for value in field_all(msg, "Received"):
        found = re.search(r"\bfor\s+<?([^>;\s]+)>?", str(value), re.I)
        if found:
            rcpts.append(found.group(1))
    return {
        "mail_from": visible((field(msg, "Return-Path") or "").strip()),
        "rcpt_to": visible(", ".join(dict.fromkeys(rcpts))),
        "from": shown(field(msg, "From")),
        "to": ", ".join(shown(v) for v in field_all(msg, "To")),
        "cc": ", ".join(shown(v) for v in field_all(msg, "Cc")),
    }


def part_info(part: Any, index: int, depth: int) -> dict[str, Any]:
    raw = part.get_payload() if not part.is_multipart() else ""
    raw_text = raw if isinstance(raw, str) else ""
    return {
        "index": index,
        "depth": depth,
        "type": visible(part.get_content_type()),
        "encoding": visible((field(part, "Content-Transfer-Encoding") or "7bit").strip().lower()),
        "charset": visible(part.get_content_charset() or ""),
        "size": len(raw_text.encode("utf-8", "surrogateescape")) if raw_text else 0,
        "filename": shown_filename(part),
        "multipart": part.is_multipart(),
    }


def tree(msg: Any) -> list[dict[str, Any]]:
    """The MIME tree, flattened in walk order with each part's depth."""
    out: list[dict[str, Any]] = []

    def visit(part, depth):
        out.append(part_info(part, len(out), depth))
        if part.is_multipart():
            for child in part.get_payload():
                visit(child, depth + 1)

    visit(msg, 0)
    return out


def mailboxes(value: str, bare: bool = False) -> list[tuple[str, str]]:
    """
    The mailboxes of a header value as (display name, address) pairs
    (RFC 5322 §3.4: '"Doe, John" <x@y>, z@w' -> [('Doe, John', 'x@y'),
    ('', 'z@w')]); with C{bare}, a local part alone ('bob') counts too
    (typed by hand).
    """
    return [(name, addr) for name, addr in getaddresses([value]) if "@" in addr or (bare and addr and " " not in addr)]


# RFC 5322 §3.2.3 specials: a display name holding one is a quoted-string.
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


def typed_mailboxes(boxes: Any, leave_out: Any = ()) -> str:
    """
    (display name, address) pairs as a person types them in a To or Cc
    box, for a reply's form: C{'"Doe, John" <john@x>, Jürgen <j@y>, z@w'},
    which L{mailboxes} reads back as the same pairs. Names are decoded
    (RFC 2047) with control and bidirectional formatting characters left
    out and runs of white space made one space; a name with a special
    (RFC 5322 §3.2.3) is quoted. Each address once (its first name wins),
    case aside; addresses in C{leave_out} (lower case) are left out.
    """
    seen = set(leave_out)
    out = []
    for name, address in boxes:
        if address.lower() in seen:
            continue
        seen.add(address.lower())
        name = " ".join(without_hidden(decoded(name)).split())
        if not name or name.lower() == address.lower():
            out.append(address)
            continue
        if _SPECIALS.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(f"{name} <{address}>")
    return ", ".join(out)


def addresses(value: str, bare: bool = False) -> list[str]:
    """The addresses of a header value ('a <x@y>, z@w' -> ['x@y', 'z@w']): L{mailboxes} without the names."""
    return [addr for _, addr in mailboxes(value, bare)]
