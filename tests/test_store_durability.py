# -*- test-case-name: tests.test_store_durability -*-
"""
The Maildir UID list under crashes and a full disk: a UID is durable
before it is announced, a damaged list keeps its good lines and its
UIDVALIDITY, and a write that fails after the point of no return leaves
the store and the answer in agreement (fault injection on os.write,
os.fsync and the directory fsync).
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store import durable
from twisted_mailhub.store.durable import PendingWrite, Record
from twisted_mailhub.store.interfaces import INBOX, InsufficientStorage
from twisted_mailhub.store.maildir import UIDLIST, MaildirStore, clean_tmp

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"
ADDRESS = "alice@example.org"


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class FolderCase(unittest.TestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, hostname="test")
        self.folder = self.store.account(ADDRESS).folder(INBOX)
        self.uidlist = os.path.join(self.folder.directory, UIDLIST)

    def reopen(self):
        return MaildirStore(self.root, hostname="test").account(ADDRESS).folder(INBOX)

    def listing(self, sub):
        return sorted(os.listdir(os.path.join(self.folder.directory, sub)))

    def uids_by_key(self, folder):
        return {info.key: info.uid for info in folder.messages()}

    @defer.inlineCallbacks
    def deliver(self, n):
        keys = []
        for _ in range(n):
            keys.append((yield self.folder.deliver(MESSAGE)))
        return keys

    def fail_writes_to(self, name_part, partial=True, code=errno.ENOSPC):
        """os.write to a file whose path contains C{name_part}: half of it, then ENOSPC."""
        real = os.write
        state = {"wrote": False, "on": True}

        def write(fd, data):
            if state["on"] and name_part in _path_of(fd):
                if partial and not state["wrote"]:
                    state["wrote"] = True
                    return real(fd, bytes(data)[: max(1, len(data) // 2)])
                raise OSError(code, os.strerror(code))
            return real(fd, data)

        self.patch(os, "write", write)
        return state


class UidListDurabilityTests(FolderCase):
    @defer.inlineCallbacks
    def test_uid_line_is_on_disk_when_delivery_is_acknowledged(self):
        key = yield self.folder.deliver(MESSAGE)
        uid = self.folder.messages()[0].uid
        with open(self.uidlist, encoding="utf-8") as f:
            self.assertIn(f"{uid} {key} ", f.read())

    @defer.inlineCallbacks
    def test_append_returns_a_uid_that_survives_a_reopen(self):
        uid = yield self.folder.append(MESSAGE, ["\\Seen", "$Work"])
        again = self.reopen()
        self.assertEqual(again.info(uid).flags, {"\\Seen", "$Work"})
        self.assertEqual(again.uid_validity, self.folder.uid_validity)

    def test_a_batch_with_uid_lines_costs_one_flush_per_file_and_one_per_list(self):
        flushed = []
        real_fsync, real_fdatasync = os.fsync, durable._fdatasync
        self.patch(os, "fsync", lambda fd: (flushed.append(_path_of(fd)), real_fsync(fd))[1])
        self.patch(durable, "_fdatasync", lambda fd: (flushed.append(_path_of(fd)), real_fdatasync(fd))[1])
        d = self.folder.directory
        with open(self.uidlist, "rb") as f:
            before = f.read()
        lock = self.folder._uidlist_lock
        batch = [
            PendingWrite(f"{d}/tmp/m{i}", f"{d}/new/m{i}", MESSAGE, record=Record(self.uidlist, b"%d m%d 30 1700000000\n" % (i + 1, i), lock))
            for i in range(5)
        ]
        self.assertEqual(durable._commit_batch(batch), [None] * 5)
        self.assertEqual(flushed.count(os.path.abspath(self.uidlist)), 1)
        # 5 message files, the list once, new/ once
        self.assertEqual(len(flushed), 7)
        with open(self.uidlist, "rb") as f:
            self.assertEqual(f.read(), before + b"".join(w.record.line for w in batch))


class DamagedUidListTests(FolderCase):
    @defer.inlineCallbacks
    def test_torn_last_line_keeps_good_lines_and_uidvalidity(self):
        yield self.deliver(3)
        before = self.uids_by_key(self.folder)
        with open(self.uidlist, "ab") as f:
            f.write(b"4 1700000000.M1P2Q3.tes")  # an append cut short
        again = self.reopen()
        self.assertEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(self.uids_by_key(again), before)
        with open(self.uidlist, "rb") as f:
            text = f.read()
        self.assertTrue(text.endswith(b"\n") and b"Q3.tes" not in text)

    @defer.inlineCallbacks
    def test_nul_filled_tail_keeps_uidvalidity_and_unlisted_message_gets_uid_above_uidnext(self):
        keys = yield self.deliver(3)
        before = self.uids_by_key(self.folder)
        with open(self.uidlist, "rb") as f:
            lines = f.read().split(b"\n")
        # A power cut: the size of the last append survived, its bytes did not.
        damaged = b"\n".join(lines[:-2]) + b"\n" + b"\0" * (len(lines[-2]) + 1 + 4096)
        with open(self.uidlist, "wb") as f:
            f.write(damaged)
        again = self.reopen()
        after = self.uids_by_key(again)
        self.assertEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual({k: after[k] for k in keys[:2]}, {k: before[k] for k in keys[:2]})
        self.assertGreaterEqual(after[keys[2]], max(before[k] for k in keys[:2]) + 1)
        with open(self.uidlist, "rb") as f:
            self.assertNotIn(b"\0", f.read())

    @defer.inlineCallbacks
    def test_nul_run_between_good_lines_costs_only_the_line_it_covers(self):
        keys = yield self.deliver(3)
        before = self.uids_by_key(self.folder)
        with open(self.uidlist, "rb") as f:
            header, first, second, third, _ = f.read().split(b"\n")
        # What the old loader met: NULs where line 2 was, later appends after them.
        with open(self.uidlist, "wb") as f:
            f.write(header + b"\n" + first + b"\n" + b"\0" * (len(second) + 1) + third + b"\n")
        again = self.reopen()
        after = self.uids_by_key(again)
        self.assertEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(after[keys[0]], before[keys[0]])
        self.assertEqual(after[keys[2]], before[keys[2]])
        self.assertGreater(after[keys[1]], before[keys[2]])

    @defer.inlineCallbacks
    def test_unreadable_header_means_a_new_uidvalidity(self):
        yield self.deliver(1)
        with open(self.uidlist, "r+b") as f:
            f.write(b"\0" * 10)
        again = self.reopen()
        self.assertNotEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(len(again.messages()), 1)


class FullDiskTests(FolderCase):
    @defer.inlineCallbacks
    def test_enospc_on_the_uid_line_stores_nothing_and_leaves_no_partial_line(self):
        yield self.deliver(2)
        with open(self.uidlist, "rb") as f:
            before = f.read()
        self.fail_writes_to(UIDLIST)
        yield self.assertFailure(self.folder.deliver(MESSAGE), InsufficientStorage)
        self.assertEqual(len(self.listing("new")), 2)
        self.assertEqual(self.listing("tmp"), [])
        with open(self.uidlist, "rb") as f:
            self.assertEqual(f.read(), before)

    @defer.inlineCallbacks
    def test_after_a_failed_append_the_next_uid_line_is_not_glued_on(self):
        yield self.deliver(2)
        disk = self.fail_writes_to(UIDLIST)
        yield self.assertFailure(self.folder.deliver(MESSAGE), InsufficientStorage)
        disk["on"] = False  # room again
        key = yield self.folder.deliver(MESSAGE)
        uids = self.uids_by_key(self.folder)
        again = self.reopen()
        self.assertEqual(self.uids_by_key(again), uids)
        self.assertEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(max(uids.values()), uids[key])

    @defer.inlineCallbacks
    def test_enospc_on_the_message_data_stores_nothing(self):
        yield self.deliver(1)
        self.fail_writes_to(os.path.join("tmp", ""), partial=True)
        yield self.assertFailure(self.folder.append(MESSAGE), InsufficientStorage)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("cur"), [])
        self.assertEqual(len(self.folder.messages()), 1)

    @defer.inlineCallbacks
    def test_enospc_from_fsync_stores_nothing(self):
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "fsync", fsync)
        self.patch(durable, "_sync_filesystem", lambda path, watch=None: fsync(None))  # (the flush of a quiet system: syncfs)
        yield self.assertFailure(self.folder.deliver(MESSAGE), InsufficientStorage)
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.listing("tmp"), [])

    @defer.inlineCallbacks
    def test_a_failed_directory_fsync_takes_the_renamed_message_back_out(self):
        def broken(path, watch=None):
            raise OSError(errno.EIO, "Input/output error", path)

        self.patch(durable, "fsync_directory", broken)
        self.patch(durable, "_sync_links", broken)  # (the same step for a message linked into place)
        failure = yield self.assertFailure(self.folder.deliver(MESSAGE), OSError)
        self.assertEqual(failure.errno, errno.EIO)
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.folder.messages(), [])

    @defer.inlineCallbacks
    def test_expunge_stands_when_the_list_cannot_be_rewritten(self):
        uid = yield self.folder.append(MESSAGE)
        keep = yield self.folder.append(MESSAGE)
        self.fail_writes_to(UIDLIST + ".tmp", partial=False)
        self.assertEqual(self.folder.expunge([uid]), [uid])
        self.assertEqual([i.uid for i in self.folder.messages()], [keep])
        self.assertEqual([i.uid for i in self.reopen().messages()], [keep])
        self.flushLoggedErrors()


class AllOrNothingCopyTests(FolderCase):
    @defer.inlineCallbacks
    def test_copy_that_runs_out_of_space_leaves_the_destination_as_it_was(self):
        uids = []
        for _ in range(3):
            uids.append((yield self.folder.append(MESSAGE)))
        destination = self.store.account(ADDRESS).create_folder("Archive")
        real = durable._create_file
        calls = []

        def create(path, data, *unnamed_in):
            # the disk fills up at the second copy
            if path.startswith(destination.directory):
                calls.append(path)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data, *unnamed_in)

        self.patch(durable, "_create_file", create)
        yield self.assertFailure(self.folder.copy_to(uids, destination), InsufficientStorage)
        self.assertEqual(destination.messages(), [])
        self.assertEqual(os.listdir(os.path.join(destination.directory, "cur")), [])


class MoveClaimTests(FolderCase):
    """L{MaildirFolder.copy_for_move}: each message's file is claimed before it is copied."""

    @defer.inlineCallbacks
    def test_a_move_that_runs_out_of_space_gives_its_messages_back(self):
        uids = []
        for _ in range(3):
            uids.append((yield self.folder.append(MESSAGE)))
        before = self.listing("cur")
        destination = self.store.account(ADDRESS).create_folder("Archive")
        real = durable._create_file

        def create(path, data, *unnamed_in):
            if path.startswith(destination.directory):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data, *unnamed_in)

        self.patch(durable, "_create_file", create)
        yield self.assertFailure(self.folder.copy_for_move(uids, destination), InsufficientStorage)
        self.assertEqual(self.listing("cur"), before)
        self.assertEqual([i.uid for i in self.folder.messages()], uids)
        self.assertEqual(self.folder.read(uids[0]), MESSAGE)
        self.assertEqual(destination.messages(), [])
        # and a move after it moves them
        self.patch(durable, "_create_file", real)
        pairs = yield self.folder.copy_for_move(uids, destination)
        self.assertEqual([s for s, _ in pairs], uids)

    @defer.inlineCallbacks
    def test_a_message_claimed_by_one_move_is_not_moved_by_another(self):
        uids = []
        for _ in range(2):
            uids.append((yield self.folder.append(MESSAGE)))
        first = self.store.account(ADDRESS).create_folder("F1")
        second = self.store.account(ADDRESS).create_folder("F2")
        one = self.folder.copy_for_move(uids, first)
        two = self.folder.copy_for_move(uids, second)
        # (claimed, not yet expunged: still read, still listed)
        self.assertEqual(self.folder.read(uids[1]), MESSAGE)
        self.assertEqual([i.uid for i in self.folder.messages()], uids)
        pairs_one = yield one
        self.assertEqual([s for s, _ in pairs_one], uids)
        self.assertFalse(two.called)  # (it waits for the first move's expunge)
        self.assertEqual(self.folder.expunge(uids), uids)
        yield self.folder.flush()
        self.assertEqual((yield two), [])
        self.assertEqual((len(first.messages()), len(second.messages()), self.folder.messages()), (2, 0, []))
        self.assertEqual([n for n in os.listdir(os.path.join(self.folder.directory, "tmp")) if n.startswith(".moving-")], [])


