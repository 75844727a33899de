# -*- test-case-name: tests.test_imap_message -*-
"""
RFC 5322 address lists (§3.4) as IMAP needs them: the ENVELOPE's address
structures (RFC 3501 §7.4.2) and SEARCH FROM/TO/CC/BCC on the address as
parsed rather than as typed.

Rules:

 - Folding and comments (nested, with escapes) are removed first; quoted
   strings keep their content, unescaped.
 - A group (C{Friends: a@x, b@y;}) becomes a start marker, its members and
   an end marker, in that order; an empty group is just the two markers.
 - A source route (C{<@relay1,@relay2:user@host>}, obs-route) is kept for
   the ENVELOPE's adl field.
 - An address without a domain is a mailbox with an empty domain, never
   mistaken for a group marker (those have a NIL host).
 - Parsing never fails: whatever is left over becomes a mailbox of its own,
   so a broken header still shows what it holds.
"""

from __future__ import annotations

from typing import NamedTuple

_SPECIALS = "<>@:;,."


class Mailbox(NamedTuple):
    """One address: C{name} the display name (or None), C{route} the
    obsolete source route (C{@a,@b}) or None, C{local} the local part,
    C{domain} the domain (C{""} when the address had none)."""

    name: str | None
    route: str | None
    local: str
    domain: str

    @property
    def address(self) -> str:
        return self.local + "@" + self.domain if self.domain else self.local


class GroupStart(NamedTuple):
    name: str


class GroupEnd(NamedTuple):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) with kind C{atom}, C{quoted}, C{literal} (a domain
    literal C{[...]}) or C{special}."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif c == '"':
            i += 1
            value = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] not in "\r\n":
                    value.append(text[i])
                i += 1
            i += 1
            out.append(("quoted", "".join(value)))
        elif c == "[":
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", "".join(text[i:j].split())))
            i = j
        elif c in _SPECIALS:
            out.append(("special", c))
            i += 1
        elif c == ")":
            i += 1  # stray: ignored
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n()"[' + _SPECIALS:
                j += 1
            out.append(("atom", text[i:j]))
            i = j
    return out


def _phrase(tokens: list[tuple[str, str]]) -> str | None:
    words: list[str] = []
    for kind, value in tokens:
        if kind == "special" and value == "." and words:
            words[-1] += "."
        else:
            words.append(value)
    return " ".join(words) if words else None


def _joined(tokens: list[tuple[str, str]]) -> str:
    # A quoted local part stays quoted: "a b"@x is not a b@x.
    return "".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' if k == "quoted" else v for k, v in tokens)


def _addr_spec(tokens: list[tuple[str, str]]) -> tuple[str, str]:
    at = max((i for i, t in enumerate(tokens) if t == ("special", "@")), default=-1)
    if at < 0:
        return _joined(tokens), ""
    return _joined(tokens[:at]), _joined(tokens[at + 1 :])


def _mailbox(tokens: list[tuple[str, str]]) -> Mailbox | None:
    if not tokens:
        return None
    if ("special", "<") in tokens:
        start = tokens.index(("special", "<"))
        end = next((i for i in range(start + 1, len(tokens)) if tokens[i] == ("special", ">")), len(tokens))
        name = _phrase(tokens[:start] + tokens[end + 1 :])
        inner = tokens[start + 1 : end]
        route = None
        if ("special", ":") in inner and inner[:1] == [("special", "@")]:
            colon = inner.index(("special", ":"))
            route = _joined(inner[:colon])
            inner = inner[colon + 1 :]
        local, domain = _addr_spec(inner)
        if not local and not domain and name is None:
            return None
        return Mailbox(name, route, local, domain)
    local, domain = _addr_spec(tokens)
    return Mailbox(None, None, local, domain) if local or domain else None


def parse_address_list(text: str) -> list[Mailbox | GroupStart | GroupEnd]:
    """
    The addresses of one header value (or several joined by C{,}), in
    order, groups as L{GroupStart} ... L{GroupEnd}.
    """
    tokens = _tokens(text)
    out: list[Mailbox | GroupStart | GroupEnd] = []
    in_group = False
    current: list[tuple[str, str]] = []
    in_angle = False

    def finish() -> None:
        box = _mailbox(current)
        if box is not None:
            out.append(box)
        current.clear()

    for token in tokens:
        if token == ("special", "<"):
            in_angle = True
        elif token == ("special", ">"):
            in_angle = False
        if in_angle:
            current.append(token)
            continue
        if token == ("special", ","):
            finish()
        elif token == ("special", ":") and not in_group and ("special", "@") not in current and ("special", "<") not in current:
            out.append(GroupStart(_phrase(current) or ""))
            current.clear()
            in_group = True
        elif token == ("special", ";") and in_group:
            finish()
            out.append(GroupEnd())
            in_group = False
        elif token == ("special", ";"):
            finish()
        else:
            current.append(token)
    finish()
    if in_group:
        out.append(GroupEnd())
    return out


def searchable(text: str) -> str:
    """
    The addresses of a header value as SEARCH matches them, lowered: each
    as C{name <local@domain>}, one a line.
    """
    lines = []
    for item in parse_address_list(text):
        if isinstance(item, Mailbox):
            lines.append(((item.name + " ") if item.name else "") + "<" + item.address + ">")
        elif isinstance(item, GroupStart) and item.name:
            lines.append(item.name + ":")
    return "\n".join(lines).lower()
