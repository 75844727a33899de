"""
The live console explains a refusal of the message itself (the reply to
the final dot) as such: a 550 after the dot is the message refused for its
form or content, not "no such user, or relaying refused" (the plain 550's
meaning, which fits RCPT TO).
"""

from __future__ import annotations

import re
import socket
import urllib.parse

from tests.web_helpers import WebClient


def typed(port: int, envelope: bytes, message: bytes) -> None:
    """
    A student's SMTP session typed by hand (nc -C): the C{envelope}
    commands, the message once the 354 has come (as a person types it),
    then QUIT; read until its 221.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""

        def until(word: bytes) -> None:
            nonlocal data
            while word not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise AssertionError(f"closed before {word!r}: {data!r}")
                data += chunk

        sock.sendall(envelope)
        until(b"354 ")
        sock.sendall(message + b"quit\r\n")
        until(b"221 ")


def transcript(hub) -> str:
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(smtp#\d+)"', browser.get("/console").text)
    return browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text


def explanation_of(text: str, reply: str) -> str:
    lines = text.splitlines()
    [at] = [n for n, line in enumerate(lines) if reply in line]
    return lines[at + 1]


def test_a_550_after_the_final_dot_is_explained_as_the_message_refused(start_hub):
    hub = start_hub()
    envelope = b"helo student\r\nmail from:<s@example.org>\r\nrcpt to:<alice@localhost>\r\ndata\r\n"
    typed(hub.ports["smtp"], envelope, b"Subject: long\r\n\r\n" + b"z" * 1200 + b"\r\n.\r\n")
    said = explanation_of(transcript(hub), "S:   550 ")
    assert "refused the message" in said and "the message is refused for good" in said
    assert "no such user" not in said

