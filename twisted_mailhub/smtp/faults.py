# -*- test-case-name: tests.test_faults -*-
"""
C{--test-mode}: fault injection for testing SMTP clients, through test
addresses (as mox does). The local part of a sender (at MAIL FROM) or a
recipient (at RCPT TO) chooses what happens, at any domain:

 - C{fail-NNN} (NNN a 4xx or 5xx code: C{fail-451}, C{fail-552},
   C{fail-554}, ...): that reply to the command that named it.
 - C{datafail-NNN}: everything is accepted until the end of DATA, which
   gets NNN.
 - C{slow-Ns} (N from 1 to 120): the reply to that command comes N
   seconds late.
 - C{drop}: C{421 4.4.2} and the connection is closed (RFC 5321 §3.8).

A test recipient that is not refused (C{slow-Ns}, and C{datafail-NNN} up
to DATA) is accepted; its mail goes to the C{--catch-all} account if there
is one, else it is discarded. Mail for other addresses is untouched.

Fault injection is a delivery filter (L{FaultInjection}, first in
C{hub.filters}); L{twisted_mailhub.smtp.delivery.RecipientPolicy} accepts
test addresses so that the filter sees them. It is only turned on when
every SMTP listener is bound to loopback: otherwise the hub logs a warning
and runs without it, unless C{--test-mode-force}.
"""

from __future__ import annotations

import re
from typing import Any

import attr
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from twisted_mailhub.filters import Envelope, IDeliveryFilter, Reject

log = Logger()

option_flags = [
    ["test-mode", None, "Fault injection for testing clients: senders/recipients fail-NNN, datafail-NNN, slow-Ns, drop (loopback listeners only)."],
    ["test-mode-force", None, "Allow --test-mode on listeners that are not bound to loopback."],
]

SMTP_LISTENERS = ("smtp", "submission", "smtps")
MAX_DELAY = 120

_FAULT = re.compile(r"^(?:(?P<when>fail|datafail)-(?P<code>[45]\d\d)|slow-(?P<delay>\d{1,3})s|(?P<drop>drop))$", re.I)

# A local part that starts like a test address but asks for nothing it can
# give (fail-600, fail-abc, slow-200s, fail-550+tag): refused in words, not
# taken as an ordinary address (with --catch-all, a silent 250 that makes a
# typo in a test look like a pass).
_NEAR_FAULT = re.compile(r"^(?:(?:data)?fail-|slow-)", re.I)
FAULT_FORMS = "fail-4xx or fail-5xx, datafail-4xx or datafail-5xx, slow-1s to slow-120s, or drop"

# Enhanced status codes (RFC 3463) for the common fault codes.
_ENHANCED = {451: "4.3.0", 452: "4.3.1", 421: "4.4.2", 550: "5.1.1", 551: "5.1.6", 552: "5.2.2", 553: "5.1.3", 554: "5.7.1"}


@attr.s(auto_attribs=True, frozen=True)
class Fault:
    """
    What one test address asks for.

    @ivar kind: C{"fail"} (at its command), C{"datafail"} (at end of
        DATA), C{"slow"} or C{"drop"}.
    @ivar code: the reply code for C{fail}/C{datafail}.
    @ivar delay: seconds, for C{slow}.
    """

    kind: str
    code: int = 0
    delay: int = 0

    def reject(self, address: str) -> Reject:
        if self.kind == "drop":
            return Reject(421, "4.4.2 test mode: dropping the connection (drop)")
        enhanced = _ENHANCED.get(self.code, f"{self.code // 100}.0.0")
        return Reject(self.code, f"{enhanced} test mode: {self.kind}-{self.code} requested by <{address}>")


def fault_of(address: str) -> Fault | None:
    """
    The fault a test address asks for (by its local part, any domain),
    or L{None} for an ordinary address.
    """
    m = _FAULT.match(address.rpartition("@")[0] if "@" in address else address)
    if m is None:
        return None
    if m.group("drop"):
        return Fault("drop")
    if m.group("delay"):
        delay = int(m.group("delay"))
        return Fault("slow", delay=delay) if 1 <= delay <= MAX_DELAY else None
    return Fault(m.group("when").lower(), code=int(m.group("code")))


@implementer(IDeliveryFilter)
class FaultInjection:
    """
    The C{--test-mode} delivery filter (not a plugin: the option installs
    it, first of all filters).
    """

    name = "test-mode"

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def _act(self, address: str, at_data: bool) -> Any:
        fault = fault_of(address)
        if fault is None:
            local = address.rpartition("@")[0] if "@" in address else address
            if not at_data and _NEAR_FAULT.match(local):
                return Reject(501, f"5.1.3 test mode: {local} is no test address; use {FAULT_FORMS}")
            return None
        if fault.kind == "slow" and not at_data:
            return task.deferLater(self.reactor, fault.delay, lambda: None)
        if fault.kind in ("fail", "drop") and not at_data:
            return fault.reject(address)
        if fault.kind == "datafail" and at_data:
            return fault.reject(address)
        return None

    def mail_from(self, envelope: Envelope) -> Any:
        return self._act(envelope.sender, at_data=False) if envelope.sender else None

    def rcpt_to(self, envelope: Envelope, recipient: str) -> Any:
        return self._act(recipient, at_data=False)

    def end_of_data(self, envelope: Envelope, message: bytes) -> Any:
        for address in (envelope.sender, *envelope.recipients):
            if address:
                result = self._act(address, at_data=True)
                if result is not None:
                    return result
        return None


def _loopback_only(description: str) -> bool:
    """Is a strports description a TCP listener on a loopback address (or a UNIX socket)?"""
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", description)]
    if fields[0] == "unix":
        return True
    interface = next((f.split("=", 1)[1] for f in fields if f.startswith("interface=")), "")
    host = interface.strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost")


def install(hub: Any) -> None:
    hub.test_mode = False
    options = hub.options
    if not options.get("test-mode"):
        return
    exposed = [
        f"{name} ({options.get(name) or ''})"
        for name in SMTP_LISTENERS
        if not options.get(f"no-{name}") and not _loopback_only(options.get(name) or "")
    ]
    if exposed and not options.get("test-mode-force"):
        log.warn(
            "--test-mode refused: {listeners} not bound to loopback only (interface=127.0.0.1); "
            "running without fault injection (--test-mode-force allows it)",
            listeners=", ".join(exposed),
        )
        return
    hub.test_mode = True
    hub.filters.insert(0, FaultInjection(hub.reactor))
    log.info("test mode: fault injection on (fail-NNN, datafail-NNN, slow-Ns, drop)")
