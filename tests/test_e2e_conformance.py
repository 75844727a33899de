"""
Conformance found by speaking the same bytes to the hub and to the peers
on the machine (Dovecot, Postfix, pyftpdlib) and reading the RFCs where
they differ: each test types the session over a raw socket to the real hub.
"""

from __future__ import annotations

import os
import socket
import time

from tests.test_e2e_imap import Raw
from tests.test_e2e_lines import Typist, ftp_user  # noqa: F401  (fixture)


def _passive(t: Typist) -> socket.socket:
    reply = t.ask(b"EPSV")
    assert reply.startswith(b"229"), reply
    port = int(reply.split(b"|||")[1].split(b"|")[0])
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def test_ftp_restart_marker_in_type_a_is_refused_not_taken_as_a_file_offset(ftp_user):
    # RFC 3659 §5.1: the marker counts octets of the data stream. In TYPE A
    # "line1\nline2\n" goes out as "line1\r\nline2\r\n": a client that got
    # the first 7 octets ("line1\r\n") resumes with REST 7 and must get
    # "line2\r\n"; taken as a file offset the hub sent "ine2\r\n".
    t, home = ftp_user
    with open(os.path.join(home, "lines.txt"), "wb") as f:
        f.write(b"line1\nline2\n")
    assert t.ask(b"TYPE A").startswith(b"200")
    for verb in (b"RETR", b"STOR"):
        data = _passive(t)
        assert t.ask(b"REST 7").startswith(b"350")
        reply = t.ask(verb + b" lines.txt")
        assert reply.startswith(b"554 " + verb + b" lines.txt: restart point 7 refused in TYPE A"), reply
        data.close()
    assert open(os.path.join(home, "lines.txt"), "rb").read() == b"line1\nline2\n"
    # The marker is used up; TYPE I takes restart points as before.
    assert t.ask(b"TYPE I").startswith(b"200")
    data = _passive(t)
    assert t.ask(b"REST 6").startswith(b"350")
    assert t.ask(b"RETR lines.txt").startswith((b"150", b"125"))
    got = b""
    while chunk := data.recv(65536):
        got += chunk
    assert got == b"line2\n"
    assert t.reply().startswith(b"226")


class _Imap(Raw):
    """An IMAP session typed over a raw socket; C{say} returns the lines up to one that starts with C{until}."""

    def __init__(self, hub):
        Raw.__init__(self, hub.ports["imap"], timeout=20)

    def say(self, line: bytes, until: bytes | tuple[bytes, ...]) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        lines = [self.line()]
        while not lines[-1].startswith(until):
            lines.append(self.line())
        return lines


def test_imap_tag_with_an_atom_special_is_answered_untagged(hub):
    # RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">, and ASTRING-CHAR
    # has none of ( ) { % * " \ . Such a "tag" cannot be echoed as one.
    c = _Imap(hub)
    for tag in (b"{4}", b'a"', b"a(b", b"a)", b"a%", b"a*b", b"a\\b", b"a+"):
        lines = c.say(tag + b" NOOP", (b"* BAD", tag + b" "))
        assert lines == [lines[-1]] and lines[0].startswith(b"* BAD bad tag"), (tag, lines)
    # "]" is an ASTRING-CHAR (resp-specials): a tag may hold it.
    assert c.say(b"a] NOOP", b"a] ")[-1].startswith(b"a] OK")


def test_auth_initial_response_to_cram_md5_is_refused_in_smtp_and_pop3(hub):
    # RFC 4954 §4 (SMTP, 501) and RFC 5034 §4 (POP3, -ERR): an initial
    # response to a mechanism the server begins is refused. SMTP ignored it
    # and sent the challenge; POP3 called CRAM-MD5 "unsupported" while
    # offering it. IMAP already answered BAD (RFC 4959 §3).
    smtp = Typist(hub, "smtp")
    assert b"CRAM-MD5" in smtp.ask(b"EHLO client.test")
    reply = smtp.ask(b"AUTH CRAM-MD5 eHl6")
    assert reply.startswith(b"501 5.5.4 "), reply
    assert smtp.ask(b"NOOP").startswith(b"250")  # not in the middle of an exchange
    pop3 = Typist(hub, "pop3")
    reply = pop3.ask(b"AUTH CRAM-MD5 eHl6")
    assert reply.startswith(b"-ERR CRAM-MD5 starts with the server's challenge"), reply
    assert pop3.ask(b"NOOP").startswith(b"+OK")


