"""
Work whose cost grows with a mailbox runs off the reactor thread: while
one session's command does it, another session's NOOP is answered at
once (a real hub, real clients). The slow part is made slow on purpose
in the hub alone: a C{sitecustomize.py} on its PYTHONPATH
(L{SITECUSTOMIZE}), as tests/test_e2e_pg_search.py does for the database.

 - the memory store's SEARCH/SORT BODY over a big folder (its messages
   are matched in a parsing thread, as a Maildir's and PostgreSQL's
   are): reading a body (C{split_header} in imap/search.py) of a message
   holding C{slow-to-search} sleeps MAILHUB_TEST_SEARCH_DELAY seconds.
 - an FTP listing of a big folder (ftp/vfs.py's C{list}, SFTP READDIR's
   too, runs in the reactor's thread pool): a stat of a file named
   C{slow-to-list...} sleeps MAILHUB_TEST_STAT_DELAY seconds.
 - IMAP GETQUOTA and GETQUOTAROOT with --quota, which count the
   account's uploaded files on disk (filequota.tree_size walks them, in a
   worker thread): each walk sleeps MAILHUB_TEST_TREE_DELAY seconds.
"""

from __future__ import annotations

import ftplib
import io
import time

import pytest

from tests.test_e2e_imap import append, login
from tests.thread_helpers import pings_while

SITECUSTOMIZE = '''
import os, time
_delay = float(os.environ.get("MAILHUB_TEST_SEARCH_DELAY", "0"))
if _delay:
    from twisted_mailhub.imap import search as _search

    def _slow(real):
        def split_header(data, *args, **kwargs):
            if b"slow-to-search" in data:
                time.sleep(_delay)
            return real(data, *args, **kwargs)
        return split_header

    _search.split_header = _slow(_search.split_header)
_stat_delay = float(os.environ.get("MAILHUB_TEST_STAT_DELAY", "0"))
if _stat_delay:
    _real_stat = os.stat

    def _slow_stat(path, *args, **kwargs):
        if os.path.basename(os.fsdecode(path)).startswith("slow-to-list"):
            time.sleep(_stat_delay)
        return _real_stat(path, *args, **kwargs)

    os.stat = _slow_stat
_tree_delay = float(os.environ.get("MAILHUB_TEST_TREE_DELAY", "0"))
if _tree_delay:
    from twisted_mailhub import filequota as _filequota

    _real_tree_size = _filequota.tree_size

    def _slow_tree_size(root):
        time.sleep(_tree_delay)
        return _real_tree_size(root)

    _filequota.tree_size = _slow_tree_size
'''

SEARCH_DELAY = 0.04
MESSAGES = 80  # (more than the memory store matches in the reactor: READ_HERE_MESSAGES)


