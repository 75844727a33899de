# -*- test-case-name: tests.test_logobserver -*-
"""
The hub's log observer: Twisted's classic log lines, for a fraction of the
CPU. An exception in a line is words, never C{[Errno 28] ...} or its
repr (L{twisted_mailhub.errorwords}).

Under SMTP load the hub logs a line per delivered message, and Twisted's
C{textFileLogObserver} spent about 15 % of the reactor thread on it: the
event's text through C{string.Formatter} (in Python), the time through
C{datetime.strftime} with a time zone object for every line (half of the
cost), then one C{write} and one C{flush} (a system call) per line. This
observer writes the very same lines
(C{2026-11-30T00:15:02+0000 [system] text}, continuation lines indented
with a tab, a traceback after the text of a failure) with:

 - the time stamp made once per second (the text for a second does not
   change within it; L{twisted.logger.formatTime} makes it, so it is
   exactly Twisted's);
 - the text made by C{str.format_map} (C), which gives what Twisted's
   formatter gives for every format it can do (Twisted's C{{name()}} call
   syntax, bytes formats, flattened events and failures go to Twisted's
   own code);
 - the lines gathered and written once per reactor turn (L{LineBuffer}):
   every delivery that a group commit completes is logged in one turn and
   goes out in one C{write}. Before the reactor runs and after it stops,
   each line is written at once, so a start that fails and the last lines
   of a shutdown are never held back.

L{for_twistd} gives it to C{twistd} in place of Twisted's observer (the
hub's top service sets it on the application as its C{ILogObserver}
component, which C{twistd}'s L{AppLogger.start} prefers to its own file
observer), with the same destination rules as
L{twisted.scripts._twistd_unix.UnixAppLogger}: standard output with C{-n}
and no C{--logfile}, C{--logfile=-} likewise, otherwise C{--logfile} or
C{twistd.log} as a L{twisted.python.logfile.LogFile} (rotated at 1 MB,
and on SIGUSR1; reopened instead when logrotate moved it away:
L{FollowedLogFile}). C{--logger} and C{--syslog} keep Twisted's own
observers.

Under C{--workers N} each worker makes its lines with the same formatter
(its system shown as C{worker N}). When the supervisor logs to standard
output (C{-n}, C{--logfile=-}: a terminal, a pipe, systemd's journal)
each worker writes its lines there itself, on a descriptor the
supervisor hands it (L{HubLogObserver.fd}), in writes of whole lines of
at most C{PIPE_BUF} octets (L{whole_lines_writer}), which the kernel
never interleaves with another process's: the supervisor is then not on
the path of a line at all (relaying them cost it 3-7 µs of CPU per
delivered message). With a rotated log file (C{--logfile}) the lines go
to the supervisor in batches through a pipe of their own, and it writes
what arrives without parsing it (L{LineBuffer.write_lines}), so that
only it ever writes the file it rotates. See L{twisted_mailhub.workers}.
"""

from __future__ import annotations

import atexit
import errno
import os
import select
import signal
import sys
import threading
from typing import Any, Callable

from time import time

from twisted.logger import ILogObserver, Logger, LogLevel, eventAsText, formatTime, timeFormatRFC3339
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = ["ClassicLines", "LineBuffer", "HubLogObserver", "OffersLogObserver", "QuickLogger", "for_twistd"]

_LEVELS = frozenset(LogLevel.iterconstants())
_INFO = LogLevel.info


class QuickLogger(Logger):
    """
    A L{twisted.logger.Logger} for lines logged per message (a delivery):
    the same events, without the check of the level against a fresh list
    of every level on each call (C{LogLevel.iterconstants()}: 1.3 of the
    3 microseconds C{Logger.info} costs).
    """

    def emit(self, level: Any, format: str | None = None, **kwargs: object) -> None:
        if level not in _LEVELS:
            Logger.emit(self, level, format, **kwargs)  # says why
            return
        kwargs.update(log_logger=self, log_level=level, log_namespace=self.namespace, log_source=self.source, log_format=format, log_time=time())
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(kwargs)

    def info(self, format: str | None = None, **kwargs: object) -> None:
        """L{Logger.info}: the same event, made here (one call and one copy of the keywords less: once per delivered message)."""
        # (stored one by one: no dict of them made for update())
        kwargs["log_logger"] = self
        kwargs["log_level"] = _INFO
        kwargs["log_namespace"] = self.namespace
        kwargs["log_source"] = self.source
        kwargs["log_format"] = format
        kwargs["log_time"] = time()
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(kwargs)


