# -*- test-case-name: tests.test_ftp_units,tests.test_e2e_ftp -*-
"""
The FTP control channel (the server-PI of RFC 959), on Twisted's
L{ftp.FTP}.

What Twisted's class gives us and we keep: its reply table, its path rules
(C{toSegments}: C{..} above C{/} is refused), its login states (UNAUTH,
INAUTH, AUTHED, RENAMING) and the plain commands that work there (CWD,
CDUP, PWD, MKD, RMD, DELE, RNTO, SIZE, MDTM, TYPE, STRU, MODE, SYST, NOOP).

What we replace, and why:
  - Command dispatch. Twisted stops reading the control connection until a
    command's Deferred fires, so ABOR (and STAT) can never reach a running
    transfer. Here a transfer runs in the background; other commands wait
    in a queue, while ABOR, STAT and QUIT are answered at once. Lines end
    in LF or CRLF; Telnet IP/DM bytes before ABOR are skipped and
    SO_OOBINLINE keeps an urgent byte in the stream (ftplib's C{abort()}).
  - The data channel (L{twisted_mailhub.ftp.data}): active transfers from
    the fixed data port, TLS data connections, sendfile, REST, APPE, STOU,
    TYPE A conversion both ways.
  - Listings: LIST, bare NLST, MLSD, MLST (RFC 3659), STAT with a path; no
    globbing surprises with names containing C{-}.
  - FTPS (RFC 4217): AUTH TLS, PBSZ, PROT, CCC refused; anything pipelined
    after AUTH TLS in the same packet is discarded (injection).
  - Security (RFC 2577): PORT/EPRT only to the control peer and to
    unprivileged ports; passive connections only from the control peer;
    failed logins slowed by the hub's throttled portal; a per-address
    connection limit; idle timeouts on both channels.
  - UTF-8 on the control channel (RFC 2640, OPTS UTF8 ON), a complete FEAT,
    HELP, ACCT, ALLO (as NOOP, RFC 1123 §4.1.2.13).
"""

from __future__ import annotations

import datetime
import fnmatch
import errno
import re
import socket
import stat as statmod
import time

from twisted.cred import credentials
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python import failure
from zope.interface import implementer

from twisted_mailhub.errorwords import error_words, no_room
from twisted_mailhub.ftp.data import (
    DataChannel,
    DataState,
    TransferAborted,
    TransferFailed,
    TransferWriteError,
    close_now,
    data_tls_options,
    reason_words,
    same_host,
)
from twisted_mailhub.ftp.record import ControlRecord
from twisted_mailhub.ftp.vfs import NOT_UTF8, FileSystemUnavailable, NameNotAllowedError
from twisted_mailhub.lines import LineEngine, control_note, quote, send_now, telnet_text
from twisted_mailhub.clientkey import client_key
from twisted_mailhub.proxyheader import socket_host
from twisted_mailhub.store.interfaces import is_not_writable, is_out_of_space, not_writable_reason
from twisted_mailhub.transcript import looks_like_a_secret, record_login, record_read

log = Logger()

# What HELP lists and what the dispatcher knows.
COMMANDS = (
    "ABOR ACCT ALLO APPE AUTH CCC CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MFMT MKD MLSD MLST MODE "
    "NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REST RETR RMD RNFR RNTO SITE SIZE STAT STOR "
    "STOU STRU SYST TYPE USER XCUP XCWD XMKD XPWD XRMD"
).split()

# The facts MLST and MLSD can show (RFC 3659 §7.5), in the order shown,
# and those shown until OPTS MLST selects others (§7.9).
MLST_FACTS = ("type", "size", "modify", "perm", "unique", "UNIX.mode")
MLST_DEFAULT = ("type", "size", "modify", "perm")
_MLST_NAMES = {name.lower(): name for name in MLST_FACTS}

# FEAT's lines (RFC 2389); "MLST" stands for the line of the facts, made
# for the session (RFC 3659 §7.8: the facts selected now are marked "*").
FEATURES = (
    "AUTH TLS",
    "EPRT",
    "EPSV",
    "MDTM",
    "MFMT",
    "MLST",
    "PBSZ",
    "PROT",
    "REST STREAM",
    "SIZE",
    "TVFS",
    "UTF8",
)

# HELP <command>: what a person typing the session needs to know.
SYNTAX = {
    "USER": "USER <name>, then PASS <password>",
    "PASS": "PASS <password>, after USER",
    "CWD": "CWD <directory>",
    "LIST": "LIST [<path>], over a data connection (PASV or PORT first)",
    "NLST": "NLST [<path>]: names only, over a data connection",
    "MLSD": "MLSD [<directory>]: machine-readable facts, over a data connection",
    "MLST": "MLST [<path>]: facts of one file, on the control connection",
    "RETR": "RETR <file>, over a data connection (PASV or PORT first)",
    "STOR": "STOR <file>, over a data connection (PASV or PORT first)",
    "APPE": "APPE <file>: like STOR, appending",
    "STOU": "STOU [<name>]: like STOR, under a new unique name",
    "REST": "REST <offset>, then RETR or STOR to resume there",
    "RNFR": "RNFR <old name>, then RNTO <new name>",
    "RNTO": "RNTO <new name>, after RNFR",
    "TYPE": "TYPE A (text, line ends converted) or TYPE I (binary)",
    "PORT": "PORT h1,h2,h3,h4,p1,p2: your address, port p1*256+p2",
    "EPRT": "EPRT |1|<IPv4>|<port>| or EPRT |2|<IPv6>|<port>|",
    "PASV": "PASV: the server opens a port and tells you where",
    "EPSV": "EPSV [1|2|ALL]: like PASV, answers only the port",
    "AUTH": "AUTH TLS, then PBSZ 0 and PROT P for encrypted data",
    "PROT": "PROT P (data in TLS) or PROT C (clear), after AUTH TLS",
    "ABOR": "ABOR: stop the running transfer",
    "STAT": "STAT: server status; STAT <path>: a listing on the control connection",
    "FEAT": "FEAT: the extensions this server has (RFC 2389)",
    "OPTS": "OPTS UTF8 ON, or OPTS MLST type;size;modify;perm;unique;UNIX.mode; to choose the facts MLST and MLSD show",
    "PBSZ": "PBSZ 0, after AUTH TLS",
    "MDTM": "MDTM <file>: its modification time, YYYYMMDDHHMMSS in UTC",
    "MFMT": "MFMT YYYYMMDDHHMMSS <file>: set its modification time (UTC)",
    "SITE": "SITE UTIME YYYYMMDDHHMMSS <file>, or SITE UTIME <file> <atime> <mtime> <ctime> UTC: set its times; SITE CHMOD 644 <file>: its mode",
    "DELE": "DELE <file>",
    "MKD": "MKD <directory>",
    "RMD": "RMD <directory>",
    "MODE": "MODE S (stream, the only mode here)",
    "STRU": "STRU F (file, the only structure here)",
}

# What a command given without its argument lacks, for those whose own
# answer would not say it ("504 TYPE : use ..."): the 501 names it and
# gives the form from SYNTAX (RFC 959 §4.2: 501, syntax error in
# parameters).
ARGUMENT_NEEDED = {
    "PASS": "the password",
    "DELE": "a file name",
    "RMD": "a directory name",
    "TYPE": "a type",
    "MODE": "a mode",
    "STRU": "a structure",
    "AUTH": "a mechanism",
    "SITE": "a command",
    "REST": "a byte offset",
}


def missing_argument(verb: str) -> str:
    """
    The 501 for C{verb} (upper case) sent without the argument it needs:
    what it lacks, when L{ARGUMENT_NEEDED} knows, and its form
    (L{SYNTAX}): C{"501 DELE needs a file name: DELE <file>."}.
    """
    what = ARGUMENT_NEEDED.get(verb, "an argument")
    form = SYNTAX.get(verb)
    return f"501 {verb} needs {what}: {form}." if form else f"501 {verb} needs {what}."

# Answered even while a transfer runs (RFC 959 §4.1.3: ABOR, STAT, QUIT).
URGENT = {"ABOR", "STAT", "QUIT"}
# Allowed before login.
PUBLIC = {"FEAT", "QUIT", "HELP", "NOOP", "SYST", "AUTH", "PBSZ", "PROT", "OPTS", "CCC"}

