"""
Webmail and the message anatomy end to end: mail sent over SMTP is read on
the web, flags are shared with IMAP, compose goes through submission,
hostile mail is defanged.
"""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import re
import smtplib
import urllib.parse

from tests.web_helpers import WebClient

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def multipart_with_image() -> bytes:
    b64 = base64.encodebytes(PNG).replace(b"\n", b"\r\n")
    return (
        b"From: =?UTF-8?B?w4lsb2lzZQ==?= <eloise@example.org>\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: =?UTF-8?Q?caf=C3=A9_photo?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n'
        b"\r\n"
        b"--b1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"Voil=C3=A0 the picture.\r\n"
        b"--b1\r\n"
        b"Content-Type: image/png\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''%C3%A9t%C3%A9.png\r\n"
        b"\r\n" + b64 + b"--b1--\r\n"
    )


def send(hub, sender, recipients, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        smtp.sendmail(sender, recipients, message)


def test_a_message_sent_over_smtp_is_listed_read_and_then_seen_by_imap(hub):
    send(hub, "carol@example.org", ["alice@localhost"], b"From: Carol <carol@example.org>\r\nSubject: lunch?\r\n\r\nat noon\r\n")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    listing = browser.get("/mail/INBOX")
    assert listing.status == 200
    assert re.search(r'<tr class="unread" data-uid="1">.*Carol &lt;carol@example.org&gt;.*lunch\?', listing.text)
    assert re.search(r"INBOX \(1/1\)", listing.text)
    page = browser.get("/mail/INBOX/1")
    assert "at noon" in page.text and "<h1>lunch?</h1>" in page.text
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(FLAGS)")
        assert b"\\Seen" in data[0]
        imap.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
    finally:
        imap.logout()
    assert "★" in browser.get("/mail/INBOX").text


def test_the_navigation_bars_mail_link_without_a_slash_leads_to_the_inbox_or_to_the_login(hub):
    browser = WebClient(hub)
    signed_out = browser.get("/mail")
    assert signed_out.status == 303
    assert signed_out.header("Location") == "/login?next=/mail"
    browser.login("alice", "secret")
    assert 'href="/mail"' in browser.get("/").text
    signed_in = browser.get("/mail")
    assert signed_in.status == 303
    assert signed_in.header("Location") == "/mail/INBOX"
    assert browser.get(signed_in.header("Location")).status == 200


def test_the_anatomy_shows_a_folded_header_field_on_its_lines_as_sent(hub):
    # A fold (CRLF then white space, RFC 5322 §2.2.3) was shown as the text
    # "\x0d\x0a" in the "as sent" column, as if it were a stray control.
    send(hub, "eloise@example.org", ["bob@localhost"], b"Subject: a long\r\n subject, folded\r\nX-Odd: a\x1bb\r\n\r\nhi\r\n")
    browser = WebClient(hub)
    browser.login("bob", "hungry")
    text = browser.get("/mail/INBOX/1/anatomy").text
    assert "<code>a long\n subject, folded</code>" in text
    assert "\\x0d\\x0a" not in text
    assert "<code>a\\x1bb</code>" in text  # (a control character still shown as one)


def test_the_anatomy_shows_headers_raw_and_decoded_the_mime_tree_and_the_decoded_image(hub):
    send(hub, "eloise@example.org", ["alice@localhost"], multipart_with_image())
    browser = WebClient(hub)
    browser.login("alice", "secret")
    page = browser.get("/mail/INBOX/1/anatomy")
    assert page.status == 200
    text = page.text
    assert "=?UTF-8?Q?caf=C3=A9_photo?=" in text and "café photo" in text
    assert "Éloise &lt;eloise@example.org&gt;" in text
    assert "&lt;eloise@example.org&gt;</code> (MAIL FROM" in text
    assert re.search(r"hop 1: </strong>[^<]+ → <strong>mail\.test</strong> with ESMTP", text)
    assert "multipart/mixed" in text and "image/png" in text and "base64" in text and "quoted-printable" in text
    assert "Voil=C3=A0 the picture." in text and "Voilà the picture." in text
    assert '<img src="/mail/INBOX/1/part/2"' in text
    assert '<span class="line">Subject: =?UTF-8?Q?caf=C3=A9_photo?=</span>' in text
    image = browser.get("/mail/INBOX/1/part/2")
    assert image.header("Content-Type") == "image/png" and image.body == PNG
    download = browser.get("/mail/INBOX/1/part/2?download=1")
    assert download.header("Content-Type") == "application/octet-stream"
    assert "filename*=UTF-8''%C3%A9t%C3%A9.png" in download.header("Content-Disposition")
    assert "été.png" in browser.get("/mail/INBOX/1").text


def test_hostile_html_mail_is_shown_without_scripts_handlers_forms_or_remote_images(hub):
    hostile = (
        b"From: \"<script>alert('from')</script>\" <evil@example.org>\r\n"
        b"Subject: <img src=x onerror=alert('subject')>\r\n"
        b"Content-Type: text/html\r\n\r\n"
        b"<p onmouseover=\"alert('p')\">hi <a href=\"javascript:alert('link')\">click</a>"
        b"<script>alert('body')</script><svg><script>alert('svg')</script></svg>"
        b"<form action=\"https://evil.example/\"><input name=password></form>"
        b"<img src=\"https://tracker.example/pixel.png\"><div style=\"background:url(javascript:alert(1))\">x</div></p>\r\n"
    )
    send(hub, "evil@example.org", ["alice@localhost"], hostile)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    page = browser.get("/mail/INBOX/1").text
    listing = browser.get("/mail/INBOX").text
    for text in (page, listing):
        assert "<script>alert" not in text and "<img src=x" not in text
        assert "&lt;img src=x onerror=alert('subject')&gt;" in text
    body = page[page.index('class="body-html"'):]
    assert "onmouseover" not in body and "javascript:" not in body and "<form" not in body
    assert "tracker.example" not in body and "style=" not in body
    assert "1 remote image(s) blocked" in page


def test_compose_sends_through_submission_with_a_sent_copy_and_it_arrives_over_imap(hub):
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    boundary = "XyZ"
    parts = []
    for name, value in (("csrf", browser.csrf), ("to", "bob"), ("subject", "from the web"), ("body", "hello bob")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; filename="notes.txt"\r\nContent-Type: text/plain\r\n\r\nattached words\r\n'.encode()
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    sent = browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert sent.status == 303, sent.text
    # The page after Send says it went (it showed the INBOX and nothing else), once.
    after = browser.get(sent.header("Location")).text
    assert '<p class="notice" role="status">Sent to bob; a copy is in Sent.</p>' in after
    assert "Sent to bob;" not in browser.get("/mail/INBOX").text
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.select("INBOX")
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[])")
        arrived = data[0][1]
    finally:
        imap.logout()
    assert b"Subject: from the web" in arrived and b"hello bob" in arrived
    assert b"by mail.test with ESMTPA" in arrived
    assert b'filename="notes.txt"' in arrived
    assert "from the web" in browser.get("/mail/Sent").text


def test_compose_keeps_the_display_names_typed_in_to_and_cc(hub):
    # '"Doe, John" <bob@localhost>' goes out with its name (RFC 5322 §3.4);
    # the envelope takes the addresses alone.
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    boundary = "XyZ"
    fields = (("csrf", browser.csrf), ("to", '"Doe, John" <bob@localhost>'), ("cc", "Zoë Q <alice@localhost>"), ("subject", "names"), ("body", "hi"))
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode() for name, value in fields)
    body += f"--{boundary}--\r\n".encode()
    sent = browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert sent.status == 303, sent.text
    fields_seen = _to_and_cc(hub, "bob", "hungry", "INBOX")
    assert fields_seen["To"] == [("Doe, John", "bob@localhost")]
    assert fields_seen["Cc"] == [("Zoë Q", "alice@localhost")]