def test_pop3_auth_initial_response_equals_sign_is_an_empty_response(hub):
    # RFC 5034 §4: "=" stands for a zero-length initial response; for PLAIN
    # that is a malformed message (RFC 4616), not bad base64.
    pop3 = Typist(hub, "pop3")
    reply = pop3.ask(b"AUTH PLAIN =")
    assert reply.startswith(b"-ERR [AUTH] AUTH PLAIN wants authzid NUL user NUL password"), reply
    assert pop3.ask(b"USER alice").startswith(b"+OK")
    assert pop3.ask(b"PASS secret").startswith(b"+OK")


def test_ftp_missing_arguments_are_501(ftp_user):
    # RFC 959 §4.2: 501 is a syntax error in the arguments (none given is
    # one); 504 is a parameter not implemented. They were "504 TYPE : use
    # TYPE A or TYPE I." and the like.
    t, home = ftp_user
    for verb in (b"TYPE", b"MODE", b"STRU", b"AUTH", b"SITE"):
        reply = t.ask(verb)
        assert reply.startswith(b"501 " + verb + b" needs"), reply


def test_ftp_xcup_is_cdup(ftp_user):
    # RFC 1123 §4.1.3.1: XCUP is CDUP (HELP lists it; it was "500 'CUP'").
    t, home = ftp_user
    assert t.ask(b"CWD folder").startswith(b"250")
    reply = t.ask(b"XCUP")
    assert reply.startswith(b"250"), reply
    assert t.ask(b"PWD").startswith(b'257 "/"')


def test_ftp_prot_needs_pbsz_first(hub):
    # RFC 2228 §3: PROT "must be preceded by a successful protection buffer
    # size negotiation"; RFC 4217 §9: PBSZ 0, then PROT P. PROT P was taken
    # without it.
    import ssl

    s = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=20)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"AUTH TLS\r\n")
    assert f.readline().startswith(b"234")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tls = context.wrap_socket(s, server_hostname="localhost")
    f = tls.makefile("rb")

    def ask(line: bytes) -> bytes:
        tls.sendall(line + b"\r\n")
        return f.readline().rstrip(b"\r\n")

    assert ask(b"USER alice").startswith(b"331")
    assert ask(b"PASS secret").startswith(b"230")
    reply = ask(b"PROT P")
    assert reply == b"503 PROT needs PBSZ first: PBSZ 0, then PROT P.", reply
    assert ask(b"PROT").startswith(b"501 PROT needs a level")
    assert ask(b"PBSZ 0") == b"200 PBSZ=0"
    assert ask(b"PROT P").startswith(b"200")
    tls.close()


def test_imap_starttls_once_tls_is_on_is_bad(hub):
    # RFC 9051 §6.2.1: "BAD - STARTTLS received after a successful TLS
    # negotiation"; NO is for a server that cannot start TLS. It was NO,
    # after STARTTLS and on the implicit-TLS port alike.
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    s = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=20)
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    s.sendall(b"a STARTTLS\r\n")
    assert f.readline().startswith(b"a OK")
    tls = context.wrap_socket(s, server_hostname="localhost")
    f = tls.makefile("rb")
    tls.sendall(b"b STARTTLS\r\n")
    assert f.readline().startswith(b"b BAD STARTTLS not allowed now: TLS is already in use")
    tls.sendall(b"c NOOP\r\n")
    assert f.readline().startswith(b"c OK")
    tls.close()
    implicit = context.wrap_socket(socket.create_connection(("127.0.0.1", hub.ports["imaps"]), timeout=20), server_hostname="localhost")
    f = implicit.makefile("rb")
    assert f.readline().startswith(b"* OK")
    implicit.sendall(b"a STARTTLS\r\n")
    assert f.readline().startswith(b"a BAD STARTTLS not allowed now")
    implicit.close()


