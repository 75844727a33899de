"""
The README's commands work as printed.

The classroom demo (two hubs on one machine, marked in the README with
C{<!-- readme-test: NAME -->} before each block) is run verbatim by bash in
a network namespace of its own (C{unshare -n}), so its fixed ports never
meet another test's. Every other C{twistd ... mailhub ...} and
C{mailhub-admin ...} command in a C{sh} block is parsed with the hub's own
option parser, so a renamed or removed option fails here.
"""

import os
import re
import shlex
import shutil
import sys
import subprocess

import pytest
from twisted.python import usage

from tests.hubprocess import ROOT
from tests.rawclient import piped
from twisted_mailhub import tap
from twisted_mailhub.testing import keep_log

README = os.path.join(ROOT, "README.md")


def readme_blocks():
    """(marker or None, text) of every ```sh block, in order."""
    text = open(README, encoding="utf-8").read()
    pattern = re.compile(r"(?:<!-- readme-test: ([\w-]+) -->\n)?```sh\n(.*?)```", re.S)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)]


def commands(block):
    """The block's commands, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield line


def _shell_parts(line: str) -> list[list[str]]:
    """The words of each command of a shell line, split at &&, ||, ; and | outside quotes (a deploy hook's quoted && stays in its word)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|", "(", ")", "&"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [words for words in parts if words]


def test_every_twistd_mailhub_command_in_the_readme_parses():
    seen = 0
    for _, block in readme_blocks():
        for line in commands(block):
            for words in _shell_parts(line):
                part = shlex.join(words)
                if any(w.startswith("PYTHONPATH=") for w in words):
                    continue  # plugin examples: tests/test_components.py, test_filters.py
                if "twistd" in words and "mailhub" in words:
                    args = words[words.index("mailhub") + 1:]
                    options = tap.Options()
                    try:
                        options.parseOptions(args)
                    except usage.UsageError as e:
                        pytest.fail(f"README: {part.strip()}: {e}")
                    seen += 1
                elif words[:1] == ["mailhub-admin"] and words[1:2] == ["user"]:
                    from twisted_mailhub import admin

                    try:
                        admin._parser().parse_args(words[1:])
                    except SystemExit:
                        pytest.fail(f"README: {part.strip()}: mailhub-admin refuses it")
                    seen += 1
    assert seen >= 8


def _needs(*tools: str) -> None:
    """Skip (fail under CI) unless root and every one of C{tools} is here: the README's fixed ports want a private network namespace."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        why = f"needs {', '.join(missing) or 'root'} (a private network namespace for the fixed ports)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def test_the_twistd_commands_in_the_readmes_text_parse_and_its_help_lists_every_option():
    # The commands written in the text (`twistd -n mailhub --hostname
    # mail.test --user bob:hungry`), not in a block: parsed as above, and
    # `twistd -n mailhub --help` run as printed.
    text = open(README, encoding="utf-8").read()
    spans = {" ".join(span.split()) for span in re.findall(r"`(twistd [^`]*)`", text)}
    parsed = 0
    for span in sorted(spans):
        words = shlex.split(span)
        if "mailhub" not in words or "..." in words:
            continue  # `twistd -n`, `twistd --umask 027 mailhub ...`: twistd's own, or a placeholder
        if words[-1] == "--help":
            done = subprocess.run(["bash", "-c", span], capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
            assert done.returncode == 0, done.stdout + done.stderr
            options = tap.Options()
            missing = [name for name, *_ in options.optParameters + options.optFlags if f"--{name}" not in done.stdout]
            assert not missing, f"README: {span} does not list {missing}"
        else:
            options = tap.Options()
            try:
                options.parseOptions(words[words.index("mailhub") + 1:])
            except usage.UsageError as e:
                pytest.fail(f"README: {span}: {e}")
        parsed += 1
    assert parsed >= 3, spans


def test_the_two_hub_classroom_demo_runs_as_printed(tmp_path):
    marked = {name: block for name, block in readme_blocks() if name}
    assert {"two-hubs-start", "two-hubs-send", "two-hubs-read", "two-hubs-stop"} <= set(marked)
    _needs("unshare", "ip", "swaks", "curl", "nc")
    script = "\n".join([
        "set -eu",
        "ip link set lo up",
        marked["two-hubs-start"],
        marked["two-hubs-send"],
        # the relay hands the message over a moment later
        "for i in $(seq 150); do",
        "  if out=$(" + marked["two-hubs-read"].strip() + ") && [ -n \"$out\" ]; then break; fi; sleep 0.1",
        "done",
        'echo "$out"',
        marked.get("two-hubs-greet", ""),
        marked["two-hubs-stop"],
    ])
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    out = result.stdout + result.stderr
    keep_log(out)
    try:
        assert result.returncode == 0, out
        assert "Subject: hello Bob" in result.stdout, out
        assert "220 mx.a.test" in result.stdout and "+OK" in result.stdout, out
        assert "Traceback" not in out
    finally:
        for hub in ("alice-hub", "bob-hub"):
            try:  # a hub the demo stopped removes its pidfile as it goes
                pid = (tmp_path / hub / "twistd.pid").read_text().strip()
            except FileNotFoundError:
                continue
            subprocess.run(["kill", pid], capture_output=True)


# -- the sessions typed by hand ----------------------------------------------------


def marked_blocks():
    """{marker: text} of every block after a C{<!-- readme-test: NAME -->} line, whatever its language."""
    text = open(README, encoding="utf-8").read()
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- readme-test: ([\w-]+) -->\n```\w*\n(.*?)```", text, re.S)}


# What differs from one run to the next (queue ids, dates, the APOP
# timestamp, UIDVALIDITY, the passive port), the same in the README and
# in what the hub says.
_VARYING = [
    (re.compile(r"\b[0-9A-F]{17}\b"), "<queue id>"),
    (re.compile(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"), "<date>"),
    (re.compile(r"<\d+\.\d+\.[0-9a-f]+@mail\.test>"), "<apop timestamp>"),
    (re.compile(r"(UIDVALIDITY|HIGHESTMODSEQ) \d+"), r"\1 <n>"),
    (re.compile(r"\(127,0,0,1,\d+,\d+\)"), "(127,0,0,1,<port>)"),
]


def _steady(line: str) -> str:
    for pattern, stands_for in _VARYING:
        line = pattern.sub(stands_for, line)
    return line


def _turns(block: str, client_line) -> list[tuple[str, str]]:
    """A session block as (C or S, line): C{C:}/C{S:} prefixes, or C{client_line(line)} for a bare transcript."""
    turns = []
    for line in block.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            continue  # the command that opened the session
        if line[:2] in ("C:", "S:"):
            turns.append((line[0], line[3:] if line[2:3] == " " else line[2:]))
        elif client_line(line):
            turns.append(("C", re.sub(r"\s{2,}\(in another terminal.*\)$", "", line)))
        else:
            turns.append(("S", line))
    return turns


def _replay(name: str, sock, turns, on_sent=None) -> None:
    """Send the C lines, read the S lines, and compare each with the README's (varying parts aside)."""
    reader = sock.makefile("rb")
    for who, line in turns:
        if who == "C":
            sock.sendall(line.encode("utf-8") + b"\r\n")
            if on_sent is not None:
                on_sent(line)
            continue
        got = reader.readline().decode("utf-8", "replace").rstrip("\r\n")
        assert _steady(got) == _steady(line), f"README block {name!r}: the README shows {line!r}, the hub says {got!r}"


def test_the_sessions_typed_by_hand_in_the_readme_go_as_printed(start_hub):
    import smtplib
    import socket
    import ssl

    blocks = marked_blocks()
    hub = start_hub("--hostname", "mail.test")
    bare = lambda line: not line.startswith(("*", ")")) and line != "" and not line[:3].isdigit() and not re.match(r"^[a-z] [A-Z]", line) and not line.startswith("Subject:")

    def connect(name: str, tls: bool = False):
        s = socket.create_connection(("127.0.0.1", hub.ports[name]), timeout=10)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            s = context.wrap_socket(s)
        return s

    # SMTP by hand: the message for bob, then the file it became.
    with connect("smtp") as s:
        _replay("session-smtp", s, _turns(blocks["session-smtp"], bare))
    new = os.path.join(hub.data_dir, "mail", "localhost", "bob", "new")
    (stored,) = os.listdir(new)
    with open(os.path.join(new, stored), "rb") as f:
        shown = f.read().decode("utf-8").replace("\r\n", "\n")
    assert [_steady(line) for line in shown.rstrip("\n").split("\n")] == [_steady(line) for line in blocks["session-stored"].rstrip("\n").split("\n")]
    with connect("smtp") as s:
        s.makefile("rb").readline()  # the greeting, not in the README's EHLO block
        _replay("session-ehlo", s, _turns(blocks["session-ehlo"], bare))
    with connect("pop3") as s:
        _replay("session-pop3", s, _turns(blocks["session-pop3"], bare))
    # "The whole session can also be piped in at once": printf ... | nc -N
    printed = re.search(r"`printf '([^']*)' \| nc -N localhost 8025`", open(README, encoding="utf-8").read()).group(1)
    answered = piped(hub, "smtp", printed.encode().decode("unicode_escape").encode())
    assert re.search(rb"^250 2\.0\.0 Ok: queued as ", answered, re.M) and answered.rstrip().endswith(b"221 2.0.0 Bye"), answered
    # IMAP over imaps, "with one message delivered by SMTP"
    with smtplib.SMTP("127.0.0.1", hub.ports["smtp"]) as c:
        c.sendmail("student@example.org", ["alice@localhost"], b"Subject: lunch\r\n\r\nSee you at noon.\r\n")
    with connect("imaps", tls=True) as s:
        _replay("session-imap", s, _turns(blocks["session-imap"], lambda line: bool(re.match(r"^[a-z] [a-z]", line))))
    # FTP: the listing's data connection is the second nc of the README.
    with connect("ftp") as s:
        passive: list = []
        turns = _turns(blocks["session-ftp"], lambda line: not line[:3].isdigit())
        reader = s.makefile("rb")

        def data_connection():
            # As the README's student does: the second nc connects once the
            # 150 for LIST is on the screen (connected before it, the hub
            # may answer 125 "already open": RFC 959 allows both).
            nums = [int(n) for n in re.search(r"\((\d+,\d+,\d+,\d+,\d+,\d+)\)", passive[-2]).group(1).split(",")]
            with socket.create_connection(("127.0.0.1", nums[4] * 256 + nums[5]), timeout=10) as d:
                while d.recv(65536):
                    pass

        listing = False
        for who, line in turns:
            if who == "C":
                s.sendall(line.encode() + b"\r\n")
                listing = line == "list"
                continue
            got = reader.readline().decode("utf-8", "replace").rstrip("\r\n")
            passive.append(got)
            assert _steady(got) == _steady(line), f"README block 'session-ftp': the README shows {line!r}, the hub says {got!r}"
            if listing and got.startswith("1"):
                data_connection()
                listing = False


# -- the admin commands --------------------------------------------------------------


def _admin_lines():
    """Every mailhub-admin / python3 -m twisted_mailhub.* / psql line of the README's sh blocks, in order."""
    for name, block in readme_blocks():
        if name:
            continue  # the classroom demo: its own test
        for line in commands(block):
            if line.startswith(("mailhub-admin ", "python3 -m twisted_mailhub.", "psql ", "curl -s http://127.0.0.1:8080/")) or line.startswith("echo ") and "| mailhub-admin" in line:
                yield line


def test_every_admin_command_in_the_readme_runs_as_printed(start_hub, tmp_path, pg_dsn):
    # The README's paths are mapped into a temp folder (/var/lib/mailhub,
    # /srv, ./mailhub-data), $DSN is a test database; everything else is
    # run by bash as printed. `check` is left out: it binds the standard
    # ports and asks the real DNS about the domains (its options are
    # parsed in the test above).
    data = tmp_path / "var" / "lib" / "mailhub"
    data.mkdir(parents=True)
    (data / "accounts").write_text("bob@example.org:hungry\n")
    (tmp_path / "mailhub-data").symlink_to(data)
    shims = _installed_commands(tmp_path / "bin")
    # Outbound mail goes nowhere (a refused port on loopback, no DNS), so
    # one message waits in the queue for `list` and `remove ID`.
    hub = start_hub("--auth", f"file:{data}/accounts", "--domain", "example.org", "--mx-override", "*=127.0.0.1:9", "--retry-schedule", "1h", users=(), data=str(data))
    env = dict(os.environ, PYTHONPATH=ROOT, DSN=pg_dsn, PATH=f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    import smtplib

    from tests.hubprocess import client_context

    with smtplib.SMTP("127.0.0.1", hub.ports["submission"]) as s:
        s.starttls(context=client_context())
        s.login("bob@example.org", "hungry")
        s.sendmail("bob@example.org", ["someone@elsewhere.test", "bob@example.org"], b"Subject: queued\r\n\r\nfor the queue commands\r\n")
    hub.wait_for_log(r"relay \S+ <bob@example.org>")
    listed = subprocess.run([sys.executable, "-m", "twisted_mailhub.queue", "--data", str(data), "list"], env=env, capture_output=True, text=True, timeout=60)
    queue_id = re.search(r"^(\S+)\s+\d+ octets", listed.stdout, re.M).group(1)
    ran = []
    lines = list(_admin_lines())
    later = [line for line in lines if " migrate " in line]  # "stop the hub first"
    for line in [line for line in lines if line not in later] + ["STOP"] + later:
        if line == "STOP":
            hub.stop(remove_data=False)
            continue
        if line.startswith("mailhub-admin check "):
            continue
        if line.startswith("psql ") and shutil.which("psql") is None:
            if os.environ.get("CI"):
                pytest.fail("psql is missing (apt-get install postgresql)")
            continue
        command = line.replace("/var/lib/mailhub", str(data)).replace("/srv/", f"{tmp_path}/srv/").replace(" remove ID", f" remove {queue_id}")
        command = command.replace("127.0.0.1:8080", f"127.0.0.1:{hub.ports.get('web', 8080)}")  # the web listener's port in this test
        if "asks" in block_comment(line) or " passwd " in line:
            # typed at a terminal, twice, as the README says
            returncode, out = _in_a_terminal(command, "Tea-4-two\nTea-4-two\n", cwd=tmp_path, env=env)
        else:
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            returncode, out = done.returncode, done.stdout + done.stderr
        assert returncode == 0 and "Traceback" not in out, f"README: {line}\n{out}"
        if line.startswith("curl "):
            assert out.strip(), f"README: {line} printed nothing"
        ran.append(line)
    assert len(ran) >= 15, ran
    assert "Traceback" not in hub.log


def _installed_commands(folder) -> str:
    """
    A folder to put first on PATH in which C{mailhub-admin} and C{python3}
    are what an installed package gives (this checkout's, on this Python):
    the project is not pip-installed while it is tested.
    """
    folder.mkdir()
    (folder / "mailhub-admin").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m twisted_mailhub.admin \"$@\"\n")
    (folder / "mailhub-admin").chmod(0o755)
    (folder / "python3").symlink_to(sys.executable)
    return str(folder)


def block_comment(line: str) -> str:
    """The README's own comment after a command (C{# asks twice, no echo})."""
    for _, block in readme_blocks():
        for raw in block.replace("\\\n", " ").splitlines():
            if raw.split(" #", 1)[0].strip() == line:
                return raw.split(" #", 1)[1] if " #" in raw else ""
    return ""


def _in_a_terminal(command: str, typed: str, **kw) -> tuple[int, str]:
    """
    Run C{command} with a terminal (a pty) as its input and output, and
    type the lines of C{typed} at its password prompts (a line ending in
    C{:}), one per prompt, as a person would: a password prompt flushes
    what was typed before it.
    """
    return _converse(command, [(rb":\s*$", line, True) for line in typed.splitlines(keepends=True)], **kw)


def _converse(command: str, answers, **kw) -> tuple[int, str]:
    """
    Run C{command} (by bash) with a terminal (a pty) as its controlling
    terminal, input and output, and answer its prompts in order as a person
    would: C{answers} is a list of (regular expression of bytes that ends
    the prompt, the line to type, or a function of all printed so far (bytes)
    that gives it, secret). A secret answer is typed once the prompt has
    turned echo off (setting the terminal up flushes what was typed before).
    Returns (exit status, -1 when it did not end within 60 s; all it
    printed).
    """
    import fcntl
    import pty
    import select
    import termios
    import time

    answers = list(answers)
    master, slave = pty.openpty()
    # start_new_session's setsid() runs first: the pty becomes the new
    # session's terminal, the /dev/tty that ssh asks on
    process = subprocess.Popen(["bash", "-c", command], stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                               preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0), **kw)
    os.close(slave)
    out = b""
    answered = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if answers and re.search(answers[0][0], out[answered:]):
                _prompt, line, secret = answers.pop(0)
                while secret and termios.tcgetattr(master)[3] & termios.ECHO and time.monotonic() < deadline and process.poll() is None:
                    time.sleep(0.01)
                os.write(master, (line(out) if callable(line) else line).encode())
                answered = len(out)
        elif process.poll() is not None:
            break
    os.close(master)
    try:
        return process.wait(10), out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        process.kill()
        return -1, out.decode("utf-8", "replace")