def _to_and_cc(hub, user: str, password: str, folder: str) -> dict:
    """The (display name, address) pairs of To and Cc of UID 1 in C{folder}, read over IMAP."""
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login(user, password)
        imap.select(folder)
        typ, data = imap.uid("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (TO CC)])")
        fields = email.message_from_bytes(data[0][1], policy=email.policy.default)
    finally:
        imap.logout()
    return {name: [(a.display_name, a.addr_spec) for a in fields[name].addresses] for name in ("To", "Cc")}


def _field_value(page: str, name: str) -> str:
    import html

    return html.unescape(re.search(rf'name="{name}" value="([^"]*)"', page).group(1))


NAMED = (
    b'From: "Doe, John" <carol@localhost>\r\n'
    b'To: alice@localhost, "Smith, Ann" <dave@localhost>, =?utf-8?q?J=C3=BCrgen_M=2E?= <erin@localhost>\r\n'
    b"Cc: Bob <bob@localhost>, Alice Again <ALICE@localhost>\r\n"
    b"Subject: names\r\nMessage-ID: <names@example.org>\r\n\r\nwho is there\r\n"
)


def test_reply_and_reply_all_prefill_the_display_names_of_who_they_answer(start_hub):
    hub = start_hub(users=("alice:secret", "bob:hungry", "carol:chalk", "dave:d", "erin:e"))
    send(hub, "carol@localhost", ["alice@localhost", "bob@localhost"], NAMED)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    reply = browser.get("/compose?reply=INBOX/1").text
    assert _field_value(reply, "to") == '"Doe, John" <carol@localhost>' and _field_value(reply, "cc") == ""
    everyone = browser.get("/compose?replyall=INBOX/1").text
    assert _field_value(everyone, "to") == '"Doe, John" <carol@localhost>'
    # each other recipient with its name (RFC 2047 decoded), oneself left out
    assert _field_value(everyone, "cc") == '"Smith, Ann" <dave@localhost>, "Jürgen M." <erin@localhost>, Bob <bob@localhost>'
    # sent as prefilled, the names go out (what the form shows is what is sent)
    sent = browser.post("/compose", {"to": _field_value(everyone, "to"), "cc": _field_value(everyone, "cc"), "subject": "Re: names", "body": "here"})
    assert sent.status == 303, sent.text
    fields_seen = _to_and_cc(hub, "alice", "secret", "Sent")
    assert fields_seen["To"] == [("Doe, John", "carol@localhost")]
    assert fields_seen["Cc"] == [
        ("Smith, Ann", "dave@localhost"), ("Jürgen M.", "erin@localhost"), ("Bob", "bob@localhost")]


