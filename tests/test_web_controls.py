"""
Control and bidirectional formatting characters on the web face: what a
page shows is what the message says (a control byte or a bidi override is
shown as an escape, as the live console shows control bytes, never
applied), and what the webmail writes is mail a header can carry (a
control character typed into a header field is refused, saying which).
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import urllib.parse

from tests.web_helpers import LiveSocket, WebClient

RLO = "\u202e"
HIDDEN = ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\x1b", "\x00", "\x9b")


def send(hub, raw: bytes) -> None:
    with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
        s.sendmail("mallory@example.net", ["alice@localhost"], raw)


def tricky_message() -> bytes:
    # RFC 2047 words carry U+202E (RLO), U+2066 (LRI) and U+2069 (PDI);
    # the raw header carries an ESC and a C1 CSI; the attachment's name
    # is the classic "invoice<RLO>fdp.exe", read as "invoiceexe.pdf".
    return (
        b"From: =?UTF-8?Q?Bank_=E2=80=AEknaB?= <mallory@example.net>\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: =?UTF-8?Q?pay_=E2=81=A6now=E2=81=A9_=E2=80=AEeton?= \x1b[31mred\r\n"
        b"X-Note: \xc2\x9b2J\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe\r\n\r\nMZ\r\n"
        b"--b--\r\n"
    )


def assert_nothing_hidden(text: str) -> None:
    for c in HIDDEN:
        assert c not in text, f"U+{ord(c):04X} shown raw"


def test_bidi_overrides_and_control_bytes_in_subject_from_and_file_names_are_shown_visibly(hub):
    send(hub, tricky_message())
    hub.wait_for_message(to="alice@localhost", subject="pay", timeout=10)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = browser.get("/mail/INBOX").text
    page = browser.get("/mail/INBOX/1").text
    anatomy = browser.get("/mail/INBOX/1/anatomy").text
    for text in (listing, page, anatomy):
        assert_nothing_hidden(text)
        assert "Bank \\u202eknaB &lt;mallory@example.net&gt;" in text
    for text in (listing, page):
        assert "pay \\u2066now\\u2069 \\u202eeton \\x1b[31mred" in text
    assert "<h1>pay \\u2066now\\u2069 \\u202eeton \\x1b[31mred</h1>" in page
    # The attachment: its name shown with the override visible; the name
    # a browser saves it under has none.
    assert ">invoice\\u202efdp.exe</a>" in page and 'download="invoicefdp.exe"' in page
    # The Anatomy: header table, the MIME tree and the raw source lines.
    assert "<code>\\x9b2J</code>" in anatomy
    assert "invoice\\u202efdp.exe" in anatomy
    assert '<span class="line">Subject: =?UTF-8?Q?pay_=E2=81=A6now=E2=81=A9_=E2=80=AEeton?= \\x1b[31mred</span>' in anatomy
    download = browser.get("/mail/INBOX/1/part/2")
    assert download.body == b"MZ"
    assert 'filename="invoicefdp.exe"' in download.header("Content-Disposition")
    assert "%E2%80%AE" not in download.header("Content-Disposition")


def test_the_live_console_shows_a_bidi_override_or_c1_control_in_a_protocol_line_visibly(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = LiveSocket(browser)
    sock = socket.create_connection((hub.host, hub.ports["smtp"]), timeout=10)
    try:
        sock.recv(4096)
        started = listing.wait_for(lambda u: u["type"] == "session" and u["session"]["protocol"] == "smtp")
        session_id = started["session"]["id"]
        watching = LiveSocket(browser, "?session=" + urllib.parse.quote(session_id, safe=""))
        sock.sendall("HELO evil\u202elpmaxe.test\r\n".encode() + b"NOOP \xc2\x9b2J\r\n")
        live = watching.wait_for(lambda u: u["type"] == "event" and u["kind"] == "C" and u["text"].startswith("NOOP"))
        assert live["text"] == "NOOP \\x9b2J"
        watching.close()
    finally:
        sock.close()
        listing.close()
    quoted = urllib.parse.quote(session_id, safe="")
    for path in ("/console/session/" + quoted, "/console/session/" + quoted + "/transcript.txt"):
        text = browser.get(path).text
        assert "HELO evil\\u202elpmaxe.test" in text
        assert "NOOP \\x9b2J" in text
        assert_nothing_hidden(text)


def compose(browser: WebClient, **fields: str):
    browser.get("/compose")
    boundary = "XyZ"
    parts = []
    for name, value in (("csrf", browser.csrf), *fields.items()):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def bobs_inbox(hub) -> int:
    imap = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        typ, data = imap.select("INBOX")
        return int(data[0])
    finally:
        imap.logout()


def test_a_nul_or_esc_typed_into_a_header_field_is_refused_on_the_form_saying_which_and_nothing_is_sent(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    refused = compose(browser, to="bob\x00", cc="", subject="hi\x1b[2J there", body="words")
    assert refused.status == 400
    text = refused.text
    assert (
        "Not sent: The To has a control character, U+0000 (NUL); the Subject has a control character, U+001B (ESC). "
        "Mail cannot carry control characters in its header fields, nor NUL in its text (RFC 5322). "
        "They were taken out below: check the message and send it again."
    ) in text
    assert_nothing_hidden(text)
    # The form again, with what was typed less those characters.
    assert 'name="to" value="bob"' in text and 'name="subject" value="hi[2J there"' in text
    assert ">words</textarea>" in text
    assert bobs_inbox(hub) == 0
    # Sent again as the form now is: it goes.
    sent = compose(browser, to="bob", subject="hi[2J there", body="words")
    assert sent.status == 303
    assert bobs_inbox(hub) == 1


def test_a_nul_in_the_message_text_or_a_c1_control_in_cc_is_refused_and_other_text_controls_go(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    refused = compose(browser, to="bob", cc="carol\x9b@localhost", subject="s", body="a\x00b")
    assert refused.status == 400
    assert "The Cc has a control character, U+009B; the message text has a control character, U+0000 (NUL)." in refused.text
    assert bobs_inbox(hub) == 0
    # A tab in the Subject is white space; ESC and form feed are text in a body (RFC 5322 §2.3).
    sent = compose(browser, to="bob", subject="tab\there", body="page\x0cbreak \x1b")
    assert sent.status == 303
    assert bobs_inbox(hub) == 1


def test_a_message_with_no_recipient_comes_back_as_the_form_with_what_was_typed(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    refused = compose(browser, to="", subject="lost?", body="all these words")
    assert refused.status == 400
    assert "Give at least one recipient." in refused.text
    assert 'name="subject" value="lost?"' in refused.text and ">all these words</textarea>" in refused.text


def test_a_folder_name_with_a_bidi_override_is_shown_visibly_in_the_folder_list_title_and_move_menu(hub):
    imap = imaplib.IMAP4(hub.host, hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        assert imap.create('"Exams &IC4-flodp"')[0] == "OK"  # modified UTF-7 (RFC 3501 5.1.3) for U+202E
    finally:
        imap.logout()
    send(hub, b"From: a@example.net\r\nSubject: hi\r\n\r\nhello\r\n")
    hub.wait_for_message(to="alice@localhost", subject="hi", timeout=10)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    inbox = browser.get("/mail/INBOX").text
    page = browser.get("/mail/INBOX/1").text
    folder = browser.get("/mail/" + urllib.parse.quote("Exams " + RLO + "flodp", safe="")).text
    assert "Exams \\u202eflodp (0)" in inbox
    assert '<option value="Exams \u202eflodp">Exams \\u202eflodp</option>' in page
    assert "<h1>Exams \\u202eflodp</h1>" in folder
