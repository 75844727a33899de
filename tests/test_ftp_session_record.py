"""
An FTP connection records its own session (no wrapper between the socket
and the protocol): against a real hub with C{--transcript}, the C:/S: lines
are what the client sent and was sent, the password masked, with the login,
the TLS handshake, the data connections and the end as events, and a
connection refused over a limit is a session too.
"""

from __future__ import annotations

import ftplib
import io
import re
import socket

from tests.hubprocess import client_context


def _session(hub, cid: str) -> list[str]:
    """The transcript lines of session C{cid}, without the id, once it has closed."""
    hub.wait_for_log(re.escape(cid) + r" closed")
    return [m.group(1) for m in re.finditer(re.escape(cid) + r" (.*)", hub.log)]


class Control:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.fp = self.sock.makefile("rb")

    def line(self) -> str:
        return self.fp.readline().decode().rstrip("\r\n")

    def ask(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.line()


def test_an_ftp_session_is_recorded_line_for_line_with_the_password_masked(start_hub):
    hub = start_hub("--transcript")
    c = Control(hub.ports["ftp"])
    greeting = c.line()
    said = [("USER alice", c.ask("USER alice")), ("PASS secret", c.ask("PASS secret")), ("PWD", c.ask("PWD")),
            ("CWD \x1bnowhere", c.ask("CWD \x1bnowhere")), ("QUIT", c.ask("QUIT"))]
    m = hub.wait_for_log(r"(ftp#\d+) C: USER alice")
    lines = _session(hub, m.group(1))
    assert re.fullmatch(r"connected from 127\.0\.0\.1:\d+", lines[0])
    expected = [f"S: {greeting}", "C: USER alice", f"S: {said[0][1]}", "C: PASS ****", "login: alice@localhost", f"S: {said[1][1]}",
                "C: PWD", f"S: {said[2][1]}", "C: CWD \\x1bnowhere", f"S: {said[3][1]}", "C: QUIT", f"S: {said[4][1]}", "closed"]
    assert lines[1:] == expected
    assert said[1][1].startswith("230") and said[4][1].startswith("221")
    assert "secret" not in hub.log


def test_an_ftps_session_records_the_handshake_and_its_data_connection(start_hub):
    hub = start_hub("--transcript")
    f = ftplib.FTP_TLS(timeout=10, context=client_context())
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.auth()
    f.login("alice", "secret")
    f.prot_p()
    f.storbinary("STOR note.txt", io.BytesIO(b"seven\n"))
    f.quit()
    m = hub.wait_for_log(r"(ftp#\d+) C: AUTH TLS")
    lines = _session(hub, m.group(1))
    auth = lines.index("C: AUTH TLS")
    assert lines[auth + 1].startswith("S: 234 ")
    assert re.fullmatch(r"tls: TLSv1\.[23] \S+", lines[auth + 2])
    assert lines[auth + 3 : auth + 7] == ["C: USER alice", "S: 331 Password required for alice.", "C: PASS ****", "login: alice@localhost"]
    opened = [line for line in lines if line.startswith("data: open: ")]
    closed = [line for line in lines if line.startswith("data: closed: ")]
    # (the data connection said "(passive mode)" only: a class watching
    # the console took the file for one sent in the clear; breaker2)
    assert len(opened) == 1 and re.search(r"\(passive mode, TLS: PROT P\)$", opened[0]), opened
    assert len(closed) == 1 and ", 6 bytes in " in closed[0]
    assert lines.index(closed[0]) < lines.index("S: 226 Transfer complete.") < lines.index("C: QUIT")
    assert lines[-2:] == ["S: 221 Goodbye.", "closed"]


def test_a_data_connection_in_the_clear_after_auth_tls_says_so(start_hub):
    # PROT C (the default after AUTH TLS): the control connection is TLS,
    # the data connection is not, and the console says which.
    hub = start_hub("--transcript")
    f = ftplib.FTP_TLS(timeout=10, context=client_context())
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.auth()
    f.login("alice", "secret")
    f.set_pasv(False)
    f.storbinary("STOR note.txt", io.BytesIO(b"seven\n"))
    f.quit()
    m = hub.wait_for_log(r"(ftp#\d+) C: AUTH TLS")
    opened = [line for line in _session(hub, m.group(1)) if line.startswith("data: open: ")]
    assert len(opened) == 1 and re.search(r"\(active mode, in the clear: PROT C\)$", opened[0]), opened


def test_connections_refused_over_a_limit_are_recorded_sessions(start_hub):
    hub = start_hub("--transcript", "--ftp-max-per-ip", "1", "--max-connections", "2")
    first = Control(hub.ports["ftp"])
    assert first.line().startswith("220")
    second = Control(hub.ports["ftp"])  # over --ftp-max-per-ip: FTP's own refusal
    refused = second.line()
    assert refused.startswith("421 ")
    m = hub.wait_for_log(r"(ftp#\d+) S: " + re.escape(refused))
    assert _session(hub, m.group(1))[1:] == [f"S: {refused}", "closed"]
    web = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)  # the second of --max-connections 2
    web.makefile("rb").readline()
    third = Control(hub.ports["ftp"])  # over --max-connections: the hub's refusal
    over = third.line()
    assert over.startswith("421 ")
    m = hub.wait_for_log(r"(ftp#\d+) S: " + re.escape(over))
    assert _session(hub, m.group(1))[1:] == [f"S: {over}", "closed"]
    web.close()


def test_an_ftp_session_nobody_watched_shows_the_same_on_the_console_live_and_exported(start_hub):
    # No --transcript: nobody watches the session's lines while it runs, so
    # its record keeps the bytes and makes them lines when the console asks.
    from tests.web_helpers import WatchedSession

    hub = start_hub()
    c = Control(hub.ports["ftp"])
    greeting = c.line()
    said = [("USER alice", c.ask("USER alice")), ("PASS secret", c.ask("PASS secret")), ("PWD", c.ask("PWD"))]
    watched = WatchedSession(hub, "ftp")
    assert watched.first["session"]["account"] == "alice@localhost"
    said += [("CWD \x1bnowhere", c.ask("CWD \x1bnowhere")), ("QUIT", c.ask("QUIT"))]
    watched.until_closed()
    expected = [("S:", greeting), ("C:", "USER alice"), ("S:", said[0][1]), ("C:", "PASS ****"), ("auth", "alice@localhost"), ("S:", said[1][1]),
                ("C:", "PWD"), ("S:", said[2][1]), ("C:", "CWD \\x1bnowhere"), ("S:", said[3][1]), ("C:", "QUIT"), ("S:", said[4][1]), ("--", "closed")]
    labels = {"C": "C:", "S": "S:", "login": "auth", "end": "--", "start": "--"}
    text, page = watched.assert_exported_as_streamed(expected, labels)
    assert "secret" not in text and "secret" not in page