def test_every_option_is_in_the_readme_and_the_options_table_gives_the_hubs_defaults():
    text = open(README, encoding="utf-8").read()
    options = tap.Options()
    defaults = {long: default for long, _short, default, *_ in options.optParameters}
    names = set(defaults) | {long for long, *_ in options.optFlags}
    listeners = {name for name, _tls in __import__("twisted_mailhub.testing", fromlist=["listener_names"]).listener_names()}
    # --no-NAME of each listener is described once ("--no-NAME turns one off")
    missing = sorted(n for n in names if f"--{n}" not in text and not (n.startswith("no-") and n[3:] in listeners) and n not in ("help-auth", "help-auth-type", "version"))
    assert not missing, f"options the README does not mention: {missing}"
    rows = re.findall(r"^\| `--([\w-]+)[^|]*\|[^|]*\| ([^|]*)\|$", text, re.M)
    checked = 0
    for name, shown in rows:
        default = defaults.get(name)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            number = re.match(r"`?([\d,.]+)", shown.strip())
            assert number and float(number.group(1).replace(",", "")) == default, f"README: --{name}'s default is {shown.strip()!r}, the hub's {default}"
            checked += 1
        elif isinstance(default, str) and shown.strip().startswith("`"):
            assert shown.strip().strip("`").removeprefix("./") == default, f"README: --{name}'s default is {shown.strip()!r}, the hub's {default!r}"
            checked += 1
    assert checked >= 30, checked


