# -*- test-case-name: tests.test_privileges -*-
"""
Running as root only to bind: the data folder handed to the C{twistd
--uid/--gid} user before the switch.

C{twistd} calls C{privilegedStartService} as root, then switches user, then
C{startService}. The hub binds its listeners and makes what it needs in the
data folder (store, queue, TLS certificate) in the first step, so those
files are root's; L{give_data_to} then gives the whole folder to the user
the hub will run as, or the queue lock and the first delivery fail with
C{PermissionError}.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

log = Logger()


def give_data_to(data_dir: str, uid: int, gid: int) -> int:
    """
    Make C{data_dir} and everything in it owned by C{uid:gid} (symbolic
    links themselves, not their targets). Only entries owned by someone
    else are changed, so a restart costs one C{lstat} per file.

    @return: how many entries were changed.
    @raise OSError: an entry cannot be changed (not root).
    """
    changed = 0

    def own(path: str) -> None:
        nonlocal changed
        st = os.lstat(path)
        if st.st_uid != uid or st.st_gid != gid:
            os.chown(path, uid, gid, follow_symlinks=False)
            changed += 1

    own(data_dir)
    for top, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            own(os.path.join(top, name))
    if changed:
        log.info("data folder {path}: {count} entries given to uid {uid} gid {gid}", path=data_dir, count=changed, uid=uid, gid=gid)
    _warn_if_unreachable(data_dir, uid)
    return changed


def _warn_if_unreachable(data_dir: str, uid: int) -> None:
    """
    Log when a parent folder of C{data_dir} does not let others in (e.g.
    under /root): the hub will not reach its data once it runs as C{uid}.
    """
    parent = os.path.dirname(os.path.abspath(data_dir))
    while parent and parent != os.path.dirname(parent):
        st = os.stat(parent)
        if st.st_uid != uid and not st.st_mode & 0o001:
            log.warn("data folder {path}: its parent {parent} does not let uid {uid} in; give --data a folder it can reach (e.g. /var/lib/mailhub)", path=data_dir, parent=parent, uid=uid)
            return
        parent = os.path.dirname(parent)


def keep_data_private(umask_given: int | None) -> int:
    """
    Make the files and folders this process creates from now on its own
    user's only: the process umask gains C{077} (a shell's usual C{022}
    becomes C{077}). C{twistd -n} from a shell keeps the shell's umask,
    so FTP and SFTP uploads, Maildir folders and the hub's lists were
    readable by every local user (C{0644}, C{0755}), although the messages
    themselves were C{0600}; a daemonizing C{twistd} and the systemd unit
    already use C{077}, as Postfix's local delivery and vsftpd's
    C{local_umask} do.

    @param umask_given: the value of C{twistd --umask}, or L{None}. An
        umask given there is the admin's choice (a backup group that reads,
        C{027}): it is left alone (twistd applies it after the hub's
        service is made).
    @return: the umask now in force.
    """
    if umask_given is not None:
        current = os.umask(0o077)
        os.umask(current)  # (read without changing it)
        return current
    old = os.umask(0o077)
    os.umask(old | 0o077)
    return old | 0o077
