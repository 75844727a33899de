# -*- test-case-name: tests.test_logobserver,tests.test_small_files_durable -*-
"""
Words for an error that reaches a log line, a reply or a web page.

Python's own text for an C{OSError} is C{[Errno 28] No space left on
device: '/var/mail/x/tmp/1'}, and C{repr()} of any exception starts with
its class name: neither is for a person reading a log or a client. Here:

 - an C{OSError} is its C{strerror} as the C library words it, with the
   full disk and the used-up quota (ENOSPC, EDQUOT) said plainly ("the
   disk is full"), and, for the log only, the file it names;
 - a store error that stands for one (L{InsufficientStorage} made from
   an C{OSError}: its C{__cause__}) is that C{OSError}'s words;
 - Twisted's connection errors are a plain sentence ("the connection was
   lost", not "Connection to the other side was lost in a non-clean
   fashion: Connection lost.");
 - any other exception is its own text, never its class name (one with
   no text: "an error with no description").

L{twisted_mailhub.logobserver} words every exception a log event carries
this way, and takes the C{[Errno N]} out of any text that still has it
(one read from C{Failure.getErrorMessage()}, say), so a log line never
shows them whoever logged it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Any

# What "no space" means for whoever reads it: a full disk, or the quota
# of the user the hub runs as.
_PLAIN = {
    errno.ENOSPC: "the disk is full",
    getattr(errno, "EDQUOT", -1): "the disk quota is used up",
}

_ERRNO_PREFIX = re.compile(r"\[Errno -?\d+\] ")


def error_words(error: BaseException, paths: bool = True) -> str:
    """
    C{error} as words (see the module's rules); with C{paths} (a log
    line), the file an C{OSError} names follows in parentheses. Never
    raises.
    """
    cause = error.__cause__
    if not isinstance(error, OSError) and isinstance(cause, OSError) and type(error).__name__ == "InsufficientStorage":
        error = cause
    plain = _twisted_words(error)  # (before OSError: DNSLookupError is one)
    if plain is not None:
        return plain
    if isinstance(error, OSError):
        words = _PLAIN.get(error.errno) or error.strerror or ""
        if not words:
            words = without_errno(_text(error)) or "an operating system error with no description"
        if paths and error.filename is not None:
            words += f" ({_text(error.filename)}"
            if error.filename2 is not None:
                words += f", {_text(error.filename2)}"
            words += ")"
        return words
    return without_errno(_text(error)) or "an error with no description"


def _twisted_words(error: BaseException) -> str | None:
    """
    A plain sentence for Twisted's connection errors ("Connection to the
    other side was lost in a non-clean fashion: Connection lost.", "Connection
    was refused by other side: 111: Connection refused."), else None.
    """
    from twisted.internet import error as twisted_error

    if isinstance(error, twisted_error.ConnectionLost):
        return "the connection was lost"
    if isinstance(error, twisted_error.ConnectionDone):
        return "the connection was closed"
    if isinstance(error, twisted_error.DNSLookupError):
        name = error.args[0] if error.args and isinstance(error.args[0], str) else ""
        return f"the host name was not found ({name})" if name else "the host name was not found"
    if isinstance(error, twisted_error.ConnectError):
        # Its str() is the class's docstring, the errno and the OS's words.
        for kind, words in _CONNECT_WORDS:
            if isinstance(error, getattr(twisted_error, kind)):
                return words
        detail = error.args[0] if error.args and isinstance(error.args[0], str) else ""
        if detail:
            return detail
        if isinstance(error.osError, int):
            return os.strerror(error.osError)
        return " ".join((error.__doc__ or "cannot connect").split()).rstrip(".").lower()
    return None


# Twisted's ConnectError kinds (twisted.internet.error), most specific
# first, with what a person reads instead of the class's docstring.
_CONNECT_WORDS = (
    ("ConnectionRefusedError", "the connection was refused"),
    ("TCPTimedOutError", "the connection timed out"),
    ("TimeoutError", "no connection within the time allowed"),
    ("NoRouteError", "No route to host"),  # (its docstring is the OS's words)
    ("ConnectingCancelledError", "the connection attempt was cancelled"),
)


# Twisted's texts for the same, in a line made from getErrorMessage() or
# str(): each with its optional ": detail." after it (a ConnectError's
# ": ERRNO: the OS's words.").
_TWISTED_TEXTS = re.compile(
    r"Connection to the other side was lost in a non-clean fashion(?:: Connection lost)?\.*"
    r"|Connection was closed cleanly(?:: Connection done)?\.*"
    r"|(?P<connect>Connection was refused by other side|TCP connection timed out"
    r"|User timeout caused connection failure)(?:: \d+)?(?:: [^.:]*)?\.*"
    r"|An error occurred while connecting(?:: \d+)?(?:: (?P<os>[^.:]*))?\.*"
    r"|DNS lookup failed(?:: (?P<name>\S+?))?\.(?=\s|\)|$)"
)
_TWISTED_CONNECT_TEXTS = {
    "Connection was refused by other side": "the connection was refused",
    "TCP connection timed out": "the connection timed out",
    "User timeout caused connection failure": "no connection within the time allowed",
}


def _plain(m: re.Match) -> str:
    if m.group(0).startswith("DNS lookup"):
        return f"the host name was not found ({m.group('name')})" if m.group("name") else "the host name was not found"
    if m.group(0).startswith("An error occurred"):
        return m.group("os") or "cannot connect"
    if m.group("connect"):
        return _TWISTED_CONNECT_TEXTS[m.group("connect")]
    return "the connection was lost" if m.group(0).startswith("Connection to") else "the connection was closed"


def without_twisted(text: str) -> str:
    """
    C{text} with Twisted's connection-error texts as plain words ("the
    connection was lost", "the connection was refused").
    """
    if not any(marker in text for marker in _MARKERS):
        return text
    return _TWISTED_TEXTS.sub(_plain, text)


_MARKERS = ("Connection to the other side", "closed cleanly", "other side:", "other side.", "timed out", "User timeout", "An error occurred while connecting", "DNS lookup failed")


def _words(text: str) -> str:
    """C{text} as lowercase words with single spaces, punctuation out: what L{said_once} compares."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def said_once(message: str, reason: str) -> str:
    """
    C{message (reason)}, or C{message} alone when C{reason} adds no word
    to it (empty, or the same words: "insufficient system storage
    (Insufficient system storage)" said one thing twice), or C{reason}
    alone when it says all C{message} does and more.
    """
    said, why = _words(message), _words(reason)
    if not why or f" {why} " in f" {said} ":
        return message
    if said and f" {said} " in f" {why} ":
        return reason
    return f"{message} ({reason})"


