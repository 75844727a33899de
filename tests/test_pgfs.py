"""
The FTP/SFTP file system in PostgreSQL (C{--ftp-filesystem
postgresql:DSN}): the disk backend's confinement and upload rules, checked
on both backends side by side; the disk backend's end-to-end FTP tests
that only speak FTP, run again on a hub on PostgreSQL; and a file uploaded
through one hub downloaded byte-exact over FTP and SFTP from another.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct

import psycopg
import pytest
from twisted.protocols import ftp

from tests.test_e2e_ftp import (  # noqa: F401 - run again here, on PostgreSQL
    login,
    random_50mb,
    retr,
    test_appe_appends,
    test_bare_nlst_and_nlst_dot_in_a_folder_with_a_dash,
    test_mlsd_mlst_and_list_show_the_facts,
    test_upload_cut_by_a_reset_data_connection_never_shows_under_its_name,
)
from tests.test_e2e_sftp import paramiko_client
from tests.test_ftp_units import result_of
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.ftp.vfs import DiskShell, filesystem_factories, partial_name

MB = 1024 * 1024


@pytest.fixture
def hub(start_hub, pg_dsn):
    """The FTP tests' hub, with its files in PostgreSQL."""
    return start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}")


@pytest.fixture(params=["disk", "postgresql"])
def shell_maker(request, tmp_path):
    """C{make(readonly=False)}: alice's shell on each backend, her home empty."""
    if request.param == "disk":
        def make(readonly=False):
            home = tmp_path / "home"
            home.mkdir(exist_ok=True)
            return DiskShell(str(home), readonly=readonly)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        fs = filesystem_factories()["postgresql"].make_filesystem(str(tmp_path), dsn)

        def make(readonly=False):
            shell = fs.shell_for(AccountBook(["localhost"]).add("alice", "pw"))
            shell.readonly = readonly
            return shell

        request.addfinalizer(fs.db.close)
    return make


def names(shell, path=()):
    return [n for n, _ in result_of(shell.list(list(path), ("size",)))]


def write_hidden(shell, path, data, offset=0, append=False):
    """Start an upload and stop before it completes (no 226)."""
    w = result_of(shell.openForWritingAt(path, offset, append))
    w.write(data)
    if hasattr(w, "file"):
        w.file.close()  # the disk writer's fail() syncs in a thread
    else:
        result_of(w.fail(ConnectionError("cut")))
    return w


# -- the file system on both backends ---------------------------------------------


def test_odd_segments_and_parents_are_refused_on_both_backends(shell_maker):
    shell = shell_maker()
    for path in ([".."], ["a/b"], ["x\0"], [""], ["."], ["..", "etc", "passwd"]):
        assert result_of(shell.openForReadingAt(path, 0)).check(ftp.PermissionDeniedError), path
        assert result_of(shell.makeDirectory(path)).check(ftp.PermissionDeniedError), path
    assert names(shell) == []


def test_read_only_shell_refuses_every_change_on_both_backends(shell_maker):
    shell = shell_maker(readonly=True)
    for d in (
        shell.makeDirectory(["d"]),
        shell.removeFile(["f"]),
        shell.removeDirectory(["d"]),
        shell.rename(["a"], ["b"]),
        shell.openForWritingAt(["f"], 0, False),
        shell.uniqueName(["f"]),
    ):
        assert result_of(d).check(ftp.PermissionDeniedError)
    assert names(shell) == []


def test_interrupted_upload_is_hidden_and_sized_for_rest_on_both_backends(shell_maker):
    shell = shell_maker()
    write_hidden(shell, ["new"], b"x" * 1000)
    assert names(shell) == []
    assert result_of(shell.stat(["new"], ("size",))) == [1000]
    assert result_of(shell.openForReadingAt(["new"], 0)).check(ftp.FileNotFoundError)
    # APPE continues the partial upload; a plain STOR then starts afresh
    write_hidden(shell, ["new"], b"y" * 24, append=True)
    assert result_of(shell.stat(["new"], ("size",))) == [1024]
    w = result_of(shell.openForWritingAt(["new"], 0, False))
    w.discard()
    assert result_of(shell.stat(["new"], ("size",))).check(ftp.FileNotFoundError)


