"""
SORT and THREAD (RFC 5256) and WITHIN (RFC 5032) end to end: the real hub,
imapclient and a raw socket.
"""

from __future__ import annotations

from tests.test_e2e_imap_rfc import raw_append, raw_login
from twisted_mailhub.imap.sort import base_subject


def message(subject: str, sender: str, date: str, message_id: str, references: str = "", size_pad: int = 0) -> bytes:
    head = f"From: {sender}\r\nTo: alice@localhost\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: {message_id}\r\n"
    if references:
        head += f"References: {references}\r\nIn-Reply-To: {references.split()[-1]}\r\n"
    return (head + "\r\nbody" + "x" * size_pad + "\r\n").encode()


CONVERSATION = [
    message("lunch", "Carol <carol@x.org>", "Mon, 1 Jan 2024 10:00:00 +0000", "<a@x>", size_pad=50),
    message("Re: lunch", "bob@x.org", "Mon, 1 Jan 2024 11:00:00 +0000", "<b@x>", "<a@x>"),
    message("report", "Alice <alice@x.org>", "Mon, 1 Jan 2024 09:00:00 +0000", "<c@x>", size_pad=10),
    message("Re: [list] Re: lunch", "dave@x.org", "Mon, 1 Jan 2024 12:00:00 +0000", "<d@x>", "<a@x> <b@x>"),
    message("Fwd: report (fwd)", "erin@x.org", "Mon, 1 Jan 2024 13:00:00 +0000", "<e@x>"),
    message("RE: lunch", "frank@x.org", "Sun, 31 Dec 2023 23:00:00 -0500", "<f@x>", "<a@x>"),
]


def test_base_subject_drops_prefixes_blobs_and_trailers():
    assert base_subject("Re: [list] Fwd: Lunch (fwd)") == ("lunch", True)
    assert base_subject("[Fwd: Report]") == ("report", True)
    assert base_subject("=?utf-8?q?Gr=C3=BC=C3=9Fe?=") == ("grüße", False)
    assert base_subject("[list]") == ("[list]", False)


def test_sort_by_criteria_with_reverse_and_uid(hub):
    r = raw_login(hub)
    for raw in CONVERSATION:
        raw_append(r, b"INBOX", raw)
    r.cmd(b"s", b"SELECT INBOX")
    # 6 was sent at 23:00 -0500, before the others in UTC
    assert r.cmd(b"a", b"SORT (DATE) UTF-8 ALL")[0] == b"* SORT 6 3 1 2 4 5"
    by_size = sorted(range(1, 7), key=lambda n: (-len(CONVERSATION[n - 1]), n))
    assert r.cmd(b"b", b"SORT (REVERSE SIZE) US-ASCII ALL")[0] == b"* SORT " + b" ".join(b"%d" % n for n in by_size)
    assert r.cmd(b"c", b"SORT (FROM) UTF-8 ALL")[0] == b"* SORT 3 2 1 4 5 6"
    assert r.cmd(b"d", b"SORT (SUBJECT DATE) UTF-8 SUBJECT lunch")[0] == b"* SORT 6 1 2 4"
    assert r.cmd(b"e", b"UID SORT (ARRIVAL) UTF-8 NOT SUBJECT lunch")[0] == b"* SORT 3 5"
    assert r.cmd(b"f", b"SORT (NOPE) UTF-8 ALL")[-1].startswith(b"f BAD ")
    assert r.cmd(b"g", b"SORT (DATE) KOI8-R ALL")[-1].startswith(b"g NO [BADCHARSET")
    r.close()


def test_thread_references_and_orderedsubject(hub):
    r = raw_login(hub)
    for raw in CONVERSATION:
        raw_append(r, b"INBOX", raw)
    r.cmd(b"s", b"SELECT INBOX")
    references = r.cmd(b"t", b"THREAD REFERENCES UTF-8 ALL")[0]
    # 5 ("Fwd: report") joins 3 by base subject; 6 and 2 answer 1, 4 answers 2
    assert references == b"* THREAD (3 5)(1 (6)(2 4))", references
    ordered = r.cmd(b"o", b"THREAD ORDEREDSUBJECT UTF-8 ALL")[0]
    assert ordered == b"* THREAD (6 (1)(2)(4))(3 5)", ordered
    assert r.cmd(b"u", b"UID THREAD REFERENCES UTF-8 SUBJECT report")[0] == b"* THREAD (3 5)"
    r.close()


def test_imapclient_sort_and_thread(hub):
    import imapclient

    client = imapclient.IMAPClient("127.0.0.1", port=hub.ports["imap"], ssl=False)
    client.login("alice", "secret")
    for raw in CONVERSATION:
        client.append("INBOX", raw)
    client.select_folder("INBOX")
    assert client.has_capability("SORT") and client.has_capability("THREAD=REFERENCES")
    assert client.sort(["DATE"]) == [6, 3, 1, 2, 4, 5]
    assert client.thread("REFERENCES") == ((3, 5), (1, (6,), (2, 4)))
    client.logout()


def test_within_older_and_younger(hub):
    r = raw_login(hub)
    old = b"Subject: old\r\n\r\nx\r\n"
    r.cmd(b"a", b'APPEND INBOX "01-Jan-2020 10:00:00 +0000" {%d+}\r\n' % len(old) + old)
    raw_append(r, b"INBOX", b"Subject: new\r\n\r\nx\r\n")
    assert b"WITHIN" in r.cmd(b"c", b"CAPABILITY")[0]
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"o", b"SEARCH OLDER 86400")[0] == b"* SEARCH 1"
    assert r.cmd(b"y", b"SEARCH YOUNGER %d" % 3600)[0] == b"* SEARCH 2"
    assert r.cmd(b"b", b"SEARCH YOUNGER soon")[-1].startswith(b"b BAD ")
    r.close()
