"""
The command line and the process: `twistd mailhub` as a user starts it.
"""

import os
import subprocess
import sys

import pytest
from twisted.python import usage

from tests.hubprocess import ROOT
from twisted_mailhub import tap
from twisted_mailhub.testing import keep_log


def twistd(*args, data=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=data,
    )
    keep_log(result.stdout + result.stderr)
    return result


def test_twistd_lists_the_mailhub_plugin():
    result = twistd("--help")
    assert result.returncode == 0
    assert "mailhub" in result.stdout


def test_mailhub_help_lists_the_shared_options():
    result = twistd("mailhub", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--hostname", "--domain", "--user", "--auth", "--store", "--tls-cert", "--max-message-size", "--trusted-networks", "--transcript"):
        assert option in result.stdout, option


def test_bad_options_are_usage_errors():
    for args in (["--user", "nopassword"], ["--store", "nosuch"], ["--trusted-networks", "banana"], ["--filter", "nosuch"], ["--tls-key", "k.pem"]):
        options = tap.Options()
        with pytest.raises(usage.UsageError):
            options.parseOptions(args)


def test_accounts_from_user_and_auth_file(tmp_path):
    accounts_file = tmp_path / "accounts"
    accounts_file.write_text("carol@example.org:pw1\n")
    options = tap.Options()
    options.parseOptions(["--domain", "example.org", "--user", "alice:secret", "--auth", f"file:{accounts_file}", "--auth", "memory:dave:pw2"])
    accounts, extra = tap._accounts_and_checkers(options)
    assert {a.address for a in accounts} == {"alice@example.org", "carol@example.org", "dave@example.org"}
    assert extra == []


def test_hub_starts_with_no_listeners_and_says_ready(start_hub):
    from tests.hubprocess import LISTENERS

    hub = start_hub(*[f"--no-{name}" for name in LISTENERS if _offered(name)])
    assert hub.ports == {}
    assert "mailhub ready" in hub.log


def test_self_signed_certificate_is_made_once_and_reused(start_hub, tmp_path):
    from twisted_mailhub.tls import server_context

    data = tmp_path / "d"
    os.makedirs(data)
    server_context(str(data), "mail.test")
    cert = (data / "tls" / "cert.pem").read_bytes()
    assert (data / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    server_context(str(data), "mail.test")
    assert (data / "tls" / "cert.pem").read_bytes() == cert


def test_listener_that_cannot_bind_stops_the_hub_with_a_clear_log(start_hub, tmp_path):
    import socket

    from tests.hubprocess import HubProcess

    names = [s.name for m in tap._components() for s in getattr(m, "listeners", [])]
    if not names:
        pytest.skip("no protocol component installed yet")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    data = tmp_path / "busy"
    os.makedirs(data)
    hub = HubProcess(str(data), [f"--{names[0]}", f"tcp:{port}:interface=127.0.0.1"])
    try:
        with pytest.raises(RuntimeError) as e:
            hub.start(timeout=30)
        assert f"cannot listen for {names[0]}" in str(e.value)
    finally:
        hub.stop()
        blocker.close()


def _offered(name):
    return any(s.name == name for m in tap._components() for s in getattr(m, "listeners", []))


@pytest.mark.parametrize("option", ["--max-connections", "--max-connections-per-ip", "--ftp-max-per-ip", "--smtp-idle-timeout", "--sftp-max-handles", "--port-base", "--max-message-size"])
@pytest.mark.parametrize("value", ["abc", "-3", "1e3", "7\x08"])
def test_a_number_option_given_something_else_names_the_option_without_python_text(option, value):
    options = tap.Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions([option, value])
    message = str(caught.value)
    assert message.startswith(f"{option} wants a whole number"), message
    assert "int()" not in message and "literal" not in message and "\x08" not in message


def test_a_negative_connection_limit_is_refused_not_taken_as_refuse_everyone():
    # --max-connections -3 used to start a hub that answered every
    # connection with "too many connections".
    result = twistd("-n", "--pidfile=", "mailhub", "--max-connections", "-3", "--no-ftp")
    assert result.returncode != 0
    assert "--max-connections wants a whole number (0, 1, 2, ...), not -3" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout


def test_max_message_size_zero_is_refused_not_silently_the_default():
    # 0 became 25 MiB without a word, and a negative size was advertised as
    # "250-SIZE -1" (RFC 1870 allows only digits).
    for value in ("0", "-1"):
        options = tap.Options()
        with pytest.raises(usage.UsageError, match="--max-message-size wants a"):
            options.parseOptions(["--max-message-size", value])


@pytest.mark.parametrize("args, says", [
    (["--hostname", "x\r\n250 injected"], "--hostname wants a host name such as mail.example.org, not x^M^J250 injected"),
    (["--hostname", "bad name"], "--hostname wants a host name"),
    (["--hostname", ""], "--hostname wants a host name"),
    (["--ftp-banner", "hi\r\n230 fake"], "--ftp-banner is one line of text, without control characters"),
    (["--domain", ""], "--domain wants a domain name such as example.org, not nothing"),
    (["--domain", "a b"], "--domain wants a domain name"),
    (["--domain", "../etc"], "--domain wants a domain name"),
])
def test_a_greeting_name_or_domain_that_would_break_a_reply_is_a_usage_error(args, says):
    # A CR LF in --hostname or --ftp-banner wrote reply lines of its own
    # into every greeting ("220 x" then "250 injected"); --domain "" made
    # a local domain no account of could log in.
    options = tap.Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(args)
    assert str(caught.value).startswith(says), str(caught.value)
    assert "\r" not in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("args, says", [
    (["--user", ".hidden:pw"], "mailhub: --user: not a usable mailbox name"),
    (["--user", "a@:pw"], "mailhub: --user: not a usable domain after the @ in a@"),
    (["--auth", "memory:../x:pw"], "mailhub: --auth memory: not a usable mailbox name"),
])
def test_an_account_name_that_cannot_be_stored_is_one_line_not_a_traceback(args, says, tmp_path):
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "data"), *args, data=str(tmp_path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option, value, octets", [
    ("--max-message-size", "26214400", 26214400), ("--max-message-size", "25M", 25 << 20), ("--max-message-size", "25MB", 25 << 20),
    ("--max-message-size", "25MiB", 25 << 20), ("--max-message-size", "100k", 100 << 10), ("--max-message-size", "1.5G", 3 << 29),
    ("--max-message-size", "500B", 500), ("--sftp-max-packet", "64K", 64 << 10), ("--sftp-max-packet", "16M", 16 << 20),
    ("--sftp-max-packet", "4096", 4096), ("--quota", "500M", 500 << 20), ("--quota", "2GB", 2 << 30), ("--quota", "1048576", 1 << 20),
])
def test_every_size_option_takes_octets_or_k_m_g_multiples_of_1024(option, value, octets):
    # --max-message-size took only octets ("25M": wants a whole number)
    # while --quota took 500M; every size option now reads the same forms.
    options = tap.Options()
    options.parseOptions([option, value])
    assert options[option[2:]] == octets


