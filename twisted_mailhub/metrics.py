# -*- test-case-name: tests.test_metrics -*-
"""
Metrics and health for operators: C{/metrics} (Prometheus text format, made
by the C{prometheus_client} library) and C{/healthz} on the web listener.

Every hub has one L{HubMetrics} (C{hub.metrics}) with its own registry, so
two hubs in one process (tests) never share counters. Parts of the hub
count at the one place each fact is known:

 - connections accepted, refused and open per listener: the listener's
   connection-limit wrapper (L{twisted_mailhub.hub.LimitedFactory});
 - logins ok/failed per protocol: the throttled portal
   (L{twisted_mailhub.login.ClientPortal});
 - messages accepted/rejected and their octets, and the time from the end
   of DATA to the message being durable: SMTP delivery (an accepted
   message in plain integers, L{HubMetrics.message_accepted}, handed to
   the Prometheus metrics when they are read);
 - outbound delivery attempts by result: the relay queue;
 - FTP transfers and octets: the FTP data connection; SFTP's at each
   file's CLOSE;
 - octets in and out per listener: counted at each connection's socket
   (L{count_socket});
 - SMTP refusals by reason (relay denied, unknown user, quota, DMARC,
   syntax, too big): the SMTP reply, by its enhanced status code.

What is a reading of the present, not a count, is read when Prometheus
asks (a custom collector): the outbound queue's length and its oldest
message's age, the free space of the data folder, listeners bound.

C{/metrics} answers clients in C{--trusted-networks} and logged-in
teachers (C{--teacher}); everyone else gets 403. C{/healthz} answers
anyone, with no detail beyond what failed: 200 C{ok} when every listener is
bound and the data folder takes a write, else 503.
"""

from __future__ import annotations

import _socket
import os
import socket
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import resource

from twisted_mailhub.lines import SOCKET_COUNTS


