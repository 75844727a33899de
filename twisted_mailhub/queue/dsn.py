# -*- test-case-name: tests.test_queue -*-
"""
Delivery status notifications (bounces and delay warnings), RFC 3464.

A DSN is a C{multipart/report; report-type=delivery-status} (or C{global-delivery-status}) message
(RFC 6522) with three parts: a text for people, the machine-readable
C{message/delivery-status} (one per-message block, then one block per
recipient), and the original message's header as C{text/rfc822-headers}.
It is sent from the null sender C{<>} (RFC 5321 §4.5.5) so that it can
never cause another bounce, and marked C{Auto-Submitted: auto-replied}
(RFC 3834). Built as bytes with CRLF line ends, like every stored message.

Internationalized mail (RFC 6531's SMTPUTF8) gets a global DSN (RFC
6533): when the sender, a reported recipient or its ORCPT is not ASCII,
the machine-readable part is C{message/global-delivery-status} (8bit)
with C{Final-Recipient: utf-8; jürgen@example.org} as it is, the
original header goes as C{message/global-headers} (and a returned
message as C{message/global}), a non-ASCII sender is written as it is
in C{To:} (RFC 6532) and the text for people is UTF-8. A report on ASCII
addresses keeps the plain forms.

With the DSN extension (RFC 3461; the parameters are read in
L{twisted_mailhub.smtp.dsn}): C{Original-Envelope-Id} gives the MAIL's
ENVID and C{Original-Recipient} each RCPT's ORCPT (RFC 3464 §2.2.1,
§2.3.1); a report of failures to a MAIL with C{RET=FULL} returns the
whole message (C{message/rfc822}, or C{message/global} when it is not
ASCII), every other report its header only (RFC 3461 §4.3); and besides
C{failed} and C{delayed} a report may say C{delivered} (stored in a
maildrop here) or C{relayed} (handed to a next hop that does not offer
DSN), RFC 3461 §6.2.
"""

from __future__ import annotations

import email.utils
import os
import re
from typing import Iterable

from twisted_mailhub.queue.schedule import format_duration
from twisted_mailhub.queue.storage import QueuedMessage, Recipient

# RFC 3461 §4.3: with RET=FULL an MTA "MAY return only the headers" of a
# large message. Up to this many octets the whole message goes back (Postfix
# stops at bounce_size_limit, 50000); past it the header, and words saying so.
FULL_RETURN_MOST = 1024 * 1024

_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


def status_of(recipient: Recipient, default: str) -> str:
    """
    The RFC 3463 status for a recipient: the enhanced code in the reply if
    there is one, else the reply's class with C{.0.0}, else C{default}.
    """
    m = _ENHANCED.match(recipient.reply or "")
    if m:
        return m.group(1)
    if 200 <= recipient.code < 600:
        return f"{recipient.code // 100}.0.0"
    return default