class CopyOfAMessageGoneTests(FolderCase):
    @defer.inlineCallbacks
    def test_a_copy_leaves_out_a_message_another_process_expunged_since(self):
        # Before, the copy failed (NoSuchMessage): IMAP answered COPY with
        # NO [SERVERBUG] and logged a traceback, for an ordinary race.
        uids = []
        for _ in range(3):
            uids.append((yield self.folder.append(MESSAGE)))
        self.folder.messages()
        os.unlink(self.folder.path(uids[1]))  # (another process's expunge)
        destination = self.store.account(ADDRESS).create_folder("Archive")
        pairs = yield self.folder.copy_to(uids, destination)
        self.assertEqual([s for s, _ in pairs], [uids[0], uids[2]])
        self.assertEqual(len(destination.messages()), 2)


class TmpCleaningTests(unittest.TestCase):
    def setUp(self):
        self.root = self.mktemp()
        store = MaildirStore(self.root, hostname="mail.test")
        self.account = store.account(ADDRESS)
        self.inbox = self.account.folder(INBOX).directory
        self.folder = self.account.create_folder("Work").directory

    def leave(self, directory, name, age=0.0):
        path = os.path.join(directory, "tmp", name)
        with open(path, "wb") as f:
            f.write(b"partial")
        if age:
            then = time.time() - age
            os.utime(path, (then, then))
        return path

    def dead_pid(self):
        process = subprocess.Popen(["true"])
        process.wait()
        return process.pid

    def test_files_of_dead_processes_of_this_host_go_at_once(self):
        dead = self.leave(self.inbox, f"1700000000.M1P{self.dead_pid()}Q1.mail.test,S=7")
        in_folder = self.leave(self.folder, f"1700000000.M2P{self.dead_pid()}Q2.mail.test,S=7")
        mine = self.leave(self.inbox, f"1700000000.M3P{os.getpid()}Q3.mail.test,S=7")
        other_host = self.leave(self.inbox, f"1700000000.M4P{self.dead_pid()}Q4.elsewhere,S=7")
        self.assertEqual(clean_tmp(self.root, "mail.test"), (2, 0))
        self.assertFalse(os.path.exists(dead) or os.path.exists(in_folder))
        self.assertTrue(os.path.exists(mine) and os.path.exists(other_host))

    def test_a_file_named_as_the_hubs_own_but_owned_by_another_user_is_left_to_the_36_hour_rule(self):
        # Dovecot's LDA runs as the user and names its tmp/ files as the hub
        # does (time.MnPnQn.host,S=n); its process id may mean nothing here
        # (another PID namespace). Before, clean_tmp removed it at the hub's
        # start, in the middle of its write.
        theirs = self.leave(self.inbox, f"1700000000.M1P{self.dead_pid()}Q1.mail.test,S=7")
        real_geteuid = os.geteuid
        self.patch(os, "geteuid", lambda: real_geteuid() + 1)  # (the hub runs as another user than the file's)
        self.assertEqual(clean_tmp(self.root, "mail.test"), (0, 0))
        self.assertTrue(os.path.exists(theirs))
        then = time.time() - 37 * 3600
        os.utime(theirs, (then, then))
        self.assertEqual(clean_tmp(self.root, "mail.test"), (0, 1))
        self.assertFalse(os.path.exists(theirs))

    def test_a_message_a_stopped_process_claimed_for_a_move_goes_back_to_cur(self):
        # A crash between a move's claim and its expunge: the message may
        # already be in the destination too, but is never lost.
        name = "1700000000.M9P1Q1.mail.test,S=7:2,S"
        dead = self.leave(self.inbox, f".moving-{self.dead_pid()}-{name}", age=40 * 3600)
        live = self.leave(self.folder, f".moving-{os.getpid()}-{name}")
        self.assertEqual(clean_tmp(self.root, "mail.test"), (0, 0))
        self.assertFalse(os.path.exists(dead))
        with open(os.path.join(self.inbox, "cur", name), "rb") as f:
            self.assertEqual(f.read(), b"partial")
        self.assertTrue(os.path.exists(live))  # (its move is still running)

    def test_anything_older_than_36_hours_goes(self):
        old = self.leave(self.inbox, "whatever.crlf", age=37 * 3600)
        young = self.leave(self.inbox, "recent.crlf", age=35 * 3600)
        self.assertEqual(clean_tmp(self.root, "mail.test"), (0, 1))
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))
