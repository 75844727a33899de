# -*- test-case-name: tests.test_imap_server -*-
"""
The IMAP4rev1 server: Twisted's L{imap4.IMAP4Server} for the command line,
literals, LOGIN, AUTHENTICATE and STARTTLS, and our own handlers for
everything that touches mail, working on the store directly.

States (RFC 3501 §3), kept in Twisted's C{state} attribute, which also picks
the command table (C{unauth_LOGIN}, C{select_FETCH}, ...):

    NOT_AUTHENTICATED --LOGIN/AUTHENTICATE--> AUTHENTICATED
    AUTHENTICATED --SELECT/EXAMINE--> SELECTED --CLOSE/UNSELECT--> AUTHENTICATED
    any --LOGOUT--> LOGOUT

and C{parseState} says how the next line is read: C{command}, C{pending}
(the rest of a command after a literal) or C{idle} (RFC 2177: only C{DONE}
ends it).

Theory of operation:

 - This module keeps the connection: states, reading lines and literals,
   LOGIN/AUTHENTICATE/STARTTLS, dispatch and IDLE. The commands live by
   concern in mixins, one module each:

     view.py        the selected-mailbox view and its untagged updates
     fetch.py       FETCH and STORE (structure itself: message.py)
     search.py      SEARCH (ESEARCH, WITHIN)
     sort.py        SORT and THREAD
     mailboxes.py   SELECT, STATUS, APPEND and the other mailbox commands
     listing.py     LIST and LSUB (LIST-EXTENDED, LIST-STATUS)
     append.py      APPEND (MULTIAPPEND, CATENATE with urls.py, literal8, UTF8)
     binary.py      FETCH BINARY
     utf8.py        UTF8=ACCEPT and the downgraded view of UTF-8 headers
     rev2.py        ENABLE IMAP4rev2 / UTF8=ACCEPT and what rev2 changes
     searchres.py   SEARCH RETURN (SAVE) and $
     changes.py     CLOSE, EXPUNGE, COPY, MOVE, UID
     condstore.py   ENABLE, CONDSTORE and QRESYNC (modseqs in every command)
     extensions.py  ID, NAMESPACE, and what CAPABILITY advertises
     compress.py    COMPRESS=DEFLATE (a layer under the session)
     contexts.py    ESEARCH/ESORT return options, PARTIAL, live searches
     notify.py      NOTIFY: notices about other mailboxes and events
     wire.py        astrings, mailbox names, dates, flag lists, literals

 - Before a command runs, and before its tagged OK/NO, changes made by
   others are told to the client (L{SelectedFolder.untagged}).
 - Every literal size is checked before a single octet of it is read:
   malformed or negative sizes (GHSA-2qrf-pqgx-qh9v) are C{BAD}, and sizes
   over the limit (C{--max-message-size} for APPEND, a few KiB for anything
   else and before login) are refused; a non-synchronizing literal
   (LITERAL+, RFC 7888) that is too large ends the connection, since its
   octets are already on their way.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Iterator

from twisted.cred.credentials import CramMD5Credentials
from twisted.internet import abstract, defer
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.protocols import basic
from twisted.python import failure

from twisted_mailhub.accounts import challenge_response_offered
from twisted_mailhub.hub import is_secure
from twisted_mailhub.imap import wire
from twisted_mailhub.imap.changes import ChangeCommands
from twisted_mailhub.imap import compress, condstore, contexts, notify, sort
from twisted_mailhub.imap.compress import CompressCommands
from twisted_mailhub.imap.contexts import ContextCommands
from twisted_mailhub.imap.notify import NotifyCommands
from twisted_mailhub.imap.condstore import CondStoreCommands
from twisted_mailhub.imap.deadlines import SessionDeadlines
from twisted_mailhub.imap.extensions import EXTENSIONS, ExtensionCommands
from twisted_mailhub.imap.fetch import FetchCommands, ResponseStream
from twisted_mailhub.imap.listing import ListCommands
from twisted_mailhub.imap.append import AppendCommands
from twisted_mailhub.imap.rev2 import SessionModes
from twisted_mailhub.imap.searchres import SearchResults
from twisted_mailhub.imap.utf8 import Utf8Session
from twisted_mailhub.imap.mailboxes import MailboxCommands
from twisted_mailhub.imap.quota import QuotaCommands
from twisted_mailhub.imap.search import SearchCommands
from twisted_mailhub.imap.sort import SortCommands
from twisted_mailhub.imap.view import SelectedFolder
from twisted_mailhub.imap.wire import LITERAL as _LITERAL
from twisted_mailhub.imap.wire import LITERAL_SIZE as _LITERAL_SIZE
from twisted_mailhub.lines import control_note, flush_now, has_control, quote, telnet_prefix_text
from twisted_mailhub.errorwords import error_words, not_writable_words
from twisted_mailhub.store.interfaces import NoSuchFolder, StoreUnavailable, is_not_writable

log = Logger()

# Literals before login, and literals that are not APPEND's message.
SMALL_LITERAL = 8192
MAX_LINE = 65536
IDLE_POLL = 0.5  # seconds between cheap looks at new/ and cur/ while IDLE

# A client that sends commands and does not read the answers: past this
# many octets waiting to be sent, no more of its commands are read until it
# has taken all but OUTPUT_LOW of them (looked at every OUTPUT_POLL s), so
# what the hub holds for it stays bounded (POP3, SMTP and FTP stop reading
# the same way: twisted_mailhub.lines).
OUTPUT_HIGH = 1024 * 1024
OUTPUT_LOW = 256 * 1024
OUTPUT_POLL = 0.05


def unsent_octets(transport: Any) -> int:
    """Octets written to C{transport} (or the connection it wraps: transcript, TLS) and not yet sent."""
    for _ in range(8):
        if isinstance(transport, abstract.FileDescriptor):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
    return 0


# Commands whose untagged EXPUNGE would shift sequence numbers under the
# client (RFC 3501 §7.4.1).
_NO_EXPUNGE_DURING = {b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD"}


# Octets a tag may not hold besides controls and space: the atom-specials
# and "+" (RFC 9051 §9, tag and ASTRING-CHAR).
_NOT_IN_TAG = frozenset(b'(){%*"\\+')


class _SettledLogins:
    """
    A session's portal whose logins (LOGIN and AUTHENTICATE) succeed only
    once the account's folder changes made so far are durable (the store's
    C{durable()}, where it has one): the first login's special-use folders
    (imap.prepare_account) are on disk before the OK after which a LIST
    shows them (design rule 6). A flush that failed is C{NO [UNAVAILABLE]}.
    """

    def __init__(self, portal: Any):
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._portal, name)

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        def settle(result: tuple) -> Any:
            from twisted_mailhub.errorwords import error_words

            durable = getattr(getattr(result[1], "store_account", None), "durable", None)
            if durable is None:
                return result

            def failed(reason: failure.Failure) -> None:
                result[2]()  # (the avatar's logout)
                raise StoreUnavailable(f"the account's folders were not saved: {error_words(reason.value)}")

            return durable().addCallbacks(lambda _: result, failed)

        return self._portal.login(credentials, mind, *interfaces).addCallback(settle)


class _DiscardedLiteral:
    """The octets of a refused command's non-synchronizing literal, read and dropped."""

    def __init__(self, size: int):
        self.left = size

    def write(self, data: bytes) -> bytes | None:
        """Drops up to the octets left; returns what follows them once all are read."""
        if len(data) < self.left:
            self.left -= len(data)
            return None
        rest = data[self.left :]
        self.left = 0
        return rest


