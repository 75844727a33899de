"""
End-to-end FTP against the real C{twistd mailhub}, with ftplib, curl, lftp
and raw sockets: what a user sees, and the files on disk.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.rawclient import trickle
from tests.hubprocess import client_context

MB = 1024 * 1024


def home(hub, user="alice", domain="localhost"):
    return os.path.join(hub.data_dir, "ftp", domain, user)


def login(hub, user="alice", password="secret", cls=ftplib.FTP, **kw) -> ftplib.FTP:
    f = cls(timeout=30, **kw)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login(user, password)
    return f


def tls_login(hub, user="alice", password="secret") -> ftplib.FTP_TLS:
    f = login(hub, user, password, cls=ftplib.FTP_TLS, context=client_context())
    f.prot_p()
    return f


def retr(f: ftplib.FTP, name: str, rest=None) -> bytes:
    out = io.BytesIO()
    f.retrbinary(f"RETR {name}", out.write, rest=rest)
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def random_50mb():
    return os.urandom(50 * MB)


def free_port_pair() -> int:
    """A port P with P - 1 free too (for the RFC 959 L-1 data port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port - 1))
        except OSError:
            continue
        return port
    pytest.skip("no free pair of adjacent ports")


def control(hub) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=10)
    s.makefile("rb").readline()
    return s


def ask(s: socket.socket, line: bytes) -> bytes:
    s.sendall(line + b"\r\n")
    return read_reply(s)


