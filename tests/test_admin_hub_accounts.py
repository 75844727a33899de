"""
mailhub-admin and the running hub's accounts: C{user key} authorizes keys
only for a name that is an account (asked of the running hub, which knows
C{--user} accounts too, else of the accounts file), under the hub's own
name for it; C{user add/passwd/remove} reach a running hub whose accounts
file is kept outside its data folder (C{--data}, or the default
C{./mailhub-data}), and when none answers they say where they looked and
how to tell one.
"""

from __future__ import annotations

import imaplib
import os

import pytest

from tests.test_admin import mailhub_admin

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcpZ4O6I6e0T0qZfbN2h1tJQkNf0xqN3rYt9cvy8Xm0 student@laptop\n"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "id_ed25519.pub"
    path.write_text(PUBLIC_KEY)
    return str(path)


def authorized(data: str) -> list[str]:
    folder = os.path.join(data, "ssh", "authorized_keys")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_user_key_for_a_name_that_is_no_account_of_the_running_hub_is_refused(start_hub, key_file):
    hub = start_hub()  # alice and bob, given with --user
    result = mailhub_admin("user", "key", "mallory", key_file, "--data", hub.data_dir)
    assert result.returncode == 1, result.stdout
    assert result.stderr == f"mailhub-admin: no account mallory on the hub at {hub.data_dir} (mailhub-admin user list; add one with: user add)\n"
    assert authorized(hub.data_dir) == []
    result = mailhub_admin("user", "key", "ALICE", key_file, "--data", hub.data_dir)  # the hub's own name for her
    assert result.returncode == 0, result.stderr
    assert "now logs in as alice@localhost over SFTP" in result.stdout
    assert authorized(hub.data_dir) == ["alice@localhost"]


def test_user_key_without_a_running_hub_looks_in_the_accounts_file(tmp_path, key_file):
    data = tmp_path / "data"
    data.mkdir()
    (data / "accounts").write_text("alice@localhost:secret\n")
    refused = mailhub_admin("user", "key", "mallory", key_file, "--data", str(data))
    assert refused.returncode == 1
    assert refused.stderr == f"mailhub-admin: no account mallory@localhost in {data / 'accounts'} (add it with: user add)\n"
    done = mailhub_admin("user", "key", "alice", key_file, "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert authorized(str(data)) == ["alice@localhost"]


def test_user_key_with_nothing_to_tell_an_account_by_says_what_to_give(tmp_path, key_file):
    data = tmp_path / "data"
    result = mailhub_admin("user", "key", "alice", key_file, "--data", str(data))
    assert result.returncode == 1
    assert result.stderr.startswith(f"mailhub-admin: cannot tell whether alice@localhost is an account: no hub answers at {data / 'control.sock'}")
    assert "give --accounts FILE or --auth postgresql:DSN" in result.stderr
    assert not data.exists()


def test_user_add_reaches_the_hub_whose_accounts_file_is_outside_its_data_folder(start_hub, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    accounts = etc / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--auth", f"file:{accounts}", users=())
    # Without --data: no hub beside /etc's file, none in ./mailhub-data: said where it looked.
    result = mailhub_admin("user", "add", "carol", "--accounts", str(accounts), "--pidfile", str(tmp_path / "none.pid"), "--password-stdin", stdin="tea for two\n", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"no hub answers at {etc / 'control.sock'} or {tmp_path / 'mailhub-data' / 'control.sock'}" in result.stdout
    assert "mailhub-admin reload --data DIR" in result.stdout
    # With --data: the hub reloads at once and the new account logs in.
    result = mailhub_admin("user", "add", "dave", "--accounts", str(accounts), "--data", hub.data_dir, "--password-stdin", stdin="milk\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("added dave to") and "the hub (control socket) says: " in result.stdout
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login("dave@localhost", "milk")[0] == "OK"
    c.logout()


def test_user_passwd_finds_the_hub_in_the_default_data_folder(start_hub, tmp_path):
    # twistd mailhub started in a folder with its default --data mailhub-data,
    # its accounts file elsewhere: mailhub-admin run in the same folder tells it.
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--auth", f"file:{accounts}", users=(), data=str(tmp_path / "mailhub-data"))
    result = mailhub_admin("user", "passwd", "alice", "--accounts", str(accounts), "--password-stdin", stdin="new secret\n", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "the hub (control socket) says: " in result.stdout
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login("alice@localhost", "new secret")[0] == "OK"
    c.logout()


def test_user_key_asks_the_workers_of_a_workers_hub(start_hub, key_file):
    hub = start_hub("--workers", "2")
    refused = mailhub_admin("user", "key", "mallory", key_file, "--data", hub.data_dir)
    assert refused.returncode == 1 and "no account mallory on the hub at" in refused.stderr, refused.stderr
    done = mailhub_admin("user", "key", "bob", key_file, "--data", hub.data_dir)
    assert done.returncode == 0, done.stderr
    assert authorized(hub.data_dir) == ["bob@localhost"]
