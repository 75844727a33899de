"""
`mailhub-admin check` (and the warning about ports in the kernel's ephemeral range) reads a listener's endpoint description as the hub
does (Twisted's strports: `\\:` escapes a colon, `port=` and `interface=`
may be given by name): an IPv6 interface (`tcp6:PORT:interface=\\:\\:1`)
or a port given by name is checked at that address, not reported as
"Name or service not known" or an unusable port; a port another program
holds there is still reported.
"""

from __future__ import annotations

import socket

import pytest

from tests.hubprocess import listener_names
from tests.test_admin import mailhub_admin


def _free(family: int, host: str) -> int:
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check(tmp_path, *listeners: str):
    given = {listeners[i] for i in range(0, len(listeners), 2)}
    others = sum(([f"--no-{n}"] for n in listener_names() if f"--{n}" not in given), [])
    result = mailhub_admin("check", "--no-dns", "--data", str(tmp_path / "data"), "--user", "alice:secret", *listeners, *others)
    return [line for line in result.stderr.splitlines() if line.startswith("listeners:")], result


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_check_takes_an_escaped_ipv6_interface_and_reports_only_a_port_held_there(tmp_path):
    free = _free(socket.AF_INET6, "::1")
    with socket.socket(socket.AF_INET6) as other_program:
        other_program.bind(("::1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        listeners, result = _check(
            tmp_path, "--smtp", f"tcp6:{free}:interface=\\:\\:1", "--imap", f"tcp6:{taken}:interface=\\:\\:1"
        )
    assert len(listeners) == 1, result.stderr
    assert "for imap on" in listeners[0] and "already in use" in listeners[0], result.stderr


def test_check_takes_port_and_interface_given_by_name(tmp_path):
    free = _free(socket.AF_INET, "127.0.0.1")
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        listeners, result = _check(
            tmp_path, "--smtp", f"tcp:port={free}:interface=127.0.0.1", "--pop3", f"tcp:interface=127.0.0.1:port={taken}"
        )
    assert len(listeners) == 1, result.stderr
    assert "for pop3 on" in listeners[0] and "already in use" in listeners[0], result.stderr


def test_the_ephemeral_range_warning_reads_ports_given_by_name_or_behind_haproxy():
    from twisted_mailhub.ports import fixed_port, tcp_listen_address

    assert fixed_port("tcp:port=40025:interface=127.0.0.1") == 40025
    assert fixed_port("haproxy:tcp:40025") == 40025
    assert fixed_port("tcp6:40025:interface=\\:\\:1") == 40025
    assert fixed_port("tcp:0") is None
    assert fixed_port("unix:/run/x.sock") is None
    assert tcp_listen_address("tcp6:40025:interface=\\:\\:1") == ("tcp6", "::1", 40025)
    assert tcp_listen_address("tcp:25") == ("tcp", "0.0.0.0", 25)
    assert tcp_listen_address("tcp6:25") == ("tcp6", "::", 25)
    assert tcp_listen_address("tcp:25:127.0.0.1") == ("tcp", "127.0.0.1", 25)
