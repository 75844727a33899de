"""
Grammar-driven fuzzing of the real hub's line protocols (issue 8 item 18
for SMTP, POP3 and FTP): every command each accepts, with every argument
shape cut short, repeated, wrong-typed, empty, huge, with control bytes and
with octets that are not UTF-8. Each reply must be a well-formed reply of
the protocol, with no Python repr and no raw control character in it; the
session must go on (NOOP answered); the hub's log must hold no traceback.
Each run is bounded in time (a few seconds) and seeded, so it repeats.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time

import pytest

from tests.rawclient import LineReader

SECONDS = 6  # per protocol: the run stops there even if cases remain

# A Python repr or an exception's name leaking into a reply (issue 8 item 9).
REPR = re.compile(rb"b'|b\"|\bNone\b|Traceback|Error\(|Exception|\\x[0-9a-f]{2}")


def shapes(example: bytes) -> list[bytes]:
    """The argument shapes tried for a command whose valid argument is C{example}."""
    numeric = example.isdigit()
    out = [
        example,
        b"",
        example[: max(1, len(example) // 2)],
        example[:1],
        example + b" " + example,
        example + example,
        b"word" if numeric else b"12345",
        b"-1",
        b"99999999999999999999999",
        b"A" * 1000,
        b"B" * 5000,  # over every line limit: "line too long"
        example + b"\x00",
        b"\x08" + example,
        example + b"\x1b[2J",
        b"\x7f",
        b"\xff\xfe" + example,
        example + b"\rx",
        b"  " + example + b"\t",
        b"<>",
        b":",
        b"=",
        b"*",
    ]
    return list(dict.fromkeys(out))


class Session(LineReader):
    """A plain socket that reads replies line by line."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\r\n")

    def close(self) -> None:
        self.sock.close()


def check_line(line: bytes, what: bytes) -> None:
    assert not REPR.search(line), (what, line)
    assert all(b >= 0x20 and b != 0x7F for b in line), (what, line)


# -- SMTP -------------------------------------------------------------------------

SMTP_GRAMMAR = {
    b"HELO": b"client.example",
    b"EHLO": b"client.example",
    b"MAIL": b"FROM:<judy@example.org> SIZE=100 BODY=8BITMIME",
    b"RCPT": b"TO:<alice@localhost>",
    b"DATA": b"",
    b"RSET": b"",
    b"NOOP": b"",
    b"VRFY": b"alice",
    b"EXPN": b"staff",
    b"HELP": b"MAIL",
    b"AUTH": b"CRAM-MD5",
    b"STARTTLS": b"",
    b"QUIT": b"",
    b"FROB": b"x",
}


def smtp_reply(s: Session, what: bytes) -> list[bytes]:
    lines = []
    while True:
        line = s.line()
        check_line(line, what)
        assert re.match(rb"^\d{3}[ -]", line), (what, line)
        lines.append(line)
        if line[3:4] == b" ":
            return lines


def test_smtp_grammar_fuzz_gets_a_reply_for_everything_and_the_session_goes_on(hub):
    rng = random.Random(5321)
    cases = [(verb, arg) for verb, example in SMTP_GRAMMAR.items() for arg in shapes(example)]
    rng.shuffle(cases)
    port = hub.ports["smtp"]

    def fresh():
        s = Session(port)
        assert smtp_reply(s, b"banner")[0].startswith(b"220")
        return s

    s = fresh()
    done = 0
    deadline = time.monotonic() + SECONDS
    for verb, arg in cases:
        if time.monotonic() > deadline:
            break
        line = verb + (b" " + arg if arg else b"")
        s.send(line)
        first = smtp_reply(s, line)[-1]
        if first.startswith(b"354"):  # DATA was accepted: end the message
            s.send(b".")
            smtp_reply(s, line)
        elif first.startswith(b"334"):  # a SASL exchange: cancel it
            s.send(b"*")
            assert smtp_reply(s, line)[-1].startswith(b"501")
        elif first[:3] in (b"221", b"220"):  # QUIT, or STARTTLS (TLS not spoken here)
            s.close()
            s = fresh()
            continue
        s.send(b"NOOP")
        assert smtp_reply(s, line + b" then NOOP") == [b"250 2.0.0 Ok"], line
        done += 1
    s.close()
    assert done >= 40, f"only {done} cases in {SECONDS} s"
    assert "Traceback" not in hub.log and "Unhandled" not in hub.log


