"""
RNTO of a folder into itself (RNFR /a, RNTO /a/b) is refused on both file
systems with the same reply, in the hub's words (RFC 959 §4.2: 550, the
reason): the PostgreSQL one said Python's "Invalid argument" and named
the target, where the disk one says the folder cannot go inside itself.
"""

from __future__ import annotations

from tests.test_pgfs_names_not_utf8 import ftp_session

EXPECTED = [
    b"257 \"/a\" created.\r\n",
    b"350 Ready for RNTO.\r\n",
    b"550 RNTO: Requested action not taken: /a: not possible with these names (a folder cannot go inside itself)\r\n",
]


def _rename_into_itself(hub) -> list[bytes]:
    return ftp_session(hub, [b"USER alice", b"PASS secret", b"MKD a", b"RNFR /a", b"RNTO /a/b"])[2:]


def test_a_folder_renamed_into_itself_on_disk(start_hub):
    assert _rename_into_itself(start_hub()) == EXPECTED


def test_a_folder_renamed_into_itself_on_postgresql_says_the_same(start_hub, pg_dsn):
    hub = start_hub("--store", f"postgresql:{pg_dsn}", "--ftp-filesystem", "postgresql")
    assert _rename_into_itself(hub) == EXPECTED
