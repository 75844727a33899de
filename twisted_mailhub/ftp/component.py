# -*- test-case-name: tests.test_ftp_units,tests.test_e2e_ftp -*-
"""
The FTP component: the C{ftp} listener, its options, and the realm's
C{ftp.IFTPShell} avatar (a shell on the account's home in the virtual file
system, or on the public folder, read-only, for anonymous logins).
"""

from __future__ import annotations

from twisted.cred.checkers import AllowAnonymousAccess
from twisted.protocols import ftp
from twisted.python import usage

from twisted_mailhub.hub import ListenerSpec

listeners = [
    ListenerSpec("ftp", "tcp:2121", "FTP control connections (RFC 959; AUTH TLS for FTPS).", port_offset=21),
]

option_parameters = [
    ["ftp-data-port", None, None, "Source port of active-mode data connections (default: the control port - 1, i.e. 2120; 20 for 21)."],
    ["passive-ports", None, None, "Passive data ports LO-HI (default: chosen by the OS); haproxy:LO-HI: the balancer forwards them, each data connection starts with a PROXY header (--proxy-from)."],
    ["passive-address", None, None, "Address announced in PASV replies (behind NAT)."],
    ["ftp-banner", None, None, "Text of the FTP 220 greeting."],
    ["ftp-filesystem", None, "disk", "FTP and SFTP file system backend: a plugin's name (disk, ...), or postgresql[:DSN] (shared by every hub on the database; without DSN, the --store postgresql:DSN database)."],
    ["ftp-max-per-ip", None, 20, "FTP control connections allowed from one address at once (0: no limit).", int],
    ["ftp-idle-timeout", None, 300, "Seconds an FTP control connection may sit idle (300, as vsftpd and pyftpdlib).", float],
    ["ftp-login-timeout", None, 300, "Seconds an FTP client may take, in all, to log in.", float],
    ["ftp-command-timeout", None, 120, "Seconds an FTP client may take to send one command line.", float],
    ["ftp-data-timeout", None, 60, "Seconds to wait for, or on, an idle FTP data connection.", float],
]

option_flags = [
    ["anonymous-ftp", None, "Allow anonymous FTP: read-only access to DATA/ftp/public/."],
    ["ftp-require-tls", None, "Refuse FTP USER before AUTH TLS, except from --trusted-networks."],
]


def parse_passive_ports(spec: str) -> tuple[bool, range]:
    """
    C{--passive-ports}: C{(through_balancer, ports)}. C{haproxy:LO-HI}
    (any case) says HAProxy forwards the range to this hub and each data
    connection begins with a PROXY header; C{LO-HI} alone, that clients
    connect straight to the hub.

    @raise usage.UsageError: not such a range.
    """
    from twisted_mailhub.proxyheader import split

    balanced, rest = split(spec.strip())
    if balanced and not rest:
        raise usage.UsageError("--passive-ports haproxy:LO-HI wants the range the balancer forwards to this hub, such as haproxy:50000-50099")
    return balanced, parse_port_range(rest)


def parse_port_range(spec: str) -> range:
    from twisted_mailhub.optionvalues import shown

    low, sep, high = spec.partition("-")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        raise usage.UsageError(f"--passive-ports wants LO-HI such as 50000-50100, not {shown(spec)}")
    if not (1024 <= lo <= hi <= 65535):
        raise usage.UsageError(f"--passive-ports {shown(spec)}: want 1024 <= LO <= HI <= 65535")
    return range(lo, hi + 1)


def check_options(options) -> None:
    for name in ("ftp-idle-timeout", "ftp-login-timeout", "ftp-command-timeout", "ftp-data-timeout"):
        if options.get(name) is not None and float(options[name]) <= 0:
            raise usage.UsageError(f"--{name} must be a positive number of seconds")
    banner = options.get("ftp-banner")
    if banner and any(not c.isprintable() for c in banner):
        from twisted_mailhub.lines import control_note

        # A CR LF in it wrote reply lines of its own ("220 hi", "230 fake").
        raise usage.UsageError(f"--ftp-banner is one line of text, without control characters{control_note(banner)}")
    if options.get("passive-ports"):
        parse_passive_ports(options["passive-ports"])
    if options.get("passive-address"):
        from twisted_mailhub.optionvalues import passive_address

        try:
            options["passive-address"] = passive_address(options["passive-address"])
        except ValueError as e:
            raise usage.UsageError(f"--passive-address {e}") from None
    if options.get("ftp-data-port") is not None:
        try:
            port = int(options["ftp-data-port"])
        except ValueError:
            raise usage.UsageError("--ftp-data-port wants a port number")
        if not 0 <= port <= 65535:
            raise usage.UsageError("--ftp-data-port wants 0-65535 (0: ephemeral)")
    from twisted_mailhub.ftp.vfs import check_filesystem_option

    wrong = check_filesystem_option(options)
    if wrong:
        raise usage.UsageError(wrong)


def _nothing_to_undo() -> None:
    """An FTP shell's logout: nothing to release (one function for all, not one per login)."""


def make_factory(hub):
    from twisted_mailhub.ftp.server import MailhubFTPFactory

    options = hub.options
    data_port = options.get("ftp-data-port")
    balanced, passive_ports = parse_passive_ports(options["passive-ports"]) if options.get("passive-ports") else (False, None)
    return MailhubFTPFactory(
        hub,
        banner=options.get("ftp-banner") or "",
        anonymous=bool(options.get("anonymous-ftp")),
        data_port=int(data_port) if data_port is not None else None,
        passive_ports=passive_ports,
        passive_balanced=balanced,
        passive_address=options.get("passive-address"),
        require_tls=bool(options.get("ftp-require-tls")),
        max_per_ip=int(options.get("ftp-max-per-ip") or 0),
        idle_timeout=float(options.get("ftp-idle-timeout") or 300),
        login_timeout=float(options.get("ftp-login-timeout") or 300),
        command_timeout=float(options.get("ftp-command-timeout") or 120),
        data_timeout=float(options.get("ftp-data-timeout") or 60),
    )


def install(hub) -> None:
    from twisted_mailhub.ftp.vfs import make_filesystem

    filesystem = make_filesystem(hub.options, hub.data_dir)
    anonymous = bool(hub.options.get("anonymous-ftp"))

    from twisted_mailhub.filequota import register_files, with_quota

    register_files(hub, filesystem)
    clean_now = getattr(filesystem, "clean_now", None)
    if clean_now is not None:
        # Interrupted uploads not resumed: at start, then hourly, while the
        # hub's services run (stopped with them: nothing left pending).
        from twisted.application.internet import TimerService

        cleaning = TimerService(3600, clean_now, hub.reactor)
        cleaning.clock = hub.reactor
        hub.add_service(cleaning)

    def shell(account, mind):
        if account is None and not anonymous:
            raise ftp.AuthorizationError("anonymous FTP is off")
        return with_quota(filesystem.shell_for(account), hub, account), _nothing_to_undo

    hub.realm.register(ftp.IFTPShell, shell)
    if anonymous:
        hub.portal.registerChecker(AllowAnonymousAccess())
    hub.listen_each(listeners, lambda spec: make_factory(hub))
