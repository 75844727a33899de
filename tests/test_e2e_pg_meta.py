"""
Flag changes, expunges and SELECT over the PostgreSQL store
(C{--store postgresql:DSN}), with a real hub, a real PostgreSQL and real
clients: their transactions run on the store's own connection in a worker
thread (L{twisted_mailhub.store.postgresql.MetaConnection}), so another
session is answered meanwhile however slow the database is; the tagged OK
still comes after COMMIT, and two sessions writing one folder still get
unique, increasing modseqs.

The database is slowed in the hub alone: a C{sitecustomize.py} on its
PYTHONPATH (L{SITECUSTOMIZE}) sleeps before every call on a
L{Database<twisted_mailhub.store.postgresql.Database>} connection (the
reactor's, and the worker thread's), for as many seconds as the file
named by MAILHUB_TEST_DB_DELAY_FILE says while it exists: the test fills
the folders at full speed, then slows the database.
"""

from __future__ import annotations

import base64
import imaplib
import json
import poplib
import re
import threading
import time
import urllib.request

import pytest

from tests.test_e2e_imap import append, login
from tests.test_e2e_pg_search import message, pings_while

SITECUSTOMIZE = '''
import os, time
_file = os.environ.get("MAILHUB_TEST_DB_DELAY_FILE")
if _file:
    from twisted_mailhub.store import postgresql as _pg

    _real = _pg.Database.run

    def run(self, function, *args, **options):
        try:
            with open(_file) as f:
                time.sleep(float(f.read() or "0"))
        except FileNotFoundError:
            pass
        return _real(self, function, *args, **options)

    _pg.Database.run = run
'''

DELAY = 0.4


@pytest.fixture
def slow_db_hub(start_hub, pg_dsn, tmp_path):
    """
    A hub on a new PostgreSQL database, and C{slow(seconds)}: from then on
    every call on its L{Database} connections sleeps that long first.
    """
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    switch = tmp_path / "db-delay"
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp", env={"PYTHONPATH": str(faults), "MAILHUB_TEST_DB_DELAY_FILE": str(switch)})

    def slow(seconds: float) -> None:
        switch.write_text(str(seconds))

    return hub, slow


def filled(hub, count: int, folder: str = "INBOX") -> imaplib.IMAP4:
    """Alice's session after APPENDing C{count} messages to C{folder}."""
    c = login(hub)
    for n in range(count):
        append(c, folder=folder, message=message(n))
    return c


def test_store_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    alice = filled(hub, 10)
    alice.select("INBOX")
    slow(DELAY)
    answer, waits = pings_while(hub, lambda: alice.store("2:9", "+FLAGS", "(\\Flagged)"))
    typ, data = answer
    assert typ == "OK", answer
    assert [d.split(b" ")[0] for d in data] == [b"%d" % n for n in range(2, 10)], data
    assert all(b"\\Flagged" in d for d in data), data
    # Bob was answered while the slowed transaction ran (before: his one
    # NOOP waited for it, 0.4 s).
    assert max(waits) < DELAY / 2, waits
    slow(0)
    # Committed when OK came: another session sees it.
    other = login(hub)
    other.select("INBOX")
    assert other.search(None, "FLAGGED") == ("OK", [b"2 3 4 5 6 7 8 9"])
    other.logout()
    alice.logout()


