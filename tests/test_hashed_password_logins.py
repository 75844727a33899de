"""
Accounts whose passwords are all scrypt hashes (what `mailhub-admin user
add` writes) log in with real clients on every listener: the hub does not
offer APOP or CRAM-MD5 then, which need the plain password, because
clients pick them first whenever they are listed (curl, Python's smtplib,
swaks) and then fail without trying the password mechanisms.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import smtplib
import socket
import subprocess

import pytest

from tests.hubprocess import client_context
from twisted_mailhub.accounts import hash_password

HASHED = ("carol:" + hash_password("tea for two"), "dave:" + hash_password("hungry"))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed (.ci/run installs it)")
        pytest.skip(f"{tool} is not installed (.ci/run installs it)")
    return path


def greeting_and_capa(port: int) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        greeting = f.readline()
        s.sendall(b"CAPA\r\n")
        capa = b""
        while not capa.endswith(b"\r\n.\r\n"):
            capa += f.readline()
        return greeting, capa


def test_curl_reads_pop3_and_imap_of_an_account_with_a_hashed_password(start_hub):
    curl = need("curl")
    hub = start_hub(users=HASHED)
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as s:
        s.sendmail("x@y.test", ["carol@localhost"], b"Subject: hi\r\n\r\nfor carol\r\n")
    pop = subprocess.run([curl, "-sS", "--max-time", "20", "-u", "carol:tea for two", f"pop3://127.0.0.1:{hub.ports['pop3']}/1"],
                         capture_output=True, timeout=30)
    assert pop.returncode == 0, pop.stderr
    assert pop.stdout.endswith(b"for carol\r\n")
    imap = subprocess.run([curl, "-sS", "--max-time", "20", "-u", "carol:tea for two", f"imap://127.0.0.1:{hub.ports['imap']}/INBOX;UID=1"],
                          capture_output=True, timeout=30)
    assert imap.returncode == 0, imap.stderr
    assert imap.stdout.endswith(b"for carol\r\n")


def test_smtplib_logs_in_to_submission_with_a_hashed_password(start_hub):
    hub = start_hub(users=HASHED)
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as s:
        s.ehlo()
        assert not s.has_extn("auth")  # nothing that can succeed before TLS
        s.starttls(context=client_context())
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        s.login("dave", "hungry")  # smtplib tries CRAM-MD5 first when listed
        s.sendmail("dave@localhost", ["carol@localhost"], b"Subject: sent\r\n\r\nby dave\r\n")


def test_no_apop_timestamp_or_cram_md5_is_offered_when_every_password_is_hashed(start_hub):
    hub = start_hub(users=HASHED)
    greeting, capa = greeting_and_capa(hub.ports["pop3"])
    assert greeting.startswith(b"+OK ") and b"<" not in greeting
    assert b"CRAM-MD5" not in capa and b"\r\nSASL PLAIN\r\n" in capa
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    with pytest.raises(poplib.error_proto) as refused:
        p._shortcmd("APOP carol 0123456789abcdef0123456789abcdef")
    assert b"APOP is not offered here" in refused.value.args[0]
    p.user("carol")
    p.pass_("tea for two")
    p.quit()
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert "AUTH=CRAM-MD5" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error) as refused:
        c.authenticate("CRAM-MD5", lambda challenge: b"carol 0123")
    assert "mechanism not supported" in str(refused.value)
    c.login("carol", "tea for two")
    c.logout()


def test_challenge_response_stays_offered_while_an_account_keeps_a_plain_password(start_hub):
    hub = start_hub(users=HASHED + ("alice:secret",))
    greeting, capa = greeting_and_capa(hub.ports["pop3"])
    assert b"<" in greeting and b"CRAM-MD5" in capa
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as s:
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["CRAM-MD5"]
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert "AUTH=CRAM-MD5" in c.capabilities
    c.logout()


def test_the_book_knows_whether_some_password_is_plain_after_every_change():
    from twisted_mailhub.accounts import AccountBook

    book = AccountBook(["localhost"])
    assert not book.has_plain_password()
    book.add("carol", hash_password("x"))
    assert not book.has_plain_password()
    book.add("alice", "secret")
    assert book.has_plain_password()
    book.remove("alice")
    assert not book.has_plain_password()
    other = AccountBook(["localhost"])
    other.add("bob", "hungry")
    book.replace_with(other)  # a reload
    assert book.has_plain_password()
