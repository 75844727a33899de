"""
How soon an IDLE session hears of a message another program puts into its
Maildir (procmail, another --workers process, a sync tool): a file is
written in tmp/ and renamed into new/, and the time until the session's
`* n EXISTS` is measured. The hub only: the figure to compare is the
0.5 s poll this replaced (a median near 250 ms). No peer: the private
Dovecot of bench/dovecot.py did not report such drops during IDLE in
this setup.

    python3 bench/imap_idle_outside.py               # 20 drops each
    python3 bench/imap_idle_outside.py --drops 50
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.hubprocess import HubProcess  # noqa: E402

MESSAGE = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: dropped\r\n\r\nbody\r\n"


class Idler:
    """One session SELECTing INBOX and IDLE-ing."""

    def __init__(self, port: int, user: bytes, password: bytes):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        self.line()
        for command in (b"a LOGIN " + user + b" " + password, b"b SELECT INBOX"):
            tag = command.split()[0]
            self.sock.sendall(command + b"\r\n")
            while not self.line().startswith(tag + b" "):
                pass
        self.sock.sendall(b"i IDLE\r\n")
        while not self.line().startswith(b"+"):
            pass

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("server closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def wait_exists(self) -> None:
        while not self.line().endswith(b" EXISTS"):
            pass


def drop(maildir: str, n: int, owner: tuple[int, int] | None = None) -> None:
    name = f"{int(time.time())}.bench{n}P{os.getpid()}.localhost"
    tmp = os.path.join(maildir, "tmp", name)
    with open(tmp, "wb") as f:
        f.write(MESSAGE)
    if owner is not None:
        os.chown(tmp, *owner)
    os.rename(tmp, os.path.join(maildir, "new", name))


def measure(idler: Idler, maildir: str, drops: int, owner=None) -> list[float]:
    seconds = []
    for n in range(drops):
        time.sleep(0.02)
        start = time.perf_counter()
        drop(maildir, n, owner)
        idler.wait_exists()
        seconds.append(time.perf_counter() - start)
    return seconds


def report(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{name:8} drop -> EXISTS: median {statistics.median(ms):7.1f} ms   max {ms[-1]:7.1f} ms   ({len(ms)} drops)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=20)
    args = parser.parse_args()
    print("load:", os.getloadavg())
    with tempfile.TemporaryDirectory() as data:
        hub = HubProcess(data).start()
        try:
            idler = Idler(hub.ports["imap"], b"alice", b"secret")
            report("hub", measure(idler, hub.maildir("alice@localhost"), args.drops))
        finally:
            hub.stop()


if __name__ == "__main__":
    main()