class IMAPServer(
    FetchCommands, SearchCommands, SortCommands, ListCommands, AppendCommands, SessionModes, SearchResults, Utf8Session, MailboxCommands, ChangeCommands, CondStoreCommands, ExtensionCommands, QuotaCommands,
    CompressCommands, ContextCommands, NotifyCommands, imap4.IMAP4Server
):
    """
    One IMAP connection. C{hub} is the shared L{twisted_mailhub.hub.Hub}.
    """

    IDENT = b"mailhub IMAP4rev1 ready"
    MAX_LENGTH = MAX_LINE
    timeOut = 60
    POSTAUTH_TIMEOUT = 30 * 60

    selected: SelectedFolder | None = None
    store_account: Any = None
    _command: bytes = b""
    _tag: bytes | None = None
    _nonsync: bool = False
    _idle_tag: bytes | None = None
    _idle_poll: Any = None
    _held = 0
    _output_held = False  # input held until a client that stopped reading reads (OUTPUT_HIGH)
    _lost = False  # connectionLost came
    _in_command = 0
    _reading = 0  # dataReceived calls under way (LineReceiver re-enters it)
    _auth_tag: bytes = b"*"

    def __init__(self, hub: Any, listener: str):
        self.hub = hub
        self.listener = listener
        host = hub.hostname
        challengers = {b"CRAM-MD5": lambda: CramMD5Credentials(host.encode("idna") if isinstance(host, str) else host)}
        imap4.IMAP4Server.__init__(self, challengers, contextFactory=None)
        self._plain = dict(challengers)
        self._plain[b"PLAIN"] = imap4.PLAINCredentials
        self._plain[b"LOGIN"] = imap4.LOGINCredentials

    # -- arguments ---------------------------------------------------------------

    arg_astring = wire.arg_astring
    arg_finalastring = wire.arg_finalastring

    # -- connection ------------------------------------------------------------

    def connectionMade(self):
        self.connection_id = self.hub.connection_made(self, self.listener)
        self.portal = _SettledLogins(self.portal)
        if not challenge_response_offered(self.hub):
            # CRAM-MD5 only while it can log someone in (plain passwords kept).
            self._plain.pop(b"CRAM-MD5", None)
            self.challengers.pop(b"CRAM-MD5", None)
        self.secure = is_secure(self.transport)
        if not self.secure:
            self.ctx = self.hub.tls
        if self.secure or self.hub.is_trusted(self.transport):
            # RFC 3501 §6.2.3 / §11.1: plaintext logins only where nobody
            # can listen in: over TLS or from a trusted network.
            self.challengers = dict(self._plain)
        imap4.IMAP4Server.connectionMade(self)

    def connectionLost(self, reason):
        self._lost = True
        if getattr(self, "deadlines", None) is not None:
            self.deadlines.stop()
        self._end_idle()
        self.end_contexts()
        self.end_notify()
        self._unselect()
        imap4.IMAP4Server.connectionLost(self, reason)

    def lineLengthExceeded(self, line):
        self.sendLine(b"* BYE line too long: at most %d octets per line" % self.MAX_LENGTH)
        self.transport.loseConnection()

    def plaintext_allowed(self) -> bool:
        return self.secure or self.startedTLS or self.hub.is_trusted(self.transport)

    def capabilities(self):
        caps: dict[bytes, Any] = {}
        if self.state == "unauth":
            if not self.plaintext_allowed():
                caps[b"LOGINDISABLED"] = None
            if not self.secure and not self.startedTLS and self.ctx is not None and self.canStartTLS:
                caps[b"STARTTLS"] = None
            caps[b"AUTH"] = sorted(self.challengers)
        for name in EXTENSIONS:
            caps[name] = None
        if getattr(self.hub, "quotas", None) is not None:
            caps[b"QUOTA"] = None  # RFC 9208, twisted_mailhub.imap.quota
            caps[b"QUOTA=RES-STORAGE"] = None
        for name in sort.CAPABILITIES + contexts.CAPABILITIES + notify.CAPABILITIES:
            caps[name] = None
        if self.state != "unauth":
            for name in compress.CAPABILITIES:
                caps[name] = None  # RFC 4978: after login
        if self.modseq_offered():
            for name in condstore.CAPABILITIES:
                caps[name] = None
        return caps

    def do_STARTTLS(self, tag):
        if self.secure or self.startedTLS:
            # RFC 9051 §6.2.1: "BAD - STARTTLS received after a successful
            # TLS negotiation" (NO is for a server that cannot start TLS);
            # it was NO, as Twisted answers.
            self.sendBadResponse(tag, b"STARTTLS not allowed now: TLS is already in use")
            return
        imap4.IMAP4Server.do_STARTTLS(self, tag)
        if self.startedTLS:
            # Whatever came after STARTTLS in the same packet was sent in
            # the clear: a man in the middle may have put it there
            # (CVE-2011-0411, RFC 3501 §6.2.1). It is dropped, not obeyed.
            self.clearLineBuffer()
            self.challengers = dict(self._plain)

    unauth_STARTTLS = (do_STARTTLS,)

    def do_LOGIN(self, tag, user, passwd):
        if not self.plaintext_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] LOGIN is disabled here: STARTTLS first")
            return
        # A failed login is answered late (slowed down, login.py) from a
        # Deferred while Twisted reads on: a pipelined LOGOUT would close the
        # connection before the NO. Later commands wait for the answer, in
        # LineReceiver's buffer (not Twisted's C{blocked} lines: those are cut
        # at CRLFs, so a literal's octets in them were run as commands).
        self._hold_input()
        imap4.IMAP4Server.do_LOGIN(self, tag, user, passwd)

    def authenticateLogin(self, user, passwd):
        """
        The portal's answer to LOGIN, as a Deferred to which Twisted adds
        the callbacks that write the OK or NO; the commands held behind the
        LOGIN go on once those have run.
        """
        answered = defer.Deferred()

        def relay(result):
            if isinstance(result, failure.Failure):
                answered.errback(result)
            else:
                answered.callback(result)
            self._release_input()

        defer.maybeDeferred(imap4.IMAP4Server.authenticateLogin, self, user, passwd).addBoth(relay)
        return answered

    unauth_LOGIN = (do_LOGIN, arg_astring, arg_finalastring)

    def do_AUTHENTICATE(self, tag, args):
        """
        AUTHENTICATE (RFC 3501 §6.2.2), with an initial response on the
        command line (SASL-IR, RFC 4959: C{=} for an empty one); a client
        response of C{*} cancels with BAD.
        """
        words = args.split()
        if not words or len(words) > 2:
            self.sendBadResponse(tag, b"AUTHENTICATE wants a mechanism name and at most an initial response")
            return
        mechanism = words[0].upper()
        if mechanism in (b"PLAIN", b"LOGIN") and not self.plaintext_allowed():
            self.sendNegativeResponse(tag, b"[PRIVACYREQUIRED] AUTHENTICATE " + mechanism + b" is disabled here: STARTTLS first")
            return
        if mechanism not in self.challengers:
            self.sendNegativeResponse(tag, b"AUTHENTICATE mechanism not supported: use " + (b", ".join(sorted(self.challengers)) or b"STARTTLS first"))
            return
        self._auth_tag = tag
        if len(words) == 1:
            imap4.IMAP4Server.do_AUTHENTICATE(self, tag, mechanism)
            return
        if mechanism == b"CRAM-MD5":
            self.sendBadResponse(tag, b"CRAM-MD5 starts with the server's challenge: no initial response")
            return
        challenger = self.challengers[mechanism]()
        challenger.getChallenge()
        initial = b"" if words[1] == b"=" else words[1]
        d = defer.maybeDeferred(self._IMAP4Server__cbAuthChunk, initial, challenger, tag)
        d.addErrback(self._IMAP4Server__ebAuthChunk, tag)

    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_line)

    # -- time limits: login, command line, idle (imap/deadlines.py) ----------------

    @property
    def callLater(self):
        # TimeoutMixin's clock (the idle limits): the hub's reactor.
        return self.hub.reactor.callLater

    def makeConnection(self, transport):
        self.deadlines = SessionDeadlines(self)
        imap4.IMAP4Server.makeConnection(self, transport)
        self.deadlines.start()
        self.flush_replies()  # the greeting

    def dataReceived(self, data):
        if self.deadlines.data_arriving(data):
            self._reading += 1
            try:
                imap4.IMAP4Server.dataReceived(self, data)
            finally:
                self._reading -= 1
            self.deadlines.data_handled(data)
        if not self._reading:
            self.flush_replies()
            if not self._output_held and unsent_octets(self.transport) > OUTPUT_HIGH:
                self._output_held = True
                self._hold_input()
                self.callLater(OUTPUT_POLL, self._output_taken)

    def setRawMode(self):
        # A literal's octets follow: they have a deadline of their own.
        imap4.IMAP4Server.setRawMode(self)
        deadlines = getattr(self, "deadlines", None)
        if deadlines is not None:
            deadlines.literal_started()

    def setLineMode(self, extra=b""):
        deadlines = getattr(self, "deadlines", None)
        if deadlines is not None:
            deadlines.literal_done()
        return imap4.IMAP4Server.setLineMode(self, extra)

    def _still_connected(self) -> bool:
        """Is the client still there (a long command's work in a thread goes on only for one that is)?"""
        return not self._lost and self.transport is not None and not self.transport.disconnecting

    def _output_taken(self) -> None:
        """Read commands again once the client took most of its answers."""
        if self.transport is None or self.transport.disconnecting or self._lost:
            return  # (a connection lost keeps its unsent octets: stop looking)
        if unsent_octets(self.transport) > OUTPUT_LOW:
            self.callLater(OUTPUT_POLL, self._output_taken)
            return
        self._output_held = False
        self._release_input()

    def flush_replies(self) -> None:
        """
        Send the replies written so far now, together, instead of on the
        reactor's next turn: the answers to everything one read brought in
        leave in one send(2), before the reactor reads the next client
        (L{twisted_mailhub.lines.flush_now}; under COMPRESS after the
        burst's sync flush). A no-op for TLS and test transports.
        """
        if self.compression is not None:
            self.compression.flush()
        if self.transport is not None:
            flush_now(self.transport)

    # -- reading lines: literal limits, IDLE --------------------------------------

    def lineReceived(self, line):
        # A command line, never a literal (read raw): Telnet commands a
        # person's telnet client sent (Ctrl-C: IAC IP, IAC DO TIMING-MARK)
        # are no part of it (lines.telnet_prefix_text).
        line = telnet_prefix_text(line)
        if self.blocked is not None:
            self.blocked.append(line)
            return
        if self.parseState == "idle":
            self.resetTimeout()
            self.parse_idle(line)
            return
        if self.parseState == "discard":
            # the rest of a refused command's line, after a skipped literal
            self._pendingLiteral = None
            self.parseState = "command"
            m = _LITERAL.search(line)
            if m:
                self._skip_literal(m)
            return
        if self.parseState == "pending" and isinstance(self._pendingLiteral, defer.Deferred) and line.strip() == b"*":
            # RFC 3501 §6.2.2: "*" cancels an AUTHENTICATE exchange.
            self._pendingLiteral = None
            self.parseState = "command"
            self.sendBadResponse(self._auth_tag, b"AUTHENTICATE cancelled")
            return
        if self.parseState == "command":
            parts = line.split(None, 2)
            self._tag = parts[0] if parts else None
            self._command = parts[1].upper() if len(parts) > 1 else b""
            if self._command == b"UID" and len(parts) > 2:
                self._command = parts[2].split(None, 1)[0].upper()
        # A line that ends in {N}: a literal follows (RFC 3501 §4.3). The
        # AUTHENTICATE exchange also reads "pending" lines, but base64.
        if self.parseState == "command" or (self.parseState == "pending" and not isinstance(self._pendingLiteral, defer.Deferred)):
            m = _LITERAL.search(line)
            if m and not self._literal_allowed(line, m):
                return
        imap4.IMAP4Server.lineReceived(self, line)

    def _literal_allowed(self, line: bytes, m: re.Match) -> bool:
        """
        Whether the line's literal C{{N}}, C{{N+}} or C{~{N}} may be read
        (True: Twisted reads it); otherwise it was answered here. A size
        this hub will not take is refused before any octet is read; for a
        non-synchronizing one the client is already sending them, so they
        are skipped or, when their number is unknown or over the limit, the
        connection is closed with BYE: never read as commands (RFC 7888 §4).
        """
        size = _LITERAL_SIZE.match(m.group(1))
        if not size:
            what = b"{" + quote(m.group(1), 24, ascii=True).encode("ascii") + b"}"
            if m.group(1).endswith(b"+"):
                self._close_for_literal(b"literal size " + what + b" is not a number: its octets cannot be told from commands")
                return False
            self._abandon_command(b"BAD", b"malformed literal size " + what + b": expected {N} or {N+} with N >= 0")
            return False
        n = wire.literal_octets(size.group(1))
        nonsync = bool(size.group(2))
        if self.state == "unauth":
            limit = SMALL_LITERAL
        elif self._command == b"APPEND":
            limit = self.hub.max_message_size
        else:
            limit = SMALL_LITERAL
        if n is None or n > limit:
            text = wire.literal_size_text(n) + b" is over the limit of %d" % limit
            if nonsync:
                self._close_for_literal(text)
                return False
            self._abandon_command(b"NO", b"[TOOBIG] " + text)
            return False
        if nonsync:
            # LITERAL+ (RFC 7888): the octets follow without our "+".
            self._nonsync = True
            try:
                imap4.IMAP4Server.lineReceived(self, line[: m.start()] + b"{%d}" % n)
            finally:
                self._nonsync = False
            if self.parseState == "command" and not self.blocked:
                # The command was refused before it took its literal (wrong
                # state, unknown command, bad argument): the octets are on
                # their way all the same and are its data, never commands
                # (RFC 7888 §4), so they and the rest of its line are skipped.
                self._discard_literal(n)
            return False
        if size.group(1) != b"%d" % n:
            # {007}: Twisted reads the size again; leading zeros go first.
            imap4.IMAP4Server.lineReceived(self, line[: m.start()] + b"{%d}" % n)
            return False
        return True

    def _skip_literal(self, m: re.Match) -> None:
        """
        The rest of a refused command's line ends in a literal: a
        non-synchronizing one's octets are skipped as well (or, unreadable or
        over the limit, the connection closed); for a synchronizing one the
        client waits for a "+" that never comes and has sent nothing.
        """
        size = _LITERAL_SIZE.match(m.group(1))
        if not (size.group(2) if size else m.group(1).endswith(b"+")):
            return
        n = wire.literal_octets(size.group(1)) if size else None
        if n is None or n > self.hub.max_message_size:
            self._close_for_literal(wire.literal_size_text(n) + b" is over the limit of %d" % self.hub.max_message_size)
            return
        self._discard_literal(n)

    def _close_for_literal(self, text: bytes) -> None:
        """BYE and close: a non-synchronizing literal's octets are coming and will not be read."""
        self.sendLine(b"* BYE " + text)
        self.transport.loseConnection()
        self._abandon_command(None, None)

    def _discard_literal(self, n: int) -> None:
        """Skip the C{n} octets of a refused command's LITERAL+, then the rest of its line."""
        self.parseState = "discard"
        if n:
            self._pendingLiteral = _DiscardedLiteral(n)
            self.setRawMode()

    def _abandon_command(self, state: bytes | None, message: bytes | None) -> None:
        self.parseState = "command"
        self._pendingLiteral = None
        self.setLineMode()
        if state is not None:
            self._respond(state, self._tag or b"*", message)

    def sendContinuationRequest(self, msg=b"Ready for additional command text"):
        if self._nonsync:
            self._nonsync = False
            return
        # continue-req = "+" SP (resp-text / base64): the space even when
        # the SASL challenge is empty (RFC 3501 §9).
        self.sendLine(b"+ " + msg)

    def _stringLiteral(self, size):
        # Twisted's own limit (4096) would refuse a password or search
        # string after the client already sent a LITERAL+; ours is checked
        # before that, in _literal_allowed.
        self._literalStringLimit = SMALL_LITERAL
        return imap4.IMAP4Server._stringLiteral(self, size)

    # -- dispatch, and telling the client about changes ------------------------------

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        if not cmd.isascii() or not tag.isascii():
            # Twisted's lookupCommand decodes the name as ASCII and raises
            # out of lineReceived (an unhandled error) for anything else.
            self.sendBadResponse(tag if tag.isascii() else b"*", b"command names are ASCII (RFC 3501 section 9)")
            return None
        if has_control(tag) or has_control(cmd):
            # RFC 3501 section 9: a tag and a command name are atoms; a control
            # character typed by mistake is named, never echoed raw.
            note = control_note(tag + b" " + cmd).encode("ascii", "replace")
            self.sendBadResponse(b"*" if has_control(tag) else tag, b"control characters are not allowed in a tag or command name" + note)
            return None
        if self.selected is not None and rest and (self.rev2 or b"$" in rest or b"SAVE" in rest[:300].upper()):
            # SEARCHRES (RFC 5182): $ and RETURN (SAVE), imap/searchres.py
            rewritten = self.rewrite_saved(tag, cmd, rest, uid)
            if rewritten is None:
                return None
            cmd, rest, uid = rewritten
        if self.selected is not None and uid is None:
            # Bring the client up to date first, so that the command works
            # on the messages it has been told about (RFC 3501 §5.2).
            try:
                self.selected.poll()
            except NoSuchFolder:
                return self._selected_folder_gone()
            self.bring_up_to_date(cmd.upper() not in _NO_EXPUNGE_DURING and cmd.upper() != b"UID")
        elif uid is None:
            self.write_notices()
        f = self.lookupCommand(cmd)
        if f:
            try:
                self._in_command += 1
                return imap4.IMAP4Server.dispatchCommand(self, tag, cmd, rest, uid)
            except (imap4.IllegalClientResponse, imap4.IllegalOperation, imap4.IllegalMailboxEncoding):
                raise  # parse_command answers these
            except StoreUnavailable as e:
                # RFC 5530 §3: a temporary failure; the client may retry.
                self._store_unavailable(tag, cmd, e)
                return None
            except Exception as e:
                if is_not_writable(e):
                    self._not_writable(tag, cmd, e)
                    return None
                # Twisted would answer "* BAD" with no tag and the client
                # would wait for its tagged reply for ever.
                log.failure("IMAP {command} failed", command=cmd)
                self.sendBadResponse(tag, b"[SERVERBUG] " + cmd.upper() + b" failed; see the server log")
                return None
            finally:
                self._in_command -= 1
        name = cmd.decode("ascii", "replace").upper()
        known = {state for state in ("unauth", "auth", "select") if getattr(self, f"{state}_{name}", None) is not None}
        if known:
            if self.state == "unauth":
                need = b"log in first"
            elif "select" in known and self.state == "auth":
                need = b"select a mailbox first"
            else:
                need = b"only before login"
            self.sendBadResponse(tag, cmd.upper() + b" not allowed now: " + need)
            return
        self.sendBadResponse(tag, b"unknown command " + wire.client_text(wire.shown(cmd, 40)[1:-1]) + b": try CAPABILITY")

    _after_short_login = False

    def parse_command(self, line):
        """
        Twisted's, with every error told as a tagged reply in plain words
        (its own quote the input as a Python C{b'...'}), and a tag that is
        not a tag (RFC 3501 §9: no control characters) answered untagged.
        """
        args = line.split(None, 2)
        if not args:
            self.sendBadResponse(None, b"empty command line: expected a tag and a command")
            return None
        tag = args[0]
        # A LOGIN with a user name only ("a1 LOGIN bob"): a student typing
        # by hand may send the password alone on the next line.
        after_short_login = self._after_short_login
        self._after_short_login = len(args) == 3 and args[1].upper() == b"LOGIN" and len(args[2].split()) == 1 and not args[2].endswith(b"}")
        if len(args) == 1 and after_short_login:
            # Not echoed as a tag (RFC 3501 §7.1.3: untagged, no command to
            # answer); the console masks it too (transcript.py).
            self.sendBadResponse(None, b"a line of one word (not shown: after a LOGIN without a password it may be the password); LOGIN takes both: a1 LOGIN name password")
            return None
        # RFC 9051 §9 (and RFC 3501 §9): tag = 1*<any ASTRING-CHAR except
        # "+">: printable ASCII but for the atom-specials ( ) { % * " \.
        # A tag the hub cannot echo back as one is answered untagged, as
        # Dovecot does ("{4} NOOP" was answered "{4} OK", 'a" NOOP' 'a" OK').
        if any(c < 33 or c > 126 for c in tag) or any(c in _NOT_IN_TAG for c in tag):
            self.sendBadResponse(None, b"bad tag " + wire.client_text(wire.shown(tag, 20)) + b': a tag is printable ASCII without ( ) { % * " \\ +')
            return None
        if len(args) == 1:
            self.sendBadResponse(tag, b"missing command after the tag")
            return None
        cmd = args[1].upper()
        rest = args[2] if len(args) == 3 else None
        if (b"\0" in line or b"\r" in line or b"\n" in line) and not has_control(cmd) and not _LITERAL.search(line):
            # RFC 9051 §9: no NUL anywhere (CHAR8), no CR or LF but the CRLF
            # that ends the line (an atom holds no CTL, a quoted string no
            # CR or LF). Refused as a syntax error, naming the character;
            # it was taken as a separator ("NOOP<CR>X": "Too many
            # arguments") or reached a handler ("SELECT IN<NUL>BOX": "NO
            # [CANNOT] mailbox names are modified UTF-7"). Dovecot: BAD. A
            # line that ends in a literal goes on (its octets follow, and
            # must not be read as commands); its handler refuses it.
            note = control_note(line).encode("ascii", "replace")
            self.sendBadResponse(tag, b"a command line holds no NUL, and no CR or LF but the CRLF that ends it (RFC 9051 section 9)" + note)
            return None
        try:
            return self.dispatchCommand(tag, cmd, rest)
        except Exception as e:
            self._command_failed(e, tag, cmd)

    def _store_unavailable(self, tag: bytes, cmd: bytes, e: BaseException) -> None:
        """C{NO [UNAVAILABLE]} (RFC 5530 §3) and one log line (store/outage.py), no traceback."""
        from twisted_mailhub.store.outage import refused

        name = cmd.decode("ascii", "replace") if isinstance(cmd, bytes) else str(cmd)
        refused("imap", "".join(c for c in name if c.isalnum() or c in "-.")[:20].upper() or "a command", e)
        self.sendNegativeResponse(tag, b"[UNAVAILABLE] the mail store cannot be reached now; try again")

    def _not_writable(self, tag: bytes, cmd: bytes, e: BaseException) -> None:
        """
        C{NO [NOPERM]} (RFC 5530 §3: the client cannot cure it by
        retrying) for a write to a folder the hub may not write, and one
        log line, no traceback (store.interfaces.NotWritable).
        """
        name = bytes(c for c in (cmd if isinstance(cmd, bytes) else str(cmd).encode("ascii", "replace")).upper() if 0x21 <= c < 0x7F)[:20] or b"command"
        log.warn("IMAP {command} refused: {why}", command=name.decode("ascii"), why=error_words(e))
        self.sendNegativeResponse(tag, b"[NOPERM] " + name + b" failed: " + not_writable_words(e))

    def _command_failed(self, e: BaseException, tag: bytes, cmd: bytes) -> None:
        if isinstance(e, StoreUnavailable):
            self._store_unavailable(tag, cmd, e)
        elif is_not_writable(e):
            self._not_writable(tag, cmd, e)
        elif isinstance(e, imap4.IllegalClientResponse):
            self.sendBadResponse(tag, wire.client_text(str(e)))
        elif isinstance(e, imap4.IllegalMailboxEncoding):
            self.sendNegativeResponse(tag, b"[CANNOT] mailbox names are modified UTF-7 (RFC 3501 section 5.1.3)")
        elif isinstance(e, imap4.IllegalOperation):
            self.sendNegativeResponse(tag, wire.client_text(str(e)))
        else:
            log.failure("IMAP {command} failed", command=cmd)
            self.sendBadResponse(tag, b"[SERVERBUG] " + wire.client_text(wire.shown(cmd, 20)) + b" failed; see the server log")

    def _IMAP4Server__ebLogin(self, failure, tag):
        # LOGIN while the store cannot be reached (the account's folders
        # are looked up at login): NO [UNAVAILABLE], not Twisted's BAD
        # "Server error" with a traceback in the log.
        if failure.check(StoreUnavailable):
            self._store_unavailable(tag, b"LOGIN", failure.value)
            return
        super()._IMAP4Server__ebLogin(failure, tag)  # imap/rev2.py: [AUTHENTICATIONFAILED]

    def _IMAP4Server__ebAuthResp(self, failure, tag):
        if failure.check(StoreUnavailable):
            self._store_unavailable(tag, b"AUTHENTICATE", failure.value)
            return
        super()._IMAP4Server__ebAuthResp(failure, tag)  # imap/rev2.py: [AUTHENTICATIONFAILED]

    def _IMAP4Server__ebDispatch(self, failure, tag):
        # Errors of argument parsers and handlers that ran after a literal
        # (Twisted's private errback, overridden by its mangled name).
        if not failure.check(imap4.IllegalClientResponse, imap4.IllegalMailboxEncoding, imap4.IllegalOperation, StoreUnavailable) and not is_not_writable(failure.value):
            log.failure("IMAP {command} failed", failure, command=self._command)
            self.sendBadResponse(tag, b"[SERVERBUG] " + wire.client_text(wire.shown(self._command, 20)) + b" failed; see the server log")
            return
        self._command_failed(failure.value, tag, self._command)

    def _respond(self, state, tag, message):
        if tag and tag != b"*" and state in (b"OK", b"NO"):
            if self.selected is not None:
                allow_expunge = self._command not in _NO_EXPUNGE_DURING
                self.bring_up_to_date(allow_expunge)
                reading = self.context_reading()
                if reading is not None and self._command != b"LOGOUT":
                    self._respond_after(reading, allow_expunge, state, tag, message)
                    return
            else:
                self.write_notices()
        imap4.IMAP4Server._respond(self, state, tag, message)
        if not self._reading and tag and tag != b"*":
            # A reply that a Deferred finished (a durable APPEND or COPY, a
            # slowed-down failed login): sent now, not a reactor turn later.
            self.flush_replies()

    def _respond_after(self, reading, allow_expunge: bool, state, tag, message) -> None:
        """
        A tagged reply that waits for a live search's look at new or
        changed messages (contexts.py: read and matched in a worker
        thread), so that its ESEARCH updates come before the reply, as
        they did when they were matched at once (RFC 5267 §4.2). The
        session reads no further command meanwhile; other sessions are
        served.
        """
        self._hold_input()

        def answer(_):
            try:
                if self.transport is None or self.transport.disconnecting:
                    return
                if self.selected is not None:
                    self.bring_up_to_date(allow_expunge)
                imap4.IMAP4Server._respond(self, state, tag, message)
                self.flush_replies()
            finally:
                self._release_input()

        reading.addBoth(answer)

    def bring_up_to_date(self, allow_expunge: bool) -> None:
        """
        The untagged updates of the selected mailbox (its view), then the
        live searches' (contexts.py) and NOTIFY's (notify.py).
        """
        view = self.selected
        if self.notify_parsing is not None:
            # A new message's NOTIFY fetch attributes are being parsed in
            # a thread (notify.py): the view's changes are told after
            # that FETCH, whose sequence numbers they would move.
            self.write_notices()
            return
        if view.pending:
            last = view.uids[-1] if view.uids else 0
            self.transport.write(b"".join(view.untagged(allow_expunge)))
            if self.notifier is not None and view.uids and view.uids[-1] > last:
                self.transport.write(self.new_message_fetches(view.uids[bisect.bisect_right(view.uids, last) :]))
        self.write_context_updates()
        self.write_notices()

    def idle_now(self) -> bool:
        """May unsolicited responses go out now: no command running, none waiting?"""
        return (
            self._in_command == 0 and self._held == 0 and self.blocked is None and self.parseState in ("command", "idle")
            and self.transport is not None and not self.transport.disconnecting
        )

    def changes_arrived(self) -> None:
        if self.selected is None:
            return
        if self._idle_tag is not None:
            self.bring_up_to_date(True)
            return
        group = self.notify_selected()
        if group is not None and self.idle_now():
            # NOTIFY SELECTED (RFC 5465 section 5.1): told at once
            self.bring_up_to_date(group.kind == "selected")

    def notices_arrived(self) -> None:
        """NOTIFY has something for other mailboxes (or polled the selected one)."""
        if self._idle_tag is None and not self.idle_now():
            return  # written before the next tagged reply
        group = self.notify_selected()
        if self.selected is not None and (self._idle_tag is not None or group is not None):
            self.bring_up_to_date(self._idle_tag is not None or group.kind == "selected")
        else:
            self.write_notices()

    def write_lines(self, lines) -> None:
        self.transport.write(b"".join(lines))

    # -- IDLE (RFC 2177) -----------------------------------------------------------

    def do_IDLE(self, tag):
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendContinuationRequest(b"idling: send DONE to end")
        self.changes_arrived()
        if self.selected is not None:
            self._idle_poll = self.idle_signal(IDLE_POLL)  # imap/mailboxes.py: inotify, else a poll

    auth_IDLE = select_IDLE = (do_IDLE,)

    def parse_idle(self, line):
        if line.strip().upper() != b"DONE":
            self.sendUntaggedResponse(b"BAD expected DONE to end IDLE")
            return
        tag = self._idle_tag
        self._end_idle()
        self.parseState = "command"
        self._command = b"IDLE"
        self.sendPositiveResponse(tag, b"IDLE terminated")

    def _end_idle(self) -> None:
        self._idle_tag = None
        if self._idle_poll is not None and self._idle_poll.running:
            self._idle_poll.stop()
        self._idle_poll = None

    def do_CHECK(self, tag):
        self.sendPositiveResponse(tag, b"CHECK completed")

    select_CHECK = (do_CHECK,)

    def do_NOOP(self, tag):
        self.sendPositiveResponse(tag, b"NOOP completed")

    unauth_NOOP = auth_NOOP = select_NOOP = logout_NOOP = (do_NOOP,)


    def _stream(self, pieces: Iterator[bytes], finished) -> None:
        self._hold_input()

        def done():
            finished()
            self._release_input()

        ResponseStream(self.transport, pieces, done).start()

    def _hold_input(self) -> None:
        """
        Read no more commands until this one is answered. LineReceiver
        keeps what already arrived in its buffer, unsplit, so a literal in
        a pipelined command is still read as raw octets afterwards (a
        queue of split lines, Twisted's C{blocked}, would cut it at CRLFs).
        """
        self._held += 1
        basic.LineReceiver.pauseProducing(self)

    def _release_input(self) -> None:
        self._held -= 1
        if self._held == 0 and self.transport is not None and not self.transport.disconnecting:
            basic.LineReceiver.resumeProducing(self)

    def _in_store_command(self, d, done, tag: bytes, command: bytes) -> defer.Deferred:
        """
        Hold this session's input until C{d} (a store call's L{Deferred})
        has fired and C{done(result)} answered (C{done} may return a
        L{Deferred} to wait for too); a failure is answered as the
        command's (NO [UNAVAILABLE] for a database lost meanwhile).
        Returns a L{Deferred} that fires (with None) once answered.
        """
        self._hold_input()

        def failed(reason):
            if self.transport is not None:
                self._command_failed(reason.value, tag, command)

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("IMAP {command} reply failed", f, command=command))
        d.addBoth(lambda _: self._release_input())
        return d



wire.guard_command_tables(IMAPServer)
