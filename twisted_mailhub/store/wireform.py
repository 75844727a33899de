# -*- test-case-name: tests.test_store_wireform -*-
"""
Which messages of a folder are stored exactly as POP3 sends them, so that
RETR can send the file's bytes without reading them first.

A POP3 multi-line reply (RFC 1939 §3) has CRLF line ends and a "." doubled
where it starts a line; a session that did not send UTF8 gets 8-bit header
fields as encoded-words (RFC 6856 §3). A message is in I{wire form} when it
needs none of that: every line ends in CRLF (the last one too), no CR or
LF stands alone, no line starts with ".", and its header is ASCII. Most mail is: the store writes
CRLF, and SMTP has already dot-stuffed and un-stuffed it.

Finding that out costs several scans of the message; the answer never
changes, because a Maildir message's content is fixed under its base name
(only its flags, in the file name, change). So it is learned once, on the
first RETR, and kept per folder in memory and in C{mailhub-wireform}
beside the UID list, as Dovecot keeps its "no dot-stuffing needed" cache
field. With the fact, RETR costs no scan, and the session transcript
counts the message's lines from the fact instead of from the bytes.

Rules:

 - A fact is C{base name -> (line count, length)}, or C{(size on the
   wire, length)} for a message that is not in wire form (so it is not
   checked again either), packed in one int (L{WireForms.known}). The
   size on the wire is what RFC 1939 counts (§11): the message with every
   line end as CRLF, a bare LF or a bare CR (another program's file)
   counted as two octets, before byte-stuffing. A fact holds only while
   the file has that length: a file edited by hand to another length is
   checked again. (One edited by hand to the same length is trusted, as
   Dovecot trusts its cache.)
 - C{mailhub-wireform} is a cache, never the authority: it is written
   (temporary file and rename, not synced) when a session that learned
   something ends, holding only the messages that session still lists; a
   file that is missing, damaged or of another version is ignored and
   the facts are learned again.
 - Under C{--workers} each process keeps its own facts and the last
   writer's file wins: every fact in any version of it is true.
"""

from __future__ import annotations

import marshal
import os
from typing import Any, Iterable, Sequence

from twisted.logger import Logger


log = Logger()

FILE = "mailhub-wireform"
_VERSION = 2  # 1: no size on the wire in the facts of other messages
# A fact packs a message's line count (or its size on the wire) above its
# length (below 1 TiB).
_SHIFT = 40
_LENGTH = (1 << _SHIFT) - 1
# For a reader of the facts (L{WireForms.known}) in its own loop: a fact
# C{f >= 0} whose C{f & LENGTH_MASK} is the file's length means C{f >>
# LINES_SHIFT} lines in wire form (what L{WireForms.lines_of} answers).
LINES_SHIFT = _SHIFT
LENGTH_MASK = _LENGTH


def wire_lines(data: bytes) -> int | None:
    """
    The number of lines of C{data} (a whole message) when it is in wire
    form (see the module), else L{None}.
    """
    if data[-2:] != b"\r\n" or data[:1] == b"." or data.find(b"\n.") >= 0:
        return None
    lines = data.count(b"\n")
    if data.count(b"\r\n") != lines or data.count(b"\r") != lines:
        return None  # a bare LF or a bare CR
    end = data.find(b"\r\n\r\n")
    if not (data[:end] if end >= 0 else data).isascii():
        return None
    return lines


def wire_size(data: bytes) -> int:
    """
    The size of C{data} (a whole message) as POP3 sends it (RFC 1939
    §11): every line end as CRLF, a bare LF or a bare CR counting two
    octets; byte-stuffing not counted.
    """
    crlf = data.count(b"\r\n")
    return len(data) + (data.count(b"\r") - crlf) + (data.count(b"\n") - crlf)


