"""
Users' authorized keys (twisted_mailhub/sftp/keys.py): an OpenSSH
authorized_keys line's options are honoured or the line logs in nobody; the
hub never grants a key more than OpenSSH would.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.hubprocess import ROOT
from twisted_mailhub.accounts import AccountBook
from twisted_mailhub.sftp import keys as sftp_keys


def _key_pair() -> tuple[paramiko.PKey, bytes]:
    """(a paramiko private key, its OpenSSH public key line)."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode())), public + b" alice@laptop"


@pytest.mark.parametrize(
    "options",
    [b'from="192.0.2.0/24"', b'command="/usr/bin/rrsync /backup"', b'expiry-time="20200101"', b"cert-authority", b'principals="alice"', b"verify-required", b"frobnicate"],
)
def test_a_line_with_an_option_the_hub_does_not_enforce_gives_no_key(options):
    _, public = _key_pair()
    line = options + b" " + public
    assert sftp_keys.parse_authorized_key(line) is None
    problem = sftp_keys.key_line_problem(line)
    assert problem is not None and problem.startswith(options.split(b"=")[0].decode())


@pytest.mark.parametrize(
    "options",
    [b"", b"restrict ", b"no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding ", b'command="internal-sftp" ', b'restrict,command="internal-sftp" ', b'environment="A=b, c" '],
)
def test_a_line_whose_options_change_nothing_here_gives_its_key(options):
    _, public = _key_pair()
    assert sftp_keys.key_line_problem(options + public) is None
    assert sftp_keys.parse_authorized_key(options + public) is not None


def test_a_quoted_option_value_may_hold_blanks_commas_and_escaped_quotes():
    _, public = _key_pair()
    line = b'command="/bin/sh -c \\"a, b\\"",no-pty ' + public
    assert sftp_keys._split_options(line) == ([("command", '/bin/sh -c "a, b"'), ("no-pty", None)], public)


def _sftp_login(hub, pkey) -> bool:
    transport = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    try:
        transport.connect(username="alice", pkey=pkey)
        paramiko.SFTPClient.from_transport(transport).listdir(".")
        return True
    except paramiko.AuthenticationException:
        return False
    finally:
        transport.close()


def test_a_key_restricted_to_other_addresses_does_not_log_in_and_the_log_says_why(start_hub):
    # OpenSSH lets this key in only from 192.0.2.0/24; the hub, which does
    # not check from=, let it in from anywhere.
    hub = start_hub()
    restricted, restricted_public = _key_pair()
    plain, plain_public = _key_pair()
    folder = os.path.join(hub.data_dir, "ssh", "authorized_keys")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "alice@localhost"), "wb") as f:
        f.write(b'from="192.0.2.0/24" ' + restricted_public + b"\nrestrict " + plain_public + b"\n")
    assert _sftp_login(hub, restricted) is False
    assert _sftp_login(hub, plain) is True
    line = hub.wait_for_log(r"line 1: from=\"192\.0\.2\.0/24\" is not enforced by this server: that key logs in nobody")
    assert "Traceback" not in hub.log and line


