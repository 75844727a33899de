"""
--test-mode: test addresses whose local part asks for a fault (fail-NNN,
datafail-NNN, slow-Ns, drop), and the refusal to run it on a listener that
is not bound to loopback.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.smtp_helpers import RawSMTP
from twisted_mailhub.smtp.faults import Fault, _loopback_only, fault_of
from twisted_mailhub.testing import Mailhub


@pytest.fixture(scope="module")
def hub():
    with Mailhub("--test-mode", accounts=["alice:secret"]) as h:
        yield h


def session(hub, sender="app@example.net") -> RawSMTP:
    s = RawSMTP(hub.ports["smtp"])
    s.send(b"EHLO client.test\r\n")
    s.reply()
    s.send(b"MAIL FROM:<%s>\r\n" % sender.encode())
    return s


@pytest.mark.parametrize("code,enhanced", [(451, b"4.3.0"), (552, b"5.2.2"), (554, b"5.7.1")])
def test_fail_recipient_gets_that_code_at_rcpt(hub, code, enhanced):
    s = session(hub)
    assert s.reply().startswith(b"250")
    s.send(b"RCPT TO:<fail-%d@anywhere.example>\r\n" % code)
    assert s.reply() == b"%d %s test mode: fail-%d requested by <fail-%d@anywhere.example>" % (code, enhanced, code, code)
    s.send(b"RCPT TO:<alice@localhost>\r\n")
    assert s.reply().startswith(b"250"), "the session goes on"


def test_fail_sender_gets_that_code_at_mail(hub):
    s = session(hub, "fail-554@app.example")
    assert s.reply().startswith(b"554 5.7.1 test mode")
    s.send(b"MAIL FROM:<app@example.net>\r\n")
    assert s.reply().startswith(b"250")


def test_datafail_recipient_is_accepted_then_refused_at_end_of_data(hub):
    s = session(hub)
    s.reply()
    s.send(b"RCPT TO:<datafail-451@x.example>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n")
    assert [s.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    s.send(b"Subject: not kept\r\n\r\nbody\r\n.\r\n")
    assert s.reply().startswith(b"451 4.3.0 test mode: datafail-451")
    assert hub.messages("alice") == []


def test_slow_recipient_reply_comes_that_many_seconds_late(hub):
    s = session(hub)
    s.reply()
    started = time.monotonic()
    s.send(b"RCPT TO:<slow-1s@x.example>\r\n")
    assert s.reply().startswith(b"250")
    assert 0.9 <= time.monotonic() - started < 5


def test_drop_gets_421_and_the_connection_closes(hub):
    s = session(hub)
    s.reply()
    s.send(b"RCPT TO:<drop@x.example>\r\n")
    assert s.reply().startswith(b"421 4.4.2 test mode")
    assert s.sock.recv(100) == b""


def test_ordinary_unknown_recipient_is_still_refused(hub):
    s = session(hub)
    s.reply()
    s.send(b"RCPT TO:<nobody@localhost>\r\n")
    assert s.reply().startswith(b"550 5.1.1")


def test_test_mode_is_refused_with_a_warning_on_a_listener_not_on_loopback():
    with Mailhub("--test-mode", "--smtp", "tcp:0", "--no-submission", "--no-smtps") as hub:
        hub.wait_for_log(r"--test-mode refused: smtp \(tcp:0\) not bound to loopback")
        s = RawSMTP(hub.ports["smtp"])
        s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<fail-451@localhost>\r\n")
        assert s.reply().startswith(b"250")
        assert s.reply().startswith(b"550 5.1.1")


def test_test_mode_force_allows_a_listener_not_on_loopback():
    with Mailhub("--test-mode", "--test-mode-force", "--smtp", "tcp:0", "--no-submission", "--no-smtps") as hub:
        s = RawSMTP(hub.ports["smtp"])
        s.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<fail-451@localhost>\r\n")
        assert s.reply().startswith(b"250")
        assert s.reply().startswith(b"451 4.3.0")


def test_fault_of_reads_the_local_part_at_any_domain():
    assert fault_of("fail-552@x.example") == Fault("fail", code=552)
    assert fault_of("DataFail-451@x") == Fault("datafail", code=451)
    assert fault_of("slow-5s@x") == Fault("slow", delay=5)
    assert fault_of("drop@x") == Fault("drop")
    assert fault_of("fail-251@x") is None and fault_of("slow-0s@x") is None and fault_of("slow-999s@x") is None
    assert fault_of("alice@x") is None and fault_of("fail-451x@x") is None


def test_loopback_only_descriptions():
    assert _loopback_only("tcp:0:interface=127.0.0.1")
    assert _loopback_only("tcp6:0:interface=\\:\\:1")
    assert not _loopback_only("tcp:25")
    assert not _loopback_only("tcp:25:interface=0.0.0.0")


@pytest.fixture(scope="module")
def catching_hub():
    with Mailhub("--test-mode", "--catch-all", "alice", accounts=["alice:secret"]) as h:
        yield h


@pytest.mark.parametrize("local", ["fail-600", "fail-abc", "datafail-999", "slow-200s", "slow-0s", "fail-550+tag"])
def test_a_test_address_that_asks_for_nothing_it_can_give_is_refused_in_words(catching_hub, local):
    # With --catch-all these got "250 2.1.5 Ok" and were caught as ordinary
    # mail: a typo in a client's test looked like a pass.
    s = session(catching_hub)
    assert s.reply().startswith(b"250")
    s.send(b"RCPT TO:<%s@x.example>\r\n" % local.encode())
    assert s.reply() == (
        b"501 5.1.3 test mode: %s is no test address; use fail-4xx or fail-5xx, "
        b"datafail-4xx or datafail-5xx, slow-1s to slow-120s, or drop" % local.encode()
    )
    s.send(b"RCPT TO:<someone@x.example>\r\n")
    assert s.reply().startswith(b"250"), "an ordinary address is still caught"
