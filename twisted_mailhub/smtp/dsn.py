# -*- test-case-name: tests.test_dsn -*-
"""
The SMTP Service Extension for Delivery Status Notifications (RFC 3461):
the parameters C{RET} and C{ENVID} of MAIL, C{NOTIFY} and C{ORCPT} of
RCPT, read from the wire and written back onto it.

The values are kept decoded (as Postfix keeps them): C{ENVID} and the
address of C{ORCPT} as text, C{NOTIFY} as its keywords in upper case
joined by commas. They are xtext-encoded again (L{xtext_encode}) when
the relay passes them on to a next hop that offers DSN (RFC 3461 §5.2),
and written decoded into the DSN's C{Original-Envelope-Id} and
C{Original-Recipient} fields (RFC 3464 §2.2.1, §2.3.1).

With SMTPUTF8 (RFC 6533 §4), C{ORCPT=utf-8;ADDRESS} gives a non-ASCII
address, either in the 7-bit C{utf-8-addr-xtext} form
(C{j\\x{FC}rgen@b.test}) or, in an SMTPUTF8 transaction, as UTF-8
(C{utf-8-addr-unitext}).

Every parser here returns the value or raises L{DSNSyntaxError}, whose
text is what follows C{501 5.5.4} in the reply.
"""

from __future__ import annotations

import re

# RFC 3461 §4.4: "the ENVID ... MUST NOT exceed 100 characters"; §4.2:
# the ORCPT "MUST NOT exceed 500 characters" (both as sent, encoded).
MAX_ENVID = 100
MAX_ORCPT = 500

NOTIFY_KEYWORDS = ("NEVER", "SUCCESS", "FAILURE", "DELAY")

# RFC 3461 §4: xchar = "!" to "~" but "+" and "="; hexchar = "+" 2HEXDIG.
# Lower-case hex digits are taken too (Postfix does; RFC says upper).
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})+")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
# RFC 3461 §4.2: addr-type = atom (RFC 5322 atext).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# RFC 6533 §3: EmbeddedUnicodeChar, \x{HEXPOINT}.
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


class DSNSyntaxError(ValueError):
    """A DSN parameter that cannot be taken; C{str()} is the reply's words."""


def xtext_decode(text: str, what: str) -> str:
    """
    The text C{text} (RFC 3461 §4 xtext) stands for: each C{+HH} is the
    octet HH. Raises L{DSNSyntaxError} naming C{what} when C{text} is not
    xtext or stands for something other than printable ASCII.
    """
    if not _XTEXT.fullmatch(text):
        bad = next((ch for ch in text if not ("!" <= ch <= "~") or ch == "="), None)
        if bad is None and "+" in text:
            why = "a '+' must be followed by two hex digits"
        elif bad is not None and not ("!" <= bad <= "~"):
            why = "a character that is not printable ASCII must be written +HH"
        else:
            why = "'=' must be written +3D"
        if not text:
            why = "it is empty"
        raise DSNSyntaxError(f"{what} is not valid xtext (RFC 3461 4): {why}")
    decoded = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text)
    if not all(" " <= ch <= "~" for ch in decoded):
        raise DSNSyntaxError(f"{what} stands for a control or non-ASCII octet; only printable ASCII is allowed")
    return decoded


def xtext_encode(text: str) -> str:
    """C{text} (printable ASCII) as xtext: C{+}, C{=}, blanks and controls as C{+HH} (RFC 3461 §4)."""
    return "".join(ch if "!" <= ch <= "~" and ch not in "+=" else f"+{ord(ch):02X}" for ch in text)


def parse_ret(value: str) -> str:
    """C{RET=} of MAIL (RFC 3461 §4.3): C{"FULL"} or C{"HDRS"}."""
    upper = value.upper()
    if upper not in ("FULL", "HDRS"):
        raise DSNSyntaxError("RET must be FULL or HDRS (RFC 3461 4.3)")
    return upper


def parse_envid(value: str) -> str:
    """C{ENVID=} of MAIL (RFC 3461 §4.4): the envelope id, decoded; at most 100 characters as sent."""
    if len(value) > MAX_ENVID:
        raise DSNSyntaxError(f"ENVID is {len(value)} characters long; at most {MAX_ENVID} are allowed (RFC 3461 4.4)")
    return xtext_decode(value, "ENVID")


