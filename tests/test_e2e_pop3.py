"""
End-to-end: the real C{twistd -n mailhub} spoken to with poplib, raw
sockets and curl; results checked in the Maildirs on disk.

Most tests share one hub and each uses an account of its own (the maildrop
lock and DELE would otherwise get in each other's way); tests that need
other options or a restart start their own.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage

import pytest

from tests.rawclient import LineReader, piped
from tests.hubprocess import HubProcess

USERS = ["bob:hungry"] + [f"user{i}:pw{i}" for i in range(14)] + [f"curl{i}:pw" for i in range(4)]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubProcess(str(tmp_path_factory.mktemp("pop3-hub")), users=USERS)
    h.start()
    yield h
    h.stop()


_serial = iter(range(10**6))


def put(hub: HubProcess, address: str, message: bytes) -> str:
    """Drop a message into the account's Maildir new/ the way an MDA does."""
    new = os.path.join(hub.maildir(address), "new")
    os.makedirs(new, exist_ok=True)
    # (The serial zero-padded: names sort in the order put, as the store
    # numbers messages of the same second by name: M9 after M10 would not.)
    name = f"{int(time.time())}.M{next(_serial):06d}P{os.getpid()}.test,S={len(message)}"
    with open(os.path.join(new, "tmp-" + name), "wb") as f:
        f.write(message)
    os.rename(os.path.join(new, "tmp-" + name), os.path.join(new, name))
    return name


def files(hub: HubProcess, address: str) -> list[str]:
    root = hub.maildir(address)
    return sorted(f for sub in ("new", "cur") for f in os.listdir(os.path.join(root, sub)))


def tls_context(hub: HubProcess) -> ssl.SSLContext:
    """Trust the hub's self-signed certificate, and check it (SAN 127.0.0.1)."""
    return ssl.create_default_context(cafile=os.path.join(hub.data_dir, "tls", "cert.pem"))