class HubMetrics:
    """
    The hub's counters. Label values are listener and protocol names
    (C{smtp}, C{pop3s}, ...) and short fixed words, never client input, so
    the number of series stays bounded.
    """

    def __init__(self, hub: Any):
        self.hub = hub
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.connections = Counter("mailhub_connections_accepted", "Client connections accepted, per listener.", ["listener"], registry=registry)
        self.refused = Counter("mailhub_connections_refused", "Client connections refused for a connection limit, per listener.", ["listener"], registry=registry)
        self.open = Gauge("mailhub_connections_open", "Client connections open now, per listener.", ["listener"], registry=registry)
        self.logins = Counter("mailhub_logins", "Login attempts per protocol and result (ok, failed).", ["protocol", "result"], registry=registry)
        self.messages = Counter("mailhub_messages", "Messages after DATA, by result (accepted, rejected) and reason.", ["result", "reason"], registry=registry)
        # The series counted once per accepted message, looked up once.
        self.accepted_messages = self.messages.labels("accepted", "")
        self.message_octets = Counter("mailhub_message_octets_received", "Octets of accepted messages, as the client sent them.", registry=registry)
        self.store_latency = Histogram(
            "mailhub_delivery_durable_seconds",
            "Seconds from the end of DATA to every copy being durable (store and queue).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # Accepted messages not yet handed to the three metrics above
        # (message_accepted, fold): count, octets, the latencies' sum and
        # their count per bucket (the histogram's bounds, +Inf last).
        self._bounds = tuple(float(b) for b in _LATENCY_BUCKETS) + (float("inf"),)
        self._accepted = self._octets = 0
        self._latency_sum = 0.0
        self._latency_counts = [0] * len(self._bounds)
        # fold() adds to the histogram's sum and buckets (prometheus_client's
        # layout since 0.4); a library laid out otherwise is told each message.
        self._foldable = len(getattr(self.store_latency, "_buckets", ())) == len(self._bounds) and getattr(
            self.store_latency, "_upper_bounds", None
        ) == list(self._bounds)
        if not self._foldable:
            self.message_accepted = self._message_accepted_now  # type: ignore[method-assign]
        self.relay_attempts = Counter("mailhub_relay_attempts", "Outbound delivery attempts per recipient, by result (delivered, deferred, bounced).", ["result"], registry=registry)
        self.ftp_transfers = Counter("mailhub_ftp_transfers", "FTP data transfers completed, by direction (download, upload, listing).", ["direction"], registry=registry)
        self.ftp_octets = Counter("mailhub_ftp_octets", "Octets moved over FTP data connections, by direction.", ["direction"], registry=registry)
        self.sftp_transfers = Counter("mailhub_sftp_transfers", "SFTP files closed after a transfer, by direction (download, upload).", ["direction"], registry=registry)
        self.sftp_octets = Counter("mailhub_sftp_octets", "Octets of files read or written over SFTP, by direction.", ["direction"], registry=registry)
        self.slow_transfers = Counter(
            "mailhub_slow_transfers",
            "Transfers cut off for moving under 4 KiB/s for --slow-transfer-window (a slow reader, an SFTP file trickled), per listener (relay: a remote MX).",
            ["listener"],
            registry=registry,
        )
        self.rejections = Counter(
            "mailhub_rejections",
            "SMTP commands refused for good (5xx), by reason: relay_denied, unknown_user, quota, dmarc, syntax, too_big, policy.",
            ["listener", "reason"],
            registry=registry,
        )
        #: Octets on the wire per listener (L{count_socket}), read when scraped.
        self.bytes: dict[str, ByteCounts] = {}
        registry.register(_Readings(hub))

    _FTP_DIRECTION = {"RETR": "download", "STOR": "upload", "APPE": "upload", "STOU": "upload"}

    def ftp_transfer(self, verb: str, octets: int) -> None:
        """One FTP transfer done: C{verb} (RETR, STOR, LIST...) moved C{octets}."""
        direction = self._FTP_DIRECTION.get(verb.upper(), "listing")
        self.ftp_transfers.labels(direction).inc()
        self.ftp_octets.labels(direction).inc(max(0, int(octets)))

    def sftp_transfer(self, direction: str, octets: int) -> None:
        """One SFTP file closed: C{direction} is download or upload."""
        self.sftp_transfers.labels(direction).inc()
        self.sftp_octets.labels(direction).inc(max(0, int(octets)))

    def slow_transfer(self, listener: str) -> None:
        """A transfer cut off for moving under 4 KiB/s (twisted_mailhub/pace.py, an SFTP file)."""
        self.slow_transfers.labels(listener).inc()

    def smtp_refused(self, listener: str, code: int, text: str) -> None:
        """An SMTP 5xx reply: counted by its reason when it has one of ours."""
        reason = rejection_reason(code, text)
        if reason is not None:
            self.rejections.labels(listener, reason).inc()

    def listener_bytes(self, name: str) -> "ByteCounts":
        """The octet counts of listener C{name} (made on first use)."""
        counts = self.bytes.get(name)
        if counts is None:
            counts = self.bytes[name] = ByteCounts()
        return counts

    def message_accepted(self, octets: int, seconds: float) -> None:
        """
        One message accepted after DATA: C{octets} as the client sent them,
        C{seconds} from the end of DATA to every copy durable. Counted in
        plain integers, once per message (a Prometheus counter takes a lock
        per increment and a histogram walks its buckets in Python: 3-4
        microseconds a message); L{fold} hands them to
        C{mailhub_messages_total{result="accepted"}},
        C{mailhub_message_octets_received_total} and
        C{mailhub_delivery_durable_seconds} whenever those are read.
        """
        self._accepted += 1
        self._octets += octets
        self._latency_sum += seconds
        # The first bucket whose bound is >= seconds: Histogram.observe's.
        self._latency_counts[bisect_left(self._bounds, seconds)] += 1

    def fold(self) -> None:
        """Hand the accepted messages counted since the last fold to their Prometheus metrics."""
        accepted = self._accepted
        if not accepted:
            return
        octets, total, counts = self._octets, self._latency_sum, self._latency_counts
        self._accepted = self._octets = 0
        self._latency_sum = 0.0
        self._latency_counts = [0] * len(self._bounds)
        self.accepted_messages.inc(accepted)
        self.message_octets.inc(octets)
        histogram = self.store_latency
        # Its sum and each bucket's count, as that many observe() calls would have left them.
        histogram._sum.inc(total)
        for bucket, n in zip(histogram._buckets, counts):
            if n:
                bucket.inc(n)

    def _message_accepted_now(self, octets: int, seconds: float) -> None:
        """L{message_accepted} straight to the Prometheus metrics."""
        self.accepted_messages.inc()
        self.message_octets.inc(octets)
        self.store_latency.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        self.fold()
        return generate_latest(self.registry)

    def timed_delivery(self, d: Any, started: float) -> Any:
        """Observe C{d}'s time to success from C{started} (C{time.monotonic()})."""

        def done(result):
            self.store_latency.observe(time.monotonic() - started)
            return result

        return d.addCallback(done)


# Upper bounds of mailhub_delivery_durable_seconds' buckets (seconds).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Enhanced status codes (RFC 3463) of a refusal, and the reason they mean.
_REASONS = {
    "5.1.1": "unknown_user",
    "5.2.2": "quota",
    "5.2.3": "quota",
    "5.3.4": "too_big",
    "5.5.2": "syntax",
    "5.5.4": "syntax",
    "5.1.3": "syntax",
    "5.1.7": "syntax",
    "5.6.7": "syntax",
}


def rejection_reason(code: int, text: str) -> str | None:
    """
    Why an SMTP reply refused, as a metrics label, from its enhanced status
    code (and for C{5.7.1}, its words); L{None} for a reply that is not a
    refusal of ours (a 5xx for a wrong sequence, a failed AUTH...).
    """
    if not 500 <= code < 600:
        return None
    status = text.split(" ", 1)[0]
    if status == "5.7.1":
        if "Relay" in text:
            return "relay_denied"
        if "DMARC" in text:
            return "dmarc"
        return "policy"
    return _REASONS.get(status)


class ByteCounts:
    """Octets received from and sent to the clients of one listener."""

    __slots__ = ("received", "sent", "_socket_class")

    def __init__(self):
        self.received = 0
        self.sent = 0
        self._socket_class: Any = None

    def socket_class(self) -> type:
        """
        The class a connection's socket takes to be counted here
        (L{count_socket}): made once per listener.
        """
        if self._socket_class is None:
            self._socket_class = _counting_socket_class(self)
        return self._socket_class


def _counting_socket_class(counts: ByteCounts) -> type:
    """
    A subclass of C{socket.socket} whose C{send} and C{recv} count into
    C{counts}: a connection's socket becomes one (its C{__class__} is
    set), so counting holds nothing per connection and every other
    attribute is the socket's own, looked up as usual.
    """
    send_raw, recv_raw = _socket.socket.send, _socket.socket.recv

    class CountingSocket(socket.socket):
        __slots__ = ()

        def send(self, data, *flags):
            sent = send_raw(self, data, *flags)
            counts.sent += sent
            return sent

        def recv(self, size, *flags):
            data = recv_raw(self, size, *flags)
            counts.received += len(data)
            return data

    # The line engine's inline replies and the epoll dispatch's reads
    # count there themselves (lines.SOCKET_COUNTS).
    SOCKET_COUNTS[CountingSocket] = counts
    return CountingSocket


class _CountingSocket:
    """
    A connection's socket that counts what C{send} and C{recv} move, for
    a socket that is not a plain C{socket.socket} (which takes the class
    of L{ByteCounts.socket_class} instead). Everything else is the
    socket's own.

    C{send} and C{recv} are closures over the socket's own methods and the
    counts, kept in slots: a call looks nothing up through C{__getattr__}
    (which every attribute of a class that has one goes through).
    """

    __slots__ = ("_socket", "send", "recv")

    def __init__(self, sock: Any, counts: "ByteCounts"):
        self._socket = sock
        send_raw, recv_raw = sock.send, sock.recv

        def send(data, *flags):
            sent = send_raw(data, *flags)
            counts.sent += sent
            return sent

        def recv(size, *flags):
            data = recv_raw(size, *flags)
            counts.received += len(data)
            return data

        self.send = send
        self.recv = recv

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


def count_socket(transport: Any, counts: ByteCounts) -> None:
    """
    Count the octets of an accepted connection (C{transport}, before its
    protocol sees it; a hook of L{twisted_mailhub.hub.ListenerFactory})
    into C{counts}, at its socket: plain integers read when Prometheus
    scrapes, one addition per system call. Every octet on the wire passes
    there once, whoever writes (Twisted's transport, or a reply sent at
    once by L{twisted_mailhub.lines.send_now}), TLS or not. A plain
    C{socket.socket} changes class (L{ByteCounts.socket_class}: nothing
    allocated per connection); another socket is wrapped
    (L{_CountingSocket}); a transport without a socket (a test's) is not
    counted.
    """
    sock = getattr(transport, "socket", None)
    if sock.__class__ is socket.socket:
        sock.__class__ = counts.socket_class()
    elif sock is not None and hasattr(sock, "send") and hasattr(sock, "recv"):
        transport.socket = _CountingSocket(sock, counts)


class _Readings:
    """Values read when scraped: queue, disk, listeners."""

    def __init__(self, hub: Any):
        self.hub = hub

    def describe(self):
        return []

    def collect(self):
        hub = self.hub
        relay = getattr(hub, "relay", None)
        length = GaugeMetricFamily("mailhub_queue_messages", "Messages in the outbound queue (--queue postgresql: every hub's, from the table).")
        oldest = GaugeMetricFamily("mailhub_queue_oldest_seconds", "Age of the oldest message in the outbound queue (0 when empty; --queue postgresql: of every hub's).")
        summary = getattr(relay, "queue_summary", None)
        if summary is not None:
            # A queue several hubs share (queue/pgqueue.py): the table, not
            # what this hub holds; no sample while the database is away.
            found = summary()
            if found is not None:
                count, first = found
                length.add_metric([], count)
                oldest.add_metric([], max(0.0, time.time() - first) if first else 0.0)
        else:
            entries = list(getattr(relay, "entries", {}).values()) if relay is not None else []
            length.add_metric([], len(entries))
            created = [getattr(e, "created", None) for e in entries]
            created = [c for c in created if c]
            oldest.add_metric([], max(0.0, time.time() - min(created)) if created else 0.0)
        yield length
        yield oldest
        free = GaugeMetricFamily("mailhub_data_free_bytes", "Bytes free for the hub in the file system of its data folder.")
        try:
            st = os.statvfs(hub.data_dir)
            free.add_metric([], st.f_bavail * st.f_frsize)
        except OSError:
            free.add_metric([], 0)
        yield free
        octets = CounterMetricFamily("mailhub_listener_octets", "Octets on the wire per listener and direction (received, sent), at the socket: TLS octets encrypted.", labels=["listener", "direction"])
        for name, counts in sorted(getattr(hub.metrics, "bytes", {}).items()):
            octets.add_metric([name, "received"], counts.received)
            octets.add_metric([name, "sent"], counts.sent)
        yield octets
        bound = GaugeMetricFamily("mailhub_listener_up", "1 when the listener is bound, per listener.", labels=["listener"])
        for name, *_ in hub._listeners:
            bound.add_metric([name], 1 if name in hub.listening else 0)
        yield bound


def health(hub: Any) -> Any:
    """
    A Deferred of (healthy, problems): every listener bound and the data
    folder takes a write (a file made, fsynced and removed, in a worker
    thread: an fsync in the reactor stalls every session of the process,
    and a load balancer asks every few seconds).
    """
    from twisted.internet import threads

    problems = [f"{name} is not listening" for name, *_ in hub._listeners if name not in hub.listening]

    def probed(problem: str | None) -> tuple[bool, list[str]]:
        if problem is not None:
            problems.append(problem)
        return not problems, problems

    reactor = getattr(hub, "reactor", None)
    if reactor is None or not hasattr(reactor, "getThreadPool"):
        from twisted.internet import reactor  # type: ignore[no-redef]
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _probe_write, hub.data_dir).addCallback(probed)


