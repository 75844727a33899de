"""
End-to-end: what the line engine's rules look like to a person with telnet
or nc, on every line protocol of the real hub (SMTP, POP3, FTP): time
limits, piped sessions, and how replies quote what was typed.
"""

from __future__ import annotations

import socket
import time

import pytest
from tests.rawclient import LineReader, piped, read_until_closed


def connect(hub, listener: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", hub.ports[listener]), timeout=20)
    s.settimeout(20)
    return s


# -- FTP time limits (issue 8 item 26) -----------------------------------------------


@pytest.fixture
def quick_ftp(start_hub):
    return start_hub("--ftp-login-timeout", "3", "--ftp-command-timeout", "1")


def test_ftp_client_that_never_logs_in_is_cut_off_at_the_login_timeout(quick_ftp):
    s = connect(quick_ftp, "ftp")
    start = time.monotonic()
    s.recv(1024)  # 220
    s.sendall(b"NOOP\r\n")
    out = read_until_closed(s)
    assert b"200" in out
    assert b"421 Not logged in after 3 seconds" in out
    assert 2.5 < time.monotonic() - start < 15


def test_ftp_client_trickling_a_command_line_is_cut_off(quick_ftp):
    s = connect(quick_ftp, "ftp")
    s.recv(1024)
    out = b""
    for byte in b"USER alice":
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.3)
    out = read_until_closed(s)
    assert b"421 A command line took over 1 seconds" in out
    assert b"331" not in out


def test_ftp_idle_timeout_defaults_to_300_seconds():
    from twisted_mailhub.ftp import component

    defaults = {row[0]: row[2] for row in component.option_parameters}
    assert defaults["ftp-idle-timeout"] == 300
    assert defaults["ftp-login-timeout"] == 300
    assert defaults["ftp-command-timeout"] == 120


# -- piped sessions ------------------------------------------------------------------


def test_ftp_session_piped_with_nc_is_answered_in_full(hub):
    out = piped(hub, "ftp", b"USER alice\r\nPASS secret\r\nPWD\r\nSYST\r\nQUIT")
    codes = [line[:3] for line in out.split(b"\r\n") if line]
    assert codes == [b"220", b"331", b"230", b"257", b"215", b"221"]


# -- a person typing: one reply at a time ----------------------------------------------


