# -*- test-case-name: tests.test_queue_client -*-
"""
The outbound ESMTP client: one connection to one host carries every
message queued for it (RFC 5321 §4.5.3; one transaction per message, RSET
between them).

It is Twisted's L{ESMTPClient} (EHLO with HELO fallback, STARTTLS, AUTH),
with what a relaying MTA needs on top:

 - PIPELINING (RFC 2920) when offered: RSET, MAIL, RCPTs and DATA of a
   transaction in one write, so a message costs two round trips, not five;
 - C{MAIL FROM:<...> SIZE=n} when the server offers SIZE, and a message
   larger than the server's announced limit is failed at once with
   C{552 5.3.4} instead of being sent (RFC 1870 §6);
 - the message is sent as it is stored (CRLF already) with only
   dot-stuffing (RFC 5321 §4.5.2); Twisted's FileSender path would turn
   CRLF into CR CR LF;
 - per-recipient outcomes: each RCPT reply counts for its recipient, the
   reply to the final dot for those accepted;
 - STARTTLS is opportunistic (no certificate check, RFC 7435) unless
   C{--relay-require-tls}, when a server without it is a temporary failure;
 - with C{--transcript}, the session is logged as C:/S: lines with the
   AUTH exchange masked.

States (the C{phase} of a job): C{waiting} -> C{sending} -> C{done}. A job
still C{waiting} when the connection ends was never tried on this host, so
the caller may offer it to the next MX; a job C{sending} when the
connection drops gets a temporary failure for its undecided recipients.
"""

from __future__ import annotations

import re
from typing import Any

import attr
from twisted.internet import defer, protocol
from twisted.mail import smtp
from twisted.python import failure

from twisted_mailhub.errorwords import error_words
from twisted_mailhub.smtp.dsn import orcpt_for_wire, xtext_encode
from twisted_mailhub.transcript import Transcriber, next_connection_id

WAITING = "waiting"
SENDING = "sending"
DONE = "done"


@attr.s(auto_attribs=True, frozen=True)
class Outcome:
    """
    What one recipient's attempt came to: the reply code (C{-1} when there
    was no reply: the connection failed) and text.
    """

    code: int
    reply: str
    remote: str = ""
    # Where a 2xx leaves the sender's DSN requests (RFC 3461 §5.2, §6.2):
    # stored here (local), or with a next hop that offers DSN and was
    # given NOTIFY and ORCPT (hop_dsn); else relayed to one that does not.
    local: bool = False
    hop_dsn: bool = False

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        return f"{self.code} {self.reply}" if self.code > 0 else self.reply


@attr.s(auto_attribs=True, eq=False)
class Job:
    """
    One message for one destination: its sender, the recipients that go to
    this destination, and the message bytes; and its DSN parameters (RFC
    3461 §4), passed on when the server offers DSN: C{ret}, C{envid} (as
    the queue keeps them, decoded) and C{dsn}, recipient -> (NOTIFY, ORCPT).
    """

    id: str
    sender: str
    recipients: list[str]
    message: bytes
    phase: str = WAITING
    outcomes: dict[str, Outcome] = attr.ib(factory=dict)
    ret: str = ""
    envid: str = ""
    dsn: dict = attr.ib(factory=dict)


def dot_stuff(message: bytes) -> bytes:
    """
    The DATA payload: dot-stuffed, CRLF terminated, then the final dot
    (RFC 5321 §4.5.2).
    """
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def needs_smtputf8(job: "Job") -> bool:
    """
    Whether C{job} can only go with SMTPUTF8 (RFC 6531 §3.2): it has a
    non-ASCII address. (Raw UTF-8 in a header alone is asked for with
    SMTPUTF8 when the next hop offers it, see L{wants_smtputf8}, but still
    sent with 8BITMIME when it does not, as mail with such headers always
    was and as Postfix does.)
    """
    return not job.sender.isascii() or not all(r.isascii() for r in job.recipients)


def wants_smtputf8(job: "Job") -> bool:
    """Whether to ask for SMTPUTF8 when offered: a non-ASCII address or header (RFC 6532)."""
    if needs_smtputf8(job):
        return True
    end = job.message.find(b"\r\n\r\n")
    return not job.message[: end if end >= 0 else len(job.message)].isascii()


