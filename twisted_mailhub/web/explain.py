# -*- test-case-name: tests.test_web_explain -*-
"""
One-line explanations of protocol lines, for the live console and the
exported transcripts.

The explanations are data: one JSON table per protocol in C{explain/}
(C{smtp.json}, C{pop3.json}, C{imap.json}, C{ftp.json}), each with
C{commands} and C{replies} keyed by command name or reply code, and every
entry naming its RFC section. This module only finds the key of a line.

A reply means what it answers: C{250} after C{MAIL FROM} accepts the
sender, after C{EHLO} it lists extensions. A reply table may key a code
with the command it answers (C{"250 MAIL"}, C{"220 STARTTLS"}; C{MESSAGE}
for the end of the message text), used when the console knows the
client's last command; the plain code is the meaning anywhere else.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from twisted_mailhub.web.pages import PACKAGE_DIR

# Listener names -> the protocol whose table explains them.
FAMILY = {
    "smtp": "smtp", "submission": "smtp", "smtps": "smtp", "relay": "smtp",
    "pop3": "pop3", "pop3s": "pop3",
    "imap": "imap", "imaps": "imap",
    "ftp": "ftp",
}

_CODE = re.compile(r"^([1-5]\d\d)(?:[ -]|$)")
_RESPONSE_CODE = re.compile(r"\[([A-Za-z][A-Za-z0-9/-]*)")
_IMAP_NUMBERED = re.compile(r"^\* \d+ ([A-Za-z]+)")
_IMAP_UNTAGGED = re.compile(r"^\* ([A-Za-z]+)")
_IMAP_TAGGED = re.compile(r"^[^\s*+]+ (OK|NO|BAD)\b", re.I)
# A refusal and the words after its status: SMTP/FTP 4yz or 5yz (RFC 5321
# §4.2.1, RFC 959 §4.2.1; an SMTP enhanced status code, RFC 3463, skipped),
# POP3 -ERR (RFC 1939 §3), IMAP tagged NO or BAD (RFC 3501 §7.1); an IMAP
# response code in brackets is explained on its own and left out.
_REFUSED = {
    "smtp": re.compile(r"^[45]\d\d[ -]?(?:[45]\.\d{1,3}\.\d{1,3}\b)?\s*(.*)$", re.S),
    "ftp": re.compile(r"^[45]\d\d[ -]?\s*(.*)$", re.S),
    "pop3": re.compile(r"^-ERR\b\s*(?:\[[^\]]*\]\s*)?(.*)$", re.I | re.S),
    "imap": re.compile(r"^[^\s*+]+ (?:NO|BAD)\b\s*(?:\[[^\]]*\]\s*)?(.*)$", re.I | re.S),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
REASON_CHARACTERS = 160


@lru_cache(maxsize=None)
def table(protocol: str) -> dict[str, Any]:
    """The explanation table of C{protocol} (C{smtp}, C{pop3}, C{imap}, C{ftp})."""
    return json.loads(PACKAGE_DIR.child("explain").child(f"{protocol}.json").getContent())


def _entry(found: dict[str, Any]) -> dict[str, str]:
    rfc, section = found["rfc"], found["section"]
    return {
        "text": found["text"],
        "ref": f"RFC {rfc} §{section}",
        "url": f"https://www.rfc-editor.org/rfc/rfc{rfc}#section-{section}",
    }


def _join(first: dict[str, str] | None, second: dict[str, str] | None) -> dict[str, str] | None:
    if first is None or second is None:
        return first or second
    return {"text": f"{first['text']}; {second['text']}", "ref": f"{first['ref']}, {second['ref']}", "url": first["url"]}


# A line's first octets as the console shows them when they are no text
# (line_text: \xff...).
_ESCAPED_PREFIX = re.compile(r"^(?:\\x[0-9a-f]{2})+")
_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")
TELNET_NOTE = {
    "text": "first Telnet commands (what telnet sends when Ctrl-C is pressed: IAC IP, IAC DO TIMING-MARK), which the server skips",
    "ref": "RFC 854",
    "url": "https://www.rfc-editor.org/rfc/rfc854",
}


def after_telnet(line: str) -> str | None:
    """
    A client line as the console shows it (C{\\xff\\xf4...QUIT}) without
    the Telnet commands in front of it, which the hub's servers skip
    (L{twisted_mailhub.lines.telnet_prefix_text}); L{None} when it has none.
    """
    if not line.startswith("\\xff"):
        return None
    from twisted_mailhub.lines import telnet_prefix_text

    shown = _ESCAPED_PREFIX.match(line).group()
    raw = bytes(int(h, 16) for h in _ESCAPE.findall(shown))
    skipped = len(raw) - len(telnet_prefix_text(raw))
    return line[4 * skipped :] if skipped else None


def command_key(protocol: str, line: str) -> str | None:
    """The command name a client line starts with (IMAP: after the tag), after any Telnet commands in front (L{after_telnet})."""
    line = after_telnet(line) or line
    words = line.split()
    if not words or words[0].startswith("****") or line.startswith("["):
        return None
    if protocol == "imap":
        if len(words) == 1:
            return words[0].upper()  # DONE
        name = words[1].upper()
        if name == "UID" and len(words) > 2:
            return "UID"
        return name
    return words[0].upper()


def explain_command(protocol: str, line: str) -> dict[str, str] | None:
    rest = after_telnet(line)
    if rest is not None:
        return _join(TELNET_NOTE, explain_command(protocol, rest) if rest else None)
    key = command_key(protocol, line)
    if key is None:
        return None
    commands = table(protocol)["commands"]
    found = commands.get(key)
    if found is None:
        return None
    result = _entry(found)
    words = line.split()
    if protocol == "imap" and key == "UID" and len(words) > 2:
        inner = commands.get(words[2].upper())
        if inner is not None:
            result = _join(result, _entry(inner))
    return result


def reply_keys(protocol: str, line: str) -> list[str]:
    """The keys of a server line: its reply code or status, then a response code."""
    keys: list[str] = []
    if protocol in ("smtp", "ftp"):
        m = _CODE.match(line)
        if m:
            keys.append(m.group(1))
        return keys
    if protocol == "pop3":
        for status in ("+OK", "-ERR"):
            if line.upper().startswith(status):
                keys.append(status)
                break
        else:
            if line == "+" or line.startswith("+ "):
                keys.append("+")
    else:  # imap
        if line == "+" or line.startswith("+ "):
            keys.append("+")
        else:
            m = _IMAP_NUMBERED.match(line) or _IMAP_UNTAGGED.match(line) or _IMAP_TAGGED.match(line)
            if m:
                keys.append(m.group(1).upper())
    if keys:
        m = _RESPONSE_CODE.search(line)
        if m:
            keys.append(f"[{m.group(1).upper()}]")
    return keys


def answered(protocol: str, command: str | None) -> str | None:
    """
    What a reply after the client line C{command} answers, as a reply
    table's context word: the command's name, C{MESSAGE} after a
    message's text (the transcript's C{[message: ...]} line), C{GREETING}
    for the server's first line (the console's C{[greeting]}), else None.
    """
    if not command:
        return None
    if command.startswith("[message"):
        return "MESSAGE"
    if command == "[greeting]":
        return "GREETING"
    return command_key(protocol, command)


def refusal(protocol: str, line: str) -> str | None:
    """
    The reason a server line gives when it refuses a command (the words
    after an SMTP/FTP 4yz or 5yz code, POP3 C{-ERR}, an IMAP tagged C{NO}
    or C{BAD}), control characters shown as C{\\xNN}, at most
    L{REASON_CHARACTERS} characters; C{""} for a refusal without words;
    L{None} when the line is no refusal.
    """
    pattern = _REFUSED.get(protocol)
    m = pattern.match(line) if pattern is not None else None
    if m is None:
        return None
    reason = _CONTROL.sub(lambda c: f"\\x{ord(c.group()):02x}", m.group(1).strip())
    if len(reason) > REASON_CHARACTERS:
        reason = reason[:REASON_CHARACTERS - 3] + "..."
    return reason


def explain_reply(protocol: str, line: str, command: str | None = None) -> dict[str, str] | None:
    """
    The explanation of the server line C{line}; C{command}: the client's
    last line before it, if known. A refusal (L{refusal}) says so first,
    with the command it refuses when known and the reason the server
    gave: C{"refused MAIL: 'sender address rejected'; <the code's meaning>"}.
    """
    replies = table(protocol)["replies"]
    context = answered(protocol, command)
    result = None
    for n, key in enumerate(reply_keys(protocol, line)):
        found = replies.get(f"{key} {context}") if n == 0 and context else None
        found = found or replies.get(key)
        if found is not None:
            result = _join(result, _entry(found))
    reason = refusal(protocol, line)
    if result is not None and reason is not None:
        what = f"refused {context}" if context and context not in ("MESSAGE", "GREETING") else ("refused the message" if context == "MESSAGE" else "refused")
        said = f" ('{reason}')" if reason else ""
        result = {**result, "text": f"{what}{said}; {result['text']}"}
    return result


def explain(listener: str, kind: str, text: str, command: str | None = None) -> dict[str, str] | None:
    """
    The explanation of one session event: C{{"text", "ref", "url"}} or
    L{None} (a line with nothing to explain, an unknown command).

    @param listener: the session's listener name (C{smtps}, C{pop3}, ...).
    @param kind: C{"C"} or C{"S"} (other kinds are explained by the console).
    @param command: for a server line, the client's last line before it
        (what it answers), when known.
    """
    protocol = FAMILY.get(listener)
    if protocol is None:
        return None
    if kind == "C":
        return explain_command(protocol, text)
    if kind == "S":
        return explain_reply(protocol, text, command)
    return None