def test_delete_moves_to_trash_and_a_student_never_reads_another_accounts_mail(hub):
    send(hub, "carol@example.org", ["bob@localhost"], b"Subject: for bob only\r\n\r\nbob's secret\r\n")
    send(hub, "carol@example.org", ["alice@localhost"], b"Subject: for alice\r\n\r\nhers\r\n")
    alice = WebClient(hub)
    alice.login("alice", "secret")
    assert "for bob only" not in alice.get("/mail/INBOX").text
    page = alice.get("/mail/INBOX/1")
    assert "hers" in page.text and "bob's secret" not in page.text
    for path in ("/mail/INBOX/2", "/mail/INBOX/2/anatomy", "/mail/INBOX/2/raw", "/mail/..%2f..%2fbob@localhost/1", "/mail/INBOX/1/part/9"):
        response = alice.get(path)
        assert response.status == 404, path
        assert "bob's secret" not in response.text
    refused = alice.post("/mail/INBOX/1/action", {"action": "delete", "csrf": "forged"})
    assert refused.status == 403
    assert alice.post("/mail/INBOX/1/action", {"action": "delete"}).status == 303
    assert "for alice" not in alice.get("/mail/INBOX").text
    assert "for alice" in alice.get("/mail/Trash").text


def test_the_message_list_pages_fifty_newest_first(start_hub):
    hub = start_hub("--store", "memory")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        for n in range(1, 56):
            smtp.sendmail("carol@example.org", ["alice@localhost"], f"Subject: number {n}\r\n\r\nx\r\n".encode())
    browser = WebClient(hub)
    browser.login("alice", "secret")
    first = browser.get("/mail/INBOX").text
    subjects = re.findall(r"number (\d+)</a>", first)
    assert subjects[:2] == ["55", "54"] and len(subjects) == 50
    second = browser.get("/mail/INBOX?page=2").text
    assert re.findall(r"number (\d+)</a>", second) == ["5", "4", "3", "2", "1"]
    state = browser.get("/mail/INBOX/state")
    assert '"count": 55' in state.text


