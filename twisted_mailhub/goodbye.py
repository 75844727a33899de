# -*- test-case-name: tests.test_goodbye -*-
"""
What an open connection hears when the hub stops (SIGTERM, SIGINT, a
service manager's stop or restart, C{reactor.stop()}).

Twisted's own shutdown drops every connection without a word: a mail
client in the middle of a session saw "connection reset" or an EOF and
could not tell a restart from a crash. Each protocol has a reply for
this, and clients know it:

  - SMTP, submission: C{421} (RFC 5321 §3.8: a server that is shut down
    SHOULD send 421 before it closes; §4.2.3; enhanced code 4.3.2, RFC
    3463 "system not accepting network messages"); the client keeps the
    message and tries again;
  - POP3: C{-ERR [SYS/TEMP]} (RFC 3206 §4: a temporary problem, try
    later);
  - IMAP: C{* BYE [UNAVAILABLE]} (RFC 3501 §7.1.5, RFC 5530 §3);
  - FTP: C{421} (RFC 959 §4.2: "this may be a reply to any command if
    the service knows it must shut down");
  - SFTP: the SSH transport's DISCONNECT, reason "by application" (RFC
    4253 §11.1).

L{say_goodbye} is a "before shutdown" trigger (the hub adds it when it
starts): it writes that line on every accepted connection the reactor
watches, closes it (what was written before is sent first, then the
line), and waits until they are closed or C{wait} seconds have passed
(a client that reads nothing does not hold the stop up); then Twisted
stops as before. Nothing else changes: a message is acknowledged only
after it is durable, so a delivery cut by the stop was never
acknowledged, and the client sends it again. Web and control-socket
connections get no line (HTTP has none; they close as before).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, tcp
from twisted.logger import Logger

log = Logger()

#: How long a stop waits at most for the connections told to close.
WAIT = 1.0


def innermost(protocol: Any) -> Any:
    """
    The protocol under every wrapper (PROXY header, TLS, transcript: each
    keeps the one it wraps as C{wrappedProtocol}).
    """
    seen = 0
    while getattr(protocol, "wrappedProtocol", None) is not None and seen < 16:
        protocol = protocol.wrappedProtocol
        seen += 1
    return protocol


def goodbye_line(protocol: Any, hostname: str) -> bytes | None:
    """
    The line C{protocol} (an innermost protocol, L{innermost}) sends a
    client when the hub stops, or L{None} when its protocol has none (web,
    control socket) or says it another way (SSH).
    """
    from twisted.mail import imap4, pop3, smtp
    from twisted.protocols import ftp

    if isinstance(protocol, smtp.SMTP):
        return f"421 4.3.2 {hostname} Service shutting down, closing transmission channel; try again later\r\n".encode("ascii", "replace")
    if isinstance(protocol, pop3.POP3):
        return b"-ERR [SYS/TEMP] the server is shutting down; try again later\r\n"
    if isinstance(protocol, imap4.IMAP4Server):
        return b"* BYE [UNAVAILABLE] the server is shutting down; try again later\r\n"
    if isinstance(protocol, ftp.FTP):
        return b"421 Service not available, closing control connection: the server is shutting down; try again later.\r\n"
    return None


def _tell(inner: Any, hostname: str) -> bool:
    """
    Say goodbye on a connection whose innermost protocol is C{inner}
    (L{innermost}) and close it. Returns whether it was told.
    """
    transport = getattr(inner, "transport", None)
    if transport is None:
        return False
    from twisted.conch.ssh import transport as ssh

    if isinstance(inner, ssh.SSHServerTransport):
        inner.sendDisconnect(ssh.DISCONNECT_BY_APPLICATION, b"the server is shutting down; try again later")
        return True
    line = goodbye_line(inner, hostname)
    if line is None:
        return False
    transport.write(line)
    transport.loseConnection()
    return True


def _busy(inner: Any) -> bool:
    """
    Is a command of this session still being answered? Its answer goes
    first, then the goodbye: SMTP, POP3 and FTP's line engine waits on a
    Deferred (a message being made durable after DATA, a login being
    checked); an IMAP session may not send an unsolicited response now
    (C{idle_now}: a FETCH streaming a literal, a command running or queued,
    a literal coming in).
    """
    if getattr(getattr(inner, "lines", None), "busy", False):
        return True
    idle_now = getattr(inner, "idle_now", None)
    return callable(idle_now) and not idle_now()


def accepted_connections(reactor: Any) -> list[Any]:
    """The connections C{reactor} accepted and still watches (not its ports, not its own client connections)."""
    return [s for s in {*reactor.getReaders(), *reactor.getWriters()} if isinstance(s, tcp.Server) and s.connected and not s.disconnecting]


def say_goodbye(reactor: Any, hostname: str, wait: float = WAIT, connections: list[Any] | None = None) -> defer.Deferred:
    """
    Tell every accepted connection C{reactor} watches (or C{connections}:
    objects with C{connected} and C{protocol}) that the hub stops, in its
    protocol's words (module docstring), and close it. A session in the
    middle of a command (L{_busy}: an SMTP DATA whose message is being
    made durable) gets that command's answer first, for up to half of
    C{wait}: a client that got its C{250} does not send the message again;
    an IMAP session still in the middle of a response then gets no BYE.

    @return: a Deferred that fires (with L{None}) once those connections
        are closed, or after C{wait} seconds.
    """
    told: list[Any] = []
    waiting: list[tuple[Any, Any]] = []

    def tell(connection: Any, inner: Any) -> None:
        try:
            if _tell(inner, hostname):
                told.append(connection)
        except Exception:  # one connection's trouble must not stop the others' goodbyes
            log.failure("saying goodbye to a connection at shutdown")

    for connection in accepted_connections(reactor) if connections is None else connections:
        inner = innermost(connection.protocol)
        if _busy(inner):
            waiting.append((connection, inner))
        else:
            tell(connection, inner)
    if not told and not waiting:
        return defer.succeed(None)
    log.info("shutting down: told {count} client connection(s) to come back later", count=len(told) + len(waiting))
    done = defer.Deferred()
    now = reactor.seconds()
    answer_by, deadline = now + wait / 2, now + wait

    def check() -> None:
        now = reactor.seconds()
        for item in list(waiting):
            connection, inner = item
            if not connection.connected:
                waiting.remove(item)
            elif not _busy(inner):
                waiting.remove(item)
                tell(connection, inner)
            elif now >= answer_by:
                waiting.remove(item)
                # A reply line is a valid answer to any command (SMTP's 421,
                # POP3's -ERR, FTP's 421); an IMAP BYE now could fall inside
                # a literal still being sent: that one is cut as before.
                if not callable(getattr(inner, "idle_now", None)):
                    tell(connection, inner)
        if (not waiting and all(not c.connected for c in told)) or now >= deadline:
            done.callback(None)
        else:
            reactor.callLater(0.02, check)

    reactor.callLater(0, check)
    return done
