"""
A whole SMTP session pasted or piped into nc in one go (the README's
`printf 'helo me\\n...quit\\n' | nc -N host 8025` for a class): the message
comes before the server's 354. The session record (live console, exported
transcript, --transcript's log) must still show it as its count after the
354, never as lines of its text, and each reply as the answer to its own
command; when DATA is refused, what followed it is shown as the commands
the server read it as.
"""

from __future__ import annotations

import re
import socket
import time

from tests.web_helpers import smtp_transcript

PASTED = (
    b"helo student\r\nmail from:<s@example.org>\r\nrcpt to:<alice@localhost>\r\ndata\r\n"
    b"Subject: secret plans\r\n\r\nmy private body line\r\n.\r\nquit\r\n"
)


def paste(hub, text: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as sock:
        sock.sendall(text)
        data = b""
        while b"221 " not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def transcript_lines(hub) -> list[str]:
    text = smtp_transcript(hub)
    return [line for line in text.splitlines() if re.match(r"\+ +[\d.]+s [CS]:", line) or line.strip().startswith("#")]


def said(lines: list[str]) -> list[str]:
    return [re.sub(r"^\+ +[\d.]+s ", "", line) for line in lines if not line.strip().startswith("#")]


def test_a_pasted_message_is_shown_as_its_count_after_the_354(start_hub):
    hub = start_hub("--transcript")
    assert b"250 2.0.0 Ok: queued as" in paste(hub, PASTED)
    lines = transcript_lines(hub)
    shown = said(lines)
    queued = [line for line in shown if "queued as" in line]
    assert shown == [
        "S:   220 mail.test ESMTP", "C:   helo student", "C:   mail from:<s@example.org>", "C:   rcpt to:<alice@localhost>", "C:   data",
        "S:   250 mail.test", "S:   250 2.1.0 Ok", "S:   250 2.1.5 Ok", "S:   354 End data with <CR><LF>.<CR><LF>",
        "C:   [message: 3 lines, 47 octets]", "C:   .", "C:   quit",
    ] + queued + ["S:   221 2.0.0 Bye"]
    assert queued[0].startswith("S:   250 2.0.0 Ok: queued as")
    [at] = [n for n, line in enumerate(lines) if "queued as" in line]
    assert "the message is accepted" in lines[at + 1]
    assert "secret plans" not in "\n".join(lines) and "private body" not in "\n".join(lines)
    deadline = time.monotonic() + 10
    while "queued as" not in hub.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "private body" not in hub.log and "secret plans" not in hub.log
    assert "[message: 3 lines, 47 octets]" in hub.log


def test_after_a_refused_data_what_followed_is_shown_as_the_commands_it_was_read_as(start_hub):
    hub = start_hub()
    answer = paste(hub, PASTED.replace(b"alice@localhost", b"nobody@localhost"))
    assert b"503 5.5.1" in answer
    shown = said(transcript_lines(hub))
    assert "C:   Subject: secret plans" in shown and "C:   [message" not in "\n".join(shown)
    assert shown.index("C:   Subject: secret plans") > shown.index("S:   503 5.5.1 Error: need RCPT command")


def test_two_messages_pasted_in_one_go_are_each_shown_as_their_count(start_hub):
    hub = start_hub()
    second = b"mail from:<s@example.org>\r\nrcpt to:<alice@localhost>\r\ndata\r\nSubject: second secret\r\n\r\nanother private line\r\n.\r\nquit\r\n"
    answer = paste(hub, PASTED.replace(b"quit\r\n", b"") + second)
    assert answer.count(b"queued as") == 2
    lines = transcript_lines(hub)
    shown = said(lines)
    assert "secret plans" not in "\n".join(lines) and "second secret" not in "\n".join(lines)
    assert [line for line in shown if line.startswith("C:   [message")] == ["C:   [message: 3 lines, 47 octets]", "C:   [message: 3 lines, 48 octets]"]
    # Each message after its own 354.
    go_aheads = [n for n, line in enumerate(shown) if line.startswith("S:   354")]
    counts = [n for n, line in enumerate(shown) if line.startswith("C:   [message")]
    assert len(go_aheads) == 2 and go_aheads[0] < counts[0] and go_aheads[1] < counts[1]
    # Each 250 that took a message is explained as that, and the replies
    # between them as the answers to their own commands.
    queued = [n for n, line in enumerate(lines) if "queued as" in line]
    assert len(queued) == 2 and all("the message is accepted" in lines[n + 1] for n in queued)
    [second_mail] = [n for n, line in enumerate(lines) if "S:   250 2.1.0 Ok" in line][1:]
    assert "sender accepted" in lines[second_mail + 1]
