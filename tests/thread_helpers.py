"""
Helpers shared by the tests of work done off the reactor
(tests/test_small_files_durable.py, tests/test_maildir_crlf_batch.py,
tests/test_maildir_half_made.py, tests/test_maildir_modseq_compaction.py):
a worker "thread" that holds each job until the test runs it; and
(tests/test_e2e_reactor_stalls.py, tests/test_e2e_pg_search.py) an IMAP
session that pings a hub while another thread works on it.
"""

from __future__ import annotations

import threading
import time

from twisted.internet import defer


class HeldThread:
    """
    A stand-in for a worker thread (SmallFiles' C{run}): C{thread} holds
    each job, and C{run_jobs} runs them, in the order given, in the
    caller's thread, with C{in_thread} true meanwhile. The class mixed in
    (or its C{__init__}/C{setUp}) sets C{self.jobs} to an empty list.
    """

    in_thread = False

    def thread(self, function, *args) -> defer.Deferred:
        """
        Hold C{function(*args)} until C{run_jobs}: a Deferred that fires
        with its result, or fails with what it raised.
        """
        d = defer.Deferred()
        self.jobs.append((function, args, d))
        return d

    def run_jobs(self) -> None:
        """
        Run every job held, and those they hand on, first come first.
        """
        self.in_thread = True
        try:
            while self.jobs:
                function, args, d = self.jobs.pop(0)
                try:
                    result = function(*args)
                except Exception:
                    d.errback()
                else:
                    d.callback(result)
        finally:
            self.in_thread = False


def pings_while(hub, action) -> tuple[object, list[float]]:
    """Run C{action()} in a thread while bob sends NOOP after NOOP: (its result, bob's waits in seconds)."""
    from tests.test_e2e_imap import login

    bob = login(hub, "bob", "hungry")
    bob.select("INBOX")
    result: dict = {}

    def run() -> None:
        result["value"] = action()

    doer = threading.Thread(target=run)
    doer.start()
    waits = []
    while doer.is_alive():
        began = time.monotonic()
        typ, _ = bob.noop()
        assert typ == "OK"
        waits.append(time.monotonic() - began)
        time.sleep(0.02)
    doer.join()
    bob.logout()
    return result["value"], waits
