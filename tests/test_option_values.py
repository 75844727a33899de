"""
Every option that takes a host, a port, an address, a network, a path or
a number refuses a value it cannot use when the hub starts, with one line
that names the option, shows the value and says what it wants; and
C{mailhub-admin check} reports the same line without starting anything.
(C{--dns-server x} and C{--smarthost host:} started silently: the first
failed every lookup, the second took port 25 for a port left out.)
"""

from __future__ import annotations

import pytest
from twisted.python import usage

from tests.test_admin import mailhub_admin
from tests.test_tap import twistd
from twisted_mailhub import tap

# One bad value of each kind, run through a real start and through
# mailhub-admin check; {tmp} is the test's folder.
KINDS = [
    ("host:port, no port after the colon", ["--smarthost", "relay.example.org:"], '--smarthost "relay.example.org:": no port after the colon; want HOST:PORT such as mail.example.org:587, or no :PORT for port 25'),
    ("DNS server by name", ["--dns-server", "x"], '--dns-server "x": the server is given by its IP address, not a name; want an IP address such as 127.0.0.1:53, or no :PORT for port 53'),
    ("seconds that are no number", ["--imap-idle-timeout", "nan"], "--imap-idle-timeout wants a number of seconds more than 0 and at most 31536000 (a year), such as 30 or 2.5, not nan"),
    ("whole number", ["--max-connections", "-5"], "--max-connections wants a whole number (0, 1, 2, ...), not -5"),
    ("listener port", ["--smtp", "tcp:99999"], "--smtp tcp:99999: the port is a number from 0 to 65535 (0: any free port), not 99999"),
    ("listener certificate", ["--imaps", "ssl:0:privateKey=/nonexistent/key.pem"], "--imaps ssl:0:privateKey=/nonexistent/key.pem: cannot use it: /nonexistent/key.pem: No such file or directory"),
    ("data folder that is a file", ["--data", "{tmp}/afile"], "--data {tmp}/afile: is not a folder"),
    ("SSH host key that is no key", ["--ssh-host-key", "{tmp}/afile"], "--ssh-host-key {tmp}/afile: not an SSH private key (OpenSSH or PEM, as ssh-keygen writes)"),
    ("postmaster that is no account", ["--postmaster", "nobody@example.org"], "--postmaster nobody@example.org: no such account (add it with --user ADDRESS:PASSWORD)"),
    ("network with host bits", ["--trusted-networks", "127.0.0.0/8,10.0.0.1/8"], "--trusted-networks: 10.0.0.1/8 has bits set past its /8: the network is 10.0.0.0/8, one host is 10.0.0.1/32"),
    ("passive address no client reaches", ["--passive-address", "0.0.0.0"], "--passive-address 0.0.0.0 is any address, which no client can connect to; want the IPv4 address of this hub that clients reach"),
    ("whole number past its most", ["--max-connections", "99999999999999999999"], "--max-connections wants a whole number from 0 to 2147483647, not 99999999999999999999"),
    ("listener interface that is no address", ["--smtp", "tcp:0:interface=mail.example.org"], "--smtp tcp:0:interface=mail.example.org: interface= takes an IP address of this machine (127.0.0.1, 0.0.0.0, \\:\\:1), not mail.example.org"),
]


def _filled(values, tmp_path):
    return [v.replace("{tmp}", str(tmp_path)) for v in values]


