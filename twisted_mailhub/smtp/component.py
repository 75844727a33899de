# -*- test-case-name: tests.test_smtp_server -*-
"""
The SMTP component: the MX listener (STARTTLS), message submission
(RFC 6409, AUTH required) and submission over implicit TLS (RFC 8314).
"""

from __future__ import annotations

from twisted.mail import smtp
from twisted.python import usage

from twisted_mailhub.hub import ListenerSpec
from twisted_mailhub.smtp.delivery import avatar_factory
from twisted_mailhub.smtp.server import DSN_SUCCESS_FROM, MailhubSMTPFactory

listeners = [
    ListenerSpec("smtp", "tcp:8025", "SMTP (MX) listener, strports endpoint (STARTTLS offered)."),
    ListenerSpec("submission", "tcp:8587", "Message submission listener (RFC 6409): AUTH required."),
    ListenerSpec("smtps", "tcp:8465", "Submission over implicit TLS (RFC 8314): AUTH required.", tls="implicit"),
]

option_parameters = [
    ["max-recipients", None, 100, "Most recipients accepted for one SMTP message.", int],
    ["smtp-idle-timeout", None, 300, "Seconds an SMTP client may stay silent (RFC 5321 §4.5.3.2 asks for at least 300).", int],
    ["smtp-command-timeout", None, 120, "Seconds an SMTP client may take to send one command line.", int],
    ["smtp-login-timeout", None, 300, "Seconds a submission client may take to authenticate.", int],
    ["dsn-success-from", None, "trusted", "Whose NOTIFY=SUCCESS (RFC 3461 §4.1) is honoured: 'trusted' (clients that logged in, or from --trusted-networks), 'anyone', or 'nobody'. For any other client SUCCESS is taken out of NOTIFY (Sendmail's noreceipts), so a forged sender on the MX port earns no delivered report (backscatter)."],
    ["postmaster", None, None, "Account that gets mail for postmaster@<local domain> when no such account exists (RFC 5321 §4.5.1); default: the first account."],
]


option_flags = [
    ["submission-sender-match", None, "Refuse a logged-in client's MAIL FROM that is not its own account's address (553 5.7.1; RFC 6409 §6.1, as Postfix's reject_sender_login_mismatch; MAIL FROM:<> still allowed), and a message whose From: address (Sender: when From: has several) is not (550 5.7.1 after DATA)."],
]


def check_options(options) -> None:
    for name in ("max-recipients", "smtp-idle-timeout", "smtp-command-timeout", "smtp-login-timeout"):
        if options[name] is not None and int(options[name]) < 1:
            raise usage.UsageError(f"--{name} must be at least 1")
    if (options.get("dsn-success-from") or "trusted") not in DSN_SUCCESS_FROM:
        raise usage.UsageError("--dsn-success-from must be trusted, anyone or nobody")


def install(hub) -> None:
    hub.realm.register(smtp.IMessageDelivery, avatar_factory)
    if getattr(hub, "relay", None) is None:
        # The outbound queue (another component) sets this when installed.
        hub.relay = None
    options = hub.options
    settings = {
        "max_recipients": int(options.get("max-recipients") or 100),
        "idle_timeout": int(options.get("smtp-idle-timeout") or 300),
        "command_timeout": int(options.get("smtp-command-timeout") or 120),
        "login_timeout": int(options.get("smtp-login-timeout") or 300),
        "sender_must_match": bool(options.get("submission-sender-match")),
        "dsn_success_from": options.get("dsn-success-from") or "trusted",
    }
    hub.listen_each(
        listeners,
        lambda spec: MailhubSMTPFactory(hub, spec.name, require_auth=spec.name != "smtp", settings=settings),
    )