def no_room(error: BaseException) -> str:
    """
    The log's words for a write refused for want of room (an
    L{InsufficientStorage}, an C{OSError} ENOSPC or EDQUOT, a quota):
    C{insufficient system storage} and what it was, said once: C{(the disk
    is full (/path))} for the disk, the quota's own sentence for a quota,
    nothing more for a bare C{InsufficientStorage("Insufficient system
    storage")} (one that came from a worker process or a backend that
    keeps no cause).
    """
    cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
    return said_once("insufficient system storage", error_words(cause))


def not_writable_words(error: BaseException) -> bytes:
    """
    What a reply says of a write refused because the hub may not write
    where the store keeps it (C{store.interfaces.is_not_writable}: EACCES,
    EPERM, EROFS): C{the server may not write this mailbox (a read-only
    file system)}, UTF-8, no path. IMAP puts C{[NOPERM]} (RFC 5530 §3)
    before it, POP3 C{[SYS/PERM]} (RFC 3206 §4).
    """
    from twisted_mailhub.store.interfaces import not_writable_reason

    return b"the server may not write this mailbox (" + not_writable_reason(error).encode("utf-8") + b"); nothing was changed"


def out_of_space_code(error: BaseException) -> bytes:
    """
    The IMAP response code (RFC 5530 §3, RFC 9051 §7.1) for a write
    refused for want of room: C{[OVERQUOTA]} for the account's quota
    (C{store.interfaces.is_quota}), C{[UNAVAILABLE]} for a full disk,
    which is the server's trouble and not the user's quota.
    """
    return b"[OVERQUOTA]" if getattr(error, "is_quota", False) else b"[UNAVAILABLE]"


def out_of_space_words(error: BaseException) -> bytes:
    """
    What an IMAP reply says of a write refused for want of room (UTF-8):
    the quota's own words (C{mailbox full (...)}) for a quota, C{the
    server's disk is full; try again later} for a full disk.
    """
    if getattr(error, "is_quota", False):
        return str(getattr(error, "reason", "mailbox full")).encode("utf-8", "replace")
    return b"the server's disk is full; try again later"


def without_errno(text: str) -> str:
    """
    C{text} without Python's C{[Errno N] } prefixes (an C{OSError}'s
    C{str()} inside it), and Twisted's connection-error texts as plain
    words (L{without_twisted}).
    """
    return without_twisted(_ERRNO_PREFIX.sub("", text) if "[Errno " in text else text)


def _text(value: object) -> str:
    try:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    except Exception:
        return ""


def run_command_line_tool(prog: str, command: Any, *args: Any) -> int:
    """
    Run C{command(*args)}, one of the hub's command-line tools
    (C{mailhub-admin}, C{mailhub-queue}), returning its exit status; what
    it did not catch itself is said on standard error in one line,
    never a traceback: an C{OSError} as C{PROG: words (file)}, exit
    status 1; Ctrl-C (at a password prompt, say) as C{PROG: interrupted},
    exit status 130 (the shell's for SIGINT).
    """
    try:
        return command(*args)
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{prog}: interrupted\n")
        return 130
    except OSError as e:
        sys.stderr.write(f"{prog}: {error_words(e)}\n")
        return 1
