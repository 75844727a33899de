# -*- test-case-name: tests.test_testing -*-
"""
A real hub for other people's tests: L{Mailhub}, a context manager that
starts C{twistd -n mailhub} in a subprocess on free loopback ports, like
aiosmtpd's C{Controller}, and reads back what arrived.

    from twisted_mailhub.testing import Mailhub

    with Mailhub(accounts=["alice@example.com:secret"]) as hub:
        with smtplib.SMTP(hub.host, hub.ports["submission"]) as s:
            s.starttls(context=hub.ssl_context)
            s.login("alice@example.com", "secret")
            s.sendmail("alice@example.com", ["alice@example.com"], msg)
        got = hub.wait_for_message(to="alice@example.com", subject="Hi")

Theory of operation:

 - Every listener the hub knows gets C{tcp:0:interface=127.0.0.1} unless
   the caller passes its own C{--NAME} or C{--no-NAME}; the ports the hub
   really bound come from its C{mailhub ready {...}} log line. No port
   races, no sleeps.
 - The data folder is a fresh temp folder (removed on stop) unless one is
   given. The TLS certificate is made there before the hub starts, so
   L{Mailhub.ssl_context} trusts exactly that certificate (it names
   C{127.0.0.1}, C{::1}, C{localhost} and the hub's hostname).
 - The helpers read and change mail the way a user would, over the hub's
   own IMAP and FTP listeners with the account's password: they work
   for every store and file-system backend and see what a client sees.
 - The hub is stopped by its PID (SIGTERM, then SIGKILL after a grace
   period); a hub that does not get to C{mailhub ready} is stopped and
   L{MailhubStartError} carries everything it logged.
"""

from __future__ import annotations

import base64
import codecs
import email
import email.message
import email.policy
import email.utils
import ftplib
import imaplib
import io
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterable

import attr

__all__ = ["Mailhub", "MailhubStartError", "keep_log", "Listener", "HubMessage", "DEFAULT_ACCOUNTS", "listener_names"]

# The folder that holds the twisted_mailhub package: the hub subprocess
# imports it from there even when it is not installed.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_ACCOUNTS = ("alice:secret", "bob:hungry")
DEFAULT_HOSTNAME = "mail.test"

_READY = re.compile(r"mailhub ready (\{.*\})")

# The hub's first code (python -c): started by L{Mailhub.start}
# (MAILHUB_END_WITH_STDIN=1), a thread reads its stdin, a pipe whose only
# writer is the test process, and sends the hub SIGTERM when that ends
# (the command line alone, L{Mailhub.command}, run with another stdin, does
# not): a test process killed (SIGKILL, a CI timeout, an
# xdist worker ended at once) leaves no hub behind holding its ports. The
# temp folders the test process would have removed at its end (a data
# folder the kit made, the bytecode cache: MAILHUB_ORPHAN_FOLDERS) the hub
# removes as it exits then, so none is left in the temp folder either.
# argv[0] is "twistd", so its usage errors read "twistd -n: ...", not "-c -n: ...".
_HUB_BOOTSTRAP = """\
import os, signal, sys, threading
_orphan_folders = [f for f in os.environ.pop("MAILHUB_ORPHAN_FOLDERS", "").split(os.pathsep) if f]
def _end_with_the_test_process():
    try:
        while os.read(0, 512):
            pass
    except OSError:
        return
    reactor = sys.modules.get("twisted.internet.reactor")
    if _orphan_folders and reactor is not None:
        # (After the reactor's shutdown: twistd then ends by the signal,
        # and exit handlers do not run.)
        def _end():
            import shutil
            for folder in _orphan_folders:
                reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, folder, True)
            os.kill(os.getpid(), signal.SIGTERM)
        reactor.callFromThread(_end)
        return
    os.kill(os.getpid(), signal.SIGTERM)
if os.environ.pop("MAILHUB_END_WITH_STDIN", ""):
    threading.Thread(target=_end_with_the_test_process, name="mailhub-test-process", daemon=True).start()
sys.argv[0] = "twistd"
from twisted.scripts.twistd import run
run()
"""


def keep_log(text: str, path: str | None = None) -> str | None:
    """
    With C{MAILHUB_KEEP_LOGS=DIR} in the environment, write C{text} (what
    a hub process printed or logged) to a new file C{DIR/<test>-<n>.log},
    named after the running pytest test when there is one, or over
    C{path} when given (a file this function returned before). A whole
    suite's hub logs can then be searched for tracebacks and unhandled
    errors no test asserted on: every hub a test starts, through
    L{Mailhub} or its own C{subprocess} call, should pass its output here.

    @return: the file written, or C{None} when the variable is not set.
    """
    folder = os.environ.get("MAILHUB_KEEP_LOGS")
    if not folder:
        return None
    if path is None:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0] or "mailhub"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", test)[:180]
        os.makedirs(folder, exist_ok=True)
        n = 0
        while True:
            path = os.path.join(folder, f"{stem}-{n}.log")
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                n += 1
    with open(path, "w", encoding="utf-8", errors="replace") as f:
        f.write(text)
    return path


class MailhubStartError(RuntimeError):
    """
    The hub exited or did not log C{mailhub ready} in time.

    The message's first line says why, in the hub's words when it gave
    any (C{mailhub exited with status 1 before it was ready: option
    --max-mesage-size not recognized}; C{...: mailhub: cannot listen for
    smtp on tcp:2525 (--smtp): the address is already in use ...}); then
    comes what it logged, twistd's usage text left out.

    @ivar log: everything the hub printed, whole.
    @ivar reason: the hub's words for the failure (its last critical or
        error log line, or twistd's usage error), or C{""}.
    """

    def __init__(self, message: str, log: str):
        self.log = log
        self.reason = start_failure_reason(log)
        head = f"{message}: {self.reason}" if self.reason else message
        RuntimeError.__init__(self, f"{head}\n--- mailhub log ---\n{_without_usage_text(log)}")