def test_webmail_search_takes_words_and_imap_search_keys(hub):
    send(hub, "carol@example.org", ["alice@localhost"], b"From: Carol <carol@example.org>\r\nSubject: lunch at noon\r\n\r\nthe usual place\r\n")
    send(hub, "dave@example.org", ["alice@localhost"], b"From: Dave <dave@example.org>\r\nSubject: exam dates\r\n\r\nroom 2, the usual time\r\n")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    words = browser.get("/mail/INBOX?q=" + urllib.parse.quote("usual place")).text
    assert re.findall(r'data-uid="(\d+)"', words) == ["1"] and "1 message matches <code>" in words  # (it said "1 message match"; breaker2)
    keys = browser.get("/mail/INBOX?q=" + urllib.parse.quote('FROM dave SUBJECT "exam"')).text
    assert re.findall(r'data-uid="(\d+)"', keys) == ["2"]
    both = browser.get("/mail/INBOX?q=" + urllib.parse.quote("OR FROM carol FROM dave")).text
    assert re.findall(r'data-uid="(\d+)"', both) == ["2", "1"]  # newest first
    bad = browser.get("/mail/INBOX?q=" + urllib.parse.quote('SUBJECT "open'))
    assert bad.status == 200 and "could not be read" in bad.text and "Traceback" not in bad.text
    hostile = browser.get("/mail/INBOX?q=" + urllib.parse.quote('<script>alert(1)</script>')).text
    assert "<script>alert(1)</script>" not in hostile and "&lt;script&gt;" in hostile


def test_web_actions_reach_an_imap_session_in_idle_at_once(hub):
    import socket

    send(hub, "carol@example.org", ["alice@localhost"], b"Subject: first\r\n\r\none\r\n")
    send(hub, "carol@example.org", ["alice@localhost"], b"Subject: second\r\n\r\ntwo\r\n")
    imap = socket.create_connection(("127.0.0.1", hub.ports["imap"]), timeout=10)
    reader = imap.makefile("rb")

    def until(prefix: bytes) -> list[bytes]:
        lines = []
        while True:
            line = reader.readline()
            assert line, lines
            lines.append(line)
            if line.startswith(prefix):
                return lines

    reader.readline()
    imap.sendall(b"a LOGIN alice secret\r\na SELECT INBOX\r\n")
    until(b"a OK [READ-WRITE]")
    imap.sendall(b"i IDLE\r\n")
    until(b"+ ")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    assert browser.post("/mail/INBOX/1/action", {"action": "flag"}).status == 303
    flagged = until(b"* 1 FETCH")
    assert b"\\Flagged" in flagged[-1]
    assert browser.post("/mail/INBOX/2/action", {"action": "delete"}).status == 303
    until(b"* 2 EXPUNGE")
    imap.sendall(b"DONE\r\nz LOGOUT\r\n")
    until(b"z OK")
    imap.close()


def test_a_message_can_be_marked_unread_and_in_trash_delete_says_it_is_for_ever(hub):
    # The form action "unread" was there, no button for it; in Trash, Delete
    # (for good) read as in any other folder.
    send(hub, "carol@example.org", ["bob@localhost"], b"Subject: read me twice\r\n\r\nhi\r\n")
    browser = WebClient(hub)
    browser.login("bob", "hungry")
    page = browser.get("/mail/INBOX/1")
    assert ">Mark unread</button>" in page.text and ">Delete</button>" in page.text
    assert 'class="read" data-uid="1"' in browser.get("/mail/INBOX").text
    back = browser.post("/mail/INBOX/1/action", {"action": "unread"})
    assert back.status == 303 and back.header("Location") == "/mail/INBOX"
    assert 'class="unread" data-uid="1"' in browser.get("/mail/INBOX").text
    browser.get("/mail/INBOX/1")
    assert browser.post("/mail/INBOX/1/action", {"action": "delete"}).status == 303
    trash = browser.get("/mail/Trash/1")
    assert ">Delete for ever</button>" in trash.text


