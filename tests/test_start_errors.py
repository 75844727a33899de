"""
Options whose fault is found only when the hub is built (a certificate file
that cannot be used, a --catch-all that names no account) stop the start
with one line and exit status 2, as a bad --user does: no traceback.
"""

from __future__ import annotations

import os

import pytest

from tests.hubprocess import listener_names
from tests.test_tap import twistd


@pytest.mark.parametrize(
    "args, says",
    [
        (["--tls-cert", "/nonexistent/cert.pem"], "mailhub: --tls-cert /nonexistent/cert.pem: cannot use it: /nonexistent/cert.pem: No such file or directory"),
        (["--tls-cert", "garbage.pem"], "mailhub: --tls-cert garbage.pem: cannot use it: not a PEM certificate with its private key (OpenSSL: "),
        (["--catch-all", "nobody@example.org"], "mailhub: --catch-all nobody@example.org: no such account"),
    ],
)
def test_an_option_found_unusable_while_the_hub_is_built_is_one_line_and_exit_2(args, says, tmp_path):
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "data"), "--user", "alice:pw", "--port-base", "17000", *args, data=str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(says), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("address", ["notanip", "mail.example.org", "::1", "300.1.2.3"])
def test_a_passive_address_that_is_no_ipv4_address_is_refused_at_start(address, tmp_path):
    # PASV's 227 carries it as h1,h2,h3,h4: "227 Entering Passive Mode (notanip,232,8)" was what clients got.
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "data"), "--user", "alice:pw", "--port-base", "17000", "--passive-address", address, data=str(tmp_path))
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"--passive-address wants the IPv4 address clients connect to (PASV can carry no other), not {address}" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_more_workers_than_four_per_core_are_refused_before_any_starts(tmp_path):
    # --workers 1000 (a typo) started a thousand hub processes of ~60 MB.
    from twisted_mailhub.workers import worker_count

    most = max(8, 4 * len(os.sched_getaffinity(0)))
    assert worker_count(str(most)) == most
    with pytest.raises(ValueError, match=f"wants at most {most} here"):
        worker_count(str(most + 1))
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "data"), "--user", "alice:pw", "--port-base", "17000", "--workers", "1000", data=str(tmp_path))
    assert result.returncode != 0
    assert f"--workers 1000: wants at most {most} here" in result.stdout + result.stderr


def test_mailhub_admin_check_reports_a_catch_all_that_is_no_account(tmp_path):
    from tests.test_admin import mailhub_admin

    result = mailhub_admin("check", "--data", str(tmp_path / "d"), "--user", "alice:pw", "--catch-all", "nobody@example.org", "--no-dns", "--smtp", "tcp:0:interface=127.0.0.1")
    assert result.returncode == 1
    assert "options: --catch-all nobody@example.org: no such account" in result.stderr
    assert mailhub_admin("check", "--data", str(tmp_path / "d"), "--user", "alice:pw", "--catch-all", "alice", "--no-dns", *sum(([f"--{n}", "tcp:0:interface=127.0.0.1"] for n in listener_names()), [])).returncode == 0


@pytest.mark.parametrize("daemon", [False, True])
@pytest.mark.parametrize("where, says", [("nodir/hub.log", "No such file or directory (make its folder first)"), ("afile/hub.log", "Not a directory")])
def test_a_logfile_that_cannot_be_opened_is_one_line_and_exit_2(where, says, daemon, tmp_path):
    # twistd --logfile in a folder that does not exist (a typo, /var/log/mailhub/
    # not made yet): the hub's log observer opens it, and said so in a traceback.
    (tmp_path / "afile").write_text("")
    logfile = str(tmp_path / where)
    result = twistd(*([] if daemon else ["-n"]), "--pidfile=", "--logfile", logfile, "mailhub", "--data", str(tmp_path / "data"), "--user", "alice:pw", "--port-base", "17000", data=str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"mailhub: --logfile {logfile}: cannot open it: {says}\n", result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("daemon", [False, True])
def test_a_pidfile_in_a_folder_that_does_not_exist_is_one_line_and_exit_2(daemon, tmp_path):
    # twistd writes it after the hub is built: a traceback and
    # 'An error has occurred: b"FileNotFoundError: ..."' before.
    pidfile = str(tmp_path / "nodir" / "mailhub.pid")
    result = twistd(*([] if daemon else ["-n"]), "--pidfile", pidfile, "--logfile", str(tmp_path / "hub.log"), "mailhub", "--data", str(tmp_path / "data"), "--user", "alice:pw", "--port-base", "17000", data=str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == f"mailhub: --pidfile {pidfile}: its folder {tmp_path / 'nodir'} does not exist (make it first)\n", result.stderr