class ClassicLines:
    """
    Format events as Twisted's classic log text
    (L{twisted.logger.formatEventAsClassicLogText} with
    L{twisted.logger.formatTime}), character for character, faster.

    @ivar system: if not L{None}, the system shown in every line in place
        of the event's own (a worker's lines show C{worker N}).
    """

    def __init__(self, time_format: str | None = timeFormatRFC3339, system: str | None = None) -> None:
        self.time_format = time_format
        self.system = system
        # (second, its stamp): one tuple, so that a thread never pairs a
        # second with another thread's stamp.
        self._stamp: tuple[int | None, str] = (None, "-")
        # "namespace#level" of the events without a log_system, by (namespace, level).
        self._systems: dict[tuple, str] = {}

    def stamp(self, when: float | None) -> str:
        """
        The time stamp of C{when} (seconds since the epoch; L{None}: C{-}),
        remade only when the second changes.
        """
        if when is None or self.time_format is None:
            return "-"
        second = int(when)
        cached = self._stamp
        if cached[0] != second:
            cached = self._stamp = (second, formatTime(when, self.time_format))
        return cached[1]

    def __call__(self, event: dict) -> str | None:
        """
        One event as its log line(s), ending in a line feed, or L{None} if
        the event has no text (Twisted writes nothing for those either).
        """
        fmt = event.get("log_format")
        if type(fmt) is str and "log_failure" not in event and "log_flattened" not in event:
            try:
                text = fmt.format_map(event)
            except Exception:
                # {name()} calls, a missing field: Twisted's own formatter,
                # which also words an event it cannot format.
                return self._twisted(event)
        elif fmt is None and "log_failure" not in event:
            return None
        else:
            return self._twisted(event)
        if not text:
            return None
        if (
            ("Err" in text and ("[Errno " in text or "Error(" in text))
            or ("onnect" in text and ("other side" in text or "closed cleanly" in text or "timed out" in text or "connection failure" in text or "while connecting" in text))
            or "[Failure instance" in text
            or "lookup failed" in text
        ):  # (four short scans of a line with none of them; Twisted's
            # connection texts: errorwords.without_twisted)
            text = _worded(fmt, event, text)
        system = self.system
        if system is None:
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                namespace = event.get("log_namespace", "-")
                # (made once per namespace and level: a line per delivery)
                system = self._systems.get((namespace, level))
                if system is None:
                    system = f"{namespace}#{'-' if level is None else level.name}"
                    if len(self._systems) < 1000 and type(namespace) is str:
                        self._systems[namespace, level] = system
            elif type(system) is not str:
                system = _text(system)
        if "\n" in text:
            text = text.replace("\n", "\n\t")
        return f"{self.stamp(event.get('log_time'))} [{system}] {text}\n"

    def _twisted(self, event: dict) -> str | None:
        if self.system is not None:
            event = dict(event, log_system=self.system)
        text = eventAsText(event, formatTime=self.stamp)
        if not text:
            return None
        return text.replace("\n", "\n\t") + "\n"


def _worded(fmt: str, event: dict, text: str) -> str:
    """
    C{text}, the line of an event that carries an exception (or the text
    of one), made again with each exception as words and no C{[Errno N]}
    (L{twisted_mailhub.errorwords}): never Python's C{OSError} text or an
    exception's repr, whoever logged it.
    """
    from twisted_mailhub.errorwords import error_words, without_errno

    from twisted.python.failure import Failure

    # (a Failure given as a field, not as log.failure's: its exception's words)
    fields = {
        key: error_words(value.value if isinstance(value, Failure) else value) if isinstance(value, (BaseException, Failure)) else value
        for key, value in event.items()
    }
    try:
        text = fmt.replace("!r}", "}").format_map(fields)
    except Exception:
        pass
    return without_errno(text)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return "UNFORMATTABLE"


