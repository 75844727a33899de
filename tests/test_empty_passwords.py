"""
An account never has an empty password: '--user alice:' or a line 'alice:'
let anyone in as alice with an empty password, on every protocol.
"""

from __future__ import annotations

import poplib

import pytest
from twisted.cred.credentials import UsernamePassword

from tests.test_tap import twistd
from twisted_mailhub.accounts import Account, AccountBook, AccountChecker, AccountsFileError


def test_a_user_option_with_an_empty_password_stops_the_start_saying_why(tmp_path):
    done = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "data"), "--port-base", "17000", "--user", "alice:", data=str(tmp_path))
    assert done.returncode != 0
    assert "--user: alice: an empty password, with which anyone could log in as that account; give it one" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_accounts_file_line_with_an_empty_password_names_its_line(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("bob@localhost:hungry\nalice:\n")
    with pytest.raises(AccountsFileError) as caught:
        AccountBook(["localhost"]).load_file(str(accounts))
    assert str(caught.value) == f"{accounts}, line 2: alice: an empty password, with which anyone could log in as that account; give it one"


def test_an_account_with_an_empty_password_from_elsewhere_logs_in_nobody():
    # (a PostgreSQL row, an older file read before this rule)
    account = Account("alice", "localhost", password="")
    assert account.check_password(b"") is False
    book = AccountBook(["localhost"])
    book.add("bob", "hungry")
    book._accounts[book._key("alice", "localhost")] = account
    failures = []
    AccountChecker(book).requestAvatarId(UsernamePassword(b"alice", b"")).addErrback(failures.append)
    assert len(failures) == 1
    assert Account("bob", "localhost", password="x").check_password(b"") is False


def test_no_protocol_lets_an_empty_password_in(start_hub):
    hub = start_hub()
    pop = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
    pop.user("alice")
    with pytest.raises(poplib.error_proto):
        pop.pass_("")
    pop.close()
