"""
--smarthost-auth sends its password only over TLS (Postfix's default,
noplaintext): a smarthost that offers AUTH but no STARTTLS (or a man in the
middle who struck STARTTLS from its EHLO reply) never sees it; the mail
waits in the queue with a clear reason.
"""

from __future__ import annotations

import pytest

from tests.test_e2e_relay import free_port, messages, queued, start_a, submit


@pytest.fixture
def plaintext_auth_peer():
    """aiosmtpd offering AUTH PLAIN/LOGIN without STARTTLS; records every login."""
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    smtp_mod = pytest.importorskip("aiosmtpd.smtp")
    logins = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password))
        return smtp_mod.AuthResult(success=True)

    controller = controller_mod.Controller(
        Handler(), hostname="127.0.0.1", port=free_port(), authenticator=authenticator, auth_require_tls=False
    )
    controller.start()
    try:
        yield controller.port, logins
    finally:
        controller.stop()


def test_smarthost_password_is_never_sent_without_tls(start_hub, plaintext_auth_peer):
    port, logins = plaintext_auth_peer
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{port}", "--smarthost-auth", "relayuser:relaypass", "--retry-schedule", "1h")
    submit(a, ["carol@c.test"])
    a.wait_for_log(r"relay \S+ .* <carol@c.test> [^\n]*does not offer STARTTLS: the smarthost password \(--smarthost-auth\) is sent only over TLS")
    assert logins == []
    assert len(queued(a)) == 1  # kept, tried again later
    assert messages(a, "alice@a.test") == []  # no bounce


def test_a_session_that_failed_before_mail_is_logged_via_the_host_it_reached(start_hub, plaintext_auth_peer):
    # It connected and stopped at STARTTLS/AUTH: "via (no connection)" was
    # what the log said, sending the operator after a network fault.
    port, logins = plaintext_auth_peer
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{port}", "--smarthost-auth", "relayuser:relaypass", "--retry-schedule", "1h")
    submit(a, ["carol@c.test"])
    line = a.wait_for_log(r"relay \S+ <[^>]*> to c\.test via (\S+): <carol@c\.test>[^\n]*STARTTLS")
    assert line.group(1) == f"127.0.0.1:{port}"
    assert "(no connection)" not in a.log
