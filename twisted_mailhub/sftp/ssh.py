# -*- test-case-name: tests.test_e2e_sftp,tests.test_sftp_protocol -*-
"""
The SSH server around the SFTP subsystem, on C{twisted.conch}.

What this server offers (RFC 4254): one kind of channel, C{session}, and on
it one subsystem, C{sftp}. A shell, a command (C{exec}, which legacy
C{scp -O} uses) and port forwarding are each refused with a message the
client prints. Users log in through the hub's portal and throttle like
every other protocol: C{password}, C{keyboard-interactive} (one
C{Password:} prompt) and C{publickey} (keys in
C{DATA/ssh/authorized_keys/<address>}).

Memory stays bounded when a client stops reading: an SFTP session that has
more than its backlog of answers waiting stops processing requests, and
its channel stops opening the client's window (L{MailhubConnection}), so
the client cannot send more either.
"""

from __future__ import annotations

import collections
import struct
from typing import Any

from twisted.conch import avatar, error as conch_error, interfaces as conch_interfaces
from twisted.conch.ssh import channel, common, connection, factory, transport, userauth
from twisted.cred import credentials
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, PredicateResult, globalLogPublisher
from twisted.protocols.policies import TimeoutMixin
from twisted.python import failure

from twisted_mailhub.login import ClientPortal
from twisted_mailhub.sftp.protocol import SFTPServer

log = Logger()

# Conch's own log lines go to the hub's log from warnings up. Below that it
# logged some 20 lines per SFTP session, most of them debug with Python
# reprs (b'alice' trying auth b'publickey'), one per window adjustment
# (a thousand for a 1 GiB put), the moduli file's absence on every
# connection, and a client's ordinary logout as an error (below); the hub
# logs the session's login and, with --transcript, its requests itself.
# A refusal the hub raised on purpose (a ConchError: a port forwarding
# channel, the 11th session) was logged as critical with a traceback, ten
# lines per attempt that any logged-in client could repeat at will; the
# hub logs the refusal in one line of its own.


def _not_a_refusal(event: dict) -> PredicateResult:
    failed = event.get("log_failure")
    if failed is not None and failed.check(conch_error.ConchError):
        return PredicateResult.no
    return PredicateResult.maybe


conch_log = Logger(observer=FilteringLogObserver(globalLogPublisher, [_not_a_refusal, LogLevelFilterPredicate(LogLevel.warn)]))

SFTP_ONLY = (
    "This server offers SFTP only: no shell, no commands, no port forwarding.\r\n"
    "Use: sftp -P PORT user@host (or scp, which speaks SFTP since OpenSSH 9.0).\r\n"
)
LEGACY_SCP = (
    "Legacy scp (the old scp/rcp protocol, scp -O) is not offered: this server speaks SFTP only.\r\n"
    "Drop -O: OpenSSH 9.0 and later scp use SFTP by default.\r\n"
)
MAX_CHANNELS = 10
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 64 * 1024
MSG_USERAUTH_INFO_REQUEST = 60


class SFTPSettings:
    """The limits and hooks every SFTP session of one listener shares."""

    def __init__(self, hub: Any, max_handles: int, max_packet: int, idle_timeout: float, login_timeout: float = 120.0):
        self.hub = hub
        self.max_handles = max_handles
        self.max_packet = max_packet
        self.idle_timeout = idle_timeout
        #: Seconds from the connection to a successful login, as sshd's
        #: LoginGraceTime (120 s): the idle timer alone is reset by any
        #: octet, so a client trickling its key exchange would stay for ever.
        self.login_timeout = login_timeout


class ChannelTransport:
    """What L{SFTPServer} writes to: the session channel, seen as a transport."""

    def __init__(self, chan: "SFTPSessionChannel"):
        self.channel = chan

    def write(self, data: bytes) -> None:
        self.channel.write(data)

    def loseConnection(self) -> None:
        self.channel.loseConnection()

    def backlog(self) -> int:
        return self.channel.pending_bytes

    def getPeer(self):
        return self.channel.conn.transport.transport.getPeer()

    def getHost(self):
        return self.channel.conn.transport.transport.getHost()


