"""
Small state is durable before it is acknowledged: IMAP CREATE, DELETE,
RENAME, SUBSCRIBE and UNSUBSCRIBE on Maildir, and FTP MKD, RMD, DELE and
RNTO on disk, are answered only after the fsyncs that keep them
(store/smallfiles.py), made off the reactor. Each test records every
fsync (the file or directory it flushed) and what the client was told, in
one list, and checks their order: the change, its fsync, then the reply.
"""

from __future__ import annotations

import base64
import os

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twisted_mailhub import imap
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.ftp.vfs import DiskShell
from twisted_mailhub.hub import Hub
from twisted_mailhub.imap.server import IMAPServer
from twisted_mailhub.store.durable import GroupCommitWriter
from twisted_mailhub.store.maildir import MaildirStore
from twisted_mailhub.store.smallfiles import SmallFiles

from tests.thread_helpers import HeldThread


class Journal(HeldThread):
    """
    One list of what happened, in order: ("fsync", path) for every flush,
    ("reply", line) for every reply; the "thread" is run when the test says.
    """

    real_fsync = staticmethod(os.fsync)

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.jobs: list[tuple] = []

    def fsync(self, fd: int) -> None:
        self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        self.real_fsync(fd)

    def run(self, function, *args):
        return self.thread(function, *args)

    def flushed(self) -> list[str]:
        return [what for kind, what in self.events if kind == "fsync"]


class JournalTransport(StringTransport):
    def __init__(self, journal: Journal, **kw):
        StringTransport.__init__(self, **kw)
        self.journal = journal

    def write(self, data):
        for line in bytes(data).split(b"\r\n"):
            if line:
                self.journal.events.append(("reply", line.decode("utf-8", "replace")))
        StringTransport.write(self, data)


