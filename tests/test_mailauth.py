"""
DKIM signing, and SPF/DKIM/DMARC results on incoming mail (issue 14).

End to end: hub A (a.test) signs what alice submits and relays it to hub B
(b.test) through a twisted.names server on loopback that publishes a.test's
DKIM keys, SPF and DMARC records; B checks what arrives from outside
(B's --trusted-networks leaves out loopback, so 127.0.0.1 counts as outside).
The signatures are verified again here with dkimpy against the same DNS
server. A forged message from bank.test (p=reject) is marked, and refused
under --dmarc-reject.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time

import dkim
import dns.resolver
import pytest

from tests.hubprocess import ROOT
from tests.test_e2e_relay import loopback_dns, messages
from twisted_mailhub.mailauth import keys
from twisted_mailhub.mailauth.checks import strip_own_results
from twisted_mailhub.mailauth.signing import header_from_domain

OUTSIDE = ["--trusted-networks", "192.0.2.0/24"]


def test_keys_are_made_once_and_reused_with_their_selector(tmp_path):
    first = keys.load_or_create(str(tmp_path), "a.test")
    again = keys.load_or_create(str(tmp_path), "a.test")
    assert [k.algorithm for k in first] == [b"rsa-sha256", b"ed25519-sha256"]
    assert first == again
    assert re.fullmatch(r"mh\d{6}", first[0].selector) and first[1].selector == first[0].selector + "-ed25519"
    key_file = tmp_path / "dkim" / "a.test" / (first[0].selector + ".key")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert first[0].record.startswith("v=DKIM1; k=rsa; p=") and first[1].record.startswith("v=DKIM1; k=ed25519; p=")


def test_no_keys_for_names_nobody_can_publish_dns_for():
    assert not keys.signs_for("localhost") and not keys.signs_for("intranet") and not keys.signs_for("a.localhost")
    assert keys.signs_for("example.org")


def test_zone_lines_split_long_records_into_255_octet_strings(tmp_path):
    pair = keys.load_or_create(str(tmp_path), "a.test", "s1")
    text = keys.zone_lines(keys.dns_records("a.test", pair, "mx.a.test"))
    rsa_line = next(line for line in text.splitlines() if line.startswith("s1._domainkey.a.test."))
    strings = re.findall(r'"([^"]*)"', rsa_line)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == pair[0].record
    assert 'a.test. IN TXT "v=spf1 mx a:mx.a.test ~all"' in text
    assert '_dmarc.a.test. IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@a.test"' in text


def test_dkim_show_only_reads_and_make_makes_the_keys(tmp_path):
    def admin(*args):
        return subprocess.run(
            [sys.executable, "-m", "twisted_mailhub.admin", "dkim", *args, "--data", str(tmp_path), "--domain", "example.org", "--hostname", "mx.example.org"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60,
        )

    shown = admin("show")
    assert shown.returncode == 1 and "no DKIM keys" in shown.stderr and not (tmp_path / "dkim").exists()
    made = admin("make")
    assert made.returncode == 0 and "._domainkey.example.org. IN TXT" in made.stdout
    again = admin("show")
    assert again.returncode == 0 and again.stdout == made.stdout


def test_forged_results_claiming_this_hub_are_removed_others_kept():
    message = (
        b"Authentication-Results: MX.B.test; spf=pass;\r\n\tdkim=pass\r\n"
        b"Authentication-Results: other.example; spf=fail\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )
    assert strip_own_results(message, "mx.b.test") == (
        b"Authentication-Results: other.example; spf=fail\r\nSubject: hi\r\n\r\nbody\r\n"
    )


def test_header_from_domain_reads_folded_and_named_addresses():
    assert header_from_domain(b"Subject: x\r\nFrom: \"Alice, A.\"\r\n <alice@A.Test>\r\n\r\n") == "a.test"
    assert header_from_domain(b"Subject: x\r\n\r\nFrom: a@b.test\r\n") is None


def _publish(data_dir: str) -> list[list[str]]:
    """Make a.test's keys with the admin command and return them as zone records."""
    out = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.mailauth", "make", "--data", data_dir, "--domain", "a.test", "--hostname", "mx.a.test"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    records = []
    for line in out.splitlines():
        m = re.match(r"(\S+)\. IN TXT (.*)$", line)
        if m and "_domainkey" in m.group(1):
            records.append([m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))])
    assert len(records) == 2, out
    return records


