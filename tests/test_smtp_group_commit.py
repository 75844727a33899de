# -*- test-case-name: tests.test_smtp_group_commit -*-
"""
The batch flush of store/durable.py that SMTP's messages/s rests on: a
batch is written, flushed together (one syncfs on a quiet system; its own
files only, with concurrent fsyncs, when neighbours have dirty data),
renamed into place; a failure costs only the writes it touched and never
leaves a file in its final place.
"""

from __future__ import annotations

import ctypes
import os
import time

import pytest

from twisted_mailhub.store import durable
from twisted_mailhub.store.durable import PendingWrite


@pytest.fixture(params=["syncfs", "files", "files without writeback"])
def flush(request, monkeypatch):
    if request.param == "syncfs" and durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")
    if request.param == "files without writeback":
        monkeypatch.setattr(durable, "_start_writeback", None)
    return request.param.split()[0]


def maildir(tmp_path):
    for sub in ("tmp", "new"):
        (tmp_path / sub).mkdir()
    return tmp_path


def writes(root, n):
    return [PendingWrite(str(root / "tmp" / f"m{i}"), str(root / "new" / f"m{i}"), b"message %d\r\n" % i, fresh=True) for i in range(n)]


def test_a_batch_lands_complete_in_its_final_place(tmp_path, flush):
    root = maildir(tmp_path)
    batch = writes(root, 5)
    batch.append(PendingWrite(str(root / "tmp" / "f"), str(root / "new" / "f"), lambda fd: os.write(fd, b"by fd\r\n")))
    assert durable._commit_batch(batch, flush) == [None] * 6
    assert sorted(os.listdir(root / "new")) == ["f", "m0", "m1", "m2", "m3", "m4"]
    assert (root / "new" / "m3").read_bytes() == b"message 3\r\n"
    assert (root / "new" / "f").read_bytes() == b"by fd\r\n"
    assert os.listdir(root / "tmp") == []


def test_one_failed_write_does_not_fail_the_others(tmp_path, flush):
    root = maildir(tmp_path)
    batch = writes(root, 3)
    batch.insert(1, PendingWrite(str(root / "missing" / "x"), str(root / "new" / "x"), b"lost"))
    outcome = durable._commit_batch(batch, flush)
    assert isinstance(outcome[1], FileNotFoundError)
    assert outcome[:1] + outcome[2:] == [None, None, None]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"]