def ftp_upload(hub, name: str, octets: bytes) -> None:
    """Log in to C{hub}'s FTP as alice and store C{octets} as the file C{name} (STOR, RFC 959)."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.storbinary(f"STOR {name}", io.BytesIO(octets))
    f.quit()


@pytest.fixture
def slow_hub(start_hub, tmp_path):
    """C{slow_hub(*args, **env)}: a hub whose slowed parts (L{SITECUSTOMIZE}) sleep as C{env} says."""

    def start(*args: str, **env: str):
        faults = tmp_path / "faults"
        faults.mkdir(exist_ok=True)
        (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
        return start_hub(*args, env={"PYTHONPATH": str(faults), **env})

    return start


def search_message(n: int) -> bytes:
    word = "needle" if n % 10 == 3 else "hay"
    return (f"From: someone{n}@example.org\r\nSubject: message {n:03d}\r\n\r\nslow-to-search: the {word} word\r\n").encode()


@pytest.mark.parametrize("command", ["SEARCH", "SORT"])
def test_a_search_body_over_a_big_memory_folder_does_not_hold_another_session(slow_hub, command):
    hub = slow_hub("--no-ftp", "--store", "memory", MAILHUB_TEST_SEARCH_DELAY=str(SEARCH_DELAY))
    alice = login(hub)
    for n in range(MESSAGES):
        append(alice, message=search_message(n))
    alice.select("INBOX")
    result: dict = {}

    def search() -> None:
        began = time.monotonic()
        if command == "SEARCH":
            result["answer"] = alice.search(None, "BODY", "needle")
        else:
            result["answer"] = alice.sort("(REVERSE SUBJECT)", "UTF-8", "BODY", "needle")
        result["wall"] = time.monotonic() - began

    _, waits = pings_while(hub, search)
    found = [n + 1 for n in range(MESSAGES) if n % 10 == 3]
    if command == "SORT":
        found.reverse()
    assert result["answer"] == ("OK", [b" ".join(b"%d" % n for n in found)])
    # Every body was read, slowly; bob was answered meanwhile (before:
    # the memory store matched in the reactor, and each NOOP waited for
    # the whole search, some 3 s).
    assert result["wall"] >= MESSAGES * SEARCH_DELAY * 0.9, result
    assert len(waits) >= 5, waits
    assert max(waits) < 0.5, (max(waits), result)
    alice.logout()


def test_a_search_over_a_few_small_memory_messages_answers_as_before(slow_hub):
    # (matched in the reactor: fewer than READ_HERE_MESSAGES, no thread's round trip)
    hub = slow_hub("--no-ftp", "--store", "memory")
    alice = login(hub)
    for n in range(12):
        append(alice, message=search_message(n))
    alice.select("INBOX")
    assert alice.search(None, "BODY", "needle") == ("OK", [b"4"])
    assert alice.search(None, "NOT", "BODY", "needle") == ("OK", [b" ".join(b"%d" % n for n in range(1, 13) if n != 4)])
    alice.logout()


def test_an_ftp_listing_of_a_big_folder_on_a_slow_disk_does_not_hold_another_session(slow_hub):
    delay = 0.1
    hub = slow_hub(MAILHUB_TEST_STAT_DELAY=str(delay))
    f = ftplib.FTP()
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.mkd("big")
    f.cwd("big")
    names = [f"slow-to-list-{n:02d}.txt" for n in range(20)]
    for name in names:
        f.storbinary(f"STOR {name}", io.BytesIO(b"x" * 10))
    result: dict = {}

    def listing() -> None:
        began = time.monotonic()
        result["nlst"] = f.nlst()
        lines: list = []
        f.retrlines("LIST", lines.append)
        result["list"] = lines
        result["wall"] = time.monotonic() - began

    _, waits = pings_while(hub, listing)
    assert result["nlst"] == names
    assert [line.split()[-1] for line in result["list"]] == names
    assert all(line.split()[4] == "10" for line in result["list"]), result["list"]
    # 40 slowed stats; bob was answered meanwhile (before: each NOOP
    # waited for the whole listing, some 2 s each).
    assert result["wall"] >= 2 * len(names) * delay * 0.9, result
    assert len(waits) >= 5, waits
    assert max(waits) < 0.5, (max(waits), result["wall"])
    f.quit()


def test_getquota_counting_many_uploaded_files_on_a_slow_disk_does_not_hold_another_session(slow_hub):
    delay = 1.0
    hub = slow_hub("--quota", "10M", MAILHUB_TEST_TREE_DELAY=str(delay))
    ftp_upload(hub, "upload.bin", b"x" * 5000)
    alice = login(hub)
    append(alice, message=b"Subject: one\r\n\r\n" + b"y" * 3000 + b"\r\n")
    result: dict = {}

    def getquota() -> None:
        result["quota"] = alice._simple_command("GETQUOTA", '""')
        result["quota data"] = alice._untagged_response(*result["quota"], "QUOTA")[1]
        result["root"] = alice._simple_command("GETQUOTAROOT", "INBOX")
        result["root data"] = alice._untagged_response(*result["root"], "QUOTA")[1]

    _, waits = pings_while(hub, getquota)
    # 5000 octets of files and a message of some 3 KB: 8 KiB used, rounded up.
    assert result["quota"][0] == "OK" and result["root"][0] == "OK", result
    assert result["quota data"] == [b'"" (STORAGE 8 10240)'], result
    assert result["root data"] == [b'"" (STORAGE 8 10240)'], result
    # Two slowed walks of alice's files; bob was answered meanwhile
    # (before: a NOOP waited a whole walk, 1 s).
    assert len(waits) >= 5, waits
    assert max(waits) < delay / 2, (max(waits), waits)
    alice.logout()


def test_sftp_df_counting_the_uploaded_files_on_a_slow_disk_does_not_hold_another_session(slow_hub):
    from tests.test_sftp_df import df  # (OpenSSH's sftp, its df)

    delay = 1.0
    hub = slow_hub("--quota", "2M", MAILHUB_TEST_TREE_DELAY=str(delay))
    ftp_upload(hub, "up.bin", b"x" * 300_000)
    shown, waits = pings_while(hub, lambda: df(hub))
    size, used, avail = shown
    assert size == 2048 and used >= 292 and avail == size - used, shown
    # One slowed walk of alice's files; bob was answered meanwhile
    # (before: a NOOP waited the whole walk, 1 s).
    assert max(waits) < delay / 2, (max(waits), waits)