HTML_ONLY = (
    b"From: Carol <carol@example.org>\r\nTo: alice@localhost\r\nSubject: html only\r\nMessage-ID: <h1@example.org>\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Hello <b>Alice</b>,</p><p>the meeting is at <i>noon</i>, see <a href='https://example.org/plan'>the plan</a>.</p>"
    b"<ul><li>one</li><li>two</li></ul><script>steal()</script><style>p { color: red }</style>\r\n"
)


def _textarea(page: str) -> str:
    import html

    return html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S).group(1))


def test_a_reply_quotes_and_a_forward_carries_the_text_of_html_only_mail(hub):
    # Both took only a text/plain part: HTML-only mail was replied to with
    # nothing quoted and forwarded without its text.
    send(hub, "carol@example.org", ["alice@localhost"], HTML_ONLY)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    reply = _textarea(browser.get("/compose?reply=INBOX/1").text)
    assert "> Hello Alice,\n> \n> the meeting is at noon, see the plan <https://example.org/plan>.\n> \n> - one\n> - two" in reply
    forward = _textarea(browser.get("/compose?forward=INBOX/1").text)
    assert forward.endswith("Subject: html only\n\nHello Alice,\n\nthe meeting is at noon, see the plan <https://example.org/plan>.\n\n- one\n- two")
    for text in (reply, forward):
        assert "<" + "b>" not in text and "steal()" not in text and "color: red" not in text


def test_a_message_page_leads_back_to_the_folder_page_that_lists_it_and_to_its_neighbours(start_hub):
    hub = start_hub()
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        for n in range(1, 53):  # (50 a page, newest first: UIDs 1 and 2 are on page 2)
            imap.append("INBOX", None, None, f"Subject: number {n}\r\n\r\nx\r\n".encode())
    finally:
        imap.logout()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    oldest = browser.get("/mail/INBOX/1").text
    assert '<a href="/mail/INBOX?page=2" class="back">« INBOX</a>' in oldest
    assert '<a href="/mail/INBOX/2" rel="prev" class="newer">' in oldest and 'class="older"' not in oldest
    middle = browser.get("/mail/INBOX/30").text
    assert '<a href="/mail/INBOX" class="back">« INBOX</a>' in middle
    assert 'href="/mail/INBOX/31" rel="prev"' in middle and 'href="/mail/INBOX/29" rel="next"' in middle
    assert "number 1<" in browser.get("/mail/INBOX?page=2").text


def test_an_empty_folder_and_a_search_that_finds_nothing_say_so(hub):
    browser = WebClient(hub)
    browser.login("bob", "hungry")
    assert "No messages in this folder." in browser.get("/mail/INBOX").text
    send(hub, "carol@example.org", ["bob@localhost"], b"Subject: present\r\n\r\nhi\r\n")
    listing = browser.get("/mail/INBOX").text
    assert "No messages in this folder." not in listing and "present" in listing
    assert "No message matches." in browser.get("/mail/INBOX?q=absent").text


def test_a_reply_to_ones_own_sent_message_goes_to_its_recipients_not_back_to_oneself(start_hub):
    hub = start_hub(users=("alice:secret", "bob:hungry", "carol:chalk"))
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    sent = browser.post("/compose", {"to": "bob@localhost", "cc": "carol@localhost", "subject": "plans", "body": "shall we?"})
    assert sent.status == 303
    form = browser.get("/compose?reply=Sent/1").text
    assert re.search(r'name="to" value="bob@localhost"', form)
    form = browser.get("/compose?replyall=Sent/1").text
    assert re.search(r'name="to" value="bob@localhost"', form) and re.search(r'name="cc" value="carol@localhost"', form)


