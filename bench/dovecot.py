"""
A private Dovecot (Debian's dovecot-imapd / dovecot-pop3d) for the
benchmarks: its own configuration, run and state folders under a temp
directory, IMAP and POP3 on free loopback ports, one user whose Maildir is
given (its own copy: run as root, the files are handed to C{nobody},
since Dovecot serves no mail as root), no TLS. Started in the foreground (C{dovecot -F}) and stopped by
its PID.

    with Dovecot(maildir, "alice", "secret") as peer:
        peer.ports["imap"], peer.ports["pop3"], peer.pid
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CONFIG = """\
base_dir = {run}
state_dir = {state}
instance_name = mailhub-bench-{tag}
listen = 127.0.0.1
protocols = imap pop3
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {home}/dovecot.log
first_valid_uid = 0
mail_location = maildir:{maildir}:INDEX={home}/index:CONTROL={home}/index
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {home}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}/home
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
protocol pop3 {{
  pop3_uidl_format = %f
}}
"""


def available() -> bool:
    """Is Dovecot installed (the binary and its imap/pop3 services)?"""
    return shutil.which("dovecot") is not None and os.path.exists("/usr/lib/dovecot/imap") and os.path.exists("/usr/lib/dovecot/pop3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Dovecot did not listen on port {port}")


class Dovecot:
    """Dovecot serving C{maildir} to C{user}/C{password} on loopback."""

    def __init__(self, maildir: str, user: str, password: str):
        self.maildir = os.path.abspath(maildir)
        self.user, self.password = user, password
        self.home = tempfile.mkdtemp(prefix="mailhub-bench-dovecot-")
        self.ports = {"imap": _free_port(), "pop3": _free_port()}
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "Dovecot":
        if os.stat(self.maildir).st_uid == 0:
            # Dovecot serves no mail as root: the copy it was given becomes nobody's.
            nobody = pwd.getpwnam("nobody")
            for top, dirs, files in os.walk(self.maildir):
                for name in dirs + files:
                    os.chown(os.path.join(top, name), nobody.pw_uid, nobody.pw_gid)
            os.chown(self.maildir, nobody.pw_uid, nobody.pw_gid)
        st = os.stat(self.maildir)
        os.chmod(self.home, 0o755)  # its auth process (user dovecot) reads passwd
        for sub in ("run", "state", "index", "home"):
            os.makedirs(os.path.join(self.home, sub))
        os.chown(os.path.join(self.home, "index"), st.st_uid, st.st_gid)
        os.chown(os.path.join(self.home, "home"), st.st_uid, st.st_gid)
        with open(os.path.join(self.home, "passwd"), "w") as f:
            f.write(f"{self.user}:{{PLAIN}}{self.password}\n")
        conf = os.path.join(self.home, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(
                CONFIG.format(
                    run=os.path.join(self.home, "run"),
                    state=os.path.join(self.home, "state"),
                    home=self.home,
                    tag=os.path.basename(self.home),
                    maildir=self.maildir,
                    uid=pwd.getpwuid(st.st_uid).pw_name,
                    gid=st.st_gid,
                    imap=self.ports["imap"],
                    pop3=self.ports["pop3"],
                )
            )
        self.process = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_port(self.ports["imap"])
            _wait_port(self.ports["pop3"])
        except RuntimeError:
            self.stop()
            raise
        return self

    def restart(self) -> None:
        """Stop and start again: its next SELECT is cold (its index files stay, as they do in use)."""
        self._stop_process()
        self.start_again()

    def start_again(self) -> None:
        conf = os.path.join(self.home, "dovecot.conf")
        self.process = subprocess.Popen(["dovecot", "-F", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_port(self.ports["imap"])
        _wait_port(self.ports["pop3"])

    def rss_mb(self) -> float:
        """Resident memory of every Dovecot process serving this instance, MB."""
        total = 0
        for pid in _children(self.pid) + [self.pid]:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def processes(self) -> list[int]:
        """The PIDs of every process of this instance (master, log, config, anvil, stats, auth, imap, pop3, *-login)."""
        return [self.pid] + _children(self.pid)

    def memory_once_mb(self) -> float:
        """Memory of every process serving this instance, each shared page counted once (L{memory_once_mb}), MB."""
        return memory_once_mb(self.processes())

    def _stop_process(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        self._stop_process()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def memory_once_mb(pids: list[int]) -> float:
    """
    Resident memory of the processes C{pids} with each shared page counted
    once, MB: every process's private pages, plus for each file mapped by
    several of them (libc, libdovecot, ...) the most that any one has
    resident. A sum of RSS counts those pages once per process: Dovecot's
    seven processes share about 20 MB of libraries. For one process this
    is its RSS.
    """
    private = 0
    shared: dict[str, int] = {}
    for pid in pids:
        mine: dict[str, int] = {}
        key = ""
        try:
            with open(f"/proc/{pid}/smaps") as f:
                for line in f:
                    first = line.split(None, 1)[0]
                    if not first.endswith(":"):
                        fields = line.split()
                        # a file by its path; an anonymous mapping is its process's own
                        key = fields[5] if len(fields) > 5 and fields[5].startswith("/") else f"{pid}:{fields[0]}"
                    elif first in ("Private_Clean:", "Private_Dirty:"):
                        private += int(line.split()[1])
                    elif first in ("Shared_Clean:", "Shared_Dirty:"):
                        mine[key] = mine.get(key, 0) + int(line.split()[1])
        except OSError:
            continue
        for key, kb in mine.items():
            shared[key] = max(shared.get(key, 0), kb)
    return (private + sum(shared.values())) / 1024


def _children(pid: int) -> list[int]:
    found = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                found.append(int(child))
                found.extend(_children(int(child)))
    except OSError:
        pass
    return found
