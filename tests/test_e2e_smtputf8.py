"""
SMTPUTF8 (RFC 6531) on the real hub, with smtplib: non-ASCII addresses on
the MX and submission listeners, accounts with UTF-8 local parts, U-label
and A-label domains; and what a session that did not ask for it sees.
"""

from __future__ import annotations

import glob
import os
import smtplib

import pytest

from tests.hubprocess import client_context

USERS = ("alice:secret", "jöran:geheim", "grüße@exämple.test:pw")


@pytest.fixture
def hub(start_hub):
    return start_hub("--domain", "localhost", users=USERS)


def stored(hub, address: str) -> list[bytes]:
    paths = glob.glob(os.path.join(hub.maildir(address), "new", "*"))
    return [open(p, "rb").read() for p in sorted(paths)]


MESSAGE = "From: Grüße <grüße@exämple.test>\r\nTo: jöran@localhost\r\nSubject: Grüße\r\n\r\nHallo Jöran!\r\n".encode("utf-8")


def test_ehlo_offers_smtputf8_and_a_utf8_message_to_a_utf8_account_is_stored(hub):
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    assert s.has_extn("smtputf8")
    refused = s.sendmail("grüße@exämple.test", ["jöran@localhost"], MESSAGE, mail_options=["SMTPUTF8"])
    assert refused == {}
    s.quit()
    (message,) = stored(hub, "jöran@localhost")
    assert message.endswith(MESSAGE)
    assert "with UTF8SMTP".encode() in message
    assert "for <jöran@localhost>".encode("utf-8") in message


def test_a_u_label_domain_reaches_the_account_of_its_a_label_and_back(hub):
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    # The account is grüße@exämple.test; xn--exmple-cua.test is the same domain.
    assert s.sendmail("alice@localhost", ["grüße@xn--exmple-cua.test"], b"Subject: a-label\r\n\r\nx\r\n", mail_options=["SMTPUTF8"]) == {}
    s.quit()
    assert len(stored(hub, "grüße@exämple.test")) == 1


def test_submission_with_smtputf8_after_login(hub):
    s = smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=20)
    s.ehlo("client.example")
    s.starttls(context=client_context())
    s.ehlo("client.example")
    assert s.has_extn("smtputf8")
    s.login("alice", "secret")
    assert s.sendmail("alice@localhost", ["jöran@localhost"], b"Subject: sub\r\n\r\nx\r\n", mail_options=["SMTPUTF8"]) == {}
    s.quit()
    assert len(stored(hub, "jöran@localhost")) == 1


def test_without_smtputf8_a_non_ascii_address_is_refused_with_5_6_7(hub):
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    s.command_encoding = "utf-8"  # raw UTF-8, as a client that ignores EHLO would send
    code, text = s.docmd("MAIL FROM:<grüße@exämple.test>")
    assert code == 553 and text.startswith(b"5.6.7") and b"SMTPUTF8" in text
    assert s.docmd("MAIL FROM:<alice@localhost>")[0] == 250
    code, text = s.docmd("RCPT TO:<jöran@localhost>")
    assert code == 553 and text.startswith(b"5.6.7")
    # Non-ASCII anywhere else is still a syntax error.
    assert s.docmd("NOOP ü")[0] == 500
    assert s.docmd("NOOP") == (250, b"2.0.0 Ok")
    s.quit()


def test_pop3_utf8_client_gets_the_message_as_sent_and_a_legacy_client_no_raw_8bit(hub):
    import poplib

    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    assert s.sendmail("grüße@exämple.test", ["jöran@localhost"], MESSAGE, mail_options=["SMTPUTF8"]) == {}
    s.quit()
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=20)
    assert "UTF8" in p.capa()
    assert p.utf8().startswith(b"+OK")  # RFC 6856
    p.user("jöran")
    p.pass_("geheim")
    lines = p.retr(1)[1]
    assert "Subject: Grüße".encode() in lines
    p.quit()
    legacy = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=20)
    legacy.user("jöran")
    legacy.pass_("geheim")
    lines = legacy.retr(1)[1]
    header = lines[: lines.index(b"")]
    assert all(line.isascii() for line in header), header
    assert any(line.startswith(b"Subject: =?utf-8?b?") for line in header)
    legacy.quit()


