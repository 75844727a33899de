"""
C{mailhub-admin migrate --keys-to NEWDATA}: a hub moved to PostgreSQL
keeps its identity, which lives in files: the same SSH host key (clients'
C{known_hosts} stay valid) and the same DKIM key (the published TXT record
stays right). Without C{--keys-to} the command says what to copy where.
"""

from __future__ import annotations

import os
import smtplib
import stat

import paramiko

from tests.test_migrate import admin


def host_key(hub) -> str:
    transport = paramiko.Transport(("127.0.0.1", hub.ports["sftp"]))
    try:
        transport.start_client(timeout=20)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    finally:
        transport.close()


def test_migrated_hub_keeps_its_ssh_host_key_and_dkim_key(start_hub, pg_dsn, tmp_path):
    old_data, new_data = str(tmp_path / "old"), str(tmp_path / "new")
    made = admin("dkim", "make", "--data", old_data, "--domain", "example.org")
    assert made.returncode == 0, made.stderr
    old = start_hub(data=old_data)
    with smtplib.SMTP("127.0.0.1", old.ports["smtp"]) as s:
        s.sendmail("bob@localhost", ["alice@localhost"], b"Subject: kept\r\n\r\nhi\r\n")
    old_key = host_key(old)
    old.stop()
    # Without --keys-to: what to copy, and where.
    told = admin("migrate", "--from", old_data, "--to", f"postgresql:{pg_dsn}")
    assert told.returncode == 0, told.stderr
    assert f"copy SSH host keys ({old_data}/ssh/), DKIM keys ({old_data}/dkim/)" in told.stdout, told.stdout
    assert "--keys-to NEWDATA" in told.stdout
    moved = admin("migrate", "--from", old_data, "--to", f"postgresql:{pg_dsn}", "--keys-to", new_data)
    assert moved.returncode == 0, moved.stderr
    assert f"in {new_data}" in moved.stdout, moved.stdout
    for relative in ("ssh/ssh_host_ed25519_key", "dkim"):
        assert os.path.exists(os.path.join(new_data, relative)), relative
    private = os.path.join(new_data, "ssh", "ssh_host_ed25519_key")
    assert stat.S_IMODE(os.stat(private).st_mode) & 0o077 == 0  # still private
    new = start_hub("--store", f"postgresql:{pg_dsn}", data=new_data)
    assert host_key(new) == old_key
    record = lambda data: admin("dkim", "show", "--data", data, "--domain", "example.org").stdout  # noqa: E731
    assert "p=" in record(new_data) and record(new_data) == record(old_data)
    assert "made host key" not in new.log  # it used the copied ones
    # A key already in a new data folder is never overwritten.
    other = str(tmp_path / "other")
    os.makedirs(os.path.join(other, "ssh"))
    with open(os.path.join(other, "ssh", "ssh_host_ed25519_key"), "w") as f:
        f.write("another hub's key\n")
    kept = admin("migrate", "--from", old_data, "--to", f"postgresql:{pg_dsn}", "--keys-to", other)
    assert kept.returncode == 0, kept.stderr
    assert "ssh_host_ed25519_key differs" in kept.stdout and "left alone" in kept.stdout, kept.stdout
    with open(os.path.join(other, "ssh", "ssh_host_ed25519_key")) as f:
        assert f.read() == "another hub's key\n"