def test_a_failed_flush_fails_its_write_and_renames_nothing_of_it(tmp_path, monkeypatch):
    real = os.fsync
    root = maildir(tmp_path)
    batch = writes(root, 4)

    def broken(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("m2"):
            raise OSError(5, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", broken)
    outcome = durable._commit_batch(batch)
    assert isinstance(outcome[2], OSError) and outcome[2].errno == 5
    assert outcome[:2] + outcome[3:] == [None, None, None]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m3"] and os.listdir(root / "tmp") == []


def test_with_neighbours_dirty_a_batch_flushes_only_its_own_files(tmp_path, monkeypatch):
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    root = maildir(tmp_path)
    (tmp_path / "neighbour").write_bytes(b"dirty" * 1000)
    assert durable._commit_batch(writes(root, 3), "files") == [None] * 3
    assert sorted(os.path.basename(p) for p in flushed) == ["m0", "m1", "m2", "new"]


def test_a_lone_write_starts_no_separate_writeback(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(durable, "_start_writeback", calls.append)
    root = maildir(tmp_path)
    assert durable._commit_batch(writes(root, 1)) == [None]
    assert calls == [] and os.listdir(root / "new") == ["m0"]


def test_a_quiet_system_flushes_a_batch_with_one_syncfs_for_its_data_and_one_for_its_links(tmp_path, monkeypatch):
    if durable._syncfs is None or durable._linkat is None:
        pytest.skip("no syncfs(2) or no O_TMPFILE on this system")
    seen = []
    real = durable._sync_filesystem
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "_sync_filesystem", lambda path, watch=None: (seen.append((os.listdir(root / "tmp"), sorted(os.listdir(root / "new")))), real(path, watch))[1])
    assert durable._commit_batch(writes(root, 5), "syncfs") == [None] * 5
    # The data is flushed while no message has a name (not even in tmp/),
    # then their names in new/ are.
    assert seen == [([], []), ([], ["m0", "m1", "m2", "m3", "m4"])]
    assert (root / "new" / "m4").read_bytes() == b"message 4\r\n"


def test_a_write_to_a_name_not_marked_fresh_replaces_the_file_there_as_a_rename_does(tmp_path):
    root = maildir(tmp_path)
    (root / "new" / "state").write_bytes(b"old")
    batch = [PendingWrite(str(root / "tmp" / "state"), str(root / "new" / "state"), b"new"), *writes(root, 2)]
    assert durable._commit_batch(batch, "syncfs") == [None] * 3
    assert (root / "new" / "state").read_bytes() == b"new" and os.listdir(root / "tmp") == []


def test_where_the_filesystem_has_no_unnamed_files_a_batch_is_written_to_tmp_names_and_renamed(tmp_path, monkeypatch):
    if durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")
    real_open, seen = os.open, []

    def refusing(path, flags, *args, **kwargs):
        if durable._O_TMPFILE and flags & durable._O_TMPFILE == durable._O_TMPFILE:
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    monkeypatch.setattr(durable, "_unnamed_refused", set())
    real = durable._sync_filesystem
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "_sync_filesystem", lambda path, watch=None: (seen.append(sorted(os.listdir(root / "tmp"))), real(path, watch))[1])
    assert durable._commit_batch(writes(root, 3), "syncfs") == [None] * 3
    assert seen == [["m0", "m1", "m2"]]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"] and os.listdir(root / "tmp") == []
    assert (root / "new" / "m1").read_bytes() == b"message 1\r\n"


def test_where_linking_an_unnamed_file_is_refused_it_is_written_again_named_and_renamed(tmp_path, monkeypatch):
    if durable._syncfs is None or durable._linkat is None:
        pytest.skip("no syncfs(2) or no O_TMPFILE on this system")

    def refused(fd, directory_fd, name, path):
        raise OSError(1, "Operation not permitted", path)

    monkeypatch.setattr(durable, "_link", refused)
    monkeypatch.setattr(durable, "_unnamed_refused", set())
    root = maildir(tmp_path)
    assert durable._commit_batch(writes(root, 3), "syncfs") == [None] * 3
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"] and os.listdir(root / "tmp") == []
    assert (root / "new" / "m2").read_bytes() == b"message 2\r\n"
    assert durable._unnamed_refused == {str(root / "tmp")}


def test_a_process_that_dies_before_the_links_leaves_nothing_in_tmp_or_new(tmp_path):
    if durable._syncfs is None or durable._linkat is None:
        pytest.skip("no syncfs(2) or no O_TMPFILE on this system")
    root = maildir(tmp_path)
    pid = os.fork()
    if pid == 0:  # the hub, killed once the data is on disk and before any name is given
        try:
            durable._link = lambda *args: os._exit(7)
            durable._commit_batch(writes(root, 4), "syncfs")
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "new") == []


def test_a_failed_flush_of_the_links_takes_the_linked_messages_back_out(tmp_path, monkeypatch):
    if durable._syncfs is None or durable._linkat is None:
        pytest.skip("no syncfs(2) or no O_TMPFILE on this system")

    def broken(path, watch=None):
        raise OSError(5, "syncfs: Input/output error", path)

    monkeypatch.setattr(durable, "_sync_links", broken)
    root = maildir(tmp_path)
    outcome = durable._commit_batch(writes(root, 3), "syncfs")
    assert all(isinstance(e, OSError) and e.errno == 5 for e in outcome)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


def test_a_failed_syncfs_fails_the_batch_and_renames_nothing(tmp_path, monkeypatch):
    if durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")

    def broken_sync(path, watch=None):
        raise OSError(5, "syncfs: Input/output error", path)

    monkeypatch.setattr(durable, "_sync_filesystem", broken_sync)
    root = maildir(tmp_path)
    outcome = durable._commit_batch(writes(root, 4), "syncfs")
    assert all(isinstance(e, OSError) and e.errno == 5 for e in outcome)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


@pytest.mark.parametrize("dirty, chosen", [(1 << 20, "syncfs"), (2 << 30, "files"), (None, "files")])
def test_the_flush_is_chosen_by_how_much_the_neighbours_have_dirty(monkeypatch, dirty, chosen):
    monkeypatch.setattr(durable, "_syncfs", durable._syncfs or (lambda fd: 0))
    monkeypatch.setattr(durable, "_dirty_bytes", lambda: dirty)
    assert durable.choose_flush() == chosen