def _retr_octets(p, n: int) -> tuple[int, int]:
    """(the size RETR's +OK names, the octets that followed it), RFC 1939 §11: CRLF ends, no dot-stuffing."""
    reply, lines, _ = p.retr(n)
    announced = int(reply.split()[1])
    sent = sum(len(line[1:] if line.startswith(b"..") else line) + 2 for line in lines)
    return announced, sent


def test_pop3_stat_and_list_count_what_each_kind_of_session_is_sent(hub):
    """RFC 1939 §11 with RFC 6856 §3: a session without UTF8 is sent a downgraded header, longer than the one
    stored; its greeting, STAT and LIST count those octets (they counted the stored ones), a UTF8 session's the stored."""
    import poplib

    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20)
    s.ehlo("client.example")
    assert s.sendmail("grüße@exämple.test", ["jöran@localhost"], MESSAGE, mail_options=["SMTPUTF8"]) == {}
    assert s.sendmail("alice@localhost", ["jöran@localhost"], b"Subject: plain\r\n\r\nascii\r\n", mail_options=["SMTPUTF8"]) == {}
    s.quit()
    for utf8 in (False, True):
        p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=20)
        if utf8:
            assert p.utf8().startswith(b"+OK")
        p.user("jöran")
        greeting = p.pass_("geheim")
        sizes = [int(line.split()[1]) for line in p.list()[1]]
        count, octets = p.stat()
        for n, listed in enumerate(sizes, 1):
            announced, sent = _retr_octets(p, n)
            assert listed == announced == sent, (utf8, n, listed, announced, sent)
        assert count == 2 and octets == sum(sizes)
        assert b"(%d octets)" % octets in greeting
        p.quit()
        if not utf8:
            legacy_first = sizes[0]
    assert legacy_first > sizes[0]  # the downgraded header is longer than the UTF-8 one as stored


def test_vrfy_and_expn_take_a_utf8_string_and_the_smtputf8_parameter(hub):
    # RFC 6531 §3.7.4.2: vrfy = "VRFY" SP String [ SP "SMTPUTF8" ] CRLF,
    # "String may include Non-ASCII characters" (expn the same). It was
    # "500 5.5.2 Error: command contains non-ASCII characters"; Postfix
    # answers 252.
    s = smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=15)
    s.ehlo("client.example")
    assert "smtputf8" in s.esmtp_features
    for line in ("VRFY jöran SMTPUTF8", "VRFY jöran", "vrfy jöran@localhost smtputf8", "VRFY alice SMTPUTF8"):
        s.send(line.encode("utf-8") + b"\r\n")
        code, text = s.getreply()
        assert code == 252 and text.isascii(), (line, code, text)
    s.send("EXPN jöran-liste SMTPUTF8\r\n".encode("utf-8"))
    assert s.getreply() == (502, b"5.5.1 Error: EXPN is not offered")
    s.send(b"VRFY SMTPUTF8\r\n")  # (the String alone: a user of that name)
    assert s.getreply()[0] == 252
    s.send(b"VRFY\r\n")
    assert s.getreply() == (501, b"5.5.4 Syntax: VRFY address [SMTPUTF8]")
    s.send(b"VRFY j\xf6ran\r\n")  # Latin-1: not UTF-8, refused as before
    assert s.getreply() == (500, b"5.5.2 Error: command contains non-ASCII characters")
    s.send("NOOP jöran\r\n".encode("utf-8"))  # (RFC 6531 extends only MAIL, RCPT, VRFY, EXPN)
    assert s.getreply()[0] == 500
    assert s.noop()[0] == 250
    s.quit()