def original_headers(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    head = message if end < 0 else message[:end]
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").rstrip(b"\r\n") + b"\r\n"


def xtext_address(address: str) -> str:
    """
    C{address} in RFC 6533 §3's C{utf-8-addr-xtext} form: printable ASCII
    but C{+}, C{=} and C{\\} as they are, every other character as
    C{\\x{HEX}} (upper case, two digits at least), e.g. C{j\\x{FC}rgen@b.test}.
    """
    out = []
    for ch in address:
        point = ord(ch)
        out.append(ch if 0x21 <= point <= 0x7E and ch not in "+=\\" else f"\\x{{{point:02X}}}")
    return "".join(out)


def recipient_field(address: str, utf8: bool = False) -> str:
    """
    The value of C{Final-Recipient} for C{address} (RFC 3464 §2.3.2):
    C{rfc822; ADDRESS} for an ASCII address, else RFC 6533's C{utf-8;}
    type: in a C{message/global-delivery-status} (C{utf8}) the address as
    it is (C{utf-8-address}, §3), else its 7-bit form (L{xtext_address}).
    """
    if address.isascii():
        return f"rfc822; {_ascii(address)}"
    if utf8:
        return f"utf-8; {_unitext(address)}"
    return f"utf-8; {xtext_address(address)}"


def original_recipient_field(orcpt: str, utf8: bool = False) -> str:
    """
    The value of C{Original-Recipient} (RFC 3464 §2.3.1) for a kept ORCPT
    (C{"addr-type;address"}, decoded): C{rfc822; bob@b.test}; a C{utf-8}
    address as it is in a C{message/global-delivery-status} (C{utf8}),
    else in RFC 6533's C{utf-8-addr-xtext} form.
    """
    kind, _, address = orcpt.partition(";")
    if kind == "utf-8":
        return f"utf-8; {_unitext(address) if utf8 else xtext_address(address)}"
    return f"{_ascii(kind)}; {_ascii(address)}"


def _unitext(address: str) -> str:
    # RFC 6533 §3 utf-8-address: UTF-8 as it is; a control or a blank
    # (never in a mailbox the server took) still as \x{HEX}.
    return "".join(ch if ch.isprintable() and not ch.isspace() and ch != "\\" else f"\\x{{{ord(ch):02X}}}" for ch in address)


_HOP = re.compile(r"(?:(?P<name>[^\[\]]+)\[[^\]]*\]|\[(?P<v6>[^\]]+)\]|(?P<plain>[^:\[\]]+)):\d+")


def mta_name(remote: str) -> str:
    """
    The C{dns} name of the MTA C{remote} (a L{Hop} as the relay writes it:
    C{mx.b.test[192.0.2.1]:25}, C{relay.b.test:587}, C{192.0.2.1:25},
    C{[::1]:25}) for C{Remote-MTA: dns; NAME} (RFC 3464 §2.3.5): the host
    name without the port; an address alone in brackets as RFC 5321
    §4.1.3 writes it (C{[192.0.2.1]}, C{[IPv6:::1]}).
    """
    m = _HOP.fullmatch(remote)
    if m is None:
        return _ascii(remote)
    if m.group("name"):
        return _ascii(m.group("name"))
    if m.group("v6"):
        return f"[IPv6:{m.group('v6')}]"
    plain = m.group("plain")
    return f"[{plain}]" if re.fullmatch(r"[0-9.]+", plain) else _ascii(plain)


def _rfc822_date(when: float) -> str:
    # In the local zone with its offset, as the Received: lines write it
    # (localtime=False would write -0000, "zone unknown": RFC 5322 §3.3).
    return email.utils.formatdate(when, localtime=True)


def _ascii(text: str) -> str:
    # DSN fields are ASCII (RFC 3464 §2.1.1); a peer's reply may not be.
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")


_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}


