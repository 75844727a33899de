# -*- test-case-name: tests.test_smtp_server -*-
"""
The SMTP server of the hub: L{MailhubSMTP}, a subclass of Twisted's
L{twisted.mail.smtp.ESMTP}.

What is kept from Twisted: the protocol class and its attributes
(C{host}, C{ctx}, C{challengers}, C{startedTLS}, C{authenticated},
C{portal}), the SASL challengers (C{CramMD5Credentials},
C{smtp.LOGINCredentials}, C{PLAINCredentials}), C{IMessageDelivery} as the
avatar interface, and L{TimeoutMixin} for the idle timeout. What is
replaced, and why:

 - Input framing. Stock ESMTP is a C{LineOnlyReceiver}: one Python call
   per line of message data (slow), an over-long line buffered whole, and
   no notion of bare LF versus CRLF (SMTP smuggling, CVE-2023-51764). Here
   C{dataReceived} frames commands itself and takes DATA in chunks,
   searching for the end-of-data mark with C{bytes.find}.
 - Order of replies. Stock ESMTP runs the next pipelined command while an
   earlier one still waits on a Deferred, so replies can come out of order
   (Twisted #8126, #8128). Here a command that returns a Deferred holds
   back all later input until it has answered.
 - STARTTLS discards input that arrived with it (CVE-2011-0411); AUTH
   PLAIN/LOGIN are offered only under TLS (RFC 4954 §4); MAIL/RCPT
   parameters SIZE and BODY are honoured (RFC 1870, RFC 6152), and DSN's
   RET, ENVID, NOTIFY and ORCPT kept with the message (RFC 3461,
   L{twisted_mailhub.smtp.dsn}); EHLO
   advertises what works; every reply carries an enhanced status code
   (RFC 3463, RFC 2034); malformed or non-ASCII commands get C{500}.

States (C{self.state}):

 - C{COMMAND}: reading command lines.
 - C{AUTH}: a SASL exchange is open; each line is a base64 response.
 - C{DATA}: reading message data up to the end-of-data mark.
 - C{CLOSING}: QUIT or a fatal limit was hit; input is ignored.

Session line ends: the first command line decides. A session whose first
line ends in CRLF is a I{CRLF session}: only C{<CRLF>.<CRLF>} ends DATA,
and any bare CR or bare LF in the data gets the message refused after its
end (nothing stored, no second message started). A session whose first
line ends in a bare LF (someone typing with nc) is an I{LF session}: a
line holding only C{.} ends DATA, and the message is stored with CRLF.

The envelope (C{self.sender}, C{self.recipients}) is empty (no MAIL yet),
has a sender (after MAIL), or a sender and recipients (after RCPT).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import attr
from twisted.cred import credentials as _credentials
from twisted.cred import error as cred_error
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer
from twisted.mail._cred import PLAINCredentials

from twisted_mailhub.accounts import challenge_response_offered
from twisted_mailhub.errorwords import error_words, no_room
from twisted_mailhub.hub import is_secure, peer_host
from twisted_mailhub.lines import LineEngine, control_note, has_control, quote, telnet_prefix_text
from twisted_mailhub.smtp.delivery import (
    RecipientPolicy,
    Rejected,
    Session,
    deliver,
    envelope_of,
    has_hook,
    header_sender_refusal,
    run_filters,
)
from twisted_mailhub.smtp.dsn import DSNSyntaxError, parse_envid, parse_notify, parse_orcpt, parse_ret
from twisted_mailhub.smtp.record import MailRecord
from twisted_mailhub.filters import Reject
from twisted_mailhub.quota import QuotaExceeded
from twisted_mailhub.store.interfaces import is_not_writable, is_out_of_space, not_writable_reason
from twisted_mailhub.transcript import RecordingPortal, is_command_word, looks_like_a_secret, record_read

log = Logger()

#: An HTTP request line (RFC 9112 §3), as a browser sends one to any port
#: a page names: closes an SMTP session at once, as Postfix's
#: smtpd_forbidden_commands does.
_HTTP_REQUEST_LINE = re.compile(r"^(?:GET|POST|PUT|HEAD|OPTIONS|CONNECT|DELETE|PATCH) \S+ HTTP/\d(?:\.\d)?$")

COMMAND = "COMMAND"
AUTH = "AUTH"
DATA = "DATA"
CLOSING = "CLOSING"

# RFC 5321 §4.5.3.1.4 asks for 512 octets per command line; AUTH lines
# carry base64 (RFC 4954 §4 allows 12288), so commands get room to spare.
MAX_LINE = 4096

# RFC 5321 §4.5.3.1.6: a text line of message data is at most 1000
# octets with its CRLF: 998 before it. A message with a longer line is
# refused after DATA (550 5.5.2), as an Exim ACL on $max_received_linelength
# does (and Exim's transports refuse to send such lines, 998 by default),
# rather than stored for readers that cannot take it (Python's poplib
# refuses a line over 2048 octets) or folded as Postfix does when it sends
# (which changes the text and breaks DKIM signatures).
MAX_TEXT = 998
# Any run of more than MAX_TEXT octets without an LF holds a whole tile of
# this size, wherever the tiles begin: one find() per tile, not per line.
_TILE = (MAX_TEXT + 2) // 2


def _text_too_long(buf, start: int, stop: int) -> bool:
    """
    Whether C{buf[start:stop]} (a region of message data from the start of
    a line up to and including an LF) holds a line of more than
    L{MAX_TEXT} octets before its line end (CRLF, or a bare LF in a
    session of bare LFs). Costs one C{find} per L{_TILE} octets.
    """
    i = start
    while i + _TILE <= stop:
        if buf.find(b"\n", i, i + _TILE) >= 0:
            i += _TILE
            continue
        # No LF in this tile: measure its line exactly.
        begin = buf.rfind(b"\n", start, i) + 1 or start
        end = buf.find(b"\n", i + _TILE, stop)
        length = end - begin - (buf[end - 1] == 13)
        if length > MAX_TEXT:
            return True
        i = end + 1
    return False


# While a command waits on a Deferred, later input is held back; past this
# much the transport is paused so a flooding client cannot grow it.
MAX_HELD = 256 * 1024

# "FROM:<a@b>", and what people type: "from: <a@b>", "From : a@b". The
# colon is required (RFC 5321 §4.1.1.2): "MAIL FROM a@b" is refused with
# the right form rather than taught as correct.
_PATH = re.compile(r"\s*:\s*(<[^<>]*>|[^\s<>]+)\s*(.*)$")
_ADDRESS = re.compile(r"^[!-~]+$")
# RFC 6531 §3.3: with SMTPUTF8, a mailbox may hold UTF-8 characters (not
# controls, C1 controls or spaces).
_UTF8_ADDRESS = re.compile("^[!-~\u00a1-\U0010ffff]+$")


# RFC 5321 §4.1.2 Quoted-string: DQUOTE *(qtextSMTP / quoted-pairSMTP)
# DQUOTE, qtextSMTP = %d32-33 / %d35-91 / %d93-126 (a blank is fine),
# quoted-pairSMTP = "\\" %d32-126; RFC 6531 §3.3 adds UTF8-non-ascii to
# qtextSMTP (C1 controls and NBSP stay out, as in _UTF8_ADDRESS).
_QUOTED_LOCAL = re.compile(r'"(?:[ !#-\[\]-~]|\\[ -~])*"')
_QUOTED_LOCAL_UTF8 = re.compile('"(?:[ !#-\\[\\]-~\u00a1-\U0010ffff]|\\\\[ -~])*"')


def _address_ok(path: str, utf8: bool) -> bool:
    """
    Whether C{path} is an address we can take (RFC 5321 §4.1.2, RFC 6531
    §3.3): printable octets with at most one C{@}, not at either end, or a
    Quoted-string local part (C{"al ice"}, C{"a@b"}, C{"a\\"b"}) then
    C{@} and such a domain. A bare local part (no domain) is taken too:
    the session qualifies it with the default domain.
    """
    if path[:1] == '"':
        m = (_QUOTED_LOCAL_UTF8 if utf8 else _QUOTED_LOCAL).match(path)
        if m is None:
            return False
        rest = path[m.end() :]
        if not rest:
            return True
        return rest[0] == "@" and len(rest) > 1 and "@" not in rest[1:] and (_UTF8_ADDRESS if utf8 else _ADDRESS).match(rest) is not None
    if not (_UTF8_ADDRESS if utf8 else _ADDRESS).match(path):
        return False
    return path.count("@") <= 1 and not path.startswith("@") and not path.endswith("@")


def _other_domain_form(address: str) -> str | None:
    """
    C{address} with its domain as an A-label if it was a U-label, or as a
    U-label if it was an A-label (IDNA, RFC 5890), or L{None}: local
    domains may be configured in either form.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return None
    try:
        if domain.isascii():
            other = domain.encode("ascii").decode("idna")
        else:
            other = domain.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    return f"{local}@{other}" if other.lower() != domain.lower() else None

def dot_unstuff(segment: bytes) -> bytes:
    """
    The message in C{segment}: DATA as received with CRLF line ends, after
    the CRLF that ended the DATA command and before the final C{.}.
    RFC 5321 §4.5.2: "If the first character is a period and there are
    other characters on the line, the first character is deleted" -- from
    every such line, not only from C{..}: C{..x} is C{.x}, and a C{.single}
    that a client failed to stuff is C{single}, as Postfix stores it. Our
    relay client stuffs every line that starts with a period
    (L{twisted_mailhub.queue.client.dot_stuff}), so a message goes
    through unchanged.
    """
    return segment.replace(b"\r\n.", b"\r\n")[2:]


# --dsn-success-from: whose NOTIFY=SUCCESS is honoured (RFC 3461 §4.1).
DSN_SUCCESS_FROM = ("trusted", "anyone", "nobody")

HELP_TEXT = "2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"


@implementer(IHalfCloseableProtocol)
class MailhubSMTP(smtp.ESMTP):
    """
    One SMTP connection. Set up by L{MailhubSMTPFactory.buildProtocol}.
    """

    hub: Any = None
    listener = "smtp"
    require_auth = False
    # --submission-sender-match: a logged-in client's MAIL FROM must be its
    # own account's address (RFC 6409 §6.1).
    sender_must_match = False
    # --dsn-success-from (L{DSN_SUCCESS_FROM}): whose NOTIFY=SUCCESS counts.
    dsn_success_from = "trusted"
    max_recipients = 100
    idle_timeout = 300
    command_timeout = 120
    data_timeout = 1800
    login_timeout = 300
    # The last command was AUTH: an unknown one now is not echoed.
    _after_auth: bool | str = False  # True right after AUTH; "secret" after a base64 word hidden so
    # The session's record on the hub's event bus (with the console or
    # --transcript: hub.record_sessions), fed the connection's bytes by the
    # connection itself (smtp/record.py makes them C:/S: lines when someone
    # reads them): the hub's TranscriptFactory hands it over unwrapped
    # (records_own_session), so no wrapper sits between the socket and
    # this protocol (a call more per read and per reply); and whether a
    # TLS handshake is under way whose end becomes the record's "tls" event.
    records_own_session = True
    record: MailRecord | None = None
    _tls_pending = False
    # The Session of the last message (_session).
    _last_session: Session | None = None

    def __init__(self):
        smtp.ESMTP.__init__(self, chal={})
        self.state = COMMAND
        self.crlf_session: bool | None = None
        self.lines: LineEngine | None = None
        self.sender: str | None = None
        self.recipients: list = []
        self.helo = ""
        self.esmtp = False
        # The current transaction's MAIL had SMTPUTF8 (RFC 6531 §3.4).
        self.smtputf8 = False
        # The current transaction's RET and ENVID (RFC 3461 §4.3, §4.4):
        # "" when not given, else FULL or HDRS and the decoded id.
        self.dsn_ret = ""
        self.dsn_envid = ""
        self.account = None
        self.connection_id = "smtp"
        # Whether a delivery filter looks at MAIL / RCPT (most only look
        # at the message): if none does, those commands ask nobody.
        self._mail_filters = self._rcpt_filters = False
        self._implicit_tls = False

    # -- connection ---------------------------------------------------------

    def connectionMade(self):
        hub = self.hub
        record = None
        if getattr(hub, "record_sessions", False):
            # What TranscriptProtocol.connectionMade and makeConnection do
            # for the listeners it wraps: the session starts before anything
            # is said, its id is the connection's, a login is its event.
            transport = self.transport
            peer, local = transport.getPeer(), transport.getHost()
            record = self.record = hub.events.start(
                getattr(self.factory, "protocol_name", self.listener),
                (getattr(peer, "host", "?"), getattr(peer, "port", 0)),
                (getattr(local, "host", "?"), getattr(local, "port", 0)),
                kind=MailRecord,
            )
            self.portal = RecordingPortal(hub.client_portal(transport, self.listener), record)
            self.connection_id = record.id
            self._tls_pending = ISSLTransport.providedBy(transport)
        else:
            self.connection_id = hub.connection_made(self, self.listener)
        self.host = hub.hostname
        self.ctx = None  # STARTTLS takes hub.tls when asked (made lazily)
        self.policy = RecipientPolicy(hub)
        self.client_ip = peer_host(self.transport)
        # TLS from the first octet (smtps) is known now; STARTTLS sets startedTLS.
        self._implicit_tls = is_secure(self.transport)
        self._mail_filters = has_hook(hub.filters, "mail_from")
        self._rcpt_filters = has_hook(hub.filters, "rcpt_to")
        self.callLater = hub.reactor.callLater
        self.lines = LineEngine(
            self,
            hub.reactor,
            max_line=MAX_LINE,
            max_held=MAX_HELD,
            idle_timeout=self.idle_timeout,
            line_timeout=self.command_timeout,
            gather=True,  # every reply goes through self.lines (reply_raw)
        )
        # Replies: to the line engine, recorded first by the record's
        # writer (MailRecord.writer: the usual reply kept without a call).
        self._send_reply = self.lines.write if record is None else record.writer(self.lines.write)
        if record is None:
            # Input straight to the line engine: one call less per read.
            self.dataReceived = self.lines.data_received
        elif not self._tls_pending:
            self._recorded_input()
        self.reply_raw(b"220 " + self.host + b" ESMTP\r\n")
        self.lines.start(self.transport, login_timeout=self.login_timeout if self.require_auth else None)

    def connectionLost(self, reason=protocol.connectionDone):
        if self.record is not None:
            self.record.closed()
        logout, self._onLogout = self._onLogout, None
        if logout is not None:
            logout()
        if self.lines is not None:
            self.lines.connection_lost()
        self.state = CLOSING

    def timed_out(self, kind: str) -> None:
        """L{LineEngine} says a time limit passed (idle, line, login, raw: DATA)."""
        if kind == "login":
            if self.authenticated:
                return
            self.reply(421, "4.7.0 " + self.hub.hostname + " Error: too long without authentication")
        elif kind == "line":
            # A client trickling a command a byte at a time.
            self.reply(421, "4.4.2 " + self.hub.hostname + " Error: command took too long to send")
        elif kind == "raw":
            self.reply(421, "4.4.2 " + self.hub.hostname + " Error: message took too long to send")
        else:
            self.reply(421, "4.4.2 " + self.hub.hostname + " Error: timeout exceeded")
        self.close()

    def close(self):
        self.state = CLOSING
        self.lines.close()

    @property
    def secure(self) -> bool:
        return self.startedTLS or self._implicit_tls

    # -- output -------------------------------------------------------------

    def reply_raw(self, data: bytes) -> None:
        # Through the line engine: out at once, one send per reply (a
        # batch of pipelined commands' replies together); recorded as
        # written, in order after the read that asked for it.
        if self.state != CLOSING:
            self._send_reply(data)

    def reply(self, code: int, text: str, *more: str) -> None:
        """
        One reply, possibly multi-line (C{more} are the lines after the
        first), written in one piece.
        """
        if code >= 500:  # refusals by reason, for /metrics
            metrics = getattr(self.hub, "metrics", None)
            if metrics is not None:
                metrics.smtp_refused(self.listener, code, text)
        if not more:  # most replies: one line
            self.reply_raw(f"{code} {text}\r\n".encode("ascii", "replace"))
            return
        lines = (text,) + more
        out = [f"{code}-{line}\r\n" for line in lines[:-1]]
        out.append(f"{code} {lines[-1]}\r\n")
        self.reply_raw("".join(out).encode("ascii", "replace"))

    def refuse(self, code: int, text: str) -> None:
        """
        A refusal a filter chose: always a 4xx/5xx (a filter's C{Reject(250,
        ...)} must not look like success), on one line.
        """
        if not 400 <= code <= 599:
            code = 550
        self.reply(code, quote(" ".join(str(text).split()), 400, ascii=True) or "5.7.1 Refused")
        if code == 421:
            self.close()  # RFC 5321 §3.8: 421 closes the channel

    def sendCode(self, code, message=b""):
        # Twisted's helpers call this; route through reply().
        if isinstance(message, bytes):
            message = message.decode("ascii", "replace")
        lines = message.splitlines() or [""]
        self.reply(code, *lines)

    # -- input: the line engine's owner --------------------------------------

    def dataReceived(self, data: bytes) -> None:
        record = self.record
        if record is not None:
            record_read(self, record, data)
        self.lines.data_received(data)

    def _recorded_input(self) -> None:
        """
        While no TLS handshake is under way: each read recorded and handed
        to the line engine by a closure of the record in this method's
        place (L{MailRecord.reader}: the usual read kept without a call).
        """
        self.dataReceived = self.record.reader(self.lines.data_received)

    def line_received(self, line: bytes):
        if self.crlf_session is None:
            self.crlf_session = self.lines.crlf
        state = self.state
        if state == COMMAND:
            # _command, inline for the usual line (ASCII): three a message.
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                return self._command(line)
            if "\r" in text or "\0" in text:
                return self.reply(500, "5.5.2 Error: bad syntax" + control_note(text))
            parts = text.split(None, 1)
            if not parts:
                return self.reply(500, "5.5.2 Error: bad syntax (empty command)")
            upper = parts[0].upper()
            handler = getattr(self, "smtp_" + upper, None)
            if handler is None or self._after_auth:
                return self._command(line)
            if upper == "AUTH":
                self._after_auth = True
            return handler(parts[1].strip() if len(parts) > 1 else "")
        if state == AUTH:
            # The exchange's base64 line (RFC 4954 §4), typed in the same
            # telnet client as the commands: its Telnet commands go too.
            return self._auth_response(telnet_prefix_text(line))
        return None

    def line_too_long(self) -> None:
        # RFC 5321 §4.5.3.1.4; an endless line is dropped as it arrives.
        if self.state == AUTH:
            # RFC 4954 §6: this ends the AUTH command, or the client's next
            # command would be read as the exchange's next response.
            self.state, self.challenger = COMMAND, None
            return self.reply(500, "5.5.6 Authentication Exchange line is too long")
        self.reply(500, "5.5.2 Error: line too long")

    def command_failed(self, reason) -> bool:
        # A bug must cost one reply, not the connection.
        if self.state == AUTH:
            self.state, self.challenger = COMMAND, None
        if is_out_of_space(reason.value):
            # RFC 3463 §3.4 (X.3.1): one log line, no traceback.
            log.warn("{cid}: {why}", cid=self.connection_id, why=no_room(reason.value))
            self.reply(452, "4.3.1 Insufficient system storage")
            return True
        self.reply(451, "4.3.0 Error: local error in processing")
        return False

    # IHalfCloseableProtocol: a class pipes a whole session in
    # (`printf 'helo me\n...quit\n' | nc -N host 8025`) and the client shuts
    # down its sending side at once. Twisted would drop the connection on
    # that EOF, losing the replies still to come (a delivery's 250 waits on
    # the disk). Instead every command that arrived is answered, then the
    # connection closes. A message cut off mid-DATA is not stored.
    def readConnectionLost(self) -> None:
        self.lines.read_connection_lost()

    def writeConnectionLost(self) -> None:
        self.close()

    # -- commands -----------------------------------------------------------

    def _command(self, raw: bytes):
        # Telnet commands a person's telnet client sent (Ctrl-C: IAC IP,
        # IAC DO TIMING-MARK) are no part of the command (lines.telnet_prefix_text);
        # such a line is not ASCII, so the fast path sends it here.
        raw = telnet_prefix_text(raw)
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            # RFC 6531 §3.3: UTF-8 only in the addresses of MAIL and RCPT,
            # and only with SMTPUTF8 (checked there); §3.7.4.2: in the
            # String of VRFY and EXPN ("String may include Non-ASCII
            # characters", SMTPUTF8 after it optional).
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = None
            if line is None or line.lstrip()[:4].upper() not in ("MAIL", "RCPT", "VRFY", "EXPN"):
                return self.reply(500, "5.5.2 Error: command contains non-ASCII characters")
        if "\r" in line or "\0" in line:
            return self.reply(500, "5.5.2 Error: bad syntax" + control_note(line))
        line = line.strip()
        if not line:
            return self.reply(500, "5.5.2 Error: bad syntax (empty command)")
        parts = line.split(None, 1)
        verb = parts[0]
        upper = verb.upper()
        handler = getattr(self, "smtp_" + upper, None)
        after_auth, self._after_auth = self._after_auth, upper == "AUTH"
        if handler is None and _HTTP_REQUEST_LINE.match(line):
            # A web page's form posted to this port (the "HTML form
            # protocol attack"): the request's body would be read as
            # commands, from the browser's address. Its first line ends it.
            self.reply(421, f"4.7.0 {self.hub.hostname} Error: this is an SMTP server, and that was an HTTP request (RFC 9112 §3): closing")
            return self.close()
        if handler is None:
            secret = after_auth and looks_like_a_secret(line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line, following=after_auth == "secret")
            if secret:
                # One base64 word after another (AUTH LOGIN's user name,
                # then its password): each is hidden, not only the first.
                self._after_auth = "secret"
            if secret or (after_auth is True and not is_command_word(upper)):
                # Right after an AUTH that ended (refused before STARTTLS,
                # say): this may be the password the client sent anyway.
                return self.reply(500, "5.5.2 Error: command not recognized (not shown: after AUTH it may be a password); try HELP")
            return self.reply(500, f"5.5.2 Error: command '{quote(verb, 32, ascii=True)}' not recognized; try HELP{control_note(verb)}")
        return handler(parts[1] if len(parts) > 1 else "")

    def _reset_envelope(self) -> None:
        self.sender = None
        self.recipients = []
        self.smtputf8 = False
        self.dsn_ret = self.dsn_envid = ""

    def smtp_HELO(self, rest: str):
        if not rest or has_control(rest):
            return self.reply(501, "5.5.4 Syntax: HELO hostname" + control_note(rest))
        self.helo, self.esmtp = rest.split()[0], False
        self._reset_envelope()
        self.reply(250, f"{self.hub.hostname}")

    def smtp_EHLO(self, rest: str):
        if not rest or has_control(rest):
            return self.reply(501, "5.5.4 Syntax: EHLO hostname" + control_note(rest))
        self.helo, self.esmtp = rest.split()[0], True
        self._reset_envelope()
        lines = [
            f"{self.hub.hostname} Hello {quote(self.helo, 64, ascii=True)} [{self.client_ip}]",
            f"SIZE {self.hub.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "DSN",
        ]
        if not self.secure and self._tls_context() is not None:
            lines.append("STARTTLS")
        mechanisms = self.mechanisms()
        if mechanisms:
            lines.append("AUTH " + " ".join(mechanisms))
        lines.append("HELP")
        self.reply(250, *lines)

    def mechanisms(self) -> list[str]:
        # RFC 4954 §4: no plaintext password mechanisms without TLS, on any
        # listener, loopback included (RFC 8314).
        # CRAM-MD5 only while it can log someone in (plain passwords kept).
        challenges = ["CRAM-MD5"] if challenge_response_offered(self.hub) else []
        if self.secure:
            return ["PLAIN", "LOGIN", *challenges]
        return challenges

    def smtp_NOOP(self, rest: str):
        self.reply(250, "2.0.0 Ok")

    def smtp_RSET(self, rest: str):
        if rest:  # RFC 5321 §4.1.1.5: "RSET" CRLF, no argument
            return self.reply(501, "5.5.4 Syntax: RSET")
        self._reset_envelope()
        self.reply(250, "2.0.0 Ok")

    def smtp_QUIT(self, rest: str):
        if rest:  # RFC 5321 §4.1.1.10: "QUIT" CRLF, no argument
            return self.reply(501, "5.5.4 Syntax: QUIT")
        self.reply(221, "2.0.0 Bye")
        self.close()

    def smtp_VRFY(self, rest: str):
        # RFC 5321 §3.5.3: 252 rather than confirm or deny accounts. RFC
        # 6531 §3.7.4.2: "VRFY" SP String [ SP "SMTPUTF8" ], the String
        # perhaps UTF-8; the reply names no mailbox, so it stays ASCII
        # with or without the parameter.
        words = rest.split()
        if len(words) > 1 and words[-1].upper() == "SMTPUTF8":
            words = words[:-1]
        if not words:
            return self.reply(501, "5.5.4 Syntax: VRFY address [SMTPUTF8]")
        self.reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, rest: str):
        self.reply(502, "5.5.1 Error: EXPN is not offered")

    def smtp_HELP(self, rest: str):
        self.reply(214, HELP_TEXT)

    def smtp_STARTTLS(self, rest: str):
        if rest:
            return self.reply(501, "5.5.4 Syntax: STARTTLS")
        if self.secure:
            return self.reply(503, "5.5.1 Error: TLS already active")
        ctx = self._tls_context()
        if ctx is None or not hasattr(self.transport, "startTLS"):
            return self.reply(454, "4.7.0 TLS not available")
        self.reply(220, "2.0.0 Ready to start TLS")
        # CVE-2011-0411: anything the client sent after STARTTLS, before
        # the handshake, was sent in the clear; it must not be executed.
        self.lines.discard_pending()
        # RFC 3207 §4.2: the session starts over; the client sends EHLO.
        self.helo, self.esmtp = "", False
        self._reset_envelope()
        self.ctx = ctx
        self.transport.startTLS(ctx)
        self.startedTLS = True
        if self.record is not None:
            # The handshake's end becomes the record's "tls" event (dataReceived).
            self._tls_pending = True
            self.__dict__.pop("dataReceived", None)

    def _tls_context(self):
        """The hub's TLS options, or None (and a log line) if it has none."""
        try:
            return self.hub.tls
        except Exception:
            log.failure("{cid}: no TLS certificate; STARTTLS not offered", cid=self.connection_id)
            return None

    # -- AUTH (RFC 4954) ------------------------------------------------------

    def smtp_AUTH(self, rest: str):
        if self.authenticated:
            return self.reply(503, "5.5.1 Error: already authenticated")
        if self.sender is not None:
            return self.reply(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
        parts = rest.split()
        if not parts or len(parts) > 2:
            return self.reply(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
        mechanism = parts[0].upper()
        if mechanism == "CRAM-MD5" and len(parts) == 2 and "CRAM-MD5" in self.mechanisms():
            # RFC 4954 §4: an initial response to a mechanism that starts
            # with the server's challenge is refused with 501 (it was
            # ignored and the challenge sent, as if it had not been given).
            return self.reply(501, "5.5.4 Error: CRAM-MD5 starts with the server's challenge: send AUTH CRAM-MD5 alone")
        if mechanism in ("PLAIN", "LOGIN") and not self.secure:
            return self.reply(538, "5.7.11 Encryption required for requested authentication mechanism; use STARTTLS first")
        if mechanism == "PLAIN":
            self.challenger = PLAINCredentials()
        elif mechanism == "LOGIN":
            self.challenger = smtp.LOGINCredentials()
        elif mechanism == "CRAM-MD5" and "CRAM-MD5" in self.mechanisms():
            self.challenger = _credentials.CramMD5Credentials(self.host)
        else:
            offered = " ".join(self.mechanisms()) or "none before STARTTLS"
            return self.reply(504, f"5.5.4 Unrecognized authentication type; offered: {offered}")
        self.state = AUTH
        if len(parts) == 2 and mechanism != "CRAM-MD5":
            # RFC 4954 §4: "=" is an empty initial response.
            initial = b"" if parts[1] == "=" else parts[1].encode("ascii")
            if mechanism == "LOGIN":
                self.challenger.getChallenge()  # the user name prompt it answers
            return self._auth_response(initial, initial_response=True)
        self._challenge()

    def _challenge(self):
        challenge = self.challenger.getChallenge()
        self.reply_raw(b"334 " + base64.b64encode(challenge) + b"\r\n")

    def _auth_response(self, line: bytes, initial_response: bool = False):
        if line.strip() == b"*":
            self.state, self.challenger = COMMAND, None
            return self.reply(501, "5.7.0 Authentication aborted")
        try:
            decoded = base64.b64decode(line.strip(), validate=True) if line.strip() else b""
        except (binascii.Error, ValueError):
            self.state, self.challenger = COMMAND, None
            return self.reply(501, "5.5.2 Error: cannot decode the AUTH response (base64 expected)")
        try:
            self.challenger.setResponse(decoded)
        except Exception:
            self.state, self.challenger = COMMAND, None
            return self.reply(501, "5.5.2 Error: malformed AUTH response for this mechanism")
        if isinstance(self.challenger, PLAINCredentials):
            authzid = decoded.split(b"\0", 1)[0]
            if authzid and authzid != self.challenger.username:
                # RFC 4616 §2: acting for another identity is not offered.
                self.state, self.challenger = COMMAND, None
                return self.reply(535, "5.7.8 Error: authentication failed (authorization identity not allowed)")
        if self.challenger.moreChallenges():
            return self._challenge()
        self.state = COMMAND
        d = self.portal.login(self.challenger, None, smtp.IMessageDelivery)
        self.challenger = None
        return d.addCallbacks(self._logged_in, self._login_failed)

    def _logged_in(self, result):
        interface, avatar, logout = result
        self.authenticated = True
        self.account = avatar.account
        self._onLogout = logout
        self.lines.logged_in()
        self.reply(235, "2.7.0 Authentication successful")

    def _login_failed(self, reason):
        if reason.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
            return self.reply(535, "5.7.8 Error: authentication failed")
        log.failure("{cid}: AUTH failed oddly", reason, cid=self.connection_id)
        self.reply(454, "4.7.0 Temporary authentication failure")

    @property
    def authenticated_as(self) -> str | None:
        return self.account.address if self.authenticated and self.account is not None else None

    # -- the envelope ---------------------------------------------------------

    def _session(self) -> Session:
        """
        What the trace header needs of this session now: the Session of
        the last message while nothing in it changed (its trace line's
        head made once: L{Session.received}), else a new one.
        """
        # secure and authenticated_as, inline: once per message.
        authenticated = self.account.address if self.authenticated and self.account is not None else None
        tls = self.startedTLS or self._implicit_tls
        hostname = self.hub.hostname
        last = self._last_session
        if (
            last is not None
            and last.helo == self.helo
            and last.tls == tls
            and last.authenticated == authenticated
            and last.utf8 == self.smtputf8
            and last.esmtp == self.esmtp
            and last.hostname == hostname
        ):
            return last
        session = self._last_session = Session(self.helo, self.client_ip, hostname, self.esmtp, tls, authenticated, self.smtputf8)
        return session

    @staticmethod
    def _parse_path(rest: str, keyword: str):
        """
        C{FROM:<a@b> SIZE=10}, C{FROM: <a@b>}, C{from a@b}: the path, its
        parameters (keyword in upper case -> value as given) and the first
        keyword given twice (or L{None}), or L{None} if it cannot be read.
        """
        if rest[: len(keyword)].upper() != keyword:
            return None
        n = len(keyword)
        if rest.startswith(":<", n) and rest.endswith(">") and rest.find("<", n + 2) < 0 and rest.find(">", n + 2) == len(rest) - 1:
            # The common form, "FROM:<a@b>" with no parameters: what the
            # expression below gives for it, without running it.
            path = rest[n + 2 : -1].strip()
            if path.startswith("@") and ":" in path:
                path = path.split(":", 1)[1]  # RFC 5321 §4.1.2 source route
            return path, {}, None
        m = _PATH.match(rest[n:])
        if m is None:
            return None
        path, params = m.group(1), m.group(2)
        if path.startswith("<"):
            path = path[1:-1].strip()
        if path.startswith("@") and ":" in path:
            path = path.split(":", 1)[1]  # RFC 5321 §4.1.2 source route
        parsed = {}
        repeated = None
        for p in params.split():
            key, _, value = p.partition("=")
            key = key.upper()
            if key in parsed and repeated is None:
                repeated = key
            parsed[key] = value
        return path, parsed, repeated

    def smtp_MAIL(self, rest: str):
        if self.require_auth and not self.authenticated:
            # (STARTTLS named only where it is still to come: not on smtps,
            # nor after it)
            if self.startedTLS or self._implicit_tls:
                return self.reply(530, "5.7.0 Authentication required; AUTH first")
            return self.reply(530, "5.7.0 Authentication required; AUTH first (after STARTTLS)")
        if self.sender is not None:
            return self.reply(503, "5.5.1 Error: nested MAIL command; RSET first")
        parsed = self._parse_path(rest, "FROM")
        if parsed is None:
            return self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
        path, params, repeated = parsed
        if repeated is not None:
            return self.reply(501, f"5.5.4 Syntax: {quote(repeated, 32, ascii=True)} given twice in MAIL")
        ret = envid = ""
        utf8 = "SMTPUTF8" in params
        if path and not path.isascii() and not utf8 and _address_ok(path, True):
            return self.reply(
                553, f"5.6.7 <{quote(path, ascii=True)}>: a non-ASCII address needs MAIL FROM:<...> SMTPUTF8 (RFC 6531)"
            )
        if path and not _address_ok(path, utf8):
            return self.reply(
                553, f"5.1.7 <{quote(path, ascii=True)}>: Sender address rejected: bad address syntax{control_note(path)}"
            )
        for key, value in params.items():
            if key == "SIZE":
                if not (value.isascii() and value.isdigit()):
                    return self.reply(501, "5.5.4 Syntax: SIZE=<octets>")
                if int(value) > self.hub.max_message_size:
                    return self.reply(552, "5.3.4 Message size exceeds fixed limit")
            elif key == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):
                    return self.reply(555, f"5.5.4 Unsupported BODY={quote(value, 20, ascii=True)}; use 7BIT or 8BITMIME")
            elif key == "AUTH":
                pass  # RFC 4954 §5: accepted and not passed on
            elif key == "SMTPUTF8":
                if value:
                    return self.reply(501, "5.5.4 Syntax: SMTPUTF8 takes no value")
            elif key == "RET" or key == "ENVID":
                # RFC 3461 §4.3, §4.4
                try:
                    if key == "RET":
                        ret = parse_ret(value)
                    else:
                        envid = parse_envid(value)
                except DSNSyntaxError as e:
                    return self.reply(501, f"5.5.4 Syntax: {e}")
            elif key == "NOTIFY" or key == "ORCPT":
                return self.reply(555, f"5.5.4 {key} belongs to RCPT, not MAIL (RFC 3461 4)")
            else:
                return self.reply(555, f"5.5.4 Unsupported option: {quote(key, 32, ascii=True)}")
        if path and "@" not in path:
            path = self.policy.qualify(path)
        if self.sender_must_match and path and self.authenticated and self.account is not None:
            own = self.account.address
            if path.casefold() != own.casefold():
                # RFC 6409 §6.1: the MSA may insist the envelope sender is
                # the submitter's own (Postfix's reject_sender_login_mismatch).
                return self.reply(
                    553, f"5.7.1 <{quote(path, ascii=True)}>: Sender address rejected: not owned by user {quote(own, ascii=True)}"
                )
        if self._mail_filters:
            envelope = envelope_of(path, (), self._session())
            d = run_filters(self.hub.filters, "mail_from", envelope)
            return d.addCallback(self._mail_filtered, path, utf8, ret, envid)
        # _mail_ok, inline: once per message.
        self.sender = path
        self.recipients = []
        self.smtputf8 = utf8
        self.dsn_ret, self.dsn_envid = ret, envid
        self.reply_raw(b"250 2.1.0 Ok\r\n")

    def _mail_filtered(self, result, path, utf8=False, ret="", envid=""):
        if isinstance(result, Reject):
            return self.refuse(result.code, result.text)
        self._mail_ok(path, utf8, ret, envid)

    def _mail_ok(self, path, utf8=False, ret="", envid=""):
        self.sender = path
        self.recipients = []
        self.smtputf8 = utf8
        self.dsn_ret, self.dsn_envid = ret, envid
        self.reply_raw(b"250 2.1.0 Ok\r\n")  # reply(250, "2.1.0 Ok"), made once

    def smtp_RCPT(self, rest: str):
        if self.sender is None:
            return self.reply(503, "5.5.1 Error: need MAIL command")
        parsed = self._parse_path(rest, "TO")
        if parsed is None:
            return self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
        path, params, repeated = parsed
        notify = orcpt = ""
        if params:
            if repeated is not None:
                return self.reply(501, f"5.5.4 Syntax: {quote(repeated, 32, ascii=True)} given twice in RCPT")
            for key, value in params.items():
                if key != "NOTIFY" and key != "ORCPT":
                    if key in ("RET", "ENVID", "SIZE", "BODY", "SMTPUTF8"):
                        return self.reply(555, f"5.5.4 {key} belongs to MAIL, not RCPT")
                    return self.reply(555, f"5.5.4 Unsupported option: {quote(key, 32, ascii=True)}")
                # RFC 3461 §4.1, §4.2; RFC 6533 §4 (utf-8 ORCPT)
                try:
                    if key == "NOTIFY":
                        notify = parse_notify(value)
                    else:
                        orcpt = parse_orcpt(value, self.smtputf8)
                except DSNSyntaxError as e:
                    return self.reply(501, f"5.5.4 Syntax: {e}")
        if path and not path.isascii() and not self.smtputf8 and _address_ok(path, True):
            return self.reply(
                553, f"5.6.7 <{quote(path, ascii=True)}>: a non-ASCII address needs MAIL FROM:<...> SMTPUTF8 (RFC 6531)"
            )
        if not path or not _address_ok(path, self.smtputf8):
            return self.reply(
                553, f"5.1.3 <{quote(path, ascii=True)}>: Recipient address rejected: bad address syntax{control_note(path)}"
            )
        if len(self.recipients) >= self.max_recipients:
            return self.reply(452, "4.5.3 Error: too many recipients")
        # (authenticated_as and Verdict.accepted, inline: once per recipient)
        authenticated = self.account.address if self.authenticated and self.account is not None else None
        verdict = self.policy.check(path, authenticated)
        if verdict.code >= 300:
            # The domain may be configured as an A-label and given as a
            # U-label, or the other way round (RFC 5890).
            other = _other_domain_form(self.policy.qualify(path))
            if other is not None:
                second = self.policy.check(other, authenticated)
                if second.accepted and second.code == 250 and self.hub.accounts.is_local_domain(other.rpartition("@")[2]):
                    verdict = second
            if verdict.code >= 300:
                return self.reply(verdict.code, verdict.text)
        if "SUCCESS" in notify and not self._success_honoured():
            # Backscatter: anyone can give a forged MAIL FROM on the MX
            # port; a delivered report would go to that address. As
            # Sendmail's PrivacyOptions=noreceipts, SUCCESS is dropped and
            # the rest of NOTIFY kept (SUCCESS alone leaves NEVER: the
            # client asked to hear of no failure). Failure and delay
            # reports are what the hub sends without NOTIFY anyway.
            kept = [w for w in notify.split(",") if w != "SUCCESS"]
            notify = ",".join(kept) or "NEVER"
            log.info(
                "smtp: NOTIFY=SUCCESS for <{rcpt}> from {ip} not honoured (--dsn-success-from {who})",
                rcpt=quote(path, ascii=True), ip=self.client_ip, who=self.dsn_success_from,
            )
            verdict = attr.evolve(verdict, text=verdict.text + " (NOTIFY=SUCCESS is not honoured for this client: log in to ask for a delivery report)")
        if notify or orcpt:
            verdict = attr.evolve(verdict, notify=notify, orcpt=orcpt)
        if self._rcpt_filters:
            envelope = envelope_of(self.sender, [r.address for r in self.recipients], self._session())
            d = run_filters(self.hub.filters, "rcpt_to", envelope, verdict.recipient)
            return d.addCallback(self._rcpt_filtered, verdict)
        self.recipients.append(verdict)
        if verdict.text == "2.1.5 Ok":
            self.reply_raw(b"250 2.1.5 Ok\r\n")  # reply(250, "2.1.5 Ok"), made once
        else:
            self.reply(250, verdict.text)

    def _success_honoured(self) -> bool:
        """
        Whether this client may ask for success reports (NOTIFY=SUCCESS,
        RFC 3461 §4.1): as C{--dsn-success-from} says; with C{trusted}, a
        client that logged in or one from C{--trusted-networks}.
        """
        who = self.dsn_success_from
        if who == "anyone":
            return True
        if who == "nobody":
            return False
        return bool(self.authenticated) or self.client_ip in self.hub.trusted

    def _rcpt_filtered(self, result, verdict):
        if isinstance(result, Reject):
            return self.refuse(result.code, result.text)
        self.recipients.append(verdict)
        self.reply(250, verdict.text)

    # -- DATA -------------------------------------------------------------------

    def smtp_DATA(self, rest: str):
        if rest:
            return self.reply(501, "5.5.4 Syntax: DATA")
        if self.sender is None:
            return self.reply(503, "5.5.1 Error: need MAIL command")
        if not self.recipients:
            return self.reply(503, "5.5.1 Error: need RCPT command")
        self.state = DATA
        self.lines.start_raw(self._data_chunk, timeout=self.data_timeout)
        self._too_big = False
        self._too_long = False
        self._scanned = 0
        if self.crlf_session is False:
            self._data = bytearray(b"\n")
            self._line_start = 1
            self.reply(354, "End data with a line holding only a dot (.)")
        else:
            # The CRLF that ended DATA counts as the line end before a
            # first line of ".".
            self._data = bytearray(b"\r\n")
            self._line_start = 2  # where the first line of the message begins
            self.reply_raw(b"354 End data with <CR><LF>.<CR><LF>\r\n")

    def _find_end(self) -> tuple[int, int]:
        """(index of the end-of-data mark in self._data, its length) or (-1, 0)."""
        data, start = self._data, self._scanned
        if self.crlf_session is False:
            a = data.find(b"\n.\n", start)
            b = data.find(b"\n.\r\n", start)
            if a >= 0 and (b < 0 or a < b):
                return a, 3
            if b >= 0:
                return b, 4
            return -1, 0
        i = data.find(b"\r\n.\r\n", start)
        return (i, 5) if i >= 0 else (-1, 0)

    def _data_chunk(self, data) -> tuple[bytes, defer.Deferred] | None:
        """
        Take input as message data (the line engine's raw handler). Past the
        size limit only the last few octets are kept, to find the end of
        data. At the end: the input after it, and the Deferred of the reply.
        """
        if (
            len(self._data) == 2
            and data.__class__ is bytes
            and data[-5:] == b"\r\n.\r\n"
            and self.crlf_session is not False
            and data[:1] != b"."
            and not (self._too_big or self._too_long)
        ):
            end = data.find(b"\r\n.\r\n")
            if end == len(data) - 5:
                return b"", self._whole_message(data, end + 2)
        before = len(self._data)
        self._data += data
        end, mark = self._find_end()
        if end < 0:
            if not (self._too_big or self._too_long):
                self._check_lines(before, len(self._data))
            self._scanned = max(0, len(self._data) - 4)
            if self._too_long or len(self._data) - 6 > self.hub.max_message_size:
                # RFC 5321 §4.5.3.1.7: refuse, but do not keep the excess.
                self._too_big = not self._too_long
                self._data = self._data[-4:]
                self._scanned = 0
            return None
        head = 2 if self.crlf_session is not False else 1
        # Everything up to and including the line end before ".".
        body_end = end + (2 if self.crlf_session is not False else 1)
        if not (self._too_big or self._too_long) and body_end > before:
            self._check_lines(before, body_end)
        segment = bytes(self._data[:body_end])
        rest = bytes(self._data[end + mark :])
        self._data = bytearray()
        self.state = COMMAND
        return rest, self._end_of_data(segment, head)

    def _check_lines(self, before: int, stop: int) -> None:
        """
        Look at C{self._data[before:stop]}, just taken, for a line longer
        than L{MAX_TEXT} (sets C{_too_long}). C{_line_start} is where the
        line that was unfinished before it began.
        """
        buf = self._data
        first = buf.find(b"\n", before, stop)
        if first < 0:
            # Still the same line: too long once it cannot end in time.
            self._too_long = stop - self._line_start > MAX_TEXT + 1
            return
        if first - self._line_start - (buf[first - 1] == 13) > MAX_TEXT:
            self._too_long = True
            return
        last = buf.rfind(b"\n", first, stop)
        if last - first > MAX_TEXT and _text_too_long(buf, first + 1, last + 1):
            self._too_long = True
            return
        self._line_start = last + 1
        self._too_long = stop - self._line_start > MAX_TEXT + 1

    def _whole_message(self, data: bytes, size: int) -> defer.Deferred:
        """
        L{_end_of_data} for a message that came whole in one read of a
        CRLF session (what most clients send: the message, then CRLF "."
        CRLF, nothing else; its first line no "."): the same checks, in the
        same order, with the same replies, on the read itself, the message
        being C{data[:size]} (its lines with their CRLFs): no copy of it
        into the DATA buffer and out again. Its count goes to the session's
        record (L{twisted_mailhub.smtp.record.MailRecord.message_read}),
        which then need not count it itself.
        """
        self._data = bytearray()
        self.state = COMMAND
        sender, recipients = self.sender, self.recipients
        dsn = (self.dsn_ret, self.dsn_envid) if self.dsn_ret or self.dsn_envid else None
        session = self._session()
        self._reset_envelope()
        if size > self.hub.max_message_size:
            self.reply(552, "5.3.4 Error: message too big for this hub")
            return defer.succeed(None)
        if size > MAX_TEXT + 2 and _text_too_long(data, 0, size):
            self.reply(550, "5.5.2 Error: message refused: a line of it is longer than 1000 octets with its line end (RFC 5321 4.5.3.1.6)")
            return defer.succeed(None)
        segment = data[:size]
        # SMTP smuggling (CVE-2023-51764): every CR and LF in a CRLF pair.
        pairs = segment.count(b"\r\n")
        if segment.count(b"\r") != pairs or segment.count(b"\n") != pairs:
            self.reply(550, "5.5.2 Error: message refused: bare <CR> or <LF> in data (lines must end with <CR><LF>)")
            return defer.succeed(None)
        record = self.record
        if record is not None:
            record.message_read(pairs, size)
        # dot_unstuff (RFC 5321 §4.5.2): its first line starts with no ".".
        message = segment.replace(b"\r\n.", b"\r\n")
        if self.sender_must_match and self._header_sender_refused(message):
            return defer.succeed(None)
        d = deliver(self.hub, session, sender, recipients, message, dsn)
        d.addCallbacks(self._delivered, self._not_delivered)
        return d

    def _end_of_data(self, segment: bytes, head: int) -> defer.Deferred:
        sender, recipients = self.sender, self.recipients
        dsn = (self.dsn_ret, self.dsn_envid) if self.dsn_ret or self.dsn_envid else None
        session = self._session()
        self._reset_envelope()
        if self._too_big or len(segment) - head > self.hub.max_message_size:
            self.reply(552, "5.3.4 Error: message too big for this hub")
            return defer.succeed(None)
        if self._too_long:
            self.reply(550, "5.5.2 Error: message refused: a line of it is longer than 1000 octets with its line end (RFC 5321 4.5.3.1.6)")
            return defer.succeed(None)
        if self.crlf_session is not False:
            # SMTP smuggling (CVE-2023-51764): in a CRLF session every CR
            # and every LF must belong to a CRLF pair.
            pairs = segment.count(b"\r\n")
            if segment.count(b"\r") != pairs or segment.count(b"\n") != pairs:
                self.reply(550, "5.5.2 Error: message refused: bare <CR> or <LF> in data (lines must end with <CR><LF>)")
                return defer.succeed(None)
        else:
            segment = segment.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        message = dot_unstuff(segment)
        if self.sender_must_match and self._header_sender_refused(message):
            return defer.succeed(None)
        d = deliver(self.hub, session, sender, recipients, message, dsn)
        d.addCallbacks(self._delivered, self._not_delivered)
        return d

    def _header_sender_refused(self, message: bytes) -> bool:
        """
        C{--submission-sender-match} after DATA: a logged-in client's
        message whose author (C{From:}, or C{Sender:} with several From
        addresses) is not its account gets C{550 5.7.1}
        (L{header_sender_refusal}); nothing is kept. Whether it was.
        """
        if not self.authenticated or self.account is None:
            return False
        refusal = header_sender_refusal(message, self.account.address, self.policy.qualify)
        if refusal is None:
            return False
        # RFC 5321 §4.2.5: after the end of data, 550 (not 553, an
        # answer to MAIL) refuses the message.
        self.reply(550, refusal)
        return True

    def _delivered(self, qid: str) -> None:
        # Not logged per message (it costs a tenth of the time per message);
        # --transcript shows it. reply(250, ...), inline: a queue id is ASCII.
        if self.state != CLOSING:
            self._send_reply(b"250 2.0.0 Ok: queued as %s\r\n" % qid.encode("ascii"))

    def _not_delivered(self, reason) -> None:
        if reason.check(Rejected):
            e = reason.value
            return self.refuse(e.code, e.text)
        if reason.check(QuotaExceeded):
            # RFC 3463 §3.3 (X.2.2): the message would not fit; nothing was kept.
            log.info("{cid}: message refused: {why}", cid=self.connection_id, why=str(reason.value))
            e = reason.value
            if e.incoming > e.limit:
                # RFC 3463 §3.3 X.2.3: longer than the mailbox may ever take
                return self.reply(552, f"5.2.3 <{e.address}>: Message larger than the mailbox's quota")
            return self.reply(552, f"5.2.2 <{e.address}>: Mailbox full")
        if is_out_of_space(reason.value):
            # RFC 3463 §3.4 (X.3.1): one line, no traceback; nothing was kept.
            log.warn("{cid}: message not stored: {why}", cid=self.connection_id, why=no_room(reason.value))
            return self.reply(452, "4.3.1 Insufficient system storage")
        if is_not_writable(reason.value):
            # RFC 3463 §3.3 (X.2.0, mailbox status): the hub may not write
            # the mailbox (its owner, a read-only mount); one line, no
            # traceback; the message waits in the sender's queue.
            log.warn("{cid}: message not stored: the mailbox cannot be written ({why})", cid=self.connection_id, why=error_words(reason.value))
            return self.reply(450, f"4.2.0 Mailbox unavailable: the server may not write it ({not_writable_reason(reason.value)}); message not stored, try again later")
        from twisted_mailhub.store.interfaces import StoreUnavailable

        if reason.check(StoreUnavailable):
            # The database of the store or the queue is down (RFC 3463 X.3.0,
            # temporary): one line, no traceback; nothing was kept.
            log.warn("{cid}: message not stored: {why}", cid=self.connection_id, why=str(reason.value))
            return self.reply(451, "4.3.0 Mail system temporarily unavailable; message not stored, try again later")
        if isinstance(reason.value, OSError):
            # The disk or the data folder failed (an I/O error; the folder
            # moved or removed under the hub): an operator's matter, one
            # line with the path, no traceback; the sender retries.
            log.error("{cid}: message not stored: {why}", cid=self.connection_id, why=error_words(reason.value))
        else:
            log.failure("{cid}: delivery failed", reason, cid=self.connection_id)
        self.reply(451, "4.3.0 Error: local error in processing; message not stored")


class MailhubSMTPFactory(protocol.ServerFactory):
    """
    Makes L{MailhubSMTP} connections for one listener.
    """

    protocol = MailhubSMTP
    noisy = False

    def __init__(self, hub: Any, listener: str, require_auth: bool = False, settings: dict | None = None):
        self.hub = hub
        self.listener = listener
        self.require_auth = require_auth
        self.settings = dict(settings or {})

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        p.hub = self.hub
        p.listener = self.listener
        p.require_auth = self.require_auth
        for key, value in self.settings.items():
            setattr(p, key, value)
        return p
