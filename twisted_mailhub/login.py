# -*- test-case-name: tests.test_login -*-
"""
How a client logs in: the shared portal, seen through a per-connection
L{ClientPortal} that slows down failed logins.

Every protocol's Twisted server calls C{self.portal.login(...)}; the hub gives
each connection a L{ClientPortal} in place of the real portal, so password
guessing is throttled the same way for SMTP AUTH, POP3, IMAP and FTP.

Throttling: the n-th failure in a row from one client (an IPv4 address, an
IPv6 host's /64: L{twisted_mailhub.clientkey}), or against one
account, is answered only after C{step * n} seconds (capped), so ten wrong
passwords in a row take at least C{step * 55} seconds in all. A success resets
the counters for that address and account, so the right password still works.
Counters are forgotten after C{forget_after} seconds without a failure.

One client tries one password at a time for an account: an attempt is
checked only once that client's attempts before it for the same login
name are answered (L{ClientPortal}; a failure's answer is held as above).
Held answers alone would let a client with many connections or HTTP
requests at once (the web login, the JSON API's Basic credentials) try as
many passwords at once, the right one answered at once. A success is
answered at once and lets the next attempt go. (Per client and name, not
per client: a mail program retrying an old password from one address
does not hold up the other accounts logging in from that address, a
classroom behind one NAT.)
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.cred import error
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_mailhub.clientkey import client_key
from twisted_mailhub.lines import quote

log = Logger()


class LoginThrottle:
    """
    Failure counters per client (its L{client_key}, which L{ClientPortal}
    gives) and per login name.
    """

    def __init__(
        self,
        clock: IReactorTime,
        step: float = 0.1,
        cap: float = 10.0,
        forget_after: float = 900.0,
    ):
        self.clock = clock
        self.step = step
        self.cap = cap
        self.forget_after = forget_after
        # key -> (failures in a row, time of the last failure)
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}

    def _count(self, key: tuple[str, str]) -> int:
        count, when = self._failures.get(key, (0, 0.0))
        if count and self.clock.seconds() - when > self.forget_after:
            del self._failures[key]
            return 0
        return count

    def failed(self, address: str, username: str) -> float:
        """
        Record a failure; return how long to hold back its answer.
        """
        now = self.clock.seconds()
        worst = 0
        for key in (("ip", address), ("user", username.lower())):
            count = self._count(key) + 1
            self._failures[key] = (count, now)
            worst = max(worst, count)
        if len(self._failures) > 100_000:
            # Bounded memory under a spray of addresses/names: drop the old.
            cutoff = now - self.forget_after
            self._failures = {k: v for k, v in self._failures.items() if v[1] > cutoff}
        return min(self.cap, self.step * worst)

    def succeeded(self, address: str, username: str) -> None:
        self._failures.pop(("ip", address), None)
        self._failures.pop(("user", username.lower()), None)


# Per throttle: (client key, login name in lower case) -> the attempts in
# order, each a Deferred that fires once it is answered (the first is
# being checked).
_turns: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str], list[defer.Deferred]]]" = weakref.WeakKeyDictionary()


def _take_turn(throttle: Any, key: tuple[str, str]) -> tuple[defer.Deferred, defer.Deferred]:
    """
    A place in C{key}'s line of login attempts on C{throttle}: (a Deferred
    that fires with None when the attempts before it are answered, the
    Deferred to fire when this one is answered).
    """
    lines = _turns.setdefault(throttle, {})
    line = lines.setdefault(key, [])
    done: defer.Deferred = defer.Deferred()
    before = line[-1] if line else None
    line.append(done)

    def answered(result: Any) -> Any:
        line.remove(done)
        if not line:
            lines.pop(key, None)
        return result

    done.addBoth(answered)
    if before is None:
        return defer.succeed(None), done
    go: defer.Deferred = defer.Deferred()
    before.addBoth(lambda result: (go.callback(None), result)[1])
    return go, done


class ClientPortal:
    """
    The portal as one connection sees it: L{Portal.login} with throttling,
    and with the client's address for the log. A client's attempts for one
    login name are checked one at a time, each once those before it are
    answered.
    """

    def __init__(self, portal: Portal, throttle: LoginThrottle, client_address: str, protocol: str, metrics: Any = None):
        self.portal = portal
        self.throttle = throttle
        self.client_address = client_address
        self.protocol = protocol
        self.metrics = metrics

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        username = getattr(credentials, "username", b"")
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        key = client_key(self.client_address)
        go, done = _take_turn(self.throttle, (key, username.lower()))
        d = go.addCallback(lambda _: self.portal.login(credentials, mind, *interfaces))

        def answered(result):
            done.callback(None)
            return result

        def ok(result):
            self.throttle.succeeded(key, username)
            if self.metrics is not None:
                self.metrics.logins.labels(self.protocol, "ok").inc()
            log.info(
                "{protocol} login {user} from {address}",
                protocol=self.protocol,
                user=username,
                address=self.client_address,
            )
            return result

        def failed(reason):
            reason.trap(error.UnauthorizedLogin, error.UnhandledCredentials)
            delay = self.throttle.failed(key, username)
            if self.metrics is not None:
                self.metrics.logins.labels(self.protocol, "failed").inc()
            log.info(
                "{protocol} login failed for '{user}' from {address} (answer held {delay:.1f}s)",
                protocol=self.protocol,
                user=quote(username),
                address=self.client_address,
                delay=delay,
            )
            return task.deferLater(self.throttle.clock, delay, lambda: reason)

        return d.addCallbacks(ok, failed).addBoth(answered)

    def listCredentialsInterfaces(self):
        return self.portal.listCredentialsInterfaces()