def _kit_block(language, first_words):
    """The README's ```language block (of 'Using mailhub in your tests') that starts with first_words."""
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Using mailhub in your tests"):text.index("### The JSON API")]
    for block in re.findall(rf"```{language}\n(.*?)```", section, re.S):
        if block.lstrip().startswith(first_words):
            return block
    raise AssertionError(f"README: no {language} block starting {first_words!r} in 'Using mailhub in your tests'")


def _pytest_in(project, env=None):
    from tests.test_pytest_plugin import plugin_installed

    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    load = [] if plugin_installed() else ["-p", "twisted_mailhub.pytest_plugin"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *load],
                          cwd=project, env=env, capture_output=True, text=True, timeout=240)


def test_the_kits_examples_in_the_readme_run_as_printed(tmp_path):
    # The test module, the pytest.ini and the marker, each as printed; the
    # marker's test body is ours (the README shows only the decorator).
    signup = tmp_path / "signup"
    signup.mkdir()
    (signup / "test_signup.py").write_text(_kit_block("python", "# test_signup.py"))
    run = _pytest_in(signup)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr

    configured = tmp_path / "configured"
    configured.mkdir()
    (configured / "pytest.ini").write_text(_kit_block("ini", "[pytest]"))
    marker = _kit_block("python", "@pytest.mark.mailhub(").strip()
    (configured / "test_configured.py").write_text(
        "import pytest\n\n\n"
        "def test_the_ini(mailhub):\n"
        "    assert sorted(mailhub.accounts) == ['alice@example.com', 'bob@example.com']\n"
        "    assert 'ftp' not in mailhub.ports and '--max-message-size' in mailhub.command()\n\n\n"
        f"{marker}\n"
        "def test_the_marker(mailhub):\n"
        "    assert list(mailhub.accounts) == ['carol@example.org'] and '--transcript' in mailhub.command()\n"
        "    mailhub.imap('carol').logout()\n"
    )
    run = _pytest_in(configured)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr

    controller = _kit_block("python", "from twisted_mailhub.testing import Mailhub")
    script = tmp_path / "controller.py"
    script.write_text(controller + "\nprint(hub.process is None, hub.ports['smtp'] > 0)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["True", "True"], run.stdout + run.stderr


def test_the_json_apis_curl_line_in_the_readme_runs_as_printed_but_for_the_port(tmp_path):
    # The README's long poll, run by curl as printed, with the port of a
    # hub on a free port for 8080 (the README's hub uses the default one).
    import json
    import smtplib

    from twisted_mailhub.testing import Mailhub

    text = open(README, encoding="utf-8").read()
    section = text[text.index("### The JSON API"):text.index("### Catch-all and fault injection")]
    line = re.search(r"```sh\n(curl [^\n]*)\n```", section).group(1)
    assert "127.0.0.1:8080" in line
    with Mailhub() as hub:
        curl = subprocess.Popen(shlex.split(line.replace("127.0.0.1:8080", f"127.0.0.1:{hub.ports['web']}")), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # It waits for the next message: send one until it has answered
            # (the first may come before its request is in).
            while curl.poll() is None:
                with smtplib.SMTP(hub.host, hub.ports["smtp"], timeout=10) as s:
                    s.sendmail("app@localhost", ["alice@localhost"], b"Subject: Welcome\r\nTo: alice@localhost\r\n\r\nhi\r\n")
                try:
                    curl.wait(1)
                except subprocess.TimeoutExpired:
                    pass
            out, err = curl.communicate(timeout=10)
        finally:
            if curl.poll() is None:
                curl.kill()
                curl.wait()
    assert curl.returncode == 0, err
    answer = json.loads(out)
    assert answer["timed_out"] is False and answer["message"]["subject"] == "Welcome", answer


# -- the clients' commands, against the Quick start's hub on its own ports ------------


class _PrivateNetwork:
    """
    A network namespace of its own (C{unshare -n}, loopback up), held open
    by a sleeping process: C{wrap(command)} runs a bash command line in it,
    so the README's fixed ports (8025, 2121, 8022, ...) meet no other test's.
    It has a mount namespace of its own too, in which this user's home in
    C{/etc/passwd} is C{home}: OpenSSH reads C{~/.ssh} from there, not from
    C{$HOME}, and must not write the machine's C{known_hosts}.
    """

    def __init__(self, home) -> None:
        import pwd
        import time

        self.hubs: list[subprocess.Popen] = []
        self.holder = subprocess.Popen(["unshare", "-n", "-m", "sleep", "600"])
        deadline = time.monotonic() + 10
        # until unshare has left this namespace, nsenter would enter ours
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline and self.holder.poll() is None, "unshare -n did not start"
            time.sleep(0.01)
        passwd = os.path.join(home, ".passwd")
        with open(passwd, "w") as f:
            for entry in pwd.getpwall():
                fields = [entry.pw_name, "x", str(entry.pw_uid), str(entry.pw_gid), entry.pw_gecos, str(home) if entry.pw_uid == os.getuid() else entry.pw_dir, entry.pw_shell]
                f.write(":".join(fields) + "\n")
        subprocess.run(self.wrap(f"mount --bind {shlex.quote(passwd)} /etc/passwd && ip link set lo up"), check=True)

    def wrap(self, command: str, cwd=None) -> list[str]:
        """The argv that runs C{command} by bash inside the namespaces, in the folder C{cwd} (entering a mount namespace starts at C{/})."""
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", f"--wd={cwd or os.getcwd()}", "bash", "-c", command]

    def start_hub(self, command: str, cwd, env: dict, log) -> subprocess.Popen:
        """
        Run the bash command line C{command} that starts a hub (C{twistd -n
        mailhub ...}) in the namespaces, in the folder C{cwd}, its output to
        the file C{log}; return once it logged C{mailhub ready}. C{close}
        stops it (SIGTERM).
        """
        import time

        with open(log, "wb") as out:
            hub = subprocess.Popen(self.wrap(command, cwd), env=env, stdout=out, stderr=subprocess.STDOUT)
        self.hubs.append(hub)
        deadline = time.monotonic() + 60
        while "mailhub ready" not in open(log, encoding="utf-8", errors="replace").read():
            assert hub.poll() is None and time.monotonic() < deadline, open(log, encoding="utf-8", errors="replace").read()
            time.sleep(0.1)
        return hub

    def close(self) -> None:
        """Stop the hubs it started (SIGTERM, then SIGKILL after 30 s), then the namespaces."""
        for hub in self.hubs:
            hub.terminate()
            try:
                hub.wait(30)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
        self.holder.kill()
        self.holder.wait()


def _printed(text: str, command: str) -> str:
    """C{command}, after checking that the README shows it so (in a code span or a block)."""
    assert f"`{command}`" in text or f"\n{command}\n" in text or f"    {command}\n" in text or f"$ {command}\n" in text, f"the README no longer shows {command!r}"
    return command


def test_the_client_commands_in_the_readme_run_as_printed(tmp_path):
    # The Quick start's hub, started as printed (the pip install before it
    # aside: the suite tests the checkout), on its default ports in a
    # namespace of its own; then each client command the README shows for
    # it, as printed, with the folder it was started in as the current one
    # and a home of its own (~/.ssh).
    import json

    _needs("unshare", "nsenter", "mount", "ip", "curl", "lftp", "sftp", "scp", "ssh-keygen", "nc", "openssl", "swaks")
    text = open(README, encoding="utf-8").read()
    start = re.search(r"```sh\npython3 -m pip install \. && (twistd -n mailhub [^\n]*)\n```", text).group(1)
    assert start == "twistd -n mailhub --user alice:secret", start
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, PATH=f"{_installed_commands(tmp_path / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}")
    files = work / "mailhub-data" / "ftp" / "localhost" / "alice"
    net = _PrivateNetwork(home)
    log = tmp_path / "hub.log"
    try:
        net.start_hub(start, work, env, log)

        def run(command: str, typed: str = "") -> subprocess.CompletedProcess:
            return subprocess.run(net.wrap(_printed(text, command), work), env=env, input=typed, capture_output=True, text=True, timeout=60)

        def converse(command: str, answers) -> tuple[int, str]:
            return _converse(shlex.join(net.wrap(_printed(text, command), work)), answers, env=env)

        # Metrics and health
        metrics, health = commands(re.search(r"## Metrics and health.*?```sh\n(.*?)```", text, re.S).group(1))
        assert (metrics, health) == ("curl -s http://127.0.0.1:8080/metrics | grep ^mailhub_", "curl -s http://127.0.0.1:8080/healthz")
        shown = run(metrics)
        bound = json.loads(re.search(r"mailhub ready (\{.*\})", log.read_text()).group(1))
        assert shown.returncode == 0 and {f'mailhub_listener_up{{listener="{name}"}} 1.0' for name in bound} <= set(shown.stdout.splitlines()), shown
        shown = run(health)
        assert (shown.returncode, shown.stdout) == (0, "ok\n"), shown

        # POP3 and IMAP by hand, and IMAP with curl, with one message delivered
        subprocess.run(net.wrap("swaks --server localhost:8025 --from student@example.org --to alice@localhost "
                                "--header 'Subject: lunch' --body 'See you at noon.'"), check=True, capture_output=True, timeout=60)
        shown = run("nc localhost 8110", "user alice\npass secret\nlist\nquit\n")
        assert shown.returncode == 0 and "+OK alice@localhost has 1 message" in shown.stdout and shown.stdout.rstrip().splitlines()[-1].startswith("+OK"), shown
        opened = re.search(r"^\$ (openssl [^\n]*)", marked_blocks()["session-imap"], re.M).group(1)
        shown = run(opened, "a login alice secret\nd logout\n")
        assert shown.returncode == 0 and "a OK LOGIN succeeded" in shown.stdout and "d OK LOGOUT successful" in shown.stdout, shown
        shown = run("curl 'imap://alice:secret@localhost:8143/INBOX;UID=1'")
        assert shown.returncode == 0 and "Subject: lunch" in shown.stdout and "See you at noon." in shown.stdout, shown
        flags = subprocess.run(net.wrap("curl -s 'imap://alice:secret@localhost:8143/INBOX' -X 'FETCH 1 FLAGS'"), capture_output=True, text=True, timeout=60)
        assert "\\Seen" in flags.stdout, flags  # "and marks it \Seen"

        # FTP: by hand, curl both ways, lftp
        shown = run("nc -C 127.0.0.1 2121", "user alice\npass secret\nquit\n")
        assert "230 User alice logged in; your home is /." in shown.stdout and shown.stdout.rstrip().endswith("221 Goodbye."), shown
        (work / "file").write_text("uploaded by curl\n")
        shown = run("curl -T file ftp://alice:secret@localhost:2121/")
        assert shown.returncode == 0 and (files / "file").read_text() == "uploaded by curl\n", shown
        shown = run("curl --ssl-reqd -k ftp://alice:secret@localhost:2121/file")
        assert (shown.returncode, shown.stdout) == (0, "uploaded by curl\n"), shown
        shown = run("lftp -u alice,secret -p 2121 -e 'set ftp:ssl-force true; set ssl:verify-certificate no' localhost", "cat file\n")
        assert (shown.returncode, shown.stdout) == (0, "uploaded by curl\n"), shown

        # What travels: the same upload both ways; the first SFTP connection
        # shows the host key the hub logged (typed back: OpenSSH takes the
        # fingerprint for "yes" only when it is the one it was shown).
        (work / "notes.txt").write_text("by FTP\n")
        shown = run("curl -T notes.txt ftp://alice:secret@localhost:2121/")
        assert shown.returncode == 0 and (files / "notes.txt").read_text() == "by FTP\n", shown
        logged = re.search(r"sftp host key ssh-ed25519 (SHA256:\S+)", log.read_text()).group(1)
        (work / "notes.txt").write_text("by SFTP\n")
        status, said = converse("sftp -P 8022 alice@localhost <<< 'put notes.txt'", [
            (rb"\(yes/no/\[fingerprint\]\)\? $", lambda out: logged + "\n", False),
            (rb"[Pp]assword: $", "secret\n", True),
        ])
        assert f"ED25519 key fingerprint is {logged}." in said, said
        assert status == 0 and "Uploading notes.txt to /notes.txt" in said and (files / "notes.txt").read_text() == "by SFTP\n", said
        (work / "file").write_text("copied by scp\n")
        status, said = converse("scp -P 8022 file alice@localhost:", [(rb"[Pp]assword: $", "secret\n", True)])
        assert status == 0 and (files / "file").read_text() == "copied by scp\n", said
        status, said = converse("sftp -P 8022 alice@localhost", [
            (rb"[Pp]assword: $", "secret\n", True),
            (rb"sftp> $", "ls\n", False),
            (rb"sftp> $", "bye\n", False),
        ])
        listed = re.search(r"sftp> ls\r\n(.*)sftp> bye", said, re.S)  # (the terminal may echo "ls" once more)
        assert status == 0 and listed and set(listed.group(1).split()) - {"ls"} == {"file", "notes.txt"}, said

        # A key instead of the password
        (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")], check=True, timeout=60)
        shown = run("mailhub-admin user key alice ~/.ssh/id_ed25519.pub --data mailhub-data")
        assert shown.returncode == 0, shown
        authorized = work / "mailhub-data" / "ssh" / "authorized_keys" / "alice@localhost"
        assert (home / ".ssh" / "id_ed25519.pub").read_text().split()[:2] == authorized.read_text().split()[:2]
        (work / "notes.txt").write_text("by SFTP, with a key\n")
        status, said = converse("sftp -P 8022 alice@localhost <<< 'put notes.txt'", [])
        assert status == 0 and "assword" not in said and (files / "notes.txt").read_text() == "by SFTP, with a key\n", said
    finally:
        net.close()
        keep_log(log.read_text())
    assert "Traceback" not in log.read_text()


def test_the_workers_command_in_the_readme_starts_one_worker_per_core(tmp_path):
    # "--workers N runs N hub processes ... (auto: one per core)", as
    # printed, on its default ports in a namespace of its own; `mailhub-admin
    # status` (its --data the folder the hub made here) answers for each.
    _needs("unshare", "nsenter", "mount", "ip", "nc")
    text = open(README, encoding="utf-8").read()
    section = text[text.index("### More than one core"):]
    start = re.search(r"```sh\n(.*?)\n```", section, re.S).group(1)
    assert start == "twistd -n mailhub --workers auto --user alice:secret", start
    status = "mailhub-admin status --data /var/lib/mailhub"
    assert status in [line.split(" #")[0].strip() for line in text.splitlines()]
    cores = len(os.sched_getaffinity(0))
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, PATH=f"{_installed_commands(tmp_path / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}")
    net = _PrivateNetwork(home)
    log = tmp_path / "hub.log"
    try:
        net.start_hub(start, tmp_path, env, log)
        said = log.read_text()
        assert f"mailhub: starting {cores} worker processes" in said, said
        greeted = subprocess.run(net.wrap("printf 'QUIT\\r\\n' | nc -N 127.0.0.1 8025", tmp_path), env=env, capture_output=True, text=True, timeout=60)
        assert greeted.stdout.startswith("220 ") and "221 2.0.0 Bye" in greeted.stdout, greeted
        shown = subprocess.run(net.wrap(status.replace("/var/lib/mailhub", "mailhub-data"), tmp_path), env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown
        assert [int(n) for n in re.findall(r"^  worker (\d+): pid \d+, up ", shown.stdout, re.M)] == list(range(cores)), shown.stdout
    finally:
        net.close()
        keep_log(log.read_text())
    said = log.read_text()
    assert all(f"worker {n} (pid" in said for n in range(cores)) and "Traceback" not in said, said


# -- the benchmark commands ------------------------------------------------------------


def _bench_commands() -> list[str]:
    """Every C{python3 bench/NAME.py ...} the README shows (a code span broken over lines joined), in order, once each."""
    text = open(README, encoding="utf-8").read()
    found = [" ".join(span.split()) for span in re.findall(r"`(python3\s+bench/\w+\.py[^`]*)`", text)]
    # the script named alone with options (`bench/smtp_cpu.py --log-ab`) is a command too
    found += ["python3 " + " ".join(span.split()) for span in re.findall(r"`(bench/\w+\.py [^`]*)`", text)]
    return list(dict.fromkeys(found))


# Argparse run up to its parse, then stopped: what the options came to, as JSON.
_PARSE_ONLY = """
import argparse, json, runpy, sys
def parse_args(self, *args, **kwargs):
    parsed = parse(self, *args, **kwargs)
    print(json.dumps(vars(parsed), default=str))
    raise SystemExit(0)
parse, argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_args, parse_args
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
raise SystemExit("the script ran to its end without parsing its options")
"""


def _as_typed(got) -> list[str]:
    """The ways an option's parsed value (JSON) may have been typed: 3000; a list's items; 32:1024 or a,b for a value parsed into parts (bench/arguments.py)."""
    if not isinstance(got, list):
        return [str(got)]
    shown = [sep.join(str(x) for x in got) for sep in (",", ":")]
    for item in got:
        shown += _as_typed(item) if isinstance(item, list) else [str(item)]
    return shown


def test_every_bench_command_in_the_readme_takes_its_options_as_printed():
    # The scripts' own parsers read each command's options (stopped right
    # after, so nothing is measured): an option the README names that a
    # script does not take, or a value of the wrong kind, fails here.
    import json

    commands_ = _bench_commands()
    assert len(commands_) >= 20, commands_
    for command in commands_:
        words = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, "-c", _PARSE_ONLY, *words], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"README: {command}: {done.stderr.strip().splitlines()[-1:]}"
        parsed = json.loads(done.stdout.strip().splitlines()[-1])
        for word, value in zip(words, words[1:]):
            if word.startswith("--") and not value.startswith("-"):
                got = parsed[word[2:].replace("-", "_")]
                assert value in _as_typed(got), f"README: {command}: {word} came to {parsed}"


# The README's command for each script with the sizes made small (a later
# option wins in argparse), and a line of the output its figures come from.
# Left out, as too slow even when small: bench/pop3_retr.py --callgrind (the
# hub under valgrind, 2 minutes), bench/smtp_pop3.py (POP3 on a fixed
# 10,000-message maildrop, 30 s), bench/cluster.py (a PostgreSQL server and
# several hubs); their options are read above.
_SMALL = {
    "python3 bench/log_cost.py": (["--lines", "500", "--repeat", "1"], r"hub's +[\d.]+ +\([\d.]+x\)"),
    "python3 bench/imap.py --sizes 100000 --body-rounds 3": (["--sizes", "300", "--body-rounds", "1"], r"(?m)^FETCH BODY\[\] msgs/s +\d+"),
    "python3 bench/ftp.py --size-mb 512 --repeat 3": (["--size-mb", "2", "--clients", "3", "--idle", "3", "--repeat", "1"], r"(?m)^mailhub concurrent runs MB/s: \d+"),
    "python3 bench/sftp.py --size-mb 1024 --clients 100 --idle 50 --same-cipher": (["--size-mb", "2", "--clients", "3", "--idle", "3"], r"ratio put \d+%, get \d+% of OpenSSH"),
    "python3 bench/startup.py": (["--rounds", "1"], r"full hub ready in under \d+ ms"),
    "python3 bench/imap_compress.py": (["--rounds", "1"], r"(?m)^hub +DEFLATE +bodies +[\d.]+"),
    "python3 bench/smtp_cpu.py --log-ab": (["--clients", "2", "--messages", "50", "--rounds", "1"], r"median reactor thread +\d+, all threads +\d+ µs CPU/msg"),
    "python3 bench/smtp_cpu.py --dispatch-ab": (["--clients", "2", "--messages", "50", "--rounds", "1"], r"Twisted dispatch: median reactor thread +\d+"),
    "python3 bench/workers.py --pin-ab": (["--messages", "100", "--rounds", "1", "--clients", "4"], r"ratio [\d.]+x"),
    "python3 bench/pgqueue.py -n 400 -c 8": (["-n", "20", "-c", "2"], r"two hubs, one PostgreSQL queue +20 messages, 2 clients: +\d+ msgs/s relayed"),
}


@pytest.mark.parametrize("command", sorted(_SMALL))
def test_a_bench_command_of_the_readme_runs_with_small_sizes(command, tmp_path):
    if command not in _bench_commands():
        pytest.fail(f"the README no longer shows {command!r}")
    small, figure = _SMALL[command]
    words = shlex.split(command)[1:] + small
    if any(w in command for w in ("smtp_cpu", "workers")):
        words += ["--dir", str(tmp_path)]
    done = subprocess.run([sys.executable, *words], cwd=ROOT, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=ROOT))
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out
    assert re.search(figure, done.stdout), out