def test_trash_is_emptied_for_ever_of_what_its_page_listed_and_what_came_later_stays(start_hub):
    hub = start_hub()
    for n in (1, 2):
        send(hub, "carol@example.org", ["bob@localhost"], f"Subject: junk mail {n}\r\n\r\nbuy\r\n".encode())
    browser = WebClient(hub)
    browser.login("bob", "hungry")
    browser.get("/mail/INBOX")
    assert ">Empty" not in browser.get("/mail/INBOX").text
    for uid in (1, 2):
        assert browser.post(f"/mail/INBOX/{uid}/action", {"action": "delete"}).status == 303
    trash = browser.get("/mail/Trash").text
    assert ">Empty Trash</button>" in trash and 'data-confirm="Delete the 2 messages in Trash for ever?"' in trash
    below = re.search(r'name="below" value="(\d+)"', trash).group(1)
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        imap.append("Trash", None, None, b"Subject: put there meanwhile\r\n\r\nkeep\r\n")  # (after the page was made)
        emptied = browser.post("/mail/Trash/empty", {"below": below})
        assert emptied.status == 303 and emptied.header("Location") == "/mail/Trash"
        assert "Trash emptied: 2 messages deleted for ever." in browser.get("/mail/Trash").text
        typ, data = imap.select("Trash", readonly=True)
        assert int(data[0]) == 1
        typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"put there meanwhile" in data[0][1]
    finally:
        imap.logout()
    refused = browser.post("/mail/INBOX/empty", {"below": "99"})
    assert refused.status == 400 and "Only Trash and Junk" in refused.text
    assert browser.post("/mail/Trash/empty", {"below": "x"}).status == 400


def test_numeric_parameters_of_the_web_face_are_clamped_or_refused_with_a_400(start_hub):
    # ?page=99999999999999 (more than 12 digits) showed page 1; a page
    # that was no number showed page 1 too; an empty-the-Trash form with a
    # "below" past any UID (or past 12 digits) was read as "did not say".
    from tests.web_helpers import LiveSocket

    hub = start_hub("--store", "memory")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=10) as smtp:
        for n in range(1, 56):
            smtp.sendmail("carol@example.org", ["alice@localhost"], f"Subject: number {n}\r\n\r\nx\r\n".encode())
    browser = WebClient(hub)
    browser.login("alice", "secret")
    last = re.findall(r"number (\d+)</a>", browser.get("/mail/INBOX?page=2").text)
    assert last == ["5", "4", "3", "2", "1"]
    for page in ("3", "99999999999999", "9" * 5000, "0002"):
        assert re.findall(r"number (\d+)</a>", browser.get(f"/mail/INBOX?page={page}").text) == last, page
    assert re.findall(r"number (\d+)</a>", browser.get("/mail/INBOX?page=0").text)[:1] == ["55"]
    for page in ("abc", "-1", "1.5", "%C2%B2", "1e3"):
        refused = browser.get(f"/mail/INBOX?page={page}")
        assert refused.status == 400, (page, refused.status)
        assert "page wants a whole number from 1 to 2, not " in refused.text.replace("&#x27;", "'"), refused.text[:2000]
    # Emptying the Trash: the form's "below" is a UIDNEXT, 1 to 2**32.
    token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/mail/INBOX").text).group(1)
    assert browser.post("/mail/INBOX/1/action", {"action": "delete", "csrf": token}).status == 303
    for below in ("99999999999999", "4294967297", "x"):
        refused = browser.post("/mail/Trash/empty", {"below": below, "csrf": token})
        assert refused.status == 400 and "below wants a whole number from 1 to 4294967296" in refused.text, refused.text[:2000]
    assert "number 1<" in browser.get("/mail/Trash").text  # nothing deleted
    # The console's live socket: ?after= is an event number.
    assert LiveSocket(browser, "?after=abc").accepted is False
    assert browser.get("/console/live?after=abc").status == 400
    socket_ok = LiveSocket(browser, "?after=" + "9" * 30)
    assert socket_ok.accepted is True
    socket_ok.sock.close()


