# -*- test-case-name: tests.test_imap_server -*-
"""
IMAP wire forms (RFC 3501 §4, §9) shared by every command module: astrings
with escapes, modified UTF-7 mailbox names, date-times, flag lists and
literals, and the guard that makes a missing argument a tagged C{BAD}.

Rules: nothing here knows a command or the store's state; a function takes
bytes from the wire and gives Python values (or the reverse), raising
L{imap4.IllegalClientResponse} with a message fit to show the client (never
a Python repr).
"""

from __future__ import annotations

import ast
import calendar
import re
import time
from typing import Any

from twisted.mail import imap4

from twisted_mailhub.imap.message import quote
from twisted_mailhub.lines import quote as shown_octets
from twisted_mailhub.store.base import DELIMITER
from twisted_mailhub.store.interfaces import INBOX, SYSTEM_FLAGS, BadFolderName

_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\.)*)"')
_UNESCAPE = re.compile(rb"\\(.)")
LITERAL = re.compile(rb"\{([^{}]*)\}\Z")
LITERAL_SIZE = re.compile(rb"\A(\d+)(\+?)\Z")
# A literal's size past this many digits (leading zeros aside) is over
# every limit; it is not made into an int (Python refuses past 4300 digits).
LITERAL_DIGITS = 20
_MONTH_NAMES = [calendar.month_abbr[i] for i in range(13)]
_MONTH_NUMBERS = {m.lower(): i for i, m in enumerate(_MONTH_NAMES) if m}


def literal_octets(digits: bytes) -> int | None:
    """
    The size a literal's C{{N}} gives (C{digits} match L{LITERAL_SIZE}'s
    first group: RFC 3501 §9 C{number = 1*DIGIT}, leading zeros allowed),
    or None when it has more than L{LITERAL_DIGITS} significant digits: a
    size no limit here takes, so the caller refuses it without the number.
    """
    significant = digits.lstrip(b"0")
    if len(significant) > LITERAL_DIGITS:
        return None
    return int(significant or b"0")


def literal_size_text(n: int | None) -> bytes:
    """C{b"literal of N octets"} for a reply, or what to say of a size L{literal_octets} would not read."""
    if n is None:
        return b"literal size of more than %d digits" % LITERAL_DIGITS
    return b"literal of %d octets" % n


class BadSequence(imap4.IllegalClientResponse):
    pass


def internal_date_text(timestamp: float) -> bytes:
    t = time.gmtime(timestamp)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTH_NAMES[t.tm_mon].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )


def parse_internal_date(text: bytes) -> float:
    """
    An APPEND date-time (RFC 3501 §9 / RFC 9051 §9 C{date-time}),
    C{"17-Jul-1996 02:44:25 -0700"}, in seconds since the epoch (UTC).

    The date must be a real day (no C{31-Feb}, no C{29-Feb} of a common
    year), the time a real time of day (hours 00-23, minutes 00-59, seconds
    00-60, 60 being a leap second) and the zone at most C{+2359}/C{-2359}.

    @raise imap4.IllegalClientResponse: with a text fit for a tagged C{BAD}
        that says which part is wrong.
    """
    m = re.match(rb'\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\s*\Z', text)
    if not m or m.group(2).decode().lower() not in _MONTH_NUMBERS:
        raise imap4.IllegalClientResponse('bad date-time: expected e.g. "17-Jul-1996 02:44:25 -0700"')
    day, month, year = int(m.group(1)), _MONTH_NUMBERS[m.group(2).decode().lower()], int(m.group(3))
    check_day(year, month, day, m.group(0).strip().split(b" ")[0])
    hh, mm, ss = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hh > 23 or mm > 59 or ss > 60:
        raise imap4.IllegalClientResponse(
            "bad date-time: %s is not a time of day (00:00:00 to 23:59:59)" % shown(b"%s:%s:%s" % (m.group(4), m.group(5), m.group(6)))
        )
    zone_hh, zone_mm = int(m.group(8)), int(m.group(9))
    if zone_hh > 23 or zone_mm > 59:
        raise imap4.IllegalClientResponse(
            "bad date-time: %s is not a time zone (-2359 to +2359)" % shown(m.group(7) + m.group(8) + m.group(9))
        )
    offset = (zone_hh * 60 + zone_mm) * 60 * (1 if m.group(7) == b"+" else -1)
    return calendar.timegm((year, month, day, hh, mm, ss)) - offset


