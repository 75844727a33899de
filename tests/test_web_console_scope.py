"""
Who sees what in the live console: a teacher every session; a student the
sessions logged in as itself (from anywhere) and the anonymous sessions
from its browser's address (its own typed nc session), but never a session
logged in as another account, even from the same address (a class behind
one NAT address, or on one machine). A session that logs in as another
account leaves a student's open list and session page at once.
"""

from __future__ import annotations

import re
import socket
import urllib.parse

from tests.web_helpers import LiveSocket, WebClient
from twisted_mailhub.transcript import SessionEvents
from twisted_mailhub.web.avatar import WebUser
from twisted_mailhub.web.console import can_see


def test_a_student_sees_its_own_logins_and_anonymous_sessions_from_its_address_a_teacher_everything():
    bus = SessionEvents()
    bob_here = bus.start("pop3", ("10.0.0.5", 40000), ("10.0.0.1", 110))
    bob_here.logged_in("bob@localhost")
    alice_far = bus.start("imap", ("192.0.2.9", 40001), ("10.0.0.1", 143))
    alice_far.logged_in("alice@localhost")
    typed_here = bus.start("smtp", ("10.0.0.5", 40002), ("10.0.0.1", 25))
    typed_far = bus.start("smtp", ("192.0.2.9", 40003), ("10.0.0.1", 25))
    alice = WebUser("alice@localhost", False)
    teacher = WebUser("carol@localhost", True)
    seen = {r.id for r in bus.sessions() if can_see(alice, "10.0.0.5", r)}
    assert seen == {alice_far.id, typed_here.id}
    assert {r.id for r in bus.sessions() if can_see(teacher, "203.0.113.1", r)} == {r.id for r in bus.sessions()}
    assert not can_see(None, "10.0.0.5", typed_here)
    # (the account's name in any case is the same account)
    assert can_see(WebUser("Alice@LOCALHOST", False), "203.0.113.1", alice_far)


def _pop3_login(hub, user: bytes, password: bytes, then: tuple = (b"QUIT",)) -> None:
    with socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10) as pop:
        reader = pop.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        for line in (b"USER " + user, b"PASS " + password, *then):
            pop.sendall(line + b"\r\n")
            assert reader.readline().startswith(b"+OK")


def test_a_student_does_not_see_another_accounts_session_from_the_same_address_but_its_own_typed_one(start_hub):
    hub = start_hub("--teacher", "carol", users=("alice:secret", "bob:hungry", "carol:chalk"))
    _pop3_login(hub, b"bob", b"hungry")  # from 127.0.0.1, as alice's browser
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as smtp:  # alice's own, typed
        reader = smtp.makefile("rb")
        assert reader.readline().startswith(b"220")
        smtp.sendall(b"QUIT\r\n")
        assert reader.readline().startswith(b"221")
    teacher = WebClient(hub)
    teacher.login("carol", "chalk")
    listing = teacher.get("/console").text
    [bobs] = re.findall(r'data-id="(pop3#\d+)"', listing)
    [typed] = re.findall(r'data-id="(smtp#\d+)"', listing)
    assert "every session on the hub" in listing
    alice = WebClient(hub)
    alice.login("alice", "secret")
    page = alice.get("/console").text
    assert typed in page and bobs not in page
    assert "a session that logs in as another account leaves this list" in page
    quoted = urllib.parse.quote(bobs, safe="")
    for path in ("/console/session/" + quoted, f"/console/session/{quoted}/transcript.txt", f"/console/session/{quoted}/transcript.md"):
        refused = alice.get(path)
        assert refused.status == 404 and "USER bob" not in refused.text
    assert alice.get("/console/session/" + urllib.parse.quote(typed, safe="")).status == 200
    bob = WebClient(hub)
    bob.login("bob", "hungry")
    assert bobs in bob.get("/console").text


def test_a_session_that_logs_in_as_another_account_leaves_a_students_live_list_and_page_at_once(start_hub):
    hub = start_hub(users=("alice:secret", "bob:hungry"))
    alice = WebClient(hub)
    alice.login("alice", "secret")
    listing = LiveSocket(alice)
    assert listing.accepted
    pop = socket.create_connection(("127.0.0.1", hub.ports["pop3"]), timeout=10)
    try:
        reader = pop.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        started = listing.wait_for(lambda u: u["type"] == "session" and u["session"]["protocol"] == "pop3")
        session_id = started["session"]["id"]
        watching = LiveSocket(alice, "?session=" + urllib.parse.quote(session_id, safe=""))
        assert watching.accepted
        watching.wait_for(lambda u: u["type"] == "event" and u["text"].startswith("+OK"))
        for line in (b"USER bob", b"PASS hungry", b"STAT"):
            pop.sendall(line + b"\r\n")
            assert reader.readline().startswith(b"+OK")
        assert listing.wait_for(lambda u: u["type"] == "hidden") == {"type": "hidden", "id": session_id}
        # Everything the page receives from here on: the hidden notice, and
        # nothing of the session after its login (no "+OK 0 0", no STAT).
        hidden = watching.wait_for(lambda u: u["type"] == "hidden" or (u["type"] == "event" and u["kind"] == "login"))
        assert hidden == {"type": "hidden", "id": session_id}
    finally:
        pop.close()
    # A later anonymous session of alice's address still shows; bob's never again.
    with socket.create_connection(("127.0.0.1", hub.ports["smtp"]), timeout=10) as smtp:
        assert smtp.makefile("rb").readline().startswith(b"220")
    later: list = []
    listing.wait_for(lambda u: later.append(u) or (u["type"] == "session" and u["session"]["protocol"] == "smtp"))
    assert all(u.get("id") != session_id and u.get("session", {}).get("id") != session_id for u in later)
    for sock in (listing, watching):
        sock.close()
