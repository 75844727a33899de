"""
mailhub-admin check asks DNS about the local domains (issue 14): MX, SPF,
the DKIM keys in DATA/dkim, DMARC; against a twisted.names server on
loopback (--dns-server), never a real domain.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.hubprocess import ROOT
from tests.test_e2e_relay import loopback_dns
from twisted_mailhub.mailauth import keys


def mailhub_admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT),
    )


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    keys.load_or_create(str(folder), "good.test", "sel1")
    keys.load_or_create(str(folder), "bad.test", "sel1")
    return folder


@pytest.fixture
def zones(data):
    good = {k.dns_name: [["TXT", k.record]] for k in keys.load_or_create(str(data), "good.test", "sel1")}
    stale = keys.load_or_create(str(data), "bad.test", "sel1")
    return {
        "good.test": {
            "good.test": [["MX", 10, "mx.good.test"], ["TXT", "v=spf1 mx -all"]],
            "_dmarc.good.test": [["TXT", "v=DMARC1; p=reject"]],
            **good,
        },
        "bad.test": {
            # MX elsewhere, two SPF records, a DKIM key that is not ours, no DMARC.
            "bad.test": [["MX", 10, "mail.provider.test"], ["TXT", "v=spf1 -all"], ["TXT", "v=spf1 mx ~all"]],
            stale[0].dns_name: [["TXT", "v=DKIM1; k=rsa; p=AAAAnotthekey"]],
        },
    }


@pytest.fixture
def dns(zones):
    yield from loopback_dns(zones)


def check(data, dns, *domains, hostname="mx.good.test"):
    args = ["check", "--data", str(data), "--hostname", hostname, "--dns-server", dns, "--user", "alice@good.test:secret", "--no-smtp", "--no-submission", "--no-smtps", "--no-pop3", "--no-pop3s", "--no-imap", "--no-imaps", "--no-ftp", "--no-web", "--no-webs", "--no-sftp"]
    for domain in domains:
        args += ["--domain", domain]
    return mailhub_admin(*args)


def test_check_passes_a_domain_whose_records_are_all_published(data, dns):
    result = check(data, dns, "good.test")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: the hub would start with these options\n"


def test_check_reports_each_dns_record_that_would_fail(data, dns):
    result = check(data, dns, "good.test", "bad.test")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert all(line.startswith("dns: ") for line in lines), lines
    assert [line for line in lines if "good.test" in line and "bad.test" not in line] == []
    text = result.stderr
    assert "bad.test's MX names mail.provider.test, not this hub (mx.good.test)" in text
    assert "bad.test has 2 SPF records" in text
    assert "sel1._domainkey.bad.test does not hold the key in DATA/dkim/bad.test/sel1.pub" in text
    assert "sel1-ed25519._domainkey.bad.test has no DKIM record" in text
    assert "bad.test has no DMARC record" in text and '_dmarc.bad.test. IN TXT "v=DMARC1; p=none' in text


def test_check_says_when_the_dns_server_does_not_answer(data, tmp_path):
    import socket

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        result = check(data, f"127.0.0.1:{silent.getsockname()[1]}", "good.test")
    finally:
        silent.close()
    assert result.returncode == 1
    assert "dns: good.test: the DNS server did not answer for good.test MX" in result.stderr
    assert "Traceback" not in result.stderr
