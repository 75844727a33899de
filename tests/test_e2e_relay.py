"""
Outbound mail end to end: two real hubs on loopback, A (a.test) relaying
to B (b.test) through an MX answer from a twisted.names server the test
starts, or through --smarthost. Clients are smtplib; what is checked is
what users see: files in B's Maildir, the DSN in alice's INBOX, the queue
directory, the admin command's output, the hub's log lines.
"""

from __future__ import annotations

import email
import email.policy
import glob
import json
import os
import re
import smtplib
import socket
import socketserver
import subprocess
import sys
import threading

import pytest

from tests.hubprocess import ROOT

ALICE = "alice@a.test:secret"
BOB = "bob@b.test:hungry"
BODY = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: Bob <bob@b.test>\r\n"
    b"Subject: lunch at noon?\r\n"
    b"\r\n"
    b"Hi Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"..and one with two\r\n"
    b"\r\n"
    b"caf\xc3\xa9 at noon.\r\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """
    A loopback port where nothing listens and nothing can start to for the
    rest of the run: bound by a socket that never listens (a connection
    to it is refused), so a hub started meanwhile on port 0 cannot be
    given it. (A port from free_port() is free only when asked: a test's
    own hub once got it and the relay reached that hub instead of nobody.)
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]


B_ZONE = {"b.test": {"b.test": [["MX", 10, "mx.b.test"]], "mx.b.test": [["A", "127.0.0.1"]]}}


@pytest.fixture
def dns_server(request):
    """
    A twisted.names server on a loopback UDP port, by default with the zone
    of b.test (MX 10 mx.b.test, mx.b.test A 127.0.0.1); a test may give
    its own zones with C{@pytest.mark.parametrize("dns_server", [zones],
    indirect=True)}. Yields "127.0.0.1:PORT".
    """
    yield from loopback_dns(getattr(request, "param", B_ZONE))


def loopback_dns(zones: dict):
    """
    Run the twisted.names server of L{tests.test_queue_mx} with C{zones} in
    a process of its own; yields "127.0.0.1:PORT" and stops it afterwards.
    """
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.test_queue_mx", json.dumps(zones)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("dns ready "), line + process.stdout.read()
        yield f"127.0.0.1:{int(line.split()[2])}"
    finally:
        process.kill()
        process.wait()


def start_b(start_hub, *args):
    return start_hub("--domain", "b.test", "--hostname", "mx.b.test", *args, users=[BOB])


def start_a(start_hub, *args, data=None):
    return start_hub("--domain", "a.test", "--hostname", "mx.a.test", *args, users=[ALICE], data=data)


def submit(hub, recipients, message=BODY, sender="alice@a.test", login=("alice@a.test", "secret")):
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as client:
        client.login(*login)
        refused = client.sendmail(sender, recipients, message)
    assert refused == {}


def messages(hub, address) -> list[bytes]:
    found = []
    for path in sorted(glob.glob(os.path.join(hub.maildir(address), "new", "*")) + glob.glob(os.path.join(hub.maildir(address), "cur", "*"))):
        with open(path, "rb") as f:
            found.append(f.read())
    return found


def queued(hub) -> list[str]:
    return sorted(glob.glob(os.path.join(hub.data_dir, "queue", "*.env")))


def admin(hub, *args) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.queue", "--data", hub.data_dir, *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=30,
    )
    return result.stdout + result.stderr


def test_mail_relayed_through_the_mx_arrives_intact_with_both_received_lines(start_hub, dns_server):
    b = start_b(start_hub)
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b.ports["smtp"]), "--transcript")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"queue: \S+ done: 1 delivered, 0 failed")
    [got] = messages(b, "bob@b.test")
    head, _, body = got.partition(b"\r\n\r\n")
    assert body == BODY.partition(b"\r\n\r\n")[2]
    received = [line for line in head.split(b"\r\n") if line.startswith(b"Received:")]
    assert len(received) == 2
    assert b"by mx.b.test" in head and b"by mx.a.test" in head
    # Submission added what the client left out (RFC 6409 §8).
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head and b"Subject: lunch at noon?" in head
    # The teaching view: one line per attempt naming the MX, and the transcript.
    a.wait_for_log(rf"relay \S+ <alice@a.test> to b.test via mx.b.test\[127.0.0.1\]:{b.ports['smtp']}: <bob@b.test> 250")
    a.wait_for_log(r"relay#\d+ C: MAIL FROM:<alice@a.test> SIZE=\d+")
    a.wait_for_log(r"relay#\d+ C: STARTTLS")
    assert queued(a) == []