class _InlineReactor:
    """
    A reactor for L{durable.GroupCommitWriter}, and its commit threads
    (C{threads=}), that runs each batch at once (in this thread) and
    whose results come back at once: a batch is done when C{write}
    returns, or, with C{hold}, when L{release} is called.
    """

    def __init__(self, hold: bool = False):
        from twisted.internet import task

        self.clock = task.Clock()
        self.callLater = self.clock.callLater
        self.hold = hold
        self.held: list = []
        self.seen: list = []  # every batch run, in order

    def run(self, function, args, on_result):
        self.seen.append(args[0])
        self.held.append(lambda: on_result(function(*args)))
        if not self.hold:
            held, self.held = self.held, []
            for done in held:
                done()

    def release(self):
        self.clock.advance(0)  # batches start at the end of the reactor's turn
        held, self.held = self.held, []
        for done in held:
            done()

    def turn(self):
        """The end of the reactor's turn: batches due start (and, without hold, finish)."""
        self.clock.advance(0)

    def one_turn(self):
        """
        One turn of a real reactor: the calls due when it began run; one
        they make for 0 seconds later waits for the next turn (task.Clock
        would run it in the same advance).
        """
        clock = self.clock
        due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
        for call in due:
            clock.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


def inline_writer() -> durable.GroupCommitWriter:
    reactor = _InlineReactor()
    return durable.GroupCommitWriter(reactor, threads=reactor)


def test_every_write_of_a_batch_has_arrived_and_after_batch_ran_before_any_deferred_fires(tmp_path):
    root = maildir(tmp_path)
    reactor = _InlineReactor(hold=True)
    writer = durable.GroupCommitWriter(reactor, threads=reactor, in_flight=1)
    seen = []
    shared = []

    def arrived(n):
        seen.append(("arrived", n))
        if not shared:
            writer.after_batch(lambda: seen.append("after batch"))
            shared.append(n)

    def write(n):
        d = writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x", arrived=lambda: arrived(n))
        d.addCallback(lambda path: seen.append(("fired", n, list(seen))))

    write(0)
    reactor.turn()  # the batch of m0 is on its way
    write(1)
    write(2)
    reactor.release()  # m0 is done; m1 and m2, queued meanwhile, are the next batch
    reactor.release()
    assert seen[:3] == [("arrived", 0), "after batch", ("fired", 0, [("arrived", 0), "after batch"])]
    # The second batch: both arrivals before either Deferred.
    assert [e[:2] for e in seen[3:]] == [("arrived", 1), ("arrived", 2), ("fired", 1), ("fired", 2)]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"]


@pytest.mark.parametrize("chosen, batches", [("syncfs", 1), ("files", 4)])
def test_the_writes_of_one_reactor_turn_go_to_disk_together_at_its_end(tmp_path, monkeypatch, chosen, batches):
    # The flush is pinned: choose_flush() follows the whole system's dirty
    # data, which a busy machine (or CI) changes under the test. With
    # syncfs one batch takes everything queued; with per-file fsyncs the
    # turn's writes are shared among the free places (in_flight=4), all
    # started at the turn's end, none alone ahead of the others.
    if chosen == "syncfs" and durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")
    monkeypatch.setattr(durable, "choose_flush", lambda: chosen)
    root = maildir(tmp_path)
    reactor = _InlineReactor()
    writer = durable.GroupCommitWriter(reactor, threads=reactor, in_flight=4)
    done = []
    for n in range(5):
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x").addCallback(done.append)
    assert done == [] and writer.batches == 0  # not one alone, then four behind it
    reactor.turn()
    assert writer.batches == batches and len(done) == 5
    assert sorted(os.listdir(root / "new")) == [f"m{n}" for n in range(5)]


def test_a_write_whose_arrival_bookkeeping_fails_reports_that_failure(tmp_path):
    root = maildir(tmp_path)
    writer = inline_writer()

    def broken():
        raise ValueError("bookkeeping")

    failures = []
    writer.write(str(root / "tmp" / "m"), str(root / "new" / "m"), b"x", arrived=broken).addErrback(failures.append)
    ok = []
    writer.write(str(root / "tmp" / "n"), str(root / "new" / "n"), b"y").addCallback(ok.append)
    writer.reactor.turn()
    assert [f.value.args for f in failures] == [("bookkeeping",)]
    assert ok == [str(root / "new" / "n")]


