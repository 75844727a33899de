"""
The live console end to end: sessions typed over raw sockets appear on the
list and stream their lines with explanations over the WebSocket; exports;
who may see what.
"""

from __future__ import annotations

import re
import socket
import urllib.parse

import pytest

from tests.web_helpers import LiveSocket, WebClient


def _smtp_line(sock, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return _reply(sock)


def _reply(sock) -> bytes:
    data = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_a_typed_smtp_session_streams_live_with_explanations(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = LiveSocket(browser)
    assert listing.accepted
    sock = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)
    try:
        _reply(sock)
        started = listing.wait_for(lambda u: u["type"] == "session" and u["session"]["protocol"] == "smtp")
        session_id = started["session"]["id"]
        assert started["session"]["client"].startswith("127.0.0.1:")
        watching = LiveSocket(browser, "?session=" + urllib.parse.quote(session_id, safe=""))
        assert watching.accepted
        greeting = watching.wait_for(lambda u: u["type"] == "event" and u["kind"] == "S")
        assert greeting["text"] == "220 mail.test ESMTP"
        assert greeting["explain"]["ref"] == "RFC 5321 §4.2.3"
        _smtp_line(sock, b"helo student.example")
        _smtp_line(sock, b"mail from:<student@example.org>")
        _smtp_line(sock, b"rcpt to:<alice@localhost>")
        _smtp_line(sock, b"data")
        typed = watching.wait_for(lambda u: u["type"] == "event" and u["text"].startswith("354"))
        assert typed["explain"]["text"].startswith("start mail input; end with <CRLF>.<CRLF>")
        assert typed["explain"]["url"] == "https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4"
        sock.sendall(b"Subject: hello\r\n\r\nhi\r\n.\r\n")
        _reply(sock)
        summary = watching.wait_for(lambda u: u["type"] == "event" and u["text"].startswith("[message:"))
        assert summary["text"] == "[message: 3 lines, 22 octets]"
        # The 250 links to the stored message, found in alice's own INBOX.
        queued = watching.wait_for(lambda u: u["type"] == "event" and u["text"].startswith("250 2.0.0"))
        found = browser.get(queued["link"]["url"])
        assert re.findall(r'data-uid="(\d+)"', found.text) == ["1"] and "1 message match" in found.text
        _smtp_line(sock, b"quit")
        watching.wait_for(lambda u: u["type"] == "event" and u["kind"] == "end")
        watching.close()
    finally:
        sock.close()
        listing.close()
    page = browser.get("/console/session/" + urllib.parse.quote(session_id, safe=""))
    assert page.status == 200
    assert "helo student.example" in page.text
    assert "RFC 5321 §4.1.1.1" in page.text
    text = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt")
    assert text.header("Content-Type").startswith("text/plain")
    assert "C:   mail from:<student@example.org>" in text.text
    assert "# MAIL FROM:<sender> starts a message" in text.text
    markdown = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.md")
    assert "| `354 End data with <CR><LF>.<CR><LF>` |" in markdown.text
    assert "[RFC 5321 §4.1.1.4](https://www.rfc-editor.org/rfc/rfc5321#section-4.1.1.4)" in markdown.text


def test_starttls_is_shown_with_its_version_and_cipher_and_secrets_are_masked(hub):
    import base64
    import smtplib

    from tests.hubprocess import client_context

    teacher = WebClient(hub)
    teacher.login("alice", "secret")
    with smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.ehlo("student.example")
        assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0secret").decode())[0] == 235
        port = smtp.sock.getsockname()[1]
    listing = teacher.get("/console")
    [session_id] = re.findall(r'data-id="(submission#\d+)"', listing.text)
    page = teacher.get("/console/session/" + urllib.parse.quote(session_id, safe=""))
    assert re.search(r"TLSv1\.[23] [A-Z0-9_-]+", page.text)
    assert "everything from here on is encrypted" in page.text
    assert "127.0.0.1:%d" % port in page.text
    assert "alice@localhost" in page.text
    assert base64.b64encode(b"\0alice\0secret").decode() not in page.text
    assert "AUTH PLAIN ****" in page.text


def test_a_student_cannot_see_another_accounts_session(start_hub):
    hub = start_hub("--teacher", "carol", users=("alice:secret", "bob:hungry", "carol:chalk"))
    # bob reads his mail from another address (127.0.0.2) than alice's browser
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10, source_address=("127.0.0.2", 0)) as pop:
        reader = pop.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        for line in (b"USER bob", b"PASS hungry", b"QUIT"):
            pop.sendall(line + b"\r\n")
            assert reader.readline().startswith(b"+OK")
    teacher = WebClient(hub)
    teacher.login("carol", "chalk")
    [bobs] = re.findall(r'data-id="(pop3#\d+)"', teacher.get("/console").text)
    bob = WebClient(hub)
    bob.login("bob", "hungry")
    assert bobs in bob.get("/console").text
    alice = WebClient(hub)
    alice.login("alice", "secret")
    assert bobs not in alice.get("/console").text
    refused = alice.get("/console/session/" + urllib.parse.quote(bobs, safe=""))
    assert refused.status == 404
    assert "USER bob" not in refused.text
    assert alice.get("/console/session/" + urllib.parse.quote(bobs, safe="") + "/transcript.txt").status == 404
    spying = LiveSocket(alice, "?session=" + urllib.parse.quote(bobs, safe=""))
    assert spying.accepted
    spying.sock.settimeout(0.5)
    try:
        spying.receive(timeout=0.5)
        leaked = True
    except (TimeoutError, OSError):
        leaked = False
    spying.close()
    assert not leaked


