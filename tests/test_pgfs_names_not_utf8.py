"""
Names that are not UTF-8 on the PostgreSQL file system: FTP and SFTP pass
such names through as octets (the disk file system keeps them), but the
database keeps names as text. A STOR, MKD or RNTO of one is refused for
good with 553 and the reason (RFC 959 §4.2), a lookup of one is 550 "no
such file", and SFTP says the same; before, each was "451 ... local error
in processing" (a temporary error a client retries for ever) and a
traceback in the log.
"""

from __future__ import annotations

import socket

from tests.test_sftp_names_not_utf8 import sftp_octets


def ftp_session(hub, commands: list[bytes]) -> list[bytes]:
    """A raw FTP control connection (names as octets): the final reply to each command; a STOR gets its data over EPSV."""
    control = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=20)
    lines = control.makefile("rb")

    def reply() -> bytes:
        line = lines.readline()
        while line[3:4] == b"-":
            line = lines.readline()
        return line

    answers = []
    try:
        reply()
        for command in commands:
            if command.startswith(b"STOR "):
                control.sendall(b"EPSV\r\n")
                port = int(reply().split(b"|||")[1].split(b"|")[0])
                data = socket.create_connection(("127.0.0.1", port), timeout=20)
                control.sendall(command + b"\r\n")
                first = reply()
                if first[:1] == b"1":
                    data.sendall(b"words\n")
                    data.close()
                    first = reply()
                data.close()
                answers.append(first)
                continue
            control.sendall(command + b"\r\n")
            answers.append(reply())
    finally:
        control.close()
    return answers


def test_ftp_refuses_a_name_that_is_not_utf8_for_good_with_its_reason(start_hub, pg_dsn):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")
    answers = ftp_session(hub, [
        b"USER alice", b"PASS secret", b"STOR ok.txt",
        b"STOR caf\xe9.txt", b"MKD d\xe9", b"RNFR ok.txt", b"RNTO r\xe9.txt", b"SIZE caf\xe9.txt", b"RETR caf\xe9.txt",
    ])
    assert answers[2].startswith(b"226")
    reason = b"the name is not UTF-8, and this file store keeps names in UTF-8; choose another."
    assert answers[3] == b"553 STOR /caf<E9>.txt: " + reason + b"\r\n"
    assert answers[4] == b"553 MKD /d<E9>: " + reason + b"\r\n"
    assert answers[6] == b"553 RNTO /r<E9>.txt: " + reason + b"\r\n"
    assert answers[7].startswith(b"550 SIZE /caf<E9>.txt: no such file")
    assert answers[8].startswith(b"550 RETR /caf<E9>.txt: no such file")
    assert "Traceback" not in hub.log and "went wrong" not in hub.log


def test_sftp_says_why_a_name_that_is_not_utf8_is_refused(start_hub, pg_dsn, tmp_path):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql", "--transcript")
    (tmp_path / "up.txt").write_bytes(b"up\n")
    done = sftp_octets(hub, b"-put up.txt caf\xe9.txt\nput up.txt cafe.txt\nls -1\n", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split(b"ls -1\n", 1)[1] == b"cafe.txt\n"
    assert "Traceback" not in hub.log and "went wrong" not in hub.log
    # The session record's reason (OpenSSH's client shows only "Failure").
    assert "/caf\\xe9.txt: the name is not UTF-8" in hub.log
