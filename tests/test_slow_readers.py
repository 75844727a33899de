"""
A peer that reads what it asked for a few octets a second (the slow-read
form of slowloris) is cut off once it has kept the hub waiting at under
4 KiB/s for --slow-transfer-window seconds (twisted_mailhub/pace.py); a
peer reading at more than that is never cut.

Unit tests drive L{SlowReaders} with a task.Clock; the end-to-end tests
start the real hub and read with a socket whose receive buffer is small.
"""

from __future__ import annotations

import ftplib
import os
import re
import socket
import ssl
import time

import pytest
from twisted.internet import task, tcp

from tests.rawclient import trickle
from tests.hubprocess import client_context
from twisted_mailhub import pace

MB = 1024 * 1024


# -- unit: the rule, with a clock -------------------------------------------


class _Reactor(task.Clock):
    def __init__(self):
        task.Clock.__init__(self)
        self.readers: list = []

    def getReaders(self):
        return list(self.readers)

    def getWriters(self):
        return []


class _Peer(tcp.Server):
    """A tcp.Server as far as the watch looks: a socket, a protocol, a buffer."""

    def __init__(self, protocol=None):  # no socket: the probe stands in
        self.socket = object()
        self.protocol = protocol
        self.connected = True
        self.disconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False

    def abortConnection(self):
        self.aborted = True
        self.disconnected = True

    def getPeer(self):
        class _A:
            host = "192.0.2.7"

        return _A()


def _watch(reactor, readings, window=60.0, tick=10.0):
    return pace.SlowReaders(reactor, window=window, tick=tick, probe=lambda sock: readings[sock])


def _one_watched_peer(reading: tuple[int, int]):
    """
    A fake reactor with one peer under a started L{_watch} whose probe
    first says C{reading} (octets acknowledged, octets still queued):
    (reactor, peer, readings); set C{readings[peer.socket]} for what the
    probe says next.
    """
    reactor = _Reactor()
    peer = _Peer()
    reactor.readers.append(peer)
    readings = {peer.socket: reading}
    _watch(reactor, readings).start()
    return reactor, peer, readings


def test_a_peer_taking_under_the_rate_while_octets_wait_is_cut_after_the_window():
    reactor, peer, readings = _one_watched_peer((0, 3 * MB))  # (acknowledged, still queued)
    for second in range(10, 61, 10):
        readings[peer.socket] = (second * 1000, 3 * MB)  # 1000 octets/s: under 4096
        reactor.advance(10)
        assert not peer.aborted, second  # (the window began at 10 s)
    reactor.advance(10)  # 70 s: 60 s of waiting at 1000 octets/s
    assert peer.aborted


def test_a_peer_taking_at_the_rate_or_more_is_never_cut():
    reactor, peer, readings = _one_watched_peer((0, 3 * MB))
    for second in range(10, 3601, 10):
        readings[peer.socket] = (second * 4200, 3 * MB)
        reactor.advance(10)
    assert not peer.aborted


def test_a_peer_with_nothing_waiting_is_not_judged_however_little_it_takes():
    reactor, peer, readings = _one_watched_peer((100, 0))
    reactor.advance(3600)
    assert not peer.aborted
    # Octets the transport holds (the kernel took none yet) are waiting too.
    peer._tempDataLen = 10
    for _ in range(8):
        reactor.advance(10)
    assert peer.aborted


def test_a_pause_in_the_waiting_starts_the_window_again():
    reactor, peer, readings = _one_watched_peer((0, 1000))
    reactor.pump([10] * 5)
    readings[peer.socket] = (1000, 0)  # it took everything: nothing waits
    reactor.advance(10)
    readings[peer.socket] = (1000, 1000)  # a new answer waits
    reactor.pump([10] * 5)
    assert not peer.aborted
    reactor.pump([10] * 2)
    assert peer.aborted


def test_the_protocol_says_how_it_is_cut_off():
    class Inner:
        seen = None

        def slow_reader(self, seconds, octets):
            Inner.seen = (seconds, octets)

    reactor = _Reactor()
    peer = _Peer(Inner())
    reactor.readers.append(peer)
    readings = {peer.socket: (0, 5000)}
    watch = _watch(reactor, readings, window=20, tick=5)
    watch.start()
    reactor.advance(5)  # the window starts at 0 octets acknowledged
    readings[peer.socket] = (700, 5000)
    reactor.pump([5] * 5)
    assert Inner.seen == (20, 700)  # 20 s, 700 octets
    assert peer.aborted  # (closed after, if the hook did not)