TWO_MX = {
    "b.test": {
        "b.test": [["MX", 20, "backup.b.test"], ["MX", 10, "down.b.test"]],
        # 127.0.0.2 is loopback too, but B listens on 127.0.0.1 only: refused.
        "down.b.test": [["A", "127.0.0.2"]],
        "backup.b.test": [["A", "127.0.0.1"]],
    }
}


@pytest.mark.parametrize("dns_server", [TWO_MX], indirect=True)
def test_first_mx_down_the_next_one_by_preference_takes_the_mail(start_hub, dns_server):
    b = start_b(start_hub)
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b.ports["smtp"]))
    submit(a, ["bob@b.test"])
    a.wait_for_log(rf"relay to down.b.test\[127.0.0.2\]:{b.ports['smtp']}: cannot connect")
    a.wait_for_log(rf"relay \S+ <alice@a.test> to b.test via backup.b.test\[127.0.0.1\]:{b.ports['smtp']}: <bob@b.test> 250")
    assert len(messages(b, "bob@b.test")) == 1


def test_b_down_keeps_the_message_queued_and_the_next_retry_delivers_it(start_hub, dns_server):
    b_port = free_port()
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b_port), "--retry-schedule", "1s")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"relay \S+ <alice@a.test> to b.test via \(no connection\): <bob@b.test> cannot connect to mx.b.test")
    assert len(queued(a)) == 1
    listing = admin(a, "list")
    assert "<bob@b.test> pending: cannot connect" in listing and "1 message(s)" in listing
    b = start_b(start_hub, "--smtp", f"tcp:{b_port}:interface=127.0.0.1")
    a.wait_for_log(r"queue: \S+ done: 1 delivered", timeout=20)
    assert len(messages(b, "bob@b.test")) == 1
    assert queued(a) == []
    assert "queue is empty" in admin(a, "list")


def test_kill_9_between_accept_and_delivery_then_delivered_exactly_once(start_hub, dns_server):
    b_port = free_port()
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b_port), "--retry-schedule", "1s")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"relay \S+ .* cannot connect")
    a.kill()
    assert len(queued(a)) == 1
    b = start_b(start_hub, "--smtp", f"tcp:{b_port}:interface=127.0.0.1")
    a.start()
    a.wait_for_log(r"queue: 1 message\(s\) waiting from before")
    a.wait_for_log(r"queue: \S+ done: 1 delivered", timeout=20)
    # Restart once more: nothing left to send again.
    a.restart()
    assert queued(a) == []
    assert len(messages(b, "bob@b.test")) == 1


def test_550_from_b_bounces_a_dsn_into_alices_inbox(start_hub, dns_server):
    b = start_b(start_hub)
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b.ports["smtp"]))
    submit(a, ["bob@b.test", "nobody@b.test"])
    a.wait_for_log(r"queue: \S+ bounced to <alice@a.test> for <nobody@b.test>")
    a.wait_for_log(r"queue: \S+ done: 1 delivered, 1 failed")
    assert len(messages(b, "bob@b.test")) == 1
    [dsn] = messages(a, "alice@a.test")
    report = email.message_from_bytes(dsn, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    text, status, headers = report.get_payload()
    status = status.as_bytes().decode()
    assert "Final-Recipient: rfc822; nobody@b.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status
    assert "bob@b.test" not in status  # delivered: not reported
    assert b"Subject: lunch at noon?" in dsn
    assert queued(a) == []


def test_lifetime_expiry_bounces(start_hub, dns_server):
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(closed_port()), "--retry-schedule", "1s", "--queue-lifetime", "2s")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"queue: \S+ expired after 2s", timeout=20)
    a.wait_for_log(r"queue: \S+ bounced to <alice@a.test>")
    a.wait_for_log(r"queue: \S+ done: 0 delivered, 1 failed")
    [dsn] = messages(a, "alice@a.test")
    assert b"Status: 4.4.7" in dsn and b"Action: failed" in dsn
    assert b"gave up after 2s" in dsn
    assert queued(a) == []