A_DATA = {}


def _zones(request, tmp_path_factory):
    data = str(tmp_path_factory.mktemp("hubA"))
    A_DATA[request.node.nodeid] = data
    zones = {
        "a.test": {
            "a.test": [["TXT", "v=spf1 ip4:127.0.0.1 -all"]],
            "_dmarc.a.test": [["TXT", "v=DMARC1; p=reject"]],
        },
        "b.test": {"b.test": [["MX", 10, "mx.b.test"]], "mx.b.test": [["A", "127.0.0.1"]]},
        "bank.test": {
            "bank.test": [["TXT", "v=spf1 ip4:192.0.2.1 -all"]],
            "_dmarc.bank.test": [["TXT", "v=DMARC1; p=reject"]],
        },
    }
    for name, text in _publish(data):
        zones["a.test"][name] = [["TXT", text]]
    return zones


@pytest.fixture
def signed_zones(request, tmp_path_factory):
    return _zones(request, tmp_path_factory)


@pytest.fixture
def dns_with_keys(signed_zones):
    """The loopback DNS server with a.test's fresh keys, b.test's MX and bank.test's policy."""
    yield from loopback_dns(signed_zones)


def _resolver_at(server: str):
    host, port = server.split(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.lifetime = 5
    return resolver


def _wait_for(hub, address, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = messages(hub, address)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing arrived for {address}:\n{hub.log[-3000:]}")


MESSAGE = (
    b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: signed lunch\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lunch@a.test>\r\n\r\nSee you at noon.\r\n"
)


def test_submitted_mail_is_dkim_signed_and_verifies_after_crossing_a_second_hub(start_hub, request, tmp_path_factory, dns_with_keys):
    server = dns_with_keys
    b = start_hub("--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", server, *OUTSIDE, users=["bob@b.test:hungry"])
    a = start_hub(
        "--domain", "a.test", "--hostname", "mx.a.test", "--dns-server", server, "--relay-port", str(b.ports["smtp"]),
        users=["alice@a.test:secret"], data=A_DATA[request.node.nodeid],
    )
    assert "dkim: signing mail from a.test with selectors mh" in a.log
    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=10) as client:
        client.login("alice@a.test", "secret")
        client.sendmail("alice@a.test", ["bob@b.test"], MESSAGE)
    (arrived,) = _wait_for(b, "bob@b.test")
    head = arrived.split(b"\r\n\r\n", 1)[0]
    assert head.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in head and b"a=ed25519-sha256" in head and b"c=relaxed/relaxed" in head
    results = re.search(rb"Authentication-Results: mx\.b\.test;(.*?)\r\n(?=\S)", arrived, re.S).group(1)
    assert re.search(rb"spf=pass", results) and re.search(rb"dkim=pass", results) and re.search(rb"dmarc=pass", results), results
    # dkimpy, here, against the same loopback DNS: both signatures verify on
    # the bytes as B stored them (B's own trace fields come before them).
    old = dns.resolver.default_resolver
    dns.resolver.default_resolver = _resolver_at(server)
    try:
        verifier = dkim.DKIM(arrived)
        assert verifier.verify(idx=0) and verifier.verify(idx=1)
        tampered = arrived.replace(b"See you at noon.", b"See you at one.")
        assert not dkim.verify(tampered)
    finally:
        dns.resolver.default_resolver = old


FORGED = (
    b"From: The Bank <security@bank.test>\r\nTo: bob@b.test\r\nSubject: verify your account\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <phish@bank.test>\r\n"
    b"Authentication-Results: mx.b.test; spf=pass; dkim=pass; dmarc=pass\r\n\r\nClick here.\r\n"
)


def test_forged_mail_from_a_p_reject_domain_is_marked_failing(start_hub, dns_with_keys):
    b = start_hub("--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", dns_with_keys, *OUTSIDE, users=["bob@b.test:hungry"])
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=10) as client:
        client.ehlo("forger.example")
        client.sendmail("security@bank.test", ["bob@b.test"], FORGED)
    (arrived,) = _wait_for(b, "bob@b.test")
    fields = re.findall(rb"Authentication-Results: mx\.b\.test;(.*?)\r\n(?=\S)", arrived, re.S)
    assert len(fields) == 1, arrived  # the forged "pass" field was removed
    assert b"spf=fail" in fields[0] and b"dkim=none" in fields[0] and b"dmarc=fail" in fields[0]
    assert b"policy.dmarc=reject" in fields[0]