def test_each_cut_is_counted_for_its_listener():
    class Metrics:
        def __init__(self):
            self.counted = []

        def slow_transfer(self, listener):
            self.counted.append(listener)

    class Factory:
        protocol_name = "pop3s"

    class Inner:
        factory = Factory()

    reactor = _Reactor()
    peer = _Peer(Inner())
    reactor.readers.append(peer)
    metrics = Metrics()
    watch = pace.SlowReaders(reactor, window=20, tick=5, probe=lambda sock: (0, 100), metrics=metrics)
    watch.start()
    reactor.pump([5] * 6)
    assert metrics.counted == ["pop3s"]


def test_tcp_progress_counts_what_the_peer_acknowledged_not_what_was_written():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            peer.setblocking(False)
            written = 0
            try:
                while True:
                    written += peer.send(b"x" * 65536)
            except BlockingIOError:
                pass
            acked, queued = pace.tcp_progress(peer)
            assert written > 200_000 and queued > 200_000  # the kernel took it all; the peer did not
            assert acked < 20_000
            got = 0
            while got < 50_000:
                got += len(client.recv(65536))
            for _ in range(100):
                later, _queued = pace.tcp_progress(peer)
                if later - acked >= 40_000:
                    break
                time.sleep(0.01)
            assert later - acked >= 40_000


# -- end to end ---------------------------------------------------------------


