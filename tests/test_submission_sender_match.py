"""
--submission-sender-match (RFC 6409 §6.1): a logged-in client may only use
its own account's address as the envelope sender; off by default.
"""

from __future__ import annotations

import smtplib

import pytest

from tests.hubprocess import client_context


def _submit(hub, sender: str):
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login("alice", "secret")
        smtp.ehlo()
        mail = smtp.mail(sender)
        if mail[0] == 250:
            assert smtp.rcpt("bob@localhost")[0] == 250
            assert smtp.data(b"Subject: from <" + sender.encode() + b">\r\n\r\nhi\r\n")[0] == 250
        return mail


def test_with_the_option_another_sender_is_553_and_the_own_one_goes(start_hub):
    hub = start_hub("--submission-sender-match")
    code, text = _submit(hub, "bob@localhost")
    assert code == 553
    assert text == b"5.7.1 <bob@localhost>: Sender address rejected: not owned by user alice@localhost"
    assert _submit(hub, "Alice@LOCALHOST")[0] == 250
    assert _submit(hub, "alice")[0] == 250  # qualified with the default domain
    assert _submit(hub, "")[0] == 250  # the null sender (RFC 5321 §4.5.5)
    subjects = sorted(m.subject for m in hub.messages("bob"))
    assert subjects == ["from <>", "from <Alice@LOCALHOST>", "from <alice>"]


def test_without_the_option_any_sender_is_taken_as_before(hub):
    assert _submit(hub, "bob@localhost")[0] == 250
    assert hub.wait_for_message(to="bob@localhost").subject == "from <bob@localhost>"