def read_reply(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        for line in lines[:-1]:
            if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
                return data


# -- login and the shared realm ------------------------------------------------


def test_account_logs_in_over_ftp_pop3_and_smtp_auth(hub):
    f = login(hub)
    assert f.pwd() == "/"
    f.storbinary("STOR hello.txt", io.BytesIO(b"hi\n"))
    f.quit()
    assert open(os.path.join(home(hub), "hello.txt"), "rb").read() == b"hi\n"
    assert "pop3" in hub.ports and "submission" in hub.ports, hub.ports
    if "pop3" in hub.ports:
        import poplib

        p = poplib.POP3("127.0.0.1", hub.ports["pop3"], timeout=10)
        p.user("alice")
        assert p.pass_("secret").startswith(b"+OK")
        p.quit()
    if "submission" in hub.ports:
        import smtplib

        s = smtplib.SMTP("127.0.0.1", hub.ports["submission"], timeout=10)
        s.ehlo()
        if "auth" not in s.esmtp_features:
            s.starttls(context=client_context())
            s.ehlo()
        code, _ = s.login("alice", "secret")
        assert code == 235
        s.quit()


def test_wrong_password_is_refused_and_slowed(hub):
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    with pytest.raises(ftplib.error_perm, match="530"):
        f.login("alice", "wrong")
    hub.wait_for_log(r"ftp login failed for 'alice'.*answer held")
    f.login("alice", "secret")
    assert f.pwd() == "/"


def test_textbook_session_lowercase_and_bare_lf(hub):
    s = control(hub)
    s.sendall(b"user alice\n")
    assert read_reply(s).startswith(b"331")
    assert ask(s, b"pass secret").startswith(b"230")
    assert ask(s, b"pwd").startswith(b'257 "/"')
    assert ask(s, b"frob").startswith(b"500")
    assert ask(s, b"syst").startswith(b"215 UNIX")
    assert ask(s, b"acct x").startswith(b"202")
    assert ask(s, b"quit").startswith(b"221")
    s.close()


def test_commands_before_login_get_530(hub):
    s = control(hub)
    assert ask(s, b"LIST").startswith(b"530")
    assert ask(s, b"PASS x").startswith(b"503")
    s.close()


# -- transfers ------------------------------------------------------------------


def test_50mb_round_trip_in_pasv_epsv_and_active_mode(hub, random_50mb):
    f = login(hub)
    want = sha(random_50mb)
    for mode, name in (("pasv", "p.bin"), ("epsv", "e.bin"), ("active", "a.bin")):
        f.set_pasv(mode != "active")
        # ftplib uses EPSV only for IPv6; force it with a raw EPSV transfer.
        if mode == "epsv":
            f.af = socket.AF_INET6
            f.storbinary(f"STOR {name}", io.BytesIO(random_50mb))
            got = retr(f, name)
            f.af = socket.AF_INET
        else:
            f.storbinary(f"STOR {name}", io.BytesIO(random_50mb))
            got = retr(f, name)
        assert sha(got) == want, mode
        with open(os.path.join(home(hub), name), "rb") as disk:
            assert sha(disk.read()) == want, mode
    f.quit()


def test_downloads_back_to_back_each_whole_before_226_then_quit_closes(hub):
    # The data connection is closed as soon as sendfile has sent the last
    # byte and 226 follows; each PASV gets a fresh port that really listens.
    body = os.urandom(MB + 123)
    f = login(hub)  # makes the home
    with open(os.path.join(home(hub), "twenty.bin"), "wb") as fp:
        fp.write(body)
    f.voidcmd("TYPE I")
    ports = set()
    for i in range(20):
        reply = f.sendcmd("PASV") if i % 2 else f.sendcmd("EPSV")
        port = ftplib.parse227(reply)[1] if i % 2 else ftplib.parse229(reply, ("127.0.0.1", 0))[1]
        ports.add(port)
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        # 125 if the server took the connection before the command, else 150.
        assert f.sendcmd("RETR twenty.bin")[:3] in ("125", "150")
        got = bytearray()
        while chunk := conn.recv(1 << 20):
            got += chunk
        conn.close()
        assert f.voidresp().startswith("226")
        assert got == body
    assert len(ports) > 10
    f.sock.settimeout(10)
    assert f.sendcmd("QUIT").startswith("221")
    assert f.file.read() == ""  # closed by the server right after 221
    f.close()


def test_ipv6_control_with_epsv_and_eprt(start_hub):
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    hub = start_hub("--ftp", "tcp6:0:interface=\\:\\:1")
    f = ftplib.FTP(timeout=30)
    f.connect("::1", hub.ports["ftp"])
    f.login("alice", "secret")
    f.storbinary("STOR six", io.BytesIO(b"over IPv6"))  # EPSV (ftplib's choice on IPv6)
    assert retr(f, "six") == b"over IPv6"
    f.set_pasv(False)  # EPRT |2|::1|port|
    assert retr(f, "six") == b"over IPv6"
    with pytest.raises(ftplib.error_temp, match="425"):
        f.sendcmd("PASV")
    # RFC 2428 §2-3: the other family is 522, saying which one to use.
    with pytest.raises(ftplib.error_perm, match=r"^522 Network protocol not supported, use \(2\)\.$"):
        f.sendcmd("EPSV 1")
    with pytest.raises(ftplib.error_perm, match=r"^522 Network protocol not supported, use \(2\)\.$"):
        f.sendcmd("EPRT |1|127.0.0.1|40000|")
    # PORT is EPRT |1| in other words: the same 522, naming (2), not a
    # 504 that calls it a bounce (RFC 2577); PASV stays 425 "use EPSV"
    # (pure-ftpd's answer; RFC 2428 gives PASV no 522).
    with pytest.raises(ftplib.error_perm, match=r"^522 PORT is IPv4 only; use EPRT, network protocol \(2\)\.$"):
        f.sendcmd("PORT 127,0,0,1,156,64")
    with pytest.raises(ftplib.error_temp, match=r"^425 PASV is IPv4 only; use EPSV\.$"):
        f.sendcmd("PASV")
    assert retr(f, "six") == b"over IPv6"  # the session goes on (EPRT)


def test_active_data_connection_comes_from_control_port_minus_one(start_hub):
    port = free_port_pair()
    hub = start_hub("--ftp", f"tcp:{port}:interface=127.0.0.1")
    f = login(hub)
    f.storbinary("STOR x", io.BytesIO(b"x" * 1000))
    f.set_pasv(False)
    for _ in range(3):  # SO_REUSEADDR: consecutive transfers reuse the port
        conn, size = f.ntransfercmd("RETR x")
        assert conn.getpeername()[1] == port - 1
        assert conn.makefile("rb").read() == b"x" * 1000
        conn.close()
        assert f.voidresp().startswith("226")


def test_active_falls_back_to_ephemeral_port_when_data_port_is_taken(start_hub):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    try:
        hub = start_hub("--ftp-data-port", str(taken))
        f = login(hub)
        f.storbinary("STOR x", io.BytesIO(b"abc"))
        f.set_pasv(False)
        assert retr(f, "x") == b"abc"
        hub.wait_for_log(rf"cannot send from data port {taken}")
    finally:
        holder.close()


def test_rest_resumes_retr_and_stor(hub):
    data = os.urandom(300_000)
    f = login(hub)
    f.storbinary("STOR r.bin", io.BytesIO(data[:100_000]))
    f.storbinary("STOR r.bin", io.BytesIO(data[100_000:]), rest=100_000)
    assert open(os.path.join(home(hub), "r.bin"), "rb").read() == data
    assert retr(f, "r.bin", rest=123_456) == data[123_456:]
    assert f.size("r.bin") == 300_000


def test_appe_appends(hub):
    f = login(hub)
    f.storbinary("STOR log.txt", io.BytesIO(b"one\n"))
    f.storbinary("APPE log.txt", io.BytesIO(b"two\n"))
    assert retr(f, "log.txt") == b"one\ntwo\n"


def test_type_a_converts_lf_to_crlf_and_back(hub):
    f = login(hub)
    text = b"line one\nline two\n" + b"x" * 300_000 + b"\nend\n"
    f.storbinary("STOR t.txt", io.BytesIO(text))
    f.sendcmd("TYPE A")
    conn = f.transfercmd("RETR t.txt")
    wire = conn.makefile("rb").read()
    conn.close()
    f.voidresp()
    assert wire == text.replace(b"\n", b"\r\n")
    with pytest.raises(ftplib.error_perm, match="550 .*TYPE I"):
        f.size("t.txt")
    f.storlines("STOR u.txt", io.BytesIO(b"a\r\nb\r\n"))
    assert open(os.path.join(home(hub), "u.txt"), "rb").read() == b"a\nb\n"


def test_utf8_file_names(hub):
    f = login(hub)
    assert f.sendcmd("OPTS UTF8 ON").startswith("200")
    f.storbinary("STOR café ü.txt", io.BytesIO(b"x"))
    assert os.path.exists(os.path.join(home(hub), "café ü.txt"))
    assert f.nlst() == ["café ü.txt"]


def retr_under_way(hub, data: bytes):
    """A logged-in client with a RETR of C{data} running; some bytes read."""
    f = login(hub)
    f.storbinary("STOR big", io.BytesIO(data))
    f.voidcmd("TYPE I")
    conn = f.transfercmd("RETR big")
    assert len(conn.recv(65536)) > 0
    return f, conn


def test_stat_during_a_transfer_reports_progress(hub, random_50mb):
    f, conn = retr_under_way(hub, random_50mb)
    f.putcmd("STAT")
    status = f.getmultiline()
    assert status.startswith("213") and "RETR big" in status, status
    while conn.recv(1 << 20):
        pass
    conn.close()
    assert f.voidresp().startswith("226")


def test_stou_makes_a_new_name(hub):
    f = login(hub)
    f.storbinary("STOR f", io.BytesIO(b"1"))
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOU f")
    conn.sendall(b"2")
    conn.close()
    assert "f.1" in f.voidresp()
    assert open(os.path.join(home(hub), "f.1"), "rb").read() == b"2"


def test_abor_mid_transfer_answers_426_then_226(hub, random_50mb):
    f, conn = retr_under_way(hub, random_50mb)
    f.putcmd("ABOR")
    first = f.getline()
    second = f.getline()
    assert first.startswith("426"), first
    assert second.startswith("226"), second
    conn.close()
    assert f.pwd() == "/"
    assert retr(f, "big")[:10] == random_50mb[:10]


def test_abor_during_an_upload_keeps_what_arrived_hidden_for_rest_to_resume(hub):
    f = login(hub)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR part.bin")
    conn.sendall(b"first part")
    for _ in range(500):  # until the server says it has the bytes
        if "10 bytes so far" in f.sendcmd("STAT"):
            break
    else:
        pytest.fail("the server never counted the 10 bytes")
    f.putcmd("ABOR")
    assert f.getline().startswith("426")
    assert f.getline().startswith("226")
    conn.close()
    # Not there under its name (no client takes it for complete)...
    assert f.nlst() == []
    assert not os.path.exists(os.path.join(home(hub), "part.bin"))
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR part.bin", lambda _: None)
    # ...but SIZE says where to resume, and REST + STOR completes it.
    assert f.size("part.bin") == 10
    f.storbinary("STOR part.bin", io.BytesIO(b" and the rest"), rest=10)
    assert f.nlst() == ["part.bin"]
    assert open(os.path.join(home(hub), "part.bin"), "rb").read() == b"first part and the rest"
    assert os.listdir(home(hub)) == ["part.bin"]


def test_upload_cut_by_a_reset_data_connection_never_shows_under_its_name(hub):
    import struct

    f = login(hub)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR cut.bin")
    conn.sendall(b"y" * 100_000)
    for _ in range(500):  # until the server says it has the bytes
        if "100000 bytes so far" in f.sendcmd("STAT"):
            break
    else:
        pytest.fail("the server never counted the 100000 bytes")
    # The client dies mid-upload: a reset, not the clean close that ends a file.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    assert f.getline() == "426 The data connection broke; transfer aborted."
    assert "cut.bin" not in f.nlst()
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR cut.bin", lambda _: None)
    assert f.size("cut.bin") == 100_000  # where a REST would resume


def test_appe_extends_a_complete_file_only_when_the_upload_completes(hub):
    f = login(hub)
    f.storbinary("STOR log.txt", io.BytesIO(b"line 1\n"))
    f.storbinary("APPE log.txt", io.BytesIO(b"line 2\n"))
    assert open(os.path.join(home(hub), "log.txt"), "rb").read() == b"line 1\nline 2\n"
    assert os.listdir(home(hub)) == ["log.txt"]


@pytest.mark.parametrize("mode", ["I", "A"])  # (sendfile; a producer)
def test_a_download_the_client_cut_short_is_426_saying_so_once(hub, random_50mb, mode):
    # Before: "426 Connection closed; transfer aborted (data connection
    # closed by the client)": "closed" twice, the cause in parentheses.
    f = login(hub)
    f.storbinary("STOR big", io.BytesIO(random_50mb))
    f.voidcmd(f"TYPE {mode}")
    conn = f.transfercmd("RETR big")
    assert len(conn.recv(65536)) > 0
    conn.close()  # with bytes unread: a reset, mostly
    # A reset is "broke"; when the kernel had passed every byte to ftplib
    # before the close, the hub sees an orderly close: either says it once.
    assert f.getline() in (
        "426 The data connection broke; transfer aborted.",
        "426 The client closed the data connection before the end; transfer aborted.",
    )
    assert f.pwd() == "/"


def test_abor_with_ftplib_abort_telnet_and_urgent_byte(hub, random_50mb):
    f, conn = retr_under_way(hub, random_50mb)
    # ftplib sends ABOR with MSG_OOB: its last byte (LF) is urgent data.
    assert f.abort().startswith("426")
    conn.close()
    assert f.getline().startswith("226")
    assert f.sendcmd("NOOP").startswith("200")


# -- listings and file management -------------------------------------------------


def test_mlsd_mlst_and_list_show_the_facts(hub):
    f = login(hub)
    f.storbinary("STOR a.txt", io.BytesIO(b"12345"))
    f.mkd("sub")
    facts = dict(f.mlsd())
    assert facts["a.txt"]["type"] == "file"
    assert facts["a.txt"]["size"] == "5"
    assert facts["a.txt"]["perm"] == "adfrw"
    assert len(facts["a.txt"]["modify"]) == 14
    assert facts["sub"]["type"] == "dir"
    assert "250-" in f.sendcmd("MLST a.txt") or f.sendcmd("MLST a.txt").startswith("250")
    assert "type=file;size=5;" in f.sendcmd("MLST a.txt")
    lines = []
    f.retrlines("LIST", lines.append)
    assert any(line.startswith("-rw") and line.endswith(" a.txt") and " 5 " in line for line in lines)
    assert any(line.startswith("d") and line.endswith(" sub") for line in lines)
    feat = f.sendcmd("FEAT")
    for ext in ("EPRT", "EPSV", "MDTM", "SIZE", "REST STREAM", "MLST type*", "UTF8", "AUTH TLS", "PBSZ", "PROT", "TVFS"):
        assert ext in feat
    assert f.sendcmd("OPTS UTF8 ON").startswith("200")
    assert "RETR" in f.sendcmd("HELP")
    assert f.sendcmd("HELP port") == "214 Syntax: PORT h1,h2,h3,h4,p1,p2: your address, port p1*256+p2"
    assert "a.txt" in f.sendcmd("STAT a.txt")
    assert f.sendcmd("STAT").startswith("211")


def test_bare_nlst_and_nlst_dot_in_a_folder_with_a_dash(hub):
    f = login(hub)
    f.mkd("my-folder")
    f.cwd("my-folder")
    f.storbinary("STOR inside.txt", io.BytesIO(b"x"))
    assert f.nlst() == ["inside.txt"]
    assert f.nlst(".") == ["inside.txt"]
    f.cwd("/")
    assert f.nlst("*.none") == []


def test_rename_delete_mkdir_rmdir(hub):
    f = login(hub)
    f.storbinary("STOR old.txt", io.BytesIO(b"data"))
    f.rename("old.txt", "new.txt")
    assert not os.path.exists(os.path.join(home(hub), "old.txt"))
    assert open(os.path.join(home(hub), "new.txt"), "rb").read() == b"data"
    f.delete("new.txt")
    assert not os.path.exists(os.path.join(home(hub), "new.txt"))
    assert f.mkd("dir") == "/dir"
    assert os.path.isdir(os.path.join(home(hub), "dir"))
    f.rmd("dir")
    assert not os.path.exists(os.path.join(home(hub), "dir"))
    with pytest.raises(ftplib.error_perm, match="550"):
        f.delete("nothing")
    with pytest.raises(ftplib.error_perm, match="550"):
        f.rename("nothing", "x")


def test_traversal_absolute_and_symlinks_out_are_refused(hub):
    f = login(hub)
    with pytest.raises(ftplib.error_perm, match="550"):
        f.cwd("../..")
    with pytest.raises(ftplib.error_perm, match="550"):
        retr(f, "../../../tls/key.pem")
    with pytest.raises(ftplib.error_perm, match="550"):
        retr(f, "/etc/passwd")
    os.symlink("/etc", os.path.join(home(hub), "out"))
    os.symlink("/etc/passwd", os.path.join(home(hub), "pw"))
    with pytest.raises(ftplib.error_perm, match="550"):
        f.cwd("out")
    with pytest.raises(ftplib.error_perm, match="550"):
        retr(f, "pw")
    with pytest.raises(ftplib.error_perm, match="550"):
        f.storbinary("STOR out/x", io.BytesIO(b"x"))
    assert "pw" not in f.nlst()
    # bob cannot see alice's files either
    b = login(hub, "bob", "hungry")
    with pytest.raises(ftplib.error_perm, match="550"):
        retr(b, "../alice/pw")


def test_anonymous_is_read_only_on_the_public_folder(start_hub):
    hub = start_hub("--anonymous-ftp")
    public = os.path.join(hub.data_dir, "ftp", "public")
    os.makedirs(public, exist_ok=True)
    with open(os.path.join(public, "readme.txt"), "wb") as fp:
        fp.write(b"welcome\n")
    f = login(hub, "anonymous", "guest@example.org")
    assert retr(f, "readme.txt") == b"welcome\n"
    assert f.nlst() == ["readme.txt"]
    for action in (
        lambda: f.storbinary("STOR x", io.BytesIO(b"x")),
        lambda: f.delete("readme.txt"),
        lambda: f.mkd("d"),
        lambda: f.sendcmd("RNFR readme.txt"),
    ):
        with pytest.raises(ftplib.error_perm, match="550 .*[Pp]ermission denied"):
            action()
    assert sorted(os.listdir(public)) == ["readme.txt"]


def test_anonymous_is_refused_without_the_option(hub):
    f = ftplib.FTP(timeout=10)
    f.connect("127.0.0.1", hub.ports["ftp"])
    with pytest.raises(ftplib.error_perm, match="530"):
        f.login("anonymous", "x@y")


# -- security -----------------------------------------------------------------------


def test_port_bounce_to_another_host_or_privileged_port_is_refused(hub):
    trap = socket.socket()
    trap.bind(("127.0.0.2", 0))
    trap.listen(1)
    trap.settimeout(0.5)
    tport = trap.getsockname()[1]
    f = login(hub)
    f.storbinary("STOR x", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match="^50[04]"):
        f.sendcmd(f"PORT 127,0,0,2,{tport >> 8},{tport & 255}")
    with pytest.raises(ftplib.error_perm, match="^50[04]"):
        f.sendcmd(f"EPRT |1|127.0.0.2|{tport}|")
    with pytest.raises(ftplib.error_perm, match="^504"):
        f.sendcmd("PORT 127,0,0,1,0,25")
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("RETR x")
    with pytest.raises(socket.timeout):
        trap.accept()
    trap.close()


def test_eprt_to_a_number_that_is_no_port_is_a_syntax_error_that_says_so(hub):
    # It was "504 ... the port must be 1024-65535, not a privileged port".
    f = login(hub)
    with pytest.raises(ftplib.error_perm) as refused:
        f.sendcmd("EPRT |1|127.0.0.1|99999|")
    assert str(refused.value) == "501 EPRT: 99999 is not a TCP port (1024-65535)."
    assert f.sendcmd("NOOP").startswith("200")


def test_allo_is_taken_as_noop(hub):
    # RFC 1123 §4.1.2.13: a server must accept ALLO (it may do nothing).
    f = login(hub)
    assert f.sendcmd("ALLO 1000").startswith("202 ")
    f.storbinary("STOR allo.bin", io.BytesIO(b"x" * 1000))
    assert f.size("allo.bin") == 1000
    assert "ALLO" in f.sendcmd("HELP")


def test_passive_connection_from_another_address_is_refused(hub):
    f = login(hub)
    f.storbinary("STOR x", io.BytesIO(b"payload"))
    f.voidcmd("TYPE I")
    host, port = ftplib.parse227(f.sendcmd("PASV"))
    thief = socket.socket()
    thief.bind(("127.0.0.2", 0))
    thief.settimeout(5)
    thief.connect((host, port))
    assert thief.recv(100) == b""  # dropped at once
    thief.close()
    hub.wait_for_log(r"passive data connection from 127.0.0.2 refused")
    conn = socket.create_connection((host, port), timeout=10)
    for _ in range(500):  # until the hub has accepted it
        if "passive-connected" in f.sendcmd("STAT"):
            break
    assert f.sendcmd("RETR x").startswith("125")  # RFC 959: already open
    assert conn.makefile("rb").read() == b"payload"
    conn.close()
    assert f.voidresp().startswith("226")


def test_epsv_all_refuses_port_and_pasv(hub):
    f = login(hub)
    assert f.sendcmd("EPSV ALL").startswith("200")
    with pytest.raises(ftplib.error_perm, match="503"):
        f.sendcmd("PASV")
    with pytest.raises(ftplib.error_perm, match="503"):
        f.sendcmd("PORT 127,0,0,1,200,200")


def test_connection_limit_per_address(start_hub):
    hub = start_hub("--ftp-max-per-ip", "2")
    a, b = control(hub), control(hub)
    c = socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=10)
    assert c.makefile("rb").readline().startswith(b"421")
    a.close()
    hub.wait_for_log(r"ftp connection from 127.0.0.1 refused")
    b.close()
    c.close()