def test_the_plugin_examples_in_the_readme_run_as_printed(tmp_path):
    # "Extending it": each block as printed, its mkdir and cp in the
    # checkout (they copy etc/...), its hub in a folder of its own, in a
    # private namespace (the hub's default ports). The README's
    # PYTHONPATH=~/mailhub-plugins replaces the suite's, so the checkout
    # stands in for the installed package through a .pth file in this home's
    # user site-packages, as `pip install --user .` would.
    import site

    _needs("unshare", "nsenter", "mount", "ip", "nc")
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Extending it"):text.index("## SMTP and submission")]
    blocks = [list(commands(block)) for block in re.findall(r"```sh\n(.*?)```", section, re.S)]
    assert len(blocks) == 2, blocks
    home = tmp_path / "home"
    user_site = site.getusersitepackages().replace(os.path.expanduser("~"), str(home), 1)
    os.makedirs(user_site)
    with open(os.path.join(user_site, "mailhub-checkout.pth"), "w") as f:
        f.write(ROOT + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    env["HOME"] = str(home)
    for n, lines in enumerate(blocks):
        *copies, start = lines
        assert start.startswith("PYTHONPATH=~/mailhub-plugins ") and " twistd -n mailhub " in start, start
        net = _PrivateNetwork(home)
        work = tmp_path / f"hub{n}"
        work.mkdir()
        log = tmp_path / f"hub{n}.log"
        try:
            for line in copies:
                done = subprocess.run(net.wrap(line, ROOT), env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, (line, done.stderr)
            net.start_hub(start, work, env, log)
            if "--filter subject-words" in start:
                # MAILHUB_BANNED_WORDS=lottery: that subject is refused, another marked
                said = subprocess.run(net.wrap(
                    "printf 'helo me\\nmail from: <a@example.org>\\nrcpt to: <alice@localhost>\\ndata\\nSubject: You won the lottery\\n\\nclaim now\\n.\\n"
                    "mail from: <b@example.org>\\nrcpt to: <alice@localhost>\\ndata\\nSubject: lunch?\\n\\nnoon\\n.\\nquit\\n' | nc -N 127.0.0.1 8025", work),
                    env=env, capture_output=True, text=True, timeout=60).stdout
                assert "550 5.7.1 Message refused: the subject mentions 'lottery'" in said, said
                assert re.search(r"^250 2\.0\.0 Ok: queued as ", said, re.M), said
                [stored] = [p.read_bytes() for p in (work / "mailhub-data" / "mail" / "localhost" / "alice" / "new").iterdir()]
                assert b"X-Mailhub-Filter: subject-words; passed\r\nSubject: lunch?\r\n" in stored and b"claim now" not in stored
            else:
                said = subprocess.run(net.wrap("printf 'alice\\r\\n' | nc -N 127.0.0.1 8079", work), env=env, capture_output=True, text=True, timeout=60).stdout
                assert said.startswith("alice@localhost: mail account on "), said
        finally:
            net.close()
            keep_log(log.read_text() if log.exists() else "")
        assert "Traceback" not in log.read_text()
    assert {"example_filter.py", "example_listener.py"} <= set(os.listdir(home / "mailhub-plugins" / "twisted_mailhub" / "plugins"))


# -- which test runs each command ------------------------------------------------------


def readme_commands() -> list[str]:
    """
    Every command the README gives to type: the lines of its ```sh blocks,
    its indented blocks and C{$ } lines, and the code spans in its text
    that start with a program's name and have more than one word (white
    space folded).
    """
    text = open(README, encoding="utf-8").read()
    found = [line for _, block in readme_blocks() for line in commands(block)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [m.group(1) for m in re.finditer(r"^    (\S.*)$", prose, re.M) if not m.group(1).startswith(("#", "sftp#"))]
    found += [m.group(1) for m in re.finditer(r"^\$ (.*)$", text, re.M)]
    programs = ("curl", "lftp", "sftp", "scp", "swaks", "nc", "telnet", "openssl", "mailhub-admin", "twistd", "python3", "kill", "psql",
                "systemctl", "tcpdump", "sudo", "printf", "ssh", "MAILHUB_SCREENSHOTS=1", "MAILHUB_DISPATCH=twisted")
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        if span.split()[0] in programs and " " in span:
            found.append(span)
    return [" ".join(c.split()) for c in dict.fromkeys(found)]


_CLIENTS = "test_the_client_commands_in_the_readme_run_as_printed"
_ADMIN = "test_every_admin_command_in_the_readme_runs_as_printed"
_DEMO = "test_the_two_hub_classroom_demo_runs_as_printed"
_PARSED = "test_every_twistd_mailhub_command_in_the_readme_parses"
_TEXT = "test_the_twistd_commands_in_the_readmes_text_parse_and_its_help_lists_every_option"
_BENCH = "test_every_bench_command_in_the_readme_takes_its_options_as_printed"
_SMALL_BENCH = "test_a_bench_command_of_the_readme_runs_with_small_sizes"
_SESSIONS = "test_the_sessions_typed_by_hand_in_the_readme_go_as_printed"
_PLUGINS = "test_the_plugin_examples_in_the_readme_run_as_printed"

# Each README command: the tests that run it as printed (or parse it, where
# said), or why none does. A command the README gains without a line here
# fails the test below; so does a test name that no longer exists.
WHO_RUNS_IT = {
    "python3 -m pip install . && twistd -n mailhub --user alice:secret": [_CLIENTS, "(the twistd part: the suite tests the checkout, not an install)"],
    "python3 -m pip install '.[test]' && python3 -m pytest": ["not run: an install, then the whole suite"],
    "python3 -m twisted_mailhub.queue --data mailhub-data list": [_ADMIN],
    "python3 -m twisted_mailhub.queue --data mailhub-data flush": [_ADMIN],
    "python3 -m twisted_mailhub.queue --data mailhub-data remove ID": [_ADMIN],
    "mkdir -p alice-hub bob-hub": [_DEMO],
    "(cd alice-hub && twistd mailhub --port-base 9000 --hostname mx.a.test --domain a.test --user alice:secret --mx-override b.test=127.0.0.1:10025 --retry-schedule 30s)": [_DEMO],
    "(cd bob-hub && twistd mailhub --port-base 10000 --hostname mx.b.test --domain b.test --user bob:hungry --mx-override a.test=127.0.0.1:9025)": [_DEMO],
    "printf 'QUIT\\r\\n' | nc -N 127.0.0.1 9025": [_DEMO],
    "printf 'QUIT\\r\\n' | nc -N 127.0.0.1 10110": [_DEMO],
    "swaks --server 127.0.0.1:9587 --tls --auth PLAIN --auth-user alice --auth-password secret --from alice@a.test --to bob@b.test --header \"Subject: hello Bob\" --body \"from Alice's hub\"": [_DEMO],
    "curl -s --user bob:hungry pop3://127.0.0.1:10110/1": [_DEMO],
    "kill $(cat alice-hub/twistd.pid) $(cat bob-hub/twistd.pid)": [_DEMO],
    "mailhub-admin dkim show --data mailhub-data --hostname mail.example.org": [_ADMIN],
    "curl -s http://127.0.0.1:8080/metrics | grep ^mailhub_": [_CLIENTS, _ADMIN],
    "curl -s http://127.0.0.1:8080/healthz": [_CLIENTS, _ADMIN],
    "sudo twistd --uid nobody --gid nogroup --pidfile /run/mailhub.pid --logfile /var/log/mailhub.log mailhub --data /var/lib/mailhub --port-base 0 --sftp tcp:2222 --auth file:/var/lib/mailhub/accounts":
        ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed", _PARSED],
    "sudo cp etc/mailhub.logrotate /etc/logrotate.d/mailhub": ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed"],
    "sudo kill $(cat /run/mailhub.pid); while test -e /run/mailhub.pid; do sleep 0.2; done": ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed"],
    "sudo tar -C /var/lib -czf mailhub-backup.tar.gz mailhub": ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed"],
    "sudo rm -rf /var/lib/mailhub && sudo tar -C /var/lib -xpzf mailhub-backup.tar.gz": ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed"],
    "sudo certbot renew --deploy-hook 'install -m 0600 -o nobody -g nogroup \"$RENEWED_LINEAGE/fullchain.pem\" /var/lib/mailhub/tls/cert.pem && install -m 0600 -o nobody -g nogroup \"$RENEWED_LINEAGE/privkey.pem\" /var/lib/mailhub/tls/key.pem && mailhub-admin reload --data /var/lib/mailhub'":
        ["test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed (certbot a stand-in that makes the new pair with openssl: no ACME server is asked)"],
    "systemctl stop mailhub": ["not run: systemctl (no systemd in the test machine; the unit is checked with systemd-analyze verify)"],
    "systemctl start mailhub": ["not run: systemctl (no systemd in the test machine; the unit is checked with systemd-analyze verify)"],
    "mailhub-admin user add alice@example.org --accounts /var/lib/mailhub/accounts": [_ADMIN],
    "echo 'tea for two' | mailhub-admin user add carol --accounts /var/lib/mailhub/accounts --password-stdin": [_ADMIN],
    "mailhub-admin user passwd alice@example.org --accounts /var/lib/mailhub/accounts": [_ADMIN],
    "mailhub-admin user remove carol --accounts /var/lib/mailhub/accounts": [_ADMIN],
    "mailhub-admin user list --accounts /var/lib/mailhub/accounts": [_ADMIN],
    "mailhub-admin queue --data /var/lib/mailhub list": [_ADMIN],
    "mailhub-admin dkim show --data /var/lib/mailhub": [_ADMIN],
    "mailhub-admin check --data /var/lib/mailhub --auth file:/var/lib/mailhub/accounts --port-base 0 --sftp tcp:2222": ["test_the_check_command_in_the_readme_runs_as_printed", _PARSED],
    "mailhub-admin status --data /var/lib/mailhub": [_ADMIN, "test_the_workers_command_in_the_readme_starts_one_worker_per_core"],
    "mailhub-admin reload --data /var/lib/mailhub": [_ADMIN],
    "python3 -m pip install '.[postgresql]'": ["not run: an install"],
    "twistd -n mailhub --store 'postgresql:host=127.0.0.1 dbname=mailhub user=mailhub'": [_PARSED, "(parsed only: a database of that name)"],
    "twistd -n mailhub --store postgresql:postgresql://mailhub@db.example.org/mailhub": [_PARSED, "(parsed only: a host that is no test's)"],
    "twistd -n mailhub --store postgresql:$DSN --journal-retention 3600": [_PARSED],
    "twistd -n mailhub --store postgresql:$DSN --auth postgresql:$DSN": [_PARSED],
    "mailhub-admin user add carol --auth postgresql:$DSN --quota 500M": [_ADMIN],
    "psql \"$DSN\" -c \"INSERT INTO user_account (address, password) VALUES ('dave@example.org', 'secret')\"": [_ADMIN],
    "mailhub-admin user list --auth postgresql:$DSN": [_ADMIN],
    "twistd -n mailhub --store postgresql:$DSN --auth postgresql:$DSN --ftp-filesystem postgresql": [_PARSED],
    "mailhub-admin queue --queue postgresql:$DSN list": [_ADMIN],
    "mailhub-admin migrate --from mailhub-data --to postgresql:$DSN --accounts mailhub-data/accounts --keys-to /srv/hub1/data --keys-to /srv/hub2/data": [_ADMIN],
    "twistd -n mailhub --workers auto --user alice:secret": ["test_the_workers_command_in_the_readme_starts_one_worker_per_core"],
    "curl -u alice@localhost:secret 'http://127.0.0.1:8080/api/v1/accounts/me/folders/INBOX/wait?timeout=30&search=SUBJECT%20Welcome'": ["test_the_json_apis_curl_line_in_the_readme_runs_as_printed_but_for_the_port"],
    "mkdir -p ~/mailhub-plugins/twisted_mailhub/plugins": [_PLUGINS],
    "cp etc/example_filter.py ~/mailhub-plugins/twisted_mailhub/plugins/": [_PLUGINS],
    "PYTHONPATH=~/mailhub-plugins MAILHUB_BANNED_WORDS=lottery twistd -n mailhub --user alice:secret --filter subject-words": [_PLUGINS],
    "cp etc/example_listener.py ~/mailhub-plugins/twisted_mailhub/plugins/": [_PLUGINS],
    "PYTHONPATH=~/mailhub-plugins twistd -n mailhub --user alice:secret --finger tcp:8079": [_PLUGINS],
    "sftp -P 8022 alice@localhost": [_CLIENTS],
    "tcpdump -i lo -A 'port 2121 or port 8022'": ["not run: a capture for a person to read (tcpdump is not installed here)"],
    "curl -T notes.txt ftp://alice:secret@localhost:2121/": [_CLIENTS],
    "sftp -P 8022 alice@localhost <<< 'put notes.txt'": [_CLIENTS],
    "openssl s_client -quiet -crlf -connect localhost:8993": [_CLIENTS, _SESSIONS],
    "twistd -n mailhub --help": [_TEXT],
    "twistd mailhub": ["a mention"],
    "twistd -n": ["a mention"],
    "mailhub-admin check": ["a mention"],
    "mailhub-admin user add --quota": ["a mention: an option of the line above"],
    "python3 -m twisted_mailhub.accounts hash": ["tests/test_admin.py (it reads a password: run with one on its input)"],
    "mailhub-admin user add": ["a mention"],
    "twistd --umask 027 mailhub ...": ["a mention: twistd's own option before the hub's"],
    "python3 bench/smtp_pop3.py --case 32:1024 --neighbour 2048": [_BENCH],
    "python3 bench/smtp_pop3.py --no-pipelining": [_BENCH],
    "kill -9": ["a mention"],
    "mailhub-admin queue": ["a mention"],
    "systemctl restart": ["a mention: systemd"],
    "python3 bench/log_cost.py": [_BENCH, _SMALL_BENCH],
    "python3 bench/pop3_retr.py --callgrind 1000": [_BENCH],
    "twistd --reactor ...": ["a mention"],
    "python3 bench/smtp_cpu.py --dispatch-ab": [_BENCH, _SMALL_BENCH],
    "sftp -P 2222": ["a mention: the port of the line above"],
    "systemctl reload mailhub": ["not run: systemd (the unit: tests/test_start.py test_systemd_unit_verifies)"],
    "mailhub-admin reload": ["a mention"],
    "kill -HUP $(cat twistd.pid)": ["tests/test_sighup.py (a SIGHUP to the hub)"],
    "python3 -m twisted_mailhub ARGS": ["a mention: tests/test_sighup.py runs it"],
    "twistd ARGS": ["a mention"],
    "python3 -m twisted_mailhub.admin": ["a mention: the admin tests run it"],
    "mailhub-admin status": ["a mention"],
    "mailhub-admin dkim show": ["a mention"],
    "python3 bench/cluster.py": [_BENCH],
    "mailhub-admin db upgrade --dsn DSN": ["tests/test_cluster.py"],
    "mailhub-admin db version --dsn DSN": ["tests/test_cluster.py"],
    "mailhub-admin queue --queue postgresql:DSN list|flush|remove ID": ["a mention: its list is in a block above"],
    "python3 bench/pgqueue.py -n 400 -c 8": [_BENCH, _SMALL_BENCH],
    "python3 bench/cluster.py --quick --only smtp,store": [_BENCH],
    "python3 bench/cluster.py --only fetch": [_BENCH],
    "python3 bench/cluster.py --quick --only smtp": [_BENCH],
    "kill -TERM -- -PGID": ["a mention"],
    "python3 bench/workers.py --pin-ab": [_BENCH, _SMALL_BENCH],
    "python3 bench/workers.py --messages 3000 --rounds 3": [_BENCH],
    "python3 bench/startup.py": [_BENCH, _SMALL_BENCH],
    "twistd -n -y etc/mailhub.tac": ["tests/test_e2e_smtp_etc.py"],
    "MAILHUB_SCREENSHOTS=1 python3 -m pytest tests/test_web_browser.py": ["not run: the browser tests themselves, with pictures"],
    "twistd -n mailhub --hostname mail.example.edu --auth file:class.txt --teacher teacher": [_TEXT],
    "nc -C mail.example.edu 8025": ["not run: a real domain"],
    "telnet localhost 8025": ["not run: telnet is not installed; the session it opens: " + _SESSIONS],
    "nc -C": ["a mention"],
    "twistd -n mailhub --hostname mail.test --user bob:hungry": [_TEXT, _SESSIONS],
    "printf 'helo me\\nmail from: <a@b>\\nrcpt to: <bob@localhost>\\ndata\\nSubject: hi\\n\\nhello\\n.\\nquit\\n' | nc -N localhost 8025": [_SESSIONS, "(its bytes, sent as nc -N would)"],
    "nc -N": ["a mention"],
    "telnet localhost 8110": ["not run: telnet is not installed; the session: " + _SESSIONS],
    "nc localhost 8110": [_CLIENTS],
    "python3 bench/pop3_retr.py --messages 10000 --stock-retrs 200": [_BENCH],
    "python3 bench/pop3_retr.py --messages 10000 --rounds 5 --no-stock --tops 0 --sessions 0": [_BENCH],
    "python3 bench/imap_compress.py": [_BENCH, _SMALL_BENCH],
    "python3 bench/imap.py --sizes 100000": [_BENCH],
    "python3 bench/imap.py --sizes 100000 --body-rounds 3": [_BENCH, _SMALL_BENCH],
    "curl 'imap://alice:secret@localhost:8143/INBOX;UID=1'": [_CLIENTS],
    "lftp mirror -R": ["a mention"],
    "curl -R": ["a mention"],
    "curl --ssl-reqd": ["a mention"],
    "curl -C -": ["a mention"],
    "python3 bench/ftp.py": [_BENCH],
    "python3 bench/ftp.py --size-mb 512 --repeat 3": [_BENCH, _SMALL_BENCH],
    "python3 bench/ftp_cost.py --sessions 500 --idle 300 --rounds 3": [_BENCH],
    "nc -C 127.0.0.1 2121": [_CLIENTS],
    "curl -T file ftp://alice:secret@localhost:2121/": [_CLIENTS],
    "curl --ssl-reqd -k ftp://alice:secret@localhost:2121/file": [_CLIENTS],
    "lftp -u alice,secret -p 2121 -e 'set ftp:ssl-force true; set ssl:verify-certificate no' localhost": [_CLIENTS],
    "sftp host key ssh-ed25519 SHA256:...": ["a log line, not a command: " + _CLIENTS + " compares it with what sftp shows"],
    "mailhub-admin user key alice ~/.ssh/id_ed25519.pub --data mailhub-data": [_CLIENTS],
    "mailhub-admin user key": ["a mention"],
    "scp -P 8022 file alice@localhost:": [_CLIENTS],
    "scp -O": ["a mention"],
    "scp -p": ["a mention"],
    "sftp put -p": ["a mention"],
    "sftp cp": ["a mention"],
    "python3 bench/sftp.py": [_BENCH],
    "sftp -b": ["a mention"],
    "python3 bench/sftp.py --size-mb 1024 --clients 100 --idle 50 --same-cipher": [_BENCH, _SMALL_BENCH],
}


def test_every_command_in_the_readme_has_a_test_or_a_reason():
    shown = readme_commands()
    untold = [c for c in shown if c not in WHO_RUNS_IT]
    assert not untold, f"README commands no test runs (add one, or say why not in WHO_RUNS_IT): {untold}"
    gone = [c for c in WHO_RUNS_IT if c not in shown]
    assert not gone, f"WHO_RUNS_IT names commands the README no longer shows: {gone}"
    tests = "".join(open(os.path.join(ROOT, "tests", name), encoding="utf-8").read() for name in os.listdir(os.path.join(ROOT, "tests")) if name.endswith(".py"))
    for command, who in WHO_RUNS_IT.items():
        for name in re.findall(r"\btest_\w+", " ".join(who)):
            assert f"def {name}(" in tests or os.path.exists(os.path.join(ROOT, "tests", name + ".py")), f"{command}: no {name} in tests/"


def test_the_check_command_in_the_readme_runs_as_printed(tmp_path):
    # `mailhub-admin check --data /var/lib/mailhub ...` as printed, in
    # private namespaces: /var/lib is an empty tmpfs there with the
    # accounts file in /var/lib/mailhub, the standard ports are free, and
    # the system's resolver is a DNS server on that namespace's loopback
    # that holds example.org's records (MX naming this hub, SPF, DMARC):
    # the one domain of the accounts. No question leaves the namespace.
    import json

    _needs("unshare", "nsenter", "mount", "ip")
    line = "mailhub-admin check --data /var/lib/mailhub --auth file:/var/lib/mailhub/accounts --port-base 0 --sftp tcp:2222"
    assert line in [ln.split(" #")[0].strip() for ln in open(README, encoding="utf-8").read().splitlines()]
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    env = dict(os.environ, HOME=str(home), PYTHONPATH=ROOT, PATH=f"{_installed_commands(tmp_path / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}")
    net = _PrivateNetwork(home)
    try:
        subprocess.run(net.wrap(f"mount -t tmpfs tmpfs /var/lib && mkdir /var/lib/mailhub && echo 'alice@example.org:secret' > /var/lib/mailhub/accounts"
                                f" && mount --bind {shlex.quote(str(tmp_path / 'resolv.conf'))} /etc/resolv.conf"), check=True, timeout=60)
        fqdn = subprocess.run(net.wrap(f"{shlex.quote(sys.executable)} -c 'import socket; print(socket.getfqdn())'"), env=env, capture_output=True, text=True, timeout=60).stdout.strip()
        zones = {"example.org": {"example.org": [["MX", 10, fqdn], ["TXT", "v=spf1 mx -all"]], "_dmarc.example.org": [["TXT", "v=DMARC1; p=reject"]]}}
        serve = ("import json, sys\nfrom twisted.internet import reactor\nfrom twisted.names import dns, server\nfrom tests.test_queue_mx import TestZone\n"
                 "factory = server.DNSServerFactory(authorities=[TestZone.make(d, r) for d, r in json.loads(sys.argv[1]).items()])\n"
                 "reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface='127.0.0.1')\nprint('dns ready', flush=True)\nreactor.run()\n")
        dns = subprocess.Popen(net.wrap("exec " + shlex.join([sys.executable, "-c", serve, json.dumps(zones)]), ROOT), env=env, stdout=subprocess.PIPE, text=True)
        net.hubs.append(dns)
        assert dns.stdout.readline().strip() == "dns ready"
        done = subprocess.run(net.wrap(line, tmp_path), env=env, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout, done.stderr) == (0, "ok: the hub would start with these options\n", ""), done
        # and it says what is wrong when something is: a record taken away
        dns.kill()
        dns.wait()
        del zones["example.org"]["_dmarc.example.org"]
        dns = subprocess.Popen(net.wrap("exec " + shlex.join([sys.executable, "-c", serve, json.dumps(zones)]), ROOT), env=env, stdout=subprocess.PIPE, text=True)
        net.hubs.append(dns)
        assert dns.stdout.readline().strip() == "dns ready"
        done = subprocess.run(net.wrap(line, tmp_path), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and done.stderr.startswith("dns: example.org has no DMARC record"), done
    finally:
        net.close()


def test_the_root_start_with_uid_and_gid_in_the_readme_runs_as_printed(tmp_path):
    # "Standard ports, way 1": the sudo twistd --uid nobody ... line as
    # printed, in private namespaces where it is what it is on a server:
    # /var/lib, /run and /var/log are empty tmpfs (the accounts file put in
    # /var/lib/mailhub), twistd is in /usr/local/bin (sudo's secure_path:
    # a script that runs this checkout's), and this 0700 /root is opened to
    # user nobody as tests/test_start.py does (the Python lives there).
    # sudo drops PYTHONDONTWRITEBYTECODE: the stand-in twistd says it again,
    # else root's start writes .pyc files beside this checkout's sources
    # (and the kit's bytecode tests in tests/test_testing.py, later in the
    # run, see a package that comes compiled).
    import json
    import time

    _needs("unshare", "nsenter", "mount", "ip", "nc", "sudo", "logrotate")
    text = open(README, encoding="utf-8").read()
    section = text[text.index("**Standard ports, way 1"):]
    [line], [copy] = (list(commands(block)) for block in re.findall(r"```sh\n(.*?)```", section, re.S)[:2])
    assert copy == "sudo cp etc/mailhub.logrotate /etc/logrotate.d/mailhub", copy
    backups = section[section.index("**Backup and restore.**"):]
    [renew] = commands(re.search(r"```sh\n(.*?)```", section[section.index("**A renewed certificate**"):], re.S).group(1))
    [stop, backup], [restore] = (list(commands(block)) for block in re.findall(r"```sh\n(.*?)```", backups, re.S)[:2])
    assert line.startswith("sudo twistd --uid nobody --gid nogroup --pidfile /run/mailhub.pid --logfile /var/log/mailhub.log"), line
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "root").mkdir()
    net = _PrivateNetwork(home)
    server = (
        "set -e\n"
        "mount -t tmpfs tmpfs /var/lib && mkdir /var/lib/mailhub && echo 'alice@example.org:secret' > /var/lib/mailhub/accounts\n"
        "mount -t tmpfs tmpfs /run && mount -t tmpfs -o mode=0755 tmpfs /var/log && mount -t tmpfs -o mode=0755 tmpfs /usr/local/bin\n"
        "mount -t tmpfs -o mode=0755 tmpfs /etc/logrotate.d\n"
        f"printf '#!/bin/sh\\nPYTHONDONTWRITEBYTECODE=1 PYTHONPATH=%s exec %s %s \"$@\"\\n' {shlex.quote(ROOT)} {shlex.quote(sys.executable)} {shlex.quote(shutil.which('twistd'))} > /usr/local/bin/twistd\n"
        "chmod 755 /usr/local/bin/twistd\n"
        f"printf '#!/bin/sh\\nPYTHONDONTWRITEBYTECODE=1 PYTHONPATH=%s exec %s -m twisted_mailhub.admin \"$@\"\\n' {shlex.quote(ROOT)} {shlex.quote(sys.executable)} > /usr/local/bin/mailhub-admin\n"
        # certbot renew, but for the ACME server (none may be asked): a new
        # pair for mail.renewed.test in a lineage folder, then the deploy hook.
        "printf '%s\\n' '#!/bin/sh' '[ \"$1 $2\" = \"renew --deploy-hook\" ] || exit 2' 'lineage=$(mktemp -d /run/lineage.XXXXXX)'"
        " 'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 -subj /CN=mail.renewed.test -keyout $lineage/privkey.pem -out $lineage/fullchain.pem 2>/dev/null || exit 1'"
        " 'RENEWED_LINEAGE=$lineage exec sh -c \"$3\"' > /usr/local/bin/certbot\n"
        "chmod 755 /usr/local/bin/mailhub-admin /usr/local/bin/certbot\n"
        f"mount --bind /root {tmp_path}/root && mount -t tmpfs -o mode=0755 tmpfs /root\n"
        f"for d in {tmp_path}/root/.* {tmp_path}/root/*; do\n"
        '  name=$(basename "$d"); [ "$name" = . ] || [ "$name" = .. ] || [ ! -e "$d" ] && continue\n'
        '  if [ -d "$d" ]; then mkdir -p "/root/$name"; else touch "/root/$name"; fi\n'
        '  mount --bind "$d" "/root/$name"\n'
        "done\n"
    )
    env = dict(os.environ, HOME=str(home))

    def inside(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(net.wrap(command, tmp_path), env=env, capture_output=True, text=True, timeout=60)

    try:
        made = inside(server)
        assert made.returncode == 0, made
        started = inside(line)
        assert (started.returncode, started.stdout, started.stderr) == (0, "", ""), started  # twistd daemonizes, silent
        deadline = time.monotonic() + 60
        while "mailhub ready" not in (log := inside("cat /var/log/mailhub.log").stdout):
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
        ready = json.loads(re.search(r"mailhub ready (\{.*\})", log).group(1))
        assert ready == {"ftp": 21, "imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "sftp": 2222, "smtp": 25, "smtps": 465, "submission": 587, "web": 80, "webs": 443}, ready
        pid = inside("cat /run/mailhub.pid").stdout.strip()
        assert inside(f"ps -o user= -p {pid}").stdout.strip() == "nobody"
        assert inside("stat -c %U:%G /var/lib/mailhub").stdout.strip() == "nobody:nogroup"
        greeted = inside("printf 'QUIT\\r\\n' | nc -N 127.0.0.1 25").stdout
        assert greeted.startswith("220 ") and "221 2.0.0 Bye" in greeted, greeted
        # The log's rotation: the README's logrotate file copied as printed
        # and run (forced): the old lines stay in mailhub.log.1, a new file
        # for nobody is made, and the hub writes on in it.
        copied = subprocess.run(net.wrap(copy, ROOT), env=env, capture_output=True, text=True, timeout=60)
        assert copied.returncode == 0, copied
        rotated = inside(f"logrotate --force --state {tmp_path}/logrotate.state /etc/logrotate.d/mailhub")
        assert (rotated.returncode, rotated.stderr) == (0, ""), rotated
        assert "mailhub ready" in inside("cat /var/log/mailhub.log.1").stdout
        assert inside("stat -c '%U:%G %a' /var/log/mailhub.log").stdout.strip() == "nobody:nogroup 600"
        send = f"import smtplib; smtplib.SMTP('127.0.0.1', 25).sendmail('judy@jbc.test', ['alice@example.org'], b'Subject: after the rotation\\r\\n\\r\\nhi\\r\\n')"
        assert inside(f"{shlex.quote(sys.executable)} -c {shlex.quote(send)}").returncode == 0
        deadline = time.monotonic() + 30
        while "delivered " not in (new := inside("cat /var/log/mailhub.log").stdout):
            assert time.monotonic() < deadline, (new, inside("tail -5 /var/log/mailhub.log.1").stdout)
            time.sleep(0.2)
        assert "delivered " not in inside("cat /var/log/mailhub.log.1").stdout
        log = inside("cat /var/log/mailhub.log.1 /var/log/mailhub.log").stdout
        # The stop: the hub ends and its pidfile goes with it (nobody
        # cannot remove a file in /run: a root helper does), so the next
        # start or a service manager finds no stale pidfile.
        read = (
            "import imaplib, sys; m = imaplib.IMAP4('127.0.0.1', 143); m.login('alice@example.org', 'secret'); m.select('INBOX');"
            " print(m.response('UIDVALIDITY')[1][0].decode(), m.uid('SEARCH', 'SUBJECT', 'rotation')[1][0].decode()); m.logout()"
        )
        before = inside(f"{shlex.quote(sys.executable)} -c {shlex.quote(read)}")
        assert before.returncode == 0 and before.stdout.split()[1] == "1", before
        # The README's stop (for a backup) returns once the hub has ended: its pidfile is gone.
        # (kill -0 still finds the ended hub until its parent, init, reaps it)
        stopped = inside(f"timeout 30 sh -c {shlex.quote(stop)} && for i in $(seq 50); do kill -0 {pid} 2>/dev/null || break; sleep 0.1; done; ! kill -0 {pid} 2>/dev/null && ls /run/mailhub.pid")
        assert (stopped.returncode, stopped.stdout) == (2, ""), stopped
        # The backup and the restore as printed; the hub then finds its mail as it was.
        for command in (backup, restore):
            done = inside(command)
            assert (done.returncode, done.stderr) == (0, ""), done
        helper = re.search(r"a root helper \(pid (\d+)\) removes it", log).group(1)
        assert inside(f"for i in $(seq 50); do kill -0 {helper} 2>/dev/null || exit 0; sleep 0.1; done; exit 1").returncode == 0  # and the helper is gone
        # The next start finds no stale pidfile; under --workers the supervisor's goes the same way.
        # (started from /: in these namespaces a worker's spawn as nobody cannot read the test's 0700 working folder)
        started = inside("cd / && " + line + " --workers 2")
        assert (started.returncode, started.stdout, started.stderr) == (0, "", ""), started
        deadline = time.monotonic() + 60
        while len(re.findall(r"a root helper \(pid \d+\) removes it", log := inside("cat /var/log/mailhub.log*").stdout)) < 2 or not inside("cat /run/mailhub.pid").stdout.strip():
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
        pid = inside("cat /run/mailhub.pid").stdout.strip()
        deadline = time.monotonic() + 60
        while (after := inside(f"{shlex.quote(sys.executable)} -c {shlex.quote(read)}")).returncode != 0:
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert after.stdout == before.stdout, (before, after)  # the same UIDVALIDITY and UID after the restore
        # A renewed certificate: certbot's deploy hook as printed (its
        # certbot a stand-in, above); every worker serves the new one.
        subject = "openssl s_client -connect 127.0.0.1:993 </dev/null 2>/dev/null | openssl x509 -noout -subject"
        assert "mail.renewed.test" not in inside(subject).stdout
        renewed = inside(renew)
        assert (renewed.returncode, renewed.stderr) == (0, ""), renewed
        assert "TLS certificate reloaded" in renewed.stdout, renewed
        assert inside("stat -c '%U:%G %a' /var/lib/mailhub/tls/cert.pem /var/lib/mailhub/tls/key.pem").stdout.split("\n")[:2] == ["nobody:nogroup 600"] * 2
        for _ in range(4):  # (connections spread over the two workers)
            assert inside(subject).stdout.strip() == "subject=CN = mail.renewed.test"
        stopped = inside(f"kill {pid} && while kill -0 {pid} 2>/dev/null; do sleep 0.1; done; for i in $(seq 50); do test -e /run/mailhub.pid || break; sleep 0.1; done; ls /run/mailhub.pid")
        assert (stopped.returncode, stopped.stdout) == (2, ""), stopped
    finally:
        inside("test -s /run/mailhub.pid && kill $(cat /run/mailhub.pid) && while kill -0 $(cat /run/mailhub.pid) 2>/dev/null; do sleep 0.1; done")
        log = inside("cat /var/log/mailhub.log*").stdout
        net.close()
        keep_log(log)
    assert "Server Shut Down." in log and "Traceback" not in log, log
    assert "pid file" not in log, log  # (twistd's "Warning: No permission to delete pid file")