def test_folders_files_and_their_errors_match_on_both_backends(shell_maker):
    shell = shell_maker()
    assert result_of(shell.makeDirectory(["d"])) is None
    assert result_of(shell.makeDirectory(["d"])).check(ftp.FileExistsError)
    assert result_of(shell.makeDirectory(["nope", "d"])).check(ftp.FileNotFoundError)
    assert result_of(shell.access(["d"])) is None
    assert result_of(shell.openForReadingAt(["d"], 0)).check(ftp.IsADirectoryError)
    assert result_of(shell.removeFile(["d"])).check(ftp.IsADirectoryError)
    assert result_of(shell.stat(["d"], ("directory",))) == [True]
    assert result_of(shell.rename(["d"], ["d", "inside"])).check(ftp.FTPCmdError)
    assert result_of(shell.rename(["d"], ["e"])) is None
    assert names(shell) == ["e"]
    assert result_of(shell.removeDirectory(["e"])) is None
    # as rmdir(2) on a missing name answers (ENOENT), on disk too
    assert result_of(shell.removeDirectory(["e"])).check(ftp.FileNotFoundError)
    assert result_of(shell.uniqueName(["f"])) == ["f.1"]


# -- end to end ---------------------------------------------------------------------


def test_file_uploaded_over_ftp_on_one_hub_downloads_byte_exact_from_another(start_hub, pg_dsn, random_50mb):
    a = start_hub("--ftp-filesystem", "postgresql", "--store", f"postgresql:{pg_dsn}")
    b = start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}")
    f = login(a)
    f.mkd("up")
    f.storbinary("STOR up/big.bin", io.BytesIO(random_50mb))
    f.quit()
    g = login(b)
    assert [n.rpartition("/")[2] for n in g.nlst("up")] == ["big.bin"]
    g.voidcmd("TYPE I")  # (nlst set TYPE A)
    assert g.size("up/big.bin") == len(random_50mb)
    assert hashlib.sha256(retr(g, "up/big.bin")).digest() == hashlib.sha256(random_50mb).digest()
    # a restarted download picks up at its offset
    assert retr(g, "up/big.bin", rest=len(random_50mb) - 10) == random_50mb[-10:]
    g.quit()
    client = paramiko_client(b)
    try:
        sftp = client.open_sftp()
        with sftp.open("up/big.bin", "rb") as remote:
            remote.prefetch()
            got = remote.read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(random_50mb).digest()
        with sftp.open("from-sftp.bin", "wb") as remote:
            remote.write(random_50mb[: 3 * MB + 5])
    finally:
        client.close()
    f = login(a)
    assert retr(f, "from-sftp.bin") == random_50mb[: 3 * MB + 5]
    f.quit()
    with psycopg.connect(pg_dsn) as conn:
        # the bytes are a large object, not a column value
        (objects,) = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    assert objects == 2


def test_rest_resumes_an_upload_on_another_hub(start_hub, pg_dsn):
    a = start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}")
    b = start_hub("--ftp-filesystem", f"postgresql:{pg_dsn}")
    data = os.urandom(300_000)
    f = login(a)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR part.bin")
    conn.sendall(data[:100_000])
    for _ in range(500):
        if "100000 bytes so far" in f.sendcmd("STAT"):
            break
    # the client dies mid-upload (a reset): what arrived is kept, hidden
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert f.getline().startswith("426")
    assert "part.bin" not in f.nlst()
    g = login(b)
    g.voidcmd("TYPE I")
    assert g.size("part.bin") == 100_000
    g.storbinary("STOR part.bin", io.BytesIO(data[100_000:]), rest=100_000)
    assert retr(f, "part.bin") == data
    assert f.nlst() == ["part.bin"]