class LineBuffer:
    """
    Log lines gathered and written in one go, once per reactor turn (or
    C{delay} seconds after the first line waiting), from any thread.

    C{write(data: bytes)} writes to the destination; C{flush()}, if
    given, is called after each write. While the reactor is not running
    (start-up, after shutdown, no reactor at all) each line is written at
    once, after any that wait.
    """

    def __init__(
        self, write: Callable[[bytes], Any], flush: Callable[[], Any] | None = None, reactor: Any = None, delay: float = 0.0, where: str | None = None
    ) -> None:
        self._write = write
        #: What the lines are written to, for the one line on standard
        #: error if that fails: a file's path, "standard output".
        self.where = where
        self._flush = flush
        self.reactor = reactor
        self.delay = delay
        # Reentrant: a signal handler that logs runs in the main thread,
        # maybe while that thread is inside add() or flush().
        self._lock = threading.RLock()
        self._waiting: list[bytes] = []
        self._scheduled = False
        self._flushing = False
        self._main = threading.main_thread().ident
        self.broken: BaseException | None = None
        #: Lines not written since the last write that was (a full disk):
        #: the next one that is begins with a line saying how many.
        self.lost = 0

    def add(self, line: str) -> None:
        """Write C{line} (text) with the next batch."""
        # (write_lines, inline: a line per delivered message)
        with self._lock:
            self._waiting.append(line.encode("utf-8", "backslashreplace"))
            scheduled, self._scheduled = self._scheduled, True
        reactor = self.reactor
        if reactor is None or not reactor.running:
            self.flush()
        elif scheduled:
            return
        elif threading.get_ident() != self._main:
            reactor.callFromThread(self._later)
        else:
            self._later()

    def write_lines(self, data: bytes) -> None:
        """Write C{data}, whole lines already made, with the next batch."""
        with self._lock:
            self._waiting.append(data)
            scheduled, self._scheduled = self._scheduled, True
        reactor = self.reactor
        if reactor is None or not reactor.running:
            self.flush()
        elif scheduled:
            return
        elif threading.get_ident() != self._main:
            reactor.callFromThread(self._later)
        else:
            self._later()

    def _later(self) -> None:
        reactor = self.reactor
        if reactor is not None and reactor.running:
            reactor.callLater(self.delay, self.flush)
        else:
            self.flush()

    def flush(self) -> None:
        """Write every line waiting, now."""
        with self._lock:
            if self._flushing:
                # Reentered (a signal handler while this thread writes):
                # never between the octets of a line; the next flush
                # takes what waits.
                return
            self._flushing = True
            self._scheduled = False
            waiting, self._waiting = self._waiting, []
            try:
                if waiting:
                    data = waiting[0] if len(waiting) == 1 else b"".join(waiting)
                    if self.lost:
                        data = self._lost_line() + data
                    self._write(data)
                    if self._flush is not None:
                        self._flush()
                    self.lost = 0
                    self.broken = None  # (a later failure is said again)
            except Exception as e:
                self.lost += sum(line.count(b"\n") for line in waiting)
                # Where would we say so? Standard error, once.
                if self.broken is None:
                    self.broken = e
                    try:
                        sys.__stderr__.write(self.failure_line(e))
                        sys.__stderr__.flush()
                    except Exception:
                        pass
            finally:
                self._flushing = False


    def _lost_line(self) -> bytes:
        """The line that says how many lines were lost, and why, in the log's own form."""
        from twisted_mailhub.errorwords import error_words

        why = error_words(self.broken, paths=False) if self.broken is not None else "they could not be written"
        count = f"{self.lost} log line{'s' if self.lost != 1 else ''} {'were' if self.lost != 1 else 'was'}"
        line = f"{formatTime(time(), timeFormatRFC3339)} [twisted_mailhub.logobserver#warn] {count} lost here: {why}\n"
        return line.encode("utf-8", "backslashreplace")

    def failure_line(self, error: BaseException) -> str:
        """
        The line said on standard error, once, when the log cannot be
        written: where to, and why in plain words (the C library's for an
        C{OSError}, L{twisted_mailhub.errorwords}), never Python's text.
        """
        from twisted_mailhub.errorwords import error_words

        where = self.where or "its destination"
        return f"mailhub: the log cannot be written to {where}: {error_words(error, paths=False)}; log lines are lost until it can be\n"


