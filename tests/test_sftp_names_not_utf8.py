"""
File names that are not UTF-8 over SFTP, with OpenSSH's sftp against the
real hub: FTP passes such names through as octets (surrogate escapes), so
one an FTP client stored, or one put on disk, must not stop SFTP from
listing the folder it is in, and an SFTP client's own such name is stored
as the octets it sent (as OpenSSH's sftp-server does).
"""

from __future__ import annotations

import os
import socket
import subprocess

from tests.test_e2e_sftp import PASSWORD_ONLY, SSH_OPTIONS, _need, ftp_login, home


def sftp_octets(hub, commands: bytes, cwd) -> subprocess.CompletedProcess:
    """OpenSSH's sftp in batch mode, its commands and output as octets (names that are not UTF-8)."""
    args = [_need("sshpass"), "-p", "secret", _need("sftp"), *SSH_OPTIONS, *PASSWORD_ONLY]
    args += ["-P", str(hub.ports["sftp"]), "-b", "-", "alice@127.0.0.1"]
    return subprocess.run(args, input=commands, capture_output=True, timeout=60, cwd=cwd)


def ftp_stor_raw(hub, name: bytes, data: bytes) -> bytes:
    """STOR a file under a name of raw octets (ftplib would encode it), over a raw control connection; the final reply."""
    control = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=20)
    lines = control.makefile("rb")

    def reply() -> bytes:
        line = lines.readline()
        while line[3:4] == b"-":
            line = lines.readline()
        return line

    def command(text: bytes) -> bytes:
        control.sendall(text + b"\r\n")
        return reply()

    try:
        reply()
        command(b"USER alice")
        assert command(b"PASS secret").startswith(b"230")
        command(b"TYPE I")
        passive = command(b"EPSV")
        port = int(passive.split(b"|||")[1].split(b"|")[0])
        data_connection = socket.create_connection(("127.0.0.1", port), timeout=20)
        assert command(b"STOR " + name)[:1] == b"1"  # 125 or 150
        data_connection.sendall(data)
        data_connection.close()
        return reply()
    finally:
        control.close()


def test_a_folder_holding_a_name_ftp_stored_that_is_not_utf8_lists_and_reads_over_sftp(start_hub, tmp_path):
    hub = start_hub()
    assert ftp_stor_raw(hub, b"caf\xe9.txt", b"latin-1 name\n").startswith(b"226")
    f = ftp_login(hub)
    f.storbinary("STOR plain.txt", __import__("io").BytesIO(b"plain\n"))
    f.quit()
    done = sftp_octets(hub, b"ls -1\nget caf\xe9.txt got.txt\nrename caf\xe9.txt cafe.txt\nls -1\n", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"Couldn't read directory" not in done.stdout + done.stderr
    assert b"caf\\351.txt" in done.stdout and b"plain.txt" in done.stdout
    assert (tmp_path / "got.txt").read_bytes() == b"latin-1 name\n"
    assert sorted(os.listdir(home(hub))) == ["cafe.txt", "plain.txt"]


def test_a_name_sftp_sends_that_is_not_utf8_is_stored_as_its_octets(start_hub, tmp_path):
    hub = start_hub()
    (tmp_path / "up.txt").write_bytes(b"up\n")
    done = sftp_octets(hub, b"put up.txt r\xe9sum\xe9.txt\n", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(os.fsencode(home(hub))) == [b"r\xe9sum\xe9.txt"]
