"""
IMAP SEARCH, SORT and THREAD, the web search and the JSON API's over the
PostgreSQL store (C{--store postgresql:DSN}), with a real hub, a real
PostgreSQL and real clients: the messages are read from the database and
matched in a worker thread, so another session is answered meanwhile
however slow the database is, and every answer is the one the Maildir
store gives for the same messages.

The database is made slow in the hub alone: a C{sitecustomize.py} on its
PYTHONPATH (L{SITECUSTOMIZE}) sleeps before every read of message bytes
(C{ByteaBlobs.get}, C{heads}, C{read}), MAILHUB_TEST_BLOB_DELAY seconds.
"""

from __future__ import annotations

import base64
import concurrent.futures
import imaplib
import json
import re
import time
import urllib.parse
import urllib.request

import pytest

from tests.test_e2e_imap import Raw, append, login
from tests.thread_helpers import pings_while

SITECUSTOMIZE = '''
import os, time
_delay = float(os.environ.get("MAILHUB_TEST_BLOB_DELAY", "0"))
if _delay:
    from twisted_mailhub.store import blobs as _blobs

    def _slow(real):
        def read(self, *args, **kwargs):
            time.sleep(_delay)
            return real(self, *args, **kwargs)
        return read

    for _name in ("get", "heads", "read"):
        if hasattr(_blobs.ByteaBlobs, _name):
            setattr(_blobs.ByteaBlobs, _name, _slow(getattr(_blobs.ByteaBlobs, _name)))
'''

DELAY = 0.4


def message(n: int) -> bytes:
    """Message C{n} of a small folder with something for every kind of key."""
    subjects = [
        "lunch at noon",
        "=?utf-8?q?caf=C3=A9_au_lait?=",  # (RFC 2047: found as "café")
        "Re: lunch at noon",
        "quarterly report",
        "=?iso-8859-1?b?R3L832U=?=",  # ("Grüße", Latin-1, base64)
    ]
    senders = ["Bob <bob@localhost>", '"Carol (work)" <carol@example.org>', "dave@example.org"]
    subject = subjects[n % len(subjects)]
    sender = senders[n % len(senders)]
    body = f"line one of message {n}\r\n" + ("the NEEDLE is here\r\n" if n % 3 == 0 else "nothing to see\r\n")
    if n % 4 == 0:
        body += "=?utf-8?q?not_decoded_in_a_body?=\r\n"
    header = f"From: {sender}\r\nTo: alice@localhost\r\nSubject: {subject}\r\nDate: {1 + n % 27} Nov 2026 10:00:00 +0000\r\nMessage-ID: <m{n}@example.org>\r\n"
    if n % 5 == 2:
        header += f"In-Reply-To: <m{n - 2}@example.org>\r\nReferences: <m{n - 2}@example.org>\r\nX-Tag: \r\n blue\r\n"
    return (header + "\r\n" + body).encode("utf-8")


QUERIES = [
    ("SEARCH", "BODY needle"),
    ("SEARCH", "TEXT NEEDLE"),
    ("SEARCH", "NOT BODY needle"),
    ("SEARCH", "BODY not_decoded"),
    ("SEARCH", "SUBJECT café"),
    ("SEARCH", "SUBJECT grüße"),
    ("SEARCH", "SUBJECT lunch BODY needle"),
    ("SEARCH", "FROM carol"),
    ("SEARCH", "FROM carol@example.org"),
    ("SEARCH", "OR FROM dave TEXT here"),
    ("SEARCH", "HEADER X-Tag blue"),
    ("SEARCH", "HEADER In-Reply-To \"\""),
    ("SEARCH", "SENTON 3-Nov-2026"),
    ("SEARCH", "SENTSINCE 20-Nov-2026 BODY needle"),
    ("SEARCH", "UNSEEN BODY needle"),
    ("UID SEARCH", "RETURN (MIN MAX COUNT) BODY needle"),
    ("SORT", "(SUBJECT) UTF-8 BODY needle"),
    ("SORT", "(REVERSE FROM) UTF-8 ALL"),
    ("SORT", "(DATE) UTF-8 TEXT lunch"),
    ("THREAD", "REFERENCES UTF-8 ALL"),
    ("THREAD", "ORDEREDSUBJECT UTF-8 TEXT noon"),
]