def parse_notify(value: str) -> str:
    """
    C{NOTIFY=} of RCPT (RFC 3461 §4.1): C{NEVER}, or one or more of
    C{SUCCESS}, C{FAILURE}, C{DELAY} separated by commas, each once.
    Returns the keywords in upper case in the order given, joined by commas.
    """
    words = [w.upper() for w in value.split(",")]
    if not value or any(w not in NOTIFY_KEYWORDS for w in words):
        raise DSNSyntaxError("NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY separated by commas (RFC 3461 4.1)")
    if "NEVER" in words and len(words) > 1:
        raise DSNSyntaxError("NOTIFY=NEVER cannot be combined with other keywords (RFC 3461 4.1)")
    if len(set(words)) != len(words):
        raise DSNSyntaxError("NOTIFY names a keyword twice")
    return ",".join(words)


def parse_orcpt(value: str, utf8: bool = False) -> str:
    """
    C{ORCPT=} of RCPT (RFC 3461 §4.2, RFC 6533 §4): C{addr-type;xtext}.
    Returns C{"addr-type;address"}, the address decoded, the type
    C{rfc822} or C{utf-8} in lower case (others as given). C{utf8}: the
    transaction has SMTPUTF8, so a C{utf-8} address may be raw UTF-8.
    """
    if len(value) > MAX_ORCPT:
        raise DSNSyntaxError(f"ORCPT is {len(value)} characters long; at most {MAX_ORCPT} are allowed (RFC 3461 4.2)")
    kind, semicolon, address = value.partition(";")
    if not semicolon or not _ATOM.fullmatch(kind):
        raise DSNSyntaxError("ORCPT must be addr-type;address, e.g. ORCPT=rfc822;bob@example.org (RFC 3461 4.2)")
    if kind.lower() == "utf-8":
        return "utf-8;" + _utf8_address(address, utf8)
    decoded = xtext_decode(address, "ORCPT's address")
    if kind.lower() == "rfc822":
        kind = "rfc822"
        if " " in decoded or "@" not in decoded:
            raise DSNSyntaxError("ORCPT's rfc822 address must be a mailbox, local-part@domain")
    return f"{kind};{decoded}"


def _utf8_address(text: str, utf8: bool) -> str:
    # RFC 6533 §3: QCHAR is printable ASCII but "+", "=", "\"; QUCHAR adds
    # UTF-8 (only in an SMTPUTF8 transaction, §4); \x{HEX} is a character.
    if not text:
        raise DSNSyntaxError("ORCPT's utf-8 address is empty")
    plain = _EMBEDDED.sub("", text)
    for ch in plain:
        if "!" <= ch <= "~" and ch not in "+=\\":
            continue
        if not ch.isascii() and utf8 and ch.isprintable() and ch != "\u00a0":
            continue
        if not ch.isascii():
            raise DSNSyntaxError("ORCPT's utf-8 address has non-ASCII characters; write them \\x{HEX} or give SMTPUTF8 in MAIL (RFC 6533 4)")
        raise DSNSyntaxError("ORCPT's utf-8 address may not hold '+', '=', '\\' or a blank except as \\x{HEX} (RFC 6533 3)")
    try:
        decoded = _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), text)
    except (ValueError, OverflowError):
        raise DSNSyntaxError("ORCPT's utf-8 address names a character that does not exist") from None
    if not all(ch.isprintable() for ch in decoded) or "@" not in decoded:
        raise DSNSyntaxError("ORCPT's utf-8 address must be a mailbox, local-part@domain")
    return decoded


def orcpt_for_wire(orcpt: str) -> str:
    """
    A kept ORCPT (L{parse_orcpt}'s C{"addr-type;address"}) as the
    parameter's value again: the address as xtext, a C{utf-8} one in the
    7-bit C{utf-8-addr-xtext} form, which every next hop takes (RFC 6533 §4).
    """
    kind, _, address = orcpt.partition(";")
    if kind == "utf-8":
        return "utf-8;" + "".join(ch if "!" <= ch <= "~" and ch not in "+=\\" else f"\\x{{{ord(ch):02X}}}" for ch in address)
    return f"{kind};{xtext_encode(address)}"
