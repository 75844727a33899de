"""
IMAP FETCH BODYSTRUCTURE / BODY of one big message (43 MB: a text part and
three base64 attachments), asked again and again, with a real imaplib
client against the real `twistd mailhub`, then the web face's Anatomy page
of it (/mail/INBOX/1/anatomy) and its page (/mail/INBOX/1) with a real
HTTP client: the wall time of each and the hub's CPU seconds for it
(bench/cpu.py). The first parses the message; later ones should not.

    python3 bench/imap_structure.py              # 43 MB, 5 rounds
    python3 bench/imap_structure.py --mb 10 --rounds 3
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cpu import cpu_seconds  # noqa: E402
from tests.hubprocess import HubProcess  # noqa: E402


def big_message(mb: int) -> bytes:
    """A multipart/mixed message of about C{mb} MB: a text part and three base64 attachments (CRLF)."""
    each = max(1, mb * 1024 * 1024 * 3 // 4 // 3)
    parts = [b"From: a@example.org\r\nTo: alice@localhost\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n",
             b"--b0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nhello\r\n"]
    for n in range(3):
        data = base64.encodebytes(os.urandom(each)).replace(b"\n", b"\r\n")
        parts.append(b"--b0\r\nContent-Type: application/octet-stream; name=\"f%d.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"f%d.bin\"\r\n\r\n" % (n, n) + data)
    parts.append(b"--b0--\r\n")
    return b"".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=43)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="imap-structure-", dir=os.environ.get("TMPDIR", "/tmp"))
    hub = HubProcess(os.path.join(top, "hub"), ["--max-message-size", str((args.mb + 8) * 1024 * 1024)]).start()
    try:
        message = big_message(args.mb)
        m = imaplib.IMAP4("127.0.0.1", hub.ports["imap"])
        m.login("alice", "secret")
        typ, data = m.append("INBOX", None, None, message)
        assert typ == "OK", data
        m.select("INBOX")
        print(f"message: {len(message) / 1e6:.1f} MB")
        for item in ("BODYSTRUCTURE", "BODY"):
            walls, cpus = [], []
            for r in range(args.rounds):
                cpu = cpu_seconds(hub.pid)
                t = time.perf_counter()
                typ, data = m.fetch("1", f"({item})")
                walls.append(time.perf_counter() - t)
                cpus.append(cpu_seconds(hub.pid) - cpu)
                assert typ == "OK" and item.encode() in data[0], data
            print(f"FETCH 1 ({item}): first {walls[0] * 1000:.0f} ms wall, {cpus[0] * 1000:.0f} ms hub CPU; "
                  f"later (median of {args.rounds - 1}) {statistics.median(walls[1:]) * 1000:.1f} ms wall, {statistics.median(cpus[1:]) * 1000:.1f} ms hub CPU")
        m.logout()
        from tests.web_helpers import WebClient

        web = WebClient(hub)
        web.login("alice", "secret")
        for path in ("/mail/INBOX/1/anatomy", "/mail/INBOX/1"):
            walls, cpus = [], []
            for r in range(args.rounds):
                cpu = cpu_seconds(hub.pid)
                t = time.perf_counter()
                page = web.get(path)
                walls.append(time.perf_counter() - t)
                cpus.append(cpu_seconds(hub.pid) - cpu)
                assert page.status == 200, page.status
            print(f"GET {path}: first {walls[0] * 1000:.0f} ms wall, {cpus[0] * 1000:.0f} ms hub CPU; "
                  f"later (median of {args.rounds - 1}) {statistics.median(walls[1:]) * 1000:.0f} ms wall, {statistics.median(cpus[1:]) * 1000:.0f} ms hub CPU")
    finally:
        hub.stop()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