def test_a_compose_form_posted_after_a_restart_keeps_its_text_through_the_login(start_hub):
    # The hub restarted while the user typed: the POST had no session and
    # was answered with a redirect to the login page, and the text was lost.
    hub = start_hub()
    browser = WebClient(hub)
    assert browser.login("alice", "secret").status == 303
    token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/compose").text).group(1)
    hub.restart()  # every browser session is gone
    body = "Dear Bob,\r\n\r\nthe minutes of today's meeting <b>& more</b>.\r\n"
    page = browser.post("/compose", {"to": "bob@localhost", "subject": "Minutes", "body": body, "csrf": token}, csrf=False)
    assert page.status == 401, page.status
    text = page.text
    assert "your message was not sent. Log in and it comes back" in text.replace("&#x27;", "'")
    assert 'name="draft-subject" value="Minutes"' in text and 'name="draft-to" value="bob@localhost"' in text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', text))
    import html

    fields = {k: html.unescape(v) for k, v in fields.items()}
    assert fields["draft-body"] == body
    # A mistyped password: the draft is still held.
    wrong = browser.post("/login", {**fields, "username": "alice", "password": "nope"}, csrf=False)
    assert wrong.status == 401 and 'name="draft-subject" value="Minutes"' in wrong.text
    fields = {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', wrong.text)}
    again = browser.post("/login", {**fields, "username": "alice", "password": "secret"}, csrf=False)
    assert again.status == 200, again.status
    shown = html.unescape(again.text)
    assert "Your message was not sent: here it is as you typed it" in shown
    assert 'value="bob@localhost"' in again.text and 'value="Minutes"' in again.text
    assert "the minutes of today's meeting <b>& more</b>." in shown
    # Nothing was sent yet; Send sends it.
    new_token = re.search(r'name="csrf" value="([^"]+)"', again.text).group(1)
    sent = browser.post("/compose", {"to": "bob@localhost", "subject": "Minutes", "body": body, "csrf": new_token}, csrf=False)
    assert sent.status == 303, sent.text[:2000]
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    imap.login("bob", "hungry")
    assert imap.select("INBOX") == ("OK", [b"1"])
    data = imap.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1]
    assert b"the minutes of today's meeting <b>& more</b>." in data
    imap.logout()


def test_a_compose_form_of_an_older_session_comes_back_filled_not_lost(start_hub):
    hub = start_hub()
    browser = WebClient(hub)
    browser.login("alice", "secret")
    old = re.search(r'name="csrf" value="([^"]+)"', browser.get("/compose").text).group(1)
    browser.post("/logout", {"csrf": old}, csrf=False)
    browser.login("alice", "secret")  # a new session: the old form's token is stale
    page = browser.post("/compose", {"to": "bob@localhost", "subject": "Stale", "body": "kept text", "csrf": old}, csrf=False)
    assert page.status == 403
    assert "the message was not sent. Check it and press Send." in page.text.replace("&#x27;", "'")
    assert 'value="Stale"' in page.text and "kept text" in page.text


def test_compose_can_ask_for_a_delivery_report_and_it_arrives_over_imap(start_hub):
    hub = start_hub(users=("alice:secret", "bob:hungry"))
    browser = WebClient(hub)
    browser.login("alice", "secret")
    form = browser.get("/compose").text
    assert re.search(r'<input type="checkbox" name="dsn" value="yes"', form) and "Ask for a delivery report" in form
    assert browser.post("/compose", {"to": "bob@localhost", "subject": "no report", "body": "one"}).status == 303
    assert browser.post("/compose", {"to": "bob@localhost", "subject": "with report", "body": "two", "dsn": "yes"}).status == 303
    # The report is stored before the page says "sent" (RFC 3461 NOTIFY=SUCCESS,FAILURE).
    client = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        client.login("alice@localhost", "secret")
        client.select("INBOX", readonly=True)
        _, data = client.search(None, "ALL")
        found = [client.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in data[0].split()]
    finally:
        client.logout()
    [report] = found  # one report: none for the message sent without the box ticked
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed["Subject"] == "Successful Mail Delivery Report"
    _, status, headers = parsed.get_payload()
    assert "Final-Recipient: rfc822; bob@localhost" in status.as_string() and "Action: delivered" in status.as_string()
    assert "Subject: with report" in headers.as_string()


