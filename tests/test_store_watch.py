"""
The change signal (L{twisted_mailhub.store.watch}) on a real reactor and
real directories: inotify on Linux, the poll elsewhere.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from twisted.internet.epollreactor import EPollReactor

from twisted_mailhub.store.watch import ChangeSignal

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's; elsewhere the signal polls (tested below)")


def run_until(reactor, condition, limit: float = 5.0) -> None:
    """Turn C{reactor} until C{condition()} holds or C{limit} seconds pass."""
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.01)


@linux
def test_a_file_renamed_into_a_watched_directory_calls_back_without_polling(tmp_path):
    reactor = EPollReactor()
    calls = []
    new = tmp_path / "new"
    new.mkdir()
    signal = ChangeSignal(reactor, [str(new)], lambda: calls.append(1), interval=3600)
    assert not signal.polling

    def drop():
        (tmp_path / "msg").write_bytes(b"Subject: x\r\n\r\n")
        os.rename(tmp_path / "msg", new / "msg")

    reactor.callLater(0.05, drop)
    run_until(reactor, lambda: calls)
    assert calls == [1]  # one call for the events of one turn
    signal.stop()


@linux
def test_only_the_entries_the_filter_names_count(tmp_path):
    reactor = EPollReactor()
    calls = []
    signal = ChangeSignal(reactor, [str(tmp_path)], lambda: calls.append(1), interval=3600, names=lambda n: n.startswith(b"."))

    def changes():
        (tmp_path / "mailhub-index").write_bytes(b"x")  # ignored
        reactor.callLater(0.2, (tmp_path / ".Projects").mkdir)

    reactor.callLater(0.05, changes)
    run_until(reactor, lambda: calls)
    assert calls == [1] and (tmp_path / ".Projects").is_dir()
    signal.stop()


@linux
def test_deleting_one_watched_directory_keeps_the_others_watched(tmp_path):
    # Twisted closes the whole inotify descriptor on IN_DELETE_SELF; the
    # signal makes a new one and the other directory keeps telling.
    reactor = EPollReactor()
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.mkdir()
    kept.mkdir()
    first, second = [], []
    a = ChangeSignal(reactor, [str(gone)], lambda: first.append(1), interval=3600)
    b = ChangeSignal(reactor, [str(kept)], lambda: second.append(1), interval=3600)
    reactor.callLater(0.05, gone.rmdir)
    run_until(reactor, lambda: first and second)  # both told once (the rebuild looks at everyone)
    second.clear()
    reactor.callLater(0.05, (kept / "file").write_bytes, b"x")
    run_until(reactor, lambda: second)
    assert second and not b.polling
    a.stop()
    b.stop()


def test_without_directories_the_signal_polls_at_the_interval(tmp_path):
    reactor = EPollReactor()
    calls = []
    signal = ChangeSignal(reactor, [], lambda: calls.append(1), interval=0.05)
    assert signal.polling
    run_until(reactor, lambda: len(calls) >= 3)
    assert len(calls) >= 3
    signal.stop()
    assert not signal.running