class SFTPSessionChannel(channel.SSHChannel):
    """
    A C{session} channel (RFC 4254 §6) that runs the C{sftp} subsystem and
    refuses everything else with a message on stderr and exit status 1.
    """

    _log = conch_log  # Conch's lines from warnings up (see conch_log)

    name = b"session"

    def __init__(self, *args, **kw):
        channel.SSHChannel.__init__(self, *args, **kw)
        self.sftp: SFTPServer | None = None
        self.refused = False
        # Answers waiting for the client's window, as a queue of chunks:
        # Conch's channel keeps one bytes buffer and copies all of it for
        # every write and every window adjust (quadratic in what waits; a
        # 1 GB download spent 60% of its time there).
        self._pending: collections.deque[bytes] = collections.deque()
        self.pending_bytes = 0

    # -- output within the client's window (RFC 4254 §5.2) -----------------------

    def write(self, data: bytes) -> None:
        if not self._pending and len(data) <= self.remoteWindowLeft:
            self._send_now(data)
            return
        self._pending.append(data)
        self.pending_bytes += len(data)
        self._flush()
        if self._pending and self.areWriting:
            self.areWriting = 0
            self.stopWriting()

    def _send_now(self, data: bytes) -> None:
        size = self.remoteMaxPacket
        if len(data) <= size:
            self.conn.sendData(self, data)
        else:
            view = memoryview(data)
            for offset in range(0, len(data), size):
                self.conn.sendData(self, bytes(view[offset:offset + size]))
        self.remoteWindowLeft -= len(data)

    def _flush(self) -> None:
        while self._pending and self.remoteWindowLeft > 0:
            chunk = self._pending[0]
            if len(chunk) <= self.remoteWindowLeft:
                self._pending.popleft()
            else:
                chunk, self._pending[0] = chunk[:self.remoteWindowLeft], chunk[self.remoteWindowLeft:]
            self.pending_bytes -= len(chunk)
            self._send_now(chunk)

    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        self._flush()
        if not self._pending and not self.areWriting and not self.closing:
            self.areWriting = 1
            self.startWriting()
        if self.closing and not self._pending:
            self.loseConnection()
        elif self.extBuf:
            channel.SSHChannel.addWindowBytes(self, 0)

    def loseConnection(self) -> None:
        self.closing = 1
        if not self._pending and not self.extBuf:
            self.conn.sendClose(self)

    # -- requests --------------------------------------------------------------

    def request_subsystem(self, data: bytes) -> int:
        try:
            name, _ = common.getNS(data)
        except (struct.error, IndexError, ValueError):
            return 0
        if name != b"sftp" or self.sftp is not None or self.refused:
            log.info("sftp: refused subsystem {name}", name=name.decode("ascii", "replace")[:40])
            return 0
        self.sftp = self.avatar.start_sftp(self)
        self.sftp.makeConnection(ChannelTransport(self))
        return 1

    def request_shell(self, data: bytes) -> int:
        return self._refuse(SFTP_ONLY, "a shell")

    def request_exec(self, data: bytes) -> int:
        try:
            command, _ = common.getNS(data)
        except (struct.error, IndexError, ValueError):
            command = b""
        if command.split(b" ", 1)[0] in (b"scp", b"/usr/bin/scp"):
            return self._refuse(LEGACY_SCP, "legacy scp")
        return self._refuse(SFTP_ONLY, "a command")

    def request_pty_req(self, data: bytes) -> int:
        # Accepted so that the refusal of the shell that follows is shown.
        return 1

    def request_env(self, data: bytes) -> int:
        return 0

    def _refuse(self, message: str, what: str) -> int:
        if self.sftp is not None or self.refused:
            return 0
        self.refused = True
        log.info("sftp: refused {what}", what=what)
        from twisted.internet import reactor

        # After the request's SUCCESS reply has gone out.
        reactor.callLater(0, self._say_and_close, message)
        return 1

    def _say_and_close(self, message: str) -> None:
        if self.closing or self.localClosed:
            return
        self.writeExtended(connection.EXTENDED_DATA_STDERR, message.encode("utf-8"))
        self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 1))
        self.loseConnection()

    # -- data ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.sftp is not None:
            self.sftp.dataReceived(data)

    def holding_window(self) -> bool:
        return self.sftp is not None and self.sftp._paused

    def stopWriting(self) -> None:
        if self.sftp is not None:
            self.sftp.pauseProducing()

    def startWriting(self) -> None:
        if self.sftp is not None:
            self.sftp.resumeProducing()
            if not self.sftp._paused and self.localWindowLeft < self.localWindowSize // 2:
                self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def eofReceived(self) -> None:
        # A refused command's message is still on its way: close after it.
        if not self.refused:
            if self.sftp is not None:
                # scp checks that ssh exited 0, i.e. that the subsystem did.
                self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
            self.loseConnection()

    def closed(self) -> None:
        if self.sftp is not None:
            sftp, self.sftp = self.sftp, None
            sftp.connectionLost()


