"""
A private Postfix (Debian's postfix package) for the SMTP benchmark: its
own configuration folder (C{postfix -c DIR}), queue and data folders under a
temp directory, C{smtpd} on a free loopback port, every recipient at
C{localhost} delivered by C{virtual(8)} into its own Maildir under the
folder given (C{virtual_mailbox_base}), no DNS, no TLS. Started in the
foreground (C{postfix -c DIR start-fg}: the master daemon is the process
started) and stopped by its PID. The system's own Postfix configuration
(C{/etc/postfix/main.cf}) is neither read nor changed.

    with Postfix(maildirs, ["bench0", "bench1"]) as peer:
        peer.port, peer.pid, peer.maildir("bench0")

Postfix answers C{250} once the message is in its queue file, fsynced
(cleanup(8)); virtual(8) then copies it into the Maildir (the copy in
tmp/ fsynced, then linked into new/; no directory fsync) on its own
schedule. L{Postfix.wait_delivered} waits for that. Checked with strace
on this configuration: two fsyncs per message, the queue file's and the
Maildir copy's. Maildir delivery by virtual(8), not mbox by local(8):
local(8) delivers one recipient's mail one message at a time under the
mailbox lock (local_destination_concurrency_limit = 2, each delivery a
lock, an append and an fsync), so a benchmark to one mailbox would time
that queue, not the SMTP server; the hub writes one file per message
into a Maildir, and so does Postfix here.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {home}/queue
data_directory = {home}/data
mail_owner = postfix
myhostname = postfix.bench.localhost
mydomain = bench.localhost
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
smtpd_banner = $myhostname ESMTP
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# Nothing leaves the machine (a bounce to a bench sender included).
default_transport = error:no mail leaves a benchmark
relay_transport = error:no mail leaves a benchmark
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
message_size_limit = 52428800
virtual_mailbox_limit = 0
virtual_mailbox_domains = localhost
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{home}/etc/vmailbox
virtual_minimum_uid = 1
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
default_process_limit = 200
maillog_file = {home}/maillog
maillog_file_prefixes = {home}
multi_instance_enable = no
"""

MASTER_CF = """\
127.0.0.1:{port} inet n -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Each recipient local@localhost gets the Maildir <base>/local/ (the
# trailing slash asks virtual(8) for Maildir delivery). A table, since
# Postfix allows no substitution in a mailbox map.
VMAILBOX = "{local}@localhost {local}/\n"


def available() -> bool:
    """Is Postfix installed (the command, and the daemons it starts)?"""
    return shutil.which("postfix") is not None and os.path.exists("/usr/lib/postfix/sbin/master")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postfix:
    """
    Postfix accepting mail for C{<local>@localhost}, each C{local} of
    C{recipients}, on C{127.0.0.1:port}, and delivering each recipient's
    to C{mail/<local>/} (Maildir). Run as root, the folders above C{mail}
    must be searchable by user C{postfix}, who delivers.
    """

    def __init__(self, mail: str, recipients: list[str]):
        self.mail = os.path.abspath(mail)
        self.recipients = list(recipients)
        self.home = tempfile.mkdtemp(prefix="mailhub-bench-postfix-")
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def config(self) -> str:
        return os.path.join(self.home, "etc")

    def maildir(self, local: str) -> str:
        return os.path.join(self.mail, local)

    def start(self, timeout: float = 30) -> "Postfix":
        owner = pwd.getpwnam("postfix") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        os.chmod(self.home, 0o755)
        os.makedirs(self.config)
        os.makedirs(self.mail, exist_ok=True)
        # virtual(8) delivers as the user the maps name: postfix's own uid.
        os.chown(self.mail, owner.pw_uid, owner.pw_gid)
        with open(os.path.join(self.config, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(home=self.home, mail=self.mail, uid=owner.pw_uid, gid=owner.pw_gid))
        with open(os.path.join(self.config, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        with open(os.path.join(self.config, "vmailbox"), "w") as f:
            f.write("".join(VMAILBOX.format(local=local) for local in self.recipients))
        # The queue folder belongs to root; postfix check makes its
        # subfolders (owned by postfix, postdrop) and the data folder.
        os.makedirs(os.path.join(self.home, "queue"))
        subprocess.run(["postfix", "-c", self.config, "check"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        # start-fg: the master daemon stays the process we started (stopped by PID).
        self.process = subprocess.Popen(
            ["postfix", "-c", self.config, "start-fg"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"Postfix did not start (exit {self.process.returncode}); its log:\n{self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Postfix did not listen on port {self.port}\n{self.log()[-2000:]}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.home, "maillog"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_delivered(self, local: str, count: int, timeout: float = 120) -> float:
        """
        Wait until C{count} messages are in C{local}'s Maildir new/; returns
        the seconds waited. Raises L{TimeoutError}.
        """
        start = time.monotonic()
        pattern = os.path.join(self.maildir(local), "new", "*")
        while len(glob.glob(pattern)) < count:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"Postfix delivered {len(glob.glob(pattern))} of {count} messages to {local}; its log:\n{self.log()[-1500:]}")
            time.sleep(0.02)
        return time.monotonic() - start

    def _master_pid(self) -> int | None:
        """The master daemon's PID from its PID file (it starts its own session, so it is not our child's group)."""
        try:
            with open(os.path.join(self.home, "queue", "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """
        Stop this instance and every process of it, then remove its folder.
        C{postfix start-fg} runs the master daemon in a session of its own,
        so the master is stopped by the PID in its PID file (SIGTERM: it
        stops its children; SIGKILL after 15 s), and the process we started
        is waited for; a run never leaves a Postfix behind (they used to
        stay, loading later runs).
        """
        master = self._master_pid()
        if master is not None:
            try:
                os.kill(master, signal.SIGTERM)  # master stops its children
            except ProcessLookupError:
                master = None
        end = time.monotonic() + 15
        while master is not None and time.monotonic() < end:
            try:
                os.kill(master, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if master is not None:
                try:
                    os.killpg(os.getpgid(master), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