def test_idle_control_connection_is_closed(start_hub):
    hub = start_hub("--ftp-idle-timeout", "1")
    s = control(hub)
    s.settimeout(10)
    assert read_reply(s).startswith(b"421")
    assert s.recv(100) == b""


# -- FTPS -----------------------------------------------------------------------------


def test_auth_tls_prot_p_round_trip_with_ftplib(hub, random_50mb):
    f = tls_login(hub)
    data = random_50mb[: 5 * MB]
    f.storbinary("STOR s.bin", io.BytesIO(data))
    assert sha(retr(f, "s.bin")) == sha(data)
    f.set_pasv(False)
    assert sha(retr(f, "s.bin")) == sha(data)
    assert "data channel: TLS" in f.sendcmd("STAT")
    f.quit()


@pytest.mark.parametrize("order", ["closed_then_retr", "retr_then_closed", "active"])
def test_prot_p_data_connection_closed_before_its_handshake_is_answered_at_once(hub, order):
    # rclone's multi-thread FTPS download closes a stream's data connection
    # before its TLS handshake when another stream fails: the RETR had no
    # reply until the data timeout (60 s), then a wrong "not made in time".
    # RFC 959: the transfer fails with a 425 now, and the session goes on.
    f = tls_login(hub)
    f.storbinary("STOR h.bin", io.BytesIO(b"x" * 100000))
    if order == "active":
        # PORT: the hub connects and is the TLS server (RFC 4217 §9); the
        # client takes the connection and closes it without a handshake.
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        f.sendport("127.0.0.1", listener.getsockname()[1])
        f.sock.settimeout(10)
        f.putcmd("RETR h.bin")
        started = time.monotonic()
        assert f.getline().startswith("150")
        listener.accept()[0].close()
        listener.close()
        first = f.getline()
        assert first.startswith("425"), first
        assert time.monotonic() - started < 5
        f.set_pasv(True)
        assert retr(f, "h.bin") == b"x" * 100000
        f.quit()
        return
    host, port = f.makepasv()
    data = socket.create_connection((host, port), timeout=10)
    if order == "closed_then_retr":
        data.close()
        time.sleep(0.3)
    f.sock.settimeout(10)
    f.putcmd("RETR h.bin")
    started = time.monotonic()
    first = f.getline()
    if order == "retr_then_closed":
        assert first.startswith("150"), first
        data.close()
        first = f.getline()
    assert first.startswith("425"), first
    assert time.monotonic() - started < 5
    assert "in time" not in first
    assert retr(f, "h.bin") == b"x" * 100000
    f.quit()


