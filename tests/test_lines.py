"""
Unit tests for the line engine (twisted_mailhub/lines.py): one test per rule
of its table, over StringTransport and task.Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from twisted_mailhub.lines import LineEngine, control_note, has_control, quote


class Owner:
    """A protocol that echoes each line and can be told to wait."""

    def __init__(self, clock=None, **options):
        self.clock = clock or task.Clock()
        self.transport = StringTransport()
        self.lines = LineEngine(self, self.clock, **options)
        self.got: list = []
        self.waiting: dict[bytes, defer.Deferred] = {}
        self.timeouts: list[str] = []
        self.ended = 0

    def start(self, login_timeout=None):
        self.lines.start(self.transport, login_timeout=login_timeout)
        return self

    def line_received(self, line):
        self.got.append(line)
        if line == b"boom":
            raise ValueError("a bug")
        if line.startswith(b"wait"):
            d = self.waiting[line] = defer.Deferred()
            d.addCallback(lambda _: self.transport.write(b"done " + line + b"\n"))
            return d
        if line == b"fail":
            return defer.fail(RuntimeError("a failed Deferred"))
        self.transport.write(b"ok " + line + b"\n")
        return None

    def line_too_long(self):
        self.got.append("too long")
        self.transport.write(b"too long\n")

    def command_failed(self, reason):
        self.transport.write(b"error\n")

    def timed_out(self, kind):
        self.timeouts.append(kind)
        self.lines.close()

    def input_ended(self):
        self.ended += 1
        self.lines.close()


def test_crlf_and_bare_lf_lines_are_both_lines_and_the_end_is_remembered():
    o = Owner().start()
    ends = []
    o.line_received = lambda line: ends.append((line, o.lines.crlf))
    o.lines.data_received(b"a\r\nb\nc\r")
    o.lines.data_received(b"\n")
    assert ends == [(b"a", True), (b"b", False), (b"c", True)]


def test_lines_one_per_packet_are_taken_as_they_are_in_one_packet():
    lines = [b"\n", b"\r\n", b"a\r\n", b"b\n", b"c\r\r\n", b"x" * 10 + b"\r\n", b"x" * 11 + b"\n", b"y" * 11 + b"\r\n", b"\r\n"]
    seen = []
    for packets in ([b"".join(lines)], lines):
        o = Owner(max_line=10).start()
        got = []
        o.line_received = lambda line: got.append((line, o.lines.crlf))
        o.line_too_long = lambda: got.append(("too long", None))
        for packet in packets:
            o.lines.data_received(packet)
        seen.append(got)
    assert seen[0] == seen[1]
    assert seen[1][:5] == [(b"", False), (b"", True), (b"a", True), (b"b", False), (b"c\r", True)]
    assert ("too long", None) in seen[1]


def test_a_line_split_over_many_packets_is_one_line():
    o = Owner().start()
    for byte in b"hello\r\n":
        o.lines.data_received(bytes([byte]))
    assert o.got == [b"hello"]


def test_over_long_line_is_dropped_as_it_arrives_and_answered_in_its_turn():
    o = Owner(max_line=10).start()
    o.lines.data_received(b"one\n" + b"x" * 50)
    assert o.got == [b"one", "too long"]
    assert len(o.lines._buf) == 0  # not kept
    o.lines.data_received(b"y" * 5000 + b"\ntwo\n")
    assert o.got == [b"one", "too long", b"two"]


def test_a_complete_over_long_line_in_one_packet_is_refused_once():
    o = Owner(max_line=10).start()
    o.lines.data_received(b"z" * 11 + b"\nnext\n")
    assert o.got == ["too long", b"next"]


def test_pipelined_lines_wait_behind_a_command_that_waits():
    o = Owner().start()
    o.lines.data_received(b"a\nwait1\nb\nc\n")
    assert o.transport.value() == b"ok a\n"
    o.waiting[b"wait1"].callback(None)
    assert o.transport.value() == b"ok a\ndone wait1\nok b\nok c\n"


def test_urgent_line_is_handled_while_a_command_waits_and_others_keep_their_order():
    o = Owner(urgent=lambda line: line == b"abort").start()
    o.lines.data_received(b"wait1\nb\n")
    o.lines.data_received(b"abort\nc\n")
    assert o.got == [b"wait1", b"abort"]
    o.waiting[b"wait1"].callback(None)
    assert o.got == [b"wait1", b"abort", b"b", b"c"]


def test_a_handler_bug_and_a_failed_deferred_cost_one_reply_each():
    o = Owner().start()
    o.lines.data_received(b"boom\nfail\nafter\n")
    assert o.transport.value() == b"error\nerror\nok after\n"
    assert not o.lines.closed


def test_a_failure_the_owner_knows_is_answered_without_a_traceback():
    from twisted.logger import globalLogPublisher

    from twisted_mailhub.store.interfaces import InsufficientStorage

    o = Owner().start()
    o.line_received = lambda line: defer.fail(InsufficientStorage("Insufficient system storage") if line == b"full" else ValueError("a bug"))
    o.command_failed = lambda reason: (o.transport.write(b"452\n"), reason.check(InsufficientStorage) is not None)[1]
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        o.lines.data_received(b"full\nbug\n")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert o.transport.value() == b"452\n452\n"
    failures = [e for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(ValueError)


def test_raw_input_goes_to_the_raw_handler_until_it_ends():
    o = Owner().start()
    taken = []

    def raw(data):
        data = bytes(data)
        i = data.find(b"END\n")
        if i < 0:
            taken.append(data)
            return None
        taken.append(data[:i])
        return data[i + 4 :], None

    o.line_received = lambda line: (o.got.append(line), line == b"data" and o.lines.start_raw(raw))[1] or None
    o.lines.data_received(b"data\nline one\npart")
    o.lines.data_received(b" two\nEND\nnext\n")
    assert b"".join(taken) == b"line one\npart two\n"
    assert o.got == [b"data", b"next"]


def test_a_client_that_does_not_read_stops_being_served_then_stops_being_read():
    o = Owner(max_held=100).start()
    o.lines.pauseProducing()  # the transport's buffer is full
    o.lines.data_received(b"a\n" * 40)
    assert o.got == []
    assert o.transport.producerState == "producing"
    o.lines.data_received(b"b\n" * 40)
    assert o.transport.producerState == "paused"
    o.lines.resumeProducing()
    assert len(o.got) == 80
    assert o.transport.producerState == "producing"


def test_half_close_answers_everything_then_closes_even_an_unfinished_line():
    o = Owner().start()
    o.lines.data_received(b"a\nwait1\nlast")
    o.lines.read_connection_lost()
    assert o.ended == 0  # wait1 is still waiting
    o.waiting[b"wait1"].callback(None)
    assert o.got == [b"a", b"wait1", b"last"]
    assert o.ended == 1 and o.transport.disconnecting


def test_idle_timeout_counts_from_the_last_input():
    o = Owner(idle_timeout=300).start()
    o.clock.advance(200)
    o.lines.data_received(b"x")
    o.clock.advance(200)
    assert o.timeouts == []
    o.clock.advance(101)
    assert o.timeouts == ["idle"]


def test_a_line_trickled_a_byte_at_a_time_is_cut_off_at_the_line_timeout():
    o = Owner(idle_timeout=300, line_timeout=120).start()
    for _ in range(100):
        o.lines.data_received(b"x")
        o.clock.advance(2)
        if o.timeouts:
            break
    assert o.timeouts == ["line"]
    assert o.got == []


def test_login_timeout_applies_until_logged_in():
    o = Owner(idle_timeout=300).start(login_timeout=60)
    for _ in range(5):
        o.clock.advance(10)
        o.lines.data_received(b"noop\n")
    o.clock.advance(11)
    assert o.timeouts == ["login"]
    p = Owner().start(login_timeout=60)
    p.lines.logged_in()
    p.clock.advance(61)
    assert p.timeouts == []


def test_discard_pending_drops_what_came_with_starttls():
    o = Owner().start()
    o.line_received = lambda line: (o.got.append(line), line == b"starttls" and o.lines.discard_pending())[1] and None
    o.lines.data_received(b"starttls\ninjected\n")
    assert o.got == [b"starttls"]
    o.lines.data_received(b"inside\n")
    assert o.got == [b"starttls", b"inside"]


def test_close_unregisters_the_producer_so_the_connection_can_close():
    o = Owner().start()
    assert o.transport.producer is o.lines
    o.lines.close()
    assert o.transport.producer is None and o.transport.disconnecting


# -- quoting -------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, shown",
    [
        (b"<alicee\x08@localhost>", "<alicee^H@localhost>"),
        ("tab\there", "tab^Ihere"),
        (b"esc\x1b[2J", "esc^[[2J"),
        (b"del\x7f", "del^?"),
        (b"nul\x00", "nul^@"),
        (b"c1 \xc2\x9b", "c1 <U+009B>"),
        (b"not utf-8 \xff", "not utf-8 <FF>"),
    ],
)
def test_quote_shows_every_control_character_visibly(given, shown):
    assert quote(given) == shown
    assert has_control(given)


def test_quote_keeps_plain_text_cuts_long_input_and_can_be_ascii_only():
    assert quote("bob@example.test") == "bob@example.test"
    assert quote("x" * 100, limit=10) == "x" * 10 + "..."
    assert quote("grüße", ascii=True) == "gr??e"
    assert quote("grüße") == "grüße"
    assert not has_control("grüße")


def test_control_note_names_the_first_control_character():
    assert control_note(b"a\x08b") == " (the line contained a control character: ^H, a backspace)"
    assert control_note(b"plain") == ""


# -- replies leave at once ------------------------------------------------------


class _Quiet:
    """A protocol for a bare TCP transport: nothing to do."""

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


def _tcp_pair():
    """
    A Twisted TCP connection (tcp.Server over one end of a socket pair, on
    a reactor that is never run) and the peer socket: what the transport
    sends shows on the peer without a reactor turn.
    """
    import socket

    from twisted.internet import tcp
    from twisted.internet.testing import MemoryReactor

    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    conn = tcp.Server(ours, _Quiet(), ("127.0.0.1", 4000), None, 1, MemoryReactor())
    return conn, peer


def test_this_twisted_keeps_unsent_output_where_send_now_looks():
    # send_now reads a few private attributes of Twisted's TCP connection;
    # a Twisted that moved them would quietly lose the fast path (replies
    # would still be right, through transport.write). Say so here.
    from twisted_mailhub import lines

    assert lines._buffers_known() is True
    assert lines._BUFFERS_KNOWN is True


def test_a_reply_on_a_plain_tcp_connection_is_sent_without_waiting_for_the_reactor():
    from twisted_mailhub.lines import send_now

    conn, peer = _tcp_pair()
    try:
        send_now(conn, b"250 2.0.0 Ok\r\n")
        assert peer.recv(100) == b"250 2.0.0 Ok\r\n"
        assert not conn._tempDataBuffer and not conn.dataBuffer  # nothing left for the reactor
    finally:
        peer.close()
        conn.socket.close()


def test_a_reply_behind_queued_output_waits_its_turn():
    from twisted_mailhub.lines import flush_now, send_now

    conn, peer = _tcp_pair()
    try:
        conn.write(b"first\r\n")  # queued for the reactor
        send_now(conn, b"second\r\n")
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(100)  # neither has jumped the queue
        flush_now(conn)
        peer.settimeout(5)
        assert peer.recv(100) == b"first\r\nsecond\r\n"
    finally:
        peer.close()
        conn.socket.close()


def test_replies_to_pipelined_lines_leave_together_when_the_batch_is_done():
    conn, peer = _tcp_pair()
    owner = Owner()
    owner.transport = conn
    writes = []
    sock = conn.socket

    class Counting:
        def __getattr__(self, name):
            return getattr(sock, name)

        def send(self, data):
            writes.append(bytes(data))
            return sock.send(data)

    conn.socket = Counting()
    owner.line_received = lambda line: owner.lines.write(b"+OK " + line + b"\r\n")
    try:
        owner.start()
        owner.lines.data_received(b"NOOP\r\nSTAT\r\nLIST 1\r\n")
        assert writes == [b"+OK NOOP\r\n+OK STAT\r\n+OK LIST 1\r\n"]
        owner.lines.data_received(b"QUIT\r\n")
        assert writes[1:] == [b"+OK QUIT\r\n"]
        assert peer.recv(200) == b"+OK NOOP\r\n+OK STAT\r\n+OK LIST 1\r\n+OK QUIT\r\n"
    finally:
        peer.close()
        sock.close()


def _counting(conn):
    """Count every send(2) on C{conn}'s socket: (list of what each sent)."""
    writes = []
    sock = conn.socket

    class Counting:
        def __getattr__(self, name):
            return getattr(sock, name)

        def send(self, data):
            writes.append(bytes(data))
            return sock.send(data)

    conn.socket = Counting()
    return writes, sock


