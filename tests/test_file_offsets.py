"""
A restart marker or read offset far past the end of a file (up to and past
2**63, where the OS's seek and pread fail) is answered as any offset past
the end is: FTP REST + RETR gets 554 on the disk file system as on
PostgreSQL's (was a #critical traceback and 451, or "a folder cannot go
inside itself"), an SFTP READ gets EOF (was that same wrong reason). REST
takes ASCII digits only (int() took "1_0", "+5", other scripts' digits).
"""

from __future__ import annotations

import ftplib
import io

import pytest

paramiko = pytest.importorskip("paramiko")

FAR = (5000, 2**63 - 1, 2**63, 10**30)


def test_rest_far_past_the_end_then_retr_is_554_and_the_session_goes_on(start_hub):
    hub = start_hub("--no-web", "--no-webs", "--no-sftp")
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.storbinary("STOR f", io.BytesIO(b"a" * 1000))
    for offset in FAR:
        assert f.sendcmd(f"REST {offset}").startswith("350")
        with pytest.raises(ftplib.error_perm, match=f"^554 RETR f: restart point {offset} is past the end of the file \\(1000 bytes\\)"):
            f.retrbinary("RETR f", lambda _: None)
    assert f.sendcmd("REST 998").startswith("350")
    got = io.BytesIO()
    f.retrbinary("RETR f", got.write)
    assert got.getvalue() == b"aa"
    f.quit()
    assert "Traceback" not in hub.log and "#critical" not in hub.log


@pytest.mark.parametrize("offset", ["1_0", "+5", "\u0661\u0662", "0x10", "-5", ""])
def test_rest_takes_ascii_digits_only(hub, offset):
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.encoding = "utf-8"
    with pytest.raises(ftplib.error_perm, match="^501 REST (wants|needs) a byte offset"):  # (needs: none given)
        f.sendcmd("REST " + offset)
    f.quit()


def test_an_sftp_read_far_past_the_end_is_eof(start_hub):
    hub = start_hub("--no-web", "--no-webs")
    t = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    t.connect(username="alice", password="secret")
    s = paramiko.SFTPClient.from_transport(t)
    try:
        s.putfo(io.BytesIO(b"a" * 1000), "f")
        with s.open("f", "rb") as r:
            for offset in (5000, 2**63 - 1, 2**63, 2**64 - 1):
                r.seek(offset)
                assert r.read(10) == b"", offset
            r.seek(995)
            assert r.read(10) == b"aaaaa"
    finally:
        s.close()
        t.close()
