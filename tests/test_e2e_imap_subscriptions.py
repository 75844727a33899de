"""
Subscriptions across RENAME and DELETE, on every store (Maildir, memory,
PostgreSQL), with imaplib on the real hub: a subscription follows its
mailbox and the names below it through a RENAME (the old names are not left
subscribed to nothing), the new folder of a RENAME INBOX is subscribed as
INBOX is, and DELETE leaves the name subscribed (RFC 9051 §6.3.9, as
Dovecot does). The rule: L{twisted_mailhub.store.base.renamed_subscriptions}.
"""

from __future__ import annotations

import imaplib
import re

import pytest


@pytest.fixture(params=["maildir", "memory", "postgresql"])
def store_hub(request, start_hub):
    """A hub on each store, and the store's name."""
    if request.param == "maildir":
        return start_hub(), request.param
    if request.param == "memory":
        return start_hub("--store", "memory"), request.param
    dsn = request.getfixturevalue("pg_dsn")
    return start_hub("--store", f"postgresql:{dsn}"), request.param


def login(hub) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
    c.login("alice", "secret")
    return c


def ok(result) -> list:
    typ, data = result
    assert typ == "OK", data
    return data


def subscribed(c: imaplib.IMAP4) -> dict[str, str]:
    """LSUB "" "*": {name: attributes}."""
    found = {}
    for line in ok(c.lsub('""', "*")):
        m = re.match(rb'\((.*?)\) "/" "?(.*?)"?$', line)
        assert m, line
        found[m.group(2).decode()] = m.group(1).decode()
    return found


def test_rename_moves_the_subscriptions_of_the_mailbox_and_the_names_below_it(store_hub):
    hub, store = store_hub
    c = login(hub)
    for name in ("Work", "Work/2025", "Work/2025/Q1", "Workshop"):
        ok(c.create(name))
    for name in ("Work", "Work/2025/Q1", "Work/Plans", "Workshop"):  # Work/Plans: a name only
        ok(c.subscribe(name))
    ok(c.rename("Work", "Job"))
    names = subscribed(c)
    assert {"Job", "Job/2025/Q1", "Job/Plans", "Workshop"} <= set(names)
    assert not {"Work", "Work/2025/Q1", "Work/Plans"} & set(names)  # none left subscribed to nothing
    assert "Job/2025" not in names  # it was not subscribed: nor is its new name
    assert names["Job"] == "" and names["Job/Plans"] == "\\Noselect"
    # LIST (SUBSCRIBED) agrees (RFC 5258): the renamed mailbox is there, subscribed
    lines = ok(c.list('""', "Job*"))
    assert b'(\\HasChildren) "/" "Job"' in lines
    typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', '"Job"')
    assert typ == "OK"
    assert c.untagged_responses.pop("LIST", []) == [b'(\\HasChildren \\Subscribed) "/" "Job"']
    c.logout()
    if store != "memory":
        # kept where the store keeps them: the same after a restart
        hub.restart()
        c = login(hub)
        assert {"Job", "Job/2025/Q1", "Job/Plans", "Workshop"} <= set(subscribed(c))
        assert not {"Work", "Work/2025/Q1", "Work/Plans"} & set(subscribed(c))
        c.logout()


def test_rename_of_a_mailbox_no_one_subscribed_to_subscribes_nothing(store_hub):
    hub, _ = store_hub
    c = login(hub)
    ok(c.create("Notes"))
    ok(c.rename("Notes", "Jottings"))
    assert "Jottings" not in subscribed(c) and "Notes" not in subscribed(c)
    c.logout()


def test_delete_leaves_the_name_subscribed_and_a_new_mailbox_of_that_name_is_subscribed(store_hub):
    hub, _ = store_hub
    c = login(hub)
    ok(c.create("Alerts"))
    ok(c.subscribe("Alerts"))
    ok(c.delete("Alerts"))
    assert subscribed(c)["Alerts"] == "\\Noselect"
    typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', '"Alerts"')
    assert typ == "OK"
    assert c.untagged_responses.pop("LIST", []) == [b'(\\NonExistent \\Subscribed) "/" "Alerts"']
    ok(c.create("Alerts"))
    assert subscribed(c)["Alerts"] == ""
    ok(c.unsubscribe("Alerts"))
    assert "Alerts" not in subscribed(c)
    c.logout()


def test_rename_inbox_keeps_inbox_subscribed_and_subscribes_the_folder_its_mail_went_to(store_hub):
    hub, _ = store_hub
    c = login(hub)
    ok(c.append("INBOX", None, None, b"Subject: kept\r\n\r\nbody\r\n"))
    assert "INBOX" in subscribed(c)
    ok(c.rename("INBOX", '"Old Inbox"'))  # (imaplib does not quote)
    names = subscribed(c)
    assert names["INBOX"] == "" and names["Old Inbox"] == ""
    assert ok(c.select('"Old Inbox"', readonly=True)) == [b"1"]
    assert ok(c.select("INBOX", readonly=True)) == [b"0"]
    c.logout()


def test_a_notify_session_is_told_the_subscriptions_a_rename_moved(store_hub):
    # RFC 5465 §5.4/§5.5: the rename with OLDNAME, then each subscription
    # change; the old name, which has no mailbox now, is \NonExistent (as
    # LIST-EXTENDED says of it), not shown as if it were a mailbox.
    from tests.test_e2e_imap_notify import notify
    from tests.test_e2e_imap_rfc import raw_login

    hub, _ = store_hub
    c = login(hub)
    ok(c.create("Work"))
    ok(c.subscribe("Work"))
    watcher = raw_login(hub)
    notify(watcher, b"SET (PERSONAL (MailboxName SubscriptionChange))")
    ok(c.rename("Work", "Job"))
    told = [watcher.line() for _ in range(3)]
    assert told == [
        b'* LIST () "/" "Job" ("OLDNAME" ("Work"))',
        b'* LIST (\\Subscribed) "/" "Job"',
        b'* LIST (\\NonExistent) "/" "Work"',
    ], told
    watcher.close()
    c.logout()