def test_pbsz_takes_a_decimal_size_and_answers_zero(hub):
    # RFC 2228 §3: PBSZ <decimal-integer>; RFC 4217 §8: TLS answers PBSZ=0.
    f = ftplib.FTP_TLS(timeout=30, context=client_context())
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.auth()
    for wrong in ("PBSZ", "PBSZ big", "PBSZ -1", "PBSZ \u00b2"):
        with pytest.raises(ftplib.error_perm, match=r"^501 PBSZ wants a decimal size: PBSZ 0"):
            f.sendcmd(wrong)
    assert f.sendcmd("PBSZ 1024") == "200 PBSZ=0"
    f.login("alice", "secret")
    f.prot_p()
    f.storbinary("STOR p.txt", io.BytesIO(b"private"))
    assert "p.txt" in f.nlst()
    f.quit()


def test_commands_pipelined_after_auth_tls_are_discarded(hub):
    s = control(hub)
    s.sendall(b"AUTH TLS\r\nUSER alice\r\nPASS secret\r\n")
    reply = s.recv(4096)
    assert reply.startswith(b"234"), reply
    ctx = client_context()
    t = ctx.wrap_socket(s)
    # USER/PASS sent in plaintext were dropped: still not logged in.
    assert ask(t, b"PWD").startswith(b"530")
    assert ask(t, b"USER alice").startswith(b"331")
    assert ask(t, b"PASS secret").startswith(b"230")
    t.close()


