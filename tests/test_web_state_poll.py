# -*- test-case-name: tests.test_web_state_poll -*-
"""
The web face's poll of a folder's state (GET /mail/FOLDER/state, every
2 s per open page) walks no message while nothing changed: the Maildir
store keeps its counts until the folder changes (MaildirFolder.counts).
"""

from __future__ import annotations

import json
import os

from twisted.internet import task
from twisted.trial import unittest

from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.interfaces import SEEN
from twisted_mailhub.store.maildir import MaildirStore
from twisted_mailhub.web.mail import FolderPages

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"


class _Request:
    def __init__(self):
        self.headers = {}

    def setHeader(self, name, value):
        self.headers[name] = value


class _ThreeMessages(unittest.TestCase):
    """A Maildir INBOX of three unread messages; C{self.walks} counts walks over its messages."""

    def setUp(self):
        self.store = MaildirStore(self.mktemp(), GroupCommitWriter(task.Clock()), hostname="test")
        self.folder = self.store.account("alice@example.org").folder("INBOX")
        for i in range(3):
            with open(os.path.join(self.folder.directory, "cur", f"17000000{i:02d}.M{i}P1Q{i}.mda:2,"), "wb") as f:
                f.write(MESSAGE)
        self.folder.unsettled()
        self.page = FolderPages.__new__(FolderPages)
        self.walks = 0
        real = self.folder.messages

        def counting():
            self.walks += 1
            return real()

        self.folder.messages = counting


class StatePollTests(_ThreeMessages):
    def poll(self) -> dict:
        return json.loads(self.page.state(_Request(), self.folder))

    def test_a_poll_walks_no_message_while_nothing_changed_and_follows_each_change(self):
        first = self.poll()
        self.assertEqual((first["count"], first["unseen"]), (3, 3))
        walks = self.walks
        for _ in range(5):
            self.assertEqual(self.poll(), first)
        self.assertEqual(self.walks, walks)  # (each poll walked every message before)
        uid = self.folder.messages()[0].uid
        self.folder.set_flags([uid], [SEEN], "add")
        self.assertEqual(self.poll()["unseen"], 2)
        cur = os.path.join(self.folder.directory, "cur")
        [name] = [n for n in os.listdir(cur) if n.endswith(":2,S")]
        os.unlink(os.path.join(cur, name))  # (another program removed it)
        self.assertEqual((self.poll()["count"], self.poll()["unseen"]), (2, 2))


class ApiFoldersPollTests(_ThreeMessages):
    """GET /api/v1/accounts/me/folders (polled by scripts too): the same counts, kept."""

    def test_the_folders_endpoint_walks_no_message_while_nothing_changed(self):
        from twisted.internet import defer

        from twisted_mailhub.web.api import ApiResource, Caller

        api = ApiResource.__new__(ApiResource)
        api.hub = type("Hub", (), {"store": self.store})()
        caller = Caller("alice@example.org", False)

        def folders():
            result = []
            defer.ensureDeferred(api.api_folders(None, caller, "me")).addCallback(result.append)
            return result[0]["folders"]

        self.assertEqual(folders(), [{"name": "INBOX", "messages": 3, "unseen": 3}])
        walks = self.walks
        for _ in range(3):
            folders()
        self.assertEqual(self.walks, walks)  # (each call walked every message before)
        self.folder.set_flags([self.folder.messages()[0].uid], ["\\Seen"], "add")
        self.assertEqual(folders(), [{"name": "INBOX", "messages": 3, "unseen": 2}])