class MailhubConnection(connection.SSHConnection):
    """
    Conch's C{ssh-connection} service, except that a channel whose SFTP
    session is paused (the client is not reading) gets no more window.
    """

    _log = conch_log  # Conch's lines from warnings up (see conch_log)

    def adjustWindow(self, chan, bytesToAdd):
        holding = getattr(chan, "holding_window", None)
        if holding is not None and holding():
            return
        connection.SSHConnection.adjustWindow(self, chan, bytesToAdd)

    def ssh_CHANNEL_DATA(self, packet):
        # Conch indexes its channel table with the client's number and
        # unpacks without checking the length: a bad packet is a protocol
        # error, answered with a disconnect rather than a traceback.
        try:
            (number,) = struct.unpack(">L", packet[:4])
        except struct.error:
            number = None
        if number not in self.channels:
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"data for a channel that is not open")
            return
        connection.SSHConnection.ssh_CHANNEL_DATA(self, packet)


class SFTPUser(avatar.ConchUser):
    """
    The avatar of one SSH login: the account's shell (the FTP home), and
    the session channels it may open.
    """

    def __init__(self, shell: Any, settings: SFTPSettings, address: str):
        avatar.ConchUser.__init__(self)
        self.shell = shell
        self.settings = settings
        self.address = address
        self.channelLookup[b"session"] = SFTPSessionChannel

    def lookupChannel(self, channelType, windowSize, maxPacket, data):
        if channelType != b"session":
            log.info("sftp: refused a {kind} channel for {who}", kind=channelType.decode("ascii", "replace")[:40], who=self.address)
            raise conch_error.ConchError(
                "port forwarding and other channels are not offered: this server speaks SFTP only",
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
            )
        if len(self.conn.channels) >= MAX_CHANNELS:
            log.info("sftp: refused an SSH session beyond {most} on one connection for {who}", most=MAX_CHANNELS, who=self.address)
            raise conch_error.ConchError(f"at most {MAX_CHANNELS} sessions per connection", connection.OPEN_RESOURCE_SHORTAGE)
        return SFTPSessionChannel(
            localWindow=WINDOW,
            localMaxPacket=MAX_PACKET,
            remoteWindow=windowSize,
            remoteMaxPacket=maxPacket,
            data=data,
            avatar=self,
        )

    def gotGlobalRequest(self, requestType, data):
        log.info("sftp: refused global request {kind} (no port forwarding)", kind=requestType.decode("ascii", "replace")[:40])
        return 0

    def start_sftp(self, chan: SFTPSessionChannel) -> SFTPServer:
        transport_ = chan.conn.transport
        observer = getattr(transport_, "sftp_observer", None)
        server = SFTPServer(
            self.shell,
            observer=observer,
            max_packet=self.settings.max_packet,
            max_handles=self.settings.max_handles,
            slow_window=float(getattr(self.settings.hub, "slow_transfer_window", 60.0)),
        )
        server.metrics = getattr(self.settings.hub, "metrics", None)
        server.quota_space = self.quota_space
        server.quota_space_later = self.quota_space_later
        return server

    def quota_space(self, fresh: bool = False) -> tuple[int, int] | None:
        """
        (limit, octets used) of this account's quota, or None without one.
        The used octets are the remembered count (up to a minute old), or
        with C{fresh} counted again now, so that space freed since (a
        REMOVE, a failed upload's partial file gone) is seen.
        """
        quotas = getattr(self.settings.hub, "quotas", None)
        limit = quotas.limit(self.address) if quotas is not None else None
        if not limit:
            return None
        return (limit, quotas.reported(self.address) if fresh else quotas.usage(self.address))


    def quota_space_later(self) -> defer.Deferred:
        """
        A L{Deferred} of L{quota_space}C{(fresh=True)}: the count made now,
        the account's files on disk walked in a worker thread
        (L{twisted_mailhub.quota.Quotas.reported_later}).
        """
        quotas = getattr(self.settings.hub, "quotas", None)
        limit = quotas.limit(self.address) if quotas is not None else None
        if not limit:
            return defer.succeed(None)
        return quotas.reported_later(self.address).addCallback(lambda used: (limit, used))


