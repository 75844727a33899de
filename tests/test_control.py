"""
The control socket (issue 14): DATA/control.sock, mode 0600, answers
mailhub-admin's reload and status; mailhub-admin user add reloads a running
hub through it when it is there, with no pidfile.
"""

from __future__ import annotations

import imaplib
import json
import os
import socket
import stat
import subprocess
import sys

from tests.hubprocess import ROOT


def mailhub_admin(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_control_socket_is_0600_and_answers_status_and_unknown_commands(hub):
    path = os.path.join(hub.data_dir, "control.sock")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    result = mailhub_admin("status", "--data", hub.data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pid {hub.pid}, up ")
    assert f"  imap\t{hub.ports['imap']}" in result.stdout
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"shutdown\n")
    answer = json.loads(s.makefile("rb").readline())
    s.close()
    assert answer == {"ok": False, "error": "unknown command; known: reload, status, account NAME"}


def test_status_counts_one_account_and_one_connection_in_the_singular(start_hub):
    hub = start_hub(users=("alice:secret",))
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    try:
        result = mailhub_admin("status", "--data", hub.data_dir)
    finally:
        c.logout()
    assert result.returncode == 0, result.stderr
    assert ", 1 account, 1 connection open, 0 queued" in result.stdout.splitlines()[0], result.stdout


def test_user_add_reloads_through_the_control_socket_without_a_pidfile(start_hub, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    accounts = data / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--auth", f"file:{accounts}", users=(), data=str(data))
    result = mailhub_admin("user", "add", "carol@localhost", "--accounts", str(accounts), "--pidfile", str(tmp_path / "none.pid"), "--password-stdin", stdin="tea for two\n")
    assert result.returncode == 0, result.stderr
    assert "the hub (control socket) says: accounts reloaded: 2 accounts (+1 -0)" in result.stdout
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login("carol@localhost", "tea for two")[0] == "OK"
    c.logout()
    reload = mailhub_admin("reload", "--data", str(data))
    assert reload.returncode == 0 and "accounts reloaded: 2 accounts (+0 -0)" in reload.stdout


def test_admin_says_when_no_hub_answers(tmp_path):
    result = mailhub_admin("status", "--data", str(tmp_path))
    assert result.returncode == 1
    assert "no hub answers at" in result.stderr and "Traceback" not in result.stderr


def test_reload_that_keeps_the_old_accounts_exits_non_zero(start_hub, tmp_path):
    # Found by breaker: a deploy script's `mailhub-admin reload` after a
    # broken edit printed "accounts not reloaded" and exited 0.
    data = tmp_path / "data"
    data.mkdir()
    accounts = data / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    start_hub("--auth", f"file:{accounts}", users=(), data=str(data))
    accounts.write_text("alice@localhost:secret\na line without a colon\n")
    reload = mailhub_admin("reload", "--data", str(data))
    assert reload.returncode == 1
    assert "accounts not reloaded, keeping the 1 in use" in reload.stdout and "line 2" in reload.stdout


def test_a_second_hub_on_the_same_data_folder_says_whose_control_socket_it_is(start_hub):
    first = start_hub()
    second = start_hub(data=first.data_dir)
    line = second.wait_for_log(r"no control socket: .*")
    assert "another running hub on this data folder has it" in line.group(0)
    assert "b'" not in line.group(0) and "Couldn't listen" not in line.group(0)
    # The first hub's socket is the one mailhub-admin reaches.
    status = mailhub_admin("status", "--data", first.data_dir)
    assert status.returncode == 0, status.stderr
    assert str(first.pid) in status.stdout