@pytest.mark.parametrize("kind, args, says", KINDS, ids=[k[0] for k in KINDS])
def test_a_bad_value_of_each_kind_stops_the_start_with_one_line_naming_it(kind, args, says, tmp_path):
    (tmp_path / "afile").write_text("not a key, not a folder\n")
    args, says = _filled(args, tmp_path), says.replace("{tmp}", str(tmp_path))
    if args[0] != "--data":
        args = ["--data", str(tmp_path / "data"), *args]
    result = twistd("-n", "--pidfile=", "mailhub", "--user", "alice:pw", "--port-base", "17000", *args, data=str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert says in out, out[-2000:]
    assert "Traceback" not in out and "mailhub ready" not in out
    assert "b'" not in out.split(says)[0][-300:]  # no Python repr before it either


@pytest.mark.parametrize("kind, args, says", KINDS, ids=[k[0] for k in KINDS])
def test_mailhub_admin_check_reports_the_same_line(kind, args, says, tmp_path):
    (tmp_path / "afile").write_text("not a key, not a folder\n")
    args, says = _filled(args, tmp_path), says.replace("{tmp}", str(tmp_path))
    if args[0] != "--data":
        args = ["--data", str(tmp_path / "data"), *args]
    result = mailhub_admin("check", "--user", "alice:pw", "--no-dns", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"options: {says}" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()  # a check makes nothing


def _refusal(*args: str) -> str | None:
    options = tap.Options()
    try:
        options.parseOptions(["--user", "alice:pw", *args])
    except usage.UsageError as e:
        return str(e)
    return None


@pytest.mark.parametrize(
    "args",
    [
        ["--smarthost", "host:"], ["--smarthost", ":25"], ["--smarthost", "host:0"], ["--smarthost", "host:x"],
        ["--smarthost", "a\x01b:25"], ["--smarthost", "a..b"], ["--smarthost", "-a.example:25"], ["--smarthost", "[::1:25"],
        ["--dns-server", "x"], ["--dns-server", "127.0.0.1:"], ["--dns-server", "dns.example.org:53"], ["--dns-server", "127.0.0.1:99999"],
        ["--mx-override", "example.org=host:"], ["--mx-override", "a b=127.0.0.1"], ["--mx-override", "example.org="],
        ["--imap-idle-timeout", "inf"], ["--ftp-idle-timeout", "nan"], ["--web-header-timeout", "0"], ["--sftp-login-timeout", "x"],
        ["--sender-check-timeout", "x"], ["--pop3-idle-timeout", "1e3"], ["--relay-connections", "twenty"],
        ["--smtp", "tcp:abc"], ["--smtp", "nonsense:1"], ["--imap", "tcp:-1"], ["--pop3", "ssl:0"],
        ["--hostname", "a..b"], ["--hostname", "-x"], ["--data", ""], ["--data", "/dev/null/sub"], ["--data", "/proc/1"],
        ["--ssh-host-key", "/nonexistent"],
        ["--trusted-networks", "10.0.0.1/8"], ["--trusted-networks", "fd00::1/8"], ["--trusted-networks", "10.0.0.0/8,x"], ["--proxy-from", "10.0.0.1/8"], ["--proxy-from", "balancer"],
        ["--passive-address", "0.0.0.0"], ["--passive-address", "255.255.255.255"], ["--passive-address", "224.0.0.1"], ["--passive-address", "240.0.0.1"],
        ["--max-connections", "2147483648"], ["--max-connections-per-ip", "9" * 400], ["--smtp-idle-timeout", "31536001"], ["--imap-idle-timeout", "1e300"],
        ["--queue-lifetime", "9" * 400 + "d"], ["--retry-schedule", "5m,400d"], ["--delay-warning", "366d"], ["--quota", "9" * 400 + "G"],
        ["--journal-retention", "31536001"],
        ["--smtp", "tcp:0:interface=localhost"], ["--smtp", "tcp:0:interface=::1"], ["--imap", "tcp6:0:interface=mail.example.org"],
    ],
    ids=lambda args: " ".join(args),
)
def test_each_unusable_value_is_a_usage_error_that_shows_what_was_given(args):
    said = _refusal(*args)
    assert said is not None, f"{args} was taken"
    assert said.startswith(args[0]), said
    assert "Parameter type enforcement" not in said and "invalid literal" not in said and "'" + args[1] + "'" not in said
    assert "\x01" not in said


@pytest.mark.parametrize(
    "args",
    [
        ["--smarthost", "relay.example.org"], ["--smarthost", "relay.example.org:587"], ["--smarthost", "[::1]:2525"], ["--smarthost", "127.0.0.1:25"],
        ["--smarthost", "exämple.test:25"], ["--dns-server", "127.0.0.1"], ["--dns-server", "::1"], ["--dns-server", "[::1]:5353"],
        ["--mx-override", "*=127.0.0.1:2525"], ["--mx-override", "example.org=mx.test"],
        ["--imap-idle-timeout", "2.5"], ["--ftp-idle-timeout", "3600"], ["--smtp", "tcp:0:interface=127.0.0.1"], ["--smtp", "unix:/tmp/x.sock"],
        ["--hostname", "mail.example.org"], ["--hostname", "mail.example.org."],
        ["--trusted-networks", "10.0.0.0/8,10.1.2.3,10.1.2.4/32,fd00::/8"], ["--passive-address", "192.0.2.10"], ["--passive-address", "127.0.0.1"],
        ["--max-connections", "2147483647"], ["--smtp-idle-timeout", "31536000"], ["--imap-idle-timeout", "31536000"],
        ["--queue-lifetime", "365d"], ["--quota", "1024T"], ["--smtp", "tcp:0:interface=\\:\\:1"], ["--smtp", "tcp6:0:interface=\\:\\:"],
    ],
    ids=lambda args: " ".join(args),
)
def test_usable_values_are_taken(args):
    assert _refusal(*args) is None


def test_host_port_reads_each_form_and_its_default_port():
    from twisted_mailhub import optionvalues

    assert optionvalues.host_port("relay.test", 25) == ("relay.test", 25)
    assert optionvalues.host_port(" relay.test:587 ", 25) == ("relay.test", 587)
    assert optionvalues.host_port("[::1]:2525") == ("::1", 2525)
    assert optionvalues.host_port("::1", 53, address_only=True) == ("::1", 53)
    with pytest.raises(ValueError, match="no port after the colon"):
        optionvalues.host_port("relay.test:", 25)
    with pytest.raises(ValueError, match="no port;"):
        optionvalues.host_port("relay.test")


@pytest.mark.parametrize(
    "args",
    [["--store", "nosuch"], ["--filter", "nosuch"], ["--trusted-networks", "10.0.0.0/33"], ["--passive-ports", "x"], ["--passive-ports", "2000-1000"], ["--ftp-filesystem", "nosuch"], ["--user", "nopassword"]],
    ids=lambda args: " ".join(args),
)
def test_no_usage_error_quotes_a_value_as_python_does(args):
    said = _refusal(*args)
    assert said is not None and said.startswith(args[0]), said
    assert f"'{args[1]}'" not in said, said


def test_passive_ports_through_a_balancer_want_the_range_it_forwards():
    assert _refusal("--passive-ports", "haproxy:50000-50099") is None
    assert _refusal("--passive-ports", "haproxy:") == (
        "--passive-ports haproxy:LO-HI wants the range the balancer forwards to this hub, such as haproxy:50000-50099"
    )
    assert _refusal("--passive-ports", "haproxy:1000-2000") == "--passive-ports 1000-2000: want 1024 <= LO <= HI <= 65535"