@implementer(ILogObserver)
class HubLogObserver:
    """
    An L{ILogObserver} writing Twisted's classic log lines through a
    L{LineBuffer}.

    @ivar lines: the L{ClassicLines} formatter.
    @ivar buffer: the L{LineBuffer}.
    @ivar logfile: the L{twisted.python.logfile.LogFile} written to, if
        any (L{rotate} rotates it).
    @ivar fd: the descriptor the lines are written to when other
        processes may write whole lines there too (standard output:
        C{--workers}' workers do, with L{whole_lines_writer}), else
        L{None} (a rotated file, or a stream without one).
    """

    def __init__(self, buffer: LineBuffer, lines: ClassicLines | None = None, logfile: Any = None, fd: int | None = None) -> None:
        self.buffer = buffer
        self.lines = lines or ClassicLines()
        self.logfile = logfile
        self.fd = fd

    def __call__(self, event: dict) -> None:
        line = self.lines(event)
        if line is not None:
            self.buffer.add(line)

    def write_lines(self, data: bytes) -> None:
        """Whole log lines made elsewhere (a worker's), written as they are."""
        self.buffer.write_lines(data)

    def rotate(self) -> None:
        """
        Rotate the log file (SIGUSR1): the lines waiting go to the old
        file, those that come after to the new one.
        """
        self.buffer.flush()
        if self.logfile is not None:
            self.logfile.rotate()

    def start(self, reactor: Any) -> None:
        """
        Gather lines per turn of C{reactor} from now on; the lines waiting
        are written when it shuts down and at exit.
        """
        self.buffer.reactor = reactor
        reactor.addSystemEventTrigger("after", "shutdown", self.buffer.flush)
        atexit.register(self.buffer.flush)


def whole_lines_writer(fd: int, most: int = select.PIPE_BUF) -> Callable[[bytes], None]:
    """
    A C{write(data)} for C{fd} that several processes share (the hub's
    standard output under C{--workers}): C{data}, whole lines, goes out
    in C{write(2)}s that each end at a line end and hold at most C{most}
    octets (C{PIPE_BUF}: a write that size or smaller to a pipe is never
    interleaved with another's, nor is one to a file opened with
    C{O_APPEND}), so no line is cut by another process's. A single line
    longer than C{most} goes in one write of its own.

    @raise OSError: the write failed (the caller reports it).
    """

    def write(data: bytes) -> None:
        view = memoryview(data)
        size = len(data)
        start = 0
        while start < size:
            if size - start <= most:
                end = size
            else:
                end = data.rfind(b"\n", start, start + most) + 1
                if end <= start:  # one line longer than most
                    end = data.find(b"\n", start + most) + 1 or size
            while start < end:
                start += os.write(fd, view[start:end])

    return write


