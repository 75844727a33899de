"""
OpenSSH's C{sftp} C{df} (statvfs@openssh.com) shows the account's quota
when it has one: its size, what its mail and files use, and the room left,
not the server's whole disk.
"""

from __future__ import annotations

import os

from tests.test_e2e_sftp import sftp_batch


def df(hub) -> list[int]:
    """Size, Used, Avail in KiB, as `sftp`'s df prints them."""
    out = sftp_batch(hub, "df\n").stdout.splitlines()
    header = next(i for i, line in enumerate(out) if "Size" in line and "Avail" in line)
    return [int(n) for n in out[header + 1].split()[:3]]


def test_sftp_df_shows_the_accounts_quota_and_what_it_uses(start_hub, tmp_path):
    hub = start_hub("--quota", "2M")
    assert df(hub) == [2048, 0, 2048]
    upload = tmp_path / "up.bin"
    upload.write_bytes(b"x" * 300_000)
    sftp_batch(hub, f"put {upload} up.bin\n")
    size, used, avail = df(hub)
    assert size == 2048 and used >= 292 and avail == size - used


def test_sftp_df_without_a_quota_shows_the_disk(start_hub):
    hub = start_hub()
    st = os.statvfs(hub.data_dir)
    size, used, avail = df(hub)
    assert size == st.f_blocks * st.f_frsize // 1024