def test_the_flush_is_chosen_once_per_choice_period_not_once_per_batch(tmp_path, monkeypatch):
    root = maildir(tmp_path)
    asked = []
    monkeypatch.setattr(durable, "choose_flush", lambda: asked.append(1) or "files")
    now = [1000.0]
    monkeypatch.setattr(durable.time, "monotonic", lambda: now[0])
    writer = inline_writer()
    for n in range(5):
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x")
        writer.reactor.turn()
    assert len(asked) == 1 and writer.batches == 5
    now[0] += durable.CHOICE_SECONDS
    writer.write(str(root / "tmp" / "late"), str(root / "new" / "late"), b"x")
    writer.reactor.turn()
    assert len(asked) == 2


def test_on_a_quiet_system_a_second_batch_starts_beside_a_first_that_takes_long(tmp_path, monkeypatch):
    # A batch is two journal commits in a row (data, then the renames'
    # directory): on a disk the next batch's flush overlaps the first one's
    # second commit instead of waiting for it; a third waits for a place.
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "choose_flush", lambda: "syncfs")
    now = [1000.0]
    monkeypatch.setattr(durable.time, "monotonic", lambda: now[0])
    reactor = _InlineReactor(hold=True)
    writer = durable.GroupCommitWriter(reactor, threads=reactor)
    done = []

    def write(n):
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x").addCallback(done.append)
        reactor.turn()

    write(0)
    write(1)
    assert writer.batches == 1  # the first has only just started
    now[0] += 1.5 * durable.OVERLAP_AFTER
    reactor.clock.advance(1.5 * durable.OVERLAP_AFTER)
    assert writer.batches == 2 and len(reactor.held) == 2
    write(2)
    now[0] += 1.5 * durable.OVERLAP_AFTER
    reactor.clock.advance(1.5 * durable.OVERLAP_AFTER)
    assert writer.batches == durable.SYNCFS_IN_FLIGHT == 2
    reactor.release()
    assert writer.batches == 3 and len(done) == 2
    reactor.release()
    assert sorted(os.listdir(root / "new")) == ["m0", "m1", "m2"] and len(done) == 3


def test_on_a_quiet_system_writes_queued_behind_a_quick_flush_go_in_one_batch_after_it(tmp_path, monkeypatch):
    # Where a flush takes less than OVERLAP_AFTER (tmpfs, a fast SSD), no
    # second batch starts beside it: what queued meanwhile is one batch.
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "choose_flush", lambda: "syncfs")
    monkeypatch.setattr(durable.time, "monotonic", lambda: 1000.0)
    reactor = _InlineReactor(hold=True)
    writer = durable.GroupCommitWriter(reactor, threads=reactor)
    for n in range(5):
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x")
        reactor.turn()
    assert writer.batches == 1
    reactor.release()  # the first is done; the four queued behind it go together
    assert writer.batches == 2
    reactor.release()
    assert writer.batches == 2 and len(os.listdir(root / "new")) == 5


def test_a_batch_whose_flush_ends_first_waits_for_the_batches_started_before_it(tmp_path, monkeypatch):
    # Messages become visible in the order of their UIDs (given in order of
    # arrival): an IMAP session told of a UID never hears of a new message
    # below it, even when a later batch's flush happens to end first.
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "choose_flush", lambda: "syncfs")
    now = [1000.0]
    monkeypatch.setattr(durable.time, "monotonic", lambda: now[0])
    reactor = _InlineReactor(hold=True)
    writer = durable.GroupCommitWriter(reactor, threads=reactor)
    seen = []

    def write(n):
        d = writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x", arrived=lambda: seen.append(("arrived", n)))
        d.addCallback(lambda _: seen.append(("fired", n)))
        reactor.turn()

    write(0)
    now[0] += 1.5 * durable.OVERLAP_AFTER
    write(1)
    assert writer.batches == 2
    first, second = reactor.held
    reactor.held = []
    second()  # the later batch's thread is done first
    assert seen == []
    first()
    assert seen == [("arrived", 0), ("fired", 0), ("arrived", 1), ("fired", 1)]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1"]


