# -*- test-case-name: tests.test_e2e_sftp -*-
"""
The SFTP component: the C{sftp} listener (SSH, port 8022 by default), its
options, and the realm's C{IConchUser} avatar: the account's FTP home, from
the same file-system plugin as FTP (C{--ftp-filesystem}).
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from twisted.python import usage

from twisted_mailhub.hub import ListenerSpec
from twisted_mailhub.optionvalues import size

log = Logger()

listeners = [
    ListenerSpec("sftp", "tcp:8022", "SFTP over SSH (the account's FTP home; 22 needs root or CAP_NET_BIND_SERVICE)."),
]

option_parameters = [
    ["sftp-max-handles", None, 256, "Open files and directories one SFTP session may hold.", int],
    ["sftp-max-packet", None, 256 * 1024, "Largest SFTP request accepted: octets, or a size such as 256K, from 1K to 16M (a larger one ends the session).", size("sftp-max-packet", 1024, 16 * 1024 * 1024)],
    ["sftp-idle-timeout", None, 600, "Seconds an SSH connection may sit idle.", float],
    ["sftp-login-timeout", None, 120, "Seconds an SSH client may take, in all, to log in (sshd's LoginGraceTime).", float],
]

option_lists = [
    ["ssh-host-key", "An SSH host private key file (OpenSSH or PEM); repeatable. Default: Ed25519 and ECDSA keys made in DATA/ssh/ on first start."],
]


def check_options(options) -> None:
    if int(options.get("sftp-max-handles") or 0) < 1:
        raise usage.UsageError("--sftp-max-handles wants a number of 1 or more")
    for name in ("sftp-idle-timeout", "sftp-login-timeout"):
        if float(options.get(name) or 0) <= 0:
            raise usage.UsageError(f"--{name} must be a positive number of seconds")
    from twisted_mailhub.optionvalues import shown
    from twisted_mailhub.sftp.keys import unusable_host_key

    for path in options.get("ssh-host-key") or []:
        # Read now (a start stopped later, and mailhub-admin check
        # passed, a file that is no key: "cannot guess the type of b'..'").
        why = "no such file" if not os.path.isfile(path) else unusable_host_key(path)
        if why:
            raise usage.UsageError(f"--ssh-host-key {shown(path, 200)}: {why}")


def install(hub) -> None:
    if hub.options.get("no-sftp"):
        return
    from twisted.conch.interfaces import IConchUser
    from twisted.conch.ssh.keys import BadKeyError

    from twisted_mailhub.ftp.vfs import make_filesystem
    from twisted_mailhub.sftp.keys import authorized_keys_checker, fingerprint, load_host_keys
    from twisted_mailhub.sftp.ssh import MailhubSSHFactory, SFTPSettings, SFTPUser

    try:
        host_keys = load_host_keys(hub.data_dir, hub.options.get("ssh-host-key"))
    except (OSError, BadKeyError, ValueError) as e:
        raise usage.UsageError(f"--ssh-host-key: {e}")
    for key in host_keys:
        log.info("sftp host key {type} {fingerprint}", type=key.sshType().decode("ascii"), fingerprint=fingerprint(key))
    filesystem = make_filesystem(hub.options, hub.data_dir)
    from twisted_mailhub.filequota import register_files, with_quota

    register_files(hub, filesystem)  # uploads count against the quota
    settings = SFTPSettings(
        hub,
        max_handles=int(hub.options.get("sftp-max-handles") or 256),
        max_packet=int(hub.options.get("sftp-max-packet") or 256 * 1024),
        idle_timeout=float(hub.options.get("sftp-idle-timeout") or 600),
        login_timeout=float(hub.options.get("sftp-login-timeout") or 120),
    )

    def avatar(account, mind):
        if account is None:
            raise LookupError("SFTP has no anonymous login")
        return SFTPUser(with_quota(filesystem.shell_for(account), hub, account), settings, account.address), lambda: None

    hub.realm.register(IConchUser, avatar)
    hub.portal.registerChecker(authorized_keys_checker(hub.data_dir, hub.accounts))
    hub.listen_each(listeners, lambda spec: MailhubSSHFactory(settings, host_keys))