class SSHClientPortal(ClientPortal):
    """
    The hub's throttled portal, except that the RFC 4252 §7 question "would
    this public key do?" (a key without a signature) is no failed login.
    """

    def login(self, creds, mind, *interfaces):
        if credentials.ISSHPrivateKey.providedBy(creds) and not creds.signature:
            return self.portal.login(creds, mind, *interfaces)
        return ClientPortal.login(self, creds, mind, *interfaces)


class MailhubUserAuth(userauth.SSHUserAuthServer):
    """
    C{ssh-userauth} (RFC 4252) through the hub's portal: C{publickey},
    C{password}, and C{keyboard-interactive} (RFC 4256) with one password
    prompt. Failed logins are slowed by the hub's throttle alone.
    """

    _log = conch_log  # Conch's lines from warnings up (see conch_log)

    passwordDelay = 0
    attemptsBeforeDisconnect = 6

    def serviceStarted(self):
        userauth.SSHUserAuthServer.serviceStarted(self)
        hub = self.transport.factory.settings.hub
        self.portal = SSHClientPortal(hub.portal, hub.throttle, self.transport.peer_host, "sftp", hub.metrics)
        self.supportedAuthentications = [b"publickey", b"password", b"keyboard-interactive"]
        self._kbd: defer.Deferred | None = None

    def auth_keyboard_interactive(self, packet: bytes) -> defer.Deferred:
        if self._kbd is not None:
            return defer.fail(UnauthorizedLogin("a keyboard-interactive exchange is already open"))
        self._kbd = defer.Deferred()
        request = common.NS(b"") + common.NS(b"") + common.NS(b"") + struct.pack(">L", 1) + common.NS(b"Password: ") + b"\x00"
        self.transport.sendPacket(MSG_USERAUTH_INFO_REQUEST, request)
        user = self.user

        def check(password: bytes):
            creds = credentials.UsernamePassword(user, password)
            return self.portal.login(creds, None, conch_interfaces.IConchUser)

        return self._kbd.addCallback(check)

    def ssh_USERAUTH_INFO_RESPONSE(self, packet: bytes) -> None:
        d, self._kbd = self._kbd, None
        if d is None:
            return
        try:
            (count,) = struct.unpack(">L", packet[:4])
            password, _ = common.getNS(packet[4:]) if count == 1 else (None, b"")
        except (struct.error, IndexError, ValueError):
            password = None
        if password is None:
            d.errback(UnauthorizedLogin("a keyboard-interactive answer without one password"))
        else:
            d.callback(password)

    def _cbFinishedAuth(self, result):
        userauth.SSHUserAuthServer._cbFinishedAuth(self, result)
        record = getattr(self.transport.sftp_observer, "record", None)
        if record is not None:
            record.logged_in(getattr(result[1], "address", ""))

    def ssh_USERAUTH_REQUEST(self, packet):
        try:
            common.getNS(packet, 3)
        except (struct.error, IndexError, ValueError):
            self.transport.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"malformed authentication request")
            return None
        return userauth.SSHUserAuthServer.ssh_USERAUTH_REQUEST(self, packet)

    def _ebBadAuth(self, reason):
        # Any failure below the portal (a malformed method payload) is a
        # failed login, not a traceback in the log.
        if not reason.check(conch_error.IgnoreAuthentication, UnauthorizedLogin, conch_error.ConchError):
            reason = failure.Failure(UnauthorizedLogin("malformed authentication data"))
        return userauth.SSHUserAuthServer._ebBadAuth(self, reason)