def test_smarthost_with_auth(start_hub):
    b = start_b(start_hub)
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{b.ports['submission']}", "--smarthost-auth", "bob@b.test:hungry", "--transcript")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"queue: \S+ done: 1 delivered")
    assert len(messages(b, "bob@b.test")) == 1
    b.wait_for_log(r"submission login bob@b.test")
    a.wait_for_log(r"relay#\d+ C: AUTH PLAIN \*\*\*\*")
    assert "hungry" not in a.log


def test_smarthost_refusing_the_login_keeps_the_message_queued(start_hub):
    b = start_b(start_hub)
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{b.ports['submission']}", "--smarthost-auth", "bob@b.test:wrong", "--retry-schedule", "1h")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"relay \S+ .* <bob@b.test> 535")
    assert len(queued(a)) == 1
    assert messages(a, "alice@a.test") == []  # no bounce for a login failure


def test_unauthenticated_relay_is_refused(start_hub):
    a = start_a(start_hub, "--mx-override", "b.test=127.0.0.1:9")
    with smtplib.SMTP("127.0.0.1", a.ports["smtp"], timeout=10) as client:
        client.ehlo("outside.test")
        client.mail("mallory@evil.test")
        code, text = client.rcpt("bob@b.test")
    assert code == 554 and b"5.7.1" in text and b"Relay access denied" in text
    assert queued(a) == []


def test_bounce_for_the_null_sender_is_dropped_not_looped(start_hub, dns_server):
    b = start_b(start_hub)
    a = start_a(start_hub, "--dns-server", dns_server, "--relay-port", str(b.ports["smtp"]))
    submit(a, ["nobody@b.test"], sender="")
    a.wait_for_log(r"queue: \S+ failed for <nobody@b.test>; sender is <>, no bounce")
    a.wait_for_log(r"queue: \S+ done: 0 delivered, 1 failed")
    assert messages(a, "alice@a.test") == []
    assert queued(a) == []


def test_admin_flush_and_remove_on_a_running_hub(start_hub):
    a = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{closed_port()}", "--retry-schedule", "1h")
    submit(a, ["bob@b.test"])
    first = a.wait_for_log(r"relay (\S+) <alice@a.test> to b.test via \(no connection\)")
    qid = first.group(1)
    assert qid in admin(a, "list")
    assert "flushing 1 message(s)" in admin(a, "flush")
    # A second attempt, long before the 1h retry was due.
    a.wait_for_log(rf"relay {qid} [^\n]*\n[\s\S]*relay {qid} ")
    assert f"removed {qid}" in admin(a, "remove", qid)
    assert "no message" in admin(a, "remove", qid)
    assert queued(a) == []
    assert "queue is empty" in admin(a, "list")


def test_admin_command_works_on_a_stopped_hub(start_hub):
    a = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{closed_port()}", "--retry-schedule", "1h")
    submit(a, ["bob@b.test"])
    first = a.wait_for_log(r"relay (\S+) <alice@a.test>")
    a.stop()
    assert "1 message(s)" in admin(a, "list")
    assert "will be tried as soon as the hub starts" in admin(a, "flush")
    assert f"removed {first.group(1)}" in admin(a, "remove", first.group(1))
    assert queued(a) == []


class Collector:
    """An aiosmtpd handler that keeps every envelope it is given."""

    def __init__(self, refuse: dict | None = None):
        self.envelopes = []
        self.refuse = refuse or {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 thanks"


@pytest.fixture
def aiosmtpd_peer():
    """A third-party SMTP server (aiosmtpd, no STARTTLS) on a loopback port."""
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    handler = Collector(refuse={"gone@c.test": "550 5.1.1 no such mailbox"})
    controller = controller_mod.Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, handler
    finally:
        controller.stop()


def test_relay_to_a_third_party_server_per_recipient(start_hub, aiosmtpd_peer):
    port, peer = aiosmtpd_peer
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}")
    submit(a, ["carol@c.test", "gone@c.test", "dave@c.test"])
    a.wait_for_log(r"queue: \S+ done: 2 delivered, 1 failed")
    [(sender, rcpts, data)] = peer.envelopes
    assert sender == "alice@a.test" and rcpts == ["carol@c.test", "dave@c.test"]
    assert data.endswith(BODY.partition(b"\r\n\r\n")[2])
    assert b"\r\n.a line that starts with a dot\r\n" in data  # dot-stuffing undone by the peer
    [dsn] = messages(a, "alice@a.test")
    assert b"Final-Recipient: rfc822; gone@c.test" in dsn
    assert b"carol@c.test" not in dsn.partition(b"message/delivery-status")[2]


