# -*- test-case-name: tests.test_sftp_protocol,tests.test_e2e_sftp -*-
"""
The SFTP server (draft-ietf-secsh-filexfer-02, "version 3", the one
OpenSSH speaks) on the hub's virtual file system: the one bridge from SFTP
requests onto an L{IMailhubShell}, the same shell an FTP login gets.

Theory of operation:
  - Bytes arrive from the SSH channel; packets are C{uint32 length, byte
    type, payload}. A length over L{SFTPServer.max_packet} (or zero) cannot
    be skipped safely, so it ends the session; anything shorter is parsed
    with L{PacketReader}, which raises L{MalformedPacket} on a truncated or
    inconsistent field (Conch's own parser relies on C{assert}s). A
    malformed request gets C{SSH_FX_BAD_MESSAGE}.
  - Requests are answered strictly in order, one at a time: a request
    whose answer waits (a CLOSE waiting for fsync) holds the ones behind
    it. A WRITE at any offset goes to the writer's C{write_at} when it has
    one (the PostgreSQL file system), else to a seek of its file (disk).
  - Back-pressure: when the client stops reading and more than
    L{SFTPServer.max_backlog} bytes of answers wait in the channel, requests
    are no longer processed, and the channel holds the client's SSH window
    (see L{twisted_mailhub.sftp.ssh.SFTPChannel}), so memory stays bounded.
  - Paths are resolved exactly as FTP resolves them: Twisted's
    C{ftp.toSegments} from C{/} (C{..} above C{/} refused as "no such
    file"), then the shell confines every path (symlinks included).
  - Every request and its answer is reported to C{observer} (the transcript
    and the live console) as decoded text: C{OPEN /notes.txt WRITE|CREAT}
    and C{handle 1}.
"""

from __future__ import annotations

import os
import re
import stat as statmod
import struct
import time
from typing import Any, Callable

from twisted.internet import defer, protocol, task, threads
from twisted.logger import Logger
from twisted.protocols import ftp
from twisted.python import failure

from twisted_mailhub.lines import MIN_TRANSFER_RATE

log = Logger()

# Packet types (filexfer-02 §3).
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_LSTAT, FXP_FSTAT, FXP_SETSTAT, FXP_FSETSTAT, FXP_OPENDIR, FXP_READDIR = 7, 8, 9, 10, 11, 12
FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_REALPATH, FXP_STAT, FXP_RENAME = 13, 14, 15, 16, 17, 18
FXP_READLINK, FXP_SYMLINK = 19, 20
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME, FXP_ATTRS = 101, 102, 103, 104, 105
FXP_EXTENDED, FXP_EXTENDED_REPLY = 200, 201

# Status codes (filexfer-02 §7).
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE, FX_NO_CONNECTION, FX_CONNECTION_LOST, FX_OP_UNSUPPORTED = 5, 6, 7, 8

STATUS_NAMES = {
    FX_OK: "OK",
    FX_EOF: "EOF",
    FX_NO_SUCH_FILE: "NO_SUCH_FILE",
    FX_PERMISSION_DENIED: "PERMISSION_DENIED",
    FX_FAILURE: "FAILURE",
    FX_BAD_MESSAGE: "BAD_MESSAGE",
    FX_OP_UNSUPPORTED: "OP_UNSUPPORTED",
}

# Open flags (filexfer-02 §6.3).
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20
_FLAG_NAMES = [(FXF_READ, "READ"), (FXF_WRITE, "WRITE"), (FXF_APPEND, "APPEND"), (FXF_CREAT, "CREAT"), (FXF_TRUNC, "TRUNC"), (FXF_EXCL, "EXCL")]

# Attribute flags (filexfer-02 §5).
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME, ATTR_EXTENDED = 1, 2, 4, 8, 0x80000000

REQUEST_NAMES = {
    FXP_INIT: "INIT", FXP_OPEN: "OPEN", FXP_CLOSE: "CLOSE", FXP_READ: "READ", FXP_WRITE: "WRITE",
    FXP_LSTAT: "LSTAT", FXP_FSTAT: "FSTAT", FXP_SETSTAT: "SETSTAT", FXP_FSETSTAT: "FSETSTAT",
    FXP_OPENDIR: "OPENDIR", FXP_READDIR: "READDIR", FXP_REMOVE: "REMOVE", FXP_MKDIR: "MKDIR",
    FXP_RMDIR: "RMDIR", FXP_REALPATH: "REALPATH", FXP_STAT: "STAT", FXP_RENAME: "RENAME",
    FXP_READLINK: "READLINK", FXP_SYMLINK: "SYMLINK", FXP_EXTENDED: "EXTENDED",
}

# OpenSSH's own limits (sftp-server.c): a client may send 256 KiB packets.
MAX_PACKET = 256 * 1024
MAX_READ = 255 * 1024
MAX_HANDLES = 256
MAX_BACKLOG = 1024 * 1024
READDIR_BATCH = 100
MAX_HOLE = 64 * 1024 * 1024  # how far past the end of what was written a WRITE may start
_LARGEST_OFFSET = 2**63 - 1  # no file is larger (off_t); a READ past it is past the end
LIST_KEYS = ("size", "directory", "permissions", "hardlinks", "modified", "owner", "group")


_EXTENSION_NAME = re.compile(r"[A-Za-z0-9@._-]{1,80}")


class MalformedPacket(Exception):
    """A request whose fields do not add up (truncated, or a bad string)."""


class SFTPError(Exception):
    """An answer other than OK: C{code} (an C{FX_*}) and a message for people."""

    def __init__(self, code: int, message: str):
        Exception.__init__(self, code, message)
        self.code = code
        self.message = message


class PacketReader:
    """
    Reads the fields of one SFTP payload (RFC 4251 §5 types); every read
    past the end raises L{MalformedPacket} instead of an C{assert}.
    """

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise MalformedPacket("truncated")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self._take(8))[0]

    def string(self) -> bytes:
        return bytes(self._take(self.u32()))

    def text(self) -> str:
        """
        A name: its octets as UTF-8, an octet that is not UTF-8 kept as
        itself (C{surrogateescape}), as FTP takes a command's name and the
        file system stores it. filexfer-02 names are strings of octets;
        OpenSSH's sftp-server takes them as they come.
        """
        return self.string().decode("utf-8", "surrogateescape")

    def attrs(self) -> dict[str, Any]:
        flags = self.u32()
        attrs: dict[str, Any] = {}
        if flags & ATTR_SIZE:
            attrs["size"] = self.u64()
        if flags & ATTR_UIDGID:
            attrs["uid"], attrs["gid"] = self.u32(), self.u32()
        if flags & ATTR_PERMISSIONS:
            attrs["permissions"] = self.u32()
        if flags & ATTR_ACMODTIME:
            attrs["atime"], attrs["mtime"] = self.u32(), self.u32()
        if flags & ATTR_EXTENDED:
            count = self.u32()
            if count > 1000:
                raise MalformedPacket("too many extended attributes")
            for _ in range(count):
                self.string(), self.string()
        return attrs

    def end(self) -> None:
        """Trailing bytes are tolerated (OpenSSH does); nothing to check."""