def _stdout_writer(stream: Any) -> tuple[Callable[[bytes], Any], Callable[[], Any] | None]:
    """write and flush for a text stream (standard output), in bytes."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        return (lambda data: stream.write(data.decode(encoding, "replace"))), stream.flush
    stream.flush()  # what was printed before logging began goes first
    # (in whole lines: under --workers the workers write there too)
    return whole_lines_writer(fd), None


def _moved_away(path: str, fd: int) -> bool:
    """
    Whether C{path} no longer names the open file C{fd}: it was renamed
    or removed (there is no file there, or another one). L{False} when
    C{path} cannot be looked at for another reason.
    """
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino)


class FollowedLogFile(LogFile):
    """
    C{twistd}'s L{LogFile} (rotated at 1 MB and on SIGUSR1 into C{NAME.1},
    C{NAME.2}...) that also follows an outside rotation: when the file was
    moved away or removed (logrotate's rename, or its C{create} that puts
    a new empty file in its place, then C{postrotate} sends SIGUSR1), a
    rotation reopens the name instead, so what comes after is written at
    C{NAME} again. Twisted's own L{LogFile.rotate} does nothing then (it
    finds no file to rename) or renames logrotate's new file, and the log
    goes on into the file that was moved away, which logrotate then
    compresses or removes.
    """

    def write(self, data: bytes | str) -> None:
        """
        As L{LogFile.write}, but whole or not at all: a short write (the
        disk filled up midway: Python's unbuffered file returns the count
        and raises nothing) is written on, and when the rest cannot be,
        the file is cut back to where this write began, so no torn line
        is left for the next one to run into.

        @raise OSError: the data could not be written (C{ENOSPC}...);
            nothing of it is in the file.
        """
        if self.shouldRotate():
            self.flush()
            self.rotate()
        if isinstance(data, str):
            data = data.encode("utf8")
        fd = self._file.fileno()
        start = os.lseek(fd, 0, os.SEEK_CUR)
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError(errno.EIO, "the log file took no octet")
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(fd, start)  # (takes no room)
                os.lseek(fd, start, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.size += len(data)

    def rotate(self) -> None:
        """Rotate as L{LogFile} does, or reopen C{NAME} if the file was moved away."""
        if _moved_away(self.path, self._file.fileno()):
            self.reopen()
        else:
            super().rotate()

    def reopen(self) -> None:
        """
        Open C{NAME} anew and close the file written so far; when C{NAME}
        cannot be opened (a hub run as another user (C{--uid}, systemd's
        C{User=}) may not create files in C{/var/log}; logrotate's
        C{create} made it for root), the log goes on in the old file, with
        a line saying why, as L{LogFile.rotate} goes on when it cannot
        rotate. Before, the file was closed first and then no line was
        ever written again.
        """
        old = self._file
        try:
            self._openFile()
        except OSError as e:
            self._file = old
            self.closed = False
            reason = f"{e.strerror or e}"
            line = f"{formatTime(time(), timeFormatRFC3339)} [twisted_mailhub.logobserver#warn] the log file {self.path} could not be opened again after it was moved away ({reason}): the log goes on in the file it was moved to\n"
            old.write(line.encode("utf-8", "backslashreplace"))
            return
        old.close()


def for_twistd(options: Any, reactor: Any = None) -> HubLogObserver | None:
    """
    The observer C{twistd} should log to, given C{twistd mailhub}'s
    options (their C{parent} is C{twistd}'s own): L{None} when C{twistd}
    is not the caller, when it was given C{--logger} or C{--syslog}, or
    when a daemon was asked to log to standard output (C{twistd} refuses
    that itself). Same destination rules as C{UnixAppLogger}.
    """
    parent = getattr(options, "parent", None)
    if parent is None or not hasattr(parent, "get"):
        return None
    if parent.get("logger") or parent.get("syslog"):
        return None
    logfile_name = parent.get("logfile") or ""
    nodaemon = parent.get("nodaemon")
    if logfile_name == "-" and not nodaemon:
        return None
    if reactor is None:
        from twisted.internet import reactor
    if logfile_name == "-" or (nodaemon and not logfile_name):
        write, flush = _stdout_writer(sys.stdout)
        try:
            fd = sys.stdout.fileno() if flush is None else None
        except (AttributeError, OSError, ValueError):
            fd = None
        observer = HubLogObserver(LineBuffer(write, flush, where="standard output"), fd=fd)
    else:
        try:
            logfile = FollowedLogFile.fromFullPath(logfile_name or "twistd.log")
        except OSError as e:
            # (before anything is bound or the process daemonizes: the
            # line goes to the terminal; exit 2 as for another unusable option)
            hint = " (make its folder first)" if e.errno == errno.ENOENT else ""
            sys.stderr.write(f"mailhub: --logfile {logfile_name or 'twistd.log'}: cannot open it: {e.strerror or e}{hint}\n")
            raise SystemExit(2) from None
        observer = HubLogObserver(LineBuffer(logfile.write, logfile.flush, where=logfile.path), logfile=logfile)
        if not signal.getsignal(signal.SIGUSR1):
            # As UnixAppLogger: rotate on SIGUSR1, in the reactor (or
            # reopen, when logrotate has moved the file away).
            signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(observer.rotate))
    observer.start(reactor)
    return observer


class OffersLogObserver:
    """
    Mixed into the hub's top service: when C{twistd} makes it the child of
    its application, the application is given L{log_observer} (if any) as
    its L{ILogObserver} component, which C{twistd} then logs to (see
    L{twisted.application.app.AppLogger.start}).
    """

    log_observer: HubLogObserver | None = None

    def setServiceParent(self, parent: Any) -> Any:
        observer = self.log_observer
        if observer is not None and hasattr(parent, "setComponent") and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, observer)
        return super().setServiceParent(parent)  # type: ignore[misc]