def test_compose_fields_that_are_not_utf8_are_a_form_error_not_replaced_unseen(hub):
    # A hand-made request (curl, a script, a page of another encoding)
    # with Latin-1 octets: they were turned into U+FFFD and sent without a
    # word ("Subject: Gr\ufffd\ufffde"). Now the form comes back saying so.
    browser = WebClient(hub)
    browser.login("alice", "secret")
    browser.get("/compose")
    boundary = "XyZ"
    parts = []
    for name, value in (("csrf", browser.csrf.encode()), ("to", b"bob"), ("subject", b"Gr\xfc\xdfe"), ("body", "caf\u00e9 ok".encode("utf-8"))):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    page = browser.request("POST", "/compose", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert page.status == 400, page.status
    assert "Not sent: The Subject came in octets that are not UTF-8, the form&#x27;s encoding" in page.text or (
        "Not sent: The Subject came in octets that are not UTF-8, the form's encoding" in page.text
    ), page.text[-2000:]
    assert 'value="Gr\ufffd\ufffde"' in page.text and "café ok" in page.text  # shown, to correct
    # urlencoded the same; nothing reached bob
    page = browser.post("/compose", {"to": "bob", "subject": "hi", "body": b"na\xefve"})
    assert page.status == 400 and "The message text came in octets that are not UTF-8" in page.text, page.text[-2000:]
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("bob", "hungry")
        assert imap.select("INBOX")[1] == [b"0"]
    finally:
        imap.logout()
    # Corrected (UTF-8), it goes.
    sent = browser.post("/compose", {"to": "bob", "subject": "Grüße", "body": "naïve"})
    assert sent.status == 303, sent.text[-2000:]


def test_the_anatomy_says_why_a_header_line_typed_without_a_colon_and_what_follows_are_body(hub):
    # Typed by hand in DATA: "To bob@localhost" (no colon), then "Subject: hi".
    # The hub puts the header's empty line before the first line that is no
    # header field (as Postfix does), so To and Subject are body text; the
    # anatomy showed that without a word of why.
    send(hub, "kim@example.org", ["alice@localhost"], b"From: kim@example.org\r\nTo alice@localhost\r\nSubject: typed\r\n\r\nhello\r\n")
    send(hub, "kim@example.org", ["alice@localhost"], b"From: kim@example.org\r\nSubject: fine\r\n\r\nto be honest, hello\r\n")
    browser = WebClient(hub)
    browser.login("alice", "secret")
    page = browser.get("/mail/INBOX/1/anatomy").text
    assert re.search(r"The header ends before the line <code>To alice@localhost</code>: it is no header field", page), page[-3000:]
    assert "put one there, as Postfix does" in page and "RFC 5322 §2.2" in page
    assert "The header ends before" not in browser.get("/mail/INBOX/2/anatomy").text


def test_a_reply_carries_the_references_of_the_message_it_answers(hub):
    # Found by breaker2: a webmail reply said "References: <m2@...>" only,
    # the parent's own Message-ID, dropping the thread before it; RFC 5322
    # §3.6.4: the parent's References followed by its Message-ID, or a
    # reader (and IMAP THREAD=REFERENCES) loses the thread.
    send(hub, "carol@example.org", ["alice@localhost"], (
        b"From: Carol <carol@example.org>\r\nSubject: Re: plan\r\nMessage-ID: <m2@example.org>\r\n"
        b"In-Reply-To: <m1@example.org>\r\nReferences: <m0@example.org>\r\n <m1@example.org>\r\n\r\nsecond\r\n"))
    browser = WebClient(hub)
    browser.login("alice", "secret")
    uid = max(int(u) for u in re.findall(r'href="/mail/INBOX/(\d+)"', browser.get("/mail/INBOX").text))
    form = browser.get(f"/compose?reply=INBOX/{uid}").text
    fields = {name: _field_value(form, name) for name in ("to", "subject", "in-reply-to", "references")}
    sent = browser.post("/compose", dict(fields, body="third"))
    assert sent.status == 303, sent.text[:3000]
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        imap.login("alice", "secret")
        imap.select("Sent")
        data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (In-Reply-To References)])")[1]
        header = email.message_from_bytes(data[-2][1], policy=email.policy.default)
    finally:
        imap.logout()
    assert header["In-Reply-To"] == "<m2@example.org>"
    assert header["References"].split() == ["<m0@example.org>", "<m1@example.org>", "<m2@example.org>"]
