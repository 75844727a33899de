"""
`mailhub-admin check` on a machine where the hub of that data folder runs
(checking a live configuration: DNS, accounts, certificate) does not report
the running hub's own ports as taken by another program; a port another
program holds is still reported.
"""

from __future__ import annotations

import socket

from tests.hubprocess import listener_names
from tests.test_admin import mailhub_admin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_does_not_report_the_running_hubs_own_listeners(start_hub, tmp_path):
    data = str(tmp_path / "data")
    smtp, pop3 = free_port(), free_port()
    fixed = ["--smtp", f"tcp:{smtp}:interface=127.0.0.1", "--pop3", f"tcp:{pop3}:interface=127.0.0.1"]
    hub = start_hub(*fixed, data=data)
    assert hub.ports["smtp"] == smtp and hub.ports["pop3"] == pop3
    others = sum(([f"--{n}", "tcp:0:interface=127.0.0.1"] for n in listener_names() if n not in ("smtp", "pop3", "imap")), [])
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = other_program.getsockname()[1]
        result = mailhub_admin("check", "--no-dns", "--data", data, "--user", "alice:secret", *fixed, "--imap", f"tcp:{taken}:interface=127.0.0.1", *others)
    assert result.returncode == 1
    # (free ports may lie in the ephemeral range: "ports:" warnings, not counted)
    listeners = [line for line in result.stderr.splitlines() if line.startswith("listeners:")]
    assert len(listeners) == 1 and "for imap on" in listeners[0] and "already in use" in listeners[0], result.stderr