def test_dmarc_reject_refuses_the_forgery_with_550_and_the_session_goes_on(start_hub, dns_with_keys):
    b = start_hub(
        "--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", dns_with_keys, "--dmarc-reject", *OUTSIDE,
        users=["bob@b.test:hungry"],
    )
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=10) as client:
        client.ehlo("forger.example")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("security@bank.test", ["bob@b.test"], FORGED)
        assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error and b"DMARC" in refused.value.smtp_error
        assert client.noop()[0] == 250
    assert messages(b, "bob@b.test") == []


def test_trusted_clients_and_a_dns_that_never_answers_still_get_their_mail_through(start_hub):
    # No DNS server listens on this port: every lookup times out, the
    # results are temperror and the message is delivered, not stuck.
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sink.getsockname()[1]}"
        b = start_hub(
            "--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", dead, "--sender-check-timeout", "1.5", *OUTSIDE,
            users=["bob@b.test:hungry"],
        )
        started = time.monotonic()
        with smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=30) as client:
            client.sendmail("someone@c.test", ["bob@b.test"], b"From: someone@c.test\r\nSubject: x\r\n\r\nhello\r\n")
        took = time.monotonic() - started
    (arrived,) = messages(b, "bob@b.test")
    assert b"spf=temperror" in arrived and b"dmarc=temperror" in arrived, arrived[:600]
    assert took < 6
    trusted = start_hub("--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", dead, users=["bob@b.test:hungry"])
    with smtplib.SMTP("127.0.0.1", trusted.ports["smtp"], timeout=10) as client:
        client.sendmail("someone@c.test", ["bob@b.test"], b"From: someone@c.test\r\nSubject: x\r\n\r\nhello\r\n")
    (local,) = messages(trusted, "bob@b.test")
    assert b"Authentication-Results" not in local


def test_a_message_without_from_gets_dmarc_none_and_no_python_words_in_the_log(start_hub, dns_with_keys):
    # RFC 7489 aligns with the From: domain; without one there is no policy
    # to apply. authheaders failed on it ("cannot access local variable
    # 'from_domain'...", logged) and the result was temperror.
    b = start_hub("--domain", "b.test", "--hostname", "mx.b.test", "--dns-server", dns_with_keys, *OUTSIDE, users=["bob@b.test:hungry"])
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=10) as client:
        client.ehlo("sender.a.test")
        client.sendmail("alice@a.test", ["bob@b.test"], b"Subject: no From: field\r\n\r\nhello\r\n")
    (arrived,) = _wait_for(b, "bob@b.test")
    fields = re.findall(rb"Authentication-Results: mx\.b\.test;(.*?)\r\n(?=\S)", arrived, re.S)
    assert len(fields) == 1 and b"spf=pass" in fields[0] and b"dmarc=none" in fields[0], arrived
    assert "dmarc:" not in b.log and "local variable" not in b.log
