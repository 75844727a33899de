# -*- test-case-name: tests.test_smtp_server -*-
"""
What happens to mail once the SMTP session has it: who may send to whom
(relay policy), the headers every stored copy gets, delivery filters, and
handing the message to the store (local recipients) or the outbound queue
(C{hub.relay}, non-local recipients of an authenticated session).

Rules:

 - Unauthenticated mail goes only to existing accounts in local domains:
   an unknown local user is C{550 5.1.1}, a foreign domain C{554 5.7.1
   Relay access denied}. An authenticated session may name foreign
   recipients only when an outbound queue is installed (C{hub.relay});
   until then C{550 5.7.1 Relaying is not enabled on this hub}.
 - Each stored copy gets C{Return-Path:} and its own C{Received:} trace
   header (RFC 5321 §4.4) naming that recipient; relayed copies get one
   C{Received:} without a C{for} clause, so Bcc recipients stay hidden.
 - A message whose data does not start with header fields (typed by
   hand: C{Hello Me}) gets the empty line that separates header and
   body, after the trace headers, before its first line that is not a
   header field (as Postfix's cleanup does).
 - Mail from an authenticated session (submission, RFC 6409 §8) gets
   C{From:}, C{Message-ID:} and C{Date:} when the client left them out.
 - The client is told C{250} only when every copy is durable: the result
   is a Deferred that fires after every store/queue Deferred has.
 - Every copy or none: when one copy cannot be stored (a full disk), the
   copies already stored are removed before the failure is reported, so
   a 4xx never leaves a copy that the client's retry would duplicate.
"""

from __future__ import annotations

import email.utils
import itertools
import ipaddress
import os
import re
import time
from typing import Any

import attr
from twisted.internet import defer
from twisted.python.failure import Failure

from twisted_mailhub.errorwords import error_words
from twisted_mailhub.filters import Envelope, Reject, Rewrite
from twisted_mailhub.lines import quote
from twisted_mailhub.logobserver import QuickLogger
from twisted_mailhub.store.interfaces import INBOX, StoreUnavailable

# A line per delivered message: the Logger without its per-call level scan.
log = QuickLogger()

_queue_ids = itertools.count(1)


def queue_id() -> str:
    """
    A short id for one accepted message, unique within this process and
    unlikely to repeat across restarts (time + pid + counter, in hex).
    """
    return "%X%04X%05X" % (int(time.time()), _pid[0] & 0xFFFF, next(_queue_ids) & 0xFFFFF)


# This process's id, asked once (and again in a child after a fork), not
# with a system call per message.
_pid = [os.getpid()]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


_date_cache: list[Any] = [0, ""]