class Raw(LineReader):
    """A POP3 session typed the way a person does, over a plain socket."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.banner = self.line()

    def multi(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, text: bytes, end: bytes = b"\r\n") -> bytes:
        self.send(text + end)
        return self.line()

    def closed_by_server(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def test_textbook_session_typed_in_lowercase(hub):
    put(hub, "bob@localhost", b"From: alice@localhost\r\nSubject: lunch\r\n\r\nAt noon?\r\n")
    s = Raw(hub.ports["pop3"])
    assert re.fullmatch(rb"\+OK mail\.test POP3 ready <\d+\.[\d.a-f]+@mail\.test>", s.banner)
    assert s.cmd(b"user bob") == b"+OK now send PASS for bob"
    assert s.cmd(b"pass hungry") == b"+OK bob@localhost has 1 message (51 octets)"
    assert s.cmd(b"list") == b"+OK 1 message (51 octets)"
    assert s.multi() == [b"1 51"]
    assert s.cmd(b"retr 1") == b"+OK 51 octets"
    assert s.multi() == [b"From: alice@localhost", b"Subject: lunch", b"", b"At noon?"]
    assert s.cmd(b"quit") == b"+OK mail.test POP3 server signing off (0 messages deleted)"
    assert s.closed_by_server()


def test_session_typed_with_bare_lf_like_nc(hub):
    s = Raw(hub.ports["pop3"])
    assert s.cmd(b"user user0", b"\n") == b"+OK now send PASS for user0"
    assert s.cmd(b"pass pw0", b"\n").startswith(b"+OK user0@localhost has")
    assert s.cmd(b"frob", b"\n") == b"-ERR unknown command 'FROB'; try CAPA for the list of commands"
    assert s.cmd(b"noop", b"\n") == b"+OK"
    s.close()


def test_pipelined_commands_are_answered_in_order(hub):
    put(hub, "user5@localhost", b"Subject: p\r\n\r\npipelined\r\n")
    s = Raw(hub.ports["pop3"])
    # A wrong password first: its answer is held back by the throttle, and
    # nothing sent after it may overtake it.
    s.send(b"USER user5\r\nPASS wrong\r\nUSER user5\r\nPASS pw5\r\nSTAT\r\nRETR 1\r\nQUIT\r\n")
    assert [s.line() for _ in range(6)] == [
        b"+OK now send PASS for user5",
        b"-ERR [AUTH] authentication failed",
        b"+OK now send PASS for user5",
        b"+OK user5@localhost has 1 message (25 octets)",
        b"+OK 1 25",
        b"+OK 25 octets",
    ]
    assert s.multi() == [b"Subject: p", b"", b"pipelined"]
    assert s.line().startswith(b"+OK mail.test POP3 server signing off")
    assert s.closed_by_server()


def test_apop_login_computed_from_the_banner(hub):
    put(hub, "user1@localhost", b"Subject: a\r\n\r\nb\r\n")
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    try:
        assert p.apop("user1", "pw1").startswith(b"+OK user1@localhost has 1 message")
        assert p.retr(1)[1] == [b"Subject: a", b"", b"b"]
    finally:
        p.quit()


def mime_message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@localhost"
    msg["To"] = "user2@localhost"
    msg["Subject"] = "the binary attachment"
    msg.set_content("See attached.\n.\n..a line starting with dots\n")
    msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream", filename="blob.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_retr_is_byte_exact_for_multipart_mime_with_binary_attachment(hub):
    message = mime_message()
    assert b"\r\n.\r\n" in message and b"\r\n..a line" in message  # stuffing matters
    put(hub, "user2@localhost", message)
    s = Raw(hub.ports["pop3"])
    s.cmd(b"user user2")
    s.cmd(b"pass pw2")
    assert s.cmd(b"retr 1") == b"+OK %d octets" % len(message)
    # Read the raw multi-line reply and undo the byte-stuffing by hand.
    while not s.buf.endswith(b"\r\n.\r\n"):
        s.buf += s.sock.recv(65536)
    raw = s.buf[: -len(b".\r\n")]
    unstuffed = re.sub(rb"(?m)^\.", b"", raw)
    assert unstuffed == message
    s.close()


def test_files_another_program_wrote_with_bare_lf_or_cr_are_counted_and_sent_as_crlf(hub):
    # An MDA that stores LF line ends and counts them in S= (Courier), and
    # an old Mac mailer's bare CR: the sizes in the greeting, LIST and RETR
    # are the octets the client receives (RFC 1939 §11), and no CR or LF
    # stands alone on the wire.
    sent = [
        b"Subject: lf\n\nline one\n.dot line\nlast\n",
        b"Subject: cr\r\n\r\nbare\rCR here\r\n.dot\r\n",
        b"Subject: both\r\n\r\nmixed\nends\rhere\r\n",
    ]
    for message in sent:
        put(hub, "user12@localhost", message)
    wire = [re.sub(rb"\r\n|\r|\n", b"\r\n", m) for m in sent]
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    try:
        pop.user("user12")
        assert pop.pass_("pw12") == b"+OK user12@localhost has 3 messages (%d octets)" % sum(map(len, wire))
        resp, listing, _ = pop.list()
        assert listing == [b"%d %d" % (n, len(m)) for n, m in enumerate(wire, 1)]
        for n, m in enumerate(wire, 1):
            resp, lines, octets = pop.retr(n)
            assert resp == b"+OK %d octets" % len(m)
            assert octets == len(m)  # counted by poplib as received, unstuffed
            assert b"\r\n".join(lines) + b"\r\n" == m
    finally:
        pop.quit()
    s = Raw(hub.ports["pop3"])
    s.cmd(b"user user12")
    s.cmd(b"pass pw12")
    s.send(b"RETR 1\r\nRETR 2\r\nRETR 3\r\nQUIT\r\n")
    while not s.buf.endswith(b"signing off (0 messages deleted)\r\n"):
        s.buf += s.sock.recv(65536)
    assert s.buf.count(b"\r") == s.buf.count(b"\n") == s.buf.count(b"\r\n")
    s.close()


def test_many_pipelined_retrs_are_answered_in_order_each_whole(hub):
    bodies = [b"Subject: m%d\r\n\r\n%s\r\n" % (n, b"x" * (n * 37)) for n in range(1, 41)]
    for body in bodies:
        put(hub, "user13@localhost", body)
    s = Raw(hub.ports["pop3"])
    s.cmd(b"user user13")
    s.cmd(b"pass pw13")
    # One send: the hub answers the whole batch together (gathered).
    order = list(range(40, 0, -1))
    s.send(b"".join(b"RETR %d\r\n" % n for n in order) + b"NOOP\r\n")
    together = {}
    for n in order:
        status, body = s.line(), b"\r\n".join(s.multi()) + b"\r\n"
        assert status == b"+OK %d octets" % len(body)
        together[n] = body
    assert s.line() == b"+OK"
    assert sorted(together.values()) == sorted(bodies)
    # The same answers as one RETR at a time.
    for n in order:
        assert s.cmd(b"RETR %d" % n) == b"+OK %d octets" % len(together[n])
        assert b"\r\n".join(s.multi()) + b"\r\n" == together[n]
    s.close()


def big_message() -> bytes:
    lines = [b"Subject: big\r\n", b"\r\n"]
    lines += [b".%07d a line that starts with a dot, stuffed on the way out\r\n" % n for n in range(50_000)]
    return b"".join(lines)


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_large_message_streams_byte_exact(hub, listener):
    message = big_message()
    assert len(message) > 3 * 1024 * 1024  # over the one-write limit: sent in chunks
    address = "user11@localhost"
    put(hub, address, message)
    if listener == "pop3":
        p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    else:
        p = poplib.POP3_SSL("127.0.0.1", hub.ports["pop3s"], context=tls_context(hub))
    p.user("user11")
    p.pass_("pw11")
    resp, lines, octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == message
    assert p.noop() == b"+OK"  # the session goes on after the stream
    p.dele(1)
    p.quit()


def test_message_sent_over_smtp_arrives_whole_over_pop3(hub):
    message = mime_message()
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.sendmail("alice@localhost", ["user3@localhost"], message)
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("user3")
    p.pass_("pw3")
    got = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
    p.quit()
    # The hub adds its trace headers in front; the rest is byte for byte.
    assert got.startswith(b"Return-Path: <alice@localhost>\r\n")
    assert got.endswith(message)
    parsed = email.message_from_bytes(got, policy=email.policy.default)
    [attachment] = parsed.iter_attachments()
    assert attachment.get_content() == bytes(range(256)) * 40


def test_stls_then_login(hub):
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    assert {"STLS", "USER"} <= set(p.capa())
    p.stls(tls_context(hub))
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps
    assert "CELERITY" not in caps and "IMPLEMENTATION" in caps
    assert p.user("user4").startswith(b"+OK")
    assert p.pass_("pw4").startswith(b"+OK user4@localhost")
    p.quit()


def test_commands_pipelined_after_stls_are_discarded(hub):
    s = Raw(hub.ports["pop3"])
    # STLS and a login in one packet: the login must not run, in clear or in TLS.
    s.send(b"STLS\r\nUSER user5\r\nPASS pw5\r\n")
    assert s.line() == b"+OK begin TLS negotiation"
    assert s.buf == b""
    tls = tls_context(hub).wrap_socket(s.sock, server_hostname="127.0.0.1")
    tls.sendall(b"STAT\r\n")
    reply = tls.recv(4096)
    assert reply == b"-ERR log in first (USER and PASS, or APOP); STAT comes after login\r\n"
    tls.close()
    hub.wait_for_log(r"pop3#\d+ discarded 2 command lines pipelined after STLS")


def test_implicit_tls_on_pop3s(hub):
    put(hub, "user6@localhost", b"Subject: over tls\r\n\r\nsecret stuff\r\n")
    p = poplib.POP3_SSL("127.0.0.1", hub.ports["pop3s"], context=tls_context(hub))
    assert b"POP3 ready" in p.getwelcome()
    assert "STLS" not in p.capa()
    p.user("user6")
    p.pass_("pw6")
    assert p.retr(1)[1] == [b"Subject: over tls", b"", b"secret stuff"]
    p.quit()


def test_dele_is_undone_when_connection_drops(hub):
    name = put(hub, "user7@localhost", b"Subject: keep me\r\n\r\nx\r\n")
    s = Raw(hub.ports["pop3"])
    s.cmd(b"user user7")
    s.cmd(b"pass pw7")
    assert s.cmd(b"dele 1") == b"+OK message 1 deleted"
    s.close()  # no QUIT
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("user7")
    # The first session's lock goes when its connection is seen to drop.
    for _ in range(100):
        try:
            p.pass_("pw7")
            break
        except poplib.error_proto as e:
            assert b"[IN-USE]" in e.args[0]
            p.user("user7")
    assert p.stat() == (1, 23)
    p.quit()
    assert files(hub, "user7@localhost") == [name]


def test_dele_and_quit_remove_the_file_and_retr_marks_seen(hub):
    gone = put(hub, "user8@localhost", b"Subject: one\r\n\r\n1\r\n")
    kept = put(hub, "user8@localhost", b"Subject: two\r\n\r\n2\r\n")
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("user8")
    p.pass_("pw8")
    p.retr(1)
    p.retr(2)
    p.dele(1)
    assert p.quit() == b"+OK mail.test POP3 server signing off (1 message deleted)"
    root = hub.maildir("user8@localhost")
    assert os.listdir(os.path.join(root, "new")) == []
    assert os.listdir(os.path.join(root, "cur")) == [kept + ":2,S"]
    assert gone not in files(hub, "user8@localhost")


def test_imap_sees_what_pop3_retrieved_as_read(hub):
    import imaplib

    if "imap" not in hub.ports:
        pytest.skip("no IMAP listener in this hub")
    put(hub, "user10@localhost", b"Subject: read me\r\n\r\n1\r\n")
    put(hub, "user10@localhost", b"Subject: leave me\r\n\r\n2\r\n")
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    p.user("user10")
    p.pass_("pw10")
    p.retr(1)
    p.top(2, 0)  # TOP is a peek: not marked
    p.quit()
    m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    m.login("user10", "pw10")
    m.select("INBOX")
    typ, data = m.fetch("1:2", "(FLAGS)")
    m.logout()
    assert typ == "OK"
    assert b"\\Seen" in data[0] and b"\\Seen" not in data[1]


def test_second_session_gets_in_use_until_the_first_quits(hub):
    first = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    first.user("user9")
    first.pass_("pw9")
    second = poplib.POP3("127.0.0.1", hub.ports["pop3"])
    second.user("user9")
    with pytest.raises(poplib.error_proto) as e:
        second.pass_("pw9")
    assert e.value.args[0] == b"-ERR [IN-USE] maildrop of user9@localhost is in use by another session"
    assert "RESP-CODES" in second.capa()
    first.quit()
    second.user("user9")
    assert second.pass_("pw9").startswith(b"+OK")
    second.quit()


@pytest.mark.parametrize(
    "n, login, sent",
    [(0, None, b"> AUTH "), (1, "AUTH=PLAIN", b"> AUTH PLAIN"), (2, "AUTH=CRAM-MD5", b"> AUTH CRAM-MD5"), (3, "AUTH=+APOP", b"> APOP curl3 ")],
)
def test_curl_fetches_a_message(hub, n, login, sent):
    """curl picks SASL, then APOP, then USER; each way in must work."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    message = b"Subject: via curl\r\n\r\nfetched by curl\r\n.leading dot\r\n"
    put(hub, f"curl{n}@localhost", message)
    args = [curl, "-v", "-sS", "--max-time", "20", f"pop3://127.0.0.1:{hub.ports['pop3']}/1", "-u", f"curl{n}:pw"]
    if login:
        args += ["--login-options", login]
    out = subprocess.run(args, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert sent in out.stderr
    assert out.stdout == message


def test_uidl_is_stable_across_a_restart(start_hub):
    h = start_hub()
    for i in range(3):
        put(h, "bob@localhost", b"Subject: %d\r\n\r\nbody\r\n" % i)
    p = poplib.POP3("127.0.0.1", h.ports["pop3"])
    p.user("bob")
    p.pass_("hungry")
    before = p.uidl()[1]
    p.retr(2)
    p.quit()
    h.restart()
    p = poplib.POP3("127.0.0.1", h.ports["pop3"])
    p.user("bob")
    p.pass_("hungry")
    after = p.uidl()[1]
    p.quit()
    assert len(before) == 3 and before == after


def test_untrusted_network_refuses_user_pass_but_apop_works(start_hub):
    h = start_hub("--trusted-networks", "10.0.0.0/8")
    s = Raw(h.ports["pop3"])
    s.send(b"CAPA\r\n")
    assert s.line().startswith(b"+OK")
    caps = s.multi()
    assert b"USER" not in caps and b"STLS" in caps
    assert s.cmd(b"user bob") == b"-ERR [AUTH] plaintext login needs TLS on this connection: use STLS or APOP"
    assert s.cmd(b"pass hungry") == b"-ERR [AUTH] plaintext login needs TLS on this connection: use STLS or APOP"
    stamp = re.search(rb"<[^>]+>", s.banner).group(0)
    digest = hashlib.md5(stamp + b"hungry").hexdigest().encode()
    assert s.cmd(b"apop bob " + digest) == b"+OK bob@localhost has 0 messages (0 octets)"
    s.close()
    # Over TLS the same network may use USER/PASS.
    p = poplib.POP3("127.0.0.1", h.ports["pop3"])
    p.stls(tls_context(h))
    p.user("alice")
    assert p.pass_("secret").startswith(b"+OK alice@localhost")
    p.quit()


def test_failed_logins_are_delayed_and_the_right_password_still_works(start_hub):
    h = start_hub()
    s = Raw(h.ports["pop3"])
    started = time.monotonic()
    for _ in range(5):
        s.cmd(b"user bob")
        assert s.cmd(b"pass wrong") == b"-ERR [AUTH] authentication failed"
    # 0.1 + 0.2 + 0.3 + 0.4 + 0.5 seconds held back.
    assert time.monotonic() - started >= 1.5
    s.cmd(b"user bob")
    assert s.cmd(b"pass hungry").startswith(b"+OK")
    s.close()


def test_idle_client_is_logged_out(start_hub):
    h = start_hub("--pop3-idle-timeout", "1")
    s = Raw(h.ports["pop3"])
    assert s.line() == b"-ERR autologout: idle for 1 seconds, closing"
    assert s.closed_by_server()


def test_transcript_masks_the_password_also_after_stls(start_hub):
    h = start_hub("--transcript")
    p = poplib.POP3("127.0.0.1", h.ports["pop3"])
    p.user("bob")
    p.pass_("hungry")
    p.quit()
    h.wait_for_log(r"pop3#\d+ C: PASS \*\*\*\*")
    p = poplib.POP3("127.0.0.1", h.ports["pop3"])
    p.stls(tls_context(h))
    p.user("alice")
    p.pass_("secret")
    assert p.stat() == (0, 0)
    p.quit()
    h.wait_for_log(r"pop3#\d+ C: STLS")
    h.wait_for_log(r"pop3#\d+ C: USER alice")
    assert "hungry" not in h.log and "secret" not in h.log


def test_session_piped_in_whole_and_half_closed_is_answered_in_full(start_hub):
    """
    `printf 'user bob\\npass hungry\\nlist\\nretr 1\\ndele 1\\nquit\\n' | nc -N`:
    the client shuts down its side right after QUIT. Every command is still
    answered, and the QUIT's deletion happens.
    """
    hub = start_hub()
    put(hub, "bob@localhost", b"Subject: piped\r\n\r\nhello\r\n")
    received = piped(hub, "pop3", b"user bob\npass hungry\nlist\nretr 1\ndele 1\nquit\n")
    assert b"Subject: piped" in received
    assert received.rstrip().endswith(b"(1 message deleted)")
    assert list(os.scandir(os.path.join(hub.maildir("bob@localhost"), "cur"))) == []
    assert list(os.scandir(os.path.join(hub.maildir("bob@localhost"), "new"))) == []
