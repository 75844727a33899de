"""
COMPRESS=DEFLATE (RFC 4978) against Dovecot in the same run: one client
reads a mailbox of a few hundred varied messages (bench/imap_mix.py's) with
`FETCH 1:* BODY.PEEK[]` and `FETCH 1:* (UID FLAGS ENVELOPE)`, in the
clear and after COMPRESS DEFLATE, and reports octets on the wire and
seconds. Dovecot (Debian's, private configuration, bench/dovecot.py) runs
with its imap_zlib plugin. "CPU ms" is the server's CPU time for the
command (the hub's process; Dovecot's processes together), from /proc:
when "seconds" is well above it, the time went waiting (on the network,
on the scheduler of a busy machine), not working.

    python3 bench/imap_compress.py                 # 3 rounds
    python3 bench/imap_compress.py --rounds 20       # finer CPU figures
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench.dovecot as dovecot_module  # noqa: E402
from bench.cpu import cpu_seconds  # noqa: E402
from bench.imap_mix import MESSAGES, make_maildir  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402

# Dovecot offers COMPRESS only with its zlib plugins loaded.
ZLIB = "mail_plugins = $mail_plugins zlib\nprotocol imap {{\n  mail_plugins = $mail_plugins imap_zlib\n}}\n"  # CONFIG is a format string
COMMANDS = [("bodies", b"FETCH 1:* BODY.PEEK[]"), ("envelopes", b"FETCH 1:* (UID FLAGS ENVELOPE)")]


class Client:
    """One IMAP connection counting the octets it receives, optionally compressed."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.wire_in = 0
        self.plain = b""
        self.inflate = None
        self.deflate = None
        self.n = 0
        self.read_until(b"\r\n")

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.plain:
            data = self.sock.recv(1 << 20)
            if not data:
                raise RuntimeError("server closed: " + self.plain[-200:].decode("latin-1"))
            self.wire_in += len(data)
            self.plain += self.inflate.decompress(data) if self.inflate else data
        head, _, self.plain = self.plain.partition(marker)
        return head

    def command(self, text: bytes) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        line = tag + b" " + text + b"\r\n"
        if self.deflate:
            line = self.deflate.compress(line) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(line)
        self.plain = b"\r\n" + self.plain  # the tagged line starts a line
        head = self.read_until(b"\r\n" + tag + b" ")[2:]
        status = self.read_until(b"\r\n")
        if not status.startswith(b"OK"):
            raise RuntimeError(f"{text!r}: {status!r}")
        return head

    def compress(self) -> None:
        self.command(b"COMPRESS DEFLATE")
        self.inflate = zlib.decompressobj(-15)
        self.deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)


def measure(port: int, compressed: bool, rounds: int, pid: int = 0) -> dict[str, tuple[float, int, int, float]]:
    """
    Per command: (median seconds, wire octets, plain octets, server CPU
    seconds of process tree C{pid}: the mean over the rounds, since /proc
    counts in ticks of 10 ms).
    """
    c = Client(port)
    c.command(b"LOGIN alice secret")
    if compressed:
        c.compress()
    c.command(b"SELECT INBOX")
    out = {}
    for name, text in COMMANDS:
        times = []
        before_cpu = cpu_seconds(pid, tree=True) if pid else 0.0
        for _ in range(rounds):
            before_wire = c.wire_in
            t = time.perf_counter()
            body = c.command(text)
            times.append(time.perf_counter() - t)
            wire = c.wire_in - before_wire
        cpu = (cpu_seconds(pid, tree=True) - before_cpu) / rounds if pid else 0.0
        times.sort()
        out[name] = (times[len(times) // 2], wire, len(body), cpu)
    c.command(b"LOGOUT")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not dovecot_module.available():
        raise SystemExit("dovecot not found: apt-get install dovecot-imapd")
    dovecot_module.CONFIG += ZLIB
    print("load:", open("/proc/loadavg").read().strip())
    root = tempfile.mkdtemp(prefix="imapcompress-")
    os.chmod(root, 0o755)
    hub = peer = None
    try:
        make_maildir(os.path.join(root, "hub", "mail", "localhost", "alice"), MESSAGES)
        make_maildir(os.path.join(root, "dovecot"), MESSAGES)
        hub = HubProcess(os.path.join(root, "hub"), ["--no-ftp"]).start()
        peer = dovecot_module.Dovecot(os.path.join(root, "dovecot"), "alice", "secret").start()
        deadline = time.monotonic() + 20
        while True:  # Dovecot's auth process may still be starting
            try:
                measure(peer.ports["imap"], False, 1)
                break
            except (RuntimeError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"{MESSAGES} messages, median of {args.rounds} rounds")
        print(f"{'server':8} {'mode':8} {'command':10} {'seconds':>8} {'CPU ms':>7} {'wire KB':>9} {'plain KB':>9} {'ratio':>6}")
        for server, port, pid in (("hub", hub.ports["imap"], hub.process.pid), ("dovecot", peer.ports["imap"], peer.pid)):
            for compressed in (False, True):
                for name, (seconds, wire, plain, cpu) in measure(port, compressed, args.rounds, pid).items():
                    mode = "DEFLATE" if compressed else "plain"
                    print(f"{server:8} {mode:8} {name:10} {seconds:8.3f} {cpu * 1000:7.1f} {wire / 1024:9.0f} {plain / 1024:9.0f} {wire / max(plain, 1):6.2f}")
    finally:
        if peer is not None:
            peer.stop()
        if hub is not None:
            hub.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
