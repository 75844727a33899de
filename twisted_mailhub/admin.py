# -*- test-case-name: tests.test_admin -*-
"""
C{mailhub-admin}: the hub's administration from the command line.

  - C{user key ADDRESS KEYFILE}: authorize an OpenSSH public key for the
    account's SFTP logins (C{DATA/ssh/authorized_keys/<address>}).
  - C{user add|remove|passwd|list}: edit an accounts file (the one given to
    the hub with C{--auth file:PATH}); passwords are stored as scrypt hashes
    unless C{--plain}; the file is rewritten atomically (a temporary file
    in the same folder, fsynced, renamed) with mode 0600 and the old file's
    owner, then a running hub is told to read it again (through its
    control socket: C{--data DIR}'s, else C{control.sock} beside the
    accounts file, else in C{./mailhub-data}; else SIGHUP to the pid in its
    pidfile), so the change works at once without a restart. C{user key}
    takes only a name that is an account (asked of the running hub, else
    of the accounts file or table).
  - C{reload}, C{status} C{[--data DIR]}: ask the running hub through its
    control socket C{DATA/control.sock} (L{twisted_mailhub.control}).
  - C{queue list|flush|remove ID}: the outbound queue (the same command as
    C{mailhub-queue} and C{python -m twisted_mailhub.queue}).
  - C{dkim show|make}: the DKIM keys and the DNS records to publish (see
    L{twisted_mailhub.mailauth}).
  - C{check [--no-dns] [HUB OPTIONS]}: what a start with those options
    would refuse: options, accounts files, the TLS certificate, listeners
    that cannot bind; and the local domains' DNS records (MX, SPF, DKIM
    keys, DMARC; L{twisted_mailhub.dnscheck}) with C{--dns-server} when
    given; one line each, exit status 1 if any.

Exit status: 0 done, 1 failed (the reason on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import signal
import sys
import tempfile

from twisted_mailhub.accounts import SCRYPT_PREFIX, AccountBook, AccountsFileError, hash_password, password_text_problem

DEFAULT_ACCOUNTS = "mailhub-data/accounts"


class AdminError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


# -- the accounts file ---------------------------------------------------------


def read_lines(path: str) -> list[str]:
    """
    The accounts file's lines (without line ends); C{[]} if it does not exist
    yet. It is checked as the hub would read it.
    """
    if not os.path.exists(path):
        return []
    AccountBook(["localhost"]).load_file(path)  # AccountsFileError: file, line
    with open(path, encoding="utf-8-sig") as f:  # (as the hub reads it: a BOM is no address)
        return f.read().splitlines()


def must_exist(path: str) -> None:
    """
    Raise L{AdminError} when the accounts file C{path} does not exist (for
    list, passwd and remove: a mistyped path must not read as a file
    without accounts; add creates the file).
    """
    if not os.path.exists(path):
        raise AdminError(f"there is no accounts file {path} (give --accounts FILE or set MAILHUB_ACCOUNTS; user add creates it)")


def _accounts_folder(path: str) -> str:
    """
    The folder of the accounts file C{path}, made (mode 0700, as the hub
    makes its data folder: the file holds password hashes) when missing.

    @raise AdminError: a part of that folder's path is a file.
    """
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AdminError(f"cannot keep the accounts file {path}: {_not_a_folder(directory)} is not a folder") from None
    return directory


def _not_a_folder(directory: str) -> str:
    """The part of C{directory}'s path that exists and is not a folder (C{directory} if none is)."""
    part = directory
    while part != os.path.dirname(part):
        if os.path.lexists(part) and not os.path.isdir(part):
            return part
        part = os.path.dirname(part)
    return directory



def write_lines(path: str, lines: list[str]) -> None:
    """
    Replace the accounts file atomically: mode 0600, the old file's owner
    and group (a hub that runs as another user must still read it). A
    symbolic link is followed: the file it names is replaced, the link
    stays (replacing the link made a copy the hub, reading the link's
    target by another name, never saw).
    """
    path = os.path.realpath(path)
    directory = _accounts_folder(path)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".accounts-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            if old is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        # Never put a file in place that the hub would refuse to read: one
        # bad line stops its next start and every reload.
        try:
            AccountBook(["localhost"]).load_file(tmp)
        except AccountsFileError as e:
            raise AdminError(f"{str(e).replace(tmp, path, 1)}; nothing changed") from None
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _address_of(line: str) -> str | None:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.partition(":")[0].strip()


