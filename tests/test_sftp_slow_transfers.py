"""
An SFTP transfer trickled a few octets every few seconds ends: once a
handle's first READ or WRITE is --slow-transfer-window seconds old, its
octets must average 4 KiB/s (lines.MIN_TRANSFER_RATE), as an FTP upload's
must. Before, each request reset the idle timer, so the session, the
handle and the file were held for ever. Driven with task.Clock.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import task

from tests.test_sftp_protocol import ChannelStub, answers, open_file, packet, status, u32, u64
from twisted_mailhub.ftp.vfs import DiskShell
from twisted_mailhub.sftp import protocol as p

WRITE_CREATE = p.FXF_WRITE | p.FXF_CREAT | p.FXF_TRUNC


@pytest.fixture
def session(tmp_path):
    root = tmp_path / "home"
    root.mkdir()
    stub = ChannelStub()
    server = p.SFTPServer(DiskShell(str(root)), max_handles=4, slow_window=60.0)
    server._clock = clock = task.Clock()
    server.makeConnection(stub)
    server.dataReceived(packet(p.FXP_INIT, u32(3)))
    answers(stub)
    return server, stub, root, clock


def write(server, stub, rid, handle, offset, data):
    server.dataReceived(packet(p.FXP_WRITE, u32(rid), p.ns(handle), u64(offset), p.ns(data)))
    [(kind, payload)] = answers(stub)
    assert kind == p.FXP_STATUS
    return status(payload)


def read(server, stub, rid, handle, offset, length):
    server.dataReceived(packet(p.FXP_READ, u32(rid), p.ns(handle), u64(offset), u32(length)))
    [(kind, payload)] = answers(stub)
    return kind, payload


def test_an_upload_trickled_an_octet_every_few_seconds_fails_and_is_not_stored(session):
    server, stub, root, clock = session
    handle = open_file(server, stub, 1, "trickle.bin", WRITE_CREATE)
    rid = 2
    for offset in range(13):  # 0 .. 60 s: within the window
        assert write(server, stub, rid, handle, offset, b"x")[1] == p.FX_OK, offset
        rid += 1
        clock.advance(5)
    # 65 s, 13 octets: far under 4 KiB/s.
    counted = []
    server.metrics = type("Metrics", (), {"slow_transfer": lambda self, listener: counted.append(listener)})()
    _rid, code, message = write(server, stub, rid, handle, 13, b"x")
    assert counted == ["sftp"]
    assert code == p.FX_FAILURE
    assert message == "/trickle.bin: the transfer ran at under 4 KiB/s for 65 seconds; the upload is not stored"
    assert write(server, stub, rid + 1, handle, 14, b"x")[2] == "no such open handle"
    assert os.listdir(root) == []  # not under its name, no partial either
    assert handle not in server.handles


def test_a_download_read_an_octet_every_few_seconds_fails_and_its_file_is_closed(session):
    server, stub, root, clock = session
    (root / "big.bin").write_bytes(b"y" * 100_000)
    handle = open_file(server, stub, 1, "big.bin", p.FXF_READ)
    for offset in range(13):
        kind, _ = read(server, stub, 2 + offset, handle, offset, 1)
        assert kind == p.FXP_DATA
        clock.advance(5)
    kind, payload = read(server, stub, 30, handle, 13, 1)
    assert kind == p.FXP_STATUS
    assert status(payload)[1:] == (p.FX_FAILURE, "/big.bin: the transfer ran at under 4 KiB/s for 65 seconds; the file is closed")
    assert handle not in server.handles
    assert (root / "big.bin").stat().st_size == 100_000


def test_an_upload_at_a_steady_eight_kib_a_second_is_never_cut(session):
    server, stub, root, clock = session
    handle = open_file(server, stub, 1, "steady.bin", WRITE_CREATE)
    for i in range(300):  # 5 minutes
        assert write(server, stub, 2 + i, handle, i * 8192, b"z" * 8192)[1] == p.FX_OK, i
        clock.advance(1)
    assert handle in server.handles
    assert server.handles[handle].bytes == 300 * 8192


def test_a_handle_open_without_reads_or_writes_is_not_judged(session):
    # (The idle timer's business: an sshfs mount keeps files open.)
    server, stub, root, clock = session
    (root / "f").write_bytes(b"abc")
    handle = open_file(server, stub, 1, "f", p.FXF_READ)
    clock.advance(3600)
    kind, payload = read(server, stub, 2, handle, 0, 3)
    assert kind == p.FXP_DATA


# -- end to end: OpenSSH's sftp with its bandwidth limit (-l, Kbit/s) ---------


@pytest.mark.parametrize("way", ["put", "get"])
def test_openssh_sftp_slowed_under_the_floor_fails_and_above_it_is_whole(start_hub, tmp_path, way):
    pytest.importorskip("paramiko")
    from tests.test_e2e_sftp import home, sftp_batch

    hub = start_hub("--slow-transfer-window", "2")
    data = os.urandom(48 * 1024)
    (tmp_path / "local.bin").write_bytes(data)
    os.makedirs(home(hub), exist_ok=True)
    with open(os.path.join(home(hub), "remote.bin"), "wb") as f:
        f.write(data)
    command = "put local.bin up.bin\n" if way == "put" else "get remote.bin down.bin\n"
    # -l 16: 2 KiB/s, in 4 KiB requests one at a time: under the floor.
    slow = sftp_batch(hub, command, extra=("-l", "16", "-B", "4096", "-R", "1"), check=False, cwd=tmp_path)
    assert slow.returncode != 0
    assert "Failure" in slow.stderr  # (OpenSSH shows the status's name, not its text)
    lines = [line for line in hub.log.splitlines() if "under 4 KiB/s; the file is closed" in line]
    assert len(lines) == 1, lines
    if way == "put":
        assert not os.path.exists(os.path.join(home(hub), "up.bin"))  # a half upload is not stored
    # -l 128: 16 KiB/s, over the floor: the whole file, in ~3 s.
    sftp_batch(hub, command, extra=("-l", "128", "-B", "4096", "-R", "1"), cwd=tmp_path)
    got = os.path.join(home(hub), "up.bin") if way == "put" else str(tmp_path / "down.bin")
    with open(got, "rb") as f:
        assert f.read() == data


def test_openssh_sftp_get_read_a_few_octets_a_second_by_tcp_is_cut_off(start_hub, tmp_path):
    # The client asks for the file at full speed but its TCP takes the
    # answers at 200 octets/s (a ProxyCommand with a 4 KiB receive buffer
    # reading slowly once logged in): the SSH connection is reset by the
    # slow-reader watch (pace.py), and the session's handles go with it.
    import subprocess
    import sys

    from tests.hubprocess import ROOT
    from tests.test_e2e_sftp import home, sftp_batch

    hub = start_hub("--slow-transfer-window", "2")
    os.makedirs(home(hub), exist_ok=True)
    with open(os.path.join(home(hub), "big.bin"), "wb") as f:
        f.write(os.urandom(4 * 1024 * 1024))
    pipe = f"{sys.executable} {os.path.join(ROOT, 'tests', 'slowpipe.py')} 127.0.0.1 {hub.ports['sftp']} 20000 200"
    done = sftp_batch(hub, "get big.bin got.bin\n", extra=("-o", f"ProxyCommand={pipe}"), check=False, cwd=tmp_path)
    assert done.returncode != 0  # (it sees the reset once it has read, slowly, what its buffers held)
    lines = [line for line in hub.log.splitlines() if "under 4 KiB/s; closing" in line]
    assert len(lines) == 1 and "sftp" in lines[0], lines
