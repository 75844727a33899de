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
import subprocess

import pytest
from twisted.python import usage

from tests.hubprocess import ROOT
from twisted_mailhub import tap

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


def test_every_twistd_mailhub_command_in_the_readme_parses():
    seen = 0
    for _, block in readme_blocks():
        for line in commands(block):
            for part in re.split(r"&&|\|\||;|\|", line.strip("()& ")):
                words = shlex.split(part)
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


def test_the_two_hub_classroom_demo_runs_as_printed(tmp_path):
    marked = {name: block for name, block in readme_blocks() if name}
    assert {"two-hubs-start", "two-hubs-send", "two-hubs-read", "two-hubs-stop"} <= set(marked)
    missing = [tool for tool in ("unshare", "ip", "swaks", "curl", "nc") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        why = f"needs {', '.join(missing) or 'root'} (a private network namespace for the fixed ports)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
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
