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
import pytest

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


def test_times_and_modes_set_over_sftp_and_ftp_are_kept_and_shown_on_another_hub(start_hub, pg_dsn, tmp_path):
    # This file system kept a modification time but fixed modes: SITE
    # CHMOD answered 202 and every file listed as 0644 whatever sftp put -p
    # or chmod asked. Modes are kept now, as on disk (vfs.kept_mode).
    import ftplib
    import stat as statmod

    a, b = two_hubs(start_hub, pg_dsn)
    source = tmp_path / "kept.txt"
    source.write_bytes(b"kept\n")
    os.chmod(source, 0o600)
    os.utime(source, (1_500_000_000, 1_500_000_000))
    done = sftp_batch(a, f"mkdir sub\nput -p {source} sub/kept.txt\n")
    assert "setstat" not in done.stderr, done.stderr
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", b.ports["ftp"])
    f.login("alice", "secret")
    try:
        assert f.sendcmd("MDTM sub/kept.txt") == "213 20170714024000"
        f.sendcmd("OPTS MLST type;UNIX.mode;modify;")
        assert "UNIX.mode=0600;" in f.sendcmd("MLST sub/kept.txt")
        assert f.sendcmd("MFMT 20190101000000 sub/kept.txt") == "213 Modify=20190101000000; sub/kept.txt"
        assert f.sendcmd("MDTM sub/kept.txt") == "213 20190101000000"
        assert f.sendcmd("SITE CHMOD 640 sub/kept.txt") == "200 SITE CHMOD: the mode is now 0640."
        assert f.sendcmd("SITE CHMOD 750 sub") == "200 SITE CHMOD: the mode is now 0750."
        listed = []
        f.retrlines("LIST sub", listed.append)
        assert len(listed) == 1 and listed[0].startswith("-rw-r----- "), listed
        facts = dict(f.mlsd("", ["type", "UNIX.mode", "modify"]))
        assert facts["sub"]["unix.mode"] == "0750", facts
        folder_time = facts["sub"]["modify"]
    finally:
        f.quit()
    # SFTP STAT on the first hub: the mode and time set over FTP on the other.
    client = paramiko_client(a)
    sftp = client.open_sftp()
    st = sftp.stat("sub/kept.txt")
    assert statmod.S_IMODE(st.st_mode) == 0o640 and st.st_mtime == 1_546_300_800
    assert statmod.S_IMODE(sftp.stat("sub").st_mode) == 0o750
    sftp.chmod("sub/kept.txt", 0o604)
    assert statmod.S_IMODE(sftp.stat("sub/kept.txt").st_mode) == 0o604
    # A folder's time moves when an entry in it is added, as on disk.
    import time

    time.sleep(1.1)
    with sftp.open("sub/new.txt", "wb") as new:
        new.write(b"new")
    client.close()
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", b.ports["ftp"])
    f.login("alice", "secret")
    try:
        assert dict(f.mlsd("", ["modify"]))["sub"]["modify"] > folder_time
        assert f.sendcmd("MDTM sub/kept.txt") == "213 20190101000000"  # (its own time unmoved)
    finally:
        f.quit()
    assert "Traceback" not in a.log + b.log


@pytest.mark.parametrize(
    "by_hand, workers",
    [(True, False), (False, False), (False, True)],
    ids=["db-upgrade", "at-start", "at-start-two-workers"],
)
def test_a_file_database_made_before_modes_is_migrated_and_its_files_keep_0644(start_hub, pg_dsn, by_hand, workers):
    import ftplib

    import psycopg

    from tests.test_cluster import admin
    from twisted_mailhub.cluster import schema

    # The cluster tables as version 1 made them, with a file in alice's home.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mailhub_cluster_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO mailhub_cluster_schema VALUES (1)")
        conn.execute(schema.MIGRATIONS[0])
        root = conn.execute("INSERT INTO ftp_node (parent_id, name, is_folder, modified) VALUES (NULL, '', true, 0) RETURNING id").fetchone()[0]
        domain = conn.execute("INSERT INTO ftp_node (parent_id, name, is_folder, modified) VALUES (%s, 'localhost', true, 0) RETURNING id", (root,)).fetchone()[0]
        home = conn.execute("INSERT INTO ftp_node (parent_id, name, is_folder, modified) VALUES (%s, 'alice', true, 0) RETURNING id", (domain,)).fetchone()[0]
        oid = conn.execute("SELECT lo_from_bytea(0, 'old\n'::bytea)").fetchone()[0]
        conn.execute("INSERT INTO ftp_node (parent_id, name, is_folder, size, modified, content) VALUES (%s, 'old.txt', false, 4, 1500000000, %s)", (home, oid))
    if by_hand:
        upgraded = admin("db", "upgrade", "--dsn", pg_dsn)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "cluster tables: version 1 -> 2" in upgraded.stdout, upgraded.stdout
    # Without it, the hub migrates them at its start (before: it refused
    # to start, asking for 'mailhub-admin db upgrade').
    # Two workers start at once on it, each checking the tables: they
    # migrate them once (pgschema.migrate's advisory lock) and both serve.
    more = ("--workers", "2", "--store", f"postgresql:{pg_dsn}") if workers else ()
    hub = start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}", *more)
    with psycopg.connect(pg_dsn) as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    try:
        f.sendcmd("OPTS MLST type;UNIX.mode;")
        assert "UNIX.mode=0644;" in f.sendcmd("MLST old.txt")
        assert f.sendcmd("SITE CHMOD 600 old.txt") == "200 SITE CHMOD: the mode is now 0600."
        assert "UNIX.mode=0600;" in f.sendcmd("MLST old.txt")
        assert f.sendcmd("MDTM old.txt") == "213 20170714024000"
    finally:
        f.quit()
    assert "Traceback" not in hub.log and "DuplicateColumn" not in hub.log


def test_a_name_that_is_not_utf8_is_refused_in_words_by_ftp_and_sftp(start_hub, pg_dsn):
    """
    The PostgreSQL file system keeps names as UTF-8 text: a name with an
    octet that is not UTF-8 (FTP from a Latin-1 system, SFTP as OpenSSH
    sends a name's octets) is refused with a reason, FTP 553 and SFTP
    SSH_FX_FAILURE, and the session goes on. FTP answered "451 local
    error" with a traceback in the log.
    """
    import ftplib
    import io
    import struct

    import pytest

    from tests.test_e2e_sftp import ftp_login

    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")
    f = ftp_login(hub)
    try:
        f.encoding = "latin-1"
        with pytest.raises(ftplib.error_perm, match=r"^553 .*not UTF-8"):
            f.storbinary("STOR caf\xe9.txt", io.BytesIO(b"x"))
        f.storbinary("STOR cafe.txt", io.BytesIO(b"x"))
    finally:
        f.close()
    client = paramiko_client(hub)
    try:
        channel = client.get_transport().open_session()
        channel.invoke_subsystem("sftp")
        channel.sendall(struct.pack(">IBI", 5, 1, 3))
        assert channel.recv(4096)[4] == 2  # VERSION
        body = bytes([14]) + struct.pack(">II", 7, 4) + b"d\xffx\xfe" + struct.pack(">I", 0)  # MKDIR
        channel.sendall(struct.pack(">I", len(body)) + body)
        reply = channel.recv(4096)
        assert reply[4] == 101 and struct.unpack(">II", reply[5:13]) == (7, 4)  # STATUS FAILURE
        assert b"not UTF-8" in reply
        assert client.open_sftp().listdir(".") == ["cafe.txt"]
    finally:
        client.close()
    assert "Traceback" not in hub.log