def _same(book: AccountBook, a: str, b: str) -> bool:
    return AccountBook._key(*book.split(a)) == AccountBook._key(*book.split(b))


def _index(lines: list[str], address: str, default_domain: str) -> int | None:
    book = AccountBook([default_domain])
    for i, line in enumerate(lines):
        name = _address_of(line)
        # "zed;quota=5M" is the account zed (its attributes after the ';',
        # as the hub reads them): passwd and remove did not find it, and
        # add made it twice.
        if name is not None and _same(book, name.partition(";")[0].strip(), address.partition(";")[0].strip()):
            return i
    return None


def _check_address(address: str) -> None:
    """
    The hub's own rule for an account's name (L{accounts.check_account_name}):
    what C{user add} writes, the hub reads. Blanks around it are refused
    too, as a name typed with them is most likely not what was meant.
    """
    from twisted_mailhub.accounts import check_account_name, shown_name

    if address != address.strip():
        raise AdminError(f"not a usable mailbox name: {shown_name(address)}: a blank before or after the name")
    try:
        check_account_name(address, "localhost")
    except ValueError as e:
        raise AdminError(str(e)) from None


def _password(args) -> str:
    """
    The new password: one line of stdin with C{--password-stdin}, else asked
    twice on the terminal without echo.
    """
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise AdminError("no terminal to ask for the password: give it on stdin with --password-stdin")
        password = getpass.getpass(f"password for {args.address}: ")
        if getpass.getpass("again: ") != password:
            raise AdminError("the two passwords differ; nothing changed")
    if not password:
        raise AdminError("empty password; nothing changed")
    if any(c in password for c in "\r\n\0"):
        raise AdminError("a password cannot hold a line break or NUL")
    problem = password_text_problem(password)
    if problem is not None:
        raise AdminError(f"{problem}; nothing changed")
    return password


def _entry(args, password: str, address: str | None = None) -> str:
    address = address or args.address
    if args.plain:
        if password.startswith(SCRYPT_PREFIX):
            raise AdminError(f"a plain password cannot start with {SCRYPT_PREFIX}")
        return f"{address}:{password}"
    return f"{address}:{hash_password(password)}"


@contextlib.contextmanager
def accounts_locked(path: str):
    """
    Hold an exclusive C{flock(2)} on the folder of the accounts file
    C{path} (the file a symbolic link names) while the file is read,
    changed and replaced: two C{mailhub-admin} runs at once (a class added
    with C{xargs -P}, two admins) each read the file before the other's
    change was in place, and the last to write dropped the other's
    account, though both said it was added. The folder, not the file: each
    change replaces the file, and a lock file would be one more file there.
    """
    real = os.path.realpath(path)
    directory = _accounts_folder(real)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (and the lock with it)


def user_add(args) -> str:
    _check_address(args.address)
    if _index(read_lines(args.accounts), args.address, args.domain) is not None:
        raise AdminError(f"{args.address} already has an account in {args.accounts} (change its password with: user passwd)")
    quota = getattr(args, "quota", None)
    if quota is not None:
        # The hub's own reader (quota.parse_size): a quota it would refuse
        # made every later start, reload and mailhub-admin command fail on
        # that line ("frank;quota=abc").
        from twisted_mailhub.quota import parse_size

        try:
            parse_size(quota)
        except ValueError as e:
            raise AdminError(f"--quota {e}; nothing changed") from None
    entry = _entry(args, _password(args), f"{args.address};quota={quota.strip()}" if quota else None)
    with accounts_locked(args.accounts):
        # (read again under the lock: another run may have changed it while the password was asked and hashed)
        lines = read_lines(args.accounts)
        if _index(lines, args.address, args.domain) is not None:
            raise AdminError(f"{args.address} already has an account in {args.accounts} (change its password with: user passwd)")
        lines.append(entry)
        write_lines(args.accounts, lines)
    return f"added {args.address} to {args.accounts}"