def rfc5322_date() -> str:
    """The current time as an RFC 5322 date, cached for the second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, localtime=True)
    return _date_cache[1]


@attr.s(auto_attribs=True)
class AuthenticatedSender:
    """
    The avatar an SMTP AUTH login gets from the realm (registered for
    C{smtp.IMessageDelivery}, the interface Twisted's SMTP servers ask the
    portal for): the account the session now speaks for. It does not
    implement Twisted's per-message delivery calls; the mailhub server
    applies its rules through L{RecipientPolicy} and L{deliver}, which only
    need to know whether, and as whom, the session is logged in.
    """

    account: Any

    @property
    def address(self) -> str:
        return self.account.address if self.account is not None else ""


def avatar_factory(account, mind):
    return AuthenticatedSender(account), lambda: None


@attr.s(auto_attribs=True, frozen=True)
class Verdict:
    """
    The answer to one RCPT: C{code}/C{text} to send, and whether the
    recipient is C{"local"} (store), C{"relay"} (outbound queue) or
    C{"discard"} (a C{--test-mode} address with no catch-all: accepted,
    not kept). C{original} is the recipient as the client gave it when
    the mail goes elsewhere (C{--catch-all}), else C{""}. C{notify} and
    C{orcpt} are the RCPT's DSN parameters (RFC 3461 §4.1, §4.2, as
    L{twisted_mailhub.smtp.dsn} keeps them), C{""} when not given.
    """

    code: int
    text: str
    kind: str = ""
    address: str = ""
    original: str = ""
    notify: str = ""
    orcpt: str = ""

    @property
    def recipient(self) -> str:
        """The envelope recipient as the client named it."""
        return self.original or self.address

    @property
    def accepted(self) -> bool:
        return self.code < 300


_local_verdicts: dict[str, Verdict] = {}


def _local_verdict(address: str) -> Verdict:
    """C{Verdict(250, "2.1.5 Ok", "local", address)}: one per account (frozen, so shared), not one per RCPT."""
    verdict = _local_verdicts.get(address)
    if verdict is None:
        verdict = Verdict(250, "2.1.5 Ok", "local", address)
        if len(_local_verdicts) < 10000:
            _local_verdicts[address] = verdict
    return verdict


def _never_an_account(accounts: Any, address: str) -> str:
    """
    For an unknown local recipient whose name no account can have (a
    Quoted-string local part with a blank, C{"al ice"}, or with an C{@},
    C{;}...: RFC 5321 §4.1.2 allows them, the hub's account names do not),
    the reason as the end of the 550's text; C{""} otherwise.
    """
    from twisted_mailhub.accounts import account_name_problem

    local, domain = accounts.split(address)
    problem = account_name_problem(local, domain)
    if problem is None:
        return ""
    return f" (no account's name has {problem.split(' (', 1)[0]})"


class RecipientPolicy:
    def __init__(self, hub: Any):
        self.hub = hub

    def qualify(self, address: str) -> str:
        """A bare local part gets the default domain (hand-typed sessions)."""
        if "@" not in address:
            return f"{address}@{self.hub.accounts.default_domain}"
        return address

    def postmaster(self):
        """
        Who reads mail for postmaster@<local domain> when there is no such
        account: RFC 5321 §4.5.1 says every SMTP server MUST accept it.
        C{--postmaster}, else the first account.
        """
        accounts = self.hub.accounts
        name = self.hub.options.get("postmaster")
        if name:
            return accounts.find(name)
        return next(iter(accounts), None)

    def check(self, address: str, authenticated: str | None) -> Verdict:
        address = self.qualify(address)
        local, _, domain = address.rpartition("@")
        accounts = self.hub.accounts
        catch_all = getattr(self.hub, "catch_all", None)
        if getattr(self.hub, "test_mode", False) and accounts.find(address) is None:
            from twisted_mailhub.smtp.faults import fault_of

            if fault_of(address) is not None:
                # Accepted here so that the fault filter sees it at RCPT.
                if catch_all is not None:
                    return Verdict(250, "2.1.5 Ok", "local", catch_all.address, original=address)
                return Verdict(250, "2.1.5 Ok", "discard", "", original=address)
        if catch_all is not None and accounts.find(address) is None:
            # --catch-all: any other address, any domain; never relayed.
            return Verdict(250, "2.1.5 Ok", "local", catch_all.address, original=address)
        if accounts.is_local_domain(domain):
            account = accounts.find(address)
            if account is None and accounts.split(address)[0].lower() == "postmaster":
                account = self.postmaster()
            if account is None:
                return Verdict(550, f"5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table{_never_an_account(accounts, address)}")
            quotas = getattr(self.hub, "quotas", None)
            try:
                full = quotas is not None and quotas.over(account.address)
            except StoreUnavailable as e:
                # The quota cannot be counted now (the store or the file
                # database is down): RFC 3463 X.3.0, a temporary error.
                log.warn("smtp: RCPT {address} deferred: its quota cannot be counted now ({why})", address=address, why=str(e))
                return Verdict(451, f"4.3.0 <{address}>: Mailbox quota cannot be checked now; try again later")
            if full:
                # RFC 3463 §3.3 X.2.2: known to be full before any data is sent.
                return Verdict(552, f"5.2.2 <{address}>: Mailbox full")
            return _local_verdict(account.address)
        if not authenticated:
            return Verdict(554, f"5.7.1 <{address}>: Relay access denied")
        problem = domain_problem(domain)
        if problem:
            # Refused now, for good: queued, it was retried for days
            # (--queue-lifetime) against a name no lookup can find.
            return Verdict(553, f"5.1.3 <{address}>: Recipient address rejected: {problem}")
        if getattr(self.hub, "relay", None) is None:
            return Verdict(550, f"5.7.1 <{address}>: Relaying is not enabled on this hub")
        return Verdict(250, "2.1.5 Ok", "relay", address)


# A label of a domain name (RFC 5321 §4.1.2 sub-domain, RFC 1035 §2.3.4:
# letters, digits, hyphens inside, 1 to 63 octets).
_LDH_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def domain_problem(domain: str) -> str | None:
    """
    Why mail cannot be relayed to C{domain} (the part of a recipient
    address after its C{@}), in words for a C{553 5.1.3} reply, or
    L{None}: a domain name of labels of letters, digits and hyphens, 1 to
    63 octets each and at most 253 in all (RFC 5321 §4.1.2, §4.5.3.1.2;
    a label of other characters, RFC 6531, must have an IDNA A-label,
    RFC 5890), or an address literal of an IPv4 or IPv6 address (RFC 5321
    §4.1.3).
    """
    if domain.startswith("["):
        inside = domain[1:-1] if domain.endswith("]") else ""
        try:
            if inside[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inside[5:])
            else:
                ipaddress.IPv4Address(inside)
        except ValueError:
            return "the address literal is not an IPv4 address or IPv6:address (RFC 5321 4.1.3)"
        return None
    labels = domain.split(".")
    if not domain or "" in labels:
        return "the domain has an empty label (RFC 5321 4.1.2)"
    length = 0
    for label in labels:
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                return "the domain is not a domain name: a label has characters no IDNA name may have (RFC 5890)"
        if not _LDH_LABEL.match(label):
            return "the domain is not a domain name: labels are letters, digits and hyphens inside, 1 to 63 octets (RFC 5321 4.1.2)"
        length += len(label) + 1
    if length - 1 > 253:
        return "the domain is longer than 253 octets (RFC 5321 4.5.3.1.2)"
    return None


_HEADER_END = re.compile(rb"\r\n\r\n")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:", re.I | re.M)
_DATE = re.compile(rb"^date[ \t]*:", re.I | re.M)


def header_block(message: bytes) -> bytes:
    """The header section of a CRLF message (up to its first empty line)."""
    if message.startswith(b"\r\n"):
        return b""
    m = _HEADER_END.search(message)
    return message[: m.start() + 2] if m else message


# One header field and its continuation lines (RFC 5322 §2.2, §3.6.8:
# field-name is 1*ftext, printable US-ASCII except ":").
_HEADER_FIELDS = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+[ \t]*:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*")
_FROM = re.compile(rb"^from[ \t]*:", re.I | re.M)


def separate_body(message: bytes) -> bytes:
    """
    The message with the empty line that ends its header section (RFC
    5322 §2.1) where the client left it out: before the first line that
    is not a header field, as Postfix's cleanup does. So a message typed
    without headers (C{Hello Me}, the textbook DATA) is all body, and IMAP
    C{BODY[TEXT]}, POP3 C{TOP n 0} and C{SEARCH BODY} find its text.
    """
    end = _HEADER_FIELDS.match(message).end()
    if end == len(message) or message.startswith(b"\r\n", end):
        return message
    return message[:end] + b"\r\n" + message[end:]


def add_submission_headers(message: bytes, hostname: str, sender: str = "") -> bytes:
    """
    RFC 6409 §8.2, §8.3: a submission server may add a missing
    C{Message-ID:} and C{Date:}; and, as Postfix does for its own
    submissions, a missing C{From:} (the envelope sender, RFC 5322 §3.6.2
    makes it required).
    """
    headers = header_block(message)
    extra = b""
    if sender and not _FROM.search(headers):
        extra += b"From: <" + sender.encode("utf-8", "replace") + b">\r\n"  # ASCII unless SMTPUTF8
    if not _DATE.search(headers):
        extra += b"Date: " + rfc5322_date().encode("ascii") + b"\r\n"
    if not _MESSAGE_ID.search(headers):
        extra += b"Message-ID: <%s@%s>\r\n" % (queue_id().encode("ascii") + os.urandom(4).hex().encode("ascii"), hostname.encode("ascii", "replace"))
    return extra + message


def _header_fields(headers: bytes, name: bytes) -> list[str]:
    """
    The values of every C{name:} field (lower case, no colon) of a header
    block, unfolded (RFC 5322 §2.2.3), as text: UTF-8 (RFC 6532), any other
    octet U+FFFD.
    """
    found = []
    for m in re.finditer(rb"^" + name + rb"[ \t]*:((?:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)|[^\r\n]*$)", headers, re.I | re.M):
        found.append(re.sub(rb"\r?\n(?=[ \t])", b"", m.group(1)).strip().decode("utf-8", "replace"))
    return found


def header_sender_refusal(message: bytes, account: str, qualify: Any = None) -> str | None:
    """
    C{--submission-sender-match}'s check of the header (RFC 6409 §6.1 lets
    a submission server insist): the author of C{message} (CRLF bytes) must
    be C{account} (the address that logged in). That is the one address of
    its C{From:} fields (RFC 5322 §3.6.2); with several, the C{Sender:}
    field's, which RFC 5322 §3.6.2 then requires. Compared without regard
    to case; C{qualify} (a bare local part -> an address) as the envelope
    sender is. A message without C{From:} passes (the hub adds the
    account's). Returns the text of the C{550 5.7.1} reply (after its
    code), or L{None} when it passes. Postfix's
    C{reject_sender_login_mismatch} checks only the envelope sender; the
    hub checks both.
    """
    headers = header_block(message)
    if not _FROM.search(headers):
        return None
    authors = [address for _, address in email.utils.getaddresses(_header_fields(headers, b"from"))]
    field = "From"
    if len(authors) > 1:
        field = "Sender"
        authors = [address for _, address in email.utils.getaddresses(_header_fields(headers, b"sender"))]
        if len(authors) != 1:
            return (
                f"5.7.1 Message refused: it has several From: addresses and no Sender: field naming {account} "
                "(RFC 5322 3.6.2); with --submission-sender-match the author must be the account that logged in"
            )
    address = authors[0] if authors else ""
    owner = quote(account, 200, ascii=True)
    if not address:
        return f"5.7.1 Message refused: its {field}: field names no address; with --submission-sender-match it must be {owner}"
    if qualify is not None:
        address = qualify(address)
    if address.casefold() == account.casefold():
        return None
    return f"5.7.1 <{quote(address, 200, ascii=True)}>: {field}: header address rejected: not owned by user {owner}"


@attr.s(auto_attribs=True)
class Session:
    """
    What the trace header needs to know of the session.
    """

    helo: str
    client_ip: str
    hostname: str
    esmtp: bool
    tls: bool
    authenticated: str | None
    # The transaction used SMTPUTF8 (RFC 6531).
    utf8: bool = False
    # The trace line up to its id (L{received}), made once: a connection
    # keeps its Session from message to message while it stays the same
    # (L{twisted_mailhub.smtp.server.MailhubSMTP._session}).
    _trace_head: Any = attr.ib(default=None, init=False, repr=False, eq=False)

    @property
    def with_protocol(self) -> str:
        # RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA (both);
        # RFC 6531 §3.7.3: UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA.
        if self.utf8:
            return "UTF8SMTP" + ("S" if self.tls else "") + ("A" if self.authenticated else "")
        proto = "ESMTP" if self.esmtp else "SMTP"
        if self.tls or self.authenticated:
            proto = "ESMTP" + ("S" if self.tls else "") + ("A" if self.authenticated else "")
        return proto

    def received(self, qid: str, recipient: str | None) -> bytes:
        """
        RFC 5321 §4.4 trace line. No reverse DNS is looked up (the hub makes
        no outside queries); loopback peers are called localhost.
        """
        head = self._trace_head
        if head is None:
            ip = self.client_ip
            rdns = "localhost" if ip.startswith("127.") or ip == "::1" else "unknown"
            literal = f"IPv6:{ip}" if ":" in ip else ip
            head = self._trace_head = f"Received: from {self.helo or 'unknown'} ({rdns} [{literal}])\r\n\tby {self.hostname} with {self.with_protocol} id "
        if recipient is not None:
            text = f"{head}{qid}\r\n\tfor <{recipient}>; {rfc5322_date()}\r\n"
        else:
            text = f"{head}{qid}; {rfc5322_date()}\r\n"
        # A UTF-8 address only in an SMTPUTF8 transaction (RFC 6532 §3.7).
        return text.encode("utf-8" if self.utf8 else "ascii", "replace")


def run_filters(filters, hook: str, *args) -> defer.Deferred:
    """
    Run one hook of every filter in order; the first L{Reject} wins. At
    end of data a L{Rewrite} replaces the message (and maybe the envelope)
    for the filters after it and for the store. The Deferred fires with a
    Reject, or the (maybe new) message (L{None} for the other hooks); it
    fails with what a filter raised. Filters that answer at once are run
    in a plain loop (most do, most of the time: a trusted client, no key
    to sign with); only from the first Deferred on does a coroutine wait.
    """
    message = args[-1] if hook == "end_of_data" else None
    try:
        step = _run_at_once(filters, hook, 0, args, message)
    except Exception:
        return defer.fail()
    if step[0] is None:
        return defer.succeed(step[1])
    return defer.Deferred.fromCoroutine(_run_the_rest(filters, hook, *step))


def _run_at_once(filters, hook: str, start: int, args: tuple, message: Any) -> tuple:
    """
    Run C{filters[start:]} while each answers at once: C{(None, outcome)}
    when all have answered or one refused (a L{Reject}, or the message),
    or C{(index, deferred, args, message)} for the filter that answered
    with a Deferred.
    """
    end_of_data = hook == "end_of_data"
    for i in range(start, len(filters)):
        method = getattr(filters[i], hook, None)
        if method is None:
            continue
        result = method(args[0], message) if end_of_data else method(*args)
        if isinstance(result, defer.Deferred):
            return i, result, args, message
        if isinstance(result, Reject):
            return None, result
        if end_of_data and isinstance(result, Rewrite):
            message = result.message
            if result.envelope is not None:
                args = (result.envelope,) + args[1:]
    return None, message


async def _run_the_rest(filters, hook: str, i: int, pending: defer.Deferred, args: tuple, message: Any) -> Any:
    """L{run_filters} from a filter that answered with a Deferred."""
    while True:
        result = await pending
        if isinstance(result, Reject):
            return result
        if hook == "end_of_data" and isinstance(result, Rewrite):
            message = result.message
            if result.envelope is not None:
                args = (result.envelope,) + args[1:]
        step = _run_at_once(filters, hook, i + 1, args, message)
        if step[0] is None:
            return step[1]
        i, pending, args, message = step


def has_hook(filters, hook: str) -> bool:
    """Whether any of C{filters} implements C{hook} (C{mail_from}, C{rcpt_to}, C{end_of_data})."""
    return any(getattr(f, hook, None) is not None for f in filters)


def end_of_data_gates(filters) -> tuple | None:
    """
    How to tell, from a session alone, that no end-of-data filter of
    C{filters} would do anything with its messages: a tuple of each such
    filter's C{applies_to_session(authenticated, client_address) -> bool}
    (the built-in ones: L{twisted_mailhub.mailauth.checks.InboundChecks}
    checks mail from outside, L{twisted_mailhub.mailauth.signing.DKIMSigner}
    signs mail of a logged-in account), or None when one of them has no
    such method (a C{--filter} plugin: it sees every message).
    """
    gates = []
    for f in filters:
        if getattr(f, "end_of_data", None) is None:
            continue
        gate = getattr(f, "applies_to_session", None)
        if gate is None:
            return None
        gates.append(gate)
    return tuple(gates)


def _filters_apply(hub: Any, session: Session) -> bool:
    """
    Whether a message of C{session} goes through C{hub.filters}' end of
    data at all; the gates (L{end_of_data_gates}) are found once per list
    of filters, not per message. False: the message is stored as it is,
    with no L{Envelope} made (every filter would answer None at once).
    """
    filters = hub.filters
    cached = getattr(hub, "_end_of_data_gates", None)
    if cached is None or cached[0] != filters:
        cached = hub._end_of_data_gates = (list(filters), end_of_data_gates(filters))
    gates = cached[1]
    if gates is None:
        return True
    authenticated, client_address = session.authenticated, session.client_ip
    for gate in gates:
        if gate(authenticated, client_address):
            return True
    return False


def envelope_of(sender: str, recipients, session: Session) -> Envelope:
    return Envelope(
        sender=sender,
        recipients=tuple(recipients),
        client_address=session.client_ip,
        helo=session.helo,
        authenticated=session.authenticated,
    )


def deliver(hub: Any, session: Session, sender: str, recipients: list[Verdict], message: bytes, dsn: tuple[str, str] | None = None) -> defer.Deferred:
    """
    Filters, headers, then store/queue every copy. The Deferred fires with
    the queue id once all are durable, or fails with L{Rejected} for a
    filter's L{Reject}. Counted in C{hub.metrics}: the result, the octets
    and the time to durable. C{dsn} is the MAIL's C{(RET, ENVID)} (RFC
    3461 §4.3, §4.4; C{""} each when not given), L{None} for neither.
    """
    metrics = getattr(hub, "metrics", None)
    counted = _Counted(metrics, len(message)) if metrics is not None else None
    d = _deliver(hub, session, sender, recipients, message, counted, dsn)
    if counted is not None and not counted.attached:
        d.addCallbacks(counted.accepted, counted.refused)
    return d


class _Counted:
    """
    The metrics of one message after DATA (L{deliver}): C{accepted(qid)}
    and C{refused(failure)} are the callbacks of its Deferred, attached
    once (C{attached}: the one-recipient path joins them to its own).
    """

    __slots__ = ("metrics", "octets", "started", "attached")

    def __init__(self, metrics: Any, octets: int):
        self.metrics = metrics
        self.octets = octets  # as the client sent them
        self.started = time.monotonic()
        self.attached = False

    def accepted(self, qid: str) -> str:
        self.metrics.message_accepted(self.octets, time.monotonic() - self.started)
        return qid

    def refused(self, failure: Failure) -> Failure:
        reason = "filter" if failure.check(Rejected) else "store-error"
        self.metrics.messages.labels("rejected", reason).inc()
        return failure


def _deliver(hub: Any, session: Session, sender: str, recipients: list[Verdict], message: bytes, counted: _Counted | None = None, dsn: tuple[str, str] | None = None) -> defer.Deferred:
    message = separate_body(message)
    if session.authenticated:
        # Before the filters, so that one that signs (DKIM) sees the
        # message as it will be stored.
        message = add_submission_headers(message, session.hostname, sender or session.authenticated)
    if hub.filters and _filters_apply(hub, session):
        if len(recipients) == 1:
            one = recipients[0]
            envelope = envelope_of(sender, (one.original or one.address,), session)
        else:
            envelope = envelope_of(sender, [r.recipient for r in recipients], session)
        try:
            step = _run_at_once(hub.filters, "end_of_data", 0, (envelope, message), message)
        except Exception:
            return defer.fail()
        if step[0] is None:
            # Every filter answered at once (a trusted client, nothing to
            # sign): on to the store without a Deferred in between.
            if isinstance(step[1], Reject):
                return defer.fail(Rejected(step[1].code, step[1].text))
            return _store(hub, session, sender, recipients, step[1], counted, dsn)
        d = defer.Deferred.fromCoroutine(_run_the_rest(hub.filters, "end_of_data", *step))
        return d.addCallback(_filtered, hub, session, sender, recipients, dsn)
    return _store(hub, session, sender, recipients, message, counted, dsn)


def _filtered(result, hub, session, sender, recipients, dsn=None):
    if isinstance(result, Reject):
        raise Rejected(result.code, result.text)
    return _store(hub, session, sender, recipients, result, None, dsn)


def _store(hub: Any, session: Session, sender: str, recipients: list[Verdict], message: bytes, counted: _Counted | None = None, dsn: tuple[str, str] | None = None) -> defer.Deferred:
    qid = queue_id()
    # A UTF-8 sender only came with SMTPUTF8 (RFC 6532 §3.7 allows it here).
    return_path = b"Return-Path: <" + sender.encode("utf-8" if session.utf8 else "ascii", "replace") + b">\r\n"
    # (account, original recipient): one copy each (--catch-all may bring
    # several originals to one account).
    if len(recipients) == 1 and recipients[0].kind == "local":
        local, relay = [(recipients[0].address, recipients[0].original)], []
    else:
        local = list(dict.fromkeys((r.address, r.original) for r in recipients if r.kind == "local"))
        relay = list(dict.fromkeys(r.address for r in recipients if r.kind == "relay"))
    if sender and any("SUCCESS" in r.notify for r in recipients if r.kind == "local"):
        # A success DSN is owed (RFC 3461 §6.2): it is stored with the
        # copies, before the 250, or the message is refused (as Postfix
        # defers a delivery whose success it cannot record).
        ret, envid = dsn or ("", "")
        by_address: dict[str, Verdict] = {}
        for r in recipients:
            by_address.setdefault(r.address, r)
        params = {"ret": ret, "envid": envid, "notify": {a: (by_address[a].notify, by_address[a].orcpt) for a in relay}}
        report = lambda qid, queued: _report_delivered(hub, qid, sender, recipients, return_path + message, dsn, queued)  # noqa: E731
        return defer.Deferred.fromCoroutine(_store_all(hub, session, sender, local, relay, message, qid, return_path, params, report))
    if len(local) == 1 and not relay:
        # The hot path (one recipient): plain Deferreds, no coroutine.
        address, original = local[0]
        copy = _local_copy(session, qid, return_path, address, original, message)
        try:
            d = hub.store.deliver(address, copy)
        except Exception:
            return defer.fail()
        if not isinstance(d, defer.Deferred):
            d = defer.succeed(d)

        def stored(key: str) -> str:
            _log_delivery(hub, qid, sender, [(address, key)], len(message), session.client_ip)
            if counted is not None:
                counted.accepted(qid)
            return qid

        if counted is None:
            return d.addCallback(stored)
        # The metrics' callbacks joined to this one: one step of the
        # Deferred's loop per message, not two.
        counted.attached = True
        return d.addCallbacks(stored, counted.refused)
    if dsn is not None or any(r.notify or r.orcpt for r in recipients):
        # DSN parameters (RFC 3461) go with the queued copy; a success
        # DSN for the local copies once they are stored.
        by_address: dict[str, Verdict] = {}
        for r in recipients:
            by_address.setdefault(r.address, r)
        ret, envid = dsn or ("", "")
        params = {"ret": ret, "envid": envid, "notify": {a: (by_address[a].notify, by_address[a].orcpt) for a in relay}}
        return defer.Deferred.fromCoroutine(_store_all(hub, session, sender, local, relay, message, qid, return_path, params))
    return defer.Deferred.fromCoroutine(_store_all(hub, session, sender, local, relay, message, qid, return_path))


def _local_copy(session: Session, qid: str, return_path: bytes, address: str, original: str, message: bytes) -> bytes:
    """The copy stored for C{address}: trace headers, then the message."""
    if not original:
        return return_path + session.received(qid, address) + message
    # --catch-all: who it was for, as Postfix records it.
    charset = "utf-8" if session.utf8 else "ascii"
    trace = b"Delivered-To: <%s>\r\nX-Original-To: <%s>\r\n" % (address.encode(charset, "replace"), original.encode(charset, "replace"))
    return return_path + trace + session.received(qid, original) + message


async def _store_all(hub: Any, session: Session, sender: str, local: list[tuple[str, str]], relay: list[str], message: bytes, qid: str, return_path: bytes, params: dict | None = None, report: Any = None) -> str:
    """
    Every copy or none (never a 4xx with a copy kept: the client's retry
    would duplicate it). The local copies are stored together; if one
    fails, those already stored are removed, durably, before the failure
    is reported. The relayed copy is queued only once every local copy is
    durable, so it never has to be taken back from a queue that may
    already be sending it; if queueing it fails, the local copies go too.

    C{report}: C{(qid, queued) -> Deferred}, the success DSN owed for
    the local copies (L{_report_delivered}). It is never stored before a
    step that could still refuse the message, because a report cannot
    always be taken back (a queue another worker runs, the PostgreSQL
    queue, a maildrop whose flush fails). With a relayed copy it is
    queued in the same envelope (C{queued}: the owed L{Recipient}s go to
    the queue's C{enqueue} as C{delivered}), so both are stored or
    neither; without one it is stored last, and if that fails the local
    copies are taken back and the client told 451.
    """
    waits = [defer.maybeDeferred(hub.store.deliver, a, _local_copy(session, qid, return_path, a, o, message)) for a, o in local]
    results = await defer.DeferredList(waits, consumeErrors=True) if waits else []
    stored = [(address, key) for (address, _original), (ok, key) in zip(local, results) if ok]
    failures = [failure for ok, failure in results if not ok]
    if not failures and relay:
        extra = dict(params or {})
        if report is not None:
            owed = report(qid, queued=True)
            if owed:
                extra["delivered"] = owed
        try:
            await defer.maybeDeferred(hub.relay.enqueue, sender, relay, session.received(qid, None) + message, **extra)
        except Exception:
            failures.append(Failure())
    elif not failures and report is not None:
        try:
            await report(qid, queued=False)
        except Exception as e:  # noqa: BLE001 - refused: the client tries again
            log.error("{qid}: success DSN to <{sender}> not stored ({error}); message refused", qid=qid, sender=sender, error=error_words(e, paths=False))
            await _withdraw(hub, stored, qid)
            raise Rejected(451, "4.3.0 The delivery report asked for (NOTIFY=SUCCESS) could not be stored; message not kept, try again later") from None
    if failures:
        await _withdraw(hub, stored, qid)
        failures[0].raiseException()
    if stored:
        _log_delivery(hub, qid, sender, stored, len(message), session.client_ip)
    return qid


def _report_delivered(hub: Any, qid: str, sender: str, recipients: list[Verdict], message: bytes, dsn: tuple[str, str] | None, queued: bool = False) -> Any:
    """
    The success DSN (RFC 3461 §6.2, C{Action: delivered}) to C{sender}
    for the recipients of C{recipients} stored here whose NOTIFY has
    SUCCESS: into the sender's INBOX when the sender is local, else
    through the outbound queue, as a bounce goes. Made once the copies
    are durable and before the client is told 250 (L{_store_all}).

    With C{queued} (the message also has a relayed copy): nothing is
    stored here; returns the owed L{Recipient}s
    (C{owed="delivered"}) for the relayed copy's envelope, and the queue
    makes the report (L{twisted_mailhub.queue.relay.Relay._report_owed}).
    Else returns a Deferred that fires once the report is stored (or at
    once when none is made), or fails when it cannot be stored.
    """
    from twisted_mailhub.queue.dsn import build_dsn
    from twisted_mailhub.queue.storage import DELIVERED, QueuedMessage, Recipient

    wanted = [r for r in recipients if r.kind == "local" and "SUCCESS" in r.notify]
    if not wanted or not sender:
        return [] if queued else defer.succeed(None)
    relay = getattr(hub, "relay", None)
    local_sender = hub.accounts.is_local_domain(sender.rpartition("@")[2])
    account = hub.accounts.find(sender) if local_sender else None
    if account is None and (relay is None or local_sender):
        log.info("{qid}: success DSN to <{sender}> dropped: {why}", qid=qid, sender=sender, why="no such account" if relay is not None else "no outbound queue")
        return [] if queued else defer.succeed(None)
    rcpts = ", ".join(f"<{r.recipient}>" for r in wanted)
    reported = [
        Recipient(r.recipient, DELIVERED, 250, "2.0.0 delivered to maildrop", hub.hostname, notify=r.notify, orcpt=r.orcpt, owed="delivered" if queued else "")
        for r in wanted
    ]
    if queued:
        log.info("{qid}: success DSN to <{sender}> for {rcpts} owed, queued with the relayed copy", qid=qid, sender=sender, rcpts=rcpts)
        return reported
    now = time.time()
    ret, envid = dsn or ("", "")
    entry = QueuedMessage(
        id=qid, sender=sender, recipients=[], created=now, next_attempt=now, size=len(message), ret=ret, envid=envid
    )
    try:
        notice = build_dsn(entry, reported, message, hub.hostname, now, action="delivered")
    except Exception as e:  # noqa: BLE001 - a report is never worth the message
        log.error("{qid}: success DSN to <{sender}> not made ({error})", qid=qid, sender=sender, error=error_words(e, paths=False))
        return defer.succeed(None)
    if account is not None:
        d = defer.maybeDeferred(hub.store.deliver, account.address, notice).addCallback(lambda key: (account.address, key))
    else:
        d = defer.maybeDeferred(relay.enqueue, "", [sender], notice).addCallback(lambda rid: ("queue", rid))

    def sent(where):
        log.info("{qid}: success DSN sent to <{sender}> for {rcpts}", qid=qid, sender=sender, rcpts=rcpts)
        return where

    return d.addCallback(sent)


async def _withdraw(hub: Any, stored: list[tuple[str, str]], qid: str) -> None:
    """Remove stored copies (address, key) of a message that is being refused."""
    for address, key in stored:
        try:
            folder = hub.store.account(address).folder(INBOX)
            uids = [info.uid for info in folder.messages() if info.key == key]
            folder.expunge(uids)
            await defer.maybeDeferred(folder.flush)
        except Exception as e:
            log.error("{qid}: copy for <{address}> could not be removed after another copy failed ({error})", qid=qid, address=address, error=error_words(e, paths=False))


# The store's name as the delivery line shows it, by --store value (one or two in a process).
_backends: dict = {}


def _log_delivery(hub: Any, qid: str, sender: str, stored: list[tuple[str, str]], size: int, client: str) -> None:
    """
    One line per message delivered to local accounts, as Postfix logs
    (queue id, envelope sender, recipients, size, where stored, client).
    """
    store = hub.options.get("store")
    backend = _backends.get(store)
    if backend is None:
        backend = _backends[store] = (store or "store").split(":", 1)[0]  # never a DSN
    # Made here and given as one field: the log's format engine
    # (string.Formatter, in Python) costs per field, once per message.
    if len(stored) == 1:
        # (one string made, not three: a line per message)
        address, key = stored[0]
        log.info("{delivered}", delivered=f"delivered {qid} from=<{sender}> to=<{address}> size={size} stored={backend}:{address}/INBOX/{key} client={client or '-'}")
        return
    recipients = ",".join(f"<{a}>" for a, _ in stored)
    where = ",".join(f"{backend}:{address}/INBOX/{key}" for address, key in stored)
    log.info("{delivered}", delivered=f"delivered {qid} from=<{sender}> to={recipients} size={size} stored={where} client={client or '-'}")


class Rejected(Exception):
    def __init__(self, code: int, text: str):
        Exception.__init__(self, code, text)
        self.code = code
        self.text = text