class MailhubSSHTransport(transport.SSHServerTransport, TimeoutMixin):
    """
    The SSH transport of one client connection: the hub's connection id,
    TCP_NODELAY, the idle timeout and the login grace time.
    """

    _log = conch_log  # Conch's lines from warnings up (see conch_log)

    ourVersionString = b"SSH-2.0-mailhub"
    _login_call: Any = None

    @property
    def callLater(self):
        # TimeoutMixin's clock: the hub's reactor (a task.Clock in tests).
        return self.factory.settings.hub.reactor.callLater

    def connectionMade(self):
        settings = self.factory.settings
        self.peer_host = getattr(self.transport.getPeer(), "host", "")
        self.connection_id = settings.hub.connection_made(self, "sftp")
        self.sftp_observer = self.factory.make_observer(self)
        transport.SSHServerTransport.connectionMade(self)
        self.setTimeout(settings.idle_timeout or None)
        if settings.login_timeout:
            self._login_call = self.callLater(settings.login_timeout, self._login_expired)

    def _login_expired(self) -> None:
        self._login_call = None
        if getattr(self, "avatar", None) is not None or self.transport is None or self.transport.disconnecting:
            return  # logged in (userauth set the avatar), or already going
        seconds = self.factory.settings.login_timeout
        log.info("{cid}: not logged in after {seconds:g}s, disconnecting", cid=self.connection_id, seconds=seconds)
        # RFC 4253 §11.1: a DISCONNECT with a reason; before the key
        # exchange ends it goes out in the clear, which SSH allows.
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"not logged in after %g seconds" % seconds)

    def dataReceived(self, data):
        transport.SSHServerTransport.dataReceived(self, data)

    def dispatchMessage(self, messageNum, payload):
        # A whole packet is activity; an octet is not: a client trickling
        # one packet's octets, a few every few seconds, reset the idle
        # timer with each and held the connection for ever (slowloris).
        self.resetTimeout()
        transport.SSHServerTransport.dispatchMessage(self, messageNum, payload)

    def _newKeys(self):
        transport.SSHServerTransport._newKeys(self)
        record = getattr(self.sftp_observer, "record", None)
        if record is not None and self.currentEncryptions is not None:
            ciphers = self.currentEncryptions
            record.encrypted(f"SSH {ciphers.outCipType.decode()} {ciphers.outMACType.decode()}")

    def receiveError(self, reasonCode, description):
        """
        The client sent DISCONNECT (RFC 4253 §11.1). Conch logged it as an
        error, with the reason as a Python repr, for every ordinary logout
        (C{sftp}'s "disconnected by user", code 11): only another reason is
        worth a line, in the hub's words.
        """
        if reasonCode == transport.DISCONNECT_BY_APPLICATION:
            return
        from twisted_mailhub.lines import quote

        log.info("{cid}: the client disconnected: SSH code {code}, {reason}", cid=self.connection_id, code=reasonCode, reason=quote(description, 200))

    def timeoutConnection(self):
        log.info("{cid}: idle for {seconds:.0f}s, disconnecting", cid=self.connection_id, seconds=self.factory.settings.idle_timeout)
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, b"idle timeout")

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None
        transport.SSHServerTransport.connectionLost(self, reason)
        closing = getattr(self.sftp_observer, "session_closed", None)
        if closing is not None:
            closing()


class MailhubSSHFactory(factory.SSHFactory):
    """
    The SSH listener's factory: host keys, and the services above.
    """

    _log = conch_log  # Conch's lines from warnings up (see conch_log)

    protocol = MailhubSSHTransport
    services = {
        b"ssh-userauth": MailhubUserAuth,
        b"ssh-connection": MailhubConnection,
    }
    # The session events are the decoded SFTP requests, not the (encrypted)
    # bytes: the hub must not wrap this factory's connections.
    record_sessions = False

    def __init__(self, settings: SFTPSettings, host_keys: list):
        self.settings = settings
        self.portal = settings.hub.portal
        self.privateKeys = {key.sshType(): key for key in host_keys}
        self.publicKeys = {key.sshType(): key.public() for key in host_keys}
        self.primes = None

    def make_observer(self, transport_: MailhubSSHTransport):
        hub = self.settings.hub
        if not getattr(hub, "record_sessions", False):
            return None
        from twisted_mailhub.sftp.transcript import SFTPTranscript

        peer, host = transport_.transport.getPeer(), transport_.transport.getHost()
        record = hub.events.start(
            "sftp", (getattr(peer, "host", "?"), getattr(peer, "port", 0)), (getattr(host, "host", "?"), getattr(host, "port", 0)), id=transport_.connection_id
        )
        return SFTPTranscript(record)