def test_require_tls_refuses_user_before_auth_tls(start_hub):
    hub = start_hub("--ftp-require-tls", "--trusted-networks", "10.9.9.0/24")
    s = control(hub)
    assert ask(s, b"USER alice").startswith(b"530")
    s.close()
    f = tls_login(hub)
    assert f.pwd() == "/"


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_curl_plain_and_ssl_reqd(hub, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(3 * MB))
    url = f"ftp://alice:secret@127.0.0.1:{hub.ports['ftp']}"
    subprocess.run(["curl", "-sS", "-T", str(src), f"{url}/c.bin"], check=True, timeout=60)
    got = subprocess.run(["curl", "-sS", f"{url}/c.bin"], check=True, capture_output=True, timeout=60).stdout
    assert got == src.read_bytes()
    got = subprocess.run(["curl", "-sS", "-P", "-", f"{url}/c.bin"], check=True, capture_output=True, timeout=60).stdout
    assert got == src.read_bytes()
    # FTPS in passive mode only: curl 7.87-7.88 never starts TLS on an
    # active data connection (curl/curl#10666); ftplib and lftp cover it.
    subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "-T", str(src), f"{url}/t.bin"], check=True, timeout=60)
    got = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", f"{url}/t.bin"], check=True, capture_output=True, timeout=60).stdout
    assert got == src.read_bytes()
    ranged = subprocess.run(["curl", "-sS", "-C", "1000", f"{url}/c.bin"], check=True, capture_output=True, timeout=60).stdout
    assert ranged == src.read_bytes()[1000:]


@pytest.mark.skipif(not shutil.which("lftp"), reason="lftp is not installed")
@pytest.mark.parametrize("passive", ["true", "false"])
def test_lftp_ssl_force_put_get_and_mirror(hub, tmp_path, passive):
    src = tmp_path / "src"
    (src / "a-b").mkdir(parents=True)
    (src / "a-b" / "one.bin").write_bytes(os.urandom(2 * MB))
    (src / "two.txt").write_bytes(b"two\n")
    back = tmp_path / "back"
    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:verify-certificate no; "
        f"set ftp:passive-mode {passive}; set net:max-retries 1; "
        f"open -u alice,secret -p {hub.ports['ftp']} 127.0.0.1; "
        f"mirror -R {src} up; mirror up {back}"
    )
    subprocess.run(["lftp", "-c", script], check=True, timeout=120, capture_output=True)
    assert (back / "a-b" / "one.bin").read_bytes() == (src / "a-b" / "one.bin").read_bytes()
    assert (back / "two.txt").read_bytes() == b"two\n"
    assert open(os.path.join(home(hub), "up", "a-b", "one.bin"), "rb").read() == (src / "a-b" / "one.bin").read_bytes()


def test_stalled_upload_is_cut_off_after_the_data_timeout(start_hub):
    hub = start_hub("--ftp-data-timeout", "1")
    f = login(hub)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR slow.bin")
    conn.sendall(b"a little")
    f.sock.settimeout(15)
    assert f.getline() == "426 The data connection was idle for 1 second; transfer aborted."  # no more bytes for a second
    conn.close()
    assert f.pwd() == "/"
    # what did arrive is kept, hidden, on disk before the 426: REST resumes it
    assert "slow.bin" not in f.nlst()
    f.voidcmd("TYPE I")
    assert f.size("slow.bin") == len(b"a little")
    f.storbinary("STOR slow.bin", io.BytesIO(b" more"), rest=len(b"a little"))
    assert open(os.path.join(home(hub), "slow.bin"), "rb").read() == b"a little more"


