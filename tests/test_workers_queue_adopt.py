# -*- test-case-name: tests.test_workers_queue_adopt -*-
"""
Under --workers the worker running the outbound queue takes up messages
in the queue's folder that no notice handed on (their worker died between
the durable write and the notice): WorkerLink.adopt_queued. Only those
older than ADOPT_AFTER (a write on its way is never taken twice) and not
known; one removed meanwhile is not taken back.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from twisted.internet import defer
from twisted.trial import unittest

from twisted_mailhub import workers
from twisted_mailhub.queue.storage import make_entry


class FakeRelay:
    def __init__(self, directory: str):
        self.storage = SimpleNamespace(directory=directory)
        self.entries: dict = {}
        self.owns_queue = True
        self.running = True
        self.rescheduled = 0

    def now(self) -> float:
        return time.time()

    def _reschedule(self) -> None:
        self.rescheduled += 1


class AdoptTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.relay = FakeRelay(self.dir)
        self.link = SimpleNamespace(hub=SimpleNamespace(relay=self.relay), _adopting=False)

    def put(self, age: float, with_message: bool = True):
        entry = make_entry("zed@ext.test", ["carol@c.test"], 3, time.time() - age)
        if with_message:
            with open(os.path.join(self.dir, entry.id + ".msg"), "wb") as f:
                f.write(b"abc")
        with open(os.path.join(self.dir, entry.id + ".env"), "wb") as f:
            f.write(entry.to_json())
        return entry

    @defer.inlineCallbacks
    def test_only_old_unknown_whole_messages_are_taken_up(self):
        lost = self.put(age=workers.ADOPT_AFTER + 60)
        self.put(age=1)  # (a write on its way: its notice comes)
        self.put(age=workers.ADOPT_AFTER + 60, with_message=False)  # (half written)
        known = self.put(age=workers.ADOPT_AFTER + 60)
        self.relay.entries[known.id] = known
        yield workers.WorkerLink.adopt_queued(self.link)
        self.assertEqual(sorted(self.relay.entries), sorted([lost.id, known.id]))
        self.assertIs(self.relay.entries[known.id], known)
        self.assertEqual(self.relay.rescheduled, 1)
        self.assertFalse(self.link._adopting)

    @defer.inlineCallbacks
    def test_one_sent_and_removed_while_the_folder_was_read_is_not_taken_back(self):
        from twisted.internet import threads

        done = self.put(age=workers.ADOPT_AFTER + 60)
        looked: list = []

        def in_thread(function):
            d = defer.Deferred()
            looked.append((d, function()))  # (the thread's look, now; its answer when the test says)
            return d

        self.patch(threads, "deferToThread", in_thread)
        d = workers.WorkerLink.adopt_queued(self.link)
        [(answer, found)] = looked
        self.assertEqual([e.id for e in found], [done.id])
        # The runner sends it and removes its files before the answer is taken in.
        os.unlink(os.path.join(self.dir, done.id + ".env"))
        answer.callback(found)
        yield d
        self.assertEqual(self.relay.entries, {})

    def test_a_worker_that_does_not_run_the_queue_does_not_look(self):
        self.relay.owns_queue = False
        self.put(age=workers.ADOPT_AFTER + 60)
        self.assertIsNone(workers.WorkerLink.adopt_queued(self.link))
        self.assertEqual(self.relay.entries, {})

    @defer.inlineCallbacks
    def test_a_folder_that_cannot_be_read_is_said_in_words(self):
        from twisted.logger import capturedLogs, formatEvent

        os.rmdir(self.dir)
        with open(self.dir, "wb"):
            pass  # (the queue's folder is a file now: listdir fails, ENOTDIR)
        with capturedLogs() as events:
            yield workers.WorkerLink.adopt_queued(self.link)
        said = [formatEvent(e) for e in events if "not looked at" in e.get("log_format", "")]
        self.assertEqual(len(said), 1, said)
        # (before: "[Errno 20] Not a directory: '/...'", Python's text)
        self.assertIn("Not a directory", said[0])
        self.assertNotIn("[Errno", said[0])
        self.assertFalse(self.link._adopting)
