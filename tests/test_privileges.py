"""
twisted_mailhub.privileges: what a root start with C{--uid/--gid} leaves
behind. The pidfile twistd writes as root in a folder the user cannot
write (C{/run}) is removed when the hub ends, by a stop or a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from twisted_mailhub.privileges import may_remove

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534

def _gone(path, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_helper_removes_the_pidfile_when_the_process_ends_however_it_ends(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    pidfile = run / "mailhub.pid"
    for how in (signal.SIGKILL, signal.SIGTERM):
        launcher = (
            "import os, sys, time\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "from twisted_mailhub.privileges import remove_pidfile_at_end\n"
            "print(remove_pidfile_at_end(sys.argv[1], 65534, 65534), flush=True)\n"
            "time.sleep(600)\n"
        )
        hub = subprocess.Popen([sys.executable, "-c", launcher, str(pidfile)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True)
        helper = int(hub.stdout.readline())
        assert pidfile.read_text() == str(hub.pid)
        # A signal to the hub's whole group (kill -- -PGID) leaves the helper to its work.
        os.killpg(hub.pid, how)
        hub.wait()
        assert _gone(pidfile), how
        assert _gone(f"/proc/{helper}"), how


def test_a_pidfile_that_names_another_process_is_left_alone(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    pidfile = run / "mailhub.pid"
    launcher = (
        "import os, sys, time\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "from twisted_mailhub.privileges import remove_pidfile_at_end\n"
        "print(remove_pidfile_at_end(sys.argv[1], 65534, 65534), flush=True)\n"
        "open(sys.argv[1], 'w').write('1')\n"  # another hub's start wrote it meanwhile
    )
    hub = subprocess.Popen([sys.executable, "-c", launcher, str(pidfile)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    helper = int(hub.stdout.readline())
    hub.wait()
    assert _gone(f"/proc/{helper}")
    assert pidfile.read_text() == "1"


def test_no_helper_when_the_user_may_remove_the_pidfile_itself(tmp_path):
    from twisted_mailhub.privileges import remove_pidfile_at_end

    folder = tmp_path / "own"
    folder.mkdir(mode=0o755)
    pidfile = folder / "mailhub.pid"
    pidfile.write_text(str(os.getpid()))
    user = os.getuid()
    if user == 0:  # a folder of the user's own, as /var/run/mailhub/ would be
        user = NOBODY
        os.chown(folder, NOBODY, NOBODY)
    assert remove_pidfile_at_end(str(pidfile), user, user) is None
    assert remove_pidfile_at_end("", NOBODY, NOBODY) is None
    assert remove_pidfile_at_end(str(folder / "not-written.pid"), NOBODY, NOBODY) is None


def test_may_remove_reads_the_folders_bits(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    path = folder / "x.pid"
    path.write_text("1")
    st = folder.stat()
    os.chmod(folder, 0o755)
    assert may_remove(str(path), st.st_uid, st.st_gid)
    assert not may_remove(str(path), NOBODY, NOBODY) or st.st_uid == NOBODY
    os.chmod(folder, 0o775)
    assert may_remove(str(path), NOBODY, st.st_gid)
    os.chmod(folder, 0o1777)  # sticky, as /tmp: only one's own files
    assert not may_remove(str(path), NOBODY, NOBODY)
    os.chmod(folder, 0o777)
    assert may_remove(str(path), NOBODY, NOBODY)
    os.chmod(folder, 0o700)



@pytest.mark.parametrize("readable", [False, True])
def test_a_root_start_warns_of_a_certificate_its_user_cannot_read(readable, tmp_path, request):
    # certbot keeps its keys where only root reads (/etc/letsencrypt/live,
    # 0700): read at the root start, a reload as nobody after a renewal
    # would keep the old certificate. Said at the start.
    from twisted.logger import globalLogPublisher

    from tests.test_start import loopback_args
    from twisted_mailhub import tap
    from twisted_mailhub.tls import make_self_signed

    if os.geteuid() != 0:
        pytest.skip("needs root: a start that switches to --uid")
    import shutil
    import tempfile
    from pathlib import Path

    # (pytest's own folder is root's alone: a place nobody can reach, but for "live")
    top = Path(tempfile.mkdtemp(prefix="mailhub-tls-"))
    os.chmod(top, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    live = top / "live"
    live.mkdir(mode=0o755 if readable else 0o700)
    make_self_signed("mail.example.org", str(live / "fullchain.pem"), str(live / "privkey.pem"))
    if readable:
        os.chown(live / "privkey.pem", NOBODY, NOBODY)
    options = tap.Options()
    options.parseOptions(["--data", str(tmp_path / "d"), "--store", "memory", "--user", "alice:secret", "--tls-cert", str(live / "fullchain.pem"), "--tls-key", str(live / "privkey.pem"), *loopback_args()])
    umask = os.umask(0o022)
    try:
        hub_service = tap.makeService(options)
    finally:
        os.umask(umask)
    hub_service.hub.run_as = (NOBODY, NOBODY)
    said = []

    def heard(event):
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            said.append(event)

    globalLogPublisher.addObserver(heard)
    try:
        hub_service.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(heard)
        for port in hub_service.ports:
            port.stopListening()
    assert (os.geteuid(), os.getegid()) == (0, 0)  # root again after the tries
    warned = [e for e in said if e.get("option") in ("tls-cert", "tls-key")]
    if readable:
        assert warned == []
    else:
        assert [(e["option"], e["path"], e["why"]) for e in warned] == [
            ("tls-cert", str(live / "fullchain.pem"), "Permission denied"),
            ("tls-key", str(live / "privkey.pem"), "Permission denied"),
        ]