def quote_path(address: str) -> bytes:
    """
    C{<address>} for MAIL/RCPT, in UTF-8 when it is not ASCII (RFC 6531
    §3.3). The address is kept as the client gave it (RFC 5321 form,
    checked by the SMTP session): a Quoted-string local part goes on as it
    came (C{"a\\"b"@x}, C{"al ice"@x}); Twisted's C{quoteaddr} reparsed
    it as an RFC 5322 header address and cut C{"a\\"b"@x} to C{a\\}.
    """
    return b"<" + address.encode("utf-8") + b">"


def _text(resp: Any) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())


class RelayClient(smtp.ESMTPClient):
    """
    Sends L{Job}s over one connection; see the module docstring.
    """

    timeout = 300  # RFC 5321 §4.5.3.2 suggests 5 minutes or more per reply
    debug = False

    def __init__(self, jobs: list[Job], remote: str, identity: str, secret: bytes | None = None,
                 username: bytes | None = None, context: Any = None, require_tls: bool = False,
                 transcript: bool = False, reactor: Any = None):
        smtp.ESMTPClient.__init__(self, secret, context, identity)
        if reactor is not None:
            self.callLater = reactor.callLater  # TimeoutMixin's clock
        self.jobs = jobs
        self.remote = remote
        self.requireTransportSecurity = require_tls
        self.extensions: dict[bytes, bytes | None] = {}
        self.size_limit = 0
        self.job: Job | None = None
        self.error: Outcome | None = None
        self.done = defer.Deferred()
        # STARTTLS progress: "" (not tried), "handshake", "up". A connection
        # lost in "handshake" is a server whose TLS we cannot speak.
        self.tls_state = ""
        # transcript: True (log lines only), or the hub's session-event bus
        # (the outbound session is a console session too, when it records).
        self.transcriber = None
        if transcript is True:
            self.transcriber = Transcriber(next_connection_id("relay"))
        elif transcript and getattr(transcript, "recording", False):
            host, _, port = remote.rpartition(":")
            record = transcript.start("relay", (identity if isinstance(identity, str) else identity.decode("ascii", "replace"), 0), (host or remote, port))
            self.transcriber = Transcriber(record.id, record)
        if secret is not None and username is not None:
            self.requireAuthentication = True
            self.registerAuthenticator(smtp.PLAINAuthenticator(username))
            self.registerAuthenticator(smtp.LOGINAuthenticator(username))
            # The password goes only over TLS (Postfix's default,
            # smtp_sasl_security_options = noplaintext): a server that
            # offers no STARTTLS, or a man in the middle who struck it from
            # the EHLO reply, got it in the clear.
            self.requireTransportSecurity = True
            self._password_needs_tls = not require_tls

    # -- transcript ------------------------------------------------------

    def sendLine(self, line: bytes) -> None:
        if self.transcriber is not None:
            self.transcriber.client_bytes(line + b"\r\n")
        smtp.ESMTPClient.sendLine(self, line)

    def dataReceived(self, data: bytes) -> None:
        if self.transcriber is not None:
            self.transcriber.server_bytes(data)
        smtp.ESMTPClient.dataReceived(self, data)

    # -- the session -----------------------------------------------------

    _password_needs_tls = False  # TLS required for --smarthost-auth's sake alone

    def esmtpTLSRequired(self, code=-1, resp=None):
        why = "the smarthost password (--smarthost-auth) is sent only over TLS" if self._password_needs_tls else "--relay-require-tls"
        self.sendError(smtp.TLSRequiredError(-1, f"{self.remote} does not offer STARTTLS: {why}", self.log.str()))

    def esmtpState_starttls(self, code, resp):
        self.tls_state = "handshake"
        smtp.ESMTPClient.esmtpState_starttls(self, code, resp)

    def esmtpState_serverConfig(self, code, resp):
        if self.tls_state == "handshake":
            self.tls_state = "up"  # the EHLO after STARTTLS came back over TLS
            if self.transcriber is not None and self.transcriber.record is not None:
                from twisted_mailhub.transcript import tls_description

                self.transcriber.record.encrypted(tls_description(self.transport))
        items = {}
        for line in resp.splitlines():
            e = line.split(None, 1)
            if e:
                items[e[0].upper()] = e[1] if len(e) > 1 else None
        self.extensions = items
        size = items.get(b"SIZE")
        self.size_limit = int(size) if size and size.strip().isdigit() else 0
        self.tryTLS(code, resp, items)

    def _next_job(self) -> Job | None:
        """
        The next job to send, refusing on the spot those larger than the
        server's SIZE (RFC 1870 §6: do not send what it said it will refuse).
        """
        while True:
            job = next((j for j in self.jobs if j.phase == WAITING), None)
            if job is not None and b"SMTPUTF8" not in self.extensions and needs_smtputf8(job):
                # RFC 6531 §3.2: no downgrade; the sender gets a DSN.
                refusal = Outcome(
                    553,
                    f"5.6.7 {self.remote} does not offer SMTPUTF8 and the message has a non-ASCII address (RFC 6531)",
                    self.remote,
                )
                job.outcomes = {r: refusal for r in job.recipients}
                job.phase = DONE
                continue
            if job is None or not (self.size_limit and len(job.message) > self.size_limit):
                return job
            refusal = Outcome(552, f"5.3.4 message is {len(job.message)} octets, {self.remote} takes at most {self.size_limit}", self.remote)
            job.outcomes = {r: refusal for r in job.recipients}
            job.phase = DONE

    def _mail_line(self, job: Job) -> bytes:
        line = b"MAIL FROM:" + quote_path(job.sender)
        if b"SMTPUTF8" in self.extensions and wants_smtputf8(job):
            line += b" SMTPUTF8"  # RFC 6531 §3.4
        if b"SIZE" in self.extensions:
            line += b" SIZE=%d" % len(job.message)
        if b"8BITMIME" in self.extensions and not job.message.isascii():
            line += b" BODY=8BITMIME"  # RFC 6152 §3
        if b"DSN" in self.extensions:
            # RFC 3461 §5.2.1: passed on as the client gave them.
            if job.ret:
                line += b" RET=" + job.ret.encode("ascii")
            if job.envid:
                line += b" ENVID=" + xtext_encode(job.envid).encode("ascii")
        return line

    def _rcpt_line(self, job: Job, address: str) -> bytes:
        line = b"RCPT TO:" + quote_path(address)
        params = job.dsn.get(address) if b"DSN" in self.extensions else None
        if params:
            notify, orcpt = params
            if notify:
                line += b" NOTIFY=" + notify.encode("ascii")
            if orcpt:
                line += b" ORCPT=" + orcpt_for_wire(orcpt).encode("ascii")
        return line

    def smtpState_from(self, code, resp):
        job = self._next_job()
        if job is None:
            self.job = None
            self._from = None
            self._disconnectFromServer()
            return
        self._begin(job)

    def _begin(self, job: Job, rset: bool = False) -> None:
        job.phase = SENDING
        self.job = job
        self._from = job.sender
        if b"PIPELINING" in self.extensions:
            # RFC 2920 §3.1: RSET (ending the previous transaction), MAIL,
            # every RCPT and DATA go in one write; the replies come back in
            # order and are matched up in _pipelined_reply.
            self._pipeline = (["RSET"] if rset else []) + ["MAIL"] + list(job.recipients) + ["DATA"]
            self._mail_reply: tuple[int, bytes] = (-1, b"")
            self._rcpt_replies: list[tuple[str, int, bytes]] = []
            if rset:
                self.sendLine(b"RSET")
            self.sendLine(self._mail_line(job))
            for r in job.recipients:
                self.sendLine(self._rcpt_line(job, r))
            self.sendLine(b"DATA")
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self._pipelined_reply
            return
        self._failresponse = self.smtpTransferFailed
        self.sendLine(self._mail_line(job))
        self._expected = [250]
        self._okresponse = self.smtpState_to

    def _pipelined_reply(self, code, resp):
        what = self._pipeline.pop(0)
        if what == "RSET":
            return  # a failed RSET shows in the MAIL reply that follows
        if what == "MAIL":
            self._mail_reply = (code, resp)
            return
        if what != "DATA":
            self._rcpt_replies.append((what, code, resp))
            return
        accepted = [a for a, c, _ in self._rcpt_replies if c in smtp.SUCCESS]
        if self._mail_reply[0] != 250:
            outcome = (self._mail_reply[0], self._mail_reply[1], 0, [])
        else:
            outcome = (code, resp, len(accepted), self._rcpt_replies)
        if code == 354 and outcome[2]:
            self.successAddresses = accepted
            self.toAddressesResult = self._rcpt_replies
            self._failresponse = self.smtpTransferFailed
            self.smtpState_data(code, resp)
        elif code == 354:
            # DATA accepted with nothing to deliver (a server that should
            # have said 554): end it with an empty body, then carry on.
            self.sendLine(b".")
            self._okresponse = self._failresponse = lambda c, r: self._transaction_over(outcome)
        else:
            self._transaction_over(outcome)

    def _transaction_over(self, outcome) -> None:
        self.sentMail(*outcome, self.log)
        self.toAddressesResult = []
        self._from = None
        self._after_transaction()

    def smtpState_msgSent(self, code, resp):
        if self._from is not None:
            self.sentMail(code, resp, len(self.successAddresses), self.toAddressesResult, self.log)
        self.toAddressesResult = []
        self._from = None
        self._after_transaction()

    def _after_transaction(self) -> None:
        if b"PIPELINING" in self.extensions:
            job = self._next_job()
            if job is not None:
                self._begin(job, rset=True)
                return
        elif any(j.phase == WAITING for j in self.jobs):
            # RSET between transactions (RFC 5321 §4.1.1.5), not before QUIT.
            self.sendLine(b"RSET")
            self._expected = smtp.SUCCESS
            self._okresponse = self.smtpState_from
            return
        self.job = None
        self._disconnectFromServer()

    def smtpState_toOrData(self, code, resp):
        # Twisted's, with a UTF-8 path where SMTPUTF8 allows it (its
        # quoteaddr takes ASCII only).
        if self.lastAddress is not None:
            self.toAddressesResult.append((self.lastAddress, code, resp))
            if code in smtp.SUCCESS:
                self.successAddresses.append(self.lastAddress)
        try:
            self.lastAddress = next(self.toAddresses)
        except StopIteration:
            if self.successAddresses:
                self.sendLine(b"DATA")
                self._expected = [354]
                self._okresponse = self.smtpState_data
            else:
                return self.smtpState_msgSent(code, "No recipients accepted")
        else:
            self.sendLine(self._rcpt_line(self.job, self.lastAddress))

    def getMailTo(self):
        return list(self.job.recipients) if self.job else []

    def smtpState_data(self, code, resp):
        payload = dot_stuff(self.job.message)
        if self.transcriber is not None:
            self.transcriber.client_bytes(payload)
        self.resetTimeout()
        self._expected = smtp.SUCCESS
        self._okresponse = self.smtpState_msgSent
        if len(payload) <= DATA_CHUNK:
            self.transport.write(payload)
        else:
            self.transport.registerProducer(_MessageSender(self, payload), False)

    # The slow-reader watch (pace.py) judges this connection: a remote
    # server that takes the message at under 4 KiB/s does not hold a queue
    # slot for ever.
    paced = True
    listener_name = "relay"

    def slow_reader(self, seconds: float, octets: int) -> None:
        """
        The remote server took what was sent at under 4 KiB/s for
        C{seconds} (L{twisted_mailhub.pace}): a temporary failure for the
        recipients under way (the queue logs it and tries again later,
        RFC 5321 §4.5.4.1) and the connection is aborted.
        """
        from twisted_mailhub.lines import MIN_TRANSFER_RATE

        rate = int(MIN_TRANSFER_RATE) // 1024
        self.error = Outcome(-1, f"{self.remote} took the message at under {rate} KiB/s for {seconds:.0f} seconds ({octets} octets)", self.remote)
        self.transport.abortConnection()

    def sentMail(self, code, resp, numOk, addresses, log):
        job = self.job
        if job is None:
            return
        final = Outcome(code, _text(resp), self.remote, hop_dsn=b"DSN" in self.extensions)
        outcomes = {}
        for address, rcode, rresp in addresses:
            address = address.decode("utf-8", "replace") if isinstance(address, bytes) else str(address)
            outcomes[address] = Outcome(rcode, _text(rresp), self.remote) if rcode not in smtp.SUCCESS else final
        for r in job.recipients:
            outcomes.setdefault(r, final)
        job.outcomes = outcomes
        job.phase = DONE
        self.job = None

    def sendError(self, exc):
        code = getattr(exc, "code", -1)
        resp = getattr(exc, "resp", None) or str(exc)
        if not isinstance(code, int) or not 400 <= code < 600:
            code = -1
        elif code >= 500:
            # A session-level refusal (EHLO, STARTTLS, AUTH, a 5xx greeting)
            # says nothing final about the recipients: try again later.
            resp = f"{code} {_text(resp)}"
            code = -1
        self.error = Outcome(code, _text(resp), self.remote)
        smtp.ESMTPClient.sendError(self, exc)

    def connectionLost(self, reason=protocol.connectionDone):
        smtp.ESMTPClient.connectionLost(self, reason)
        if self.tls_state == "handshake":
            why = self.error.reply if self.error is not None else _lost_reason(reason)
            self.error = Outcome(-1, f"STARTTLS with {self.remote} failed: {why}", self.remote)
        if self.transcriber is not None:
            self.transcriber._emit("S", b"[connection closed]")
            if self.transcriber.record is not None:
                self.transcriber.record.closed()
        lost = self.error or Outcome(-1, f"connection to {self.remote} lost: {_lost_reason(reason)}", self.remote)
        for job in self.jobs:
            if job.phase == SENDING:
                for r in job.recipients:
                    job.outcomes.setdefault(r, lost)
                job.phase = DONE
        if self.error is None and any(job.phase != DONE for job in self.jobs):
            # Lost before a message was under way (after the greeting, at
            # EHLO): the reason the relay gives its jobs, not "no host to
            # try" (it had one, and it hung up).
            self.error = lost
        if not self.done.called:
            self.done.callback(self)


