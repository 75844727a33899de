"""
Listening ports inside the kernel's ephemeral range (twisted_mailhub.ports):
the hub warns at start, and mailhub-admin check says so, when --port-base
or a listener's endpoint puts a fixed port where outgoing connections take
theirs; reserved ports and port 0 are no concern.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.hubprocess import LISTENERS, ROOT
from tests.test_admin import mailhub_admin
from twisted_mailhub import ports
from twisted_mailhub.testing import keep_log

SPAN = ports.ephemeral_range()
needs_linux = pytest.mark.skipif(SPAN is None and not os.environ.get("CI"), reason=f"needs Linux's {ports.RANGE}")


def test_only_fixed_unreserved_ports_inside_the_range_are_warned_of():
    listeners = [
        ("smtp", "tcp:35025", True),
        ("imap", "tcp:35143:interface=127.0.0.1", True),
        ("pop3", "tcp:35110", True),  # reserved below
        ("web", "tcp:0", True),
        ("ftp", "tcp:9021", True),
        ("sftp", "unix:/tmp/x.sock", False),
        ("webs", "tcp6:40443", False),
    ]
    lines = ports.ephemeral_warnings(listeners, 35000, span=(32768, 60999), reserved={35110})
    assert lines[0].startswith(
        "mailhub: warning: --port-base 35000 puts 2 listeners (smtp 35025, imap 35143) inside this machine's "
        "ephemeral port range 32768-60999 (/proc/sys/net/ipv4/ip_local_port_range): the kernel gives those ports "
        "to outgoing connections, so one may hold a port when the hub starts or restarts, and that listener then fails to bind."
    )
    assert lines[0].endswith("Use a base that keeps them below 32768 (e.g. --port-base 10000), or reserve them: sysctl -w net.ipv4.ip_local_reserved_ports=35025,35143")
    assert lines[1].startswith("mailhub: warning: --webs tcp6:40443 listens on port 40443, inside this machine's ephemeral port range 32768-60999")
    assert lines[1].endswith("Use a port below 32768, or reserve it: sysctl -w net.ipv4.ip_local_reserved_ports=40443")
    assert len(lines) == 2
    assert ports.ephemeral_warnings([("smtp", "tcp:10025", True)], 10000, span=(32768, 60999), reserved=set()) == []


def test_the_reserved_ports_list_is_read_as_the_kernel_writes_it(tmp_path):
    reserved = tmp_path / "reserved"
    reserved.write_text("8080,35021-35023,bogus\n")
    assert ports.reserved_ports(str(reserved)) == {8080, 35021, 35022, 35023}
    assert ports.reserved_ports(str(tmp_path / "none")) == set()
    span = tmp_path / "range"
    span.write_text("40000\t50000\n")
    assert ports.ephemeral_range(str(span)) == (40000, 50000)


def _free_base(offsets: list[int]) -> int:
    """A --port-base inside the ephemeral range whose moved ports are free now."""
    low, high = SPAN
    for base in range(low + 1000, high - 1000, 97):
        try:
            for offset in offsets:
                s = socket.socket()
                try:
                    s.bind(("0.0.0.0", base + offset))
                finally:
                    s.close()
        except OSError:
            continue
        return base
    pytest.fail("no free ports in the ephemeral range")


@needs_linux
def test_a_hub_started_with_a_port_base_inside_the_ephemeral_range_warns_and_still_runs(tmp_path):
    base = _free_base([25])
    others = [f"--no-{name}" for name in LISTENERS if name != "smtp"]
    hub = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "mailhub",
         "--data", str(tmp_path / "d"), "--port-base", str(base), "--user", "alice:secret", *others],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    log = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = hub.stdout.readline()
            if not line:
                break
            log.append(line)
            if "mailhub ready" in line:
                break
        text = "".join(log)
        assert "mailhub ready" in text, text
        low, high = SPAN
        assert (
            f"mailhub: warning: --port-base {base} puts 1 listener (smtp {base + 25}) inside this machine's ephemeral "
            f"port range {low}-{high} (/proc/sys/net/ipv4/ip_local_port_range)"
        ) in text
        with socket.create_connection(("127.0.0.1", base + 25), timeout=10) as s:
            assert s.recv(100).startswith(b"220 ")
    finally:
        hub.terminate()
        keep_log("".join(log) + hub.communicate(timeout=30)[0])


@needs_linux
def test_mailhub_admin_check_names_ports_inside_the_ephemeral_range(tmp_path):
    base = _free_base([25, 587])
    others = [f"--no-{name}" for name in LISTENERS if name not in ("smtp", "submission")]
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    result = mailhub_admin("check", "--no-dns", "--data", str(tmp_path / "d"), "--auth", f"file:{accounts}", "--port-base", str(base), *others)
    assert result.returncode == 1
    assert f"ports: --port-base {base} puts 2 listeners (smtp {base + 25}, submission {base + 587}) inside this machine's ephemeral port range" in result.stderr
    fine = mailhub_admin("check", "--no-dns", "--data", str(tmp_path / "d"), "--auth", f"file:{accounts}", "--port-base", "10000", *others)
    assert "ephemeral" not in fine.stderr
