"""
A logged-in sender's recipient whose domain is no domain name ("a..b",
"-x-.test", a label of 70 octets, "[300.1.1.1]", a name with octets that
are not UTF-8 typed into the webmail) is refused at once, for good (553
5.1.3, RFC 5321 §4.1.2, §4.1.3), as Postfix refuses bad address syntax.
Before, it was accepted (250), queued, and retried for days against a name
no lookup can find ("DNS lookup of MX localhost\ufffd failed: UnicodeError").
"""

from __future__ import annotations

import smtplib

import pytest

from tests.hubprocess import client_context
from tests.web_helpers import WebClient

BAD = ["x@a..b", "x@-bad-.test", "x@exa_mple.test", "x@" + "a" * 70 + ".test", "x@.test", "x@[300.1.1.1]", "x@[IPv6:zz]"]


@pytest.fixture
def relaying_hub(start_hub):
    return start_hub("--mx-override", "*=127.0.0.1:9", "--retry-schedule", "1h")


def test_submission_refuses_a_recipient_domain_that_is_no_domain_name(relaying_hub):
    hub = relaying_hub
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=20) as client:
        client.starttls(context=client_context())
        client.login("alice", "secret")
        client.mail("alice@localhost")
        for rcpt in BAD:
            code, text = client.rcpt(rcpt)
            assert code == 553 and text.startswith(f"5.1.3 <{rcpt}>: Recipient address rejected: the".encode()), (rcpt, code, text)
        assert client.rcpt("x@example.test")[0] == 250
        assert client.rcpt("x@[192.0.2.1]")[0] == 250


def test_webmail_refuses_a_recipient_typed_with_octets_that_are_not_utf8(relaying_hub):
    browser = WebClient(relaying_hub)
    browser.login("alice", "secret")
    # (since fixes2: octets that are not UTF-8 are a form error before any
    # recipient is tried; the U+FFFD they would have become, sent again as
    # UTF-8, is the domain the relay check refuses)
    page = browser.post("/compose", {"to": b"bob@localhost\xff", "subject": "hi", "body": "typed"})
    assert page.status == 400, page.status
    assert "Not sent: The To came in octets that are not UTF-8" in page.text, page.text[-2000:]
    page = browser.post("/compose", {"to": "bob@localhost\ufffd", "subject": "hi", "body": "typed"})
    assert page.status == 400, page.status
    assert "Not sent to everyone" in page.text and "553 5.1.3" in page.text, page.text[-2000:]
    assert "Sent to" not in page.text