def _probe_write(data_dir: str) -> str | None:
    """(in a worker thread) None when C{data_dir} takes a write, else what failed."""
    probe = os.path.join(data_dir, f".healthz-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return f"the data folder takes no write ({e.strerror or e})"
    return None


# -- --workers: one page for every worker's counters ---------------------------
#
# Under --workers the web face is worker 0's, but every worker counts its
# own connections, logins and messages. On a scrape worker 0 asks the
# supervisor, which asks every worker for its exposition
# (L{twisted_mailhub.workers.WorkersService.merged_metrics}) and adds them
# up here: a sample is the sum of the workers' samples with the same name
# and labels, except readings that are one fact seen by every worker
# (L{_SAME_FOR_ALL}) and creation times (the earliest). The counters of a
# worker that ended stay in the sums as it last told them, so a restart
# never makes a counter go back.

# Readings every worker makes of one thing: the largest (or for
# "listener up", the smallest: down in any worker is down) is the truth.
# The queue's length too: on disk one worker holds the queue (the others
# count 0); on PostgreSQL every worker counts the whole table.
_SAME_FOR_ALL = {"mailhub_data_free_bytes": max, "mailhub_queue_oldest_seconds": max, "mailhub_queue_messages": max, "mailhub_listener_up": min}

Exposition = "dict[str, tuple[str, str, dict[tuple, float]]]"


def parse_exposition(text: str) -> dict:
    """
    A text exposition as {family: (type, help, {(sample name, labels):
    value})}, labels as a sorted tuple of pairs.
    """
    from prometheus_client.parser import text_string_to_metric_families

    parsed: dict = {}
    for family in text_string_to_metric_families(text):
        samples = parsed.setdefault(family.name, (family.type, family.documentation, {}))[2]
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def _combine(family: str) -> Any:
    if family.endswith("_created"):
        return min
    return _SAME_FOR_ALL.get(family, lambda a, b: a + b)


def merge_expositions(parts: list) -> dict:
    """The workers' parsed expositions (L{parse_exposition}) as one."""
    merged: dict = {}
    for part in parts:
        for name, (kind, doc, samples) in part.items():
            into = merged.setdefault(name, (kind, doc, {}))[2]
            combine = _combine(name)
            for key, value in samples.items():
                into[key] = combine(into[key], value) if key in into else value
    return merged


def counters_only(parsed: dict) -> dict:
    """What of a worker's exposition stays counted after it ended."""
    return {name: family for name, family in parsed.items() if family[0] in ("counter", "histogram", "summary")}


def format_exposition(merged: dict, workers: int | None = None) -> bytes:
    """A merged exposition in the Prometheus text format (version 0.0.4)."""
    from prometheus_client.core import Metric

    class _Merged:
        def collect(self):
            for name, (kind, doc, samples) in sorted(merged.items()):
                metric = Metric(name, doc, kind)
                for (sample, labels), value in samples.items():
                    metric.add_sample(sample, dict(labels), value)
                yield metric
            if workers is not None:
                answering = GaugeMetricFamily("mailhub_workers_counted", "Worker processes (--workers) whose counters this page adds up.")
                answering.add_metric([], workers)
                yield answering

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class MetricsPage(resource.Resource):
    """C{GET /metrics}: trusted networks and teachers only."""

    isLeaf = True

    def __init__(self, hub: Any):
        resource.Resource.__init__(self)
        self.hub = hub

    def allowed(self, request) -> bool:
        host = getattr(request.getClientAddress(), "host", "")
        if host in self.hub.trusted:
            return True
        face = getattr(self.hub, "web", None)  # the web component's sessions
        user = face.user(request) if face is not None else None
        return bool(getattr(user, "is_teacher", False))

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        if not self.allowed(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"403 Forbidden: /metrics is for --trusted-networks and teachers\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        worker = getattr(self.hub, "worker", None)
        if worker is None:
            return self.hub.metrics.exposition()
        # --workers: every worker's counters, added up by the supervisor.
        from twisted.web.server import NOT_DONE_YET

        def answer(text):
            if request.finished or getattr(request, "_disconnected", False):
                return
            request.write(text.encode("utf-8") if isinstance(text, str) else self.hub.metrics.exposition())
            request.finish()

        worker.ask_supervisor("metrics").addCallback(answer)
        return NOT_DONE_YET


class HealthPage(resource.Resource):
    """C{GET /healthz}: 200 C{ok}, or 503 with what failed."""

    isLeaf = True

    def __init__(self, hub: Any):
        resource.Resource.__init__(self)
        self.hub = hub

    def render_GET(self, request):
        from twisted.web.server import NOT_DONE_YET

        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")

        def answer(result: tuple[bool, list[str]]) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                return
            ok, problems = result
            if not ok:
                request.setResponseCode(503)
            request.write(b"ok\n" if ok else ("".join(p + "\n" for p in problems)).encode("utf-8"))
            request.finish()

        health(self.hub).addErrback(lambda f: (False, [f"the health check failed ({type(f.value).__name__})"])).addCallback(answer)
        return NOT_DONE_YET