_URGENT = {verb.encode("ascii") for verb in URGENT}
def _is_urgent(line: bytes) -> bool:
    """Whether a control line is ABOR, STAT or QUIT, answered even during a transfer."""
    word = telnet_text(line).lstrip()[:5]
    return word[:4].upper() in _URGENT and word[4:5] in (b"", b" ")


def ftp_time(text: str, minutes: bool = False) -> float | None:
    """
    Seconds since the epoch of an FTP time C{YYYYMMDDHHMMSS[.sss]} in UTC
    (RFC 3659 §2.3, as MDTM gives it; with C{minutes}, C{YYYYMMDDHHMM}
    too, as ProFTPD's SITE UTIME takes it), or L{None} when it is not
    one (ASCII digits only; a real date; year 1970 to 9999).
    """
    whole, dot, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(whole) not in ((12, 14) if minutes else (14,)):
        return None
    if dot and not (fraction.isascii() and fraction.isdigit() and 1 <= len(fraction) <= 9):
        return None
    try:
        when = datetime.datetime.strptime(whole, "%Y%m%d%H%M%S" if len(whole) == 14 else "%Y%m%d%H%M").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    if when.year < 1970:
        return None
    return when.timestamp() + (int(fraction) / 10 ** len(fraction) if dot else 0)



def decode_host_port(address: str) -> tuple[str, int]:
    """
    PORT's argument C{h1,h2,h3,h4,p1,p2} (RFC 959 §4.1.2: six decimal
    numbers of 0-255; blanks around the commas allowed) as C{("h1.h2.h3.h4",
    p1 * 256 + p2)}.

    Twisted's C{decodeHostPort} drops every character that is not a digit,
    comma or blank, and C{int()} reads "1_9" and "+1": "PORT 12x7,0,0,1,
    1_9,1" was port 4865 of 127.0.0.1.

    @raise ValueError: anything else.
    """
    parts = [p.strip(" ") for p in address.split(",")]
    if len(parts) != 6 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(address)
    numbers = [int(p) for p in parts]
    if max(numbers) > 255:
        raise ValueError(address)
    return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]


def decode_extended_address(address: str) -> tuple[str, str, int]:
    """
    EPRT's argument C{<d>proto<d>address<d>port<d>} (RFC 2428 §2) as
    C{(proto, address, port)}, the port in ASCII digits (C{int()} would
    also read "5_0000", "+50000" and " 50000").

    @raise ValueError: not four fields between one delimiter, or a port
        that is no decimal number.
    """
    if not address:
        raise ValueError(address)
    fields = address[1:].split(address[0])
    if len(fields) != 4 or fields[3]:
        raise ValueError(address)
    protocol, host, port = fields[:3]
    if not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise ValueError(address)
    return protocol, host, int(port)

class Refused(Exception):
    """A command cannot go on; C{reply} is the whole reply line, worded already."""

    def __init__(self, reply: str):
        Exception.__init__(self, reply)
        self.reply = reply


# What an FTP error means, in words that follow the command and its path.
_MEANINGS = {
    ftp.FileNotFoundError: "no such file or directory",
    ftp.IsNotADirectoryError: "not a directory",
    ftp.IsADirectoryError: "is a directory",
    ftp.PermissionDeniedError: "permission denied",
    ftp.FileExistsError: "already exists",
    ftp.AnonUserDeniedError: "anonymous users may not change files",
    FileSystemUnavailable: "the file store cannot be reached now; try again later",
    NameNotAllowedError: NOT_UTF8,
}


def _error_reply(verb: str, error: ftp.FTPCmdError) -> str:
    """
    The reply to C{verb} that failed with C{error}: its code, the command as
    given, the path (quoted: control characters visible) and what went
    wrong. Twisted's own texts name the wrong command (C{CWD nope} would
    say "Cannot rmd").
    """
    code = ftp.RESPONSE[error.errorCode][:3]
    args = [quote(str(a), 200) for a in getattr(error, "errorMessage", ())]
    meaning = _MEANINGS.get(type(error))
    if meaning is not None:
        if type(error) in (ftp.IsNotADirectoryError, ftp.FileNotFoundError) and verb in ("CWD", "XCWD"):
            meaning = "no such directory"
        where = f" {args[0]}" if args else ""
        return f"{code} {verb}{where}: {meaning}."
    try:
        text = ftp.RESPONSE[error.errorCode] % tuple(args)
    except TypeError:
        text = ftp.RESPONSE[error.errorCode]
    return f"{code} {verb}: {text[4:]}"


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _close_quietly(thing):
    close = getattr(thing, "discard", None) or getattr(thing, "close", None)
    if close is not None:
        close()
    return thing


def _facts_line(name: str, facts: dict) -> str:
    """An MLST/MLSD entry (RFC 3659 §7.2: C{[facts] SP pathname}): C{type=file;size=5; a.txt}."""
    return "".join(f"{k}={v};" for k, v in facts.items()) + " " + name


# RFC 3659 §7.5.1: what is neither a file nor a directory is typed
# "OS.unix=<kind>", so that no client takes a pipe for a file it can fetch.
_UNIX_KINDS = {
    statmod.S_IFIFO: "OS.unix=fifo",
    statmod.S_IFSOCK: "OS.unix=socket",
    statmod.S_IFCHR: "OS.unix=chr",
    statmod.S_IFBLK: "OS.unix=blk",
    statmod.S_IFLNK: "OS.unix=slink",
}


def mlst_feature(selected) -> str:
    """FEAT's MLST line (RFC 3659 §7.8): each fact shown, C{*} after those C{selected}: C{MLST type*;size*;...;UNIX.mode;}."""
    return "MLST " + "".join(name + ("*" if name in selected else "") + ";" for name in MLST_FACTS)


def mlst_selection(argument: str):
    """
    The facts an C{OPTS MLST} argument selects (RFC 3659 §7.9: C{fact;fact;},
    names in any case; those this server does not show are ignored; none
    selects none), in L{MLST_FACTS}'s order and spelling. Raises
    L{ValueError} for an argument of more than one word.
    """
    if len(argument.split()) > 1:
        raise ValueError(argument)
    asked = {word.strip().lower() for word in argument.split(";")}
    return tuple(name for name in MLST_FACTS if name.lower() in asked)


