# -*- test-case-name: tests.test_tap -*-
"""
The command line of C{twistd mailhub} and C{makeService}: build the store,
the accounts and the portal, then let each component add its listeners.
"""

from __future__ import annotations

import os
import sys

from twisted.cred import strcred
from twisted.python import usage

from twisted_mailhub.accounts import AccountsFileError
from twisted_mailhub.clientkey import prefix_length
from twisted_mailhub.hub import Hub, HubService, ListenerSpec, default_hostname

# Component modules that are not plugins yet (a helper's listener before
# it has its plugin entry); prefer a plugin (twisted_mailhub.components),
# which needs no edit here.
COMPONENTS: list[str] = []


def _components():
    """
    The hub's components in start order: every L{IHubComponent} plugin,
    then any module still listed in L{COMPONENTS}.
    """
    from twisted_mailhub.components import ModuleComponent, hub_components

    found = hub_components()
    known = {getattr(c, "module_name", None) for c in found}
    for name in COMPONENTS:
        if name not in known:
            found.append(ModuleComponent(name.rsplit(".", 1)[-1], name))
    return found


def _component_options():
    parameters, flags = [], []
    for module in _components():
        for spec in getattr(module, "listeners", []):
            # No default here: postOptions fills it in, moved by --port-base
            # unless the option was given.
            parameters.append([spec.name, None, None, f"{spec.help} [default: {spec.default}]"])
            flags.append([f"no-{spec.name}", None, f"Do not listen for {spec.name}."])
        parameters.extend(getattr(module, "option_parameters", []))
        flags.extend(getattr(module, "option_flags", []))
    return parameters, flags


_PARAMETERS, _FLAGS = _component_options()


def _number_rows(rows: list) -> list:
    """
    C{rows} (C{optParameters}) with every C{int} coerce replaced by
    L{optionvalues.whole_number} and every C{float} one by
    L{optionvalues.seconds} (they are all times) for that option, so every
    component's number options say the same clear thing about bad input.
    """
    from twisted_mailhub.optionvalues import seconds, whole_number

    kinds = {int: whole_number, float: seconds}
    return [row[:4] + [kinds[row[4]](row[0])] + row[5:] if len(row) > 4 and row[4] in kinds else row for row in rows]