def test_commit_threads_run_batches_off_the_reactor_and_answer_in_its_thread_then_stop_at_shutdown():
    import queue
    import threading

    answers: queue.Queue = queue.Queue()

    class Reactor:
        def __init__(self):
            self.triggers = []

        def addSystemEventTrigger(self, phase, event, function):
            self.triggers.append((phase, event, function))

        def callFromThread(self, function, *args):
            answers.put((function, args))

    def answer(count):
        for _ in range(count):
            function, args = answers.get(timeout=10)
            function(*args)  # here, in the "reactor" thread

    reactor = Reactor()
    threads = durable.CommitThreads(reactor, 2)
    results: list = []
    # Two batches on their way at once: two threads.
    threads.run(lambda: ("a", threading.get_ident()), (), results.append)
    threads.run(lambda: 1 / 0, (), results.append)
    answer(2)
    crashed = [r for r in results if not isinstance(r, tuple)]
    assert len(crashed) == 1 and crashed[0].check(ZeroDivisionError)
    [(_, first)] = [r for r in results if isinstance(r, tuple)]
    assert first != threading.get_ident()
    # One at a time from then on: the thread idle most recently takes
    # each, and no other is started.
    for n in range(5):
        threads.run(lambda n: (n, threading.get_ident()), (n,), results.append)
        answer(1)
    later = results[2:]
    assert [n for n, _ in later] == [0, 1, 2, 3, 4] and len({ident for _, ident in later}) == 1
    assert threading.get_ident() not in {ident for _, ident in later}
    assert len(threads._threads) == 2
    [(phase, event, stop)] = reactor.triggers
    assert (phase, event) == ("during", "shutdown")
    running = [thread for thread, _ in threads._threads]
    stop()
    assert not any(thread.is_alive() for thread in running)


def _gathering_writer(tmp_path, monkeypatch):
    """A Maildir, a settable clock, a held inline reactor and a writer with GATHER_MAX 2 ms (per-file flushes)."""
    root = maildir(tmp_path)
    monkeypatch.setattr(durable, "choose_flush", lambda: "files")
    monkeypatch.setattr(durable, "GATHER_MAX", 0.002)
    now = [1000.0]
    monkeypatch.setattr(durable.time, "monotonic", lambda: now[0])
    reactor = _InlineReactor(hold=True)
    return root, now, reactor, durable.GroupCommitWriter(reactor, threads=reactor, in_flight=2)


def test_beside_a_batch_on_its_way_the_next_gathers_writes_until_a_turn_brings_none(tmp_path, monkeypatch):
    # --workers (GATHER_MAX): a process short of CPU lets a second batch
    # wait while each reactor turn still queues writes, so that a batch's
    # cost is shared by more of them; it starts at the first turn that
    # brings none. The first batch (none on its way) starts as before.
    root, now, reactor, writer = _gathering_writer(tmp_path, monkeypatch)

    def write(n):
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x")

    write(0)
    reactor.one_turn()
    assert writer.batches == 1  # alone: at the end of its turn
    for n in range(1, 4):
        write(n)
        reactor.one_turn()  # each turn brought one more
        now[0] += 0.0001
    assert writer.batches == 1
    reactor.one_turn()  # a turn with no new write
    assert writer.batches == 2 and [len(b) for b in reactor.seen] == [1, 3]
    reactor.release()
    reactor.release()
    assert sorted(os.listdir(root / "new")) == [f"m{n}" for n in range(4)]


def test_a_gathering_batch_starts_once_its_first_write_waited_gather_max_or_no_batch_is_on_its_way(tmp_path, monkeypatch):
    root, now, reactor, writer = _gathering_writer(tmp_path, monkeypatch)
    n = 0

    def write():
        nonlocal n
        writer.write(str(root / "tmp" / f"m{n}"), str(root / "new" / f"m{n}"), b"x")
        n += 1

    write()
    reactor.one_turn()
    while now[0] < 1000.0 + 0.002:  # a write every turn, for longer than GATHER_MAX
        write()
        reactor.one_turn()
        assert writer.batches == 1
        now[0] += 0.0005
    now[0] = 1000.0025
    write()
    reactor.one_turn()
    assert writer.batches == 2  # waited long enough
    # Another gathers while a batch is on its way; once none is, it starts.
    write()
    reactor.one_turn()
    assert writer.batches == 2
    reactor.held.pop(0)()
    assert writer.batches == 2  # (the second is still on its way)
    reactor.held.pop(0)()
    assert writer.batches == 3
    # Without GATHER_MAX (one process) a second batch starts at the end of its turn.
    monkeypatch.setattr(durable, "GATHER_MAX", 0.0)
    write()
    reactor.one_turn()
    assert writer.batches == 4