def test_require_tls_keeps_mail_from_a_server_without_starttls(start_hub, aiosmtpd_peer):
    port, peer = aiosmtpd_peer
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}", "--relay-require-tls", "--retry-schedule", "1h")
    submit(a, ["carol@c.test"])
    a.wait_for_log(r"relay \S+ .* <carol@c.test> .*TLS")
    assert peer.envelopes == []
    assert len(queued(a)) == 1
    assert messages(a, "alice@a.test") == []


def test_backlog_for_one_host_goes_over_one_connection(start_hub):
    b_port = free_port()
    a = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{b_port}", "--retry-schedule", "1h")
    for n in range(3):
        submit(a, ["bob@b.test"], message=BODY + b"number %d\r\n" % n)
    a.wait_for_log(r"(relay \S+ <alice@a.test> to b.test via \(no connection\)[^\n]*\n[\s\S]*){3}")
    b = start_b(start_hub, "--smtp", f"tcp:{b_port}:interface=127.0.0.1", "--transcript")
    assert "flushing 3 message(s)" in admin(a, "flush")
    a.wait_for_log(r"(queue: \S+ done: 1 delivered[\s\S]*){3}")
    assert len(messages(b, "bob@b.test")) == 3
    assert len(re.findall(r"smtp#\d+ connected from", b.log)) == 1
    assert len(re.findall(r"smtp#\d+ C: MAIL FROM", b.log, re.I)) == 3


def test_delay_warning_then_delivery(start_hub):
    b_port = free_port()
    a = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{b_port}", "--retry-schedule", "1s", "--delay-warning", "1s")
    submit(a, ["bob@b.test"])
    a.wait_for_log(r"queue: \S+ delayed, warning sent to <alice@a.test>", timeout=20)
    [warning] = messages(a, "alice@a.test")
    assert b"Action: delayed" in warning and b"Will-Retry-Until:" in warning
    b = start_b(start_hub, "--smtp", f"tcp:{b_port}:interface=127.0.0.1")
    a.wait_for_log(r"queue: \S+ done: 1 delivered", timeout=20)
    assert len(messages(b, "bob@b.test")) == 1
    assert len(messages(a, "alice@a.test")) == 1  # one warning, no bounce


def test_second_hub_on_the_same_queue_does_not_deliver(start_hub, tmp_path):
    data = str(tmp_path / "shared")
    os.makedirs(data)
    first = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{closed_port()}", "--retry-schedule", "1h", data=data)
    second = start_a(start_hub, "--mx-override", f"b.test=127.0.0.1:{closed_port()}", "--retry-schedule", "1h", data=data)
    second.wait_for_log(r"queue: not delivering; another process holds \S+/lock")
    assert "not delivering" not in first.log


