"""
What a new user found trying the hub by hand (issue 8's new-user pass, the
items left open): each test drives the real hub as that user did.
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import smtplib
import socket
import time

# Every text the OS has for an errno: none may reach an FTP reply.
OS_TEXTS = {os.strerror(n) for n in range(1, 134)} - {"Unknown error %d" % n for n in range(1, 134)}


def test_quoted_local_part_reaches_the_account(hub):
    # RFC 5321 §4.1.2: "bob"@localhost is the Quoted-string form of bob.
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
        s.ehlo("client.test")
        code, _ = s.mail("alice@localhost")
        assert code == 250
        code, text = s.rcpt('"bob"@localhost')
        assert code == 250, text
        code, _ = s.data(b"Subject: quoted\r\n\r\nhello bob\r\n")
        assert code == 250
    new = os.path.join(hub.maildir("bob@localhost"), "new")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.listdir(new):
        time.sleep(0.05)
    [name] = os.listdir(new)
    assert b"hello bob" in open(os.path.join(new, name), "rb").read()


def ftp_replies(hub, commands: list[str]) -> list[str]:
    f = ftplib.FTP(timeout=20)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    replies = []
    for command in commands:
        try:
            replies.append(f.sendcmd(command))
        except ftplib.Error as e:
            replies.append(str(e))
    f.quit()
    return replies


def test_ftp_errors_never_show_the_operating_systems_text(hub):
    replies = ftp_replies(
        hub,
        [
            "MKD top",
            "MKD top/inner",
            "RNFR top",
            "RNTO top/inner/moved",  # a folder into itself: EINVAL
            "MKD " + "n" * 300,  # ENAMETOOLONG
            "RNFR top",
            "RNTO " + "m" * 300,
            "RMD top",  # not empty
            "DELE top",
            "CWD " + "x" * 300,
            "SIZE " + "s" * 300,
        ],
    )
    assert replies[3].startswith("550 RNTO") and "folder cannot go inside itself" in replies[3]
    assert replies[4].startswith("550") and "name is too long" in replies[4]
    for reply in replies:
        for text in OS_TEXTS:
            assert text not in reply, (reply, text)
        assert not re.search(r"Errno|Error\(|b'", reply), reply


def talk(hub, listener: str, lines: list[bytes]) -> list[bytes]:
    """Send each line and read what comes back before the next."""
    s = socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=20)
    s.settimeout(20)
    buf = s.recv(4096)
    answers = []
    for line in lines:
        s.sendall(line + b"\r\n")
        s.settimeout(2)
        got = b""
        try:
            while not got.endswith(b"\r\n") or (listener == "imap" and not re.search(rb"(^|\n)\w+ (OK|NO|BAD)", got)):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except socket.timeout:
            pass
        answers.append(got)
    s.close()
    assert buf
    return answers


def test_commands_that_take_no_argument_refuse_one_with_a_syntax_error(hub):
    pop = talk(hub, "pop3", [b"STLS junk", b"CAPA x", b"NOOP x", b"QUIT now", b"CAPA"])
    assert [a[:4] for a in pop[:4]] == [b"-ERR"] * 4
    assert b"STLS takes no argument" in pop[0]
    assert pop[4].startswith(b"+OK capability list")  # the session went on, still in plain text
    smtp = talk(hub, "smtp", [b"EHLO client.test", b"STARTTLS junk", b"RSET x", b"QUIT later", b"NOOP"])
    assert smtp[1].startswith(b"501 5.5.4 Syntax: STARTTLS")
    assert smtp[2].startswith(b"501 5.5.4 Syntax: RSET")
    assert smtp[3].startswith(b"501 5.5.4 Syntax: QUIT")
    assert smtp[4].startswith(b"250")
    imap = talk(hub, "imap", [b"a STARTTLS x", b"b CAPABILITY junk", b"c NOOP"])
    assert imap[0].startswith(b"a BAD") and imap[1].startswith(b"b BAD")
    assert b"c OK" in imap[2]


_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>|0x[0-9a-f]{8,}")


def test_start_and_shutdown_log_lines_have_no_object_reprs(start_hub):
    hub = start_hub()
    hub.stop()
    lines = hub.log.splitlines()
    assert any("smtp listening on" in line for line in lines)
    assert [line for line in lines if _REPR.search(line)] == []


def test_two_sigterms_in_a_row_stop_the_hub_without_a_traceback(start_hub):
    # A relay attempt to a peer that never answers keeps the shutdown
    # waiting (the queue's grace time): the second SIGTERM comes then.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    hub = start_hub("--domain", "a.test", "--mx-override", f"b.test=127.0.0.1:{silent.getsockname()[1]}", users=["alice@a.test:secret"])
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as client:
        client.login("alice@a.test", "secret")
        client.sendmail("alice@a.test", ["bob@b.test"], b"Subject: x\r\n\r\nwaiting\r\n")
    pid = hub.pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "waiting up to" not in hub.log and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "waiting up to" in hub.log
    os.kill(pid, signal.SIGTERM)
    hub.process.wait(30)
    code = hub.stop()
    silent.close()
    assert code in (0, -signal.SIGTERM)
    assert "ReactorNotRunning" not in hub.log
    assert "Traceback" not in hub.log
    assert "Received SIGTERM, shutting down." in hub.log
