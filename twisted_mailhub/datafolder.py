# -*- test-case-name: tests.test_e2e_data_folder_moved -*-
"""
The data folder (C{--data}) while the hub runs. Its parts (an account's
Maildir, an FTP home) are made when first used; if the folder was moved
or removed under the running hub, making them would make the data
folder again at the old place, and an account's mail or files would be
split between the two. L{must_exist} refuses that instead.
"""

from __future__ import annotations

import errno
import os


def must_exist(part_root: str) -> None:
    """
    Raise C{FileNotFoundError} when the data folder holding C{part_root}
    (its parent: C{DATA} for C{DATA/mail} or C{DATA/ftp}) is gone. One
    C{stat}; called before a part is made for an account, not per write.
    """
    data = os.path.dirname(os.path.abspath(part_root))
    if not os.path.isdir(data):
        raise FileNotFoundError(errno.ENOENT, "the data folder is gone (moved or removed while the hub runs)", data)