def answers(hub) -> dict[str, list]:
    """What each of L{QUERIES} answers on C{hub}'s INBOX (untagged data and the tagged result)."""
    c = login(hub)
    c.select("INBOX")
    out = {}
    for command, keys in QUERIES:
        out[f"{command} {keys}"] = list(_send(c, command, keys))
    c.logout()
    return out


def _send(c: imaplib.IMAP4, command: str, keys: str):
    """C{command keys} (keys as typed, UTF-8 as a literal where needed), its untagged answers."""
    raw = keys.encode("utf-8")
    if any(b > 127 for b in raw):
        # (the last word, the only non-ASCII one here, as a literal)
        words = raw.split(b" ")
        c.literal = words[-1]
        raw = b" ".join(words[:-1])
    name = command.split()[-1]
    if command.startswith("UID"):
        typ, data = c._simple_command("UID", name, raw.decode("utf-8"))
    else:
        typ, data = c._simple_command(name, raw.decode("utf-8"))
    kind = "ESEARCH" if b"RETURN" in raw else name
    found = c._untagged_response(typ, data, kind)[1]
    return typ, [re.sub(rb'^\(TAG "[^"]*"\)', b"(TAG)", d) if isinstance(d, bytes) else d for d in found]


def fill(hub, count: int) -> None:
    c = login(hub)
    for n in range(count):
        append(c, message=message(n), flags="\\Seen" if n % 2 else None)
    c.logout()


