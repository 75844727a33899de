"""
Two sessions moving the same messages at the same moment: each message
ends in exactly one folder, and the session that lost it is told so
(RFC 6851 §3.3: MOVE is atomic for each message; a message another session
moved away is not moved again, as with Dovecot). Before the store claimed
a message's file for a move, both sessions copied every message and both
answered OK [COPYUID ...] for all of them: each message ended in F1 and F2.
"""

from __future__ import annotations

import imaplib
import re
import threading

import pytest

MESSAGES = 9
ROUNDS = 6


def _session(hub) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=20)
    imap.login("alice", "secret")
    return imap


def _subjects(imap: imaplib.IMAP4, folder: str) -> list[str]:
    assert imap.select(folder)[0] == "OK"
    typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    if typ != "OK" or data == [None]:
        return []
    return [m.group(1).decode() for part in data if isinstance(part, tuple) for m in [re.search(rb"Subject: (\S+)", part[1])] if m]


def _moved_uids(text: bytes) -> int:
    """How many source UIDs a COPYUID response code names (RFC 4315 uid-set)."""
    m = re.search(rb"\[COPYUID \d+ ([0-9:,]+) ", text)
    if not m:
        return 0
    count = 0
    for run in m.group(1).split(b","):
        low, _, high = run.partition(b":")
        count += abs(int(high or low) - int(low)) + 1
    return count


def _movers(hub, workers: str) -> list[imaplib.IMAP4]:
    """Two logged-in sessions: under --workers 2, one on each worker (tests.test_workers.on_worker)."""
    if workers == "1":
        return [_session(hub), _session(hub)]
    from tests.test_workers import on_worker

    movers = [on_worker(hub, k, lambda timeout: imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=timeout)) for k in (0, 1)]
    for imap in movers:
        imap.login("alice", "secret")
    return movers


@pytest.mark.parametrize("workers", ["1", "2"])
def test_two_sessions_moving_the_same_messages_at_once_move_each_exactly_once(start_hub, workers):
    _race(start_hub("--workers", workers), workers)


def _race(hub, workers: str) -> None:
    setup = _session(hub)
    try:
        for name in ("F1", "F2"):
            assert setup.create(name)[0] == "OK"
        for round_ in range(ROUNDS):
            for i in range(MESSAGES):
                message = f"Subject: r{round_}m{i}\r\n\r\nbody {i}\r\n".encode()
                assert setup.append("INBOX", None, None, message)[0] == "OK"
            movers = _movers(hub, workers)
            for imap in movers:
                assert imap.select("INBOX")[0] == "OK"
            barrier = threading.Barrier(2)
            answers: list = [None, None]

            def move(k: int) -> None:
                imap = movers[k]
                barrier.wait()
                typ, data = imap.uid("MOVE", "1:*", f"F{k + 1}")
                answers[k] = (typ, data, imap.untagged_responses.get("OK", []), imap.untagged_responses.get("EXPUNGE", []))

            threads = [threading.Thread(target=move, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            for imap in movers:
                imap.logout()
            wanted = {f"r{round_}m{i}" for i in range(MESSAGES)}
            in_f1 = [s for s in _subjects(setup, "F1") if s in wanted]
            in_f2 = [s for s in _subjects(setup, "F2") if s in wanted]
            left = [s for s in _subjects(setup, "INBOX") if s in wanted]
            assert not left, f"round {round_}: left in INBOX: {left}"
            assert sorted(in_f1 + in_f2) == sorted(wanted), f"round {round_}: F1 {in_f1}, F2 {in_f2}"
            # Each session's COPYUID names only what it moved; a session
            # that moved nothing answers NO, not OK.
            moved = 0
            for k, (typ, data, untagged, expunged) in enumerate(answers):
                said = b" ".join(x for x in untagged + list(data) if isinstance(x, bytes))
                n = _moved_uids(said)
                assert n == len(in_f1 if k == 0 else in_f2), f"round {round_}: session {k + 1} said {said!r}"
                assert typ == ("OK" if n else "NO"), f"round {round_}: session {k + 1}: {typ} {data}"
                # Both sessions are told every message left INBOX, the
                # loser too (RFC 6851 §3.3), before the tagged answer.
                assert len(expunged) == MESSAGES, f"round {round_}: session {k + 1} got EXPUNGE {expunged}"
                moved += n
            assert moved == MESSAGES
    finally:
        setup.logout()
    assert "Traceback" not in hub.log


def test_webmail_delete_and_an_imap_move_of_one_message_at_once_move_it_once(start_hub):
    from tests.web_helpers import WebClient

    hub = start_hub()
    setup = _session(hub)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    try:
        assert setup.create("F1")[0] == "OK"
        for round_ in range(ROUNDS):
            subject = f"w{round_}"
            assert setup.append("INBOX", None, None, f"Subject: {subject}\r\n\r\nbody\r\n".encode())[0] == "OK"
            setup.select("INBOX")
            uid = setup.uid("SEARCH", None, "SUBJECT", subject)[1][0].decode()
            page = browser.get(f"/mail/INBOX/{uid}")
            token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            imap = _session(hub)
            assert imap.select("INBOX")[0] == "OK"
            barrier = threading.Barrier(2)
            answers: dict = {}

            def by_imap() -> None:
                barrier.wait()
                answers["imap"] = imap.uid("MOVE", uid, "F1")

            def by_web() -> None:
                barrier.wait()
                answers["web"] = browser.post(f"/mail/INBOX/{uid}/action", {"action": "delete", "csrf": token})

            threads = [threading.Thread(target=by_imap), threading.Thread(target=by_web)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            imap.logout()
            places = [f for f in ("F1", "Trash", "INBOX") for s in _subjects(setup, f) if s == subject]
            assert len(places) == 1 and places[0] != "INBOX", f"round {round_}: {subject} in {places}; {answers}"
            web = answers["web"]
            assert web.status in (303, 404), (web.status, web.text)
            assert answers["imap"][0] == ("OK" if places == ["F1"] else "NO"), answers
    finally:
        setup.logout()
    assert "Traceback" not in hub.log