def ns(data: bytes | str) -> bytes:
    """
    An SSH string (RFC 4251 §5): C{uint32} length, then the octets; text
    as UTF-8, and a name's octets that are not UTF-8 (read with
    C{surrogateescape}, as L{PacketReader.text} and C{os.listdir} keep
    them) as they are on disk.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return struct.pack(">I", len(data)) + data


def pack_attrs(attrs: dict[str, Any]) -> bytes:
    flags = 0
    body = b""
    if "size" in attrs:
        flags |= ATTR_SIZE
        body += struct.pack(">Q", attrs["size"])
    if "permissions" in attrs:
        flags |= ATTR_PERMISSIONS
        body += struct.pack(">I", attrs["permissions"] & 0xFFFFFFFF)
    if "mtime" in attrs:
        flags |= ATTR_ACMODTIME
        body += struct.pack(">II", int(attrs.get("atime", attrs["mtime"])) & 0xFFFFFFFF, int(attrs["mtime"]) & 0xFFFFFFFF)
    return struct.pack(">I", flags) + body


def facts_to_attrs(facts: dict[str, Any]) -> dict[str, Any]:
    """The shell's FTP facts (C{size}, C{permissions}, ...) as SFTP attributes."""
    mode = int(facts.get("permissions") or 0)
    if not statmod.S_IFMT(mode):
        mode |= statmod.S_IFDIR if facts.get("directory") else statmod.S_IFREG
    attrs: dict[str, Any] = {"permissions": mode}
    if facts.get("size") is not None:
        attrs["size"] = int(facts["size"])
    if facts.get("modified") is not None:
        attrs["mtime"] = int(facts["modified"])
    return attrs


def long_name(name: str, facts: dict[str, Any]) -> str:
    """The C{ls -l} line OpenSSH's client shows for C{ls -l} (filexfer-02 §7)."""
    attrs = facts_to_attrs(facts)
    modified = attrs.get("mtime", 0)
    if abs(time.time() - modified) < 180 * 86400:
        when = time.strftime("%b %d %H:%M", time.gmtime(modified))
    else:
        when = time.strftime("%b %d  %Y", time.gmtime(modified))
    owner = str(facts.get("owner") or "ftp")[:16]
    group = str(facts.get("group") or "ftp")[:16]
    links = int(facts.get("hardlinks") or 1)
    return f"{statmod.filemode(attrs['permissions'])} {links:3d} {owner:8} {group:8} {attrs.get('size', 0):12d} {when} {name}"


def flag_names(flags: int) -> str:
    return "|".join(name for bit, name in _FLAG_NAMES if flags & bit) or "0"


