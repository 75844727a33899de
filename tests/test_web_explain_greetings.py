"""
The first thing a POP3 or IMAP server says is its greeting, answering no
command. A student who opens "nc host 8110" and watches the console must
read it as that (RFC 1939 §4, RFC 3501 §7.1.1), not as "positive status:
the command worked"; the same status later still answers its command.
"""

from __future__ import annotations

import re
import socket
import urllib.parse

from tests.web_helpers import WebClient


def talk(port: int, lines: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in lines:
            sock.sendall(line)
            reader.readline()


def explained(hub, protocol: str) -> list[tuple[str, str]]:
    """(line, its explanation) of each S: line of the session's export."""
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(%s#\d+)"' % protocol, browser.get("/console").text)
    text = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text
    lines = text.splitlines()
    return [(re.sub(r"^\+ +[\d.]+s S: +", "", line), lines[n + 1].strip()) for n, line in enumerate(lines) if re.match(r"\+ +[\d.]+s S:", line)]


def test_the_pop3_and_imap_greetings_are_explained_as_greetings(start_hub):
    hub = start_hub()
    talk(hub.ports["pop3"], [b"NOOP\r\n", b"QUIT\r\n"])
    pop3 = explained(hub, "pop3")
    assert pop3[0][0].startswith("+OK ") and pop3[0][1].startswith("# the greeting: the server is ready, in the AUTHORIZATION state"), pop3
    assert "RFC 1939 §4" in pop3[0][1]
    assert pop3[-1][0].startswith("+OK") and pop3[-1][1].startswith("# positive status: the command worked"), pop3
    talk(hub.ports["imap"], [b"a1 NOOP\r\n", b"a2 LOGOUT\r\n"])
    imap = explained(hub, "imap")
    assert imap[0][0].startswith("* OK ") and imap[0][1].startswith("# the greeting: the server is ready, not logged in yet"), imap
    assert imap[1][0] == "a1 OK NOOP completed" and imap[1][1].startswith("# success"), imap


def test_a_line_typed_while_imap_idle_runs_is_explained_as_no_command(start_hub):
    # A student in IDLE types "a4 noop": the server answers "* BAD expected
    # DONE" and idles on. The console explained the line as NOOP ("does
    # nothing, but the server reports news").
    hub = start_hub()
    with socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        for line in (b"a1 login alice secret\r\n", b"a2 select inbox\r\n"):
            sock.sendall(line)
            while not reader.readline().startswith(line.split()[0]):
                pass
        sock.sendall(b"a3 idle\r\n")
        assert reader.readline().startswith(b"+ ")
        sock.sendall(b"a4 noop\r\n")
        assert reader.readline().startswith(b"* BAD")
        sock.sendall(b"done\r\n")
        assert reader.readline().startswith(b"a3 OK")
        sock.sendall(b"a5 noop\r\n")
        assert reader.readline().startswith(b"a5 OK")
        sock.sendall(b"a6 logout\r\n")
        reader.read()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(imap#\d+)"', browser.get("/console").text)
    lines = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text.splitlines()
    meaning = {re.sub(r"^\+ +[\d.]+s C: +", "", line): lines[n + 1].strip() for n, line in enumerate(lines) if re.match(r"\+ +[\d.]+s C:", line)}
    assert meaning["a4 noop"].startswith("# while IDLE runs the server reads only DONE: this line is no command"), meaning
    assert meaning["done"].startswith("# ends IDLE"), meaning
    assert meaning["a5 noop"].startswith("# does nothing"), meaning