# One syncfs for one batch's links and the next batch's data: every syncfs
# is numbered (durable._begin_flush); a batch whose files are linked waits
# for one numbered above the newest begun when its links were made.


def _flush_recorder(monkeypatch, root, events):
    """Every syncfs (of data or of links) records the names in new/ when it begins, then runs."""
    real = durable._sync_filesystem

    def recording(path, watch=None):
        events.append(("syncfs", sorted(os.listdir(root / "new"))))
        real(path, watch)

    monkeypatch.setattr(durable, "_sync_filesystem", recording)


def _owing_writer(tmp_path, monkeypatch):
    if durable._syncfs is None or durable._linkat is None:
        pytest.skip("no syncfs(2) or no O_TMPFILE on this system")
    monkeypatch.setattr(durable, "choose_flush", lambda: "syncfs")
    monkeypatch.setattr(durable.time, "monotonic", lambda: 1000.0)  # (no second batch beside the first)
    root = maildir(tmp_path)
    events: list = []
    _flush_recorder(monkeypatch, root, events)
    reactor = _InlineReactor(hold=True)
    writer = durable.GroupCommitWriter(reactor, threads=reactor)

    def write(name):
        d = writer.write(str(root / "tmp" / name), str(root / "new" / name), b"message " + name.encode() + b"\r\n", fresh=True)
        d.addCallback(lambda _: events.append(("acknowledged", name)))
        d.addErrback(lambda f: events.append(("failed", name, f.value.errno)))

    return root, reactor, writer, write, events


def test_the_flush_of_the_next_batchs_data_makes_a_batchs_links_durable(tmp_path, monkeypatch):
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    monkeypatch.setattr(durable, "STATS", dict.fromkeys(durable.STATS, 0))
    write("a0")
    write("a1")
    reactor.turn()  # batch a on its way
    write("b0")
    write("b1")
    reactor.release()  # a: data flushed, linked; b, queued meanwhile, starts
    assert events == [("syncfs", [])] and writer.batches == 2
    # b: its data's syncfs, begun after a's links, serves them; nothing
    # comes to serve b's links: its thread runs a syncfs of their own
    # before it returns (no second trip through the reactor for it)
    reactor.release()
    assert events == [
        ("syncfs", []),
        ("syncfs", ["a0", "a1"]),
        ("syncfs", ["a0", "a1", "b0", "b1"]),
        ("acknowledged", "a0"),
        ("acknowledged", "a1"),
        ("acknowledged", "b0"),
        ("acknowledged", "b1"),
    ]
    assert reactor.held == [] and sorted(os.listdir(root / "new")) == ["a0", "a1", "b0", "b1"]
    # Three syncfs for two batches, as the control socket's status counts them:
    assert durable.STATS == {"batches": 2, "files_batches": 0, "writes": 4, "syncfs": 3, "links_alone": 1}


def test_no_write_is_acknowledged_before_a_syncfs_that_began_after_its_link(tmp_path, monkeypatch):
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    for n in range(12):
        write(f"m{n:02}")
        if n % 3 == 2:
            reactor.turn()
        if n % 4 == 3:
            reactor.release()
    for _ in range(50):
        if not reactor.held:
            break
        reactor.release()
    acknowledged = [e[1] for e in events if e[0] == "acknowledged"]
    assert acknowledged == [f"m{n:02}" for n in range(12)]  # every one, in order
    for name in acknowledged:
        before = events[: events.index(("acknowledged", name))]
        assert any(e[0] == "syncfs" and name in e[1] for e in before), name


def test_a_syncfs_begun_before_a_batchs_links_were_made_is_not_taken_to_serve_them(tmp_path, monkeypatch):
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    writer._leave_links = lambda key: True  # (as if a write were queued: another thread's syncfs is to serve the links)
    write("a0")
    write("a1")
    reactor.release()  # a's data flushed (syncfs number n), linked; a syncfs of its own is due
    device = os.stat(root / "new").st_dev
    begun = durable._flush_numbers[device]
    # Another thread's syncfs numbered n (begun before the links) ends well:
    writer._heard([(device, begun, None, 0)])
    assert ("acknowledged", "a0") not in events
    reactor.release()  # the syncfs of their own, number n + 1
    assert events[-3:] == [("syncfs", ["a0", "a1"]), ("acknowledged", "a0"), ("acknowledged", "a1")]