def test_expunge_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    alice = filled(hub, 10)
    alice.select("INBOX")
    assert alice.store("2,4,6", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
    slow(DELAY)
    answer, waits = pings_while(hub, alice.expunge)
    assert answer == ("OK", [b"2", b"3", b"4"]), answer
    assert max(waits) < DELAY / 2, waits
    slow(0)
    other = login(hub)
    assert other.select("INBOX") == ("OK", [b"7"])
    other.logout()
    alice.logout()


def test_two_sessions_storing_in_one_folder_get_unique_increasing_modseqs(start_hub, pg_dsn):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--no-ftp")
    filled(hub, 20).logout()
    seen: dict[str, list[int]] = {}

    def store_each(name: str, numbers: range) -> None:
        c = login(hub)
        c.enable("CONDSTORE")
        c.select("INBOX")
        got = []
        for n in numbers:
            typ, data = c.store(str(n), "+FLAGS", "(\\Flagged)")
            assert typ == "OK", data
            # (the other session's changes come as FETCH responses too)
            own = [d for d in data if d.startswith(b"%d (" % n)]
            got.append(int(re.search(rb"MODSEQ \((\d+)\)", own[-1]).group(1)))
        seen[name] = got
        c.logout()

    sessions = [threading.Thread(target=store_each, args=(name, numbers)) for name, numbers in (("one", range(1, 11)), ("two", range(11, 21)))]
    for t in sessions:
        t.start()
    for t in sessions:
        t.join()
    everything = seen["one"] + seen["two"]
    assert len(set(everything)) == 20, seen
    assert seen["one"] == sorted(seen["one"]) and seen["two"] == sorted(seen["two"]), seen
    # What a new session reads back is what each STORE said.
    c = login(hub)
    c.enable("CONDSTORE")
    c.select("INBOX")
    typ, data = c.fetch("1:20", "(MODSEQ)")
    assert sorted(int(re.search(rb"MODSEQ \((\d+)\)", d).group(1)) for d in data) == sorted(everything), (data, seen)
    c.logout()


@pytest.mark.parametrize("command", ["SELECT", "EXAMINE"])
def test_select_of_a_folder_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub, command):
    hub, slow = slow_db_hub
    alice = filled(hub, 6, folder="Archive")
    alice.select("INBOX")
    slow(DELAY)

    def select() -> dict:
        typ, data = alice.select("Archive", readonly=command == "EXAMINE")
        assert typ == "OK", data
        return dict(alice.untagged_responses)

    answer, waits = pings_while(hub, select)
    assert answer["EXISTS"][-1] == b"6", answer
    assert answer["RECENT"][-1] == b"6", answer
    assert answer["UIDNEXT"][-1] == b"7", answer
    # (before: 5 reads on the reactor's connection, 2.0 s)
    assert max(waits) < DELAY / 2, waits
    slow(0)
    # SELECT took \Recent, EXAMINE left it (RFC 3501 §6.3.2).
    other = login(hub)
    other.select("Archive", readonly=True)
    assert other.untagged_responses["RECENT"][-1] == (b"0" if command == "SELECT" else b"6")
    other.logout()
    alice.logout()


