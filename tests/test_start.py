"""
Starting and running the hub as a user and an administrator see it: a
listener that cannot bind, --uid/--gid with privileged ports, bad accounts
files, SIGHUP reloads, the systemd unit.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.hubprocess import ROOT, HubProcess, client_context, listener_names
from twisted_mailhub import tap
from twisted_mailhub.testing import keep_log

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(*args, cwd=None, timeout=60, user=None, group=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([*TWISTD, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    keep_log(result.stdout + result.stderr)
    return result


def loopback_args(skip=()):
    args = []
    for name in listener_names():
        if name not in skip:
            args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    return args


@pytest.fixture
def busy_ports():
    """Two loopback ports something else listens on."""
    blockers = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        blockers.append(s)
    yield [s.getsockname()[1] for s in blockers]
    for s in blockers:
        s.close()


def test_listeners_that_cannot_bind_exit_1_with_one_clear_line_each(tmp_path, busy_ports):
    smtp_port, pop3_port = busy_ports
    args = loopback_args(skip=("smtp", "pop3"))
    result = twistd(
        "-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d"), "--user", "alice:secret", *args,
        "--smtp", f"tcp:{smtp_port}:interface=127.0.0.1", "--pop3", f"tcp:{pop3_port}:interface=127.0.0.1",
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    lines = [line for line in out.splitlines() if "cannot listen" in line]
    assert len(lines) == 2, out
    assert f"cannot listen for smtp on tcp:{smtp_port}:interface=127.0.0.1 (--smtp): the address is already in use" in lines[0]
    assert "give --smtp another endpoint" in lines[0] and "--no-smtp" in lines[0]
    assert f"cannot listen for pop3 on tcp:{pop3_port}:interface=127.0.0.1 (--pop3)" in lines[1]
    assert "Traceback" not in out and "ReactorNotRunning" not in out
    # nothing half-started: no ready line, no queue service, no store written
    assert "mailhub ready" not in out
    assert not os.path.exists(tmp_path / "d" / "queue" / "lock")


def test_daemonized_start_that_cannot_bind_is_reported_by_the_parent(tmp_path, busy_ports):
    pidfile, logfile = tmp_path / "hub.pid", tmp_path / "hub.log"
    result = twistd(
        f"--pidfile={pidfile}", f"--logfile={logfile}", "mailhub", "--data", str(tmp_path / "d"), "--user", "alice:secret",
        *loopback_args(skip=("imap",)), "--imap", f"tcp:{busy_ports[0]}:interface=127.0.0.1",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error" in result.stderr.lower()
    log = logfile.read_text()
    assert f"cannot listen for imap on tcp:{busy_ports[0]}:interface=127.0.0.1 (--imap)" in log
    assert "Traceback" not in log


def test_missing_accounts_file_is_one_usage_line(tmp_path):
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d"), "--auth", f"file:{tmp_path}/nonexistent", *loopback_args())
    assert result.returncode == 2
    assert result.stderr.strip() == f"mailhub: --auth: {tmp_path}/nonexistent: cannot read it: No such file or directory"
    assert "Traceback" not in result.stdout + result.stderr


def test_malformed_accounts_file_names_the_file_and_line(tmp_path):
    accounts = tmp_path / "accounts"
    accounts.write_text("# the class\nalice@localhost:secret\nbob hungry\n")
    result = twistd("-n", "--pidfile=", "mailhub", "--data", str(tmp_path / "d"), "--auth", f"file:{accounts}", *loopback_args())
    assert result.returncode == 2
    assert result.stderr.strip() == f"mailhub: --auth: {accounts}, line 3: expected ADDRESS:PASSWORD (no ':' on the line)"
    assert "hungry" not in result.stderr  # a line may hold a password: never quoted


def test_listeners_are_bound_before_privileges_are_dropped(tmp_path):
    """privilegedStartService binds every listener and gives DATA to --uid/--gid."""
    options = tap.Options()
    options.parseOptions(["--data", str(tmp_path / "d"), "--store", "memory", "--user", "alice:secret", *loopback_args()])
    umask = os.umask(0o022)
    try:
        hub_service = tap.makeService(options)
    finally:
        os.umask(umask)  # (makeService made this test process's umask 077: not for the tests after it)
    hub_service.hub.run_as = (65534, 65534)
    if os.geteuid() != 0:
        hub_service.hub.run_as = None
    hub_service.privilegedStartService()
    try:
        assert set(hub_service.hub.listening) == set(listener_names())
        assert not hub_service.running  # nothing started yet, only bound
        if os.geteuid() == 0:
            for top, dirs, files in os.walk(tmp_path / "d"):
                for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
                    assert os.lstat(name).st_uid == 65534, name
            assert os.path.exists(tmp_path / "d" / "tls" / "key.pem")
    finally:
        for port in hub_service.ports:
            port.stopListening()


def _free_privileged_port():
    for port in range(1000, 900, -1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no free port below 1024 on 127.0.0.1")


def _nobody_can_run_python():
    try:
        return subprocess.run([sys.executable, "-c", "import twisted"], user=65534, group=65534, capture_output=True, timeout=60).returncode == 0
    except (PermissionError, OSError):
        return False


# When this Python lives under a 0700 /root (pyenv), user nobody could not
# import from it after the switch: run the hub in a mount namespace of its
# own where /root is a 0755 tmpfs holding only a bind mount of the Python.
_OPEN_ROOT = """
set -e
mkdir -p /tmp/.mailhub-root-$$ && mount --bind /root /tmp/.mailhub-root-$$
mount -t tmpfs -o mode=0755 tmpfs /root
for d in /tmp/.mailhub-root-$$/.* /tmp/.mailhub-root-$$/*; do
  name=$(basename "$d"); [ "$name" = . ] || [ "$name" = .. ] || [ ! -e "$d" ] && continue
  if [ -d "$d" ]; then mkdir -p "/root/$name"; else touch "/root/$name"; fi
  mount --bind "$d" "/root/$name"
done
exec "$@"
"""


def test_root_start_with_uid_gid_serves_a_privileged_port_as_nobody(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: twistd --uid/--gid switches user")
    wrap = []
    if not _nobody_can_run_python():
        if shutil.which("unshare") is None or not sys.prefix.startswith("/root/"):
            why = f"user nobody cannot read this Python ({sys.prefix})"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
        wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c", _OPEN_ROOT, "open-root"]
    data = tempfile.mkdtemp(prefix="mailhub-uid-")  # not under a 0700 pytest folder
    os.chmod(data, 0o755)
    port = _free_privileged_port()
    hub = HubProcess(os.path.join(data, "d"), ["--smtp", f"tcp:{port}:interface=127.0.0.1"])
    hub.command = lambda base=hub.command: wrap + base()[:3] + ["--uid", "nobody", "--gid", "nogroup"] + base()[3:]
    try:
        hub.start()
        assert hub.ports["smtp"] == port
        import smtplib

        with smtplib.SMTP("127.0.0.1", port) as c:
            c.sendmail("judy@example.org", ["alice@localhost"], b"Subject: hi\r\n\r\nfrom a privileged port\r\n")
        status = open(f"/proc/{hub.process.pid}/status").read()
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
        new = os.path.join(hub.maildir("alice@localhost"), "new")
        [name] = os.listdir(new)
        assert os.stat(os.path.join(new, name)).st_uid == 65534
        assert os.stat(os.path.join(data, "d", "queue")).st_uid == 65534
    finally:
        pid = hub.process.pid if hub.process else None
        hub.stop()
        shutil.rmtree(data, ignore_errors=True)
        if pid is not None and os.path.isdir(f"/tmp/.mailhub-root-{pid}"):
            os.rmdir(f"/tmp/.mailhub-root-{pid}")


def test_systemd_unit_verifies():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = open(os.path.join(ROOT, "etc", "mailhub.service")).read()
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    assert "ReadWritePaths=/var/lib/mailhub" in unit and "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    # verify wants ExecStart's program to exist: point it at this twistd
    twistd_path = shutil.which("twistd") or sys.executable
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mailhub.service")
        with open(path, "w") as f:
            admin_path = shutil.which("mailhub-admin") or sys.executable
            f.write(unit.replace("/usr/local/bin/twistd", twistd_path).replace("/usr/local/bin/mailhub-admin", admin_path))
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mailhub.service" not in result.stderr, result.stderr


def test_each_local_delivery_is_one_log_line(hub):
    import smtplib

    message = b"Subject: minutes\r\n\r\nof the meeting\r\n"
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.sendmail("judy@example.org", ["alice@localhost", "bob@localhost"], message)
    m = hub.wait_for_log(
        r"delivered (\w+) from=<judy@example.org> to=<alice@localhost>,<bob@localhost> size=(\d+) "
        r"stored=maildir:alice@localhost/INBOX/(\S+),maildir:bob@localhost/INBOX/(\S+) client=127\.0\.0\.1"
    )
    assert int(m.group(2)) == len(message)
    for address, key in (("alice@localhost", m.group(3)), ("bob@localhost", m.group(4))):
        [name] = os.listdir(os.path.join(hub.maildir(address), "new"))
        assert name.startswith(key)
    assert hub.log.count("delivered ") == 1


def test_a_delivery_to_one_account_is_one_log_line_naming_its_file(hub):
    import smtplib

    message = b"Subject: agenda\r\n\r\nfor the meeting\r\n"
    before = hub.log.count("delivered ")
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.sendmail("judy@example.org", ["bob@localhost"], message)
    m = hub.wait_for_log(r"\] delivered (\w+) from=<judy@example.org> to=<bob@localhost> size=(\d+) stored=maildir:bob@localhost/INBOX/(\S+) client=127\.0\.0\.1\n")
    assert int(m.group(2)) == len(message)
    [name] = os.listdir(os.path.join(hub.maildir("bob@localhost"), "new"))
    assert name.startswith(m.group(3))
    assert hub.log.count("delivered ") == before + 1


def test_a_hub_without_accounts_warns_at_start(start_hub):
    hub = start_hub(users=())
    hub.wait_for_log(r"no accounts: nobody can log in .* add --user ADDRESS:PASSWORD")


def test_the_systemd_unit_leaves_port_22_to_the_servers_own_sshd():
    # Every server the unit is for runs sshd on 22; with --port-base 0
    # alone the hub's SFTP listener took 22 too and the start failed
    # ("cannot listen for sftp on tcp:22"), for good (RestartPreventExitStatus=1).
    unit = open(os.path.join(ROOT, "etc", "mailhub.service")).read()
    start = re.search(r"^ExecStart=(.*?[^\\])$", unit, re.M | re.S).group(1).replace("\\\n", " ")
    args = start.split()
    options = tap.Options()
    options.parseOptions(args[args.index("mailhub") + 1:])
    ports = {name: int(options[name].split(":")[1]) for name in ("smtp", "submission", "imap", "pop3", "sftp") if not options.get(f"no-{name}")}
    assert ports["smtp"] == 25 and ports["imap"] == 143  # the standard ports, as the unit promises
    assert 22 not in ports.values()


def unit_system_calls(unit: str, analyze: str) -> set[str]:
    """
    The system calls a unit's C{SystemCallFilter=} lines allow, as
    systemd.exec(5) reads them: the first line makes an allow list (or,
    with C{~}, a deny list of everything else); each later allow line adds
    its calls to the set, each later C{~} line takes them out. Groups
    (C{@system-service}) are expanded with C{systemd-analyze syscall-filter}.
    """
    listing = subprocess.run([analyze, "syscall-filter"], capture_output=True, text=True, timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())

    def expand(names: list[str], seen=()) -> set[str]:
        calls: set[str] = set()
        for name in names:
            if name.startswith("@"):
                if name not in seen:
                    calls |= expand(groups[name], (*seen, name))
            else:
                calls.add(name)
        return calls

    allowed: set[str] | None = None
    for value in re.findall(r"^SystemCallFilter=(.*)$", unit, re.M):
        deny = value.startswith("~")
        calls = expand(value.lstrip("~").split())
        if allowed is None:
            assert not deny, "the unit starts with an allow list"
            allowed = set(calls)
        elif deny:
            allowed -= calls
        else:
            allowed |= calls
    return allowed or set()


def test_the_systemd_unit_lets_workers_keep_their_cores():
    # --workers pins worker i to core i with sched_setaffinity; the unit's
    # "~@resources" denied it (EPERM): every worker ran unpinned under it.
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (apt-get install systemd)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    unit = open(os.path.join(ROOT, "etc", "mailhub.service")).read()
    allowed = unit_system_calls(unit, analyze)
    assert "sched_setaffinity" in allowed and "sched_getaffinity" in allowed
    # the rest of what the unit denies stays denied
    assert not {"setrlimit", "setpriority", "sched_setscheduler", "mount", "reboot", "init_module"} & allowed
