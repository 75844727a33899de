"""
The example load balancer configuration (C{etc/haproxy-mailhub.cfg}) with
Debian's HAProxy in front of two real hubs on one PostgreSQL database:
the file is the README's, only its addresses and ports are made loopback
and free; SMTP, submission, POP3 and IMAP work through it, and go on
working when one hub is killed.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from tests.hubprocess import ROOT
from tests.test_e2e_relay import free_port

EXAMPLE = os.path.join(ROOT, "etc", "haproxy-mailhub.cfg")

# Every listener the example balances; each is a haproxy: listener on the
# hubs, since the example sends the PROXY header (send-proxy-v2).
LISTENERS = ["smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s", "ftp", "sftp", "web", "webs"]


def behind_haproxy(*more: str) -> list[str]:
    """A test hub's options: every listener a haproxy: one on a free loopback port."""
    args = []
    for name in LISTENERS:
        args += [f"--{name}", "haproxy:tcp:0:interface=127.0.0.1"]
    return args + list(more)


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.path.exists(p)), None)
    if found is None:
        message = "HAProxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def loopback_config(example: str, hubs: list, fronts: dict[str, int], ftp_data: dict[str, tuple[int, int]] | None = None) -> str:
    """
    The example with each C{bind :PORT} on 127.0.0.1 and a free port
    (C{fronts}: backend name -> port), each C{server hubN ADDR:PORT} on the
    N-th test hub's address and port of that listener, and a C{maxconn} a
    test process may have. The FTP passive ranges (C{ftp-data-hubN}) are
    kept only when C{ftp_data} gives each a free range (LO, HI) on
    127.0.0.1; their servers are the N-th hub's FTP address, no port.
    """
    out, backend, skipping = [], None, False
    for line in example.splitlines():
        words = line.split()
        if words[:1] in (["frontend"], ["backend"]):
            backend = words[1]
            skipping = backend.startswith("ftp-data") and backend not in (ftp_data or {})
        if skipping:
            continue
        if words[:1] == ["bind"] and backend.startswith("ftp-data"):
            line = "    bind 127.0.0.1:%d-%d" % ftp_data[backend]
        elif words[:1] == ["bind"]:
            line = f"    bind 127.0.0.1:{fronts[backend]}"
        elif words[:1] == ["server"] and backend.startswith("ftp-data"):
            n = int(re.fullmatch(r"hub(\d+)", words[1]).group(1))
            line = f"    server {words[1]} {hubs[n - 1].listeners['ftp'].host} {' '.join(words[3:])}"
        elif words[:1] == ["server"]:
            n = int(re.fullmatch(r"hub(\d+)", words[1]).group(1))
            rest = " ".join(words[3:])
            where = hubs[n - 1].listeners[backend]
            line = f"    server {words[1]} {where.host}:{where.port} {rest}"
        elif words[:1] == ["maxconn"]:
            line = "    maxconn 200"
        out.append(line)
    return "\n".join(out) + "\n"


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"haproxy did not listen on {port}: {process.stdout.read() if process.poll() is not None else ''}")
            time.sleep(0.02)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process C{pid} listens on (its sockets in /proc/net/tcp and tcp6)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def start_haproxy(binary: str, path, backends, make_config, tries: int = 3) -> tuple[subprocess.Popen, dict]:
    """
    Run HAProxy on the configuration C{make_config(fronts)} written to
    C{path}, C{fronts} a free loopback port for each of C{backends};
    returns (process, fronts) once HAProxy itself listens on every front
    port (a port answering is not enough: it may be another program's).
    A port another process took between C{free_port} and HAProxy's bind
    ("Address already in use": the suite starts hubs on ephemeral ports
    all the time) is a new try on other ports, up to C{tries}.
    """
    for attempt in range(tries):
        fronts = {name: free_port() for name in backends}
        path.write_text(make_config(fronts))
        check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while process.poll() is None and not set(fronts.values()) <= listening_ports(process.pid):
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(f"haproxy did not listen on {sorted(fronts.values())} within 10 s")
            time.sleep(0.02)
        if process.poll() is None:
            return process, fronts
        said = process.stdout.read()
        if "Address already in use" not in said or attempt == tries - 1:
            raise AssertionError(f"haproxy exited: {said}")
    raise AssertionError("unreachable")


@pytest.fixture
def balanced(start_hub, pg_dsn, tmp_path):
    """Two hubs on one database behind HAProxy: (hubs, front ports)."""
    binary = haproxy_binary()
    hubs = [start_hub(*behind_haproxy("--store", f"postgresql:{pg_dsn}")) for _ in range(2)]
    with open(EXAMPLE) as f:
        example = f.read()
    backends = [b for b in re.findall(r"^backend (\S+)", example, re.M) if not b.startswith("ftp-data")]
    assert set(backends) >= {"smtp", "submission", "imap", "pop3"}
    process, fronts = start_haproxy(binary, tmp_path / "haproxy.cfg", backends, lambda fronts: loopback_config(example, hubs, fronts))
    try:
        yield hubs, fronts
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], f"Subject: {subject}\r\n\r\nthrough the balancer\r\n".encode())


def subjects_over_imap(port: int) -> list[str]:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    c.login("alice", "secret")
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    c.logout()
    return sorted(item[1].decode().strip() for item in data if isinstance(item, tuple))


def test_smtp_imap_and_pop3_through_haproxy_go_on_with_a_hub_killed(balanced):
    hubs, fronts = balanced
    for n in range(4):  # leastconn spreads them over both hubs
        send(fronts["smtp"], f"before {n}")
    with smtplib.SMTP("127.0.0.1", fronts["submission"], timeout=10) as s:
        s.login("alice", "secret")
        s.sendmail("alice@localhost", ["alice@localhost"], b"Subject: submitted\r\n\r\nhi\r\n")
    assert subjects_over_imap(fronts["imap"]) == [f"Subject: before {n}" for n in range(4)] + ["Subject: submitted"]
    hubs[0].kill()  # kill -9: no goodbye to anyone
    for n in range(4):  # every new connection reaches the hub that is left
        send(fronts["smtp"], f"after {n}")
    for _ in range(3):
        got = subjects_over_imap(fronts["imap"])
        assert len(got) == 9 and "Subject: after 3" in got
    p = poplib.POP3("127.0.0.1", fronts["pop3"], timeout=10)
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 9
    p.quit()


def test_a_front_port_another_program_took_meanwhile_is_a_new_try_on_other_ports(tmp_path, monkeypatch):
    # The suite's haproxy tests failed now and then with "cannot bind
    # socket (Address already in use)": a port free_port() gave was taken
    # before HAProxy bound it.
    import tests.test_haproxy as module

    binary = haproxy_binary()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = [taken.getsockname()[1]]
    real = module.free_port
    monkeypatch.setattr(module, "free_port", lambda: first.pop() if first else real())

    def config(fronts):
        return (
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n"
            f"frontend f\n    bind 127.0.0.1:{fronts['f']}\n    default_backend b\nbackend b\n    server s 127.0.0.1:9\n"
        )

    try:
        process, fronts = start_haproxy(binary, tmp_path / "h.cfg", ["f"], config)
        try:
            assert fronts["f"] != taken.getsockname()[1] and process.poll() is None
            assert fronts["f"] in listening_ports(process.pid)
        finally:
            process.kill()
            process.wait()
    finally:
        taken.close()
