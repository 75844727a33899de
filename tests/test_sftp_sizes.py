"""
SFTP SETSTAT/FSETSTAT of a size (what OpenSSH's scp and sshfs's truncate
send): a file may be cut or grown as far as a WRITE may leave a hole and the
account's quota has room, never to a terabyte of bytes nobody wrote, and a
SETSTAT makes no file.
"""

from __future__ import annotations

import io
import os

import pytest

from tests.test_e2e_sftp import home

paramiko = pytest.importorskip("paramiko")


def sftp(hub):
    t = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    t.connect(username="alice", password="secret")
    return t, paramiko.SFTPClient.from_transport(t)


def test_a_size_far_past_the_end_is_refused_by_path_and_by_handle(start_hub):
    from twisted_mailhub.sftp.protocol import MAX_HOLE

    hub = start_hub()
    t, s = sftp(hub)
    try:
        s.putfo(io.BytesIO(b"hello" * 1000), "f")
        s.truncate("f", 10)  # scp's cut: allowed
        assert s.stat("f").st_size == 10
        with pytest.raises(IOError, match="bytes never written past the end"):
            s.truncate("f", 10**12)
        assert s.stat("f").st_size == 10
        s.truncate("f", 10 + MAX_HOLE)  # as far as a WRITE may leave a hole
        assert s.stat("f").st_size == 10 + MAX_HOLE
        with s.open("g", "w") as g:
            g.write(b"abc")
            g.flush()
            with pytest.raises(IOError, match="bytes never written past the end"):
                g.truncate(10**12)
        assert s.stat("g").st_size == 3
        with pytest.raises(IOError):
            s.truncate("missing", 100)
        assert "missing" not in s.listdir(".")
    finally:
        s.close()
        t.close()
    assert os.path.getsize(os.path.join(home(hub), "f")) == 10 + MAX_HOLE
    assert os.path.getsize(os.path.join(home(hub), "g")) == 3
    assert not os.path.exists(os.path.join(home(hub), "missing"))


def test_growing_a_file_past_the_accounts_quota_is_refused(start_hub):
    hub = start_hub("--quota", "3M")
    t, s = sftp(hub)
    try:
        s.putfo(io.BytesIO(b"hello" * 1000), "f")
        with pytest.raises(IOError, match="quota exceeded"):
            s.truncate("f", 8 * 1024 * 1024)
        assert s.stat("f").st_size == 5000
    finally:
        s.close()
        t.close()
