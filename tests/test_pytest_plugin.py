"""
The pytest plugin used the way a user uses it: a throwaway project in a
temp folder, with no conftest.py, whose tests take the C{mailhub} and
C{mailhub_session} fixtures, run by pytest in a subprocess.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap

from twisted_mailhub.testing import PACKAGE_ROOT

USER_TESTS = '''
import base64
import io
import json
import smtplib
import urllib.request
from email.message import EmailMessage

import pytest


def api(hub, path):
    request = urllib.request.Request(f"http://{hub.host}:{hub.ports['web']}/api/v1{path}")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"alice@example.com:secret").decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def welcome(to):
    m = EmailMessage()
    m["From"] = "app@example.com"
    m["To"] = to
    m["Subject"] = "Welcome"
    m.set_content("Click to activate.")
    return m


def test_sends_over_starttls_then_reads_by_imap_and_ftp(mailhub):
    with smtplib.SMTP(mailhub.host, mailhub.ports["submission"]) as s:
        s.starttls(context=mailhub.ssl_context)
        s.login("alice@example.com", "secret")
        s.send_message(welcome("alice@example.com"))
    got = mailhub.wait_for_message(to="alice@example.com", subject="Welcome", timeout=10)
    assert got.text().strip() == "Click to activate."
    parsed = json.loads(api(mailhub, f"/accounts/me/folders/INBOX/messages/{got.uid}"))
    assert parsed["envelope"]["subject"] == "Welcome" and parsed["text"].strip() == "Click to activate."
    imap = mailhub.imap("alice@example.com")
    imap.select("INBOX")
    assert imap.search(None, "SUBJECT", "Welcome")[1] == [b"1"]
    imap.logout()
    ftp = mailhub.ftp("alice@example.com")
    ftp.storbinary("STOR report.txt", io.BytesIO(b"quarterly"))
    ftp.quit()
    assert api(mailhub, "/accounts/me/files/report.txt") == b"quarterly"
    assert mailhub.files("alice@example.com") == {"report.txt": b"quarterly"}


@pytest.mark.mailhub(accounts=["carol@example.org:pw"], domains=["example.org"], options=["--no-ftp"])
def test_marker_sets_accounts_domains_and_options(mailhub):
    assert "ftp" not in mailhub.ports
    with smtplib.SMTP(mailhub.host, mailhub.ports["smtp"]) as s:
        s.send_message(welcome("carol@example.org"))
    assert mailhub.wait_for_message(to="carol@example.org").subject == "Welcome"


def test_session_hub_first(mailhub_session):
    with smtplib.SMTP(mailhub_session.host, mailhub_session.ports["smtp"]) as s:
        s.send_message(welcome("bob@example.com"))
    mailhub_session.wait_for_message(to="bob@example.com")


def test_session_hub_is_purged_between_tests(mailhub_session):
    assert mailhub_session.messages("bob@example.com") == []
'''

PYTEST_INI = '''
[pytest]
mailhub_accounts = alice@example.com:secret bob@example.com:hungry
mailhub_domains = example.com
mailhub_options = --max-message-size 1000000
'''


def plugin_installed() -> bool:
    return any(ep.value == "twisted_mailhub.pytest_plugin" for ep in importlib.metadata.entry_points(group="pytest11"))


def test_throwaway_project_uses_the_fixtures_with_only_pytest_ini(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(textwrap.dedent(PYTEST_INI))
    (project / "test_mail.py").write_text(USER_TESTS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    # Installed, the pytest11 entry point loads the plugin; from a checkout
    # it is named on the command line instead.
    load = [] if plugin_installed() else ["-p", "twisted_mailhub.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load, "test_mail.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout
    assert not any(p.name.startswith("mailhub") for p in tmp_path.iterdir())


def test_setup_cfg_declares_the_pytest11_entry_point_to_the_plugin():
    config = configparser.ConfigParser()
    config.read(os.path.join(PACKAGE_ROOT, "setup.cfg"))
    lines = config["options.entry_points"]["pytest11"].strip().splitlines()
    entries = {name.strip(): value.strip() for name, value in (line.split("=", 1) for line in lines)}
    # Named as the module: `-p twisted_mailhub.pytest_plugin` finds it by that name.
    module = importlib.import_module(entries["twisted_mailhub.pytest_plugin"])
    assert callable(module.mailhub) and callable(module.mailhub_session)
    assert callable(module.pytest_addoption)


ONE_TEST = '''
import smtplib


def test_a_hub_from_the_plugin(mailhub):
    with smtplib.SMTP(mailhub.host, mailhub.ports["smtp"]) as s:
        s.sendmail("a@example.com", ["alice@example.com"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
    assert mailhub.wait_for_message(to="alice@example.com", timeout=10).subject == "hi"
'''


def _as_installed(site) -> None:
    """
    Make C{site} (a folder for C{PYTHONPATH}) hold what pip installs for
    pytest to find: the distribution's metadata with the entry points
    setup.cfg declares (the code itself comes from the checkout).
    """
    config = configparser.ConfigParser()
    config.read(os.path.join(PACKAGE_ROOT, "setup.cfg"))
    dist = site / "twisted_mailhub-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: twisted-mailhub\nVersion: 0.1.0\n")
    lines = ["[pytest11]"] + [line.strip() for line in config["options.entry_points"]["pytest11"].strip().splitlines()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_the_checkouts_p_option_also_works_when_the_package_is_installed(tmp_path):
    # README: from a checkout, `pytest -p twisted_mailhub.pytest_plugin`;
    # installed, the entry point loads it. Both at once (a checkout's
    # habit on a machine where the package is also installed) was a
    # pluggy ValueError "Plugin already registered under a different name".
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(textwrap.dedent(PYTEST_INI))
    (project / "test_mail.py").write_text(ONE_TEST)
    site = tmp_path / "site"
    _as_installed(site)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    for load in (["-p", "twisted_mailhub.pytest_plugin"], []):
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load, "test_mail.py"],
            cwd=project, env=env, capture_output=True, text=True, timeout=240,
        )
        assert run.returncode == 0, (load, run.stdout + run.stderr)
        assert "1 passed" in run.stdout, (load, run.stdout)
    # a conftest.py naming it (pytest_plugins), the other old habit, too
    (project / "conftest.py").write_text('pytest_plugins = ["twisted_mailhub.pytest_plugin"]\n')
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mail.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    (project / "conftest.py").unlink()
    # and it can still be turned off by that name
    off = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:twisted_mailhub.pytest_plugin", "test_mail.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240,
    )
    assert off.returncode != 0 and "fixture 'mailhub' not found" in off.stdout, off.stdout + off.stderr


ERROR_TESTS = '''
import socket

import pytest


@pytest.mark.mailhub(options=["--max-mesage-size", "10"])
def test_a_misspelt_option(mailhub):
    pass


@pytest.mark.mailhub(acounts=["carol:pw"])
def test_a_misspelt_marker_keyword(mailhub):
    pass


TAKEN = socket.socket()
TAKEN.bind(("127.0.0.1", 0))
TAKEN.listen()


@pytest.mark.mailhub(options=["--smtp", f"tcp:{TAKEN.getsockname()[1]}:interface=127.0.0.1"])
def test_a_port_taken(mailhub):
    pass


def test_nothing_arrives(mailhub):
    import smtplib

    with smtplib.SMTP(mailhub.host, mailhub.ports["smtp"], timeout=10) as s:
        s.sendmail("app@localhost", ["bob@localhost"], b"Subject: Hello there\\r\\n\\r\\nhi\\r\\n")
    mailhub.wait_for_message(to="bob", subject="Goodbye", timeout=1)
'''


def test_a_hub_that_cannot_start_or_a_wait_that_times_out_is_reported_in_the_hubs_words(tmp_path):
    # Before: pytest printed the kit's start() source, the fixtures'
    # reprs (<SubRequest ...>, <twisted_mailhub.testing.Mailhub object at
    # 0x...>) and twistd's 200-line usage text ahead of its one error
    # line, which said "-c -n: option ... not recognized".
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_errors.py").write_text(ERROR_TESTS)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    load = [] if plugin_installed() else ["-p", "twisted_mailhub.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load, "test_errors.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240,
    )
    out = run.stdout + run.stderr
    assert "1 failed, 3 errors" in out, out
    assert "the mailhub fixture could not start its hub: mailhub exited with status 1 before it was ready: option --max-mesage-size not recognized" in out
    assert "@pytest.mark.mailhub takes accounts=, domains=, options= (got acounts)" in out
    assert "before it was ready: mailhub: cannot listen for smtp on tcp:" in out and "already in use" in out
    assert "TimeoutError: no message to='bob' subject='Goodbye' in INBOX within 1 s (there: bob@localhost 'Hello there')" in out
    for noise in ("object at 0x", "<SubRequest", "def start(", "During handling", "Usage: twistd", "--anonymous-ftp", "-c -n:"):
        assert noise not in out, noise
    assert "<Mailhub pid " in out  # the fixture's argument, as pytest shows it


KILLED_TESTS = '''
import json
import os

from twisted_mailhub.testing import bytecode_cache_folder


def test_the_process_dies_at_once(mailhub, mailhub_session):
    with open(os.environ["RECORD"], "w") as f:
        json.dump({"pids": [mailhub.pid, mailhub_session.pid], "cache": bytecode_cache_folder()}, f)
    os._exit(3)  # as a SIGKILL, a CI timeout or an xdist worker ended at once: no teardown, no exit handlers
'''


def test_a_test_process_that_dies_at_once_leaves_no_hub_and_no_folder_outside_pytests_temp(tmp_path):
    # Before: both hubs ran on (orphans holding their ports) and the
    # bytecode cache folder stayed in the temp folder.
    import json
    import time

    project = tmp_path / "project"
    project.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    (project / "test_killed.py").write_text(KILLED_TESTS)
    env = dict(os.environ, TMPDIR=str(temp), RECORD=str(tmp_path / "record.json"), PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    load = [] if plugin_installed() else ["-p", "twisted_mailhub.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load, "test_killed.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 3, run.stdout + run.stderr
    record = json.loads((tmp_path / "record.json").read_text())
    deadline = time.monotonic() + 20
    alive = record["pids"]
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.1)
    assert alive == []
    assert [p.name for p in temp.iterdir()] == ["pytest-of-" + _user()]
    if record["cache"]:
        assert record["cache"].startswith(str(temp / ("pytest-of-" + _user())))


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _user() -> str:
    import getpass

    return getpass.getuser()


def test_a_marker_on_a_test_that_takes_only_the_session_hub_is_refused_not_ignored(tmp_path):
    # Before: the marker's accounts and options were silently not applied
    # (the session hub is shared), and the test went on without them.
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_marked.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.mailhub(options=['--no-ftp'])\n"
        "def test_marked(mailhub_session):\n"
        "    assert 'ftp' not in mailhub_session.ports\n\n\n"
        "def test_unmarked(mailhub_session):\n"
        "    assert 'ftp' in mailhub_session.ports\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    load = [] if plugin_installed() else ["-p", "twisted_mailhub.pytest_plugin"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load], cwd=project, env=env, capture_output=True, text=True, timeout=240)
    out = run.stdout + run.stderr
    assert "1 passed, 1 error" in out, out
    assert "@pytest.mark.mailhub configures the mailhub fixture only; mailhub_session is shared" in out
