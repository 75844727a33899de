"""
One rule for an account's name, the same for every way an account is made:
--user, an accounts file, mailhub-admin user add and the API's POST
/accounts (and the PostgreSQL table, through the same function). A name
with a blank ("odd name") was taken by the hub, which could then log it in
but never take mail for it (SMTP refuses such an address), while
mailhub-admin refused it: now all refuse it with the same words, and all
take the same unusual but deliverable names.
"""

from __future__ import annotations

import imaplib
import smtplib
import urllib.parse

import pytest

from tests.test_admin import mailhub_admin
from tests.test_api import ADMIN, call
from tests.test_tap import twistd
from twisted_mailhub.testing import Mailhub

BLANK = "not a usable mailbox name: odd name: a blank or other white space (not allowed in an account's name: it could never be sent mail)"


@pytest.fixture(scope="module")
def web_hub():
    with Mailhub("--teacher", "teacher", accounts=["alice:secret", "teacher:chalk"]) as hub:
        yield hub


def test_the_hub_refuses_a_name_with_a_blank_from_user_and_from_an_accounts_file_in_the_same_words(tmp_path):
    started = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d1"), "--port-base", "17000", "--user", "odd name:pw", data=str(tmp_path))
    assert started.returncode == 2
    assert started.stderr.strip() == f"mailhub: --user: {BLANK}"
    accounts = tmp_path / "accounts"
    accounts.write_text("alice:secret\n\"odd name\"@localhost:pw\n")
    started = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d2"), "--port-base", "17000", "--auth", f"file:{accounts}", data=str(tmp_path))
    assert started.returncode == 2
    assert started.stderr.strip() == f'mailhub: --auth: {accounts}, line 2: {BLANK.replace("odd name", chr(34) + "odd name" + chr(34) + "@localhost", 1)}'


def test_mailhub_admin_refuses_it_in_the_same_words_and_writes_nothing(tmp_path):
    accounts = tmp_path / "accounts"
    result = mailhub_admin("user", "add", "odd name", "--accounts", str(accounts), "--password-stdin", "--no-reload", stdin="pw\n")
    assert result.returncode == 1
    assert result.stderr == f"mailhub-admin: {BLANK}\n"
    assert not accounts.exists()


def test_the_api_refuses_it_in_the_same_words(web_hub):
    reply = call(web_hub, "POST", "/accounts", auth=ADMIN, json_body={"address": "odd name", "password": "pw"})
    assert reply.status == 400
    assert reply.json()["error"]["message"] == BLANK
    assert "odd name@localhost" not in call(web_hub, "GET", "/accounts", auth=ADMIN).json()["accounts"]


@pytest.mark.parametrize("name", ["o'brien+news", "first.last", "zoë", "x_y-z=1"])
def test_a_name_the_rule_takes_is_taken_by_admin_and_the_api_and_gets_mail(web_hub, tmp_path, name):
    accounts = tmp_path / "accounts"
    added = mailhub_admin("user", "add", name, "--accounts", str(accounts), "--password-stdin", "--no-reload", "--plain", stdin="pw\n")
    assert added.returncode == 0, added.stderr
    from twisted_mailhub.accounts import AccountBook

    book = AccountBook(["localhost"])
    assert book.load_file(str(accounts)) == 1  # what the hub reads from the file
    assert book.find(f"{name}@localhost").check_password(b"pw")
    reply = call(web_hub, "POST", "/accounts", auth=ADMIN, json_body={"address": name, "password": "pw"})
    assert reply.status == 201, reply.body
    utf8 = not name.isascii()
    with smtplib.SMTP(web_hub.host, web_hub.ports["smtp"], timeout=30) as s:
        s.ehlo()
        s.sendmail("a@example.net", [f"{name}@localhost"], f"Subject: to {name}\r\n\r\nhi\r\n".encode(), mail_options=["SMTPUTF8"] if utf8 else [])
    imap = imaplib.IMAP4(web_hub.host, web_hub.ports["imap"], timeout=30)
    if utf8:
        imap._encoding = "utf-8"  # LOGIN's name in UTF-8 (RFC 6855 §5)
    assert imap.login(f"{name}@localhost", "pw")[0] == "OK"
    assert imap.select("INBOX")[1] == [b"1"]
    imap.logout()
    assert call(web_hub, "DELETE", "/accounts/" + urllib.parse.quote(f"{name}@localhost"), auth=ADMIN).status == 200


@pytest.mark.parametrize(
    "name, why",
    [
        ("odd name", "a blank"), ("tab\there", "a blank"), ("nbsp\u00a0here", "a blank"), ("a@b@example.org", "an @"),
        ("semi;colon", "a semicolon"), ("quo\"te", "a double quote"), ("sl/ash", "a /"), (".dot", "starting with a dot"),
        ("x" * 65, "more than 64 octets"), ("esc\x1bape", "a control or invisible character"),
    ],
)
def test_the_rule_says_why_a_name_is_refused(name, why):
    from twisted_mailhub.accounts import check_account_name

    with pytest.raises(ValueError) as caught:
        check_account_name(name, "localhost")
    assert why in str(caught.value)
    assert "\x1b" not in str(caught.value) and "\t" not in str(caught.value)