def printable(text: str, limit: int = 200) -> str:
    """A name as the transcript shows it: control characters escaped, bounded."""
    # An octet that is not UTF-8 (kept as a surrogate) shows as that octet.
    out = "".join(c if c.isprintable() else f"\\x{ord(c) - 0xDC00 if 0xDC80 <= ord(c) <= 0xDCFF else ord(c):02x}" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


class Handle:
    """An open file or directory: what an SFTP handle string names."""

    kind = "file"
    bytes = 0
    started: float | None = None  # when its first READ or WRITE came (reactor seconds)

    def __init__(self, path: str, segments: list[str]):
        self.path = path
        self.segments = segments


class ReadHandle(Handle):
    def __init__(self, path, segments, reader):
        Handle.__init__(self, path, segments)
        self.reader = reader
        self.position = 0
        self.bytes = 0

    def close(self) -> defer.Deferred:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()
        return defer.succeed(None)


class WriteHandle(Handle):
    def __init__(self, path, segments, writer, position: int):
        Handle.__init__(self, path, segments)
        self.writer = writer
        self.position = position
        self.end = position  # the end of the furthest write (FSTAT's size)
        self.bytes = 0
        self.failed: BaseException | None = None  # the error of a WRITE that failed

    def close(self) -> defer.Deferred:
        """
        The upload is complete: durable, then under its name. After a WRITE
        that failed (a full disk) it is not: the writer's C{fail} ends it as
        FTP ends a broken STOR (ftp/vfs.py: nothing under the file's name,
        and no hidden partial file either when the disk is full), and the
        CLOSE fails with the reason instead of putting a truncated file in
        place.
        """
        fail = getattr(self.writer, "fail", None)
        if self.failed is None or fail is None:
            return defer.maybeDeferred(self.writer.close)
        error = self.failed

        def refuse(_):
            from twisted_mailhub.ftp.vfs import error_words

            why = getattr(error, "reason", None) or (error_words(error) if isinstance(error, OSError) else "a write failed")
            raise SFTPError(FX_FAILURE, f"{self.path}: not stored: an earlier write failed ({why})")

        return defer.maybeDeferred(fail, error).addBoth(refuse)

    def abandon(self) -> None:
        discard = getattr(self.writer, "discard", None)
        if discard is not None:
            discard()
        else:
            defer.maybeDeferred(self.writer.close).addErrback(lambda _: None)


class DirHandle(Handle):
    kind = "directory"

    def __init__(self, path, segments, entries):
        Handle.__init__(self, path, segments)
        self.entries = entries

    def close(self) -> defer.Deferred:
        return defer.succeed(None)


# While the file system's database cannot be reached: the words FTP's 451 uses.
UNAVAILABLE = "the file store cannot be reached now; try again later"


def _unavailable(error: BaseException) -> bool:
    """Is C{error} the file system's database being out of reach (a temporary failure)?"""
    from twisted_mailhub.store.outage import unavailable

    return unavailable(error)


def _error_for(reason: failure.Failure, path: str) -> SFTPError | None:
    """The SFTP status for a failure of the shell, as FTP would answer it."""
    e = reason.value
    if isinstance(e, SFTPError):
        return e
    if _unavailable(e):
        return SFTPError(FX_FAILURE, f"{path}: {UNAVAILABLE}")
    if isinstance(e, ftp.InvalidPath):
        return SFTPError(FX_NO_SUCH_FILE, f"{path}: no such file or directory (that path leaves your home)")
    if isinstance(e, ftp.FileNotFoundError):
        return SFTPError(FX_NO_SUCH_FILE, f"{path}: no such file or directory")
    if isinstance(e, (ftp.PermissionDeniedError, ftp.AuthorizationError)):
        return SFTPError(FX_PERMISSION_DENIED, f"{path}: permission denied")
    if isinstance(e, ftp.IsADirectoryError):
        return SFTPError(FX_FAILURE, f"{path}: is a directory")
    if isinstance(e, ftp.IsNotADirectoryError):
        return SFTPError(FX_FAILURE, f"{path}: not a directory")
    if isinstance(e, ftp.FileExistsError):
        return SFTPError(FX_FAILURE, f"{path}: already exists")
    from twisted_mailhub.ftp.vfs import NOT_UTF8, NameNotAllowedError

    if isinstance(e, NameNotAllowedError):
        return SFTPError(FX_FAILURE, f"{path}: {NOT_UTF8}")
    if isinstance(e, ftp.FTPCmdError):
        # The FTP reply text without its code: "552 ..." -> the message,
        # and without the words FTP's reply puts around it ("Requested
        # action not taken: %s"): SFTP's status is the code already.
        text = e.response().split(" ", 1)[-1] if hasattr(e, "response") else ""
        template = ftp.RESPONSE.get(getattr(e, "errorCode", None), "")
        lead = template.split(" ", 1)[-1].split("%s", 1)[0] if isinstance(template, str) and "%s" in template else ""
        if lead and text.startswith(lead) and len(text) > len(lead):
            text = text[len(lead):]
        return SFTPError(FX_FAILURE, printable(text or "the file system refused"))
    if isinstance(e, OSError):
        from twisted_mailhub.ftp.vfs import error_words

        # The hub's words (a quota: "quota exceeded: ..."), never the OS's.
        return SFTPError(FX_FAILURE, f"{path}: {getattr(e, 'reason', None) or error_words(e)}")
    if isinstance(e, OverflowError):
        # A number past what the OS takes (2**63 and up). Not ValueError:
        # that is a fault of ours (a UnicodeError...), answered "local
        # error in processing" and logged, not dressed up as an offset.
        return SFTPError(FX_FAILURE, f"{path}: an offset or size out of range")
    return None


class SFTPServer(protocol.Protocol):
    """
    One SFTP session on one shell (an L{IMailhubShell}).

    @ivar observer: called as C{observer(request, answer)} with two lines
        of text for each request answered (the transcript); or L{None}.
    @ivar max_packet: the largest request accepted, in bytes; a longer one
        ends the session (the stream cannot be resynchronised).
    @ivar max_handles: open files and directories allowed at once; one
        more gets C{SSH_FX_FAILURE "too many open handles"}.
    @ivar max_read: the most bytes one READ answers (a READ asking for more
        gets a short read, which filexfer-02 §6.4 allows).
    """

    def __init__(
        self,
        shell: Any,
        observer: Callable[[str, str], None] | None = None,
        max_packet: int = MAX_PACKET,
        max_handles: int = MAX_HANDLES,
        max_read: int = MAX_READ,
        max_backlog: int = MAX_BACKLOG,
        slow_window: float = 60.0,
    ):
        self.shell = shell
        # A READ or WRITE of a file whose transfer, once it has run this
        # many seconds, averages under lines.MIN_TRANSFER_RATE ends it
        # (L{_keeping_up}); 0: never.
        self.slow_window = slow_window
        self.observer = observer
        self.max_packet = max_packet
        self.max_handles = max_handles
        self.max_read = max_read
        self.max_backlog = max_backlog
        self.handles: dict[bytes, Handle] = {}
        self._next_handle = 1
        from twisted.internet import reactor

        self._clock = reactor  # what copy-data yields to between chunks (task.Clock in tests)
        self._buffer = bytearray()
        self._busy = False
        self._paused = False
        self._initialised = False
        self.closed = False
        # Per-file summary for the transcript: path -> [reads, writes, bytes]
        self.on_activity: Callable[[], None] | None = None
        # (fresh=False) -> (quota limit, octets used) of the account, or
        # None (statvfs, SETSTAT size); fresh: counted again now
        self.quota_space: Callable[..., tuple[int, int] | None] | None = None
        # (a Deferred of quota_space(fresh=True): the count made off the reactor, for df)
        self.quota_space_later: Callable[[], defer.Deferred] | None = None

    # -- the byte stream -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def pauseProducing(self) -> None:
        """The client is not reading: stop answering requests."""
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._process()

    def backlog(self) -> int:
        return int(getattr(self.transport, "backlog", lambda: 0)())

    def _process(self) -> None:
        while not self._busy and not self._paused and not self.closed:
            if len(self._buffer) < 4:
                return
            (length,) = struct.unpack_from(">I", self._buffer)
            if length == 0 or length > self.max_packet:
                self._give_up(f"a request of {length} bytes (the limit is {self.max_packet})")
                return
            if len(self._buffer) < 4 + length:
                return
            packet = bytes(self._buffer[4:4 + length])
            del self._buffer[:4 + length]
            if self.on_activity is not None:
                self.on_activity()
            self._busy = True
            d = self._dispatch(packet)
            if d is None:
                self._busy = False
            else:
                d.addBoth(self._done)
                if self._busy:
                    return

    def _done(self, _):
        self._busy = False
        if self.backlog() > self.max_backlog:
            self._paused = True
        self._process()

    def _give_up(self, why: str) -> None:
        log.info("sftp: closing the session: {why}", why=why)
        if self.observer is not None:
            self.observer(f"[{why}]", "session closed")
        self.closed = True
        self._buffer = bytearray()
        self.transport.loseConnection()

    def connectionLost(self, reason=failure.Failure(ConnectionError())) -> None:
        self.closed = True
        handles, self.handles = self.handles, {}
        for handle in handles.values():
            if isinstance(handle, WriteHandle):
                handle.abandon()
            else:
                handle.close()

    # -- answering ---------------------------------------------------------------

    def _send(self, kind: int, payload: bytes) -> None:
        if self.closed:
            return
        self.transport.write(struct.pack(">IB", len(payload) + 1, kind) + payload)
        if self.backlog() > self.max_backlog:
            self._paused = True

    def _status(self, rid: int, code: int, message: str = "") -> None:
        message = message or {FX_OK: "Success", FX_EOF: "End of file"}.get(code, STATUS_NAMES.get(code, "error"))
        self._send(FXP_STATUS, struct.pack(">II", rid, code) + ns(message) + ns("en"))

    def _dispatch(self, packet: bytes) -> defer.Deferred | None:
        kind = packet[0]
        reader = PacketReader(packet[1:])
        name = REQUEST_NAMES.get(kind, f"type {kind}")
        if kind == FXP_INIT:
            if self._initialised:
                # As OpenSSH's sftp-server: INIT once, at the start.
                self._give_up("a second INIT")
                return None
            return self._init(reader)
        try:
            rid = reader.u32()
        except MalformedPacket:
            # Without an id there is no one to answer: the stream is broken.
            self._give_up(f"a {name} request too short to carry an id")
            return None
        if not self._initialised:
            self._status(rid, FX_FAILURE, "send INIT first")
            return None
        method = getattr(self, f"fxp_{name}", None) if kind in REQUEST_NAMES else None
        if method is None:
            self._report(f"[unknown request {name}]", rid, SFTPError(FX_OP_UNSUPPORTED, f"request type {kind} is not supported"))
            return None
        try:
            result = method(rid, reader)
        except MalformedPacket as e:
            self._report(f"{name} [malformed: {e}]", rid, SFTPError(FX_BAD_MESSAGE, f"malformed {name} request: {e}"))
            return None
        except SFTPError as e:
            self._report(name, rid, e)
            return None
        except OverflowError:
            # An offset or size past what the OS takes (2**63 and up). A
            # ValueError is no such thing: it is a fault of ours, below.
            self._report(name, rid, SFTPError(FX_FAILURE, "an offset or size out of range"))
            return None
        except Exception as e:
            if _unavailable(e):
                self._refused(name, rid, e)
                return None
            log.failure("sftp {name} went wrong", name=name)
            self._report(name, rid, SFTPError(FX_FAILURE, "local error in processing"))
            return None
        if isinstance(result, defer.Deferred):
            return result
        return None

    def _refused(self, request: str, rid: int, error: BaseException, path: str = "") -> None:
        """
        C{SSH_FX_FAILURE} with the reason for a request the file system's
        database could not serve now, and one line in the log (as every
        protocol while the store is down: L{twisted_mailhub.store.outage}),
        never a traceback. The session goes on; the same request works
        again once the database is back.
        """
        from twisted_mailhub.store.outage import refused

        name = request.split(" ", 1)[0]  # the request's name: never client data in the log
        refused("sftp", name, error)
        self._report(request, rid, SFTPError(FX_FAILURE, f"{path}: {UNAVAILABLE}" if path else UNAVAILABLE))

    def _report(self, request: str, rid: int, error: SFTPError) -> None:
        self._status(rid, error.code, error.message)
        self._observe(request, f"{STATUS_NAMES.get(error.code, error.code)} {error.message}")

    def _observe(self, request: str, answer: str) -> None:
        if self.observer is not None:
            self.observer(request, answer)

    def _run(self, request: str, rid: int, path: str, d: defer.Deferred, answer: Callable[[Any], str | None]) -> defer.Deferred:
        """
        Answer C{rid} with what C{answer(result)} sends once C{d} fires (it
        returns the transcript's text), or with the status for its failure.
        """

        def ok(result):
            said = answer(result)
            self._observe(request, said or "OK")

        def failed(reason):
            if _unavailable(reason.value):
                self._refused(request, rid, reason.value, path)
                return
            error = _error_for(reason, path)
            if error is None:
                log.failure("sftp {request} went wrong", reason, request=request)
                error = SFTPError(FX_FAILURE, "local error in processing")
            self._report(request, rid, error)

        return d.addCallbacks(ok, failed)

    # -- paths -------------------------------------------------------------------

    def _segments(self, path: str) -> list[str]:
        """Path segments from C{/} exactly as FTP makes them (C{toSegments})."""
        if "\0" in path:
            # No file name holds one: the string is malformed (OpenSSH's
            # sftp-server cannot even parse it and ends the session).
            raise SFTPError(FX_BAD_MESSAGE, "a path with a NUL byte")
        if any(ord(c) < 32 or ord(c) == 127 for c in path):
            # As FTP (501) and the API refuse them: a name with a CR or LF
            # would break FTP's listings of it, a backspace hide a letter.
            raise SFTPError(FX_FAILURE, f"{printable(path)}: control characters are not allowed in names")
        try:
            return ftp.toSegments([], path)
        except ftp.InvalidPath:
            raise SFTPError(FX_NO_SUCH_FILE, f"{printable(path)}: no such file or directory (that path leaves your home)")

    @staticmethod
    def _show(segments: list[str]) -> str:
        return printable("/" + "/".join(segments))

    def _new_handle(self, handle: Handle) -> bytes:
        key = str(self._next_handle).encode()
        self._next_handle += 1
        self.handles[key] = handle
        return key

    def _handle(self, reader: PacketReader, kind: type | tuple[type, ...]) -> tuple[bytes, Any]:
        key = reader.string()
        handle = self.handles.get(key)
        if handle is None:
            raise SFTPError(FX_FAILURE, "no such open handle")
        if not isinstance(handle, kind):
            if kind is ReadHandle and isinstance(handle, WriteHandle):
                # OpenSSH: read(2) of a write-only descriptor, EBADF.
                raise SFTPError(FX_FAILURE, f"{handle.path}: the file is open for writing, not reading")
            if kind is WriteHandle and isinstance(handle, ReadHandle):
                raise SFTPError(FX_FAILURE, f"{handle.path}: the file is open for reading, not writing")
            wanted = "file" if isinstance(kind, tuple) else kind.kind
            raise SFTPError(FX_FAILURE, f"that handle is not an open {wanted}")
        return key, handle

    def _room_for_handle(self) -> None:
        if len(self.handles) >= self.max_handles:
            raise SFTPError(FX_FAILURE, f"too many open handles (the limit is {self.max_handles}); close some first")

    def _stat_facts(self, segments: list[str]) -> defer.Deferred:
        return defer.maybeDeferred(self.shell.stat, segments, LIST_KEYS).addCallback(lambda values: dict(zip(LIST_KEYS, values)))

    # -- requests ----------------------------------------------------------------

    def _init(self, reader: PacketReader) -> None:
        try:
            version = reader.u32()
        except MalformedPacket:
            self._give_up("an INIT too short to carry a version")
            return None
        extensions = [
            (b"posix-rename@openssh.com", b"1"),
            (b"fsync@openssh.com", b"1"),
            (b"limits@openssh.com", b"1"),
            (b"copy-data", b"1"),
        ]
        if hasattr(self.shell, "root"):
            extensions.append((b"statvfs@openssh.com", b"2"))
        payload = struct.pack(">I", 3) + b"".join(ns(k) + ns(v) for k, v in extensions)
        self._initialised = True
        self._send(FXP_VERSION, payload)
        self._observe(f"INIT version {version}", "VERSION 3")
        return None

    def fxp_OPEN(self, rid, reader):
        path = reader.text()
        flags = reader.u32()
        attrs = reader.attrs()
        segments = self._segments(path)
        shown = self._show(segments)
        request = f"OPEN {shown} {flag_names(flags)}"
        self._room_for_handle()
        if flags & FXF_READ and flags & FXF_WRITE:
            raise SFTPError(FX_OP_UNSUPPORTED, "open a file for reading or for writing, not both (the file system streams files)")
        if flags & FXF_WRITE or flags & (FXF_CREAT | FXF_TRUNC | FXF_APPEND):
            d = self._open_for_writing(segments, shown, flags, attrs)
        else:
            d = defer.maybeDeferred(self.shell.openForReadingAt, segments, 0)
            d.addCallback(lambda reader: ReadHandle(shown, segments, reader))

        def opened(handle):
            if self.closed:
                handle.close() if not isinstance(handle, WriteHandle) else handle.abandon()
                return "session closed"
            key = self._new_handle(handle)
            self._send(FXP_HANDLE, struct.pack(">I", rid) + ns(key))
            return f"handle {key.decode()}"

        return self._run(request, rid, shown, d, opened)

    def _open_for_writing(self, segments, shown, flags, attrs=None) -> defer.Deferred:
        """
        A L{WriteHandle} for OPEN with WRITE, CREAT, TRUNC or APPEND
        (filexfer-02 §6.3). The permissions in C{attrs} are a new file's
        initial ones (OpenSSH's C{put} sends the local file's), taken as
        OpenSSH's server takes them under a umask: the hub's is 077 (its
        data is its own user's only, tests/test_data_permissions.py), so
        what is kept is the owner's execute bit; an existing file keeps
        its mode, as open(2) leaves it.
        """
        def existing(facts):
            return facts

        def missing(reason):
            reason.trap(ftp.FileNotFoundError)
            return None

        d = self._stat_facts(segments).addCallbacks(existing, missing)

        def open_it(facts):
            if facts is not None and facts.get("directory"):
                raise SFTPError(FX_FAILURE, f"{shown}: is a directory")
            if facts is not None and flags & FXF_EXCL and flags & FXF_CREAT:
                raise SFTPError(FX_FAILURE, f"{shown}: already exists")
            if facts is None and not flags & FXF_CREAT:
                raise SFTPError(FX_NO_SUCH_FILE, f"{shown}: no such file")
            if flags & FXF_APPEND:
                start, append = int((facts or {}).get("size") or 0), True
            elif flags & FXF_TRUNC or facts is None:
                start, append = 0, False
            else:
                # Neither TRUNC nor APPEND: keep the contents (truncating at
                # the current size changes nothing), write where asked.
                start, append = int(facts.get("size") or 0), False
            opening = defer.maybeDeferred(self.shell.openForWritingAt, segments, start, append)

            def made(writer):
                if facts is None and "permissions" in (attrs or {}) and hasattr(writer, "mode"):
                    writer.mode = attrs["permissions"] & 0o700  # at close (kept_mode: read and write too)
                return WriteHandle(shown, segments, writer, start)

            return opening.addCallback(made)

        return d.addCallback(open_it)

    def fxp_CLOSE(self, rid, reader):
        key = reader.string()
        handle = self.handles.pop(key, None)
        if handle is None:
            raise SFTPError(FX_FAILURE, "no such open handle")
        request = f"CLOSE handle {key.decode('ascii', 'replace')} ({handle.path})"
        closed_file = getattr(self.observer, "file_closed", None)
        if closed_file is not None and not isinstance(handle, DirHandle):
            closed_file(handle.path, handle.bytes if isinstance(handle, ReadHandle) else 0, handle.bytes if isinstance(handle, WriteHandle) else 0)
        if isinstance(handle, WriteHandle):
            request += f" [{handle.bytes} bytes written]"
        elif isinstance(handle, ReadHandle):
            request += f" [{handle.bytes} bytes read]"

        def closed(_):
            metrics = getattr(self, "metrics", None)
            if metrics is not None and isinstance(handle, (ReadHandle, WriteHandle)):
                metrics.sftp_transfer("upload" if isinstance(handle, WriteHandle) else "download", handle.bytes)
            self._status(rid, FX_OK)
            return "OK" + (" (on disk: fsync done)" if isinstance(handle, WriteHandle) else "")

        return self._run(request, rid, handle.path, handle.close(), closed)

    def _keeping_up(self, key: bytes, handle: Handle) -> None:
        """
        The slow-transfer floor for one open file: once its first READ or
        WRITE is C{slow_window} seconds old, its reads or writes must
        average L{MIN_TRANSFER_RATE} (4 KiB/s) since then, as an FTP
        upload must (ftp/data.py) and a download's reader must
        (L{twisted_mailhub.pace}). A client asking for a few octets every
        few seconds kept the session (each request resets the idle timer),
        the handle and its file open for ever. Past that, the handle is
        closed (an upload abandoned: nothing is stored under its name) and
        the request fails.

        @raise SFTPError: C{SSH_FX_FAILURE} with the reason.
        """
        now = self._clock.seconds()
        if handle.started is None:
            handle.started = now
            return
        elapsed = now - handle.started
        if not self.slow_window or elapsed <= self.slow_window or handle.bytes >= elapsed * MIN_TRANSFER_RATE:
            return
        self.handles.pop(key, None)
        upload = isinstance(handle, WriteHandle)
        if upload:
            handle.abandon()
        else:
            handle.close()
        rate = int(MIN_TRANSFER_RATE) // 1024
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.slow_transfer("sftp")
        log.info(
            "sftp: {path}: {octets} octets {way} in {seconds:.0f} s, under {rate} KiB/s; the file is closed",
            path=printable(handle.path), octets=handle.bytes, way="written" if upload else "read", seconds=elapsed, rate=rate,
        )
        outcome = "the upload is not stored" if upload else "the file is closed"
        raise SFTPError(FX_FAILURE, f"{handle.path}: the transfer ran at under {rate} KiB/s for {elapsed:.0f} seconds; {outcome}")

    def fxp_READ(self, rid, reader):
        key, handle = self._handle(reader, ReadHandle)
        offset = reader.u64()
        length = reader.u32()
        request = f"READ handle {key.decode()} offset {offset} len {length}"
        self._keeping_up(key, handle)
        if length == 0:
            # Nothing asked, nothing read: no end of file was met (EOF is
            # for "EOF encountered before reading any data", filexfer-02
            # §6.4); OpenSSH's sftp-server answers an empty DATA too.
            self._send(FXP_DATA, struct.pack(">I", rid) + ns(b""))
            self._observe(request, "DATA 0 bytes")
            return None
        length = min(length, self.max_read)
        d = defer.maybeDeferred(self._read, handle, offset, length)

        def answer(data):
            if not data:
                self._status(rid, FX_EOF)
                return "EOF"
            handle.bytes += len(data)
            self._send(FXP_DATA, struct.pack(">I", rid) + ns(data))
            return f"DATA {len(data)} bytes"

        return self._run(request, rid, handle.path, d, answer)

    def _read(self, handle: ReadHandle, offset: int, length: int):
        source = handle.reader
        fileno = getattr(source, "fileno", None)
        if fileno is not None:
            if offset + length > _LARGEST_OFFSET:
                return b""  # past the end of any file: EOF (pread would fail: EINVAL, OverflowError)
            return os.pread(fileno(), length, offset)
        if offset != handle.position:
            # A reader that only streams: reopen it at the new offset.
            def reopened(reader):
                getattr(handle.reader, "close", lambda: None)()
                handle.reader, handle.position = reader, offset
                return self._read(handle, offset, length)

            return defer.maybeDeferred(self.shell.openForReadingAt, handle.segments, offset).addCallback(reopened)
        data = source.read(length)

        def advance(data):
            handle.position += len(data)
            return data

        return defer.maybeDeferred(lambda: data).addCallback(advance)

    def fxp_WRITE(self, rid, reader):
        key, handle = self._handle(reader, WriteHandle)
        offset = reader.u64()
        data = reader.string()
        request = f"WRITE handle {key.decode()} offset {offset} len {len(data)}"
        self._keeping_up(key, handle)

        def written(_):
            self._status(rid, FX_OK)
            return "OK"

        return self._run(request, rid, handle.path, self._write_at(handle, offset, data), written)

    def _write_at(self, handle: WriteHandle, offset: int, data: bytes) -> defer.Deferred:
        """
        Write C{data} at C{offset} of the file being written (WRITE,
        copy-data); fires when the writer took it.

        @raise SFTPError: the offset leaves too large a hole, or the file
            system takes bytes in order only.
        """
        writer = handle.writer
        if offset > handle.end + MAX_HOLE:
            # Clients write out of order, a window's worth ahead (OpenSSH:
            # 64 x 32 KiB); one byte at offset 2**40 made a 1 TB sparse file
            # under a 1 MB quota (FTP and the API then sent it whole), and
            # past the file system's largest size the seek itself failed.
            raise SFTPError(FX_FAILURE, f"{handle.path}: a write at offset {offset} would leave {offset - handle.end} bytes unwritten past the end ({handle.end}); at most {MAX_HOLE}")
        write_at = getattr(writer, "write_at", None)
        if write_at is not None:
            # A writer that takes bytes at any offset (ftp/pgfs.py).
            d = defer.maybeDeferred(write_at, offset, data)
        else:
            if offset != handle.position:
                f = getattr(writer, "file", None)
                if f is None or not hasattr(f, "seek"):
                    raise SFTPError(FX_OP_UNSUPPORTED, "this file system takes a file's bytes in order only")
                f.seek(offset)
            d = defer.maybeDeferred(writer.write, data)

        def remember(reason):
            handle.failed = reason.value
            return reason

        def written(_):
            handle.position = offset + len(data)
            handle.end = max(handle.end, handle.position)
            handle.bytes += len(data)

        return d.addCallbacks(written, remember)

    def _attrs_answer(self, rid):
        def answer(facts):
            self._send(FXP_ATTRS, struct.pack(">I", rid) + pack_attrs(facts_to_attrs(facts)))
            mode = facts_to_attrs(facts)["permissions"]
            return f"ATTRS {statmod.filemode(mode)} size {facts.get('size') or 0}"

        return answer

    def fxp_STAT(self, rid, reader, name="STAT"):
        segments = self._segments(reader.text())
        shown = self._show(segments)
        return self._run(f"{name} {shown}", rid, shown, self._stat_facts(segments), self._attrs_answer(rid))

    def fxp_LSTAT(self, rid, reader):
        # The file system shows links as what they point to (as FTP lists
        # them), so LSTAT is STAT.
        return self.fxp_STAT(rid, reader, "LSTAT")

    def fxp_FSTAT(self, rid, reader):
        key = reader.string()
        handle = self.handles.get(key)
        if handle is None:
            raise SFTPError(FX_FAILURE, "no such open handle")
        request = f"FSTAT handle {key.decode()}"
        if isinstance(handle, WriteHandle):
            # Before close the bytes may sit in the writer's buffer; a mode
            # or times asked for by FSETSTAT apply at close: shown as they
            # will be.
            from twisted_mailhub.ftp.vfs import kept_mode

            mode = getattr(handle.writer, "mode", None)
            times = getattr(handle.writer, "times", None)
            facts = {
                "size": max(handle.end, handle.bytes),
                "permissions": 0o100000 | (kept_mode(mode, False) if mode is not None else 0o644),
                "modified": times[1] if times is not None else time.time(),
            }
            return self._run(request, rid, handle.path, defer.succeed(facts), self._attrs_answer(rid))
        return self._run(request, rid, handle.path, self._stat_facts(handle.segments), self._attrs_answer(rid))

    def _setstat(self, rid, request, handle_or_segments, shown, attrs):
        """
        SETSTAT/FSETSTAT (draft-ietf-secsh-filexfer-02 §6.9): a size
        truncates (OpenSSH's scp sets the size of the file it has just
        written); times are set for real (C{scp -p}, C{sftp put -p},
        rclone, lftp); permissions are kept as L{kept_mode} says where the
        file system keeps modes, and left as they are where it has fixed
        ones (as SFTPGo's C{setstat_mode} 2 does on storage without modes:
        the OK says what was done in the session record, a STAT shows the
        mode the file has). Owners are refused: the files belong to the
        hub. The order is size, mode, times, so a truncation does not move
        the time just set; on a file being written, mode and times are
        applied at its close, after the last byte.
        """
        if "uid" in attrs:
            raise SFTPError(FX_OP_UNSUPPORTED, f"{shown}: the files belong to the hub; their owner and group cannot be changed")
        changes = []
        if "permissions" in attrs:
            changes.append(f"mode {attrs['permissions'] & 0o7777:04o}")
        if "mtime" in attrs:
            changes.append(f"mtime {attrs['mtime']}")
        if "size" not in attrs:
            if not changes:
                self._status(rid, FX_OK)
                self._observe(request, "OK (nothing to set)")
                return None
            request += " " + " ".join(changes)
            return self._simple_result(rid, request, shown, self._set_mode_and_times(handle_or_segments, shown, attrs), said=True)
        size = attrs["size"]
        request += f" size {size}"

        def bounded(end: int) -> None:
            # A size past the end is a hole nobody wrote, held to what a
            # WRITE may leave (fxp_WRITE): SETSTAT size 10**12 made a 1 TB
            # sparse file under a 3 MB quota, which FTP then sent whole.
            if size > end + MAX_HOLE:
                raise SFTPError(FX_FAILURE, f"{shown}: a size of {size} would leave {size - end} bytes never written past the end ({end}); at most {MAX_HOLE}")
            space = self.quota_space() if self.quota_space is not None and size > end else None
            if space is not None and space[1] + (size - end) > space[0]:
                # Counted again before refusing, as an upload's check is
                # (quota.py): the remembered count missed what was removed since.
                space = self.quota_space(fresh=True)
            if space is not None and space[1] + (size - end) > space[0]:
                # Growth counts as a write does (filequota.py): the account's quota.
                raise SFTPError(FX_FAILURE, f"{shown}: quota exceeded: growing it by {size - end} bytes would pass the account's quota ({space[1]} of {space[0]} bytes used)")

        if isinstance(handle_or_segments, WriteHandle):
            handle = handle_or_segments
            f = getattr(handle.writer, "file", None)
            if f is None or not hasattr(f, "truncate"):
                raise SFTPError(FX_OP_UNSUPPORTED, f"{shown}: this file system cannot change the size of a file being written")
            bounded(handle.end)
            f.flush()
            f.truncate(size)
            handle.end = size
            # Durable before OK, as every other change is (design rule 6):
            # the partial file a later resume continues from has this size.
            # (Requests are answered in turn: no WRITE or CLOSE meanwhile.)
            d = threads.deferToThread(os.fsync, f.fileno())
        elif isinstance(handle_or_segments, Handle):
            raise SFTPError(FX_PERMISSION_DENIED, f"{shown}: the file is open for reading")
        else:
            # Through the file system: opening for writing at SIZE
            # truncates there (as FTP's REST + STOR does), once the file is
            # known to exist (a SETSTAT makes no file) and SIZE bounded.
            segments = handle_or_segments

            def resize(facts):
                bounded(facts.get("size") or 0)
                return self.shell.openForWritingAt(segments, size, False)

            d = self._stat_facts(segments).addCallback(resize)
            d.addCallback(lambda writer: writer.close())
        if changes:
            request += " " + " ".join(changes)
            d.addCallback(lambda _: self._set_mode_and_times(handle_or_segments, shown, attrs))
            return self._simple_result(rid, request, shown, d, said=True)
        return self._simple_result(rid, request, shown, d)

    def _set_mode_and_times(self, handle_or_segments, shown, attrs) -> defer.Deferred:
        """
        The permissions and times of C{attrs} set (L{_setstat}); fires with
        the session record's words for what was done.
        """
        from twisted_mailhub.ftp.vfs import kept_mode

        said = []
        accessed, modified = attrs.get("atime"), attrs.get("mtime")
        if isinstance(handle_or_segments, WriteHandle):
            writer = handle_or_segments.writer
            if "permissions" in attrs:
                if hasattr(writer, "mode"):
                    writer.mode = attrs["permissions"]
                    said.append(f"mode {kept_mode(attrs['permissions'], False):04o} at close")
                else:
                    said.append("mode not kept: this file system has fixed modes")
            if modified is not None:
                if not hasattr(writer, "times"):
                    raise SFTPError(FX_OP_UNSUPPORTED, f"{shown}: this file system cannot set the time of a file being written")
                writer.times = (accessed, modified)
                said.append("times at close")
            return defer.succeed("OK (" + ", ".join(said) + ")")
        # A file open for reading (or a folder's handle) is changed through
        # its name, as SETSTAT does: OpenSSH's sftp-server sets them with
        # fchmod/futimes on the descriptor it reads from.
        segments = handle_or_segments.segments if isinstance(handle_or_segments, Handle) else handle_or_segments
        d = defer.succeed(None)
        if "permissions" in attrs:
            set_permissions = getattr(self.shell, "setPermissions", None)
            if set_permissions is None:
                said.append("mode not kept: this file system has fixed modes")
            else:
                d.addCallback(lambda _: set_permissions(segments, attrs["permissions"]))
                d.addCallback(lambda kept: said.append(f"mode {kept & 0o7777:04o}"))
        if modified is not None:
            set_times = getattr(self.shell, "setTimes", None)
            if set_times is None:
                raise SFTPError(FX_OP_UNSUPPORTED, f"{shown}: this file system keeps its own times")
            d.addCallback(lambda _: set_times(segments, accessed, modified))
            d.addCallback(lambda _: said.append("times set"))
        return d.addCallback(lambda _: "OK (" + ", ".join(said) + "; durable)")

    def _simple_result(self, rid, request, shown, d, said: bool = False):
        def ok(result):
            self._status(rid, FX_OK)
            return result if said and isinstance(result, str) else "OK"

        return self._run(request, rid, shown, d, ok)

    def fxp_SETSTAT(self, rid, reader):
        segments = self._segments(reader.text())
        attrs = reader.attrs()
        shown = self._show(segments)
        return self._setstat(rid, f"SETSTAT {shown}", segments, shown, attrs)

    def fxp_FSETSTAT(self, rid, reader):
        key = reader.string()
        attrs = reader.attrs()
        handle = self.handles.get(key)
        if handle is None:
            raise SFTPError(FX_FAILURE, "no such open handle")
        return self._setstat(rid, f"FSETSTAT handle {key.decode()}", handle, handle.path, attrs)

    def fxp_OPENDIR(self, rid, reader):
        segments = self._segments(reader.text())
        shown = self._show(segments)
        self._room_for_handle()
        d = defer.maybeDeferred(self.shell.access, segments)
        d.addCallback(lambda _: self.shell.list(segments, LIST_KEYS))

        def opened(entries):
            if self.closed:
                return "session closed"
            listing = [(".", None), ("..", None)] + [(name, dict(zip(LIST_KEYS, facts))) for name, facts in entries]
            key = self._new_handle(DirHandle(shown, segments, listing))
            self._send(FXP_HANDLE, struct.pack(">I", rid) + ns(key))
            return f"handle {key.decode()} ({len(entries)} entries)"

        return self._run(f"OPENDIR {shown}", rid, shown, d, opened)

    def fxp_READDIR(self, rid, reader):
        key, handle = self._handle(reader, DirHandle)
        request = f"READDIR handle {key.decode()}"
        if not handle.entries:
            self._status(rid, FX_EOF)
            self._observe(request, "EOF")
            return None
        batch, handle.entries = handle.entries[:READDIR_BATCH], handle.entries[READDIR_BATCH:]
        dir_facts = {"directory": True, "permissions": statmod.S_IFDIR | 0o755, "size": 0, "modified": 0}
        body = b""
        for name, facts in batch:
            facts = facts or dir_facts
            body += ns(name) + ns(long_name(name, facts)) + pack_attrs(facts_to_attrs(facts))
        self._send(FXP_NAME, struct.pack(">II", rid, len(batch)) + body)
        self._observe(request, f"NAME {len(batch)} entries")
        return None

    def _simple(self, rid, request, shown, call, *args):
        def ok(_):
            self._status(rid, FX_OK)
            return "OK"

        return self._run(request, rid, shown, defer.maybeDeferred(call, *args), ok)

    def fxp_REMOVE(self, rid, reader):
        segments = self._segments(reader.text())
        shown = self._show(segments)
        return self._simple(rid, f"REMOVE {shown}", shown, self.shell.removeFile, segments)

    def fxp_MKDIR(self, rid, reader):
        segments = self._segments(reader.text())
        reader.attrs()
        shown = self._show(segments)
        return self._simple(rid, f"MKDIR {shown}", shown, self.shell.makeDirectory, segments)

    def fxp_RMDIR(self, rid, reader):
        segments = self._segments(reader.text())
        shown = self._show(segments)
        return self._simple(rid, f"RMDIR {shown}", shown, self.shell.removeDirectory, segments)

    def fxp_REALPATH(self, rid, reader):
        path = reader.text()
        segments = self._segments(path)
        shown = "/" + "/".join(segments)
        facts = {"directory": True, "permissions": statmod.S_IFDIR | 0o755, "size": 0, "modified": 0}
        self._send(FXP_NAME, struct.pack(">II", rid, 1) + ns(shown) + ns(long_name(shown, facts)) + pack_attrs({}))
        self._observe(f"REALPATH {printable(path)}", f"NAME {printable(shown)}")
        return None

    def fxp_RENAME(self, rid, reader, overwrite=False, name="RENAME"):
        old = self._segments(reader.text())
        new = self._segments(reader.text())
        shown_old, shown_new = self._show(old), self._show(new)
        request = f"{name} {shown_old} -> {shown_new}"
        if overwrite:
            return self._simple(rid, request, shown_old, self.shell.rename, old, new)
        # filexfer-02 §6.5: RENAME does not replace an existing file.
        d = self._stat_facts(new)

        def exists(_):
            raise SFTPError(FX_FAILURE, f"{shown_new}: already exists")

        def free(reason):
            reason.trap(ftp.FileNotFoundError)
            return self.shell.rename(old, new)

        d.addCallbacks(exists, free)

        def ok(_):
            self._status(rid, FX_OK)
            return "OK"

        return self._run(request, rid, shown_old, d, ok)

    def fxp_READLINK(self, rid, reader):
        shown = self._show(self._segments(reader.text()))
        raise SFTPError(FX_OP_UNSUPPORTED, f"{shown}: this file system shows no symbolic links (as in FTP)")

    def fxp_SYMLINK(self, rid, reader):
        reader.text(), reader.text()
        raise SFTPError(FX_OP_UNSUPPORTED, "this file system makes no symbolic links (as in FTP)")

    # -- OpenSSH extensions (PROTOCOL in openssh-portable) ---------------------------

    def fxp_EXTENDED(self, rid, reader):
        name = reader.string().decode("ascii", "replace")
        if name == "posix-rename@openssh.com":
            return self.fxp_RENAME(rid, reader, overwrite=True, name="POSIX-RENAME")
        if name == "fsync@openssh.com":
            return self._fsync(rid, reader)
        if name == "statvfs@openssh.com":
            return self._statvfs(rid, reader)
        if name == "limits@openssh.com":
            payload = struct.pack(">IQQQQ", rid, self.max_packet, self.max_read, self.max_packet - 1024, self.max_handles)
            self._send(FXP_EXTENDED_REPLY, payload)
            self._observe("LIMITS", f"packet {self.max_packet} read {self.max_read} handles {self.max_handles}")
            return None
        if name == "copy-data":
            return self._copy_data(rid, reader)
        if name == "hardlink@openssh.com":
            raise SFTPError(FX_OP_UNSUPPORTED, "hard links are not offered by this file system")
        shown = name if _EXTENSION_NAME.fullmatch(name) else "with an unreadable name"
        raise SFTPError(FX_OP_UNSUPPORTED, f"extension {shown[:80]} is not supported")

    def _copy_data(self, rid, reader):
        """
        C{copy-data} (draft-ietf-secsh-filexfer-extensions-00 §7, what
        OpenSSH's C{sftp cp} sends): C{read-length} octets (0: to the end)
        from a handle open for reading, from C{read-offset}, written at
        C{write-offset} of a handle open for writing, in the server. The
        bytes go through the same writes as a WRITE's (the quota, the
        hole limit); at most C{max_read} octets are held at a time.
        Answers OK, or C{SSH_FX_EOF} when the source ends before a
        C{read-length} that is not 0.
        """
        rkey, source = self._handle(reader, ReadHandle)
        read_from, length = reader.u64(), reader.u64()
        wkey, target = self._handle(reader, WriteHandle)
        write_to = reader.u64()
        request = f"COPY-DATA handle {rkey.decode()} offset {read_from} len {length} -> handle {wkey.decode()} offset {write_to}"

        async def copy() -> int:
            copied = 0
            while length == 0 or copied < length:
                want = self.max_read if length == 0 else min(self.max_read, length - copied)
                data = await defer.maybeDeferred(self._read, source, read_from + copied, want)
                if not data:
                    break
                source.bytes += len(data)
                await self._write_at(target, write_to + copied, data)
                copied += len(data)
                if self.closed:
                    break
                # A turn of the reactor per chunk: a pread and a buffered
                # write are done at once, and a gigabyte copied in one go
                # would hold every other session of the hub.
                await task.deferLater(self._clock, 0, lambda: None)
            return copied

        def answer(copied):
            if length and copied < length:
                self._status(rid, FX_EOF, f"{source.path}: ended after {copied} of {length} bytes")
                return f"EOF after {copied} bytes"
            self._status(rid, FX_OK)
            return f"OK ({copied} bytes copied)"

        return self._run(request, rid, target.path, defer.Deferred.fromCoroutine(copy()), answer)

    def _fsync(self, rid, reader):
        key, handle = self._handle(reader, (ReadHandle, WriteHandle))
        request = f"FSYNC handle {key.decode()}"
        if isinstance(handle, ReadHandle):
            # Nothing written through it, nothing to sync: OK, as fsync(2)
            # of a file open for reading (OpenSSH's sftp-server answers so).
            self._status(rid, FX_OK)
            self._observe(request, "OK (open for reading: nothing to sync)")
            return None
        f = getattr(handle.writer, "file", None)
        if f is None:
            raise SFTPError(FX_OP_UNSUPPORTED, "this file system syncs files when they are closed")

        def sync():
            f.flush()
            os.fsync(f.fileno())

        def ok(_):
            self._status(rid, FX_OK)
            return "OK (on disk)"

        return self._run(request, rid, handle.path, threads.deferToThread(sync), ok)

    def _statvfs(self, rid, reader):
        segments = self._segments(reader.text())
        shown = self._show(segments)
        real = getattr(self.shell, "real_path", None)
        if real is None:
            raise SFTPError(FX_OP_UNSUPPORTED, "this file system has no free-space figures")
        try:
            st = os.statvfs(real(segments))
        except ftp.FTPCmdError as e:
            raise _error_for(failure.Failure(e), shown)
        except OSError as e:
            from twisted_mailhub.ftp.vfs import error_words

            if e.errno == 2:
                raise SFTPError(FX_NO_SUCH_FILE, f"{shown}: no such file or directory")
            raise SFTPError(FX_FAILURE, f"{shown}: {error_words(e)}")
        flag = (1 if st.f_flag & os.ST_RDONLY else 0) | (2 if st.f_flag & os.ST_NOSUID else 0)
        frsize = st.f_frsize or 512

        def answer(space) -> str:
            blocks, bfree, bavail = st.f_blocks, st.f_bfree, st.f_bavail
            if space is not None:
                # The account's quota is its disk (as FTP's 552 and the upload
                # rules count it): df showed the server's whole disk (its size
                # and others' use) and room the account could never write.
                limit, used = space
                blocks = limit // frsize
                bfree = bavail = min(bavail, max(0, limit - used) // frsize)
            payload = struct.pack(
                ">I11Q", rid, st.f_bsize, frsize, blocks, bfree, bavail,
                st.f_files, st.f_ffree, st.f_favail, 0, flag, st.f_namemax,
            )
            self._send(FXP_EXTENDED_REPLY, payload)
            return f"{bavail * frsize} bytes free" + (" (the account's quota)" if space is not None else "")

        # Counted now: df right after a REMOVE shows the room it made; the
        # files on disk are walked in a worker thread (quota_space_later).
        later = self.quota_space_later
        if later is not None:
            return self._run(f"STATVFS {shown}", rid, shown, later(), answer)
        space = self.quota_space(fresh=True) if self.quota_space is not None else None
        self._observe(f"STATVFS {shown}", answer(space))
        return None