@pytest.fixture
def slow_pg_hub(start_hub, pg_dsn, tmp_path):
    """C{slow_pg_hub(delay)}: a hub on a new PostgreSQL database whose every read of message bytes sleeps C{delay} s."""

    def start(delay: float):
        faults = tmp_path / "faults"
        faults.mkdir(exist_ok=True)
        (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
        return start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp", env={"PYTHONPATH": str(faults), "MAILHUB_TEST_BLOB_DELAY": str(delay)})

    return start


def test_search_sort_and_thread_answer_on_postgresql_as_on_maildir(start_hub, pg_dsn):
    maildir = start_hub("--no-ftp")
    postgres = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    for hub in (maildir, postgres):
        fill(hub, 30)
    on_maildir, on_postgres = answers(maildir), answers(postgres)
    assert on_postgres == on_maildir
    # (and they are the right answers: a few by hand)
    assert on_postgres["SEARCH BODY needle"] == ["OK", [b"1 4 7 10 13 16 19 22 25 28"]]
    assert on_postgres["SEARCH SUBJECT café"] == ["OK", [b"2 7 12 17 22 27"]]
    assert on_postgres["SEARCH BODY not_decoded"] == ["OK", [b"1 5 9 13 17 21 25 29"]]
    assert on_postgres["SEARCH HEADER X-Tag blue"] == ["OK", [b"3 8 13 18 23 28"]]
    assert on_postgres["SEARCH UNSEEN BODY needle"] == ["OK", [b"1 7 13 19 25"]]


def test_a_long_search_body_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    fill(hub, 60)
    alice = login(hub)
    alice.select("INBOX")
    result: dict = {}

    def search() -> None:
        began = time.monotonic()
        result["answer"] = alice.search(None, "BODY", "needle")
        result["wall"] = time.monotonic() - began

    _, waits = pings_while(hub, search)
    assert result["answer"] == ("OK", [b" ".join(b"%d" % n for n in range(1, 61, 3))])
    # The reads took several slowed round trips; bob was answered
    # meanwhile (before: each NOOP waited for the whole search).
    assert result["wall"] >= 2 * DELAY, result
    assert len(waits) >= 3, waits
    assert max(waits) < DELAY / 2, (waits, result)
    alice.logout()


def test_a_live_search_on_a_slow_postgresql_matches_a_new_message_without_holding_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    fill(hub, 6)
    watcher = Raw(hub.ports["imap"])
    watcher.cmd(b"a", b"LOGIN alice secret")
    watcher.cmd(b"b", b"SELECT INBOX")
    lines = watcher.cmd(b"c", b"UID SEARCH RETURN (UPDATE ALL) BODY needle")
    assert lines[-2:] == [b'* ESEARCH (TAG "c") UID ALL 1,4', b"c OK SEARCH completed"], lines
    other = login(hub)
    append(other, message=message(6))  # (UID 7, the needle in its body)
    append(other, message=message(7))
    other.logout()
    lines, waits = pings_while(hub, lambda: watcher.cmd(b"d", b"NOOP"))
    # EXISTS, then the update, then the reply (RFC 5267 §4.2), as before
    assert lines[0] == b"* 8 EXISTS", lines
    assert lines[-2:] == [b'* ESEARCH (TAG "c") UID ADDTO (0 7)', b"d OK NOOP completed"], lines
    # (before: the new messages were read in the reactor: bob waited for
    # the slowed read)
    assert max(waits) < DELAY / 2, waits
    watcher.close()


def test_the_apis_wait_on_a_slow_postgresql_matches_a_new_message_without_holding_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    fill(hub, 2)
    url = f"http://127.0.0.1:{hub.ports['web']}/api/v1/accounts/me/folders/INBOX/wait?timeout=20&after_uid=2&search=" + urllib.parse.quote("BODY needle")

    def wait():
        request = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def arrive_and_wait():
        waiter = concurrent.futures.ThreadPoolExecutor(1)
        answer = waiter.submit(wait)
        other = login(hub)
        append(other, message=message(1))  # (UID 3: no needle)
        append(other, message=message(3))  # (UID 4: the needle)
        other.logout()
        try:
            return answer.result(30)
        finally:
            waiter.shutdown()

    answer, waits = pings_while(hub, arrive_and_wait)
    assert answer["timed_out"] is False and answer["message"]["uid"] == 4, answer
    assert answer["message"]["subject"] == "quarterly report", answer
    # (before: the arrivals and the summary's header were read in the reactor)
    assert max(waits) < DELAY / 2, waits


def test_fetch_bodystructure_of_a_big_message_on_a_slow_postgresql_does_not_hold_another_session(slow_pg_hub):
    hub = slow_pg_hub(DELAY)
    big = message(0).replace(b"\r\n\r\n", b"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n", 1) + b"a long line of words in a big message\r\n" * 40000
    assert len(big) > 1024 * 1024  # (imap/fetch.py STREAM_OVER)
    c = login(hub)
    append(c, message=big)
    c.select("INBOX")
    (typ, data), waits = pings_while(hub, lambda: c.fetch("1", "(BODYSTRUCTURE)"))
    assert typ == "OK" and b'("TEXT" "PLAIN"' in data[0].upper(), data
    # (before: the message was read in the reactor, every slowed slice)
    assert len(waits) >= 3 and max(waits) < DELAY / 2, waits
    c.logout()


def test_a_search_when_the_database_is_down_says_unavailable_then_works_again(start_hub, pg_dsn, postgresql):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    fill(hub, 4)
    c = login(hub)
    c.select("INBOX")
    postgresql.stop()
    try:
        for keys in (("BODY", "needle"), ("FROM", "carol")):
            typ, data = c.search(None, *keys)
            assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), (keys, data)
        typ, data = c.sort("(SUBJECT)", "UTF-8", "BODY", "needle")
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        typ, data = c.noop()
        assert typ == "OK", data  # the session goes on
    finally:
        postgresql.restart()
    assert c.search(None, "BODY", "needle") == ("OK", [b"1 4"])
    c.logout()
    assert "Traceback" not in hub.log