def build_dsn(
    entry: QueuedMessage,
    recipients: Iterable[Recipient],
    original: bytes,
    hostname: str,
    now: float,
    action: str = "failed",
    retry_until: float | None = None,
) -> bytes:
    """
    A DSN to C{entry.sender} about C{recipients}, C{action} being
    C{"failed"} (a bounce), C{"delayed"} (a warning), C{"delivered"} or
    C{"relayed"} (RFC 3464 §2.3.3). The bytes of a whole message with
    CRLF line ends; C{original} is the message it reports on.
    """
    recipients = list(recipients)
    failed = action == "failed"
    full = failed and entry.ret == "FULL" and len(original) <= FULL_RETURN_MOST
    cut = failed and entry.ret == "FULL" and not full
    head = original_headers(original)
    if full:
        returned = original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        returned = returned if returned.endswith(b"\r\n") else returned + b"\r\n"
    else:
        returned = head
    # RFC 6533: a report on a message with UTF-8 addresses (SMTPUTF8) is a
    # global one; the plain form stays for ASCII.
    intl = not (entry.sender.isascii() and all(r.address.isascii() and r.orcpt.isascii() for r in recipients))
    show = (lambda text: text.replace("\r", " ").replace("\n", " ")) if intl else _ascii
    boundary = "=_mailhub_dsn_" + os.urandom(8).hex()
    subject = _SUBJECTS[action]
    lines: list[str] = []
    lines.append(f"This is the mail system at {hostname}.")
    lines.append("")
    if failed:
        lines.append("Your message could not be delivered to the recipients below.")
        lines.append("Delivery has been given up; the message was not delivered to them.")
    elif action == "delivered":
        lines.append("Your message was delivered to the mailboxes of the recipients below,")
        lines.append("as you asked (a delivery status notification, RFC 3461).")
    elif action == "relayed":
        lines.append("Your message was passed on to the recipients' mail system below, as you asked")
        lines.append("(RFC 3461). That system does not offer delivery status notifications,")
        lines.append("so you will hear no more about its delivery.")
    else:
        waited = format_duration(max(0, int(now - entry.created)))
        lines.append(f"Your message has not been delivered yet, after {waited}.")
        lines.append("The mail system will keep trying; you do not need to send it again.")
        if retry_until is not None:
            lines.append(f"It will give up at {_rfc822_date(retry_until)}.")
    lines.append("")
    for r in recipients:
        said = r.last_reply
        if r.remote and r.code > 0:
            said += f" (from {r.remote})"
        if r.expired:
            queued = format_duration(max(0, int(now - entry.created)))
            said = f"4.4.7 gave up after {queued} in the queue; last try: {said or 'none'}"
        lines.append(f"<{show(r.address)}>: {show(said)}")
    if cut:
        lines.append("")
        lines.append(f"The message is larger than {FULL_RETURN_MOST} octets: only its header is returned.")
    human = "\r\n".join(lines) + "\r\n"

    status: list[str] = []
    if entry.envid:
        status.append(f"Original-Envelope-Id: {_ascii(entry.envid)}")
    status += [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailhub-Queue-ID: {entry.id}",
        f"Arrival-Date: {_rfc822_date(entry.created)}",
        "",
    ]
    for r in recipients:
        if r.orcpt:
            status.append(f"Original-Recipient: {original_recipient_field(r.orcpt, intl)}")
        status.append(f"Final-Recipient: {recipient_field(r.address, intl)}")
        status.append(f"Action: {action}")
        if action in ("delivered", "relayed"):
            status.append(f"Status: {status_of(r, '2.0.0')}")
        else:
            status.append(f"Status: {'4.4.7' if r.expired else status_of(r, '4.4.7' if not failed or r.code < 500 else '5.0.0')}")
        if r.remote and r.code > 0:  # an MTA answered (none did when the connection failed)
            status.append(f"Remote-MTA: dns; {mta_name(r.remote)}")
        if r.code > 0:
            status.append(f"Diagnostic-Code: smtp; {r.code} {_ascii(r.reply)}")
        elif r.reply:
            status.append(f"X-Mailhub-Diagnostic: {_ascii(r.reply)}")
        status.append(f"Last-Attempt-Date: {_rfc822_date(now)}")
        if retry_until is not None and not failed:
            status.append(f"Will-Retry-Until: {_rfc822_date(retry_until)}")
        status.append("")
    delivery_status = "\r\n".join(status)

    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{show(entry.sender)}>",
        f"Subject: {subject}",
        f"Date: {_rfc822_date(now)}",
        f"Message-ID: <{entry.id}.{os.urandom(4).hex()}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        # RFC 6522 §3: report-type names the subtype of the second part
        f'Content-Type: multipart/report; report-type={"global-" if intl else ""}delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit" if intl else "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
    ]
    out = "\r\n".join(header) + "\r\n" + human + "\r\n"
    if intl:
        # RFC 6533 §6.2: UTF-8 addresses as they are, the part 8bit.
        out += f"--{boundary}\r\nContent-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\nContent-Description: Delivery report\r\n\r\n"
    else:
        out += f"--{boundary}\r\nContent-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"
    out += delivery_status + "\r\n"
    if full:
        # RFC 3461 §4.3 RET=FULL; RFC 6532 §3.7: message/global when not ASCII.
        kind = "message/rfc822" if head.isascii() and not intl else "message/global"
        eight = "" if returned.isascii() else "Content-Transfer-Encoding: 8bit\r\n"
        out += f"--{boundary}\r\nContent-Type: {kind}\r\n{eight}Content-Description: Undelivered message\r\n\r\n"
    else:
        # RFC 6533 §6.3: a header that is not ASCII goes as message/global-headers.
        kind = "text/rfc822-headers" if head.isascii() and not intl else "message/global-headers"
        what = "Undelivered message headers" if action in ("failed", "delayed") else "Message headers"
        out += f"--{boundary}\r\nContent-Type: {kind}\r\nContent-Description: {what}\r\n\r\n"
    return out.encode("utf-8") + returned + f"\r\n--{boundary}--\r\n".encode("ascii")
