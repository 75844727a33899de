"""
The cluster parts on a real PostgreSQL (L{twisted_mailhub.cluster}): the
schema and its version, accounts in a table (C{--auth postgresql:DSN}),
C{mailhub-admin user --auth postgresql:DSN} and C{mailhub-admin db}, with
real hubs where a behaviour is what several hubs see.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import subprocess
import sys
import time

import psycopg
import pytest

from tests.hubprocess import ROOT
from twisted_mailhub.accounts import hash_password
from twisted_mailhub.cluster import schema

MESSAGE = b"From: bob@localhost\r\nTo: carol@localhost\r\nSubject: hello\r\n\r\nHi.\r\n"


def admin(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", *args],
        input=stdin, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )


def imap_login_works(hub, user: str, password: str) -> bool:
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    try:
        c.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            c.logout()
        except Exception:
            pass
    return True


def until(condition, timeout: float = 5.0):
    """Poll C{condition} (a cross-hub notice is asynchronous) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# -- the schema ----------------------------------------------------------------


def test_db_upgrade_creates_every_table_then_says_nothing_to_do(pg_dsn):
    first = admin("db", "upgrade", "--dsn", pg_dsn)
    assert first.returncode == 0, first.stderr
    assert f"cluster tables: version 0 -> {schema.SCHEMA_VERSION}" in first.stdout
    assert "mail store tables: version 0 ->" in first.stdout
    again = admin("db", "upgrade", "--dsn", f"postgresql:{pg_dsn}")
    assert again.returncode == 0
    assert "nothing to do" in again.stdout
    with psycopg.connect(pg_dsn) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"user_account", "login_failure", "queue_message", "ftp_node", "mailbox", "mailbox_message"} <= tables


def test_older_tables_are_migrated_at_start_and_by_db_upgrade(pg_dsn, monkeypatch):
    # Before: check() refused an older version ("run 'mailhub-admin db
    # upgrade'") while the mail store migrated itself at start.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn)
        # a later hub, one migration ahead of this database
        monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
        monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1, "CREATE TABLE later_part (id int)")
        schema.check(conn)
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
        assert conn.execute("SELECT to_regclass('later_part') IS NOT NULL").fetchone()[0]
        # and by hand: one more step, then nothing to do
        monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
        monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1, "CREATE TABLE later_part2 (id int)")
        assert schema.upgrade(conn) == (schema.SCHEMA_VERSION - 1, schema.SCHEMA_VERSION)
        assert schema.upgrade(conn) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)


def test_hubs_starting_together_on_older_tables_migrate_them_once(pg_dsn, monkeypatch):
    # Eight hubs (here their start's check, each on its own connection)
    # start at once on a database one version behind: each step runs once
    # (a second run of the step would fail: the table exists), and every
    # one of them starts.
    import threading

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1, "CREATE TABLE later_part (id int); SELECT pg_sleep(0.3)")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def start():
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                barrier.wait()
                schema.check(conn)
        except BaseException as e:  # (reported below)
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with psycopg.connect(pg_dsn) as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION


def test_hub_refuses_newer_cluster_tables_in_one_line(pg_dsn, start_hub):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        schema.upgrade(conn)
        conn.execute("UPDATE mailhub_cluster_schema SET version = version + 1")
    with pytest.raises(Exception) as failed:
        start_hub("--auth", f"postgresql:{pg_dsn}", users=())
    assert "newer than this hub's" in str(failed.value)
    assert "Traceback" not in str(failed.value)


# -- accounts in a table ---------------------------------------------------------


def test_user_added_with_mailhub_admin_logs_in_on_every_hub_at_once(pg_dsn, start_hub):
    a = start_hub("--auth", f"postgresql:{pg_dsn}", "--store", f"postgresql:{pg_dsn}", users=())
    b = start_hub("--auth", f"postgresql:{pg_dsn}", "--store", f"postgresql:{pg_dsn}", users=())
    assert not imap_login_works(a, "carol", "sesame")
    added = admin("user", "add", "carol", "--auth", f"postgresql:{pg_dsn}", "--password-stdin", stdin="sesame\n")
    assert added.returncode == 0, added.stderr
    assert "added carol@localhost to the user_account table" in added.stdout
    with psycopg.connect(pg_dsn) as conn:
        (stored,) = conn.execute("SELECT password FROM user_account WHERE address = 'carol@localhost'").fetchone()
    assert stored.startswith("$scrypt$")  # the default, as for an accounts file
    assert imap_login_works(b, "carol", "sesame")
    assert imap_login_works(a, "carol@localhost", "sesame")
    assert not imap_login_works(b, "carol", "wrong")
    # and mail to the new address is accepted by the other hub
    with smtplib.SMTP("127.0.0.1", b.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["carol@localhost"], MESSAGE)
    c = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
    c.login("carol", "sesame")
    assert c.select("INBOX")[1] == [b"1"]
    c.logout()


