# -*- test-case-name: tests.test_imap_arguments -*-
"""
A command's whole argument list read as one tree, literals included: what
the extended commands need that Twisted's one-parser-per-argument tables
cannot give (LIST-EXTENDED's optional lists and pattern lists, RFC 5258;
MULTIAPPEND's repeated messages, RFC 3502; CATENATE's part lists, RFC 4469;
literal8 C{~{n}}, RFC 3516).

Rules:

 - The tree is a list of L{Atom} (NIL included), L{String} (quoted or a
   literal; C{literal8} says which literals were C{~{n}}) and lists for
   parenthesized groups, in the order sent (RFC 3501 §4, §9).
 - A literal may only end a line (RFC 3501 §4.3). Its size was already
   checked by the server (C{_literal_allowed}) before the first octet was
   read; here the octets are read with Twisted's own literal reader (a
   temporary file past 10 MiB) and parsing goes on with the rest of the
   line that follows them.
 - Any syntax error raises L{imap4.IllegalClientResponse} with a message
   fit to show the client; the server answers it as a tagged C{BAD}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.mail import imap4

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,20})\}\Z")
_ESCAPE = re.compile(rb"\\(.)")
_ATOM_END = re.compile(rb"[ ()\"{]")


class Atom(bytes):
    """An atom (or NIL, or a number) as sent."""


class String(bytes):
    """
    A quoted string or a literal's octets. C{literal8} is true for a
    literal8 (C{~{n}}, RFC 3516 §4.2), whose octets may hold NUL.
    """

    literal8 = False
    literal = False


def _string(data: bytes, literal: bool = False, literal8: bool = False) -> String:
    s = String(data)
    s.literal = literal
    s.literal8 = literal8
    return s


def is_nil(value: Any) -> bool:
    return isinstance(value, Atom) and value.upper() == b"NIL"


class _Reader:
    """Parses one command's arguments across the lines between its literals."""

    def __init__(self, server: Any):
        self.server = server
        self.stack: list[list] = [[]]

    def feed(self, line: bytes) -> Any:
        """The tree, or a Deferred firing with it once every literal was read."""
        pos = 0
        n = len(line)
        while pos < n:
            c = line[pos : pos + 1]
            if c == b" ":
                pos += 1
            elif c == b"(":
                group: list = []
                self.stack[-1].append(group)
                self.stack.append(group)
                pos += 1
            elif c == b")":
                if len(self.stack) == 1:
                    raise imap4.IllegalClientResponse("unbalanced ')'")
                self.stack.pop()
                pos += 1
            elif c == b'"':
                end = pos + 1
                while True:
                    if end >= n:
                        raise imap4.IllegalClientResponse('unmatched quotes: expected a closing "')
                    ch = line[end : end + 1]
                    if ch == b"\\":
                        end += 2
                    elif ch == b'"':
                        break
                    elif ch in (b"\r", b"\n"):
                        raise imap4.IllegalClientResponse("a quoted string cannot hold CR or LF: use a literal")
                    else:
                        end += 1
                self.stack[-1].append(_string(_ESCAPE.sub(rb"\1", line[pos + 1 : end])))
                pos = end + 1
            elif c in (b"{", b"~") and _LITERAL_AT_END.match(line, pos):
                m = _LITERAL_AT_END.match(line, pos)
                size = int(m.group(2))
                binary = bool(m.group(1))
                d = self.server._fileLiteral(size)
                return d.addCallback(self._literal_read, binary)
            elif c == b"{" or line[pos : pos + 2] == b"~{":
                raise imap4.IllegalClientResponse("a literal {N} must end the line")
            else:
                m = _ATOM_END.search(line, pos)
                end = m.start() if m else n
                if end == pos:
                    raise imap4.IllegalClientResponse("unexpected " + chr(line[pos]) if 32 < line[pos] < 127 else "unexpected octet")
                self.stack[-1].append(Atom(line[pos:end]))
                pos = end
        if len(self.stack) != 1:
            raise imap4.IllegalClientResponse("missing ')'")
        return self.stack[0], b""

    def _literal_read(self, result: tuple, binary: bool) -> Any:
        data, rest = result
        octets = data.read()
        data.close()
        if b"\0" in octets and not binary:
            raise imap4.IllegalClientResponse("NUL in a literal: only a literal8 ~{n} may hold one (RFC 3516)")
        self.stack[-1].append(_string(octets, literal=True, literal8=binary))
        return self.feed(rest)


def arg_everything(self: Any, line: bytes) -> Any:
    """
    Command-table parser: the rest of the command as a tree (see the
    module's rules), or a Deferred of it. Returns (tree, b"").
    """
    return _Reader(self).feed(line or b"")
