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


def _submit_message(hub, message: bytes, sender: str = "alice@localhost"):
    """Submit C{message} as alice with C{sender}; the reply to its DATA."""
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login("alice", "secret")
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt("bob@localhost")[0] == 250
        return smtp.data(message)


def test_with_the_option_the_from_field_must_be_the_account_too(start_hub):
    # Before: only MAIL FROM was checked, so alice could send
    # "From: bob@localhost" with her own envelope sender (Postfix's
    # reject_sender_login_mismatch checks the envelope only).
    hub = start_hub("--submission-sender-match")
    assert _submit_message(hub, b"From: Bob <bob@localhost>\r\nSubject: forged\r\n\r\nhi\r\n") == (
        550,
        b"5.7.1 <bob@localhost>: From: header address rejected: not owned by user alice@localhost",
    )
    # Several authors: the Sender: field must be the account (RFC 5322 3.6.2).
    several = b"From: bob@localhost, alice@localhost\r\n"
    assert _submit_message(hub, several + b"Sender: bob@localhost\r\nSubject: x\r\n\r\nhi\r\n") == (
        550,
        b"5.7.1 <bob@localhost>: Sender: header address rejected: not owned by user alice@localhost",
    )
    code, text = _submit_message(hub, several + b"Subject: no sender\r\n\r\nhi\r\n")
    assert code == 550 and text.startswith(b"5.7.1 Message refused: it has several From: addresses and no Sender: field")
    # The null envelope sender stays allowed; the From: is still checked.
    assert _submit_message(hub, b"From: bob@localhost\r\nSubject: bounce\r\n\r\nhi\r\n", sender="")[0] == 550
    # What passes: her own From (any case, folded, a display name),
    # several authors with her as Sender, no From at all (the hub adds hers).
    assert _submit_message(hub, b"From: =?utf-8?q?Alice?=\r\n <ALICE@localhost>\r\nSubject: own\r\n\r\nhi\r\n")[0] == 250
    assert _submit_message(hub, several + b"Sender: alice@localhost\r\nSubject: with sender\r\n\r\nhi\r\n")[0] == 250
    assert _submit_message(hub, b"Subject: no from\r\n\r\nhi\r\n", sender="")[0] == 250
    # After a refusal the session goes on: the next message is taken.
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login("alice", "secret")
        smtp.ehlo()
        assert smtp.sendmail("alice@localhost", ["bob@localhost"], b"Subject: first\r\n\r\nhi\r\n") == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("alice@localhost", ["bob@localhost"], b"From: carol@localhost\r\nSubject: forged 2\r\n\r\nhi\r\n")
        assert refused.value.smtp_code == 550
        assert smtp.sendmail("alice@localhost", ["bob@localhost"], b"From: alice@localhost\r\nSubject: after\r\n\r\nhi\r\n") == {}
    hub.wait_for_message(to="bob@localhost", subject="after")
    # Nothing was kept of the refused ones.
    assert sorted(m.subject for m in hub.messages("bob")) == ["after", "first", "no from", "own", "with sender"]


def test_without_the_option_the_from_field_is_not_checked(hub):
    assert _submit_message(hub, b"From: bob@localhost\r\nSubject: as bob\r\n\r\nhi\r\n")[0] == 250
    assert hub.wait_for_message(to="bob@localhost").subject == "as bob"