def test_user_inserted_with_sql_works_and_deleted_one_stops_on_both_hubs(pg_dsn, start_hub):
    a = start_hub("--auth", f"postgresql:{pg_dsn}", users=())
    b = start_hub("--auth", f"postgresql:{pg_dsn}", users=())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO user_account (address, password) VALUES ('dave@localhost', %s)", (hash_password("pw1"),))
        conn.execute("INSERT INTO user_account (address, password) VALUES ('erin@localhost', 'plain2')")
    assert imap_login_works(a, "dave", "pw1")
    assert imap_login_works(b, "erin", "plain2")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM user_account WHERE address = 'dave@localhost'")
    assert until(lambda: not imap_login_works(a, "dave", "pw1"))
    assert until(lambda: not imap_login_works(b, "dave", "pw1"))
    removed = admin("user", "remove", "erin", "--auth", f"postgresql:{pg_dsn}")
    assert removed.returncode == 0, removed.stderr
    assert until(lambda: not imap_login_works(b, "erin", "plain2"))


def test_quota_column_is_the_accounts_quota(pg_dsn, start_hub):
    a = start_hub("--auth", f"postgresql:{pg_dsn}", users=())
    added = admin("user", "add", "fay", "--auth", f"postgresql:{pg_dsn}", "--quota", "2K", "--password-stdin", stdin="pw\n")
    assert added.returncode == 0, added.stderr
    listed = admin("user", "list", "--auth", f"postgresql:{pg_dsn}")
    assert "fay@localhost\tscrypt\tquota=2048" in listed.stdout
    c = imaplib.IMAP4("127.0.0.1", a.ports["imap"])
    c.login("fay", "pw")
    typ, data = c.getquotaroot("INBOX")
    c.logout()
    assert typ == "OK"
    assert b"STORAGE 0 2" in b" ".join(x for x in data[1] if isinstance(x, bytes))


def test_admin_on_the_table_says_what_is_wrong_in_one_line(pg_dsn):
    admin("user", "add", "gus", "--auth", f"postgresql:{pg_dsn}", "--password-stdin", stdin="pw\n")
    twice = admin("user", "add", "gus", "--auth", f"postgresql:{pg_dsn}", "--password-stdin", stdin="pw\n")
    assert twice.returncode == 1
    assert twice.stderr.strip() == "mailhub-admin: gus@localhost already has an account in the user_account table (change its password with: user passwd)"
    missing = admin("user", "passwd", "nobody", "--auth", f"postgresql:{pg_dsn}", "--password-stdin", stdin="pw\n")
    assert missing.returncode == 1
    assert "no account nobody@localhost" in missing.stderr
    unreachable = admin("user", "list", "--auth", "postgresql:postgresql://x@127.0.0.1:1/none")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("mailhub-admin: cannot reach the accounts database")
    assert "Traceback" not in unreachable.stderr


# -- the login throttle ----------------------------------------------------------


def test_login_failures_on_one_hub_count_on_another(pg_dsn, start_hub):
    a = start_hub("--store", f"postgresql:{pg_dsn}")
    b = start_hub("--store", f"postgresql:{pg_dsn}")
    for n in range(3):
        assert not imap_login_works(a, "alice", f"wrong{n}")
    a.wait_for_log(r"login failed for 'alice' .*held 0\.3s")
    # The fourth failure in a row is the fourth on hub B as well.
    assert not imap_login_works(b, "alice", "wrong3")
    b.wait_for_log(r"login failed for 'alice' .*held 0\.4s")
    # and a success on B clears the count for both
    assert imap_login_works(b, "alice", "secret")
    assert not imap_login_works(a, "alice", "wrong4")
    assert until(lambda: a.log.count("(answer held 0.1s)") == 2)  # a fresh count


def test_accounts_added_and_removed_through_the_web_api_are_rows_every_hub_sees(pg_dsn, start_hub, postgresql):
    from tests.test_api import call

    a = start_hub("--auth", f"postgresql:{pg_dsn}", "--teacher", "teacher", users=("teacher:chalk",))
    b = start_hub("--auth", f"postgresql:{pg_dsn}", users=())
    teacher = ("teacher@localhost", "chalk")
    added = call(a, "POST", "/accounts", auth=teacher, json_body={"address": "gina@localhost", "password": "pw"})
    assert added.status == 201, added.body
    with psycopg.connect(pg_dsn) as conn:
        (stored,) = conn.execute("SELECT password FROM user_account WHERE address = 'gina@localhost'").fetchone()
    assert stored.startswith("$scrypt$")  # never the plain password
    assert imap_login_works(b, "gina", "pw")
    assert imap_login_works(a, "gina", "pw")
    # a second add of the address, in any case, is refused
    again = call(a, "POST", "/accounts", auth=teacher, json_body={"address": "GINA@localhost", "password": "x"})
    assert again.status == 409 and again.json()["error"]["code"] == "account_exists", again.body
    removed = call(a, "DELETE", "/accounts/gina@localhost", auth=teacher)
    assert removed.status == 200, removed.body
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM user_account WHERE lower(address) = 'gina@localhost'").fetchone()[0] == 0
    assert not imap_login_works(a, "gina", "pw")
    assert until(lambda: not imap_login_works(b, "gina", "pw"))
    # The database down: 503, nothing changed, no traceback.
    postgresql.stop()
    try:
        refused = call(a, "POST", "/accounts", auth=teacher, json_body={"address": "hal@localhost", "password": "pw"})
    finally:
        postgresql.restart()
    assert refused.status == 503 and refused.json()["error"]["code"] == "unavailable", refused.body
    assert not imap_login_works(b, "hal", "pw")
    assert "Traceback" not in a.log
