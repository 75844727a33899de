"""
RFC 5321 §4.1.2 allows a local part given as a Quoted-string (C{"al ice"},
C{"a@b"}, C{"a\\"b"}; with SMTPUTF8 also non-ASCII inside, RFC 6531 §3.3).
Such an address is good syntax: a local recipient that no account can be
is 550 "user unknown" with the reason (account names have no blank...),
never 553 "bad address syntax"; a sender or a relayed recipient with one
goes through as the client wrote it, on every SMTP port.
"""

from __future__ import annotations

import os
import smtplib
import time

import pytest

from tests.test_e2e_relay import aiosmtpd_peer, start_a  # noqa: F401 (fixture)

UNKNOWN_BLANK = "User unknown in local recipient table (no account's name has a blank or other white space)"


def session(hub, port="smtp", login=None) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", hub.ports[port], timeout=20)
    s.command_encoding = "utf-8"  # RFC 6531: UTF-8 addresses after SMTPUTF8
    s.ehlo("client.test")
    if login:
        s.login(*login)
    return s


def reply(s: smtplib.SMTP, line: str) -> tuple[int, str]:
    code, text = s.docmd(line)
    return code, text.decode("utf-8")


@pytest.mark.parametrize("port,login", [("smtp", None), ("submission", ("alice", "secret"))])
def test_a_quoted_local_part_no_account_can_have_is_user_unknown_with_the_reason(hub, port, login):
    with session(hub, port, login) as s:
        assert reply(s, "MAIL FROM:<alice@localhost>")[0] == 250
        assert reply(s, 'RCPT TO:<"al ice"@localhost>') == (550, f'5.1.1 <"al ice"@localhost>: Recipient address rejected: {UNKNOWN_BLANK}')
        code, text = reply(s, 'RCPT TO:<"a@b"@localhost>')
        assert code == 550 and text.endswith("(no account's name has an @)")
        code, text = reply(s, 'RCPT TO:<"a\\"b"@localhost>')
        assert code == 550 and text.endswith("(no account's name has a double quote)")
        # A quoted name an account could have is that account (RFC 5321 §2.4).
        assert reply(s, 'RCPT TO:<"bob"@localhost>')[0] == 250
        # Still bad syntax: a blank outside quotes, a stray quote, a control.
        for bad in ("<al ice@localhost>", '<"a"b"@localhost>', '<"a\tb"@localhost>'):
            code, text = reply(s, f"RCPT TO:{bad}")
            assert code == 553 and "bad address syntax" in text, (bad, code, text)


def test_a_quoted_non_ascii_local_part_with_smtputf8_is_user_unknown(hub):
    with session(hub) as s:
        assert reply(s, "MAIL FROM:<alice@localhost> SMTPUTF8")[0] == 250
        code, text = reply(s, 'RCPT TO:<"zoë x"@localhost>')
        assert code == 550 and text.startswith("5.1.1 <") and text.endswith(f"Recipient address rejected: {UNKNOWN_BLANK}")
    with session(hub) as s:
        # Without SMTPUTF8 the same address is refused for what it needs.
        assert reply(s, "MAIL FROM:<alice@localhost>")[0] == 250
        code, text = reply(s, 'RCPT TO:<"zoë x"@localhost>')
        assert code == 553 and "needs MAIL FROM:<...> SMTPUTF8" in text


def test_vrfy_of_a_quoted_local_part_is_answered_as_any_other(hub):
    with session(hub) as s:
        assert reply(s, 'VRFY "al ice"@localhost')[0] == 252
        assert reply(s, 'EXPN "al ice"@localhost')[0] == 502


def test_a_sender_with_a_quoted_local_part_is_delivered_with_it_as_return_path(hub):
    with session(hub) as s:
        assert reply(s, 'MAIL FROM:<"al ice"@example.org>') == (250, "2.1.0 Ok")
        assert reply(s, "RCPT TO:<alice@localhost>")[0] == 250
        code, _ = s.data(b"Subject: quoted sender\r\n\r\nhello\r\n")
        assert code == 250
    new = os.path.join(hub.maildir("alice@localhost"), "new")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.listdir(new):
        time.sleep(0.05)
    [name] = os.listdir(new)
    with open(os.path.join(new, name), "rb") as f:
        head = f.read().partition(b"\r\n\r\n")[0]
    assert head.startswith(b'Return-Path: <"al ice"@example.org>\r\n'), head


def test_quoted_local_parts_are_relayed_exactly_as_the_client_wrote_them(start_hub, aiosmtpd_peer):  # noqa: F811
    port, peer = aiosmtpd_peer
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}")
    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=20) as s:
        s.login("alice@a.test", "secret")
        assert reply(s, "MAIL FROM:<alice@a.test>")[0] == 250
        assert reply(s, 'RCPT TO:<"carol smith"@c.test>')[0] == 250
        assert reply(s, 'RCPT TO:<"a\\"b"@c.test>')[0] == 250
        code, _ = s.data(b"Subject: quoted\r\n\r\nhello\r\n")
        assert code == 250
    a.wait_for_log(r"queue: \S+ done: 2 delivered")
    [(sender, rcpts, _data)] = peer.envelopes
    assert sender == "alice@a.test"
    assert rcpts == ['"carol smith"@c.test', '"a\\"b"@c.test']
