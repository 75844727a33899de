"""
SFTP on the PostgreSQL file system (C{--ftp-filesystem postgresql}):
writes at any offset, in any order (pipelined clients such as OpenSSH's
sftp keep many WRITEs in flight; others write out of order), and the file
reads back byte-exact through another hub on the same database.
"""

from __future__ import annotations

import hashlib
import os
import random

from tests.test_e2e_sftp import paramiko_client, sftp_batch


def two_hubs(start_hub, pg_dsn):
    return [start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql") for _ in range(2)]


def test_paramiko_writes_out_of_order_and_with_a_hole_read_back_byte_exact_on_another_hub(start_hub, pg_dsn):
    a, b = two_hubs(start_hub, pg_dsn)
    content = os.urandom(3 * 1024 * 1024 + 12345)
    chunk = 256 * 1024
    pieces = [(at, content[at : at + chunk]) for at in range(0, len(content), chunk)]
    order = list(range(len(pieces)))
    random.Random(15).shuffle(order)
    # The last piece first (a hole before it), then the rest shuffled.
    order.remove(len(pieces) - 1)
    order.insert(0, len(pieces) - 1)
    client = paramiko_client(a)
    sftp = client.open_sftp()
    with sftp.open("shuffled.bin", "wb") as f:
        for i in order:
            at, data = pieces[i]
            f.seek(at)
            f.write(data)
    assert sftp.stat("shuffled.bin").st_size == len(content)
    client.close()
    client = paramiko_client(b)
    sftp = client.open_sftp()
    with sftp.open("shuffled.bin", "rb") as f:
        got = f.read()
    assert got == content
    # Overwriting a middle part of an upload in progress: the last write wins.
    with sftp.open("patched.bin", "wb") as f:
        f.write(b"a" * 1000)
        f.seek(100)
        f.write(b"b" * 10)
        f.seek(1000)
        f.write(b"c")
    with sftp.open("patched.bin", "rb") as f:
        assert f.read() == b"a" * 100 + b"b" * 10 + b"a" * 890 + b"c"
    client.close()
    assert "Traceback" not in a.log + b.log


def test_openssh_sftp_pipelined_put_reads_back_byte_exact_on_another_hub(start_hub, pg_dsn, tmp_path):
    a, b = two_hubs(start_hub, pg_dsn)
    content = os.urandom(6 * 1024 * 1024 + 777)
    source = tmp_path / "big.bin"
    source.write_bytes(content)
    # 64 requests in flight, 32 KB each: many WRITEs outstanding at once.
    sftp_batch(a, f"put {source} big.bin\n", extra=("-R", "64", "-B", "32768"))
    back = tmp_path / "back.bin"
    sftp_batch(b, f"get big.bin {back}\n", extra=("-R", "64", "-B", "65536"))
    assert hashlib.sha256(back.read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()
    assert "Traceback" not in a.log + b.log


def test_times_set_over_sftp_and_ftp_are_kept_and_modes_stay_fixed(start_hub, pg_dsn, tmp_path):
    # sftp put -p said "remote fsetstat: Operation unsupported". This file
    # system keeps a modification time but fixed modes (0644): the mode is
    # left as it is, as SFTPGo's setstat_mode 2 does on storage without modes.
    import ftplib

    a, b = two_hubs(start_hub, pg_dsn)
    source = tmp_path / "kept.txt"
    source.write_bytes(b"kept\n")
    os.chmod(source, 0o600)
    os.utime(source, (1_500_000_000, 1_500_000_000))
    done = sftp_batch(a, f"put -p {source} kept.txt\n")
    assert "setstat" not in done.stderr, done.stderr
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", b.ports["ftp"])
    f.login("alice", "secret")
    try:
        assert f.sendcmd("MDTM kept.txt") == "213 20170714024000"
        assert f.sendcmd("MFMT 20190101000000 kept.txt") == "213 Modify=20190101000000; kept.txt"
        assert f.sendcmd("MDTM kept.txt") == "213 20190101000000"
        assert f.sendcmd("SITE CHMOD 600 kept.txt").startswith("202 ")
        f.sendcmd("OPTS MLST type;UNIX.mode;")
        assert "UNIX.mode=0644;" in f.sendcmd("MLST kept.txt")
    finally:
        f.quit()
    assert "Traceback" not in a.log + b.log