def test_the_live_socket_refuses_other_origins_and_strangers(hub):
    stranger = WebClient(hub)
    assert LiveSocket(stranger).accepted is False
    browser = WebClient(hub)
    browser.login("alice", "secret")
    assert LiveSocket(browser, origin="http://evil.example").accepted is False


def test_an_active_mode_ftp_transfer_shows_its_data_connection_from_port_l_minus_1(start_hub):
    import ftplib
    import io

    from tests.test_e2e_ftp import free_port_pair

    port = free_port_pair()
    hub = start_hub("--ftp", f"tcp:{port}:interface=127.0.0.1")
    f = ftplib.FTP()
    f.connect("127.0.0.1", port, timeout=10)
    f.login("alice", "secret")
    f.set_pasv(False)
    f.storbinary("STOR lesson.txt", io.BytesIO(b"x" * 1000))
    f.quit()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session_id] = re.findall(r'data-id="(ftp#\d+)"', browser.get("/console").text)
    page = browser.get("/console/session/" + urllib.parse.quote(session_id, safe=""))
    assert re.search(rf"open: server 127\.0\.0\.1:{port - 1} connected to client 127\.0\.0\.1:\d+ \(active mode\)", page.text)
    assert re.search(rf"closed: server 127\.0\.0\.1:{port - 1}, client 127\.0\.0\.1:\d+, 1000 bytes in [\d.]+ s", page.text)
    assert "separate from the control connection" in page.text
    assert "PASS ****" in page.text
    lines = re.findall(r'<tr class="ev (\w+)"', page.text)
    assert lines.index("data") > lines.index("login")


def test_sessions_are_kept_in_bounded_memory():
    from twisted_mailhub.transcript import SessionEvents

    bus = SessionEvents(max_sessions=3, max_lines=5)
    records = [bus.start("smtp", ("127.0.0.1", 1000 + i), ("127.0.0.1", 25)) for i in range(5)]
    for r in records[:4]:
        r.closed()
    assert [r.client[1] for r in bus.sessions()] == [1002, 1003, 1004]
    busy = records[4]
    for i in range(20):
        busy.add("C", f"NOOP {i}")
    assert [e[3] for e in busy.events] == [f"NOOP {i}" for i in range(15, 20)]
    assert busy.dropped == 16
    assert busy.summary()["lines"] == 21


def test_open_sessions_are_never_dropped_for_newer_ones():
    from twisted_mailhub.transcript import SessionEvents

    bus = SessionEvents(max_sessions=2, max_lines=5)
    open_ones = [bus.start("pop3", ("127.0.0.1", 2000 + i), ("127.0.0.1", 110)) for i in range(3)]
    assert [r.id for r in bus.sessions()] == [r.id for r in open_ones]


