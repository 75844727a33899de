"""
A grammar-driven fuzzer for the IMAP listener (issue 8 item 18), bounded in
time: every command the server has a handler for, in each state it is
allowed in (and the others), with its arguments cut short, repeated,
emptied, made huge, wrong-typed and sent as literals. Each must get a
tagged OK/NO/BAD in plain words, the connection must go on, and the hub's
log must hold no traceback.
"""

from __future__ import annotations

import re
import socket
import time

from tests.rawclient import LineReader
from twisted_mailhub.imap.server import IMAPServer

# Valid arguments of each command; the fuzzer derives the broken ones.
GRAMMAR: dict[str, list[bytes]] = {
    "LOGIN": [b"alice", b"secret"],
    "AUTHENTICATE": [b"PLAIN"],
    "SELECT": [b"INBOX", b"(CONDSTORE)"],
    "EXAMINE": [b"INBOX", b"(QRESYNC (1 1 1:*))"],
    "CREATE": [b"Fz"],
    "DELETE": [b"Fz"],
    "RENAME": [b"Fz", b"Fy"],
    "SUBSCRIBE": [b"INBOX"],
    "UNSUBSCRIBE": [b"Fz"],
    "LIST": [b'""', b'"*"'],
    "LSUB": [b'""', b'"*"'],
    "STATUS": [b"INBOX", b"(MESSAGES UIDNEXT RECENT)"],
    "APPEND": [b"INBOX", b"(\\Seen)", b'"17-Jul-1996 02:44:25 -0700"', b"{3+}\r\nabc"],
    "FETCH": [b"1:*", b"(FLAGS MODSEQ BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>)", b"(CHANGEDSINCE 1)"],
    "STORE": [b"1", b"(UNCHANGEDSINCE 1)", b"+FLAGS", b"(\\Seen $Kw)"],
    "SEARCH": [b"RETURN", b"(MIN COUNT)", b"CHARSET", b"UTF-8", b"OR", b"SUBJECT", b"x", b"MODSEQ", b"1"],
    "SORT": [b"(REVERSE DATE SUBJECT)", b"UTF-8", b"YOUNGER", b"10"],
    "THREAD": [b"REFERENCES", b"UTF-8", b"ALL"],
    "COPY": [b"1", b"Trash"],
    "MOVE": [b"2", b"Trash"],
    "UID": [b"FETCH", b"1:*", b"(UID FLAGS)", b"(CHANGEDSINCE 1 VANISHED)"],
    "EXPUNGE": [],
    "CLOSE": [],
    "UNSELECT": [],
    "CHECK": [],
    "NOOP": [],
    "CAPABILITY": [],
    "NAMESPACE": [],
    "ID": [b"NIL"],
    "ENABLE": [b"QRESYNC", b"CONDSTORE"],
    "IDLE": [],
}
# Replacements for one argument: empty, NIL, brackets, numbers out of range,
# huge, literals (synchronizing, non-synchronizing, over the limit), 8-bit.
SHAPES = [
    b'""', b"NIL", b"(", b")", b"()", b"[", b"*", b"0", b"-1", b"4294967296", b"1:*:2",
    b"x" * 5000, b"{5+}\r\nhello", b"{5}\r\nhello", b"{99999999}", b"{-1}", b'"unterminated', b"\\Foo",
    b"\xff\xfe", b"(((((((((((", b"BODY[", b"<0.20",
]
# Commands after which the fuzzing connection is put back in its state.
STATE_CHANGERS = {"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "DELETE", "RENAME", "LOGIN", "AUTHENTICATE"}
NOT_SENT = {"LOGOUT", "STARTTLS"}  # they end the session or its plain text by design
PYTHON_TEXT = re.compile(rb"b'|b\"|\bNone\b|Error\b|Exception|Traceback|0x[0-9a-f]{6,}")
BUDGET = 60.0  # seconds for the whole run


def commands_of_server() -> list[str]:
    names = set()
    for attribute in dir(IMAPServer):
        state, _, command = attribute.partition("_")
        if state in ("unauth", "auth", "select") and command.isupper():
            names.add(command)
    return sorted(names - NOT_SENT)


def variants(args: list[bytes]) -> list[list[bytes]]:
    out = [list(args)]
    out += [args[:k] for k in range(len(args))]
    out.append(args + args)
    for i in range(len(args)):
        for shape in SHAPES:
            out.append(args[:i] + [shape] + args[i + 1 :])
        if len(args[i]) > 1:
            out.append(args[:i] + [args[i][: len(args[i]) // 2]])
    if not args:
        out += [[shape] for shape in SHAPES[:8]]
    return out


class Session(LineReader):
    def __init__(self, port: int, state: str):
        self.port = port
        self.state = state
        self.connect()

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.buf = b""
        self.line()
        if self.state in ("auth", "select"):
            self.exchange(b"L", b"LOGIN alice secret")
        if self.state == "select":
            self.exchange(b"S", b"SELECT INBOX")

    def exchange(self, tag: bytes, text: bytes) -> list[bytes]:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(b"+"):
                # a continuation: IDLE waits for DONE, AUTHENTICATE for a
                # response (cancelled with *), a literal for its octets
                if text.upper().startswith(b"IDLE"):
                    self.sock.sendall(b"DONE\r\n")
                elif text.upper().startswith(b"AUTHENTICATE"):
                    self.sock.sendall(b"*\r\n")
            if line.startswith(tag + b" "):
                return lines
            if line.startswith(b"* BYE"):
                return lines

    def close(self) -> None:
        self.sock.close()


def test_every_command_with_broken_arguments_gets_a_tagged_reply(hub):
    deadline = time.monotonic() + BUDGET
    sent = 0
    problems = []
    for state in ("unauth", "auth", "select"):
        session = Session(hub.ports["imap"], state)
        for command in commands_of_server():
            for args in variants(GRAMMAR.get(command, [b"x"])):
                if time.monotonic() > deadline:
                    break
                tag = b"f%d" % sent
                text = b" ".join([command.encode()] + args)
                owed = re.search(rb"\{(\d+)\+?\}\Z", text)
                if owed and int(owed.group(1)) <= 100:
                    # a literal cut off after its size: send the octets it
                    # promised (the server rightly waits for them)
                    text += b"\r\n" + b"y" * int(owed.group(1))
                try:
                    lines = session.exchange(tag, text)
                except (EOFError, ConnectionError, socket.timeout) as e:
                    problems.append((state, text[:80], f"no tagged reply: {type(e).__name__}"))
                    session = Session(hub.ports["imap"], state)
                    continue
                sent += 1
                last = lines[-1]
                if last.startswith(b"* BYE"):
                    # allowed only for what must end a session (a
                    # non-synchronizing literal over the limit)
                    if b"over the limit" not in last:
                        problems.append((state, text[:80], last))
                    session.close()
                    session = Session(hub.ports["imap"], state)
                    continue
                if not re.match(re.escape(tag) + rb" (OK|NO|BAD) \S", last):
                    problems.append((state, text[:80], last))
                for line in lines:
                    if line.startswith((tag, b"* BAD", b"* NO", b"* BYE")) and (PYTHON_TEXT.search(line) or re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", line)):
                        problems.append((state, text[:80], line))
                if command in STATE_CHANGERS and state != "unauth":
                    session.close()
                    session = Session(hub.ports["imap"], state)
        assert session.exchange(b"end", b"NOOP")[-1] == b"end OK NOOP completed"
        session.close()
    assert not problems, problems[:20]
    assert sent > 1500, f"only {sent} commands in {BUDGET} s"
    assert "Traceback" not in hub.log and "Unhandled Error" not in hub.log, hub.log[-3000:]