@implementer(IHalfCloseableProtocol)
class MailhubFTP(ftp.FTP):
    """
    One control connection. Lines come from a L{LineEngine}: framing,
    order behind a command that waits, urgent commands (ABOR, STAT, QUIT)
    while a transfer runs, back-pressure, half-close and the idle, line and
    login timeouts are its rules; this class is about FTP.
    """

    MAX_LENGTH = 4096
    _encoding = "utf-8"
    # The session's record on the hub's event bus (with the console or
    # --transcript: hub.record_sessions), fed the connection's bytes
    # (ftp/record.py turns them into C:/S: lines when someone reads them),
    # kept by the connection itself: the hub's TranscriptFactory hands it
    # over unwrapped (records_own_session), so no wrapper sits between the
    # socket and this protocol (a call per read and per write, ~1 KB per
    # connection); and whether a TLS handshake is under way whose end
    # becomes the record's "tls" event.
    records_own_session = True
    record: ControlRecord | None = None
    # The facts MLST and MLSD show (OPTS MLST; one tuple shared by every
    # connection until one selects others).
    mlst_facts = MLST_DEFAULT
    _tls_pending = False
    # After a refused AUTH (RFC 2228): "refused" for the next line, "secret"
    # after a line hidden so (a second credential may follow), else None.
    _after_auth: str | None = None

    def __init__(self):
        self._current = None  # (verb, path, connection) of the running transfer
        self._abort_pending = False
        self._restart = 0
        self._tls = False
        self._pbsz = False  # RFC 2228 §3: PROT only after a PBSZ
        self.workingDirectory: list[str] = []
        self.data: DataChannel | None = None
        self.anonymous = False
        self.address = "?"
        self.lines: LineEngine | None = None
        self.connection_id = "ftp"

    # -- connection ----------------------------------------------------------

    def connectionMade(self):
        factory = self.factory
        hub = factory.hub
        self.state = self.UNAUTH
        transport = self.transport
        peer = transport.getPeer()
        local = transport.getHost()
        self.address = peer.host
        if getattr(hub, "record_sessions", False):
            # What TranscriptProtocol.connectionMade does for the listeners
            # it wraps: the session starts before anything is said.
            record = self.record = hub.events.start(
                getattr(factory, "protocol_name", "ftp"),
                (getattr(peer, "host", "?"), getattr(peer, "port", 0)),
                (getattr(local, "host", "?"), getattr(local, "port", 0)),
                kind=ControlRecord,
            )
            self._tls_pending = ISSLTransport.providedBy(transport)
        if not factory.admit(self):
            self.sendLine(f"421 Too many connections from {self.address}; try again later.")
            self.transport.loseConnection()
            self.disconnected = True
            return
        if self.record is None:
            self.connection_id = hub.connection_made(self, "ftp")
        else:
            # hub.connection_made, with the record's id as the connection's.
            self.portal = hub.client_portal(transport, "ftp")
            self.connection_id = self.record.id
        self.callLater = hub.reactor.callLater
        handle = getattr(self.transport, "getHandle", None)
        if handle is not None:
            try:
                handle().setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
            except (OSError, AttributeError):
                pass
        # Data connections come to this socket's address (behind haproxy:
        # getHost() is the balancer's; proxyheader.socket_host): straight
        # from the client, or with --passive-ports haproxy:LO-HI through
        # the balancers of --proxy-from, each with a PROXY header.
        local = socket_host(transport)
        data_port = factory.data_port if factory.data_port is not None else local.port - 1
        balancers = hub.proxy_from if factory.passive_balanced else None
        self.data = DataChannel(hub.reactor, local.host, self.address, data_port, factory.data_timeout, None, balancers,
                                upload_grace=factory.idle_timeout)
        if self.record is not None:
            self.data.on_data_connection = self.record.add  # data connections become events
        self.lines = LineEngine(
            self,
            hub.reactor,
            max_line=self.MAX_LENGTH,
            idle_timeout=factory.idle_timeout,
            line_timeout=factory.command_timeout,
            urgent=self._urgent,
        )
        self.sendLine(f"220 {factory.banner}")
        self.lines.start(self.transport, login_timeout=factory.login_timeout)

    def connectionLost(self, reason):
        if self.record is not None:
            self.record.closed()
        self.factory.release(self)
        if self.data is not None:
            self.data.abort()
        if self.lines is not None:
            self.lines.connection_lost()
        self.disconnected = True
        logout = getattr(self, "_logout", None)
        if logout is not None:
            self._logout = None
            logout()
        self.shell = None

    def timed_out(self, kind: str) -> None:
        """L{LineEngine} says a time limit passed (idle, line, login)."""
        if kind == "idle":
            if self.data is not None and self.data.state is DataState.TRANSFERRING:
                self.lines.touch()  # the data channel has its own timeout
                return
            self.sendLine(f"421 No command for {self.lines.idle_timeout:g} seconds; closing the connection.")
        elif kind == "login":
            self.sendLine(f"421 Not logged in after {self.factory.login_timeout:g} seconds; closing the connection.")
        else:
            self.sendLine(f"421 A command line took over {self.lines.line_timeout:g} seconds to arrive; closing the connection.")
        self.disconnected = True
        self.lines.close()

    def readConnectionLost(self):
        # `printf 'USER ...\r\nQUIT\r\n' | nc -N`: answer all, then close.
        if self.lines is not None:
            self.lines.read_connection_lost()

    def writeConnectionLost(self):
        if self.lines is not None:
            self.lines.write_connection_lost()

    def sendLine(self, line):
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if b"\xff" in line:
            # The control connection is Telnet (RFC 959 §4): octet 255 of a
            # name in a reply (257, STAT's listing) is IAC, sent doubled
            # (RFC 2640 §3.1), as a client sends it in a command.
            line = line.replace(b"\xff", b"\xff\xff")
        if self.transport is not None:
            data = line + b"\r\n"
            if self.record is not None:
                self.record.server_bytes(data)
            send_now(self.transport, data)

    def reply(self, key, *args):
        self.sendLine(ftp.RESPONSE[key] % args)

    def multiline(self, code: int, first: str, lines, last: str):
        out = [f"{code}-{first}"] + [f" {line}" for line in lines] + [f"{code} {last}"]
        self.sendLine("\r\n".join(out))

    # -- command dispatch -------------------------------------------------------

    def dataReceived(self, data):
        record = self.record
        if record is not None:
            record_read(self, record, data)
        if self.lines is not None:
            self.lines.data_received(data)

    def line_too_long(self):
        self.sendLine(f"500 Command line too long (at most {self.MAX_LENGTH} octets).")

    def command_failed(self, reason):
        if is_out_of_space(reason.value):
            # RFC 959 §4.2: 452, insufficient storage; one log line, no traceback.
            log.warn("ftp: {why}", why=no_room(reason.value))
            self.sendLine("452 Requested action not taken: insufficient storage space.")
            return True
        if is_not_writable(reason.value):
            # RFC 959 §4.2: 550, file unavailable (no access); one log line.
            log.warn("ftp: refused: {why}", why=error_words(reason.value))
            self.sendLine(f"550 Requested action not taken: the server may not write here ({not_writable_reason(reason.value)}).")
            return True
        self.sendLine("451 Requested action aborted: local error in processing.")
        return False

    def line_received(self, line: bytes):
        if self.disconnected:
            return None
        line = telnet_text(line)
        text = line.decode("utf-8", "surrogateescape")
        verb, _, arg = text.lstrip().partition(" ")
        verb = verb.upper()
        if not verb:
            return None
        after_auth = self._after_auth
        if after_auth is not None:
            self._after_auth = None
            if not arg and looks_like_a_secret(line, following=after_auth == "secret"):
                # A client (or a student) that sent credentials after an
                # AUTH this server refused: never echoed (nor upper-cased).
                self._after_auth = "secret"
                self.sendLine("500 Command not understood (not shown: after a refused AUTH it may be a credential); AUTH TLS starts TLS, then USER and PASS.")
                return None
        try:
            result = self.processCommand(verb, arg)
        except Exception:
            result = failure.Failure()
        if verb == "AUTH" and isinstance(result, str) and result[:1] in ("4", "5"):
            # A refused AUTH (RFC 2228 security data may follow it): the
            # next line, if no command, is not echoed.
            self._after_auth = "refused"
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._succeeded, self._failed, errbackArgs=(verb,))
            return result.addBoth(self._after)
        # Answered at once (most commands): the same steps without the
        # Deferred chain, which costs half of a short command's time here.
        if isinstance(result, failure.Failure):
            self._failed(result, verb)
        else:
            self._succeeded(result)
        return None

    def _succeeded(self, result):
        if isinstance(result, tuple):
            self.reply(*result)
        elif isinstance(result, str) and result[:3].isdigit():
            self.sendLine(result)
        elif result is not None:
            self.reply(result)

    def _failed(self, failure, verb):
        if failure.check(Refused):
            self.sendLine(failure.value.reply)
        elif failure.check(FileSystemUnavailable):
            from twisted_mailhub.store.outage import refused

            refused("ftp", verb, failure.value)
            self.sendLine(_error_reply(verb, failure.value))
        elif failure.check(ftp.FTPCmdError):
            self.sendLine(_error_reply(verb, failure.value))
        elif failure.check(ftp.InvalidPath):
            self.sendLine(f"550 {verb}: no such file or directory (that path leaves your home).")
        else:
            log.failure("ftp {verb} went wrong", failure, verb=verb)
            self.sendLine(f"451 {verb} failed: local error in processing.")

    def _after(self, result):
        if self._abort_pending:
            self._abort_pending = False
            self.sendLine("226 ABOR successful; the data connection is closed.")
        return result

    def processCommand(self, verb, arg=""):
        if _CONTROL.search(arg) is not None:
            # RFC 959 §5.3.2: a pathname has no CR or LF (RFC 2640 allows
            # only CR NUL); no argument needs another control character,
            # and one typed by mistake (a backspace in telnet) would
            # otherwise make a name that looks like another.
            if "\r" in arg or "\n" in arg:
                return f"501 {quote(verb, 20)}: a pathname or argument may not contain CR or LF (RFC 959 §5.3.2){control_note(arg)}."
            return f"501 {quote(verb, 20)}: control characters are not allowed in arguments{control_note(arg)}."
        if verb in ("XPWD", "XCWD", "XCUP", "XMKD", "XRMD"):
            # RFC 1123 §4.1.3.1: the RFC 775 names; XCUP is CDUP (it was
            # taken as "CUP" and refused though HELP lists it).
            verb = "CDUP" if verb == "XCUP" else verb[1:]
        if self.state == self.UNAUTH or self.state == self.INAUTH:
            if verb == "USER":
                return self.ftp_USER(arg)
            if verb == "PASS":
                if self.state == self.UNAUTH:
                    return "503 Login with USER first."
                return self.ftp_PASS(arg)
            if verb not in PUBLIC:
                if verb not in COMMANDS:
                    if self.state == self.INAUTH and not arg:
                        # One word after USER: a student who types the
                        # password alone, as at a "Password:" prompt; not
                        # shown (the console and the log mask it too).
                        return f"500 Command not understood (not shown: after USER it may be the password){control_note(verb)}; send PASS and the password."
                    return f"500 '{quote(verb, 20)}': command not understood."
                return "530 Please login with USER and PASS."
        elif verb == "PASS":
            return "503 Already logged in (USER to log in as someone else)."
        elif self.state == self.RENAMING:
            if verb != "RNTO" and verb not in URGENT:
                self.state = self.AUTHED
                del self._fromName
                return "503 RNTO expected after RNFR; rename cancelled."
        method = getattr(self, "ftp_" + verb, None)
        if method is None or verb not in COMMANDS:
            return f"500 '{quote(verb, 20)}': command not understood (HELP lists the commands)."
        if not arg.strip(" ") and verb in ARGUMENT_NEEDED and verb != "PASS":  # (PASS: anonymous)
            return missing_argument(verb)
        try:
            if arg:
                return method(arg)
            return method()
        except TypeError as e:
            if "argument" in str(e):
                return missing_argument(verb) if not arg else f"501 {verb} takes no argument."
            raise

    def _urgent(self, line: bytes) -> bool:
        """
        ABOR, STAT and QUIT jump ahead of a waiting command only once logged
        in (a transfer may run); before, a pipelined QUIT waits for the
        answer to PASS, which a failed login holds back, so the 530 is sent.
        """
        return self.state not in (self.UNAUTH, self.INAUTH) and _is_urgent(line)

    # -- login -----------------------------------------------------------------

    def ftp_USER(self, username=""):
        if not username:
            return "501 USER needs a name: USER alice"
        if self.factory.require_tls and not self._tls and not self.factory.hub.is_trusted(self.transport):
            return "530 TLS required: send AUTH TLS first (--ftp-require-tls)."
        self._user = username
        self.state = self.INAUTH
        if self.factory.anonymous and username.lower() in ("anonymous", "ftp"):
            return "331 Guest login ok, send your email address as password."
        return f"331 Password required for {quote(username)}."

    def ftp_PASS(self, password=""):
        anonymous = self.factory.anonymous and self._user.lower() in ("anonymous", "ftp")
        if not password and not anonymous:
            # No account has an empty password: no login attempt; say
            # what is missing and wait for it (the state stays INAUTH).
            return missing_argument("PASS")
        if anonymous:
            creds = credentials.Anonymous()
        else:
            creds = credentials.UsernamePassword(self._user.encode("utf-8", "surrogateescape"), password.encode("utf-8", "surrogateescape"))
        self.state = self.UNAUTH  # until the portal answers
        user = self._user

        def ok(result):
            if self.record is not None:
                record_login(self.record, creds, result)  # the record's login event
            interface, avatar, logout = result
            if self.disconnected:
                logout()
                return None
            self.shell = avatar
            self._logout = logout
            self.anonymous = anonymous
            self.workingDirectory = []
            self.state = self.AUTHED
            self.lines.logged_in()
            if anonymous:
                return "230 Anonymous login ok; read-only access to the public folder."
            return f"230 User {quote(user)} logged in; your home is /."

        def failed(reason):
            from twisted.cred import error as cred_error

            reason.trap(Exception)
            self.state = self.UNAUTH
            if not reason.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                # Not the password: the server could not open the account
                # (its data folder moved away, a disk error). One log line;
                # the client is not told its password was wrong.
                if isinstance(reason.value, OSError):
                    log.error("FTP login for {user} failed: {why}", user=quote(user), why=error_words(reason.value))
                else:
                    log.failure("FTP login for {user} failed", reason, user=quote(user))
                return "530 Login failed for a server problem, not your password; try again later."
            return "530 Login incorrect; try USER again."

        return self.portal.login(creds, None, ftp.IFTPShell).addCallbacks(ok, failed)

    def ftp_ACCT(self, account=""):
        return "202 ACCT not needed here."

    def ftp_ALLO(self, size=""):
        # RFC 1123 §4.1.2.13: a server must take ALLO, and may treat it
        # as NOOP (RFC 959 §4.1.3 allows 202); some clients send it before
        # every STOR and gave up on "500 command not understood".
        return "202 ALLO not needed here: no storage is reserved in advance."

    # -- plain commands -------------------------------------------------------

    def ftp_SYST(self):
        return "215 UNIX Type: L8"

    def ftp_NOOP(self):
        return "200 NOOP ok."

    def ftp_QUIT(self):
        if self.data is not None:
            self.data.abort()
        self.sendLine("221 Goodbye.")
        self.disconnected = True
        self.lines.stop()
        close_now(self.transport)

    def ftp_HELP(self, arg=""):
        if arg:
            verb = arg.strip().upper()
            if verb in COMMANDS:
                return f"214 Syntax: {SYNTAX.get(verb, verb)}"
            return f"502 Unknown command {quote(verb, 20)}."
        rows = [" ".join(COMMANDS[i : i + 10]) for i in range(0, len(COMMANDS), 10)]
        self.multiline(214, "The following commands are recognized:", rows, "Help OK.")

    def ftp_FEAT(self):
        features = [mlst_feature(self.mlst_facts) if line == "MLST" else line for line in FEATURES]
        self.multiline(211, "Features:", features, "End")

    def ftp_OPTS(self, option=""):
        """
        OPTS (RFC 2389 §4): C{OPTS UTF8 ON} (always on here); C{OPTS MLST
        fact;fact;} selects the facts MLST and MLSD show from now on (RFC
        3659 §7.9; unknown ones are ignored, none selects none) and the
        reply names them. Any other command has no options: 501.
        """
        command, _, rest = option.strip().partition(" ")
        command = command.upper()
        words = rest.upper().split()
        if not command:
            return "501 OPTS needs a command name: OPTS UTF8 ON, or OPTS MLST type;size;modify;perm;"
        if command in ("UTF8", "UTF-8"):
            if words in (["ON"], []):
                return "200 UTF8 mode on; file names are UTF-8."
            return "504 UTF-8 is always on here."
        if command == "MLST":
            try:
                self.mlst_facts = mlst_selection(rest.strip())
            except ValueError:
                return "501 OPTS MLST wants the facts as one word: OPTS MLST type;size;modify;"
            return "200 MLST OPTS" + (" " + "".join(f"{name};" for name in self.mlst_facts) if self.mlst_facts else "")
        if command in COMMANDS:
            return f"501 OPTS {quote(command, 20)}: that command has no options here (OPTS UTF8, OPTS MLST have)."
        return f"501 OPTS {quote(command, 20)}: no such command (OPTS UTF8 ON, OPTS MLST facts)."

    def ftp_TYPE(self, type=""):
        if not type.strip(" "):
            # RFC 959 §4.2: 501 for a syntax error in the arguments (a missing
            # one included); 504 is for a parameter not implemented.
            return "501 TYPE needs a type: TYPE A or TYPE I."
        code = type.upper().split()
        if code[:1] == ["A"] and code[1:] in ([], ["N"]):
            self.binary = False
            return "200 Type set to A (ASCII: line ends are converted)."
        if code[:1] in (["I"], ["L"]) and code[1:] in ([], ["8"]):
            self.binary = True
            return "200 Type set to I (binary)."
        return f"504 TYPE {quote(type, 20)}: use TYPE A or TYPE I."

    def ftp_MODE(self, mode=""):
        if not mode.strip(" "):
            return "501 MODE needs a mode: MODE S."
        if mode.upper() == "S":
            return "200 Mode S (stream) ok."
        return f"504 MODE {quote(mode, 20)}: only MODE S."

    def ftp_STRU(self, structure=""):
        if not structure.strip(" "):
            return "501 STRU needs a structure: STRU F."
        if structure.upper() == "F":
            return "200 Structure F (file) ok."
        return f"504 STRU {quote(structure, 20)}: only STRU F."

    def ftp_CWD(self, path="/"):
        return ftp.FTP.ftp_CWD(self, path).addCallback(lambda _: f'250 Directory is now "{self._pwd()}".')

    def ftp_PWD(self):
        return f'257 "{self._pwd()}" is the current directory.'

    def _pwd(self):
        return ("/" + "/".join(self.workingDirectory)).replace('"', '""')

    def ftp_MKD(self, path=""):
        if not path:
            return "501 MKD needs a directory name."
        segments = self._segments(path)
        # RFC 959 Appendix II: a quote inside the quoted name is doubled.
        shown = ("/" + "/".join(segments)).replace('"', '""')
        return self.shell.makeDirectory(segments).addCallback(lambda _: f'257 "{shown}" created.')

    def ftp_RNFR(self, fromName=""):
        if not fromName:
            return "501 RNFR needs the name to rename."
        segments = self._segments(fromName)
        if getattr(self.shell, "readonly", False):
            raise ftp.PermissionDeniedError(fromName)

        def exists(_):
            self._fromName = fromName
            self.state = self.RENAMING
            return "350 Ready for RNTO."

        return self.shell.stat(segments, ("size",)).addCallback(exists)

    def ftp_RNTO(self, toName=""):
        if self.state != self.RENAMING:
            return "503 RNTO needs RNFR first: RNFR <old name>, then RNTO <new name>."
        if not toName:
            return "501 RNTO needs the new name."
        try:
            self._segments(toName)
        except ftp.InvalidPath:
            # Twisted's RNTO would report the *old* name as missing.
            from_name = self._fromName
            del self._fromName
            self.state = self.AUTHED
            return f"550 RNTO {quote(toName, 200)}: that path leaves your home; {quote(from_name, 200)} stays where it is."

        def refused(reason):
            reason.trap(ftp.IsNotADirectoryError, ftp.IsADirectoryError)
            raise Refused(f"550 RNTO {quote(toName, 200)}: a directory cannot replace a file, nor a file a directory.")

        return ftp.FTP.ftp_RNTO(self, toName).addCallbacks(lambda _: "250 Renamed.", refused)

    def ftp_REST(self, offset=""):
        # ASCII digits only: int() would also take "1_000", "+5" and other
        # scripts' digits.
        offset = offset.strip(" ")
        if not (offset.isascii() and offset.isdigit()):
            return f'501 REST wants a byte offset, got "{quote(offset, 30)}".'
        value = int(offset)
        self._restart = value
        return f"350 Restarting at {value}; send STOR or RETR to go on."

    def ftp_SIZE(self, path=""):
        if not self.binary:
            # RFC 3659 §4: SIZE is the size as sent in the current TYPE; in
            # TYPE A that means converting the whole file. Say so instead.
            return "550 SIZE is exact only in binary mode: send TYPE I first."
        if not path:
            return "501 SIZE needs a file name."
        try:
            segments = self._segments(path)
        except ftp.InvalidPath:
            return ftp.FTP.ftp_SIZE(self, path)

        def directory(result):
            # RFC 3659 §4: the octets a RETR would send; a directory has none,
            # nor has a pipe or a device (RETR refuses them).
            if result[0]:
                raise Refused(f"550 SIZE {quote(path, 200)}: a directory, not a file.")
            if result[1] and statmod.S_IFMT(result[1]) != statmod.S_IFREG:
                raise Refused(f"550 SIZE {quote(path, 200)}: not a regular file (a pipe or a device), so it has no size to send.")

        # A name that does not exist goes on to the size of its interrupted upload.
        d = self.shell.stat(segments, ("directory", "permissions")).addCallbacks(directory, lambda _: None)
        return d.addCallback(lambda _: ftp.FTP.ftp_SIZE(self, path))

    def ftp_MDTM(self, path=""):
        if not path:
            return "501 MDTM needs a file name."
        return ftp.FTP.ftp_MDTM(self, path)

    def _segments(self, path: str) -> list[str]:
        return ftp.toSegments(self.workingDirectory, path)

    # -- setting times (lftp mirror -R, FileZilla, WinSCP) ----------------------

    def ftp_MFMT(self, argument=""):
        """
        C{MFMT YYYYMMDDHHMMSS[.sss] <path>} (draft-somers-ftp-mfxx §3, the
        time in UTC as MDTM's, RFC 3659 §2.3): set the file's modification
        time; C{213 Modify=YYYYMMDDHHMMSS; <path>} once it is durable.
        """
        when, _, path = argument.strip(" ").partition(" ")
        seconds = ftp_time(when)
        if seconds is None or not path:
            return "501 MFMT wants a time and a file: MFMT YYYYMMDDHHMMSS <file> (UTC)."
        shown = time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds))
        return self._set_times("MFMT", path, None, seconds).addCallback(lambda _: f"213 Modify={shown}; {quote(path, 200)}")

    def ftp_SITE(self, argument=""):
        """
        C{SITE UTIME}, in both spellings clients send: C{SITE UTIME
        YYYYMMDDhhmm[ss] <path>} (ProFTPD's) and C{SITE UTIME <path>
        <atime> <mtime> <ctime> UTC} (Pure-FTPd's, lftp's); C{200} once
        the times are durable. No other SITE command.
        """
        command, _, rest = argument.strip(" ").partition(" ")
        if not command:
            return "501 SITE needs a command: SITE UTIME or SITE CHMOD."
        if command.upper() == "CHMOD":
            return self._site_chmod(rest.strip(" "))
        if command.upper() != "UTIME":
            return f"504 SITE {quote(command, 20)}: not here (SITE UTIME sets a file's times, SITE CHMOD its mode)."
        words = rest.strip(" ").split(" ")
        if len(words) >= 5 and words[-1].upper() == "UTC" and all(ftp_time(w) is not None for w in words[-4:-1]):
            path = " ".join(words[:-4])
            accessed, modified = ftp_time(words[-4]), ftp_time(words[-3])
        elif len(words) >= 2 and ftp_time(words[0], minutes=True) is not None:
            path = rest.strip(" ").partition(" ")[2]
            accessed, modified = None, ftp_time(words[0], minutes=True)
        else:
            return "501 SITE UTIME wants a time and a file: SITE UTIME YYYYMMDDHHMMSS <file>, or SITE UTIME <file> <atime> <mtime> <ctime> UTC."
        if not path:
            return "501 SITE UTIME needs a file name."
        return self._set_times("SITE UTIME", path, accessed, modified).addCallback(lambda _: "200 SITE UTIME: times set.")

    def _site_chmod(self, rest: str):
        """
        C{SITE CHMOD <octal mode> <path>} (what lftp sends after each
        upload of C{mirror -R}): the mode the file keeps
        (L{twisted_mailhub.ftp.vfs.kept_mode}: the owner's read and write
        stay on); on a file system with fixed modes C{202} (RFC 959:
        superfluous at this site) and nothing changed.
        """
        mode, _, path = rest.partition(" ")
        if not (mode.isascii() and mode.isdigit() and len(mode) <= 4 and set(mode) <= set("01234567")) or not path:
            return "501 SITE CHMOD wants an octal mode and a file: SITE CHMOD 644 <file>."
        segments = self._segments(path)
        set_permissions = getattr(self.shell, "setPermissions", None)
        if set_permissions is None:
            if getattr(self.shell, "readonly", False):
                raise ftp.PermissionDeniedError(path)
            return self.shell.stat(segments, ("size",)).addCallback(
                lambda _: "202 SITE CHMOD: this file system keeps fixed modes (files 0644, folders 0755); nothing changed."
            )
        return defer.maybeDeferred(set_permissions, segments, int(mode, 8)).addCallback(lambda kept: f"200 SITE CHMOD: the mode is now {kept & 0o7777:04o}.")

    def _set_times(self, verb: str, path: str, accessed: float | None, modified: float) -> defer.Deferred:
        segments = self._segments(path)
        set_times = getattr(self.shell, "setTimes", None)
        if set_times is None:
            return defer.fail(Refused(f"502 {verb}: this file system keeps its own times."))
        return defer.maybeDeferred(set_times, segments, accessed, modified)

    # -- FTPS (RFC 4217) ---------------------------------------------------------

    def ftp_AUTH(self, mechanism=""):
        if not mechanism.strip(" "):
            return "501 AUTH needs a mechanism: AUTH TLS."
        if mechanism.upper() not in ("TLS", "TLS-C", "SSL"):
            return f"504 AUTH {quote(mechanism, 20)}: use AUTH TLS."
        if self._tls:
            return "503 TLS is already on."
        self.sendLine("234 AUTH TLS ok; start the TLS handshake.")
        # Whatever the client pipelined after AUTH TLS in plaintext is dropped.
        self.lines.discard_pending()
        self.transport.startTLS(self.factory.hub.tls)
        self._tls = True
        self.data.control_tls = True  # (the console says PROT P or PROT C of each data connection)
        self._tls_pending = self.record is not None  # the handshake's end is recorded
        # RFC 4217 §6: a new login is needed after AUTH.
        if self.state != self.AUTHED:
            self.state = self.UNAUTH
        return None

    def ftp_PBSZ(self, size=""):
        # RFC 2228 §3 (PBSZ <decimal-integer>), RFC 4217 §8: TLS needs no
        # buffer; any size asked for is answered with the one used, 0.
        if not self._tls:
            return "503 PBSZ needs AUTH TLS first."
        if not size.strip().isascii() or not size.strip().isdigit():
            return f"501 PBSZ wants a decimal size: PBSZ 0 (got \"{quote(size, 30)}\")."
        self._pbsz = True
        return "200 PBSZ=0"

    def ftp_PROT(self, level=""):
        level = level.upper()
        if not self._tls:
            return "503 PROT needs AUTH TLS first."
        if not level.strip(" "):
            return "501 PROT needs a level: PROT P or PROT C."
        if not self._pbsz:
            # RFC 2228 §3 (PROT "must be preceded by a successful protection
            # buffer size negotiation"), RFC 4217 §9: PBSZ 0, then PROT.
            return "503 PROT needs PBSZ first: PBSZ 0, then PROT P."
        if level == "P":
            self.data.protect = True
            self.data.tls = self.factory.data_tls
            return "200 Protection level set to Private: data connections use TLS."
        if level == "C":
            self.data.protect = False
            return "200 Protection level set to Clear."
        return f"536 PROT {quote(level, 20)}: only P and C."

    def ftp_CCC(self):
        return "533 CCC refused: the control channel stays encrypted."

    # -- data channel set-up -------------------------------------------------------

    def ftp_PASV(self):
        if self._epsvAll:
            return "503 EPSV ALL was given: use EPSV."
        host = self.factory.passive_address or self._passive_host()
        if ":" in host:
            # RFC 2428 gives PASV no reply for this (its 522 is EPSV's and
            # EPRT's); pure-ftpd answers "425 You cannot use PASV on IPv6
            # connections. Use EPSV instead." (vsftpd a useless 227
            # 0,0,0,0); so 425, naming the command that works.
            return "425 PASV is IPv4 only; use EPSV."
        port = self._open_passive()
        if isinstance(port, str):
            return port
        return f"227 Entering Passive Mode ({ftp.encodeHostPort(host, port)})."

    def ftp_EPSV(self, protocol=""):
        if protocol.upper() == "ALL":
            self._epsvAll = True
            return "200 EPSV ALL ok: PORT, EPRT and PASV are refused from now on."
        if protocol and protocol not in ("1", "2"):
            return "522 Network protocol not supported, use (1,2)."
        if protocol and protocol != self._network_protocol():
            # RFC 2428 §3: the passive port is on this connection's own
            # address, which is of one family only (vsftpd answers so).
            return f"522 Network protocol not supported, use ({self._network_protocol()})."
        port = self._open_passive()
        if isinstance(port, str):
            return port
        return f"229 Entering Extended Passive Mode (|||{port}|)."

    def _network_protocol(self) -> str:
        """
        The RFC 2428 network protocol number of the control connection:
        C{"2"} over IPv6, C{"1"} over IPv4 (also an IPv4 client seen by an
        IPv6 socket as C{::ffff:a.b.c.d}, RFC 4291 §2.5.5.2).
        """
        address = self.address.lower()
        return "2" if ":" in address and not address.startswith("::ffff:") else "1"

    def _passive_host(self) -> str:
        """
        The address PASV names without --passive-address: this socket's
        own, or with data connections through the balancer
        (C{--passive-ports haproxy:LO-HI}) the address the client reached
        on the balancer (the control connection's PROXY header says it).
        """
        if self.factory.passive_balanced:
            return getattr(self.transport.getHost(), "host", None) or self.data.local_host
        return self.data.local_host

    def _open_passive(self):
        try:
            return self.data.passive(self.factory.passive_ports)
        except Exception as e:
            log.warn("ftp cannot open a passive port: {why}", why=reason_words(e))
            return "425 Cannot open a passive port."

    def ftp_PORT(self, address=""):
        if self._epsvAll:
            return "503 EPSV ALL was given: use EPSV."
        try:
            host, port = decode_host_port(address)
        except ValueError:
            return "501 PORT wants h1,h2,h3,h4,p1,p2."
        if self._network_protocol() != "1":
            # PORT names an IPv4 address only (RFC 2428 §1); on an IPv6
            # control connection it is EPRT of the other family, answered
            # as RFC 2428 §2 answers that (522, the families to use); it
            # was a 504 that called it a bounce (RFC 2577).
            return "522 PORT is IPv4 only; use EPRT, network protocol (2)."
        return self._set_active(host, port)

    def ftp_EPRT(self, address=""):
        if self._epsvAll:
            return "503 EPSV ALL was given: use EPSV."
        try:
            family, host, port = decode_extended_address(address)
        except ValueError:
            return "501 EPRT wants |1|h.o.s.t|port| or |2|::1|port|."
        if family not in ("1", "2"):
            return "522 Network protocol not supported, use (1,2)."
        own = self._network_protocol()
        if family != own and not (own == "1" and host[:7].lower() == "::ffff:"):
            # RFC 2428 §2: the data connection is of the control
            # connection's family (an IPv4 client's own address written
            # as IPv6, ::ffff:a.b.c.d, is still IPv4: see _set_active).
            return f"522 Network protocol not supported, use ({own})."
        return self._set_active(host, port, "EPRT")

    def _set_active(self, host: str, port: int, verb: str = "PORT"):
        # RFC 2577 §3 (FTP bounce): data only to the client itself, and
        # never to a privileged port.
        # Both refusals are 504 (RFC 2577 §3 suggests it for PORT to a
        # privileged port), each with its reason.
        if not same_host(host, self.address):
            log.warn("ftp PORT to {host} refused for {peer} (bounce)", host=host, peer=self.address)
            return f"504 {verb} refused: data connections go to your own address only (RFC 2577)."
        if port > 65535:
            return f"501 {verb}: {port} is not a TCP port (1024-65535)."
        if port < 1024:
            return f"504 {verb} refused: the port must be 1024-65535, not a privileged port (RFC 2577)."
        if ":" not in self.address and host[:7].lower() == "::ffff:":
            # EPRT |2|::ffff:a.b.c.d| from an IPv4 client (an IPv6 socket's
            # view of its own address): the data connection goes over IPv4.
            host = host[7:]
        self.data.active(host, port)
        return f"200 {verb} command successful."

    # -- transfers -----------------------------------------------------------------

    def _transfer(self, verb, path, opened, run, first_line):
        """
        The shape every transfer shares: C{opened} (a Deferred from the
        shell) must succeed, then 150, then the data connection, then
        C{run(connection, opened_result)}, then 226 (or 425/426/451/452).
        """
        self._restart = 0
        progress = {"opened": None, "connected": False}

        def go(thing):
            if not self.data.ready:
                # Checked after the file: "no such file" is the more useful answer.
                _close_quietly(thing)
                return "425 Use PORT, PASV, EPRT or EPSV first."
            progress["opened"] = thing
            line = first_line(thing)
            if self.data.state is DataState.PASSIVE_CONNECTED:
                line = "125" + line[3:]  # RFC 959: the data connection is already open
            self.sendLine(line)
            self._current = (verb, path, None)
            return self.data.open().addCallback(connected, thing)

        def connected(conn, thing):
            progress["connected"] = True
            self._current = (verb, path, conn)
            return run(conn, thing)

        def done(result):
            self._current = None
            self.data.finished()
            connection = progress["connected"] and self.data.connection
            octets = result if isinstance(result, int) else (connection.progress() if connection else 0)
            metrics = self.factory.hub.metrics
            if metrics is not None:
                metrics.ftp_transfer(verb, octets)
            return result if isinstance(result, str) else "226 Transfer complete."

        def failed(reason):
            from twisted_mailhub.filequota import FileQuotaExceeded

            if reason.check(FileQuotaExceeded):
                # RFC 959 §4.2: 552, exceeded storage allocation.
                return f"552 {verb} refused: {reason.value.reason}."
            if progress["opened"] is None:
                return reason  # the shell said no: 550 and friends
            self._current = None
            self.data.finished()
            if not progress["connected"]:
                _close_quietly(progress["opened"])
            if reason.check(TransferAborted):
                return "426 Transfer aborted."
            if reason.check(TransferWriteError) and getattr(reason.value, "errno", None) == errno.EDQUOT:
                return f"552 {verb} aborted: {reason.getErrorMessage()}; the partial file was removed."
            if reason.check(TransferWriteError):
                # RFC 959 §4.2: 452, insufficient storage / cannot write.
                return f"452 Requested action not taken: cannot write the file ({reason.getErrorMessage()})."
            if reason.check(TransferFailed):
                # RFC 959 §4.2's 425 and 426, their reason said once
                # (not "Connection closed; transfer aborted (data
                # connection closed by the client)").
                words = reason.getErrorMessage()
                words = words[:1].upper() + words[1:]
                if not progress["connected"]:
                    return f"425 {words}."
                return f"426 {words}; transfer aborted."
            if reason.check(OSError):
                from twisted_mailhub.ftp.vfs import error_words

                log.warn("ftp upload failed: {error}", error=reason.value.strerror or reason.value.__class__.__name__)
                return f"452 Write error: {error_words(reason.value)}."
            return reason

        return opened.addCallback(go).addCallbacks(done, failed)

    def ftp_RETR(self, path=""):
        if not path:
            return "501 RETR needs a file name."
        segments = self._segments(path)
        offset = self._restart
        refused = self._ascii_restart_refused("RETR", path)
        if refused:
            return refused
        opened = self.shell.openForReadingAt(segments, offset)
        if offset:
            opened.addCallback(self._check_restart, "RETR", path, offset)

        def first(reader):
            mode = "BINARY" if self.binary else "ASCII"
            size = reader.size() if hasattr(reader, "size") else None
            extra = f" ({size - offset} bytes)" if size is not None and self.binary else ""
            return f"150 Opening {mode} mode data connection for {quote(path, 200)}{extra}."

        def run(conn, reader):
            d = conn.send_file(reader, ascii=not self.binary)
            return d.addBoth(lambda r: (reader.close(), r)[1])

        return self._transfer("RETR", path, opened, run, first)

    def _check_restart(self, reader, verb, path, offset):
        """
        RFC 1123 §4.1.3.4: a restart marker past the end of the file is
        refused with 554 (a download would send nothing, an upload would
        leave a hole of NUL bytes).
        """
        size = reader.size() if hasattr(reader, "size") else None
        if size is not None and offset > size:
            _close_quietly(reader)
            raise Refused(f"554 {verb} {quote(path, 200)}: restart point {offset} is past the end of the file ({size} bytes).")
        return reader

    def _ascii_restart_refused(self, verb, path):
        """
        The 554 reply for a restart marker given in TYPE A, or L{None}.

        RFC 3659 §5.1: a STREAM-mode restart marker is an octet offset into
        the data stream, which in TYPE A has CR LF where the stored file has
        LF; the stored file's offset is not the stream's, and resuming at it
        would drop or repeat octets. Refused (RFC 1123 §4.1.3.4: 554 for a
        restart point that cannot be used); TYPE I counts both alike.
        """
        if not self._restart or self.binary:
            return None
        restart, self._restart = self._restart, 0
        return (
            f"554 {verb} {quote(path, 200)}: restart point {restart} refused in TYPE A "
            "(it counts octets of the data stream, CR LF line ends, not of the file); send TYPE I, then REST again."
        )

    def _store(self, verb, path, segments, append):
        restart = self._restart
        offset = 0 if append else restart
        if not append:
            refused = self._ascii_restart_refused(verb, path)
            if refused:
                return refused
        if restart:
            d = self.shell.stat(segments, ("size",))

            def size_known(facts):
                if restart > facts[0]:
                    raise Refused(
                        f"554 {verb} {quote(path, 200)}: restart point {restart} is past the end of the file ({facts[0]} bytes)."
                    )
                return self.shell.openForWritingAt(segments, offset, append)

            def missing(reason):
                reason.trap(ftp.FileNotFoundError)
                raise Refused(f"554 {verb} {quote(path, 200)}: restart point {restart} is past the end (no such file yet).")

            opened = d.addCallbacks(size_known, missing)
        else:
            opened = self.shell.openForWritingAt(segments, offset, append)

        def first(writer):
            mode = "BINARY" if self.binary else "ASCII"
            if verb == "STOU":
                return f"150 FILE: {quote(segments[-1], 200)}"
            return f"150 Opening {mode} mode data connection for {quote(path, 200)}."

        def run(conn, writer):
            d = conn.receive(writer, ascii=not self.binary)

            def durable(n):
                return writer.close().addCallback(lambda _: n)

            def broken(reason):
                # The file system decides what a broken upload leaves (the
                # disk shell: nothing under the file's name; see ftp/vfs.py).
                fail = getattr(writer, "fail", None)
                return (fail(reason) if fail is not None else writer.close()).addBoth(lambda _: reason)

            d.addCallbacks(durable, broken)
            if verb == "STOU":
                d.addCallback(lambda n: f"226 Transfer complete (unique file name: {quote(segments[-1], 200)}).")
            return d

        return self._transfer(verb, path, opened, run, first)

    def ftp_STOR(self, path=""):
        if not path:
            return "501 STOR needs a file name."
        return self._store("STOR", path, self._segments(path), append=False)

    def ftp_APPE(self, path=""):
        if not path:
            return "501 APPE needs a file name."
        return self._store("APPE", path, self._segments(path), append=True)

    def ftp_STOU(self, path=""):
        base = self._segments(path or "file")
        if not self.data.ready:
            return "425 Use PORT, PASV, EPRT or EPSV first."
        return self.shell.uniqueName(base).addCallback(
            lambda segments: self._store("STOU", "/".join(segments), segments, append=False)
        )

    def ftp_ABOR(self):
        if self._current is not None:
            # RFC 959 §4.1.3: the transfer's own reply (426) goes first, then
            # ours; _next sends it once the transfer has answered (an
            # upload answers only when what arrived is on disk).
            self._abort_pending = True
            self.data.abort()
            return None
        self.data.reset()
        return "225 No transfer to abort."

    # -- listings ---------------------------------------------------------------

    LIST_KEYS = ("size", "directory", "permissions", "hardlinks", "modified")

    def _listing_target(self, path):
        # "LIST -la", "LIST -a dir": options ls would take are ignored.
        words = path.split(" ")
        while words and words[0].startswith("-") and len(words[0]) > 1:
            words.pop(0)
        path = " ".join(words)
        segments = self._segments(path or ".")
        pattern = None
        if segments and any(c in segments[-1] for c in "*?["):
            pattern = segments.pop()
        return segments, pattern

    def _send_listing(self, verb, path, lines_of):
        segments, pattern = self._listing_target(path)
        d = self.shell.list(segments, self.LIST_KEYS)

        def filtered(entries):
            if pattern is not None:
                entries = [e for e in entries if fnmatch.fnmatchcase(e[0], pattern)]
            return entries

        opened = d.addCallback(filtered)

        def run(conn, entries):
            text = "".join(line + "\r\n" for line in lines_of(entries))
            return conn.send_bytes(text.encode("utf-8", "surrogateescape"))

        return self._transfer(verb, path, opened, run, lambda _: "150 Here comes the directory listing.")

    def ftp_LIST(self, path=""):
        return self._send_listing("LIST", path, lambda entries: [self._ls_line(n, f) for n, f in entries])

    def ftp_NLST(self, path=""):
        # A bare NLST lists the working directory (lftp's mirror needs it).
        return self._send_listing("NLST", path, lambda entries: [n for n, f in entries])

    def ftp_MLSD(self, path=""):
        segments = self._segments(path or ".")
        d = self.shell.stat(segments, ("directory",))
        keys = self._mlst_keys()

        def is_dir(result):
            if not result[0]:
                raise ftp.IsNotADirectoryError(path)
            return self.shell.list(segments, keys)

        opened = d.addCallback(is_dir)

        def run(conn, entries):
            lines = [_facts_line(n, self._facts(f, keys)) for n, f in entries]
            return conn.send_bytes("".join(line + "\r\n" for line in lines).encode("utf-8", "surrogateescape"))

        return self._transfer("MLSD", path, opened, run, lambda _: "150 Here comes the machine listing.")

    def ftp_MLST(self, path=""):
        segments = self._segments(path or ".")
        shown = "/" + "/".join(segments)
        keys = self._mlst_keys()

        def answer(facts):
            self.sendLine(f"250-Listing {shown}\r\n {_facts_line(shown, self._facts(facts, keys))}\r\n250 End")

        return self.shell.stat(segments, keys).addCallback(answer)

    def ftp_STAT(self, path=""):
        if not path:
            if self._current is not None:
                verb, name, conn = self._current
                moved = conn.progress() if conn is not None else 0
                self.multiline(213, "Status:", [f"{verb} {name}: {moved} bytes so far"], "End of status.")
                return None
            who = "anonymous" if self.anonymous else (getattr(self, "_user", None) if self.state == self.AUTHED else "not logged in")
            lines = [
                f"Connected from {self.address}",
                f"Logged in as {who}",
                f"TYPE: {'BINARY' if self.binary else 'ASCII'}; STRUcture: File; MODE: Stream",
                f"Control channel: {'TLS' if self._tls else 'plain'}; data channel: {'TLS' if self.data.protect else 'clear'}",
                f"Data channel: {self.data.state.value}",
            ]
            self.multiline(211, f"{self.factory.hub.hostname} FTP server status:", lines, "End of status.")
            return None
        if self.state != self.AUTHED:
            return "530 Please login with USER and PASS."
        segments, pattern = self._listing_target(path)

        def answer(entries):
            if pattern is not None:
                entries = [e for e in entries if fnmatch.fnmatchcase(e[0], pattern)]
            self.multiline(213, f"Status of {quote(path, 200)}:", [self._ls_line(n, f) for n, f in entries], "End of status.")

        return self.shell.list(segments, self.LIST_KEYS).addCallback(answer)

    def _ls_line(self, name, facts):
        size, directory, mode, links, modified = facts
        if time.time() - modified < 180 * 86400:
            when = time.strftime("%b %d %H:%M", time.gmtime(modified))
        else:
            when = time.strftime("%b %d  %Y", time.gmtime(modified))
        return f"{statmod.filemode(mode)} {links:3d} ftp      ftp      {size:12d} {when} {name}"

    def _mlst_keys(self) -> tuple:
        """The shell's facts (C{stat}, C{list} keys) the selected MLST facts are made of."""
        if "unique" in self.mlst_facts:
            return self.LIST_KEYS + ("unique",)
        return self.LIST_KEYS

    def _perm(self, directory: bool, kind: int = statmod.S_IFREG) -> str:
        readonly = getattr(self.shell, "readonly", False)
        if directory:
            return "el" if readonly else "eflcdmp"
        if kind != statmod.S_IFREG:
            # A pipe, a socket, a device: never retrieved (RETR is 550), but
            # it can be deleted and renamed like any name.
            return "" if readonly else "df"
        return "r" if readonly else "adfrw"

    def _facts(self, values, keys=LIST_KEYS) -> dict:
        """
        The selected MLST facts (L{mlst_facts}) of a file whose shell facts
        are C{values} for C{keys} (L{_mlst_keys}): RFC 3659 §7.5.
        """
        size, directory, mode, links, modified = values[:5]
        kind = statmod.S_IFMT(mode) if mode else (statmod.S_IFDIR if directory else statmod.S_IFREG)
        if directory:
            kind = statmod.S_IFDIR
        selected = self.mlst_facts
        out = {}
        for name in selected:
            if name == "type":
                out["type"] = "dir" if directory else "file" if kind == statmod.S_IFREG else _UNIX_KINDS.get(kind, "OS.unix=other")
            elif name == "size":
                if kind == statmod.S_IFREG:
                    out["size"] = size
            elif name == "modify":
                out["modify"] = time.strftime("%Y%m%d%H%M%S", time.gmtime(modified))
            elif name == "perm":
                out["perm"] = self._perm(directory, kind)
            elif name == "unique":
                out["unique"] = values[keys.index("unique")]
            elif name == "UNIX.mode":
                out["UNIX.mode"] = f"{statmod.S_IMODE(mode):04o}"
        return out