def _account_line(args) -> tuple[list[str], int]:
    """
    The lines of the accounts file C{args.accounts} and the index of
    C{args.address}'s; L{AdminError} when the file or the account is not
    there.
    """
    must_exist(args.accounts)
    lines = read_lines(args.accounts)
    i = _index(lines, args.address, args.domain)
    if i is None:
        raise AdminError(f"no account {args.address} in {args.accounts}")
    return lines, i


def user_passwd(args) -> str:
    lines, i = _account_line(args)
    password = _password(args)
    with accounts_locked(args.accounts):
        lines, i = _account_line(args)
        lines[i] = _entry(args, password, _address_of(lines[i]))
        write_lines(args.accounts, lines)
    return f"changed the password of {args.address} in {args.accounts}"


def user_remove(args) -> str:
    with accounts_locked(args.accounts):
        lines, i = _account_line(args)
        del lines[i]
        write_lines(args.accounts, lines)
    return f"removed {args.address} from {args.accounts} (its mail stays in the data folder)"


def user_key(args) -> str:
    """
    Authorize an OpenSSH public key for SFTP logins of an account: the
    line is appended to C{DATA/ssh/authorized_keys/<address>} (read at
    each login, so no reload is needed).
    """
    from twisted_mailhub.sftp.keys import key_line_problem, parse_authorized_key

    address = args.address if "@" in args.address else f"{args.address}@{args.domain}"
    _check_address(address)
    address = _account_for_key(args, address)
    try:
        with open(args.keyfile, "rb") as f:
            lines = [line.strip() for line in f.read(64 * 1024).splitlines() if line.strip() and not line.startswith(b"#")]
    except OSError as e:
        raise AdminError(f"{args.keyfile}: {e.strerror or e}")
    problem = key_line_problem(lines[0]) if len(lines) == 1 else None
    if problem is not None:
        raise AdminError(f"{args.keyfile}: {problem}, so that key would log in nobody: give the key line without it; nothing changed")
    if len(lines) != 1 or parse_authorized_key(lines[0]) is None:
        raise AdminError(f"{args.keyfile}: not one OpenSSH public key line (the .pub file ssh-keygen wrote)")
    folder = os.path.join(args.data, "ssh", "authorized_keys")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, address.lower())
    existing = b""
    if os.path.exists(path):
        with open(path, "rb") as f:
            existing = f.read()
    if lines[0] in existing.splitlines():
        return f"that key already logs in as {address} ({path})"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (b"" if not existing or existing.endswith(b"\n") else b"\n") + lines[0] + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"the key in {args.keyfile} now logs in as {address} over SFTP ({path})"


def _account_for_key(args, address: str) -> str:
    """
    The account C{user key} authorizes a key for, as the hub names it:
    asked of the running hub at C{--data} (it knows every account:
    C{--user}, files, tables), else looked up in the accounts table
    (C{--auth postgresql:DSN}) or file (C{--accounts}, C{$MAILHUB_ACCOUNTS}
    or C{DATA/accounts}). A key for a name that is no account was kept
    and never used: nobody logs in as it.

    @raise AdminError: no such account, or nothing to tell it by.
    """
    from twisted_mailhub.control import ask, socket_path

    name = args.address
    try:
        answer = ask(args.data, f"account {name}")
    except (OSError, ValueError):
        answer = None
    if answer is not None and answer.get("ok"):
        if answer.get("account"):
            return answer["account"]
        if answer.get("sure", True):
            raise AdminError(f"no account {name} on the hub at {args.data} (mailhub-admin user list; add one with: user add)")
    if getattr(args, "auth", None):
        from twisted_mailhub.cluster.admin import TableError, accounts_in_table

        try:
            known = accounts_in_table(args.auth)
        except TableError as e:
            raise AdminError(str(e)) from None
        for known_address in known:
            if known_address.lower() == address.lower():
                return known_address
        raise AdminError(f"no account {address} in the user_account table")
    accounts = args.accounts or os.path.join(args.data, "accounts")
    if os.path.exists(accounts):
        book = AccountBook([args.domain])
        book.load_file(accounts)
        found = book.find(address)
        if found is None:
            raise AdminError(f"no account {address} in {accounts} (add it with: user add)")
        return found.address
    raise AdminError(
        f"cannot tell whether {address} is an account: no hub answers at {socket_path(args.data)} and there is no "
        f"accounts file {accounts}; start the hub (--data {args.data}), or give --accounts FILE or --auth postgresql:DSN"
    )


