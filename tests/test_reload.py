"""
SIGHUP: the hub reads its accounts files and TLS certificate again without
dropping a session, and says what changed.
"""

import imaplib
import os
import signal
import smtplib
import socket
import ssl

import pytest

from tests.hubprocess import client_context
from twisted_mailhub.tls import make_self_signed


def imap_login(hub, user, password):
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login(user, password)
    return c


@pytest.fixture
def accounts_hub(start_hub, tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\nbob@localhost:hungry\n")
    hub = start_hub("--auth", f"file:{accounts}", users=())
    hub.accounts_file = accounts
    return hub


def reload(hub, expect):
    before = hub.log.count(expect.split(":")[0])
    hub.process.send_signal(signal.SIGHUP)
    hub.wait_for_log(expect)
    return before


def test_sighup_adds_and_removes_accounts_without_dropping_sessions(accounts_hub):
    hub = accounts_hub
    alice = imap_login(hub, "alice", "secret")
    bob = imap_login(hub, "bob", "hungry")
    hub.accounts_file.write_text("alice@localhost:secret\ncarol@localhost:tea\n")
    reload(hub, r"accounts reloaded: 2 accounts \(\+1 -1\)")
    # an added account logs in at once, a removed one cannot log in again
    carol = imap_login(hub, "carol", "tea")
    assert carol.select("INBOX")[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(hub, "bob", "hungry")
    # sessions that were open go on, bob's included
    assert alice.select("INBOX")[0] == "OK"
    assert bob.noop()[0] == "OK"
    for c in (alice, bob, carol):
        c.logout()
    assert hub.process.poll() is None


def test_sighup_with_a_broken_accounts_file_keeps_the_old_accounts(accounts_hub):
    hub = accounts_hub
    hub.accounts_file.write_text("alice@localhost:secret\nnot an account line\n")
    reload(hub, r"accounts not reloaded, keeping the 2 in use: .*accounts, line 2: expected ADDRESS:PASSWORD")
    imap_login(hub, "bob", "hungry").logout()
    os.unlink(hub.accounts_file)
    reload(hub, r"accounts not reloaded, keeping the 2 in use: .*accounts: cannot read it: No such file or directory")
    imap_login(hub, "alice", "secret").logout()
    assert "Traceback" not in hub.log


def _peer_certificate(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_context().wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)


def test_sighup_reloads_the_tls_certificate_for_new_connections_only(start_hub, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    make_self_signed("old.test", cert, key)
    hub = start_hub("--tls-cert", cert, "--tls-key", key)
    old = _peer_certificate(hub.ports["imaps"])
    session = imaplib.IMAP4_SSL("127.0.0.1", hub.ports["imaps"], ssl_context=client_context())
    session.login("alice", "secret")
    make_self_signed("new.test", cert, key)
    hub.process.send_signal(signal.SIGHUP)
    hub.wait_for_log("TLS certificate reloaded")
    new = _peer_certificate(hub.ports["imaps"])
    assert new != old
    assert ssl.DER_cert_to_PEM_cert(new).split() == open(cert).read().split()
    # STARTTLS on the MX listener takes the new one too
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.starttls(context=client_context())
        assert c.sock.getpeercert(binary_form=True) == new
    # the session begun with the old certificate goes on
    assert session.select("INBOX")[0] == "OK"
    session.logout()


def test_sighup_with_a_broken_certificate_keeps_the_old_one(start_hub, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    make_self_signed("old.test", cert, key)
    hub = start_hub("--tls-cert", cert, "--tls-key", key)
    old = _peer_certificate(hub.ports["imaps"])
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n")
    hub.process.send_signal(signal.SIGHUP)
    line = hub.wait_for_log(r"TLS certificate not reloaded, keeping the one in use: [^\n]*").group(0)
    # Words, as at start, not OpenSSL's error list as Python shows it.
    assert line.endswith("keeping the one in use: not a PEM certificate with its private key (OpenSSL: unsupported)"), line
    assert _peer_certificate(hub.ports["imaps"]) == old
