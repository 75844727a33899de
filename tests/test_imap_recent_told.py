# -*- test-case-name: tests.test_imap_recent_told -*-
"""
The RECENT count a session hears (RFC 3501 §7.3.2) counts only messages
it has been told exist: a store that tells its listeners of new messages
one after another (PostgreSQL's push, another hub's deliveries) while the
session already claimed \\Recent for all of them in one go must not say
C{* 1 EXISTS} then C{* 3 RECENT}.
"""

from __future__ import annotations

import re
import smtplib

from twisted_mailhub.imap.view import SelectedFolder
from twisted_mailhub.store.interfaces import FolderChange, MessageInfo, NoSuchMessage

from tests.test_e2e_imap_rfc import raw_login
from tests.test_e2e_postgresql import start_cluster  # noqa: F401 (fixture)


class _Session:
    condstore = False
    qresync = False

    def changes_arrived(self):
        pass


class _Folder:
    """A store folder whose messages arrive before its listeners hear of them."""

    def __init__(self):
        self.stored: list[int] = []
        self.new: list[int] = []
        self.listeners = []

    def add_listener(self, listener):
        self.listeners.append(listener)

    def remove_listener(self, listener):
        self.listeners.remove(listener)

    def messages(self):
        return [self.info(uid) for uid in self.stored]

    def info(self, uid):
        if uid not in self.stored:
            raise NoSuchMessage(uid)
        return MessageInfo(uid=uid, key=str(uid), flags=frozenset(), size=10, internal_date=0.0)

    def take_new(self):
        taken, self.new = self.new, []
        return taken

    def recent(self):
        return list(self.new)

    def deliver(self, *uids):
        self.stored.extend(uids)
        self.new.extend(uids)

    def tell(self, *uids):
        for listener in self.listeners:
            listener(FolderChange(added=uids))


def _exists_and_recent(lines: list[bytes]) -> list[tuple[bytes, int]]:
    return [(m.group(2), int(m.group(1))) for m in (re.match(rb"\* (\d+) (EXISTS|RECENT)\r?\n?$", line) for line in lines) if m]


def test_recent_counts_only_messages_told_in_exists_when_the_store_tells_them_one_by_one():
    folder = _Folder()
    view = SelectedFolder(_Session(), folder, readonly=False)
    folder.deliver(1, 2, 3)  # all three stored (and \Recent) before the first is told
    folder.tell(1)
    assert _exists_and_recent(view.untagged(True)) == [(b"EXISTS", 1), (b"RECENT", 1)]
    folder.tell(2)
    assert _exists_and_recent(view.untagged(True)) == [(b"EXISTS", 2), (b"RECENT", 2)]
    folder.tell(3)
    assert _exists_and_recent(view.untagged(True)) == [(b"EXISTS", 3), (b"RECENT", 3)]
    assert sorted(view.recent) == [1, 2, 3]


def test_examine_counts_only_messages_told_in_exists_too():
    folder = _Folder()
    view = SelectedFolder(_Session(), folder, readonly=True)
    folder.deliver(1, 2)
    folder.tell(1)
    assert _exists_and_recent(view.untagged(True)) == [(b"EXISTS", 1), (b"RECENT", 1)]
    folder.tell(2)
    assert _exists_and_recent(view.untagged(True)) == [(b"EXISTS", 2), (b"RECENT", 2)]


def test_idle_on_one_hub_never_hears_more_recent_than_exists_for_mail_delivered_through_another(start_cluster):  # noqa: F811
    a_hub, b_hub = start_cluster(2, "--no-sftp", "--no-web", "--no-webs")
    idler = raw_login(a_hub)
    assert idler.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    idler.send(b"i IDLE\r\n")
    assert idler.line().startswith(b"+ ")
    with smtplib.SMTP("127.0.0.1", b_hub.ports["smtp"], timeout=30) as s:
        for n in range(5):
            s.sendmail("bob@example.org", ["alice@localhost"], b"Subject: %d\r\n\r\nbody\r\n" % n)
    heard: list[tuple[bytes, int]] = []
    while not heard or heard[-1] != (b"RECENT", 5) or len(heard) < 2 or heard[-2] != (b"EXISTS", 5):
        heard.extend(_exists_and_recent([idler.line()]))
    exists = 0
    for kind, n in heard:
        if kind == b"EXISTS":
            exists = n
        else:
            assert n <= exists, heard
    idler.send(b"DONE\r\n")
    assert idler.until_tag(b"i")[-1].startswith(b"i OK")
    idler.close()
