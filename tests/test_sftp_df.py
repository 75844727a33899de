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


def test_room_freed_by_a_remove_is_seen_at_once_by_df_and_by_a_setstat_size(start_hub, tmp_path):
    """
    After a remove, df shows the room it made and a SETSTAT that grows a
    file into that room is allowed, at once: both read the account's
    remembered count (up to a minute old) and showed, and refused, as if
    the removed file were still there, while an upload of the same size
    (which counts again) went through.
    """
    hub = start_hub("--quota", "1M")
    upload = tmp_path / "big.bin"
    upload.write_bytes(b"x" * 900_000)
    sftp_batch(hub, f"put {upload} big.bin\n-put {upload} small.bin\n")  # the second is refused (the quota)
    size, used, avail = df(hub)
    assert used >= 870
    sftp_batch(hub, "rm big.bin\n")
    size, used, avail = df(hub)
    assert size == 1024 and used < 10 and avail == size - used
    from tests.test_e2e_sftp import paramiko_client

    client = paramiko_client(hub)
    try:
        sftp = client.open_sftp()
        sftp.putfo(__import__("io").BytesIO(b"s"), "grow.bin")
        sftp.truncate("grow.bin", 500_000)  # SETSTAT size: 500 KB of a 1 MiB quota, now free
        assert sftp.stat("grow.bin").st_size == 500_000
    finally:
        client.close()