def test_imap_fetch_of_one_unparenthesized_section_with_spaces(hub):
    # RFC 9051 §6.4.5: FETCH takes one fetch-att without parentheses, and
    # BODY[HEADER.FIELDS (SUBJECT FROM)] is one. It was cut at its first
    # space and refused "BAD FETCH modifiers go in parentheses" (Dovecot
    # answers it), with or without a CHANGEDSINCE modifier after it.
    import smtplib

    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=20) as s:
        s.sendmail("a@example.test", ["alice@localhost"], b"From: a@example.test\r\nSubject: fields\r\n\r\nbody\r\n")
    c = _Imap(hub)
    assert c.say(b"a LOGIN alice secret", b"a ")[-1].startswith(b"a OK")
    for _ in range(50):
        lines = c.say(b"s EXAMINE INBOX", b"s ")
        if b"* 1 EXISTS" in lines:
            break
        time.sleep(0.1)
    lines = c.say(b"f FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]", b"f ")
    assert lines[-1].startswith(b"f OK"), lines
    assert lines[0] == b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {41}", lines
    assert lines[1:3] == [b"From: a@example.test", b"Subject: fields"], lines
    lines = c.say(b"g UID FETCH 1:* BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT)] (CHANGEDSINCE 1)", b"g ")
    assert lines[-1].startswith(b"g OK"), lines
    assert c.say(b"h FETCH 1 BODY.PEEK[HEADER.FIELDS ()]", b"h ")[-1].startswith(b"h BAD")


def test_imap_zero_length_literal_as_the_last_argument_waits_for_its_line(hub):
    # RFC 9051 §4.3: the client sends a synchronizing literal's octets and
    # the rest of the command only after "+". "a LOGIN alice {0}" was
    # answered at once, with no "+", and the CRLF that ends the line was
    # then read as an empty command ("* BAD empty command line").
    c = _Imap(hub)
    c.sock.sendall(b"a LOGIN alice {0}\r\n")
    assert c.line().startswith(b"+ ")
    lines = c.say(b"", (b"a ", b"* BAD"))
    assert lines[-1].startswith(b"a NO"), lines
    assert c.say(b"b NOOP", (b"b ", b"* BAD")) == [b"b OK NOOP completed"]
    # The same with LITERAL+ (no "+"), and with the literal not last.
    c.sock.sendall(b"c LOGIN alice {0+}\r\n\r\n")
    assert c.line().startswith(b"c NO")
    assert c.say(b"d NOOP", (b"d ", b"* BAD")) == [b"d OK NOOP completed"]
    c.sock.sendall(b"e LOGIN {0}\r\n")
    assert c.line().startswith(b"+ ")
    assert c.say(b" secret", (b"e ", b"* BAD"))[-1].startswith(b"e NO")


def test_telnet_commands_inside_a_mail_command_line_do_not_rewrite_names(hub):
    # SMTP, POP3 and IMAP are not Telnet: only the IAC sequences a telnet
    # client's Ctrl-C sends in front of a line are no part of it. An IAC
    # inside the line was taken out with the octet after it, so
    # "USER al<IAC NOP>ice" logged in as alice and "RCPT TO:<bo<IAC NOP>b@..."
    # was accepted for bob: a name no filter or log on the way had seen.
    nop = b"\xff\xf1"
    smtp = Typist(hub, "smtp")
    assert smtp.ask(b"EHLO client.test").startswith(b"250")
    assert smtp.ask(b"MAIL FROM:<a@example.test>").startswith(b"250")
    reply = smtp.ask(b"RCPT TO:<bo" + nop + b"b@localhost>")
    assert reply.startswith(b"500 5.5.2"), reply
    assert smtp.ask(b"\xff\xf4\xff\xfd\x06RCPT TO:<bob@localhost>").startswith(b"250")  # Ctrl-C in front: still fine
    pop3 = Typist(hub, "pop3")
    pop3.ask(b"USER al" + nop + b"ice")
    reply = pop3.ask(b"PASS secret")
    assert reply.startswith(b"-ERR [AUTH]"), reply
    c = _Imap(hub)
    reply = c.say(b"a LOGIN al" + nop + b"ice secret", (b"a ", b"* BAD"))[-1]
    assert reply.startswith(b"a NO"), reply
