"""
A student in telnet presses Ctrl-C: telnet sends IAC IP, IAC DO
TIMING-MARK (RFC 854), which the hub's servers skip before the next
command. The console shows those octets as they came (\\xff\\xf4...), and
must still explain the command typed after them, with the Telnet commands
named, instead of leaving the line unexplained.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.parse

from tests.web_helpers import WebClient


def test_a_command_after_telnets_ctrl_c_is_explained(start_hub):
    hub = start_hub()
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"\xff\xf4\xff\xfd\x06")
        time.sleep(0.3)  # (its own read, as telnet sends it)
        sock.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221 ")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text)
    lines = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text.splitlines()
    [at] = [n for n, line in enumerate(lines) if re.match(r"\+ +[\d.]+s C: +\\xff\\xf4\\xff\\xfd\\x06QUIT$", line)]
    assert lines[at + 1].strip().startswith("# first Telnet commands (what telnet sends when Ctrl-C is pressed"), lines[at + 1]
    assert "client ends the session" in lines[at + 1] and "RFC 854" in lines[at + 1]
    assert lines[at + 3].strip().startswith("# service closing the connection (after QUIT)"), lines[at + 3]