def test_mailhub_admin_user_key_refuses_a_line_with_an_option_the_hub_does_not_enforce(tmp_path):
    _, public = _key_pair()
    data = tmp_path / "data"
    (data).mkdir()
    (data / "accounts").write_text("alice@localhost:secret\n")
    keyfile = tmp_path / "id.pub"
    keyfile.write_bytes(b'from="10.0.0.0/8" ' + public + b"\n")
    done = subprocess.run(
        [sys.executable, "-m", "twisted_mailhub.admin", "user", "key", "alice", str(keyfile), "--data", str(data), "--accounts", str(data / "accounts")],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr == f'mailhub-admin: {keyfile}: from="10.0.0.0/8" is not enforced by this server, so that key would log in nobody: give the key line without it; nothing changed\n'
    assert not (data / "ssh" / "authorized_keys" / "alice@localhost").exists()


def test_the_keys_folder_skips_only_the_lines_it_cannot_honour(tmp_path):
    book = AccountBook(["localhost"])
    book.add("alice", "secret")
    _, kept = _key_pair()
    _, skipped = _key_pair()
    (tmp_path / "alice@localhost").write_bytes(b"# laptop\n" + b'from="192.0.2.1" ' + skipped + b"\n" + kept + b"\n")
    found = list(sftp_keys.AuthorizedKeysFolder(str(tmp_path), book).getAuthorizedKeys(b"alice"))
    assert [k.toString("OPENSSH") for k in found] == [b" ".join(kept.split()[:2])]


def test_a_line_that_is_no_key_is_said_in_words_and_a_key_behind_a_garbled_option_logs_in_nobody(tmp_path):
    # A line not in UTF-8 was logged as "\ufffd\ufffd is no option this
    # server knows"; a key cut short when pasted was dropped without a word.
    from twisted.logger import globalLogPublisher

    book = AccountBook(["localhost"])
    book.add("alice", "secret")
    _, kept = _key_pair()
    _, garbled = _key_pair()
    cut = kept.split()[0] + b" " + kept.split()[1][:20]
    (tmp_path / "alice@localhost").write_bytes(b"\xff\xfe\n" + cut + b"\n" + b"fr\xf6m=x " + garbled + b"\n" + kept + b"\n")
    said: list[str] = []

    def observe(event):
        if event.get("log_namespace") == "twisted_mailhub.sftp.keys":
            from twisted.logger import formatEvent

            said.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        found = list(sftp_keys.AuthorizedKeysFolder(str(tmp_path), book).getAuthorizedKeys(b"alice"))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [k.toString("OPENSSH") for k in found] == [b" ".join(kept.split()[:2])]
    assert [line.split(", ", 1)[1].split(" (")[0] for line in said] == ["line 1: not a key this server can read", "line 2: not a key this server can read", "line 3: not a key this server can read"]
    assert not any("\ufffd" in line for line in said)


def test_a_key_cut_short_when_pasted_does_not_lock_out_the_accounts_other_keys(start_hub):
    # Conch raised struct.error reading the cut key; the whole file's keys
    # were lost with it: no key of the account logged in.
    hub = start_hub()
    good, good_public = _key_pair()
    cut = good_public.split()[0] + b" " + good_public.split()[1][:20]
    folder = os.path.join(hub.data_dir, "ssh", "authorized_keys")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "alice@localhost"), "wb") as f:
        f.write(cut + b"\n" + good_public + b"\n")
    assert _sftp_login(hub, good) is True
    hub.wait_for_log(r"alice@localhost, line 1: not a key this server can read")
    assert "Traceback" not in hub.log


def test_a_bad_line_is_logged_once_per_version_of_the_file_not_at_every_key_check(start_hub):
    # SSH asks twice per login ("would this key do?", then the signed
    # request), and again at each login: the same warning came twice per
    # login, every login.
    hub = start_hub()
    good, good_public = _key_pair()
    cut = good_public.split()[0] + b" " + good_public.split()[1][:20]
    path = os.path.join(hub.data_dir, "ssh", "authorized_keys", "alice@localhost")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(cut + b"\n" + good_public + b"\n")
    warning = "alice@localhost, line 1: not a key this server can read"
    assert _sftp_login(hub, good) is True
    assert _sftp_login(hub, good) is True
    hub.wait_for_log(re.escape(warning))
    assert hub.log.count(warning) == 1
    with open(path, "wb") as f:  # a new version of the file: said again
        f.write(cut + b"\n" + good_public + b"\n# laptop\n")
    assert _sftp_login(hub, good) is True
    hub.wait_for_log(re.escape(warning) + r"[^\n]*\n(.*\n)*.*" + re.escape(warning))
    assert hub.log.count(warning) == 2
