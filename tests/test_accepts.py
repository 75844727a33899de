"""
C{--workers N}: a new connection goes to the worker that has the fewest
(twisted_mailhub/accepts.py), with the real shared table and a listening
port stood in for (its accepts counted), on L{task.Clock}. The real
hub's split is checked in tests/test_workers.py.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import task

from twisted_mailhub import accepts
from twisted_mailhub.accepts import AHEAD, GRACE, LOOK_AGAIN, ConnectionTable, make_table


class Transport:
    """What a listening port makes per accepted connection (tcp.Server's place)."""

    def __init__(self, number: int):
        self.number = number
        self.lost = False

    def connectionLost(self, reason) -> None:
        self.lost = True


class ListeningPort:
    """
    A listening socket as C{tcp.Port} looks to the gate: C{waiting}
    connections in its backlog; C{doRead} accepts up to C{numberAccepts}
    of them, each made into a C{transport}.
    """

    transport = Transport

    def __init__(self):
        self.waiting = 0
        self.reading = True
        self.connected = True
        self.disconnecting = False
        self.sessionno = 0
        self.numberAccepts = 100
        self.made: list = []

    def doRead(self) -> None:
        for _ in range(self.numberAccepts):
            if not self.waiting:
                return
            self.waiting -= 1
            self.made.append(self.transport(self.sessionno))
            self.sessionno += 1

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def stopListening(self):
        self.connected = False
        self.reading = False


@pytest.fixture
def table_fd():
    fd = make_table(2)
    yield fd
    os.close(fd)


def poll(port: ListeningPort) -> None:
    """The reactor's turn: a readable port that is being read is read."""
    if port.reading and port.waiting:
        port.doRead()


def test_every_worker_sees_the_connections_each_worker_has_open(table_fd):
    clock = task.Clock()
    first, second = ConnectionTable(table_fd, 0, 2, clock), ConnectionTable(table_fd, 1, 2, clock)
    for _ in range(3):
        first.opened()
    second.opened()
    first.closed()
    assert first.counts() == second.counts() == [2, 1]
    assert second.fewest() and not first.fewest()
    second.opened()
    assert first.fewest() and second.fewest()  # (even: both take)


def test_a_worker_started_again_starts_from_no_connections(table_fd):
    clock = task.Clock()
    gone = ConnectionTable(table_fd, 1, 2, clock)
    for _ in range(5):
        gone.opened()
    again = ConnectionTable(table_fd, 1, 2, clock)
    assert ConnectionTable(table_fd, 0, 2, clock).counts() == [0, 0]
    assert again.open == 0


def test_each_worker_sees_whether_another_listens_to_folders_and_a_restart_clears_it(table_fd):
    clock = task.Clock()
    first, second = ConnectionTable(table_fd, 0, 2, clock), ConnectionTable(table_fd, 1, 2, clock)
    assert not first.others_listening() and not second.others_listening()
    second.listening(2)
    assert first.others_listening()
    assert not second.others_listening()  # (its own folders are not "others")
    second.listening(0)
    assert not first.others_listening()
    second.listening(1)
    ConnectionTable(table_fd, 1, 2, clock)  # worker 1 started again: listens to nothing yet
    assert not first.others_listening()


def test_a_worker_has_a_slot_in_the_table_or_is_refused(table_fd):
    with pytest.raises(ValueError, match="worker 2 has no slot in a table of 2"):
        ConnectionTable(table_fd, 2, 2, task.Clock())


def test_accepted_connections_are_counted_until_they_are_lost(table_fd):
    clock = task.Clock()
    table, other = ConnectionTable(table_fd, 0, 2, clock), ConnectionTable(table_fd, 1, 2, clock)
    port = ListeningPort()
    table.gate(port)
    port.waiting = 1
    poll(port)
    assert other.counts() == [1, 0]
    (made,) = port.made
    assert isinstance(made, Transport) and made.number == 0
    made.connectionLost(None)
    assert made.lost and other.counts() == [0, 0]


def test_a_burst_of_clients_is_split_evenly_between_two_workers(table_fd):
    # Two workers woken by the same connections, taking turns in the
    # reactor: each takes one while it has no more than the other.
    clock = task.Clock()
    ports = []
    for index in (0, 1):
        port = ListeningPort()
        ConnectionTable(table_fd, index, 2, clock).gate(port)
        ports.append(port)
    backlog = 32
    while backlog:
        for port in ports:  # (both poll the one socket: what one takes the other cannot)
            port.waiting = backlog
            poll(port)
            backlog -= len(port.made) - getattr(port, "seen", 0)
            port.seen = len(port.made)
        clock.advance(LOOK_AGAIN)
    assert [len(port.made) for port in ports] == [16, 16]


def test_a_worker_with_more_connections_stops_reading_until_it_has_no_more(table_fd):
    clock = task.Clock()
    busy, other = ConnectionTable(table_fd, 0, 2, clock), ConnectionTable(table_fd, 1, 2, clock)
    for _ in range(3):
        busy.opened()
    other.opened()
    port = ListeningPort()
    busy.gate(port)
    port.waiting = 1
    poll(port)
    assert not port.reading and port.made == []  # left to the other worker
    clock.advance(LOOK_AGAIN)
    assert not port.reading
    other.opened()
    other.opened()  # (the other took it, and one more)
    clock.advance(LOOK_AGAIN)
    assert port.reading
    poll(port)
    assert len(port.made) == 1


def test_a_worker_takes_connections_while_the_one_with_fewer_is_itself_waiting(table_fd):
    # Worker 1 stopped reading when it had more; worker 0 took connections
    # since and now has more than it: it takes the next anyway, as long as
    # worker 1 is no more than AHEAD behind, instead of both waiting for
    # the other (short connections, one after another, were held up so).
    clock = task.Clock()
    first, second = ConnectionTable(table_fd, 0, 2, clock), ConnectionTable(table_fd, 1, 2, clock)
    for _ in range(3):
        second.opened()
    for _ in range(2):
        first.opened()
    waiting = ListeningPort()
    second.gate(waiting)
    waiting.waiting = 1
    poll(waiting)  # (3 > 2: it waits for worker 0)
    assert not waiting.reading and second.gated == 1
    port = ListeningPort()
    first.gate(port)
    taken = 3 + AHEAD + 1 - 2  # (from 2 to one more than AHEAD ahead of worker 1's 3)
    port.waiting = taken + 1
    poll(port)
    # ... and then, more than AHEAD ahead, leaves the next to worker 1
    assert len(port.made) == taken and port.waiting == 1 and not port.reading
    clock.advance(LOOK_AGAIN)
    assert waiting.reading and second.gated == 0  # (worker 1 has fewer now: it reads again)


def test_a_connection_no_other_worker_takes_is_taken_after_the_grace(table_fd):
    # The worker with fewer connections is stopped (or busy): a new
    # connection waits GRACE, then the worker with more takes it, and
    # only it: the next waits again.
    clock = task.Clock()
    busy = ConnectionTable(table_fd, 0, 2, clock)
    for _ in range(4):
        busy.opened()
    ConnectionTable(table_fd, 1, 2, clock)  # (stopped at 0 connections)
    port = ListeningPort()
    busy.gate(port)
    port.waiting = 2
    poll(port)
    waited = 0.0
    while not port.reading:
        clock.advance(LOOK_AGAIN)
        waited += LOOK_AGAIN
    assert waited == pytest.approx(GRACE, abs=LOOK_AGAIN * 1.5)
    poll(port)
    assert len(port.made) == 1 and not port.reading and port.waiting == 1
    clock.advance(GRACE + LOOK_AGAIN)
    poll(port)
    assert len(port.made) == 2


def test_a_closed_listener_is_not_read_again(table_fd):
    clock = task.Clock()
    busy = ConnectionTable(table_fd, 0, 2, clock)
    busy.opened()
    ConnectionTable(table_fd, 1, 2, clock)
    port = ListeningPort()
    busy.gate(port)
    port.waiting = 1
    poll(port)
    port.stopListening()
    clock.advance(GRACE * 2)
    assert not port.reading and clock.getDelayedCalls() == []


def test_the_table_is_an_unlinked_file_where_there_is_no_memfd(monkeypatch, tmp_path):
    monkeypatch.delattr(accepts.os, "memfd_create", raising=False)
    fd = make_table(3, str(tmp_path))
    try:
        assert os.fstat(fd).st_size == 3 * accepts.SLOT
        assert os.listdir(tmp_path) == []
        table = ConnectionTable(fd, 2, 3, task.Clock())
        table.opened()
        assert ConnectionTable(fd, 0, 3, task.Clock()).counts() == [0, 0, 1]
    finally:
        os.close(fd)