class BrokenTLSPeer(socketserver.ThreadingTCPServer):
    """
    An SMTP server that offers STARTTLS, answers 220 and then sends junk
    instead of a TLS handshake; without STARTTLS it takes mail normally.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, junk_with_the_220=False):
        self.junk_with_the_220 = junk_with_the_220
        self.received: list[tuple[str, bytes]] = []
        self.starttls_tries = 0
        socketserver.ThreadingTCPServer.__init__(self, ("127.0.0.1", 0), self.Handler)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            server = self.server
            out = self.wfile
            out.write(b"220 broken.test ESMTP\r\n")
            sender = None
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.write(b"250-broken.test\r\n250 STARTTLS\r\n")
                elif verb == b"STAR":
                    server.starttls_tries += 1
                    junk = b"this is not a TLS handshake\r\n" * 10
                    if server.junk_with_the_220:
                        out.write(b"220 go ahead\r\n" + junk)
                        return
                    out.write(b"220 go ahead\r\n")
                    out.flush()
                    self.request.recv(4096)  # the client's TLS hello
                    self.request.sendall(junk)
                    return
                elif verb == b"MAIL":
                    sender = line.decode().split("<", 1)[1].split(">", 1)[0]
                    out.write(b"250 ok\r\n")
                elif verb == b"RCPT":
                    out.write(b"250 ok\r\n")
                elif verb == b"DATA":
                    out.write(b"354 go\r\n")
                    data = b""
                    for body_line in self.rfile:
                        if body_line == b".\r\n":
                            break
                        data += body_line
                    server.received.append((sender, data))
                    out.write(b"250 2.0.0 taken\r\n")
                elif verb == b"QUIT":
                    out.write(b"221 bye\r\n")
                    return
                else:
                    out.write(b"250 ok\r\n")


@pytest.fixture(params=[False, True], ids=["junk-for-a-handshake", "junk-with-the-220"])
def broken_tls_peer(request):
    server = BrokenTLSPeer(junk_with_the_220=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_failed_starttls_falls_back_to_plain_text(start_hub, broken_tls_peer):
    port = broken_tls_peer.server_address[1]
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}", "--retry-schedule", "1h")
    submit(a, ["carol@c.test"])
    a.wait_for_log(r"queue: \S+ done: 1 delivered")
    a.wait_for_log(r"STARTTLS with 127.0.0.1:\d+ failed: .*; trying again without TLS")
    assert broken_tls_peer.starttls_tries == 1
    [(sender, data)] = broken_tls_peer.received
    assert sender == "alice@a.test" and data.endswith(b"\r\n..a line that starts with a dot\r\n...and one with two\r\n\r\ncaf\xc3\xa9 at noon.\r\n")


def test_failed_starttls_with_require_tls_sends_nothing(start_hub, broken_tls_peer):
    port = broken_tls_peer.server_address[1]
    a = start_a(start_hub, "--mx-override", f"c.test=127.0.0.1:{port}", "--retry-schedule", "1h", "--relay-require-tls")
    submit(a, ["carol@c.test"])
    a.wait_for_log(rf"relay \S+ <alice@a.test> to c.test via 127\.0\.0\.1:{port}: <carol@c.test> STARTTLS with \S+ failed")
    assert broken_tls_peer.received == []
    assert len(queued(a)) == 1


def test_a_refused_connection_is_said_in_plain_words_not_twisteds(start_hub):
    # Twisted's text for it is "Connection was refused by other side: 111:
    # Connection refused." (its class's docstring, the errno, the OS's
    # words): the log line, the queue listing and so the bounce said it.
    port = closed_port()
    a = start_a(start_hub, "--smarthost", f"127.0.0.1:{port}", "--retry-schedule", "1h")
    submit(a, ["bob@b.test"])
    line = a.wait_for_log(rf"cannot connect to 127\.0\.0\.1:{port}: [^\n]*").group(0)
    assert line == f"cannot connect to 127.0.0.1:{port}: the connection was refused", line
    listing = admin(a, "list")
    assert f"cannot connect to 127.0.0.1:{port}: the connection was refused" in listing, listing
    for said in (a.log, listing):
        # (the errno as Twisted shows it, ": 111:"; a port number such as
        # 41113 elsewhere in the log is not it)
        assert "refused by other side" not in said and not re.search(r"\b111\b", said), said


def test_a_smarthost_that_hangs_up_is_said_in_plain_words_not_twisteds(start_hub):
    # The queue's reason (mailhub-admin queue list, the bounce) was made
    # from Failure.getErrorMessage(): "connection to HOST lost: Connection
    # was closed cleanly." Now the hub's words, as in the log.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def hang_up():
        conn, _ = listener.accept()
        conn.sendall(b"220 smarthost.test ESMTP\r\n")
        conn.recv(1000)  # EHLO
        conn.close()

    server = threading.Thread(target=hang_up, daemon=True)
    server.start()
    try:
        a = start_a(start_hub, "--smarthost", f"127.0.0.1:{port}", "--retry-schedule", "1h")
        submit(a, ["bob@b.test"])
        a.wait_for_log(r"<bob@b.test> connection to \S+ lost")
        listing = admin(a, "list")
        assert re.search(r"connection to \S+ lost: the connection was (closed|lost)\n", listing), listing
        assert "cleanly" not in listing and "non-clean" not in listing, listing
    finally:
        server.join(10)
        listener.close()
