# -*- test-case-name: tests.test_imap_search_reads -*-
"""
IMAP SEARCH keys that read messages (BODY, TEXT, header keys) over a
Maildir folder read and match the files in a worker thread, not in the
reactor: a SEARCH BODY over 20,000 messages held every other session
for its whole run.
"""

from __future__ import annotations

import os

from tests.test_imap_reactor_reads import ThreadedImapCase
from twisted_mailhub.imap import search
from twisted_mailhub.store.maildir import MaildirFolder


def message(n: int, body: bytes) -> bytes:
    return b"From: sender%d@example.org\r\nSubject: note %d\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n%s\r\n" % (n, n, body)


class SearchReadsTests(ThreadedImapCase):
    def setUp(self):
        bodies = [b"plain words", b"the NEEDLE is here", b"nothing", b"another needle", b"x" * 20000 + b" needle at the end"]
        folder = self.make_hub([message(n, body) for n, body in enumerate(bodies, 1)])
        self.directory = folder.directory
        queued = self.queued
        self.patch(search, "in_thread", queued)
        self.reads_in_reactor: list = []
        real_read, real_open = MaildirFolder.read, os.open
        test = self

        def read(folder, uid):
            if not test.in_thread:
                test.reads_in_reactor.append(("read", uid))
            return real_read(folder, uid)

        def os_open(path, *args, **kwargs):
            if not test.in_thread and isinstance(path, str) and path.startswith(test.directory + "/cur/"):
                test.reads_in_reactor.append(("open", path))
            return real_open(path, *args, **kwargs)

        self.patch(MaildirFolder, "read", read)
        self.patch(os, "open", os_open)

    def logged_in(self):
        server, transport = ThreadedImapCase.logged_in(self)
        self.reads_in_reactor.clear()
        return server, transport

    def slice_sizes(self) -> list[int]:
        """
        Watch the slices a search gives its thread (search._walk_detached):
        the list, filled as they are walked, of how many messages each held.
        """
        sizes: list[int] = []
        real = search._walk_detached

        def walk(predicate, entries, *rest):
            sizes.append(len(entries))
            return real(predicate, entries, *rest)

        self.patch(search, "_walk_detached", walk)
        return sizes

    def test_search_body_text_and_header_keys_read_the_messages_in_a_worker_thread(self):
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 2 4 5\r\nc OK", self.talk(server, transport, b"c SEARCH BODY needle\r\n"))
        self.assertIn(b"* SEARCH 2\r\nd OK", self.talk(server, transport, b"d SEARCH TEXT NEEDLE SUBJECT \"note 2\"\r\n"))
        self.assertIn(b"* SEARCH 3\r\ne OK", self.talk(server, transport, b"e SEARCH FROM sender3\r\n"))
        self.assertIn(b"* SEARCH 1 3\r\nf OK", self.talk(server, transport, b"f SEARCH NOT BODY needle\r\n"))
        self.assertIn(b"* SEARCH 4 5\r\ng OK", self.talk(server, transport, b"g UID SEARCH OR BODY another BODY end SENTON 2-Nov-2026\r\n"))
        # (before: every message's file opened and read in the reactor)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(self.ran, 5)

    def test_a_search_gives_its_thread_the_messages_a_slice_at_a_time(self):
        # The rows and paths of a whole folder at once (100,000 messages)
        # left the server's RSS some 5 MB higher after the search
        # (bench/imap.py): the thread now takes MATCH_SLICE at a time,
        # and the answer is the same.
        self.patch(search, "MATCH_SLICE", 2)
        sizes = self.slice_sizes()
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 2 4 5\r\nc OK", self.talk(server, transport, b"c SEARCH BODY needle\r\n"))
        self.assertIn(b"* SEARCH 1 3\r\nd OK", self.talk(server, transport, b"d SEARCH NOT BODY needle\r\n"))
        self.assertEqual(sizes, [2, 2, 1, 2, 2, 1])
        self.assertEqual(self.reads_in_reactor, [])

    def test_a_search_whose_client_went_away_reads_no_further_slice(self):
        # A SEARCH BODY over a big folder whose client disconnects went on
        # reading every slice for nobody, holding one of the two parsing
        # threads (and so later searches, big FETCHes and web reads).
        self.patch(search, "MATCH_SLICE", 2)
        sizes = self.slice_sizes()
        server, transport = self.logged_in()
        self.talk(server, transport, b"c SEARCH BODY needle\r\n", run=False)
        transport.loseConnection()
        server.connectionLost(None)
        self.run_threads()
        self.assertEqual(sizes, [2])  # (before: [2, 2, 1], the whole folder)

        # SORT (and THREAD) read the same way.
        del sizes[:]
        server, transport = self.logged_in()
        self.talk(server, transport, b"c SORT (ARRIVAL) UTF-8 BODY needle\r\n", run=False)
        transport.loseConnection()
        server.connectionLost(None)
        self.run_threads()
        self.assertEqual(sizes, [2])

        # A client still there gets the whole answer.
        del sizes[:]
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 2 4 5\r\nd OK", self.talk(server, transport, b"d SEARCH BODY needle\r\n"))
        self.assertEqual(sizes, [2, 2, 1])

    def test_search_and_sort_give_their_thread_the_uids_as_an_array_not_a_list(self):
        # A list of a 100,000-message folder's UIDs is 3.6 MB of integers
        # held for the whole search (an array('I') copy: 0.4 MB), and
        # pymalloc kept the room after it (issue 13).
        from array import array

        from twisted_mailhub.imap import sort

        given = []
        real = search.match_in_thread

        def spy(folder, predicate, uids, *rest):
            given.append(uids)
            return real(folder, predicate, uids, *rest)

        self.patch(search, "match_in_thread", spy)
        self.patch(sort, "match_in_thread", spy)
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 2 4 5\r\nc OK", self.talk(server, transport, b"c SEARCH BODY needle\r\n"))
        self.assertIn(b"* SORT 2 4 5\r\nd OK", self.talk(server, transport, b"d SORT (ARRIVAL) UTF-8 BODY needle\r\n"))
        self.assertEqual([(type(uids), list(uids)) for uids in given], [(array, [1, 2, 3, 4, 5])] * 2)

    def test_a_search_of_big_messages_gives_its_thread_a_slice_of_at_most_match_slice_octets(self):
        # The thread pool is shared (offload.THREADS): a FETCH BODYSTRUCTURE
        # queued behind a search waits one slice, and a slice of 1,024 big
        # messages was up to 1,024 times their size. Each slice ends at the
        # message that passes MATCH_SLICE_OCTETS.
        self.patch(search, "MATCH_SLICE_OCTETS", 150)
        sizes = self.slice_sizes()
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 2 4 5\r\nc OK", self.talk(server, transport, b"c SEARCH BODY needle\r\n"))
        self.assertEqual(sizes, [2, 2, 1])  # (messages of about 90 octets, then one of 20,000)
        self.assertEqual(self.reads_in_reactor, [])

    def test_commands_after_a_search_wait_for_its_answer_and_keep_their_order(self):
        server, transport = self.logged_in()
        sent = self.talk(server, transport, b"c SEARCH BODY needle\r\nd NOOP\r\n", run=False)
        self.assertEqual(sent, b"")  # the search is in its thread; NOOP waits
        self.run_threads()
        out = transport.value()
        self.assertIn(b"* SEARCH 2 4 5\r\nc OK", out)
        self.assertLess(out.index(b"c OK"), out.index(b"d OK"))

    def test_a_file_renamed_by_a_flag_change_meanwhile_is_still_found(self):
        server, transport = self.logged_in()
        self.talk(server, transport, b"c SEARCH BODY needle\r\n", run=False)
        # another program renames message 2's file while the search waits for its thread
        cur = os.path.join(self.directory, "cur")
        name = sorted(os.listdir(cur))[1]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.replace(":2,S", ":2,FS")))
        self.run_threads()
        out = transport.value()
        self.assertIn(b"* SEARCH 2 4 5\r\n", out)
        self.assertIn(b"c OK SEARCH completed", out)
        # (the moved file is read again in the reactor, as the store finds it)
        self.assertEqual([uid for kind, uid in self.reads_in_reactor if kind == "read"], [2])

    def test_sort_and_thread_match_body_keys_in_a_worker_thread(self):
        server, transport = self.logged_in()
        self.assertIn(b"* SORT 5 4 2\r\nc OK", self.talk(server, transport, b"c SORT (REVERSE ARRIVAL) UTF-8 BODY needle\r\n"))
        self.assertEqual(self.reads_in_reactor, [])
        self.assertIn(b"* SORT 4\r\nd OK", self.talk(server, transport, b"d UID SORT (SIZE) UTF-8 BODY another\r\n"))
        self.assertEqual(self.reads_in_reactor, [])
        reply = self.talk(server, transport, b"e THREAD ORDEREDSUBJECT UTF-8 TEXT needle\r\n")
        self.assertIn(b"* THREAD (2)(4)(5)\r\ne OK", reply)
        # (the order's fields, here Subject and Date, are read in the thread too)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(self.ran, 3)
        # an order by a field not kept yet, over keys that read nothing
        self.assertIn(b"* SORT 5 4 3 2 1\r\nf OK", self.talk(server, transport, b"f SORT (REVERSE FROM) UTF-8 ALL\r\n"))
        self.assertIn(b"* THREAD (1)(2)(3)(4)(5)\r\ng OK", self.talk(server, transport, b"g THREAD REFERENCES UTF-8 ALL\r\n"))
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(self.ran, 5)
        # kept now: answered in the reactor, nothing read
        self.assertIn(b"* SORT 1 2 3 4 5\r\nh OK", self.talk(server, transport, b"h SORT (FROM) UTF-8 ALL\r\n", run=False))
        self.assertEqual(self.ran, 5)
        self.assertEqual(self.reads_in_reactor, [])

    def test_a_search_that_saves_its_result_matches_in_a_worker_thread_and_keeps_it(self):
        server, transport = self.logged_in()
        reply = self.talk(server, transport, b"c SEARCH RETURN (SAVE) BODY needle\r\n")
        self.assertIn(b"c OK SEARCH completed (result saved)", reply)
        self.assertNotIn(b"ESEARCH", reply)
        self.assertIn(b'* ESEARCH (TAG "d") MIN 2 MAX 5', self.talk(server, transport, b"d SEARCH RETURN (SAVE MIN MAX) BODY needle NOT UID 4\r\n"))
        # (MIN and MAX alone save those two: RFC 5182 §2.4)
        self.assertIn(b"* SEARCH 2 5\r\ne OK", self.talk(server, transport, b"e SEARCH $\r\n"))
        # (before: each saving SEARCH read the messages in the reactor, twice)
        self.assertEqual(self.reads_in_reactor, [])
        self.assertEqual(self.ran, 2)
        self.assertIn(b"f BAD", self.talk(server, transport, b"f SEARCH RETURN (SAVE) BODY\r\n"))
        self.assertIn(b"* SEARCH\r\ng OK", self.talk(server, transport, b"g SEARCH $\r\n"))

    def test_a_header_search_the_cache_answers_whole_stays_in_the_reactor_and_reads_nothing(self):
        server, transport = self.logged_in()
        self.assertIn(b"* SEARCH 3\r\nc OK", self.talk(server, transport, b"c SEARCH FROM sender3\r\n"))
        self.assertEqual(self.ran, 1)  # (the From: fields read in the thread, then kept)
        self.assertIn(b"* SEARCH 4\r\nd OK", self.talk(server, transport, b"d SEARCH OR FROM sender4 HEADER FROM sender44\r\n", run=False))
        self.assertEqual(self.ran, 1)
        self.assertEqual(self.reads_in_reactor, [])
        # a field not kept yet goes to the thread
        self.assertIn(b"* SEARCH 2\r\ne OK", self.talk(server, transport, b"e SEARCH SUBJECT \"note 2\"\r\n"))
        self.assertEqual(self.ran, 2)
        self.assertEqual(self.reads_in_reactor, [])


