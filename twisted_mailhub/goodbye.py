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


def _tell(protocol: Any, hostname: str) -> bool:
    """
    Say goodbye on one accepted connection's C{protocol} (its outermost)
    and close it. Returns whether it was told.
    """
    inner = innermost(protocol)
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


def say_goodbye(reactor: Any, hostname: str, wait: float = WAIT) -> defer.Deferred:
    """
    Tell every accepted connection C{reactor} watches that the hub stops,
    in its protocol's words (module docstring), and close it.

    @return: a Deferred that fires (with L{None}) once those connections
        are closed, or after C{wait} seconds.
    """
    told = []
    for selectable in {*reactor.getReaders(), *reactor.getWriters()}:
        if not isinstance(selectable, tcp.Server) or not selectable.connected or selectable.disconnecting:
            continue
        try:
            if _tell(selectable.protocol, hostname):
                told.append(selectable)
        except Exception:  # one connection's trouble must not stop the others' goodbyes
            log.failure("saying goodbye to a connection at shutdown")
    if not told:
        return defer.succeed(None)
    log.info("shutting down: told {count} client connection(s) to come back later", count=len(told))
    done = defer.Deferred()
    deadline = reactor.seconds() + wait

    def check() -> None:
        if all(not s.connected for s in told) or reactor.seconds() >= deadline:
            done.callback(None)
        else:
            reactor.callLater(0.02, check)

    reactor.callLater(0, check)
    return done