def _lost_reason(reason: failure.Failure) -> str:
    # The hub's words (errorwords), not Twisted's "Connection was closed
    # cleanly." : this text goes into the queue listing and the bounce.
    text = error_words(reason.value, paths=False) if isinstance(reason, failure.Failure) else str(reason)
    return re.sub(r"\s+", " ", text)[:200]


#: The piece of a DATA payload handed to the transport at a time.
DATA_CHUNK = 256 * 1024


class _MessageSender:
    """
    A pull producer of one DATA payload (RFC 5321 §4.1.1.4) in
    L{DATA_CHUNK} pieces. Each piece the transport asks for resets the
    client's reply timer: the timer is for the remote server's reply (RFC
    5321 §4.5.3.2: 3 minutes per data block, 10 for the final dot), and a
    25 MiB message written at once to a server taking it at an honest
    20 KiB/s (21 minutes) was cut at 300 s and never delivered. A server
    that takes it at under 4 KiB/s is the slow-reader watch's
    (L{twisted_mailhub.pace}).
    """

    def __init__(self, client: "RelayClient", payload: bytes):
        self.client = client
        self.payload = payload
        self.offset = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        piece = self.payload[self.offset:self.offset + DATA_CHUNK]
        self.offset += len(piece)
        self.client.resetTimeout()
        if self.offset >= len(self.payload):
            self.stopped = True
            self.client.transport.unregisterProducer()
        self.client.transport.write(piece)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class RelayClientFactory(protocol.ClientFactory):
    """
    Builds one L{RelayClient} for one connection attempt.
    """

    noisy = False

    def __init__(self, make_client):
        self.make_client = make_client
        self.client: RelayClient | None = None

    def buildProtocol(self, addr):
        self.client = self.make_client()
        self.client.factory = self
        return self.client