def user_list(args) -> str:
    must_exist(args.accounts)
    book = AccountBook([args.domain])
    book.load_file(args.accounts)
    rows = []
    for account in sorted(book, key=lambda a: (a.domain, a.localpart.lower())):
        kind = "scrypt" if account.password_hash else "plain"
        rows.append(f"{account.address}\t{kind}")
    return "\n".join(rows) if rows else f"no accounts in {args.accounts}"


# -- telling the hub -------------------------------------------------------------


def tell_hub(pidfile: str, control: str | list[str] | None = None) -> str:
    """
    Tell a running hub to read its accounts files and certificate again:
    through the first of its control sockets C{control} where one answers
    (L{twisted_mailhub.control}: the hub says what it reloaded), else by
    SIGHUP to the pid in C{pidfile}. Says what happened, in one line.
    """
    sockets = [control] if isinstance(control, str) else list(control or [])
    for path in sockets:
        from twisted_mailhub.control import ask

        try:
            answer = ask(path, "reload")
        except (OSError, ValueError) as e:
            answer = None
            print(f"mailhub-admin: {path}: {getattr(e, 'strerror', None) or e}; trying the pidfile", file=sys.stderr)
        if answer is not None and answer.get("ok"):
            return "the hub (control socket) says: " + "; ".join(answer.get("said") or ["nothing to reload"])
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except FileNotFoundError:
        asked = f"no hub answers at {' or '.join(sockets)} and " if sockets else ""
        return (
            f"no running hub found ({asked}{pidfile} does not exist): the change takes effect when the hub starts; "
            "a hub that runs with another data folder is told with: mailhub-admin reload --data DIR"
        )
    except (OSError, ValueError):
        return f"{pidfile} holds no process id: reload the hub yourself (kill -HUP, or systemctl reload mailhub)"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"no hub runs as pid {pid} ({pidfile} is stale): the change takes effect when the hub starts"
    except PermissionError:
        return f"not allowed to signal pid {pid}: reload the hub yourself (kill -HUP {pid}, or systemctl reload mailhub)"
    return f"told the hub (pid {pid}) to reload its accounts"


# -- check ---------------------------------------------------------------------------


def check(hub_args: list[str], dns: bool = True) -> list[str]:
    """
    What a C{twistd mailhub} start with C{hub_args} would refuse, one line
    each, and (C{dns}) what the local domains' DNS records would make fail
    (L{twisted_mailhub.dnscheck}); C{[]} when all is well.
    """
    from twisted.python import usage

    from twisted_mailhub import tap
    from twisted_mailhub.hub import cannot_listen_line, with_backlog

    problems: list[str] = []
    options = tap.Options()
    try:
        options.parseOptions(hub_args)
    except usage.UsageError as e:
        return [f"options: {e}"]
    accounts = None
    try:
        accounts, extra = tap._accounts_and_checkers(options)
    except usage.UsageError as e:
        # It names its option already (--user: ..., --auth memory: ...).
        problems.append(f"accounts: {e}")
    except ValueError as e:
        problems.append(f"accounts: --auth: {e}")
    else:
        if not len(accounts) and not extra:
            problems.append("accounts: none (nobody can log in; mail to local addresses is refused): add one with mailhub-admin user add")
    if options["tls-cert"]:
        from twisted_mailhub.tls import server_context

        try:
            server_context(os.path.abspath(options["data"]), "localhost", options["tls-cert"], options["tls-key"]).getContext()
        except Exception as e:  # unreadable file, bad PEM, key not matching
            from twisted_mailhub.tls import unusable_reason

            problems.append(f"TLS: --tls-cert {options['tls-cert']}: {unusable_reason(e)}")
    if accounts is not None:
        from twisted_mailhub.optionvalues import unnamed_accounts

        # --catch-all, --postmaster naming no account: the start stops there
        problems.extend(f"options: {line}" for line in unnamed_accounts(options, accounts))
    problems.extend(_unbindable(options, cannot_listen_line, with_backlog))
    from twisted_mailhub.ports import options_warnings

    # fixed ports inside the kernel's ephemeral range (the hub warns too)
    problems.extend("ports: " + line.removeprefix("mailhub: warning: ") for line in options_warnings(options))
    if dns:
        # The local domains' MX, SPF, DKIM and DMARC records (dnscheck.py),
        # asked of --dns-server when given, as the hub itself would.
        from twisted_mailhub.dnscheck import check_domains
        from twisted_mailhub.hub import default_hostname

        domains = list(options.get("domains") or []) + (list(accounts.domains) if accounts is not None else [])
        problems.extend(check_domains(domains, options.get("dns-server"), options.get("hostname") or default_hostname(), os.path.abspath(options["data"])))
    return problems