def test_an_upload_trickled_an_octet_at_a_time_is_cut_off(start_hub):
    # Each octet reset the data timeout: an octet every 0.3 s kept the
    # transfer (and the file) open for ever. Past the longer of
    # --ftp-data-timeout and --ftp-idle-timeout an upload must average
    # 4 KiB/s for its octets to keep it alive.
    hub = start_hub("--ftp-data-timeout", "1", "--ftp-idle-timeout", "2")
    f = login(hub)
    f.voidcmd("TYPE I")
    conn = f.transfercmd("STOR trickle.bin")
    start = time.monotonic()
    trickle(conn)  # (12 s if let go on)
    f.sock.settimeout(15)
    assert f.getline() == "426 The data arrived at under 4 KiB/s for over 2 seconds; transfer aborted."
    assert time.monotonic() - start < 7
    conn.close()
    assert "trickle.bin" not in f.nlst()
    # A steady upload of the same length of time is not cut.
    conn = f.transfercmd("STOR steady.bin")
    for _ in range(10):
        conn.sendall(b"y" * 8192)
        time.sleep(0.25)
    conn.close()
    assert f.voidresp().startswith("226")
    assert os.path.getsize(os.path.join(home(hub), "steady.bin")) == 81920


def test_an_upload_typed_by_hand_is_not_cut_within_the_control_connections_idle_time(start_hub):
    # A student types a file into nc on the data connection: a line every
    # half second, far under 4 KiB/s. It used to be cut --ftp-data-timeout
    # after the data connection opened (60 s by default: 1 here); it now
    # has the control connection's idle time (--ftp-idle-timeout, 300 s by
    # default: 10 here) before the average applies, as long as no pause
    # is longer than the data timeout.
    hub = start_hub("--ftp-data-timeout", "2", "--ftp-idle-timeout", "10")
    f = login(hub)
    f.voidcmd("TYPE A")
    conn = f.transfercmd("STOR typed.txt")
    lines = [f"line {i} typed by hand".encode() for i in range(9)]
    for line in lines:  # 4.5 s: past the data timeout, within the idle time
        conn.sendall(line + b"\r\n")
        time.sleep(0.5)
    conn.close()
    f.sock.settimeout(15)
    assert f.voidresp().startswith("226")
    assert open(os.path.join(home(hub), "typed.txt"), "rb").read() == b"".join(line + b"\n" for line in lines)


def test_passive_ports_address_and_banner_options(start_hub):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        low = probe.getsockname()[1]
    hub = start_hub(
        "--passive-ports", f"{low}-{low + 3}",
        "--passive-address", "127.0.0.1",
        "--ftp-banner", "Welcome to the class FTP server",
    )
    f = ftplib.FTP(timeout=30)
    assert "Welcome to the class FTP server" in f.connect("127.0.0.1", hub.ports["ftp"])
    f.login("alice", "secret")
    host, port = ftplib.parse227(f.sendcmd("PASV"))
    assert host == "127.0.0.1" and low <= port <= low + 3
    f.storbinary("STOR x", io.BytesIO(b"in range"))
    assert retr(f, "x") == b"in range"


def test_bad_passive_ports_option_is_a_usage_error():
    from twisted.python import usage

    from twisted_mailhub import tap

    options = tap.Options()
    with pytest.raises(usage.UsageError, match="passive-ports"):
        options.parseOptions(["--passive-ports", "90-x"])


def test_unused_passive_connection_that_closes_needs_a_new_pasv(hub):
    f = login(hub)
    f.storbinary("STOR x", io.BytesIO(b"x"))
    host, port = ftplib.parse227(f.sendcmd("PASV"))
    socket.create_connection((host, port), timeout=10).close()
    hub_sees_it_closed = f.sendcmd("STAT")
    for _ in range(500):  # until the hub has noticed the close
        if "Data channel: idle" in hub_sees_it_closed:
            break
        hub_sees_it_closed = f.sendcmd("STAT")
    assert "Data channel: idle" in hub_sees_it_closed
    with pytest.raises(ftplib.error_temp, match="425"):
        f.sendcmd("RETR x")
    assert retr(f, "x") == b"x"  # ftplib sends a fresh PASV


def test_upload_that_closes_before_its_stor_is_read_is_kept(hub):
    f = login(hub)
    f.voidcmd("TYPE I")
    host, port = ftplib.parse227(f.sendcmd("PASV"))
    data = socket.create_connection((host, port), timeout=10)
    data.sendall(b"eager client")
    data.close()  # before the server has even seen STOR
    assert f.sendcmd("STOR eager.bin")[:3] in ("125", "150")  # 125 if already accepted
    assert f.voidresp().startswith("226")
    assert open(os.path.join(home(hub), "eager.bin"), "rb").read() == b"eager client"


def test_a_quit_pipelined_after_a_wrong_password_comes_after_the_530(hub):
    # nc sends each typed line as it comes; a failed login's answer is held
    # back (n-th failure: n x 0.1 s), and a QUIT arriving meanwhile must not
    # overtake it and close the connection before the 530.
    for n in range(1, 4):
        s = control(hub)
        assert ask(s, b"USER alice").startswith(b"331")
        assert ask(s, b"PASS wrong").startswith(b"530")
        s.close()
    s = control(hub)
    assert ask(s, b"USER alice").startswith(b"331")
    s.sendall(b"PASS wrong\r\n")
    hub.wait_for_log(r"ftp login failed for 'alice' from 127.0.0.1 \(answer held 0.4s\)")
    s.sendall(b"QUIT\r\n")  # a packet of its own, while the 530 is held
    replies = b""
    while chunk := s.recv(4096):
        replies += chunk
    s.close()
    assert [line[:3] for line in replies.split(b"\r\n") if line] == [b"530", b"221"]


def test_mkd_rnfr_rnto_size_mdtm_without_a_name_get_501_and_size_of_a_directory_550(hub):
    f = login(hub)
    f.mkd("d")
    s = control(hub)
    assert ask(s, b"USER alice").startswith(b"331")
    assert ask(s, b"PASS secret").startswith(b"230")
    assert ask(s, b"CWD /d").startswith(b"250")
    for verb in (b"MKD", b"RNFR", b"SIZE", b"MDTM"):
        assert ask(s, verb).startswith(b"501 " + verb)
    assert ask(s, b"RNFR /d").startswith(b"350")
    assert ask(s, b"RNTO").startswith(b"501 RNTO needs the new name")
    assert ask(s, b"RNTO /e").startswith(b"250")  # the RNFR still holds
    assert ask(s, b"TYPE I").startswith(b"200")
    assert ask(s, b"SIZE /e").rstrip() == b"550 SIZE /e: a directory, not a file."
    assert ask(s, b"QUIT").startswith(b"221")
    s.close()
    assert os.path.isdir(os.path.join(home(hub), "e"))
    f.quit()