class Typist(LineReader):
    """A session typed over a plain socket; C{ask} returns one whole reply."""

    def __init__(self, hub, listener: str):
        self.listener = listener
        self.sock = connect(hub, listener)
        self.buf = b""
        self.banner = self.reply()

    def reply(self) -> bytes:
        """SMTP/FTP: up to the line 'NNN text'; POP3: one line."""
        lines = [self.line()]
        if self.listener.startswith("pop3"):
            return lines[0]
        while not (lines[-1][:3].isdigit() and lines[-1][3:4] in (b" ", b"")):
            lines.append(self.line())
        return b"\r\n".join(lines)

    def ask(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


def assert_no_raw_control(reply: bytes) -> None:
    for byte in reply.replace(b"\r\n", b""):
        assert byte >= 0x20 and byte != 0x7F, reply


# -- item 7: control characters are shown, never echoed raw --------------------------


def test_smtp_backspace_typed_in_an_address_is_shown_as_caret_h_and_named(hub):
    t = Typist(hub, "smtp")
    t.ask(b"HELO me")
    t.ask(b"MAIL FROM:<judy@example.org>")
    reply = t.ask(b"RCPT TO: <alicee\x08@localhost>")
    assert_no_raw_control(reply)
    assert reply == (
        b"553 5.1.3 <alicee^H@localhost>: Recipient address rejected: bad address syntax"
        b" (the line contained a control character: ^H, a backspace)"
    )
    reply = t.ask(b"FR\x1bOB")
    assert_no_raw_control(reply)
    assert b"'FR^[OB'" in reply and b"control character: ^[, an escape" in reply
    assert t.ask(b"EHLO x\x07y").startswith(b"501 5.5.4 Syntax: EHLO hostname (the line contained a control character: ^G, a bell)")
    assert t.ask(b"NOOP") == b"250 2.0.0 Ok"


def test_pop3_control_characters_in_input_are_shown_and_named(hub):
    t = Typist(hub, "pop3")
    reply = t.ask(b"user ali\x08ce")
    assert_no_raw_control(reply)
    assert reply == b"+OK now send PASS for ali^Hce (the line contained a control character: ^H, a backspace)"
    # Right after USER one word may be the password typed alone: not
    # shown, but its control character is named
    # (tests/test_password_after_user.py).
    reply = t.ask(b"st\x08at")
    assert reply == b"-ERR unknown command (not shown: after USER it may be the password) (the line contained a control character: ^H, a backspace); send PASS and the password"
    reply = t.ask(b"st\x08at")
    assert_no_raw_control(reply)
    assert reply.startswith(b"-ERR unknown command 'ST^HAT' (the line contained a control character: ^H, a backspace)")
    reply = t.ask(b"auth x\x7f")
    assert_no_raw_control(reply)
    assert b"'x^?'" in reply
    assert t.ask(b"noop") == b"+OK"


def test_ftp_control_characters_in_a_path_are_refused_and_shown(hub):
    t = Typist(hub, "ftp")
    t.ask(b"USER alice")
    assert t.ask(b"PASS secret").startswith(b"230")
    reply = t.ask(b"MKD do\x08cs")
    assert_no_raw_control(reply)
    assert reply == b"501 MKD: control characters are not allowed in arguments (the line contained a control character: ^H, a backspace)."
    reply = t.ask(b"FR\x08OB")
    assert_no_raw_control(reply)
    assert reply.startswith(b"500 'FR^HOB'")
    assert t.ask(b"NOOP").startswith(b"200")


# -- item 10: MAIL FROM / RCPT TO need their colon ---------------------------------------


def test_mail_and_rcpt_without_the_colon_get_the_right_syntax(hub):
    t = Typist(hub, "smtp")
    t.ask(b"HELO me")
    assert t.ask(b"MAIL FROM judy@jbc.edu") == b"501 5.5.4 Syntax: MAIL FROM:<address>"
    assert t.ask(b"mail from <judy@jbc.edu>") == b"501 5.5.4 Syntax: MAIL FROM:<address>"
    # What people type that is right: lowercase, a space after the colon, no brackets.
    assert t.ask(b"mail from: judy@jbc.edu") == b"250 2.1.0 Ok"
    assert t.ask(b"RCPT TO alice@localhost") == b"501 5.5.4 Syntax: RCPT TO:<address>"
    assert t.ask(b"rcpt to:alice@localhost").startswith(b"250 2.1.5")
    assert t.ask(b"RCPT TO: <bob@localhost>").startswith(b"250 2.1.5")


# -- item 19: SMTP transparency (RFC 5321 §4.5.2) ---------------------------------------


def test_data_lines_starting_with_a_period_lose_exactly_that_period(hub):
    import glob
    import os

    t = Typist(hub, "smtp")
    t.ask(b"HELO me")
    t.ask(b"MAIL FROM:<judy@example.org>")
    t.ask(b"RCPT TO:<alice@localhost>")
    assert t.ask(b"DATA").startswith(b"354")
    reply = t.ask(b"Subject: dots\r\n\r\n..stuffed\r\n.single\r\n...\r\nplain.\r\n.")
    assert reply.startswith(b"250 2.0.0 Ok: queued as")
    (path,) = glob.glob(os.path.join(hub.maildir("alice@localhost"), "new", "*"))
    stored = open(path, "rb").read()
    assert stored.endswith(b"\r\n\r\n.stuffed\r\nsingle\r\n..\r\nplain.\r\n"), stored


def test_relay_client_stuffing_and_server_unstuffing_round_trip():
    from twisted_mailhub.queue.client import dot_stuff
    from twisted_mailhub.smtp.server import dot_unstuff

    for message in (b".a\r\n..b\r\n.\r\n...\r\nc.\r\n", b"x\r\n", b".\r\n", b"..\r\n.x\r\n"):
        payload = dot_stuff(message)
        assert payload.endswith(b"\r\n.\r\n")
        # What the server keeps: after DATA's CRLF, before the final ".".
        assert dot_unstuff(b"\r\n" + payload[: -len(b".\r\n")]) == message


# -- FTP items 11, 22, 23, 24 --------------------------------------------------------------


@pytest.fixture
def ftp_user(hub):
    import os

    t = Typist(hub, "ftp")
    t.ask(b"USER alice")
    assert t.ask(b"PASS secret").startswith(b"230")
    home = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    with open(os.path.join(home, "ten.txt"), "wb") as f:
        f.write(b"0123456789")
    os.makedirs(os.path.join(home, "folder"), exist_ok=True)
    yield t, home
    t.close()


def test_ftp_errors_name_the_command_that_was_given(ftp_user):
    t, home = ftp_user
    assert t.ask(b"CWD nope") == b"550 CWD /nope: no such directory."
    assert t.ask(b"CWD ten.txt") == b"550 CWD /ten.txt: no such directory."
    assert t.ask(b"XCWD nope") == b"550 XCWD /nope: no such directory."
    assert t.ask(b"RMD ten.txt").startswith(b"550 RMD /ten.txt:")
    assert t.ask(b"PASV").startswith(b"227")
    assert t.ask(b"MLSD ten.txt") == b"550 MLSD ten.txt: not a directory."
    assert t.ask(b"RETR nope") == b"550 RETR /nope: no such file or directory."
    assert t.ask(b"RNFR folder").startswith(b"350")
    reply = t.ask(b"RNTO ten.txt")
    assert reply.startswith(b"550 RNTO ten.txt:"), reply
    assert b"rmd" not in reply.lower()


def test_ftp_mkd_doubles_a_quote_in_the_name(ftp_user):
    import os

    t, home = ftp_user
    assert t.ask(b'MKD a"b') == b'257 "/a""b" created.'
    assert os.path.isdir(os.path.join(home, 'a"b'))
    assert t.ask(b'CWD a"b').startswith(b"250")
    assert t.ask(b"PWD").startswith(b'257 "/a""b"')


def test_ftp_rest_past_the_end_is_554_for_retr_stor_and_appe(ftp_user):
    import os

    t, home = ftp_user
    assert t.ask(b"TYPE I").startswith(b"200")
    assert t.ask(b"PASV").startswith(b"227")
    assert t.ask(b"REST 100").startswith(b"350")
    assert t.ask(b"RETR ten.txt") == b"554 RETR ten.txt: restart point 100 is past the end of the file (10 bytes)."
    for verb in (b"STOR", b"APPE"):
        assert t.ask(b"REST 20").startswith(b"350")
        assert t.ask(verb + b" ten.txt") == b"554 " + verb + b" ten.txt: restart point 20 is past the end of the file (10 bytes)."
    assert open(os.path.join(home, "ten.txt"), "rb").read() == b"0123456789"
    # The restart marker is used up: a plain RETR still works afterwards.
    assert t.ask(b"NOOP").startswith(b"200")


def test_ftp_pathnames_with_cr_or_lf_are_refused(ftp_user):
    import os

    t, home = ftp_user
    reply = t.ask(b"MKD a\rb")
    assert reply.startswith(b"501 MKD: a pathname or argument may not contain CR or LF (RFC 959 \xc2\xa75.3.2)")
    assert_no_raw_control(reply)
    assert sorted(os.listdir(home)) == ["folder", "ten.txt"]
    assert t.ask(b"NOOP").startswith(b"200")


def test_pop3_a_control_character_in_a_command_line_is_a_syntax_error_that_names_it(hub):
    # RFC 1939 §3: printable words separated by spaces. Before, a CR was
    # taken as a separator ("LIST<CR>1" answered as LIST 1, "STAT<CR>" as
    # STAT) and "UIDL 1<CR>X" was refused without naming the CR; SMTP,
    # FTP and IMAP name it (Dovecot echoed the raw CR back).
    import poplib

    m = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    m.user("alice")
    m.pass_("secret")
    for line, char in ((b"STAT\r", b"^M, a carriage return"), (b"LIST\r1", b"^M, a carriage return"), (b"UIDL 1\rX", b"^M, a carriage return"), (b"TOP 1\t0", b"^I, a tab")):
        m._putline(line)
        reply = m._getline()[0]
        assert_no_raw_control(reply)
        assert reply.startswith(b"-ERR syntax: ") and reply.endswith(b"(the line contained a control character: " + char + b")"), (line, reply)
    assert m.stat()[0] == 0  # the session goes on
    m.quit()
