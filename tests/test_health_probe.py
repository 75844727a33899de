# -*- test-case-name: tests.test_health_probe -*-
"""
GET /healthz writes, fsyncs and removes a probe file in the data folder:
in a worker thread, never in the reactor (an fsync there stalls every
session of the process, and a load balancer asks every few seconds).
"""

from __future__ import annotations

import os
import threading

from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from twisted_mailhub.metrics import HealthPage


class _Hub:
    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._listeners = [("smtp",)]
        self.listening = {"smtp"}
        self.reactor = None


class HealthProbeTests(unittest.TestCase):
    def setUp(self):
        self.data = self.mktemp()
        os.makedirs(self.data)
        self.threads: list[str] = []
        real = os.fsync

        def recording(fd: int) -> None:
            self.threads.append(threading.current_thread().name)
            real(fd)

        self.patch(os, "fsync", recording)

    def get(self, hub) -> tuple[DummyRequest, object]:
        request = DummyRequest([b""])
        finished = request.notifyFinish()
        self.assertEqual(HealthPage(hub).render_GET(request), 1)  # NOT_DONE_YET: answered from the thread's result
        return request, finished

    def test_the_probe_write_is_fsynced_off_the_reactor_and_answers_ok(self):
        request, finished = self.get(_Hub(self.data))

        def check(_):
            self.assertEqual(b"".join(request.written), b"ok\n")
            self.assertEqual(len(self.threads), 1)
            self.assertNotEqual(self.threads[0], threading.main_thread().name)
            self.assertEqual(os.listdir(self.data), [])

        return finished.addCallback(check)

    def test_a_data_folder_that_takes_no_write_is_a_503_saying_so(self):
        hub = _Hub(os.path.join(self.data, "gone"))
        hub.listening = set()
        request, finished = self.get(hub)

        def check(_):
            self.assertEqual(request.responseCode, 503)
            text = b"".join(request.written).decode()
            self.assertIn("smtp is not listening", text)
            self.assertIn("the data folder takes no write (No such file or directory)", text)

        return finished.addCallback(check)
