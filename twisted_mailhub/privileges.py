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


# The root helper of remove_pidfile_at_end: it reads its standard input
# (the hub's end of a pipe) until the hub's process ends, however it ends,
# then removes the pidfile if it still names that process. It ignores the
# signals a terminal or "kill -- -PGID" sends the hub's group, so it is
# there to clean up after the hub; it lives exactly as long as the hub.
_PIDFILE_HELPER = 'trap "" HUP INT TERM QUIT; while read -r _line; do :; done; [ "$(cat "$1" 2>/dev/null)" = "$2" ] && rm -f -- "$1"; exit 0'


def may_remove(path: str, uid: int, gid: int) -> bool:
    """
    Whether user C{uid} (group C{gid}) may remove the file C{path}: its
    folder is writable and searchable for that user (owner, group or
    other bits; supplementary groups are not counted) and, in a sticky
    folder (C{/tmp}), the file or the folder is the user's.
    """
    if uid == 0:
        return True
    folder = os.stat(os.path.dirname(os.path.abspath(path)))
    if folder.st_uid == uid:
        bits = (folder.st_mode >> 6) & 0o7
    elif folder.st_gid == gid:
        bits = (folder.st_mode >> 3) & 0o7
    else:
        bits = folder.st_mode & 0o7
    if bits & 0o3 != 0o3:
        return False
    if folder.st_mode & 0o1000 and folder.st_uid != uid:
        try:
            return os.stat(path).st_uid == uid
        except OSError:
            return False
    return True


def remove_pidfile_at_end(pidfile: str, uid: int, gid: int) -> int | None:
    """
    Called as root, after C{twistd} wrote C{pidfile} and before it
    switches to C{uid:gid}: when that user could not remove the pidfile
    at the hub's end (C{/run/mailhub.pid}: only root writes C{/run}),
    start a small root helper (C{/bin/sh}) that removes it once this
    process has ended, by a stop or a crash alike, so no stale pidfile
    misleads the next start or a service manager. The helper holds no
    privilege the hub can use: it only reads the end of a pipe.

    @return: the helper's process id, or L{None} when the user can remove
        the pidfile itself (no helper needed) or there is no pidfile.
    @raise OSError: the helper cannot be started.
    """
    import subprocess

    if not pidfile or not os.path.exists(pidfile) or may_remove(pidfile, uid, gid):
        return None
    path = os.path.abspath(pidfile)
    read_end, write_end = os.pipe()  # neither is inherited by later children
    try:
        helper = subprocess.Popen(
            ["/bin/sh", "-c", _PIDFILE_HELPER, "mailhub-pidfile", path, str(os.getpid())],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    # Kept open (never written) for the life of the process: its end is
    # what the helper waits for.
    _HELD.append(write_end)
    return helper.pid


_HELD: list[int] = []


def unreadable_for(path: str, uid: int, gid: int) -> str | None:
    """
    Why user C{uid} (group C{gid}, no other group) could not read the
    file C{path}, in the C library's words, or L{None} when it could.
    Called as root before the switch: tried with that effective user and
    group for the time of one C{open}, then root's again.
    """
    groups = os.getgroups()
    os.setgroups([gid])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return e.strerror or str(e)
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)
