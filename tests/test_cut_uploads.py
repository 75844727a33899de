# -*- test-case-name: tests.test_cut_uploads -*-
"""
An upload cut before it completes (the hub stopped, the data connection
reset, the SSH session gone) is never seen under its name, on FTP, FTPS
and SFTP, on the disk and the PostgreSQL file system alike (README:
"Partial uploads are never seen as files"): over FTP and FTPS what arrived
is kept hidden (.NAME.mailhub-part) for a resume (SIZE, then REST/APPE);
an SFTP upload whose session ends before its CLOSE is removed (SFTP
clients resume from the size under the name, which a hidden part does not
have). An FTPS upload cut by a stop of the hub or by a reset used to be
taken as complete and put in place under its name, half of it.
"""

from __future__ import annotations

import ftplib
import os
import time

import pytest

from tests.hubprocess import client_context
from tests.test_e2e_sftp import paramiko_client


@pytest.fixture(params=["disk", "postgresql"])
def cut_hub(request, start_hub):
    if request.param == "disk":
        hub = start_hub()
        hub.file_names = lambda: os.listdir(os.path.join(hub.data_dir, "ftp", "localhost", "alice"))
        return hub
    dsn = request.getfixturevalue("pg_dsn")
    hub = start_hub("--ftp-filesystem", f"postgresql:{dsn}")

    def file_names():
        import psycopg

        with psycopg.connect(dsn) as conn:
            return [name for (name,) in conn.execute("SELECT name FROM ftp_node WHERE NOT is_folder")]

    hub.file_names = file_names
    return hub


def _login(hub, tls=False):
    f = ftplib.FTP_TLS(timeout=30, context=client_context()) if tls else ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    if tls:
        f.auth()
    f.login("alice", "secret")
    if tls:
        f.prot_p()
    return f


@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_an_ftp_upload_cut_by_a_stop_of_the_hub_is_kept_hidden_for_a_resume(cut_hub, tls):
    hub = cut_hub
    f = _login(hub, tls)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR cut.bin")
    conn.sendall(b"y" * 100_000)
    for _ in range(500):  # until the server says it has the bytes
        if "100000 bytes so far" in f.sendcmd("STAT"):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the server never counted the 100000 bytes")
    hub.restart()
    try:
        conn.close()
    except OSError:
        pass
    f = _login(hub, tls)
    assert "cut.bin" not in f.nlst()
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR cut.bin", lambda _: None)
    assert f.size("cut.bin") == 100_000
    f.voidcmd("TYPE I")
    import io

    f.storbinary("STOR cut.bin", io.BytesIO(b"z" * 50_000), rest=100_000)
    got = bytearray()
    f.retrbinary("RETR cut.bin", got.extend)
    assert bytes(got) == b"y" * 100_000 + b"z" * 50_000
    f.quit()
    assert "Traceback" not in hub.log


def test_an_sftp_upload_cut_by_a_stop_of_the_hub_never_shows_under_its_name(cut_hub):
    hub = cut_hub
    client = paramiko_client(hub)
    sftp = client.open_sftp()
    handle = sftp.open("cut.bin", "wb")
    handle.write(b"y" * 100_000)
    handle.flush()
    sftp.stat(".")  # (the writes answered before it)
    hub.restart()
    client.close()
    client = paramiko_client(hub)
    sftp = client.open_sftp()
    assert "cut.bin" not in sftp.listdir(".")
    with pytest.raises(FileNotFoundError):
        sftp.stat("cut.bin")
    client.close()
    assert not [n for n in hub.file_names() if "cut" in n]  # (removed, as a session that ends before CLOSE)
    assert "Traceback" not in hub.log


@pytest.mark.parametrize("tls", [False, True], ids=["ftp", "ftps"])
def test_an_ftp_upload_cut_by_a_reset_data_connection_is_kept_hidden(cut_hub, tls):
    import socket
    import struct

    hub = cut_hub
    f = _login(hub, tls)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR cut.bin")
    conn.sendall(b"y" * 100_000)
    for _ in range(500):
        if "100000 bytes so far" in f.sendcmd("STAT"):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the server never counted the 100000 bytes")
    # The client dies mid-upload: a reset, not a close that ends a file.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert f.getline().startswith("426")
    assert "cut.bin" not in f.nlst()
    f.voidcmd("TYPE I")
    assert f.size("cut.bin") == 100_000
    f.quit()


def test_an_ftps_upload_closed_without_close_notify_still_ends_the_file(start_hub):
    # Many FTPS clients close the data connection without TLS's
    # close_notify: a TCP close is still the end of the file (RFC 959 §3.4).
    hub = start_hub()
    f = _login(hub, tls=True)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR whole.bin")
    conn.sendall(b"w" * 5000)
    conn.close()  # (an SSLSocket's close sends no close_notify)
    assert f.getline().startswith("226")
    got = bytearray()
    f.retrbinary("RETR whole.bin", got.extend)
    assert bytes(got) == b"w" * 5000
    f.quit()


def test_an_sftp_upload_whose_session_ends_before_close_is_removed(cut_hub):
    # As ProFTPD's mod_sftp removes an aborted upload: an SFTP client
    # resumes (reput) from the size of the file under its name, so a
    # hidden part would only take room.
    hub = cut_hub
    client = paramiko_client(hub)
    sftp = client.open_sftp()
    handle = sftp.open("gone.bin", "wb")
    handle.write(b"y" * 100_000)
    handle.flush()
    sftp.stat(".")
    client.get_transport().sock.close()  # the client dies: no CLOSE
    for _ in range(200):  # until the hub has seen the session end
        if not [n for n in hub.file_names() if "gone" in n]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the partial upload was not removed: {hub.file_names()}")
    client = paramiko_client(hub)
    sftp = client.open_sftp()
    assert "gone.bin" not in sftp.listdir(".")
    with pytest.raises(FileNotFoundError):
        sftp.stat("gone.bin")
    # and a new upload of the name starts afresh
    with sftp.open("gone.bin", "wb") as again:
        again.write(b"z" * 10)
    assert sftp.stat("gone.bin").st_size == 10
    client.close()