class WireForms:
    """
    The wire-form facts of one folder (see the module): C{known} maps a
    base name to C{lines << 40 | length} for a message in wire form, or
    C{-1 - (size on the wire << 40 | length)} for one that is not
    (L{lines_of} and L{size_of} read them). C{directory} is the Maildir the cache
    file lives in, or L{None} for facts kept in memory only (a store
    without files).
    """

    __slots__ = ("directory", "path", "_known", "_learned", "_odd")

    def __init__(self, directory: str | None):
        self.directory = directory
        self.path = os.path.join(directory, FILE) if directory is not None else None
        self._known: dict[str, int] | None = None
        self._learned = False
        # The facts of messages whose size on the wire is not their length
        # (bare LF or CR line ends): key -> size on the wire.
        self._odd: dict[str, int] = {}

    @property
    def known(self) -> dict[str, int]:
        """The facts, read from the cache file the first time they are asked for."""
        known = self._known
        if known is None:
            known = self._known = self._read()
            for key, fact in known.items():
                if fact < 0:
                    self._note_odd(key, fact)
        return known

    def _note_odd(self, key: str, fact: int) -> None:
        f = -1 - fact
        if f >> _SHIFT != f & _LENGTH:
            self._odd[key] = f >> _SHIFT

    def _read(self) -> dict[str, int]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as f:
                version, known = marshal.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, EOFError, TypeError):
            log.info("ignoring an unreadable POP3 wire-form cache {path}", path=self.path)
            return {}
        if version != _VERSION or type(known) is not dict:
            return {}
        return known

    def lines_of(self, key: str, data: bytes) -> int | None:
        """
        The line count of C{data}, the message stored under C{key}, when
        it is in wire form, else L{None}: from the facts, or learned now.
        """
        known = self._known
        fact = (known if known is not None else self.known).get(key)
        if fact is not None:
            if fact >= 0:
                if fact & _LENGTH == len(data):
                    return fact >> _SHIFT
            elif (-1 - fact) & _LENGTH == len(data):
                return None
        return self.learn(key, data)

    def size_of(self, key: str) -> int | None:
        """
        The size on the wire (see L{wire_size}) of the message stored
        under C{key}, or L{None} when nothing is known of it.
        """
        fact = self.known.get(key)
        if fact is None:
            return None
        return fact & _LENGTH if fact >= 0 else (-1 - fact) >> _SHIFT

    def learn(self, key: str, data: bytes) -> int | None:
        """
        Check C{data}, the message stored under C{key}, and remember the
        answer (see L{known}): its line count when it is in wire form, else
        L{None}.
        """
        lines = wire_lines(data)
        self._odd.pop(key, None)
        if lines is None:
            fact = self.known[key] = -1 - (wire_size(data) << _SHIFT | len(data))
            self._note_odd(key, fact)
        else:
            self.known[key] = (lines << _SHIFT) | len(data)
        self._learned = True
        return lines

    def sizes_on_the_wire(self, keys: Sequence[str], sizes: Any) -> None:
        """
        Correct C{sizes} (the store's counts of the messages stored under
        C{keys}, changed in place) to the sizes on the wire (L{wire_size})
        of the messages learned to differ: nothing to do, and no pass over
        C{keys}, in the usual case.
        """
        if self._known is None:
            self.known  # the cache file, read once per process
        odd = self._odd
        if odd:
            for i, key in enumerate(keys):
                size = odd.get(key)
                if size is not None:
                    sizes[i] = size

    def save(self, keys: Iterable[str]) -> None:
        """
        Write the cache file if something was learned since the last
        save, with the facts of C{keys} only (the messages still there).
        Never raises: a cache that cannot be written is only a cache.
        """
        if not self._learned or self.path is None:
            return
        self._learned = False
        known = self.known
        keep = {key: known[key] for key in keys if key in known}
        # Written in the Maildir's tmp/ (its cleaning removes what a crash
        # leaves there), then renamed into place.
        tmp = os.path.join(self.directory, "tmp", f"{FILE}.{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(marshal.dumps((_VERSION, keep)))
            os.replace(tmp, self.path)
        except OSError as e:
            log.info("could not write the POP3 wire-form cache {path}: {error}", path=self.path, error=e.strerror or e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