class IMAPFolderChangesTests(unittest.TestCase):
    def setUp(self):
        self.journal = Journal()
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        accounts.add("bob", "secret")
        accounts.add("carol", "secret")
        self.data = self.mktemp()
        self.store = MaildirStore(os.path.join(self.data, "mail"), GroupCommitWriter(self.clock))
        self.store.small_files = SmallFiles(fsync=self.journal.fsync, run=self.journal.run)
        self.hub = Hub(self.clock, {"max-message-size": 10000}, accounts, self.store, self.data, "mail.test")
        self.hub._tls = object()
        imap.install(self.hub)
        self.account_dir = os.path.realpath(self.store.account_path("alice@localhost"))
        self.server = IMAPServer(self.hub, "imap")
        self.transport = JournalTransport(self.journal, peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        self.server.makeConnection(self.transport)
        self.addCleanup(self.server.connectionLost, None)
        self.server.dataReceived(b"a login alice secret\r\n")
        self.journal.run_jobs()  # the first login's special-use folders and subscriptions
        self.assertTrue(any(r.startswith("a OK") for r in self.replies()), self.replies())
        del self.journal.events[:]

    def replies(self) -> list[str]:
        return [what for kind, what in self.journal.events if kind == "reply"]

    def assert_flushed_then_answered(self, command: bytes, tagged: str, flushed: list[str]) -> None:
        """C{command} is not answered until its flush has run; then the flush comes first."""
        self.server.dataReceived(command)
        self.assertEqual([r for r in self.replies() if r.startswith("t ")], [], "answered before the flush")
        self.assertTrue(self.journal.jobs, "no flush asked for")
        self.journal.run_jobs()
        events = self.journal.events
        answer = [i for i, (kind, what) in enumerate(events) if kind == "reply" and what.startswith("t ")]
        self.assertEqual(len(answer), 1, events)
        self.assertTrue(events[answer[0]][1].startswith(tagged), events)
        done = [what for kind, what in events[: answer[0]] if kind == "fsync"]
        for path in flushed:
            self.assertIn(path, done, f"{path} not fsynced before the reply: {events}")
        del events[:]

    def test_the_first_logins_folders_are_on_disk_before_its_ok(self):
        # (setUp logged alice in: a new account, its Sent, Drafts, Trash...)
        for command in (b"b login bob secret\r\n", b"c authenticate plain " + base64.b64encode(b"\0carol\0secret") + b"\r\n"):
            tag = command[:1].decode()
            server = IMAPServer(self.hub, "imap")
            server.makeConnection(JournalTransport(self.journal, peerAddress=IPv4Address("TCP", "127.0.0.1", 4322)))
            self.addCleanup(server.connectionLost, None)
            server.dataReceived(command)
            self.assertEqual([r for r in self.replies() if r.startswith(tag + " ")], [], "answered before the flush")
            self.journal.run_jobs()
            events = self.journal.events
            [answer] = [i for i, (kind, what) in enumerate(events) if kind == "reply" and what.startswith(tag + " ")]
            self.assertTrue(events[answer][1].startswith(tag + " OK"), events)
            account = os.path.realpath(self.store.account_path(("bob" if tag == "b" else "carol") + "@localhost"))
            done = [what for kind, what in events[:answer] if kind == "fsync"]
            self.assertIn(account, done)
            self.assertIn(os.path.join(account, ".Sent"), done)
            del events[:]

    def test_a_first_login_whose_folders_could_not_be_saved_is_refused_as_unavailable(self):
        def fail(function, *args):
            return defer.fail(OSError(5, "Input/output error"))

        self.journal.run = fail
        self.store.small_files._run = fail
        server = IMAPServer(self.hub, "imap")
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4323))
        server.makeConnection(transport)
        self.addCleanup(server.connectionLost, None)
        from twisted.logger import globalLogPublisher

        from twisted_mailhub.logobserver import ClassicLines

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server.dataReceived(b"b login bob secret\r\n")
        self.assertIn(b"b NO [UNAVAILABLE]", transport.value())
        self.assertNotIn(b"Traceback", transport.value())
        # The log says why in words: no "[Errno 5]", no exception's name.
        lines = "".join(ClassicLines()(event) or "" for event in events)
        self.assertIn("Input/output error", lines)
        self.assertEqual(lines.count("not made durable"), 1, lines)  # (one failed flush, one line)
        self.assertNotIn("Errno", lines)
        self.assertNotIn("OSError", lines)

    def lose_the_list_of(self, name: str) -> str:
        """C{name}'s UID list gone (a crash, an imported Maildir) and the folder not open in this process."""
        self.assert_flushed_then_answered(b"t create " + name.encode() + b"\r\n", "t OK", [self.account_dir])
        folder = os.path.join(self.account_dir, "." + name)
        with open(os.path.join(folder, "new", "1.outside"), "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        os.unlink(os.path.join(folder, "mailhub-uidlist"))
        self.store.account("alice@localhost")._folders.pop(name)
        return folder

    def test_select_status_and_list_status_of_a_folder_whose_list_is_made_again_answer_after_it_is_durable(self):
        commands = [
            ("Lost", b"t select Lost\r\n", "t OK [READ-WRITE]"),
            ("Lost2", b"t status Lost2 (UIDVALIDITY MESSAGES)\r\n", "t OK STATUS"),
            ("Lost3", b't list "" Lost3 return (status (uidvalidity))\r\n', "t OK LIST"),
        ]
        for name, command, tagged in commands:
            folder = self.lose_the_list_of(name)
            in_reactor = []
            real_fsync = os.fsync
            self.patch(os, "fsync", lambda fd: in_reactor.append(os.readlink(f"/proc/self/fd/{fd}")))
            self.server.dataReceived(command)
            self.patch(os, "fsync", real_fsync)
            self.assertEqual(in_reactor, [])  # (it made 3 before: the list, the counter, the folder)
            self.assertFalse([r for r in self.replies() if "UIDVALIDITY" in r or r.startswith("t ")], "told before the flush")
            self.assert_flushed_then_answered(b"", tagged, [os.path.join(folder, "mailhub-uidlist"), folder])

    def test_notify_status_of_a_folder_whose_list_is_made_again_is_told_after_it_is_durable(self):
        # RFC 5465 §3: SET STATUS sends each watched mailbox's UIDVALIDITY.
        folder = self.lose_the_list_of("Lost")
        self.server.dataReceived(b"t notify set status (mailboxes Lost (MessageNew MessageExpunge))\r\n")
        self.assertFalse([r for r in self.replies() if "UIDVALIDITY" in r or r.startswith("t ")], "told before the flush")
        self.assert_flushed_then_answered(b"", "t OK NOTIFY", [os.path.join(folder, "mailhub-uidlist"), folder])
        # (the notice itself came between the flush and the OK)
        self.assertRegex(self.transport.value().decode(), r'\* STATUS "?Lost"? \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)\r\nt OK NOTIFY')

    def test_a_notify_notice_of_a_folder_whose_list_is_made_again_waits_for_it_to_be_durable(self):
        self.server.dataReceived(b"t notify set (mailboxes Later (MessageNew MessageExpunge))\r\n")
        self.assertIn("t OK NOTIFY completed", self.replies())
        del self.journal.events[:]
        folder = self.lose_the_list_of("Later")
        notifier = self.server.notifier
        notifier.status["Later"] = {b"MESSAGES", b"UIDNEXT"}  # (as a new message's notice leaves it)
        del self.journal.events[:]
        self.server.dataReceived(b"u noop\r\n")
        self.assertFalse([r for r in self.replies() if r.startswith("* STATUS")], "told before the flush")
        self.journal.run_jobs()
        events = self.journal.events
        told = [i for i, (kind, what) in enumerate(events) if kind == "reply" and what.startswith("* STATUS")]
        self.assertEqual(len(told), 1, events)
        self.assertIn(os.path.join(folder, "mailhub-uidlist"), [what for kind, what in events[: told[0]] if kind == "fsync"])

    def test_create_is_answered_after_the_account_directory_is_fsynced(self):
        self.assert_flushed_then_answered(b"t create Work\r\n", "t OK CREATE", [self.account_dir])
        self.assertTrue(os.path.isdir(os.path.join(self.account_dir, ".Work", "cur")))

    def test_create_makes_no_fsync_in_the_reactor_and_flushes_the_new_folders_files_before_its_reply(self):
        in_reactor = []
        self.patch(os, "fsync", lambda fd: in_reactor.append(os.readlink(f"/proc/self/fd/{fd}")))
        folder = os.path.join(self.account_dir, ".Fresh")
        self.assert_flushed_then_answered(
            b"t create Fresh\r\n",
            "t OK CREATE",
            [os.path.join(folder, "mailhub-uidlist"), os.path.join(self.account_dir, "mailhub-uidvalidity"), folder, self.account_dir],
        )
        self.assertEqual(in_reactor, [])

    def test_delete_is_answered_after_the_account_directory_is_fsynced(self):
        self.assert_flushed_then_answered(b"t create Old\r\n", "t OK", [self.account_dir])
        self.assert_flushed_then_answered(b"t delete Old\r\n", "t OK DELETE", [self.account_dir])
        self.assertFalse(os.path.exists(os.path.join(self.account_dir, ".Old")))

    def test_rename_is_answered_after_the_account_directory_is_fsynced(self):
        self.assert_flushed_then_answered(b"t create A/B\r\n", "t OK", [self.account_dir])
        self.assert_flushed_then_answered(b"t rename A C\r\n", "t OK RENAME", [self.account_dir])
        self.assertTrue(os.path.isdir(os.path.join(self.account_dir, ".C.B", "cur")))

    def test_rename_makes_no_fsync_in_the_reactor_and_moves_the_folders_after_its_record_is_durable(self):
        self.assert_flushed_then_answered(b"t create A/B\r\n", "t OK", [self.account_dir])
        in_reactor = []
        real_fsync = os.fsync
        self.patch(os, "fsync", lambda fd: in_reactor.append(os.readlink(f"/proc/self/fd/{fd}")))
        self.server.dataReceived(b"t rename A C\r\n")
        self.patch(os, "fsync", real_fsync)
        self.assertEqual(in_reactor, [])  # (the record made 2 before: its file and the account's directory)
        self.assertTrue(os.path.isdir(os.path.join(self.account_dir, ".A.B")), "moved before its record is durable")
        record = os.path.join(self.account_dir, f"mailhub-renaming.{os.getpid()}.tmp")
        self.assert_flushed_then_answered(b"", "t OK RENAME", [record, self.account_dir])
        self.assertTrue(os.path.isdir(os.path.join(self.account_dir, ".C.B", "cur")))
        self.assertFalse(os.path.exists(os.path.join(self.account_dir, "mailhub-renaming")))

    def test_a_rename_whose_names_changed_before_its_record_was_durable_is_refused_and_leaves_no_record(self):
        self.assert_flushed_then_answered(b"t create Gone\r\n", "t OK", [self.account_dir])
        self.server.dataReceived(b"t rename Gone Here\r\n")
        self.store.account("alice@localhost").delete_folder("Gone")  # (another session, meanwhile)
        self.journal.run_jobs()
        self.assertIn("t NO [NONEXISTENT] no such mailbox: Gone", self.replies())
        self.assertFalse(os.path.exists(os.path.join(self.account_dir, "mailhub-renaming")))
        self.assertFalse(os.path.exists(os.path.join(self.account_dir, ".Here")))

    def test_subscribe_and_unsubscribe_are_answered_after_the_file_and_its_directory_are_fsynced(self):
        path = os.path.join(self.account_dir, "subscriptions")
        tmp = f"{path}.{os.getpid()}.tmp"
        self.assert_flushed_then_answered(b"t subscribe Elsewhere\r\n", "t OK SUBSCRIBE", [tmp, self.account_dir])
        with open(path, encoding="utf-8") as f:
            self.assertIn("Elsewhere\n", f.read())
        self.assert_flushed_then_answered(b"t unsubscribe Elsewhere\r\n", "t OK UNSUBSCRIBE", [tmp, self.account_dir])
        with open(path, encoding="utf-8") as f:
            self.assertNotIn("Elsewhere", f.read())

    def test_a_command_sent_behind_a_subscribe_is_read_after_it_is_durable_and_sees_it(self):
        self.server.dataReceived(b"t subscribe Later\r\nu lsub \"\" Later\r\n")
        self.assertEqual([r for r in self.replies() if r[:2] in ("t ", "u ")], [])
        self.journal.run_jobs()
        replies = self.replies()
        self.assertTrue(replies[0].startswith("t OK"), replies)
        self.assertIn('* LSUB (\\Noselect) "/" "Later"', replies)
        self.assertTrue(replies[-1].startswith("u OK"), replies)

    def test_a_flush_that_fails_is_a_no_and_no_traceback(self):
        def failing(fd):
            raise OSError(5, "Input/output error")

        self.store.small_files.fsync = failing
        self.server.dataReceived(b"t create Broken\r\n")
        self.journal.run_jobs()
        replies = self.replies()
        self.assertEqual(replies, ["t NO [SERVERBUG] Input/output error"])

    def test_subscriptions_read_between_the_change_and_its_flush_show_the_change(self):
        account = self.store.account("alice@localhost")
        account.subscribe("Pending")
        self.assertIn("Pending", account.subscriptions())
        self.journal.run_jobs()
        self.assertIn("Pending", account.subscriptions())


class ReactorFlushTests(unittest.TestCase):
    """
    What the Maildir store flushes after a folder's load (the lines of
    files another program put in, a UID list rewritten whole, a RENAME a
    crash cut short) is flushed in a worker thread, never in the reactor
    (an fsync there stalls every session), and told only once durable.
    """

    def setUp(self):
        self.journal = Journal()
        self.store = MaildirStore(self.mktemp(), GroupCommitWriter(task.Clock()), hostname="test")
        self.store.small_files = SmallFiles(fsync=self.journal.fsync, run=self.journal.run)
        self.in_reactor: list[str] = []

    def record_reactor_flushes(self) -> None:
        record = lambda fd: self.in_reactor.append(os.readlink(f"/proc/self/fd/{fd}"))  # noqa: E731
        self.patch(os, "fsync", record)
        self.patch(os, "fdatasync", record)

    def put_in(self, folder, name: str, sub: str = "new") -> None:
        message = b"Subject: from outside\r\n\r\nbody\r\n"
        with open(os.path.join(folder.directory, sub, f"{name},S={len(message)}"), "wb") as f:
            f.write(message)

    def test_a_file_another_program_put_in_is_told_after_its_line_is_flushed_in_a_thread(self):
        folder = self.store.account("alice@example.org").folder("INBOX")
        self.journal.run_jobs()
        changes = []
        folder.add_listener(changes.append)
        self.put_in(folder, "1700000000.M1P1Q1.mda")
        # Another MDA's: bare LF line ends, its S= their size.
        bare = b"Subject: bare LF\n\nbody\n"
        with open(os.path.join(folder.directory, "new", f"1700000001.M2P1Q2.mda,S={len(bare)}"), "wb") as f:
            f.write(bare)
        del self.journal.events[:]
        self.record_reactor_flushes()
        waiting = folder.unsettled()
        self.assertEqual(self.in_reactor, [])  # (it made 3 before: mailhub-unchecked, its directory, the list)
        self.assertIsNotNone(waiting, "a message found is told before its UID is durable")
        self.assertEqual(folder.messages(), [])
        self.assertEqual(changes, [])
        self.patch(os, "fsync", Journal.real_fsync)  # (what the jobs, "the thread", do is not the reactor's)
        self.journal.run_jobs()
        self.assertEqual(self.in_reactor, [])
        self.assertEqual([c.added for c in changes], [(1, 2)])
        self.assertEqual([(i.uid, i.size) for i in folder.messages()], [(1, 31), (2, len(bare) + 3)])  # (read and made CRLF before it was told)
        with open(os.path.join(folder.directory, "new", f"1700000001.M2P1Q2.mda,S={len(bare)}"), "rb") as f:
            self.assertEqual(f.read(), bare.replace(b"\n", b"\r\n"))
        self.assertIn(os.path.join(os.path.realpath(folder.directory), "mailhub-uidlist"), self.journal.flushed())
        self.assertIsNone(folder.unsettled())
        again = MaildirStore(self.store.root, hostname="test").account("alice@example.org").folder("INBOX")
        self.assertEqual([(i.uid, i.key, i.size) for i in again.messages()], [(1, "1700000000.M1P1Q1.mda,S=31", 31), (2, f"1700000001.M2P1Q2.mda,S={len(bare)}", len(bare) + 3)])

    def test_files_found_at_a_load_are_flushed_in_a_thread_before_they_are_told(self):
        account = self.store.account("alice@example.org")
        self.put_in(account.folder("INBOX"), "1700000000.M1P1Q1.mda", "cur")
        self.journal.run_jobs()
        account._folders.clear()
        self.put_in(account.folder("INBOX"), "1700000000.M2P1Q2.mda", "cur")  # (found by that load: the first one listed)
        account._folders.clear()
        self.journal.run_jobs()
        self.put_in(account.folder("INBOX"), "1700000000.M3P1Q3.mda", "cur")
        account._folders.clear()
        self.record_reactor_flushes()
        folder = account.folder("INBOX")
        self.assertEqual(self.in_reactor, [])
        self.assertIsNotNone(folder.unsettled())
        self.journal.run_jobs()
        self.assertIsNone(folder.unsettled())
        self.assertEqual(len(folder.messages()), 3)

    def test_files_listed_on_trust_at_a_load_are_read_and_made_crlf_in_a_thread_before_they_are_told(self):
        from twisted_mailhub.store.maildir import MaildirFolder

        account = self.store.account("alice@example.org")
        inbox = account.folder("INBOX")
        self.journal.run_jobs()
        # Another MDA's files: bare LF line ends, their S= their size.
        bare = b"Subject: bare LF\n\nbody\n"
        earlier = os.path.join(inbox.directory, "cur", f"1700000001.M2P1Q2.mda,S={len(bare)}")
        with open(earlier, "wb") as f:
            f.write(bare)
        # (listed on trust by an earlier run that did not check it: left in mailhub-unchecked)
        MaildirFolder("INBOX", inbox.directory, GroupCommitWriter(task.Clock()), "test")
        now = os.path.join(inbox.directory, "cur", f"1700000002.M3P1Q3.mda,S={len(bare)}")
        with open(now, "wb") as f:
            f.write(bare)  # (found by the next load)
        account._folders.clear()
        del self.journal.events[:]
        self.record_reactor_flushes()
        folder = account.folder("INBOX")
        self.assertEqual(self.in_reactor, [])
        self.assertIsNotNone(folder.unsettled(), "sizes of files listed on trust are told before they are read")
        with open(earlier, "rb") as f:
            self.assertEqual(f.read(), bare)  # (not read in the reactor)
        self.patch(os, "fsync", Journal.real_fsync)  # (what the jobs, "the thread", do is not the reactor's)
        self.journal.run_jobs()
        self.record_reactor_flushes()
        self.assertIsNone(folder.unsettled())
        # What a first FETCH of sizes, a POP3 LIST or a body read asks: no
        # read, no rewrite and no fsync of a message in the reactor now
        # (before: each file made CRLF here, tmp + fsync + rename).
        self.assertEqual([(i.uid, i.size) for i in folder.messages()], [(1, len(bare) + 3), (2, len(bare) + 3)])
        self.assertEqual(folder.info(1).size, len(bare) + 3)
        self.assertEqual(self.in_reactor, [])
        for path in (earlier, now):
            with open(path, "rb") as f:
                self.assertEqual(f.read(), bare.replace(b"\n", b"\r\n"))
        self.assertEqual(folder._unchecked, set())
        again = MaildirStore(self.store.root, hostname="test").account("alice@example.org").folder("INBOX")
        self.assertEqual([(i.uid, i.size) for i in again.messages()], [(1, len(bare) + 3), (2, len(bare) + 3)])

    def test_a_file_put_in_without_s_is_read_and_made_crlf_in_a_thread_not_when_found(self):
        folder = self.store.account("alice@example.org").folder("INBOX")
        self.journal.run_jobs()
        bare = b"Subject: no S= and bare LF\n\nbody\n"
        path = os.path.join(folder.directory, "cur", "1700000001.M2P1Q2.mda:2,S")
        with open(path, "wb") as f:
            f.write(bare)
        self.record_reactor_flushes()
        waiting = folder.unsettled()  # (the look that finds it)
        # (before: read whole and its CRLF copy fsynced here, in the reactor)
        self.assertEqual(self.in_reactor, [])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), bare)
        self.assertIsNotNone(waiting)
        self.assertEqual(folder.messages(), [])
        self.patch(os, "fsync", Journal.real_fsync)
        self.journal.run_jobs()
        self.record_reactor_flushes()
        self.assertEqual([(i.uid, i.size) for i in folder.messages()], [(1, len(bare) + 3)])
        self.assertEqual(folder.read(1), bare.replace(b"\n", b"\r\n"))
        self.assertEqual(self.in_reactor, [])
        again = MaildirStore(self.store.root, hostname="test").account("alice@example.org").folder("INBOX")
        self.assertEqual([(i.uid, i.size) for i in again.messages()], [(1, len(bare) + 3)])

    def test_a_failed_flush_of_files_found_at_a_load_is_told_to_its_waiters_and_leaves_no_traceback(self):
        import gc

        account = self.store.account("alice@example.org")
        folder = account.folder("INBOX")
        self.journal.run_jobs()
        self.put_in(folder, "1700000000.M1P1Q1.mda", "cur")
        os.unlink(os.path.join(folder.directory, "mailhub-uidlist"))  # (lost: made again at the next load)
        account._folders.clear()

        def failing(fd):
            raise OSError(5, "Input/output error")

        self.store.small_files.fsync = failing
        folder = account.folder("INBOX")
        waiting = folder.unsettled()
        failures = []
        waiting.addErrback(failures.append)
        self.journal.run_jobs()
        self.assertEqual([f.value.errno for f in failures], [5])
        told = []
        account.durable().addErrback(told.append)
        self.assertEqual(len(told), 1)  # (the load's own flush: the account's durable() tells it)
        gc.collect()  # (a Deferred failing with nobody to take it logs "Unhandled error" and a traceback here)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_deleted_folders_files_are_removed_in_a_thread_and_leftovers_at_the_next_open(self):
        import shutil

        account = self.store.account("alice@example.org")
        folder = account.create_folder("Big")
        for i in range(20):
            self.put_in(folder, f"1700000000.M{i}P1Q{i}.mda", "cur")
        self.journal.run_jobs()
        removals = []
        real = shutil.rmtree
        self.patch(shutil, "rmtree", lambda path, **kw: (removals.append(path), real(path, **kw)))
        account.delete_folder("Big")
        self.assertEqual(account.folders(), ["INBOX"])  # gone at once for every reader
        self.assertEqual(removals, [])  # (before: its files were removed here, in the reactor)
        aside = [e for e in os.listdir(account.path) if e.startswith("mailhub-deleted.")]
        self.assertEqual(len(aside), 1)
        self.journal.run_jobs()
        self.assertEqual(removals, [os.path.join(account.path, aside[0])])
        self.assertEqual([e for e in os.listdir(account.path) if e.startswith("mailhub-deleted.")], [])
        # A removal a crash cut short: finished at the account's next open.
        left = os.path.join(account.path, "mailhub-deleted.1.1")
        os.makedirs(os.path.join(left, "cur"))
        self.store._accounts.clear()
        again = self.store.account("alice@example.org")
        self.assertEqual(again.folders(), ["INBOX"])
        self.journal.run_jobs()
        self.assertFalse(os.path.exists(left))

    def test_a_uid_list_rewritten_after_removals_is_flushed_in_a_thread(self):
        from twisted_mailhub.store import maildir

        self.patch(maildir, "EXTRA_LINES_SLACK", 0)
        folder = self.store.account("alice@example.org").folder("INBOX")
        for i in range(4):
            self.put_in(folder, f"1700000000.M{i}P1Q{i}.mda", "cur")
        folder.unsettled()
        self.journal.run_jobs()
        uids = [i.uid for i in folder.messages()]
        self.assertEqual(len(uids), 4)
        listing = os.path.join(folder.directory, "mailhub-uidlist")
        folder.set_flags(uids[:2], ["$A"], "add")
        del self.journal.events[:]
        self.record_reactor_flushes()
        folder.set_flags(uids, ["$B"], "add")  # 6 lines more than messages: over the slack
        self.assertEqual(self.in_reactor, [])  # (it made 1 before: the new list)
        self.assertTrue(self.journal.jobs, "no rewrite asked for")
        self.journal.run_jobs()
        self.assertEqual(self.in_reactor, [])
        self.assertEqual(self.journal.flushed(), [f"{os.path.realpath(listing)}.{os.getpid()}.tmp", os.path.realpath(folder.directory)])
        with open(listing, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 5)  # the header and one line each
        self.assertTrue(all(line.endswith(" $B") for line in lines[1:]), lines)
        again = MaildirStore(self.store.root, hostname="test").account("alice@example.org").folder("INBOX")
        self.assertEqual([i.uid for i in again.messages()], uids)

    def test_a_uid_list_rewrite_under_a_stream_of_appends_is_made_in_a_thread_with_the_lines_appended_meanwhile(self):
        from twisted_mailhub.store import maildir

        self.patch(maildir, "EXTRA_LINES_SLACK", 0)
        folder = self.store.account("alice@example.org").folder("INBOX")
        for i in range(4):
            self.put_in(folder, f"1700000000.M{i}P1Q{i}.mda", "cur")
        folder.unsettled()
        self.journal.run_jobs()
        uids = [i.uid for i in folder.messages()]
        folder.set_flags(uids[:2], ["$A"], "add")
        self.record_reactor_flushes()
        folder.set_flags(uids, ["$B"], "add")  # over the slack: a rewrite asked for
        # Each time the thread gets to it, the list has grown (lines
        # appended meanwhile, as a stream of deliveries or keyword
        # changes appends them): before, the rewrite was dropped, and at
        # the fourth try made in the reactor (tmp, fsync, rename).
        rewrites = 0
        for n in range(6):
            folder.set_flags(uids, [f"$C{n}"], "add")  # (appended, or a rewrite asked for)
            folder.set_flags([uids[n % 4]], [f"$D{n}"], "add")  # (appended: one is on its way)
            self.assertTrue(self.journal.jobs, "no rewrite on its way")
            function, args, d = self.journal.jobs.pop(0)
            d.callback(function(*args))
            rewrites += 1
            self.assertEqual(self.in_reactor, [])
        self.journal.run_jobs()
        self.assertEqual(self.in_reactor, [])
        listing = os.path.join(folder.directory, "mailhub-uidlist")
        with open(listing, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertLess(len(lines), 1 + 4 + 2 + 4 + 6 * 5, "never rewritten")
        expected = {uid: set(folder.info(uid).flags) for uid in uids}
        again = MaildirStore(self.store.root, hostname="test").account("alice@example.org").folder("INBOX")
        self.assertEqual({i.uid: set(i.flags) for i in again.messages()}, expected)
        self.assertTrue({"$A", "$B", "$C0", "$C5", "$D0", "$D4"} <= expected[uids[0]], expected)

    def test_a_rename_a_crash_cut_short_is_finished_with_no_fsync_in_the_reactor(self):
        import json

        account = self.store.account("alice@example.org")
        account.create_folder("Old")
        account.subscribe("Old")
        self.journal.run_jobs()
        record = os.path.join(account.path, "mailhub-renaming")
        with open(record, "w", encoding="utf-8") as f:
            json.dump({"old": "Old", "new": "New", "pid": 0, "boot": "an earlier boot"}, f)
        self.store._accounts.clear()
        del self.journal.events[:]
        self.record_reactor_flushes()
        account = self.store.account("alice@example.org")
        self.assertEqual(self.in_reactor, [])  # (it made 3 before: the subscriptions, the account twice)
        self.assertEqual(account.folders(), ["INBOX", "New"])
        self.assertEqual(account.subscriptions(), ["New"])
        self.assertTrue(os.path.exists(record), "the record went before the rest was durable")
        told = []
        account.durable().addCallback(told.append)
        self.assertEqual(told, [])
        self.journal.run_jobs()
        self.assertEqual(told, [None])
        self.assertFalse(os.path.exists(record))
        path = os.path.realpath(account.path)
        self.assertIn(os.path.join(path, "subscriptions.%d.tmp" % os.getpid()), self.journal.flushed())
        self.assertIn(path, self.journal.flushed())
        self.assertEqual(self.in_reactor, [])


class ListMadeAgainTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_message_appended_to_a_folder_whose_list_is_made_again_is_acknowledged_after_the_list_is_durable(self):
        journal = Journal()
        root = self.mktemp()
        store = MaildirStore(root, hostname="test")
        store.small_files = SmallFiles(fsync=journal.fsync, run=journal.run)
        account = store.account("alice@example.org")
        account.create_folder("Lost")
        journal.run_jobs()
        folder = os.path.realpath(os.path.join(account.path, ".Lost"))
        os.unlink(os.path.join(folder, "mailhub-uidlist"))
        account._folders.pop("Lost")  # (as a new process finds it)
        lost = account.folder("Lost")
        self.assertIsNotNone(lost.unsettled())
        written = []
        real_write = lost.writer.write

        def write(*args, **kw):
            written.append(real_write(*args, **kw))
            return written[-1]

        lost.writer.write = write
        appended = lost.append(b"Subject: y\r\n\r\nbody\r\n")
        yield written[0]  # the message and its UID line are durable...
        self.assertNoResult(appended)  # ...but not the list they were added to
        journal.run_jobs()
        self.assertIn(os.path.join(folder, "mailhub-uidlist"), journal.flushed())
        self.assertEqual((yield appended), 1)
        self.assertIsNone(lost.unsettled())


class SmallFilesTests(unittest.TestCase):
    def test_a_file_is_fsynced_before_its_rename_and_its_directory_after(self):
        journal = Journal()
        real_rename = os.rename

        def rename(a, b):
            journal.events.append(("rename", b))
            real_rename(a, b)

        small = SmallFiles(fsync=journal.fsync, run=journal.run)
        folder = os.path.realpath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "state")
        done = []
        small.replace(path, b"one\n").addCallback(done.append)
        self.patch(os, "rename", rename)
        journal.run_jobs()
        self.assertEqual(journal.events, [("fsync", f"{path}.{os.getpid()}.tmp"), ("rename", path), ("fsync", folder)])
        self.assertEqual(done, [None])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"one\n")

    def test_a_removal_comes_after_the_rest_of_its_batch_is_durable(self):
        # (a RENAME's record: its removal must not reach the disk before
        # the folder moves and subscriptions it waited for)
        journal = Journal()
        real_unlink = os.unlink

        def unlink(path):
            journal.events.append(("unlink", path))
            real_unlink(path)

        small = SmallFiles(fsync=journal.fsync, run=journal.run)
        folder = os.path.realpath(self.mktemp())
        os.makedirs(folder)
        record, state = os.path.join(folder, "record"), os.path.join(folder, "state")
        open(record, "w").close()
        small.sync_directories([folder])  # (a batch on its way: the next three share one)
        done = [small.remove(record), small.replace(state, b"new\n"), small.sync_directories([folder])]
        self.patch(os, "unlink", unlink)
        journal.run_jobs()
        for d in done:
            self.assertEqual(self.successResultOf(d), None)
        self.assertEqual(journal.events[1:], [("fsync", f"{state}.{os.getpid()}.tmp"), ("fsync", folder), ("unlink", record), ("fsync", folder)])
        self.assertFalse(os.path.exists(record))

    def test_requests_made_while_a_batch_is_on_its_way_share_the_next_one(self):
        journal = Journal()
        small = SmallFiles(fsync=journal.fsync, run=journal.run)
        folder = os.path.realpath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "state")
        first = small.replace(path, b"1\n")
        later = [small.replace(path, b"2\n"), small.replace(path, b"3\n"), small.sync_directories([folder])]
        self.assertEqual(small.pending(path), b"3\n")
        self.assertEqual(len(journal.jobs), 1)
        journal.run_jobs()  # the first batch, then the second (started when the first is done)
        self.assertEqual(self.successResultOf(first), None)
        for d in later:
            self.assertEqual(self.successResultOf(d), None)
        # two batches: the text asked for three times is written twice, its folder fsynced once a batch
        self.assertEqual(journal.flushed(), [f"{path}.{os.getpid()}.tmp", folder, f"{path}.{os.getpid()}.tmp", folder])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"3\n")
        self.assertIsNone(small.pending(path))

    def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(self):
        journal = Journal()
        small = SmallFiles(fsync=journal.fsync, run=journal.run)
        folder = os.path.realpath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "state")
        with open(path, "wb") as f:
            f.write(b"old\n")

        def failing(fd):
            raise OSError(28, "No space left on device")

        small.fsync = failing
        d = small.replace(path, b"new\n")
        journal.run_jobs()
        self.failureResultOf(d, OSError)
        self.assertEqual(os.listdir(folder), ["state"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old\n")


class FTPDirectoryChangesTests(unittest.TestCase):
    def setUp(self):
        self.journal = Journal()
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        self.shell = DiskShell(self.root, small_files=SmallFiles(fsync=self.journal.fsync, run=self.journal.run))

    def assert_told_after_the_fsync_of(self, d: defer.Deferred, *directories: str) -> None:
        self.assertNoResult(d)
        self.journal.run_jobs()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(sorted(self.journal.flushed()), sorted(directories))
        del self.journal.events[:]

    def test_mkd_rmd_dele_and_rnto_are_told_after_their_directory_is_fsynced(self):
        self.assert_told_after_the_fsync_of(self.shell.makeDirectory(["d"]), self.root)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "d")))
        self.assert_told_after_the_fsync_of(self.shell.makeDirectory(["d", "e"]), os.path.join(self.root, "d"))
        with open(os.path.join(self.root, "d", "f"), "wb") as f:
            f.write(b"x")
        self.assert_told_after_the_fsync_of(self.shell.rename(["d", "f"], ["g"]), os.path.join(self.root, "d"), self.root)
        self.assert_told_after_the_fsync_of(self.shell.removeFile(["g"]), self.root)
        self.assertFalse(os.path.exists(os.path.join(self.root, "g")))
        self.assert_told_after_the_fsync_of(self.shell.removeDirectory(["d", "e"]), os.path.join(self.root, "d"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "d", "e")))

    def test_a_rename_in_one_directory_fsyncs_it_once(self):
        with open(os.path.join(self.root, "f"), "wb") as f:
            f.write(b"x")
        self.assert_told_after_the_fsync_of(self.shell.rename(["f"], ["g"]), self.root)


