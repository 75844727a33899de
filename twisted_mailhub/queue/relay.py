# -*- test-case-name: tests.test_queue -*-
"""
The relay: takes messages for other domains into the durable queue and
delivers them, retrying on temporary failures and bouncing on permanent
ones. This is L{Hub.relay<twisted_mailhub.hub.Hub>} once the queue
component is installed; the SMTP server calls L{Relay.enqueue}.

Theory of operation:

 - L{Relay.enqueue} stores the message (L{QueueStorage.add}: on disk
   before the Deferred fires, so the SMTP server answers 250 only then)
   and wakes the scheduler.
 - One timer: it fires when the earliest message is due. A run takes
   every due message that is not already being sent, groups its pending
   recipients by domain, routes each domain (L{Router}), and merges the
   domains that route to the same hosts into one destination: one
   connection per destination carries every message for it.
 - Each recipient's outcome is recorded as soon as its message's attempt
   ends: 2xx -> delivered; 5xx -> failed; 4xx, no connection, DNS trouble
   -> still pending, next attempt after the L{RetrySchedule} step, never
   later than the message's lifetime. The envelope is saved (durably)
   before anything else happens, so no recipient is sent a message twice.
 - At the end of its lifetime a message's pending recipients fail with
   C{4.4.7}. The recipients that failed in an attempt are reported to the
   sender at once in one DSN (RFC 3464), the others later in their own
   (L{Relay._bounce_failed_now}, L{Recipient.bounced}) — delivered straight into the
   sender's INBOX when the sender is local, queued otherwise, and never
   sent for the null sender C{<>} (no bounce loops, RFC 5321 §4.5.5).
   After C{--delay-warning} a still-pending message earns one DSN with
   C{Action: delayed}.
 - Every attempt is logged in one line: queue id, destination, the host
   chosen, and each recipient's reply.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from twisted_mailhub.errorwords import error_words
from twisted_mailhub.queue.client import DONE, Job, Outcome, RelayClient, RelayClientFactory
from twisted_mailhub.queue.dsn import build_dsn
from twisted_mailhub.queue.mx import Hop, RouteError, Router
from twisted_mailhub.queue.schedule import RetrySchedule, format_duration
from twisted_mailhub.queue.storage import DELIVERED, FAILED, QueuedMessage, QueueStorage, make_entry

log = Logger(namespace="mailhub.relay")

MAX_RECIPIENTS = 100


class Relay(service.Service):
    """
    The outbound queue and its scheduler; see the module docstring.

    @ivar deliver_local: C{(address, message) -> Deferred}, how DSNs reach a
        local sender (the hub's store).
    @ivar is_local: C{address -> bool}, is an address one of ours.
    """

    name = "relay"

    def __init__(
        self,
        reactor: Any,
        storage: QueueStorage,
        router: Router,
        hostname: str,
        deliver_local: Callable[[str, bytes], Any],
        is_local: Callable[[str], bool],
        schedule: RetrySchedule | None = None,
        lifetime: float = 5 * 86400,
        delay_warning: float = 4 * 3600,
        auth: tuple[bytes, bytes] | None = None,
        require_tls: bool = False,
        tls_context: Any = None,
        transcript: bool = False,
        connect_timeout: float = 30,
        stop_grace: float = 10,
        max_connections: int = 20,
    ):
        self.reactor = reactor
        self.storage = storage
        self.router = router
        self.hostname = hostname
        self.deliver_local = deliver_local
        self.is_local = is_local
        self.schedule = schedule or RetrySchedule([300, 1800])
        self.lifetime = lifetime
        self.delay_warning = delay_warning
        self.auth = auth
        self.require_tls = require_tls
        self.tls_context = tls_context
        self.transcript = transcript
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        # At most this many outbound connections at once; the destinations
        # beyond it wait their turn (a big queue must not exhaust fds).
        self.connections = defer.DeferredSemaphore(max(1, max_connections))
        self.entries: dict[str, QueuedMessage] = {}
        self._tls_broken: dict[tuple[str, int], float] = {}
        self.in_flight: set[str] = set()
        self._doomed: set[str] = set()
        self._timer: Any = None
        self._running: set[defer.Deferred] = set()
        self._rescheduling = False
        self.owns_queue = True  # False when another process holds the queue's lock
        self.metrics: Any = None  # the hub's HubMetrics, set by the component

    def now(self) -> float:
        return self.reactor.seconds()

    # -- the service -------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        if not self.owns_queue:
            # Another hub runs on this queue: sending its messages too would
            # deliver them twice. Accept nothing from the files, send nothing.
            # (Under --workers the worker holding the lock is handed what
            # the others queue: twisted_mailhub.workers.)
            if not getattr(self, "worker_mode", False):
                log.critical("queue: not delivering; another process holds {dir}/lock", dir=self.storage.directory)
            return
        for entry in self.storage.load():
            self.entries[entry.id] = entry
        if self.entries:
            log.info("queue: {n} message(s) waiting from before", n=len(self.entries))
        for entry in list(self.entries.values()):
            if entry.finished:
                # A crash after the last outcome was saved: finish the job.
                self.in_flight.add(entry.id)
                self._track(defer.ensureDeferred(self._finish(entry)))
        self._reschedule()

    def stopService(self):
        """
        Stop starting attempts, and give the ones under way up to
        C{stop_grace} seconds to finish and save their outcomes: a
        recipient whose 250 came in just before shutdown must not be sent
        the message again after the restart.
        """
        service.Service.stopService(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._running:
            return None
        log.info("queue: waiting up to {grace}s for {n} delivery run(s) to finish", grace=self.stop_grace, n=len(self._running))
        stopped = defer.Deferred()

        def done(_=None):
            if not stopped.called:
                stopped.callback(None)

        giving_up = self.reactor.callLater(self.stop_grace, done)
        defer.DeferredList(list(self._running)).addBoth(done)
        stopped.addBoth(lambda _: giving_up.cancel() if giving_up.active() else None)
        return stopped

    # -- what the SMTP server and the admin command call --------------------

    @defer.inlineCallbacks
    def enqueue(self, sender: str, recipients: list[str], message: bytes, ret: str = "", envid: str = "", notify: dict | None = None, delivered=()):
        """
        Queue C{message} from C{sender} (C{""} for C{<>}) to C{recipients}.
        The Deferred fires with the queue id once it is durable. C{ret},
        C{envid} and C{notify} (recipient -> (NOTIFY, ORCPT)) are the DSN
        parameters of its MAIL and RCPTs (RFC 3461 §4), kept with it.
        C{delivered}: L{Recipient}s of the same message already stored in
        maildrops here whose success DSN is owed (C{owed="delivered"}):
        saved in the same envelope, so the report exists if and only if
        the relayed copy does, and made at the message's first attempt.
        """
        sender = _bare(sender)
        entry = make_entry(sender, [_bare(r) for r in recipients], len(message), self.now(), ret, envid, notify, delivered)
        yield self.storage.add(entry, message)
        self.entries[entry.id] = entry
        log.info("queue: {qid} queued from <{sender}> to {rcpts} ({size} octets)", qid=entry.id, sender=sender, rcpts=", ".join(f"<{r}>" for r in recipients), size=len(message))
        self._reschedule()
        return entry.id

    def flush(self) -> int:
        """
        Make every queued message due now. Returns how many there are.
        """
        for entry in self.entries.values():
            entry.next_attempt = min(entry.next_attempt, self.now())
        self._reschedule()
        return len(self.entries)

    def remove(self, qid: str) -> bool:
        """
        Delete a queued message without a bounce. One being sent right now
        is deleted as soon as that attempt ends.
        """
        if qid not in self.entries:
            return False
        if qid in self.in_flight:
            self._doomed.add(qid)
        else:
            self._drop(qid)
        log.info("queue: {qid} removed by the administrator", qid=qid)
        return True

    def _drop(self, qid: str) -> None:
        self.storage.remove(qid)
        self.entries.pop(qid, None)
        self._doomed.discard(qid)

    # -- the scheduler -----------------------------------------------------

    def _reschedule(self) -> None:
        """
        Set the timer for the earliest due message, once per reactor turn
        (a run settles many messages; one scan of the queue is enough).
        """
        if self.running and not self._rescheduling:
            self._rescheduling = True
            self.reactor.callLater(0, self._set_timer)

    def _set_timer(self) -> None:
        self._rescheduling = False
        if not self.running or not self.owns_queue:
            return
        waiting = [e.next_attempt for e in self.entries.values() if e.id not in self.in_flight]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if waiting:
            delay = max(0.0, min(waiting) - self.now())
            self._timer = self.reactor.callLater(delay, self._run)

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        self._running.add(d)

        def done(result):
            self._running.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("queue: run failed", f))
        return d

    def _run(self) -> defer.Deferred:
        self._timer = None
        now = self.now()
        due = [e for e in self.entries.values() if e.id not in self.in_flight and e.next_attempt <= now]
        for entry in due:
            self.in_flight.add(entry.id)
        d = self._track(defer.ensureDeferred(self._attempt(due)))
        self._reschedule()
        return d

    async def _attempt(self, due: list[QueuedMessage]) -> None:
        if not due:
            return
        messages: dict[str, bytes] = {}
        by_domain: dict[str, list[tuple[QueuedMessage, list[str]]]] = {}
        settles = []
        local_jobs = []
        for entry in due:
            try:
                messages[entry.id] = self.storage.read_message(entry.id)
            except OSError as e:
                log.error("queue: {qid} cannot read its message: {error}", qid=entry.id, error=error_words(e))
                entry.next_attempt = self.now() + self.schedule.delay(max(entry.attempts, 1))
                self.in_flight.discard(entry.id)
                continue
            if any(r.owed for r in entry.recipients):
                # Owed from before this attempt (the SMTP session's local
                # copies, a restart): made now, not after the attempt, which
                # may wait out a slow next hop. Saved with the outcome; a
                # crash before that makes the report again (a rare
                # duplicate, never a loss).
                await self._report_owed(entry, save=False)
            for r in entry.pending:
                if self.is_local(r.address):
                    local_jobs.append((entry, r.address))
                else:
                    by_domain.setdefault(r.domain, []).append((entry, [r.address]))
        # Route every domain, then merge domains that share their hosts.
        domains = list(by_domain)
        routes = await defer.DeferredList([defer.ensureDeferred(self._route(d)) for d in domains])
        destinations: dict[tuple, list[tuple[QueuedMessage, list[str], str]]] = {}
        outcomes: dict[str, dict[str, Outcome]] = {e.id: {} for e in due}
        for domain, (_, route) in zip(domains, routes):
            if isinstance(route, RouteError):
                for entry, rcpts in by_domain[domain]:
                    outcome = Outcome(route.code, route.reply)
                    for r in rcpts:
                        outcomes[entry.id][r] = outcome
                    log.info("relay {qid} <{sender}> to {domain}: no route: {reply}", qid=entry.id, sender=entry.sender, domain=domain, reply=str(outcome))
                continue
            key = tuple(route)
            for entry, rcpts in by_domain[domain]:
                destinations.setdefault(key, []).append((entry, rcpts, domain))
        sends = []
        for hops, items in destinations.items():
            jobs: dict[str, Job] = {}
            labels: dict[str, set[str]] = {}
            for entry, rcpts, domain in items:
                job = jobs.get(entry.id)
                if job is None:
                    job = jobs[entry.id] = Job(entry.id, entry.sender, [], messages[entry.id], ret=entry.ret, envid=entry.envid, dsn=_dsn_params(entry))
                job.recipients.extend(rcpts)
                labels.setdefault(entry.id, set()).add(domain)
            # RFC 5321 §4.5.3.1.8: a server need take only 100 recipients
            # per transaction, so more go as several transactions.
            transactions = [
                Job(job.id, job.sender, job.recipients[i : i + MAX_RECIPIENTS], job.message, ret=job.ret, envid=job.envid, dsn=job.dsn)
                for job in jobs.values()
                for i in range(0, len(job.recipients), MAX_RECIPIENTS)
            ]
            sends.append(self.connections.run(lambda h=list(hops), j=transactions, lb=labels: defer.ensureDeferred(self._send(h, j, lb))))
        for entry, address in local_jobs:
            sends.append(defer.ensureDeferred(self._deliver_here(entry, address, messages[entry.id], outcomes)))
        for result in await defer.DeferredList(sends):
            ok, jobs = result
            if ok and jobs:
                for job in jobs:
                    outcomes[job.id].update(job.outcomes)
        for entry in due:
            if entry.id in messages:
                settles.append(defer.ensureDeferred(self._settle(entry, outcomes[entry.id])))
        await defer.DeferredList(settles)

    async def _route(self, domain: str):
        try:
            return await self.router.route(domain)
        except RouteError as e:
            return e
        except Exception as e:  # noqa: BLE001 - a resolver bug must not stop the queue
            return RouteError(451, "4.4.3", f"routing {domain} failed: {e}")

    async def _deliver_here(self, entry: QueuedMessage, address: str, message: bytes, outcomes) -> None:
        try:
            await self.deliver_local(address, message)
        except Exception as e:  # noqa: BLE001
            # (the text goes into a delay warning or a bounce: words, no file of this server)
            outcomes[entry.id][address] = Outcome(451, f"4.3.0 local delivery failed: {error_words(e, paths=False)}", self.hostname)
        else:
            outcomes[entry.id][address] = Outcome(250, "2.0.0 delivered locally", self.hostname, local=True)

    def _connect(self, hop: Hop, factory: RelayClientFactory) -> defer.Deferred:
        endpoint = endpoints.HostnameEndpoint(self.reactor, hop.address, hop.port, timeout=self.connect_timeout)
        return endpoint.connect(factory)

    def _may_fall_back(self) -> bool:
        return not self.require_tls and self.auth is None

    def _tls_is_broken(self, hop: Hop) -> bool:
        failed = self._tls_broken.get((hop.address, hop.port))
        return failed is not None and self.now() - failed < 86400 and self._may_fall_back()

    def _make_client(self, jobs: list[Job], hop: Hop, plain: bool = False) -> RelayClient:
        username, secret = self.auth if self.auth else (None, None)
        return RelayClient(
            jobs,
            str(hop),
            self.hostname,
            secret=secret,
            username=username,
            context=None if plain else self.tls_context,
            require_tls=self.require_tls,
            transcript=self.transcript,
            reactor=self.reactor,
        )

    async def _send(self, hops: list[Hop], jobs: list[Job], labels: dict[str, set[str]]) -> list[Job]:
        """
        Try the hosts in order until every job had its turn on one of them.
        """
        remaining = jobs
        last: Outcome | None = None
        # The host whose session gave `last` (None: it was a connection
        # that failed): a session that failed at STARTTLS or AUTH is logged
        # "via" that host, not "(no connection)".
        last_hop: Hop | None = None
        tries = [(hop, self._tls_is_broken(hop)) for hop in hops]
        while tries and remaining:
            hop, plain = tries.pop(0)
            factory = RelayClientFactory(lambda: self._make_client(remaining, hop, plain))
            try:
                await self._connect(hop, factory)
            except Exception as e:  # noqa: BLE001 - refused, timeout, unreachable
                last, last_hop = Outcome(-1, f"cannot connect to {hop}: {_reason(e)}", str(hop)), None
                log.info("relay to {hop}: {reply}", hop=hop, reply=last.reply)
                continue
            client = factory.client
            await client.done
            for job in remaining:
                if job.phase == DONE:
                    self._log_attempt(job, labels, hop)
            if client.error is not None:
                last, last_hop = client.error, hop
            remaining = [j for j in remaining if j.phase != DONE]
            if client.tls_state == "handshake" and not plain and self._may_fall_back():
                # Opportunistic TLS (RFC 7435 §3): a server whose STARTTLS
                # we cannot complete still gets the mail, in plain text, at
                # once and for a day, rather than never. Never with
                # --relay-require-tls, and never with smarthost credentials
                # (breaking the handshake must not reveal the password).
                self._tls_broken[(hop.address, hop.port)] = self.now()
                log.info("relay to {hop}: {reply}; trying again without TLS", hop=hop, reply=client.error.reply)
                tries.insert(0, (hop, True))
        for job in remaining:
            failure = last or Outcome(-1, "no host to try")
            job.outcomes = {r: failure for r in job.recipients}
            job.phase = DONE
            self._log_attempt(job, labels, last_hop)
        return jobs

    def _log_attempt(self, job: Job, labels: dict[str, set[str]], hop: Hop | None) -> None:
        replies = "; ".join(f"<{r}> {job.outcomes[r]}" for r in job.recipients if r in job.outcomes)
        log.info(
            "relay {qid} <{sender}> to {domain} via {mx}: {replies}",
            qid=job.id,
            sender=job.sender,
            domain=",".join(sorted(labels.get(job.id, ()))),
            mx=str(hop) if hop else "(no connection)",
            replies=replies,
        )

    # -- outcomes ----------------------------------------------------------

    async def _settle(self, entry: QueuedMessage, outcomes: dict[str, Outcome]) -> None:
        try:
            if entry.id in self._doomed:
                self._drop(entry.id)
                return
            now = self.now()
            # Success DSNs owed (RFC 3461 §6.2) are marked on the recipients
            # (Recipient.owed) and saved with the outcome, then made.
            for r in entry.pending:
                outcome = outcomes.get(r.address)
                if outcome is None:
                    continue
                r.attempts += 1
                r.code, r.reply, r.remote = outcome.code, outcome.reply, outcome.remote
                if outcome.delivered:
                    r.state = DELIVERED
                    if r.wants("SUCCESS") and entry.sender and not outcome.hop_dsn:
                        r.owed = "delivered" if outcome.local else "relayed"
                elif outcome.permanent:
                    r.state = FAILED
                if self.metrics is not None:
                    result = "delivered" if outcome.delivered else "bounced" if outcome.permanent else "deferred"
                    self.metrics.relay_attempts.labels(result).inc()
            entry.attempts += 1
            deadline = entry.created + self.lifetime
            if entry.pending and now >= deadline:
                for r in entry.pending:
                    # (the last try's code, reply and server stay: the bounce names them)
                    r.state = FAILED
                    r.expired = True
                log.info("queue: {qid} expired after {lifetime}", qid=entry.id, lifetime=format_duration(self.lifetime))
            if not entry.finished:
                entry.next_attempt = min(now + self.schedule.delay(entry.attempts), max(deadline, now))
                if not entry.warned and self.delay_warning and now - entry.created >= self.delay_warning:
                    await self._warn(entry, now, deadline)
            await self.storage.save(entry)
            reported = await self._report_owed(entry)
            if entry.finished and not reported:
                # Kept until the report the sender asked for is stored.
                entry.next_attempt = now + self.schedule.delay(entry.attempts)
                await self.storage.save(entry)
            elif entry.finished:
                await self._finish(entry)
            elif entry.id in self._doomed:
                self._drop(entry.id)
            else:
                await self._bounce_failed_now(entry)
        finally:
            self.in_flight.discard(entry.id)
            self._reschedule()

    async def _report_owed(self, entry: QueuedMessage, save: bool = True) -> bool:
        """
        Make the success DSNs (RFC 3461 §6.2) owed for C{entry}'s
        recipients (L{Recipient.owed}, saved with their outcome):
        C{"delivered"} into a maildrop here, or C{"relayed"} to a next hop
        that does not offer DSN (one that does was given NOTIFY and reports
        itself, §5.2). Each report stored is unmarked and the envelope
        saved; one that cannot be stored stays owed and is tried again
        with the next attempt or at the end (L{_finish}), and after a
        restart. Returns whether none is owed any more. Without C{save},
        the envelope is left to the caller's next save (the PostgreSQL
        queue lets a message's lease go when its envelope is saved).
        """
        owed: dict[str, list] = {}
        for r in entry.recipients:
            if r.owed:
                owed.setdefault(r.owed, []).append(r)
        for action, recipients in owed.items():
            try:
                notice = build_dsn(entry, recipients, self.storage.read_message(entry.id), self.hostname, self.now(), action=action)
                await self._notify(entry.sender, notice)
            except Exception as e:  # noqa: BLE001 - kept owed: tried again
                log.error("queue: {qid} success DSN to <{sender}> not stored ({error}); trying again later", qid=entry.id, sender=entry.sender, error=error_words(e))
                continue
            for r in recipients:
                r.owed = ""
            if save:
                await self.storage.save(entry)
            log.info("queue: {qid} {action}, success DSN sent to <{sender}> for {rcpts}", qid=entry.id, action=action, sender=entry.sender, rcpts=", ".join(f"<{r.address}>" for r in recipients))
        return not any(r.owed for r in entry.recipients)

    async def _warn(self, entry: QueuedMessage, now: float, deadline: float) -> None:
        entry.warned = True
        if not entry.sender:
            return
        # RFC 3461 §4.1: only those whose NOTIFY asks for DELAY (or has none).
        delayed = [r for r in entry.pending if r.wants("DELAY")]
        if not delayed:
            log.info("queue: {qid} delayed; no warning: NOTIFY does not ask for delays (RFC 3461 4.1)", qid=entry.id)
            return
        try:
            original = self.storage.read_message(entry.id)
            notice = build_dsn(entry, delayed, original, self.hostname, now, action="delayed", retry_until=deadline)
            await self._notify(entry.sender, notice)
            log.info("queue: {qid} delayed, warning sent to <{sender}>", qid=entry.id, sender=entry.sender)
        except Exception as e:  # noqa: BLE001 - a lost warning is not worth a retry
            log.error("queue: {qid} delay warning failed: {error}", qid=entry.id, error=error_words(e))

    async def _bounce_failed_now(self, entry: QueuedMessage) -> None:
        """
        Report the recipients that failed for good while others of the same
        message are still being tried: a bounce for them now, not when the
        last one is done (a 451 can keep that for --queue-lifetime, five
        days). RFC 5321 §6.1 asks for the notification of a failure; it is
        what Postfix does (one bounce now, the rest later). A bounce that
        cannot be stored now is made at the end with the others.
        """
        failed = [r for r in entry.recipients if r.state == FAILED and not r.bounced]
        if not failed or not entry.sender:
            return  # (the null sender never gets one: _finish logs it)
        if self._unwanted_failures(entry, failed):
            await self.storage.save(entry)
            failed = [r for r in failed if not r.bounced]
            if not failed:
                return
        try:
            notice = build_dsn(entry, failed, self.storage.read_message(entry.id), self.hostname, self.now())
            await self._notify(entry.sender, notice)
        except Exception as e:  # noqa: BLE001 - the store or the disk failed: _finish tries again
            log.error("queue: {qid} bounce to <{sender}> not stored ({error}); it goes with the last recipient's outcome", qid=entry.id, sender=entry.sender, error=error_words(e))
            return
        log.info("queue: {qid} bounced to <{sender}> for {rcpts}; {n} still pending", qid=entry.id, sender=entry.sender, rcpts=", ".join(f"<{r.address}>" for r in failed), n=len(entry.pending))
        for r in failed:
            r.bounced = True
        await self.storage.save(entry)

    async def _finish(self, entry: QueuedMessage) -> None:
        """
        Every recipient is final: bounce the failed ones, then forget it.
        """
        try:
            if not await self._report_owed(entry):
                # Keep the message (and its outcomes) until the report the
                # sender asked for is stored (a crash must not lose it).
                entry.next_attempt = self.now() + self.schedule.delay(max(entry.attempts, 1))
                await self.storage.save(entry)
                return
            failed = [r for r in entry.recipients if r.state == FAILED]
            if entry.sender and self._unwanted_failures(entry, [r for r in failed if not r.bounced]):
                await self.storage.save(entry)
            unreported = [r for r in failed if not r.bounced]
            if unreported and not entry.bounced:
                if not entry.sender:
                    log.info("queue: {qid} failed for {rcpts}; sender is <>, no bounce (RFC 5321 §4.5.5)", qid=entry.id, rcpts=", ".join(f"<{r.address}>" for r in failed))
                else:
                    try:
                        notice = build_dsn(entry, unreported, self.storage.read_message(entry.id), self.hostname, self.now())
                        await self._notify(entry.sender, notice)
                    except Exception as e:  # noqa: BLE001 - the store or the disk failed, or the DSN could not be made
                        # Keep the message (and its outcomes) and try the
                        # bounce again on the retry schedule.
                        entry.next_attempt = self.now() + self.schedule.delay(max(entry.attempts, 1))
                        log.error("queue: {qid} bounce to <{sender}> not stored ({error}); trying again later", qid=entry.id, sender=entry.sender, error=error_words(e))
                        return
                    log.info("queue: {qid} bounced to <{sender}> for {rcpts}", qid=entry.id, sender=entry.sender, rcpts=", ".join(f"<{r.address}>" for r in unreported))
                    # Removing files is not fsynced; should the envelope come
                    # back after a crash, it must not bounce a second time.
                    entry.bounced = True
                    await self.storage.save(entry)
                entry.bounced = True
            delivered = sum(1 for r in entry.recipients if r.state == DELIVERED)
            self._drop(entry.id)
            log.info("queue: {qid} done: {ok} delivered, {bad} failed", qid=entry.id, ok=delivered, bad=len(failed))
        finally:
            self.in_flight.discard(entry.id)

    def _unwanted_failures(self, entry: QueuedMessage, failed: list) -> bool:
        """
        Mark as reported, without a DSN, the recipients of C{failed} whose
        NOTIFY does not ask to hear of a failure (NEVER, or SUCCESS/DELAY
        without FAILURE: RFC 3461 §4.1); whether there were any.
        """
        unwanted = [r for r in failed if not r.wants("FAILURE")]
        for r in unwanted:
            r.bounced = True
        if unwanted:
            log.info("queue: {qid} failed for {rcpts}; no DSN: NOTIFY does not ask for failures (RFC 3461 4.1)", qid=entry.id, rcpts=", ".join(f"<{r.address}> NOTIFY={r.notify}" for r in unwanted))
        return bool(unwanted)

    def notify(self, address: str, notice: bytes) -> defer.Deferred:
        """
        Send C{notice}, a DSN, to C{address}: into its INBOX when it is
        local, else queued from the null sender C{<>} (RFC 5321 §4.5.5).
        Fires once it is stored.
        """
        return defer.ensureDeferred(self._notify(address, notice))

    async def _notify(self, address: str, notice: bytes) -> None:
        if self.is_local(address):
            await self.deliver_local(address, notice)
        else:
            await self.enqueue("", [address], notice)


def _dsn_params(entry: QueuedMessage) -> dict:
    """The recipients of C{entry} that had NOTIFY or ORCPT -> (NOTIFY, ORCPT)."""
    return {r.address: (r.notify, r.orcpt) for r in entry.recipients if r.notify or r.orcpt}


def _bare(address: str) -> str:
    address = address.decode("utf-8") if isinstance(address, bytes) else str(address)
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address


def _reason(e: Exception) -> str:
    text = error_words(e, paths=False)  # (never Python's [Errno N] or a class name)
    return " ".join(text.split())[:200]

