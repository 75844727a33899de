# -*- test-case-name: tests.test_e2e_pg_imap_push -*-
"""
IMAP on the PostgreSQL store, two real hubs on one real database: a
folder's identity survives a RENAME (its C{mailbox} row), so NOTIFY tells
a rename as MailboxName with OLDNAME (RFC 5465 §5.4); and IDLE hears that
its mailbox was deleted or renamed by another hub through the store's
push (LISTEN/NOTIFY), not a look every half second.
"""

from __future__ import annotations

import time

from tests.test_e2e_imap_notify import notify
from tests.test_e2e_imap_rfc import raw_login
from tests.test_e2e_postgresql import start_cluster  # noqa: F401 (fixture)


def test_a_rename_on_postgresql_is_told_as_mailboxname_with_oldname(start_cluster):  # noqa: F811
    a_hub, b_hub = start_cluster(2)
    a, b = raw_login(a_hub), raw_login(b_hub)
    assert b.cmd(b"c", b"CREATE Projects/2024")[-1].startswith(b"c OK")
    notify(a, b"SET (PERSONAL (MailboxName))")
    # renamed through the other hub, then through this one
    assert b.cmd(b"r", b"RENAME Projects Work/Projects")[-1].startswith(b"r OK")
    told = sorted(a.line() for _ in range(3))
    assert told == [
        b'* LIST () "/" "Work"',
        b'* LIST () "/" "Work/Projects" ("OLDNAME" ("Projects"))',
        b'* LIST () "/" "Work/Projects/2024" ("OLDNAME" ("Projects/2024"))',
    ], told
    c = raw_login(a_hub)
    assert c.cmd(b"r", b"RENAME Work/Projects/2024 Kept")[-1].startswith(b"r OK")
    assert a.line() == b'* LIST () "/" "Kept" ("OLDNAME" ("Work/Projects/2024"))'
    # a delete and a create are not a rename
    assert c.cmd(b"d", b"DELETE Kept")[-1].startswith(b"d OK")
    assert a.line() == b'* LIST (\\NonExistent) "/" "Kept"'
    for r in (a, b, c):
        r.close()


def test_idle_on_postgresql_hears_its_mailbox_deleted_or_renamed_on_another_hub_at_once(start_cluster):  # noqa: F811
    a_hub, b_hub = start_cluster(2)
    other = raw_login(b_hub)
    delays = []
    for n in range(5):
        name = b"Folder%d" % n
        assert other.cmd(b"c", b"CREATE " + name)[-1].startswith(b"c OK")
        idler = raw_login(a_hub)
        assert idler.cmd(b"s", b"SELECT " + name)[-1].startswith(b"s OK")
        idler.send(b"i IDLE\r\n")
        assert idler.line().startswith(b"+ ")
        verb = b"DELETE " + name if n % 2 else b"RENAME " + name + b" Moved" + name
        assert other.cmd(b"d", verb)[-1].startswith(b"d OK")
        done = time.monotonic()
        assert idler.line().startswith(b"* BYE [UNAVAILABLE] selected mailbox " + name)
        delays.append(time.monotonic() - done)
        idler.close()
    other.close()
    # By a look every 0.5 s, a median under 0.1 s would come 6 times in 100.
    assert sorted(delays)[2] < 0.1, delays


def test_notify_on_postgresql_hears_mailboxes_and_subscriptions_changed_on_another_hub_at_once(start_cluster):  # noqa: F811
    a_hub, b_hub = start_cluster(2)
    a, b = raw_login(a_hub), raw_login(b_hub)
    notify(a, b"SET (PERSONAL (MailboxName SubscriptionChange))")
    delays = []
    for n in range(3):
        name = b"Made%d" % n
        for command, told in ((b"CREATE " + name, b'* LIST () "/" "%s"' % name), (b"SUBSCRIBE " + name, b'* LIST (\\Subscribed) "/" "%s"' % name)):
            assert b.cmd(b"c", command)[-1].startswith(b"c OK")
            done = time.monotonic()
            assert a.line() == told
            delays.append(time.monotonic() - done)
    a.close()
    b.close()
    # By a look every 0.5 s, a median under 0.1 s would come 3 times in 100.
    assert sorted(delays)[3] < 0.1, delays
