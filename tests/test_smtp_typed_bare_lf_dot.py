"""
A student types SMTP by hand in a session whose commands end in CRLF
(telnet, nc -C) and, in the message, sends a line of "." that ends in a
bare LF (a paste from a Unix file, nc without -C for a moment). The hub
does not take that as the end of the message (RFC 5321 §4.1.1.4; SMTP
smuggling, CVE-2023-51764): it goes on reading the message, so the
student's "QUIT" is message text and gets no reply. The live console,
the exported transcript and --transcript's log must show what the server
read: the message still going on, not a "." and a QUIT command left
unanswered.
"""

from __future__ import annotations

import re
import socket
import time

from tests.web_helpers import smtp_transcript


def typed(hub, steps: list[bytes]) -> bytes:
    """Send each step as its own read (a person typing), waiting a moment for what the hub says."""
    answer = b""
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as sock:
        sock.settimeout(0.4)
        for step in [b""] + steps:
            if step:
                sock.sendall(step)
            deadline = time.monotonic() + (3 if step.endswith(b"\r\n") and not step.startswith(b"Subject") else 0.5)
            got = b""
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(4096)
                except socket.timeout:
                    if got:
                        break
                    continue
                if not chunk:
                    break
                got += chunk
            answer += got
    return answer


def shown_lines(hub) -> list[str]:
    text = smtp_transcript(hub)
    return [re.sub(r"^\+ +[\d.]+s ", "", line) for line in text.splitlines() if re.match(r"\+ +[\d.]+s [CS]:", line)]


STEPS = [
    b"HELO student\r\n",
    b"MAIL FROM:<s@example.org>\r\n",
    b"RCPT TO:<alice@localhost>\r\n",
    b"DATA\r\n",
    b"Subject: hand typed\r\n\r\nhi\n",
    b".\n",
    b"QUIT\r\n",
    b".\r\n",
    b"QUIT\r\n",
]


def test_a_bare_lf_dot_in_a_crlf_session_is_shown_as_message_text(start_hub):
    hub = start_hub("--transcript")
    answer = typed(hub, STEPS)
    # The server read on past ".\n" and "QUIT": only the CRLF "." ended the
    # message (refused for its bare LFs), and then QUIT was a command.
    assert re.findall(rb"(?m)^\d{3}", answer) == [b"220", b"250", b"250", b"250", b"354", b"550", b"221"], answer
    shown = shown_lines(hub)
    assert shown[-6:] == [
        "S:   354 End data with <CR><LF>.<CR><LF>",
        "C:   [message: 5 lines, 34 octets]",
        "C:   .",
        "S:   550 5.5.2 Error: message refused: bare <CR> or <LF> in data (lines must end with <CR><LF>)",
        "C:   QUIT",
        "S:   221 2.0.0 Bye",
    ], shown
    assert shown.count("C:   QUIT") == 1 and shown.count("C:   .") == 1, shown
    deadline = time.monotonic() + 10
    while "221 2.0.0 Bye" not in hub.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[message: 5 lines, 34 octets]" in hub.log
    logged = [line.split(" C: ", 1)[1] for line in hub.log.splitlines() if " C: " in line]
    assert logged.count("QUIT") == 1 and logged.count(".") == 1, logged


def test_a_bare_lf_dot_is_the_end_in_a_session_typed_with_bare_lf(start_hub):
    hub = start_hub()
    steps = [step.replace(b"\r\n", b"\n") for step in STEPS[:7]]
    answer = typed(hub, steps)
    assert re.findall(rb"(?m)^\d{3}", answer) == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], answer
    shown = shown_lines(hub)
    assert shown[-6:-3] == ["S:   354 End data with a line holding only a dot (.)", "C:   [message: 3 lines, 24 octets]", "C:   ."], shown
    assert shown[-3].startswith("S:   250 2.0.0 Ok: queued as") and shown[-2:] == ["C:   QUIT", "S:   221 2.0.0 Bye"], shown


def test_a_line_with_a_cr_before_its_crlf_is_shown_with_it(start_hub):
    """A CR typed before the line end (a terminal's Enter sending CR CR LF under nc -C): the hub refuses the line for it, so the console shows it, as \\x0d."""
    hub = start_hub()
    answer = typed(hub, [b"HELO student\r\r\n", b"NOOP\r\r\n", b"QUIT\r\n"])
    assert answer.count(b"500 5.5.2 Error: bad syntax (the line contained a control character: ^M, a carriage return)") == 2, answer
    shown = shown_lines(hub)
    assert "C:   HELO student\\x0d" in shown and "C:   NOOP\\x0d" in shown and "C:   QUIT" in shown, shown


def explained(hub) -> dict[str, str]:
    """Each client line of the console's export, with the explanation under it."""
    lines = smtp_transcript(hub).splitlines()
    return {re.sub(r"^\+ +[\d.]+s C: +", "", line): lines[n + 1].strip() for n, line in enumerate(lines) if re.match(r"\+ +[\d.]+s C:", line)}


def test_the_message_summary_says_what_ends_the_message_in_this_session(start_hub):
    # It said "a line with a lone '.' ends it" in every session, also where
    # a "." ending in a bare LF did not end it (a CRLF session).
    hub = start_hub()
    typed(hub, STEPS)
    meaning = explained(hub)
    note = meaning["[message: 5 lines, 34 octets]"]
    assert note.startswith("# the message itself (headers, blank line, body), summarized here; it ends at a line of only '.' sent with CR LF"), note
    assert "a '.' line that ends in a bare LF is message text here" in note and "lone" not in note, note
    hub2 = start_hub()
    typed(hub2, [step.replace(b"\r\n", b"\n") for step in STEPS[:7]])
    note = explained(hub2)["[message: 3 lines, 24 octets]"]
    assert note.startswith("# the message itself (headers, blank line, body), summarized here; a line of only '.' ends it, with or without its CR"), note