def test_rnto_out_of_the_home_names_the_new_name_and_keeps_the_file(hub):
    f = login(hub)
    f.storbinary("STOR y.bin", io.BytesIO(b"data"))
    s = control(hub)
    assert ask(s, b"USER alice").startswith(b"331")
    assert ask(s, b"PASS secret").startswith(b"230")
    assert ask(s, b"RNFR y.bin").startswith(b"350")
    reply = ask(s, b"RNTO ../../x").rstrip()
    assert reply == b"550 RNTO ../../x: that path leaves your home; y.bin stays where it is.", reply
    assert ask(s, b"RNTO z.bin").startswith(b"503")  # the RNFR is spent
    assert ask(s, b"QUIT").startswith(b"221")
    s.close()
    assert open(os.path.join(home(hub), "y.bin"), "rb").read() == b"data"
    f.quit()


# -- setting times: MFMT, SITE UTIME (lftp mirror -R, FileZilla, WinSCP) ------------


def _lftp() -> str:
    path = shutil.which("lftp")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("lftp is missing in CI (.ci/run installs it)")
        pytest.skip("lftp is not installed (apt-get install lftp)")
    return path


def test_mfmt_sets_the_modification_time_mdtm_and_a_listing_show(hub):
    f = login(hub)
    try:
        f.storbinary("STOR t.txt", io.BytesIO(b"times\n"))
        assert "MFMT" in f.sendcmd("FEAT")
        assert f.sendcmd("MFMT 20170714024000 t.txt") == "213 Modify=20170714024000; t.txt"
        assert f.sendcmd("MDTM t.txt") == "213 20170714024000"
        assert os.stat(os.path.join(home(hub), "t.txt")).st_mtime == 1_500_000_000
        assert "modify=20170714024000;" in f.sendcmd("MLST t.txt")
    finally:
        f.quit()


def test_site_utime_in_both_spellings_sets_the_times(hub):
    f = login(hub)
    try:
        f.storbinary("STOR a name.txt", io.BytesIO(b"a\n"))
        assert f.sendcmd("SITE UTIME 201707140240 a name.txt").startswith("200 ")  # ProFTPD's, minutes
        assert os.stat(os.path.join(home(hub), "a name.txt")).st_mtime == 1_500_000_000
        # Pure-FTPd's and lftp's: the file first, then atime, mtime, ctime
        assert f.sendcmd("SITE UTIME a name.txt 20200101000000 20190101000000 20190101000000 UTC").startswith("200 ")
        st = os.stat(os.path.join(home(hub), "a name.txt"))
        assert (st.st_atime, st.st_mtime) == (1_577_836_800, 1_546_300_800)
    finally:
        f.quit()


@pytest.mark.parametrize("command, reply", [
    ("MFMT 2017071402400 t.txt", "501 MFMT wants a time and a file: MFMT YYYYMMDDHHMMSS <file> (UTC)."),
    ("MFMT 20171314024000 t.txt", "501 MFMT wants a time and a file: MFMT YYYYMMDDHHMMSS <file> (UTC)."),
    ("MFMT 20170714024000", "501 MFMT wants a time and a file: MFMT YYYYMMDDHHMMSS <file> (UTC)."),
    ("MFMT 20170714024000 missing.txt", "550 MFMT /missing.txt: no such file or directory."),
    ("SITE UTIME t.txt", "501 SITE UTIME wants a time and a file: SITE UTIME YYYYMMDDHHMMSS <file>, or SITE UTIME <file> <atime> <mtime> <ctime> UTC."),
    ("SITE EXEC ls", "504 SITE EXEC: not here (SITE UTIME sets a file's times, SITE CHMOD its mode)."),
    ("SITE CHMOD 9 t.txt", "501 SITE CHMOD wants an octal mode and a file: SITE CHMOD 644 <file>."),
])
def test_a_bad_time_command_gets_a_clear_error_and_changes_nothing(hub, command, reply):
    f = login(hub)
    try:
        f.storbinary("STOR t.txt", io.BytesIO(b"t\n"))
        before = os.stat(os.path.join(home(hub), "t.txt")).st_mtime
        with pytest.raises(ftplib.Error) as caught:
            f.sendcmd(command)
        assert str(caught.value) == reply
        assert os.stat(os.path.join(home(hub), "t.txt")).st_mtime == before
        assert f.sendcmd("NOOP").startswith("200")
    finally:
        f.quit()


def test_site_chmod_sets_the_mode_keeping_the_owners_read_and_write(hub):
    f = login(hub)
    try:
        f.storbinary("STOR m.txt", io.BytesIO(b"m\n"))
        assert f.sendcmd("SITE CHMOD 604 m.txt") == "200 SITE CHMOD: the mode is now 0604."
        assert f.sendcmd("SITE CHMOD 0 m.txt") == "200 SITE CHMOD: the mode is now 0600."
        assert os.stat(os.path.join(home(hub), "m.txt")).st_mode & 0o7777 == 0o600
    finally:
        f.quit()


def test_anonymous_cannot_set_times(start_hub):
    hub = start_hub("--anonymous-ftp")
    public = os.path.join(hub.data_dir, "ftp", "public")
    os.makedirs(public, exist_ok=True)
    with open(os.path.join(public, "p.txt"), "wb") as out:
        out.write(b"p\n")
    f = login(hub, "anonymous", "guest@")
    try:
        for command in ("MFMT 20170714024000 p.txt", "SITE UTIME 201707140240 p.txt", "SITE CHMOD 600 p.txt"):
            with pytest.raises(ftplib.error_perm) as caught:
                f.sendcmd(command)
            assert str(caught.value).startswith("550 "), command
        assert os.stat(os.path.join(public, "p.txt")).st_mode & 0o777 != 0o600
    finally:
        f.quit()