class WebFirstPageTests(unittest.TestCase):
    """Webmail shows an account's folders, and a folder's UIDs, only once they are durable (as IMAP LOGIN and SELECT)."""

    def setUp(self):
        from twisted_mailhub.web.avatar import WebUser
        from twisted_mailhub.web.site import WebFace

        self.journal = Journal()
        self.clock = task.Clock()
        accounts = AccountBook(["localhost"])
        accounts.add("alice", "secret")
        self.data = self.mktemp()
        self.store = MaildirStore(os.path.join(self.data, "mail"), GroupCommitWriter(self.clock))
        self.store.small_files = SmallFiles(fsync=self.journal.fsync, run=self.journal.run)
        self.hub = Hub(self.clock, {"max-message-size": 10000}, accounts, self.store, self.data, "mail.test")
        self.face = WebFace(self.hub)
        self.session = self.face.sessions.new(user=WebUser("alice@localhost", False, self.store))
        self.account_dir = os.path.realpath(self.store.account_path("alice@localhost"))
        # The rows' headers are read in a parsing thread (search.heads_in_thread):
        # here at once, so a page waits only for the flushes this test runs.
        from twisted_mailhub.imap import search

        self.patch(search, "in_thread", lambda function, *args: defer.maybeDeferred(function, *args))

    def get(self, name: str) -> defer.Deferred:
        """The page of folder C{name} as the browser gets it: a Deferred of its text (status 200)."""
        from twisted.web import server
        from twisted.web.test.requesthelper import DummyRequest

        from twisted_mailhub.web.errors import MethodGuard
        from twisted_mailhub.web.mail import FolderPages

        request = DummyRequest([b""])
        request.method = b"GET"
        request.path = b"/mail/" + name.encode()
        request.processingFailed = lambda reason: self.fail(reason.getTraceback())

        def page(_):
            self.assertEqual(request.responseCode or 200, 200)
            self.journal.events.append(("reply", "page"))
            return b"".join(request.written).decode("utf-8")

        shown = request.notifyFinish().addCallback(page)
        body = MethodGuard(FolderPages(self.face, self.session, name)).render(request)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()
        return shown

    def answered_after(self, shown: defer.Deferred) -> list[str]:
        """What was fsynced before the page came, once the flushes ran (none before them)."""
        self.assertNoResult(shown)
        self.assertTrue(self.journal.jobs, "no flush asked for")
        self.journal.run_jobs()
        text = self.successResultOf(shown)
        events = self.journal.events
        done = [what for kind, what in events[: events.index(("reply", "page"))] if kind == "fsync"]
        del events[:]
        return text, done

    def test_the_first_page_of_a_session_comes_after_the_special_use_folders_are_durable(self):
        text, done = self.answered_after(self.get("INBOX"))
        self.assertIn("Sent", text)
        self.assertIn(self.account_dir, done)
        self.assertIn(os.path.join(self.account_dir, ".Sent"), done)
        # The next page has nothing to wait for.
        self.successResultOf(self.get("INBOX"))

    def test_a_folder_whose_list_is_made_again_is_shown_after_it_is_durable(self):
        self.answered_after(self.get("INBOX"))
        account = self.store.account("alice@localhost")
        folder = os.path.join(self.account_dir, ".Archive")
        with open(os.path.join(folder, "new", "1.outside"), "wb") as f:
            f.write(b"Subject: kept\r\n\r\nbody\r\n")
        os.unlink(os.path.join(folder, "mailhub-uidlist"))
        account._folders.pop("Archive")
        text, done = self.answered_after(self.get("Archive"))
        self.assertIn("kept", text)
        self.assertIn(os.path.join(folder, "mailhub-uidlist"), done)