@pytest.mark.parametrize("option, value, says", [
    ("--max-message-size", "2G", "from 1 to 2147483647"), ("--max-message-size", "0K", "from 1 to"), ("--max-message-size", "25X", "not 25X"),
    ("--max-message-size", "1.5", "not 1.5"), ("--sftp-max-packet", "1023", "from 1K to 16M, not 1023"), ("--sftp-max-packet", "17M", "from 1K to 16M, not 17M"),
    ("--quota", "0", "from 1 to 1024T, not 0"), ("--quota", "abc", "not abc"), ("--quota", "2000T", "not 2000T"),
])
def test_a_size_option_given_a_bad_size_names_itself_and_the_forms(option, value, says):
    options = tap.Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions([option, value])
    message = str(caught.value)
    assert message.startswith(f"{option} wants a whole number of octets or a size in K, M, G or T (1K = 1024 octets"), message
    assert says in message, message
    assert "quota" not in message or option == "--quota", message


def test_a_hub_started_with_a_suffixed_message_size_advertises_it_in_smtp_size(start_hub):
    import smtplib

    hub = start_hub("--max-message-size", "1K", "--quota", "1M", "--sftp-max-packet", "32K")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as client:
        client.ehlo("client.example")
        assert client.esmtp_features["size"] == "1024"
        code, reply = client.docmd("MAIL FROM:<a@example.org> SIZE=2048")
    assert code == 552, reply