def _why(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or error.__class__.__name__


def _unbindable(options, cannot_listen_line, with_backlog) -> list[str]:
    """Try every TCP listener's address (bind, then close at once)."""
    import socket

    from twisted_mailhub import tap
    from twisted_mailhub.ports import tcp_listen_address

    lines = []
    # A hub already running from this data folder holds its own ports: a
    # check of the live configuration (DNS, accounts, certificate) reported
    # every one of them as taken "by another program".
    from twisted_mailhub.control import ask

    try:
        running = (ask(os.path.abspath(options["data"]), "status", timeout=5) or {}).get("listeners") or {}
    except (OSError, ValueError):
        running = {}
    for component in tap._components():
        for spec in getattr(component, "listeners", []):
            if options.get(f"no-{spec.name}"):
                continue
            description = options[spec.name]
            kind, _, rest = description.partition(":")
            if kind == "unix":
                # The socket's folder: a missing one stops the start.
                folder = os.path.dirname(os.path.abspath(rest.split(":")[0])) if rest else ""
                if folder and not os.path.isdir(folder):
                    lines.append("listeners: " + cannot_listen_line(spec.name, description, FileNotFoundError(2, f"no folder {folder}")).removeprefix("mailhub: "))
                continue
            # Read as the hub reads it (tcp6:25:interface=\\:\\:1, port=25).
            address = tcp_listen_address(description)
            if address is None or address[0] == "ssl":
                continue
            _, host, port = address
            if port and running.get(spec.name) == port:
                continue  # the running hub of this data folder listens there
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except (OSError, ValueError) as e:
                lines.append("listeners: " + cannot_listen_line(spec.name, description, e).removeprefix("mailhub: "))
            finally:
                s.close()
    return lines


# -- the command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailhub-admin", description="Administer a twisted-mailhub: accounts, the queue, a configuration check.")
    commands = parser.add_subparsers(dest="command", required=True)

    user = commands.add_parser("user", help="add, remove, change or list accounts in an accounts file")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    for name, helptext in (("add", "add an account"), ("passwd", "change an account's password"), ("remove", "remove an account (its mail stays)"), ("list", "list the accounts")):
        p = user_commands.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("address", help="the account's address (a bare name gets --domain)")
        p.add_argument("--accounts", default=os.environ.get("MAILHUB_ACCOUNTS", DEFAULT_ACCOUNTS), help=f"the accounts file the hub reads with --auth file:PATH (default: $MAILHUB_ACCOUNTS or {DEFAULT_ACCOUNTS})")
        p.add_argument("--domain", default="localhost", help="the hub's default domain, for bare names (default: localhost)")
        if name in ("add", "passwd"):
            p.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin (for scripts) instead of asking twice")
            p.add_argument("--plain", action="store_true", help="store the password in plain text (needed for APOP and CRAM-MD5) instead of an scrypt hash")
        # accounts in PostgreSQL instead of a file (twisted_mailhub.cluster.admin)
        p.add_argument("--auth", default=None, help="postgresql:DSN: the accounts in the user_account table of that database (as the hub's --auth postgresql:DSN) instead of a file")
        if name == "add":
            p.add_argument("--quota", default=None, help="the account's own storage quota: octets or a size in K, M, G or T (1K = 1024; e.g. 500M, 2G)")
        if name != "list":
            p.add_argument("--data", default=None, help="the running hub's data folder: told to reload through DATA/control.sock (default: the accounts file's folder, then ./mailhub-data)")
            p.add_argument("--control-socket", default=None, help="the running hub's control socket, told to reload (default: control.sock beside the accounts file, i.e. in DATA)")
            p.add_argument("--pidfile", default="twistd.pid", help="without a control socket: the running hub's pidfile, told to reload by SIGHUP (default: ./twistd.pid)")
            p.add_argument("--no-reload", action="store_true", help="do not signal a running hub")

    key = user_commands.add_parser("key", help="authorize an OpenSSH public key for an account's SFTP logins")
    key.add_argument("address", help="the account's address (a bare name gets --domain)")
    key.add_argument("keyfile", help="the public key file (e.g. ~/.ssh/id_ed25519.pub)")
    key.add_argument("--data", default="mailhub-data", help="the hub's data folder (default: ./mailhub-data)")
    key.add_argument("--domain", default="localhost", help="the hub's default domain, for bare names (default: localhost)")
    key.add_argument("--accounts", default=os.environ.get("MAILHUB_ACCOUNTS"), help="when the hub does not run: the accounts file the name must be in (default: $MAILHUB_ACCOUNTS or DATA/accounts)")
    key.add_argument("--auth", default=None, help="when the hub does not run: postgresql:DSN, the accounts table the name must be in")

    queue = commands.add_parser("queue", help="the outbound queue: list, flush, remove ID (as mailhub-queue)", add_help=False)
    queue.add_argument("queue_args", nargs=argparse.REMAINDER)

    commands.add_parser("db", help="the PostgreSQL tables: upgrade (create or migrate) or version, with --dsn DSN", add_help=False)
    commands.add_parser("migrate", help="copy a data folder into PostgreSQL: --from DATA --to postgresql:DSN (UIDs, flags, UIDLs kept)", add_help=False)
    commands.add_parser("reload", help="tell the hub at --data DIR to read its accounts and certificate again (control socket)", add_help=False)
    commands.add_parser("status", help="the hub at --data DIR: pid, uptime, listeners, connections (control socket)", add_help=False)
    commands.add_parser("dkim", help="DKIM keys and the DNS TXT records to publish: show, or make (missing keys first)", add_help=False)
    check_command = commands.add_parser("check", help="check hub options, accounts, certificate and ports without starting", add_help=False)
    check_command.add_argument("hub_args", nargs=argparse.REMAINDER, help="the options given to twistd mailhub")
    return parser


def main(argv: list[str] | None = None) -> int:
    """
    C{mailhub-admin COMMAND ...}; returns the exit status. An error no
    command words itself (a file it cannot read or write, Ctrl-C) is one
    line, never a traceback (L{run_command_line_tool}).
    """
    from twisted_mailhub.errorwords import run_command_line_tool

    return run_command_line_tool("mailhub-admin", _main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["queue"]:
        from twisted_mailhub.queue.admin import main as queue_main

        return queue_main(argv[1:], prog="mailhub-admin queue")
    if argv[:1] in (["reload"], ["status"]):
        return hub_command(argv[0], argv[1:])
    if argv[:1] == ["dkim"]:
        from twisted_mailhub.mailauth import main as dkim_main

        return dkim_main(argv[1:])
    if argv[:1] == ["check"]:
        if argv[1:2] in (["-h"], ["--help"]):
            print(
                "usage: mailhub-admin check [--no-dns] [twistd mailhub options...]\n\n"
                "Prints what a start with these options would refuse (options, accounts, TLS certificate, ports) "
                "and what the local domains' DNS records would make fail (MX, SPF, the DKIM keys in DATA/dkim, DMARC; "
                "asked of --dns-server HOST:PORT when given), one line each; exit status 1 if anything. "
                "--no-dns leaves out the DNS questions."
            )
            return 0
        rest = [a for a in argv[1:] if a != "--no-dns"]
        problems = check(rest, dns=len(rest) == len(argv) - 1)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print("ok: the hub would start with these options")
        return 1 if problems else 0
    if argv[:1] == ["db"]:
        from twisted_mailhub.cluster.admin import db_main

        return db_main(argv[1:])
    if argv[:1] == ["migrate"]:
        from twisted_mailhub.cluster.migrate import main as migrate_main

        return migrate_main(argv[1:])
    args = _parser().parse_args(argv)
    if getattr(args, "auth", None) and args.user_command != "key":
        from twisted_mailhub.cluster.admin import TableError, user_in_table

        try:
            if args.user_command == "add":
                _check_address(args.address)
            print(user_in_table(args, lambda a, address: _entry(a, _password(a), address)))
        except (AdminError, TableError) as e:
            print(f"mailhub-admin: {e}", file=sys.stderr)
            return 1
        return 0
    actions = {"add": user_add, "passwd": user_passwd, "remove": user_remove, "list": user_list, "key": user_key}
    try:
        print(actions[args.user_command](args))
    except AdminError as e:
        print(f"mailhub-admin: {e}", file=sys.stderr)
        return 1
    except AccountsFileError as e:
        print(f"mailhub-admin: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailhub-admin: {getattr(e, 'filename', None) or args.accounts}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.user_command not in ("list", "key") and not args.no_reload:
        print(tell_hub(args.pidfile, control_sockets(args)))
    return 0


def control_sockets(args) -> list[str]:
    """
    Where to look for the running hub to tell of a changed accounts file:
    C{--control-socket}, or C{--data}'s; else beside the accounts file
    (the hub's C{DATA/accounts}), then C{./mailhub-data} (the hub's
    default C{--data}). An accounts file kept outside the data folder
    (C{/etc/mailhub/accounts}) reached no hub and said "no running hub
    found" though one ran.
    """
    from twisted_mailhub.control import socket_path

    if args.control_socket:
        return [args.control_socket]
    if args.data:
        return [socket_path(args.data)]
    found = [os.path.join(os.path.dirname(os.path.abspath(args.accounts)), "control.sock"), os.path.abspath(socket_path("mailhub-data"))]
    return list(dict.fromkeys(found))


def hub_command(command: str, argv: list[str]) -> int:
    """C{mailhub-admin reload|status [--data DIR]}: through the control socket."""
    from twisted_mailhub.control import ask, socket_path

    parser = argparse.ArgumentParser(prog=f"mailhub-admin {command}", description=f"{command} a running hub through DATA/control.sock")
    parser.add_argument("--data", default="mailhub-data", help="the hub's data folder (default: ./mailhub-data)")
    args = parser.parse_args(argv)
    path = socket_path(args.data)
    try:
        answer = ask(path, command)
    except (OSError, ValueError) as e:
        print(f"mailhub-admin: {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 1
    if answer is None:
        print(f"mailhub-admin: no hub answers at {path} (is it running with --data {args.data}?)", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"mailhub-admin: {answer.get('error')}", file=sys.stderr)
        return 1
    if command == "reload":
        said = answer.get("said") or ["nothing to reload"]
        print("\n".join(said))
        # A reload that kept the old accounts or certificate (or a worker
        # that did not answer) is a failure for the script that asked.
        return 1 if any("not reloaded" in line or "did not answer" in line for line in said) else 0
    else:
        accounts, open_ = answer["accounts"], answer["connections_open"]
        print(
            f"pid {answer['pid']}, up {answer['uptime']:.0f} s, {accounts} account{'s' if accounts != 1 else ''}, "
            f"{open_} connection{'s' if open_ != 1 else ''} open, {answer['queue']} queued"
        )
        for name, port in answer["listeners"].items():
            # a UNIX-socket listener is shown by its path, as --NAME takes it
            print(f"  {name}\t{port if isinstance(port, int) else 'unix:' + str(port)}")
        for worker in answer.get("workers") or []:  # --workers
            print(f"  worker {worker['index']}: pid {worker['pid']}, up {worker['uptime']:.0f} s, {worker['connections_open']} connections open, {worker['queue']} queued")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