def test_gathered_replies_to_a_pipelined_batch_leave_in_one_send_past_the_transport_buffer():
    conn, peer = _tcp_pair()
    owner = Owner(gather=True)
    owner.transport = conn
    writes, sock = _counting(conn)
    owner.line_received = lambda line: owner.lines.write(b"250 " + line + b"\r\n")
    try:
        owner.start()
        owner.lines.data_received(b"MAIL\r\nRCPT\r\nDATA\r\n")
        assert writes == [b"250 MAIL\r\n250 RCPT\r\n250 DATA\r\n"]
        # Never queued in the transport: it was not registered for writing
        # (no epoll_ctl to start and stop).
        assert conn not in conn.reactor.writers
        assert not conn._tempDataBuffer and not conn.dataBuffer
        owner.lines.data_received(b"NOOP\r\n")
        assert writes[1:] == [b"250 NOOP\r\n"]
        assert peer.recv(200) == b"250 MAIL\r\n250 RCPT\r\n250 DATA\r\n250 NOOP\r\n"
    finally:
        peer.close()
        sock.close()


def test_replies_to_a_lone_line_leave_at_once_in_order_past_the_transport_buffer():
    conn, peer = _tcp_pair()
    owner = Owner(gather=True)
    owner.transport = conn
    writes, sock = _counting(conn)

    def received(line):
        owner.lines.write(b"+OK " + line + b"\r\n")
        if line == b"LIST":
            owner.lines.write(b"1 20\r\n.\r\n")

    owner.line_received = received
    try:
        owner.start()
        owner.lines.data_received(b"NOOP\r\n")
        assert writes == [b"+OK NOOP\r\n"]
        owner.lines.data_received(b"LIST\r\n")
        assert b"".join(writes[1:]) == b"+OK LIST\r\n1 20\r\n.\r\n"
        assert conn not in conn.reactor.writers
        assert not conn._tempDataBuffer and not conn.dataBuffer
        assert peer.recv(200) == b"+OK NOOP\r\n+OK LIST\r\n1 20\r\n.\r\n"
    finally:
        peer.close()
        sock.close()