def api_get(hub, path: str) -> dict:
    """GET /api/v1/C{path} as alice (HTTP basic): the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/{path}", headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


def test_the_apis_folder_list_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    alice = filled(hub, 5)
    for n in range(3):
        append(alice, folder="Archive", message=message(n))
    alice.select("INBOX")
    alice.store("1,2", "+FLAGS", "(\\Seen)")
    alice.logout()
    api_get(hub, "accounts/me/folders")  # (the account is known to the web face)
    slow(DELAY)
    answer, waits = pings_while(hub, lambda: api_get(hub, "accounts/me/folders"))
    folders = {f["name"]: (f["messages"], f["unseen"]) for f in answer["folders"]}
    assert answer["folders"][0]["name"] == "INBOX", answer
    assert folders["INBOX"] == (5, 3) and folders["Archive"] == (3, 3), answer
    assert [f["name"] for f in answer["folders"][1:]] == sorted(folders.keys() - {"INBOX"}), answer
    # (before: three reads a folder on the reactor's connection, 6.0 s)
    assert max(waits) < DELAY / 2, waits


def test_pop3_quit_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    filled(hub, 5).logout()
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    p.user("alice")
    p.pass_("secret")
    p.retr(3)
    p.dele(1)
    p.dele(2)
    slow(DELAY)
    answer, waits = pings_while(hub, p.quit)
    assert answer.startswith(b"+OK") and b"2 messages deleted" in answer, answer
    # (before: the \Seen and the expunge on the reactor's connection, 0.8 s)
    assert max(waits) < DELAY / 2, waits
    slow(0)
    # Done when +OK came: the rest are there, the one retrieved is \Seen.
    c = login(hub)
    c.select("INBOX")
    flags = c.fetch("1:*", "(FLAGS)")[1]
    assert len(flags) == 3 and [b"\\Seen" in f for f in flags] == [True, False, False], flags
    c.logout()


def test_a_database_lost_during_a_slow_store_select_or_quit_gives_a_protocol_error_and_the_session_goes_on(slow_db_hub, postgresql):
    hub, slow = slow_db_hub
    alice = filled(hub, 4)
    alice.select("INBOX")
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    p.user("alice")
    p.pass_("secret")
    p.dele(4)
    before = len(hub.log)
    slow(1.0)
    answers: dict = {}

    def store() -> None:
        answers["STORE"] = alice._simple_command("STORE", "1", "+FLAGS", "(\\Flagged)")
        answers["SELECT"] = alice._simple_command("SELECT", "Archive")

    doer = threading.Thread(target=store)
    doer.start()
    try:
        # (each call sleeps 1 s first; the server goes during the STORE's)
        time.sleep(0.3)
        postgresql.stop()
        doer.join()
        with pytest.raises(poplib.error_proto, match=r"^b.-ERR \[SYS/TEMP\] "):
            p.quit()
    finally:
        slow(0)
        postgresql.restart()
    for command in ("STORE", "SELECT"):
        typ, data = answers[command]
        assert typ == "NO" and data[-1].startswith(b"[UNAVAILABLE]"), (command, answers)
    during = hub.log[before:]
    assert "Traceback" not in during and " at 0x" not in during, during
    # The session goes on, and the store works again.
    assert alice.noop()[0] == "OK"
    assert alice.select("INBOX")[0] == "OK"
    typ, data = alice.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0], data
    alice.logout()


def test_a_pop3_login_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    c = filled(hub, 4)
    # One message whose 8-bit header a session without UTF8 is sent
    # downgraded (RFC 6856 §3): STAT counts it as sent.
    eight_bit = "From: Zoë <zoe@example.org>\r\nSubject: café\r\n\r\nhi\r\n".encode("utf-8")
    append(c, message=eight_bit)
    c.logout()
    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    p.user("alice")
    p.pass_("secret")
    expected = p.stat()
    listed = p.list()[1]
    p.quit()
    # (its encoded words are longer than the raw UTF-8)
    assert int(listed[4].split()[1]) > len(eight_bit), listed
    slow(DELAY)

    def login_and_stat():
        p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
        p.user("alice")
        p.pass_("secret")
        return p, p.stat(), p.list()[1]

    (p, stat, listing), waits = pings_while(hub, login_and_stat)
    assert stat == expected and listing == listed, (stat, expected, listing, listed)
    # (before: the lock, the INBOX and its sizes on the reactor's connection, 2.0 s)
    assert max(waits) < DELAY / 2, waits
    slow(0)
    # One session per maildrop (RFC 1939 §8) still holds, and QUIT gives it back.
    other = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    other.user("alice")
    with pytest.raises(poplib.error_proto, match="in use"):
        other.pass_("secret")
    p.quit()
    other = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=60)
    other.user("alice")
    other.pass_("secret")
    assert other.stat() == expected
    other.quit()


def api_call(hub, method: str, path: str, body: dict | None = None) -> dict:
    """C{method} /api/v1/C{path} as alice with a JSON body: the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.ports['web']}/api/v1/{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
        return json.loads(reply.read())


def test_the_apis_flag_change_message_list_and_delete_on_a_slow_postgresql_do_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    filled(hub, 4).logout()
    api_get(hub, "accounts/me/folders")
    slow(DELAY)
    box = "accounts/me/folders/INBOX/messages"
    flagged, waits = pings_while(hub, lambda: api_call(hub, "POST", f"{box}/2/flags", {"add": ["\\Flagged"]}))
    assert "\\Flagged" in json.dumps(flagged), flagged
    assert max(waits) < DELAY / 2, ("flags", waits)  # (before: 1.2 s)
    listed, waits = pings_while(hub, lambda: api_get(hub, box))
    assert listed["total"] == 4, listed
    assert max(waits) < DELAY / 2, ("messages", waits)  # (before: 0.8 s)
    deleted, waits = pings_while(hub, lambda: api_call(hub, "DELETE", f"{box}/3"))
    assert deleted == {"deleted": 3}, deleted
    assert max(waits) < DELAY / 2, ("delete", waits)  # (before: 0.8 s)
    slow(0)
    c = login(hub)
    c.select("INBOX")
    assert c.uid("SEARCH", None, "ALL") == ("OK", [b"1 2 4"])
    assert c.uid("SEARCH", None, "FLAGGED") == ("OK", [b"2"])
    c.logout()


def test_status_on_a_slow_postgresql_does_not_hold_another_session(slow_db_hub):
    hub, slow = slow_db_hub
    alice = filled(hub, 3, folder="Archive")
    append(alice, folder="Archive", message=message(7), flags="\\Seen")
    alice.select("INBOX")
    slow(DELAY)
    answer, waits = pings_while(hub, lambda: alice.status("Archive", "(MESSAGES RECENT UIDNEXT UNSEEN HIGHESTMODSEQ)"))
    typ, data = answer
    assert typ == "OK" and re.search(rb"MESSAGES 4 RECENT 4 UIDNEXT 5 UNSEEN 3 HIGHESTMODSEQ \d+\)", data[0]), answer
    # (before: the folder, its cache, \Recent, UIDNEXT and HIGHESTMODSEQ on the reactor's connection, 1.2 s)
    assert max(waits) < DELAY / 2, waits
    slow(0)
    # STATUS changed nothing: a SELECT still takes the 4 \Recent.
    assert alice.select("Archive")[0] == "OK" and alice.untagged_responses["RECENT"][-1] == b"4"
    alice.logout()