# -- POP3 --------------------------------------------------------------------------

POP3_GRAMMAR = {
    b"CAPA": b"",
    b"USER": b"bob",
    b"PASS": b"hungry",
    b"APOP": b"bob 0123456789abcdef0123456789abcdef",
    b"STLS": b"",
    b"AUTH": b"CRAM-MD5",
    b"UTF8": b"",
    b"STAT": b"",
    b"LIST": b"1",
    b"RETR": b"1",
    b"TOP": b"1 2",
    b"UIDL": b"1",
    b"DELE": b"1",
    b"RSET": b"",
    b"NOOP": b"",
    b"QUIT": b"",
    b"FROB": b"x",
}


def pop3_reply(s: Session, verb: bytes, arg: bytes, what: bytes) -> bytes:
    first = s.line()
    check_line(first, what)
    assert first.startswith((b"+OK", b"-ERR", b"+ ")), (what, first)
    # Which +OK replies have a body (RFC 1939, RFC 2449, RFC 5034).
    rest = arg.split(None, 1)
    multi = first.startswith(b"+OK") and (
        verb in (b"CAPA", b"RETR", b"TOP") or (verb in (b"LIST", b"UIDL", b"AUTH") and not arg.strip())
    )
    if verb == b"AUTH" and rest:
        multi = False
    if multi:
        while s.line() != b".":
            pass
    return first


def pop3_fuzz(hub, logged_in: bool) -> int:
    rng = random.Random(1939 + logged_in)
    grammar = dict(POP3_GRAMMAR)
    if not logged_in:
        # A wrong password is slowed by the throttle; logins are fuzzed
        # through their malformed shapes after login instead.
        del grammar[b"PASS"], grammar[b"APOP"]
    cases = [(verb, arg) for verb, example in grammar.items() for arg in shapes(example)]
    rng.shuffle(cases)
    port = hub.ports["pop3"]
    new = os.path.join(hub.maildir("bob@localhost"), "new")
    os.makedirs(new, exist_ok=True)

    def fresh():
        for i in range(2):
            path = os.path.join(new, f"fuzz{time.time_ns()}.{i}.test")
            with open(path, "wb") as f:
                f.write(b"Subject: fuzz\r\n\r\n.line one\r\nline two\r\n")
        s = Session(port)
        assert s.line().startswith(b"+OK")
        if logged_in:
            s.send(b"USER bob")
            assert s.line().startswith(b"+OK")
            s.send(b"PASS hungry")
            assert s.line().startswith(b"+OK"), "login"
        return s

    s = fresh()
    done = 0
    deadline = time.monotonic() + SECONDS
    for verb, arg in cases:
        if time.monotonic() > deadline:
            break
        line = verb + (b" " + arg if arg else b"")
        s.send(line)
        first = pop3_reply(s, verb, arg, line)
        if first.startswith(b"+ "):  # a SASL exchange: cancel it
            s.send(b"*")
            assert s.line().startswith(b"-ERR"), line
        elif verb in (b"QUIT", b"STLS") and first.startswith(b"+OK"):
            s.close()
            s = fresh()
            continue
        elif verb == b"USER" and first.startswith(b"+OK"):
            pass  # a PASS may follow; NOOP is still fine before it
        s.send(b"NOOP")
        assert s.line() == b"+OK", line
        done += 1
    s.close()
    return done


@pytest.mark.parametrize("logged_in", [False, True], ids=["authorization", "transaction"])
def test_pop3_grammar_fuzz_gets_ok_or_err_for_everything_and_the_session_goes_on(hub, logged_in):
    done = pop3_fuzz(hub, logged_in)
    assert done >= 40, f"only {done} cases in {SECONDS} s"
    assert "Traceback" not in hub.log and "Unhandled" not in hub.log


# -- FTP ---------------------------------------------------------------------------