def _size_option(name: str):
    from twisted_mailhub.optionvalues import size

    return size(name)


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "One process that is a small mail system and file server: SMTP, "
        "submission, POP3, IMAP4 and FTP for the same accounts. Listeners "
        "take strports endpoint descriptions (tcp:8025, "
        "tcp:25:interface=127.0.0.1); implicit-TLS listeners take a plain "
        "tcp: description and the hub adds its certificate."
    )

    optParameters = [
        ["data", None, "mailhub-data", "State directory: mail store, FTP files, TLS certificate."],
        ["hostname", None, None, "Name in greetings and Received: headers (default: this machine's FQDN)."],
        ["store", None, "maildir", "Mail store backend: a store plugin's name (maildir, memory, ...) or postgresql:DSN (a libpq connection string)."],
        ["tls-cert", None, None, "PEM certificate (and chain) for STARTTLS/STLS and TLS listeners (default: self-signed, made in DATA/tls on first start)."],
        ["tls-key", None, None, "PEM private key for --tls-cert (default: in the --tls-cert file)."],
        ["max-message-size", None, 25 * 1024 * 1024, "Largest message accepted: octets, or a size such as 25M (1K = 1024; SMTP SIZE).", _size_option("max-message-size")],
        ["trusted-networks", None, "127.0.0.0/8,::1/128", "Comma-separated CIDRs from which plaintext logins are allowed without TLS (never grants relay)."],
        ["proxy-from", None, None, "Comma-separated CIDRs of the load balancers a haproxy: listener takes a PROXY header from (default: loopback and private networks); any other peer is closed."],
        ["max-connections", None, 2000, "Most client connections open at once, every listener together (0: no limit).", int],
        ["port-base", None, None, "Move every listener's default port at once: BASE + the protocol's standard port (SMTP BASE+25, submission BASE+587, POP3 BASE+110, IMAP BASE+143, FTP BASE+21, ...); for several hubs on one machine.", int],
        ["max-connections-per-ip", None, 100, "Most client connections open at once from one address, every listener together (0: no limit).", int],
        ["slow-transfer-window", None, 60, "Seconds a peer may take what the hub sends it at under 4 KiB/s (a download read a few octets a second) before its connection is closed.", float],
        ["ipv6-prefix", None, 64, "Bits of an IPv6 address that name one client for per-address limits, the login throttle and the console (64: a host's /64; 128: each address).", prefix_length],
        ["workers", None, "1", "Hub processes sharing the listeners and the store: a number, or auto (one per core); see the README's --workers section."],
    ] + _PARAMETERS
    optParameters = _number_rows(optParameters)

    optFlags = [
        ["transcript", None, "Log every session as C:/S: lines with a connection id, secrets masked."],
        ["no-pin-workers", None, "Under --workers N with N no more than the cores: let the system move the workers between the cores (default: worker i keeps core i; see the README's --workers section)."],
    ] + _FLAGS

    supportedInterfaces = None

    def __init__(self):
        usage.Options.__init__(self)
        self["domains"] = []
        self["users"] = []
        self["filters"] = []

    def parseOptions(self, options=None):
        # Kept for --workers: each worker process is given the same options.
        self.argv = list(sys.argv[1:] if options is None else options)
        usage.Options.parseOptions(self, options)

    def opt_domain(self, domain):
        """
        A local domain; repeatable. The first is the default domain, given to
        bare login names (alice = alice@DEFAULT). Default: localhost.
        """
        from twisted_mailhub.accounts import usable_domain
        from twisted_mailhub.lines import quote

        domain = domain.strip().lower().rstrip(".")
        if not usable_domain(domain):
            # "" or "a b" became a local domain; accounts of it could never log in.
            raise usage.UsageError(f"--domain wants a domain name such as example.org, not {quote(domain) or 'nothing'}")
        self["domains"].append(domain)

    def opt_user(self, spec):
        """
        An account, ADDRESS:PASSWORD; repeatable. A bare name gets the
        default domain.
        """
        name, sep, password = spec.partition(":")
        if not sep or not name:
            from twisted_mailhub.optionvalues import shown

            raise usage.UsageError(f"--user wants ADDRESS:PASSWORD, not {shown(spec)}")
        self["users"].append((name, password))

    def opt_auth(self, description):
        kind, sep, path = description.partition(":")
        if kind == "file" and sep and path:
            # Read by the hub itself (with line numbers in its errors, and
            # again on SIGHUP); strcred would print a warning of its own.
            from twisted.cred.checkers import FilePasswordDB

            self.addChecker(FilePasswordDB(path))
            return
        strcred.AuthOptionMixin.opt_auth(self, description)

    opt_auth.__doc__ = strcred.AuthOptionMixin.opt_auth.__doc__

    def opt_filter(self, name):
        """
        Turn on a delivery-filter plugin by name; repeatable, run in order.
        """
        self["filters"].append(name)

    def postOptions(self):
        if not self["domains"]:
            self["domains"] = ["localhost"]
        self._default_endpoints()
        from twisted_mailhub.hub import TrustedNetworks

        try:
            TrustedNetworks(self["trusted-networks"])
        except ValueError as e:
            raise usage.UsageError(f"--trusted-networks: {e}")
        if self["proxy-from"] is not None:
            try:
                TrustedNetworks(self["proxy-from"])
            except ValueError as e:
                raise usage.UsageError(f"--proxy-from: {e}")
        from twisted_mailhub.workers import worker_count

        try:
            self["workers"] = worker_count(self["workers"])
        except ValueError as e:
            raise usage.UsageError(f"--workers {self['workers']}: {e}")
        from twisted_mailhub import optionvalues

        hostname = self["hostname"]
        if hostname is not None and (not hostname.strip() or any(c.isspace() or not c.isprintable() or c in "/\\<>" for c in hostname) or optionvalues.host_name(hostname)):
            # It is every greeting's first word: a CR LF in it wrote reply
            # lines of its own ("220 x" then "250 injected"); "a..b" or
            # "-x" is no name another server can greet or look up.
            raise usage.UsageError(f"--hostname wants a host name such as mail.example.org, not {optionvalues.shown(hostname)}")
        try:
            # A file there was a traceback of os.makedirs at start.
            optionvalues.data_folder(self["data"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self._check_listeners()
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        from twisted_mailhub.store import split_store_spec, store_factories

        store_name, store_argument = split_store_spec(self["store"])
        if store_name not in store_factories():
            raise usage.UsageError(
                f"--store {optionvalues.shown(store_name)}: not one of {', '.join(sorted(store_factories()))}"
            )
        if bool(store_argument) != bool(getattr(store_factories()[store_name], "takes_argument", False)):
            raise usage.UsageError(f"--store {store_name}: " + ("takes no ':' argument" if store_argument else "needs ':' and its argument, e.g. postgresql:host=127.0.0.1 dbname=mailhub"))
        from twisted_mailhub.filters import filter_plugins

        found = filter_plugins()
        for name in self["filters"]:
            if name not in found:
                raise usage.UsageError(f"--filter {optionvalues.shown(name)}: no such filter plugin (found: {', '.join(sorted(found)) or 'none'})")
        for component in _components():
            check = getattr(component, "check_options", None)
            if check is not None:
                check(self)


    def _check_listeners(self) -> None:
        """
        Every listener that is on is a description the hub can listen
        with (L{optionvalues.listener}): an unknown kind, a port past
        65535 or an C{ssl:} certificate that cannot be read stopped the
        start only after the other listeners were bound (or, for the
        certificate, with a traceback).
        """
        from twisted_mailhub.optionvalues import listener

        for component in _components():
            for spec in getattr(component, "listeners", []):
                if self.get(f"no-{spec.name}"):
                    continue
                try:
                    listener(self[spec.name])
                except ValueError as e:
                    raise usage.UsageError(f"--{spec.name} {e}") from None

    def _default_endpoints(self) -> None:
        """
        Each listener not given on the command line gets its default
        endpoint, moved by C{--port-base}.
        """
        from twisted_mailhub.hub import moved_endpoint

        # (--max-message-size 0, which silently meant the 25 MiB default,
        # is refused by its coerce, optionvalues.size: SMTP SIZE, RFC 1870,
        # has no way to say a smaller limit than one octet.)
        base = self["port-base"]
        if base is not None and not 0 <= base <= 65535:
            raise usage.UsageError("--port-base wants a number from 0 to 65535")
        for component in _components():
            for spec in getattr(component, "listeners", []):
                if self.get(spec.name):
                    continue
                try:
                    self[spec.name] = moved_endpoint(spec, base)
                except ValueError as e:
                    raise usage.UsageError(f"--port-base {base}: {e}")


def _add_list_options(cls) -> None:
    """
    Components' repeatable options: each C{option_lists} row C{[name, help]}
    becomes C{--name VALUE}, and every use appends to C{options[name]}.
    """

    def collector(name, doc):
        def collect(self, value):
            self.setdefault(name, []).append(value)

        collect.__doc__ = doc
        return collect

    for module in _components():
        for name, doc in getattr(module, "option_lists", []):
            setattr(cls, "opt_" + name.replace("-", "_"), collector(name, doc))


_add_list_options(Options)


def _accounts_and_checkers(options):
    """
    The account book from --domain/--user/--auth, and any --auth checkers
    that are not account lists (they still work for login).
    """
    from twisted.cred.checkers import FilePasswordDB, InMemoryUsernamePasswordDatabaseDontUse

    from twisted_mailhub.accounts import AccountBook

    from twisted_mailhub.cluster import table_checkers

    checkers = options.get("credCheckers", [])
    # --auth postgresql:DSN: the book mirrors the table (cluster/accounts.py);
    # accounts from files and --user are kept beside the table's.
    in_table = table_checkers(checkers)
    accounts = in_table[0].account_book(options["domains"]) if in_table else AccountBook(options["domains"])
    extra = []
    for checker in checkers:
        if any(checker is c for c in in_table):
            continue
        if isinstance(checker, FilePasswordDB):
            # AccountsFileError: one line with the file and line number
            accounts.load_file(checker.filename)
        elif isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
            for name, password in checker.users.items():
                try:
                    accounts.add(_text(name), _text(password))
                except ValueError as e:
                    raise usage.UsageError(f"--auth memory: {e}")
        else:
            extra.append(checker)
    for name, password in options["users"]:
        try:
            accounts.add(name, password)
        except ValueError as e:
            raise usage.UsageError(f"--user: {e}")
    return accounts, extra


def _twistd_option(options, name: str):
    """The value of C{twistd}'s own option C{name} (before C{mailhub}), or L{None}."""
    parent = getattr(options, "parent", None)
    return None if parent is None else parent.get(name)


def pidfile_problem(pidfile: str | None) -> str | None:
    """
    Why C{twistd} could not write C{pidfile} (its C{--pidfile}), in one
    phrase, or L{None} when it can (or there is none). twistd writes it
    after the hub is built, and a folder that does not exist ended the
    start in a traceback and a Python repr (C{b"FileNotFoundError: ..."}).
    """
    if not pidfile:
        return None
    folder = os.path.dirname(os.path.abspath(pidfile))
    if os.path.isdir(pidfile):
        return "is a folder; name a file in it"
    if not os.path.exists(folder):
        return f"its folder {folder} does not exist (make it first)"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write in {folder} (permission denied)"
    return None


def _run_as(options) -> tuple[int, int] | None:
    """
    The (uid, gid) C{twistd --uid/--gid} will switch to, or L{None}.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    import pwd

    if uid is None:
        uid = os.getuid()
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def makeService(options):
    from twisted.internet import reactor

    from twisted_mailhub.filters import filter_plugins
    from twisted_mailhub.heap import one_arena
    from twisted_mailhub.store import make_store

    one_arena()  # (before the hub starts a thread: twisted_mailhub/heap.py)

    pidfile = _twistd_option(options, "pidfile")
    why = pidfile_problem(pidfile)
    if why is not None:
        sys.stderr.write(f"mailhub: --pidfile {pidfile}: {why}\n")
        raise SystemExit(2)
    try:
        accounts, extra_checkers = _accounts_and_checkers(options)
    except AccountsFileError as e:
        # One line, no traceback and no page of usage (twistd prints the
        # whole help for a UsageError from parseOptions).
        sys.stderr.write(f"mailhub: --auth: {e}\n")
        raise SystemExit(2)
    except usage.UsageError as e:
        # A bad --user or --auth memory: name: twistd catches a UsageError
        # only from parseOptions, so here it was a traceback.
        sys.stderr.write(f"mailhub: {e}\n")
        raise SystemExit(2)
    if hasattr(accounts, "start"):
        accounts.start()  # --auth postgresql: listen for changes to the table
    from twisted_mailhub.privileges import keep_data_private

    # Before the first file: nothing of the data folder readable by other
    # local users (unless twistd --umask says otherwise).
    keep_data_private(_twistd_option(options, "umask"))
    data_dir = os.path.abspath(options["data"])
    os.makedirs(data_dir, exist_ok=True)
    hostname = options["hostname"] or default_hostname()
    from twisted_mailhub.workers import this_worker

    # --workers N: this process only binds and supervises; the workers
    # open the real store.
    supervisor = int(options.get("workers") or 1) > 1 and this_worker() is None
    if this_worker() is None:
        # Fixed ports inside the kernel's ephemeral range: a warning a
        # listener (ports.py; fixweb).
        from twisted.logger import Logger

        from twisted_mailhub.ports import options_warnings

        for line in options_warnings(options):
            Logger().warn("{line}", line=line)
    store = make_store("memory" if supervisor else options["store"], data_dir, reactor)
    if hasattr(store, "hostname"):
        store.hostname = hostname
    hub = Hub(reactor, options, accounts, store, data_dir, hostname, extra_checkers)
    clean_tmp = getattr(store, "clean_tmp", None)
    if clean_tmp is not None:
        # Maildir tmp/ leftovers: at start, then hourly, while the hub's
        # services run (stopped with them, as the FTP file system's
        # interrupted uploads are: ftp/component.py).
        from twisted.application.internet import TimerService

        cleaning = TimerService(3600, clean_tmp)
        cleaning.clock = reactor
        hub.add_service(cleaning)
    from twisted_mailhub.cluster import shared_throttle_dsn

    # store or accounts in PostgreSQL: the throttle counts for every hub
    throttle_dsn = shared_throttle_dsn(options)
    if throttle_dsn is not None:
        # (imported only here: a hub without PostgreSQL loads none of its code)
        from twisted_mailhub.cluster.throttle import SharedLoginThrottle

        hub.throttle = SharedLoginThrottle(throttle_dsn, reactor)
    hub.load_accounts = lambda: _accounts_and_checkers(options)[0]
    hub.run_as = _run_as(options)
    found = filter_plugins()
    hub.filters = [found[name] for name in options["filters"]]
    if options.get("tls-cert") or options.get("tls-key"):
        # Read now: a missing or broken file is one line, not the traceback
        # of the first TLS listener's install.
        from twisted_mailhub.tls import unusable_reason

        try:
            hub.tls
        except Exception as e:
            sys.stderr.write(f"mailhub: --tls-cert {options.get('tls-cert')}: cannot use it: {unusable_reason(e)}\n")
            raise SystemExit(2)
    try:
        from twisted_mailhub.optionvalues import unnamed_accounts

        for line in unnamed_accounts(options, accounts):
            raise usage.UsageError(line)
        for module in _components():
            module.install(hub)
    except usage.UsageError as e:
        # A component's check that needs the hub (--catch-all or
        # --postmaster names no account): one line, as a bad --user is.
        sys.stderr.write(f"mailhub: {e}\n")
        raise SystemExit(2)
    if not hub._listeners:
        sys.stderr.write("mailhub: every listener is disabled; nothing to do\n")
    if supervisor:
        from twisted_mailhub.workers import WorkersService

        argv = list(getattr(options, "argv", [])) + ["--data", data_dir]
        top = WorkersService(HubService(hub), int(options["workers"]), argv, os.getcwd())
    else:
        top = HubService(hub)
    from twisted_mailhub.logobserver import for_twistd

    # twistd logs through the hub's own observer (same lines, less CPU)
    # unless it was given --logger or --syslog.
    top.log_observer = for_twistd(options, reactor)
    return top


__all__ = ["Options", "makeService", "ListenerSpec"]
