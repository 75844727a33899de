"""
An accounts file as a teacher makes it: in Windows' Notepad (a UTF-8 BOM
first, CRLF line ends) or with a typo in C{--teacher}. The first account
must still log in, and a C{--teacher} that names no account is said.
"""

from __future__ import annotations

import imaplib
import subprocess
import sys

import pytest

from tests.web_helpers import WebClient
from twisted_mailhub.testing import PACKAGE_ROOT, MailhubStartError


def notepad_file(tmp_path) -> str:
    path = tmp_path / "class.txt"
    path.write_bytes("\ufeffteacher:chalk\r\nalice:secret\r\n# the class\r\n".encode("utf-8"))
    return str(path)


def test_a_notepad_accounts_file_with_a_bom_logs_in_its_first_account(start_hub, tmp_path):
    hub = start_hub("--auth", "file:" + notepad_file(tmp_path), "--teacher", "teacher", users=())
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        assert imap.login("teacher", "chalk")[0] == "OK"
    finally:
        imap.logout()
    teacher = WebClient(hub)
    teacher.login("teacher", "chalk")
    assert "<strong>teacher@localhost</strong> (teacher: sees every session)" in teacher.get("/").text
    assert "is not an account" not in hub.log


def test_mailhub_admin_lists_and_keeps_the_first_account_of_a_notepad_file(tmp_path):
    path = notepad_file(tmp_path)
    admin = [sys.executable, "-m", "twisted_mailhub.admin"]
    env = {"PYTHONPATH": PACKAGE_ROOT, "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(admin + ["user", "list", "--accounts", path], capture_output=True, text=True, env=env, timeout=60)
    assert sorted(listed.stdout.splitlines()) == ["alice@localhost\tplain", "teacher@localhost\tplain"]
    subprocess.run(admin + ["user", "remove", "alice", "--accounts", path], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert open(path, encoding="utf-8").read().splitlines()[0] == "teacher:chalk"


def test_a_teacher_that_is_no_account_is_logged_at_start(start_hub):
    hub = start_hub("--teacher", "teachr")
    hub.wait_for_log(r"--teacher teachr@localhost is not an account")


@pytest.mark.parametrize("name", ["a\x1b[2Jb", "zero\u200bwidth", "\u202etxt.exe", "bom\ufeffinside"])
def test_an_account_name_with_a_control_or_invisible_character_stops_the_start_naming_its_line(start_hub, tmp_path, name):
    path = tmp_path / "class.txt"
    path.write_text(f"alice:secret\n{name}:pw\n", encoding="utf-8")
    with pytest.raises(MailhubStartError) as caught:
        start_hub("--auth", f"file:{path}", users=())
    shown = "".join(c if c.isprintable() else f"<U+{ord(c):04X}>" for c in name)
    assert f"class.txt, line 2: not a usable mailbox name: {shown}" in str(caught.value)


def test_an_accounts_file_saved_as_latin_1_is_refused_naming_its_line_not_pythons_words(start_hub, tmp_path):
    # Notepad's "ANSI": zoë in Windows-1252. The log said "cannot read it:
    # 'utf-8' codec can't decode byte 0xeb in position 27: invalid
    # continuation byte" (Python's words, a byte offset, no line).
    path = tmp_path / "class.txt"
    path.write_bytes("teacher:chalk\r\nalice:secret\r\nzoë:pw\r\n".encode("cp1252"))
    with pytest.raises(MailhubStartError) as caught:
        start_hub("--auth", f"file:{path}", users=())
    assert f"mailhub: --auth: {path}, line 3: not UTF-8 text (the octet 0xeb at column 3); save the file as UTF-8" in str(caught.value)
    assert "codec" not in str(caught.value) and "position" not in str(caught.value)


def test_a_reload_of_a_file_that_is_not_utf_8_keeps_the_accounts_and_names_the_line(start_hub, tmp_path):
    import os
    import signal

    path = tmp_path / "class.txt"
    path.write_text("alice:secret\n", encoding="utf-8")
    hub = start_hub("--auth", f"file:{path}", users=())
    path.write_bytes("alice:secret\nbob:h\xfcngry\n".encode("latin-1"))
    os.kill(hub.pid, signal.SIGHUP)
    hub.wait_for_log(r"accounts not reloaded")
    line = [l for l in hub.log.splitlines() if "accounts not reloaded" in l][0]
    assert line.endswith(f"accounts not reloaded, keeping the 1 in use: {path}, line 2: not UTF-8 text (the octet 0xfc at column 6); save the file as UTF-8"), line
    imap = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=10)
    try:
        assert imap.login("alice", "secret")[0] == "OK"
    finally:
        imap.logout()
