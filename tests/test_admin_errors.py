"""
mailhub-admin and mailhub-queue as an administrator meets them when
something is wrong: a path that is a file, Ctrl-C at the password
prompt. One line saying what is wrong, a non-zero exit status, never a
Python traceback, and nothing changed.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.test_admin import mailhub_admin
from tests.hubprocess import ROOT


def one_line(result: subprocess.CompletedProcess, status: int = 1) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    return line


@pytest.mark.parametrize("action", ["show", "make"])
def test_dkim_with_a_data_folder_that_is_a_file_says_so(action, tmp_path):
    data = tmp_path / "data"
    data.write_text("")
    line = one_line(mailhub_admin("dkim", action, "--data", str(data), "--domain", "example.org"))
    assert line == f"mailhub-admin: Not a directory ({data}/dkim/example.org)", line
    line = one_line(mailhub_admin("dkim", "show", "--data", str(data)))
    assert line == f"mailhub-admin: Not a directory ({data}/dkim)", line


def test_user_add_where_the_accounts_folder_is_a_file_names_that_file(tmp_path):
    (tmp_path / "etc").write_text("")
    for where in ("etc/accounts", "etc/mailhub/accounts"):
        line = one_line(mailhub_admin("user", "add", "carol", "--accounts", str(tmp_path / where), "--password-stdin", stdin="tea\n"))
        assert line == f"mailhub-admin: cannot keep the accounts file {tmp_path / where}: {tmp_path / 'etc'} is not a folder", line
    assert (tmp_path / "etc").read_text() == ""


def test_user_add_makes_a_missing_accounts_folder_private(tmp_path):
    # (mailhub-admin user add before the hub's first start: the unit's header does that)
    accounts = tmp_path / "lib" / "mailhub" / "accounts"
    done = mailhub_admin("user", "add", "carol", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="tea\n")
    assert done.returncode == 0, done.stderr
    assert oct(os.stat(accounts.parent).st_mode & 0o777) == "0o700"
    assert oct(os.stat(accounts).st_mode & 0o777) == "0o600"


def test_ctrl_c_at_the_password_prompt_is_one_line_and_changes_nothing(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    pid, fd = pty.fork()
    if pid == 0:  # the admin's terminal
        os.environ["PYTHONPATH"] = ROOT
        os.execv(sys.executable, [sys.executable, "-m", "twisted_mailhub.admin", "user", "add", "carol", "--accounts", str(accounts)])
    seen = b""
    deadline = time.monotonic() + 30
    while b"password for" not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([fd], [], [], 0.5)[0]:
            seen += os.read(fd, 4096)
    os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
    while True:
        try:
            if not select.select([fd], [], [], 10)[0]:
                break
            chunk = os.read(fd, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    said = seen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 130, said
    assert "Traceback" not in said and said.rstrip().endswith("mailhub-admin: interrupted"), said
    assert accounts.read_text() == "alice@localhost:secret\n"

