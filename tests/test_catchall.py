"""
--catch-all ADDRESS: any recipient at any domain is stored for that
account, with the original recipient in X-Original-To:, and nothing is
ever relayed.
"""

from __future__ import annotations

import glob
import os
import smtplib

import pytest

from twisted_mailhub.testing import Mailhub, MailhubStartError

CATCHER = "catcher@localhost"


@pytest.fixture(scope="module")
def shared():
    with Mailhub("--catch-all", CATCHER, accounts=[f"{CATCHER}:pw", "alice:secret"]) as hub:
        yield hub


@pytest.fixture
def hub(shared):
    shared.purge()
    return shared


def send(hub, recipients, subject, login=None):
    body = f"From: app@example.net\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()
    port = hub.ports["submission" if login else "smtp"]
    with smtplib.SMTP(hub.host, port, timeout=10) as s:
        if login:
            s.starttls(context=hub.ssl_context)
            s.login(*login)
        s.sendmail("app@example.net", recipients, body)


def test_mail_for_any_domain_is_caught_with_the_original_recipient(hub):
    send(hub, ["someone@customer.example"], "order shipped")
    got = hub.wait_for_message(to=CATCHER, subject="order shipped")
    assert got["X-Original-To"] == "<someone@customer.example>"
    assert got["Delivered-To"] == "<catcher@localhost>"
    assert "for <someone@customer.example>" in got["Received"]


def test_each_original_recipient_gets_its_own_caught_copy(hub):
    send(hub, ["a@one.example", "b@two.example"], "two of them")
    hub.wait_for_message(to="b@two.example", subject="two of them")
    caught = sorted(str(m["X-Original-To"]) for m in hub.messages(CATCHER))
    assert caught == ["<a@one.example>", "<b@two.example>"]


def test_an_authenticated_sender_is_caught_too_never_relayed(hub):
    send(hub, ["customer@elsewhere.example"], "from the app", login=("alice", "secret"))
    got = hub.wait_for_message(to="customer@elsewhere.example", subject="from the app")
    assert got.account == CATCHER
    queue = os.path.join(hub.data_dir, "queue")
    assert glob.glob(os.path.join(queue, "*.msg")) == [] and glob.glob(os.path.join(queue, "*.env")) == []


def test_an_account_of_the_hub_still_gets_its_own_mail(hub):
    send(hub, ["alice@localhost"], "for alice")
    got = hub.wait_for_message(to="alice@localhost", subject="for alice")
    assert got.account == "alice@localhost" and got["X-Original-To"] is None
    assert hub.messages(CATCHER) == []


def test_catch_all_that_is_not_an_account_stops_the_start_saying_so():
    with pytest.raises(MailhubStartError) as caught:
        Mailhub("--catch-all", "nobody@localhost", accounts=["alice:secret"]).start()
    assert "--catch-all nobody@localhost: no such account" in caught.value.log
