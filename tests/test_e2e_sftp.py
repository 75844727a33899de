"""
End-to-end SFTP against the real C{twistd mailhub}: OpenSSH's C{sftp},
C{scp} and C{ssh}, and paramiko; the same files as FTP.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.hubprocess import ROOT

paramiko = pytest.importorskip("paramiko")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing in CI (.ci/run installs openssh-client and sshpass)")
        pytest.skip(f"{tool} is not installed (apt-get install openssh-client sshpass)")
    return path


SSH_OPTIONS = [
    "-F", "/dev/null",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=20",
]
PASSWORD_ONLY = ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]


def home(hub, user="alice"):
    return os.path.join(hub.data_dir, "ftp", "localhost", user)


def sftp_batch(hub, commands: str | bytes, password="secret", user="alice", extra=(), check=True, cwd=None) -> subprocess.CompletedProcess:
    """
    Run OpenSSH's sftp in batch mode; the password through sshpass.
    C{commands} as bytes: the output is bytes too (names that are not UTF-8).
    """
    _need("sftp")
    # ssh takes the first value given for an option, and sftp's -b adds
    # BatchMode=yes: the password options go first.
    args = ["sftp", *SSH_OPTIONS, *extra]
    if password is not None:
        args = [_need("sshpass"), "-p", password] + args + PASSWORD_ONLY
    args += ["-P", str(hub.ports["sftp"]), "-b", "-", f"{user}@127.0.0.1"]
    done = subprocess.run(args, input=commands, capture_output=True, text=not isinstance(commands, bytes), timeout=60, cwd=cwd)
    if check and done.returncode != 0:
        raise AssertionError(f"sftp failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def ftp_login(hub, user="alice", password="secret") -> ftplib.FTP:
    f = ftplib.FTP(timeout=30)
    f.connect("127.0.0.1", hub.ports["ftp"])
    f.login(user, password)
    return f


def paramiko_client(hub, user="alice", password="secret") -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", hub.ports["sftp"], username=user, password=password, allow_agent=False, look_for_keys=False, timeout=20)
    return client


def test_sftp_put_and_get_are_byte_exact_and_land_in_the_ftp_home(start_hub, tmp_path):
    hub = start_hub()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "up.bin").write_bytes(data)
    done = sftp_batch(hub, "put up.bin notes.bin\nls -l\nget notes.bin back.bin\n", cwd=tmp_path)
    assert "notes.bin" in done.stdout
    assert (tmp_path / "back.bin").read_bytes() == data
    with open(os.path.join(home(hub), "notes.bin"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_file_uploaded_with_ftp_downloads_byte_exact_with_sftp_and_back(start_hub, tmp_path):
    hub = start_hub()
    data = os.urandom(1024 * 1024 + 3)
    f = ftp_login(hub)
    f.storbinary("STOR from-ftp.bin", io.BytesIO(data))
    sftp_batch(hub, "get from-ftp.bin got.bin\nput got.bin from-sftp.bin\n", cwd=tmp_path)
    assert (tmp_path / "got.bin").read_bytes() == data
    out = io.BytesIO()
    f.retrbinary("RETR from-sftp.bin", out.write)
    f.quit()
    assert out.getvalue() == data


def test_public_key_in_authorized_keys_logs_in(start_hub, tmp_path):
    hub = start_hub()
    key = tmp_path / "id_ed25519"
    subprocess.run([_need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    folder = os.path.join(hub.data_dir, "ssh", "authorized_keys")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "alice@localhost"), "w") as f:
        f.write("# alice's laptop\n" + (tmp_path / "id_ed25519.pub").read_text())
    keyed = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key), "-o", "PreferredAuthentications=publickey"]
    done = sftp_batch(hub, "pwd\n", password=None, extra=keyed)
    assert "Remote working directory: /" in done.stdout
    # The same key is no key of bob's.
    refused = sftp_batch(hub, "pwd\n", password=None, user="bob", extra=keyed, check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr


def test_mailhub_admin_user_key_authorizes_a_key_for_sftp(start_hub, tmp_path):
    hub = start_hub()
    key = tmp_path / "id_ed25519"
    subprocess.run([_need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    admin = [sys.executable, "-m", "twisted_mailhub.admin", "user", "key", "alice", str(key) + ".pub", "--data", hub.data_dir]
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run(admin, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert done.returncode == 0 and "now logs in as alice@localhost" in done.stdout, done.stderr
    again = subprocess.run(admin, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert "already logs in" in again.stdout
    bad = subprocess.run(admin[:6] + [str(key)] + admin[7:], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert bad.returncode == 1 and "not one OpenSSH public key line" in bad.stderr and "Traceback" not in bad.stderr
    keyed = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key), "-o", "PreferredAuthentications=publickey"]
    assert "Remote working directory: /" in sftp_batch(hub, "pwd\n", password=None, extra=keyed).stdout


def test_keyboard_interactive_password_logs_in(start_hub):
    hub = start_hub()
    kbd = ["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive"]
    args = [_need("sshpass"), "-P", "Password", "-p", "secret", "sftp", *SSH_OPTIONS, *kbd, "-P", str(hub.ports["sftp"]), "-b", "-", "alice@127.0.0.1"]
    done = subprocess.run(args, input="pwd\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Remote working directory: /" in done.stdout


def test_symlink_and_dotdot_escapes_are_refused_as_in_ftp(start_hub, tmp_path):
    hub = start_hub()
    f = ftp_login(hub)  # makes the home
    os.symlink("/etc", os.path.join(home(hub), "etc-link"))
    os.symlink("/etc/hostname", os.path.join(home(hub), "hostname-link"))
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR hostname-link", lambda _: None)
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR ../../../etc/hostname", lambda _: None)
    f.quit()
    for path in ("hostname-link", "etc-link/hostname", "../../../etc/hostname", "/../etc/hostname"):
        done = sftp_batch(hub, f"get {path} out\n", check=False, cwd=tmp_path)
        assert done.returncode != 0, path
        assert re.search(r"not found|Permission denied", done.stderr), done.stderr
        assert not (tmp_path / "out").exists()
    # The links are not listed either, as in FTP.
    listing = sftp_batch(hub, "ls -1\n").stdout
    assert "hostname-link" not in listing and "etc-link" not in listing


def test_scp_works_over_sftp_and_legacy_scp_is_refused_with_a_message(start_hub, tmp_path):
    hub = start_hub()
    data = os.urandom(200_000)
    (tmp_path / "a.bin").write_bytes(data)
    scp = [_need("sshpass"), "-p", "secret", _need("scp"), *SSH_OPTIONS, *PASSWORD_ONLY, "-P", str(hub.ports["sftp"])]
    subprocess.run(scp + [str(tmp_path / "a.bin"), "alice@127.0.0.1:copied.bin"], check=True, capture_output=True, timeout=60)
    subprocess.run(scp + ["alice@127.0.0.1:copied.bin", str(tmp_path / "b.bin")], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "b.bin").read_bytes() == data
    legacy = subprocess.run(scp + ["-O", str(tmp_path / "a.bin"), "alice@127.0.0.1:legacy.bin"], capture_output=True, text=True, timeout=60)
    assert legacy.returncode != 0
    assert "Legacy scp" in legacy.stderr and "SFTP" in legacy.stderr
    assert not os.path.exists(os.path.join(home(hub), "legacy.bin"))


def test_scp_p_and_sftp_put_p_keep_times_and_modes_and_exit_0(start_hub, tmp_path):
    # Both said "remote setstat: Operation unsupported" and scp exited 1
    # though the file had arrived.
    hub = start_hub()
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept times\n")
    os.chmod(src, 0o640)
    os.utime(src, (1_500_000_000, 1_500_000_000))
    scp = [_need("sshpass"), "-p", "secret", _need("scp"), *SSH_OPTIONS, *PASSWORD_ONLY, "-P", str(hub.ports["sftp"])]
    done = subprocess.run(scp + ["-p", str(src), "alice@127.0.0.1:by-scp.txt"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "setstat" not in done.stderr, done.stderr
    done = sftp_batch(hub, f"put -p {src} by-sftp.txt\n")
    assert "setstat" not in done.stderr, done.stderr
    for name in ("by-scp.txt", "by-sftp.txt"):
        st = os.stat(os.path.join(home(hub), name))
        assert (st.st_mtime, st.st_mode & 0o777) == (1_500_000_000, 0o640), name
    # and a client reads them back: get -p gives the local copy those times
    sftp_batch(hub, f"get -p by-sftp.txt {tmp_path / 'back.txt'}\n")
    assert os.stat(tmp_path / "back.txt").st_mtime == 1_500_000_000
    assert "Traceback" not in hub.log


def test_shell_command_and_port_forwarding_are_refused_with_a_message(start_hub):
    hub = start_hub()
    ssh = [_need("sshpass"), "-p", "secret", _need("ssh"), *SSH_OPTIONS, *PASSWORD_ONLY, "-p", str(hub.ports["sftp"]), "alice@127.0.0.1"]
    done = subprocess.run(ssh + ["ls", "/"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "SFTP only" in done.stderr and "no shell" in done.stderr
    # ssh keeps the first value of an option: LogLevel=INFO shows the reason.
    forward = subprocess.run(ssh[:4] + ["-o", "LogLevel=INFO"] + ssh[4:-1] + ["-W", f"127.0.0.1:{hub.ports['ftp']}", "alice@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert forward.returncode != 0
    assert "administratively prohibited" in forward.stderr and "SFTP only" in forward.stderr


def test_paramiko_sees_the_vfs_rules(start_hub):
    hub = start_hub()
    client = paramiko_client(hub)
    try:
        sftp = client.open_sftp()
        with sftp.open("one.txt", "wb") as f:
            f.write(b"one\n")
        with sftp.open("two.txt", "wb") as f:
            f.write(b"two\n")
        with pytest.raises(IOError):
            sftp.rename("one.txt", "two.txt")  # plain RENAME never replaces
        sftp.posix_rename("one.txt", "two.txt")
        assert sftp.listdir(".") == ["two.txt"]
        assert sftp.stat("two.txt").st_size == 4
        with pytest.raises(IOError):
            sftp.symlink("two.txt", "link")
        sftp.chmod("two.txt", 0o751)  # a mode is kept (the owner's read and write stay on)
        assert sftp.stat("two.txt").st_mode & 0o777 == 0o751
        sftp.utime("two.txt", (1_500_000_000, 1_500_000_000))
        assert sftp.stat("two.txt").st_mtime == 1_500_000_000
        with pytest.raises(IOError):
            sftp.chown("two.txt", 0, 0)  # the files belong to the hub
        sftp.mkdir("sub")
        sftp.rmdir("sub")
        sftp.remove("two.txt")
        assert sftp.listdir(".") == []
    finally:
        client.close()


def test_wrong_password_is_throttled_like_every_protocol(start_hub):
    hub = start_hub()
    for _ in range(3):
        with pytest.raises(paramiko.AuthenticationException):
            paramiko_client(hub, password="wrong")
    hub.wait_for_log(r"sftp login failed for 'alice' from 127\.0\.0\.1 \(answer held 0\.3s\)")
    paramiko_client(hub).close()
    hub.wait_for_log(r"sftp login alice from 127\.0\.0\.1")


def test_host_key_is_the_same_after_a_restart(start_hub):
    hub = start_hub()
    first = re.findall(r"sftp host key (\S+) (SHA256:\S+)", hub.log)
    assert {kind for kind, _ in first} == {"ssh-ed25519", "ecdsa-sha2-nistp256"}
    hub.restart()
    after = re.findall(r"sftp host key (\S+) (SHA256:\S+)", hub.log.split("---- restart ----")[1])
    assert after == first
    # What a client sees is that key.
    scan = subprocess.run([_need("ssh-keyscan"), "-p", str(hub.ports["sftp"]), "-t", "ed25519", "127.0.0.1"], capture_output=True, text=True, timeout=30)
    line = next(l for l in scan.stdout.splitlines() if "ssh-ed25519" in l)
    with open(os.path.join(hub.data_dir, "ssh", "ssh_host_ed25519_key.pub")) as f:
        assert line.split()[2] == f.read().split()[1]


def test_transcript_shows_decoded_sftp_requests_and_a_summary_per_file(start_hub, tmp_path):
    hub = start_hub("--transcript")
    (tmp_path / "notes.txt").write_bytes(b"x" * 32)
    sftp_batch(hub, "put notes.txt /notes.txt\nget notes.txt back.txt\n", cwd=tmp_path)
    hub.wait_for_log(r"sftp#\d+ sftp: SFTP session closed")
    log = hub.log
    assert re.search(r"sftp#\d+ C: OPEN /notes.txt WRITE\|CREAT\|TRUNC", log)
    assert re.search(r"sftp#\d+ S: handle \d+", log)
    assert re.search(r"sftp#\d+ C: WRITE handle \d+ offset 0 len 32\n.*S: OK", log)
    assert re.search(r"sftp#\d+ sftp: /notes.txt: downloaded 32 bytes and uploaded 32 bytes \(2 opens\)", log)
    assert re.search(r"sftp#\d+ login: alice@localhost", log)
    assert re.search(r"sftp#\d+ tls: SSH aes128-ctr hmac-sha2-256", log)
    assert "secret" not in log.split("mailhub ready")[1]
    # The encrypted bytes themselves are not transcribed.
    assert not re.search(r"sftp#\d+ C: SSH-2.0", log)


def test_garbage_inside_the_sftp_channel_gets_bad_message_and_the_hub_goes_on(start_hub):
    import struct

    hub = start_hub()
    client = paramiko_client(hub)
    try:
        chan = client.get_transport().open_session()
        chan.invoke_subsystem("sftp")
        chan.sendall(struct.pack(">IBI", 5, 1, 3))  # INIT v3
        version = chan.recv(4096)
        assert version[4] == 2
        # An OPEN whose path length runs past the packet.
        body = bytes([3]) + struct.pack(">II", 9, 10_000) + b"abc"
        chan.sendall(struct.pack(">I", len(body)) + body)
        reply = chan.recv(4096)
        assert reply[4] == 101 and struct.unpack(">II", reply[5:13]) == (9, 5)  # STATUS BAD_MESSAGE
        # A packet over the limit ends the session, not the hub.
        chan.sendall(struct.pack(">I", 100 * 1024 * 1024) + b"\x03")
        assert chan.recv(4096) == b""
    finally:
        client.close()
    paramiko_client(hub).close()
    assert "Traceback" not in hub.log


def test_thousands_of_handles_are_refused_past_the_limit(start_hub):
    hub = start_hub("--sftp-max-handles", "50")
    client = paramiko_client(hub)
    try:
        sftp = client.open_sftp()
        with sftp.open("f", "wb") as f:
            f.write(b"x")
        handles = [sftp.open("f", "rb") for _ in range(50)]
        with pytest.raises(IOError, match="too many open handles"):
            for _ in range(2000):
                handles.append(sftp.open("f", "rb"))
        handles.pop().close()
        sftp.open("f", "rb").close()
    finally:
        client.close()


def test_idle_connection_is_closed_after_the_idle_timeout(start_hub):
    hub = start_hub("--sftp-idle-timeout", "1")
    client = paramiko_client(hub)
    try:
        client.open_sftp()
        hub.wait_for_log(r"sftp#\d+: idle for 1s, disconnecting", timeout=20)
        transport = client.get_transport()
        for _ in range(200):
            if not transport.is_active():
                break
            transport.join(0.05) if hasattr(transport, "join") else None
        assert not transport.is_active()
    finally:
        client.close()


def test_curl_and_lftp_speak_sftp_to_the_hub(start_hub, tmp_path):
    hub = start_hub()
    port = hub.ports["sftp"]
    data = os.urandom(100_000)
    (tmp_path / "c.bin").write_bytes(data)
    curl = _need("curl")
    if "sftp" not in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout.split("Protocols:")[-1]:
        pytest.skip("this curl is built without SFTP")
    subprocess.run([curl, "-sS", "-k", "--user", "alice:secret", "-T", str(tmp_path / "c.bin"), f"sftp://127.0.0.1:{port}/by-curl.bin"], check=True, timeout=60)
    got = subprocess.run([curl, "-sS", "-k", "--user", "alice:secret", f"sftp://127.0.0.1:{port}/by-curl.bin"], check=True, capture_output=True, timeout=60)
    assert got.stdout == data
    connect = "ssh -a -x -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    script = f"set sftp:connect-program '{connect}'; get by-curl.bin -o {tmp_path / 'by-lftp.bin'}; put {tmp_path / 'c.bin'} -o by-lftp.bin; bye"
    subprocess.run([_need("lftp"), "-u", "alice,secret", "-e", script, f"sftp://127.0.0.1:{port}"], check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (tmp_path / "by-lftp.bin").read_bytes() == data
    with open(os.path.join(home(hub), "by-lftp.bin"), "rb") as f:
        assert f.read() == data


def test_ssh_host_key_option_uses_the_given_keys_rsa_included(start_hub, tmp_path):
    key = tmp_path / "host_rsa"
    subprocess.run([_need("ssh-keygen"), "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(key)], check=True, timeout=60)
    hub = start_hub("--ssh-host-key", str(key))
    fingerprint = subprocess.run([_need("ssh-keygen"), "-l", "-f", str(key) + ".pub"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert re.findall(r"sftp host key (\S+) (SHA256:\S+)", hub.log) == [("ssh-rsa", fingerprint)]
    assert not os.path.exists(os.path.join(hub.data_dir, "ssh", "ssh_host_ed25519_key"))
    # OpenSSH accepts it only as rsa-sha2-256/512 (ssh-rsa with SHA-1 is off by default).
    done = sftp_batch(hub, "pwd\n", extra=["-o", "HostKeyAlgorithms=rsa-sha2-512,rsa-sha2-256"])
    assert "Remote working directory: /" in done.stdout


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_client_that_never_reads_does_not_grow_the_hubs_memory(start_hub):
    import struct

    hub = start_hub()
    client = paramiko_client(hub)
    try:
        sftp = client.open_sftp()
        with sftp.open("big", "wb") as f:
            f.write(os.urandom(4 * 1024 * 1024))
        before = _rss_kb(hub.process.pid)
        chan = client.get_transport().open_session()
        chan.invoke_subsystem("sftp")
        chan.sendall(struct.pack(">IBI", 5, 1, 3))
        assert chan.recv(4096)[4] == 2
        body = bytes([3]) + struct.pack(">I", 1) + struct.pack(">I", 3) + b"big" + struct.pack(">II", 1, 0)
        chan.sendall(struct.pack(">I", len(body)) + body)
        handle_reply = chan.recv(4096)
        handle = handle_reply[13:13 + struct.unpack(">I", handle_reply[9:13])[0]]
        # 100,000 READs of 255 KiB (25 GB of answers, 2.6 MB of requests:
        # more than the 2 MiB window the hub gives) that the client never
        # reads: paramiko opens no window for the answers until it does.
        request = b"".join(
            struct.pack(">IBI", 1 + 4 + 4 + len(handle) + 8 + 4, 5, 100 + i) + struct.pack(">I", len(handle)) + handle + struct.pack(">QI", 0, 255 * 1024)
            for i in range(100_000)
        )
        chan.settimeout(2)
        sent = 0
        try:
            while sent < len(request):
                sent += chan.send(request[sent:sent + 32768])
        except Exception:
            pass  # the hub stopped opening the window: the client cannot send more
        growth_mb = (_rss_kb(hub.process.pid) - before) / 1024
        assert sent < len(request), "the hub kept opening the window to a client that does not read"
        assert growth_mb < 60, f"the hub grew by {growth_mb:.0f} MB"
        chan.close()
    finally:
        client.close()
    paramiko_client(hub).close()  # and it serves the next one


def test_sftp_put_p_keeps_time_and_mode_under_a_quota_too(start_hub, tmp_path):
    # Under --quota the upload's writer is wrapped (filequota.QuotaWriter):
    # the mode and times FSETSTAT asked for were set on the wrapper and
    # lost (the file had 0644 and the time of its upload).
    hub = start_hub("--quota", "10M")
    src = tmp_path / "kept.txt"
    src.write_bytes(b"kept times\n")
    os.chmod(src, 0o640)
    os.utime(src, (1_500_000_000, 1_500_000_000))
    done = sftp_batch(hub, f"put -p {src} by-sftp.txt\n")
    assert "setstat" not in done.stderr, done.stderr
    st = os.stat(os.path.join(home(hub), "by-sftp.txt"))
    assert (st.st_mtime, st.st_mode & 0o777) == (1_500_000_000, 0o640)
    assert "Traceback" not in hub.log


def test_rmdir_and_opendir_of_a_missing_folder_answer_no_such_file(start_hub, tmp_path):
    """
    RMDIR and OPENDIR of a name that does not exist answer
    SSH_FX_NO_SUCH_FILE (filexfer-02 §7), as OpenSSH's sftp-server does
    (rmdir(2) and opendir(3) give ENOENT), not "failure: not a directory";
    FTP's RMD says the same. A file is still "not a directory".
    """
    hub = start_hub()
    (tmp_path / "afile").write_bytes(b"a\n")
    done = sftp_batch(hub, "-rmdir nosuch\nput afile\n-rmdir afile\n", check=False, cwd=tmp_path)
    assert 'remote rmdir "/nosuch": No such file or directory' in done.stderr
    assert 'remote rmdir "/afile": Failure' in done.stderr
    client = paramiko_client(hub)
    try:
        sftp = client.open_sftp()
        with pytest.raises(FileNotFoundError):
            sftp.listdir("nosuch")
        with pytest.raises(FileNotFoundError):
            sftp.rmdir("nosuch")
        with pytest.raises(OSError) as refused:
            sftp.listdir("afile")
        assert not isinstance(refused.value, FileNotFoundError)
    finally:
        client.close()
    f = ftp_login(hub)
    try:
        with pytest.raises(ftplib.error_perm, match=r"^550 RMD /nosuch: no such file or directory\.$"):
            f.rmd("nosuch")
        with pytest.raises(ftplib.error_perm, match=r"^550 RMD /afile: not a directory\.$"):
            f.rmd("afile")
        with pytest.raises(ftplib.error_perm, match=r"^550 CWD /nosuch: no such directory\.$"):
            f.cwd("nosuch")
    finally:
        f.close()
    assert "Traceback" not in hub.log


def test_names_that_are_not_utf8_are_listed_fetched_and_made_as_their_octets_as_over_ftp(start_hub, tmp_path):
    """
    A name that is not UTF-8 (C{caf\\xe9.txt}, stored by an FTP client on a
    Latin-1 system: FTP takes a name's octets as they come) travels as its
    octets over SFTP too, as OpenSSH's sftp-server sends and takes them
    (filexfer-02 names are strings of octets). One such name made READDIR
    of its whole folder fail ("Couldn't read directory: Failure": no
    listing at all), and the name itself was refused SSH_FX_BAD_MESSAGE.
    """
    hub = start_hub("--transcript")
    f = ftp_login(hub)
    try:
        f.encoding = "latin-1"  # the octets of the name as typed on a Latin-1 system
        f.storbinary("STOR caf\xe9.txt", io.BytesIO(b"latin-1 name\n"))
    finally:
        f.close()
    assert os.listdir(os.fsencode(home(hub))) == [b"caf\xe9.txt"]
    (tmp_path / "up.txt").write_bytes(b"made over sftp\n")
    done = sftp_batch(hub, b"ls -1\nget caf\xe9.txt got.txt\nput up.txt d\xe9j\xe0.txt\nrename d\xe9j\xe0.txt d\xe9j\xe0-2.txt\n", cwd=tmp_path)
    assert b"\ncaf\\351.txt\n" in done.stdout  # listed (OpenSSH's sftp shows the octet as \351)
    assert (tmp_path / "got.txt").read_bytes() == b"latin-1 name\n"
    with open(os.path.join(os.fsencode(home(hub)), b"d\xe9j\xe0-2.txt"), "rb") as made:
        assert made.read() == b"made over sftp\n"
    f = ftp_login(hub)
    try:
        f.encoding = "latin-1"
        assert sorted(f.nlst()) == ["caf\xe9.txt", "d\xe9j\xe0-2.txt"]
    finally:
        f.close()
    hub.wait_for_log(r"sftp#\d+ sftp: SFTP session closed")
    assert re.search(r"sftp#\d+ C: OPEN /caf\\xe9\.txt READ", hub.log)  # the octet, shown as one
    assert "Traceback" not in hub.log


def test_sftp_cp_copies_in_the_server_with_copy_data_under_the_quota(start_hub, tmp_path):
    """
    OpenSSH's C{sftp cp} (copy-data, draft-ietf-secsh-filexfer-extensions
    §7; OpenSSH 9.0 and later) copies a file in the hub: byte-exact, seen
    by FTP, a file larger than one READ answer (255 KiB); a copy that
    would pass the account's quota is refused and leaves no file. Before,
    the hub did not offer copy-data: "Server does not support copy-data
    extension".
    """
    hub = start_hub("--quota", "2M")
    body = os.urandom(700_000)
    (tmp_path / "big.bin").write_bytes(body)
    done = sftp_batch(hub, "put big.bin\ncp big.bin copy.bin\n-cp copy.bin third.bin\nls -1\n", cwd=tmp_path, check=False)
    assert "Server does not support" not in done.stderr
    with open(os.path.join(home(hub), "copy.bin"), "rb") as f:
        assert f.read() == body
    f = ftp_login(hub)
    try:
        got = io.BytesIO()
        f.retrbinary("RETR copy.bin", got.write)
        assert got.getvalue() == body
        assert sorted(f.nlst()) == ["big.bin", "copy.bin"]  # the third copy passed the quota: nothing left
    finally:
        f.close()
    assert 'Couldn\'t copy file "/copy.bin" to "/third.bin": Failure' in done.stderr
    assert "Traceback" not in hub.log


def test_put_of_an_executable_keeps_the_owners_execute_bit_as_the_open_asks(start_hub, tmp_path):
    """
    OpenSSH's C{put} (without C{-p}) sends the local file's mode with its
    OPEN: a new file's initial permissions (filexfer-02 §6.3), which
    OpenSSH's server gives it under its umask. The hub's umask is 077:
    C{run.sh} (0755) is 0700 (it was 0600: a script lost its execute bit
    on the way up and, with C{get}, on the way back), a 0644 file is
    still 0600, and a file that exists keeps its mode.
    """
    hub = start_hub()
    script, notes = tmp_path / "run.sh", tmp_path / "notes.txt"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    notes.write_bytes(b"notes\n")
    os.chmod(script, 0o755)
    os.chmod(notes, 0o644)
    sftp_batch(hub, "put run.sh\nput notes.txt\nget run.sh back.sh\n", cwd=tmp_path)
    assert os.stat(os.path.join(home(hub), "run.sh")).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(home(hub), "notes.txt")).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "back.sh").st_mode & 0o100
    os.chmod(notes, 0o755)
    sftp_batch(hub, "put notes.txt\n", cwd=tmp_path)  # an existing file keeps its mode
    assert os.stat(os.path.join(home(hub), "notes.txt")).st_mode & 0o777 == 0o600
    client = paramiko_client(hub)
    try:
        assert client.open_sftp().stat("run.sh").st_mode & 0o777 == 0o700
    finally:
        client.close()