class MailhubFTPFactory(ftp.FTPFactory):
    """
    Builds L{MailhubFTP} for one listener, holding the options and the
    per-address connection counts.
    """

    protocol = MailhubFTP

    def __init__(self, hub, banner="", anonymous=False, data_port=None, passive_ports=None, passive_address=None,
                 require_tls=False, max_per_ip=20, idle_timeout=300, data_timeout=60, login_timeout=300,
                 command_timeout=120, passive_balanced=False):
        ftp.FTPFactory.__init__(self, None)
        self.hub = hub
        self.banner = banner or f"{hub.hostname} FTP server (twisted-mailhub) ready."
        self.anonymous = anonymous
        self.allowAnonymous = anonymous
        self.data_port = data_port
        self.passive_ports = passive_ports
        # --passive-ports haproxy:LO-HI: data connections through the
        # balancer, each with a PROXY header (ftp/data.py).
        self.passive_balanced = passive_balanced
        self.passive_address = passive_address
        self.require_tls = require_tls
        self.max_per_ip = max_per_ip
        self.idle_timeout = idle_timeout
        self.data_timeout = data_timeout
        self.login_timeout = login_timeout
        self.command_timeout = command_timeout
        self.per_address: dict[str, int] = {}
        self._data_tls = None

    @property
    def data_tls(self):
        if self._data_tls is None:
            self._data_tls = data_tls_options(self.hub.tls)
        return self._data_tls

    def buildProtocol(self, addr):
        p = self.protocol()
        p.factory = self
        return p

    def admit(self, protocol) -> bool:
        # Counted per client (an IPv6 host is its /64: clientkey.py).
        host = client_key(protocol.address)
        count = self.per_address.get(host, 0)
        if self.max_per_ip and count >= self.max_per_ip:
            log.warn("ftp connection from {address} refused: {n} already open from {host}", address=protocol.address, host=host, n=count)
            protocol._admitted = False
            return False
        self.per_address[host] = count + 1
        protocol._admitted = True
        return True

    def release(self, protocol) -> None:
        if getattr(protocol, "_admitted", False):
            protocol._admitted = False
            host = client_key(protocol.address)
            count = self.per_address.get(host, 1) - 1
            if count <= 0:
                self.per_address.pop(host, None)
            else:
                self.per_address[host] = count

    def stopFactory(self):
        pass


__all__ = ["MailhubFTP", "MailhubFTPFactory"]