class LiveSearchReadsTests(ThreadedImapCase):
    """A live search (CONTEXT=SEARCH / CONTEXT=SORT UPDATE, RFC 5267 §4) matches a new message in the worker thread."""

    setUp = SearchReadsTests.setUp
    logged_in = SearchReadsTests.logged_in

    def arrive(self, n: int, body: bytes) -> None:
        raw = message(n, body)
        with open(os.path.join(self.directory, "cur", f"{1700000100 + n}.M{n}P1Q1.test,S={len(raw)}:2,S"), "wb") as f:
            f.write(raw)
        self.store.account("alice@localhost").folder("INBOX").unsettled()
        self.journal.run_jobs()

    def test_a_new_message_is_matched_in_a_worker_thread_and_its_update_comes_between_exists_and_the_reply(self):
        server, transport = self.logged_in()
        out = self.talk(server, transport, b'c SEARCH RETURN (UPDATE ALL COUNT) BODY needle\r\n')
        self.assertIn(b'* ESEARCH (TAG "c") COUNT 3 ALL 2,4:5\r\nc OK', out)
        self.arrive(6, b"a needle again")
        self.arrive(7, b"no match")
        self.reads_in_reactor.clear()
        ran = self.ran
        sent = self.talk(server, transport, b"d NOOP\r\ne NOOP\r\n", run=False)
        # (the new messages are being read in the thread: the reply waits, and so does e)
        self.assertIn(b"* 7 EXISTS\r\n", sent)
        self.assertNotIn(b"d OK", sent)
        self.run_threads()
        out = transport.value()
        self.assertIn(b'* 7 EXISTS\r\n', out)
        self.assertIn(b'* ESEARCH (TAG "c") ADDTO (0 6) COUNT 4\r\nd OK', out)
        self.assertLess(out.index(b"d OK"), out.index(b"e OK"))
        self.assertEqual(self.reads_in_reactor, [])  # (before: both files read in the reactor)
        self.assertEqual(self.ran, ran + 1)  # (one batch for both)

    def test_a_live_sort_reads_a_new_messages_sort_field_in_the_worker_thread(self):
        server, transport = self.logged_in()
        out = self.talk(server, transport, b"c UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 ALL\r\n")
        self.assertIn(b'* ESEARCH (TAG "c") UID ALL 1:5\r\nc OK', out)
        self.arrive(0, b"sorted first")  # ("note 0")
        self.reads_in_reactor.clear()
        out = self.talk(server, transport, b"d NOOP\r\n")
        self.assertIn(b'* 6 EXISTS\r\n', out)
        self.assertIn(b'* ESEARCH (TAG "c") UID ADDTO (1 6)\r\nd OK', out)
        self.assertEqual(self.reads_in_reactor, [])

    def test_a_new_messages_header_values_are_read_in_the_thread_without_a_copy_of_the_folders_cache(self):
        # A whole copy of the header cache per arrival cost the reactor
        # milliseconds for 100,000 messages: a few messages take the
        # values of theirs alone, and theirs join the folder's cache.
        self.patch(search, "FEW", 2)
        copies = []
        real_copy = search._copy_values
        self.patch(search, "_copy_values", lambda values: copies.append(1) or real_copy(values))
        server, transport = self.logged_in()
        out = self.talk(server, transport, b"c SEARCH RETURN (UPDATE ALL) FROM sender\r\n")
        self.assertIn(b'* ESEARCH (TAG "c") ALL 1:5\r\nc OK', out)
        self.arrive(6, b"from a sender too")
        copies.clear()
        self.reads_in_reactor.clear()
        out = self.talk(server, transport, b"d NOOP\r\n")
        self.assertIn(b'* ESEARCH (TAG "c") ADDTO (0 6)\r\nd OK', out)
        self.assertEqual(copies, [])  # (before: one copy of the cache per batch)
        ran = self.ran
        # the new message's From: is cached now: a SEARCH FROM reads nothing
        self.assertIn(b"* SEARCH 6\r\ne OK", self.talk(server, transport, b"e SEARCH FROM sender6\r\n"))
        self.assertEqual(self.ran, ran)
        self.assertEqual(self.reads_in_reactor, [])