def test_lftp_mirror_r_keeps_the_modification_times(hub, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name, when in (("old.txt", 1_500_000_000), ("sub/older.txt", 1_400_000_000)):
        (src / name).write_bytes(name.encode())
        os.utime(src / name, (when, when))
    os.chmod(src / "old.txt", 0o640)
    script = f"set net:max-retries 1; set ssl:verify-certificate no; open -u alice,secret -p {hub.ports['ftp']} 127.0.0.1; mirror -R {src} up"
    done = subprocess.run([_lftp(), "-c", script], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    # lftp sends SITE CHMOD after each upload: the mode is kept too
    assert os.stat(os.path.join(home(hub), "up", "old.txt")).st_mode & 0o777 == 0o640
    assert os.stat(os.path.join(home(hub), "up", "old.txt")).st_mtime == 1_500_000_000
    assert os.stat(os.path.join(home(hub), "up", "sub", "older.txt")).st_mtime == 1_400_000_000
    # curl --remote-time downloads with the server's time (MDTM)
    out = tmp_path / "got.txt"
    subprocess.run(["curl", "-sS", "-R", "-o", str(out), f"ftp://alice:secret@127.0.0.1:{hub.ports['ftp']}/up/old.txt"], check=True, timeout=60)
    assert os.stat(out).st_mtime == 1_500_000_000


def test_a_passive_range_in_use_is_425_and_one_log_line_in_words(start_hub):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        hub = start_hub("--passive-ports", f"{port}-{port}")
        f = login(hub)
        try:
            with pytest.raises(ftplib.error_temp) as caught:
                f.sendcmd("PASV")
            assert str(caught.value) == "425 Cannot open a passive port."
            assert f.sendcmd("NOOP").startswith("200")
        finally:
            f.quit()
        line = hub.wait_for_log(r"ftp cannot open a passive port: .*")
        assert line.group(0) == f"ftp cannot open a passive port: cannot listen on 127.0.0.1 port {port}: Address already in use"
    finally:
        holder.close()


def test_telnet_commands_typed_by_a_telnet_client_are_not_part_of_the_command(hub):
    # Ctrl-C in telnet sends IAC IP and IAC DO TIMING-MARK (RFC 854, 860):
    # the hub dropped IAC IP but kept the DO's option octet, so the next
    # command read "<FD>^FNOOP" (500 command not understood).
    with socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=15) as s:
        assert read_reply(s).startswith(b"220")
        assert ask(s, b"\xff\xf4\xff\xfd\x06NOOP").startswith(b"200")
        assert ask(s, b"\xff\xfa\x18\x01\xff\xf0USER alice").startswith(b"331")
        assert ask(s, b"PASS secret").startswith(b"230")
        assert ask(s, b"NO\xff\xf6OP").startswith(b"200")  # IAC AYT inside a word
        assert ask(s, b"\xff\xf4\xff\xf2STAT").startswith(b"211")
        assert ask(s, b"QUIT").startswith(b"221")


def test_epsv_and_eprt_of_the_other_network_protocol_are_522(hub):
    # RFC 2428 §2-3: the data connection is of the control connection's
    # family; vsftpd answers EPSV 2 over IPv4 with 522 ... use (1). The hub
    # answered 229 with an IPv4 port.
    with socket.create_connection(("127.0.0.1", hub.ports["ftp"]), timeout=15) as s:
        assert read_reply(s).startswith(b"220")
        assert ask(s, b"USER alice").startswith(b"331")
        assert ask(s, b"PASS secret").startswith(b"230")
        assert ask(s, b"EPSV 2") == b"522 Network protocol not supported, use (1).\r\n"
        assert ask(s, b"EPRT |2|::1|40000|") == b"522 Network protocol not supported, use (1).\r\n"
        assert ask(s, b"EPSV 3") == b"522 Network protocol not supported, use (1,2).\r\n"
        assert ask(s, b"EPSV 1").startswith(b"229 ")
        assert ask(s, b"EPSV").startswith(b"229 ")
        assert ask(s, b"QUIT").startswith(b"221")



@pytest.mark.parametrize("mode", ["I", "A", "TLS"])  # (sendfile; a producer; TLS)
def test_a_download_the_client_half_closes_is_426_at_once_not_at_the_data_timeout(hub, random_50mb, mode):
    # RFC 959 §3.4 / §4.2: in stream mode the sender ends the data; a
    # receiver that closes its side first has given up the transfer. The
    # client stops reading and sends its FIN (shutdown, the socket kept
    # open): the hub saw it only at the data timeout (60 s) when it was
    # sending with sendfile, and kept the transfer and the file open.
    f = tls_login(hub) if mode == "TLS" else login(hub)
    f.storbinary("STOR big", io.BytesIO(random_50mb))
    f.voidcmd("TYPE A" if mode == "A" else "TYPE I")
    conn = f.transfercmd("RETR big")
    assert len(conn.recv(65536)) > 0
    conn.shutdown(socket.SHUT_WR)  # a FIN; nothing more is read
    f.sock.settimeout(10)  # well under the 60 s data timeout
    assert f.getline() == "426 The client closed the data connection before the end; transfer aborted."
    conn.close()
    assert f.pwd() == "/"
    f.voidcmd("TYPE I")
    assert retr(f, "big")[:10] == random_50mb[:10]


@pytest.mark.parametrize("mode", ["A", "TLS"])  # (a producer; TLS) -- sendfile: test_abor_mid_transfer...
@pytest.mark.parametrize("command", ["RETR big", "STOR part"])
def test_abor_during_each_kind_of_transfer_is_426_then_226(hub, random_50mb, mode, command):
    f = tls_login(hub) if mode == "TLS" else login(hub)
    f.storbinary("STOR big", io.BytesIO(random_50mb))
    f.voidcmd("TYPE A" if mode == "A" else "TYPE I")
    conn = f.transfercmd(command)
    if command.startswith("RETR"):
        assert len(conn.recv(65536)) > 0
    else:
        conn.sendall(b"first part\n")
        for _ in range(500):  # until the server says it has the bytes
            if "11 bytes so far" in f.sendcmd("STAT"):
                break
        else:
            pytest.fail("the server never counted the 11 bytes")
    f.sock.settimeout(10)
    f.putcmd("ABOR")
    assert f.getline().startswith("426")
    assert f.getline().startswith("226")
    conn.close()
    assert f.pwd() == "/"
    if command.startswith("STOR"):
        assert "part" not in f.nlst()  # kept hidden for a resume, not shown