def test_a_syncfs_through_a_descriptor_newer_than_a_batchs_links_does_not_vouch_for_them(tmp_path, monkeypatch):
    # A syncfs begun after the links, but through a descriptor whose
    # write-back error cursor was set after them: an error of the links'
    # write-back before that is never told to it (see _Watch).
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    writer._leave_links = lambda key: True  # (as if a write were queued: another thread's syncfs is to serve the links)
    write("a0")
    write("a1")
    reactor.release()  # a's data flushed, linked; a syncfs of its own is due
    device = os.stat(root / "new").st_dev
    newer = time.monotonic_ns()
    writer._heard([(device, durable._flush_numbers[device] + 1, None, newer)])
    assert ("acknowledged", "a0") not in events
    reactor.release()  # the syncfs of their own, through the batch's own descriptor
    assert events[-3:] == [("syncfs", ["a0", "a1"]), ("acknowledged", "a0"), ("acknowledged", "a1")]


class _ErrorSequence:
    """
    syncfs(2)'s write-back error reporting since Linux 5.8 (errseq_t), as
    a model: each open descriptor's cursor is set at open() and at each
    syncfs of it; a syncfs fails with EIO when an error came after the
    descriptor's cursor, whoever else was told of it.
    """

    def __init__(self, monkeypatch):
        self.errors = 0
        self.cursors: dict[int, int] = {}
        real_open = os.open

        def opening(*args, **kwargs):
            fd = real_open(*args, **kwargs)
            self.cursors[fd] = self.errors
            return fd

        monkeypatch.setattr(os, "open", opening)
        monkeypatch.setattr(durable, "_syncfs", self.syncfs)

    def syncfs(self, fd: int) -> int:
        seen, self.cursors[fd] = self.cursors.get(fd, 0), self.errors  # (opened before the model: older than its errors)
        if seen != self.errors:
            ctypes.set_errno(5)
            return -1
        return 0


def test_a_write_back_error_before_a_batchs_syncfs_fails_the_batch_whoever_saw_it_first(tmp_path, monkeypatch):
    if durable._syncfs is None:
        pytest.skip("no syncfs(2) on this system")
    kernel = _ErrorSequence(monkeypatch)
    monkeypatch.setattr(durable, "_POOL", durable._WatchPool())  # (every descriptor opened under the model)
    root = maildir(tmp_path)
    batch = writes(root, 3)

    def written_then_lost(fd):
        os.write(fd, b"message\r\n")
        # The kernel's own write-back of this data fails before the
        # batch's syncfs, and another process's syncfs is told of it.
        kernel.errors += 1

    batch[1] = PendingWrite(str(root / "tmp" / "lost"), str(root / "new" / "lost"), written_then_lost, fresh=True)
    outcome = durable._commit_batch(batch, "syncfs")
    assert all(isinstance(e, OSError) and e.errno == 5 for e in outcome)
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []
    # The descriptor that heard it is told of nothing older: the next batch is written.
    assert durable._commit_batch(writes(root, 2), "syncfs") == [None, None]
    assert sorted(os.listdir(root / "new")) == ["m0", "m1"]


def test_a_failed_syncfs_fails_the_writes_whose_links_it_was_to_flush_and_takes_them_out(tmp_path, monkeypatch):
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    write("a0")
    write("a1")
    reactor.turn()
    write("b0")
    write("b1")
    reactor.release()  # a linked, b starts

    def broken(path, watch=None):
        events.append(("syncfs failed", sorted(os.listdir(root / "new"))))
        raise OSError(5, "syncfs: Input/output error", path)

    monkeypatch.setattr(durable, "_sync_filesystem", broken)
    reactor.release()  # b's data flush fails: b and a (whose links it was to flush) fail
    reactor.release()  # (a's linked files taken out in a thread)
    assert [e for e in events if e[0] in ("acknowledged", "failed")] == [("failed", "a0", 5), ("failed", "a1", 5), ("failed", "b0", 5), ("failed", "b1", 5)]
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []


def test_a_batch_started_before_the_links_own_syncfs_runs_does_not_leave_it_a_descriptor_too_new(tmp_path, monkeypatch):
    # A syncfs for links alone is due (a thread is asked for it) and, before
    # that thread takes a descriptor, the next batch's thread takes the one
    # older than the links: the links' syncfs found only newer ones and
    # failed with EIO, and so did the batch whose links it was then also to
    # serve (451 to 32 clients in bench/workers.py). The descriptor is
    # now taken when the syncfs is asked for, in the reactor's order.
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    writer._leave_links = lambda key: True  # (a's links left: a write was queued as they were made, its batch did not start)
    write("a0")
    write("a1")
    reactor.release()  # a linked; a syncfs of their own asked of a thread, not yet run
    del writer._leave_links
    assert len(reactor.held) == 1 and writer._flushing
    write("b0")
    write("b1")
    reactor.turn()  # b starts in another thread
    assert len(reactor.held) == 2
    reactor.held.pop()()  # b's thread runs first
    reactor.release()  # then the links' syncfs
    for _ in range(5):
        reactor.release()
    assert [e for e in events if e[0] in ("acknowledged", "failed")] == [("acknowledged", "a0"), ("acknowledged", "a1"), ("acknowledged", "b0"), ("acknowledged", "b1")]
    assert sorted(os.listdir(root / "new")) == ["a0", "a1", "b0", "b1"]


def test_a_batch_with_nothing_queued_behind_it_flushes_its_links_in_its_own_thread(tmp_path, monkeypatch):
    # No later syncfs is coming to serve the links: the batch's thread runs
    # theirs before it returns, instead of handing the batch back to the
    # reactor only to have another thread run it (one trip less).
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    monkeypatch.setattr(durable, "STATS", dict.fromkeys(durable.STATS, 0))
    write("a0")
    write("a1")
    reactor.release()
    assert events == [("syncfs", []), ("syncfs", ["a0", "a1"]), ("acknowledged", "a0"), ("acknowledged", "a1")]
    assert reactor.held == [] and not writer._flushing
    assert durable.STATS == {"batches": 1, "files_batches": 0, "writes": 2, "syncfs": 2, "links_alone": 1}


def test_while_a_batchs_thread_flushes_only_its_links_the_next_batch_starts_at_once(tmp_path, monkeypatch):
    # A batch whose thread runs the syncfs of its own links holds back no
    # write that comes meanwhile: its batch starts at the end of that turn
    # (not OVERLAP_AFTER later, as beside a batch flushing its data), and
    # the acknowledgements still come in order.
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    real = durable._sync_linked
    started = []

    def linking(*args, **kwargs):
        if not started:
            write("b0")
            write("b1")
            reactor.turn()
            started.append(writer.batches)
        real(*args, **kwargs)

    monkeypatch.setattr(durable, "_sync_linked", linking)
    write("a0")
    write("a1")
    reactor.turn()
    reactor.held.pop(0)()  # a's thread: data, links, and (nothing queued yet) its links' syncfs
    assert started == [2]
    for _ in range(5):
        reactor.release()
    assert [e[1] for e in events if e[0] == "acknowledged"] == ["a0", "a1", "b0", "b1"]
    assert reactor.held == [] and sorted(os.listdir(root / "new")) == ["a0", "a1", "b0", "b1"]


def test_a_failed_syncfs_of_links_in_the_batchs_own_thread_fails_them_and_takes_them_out(tmp_path, monkeypatch):
    root, reactor, writer, write, events = _owing_writer(tmp_path, monkeypatch)
    real = durable._sync_filesystem
    calls = []

    def second_fails(path, watch=None):
        calls.append(sorted(os.listdir(root / "new")))
        if len(calls) == 2:  # (the links' syncfs: a0 and a1 are linked)
            raise OSError(5, "syncfs: Input/output error", path)
        real(path, watch)

    monkeypatch.setattr(durable, "_sync_filesystem", second_fails)
    write("a0")
    write("a1")
    reactor.release()
    assert calls == [[], ["a0", "a1"]]
    assert [e for e in events if e[0] in ("acknowledged", "failed")] == [("failed", "a0", 5), ("failed", "a1", 5)]
    assert os.listdir(root / "new") == [] and os.listdir(root / "tmp") == []
    # The next batch is written as ever.
    write("b0")
    write("b1")
    reactor.release()
    assert events[-2:] == [("acknowledged", "b0"), ("acknowledged", "b1")]
    assert sorted(os.listdir(root / "new")) == ["b0", "b1"]
