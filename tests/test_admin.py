"""
mailhub-admin: accounts from the command line, told to a running hub at once.
"""

import imaplib
import os
import stat
import subprocess
import sys

import pytest

from tests.hubprocess import ROOT, listener_names
from twisted_mailhub import admin
from twisted_mailhub.accounts import AccountBook


def mailhub_admin(*args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", *args],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_user_add_then_imap_login_works_at_once_on_a_running_hub(start_hub, tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    pidfile = tmp_path / "hub.pid"
    hub = start_hub("--auth", f"file:{accounts}", users=())
    pidfile.write_text(str(hub.process.pid))  # what twistd writes without -n
    result = mailhub_admin("user", "add", "carol@localhost", "--accounts", str(accounts), "--pidfile", str(pidfile), "--password-stdin", stdin="tea for two\n")
    assert result.returncode == 0, result.stderr
    assert f"told the hub (pid {hub.process.pid}) to reload its accounts" in result.stdout
    hub.wait_for_log(r"accounts reloaded: 2 accounts \(\+1 -0\)")
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login("carol@localhost", "tea for two")[0] == "OK"
    c.logout()
    # removed: cannot log in again
    result = mailhub_admin("user", "remove", "carol", "--accounts", str(accounts), "--pidfile", str(pidfile))
    assert result.returncode == 0, result.stderr
    hub.wait_for_log(r"accounts reloaded: 1 account \(\+0 -1\)")
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4("127.0.0.1", hub.ports["imap"]).login("carol@localhost", "tea for two")


def test_user_add_stores_an_scrypt_hash_in_a_0600_file(tmp_path):
    accounts = tmp_path / "accounts"
    result = mailhub_admin("user", "add", "dave@example.org", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    text = accounts.read_text()
    assert text.startswith("dave@example.org:$scrypt$") and "s3cret" not in text
    assert stat.S_IMODE(os.stat(accounts).st_mode) == 0o600
    book = AccountBook(["example.org"])
    book.load_file(str(accounts))
    assert book.find("dave@example.org").check_password(b"s3cret")


def test_user_passwd_list_and_the_errors_a_user_sees(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("# class of 2026\nalice@localhost:secret\n")
    result = mailhub_admin("user", "add", "alice", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="x\n")
    assert result.returncode == 1 and "alice already has an account" in result.stderr
    result = mailhub_admin("user", "passwd", "alice", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="new one\n")
    assert result.returncode == 0, result.stderr
    assert accounts.read_text().startswith("# class of 2026\nalice@localhost:$scrypt$")  # comments kept
    listing = mailhub_admin("user", "list", "--accounts", str(accounts))
    assert listing.stdout == "alice@localhost\tscrypt\n"
    result = mailhub_admin("user", "remove", "nobody", "--accounts", str(accounts), "--no-reload")
    assert result.returncode == 1 and result.stderr == f"mailhub-admin: no account nobody in {accounts}\n"
    # no terminal and no --password-stdin: a clear refusal, nothing written
    result = mailhub_admin("user", "add", "erin", "--accounts", str(accounts), "--no-reload", stdin="")
    assert result.returncode == 1 and "--password-stdin" in result.stderr
    assert "erin" not in accounts.read_text()
    # no running hub: said so, still done
    result = mailhub_admin("user", "add", "erin", "--accounts", str(accounts), "--pidfile", str(tmp_path / "none.pid"), "--password-stdin", stdin="pw\n")
    assert result.returncode == 0 and "no running hub found" in result.stdout


def test_password_asked_twice_must_match(tmp_path, monkeypatch):
    answers = iter(["one", "two"])
    monkeypatch.setattr(admin.getpass, "getpass", lambda prompt: next(answers))
    monkeypatch.setattr(admin.sys.stdin, "isatty", lambda: True, raising=False)
    accounts = tmp_path / "accounts"
    status = admin.main(["user", "add", "frank", "--accounts", str(accounts), "--no-reload"])
    assert status == 1
    assert not accounts.exists()


def test_queue_is_the_queue_command(tmp_path):
    result = mailhub_admin("queue", "--data", str(tmp_path), "list")
    legacy = subprocess.run([sys.executable, "-m", "twisted_mailhub.queue", "--data", str(tmp_path), "list"], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert (result.returncode, result.stdout) == (legacy.returncode, legacy.stdout)


def test_queue_with_a_bad_queue_option_is_one_line_not_a_traceback(tmp_path):
    for queue, said in (("bogus", "--queue bogus: expected disk or postgresql[:DSN]"), ("postgresql", "--queue postgresql needs a DSN")):
        result = mailhub_admin("queue", "--queue", queue, "list")
        assert result.returncode == 2
        assert result.stderr.startswith(said) and "Traceback" not in result.stderr, result.stderr


def test_check_reports_what_a_start_would_refuse(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\nbroken\n")
    bad_cert = tmp_path / "cert.pem"
    bad_cert.write_text("not a certificate\n")
    result = mailhub_admin("check", "--data", str(tmp_path / "d"), "--auth", f"file:{accounts}", "--tls-cert", str(bad_cert), "--smtp", "tcp:0:interface=127.0.0.1")
    assert result.returncode == 1
    assert f"accounts: --auth: {accounts}, line 2: expected ADDRESS:PASSWORD" in result.stderr
    assert f"TLS: --tls-cert {bad_cert}:" in result.stderr
    accounts.write_text("alice@localhost:secret\n")
    ok = mailhub_admin("check", "--data", str(tmp_path / "d"), "--auth", f"file:{accounts}", *sum(([f"--{n}", "tcp:0:interface=127.0.0.1"] for n in listener_names()), []))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "ok: the hub would start with these options\n"


def test_dkim_show_is_offered_by_mailhub_admin(tmp_path):
    result = mailhub_admin("dkim", "make", "--data", str(tmp_path), "--domain", "example.org", "--hostname", "mail.example.org")
    assert result.returncode == 0, result.stderr
    assert "_domainkey.example.org" in result.stdout


def accounts_hash(stdin):
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.accounts", "hash"],
        input=stdin, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_accounts_hash_refuses_an_empty_password_and_its_hash_logs_in_on_a_hub(start_hub, tmp_path):
    for empty in ("", "\n", "\r\n"):
        result = accounts_hash(empty)
        assert result.returncode == 1 and result.stdout == ""
        assert "empty password" in result.stderr
    result = accounts_hash("tea for two\n")
    assert result.returncode == 0, result.stderr
    accounts = tmp_path / "accounts"
    accounts.write_text("carol@localhost:" + result.stdout.strip() + "\n")
    hub = start_hub("--auth", f"file:{accounts}", users=())
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    assert c.login("carol", "tea for two")[0] == "OK"
    c.logout()


def test_user_add_refuses_an_address_with_nothing_usable_after_the_at(tmp_path):
    accounts = tmp_path / "accounts"
    for bad in ("carol@", "carol@.", "carol@a..b"):
        result = mailhub_admin("user", "add", bad, "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="pw\n")
        assert result.returncode == 1, result.stdout
        assert result.stderr == f"mailhub-admin: not a usable domain after the @ in {bad} (want e.g. alice@example.org, or a bare alice for the default domain)\n"
    assert not accounts.exists() or "carol" not in accounts.read_text()


def test_a_hub_refuses_to_start_with_an_accounts_line_without_a_domain(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice:secret\ncarol@:pw\n")
    result = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", "check", "--data", str(tmp_path / "data"), "--no-dns", "--auth", f"file:{accounts}"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 1
    assert f"{accounts}, line 2: not a usable domain after the @ in carol@" in result.stdout + result.stderr


def test_the_queue_command_names_itself_as_typed_in_its_usage_and_errors(capsys, tmp_path):
    from twisted_mailhub.admin import main as admin_main
    from twisted_mailhub.queue.admin import main as queue_main

    with pytest.raises(SystemExit):
        admin_main(["queue", "--help"])
    assert capsys.readouterr().out.startswith("usage: mailhub-admin queue ")
    with pytest.raises(SystemExit):
        admin_main(["queue", "--data", str(tmp_path), "frobnicate"])
    assert "mailhub-admin queue: error: argument command: invalid choice: 'frobnicate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        queue_main(["--help"], prog="mailhub-queue")
    assert capsys.readouterr().out.startswith("usage: mailhub-queue ")


def test_the_queue_command_takes_data_after_its_command_as_every_other_command_does(capsys, tmp_path):
    # "mailhub-admin queue list --data DIR" was "unrecognized arguments: --data DIR".
    from twisted_mailhub.admin import main as admin_main

    (tmp_path / "queue").mkdir()
    assert admin_main(["queue", "list", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "queue is empty\n"
    assert admin_main(["queue", "remove", "6B0D0000", "--data", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == f"no queue at {tmp_path / 'nowhere' / 'queue'} (is --data the hub's data folder?)\n"
    # before the command, as it was
    assert admin_main(["queue", "--data", str(tmp_path), "list"]) == 0
    assert capsys.readouterr().out == "queue is empty\n"


@pytest.mark.parametrize("quota", ["abc", "-5", "10XB", "0", "5M;quota=1G", "5M:x", "9" * 30 + "T"])
def test_user_add_refuses_a_quota_the_hub_could_not_read_and_leaves_the_file_as_it_was(tmp_path, quota):
    # "--quota abc" was written as "frank;quota=abc": every later start,
    # reload and mailhub-admin command then failed on that line.
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    result = mailhub_admin("user", "add", "frank", "--accounts", str(accounts), "--quota", quota, "--password-stdin", "--no-reload", stdin="pw\n")
    assert result.returncode == 1
    assert result.stderr.startswith("mailhub-admin: --quota wants ") and result.stderr.endswith("; nothing changed\n")
    assert "Traceback" not in result.stderr
    assert accounts.read_text() == "alice@localhost:secret\n"
    listing = mailhub_admin("user", "list", "--accounts", str(accounts))
    assert listing.returncode == 0 and listing.stdout == "alice@localhost\tplain\n"


def test_user_add_writes_a_good_quota_the_hub_reads(tmp_path):
    accounts = tmp_path / "accounts"
    result = mailhub_admin("user", "add", "frank", "--accounts", str(accounts), "--quota", "500M", "--password-stdin", "--no-reload", stdin="pw\n")
    assert result.returncode == 0, result.stderr
    book = AccountBook(["localhost"])
    book.load_file(str(accounts))
    assert [(a.localpart, a.quota) for a in book] == [("frank", 500 * 1024 * 1024)]


def test_no_command_puts_an_accounts_file_in_place_that_the_hub_would_refuse(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    with pytest.raises(admin.AdminError) as caught:
        admin.write_lines(str(accounts), ["alice@localhost:secret", "frank;quota=abc:pw"])
    assert str(caught.value).startswith(f"{accounts}, line 2: quota wants a whole number of octets or a size in K, M, G or T")
    assert str(caught.value).endswith(", not abc; nothing changed")
    assert accounts.read_text() == "alice@localhost:secret\n"
    assert os.listdir(tmp_path) == ["accounts"]  # no temporary file left


def test_user_add_through_a_symbolic_link_changes_the_file_it_names_and_keeps_the_link(tmp_path):
    (tmp_path / "etc").mkdir()
    real = tmp_path / "etc" / "accounts"
    real.write_text("alice@localhost:secret\n")
    link = tmp_path / "accounts"
    link.symlink_to(real)
    result = mailhub_admin("user", "add", "bob", "--accounts", str(link), "--password-stdin", "--no-reload", stdin="pw\n")
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert "bob:$scrypt$" in real.read_text() and real.read_text().startswith("alice@localhost:secret\n")
    assert sorted(os.listdir(tmp_path / "etc")) == ["accounts"]  # no temporary file left beside it


def test_an_account_with_a_quota_is_found_by_passwd_remove_and_add(tmp_path):
    # "zed;quota=5M:..." (as user add --quota writes it) was no account
    # "zed" to passwd and remove, and add wrote a second line.
    accounts = tmp_path / "accounts"
    assert mailhub_admin("user", "add", "zed", "--accounts", str(accounts), "--quota", "5M", "--password-stdin", "--no-reload", stdin="pw\n").returncode == 0
    again = mailhub_admin("user", "add", "zed", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="pw\n")
    assert again.returncode == 1 and "zed already has an account" in again.stderr
    before = accounts.read_text()
    changed = mailhub_admin("user", "passwd", "zed", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="new\n")
    assert changed.returncode == 0, changed.stderr
    after = accounts.read_text()
    assert after.startswith("zed;quota=5M:$scrypt$") and after != before and len(after.splitlines()) == 1
    removed = mailhub_admin("user", "remove", "zed@localhost", "--accounts", str(accounts), "--no-reload")
    assert removed.returncode == 0, removed.stderr
    assert accounts.read_text() == ""


def test_a_password_that_is_not_utf_8_is_refused_in_words_not_a_traceback(tmp_path):
    # A Latin-1 terminal's "café" on stdin: both commands died with
    # "UnicodeEncodeError: 'utf-8' codec can't encode character '\udce9'".
    latin = "caf\xe9\n".encode("latin-1")
    hashed = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.accounts", "hash"],
        input=latin, capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert hashed.returncode == 1 and hashed.stdout == b""
    assert hashed.stderr == b"the password is not UTF-8 text (character 4); set the terminal or file to UTF-8: nothing printed\n"
    accounts = tmp_path / "accounts"
    added = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", "user", "add", "carol", "--accounts", str(accounts), "--password-stdin", "--no-reload"],
        input=latin, capture_output=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert added.returncode == 1
    assert added.stderr == b"mailhub-admin: the password is not UTF-8 text (character 4); set the terminal or file to UTF-8; nothing changed\n"
    assert not accounts.exists() or b"carol" not in accounts.read_bytes()
    # and UTF-8 "café" works
    assert accounts_hash("café\n").returncode == 0


@pytest.mark.parametrize("command", [["list"], ["remove", "alice"]])
def test_a_missing_accounts_file_is_an_error_not_an_empty_list(tmp_path, command):
    # Before: "no accounts in /tmp/.../acounts", exit 0: a typo of the
    # path looked like an empty file.
    missing = tmp_path / "acounts"
    result = mailhub_admin("user", *command, "--accounts", str(missing), "--no-reload") if command[0] != "list" else mailhub_admin("user", "list", "--accounts", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"mailhub-admin: there is no accounts file {missing} (give --accounts FILE or set MAILHUB_ACCOUNTS; user add creates it)\n"
    assert not missing.exists()


def test_check_names_the_option_a_bad_user_came_from_once(tmp_path):
    # Before: "accounts: --auth: --user: not a usable mailbox name" (the
    # --auth: prefix for a --user problem).
    result = mailhub_admin("check", "--data", str(tmp_path / "d"), "--user", "bad name:x", "--smtp", "tcp:0:interface=127.0.0.1")
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "accounts:" in line]
    assert line.split("accounts: ", 1)[1].startswith("--user: ")
    assert "--auth" not in line


def test_accounts_added_at_once_by_several_runs_are_all_kept_and_can_log_in(start_hub, tmp_path):
    # A class added in parallel (xargs -P, two admins at once): each run
    # read the file before another's change was in place, and the last
    # writer dropped the others' accounts, though every run said "added".
    accounts = tmp_path / "accounts"
    accounts.write_text("alice@localhost:secret\n")
    hub = start_hub("--auth", f"file:{accounts}", users=())
    names = [f"student{n}" for n in range(10)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "twisted_mailhub.admin", "user", "add", name, "--accounts", str(accounts), "--password-stdin", "--data", hub.data_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
        )
        for name in names
    ]
    for name, run in zip(names, runs):
        out, err = run.communicate(f"pw-{name}\n", timeout=120)
        assert run.returncode == 0 and f"added {name}" in out, err
    book = AccountBook(["localhost"])
    book.load_file(str(accounts))
    assert sorted(a.address for a in book if a.address.startswith("student")) == sorted(f"{n}@localhost" for n in names)
    result = mailhub_admin("reload", "--data", hub.data_dir)
    assert result.returncode == 0, result.stderr
    for name in names:
        c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
        assert c.login(name, f"pw-{name}")[0] == "OK"
        c.logout()