def test_gathered_replies_leave_before_starttls_discards_the_rest():
    # STARTTLS: its 220 must leave in the clear before TLS starts, even in
    # the middle of a pipelined batch (whose rest is dropped, CVE-2011-0411).
    owner = Owner(gather=True).start()
    events = []

    def received(line):
        owner.lines.write(b"reply " + line + b"\n")
        if line == b"STARTTLS":
            owner.lines.discard_pending()
            events.append(("tls starts after", owner.transport.value()))

    owner.line_received = received
    owner.lines.data_received(b"NOOP\nSTARTTLS\nMAIL injected\n")
    assert events == [("tls starts after", b"reply NOOP\nreply STARTTLS\n")]
    assert owner.transport.value() == b"reply NOOP\nreply STARTTLS\n"


def test_gathered_replies_leave_before_the_connection_is_closed():
    owner = Owner(gather=True).start()

    def received(line):
        owner.lines.write(b"221 " + line + b"\n")
        if line == b"QUIT":
            owner.lines.close()

    owner.line_received = received
    owner.lines.data_received(b"NOOP\nQUIT\nNOOP\n")
    assert owner.transport.value() == b"221 NOOP\n221 QUIT\n"
    assert owner.transport.disconnecting


def test_a_reply_written_later_by_a_waiting_command_is_not_held_back():
    owner = Owner(gather=True).start()
    owner.lines.data_received(b"NOOP\nwait1\n")
    assert owner.transport.value() == b"ok NOOP\n"
    owner.lines.write(b"250 late\n")  # a Deferred's reply, outside any batch
    assert owner.transport.value() == b"ok NOOP\n250 late\n"
