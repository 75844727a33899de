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
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import attr

from twisted_mailhub.imap.message import MAX_NESTING

HEADER_PEEK = 16384  # octets read for a list row: the header, normally
# The MIME parts of one message taken apart at most (the default bound of
# Dovecot's message parser, beside its 100 levels); lines starting "--"
# are counted, a bound from above, before the parser is given the message.
MAX_PARTS = 10000


@attr.s(auto_attribs=True, frozen=True)
class Summary:
    """One message list row: decoded sender and subject, date text, attachment mark."""

    sender: str
    subject: str
    date: str
    has_attachment: bool


def decoded(value: str | None) -> str:
    """An RFC 2047 header value decoded to text ('' for none); bad encodings stay as sent."""
    if not value:
        return ""
    try:
        text = str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        text = value
    return " ".join(text.split())


def summary(head: bytes) -> Summary:
    """The L{Summary} of a message from its first octets (the header)."""
    end = head.find(b"\r\n\r\n")
    header = head if end < 0 else head[: end + 2]
    msg = email.message_from_bytes(header, policy=email.policy.compat32)
    content_type = (msg.get("Content-Type") or "").lower()
    attachment = "multipart/mixed" in content_type
    return Summary(decoded(msg.get("From")), decoded(msg.get("Subject")) or "(no subject)", decoded(msg.get("Date")), attachment)


def parse(raw: bytes, policy: Any = email.policy.compat32) -> Any:
    """
    The message's structure (an L{email.message.Message}; compat32 policy
    by default: nothing rewritten). A message whose parts nest deeper than
    IMAP takes apart (L{MAX_NESTING}, as Dovecot) comes back as its header
    over one opaque body: the standard library walks parts recursively,
    and 3,000 nested message/rfc822 parts were a RecursionError, a 500
    page and a traceback for a message anyone can send. So does a message
    with more than L{MAX_PARTS} lines that may start a part (the parser's
    time grows with the parts: seconds for a few thousand).
    """
    if raw.count(b"\n--") <= MAX_PARTS:
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


def filename(part: Any) -> str:
    """A part's decoded file name (RFC 2231 parameters or RFC 2047 words), '' if none."""
    name = part.get_filename()
    if not name:
        name = part.get_param("name")
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    name = decoded(name) if name else ""
    # Only the last path component, no control characters.
    name = re.split(r"[/\\]", name)[-1]
    return "".join(c for c in name if c >= " " and c != "\x7f")[:200]


def is_attachment(part: Any) -> bool:
    if part.is_multipart():
        return False
    disposition = (part.get("Content-Disposition") or "").lower()
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
    """(name, raw value as sent, decoded value) for each header field, in order."""
    rows = []
    for name, value in msg.items():
        raw = str(value)
        rows.append((name, raw, decoded(raw)))
    return rows


_RECEIVED = re.compile(r"from\s+(?P<from>.+?)\s+by\s+(?P<by>\S+)(?P<rest>.*)", re.S | re.I)


def received_hops(msg: Any) -> list[dict[str, str]]:
    """
    The C{Received:} chain, oldest hop first (RFC 5321 §4.4: each relay adds
    its line on top), each with from, by, with, id, for and time.
    """
    hops = []
    for value in reversed(msg.get_all("Received") or []):
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
        hop = {"from": "", "by": "", "with": "", "id": "", "for": "", "time": stamp.strip(), "raw": " ".join(str(value).split())}
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
    """The envelope (Return-Path, the RCPT from Received: for) beside header From/To."""
    rcpts = []
    for value in msg.get_all("Received") or []:
        found = re.search(r"\bfor\s+<?([^>;\s]+)>?", str(value), re.I)
        if found:
            rcpts.append(found.group(1))
    return {
        "mail_from": (msg.get("Return-Path") or "").strip(),
        "rcpt_to": ", ".join(dict.fromkeys(rcpts)),
        "from": decoded(msg.get("From")),
        "to": ", ".join(decoded(v) for v in (msg.get_all("To") or [])),
        "cc": ", ".join(decoded(v) for v in (msg.get_all("Cc") or [])),
    }


def part_info(part: Any, index: int, depth: int) -> dict[str, Any]:
    raw = part.get_payload() if not part.is_multipart() else ""
    raw_text = raw if isinstance(raw, str) else ""
    return {
        "index": index,
        "depth": depth,
        "type": part.get_content_type(),
        "encoding": (part.get("Content-Transfer-Encoding") or "7bit").strip().lower(),
        "charset": part.get_content_charset() or "",
        "size": len(raw_text.encode("utf-8", "surrogateescape")) if raw_text else 0,
        "filename": filename(part),
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


def addresses(value: str, bare: bool = False) -> list[str]:
    """
    The addresses of a header value ('a <x@y>, z@w' -> ['x@y', 'z@w']);
    with C{bare}, a local part alone ('bob') counts too (typed by hand).
    """
    return [addr for _, addr in getaddresses([value]) if "@" in addr or (bare and addr and " " not in addr)]
