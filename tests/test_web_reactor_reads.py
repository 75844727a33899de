# -*- test-case-name: tests.test_web_reactor_reads -*-
"""
The web face reads a stored message in a parsing thread, never in the
reactor (web/mail.py: _message_later): its page, its Anatomy, a part and
its raw source. A 46 MB message read in the reactor held every other
client of the hub for the read; the Maildir file is opened in the
reactor and read in the thread.
"""

from __future__ import annotations

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from tests.test_small_files_durable import Journal
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.hub import Hub
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import MaildirFolder, MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles
from twisted_mailhub.web import offload

MESSAGE = (
    b"From: a@example.org\r\nTo: alice@localhost\r\nSubject: read off the reactor\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello there\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\r\nabc\r\n--b--\r\n"
)


class MessageReadsTests(unittest.TestCase):
    def setUp(self):
        from twisted_mailhub.web.avatar import WebUser
        from twisted_mailhub.web.site import WebFace

        self.journal = Journal()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        data = self.mktemp()
        os.makedirs(data)  # (the store makes an account's folder only in a data folder that is there: datafolder.must_exist)
        self.store = MaildirStore(os.path.join(data, "mail"), GroupCommitWriter(task.Clock()))
        self.store.small_files = SmallFiles(fsync=self.journal.fsync, run=self.journal.run)
        self.hub = Hub(task.Clock(), {"max-message-size": 10000}, accounts, self.store, data, "mail.test")
        self.face = WebFace(self.hub)
        self.session = self.face.sessions.new(user=WebUser("alice@localhost", False, self.store))
        folder = self.store.account("alice@localhost").folder("INBOX")
        with open(os.path.join(folder.directory, "cur", f"1700000000.M1P1Q1.test,S={len(MESSAGE)}:2,S"), "wb") as f:
            f.write(MESSAGE)
        folder.unsettled()
        self.journal.run_jobs()
        # The parsing thread: run when the test says, and marked while it runs.
        self.threads: list = []
        self.in_thread = False

        def queued(function, *args):
            d = defer.Deferred()
            self.threads.append((function, args, d))
            return d

        self.patch(offload, "in_thread", queued)
        self.reads_in_reactor: list[int] = []
        real_read = MaildirFolder.read

        def read(folder, uid):
            if not self.in_thread:
                self.reads_in_reactor.append(uid)
            return real_read(folder, uid)

        self.patch(MaildirFolder, "read", read)
        real_open = MaildirFolder.open
        test = self

        class Watched:
            """The message file as open() gives it; a read outside the thread is recorded."""

            def __init__(self, f):
                self.f = f

            def read(self, *args):
                if not test.in_thread:
                    test.reads_in_reactor.append(("open", args))
                return self.f.read(*args)

            def close(self):
                self.f.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        self.patch(MaildirFolder, "open", lambda folder, uid: Watched(real_open(folder, uid)))

    def run_threads(self) -> None:
        while self.threads or self.journal.jobs:
            self.journal.run_jobs()
            while self.threads:
                function, args, d = self.threads.pop(0)
                self.in_thread = True
                try:
                    result = function(*args)
                finally:
                    self.in_thread = False
                d.callback(result)

    def get(self, path: str) -> defer.Deferred:
        """GET /mail/INBOX/<path> as the browser gets it: a Deferred of the body (status 200)."""
        from twisted.web import server
        from twisted.web.test.requesthelper import DummyRequest

        from twisted_mailhub.web.errors import MethodGuard
        from twisted_mailhub.web.mail import FolderPages

        address, _, query = path.partition("?")
        request = DummyRequest([p.encode() for p in address.split("/")])
        request.method = b"GET"
        request.path = b"/mail/INBOX/" + address.encode()
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            request.addArg(name.encode(), value.encode())
        request.processingFailed = lambda reason: self.fail(reason.getTraceback())

        def page(_):
            self.assertEqual(request.responseCode or 200, 200)
            return b"".join(request.written)

        shown = request.notifyFinish().addCallback(page)
        body = MethodGuard(FolderPages(self.face, self.session, "INBOX")).render(request)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()
        return shown

    def test_a_reply_and_a_forward_are_filled_in_from_a_message_read_in_a_parsing_thread(self):
        from twisted.web import server
        from twisted.web.test.requesthelper import DummyRequest

        from twisted_mailhub.web.errors import MethodGuard
        from twisted_mailhub.web.mail import Compose

        for mode in ("reply", "forward"):
            request = DummyRequest([b""])
            request.method = b"GET"
            request.addArg(mode.encode(), b"INBOX/1")
            request.processingFailed = lambda reason: self.fail(reason.getTraceback())
            shown = request.notifyFinish().addCallback(lambda _, r=request: b"".join(r.written))
            body = MethodGuard(Compose(self.face, self.session)).render(request)
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()
            self.run_threads()
            self.assertIn(b"read off the reactor", self.successResultOf(shown))
        self.assertEqual(self.reads_in_reactor, [])

    def test_the_json_apis_message_and_its_source_are_read_in_a_parsing_thread(self):
        from twisted_mailhub.web.api import ApiResource

        api = ApiResource.__new__(ApiResource)
        folder = self.store.account("alice@localhost").folder("INBOX")
        read = defer.ensureDeferred(api._read(folder, 1))
        self.assertNoResult(read)
        self.run_threads()
        self.assertEqual(self.successResultOf(read), MESSAGE)
        self.assertEqual(self.reads_in_reactor, [])

    def test_a_message_its_anatomy_a_part_and_its_source_are_read_in_a_parsing_thread(self):
        for path, shown in (("1", b"hello there"), ("1/anatomy", b"read off the reactor"), ("1/part/2", b"abc"), ("1/raw", MESSAGE)):
            page = self.get(path)
            self.run_threads()
            self.assertIn(shown, self.successResultOf(page), path)
        # (before: each read the whole message in the reactor)
        self.assertEqual(self.reads_in_reactor, [])

    def add_four_messages(self, folder) -> None:
        """Write four more copies of MESSAGE, seen, into C{folder}'s cur/ (Maildir names 2 to 5)."""
        for n in range(2, 6):
            with open(os.path.join(folder.directory, "cur", f"170000000{n}.M{n}P1Q1.test,S={len(MESSAGE)}:2,S"), "wb") as f:
                f.write(MESSAGE)

    def watch_search(self) -> list:
        """The search's worker thread queued as the parsing thread is; the message files os.open()ed in the reactor."""
        from twisted_mailhub.imap import search

        self.patch(search, "in_thread", self._queue)
        opened: list = []
        real_open = os.open
        directory = self.store.account("alice@localhost").folder("INBOX").directory

        def os_open(path, *args, **kwargs):
            if not self.in_thread and isinstance(path, str) and path.startswith((directory + "/cur/", directory + "/new/")):
                opened.append(path)
            return real_open(path, *args, **kwargs)

        self.patch(os, "open", os_open)
        return opened

    def _queue(self, function, *args):
        d = defer.Deferred()
        self.threads.append((function, args, d))
        return d

    def test_a_folder_search_reads_and_matches_the_messages_in_a_worker_thread(self):
        opened = self.watch_search()
        page = self.get("?q=hello")
        self.assertNoResult(page)
        self.run_threads()
        self.assertIn(b"1 message match", self.successResultOf(page))
        page = self.get("?q=nowhere")
        self.run_threads()
        self.assertIn(b"0 messages match", self.successResultOf(page))
        # (before: the search read the message whole in the reactor; and
        # until stop 18 the page's rows peeked at each header there)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(opened, [])

    def test_a_folder_search_whose_browser_went_away_reads_no_further_slice(self):
        # A search of a big folder went on reading every slice after the
        # browser had gone (a tab closed, a page left), holding one of the
        # two parsing threads (IMAP's SEARCH likewise, imap/search.py).
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.test.requesthelper import DummyRequest

        from twisted_mailhub.imap import search
        from twisted_mailhub.web.errors import MethodGuard
        from twisted_mailhub.web.mail import FolderPages

        folder = self.store.account("alice@localhost").folder("INBOX")
        self.add_four_messages(folder)
        self.watch_search()
        self.patch(search, "MATCH_SLICE", 2)
        slices: list[int] = []
        real = search._walk_detached
        self.patch(search, "_walk_detached", lambda predicates, entries, *rest: (slices.append(len(entries)), real(predicates, entries, *rest))[1])
        request = DummyRequest([b""])
        request.method = b"GET"
        request.path = b"/mail/INBOX/"
        request.addArg(b"q", b"hello")
        MethodGuard(FolderPages(self.face, self.session, "INBOX")).render(request)
        while not self.threads and self.journal.jobs:
            self.journal.run_jobs()  # (the new files settled: the search starts)
        self.assertEqual(len(self.threads), 1)  # (its first slice waits for the thread)
        DummyRequest.processingFailed(request, Failure(ConnectionLost()))  # (the browser went away)
        self.run_threads()
        self.assertEqual(slices, [2])  # (before: [2, 2, 1], the whole folder)
        self.flushLoggedErrors(ConnectionLost)

    def test_a_folder_pages_rows_read_their_headers_in_a_worker_thread(self):
        opened = self.watch_search()
        page = self.get("")
        self.assertNoResult(page)
        self.run_threads()
        self.assertIn(b"read off the reactor", self.successResultOf(page))
        # (before: each row's first HEADER_PEEK octets were read in the reactor)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(opened, [])

    def test_the_json_apis_search_reads_and_matches_the_messages_in_a_worker_thread(self):
        from twisted_mailhub.imap.search import compile_query
        from twisted_mailhub.web.api import ApiResource

        opened = self.watch_search()
        api = ApiResource.__new__(ApiResource)
        folder = self.store.account("alice@localhost").folder("INBOX")
        found = defer.maybeDeferred(api._matching, folder, compile_query(folder, "BODY hello", words=False), folder.messages())
        self.assertNoResult(found)
        self.run_threads()
        self.assertEqual([i.uid for i in self.successResultOf(found)], [1])
        # (before: read whole in the reactor)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(opened, [])

    def test_the_json_apis_search_reads_no_further_slice_once_its_client_is_gone(self):
        from twisted_mailhub.imap import search
        from twisted_mailhub.imap.search import compile_query
        from twisted_mailhub.web.api import ApiResource

        folder = self.store.account("alice@localhost").folder("INBOX")
        self.add_four_messages(folder)
        folder.unsettled()
        self.journal.run_jobs()
        self.watch_search()
        self.patch(search, "MATCH_SLICE", 2)
        slices: list[int] = []
        real = search._walk_detached
        self.patch(search, "_walk_detached", lambda predicates, entries, *rest: (slices.append(len(entries)), real(predicates, entries, *rest))[1])
        api = ApiResource.__new__(ApiResource)
        there = [True]
        found = api._matching(folder, compile_query(folder, "BODY hello", words=False), folder.messages(), lambda: there[0])
        there[0] = False  # (the client went away while the first slice was read)
        self.run_threads()
        self.successResultOf(found)
        self.assertEqual(slices, [2])  # (before: [2, 2, 1])

