"""
The bench scripts' options, run as a user runs them: a
folder that does not exist, a file, or one that cannot be written is
said in words on one line (argparse's usage and C{error:} line, exit
status 2), before anything starts, never a Python traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every bench option that names a folder or a file to write.
FOLDER_OPTIONS = [
    ("bench/pop3_retr.py", "--dir"),
    ("bench/smtp_pop3.py", "--dir"),
    ("bench/workers.py", "--dir"),
    ("bench/smtp_cpu.py", "--dir"),
]
FILE_OPTIONS = [
    ("bench/imap.py", "--py-spy"),
    ("bench/imap_envelope.py", "--py-spy"),
    ("bench/smtp_cpu.py", "--py-spy"),
    ("bench/smtp_pop3.py", "--py-spy"),
]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def said_in_words(done: subprocess.CompletedProcess, option: str, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "error:" in line]
    assert f"argument {option}:" in line, line
    for word in words:
        assert word in line, line
    return line


@pytest.mark.parametrize("script,option", FOLDER_OPTIONS)
def test_a_folder_that_does_not_exist_is_said_in_words(script, option, tmp_path):
    missing = tmp_path / "no-such-folder"
    line = said_in_words(run(script, option, str(missing)), option, str(missing), "does not exist")
    assert not missing.exists(), line


@pytest.mark.parametrize("script,option", FOLDER_OPTIONS)
def test_a_file_given_as_the_folder_is_said_in_words(script, option, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    said_in_words(run(script, option, str(a_file)), option, str(a_file), "not a folder")


@pytest.mark.parametrize("script,option", FILE_OPTIONS)
def test_a_file_in_a_folder_that_does_not_exist_is_said_in_words(script, option, tmp_path):
    target = tmp_path / "no-such-folder" / "hub.txt"
    said_in_words(run(script, option, str(target)), option, str(tmp_path / "no-such-folder"), "does not exist")


def test_another_tree_that_is_not_one_is_said_in_words(tmp_path):
    line = said_in_words(run("bench/ftp_cost.py", "--old", str(tmp_path / "gone")), "--old", "is not a folder")
    assert str(tmp_path / "gone") in line
    said_in_words(run("bench/ftp_cost.py", "--old", str(tmp_path)), "--old", "holds no twisted_mailhub/")


@pytest.mark.parametrize(
    "script, option, value, says",
    [
        ("bench/smtp_pop3.py", "--case", "32:abc", "32:abc is not N:N"),
        ("bench/smtp_pop3.py", "--case", "32", "32 is not N:N"),
        ("bench/imap.py", "--sizes", "10000,lots", "10000,lots is not N,N..."),
        ("bench/cluster.py", "--only", "smtp,nosuch", "nosuch: not one of smtp, store, idle, fetch"),
    ],
)
def test_a_value_that_is_not_one_is_said_in_words(script, option, value, says):
    # Before: a ValueError traceback (--case, --sizes), or a run of
    # nothing after PostgreSQL was started (--only with a misspelt part).
    said_in_words(run(script, option, value), option, says)