def small_window_socket(rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    return s


def read_slowly(conn, octets_per_second: float, seconds: float, piece: int = 64) -> tuple[int, bool]:
    """Read C{octets_per_second} for up to C{seconds}; (octets read, whether the hub ended it)."""
    got = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            data = conn.recv(piece)
        except (ConnectionResetError, ssl.SSLError, OSError):
            return got, True
        if not data:
            return got, True
        got += len(data)
        time.sleep(len(data) / octets_per_second)
    return got, False


def data_ended(conn, most: int = 64 * MB) -> bool:
    """Does C{conn} end (reset or closed) once what it holds is read at full speed?"""
    conn.settimeout(10)
    got = 0
    while got < most:
        try:
            data = conn.recv(65536)
        except (ConnectionResetError, ssl.SSLError, OSError):
            return True
        if not data:
            return True
        got += len(data)
    return False


def ftp_login(hub, tls=False):
    if tls:
        f = ftplib.FTP_TLS(timeout=30, context=client_context())
    else:
        f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    if tls:
        f.prot_p()
    return f


def ftp_data(f, command: str, tls: bool, rcvbuf: int = 4096):
    """Open a passive data connection with a small receive buffer, then send C{command}; returns the data socket."""
    host, port = ftplib.parse227(f.sendcmd("PASV"))
    conn = small_window_socket(rcvbuf)
    conn.connect((host, port))
    f.putcmd(command)
    reply = f.getresp()
    assert reply[:3] in ("125", "150"), reply
    if tls:
        conn = f.context.wrap_socket(conn, server_hostname=f.host, session=f.sock.session)
    return conn


@pytest.mark.parametrize("mode", ["I", "A", "TLS"])  # sendfile; a producer; TLS
def test_an_ftp_download_read_a_few_octets_a_second_is_426(start_hub, mode):
    # Before: each octet the client took let the hub write one more, and
    # every write reset the data timeout: the transfer never ended.
    hub = start_hub("--slow-transfer-window", "2")
    f = ftp_login(hub, tls=mode == "TLS")
    f.storbinary("STOR big", __import__("io").BytesIO(os.urandom(8 * MB)))
    f.voidcmd("TYPE A" if mode == "A" else "TYPE I")
    conn = ftp_data(f, "RETR big", tls=mode == "TLS")
    start = time.monotonic()
    read_slowly(conn, 200, 6)
    f.sock.settimeout(10)
    # (2 s, or a little more when the look every 0.5 s comes late on a busy machine)
    assert re.fullmatch(r"426 The client read the data at under 4 KiB/s for [234] seconds; transfer aborted\.", f.getline())
    assert time.monotonic() - start < 10
    assert data_ended(conn)
    conn.close()
    assert_one_line(hub)
    assert f.pwd() == "/"  # the control connection goes on


def test_an_ftp_listing_read_a_few_octets_a_second_is_426(start_hub):
    hub = start_hub("--slow-transfer-window", "2")
    f = ftp_login(hub)
    folder = os.path.join(hub.data_dir, "ftp", "localhost", "alice")
    os.makedirs(folder, exist_ok=True)
    # Larger than the kernel's send buffer (4 MiB at most here) even for
    # NLST: a listing that fits is all in the kernel at once, and then
    # the transfer is over for the hub (226) whatever the client reads.
    name = "a-rather-long-file-name-to-make-the-listing-bigger-than-the-kernel-send-buffer-" * 2
    for i in range(32000):
        open(os.path.join(folder, f"{name}{i:05d}"), "w").close()
    for command in ("LIST", "MLSD", "NLST"):
        conn = ftp_data(f, command, tls=False)
        read_slowly(conn, 200, 4)
        f.sock.settimeout(10)
        assert f.getline().startswith("426 The client read the data at under 4 KiB/s"), command
        assert data_ended(conn)
        conn.close()


def test_an_ftp_download_read_steadily_above_the_rate_is_not_cut(start_hub):
    hub = start_hub("--slow-transfer-window", "1")
    f = ftp_login(hub)
    body = os.urandom(200 * 1024)
    f.storbinary("STOR steady", __import__("io").BytesIO(body))
    f.voidcmd("TYPE I")
    conn = ftp_data(f, "RETR steady", tls=False)
    got = b""
    start = time.monotonic()
    while True:
        data = conn.recv(8192)
        if not data:
            break
        got += data
        time.sleep(len(data) / (24 * 1024))  # 24 KiB/s: 8 s, eight windows
    assert time.monotonic() - start > 5
    assert got == body
    assert f.voidresp().startswith("226")


def assert_one_line(hub) -> None:
    """The cut-off is said once, in the hub's words (no repr, no traceback)."""
    lines = [line for line in hub.log.splitlines() if "under 4 KiB/s; closing" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in hub.log


def deliver_big(hub, octets: int = 6 * MB) -> bytes:
    import smtplib

    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    message = b"From: a@example.net\r\nTo: alice@localhost\r\nSubject: big\r\n\r\n" + line * (octets // len(line))
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"], timeout=30) as s:
        s.sendmail("a@example.net", ["alice@localhost"], message)
    return message


def line_socket(hub, listener: str) -> socket.socket:
    s = small_window_socket()
    s.connect(("127.0.0.1", hub.ports[listener]))
    return s


def ask_line(s: socket.socket, line: bytes, ends: bytes) -> bytes:
    s.sendall(line)
    got = b""
    while not got.endswith(ends):
        data = s.recv(4096)
        assert data, got
        got += data
    return got


def cut_within(conn, seconds: float) -> float:
    """Read 200 octets/s until the hub resets C{conn}; how long that took (fails after C{seconds})."""
    start = time.monotonic()
    got, ended = read_slowly(conn, 200, seconds)
    assert ended, f"still sending after {seconds} s ({got} octets read)"
    return time.monotonic() - start


def ask_for_the_big_message(s: socket.socket) -> None:
    """
    On a fresh IMAP connection C{s}: read the greeting, log in as alice,
    SELECT INBOX and send C{c FETCH 1 BODY.PEEK[]} (RFC 9051), reading
    none of its answer.
    """
    s.recv(4096)
    ask_line(s, b"a LOGIN alice secret\r\n", b"\r\n")
    reply = b""
    s.sendall(b"b SELECT INBOX\r\n")
    while b"b OK" not in reply:
        reply += s.recv(65536)
    s.sendall(b"c FETCH 1 BODY.PEEK[]\r\n")


def test_an_imap_fetch_read_a_few_octets_a_second_is_cut_off_and_the_next_session_works(start_hub):
    hub = start_hub("--slow-transfer-window", "2")
    deliver_big(hub)
    s = line_socket(hub, "imap")
    ask_for_the_big_message(s)
    # A client with a 4 KiB receive buffer: it holds at most that much;
    # what it read before the reset plus that is all it ever sees.
    read_slowly(s, 200, 6)
    assert data_ended(s)
    assert_one_line(hub)
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{hub.ports['web']}/metrics", timeout=15) as page:
        assert 'mailhub_slow_transfers_total{listener="imap"} 1.0' in page.read().decode()
    import imaplib

    m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"], timeout=30)
    m.login("alice", "secret")
    m.select("INBOX")
    typ, data = m.fetch("1", "(RFC822.SIZE)")
    assert typ == "OK" and b"RFC822.SIZE" in data[0]
    m.logout()


@pytest.mark.parametrize("command", [b"RETR 1", b"TOP 1 100000"])
def test_a_pop3_retr_or_top_read_a_few_octets_a_second_is_cut_off_and_the_message_stays(start_hub, command):
    hub = start_hub("--slow-transfer-window", "2")
    message = deliver_big(hub)
    s = line_socket(hub, "pop3")
    s.recv(4096)
    ask_line(s, b"USER alice\r\n", b"\r\n")
    ask_line(s, b"PASS secret\r\n", b"\r\n")
    s.sendall(command + b"\r\n")
    read_slowly(s, 200, 6)
    assert data_ended(s)
    assert_one_line(hub)
    # The live console's record of the session says why it ended.
    import urllib.parse

    from tests.web_helpers import WebClient

    browser = WebClient(hub)
    browser.login("alice", "secret")
    [session] = re.findall(r'data-id="(pop3#\d+)"', browser.get("/console").text)
    transcript = browser.get("/console/session/" + urllib.parse.quote(session, safe="") + "/transcript.txt").text
    assert re.search(r"S: +\[closed: the client took \d+ octets in \d+ s while the server had more for it, under 4 KiB/s\]", transcript), transcript
    import poplib

    p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=30)
    p.user("alice")
    p.pass_("secret")
    assert p.stat()[0] == 1  # nothing was deleted, and the maildrop lock is free
    p.quit()


def test_a_web_download_read_a_few_octets_a_second_is_cut_off(start_hub):
    from tests.web_helpers import WebClient

    hub = start_hub("--slow-transfer-window", "2")
    deliver_big(hub)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    s = line_socket(hub, "web")
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    s.sendall(f"GET /mail/INBOX/1/raw HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n".encode())
    read_slowly(s, 200, 6)
    assert data_ended(s)
    assert_one_line(hub)


def test_a_web_download_at_a_slow_but_honest_rate_is_whole(start_hub):
    # curl --limit-rate 16k: 300 KiB in ~19 s. curl reads what its
    # receive buffer holds (128 KiB) at once, then pauses up to 8 s to keep
    # to its rate: the window must be longer than an honest client's
    # pauses (the default, 60 s, is); 10 s here.
    import subprocess

    from tests.web_helpers import WebClient

    hub = start_hub("--slow-transfer-window", "10")
    message = deliver_big(hub, 300 * 1024)
    browser = WebClient(hub)
    browser.login("alice", "secret")
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    out = subprocess.run(
        ["curl", "-sS", "--limit-rate", "16k", "-H", f"Cookie: {cookie}", f"http://127.0.0.1:{hub.ports['web']}/mail/INBOX/1/raw"],
        capture_output=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace(b"\r\n", b"\n").count(b"0123456789abcdef") == message.count(b"0123456789abcdef")
    assert "under 4 KiB/s; closing" not in hub.log


def test_a_remote_mx_reading_the_message_a_few_octets_a_second_frees_the_queue_slot_and_keeps_the_message(start_hub):
    # A loopback smarthost that answers every command and then reads the
    # DATA at 200 octets/s with a 4 KiB receive buffer.
    import re
    import smtplib
    import threading

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (inherited by the accepted socket)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    done = threading.Event()

    def slow_mx():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            conn.sendall(b"220 slow.test ESMTP\r\n")
            buf = b""
            while b"\r\nDATA\r\n" not in b"\r\n" + buf:
                data = conn.recv(1024)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf and not buf.startswith(b"DATA\r\n"):
                    line, buf = buf.split(b"\r\n", 1)
                    conn.sendall(b"250-slow.test\r\n250 8BITMIME\r\n" if line.upper().startswith(b"EHLO") else b"250 ok\r\n")
            conn.sendall(b"354 go on\r\n")
            while not done.is_set():
                try:
                    data = conn.recv(64)
                except OSError:
                    return
                if not data:
                    return
                time.sleep(len(data) / 200)

    server = threading.Thread(target=slow_mx, daemon=True)
    server.start()
    try:
        a = start_hub("--domain", "a.test", "--hostname", "mx.a.test", "--smarthost", f"127.0.0.1:{port}", "--retry-schedule", "1h",
                      "--slow-transfer-window", "2", users=["alice@a.test:secret"])
        message = b"Subject: big\r\n\r\n" + (b"z" * 78 + b"\r\n") * 80_000  # 6.3 MB
        with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=30) as client:
            client.login("alice@a.test", "secret")
            client.sendmail("alice@a.test", ["bob@b.test"], message)
        start = time.monotonic()
        line = a.wait_for_log(r"<bob@b.test> [^\n]*took the message at under 4 KiB/s for \d+ seconds[^\n]*", timeout=30).group(0)
        assert time.monotonic() - start < 15, line
        assert re.search(r"127\.0\.0\.1:\d+ took the message at under 4 KiB/s", line)
        import glob

        assert len(glob.glob(os.path.join(a.data_dir, "queue", "*.env"))) == 1  # kept, to be tried again
    finally:
        done.set()
        server.join(10)
        listener.close()


def test_an_ftp_append_trickled_an_octet_at_a_time_is_426_and_leaves_the_file_as_it_was(start_hub):
    # STOR's trickle is tests/test_e2e_ftp.py's; APPE goes through the
    # same data connection, and what it had taken must not be appended.
    hub = start_hub("--ftp-data-timeout", "1", "--ftp-idle-timeout", "1")
    f = ftp_login(hub)
    f.voidcmd("TYPE I")
    f.storbinary("STOR log.txt", __import__("io").BytesIO(b"first line\n"))
    conn = f.transfercmd("APPE log.txt")
    trickle(conn)
    f.sock.settimeout(15)
    assert f.getline() == "426 The data arrived at under 4 KiB/s for over 1 second; transfer aborted."
    conn.close()
    with open(os.path.join(hub.data_dir, "ftp", "localhost", "alice", "log.txt"), "rb") as file:
        assert file.read() == b"first line\n"


def test_an_imaps_fetch_read_a_few_octets_a_second_is_cut_off_too(start_hub):
    # Implicit TLS (RFC 8314): the watch looks at the TCP socket under the
    # TLS layer, so the encrypted octets are what it counts.
    hub = start_hub("--slow-transfer-window", "2")
    deliver_big(hub)
    raw = line_socket(hub, "imaps")
    s = client_context().wrap_socket(raw, server_hostname="127.0.0.1")
    ask_for_the_big_message(s)
    read_slowly(s, 200, 6)
    assert data_ended(s)
    assert_one_line(hub)


def test_a_clock_without_descriptors_has_nothing_to_watch():
    # (a hub started on a test's task.Clock: the sweep must not fail)
    clock = task.Clock()
    watch = pace.SlowReaders(clock, window=20, tick=5)
    watch.start()
    clock.pump([5] * 10)
    assert watch.sweep() == []
    watch.stop()


def test_an_active_mode_ftp_download_read_a_few_octets_a_second_is_426(start_hub):
    # PORT: the hub connects to the client (a tcp.Client on its side, which
    # the watch judges because the data connection asks for it).
    hub = start_hub("--slow-transfer-window", "2")
    f = ftp_login(hub)
    f.storbinary("STOR big", __import__("io").BytesIO(os.urandom(8 * MB)))
    f.voidcmd("TYPE I")
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (the accepted socket inherits it)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        f.voidcmd(f"PORT 127,0,0,1,{port // 256},{port % 256}")
        f.putcmd("RETR big")
        assert f.getresp()[:3] in ("125", "150")
        listener.settimeout(15)
        conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        read_slowly(conn, 200, 6)
        f.sock.settimeout(10)
        assert re.fullmatch(r"426 The client read the data at under 4 KiB/s for [234] seconds; transfer aborted\.", f.getline())
        assert data_ended(conn)
    assert f.pwd() == "/"