FTP_GRAMMAR = {
    b"USER": b"alice",
    b"PASS": b"secret",
    b"ACCT": b"x",
    b"CWD": b"folder",
    b"XCWD": b"folder",
    b"CDUP": b"",
    b"PWD": b"",
    b"MKD": b"newdir",
    b"RMD": b"newdir",
    b"DELE": b"file.txt",
    b"RNFR": b"file.txt",
    b"RNTO": b"other.txt",
    b"SIZE": b"file.txt",
    b"MDTM": b"file.txt",
    b"TYPE": b"I",
    b"MODE": b"S",
    b"STRU": b"F",
    b"REST": b"5",
    b"RETR": b"file.txt",
    b"STOR": b"upload.txt",
    b"APPE": b"upload.txt",
    b"STOU": b"upload.txt",
    b"LIST": b"-la",
    b"NLST": b"folder",
    b"MLSD": b"folder",
    b"MLST": b"file.txt",
    b"STAT": b"folder",
    b"PORT": b"127,0,0,1,4,1",
    b"EPRT": b"|1|127.0.0.1|1025|",
    b"PASV": b"",
    b"EPSV": b"1",
    b"ABOR": b"",
    b"FEAT": b"",
    b"OPTS": b"UTF8 ON",
    b"HELP": b"RETR",
    b"SYST": b"",
    b"NOOP": b"",
    b"AUTH": b"TLS",
    b"PBSZ": b"0",
    b"PROT": b"P",
    b"CCC": b"",
    b"QUIT": b"",
    b"FROB": b"x",
}


def ftp_reply(s: Session, what: bytes) -> bytes:
    first = s.line()
    check_line(first, what)
    assert re.match(rb"^\d{3}[ -]", first), (what, first)
    line = first
    while not (line[:3] == first[:3] and line[3:4] == b" "):
        line = s.line()
        check_line(line, what)
    return line


def test_ftp_grammar_fuzz_gets_a_reply_for_everything_and_the_session_goes_on(start_hub):
    hub = start_hub("--ftp-data-timeout", "1")
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    rng = random.Random(959)
    cases = [(verb, arg) for verb, example in FTP_GRAMMAR.items() for arg in shapes(example)]
    rng.shuffle(cases)
    port = hub.ports["ftp"]

    def login(s):
        s.send(b"USER alice")
        assert ftp_reply(s, b"USER").startswith(b"331")
        s.send(b"PASS secret")
        assert ftp_reply(s, b"PASS").startswith(b"230")

    def fresh():
        os.makedirs(os.path.join(home, "folder"), exist_ok=True)
        with open(os.path.join(home, "file.txt"), "wb") as f:
            f.write(b"0123456789\r\n")
        s = Session(port)
        assert ftp_reply(s, b"banner").startswith(b"220")
        login(s)
        return s

    s = fresh()
    done = 0
    deadline = time.monotonic() + SECONDS
    for verb, arg in cases:
        if time.monotonic() > deadline:
            break
        line = verb + (b" " + arg if arg else b"")
        s.send(line)
        last = ftp_reply(s, line)
        if last[:1] == b"1":  # a transfer began: its end follows (no data connection comes)
            last = ftp_reply(s, line)
        if last[:3] in (b"221", b"234", b"421"):  # QUIT, AUTH TLS: start again
            s.close()
            s = fresh()
            continue
        if last[:3] in (b"227", b"229", b"200") and verb in (b"PASV", b"EPSV", b"PORT", b"EPRT"):
            s.send(b"ABOR")  # drop the data channel that was set up
            assert ftp_reply(s, b"ABOR").startswith(b"2")
        if last[:3] == b"331":  # USER: log in again as alice
            login(s)
        s.send(b"NOOP")
        # After a RNFR that worked, anything but RNTO cancels the rename.
        expected = b"503" if verb == b"RNFR" and last[:3] == b"350" else b"200"
        assert ftp_reply(s, line + b" then NOOP").startswith(expected), line
        done += 1
    s.close()
    assert done >= 40, f"only {done} cases in {SECONDS} s"
    assert "Traceback" not in hub.log and "Unhandled" not in hub.log