def test_an_outbound_relay_session_shows_on_both_hubs_consoles(start_hub):
    bob_hub = start_hub("--domain", "b.test", "--teacher", "bob@b.test", users=("bob@b.test:hungry",))
    alice_hub = start_hub(
        "--domain", "a.test", "--teacher", "alice@a.test", "--mx-override", f"b.test=127.0.0.1:{bob_hub.ports['smtp']}",
        users=("alice@a.test:secret",),
    )
    import base64
    import smtplib

    from tests.hubprocess import client_context

    with smtplib.SMTP("127.0.0.1", alice_hub.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.ehlo("alice.example")
        assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice@a.test\0secret").decode())[0] == 235
        smtp.sendmail("alice@a.test", ["bob@b.test"], b"Subject: from Alice's server\r\n\r\nhi Bob\r\n")
    alice = WebClient(alice_hub)
    alice.login("alice@a.test", "secret")
    bob = WebClient(bob_hub)
    bob.login("bob@b.test", "hungry")
    import time

    deadline = time.monotonic() + 15
    while True:
        relays = re.findall(r'data-id="(relay#\d+)"', alice.get("/console").text)
        arrivals = re.findall(r'data-id="(smtp#\d+)"', bob.get("/console").text)
        if relays and arrivals or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the queue sends on its own schedule: poll what a user would see
    assert relays and arrivals
    sent = alice.get("/console/session/" + urllib.parse.quote(relays[0], safe="")).text
    assert f"127.0.0.1:{bob_hub.ports['smtp']}" in sent
    assert "MAIL FROM:&lt;alice@a.test&gt;" in sent and "RCPT TO:&lt;bob@b.test&gt;" in sent
    assert "RFC 5321 §4.1.1.2" in sent
    received = bob.get("/console/session/" + urllib.parse.quote(arrivals[0], safe="")).text
    assert "MAIL FROM:&lt;alice@a.test&gt;" in received


def test_each_reply_is_explained_as_the_answer_to_its_own_command_also_when_pipelined(hub):
    # A 250 after MAIL FROM was explained "(after EHLO: one extension per
    # line)": a reply means what it answers. Pipelined commands (RFC 2920)
    # are answered in order, so the pairing holds for them too.
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = LiveSocket(browser)
    sock = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)
    live = []
    try:
        _reply(sock)
        session_id = listing.wait_for(lambda u: u["type"] == "session" and u["session"]["protocol"] == "smtp")["session"]["id"]
        watching = LiveSocket(browser, "?session=" + urllib.parse.quote(session_id, safe=""))
        _smtp_line(sock, b"EHLO student.example")
        sock.sendall(b"MAIL FROM:<student@example.org>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<nobody@localhost>\r\nDATA\r\n")
        replies = b""
        while b"354" not in replies:
            replies += sock.recv(4096)
        sock.sendall(b"Subject: paired\r\n\r\nhi\r\n.\r\n")
        _reply(sock)
        _smtp_line(sock, b"QUIT")
        watching.wait_for(lambda u: u["type"] == "event" and (live.append(u) or u["text"].startswith("221")))
    finally:
        sock.close()
    expected = [
        ("250-", "the EHLO reply: the first line names the server"),
        ("250 2.1.0", "sender accepted: a mail transaction has begun"),
        ("250 2.1.5", "recipient accepted"),
        ("354", "start mail input"),
        ("250 2.0.0", "the message is accepted: from now on the server is responsible for delivering it"),
    ]
    page = f"/console/session/{urllib.parse.quote(session_id, safe='')}"
    # The same in the live lines, on the session's page and in both exports.
    shown = {u["text"][:9]: u["explain"]["text"] for u in reversed(live) if u["kind"] == "S"}
    for start, meaning in expected:
        assert shown[next(k for k in shown if k.startswith(start))].startswith(meaning), (start, shown)
    for text in (browser.get(page).text, browser.get(page + "/transcript.txt").text, browser.get(page + "/transcript.md").text):
        assert "one extension per line" not in text
        at = 0
        for start, meaning in expected:
            found = re.compile(r"(?:S:\s+|`|>)" + re.escape(start)).search(text, at)
            assert found, (start, text[at : at + 2000])
            at = found.end()
            assert meaning in text[at : at + 400], (start, meaning, text[at : at + 400])


def test_logging_out_ends_the_live_console_sockets_of_that_browser_at_once(hub):
    # An open console tab went on streaming every new session to a browser
    # that had logged out (a shared lab machine: the next person sees them).
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = LiveSocket(browser)
    other = WebClient(hub)
    other.login("alice", "secret")
    kept = LiveSocket(other)  # (another browser's session goes on)
    assert listing.accepted and kept.accepted
    assert browser.post("/logout", {}).status == 303
    with pytest.raises((ConnectionError, TimeoutError)):
        while True:
            listing.receive(timeout=5)
    assert listing.closed_with == 4001
    sock = socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10)
    _reply(sock)
    sock.close()
    assert kept.wait_for(lambda u: u["type"] == "session" and u["session"]["protocol"] == "smtp")


def _typed(port: int, lines: list[bytes], final: bytes) -> None:
    """Send C{lines} to C{port} on loopback, read until C{final} appears."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""
        sock.sendall(b"".join(line + b"\r\n" for line in lines))
        while final not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk


@pytest.mark.parametrize("protocol, lines, final, said", [
    ("smtp", [b"helo a\x00b", b"quit"], b"221", "refused HELO ('"),
    ("smtp", [b"ehlo student.example", b"rcpt to:<alice@localhost>", b"quit"], b"221", "refused RCPT ('"),
    ("pop3", [b"RETR 9", b"QUIT"], b"+OK", "refused ('"),
    ("imap", [b"a1 SELECT INBOX", b"a2 LOGOUT"], b"a2 OK", "refused ('"),
    ("ftp", [b"RETR secret.txt", b"QUIT"], b"221", "refused RETR ('"),
])
def test_a_refused_command_is_explained_as_a_refusal_with_its_reason(hub, protocol, lines, final, said):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    _typed(hub.ports[protocol], lines, final)
    [session_id] = re.findall(r'data-id="(%s#\d+)"' % protocol, browser.get("/console").text)
    text = browser.get("/console/session/" + urllib.parse.quote(session_id, safe="") + "/transcript.txt").text
    [refused] = [line for line in text.splitlines() if said in line]
    # The reply's own words, not the command's hoped-for result.
    reason = refused.split(said, 1)[1].split("')", 1)[0]
    assert reason and reason in text.replace(refused, "")
