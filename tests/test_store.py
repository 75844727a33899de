"""
The store backends keep the same promises (tests run on both).
"""

import os

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub.store.interfaces import DELETED, INBOX, SEEN, BadFolderName, FolderExists, IModSeqFolder, NoSuchFolder, NoSuchMessage
from twisted_mailhub.store.maildir import MaildirStore, decode_folder, encode_folder
from twisted_mailhub.store import durable
from twisted_mailhub.store.memory import MemoryStore

MESSAGE = b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n"


class StoreContract:
    def make_store(self):
        raise NotImplementedError

    def setUp(self):
        self.store = self.make_store()

    @defer.inlineCallbacks
    def test_delivery_shows_in_inbox(self):
        key = yield self.store.deliver("alice@example.org", MESSAGE)
        folder = self.store.account("alice@example.org").folder(INBOX)
        [info] = folder.messages()
        self.assertEqual(info.key, key)
        self.assertEqual(info.size, len(MESSAGE))
        self.assertEqual(folder.read(info.uid), MESSAGE)

    @defer.inlineCallbacks
    def test_uids_ascend_and_are_not_reused(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        a = yield folder.append(MESSAGE)
        b = yield folder.append(MESSAGE)
        self.assertLess(a, b)
        folder.expunge([b])
        c = yield folder.append(MESSAGE)
        self.assertGreater(c, b)

    @defer.inlineCallbacks
    def test_flags_and_listeners(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        changes = []
        folder.add_listener(changes.append)
        uid = yield folder.append(MESSAGE, ["\\seen", "$Important"])
        self.assertEqual(folder.info(uid).flags, {SEEN, "$Important"})
        folder.set_flags([uid], [DELETED], "add")
        self.assertEqual(folder.info(uid).flags, {SEEN, DELETED, "$Important"})
        folder.expunge([uid])
        self.assertEqual([c.added for c in changes if c.added], [(uid,)])
        self.assertEqual([c.flags for c in changes if c.flags], [(uid,)])
        self.assertEqual([c.expunged for c in changes if c.expunged], [(uid,)])

    @defer.inlineCallbacks
    def test_delivered_appended_and_copied_messages_are_recent_once(self):
        account = self.store.account("alice@example.org")
        inbox = account.folder(INBOX)
        other = account.create_folder("Other")
        yield self.store.deliver("alice@example.org", MESSAGE)
        appended = yield inbox.append(MESSAGE, [SEEN])
        [(_, copied)] = yield inbox.copy_to([appended], other)
        self.assertEqual(len(inbox.recent()), 2)
        self.assertEqual(inbox.recent(), inbox.recent())  # looking takes nothing
        self.assertEqual(len(inbox.take_new()), 2)
        self.assertEqual(inbox.take_new(), [])
        self.assertEqual(inbox.recent(), [])
        self.assertEqual(other.take_new(), [copied])

    def test_uidvalidity_of_a_name_made_again_is_greater(self):
        account = self.store.account("alice@example.org")
        seen = [account.create_folder("Again").uid_validity]
        for _ in range(3):  # within the same second
            account.delete_folder("Again")
            seen.append(account.create_folder("Again").uid_validity)
        self.assertEqual(seen, sorted(set(seen)))

    @defer.inlineCallbacks
    def test_folders(self):
        account = self.store.account("alice@example.org")
        account.create_folder("Work/Projects")
        self.assertIn("Work", account.folders())
        self.assertIn("Work/Projects", account.folders())
        self.assertRaises(FolderExists, account.create_folder, "Work")
        account.rename_folder("Work", "Job")
        self.assertIn("Job/Projects", account.folders())
        self.assertRaises(NoSuchFolder, account.folder, "Work/Projects")
        uid = yield account.folder("Job/Projects").append(MESSAGE)
        pairs = yield account.folder("Job/Projects").copy_to([uid], account.folder(INBOX))
        self.assertEqual(len(pairs), 1)
        self.assertEqual(account.folder(INBOX).read(pairs[0][1]), MESSAGE)
        account.delete_folder("Job/Projects")
        self.assertNotIn("Job/Projects", account.folders())

    def test_bad_folder_names(self):
        account = self.store.account("alice@example.org")
        for bad in ("../x", "/abs", "a/../b", "a//b", ""):
            self.assertRaises(BadFolderName, account.create_folder, bad)

    def test_a_folder_name_with_a_control_character_is_refused_and_the_error_shows_it_readably(self):
        account = self.store.account("alice@example.org")
        for bad, shown in (("a\x01b", "a^Ab"), ("tab\there", "tab^Ihere"), ("del\x7f", "del^?"), ("c1\x85x", "c1<U+0085>x")):
            with self.assertRaises(BadFolderName) as caught:
                account.create_folder(bad)
            self.assertEqual(str(caught.exception), "bad folder name: " + shown)


class ModSeqContract:
    """RFC 7162 mod-sequences, on the backends that provide IModSeqFolder."""

    @defer.inlineCallbacks
    def test_every_change_takes_a_higher_modseq(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        self.assertTrue(IModSeqFolder.providedBy(folder))
        start = folder.highest_modseq
        a = yield folder.append(MESSAGE)
        b = yield folder.append(MESSAGE)
        self.assertLess(start, folder.modseq(a))
        self.assertLess(folder.modseq(a), folder.modseq(b))
        self.assertEqual(folder.highest_modseq, folder.modseq(b))
        folder.set_flags([a], [SEEN], "add")
        self.assertEqual(folder.modseq(a), folder.highest_modseq)
        before = folder.highest_modseq
        folder.set_flags([a], [SEEN], "add")  # no change: no new modseq
        self.assertEqual(folder.highest_modseq, before)
        folder.expunge([b])
        self.assertGreater(folder.highest_modseq, before)
        self.assertRaises(NoSuchMessage, folder.modseq, b)


class MemoryStoreTests(StoreContract, ModSeqContract, unittest.TestCase):
    def make_store(self):
        return MemoryStore()


@pytest.fixture
def _postgresql_dsn(request, pg_dsn):
    """A new database on the session's PostgreSQL, as C{self.dsn}."""
    request.instance.dsn = pg_dsn


@pytest.mark.usefixtures("_postgresql_dsn")
class PostgresStoreTests(StoreContract, ModSeqContract, unittest.TestCase):
    def make_store(self):
        from twisted_mailhub.store.postgresql import PostgresStore

        store = PostgresStore(self.dsn)
        self.addCleanup(store.close)
        return store


class MaildirStoreTests(StoreContract, ModSeqContract, unittest.TestCase):
    def make_store(self):
        self.root = self.mktemp()
        return MaildirStore(self.root, hostname="test")

    @defer.inlineCallbacks
    def test_delivery_lands_in_new_and_uids_survive_reopen(self):
        key = yield self.store.deliver("alice@example.org", MESSAGE)
        path = os.path.join(self.root, "example.org", "alice", "new", key)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), MESSAGE)
        uids = [i.uid for i in self.store.account("alice@example.org").folder(INBOX).messages()]
        again = MaildirStore(self.root, hostname="test").account("alice@example.org").folder(INBOX)
        self.assertEqual([i.uid for i in again.messages()], uids)
        self.assertEqual(again.uid_validity, self.store.account("alice@example.org").folder(INBOX).uid_validity)

    @defer.inlineCallbacks
    def test_deliveries_modseq_lines_are_written_once_per_batch_before_delivery_is_reported(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        log = os.path.join(folder.directory, "mailhub-modseq")
        appends = []
        real = folder._append_modseqs
        folder._append_modseqs = lambda records, value: appends.append(len(records)) or real(records, value)
        batches = folder.writer.batches
        logged_when_reported = []

        def reported(key):
            uid = [i.uid for i in folder.messages() if i.key == key][0]
            with open(log) as f:
                logged_when_reported.append(f"{uid} {folder.modseq(uid)}\n" in f.read())

        yield defer.gatherResults([folder.deliver(MESSAGE).addCallback(reported) for _ in range(6)])
        self.assertEqual(logged_when_reported, [True] * 6)
        self.assertEqual(sum(appends), 6)
        self.assertEqual(len(appends), folder.writer.batches - batches)
        modseqs = {i.uid: folder.modseq(i.uid) for i in folder.messages()}
        self.assertEqual(len(set(modseqs.values())), 6)
        again = MaildirStore(self.root, hostname="test").account("alice@example.org").folder(INBOX)
        self.assertEqual({i.uid: again.modseq(i.uid) for i in again.messages()}, modseqs)

    @defer.inlineCallbacks
    def test_outside_file_gets_a_uid(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        yield folder.append(MESSAGE)
        with open(os.path.join(folder.directory, "new", "123.outside"), "wb") as f:
            f.write(b"x: y\r\n\r\nz\r\n")
        # Told once its UID is durable (flushed off the reactor): unsettled().
        yield folder.unsettled()
        infos = folder.messages()
        self.assertEqual(len(infos), 2)
        self.assertEqual(infos[-1].key, "123.outside")

    @defer.inlineCallbacks
    def test_flags_in_file_name(self):
        folder = self.store.account("alice@example.org").folder(INBOX)
        uid = yield folder.append(MESSAGE)
        folder.set_flags([uid], [SEEN, "\\Flagged"], "replace")
        names = os.listdir(os.path.join(folder.directory, "cur"))
        self.assertEqual(len(names), 1)
        self.assertTrue(names[0].endswith(":2,FS"), names)

    def test_folder_name_encoding_round_trips(self):
        for name in ("Work/Projects", "v1.2", "100%"):
            self.assertEqual(decode_folder(encode_folder(name)), name)


class MaildirIndexTests(unittest.TestCase):
    """
    What IMAP needs of the Maildir index beyond the shared contract.
    """

    def setUp(self):
        self.root = self.mktemp()
        self.store = MaildirStore(self.root, hostname="test")
        self.folder = self.store.account("alice@example.org").folder(INBOX)

    def reopen(self):
        return MaildirStore(self.root, hostname="test").account("alice@example.org").folder(INBOX)

    @defer.inlineCallbacks
    def test_a_copy_is_made_from_the_file_in_the_group_commits_thread_not_read_in_the_reactor(self):
        import threading

        from twisted_mailhub.store.maildir import MaildirFolder

        eight_bit = "From: a@b\r\nSubject: café\r\n\r\nbody\r\n".encode("utf-8")
        first = yield self.folder.append(MESSAGE, ["\\Flagged", "$Kept"])
        second = yield self.folder.append(eight_bit)
        other = self.store.account("alice@example.org").create_folder("Other")
        reads = []
        real = MaildirFolder.read

        def read(folder, uid):
            if threading.current_thread() is threading.main_thread():
                reads.append(uid)
            return real(folder, uid)

        self.patch(MaildirFolder, "read", read)
        pairs = yield self.folder.copy_to([first, second], other)
        self.assertEqual(reads, [])  # (before: each copy read whole in the reactor)
        self.patch(MaildirFolder, "read", real)
        copied = dict(pairs)
        self.assertEqual(other.read(copied[first]), MESSAGE)
        self.assertEqual(other.read(copied[second]), eight_bit)
        self.assertEqual(set(other.info(copied[first]).flags), {"\\Flagged", "$Kept"})
        self.assertEqual(other.info(copied[second]).size, len(eight_bit))
        # The size as downgraded goes with the copy's name, as an append's does.
        self.assertIn(",D=", other.info(copied[second]).key)
        self.assertEqual(other.info(copied[second]).internal_date, self.folder.info(second).internal_date)
        again = MaildirStore(self.root, hostname="test").account("alice@example.org").folder("Other")
        self.assertEqual(sorted(i.uid for i in again.messages()), sorted(copied.values()))

    @defer.inlineCallbacks
    def test_keyword_changes_cost_no_flush_and_survive_reopen(self):
        uid = yield self.folder.append(MESSAGE, ["$First"])
        synced = []
        real = os.fsync, getattr(os, "fdatasync", None)

        def recording(call):
            def sync(fd):  # (other threads of the test run may sync too)
                synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                return call(fd)

            return sync

        self.patch(os, "fsync", recording(real[0]))
        if real[1] is not None:
            self.patch(os, "fdatasync", recording(real[1]))
        self.patch(durable, "_fdatasync", recording(durable._fdatasync))
        for i in range(5):
            self.folder.set_flags([uid], [f"$Label{i}"], "add")
        self.assertEqual([path for path in synced if path.startswith(self.folder.directory)], [])
        again = self.reopen()
        self.assertEqual(again.info(uid).flags, {"$First"} | {f"$Label{i}" for i in range(5)})
        self.assertEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(len(again.messages()), 1)

    @defer.inlineCallbacks
    def test_modseqs_survive_reopen_and_never_go_back(self):
        uid = yield self.folder.append(MESSAGE)
        self.folder.set_flags([uid], ["$Later"], "add")
        kept = self.folder.modseq(uid)
        os.truncate(os.path.join(self.folder.directory, "mailhub-modseq"), 0)  # even a lost log
        again = self.reopen()
        self.assertGreaterEqual(again.highest_modseq, kept)
        again.set_flags([uid], ["$Other"], "add")
        self.assertGreater(again.modseq(uid), kept)
        third = self.reopen()
        self.assertEqual(third.modseq(uid), again.modseq(uid))

    def test_uidvalidity_of_a_name_made_again_is_greater_after_a_restart(self):
        first = MaildirStore(self.root, hostname="test").account("alice@example.org").create_folder("Again")
        MaildirStore(self.root, hostname="test").account("alice@example.org").delete_folder("Again")
        again = MaildirStore(self.root, hostname="test").account("alice@example.org").create_folder("Again")
        self.assertGreater(again.uid_validity, first.uid_validity)

    @defer.inlineCallbacks
    def test_take_new_moves_delivered_mail_to_cur_once(self):
        yield self.store.deliver("alice@example.org", MESSAGE)
        [info] = self.folder.messages()
        self.assertEqual(self.folder.take_new(), [info.uid])
        self.assertEqual(self.folder.take_new(), [])
        self.assertEqual(os.listdir(os.path.join(self.folder.directory, "new")), [])
        self.assertEqual(os.listdir(os.path.join(self.folder.directory, "cur")), [info.key + ":2,"])
        self.assertEqual(self.folder.read(info.uid), MESSAGE)
        self.assertEqual(self.reopen().messages()[0].uid, info.uid)

    def test_bare_lf_file_from_outside_is_stored_as_crlf(self):
        changes = []
        self.folder.add_listener(changes.append)
        path = os.path.join(self.folder.directory, "new", "1700000000.outside")
        with open(path, "wb") as f:
            f.write(b"Subject: lf\n\nline\n")
        self.folder.refresh()
        [info] = self.folder.messages()
        self.assertEqual(info.size, len(b"Subject: lf\r\n\r\nline\r\n"))
        self.assertEqual(self.folder.read(info.uid), b"Subject: lf\r\n\r\nline\r\n")
        self.assertEqual([c.added for c in changes], [(info.uid,)])
        self.assertEqual(os.listdir(os.path.join(self.folder.directory, "tmp")), [])

    @defer.inlineCallbacks
    def test_keywords_and_flags_survive_reopen(self):
        uid = yield self.folder.append(MESSAGE, ["\\Flagged", "$Work"])
        self.folder.set_flags([uid], ["$Later"], "add")
        again = self.reopen()
        self.assertEqual(again.info(uid).flags, {"\\Flagged", "$Work", "$Later"})
        self.assertEqual(again.uid_validity, self.folder.uid_validity)

    @defer.inlineCallbacks
    def test_lost_uid_list_means_new_uidvalidity(self):
        yield self.folder.append(MESSAGE)
        os.unlink(os.path.join(self.folder.directory, "mailhub-uidlist"))
        again = self.reopen()
        self.assertNotEqual(again.uid_validity, self.folder.uid_validity)
        self.assertEqual(len(again.messages()), 1)

    @defer.inlineCallbacks
    def test_file_renamed_by_another_program_keeps_its_uid(self):
        uid = yield self.folder.append(MESSAGE)
        [name] = os.listdir(os.path.join(self.folder.directory, "cur"))
        cur = os.path.join(self.folder.directory, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,ST"))
        os.utime(cur, None)
        self.folder.refresh()
        self.assertEqual(self.folder.info(uid).flags, {"\\Seen", "\\Deleted"})
        self.assertEqual(self.folder.read(uid), MESSAGE)

    @defer.inlineCallbacks
    def test_own_flag_change_does_not_hide_an_outside_delivery(self):
        uid = yield self.folder.append(MESSAGE)
        self.folder.messages()
        with open(os.path.join(self.folder.directory, "new", "1700000001.outside"), "wb") as f:
            f.write(MESSAGE)
        self.folder.set_flags([uid], ["\\Seen"], "add")
        self.folder.refresh()
        yield self.folder.unsettled()
        self.assertEqual(len(self.folder.messages()), 2)

    @defer.inlineCallbacks
    def test_outside_flag_change_and_removal_are_announced(self):
        changes = []
        self.folder.add_listener(changes.append)
        uid = yield self.folder.append(MESSAGE)
        key = yield self.store.deliver("alice@example.org", MESSAGE)
        delivered = self.folder.messages()[-1].uid
        cur = os.path.join(self.folder.directory, "cur")
        [name] = os.listdir(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,F"))
        self.folder.refresh()
        self.assertEqual(changes[-1].flags, (uid,))
        os.unlink(os.path.join(self.folder.directory, "new", key))  # only new/ changes
        self.folder.refresh()
        self.assertEqual(changes[-1].expunged, (delivered,))
        self.assertEqual([i.uid for i in self.folder.messages()], [uid])


class MaildirFlushTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_flush_fsyncs_the_folder_directories_after_an_expunge(self):
        import twisted_mailhub.store.maildir as maildir_module

        store = MaildirStore(self.mktemp(), hostname="test")
        folder = store.account("alice@example.org").folder(INBOX)
        uid = yield folder.append(MESSAGE)
        synced = []
        real = maildir_module.fsync_directory
        self.patch(maildir_module, "fsync_directory", lambda path: (synced.append(os.path.basename(path)), real(path)))
        folder.expunge([uid])
        yield folder.flush()
        self.assertEqual(sorted(synced), ["cur", "new"])
        self.assertEqual(os.listdir(os.path.join(folder.directory, "cur")), [])


class MaildirExpungeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_an_expunged_file_leaves_cur_at_once_and_is_unlinked_from_tmp_in_a_worker_thread(self):
        import threading

        import twisted_mailhub.store.maildir as maildir_module

        store = MaildirStore(self.mktemp(), hostname="test")
        folder = store.account("alice@example.org").folder(INBOX)
        uid = yield folder.append(MESSAGE)
        handed = []
        real = maildir_module._unlink_later
        self.patch(maildir_module, "_unlink_later", lambda reactor, paths: handed.append((list(paths), real(reactor, paths))) or handed[-1][1])
        unlinked = []
        real_unlink = os.unlink
        self.patch(maildir_module.os, "unlink", lambda path: (unlinked.append(threading.current_thread() is threading.main_thread()), real_unlink(path))[1])
        self.assertEqual(folder.expunge([uid]), [uid])
        for sub in ("cur", "new"):
            self.assertEqual(os.listdir(os.path.join(folder.directory, sub)), [])  # gone for every reader now
        [([parked], done)] = handed
        self.assertEqual(os.path.dirname(parked), os.path.join(folder.directory, "tmp"))
        self.assertRegex(os.path.basename(parked), maildir_module._TMP_NAME)  # this process's: clean_tmp removes it after a crash
        folder.refresh()
        self.assertEqual(folder.messages(), [])
        yield done
        self.assertEqual(os.listdir(os.path.join(folder.directory, "tmp")), [])
        self.assertEqual(unlinked, [False])  # not in the reactor's thread


class MaildirOwnAppendTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_the_next_look_after_an_own_append_lists_nothing_but_still_sees_a_change_made_by_hand(self):
        import twisted_mailhub.store.maildir as maildir_module

        store = MaildirStore(self.mktemp(), hostname="test")
        folder = store.account("alice@example.org").folder(INBOX)
        first = yield folder.append(MESSAGE)
        folder.refresh()
        listed = []
        real = maildir_module.os.listdir
        self.patch(maildir_module.os, "listdir", lambda path: (listed.append(os.path.basename(path)), real(path))[1])
        second = yield folder.append(MESSAGE, ["\\Seen"])
        folder.refresh()
        self.assertEqual(listed, [])  # our own rename into cur/ needs no listing
        self.assertEqual([i.uid for i in folder.messages()], [first, second])
        # another program renames a file (a flag change by hand): the next look lists and sees it
        name = [n for n in real(os.path.join(folder.directory, "cur")) if not n.endswith("S")][0]
        os.rename(os.path.join(folder.directory, "cur", name), os.path.join(folder.directory, "cur", name.split(":")[0] + ":2,F"))
        folder.refresh()
        self.assertIn("cur", listed)
        self.assertIn("\\Flagged", folder.info(first).flags)


class MaildirDeletedTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_deleted_uids_are_the_messages_flagged_deleted_from_the_flag_column(self):
        folder = MaildirStore(self.mktemp(), hostname="test").account("alice@example.org").folder(INBOX)
        uids = []
        for flags in ([], ["\\Deleted"], ["\\Seen"], ["\\Seen", "\\Deleted", "$Work"], []):
            uids.append((yield folder.append(MESSAGE, flags)))
        folder.set_flags([uids[4]], [DELETED], "add")
        folder.set_flags([uids[1]], [DELETED], "remove")
        infos = []
        self.patch(folder._table, "info", lambda i: infos.append(i))
        self.assertEqual(folder.deleted_uids(), [uids[3], uids[4]])
        self.assertEqual(infos, [])  # no MessageInfo made


class FolderNameLengthTests(unittest.TestCase):
    def test_a_name_longer_than_a_directory_name_is_refused(self):
        account = MaildirStore(self.mktemp(), hostname="test").account("alice@example.org")
        self.assertRaises(BadFolderName, account.create_folder, "x" * 300)
        self.assertRaises(BadFolderName, account.create_folder, "/".join(["abcdefghij"] * 30))
        account.create_folder("x" * 200)