def check_day(year: int, month: int, day: int, as_sent: bytes) -> None:
    """
    Raise L{imap4.IllegalClientResponse} unless C{day} is a day of C{month}
    (1-12) in C{year} (1-9999), e.g. not 31 February or 29 February of a
    common year; C{as_sent} is what the client wrote, for the message.
    """
    if not 1 <= year <= 9999 or not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise imap4.IllegalClientResponse("bad date: %s is not a day of the calendar" % shown(as_sent))


_SYSTEM_FLAGS = {f.lower().encode(): f for f in SYSTEM_FLAGS}


def client_flags(flags: list[bytes], command: str) -> list[str]:
    """
    The flags a client gave to APPEND or STORE, as the store takes them:
    system flags in their canonical case, keywords as sent (UTF-8).
    C{\\Recent} is left out (only the server sets it, RFC 3501 §2.3.2).

    @raise imap4.IllegalClientResponse: a flag begins with a backslash and
        is not one of the system flags RFC 3501 §2.3.2 / RFC 9051 §2.3.2
        define (C{\\Foo}): a client cannot create a system flag, and the
        flag is neither stored nor dropped in silence.
    """
    out = []
    for flag in flags:
        if flag[:1] == b"\\":
            low = flag.lower()
            if low == b"\\recent":
                continue
            known = _SYSTEM_FLAGS.get(low)
            if known is None:
                raise imap4.IllegalClientResponse(
                    "%s: %s is not a system flag (%s); a keyword is written without the backslash"
                    % (command, shown(flag, 40), ", ".join(SYSTEM_FLAGS))
                )
            out.append(known)
        else:
            out.append(flag.decode("utf-8", "replace"))
    return out


_flag_text: dict[tuple[frozenset, bool], bytes] = {}


def flags_text(flags: frozenset, recent: bool = False) -> bytes:
    key = (flags, recent)
    text = _flag_text.get(key)
    if text is None:
        words = sorted(f.encode("utf-8") for f in flags)
        if recent:
            words.append(b"\\Recent")
        text = b"(" + b" ".join(words) + b")"
        if len(_flag_text) < 10_000:
            _flag_text[key] = text
    return text


def decode_mutf7(raw: bytes) -> str:
    """
    Modified UTF-7 (RFC 3501 §5.1.3), strictly: Twisted's codec takes
    C{&Jjo} (no closing C{-}) and C{&AGE-} (an encoded printable ASCII
    character), which no client sends; a name is valid only when it is what
    encoding its characters gives. Raises L{imap4.IllegalMailboxEncoding}.
    """
    try:
        name = raw.decode("imap4-utf-7")
        if name.encode("imap4-utf-7") == raw:
            return name
    except (UnicodeError, ValueError):
        pass
    raise imap4.IllegalMailboxEncoding(raw.decode("ascii", "replace"))