_LOGGED_FAILURE = re.compile(r"^\S+ \[[^\]]*#(?:critical|error)\] (.*)$")
_USAGE_ERROR = re.compile(r"^twistd(?: -n)?(?: mailhub)?: (.*)$")


def start_failure_reason(log: str) -> str:
    """
    The hub's own words for why it did not start, from C{log} (what it
    printed): twistd's usage error (C{option --x not recognized}, an
    option's refusal), else its last critical or error log line (the text
    after the time and source), else C{""}.
    """
    lines = [line.rstrip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        m = _USAGE_ERROR.match(line)
        if m:
            return m.group(1)
    for line in reversed(lines):
        m = _LOGGED_FAILURE.match(line)
        if m:
            return m.group(1)
    return ""


def _without_usage_text(log: str) -> str:
    """C{log} with twistd's usage text (C{Usage: twistd ...} up to its error line) left out."""
    lines = log.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("Usage: twistd"):
            end = next((j for j in range(len(lines) - 1, i, -1) if _USAGE_ERROR.match(lines[j].rstrip())), None)
            if end is not None:
                return "".join(lines[:i]) + "(twistd's usage text left out: `twistd mailhub --help` lists the options)\n" + "".join(lines[end:])
    return log


@attr.s(auto_attribs=True, frozen=True)
class Listener:
    """
    Where one listener of a running hub answers.

    @ivar port: its port; for a UNIX-socket listener (C{unix:PATH}), the
        socket's path (a C{str}).
    @ivar tls: C{"implicit"} for a listener that is TLS from the first
        byte (smtps, pop3s, imaps), C{""} for one that offers STARTTLS.
    """

    name: str
    host: str
    port: int | str
    tls: str = ""


@attr.s(auto_attribs=True, frozen=True, repr=False)
class HubMessage:
    """
    One stored message, as IMAP shows it.

    @ivar raw: the message's octets exactly as stored (CRLF line ends,
        with the hub's C{Return-Path:} and C{Received:} headers).
    @ivar message: C{raw} parsed with C{email.policy.default} (see
        L{parse_message}).
    @ivar uid: its IMAP UID in C{folder}.
    @ivar flags: its IMAP flags, e.g. C{frozenset({"\\\\Seen"})}.
    """

    account: str
    folder: str
    uid: int
    flags: frozenset
    raw: bytes
    message: email.message.EmailMessage

    @property
    def subject(self) -> str:
        """
        The Subject as the webmail and the JSON API show it: RFC 2047
        words decoded, a broken one as sent (C{"=?utf-8?B?!!!x?="}, where
        C{email.policy.default} would guess C{"!!!x"}), runs of white
        space one space; C{""} for none.
        """
        from twisted_mailhub.web.message import decoded, field

        return decoded(field(self.message, "Subject"))

    def __repr__(self) -> str:
        """C{<HubMessage alice@localhost INBOX uid 3 'Welcome' 812 octets>}: what pytest shows."""
        return f"<HubMessage {self.account} {self.folder} uid {self.uid} {self.subject!r} {len(self.raw)} octets>"

    def __getitem__(self, header: str) -> Any:
        """C{m["Subject"]}: a header of the parsed message (L{None} if absent)."""
        return self.message[header]

    def text(self) -> str:
        """
        The plain-text body (the C{text/plain} part, decoded to C{str} with
        its charset, lines ending in C{"\\n"}), or C{""} if it has none.
        """
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""


def listener_names(pythonpath: str | None = None) -> list[tuple[str, str]]:
    """
    C{(name, tls)} of every listener the registered components offer
    (built-in and plugin ones), in the order the hub starts them, as a hub
    started with C{pythonpath} in front of its path sees them (asked of a
    Python with that path, once per path).
    """
    if not pythonpath:
        from twisted_mailhub import tap

        return [(spec.name, getattr(spec, "tls", "")) for c in tap._components() for spec in getattr(c, "listeners", [])]
    if pythonpath not in _NAMES_BY_PATH:
        env = dict(os.environ, PYTHONPATH=hub_pythonpath(pythonpath))
        out = subprocess.run(
            [sys.executable, "-c", "import json; from twisted_mailhub.testing import listener_names; print(json.dumps(listener_names()))"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )
        _NAMES_BY_PATH[pythonpath] = [tuple(pair) for pair in json.loads(out.stdout)]
    return list(_NAMES_BY_PATH[pythonpath])


_NAMES_BY_PATH: dict[str, list] = {}


_BYTECODE_CACHE: list[str] = []


def bytecode_cache_folder(env: dict[str, str] | None = None, parent: str | None = None) -> str:
    """
    The folder where the hubs this process starts keep their compiled code
    (Python's C{PYTHONPYCACHEPREFIX}: one tree of C{.pyc} files beside no
    source), made at the first call in C{parent} (default: the temp
    folder) and removed by
    L{remove_bytecode_cache_folder} or when this process exits; or C{""}
    when it is not needed: C{env} (default C{os.environ}) lets Python write
    bytecode (no C{PYTHONDONTWRITEBYTECODE}), or the package comes with
    its C{.pyc} files (installed with pip).
    """
    env = os.environ if env is None else env
    if not env.get("PYTHONDONTWRITEBYTECODE"):
        return ""
    import importlib.util

    try:
        if os.path.exists(importlib.util.cache_from_source(os.path.join(PACKAGE_ROOT, "twisted_mailhub", "tap.py"))):
            return ""
    except NotImplementedError:  # sys.implementation.cache_tag is None
        return ""
    if not _BYTECODE_CACHE or not os.path.isdir(_BYTECODE_CACHE[0]):
        import atexit

        folder = tempfile.mkdtemp(prefix="mailhub-bytecode-", dir=parent)
        if not _BYTECODE_CACHE:
            atexit.register(remove_bytecode_cache_folder)
        _BYTECODE_CACHE[:] = [folder]
    return _BYTECODE_CACHE[0]


def remove_bytecode_cache_folder() -> None:
    """Remove the folder L{bytecode_cache_folder} made, if any (the next call makes another)."""
    if _BYTECODE_CACHE:
        shutil.rmtree(_BYTECODE_CACHE.pop(), ignore_errors=True)


def hub_pythonpath(extra: str | None = None) -> str:
    """
    The hub's PYTHONPATH: the folder of this package first, then C{extra}
    (e.g. a folder with third-party plugins), then the inherited one.
    """
    parts = [PACKAGE_ROOT, extra, os.environ.get("PYTHONPATH")]
    return os.pathsep.join(p for p in parts if p)


def _interface_of(description: str) -> str:
    m = re.search(r"(?:^|:)interface=([^:]+|\[[^\]]+\])", description)
    if m:
        host = m.group(1).strip("[]").replace("\\:", ":")
        return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return "127.0.0.1"


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ByListener(dict):
    """
    C{Mailhub.ports} and C{Mailhub.listeners}: a C{dict} keyed by listener
    name whose missing key says which listeners the hub runs
    (C{KeyError: 'this hub has no sftp listener (--no-sftp?); it runs: ftp,
    imap, ...'}) rather than only C{KeyError: 'sftp'}.
    """

    def __missing__(self, name: str) -> Any:
        raise KeyError(f"this hub has no {name} listener (--no-{name}?); it runs: {', '.join(sorted(self)) or 'none, it is not running'}")


# The options with which a test routes outbound mail itself (see command).
_OWN_ROUTE_OPTIONS = ("--smarthost", "--dns-server")
# Where a kit hub's outbound mail goes unless a test routes it: loopback
# port 1 (tcpmux, RFC 1078, which nothing runs), so the connection is
# refused at once and the mail waits in the queue.
_NOWHERE = "127.0.0.1:1"


_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')


class Mailhub:
    """
    A running C{twistd mailhub} for tests, in a subprocess.

    C{Mailhub(*options, accounts=..., domains=..., data_dir=..., hostname=...)}:
    C{options} go to C{twistd mailhub} as they are (C{"--max-message-size",
    "1000"}, C{"--no-ftp"}, C{"--smtp", "tcp:2525"}). C{accounts} are
    C{ADDRESS:PASSWORD} strings (a bare name gets the first domain).
    Use it as a context manager, or call L{start} and L{stop}.

    @ivar listeners: C{{name: Listener}} once started.
    @ivar ports: C{{name: port}} once started (a UNIX-socket listener's
        path instead of a port).
    @ivar data_dir: the hub's data folder.
    """

    def __init__(
        self,
        *options: str,
        accounts: Iterable[str] = DEFAULT_ACCOUNTS,
        domains: Iterable[str] = (),
        data_dir: str | None = None,
        hostname: str = DEFAULT_HOSTNAME,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        make_certificate: bool = True,
        accounts_file: bool = True,
    ):
        self.options = [str(o) for o in options]
        self.accounts: dict[str, str] = {}
        self._account_specs: list[str] = []
        self.domains = [d.lower() for d in domains]
        self.make_certificate = make_certificate
        self.accounts_file = accounts_file
        for spec in accounts:
            self._remember_account(spec)
        self._own_data_dir = data_dir is None
        self.data_dir = data_dir or ""
        # A --hostname among the options is the one the hub runs with: the
        # certificate the kit makes must name it (and ssl_context check it).
        self.hostname = self._option("--hostname") or hostname
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.listeners: dict[str, Listener] = {}
        self._fixed: dict[str, str] = {}
        self._restarting = False
        self._log: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._said_ready = False
        self._reader: threading.Thread | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._kept_as: str | None = None

    # -- accounts ------------------------------------------------------------

    def _default_domain(self) -> str:
        if self.domains:
            return self.domains[0]
        for i, o in enumerate(self.options):
            if o.startswith("--domain="):
                return o.split("=", 1)[1].lower()
            if o == "--domain" and i + 1 < len(self.options):
                return self.options[i + 1].lower()
        return "localhost"

    def address_of(self, name: str) -> str:
        """C{alice} -> C{alice@<first domain>}; a full address as it is."""
        return name if "@" in name else f"{name}@{self._default_domain()}"

    def _remember_account(self, spec: str) -> str:
        """
        Keep C{ADDRESS:PASSWORD} for the hub's accounts file; returns the
        full address.

        @raise ValueError: at once, before the hub reads it: the spec is
            no account (the hub's own rule, L{AccountBook.add}: a name with
            a blank, an empty password...), or its password cannot be one
            line of the file (a line end in it; blanks at its end, which
            the file's reader strips).
        """
        from twisted_mailhub.accounts import AccountBook

        name, sep, password = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"an account is ADDRESS:PASSWORD, got {spec!r}")
        if "\n" in password or "\r" in password:
            raise ValueError(f"{name}: a password with a line end cannot be a line of the accounts file")
        if password != password.rstrip():
            raise ValueError(f"{name}: a password that ends in a blank cannot be kept in the accounts file (its lines are read without their trailing blanks)")
        AccountBook([self._default_domain()]).add(name, password)
        address = self.address_of(name)
        self.accounts[address.lower()] = password
        self._account_specs.append(spec)
        return address

    def password_of(self, account: str) -> str:
        """
        The password of C{account} (C{alice} or C{alice@localhost}, any
        case), as this object was given it.

        @raise KeyError: not an account this object made or added (the
            message lists the known ones).
        """
        address = self.address_of(account).lower()
        try:
            return self.accounts[address]
        except KeyError:
            raise KeyError(f"{account}: not an account this Mailhub made (known: {', '.join(sorted(self.accounts)) or 'none'})") from None

    # -- the process -------------------------------------------------------------

    @property
    def log(self) -> str:
        """
        Everything the hub has printed so far (its stdout and stderr, one
        C{str} of lines ending in C{"\\n"}), restarts included.
        """
        with self._lock:
            return "".join(self._log)

    @property
    def pid(self) -> int | None:
        """The hub process's id while it runs, else C{None}."""
        return self.process.pid if self.process is not None else None

    @property
    def host(self) -> str:
        """The address the default listeners bind: C{127.0.0.1}."""
        return "127.0.0.1"

    def _given(self, option: str) -> bool:
        return any(o == option or o.startswith(option + "=") for o in self.options)

    def _option(self, option: str) -> str | None:
        """The value of the last C{--option VALUE} or C{--option=VALUE} given, if any."""
        value = None
        for i, o in enumerate(self.options):
            if o.startswith(option + "="):
                value = o.split("=", 1)[1]
            elif o == option and i + 1 < len(self.options):
                value = self.options[i + 1]
        return value

    def command(self) -> list[str]:
        """
        The hub's command line, a list of C{str}: this Python running
        twistd C{-n mailhub} with a free loopback port for every listener
        not given in the options, the hostname, domains and accounts.
        """
        args = [sys.executable, "-c", _HUB_BOOTSTRAP, "-n", "--pidfile=", "mailhub", "--data", self.data_dir]
        for name, _tls in listener_names(self.extra_env.get("PYTHONPATH")):
            if self._given(f"--{name}") or self._given(f"--no-{name}"):
                continue
            args += [f"--{name}", self._fixed.get(name, "tcp:0:interface=127.0.0.1")]
        if not self._given("--hostname"):
            args += ["--hostname", self.hostname]
        for domain in self.domains:
            args += ["--domain", domain]
        if self.accounts_file and self._account_specs:
            args += ["--auth", f"file:{self._accounts_path()}"]
        else:
            for spec in self._account_specs:
                args += ["--user", spec]
        if not any(self._given(o) for o in _OWN_ROUTE_OPTIONS):
            # Mail a logged-in sender addresses to another domain would be
            # looked up in the system's DNS and sent to the world's MX
            # hosts: a test of "the welcome mail goes to jane@gmail.com"
            # sent it. Every such domain goes to a loopback port nothing
            # listens on instead, so the mail waits in the queue
            # (DATA/queue, "cannot connect to 127.0.0.1:1" in the log) and
            # is removed with the data. The options' own --mx-override *=
            # comes later and wins; --smarthost and --dns-server are a
            # test's choice to send.
            args += ["--mx-override", f"*={_NOWHERE}"]
        return args + self.options

    def _accounts_path(self) -> str:
        return os.path.join(self.data_dir, "mailhub-accounts")

    def _write_accounts(self) -> None:
        """The accounts file the hub reads at start and on SIGHUP (mode 0600)."""
        path = self._accounts_path()
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(spec + "\n" for spec in self._account_specs))
        os.replace(path + ".tmp", path)

    def start(self, timeout: float | None = None) -> "Mailhub":
        """
        Start the hub and wait for C{mailhub ready}.

        @param timeout: seconds to wait (default: C{start_timeout}).
        @raise MailhubStartError: it exited, or was not ready within the
            timeout (it is stopped first).
        """
        __tracebackhide__ = True  # pytest shows the caller's line and this error, not the kit's source
        timeout = self.start_timeout if timeout is None else timeout
        if self.process is not None:
            raise RuntimeError("this Mailhub is running already")
        if not self.data_dir:
            self.data_dir = tempfile.mkdtemp(prefix="mailhub-")
        os.makedirs(self.data_dir, exist_ok=True)
        self._make_certificate()
        if self.accounts_file and self._account_specs:
            self._write_accounts()
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        env["PYTHONPATH"] = hub_pythonpath(self.extra_env.get("PYTHONPATH"))
        env["MAILHUB_END_WITH_STDIN"] = "1"  # the pipe below (see _HUB_BOOTSTRAP)
        if "PYTHONPYCACHEPREFIX" not in env:
            # PYTHONDONTWRITEBYTECODE and a checkout: without this each hub
            # compiles every module it imports at each start (0.6 s of CPU)
            cache = bytecode_cache_folder(env)
            if cache:
                env["PYTHONPYCACHEPREFIX"] = cache
                del env["PYTHONDONTWRITEBYTECODE"]
        orphans = [self.data_dir] if self._own_data_dir else []
        if _BYTECODE_CACHE and env.get("PYTHONPYCACHEPREFIX") == _BYTECODE_CACHE[0]:
            orphans.append(_BYTECODE_CACHE[0])
        env["MAILHUB_ORPHAN_FOLDERS"] = os.pathsep.join(orphans)
        self._ready.clear()
        self._said_ready = False
        from twisted_mailhub import sighup

        # Started with SIGHUP (and SIGUSR1) blocked: one sent before the
        # hub's first code runs waits for it instead of ending it
        # (twisted_mailhub.sighup).
        with sighup.blocked():
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,  # never written: its end tells the hub this process is gone
                env=env,
                text=True,
                errors="replace",
            )
        self._reader = threading.Thread(target=self._read, args=(self.process,), name="mailhub-log", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self._said_ready:
            exited = self.process.poll()
            if exited is None and self._ready.is_set():
                # Its output ended: it is exiting; wait for its status.
                try:
                    exited = self.process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self.stop(remove_data=False if self._restarting else None)
            why = f"mailhub exited with status {exited} before it was ready" if exited is not None else f"mailhub was not ready within {timeout:g} s"
            raise MailhubStartError(why, self.log)
        return self

    def _make_certificate(self) -> None:
        if not self.make_certificate or self._given("--tls-cert"):
            return
        from twisted_mailhub.tls import make_self_signed

        from twisted_mailhub.tls import _named, names_in

        cert, key = self._certificate_paths()
        if os.path.exists(cert) and os.path.exists(key):
            with open(cert, "rb") as f:
                if _named(self.hostname, names_in(f.read())):
                    return
            # A data folder used again under another hostname: the hub
            # would keep the old certificate (and warn), and a test that
            # checks the hub's name would fail on it. The kit makes one
            # for the name it is given.
        make_self_signed(self.hostname, cert, key)

    def _certificate_paths(self) -> tuple[str, str]:
        for i, o in enumerate(self.options):
            if o.startswith("--tls-cert="):
                return o.split("=", 1)[1], ""
            if o == "--tls-cert" and i + 1 < len(self.options):
                return self.options[i + 1], ""
        return os.path.join(self.data_dir, "tls", "cert.pem"), os.path.join(self.data_dir, "tls", "key.pem")

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self._log.append(line)
            m = _READY.search(line)
            if m and not self._said_ready:
                self._found_ports(json.loads(m.group(1)))
                self._said_ready = True
                self._ready.set()
        self._ready.set()  # exited: wake start() so it can report

    def _found_ports(self, ports: dict[str, int]) -> None:
        tls = dict(listener_names(self.extra_env.get("PYTHONPATH")))
        descriptions = {}
        for i, o in enumerate(self.options[:-1]):
            if o.startswith("--") and o[2:] in ports:
                descriptions[o[2:]] = self.options[i + 1]
        self.ports = ByListener(ports)
        self.listeners = ByListener(
            (name, Listener(name, _interface_of(descriptions.get(name, "")), port, tls.get(name, "")))
            for name, port in ports.items()
        )

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """
        Wait until the hub has logged a line matching the regular
        expression C{pattern} (searched in the whole log, so a line logged
        before the call counts); returns the match.

        @param timeout: seconds.
        @raise TimeoutError: no match within C{timeout}; the message has
            the last 4000 characters of the log.
        """
        __tracebackhide__ = True  # pytest shows the caller's line and this error, not the kit's source
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(self.log)
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(f"mailhub never logged {pattern!r} in {timeout:g} s:\n{self.log[-4000:]}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, remove_data: bool | None = None) -> int | None:
        """
        Stop the hub by its PID (C{sig}, then SIGKILL after 15 s) and wait
        for it. A temp data folder this object made (or the fixtures'
        folder) is removed unless C{remove_data=False}. Safe to call on a
        stopped hub. Never raises for a hub that already exited.

        @return: its exit status (C{-15} for an end by SIGTERM, as
            C{subprocess} gives it; C{0}), or C{None} if it was not running.
        """
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    os.kill(self.process.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.process.wait(15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            if self._reader is not None:
                self._reader.join(5)
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
            code = self.process.returncode
            self.process = None
            self._keep_log()
        if remove_data if remove_data is not None else self._own_data_dir:
            if self.data_dir and os.path.isdir(self.data_dir):
                shutil.rmtree(self.data_dir, ignore_errors=True)
            if self._own_data_dir:
                self.data_dir = ""
        return code

    def _keep_log(self) -> None:
        """
        With C{MAILHUB_KEEP_LOGS=DIR} in the environment, write everything
        this hub printed (restarts included) to C{DIR/<test>-<n>.log} (see
        L{keep_log}). Written again, whole, at each stop.
        """
        self._kept_as = keep_log(self.log, self._kept_as)

    def restart(self, same_ports: bool = True) -> "Mailhub":
        """
        Stop and start again on the same data folder (mail in a C{memory}
        store is lost). With C{same_ports}, each listener asks for the port
        it had; if another process took one meanwhile, the hub comes back
        on free ports instead: read C{ports} again after a restart.
        Returns C{self}.

        @raise MailhubStartError: it did not come back (see L{start}).
        """
        fixed = {name: f"tcp:{l.port}:interface={l.host}" for name, l in self.listeners.items() if not self._given(f"--{name}")}
        self.stop(remove_data=False)
        with self._lock:
            self._log.append("---- restart ----\n")
        self._restarting = True
        try:
            if same_ports:
                self._fixed = fixed
                try:
                    return self.start()
                except MailhubStartError as e:
                    if "already in use" not in e.log.lower():
                        raise
                    with self._lock:
                        self._log.append("---- a port was taken; restart on free ports ----\n")
                finally:
                    self._fixed = {}
            return self.start()
        finally:
            self._restarting = False

    def __repr__(self) -> str:
        """C{<Mailhub pid 4242 smtp 127.0.0.1:40123 ...>}, or C{<Mailhub stopped>}: what pytest shows for a fixture."""
        if self.process is None:
            return "<Mailhub stopped>"
        where = " ".join(f"{name} {l.host}:{l.port}" if isinstance(l.port, int) else f"{name} {l.port}" for name, l in self.listeners.items())
        return f"<Mailhub pid {self.process.pid} {where}>"

    def __enter__(self) -> "Mailhub":
        """L{start}: C{with Mailhub(...) as hub:}."""
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        """L{stop}, whatever the block raised (which goes on)."""
        self.stop()

    # -- TLS ---------------------------------------------------------------

    @property
    def certificate_path(self) -> str:
        """The PEM file of the certificate the hub presents."""
        return self._certificate_paths()[0]

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """
        A client C{SSLContext} that trusts the hub's certificate and checks
        it (hostname C{127.0.0.1}, C{localhost} or the hub's hostname).
        """
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self.certificate_path)
        return self._ssl_context

    # -- reading and changing mail over IMAP -----------------------------------

    def _listener(self, name: str) -> Listener:
        if self.process is None:
            raise RuntimeError("the hub is not running")
        try:
            return self.listeners[name]
        except KeyError:
            raise RuntimeError(f"this needs the hub's {name} listener, which is off (running: {', '.join(sorted(self.listeners))})") from None

    def imap(self, account: str) -> imaplib.IMAP4:
        """
        An C{imaplib.IMAP4} client logged in as C{account} (STARTTLS when
        the hub requires it), with a 30 s socket timeout; log it out when
        done.

        @raise RuntimeError: the hub is not running, or its C{imap}
            listener is off.
        @raise KeyError: not an account this object knows (L{password_of}).
        @raise imaplib.IMAP4.error: the hub refused the login.
        """
        where = self._listener("imap")
        client = imaplib.IMAP4(where.host, where.port, timeout=30)
        try:
            if "LOGINDISABLED" in client.capabilities:
                client.starttls(self.ssl_context)
            user, password = self.address_of(account), self.password_of(account)
            if user.isascii() and password.isascii():
                client.login(user, password)
            else:
                # imaplib sends LOGIN's strings as ASCII; SASL PLAIN carries
                # UTF-8 (RFC 4616), so an account named zoë@ logs in too.
                client.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode("utf-8"))
        except BaseException:
            client.shutdown()
            raise
        return client

    def ftp(self, account: str) -> ftplib.FTP:
        """
        An FTP client logged in as C{account}, in passive mode. Names are
        UTF-8 text; the octets of a name that is not UTF-8 (an old client's
        Latin-1 C{café}) come as lone surrogates (PEP 383, as C{os.listdir}
        gives them: C{"caf\\udce9.txt"}) and go back as the same octets, so
        C{nlst()}, C{mlsd()} and C{retrlines("LIST")} never raise on them
        and C{RETR}/C{DELE} of such a name work. A 30 s socket timeout;
        C{quit()} it when done.

        @raise RuntimeError: the hub is not running, or its C{ftp}
            listener is off.
        @raise KeyError: not an account this object knows (L{password_of}).
        @raise ftplib.error_perm: the hub refused the login.
        """
        where = self._listener("ftp")
        client = ftplib.FTP(timeout=30, encoding=FTP_NAMES)
        client.connect(where.host, where.port)
        try:
            client.login(self.address_of(account), self.password_of(account))
        except BaseException:
            client.close()
            raise
        return client

    def _utf8_imap(self, account: str) -> imaplib.IMAP4:
        """
        L{imap} with UTF-8 enabled (RFC 6855) for the kit's own reads:
        messages come as stored (an SMTPUTF8 message's header is not
        downgraded to encoded-words, so C{.raw} is the stored bytes) and
        folder names are UTF-8 (C{Entwürfe}). Not for the user's client:
        imaplib's APPEND in UTF-8 mode puts C{UTF8 (} inside the literal.
        """
        client = self.imap(account)
        if "UTF8=ACCEPT" in client.capabilities:
            try:
                client.enable("UTF8=ACCEPT")
            except BaseException:
                _logout(client)
                raise
        return client

    def messages(self, account: str, folder: str = "INBOX") -> list[HubMessage]:
        """
        Every message in C{folder} of C{account}, oldest first (by UID), as
        a list of L{HubMessage}; read over IMAP without setting C{\\Seen}.

        @raise KeyError: no such folder, or not an account this object knows.
        @raise RuntimeError: the hub is not running or its C{imap} listener
            is off.
        """
        client = self._utf8_imap(account)
        try:
            return self._fetch(client, account, folder, 1)
        finally:
            _logout(client)

    def _fetch(self, client: imaplib.IMAP4, account: str, folder: str, first_uid: int) -> list[HubMessage]:
        typ, data = client.select(_imap_quote(folder), readonly=True)
        if typ != "OK":
            raise KeyError(f"{account}: no folder {folder!r}")
        typ, data = client.uid("FETCH", f"{first_uid}:*", "(UID FLAGS BODY.PEEK[])")
        found = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, raw = item
            m = re.search(rb"UID (\d+)", head)
            if m is None or int(m.group(1)) < first_uid:
                continue  # n:* always names the last message
            flags = re.search(rb"FLAGS \(([^)]*)\)", head)
            found.append(
                HubMessage(
                    account=self.address_of(account),
                    folder=folder,
                    uid=int(m.group(1)),
                    # \Recent belongs to an IMAP session (RFC 3501 §2.3.2), not to the message
                    flags=frozenset(f for f in flags.group(1).decode("utf-8", "replace").split() if f != "\\Recent") if flags else frozenset(),
                    raw=raw,
                    message=parse_message(raw),
                )
            )
        return found

    def wait_for_message(self, to: str | None = None, subject: str | re.Pattern | None = None, timeout: float = 10.0, folder: str = "INBOX") -> HubMessage:
        """
        The first message in C{folder} addressed C{to} (a C{To:}, C{Cc:},
        C{Delivered-To:} or C{X-Original-To:} address, or the account it
        was delivered to) whose subject contains C{subject} (a string) or
        matches it (a compiled regular expression); waits for it to arrive,
        looking every 50 ms over IMAP (without setting C{\\Seen}). C{to}
        may be a bare name (C{"bob"}), an account or any address (a
        C{--catch-all} copy's C{X-Original-To}).

        @param timeout: seconds (a C{float}).
        @return: the L{HubMessage}.
        @raise TimeoutError: none within C{timeout} seconds; the message
            says what was there (the last ten: account and subject).
        @raise RuntimeError: the hub is not running or its C{imap} listener
            is off.
        """
        __tracebackhide__ = True  # pytest shows the caller's line and this error, not the kit's source
        if to is not None and self.address_of(to).lower() in self.accounts:
            candidates = [self.address_of(to).lower()]
        else:
            candidates = list(self.accounts)
        clients = {account: self._utf8_imap(account) for account in candidates}
        next_uid = dict.fromkeys(candidates, 1)
        seen: list[HubMessage] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                for account, client in clients.items():
                    for m in self._fetch(client, account, folder, next_uid[account]):
                        next_uid[account] = max(next_uid[account], m.uid + 1)
                        if _matches(m, to, subject):
                            return m
                        seen.append(m)
                if time.monotonic() >= deadline:
                    summary = "; ".join(f"{m.account} {m.subject!r}" for m in seen[-10:]) or "nothing"
                    raise TimeoutError(f"no message to={to!r} subject={subject!r} in {folder} within {timeout:g} s (there: {summary})")
                time.sleep(0.05)
        finally:
            for client in clients.values():
                _logout(client)

    def folders(self, account: str) -> list[str]:
        """
        The names of C{account}'s selectable folders (a list of C{str},
        C{INBOX} and the special-use ones included), as IMAP LIST gives them.

        @raise RuntimeError: the hub is not running or its C{imap} listener
            is off.
        """
        client = self._utf8_imap(account)
        try:
            return [name for name, _flags in _list_folders(client)]
        finally:
            _logout(client)

    # -- the JSON API ------------------------------------------------------------

    def api(self, account: str, method: str, path: str, json_body: Any = None, body: bytes | None = None) -> Any:
        """
        Call the hub's JSON API (C{/api/v1} on the C{web} listener) as
        C{account}: C{hub.api("alice", "GET", "/accounts/me/folders")}.
        Returns the decoded JSON, or the bytes of a reply that is not JSON.

        @param path: under C{/api/v1}, e.g. C{"/accounts/me/files/a.txt"}.
        @param json_body: sent as C{application/json}; or C{body}, bytes as
            they are.
        @raise urllib.error.HTTPError: for an error reply (its body is the
            API's JSON error, and its message says that error's words:
            C{HTTP Error 404: Not Found: no message 999 in INBOX}).
        @raise RuntimeError: the hub is not running or its C{web} listener
            is off.
        """
        where = self._listener("web")
        data = body
        headers = {"Authorization": "Basic " + base64.b64encode(f"{self.address_of(account)}:{self.password_of(account)}".encode("utf-8")).decode("ascii")}
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(f"http://{where.host}:{where.port}/api/v1{path}", data=data, method=method, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            # The reason alone ("Not Found") hides what the API said.
            payload = e.read()
            e.close()
            try:
                words = json.loads(payload)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                words = ""
            raise urllib.error.HTTPError(e.url, e.code, f"{e.reason}: {words}" if words else e.reason, e.headers, io.BytesIO(payload)) from None
        with response:
            payload = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(payload)
            return payload

    # -- files over FTP ----------------------------------------------------------

    def files(self, account: str) -> dict[str, bytes]:
        """
        Every file in C{account}'s FTP home: C{{"dir/name": contents}}. A
        name is UTF-8 text; octets of one that is not (an old client's
        Latin-1 C{café}) are U+FFFD, as the JSON API's listing shows them.
        Folders are walked, not listed; an empty home gives C{{}}.

        @raise RuntimeError: the hub is not running or its C{ftp} listener
            is off.
        """
        client = self.ftp(account)
        found: dict[str, bytes] = {}
        try:
            for path, kind in _walk(client, ""):
                if kind == "file":
                    buffer = io.BytesIO()
                    client.retrbinary(f"RETR /{path}", buffer.write)
                    found[path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")] = buffer.getvalue()
        finally:
            _quit(client)
        return found

    # -- purge and accounts ------------------------------------------------------

    def purge(self) -> None:
        """
        Empty every account this object knows: all messages expunged,
        folders other than INBOX and the special-use ones deleted, the
        subscriptions made as a new account's (those folders, no other
        name), FTP homes emptied (over the C{imap} and C{ftp} listeners; a
        part whose listener is off is left as it is). Accounts stay.
        """
        for account in self.accounts:
            if "imap" in self.listeners:
                client = self._utf8_imap(account)
                try:
                    kept = []
                    for folder, flags in sorted(_list_folders(client), key=lambda f: len(f[0]), reverse=True):
                        if folder.upper() == "INBOX" or flags & _SPECIAL_USE:
                            # INBOX and the RFC 6154 folders the hub makes stay, empty.
                            kept.append(folder)
                            if client.select(_imap_quote(folder))[0] == "OK":
                                client.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
                                client.expunge()
                                client.close()
                        else:
                            client.delete(_imap_quote(folder))
                    # A deleted folder's name stays subscribed (RFC 9051
                    # §6.3.9): the next test's LSUB listed it.
                    subscribed = [name for name, _ in _list_folders(client, "LSUB", selectable_only=False)]
                    for name in subscribed:
                        if name not in kept:
                            client.unsubscribe(_imap_quote(name))
                    for name in kept:
                        if name not in subscribed:
                            client.subscribe(_imap_quote(name))
                finally:
                    _logout(client)
            if "ftp" in self.listeners:
                client = self.ftp(account)  # (any name's octets: see ftp)
                try:
                    for path, kind in reversed(list(_walk(client, ""))):
                        if kind == "file":
                            client.delete(f"/{path}")
                        else:
                            client.rmd(f"/{path}")
                finally:
                    _quit(client)

    def add_account(self, address: str, password: str, timeout: float = 10.0) -> str:
        """
        Add an account to the running hub; returns the full address. The
        accounts are in a file the hub reads again on SIGHUP: the account
        can log in and get mail once the hub has logged C{accounts
        reloaded}, with no restart. (A C{Mailhub(accounts_file=False)}
        restarts instead, on the same data folder and, unless another
        process took one meanwhile, the same ports.)

        @raise ValueError: at once, and nothing changed: the hub would
            refuse the account (L{twisted_mailhub.accounts.AccountBook.add}:
            a blank in the name, an empty password...).
        @raise TimeoutError: the hub did not say within C{timeout} s.
        """
        full = self._remember_account(f"{address}:{password}")
        if self.process is None:
            return full
        if not self.accounts_file:
            self.restart()
            return full
        done = self.log.count("accounts reloaded")
        self._write_accounts()
        os.kill(self.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log.count("accounts reloaded") <= done:
            if time.monotonic() >= deadline or self.process.poll() is not None:
                raise TimeoutError(f"mailhub did not reload its accounts within {timeout:g} s:\n{self.log[-4000:]}")
            time.sleep(0.01)
        return full


def parse_message(raw: bytes) -> email.message.EmailMessage:
    """
    C{raw} (CRLF line ends, as stored) parsed with C{email.policy.default},
    its lines ending in LF as Python text does. Parts nested deeper than
    the hub takes apart (100 levels) stay one opaque body, as the webmail
    shows them: the standard library's recursion would raise otherwise.
    """
    from twisted_mailhub.web.message import parse

    return parse(raw.replace(b"\r\n", b"\n"), email.policy.default)


def _matches(m: HubMessage, to: str | None, subject: str | re.Pattern | None) -> bool:
    if subject is not None:
        if isinstance(subject, re.Pattern):
            if not subject.search(m.subject):
                return False
        elif subject not in m.subject:
            return False
    if to is not None:
        want = to.lower()
        if "@" not in want:
            return m.account.lower().split("@")[0] == want
        if m.account.lower() == want:
            return True
        # The fields as sent (raw_items), not parsed: the standard
        # library's address parser raises IndexError on some a sender may
        # write (To: =?utf-8?B?<0xff>?=), which made wait_for_message fail
        # for every later message of the folder.
        wanted = {"to", "cc", "delivered-to", "x-original-to"}
        values = [str(v) for k, v in m.message.raw_items() if k.lower() in wanted]
        return want in (a.lower() for _n, a in email.utils.getaddresses(values))
    return True


_SPECIAL_USE = frozenset(["\\archive", "\\drafts", "\\junk", "\\sent", "\\trash", "\\all", "\\flagged"])


def _list_folders(client: imaplib.IMAP4, command: str = "LIST", selectable_only: bool = True) -> list[tuple[str, frozenset]]:
    """
    (name, lowercased flags) of every folder C{LIST "" *} names (every
    subscribed name for C{command="LSUB"}), those that are C{\\Noselect}
    left out unless C{selectable_only} is false.
    """
    typ, data = client.lsub() if command == "LSUB" else client.list()
    found = []
    for line in data:
        if isinstance(line, tuple):  # a literal name: (head, name)
            head, name_bytes = line
            m = _LIST_LINE.match(head + b"x")
            flags = m.group("flags") if m else b""
            name = name_bytes.decode("utf-8", "replace")
        else:
            m = _LIST_LINE.match(line or b"")
            if m is None:
                continue
            flags = m.group("flags")
            name = m.group("name").decode("utf-8", "replace")
            if name.startswith('"'):
                name = re.sub(r"\\(.)", r"\1", name[1:-1])
        flag_set = frozenset(flags.decode("ascii", "replace").lower().split())
        if not selectable_only or "\\noselect" not in flag_set:
            found.append((name, flag_set))
    return found


def _ftp_names_codec(name: str) -> codecs.CodecInfo | None:
    """
    The codec L{FTP_NAMES} names: UTF-8 whose undecodable octets are lone
    surrogates and back (C{surrogateescape}, PEP 383) whatever C{errors}
    ftplib asks for. ftplib takes only an encoding (its C{makefile} and
    C{encode} calls use strict errors), so this is how it gets one.
    """
    if name != FTP_NAMES:
        return None

    def encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
        return codecs.utf_8_encode(text, "surrogateescape")

    def decode(data: bytes, errors: str = "strict") -> tuple[str, int]:
        return codecs.utf_8_decode(data, "surrogateescape", True)

    class IncrementalEncoder(codecs.IncrementalEncoder):
        def encode(self, text: str, final: bool = False) -> bytes:
            return codecs.utf_8_encode(text, "surrogateescape")[0]

    class IncrementalDecoder(codecs.BufferedIncrementalDecoder):
        def _buffer_decode(self, data: bytes, errors: str, final: bool) -> tuple[str, int]:
            return codecs.utf_8_decode(data, "surrogateescape", final)

    return codecs.CodecInfo(encode, decode, incrementalencoder=IncrementalEncoder, incrementaldecoder=IncrementalDecoder, name=FTP_NAMES)


#: The encoding of the kit's FTP clients (L{Mailhub.ftp}).
FTP_NAMES = "mailhub_ftp_names"
codecs.register(_ftp_names_codec)


def _walk(client: ftplib.FTP, directory: str):
    """(path, "file" | "dir") below C{directory}, parents before children."""
    for name, facts in sorted(client.mlsd(f"/{directory}", facts=["type"])):
        kind = facts.get("type", "").lower()
        if kind in ("cdir", "pdir") or name in (".", ".."):
            continue
        path = f"{directory}/{name}" if directory else name
        if kind == "dir":
            yield path, "dir"
            yield from _walk(client, path)
        else:
            yield path, "file"


def _logout(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        client.shutdown()


def _quit(client: ftplib.FTP) -> None:
    try:
        client.quit()
    except (ftplib.Error, OSError, EOFError):
        client.close()
