"""
The hub's log when its disk fills up: lines that cannot be written are
lost, but the log says so once it can be written again ("N log lines
were lost here: the disk is full"), and no line is left torn (a short
write cut back), so every line still starts with its time stamp.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import time

import pytest

from tests.hubprocess import ROOT
from twisted_mailhub.logobserver import FollowedLogFile, LineBuffer

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[")


def test_lines_lost_to_a_full_disk_are_counted_in_the_next_write():
    written = []
    full = [True]

    def write(data):
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data)

    buffer = LineBuffer(write, where="hub.log")
    buffer.add("one\n")
    buffer.write_lines(b"two\nthree\n")
    assert written == [] and buffer.lost == 3
    full[0] = False
    buffer.add("four\n")
    (data,) = written
    lost, rest = data.split(b"\n", 1)
    assert lost.endswith(b"[twisted_mailhub.logobserver#warn] 3 log lines were lost here: the disk is full"), lost
    assert rest == b"four\n"
    assert buffer.lost == 0 and buffer.broken is None
    buffer.add("five\n")
    assert written[-1] == b"five\n"


class _FillsUp:
    """A log file's file object on a disk with C{room} octets left (then ENOSPC), as an unbuffered file behaves."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        return self.real.write(taken)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_short_write_is_cut_back_so_no_line_is_torn(tmp_path):
    log = FollowedLogFile.fromFullPath(str(tmp_path / "hub.log"))
    log.write(b"first line\n")
    log._file = _FillsUp(log._file, 5)
    with pytest.raises(OSError):
        log.write(b"second line\nthird line\n")
    log._file.room = 1000
    log.write(b"fourth line\n")
    log.close()
    assert (tmp_path / "hub.log").read_bytes() == b"first line\nfourth line\n"
    assert log.size == len(b"first line\nfourth line\n")


def _inside(pid: int, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", command], capture_output=True, text=True, timeout=60)


def test_a_hub_whose_log_disk_fills_up_says_how_many_lines_were_lost(tmp_path):
    # A real hub logging to a 256 KiB tmpfs (in a mount namespace of its
    # own) with --transcript: the disk is filled, mail goes on, room is
    # made, and the log says what it lost.
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        if os.environ.get("CI"):
            pytest.fail("needs root, unshare and nsenter (a tmpfs of its own)")
        pytest.skip("needs root, unshare and nsenter (a tmpfs of its own)")
    logs = tmp_path / "logs"
    logs.mkdir()
    port = 0
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {logs} && exec {sys.executable} -c 'from twisted.scripts.twistd import run; run()'"
        f" -n --pidfile= --logfile {logs}/hub.log mailhub --data {tmp_path}/data --user alice:secret --transcript --no-sftp --no-web --no-webs"
        f" --smtp tcp:{port}:interface=127.0.0.1 --no-submission --no-smtps --no-pop3 --no-pop3s --no-imap --no-imaps --no-ftp"
    )
    hub = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (ready := re.search(r'mailhub ready \{"smtp": (\d+)', _inside(hub.pid, f"cat {logs}/hub.log").stdout)):
            assert time.monotonic() < deadline and hub.poll() is None, hub.stderr.read().decode() if hub.poll() is not None else "no ready line"
            time.sleep(0.1)
        smtp_port = int(ready.group(1))

        def send(n):
            for i in range(n):
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
                    smtp.sendmail("judy@jbc.test", ["alice@localhost"], f"Subject: {i}\r\n\r\nhello\r\n")

        _inside(hub.pid, f"dd if=/dev/zero of={logs}/fill bs=1k 2>/dev/null; true")
        send(10)  # every session's transcript lines find no room
        assert _inside(hub.pid, f"rm {logs}/fill").returncode == 0
        send(1)
        deadline = time.monotonic() + 30
        while "were lost here" not in (text := _inside(hub.pid, f"cat {logs}/hub.log").stdout) or not text.endswith("\n"):
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.1)
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=30)
    said = re.search(r"\[twisted_mailhub\.logobserver#warn\] (\d+) log lines were lost here: the disk is full", text)
    assert said and int(said.group(1)) >= 10, text[-3000:]
    torn = [line for line in text.splitlines() if not STAMP.match(line)]
    assert torn == [], torn
    assert "delivered " in text.split("were lost here", 1)[1]  # the lines after it are written again