def decode_name(raw: bytes, utf8: bool = False) -> str:
    """
    A name (or LIST pattern) from the wire: modified UTF-7, or UTF-8 for a
    session that enabled UTF8=ACCEPT (RFC 6855 §3). Raises
    L{imap4.IllegalMailboxEncoding}.
    """
    if not utf8:
        return decode_mutf7(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise imap4.IllegalMailboxEncoding(raw.decode("ascii", "replace")) from None


def mailbox_name(raw: bytes | str, utf8: bool = False) -> str:
    """A mailbox name from the wire (modified UTF-7, RFC 3501 §5.1.3; UTF-8, RFC 6855)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8" if utf8 else "ascii", "replace")
    name = decode_name(raw, utf8)
    if name.upper() == INBOX:
        return INBOX
    if name.startswith(DELIMITER) or ".." in name.split(DELIMITER) or name.startswith("~"):
        raise BadFolderName("bad mailbox name " + shown(name) + ": no absolute names, no '..'")
    return name


def wire_name(name: str, utf8: bool = False) -> bytes:
    """
    A mailbox name for a response: modified UTF-7 in a quoted string, or,
    for a UTF8=ACCEPT session, UTF-8 in a quoted string (RFC 6855 §3:
    utf8-quoted).
    """
    if utf8:
        encoded = name.encode("utf-8")
        if b"\r" not in encoded and b"\n" not in encoded and len(encoded) <= 1000:
            return b'"' + encoded.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return quote(encoded)
    encoded = name.encode("imap4-utf-7")
    return quote(encoded)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def shown(value: bytes | str, limit: int = 60) -> str:
    """
    Client input as a reply may quote it: in double quotes, cut at
    C{limit} characters, shown as every protocol's replies show input
    (L{twisted_mailhub.lines.quote}): a control character as C{^H} (C{^?}
    for DEL), an octet that is not UTF-8 as C{<FF>}, other non-ASCII
    characters as C{?}. Never a Python repr, never a raw control byte (the
    terminal of a person typing would act on it).
    """
    return '"' + shown_octets(value, limit=limit, ascii=True) + '"'


#: A header field name (RFC 5322 §3.6.8 ftext: printable US-ASCII but ":").
_FIELD_NAME = re.compile(rb"[!-9;-~]+")


def is_field_name(name: bytes) -> bool:
    """Whether C{name} (octets) can name a header field (RFC 5322 §3.6.8); a name that cannot is refused, never echoed."""
    return _FIELD_NAME.fullmatch(name) is not None


_PY_BYTES = re.compile(r"""\bb(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def _unrepr(m: re.Match) -> str:
    """A Python bytes literal (a C{repr} Twisted put in a message) as the octets it stands for, shown as every reply shows input."""
    try:
        octets = ast.literal_eval(m.group())
    except (SyntaxError, ValueError):
        return '"?"'
    return '"' + shown_octets(octets, limit=60, ascii=True) + '"'


def client_text(message: str) -> bytes:
    """
    An error text fit for a tagged BAD/NO: Twisted's own parser messages
    quote input as C{b'...'} (C{Too many arguments for command: b'x'}); this
    shows it as C{"x"}, the octets within as every reply shows input
    (L{twisted_mailhub.lines.quote}: C{^M} for a CR, C{<E9>} for an octet
    that is not UTF-8; never Python's C{\\r} or C{\\xe9}), and keeps the
    reply ASCII without control bytes.
    """
    message = _PY_BYTES.sub(_unrepr, message)
    return "".join(c if 32 <= ord(c) < 127 else ("^" + chr(ord(c) + 64) if ord(c) < 32 else "?") for c in message).encode("ascii")


def arg_astring(self: Any, line: bytes, final: bool = False):
    """
    An astring (RFC 3501 §9): Twisted's, but a quoted string may hold
    escaped quotes and backslashes (a password with a C{"} in it).
    """
    stripped = line.strip()
    if stripped[:1] == b'"':
        m = _QUOTED.match(stripped)
        if m is None:
            raise imap4.IllegalClientResponse("unmatched quotes: expected a closing \"")
        rest = stripped[m.end() :]
        if rest[:1] == b" ":
            rest = rest[1:]
        return _UNESCAPE.sub(rb"\1", m.group(1)), rest
    if final and stripped == b"{0}":
        # A zero-length literal as the last argument is still a literal
        # (RFC 9051 §4.3): "+", then the rest of the command line. Twisted
        # takes it at once (its ticket 9207), so the command ran before
        # its line ended and the client's CRLF was read as an empty command.
        final = False
    return imap4.IMAP4Server.arg_astring(self, line, final)


def sequence_set(text: bytes) -> imap4.MessageSet:
    """
    A sequence-set (RFC 3501 §9) as Twisted's C{parseIdList} reads it,
    except that C{*:*} (a seq-range of two C{*}s: the grammar allows it and
    clients send C{UID FETCH *:*} for the last message) is C{*}, where
    Twisted refuses it. L{imap4.IllegalIdentifierError} when malformed.
    """
    if b"*:*" in text:
        text = b",".join(b"*" if part == b"*:*" else part for part in text.split(b","))
    return imap4.parseIdList(text)


def arg_seqset(self: Any, line: bytes):
    """Twisted's C{arg_seqset} with L{sequence_set}: (MessageSet, rest)."""
    arg, _, rest = line.partition(b" ")
    try:
        return sequence_set(arg), rest
    except imap4.IllegalIdentifierError as e:
        raise imap4.IllegalClientResponse("Bad message number " + str(e))


def opt_nested_list(self: Any, line: bytes):
    """
    An optional parenthesized list that may nest, e.g. SELECT's
    C{(QRESYNC (67890007 90060115194045000 41:211))} (Twisted's C{opt_plist}
    ends the list at the first C{)}). Returns (list or None, rest).
    """
    if not line.startswith(b"("):
        return None, line
    depth = 0
    quoted = False
    i = 0
    while i < len(line):
        c = line[i : i + 1]
        if quoted:
            if c == b"\\":
                i += 1
            elif c == b'"':
                quoted = False
        elif c == b'"':
            quoted = True
        elif c == b"(":
            depth += 1
        elif c == b")":
            depth -= 1
            if depth == 0:
                try:
                    return imap4.parseNestedParens(line[1:i]), line[i + 1 :].lstrip(b" ")
                except Exception:
                    raise imap4.IllegalClientResponse("bad parenthesized list") from None
        i += 1
    raise imap4.IllegalClientResponse("missing ')'")


def opt_rest(self: Any, line: bytes):
    """
    The rest of the line, which may be missing (L{None}: the command table
    guard gives an C{opt_} parser's missing argument as L{None}), so the
    command itself can say what it lacks (C{UID FETCH} alone).
    """
    return line, b""


def arg_finalastring(self: Any, line: bytes):
    return arg_astring(self, line, final=True)


#: Each command's form, in the RFC's own words (RFC 3501/9051 §6 and
#: their ABNF, RFC 4959, RFC 5161, RFC 2971, RFC 4978, RFC 5256, RFC 5465,
#: RFC 6851, RFC 9208), and what each of its arguments is called, in the
#: order of its command table's parsers: a missing one is named in the
#: BAD with the form ("a1 LOGIN bob": the password).
ARGUMENT_FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "LOGIN": ("LOGIN userid password", ("userid", "password")),
    "AUTHENTICATE": ("AUTHENTICATE auth-type [initial-response], e.g. AUTHENTICATE PLAIN", ("auth-type",)),
    "RENAME": ("RENAME mailbox new-mailbox", ("mailbox", "new-mailbox")),
    "LIST": ('LIST reference mailbox-pattern, e.g. LIST "" "*"', ("reference", "mailbox-pattern")),
    "LSUB": ('LSUB reference mailbox-pattern, e.g. LSUB "" "*"', ("reference", "mailbox-pattern")),
    "STATUS": ("STATUS mailbox (status-att ...), e.g. STATUS INBOX (MESSAGES UNSEEN)", ("mailbox", "(status-att ...)")),
    "APPEND": ("APPEND mailbox [(flag ...)] [date-time] literal", ("mailbox", "literal")),
    "COPY": ("COPY sequence-set mailbox", ("sequence-set", "mailbox")),
    "MOVE": ("MOVE sequence-set mailbox", ("sequence-set", "mailbox")),
    "FETCH": ("FETCH sequence-set items, e.g. FETCH 1:* (FLAGS UID)", ("sequence-set", "items")),
    "STORE": ("STORE sequence-set [+|-]FLAGS[.SILENT] (flag ...)", ("sequence-set", "[+|-]FLAGS (flag ...)")),
    "SELECT": ("SELECT mailbox", ("mailbox",)),
    "EXAMINE": ("EXAMINE mailbox", ("mailbox",)),
    "CREATE": ("CREATE mailbox", ("mailbox",)),
    "DELETE": ("DELETE mailbox", ("mailbox",)),
    "SUBSCRIBE": ("SUBSCRIBE mailbox", ("mailbox",)),
    "UNSUBSCRIBE": ("UNSUBSCRIBE mailbox", ("mailbox",)),
    "ENABLE": ("ENABLE capability ..., e.g. ENABLE CONDSTORE", ("capability",)),
    "ID": ("ID (field value ...), or ID NIL", ("(field value ...) or NIL",)),
    "GETQUOTAROOT": ("GETQUOTAROOT mailbox", ("mailbox",)),
    "GETQUOTA": ("GETQUOTA quota-root", ("quota-root",)),
    "SETQUOTA": ("SETQUOTA quota-root (resource limit ...)", ("quota-root",)),
    "SEARCH": ("SEARCH [CHARSET charset] search-key ..., e.g. SEARCH UNSEEN", ("CHARSET charset", "search-key")),
    "SORT": ("SORT (sort-criteria) charset search-key ..., e.g. SORT (DATE) UTF-8 ALL", ("(sort-criteria)", "charset", "search-key")),
    "THREAD": ("THREAD algorithm charset search-key ..., e.g. THREAD REFERENCES UTF-8 ALL", ("algorithm", "charset", "search-key")),
    "UID": ("UID command arguments, the command FETCH, STORE, COPY, MOVE, SEARCH, EXPUNGE, SORT or THREAD", ("command",)),
    "UID EXPUNGE": ("UID EXPUNGE sequence-set", ("sequence-set",)),
    "COMPRESS": ("COMPRESS DEFLATE", ("algorithm",)),
    "NOTIFY": ("NOTIFY SET (filter events) ..., or NOTIFY NONE", ("SET or NONE",)),
}


def missing_argument(command: str, index: int, uid: bool = False) -> str:
    """
    The text of the BAD for a missing argument: argument C{index} (from 0)
    of C{command} (upper case) named, with the command's form, when
    L{ARGUMENT_FORMS} knows it:
    C{"Missing argument: password (the form is LOGIN userid password)"}.
    C{uid}: the command came after UID (C{UID FETCH}), and its form says so.
    """
    form, names = ARGUMENT_FORMS.get(command, ("", ()))
    if uid and form:
        form = "UID " + form
    if index < len(names):
        return f"Missing argument: {names[index]} (the form is {form})"
    if form:
        return f"Missing argument (the form is {form})"
    return f"Missing argument to {command}" if command else "Missing argument"


def _argument_required(parser: Any, command: str = "", index: int = 0) -> Any:
    """
    Twisted's argument parsers index the rest of the line; when an earlier
    parser used it all up they get L{None} and raise C{TypeError}, which
    Twisted answers as "Server error" with a traceback in the log
    (C{STORE 1 +FLAGS} with no flag list). A missing argument is the
    client's syntax error: C{BAD}.
    """

    def parse(self: Any, line: Any, *args: Any, **kwargs: Any) -> Any:
        if line is None:
            # An earlier parser took the whole line. Twisted's opt_ parsers
            # index it too (C{SEARCH} alone: TypeError in opt_charset).
            if parser.__name__.startswith("opt_"):
                return None, None
            raise imap4.IllegalClientResponse(missing_argument(command, index, getattr(self, "_uid_command", False)))
        try:
            return parser(self, line, *args, **kwargs)
        except imap4.IllegalClientResponse as e:
            if str(e) == "Missing argument":  # (Twisted's words for an empty rest)
                raise imap4.IllegalClientResponse(missing_argument(command, index, getattr(self, "_uid_command", False))) from None
            raise
        except (imap4.IllegalMailboxEncoding, imap4.IllegalOperation):
            raise
        except Exception:
            # A Twisted parser tripping over a cut-short or wrong-typed
            # argument is the client's syntax error, not a server error.
            raise imap4.IllegalClientResponse("Missing or malformed argument") from None

    parse.__name__ = parser.__name__
    parse.__doc__ = parser.__doc__
    return parse


def guard_command_tables(cls: Any) -> None:
    cls.arg_seqset = arg_seqset  # (UID EXPUNGE calls it itself)
    # The command tables (C{select_STORE = (do_STORE, arg_seqset, ...)}) hold
    # the parser functions themselves, so it is their entries that change.
    for name in dir(cls):
        if not name.startswith(("unauth_", "auth_", "select_", "logout_")):
            continue
        table = getattr(cls, name)
        if not isinstance(table, tuple) or not table:
            continue
        # Every sequence-set argument (FETCH, STORE, COPY, MOVE) reads *:*.
        table = tuple(arg_seqset if p is imap4.IMAP4Server.arg_seqset else p for p in table)
        command = name.split("_", 1)[1]
        guarded = (table[0],) + tuple(
            _argument_required(p, command, i) if callable(p) and getattr(p, "__name__", "").startswith(("arg_", "opt_")) else p
            for i, p in enumerate(table[1:])
        )
        setattr(cls, name, guarded)


