# -*- test-case-name: tests.test_queue -*-
"""
Delivery status notifications (bounces and delay warnings), RFC 3464.

A DSN is a C{multipart/report; report-type=delivery-status} message
(RFC 6522) with three parts: a text for people, the machine-readable
C{message/delivery-status} (one per-message block, then one block per
recipient), and the original message's header as C{text/rfc822-headers}.
It is sent from the null sender C{<>} (RFC 5321 §4.5.5) so that it can
never cause another bounce, and marked C{Auto-Submitted: auto-replied}
(RFC 3834). Built as bytes with CRLF line ends, like every stored message.
"""

from __future__ import annotations

import email.utils
import os
import re
from typing import Iterable

from twisted_mailhub.queue.schedule import format_duration
from twisted_mailhub.queue.storage import QueuedMessage, Recipient

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


def _rfc822_date(when: float) -> str:
    return email.utils.formatdate(when, localtime=False)


def _ascii(text: str) -> str:
    # DSN fields are ASCII (RFC 3464 §2.1.1); a peer's reply may not be.
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")


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
    C{"failed"} (a bounce) or C{"delayed"} (a warning).
    """
    recipients = list(recipients)
    boundary = "=_mailhub_dsn_" + os.urandom(8).hex()
    failed = action == "failed"
    subject = "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    lines: list[str] = []
    lines.append(f"This is the mail system at {hostname}.")
    lines.append("")
    if failed:
        lines.append("Your message could not be delivered to the recipients below.")
        lines.append("Delivery has been given up; the message was not delivered to them.")
    else:
        waited = format_duration(max(0, int(now - entry.created)))
        lines.append(f"Your message has not been delivered yet, after {waited}.")
        lines.append("The mail system will keep trying; you do not need to send it again.")
        if retry_until is not None:
            lines.append(f"It will give up at {_rfc822_date(retry_until)}.")
    lines.append("")
    for r in recipients:
        said = f"{r.code} {r.reply}" if r.code > 0 else r.reply
        where = f" (from {r.remote})" if r.remote else ""
        lines.append(f"<{r.address}>: {_ascii(said)}{where}")
    human = "\r\n".join(lines) + "\r\n"

    status: list[str] = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailhub-Queue-ID: {entry.id}",
        f"Arrival-Date: {_rfc822_date(entry.created)}",
        "",
    ]
    for r in recipients:
        status.append(f"Final-Recipient: rfc822; {_ascii(r.address)}")
        status.append(f"Action: {action}")
        status.append(f"Status: {status_of(r, '4.4.7' if not failed or r.code < 500 else '5.0.0')}")
        if r.remote:
            status.append(f"Remote-MTA: dns; {_ascii(r.remote)}")
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
        f"To: <{entry.sender}>",
        f"Subject: {subject}",
        f"Date: {_rfc822_date(now)}",
        f"Message-ID: <{entry.id}.{os.urandom(4).hex()}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
    ]
    out = "\r\n".join(header) + "\r\n" + human + "\r\n"
    out += f"--{boundary}\r\nContent-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"
    out += delivery_status + "\r\n"
    out += f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\nContent-Description: Undelivered message headers\r\n\r\n"
    return out.encode("ascii") + original_headers(original) + f"\r\n--{boundary}--\r\n".encode("ascii")
